//! The exit-code convention (`cli-support`'s crate docs, the README's "Exit codes"):
//! 2 for a usage error or an unreadable or invalid input, 1 for a refusal or a failed
//! run. One table row per bad input, each asserting the code and a message that names
//! the problem.

use std::path::Path;
use std::process::Command;

use test_kit::{assert_refusals, Refusal};

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn usage_and_unreadable_inputs_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let exists = dir.path().join("exists.img");
    std::fs::write(&exists, b"x").unwrap();
    let key = dir.path().join("k");
    assert_refusals(
        CVM,
        &[
            Refusal::new(&["no-such-command"], 2, "unrecognized subcommand"),
            Refusal::new(&["launch", "--no-such-flag"], 2, "unexpected argument"),
            Refusal::new(
                &["launch", "--tee", "none", "--firmware", p(&missing)],
                2,
                "cannot read firmware",
            ),
            Refusal::new(
                &["launch", "--tee", "none", "--memory", "12 parsecs"],
                2,
                "--memory",
            ),
            Refusal::new(
                &["launch", "--tee", "emulated-snp"],
                2,
                "needs --emulated-platform",
            ),
            Refusal::new(
                &["measure", "snp", "--vcpus", "1", "--ovmf", p(&missing)],
                2,
                "missing",
            ),
            Refusal::new(
                &[
                    "image",
                    "disk",
                    "--size",
                    "4M",
                    "--out",
                    p(&exists),
                    "--key-out",
                    p(&key),
                    "--message",
                    "m",
                ],
                2,
                "already exists",
            ),
            Refusal::new(
                &[
                    "image",
                    "disk",
                    "--size",
                    "4M",
                    "--out",
                    &format!("{}.new", p(&exists)),
                    "--key-out",
                    p(&key),
                    "--from-file",
                    p(&missing),
                ],
                2,
                "cannot read",
            ),
            Refusal::new(
                &[
                    "image",
                    "disk",
                    "--size",
                    "4 lightyears",
                    "--out",
                    "x",
                    "--key-out",
                    "y",
                ],
                2,
                "--size",
            ),
            Refusal::new(
                &[
                    "image",
                    "initramfs",
                    "--out",
                    &format!("{}.cpio", p(&exists)),
                    "--agent",
                    p(&missing),
                ],
                2,
                "missing",
            ),
            Refusal::new(
                &[
                    "emulated",
                    "report",
                    "snp",
                    "--dir",
                    p(&missing),
                    "--report-data",
                    "00",
                    "--out",
                    "r",
                ],
                2,
                "missing",
            ),
            Refusal::new(
                &[
                    "emulated",
                    "report",
                    "snp",
                    "--dir",
                    p(&missing),
                    "--report-data",
                    "zz",
                    "--out",
                    "r",
                ],
                2,
                "--report-data",
            ),
            Refusal::new(
                &[
                    "emulated",
                    "quote",
                    "tdx",
                    "--dir",
                    p(&missing),
                    "--report-data",
                    "00",
                    "--out",
                    "q",
                    "--collateral-out",
                    "c",
                ],
                2,
                "missing",
            ),
        ],
    );
}

#[test]
fn failed_runs_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("no-such-dir").join("out");
    let plat = dir.path().join("plat");
    let init = Command::new(CVM)
        .args(["emulated", "init", "--dir", p(&plat)])
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    assert_refusals(
        CVM,
        &[
            // The inputs are fine; writing the result fails.
            Refusal::new(&["firmware", "--out", p(&nowhere)], 1, "no-such-dir"),
            Refusal::new(
                &[
                    "emulated",
                    "report",
                    "snp",
                    "--dir",
                    p(&plat),
                    "--report-data",
                    "00",
                    "--out",
                    p(&nowhere),
                ],
                1,
                "cannot write",
            ),
            Refusal::new(
                &[
                    "emulated",
                    "quote",
                    "tdx",
                    "--dir",
                    p(&plat),
                    "--report-data",
                    "00",
                    "--out",
                    p(&nowhere),
                    "--collateral-out",
                    p(&nowhere),
                ],
                1,
                "cannot write",
            ),
        ],
    );
}

/// Inputs only the VMM can judge (sizes, counts, files it opens) are still the
/// operator's mistakes: exit 2, with the problem named.
#[test]
fn inputs_the_vmm_refuses_exit_2() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.fd");
    std::fs::write(&small, vec![0xF4u8; 1000]).unwrap();
    let missing = dir.path().join("missing.img");
    let serial = format!("file:{}", dir.path().join("no-dir").join("log").display());
    let none = ["launch", "--tee", "none"];
    let with = |extra: &[&'static str]| [&none[..], extra].concat();
    let rows: Vec<(Vec<&str>, &str)> = vec![
        (with(&["--memory", "1M"]), "guest memory size"),
        (with(&["--vcpus", "0"]), "vCPUs requested"),
        (with(&["--vcpus", "100000"]), "vCPUs requested"),
        (
            [&none[..], &["--disk", p(&missing)]].concat(),
            "cannot open disk image",
        ),
        (
            [&none[..], &["--serial", &serial]].concat(),
            "serial output file",
        ),
        (
            [&none[..], &["--firmware", p(&small)]].concat(),
            "firmware of",
        ),
    ];
    let table: Vec<Refusal<'_>> = rows
        .iter()
        .map(|(args, says)| Refusal::new(args, 2, says))
        .collect();
    assert_refusals(CVM, &table);
}
