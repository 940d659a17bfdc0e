//! The emulated SEV-SNP backend: a default KVM VM under the private-memory contract
//! ([`crate::vstate::cc_memory::CcMemory`], [`VmType::EmulatedConfidential`]) whose
//! launch plan is fed to the software secure processor of the `attestation` crate, and
//! whose guest runs the same SEV-SNP code as on hardware against the software PSP and
//! hypervisor of [`super::emu_snp`]: SEV_STATUS and the GHCB MSR through user-space MSR
//! exits, PVALIDATE through the internal-error exit, VMGEXIT through the emulator trap,
//! the secrets and CPUID pages where the launch puts them, and the C-bit (bit 47) as
//! the contract's alias bit. Insecure test equipment.
//!
//! The guest's evidence comes only from that guest-request path: there is no
//! paravirtual device for it (nothing at port 0xE00; [`super::emulated`]).
//!
//! # The launch under the contract
//!
//! - Every page starts as the hypervisor's (shared), with what the VMM placed there
//!   (boot-data descriptor, staging region, ACPI tables), as on hardware, where only
//!   SNP_LAUNCH_UPDATE assigns pages to the guest ([`CcMemory::launch_shared`]).
//! - Each range of the plan goes into private memory, validated, from exactly the bytes
//!   the KVM backend passes as the source ([`CcMemory::launch_private_with`]: firmware
//!   and hashes table from the plan, ZERO pages zero-filled; UNMEASURED pages keep the
//!   VMM's bytes); the PSP adds the secrets page (fresh VMPCKs) and the CPUID page. Then
//!   [`CcMemory::finish_launch`] seals private memory before any vCPU runs: a VMM write
//!   into private memory afterwards lands in a throwaway page the guest never sees.
//! - PVALIDATE is [`CcMemory::validate`] with the hardware's results (FAIL_INPUT,
//!   FAIL_SIZEMISMATCH, CF for "unchanged", #NPF for a shared page; a 4 KiB PVALIDATE
//!   inside a 2 MiB unit splits it as KVM's PSMASH does). Private memory is backed in
//!   2 MiB units, so the firmware validates RAM 2 MiB per exit as before the contract.
//! - Page-state changes (GHCB MSR protocol and the GHCB page's PSC NAE) are
//!   [`CcMemory::convert`]: the page is scrubbed, and a page made private must be
//!   validated before the guest can touch it; an access to it before then stops the
//!   VM with "guest accessed unvalidated private page 0x…: SNP #VC page-not-validated".
//! - The PSP reads the guest's page tables (PVALIDATE takes a virtual address) with
//!   [`CcMemory::trusted_read`]; the GHCB, guest-request pages and certificate buffer
//!   must be shared and are read and written through the VMM's view, as are all device
//!   accesses (virtio rings and buffers must be in shared memory).
//! - The C-bit alias view serves validated private pages only; the plain view serves
//!   shared pages and, because SNP treats instruction fetches, page-table walks and
//!   accesses with paging off as private whatever the C-bit, validated private pages
//!   too (see the `cc_memory` docs, *Choosing the mode*).
//!
//! # The plain handoff
//!
//! A stock kernel started with `cvm.emulated_handoff=plain` on its measured command
//! line (README, "Stock Linux under the emulated TEEs") does not know SNP and needs
//! ordinary memory after the firmware hands over. When the firmware signals the
//! handoff (`out 0xE5, al`, CPL0 only) the PSP reports SEV_STATUS = 0 from then on and
//! ends the contract ([`CcMemory::end_contract`]): every page becomes ordinary shared
//! memory with its current contents (what the firmware validated and wrote, the
//! launched pages), both C-bit views map everything, and the VMM's view sees the
//! guest's bytes again. The launch and the firmware's measurement ran under the
//! contract; there is no memory isolation afterwards, as with any unaware kernel.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use attestation::snp::emulated::{EmulatedGuest, EmulatedSnpPlatform};
use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use measured_boot::snp::{PageType, SnpLaunchPlan, UpdateContents};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::backend::{
    ExpectedMeasurement, NoLaunch, PendingLaunch, TeeBackend, TeeDevice, TeeError, TeeRuntime,
    VmType,
};
use super::emu_snp::{self, PspLayout, SnpPsp, CBIT};
use super::emulated::{EmulatedLaunchError, EmulatedTee};
use super::trap::{self, InsnTrap, TeeTrap};
use super::TeeKind;
use crate::seccomp::SeccompMode;
use crate::vstate::cc_memory::{CcConfig, CcMemory, CcMemoryError, CcTee, PageSize};
use crate::vstate::vcpu::{sanitize_cpuid, LEAF_AMD_MEM_ENCRYPT};
use crate::vstate::vm::Vm;

/// CPUID 0x8000001F EAX of the emulated platform: SEV (1), SEV-ES (3), SNP (4).
pub const MEM_ENCRYPT_EAX: u32 = (1 << 1) | (1 << 3) | (1 << 4);

/// Emulated SEV-SNP.
#[derive(Debug)]
pub struct EmulatedSnp {
    tee: Arc<Mutex<EmulatedTee>>,
    platform: Arc<EmulatedSnpPlatform>,
    guest: EmulatedGuest<'static>,
    preload: Vec<(u64, Vec<u8>)>,
    digest: [u8; 48],
    layout: PspLayout,
    psp: OnceLock<Arc<SnpPsp>>,
    /// The PVALIDATE trap, once chosen ([`Self::with_tee_trap`]; else probed when the
    /// PSP is created).
    insn_trap: Option<InsnTrap>,
    /// Test equipment: VMM writes after the launch ([`Self::with_vmm_write_after_launch`]).
    late_writes: Vec<(u64, Vec<u8>)>,
    /// What SNP_LAUNCH_UPDATE puts into private memory, per range (without the VMSAs,
    /// secrets and CPUID pages, which the PSP fills).
    launch_pages: Arc<Vec<(u64, LaunchSource)>>,
}

/// The contents one launch range gets, as SNP_LAUNCH_UPDATE copies them.
#[derive(Debug, Clone)]
enum LaunchSource {
    /// The plan's bytes (NORMAL pages: firmware, hashes table): what the KVM backend
    /// passes as the source.
    Data(Vec<u8>),
    /// ZERO pages of this length: the PSP zero-fills them.
    Zero(u64),
    /// UNMEASURED pages of this length: whatever the VMM placed there.
    Keep(u64),
}

/// Where the plan puts the PSP's pages and what it assigns.
pub fn psp_layout(plan: &SnpLaunchPlan) -> PspLayout {
    let mut layout = PspLayout {
        launched: Vec::new(),
        secrets: None,
        cpuid: None,
    };
    for u in plan.updates() {
        match u.page_type {
            PageType::Vmsa => continue,
            PageType::Secrets => layout.secrets = Some(u.gpa),
            PageType::Cpuid => layout.cpuid = Some(u.gpa),
            _ => {}
        }
        layout.launched.push((u.gpa, u.len()));
    }
    layout
}

impl EmulatedSnp {
    /// Launches `plan` on the emulated platform in `dir` with `policy` and
    /// `host_data`; `preload` are the plan's pages the VMM places itself.
    pub fn launch(
        dir: &Path,
        plan: &SnpLaunchPlan,
        policy: u64,
        host_data: [u8; 32],
        preload: Vec<(u64, Vec<u8>)>,
    ) -> Result<Self, EmulatedLaunchError> {
        let (tee, digest) = EmulatedTee::launch_snp(dir, plan, policy, host_data)?;
        let EmulatedTee::Snp { platform, guest } = &tee else {
            return Err(EmulatedLaunchError::Refused("not an SNP launch".into()));
        };
        let (platform, guest) = (platform.clone(), guest.clone());
        Ok(Self {
            tee: Arc::new(Mutex::new(tee)),
            platform,
            guest,
            preload,
            digest,
            layout: psp_layout(plan),
            psp: OnceLock::new(),
            insn_trap: None,
            late_writes: Vec::new(),
            launch_pages: Arc::new(launch_pages(plan)),
        })
    }

    /// Chooses the PVALIDATE trap now (`--tee-trap`; [`TeeTrap::Auto`] probes the host
    /// once, [`crate::tee::trap`]). The CLI calls it before entering a jail.
    pub fn with_tee_trap(mut self, trap: TeeTrap) -> Self {
        self.insn_trap = Some(trap.resolve());
        self
    }

    /// The PVALIDATE trap the firmware is told to use.
    pub fn insn_trap(&self) -> InsnTrap {
        self.insn_trap.unwrap_or_else(trap::host_insn_trap)
    }

    /// **Test equipment (the private-memory contract):** after the launch and before
    /// any vCPU runs, the VMM writes `bytes` at `gpa` through its own view, as a buggy
    /// or hostile VMM would. Private memory must not change for the guest.
    #[doc(hidden)]
    pub fn with_vmm_write_after_launch(mut self, gpa: u64, bytes: Vec<u8>) -> Self {
        self.late_writes.push((gpa, bytes));
        self
    }

    /// The software PSP, once the launch created it.
    pub fn psp(&self) -> Option<&Arc<SnpPsp>> {
        self.psp.get()
    }
}

/// What SNP_LAUNCH_UPDATE puts where, for the private-memory contract.
fn launch_pages(plan: &SnpLaunchPlan) -> Vec<(u64, LaunchSource)> {
    plan.updates()
        .filter_map(|u| {
            let source = match (u.page_type, u.contents) {
                (PageType::Vmsa | PageType::Secrets | PageType::Cpuid, _) => return None,
                (_, UpdateContents::Data(d)) => LaunchSource::Data(d.to_vec()),
                (PageType::Zero, UpdateContents::Absent { .. }) => LaunchSource::Zero(u.len()),
                (_, UpdateContents::Absent { .. }) => LaunchSource::Keep(u.len()),
            };
            Some((u.gpa, source))
        })
        .collect()
}

/// A failure of the emulated launch's private memory.
fn cc_err(what: &'static str) -> impl FnOnce(CcMemoryError) -> TeeError {
    move |e| TeeError::Emulated(EmulatedLaunchError::PrivateMemory(what, Box::new(e)))
}

/// The CPUID page contents (SNP CPUID table) for `cpuid`: every non-empty leaf. Refused
/// beyond 64 entries (the table's capacity), as QEMU does, instead of dropping leaves.
pub fn cpuid_page(cpuid: &CpuId) -> Result<Vec<u8>, EmulatedLaunchError> {
    let entries: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.eax | e.ebx | e.ecx | e.edx != 0 || e.function == 0)
        .copied()
        .collect();
    if entries.len() > super::launch::SNP_CPUID_MAX {
        return Err(EmulatedLaunchError::Refused(
            format!(
                "{} CPUID entries do not fit the SNP CPUID page (64)",
                entries.len()
            )
            .into(),
        ));
    }
    super::launch::snp_cpuid_table(&entries).map_err(|e| EmulatedLaunchError::Refused(Box::new(e)))
}

impl EmulatedSnp {
    /// The launch under the contract (module docs): every page the hypervisor's until
    /// SNP_LAUNCH_UPDATE adds it, then the plan's ranges private and validated from the
    /// plan's bytes. The PSP adds the secrets and CPUID pages; the caller seals.
    fn launch_private_memory(&self, cc: &Arc<CcMemory>) -> Result<(), TeeError> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        // 2 MiB validation as before the contract (a host with huge-page private memory).
        cc.set_largest_private_page(PageSize::Size2M);
        for r in cc.vmm_memory().iter() {
            cc.launch_shared(r.start_addr().0, r.len())
                .map_err(cc_err("making the hypervisor's pages shared"))?;
        }
        for (gpa, source) in self.launch_pages.iter() {
            match source {
                LaunchSource::Data(d) => cc.launch_private_with(*gpa, d),
                LaunchSource::Zero(len) => cc.launch_private_with(*gpa, &vec![0; *len as usize]),
                LaunchSource::Keep(len) => cc.launch_private(*gpa, *len),
            }
            .map_err(cc_err("adding a launch range to private memory"))?;
        }
        Ok(())
    }
}

impl TeeBackend for EmulatedSnp {
    fn kind(&self) -> TeeKind {
        TeeKind::EmulatedSnp
    }

    fn vm_type(&self) -> VmType {
        VmType::EmulatedConfidential(CcConfig {
            tee: CcTee::Snp,
            alias_bit: Some(u32::from(CBIT)),
        })
    }

    fn preload(&self) -> &[(u64, Vec<u8>)] {
        // The launch copies the plan's pages into private memory itself; the VMM's copy
        // (the same bytes) only reaches the shared view before the launch.
        &self.preload
    }

    fn devices(&self, _mem: &GuestMemoryMmap) -> Vec<TeeDevice> {
        vec![TeeDevice {
            name: "emulated-snp-trap-events",
            base: *crate::vstate::vcpu::TRAP_PORTS.start(),
            len: 8,
            device: Arc::new(Mutex::new(emu_snp::TrapEvents)),
        }]
    }

    fn adjust_cpuid(&self, cpuid: &mut CpuId) {
        // The guest sees the SNP leaf of the emulated platform (the firmware checks it
        // against the CPUID page the PSP "checked").
        sanitize_cpuid(cpuid, true, false);
        let mut found = false;
        for e in cpuid.as_mut_slice() {
            if e.function == LEAF_AMD_MEM_ENCRYPT {
                e.eax = MEM_ENCRYPT_EAX;
                e.ebx = u32::from(CBIT);
                e.ecx = 1;
                e.edx = 1;
                found = true;
            }
            if e.function == 0x8000_0000 && e.eax < LEAF_AMD_MEM_ENCRYPT {
                e.eax = LEAF_AMD_MEM_ENCRYPT;
            }
        }
        if !found {
            let mut v = cpuid.as_slice().to_vec();
            v.push(kvm_cpuid_entry2 {
                function: LEAF_AMD_MEM_ENCRYPT,
                eax: MEM_ENCRYPT_EAX,
                ebx: u32::from(CBIT),
                ecx: 1,
                edx: 1,
                ..Default::default()
            });
            if let Ok(c) = CpuId::from_entries(&v) {
                *cpuid = c;
            }
        }
    }

    fn virtio_access_platform(&self) -> bool {
        false
    }

    fn before_vcpus<'v>(
        &self,
        vm: &'v Vm,
        cpuid: &CpuId,
    ) -> Result<Box<dyn PendingLaunch + 'v>, TeeError> {
        let table = cpuid_page(cpuid)?;
        let Some(cc) = vm.cc_memory() else {
            return Err(TeeError::Emulated(EmulatedLaunchError::PrivateMemory(
                "the VM has no private-memory contract",
                "emulated SNP needs VmType::EmulatedConfidential".into(),
            )));
        };
        self.launch_private_memory(cc)?;
        let psp = SnpPsp::new(
            vm.memory().clone(),
            Some(cc.clone()),
            self.guest.clone(),
            self.platform.clone(),
            &self.layout,
            &table,
        )
        .map_err(|e| EmulatedLaunchError::Refused(Box::new(e)))?
        .with_insn_trap(self.insn_trap());
        psp.set_guest_cpuid(cpuid);
        cc.finish_launch()
            .map_err(cc_err("sealing private memory"))?;
        vm.enable_user_msr_exits(&[emu_snp::ghcb::MSR_GHCB, emu_snp::ghcb::MSR_SEV_STATUS])
            .map_err(|e| EmulatedLaunchError::Refused(Box::new(e)))?;
        let _ = self.psp.set(Arc::new(psp));
        for (gpa, bytes) in &self.late_writes {
            let _ = vm
                .memory()
                .write_slice(bytes, vm_memory::GuestAddress(*gpa));
        }
        Ok(Box::new(NoLaunch))
    }

    fn runtime(
        &self,
        _vm: &Arc<Vm>,
        _seccomp: SeccompMode,
    ) -> Result<Option<TeeRuntime>, TeeError> {
        Ok(self.psp.get().map(|p| TeeRuntime {
            exits: p.clone(),
            threads: Vec::new(),
            vcpu_thread: crate::seccomp::ThreadKind::EmulatedTeeVcpu,
        }))
    }

    fn attach_buses(&self, buses: &Arc<crate::devices::Buses>) {
        if let Some(psp) = self.psp.get() {
            psp.set_ports(Arc::new(emu_snp::BusPorts(buses.clone())));
        }
    }

    fn evidence_source(&self) -> Option<Arc<dyn super::evidence_vsock::EvidenceSource>> {
        Some(self.tee.clone())
    }

    fn measurement(&self) -> ExpectedMeasurement {
        ExpectedMeasurement {
            tee: TeeKind::EmulatedSnp,
            digest: Some(self.digest),
            rtmrs: None,
        }
    }
}
