//! The extended-report certificate table (GHCB specification, SNP_EXT_GUEST_REQUEST;
//! Linux `Documentation/virt/coco/sev-guest.rst`).
//!
//! ```text
//! struct cert_table {
//!     struct { u8 guid[16]; u32 offset; u32 length; } entry[];   // ends with an all-zero entry
//! };                                                              // then the certificate bytes
//! ```
//!
//! Offsets are from the start of the table; integers are little-endian; GUIDs are in
//! RFC 4122 byte order (as the `sev` crate and go-sev-guest write them). The buffer may
//! be padded (the kernel hands out whole pages). The parser bounds-checks every entry,
//! refuses entries that overlap the header, duplicate GUIDs and tables without a
//! terminator.

use crate::ErrorKind;

/// Size of one table entry.
pub const ENTRY_LEN: usize = 24;
/// Largest number of entries accepted.
pub const MAX_ENTRIES: usize = 64;

/// GUID of the ARK entry, c0b406a4-a803-4952-9743-3fb6014cd0ae.
pub const GUID_ARK: [u8; 16] = guid("c0b406a4-a803-4952-9743-3fb6014cd0ae");
/// GUID of the ASK entry, 4ab7b379-bbac-4fe4-a02f-05aef327c782.
pub const GUID_ASK: [u8; 16] = guid("4ab7b379-bbac-4fe4-a02f-05aef327c782");
/// GUID of the VCEK entry, 63da758d-e664-4564-adc5-f4b93be8accd.
pub const GUID_VCEK: [u8; 16] = guid("63da758d-e664-4564-adc5-f4b93be8accd");
/// GUID of the VLEK entry, a8074bc2-a25a-483e-aae6-39c045a0b8a1.
pub const GUID_VLEK: [u8; 16] = guid("a8074bc2-a25a-483e-aae6-39c045a0b8a1");
/// GUID of the CRL entry, 92f81bc3-5811-4d3d-97ff-d19f88dc67ea.
pub const GUID_CRL: [u8; 16] = guid("92f81bc3-5811-4d3d-97ff-d19f88dc67ea");

/// Parses a canonical GUID string into RFC 4122 bytes at compile time.
const fn guid(s: &str) -> [u8; 16] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("invalid GUID digit"),
        }
    }
    let b = s.as_bytes();
    let mut out = [0u8; 16];
    let mut i = 0;
    let mut o = 0;
    while i < b.len() {
        if b[i] == b'-' {
            i += 1;
            continue;
        }
        out[o] = nibble(b[i]) << 4 | nibble(b[i + 1]);
        o += 1;
        i += 2;
    }
    out
}

/// Errors parsing a certificate table. All are [`ErrorKind::Malformed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertTableError {
    /// The table ends before its terminating all-zero entry.
    #[error("the certificate table has no terminating entry")]
    Unterminated,
    /// More than [`MAX_ENTRIES`] entries.
    #[error("the certificate table has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// An entry points outside the buffer or into the table header.
    #[error(
        "certificate table entry {index} (offset {offset:#x}, length {length:#x}) is out of bounds"
    )]
    OutOfBounds {
        /// Entry index.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its length.
        length: u32,
    },
    /// An entry has length zero.
    #[error("certificate table entry {0} is empty")]
    EmptyEntry(usize),
    /// The same GUID appears twice.
    #[error("certificate table lists GUID {0} more than once")]
    DuplicateGuid(String),
    /// A table to build has too much data for 32-bit offsets.
    #[error("the certificates are too large for a certificate table")]
    TooLarge,
}

impl CertTableError {
    /// The verification error category: always [`ErrorKind::Malformed`].
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Malformed
    }
}

/// What an entry holds, from its GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertTableKind {
    /// AMD Root Key.
    Ark,
    /// AMD SEV Key (or ASVK when the VLEK is used).
    Ask,
    /// VCEK.
    Vcek,
    /// VLEK.
    Vlek,
    /// Certificate revocation list.
    Crl,
    /// Any other GUID.
    Other([u8; 16]),
}

impl CertTableKind {
    /// The entry GUID in RFC 4122 byte order.
    pub fn guid(self) -> [u8; 16] {
        match self {
            CertTableKind::Ark => GUID_ARK,
            CertTableKind::Ask => GUID_ASK,
            CertTableKind::Vcek => GUID_VCEK,
            CertTableKind::Vlek => GUID_VLEK,
            CertTableKind::Crl => GUID_CRL,
            CertTableKind::Other(g) => g,
        }
    }

    /// The kind a GUID names.
    pub fn from_guid(g: [u8; 16]) -> Self {
        match g {
            GUID_ARK => CertTableKind::Ark,
            GUID_ASK => CertTableKind::Ask,
            GUID_VCEK => CertTableKind::Vcek,
            GUID_VLEK => CertTableKind::Vlek,
            GUID_CRL => CertTableKind::Crl,
            other => CertTableKind::Other(other),
        }
    }
}

/// Formats a GUID in canonical form.
pub fn format_guid(g: &[u8; 16]) -> String {
    let h = hex::encode(g);
    format!(
        "{}-{}-{}-{}-{}",
        h.get(0..8).unwrap_or(""),
        h.get(8..12).unwrap_or(""),
        h.get(12..16).unwrap_or(""),
        h.get(16..20).unwrap_or(""),
        h.get(20..32).unwrap_or("")
    )
}

/// One certificate table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertTableEntry {
    /// What the entry holds.
    pub kind: CertTableKind,
    /// The certificate (DER) or CRL bytes.
    pub data: Vec<u8>,
}

/// A parsed certificate table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertTable {
    /// The entries, in table order.
    pub entries: Vec<CertTableEntry>,
}

impl CertTable {
    /// Parses a table (with any trailing padding).
    pub fn parse(bytes: &[u8]) -> Result<Self, CertTableError> {
        let mut raw: Vec<([u8; 16], u32, u32)> = Vec::new();
        let mut pos = 0usize;
        loop {
            let entry = bytes
                .get(pos..pos + ENTRY_LEN)
                .ok_or(CertTableError::Unterminated)?;
            let mut g = [0u8; 16];
            g.copy_from_slice(entry.get(..16).ok_or(CertTableError::Unterminated)?);
            let word = |o: usize| -> Result<u32, CertTableError> {
                let s = entry.get(o..o + 4).ok_or(CertTableError::Unterminated)?;
                Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            };
            let (offset, length) = (word(16)?, word(20)?);
            pos += ENTRY_LEN;
            if g == [0u8; 16] {
                break;
            }
            if raw.len() == MAX_ENTRIES {
                return Err(CertTableError::TooManyEntries);
            }
            raw.push((g, offset, length));
        }
        let header_end = pos;
        let mut entries: Vec<CertTableEntry> = Vec::with_capacity(raw.len());
        for (index, (g, offset, length)) in raw.into_iter().enumerate() {
            if length == 0 {
                return Err(CertTableError::EmptyEntry(index));
            }
            let start = offset as usize;
            let oob = CertTableError::OutOfBounds {
                index,
                offset,
                length,
            };
            let end = start.checked_add(length as usize).ok_or(oob.clone())?;
            if start < header_end {
                return Err(oob);
            }
            let data = bytes.get(start..end).ok_or(oob)?;
            let kind = CertTableKind::from_guid(g);
            if entries.iter().any(|e| e.kind == kind) {
                return Err(CertTableError::DuplicateGuid(format_guid(&g)));
            }
            entries.push(CertTableEntry {
                kind,
                data: data.to_vec(),
            });
        }
        Ok(Self { entries })
    }

    /// Serializes the table: entries, the terminator, then the data in entry order
    /// (the layout the `sev` crate's `cert_table_to_vec_bytes` produces).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CertTableError> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(CertTableError::TooManyEntries);
        }
        let header = (self.entries.len() + 1) * ENTRY_LEN;
        let total = self
            .entries
            .iter()
            .try_fold(header, |acc, e| acc.checked_add(e.data.len()));
        let total = total
            .filter(|t| u32::try_from(*t).is_ok())
            .ok_or(CertTableError::TooLarge)?;
        let mut out = Vec::with_capacity(total);
        let mut offset = header;
        for e in &self.entries {
            out.extend_from_slice(&e.kind.guid());
            out.extend_from_slice(&(offset as u32).to_le_bytes());
            out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
            offset += e.data.len();
        }
        out.extend_from_slice(&[0u8; ENTRY_LEN]);
        for e in &self.entries {
            out.extend_from_slice(&e.data);
        }
        Ok(out)
    }

    /// The data of the first entry of `kind`.
    pub fn get(&self, kind: CertTableKind) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| e.kind == kind)
            .map(|e| e.data.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_constants_match_their_strings() {
        assert_eq!(GUID_ARK[..4], [0xc0, 0xb4, 0x06, 0xa4]);
        assert_eq!(
            format_guid(&GUID_VCEK),
            "63da758d-e664-4564-adc5-f4b93be8accd"
        );
        assert_eq!(
            format_guid(&GUID_CRL),
            "92f81bc3-5811-4d3d-97ff-d19f88dc67ea"
        );
    }

    #[test]
    fn round_trip_with_padding() {
        let t = CertTable {
            entries: vec![
                CertTableEntry {
                    kind: CertTableKind::Ark,
                    data: vec![1; 25],
                },
                CertTableEntry {
                    kind: CertTableKind::Vcek,
                    data: vec![3; 15],
                },
            ],
        };
        let mut b = t.to_bytes().expect("builds");
        assert_eq!(b.len(), 3 * ENTRY_LEN + 40);
        b.resize(4096, 0);
        assert_eq!(CertTable::parse(&b).expect("parses"), t);
        assert_eq!(
            CertTable::parse(&b)
                .expect("parses")
                .get(CertTableKind::Vcek),
            Some(&[3u8; 15][..])
        );
    }

    #[test]
    fn refuses_malformed_tables() {
        let t = CertTable {
            entries: vec![CertTableEntry {
                kind: CertTableKind::Ask,
                data: vec![1; 8],
            }],
        };
        let b = t.to_bytes().expect("builds");
        // Truncated inside the data.
        assert!(matches!(
            CertTable::parse(&b[..b.len() - 1]),
            Err(CertTableError::OutOfBounds { .. })
        ));
        // No terminator.
        assert_eq!(
            CertTable::parse(&b[..ENTRY_LEN + 4]),
            Err(CertTableError::Unterminated)
        );
        assert_eq!(CertTable::parse(&[]), Err(CertTableError::Unterminated));
        // Offset into the header.
        let mut h = b.clone();
        h[16..20].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            CertTable::parse(&h),
            Err(CertTableError::OutOfBounds { .. })
        ));
        // Offset + length overflow.
        let mut o = b.clone();
        o[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        o[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            CertTable::parse(&o),
            Err(CertTableError::OutOfBounds { .. })
        ));
        // Empty entry.
        let mut z = b.clone();
        z[20..24].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(CertTable::parse(&z), Err(CertTableError::EmptyEntry(0)));
        // Duplicate GUID.
        let d = CertTable {
            entries: vec![
                CertTableEntry {
                    kind: CertTableKind::Ask,
                    data: vec![1],
                },
                CertTableEntry {
                    kind: CertTableKind::Ask,
                    data: vec![2],
                },
            ],
        };
        assert!(matches!(
            CertTable::parse(&d.to_bytes().expect("builds")),
            Err(CertTableError::DuplicateGuid(_))
        ));
    }
}
