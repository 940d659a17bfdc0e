//! TDX launch measurement: MRTD as the TDX module computes it, RTMR extension, the
//! CC event log, and the [`TdxLaunchPlan`].
//!
//! MRTD is one running SHA-384 over 128-byte TDH.MEM.PAGE.ADD records
//! (`"MEM.PAGE.ADD"` | GPA at byte 16 | zeros) and TDH.MR.EXTEND records (128 bytes
//! `"MR.EXTEND"` | chunk GPA at byte 16 | zeros, then the 256 chunk bytes). Upstream KVM
//! (KVM_TDX_INIT_MEM_REGION with KVM_TDX_MEASURE_MEMORY_REGION) adds each page and then
//! extends its sixteen 256-byte chunks, page by page, in TDVF section order; that is the
//! order [`Mrtd::add_region`] follows.

pub mod eventlog;
pub mod plan;

pub use plan::{DirectBoot, TdxLaunchPlan, TdxPlanError};

use sha2::{Digest, Sha384};

use crate::firmware::PAGE_SIZE;

/// Size of one TDH.MR.EXTEND chunk.
pub const EXTEND_CHUNK: usize = 256;

/// One KVM_TDX_INIT_MEM_REGION: pages copied into the TD at `gpa`, optionally measured.
#[derive(Debug, Clone, Copy)]
pub struct MemRegion<'a> {
    /// Guest physical address of the first page.
    pub gpa: u64,
    /// The contents, a whole number of pages.
    pub data: &'a [u8],
    /// Whether the contents are extended into MRTD (TDH.MR.EXTEND).
    pub measure: bool,
}

/// The MRTD accumulator.
#[derive(Clone)]
pub struct Mrtd {
    hasher: Sha384,
}

impl std::fmt::Debug for Mrtd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mrtd")
            .field("value", &hex::encode(self.value()))
            .finish()
    }
}

impl Default for Mrtd {
    fn default() -> Self {
        Self::new()
    }
}

impl Mrtd {
    /// A fresh MRTD (the TD was just created).
    pub fn new() -> Self {
        Self {
            hasher: Sha384::new(),
        }
    }

    /// TDH.MEM.PAGE.ADD of the page at `gpa`.
    pub fn page_add(&mut self, gpa: u64) {
        let mut rec = [0u8; 128];
        rec[..12].copy_from_slice(b"MEM.PAGE.ADD");
        rec[16..24].copy_from_slice(&gpa.to_le_bytes());
        self.hasher.update(rec);
    }

    /// TDH.MR.EXTEND of the 256-byte chunk at `gpa`.
    pub fn mr_extend(&mut self, gpa: u64, chunk: &[u8; EXTEND_CHUNK]) {
        let mut rec = [0u8; 128];
        rec[..9].copy_from_slice(b"MR.EXTEND");
        rec[16..24].copy_from_slice(&gpa.to_le_bytes());
        self.hasher.update(rec);
        self.hasher.update(chunk);
    }

    /// Adds (and, if asked, measures) every page of a region, page by page as upstream
    /// KVM does. Trailing bytes that do not fill a page are ignored; the plans of this
    /// crate never produce them.
    pub fn add_region(&mut self, r: &MemRegion<'_>) {
        for (i, page) in r.data.chunks_exact(PAGE_SIZE as usize).enumerate() {
            let gpa = r.gpa + i as u64 * PAGE_SIZE;
            self.page_add(gpa);
            if r.measure {
                for (j, chunk) in page.chunks_exact(EXTEND_CHUNK).enumerate() {
                    if let Ok(c) = <&[u8; EXTEND_CHUNK]>::try_from(chunk) {
                        self.mr_extend(gpa + (j * EXTEND_CHUNK) as u64, c);
                    }
                }
            }
        }
    }

    /// The MRTD value so far (TDH.MR.FINALIZE of a copy).
    pub fn value(&self) -> [u8; 48] {
        self.hasher.clone().finalize().into()
    }
}

/// `RTMR[i] = SHA-384(RTMR[i] || digest)`.
pub fn rtmr_extend(rtmr: &mut [u8; 48], digest: &[u8; 48]) {
    let mut h = Sha384::new();
    h.update(&rtmr[..]);
    h.update(digest);
    *rtmr = h.finalize().into();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_match_the_tdx_module_layout() {
        let page: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let mut m = Mrtd::new();
        m.add_region(&MemRegion {
            gpa: 0xffff_f000,
            data: &page,
            measure: true,
        });

        let mut h = Sha384::new();
        let mut add = [0u8; 128];
        add[..12].copy_from_slice(b"MEM.PAGE.ADD");
        add[16..24].copy_from_slice(&0xffff_f000u64.to_le_bytes());
        h.update(add);
        for j in 0..16u64 {
            let mut ext = [0u8; 128];
            ext[..9].copy_from_slice(b"MR.EXTEND");
            ext[16..24].copy_from_slice(&(0xffff_f000 + j * 256).to_le_bytes());
            h.update(ext);
            h.update(&page[j as usize * 256..(j as usize + 1) * 256]);
        }
        assert_eq!(m.value(), <[u8; 48]>::from(h.finalize()));

        let mut unmeasured = Mrtd::new();
        unmeasured.add_region(&MemRegion {
            gpa: 0xffff_f000,
            data: &page,
            measure: false,
        });
        assert_ne!(unmeasured.value(), m.value());
        let mut other = Mrtd::new();
        other.add_region(&MemRegion {
            gpa: 0xffff_f000,
            data: &[0u8; 4096],
            measure: false,
        });
        assert_eq!(
            unmeasured.value(),
            other.value(),
            "unmeasured contents do not matter"
        );
    }

    #[test]
    fn rtmr_extend_is_sha384_of_concatenation() {
        let mut r = [0u8; 48];
        let d = [7u8; 48];
        rtmr_extend(&mut r, &d);
        let mut cat = [0u8; 96];
        cat[48..].copy_from_slice(&d);
        assert_eq!(r, <[u8; 48]>::from(Sha384::digest(cat)));
    }
}
