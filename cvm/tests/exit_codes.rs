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
            // F6: --tee-trap means something only under the emulated TEEs; silently
            // ignoring it elsewhere would let a test believe it forced a trap.
            Refusal::new(
                &["launch", "--tee", "none", "--tee-trap", "port"],
                2,
                "--tee-trap is for --tee emulated-snp|emulated-tdx only",
            ),
            Refusal::new(
                &["launch", "--tee", "snp", "--tee-trap", "auto"],
                2,
                "--tee-trap is for --tee emulated-snp|emulated-tdx only",
            ),
            Refusal::new(
                &["launch", "--tee", "tdx", "--tee-trap", "instruction"],
                2,
                "--tee-trap is for --tee emulated-snp|emulated-tdx only",
            ),
            Refusal::new(
                &["measure", "snp", "--vcpus", "1", "--ovmf", p(&missing)],
                2,
                "missing",
            ),
            Refusal::new(&["measure"], 2, "--config"),
            Refusal::new(&["measure", "snp", "--vcpus", "256"], 2, "1 to 255"),
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

/// Runs each row and asserts: the exit code, a message naming the problem, and that
/// nothing was started first (no "launching guest" line, no expected measurement, no
/// guest output).
fn assert_checked_before_start(rows: &[(Vec<String>, i32, &str)]) {
    let mut failures = String::new();
    for (args, code, says) in rows {
        let out = test_kit::run_with_deadline(
            Command::new(CVM)
                .args(args)
                .env_remove("CVM_LOG")
                .env_remove("RUST_LOG")
                .stdin(std::process::Stdio::null()),
            std::time::Duration::from_secs(60),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        let started = err.contains("launching guest") || err.contains("expected measurement");
        if out.status.code() != Some(*code)
            || !err.contains(says)
            || started
            || err.contains("panicked")
            || !out.stdout.is_empty()
        {
            failures.push_str(&format!(
                "- {args:?}: expected exit {code} with {says:?} before any start, got {:?}\n  stderr: {}\n  stdout: {}\n",
                out.status.code(),
                err.trim_end(),
                String::from_utf8_lossy(&out.stdout).trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "rows failed:\n{failures}");
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Every bad launch input of issue 16, refused before the "launching guest" line with
/// exit 2 and the flag or key named. Runs without KVM: none of these may get that far.
#[test]
fn bad_inputs_are_refused_before_the_guest_starts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 64 KiB of pseudo-random bytes (fixed seed: a reproducible "random firmware").
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let blob: Vec<u8> = (0..0x10000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let rand = d.join("random.fd");
    std::fs::write(&rand, &blob).unwrap();
    // A firmware image in form, whose reset vector does not jump.
    let mut nojump = measured_boot::testing::emulated_guest_image(&[0xf4]);
    nojump[0xfff0..0xfff3].copy_from_slice(&[0xf4, 0xf4, 0xf4]);
    let nojump_path = d.join("nojump.fd");
    std::fs::write(&nojump_path, &nojump).unwrap();
    let kernel = d.join("bzImage");
    std::fs::write(&kernel, b"not really a kernel").unwrap();
    let k = p(&kernel);
    let plat = d.join("platform");
    let toml = |name: &str, text: &str| {
        let f = d.join(name);
        std::fs::write(&f, text).unwrap();
        f.to_str().unwrap().to_owned()
    };
    let unknown_key = toml(
        "unknown.toml",
        "version = 1\ntee = \"none\"\nmemmory = \"1G\"\n",
    );
    let bad_memory = toml(
        "mem.toml",
        "version = 1\ntee = \"none\"\nmemory = \"512\"\n",
    );
    let bad_version = toml("v2.toml", "version = 2\ntee = \"none\"\n");
    let wrong_section = toml(
        "sect.toml",
        "version = 1\ntee = \"snp\"\n[tdx]\nmrconfigid = \"00\"\n",
    );
    let no_tee = toml("notee.toml", "version = 1\n");
    let serial = format!("file:{}", d.join("no-dir").join("log").display());
    let uds = d.join("no-dir").join("v.sock").display().to_string();
    let missing_disk = d.join("missing.img").display().to_string();
    let launch = |extra: &[&str]| strings(&[&["launch"][..], extra].concat());
    let mut rows: Vec<(Vec<String>, i32, &str)> = vec![
        // Sizes with units and a hint.
        (
            launch(&["--tee", "none", "--kernel", k, "--memory", "512"]),
            2,
            "512 bytes is below the minimum of 16 MiB; did you mean 512M?",
        ),
        (
            launch(&["--tee", "none", "--kernel", k, "--memory", "1M"]),
            2,
            "--memory",
        ),
        (
            launch(&["--tee", "none", "--kernel", k, "--memory", "12 parsecs"]),
            2,
            "not a size",
        ),
        (
            launch(&["--tee", "none", "--kernel", k, "--memory", "17M"]),
            2,
            "multiple of 2 MiB",
        ),
        // 512MB is a size like 4MB is for `image disk`: what fails here is the fake kernel.
        (
            launch(&[
                "--tee",
                "none",
                "--kernel",
                k,
                "--memory",
                "512MB",
                "--firmware",
                p(&rand),
            ]),
            2,
            "is not a firmware image",
        ),
        // One vCPU limit for launch and measure.
        (
            launch(&["--tee", "none", "--kernel", k, "--vcpus", "0"]),
            2,
            "--vcpus",
        ),
        (
            launch(&["--tee", "none", "--kernel", k, "--vcpus", "256"]),
            2,
            "1 to 255",
        ),
        (
            strings(&["measure", "snp", "--vcpus", "256"]),
            2,
            "1 to 255",
        ),
        (strings(&["measure", "snp", "--vcpus", "0"]), 2, "1 to 255"),
        // --tee none without a kernel (the built-in firmware has nothing to boot).
        (launch(&["--tee", "none"]), 2, "needs --kernel"),
        (
            launch(&["--tee", "none", "--initrd", k]),
            2,
            "--initrd needs a kernel",
        ),
        (
            launch(&["--tee", "none", "--cmdline", "x"]),
            2,
            "--cmdline needs a kernel",
        ),
        // Emulated TEEs need their platform; exit 2 like every usage error.
        (
            launch(&["--tee", "emulated-snp", "--kernel", k]),
            2,
            "needs --emulated-platform",
        ),
        (
            launch(&["--tee", "emulated-tdx", "--kernel", k]),
            2,
            "needs --emulated-platform",
        ),
        // A missing platform directory.
        (
            launch(&[
                "--tee",
                "emulated-snp",
                "--kernel",
                k,
                "--emulated-platform",
                p(&plat),
            ]),
            2,
            "",
        ),
        // Flags that need another.
        (
            launch(&["--tee", "none", "--kernel", k, "--ca-cert", k]),
            2,
            "--ca-cert is for the verifier's https --url",
        ),
        (
            launch(&["--tee", "none", "--kernel", k, "--url", "ftp://x"]),
            2,
            "--url",
        ),
        // The description file: unknown keys, bad values, versions, sections, no TEE.
        (
            launch(&["--config", &unknown_key, "--kernel", k]),
            2,
            "memmory",
        ),
        (
            launch(&["--config", &bad_memory, "--kernel", k]),
            2,
            "`memory`: 512 bytes is below the minimum of 16 MiB; did you mean 512M?",
        ),
        (launch(&["--config", &bad_version]), 2, "version = 2"),
        (launch(&["--config", &wrong_section]), 2, "[tdx]"),
        (launch(&["--config", &no_tee]), 2, "--tee is required"),
        (
            launch(&["--config", p(&d.join("absent.toml"))]),
            2,
            "cannot read the VM description",
        ),
        (
            strings(&["measure", "--config", &unknown_key]),
            2,
            "memmory",
        ),
        // Files the VMM would open only after starting: checked first.
        (
            launch(&["--tee", "none", "--kernel", k, "--disk", &missing_disk]),
            2,
            "cannot open the disk image",
        ),
        (
            launch(&["--tee", "none", "--kernel", k, "--serial", &serial]),
            2,
            "does not exist",
        ),
        (
            launch(&["--tee", "none", "--kernel", k, "--vsock-uds", &uds]),
            2,
            "does not exist",
        ),
    ];
    // A firmware that is not a firmware image, for every TEE (snp and tdx included: the
    // format is checked before the host is asked for the TEE).
    for tee in ["none", "snp", "tdx", "emulated-snp", "emulated-tdx"] {
        for fw in [&rand, &nojump_path] {
            rows.push((
                launch(&[
                    "--tee",
                    tee,
                    "--kernel",
                    k,
                    "--emulated-platform",
                    p(&plat),
                    "--firmware",
                    p(fw),
                ]),
                2,
                "is not a firmware image",
            ));
        }
    }
    assert_checked_before_start(&rows);
}

/// One overwrite rule: an existing output is refused (exit 2, naming --force) by every
/// command that writes one, and replaced with --force.
#[test]
fn existing_outputs_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let existing = d.join("existing");
    std::fs::write(&existing, b"keep me").unwrap();
    let e = p(&existing);
    let key = d.join("k");
    let plat = d.join("plat");
    std::fs::create_dir_all(plat.join("snp")).unwrap();
    assert_refusals(
        CVM,
        &[
            Refusal::new(&["firmware", "--out", e], 2, "add --force"),
            Refusal::new(&["image", "initramfs", "--out", e], 2, "add --force"),
            Refusal::new(
                &[
                    "image",
                    "disk",
                    "--size",
                    "4M",
                    "--out",
                    e,
                    "--key-out",
                    p(&key),
                ],
                2,
                "add --force",
            ),
            Refusal::new(&["emulated", "init", "--dir", p(&plat)], 2, "add --force"),
        ],
    );
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    let o = Command::new(CVM)
        .args(["firmware", "--force", "--output", "json", "--out", e])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["bytes"].as_u64(),
        Some(std::fs::metadata(&existing).unwrap().len())
    );
    assert_ne!(std::fs::read(&existing).unwrap(), b"keep me");
}
