//! The emulated TDX backend: a default KVM VM whose firmware is "measured" by the
//! software TDX module of the `attestation` crate; the guest extends RTMRs and asks for
//! quotes through the paravirtual mailbox ([`super::emulated`]). Insecure test
//! equipment.

use std::path::Path;
use std::sync::{Arc, Mutex};

use attestation::tdx::emulated::TdConfig;
use kvm_bindings::CpuId;
use measured_boot::tdx::DirectBoot;
use vm_memory::GuestMemoryMmap;

use super::backend::{AcpiAdditions, ExpectedMeasurement, TeeBackend, TeeDevice, VmType};
use super::emulated::{
    EmulatedLaunchError, EmulatedTee, Mailbox, Rtmrs, MAILBOX_LEN, MAILBOX_PORT,
};
use super::TeeKind;
use crate::acpi::Ccel;
use crate::vstate::vcpu::sanitize_cpuid;

/// Emulated TDX.
#[derive(Debug)]
pub struct EmulatedTdx {
    tee: Arc<Mutex<EmulatedTee>>,
    mrtd: [u8; 48],
    rtmrs: Rtmrs,
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
        let (tee, mrtd, rtmrs) = EmulatedTee::launch_tdx(dir, firmware, config, direct_boot)?;
        Ok(Self {
            tee: Arc::new(Mutex::new(tee)),
            mrtd,
            rtmrs,
        })
    }
}

impl TeeBackend for EmulatedTdx {
    fn kind(&self) -> TeeKind {
        TeeKind::EmulatedTdx
    }

    fn vm_type(&self) -> VmType {
        VmType::Default
    }

    fn preload(&self) -> &[(u64, Vec<u8>)] {
        // The TD HOB and sections are the firmware's own business in emulation.
        &[]
    }

    fn devices(&self, mem: &GuestMemoryMmap) -> Vec<TeeDevice> {
        vec![TeeDevice {
            name: "emulated-tee-mailbox",
            base: MAILBOX_PORT,
            len: MAILBOX_LEN,
            device: Arc::new(Mutex::new(Mailbox::shared(self.tee.clone(), mem.clone()))),
        }]
    }

    fn acpi(&self) -> AcpiAdditions {
        AcpiAdditions {
            ccel: Some(Ccel::TDX_FIRMWARE),
        }
    }

    fn adjust_cpuid(&self, cpuid: &mut CpuId) {
        sanitize_cpuid(cpuid, false, false);
    }

    fn virtio_access_platform(&self) -> bool {
        false
    }

    fn measurement(&self) -> ExpectedMeasurement {
        ExpectedMeasurement {
            tee: TeeKind::EmulatedTdx,
            digest: Some(self.mrtd),
            rtmrs: Some(self.rtmrs),
        }
    }
}
