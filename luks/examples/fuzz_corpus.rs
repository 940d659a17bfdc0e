//! Writes the seed corpus of the `luks_header` fuzz target (`fuzz/`): real LUKS2
//! headers made by this crate's writer, with the keyslot material that unlocks them.
//!
//! ```text
//! cargo run -p luks --example fuzz_corpus -- fuzz/corpus/luks_header
//! ```
//!
//! The target's input is: a shape byte, a key length byte (`len - 1`), the key, then
//! either the whole device (even shape) or the JSON area, a NUL and what follows the two
//! header copies (odd shape; the target rebuilds the binary headers and checksums).
//! Every seed is checked to unlock with the target's limits before it is written. The
//! keys and salts are random, so every run writes different bytes of the same shape.

use std::path::PathBuf;

use luks::{CreateOptions, Header, KdfChoice, Limits};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The fuzz target's KDF ceilings.
const LIMITS: Limits = Limits {
    max_argon2_memory_kib: 64,
    max_argon2_time: 2,
    max_argon2_cpus: 2,
    max_pbkdf2_iterations: 2000,
};
const HDR: usize = 16 * 1024;
/// One keyslot's material: 4000 anti-forensic stripes of the 64-byte volume key,
/// rounded up to 4 KiB.
const KEYSLOT_MATERIAL: usize = (4000 * 64usize).div_ceil(4096) * 4096;

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: fuzz_corpus <corpus directory>")?,
    );
    std::fs::create_dir_all(&out)?;
    let dir = tempfile::tempdir()?;
    let key = [0x6b_u8; 32];

    let opts = CreateOptions {
        kdf: KdfChoice::Pbkdf2Sha256 { iterations: 1000 },
        sector_size: 4096,
        label: "fuzz".into(),
    };
    let path = dir.path().join("pbkdf2.img");
    luks::create(&path, 4096, &key, &opts)?;
    let device = std::fs::read(&path)?;
    let device = &device[..2 * HDR + KEYSLOT_MATERIAL];
    let header = Header::parse(device)?;
    let mut io: &[u8] = device;
    header.unlock_with_limits(&key, &mut io, &LIMITS)?;

    // Even shape: the device as is.
    let mut whole = vec![0u8, (key.len() - 1) as u8];
    whole.extend_from_slice(&key);
    whole.extend_from_slice(device);
    std::fs::write(out.join("pbkdf2-device.bin"), &whole)?;

    // Odd shape: the JSON area, NUL, the keyslot material (placed at 32 KiB).
    let json_end = device[4096..HDR]
        .iter()
        .position(|&b| b == 0)
        .ok_or("the JSON area has no NUL")?;
    let mut split = vec![1u8, (key.len() - 1) as u8];
    split.extend_from_slice(&key);
    split.extend_from_slice(&device[4096..4096 + json_end]);
    split.push(0);
    split.extend_from_slice(&device[2 * HDR..]);
    std::fs::write(out.join("pbkdf2-json.bin"), &split)?;

    // An Argon2id header over the target's limits (refused before any KDF work): the
    // header copies only, wrong key.
    let opts = CreateOptions {
        kdf: KdfChoice::Argon2id {
            time: 4,
            memory_kib: 32,
            cpus: 1,
        },
        sector_size: 512,
        label: String::new(),
    };
    let path = dir.path().join("argon2.img");
    luks::create(&path, 4096, b"a passphrase", &opts)?;
    let device = std::fs::read(&path)?;
    let mut argon = vec![0u8, 11];
    argon.extend_from_slice(b"a passphrase");
    argon.extend_from_slice(&device[..2 * HDR]);
    std::fs::write(out.join("argon2id-headers.bin"), &argon)?;
    Ok(())
}
