//! The nested-KVM tier (README "Linux guests and the nested-KVM tier"): QEMU's software
//! emulation gives a Linux VM a standard upstream KVM (emulated AMD SVM with nested
//! paging), and `cvm` runs inside it. `scripts/nested/run` builds the outer initramfs
//! around this build's `cvm`, boots it under QEMU TCG with a timeout, and reports each
//! scenario by a marker line on the serial log:
//!
//! - `boot-1vcpu`, `boot-2vcpu`: a stock Debian kernel reaches its /init under
//!   `cvm launch --tee none` and sees as many CPUs as it was given, then powers off
//!   (exit 0);
//! - `panic`: the guest kernel panics (`panic=-1` makes it reset): `cvm` exits 1 with
//!   "guest requested a reset";
//! - `emutee-snp`, `emutee-tdx`, `emutee-snp-literal` (20-emulated-tee): the project
//!   firmware and the bare-metal test guest under `--tee emulated-snp|emulated-tdx` on
//!   this standard KVM (the probe picks the PVALIDATE/TDCALL emulator trap), and the
//!   forced literal instruction failing with #UD;
//! - 30-linux-emulated, 40-linux-attest, 41-linux-attest-emulated, 50-net-policy: stock
//!   Linux under emulated SNP and emulated TDX, the attested disk-unlock flow and its refusals, and two
//!   guests under network policies (README tables).
//!
//! A frozen outer VM cannot hang the test: `scripts/nested/run` stops QEMU when the
//! serial log has been silent for `NESTED_STALL_TIMEOUT` (the outer /init prints a
//! heartbeat every 20 s) or at `NESTED_TIMEOUT`, saves the emulated CPUs' state from
//! QEMU's monitor, and fails naming the scenario that never reported.
//!
//! It takes a few minutes of emulated CPU, so it runs only when `CVM_NESTED=1` (which
//! `scripts/test` sets) or under `CI=true`; there a missing piece (QEMU, busybox, the
//! KVM modules of an installed kernel) fails the test.

use std::process::Command;

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

#[test]
fn stock_linux_boots_and_panics_are_failures_under_a_standard_kvm() {
    if std::env::var_os("CVM_NESTED").is_none_or(|v| v != "1") && !test_kit::in_ci() {
        test_kit::skip_optional("the nested-KVM tier runs with CVM_NESTED=1 or CI=true");
        return;
    }
    test_kit::require!(tool "qemu-system-x86_64");
    test_kit::require!(tool "busybox");
    test_kit::require!(tool "cpio");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(root.join("scripts/nested/run"))
        .env("CVM_BIN", CVM)
        .env("NESTED_OUT", out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    // Shown with --nocapture: the per-scenario times.
    println!("{stdout}");
    assert!(o.status.success(), "{stdout}\n{stderr}");
    // Every result name each scenario file declares (`# scenarios:`) passed.
    let dir = root.join("scripts/nested/scenarios");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "sh") {
            let text = std::fs::read_to_string(&p).unwrap();
            // Benchmarks (60-bench) run only when selected (scripts/bench-nested).
            if text.lines().any(|l| l == "# nested: benchmark only") {
                continue;
            }
            let line = text.lines().find_map(|l| l.strip_prefix("# scenarios:"));
            names.extend(
                line.expect("a '# scenarios:' line")
                    .split_whitespace()
                    .map(String::from),
            );
        }
    }
    assert!(names.iter().any(|n| n == "panic"), "{names:?}");
    for s in &names {
        assert!(
            stdout.contains(&format!("nested: {s} PASS rc=")),
            "{s}: {stdout}\n{stderr}"
        );
    }
    assert!(stdout.contains("nested: panic PASS rc=1 "), "{stdout}");
}
