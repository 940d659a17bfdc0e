//! Fuzzes the firmware footer table, SEV and TDVF metadata parsers and the plan
//! builders on arbitrary images.
//!
//! The input is the end of the image: it is placed at the end of a zero image rounded up
//! to whole pages (so the size check does not hide the parsers). Everything the parsers
//! read is addressed from the end of the image (the footer GUID table ends 32 bytes
//! before it, metadata offsets count back from it), so a small input holds a whole
//! table and its metadata, and the seed corpus (synthetic images in the OVMF layout) is
//! used byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use measured_boot::snp::{vmsa::VmmType, SnpLaunchPlan, SnpPlanConfig};
use measured_boot::tdx::TdxLaunchPlan;
use measured_boot::FirmwareImage;

fuzz_target!(|data: &[u8]| {
    let size = data.len().div_ceil(4096).max(1) * 4096;
    let mut img = vec![0u8; size];
    img[size - data.len()..].copy_from_slice(data);
    let Ok(fw) = FirmwareImage::parse(img) else {
        return;
    };
    let _ = fw.sev_metadata();
    let _ = fw.tdx_metadata();
    let config = SnpPlanConfig {
        vcpus: 2,
        vcpu_sig: 0x800f12,
        guest_features: 1,
        vmm_type: VmmType::Qemu,
        hashes: None,
    };
    if let Ok(plan) = SnpLaunchPlan::new(fw.clone(), config) {
        let _ = plan.launch_digest();
    }
    if let Ok(plan) = TdxLaunchPlan::new(fw, None) {
        let _ = plan.mrtd();
    }
});
