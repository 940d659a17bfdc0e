//! `--output json`: one JSON document on standard output, nothing else there (logs and
//! progress go to standard error), for the commands that print results.

use std::process::Command;
use std::time::Instant;

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

fn json(args: &[&str]) -> (serde_json::Value, String) {
    let o = Command::new(CVM)
        .args(args)
        .env_remove("CVM_LOG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{args:?}: {o:?}");
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not one JSON document ({e}): {o:?}"));
    (v, String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn results_are_json_and_progress_stays_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plat = d.join("plat");
    let t = Instant::now();
    let (v, err) = json(&[
        "emulated",
        "init",
        "--dir",
        plat.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(
        v["snp"]["trust_anchor"]
            .as_str()
            .map(std::path::PathBuf::from),
        Some(plat.join("snp").join("trust-anchor.pem"))
    );
    assert!(plat.join("tdx").join("root_ca.pem").is_file());
    assert_eq!(v["insecure_emulated"], true);
    // Key generation over ~2 s (an unoptimised build) reports progress, on stderr only.
    if t.elapsed().as_secs() >= 3 {
        assert!(err.contains("creating the emulated platform keys"), "{err}");
    }
    let disk = d.join("disk.img");
    let key = d.join("disk.key");
    let (v, _) = json(&[
        "image",
        "disk",
        "--size",
        "4MB",
        "--out",
        disk.to_str().unwrap(),
        "--key-out",
        key.to_str().unwrap(),
        "--message",
        "m",
        "--output",
        "json",
    ]);
    assert_eq!(v["payload_size"], 4 << 20);
    assert_eq!(v["payload_written"], 2);
    let fw = d.join("fw.fd");
    let (v, _) = json(&[
        "firmware",
        "--out",
        fw.to_str().unwrap(),
        "--output-format",
        "json",
    ]);
    assert_eq!(
        v["bytes"].as_u64(),
        Some(std::fs::metadata(&fw).unwrap().len())
    );
    assert_eq!(v["sha256"].as_str().map(str::len), Some(64));
    // host-check exits 1 on a host without KVM, but prints its JSON either way.
    let o = Command::new(CVM)
        .args(["host-check", "--tee", "none", "--output", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["checks"].is_array(), "{v}");
}
