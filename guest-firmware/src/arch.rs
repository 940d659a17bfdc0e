//! Thin wrappers over the x86 instructions the firmware needs. Every one of them is
//! emulator-safe at CPL0 on this machine except `pvalidate` and `tdcall`, which exist
//! only on real SNP/TDX hardware: under this project's emulated TEEs they exit to the
//! VMM (KVM_EXIT_INTERNAL_ERROR with the instruction bytes), which plays the PSP / TDX
//! module. `vmgexit` uses the emulator trap there (see its docs). On a standard KVM,
//! where those instructions raise #UD inside the guest, PVALIDATE and TDCALL use the
//! emulator trap too (`out 0xE1` / `out 0xE0` with the same registers), selected once
//! by `env::select_traps` from a signal a real PSP / TDX module fixes.

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
    // SAFETY: as `outb`.
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
/// trap (`out 0xE2, al`) instead of the literal `rep vmmcall`; byte 1: PVALIDATE and
/// TDCALL go through the emulator trap (`out 0xE1, al` / `out 0xE0, al`). Both are set
/// once, by `env::select_traps`.
pub const VARS: u64 = 0xE000;
const VAR_VMGEXIT_PORT: u64 = VARS;
const VAR_INSN_PORT: u64 = VARS + 1;

/// Selects the VMGEXIT trap (called only by `env::select_traps`, the ONE place the
/// firmware chooses its traps).
///
/// Safe on real hardware whatever the host claims: there `out` raises #VC, for which
/// the firmware has no handler in long mode (the guest stops), or, when the host does
/// not intercept it, changes no register, which the GHCB protocol code treats as a
/// missing response.
pub fn set_vmgexit_port_trap(on: bool) {
    // SAFETY: VARS is firmware-private memory used only through these functions.
    unsafe { core::ptr::write_volatile(VAR_VMGEXIT_PORT as *mut u8, u8::from(on)) }
}

/// Whether this is the emulated SNP platform of this project (SEV_STATUS bit 63, read
/// once by `env::select_traps`; never on hardware).
pub fn emulated_snp() -> bool {
    vmgexit_port_trap()
}

/// Emulated SNP only: tells the VMM that the firmware hands over to a kernel that does
/// not know SNP (`out 0xE5, al`; host-vmm `tee::emu_snp`): from here on the emulated
/// PSP reports SEV_STATUS = 0. Callers check [`emulated_snp`] first.
pub fn emulated_plain_handoff() {
    // SAFETY: port I/O only; the VMM owns the port.
    unsafe { asm!("out 0xE5, al", in("al") 0u8, options(nomem, nostack, preserves_flags)) }
}

fn vmgexit_port_trap() -> bool {
    // SAFETY: as `set_vmgexit_port_trap`.
    unsafe { core::ptr::read_volatile(VAR_VMGEXIT_PORT as *const u8) == 1 }
}

/// Selects the PVALIDATE/TDCALL trap (called only by `env::select_traps`, from a signal
/// the host cannot forge on hardware: see `env`).
pub fn set_insn_port_trap(on: bool) {
    if cfg!(test) {
        return;
    }
    // SAFETY: as `set_vmgexit_port_trap`.
    unsafe { core::ptr::write_volatile(VAR_INSN_PORT as *mut u8, u8::from(on)) }
}

/// Whether PVALIDATE/TDCALL use the emulator trap. Host unit tests (where VARS is not
/// mapped) always use the literal instruction, answered by `fake_module`.
fn insn_port_trap() -> bool {
    if cfg!(test) {
        return false;
    }
    // SAFETY: as `set_vmgexit_port_trap`.
    unsafe { core::ptr::read_volatile(VAR_INSN_PORT as *const u8) == 1 }
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
    if insn_port_trap() {
        // SAFETY: upheld by the caller. The emulator trap: the same registers and CF
        // result as PVALIDATE (host-vmm `tee::emu_snp`, "Traps"). `stc` first: the VMM
        // sets or clears CF explicitly, so an `out` nobody answers (RAX unchanged, which
        // is 0 for page 0) leaves CF set and reads as a failure, never as success.
        unsafe {
            asm!("stc", "out 0xE1, al", "setc {c}",
                 c = out(reg_byte) unchanged,
                 inout("rax") va => rc, in("ecx") huge as u32, in("edx") validate as u32,
                 options(nostack))
        }
    } else {
        // SAFETY: upheld by the caller. Encoding F2 0F 01 FF (PVALIDATE).
        unsafe {
            asm!(".byte 0xf2, 0x0f, 0x01, 0xff", "setc {c}",
                 c = out(reg_byte) unchanged,
                 inout("rax") va => rc, in("ecx") huge as u32, in("edx") validate as u32,
                 options(nostack))
        }
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
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// TDCALL (66 0F 01 CC): TDX only. Returns the registers after the call.
///
/// Every register a leaf used here may write is an output (bug 8: TDG.VP.INFO writes
/// R9, R10 and R11; TDG.VP.VMCALL returns in R10-R15 whatever the bitmap in RCX
/// exposes): RAX, RCX, RDX, R8-R15. RBX, RSI, RDI and RBP are never exposed (no leaf
/// used here writes them, and every VMCALL bitmap here is 0xFC00), so the module
/// preserves them. Memory is clobbered (REPORT and the VMCALLs write guest memory).
///
/// # Safety
/// Only inside a TD; memory operands named by the leaf must be valid.
pub unsafe fn tdcall(mut r: TdRegs) -> TdRegs {
    if insn_port_trap() {
        // SAFETY: upheld by the caller. The emulator trap: the same registers in and
        // out as TDCALL (host-vmm `tee::emu_tdx`).
        unsafe {
            asm!("out 0xE0, al",
                 inout("rax") r.rax, inout("rcx") r.rcx, inout("rdx") r.rdx, inout("r8") r.r8,
                 inout("r9") r.r9, inout("r10") r.r10, inout("r11") r.r11, inout("r12") r.r12,
                 inout("r13") r.r13, inout("r14") r.r14, inout("r15") r.r15, options(nostack))
        }
    } else {
        // SAFETY: upheld by the caller.
        unsafe {
            asm!(".byte 0x66, 0x0f, 0x01, 0xcc",
                 inout("rax") r.rax, inout("rcx") r.rcx, inout("rdx") r.rdx, inout("r8") r.r8,
                 inout("r9") r.r9, inout("r10") r.r10, inout("r11") r.r11, inout("r12") r.r12,
                 inout("r13") r.r13, inout("r14") r.r14, inout("r15") r.r15, options(nostack))
        }
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

/// Copies `n` bytes between physical ranges (rep movsq + rep movsb tail, emulator-safe).
///
/// # Safety
/// Both ranges must be mapped; they must not overlap.
pub unsafe fn copy_phys(dst: u64, src: u64, n: u64) {
    // SAFETY: upheld by the caller.
    unsafe {
        asm!("rep movsq", "mov rcx, {tail}", "rep movsb", tail = in(reg) n & 7,
             inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n >> 3 => _,
             options(nostack, preserves_flags))
    }
}

/// Fills `n` bytes at `dst` with `v` (rep stosq + rep stosb tail).
///
/// # Safety
/// The range must be mapped and owned by the caller.
pub unsafe fn fill_phys(dst: u64, v: u8, n: u64) {
    // SAFETY: upheld by the caller.
    unsafe {
        asm!("rep stosq", "mov rcx, {tail}", "rep stosb", tail = in(reg) n & 7,
             inout("rdi") dst => _, inout("rcx") n >> 3 => _,
             in("rax") (v as u64) * 0x0101_0101_0101_0101,
             options(nostack, preserves_flags))
    }
}

/// A TDX module for host unit tests: TDCALL raises SIGILL on the host; the handler
/// skips the 4-byte instruction and lets the installed `answer` function change the
/// registers (`[R8..R15, RDI, RSI, RBP, RBX, RDX, RAX, RCX]`, `ucontext_t` order).
/// Tests that use it hold [`fake_module::LOCK`] (the handler is process-wide).
#[cfg(test)]
pub(crate) mod fake_module {
    use core::sync::atomic::{AtomicUsize, Ordering};

    /// Serialises the tests that install an answer.
    pub static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static ANSWER: AtomicUsize = AtomicUsize::new(0);

    /// Register indices in `gregs`.
    pub const R8: usize = 0;
    pub const R9: usize = 1;
    pub const R10: usize = 2;
    pub const R11: usize = 3;
    pub const R12: usize = 4;
    pub const R13: usize = 5;
    pub const RDX: usize = 12;
    pub const RAX: usize = 13;
    pub const RCX: usize = 14;
    const RIP: usize = 16;

    // Linux x86_64: `struct sigaction` (handler, mask, flags, restorer); `ucontext_t`
    // has its general registers at offset 40.
    #[repr(C)]
    struct SigAction {
        handler: usize,
        mask: [u64; 16],
        flags: i32,
        restorer: usize,
    }
    extern "C" {
        fn sigaction(sig: i32, act: *const SigAction, old: *mut SigAction) -> i32;
    }
    const SIGILL: i32 = 4;
    const SA_SIGINFO: i32 = 4;
    const GREGS: usize = 40;

    extern "C" fn handler(_sig: i32, _info: *mut u8, ctx: *mut u8) {
        // SAFETY: the kernel passes a valid ucontext_t; gregs has 23 entries.
        let g = unsafe { &mut *(ctx.add(GREGS) as *mut [u64; 23]) };
        // SAFETY: RIP points at the faulting instruction in our own code.
        let insn = unsafe { *(g[RIP] as *const [u8; 4]) };
        assert_eq!(insn, [0x66, 0x0f, 0x01, 0xcc], "only TDCALL traps here");
        let answer = ANSWER.load(Ordering::SeqCst);
        assert_ne!(answer, 0, "no answer installed");
        // SAFETY: `install` stores only `fn(&mut [u64; 23])` pointers.
        let f: fn(&mut [u64; 23]) = unsafe { core::mem::transmute(answer) };
        f(g);
        g[RIP] += 4;
    }

    /// Makes `answer` the module; the caller holds [`LOCK`].
    pub fn install(answer: fn(&mut [u64; 23])) {
        ANSWER.store(answer as usize, Ordering::SeqCst);
        let act = SigAction {
            handler: handler as *const () as usize,
            mask: [0; 16],
            flags: SA_SIGINFO,
            restorer: 0,
        };
        // SAFETY: installs a handler for SIGILL, which only TDCALL raises in these tests.
        assert_eq!(unsafe { sigaction(SIGILL, &act, core::ptr::null_mut()) }, 0);
    }
}

#[cfg(test)]
mod tests {
    //! Bug 8: `tdcall` must declare every register a leaf writes. The fake module writes
    //! a distinct value into every register TDG.VP.VMCALL / TDG.VP.INFO may write (RCX,
    //! RDX, R8-R15) and RAX = 0. A `tdcall` that leaves one of them undeclared lets the
    //! compiler keep a live value there, which the call destroys (with R9 undeclared,
    //! as before the fix, this test process died with SIGSEGV).
    use super::fake_module::{self, *};
    use super::*;
    use core::hint::black_box;

    fn poison(g: &mut [u64; 23]) {
        for r in [0, 1, 2, 3, 4, 5, 6, 7, RDX, RCX] {
            g[r] = 0xD0D0_0000 + r as u64;
        }
        g[RAX] = 0;
    }

    #[test]
    fn tdcall_declares_every_register_the_module_writes() {
        let _g = fake_module::LOCK.lock().unwrap_or_else(|e| e.into_inner());
        fake_module::install(poison);
        for round in 0..64u64 {
            // Values live across the call, held nowhere else: the register allocator
            // puts them in registers the asm does not declare.
            let (a, b, c, d, e, f) = (
                black_box(round),
                black_box(round + 1),
                black_box(round + 2),
                black_box(round + 3),
                black_box(round + 4),
                black_box(round + 5),
            );
            // SAFETY: the fake module answers the TDCALL.
            let r = unsafe {
                tdcall(TdRegs {
                    rax: 1,
                    ..TdRegs::default()
                })
            };
            let after = [a, b, c, d, e, f];
            let want: [u64; 6] = core::array::from_fn(|i| round + i as u64);
            assert_eq!(after, want, "a live value was clobbered by TDCALL");
            assert_eq!(r.rax, 0);
            assert_eq!(
                r.r9, 0xD0D0_0001,
                "R9 (TDG.VP.INFO's vCPU index) is returned"
            );
            assert_eq!((r.r10, r.r11), (0xD0D0_0002, 0xD0D0_0003));
        }
    }
}
