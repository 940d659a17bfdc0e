//! TCB_VERSION: the security patch levels of the SEV-SNP firmware components.
//!
//! A TCB_VERSION is a little-endian `u64` whose byte layout depends on the processor
//! generation (SEV-SNP ABI specification, "TCB_VERSION"):
//!
//! | byte | Milan / Genoa ("legacy") | Turin         |
//! |------|--------------------------|---------------|
//! | 0    | BOOT_LOADER              | FMC           |
//! | 1    | TEE                      | BOOT_LOADER   |
//! | 2    | reserved                 | TEE           |
//! | 3    | reserved                 | SNP           |
//! | 4    | reserved                 | reserved      |
//! | 5    | reserved                 | reserved      |
//! | 6    | SNP                      | reserved      |
//! | 7    | MICROCODE                | MICROCODE     |
//!
//! The raw value is kept as read ([`TcbVersion`]) so that serialization is exact; it is
//! decoded into [`TcbParts`] only once the product (and so the layout) is known. This
//! matches the `sev` crate's `TcbVersion::{from_legacy_bytes, from_turin_bytes}`.

use serde::{Deserialize, Serialize};

use super::Product;

/// The byte layout of a TCB_VERSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcbLayout {
    /// Milan and Genoa: BOOT_LOADER, TEE, 4 reserved bytes, SNP, MICROCODE.
    Legacy,
    /// Turin: FMC, BOOT_LOADER, TEE, SNP, 3 reserved bytes, MICROCODE.
    Turin,
}

impl TcbLayout {
    /// The layout used by `product`.
    pub fn for_product(product: Product) -> Self {
        match product {
            Product::Milan | Product::Genoa => TcbLayout::Legacy,
            Product::Turin => TcbLayout::Turin,
        }
    }
}

/// A raw TCB_VERSION exactly as it appears in a report (little-endian `u64`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct TcbVersion(pub u64);

impl TcbVersion {
    /// The eight bytes as they appear in the report.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_le_bytes()
    }

    /// From the eight bytes of the report.
    pub fn from_bytes(b: [u8; 8]) -> Self {
        Self(u64::from_le_bytes(b))
    }

    /// Decodes the components according to `layout`.
    pub fn decode(self, layout: TcbLayout) -> TcbParts {
        let b = self.to_bytes();
        match layout {
            TcbLayout::Legacy => TcbParts {
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
                fmc: None,
            },
            TcbLayout::Turin => TcbParts {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            },
        }
    }

    /// Encodes `parts` according to `layout` (reserved bytes zero; `fmc` ignored by the
    /// legacy layout, zero when absent in the Turin layout).
    pub fn encode(parts: &TcbParts, layout: TcbLayout) -> Self {
        let b = match layout {
            TcbLayout::Legacy => [
                parts.bootloader,
                parts.tee,
                0,
                0,
                0,
                0,
                parts.snp,
                parts.microcode,
            ],
            TcbLayout::Turin => [
                parts.fmc.unwrap_or(0),
                parts.bootloader,
                parts.tee,
                parts.snp,
                0,
                0,
                0,
                parts.microcode,
            ],
        };
        Self::from_bytes(b)
    }
}

/// The decoded security patch levels (SPLs) of one TCB_VERSION.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcbParts {
    /// SVN of the PSP boot loader.
    pub bootloader: u8,
    /// SVN of the PSP operating system (TEE).
    pub tee: u8,
    /// SVN of the SNP firmware.
    pub snp: u8,
    /// Lowest microcode patch level of all cores.
    pub microcode: u8,
    /// SVN of the FMC firmware (Turin and later only).
    pub fmc: Option<u8>,
}

impl TcbParts {
    /// Whether every component of `self` is at least the corresponding one of `min`.
    /// A missing FMC counts as 0.
    pub fn at_least(&self, min: &TcbParts) -> bool {
        self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
            && self.fmc.unwrap_or(0) >= min.fmc.unwrap_or(0)
    }
}

impl std::fmt::Display for TcbParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bl={},tee={},snp={},ucode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )?;
        if let Some(fmc) = self.fmc {
            write!(f, ",fmc={fmc}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_layout_matches_the_milan_vector() {
        // REPORTED_TCB of the milan-v2 vector: bytes 03 00 00 00 00 00 08 73.
        let t = TcbVersion::from_bytes([3, 0, 0, 0, 0, 0, 8, 0x73]);
        let p = t.decode(TcbLayout::Legacy);
        assert_eq!(
            p,
            TcbParts {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115,
                fmc: None
            }
        );
        assert_eq!(TcbVersion::encode(&p, TcbLayout::Legacy), t);
    }

    #[test]
    fn turin_layout_reorders_bytes() {
        let t = TcbVersion::from_bytes([1, 2, 3, 4, 0, 0, 0, 5]);
        let p = t.decode(TcbLayout::Turin);
        assert_eq!(
            p,
            TcbParts {
                fmc: Some(1),
                bootloader: 2,
                tee: 3,
                snp: 4,
                microcode: 5
            }
        );
        assert_eq!(TcbVersion::encode(&p, TcbLayout::Turin), t);
        // The same bytes mean something else in the legacy layout.
        assert_ne!(t.decode(TcbLayout::Legacy), p);
    }

    #[test]
    fn minimum_comparison_is_per_component() {
        let have = TcbParts {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: None,
        };
        assert!(have.at_least(&TcbParts {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: None
        }));
        assert!(!have.at_least(&TcbParts {
            bootloader: 4,
            ..have
        }));
        assert!(!have.at_least(&TcbParts {
            microcode: 116,
            ..have
        }));
        assert!(!have.at_least(&TcbParts {
            fmc: Some(1),
            ..have
        }));
    }
}
