//! TDVF metadata ("TDVF"): the sections a TDX VMM adds to the TD at build time.

use serde::Serialize;

use super::{
    read_u32, read_u64, FirmwareError, FirmwareImage, PAGE_SIZE, TDX_METADATA_OFFSET_GUID,
};

/// Type of a TDVF section (TDVF design guide, table "TDVF_SECTION.Type").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TdvfSectionType {
    /// Boot firmware volume: code, copied from the image.
    Bfv,
    /// Configuration firmware volume: copied from the image.
    Cfv,
    /// TD hand-off block, written by the VMM.
    TdHob,
    /// Temporary memory, zero-filled.
    TempMem,
    /// Permanent memory (accepted at run time with PAGE.AUG).
    PermMem,
    /// Payload (kernel) image.
    Payload,
    /// Payload parameters (kernel command line).
    PayloadParam,
}

impl TdvfSectionType {
    fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Bfv,
            1 => Self::Cfv,
            2 => Self::TdHob,
            3 => Self::TempMem,
            4 => Self::PermMem,
            5 => Self::Payload,
            6 => Self::PayloadParam,
            _ => return None,
        })
    }
}

/// Section attribute: measure the section's contents with TDH.MR.EXTEND.
pub const ATTR_MR_EXTEND: u32 = 1;
/// Section attribute: the pages are added at run time with TDH.MEM.PAGE.AUG.
pub const ATTR_PAGE_AUG: u32 = 2;

/// One TDVF section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TdvfSection {
    /// Offset of the section's data in the image.
    pub data_offset: u32,
    /// Bytes of data in the image (zero for sections the VMM fills).
    pub raw_size: u32,
    /// Guest physical address (page-aligned).
    pub gpa: u64,
    /// Size in guest memory (a multiple of 4096, at least `raw_size`).
    pub mem_size: u64,
    /// Section type.
    pub section_type: TdvfSectionType,
    /// Attribute bits ([`ATTR_MR_EXTEND`], [`ATTR_PAGE_AUG`]).
    pub attributes: u32,
}

impl TdvfSection {
    /// Whether the contents are measured into MRTD.
    pub fn measured(&self) -> bool {
        self.attributes & ATTR_MR_EXTEND != 0
    }

    /// Whether the pages are added at run time rather than at build time.
    pub fn page_aug(&self) -> bool {
        self.attributes & ATTR_PAGE_AUG != 0
    }
}

const HEADER_LEN: usize = 16;
const SECTION_LEN: usize = 32;

fn malformed(detail: impl Into<String>) -> FirmwareError {
    FirmwareError::MalformedMetadata {
        kind: "TDX",
        detail: detail.into(),
    }
}

impl FirmwareImage {
    /// Parses and validates the TDVF sections, in table order.
    pub fn tdx_metadata(&self) -> Result<Vec<TdvfSection>, FirmwareError> {
        let start = match self.offset_from_end(&TDX_METADATA_OFFSET_GUID, "TDX metadata")? {
            Some(s) => s,
            None if self.table_entry(&TDX_METADATA_OFFSET_GUID).is_none() => {
                return Err(FirmwareError::NoTdxMetadata)
            }
            None => return Err(malformed("offset points before the start of the image")),
        };
        let data = self.data();
        let hdr = data
            .get(start..)
            .filter(|h| h.len() >= HEADER_LEN)
            .ok_or_else(|| malformed("descriptor is out of range"))?;
        if &hdr[..4] != b"TDVF" {
            return Err(malformed("signature is not \"TDVF\""));
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
            .checked_mul(SECTION_LEN)
            .and_then(|n| n.checked_add(HEADER_LEN));
        if count == 0 || needed.is_none_or(|n| n > len) {
            return Err(malformed(format!(
                "{count} sections do not fit in {len} bytes"
            )));
        }
        let mut out: Vec<TdvfSection> = Vec::with_capacity(count);
        for i in 0..count {
            let d = HEADER_LEN + i * SECTION_LEN;
            let raw_type = read_u32(hdr, d + 24).unwrap_or(u32::MAX);
            let s = TdvfSection {
                data_offset: read_u32(hdr, d).unwrap_or(0),
                raw_size: read_u32(hdr, d + 4).unwrap_or(0),
                gpa: read_u64(hdr, d + 8).unwrap_or(0),
                mem_size: read_u64(hdr, d + 16).unwrap_or(0),
                section_type: TdvfSectionType::from_raw(raw_type)
                    .ok_or_else(|| malformed(format!("section {i} has unknown type {raw_type}")))?,
                attributes: read_u32(hdr, d + 28).unwrap_or(0),
            };
            validate(i, &s, data.len())?;
            if let Some(o) = out
                .iter()
                .find(|o| s.gpa < o.gpa + o.mem_size && o.gpa < s.gpa + s.mem_size)
            {
                return Err(malformed(format!(
                    "section {i} at {:#x} overlaps section at {:#x}",
                    s.gpa, o.gpa
                )));
            }
            out.push(s);
        }
        Ok(out)
    }
}

fn validate(i: usize, s: &TdvfSection, image_len: usize) -> Result<(), FirmwareError> {
    use TdvfSectionType::*;
    if s.attributes & !(ATTR_MR_EXTEND | ATTR_PAGE_AUG) != 0 {
        return Err(malformed(format!(
            "section {i} has unknown attribute bits {:#x}",
            s.attributes
        )));
    }
    if s.mem_size == 0 || s.gpa % PAGE_SIZE != 0 || s.mem_size % PAGE_SIZE != 0 {
        return Err(malformed(format!(
            "section {i} ({:#x}, {:#x}) is empty or not page-aligned",
            s.gpa, s.mem_size
        )));
    }
    if s.gpa
        .checked_add(s.mem_size)
        .is_none_or(|end| end > 1 << 52)
    {
        return Err(malformed(format!(
            "section {i} is beyond the guest physical address space"
        )));
    }
    if u64::from(s.raw_size) > s.mem_size {
        return Err(malformed(format!(
            "section {i} has more data ({}) than memory ({})",
            s.raw_size, s.mem_size
        )));
    }
    let data_end = s.data_offset as usize + s.raw_size as usize;
    if data_end > image_len {
        return Err(malformed(format!(
            "section {i} data runs past the end of the image"
        )));
    }
    match s.section_type {
        Bfv | Cfv if s.raw_size == 0 => Err(malformed(format!(
            "section {i} ({:?}) has no data",
            s.section_type
        ))),
        TdHob | TempMem | PermMem if s.raw_size != 0 => Err(malformed(format!(
            "section {i} ({:?}) must not carry data",
            s.section_type
        ))),
        PermMem if !s.page_aug() => Err(malformed(format!(
            "section {i} (PermMem) must have the PAGE.AUG attribute"
        ))),
        Bfv | Cfv | TdHob | TempMem if s.page_aug() => Err(malformed(format!(
            "section {i} ({:?}) cannot be added with PAGE.AUG",
            s.section_type
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{tdx_image as image_with, TdvfSec as Sec};

    #[test]
    fn parses_sections() {
        let img = image_with(
            0x4000,
            &[
                (0, 0x4000, 0xffff_c000, 0x4000, 0, 1),
                (0, 0, 0x80_0000, 0x1000, 2, 0),
            ],
        );
        let s = FirmwareImage::parse(img).unwrap().tdx_metadata().unwrap();
        assert_eq!(s.len(), 2);
        assert!(s[0].measured());
        assert_eq!(s[1].section_type, TdvfSectionType::TdHob);
        assert!(!s[1].measured());
    }

    #[test]
    fn rejects_bad_sections() {
        let cases: &[&[Sec]] = &[
            &[(0, 0x1000, 0xffff_c000, 0x4000, 9, 1)], // unknown type
            &[(0, 0x1000, 0xffff_c000, 0x4000, 0, 4)], // unknown attribute
            &[(0, 0x5000, 0xffff_c000, 0x4000, 0, 1)], // raw > mem
            &[(0x3000, 0x2000, 0xffff_c000, 0x4000, 0, 1)], // data past the image
            &[(0, 0, 0xffff_c000, 0x4000, 0, 1)],      // BFV without data
            &[(0, 0x10, 0x80_0000, 0x1000, 2, 0)],     // HOB with data
            &[(0, 0, 0x80_0000, 0x1000, 4, 0)],        // PermMem without AUG
            &[(0, 0, 0x80_0800, 0x1000, 3, 0)],        // unaligned
            &[
                (0, 0, 0x80_0000, 0x2000, 3, 0),
                (0, 0, 0x80_1000, 0x1000, 2, 0),
            ], // overlap
            &[],                                       // no sections
        ];
        for c in cases {
            let err = FirmwareImage::parse(image_with(0x4000, c))
                .unwrap()
                .tdx_metadata()
                .unwrap_err();
            assert!(
                matches!(err, FirmwareError::MalformedMetadata { .. }),
                "{c:?}: {err}"
            );
        }
    }
}
