//! `cvm measure` against the independent reference implementations and known answers.
//!
//! The sev-snp-measure comparisons need `sev-snp-measure` (PyPI) and Debian's `ovmf`
//! package: `.ci/run` installs both. Without them a test fails when `CI` is set and
//! prints `SKIPPED` otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CVM: &str = env!("CARGO_BIN_EXE_cvm");
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_TDX: &str = "/usr/share/ovmf/OVMF.fd";

/// Whether sev-snp-measure and Debian's OVMF are here (a visible skip otherwise).
fn have_reference() -> bool {
    test_kit::require_tool("sev-snp-measure") && test_kit::require_file(OVMF_CODE)
}

fn run(cmd: &str, args: &[String]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

fn stdout(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn both(args: &[String]) {
    let mut ours = vec!["measure".to_string(), "snp".to_string()];
    ours.extend_from_slice(args);
    let a = stdout(&run(CVM, &ours), "cvm measure snp");
    let mut theirs = vec!["--mode".to_string(), "snp".to_string()];
    theirs.extend_from_slice(args);
    let b = stdout(&run("sev-snp-measure", &theirs), "sev-snp-measure");
    assert_eq!(a, b, "outputs differ for {args:?}");
    let digest = a.trim().rsplit(' ').next().unwrap_or_default();
    assert!(
        digest.len() == 96 || digest.len() == 64,
        "a 48-byte digest in hex (96) or base64 (64): {a}"
    );
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn snp_matches_sev_snp_measure_over_the_matrix() {
    if !have_reference() {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    for vcpus in ["1", "2", "4", "16", "64"] {
        for cpu in ["EPYC-v4", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa"] {
            for vmm in ["QEMU", "ec2"] {
                for features in ["0x1", "0x21"] {
                    let args = s(&[
                        "--ovmf",
                        OVMF_CODE,
                        "--vcpus",
                        vcpus,
                        "--vcpu-type",
                        cpu,
                        "--vmm-type",
                        vmm,
                        "--guest-features",
                        features,
                    ]);
                    both(&args);
                    let mut ours = s(&["measure", "snp"]);
                    ours.extend(args);
                    seen.insert(stdout(&run(CVM, &ours), "cvm"));
                    n += 1;
                }
            }
        }
    }
    assert_eq!(n, 80);
    // EC2 ignores the vCPU type (RDX is 0x600), so fewer distinct digests than cases,
    // but every QEMU case is distinct.
    assert!(
        seen.len() >= 5 * 4 * 2 + 5 * 2,
        "only {} distinct digests",
        seen.len()
    );
}

#[test]
fn snp_other_vcpu_selectors_and_output_formats_match() {
    if !have_reference() {
        return;
    }
    both(&s(&[
        "--ovmf",
        OVMF_CODE,
        "--vcpus",
        "2",
        "--vcpu-sig",
        "0xA00F11",
    ]));
    both(&s(&[
        "--ovmf",
        OVMF_CODE,
        "--vcpus",
        "3",
        "--vcpu-family",
        "25",
        "--vcpu-model",
        "17",
        "--vcpu-stepping",
        "0",
    ]));
    both(&s(&[
        "--ovmf",
        OVMF_CODE,
        "--vcpus",
        "1",
        "--vcpu-type",
        "EPYC-Turin",
        "--output-format",
        "base64",
    ]));
    both(&s(&[
        "--ovmf",
        OVMF_CODE,
        "--vcpus",
        "2",
        "--vmm-type",
        "ec2",
    ]));
    both(&s(&[
        "--ovmf",
        OVMF_CODE,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
        "--vmm-type",
        "gce",
    ]));
    both(&s(&[
        "--ovmf",
        "/usr/share/OVMF/OVMF_CODE.secboot.fd",
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
        "-v",
    ]));
}

fn temp_file(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn snp_kernel_hashes_match_sev_snp_measure() {
    if !have_reference() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fw = temp_file(
        dir.path(),
        "fw.fd",
        &measured_boot::testing::ovmf_like(0x40000),
    );
    let kernel = temp_file(
        dir.path(),
        "vmlinuz",
        &(0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let initrd = temp_file(dir.path(), "initrd", b"initrd contents");
    for vmm in ["QEMU", "ec2"] {
        both(&s(&[
            "--ovmf",
            &fw,
            "--vcpus",
            "2",
            "--vcpu-type",
            "EPYC-v4",
            "--vmm-type",
            vmm,
        ]));
        both(&s(&[
            "--ovmf",
            &fw,
            "--vcpus",
            "2",
            "--vcpu-type",
            "EPYC-v4",
            "--vmm-type",
            vmm,
            "--kernel",
            &kernel,
        ]));
        both(&s(&[
            "--ovmf",
            &fw,
            "--vcpus",
            "4",
            "--vcpu-type",
            "EPYC-Genoa",
            "--vmm-type",
            vmm,
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
        ]));
        both(&s(&[
            "--ovmf",
            &fw,
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-Milan",
            "--vmm-type",
            vmm,
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--append",
            "console=ttyS0 root=/dev/vda1",
        ]));
    }
}

#[test]
fn tdx_mrtd_of_debian_ovmf_is_the_known_answer() {
    if !test_kit::require_file(OVMF_TDX) {
        return;
    }
    let out = stdout(
        &run(CVM, &s(&["measure", "tdx", "--firmware", OVMF_TDX])),
        "cvm measure tdx",
    );
    assert_eq!(out, "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47\n");
}

#[test]
fn tdx_json_reports_rtmrs_and_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let fw = temp_file(
        dir.path(),
        "fw.fd",
        &measured_boot::testing::ovmf_like(0x20000),
    );
    let kernel = temp_file(dir.path(), "k", b"kernel");
    let out = stdout(
        &run(
            CVM,
            &s(&[
                "measure",
                "tdx",
                "--firmware",
                &fw,
                "--kernel",
                &kernel,
                "--append",
                "quiet",
                "--output-format",
                "json",
            ]),
        ),
        "cvm",
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mrtd"].as_str().unwrap().len(), 96);
    let rtmrs = v["rtmrs"].as_array().unwrap();
    assert_eq!(rtmrs.len(), 4);
    assert_eq!(rtmrs[0].as_str().unwrap(), "0".repeat(96));
    assert_ne!(rtmrs[1].as_str().unwrap(), "0".repeat(96));
    assert_eq!(v["event_log"].as_array().unwrap().len(), 3);
    assert_eq!(v["event_log"][0]["data"], "cvm: kernel");
    // The hex MRTD equals the JSON one.
    let hex = stdout(&run(CVM, &s(&["measure", "tdx", "--firmware", &fw])), "cvm");
    assert_eq!(hex.trim(), v["mrtd"].as_str().unwrap());
}

/// Runs `cvm` and expects exit status 2 with `needle` in stderr and no panic.
fn fails(args: &[String], needle: &str) {
    let o = run(CVM, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: stderr {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected `{needle}` in {err}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(
        o.stdout.is_empty(),
        "{args:?} printed a measurement on error"
    );
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = temp_file(d, "good.fd", &measured_boot::testing::ovmf_like(0x20000));
    let no_table = temp_file(d, "plain.fd", &[0u8; 0x10000]);
    let odd = temp_file(d, "odd.fd", &[0u8; 1000]);
    let sev_only = temp_file(
        d,
        "sev.fd",
        &measured_boot::testing::sev_image(0x4000, &[(0x80_0000, 0x1000, 1)]),
    );
    let overlap = temp_file(
        d,
        "overlap.fd",
        &measured_boot::testing::sev_image(
            0x4000,
            &[(0x80_0000, 0x2000, 1), (0x80_1000, 0x1000, 3)],
        ),
    );
    let out_of_range = temp_file(
        d,
        "oor.fd",
        &measured_boot::testing::sev_image(0x4000, &[(0xffff_f000, 0x1000, 1)]),
    );
    let kernel = temp_file(d, "k", b"k");
    let missing: String = d.join("missing.fd").to_string_lossy().into();

    let snp = |extra: &[&str]| {
        let mut v = s(&["measure", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4"]);
        v.extend(s(extra));
        v
    };
    fails(&snp(&["--ovmf", &missing]), "cannot read firmware");
    fails(&snp(&["--ovmf", &no_table]), "no OVMF footer GUID table");
    fails(&snp(&["--ovmf", &odd]), "not a non-zero multiple of 4096");
    fails(&snp(&["--ovmf", &overlap]), "overlaps");
    fails(
        &snp(&["--ovmf", &out_of_range]),
        "overlaps the firmware image",
    );
    fails(
        &snp(&["--ovmf", &sev_only, "--kernel", &kernel]),
        "no SNP_KERNEL_HASHES section",
    );
    fails(
        &snp(&["--ovmf", &good, "--kernel", &missing]),
        "cannot read kernel",
    );
    fails(
        &s(&[
            "measure",
            "snp",
            "--ovmf",
            &good,
            "--vcpus",
            "0",
            "--vcpu-type",
            "EPYC-v4",
        ]),
        "a guest has 1 to 255",
    );
    fails(
        &s(&[
            "measure",
            "snp",
            "--ovmf",
            &good,
            "--vcpus",
            "100000",
            "--vcpu-type",
            "EPYC-v4",
        ]),
        "a guest has 1 to 255",
    );
    fails(
        &s(&[
            "measure",
            "snp",
            "--ovmf",
            &good,
            "--vcpus",
            "1",
            "--vcpu-type",
            "Pentium",
        ]),
        "unknown vCPU type",
    );
    // The vCPU model defaults to cvm launch's (EPYC-v4), as the vCPU count (1) does.
    let default = run(CVM, &s(&["measure", "snp", "--ovmf", &good]));
    assert!(default.status.success(), "{default:?}");
    let explicit = run(
        CVM,
        &s(&[
            "measure",
            "snp",
            "--ovmf",
            &good,
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-v4",
        ]),
    );
    assert_eq!(default.stdout, explicit.stdout);
    fails(
        &s(&[
            "measure",
            "snp",
            "--ovmf",
            &good,
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC",
            "--vcpu-sig",
            "1",
        ]),
        "cannot be used with",
    );
    fails(
        &s(&[
            "measure",
            "snp",
            "--ovmf",
            &good,
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC",
            "--initrd",
            &kernel,
        ]),
        "--kernel",
    );
    fails(
        &s(&[
            "measure",
            "snp",
            "--ovmf",
            &good,
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC",
            "--vmm-type",
            "xen",
        ]),
        "unknown VMM type",
    );
    fails(
        &s(&["measure", "tdx", "--firmware", &sev_only]),
        "no TDX metadata",
    );
    fails(
        &s(&["measure", "tdx", "--firmware", &no_table]),
        "no OVMF footer GUID table",
    );
    let no_sev = temp_file(
        d,
        "tdx.fd",
        &measured_boot::testing::tdx_image(0x4000, &[(0, 0x1000, 0xffff_f000, 0x1000, 0, 1)]),
    );
    fails(&snp(&["--ovmf", &no_sev]), "no SEV metadata");
}

#[test]
fn no_panic_on_corrupted_firmware() {
    // Flip bytes across the metadata and footer of a valid image: every run must end
    // with a digest (exit 0) or a clear error (exit 2), never a crash.
    let dir = tempfile::tempdir().unwrap();
    let base = measured_boot::testing::ovmf_like(0x10000);
    let positions: Vec<usize> = (0x100..0x100 + 16 + 12 * 5)
        .chain(0x400..0x400 + 16 + 32 * 3)
        .chain(base.len() - 32 - 120..base.len() - 32)
        .step_by(3)
        .collect();
    let path: PathBuf = dir.path().join("fw.fd");
    for p in positions {
        let mut img = base.clone();
        img[p] ^= 0xA5;
        std::fs::write(&path, &img).unwrap();
        for tee in ["snp", "tdx"] {
            let mut args = s(&["measure", tee]);
            args.extend(s(&["--firmware", path.to_str().unwrap()]));
            if tee == "snp" {
                args.extend(s(&["--vcpus", "2", "--vcpu-type", "EPYC-v4"]));
            }
            let o = run(CVM, &args);
            let code = o.status.code();
            assert!(
                code == Some(0) || code == Some(2),
                "byte {p:#x} ({tee}): {code:?} {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}
