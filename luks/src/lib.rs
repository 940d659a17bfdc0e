//! LUKS2 volumes: a `no_std` + `alloc` reader that unlocks and decrypts a volume inside a
//! bare-metal guest, and (feature `std`) a writer that creates volumes on the host without
//! dm-crypt.
//!
//! # Format subset
//!
//! Implemented from the LUKS2 on-disk format specification (cryptsetup
//! `docs/on-disk-format-luks2.pdf`) and checked against cryptsetup 2.6:
//!
//! | part | supported | rejected as [`Error::Unsupported`] |
//! |------|-----------|------------------------------------|
//! | binary header | both copies, `hdr_size` 16 KiB..4 MiB, SHA-256 checksum, higher `seqid` wins, secondary found at any allowed offset if the primary is damaged | LUKS1, other checksum algorithms |
//! | keyslots | type `luks2`, AF `luks1` with 4000 stripes and a sha256/sha512 diffuser, area `raw` `aes-xts-plain64` (32- or 64-byte key, 512-byte sectors); priorities (0 = never tried) | `reencrypt` keyslots |
//! | keyslot KDF | `pbkdf2` (sha256, sha512), `argon2i`, `argon2id` (version 0x13) | others |
//! | digests | `pbkdf2` (sha256, sha512) | others |
//! | segments | exactly one `crypt` segment, `aes-xts-plain64` with a 32- or 64-byte key, sector size 512/1024/2048/4096, IV = the sector's position in 512-byte units (dm-crypt without `iv_large_sectors`, as cryptsetup sets up LUKS2), `iv_tweak` 0, size fixed or `dynamic` | integrity, several segments, non-zero `iv_tweak`, other ciphers |
//! | config | `json_size`, `keyslots_size` | non-empty `requirements.mandatory` |
//! | tokens | ignored | |
//!
//! The writer (`create`, feature `std`) produces what `cryptsetup luksFormat --type luks2` does by
//! default, with one keyslot: 16 KiB header copies, data at 16 MiB, AES-256-XTS, 4096-byte
//! sectors, PBKDF2-SHA-256 or Argon2id (see `KdfChoice` for why PBKDF2 at 1000
//! iterations is right for random key files).
//!
//! # Threat model
//!
//! The header is read from a disk the host controls, so in the guest every byte of it is
//! hostile input. The reader:
//!
//! - checks every length, offset and count before use (checked arithmetic; header sizes
//!   limited to the specification's list; keyslot areas inside the keyslots area and not
//!   overlapping; the keyslots area at most 128 MiB; the segment after it; salts and
//!   digests at most 64 bytes; at most 32 keyslots); allocation is bounded by the header
//!   size (at most 2 × 4 MiB), one keyslot's key material (256 000 bytes) and the Argon2
//!   memory cap; allocations are fallible ([`Error::OutOfMemory`], not an abort);
//! - bounds KDF work by caller-supplied [`Limits`] (Argon2 memory, time and lanes, PBKDF2
//!   iterations) before running any KDF, so a header cannot make a guest allocate
//!   gigabytes or spin for hours;
//! - fails closed with a precise [`Error`] on anything malformed or outside the subset,
//!   never panics on input (fuzzed by a proptest over random and mutated headers);
//! - compares digests in constant time and zeroizes the derived keys, the split key
//!   material and (on drop) the [`VolumeKey`] and AES round keys.
//!
//! Not in scope: the host can replace the whole disk, including with a volume for a key it
//! knows, or roll back sectors. XTS gives confidentiality, not integrity: the host can
//! corrupt or replay sectors undetected. Whoever needs integrity must check the content
//! (for example a signed or measured file system image) or use authenticated encryption.
//!
//! # Dependencies, and why
//!
//! - `sha2`, `pbkdf2`: header checksum, AF diffuser, PBKDF2 keyslots and digests
//!   (RustCrypto, the generation the workspace already uses).
//! - `argon2`: Argon2i/Argon2id keyslots (cryptsetup's default KDF); `no_std` with
//!   caller-provided memory, which lets us cap and fallibly allocate it.
//! - `aes`, `xts-mode`: `aes-xts-plain64`. `aes` picks AES-NI at run time (fine in the
//!   guest at CPL3) and zeroizes its round keys (feature `zeroize`).
//! - `serde`, `serde_json` (`alloc` only): the JSON metadata; serde_json's recursion limit
//!   bounds stack use on hostile nesting.
//! - `base64`: salts and digests in the JSON. `zeroize`: key hygiene. `thiserror`
//!   (without std): the error type.
//! - `rand_core` (`std` only): `OsRng` for the writer's keys, salts and stripes.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "std")] {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.img");
//! let key = [7u8; 64]; // use a random key file
//! let mut vol = luks::create(&path, 1 << 20, &key, &luks::CreateOptions::default()).unwrap();
//! vol.write_plaintext(0, b"hello\0").unwrap();
//!
//! // What a guest does, through any `BlockRead`:
//! let mut disk = std::fs::File::open(&path).unwrap();
//! let header = luks::Header::read_from(&mut disk).unwrap();
//! let vk = header.unlock(&key, &mut disk).unwrap();
//! let mut buf = [0u8; 6];
//! vk.read_plaintext(&mut disk, 0, &mut buf).unwrap();
//! assert_eq!(&buf, b"hello\0");
//! # }
//! ```
#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod crypto;
mod disk;
mod error;
mod header;
mod io;
mod metadata;
mod volume;
#[cfg(feature = "std")]
mod writer;

pub use crypto::Limits;
pub use disk::{BINARY_HEADER_LEN, HEADER_SIZES};
pub use error::Error;
pub use header::{header_area_len, Copy, Header};
pub use io::{BlockRead, IoError};
pub use metadata::{Argon2Type, Hash, Kdf, KeyDigest, Keyslot, Metadata, Segment};
pub use volume::VolumeKey;
#[cfg(feature = "std")]
pub use writer::{
    create, random_key, CreateOptions, KdfChoice, Volume, WriteError, DATA_OFFSET,
    MIN_PBKDF2_KEY_MATERIAL, VOLUME_KEY_LEN,
};
