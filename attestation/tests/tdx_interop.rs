//! Interop: the Python dcap-qvl package (`pip install dcap-qvl`) verifies our emulated
//! quote with `verify_with_root_ca`, given the emulated root and collateral.
//!
//! If python3 or the package is missing: with `CI` set the test fails; otherwise it prints
//! a `SKIPPED` line (`test_kit`) and returns.

use std::process::Command;

use attestation::tdx::emulated::{
    CollateralOptions, EmulatedTd, EmulatedTdxPlatform, PlatformOptions, TdConfig,
};
use der::{DecodePem, Encode};

const SCRIPT: &str = r#"
import sys, time, dcap_qvl
d = sys.argv[1]
quote = open(d + "/quote.bin", "rb").read()
collateral = dcap_qvl.QuoteCollateralV3.from_json(open(d + "/collateral.json").read())
root = open(d + "/root_ca.der", "rb").read()
report = dcap_qvl.verify_with_root_ca(quote, collateral, root, int(time.time()))
print(report.status)
try:
    dcap_qvl.verify(quote, collateral, int(time.time()))
    print("INTEL-ROOT-ACCEPTED")
except Exception:
    print("INTEL-ROOT-REFUSED")
"#;

fn python_dcap_qvl_available() -> bool {
    Command::new("python3")
        .args(["-c", "import dcap_qvl; dcap_qvl.verify_with_root_ca"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn python_dcap_qvl_verifies_the_emulated_quote() {
    test_kit::require!(
        python_dcap_qvl_available(),
        "the python dcap-qvl package is not installed (pip install dcap-qvl)"
    );
    let now = time::OffsetDateTime::now_utc();
    let p = EmulatedTdxPlatform::generate(PlatformOptions::default(), now).expect("platform");
    let td = EmulatedTd::with_mrtd(TdConfig::default(), [0x42; 48]);
    let quote = p
        .quote_td(&td, &[0x17; 64], 4)
        .expect("quote")
        .to_bytes()
        .expect("bytes");
    let collateral = p
        .collateral(&CollateralOptions::around(now, 30))
        .expect("collateral")
        .to_json()
        .expect("json");
    let root_pem = p.root_ca_pem().expect("root pem");
    let root_der = x509_cert::Certificate::from_pem(root_pem.as_bytes())
        .expect("root")
        .to_der()
        .expect("der");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("quote.bin"), &quote).expect("write quote");
    std::fs::write(dir.path().join("collateral.json"), collateral).expect("write collateral");
    std::fs::write(dir.path().join("root_ca.der"), root_der).expect("write root");
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(dir.path())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python dcap-qvl failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["UpToDate", "INTEL-ROOT-REFUSED"], "{stdout}");
}
