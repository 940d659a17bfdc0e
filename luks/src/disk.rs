//! The 4096-byte binary header of each LUKS2 header copy (LUKS2 on-disk format
//! specification, section 2: `struct luks2_hdr_disk`). All integers are big-endian.
//!
//! | offset | size | field                                   |
//! |-------:|-----:|-----------------------------------------|
//! | 0      | 6    | magic `LUKS\xba\xbe` / `SKUL\xba\xbe`   |
//! | 6      | 2    | version (2)                             |
//! | 8      | 8    | hdr_size (binary header + JSON area)    |
//! | 16     | 8    | seqid                                   |
//! | 24     | 48   | label (NUL-padded)                      |
//! | 72     | 32   | checksum_alg (`sha256`)                 |
//! | 104    | 64   | salt                                    |
//! | 168    | 40   | uuid                                    |
//! | 208    | 48   | subsystem                               |
//! | 256    | 8    | hdr_offset (this copy's device offset)  |
//! | 264    | 184  | padding                                 |
//! | 448    | 64   | csum: SHA-256 over `hdr_size` bytes with this field zeroed |
//! | 512    | 3584 | padding                                 |

use alloc::string::String;
use sha2::{Digest, Sha256};

use crate::Error;

/// Size of the binary part of a header copy.
pub const BINARY_HEADER_LEN: usize = 4096;
/// Magic of the primary header copy.
pub const MAGIC_PRIMARY: [u8; 6] = *b"LUKS\xba\xbe";
/// Magic of the secondary header copy.
pub const MAGIC_SECONDARY: [u8; 6] = *b"SKUL\xba\xbe";
/// The header sizes the specification allows; the secondary copy sits at `hdr_size`, so
/// these are also where a reader looks for it when the primary is damaged.
pub const HEADER_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];

pub(crate) const OFF_VERSION: usize = 6;
pub(crate) const OFF_HDR_SIZE: usize = 8;
pub(crate) const OFF_SEQID: usize = 16;
pub(crate) const OFF_LABEL: usize = 24;
pub(crate) const OFF_CSUM_ALG: usize = 72;
pub(crate) const OFF_SALT: usize = 104;
pub(crate) const OFF_UUID: usize = 168;
pub(crate) const OFF_SUBSYSTEM: usize = 208;
pub(crate) const OFF_HDR_OFFSET: usize = 256;
pub(crate) const OFF_CSUM: usize = 448;
pub(crate) const CSUM_LEN: usize = 64;

/// The fields of one binary header, validated except for the checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BinaryHeader {
    pub hdr_size: u64,
    pub seqid: u64,
    pub label: String,
    pub uuid: String,
    pub subsystem: String,
}

fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Parses the binary header of the copy at device offset `offset`; `bytes` starts there.
pub(crate) fn parse_binary(
    bytes: &[u8],
    offset: u64,
    magic: &[u8; 6],
) -> Result<BinaryHeader, Error> {
    let b = bytes.get(..BINARY_HEADER_LEN).ok_or(Error::Truncated {
        needed: BINARY_HEADER_LEN,
        got: bytes.len(),
    })?;
    if &b[..6] != magic {
        return Err(Error::BadMagic { offset });
    }
    let version = u16::from_be_bytes([b[OFF_VERSION], b[OFF_VERSION + 1]]);
    if version != 2 {
        return Err(Error::UnsupportedVersion(version));
    }
    let hdr_size = be64(b, OFF_HDR_SIZE);
    if !HEADER_SIZES.contains(&hdr_size) {
        return Err(Error::BadHeaderSize(hdr_size));
    }
    let claimed = be64(b, OFF_HDR_OFFSET);
    if claimed != offset {
        return Err(Error::BadHeaderOffset {
            found: offset,
            claimed,
        });
    }
    if c_string(&b[OFF_CSUM_ALG..OFF_SALT]) != "sha256" {
        return Err(Error::UnsupportedChecksum);
    }
    Ok(BinaryHeader {
        hdr_size,
        seqid: be64(b, OFF_SEQID),
        label: c_string(&b[OFF_LABEL..OFF_CSUM_ALG]),
        uuid: c_string(&b[OFF_UUID..OFF_SUBSYSTEM]),
        subsystem: c_string(&b[OFF_SUBSYSTEM..OFF_HDR_OFFSET]),
    })
}

/// SHA-256 over `copy` (binary header and JSON area) with the checksum field zeroed.
pub(crate) fn checksum(copy: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&copy[..OFF_CSUM]);
    h.update([0u8; CSUM_LEN]);
    h.update(&copy[OFF_CSUM + CSUM_LEN..]);
    h.finalize().into()
}

/// Checks the checksum of a whole header copy of `hdr_size` bytes.
pub(crate) fn verify_checksum(copy: &[u8], offset: u64) -> Result<(), Error> {
    let sum = checksum(copy);
    let stored = &copy[OFF_CSUM..OFF_CSUM + CSUM_LEN];
    // The field is 64 bytes; SHA-256 fills the first 32 and the rest must be zero.
    let ok = stored[..32] == sum && stored[32..].iter().all(|&b| b == 0);
    if ok {
        Ok(())
    } else {
        Err(Error::BadChecksum { offset })
    }
}
