//! The emulated SEV-SNP backend: a default KVM VM whose launch plan is fed to the
//! software secure processor of the `attestation` crate, and whose guest runs the same
//! SEV-SNP code as on hardware against the software PSP and hypervisor of
//! [`super::emu_snp`]: SEV_STATUS and the GHCB MSR through user-space MSR exits,
//! PVALIDATE through the internal-error exit, VMGEXIT through the emulator trap, the
//! secrets and CPUID pages where the launch puts them, and the C-bit (bit 47) through
//! alias memslots. Insecure test equipment.
//!
//! The paravirtual mailbox ([`super::emulated`]) is still attached for the test guest's
//! evidence until it uses the guest-request path; the firmware no longer uses it.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use attestation::snp::emulated::{EmulatedGuest, EmulatedSnpPlatform};
use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use measured_boot::snp::{PageType, SnpLaunchPlan};
use vm_memory::GuestMemoryMmap;

use super::backend::{
    ExpectedMeasurement, NoLaunch, PendingLaunch, TeeBackend, TeeDevice, TeeError, TeeRuntime,
    VmType,
};
use super::emu_snp::{self, PspLayout, SnpPsp, CBIT};
use super::emulated::{EmulatedLaunchError, EmulatedTee, Mailbox, MAILBOX_LEN, MAILBOX_PORT};
use super::trap::{self, InsnTrap, TeeTrap};
use super::TeeKind;
use crate::seccomp::SeccompMode;
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

    /// The software PSP, once the launch created it.
    pub fn psp(&self) -> Option<&Arc<SnpPsp>> {
        self.psp.get()
    }
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

impl TeeBackend for EmulatedSnp {
    fn kind(&self) -> TeeKind {
        TeeKind::EmulatedSnp
    }

    fn vm_type(&self) -> VmType {
        VmType::Default
    }

    fn preload(&self) -> &[(u64, Vec<u8>)] {
        &self.preload
    }

    fn devices(&self, mem: &GuestMemoryMmap) -> Vec<TeeDevice> {
        vec![
            TeeDevice {
                name: "emulated-snp-trap-events",
                base: *crate::vstate::vcpu::TRAP_PORTS.start(),
                len: 8,
                device: Arc::new(Mutex::new(emu_snp::TrapEvents)),
            },
            TeeDevice {
                name: "emulated-tee-mailbox",
                base: MAILBOX_PORT,
                len: MAILBOX_LEN,
                device: Arc::new(Mutex::new(Mailbox::shared(self.tee.clone(), mem.clone()))),
            },
        ]
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
        let psp = SnpPsp::new(
            vm.memory().clone(),
            self.guest.clone(),
            self.platform.clone(),
            &self.layout,
            &table,
        )
        .map_err(|e| EmulatedLaunchError::Refused(Box::new(e)))?
        .with_insn_trap(self.insn_trap());
        psp.set_guest_cpuid(cpuid);
        emu_snp::register_alias_slots(vm).map_err(|e| EmulatedLaunchError::Refused(Box::new(e)))?;
        vm.enable_user_msr_exits(&[emu_snp::ghcb::MSR_GHCB, emu_snp::ghcb::MSR_SEV_STATUS])
            .map_err(|e| EmulatedLaunchError::Refused(Box::new(e)))?;
        let _ = self.psp.set(Arc::new(psp));
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
