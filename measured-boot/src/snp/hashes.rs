//! The kernel hashes table (QEMU format) that measured direct boot relies on.
//!
//! The host places SHA-256 hashes of the kernel, initrd and command line in a page the
//! PSP measures; the firmware later hashes what the host actually delivered and refuses
//! to boot on any difference. Layout (168 bytes, padded to 176):
//! header GUID `9438d606-…` | u16 168 | three entries {GUID | u16 50 | SHA-256} for the
//! command line (including its terminating NUL), the initrd and the kernel (whole file).

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::firmware::PAGE_SIZE;
use crate::guid::Guid;

/// Header GUID of the table.
pub const TABLE_HEADER_GUID: Guid = Guid::from_str_const("9438d606-4f22-4cc9-b479-a793d411fd21");
/// Entry GUID of the kernel hash.
pub const KERNEL_ENTRY_GUID: Guid = Guid::from_str_const("4de79437-abd2-427f-b835-d5b172d2045b");
/// Entry GUID of the initrd hash.
pub const INITRD_ENTRY_GUID: Guid = Guid::from_str_const("44baf731-3a2f-4bd7-9af1-41e29169781d");
/// Entry GUID of the command-line hash.
pub const CMDLINE_ENTRY_GUID: Guid = Guid::from_str_const("97d02dd8-bd20-4c94-aa78-e7714d36ab2a");

/// Length of the table proper.
pub const TABLE_LEN: usize = 168;
/// Length with padding to 16 bytes, as placed in the page.
pub const PADDED_TABLE_LEN: usize = 176;
const ENTRY_LEN: usize = 50;

/// The three hashes of measured direct boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SevHashes {
    /// SHA-256 of the command line including its terminating NUL.
    #[serde(with = "hex::serde")]
    pub cmdline: [u8; 32],
    /// SHA-256 of the initrd (of nothing when there is none).
    #[serde(with = "hex::serde")]
    pub initrd: [u8; 32],
    /// SHA-256 of the whole kernel file.
    #[serde(with = "hex::serde")]
    pub kernel: [u8; 32],
}

/// A malformed hashes table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashesTableError {
    /// The table does not fit at the requested offset of its page.
    #[error(
        "a {PADDED_TABLE_LEN}-byte hashes table does not fit at offset {0:#x} of a 4 KiB page"
    )]
    BadOffset(usize),
    /// The bytes are not a hashes table.
    #[error("not a kernel hashes table: {0}")]
    Malformed(&'static str),
}

impl SevHashes {
    /// Hashes a kernel, an optional initrd and an optional command line exactly as QEMU
    /// and sev-snp-measure do.
    pub fn compute(kernel: &[u8], initrd: Option<&[u8]>, cmdline: Option<&str>) -> Self {
        let mut c = Sha256::new();
        c.update(cmdline.unwrap_or("").as_bytes());
        c.update([0u8]);
        Self {
            cmdline: c.finalize().into(),
            initrd: Sha256::digest(initrd.unwrap_or(&[])).into(),
            kernel: Sha256::digest(kernel).into(),
        }
    }

    /// The 176-byte padded table.
    pub fn to_table(&self) -> [u8; PADDED_TABLE_LEN] {
        let mut t = [0u8; PADDED_TABLE_LEN];
        t[..16].copy_from_slice(TABLE_HEADER_GUID.as_bytes());
        t[16..18].copy_from_slice(&(TABLE_LEN as u16).to_le_bytes());
        let entries = [
            (CMDLINE_ENTRY_GUID, &self.cmdline),
            (INITRD_ENTRY_GUID, &self.initrd),
            (KERNEL_ENTRY_GUID, &self.kernel),
        ];
        for (i, (g, h)) in entries.iter().enumerate() {
            let o = 18 + i * ENTRY_LEN;
            t[o..o + 16].copy_from_slice(g.as_bytes());
            t[o + 16..o + 18].copy_from_slice(&(ENTRY_LEN as u16).to_le_bytes());
            t[o + 18..o + 50].copy_from_slice(*h);
        }
        t
    }

    /// A 4 KiB page holding the table at `offset` and zeros elsewhere.
    pub fn to_page(
        &self,
        offset: usize,
    ) -> Result<Box<[u8; PAGE_SIZE as usize]>, HashesTableError> {
        if offset + PADDED_TABLE_LEN > PAGE_SIZE as usize {
            return Err(HashesTableError::BadOffset(offset));
        }
        let mut p = Box::new([0u8; PAGE_SIZE as usize]);
        p[offset..offset + PADDED_TABLE_LEN].copy_from_slice(&self.to_table());
        Ok(p)
    }

    /// Parses a table (as the firmware reads it from the measured page).
    pub fn parse(b: &[u8]) -> Result<Self, HashesTableError> {
        let t = b
            .get(..TABLE_LEN)
            .ok_or(HashesTableError::Malformed("too short"))?;
        if &t[..16] != TABLE_HEADER_GUID.as_bytes() {
            return Err(HashesTableError::Malformed("wrong header GUID"));
        }
        if t[16..18] != (TABLE_LEN as u16).to_le_bytes() {
            return Err(HashesTableError::Malformed("wrong table length"));
        }
        let mut out = SevHashes {
            cmdline: [0; 32],
            initrd: [0; 32],
            kernel: [0; 32],
        };
        let mut seen = [false; 3];
        for i in 0..3 {
            let e = &t[18 + i * ENTRY_LEN..18 + (i + 1) * ENTRY_LEN];
            if e[16..18] != (ENTRY_LEN as u16).to_le_bytes() {
                return Err(HashesTableError::Malformed("wrong entry length"));
            }
            let (slot, idx) = match &e[..16] {
                g if g == CMDLINE_ENTRY_GUID.as_bytes() => (&mut out.cmdline, 0),
                g if g == INITRD_ENTRY_GUID.as_bytes() => (&mut out.initrd, 1),
                g if g == KERNEL_ENTRY_GUID.as_bytes() => (&mut out.kernel, 2),
                _ => return Err(HashesTableError::Malformed("unknown entry GUID")),
            };
            if std::mem::replace(&mut seen[idx], true) {
                return Err(HashesTableError::Malformed("duplicate entry"));
            }
            slot.copy_from_slice(&e[18..50]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_hash_includes_the_nul() {
        let h = SevHashes::compute(b"kernel", None, Some("console=ttyS0"));
        assert_eq!(
            h.cmdline,
            <[u8; 32]>::from(Sha256::digest(b"console=ttyS0\0"))
        );
        assert_eq!(h.initrd, <[u8; 32]>::from(Sha256::digest(b"")));
        let none = SevHashes::compute(b"kernel", None, None);
        assert_eq!(none.cmdline, <[u8; 32]>::from(Sha256::digest(b"\0")));
    }

    #[test]
    fn table_round_trips_and_is_laid_out_like_qemu() {
        let h = SevHashes::compute(b"k", Some(b"i"), Some("c"));
        let t = h.to_table();
        assert_eq!(&t[16..18], &[168, 0]);
        assert_eq!(&t[18..34], CMDLINE_ENTRY_GUID.as_bytes());
        assert_eq!(&t[34..36], &[50, 0]);
        assert_eq!(&t[118..134], KERNEL_ENTRY_GUID.as_bytes());
        assert_eq!(&t[168..], &[0u8; 8]);
        assert_eq!(SevHashes::parse(&t).unwrap(), h);
        let page = h.to_page(0xc00).unwrap();
        assert_eq!(&page[0xc00..0xc00 + 176], &t[..]);
        assert_eq!(
            h.to_page(4000).unwrap_err(),
            HashesTableError::BadOffset(4000)
        );
    }

    #[test]
    fn parse_rejects_tampering() {
        let t = SevHashes::compute(b"k", None, None).to_table();
        for (pos, what) in [
            (0, "header"),
            (16, "length"),
            (18, "guid"),
            (34, "entry length"),
        ] {
            let mut bad = t;
            bad[pos] ^= 1;
            assert!(SevHashes::parse(&bad).is_err(), "{what}");
        }
        let mut dup = t;
        dup.copy_within(18..34, 68); // initrd GUID -> cmdline GUID
        assert_eq!(
            SevHashes::parse(&dup).unwrap_err(),
            HashesTableError::Malformed("duplicate entry")
        );
    }
}
