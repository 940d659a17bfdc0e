//! Thin wrappers over the x86 instructions the firmware needs. Every one of them is
//! emulator-safe at CPL0 on this machine except `pvalidate` and `tdcall`, which exist
//! only on real SNP/TDX hardware: under this project's emulated TEEs they exit to the
//! VMM (KVM_EXIT_INTERNAL_ERROR with the instruction bytes), which plays the PSP / TDX
//! module. `vmgexit` uses the emulator trap there (see its docs).

use core::arch::asm;

/// Writes a byte to an I/O port (bare instruction: plain and emulated guests only).
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects; the VMM owns every port.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a dword to an I/O port (bare instruction).
pub fn outl(port: u16, v: u32) {
    // SAFETY: as `outb`. The emulated mailbox reads guest memory we own (the window).
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nostack, preserves_flags)) }
}

/// Reads a dword from an I/O port (bare instruction).
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as `outb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// CPUID (leaf, subleaf) → (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// RDMSR.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: callers read only MSRs that exist in the environment they detected.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// WRMSR.
///
/// # Safety
/// The MSR must exist and the value must not break the execution environment.
pub unsafe fn wrmsr(msr: u32, v: u64) {
    // SAFETY: upheld by the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack, preserves_flags))
    }
}

/// Stops this vCPU for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli/hlt only stop the CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Firmware variables (the image runs from ROM and has no writable statics): a page
/// of pre-validated private firmware memory. Byte 0: VMGEXIT goes through the emulator
/// trap (`out 0xE2, al`) instead of the literal `rep vmmcall`, set once by
/// `snp::init_low` from SEV_STATUS.
pub const VARS: u64 = 0xE000;

/// Selects the VMGEXIT trap (the ONE place the firmware chooses it: `snp::init_low`).
///
/// Safe on real hardware whatever the host claims: there `out` raises #VC, for which
/// the firmware has no handler in long mode (the guest stops), or, when the host does
/// not intercept it, changes no register, which the GHCB protocol code treats as a
/// missing response.
pub fn set_vmgexit_port_trap(on: bool) {
    // SAFETY: VARS is firmware-private memory used only through these two functions.
    unsafe { core::ptr::write_volatile(VARS as *mut u8, u8::from(on)) }
}

fn vmgexit_port_trap() -> bool {
    // SAFETY: as `set_vmgexit_port_trap`.
    unsafe { core::ptr::read_volatile(VARS as *const u8) == 1 }
}

/// VMGEXIT (`rep vmmcall`): SEV-ES/SNP only. Under the emulated SNP of this project
/// (SEV_STATUS bit 63) the emulator trap `out 0xE2, al`: this machine's KVM treats
/// `rep vmmcall` as its own hypercall and never exits (measured; host-vmm
/// `tee::emu_snp` docs).
///
/// # Safety
/// Only in an SEV-ES/SNP guest, with the GHCB MSR or page prepared.
pub unsafe fn vmgexit() {
    if vmgexit_port_trap() {
        // SAFETY: upheld by the caller; the VMM may write the shared GHCB page.
        unsafe { asm!("out 0xE2, al", in("al") 0u8, options(nostack)) }
    } else {
        // SAFETY: upheld by the caller; the hypervisor may write the shared GHCB page.
        unsafe { asm!("rep vmmcall", options(nostack)) }
    }
}

/// PVALIDATE (SNP only). `huge` selects a 2 MiB page. Returns (eax, CF): eax 0 is
/// success, CF set means the validation state did not change.
///
/// # Safety
/// Only in an SNP guest; the page must be mapped private at `va` and not in use with a
/// conflicting validation state.
pub unsafe fn pvalidate(va: u64, huge: bool, validate: bool) -> (u32, bool) {
    let rc: u64;
    let unchanged: u8;
    // SAFETY: upheld by the caller. Encoding F2 0F 01 FF (PVALIDATE).
    unsafe {
        asm!(".byte 0xf2, 0x0f, 0x01, 0xff", "setc {c}",
             c = out(reg_byte) unchanged,
             inout("rax") va => rc, in("ecx") huge as u32, in("edx") validate as u32,
             options(nostack))
    }
    (rc as u32, unchanged != 0)
}

/// Registers for TDCALL.
#[derive(Default, Clone, Copy)]
pub struct TdRegs {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub r8: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// TDCALL (66 0F 01 CC): TDX only. Returns the registers after the call.
///
/// # Safety
/// Only inside a TD; memory operands named by the leaf must be valid.
pub unsafe fn tdcall(mut r: TdRegs) -> TdRegs {
    // SAFETY: upheld by the caller.
    unsafe {
        asm!(".byte 0x66, 0x0f, 0x01, 0xcc",
             inout("rax") r.rax, inout("rcx") r.rcx, inout("rdx") r.rdx, inout("r8") r.r8,
             inout("r10") r.r10, inout("r11") r.r11, inout("r12") r.r12, inout("r13") r.r13,
             inout("r14") r.r14, inout("r15") r.r15, options(nostack))
    }
    r
}

/// Reads `n` bytes at physical (= virtual, identity-mapped) address `addr`.
///
/// # Safety
/// The range must be mapped and hold memory nothing else writes while the slice lives.
pub unsafe fn phys<'a>(addr: u64, n: usize) -> &'a [u8] {
    // SAFETY: upheld by the caller.
    unsafe { core::slice::from_raw_parts(addr as *const u8, n) }
}

/// Mutable view of `n` bytes at physical address `addr`.
///
/// # Safety
/// As [`phys`], and no other reference to the range may exist.
pub unsafe fn phys_mut<'a>(addr: u64, n: usize) -> &'a mut [u8] {
    // SAFETY: upheld by the caller.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, n) }
}

/// Copies `n` bytes between physical ranges (rep movsb, emulator-safe).
///
/// # Safety
/// Both ranges must be mapped; they must not overlap.
pub unsafe fn copy_phys(dst: u64, src: u64, n: u64) {
    // SAFETY: upheld by the caller.
    unsafe {
        asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _,
             options(nostack, preserves_flags))
    }
}

/// Fills `n` bytes at `dst` with `v` (rep stosb).
///
/// # Safety
/// The range must be mapped and owned by the caller.
pub unsafe fn fill_phys(dst: u64, v: u8, n: u64) {
    // SAFETY: upheld by the caller.
    unsafe {
        asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") v,
             options(nostack, preserves_flags))
    }
}
