//! Real TDX only (Intel TDX module ABI 1.5, GHCI 1.5). **Not verifiable on this
//! project's machines** (no TDX hardware; PVM KVM cannot run TDs): written against the
//! specifications, reached only when CPUID leaf 0x21 says "IntelTDX".
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

fn vmcall(r11: u64, r12: u64, r13: u64, r14: u64, r15: u64) -> bool {
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
    r.rax == 0 && r.r10 == 0
}

/// OUT through TDG.VP.VMCALL<Instruction.IO> (exit reason 30).
pub fn vmcall_io_out(port: u16, value: u32, size: u8) {
    vmcall(30, u64::from(size), 1, u64::from(port), u64::from(value));
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

fn shared_bit() -> u64 {
    // SAFETY: TDX only; TDG.VP.INFO (leaf 1) returns GPAW in RCX[5:0].
    let r = unsafe {
        arch::tdcall(TdRegs {
            rax: 1,
            ..TdRegs::default()
        })
    };
    1u64 << ((r.rcx & 0x3F) - 1)
}

/// Maps the shared alias of 0-4 GiB at `STAGING_ALIAS` and converts `[lo, hi)` to
/// shared (MapGPA).
pub fn init(lo: u64, hi: u64) {
    let s = shared_bit();
    // SAFETY: ALIAS_PDPT is firmware memory (TempMem); PML4 slot 1 is unused.
    unsafe {
        let pdpt = arch::phys_mut(ALIAS_PDPT, 4096);
        pdpt.fill(0);
        for i in 0..4u64 {
            let e = (i << 30) | s | 0x83;
            pdpt[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&e.to_le_bytes());
        }
        arch::phys_mut(0x1008, 8).copy_from_slice(&(ALIAS_PDPT | 3).to_le_bytes());
        core::arch::asm!("mov rax, cr3", "mov cr3, rax", out("rax") _, options(nostack));
    }
    if hi > lo && !vmcall(0x10001, lo | s, hi - lo, 0, 0) {
        arch::halt_forever();
    }
}

/// Accepts `[start, end)` (TDG.MEM.PAGE.ACCEPT, 2 MiB where aligned).
pub fn accept(start: u64, end: u64) {
    let mut gpa = start;
    while gpa < end {
        let huge = gpa & 0x1F_FFFF == 0 && end - gpa >= 0x20_0000;
        let acc = |gpa: u64, level: u64| {
            // SAFETY: TDX only; accepting a page the VMM added (or not) has no effect on
            // memory in use.
            unsafe {
                arch::tdcall(TdRegs {
                    rax: 6,
                    rcx: gpa | level,
                    ..TdRegs::default()
                })
            }
            .rax
        };
        if huge && acc(gpa, 1) == 0 {
            gpa += 0x20_0000;
            continue;
        }
        // Already accepted pages report an error we can ignore: they are private.
        let _ = acc(gpa, 0);
        gpa += 0x1000;
    }
}
