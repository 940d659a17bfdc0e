//! The KVM SEV-SNP backend (Linux >= 6.11): a `KVM_X86_SNP_VM` with private memory,
//! the launch sequence of [`super::launch`] (SEV_INIT2 and LAUNCH_START before the
//! vCPUs; VMSA state, CPUID page, LAUNCH_UPDATE and LAUNCH_FINISH after them), and the
//! run-time handler of [`super::runtime`].

use std::sync::Arc;

use kvm_bindings::{CpuId, KVM_X86_SNP_VM};
use kvm_ioctls::VcpuFd;

use super::backend::{
    ExpectedMeasurement, LaunchReport, PendingLaunch, TeeBackend, TeeError, TeeRuntime, VmType,
};
use super::launch::{self as cc, SnpLaunch};
use super::runtime::CcRuntime;
use super::snp::{SnpLauncher, Started};
use super::TeeKind;
use crate::seccomp::SeccompMode;
use crate::vstate::sev::KvmSev;
use crate::vstate::vcpu::sanitize_cpuid;
use crate::vstate::vm::{IrqChip, Vm};

/// A real SEV-SNP launch.
#[derive(Debug)]
pub struct KvmSnpBackend {
    launch: Arc<SnpLaunch>,
    preload: Vec<(u64, Vec<u8>)>,
}

impl KvmSnpBackend {
    /// `launch` with `preload`, the plan's pages the VMM places itself.
    pub fn new(launch: SnpLaunch, preload: Vec<(u64, Vec<u8>)>) -> Self {
        Self {
            launch: Arc::new(launch),
            preload,
        }
    }
}

struct SnpPending<'v> {
    launcher: SnpLauncher<Started, KvmSev<'v>>,
    launch: Arc<SnpLaunch>,
}

impl PendingLaunch for SnpPending<'_> {
    fn after_vcpus(
        self: Box<Self>,
        vm: &Vm,
        vcpus: &[&VcpuFd],
        cpuid: &CpuId,
    ) -> Result<LaunchReport, TeeError> {
        let l = &self.launch;
        let pages = cc::snp_complete(self.launcher, vm, vcpus, cpuid, l)?;
        tracing::info!(event = "measurement", tee = "snp", pages, digest = %hex::encode(l.plan.launch_digest()), "SNP_LAUNCH_FINISH done; the PSP measured the launch");
        Ok(LaunchReport {
            pages,
            measured: pages,
        })
    }
}

impl TeeBackend for KvmSnpBackend {
    fn kind(&self) -> TeeKind {
        TeeKind::Snp
    }

    fn vm_type(&self) -> VmType {
        VmType::Confidential {
            kvm_type: u64::from(KVM_X86_SNP_VM),
            irqchip: IrqChip::Full,
        }
    }

    fn preload(&self) -> &[(u64, Vec<u8>)] {
        &self.preload
    }

    fn adjust_cpuid(&self, cpuid: &mut CpuId) {
        sanitize_cpuid(cpuid, true, false);
    }

    fn virtio_access_platform(&self) -> bool {
        true
    }

    fn before_vcpus<'v>(
        &self,
        vm: &'v Vm,
        _cpuid: &CpuId,
    ) -> Result<Box<dyn PendingLaunch + 'v>, TeeError> {
        Ok(Box::new(SnpPending {
            launcher: cc::snp_begin(vm, &self.launch)?,
            launch: self.launch.clone(),
        }))
    }

    fn runtime(&self, vm: &Arc<Vm>, _seccomp: SeccompMode) -> Result<Option<TeeRuntime>, TeeError> {
        Ok(Some(TeeRuntime {
            exits: Arc::new(CcRuntime::snp(vm.clone(), self.launch.certs.clone())),
            threads: Vec::new(),
            vcpu_thread: crate::seccomp::ThreadKind::ConfidentialVcpu,
        }))
    }

    fn measurement(&self) -> ExpectedMeasurement {
        ExpectedMeasurement {
            tee: TeeKind::Snp,
            digest: Some(self.launch.plan.launch_digest()),
            rtmrs: None,
        }
    }
}
