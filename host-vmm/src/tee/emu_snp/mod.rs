//! The software PSP and SNP-aware hypervisor of `--tee emulated-snp`: the guest runs
//! the same SEV-SNP code it runs on hardware (SEV_STATUS, the GHCB MSR and page
//! protocols, PVALIDATE, page-state changes, guest messages encrypted with the VMPCKs of
//! the secrets page) and this module answers as the PSP and KVM would.
//!
//! **Insecure by design**: the keys are this host's and the private-memory contract
//! ([`CcMemory`]) is kept by the same VMM the guest should be protected from. What is
//! faithful is the guest-visible contract: results, error codes, what the guest must do
//! first, and which memory the host can see.
//!
//! # Measured on this machine (PVM KVM, AMD EPYC host, 48-bit physical)
//!
//! Scratch KVM program, a 64-bit guest at CPL0 then CPL3 (2026-12-06):
//!
//! - CPUID 0x8000001F and 0x80000008 values given with KVM_SET_CPUID2 reach the guest
//!   unchanged (set EAX=0x1B EBX=0x102F ECX=0x1F, read the same; 0x80000008 EAX=0x3030:
//!   48 physical / 48 virtual bits).
//! - A PTE with bit 47 set (the emulated C-bit) reaches a second memslot at
//!   GPA | 1 << 47 that maps the same host memory (the guest read the marker written
//!   through the first slot); without that slot the access is an MMIO exit at
//!   0x8000_0040_0000. So the emulated C-bit is bit 47 and private memory is reached
//!   through an alias slot ([`alias_slots`]).
//! - `rep vmmcall` (VMGEXIT, f3 0f 01 d9) at CPL0: **no exit**. KVM treats it as a
//!   hypercall, rewrites the guest's first three bytes to `0f 01 c1` (vmcall, KVM's
//!   "fix hypercall instruction" quirk) and the vCPU then spins inside KVM_RUN (RIP and
//!   RAX unchanged after 3 s). Plain `vmmcall` does the same. At CPL3 KVM answers the
//!   hypercall itself with RAX = -1 (-KVM_EPERM) and advances RIP: no exit either.
//!   VMGEXIT therefore always goes through the emulator trap here (below).
//! - PVALIDATE (f2 0f 01 ff) at CPL0: KVM_EXIT_INTERNAL_ERROR, suberror 1, `ndata` 8:
//!   `data[0]` = 1 (KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES), the low byte
//!   of `data[1]` = number of fetched bytes (15), then the bytes (`f2 0f 01 ff …`) from
//!   the second byte of `data[1]` on; RIP at the instruction. Setting RAX/RFLAGS/RIP
//!   with KVM_SET_REGS and re-entering resumes the guest. At CPL3 PVALIDATE ends in a
//!   triple fault (KVM_EXIT_SHUTDOWN): #UD cannot be delivered.
//!
//! # Traps (one register ABI for hardware and emulation)
//!
//! | instruction | hardware | emulated, CPL0 (firmware) | emulated, CPL3 / standard KVM |
//! |---|---|---|---|
//! | PVALIDATE | `f2 0f 01 ff` | the literal instruction (internal-error exit); `out 0xE1, al` on a standard KVM or with `--tee-trap port` (SEV_STATUS bit 62) | `out 0xE1, al` |
//! | VMGEXIT | `f3 0f 01 d9` | `out 0xE2, al` | `out 0xE2, al` |
//! | RDMSR / WRMSR | literal | literal (user-space MSR exits) | `out 0xE3/0xE4, al` |
//!
//! Whether the host KVM exits on PVALIDATE is probed once ([`crate::tee::trap`]); the
//! firmware learns the outcome from SEV_STATUS bit [`SEV_STATUS_EMULATOR_INSN_TRAP`]
//! (honoured only with bit 63), a reserved bit the host cannot set on hardware.
//!
//! Every other register is set exactly as for the instruction and the results come
//! back in the same registers and RFLAGS bits ([`SnpPsp::trap`]). The firmware chooses
//! its VMGEXIT trap from SEV_STATUS bit [`SEV_STATUS_EMULATOR_TRAP`] (a reserved bit a
//! real PSP never sets); why that is safe: on real SNP hardware an `out` either raises
//! #VC (the firmware has no #VC handler in long mode: the guest stops) or, if the host
//! does not intercept it, leaves every register unchanged, which the protocol code
//! treats as failure (an unchanged GHCB MSR is not a response; PVALIDATE's RAX would
//! still hold the page's non-zero virtual address). A host cannot make a real guest
//! skip validation with it.
//!
//! # State
//!
//! Under `--tee emulated-snp` the page states live in the private-memory contract
//! ([`CcMemory`], see `tee::emulated_snp`): shared, private, validated 4 KiB / 2 MiB;
//! PVALIDATE is [`CcMemory::validate`], page-state changes are [`CcMemory::convert`],
//! the PSP reads the guest's page tables with [`CcMemory::trusted_read`], and the GHCB,
//! guest-request pages and certificate buffer must be shared. Without a contract (an
//! [`SnpPsp`] made with `cc` = `None`, the unit tests) the software RMP ([`rmp`]) holds
//! per 4 KiB page whether it is assigned (private), validated, and part of a 2 MiB
//! entry. Either way the launch assigns and validates every page it adds (firmware,
//! SNP_SEC_MEM, secrets, CPUID, hashes page), as SNP_LAUNCH_UPDATE does.
//! Guest messages ([`guest_msg`]) use four VMPCKs drawn from the OS RNG at launch and
//! written into the secrets page, with the PSP's per-key sequence numbers.

pub mod ghcb;
pub mod guest_msg;
pub mod rmp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use attestation::snp::emulated::{EmulatedGuest, EmulatedSnpPlatform, ReportRequest};
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zeroize::Zeroizing;

use self::ghcb::{exit, off, Ioio, MsrRequest, PscEntry};
use self::guest_msg::{Channel, GuestMsgError};
use self::rmp::{Rmp, RmpFault};
use crate::devices::VmEvent;
use crate::vstate::cc_memory::{CcMemory, CcMemoryError, MmioAccess, PageSize, RmpError};
use crate::vstate::vcpu::{ExitError, ExitHandler, Handled};

/// The emulated C-bit position (bit 47 of a 48-bit physical address space; measured
/// to reach an alias memslot, module docs).
pub const CBIT: u8 = 47;
/// SEV_STATUS bit the emulated PSP sets so the firmware uses the `out 0xE2` VMGEXIT
/// trap (reserved on hardware: a real PSP reports it as 0).
pub const SEV_STATUS_EMULATOR_TRAP: u64 = 1 << 63;
/// Test equipment: with this variable = 1 the emulated PSP leaves the PVALIDATE port
/// trap unanswered (registers and flags unchanged), as a host that does not intercept
/// `out 0xE1` would; the firmware sets CF first, so it must terminate at its first
/// PVALIDATE (cvm `tests/firmware.rs`).
pub const DROP_PVALIDATE_TRAP_ENV: &str = "CVM_TEST_DROP_PVALIDATE_TRAP";
/// SEV_STATUS bit the emulated PSP sets, with [`SEV_STATUS_EMULATOR_TRAP`], when the
/// firmware must use the PVALIDATE emulator trap `out 0xE1, al` (a standard KVM raises
/// #UD for the literal instruction: [`crate::tee::trap`]). Reserved on hardware.
pub const SEV_STATUS_EMULATOR_INSN_TRAP: u64 = 1 << 62;
/// Why a literal PVALIDATE stops the guest when SEV_STATUS selected the emulator trap.
pub const LITERAL_UD_PVALIDATE: &str = "#UD: the guest executed the literal PVALIDATE, but the emulated platform selected the emulator trap (SEV_STATUS bit 62), as a standard KVM needs";
/// The emulator-trap ports: `out 0xE0 + n, al`.
pub mod trap_port {
    #![allow(missing_docs)]
    pub const TDCALL: u16 = 0xE0;
    pub const PVALIDATE: u16 = 0xE1;
    pub const VMGEXIT: u16 = 0xE2;
    pub const RDMSR: u16 = 0xE3;
    pub const WRMSR: u16 = 0xE4;
    /// The firmware hands over to a kernel that does not know SNP (guest-firmware
    /// `boot::EMULATED_PLAIN_HANDOFF`): SEV_STATUS reads 0 from then on.
    pub const PLAIN_HANDOFF: u16 = 0xE5;
}
const PAGE: u64 = 0x1000;
const RFLAGS_CF: u64 = 1;
/// The SNP secrets page version written (SNP ABI spec 1.55: 3).
pub const SECRETS_VERSION: u32 = 3;

/// Port I/O the hypervisor performs for a GHCB IOIO exit (the VMM's PIO bus).
pub trait PortIo: Send + Sync {
    /// An `in` of `data.len()` bytes.
    fn read(&self, port: u16, data: &mut [u8]);
    /// An `out`; the device may ask the VMM to stop the guest.
    fn write(&self, port: u16, data: &[u8]) -> Option<VmEvent>;
}

/// The VMM's PIO bus as [`PortIo`].
pub struct BusPorts(pub Arc<crate::devices::Buses>);

impl std::fmt::Debug for BusPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusPorts")
    }
}

impl PortIo for BusPorts {
    fn read(&self, port: u16, data: &mut [u8]) {
        self.0.pio.read(port, data);
    }
    fn write(&self, port: u16, data: &[u8]) -> Option<VmEvent> {
        self.0.pio.write(port, data)
    }
}

/// Where the launch put the PSP-owned pages.
#[derive(Debug, Clone)]
pub struct PspLayout {
    /// Every range SNP_LAUNCH_UPDATE added (assigned and validated), as (GPA, bytes).
    pub launched: Vec<(u64, u64)>,
    /// The secrets page.
    pub secrets: Option<u64>,
    /// The CPUID page.
    pub cpuid: Option<u64>,
}

struct State {
    rmp: Rmp,
    /// GHCB MSR value per vCPU.
    ghcb_msr: HashMap<u32, u64>,
    /// Registered GHCB GPA per vCPU.
    registered: HashMap<u32, u64>,
    channel: Channel,
}

/// The emulated PSP and hypervisor of one guest.
pub struct SnpPsp {
    /// The VMM's view of guest memory (under the contract, private pages read zero).
    mem: GuestMemoryMmap,
    /// The private-memory contract, if the guest runs under it (module docs, *State*);
    /// else the software RMP of [`State`] keeps the page states.
    cc: Option<Arc<CcMemory>>,
    /// Hole mode is on ([`ExitHandler::run_efault`]).
    exposed: std::sync::atomic::AtomicBool,
    guest: EmulatedGuest<'static>,
    platform: Arc<EmulatedSnpPlatform>,
    state: Mutex<State>,
    ports: OnceLock<Arc<dyn PortIo>>,
    /// SEV_STATUS as the guest reads it.
    sev_status: u64,
    /// The firmware handed over to a plain kernel ([`trap_port::PLAIN_HANDOFF`]).
    plain: std::sync::atomic::AtomicBool,
    /// Test equipment ([`DROP_PVALIDATE_TRAP_ENV`]): leave `out 0xE1` unanswered.
    drop_pvalidate_trap: bool,
    /// The vCPUs' CPUID (subleaf 0 of each leaf), for the MSR-protocol CPUID request.
    cpuid: OnceLock<Vec<(u32, [u32; 4])>>,
}

impl std::fmt::Debug for SnpPsp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnpPsp")
    }
}

/// Why the emulated PSP stops the guest (what the hardware would report as a fault or
/// the hypervisor as a terminated guest).
#[derive(Debug, thiserror::Error)]
pub enum PspError {
    /// An RMP fault.
    #[error("RMP fault")]
    Rmp(#[from] RmpFault),
    /// The guest asked to be terminated.
    #[error("the guest asked to be terminated (GHCB reason set {set}, code {code:#x})")]
    Terminated {
        /// Reason code set.
        set: u8,
        /// Reason code.
        code: u8,
    },
    /// An MSR-protocol request the hypervisor does not serve.
    #[error("unsupported GHCB MSR protocol request {0:#x}")]
    MsrProtocol(u64),
    /// A GHCB page the hypervisor cannot use.
    #[error("GHCB at {0:#x} is not usable ({1})")]
    Ghcb(u64, &'static str),
    /// An exit code the hypervisor does not serve.
    #[error("unsupported VMGEXIT exit code {0:#x}")]
    ExitCode(u64),
    /// A virtual address the guest's page tables do not map.
    #[error("virtual address {0:#x} is not mapped by the guest's page tables")]
    Unmapped(u64),
    /// Guest memory could not be accessed.
    #[error("guest memory at {0:#x} cannot be accessed")]
    Memory(u64),
    /// Registers could not be read or written.
    #[error("cannot {0} the vCPU registers")]
    Regs(&'static str, #[source] kvm_ioctls::Error),
    /// The guest RNG failed at launch.
    #[error("cannot draw the VMPCKs")]
    Random,
    /// The private-memory contract could not carry out a launch step or a page-state
    /// change (the VM must stop).
    #[error("the private-memory contract refused {0}")]
    Contract(&'static str, #[source] CcMemoryError),
    /// The host could not apply a PVALIDATE under the contract (the VM must stop).
    #[error("PVALIDATE could not be applied")]
    Validate(#[source] RmpError),
}

impl SnpPsp {
    /// The CPUID the vCPUs were given (before their APIC IDs are patched in), for the
    /// GHCB MSR-protocol CPUID request. Set once, before the vCPUs run.
    pub fn set_guest_cpuid(&self, cpuid: &kvm_bindings::CpuId) {
        let leaves = cpuid
            .as_slice()
            .iter()
            .filter(|e| e.index == 0)
            .map(|e| (e.function, [e.eax, e.ebx, e.ecx, e.edx]))
            .collect();
        let _ = self.cpuid.set(leaves);
    }

    /// Leaf `leaf` (subleaf 0) of vCPU `vcpu`'s CPUID: the APIC ID patched in as
    /// `Vcpu::new` does.
    fn guest_cpuid(&self, vcpu: u32, leaf: u32) -> [u32; 4] {
        let mut r = self
            .cpuid
            .get()
            .and_then(|c| c.iter().find(|(f, _)| *f == leaf).map(|(_, r)| *r))
            .unwrap_or([0; 4]);
        match leaf {
            1 => r[1] = (r[1] & 0x00ff_ffff) | (vcpu << 24),
            0xb | 0x1f => r[3] = vcpu,
            _ => {}
        }
        r
    }

    /// The PSP for `guest`: writes the secrets page (fresh VMPCKs) and the CPUID page
    /// (`cpuid_table`, the SNP CPUID table) where the launch put them, and marks every
    /// launched range assigned and validated. With `cc` (the private-memory contract,
    /// before [`CcMemory::finish_launch`]) the two pages are launched into private
    /// memory with [`CcMemory::launch_private_with`] and the contract keeps every page's
    /// state (the caller launches the other ranges); without it the software RMP does.
    pub fn new(
        mem: GuestMemoryMmap,
        cc: Option<Arc<CcMemory>>,
        guest: EmulatedGuest<'static>,
        platform: Arc<EmulatedSnpPlatform>,
        layout: &PspLayout,
        cpuid_table: &[u8],
    ) -> Result<Self, PspError> {
        use rand_core::RngCore;
        let mut vmpck = Zeroizing::new([[0u8; 32]; 4]);
        for k in vmpck.iter_mut() {
            rand_core::OsRng
                .try_fill_bytes(k)
                .map_err(|_| PspError::Random)?;
        }
        if let Some(gpa) = layout.secrets {
            let mut page = Zeroizing::new([0u8; 4096]);
            page[0..4].copy_from_slice(&SECRETS_VERSION.to_le_bytes());
            for (i, k) in vmpck.iter().enumerate() {
                page[0x20 + 32 * i..0x40 + 32 * i].copy_from_slice(k);
            }
            match &cc {
                Some(cc) => cc
                    .launch_private_with(gpa, &page[..])
                    .map_err(|e| PspError::Contract("the secrets page", e))?,
                None => mem
                    .write_slice(&page[..], GuestAddress(gpa))
                    .map_err(|_| PspError::Memory(gpa))?,
            }
        }
        if let Some(gpa) = layout.cpuid {
            match &cc {
                Some(cc) => {
                    let mut page = vec![0u8; cpuid_table.len().div_ceil(PAGE as usize) * 4096];
                    page[..cpuid_table.len()].copy_from_slice(cpuid_table);
                    cc.launch_private_with(gpa, &page)
                        .map_err(|e| PspError::Contract("the CPUID page", e))?
                }
                None => mem
                    .write_slice(cpuid_table, GuestAddress(gpa))
                    .map_err(|_| PspError::Memory(gpa))?,
            }
        }
        let mut rmp = Rmp::new();
        if cc.is_none() {
            for &(gpa, len) in &layout.launched {
                rmp.launch_page_range(gpa, len);
            }
        }
        Ok(Self {
            mem,
            cc,
            exposed: std::sync::atomic::AtomicBool::new(false),
            guest,
            platform,
            state: Mutex::new(State {
                rmp,
                ghcb_msr: HashMap::new(),
                registered: HashMap::new(),
                channel: Channel::new(vmpck),
            }),
            ports: OnceLock::new(),
            sev_status: ghcb::SEV_STATUS_SNP | SEV_STATUS_EMULATOR_TRAP,
            plain: std::sync::atomic::AtomicBool::new(false),
            drop_pvalidate_trap: std::env::var(DROP_PVALIDATE_TRAP_ENV).as_deref() == Ok("1"),
            cpuid: OnceLock::new(),
        })
    }

    /// The PVALIDATE trap the guest's firmware is told to use (SEV_STATUS bit 62,
    /// [`SEV_STATUS_EMULATOR_INSN_TRAP`]). The port trap is answered either way (the
    /// test guest uses it at CPL3); with [`InsnTrap::Port`](crate::tee::trap::InsnTrap)
    /// a literal PVALIDATE stops the guest with #UD ([`LITERAL_UD_PVALIDATE`]), as on a
    /// standard KVM.
    pub fn with_insn_trap(mut self, trap: crate::tee::trap::InsnTrap) -> Self {
        self.sev_status &= !SEV_STATUS_EMULATOR_INSN_TRAP;
        if trap == crate::tee::trap::InsnTrap::Port {
            self.sev_status |= SEV_STATUS_EMULATOR_INSN_TRAP;
        }
        self
    }

    /// Connects the VMM's port I/O (GHCB IOIO exits); set once.
    pub fn set_ports(&self, ports: Arc<dyn PortIo>) {
        let _ = self.ports.set(ports);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The RMP entry of `gpa` (tests, diagnostics): from the contract's page state
    /// when the guest runs under it.
    pub fn rmp_entry(&self, gpa: u64) -> rmp::Entry {
        use crate::vstate::cc_memory::PageState;
        match &self.cc {
            Some(cc) => match cc.state(gpa) {
                None | Some(PageState::Shared) => rmp::Entry::default(),
                Some(PageState::Private) => rmp::Entry {
                    assigned: true,
                    ..Default::default()
                },
                Some(PageState::Validated(size)) => rmp::Entry {
                    assigned: true,
                    validated: true,
                    huge: size == PageSize::Size2M,
                },
            },
            None => self.state().rmp.entry(gpa),
        }
    }

    /// The private-memory contract the guest runs under, if any.
    pub fn cc_memory(&self) -> Option<&Arc<CcMemory>> {
        self.cc.as_ref()
    }

    /// Whether the page holding `gpa` is assigned to the guest (private): the GHCB,
    /// guest-request pages and certificate buffers must not be.
    fn assigned(&self, gpa: u64) -> bool {
        match &self.cc {
            Some(cc) => cc.state(gpa).is_some_and(|s| s.is_private()),
            None => self.state().rmp.entry(gpa).assigned,
        }
    }

    /// Reads guest memory as the PSP does (the guest's page tables, which are private):
    /// through the contract's trusted path, or plain memory without it.
    fn read_trusted(&self, gpa: u64, buf: &mut [u8]) -> Result<(), PspError> {
        match &self.cc {
            Some(cc) => cc.trusted_read(gpa, buf).map_err(|_| PspError::Memory(gpa)),
            None => self
                .mem
                .read_slice(buf, GuestAddress(gpa))
                .map_err(|_| PspError::Memory(gpa)),
        }
    }

    /// One page-state change (RMPUPDATE on the guest's request) of a 4 KiB or (`huge`)
    /// 2 MiB page at `gpa`: `op` is a [`ghcb::psc_op`]. `Ok(false)`: refused (bad
    /// entry); under the contract a private or shared conversion scrubs the page
    /// ([`CcMemory::convert`]) and PSMASH is implicit (the contract splits a 2 MiB unit
    /// when a 4 KiB page of it changes).
    fn page_state_change(&self, gpa: u64, huge: bool, op: u8) -> Result<bool, PspError> {
        let size = if huge { 0x20_0000 } else { PAGE };
        if gpa % size != 0 || !self.in_ram(gpa, size) {
            return Ok(false);
        }
        let private = op == ghcb::psc_op::PRIVATE;
        match &self.cc {
            Some(cc) => match op {
                ghcb::psc_op::PRIVATE | ghcb::psc_op::SHARED => cc
                    .convert(gpa, size, private)
                    .map(|_| true)
                    .map_err(|e| PspError::Contract("a page-state change", e)),
                ghcb::psc_op::PSMASH => Ok(gpa % 0x20_0000 == 0),
                _ => Ok(false),
            },
            None => {
                let mut st = self.state();
                Ok(match op {
                    ghcb::psc_op::PRIVATE | ghcb::psc_op::SHARED => {
                        st.rmp.page_state_change(gpa, huge, private).is_ok()
                    }
                    ghcb::psc_op::PSMASH => st.rmp.psmash(gpa).is_ok(),
                    _ => false,
                })
            }
        }
    }

    /// Whether `[gpa, gpa + len)` is guest RAM (page-state changes elsewhere are
    /// refused, so a guest cannot grow the RMP without bound).
    fn in_ram(&self, gpa: u64, len: u64) -> bool {
        use vm_memory::GuestMemoryBackend;
        len > 0
            && gpa.checked_add(len).is_some()
            && self.mem.check_range(GuestAddress(gpa), len as usize)
    }

    /// RDMSR / WRMSR of the SNP MSRs; `None` for any other MSR.
    pub fn msr(&self, vcpu: u32, msr: u32, write: bool, data: &mut u64) -> Option<Result<(), ()>> {
        match (msr, write) {
            (ghcb::MSR_SEV_STATUS, false) => {
                // After a plain handoff the kernel must not see SNP (its own SNP code
                // cannot run on a standard KVM).
                *data = if self.plain.load(std::sync::atomic::Ordering::Acquire) {
                    0
                } else {
                    self.sev_status
                };
                Some(Ok(()))
            }
            // SEV_STATUS is read-only: #GP.
            (ghcb::MSR_SEV_STATUS, true) => Some(Err(())),
            (ghcb::MSR_GHCB, false) => {
                *data = self.state().ghcb_msr.get(&vcpu).copied().unwrap_or(0);
                Some(Ok(()))
            }
            (ghcb::MSR_GHCB, true) => {
                self.state().ghcb_msr.insert(vcpu, *data);
                Some(Ok(()))
            }
            _ => None,
        }
    }

    /// VA → GPA through the guest's 4-level page tables (the C-bit is an attribute,
    /// not an address bit: it is cleared from the result).
    fn translate(&self, sregs: &kvm_sregs, va: u64) -> Result<u64, PspError> {
        Ok(self.translate_with_cbit(sregs, va)? & !(1u64 << CBIT))
    }

    /// VA → GPA as the guest's page tables map it, the C-bit of the final entry kept
    /// (the tables themselves are read without it).
    fn translate_with_cbit(&self, sregs: &kvm_sregs, va: u64) -> Result<u64, PspError> {
        if sregs.cr0 & (1 << 31) == 0 {
            return Ok(va);
        }
        let addr_mask = 0x000F_FFFF_FFFF_F000u64 & !(1u64 << CBIT);
        let leaf_mask = 0x000F_FFFF_FFFF_F000u64;
        let mut table = sregs.cr3 & addr_mask;
        for level in (0..4).rev() {
            let index = (va >> (12 + 9 * level)) & 0x1FF;
            let at = table + index * 8;
            let mut raw = [0u8; 8];
            self.read_trusted(at, &mut raw)?;
            let e = u64::from_le_bytes(raw);
            if e & 1 == 0 {
                return Err(PspError::Unmapped(va));
            }
            if level > 0 && level < 3 && e & (1 << 7) != 0 {
                let size = 1u64 << (12 + 9 * level);
                return Ok((e & leaf_mask & !(size - 1)) | (va & (size - 1)));
            }
            if level == 0 {
                return Ok((e & leaf_mask) | (va & (PAGE - 1)));
            }
            table = e & addr_mask;
        }
        Err(PspError::Unmapped(va))
    }

    /// PVALIDATE with `regs` (RAX virtual address, ECX page size, EDX validate): RAX
    /// and RFLAGS.CF as the hardware sets them.
    pub fn pvalidate(&self, regs: &mut kvm_regs, sregs: &kvm_sregs) -> Result<(), PspError> {
        let gpa = self.translate(sregs, regs.rax)?;
        let huge = regs.rcx & 1 != 0;
        let validate = regs.rdx & 1 != 0;
        let r = match &self.cc {
            None => self.state().rmp.pvalidate(gpa, huge, validate)?,
            Some(cc) => {
                let size = if huge {
                    PageSize::Size2M
                } else {
                    PageSize::Size4K
                };
                // The page's address: RAX's low 12 bits are ignored, as in the RMP path.
                match cc.validate(gpa & !(PAGE - 1), size, validate) {
                    Ok(changed) => rmp::PvalidateResult {
                        rax: rmp::PVALIDATE_OK,
                        unchanged: !changed,
                    },
                    Err(e) => match (e.pvalidate_code(), e) {
                        (Some(rax), _) => rmp::PvalidateResult {
                            rax,
                            unchanged: false,
                        },
                        (None, RmpError::NotAssigned { gpa }) => {
                            return Err(RmpFault::NotAssigned(gpa).into())
                        }
                        (None, e) => return Err(PspError::Validate(e)),
                    },
                }
            }
        };
        regs.rax = r.rax;
        regs.rflags = if r.unchanged {
            regs.rflags | RFLAGS_CF
        } else {
            regs.rflags & !RFLAGS_CF
        };
        Ok(())
    }

    /// VMGEXIT of vCPU `vcpu`: the MSR protocol when the GHCB MSR holds a request, the
    /// GHCB page protocol when it holds a page address. Returns a VM event a device
    /// raised (an IOIO `out` to pvpanic).
    pub fn vmgexit(&self, vcpu: u32) -> Result<Option<VmEvent>, PspError> {
        let v = self.state().ghcb_msr.get(&vcpu).copied().unwrap_or(0);
        if v & 0xFFF != 0 {
            let response = self.msr_protocol(vcpu, v)?;
            self.state().ghcb_msr.insert(vcpu, response);
            return Ok(None);
        }
        self.ghcb_page(vcpu, v)
    }

    fn msr_protocol(&self, vcpu: u32, v: u64) -> Result<u64, PspError> {
        Ok(match MsrRequest::decode(v) {
            MsrRequest::SevInfo => ghcb::sev_info(CBIT),
            MsrRequest::Cpuid { leaf, reg } => {
                // From the vCPU's CPUID, as KVM answers it (`kvm_emulate_cpuid` with
                // ECX = 0), never the host's: the template's C-bit, KVM's hidden
                // features stay hidden. A leaf the vCPU does not have reads zero.
                let r = self.guest_cpuid(vcpu, leaf);
                let value = r[usize::from(reg & 3)];
                (u64::from(value) << 32) | (u64::from(reg) << 30) | ghcb::msr::CPUID_RESP
            }
            MsrRequest::RegisterGhcb(gfn) => {
                self.state().registered.insert(vcpu, gfn << 12);
                (gfn << 12) | ghcb::msr::REG_GHCB_RESP
            }
            MsrRequest::PageState { gpa, private } => {
                let op = if private {
                    ghcb::psc_op::PRIVATE
                } else {
                    ghcb::psc_op::SHARED
                };
                let ok = self.page_state_change(gpa, false, op)?;
                ghcb::psc_response(if ok { 0 } else { 1 })
            }
            MsrRequest::HvFeatures => (ghcb::HV_FEATURES << 12) | ghcb::msr::HV_FEATURES_RESP,
            MsrRequest::Terminate { set, code } => {
                return Err(PspError::Terminated { set, code });
            }
            MsrRequest::Unknown(v) => return Err(PspError::MsrProtocol(v)),
        })
    }

    fn ghcb_page(&self, vcpu: u32, gpa: u64) -> Result<Option<VmEvent>, PspError> {
        if let Some(&reg) = self.state().registered.get(&vcpu) {
            if reg != gpa {
                return Err(PspError::Ghcb(gpa, "not the registered GHCB"));
            }
        }
        if self.assigned(gpa) {
            return Err(PspError::Ghcb(gpa, "the page is private"));
        }
        let mut page = [0u8; 4096];
        self.mem
            .read_slice(&mut page, GuestAddress(gpa))
            .map_err(|_| PspError::Memory(gpa))?;
        let code = ghcb::get(&page, off::SW_EXIT_CODE);
        let info1 = ghcb::get(&page, off::SW_EXIT_INFO_1);
        let info2 = ghcb::get(&page, off::SW_EXIT_INFO_2);
        let mut event = None;
        // Results: sw_exit_info_1 = 0 (success) unless an error is set.
        let (mut res1, mut res2) = (0u64, 0u64);
        match code {
            exit::IOIO => {
                let io =
                    Ioio::decode(info1).ok_or(PspError::Ghcb(gpa, "string or malformed IOIO"))?;
                let ports = self
                    .ports
                    .get()
                    .ok_or(PspError::Ghcb(gpa, "no port I/O connected"))?;
                let n = usize::from(io.size);
                if io.input {
                    let mut b = [0u8; 4];
                    ports.read(io.port, &mut b[..n]);
                    ghcb::set(&mut page, off::RAX, u64::from(u32::from_le_bytes(b)));
                } else {
                    if !ghcb::valid(&page, off::RAX) {
                        return Err(PspError::Ghcb(gpa, "IOIO OUT without a valid RAX"));
                    }
                    let rax = ghcb::get(&page, off::RAX).to_le_bytes();
                    event = ports.write(io.port, &rax[..n]);
                }
            }
            exit::SNP_PSC => {
                let scratch = ghcb::get(&page, off::SW_SCRATCH);
                res2 = self.psc_buffer(gpa, &mut page, scratch)?;
            }
            exit::SNP_GUEST_REQUEST | exit::SNP_EXT_GUEST_REQUEST => {
                res2 = self.guest_request(code, info1, info2, &mut page)?;
            }
            exit::HV_FEATURES => {
                res2 = ghcb::HV_FEATURES;
            }
            other => return Err(PspError::ExitCode(other)),
        }
        // KVM's convention (arch/x86/kvm/svm/sev.c): malformed input is
        // `svm_vmgexit_bad_input` — sw_exit_info_1 = 2, info_2 = the GHCB_ERR_* reason;
        // a guest-request or page-state-change status (VMM/firmware error in the high
        // half) is returned with info_1 = 0 ("no action") and the status in info_2, which
        // Linux's `verify_exception_info` passes to the caller (an INVALID_LEN extended
        // request must reach the guest's -ENOSPC retry, not become ES_VMM_ERROR).
        if res2 != 0 && code != exit::HV_FEATURES && res2 < 1 << 32 {
            res1 = 2;
        }
        // The hypervisor writes only the results; clear the valid bitmap as KVM does
        // before marking what it returns.
        page[off::VALID_BITMAP..off::VALID_BITMAP + 16].fill(0);
        if code == exit::IOIO && Ioio::decode(info1).is_some_and(|i| i.input) {
            let rax = ghcb::get(&page, off::RAX);
            ghcb::set(&mut page, off::RAX, rax);
        }
        if code == exit::SNP_EXT_GUEST_REQUEST && res2 == ghcb::GUEST_VMM_ERR_INVALID_LEN << 32 {
            // RBX (the pages needed) is a result: mark it valid again.
            let rbx = ghcb::get(&page, off::RBX);
            ghcb::set(&mut page, off::RBX, rbx);
        }
        ghcb::set(&mut page, off::SW_EXIT_INFO_1, res1);
        ghcb::set(&mut page, off::SW_EXIT_INFO_2, res2);
        self.mem
            .write_slice(&page, GuestAddress(gpa))
            .map_err(|_| PspError::Memory(gpa))?;
        Ok(event)
    }

    /// The Page State Change NAE: processes the buffer at `scratch` (inside the GHCB's
    /// shared buffer) from `cur_entry` to `end_entry`, updating `cur_entry` (and each
    /// entry's `cur_page`) as it goes. Returns `sw_exit_info_2` (0: done).
    fn psc_buffer(
        &self,
        ghcb_gpa: u64,
        page: &mut [u8; 4096],
        scratch: u64,
    ) -> Result<u64, PspError> {
        let lo = ghcb_gpa + off::SHARED_BUFFER as u64;
        let hi = ghcb_gpa + off::SHARED_BUFFER_END as u64;
        // Guest-chosen: no arithmetic on it may overflow (a scratch address near
        // u64::MAX once panicked the vCPU thread here).
        if scratch < lo || scratch.checked_add(8).is_none_or(|e| e > hi) {
            return Ok(ghcb::GHCB_ERR_INVALID_SCRATCH_AREA);
        }
        let base = (scratch - ghcb_gpa) as usize;
        let rd16 = |p: &[u8; 4096], o: usize| u16::from_le_bytes([p[o], p[o + 1]]);
        let cur = usize::from(rd16(page, base));
        let end = usize::from(rd16(page, base + 2));
        if end >= ghcb::PSC_MAX_ENTRIES || base + 8 + (end + 1) * 8 > off::SHARED_BUFFER_END {
            return Ok(ghcb::PSC_ERROR_INVALID_HDR);
        }
        let mut i = cur;
        while i <= end {
            let o = base + 8 + i * 8;
            let e = PscEntry::decode(ghcb::get(page, o));
            if !self.page_state_change(e.gpa, e.huge, e.op)? {
                page[base..base + 2].copy_from_slice(&(i as u16).to_le_bytes());
                return Ok(ghcb::PSC_ERROR_INVALID_ENTRY);
            }
            let done = PscEntry {
                cur_page: if e.huge { 512 } else { 1 },
                ..e
            };
            page[o..o + 8].copy_from_slice(&done.encode().to_le_bytes());
            i += 1;
        }
        page[base..base + 2].copy_from_slice(&((end + 1) as u16).to_le_bytes());
        Ok(0)
    }

    /// SNP Guest Request / Extended Guest Request: the request page at `req_gpa`
    /// (`info1`), the response page at `rsp_gpa` (`info2`); the extended form also
    /// takes the certificate buffer (RAX GPA, RBX pages). Returns `sw_exit_info_2`.
    fn guest_request(
        &self,
        code: u64,
        req_gpa: u64,
        rsp_gpa: u64,
        page: &mut [u8; 4096],
    ) -> Result<u64, PspError> {
        for gpa in [req_gpa, rsp_gpa] {
            if gpa % PAGE != 0 || self.assigned(gpa) {
                return Ok(ghcb::GHCB_ERR_INVALID_INPUT);
            }
        }
        if code == exit::SNP_EXT_GUEST_REQUEST {
            let certs_gpa = ghcb::get(page, off::RAX);
            let pages = ghcb::get(page, off::RBX);
            let table = self
                .platform
                .cert_table()
                .to_bytes()
                .map_err(|_| PspError::Ghcb(req_gpa, "certificate table"))?;
            let need = (table.len() as u64).div_ceil(PAGE);
            if pages < need {
                ghcb::set(page, off::RBX, need);
                return Ok(ghcb::GUEST_VMM_ERR_INVALID_LEN << 32);
            }
            if certs_gpa % PAGE != 0 {
                return Ok(ghcb::GHCB_ERR_INVALID_INPUT);
            }
            // Only the table is written (never a guest-sized buffer: RBX is the
            // guest's), and only into shared guest RAM.
            if !self.in_ram(certs_gpa, table.len() as u64)
                || (certs_gpa..certs_gpa + table.len() as u64)
                    .step_by(PAGE as usize)
                    .any(|p| self.assigned(p))
            {
                return Ok(ghcb::GHCB_ERR_INVALID_INPUT);
            }
            self.mem
                .write_slice(&table, GuestAddress(certs_gpa))
                .map_err(|_| PspError::Memory(certs_gpa))?;
        }
        let mut req = [0u8; 4096];
        self.mem
            .read_slice(&mut req, GuestAddress(req_gpa))
            .map_err(|_| PspError::Memory(req_gpa))?;
        let answer = |t: u8, _v: u8, p: &[u8]| -> Result<Vec<u8>, GuestMsgError> {
            if t != guest_msg::msg_type::REPORT_REQ {
                return Err(GuestMsgError::Type(t));
            }
            if p.len() < guest_msg::REPORT_REQ_SIZE {
                return Err(GuestMsgError::Header);
            }
            let mut report_data = [0u8; 64];
            report_data.copy_from_slice(&p[..64]);
            let vmpl = u32::from_le_bytes([p[64], p[65], p[66], p[67]]);
            let mut out = vec![0u8; guest_msg::REPORT_RSP_HEADER];
            match self.guest.report(&ReportRequest {
                report_data,
                vmpl,
                version: 3,
            }) {
                Ok(r) => {
                    out[4..8].copy_from_slice(&(r.len() as u32).to_le_bytes());
                    out.extend_from_slice(&r);
                }
                // MSG_REPORT_RSP STATUS 0x16: invalid parameters.
                Err(_) => out[0..4].copy_from_slice(&0x16u32.to_le_bytes()),
            }
            Ok(out)
        };
        let result = self.state().channel.handle(&req, answer);
        match result {
            Ok(rsp) => {
                self.mem
                    .write_slice(&rsp, GuestAddress(rsp_gpa))
                    .map_err(|_| PspError::Memory(rsp_gpa))?;
                Ok(0)
            }
            Err(e) => {
                tracing::warn!(error = %e, "emulated SNP guest request refused");
                // The PSP's status in the low 32 bits: SEV_RET_AUTH_ERROR / INVALID_PARAM.
                Ok(match e {
                    GuestMsgError::Auth | GuestMsgError::Sequence { .. } => 0x1B,
                    _ => 0x16,
                })
            }
        }
    }

    /// The emulator trap `out port, al` from vCPU `vcpu` with `regs`: applies the
    /// instruction's semantics to `regs` (RIP unchanged). `Ok(None)`: not a trap port.
    pub fn trap(
        &self,
        vcpu: u32,
        port: u16,
        regs: &mut kvm_regs,
        sregs: &kvm_sregs,
    ) -> Result<Option<Option<VmEvent>>, PspError> {
        match port {
            // Test equipment: as a host that does not intercept the port (no register
            // changes); the firmware must read that as a failure and terminate.
            trap_port::PVALIDATE if self.drop_pvalidate_trap => Ok(Some(None)),
            trap_port::PVALIDATE => self.pvalidate(regs, sregs).map(|()| Some(None)),
            trap_port::VMGEXIT => self.vmgexit(vcpu).map(Some),
            trap_port::RDMSR | trap_port::WRMSR => {
                let write = port == trap_port::WRMSR;
                let mut data = (regs.rdx << 32) | (regs.rax & 0xFFFF_FFFF);
                match self.msr(vcpu, regs.rcx as u32, write, &mut data) {
                    Some(Ok(())) => {
                        if !write {
                            regs.rax = data & 0xFFFF_FFFF;
                            regs.rdx = data >> 32;
                        }
                        Ok(Some(None))
                    }
                    _ => Err(PspError::MsrProtocol(regs.rcx)),
                }
            }
            _ => Ok(None),
        }
    }
}

/// Instruction bytes of an emulation-failure exit (module docs: `data[0]` flags,
/// `data[1]` low byte the count, then the bytes).
pub fn insn_bytes(data: &[u64]) -> Option<Vec<u8>> {
    if data.first()? & 1 == 0 {
        return None;
    }
    let raw: Vec<u8> = data
        .get(1..3)?
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let n = usize::from(raw[0]).min(15);
    Some(raw[1..1 + n].to_vec())
}

/// PVALIDATE's encoding.
pub const PVALIDATE: [u8; 4] = [0xF2, 0x0F, 0x01, 0xFF];

fn exit_error(e: &PspError) -> ExitError {
    tracing::error!(error = %e, "emulated SEV-SNP stopped the guest");
    match e {
        PspError::Rmp(_) | PspError::Terminated { .. } | PspError::Unmapped(_) => {
            ExitError::GuestFault(e.to_string())
        }
        _ => ExitError::Emulation(e.to_string()),
    }
}

thread_local! {
    /// A VM event a device raised during a GHCB IOIO exit of this vCPU thread, handed
    /// to the vCPU loop through [`TrapEvents`].
    static PENDING_EVENT: std::cell::Cell<Option<VmEvent>> = const { std::cell::Cell::new(None) };
}

/// The PIO device at the trap ports: the vCPU loop's own path for VM events. When a
/// GHCB IOIO exit made a device ask to stop the guest (pvpanic, ACPI S5), the trap
/// handler answers [`Handled::No`] and the loop writes the trap port here, in the same
/// vCPU thread: the pending event is returned as that write's event, so the guest
/// stops exactly as for a direct `out`. (A `Handled` variant carrying the event would
/// do the same without the detour; the vCPU loop is not this module's.)
#[derive(Debug)]
pub struct TrapEvents;

impl crate::devices::PioDevice for TrapEvents {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xFF);
    }
    fn write(&mut self, _offset: u16, _data: &[u8]) -> Option<VmEvent> {
        PENDING_EVENT.with(|p| p.take())
    }
}

impl SnpPsp {
    /// Under the contract, the fault an instruction fetch at CS:RIP of `fd` makes, if
    /// the page holding it is one the guest may not execute in that view.
    fn fetch_fault(&self, fd: &VcpuFd) -> Option<crate::vstate::cc_memory::GuestFault> {
        use crate::vstate::cc_memory::FaultKind;
        let cc = self.cc.as_ref()?;
        let regs = fd.get_regs().ok()?;
        let sregs = fd.get_sregs().ok()?;
        let linear = sregs.cs.base.wrapping_add(regs.rip);
        // The GPA as the guest used it: with the C-bit when its page tables set it.
        let gpa = if sregs.cr0 & (1 << 31) == 0 {
            linear & 0xFFFF_FFFF
        } else {
            self.translate_with_cbit(&sregs, linear).ok()?
        };
        let fault = cc.classify(gpa);
        (!matches!(fault.kind, FaultKind::Accessible | FaultKind::NotRam)).then_some(fault)
    }

    /// The emulator trap as the vCPU loop offers it: reads the registers, applies the
    /// trap, writes them back (RIP unchanged: KVM skips the `out`).
    pub fn io_trap_fd(&self, vcpu: u32, fd: &VcpuFd, port: u16) -> Result<Handled, ExitError> {
        if port == trap_port::PLAIN_HANDOFF {
            // From the firmware (CPL0) only; the guest stays emulated-insecure either way.
            let sregs = fd
                .get_sregs()
                .map_err(|e| ExitError::Emulation(format!("KVM_GET_SREGS: {e}")))?;
            if sregs.cs.dpl != 0 {
                return Ok(Handled::No);
            }
            self.plain.store(true, std::sync::atomic::Ordering::Release);
            // An unaware kernel needs ordinary memory: end the private-memory contract
            // (every page shared with its contents; module docs of `emulated_snp`).
            if let Some(cc) = &self.cc {
                cc.end_contract()
                    .map_err(|e| ExitError::Emulation(format!("ending the contract: {e}")))?;
            }
            tracing::info!(event = "plain-handoff", "emulated SNP: the firmware handed over to a kernel that does not see SNP (SEV_STATUS now reads 0)");
            return Ok(Handled::Yes);
        }
        if !(trap_port::PVALIDATE..=trap_port::WRMSR).contains(&port) {
            return Ok(Handled::No);
        }
        let regs_err =
            |what: &str, e: kvm_ioctls::Error| ExitError::Emulation(format!("{what}: {e}"));
        let mut regs = fd.get_regs().map_err(|e| regs_err("KVM_GET_REGS", e))?;
        let sregs = fd.get_sregs().map_err(|e| regs_err("KVM_GET_SREGS", e))?;
        match self.trap(vcpu, port, &mut regs, &sregs) {
            Ok(Some(event)) => {
                fd.set_regs(&regs)
                    .map_err(|e| regs_err("KVM_SET_REGS", e))?;
                if event.is_some() {
                    PENDING_EVENT.with(|p| p.set(event));
                    return Ok(Handled::No);
                }
                Ok(Handled::Yes)
            }
            Ok(None) => Ok(Handled::No),
            Err(e) => Err(exit_error(&e)),
        }
    }
}

impl ExitHandler for SnpPsp {
    fn memory_fault(&self, gpa: u64, _size: u64, _private: bool) -> Result<(), ExitError> {
        match &self.cc {
            // KVM_EXIT_MEMORY_FAULT (a standard KVM since 6.8): the contract refused it.
            Some(cc) => Err(ExitError::GuestFault(cc.classify(gpa).to_string())),
            None => Err(ExitError::Unexpected(
                "memory fault exit on an emulated SNP guest",
            )),
        }
    }

    fn mmio(&self, gpa: u64, data: &mut [u8], write: bool) -> Result<Handled, ExitError> {
        let Some(cc) = &self.cc else {
            return Ok(Handled::No);
        };
        match cc.serve_mmio(gpa, data, write) {
            MmioAccess::Device => Ok(Handled::No),
            MmioAccess::Served => Ok(Handled::Yes),
            MmioAccess::Fault(f) => Err(ExitError::GuestFault(f.to_string())),
            MmioAccess::Failed(e) => Err(ExitError::Emulation(e.to_string())),
        }
    }

    fn run_efault(&self) -> Result<Handled, ExitError> {
        // This host gives no GPA for a CPL3 access to a protected page: switch to hole
        // mode once, so the access exits as MMIO at its GPA. A second EFAULT is not
        // about page states: the vCPU stops.
        let Some(cc) = &self.cc else {
            return Ok(Handled::No);
        };
        if self.exposed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(Handled::No);
        }
        cc.expose_faults()
            .map_err(|e| ExitError::Emulation(e.to_string()))?;
        Ok(Handled::Yes)
    }

    fn map_gpa_range(&self, _args: &[u64; 6]) -> u64 {
        // -KVM_ENOSYS: not forwarded on an emulated guest.
        1000u64.wrapping_neg()
    }

    fn tdx_vmcall(&self, _vcpu: u32, _exit: &mut [u8; 256]) -> Result<(), ExitError> {
        Err(ExitError::Unexpected("TDX exit on an emulated SNP guest"))
    }

    fn snp_req_certs(&self, _exit: &mut [u8; 256]) -> Result<(), ExitError> {
        Err(ExitError::Unexpected(
            "KVM certificate exit on an emulated SNP guest",
        ))
    }

    fn internal_error(
        &self,
        _vcpu: u32,
        fd: &VcpuFd,
        suberror: u32,
        data: &[u64],
    ) -> Result<Handled, ExitError> {
        if suberror != 1 {
            return Ok(Handled::No);
        }
        if insn_bytes(data).as_deref().and_then(|b| b.get(..4)) != Some(&PVALIDATE[..]) {
            // Under the contract an instruction fetch from a page the guest may not
            // execute (unvalidated, or shared through the C-bit) is an emulation failure
            // on this host: report it as the fault the hardware raises.
            return match self.fetch_fault(fd) {
                Some(fault) => Err(ExitError::GuestFault(format!("instruction fetch: {fault}"))),
                None => Ok(Handled::No),
            };
        }
        if self.sev_status & SEV_STATUS_EMULATOR_INSN_TRAP != 0 {
            // The platform told the firmware to use the emulator trap, as on a standard
            // KVM, where the literal instruction raises #UD: stop the guest the same way
            // here, so a firmware that ignores the signal fails on this machine too.
            return Err(ExitError::GuestFault(LITERAL_UD_PVALIDATE.into()));
        }
        let mut regs = fd
            .get_regs()
            .map_err(|_| ExitError::Unexpected("KVM_GET_REGS failed"))?;
        let sregs = fd
            .get_sregs()
            .map_err(|_| ExitError::Unexpected("KVM_GET_SREGS failed"))?;
        self.pvalidate(&mut regs, &sregs)
            .map_err(|e| exit_error(&e))?;
        regs.rip = regs.rip.wrapping_add(PVALIDATE.len() as u64);
        fd.set_regs(&regs)
            .map_err(|_| ExitError::Unexpected("KVM_SET_REGS failed"))?;
        Ok(Handled::Yes)
    }

    fn msr(&self, vcpu: u32, msr: u32, write: bool, data: &mut u64) -> Result<Handled, ExitError> {
        match self.msr(vcpu, msr, write, data) {
            None => Ok(Handled::No),
            Some(Ok(())) => Ok(Handled::Yes),
            // A write to SEV_STATUS: #GP, as on the hardware.
            Some(Err(())) => Ok(Handled::Fault),
        }
    }

    fn io_trap(&self, vcpu: u32, fd: &VcpuFd, port: u16) -> Result<Handled, ExitError> {
        self.io_trap_fd(vcpu, fd, port)
    }
}

/// The alias memslots of the emulated C-bit: every RAM region of `mem` again at
/// GPA | 1 << [`CBIT`] (measured: a PTE with the C-bit then reaches the same memory).
pub fn alias_slots(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u64)> {
    use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
    mem.iter()
        .map(|r| {
            (
                r.start_addr().raw_value() | (1u64 << CBIT),
                r.len(),
                r.as_ptr() as u64,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;

/// Why the emulated SNP VM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// An alias memslot was refused.
    #[error("cannot register the C-bit alias memslot {slot} at {gpa:#x}")]
    Alias {
        /// Slot.
        slot: u32,
        /// GPA.
        gpa: u64,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// First memslot of the C-bit aliases (the VMM's own slots count from 0).
pub const ALIAS_SLOT_BASE: u32 = 64;

/// Registers [`alias_slots`] with KVM.
pub fn register_alias_slots(vm: &crate::vstate::vm::Vm) -> Result<(), SetupError> {
    for (i, (gpa, size, host)) in alias_slots(vm.memory()).into_iter().enumerate() {
        let slot = ALIAS_SLOT_BASE + i as u32;
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: `host`/`size` describe a live mmap owned by the VM's guest memory,
        // which the `Vm` keeps for as long as its fd exists (the fd is closed first on
        // drop); the alias range (GPA | 1 << 47) overlaps no other slot.
        unsafe { vm.fd().set_user_memory_region(region) }.map_err(|source| SetupError::Alias {
            slot,
            gpa,
            source,
        })?;
    }
    Ok(())
}
