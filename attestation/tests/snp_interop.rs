//! Interoperability with an independent verifier: `snpguest` (virtee, 0.11) accepts the
//! emulated platform's certificates and reports, and rejects a tampered report.
//!
//! If `snpguest` is not installed: with `CI` set the test fails, otherwise it prints
//! a `SKIPPED` line naming the test and the missing tool (`test_kit`) and returns. Install:
//! `apt-get install -y libssl-dev pkg-config && cargo install snpguest --version 0.11.0 --locked`.

use std::path::Path;
use std::process::Command;

use attestation::snp::emulated::{EmulatedSnpPlatform, FinishParams, ReportRequest};
use attestation::snp::Product;

mod snp_common;
use snp_common::platform_dir;

fn snpguest(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new("snpguest")
        .args(args)
        .output()
        .expect("snpguest runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn write_report(p: &EmulatedSnpPlatform, version: u32, path: &Path) -> [u8; 0x4A0] {
    let guest = p
        .launch_start_from(0x30000, [0x42; 48])
        .expect("start")
        .finish(FinishParams::default())
        .expect("finish");
    let report = guest
        .report(&ReportRequest {
            report_data: [0x11; 64],
            vmpl: 0,
            version,
        })
        .expect("report");
    std::fs::write(path, report).expect("write report");
    report
}

#[test]
fn snpguest_accepts_the_emulated_certs_and_reports() {
    test_kit::require!(tool "snpguest");
    let dir = platform_dir(Product::Milan);
    let certs = dir.join("snp");
    let p = EmulatedSnpPlatform::open(&dir).expect("platform");
    let (ok, text) = snpguest(&["verify".as_ref(), "certs".as_ref(), certs.as_os_str()]);
    assert!(ok, "snpguest verify certs failed:\n{text}");
    assert!(text.contains("The AMD ARK was self-signed!"), "{text}");
    assert!(
        text.contains("The VCEK was signed by the AMD ASK!"),
        "{text}"
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    for version in [3, 5] {
        let path = tmp.path().join(format!("report-v{version}.bin"));
        let report = write_report(&p, version, &path);
        let (ok, text) = snpguest(&[
            "verify".as_ref(),
            "attestation".as_ref(),
            certs.as_os_str(),
            path.as_os_str(),
        ]);
        assert!(
            ok,
            "snpguest verify attestation (v{version}) failed:\n{text}"
        );
        assert!(
            text.contains("VEK signed the Attestation Report!"),
            "{text}"
        );
        assert!(
            text.contains("Reported TCB Microcode from certificate matches"),
            "{text}"
        );

        // A tampered report is rejected by snpguest too.
        let mut bad = report;
        bad[0x90] ^= 1; // MEASUREMENT
        std::fs::write(&path, bad).expect("write");
        let (ok, text) = snpguest(&[
            "verify".as_ref(),
            "attestation".as_ref(),
            certs.as_os_str(),
            path.as_os_str(),
        ]);
        assert!(!ok, "snpguest accepted a tampered report:\n{text}");
    }
}
