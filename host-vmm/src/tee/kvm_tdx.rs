//! The KVM TDX backend (Linux >= 6.16): a `KVM_X86_TDX_VM` with split irqchip and
//! private memory, the launch sequence of [`super::launch`] (CAPABILITIES and INIT_VM
//! before the vCPUs; INIT_VCPU, INIT_MEM_REGION with the TD HOB and FINALIZE_VM after
//! them), and the run-time handler of [`super::runtime`] with the QGS quote thread.

use std::sync::{Arc, OnceLock};

use kvm_bindings::{CpuId, KVM_X86_TDX_VM};
use kvm_ioctls::VcpuFd;
use vm_memory::Bytes;

use super::backend::{
    AcpiAdditions, ExpectedMeasurement, LaunchReport, PendingLaunch, TeeBackend, TeeError,
    TeeRuntime, VmType,
};
use super::launch::{self as cc, TdxLaunch};
use super::runtime::{self, CcRuntime};
use super::tdx::{TdxLauncher, VmInitialized};
use super::TeeKind;
use crate::acpi::Ccel;
use crate::seccomp::SeccompMode;
use crate::vstate::tdx::KvmTdx;
use crate::vstate::vcpu::sanitize_cpuid;
use crate::vstate::vm::{IrqChip, Vm};

/// A real TDX launch.
#[derive(Debug)]
pub struct KvmTdxBackend {
    launch: Arc<TdxLaunch>,
    /// GetTdVmCallInfo leaf-1 R11 (kernel, user) from KVM_TDX_CAPABILITIES.
    tdvmcall_info: OnceLock<(u64, u64)>,
}

impl KvmTdxBackend {
    /// The backend of `launch`.
    pub fn new(launch: TdxLaunch) -> Self {
        Self {
            launch: Arc::new(launch),
            tdvmcall_info: OnceLock::new(),
        }
    }
}

struct TdxPending<'v> {
    launcher: TdxLauncher<VmInitialized, KvmTdx<'v>>,
    launch: Arc<TdxLaunch>,
}

impl PendingLaunch for TdxPending<'_> {
    fn after_vcpus(
        self: Box<Self>,
        vm: &Vm,
        vcpus: &[&VcpuFd],
        _cpuid: &CpuId,
    ) -> Result<LaunchReport, TeeError> {
        let l = &self.launch;
        // The descriptor the VMM staged in the shared view: a TD reads it only from
        // private memory, so it is added with the TD_HOB section (bug 3).
        let mut descriptor = [0u8; crate::boot::DESCRIPTOR_SIZE];
        let _ = vm.memory().read_slice(
            &mut descriptor,
            vm_memory::GuestAddress(crate::boot::DESCRIPTOR_GPA),
        );
        let (pages, measured) = cc::tdx_complete(self.launcher, vcpus.to_vec(), l, &descriptor)?;
        tracing::info!(event = "measurement", tee = "tdx", pages, measured, mrtd = %hex::encode(l.plan.mrtd()), "KVM_TDX_FINALIZE_VM done; the TDX module measured the launch");
        Ok(LaunchReport { pages, measured })
    }
}

impl TeeBackend for KvmTdxBackend {
    fn kind(&self) -> TeeKind {
        TeeKind::Tdx
    }

    fn vm_type(&self) -> VmType {
        VmType::Confidential {
            kvm_type: u64::from(KVM_X86_TDX_VM),
            irqchip: IrqChip::Split,
        }
    }

    fn preload(&self) -> &[(u64, Vec<u8>)] {
        // The TDVF sections are added by INIT_MEM_REGION from the plan itself.
        &[]
    }

    fn acpi(&self) -> AcpiAdditions {
        AcpiAdditions {
            ccel: Some(Ccel::TDX_FIRMWARE),
        }
    }

    fn adjust_cpuid(&self, cpuid: &mut CpuId) {
        sanitize_cpuid(cpuid, false, true);
    }

    fn virtio_access_platform(&self) -> bool {
        true
    }

    fn before_vcpus<'v>(
        &self,
        vm: &'v Vm,
        cpuid: &CpuId,
    ) -> Result<Box<dyn PendingLaunch + 'v>, TeeError> {
        let launcher = cc::tdx_begin(vm, cpuid, &self.launch)?;
        if let Some(c) = launcher.caps() {
            let _ = self
                .tdvmcall_info
                .set((c.kernel_tdvmcallinfo_1_r11, c.user_tdvmcallinfo_1_r11));
        }
        Ok(Box::new(TdxPending {
            launcher,
            launch: self.launch.clone(),
        }))
    }

    fn runtime(&self, vm: &Arc<Vm>, seccomp: SeccompMode) -> Result<Option<TeeRuntime>, TeeError> {
        let r11 = self.tdvmcall_info.get().copied().unwrap_or((0, 0));
        let (calls, thread) = runtime::tdx_vmcalls(vm, self.launch.qgs.clone(), r11, seccomp)?;
        Ok(Some(TeeRuntime {
            exits: Arc::new(CcRuntime::tdx(vm.clone(), calls)),
            threads: thread.into_iter().collect(),
            vcpu_thread: crate::seccomp::ThreadKind::ConfidentialVcpu,
        }))
    }

    fn measurement(&self) -> ExpectedMeasurement {
        ExpectedMeasurement {
            tee: TeeKind::Tdx,
            digest: Some(self.launch.plan.mrtd()),
            rtmrs: Some(self.launch.plan.rtmrs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tee::fake::tdx::FakeKvmTdx;
    use measured_boot::tdx::TdxLaunchPlan;
    use measured_boot::FirmwareImage;

    /// A TD needs a split irqchip: KVM refuses KVM_CREATE_IRQCHIP for a TD
    /// (x86.c, `has_protected_eoi`) and TD vCPUs without an in-kernel local APIC
    /// (tdx.c `tdx_vcpu_create`). The backend asks for exactly that.
    #[test]
    fn the_td_gets_a_split_irqchip() {
        let fw = FirmwareImage::parse(measured_boot::testing::ovmf_like(0x20000)).unwrap();
        let b = KvmTdxBackend::new(TdxLaunch {
            plan: TdxLaunchPlan::new(fw, None).unwrap(),
            config: Default::default(),
            memory: 1 << 30,
            qgs: None,
        });
        let VmType::Confidential { kvm_type, irqchip } = b.vm_type() else {
            panic!("a TD is a confidential VM");
        };
        assert_eq!(kvm_type, u64::from(KVM_X86_TDX_VM));
        assert_eq!(irqchip, IrqChip::Split);
        // The fake holds KVM to the same rule: without one, no vCPU and no APIC bus
        // setting.
        let mut fake = FakeKvmTdx {
            split_irqchip: false,
            state: crate::tee::fake::tdx::TdState::Initialized,
            ..Default::default()
        };
        assert_eq!(fake.create_vcpus(1).unwrap_err().errno, libc::EINVAL);
    }
}
