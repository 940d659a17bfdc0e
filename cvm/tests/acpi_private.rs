//! Issue 13 bug 7: the ACPI tables of a confidential guest live in guest-private
//! memory that the firmware owns, and the kernel is told where (boot_params
//! `acpi_rsdp_addr`, an e820 ACPI range), as OVMF does on SNP/TDX.
//!
//! The VMM stages the table blob in the shared staging region (untrusted host input);
//! the firmware copies it into private memory it has validated/accepted, checks it
//! (sizes, checksums, RSDP/XSDT/FADT structure, every pointer inside the blob) and
//! relocates it. Before the fix the tables lived only in host-shared memory at
//! 0xE0000, e820 type 2: under emulated TDX (the private-memory contract) the test
//! kernel's read of the RSDP is a read of a page nobody accepted, which the VMM reports
//! as the hardware's fault.
//!
//! The test kernel ([`common::ACPI_KERNEL_ENTRY64`]) prints the e820 map, the RSDP
//! address and the MADT it finds through RSDP -> XSDT, read through the firmware's page
//! tables (private memory on SNP and TDX).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

mod common;

const CVM: &str = env!("CARGO_BIN_EXE_cvm");
const CMDLINE: &str = "console=ttyS0 cvm.test=acpi";
const E820_ACPI: u32 = 3;

struct Inputs {
    _dir: tempfile::TempDir,
    firmware: String,
    kernel: String,
}

fn inputs() -> Inputs {
    let img = guest_images::image();
    assert!(
        !img.is_empty(),
        "cvm was built without its firmware (CVM_SKIP_GUEST_BUILD?)"
    );
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, data: &[u8]| {
        let f: PathBuf = dir.path().join(name);
        std::fs::write(&f, data).unwrap();
        f.to_string_lossy().into_owned()
    };
    Inputs {
        firmware: w("cvm-firmware.fd", img),
        kernel: w("bzImage", &common::bzimage(common::ACPI_KERNEL_ENTRY64, 0)),
        _dir: dir,
    }
}

fn launch(i: &Inputs, tee: &str, vcpus: u32, extra: &[&str]) -> Output {
    let plat = common::emulated_platform();
    let vcpus = vcpus.to_string();
    let mut args = vec![
        "launch",
        "--tee",
        tee,
        "--firmware",
        i.firmware.as_str(),
        "--memory",
        "256M",
        "--vcpus",
        vcpus.as_str(),
        "--kernel",
        i.kernel.as_str(),
        "--cmdline",
        CMDLINE,
    ];
    if tee != "none" {
        args.extend_from_slice(&["--emulated-platform", plat.as_str()]);
    }
    args.extend_from_slice(extra);
    test_kit::run_timed(
        Command::new(CVM)
            .args(&args)
            .env("CVM_ALLOW_TAMPER_FOR_TESTS", "1"),
        Duration::from_secs(300),
    )
    .0
}

/// The hex bytes after `key` on its own line of `out`.
fn hex_line(out: &str, key: &str) -> Option<Vec<u8>> {
    let l = out.lines().find_map(|l| l.trim().strip_prefix(key))?;
    (0..l.len() / 2)
        .map(|i| u8::from_str_radix(&l[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The e820 entries (start, end, type).
fn e820(raw: &[u8]) -> Vec<(u64, u64, u32)> {
    raw.chunks_exact(20)
        .map(|e| (u64_at(e, 0), u64_at(e, 0) + u64_at(e, 8), u32_at(e, 16)))
        .collect()
}

/// The MADT's interrupt controller structures as (type, bytes).
fn madt_structures(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut v = Vec::new();
    let mut o = 44;
    while o + 2 <= madt.len() {
        let len = usize::from(madt[o + 1]);
        assert!(len >= 2 && o + len <= madt.len(), "MADT structure at {o}");
        v.push((madt[o], madt[o..o + len].to_vec()));
        o += len;
    }
    v
}

/// Under emulated TDX (the private-memory contract is enforced) and emulated SNP the
/// guest finds the MADT where the firmware says: in an e820 ACPI range, in memory it
/// can read privately, complete (one local APIC per vCPU; a TD's wakeup structure).
/// `--tee none` keeps working the same way.
#[test]
fn confidential_guests_find_the_madt_in_private_memory_where_the_firmware_says() {
    test_kit::require!(kvm);
    let i = inputs();
    for (tee, vcpus) in [("emulated-tdx", 2u32), ("emulated-snp", 1), ("none", 2)] {
        let o = launch(&i, tee, vcpus, &[]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "--tee {tee}: {out}\n{err}");
        assert!(out.contains("TESTKERNEL-OK"), "--tee {tee}: {out}");
        let map = e820(&hex_line(&out, "E820=").expect("no E820 line"));
        let rsdp = u64_at(&hex_line(&out, "RSDP=").expect("no RSDP line"), 0);
        let acpi = map
            .iter()
            .find(|&&(s, e, _)| s <= rsdp && rsdp + 36 <= e)
            .unwrap_or_else(|| panic!("--tee {tee}: RSDP {rsdp:#x} in no e820 range: {map:x?}"));
        assert_eq!(
            acpi.2, E820_ACPI,
            "--tee {tee}: the RSDP {rsdp:#x} lies in {acpi:x?}, not an e820 ACPI range"
        );
        assert!(
            !map.iter()
                .any(|&(s, e, t)| t == 1 && s < acpi.1 && e > acpi.0),
            "--tee {tee}: the ACPI range overlaps RAM: {map:x?}"
        );
        let madt = hex_line(&out, "MADT=")
            .unwrap_or_else(|| panic!("--tee {tee}: no MADT found through RSDP -> XSDT: {out}"));
        assert_eq!(&madt[..4], b"APIC", "--tee {tee}");
        assert_eq!(u32_at(&madt, 4) as usize, madt.len());
        assert_eq!(
            madt.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
            0,
            "--tee {tee}: MADT checksum"
        );
        let s = madt_structures(&madt);
        assert_eq!(
            s.iter().filter(|(t, _)| *t == 0).count(),
            vcpus as usize,
            "--tee {tee}: one local APIC per vCPU"
        );
        assert_eq!(
            s.iter().any(|(t, _)| *t == 0x10),
            tee == "emulated-tdx",
            "--tee {tee}: the Multiprocessor Wakeup structure is a TD's"
        );
    }
}

/// A malformed table blob from the host makes the firmware refuse cleanly: a message,
/// pvpanic, a non-zero exit — never a triple fault, never a boot.
#[test]
fn the_firmware_refuses_a_malformed_acpi_blob_from_the_host() {
    test_kit::require!(kvm);
    let i = inputs();
    for (tee, what, why) in [
        (
            "emulated-tdx",
            "acpi-pointer",
            "ACPI XSDT entry points outside the tables",
        ),
        ("emulated-tdx", "acpi-checksum", "ACPI table checksum"),
        ("emulated-snp", "acpi-size", "ACPI tables larger than"),
        ("none", "acpi-checksum", "ACPI table checksum"),
    ] {
        let o = launch(&i, tee, 1, &["--tamper-staged", what]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "--tee {tee} {what} booted: {out}");
        assert!(
            out.contains("cvm-firmware: refusing to boot: ") && out.contains(why),
            "--tee {tee} {what}: {out}"
        );
        assert!(!out.contains("TESTKERNEL-OK"), "--tee {tee} {what}: {out}");
        assert!(
            err.contains("panicked"),
            "--tee {tee} {what}: no pvpanic: {err}"
        );
        assert!(
            !err.contains("triple-fault") && !err.contains("triple fault"),
            "--tee {tee} {what}: {err}"
        );
    }
}
