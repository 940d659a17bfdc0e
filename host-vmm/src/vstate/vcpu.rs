//! vCPUs: creation, the run loop, and diagnosis of why a vCPU stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use kvm_bindings::{kvm_regs, kvm_sregs, CpuId, KVM_EXIT_INTERNAL_ERROR};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::private::{KVM_HC_MAP_GPA_RANGE, KVM_MEMORY_EXIT_FLAG_PRIVATE};
use crate::devices::{Buses, VmEvent};

/// What the VMM asks of its running vCPUs: stop for good, or pause until resumed. A
/// vCPU in KVM_RUN sees a request after the VMM kicks it out with a signal.
#[derive(Debug, Default)]
pub struct RunControl {
    stop: AtomicBool,
    paused: Mutex<bool>,
    wake: Condvar,
}

impl RunControl {
    /// Asks every vCPU to stop (also wakes paused ones).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _g = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    /// Whether a stop was requested.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Pauses or resumes the vCPUs.
    pub fn set_paused(&self, paused: bool) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = paused;
        self.wake.notify_all();
    }

    /// Whether the vCPUs are asked to pause.
    pub fn paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_while_paused(&self) {
        let mut p = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        while *p && !self.stopped() {
            p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Why a vCPU stopped running guest code.
#[derive(Debug, Clone, PartialEq)]
pub enum VcpuStop {
    /// The guest powered off (ACPI S5 or a KVM shutdown system event).
    PowerOff,
    /// The guest asked for a reset (treated as a stop: a confidential guest cannot be
    /// rebooted with the same measurement).
    Reset,
    /// Another vCPU ended the VM.
    Stopped,
    /// A triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault(Box<CpuState>),
    /// KVM could not emulate an instruction (KVM_EXIT_INTERNAL_ERROR).
    EmulationFailure {
        /// KVM's suberror (1 = emulation failure).
        suberror: u32,
        /// Registers and the instruction bytes at CS:RIP.
        state: Box<CpuState>,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// The guest halted and nothing can wake it.
    Halted(Box<CpuState>),
    /// The guest reported a crash (KVM system event).
    Crash,
    /// The guest signalled a panic through pvpanic.
    GuestPanic,
    /// The operator asked for a shutdown through the control API.
    ShutdownRequested,
    /// KVM_RUN failed.
    RunError(String),
    /// An exit the VMM does not handle.
    UnexpectedExit(String),
}

impl VcpuStop {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            VcpuStop::PowerOff => "power-off",
            VcpuStop::Reset => "reset",
            VcpuStop::Stopped => "stopped",
            VcpuStop::TripleFault(_) => "triple-fault",
            VcpuStop::EmulationFailure { .. } => "emulation-failure",
            VcpuStop::FailEntry { .. } => "fail-entry",
            VcpuStop::Halted(_) => "halted",
            VcpuStop::Crash => "crash",
            VcpuStop::GuestPanic => "guest-panic",
            VcpuStop::ShutdownRequested => "shutdown-requested",
            VcpuStop::RunError(_) => "run-error",
            VcpuStop::UnexpectedExit(_) => "unexpected-exit",
        }
    }
}

/// A snapshot of a vCPU for diagnostics.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuState {
    /// vCPU index.
    pub index: u32,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// Up to 16 bytes at CS:RIP, if they could be read.
    pub code: Option<Vec<u8>>,
}

impl std::fmt::Display for CpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (r, s) = (&self.regs, &self.sregs);
        write!(
            f,
            "vCPU {} at CS:RIP {:#x}:{:#x} (linear {:#x}); ",
            self.index,
            s.cs.selector,
            r.rip,
            s.cs.base.wrapping_add(r.rip)
        )?;
        match &self.code {
            Some(b) => write!(
                f,
                "instruction bytes {}; ",
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )?,
            None => write!(f, "instruction bytes unreadable; ")?,
        }
        write!(
            f,
            "rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rsp={:#x} rbp={:#x} rflags={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.rflags, s.cr0, s.cr3, s.cr4, s.efer
        )
    }
}

/// Errors creating a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A vCPU ioctl failed.
    #[error("{what} failed for vCPU {index}")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// vCPU index.
        index: u32,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// CPUID leaf of AMD's memory-encryption capabilities (SME/SEV/SEV-ES/SNP).
pub const LEAF_AMD_MEM_ENCRYPT: u32 = 0x8000_001F;
/// CPUID leaf where a TDX module reports "IntelTDX    ".
pub const LEAF_TDX: u32 = 0x21;

/// Hides the TEE leaves the guest is not actually running under: leaf 0x8000001F
/// (SEV) unless the guest is a real SNP guest, and leaf 0x21 (TDX) unless it is a
/// real TD. The firmware picks its boot path from these leaves, so an emulated or plain
/// guest must never see them.
pub fn sanitize_cpuid(cpuid: &mut CpuId, real_snp: bool, real_tdx: bool) {
    for e in cpuid.as_mut_slice() {
        let hide = (e.function == LEAF_AMD_MEM_ENCRYPT && !real_snp)
            || (e.function == LEAF_TDX && !real_tdx);
        if hide {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
    }
}

/// `KVM_EXIT_TDX` (Linux >= 6.16): a TDVMCALL KVM forwards to the VMM. (Out-of-tree
/// TDX kernels used 50; the upstream value is 40.)
pub const KVM_EXIT_TDX: u32 = 40;
/// `KVM_EXIT_SNP_REQ_CERTS` (Linux 7.0): an SNP guest's extended report request wants
/// the certificate table.
pub const KVM_EXIT_SNP_REQ_CERTS: u32 = 43;

/// The exits only confidential (SNP, TDX) guests make. The VMM implements this over
/// its private memory and TDX services; plain and emulated guests have none.
pub trait ExitHandler: Send + Sync {
    /// `KVM_EXIT_MEMORY_FAULT`: the guest accessed `gpa..gpa+size` as private
    /// (`private`) or shared while the range's attribute says otherwise.
    fn memory_fault(&self, gpa: u64, size: u64, private: bool) -> Result<(), ExitError>;
    /// `KVM_HC_MAP_GPA_RANGE`: returns the hypercall's `ret`.
    fn map_gpa_range(&self, args: &[u64; 6]) -> u64;
    /// `KVM_EXIT_TDX` from vCPU `vcpu`: `exit` is the exit's member of `kvm_run`
    /// (flags, nr, then the per-call union), which the handler reads and answers in
    /// place.
    fn tdx_vmcall(&self, vcpu: u32, exit: &mut [u8; 256]) -> Result<(), ExitError>;
    /// `KVM_EXIT_SNP_REQ_CERTS`: `exit` holds {gpa, npages, ret}; the handler writes
    /// the certificate table and answers in place.
    fn snp_req_certs(&self, exit: &mut [u8; 256]) -> Result<(), ExitError>;
    /// `KVM_EXIT_INTERNAL_ERROR` with `suberror` and KVM's `data` words (for an
    /// instruction KVM cannot emulate, its bytes): a handler that emulates the
    /// instruction (and advances RIP through `fd`) answers [`Handled::Yes`] and the
    /// vCPU re-enters the guest. Default: not handled, the vCPU stops with an
    /// emulation failure, which is right for every TEE that emulates no instruction.
    fn internal_error(
        &self,
        _vcpu: u32,
        _fd: &VcpuFd,
        _suberror: u32,
        _data: &[u64],
    ) -> Result<Handled, ExitError> {
        Ok(Handled::No)
    }
    /// `KVM_EXIT_HYPERCALL` other than MapGPA (only numbers the TEE asked KVM to
    /// forward with `KVM_CAP_EXIT_HYPERCALL`): answers in `ret`. Default: not handled,
    /// the vCPU stops, which is right for every TEE that forwards no other hypercall.
    fn hypercall(
        &self,
        _vcpu: u32,
        _nr: u64,
        _args: &[u64; 6],
        _ret: &mut u64,
    ) -> Result<Handled, ExitError> {
        Ok(Handled::No)
    }
    /// `KVM_EXIT_X86_RDMSR` / `KVM_EXIT_X86_WRMSR` (only after the TEE enabled
    /// `KVM_CAP_X86_USER_SPACE_MSR`, see [`crate::vstate::vm::Vm::enable_user_msr_exits`]):
    /// `msr` with `data` (the value written, or where the value read goes).
    /// [`Handled::Fault`] refuses the access: the VMM sets `kvm_run.msr.error`, and KVM
    /// injects #GP as the hardware would. Default: not handled, the vCPU stops, which is
    /// right for every TEE that asked for no MSR exits.
    fn msr(
        &self,
        _vcpu: u32,
        _msr: u32,
        _write: bool,
        _data: &mut u64,
    ) -> Result<Handled, ExitError> {
        Ok(Handled::No)
    }
    /// A one-byte `out` to a port in [`TRAP_PORTS`]: the **emulator trap**, by which
    /// guest code that cannot execute a TEE instruction here (CPL3 code on this PVM
    /// host, any code on a standard KVM, where `tdcall` or `pvalidate` raise #UD in the
    /// guest) asks the emulated TEE to perform it: 0xE0 TDCALL, 0xE1 PVALIDATE, 0xE2
    /// VMGEXIT, 0xE3 RDMSR, 0xE4 WRMSR, every other register set exactly as for the
    /// instruction. The handler reads the registers through `fd` (KVM_GET_REGS),
    /// applies the instruction and writes the results back (KVM_SET_REGS) **without
    /// touching RIP**: KVM skips the `out` when the vCPU re-enters. Default: not handled,
    /// and the write goes to the port bus like any other (plain and real-TEE guests
    /// have no trap).
    fn io_trap(&self, _vcpu: u32, _fd: &VcpuFd, _port: u16) -> Result<Handled, ExitError> {
        Ok(Handled::No)
    }
    /// An MMIO exit at `gpa` (`data`: where a read's bytes go, or the bytes written),
    /// offered before the device bus. An emulated TEE that keeps the private-memory
    /// contract ([`crate::vstate::cc_memory::CcMemory::serve_mmio`]) answers
    /// `Err(ExitError::GuestFault(..))` when `gpa` is guest RAM the guest may not touch
    /// (an unvalidated/unaccepted page, or the wrong attribute: on this host KVM turns
    /// such a CPL0 access into an MMIO exit, and the hardware would raise #VC / #VE), and
    /// [`Handled::Yes`] when it carried out an access to RAM that is accessible (an exit
    /// that raced with a state change). Default: a device access.
    fn mmio(&self, _gpa: u64, _data: &mut [u8], _write: bool) -> Result<Handled, ExitError> {
        Ok(Handled::No)
    }
    /// `KVM_RUN` failed with EFAULT (on this host, a CPL3 access to a protected page
    /// gives no GPA). [`Handled::Yes`]: the handler changed the memory layout so the
    /// access exits with its GPA; run again. Default: the vCPU stops.
    fn run_efault(&self) -> Result<Handled, ExitError> {
        Ok(Handled::No)
    }
}

/// The ports of the emulator trap ([`ExitHandler::io_trap`]).
pub const TRAP_PORTS: std::ops::RangeInclusive<u16> = 0xE0..=0xE7;

/// Why a TEE exit handler stopped the vCPU.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    /// An implicit private/shared conversion failed.
    #[error("implicit conversion of {gpa:#x}+{size:#x} failed")]
    Conversion {
        /// First byte.
        gpa: u64,
        /// Size.
        size: u64,
        /// Why.
        #[source]
        source: super::private::PrivateMemoryError,
    },
    /// An exit the VM's TEE never asked for.
    #[error("{0}")]
    Unexpected(&'static str),
    /// The guest touched memory the TEE forbids it, as the hardware reports it (for
    /// example "guest read unvalidated private page 0x…: SNP #VC page-not-validated").
    #[error("guest fault: {0}")]
    GuestFault(String),
    /// The emulated TEE could not carry out an operation.
    #[error("emulated TEE failure: {0}")]
    Emulation(String),
    /// A device event the handler caused on the guest's behalf (for example a pvpanic
    /// or ACPI S5 written through TDVMCALL<Instruction.IO> or a GHCB IOIO exit): the
    /// vCPU stops as if the guest had done the port write itself.
    #[error("guest device event {0:?}")]
    GuestEvent(VmEvent),
}

/// How a handler's error stops the vCPU: a device event as that event, anything else as
/// an unexpected exit with the error's causes.
fn handler_stop(e: &ExitError) -> VcpuStop {
    match e {
        ExitError::GuestEvent(VmEvent::PowerOff) => VcpuStop::PowerOff,
        ExitError::GuestEvent(VmEvent::Reset) => VcpuStop::Reset,
        ExitError::GuestEvent(VmEvent::Panic) => VcpuStop::GuestPanic,
        other => VcpuStop::UnexpectedExit(chain(other)),
    }
}

/// `e` and its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Whether an exit handler dealt with an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Handled; the vCPU re-enters the guest.
    Yes,
    /// Not the handler's business; the vCPU stops and reports the exit.
    No,
    /// The access faults as on the hardware: an MSR access gets #GP
    /// (`kvm_run.msr.error = 1`); any other exit stops the vCPU with a guest fault.
    Fault,
}

/// One vCPU.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    index: u32,
    exits: ExitCounts,
}

/// How many times KVM_RUN returned to this VMM, by exit reason (the cost of emulation:
/// under the emulated TEEs every emulated PVALIDATE/TDCALL is an exit). Logged with the
/// `vcpu-stopped` event; `scripts/bench-accept` reads it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExitCounts {
    /// Every return from KVM_RUN (interruptions included).
    pub total: u64,
    /// Port I/O (emulator trap ports included).
    pub io: u64,
    /// MMIO.
    pub mmio: u64,
    /// User-space RDMSR/WRMSR.
    pub msr: u64,
    /// Internal errors (an instruction the host's KVM could not emulate: the emulated
    /// PVALIDATE/TDCALL on a PVM host).
    pub internal: u64,
    /// Hypercalls and TEE exits (`KVM_EXIT_HYPERCALL`, `KVM_EXIT_TDX`, SNP certificates).
    pub hypercall: u64,
    /// Memory faults (implicit conversions).
    pub memory_fault: u64,
}

impl ExitCounts {
    fn note(&mut self, r: &Result<VcpuExit<'_>, kvm_ioctls::Error>) {
        self.total += 1;
        match r {
            Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..)) => self.io += 1,
            Ok(VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..)) => self.mmio += 1,
            Ok(VcpuExit::X86Rdmsr(..) | VcpuExit::X86Wrmsr(..)) => self.msr += 1,
            Ok(VcpuExit::InternalError) => self.internal += 1,
            Ok(VcpuExit::Hypercall(..) | VcpuExit::Unsupported(..)) => self.hypercall += 1,
            Ok(VcpuExit::MemoryFault { .. }) => self.memory_fault += 1,
            _ => {}
        }
    }
}

impl Vcpu {
    /// Creates vCPU `index` with the host-supported CPUID, its APIC ID patched in.
    pub fn new(vm: &VmFd, index: u32, cpuid: &CpuId) -> Result<Self, VcpuError> {
        let err = |what| {
            move |source| VcpuError::Ioctl {
                what,
                index,
                source,
            }
        };
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(err("KVM_CREATE_VCPU"))?;
        let mut cpuid = cpuid.clone();
        for e in cpuid.as_mut_slice() {
            match e.function {
                1 => e.ebx = (e.ebx & 0x00ff_ffff) | (index << 24),
                0xb | 0x1f => e.edx = index,
                _ => {}
            }
        }
        fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
        Ok(Self {
            fd,
            index,
            exits: ExitCounts::default(),
        })
    }

    /// The exits counted so far (see [`ExitCounts`]).
    pub fn exit_counts(&self) -> ExitCounts {
        self.exits
    }

    /// The vCPU fd (for the TEE launch commands that act on vCPUs).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The vCPU index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Runs the guest until it stops. `stop` is checked whenever KVM_RUN is interrupted
    /// (the VMM signals the thread to interrupt it).
    pub fn run(
        &mut self,
        bus: &Buses,
        mem: &GuestMemoryMmap,
        control: &RunControl,
        cc: Option<&dyn ExitHandler>,
    ) -> VcpuStop {
        loop {
            control.wait_while_paused();
            if control.stopped() {
                return VcpuStop::Stopped;
            }
            let result = self.fd.run();
            self.exits.note(&result);
            let outcome = match result {
                Ok(VcpuExit::IoIn(port, data)) => {
                    bus.pio.read(port, data);
                    None
                }
                Ok(VcpuExit::IoOut(port, data))
                    if cc.is_some() && data.len() == 1 && TRAP_PORTS.contains(&port) =>
                {
                    Some(Exit::Trap(port, data[0]))
                }
                Ok(VcpuExit::IoOut(port, data)) => pio_out(bus, port, data),
                Ok(VcpuExit::MmioRead(addr, data)) => match mmio_tee(cc, addr, data, false) {
                    Ok(true) => None,
                    Ok(false) => {
                        bus.mmio.read(addr, data);
                        None
                    }
                    Err(stop) => Some(stop),
                },
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    let mut bytes = [0u8; 8];
                    let n = data.len().min(8);
                    bytes[..n].copy_from_slice(&data[..n]);
                    match mmio_tee(cc, addr, &mut bytes[..n], true) {
                        Ok(true) => None,
                        Ok(false) => {
                            bus.mmio.write(addr, data);
                            None
                        }
                        Err(stop) => Some(stop),
                    }
                }
                Ok(VcpuExit::X86Rdmsr(m)) => {
                    msr_exit(cc, self.index, m.index, false, m.data, m.error)
                }
                Ok(VcpuExit::X86Wrmsr(m)) => {
                    let mut data = m.data;
                    msr_exit(cc, self.index, m.index, true, &mut data, m.error)
                }
                Ok(VcpuExit::Hlt) => Some(Exit::Halted),
                Ok(VcpuExit::Shutdown) => Some(Exit::TripleFault),
                Ok(VcpuExit::InternalError) => match cc {
                    Some(cc) => self.internal_error(cc),
                    None => Some(Exit::Internal),
                },
                Ok(VcpuExit::FailEntry(reason, _)) => {
                    Some(Exit::Stop(VcpuStop::FailEntry { reason }))
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => Some(Exit::Stop(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuStop::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuStop::Reset,
                    kvm_bindings::KVM_SYSTEM_EVENT_CRASH => VcpuStop::Crash,
                    // An SNP guest asked to be terminated (GHCB termination request)
                    // or a TD reported a fatal error: both are guest crashes.
                    6 | 7 => VcpuStop::Crash,
                    other => VcpuStop::UnexpectedExit(format!("system event {other}")),
                })),
                Ok(VcpuExit::MemoryFault { flags, gpa, size }) => {
                    memory_fault(cc, flags, gpa, size)
                }
                Ok(VcpuExit::Hypercall(h)) => hypercall(cc, self.index, h.nr, &h.args, h.ret),
                Ok(VcpuExit::Unsupported(r @ (KVM_EXIT_TDX | KVM_EXIT_SNP_REQ_CERTS))) => {
                    match cc {
                        Some(cc) => self.raw_exit(r, cc),
                        None => Some(Exit::Stop(VcpuStop::UnexpectedExit(format!(
                            "exit {r} from a VM without a TEE exit handler"
                        )))),
                    }
                }
                Ok(other) => Some(Exit::Stop(VcpuStop::UnexpectedExit(format!("{other:?}")))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) if e.errno() == libc::EFAULT && cc.is_some() => {
                    match cc.map(|cc| cc.run_efault()) {
                        Some(Ok(Handled::Yes)) => None,
                        Some(Err(err)) => Some(Exit::Stop(handler_stop(&err))),
                        _ => Some(Exit::Stop(VcpuStop::RunError(e.to_string()))),
                    }
                }
                Err(e) => Some(Exit::Stop(VcpuStop::RunError(e.to_string()))),
            };
            let outcome = match (outcome, cc) {
                (Some(Exit::Trap(port, value)), Some(cc)) => self.io_trap(bus, cc, port, value),
                (Some(Exit::Trap(port, value)), None) => pio_out(bus, port, &[value]),
                (other, _) => other,
            };
            match outcome {
                None | Some(Exit::Trap(..)) => continue,
                Some(Exit::Stop(s)) => return s,
                Some(Exit::Halted) => return VcpuStop::Halted(Box::new(self.state(mem))),
                Some(Exit::TripleFault) => return VcpuStop::TripleFault(Box::new(self.state(mem))),
                Some(Exit::Internal) => {
                    let suberror = self.internal_suberror();
                    return VcpuStop::EmulationFailure {
                        suberror,
                        state: Box::new(self.state(mem)),
                    };
                }
            }
        }
    }

    /// `KVM_EXIT_TDX` / `KVM_EXIT_SNP_REQ_CERTS`, which kvm-ioctls does not decode: the
    /// handler reads and answers the exit union in place.
    fn raw_exit(&mut self, reason: u32, cc: &dyn ExitHandler) -> Option<Exit> {
        let index = self.index;
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason says KVM filled this exit's member of the exit
        // union, which is plain integers. The union is 256 bytes (`padding`);
        // `[c_char; 256]` and `[u8; 256]` have the same layout and every bit pattern is
        // valid for both.
        let exit = unsafe {
            &mut *(&mut run.__bindgen_anon_1.padding as *mut [libc::c_char; 256] as *mut [u8; 256])
        };
        let result = if reason == KVM_EXIT_TDX {
            cc.tdx_vmcall(index, exit)
        } else {
            cc.snp_req_certs(exit)
        };
        result.err().map(|e| Exit::Stop(handler_stop(&e)))
    }

    /// Offers an emulator-trap `out` to the TEE's handler; unhandled, it is an ordinary
    /// port write.
    fn io_trap(&mut self, bus: &Buses, cc: &dyn ExitHandler, port: u16, value: u8) -> Option<Exit> {
        match cc.io_trap(self.index, &self.fd, port) {
            Ok(Handled::Yes) => None,
            Ok(Handled::No) => pio_out(bus, port, &[value]),
            Ok(Handled::Fault) => Some(Exit::Stop(VcpuStop::UnexpectedExit(format!(
                "the emulated TEE refused the trap on port {port:#x} (the instruction faults)"
            )))),
            Err(e) => Some(Exit::Stop(handler_stop(&e))),
        }
    }

    /// Offers an internal-error exit to the TEE's handler.
    fn internal_error(&mut self, cc: &dyn ExitHandler) -> Option<Exit> {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
            return Some(Exit::Internal);
        }
        // SAFETY: `exit_reason` is KVM_EXIT_INTERNAL_ERROR, so KVM filled the
        // `internal` member of the exit union; it is plain data (integers).
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        match cc.internal_error(self.index, &self.fd, internal.suberror, &internal.data[..n]) {
            Ok(Handled::Yes) => None,
            Ok(Handled::No) => Some(Exit::Internal),
            Ok(Handled::Fault) => Some(Exit::Stop(VcpuStop::UnexpectedExit(
                "the emulated TEE refused the instruction (it faults on the hardware)".into(),
            ))),
            Err(e) => Some(Exit::Stop(handler_stop(&e))),
        }
    }

    fn internal_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
            return 0;
        }
        // SAFETY: `exit_reason` is KVM_EXIT_INTERNAL_ERROR, so KVM filled the
        // `internal` member of the exit union; it is plain data (integers).
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }

    /// Registers and the code bytes at CS:RIP.
    pub fn state(&self, mem: &GuestMemoryMmap) -> CpuState {
        let regs = self.fd.get_regs().unwrap_or_default();
        let sregs = self.fd.get_sregs().unwrap_or_default();
        let code = translate(mem, &sregs, sregs.cs.base.wrapping_add(regs.rip)).and_then(|gpa| {
            let mut b = [0u8; 16];
            // Read what is available up to the end of the page.
            let n = (4096 - (gpa & 0xfff) as usize).min(16);
            mem.read_slice(&mut b[..n], GuestAddress(gpa))
                .ok()
                .map(|()| b[..n].to_vec())
        });
        CpuState {
            index: self.index,
            regs,
            sregs,
            code,
        }
    }
}

/// `KVM_EXIT_HYPERCALL` (only for the numbers the VM asked KVM to forward):
/// MapGPA, or the handler's other hypercalls.
fn hypercall(
    cc: Option<&dyn ExitHandler>,
    vcpu: u32,
    nr: u64,
    args: &[u64; 6],
    ret: &mut u64,
) -> Option<Exit> {
    let Some(cc) = cc else {
        return Some(Exit::Stop(VcpuStop::UnexpectedExit(format!(
            "hypercall {nr} from a VM without a TEE exit handler"
        ))));
    };
    if nr == KVM_HC_MAP_GPA_RANGE {
        *ret = cc.map_gpa_range(args);
        return None;
    }
    match cc.hypercall(vcpu, nr, args, ret) {
        Ok(Handled::Yes) => None,
        Ok(Handled::No | Handled::Fault) => Some(Exit::Stop(VcpuStop::UnexpectedExit(format!(
            "unhandled hypercall {nr}"
        )))),
        Err(e) => Some(Exit::Stop(handler_stop(&e))),
    }
}

/// `KVM_EXIT_MEMORY_FAULT`: an implicit private/shared conversion for the handler.
fn memory_fault(cc: Option<&dyn ExitHandler>, flags: u64, gpa: u64, size: u64) -> Option<Exit> {
    match cc {
        Some(cc) => cc
            .memory_fault(gpa, size, flags & KVM_MEMORY_EXIT_FLAG_PRIVATE != 0)
            .err()
            .map(|e| Exit::Stop(handler_stop(&e))),
        None => Some(Exit::Stop(VcpuStop::UnexpectedExit(format!(
            "memory fault at {gpa:#x}+{size:#x} in a VM without private memory"
        )))),
    }
}

/// Offers a user-space MSR exit to the TEE's handler.
fn msr_exit(
    cc: Option<&dyn ExitHandler>,
    vcpu: u32,
    msr: u32,
    write: bool,
    data: &mut u64,
    error: &mut u8,
) -> Option<Exit> {
    match cc.map(|cc| cc.msr(vcpu, msr, write, data)) {
        Some(Ok(Handled::Yes)) => None,
        Some(Ok(Handled::Fault)) => {
            *error = 1;
            None
        }
        Some(Err(e)) => Some(Exit::Stop(handler_stop(&e))),
        Some(Ok(Handled::No)) | None => Some(Exit::Stop(VcpuStop::UnexpectedExit(format!(
            "unhandled {} of MSR {msr:#x}",
            if write { "WRMSR" } else { "RDMSR" }
        )))),
    }
}

/// Offers an MMIO exit to the TEE's handler: `Ok(true)` it served the access,
/// `Ok(false)` it is for the device bus, `Err` stops the vCPU (a guest fault).
fn mmio_tee(
    cc: Option<&dyn ExitHandler>,
    gpa: u64,
    data: &mut [u8],
    write: bool,
) -> Result<bool, Exit> {
    match cc.map(|cc| cc.mmio(gpa, data, write)) {
        None | Some(Ok(Handled::No)) => Ok(false),
        Some(Ok(Handled::Yes)) => Ok(true),
        Some(Err(e)) => Err(Exit::Stop(handler_stop(&e))),
        Some(Ok(Handled::Fault)) => Err(Exit::Stop(VcpuStop::UnexpectedExit(format!(
            "guest fault at {gpa:#x}"
        )))),
    }
}

/// A port write to the bus; a device's event stops the vCPU.
fn pio_out(bus: &Buses, port: u16, data: &[u8]) -> Option<Exit> {
    bus.pio.write(port, data).map(|e| match e {
        VmEvent::PowerOff => Exit::Stop(VcpuStop::PowerOff),
        VmEvent::Reset => Exit::Stop(VcpuStop::Reset),
        VmEvent::Panic => Exit::Stop(VcpuStop::GuestPanic),
    })
}

enum Exit {
    /// An emulator-trap `out` (port, value), offered to the handler once the exit's
    /// borrow of `kvm_run` has ended.
    Trap(u16, u8),
    Stop(VcpuStop),
    Halted,
    TripleFault,
    Internal,
}

/// Translates a guest linear address to a physical one by walking the guest's page
/// tables (no paging, or 4-level long-mode paging).
pub fn translate(mem: &GuestMemoryMmap, sregs: &kvm_sregs, linear: u64) -> Option<u64> {
    const PG: u64 = 1 << 31;
    const LMA: u64 = 1 << 10;
    if sregs.cr0 & PG == 0 {
        return Some(linear & 0xffff_ffff);
    }
    if sregs.efer & LMA == 0 {
        return None;
    }
    let mut table = sregs.cr3 & 0x000f_ffff_ffff_f000;
    for (level, shift) in [(4, 39), (3, 30), (2, 21), (1, 12)] {
        let idx = (linear >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + idx * 8)).ok()?;
        if entry & 1 == 0 {
            return None;
        }
        let addr = entry & 0x000f_ffff_ffff_f000;
        if level == 1 || ((level == 2 || level == 3) && entry & (1 << 7) != 0) {
            let mask = (1u64 << shift) - 1;
            return Some((addr & !mask) | (linear & mask));
        }
        table = addr;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tee_leaves_are_hidden_from_guests_that_are_not_real_tees() {
        use kvm_bindings::kvm_cpuid_entry2;
        let entry = |function, v| kvm_cpuid_entry2 {
            function,
            eax: v,
            ebx: v,
            ecx: v,
            edx: v,
            ..Default::default()
        };
        let base = CpuId::from_entries(&[
            entry(1, 0x11),
            entry(LEAF_AMD_MEM_ENCRYPT, 0x1f),
            entry(LEAF_TDX, 0x21),
        ])
        .unwrap();
        let leaf = |c: &CpuId, f| {
            let e = c.as_slice().iter().find(|e| e.function == f).unwrap();
            (e.eax, e.ebx, e.ecx, e.edx)
        };
        let mut plain = base.clone();
        sanitize_cpuid(&mut plain, false, false);
        assert_eq!(leaf(&plain, LEAF_AMD_MEM_ENCRYPT), (0, 0, 0, 0));
        assert_eq!(leaf(&plain, LEAF_TDX), (0, 0, 0, 0));
        assert_eq!(leaf(&plain, 1), (0x11, 0x11, 0x11, 0x11));
        let mut snp = base.clone();
        sanitize_cpuid(&mut snp, true, false);
        assert_eq!(leaf(&snp, LEAF_AMD_MEM_ENCRYPT).0, 0x1f);
        assert_eq!(leaf(&snp, LEAF_TDX).0, 0);
        let mut tdx = base;
        sanitize_cpuid(&mut tdx, false, true);
        assert_eq!(leaf(&tdx, LEAF_AMD_MEM_ENCRYPT).0, 0);
        assert_eq!(leaf(&tdx, LEAF_TDX).0, 0x21);
    }

    #[test]
    fn translates_real_mode_and_long_mode() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut s = kvm_sregs::default();
        assert_eq!(translate(&mem, &s, 0xffff_fff0), Some(0xffff_fff0));
        // Long mode: PML4 at 0x1000 -> PDPT at 0x2000 -> PD at 0x3000 with a 2 MiB page
        // mapping linear 0x4020_0000 to physical 0x20_0000.
        s.cr0 = 1 << 31 | 1;
        s.efer = 1 << 10 | 1 << 8;
        s.cr3 = 0x1000;
        mem.write_obj(0x2003u64, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0x3003u64, GuestAddress(0x2000 + 8)).unwrap(); // PDPT[1]: 1 GiB..2 GiB
        mem.write_obj(0x20_0083u64, GuestAddress(0x3000 + 8))
            .unwrap(); // PD[1]: 2 MiB page
        assert_eq!(translate(&mem, &s, 0x4020_1234), Some(0x20_1234));
        assert_eq!(translate(&mem, &s, 0x4040_0000), None, "not present");
        s.efer = 0; // 32-bit paging is not walked
        assert_eq!(translate(&mem, &s, 0x4020_1234), None);
    }
}
