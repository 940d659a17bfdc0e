//! OVMF SEV metadata ("ASEV"): the memory ranges the secure processor must see at launch.

use serde::Serialize;

use super::{read_u32, FirmwareError, FirmwareImage, FOUR_GIB, PAGE_SIZE, SEV_METADATA_GUID};

/// Type of an SEV metadata section (OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SevSectionType {
    /// Memory the firmware pre-validates (measured as ZERO pages).
    SnpSecMem,
    /// The SNP secrets page.
    SnpSecrets,
    /// The CPUID table page.
    Cpuid,
    /// The SVSM calling area (measured as ZERO pages).
    SvsmCaa,
    /// The kernel/initrd/cmdline hashes table page.
    SnpKernelHashes,
}

impl SevSectionType {
    fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::SnpSecMem,
            2 => Self::SnpSecrets,
            3 => Self::Cpuid,
            4 => Self::SvsmCaa,
            0x10 => Self::SnpKernelHashes,
            _ => return None,
        })
    }

    /// The raw type value.
    pub fn raw(self) -> u32 {
        match self {
            Self::SnpSecMem => 1,
            Self::SnpSecrets => 2,
            Self::Cpuid => 3,
            Self::SvsmCaa => 4,
            Self::SnpKernelHashes => 0x10,
        }
    }
}

/// One SEV metadata section: a page-aligned GPA range and its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SevSection {
    /// Guest physical address (page-aligned, below 4 GiB).
    pub gpa: u64,
    /// Size in bytes (a non-zero multiple of 4096).
    pub size: u64,
    /// What the range is for.
    pub section_type: SevSectionType,
}

const HEADER_LEN: usize = 16;
const DESC_LEN: usize = 12;

fn malformed(detail: impl Into<String>) -> FirmwareError {
    FirmwareError::MalformedMetadata {
        kind: "SEV",
        detail: detail.into(),
    }
}

impl FirmwareImage {
    /// Parses and validates the SEV metadata sections, in table order.
    ///
    /// Sections must be page-aligned, non-empty, below 4 GiB, must not overlap each
    /// other or the firmware image, and the secrets and CPUID sections must be one page.
    pub fn sev_metadata(&self) -> Result<Vec<SevSection>, FirmwareError> {
        let start = match self.offset_from_end(&SEV_METADATA_GUID, "SEV metadata")? {
            Some(s) => s,
            None if self.table_entry(&SEV_METADATA_GUID).is_none() => {
                return Err(FirmwareError::NoSevMetadata)
            }
            None => return Err(malformed("offset points before the start of the image")),
        };
        let data = self.data();
        let hdr = data
            .get(start..)
            .filter(|h| h.len() >= HEADER_LEN)
            .ok_or_else(|| malformed("header is out of range"))?;
        if &hdr[..4] != b"ASEV" {
            return Err(malformed("signature is not \"ASEV\""));
        }
        let len = read_u32(hdr, 4).unwrap_or(0) as usize;
        let version = read_u32(hdr, 8).unwrap_or(0);
        let count = read_u32(hdr, 12).unwrap_or(0) as usize;
        if version != 1 {
            return Err(malformed(format!("unsupported version {version}")));
        }
        if len > hdr.len() {
            return Err(malformed("length runs past the end of the image"));
        }
        let needed = count
            .checked_mul(DESC_LEN)
            .and_then(|n| n.checked_add(HEADER_LEN));
        if needed.is_none_or(|n| n > len) {
            return Err(malformed(format!(
                "{count} sections do not fit in {len} bytes"
            )));
        }
        let mut out: Vec<SevSection> = Vec::with_capacity(count);
        for i in 0..count {
            let d = HEADER_LEN + i * DESC_LEN;
            let gpa = u64::from(read_u32(hdr, d).unwrap_or(0));
            let size = u64::from(read_u32(hdr, d + 4).unwrap_or(0));
            let raw_type = read_u32(hdr, d + 8).unwrap_or(0);
            let section_type = SevSectionType::from_raw(raw_type)
                .ok_or_else(|| malformed(format!("section {i} has unknown type {raw_type:#x}")))?;
            if size == 0 || gpa % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 {
                return Err(malformed(format!(
                    "section {i} ({gpa:#x}, {size:#x}) is empty or not page-aligned"
                )));
            }
            if gpa + size > FOUR_GIB {
                return Err(malformed(format!(
                    "section {i} ({gpa:#x}, {size:#x}) extends past 4 GiB"
                )));
            }
            if gpa + size > self.gpa() {
                return Err(malformed(format!(
                    "section {i} ({gpa:#x}, {size:#x}) overlaps the firmware image"
                )));
            }
            if matches!(
                section_type,
                SevSectionType::SnpSecrets | SevSectionType::Cpuid
            ) && size != PAGE_SIZE
            {
                return Err(malformed(format!(
                    "section {i} ({section_type:?}) must be exactly one page"
                )));
            }
            if let Some(o) = out
                .iter()
                .find(|o| gpa < o.gpa + o.size && o.gpa < gpa + size)
            {
                return Err(malformed(format!(
                    "section {i} ({gpa:#x}, {size:#x}) overlaps section at {:#x}",
                    o.gpa
                )));
            }
            out.push(SevSection {
                gpa,
                size,
                section_type,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{sev_image as image_with, ImageBuilder};

    #[test]
    fn parses_sections_in_order() {
        let img = image_with(
            8192,
            &[
                (0x80_0000, 0x9000, 1),
                (0x80_9000, 0x1000, 2),
                (0x80_a000, 0x1000, 3),
                (0x80_b000, 0x1000, 0x10),
            ],
        );
        let s = FirmwareImage::parse(img).unwrap().sev_metadata().unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(
            s[0],
            SevSection {
                gpa: 0x80_0000,
                size: 0x9000,
                section_type: SevSectionType::SnpSecMem
            }
        );
        assert_eq!(s[3].section_type, SevSectionType::SnpKernelHashes);
    }

    #[test]
    fn rejects_bad_sections() {
        let cases: &[&[(u32, u32, u32)]] = &[
            &[(0x80_0000, 0x1000, 7)],                         // unknown type
            &[(0x80_0100, 0x1000, 1)],                         // unaligned
            &[(0x80_0000, 0, 1)],                              // empty
            &[(0x80_0000, 0x2000, 2)],                         // secrets bigger than a page
            &[(0x80_0000, 0x2000, 1), (0x80_1000, 0x1000, 3)], // overlap
            &[(0xffff_f000, 0x1000, 1)],                       // overlaps firmware
        ];
        for c in cases {
            let err = FirmwareImage::parse(image_with(8192, c))
                .unwrap()
                .sev_metadata()
                .unwrap_err();
            assert!(
                matches!(err, FirmwareError::MalformedMetadata { .. }),
                "{c:?}: {err}"
            );
        }
    }

    #[test]
    fn missing_metadata_is_reported() {
        let mut b = ImageBuilder::default();
        b.entries
            .push((super::super::SEV_ES_RESET_BLOCK_GUID, vec![0; 4]));
        let fw = FirmwareImage::parse(b.build(4096)).unwrap();
        assert_eq!(fw.sev_metadata().unwrap_err(), FirmwareError::NoSevMetadata);
        let fw = FirmwareImage::parse(vec![0; 4096]).unwrap();
        assert_eq!(fw.sev_metadata().unwrap_err(), FirmwareError::NoFooterTable);
    }
}
