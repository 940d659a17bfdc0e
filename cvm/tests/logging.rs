//! One logging scheme (`cli_support::logging`): `--log-format json` writes one JSON
//! object per event, text logs carry no colour codes when redirected, and `CVM_LOG`
//! sets the level.

use std::process::Command;

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

/// A 64 KiB firmware whose reset vector powers off (ACPI S5): the VM stops at once, and
/// `cvm launch` succeeds (a reset would be a failure).
fn resetting_firmware(dir: &std::path::Path) -> std::path::PathBuf {
    // mov dx, 0x604 (PM1a control); mov ax, SLP_EN | SLP_TYP 5; out dx, ax; hlt, behind
    // the reset vector's jump: the guest powers off (a reset would be a failure exit).
    let img = measured_boot::testing::emulated_guest_image(&[
        0xBA, 0x04, 0x06, 0xB8, 0x00, 0x34, 0xEF, 0xF4,
    ]);
    let p = dir.join("reset.fd");
    std::fs::write(&p, img).unwrap();
    p
}

fn launch(fw: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = Command::new(CVM);
    c.args(extra)
        .args(["launch", "--tee", "none", "--memory", "64M", "--firmware"])
        .arg(fw)
        .env_remove("CVM_LOG")
        .env_remove("RUST_LOG")
        .env_remove("CVM_LOG_FORMAT");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    stderr
}

#[test]
fn json_logs_are_one_object_per_line() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let fw = resetting_firmware(dir.path());
    for (flags, env) in [
        (&["--log-format", "json"][..], &[][..]),
        (&[][..], &[("CVM_LOG_FORMAT", "json")][..]),
    ] {
        let stderr = launch(&fw, flags, env);
        let mut events = 0;
        for line in stderr.lines().filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{stderr}"));
            assert!(
                v.get("level").is_some() && v.get("fields").is_some(),
                "{line}"
            );
            events += 1;
        }
        assert!(events >= 2, "{stderr}");
        assert!(stderr.contains("launching guest"), "{stderr}");
    }
}

#[test]
fn text_logs_have_no_colour_when_redirected_and_cvm_log_sets_the_level() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let fw = resetting_firmware(dir.path());
    let info = launch(&fw, &[], &[]);
    assert!(info.contains("launching guest"), "{info}");
    assert!(
        !info.contains('\u{1b}'),
        "colour codes in a redirected log: {info:?}"
    );
    let quiet = launch(&fw, &[], &[("CVM_LOG", "error")]);
    assert!(!quiet.contains("launching guest"), "{quiet}");
    // RUST_LOG is still honoured when CVM_LOG is unset.
    let quiet = launch(&fw, &[], &[("RUST_LOG", "error")]);
    assert!(!quiet.contains("launching guest"), "{quiet}");
}
