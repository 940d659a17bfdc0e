//! The emulated TDX backend: a default KVM VM under the private-memory contract
//! ([`crate::vstate::cc_memory::CcMemory`], [`VmType::EmulatedConfidential`]) whose
//! firmware is "measured" by the emulated TDX platform of the `attestation` crate, and
//! whose vCPUs start as TD vCPUs do (32-bit protected mode at the reset vector,
//! [`emu_tdx::td_entry`]) with CPUID leaf 0x21 saying "IntelTDX    ". The guest runs its
//! real TDX code; the VMM plays the TDX module ([`emu_tdx::TdxModule`]: TDCALL through
//! the internal-error exit or the emulator trap); its evidence is TDG.MR.REPORT and
//! `TDVMCALL<GetQuote>`, with no paravirtual device beside them (nothing at port 0xE00;
//! [`super::emulated`]). Insecure test equipment.
//!
//! # The launch under the contract
//!
//! - The VM's memory starts private and unaccepted; the shared bit (GPA bit 47, GPAW
//!   48) is the contract's alias bit ([`host_alias_bit`]; on a host whose guest
//!   physical width is not 48 bits there is no alias and shared accesses at bit 47
//!   find no memory: emulated TDX needs a 48-bit host).
//! - After the vCPUs exist, every page of the TDVF sections goes in with
//!   [`CcMemory::launch_private_with`] from exactly the bytes the KVM backend passes to
//!   KVM_TDX_INIT_MEM_REGION ([`tdx_pages`]: BFV, CFV, TD_HOB with the boot-data
//!   descriptor at 0x8000 — issue 13 bug 3 — TempMem, …), then
//!   [`CcMemory::finish_launch`] seals private memory from the VMM before any vCPU runs.
//!   A descriptor the VMM writes only into its own view afterwards never reaches the TD.
//! - **The staging region** (kernel, initrd, command line, described by the
//!   descriptor) is shared before the launch, keeping the bytes the VMM staged. On
//!   hardware a page has two backings (guest_memfd for private, the VMM's mapping for
//!   shared), so the VMM's staged bytes are what the TD sees once it MapGPAs the region
//!   shared; `CcMemory` has one backing per page and scrubs on conversion, so the
//!   region is made shared (scrub, then the staged bytes written back) before the TD
//!   runs, and the firmware's MapGPA finds it shared already. Nothing there is trusted:
//!   the firmware measures what it copies in.
//! - TDG.MEM.PAGE.ACCEPT is [`CcMemory::accept`] (4 KiB private pages by default, as
//!   Linux 6.16's guest_memfd: a 2 MiB accept answers TDX_PAGE_SIZE_MISMATCH and the
//!   firmware falls back to 4 KiB), MapGPA is [`CcMemory::convert`], and the module
//!   reads and writes private operands (RTMR digests, TDREPORT, REPORTDATA) with
//!   [`CcMemory::trusted_read`] / [`CcMemory::trusted_write`].
//!
//! # The plain handoff (a stock kernel, issue 17)
//!
//! Linux's own TDX code executes TDCALL, which raises #UD on a standard KVM, so a stock
//! kernel cannot run as an emulated TD. With the word [`PLAIN_HANDOFF_WORD`] on the
//! staged command line ([`EmulatedTdx::with_staged_cmdline`]; the firmware measures the
//! command line into RTMR2, so a verifier sees the word):
//!
//! - CPUID (0x21, 0) shows [`SIGNATURE_EMULATED_PLAIN`] ("cvmPlainTDX ") instead of
//!   "IntelTDX    " (the leaf is fixed once the vCPUs exist, hence the choice before
//!   the launch). The firmware runs its TDX code under either (TDCALLs, acceptance,
//!   RTMRs); Linux's `tdx_early_init` compares the leaf with "IntelTDX    " and does not
//!   see a TD. A real TDX module answers leaf 0x21 itself (the host cannot configure
//!   it), so no host can show this value to a real TD; and the firmware refuses the
//!   signature when its measured command line lacks the word.
//! - The launch is the same (same MRTD and RTMRs for the same inputs). The ACPI tables
//!   reach the kernel as for a CC-aware guest: the firmware accepts 0xE0000-0xFFFFF,
//!   copies the staged tables there, checks and relocates them (issue 13 bug 7), and the
//!   handoff below keeps those contents.
//! - After measuring, the firmware writes port [`PLAIN_HANDOFF_PORT`] (TDVMCALL
//!   Instruction.IO) just before entering the kernel; the VMM's device there (attached
//!   only in this mode) calls [`CcMemory::end_contract`]: every page becomes ordinary
//!   shared memory with the contents the guest had (accepted RAM, the launched TDVF
//!   sections and firmware, the ACPI area, the staging region), mapped read/write at
//!   the plain GPA and the alias, and in the VMM's view (virtio buffers). Linux's plain
//!   GPAs and its scans of the BIOS area then reach ordinary memory. Application
//!   processors stay parked in the firmware (now ordinary memory) until Linux wakes
//!   them through the MADT Multiprocessor Wakeup mailbox, which Linux 6.12 uses for
//!   any guest whose MADT has the structure (`acpi_process_madt` →
//!   `acpi_parse_mp_wake` installs `wakeup_secondary_cpu_64`, which `do_boot_cpu`
//!   prefers to INIT/SIPI); an AP reset by INIT/SIPI would find a readable reset
//!   vector and trampoline as well.
//! - What the kernel then has: the measured launch of its kernel, initrd and command
//!   line (RTMR1/RTMR2, checked by the firmware) and the quotes the VMM's evidence
//!   transport serves; **no isolation from the host** (the contract is over) and
//!   nothing enforced after the handoff. The CC-aware guest (no word) keeps the
//!   contract and "IntelTDX    ".

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use attestation::tdx::emulated::TdConfig;
use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use kvm_ioctls::VcpuFd;
use measured_boot::tdx::{DirectBoot, TdxLaunchPlan};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::backend::{
    AcpiAdditions, ExpectedMeasurement, LaunchReport, PendingLaunch, TeeBackend, TeeDevice,
    TeeError, TeeRuntime, VmType,
};
use super::emu_tdx::{self, TdxModule};
use super::emulated::{EmulatedLaunchError, EmulatedTee, Rtmrs};
use super::launch::{tdx_pages, LaunchStepError, TdxLaunch, TdxPages};
use super::services::{self, Notify};
use super::trap::{self, InsnTrap, TeeTrap};
use super::TeeKind;
use crate::acpi::Ccel;
use crate::devices::Buses;
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::vstate::cc_memory::{
    host_alias_bit, CcConfig, CcMemory, CcMemoryError, CcTee, PageSize,
};
use crate::vstate::memory::FOUR_GIB;
use crate::vstate::vcpu::{sanitize_cpuid, LEAF_TDX};
use crate::vstate::vm::Vm;

/// Emulated TDX.
#[derive(Debug)]
pub struct EmulatedTdx {
    tee: Arc<Mutex<EmulatedTee>>,
    mrtd: [u8; 48],
    rtmrs: Rtmrs,
    plan: Arc<TdxLaunchPlan>,
    alias_bit: Option<u32>,
    legacy_descriptor: bool,
    late_writes: Vec<(u64, Vec<u8>)>,
    cc: Arc<OnceLock<Arc<CcMemory>>>,
    vcpus: Arc<OnceLock<u32>>,
    module: OnceLock<Arc<TdxModule>>,
    /// The TDCALL trap, once chosen ([`Self::with_tee_trap`]; else probed when CPUID
    /// is built).
    insn_trap: Option<InsnTrap>,
    /// The page size the emulated host backs private memory with
    /// ([`Self::with_private_page_size`]).
    private_pages: PageSize,
    /// The staged command line asks for the plain handoff ([`Self::with_staged_cmdline`]).
    plain_handoff: bool,
}

impl EmulatedTdx {
    /// Launches `firmware` (with `direct_boot`, if a kernel is staged) on the emulated
    /// platform in `dir`.
    pub fn launch(
        dir: &Path,
        firmware: Vec<u8>,
        config: TdConfig,
        direct_boot: Option<DirectBoot>,
    ) -> Result<Self, EmulatedLaunchError> {
        let (tee, mrtd, rtmrs, plan) = EmulatedTee::launch_tdx(dir, firmware, config, direct_boot)?;
        // The shared bit of GPAW 48 is bit 47; it is the contract's alias bit only where
        // the host's guest physical width allows it (module docs).
        let shared_bit = emu_tdx::GPAW - 1;
        let alias_bit = kvm_ioctls::Kvm::new()
            .ok()
            .and_then(|k| host_alias_bit(&k))
            .map(|b| b.min(shared_bit))
            .filter(|b| *b == shared_bit);
        if alias_bit.is_none() {
            tracing::warn!(
                "this host's guest physical width is not 48 bits: emulated TDX runs without a shared alias"
            );
        }
        Ok(Self {
            tee: Arc::new(Mutex::new(tee)),
            mrtd,
            rtmrs,
            plan: Arc::new(plan),
            alias_bit,
            legacy_descriptor: false,
            late_writes: Vec::new(),
            cc: Arc::default(),
            vcpus: Arc::default(),
            module: OnceLock::new(),
            insn_trap: None,
            private_pages: PageSize::Size2M,
            plain_handoff: false,
        })
    }

    /// The page size the emulated host backs private memory with
    /// ([`CcMemory::set_largest_private_page`]): [`PageSize::Size2M`] by default (a host
    /// with huge-page private memory: the firmware accepts RAM 2 MiB per TDCALL, one VM
    /// exit per 2 MiB under emulation); [`PageSize::Size4K`] models Linux 6.16's
    /// guest_memfd, where a 2 MiB TDG.MEM.PAGE.ACCEPT is a size mismatch and the guest
    /// falls back to 4 KiB pages (`cvm launch --emulated-private-pages 4k`, which CI
    /// runs so the fallback stays tested).
    pub fn with_private_page_size(mut self, size: PageSize) -> Self {
        self.private_pages = size;
        self
    }

    /// Chooses the TDCALL trap now (`--tee-trap`; [`TeeTrap::Auto`] probes the host
    /// once, [`crate::tee::trap`]). The CLI calls it before entering a jail.
    pub fn with_tee_trap(mut self, trap: TeeTrap) -> Self {
        self.insn_trap = Some(trap.resolve());
        self
    }

    /// The TDCALL trap the firmware is told to use (CPUID (0x21, 0) EAX).
    pub fn insn_trap(&self) -> InsnTrap {
        self.insn_trap.unwrap_or_else(trap::host_insn_trap)
    }

    /// Chooses the plain handoff from the command line the VMM stages (module docs,
    /// *The plain handoff*): only when it holds the word [`PLAIN_HANDOFF_WORD`], split
    /// as the firmware splits it. The firmware checks the same word in its measured
    /// copy (RTMR2 holds it) and refuses when the platform prepared a handoff the
    /// measured command line does not ask for.
    pub fn with_staged_cmdline(mut self, cmdline: Option<&str>) -> Self {
        self.plain_handoff = cmdline.is_some_and(|c| {
            c.split(['\0'])
                .next()
                .unwrap_or_default()
                .split([' ', '\t', '\n'])
                .any(|w| w == PLAIN_HANDOFF_WORD)
        });
        self
    }

    /// Whether the plain handoff was chosen ([`Self::with_staged_cmdline`]).
    pub fn plain_handoff(&self) -> bool {
        self.plain_handoff
    }

    /// **Test equipment (issue 13, bug 3):** launches the TD_HOB section without the
    /// boot-data descriptor and writes the descriptor only into the VMM's view after the
    /// launch — the placement before the fix. Under the contract the TD must not see it.
    #[doc(hidden)]
    pub fn with_legacy_descriptor_placement(mut self) -> Self {
        self.legacy_descriptor = true;
        self
    }

    /// **Test equipment (the private-memory contract):** after the launch is sealed
    /// and before any vCPU runs, the VMM writes `bytes` at `gpa` through its own view, as
    /// a buggy or hostile VMM would. Private memory must not change for the TD.
    #[doc(hidden)]
    pub fn with_vmm_write_after_launch(mut self, gpa: u64, bytes: Vec<u8>) -> Self {
        self.late_writes.push((gpa, bytes));
        self
    }
}

/// Guest RAM of `mem` (the VMM's view), without the firmware range below 4 GiB.
fn ram_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .filter(|r| r.start_addr().0 == 0 || r.start_addr().0 >= FOUR_GIB)
        .map(|r| r.len())
        .sum()
}

/// Why the emulated TD's private memory could not be launched.
fn cc_step(what: &'static str) -> impl FnOnce(CcMemoryError) -> TeeError {
    move |e| emu_err(what, Box::new(e))
}

/// A failure of the emulated launch's private memory.
fn emu_err(what: &'static str, source: Box<dyn std::error::Error + Send + Sync>) -> TeeError {
    TeeError::Emulated(EmulatedLaunchError::PrivateMemory(what, source))
}

impl TeeBackend for EmulatedTdx {
    fn kind(&self) -> TeeKind {
        TeeKind::EmulatedTdx
    }

    fn vm_type(&self) -> VmType {
        VmType::EmulatedConfidential(CcConfig {
            tee: CcTee::Tdx,
            alias_bit: self.alias_bit,
        })
    }

    fn preload(&self) -> &[(u64, Vec<u8>)] {
        // The TD HOB and sections are the firmware's own business in emulation.
        &[]
    }

    fn devices(&self, _mem: &GuestMemoryMmap) -> Vec<TeeDevice> {
        let mut devices = Vec::new();
        if self.plain_handoff {
            devices.push(TeeDevice {
                name: "emulated-tdx-plain-handoff",
                base: PLAIN_HANDOFF_PORT,
                len: 1,
                device: Arc::new(Mutex::new(PlainHandoff {
                    cc: self.cc.clone(),
                })),
            });
        }
        devices
    }

    fn acpi(&self) -> AcpiAdditions {
        AcpiAdditions {
            ccel: Some(Ccel::TDX_FIRMWARE),
        }
    }

    fn adjust_cpuid(&self, cpuid: &mut CpuId) {
        sanitize_cpuid(cpuid, false, false);
        let signature = if self.plain_handoff {
            &SIGNATURE_EMULATED_PLAIN
        } else {
            &SIGNATURE
        };
        show_tdx_leaf_as(cpuid, self.insn_trap(), signature);
    }

    fn before_vcpus<'v>(
        &self,
        vm: &'v Vm,
        _cpuid: &CpuId,
    ) -> Result<Box<dyn PendingLaunch + 'v>, TeeError> {
        let Some(cc) = vm.cc_memory() else {
            return Err(emu_err(
                "the VM has no private-memory contract",
                "emulated TDX needs VmType::EmulatedConfidential".into(),
            ));
        };
        cc.set_largest_private_page(self.private_pages);
        let _ = self.cc.set(cc.clone());
        Ok(Box::new(TdEntry {
            vcpus: self.vcpus.clone(),
            plan: self.plan.clone(),
            legacy_descriptor: self.legacy_descriptor,
            late_writes: self.late_writes.clone(),
            insn_trap: self.insn_trap(),
        }))
    }

    fn runtime(&self, vm: &Arc<Vm>, mode: SeccompMode) -> Result<Option<TeeRuntime>, TeeError> {
        let (tx, rx) = mpsc::sync_channel(services::QUOTE_MAX_IN_FLIGHT as usize);
        let in_flight = Arc::new(AtomicU64::new(0));
        let notify = Notify::default();
        let (mem, n, tee, note, irq) = (
            vm.memory().clone(),
            in_flight.clone(),
            self.tee.clone(),
            notify.clone(),
            emu_tdx::MsiInterrupt(vm.clone()),
        );
        // The quote thread's filter (KVM_SIGNAL_MSI for the notification); the emulated
        // quoting enclave's signing (deterministic ECDSA) needs no further syscalls.
        let thread = std::thread::Builder::new()
            .name("emulated-quote".into())
            .spawn(move || match seccomp::install(ThreadKind::Quote, mode) {
                Ok(()) => emu_tdx::quote_worker(rx, mem, tee, n, note, irq),
                Err(e) => tracing::error!(error = %e, "quote thread not confined; not serving"),
            })
            .map_err(|e| TeeError::Thread("emulated-quote", e))?;
        let Some(cc) = vm.cc_memory() else {
            return Err(emu_err(
                "the VM has no private-memory contract",
                "emulated TDX needs VmType::EmulatedConfidential".into(),
            ));
        };
        let module = Arc::new(
            TdxModule::new(
                cc.clone(),
                self.tee.clone(),
                self.vcpus.get().copied().unwrap_or(1),
                Some((tx, in_flight)),
                notify,
            )
            .with_insn_trap(self.insn_trap()),
        );
        let _ = self.module.set(module.clone());
        Ok(Some(TeeRuntime {
            exits: module,
            threads: vec![thread],
            // TDCALL results are written back with KVM_SET_REGS.
            vcpu_thread: ThreadKind::EmulatedTeeVcpu,
        }))
    }

    fn attach_buses(&self, bus: &Arc<Buses>) {
        if let Some(m) = self.module.get() {
            m.attach_buses(bus.clone());
        }
    }

    fn virtio_access_platform(&self) -> bool {
        false
    }

    fn evidence_source(&self) -> Option<Arc<dyn super::evidence_vsock::EvidenceSource>> {
        Some(self.tee.clone())
    }

    fn measurement(&self) -> ExpectedMeasurement {
        ExpectedMeasurement {
            tee: TeeKind::EmulatedTdx,
            digest: Some(self.mrtd),
            rtmrs: Some(self.rtmrs),
        }
    }
}

/// Shows CPUID leaf 0x21 as a TDX module does ("IntelTDX    " in EBX, EDX, ECX) and
/// raises the maximum basic leaf to reach it. With the TDCALL port trap, EAX (the
/// maximum sub-leaf, 0 on every TDX module) carries [`trap::TDX_INSN_TRAP_EAX`], the
/// firmware's signal, which a real TDX module never reports.
pub fn show_tdx_leaf(cpuid: &mut CpuId, insn_trap: InsnTrap) {
    show_tdx_leaf_as(cpuid, insn_trap, &SIGNATURE)
}

/// The vendor signature of CPUID (0x21, 0) on every TDX module (EBX, EDX, ECX).
pub const SIGNATURE: [u8; 12] = *b"IntelTDX    ";

/// The signature of the emulated TDX platform when the plain handoff is chosen (module
/// docs): the firmware (`guest-firmware` `env::TDX_SIGNATURE_EMULATED_PLAIN`) runs its
/// TDX code as under [`SIGNATURE`]; Linux, which compares the leaf with
/// "IntelTDX    ", does not see a TD.
pub const SIGNATURE_EMULATED_PLAIN: [u8; 12] = *b"cvmPlainTDX ";

/// The measured command-line word that selects the plain handoff (the firmware's
/// `boot::EMULATED_PLAIN_HANDOFF`, shared with emulated SNP).
pub const PLAIN_HANDOFF_WORD: &str = "cvm.emulated_handoff=plain";

/// The port the firmware writes (TDG.VP.VMCALL<Instruction.IO>) at the plain handoff.
pub const PLAIN_HANDOFF_PORT: u16 = 0xE5;

/// [`show_tdx_leaf`] with `signature` in EBX, EDX, ECX.
pub fn show_tdx_leaf_as(cpuid: &mut CpuId, insn_trap: InsnTrap, signature: &[u8; 12]) {
    let mut entries: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function != LEAF_TDX)
        .copied()
        .collect();
    for e in entries.iter_mut().filter(|e| e.function == 0) {
        e.eax = e.eax.max(LEAF_TDX);
    }
    let word = |at: usize| {
        u32::from_le_bytes([
            signature[at],
            signature[at + 1],
            signature[at + 2],
            signature[at + 3],
        ])
    };
    entries.push(kvm_cpuid_entry2 {
        function: LEAF_TDX,
        index: 0,
        eax: match insn_trap {
            InsnTrap::Port => trap::TDX_INSN_TRAP_EAX,
            InsnTrap::Instruction => 0,
        },
        ebx: word(0),
        edx: word(4),
        ecx: word(8),
        ..Default::default()
    });
    if let Ok(c) = CpuId::from_entries(&entries) {
        *cpuid = c;
    }
}

/// The emulated launch after vCPU creation: the TDVF sections go into private memory
/// (module docs), the launch is sealed, and every vCPU enters as a TD vCPU.
struct TdEntry {
    vcpus: Arc<OnceLock<u32>>,
    plan: Arc<TdxLaunchPlan>,
    legacy_descriptor: bool,
    late_writes: Vec<(u64, Vec<u8>)>,
    insn_trap: InsnTrap,
}

impl PendingLaunch for TdEntry {
    fn after_vcpus(
        self: Box<Self>,
        vm: &Vm,
        vcpus: &[&VcpuFd],
        _cpuid: &CpuId,
    ) -> Result<LaunchReport, TeeError> {
        let Some(cc) = vm.cc_memory() else {
            return Err(emu_err(
                "the VM has no private-memory contract",
                "emulated TDX needs VmType::EmulatedConfidential".into(),
            ));
        };
        let mem = vm.memory();
        // The descriptor the VMM staged in its view (as the KVM backend reads it).
        let mut descriptor = [0u8; crate::boot::DESCRIPTOR_SIZE];
        let _ = mem.read_slice(&mut descriptor, GuestAddress(crate::boot::DESCRIPTOR_GPA));
        share_staging(cc, mem, &descriptor)?;
        // The KVM backend's launch description: only the plan and the RAM size shape
        // the pages (INIT_VM's configuration is the emulated module's, not needed here).
        let launch = TdxLaunch {
            plan: (*self.plan).clone(),
            config: Default::default(),
            memory: ram_size(mem),
            qgs: None,
        };
        let added = if self.legacy_descriptor {
            [0u8; crate::boot::DESCRIPTOR_SIZE]
        } else {
            descriptor
        };
        let pages = match tdx_pages(&launch, &added) {
            Ok(p) => p,
            // An image without a TD_HOB section (the tiny test guests; the KVM backend
            // refuses those): its sections as the plan has them, RCX = 0x8000 as before.
            Err(LaunchStepError::NoTdHob) => TdxPages {
                hob: emu_tdx::TD_HOB,
                regions: launch
                    .plan
                    .regions()
                    .map(|r| (r.gpa, std::borrow::Cow::Borrowed(r.data), r.measure))
                    .collect(),
            },
            Err(e) => return Err(e.into()),
        };
        let (mut added_pages, mut measured) = (0u64, 0u64);
        for (gpa, data, measure) in &pages.regions {
            cc.launch_private_with(*gpa, data)
                .map_err(cc_step("adding a TDVF section to private memory"))?;
            let n = (data.len() as u64).div_ceil(4096);
            added_pages += n;
            if *measure {
                measured += n;
            }
        }
        cc.finish_launch()
            .map_err(cc_step("sealing private memory"))?;
        if self.legacy_descriptor {
            // The old placement: only the VMM's view (a throwaway page after the launch).
            let _ = mem.write_slice(&descriptor, GuestAddress(crate::boot::DESCRIPTOR_GPA));
        }
        for (gpa, bytes) in &self.late_writes {
            let _ = mem.write_slice(bytes, GuestAddress(*gpa));
        }
        for (i, fd) in vcpus.iter().enumerate() {
            emu_tdx::td_entry(fd, i as u32, pages.hob, self.insn_trap).map_err(|source| {
                LaunchStepError::Registers {
                    index: i as u32,
                    what: "TD vCPU initial state",
                    source,
                }
            })?;
        }
        let _ = self.vcpus.set(vcpus.len() as u32);
        Ok(LaunchReport {
            pages: added_pages,
            measured,
        })
    }
}

/// Makes the staging region `descriptor` names shared, keeping the bytes the VMM staged
/// there (module docs: the shared backing of a TD's pages is the VMM's memory). No
/// descriptor, or no staging region: nothing to share.
fn share_staging(
    cc: &CcMemory,
    mem: &GuestMemoryMmap,
    descriptor: &[u8; crate::boot::DESCRIPTOR_SIZE],
) -> Result<(), TeeError> {
    if descriptor[..8] != crate::boot::MAGIC {
        return Ok(());
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&descriptor[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let (base, size) = (word(0x60), word(0x68));
    if size == 0 {
        return Ok(());
    }
    share_keeping(cc, mem, base, size)
}

/// Makes `base..base+size` shared before the launch, keeping the bytes the VMM wrote
/// there (module docs: the shared backing of a TD's pages is the VMM's memory).
fn share_keeping(
    cc: &CcMemory,
    mem: &GuestMemoryMmap,
    base: u64,
    size: u64,
) -> Result<(), TeeError> {
    let len = usize::try_from(size).map_err(|_| {
        emu_err(
            "the shared region is too large",
            format!("{size:#x} bytes").into(),
        )
    })?;
    let mut staged = vec![0u8; len];
    mem.read_slice(&mut staged, GuestAddress(base))
        .map_err(|e| emu_err("the shared region is not guest RAM", Box::new(e)))?;
    cc.convert(base, size, false)
        .map_err(cc_step("sharing a VMM-staged region"))?;
    mem.write_slice(&staged, GuestAddress(base))
        .map_err(|e| emu_err("cannot restage the shared region", Box::new(e)))
}

/// The port the firmware writes at the plain handoff ([`PLAIN_HANDOFF_PORT`]; attached
/// only when the staged command line asked for it): ends the private-memory contract
/// ([`CcMemory::end_contract`]). If that fails the guest stops (reported as a panic):
/// an unaware kernel would fault on its first private page.
struct PlainHandoff {
    cc: Arc<OnceLock<Arc<CcMemory>>>,
}

impl crate::devices::PioDevice for PlainHandoff {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xFF);
    }

    fn write(&mut self, _offset: u16, _data: &[u8]) -> Option<crate::devices::VmEvent> {
        let Some(cc) = self.cc.get() else {
            tracing::error!("emulated TDX: plain handoff before the launch; stopping");
            return Some(crate::devices::VmEvent::Panic);
        };
        if cc.contract_ended() {
            return None;
        }
        if !cc.launched() {
            tracing::error!("emulated TDX: plain handoff before the launch; stopping");
            return Some(crate::devices::VmEvent::Panic);
        }
        match cc.end_contract() {
            Ok(()) => {
                tracing::info!(
                    event = "plain-handoff",
                    "emulated TDX: the firmware handed over to a kernel that does not see TDX; every page is now shared memory (no isolation from the host)"
                );
                None
            }
            Err(e) => {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(c) = source {
                    why.push_str(": ");
                    why.push_str(&c.to_string());
                    source = c.source();
                }
                tracing::error!(error = %why, "emulated TDX: cannot end the private-memory contract for the plain handoff; stopping");
                Some(crate::devices::VmEvent::Panic)
            }
        }
    }
}
