//! SEV-SNP launch measurement: the PSP's PAGE_INFO launch-digest chain, VMSAs, vCPU
//! types, the kernel hashes table, and the [`SnpLaunchPlan`] that ties them together.
//!
//! The launch digest starts as 48 zero bytes; every page given to SNP_LAUNCH_UPDATE
//! replaces it with `SHA-384(PAGE_INFO)`, where PAGE_INFO (0x70 bytes, AMD SEV-SNP ABI
//! spec) is: previous digest (48) | SHA-384 of the page for NORMAL and VMSA pages, zeros
//! for the others (48) | u16 length 0x70 | u8 page type | u8 IMI | 3 VMPL permission
//! bytes + 1 reserved | u64 GPA.

pub mod cpu;
pub mod hashes;
pub mod plan;
pub mod vmsa;

pub use plan::{SnpLaunchPlan, SnpPlanConfig, SnpPlanError, SnpPlanSummary};

use serde::Serialize;
use sha2::{Digest, Sha384};

use crate::firmware::PAGE_SIZE;

/// The GPA recorded for VMSA pages: `(u64)-1` page-aligned with bits above 51 cleared.
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// Length of a launch digest (SHA-384).
pub const DIGEST_LEN: usize = 48;

/// SNP page types of SNP_LAUNCH_UPDATE (AMD SEV-SNP ABI spec, PAGE_TYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum PageType {
    /// Measured contents.
    Normal = 1,
    /// A vCPU save area; measured contents, GPA recorded as [`VMSA_GPA`].
    Vmsa = 2,
    /// Zero-filled by the PSP.
    Zero = 3,
    /// Contents not measured.
    Unmeasured = 4,
    /// The secrets page, filled by the PSP.
    Secrets = 5,
    /// The CPUID table, checked by the PSP.
    Cpuid = 6,
}

impl PageType {
    /// Whether the page's contents enter the digest.
    pub fn contents_measured(self) -> bool {
        matches!(self, PageType::Normal | PageType::Vmsa)
    }

    /// Every page type, in numeric order.
    pub const ALL: [PageType; 6] = [
        PageType::Normal,
        PageType::Vmsa,
        PageType::Zero,
        PageType::Unmeasured,
        PageType::Secrets,
        PageType::Cpuid,
    ];
}

/// The contents handed to one SNP_LAUNCH_UPDATE.
#[derive(Debug, Clone, Copy)]
pub enum UpdateContents<'a> {
    /// Page data supplied by the host (a whole number of pages).
    Data(&'a [u8]),
    /// Pages whose contents the PSP fills or checks itself (ZERO, SECRETS, CPUID,
    /// UNMEASURED): only the count matters to the digest.
    Absent {
        /// Number of 4 KiB pages.
        pages: u64,
    },
}

/// One SNP_LAUNCH_UPDATE: a run of pages of one type starting at `gpa`.
#[derive(Debug, Clone, Copy)]
pub struct LaunchUpdate<'a> {
    /// Guest physical address of the first page ([`VMSA_GPA`] for VMSA pages).
    pub gpa: u64,
    /// The page type.
    pub page_type: PageType,
    /// The contents.
    pub contents: UpdateContents<'a>,
}

impl LaunchUpdate<'_> {
    /// Number of pages in the update.
    pub fn pages(&self) -> u64 {
        match self.contents {
            UpdateContents::Data(d) => d.len() as u64 / PAGE_SIZE,
            UpdateContents::Absent { pages } => pages,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.pages() * PAGE_SIZE
    }

    /// Whether the update covers no pages.
    pub fn is_empty(&self) -> bool {
        self.pages() == 0
    }
}

/// The PSP's launch digest (the PAGE_INFO chain).
#[derive(Clone, PartialEq, Eq)]
pub struct LaunchDigest {
    ld: [u8; DIGEST_LEN],
}

impl std::fmt::Debug for LaunchDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LaunchDigest({})", hex::encode(self.ld))
    }
}

impl Default for LaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl LaunchDigest {
    /// A fresh digest: 48 zero bytes.
    pub fn new() -> Self {
        Self {
            ld: [0; DIGEST_LEN],
        }
    }

    /// Continues from a known digest (for example a precomputed firmware digest).
    pub fn from_value(ld: [u8; DIGEST_LEN]) -> Self {
        Self { ld }
    }

    /// The current value.
    pub fn value(&self) -> [u8; DIGEST_LEN] {
        self.ld
    }

    /// Folds one page whose contents are measured (NORMAL, VMSA).
    pub fn update_measured_page(
        &mut self,
        gpa: u64,
        page_type: PageType,
        page: &[u8; PAGE_SIZE as usize],
    ) {
        self.step(gpa, page_type, Sha384::digest(page).into());
    }

    /// Folds one page whose contents are not measured (ZERO, UNMEASURED, SECRETS, CPUID).
    pub fn update_unmeasured_page(&mut self, gpa: u64, page_type: PageType) {
        self.step(gpa, page_type, [0; DIGEST_LEN]);
    }

    fn step(&mut self, gpa: u64, page_type: PageType, contents_digest: [u8; DIGEST_LEN]) {
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&self.ld);
        info[48..96].copy_from_slice(&contents_digest);
        info[96..98].copy_from_slice(&0x70u16.to_le_bytes());
        info[98] = page_type as u8;
        // info[99] IMI = 0; info[100..104] VMPL3/2/1 permissions and reserved = 0.
        info[104..112].copy_from_slice(&gpa.to_le_bytes());
        self.ld = Sha384::digest(info).into();
    }

    /// Folds every page of one SNP_LAUNCH_UPDATE into the digest, as the PSP does.
    ///
    /// Pages of a measured type are hashed (an `Absent` run of a measured type is
    /// hashed as zero pages, which is what the PSP would receive); VMSA pages are
    /// recorded at [`VMSA_GPA`]. Trailing bytes of `Data` that do not fill a page are
    /// ignored; the plans of this crate never produce them.
    pub fn update(&mut self, u: &LaunchUpdate<'_>) {
        const ZERO_PAGE: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
        let measured = u.page_type.contents_measured();
        let gpa_of = |i: u64| {
            if u.page_type == PageType::Vmsa {
                VMSA_GPA
            } else {
                u.gpa + i * PAGE_SIZE
            }
        };
        match u.contents {
            UpdateContents::Data(data) if measured => {
                for (i, digest) in page_digests(data).into_iter().enumerate() {
                    self.step(gpa_of(i as u64), u.page_type, digest);
                }
            }
            UpdateContents::Data(data) => {
                for i in 0..data.len() / PAGE_SIZE as usize {
                    self.update_unmeasured_page(gpa_of(i as u64), u.page_type);
                }
            }
            UpdateContents::Absent { pages } => {
                for i in 0..pages {
                    if measured {
                        self.update_measured_page(gpa_of(i), u.page_type, &ZERO_PAGE);
                    } else {
                        self.update_unmeasured_page(gpa_of(i), u.page_type);
                    }
                }
            }
        }
    }
}

/// Updates of at least this many pages hash their pages on several threads.
const PARALLEL_PAGES: usize = 256;

/// SHA-384 of every whole page of `data`. The page digests are independent (only the
/// PAGE_INFO chain is sequential), so large updates are hashed on up to
/// `available_parallelism` threads.
fn page_digests(data: &[u8]) -> Vec<[u8; DIGEST_LEN]> {
    let pages: Vec<&[u8]> = data.chunks_exact(PAGE_SIZE as usize).collect();
    let mut out = vec![[0u8; DIGEST_LEN]; pages.len()];
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads < 2 || pages.len() < PARALLEL_PAGES {
        for (o, p) in out.iter_mut().zip(&pages) {
            *o = Sha384::digest(p).into();
        }
        return out;
    }
    let per = pages.len().div_ceil(threads);
    std::thread::scope(|s| {
        for (outs, ins) in out.chunks_mut(per).zip(pages.chunks(per)) {
            s.spawn(move || {
                for (o, p) in outs.iter_mut().zip(ins) {
                    *o = Sha384::digest(p).into();
                }
            });
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computes PAGE_INFO independently, field by field, as the ABI spec lays it out.
    fn reference_step(prev: &[u8; 48], page: Option<&[u8]>, page_type: u8, gpa: u64) -> [u8; 48] {
        let mut v = Vec::new();
        v.extend_from_slice(prev);
        match page {
            Some(p) => v.extend_from_slice(&Sha384::digest(p)),
            None => v.extend_from_slice(&[0; 48]),
        }
        v.extend_from_slice(&[0x70, 0x00, page_type, 0, 0, 0, 0, 0]);
        v.extend_from_slice(&gpa.to_le_bytes());
        assert_eq!(v.len(), 0x70);
        Sha384::digest(&v).into()
    }

    #[test]
    fn chain_matches_the_abi_layout() {
        let page: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut ld = LaunchDigest::new();
        ld.update(&LaunchUpdate {
            gpa: 0xffff_f000,
            page_type: PageType::Normal,
            contents: UpdateContents::Data(&page),
        });
        ld.update(&LaunchUpdate {
            gpa: 0x80_0000,
            page_type: PageType::Zero,
            contents: UpdateContents::Absent { pages: 2 },
        });
        ld.update(&LaunchUpdate {
            gpa: 0x80_2000,
            page_type: PageType::Secrets,
            contents: UpdateContents::Absent { pages: 1 },
        });
        ld.update(&LaunchUpdate {
            gpa: 0,
            page_type: PageType::Vmsa,
            contents: UpdateContents::Data(&page),
        });

        let mut r = [0u8; 48];
        r = reference_step(&r, Some(&page), 1, 0xffff_f000);
        r = reference_step(&r, None, 3, 0x80_0000);
        r = reference_step(&r, None, 3, 0x80_1000);
        r = reference_step(&r, None, 5, 0x80_2000);
        r = reference_step(&r, Some(&page), 2, VMSA_GPA);
        assert_eq!(ld.value(), r);
    }

    #[test]
    fn parallel_hashing_equals_page_by_page() {
        let data: Vec<u8> = (0..(PARALLEL_PAGES as u32 * 3 + 5) * 4096)
            .map(|i| (i / 4096 + i) as u8)
            .collect();
        let mut par = LaunchDigest::new();
        par.update(&LaunchUpdate {
            gpa: 0x1000_0000,
            page_type: PageType::Normal,
            contents: UpdateContents::Data(&data),
        });
        let mut seq = LaunchDigest::new();
        for (i, p) in data.chunks_exact(4096).enumerate() {
            seq.update_measured_page(
                0x1000_0000 + 4096 * i as u64,
                PageType::Normal,
                p.try_into().unwrap(),
            );
        }
        assert_eq!(par, seq);
    }

    #[test]
    fn zero_page_contents_are_not_measured() {
        let page = [0xAAu8; 4096];
        let mut a = LaunchDigest::new();
        a.update(&LaunchUpdate {
            gpa: 0x1000,
            page_type: PageType::Cpuid,
            contents: UpdateContents::Data(&page),
        });
        let mut b = LaunchDigest::new();
        b.update_unmeasured_page(0x1000, PageType::Cpuid);
        assert_eq!(a, b);
        let mut c = LaunchDigest::new();
        c.update_unmeasured_page(0x1000, PageType::Secrets);
        assert_ne!(a, c, "the page type is part of the digest");
    }
}
