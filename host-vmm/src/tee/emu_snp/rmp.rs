//! The software Reverse Map Table: per 4 KiB guest page, whether it is assigned to the
//! guest (private), whether the guest validated it, and whether its RMP entry is part of
//! a 2 MiB page. Page-state changes (the hypervisor's RMPUPDATE on the guest's request)
//! and PVALIDATE (the guest's instruction) act on it with the hardware's results (AMD
//! APM vol. 3, PVALIDATE; vol. 2 §15.36 "Secure Nested Paging").

use std::collections::HashMap;

/// PVALIDATE succeeded (RAX).
pub const PVALIDATE_OK: u64 = 0;
/// PVALIDATE: bad input (a 2 MiB page at an address that is not 2 MiB aligned).
pub const PVALIDATE_FAIL_INPUT: u64 = 1;
/// PVALIDATE: the page size does not match the RMP entry's.
pub const PVALIDATE_FAIL_SIZEMISMATCH: u64 = 6;

const PAGE: u64 = 0x1000;
const HUGE: u64 = 0x20_0000;

/// One RMP entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    /// Assigned to the guest (private).
    pub assigned: bool,
    /// Validated by the guest (PVALIDATE).
    pub validated: bool,
    /// Part of a 2 MiB RMP entry.
    pub huge: bool,
}

/// What a PVALIDATE did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PvalidateResult {
    /// RAX: 0 or a PVALIDATE_FAIL_* code.
    pub rax: u64,
    /// RFLAGS.CF: the validated state did not change.
    pub unchanged: bool,
}

/// Why a page access or PVALIDATE faults (what the hardware reports as a nested page
/// fault to the hypervisor: the guest cannot continue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RmpFault {
    /// PVALIDATE of a page that is not assigned to the guest.
    #[error("PVALIDATE of guest page {0:#x}, which is not assigned to the guest (shared)")]
    NotAssigned(u64),
    /// A page-state change outside guest RAM or misaligned.
    #[error("page-state change of {0:#x} is not page-aligned")]
    Misaligned(u64),
}

/// The software RMP of one guest. Pages never mentioned are shared (hypervisor-owned).
#[derive(Debug, Default)]
pub struct Rmp {
    pages: HashMap<u64, Entry>,
}

impl Rmp {
    /// An RMP in which every page is shared.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry of the page holding `gpa`.
    pub fn entry(&self, gpa: u64) -> Entry {
        self.pages.get(&(gpa / PAGE)).copied().unwrap_or_default()
    }

    fn set(&mut self, gpa: u64, e: Entry) {
        if e == Entry::default() {
            self.pages.remove(&(gpa / PAGE));
        } else {
            self.pages.insert(gpa / PAGE, e);
        }
    }

    /// The launch: SNP_LAUNCH_UPDATE assigns and validates `[gpa, gpa+len)` (4 KiB
    /// entries), as the PSP does for every page it measures or pre-validates.
    pub fn launch_page_range(&mut self, gpa: u64, len: u64) {
        let mut p = gpa & !(PAGE - 1);
        while p < gpa + len {
            self.set(
                p,
                Entry {
                    assigned: true,
                    validated: true,
                    huge: false,
                },
            );
            p += PAGE;
        }
    }

    /// A page-state change of one page of `huge` size (RMPUPDATE): private assigns the
    /// page(s) with the validated bit clear, shared returns them to the hypervisor.
    pub fn page_state_change(
        &mut self,
        gpa: u64,
        huge: bool,
        private: bool,
    ) -> Result<(), RmpFault> {
        let size = if huge { HUGE } else { PAGE };
        if gpa % size != 0 {
            return Err(RmpFault::Misaligned(gpa));
        }
        let mut p = gpa;
        while p < gpa + size {
            self.set(
                p,
                Entry {
                    assigned: private,
                    validated: false,
                    huge: huge && private,
                },
            );
            p += PAGE;
        }
        Ok(())
    }

    /// PSMASH: a 2 MiB entry becomes 512 4 KiB entries with the same state.
    pub fn psmash(&mut self, gpa: u64) -> Result<(), RmpFault> {
        if gpa % HUGE != 0 {
            return Err(RmpFault::Misaligned(gpa));
        }
        for i in 0..512 {
            let p = gpa + i * PAGE;
            let mut e = self.entry(p);
            e.huge = false;
            self.set(p, e);
        }
        Ok(())
    }

    /// PVALIDATE of the page at `gpa` (`huge`: 2 MiB) to `validate`, with the
    /// hardware's results: FAIL_INPUT for a misaligned 2 MiB page, FAIL_SIZEMISMATCH
    /// when the size differs from the RMP entry's, CF set when the validated state
    /// already was `validate`. A page not assigned to the guest faults.
    pub fn pvalidate(
        &mut self,
        gpa: u64,
        huge: bool,
        validate: bool,
    ) -> Result<PvalidateResult, RmpFault> {
        let fail = |rax| {
            Ok(PvalidateResult {
                rax,
                unchanged: false,
            })
        };
        let gpa = gpa & !(PAGE - 1);
        if huge && gpa % HUGE != 0 {
            return fail(PVALIDATE_FAIL_INPUT);
        }
        let first = self.entry(gpa);
        if !first.assigned {
            return Err(RmpFault::NotAssigned(gpa));
        }
        if first.huge != huge {
            return fail(PVALIDATE_FAIL_SIZEMISMATCH);
        }
        let unchanged = first.validated == validate;
        let pages = if huge { 512 } else { 1 };
        for i in 0..pages {
            let p = gpa + i * PAGE;
            let mut e = self.entry(p);
            e.validated = validate;
            self.set(p, e);
        }
        Ok(PvalidateResult {
            rax: PVALIDATE_OK,
            unchanged,
        })
    }

    /// Number of validated 4 KiB pages.
    pub fn validated_pages(&self) -> usize {
        self.pages.values().filter(|e| e.validated).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_must_be_assigned_before_it_can_be_validated() {
        let mut rmp = Rmp::new();
        assert_eq!(
            rmp.pvalidate(0x5000, false, true),
            Err(RmpFault::NotAssigned(0x5000))
        );
        rmp.page_state_change(0x5000, false, true).unwrap();
        assert_eq!(
            rmp.entry(0x5000),
            Entry {
                assigned: true,
                validated: false,
                huge: false
            }
        );
        let r = rmp.pvalidate(0x5123, false, true).unwrap();
        assert_eq!((r.rax, r.unchanged), (PVALIDATE_OK, false));
        assert!(rmp.entry(0x5000).validated);
    }

    #[test]
    fn validating_twice_sets_cf_and_rescinding_clears_it() {
        let mut rmp = Rmp::new();
        rmp.page_state_change(0x7000, false, true).unwrap();
        assert!(!rmp.pvalidate(0x7000, false, true).unwrap().unchanged);
        // Double validation: success, but CF says nothing changed (Linux treats this
        // as a fatal error: it means the host replayed a page).
        let again = rmp.pvalidate(0x7000, false, true).unwrap();
        assert_eq!((again.rax, again.unchanged), (PVALIDATE_OK, true));
        assert!(!rmp.pvalidate(0x7000, false, false).unwrap().unchanged);
        assert!(rmp.pvalidate(0x7000, false, false).unwrap().unchanged);
    }

    #[test]
    fn size_mismatch_and_bad_input_give_the_hardware_codes() {
        let mut rmp = Rmp::new();
        // 4 KiB entries: a 2 MiB PVALIDATE is a size mismatch.
        for i in 0..512 {
            rmp.page_state_change(0x20_0000 + i * 0x1000, false, true)
                .unwrap();
        }
        assert_eq!(
            rmp.pvalidate(0x20_0000, true, true).unwrap().rax,
            PVALIDATE_FAIL_SIZEMISMATCH
        );
        assert_eq!(
            rmp.validated_pages(),
            0,
            "a failed PVALIDATE changes nothing"
        );
        // A misaligned 2 MiB page is bad input.
        assert_eq!(
            rmp.pvalidate(0x20_1000, true, true).unwrap().rax,
            PVALIDATE_FAIL_INPUT
        );
        // A 2 MiB entry: 4 KiB PVALIDATE inside it is a size mismatch; 2 MiB works.
        rmp.page_state_change(0x40_0000, true, true).unwrap();
        assert_eq!(
            rmp.pvalidate(0x40_1000, false, true).unwrap().rax,
            PVALIDATE_FAIL_SIZEMISMATCH
        );
        let r = rmp.pvalidate(0x40_0000, true, true).unwrap();
        assert_eq!((r.rax, r.unchanged), (PVALIDATE_OK, false));
        assert_eq!(rmp.validated_pages(), 512);
        // PSMASH keeps the state and makes 4 KiB PVALIDATE possible.
        rmp.psmash(0x40_0000).unwrap();
        let r = rmp.pvalidate(0x40_1000, false, false).unwrap();
        assert_eq!((r.rax, r.unchanged), (PVALIDATE_OK, false));
        assert_eq!(rmp.validated_pages(), 511);
    }

    #[test]
    fn converting_to_shared_and_back_loses_the_validation() {
        let mut rmp = Rmp::new();
        rmp.launch_page_range(0x1000, 0x2000);
        assert_eq!(rmp.validated_pages(), 2);
        rmp.page_state_change(0x1000, false, false).unwrap();
        rmp.page_state_change(0x1000, false, true).unwrap();
        assert!(!rmp.entry(0x1000).validated);
        assert!(rmp.entry(0x2000).validated);
        assert_eq!(
            rmp.page_state_change(0x1800, false, true),
            Err(RmpFault::Misaligned(0x1800))
        );
    }
}
