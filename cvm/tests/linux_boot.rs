//! Opt-in: boot a stock Linux kernel to its init under `cvm launch --tee none` with the
//! project firmware (measured direct boot: the firmware checks the kernel, initrd and
//! command-line hashes, builds `boot_params` with the e820 map, command line, initrd
//! and ACPI RSDP, and enters the kernel's 64-bit entry point).
//!
//! Set `CVM_LINUX_KERNEL=/path/to/vmlinuz` (a bzImage, e.g. Debian's
//! `/boot/vmlinuz-*-cloud-amd64`). The initramfs is made here from Debian's
//! `busybox-static`: its `/init` prints a marker and powers the VM off. This machine's
//! KVM (PVM) cannot run a stock kernel (it stops on `lock cmpxchg16b`), so the test is
//! skipped unless the variable is set; run it on a host with hardware virtualization.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const CVM: &str = env!("CARGO_BIN_EXE_cvm");
const MARKER: &str = "CVM-LINUX-INIT-REACHED";

fn initramfs(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    std::fs::write(
        root.join("init"),
        format!("#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n"),
    )
    .unwrap();
    Command::new("chmod")
        .args(["755"])
        .arg(root.join("init"))
        .status()
        .unwrap();
    let out = dir.join("initramfs.cpio");
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .expect("cpio is installed");
    cpio.stdin
        .take()
        .unwrap()
        .write_all(b".\nbin\nbin/busybox\ninit\n")
        .unwrap();
    assert!(cpio.wait().unwrap().success());
    out
}

#[test]
fn stock_kernel_reaches_init() {
    // Optional even under CI: a stock kernel is not part of CI's machine.
    let Some(kernel) = std::env::var_os("CVM_LINUX_KERNEL") else {
        test_kit::skip_optional("set CVM_LINUX_KERNEL=/path/to/vmlinuz to boot a stock kernel");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = initramfs(dir.path());
    let out = Command::new(CVM)
        .args(["launch", "--tee", "none", "--memory", "512M", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args([
            "--cmdline",
            "console=ttyS0 panic=-1 rdinit=/init",
            "--serial",
            "stdout",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(MARKER),
        "the kernel did not reach init: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
