//! The VMM-side primitives an emulated TEE is built on, run against this machine's
//! KVM with a few real-mode instructions (interpreted at CPL0 on a PVM host, like the
//! firmware):
//!
//! - the emulator trap (`out 0xE0..=0xE7, al`, [`ExitHandler::io_trap`]): the handler
//!   reads and writes the registers, KVM skips the `out` exactly once;
//! - user-space MSR exits for SEV_STATUS / the GHCB MSR
//!   ([`Vm::enable_user_msr_exits`]), including a refused access;
//! - an instruction KVM cannot emulate (`pvalidate`) handed to
//!   [`ExitHandler::internal_error`], which emulates it and advances RIP.
//!
//! Each assertion would fail if the primitive broke: a lost register write, a doubled
//! or skipped instruction, an MSR that KVM swallowed instead of exiting.
//!
//! Measured here as well (2026-12-06, PVM on AMD EPYC), for the emulated TEEs' design:
//! - at the PIO exit of an interpreted (CPL0) `out`, RIP already points past it, and
//!   register writes made during the exit survive re-entry; a standard KVM's fast-PIO
//!   path skips the `out` on re-entry instead. Either way the handler leaves RIP alone.
//! - `kvm_run.internal` of an emulation failure is `emulation_failure`: flags (u64, bit 0
//!   = instruction bytes valid), then `insn_size` (u8, 15 here) and `insn_bytes[15]`
//!   from byte 9 of the data words.
//! - `rep vmmcall` (VMGEXIT) at CPL0 in real mode does NOT exit to user space: the guest
//!   takes #UD through its IVT. A guest that needs VMGEXIT under emulation on this host
//!   must use the trap port 0xE2.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use host_vmm::devices::Buses;
use host_vmm::vstate::vcpu::{
    ExitError, ExitHandler, Handled, RunControl, Vcpu, VcpuStop, TRAP_PORTS,
};
use host_vmm::vstate::vm::Vm;
use kvm_ioctls::{Kvm, VcpuFd};

const SEV_STATUS: u32 = 0xC001_0131;
const GHCB_MSR: u32 = 0xC001_0130;
const REFUSED_MSR: u32 = 0xC001_0132;
/// `out 0xE7, al`: the end of a test program.
const END: u16 = 0xE7;
const END_INSN: [u8; 2] = [0xE6, 0xE7];

#[derive(Default)]
struct Recorder {
    traps: AtomicU32,
    trap_port: AtomicU32,
    ghcb: AtomicU64,
    internal: Mutex<Vec<u8>>,
    end: Mutex<Option<kvm_bindings::kvm_regs>>,
}

impl ExitHandler for Recorder {
    fn memory_fault(&self, _: u64, _: u64, _: bool) -> Result<(), ExitError> {
        Err(ExitError::Unexpected("memory fault"))
    }
    fn map_gpa_range(&self, _: &[u64; 6]) -> u64 {
        u64::MAX
    }
    fn tdx_vmcall(&self, _: u32, _: &mut [u8; 256]) -> Result<(), ExitError> {
        Err(ExitError::Unexpected("tdx"))
    }
    fn snp_req_certs(&self, _: &mut [u8; 256]) -> Result<(), ExitError> {
        Err(ExitError::Unexpected("certs"))
    }
    fn io_trap(&self, _vcpu: u32, fd: &VcpuFd, port: u16) -> Result<Handled, ExitError> {
        if port == END {
            // The end of the test program: keep the registers and stop the vCPU (HLT
            // would not exit: the in-kernel LAPIC waits for an interrupt).
            *self.end.lock().unwrap() = fd.get_regs().ok();
            return Ok(Handled::Fault);
        }
        self.traps.fetch_add(1, Ordering::SeqCst);
        self.trap_port.store(u32::from(port), Ordering::SeqCst);
        let mut regs = fd
            .get_regs()
            .map_err(|_| ExitError::Unexpected("get_regs"))?;
        // "Emulate": RBX = RAX + 1, RCX = 0x77; RIP untouched.
        regs.rbx = regs.rax.wrapping_add(1) & 0xFFFF_FFFF;
        regs.rcx = 0x77;
        fd.set_regs(&regs)
            .map_err(|_| ExitError::Unexpected("set_regs"))?;
        Ok(Handled::Yes)
    }
    fn msr(&self, _vcpu: u32, msr: u32, write: bool, data: &mut u64) -> Result<Handled, ExitError> {
        match (msr, write) {
            (SEV_STATUS, false) => {
                *data = 0b111;
                Ok(Handled::Yes)
            }
            (GHCB_MSR, true) => {
                self.ghcb.store(*data, Ordering::SeqCst);
                Ok(Handled::Yes)
            }
            (REFUSED_MSR, _) => Ok(Handled::Fault),
            _ => Ok(Handled::No),
        }
    }
    fn internal_error(
        &self,
        _vcpu: u32,
        fd: &VcpuFd,
        suberror: u32,
        data: &[u64],
    ) -> Result<Handled, ExitError> {
        // `kvm_run.emulation_failure` (include/uapi/linux/kvm.h): flags (u64; bit 0
        // KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES), then insn_size (u8) and
        // insn_bytes[15].
        let raw: Vec<u8> = data.iter().flat_map(|w| w.to_le_bytes()).collect();
        *self.internal.lock().unwrap() = raw.clone();
        let has_bytes = raw.len() >= 24 && raw[0] & 1 == 1;
        if suberror != 1 || !has_bytes || !raw[9..].starts_with(&[0xF2, 0x0F, 0x01, 0xFF]) {
            return Ok(Handled::No);
        }
        let mut regs = fd
            .get_regs()
            .map_err(|_| ExitError::Unexpected("get_regs"))?;
        regs.rax = 0; // PVALIDATE success
        regs.rflags |= 1; // CF: no state change
        regs.rip += 4;
        fd.set_regs(&regs)
            .map_err(|_| ExitError::Unexpected("set_regs"))?;
        Ok(Handled::Yes)
    }
}

/// Runs `code` (real mode, at CS:0 of a 64 KiB image ending at 4 GiB) until it halts.
fn run(code: &[u8], handler: &Recorder, user_msrs: bool) -> (VcpuStop, Vcpu) {
    let kvm = Kvm::new().unwrap();
    let mut image = vec![0u8; 64 << 10];
    image[..code.len()].copy_from_slice(code);
    // Reset vector (CS base 0xFFFF0000, IP 0xFFF0): jmp near 0x0000.
    image[0xFFF0..0xFFF3].copy_from_slice(&[0xE9, 0x0D, 0x00]);
    let vm = Vm::new(&kvm, 16 << 20, &image).unwrap();
    if user_msrs {
        vm.enable_user_msr_exits(&[SEV_STATUS, GHCB_MSR, REFUSED_MSR])
            .unwrap();
    }
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let mut vcpu = Vcpu::new(vm.fd(), 0, &cpuid).unwrap();
    let stop = vcpu.run(
        &Buses::default(),
        vm.memory(),
        &RunControl::default(),
        Some(handler),
    );
    (stop, vcpu)
}

fn end_regs(stop: &VcpuStop, h: &Recorder) -> kvm_bindings::kvm_regs {
    assert!(
        matches!(stop, VcpuStop::UnexpectedExit(m) if m.contains("0xe7")),
        "the program did not reach its end: {stop:?}"
    );
    h.end.lock().unwrap().expect("registers at the end")
}

#[test]
fn the_emulator_trap_keeps_register_writes_and_skips_the_out_once() {
    test_kit::require!(kvm);
    let code = [
        0x66,
        0xB8,
        0x44,
        0x33,
        0x22,
        0x11, // mov eax, 0x11223344
        0x66,
        0xBB,
        0x55,
        0,
        0,
        0, // mov ebx, 0x55
        0xE6,
        0xE0, // out 0xE0, al      (trap)
        0x66,
        0x89,
        0xDE, // mov esi, ebx (proves execution resumed after the out)
        END_INSN[0],
        END_INSN[1],
    ];
    let h = Recorder::default();
    let (stop, _) = run(&code, &h, false);
    let regs = end_regs(&stop, &h);
    assert_eq!(h.traps.load(Ordering::SeqCst), 1, "the trap ran once");
    assert_eq!(h.trap_port.load(Ordering::SeqCst), 0xE0);
    assert_eq!(regs.rbx, 0x1122_3345, "the handler's RBX survived");
    assert_eq!(regs.rcx, 0x77, "the handler's RCX survived");
    assert_eq!(regs.rsi, 0x1122_3345, "the instruction after the out ran");
    // At the exit RIP is already past the `out` here (PVM's emulator completes it
    // first); a standard KVM's fast PIO path skips it on re-entry. Either way the
    // handler leaves RIP alone.
    let end = code.len() as u64;
    assert!(
        regs.rip == end || regs.rip == end - 2,
        "RIP {:#x} is at or just past the end marker",
        regs.rip
    );
    assert!(TRAP_PORTS.contains(&0xE4));
}

#[test]
fn sev_status_and_ghcb_msr_exit_to_user_space() {
    test_kit::require!(kvm);
    let code = [
        0x66,
        0xB9,
        0x31,
        0x01,
        0x01,
        0xC0, // mov ecx, 0xC0010131
        0x0F,
        0x32, // rdmsr
        0x66,
        0x89,
        0xC6, // mov esi, eax
        0x66,
        0xB9,
        0x30,
        0x01,
        0x01,
        0xC0, // mov ecx, 0xC0010130
        0x66,
        0xB8,
        0x12,
        0x90,
        0,
        0, // mov eax, 0x9012
        0x66,
        0xBA,
        0x01,
        0,
        0,
        0, // mov edx, 1
        0x0F,
        0x30, // wrmsr
        END_INSN[0],
        END_INSN[1],
    ];
    let h = Recorder::default();
    let (stop, _) = run(&code, &h, true);
    let regs = end_regs(&stop, &h);
    assert_eq!(regs.rsi, 0b111, "the guest read the handler's SEV_STATUS");
    assert_eq!(h.ghcb.load(Ordering::SeqCst), 0x1_0000_9012);
}

#[test]
fn an_instruction_kvm_cannot_emulate_is_emulated_by_the_handler() {
    test_kit::require!(kvm);
    let code = [
        0x66,
        0xB8,
        0x05,
        0,
        0,
        0, // mov eax, 5
        0xF2,
        0x0F,
        0x01,
        0xFF, // pvalidate
        0x66,
        0x89,
        0xC6, // mov esi, eax
        END_INSN[0],
        END_INSN[1],
    ];
    let h = Recorder::default();
    let (stop, _) = run(&code, &h, false);
    let seen = h.internal.lock().unwrap().clone();
    assert!(
        seen.len() >= 24 && seen[0] & 1 == 1 && seen[9..].starts_with(&[0xF2, 0x0F, 0x01, 0xFF]),
        "emulation_failure carries the instruction bytes: {seen:02x?}"
    );
    let regs = end_regs(&stop, &h);
    assert_eq!(regs.rsi, 0, "PVALIDATE's RAX result reached the guest");
    assert_eq!(regs.rflags & 1, 1, "PVALIDATE's CF reached the guest");
}
