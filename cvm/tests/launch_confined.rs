//! `cvm launch` confined and controlled, under the real /dev/kvm: `--jail` (paths
//! resolved inside the jail, unprivileged), the per-VM cgroup (`--cpu-quota`,
//! `--memory-limit`, `--cpus`) and the `--api-socket` control API (status, pause,
//! resume, shutdown). The guests are tiny bzImages booted by the built-in firmware.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::bzimage;

const CVM: &str = env!("CARGO_BIN_EXE_cvm");
const NOBODY: u32 = 65534;

/// Prints "CONFINED-GUEST-OK\n" on COM1 and powers off (ACPI S5).
const PRINT_AND_POWER_OFF: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x48, 0x8d, 0x1d, 0x19, 0x00, 0x00, 0x00, // lea rbx, [rip + msg]
    0x8a, 0x03, 0x84, 0xc0, 0x74, 0x06, // mov al, [rbx]; test al, al; jz done
    0xee, 0x48, 0xff, 0xc3, 0xeb, 0xf4, // out dx, al; inc rbx; jmp loop
    0x66, 0xba, 0x04, 0x06, 0x66, 0xb8, 0x00, 0x34, 0x66, 0xef, // S5
    0xf4, 0xeb, 0xfd, // hlt; jmp hlt
    b'C', b'O', b'N', b'F', b'I', b'N', b'E', b'D', b'-', b'G', b'U', b'E', b'S', b'T', b'-', b'O',
    b'K', b'\n', 0,
];

/// Spins forever (`jmp $`).
const SPIN: &[u8] = &[0xeb, 0xfe];

fn root_and_kvm() -> bool {
    test_kit::require_kvm() && test_kit::require_root()
}

fn text(o: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn chown(p: &Path, uid: u32, gid: u32) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path string.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, gid) }, 0);
}

#[test]
fn a_jailed_vmm_runs_unprivileged_with_its_paths_inside_the_jail() {
    if !root_and_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("kernel");
    std::fs::write(&kernel, bzimage(PRINT_AND_POWER_OFF, 0)).unwrap();
    let jail = dir.path().join("jail");
    std::fs::create_dir(&jail).unwrap();
    chown(&jail, NOBODY, NOBODY);
    let disk = jail.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    chown(&disk, NOBODY, NOBODY);
    let out = Command::new(CVM)
        .args(["launch", "--tee", "none", "--kernel"])
        .arg(&kernel)
        .arg("--jail")
        .arg(&jail)
        .args(["--uid", "65534", "--gid", "65534"])
        // Both resolved inside the jail.
        .args(["--disk", "/disk.img", "--serial", "file:/console.log"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("entering the jail"));
    let console = std::fs::read_to_string(jail.join("console.log")).unwrap();
    assert!(console.contains("CONFINED-GUEST-OK"), "{console}");
    // Created by the jailed VMM, so owned by its unprivileged user.
    let meta = std::fs::metadata(jail.join("console.log")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), NOBODY);

    // A disk outside the jail cannot be reached from inside it.
    let outside = dir.path().join("outside.img");
    std::fs::write(&outside, vec![0u8; 1 << 20]).unwrap();
    let out = Command::new(CVM)
        .args(["launch", "--tee", "none", "--kernel"])
        .arg(&kernel)
        .arg("--jail")
        .arg(&jail)
        .args(["--uid", "65534", "--gid", "65534", "--disk"])
        .arg(&outside)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));

    // The relay needs the network, which the jail takes away unless asked.
    let out = Command::new(CVM)
        .args(["launch", "--tee", "none", "--kernel"])
        .arg(&kernel)
        .arg("--jail")
        .arg(&jail)
        .args(["--uid", "65534", "--gid", "65534"])
        .args(["--verifier", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--jail-netns host"),
        "{}",
        text(&out)
    );
}

fn call(sock: &Path, method: &str, path: &str) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: cvm\r\n\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat are utime and stime; `after` starts at field 3.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn cgroups_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

#[test]
fn the_control_api_pauses_resumes_and_stops_a_limited_vm() {
    if !root_and_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("spin");
    std::fs::write(&kernel, bzimage(SPIN, 0)).unwrap();
    let sock = dir.path().join("api.sock");
    let mut child = Command::new(CVM)
        .args(["launch", "--tee", "none", "--kernel"])
        .arg(&kernel)
        .arg("--api-socket")
        .arg(&sock)
        .args(["--cpu-quota", "50", "--memory-limit", "600M", "--cpus", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no API socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = call(&sock, "GET", "/v1/vm");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("\"running\""),
        "{r}"
    );
    assert!(r.contains("\"tee\":\"none\""), "{r}");
    let r = call(&sock, "GET", "/v1/vm/measurement");
    assert!(r.contains("\"measurement\":null"), "{r}");
    // The VMM (the child of `cvm`, which supervises it from outside the group) runs in
    // its own group with the quota.
    let vmm: u32 = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("the supervised VMM")
        .parse()
        .unwrap();
    // The supervisor leaves the group right after forking, while the VMM starts.
    let left = Instant::now() + Duration::from_secs(10);
    while cgroups_of(pid).contains(&format!("cvm-{pid}")) {
        assert!(
            Instant::now() < left,
            "the supervisor stayed in the VM's group"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let groups = cgroups_of(vmm);
    assert!(groups.contains(&format!("cvm-{pid}")), "{groups}");
    let quota_files: Vec<PathBuf> = groups
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctl, path) = (p.next()?, p.next()?, p.next()?);
            (ctl == "cpu").then(|| PathBuf::from(format!("/sys/fs/cgroup/cpu{path}")))
        })
        .collect();
    let cpu_dir = quota_files.first().cloned().expect("a cpu cgroup");
    let q = std::fs::read_to_string(cpu_dir.join("cpu.cfs_quota_us")).unwrap();
    assert_eq!(q.trim(), "50000");
    // `cvm` supervises the confined VMM from outside (to remove the group at the end):
    // the VM's CPU time is that of the group's members.
    let vm_cpu = || -> f64 {
        std::fs::read_to_string(cpu_dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .map(cpu_seconds)
            .sum()
    };

    // Running, the spinning guest uses CPU; paused, it does not.
    std::thread::sleep(Duration::from_millis(500));
    let c0 = vm_cpu();
    std::thread::sleep(Duration::from_secs(1));
    let running = vm_cpu() - c0;
    let r = call(&sock, "PUT", "/v1/vm/pause");
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    assert!(call(&sock, "GET", "/v1/vm").contains("\"paused\""));
    let r = call(&sock, "PUT", "/v1/vm/pause");
    assert!(r.starts_with("HTTP/1.1 409"), "{r}");
    // The same through `cvm api`: the state, and the refusal (exit 1, the VMM's detail).
    let api = |cmd: &str| {
        Command::new(CVM)
            .arg("api")
            .arg("--socket")
            .arg(&sock)
            .arg(cmd)
            .output()
            .unwrap()
    };
    let out = api("status");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"paused\""),
        "{out:?}"
    );
    let out = api("pause");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already paused"),
        "{out:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let c1 = vm_cpu();
    std::thread::sleep(Duration::from_secs(1));
    let paused = vm_cpu() - c1;
    assert!(
        running > 0.2,
        "the spinning guest used {running:.2}s of CPU in 1s"
    );
    assert!(
        running < 0.8,
        "the 50% quota let it use {running:.2}s in 1s"
    );
    assert!(
        paused < 0.05,
        "the paused guest used {paused:.2}s of CPU in 1s"
    );
    let r = call(&sock, "PUT", "/v1/vm/resume");
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    assert!(call(&sock, "GET", "/v1/vm").contains("\"running\""));
    let out = api("shutdown");
    assert!(out.status.success(), "{out:?}");
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}\n{stderr}");
    assert!(
        stderr.contains("shutdown requested through the control API"),
        "{stderr}"
    );
    assert!(stderr.contains("resource limits applied"), "{stderr}");
    // The group is gone with the VM.
    assert!(!cpu_dir.exists(), "{} was left behind", cpu_dir.display());
}

#[test]
fn limits_that_cannot_hold_the_guest_are_refused() {
    if !root_and_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("kernel");
    std::fs::write(&kernel, bzimage(PRINT_AND_POWER_OFF, 0)).unwrap();
    for (flag, value, says) in [
        ("--memory-limit", "256M", "overhead"),
        ("--cpus", "63", "not online"),
        ("--cpu-quota", "0", "outside"),
    ] {
        let out = Command::new(CVM)
            .args(["launch", "--tee", "none", "--memory", "512M", "--kernel"])
            .arg(&kernel)
            .args([flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{flag} {value}: {}",
            text(&out)
        );
    }
}

/// Prints "TEARDOWN-OK" (no newline: the console must be flushed at exit, not at a
/// line end) on COM1, then runs `stop` (10 bytes) and halts. The message follows at
/// offset 36, where the `lea` points.
fn print_then(stop: [u8; 10]) -> Vec<u8> {
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0x48, 0x8d, 0x1d, 0x19, 0x00, 0x00, 0x00, // lea rbx, [rip + msg]
        0x8a, 0x03, 0x84, 0xc0, 0x74, 0x06, // mov al, [rbx]; test al, al; jz done
        0xee, 0x48, 0xff, 0xc3, 0xeb, 0xf4, // out dx, al; inc rbx; jmp loop
    ];
    code.extend_from_slice(&stop);
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    assert_eq!(code.len(), 36);
    code.extend_from_slice(b"TEARDOWN-OK\0");
    code
}

/// `mov al, 0xfe; out 0x64, al`: an i8042 reset pulse.
const RESET: [u8; 10] = [0xb0, 0xfe, 0xe6, 0x64, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90];
/// `mov dx, 0x505; mov al, 1; out dx, al`: pvpanic "guest panicked".
const PANIC: [u8; 10] = [0x66, 0xba, 0x05, 0x05, 0xb0, 0x01, 0xee, 0x90, 0x90, 0x90];

/// The VM's cgroup directories, from the VMM's "resource limits applied" log line
/// (`groups=["/sys/fs/cgroup/cpu/…/cvm-N", …]`).
fn logged_groups(stderr: &str) -> Vec<PathBuf> {
    let line = stderr
        .lines()
        .find(|l| l.contains("resource limits applied"))
        .unwrap_or_else(|| panic!("no cgroup line in:\n{stderr}"));
    let list = &line[line.find("groups=[").expect("groups=") + 8..];
    let list = &list[..list.find(']').unwrap()];
    list.split(", ")
        .map(|p| PathBuf::from(p.trim_matches('"')))
        .collect()
}

/// Every teardown guarantee of `cvm launch` for a guest that stops right after it
/// starts: the exit status and reason, the console flushed, the final log line, the
/// cgroup removed (which also proves no VMM process is left in it) and the API socket
/// file removed — for a guest that asks for a reset and for one that panics.
#[test]
fn a_stopping_guest_leaves_nothing_behind() {
    if !root_and_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (stop, code, reason) in [
        (RESET, 1, "guest requested a reset"),
        (PANIC, 1, "guest panicked (pvpanic)"),
    ] {
        let kernel = dir.path().join("kernel");
        std::fs::write(&kernel, bzimage(&print_then(stop), 0)).unwrap();
        let sock = dir.path().join("api.sock");
        let out = Command::new(CVM)
            .args(["launch", "--tee", "none", "--kernel"])
            .arg(&kernel)
            .arg("--api-socket")
            .arg(&sock)
            .args(["--cpu-quota", "100", "--memory-limit", "600M"])
            .output()
            .unwrap();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(code), "{all}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(reason), "{all}");
        assert!(stderr.contains("event=\"shutdown\""), "{all}");
        assert!(
            String::from_utf8_lossy(&out.stdout).ends_with("TEARDOWN-OK"),
            "{all}"
        );
        let groups = logged_groups(&stderr);
        assert!(!groups.is_empty(), "{all}");
        for g in &groups {
            assert!(
                g.file_name().unwrap().to_string_lossy().starts_with("cvm-"),
                "{}",
                g.display()
            );
            assert!(!g.exists(), "{} was left behind\n{all}", g.display());
        }
        assert!(
            !sock.exists(),
            "the API socket {} was left behind\n{all}",
            sock.display()
        );
    }
}
