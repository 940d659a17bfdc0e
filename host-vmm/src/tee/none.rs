//! The `none` backend: a plain, unencrypted KVM guest for development. Nothing is
//! measured; the VMM still places the kernel hashes table where an SNP launch would
//! put it, because the firmware checks the staged kernel against it.

use kvm_bindings::CpuId;

use super::backend::{ExpectedMeasurement, TeeBackend, VmType};
use super::TeeKind;
use crate::vstate::vcpu::sanitize_cpuid;

/// No TEE.
#[derive(Debug, Default)]
pub struct NoTee {
    preload: Vec<(u64, Vec<u8>)>,
}

impl NoTee {
    /// A plain guest whose VMM places `preload` (the kernel hashes table, if a kernel
    /// is staged) in guest memory.
    pub fn new(preload: Vec<(u64, Vec<u8>)>) -> Self {
        Self { preload }
    }
}

impl TeeBackend for NoTee {
    fn kind(&self) -> TeeKind {
        TeeKind::None
    }

    fn vm_type(&self) -> VmType {
        VmType::Default
    }

    fn preload(&self) -> &[(u64, Vec<u8>)] {
        &self.preload
    }

    fn adjust_cpuid(&self, cpuid: &mut CpuId) {
        sanitize_cpuid(cpuid, false, false);
    }

    fn virtio_access_platform(&self) -> bool {
        false
    }

    fn measurement(&self) -> ExpectedMeasurement {
        ExpectedMeasurement {
            tee: TeeKind::None,
            digest: None,
            rtmrs: None,
        }
    }
}
