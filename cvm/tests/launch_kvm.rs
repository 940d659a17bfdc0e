//! `cvm launch` under the real /dev/kvm with tiny hand-assembled real-mode guests.
//!
//! This machine's KVM interprets CPL0 and real-mode code (see ../shared/PLATFORM.md),
//! which is fine for these few instructions. Without /dev/kvm the tests fail under CI
//! and are skipped (with a message) elsewhere.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

/// A firmware: `code` at 0xFFFFF000 and, at the reset vector 0xFFFFFFF0, a near jump
/// back to it (CS base 0xFFFF0000, IP 0xF000).
fn image(code: &[u8]) -> Vec<u8> {
    // A firmware image as `cvm launch` requires one (footer GUID table, a jump at the
    // reset vector): 64 KiB in the OVMF layout, `code` at 0xFFFFF000.
    measured_boot::testing::emulated_guest_image(code)
}

/// `mov dx, port`
fn mov_dx(port: u16) -> Vec<u8> {
    let [lo, hi] = port.to_le_bytes();
    vec![0xba, lo, hi]
}

/// Prints `text` on COM1.
fn print(text: &[u8]) -> Vec<u8> {
    let mut v = mov_dx(0x3f8);
    for &c in text {
        v.extend_from_slice(&[0xb0, c, 0xee]); // mov al, c; out dx, al
    }
    v
}

/// ACPI S5 power-off: PM1a_CNT <- SLP_EN | SLP_TYP(5).
fn power_off() -> Vec<u8> {
    let mut v = mov_dx(0x604);
    v.extend_from_slice(&[0xb8, 0x00, 0x34, 0xef, 0xf4, 0xeb, 0xfd]); // mov ax,0x3400; out dx,ax; hlt; jmp $-1
    v
}

fn launch(dir: &Path, code: &[u8], extra: &[&str]) -> Output {
    let fw = dir.join("fw.fd");
    std::fs::write(&fw, image(code)).unwrap();
    let mut cmd = Command::new(CVM);
    cmd.args(["launch", "--tee", "none", "--memory", "64M", "--firmware"])
        .arg(&fw)
        .args(extra);
    test_kit::run_with_deadline(&mut cmd, Duration::from_secs(60))
}

#[test]
fn serial_output_and_clean_power_off_exit_0() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let code = [print(b"hello from the guest\n"), power_off()].concat();
    let o = launch(dir.path(), &code, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello from the guest\n");
    assert!(
        err.contains("event=\"launch\"") && err.contains("event=\"shutdown\""),
        "lifecycle log: {err}"
    );
}

#[test]
fn serial_to_file_and_unknown_ports_are_harmless() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let mut code = mov_dx(0x1234);
    code.extend_from_slice(&[0xec]); // in al, dx (unknown port -> 0xff)
    code.extend_from_slice(&[0x3c, 0xff, 0x75, 0x0c]); // cmp al, 0xff; jne +12 (skip the "ok" print)
    code.extend(print(b"ok")); // 3 + 2*3 = 9 bytes... padded below
    code.extend_from_slice(&[0x90, 0x90, 0x90]); // nops so the jne target lands after the print
    code.extend(mov_dx(0x80));
    code.extend_from_slice(&[0xb0, 0x42, 0xee]); // out 0x80 (unknown): swallowed
    code.extend(power_off());
    let out = dir.path().join("serial.log");
    let o = launch(
        dir.path(),
        &code,
        &["--serial", &format!("file:{}", out.display())],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout.is_empty());
    assert_eq!(std::fs::read(&out).unwrap(), b"ok");
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown port"));
}

#[test]
fn i8042_reset_stops_the_vm_as_a_failure() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let code = [mov_dx(0x64), vec![0xb0, 0xfe, 0xee, 0xf4]].concat();
    let o = launch(dir.path(), &code, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    // A reset is what Linux does after a panic (panic=-1): never success.
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("requested a reset"), "{err}");
}

#[test]
fn emulation_failure_exits_nonzero_with_instruction_bytes() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    // pxor xmm0, xmm0: this host's CPL0 interpreter cannot emulate SSE arithmetic.
    let o = launch(dir.path(), &[0x66, 0x0f, 0xef, 0xc0, 0xf4], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: KVM could not emulate a guest instruction"),
        "{err}"
    );
    assert!(err.contains("instruction bytes 66 0f ef c0 f4"), "{err}");
    assert!(err.contains("CS:RIP 0xf000:0xf000"), "{err}");
}

#[test]
fn smp_guest_stops_every_vcpu() {
    test_kit::require!(kvm);
    // The APs wait for INIT-SIPI in the kernel; the BSP's power-off must still end the VM.
    let dir = tempfile::tempdir().unwrap();
    let o = launch(
        dir.path(),
        &[print(b"bsp\n"), power_off()].concat(),
        &["--vcpus", "4"],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "bsp\n");
}

#[test]
fn confidential_tees_are_refused_on_this_host_with_reasons() {
    test_kit::require!(kvm);
    let caps = Command::new(CVM)
        .args(["host-check", "--json", "--tee", "snp"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&caps.stdout).unwrap();
    let snp_ok = v["can_run"].as_bool().unwrap();
    assert_eq!(caps.status.code(), Some(if snp_ok { 0 } else { 1 }));
    let dir = tempfile::tempdir().unwrap();
    for tee in ["snp", "tdx"] {
        let fw = dir.path().join("fw.fd");
        std::fs::write(&fw, image(&power_off())).unwrap();
        let o = Command::new(CVM)
            .args(["launch", "--tee", tee, "--firmware"])
            .arg(&fw)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{tee}: {err}");
        assert!(err.contains("launch refused"), "{tee}: {err}");
        assert!(o.stdout.is_empty(), "no guest ran");
        if !snp_ok {
            let vm_type = if tee == "snp" {
                "VM type 4"
            } else {
                "VM type 5"
            };
            assert!(err.contains(vm_type), "{tee}: {err}");
        }
    }
    let none = Command::new(CVM)
        .args(["host-check", "--tee", "none"])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(0));
}

#[test]
fn bad_launch_arguments_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let fw = dir.path().join("fw.fd");
    std::fs::write(&fw, vec![0u8; 1000]).unwrap();
    for (args, needle) in [
        (vec!["--memory", "64M"], "is not a firmware image"),
        (vec!["--memory", "1M"], "below the minimum of 16 MiB"),
        (vec!["--memory", "64Q"], "`64Q` is not a size"),
        (vec!["--serial", "tcp:1"], "expected stdout"),
        (
            vec!["--snp-certs", "/x"],
            "--snp-certs is for --tee snp only",
        ),
        (vec!["--tdx-qgs", "/x"], "--tdx-qgs is for --tee tdx only"),
        (
            vec!["--id-block", "/x", "--id-auth", "/y"],
            "--id-block/--id-auth is for --tee snp only",
        ),
        (vec!["--id-block", "/x"], "--id-auth"),
    ] {
        let o = Command::new(CVM)
            .args(["launch", "--tee", "none", "--firmware"])
            .arg(&fw)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn seccomp_can_be_switched_off_only_loudly() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let code = [print(b"x"), power_off()].concat();
    let on = launch(dir.path(), &code, &[]);
    assert!(!String::from_utf8_lossy(&on.stderr).contains("seccomp filters are OFF"));
    let off = launch(dir.path(), &code, &["--seccomp", "off"]);
    assert_eq!(off.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&off.stderr).contains("seccomp filters are OFF"));
}
