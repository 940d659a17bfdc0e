//! Interoperability with the reference implementation, cryptsetup (Debian package
//! `cryptsetup-bin`). Without cryptsetup these tests skip visibly (`test_kit`), unless `CI` is
//! set, where they fail.
//!
//! dm-crypt (`cryptsetup open` without `--test-passphrase`) needs the kernel's
//! device-mapper, which the project's machines do not have (`cryptsetup open` fails with
//! "Cannot initialize device-mapper");
//! `dm_crypt_reads_our_data` checks data encryption through dm-crypt when it is available
//! and otherwise reports a skip. Data-sector encryption is otherwise pinned
//! by known answers from OpenSSL's XTS (unit test `xts_plain64_known_answers`).

mod common;

use std::path::Path;

use common::{cryptsetup, cryptsetup_ok, cryptsetup_volume_key, key, p};
use luks::{create, CreateOptions, Error, Header, KdfChoice, Volume};

fn write_key(dir: &Path, name: &str, k: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, k).unwrap();
    path
}

fn our_volume_is_accepted(opts: &CreateOptions, material: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let kf = write_key(dir.path(), "key", material);
    let wrong = write_key(dir.path(), "wrong", &key(99));
    let img = dir.path().join("disk.img");
    let vol = create(&img, 1 << 20, material, opts).unwrap();
    let ours = vol.volume_key().as_bytes().to_vec();
    drop(vol);

    let dump = cryptsetup_ok(&["luksDump", p(&img)]);
    assert!(dump.contains("Version:       \t2"), "{dump}");
    assert!(dump.contains("cipher: aes-xts-plain64"), "{dump}");
    cryptsetup_ok(&["isLuks", "--type", "luks2", p(&img)]);
    cryptsetup_ok(&["open", "--test-passphrase", "--key-file", p(&kf), p(&img)]);
    let bad = cryptsetup(&[
        "open",
        "--test-passphrase",
        "--key-file",
        p(&wrong),
        p(&img),
    ]);
    assert!(!bad.status.success(), "cryptsetup accepted a wrong key");
    assert_eq!(cryptsetup_volume_key(&img, &kf), ours, "volume keys differ");
}

#[test]
fn cryptsetup_accepts_our_pbkdf2_volume() {
    test_kit::require!(tool "cryptsetup");
    our_volume_is_accepted(&CreateOptions::default(), &key(1));
}

#[test]
fn cryptsetup_accepts_our_argon2id_volume() {
    test_kit::require!(tool "cryptsetup");
    let opts = CreateOptions {
        kdf: KdfChoice::Argon2id {
            time: 4,
            memory_kib: 32768,
            cpus: 2,
        },
        sector_size: 512,
        label: "cvm".into(),
    };
    our_volume_is_accepted(&opts, b"correct horse battery staple");
}

/// Formats with cryptsetup and unlocks with our reader; compares the volume key.
fn cryptsetup_volume_unlocks(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let kf = write_key(dir.path(), "key", &key(7));
    let img = dir.path().join("cs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let mut args = vec![
        "luksFormat",
        "--type",
        "luks2",
        "--batch-mode",
        "--key-file",
        p(&kf),
    ];
    args.extend_from_slice(extra);
    args.push(p(&img));
    cryptsetup_ok(&args);
    let expected = cryptsetup_volume_key(&img, &kf);

    let mut file = std::fs::File::open(&img).unwrap();
    let header = Header::read_from(&mut file).unwrap();
    assert!(header.both_copies_valid);
    let vk = header.unlock(&key(7), &mut file).unwrap();
    assert_eq!(vk.as_bytes(), &expected[..], "volume key for {extra:?}");
    assert!(matches!(
        header.unlock(&key(8), &mut file),
        Err(Error::WrongKey)
    ));

    // The same through `Header::parse` on the advertised byte count.
    let bytes = std::fs::read(&img).unwrap();
    let need = luks::header_area_len(&bytes).unwrap();
    Header::parse(&bytes[..need]).unwrap();
}

#[test]
fn we_unlock_cryptsetup_pbkdf2() {
    test_kit::require!(tool "cryptsetup");
    cryptsetup_volume_unlocks(&["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]);
    // SHA-512 PBKDF2, AES-128-XTS, 512-byte sectors.
    cryptsetup_volume_unlocks(&[
        "--pbkdf",
        "pbkdf2",
        "--hash",
        "sha512",
        "--pbkdf-force-iterations",
        "1000",
        "--key-size",
        "256",
        "--sector-size",
        "512",
    ]);
}

#[test]
fn we_unlock_cryptsetup_argon2() {
    test_kit::require!(tool "cryptsetup");
    cryptsetup_volume_unlocks(&[
        "--pbkdf",
        "argon2id",
        "--pbkdf-memory",
        "32768",
        "--pbkdf-force-iterations",
        "4",
    ]);
    cryptsetup_volume_unlocks(&[
        "--pbkdf",
        "argon2i",
        "--pbkdf-memory",
        "32768",
        "--pbkdf-force-iterations",
        "4",
        "--pbkdf-parallel",
        "2",
        "--sector-size",
        "4096",
    ]);
}

#[test]
fn argon2_memory_cap_is_enforced_on_cryptsetup_volume() {
    test_kit::require!(tool "cryptsetup");
    let dir = tempfile::tempdir().unwrap();
    let kf = write_key(dir.path(), "key", &key(7));
    let img = dir.path().join("cs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    cryptsetup_ok(&[
        "luksFormat",
        "--type",
        "luks2",
        "--batch-mode",
        "--key-file",
        p(&kf),
        "--pbkdf",
        "argon2id",
        "--pbkdf-memory",
        "65536",
        "--pbkdf-force-iterations",
        "4",
        p(&img),
    ]);
    let mut file = std::fs::File::open(&img).unwrap();
    let header = Header::read_from(&mut file).unwrap();
    let limits = luks::Limits {
        max_argon2_memory_kib: 32768,
        ..luks::Limits::default()
    };
    let err = header
        .unlock_with_limits(&key(7), &mut file, &limits)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::KdfLimit {
                value: 65536,
                limit: 32768,
                ..
            }
        ),
        "{err:?}"
    );
}

/// A keyslot added by cryptsetup to our volume still unlocks with our reader, and
/// cryptsetup's header rewrite (seqid bump, both copies) parses.
#[test]
fn cryptsetup_add_key_to_our_volume() {
    test_kit::require!(tool "cryptsetup");
    let dir = tempfile::tempdir().unwrap();
    let kf = write_key(dir.path(), "key", &key(1));
    let kf2 = write_key(dir.path(), "key2", &key(2));
    let img = dir.path().join("disk.img");
    let mut vol = create(&img, 1 << 20, &key(1), &CreateOptions::default()).unwrap();
    vol.write_plaintext(0, b"payload\0").unwrap();
    drop(vol);
    cryptsetup_ok(&[
        "luksAddKey",
        "--batch-mode",
        "--key-file",
        p(&kf),
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        p(&img),
        p(&kf2),
    ]);
    let mut vol = Volume::open(&img, &key(2)).unwrap();
    assert!(vol.header().seqid > 1);
    let mut b = [0u8; 8];
    vol.read_plaintext(0, &mut b).unwrap();
    assert_eq!(&b, b"payload\0");
    assert_eq!(vol.header().metadata().keyslots.len(), 2);
}

#[test]
fn dm_crypt_reads_our_data() {
    test_kit::require!(tool "cryptsetup");
    if !Path::new("/dev/mapper/control").exists() {
        // Optional: the project's machines (CI's too) have no device-mapper.
        test_kit::skip_optional(
            "no device-mapper on this machine (/dev/mapper/control missing); data-sector \
             encryption is checked by the OpenSSL known-answer unit test only",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kf = write_key(dir.path(), "key", &key(1));
    let img = dir.path().join("disk.img");
    let mut vol = create(&img, 1 << 20, &key(1), &CreateOptions::default()).unwrap();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    vol.write_plaintext(0, &data).unwrap();
    drop(vol);
    let name = format!("cvm-luks-test-{}", std::process::id());
    let open = cryptsetup(&["open", "--readonly", "--key-file", p(&kf), p(&img), &name]);
    if !open.status.success() {
        test_kit::skip_optional(format_args!(
            "cryptsetup open failed: {}",
            String::from_utf8_lossy(&open.stderr).trim()
        ));
        return;
    }
    let read = std::fs::read(format!("/dev/mapper/{name}"));
    cryptsetup_ok(&["close", &name]);
    assert_eq!(&read.unwrap()[..data.len()], &data[..]);
}
