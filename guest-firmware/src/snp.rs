//! SEV-SNP (AMD GHCB specification 2.x, Linux conventions): the same code runs on
//! hardware and under `cvm launch --tee emulated-snp`, where the VMM plays the PSP and
//! the hypervisor (host-vmm `tee::emu_snp`). The only differences are the VMGEXIT and
//! PVALIDATE traps (`arch::vmgexit`, `arch::pvalidate`), chosen once by
//! `env::select_traps` from SEV_STATUS.
//!
//! - the GHCB page (0x9000) and the descriptor page (0x8000) are host-written, so the
//!   first 2 MiB is remapped with 4 KiB pages and those pages without the C-bit; the
//!   GHCB is registered with the MSR protocol (the ACPI area 0xE0000-0xFFFFF is
//!   private: the firmware validates it and copies the checked tables there,
//!   `crate::acpi`);
//! - the staging region is converted to shared (Page State Change NAE, 2 MiB entries)
//!   and mapped without the C-bit (2 MiB granularity: `boot::staging_reserved`);
//! - every RAM range handed to Linux that the PSP did not pre-validate (SNP_SEC_MEM) is
//!   converted to private (PSC NAE, 2 MiB entries where aligned, up to 253 per exit)
//!   and PVALIDATEd (2 MiB where the RMP entry is 2 MiB); a PVALIDATE that fails or
//!   leaves the page's state unchanged (CF: the page was already validated, i.e. the
//!   host replayed it) stops the guest, as Linux does;
//! - port I/O goes through GHCB IOIO exits (`ghcb_io_out`);
//! - any protocol failure ends in a GHCB termination request (the host learns why),
//!   then a halt.

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
/// SEV_STATUS (read by `env::select_traps`; AMD APM vol. 2, §15.34.10).
pub const SEV_STATUS: u32 = 0xC001_0131;
/// SEV_STATUS bit 63: the emulated PSP of this project (VMGEXIT through the emulator
/// trap). Reserved on hardware.
pub const SEV_STATUS_EMULATOR_TRAP: u64 = 1 << 63;
/// SEV_STATUS bit 62: the emulated PSP on a host whose KVM raises #UD for PVALIDATE (a
/// standard KVM): PVALIDATE through the emulator trap. Reserved on hardware; honoured
/// only together with bit 63.
pub const SEV_STATUS_EMULATOR_INSN_TRAP: u64 = 1 << 62;
const PD0: u64 = 0x3000;
/// PVALIDATE return code: the page size does not match the RMP entry.
const PVALIDATE_FAIL_SIZEMISMATCH: u32 = 6;
/// GHCB termination reason set 0 (general), codes as Linux uses them.
const TERM_GENERAL: u64 = 0;
/// Reason: SEV_STATUS reports a feature this firmware does not know (Linux
/// `GHCB_SNP_UNSUPPORTED`).
pub const TERM_SNP_UNSUPPORTED: u64 = 2;
/// Reason: PVALIDATE failed or changed nothing.
const TERM_PVALIDATE: u64 = 0x80;
/// Reason: a page-state change failed.
const TERM_PSC: u64 = 0x81;
/// Reason: the GHCB could not be registered.
const TERM_GHCB: u64 = 0x82;

const TWO_MIB: u64 = 0x20_0000;
const PSC_MAX_ENTRIES: usize = 253;
/// GHCB offsets (GHCB spec, Table 2).
const RAX: usize = 0x1F8;
const SW_EXIT_CODE: usize = 0x390;
const SW_EXIT_INFO_1: usize = 0x398;
const SW_EXIT_INFO_2: usize = 0x3A0;
const SW_SCRATCH: usize = 0x3A8;
const VALID_BITMAP: usize = 0x3F0;
const SHARED_BUFFER: usize = 0x800;
const EXIT_IOIO: u64 = 0x7B;
const EXIT_PSC: u64 = 0x8000_0010;

fn msr_protocol(request: u64) -> u64 {
    // SAFETY: SNP only (callers are reached only when SNP is active); the GHCB MSR is
    // architecturally defined there.
    unsafe {
        arch::wrmsr(GHCB_MSR, request);
        arch::vmgexit();
    }
    arch::rdmsr(GHCB_MSR)
}

/// Asks the hypervisor to terminate the guest (GHCB MSR protocol 0x100), then halts.
pub fn terminate(code: u64) -> ! {
    // SAFETY: SNP only; the termination request needs nothing else.
    unsafe {
        arch::wrmsr(GHCB_MSR, (code << 16) | (TERM_GENERAL << 12) | 0x100);
        arch::vmgexit();
    }
    arch::halt_forever()
}

fn flush_tlb() {
    // SAFETY: reloading CR3 with its own value only flushes the TLB.
    unsafe { core::arch::asm!("mov rax, cr3", "mov cr3, rax", out("rax") _, options(nostack)) }
}

/// Page-state change of one 4 KiB page (MSR protocol, GHCB spec 2.3.1 "SNP Page State
/// Change"): `shared` = true for shared, false for private.
fn psc_msr(gpa: u64, shared: bool) -> bool {
    let op = if shared { 2 } else { 1 };
    let r = msr_protocol((gpa & !0xFFF) | (op << 52) | 0x014);
    r & 0xFFF == 0x015 && r >> 32 == 0
}

fn ghcb() -> &'static mut [u8] {
    // SAFETY: the GHCB page is mapped shared and registered (`init_low` runs before any
    // use); only this vCPU uses it.
    unsafe { arch::phys_mut(GHCB, 4096) }
}

fn put(g: &mut [u8], off: usize, v: u64) {
    g[off..off + 8].copy_from_slice(&v.to_le_bytes());
    let q = off / 8;
    g[VALID_BITMAP + q / 8] |= 1 << (q % 8);
}

fn get(g: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&g[off..off + 8]);
    u64::from_le_bytes(b)
}

/// Starts a GHCB page request: invalidates every field (the valid bitmap, as Linux's
/// `vc_ghcb_invalidate`), sets the exit code and infos.
fn ghcb_begin(code: u64, info1: u64, info2: u64) -> &'static mut [u8] {
    let g = ghcb();
    g[VALID_BITMAP..VALID_BITMAP + 16].fill(0);
    put(g, SW_EXIT_CODE, code);
    put(g, SW_EXIT_INFO_1, info1);
    put(g, SW_EXIT_INFO_2, info2);
    g[0xFFA..0xFFC].copy_from_slice(&2u16.to_le_bytes()); // protocol version
    g[0xFFC..0x1000].copy_from_slice(&0u32.to_le_bytes()); // GHCB usage: standard
    g
}

/// Ends it: VMGEXIT with the GHCB GPA in the GHCB MSR; returns sw_exit_info_1/2.
fn ghcb_call() -> (u64, u64) {
    // SAFETY: SNP only; the GHCB is prepared by `ghcb_begin`.
    unsafe {
        arch::wrmsr(GHCB_MSR, GHCB);
        arch::vmgexit();
    }
    let g = ghcb();
    (get(g, SW_EXIT_INFO_1), get(g, SW_EXIT_INFO_2))
}

/// Remaps the first 2 MiB with 4 KiB pages (shared: descriptor, GHCB) and
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
            let shared = pa == 0x8000 || pa == GHCB;
            let e = pa | 3 | if shared { 0 } else { c };
            pt[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&e.to_le_bytes());
        }
        let pd0 = arch::phys_mut(PD0, 8);
        pd0.copy_from_slice(&(LOW_PT | 3 | c).to_le_bytes());
    }
    flush_tlb();
    if !psc_msr(GHCB, true) {
        terminate(TERM_PSC);
    }
    let r = msr_protocol(GHCB | 0x012);
    if r & 0xFFF != 0x013 || r >> 12 != GHCB >> 12 {
        terminate(TERM_GHCB);
    }
}

/// One PSC entry (GHCB spec §4.1.6): GFN in 51:12, operation in 55:52 (1 private,
/// 2 shared), page size in bit 56.
pub fn psc_entry(gpa: u64, huge: bool, shared: bool) -> u64 {
    let op: u64 = if shared { 2 } else { 1 };
    (gpa & 0x000F_FFFF_FFFF_F000) | (op << 52) | (u64::from(huge) << 56)
}

/// The PSC entries for `[start, end)`: 2 MiB where aligned, else 4 KiB; `f` gets each
/// (gpa, huge).
pub fn psc_pages(start: u64, end: u64, mut f: impl FnMut(u64, bool)) {
    let mut gpa = start & !0xFFF;
    while gpa < end {
        let huge = gpa % TWO_MIB == 0 && end - gpa >= TWO_MIB;
        f(gpa, huge);
        gpa += if huge { TWO_MIB } else { 0x1000 };
    }
}

/// Sends the PSC entries `entries[..n]` with the Page State Change NAE, repeating while
/// the hypervisor reports partial progress.
fn psc_flush(entries: &[u64; PSC_MAX_ENTRIES], n: usize) {
    if n == 0 {
        return;
    }
    let scratch = GHCB + SHARED_BUFFER as u64;
    let g = ghcb();
    let b = SHARED_BUFFER;
    g[b..b + 2].copy_from_slice(&0u16.to_le_bytes());
    g[b + 2..b + 4].copy_from_slice(&((n - 1) as u16).to_le_bytes());
    g[b + 4..b + 8].fill(0);
    for (i, e) in entries[..n].iter().enumerate() {
        g[b + 8 + i * 8..b + 16 + i * 8].copy_from_slice(&e.to_le_bytes());
    }
    // The hypervisor may stop early (cur_entry <= end_entry): resend the rest.
    for _ in 0..n + 1 {
        let g = ghcb();
        g[VALID_BITMAP..VALID_BITMAP + 16].fill(0);
        put(g, SW_EXIT_CODE, EXIT_PSC);
        put(g, SW_EXIT_INFO_1, 0);
        put(g, SW_EXIT_INFO_2, 0);
        put(g, SW_SCRATCH, scratch);
        let (_, info2) = ghcb_call();
        let g = ghcb();
        let cur = u16::from_le_bytes([g[b], g[b + 1]]) as usize;
        if info2 != 0 {
            terminate(TERM_PSC);
        }
        if cur >= n {
            return;
        }
    }
    terminate(TERM_PSC);
}

/// Changes the state of `[start, end)` with batched PSC NAE requests.
fn psc_range(start: u64, end: u64, shared: bool) {
    let mut entries = [0u64; PSC_MAX_ENTRIES];
    let mut n = 0;
    psc_pages(start, end, |gpa, huge| {
        entries[n] = psc_entry(gpa, huge, shared);
        n += 1;
        if n == PSC_MAX_ENTRIES {
            psc_flush(&entries, n);
            n = 0;
        }
    });
    psc_flush(&entries, n);
}

/// Makes the staging range `[staging_lo, staging_hi)` (2 MiB aligned) shared: C-bit
/// cleared in its 2 MiB mappings, page-state change to shared.
pub fn share_staging(cbit: u8, staging_lo: u64, staging_hi: u64) {
    let c = 1u64 << cbit;
    let mut gpa = staging_lo & !(TWO_MIB - 1);
    while gpa < staging_hi {
        // Clear the C-bit of the 2 MiB mapping before the pages turn shared.
        // SAFETY: the four PDs at 0x3000 map 0-4 GiB; staging is below 4 GiB.
        let pde = unsafe { arch::phys_mut(PD0 + (gpa >> 21) * 8, 8) };
        let v = u64::from_le_bytes(pde[..8].try_into().unwrap_or([0; 8])) & !c;
        pde.copy_from_slice(&v.to_le_bytes());
        gpa += TWO_MIB;
    }
    flush_tlb();
    psc_range(staging_lo, staging_hi, true);
}

/// PVALIDATE's result as the firmware accepts it: success that changed the state.
/// CF set (unchanged) means the page was already validated: the host mapped a page
/// the guest validated before at this address (a replay); Linux treats it as fatal.
pub fn pvalidate_ok(rc: u32, unchanged: bool) -> bool {
    rc == 0 && !unchanged
}

/// The page directory that maps one GiB above 4 GiB for validation (pre-validated
/// firmware memory, SNP_SEC_MEM).
const HIGH_PD: u64 = 0x1B000;
const PDPT: u64 = 0x2000;
const GIB: u64 = 1 << 30;

/// PDPT index of the GiB holding `gpa` when the boot page tables (0-4 GiB) do not map
/// it: 4..512 (the firmware's PML4 entry 0 covers 512 GiB).
pub fn high_pdpt_index(gpa: u64) -> Option<u64> {
    let i = gpa / GIB;
    (4..512).contains(&i).then_some(i)
}

/// PD entry `i` of the identity mapping of the GiB holding `gpa`: a private (C-bit)
/// 2 MiB page, present and writable.
pub fn high_pd_entry(gpa: u64, cbit: u8, i: u64) -> u64 {
    ((gpa & !(GIB - 1)) + i * TWO_MIB) | 0x83 | (1u64 << cbit)
}

/// Makes `gpa` addressable at the virtual address PVALIDATE takes (VA = GPA): below
/// 4 GiB the boot page tables map it; above, the GiB holding it is mapped through
/// [`HIGH_PD`] in place of the one mapped before (bug 6 of issue 13: PVALIDATE was given
/// GPAs above 4 GiB that no page table mapped, and the guest triple-faulted).
fn map_for_validation(cbit: u8, gpa: u64) -> u64 {
    let Some(index) = high_pdpt_index(gpa) else {
        if gpa >= 4 * GIB {
            // Beyond the 512 GiB the firmware's page tables can reach.
            terminate(TERM_PVALIDATE);
        }
        return gpa;
    };
    let c = 1u64 << cbit;
    let want = HIGH_PD | 3 | c;
    // SAFETY: PDPT (0x2000) is the live page-directory-pointer table; entries 4..512
    // are used only here; HIGH_PD is firmware memory used by nothing else.
    unsafe {
        let pdpt = arch::phys_mut(PDPT, 4096);
        let at = index as usize * 8;
        if pdpt[at..at + 8] != want.to_le_bytes() {
            for i in 4..512 {
                pdpt[i * 8..i * 8 + 8].fill(0);
            }
            flush_tlb();
            let pd = arch::phys_mut(HIGH_PD, 4096);
            for i in 0..512u64 {
                let o = i as usize * 8;
                pd[o..o + 8].copy_from_slice(&high_pd_entry(gpa, cbit, i).to_le_bytes());
            }
            pdpt[at..at + 8].copy_from_slice(&want.to_le_bytes());
        }
    }
    gpa
}

/// Converts `[start, end)` to private and validates it (2 MiB PVALIDATE where aligned).
pub fn accept(cbit: u8, start: u64, end: u64) {
    if start >= end {
        return;
    }
    psc_range(start, end, false);
    psc_pages(start, end, |gpa, huge| {
        let gpa = map_for_validation(cbit, gpa);
        // SAFETY: the range is mapped private (identity map with the C-bit) and not yet
        // in use; validating it is what makes it usable.
        let (rc, unchanged) = unsafe { arch::pvalidate(gpa, huge, true) };
        if rc == PVALIDATE_FAIL_SIZEMISMATCH && huge {
            // The RMP holds 4 KiB entries here: validate page by page (as Linux does).
            let mut p = gpa;
            while p < gpa + TWO_MIB {
                // SAFETY: as above.
                let (rc, unchanged) = unsafe { arch::pvalidate(p, false, true) };
                if !pvalidate_ok(rc, unchanged) {
                    terminate(TERM_PVALIDATE);
                }
                p += 0x1000;
            }
        } else if !pvalidate_ok(rc, unchanged) {
            terminate(TERM_PVALIDATE);
        }
    });
}

/// One OUT through the GHCB (IOIO exit, SVM exit code 0x7B).
pub fn ghcb_io_out(port: u16, value: u32, size: u8) {
    let size_bit: u64 = match size {
        1 => 1 << 4,
        2 => 1 << 5,
        _ => 1 << 6,
    };
    let info1 = (u64::from(port) << 16) | size_bit | (1 << 9);
    let g = ghcb_begin(EXIT_IOIO, info1, 0);
    put(g, RAX, u64::from(value));
    ghcb_call();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psc_entries_use_2m_pages_where_aligned() {
        let mut got = std::vec::Vec::new();
        psc_pages(0x1F_F000, 0x60_1000, |g, h| got.push((g, h)));
        assert_eq!(
            got,
            [
                (0x1F_F000, false),
                (0x20_0000, true),
                (0x40_0000, true),
                (0x60_0000, false)
            ]
        );
        assert_eq!(
            psc_entry(0x1_2340_0000, true, false),
            0x1_2340_0000 | (1 << 52) | (1 << 56)
        );
        assert_eq!(psc_entry(0x5000, false, true), 0x5000 | (2 << 52));
    }

    /// Bug 6: every GPA the firmware validates must be mapped at VA = GPA. Below
    /// 4 GiB the boot tables do it; above, the high window must map exactly that GPA.
    #[test]
    fn gpas_above_4_gib_get_a_private_identity_mapping_for_pvalidate() {
        assert_eq!(high_pdpt_index(0xFFFF_F000), None, "the boot tables map it");
        assert_eq!(high_pdpt_index(4 << 30), Some(4));
        assert_eq!(high_pdpt_index((5 << 30) + 0x60_0000), Some(5));
        assert_eq!(high_pdpt_index(512 << 30), None, "beyond PML4 entry 0");
        let gpa = (5u64 << 30) + 0x60_0000;
        // The PD entry covering `gpa` maps it, with the C-bit and the 2 MiB page bit.
        let i = (gpa % GIB) / TWO_MIB;
        let e = high_pd_entry(gpa, 47, i);
        assert_eq!(e & 0x000F_7FFF_FFE0_0000, gpa & !(TWO_MIB - 1));
        assert_eq!(e & (1 << 47), 1 << 47);
        assert_eq!(e & 0x83, 0x83);
        assert_eq!(high_pd_entry(gpa, 51, 0), (5 << 30) | 0x83 | (1 << 51));
    }

    #[test]
    fn pvalidate_is_accepted_only_when_it_changed_the_state() {
        assert!(pvalidate_ok(0, false));
        assert!(!pvalidate_ok(0, true), "CF: already validated (a replay)");
        assert!(!pvalidate_ok(PVALIDATE_FAIL_SIZEMISMATCH, false));
        assert!(!pvalidate_ok(1, false));
    }
}
