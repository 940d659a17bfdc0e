//! The exit-code convention (`cli-support`'s crate docs, the README's "Exit codes"):
//! 2 for a usage error or an unreadable or invalid input, 1 for a refusal or a failed
//! run. One table row per bad input, each asserting the code and a message that names
//! the problem.

use std::path::Path;
use std::process::Command;

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

/// One bad invocation: its arguments, the expected exit code and a text stderr must
/// contain.
struct Case {
    args: Vec<String>,
    code: i32,
    says: &'static str,
}

fn case(args: &[&str], code: i32, says: &'static str) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        code,
        says,
    }
}

fn check(cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let out = Command::new(CVM).args(&c.args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(c.code) || !stderr.contains(c.says) {
            failures.push(format!(
                "cvm {}: exit {:?} (want {}), stderr does not say {:?}:\n{stderr}",
                c.args.join(" "),
                out.status.code(),
                c.code,
                c.says
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

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
    check(&[
        case(&["no-such-command"], 2, "unrecognized subcommand"),
        case(&["launch", "--no-such-flag"], 2, "unexpected argument"),
        case(
            &["measure", "snp", "--vcpus", "1", "--ovmf", p(&missing)],
            2,
            "missing",
        ),
        case(
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
        case(
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
        case(
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
        case(
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
        case(
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
        case(
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
        case(
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
    ]);
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
    check(&[
        // The inputs are fine; writing the result fails.
        case(&["firmware", "--out", p(&nowhere)], 1, "no-such-dir"),
        case(
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
        case(
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
    ]);
}
