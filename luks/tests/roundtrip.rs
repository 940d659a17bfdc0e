//! Writer → reader round trips, through the host `Volume` API and through the guest path
//! (`Header::read_from` + `unlock` + `read_plaintext` over an in-memory image).

mod common;

use luks::{create, CreateOptions, Error, Header, KdfChoice, Volume, WriteError};

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 253) as u8).collect()
}

#[test]
fn pbkdf2_round_trip_host_and_guest_paths() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let key = common::key(1);
    let mut vol = create(&img, 64 << 10, &key, &CreateOptions::default()).unwrap();
    assert_eq!(vol.payload_size(), 64 << 10);
    let data = sample(10_000);
    vol.write_plaintext(0, b"hello\0").unwrap();
    vol.write_plaintext(4000, &data).unwrap(); // crosses three sector boundaries, unaligned
    vol.write_plaintext((64 << 10) - 3, b"end").unwrap();
    let vk_bytes = vol.volume_key().as_bytes().to_vec();
    assert_eq!(vk_bytes.len(), 64);
    drop(vol);

    // Host path: reopen.
    let mut vol = Volume::open(&img, &key).unwrap();
    let mut buf = vec![0u8; data.len()];
    vol.read_plaintext(4000, &mut buf).unwrap();
    assert_eq!(buf, data);

    // Guest path: the image as bytes, any BlockRead.
    let image = std::fs::read(&img).unwrap();
    let mut dev: &[u8] = &image;
    let header = Header::read_from(&mut dev).unwrap();
    assert!(header.both_copies_valid);
    assert_eq!(header.segment().sector_size, 4096);
    assert_eq!(header.segment().offset, 16 << 20);
    assert_eq!(header.segment().size, None);
    let vk = header.unlock(&key, &mut dev).unwrap();
    assert_eq!(vk.as_bytes(), &vk_bytes[..]);
    let mut msg = [0u8; 6];
    vk.read_plaintext(&mut dev, 0, &mut msg).unwrap();
    assert_eq!(&msg, b"hello\0");
    let mut buf = vec![0u8; data.len()];
    vk.read_plaintext(&mut dev, 4000, &mut buf).unwrap();
    assert_eq!(buf, data);
    let mut end = [0u8; 3];
    vk.read_plaintext(&mut dev, (64 << 10) - 3, &mut end)
        .unwrap();
    assert_eq!(&end, b"end");

    // Sector API.
    let mut sector = image[(16 << 20)..(16 << 20) + 4096].to_vec();
    vk.decrypt_sector(0, &mut sector).unwrap();
    assert_eq!(&sector[..6], b"hello\0");
    assert!(matches!(
        vk.decrypt_sector(0, &mut [0u8; 512]),
        Err(Error::SectorBuffer {
            expected: 4096,
            got: 512
        })
    ));

    // Header::parse with exactly the advertised number of bytes.
    let need = luks::header_area_len(&image[..4096]).unwrap();
    assert_eq!(need, 32768);
    Header::parse(&image[..need]).unwrap();

    // Wrong key.
    assert!(matches!(
        header.unlock(&common::key(2), &mut dev),
        Err(Error::WrongKey)
    ));
    assert!(matches!(
        Volume::open(&img, &common::key(2)),
        Err(WriteError::Luks(Error::WrongKey))
    ));
}

#[test]
fn argon2id_and_512_byte_sectors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let opts = CreateOptions {
        kdf: KdfChoice::Argon2id {
            time: 4,
            memory_kib: 1024,
            cpus: 2,
        },
        sector_size: 512,
        label: "test-label".into(),
    };
    let mut vol = create(&img, 8 << 10, b"a passphrase", &opts).unwrap();
    vol.write_plaintext(700, b"across 512").unwrap();
    drop(vol);
    let mut vol = Volume::open(&img, b"a passphrase").unwrap();
    assert_eq!(vol.header().label, "test-label");
    assert_eq!(vol.header().segment().sector_size, 512);
    let mut buf = [0u8; 10];
    vol.read_plaintext(700, &mut buf).unwrap();
    assert_eq!(&buf, b"across 512");
    assert!(matches!(
        Volume::open(&img, b"another"),
        Err(WriteError::Luks(Error::WrongKey))
    ));
}

#[test]
fn writer_rejects_bad_arguments_and_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let opts = CreateOptions::default();
    // Key material too short for a PBKDF2 keyslot, or empty.
    assert!(matches!(
        create(&img, 4096, &[1u8; 16], &opts),
        Err(WriteError::Invalid(_))
    ));
    assert!(matches!(
        create(&img, 4096, &[], &opts),
        Err(WriteError::Luks(Error::KeyMaterialLength(0)))
    ));
    // Sizes.
    assert!(matches!(
        create(&img, 0, &common::key(1), &opts),
        Err(WriteError::Invalid(_))
    ));
    assert!(matches!(
        create(&img, 1000, &common::key(1), &opts),
        Err(WriteError::Invalid(_))
    ));
    let bad = CreateOptions {
        kdf: KdfChoice::Pbkdf2Sha256 { iterations: 10 },
        ..CreateOptions::default()
    };
    assert!(matches!(
        create(&img, 4096, &common::key(1), &bad),
        Err(WriteError::Invalid(_))
    ));
    assert!(!img.exists(), "failed creates leave no file");
    // Refuses to overwrite.
    std::fs::write(&img, b"precious").unwrap();
    assert!(matches!(
        create(&img, 4096, &common::key(1), &opts),
        Err(WriteError::Io { .. })
    ));
    assert_eq!(std::fs::read(&img).unwrap(), b"precious");
}

#[test]
fn out_of_range_writes_and_reads_fail() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut vol = create(&img, 8192, &common::key(3), &CreateOptions::default()).unwrap();
    assert!(vol.write_plaintext(8190, b"abc").is_err());
    assert!(vol.write_plaintext(u64::MAX, b"a").is_err());
    let mut b = [0u8; 4];
    assert!(vol.read_plaintext(8189, &mut b).is_err());
    // The guest path over a truncated device reports an I/O error, not a panic.
    let image = std::fs::read(&img).unwrap();
    let mut dev: &[u8] = &image;
    let vk = Header::read_from(&mut dev)
        .unwrap()
        .unlock(&common::key(3), &mut dev)
        .unwrap();
    let mut short: &[u8] = &image[..(16 << 20) + 100];
    assert!(matches!(
        vk.read_plaintext(&mut short, 0, &mut b),
        Err(Error::Io { .. })
    ));
}
