//! TDX (Intel TDX module ABI 1.5, GHCI 1.5), reached only when CPUID leaf 0x21 says
//! "IntelTDX". On TDX hardware the TDX module answers; under `--tee emulated-tdx` the
//! VMM's software TDX module (`host_vmm::tee::emu_tdx`) answers the same literal
//! `tdcall`s, so this code runs in CI unchanged.
//!
//! - RTMR extension: TDG.MR.RTMR.EXTEND (leaf 2) with a 64-byte aligned buffer;
//! - port I/O: TDG.VP.VMCALL<Instruction.IO> (a TD gets #VE for `out`);
//! - memory handed to Linux that the TDVF sections did not add is accepted with
//!   TDG.MEM.PAGE.ACCEPT; the staging region is converted with MapGPA and read through
//!   an alias with the shared bit (GPAW from TDG.VP.INFO) at `STAGING_ALIAS`.

use crate::arch::{self, TdRegs};

/// Virtual base of the shared-bit alias of 0-4 GiB (PML4 slot 1).
pub const STAGING_ALIAS: u64 = 0x80_0000_0000;
const ALIAS_PDPT: u64 = 0x1E000;
const ALIAS_PDS: u64 = 0x9000;

/// TDX module completion status: the page is already accepted (ABI spec, completion
/// status codes; class 0: a warning, the page is private and accepted).
pub const TDX_PAGE_ALREADY_ACCEPTED: u64 = 0x0000_0B0A_0000_0000;
/// TDX module completion status: the Secure EPT maps the page at another size.
pub const TDX_PAGE_SIZE_MISMATCH: u64 = 0xC000_0B0B_0000_0000;
/// TDVMCALL status (R10): retry, with R11 = where to continue (MapGPA).
pub const TDVMCALL_STATUS_RETRY: u64 = 1;
/// The status part of a completion code (bits 63:32; the low half names the operand).
const STATUS_MASK: u64 = 0xFFFF_FFFF_0000_0000;

/// TDG.VP.VMCALL with R11..R15 exposed (bitmap 0xFC00: R10-R15): returns (R10 status,
/// R11 output), or `None` if the TDCALL itself failed.
fn vmcall(r11: u64, r12: u64, r13: u64, r14: u64, r15: u64) -> Option<(u64, u64)> {
    // SAFETY: TDX only; TDG.VP.VMCALL exposes only r10-r15 (rcx bitmap 0xFC00).
    let r = unsafe {
        arch::tdcall(TdRegs {
            rax: 0,
            rcx: 0xFC00,
            r10: 0,
            r11,
            r12,
            r13,
            r14,
            r15,
            ..TdRegs::default()
        })
    };
    (r.rax == 0).then_some((r.r10, r.r11))
}

/// The port the firmware writes (TDG.VP.VMCALL<Instruction.IO>) to tell the VMM of the
/// emulated TDX platform that it hands over to a plain kernel (`env::tdx_plain_handoff`;
/// host-vmm `tee::emulated_tdx`): the same port as emulated SNP's `out 0xE5`.
pub const PLAIN_HANDOFF_PORT: u16 = 0xE5;

/// OUT through TDG.VP.VMCALL<Instruction.IO> (exit reason 30).
pub fn vmcall_io_out(port: u16, value: u32, size: u8) {
    let _ = vmcall(30, u64::from(size), 1, u64::from(port), u64::from(value));
}

/// Extends RTMR `index` with `digest` (TDG.MR.RTMR.EXTEND).
pub fn rtmr_extend(index: u32, digest: &[u8; 48]) -> bool {
    #[repr(C, align(64))]
    struct Buf([u8; 64]);
    let mut b = Buf([0; 64]);
    b.0[..48].copy_from_slice(digest);
    // SAFETY: TDX only; the buffer is private, 64-byte aligned, identity-mapped.
    let r = unsafe {
        arch::tdcall(TdRegs {
            rax: 2,
            rcx: &b as *const Buf as u64,
            rdx: u64::from(index),
            ..TdRegs::default()
        })
    };
    r.rax == 0
}

/// TDG.VP.INFO (leaf 1): the registers it returns (RCX[5:0] = GPAW, RDX = attributes,
/// R8 = vCPU counts, R9 = this vCPU's index, R10/R11).
pub fn vp_info() -> TdRegs {
    // SAFETY: TDX only; TDG.VP.INFO has no memory operands.
    unsafe {
        arch::tdcall(TdRegs {
            rax: 1,
            ..TdRegs::default()
        })
    }
}

fn shared_bit() -> u64 {
    1u64 << ((vp_info().rcx & 0x3F) - 1)
}

/// MapGPA of `[gpa, gpa + size)` (`gpa` with the shared bit: to shared), following
/// TDVMCALL_STATUS_RETRY: the VMM may convert part of the range and answer RETRY with
/// R11 = the GPA to continue from (KVM's `tdx_map_gpa` does for large ranges); the
/// continuation must lie inside the remaining range.
pub fn map_gpa(gpa: u64, size: u64) -> Result<(), &'static str> {
    let end = gpa + size;
    let mut at = gpa;
    while at < end {
        match vmcall(0x10001, at, end - at, 0, 0) {
            Some((0, _)) => return Ok(()),
            Some((TDVMCALL_STATUS_RETRY, next)) if next > at && next < end => at = next,
            Some((TDVMCALL_STATUS_RETRY, _)) => {
                return Err("MapGPA: the VMM's retry address is outside the range")
            }
            _ => return Err("MapGPA failed"),
        }
    }
    Ok(())
}

/// Maps the shared alias of 0-4 GiB at `STAGING_ALIAS` and converts `[lo, hi)` to
/// shared (MapGPA).
///
/// The alias uses 2 MiB pages (PDPT at 0x1E000, four PDs at 0x9000-0xCFFF, SNP-only
/// pages a TD does not use): 1 GiB pages are optional (CPUID PDPE1GB), and this
/// machine's KVM does not offer them.
pub fn init(lo: u64, hi: u64) -> Result<(), &'static str> {
    let s = shared_bit();
    // SAFETY: ALIAS_PDPT and ALIAS_PDS are firmware memory (TempMem) unused on TDX;
    // PML4 slot 1 is unused.
    unsafe {
        let pdpt = arch::phys_mut(ALIAS_PDPT, 4096);
        pdpt.fill(0);
        for i in 0..4u64 {
            let pd = ALIAS_PDS + i * 0x1000;
            let e = pd | 3;
            pdpt[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&e.to_le_bytes());
            let pd = arch::phys_mut(pd, 4096);
            for j in 0..512u64 {
                let e = (i << 30) | (j << 21) | s | 0x83;
                pd[j as usize * 8..j as usize * 8 + 8].copy_from_slice(&e.to_le_bytes());
            }
        }
        arch::phys_mut(0x1008, 8).copy_from_slice(&(ALIAS_PDPT | 3).to_le_bytes());
        core::arch::asm!("mov rax, cr3", "mov cr3, rax", out("rax") _, options(nostack));
    }
    if hi > lo {
        map_gpa(lo | s, hi - lo)?;
    }
    Ok(())
}

/// What one TDG.MEM.PAGE.ACCEPT answer means.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Accepted {
    /// Accepted now, or already (the page is private and accepted either way).
    Yes,
    /// The Secure EPT maps the range at another page size: retry in 4 KiB pages.
    SizeMismatch,
    /// Any other status: the page is not usable.
    Failed,
}

/// Classifies a TDG.MEM.PAGE.ACCEPT completion status.
pub fn accept_status(rax: u64) -> Accepted {
    match rax & STATUS_MASK {
        0 | TDX_PAGE_ALREADY_ACCEPTED => Accepted::Yes,
        TDX_PAGE_SIZE_MISMATCH => Accepted::SizeMismatch,
        _ => Accepted::Failed,
    }
}

/// Accepts `[start, end)` (TDG.MEM.PAGE.ACCEPT, 2 MiB where aligned, 4 KiB otherwise
/// or where the 2 MiB accept reports a size mismatch). Any other error refuses: RAM
/// handed to Linux must be accepted.
pub fn accept(start: u64, end: u64) -> Result<(), &'static str> {
    let acc = |gpa: u64, level: u64| {
        accept_status(
            // SAFETY: TDX only; accepting a page the VMM added (or not) has no effect
            // on memory in use.
            unsafe {
                arch::tdcall(TdRegs {
                    rax: 6,
                    rcx: gpa | level,
                    ..TdRegs::default()
                })
            }
            .rax,
        )
    };
    let mut gpa = start;
    while gpa < end {
        let huge = gpa & 0x1F_FFFF == 0 && end - gpa >= 0x20_0000;
        if huge {
            match acc(gpa, 1) {
                Accepted::Yes => {
                    gpa += 0x20_0000;
                    continue;
                }
                Accepted::SizeMismatch => {}
                Accepted::Failed => return Err("TDG.MEM.PAGE.ACCEPT failed"),
            }
        }
        if acc(gpa, 0) != Accepted::Yes {
            return Err("TDG.MEM.PAGE.ACCEPT failed");
        }
        gpa += 0x1000;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::fake_module::{self, *};

    #[test]
    fn accept_statuses_are_classified_as_the_module_defines_them() {
        assert_eq!(accept_status(0), Accepted::Yes);
        assert_eq!(accept_status(TDX_PAGE_ALREADY_ACCEPTED), Accepted::Yes);
        assert_eq!(
            accept_status(TDX_PAGE_SIZE_MISMATCH),
            Accepted::SizeMismatch
        );
        // TDX_OPERAND_INVALID (RCX) and TDX_OPERAND_BUSY: not usable.
        assert_eq!(accept_status(0xC000_0100_0000_0001), Accepted::Failed);
        assert_eq!(accept_status(0x8000_0200_0000_0000), Accepted::Failed);
    }

    /// Settle item: accept errors are no longer ignored. The module maps 0-2 MiB at
    /// 4 KiB (2 MiB accepts there: size mismatch), has 0x1000 already accepted, and
    /// refuses 0x5000.
    #[test]
    fn accept_falls_back_to_4k_and_refuses_errors() {
        let _g = fake_module::LOCK.lock().unwrap_or_else(|e| e.into_inner());
        fn module(g: &mut [u64; 23]) {
            assert_eq!(g[RAX], 6, "TDG.MEM.PAGE.ACCEPT");
            let (gpa, level) = (g[RCX] & !0xFFF, g[RCX] & 7);
            g[RAX] = match (gpa, level) {
                (0, 1) => TDX_PAGE_SIZE_MISMATCH,
                (0x1000, 0) => TDX_PAGE_ALREADY_ACCEPTED,
                (0x5000, 0) => 0xC000_0100_0000_0001,
                (_, 0) if gpa < 0x20_0000 => 0,
                (_, 1) if gpa % 0x20_0000 == 0 => 0,
                _ => 0xC000_0100_0000_0001,
            };
        }
        fake_module::install(module);
        assert_eq!(accept(0, 0x5000), Ok(()));
        assert_eq!(accept(0x20_0000, 0x60_0000), Ok(()));
        assert!(accept(0x4000, 0x6000).is_err(), "an accept error refuses");
        assert!(accept(0, 0x20_0000).is_err(), "the fallback reaches 0x5000");
    }

    /// Settle item: MapGPA follows TDVMCALL_STATUS_RETRY with R11 = where to continue;
    /// a continuation outside the remaining range is refused.
    #[test]
    fn map_gpa_follows_retry() {
        let _g = fake_module::LOCK.lock().unwrap_or_else(|e| e.into_inner());
        fn module(g: &mut [u64; 23]) {
            assert_eq!((g[RAX], g[RCX], g[R11]), (0, 0xFC00, 0x10001));
            let (gpa, size) = (g[R12], g[R13]);
            g[RAX] = 0;
            if gpa == 0xDEAD_0000 {
                // A VMM that answers RETRY pointing backwards.
                g[R10] = TDVMCALL_STATUS_RETRY;
                g[R11] = 0x1000;
            } else if size > 0x20_0000 {
                g[R10] = TDVMCALL_STATUS_RETRY;
                g[R11] = gpa + 0x20_0000;
            } else {
                g[R10] = 0;
            }
            g[R8] = 0;
            g[R9] = 0;
        }
        fake_module::install(module);
        assert_eq!(map_gpa(0x100_0000, 0x50_0000), Ok(()));
        assert!(map_gpa(0xDEAD_0000, 0x40_0000).is_err());
    }
}
