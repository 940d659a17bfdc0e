//! `cvm-verifier verify tdx` as a process: exit codes 0/1/2 and JSON output, on the
//! genuine v4 vector and on an emulated quote.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use attestation::tdx::emulated::{
    CollateralOptions, EmulatedTd, EmulatedTdxPlatform, PlatformOptions, TdConfig,
};

const BIN: &str = env!("CARGO_BIN_EXE_cvm-verifier");

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../attestation/tests/data/tdx")
        .join(rel)
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["verify", "tdx"])
        .args(args)
        .output()
        .expect("cvm-verifier runs")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn v4_args(at: &str) -> Vec<String> {
    vec![
        "--quote".into(),
        data("v4-uptodate/quote.bin").display().to_string(),
        "--collateral".into(),
        data("v4-uptodate/collateral.json").display().to_string(),
        "--at".into(),
        at.into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn genuine_v4_accepted_with_json_claims() {
    let mut args = v4_args("2025-06-19T12:00:00Z");
    args.extend(["--output".into(), "json".into()]);
    let out = run(&strs(&args));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["verified"], true);
    assert_eq!(j["tee"], "tdx");
    assert_eq!(j["trust"], "hardware");
    assert_eq!(j["claims"]["detail"]["tcb_status"], "UpToDate");
    assert_eq!(j["claims"]["detail"]["fmspc"], "b0c06f000000");
    assert_eq!(j["claims"]["measurement"].as_str().map(str::len), Some(96));
    assert!(j.get("error").is_none());
}

#[test]
fn genuine_v4_refused_in_2026_with_kind() {
    let mut args = v4_args("2026-02-19T00:00:00Z");
    args.extend(["--output".into(), "json".into()]);
    let out = run(&strs(&args));
    assert_eq!(out.status.code(), Some(1));
    let j = json(&out);
    assert_eq!(j["verified"], false);
    assert_eq!(j["error"]["kind"], "untrusted-chain");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error: "),
        "reason on stderr"
    );
}

#[test]
fn policy_refusal_names_the_check() {
    let mut args = v4_args("2025-06-19T12:00:00Z");
    args.extend([
        "--output".into(),
        "json".into(),
        "--measurement".into(),
        "00".repeat(48),
    ]);
    let out = run(&strs(&args));
    assert_eq!(out.status.code(), Some(1));
    let j = json(&out);
    assert_eq!(j["error"]["kind"], "policy-not-met");
    assert_eq!(j["error"]["check"], "measurement");
    assert!(
        j["claims"].is_object(),
        "claims are reported with a policy refusal"
    );

    let mut args = v4_args("2025-06-19T12:00:00Z");
    args.extend([
        "--output".into(),
        "json".into(),
        "--rtmr".into(),
        format!("2={}", "00".repeat(48)),
    ]);
    let j = json(&run(&strs(&args)));
    assert_eq!(j["error"]["check"], "rtmr");
}

#[test]
fn usage_errors_exit_2() {
    let mut args = v4_args("not a time");
    assert_eq!(run(&strs(&args)).status.code(), Some(2));
    args = v4_args("2025-06-19T12:00:00Z");
    args.extend(["--allow-tcb-status".into(), "Fine".into()]);
    assert_eq!(run(&strs(&args)).status.code(), Some(2));
    args = v4_args("2025-06-19T12:00:00Z");
    args.extend(["--min-tcb".into(), "0102".into()]);
    assert_eq!(run(&strs(&args)).status.code(), Some(2));
    let out = run(&[
        "--quote",
        "/nonexistent/quote",
        "--collateral",
        "/nonexistent/c.json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("caused by:"));
    assert_eq!(run(&["--quote"]).status.code(), Some(2));
}

#[test]
fn emulated_quote_needs_its_trust_root() {
    let now = time::OffsetDateTime::now_utc();
    let p = EmulatedTdxPlatform::generate(PlatformOptions::default(), now).expect("platform");
    let dir = tempfile::tempdir().expect("tempdir");
    let td = EmulatedTd::with_mrtd(TdConfig::default(), [0x33; 48]);
    let quote = dir.path().join("quote.bin");
    let collateral = dir.path().join("collateral.json");
    let root = dir.path().join("root_ca.pem");
    std::fs::write(
        &quote,
        p.quote_td(&td, &[1; 64], 4)
            .expect("quote")
            .to_bytes()
            .expect("bytes"),
    )
    .expect("write");
    std::fs::write(
        &collateral,
        p.collateral(&CollateralOptions::around(now, 30))
            .expect("c")
            .to_json()
            .expect("json"),
    )
    .expect("write");
    std::fs::write(&root, p.root_ca_pem().expect("pem")).expect("write");
    let (q, c, r) = (
        quote.display().to_string(),
        collateral.display().to_string(),
        root.display().to_string(),
    );

    let out = run(&["--quote", &q, "--collateral", &c, "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "refused against Intel's root");
    assert_eq!(json(&out)["error"]["kind"], "untrusted-chain");

    let mrtd = "33".repeat(48);
    // MRTD alone measures only the firmware: RTMR1 and RTMR2 must be pinned too.
    let out = run(&[
        "--quote",
        &q,
        "--collateral",
        &c,
        "--trust-root",
        &r,
        "--measurement",
        &mrtd,
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["error"]["check"], "rtmr-unpinned");
    let (rtmr1, rtmr2) = (
        format!("1={}", "00".repeat(48)),
        format!("2={}", "00".repeat(48)),
    );
    let out = run(&[
        "--quote",
        &q,
        "--collateral",
        &c,
        "--trust-root",
        &r,
        "--measurement",
        &mrtd,
        "--rtmr",
        &rtmr1,
        "--rtmr",
        &rtmr2,
        "--output",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["trust"], "insecure-emulated");
    assert_eq!(j["claims"]["trust"], "insecure-emulated");
    assert_eq!(j["claims"]["detail"]["tcb_status"], "UpToDate");

    // A policy file (TOML) is honoured.
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "measurements = [\"{}\"]\n[tdx]\nallowed_tcb_statuses = [\"UpToDate\"]\n",
            "44".repeat(48)
        ),
    )
    .expect("write policy");
    let pf = policy.display().to_string();
    let out = run(&[
        "--quote",
        &q,
        "--collateral",
        &c,
        "--trust-root",
        &r,
        "--policy-file",
        &pf,
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["error"]["check"], "measurement");
    std::fs::write(&policy, "no_such_field = true\n").expect("write policy");
    let out = run(&[
        "--quote",
        &q,
        "--collateral",
        &c,
        "--trust-root",
        &r,
        "--policy-file",
        &pf,
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "unknown policy fields are refused"
    );
}
