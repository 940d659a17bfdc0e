//! The software TDX module of `--tee emulated-tdx`: the VMM plays the Intel TDX module
//! for the guest's real TDX instructions, so the firmware runs the same TDCALL code on
//! this machine as on TDX hardware. **Insecure test equipment**: nothing here is
//! confidential; the evidence proves only what this host says.
//!
//! # How a TDCALL reaches it (the trap)
//!
//! - **CPL0 (the firmware)** executes the literal `tdcall` (66 0f 01 cc). This
//!   machine's KVM cannot emulate it and exits with `KVM_EXIT_INTERNAL_ERROR` suberror 1
//!   (measured, `/work/shared/PLATFORM.md`); [`TdxModule`]'s
//!   [`ExitHandler::internal_error`] checks the four bytes at CS:RIP, applies the leaf's
//!   semantics to the registers (KVM_GET_REGS / KVM_SET_REGS), advances RIP by 4 and the
//!   vCPU resumes.
//! - **The emulator trap** (CPL3 code, or a standard KVM where `tdcall` raises #UD):
//!   `out 0xE0, al` with every other register exactly as for `tdcall`; the VMM applies
//!   the same semantics and leaves RIP alone (KVM skips the `out`). Both paths call
//!   [`TdxModule::tdcall`]: one implementation of the module. The trap is reachable only
//!   by code allowed to do port I/O (CPL0, or IOPL 3 as the test guest sets), which
//!   mirrors TDCALL's CPL0 requirement; the literal instruction is emulated only when CS
//!   is at DPL 0.
//! - **Which one the firmware uses** is decided once per launch ([`crate::tee::trap`]:
//!   a probe VM finds whether this KVM exits on `tdcall`; `--tee-trap` overrides) and
//!   told to the TD through CPUID (0x21, 0) EAX = [`crate::tee::trap::TDX_INSN_TRAP_EAX`],
//!   a value a real TDX module fixes at 0 (guest-firmware `env` docs). With the port trap,
//!   a literal `tdcall` stops the TD with #UD ([`LITERAL_UD_TDCALL`]), as a standard KVM
//!   would.
//!
//! # Leaves (Intel TDX Module 1.5 ABI specification, GHCI 1.5)
//!
//! | RAX | leaf | emulation |
//! |---|---|---|
//! | 0 | TDG.VP.VMCALL | R10 = 0 (GHCI): `Instruction.IO` (30) on the VMM's port bus; `MapGPA` (0x10001) = [`CcMemory::convert`] (changed pages scrubbed) with `TDVMCALL_STATUS_RETRY` and R11 = next GPA after every [`MAP_GPA_CHUNK`] (the guest loops, as with KVM's chunking); `GetQuote` (0x10002), `SetupEventNotifyInterrupt` (0x10004), `GetTdVmCallInfo` (0x10000) through [`services::TdVmcalls`], the code the KVM backend runs for `KVM_EXIT_TDX`; other sub-functions: `TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED` |
//! | 1 | TDG.VP.INFO | RCX = GPAW (48), RDX = ATTRIBUTES, R8 = NUM_VCPUS \| MAX_VCPUS << 32, R9 = VCPU_INDEX, R10 = R11 = 0 |
//! | 2 | TDG.MR.RTMR.EXTEND | RCX = GPA of a 64-byte aligned 48-byte digest, RDX = index 0..=3 |
//! | 4 | TDG.MR.REPORT | RCX = GPA of the 1024-byte aligned TDREPORT_STRUCT, RDX = GPA of the 64-byte aligned REPORTDATA, R8 = subtype 0; the report comes from the emulated platform's module (`attestation::tdx::emulated`, MACed REPORTMACSTRUCT) |
//! | 6 | TDG.MEM.PAGE.ACCEPT | RCX = GPA \| level (0 = 4 KiB, 1 = 2 MiB): [`CcMemory::accept`] (the page becomes accepted and zero; private memory is backed at 4 KiB by default, so a 2 MiB accept answers `TDX_PAGE_SIZE_MISMATCH` as on Linux 6.16 and the firmware falls back to 4 KiB); a shared page stops the TD with a guest fault, as KVM's memory-fault exit would |
//! | other | — | `TDX_OPERAND_INVALID` for RAX (never a silent success) |
//!
//! Completion status values: `TDX_SUCCESS` 0, `TDX_OPERAND_INVALID`
//! 0xC0000100_00000000 | operand id (RAX 0, RCX 1, RDX 2, R8 8), `TDX_PAGE_ALREADY_ACCEPTED`
//! 0x00000B0A_00000000, `TDX_PAGE_SIZE_MISMATCH` 0xC0000B0B_00000000 (the module ABI's
//! completion-status table; the same values Linux's `arch/x86/kvm/vmx/tdx_errno.h` and
//! TDVF's `TdxHelper` use).
//!
//! # TD entry
//!
//! [`td_entry`] puts a vCPU in the state the TDX module gives a TD vCPU (ABI spec,
//! "Initial State of Guest TD vCPU"; TDVF `ResetVector/Ia32/IntelTdx.asm` documents what
//! it relies on): RIP 0xFFFFFFF0 in 32-bit protected mode, flat 4 GiB CS/DS/ES/FS/GS/SS,
//! CR0 = PE | NE, CR4 = MCE, EFER = LME, RFLAGS = 2, RAX = 0, RBX = GPAW, RCX = R8 = the
//! TDH.VP.INIT value (KVM passes the TD HOB address), RDX = RSI = the vCPU index.
//!
//! # The shared bit and private memory
//!
//! GPAW is 48, so GPA bit 47 is the shared bit. The TD's memory is a
//! [`CcMemory`] whose alias bit is the shared bit (the backend,
//! [`super::emulated_tdx`]): a TD reads shared memory through the alias and private
//! memory at the plain GPA, and each view is open only for pages in that role. The
//! module's own accesses to private operands (RTMR digests, REPORTDATA, TDREPORT, the
//! instruction bytes at CS:RIP and the page tables that translate RIP) use
//! [`CcMemory::trusted_read`] / [`CcMemory::trusted_write`], as the real module
//! accesses TD private memory; shared buffers (GetQuote) go through the VMM's view.
//! Exits the contract produces: an MMIO exit at RAM ([`CcMemory::serve_mmio`]) and
//! `KVM_EXIT_MEMORY_FAULT` stop the TD with the fault's message ("guest accessed
//! unaccepted private page 0x…: TDX #VE …"); the first `KVM_RUN` EFAULT without a GPA
//! switches the layout to hole mode ([`CcMemory::expose_faults`]) and runs again; a
//! `tdcall` emulation failure at a page the TD may not execute is reported as that
//! page's fault.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use attestation::tdx::report::TdReport;
use kvm_bindings::{kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::emulated::EmulatedTee;
use super::services::{self, Notify, QgsError, QuoteJob, TdVmcalls};
use crate::devices::Buses;
use crate::vstate::cc_memory::{
    AcceptError, CcMemory, CcMemoryError, FaultKind, MmioAccess, PageSize, PageState,
};
use crate::vstate::vcpu::{ExitError, ExitHandler, Handled};

/// TDCALL's encoding.
pub const TDCALL: [u8; 4] = [0x66, 0x0f, 0x01, 0xcc];
/// Why a literal TDCALL stops the TD when CPUID (0x21, 0) selected the emulator trap.
pub const LITERAL_UD_TDCALL: &str = "#UD: the guest executed the literal TDCALL, but the emulated TDX module selected the emulator trap (CPUID 0x21 EAX), as a standard KVM needs";
/// The emulator-trap port of TDCALL.
pub const TRAP_TDCALL: u16 = 0xE0;
/// Guest physical address width the emulated TD reports.
pub const GPAW: u32 = 48;
/// The shared bit (GPAW - 1).
pub const SHARED_BIT: u64 = 1 << (GPAW - 1);
/// MapGPA converts at most this much per call before answering RETRY.
pub const MAP_GPA_CHUNK: u64 = 64 << 20;
/// The TD HOB address a TD vCPU gets in RCX (TDVF's TD_HOB section).
pub const TD_HOB: u64 = 0x8000;

/// TDCALL leaves.
pub mod leaf {
    #![allow(missing_docs)]
    pub const VP_VMCALL: u64 = 0;
    pub const VP_INFO: u64 = 1;
    pub const MR_RTMR_EXTEND: u64 = 2;
    pub const MR_REPORT: u64 = 4;
    pub const MEM_PAGE_ACCEPT: u64 = 6;
}

/// TDX module completion status codes (RAX after TDCALL).
pub mod status {
    #![allow(missing_docs)]
    pub const SUCCESS: u64 = 0;
    pub const OPERAND_INVALID: u64 = 0xC000_0100_0000_0000;
    pub const PAGE_ALREADY_ACCEPTED: u64 = 0x0000_0B0A_0000_0000;
    pub const PAGE_SIZE_MISMATCH: u64 = 0xC000_0B0B_0000_0000;
    /// Operand ids ORed into OPERAND_INVALID.
    pub const RAX: u64 = 0;
    pub const RCX: u64 = 1;
    pub const RDX: u64 = 2;
    pub const R8: u64 = 8;
}

/// TDG.VP.VMCALL sub-functions (GHCI).
pub mod vmcall {
    #![allow(missing_docs)]
    pub const INSTRUCTION_IO: u64 = 30;
    pub const MAP_GPA: u64 = 0x10001;
    pub use super::services::{
        TDVMCALL_ALIGN_ERROR as ALIGN_ERROR, TDVMCALL_GET_QUOTE as GET_QUOTE,
        TDVMCALL_GET_TD_VM_CALL_INFO as GET_TD_VM_CALL_INFO,
        TDVMCALL_INVALID_OPERAND as INVALID_OPERAND, TDVMCALL_RETRY as RETRY,
        TDVMCALL_SETUP_EVENT_NOTIFY as SETUP_EVENT_NOTIFY,
        TDVMCALL_SUBFUNC_UNSUPPORTED as SUBFUNC_UNSUPPORTED, TDVMCALL_SUCCESS as SUCCESS,
    };
}

const PAGE: u64 = 0x1000;
const HUGE: u64 = 0x20_0000;

/// The general registers TDCALL reads and writes.
pub type Regs = kvm_regs;

/// The software TDX module: an [`ExitHandler`] for an emulated TD.
pub struct TdxModule {
    mem: GuestMemoryMmap,
    cc: Arc<CcMemory>,
    tee: Arc<Mutex<EmulatedTee>>,
    exposed: AtomicBool,
    vcpus: u32,
    attributes: u64,
    vmcalls: TdVmcalls,
    bus: OnceLock<Arc<Buses>>,
    /// A literal `tdcall` is #UD (the TD was told to use the emulator trap).
    literal_ud: bool,
}

impl std::fmt::Debug for TdxModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TdxModule({} vCPUs)", self.vcpus)
    }
}

fn word(b: &[u8; 256], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl TdxModule {
    /// The module of the TD in `tee` (an [`EmulatedTee::Tdx`]) with `vcpus` vCPUs over
    /// the private-memory contract `cc` (its page states are the Secure EPT: the pages
    /// the launch added are accepted); `quotes` feeds the quote thread
    /// ([`quote_worker`]).
    pub fn new(
        cc: Arc<CcMemory>,
        tee: Arc<Mutex<EmulatedTee>>,
        vcpus: u32,
        quotes: Option<(mpsc::SyncSender<QuoteJob>, Arc<AtomicU64>)>,
        notify: Notify,
    ) -> Self {
        let attributes = match &*tee.lock().unwrap_or_else(|e| e.into_inner()) {
            EmulatedTee::Tdx { td, .. } => td.config().attributes,
            EmulatedTee::Snp { .. } => 0,
        };
        // The VMM's view: shared buffers (GetQuote) are visible there, private ones not.
        let mem = cc.vmm_memory().clone();
        let vmcalls = TdVmcalls::new(
            mem.clone(),
            quotes,
            notify,
            0,
            services::TDVMCALLINFO_SETUP_EVENT_NOTIFY,
        );
        Self {
            mem,
            cc,
            tee,
            exposed: AtomicBool::new(false),
            vcpus,
            attributes,
            vmcalls,
            bus: OnceLock::new(),
            literal_ud: false,
        }
    }

    /// The TDCALL trap the TD was told to use (CPUID (0x21, 0), [`crate::tee::trap`]).
    /// With the port trap a literal `tdcall` stops the TD with #UD, as on a standard
    /// KVM, so a firmware that ignores the signal fails on this machine too.
    pub fn with_insn_trap(mut self, trap: crate::tee::trap::InsnTrap) -> Self {
        self.literal_ud = trap == crate::tee::trap::InsnTrap::Port;
        self
    }

    /// Gives the module the VMM's port bus (TDVMCALL<Instruction.IO>).
    pub fn attach_buses(&self, bus: Arc<Buses>) {
        let _ = self.bus.set(bus);
    }

    /// Whether the private page at `gpa` is accepted (the Secure EPT maps it and the TD
    /// accepted it, or the launch added it).
    pub fn is_accepted(&self, gpa: u64) -> bool {
        gpa & SHARED_BIT == 0 && matches!(self.cc.state(gpa), Some(PageState::Validated(_)))
    }

    /// Executes one TDCALL of vCPU `vcpu` on `r` (every output in place). An `Err` is a
    /// VM event (power-off, reset, panic) a TDVMCALL<Instruction.IO> raised: the vCPU
    /// stops.
    pub fn tdcall(&self, vcpu: u32, r: &mut Regs) -> Result<(), ExitError> {
        let version = (r.rax >> 16) & 0xFF;
        let leaf = r.rax & 0xFFFF;
        if r.rax >> 24 != 0 || (version != 0 && leaf != leaf::VP_INFO) {
            r.rax = status::OPERAND_INVALID | status::RAX;
            return Ok(());
        }
        r.rax = match leaf {
            leaf::VP_VMCALL => return self.vp_vmcall(vcpu, r),
            leaf::VP_INFO => {
                r.rcx = u64::from(GPAW);
                r.rdx = self.attributes;
                r.r8 = u64::from(self.vcpus) | (u64::from(self.vcpus) << 32);
                r.r9 = u64::from(vcpu);
                r.r10 = 0;
                r.r11 = 0;
                status::SUCCESS
            }
            leaf::MR_RTMR_EXTEND => self.rtmr_extend(r.rcx, r.rdx),
            leaf::MR_REPORT => self.report(r.rcx, r.rdx, r.r8),
            leaf::MEM_PAGE_ACCEPT => {
                let (gpa, level) = (r.rcx & !0xFFF, r.rcx & 7);
                let size = if level == 1 { HUGE } else { PAGE };
                if r.rcx & 0xFF8 != 0
                    || level > 1
                    || gpa & SHARED_BIT != 0
                    || gpa % size != 0
                    || !self.is_ram(gpa, size)
                {
                    status::OPERAND_INVALID | status::RCX
                } else {
                    let page = if level == 1 {
                        PageSize::Size2M
                    } else {
                        PageSize::Size4K
                    };
                    match self.cc.accept(gpa, page) {
                        Ok(()) => status::SUCCESS,
                        Err(e) => match e.tdx_status() {
                            Some(s) => s,
                            // A shared page (KVM: a private access to a shared GPA, a
                            // memory fault for the VMM) or a host failure: the TD stops.
                            None if matches!(e, AcceptError::NotPrivate { .. }) => {
                                return Err(ExitError::GuestFault(e.to_string()))
                            }
                            None => return Err(ExitError::Emulation(chain(&e))),
                        },
                    }
                }
            }
            _ => status::OPERAND_INVALID | status::RAX,
        };
        Ok(())
    }

    fn is_ram(&self, gpa: u64, size: u64) -> bool {
        self.mem.address_in_range(GuestAddress(gpa))
            && self.mem.address_in_range(GuestAddress(gpa + size - 1))
    }

    /// A private GPA the TD may name as a memory operand: no shared bit, RAM, accepted.
    fn private_operand(&self, gpa: u64, size: u64, align: u64) -> bool {
        gpa % align == 0
            && gpa & SHARED_BIT == 0
            && self.is_ram(gpa, size)
            && self.is_accepted(gpa)
            && self.is_accepted(gpa + size - 1)
    }

    fn rtmr_extend(&self, gpa: u64, index: u64) -> u64 {
        if !self.private_operand(gpa, 48, 64) {
            return status::OPERAND_INVALID | status::RCX;
        }
        let mut digest = [0u8; 48];
        if self.cc.trusted_read(gpa, &mut digest).is_err() {
            return status::OPERAND_INVALID | status::RCX;
        }
        match &mut *self.tee.lock().unwrap_or_else(|e| e.into_inner()) {
            EmulatedTee::Tdx { td, .. } if index < 4 => {
                match td.extend_rtmr(index as usize, &digest) {
                    Ok(()) => status::SUCCESS,
                    Err(_) => status::OPERAND_INVALID | status::RDX,
                }
            }
            _ => status::OPERAND_INVALID | status::RDX,
        }
    }

    fn report(&self, out: u64, data: u64, subtype: u64) -> u64 {
        if subtype != 0 {
            return status::OPERAND_INVALID | status::R8;
        }
        if !self.private_operand(out, 1024, 1024) {
            return status::OPERAND_INVALID | status::RCX;
        }
        if !self.private_operand(data, 64, 64) {
            return status::OPERAND_INVALID | status::RDX;
        }
        let mut report_data = [0u8; 64];
        if self.cc.trusted_read(data, &mut report_data).is_err() {
            return status::OPERAND_INVALID | status::RDX;
        }
        let report = match &*self.tee.lock().unwrap_or_else(|e| e.into_inner()) {
            EmulatedTee::Tdx { platform, td, .. } => platform.module().report(td, &report_data),
            EmulatedTee::Snp { .. } => return status::OPERAND_INVALID | status::RAX,
        };
        match report {
            Ok(r) if self.cc.trusted_write(out, &r.to_bytes()).is_ok() => status::SUCCESS,
            _ => status::OPERAND_INVALID | status::RCX,
        }
    }

    fn vp_vmcall(&self, vcpu: u32, r: &mut Regs) -> Result<(), ExitError> {
        // TDG.VP.VMCALL itself succeeds; the sub-function's status is in R10.
        r.rax = status::SUCCESS;
        if r.r10 != 0 {
            // Vendor-specific TDVMCALLs: none.
            r.r10 = vmcall::SUBFUNC_UNSUPPORTED;
            return Ok(());
        }
        let (sub, r12, r13, r14, r15) = (r.r11, r.r12, r.r13, r.r14, r.r15);
        r.r10 = match sub {
            vmcall::INSTRUCTION_IO => {
                let size = r12;
                if !matches!(size, 1 | 2 | 4) || r13 > 1 || r14 > 0xFFFF {
                    vmcall::INVALID_OPERAND
                } else {
                    let Some(bus) = self.bus.get() else {
                        return Err(ExitError::Unexpected(
                            "TDVMCALL<Instruction.IO> before the port bus exists",
                        ));
                    };
                    let port = r14 as u16;
                    let n = size as usize;
                    if r13 == 1 {
                        let bytes = r15.to_le_bytes();
                        // A device event (pvpanic, S5, reset) stops the vCPU as if
                        // the TD had written the port itself.
                        if let Some(event) = bus.pio.write(port, &bytes[..n]) {
                            return Err(ExitError::GuestEvent(event));
                        }
                    } else {
                        let mut bytes = [0u8; 8];
                        bus.pio.read(port, &mut bytes[..n]);
                        r.r11 = u64::from_le_bytes(bytes);
                    }
                    vmcall::SUCCESS
                }
            }
            vmcall::MAP_GPA => self.map_gpa(r12, r13, &mut r.r11)?,
            vmcall::GET_QUOTE | vmcall::SETUP_EVENT_NOTIFY | vmcall::GET_TD_VM_CALL_INFO => {
                // The KVM_EXIT_TDX layout (services.rs); KVM strips the shared bit of
                // GetQuote's GPA before it exits to user space, and so do we.
                let mut exit = [0u8; 256];
                exit[8..16].copy_from_slice(&sub.to_le_bytes());
                let arg = if sub == vmcall::GET_QUOTE {
                    r12 & !SHARED_BIT
                } else {
                    r12
                };
                exit[24..32].copy_from_slice(&arg.to_le_bytes());
                exit[32..40].copy_from_slice(&r13.to_le_bytes());
                self.vmcalls.handle(vcpu, &mut exit);
                if sub == vmcall::GET_TD_VM_CALL_INFO {
                    r.r11 = word(&exit, 32);
                    r.r12 = word(&exit, 40);
                    r.r13 = word(&exit, 48);
                    r.r14 = word(&exit, 56);
                }
                word(&exit, 16)
            }
            _ => vmcall::SUBFUNC_UNSUPPORTED,
        };
        Ok(())
    }

    /// MapGPA `[gpa, gpa + size)`: shared when `gpa` has the shared bit, else private.
    /// Converts at most [`MAP_GPA_CHUNK`] and answers RETRY with R11 = the next GPA (shared
    /// bit kept) while some remains.
    ///
    /// The conversion is [`CcMemory::convert`]: every page that changes is scrubbed (a
    /// page made private must be accepted again; a page made shared never shows its
    /// private bytes). A range that is not guest RAM is an invalid operand; a host
    /// failure stops the TD.
    fn map_gpa(&self, gpa: u64, size: u64, r11: &mut u64) -> Result<u64, ExitError> {
        let shared = gpa & SHARED_BIT != 0;
        let start = gpa & !SHARED_BIT;
        if start % PAGE != 0 || size % PAGE != 0 {
            return Ok(vmcall::ALIGN_ERROR);
        }
        let Some(end) = start.checked_add(size) else {
            return Ok(vmcall::INVALID_OPERAND);
        };
        if size == 0 || end > SHARED_BIT {
            return Ok(vmcall::INVALID_OPERAND);
        }
        let chunk = size.min(MAP_GPA_CHUNK);
        if !self.is_ram(start, chunk) {
            return Ok(vmcall::INVALID_OPERAND);
        }
        match self.cc.convert(start, chunk, !shared) {
            Ok(_) => {}
            Err(CcMemoryError::Outside(_) | CcMemoryError::Unaligned { .. }) => {
                return Ok(vmcall::INVALID_OPERAND)
            }
            Err(e) => return Err(ExitError::Emulation(chain(&e))),
        }
        if chunk < size {
            *r11 = (start + chunk) | (gpa & SHARED_BIT);
            return Ok(vmcall::RETRY);
        }
        Ok(vmcall::SUCCESS)
    }

    /// Emulates a `tdcall` at CS:RIP of `fd` (the internal-error path): false if the
    /// instruction there is not TDCALL.
    fn emulate_at_rip(&self, vcpu: u32, fd: &VcpuFd) -> Result<bool, ExitError> {
        let mut regs = fd
            .get_regs()
            .map_err(|_| ExitError::Unexpected("KVM_GET_REGS failed in the TDX module"))?;
        let sregs = fd
            .get_sregs()
            .map_err(|_| ExitError::Unexpected("KVM_GET_SREGS failed in the TDX module"))?;
        // TDCALL is a CPL0 instruction; CPL3 code uses the emulator trap.
        if sregs.cs.dpl != 0 {
            return Ok(false);
        }
        // The firmware's code and page tables are private: read them as the TDX module
        // does, not through the VMM's view (which shows zeros there after launch).
        let Some(gpa) = self.translate(&sregs, sregs.cs.base.wrapping_add(regs.rip)) else {
            return Ok(false);
        };
        let mut insn = [0u8; 4];
        if self.cc.trusted_read(gpa, &mut insn).is_err() || insn != TDCALL {
            // Not a TDCALL: an instruction fetch from a page the TD may not execute
            // (unaccepted or shared) is an emulation failure here; report it as the
            // fault the hardware raises.
            let fault = self.cc.classify(gpa);
            if !matches!(fault.kind, FaultKind::Accessible | FaultKind::NotRam) {
                return Err(ExitError::GuestFault(format!("instruction fetch: {fault}")));
            }
            return Ok(false);
        }
        if self.literal_ud {
            return Err(ExitError::GuestFault(LITERAL_UD_TDCALL.into()));
        }
        self.tdcall(vcpu, &mut regs)?;
        regs.rip = regs.rip.wrapping_add(TDCALL.len() as u64);
        fd.set_regs(&regs)
            .map_err(|_| ExitError::Unexpected("KVM_SET_REGS failed in the TDX module"))?;
        Ok(true)
    }

    /// Translates a guest linear address through the guest's page tables (no paging, or
    /// 4-level long-mode paging), reading them with [`CcMemory::trusted_read`].
    fn translate(&self, sregs: &kvm_bindings::kvm_sregs, linear: u64) -> Option<u64> {
        const PG: u64 = 1 << 31;
        const LMA: u64 = 1 << 10;
        if sregs.cr0 & PG == 0 {
            return Some(linear & 0xffff_ffff);
        }
        if sregs.efer & LMA == 0 {
            return None;
        }
        // Physical-address bits 51:12, without the shared bit.
        let addr_mask = 0x000f_ffff_ffff_f000 & !SHARED_BIT;
        let mut table = sregs.cr3 & addr_mask;
        for (level, shift) in [(4, 39), (3, 30), (2, 21), (1, 12)] {
            let idx = (linear >> shift) & 0x1ff;
            let mut e = [0u8; 8];
            self.cc.trusted_read(table + idx * 8, &mut e).ok()?;
            let entry = u64::from_le_bytes(e);
            if entry & 1 == 0 {
                return None;
            }
            let addr = entry & addr_mask;
            if level == 1 || ((level == 2 || level == 3) && entry & (1 << 7) != 0) {
                let mask = (1u64 << shift) - 1;
                return Some((addr & !mask) | (linear & mask));
            }
            table = addr;
        }
        None
    }

    /// The emulator trap (`out 0xE0, al`): the TDCALL semantics on the registers, RIP
    /// unchanged (KVM completes the `out`).
    pub fn trap(&self, vcpu: u32, fd: &VcpuFd) -> Result<Handled, ExitError> {
        let mut regs = fd
            .get_regs()
            .map_err(|_| ExitError::Unexpected("KVM_GET_REGS failed in the TDX module"))?;
        self.tdcall(vcpu, &mut regs)?;
        fd.set_regs(&regs)
            .map_err(|_| ExitError::Unexpected("KVM_SET_REGS failed in the TDX module"))?;
        Ok(Handled::Yes)
    }
}

impl ExitHandler for TdxModule {
    fn memory_fault(&self, gpa: u64, _size: u64, _private: bool) -> Result<(), ExitError> {
        // KVM_EXIT_MEMORY_FAULT (a standard KVM since 6.8): the contract refused it.
        Err(ExitError::GuestFault(self.cc.classify(gpa).to_string()))
    }

    fn mmio(&self, gpa: u64, data: &mut [u8], write: bool) -> Result<Handled, ExitError> {
        match self.cc.serve_mmio(gpa, data, write) {
            MmioAccess::Device => Ok(Handled::No),
            MmioAccess::Served => Ok(Handled::Yes),
            MmioAccess::Fault(f) => Err(ExitError::GuestFault(f.to_string())),
            MmioAccess::Failed(e) => Err(ExitError::Emulation(chain(&e))),
        }
    }

    fn run_efault(&self) -> Result<Handled, ExitError> {
        // This host gives no GPA for a CPL3 access to a protected page: switch to hole
        // mode once, so the access exits as MMIO at its GPA. A second EFAULT is not
        // about page states: the vCPU stops.
        if self.exposed.swap(true, Ordering::AcqRel) {
            return Ok(Handled::No);
        }
        self.cc
            .expose_faults()
            .map_err(|e| ExitError::Emulation(chain(&e)))?;
        Ok(Handled::Yes)
    }

    fn map_gpa_range(&self, _args: &[u64; 6]) -> u64 {
        // KVM_HC_MAP_GPA_RANGE is not forwarded on an emulated TD (MapGPA is a TDVMCALL).
        u64::from(libc::ENOSYS as u32).wrapping_neg()
    }

    fn tdx_vmcall(&self, _vcpu: u32, _exit: &mut [u8; 256]) -> Result<(), ExitError> {
        Err(ExitError::Unexpected("KVM_EXIT_TDX on an emulated TD"))
    }

    fn snp_req_certs(&self, _exit: &mut [u8; 256]) -> Result<(), ExitError> {
        Err(ExitError::Unexpected(
            "KVM_EXIT_SNP_REQ_CERTS on an emulated TD",
        ))
    }

    fn io_trap(&self, vcpu: u32, fd: &VcpuFd, port: u16) -> Result<Handled, ExitError> {
        // 0xE0 is TDCALL; the other trap ports are SNP's instructions.
        if port != TRAP_TDCALL {
            return Ok(Handled::No);
        }
        self.trap(vcpu, fd)
    }

    fn internal_error(
        &self,
        vcpu: u32,
        fd: &VcpuFd,
        suberror: u32,
        _data: &[u64],
    ) -> Result<Handled, ExitError> {
        // KVM_INTERNAL_ERROR_EMULATION: an instruction KVM cannot emulate. The bytes at
        // CS:RIP decide (KVM's `data` words are not needed).
        if suberror != 1 {
            return Ok(Handled::No);
        }
        Ok(if self.emulate_at_rip(vcpu, fd)? {
            Handled::Yes
        } else {
            Handled::No
        })
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

/// Serves GetQuote jobs until the channel closes: the quoting enclave of the emulated
/// platform in `tee` quotes the TDREPORT (version 4), and [`services::complete_quote`]
/// writes the result as it does for QGS's answer; then the guest's notification vector
/// (SetupEventNotifyInterrupt, in `notify`) is raised through `irq`, as the KVM
/// backend's quote thread does. Failures are quote errors (a TDREPORT this platform's
/// module did not MAC is refused).
pub fn quote_worker(
    jobs: mpsc::Receiver<QuoteJob>,
    mem: GuestMemoryMmap,
    tee: Arc<Mutex<EmulatedTee>>,
    in_flight: Arc<AtomicU64>,
    notify: Notify,
    irq: impl services::Interrupt,
) {
    for job in jobs {
        let result = TdReport::from_bytes(&job.report)
            .map_err(|e| QgsError::Response(format!("not a TDREPORT: {e}")))
            .and_then(
                |report| match &*tee.lock().unwrap_or_else(|e| e.into_inner()) {
                    EmulatedTee::Tdx { platform, .. } => platform
                        .quote(&report, 4)
                        .and_then(|q| q.to_bytes().map_err(Into::into))
                        .map_err(|e| QgsError::Response(format!("the emulated QE refused: {e}"))),
                    EmulatedTee::Snp { .. } => Err(QgsError::Response("not a TDX platform".into())),
                },
            );
        services::complete_quote(&mem, &job, result);
        in_flight.fetch_sub(1, Ordering::AcqRel);
        let target = *notify.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((apic, vector)) = target {
            if let Err(e) = irq.raise(apic, vector) {
                tracing::warn!(error = %e, "cannot notify the TD of a finished quote");
            }
        }
    }
}

/// Raises a vector on a vCPU with KVM_SIGNAL_MSI (fixed delivery, physical destination).
#[derive(Debug, Clone)]
pub struct MsiInterrupt(pub Arc<crate::vstate::vm::Vm>);

impl services::Interrupt for MsiInterrupt {
    fn raise(&self, apic: u32, vector: u8) -> Result<(), kvm_ioctls::Error> {
        let msi = kvm_bindings::kvm_msi {
            address_lo: 0xFEE0_0000 | (apic << 12),
            data: u32::from(vector),
            ..Default::default()
        };
        self.0.fd().signal_msi(msi).map(|_| ())
    }
}

fn flat(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts vCPU `index` in a TD vCPU's initial state (module docs) and makes it runnable
/// (a TD has no INIT/SIPI: every vCPU starts at the reset vector).
///
/// With the TDCALL port trap (a standard KVM) EFER.LME starts clear and the firmware
/// sets it after CR4.PAE (it does so only when CPUID (0x21, 0) EAX carries
/// [`crate::tee::trap::TDX_INSN_TRAP_EAX`]): QEMU's TCG (7.2), which runs the nested-KVM
/// tier, mishandles a #VMEXIT from a nested guest with EFER.LME set and CR4.PAE clear
/// (its `cpu_x86_update_cr0` refuses to restore the host's CR0.PG; the L1 CPU then
/// runs without paging and hangs: measured, soft lockup of the outer VM).
pub fn td_entry(
    fd: &VcpuFd,
    index: u32,
    hob: u64,
    insn_trap: crate::tee::trap::InsnTrap,
) -> Result<(), kvm_ioctls::Error> {
    let mut sregs = fd.get_sregs()?;
    sregs.cs = flat(0x08, 0xB);
    for s in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.ss,
        &mut sregs.fs,
        &mut sregs.gs,
    ] {
        *s = flat(0x10, 0x3);
    }
    sregs.cr0 = 0x21; // PE | NE
    sregs.cr4 = 0x40; // MCE
    sregs.efer = match insn_trap {
        crate::tee::trap::InsnTrap::Instruction => 0x100, // LME
        crate::tee::trap::InsnTrap::Port => 0,
    };
    fd.set_sregs(&sregs)?;
    let regs = kvm_regs {
        rip: 0xFFFF_FFF0,
        rflags: 2,
        rbx: u64::from(GPAW),
        rcx: hob,
        r8: hob,
        rdx: u64::from(index),
        rsi: u64::from(index),
        ..Default::default()
    };
    fd.set_regs(&regs)?;
    if index != 0 {
        fd.set_mp_state(kvm_bindings::kvm_mp_state {
            mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    /// A module over 256 MiB of RAM for an emulated TD of `fw` with 2 vCPUs, its
    /// platform in a fresh directory, a quote thread, and the launch's accepted pages.
    fn module() -> (TdxModule, GuestMemoryMmap, tempfile::TempDir) {
        let (m, mem, dir, _) = module_with_irq();
        (m, mem, dir)
    }

    /// The private-memory contract of a 256 MiB TD of `fw`, with the launch's pages added
    /// (private, accepted) and the launch finished.
    pub(crate) fn launched_cc(
        fw: &[u8],
        plan: &measured_boot::tdx::TdxLaunchPlan,
    ) -> Arc<CcMemory> {
        use crate::vstate::cc_memory::{CcConfig, CcTee};
        let cc = CcMemory::new(
            &crate::vstate::memory::layout(256 << 20, fw.len()).unwrap(),
            CcConfig {
                tee: CcTee::Tdx,
                alias_bit: Some(GPAW - 1),
            },
        )
        .unwrap();
        for r in plan.regions() {
            cc.launch_private_with(r.gpa, r.data).unwrap();
        }
        cc.finish_launch().unwrap();
        Arc::new(cc)
    }

    fn module_with_irq() -> (TdxModule, GuestMemoryMmap, tempfile::TempDir, Recorder) {
        let dir = tempfile::tempdir().unwrap();
        attestation::tdx::emulated::EmulatedTdxPlatform::create(dir.path()).unwrap();
        let fw = measured_boot::testing::emulated_guest_image(&[0xf4]);
        let (tee, _, _, plan) =
            EmulatedTee::launch_tdx(dir.path(), fw.clone(), Default::default(), None).unwrap();
        let cc = launched_cc(&fw, &plan);
        let mem = cc.vmm_memory().clone();
        let tee = Arc::new(Mutex::new(tee));
        let (tx, rx) = mpsc::sync_channel(4);
        let n = Arc::new(AtomicU64::new(0));
        let notify = Notify::default();
        let (m2, t2, n2, no2) = (mem.clone(), tee.clone(), n.clone(), notify.clone());
        let rec = Recorder::default();
        let r2 = rec.clone();
        std::thread::spawn(move || quote_worker(rx, m2, t2, n2, no2, r2));
        let m = TdxModule::new(cc, tee, 2, Some((tx, n)), notify);
        (m, mem, dir, rec)
    }

    /// Records the notifications the quote thread raises.
    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<(u32, u8)>>>);

    impl services::Interrupt for Recorder {
        fn raise(&self, apic: u32, vector: u8) -> Result<(), kvm_ioctls::Error> {
            self.0.lock().unwrap().push((apic, vector));
            Ok(())
        }
    }

    fn call(m: &TdxModule, vcpu: u32, r: Regs) -> Regs {
        let mut r = r;
        m.tdcall(vcpu, &mut r).unwrap();
        r
    }

    #[test]
    fn vp_info_and_unknown_leaves() {
        let (m, _, _d) = module();
        let r = call(
            &m,
            1,
            Regs {
                rax: leaf::VP_INFO,
                r9: 0xdead,
                ..Default::default()
            },
        );
        assert_eq!(r.rax, status::SUCCESS);
        assert_eq!(r.rcx, 48, "GPAW");
        assert_eq!(r.r8, 2 | (2 << 32), "NUM_VCPUS | MAX_VCPUS");
        assert_eq!(r.r9, 1, "VCPU_INDEX in R9");
        assert_eq!((r.r10, r.r11), (0, 0));
        // Leaves the module does not implement never succeed silently.
        for rax in [3, 5, 7, 8, 0x1_0000_0002] {
            let r = call(
                &m,
                0,
                Regs {
                    rax,
                    ..Default::default()
                },
            );
            assert_eq!(
                r.rax,
                status::OPERAND_INVALID | status::RAX,
                "leaf {rax:#x}"
            );
        }
        // Nor TDVMCALL sub-functions it does not know, or vendor-specific ones.
        let r = call(
            &m,
            0,
            Regs {
                rax: 0,
                rcx: 0xFC00,
                r11: 12,
                ..Default::default()
            },
        );
        assert_eq!((r.rax, r.r10), (0, vmcall::SUBFUNC_UNSUPPORTED));
        let r = call(
            &m,
            0,
            Regs {
                rax: 0,
                rcx: 0xFC00,
                r10: 1,
                ..Default::default()
            },
        );
        assert_eq!((r.rax, r.r10), (0, vmcall::SUBFUNC_UNSUPPORTED));
    }

    #[test]
    fn accept_checks_its_operand_and_tracks_pages() {
        let (m, _, _d) = module();
        let acc = |rcx| {
            call(
                &m,
                0,
                Regs {
                    rax: leaf::MEM_PAGE_ACCEPT,
                    rcx,
                    ..Default::default()
                },
            )
            .rax
        };
        // Private memory is backed by 4 KiB pages (Linux 6.16): a 2 MiB accept is a size
        // mismatch, and the TD falls back to 4 KiB.
        assert_eq!(acc(0x20_0000 | 1), status::PAGE_SIZE_MISMATCH);
        assert!(!m.is_accepted(0x20_0000));
        assert_eq!(acc(0x20_0000), status::SUCCESS);
        assert_eq!(acc(0x20_0000), status::PAGE_ALREADY_ACCEPTED);
        assert_eq!(acc(0x40_1000), status::SUCCESS);
        // With huge-page private memory, 2 MiB accepts work, except over 4 KiB ones.
        m.cc.set_largest_private_page(PageSize::Size2M);
        assert_eq!(acc(0x40_0000 | 1), status::PAGE_SIZE_MISMATCH);
        assert_eq!(acc(0x60_0000 | 1), status::SUCCESS);
        assert_eq!(acc(0x60_0000 | 1), status::PAGE_ALREADY_ACCEPTED);
        // The shared bit is not part of an ACCEPT operand.
        assert_eq!(
            acc(0xA0_0000 | SHARED_BIT),
            status::OPERAND_INVALID | status::RCX
        );
        // Misaligned, reserved bits, outside RAM, bad level.
        assert_eq!(acc(0x60_1000 | 1), status::OPERAND_INVALID | status::RCX);
        assert_eq!(acc(0x60_0000 | 0x10), status::OPERAND_INVALID | status::RCX);
        assert_eq!(acc(0x8000_0000), status::OPERAND_INVALID | status::RCX);
        assert_eq!(acc(0x60_0000 | 3), status::OPERAND_INVALID | status::RCX);
        assert!(m.is_accepted(0x20_0000) && m.is_accepted(0x60_0000));
        assert!(!m.is_accepted(0x80_0000 - 0x1000 + 0x20_0000));
    }

    #[test]
    fn map_gpa_answers_retry_with_the_next_gpa_until_done() {
        let (m, _, _d) = module();
        let (start, size) = (0x100_0000u64, 3 * MAP_GPA_CHUNK / 2);
        let mut at = start | SHARED_BIT;
        let mut calls = 0;
        loop {
            calls += 1;
            let end = (start + size) | SHARED_BIT;
            let r = call(
                &m,
                0,
                Regs {
                    rax: 0,
                    rcx: 0xFC00,
                    r11: vmcall::MAP_GPA,
                    r12: at,
                    r13: end - at,
                    ..Default::default()
                },
            );
            assert_eq!(r.rax, 0);
            match r.r10 {
                vmcall::SUCCESS => break,
                vmcall::RETRY => {
                    assert!(r.r11 > at && r.r11 < end, "R11 continues inside the range");
                    assert_ne!(r.r11 & SHARED_BIT, 0, "the shared bit is kept");
                    at = r.r11;
                }
                other => panic!("MapGPA status {other:#x}"),
            }
        }
        assert_eq!(calls, 2);
        let bad = |r12, r13| {
            call(
                &m,
                0,
                Regs {
                    rax: 0,
                    rcx: 0xFC00,
                    r11: vmcall::MAP_GPA,
                    r12,
                    r13,
                    ..Default::default()
                },
            )
            .r10
        };
        assert_eq!(bad(0x1001, 0x1000), vmcall::ALIGN_ERROR);
        assert_eq!(bad(0x1000, 0), vmcall::INVALID_OPERAND);
        assert_eq!(bad(!0xFFF, 0x2000), vmcall::INVALID_OPERAND);
    }

    #[test]
    fn rtmr_extend_report_and_get_quote_carry_the_guest_s_values() {
        let (m, mem, _d, irq) = module_with_irq();
        // SetupEventNotifyInterrupt: vector 0x40 on vCPU 1; vectors below 32 refused.
        let notify = |vector| {
            call(
                &m,
                1,
                Regs {
                    rax: 0,
                    rcx: 0xFC00,
                    r11: vmcall::SETUP_EVENT_NOTIFY,
                    r12: vector,
                    ..Default::default()
                },
            )
            .r10
        };
        assert_eq!(notify(0x10), vmcall::INVALID_OPERAND);
        assert_eq!(notify(0x40), vmcall::SUCCESS);
        // Private, accepted operands: accept the page at 2 MiB; the TD writes them.
        let r = call(
            &m,
            0,
            Regs {
                rax: leaf::MEM_PAGE_ACCEPT,
                rcx: 0x20_0000,
                ..Default::default()
            },
        );
        assert_eq!(r.rax, status::SUCCESS);
        m.cc.trusted_write(0x20_0040, &[0xAB; 48]).unwrap();
        // A VMM write into the private page does not reach the TD (or the module).
        mem.write_slice(&[0xEE; 48], GuestAddress(0x20_0040))
            .unwrap();
        let r = call(
            &m,
            0,
            Regs {
                rax: leaf::MR_RTMR_EXTEND,
                rcx: 0x20_0040,
                rdx: 2,
                ..Default::default()
            },
        );
        assert_eq!(r.rax, status::SUCCESS);
        let r = call(
            &m,
            0,
            Regs {
                rax: leaf::MR_RTMR_EXTEND,
                rcx: 0x20_0040,
                rdx: 4,
                ..Default::default()
            },
        );
        assert_eq!(r.rax, status::OPERAND_INVALID | status::RDX);
        let r = call(
            &m,
            0,
            Regs {
                rax: leaf::MR_RTMR_EXTEND,
                rcx: 0x20_0041,
                rdx: 2,
                ..Default::default()
            },
        );
        assert_eq!(r.rax, status::OPERAND_INVALID | status::RCX, "misaligned");
        // An unaccepted page is not a valid operand.
        let r = call(
            &m,
            0,
            Regs {
                rax: leaf::MR_RTMR_EXTEND,
                rcx: 0x90_0000,
                rdx: 2,
                ..Default::default()
            },
        );
        assert_eq!(r.rax, status::OPERAND_INVALID | status::RCX);

        m.cc.trusted_write(0x20_0080, &[0x5A; 64]).unwrap();
        let r = call(
            &m,
            0,
            Regs {
                rax: leaf::MR_REPORT,
                rcx: 0x20_0400,
                rdx: 0x20_0080,
                ..Default::default()
            },
        );
        assert_eq!(r.rax, status::SUCCESS);
        let mut report = vec![0u8; 1024];
        // The TDREPORT is in private memory: the VMM's view shows none of it.
        mem.read_slice(&mut report, GuestAddress(0x20_0400))
            .unwrap();
        assert!(
            report.iter().all(|&b| b == 0),
            "the VMM cannot read the TDREPORT"
        );
        m.cc.trusted_read(0x20_0400, &mut report).unwrap();
        let parsed = TdReport::from_bytes(&report).unwrap();
        assert_eq!(parsed.mac_struct.report_data, [0x5A; 64]);
        let mut rtmr2 = [0u8; 48];
        measured_boot::tdx::rtmr_extend(&mut rtmr2, &[0xAB; 48]);
        assert_eq!(parsed.td_info.rtmr[2], rtmr2);
        let r = call(
            &m,
            0,
            Regs {
                rax: leaf::MR_REPORT,
                rcx: 0x20_0400,
                rdx: 0x20_0080,
                r8: 1,
                ..Default::default()
            },
        );
        assert_eq!(r.rax, status::OPERAND_INVALID | status::R8);

        // GetQuote: the real buffer format (version 1, status, in_len, out_len, data),
        // a shared GPA; the status goes IN_FLIGHT, then SUCCESS with the quote.
        let buf = 0x30_0000u64;
        let r = call(
            &m,
            0,
            Regs {
                rax: 0,
                rcx: 0xFC00,
                r11: vmcall::MAP_GPA,
                r12: buf | SHARED_BIT,
                r13: 0x8000,
                ..Default::default()
            },
        );
        assert_eq!((r.rax, r.r10), (0, vmcall::SUCCESS), "MapGPA to shared");
        mem.write_obj(1u64, GuestAddress(buf)).unwrap();
        mem.write_obj(0u64, GuestAddress(buf + 8)).unwrap();
        mem.write_obj(1024u32, GuestAddress(buf + 16)).unwrap();
        mem.write_slice(&report, GuestAddress(buf + 24)).unwrap();
        let r = call(
            &m,
            0,
            Regs {
                rax: 0,
                rcx: 0xFC00,
                r11: vmcall::GET_QUOTE,
                r12: buf | SHARED_BIT,
                r13: 0x8000,
                ..Default::default()
            },
        );
        assert_eq!((r.rax, r.r10), (0, vmcall::SUCCESS));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            let s: u64 = mem.read_obj(GuestAddress(buf + 8)).unwrap();
            if s != services::QUOTE_IN_FLIGHT || std::time::Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(status, services::QUOTE_SUCCESS);
        let len: u32 = mem.read_obj(GuestAddress(buf + 20)).unwrap();
        let mut quote = vec![0u8; len as usize];
        mem.read_slice(&mut quote, GuestAddress(buf + 24)).unwrap();
        let q = attestation::tdx::quote::Quote::parse(&quote).unwrap();
        assert_eq!(q.body.report_data, [0x5A; 64]);
        assert_eq!(q.body.rtmr[2], rtmr2);
        assert_eq!(
            irq.0.lock().unwrap().as_slice(),
            &[(1, 0x40)],
            "the finished quote raised the guest's notification vector"
        );

        // A TDREPORT this module did not MAC is refused by the quoting enclave.
        report[0x100] ^= 1;
        mem.write_obj(0u64, GuestAddress(buf + 8)).unwrap();
        mem.write_slice(&report, GuestAddress(buf + 24)).unwrap();
        call(
            &m,
            0,
            Regs {
                rax: 0,
                rcx: 0xFC00,
                r11: vmcall::GET_QUOTE,
                r12: buf | SHARED_BIT,
                r13: 0x8000,
                ..Default::default()
            },
        );
        let status = loop {
            let s: u64 = mem.read_obj(GuestAddress(buf + 8)).unwrap();
            if s != services::QUOTE_IN_FLIGHT || std::time::Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(status, services::QUOTE_ERROR);
    }
}
