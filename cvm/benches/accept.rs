//! Memory acceptance at scale (issue 13 item 4): VM exits and wall time of an emulated
//! SEV-SNP and TDX boot to the kernel entry, with `BENCH_ACCEPT_MEMORY` of guest RAM
//! (default 4G), run by `scripts/bench-accept`.
//!
//! The guest is the project firmware with the minimal test kernel of
//! `cvm/tests/firmware.rs` (it prints its marker and powers off at once), so the run is
//! the pre-kernel phase: the firmware validates (SNP: page-state changes + PVALIDATE) or
//! accepts (TDX: TDG.MEM.PAGE.ACCEPT) every RAM range it hands to the kernel. On this
//! machine's KVM each emulated PVALIDATE/TDCALL is one exit to `cvm`
//! (KVM_EXIT_INTERNAL_ERROR), so the exit count is the cost of emulation; on hardware
//! those instructions do not exit.
//!
//! Reported per TEE: time from spawning `cvm launch` to the firmware's "entering" line
//! (the kernel entry), to the process exit, and the vCPU's exits by reason (the
//! `vcpu-stopped` log event), with exits per 2 MiB of guest RAM (goal ≤ 1).
//! Not a pass/fail test: it prints the figures (and fails only when a launch fails).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

struct Run {
    to_kernel: Option<Duration>,
    total: Duration,
    exits: serde_json::Map<String, serde_json::Value>,
}

fn parse_size(s: &str) -> u64 {
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n.parse().expect("BENCH_ACCEPT_MEMORY like 4G or 512M");
    match unit {
        "G" => n << 30,
        "M" => n << 20,
        _ => panic!("BENCH_ACCEPT_MEMORY like 4G or 512M"),
    }
}

fn launch(tee: &str, memory: &str, dir: &std::path::Path, platform: &str) -> Run {
    let kernel = dir.join("kernel");
    let initrd = dir.join("initrd");
    std::fs::write(&kernel, common::bzimage(common::TEST_KERNEL_ENTRY64, 0)).unwrap();
    std::fs::write(&initrd, b"initrd").unwrap();
    let start = Instant::now();
    let mut child = Command::new(CVM)
        .args(["launch", "--tee", tee, "--emulated-platform", platform])
        .args(["--memory", memory, "--log-format", "json"])
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--cmdline", "console=ttyS0 cvm.test=bench-accept"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cvm");
    let stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map(|l| l.unwrap_or_default())
            .collect::<Vec<_>>()
    });
    let mut to_kernel = None;
    let mut out = String::new();
    for l in BufReader::new(child.stdout.take().unwrap()).lines() {
        let l = l.unwrap_or_default();
        if to_kernel.is_none() && l.contains("cvm-firmware: kernel") && l.contains("entering") {
            to_kernel = Some(start.elapsed());
        }
        out.push_str(&l);
        out.push('\n');
    }
    let status = child.wait().unwrap();
    let total = start.elapsed();
    let err = err_thread.join().unwrap();
    assert!(
        status.success() && out.contains("TESTKERNEL-OK"),
        "{tee} {memory}: {status}\n{out}\n{}",
        err.join("\n")
    );
    let mut exits = serde_json::Map::new();
    for l in &err {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let fields = v.get("fields").unwrap_or(&v);
        if fields.get("event").and_then(|e| e.as_str()) == Some("vcpu-stopped") {
            for (k, val) in fields.as_object().into_iter().flatten() {
                if k.starts_with("exits") {
                    exits.insert(k.clone(), val.clone());
                }
            }
        }
    }
    assert!(
        !exits.is_empty(),
        "{tee}: no vcpu-stopped event with exit counts:\n{}",
        err.join("\n")
    );
    Run {
        to_kernel,
        total,
        exits,
    }
}

fn main() {
    if !std::path::Path::new("/dev/kvm").exists() {
        println!("bench-accept: SKIPPED: no /dev/kvm");
        return;
    }
    let memory = std::env::var("BENCH_ACCEPT_MEMORY").unwrap_or_else(|_| "4G".into());
    let bytes = parse_size(&memory);
    let dir = tempfile::tempdir().unwrap();
    let platform = common::emulated_platform();
    println!("bench-accept: {memory} of guest RAM, boot to the kernel entry (one vCPU)");
    println!(
        "{:<14} {:>12} {:>9} {:>9} {:>13} {:>9} {:>7} {:>5} {:>9}",
        "tee",
        "to kernel s",
        "total s",
        "exits",
        "exits/2 MiB",
        "internal",
        "io",
        "msr",
        "hypercall"
    );
    for tee in ["emulated-snp", "emulated-tdx"] {
        let r = launch(tee, &memory, dir.path(), &platform);
        let n = |k: &str| r.exits.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let per_2m = n("exits") as f64 / (bytes as f64 / f64::from(2u32 << 20));
        println!(
            "{:<14} {:>12} {:>9.2} {:>9} {:>13.2} {:>9} {:>7} {:>5} {:>9}",
            tee,
            r.to_kernel
                .map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64())),
            r.total.as_secs_f64(),
            n("exits"),
            per_2m,
            n("exits_internal"),
            n("exits_io"),
            n("exits_msr"),
            n("exits_hypercall"),
        );
    }
}
