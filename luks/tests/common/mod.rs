//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn cryptsetup(args: &[&str]) -> Output {
    let out = Command::new("cryptsetup")
        .args(args)
        .output()
        .expect("run cryptsetup");
    out
}

pub fn cryptsetup_ok(args: &[&str]) -> String {
    let out = cryptsetup(args);
    assert!(
        out.status.success(),
        "cryptsetup {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// 64 pseudo-random key-file bytes (deterministic per seed; tests only).
pub fn key(seed: u8) -> Vec<u8> {
    (0..64u32)
        .map(|i| (i.wrapping_mul(151).wrapping_add(u32::from(seed) * 77) % 251) as u8)
        .collect()
}

/// The volume key as cryptsetup reports it (`luksDump --dump-volume-key`).
pub fn cryptsetup_volume_key(image: &Path, keyfile: &Path) -> Vec<u8> {
    let out = cryptsetup_ok(&[
        "luksDump",
        "--dump-volume-key",
        "--key-file",
        p(keyfile),
        "-q",
        p(image),
    ]);
    // "MK dump:\t61 ...\n\t\t..." — hex bytes after "MK dump:" until the end.
    let start = out.find("MK dump:").expect("MK dump in output") + "MK dump:".len();
    let hex: String = out[start..]
        .split_whitespace()
        .take_while(|w| w.len() == 2 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    hex::decode(hex).unwrap()
}
