//! Firmware images: the OVMF footer GUID table and the SEV and TDX metadata it points to.
//!
//! An OVMF-compatible image carries, 32 bytes before its end, a table of GUID-tagged
//! entries that walks backwards: each entry is `data | u16 length | GUID`, and the
//! table ends with the footer entry `96b582de-1fb2-45f7-baea-a366c55a082d` whose length
//! covers the whole table. Entries point at the SEV metadata ("ASEV"), the TDX metadata
//! ("TDVF"), the SEV-ES AP reset block and the kernel hashes table.
//!
//! Every offset and length read from the image is checked before use: a malformed image
//! yields a [`FirmwareError`], never a panic.

pub mod sev;
pub mod tdx;

use std::collections::BTreeMap;

use crate::guid::Guid;

/// The firmware ends at 4 GiB in guest physical memory.
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// The largest firmware image accepted (it must fit below 4 GiB next to guest RAM).
pub const MAX_FIRMWARE_SIZE: usize = 256 << 20;
/// Page size of the secure processors.
pub const PAGE_SIZE: u64 = 4096;

/// Footer GUID that ends the table.
pub const FOOTER_GUID: Guid = Guid::from_str_const("96b582de-1fb2-45f7-baea-a366c55a082d");
/// SEV-ES AP reset block: `u32` reset EIP for application processors.
pub const SEV_ES_RESET_BLOCK_GUID: Guid =
    Guid::from_str_const("00f771de-1a7e-4fcb-890e-68c77e2fb44e");
/// SEV hashes table: `u32` GPA and `u32` size of the kernel hashes table.
pub const SEV_HASH_TABLE_RV_GUID: Guid =
    Guid::from_str_const("7255371f-3a3b-4b04-927b-1da6efa8d454");
/// SEV secret block: `u32` GPA and `u32` size.
pub const SEV_SECRET_BLOCK_GUID: Guid =
    Guid::from_str_const("4c2eb361-7d9b-4cc3-8081-127c90d3d294");
/// SEV metadata: `u32` offset of the "ASEV" header from the end of the image.
pub const SEV_METADATA_GUID: Guid = Guid::from_str_const("dc886566-984a-4798-a75e-5585a7bf67cc");
/// TDX metadata: `u32` offset of the "TDVF" descriptor from the end of the image.
pub const TDX_METADATA_OFFSET_GUID: Guid =
    Guid::from_str_const("e47a6535-984a-4798-865e-4685a7bf8ec2");

/// Errors found in a firmware image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FirmwareError {
    /// The image is empty, not a whole number of pages, or too large.
    #[error("firmware image size {0} bytes is not a non-zero multiple of 4096 of at most 256 MiB")]
    BadSize(usize),
    /// The image has no OVMF footer GUID table.
    #[error("firmware has no OVMF footer GUID table (expected GUID 96b582de-1fb2-45f7-baea-a366c55a082d 32 bytes before the end)")]
    NoFooterTable,
    /// The footer table is malformed.
    #[error("firmware footer GUID table is malformed: {0}")]
    MalformedTable(&'static str),
    /// A required footer table entry is absent.
    #[error("firmware footer table has no {name} entry ({guid})")]
    MissingEntry {
        /// What the entry is for.
        name: &'static str,
        /// Its GUID.
        guid: Guid,
    },
    /// A footer table entry is too short for its contents.
    #[error("firmware footer table entry {0} is too short")]
    ShortEntry(Guid),
    /// The image has no SEV metadata.
    #[error("firmware has no SEV metadata (footer entry dc886566-984a-4798-a75e-5585a7bf67cc): it cannot launch an SEV-SNP guest")]
    NoSevMetadata,
    /// The image has no TDX metadata.
    #[error("firmware has no TDX metadata (footer entry e47a6535-984a-4798-865e-4685a7bf8ec2): it cannot launch a TDX guest")]
    NoTdxMetadata,
    /// The SEV or TDX metadata is malformed.
    #[error("firmware {kind} metadata is malformed: {detail}")]
    MalformedMetadata {
        /// `SEV` or `TDX`.
        kind: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// A firmware image to be mapped so that it ends at 4 GiB.
#[derive(Debug, Clone)]
pub struct FirmwareImage {
    data: Vec<u8>,
    table: BTreeMap<Guid, (usize, usize)>,
}

impl FirmwareImage {
    /// Parses an image: checks its size and reads its footer GUID table (if any).
    ///
    /// An image without a footer table is accepted here; asking it for SEV or TDX
    /// metadata then fails with a precise error.
    pub fn parse(data: Vec<u8>) -> Result<Self, FirmwareError> {
        if data.is_empty() || data.len() % PAGE_SIZE as usize != 0 || data.len() > MAX_FIRMWARE_SIZE
        {
            return Err(FirmwareError::BadSize(data.len()));
        }
        let table = parse_footer_table(&data)?;
        Ok(Self { data, table })
    }

    /// The image bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The guest physical address of the first byte (the image ends at 4 GiB).
    pub fn gpa(&self) -> u64 {
        FOUR_GIB - self.data.len() as u64
    }

    /// Whether the image has an OVMF footer table.
    pub fn has_footer_table(&self) -> bool {
        !self.table.is_empty()
    }

    /// The data of the footer table entry `guid`, if present.
    pub fn table_entry(&self, guid: &Guid) -> Option<&[u8]> {
        self.table
            .get(guid)
            .and_then(|&(start, len)| self.data.get(start..start + len))
    }

    /// The GUIDs present in the footer table, in GUID order.
    pub fn table_guids(&self) -> impl Iterator<Item = &Guid> {
        self.table.keys()
    }

    /// Reads a little-endian `u32` at byte `offset` of a footer table entry.
    pub(crate) fn entry_u32(
        &self,
        guid: &Guid,
        name: &'static str,
        offset: usize,
    ) -> Result<u32, FirmwareError> {
        if !self.has_footer_table() {
            return Err(FirmwareError::NoFooterTable);
        }
        let entry = self
            .table_entry(guid)
            .ok_or(FirmwareError::MissingEntry { name, guid: *guid })?;
        read_u32(entry, offset).ok_or(FirmwareError::ShortEntry(*guid))
    }

    /// The EIP at which application processors start (SEV-ES reset block).
    pub fn sev_es_reset_eip(&self) -> Result<u32, FirmwareError> {
        self.entry_u32(&SEV_ES_RESET_BLOCK_GUID, "SEV-ES reset block", 0)
    }

    /// The GPA of the kernel hashes table (SEV hashes table entry).
    pub fn sev_hashes_table_gpa(&self) -> Result<u32, FirmwareError> {
        self.entry_u32(&SEV_HASH_TABLE_RV_GUID, "SEV hashes table", 0)
    }

    /// Resolves an "offset from the end of the image" pointer stored in entry `guid`.
    pub(crate) fn offset_from_end(
        &self,
        guid: &Guid,
        name: &'static str,
    ) -> Result<Option<usize>, FirmwareError> {
        if !self.has_footer_table() {
            return Err(FirmwareError::NoFooterTable);
        }
        if self.table_entry(guid).is_none() {
            return Ok(None);
        }
        let off = self.entry_u32(guid, name, 0)? as usize;
        Ok(self.data.len().checked_sub(off))
    }
}

/// Reads a little-endian `u16` at `off`, if in range.
pub(crate) fn read_u16(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off.checked_add(2)?)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
}

/// Reads a little-endian `u32` at `off`, if in range.
pub(crate) fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off.checked_add(4)?)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Reads a little-endian `u64` at `off`, if in range.
pub(crate) fn read_u64(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Bytes of an entry header: u16 length + GUID.
pub(crate) const ENTRY_HEADER: usize = 18;

fn parse_footer_table(data: &[u8]) -> Result<BTreeMap<Guid, (usize, usize)>, FirmwareError> {
    let mut table = BTreeMap::new();
    let Some(footer_start) = data.len().checked_sub(32 + ENTRY_HEADER) else {
        return Ok(table);
    };
    let guid_bytes = &data[footer_start + 2..footer_start + ENTRY_HEADER];
    if guid_bytes != FOOTER_GUID.as_bytes() {
        return Ok(table);
    }
    let total = read_u16(data, footer_start).unwrap_or(0) as usize;
    let Some(table_len) = total.checked_sub(ENTRY_HEADER) else {
        return Err(FirmwareError::MalformedTable(
            "footer entry length is shorter than its header",
        ));
    };
    let Some(table_start) = footer_start.checked_sub(table_len) else {
        return Err(FirmwareError::MalformedTable(
            "table extends before the start of the image",
        ));
    };
    // Walk backwards from the footer entry.
    let mut end = footer_start;
    while end - table_start >= ENTRY_HEADER {
        let hdr = end - ENTRY_HEADER;
        let len = read_u16(data, hdr).unwrap_or(0) as usize;
        if len < ENTRY_HEADER || len > end - table_start {
            return Err(FirmwareError::MalformedTable("entry length out of range"));
        }
        let mut g = [0u8; 16];
        g.copy_from_slice(&data[hdr + 2..end]);
        let guid = Guid(g);
        let data_start = end - len;
        if table
            .insert(guid, (data_start, len - ENTRY_HEADER))
            .is_some()
        {
            return Err(FirmwareError::MalformedTable("duplicate GUID entry"));
        }
        end = data_start;
    }
    if end != table_start {
        return Err(FirmwareError::MalformedTable(
            "trailing bytes that are not a whole entry",
        ));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ImageBuilder;

    #[test]
    fn parses_entries_walking_backwards() {
        let mut b = ImageBuilder::default();
        b.entries.push((
            SEV_ES_RESET_BLOCK_GUID,
            0xffff_f000u32.to_le_bytes().to_vec(),
        ));
        b.entries.push((
            SEV_HASH_TABLE_RV_GUID,
            [0x0080_ac00u32.to_le_bytes(), 0x400u32.to_le_bytes()].concat(),
        ));
        let fw = FirmwareImage::parse(b.build(8192)).unwrap();
        assert_eq!(fw.gpa(), FOUR_GIB - 8192);
        assert_eq!(fw.sev_es_reset_eip().unwrap(), 0xffff_f000);
        assert_eq!(fw.sev_hashes_table_gpa().unwrap(), 0x0080_ac00);
        assert_eq!(fw.table_guids().count(), 2);
    }

    #[test]
    fn rejects_bad_sizes_and_reports_missing_table() {
        assert_eq!(
            FirmwareImage::parse(vec![]).unwrap_err(),
            FirmwareError::BadSize(0)
        );
        assert_eq!(
            FirmwareImage::parse(vec![0; 4097]).unwrap_err(),
            FirmwareError::BadSize(4097)
        );
        let fw = FirmwareImage::parse(vec![0; 4096]).unwrap();
        assert!(!fw.has_footer_table());
        assert_eq!(
            fw.sev_es_reset_eip().unwrap_err(),
            FirmwareError::NoFooterTable
        );
    }

    #[test]
    fn rejects_malformed_and_duplicate_entries() {
        let mut b = ImageBuilder::default();
        b.entries.push((SEV_ES_RESET_BLOCK_GUID, vec![1, 2, 3, 4]));
        b.entries.push((SEV_ES_RESET_BLOCK_GUID, vec![1, 2, 3, 4]));
        assert!(matches!(
            FirmwareImage::parse(b.build(4096)),
            Err(FirmwareError::MalformedTable(_))
        ));

        let mut b = ImageBuilder::default();
        b.entries.push((SEV_ES_RESET_BLOCK_GUID, vec![1, 2, 3, 4]));
        let mut img = b.build(4096);
        // Corrupt the entry's length so it reaches past the table.
        let hdr = 4096 - 32 - 18 - 18;
        img[hdr..hdr + 2].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert!(matches!(
            FirmwareImage::parse(img),
            Err(FirmwareError::MalformedTable(_))
        ));
    }

    #[test]
    fn short_entry_is_an_error() {
        let mut b = ImageBuilder::default();
        b.entries.push((SEV_ES_RESET_BLOCK_GUID, vec![1, 2]));
        let fw = FirmwareImage::parse(b.build(4096)).unwrap();
        assert_eq!(
            fw.sev_es_reset_eip().unwrap_err(),
            FirmwareError::ShortEntry(SEV_ES_RESET_BLOCK_GUID)
        );
    }
}
