//! `cvm-verifier verify snp` end to end: exit codes 0/1/2 and the JSON output, on the
//! genuine Milan vectors and on an emulated platform.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[path = "../../attestation/tests/snp_common/mod.rs"]
mod snp_common;

fn vector(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../attestation/tests/data/snp")
        .join(path)
}

/// Runs the verifier; returns (exit code, parsed JSON stdout or Null, stderr).
fn run(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cvm-verifier"))
        .arg("verify")
        .arg("snp")
        .args(args)
        .output()
        .expect("runs");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn milan_args<'a>(report: &'a str, vcek: &'a str, at: &'a str) -> Vec<&'a str> {
    vec![
        "--report", report, "--vcek", vcek, "--at", at, "--output", "json",
    ]
}

#[test]
fn milan_v2_is_accepted_with_json_claims() {
    let (r, v) = (vector("milan-v2/report.bin"), vector("milan-v2/vcek.der"));
    let (r, v) = (r.to_str().expect("utf8"), v.to_str().expect("utf8"));
    let (code, json, err) = run(&milan_args(r, v, "2024-06-01T00:00:00Z"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json["verified"], true);
    assert_eq!(json["tee"], "snp");
    assert_eq!(json["trust"], "hardware");
    assert_eq!(json["claims"]["detail"]["version"], 2);
    assert_eq!(json["claims"]["detail"]["product"], "Milan");
    assert_eq!(json["claims"]["detail"]["reported_tcb"]["microcode"], 115);
    assert_eq!(json["claims"]["debug"], false);

    // Policy flags that hold.
    let m = json["claims"]["measurement"]
        .as_str()
        .expect("measurement")
        .to_owned();
    let mut args = milan_args(r, v, "2024-06-01T00:00:00Z");
    args.extend([
        "--measurement",
        &m,
        "--min-tcb",
        "bl=3,tee=0,snp=8,ucode=115",
        "--vmpl",
        "0",
    ]);
    let (code, json, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json["verified"], true);
    // The raw hex TCB form is the same minimum.
    let mut args = milan_args(r, v, "2024-06-01T00:00:00Z");
    args.extend(["--min-tcb", "0x7308000000000003", "--chain"]);
    let chain = vector("milan-v2/ask_ark.pem");
    args.push(chain.to_str().expect("utf8"));
    assert_eq!(run(&args).0, 0);
}

#[test]
fn refusals_exit_1_with_the_reason() {
    let (r, v) = (vector("milan-v2/report.bin"), vector("milan-v2/vcek.der"));
    let (r, v) = (r.to_str().expect("utf8"), v.to_str().expect("utf8"));
    // Expired VCEK.
    let (code, json, err) = run(&milan_args(r, v, "2031-01-01T00:00:00Z"));
    assert_eq!(code, 1);
    assert_eq!(json["verified"], false);
    assert_eq!(json["error"]["kind"], "untrusted-chain");
    assert!(
        err.contains("error: the SNP report was refused") && err.contains("caused by:"),
        "{err}"
    );
    // Policy: another measurement, a higher TCB, another VMPL.
    for (flag, value, check) in [
        ("--measurement", "00".repeat(48), "measurement"),
        (
            "--min-tcb",
            "bl=3,tee=0,snp=9,ucode=115".to_owned(),
            "min-tcb",
        ),
        ("--vmpl", "1".to_owned(), "vmpl"),
        ("--min-guest-svn", "1".to_owned(), "min-guest-svn"),
        ("--chip-id", "00".repeat(64), "chip-id"),
    ] {
        let mut args = milan_args(r, v, "2024-06-01T00:00:00Z");
        args.extend([flag, &value]);
        let (code, json, _) = run(&args);
        assert_eq!(code, 1, "{flag}");
        assert_eq!(json["error"]["kind"], "policy-not-met", "{flag}");
        assert_eq!(json["error"]["check"], check, "{flag}");
    }
    // A tampered report.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = std::fs::read(r).expect("report");
    bytes[0x50] ^= 1;
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, bytes).expect("write");
    let (code, json, _) = run(&milan_args(
        bad.to_str().expect("utf8"),
        v,
        "2024-06-01T00:00:00Z",
    ));
    assert_eq!(code, 1);
    assert_eq!(json["error"]["kind"], "bad-signature");
    // No VCEK at all.
    let (code, json, _) = run(&[
        "--report",
        r,
        "--at",
        "2024-06-01T00:00:00Z",
        "--output",
        "json",
    ]);
    assert_eq!(code, 1);
    assert_eq!(json["error"]["kind"], "collateral-unavailable");
}

#[test]
fn usage_and_io_errors_exit_2() {
    let v = vector("milan-v2/vcek.der");
    let v = v.to_str().expect("utf8");
    assert_eq!(
        run(&["--report", "/nonexistent/report.bin", "--vcek", v]).0,
        2
    );
    let r = vector("milan-v2/report.bin");
    let r = r.to_str().expect("utf8");
    assert_eq!(run(&["--report", r, "--vcek", v, "--at", "yesterday"]).0, 2);
    assert_eq!(
        run(&["--report", r, "--vcek", v, "--measurement", "zz"]).0,
        2
    );
    assert_eq!(
        run(&["--report", r, "--vcek", v, "--min-tcb", "bl=3,foo=1"]).0,
        2
    );
    assert_eq!(
        run(&["--report", r, "--vcek", v, "--trust-root", v]).0,
        2,
        "a VCEK is not a root"
    );
    assert_eq!(run(&["--report", r, "--no-such-flag"]).0, 2);
}

#[test]
fn vlek_vector_with_policy_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"allow_any_measurement": true, "snp": {"vmpl": 1, "min_tcb": {"snp": 24}}}"#,
    )
    .expect("write");
    let (r, v, c) = (
        vector("milan-vlek-v3/report.bin"),
        vector("milan-vlek-v3/vlek.der"),
        vector("milan-vlek-v3/ask_ark_asvk.pem"),
    );
    let base = |at: &'static str| {
        vec![
            "--report".to_owned(),
            r.display().to_string(),
            "--vcek".to_owned(),
            v.display().to_string(),
            "--chain".to_owned(),
            c.display().to_string(),
            "--policy-file".to_owned(),
            policy.display().to_string(),
            "--at".to_owned(),
            at.to_owned(),
            "--output".to_owned(),
            "json".to_owned(),
        ]
    };
    let args = base("2025-06-01T00:00:00Z");
    let (code, json, err) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert_eq!(json["claims"]["detail"]["signer"], "vlek");
    let args = base("2025-12-11T00:00:00Z");
    let (code, json, _) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 1);
    assert_eq!(json["error"]["kind"], "untrusted-chain");
    // An unknown policy field is a usage error.
    std::fs::write(&policy, r#"{"snp": {"vmpl_typo": 1}}"#).expect("write");
    let args = base("2025-06-01T00:00:00Z");
    assert_eq!(
        run(&args.iter().map(String::as_str).collect::<Vec<_>>()).0,
        2
    );
}

#[test]
fn emulated_report_needs_the_trust_root() {
    use attestation::snp::emulated::{EmulatedSnpPlatform, FinishParams, ReportRequest};
    let dir = snp_common::platform_dir(attestation::snp::Product::Milan);
    let p = EmulatedSnpPlatform::open(&dir).expect("platform");
    let guest = p
        .launch_start(0x30000)
        .expect("start")
        .finish(FinishParams::default())
        .expect("finish");
    let report = guest
        .report(&ReportRequest {
            report_data: [5; 64],
            vmpl: 0,
            version: 5,
        })
        .expect("report");
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("report.bin");
    std::fs::write(&path, report).expect("write");
    let certs = dir.join("snp");
    let anchor = certs.join("trust-anchor.pem");
    let (path, certs, anchor) = (
        path.to_str().expect("utf8"),
        certs.to_str().expect("utf8"),
        anchor.to_str().expect("utf8"),
    );
    let (code, json, err) = run(&[
        "--report",
        path,
        "--certs-dir",
        certs,
        "--trust-root",
        anchor,
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json["trust"], "insecure-emulated");
    assert!(err.contains("EMULATED"), "a warning is printed: {err}");
    let (code, json, _) = run(&["--report", path, "--certs-dir", certs, "--output", "json"]);
    assert_eq!(code, 1);
    assert_eq!(json["error"]["kind"], "untrusted-chain");
}
