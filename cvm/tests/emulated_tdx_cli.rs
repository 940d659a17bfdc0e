//! `cvm emulated quote tdx` as a process: the quote and collateral it writes verify
//! with the platform's root and carry the requested measurements.

use std::process::Command;

use attestation::claims::TeeClaims;
use attestation::tdx::collateral::Collateral;
use attestation::tdx::emulated::EmulatedTdxPlatform;
use attestation::tdx::{TdxVerifier, TrustRoot};

const BIN: &str = env!("CARGO_BIN_EXE_cvm");

#[test]
fn quote_tdx_writes_a_verifiable_quote_and_collateral() {
    let dir = tempfile::tempdir().expect("tempdir");
    EmulatedTdxPlatform::create(dir.path()).expect("TDX half of the platform");
    let quote = dir.path().join("q.bin");
    let collateral = dir.path().join("c.json");
    let mrtd = "ab".repeat(48);
    let rtmr2 = "cd".repeat(48);
    let cfg = "ef".repeat(48);
    let out = Command::new(BIN)
        .args(["emulated", "quote", "tdx", "--dir"])
        .arg(dir.path())
        .args([
            "--report-data",
            "0102",
            "--mrtd",
            &mrtd,
            "--rtmr",
            &format!("2={rtmr2}"),
            "--mrconfigid",
            &cfg,
        ])
        .arg("--out")
        .arg(&quote)
        .arg("--collateral-out")
        .arg(&collateral)
        .output()
        .expect("cvm runs");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let root = TrustRoot::emulated_from_bytes(
        &std::fs::read(dir.path().join("tdx/root_ca.pem")).expect("root"),
    )
    .expect("root");
    let collateral =
        Collateral::from_json(&std::fs::read(&collateral).expect("collateral")).expect("parses");
    let v = TdxVerifier::new(root)
        .verify_now(&std::fs::read(&quote).expect("quote"), &collateral)
        .expect("verifies with the platform root");
    assert_eq!(v.claims.measurement, vec![0xab; 48]);
    assert_eq!(v.claims.host_data, vec![0xef; 48]);
    let mut rd = vec![0u8; 64];
    rd[..2].copy_from_slice(&[1, 2]);
    assert_eq!(v.claims.report_data, rd);
    let TeeClaims::Tdx(c) = &v.claims.detail else {
        panic!("TDX claims")
    };
    assert_eq!(c.rtmrs[2], [0xcd; 48]);
    assert_eq!(c.rtmrs[0], [0; 48]);
    assert!(c.td_attributes.sept_ve_disable);
}

#[test]
fn quote_tdx_usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args(["emulated", "quote", "tdx", "--dir"])
            .arg(dir.path())
            .args(["--out", "/dev/null", "--collateral-out", "/dev/null"])
            .args(extra)
            .output()
            .expect("cvm runs")
    };
    // No platform in the directory.
    assert_eq!(run(&["--report-data", "00"]).status.code(), Some(2));
    EmulatedTdxPlatform::create(dir.path()).expect("platform");
    assert_eq!(
        run(&["--report-data", &"00".repeat(65)]).status.code(),
        Some(2)
    );
    assert_eq!(
        run(&[
            "--report-data",
            "00",
            "--rtmr",
            &format!("4={}", "00".repeat(48))
        ])
        .status
        .code(),
        Some(2)
    );
    assert_eq!(
        run(&["--report-data", "00", "--mrtd", "0011"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(&["--report-data", "zz"]).status.code(), Some(2));
    assert_eq!(run(&["--report-data", "00"]).status.code(), Some(0));
}
