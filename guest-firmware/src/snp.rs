//! Real SEV-SNP only (AMD GHCB specification 2.x, Linux conventions). **Not verifiable
//! on this project's machines** (no SNP hardware; PVM KVM cannot run SNP guests): it
//! is written against the specifications and never runs in plain or emulated guests.
//!
//! - the GHCB page (0x9000) and the descriptor page (0x8000) and ACPI area
//!   (0xE0000-0xFFFFF) are host-written, so the first 2 MiB is remapped with 4 KiB
//!   pages and those pages without the C-bit; the GHCB is registered with the MSR
//!   protocol;
//! - the staging region is converted to shared (page-state change, MSR protocol) and
//!   mapped without the C-bit (2 MiB granularity: `boot::staging_reserved`);
//! - every RAM range handed to Linux that the PSP did not pre-validate (SNP_SEC_MEM) is
//!   converted to private and PVALIDATEd;
//! - port I/O goes through GHCB IOIO exits (`ghcb_io_out`).

use crate::arch;

/// The SNP secrets page (SEV metadata SNP_SECRETS).
pub const SECRETS_PAGE: u64 = 0xA000;
/// The SNP CPUID page (SEV metadata CPUID).
pub const CPUID_PAGE: u64 = 0xB000;
/// The GHCB (shared).
pub const GHCB: u64 = 0x9000;
/// The page table that splits 0-2 MiB into 4 KiB pages.
const LOW_PT: u64 = 0x1F000;
const GHCB_MSR: u32 = 0xC001_0130;
const PD0: u64 = 0x3000;
/// PVALIDATE return code: the page size does not match the RMP entry.
const PVALIDATE_FAIL_SIZEMISMATCH: u32 = 6;

fn msr_protocol(request: u64) -> u64 {
    // SAFETY: SNP only (callers are reached only when SNP is active); the GHCB MSR is
    // architecturally defined there.
    unsafe {
        arch::wrmsr(GHCB_MSR, request);
        arch::vmgexit();
    }
    arch::rdmsr(GHCB_MSR)
}

fn flush_tlb() {
    // SAFETY: reloading CR3 with its own value only flushes the TLB.
    unsafe { core::arch::asm!("mov rax, cr3", "mov cr3, rax", out("rax") _, options(nostack)) }
}

/// Page-state change of one 4 KiB page (MSR protocol, GHCB spec 2.3.1 "SNP Page State
/// Change"): `shared` = true for shared, false for private.
fn psc(gpa: u64, shared: bool) -> bool {
    let op = if shared { 2 } else { 1 };
    let r = msr_protocol((gpa & !0xFFF) | (op << 52) | 0x014);
    r & 0xFFF == 0x015 && r >> 32 == 0
}

/// Remaps the first 2 MiB with 4 KiB pages (shared: descriptor, GHCB, ACPI area) and
/// registers the GHCB. Runs before anything reads the descriptor or prints.
pub fn init_low(cbit: u8) {
    let c = 1u64 << cbit;
    // SAFETY: LOW_PT is pre-validated firmware memory (SNP_SEC_MEM) used by nothing
    // else; PD0 is the live page directory for 0-1 GiB, which we update in place
    // (identity mapping of the same addresses; only the C-bit of shared pages changes).
    unsafe {
        let pt = arch::phys_mut(LOW_PT, 4096);
        for i in 0..512u64 {
            let pa = i << 12;
            let shared = pa == 0x8000 || pa == GHCB || (0xE0000..0x100000).contains(&pa);
            let e = pa | 3 | if shared { 0 } else { c };
            pt[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&e.to_le_bytes());
        }
        let pd0 = arch::phys_mut(PD0, 8);
        pd0.copy_from_slice(&(LOW_PT | 3 | c).to_le_bytes());
    }
    flush_tlb();
    psc(GHCB, true);
    let r = msr_protocol(GHCB | 0x012);
    if r & 0xFFF != 0x013 || r >> 12 != GHCB >> 12 {
        arch::halt_forever();
    }
}

/// Makes the staging range `[staging_lo, staging_hi)` (2 MiB aligned) shared: C-bit
/// cleared in its 2 MiB mappings, page-state change to shared.
pub fn share_staging(cbit: u8, staging_lo: u64, staging_hi: u64) {
    let c = 1u64 << cbit;
    let mut gpa = staging_lo;
    while gpa < staging_hi {
        if gpa & 0x1F_FFFF == 0 {
            // Clear the C-bit of the 2 MiB mapping before the pages turn shared.
            // SAFETY: the four PDs at 0x3000 map 0-4 GiB; staging is below 3 GiB.
            let pde = unsafe { arch::phys_mut(PD0 + (gpa >> 21) * 8, 8) };
            let v = u64::from_le_bytes(pde[..8].try_into().unwrap_or([0; 8])) & !c;
            pde.copy_from_slice(&v.to_le_bytes());
        }
        if !psc(gpa, true) {
            arch::halt_forever();
        }
        gpa += 0x1000;
    }
    flush_tlb();
}

/// Converts `[start, end)` to private and validates it (2 MiB PVALIDATE where aligned).
pub fn accept(start: u64, end: u64) {
    let mut gpa = start;
    while gpa < end {
        let huge = gpa & 0x1F_FFFF == 0 && end - gpa >= 0x20_0000;
        let len = if huge { 0x20_0000 } else { 0x1000 };
        let mut p = gpa;
        while p < gpa + len {
            if !psc(p, false) {
                arch::halt_forever();
            }
            p += 0x1000;
        }
        // SAFETY: the range is mapped private (identity map with the C-bit) and not yet
        // in use; validating it is what makes it usable.
        let (rc, _) = unsafe { arch::pvalidate(gpa, huge, true) };
        if rc == PVALIDATE_FAIL_SIZEMISMATCH && huge {
            // The RMP holds 4 KiB entries here: validate page by page (as Linux does).
            let mut p = gpa;
            while p < gpa + len {
                // SAFETY: as above.
                if unsafe { arch::pvalidate(p, false, true) }.0 != 0 {
                    arch::halt_forever();
                }
                p += 0x1000;
            }
        } else if rc != 0 {
            arch::halt_forever();
        }
        gpa += len;
    }
}

/// One OUT through the GHCB (IOIO exit, SVM exit code 0x7B).
pub fn ghcb_io_out(port: u16, value: u32, size: u8) {
    // SAFETY: the GHCB page is mapped shared and registered (`init` runs before any
    // output in SNP mode); only this vCPU uses it.
    let g = unsafe { arch::phys_mut(GHCB, 4096) };
    g[..0x400].fill(0);
    let size_bit: u64 = match size {
        1 => 1 << 4,
        2 => 1 << 5,
        _ => 1 << 6,
    };
    let info1 = (u64::from(port) << 16) | size_bit | (1 << 9);
    g[0x1F8..0x200].copy_from_slice(&u64::from(value).to_le_bytes()); // rax
    g[0x390..0x398].copy_from_slice(&0x7Bu64.to_le_bytes()); // sw_exit_code
    g[0x398..0x3A0].copy_from_slice(&info1.to_le_bytes()); // sw_exit_info_1
    g[0x3A0..0x3A8].copy_from_slice(&0u64.to_le_bytes()); // sw_exit_info_2
                                                          // Valid bitmap (0x3F0): rax (qword 63), exit code/info1/info2 (114-116).
    g[0x3F0 + 63 / 8] |= 1 << (63 % 8);
    for q in [114usize, 115, 116] {
        g[0x3F0 + q / 8] |= 1 << (q % 8);
    }
    g[0xFFA..0xFFC].copy_from_slice(&2u16.to_le_bytes()); // protocol version
    g[0xFFC..0x1000].copy_from_slice(&0u32.to_le_bytes()); // GHCB usage: standard
                                                           // SAFETY: SNP only; the GHCB is prepared above.
    unsafe {
        arch::wrmsr(GHCB_MSR, GHCB);
        arch::vmgexit();
    }
}
