//! The emulated SEV-SNP backend: a default KVM VM whose launch plan is fed to the
//! software secure processor of the `attestation` crate; the guest asks it for evidence
//! through the paravirtual mailbox ([`super::emulated`]). Insecure test equipment.

use std::path::Path;
use std::sync::{Arc, Mutex};

use kvm_bindings::CpuId;
use measured_boot::snp::SnpLaunchPlan;
use vm_memory::GuestMemoryMmap;

use super::backend::{ExpectedMeasurement, TeeBackend, TeeDevice, VmType};
use super::emulated::{EmulatedLaunchError, EmulatedTee, Mailbox, MAILBOX_LEN, MAILBOX_PORT};
use super::TeeKind;
use crate::vstate::vcpu::sanitize_cpuid;

/// Emulated SEV-SNP.
#[derive(Debug)]
pub struct EmulatedSnp {
    tee: Arc<Mutex<EmulatedTee>>,
    preload: Vec<(u64, Vec<u8>)>,
    digest: [u8; 48],
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
        Ok(Self {
            tee: Arc::new(Mutex::new(tee)),
            preload,
            digest,
        })
    }
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
        vec![TeeDevice {
            name: "emulated-tee-mailbox",
            base: MAILBOX_PORT,
            len: MAILBOX_LEN,
            device: Arc::new(Mutex::new(Mailbox::shared(self.tee.clone(), mem.clone()))),
        }]
    }

    fn adjust_cpuid(&self, cpuid: &mut CpuId) {
        // The guest is not encrypted: it must not see SEV leaves it cannot use.
        sanitize_cpuid(cpuid, false, false);
    }

    fn virtio_access_platform(&self) -> bool {
        false
    }

    fn measurement(&self) -> ExpectedMeasurement {
        ExpectedMeasurement {
            tee: TeeKind::EmulatedSnp,
            digest: Some(self.digest),
            rtmrs: None,
        }
    }
}
