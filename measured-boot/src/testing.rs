//! Builders of synthetic firmware images in the OVMF layout, for tests of this crate and
//! of its users (feature `test-utils`). They write exactly the structures the parsers
//! read: the footer GUID table, "ASEV" SEV metadata and "TDVF" TDX metadata.

use crate::firmware::{
    ENTRY_HEADER, FOOTER_GUID, SEV_ES_RESET_BLOCK_GUID, SEV_HASH_TABLE_RV_GUID, SEV_METADATA_GUID,
    TDX_METADATA_OFFSET_GUID,
};
use crate::guid::Guid;

/// Builds an image with a footer table.
#[derive(Debug, Default)]
pub struct ImageBuilder {
    /// Entries as (GUID, data), written in this order before the footer.
    pub entries: Vec<(Guid, Vec<u8>)>,
    /// Blobs written at offsets from the start of the image.
    pub blobs: Vec<(usize, Vec<u8>)>,
}

impl ImageBuilder {
    /// Serializes an image of `size` bytes.
    ///
    /// # Panics
    /// If the blobs or the table do not fit (a bug in the test that builds it).
    pub fn build(&self, size: usize) -> Vec<u8> {
        let mut img = vec![0u8; size];
        for (off, b) in &self.blobs {
            img[*off..*off + b.len()].copy_from_slice(b);
        }
        let mut table = Vec::new();
        for (g, d) in &self.entries {
            table.extend_from_slice(d);
            table.extend_from_slice(&((d.len() + ENTRY_HEADER) as u16).to_le_bytes());
            table.extend_from_slice(g.as_bytes());
        }
        table.extend_from_slice(&((table.len() + ENTRY_HEADER) as u16).to_le_bytes());
        table.extend_from_slice(FOOTER_GUID.as_bytes());
        let end = size - 32;
        img[end - table.len()..end].copy_from_slice(&table);
        img
    }
}

/// Serializes an "ASEV" block from (gpa, size, type) triples.
pub fn asev(sections: &[(u32, u32, u32)]) -> Vec<u8> {
    let mut v = b"ASEV".to_vec();
    v.extend_from_slice(&((16 + 12 * sections.len()) as u32).to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for (g, s, t) in sections {
        for x in [g, s, t] {
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    v
}

/// A TDVF section: (data_offset, raw_size, gpa, mem_size, type, attributes).
pub type TdvfSec = (u32, u32, u64, u64, u32, u32);

/// Serializes a "TDVF" descriptor.
pub fn tdvf(sections: &[TdvfSec]) -> Vec<u8> {
    let mut v = b"TDVF".to_vec();
    v.extend_from_slice(&((16 + 32 * sections.len()) as u32).to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for s in sections {
        v.extend_from_slice(&s.0.to_le_bytes());
        v.extend_from_slice(&s.1.to_le_bytes());
        v.extend_from_slice(&s.2.to_le_bytes());
        v.extend_from_slice(&s.3.to_le_bytes());
        v.extend_from_slice(&s.4.to_le_bytes());
        v.extend_from_slice(&s.5.to_le_bytes());
    }
    v
}

/// An image of `size` bytes with only SEV metadata (at offset 0x100).
pub fn sev_image(size: usize, sections: &[(u32, u32, u32)]) -> Vec<u8> {
    let mut b = ImageBuilder::default();
    b.blobs.push((0x100, asev(sections)));
    b.entries.push((
        SEV_METADATA_GUID,
        ((size - 0x100) as u32).to_le_bytes().to_vec(),
    ));
    b.build(size)
}

/// An image of `size` bytes with only TDX metadata (at offset 0x100).
pub fn tdx_image(size: usize, sections: &[TdvfSec]) -> Vec<u8> {
    let mut b = ImageBuilder::default();
    b.blobs.push((0x100, tdvf(sections)));
    b.entries.push((
        TDX_METADATA_OFFSET_GUID,
        ((size - 0x100) as u32).to_le_bytes().to_vec(),
    ));
    b.build(size)
}

/// A complete OVMF-like image of `size` bytes (at least 64 KiB) whose contents are a
/// deterministic pattern: SEV metadata with SNP_SEC_MEM, SECRETS, CPUID and
/// SNP_KERNEL_HASHES (table at offset 0xC00 of its page), an AP reset block, and TDVF
/// metadata (the whole image as a measured BFV, a TD_HOB and TempMem).
pub fn ovmf_like(size: usize) -> Vec<u8> {
    assert!(
        size >= 0x10000 && size % 4096 == 0,
        "synthetic image must be >= 64 KiB and page-aligned"
    );
    let mut b = ImageBuilder::default();
    let pattern: Vec<u8> = (0..size as u32 - 0x1000)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    b.blobs.push((0, pattern));
    b.blobs.push((
        0x100,
        asev(&[
            (0x80_0000, 0x9000, 1),
            (0x80_9000, 0x1000, 2),
            (0x80_a000, 0x1000, 3),
            (0x80_b000, 0x1000, 0x10),
            (0x80_c000, 0x4000, 1),
        ]),
    ));
    b.blobs.push((
        0x400,
        tdvf(&[
            (
                0,
                size as u32,
                (1u64 << 32) - size as u64,
                size as u64,
                0,
                1,
            ),
            (0, 0, 0x80_9000, 0x2000, 2, 0),
            (0, 0, 0x80_b000, 0x5000, 3, 0),
        ]),
    ));
    b.entries.push((
        SEV_METADATA_GUID,
        ((size - 0x100) as u32).to_le_bytes().to_vec(),
    ));
    b.entries.push((
        TDX_METADATA_OFFSET_GUID,
        ((size - 0x400) as u32).to_le_bytes().to_vec(),
    ));
    b.entries
        .push((SEV_ES_RESET_BLOCK_GUID, 0x80_b004u32.to_le_bytes().to_vec()));
    b.entries.push((
        SEV_HASH_TABLE_RV_GUID,
        [0x80_bc00u32.to_le_bytes(), 0x400u32.to_le_bytes()].concat(),
    ));
    b.build(size)
}

/// The size of [`emulated_guest_image`]: 64 KiB, mapped just below 4 GiB.
pub const EMULATED_GUEST_IMAGE_SIZE: usize = 0x10000;

/// A 64 KiB firmware in the OVMF layout for tiny test guests under the emulated TEEs:
/// SEV metadata (SNP_SEC_MEM, SECRETS and CPUID pages at 8 MiB), an AP reset block at
/// 0xFFFFF000, and TDVF metadata (the whole image as a measured BFV, and TempMem), with
/// `code` at 0xFFFFF000 (offset 0xF000), reached by a `jmp` from the reset vector.
///
/// # Panics
/// If `code` is longer than 0xE00 bytes (it would overwrite the footer table).
pub fn emulated_guest_image(code: &[u8]) -> Vec<u8> {
    const SIZE: usize = EMULATED_GUEST_IMAGE_SIZE;
    assert!(
        code.len() <= 0xE00,
        "guest code would overlap the footer table"
    );
    let mut b = ImageBuilder::default();
    b.blobs.push((0xF000, code.to_vec()));
    b.blobs.push((
        0x100,
        asev(&[
            (0x80_0000, 0x8000, 1),
            (0x80_8000, 0x1000, 2),
            (0x80_9000, 0x1000, 3),
        ]),
    ));
    b.blobs.push((
        0x400,
        tdvf(&[
            (0, SIZE as u32, (1 << 32) - SIZE as u64, SIZE as u64, 0, 1),
            (0, 0, 0x80_0000, 0x2000, 3, 0),
        ]),
    ));
    b.entries.push((
        SEV_METADATA_GUID,
        ((SIZE - 0x100) as u32).to_le_bytes().to_vec(),
    ));
    b.entries.push((
        TDX_METADATA_OFFSET_GUID,
        ((SIZE - 0x400) as u32).to_le_bytes().to_vec(),
    ));
    b.entries.push((
        SEV_ES_RESET_BLOCK_GUID,
        0xffff_f000u32.to_le_bytes().to_vec(),
    ));
    let mut img = b.build(SIZE);
    img[0xFFF0..0xFFF3].copy_from_slice(&[0xe9, 0x0d, 0xf0]); // jmp 0xF000 (rel16)
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::FirmwareImage;

    #[test]
    fn the_emulated_guest_image_parses_with_code_behind_the_reset_vector() {
        let code = [0xf4u8, 0xeb, 0xfd];
        let img = emulated_guest_image(&code);
        assert_eq!(&img[0xF000..0xF003], &code);
        assert_eq!(&img[0xFFF0..0xFFF3], &[0xe9, 0x0d, 0xf0]);
        let fw = FirmwareImage::parse(img).unwrap();
        assert_eq!(fw.gpa(), (1 << 32) - EMULATED_GUEST_IMAGE_SIZE as u64);
        assert_eq!(fw.sev_metadata().unwrap().len(), 3);
        assert_eq!(fw.tdx_metadata().unwrap().len(), 2);
        assert_eq!(fw.sev_es_reset_eip().unwrap(), 0xffff_f000);
    }
}
