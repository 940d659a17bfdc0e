//! The VM description file (docs/vm-description.md): `cvm measure --config F` prints
//! exactly the reference values `cvm launch --config F` prints before its guest starts,
//! for the emulated SEV-SNP and TDX launches of the bare-metal test guest; flags
//! override the file (and the override is logged) the same way in both.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

fn cvm(args: &[&str]) -> std::process::Output {
    test_kit::run_with_deadline(
        Command::new(CVM).args(args).env_remove("CVM_LOG"),
        Duration::from_secs(120),
    )
}

/// `cvm measure --config F [extra] --output json`.
fn measure(config: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["measure", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--output", "json"]);
    let o = cvm(&args);
    assert!(o.status.success(), "{o:?}");
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `cvm launch --config F [extra] --output json`: the first stdout line (printed before
/// the guest starts), and stderr up to it. The launch is stopped once it is read.
fn launch_expectation(config: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let mut child = Command::new(CVM)
        .args(["launch", "--config", config.to_str().unwrap()])
        .args(extra)
        .args(["--output", "json"])
        .env_remove("CVM_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}\n{err}"));
    (v, err)
}

fn setup(dir: &Path, tee: &str) -> std::path::PathBuf {
    let plat = dir.join("platform");
    if !plat.exists() {
        let o = cvm(&["emulated", "init", "--dir", plat.to_str().unwrap()]);
        assert!(o.status.success(), "{o:?}");
    }
    let guest = dir.join("testguest.bzImage");
    if !guest.exists() {
        let o = cvm(&["firmware", "--test-guest", "--out", guest.to_str().unwrap()]);
        assert!(o.status.success(), "{o:?}");
    }
    let f = dir.join(format!("{tee}.toml"));
    // Relative paths: relative to the file's directory.
    std::fs::write(
        &f,
        format!(
            "version = 1\ntee = \"{tee}\"\nmemory = \"512MB\"\nvcpus = 1\n\
             emulated_platform = \"platform\"\n\n[boot]\nkernel = \"testguest.bzImage\"\n\
             cmdline = \"console=ttyS0 cvm.test=description\"\n\n[devices]\nserial = \"none\"\n"
        ),
    )
    .unwrap();
    f
}

fn same_for(tee: &str, digest_key: &str) {
    test_kit::require!(kvm);
    test_kit::require!(
        guest_images::testguest_image().len() > 1,
        "this cvm was built without the test guest"
    );
    let dir = tempfile::tempdir().unwrap();
    let f = setup(dir.path(), tee);
    let measured = measure(&f, &[]);
    let (launched, err) = launch_expectation(&f, &[]);
    assert_eq!(
        measured, launched,
        "measure --config vs launch --config\n{err}"
    );
    let digest = measured[digest_key].as_str().unwrap();
    assert_eq!(digest.len(), 96, "{measured}");
    assert_eq!(measured["insecure_emulated"], true);
    // The launch printed it before starting the guest, and logged the same digest.
    let before = err.split("launching guest").next().unwrap();
    assert!(before.contains("expected measurement"), "{err}");
    assert!(before.contains(digest), "{err}");

    // A flag overrides the file the same way in both, and the override is logged.
    let extra = ["--cmdline", "console=ttyS0 cvm.test=override"];
    let measured2 = measure(&f, &extra);
    let (launched2, err2) = launch_expectation(&f, &extra);
    assert_eq!(measured2, launched2);
    // (SNP: in the launch digest; TDX: in RTMR2.)
    assert_ne!(measured2, measured, "the command line is measured");
    assert!(
        err2.contains("overriding cmdline from the description"),
        "{err2}"
    );
    // And measure's hex output is the same digest.
    let o = cvm(&["measure", "--config", f.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), digest);
}

#[test]
fn measure_config_equals_what_an_emulated_snp_launch_expects() {
    same_for("emulated-snp", "measurement");
}

#[test]
fn measure_config_equals_what_an_emulated_tdx_launch_expects() {
    same_for("emulated-tdx", "mrtd");
}

/// `cvm measure snp|tdx` default to the built-in firmware like `cvm launch`, and the
/// description with `firmware = "built-in"` measures the same.
#[test]
fn measure_defaults_to_the_built_in_firmware() {
    test_kit::require!(
        guest_images::embedded().is_ok(),
        "this cvm was built without the firmware"
    );
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k");
    std::fs::write(&k, b"kernel bytes").unwrap();
    let fw = dir.path().join("fw.fd");
    assert!(cvm(&["firmware", "--out", fw.to_str().unwrap()])
        .status
        .success());
    for tee in ["snp", "tdx"] {
        let default = cvm(&[
            "measure",
            tee,
            "--kernel",
            k.to_str().unwrap(),
            "--cmdline",
            "x",
        ]);
        assert!(default.status.success(), "{default:?}");
        let explicit = cvm(&[
            "measure",
            tee,
            "--firmware",
            fw.to_str().unwrap(),
            "--kernel",
            k.to_str().unwrap(),
            "--append",
            "x",
        ]);
        assert_eq!(default.stdout, explicit.stdout, "{tee}");
        let f = dir.path().join(format!("{tee}.toml"));
        std::fs::write(
            &f,
            format!("version = 1\ntee = \"{tee}\"\nfirmware = \"built-in\"\n[boot]\nkernel = \"k\"\ncmdline = \"x\"\n"),
        )
        .unwrap();
        let from_file = cvm(&["measure", "--config", f.to_str().unwrap()]);
        assert!(from_file.status.success(), "{from_file:?}");
        assert_eq!(from_file.stdout, default.stdout, "{tee}");
    }
}
