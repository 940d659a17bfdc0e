//! The [`TeeBackend`] trait: everything the VMM asks of a TEE, in launch order.
//!
//! One backend value describes one launch and owns what it needs (`Arc`s, files,
//! plans; no borrowed lifetimes). The VMM builder ([`crate::vmm::VmBuilder`]) calls it
//! in this order:
//!
//! 1. [`TeeBackend::vm_type`]: the KVM VM type and interrupt wiring;
//! 2. [`TeeBackend::preload`]: launch-plan pages the VMM places in guest memory;
//! 3. [`TeeBackend::devices`]: port-I/O devices the TEE adds (emulated SNP's trap-event
//!    ports, emulated TDX's plain-handoff port);
//! 4. [`TeeBackend::acpi`]: ACPI additions (the CCEL table of TD guests);
//! 5. [`TeeBackend::adjust_cpuid`]: what the guest's CPUID hides or shows;
//! 6. [`TeeBackend::before_vcpus`]: VM-level launch commands (SNP LAUNCH_START, TDX
//!    INIT_VM), returning a [`PendingLaunch`] whose [`PendingLaunch::after_vcpus`] runs
//!    the per-vCPU and memory commands once the vCPUs exist (SNP LAUNCH_UPDATE/FINISH,
//!    TDX INIT_VCPU/INIT_MEM_REGION/FINALIZE_VM);
//! 7. [`TeeBackend::runtime`]: the run-time exit handlers ([`ExitHandler`]: memory
//!    faults, MapGPA, TDX VMCALLs, SNP certificates, and hooks for other forwarded
//!    hypercalls, user-space MSR exits and internal-error exits — an instruction KVM
//!    cannot emulate, such as `tdcall` or `pvalidate` on a plain VM) and the threads
//!    that serve them.
//!
//! [`TeeBackend::virtio_access_platform`] and [`TeeBackend::measurement`] are queried
//! when devices are attached and when the launch is logged / the API answers.
//!
//! Defaults exist only where "nothing" is the right answer for a TEE that does not
//! override them (no extra devices, no ACPI additions, no launch commands, no run-time
//! handlers).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use super::emulated::{EmulatedLaunchError, Rtmrs};
use super::launch::LaunchStepError;
use super::TeeKind;
use crate::acpi::Ccel;
use crate::devices::PioDevice;
use crate::seccomp::SeccompMode;
pub use crate::vstate::vcpu::{ExitHandler, Handled};
use crate::vstate::vm::{IrqChip, Vm};

/// The KVM VM a backend needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmType {
    /// A default-type VM with an in-kernel irqchip and shared memory only.
    Default,
    /// A confidential VM of KVM type `kvm_type` with private (guest_memfd) memory.
    Confidential {
        /// KVM_CREATE_VM type (4 = SEV-SNP, 5 = TDX).
        kvm_type: u64,
        /// How interrupts are wired.
        irqchip: IrqChip,
    },
    /// A default-type VM whose memory keeps the private-memory contract in software
    /// ([`crate::vstate::cc_memory::CcMemory`]): an emulated SNP or TDX guest.
    EmulatedConfidential(crate::vstate::cc_memory::CcConfig),
}

/// A port-I/O device a backend adds.
pub struct TeeDevice {
    /// What it is (for the log).
    pub name: &'static str,
    /// First port.
    pub base: u16,
    /// Number of ports.
    pub len: u16,
    /// The device.
    pub device: Arc<Mutex<dyn PioDevice>>,
}

impl std::fmt::Debug for TeeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TeeDevice({} at {:#x}+{})",
            self.name, self.base, self.len
        )
    }
}

/// ACPI tables a backend adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcpiAdditions {
    /// The CC event log table (TD guests).
    pub ccel: Option<Ccel>,
}

/// What the launch is expected to measure, as the launch log and the control API
/// (`GET /v1/vm/measurement`) report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedMeasurement {
    /// The TEE.
    pub tee: TeeKind,
    /// SNP launch digest or TDX MRTD (`None`: nothing is measured).
    pub digest: Option<[u8; 48]>,
    /// TDX: the RTMRs expected once the firmware measured the boot.
    pub rtmrs: Option<Rtmrs>,
}

impl ExpectedMeasurement {
    /// Whether the evidence comes from an emulated (insecure) TEE.
    pub fn insecure_emulated(&self) -> bool {
        matches!(self.tee, TeeKind::EmulatedSnp | TeeKind::EmulatedTdx)
    }

    /// The JSON the control API answers.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tee": self.tee.to_string(),
            "measurement": self.digest.map(hex::encode),
            "insecure_emulated": self.insecure_emulated(),
        })
    }

    /// The digest in hex, or `none`.
    pub fn digest_hex(&self) -> String {
        self.digest
            .map(hex::encode)
            .unwrap_or_else(|| "none".into())
    }

    /// `rtmr0=… rtmr1=…`, or `n/a`.
    pub fn rtmrs_summary(&self) -> String {
        self.rtmrs
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(i, v)| format!("rtmr{i}={}", hex::encode(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| "n/a".into())
    }
}

/// What the launch commands did (for the log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaunchReport {
    /// Pages added or updated by the launch.
    pub pages: u64,
    /// Pages measured.
    pub measured: u64,
}

/// The run-time side of a backend: the exit handler the vCPUs call and the threads
/// serving it (ended when the handler is dropped).
pub struct TeeRuntime {
    /// The handler every vCPU thread calls.
    pub exits: Arc<dyn ExitHandler>,
    /// Worker threads (e.g. the TDX quote thread).
    pub threads: Vec<JoinHandle<()>>,
    /// The seccomp filter of the vCPU threads: what the handler does on them
    /// (conversions for a real SNP/TDX guest, register writes for an emulated TEE).
    pub vcpu_thread: crate::seccomp::ThreadKind,
}

impl std::fmt::Debug for TeeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TeeRuntime({} threads)", self.threads.len())
    }
}

/// Why a backend step failed.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    /// A step of the SEV-SNP or TDX launch failed.
    #[error("confidential launch failed")]
    Launch(#[from] LaunchStepError),
    /// The emulated launch failed.
    #[error("emulated launch refused")]
    Emulated(#[from] EmulatedLaunchError),
    /// A service thread could not be started.
    #[error("cannot start the {0} thread")]
    Thread(&'static str, #[source] std::io::Error),
}

/// The launch commands that run once the vCPUs exist.
pub trait PendingLaunch {
    /// Runs them; `vcpus` are the vCPUs in index order, `cpuid` what they were given.
    fn after_vcpus(
        self: Box<Self>,
        vm: &Vm,
        vcpus: &[&VcpuFd],
        cpuid: &CpuId,
    ) -> Result<LaunchReport, TeeError>;
}

/// No launch commands (plain and emulated VMs).
#[derive(Debug)]
pub struct NoLaunch;

impl PendingLaunch for NoLaunch {
    fn after_vcpus(
        self: Box<Self>,
        _vm: &Vm,
        _vcpus: &[&VcpuFd],
        _cpuid: &CpuId,
    ) -> Result<LaunchReport, TeeError> {
        Ok(LaunchReport::default())
    }
}

/// A TEE as the VMM sees it; the methods are listed in launch order (module docs).
pub trait TeeBackend: Send + Sync + std::fmt::Debug {
    /// Which TEE this is.
    fn kind(&self) -> TeeKind;

    /// The KVM VM type and interrupt wiring.
    fn vm_type(&self) -> VmType;

    /// Pages of the launch plan the VMM places in guest memory before the launch
    /// (the kernel hashes table), as (GPA, bytes).
    fn preload(&self) -> &[(u64, Vec<u8>)];

    /// Port-I/O devices the TEE adds, reading and writing `mem`.
    fn devices(&self, _mem: &GuestMemoryMmap) -> Vec<TeeDevice> {
        Vec::new()
    }

    /// ACPI tables the TEE adds.
    fn acpi(&self) -> AcpiAdditions {
        AcpiAdditions::default()
    }

    /// Adjusts the host-supported CPUID every vCPU gets.
    fn adjust_cpuid(&self, cpuid: &mut CpuId);

    /// Whether virtio devices must require VIRTIO_F_ACCESS_PLATFORM (the guest's
    /// memory is private and its DMA goes through shared bounce buffers).
    fn virtio_access_platform(&self) -> bool;

    /// VM-level launch commands, before any vCPU exists; `cpuid` is what the vCPUs
    /// will get.
    fn before_vcpus<'v>(
        &self,
        _vm: &'v Vm,
        _cpuid: &CpuId,
    ) -> Result<Box<dyn PendingLaunch + 'v>, TeeError> {
        Ok(Box::new(NoLaunch))
    }

    /// The run-time exit handler and its threads, once the launch is done (`None`: the
    /// guest makes no TEE-specific exits).
    fn runtime(
        &self,
        _vm: &Arc<Vm>,
        _seccomp: SeccompMode,
    ) -> Result<Option<TeeRuntime>, TeeError> {
        Ok(None)
    }

    /// The VMM's device buses, once built (before any vCPU runs): for a backend whose
    /// exit handler performs port I/O for the guest (the emulated SNP hypervisor's GHCB
    /// IOIO exits, emulated TDX's TDVMCALL<Instruction.IO>). Default: not needed.
    fn attach_buses(&self, _bus: &Arc<crate::devices::Buses>) {}

    /// The evidence service a Linux guest reaches over vsock
    /// ([`super::evidence_vsock`]): only the emulated TEEs offer one. Default: none (the
    /// port is refused).
    fn evidence_source(&self) -> Option<Arc<dyn super::evidence_vsock::EvidenceSource>> {
        None
    }

    /// What the launch is expected to measure.
    fn measurement(&self) -> ExpectedMeasurement;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tee::emulated_snp::EmulatedSnp;
    use crate::tee::emulated_tdx::EmulatedTdx;
    use crate::tee::kvm_snp::KvmSnpBackend;
    use crate::tee::kvm_tdx::KvmTdxBackend;
    use crate::tee::launch::{SnpLaunch, TdxLaunch};
    use crate::tee::none::NoTee;
    use crate::vstate::vcpu::{LEAF_AMD_MEM_ENCRYPT, LEAF_TDX};
    use kvm_bindings::kvm_cpuid_entry2;
    use measured_boot::snp::{SnpLaunchPlan, SnpPlanConfig};
    use measured_boot::tdx::TdxLaunchPlan;
    use measured_boot::FirmwareImage;

    /// A CPUID with the SEV and TDX leaves set.
    fn cpuid() -> CpuId {
        let leaf = |function| kvm_cpuid_entry2 {
            function,
            eax: 0xff,
            ebx: 0xff,
            ..Default::default()
        };
        CpuId::from_entries(&[leaf(0), leaf(LEAF_AMD_MEM_ENCRYPT), leaf(LEAF_TDX)]).unwrap()
    }

    /// (SEV leaf visible, TDX leaf visible) after `b` adjusted the CPUID.
    fn visible_leaves(b: &dyn TeeBackend) -> (bool, bool) {
        let mut c = cpuid();
        b.adjust_cpuid(&mut c);
        let shown = |f| {
            c.as_slice()
                .iter()
                .any(|e| e.function == f && (e.eax | e.ebx) != 0)
        };
        assert!(shown(0), "an ordinary leaf stays");
        (shown(LEAF_AMD_MEM_ENCRYPT), shown(LEAF_TDX))
    }

    /// A synthetic firmware in the OVMF layout (SEV and TDVF metadata) that both launch
    /// plans accept.
    fn firmware() -> Vec<u8> {
        measured_boot::testing::emulated_guest_image(&[0xF4])
    }

    fn snp_plan(fw: &[u8]) -> SnpLaunchPlan {
        let config = SnpPlanConfig {
            vcpus: 1,
            vcpu_sig: measured_boot::snp::cpu::sig_by_name("EPYC-v4").unwrap(),
            guest_features: 1,
            vmm_type: measured_boot::snp::vmsa::VmmType::Qemu,
            hashes: None,
        };
        SnpLaunchPlan::new(FirmwareImage::parse(fw.to_vec()).unwrap(), config).unwrap()
    }

    #[test]
    fn the_plain_backend_is_a_default_vm_that_hides_every_tee() {
        let b = NoTee::new(vec![(0xC000, vec![1; 4096])]);
        assert_eq!(b.vm_type(), VmType::Default);
        assert!(!b.virtio_access_platform());
        assert_eq!(visible_leaves(&b), (false, false));
        assert_eq!(b.acpi(), AcpiAdditions::default());
        assert!(b.devices(&GuestMemoryMmap::default()).is_empty());
        assert_eq!(b.preload().len(), 1);
        let m = b.measurement().to_json();
        assert_eq!(m["tee"], "none");
        assert!(m["measurement"].is_null());
        assert_eq!(m["insecure_emulated"], false);
    }

    #[test]
    fn kvm_backends_ask_for_their_vm_type_cpuid_and_access_platform() {
        let fw = firmware();
        let plan = snp_plan(&fw);
        let digest = plan.launch_digest();
        let snp = KvmSnpBackend::new(
            SnpLaunch {
                plan,
                policy: 0x30000,
                host_data: [0; 32],
                id: None,
                sev: std::fs::File::open("/dev/null").unwrap(),
                certs: None,
            },
            Vec::new(),
        );
        assert_eq!(
            snp.vm_type(),
            VmType::Confidential {
                kvm_type: 4,
                irqchip: IrqChip::Full
            }
        );
        assert!(snp.virtio_access_platform());
        assert_eq!(visible_leaves(&snp), (true, false));
        assert_eq!(snp.acpi().ccel, None);
        assert_eq!(snp.measurement().digest, Some(digest));
        assert_eq!(snp.measurement().to_json()["insecure_emulated"], false);

        let plan = TdxLaunchPlan::new(FirmwareImage::parse(fw).unwrap(), None).unwrap();
        let mrtd = plan.mrtd();
        let tdx = KvmTdxBackend::new(TdxLaunch {
            plan,
            config: Default::default(),
            memory: 1 << 30,
            qgs: None,
        });
        assert_eq!(
            tdx.vm_type(),
            VmType::Confidential {
                kvm_type: 5,
                irqchip: IrqChip::Split
            }
        );
        assert!(tdx.virtio_access_platform());
        assert_eq!(visible_leaves(&tdx), (false, true));
        assert_eq!(tdx.acpi().ccel, Some(Ccel::TDX_FIRMWARE));
        assert!(
            tdx.preload().is_empty(),
            "INIT_MEM_REGION adds the sections"
        );
        let m = tdx.measurement();
        assert_eq!((m.tee, m.digest), (TeeKind::Tdx, Some(mrtd)));
        assert!(m.rtmrs.is_some());
    }

    #[test]
    fn emulated_backends_have_no_mailbox_device_and_say_they_are_insecure() {
        let fw = firmware();
        let dir = tempfile::tempdir().unwrap();
        attestation::snp::emulated::EmulatedSnpPlatform::create(dir.path()).unwrap();
        attestation::tdx::emulated::EmulatedTdxPlatform::create(dir.path()).unwrap();
        let mem = crate::vstate::memory::create(64 << 20, &fw).unwrap();

        let plan = snp_plan(&fw);
        let snp = EmulatedSnp::launch(dir.path(), &plan, 0x30000, [0; 32], vec![]).unwrap();
        let tdx = EmulatedTdx::launch(dir.path(), fw, Default::default(), None).unwrap();
        for (b, tee) in [
            (&snp as &dyn TeeBackend, TeeKind::EmulatedSnp),
            (&tdx, TeeKind::EmulatedTdx),
        ] {
            assert_eq!(b.kind(), tee);
            // Emulated TDX and SNP keep the private-memory contract (the shared bit /
            // C-bit, 47, is the alias; TDX only where the host allows it).
            match tee {
                TeeKind::EmulatedSnp => assert_eq!(
                    b.vm_type(),
                    VmType::EmulatedConfidential(crate::vstate::cc_memory::CcConfig {
                        tee: crate::vstate::cc_memory::CcTee::Snp,
                        alias_bit: Some(47),
                    }),
                    "{tee}"
                ),
                TeeKind::EmulatedTdx => assert!(
                    matches!(
                        b.vm_type(),
                        VmType::EmulatedConfidential(crate::vstate::cc_memory::CcConfig {
                            tee: crate::vstate::cc_memory::CcTee::Tdx,
                            ..
                        })
                    ),
                    "{tee}"
                ),
                _ => assert_eq!(b.vm_type(), VmType::Default, "{tee}"),
            }
            assert!(!b.virtio_access_platform(), "{tee}");
            // Emulated SNP and TDX show their leaves (the firmware runs its real SNP /
            // TDX code: CPUID 0x8000001F with SEV_STATUS, CPUID 0x21).
            let leaves = (tee == TeeKind::EmulatedSnp, tee == TeeKind::EmulatedTdx);
            assert_eq!(visible_leaves(b), leaves, "{tee}");
            let devices = b.devices(&mem);
            // Emulated SNP has only the trap-event device at the emulator-trap ports;
            // emulated TDX (no staged plain handoff) none. Nothing sits at the former
            // paravirtual mailbox (0xE00..0xE0C): evidence takes the hardware's paths.
            let names: Vec<_> = devices.iter().map(|d| d.name).collect();
            let want: &[&str] = if leaves.0 {
                &["emulated-snp-trap-events"]
            } else {
                &[]
            };
            assert_eq!(names, want, "{tee}");
            for d in &devices {
                let ports = d.base..d.base + d.len;
                assert!(
                    !(0xE00..0xE0C).any(|p| ports.contains(&p)),
                    "{tee}: {} covers the old mailbox ports",
                    d.name
                );
            }
            let m = b.measurement();
            assert!(m.insecure_emulated());
            assert_eq!(m.to_json()["insecure_emulated"], true);
            assert_eq!(m.to_json()["measurement"], hex::encode(m.digest.unwrap()));
        }
        assert_eq!(snp.measurement().digest, Some(plan.launch_digest()));
        assert_eq!(tdx.acpi().ccel, Some(Ccel::TDX_FIRMWARE));
        assert_eq!(snp.acpi().ccel, None);
    }
}
