//! Fuzzes the firmware footer table, SEV and TDVF metadata parsers and the plan
//! builders on arbitrary images.
#![no_main]

use libfuzzer_sys::fuzz_target;
use measured_boot::snp::{vmsa::VmmType, SnpLaunchPlan, SnpPlanConfig};
use measured_boot::tdx::TdxLaunchPlan;
use measured_boot::FirmwareImage;

fuzz_target!(|data: &[u8]| {
    // Round the input up to whole pages so the size check does not hide the parsers.
    let mut img = data.to_vec();
    img.resize(data.len().div_ceil(4096).max(1) * 4096, 0);
    // Keep the tail (where the footer table lives) at the end of the image.
    if data.len() >= 64 {
        let n = img.len();
        img[n - 64..].copy_from_slice(&data[data.len() - 64..]);
    }
    let Ok(fw) = FirmwareImage::parse(img) else { return };
    let _ = fw.sev_metadata();
    let _ = fw.tdx_metadata();
    let config = SnpPlanConfig { vcpus: 2, vcpu_sig: 0x800f12, guest_features: 1, vmm_type: VmmType::Qemu, hashes: None };
    if let Ok(plan) = SnpLaunchPlan::new(fw.clone(), config) {
        let _ = plan.launch_digest();
    }
    if let Ok(plan) = TdxLaunchPlan::new(fw, None) {
        let _ = plan.mrtd();
    }
});
