//! `cvm image disk`: key-file hygiene, refusal to overwrite, and that cryptsetup (Debian
//! `cryptsetup-bin`) accepts the image and key. Without cryptsetup the cryptsetup checks
//! are skipped loudly, unless `CI` is set, where they fail.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

fn cvm(args: &[&str]) -> Output {
    Command::new(CVM).args(args).output().expect("run cvm")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn cryptsetup(args: &[&str]) -> Output {
    Command::new("cryptsetup")
        .args(args)
        .output()
        .expect("run cryptsetup")
}

#[test]
fn message_image_key_mode_and_cryptsetup() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let key = dir.path().join("disk.key");
    let out = cvm(&[
        "image",
        "disk",
        "--size",
        "1M",
        "--out",
        p(&img),
        "--key-out",
        p(&key),
        "--message",
        "hello guest",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(p(&key)), "{stdout}");
    assert!(
        stdout.contains("cvm-verifier admin resource put"),
        "{stdout}"
    );

    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 64);
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        (16 << 20) + (1 << 20)
    );

    // The payload, read back the way a guest does.
    let k = std::fs::read(&key).unwrap();
    let mut f = std::fs::File::open(&img).unwrap();
    let h = luks::Header::read_from(&mut f).unwrap();
    let vk = h.unlock(&k, &mut f).unwrap();
    let mut buf = [0u8; 12];
    vk.read_plaintext(&mut f, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello guest\0");

    if test_kit::require_tool("cryptsetup") {
        let dump = cryptsetup(&["luksDump", p(&img)]);
        assert!(
            dump.status.success(),
            "{}",
            String::from_utf8_lossy(&dump.stderr)
        );
        let ok = cryptsetup(&["open", "--test-passphrase", "--key-file", p(&key), p(&img)]);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let wrong = dir.path().join("wrong.key");
        std::fs::write(&wrong, [0u8; 64]).unwrap();
        let bad = cryptsetup(&[
            "open",
            "--test-passphrase",
            "--key-file",
            p(&wrong),
            p(&img),
        ]);
        assert!(!bad.status.success());
    }
}

#[test]
fn refuses_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let key = dir.path().join("disk.key");
    // Existing key file: untouched, and no image is created.
    std::fs::write(&key, b"old key").unwrap();
    let out = cvm(&[
        "image",
        "disk",
        "--size",
        "64K",
        "--out",
        p(&img),
        "--key-out",
        p(&key),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an output that exists is a usage error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&key).unwrap(), b"old key");
    assert!(!img.exists());
    // Existing image: untouched, and no key file is created.
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&img, b"old image").unwrap();
    let out = cvm(&[
        "image",
        "disk",
        "--size",
        "64K",
        "--out",
        p(&img),
        "--key-out",
        p(&key),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an output that exists is a usage error"
    );
    assert_eq!(std::fs::read(&img).unwrap(), b"old image");
    assert!(!key.exists());
}

#[test]
fn from_file_and_argon2id() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let key = dir.path().join("disk.key");
    let input = dir.path().join("payload.bin");
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 249) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let out = cvm(&[
        "image",
        "disk",
        "--size",
        "16K",
        "--out",
        p(&img),
        "--key-out",
        p(&key),
        "--from-file",
        p(&input),
        "--kdf",
        "argon2id",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut vol = luks::Volume::open(&img, &std::fs::read(&key).unwrap()).unwrap();
    let mut buf = vec![0u8; 12_288];
    vol.read_plaintext(0, &mut buf).unwrap();
    assert_eq!(&buf[..data.len()], &data[..]);
    assert!(
        buf[data.len()..].iter().all(|&b| b == 0),
        "zero-padded to the sector end"
    );
    if test_kit::require_tool("cryptsetup") {
        let ok = cryptsetup(&["open", "--test-passphrase", "--key-file", p(&key), p(&img)]);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }
}

#[test]
fn rejects_bad_arguments_without_leaving_files() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let key = dir.path().join("disk.key");
    let input = dir.path().join("big.bin");
    std::fs::write(&input, vec![1u8; 8193]).unwrap();
    for args in [
        vec!["--size", "1000"],
        vec!["--size", "4K", "--from-file", p(&input)],
        vec!["--size", "4K", "--message", &"x".repeat(4096)],
        vec!["--size", "4K", "--message", "a", "--from-file", p(&input)],
    ] {
        let mut a = vec!["image", "disk", "--out", p(&img), "--key-out", p(&key)];
        a.extend(args.iter().copied());
        let out = cvm(&a);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(!img.exists() && !key.exists(), "{args:?} left files behind");
    }
}

/// `--from-dir`: an ext4 file system made by `mkfs.ext4 -d`, checked with e2fsprogs'
/// `debugfs` on the decrypted payload.
#[test]
fn from_dir_makes_ext4() {
    test_kit::require!(tool "debugfs");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("root");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hello.txt"), b"hello from ext4\n").unwrap();
    let img = dir.path().join("disk.img");
    let key = dir.path().join("disk.key");
    let out = cvm(&[
        "image",
        "disk",
        "--size",
        "4M",
        "--out",
        p(&img),
        "--key-out",
        p(&key),
        "--from-dir",
        p(&src),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let mut vol = luks::Volume::open(&img, &std::fs::read(&key).unwrap()).unwrap();
    let mut plain = vec![0u8; vol.payload_size() as usize];
    vol.read_plaintext(0, &mut plain).unwrap();
    let plain_path = dir.path().join("plain.ext4");
    std::fs::write(&plain_path, &plain).unwrap();
    let cat = Command::new("debugfs")
        .args(["-R", "cat /etc/hello.txt", p(&plain_path)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "hello from ext4\n");
}
