//! GUIDs in the mixed-endian layout that UEFI and OVMF store on disk.

use std::fmt;
use std::str::FromStr;

/// A GUID, stored as its 16 on-disk bytes (UEFI "bytes_le" layout: the first three
/// fields little-endian, the last eight bytes as written).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Builds a GUID from its canonical text at compile time.
    ///
    /// # Panics
    /// At compile time (in a `const`) when `s` is not a canonical GUID string.
    pub const fn from_str_const(s: &str) -> Guid {
        let b = s.as_bytes();
        assert!(b.len() == 36, "GUID text must be 36 characters");
        // Text positions of the 16 bytes in canonical order (big-endian fields).
        const POS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        let mut be = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            be[i] = (hex_digit(b[POS[i]]) << 4) | hex_digit(b[POS[i] + 1]);
            i += 1;
        }
        Guid([
            be[3], be[2], be[1], be[0], be[5], be[4], be[7], be[6], be[8], be[9], be[10], be[11],
            be[12], be[13], be[14], be[15],
        ])
    }

    /// The 16 on-disk bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

const fn hex_digit(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("invalid hex digit in GUID"),
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        for x in &b[10..] {
            write!(f, "{x:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Text that is not a canonical GUID.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a GUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
pub struct GuidParseError(String);

impl FromStr for Guid {
    type Err = GuidParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.len() == 36
            && s.bytes().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_hexdigit(),
            });
        if !ok {
            return Err(GuidParseError(s.to_owned()));
        }
        Ok(Guid::from_str_const(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_endian_layout_matches_uefi() {
        // EFI_GLOBAL_VARIABLE 8be4df61-93ca-11d2-aa0d-00e098032b8c
        let g = Guid::from_str_const("8be4df61-93ca-11d2-aa0d-00e098032b8c");
        assert_eq!(
            g.0,
            [
                0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03,
                0x2b, 0x8c
            ]
        );
        assert_eq!(g.to_string(), "8be4df61-93ca-11d2-aa0d-00e098032b8c");
        assert_eq!(
            "8BE4DF61-93CA-11D2-AA0D-00E098032B8C"
                .parse::<Guid>()
                .unwrap(),
            g
        );
        assert!("8be4df61-93ca-11d2-aa0d-00e098032b8"
            .parse::<Guid>()
            .is_err());
        assert!("8be4df61x93ca-11d2-aa0d-00e098032b8c"
            .parse::<Guid>()
            .is_err());
    }
}
