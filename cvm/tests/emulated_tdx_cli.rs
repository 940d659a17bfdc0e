//! `cvm emulated quote tdx` as a process: the quote and collateral it writes verify
//! with the platform's root and carry the requested measurements.

use std::process::Command;

use attestation::claims::TeeClaims;
use attestation::tdx::collateral::Collateral;
use attestation::tdx::emulated::EmulatedTdxPlatform;
use attestation::tdx::{TdxVerifier, TrustRoot};
use test_kit::Refusal;

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
    let d = dir.path().to_str().expect("utf8");
    let base = [
        "emulated",
        "quote",
        "tdx",
        "--dir",
        d,
        "--out",
        "/dev/null",
        "--collateral-out",
        "/dev/null",
    ];
    let args = |extra: &[&'static str]| -> Vec<&str> { [&base[..], extra].concat() };
    let (rd00, rd65) = (args(&["--report-data", "00"]), ["00"; 65].concat());
    // No platform in the directory.
    test_kit::assert_refusals(BIN, &[Refusal::new(&rd00, 2, "tdx/platform.json")]);
    EmulatedTdxPlatform::create(dir.path()).expect("platform");
    let rtmr4 = format!("4={}", "00".repeat(48));
    let long = [&base[..], &["--report-data", &rd65]].concat();
    let bad_rtmr = [&rd00[..], &["--rtmr", &rtmr4]].concat();
    let short_mrtd = [&rd00[..], &["--mrtd", "0011"]].concat();
    let not_hex = args(&["--report-data", "zz"]);
    test_kit::assert_refusals(
        BIN,
        &[
            Refusal::new(&long, 2, "--report-data must be 64 bytes, found 65"),
            Refusal::new(&bad_rtmr, 2, "with INDEX 0 to 3"),
            Refusal::new(&short_mrtd, 2, "--mrtd must be 48 bytes, found 2"),
            Refusal::new(&not_hex, 2, "--report-data is not hex"),
            // The same arguments with a good report data pass: the rows above fail
            // for the reason they name.
            Refusal::new(&rd00, 0, ""),
        ],
    );
}
