//! `cvm launch --tee emulated-snp|emulated-tdx` under the real /dev/kvm: the launch
//! measures what `cvm measure` predicts for the same firmware; a tiny TD asks the
//! software TDX module for its TDREPORT with TDG.MR.REPORT (the literal TDCALL and the
//! emulator trap) and prints it to the serial port; the private-memory contract holds
//! under both TEEs. (The full evidence paths, SNP guest request and TDX GetQuote, run in
//! the end-to-end tests with the test guest, whose evidence a real verifier checks.)

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use measured_boot::testing::emulated_guest_image as firmware;

mod common;

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

/// Real-mode tail of the SNP guests: ACPI S5 (power off), then halt.
const SNP_POWER_OFF: [u8; 10] = [0xba, 0x04, 0x06, 0xb8, 0x00, 0x34, 0xef, 0xf4, 0xeb, 0xfd];

fn run(args: &[&str]) -> Output {
    test_kit::run_with_deadline(Command::new(CVM).args(args), Duration::from_secs(120))
}

/// The emulated SNP launch measures what `cvm measure snp` predicts: the launch's own
/// `expected-measurement` event (the emulated PSP's digest, which the launch refuses to
/// differ from the plan's) names it. The guest only powers off; its report through the
/// SNP guest-request path is checked by a verifier in the end-to-end tests.
#[test]
fn emulated_snp_launch_measures_what_cvm_measure_predicts() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let plat = common::emulated_platform();
    let fw = dir.path().join("fw.fd");
    std::fs::write(&fw, firmware(&SNP_POWER_OFF)).unwrap();
    let fw = fw.to_str().unwrap();

    let m = run(&[
        "measure",
        "snp",
        "--ovmf",
        fw,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
    ]);
    let expected = String::from_utf8_lossy(&m.stdout).trim().to_owned();
    assert_eq!(expected.len(), 96, "{expected}");
    let o = run(&[
        "launch",
        "--tee",
        "emulated-snp",
        "--emulated-platform",
        &plat,
        "--firmware",
        fw,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
        // Accepted here; that it reaches the report's HOST_DATA is checked by a
        // verifier in tests/tests/e2e.rs (`host_data_reaches_the_emulated_snp_report`).
        "--host-data",
        "abcd",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("INSECURE-EMULATED"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("expected-measurement") && l.contains(&expected)),
        "the launch's measurement is not `cvm measure snp`'s {expected}: {err}"
    );
    assert!(o.stdout.is_empty(), "the guest printed nothing");
}

/// The emulated TDX launch measures the MRTD `cvm measure tdx` predicts: the launch's
/// own `expected-measurement` event (the emulated TDX module's MRTD, which the launch
/// refuses to differ from the plan's) names it. The TDREPORT a TD gets from the module
/// carries it too (firmware.rs, `emulated_tdx_rtmrs_equal_what_cvm_measure_predicts`).
#[test]
fn emulated_tdx_launch_measures_the_mrtd_cvm_measure_predicts() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let plat = common::emulated_platform();
    let fw = dir.path().join("fw.fd");
    // 32-bit code: the vCPU starts as a TD vCPU does.
    std::fs::write(&fw, common::td_guest_image(&common::power_off32())).unwrap();
    let fw = fw.to_str().unwrap();
    let m = run(&["measure", "tdx", "--firmware", fw]);
    let expected = String::from_utf8_lossy(&m.stdout).trim().to_owned();
    assert_eq!(expected.len(), 96, "{expected}");
    let o = run(&[
        "launch",
        "--tee",
        "emulated-tdx",
        "--emulated-platform",
        &plat,
        "--firmware",
        fw,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("expected-measurement") && l.contains(&expected)),
        "the launch's MRTD is not `cvm measure tdx`'s {expected}: {err}"
    );
    assert!(o.stdout.is_empty(), "the guest printed nothing");
}

/// The software TDX module answers both traps of the same TDCALL: the literal
/// instruction at CPL0 (KVM's internal-error exit) and the emulator trap `out 0xE0, al`
/// with the same registers. 32-bit code (the vCPU starts as a TD vCPU does): extend
/// RTMR2 with the literal TDCALL and RTMR3 through the trap (TDG.MR.RTMR.EXTEND, digests
/// in the launch's TempMem at 0x800000), read GPAW with TDG.VP.INFO through the trap.
/// Then the host asks the same emulated TD for a quote through the launch's evidence
/// source, with TDX_QUOTE (3) of the evidence command protocol (as `cvm emulated serve`
/// and the vsock evidence service answer it; the TD's own GetQuote path runs in the
/// end-to-end tests): its RTMRs must carry both extensions. (TDG.MR.REPORT needs
/// R8 = 0, which 32-bit code cannot set: a TD starts with the TD HOB's address there.)
#[test]
fn emulated_tdx_module_answers_the_literal_tdcall_and_the_trap() {
    test_kit::require!(kvm);
    let mut code = Vec::new();
    for (at, byte) in [(0x80_0000u32, 0xABu8), (0x80_0040, 0xCD)] {
        code.push(0xbf); // mov edi, at
        code.extend_from_slice(&at.to_le_bytes());
        code.extend_from_slice(&[0xb9, 48, 0, 0, 0, 0xb0, byte, 0xf3, 0xaa]); // mov ecx, 48; mov al; rep stosb
    }
    let leaf = |c: &mut Vec<u8>, rax: u32, rcx: u32, rdx: u32| {
        c.push(0xb8);
        c.extend_from_slice(&rax.to_le_bytes());
        c.push(0xb9);
        c.extend_from_slice(&rcx.to_le_bytes());
        c.push(0xba);
        c.extend_from_slice(&rdx.to_le_bytes());
    };
    let print_al = [0x66, 0xba, 0xf8, 0x03, 0xee]; // mov dx, 0x3f8; out dx, al
    leaf(&mut code, 2, 0x80_0000, 2);
    code.extend_from_slice(&[0x66, 0x0f, 0x01, 0xcc]); // tdcall
    code.extend_from_slice(&print_al);
    leaf(&mut code, 2, 0x80_0040, 3);
    code.extend_from_slice(&[0xe6, 0xe0]); // out 0xe0, al
    code.extend_from_slice(&print_al);
    leaf(&mut code, 1, 0, 0);
    code.extend_from_slice(&[0xe6, 0xe0, 0x89, 0xc8]); // out 0xe0, al; mov eax, ecx
    code.extend_from_slice(&print_al);
    code.extend_from_slice(&common::power_off32());
    let (stop, out, backend) = run_td(common::td_guest_image(&code), |b| b);
    assert_eq!(stop, host_vmm::vstate::vcpu::VcpuStop::PowerOff, "{out:?}");
    let out = out.as_bytes();
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!((out[0], out[1]), (0, 0), "both RTMR extensions succeeded");
    assert_eq!(out[2], 48, "TDG.VP.INFO through the trap: GPAW 48");
    let source = host_vmm::tee::TeeBackend::evidence_source(&*backend).expect("evidence source");
    let quote = source.execute(3, &[0x11; 64]).expect("the TD's quote");
    assert_eq!(u16::from_le_bytes([quote[0], quote[1]]), 4, "quote v4");
    // Body at 48: RTMR0..3 at body offsets 328, 376, 424, 472.
    let rtmrs = &quote[48 + 328..48 + 520];
    let extended = |d: u8| {
        let mut r = [0u8; 48];
        measured_boot::tdx::rtmr_extend(&mut r, &[d; 48]);
        r
    };
    assert_eq!(&rtmrs[96..144], &extended(0xAB)[..], "RTMR2: tdcall");
    assert_eq!(&rtmrs[144..192], &extended(0xCD)[..], "RTMR3: trap");
    assert_eq!(&rtmrs[..48], &[0u8; 48][..], "RTMR0 untouched");
}

#[test]
fn emulated_launch_without_a_platform_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fw = dir.path().join("fw.fd");
    std::fs::write(&fw, firmware(&SNP_POWER_OFF)).unwrap();
    let o = run(&[
        "launch",
        "--tee",
        "emulated-snp",
        "--firmware",
        fw.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs --emulated-platform"));
    let missing = dir.path().join("nope");
    let o = run(&[
        "launch",
        "--tee",
        "emulated-tdx",
        "--emulated-platform",
        missing.to_str().unwrap(),
        "--firmware",
        fw.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot open the emulated platform"));
    assert!(o.stdout.is_empty(), "no guest ran");
}

/// Builds and runs an emulated TD of `firmware` (no kernel) through the VMM library,
/// with `tee` adjusting the backend (test equipment); returns how the vCPU stopped, the
/// serial output and the backend (its TD stays queryable).
fn run_td(
    firmware: Vec<u8>,
    tee: impl FnOnce(
        host_vmm::tee::emulated_tdx::EmulatedTdx,
    ) -> host_vmm::tee::emulated_tdx::EmulatedTdx,
) -> (
    host_vmm::vstate::vcpu::VcpuStop,
    String,
    std::sync::Arc<host_vmm::tee::emulated_tdx::EmulatedTdx>,
) {
    use host_vmm::vmm::{SerialOutput, VmBuilder, VmConfig};
    let dir = tempfile::tempdir().unwrap();
    let plat = common::emulated_platform();
    let backend = host_vmm::tee::emulated_tdx::EmulatedTdx::launch(
        Path::new(&plat),
        firmware.clone(),
        Default::default(),
        None,
    )
    .unwrap();
    let backend = std::sync::Arc::new(tee(backend));
    let serial = dir.path().join("serial");
    let config = VmConfig {
        firmware,
        memory: 64 << 20,
        vcpus: 1,
        serial: SerialOutput::File(serial.clone()),
        seccomp: host_vmm::seccomp::SeccompMode::Off,
        disks: Vec::new(),
        tee: backend.clone(),
        boot: None,
        tamper: None,
        vsock: None,
        kvm: None,
        api: None,
        net: Vec::new(),
    };
    let stop = VmBuilder::new(config).unwrap().build().unwrap().run();
    let out = String::from_utf8_lossy(&std::fs::read(&serial).unwrap()).into_owned();
    (stop, out, backend)
}

/// The private-memory contract, (b): a VMM write into a TD's private page after the
/// launch never reaches the TD. The tiny TD reads the first byte of its launched TempMem
/// page (0x800000, private and accepted, zero) after the VMM wrote "H" there through its
/// own view, and prints it: the TD must see 0. On a default VM (before the contract)
/// it printed 'H'.
#[test]
fn a_vmm_write_into_private_memory_after_launch_is_not_seen_by_the_td() {
    test_kit::require!(kvm);
    let mut code = vec![0xa0, 0x00, 0x00, 0x80, 0x00]; // mov al, [0x800000]
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0xee]); // mov dx, 0x3f8; out dx, al
    code.extend_from_slice(&common::power_off32());
    let (stop, out, _) = run_td(common::td_guest_image(&code), |b| {
        b.with_vmm_write_after_launch(0x80_0000, b"HOST".to_vec())
    });
    assert_eq!(stop, host_vmm::vstate::vcpu::VcpuStop::PowerOff, "{out:?}");
    assert_eq!(
        out.as_bytes(),
        &[0],
        "the TD saw the VMM's write into its private memory"
    );
}

/// Issue 13, bug 3 under emulation: the boot-data descriptor written only into the
/// VMM's view after the launch (the placement before the fix) is not seen by the TD's
/// firmware, which refuses; with the descriptor added as TD_HOB content it boots on
/// (and says there is no kernel).
#[test]
fn the_td_firmware_refuses_a_descriptor_written_only_to_the_vmm_view() {
    test_kit::require!(kvm);
    let fw = guest_images::image().to_vec();
    assert!(!fw.is_empty(), "cvm was built without its firmware");
    let (_, out, _) = run_td(fw.clone(), |b| b.with_legacy_descriptor_placement());
    assert!(
        out.contains("no boot-data descriptor at 0x8000"),
        "the TD read a descriptor the launch did not add: {out}"
    );
    let (_, out, _) = run_td(fw, |b| b);
    assert!(
        out.contains("no kernel given") && !out.contains("no boot-data descriptor"),
        "the launched descriptor must reach the TD: {out}"
    );
}

/// The private-memory contract, (c): a TD read of a private page it has not accepted
/// stops the VM with the fault's message (TDX #VE), instead of reading whatever is there.
#[test]
fn a_td_read_of_an_unaccepted_page_stops_the_vm_with_the_fault() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let plat = common::emulated_platform();
    // 0x50000 lies outside what the image accepts (0x1000-0x40000) and what it launches.
    let mut code = vec![0xa1, 0x00, 0x00, 0x05, 0x00]; // mov eax, [0x50000]
    code.extend_from_slice(&common::power_off32());
    let fw = dir.path().join("fw.fd");
    std::fs::write(&fw, common::td_guest_image(&code)).unwrap();
    let o = run(&[
        "launch",
        "--tee",
        "emulated-tdx",
        "--emulated-platform",
        &plat,
        "--firmware",
        fw.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the TD read an unaccepted page: {err}");
    assert!(
        err.contains("guest accessed unaccepted private page 0x50000: TDX #VE"),
        "{err}"
    );
}

// ---- The private-memory contract under emulated SNP (the SNP twins of the TD tests
// above). The guests are real-mode code in the emulated test image: the vCPU of an SNP
// guest starts at the reset vector with CS base 0xFFFF0000, so `cs:` reaches the
// launched image at 0xFFFF0000 + offset.

/// Builds and runs an emulated SNP guest of `firmware` (no kernel) through the VMM
/// library, with `tee` adjusting the backend (test equipment); returns how the vCPU
/// stopped and the serial output.
fn run_snp(
    firmware: Vec<u8>,
    tee: impl FnOnce(
        host_vmm::tee::emulated_snp::EmulatedSnp,
    ) -> host_vmm::tee::emulated_snp::EmulatedSnp,
) -> (host_vmm::vstate::vcpu::VcpuStop, String) {
    use host_vmm::vmm::{SerialOutput, VmBuilder, VmConfig};
    use measured_boot::snp::{SnpLaunchPlan, SnpPlanConfig};
    let dir = tempfile::tempdir().unwrap();
    let plat = common::emulated_platform();
    let plan = SnpLaunchPlan::new(
        measured_boot::FirmwareImage::parse(firmware.clone()).unwrap(),
        SnpPlanConfig {
            vcpus: 1,
            vcpu_sig: measured_boot::snp::cpu::sig_by_name("EPYC-v4").unwrap(),
            guest_features: 1,
            vmm_type: measured_boot::snp::vmsa::VmmType::Qemu,
            hashes: None,
        },
    )
    .unwrap();
    let backend = host_vmm::tee::emulated_snp::EmulatedSnp::launch(
        Path::new(&plat),
        &plan,
        0x30000,
        [0; 32],
        Vec::new(),
    )
    .unwrap();
    let serial = dir.path().join("serial");
    let config = VmConfig {
        firmware,
        memory: 64 << 20,
        vcpus: 1,
        serial: SerialOutput::File(serial.clone()),
        seccomp: host_vmm::seccomp::SeccompMode::Off,
        disks: Vec::new(),
        tee: std::sync::Arc::new(tee(backend)),
        boot: None,
        tamper: None,
        vsock: None,
        kvm: None,
        api: None,
        net: Vec::new(),
    };
    let stop = VmBuilder::new(config).unwrap().build().unwrap().run();
    let out = String::from_utf8_lossy(&std::fs::read(&serial).unwrap()).into_owned();
    (stop, out)
}

/// The private-memory contract under emulated SNP, (b): a VMM write into the guest's
/// private memory after the launch never reaches the guest. The guest reads a byte of
/// its own launched (measured, private, validated) image at 0xFFFFF800, where the image
/// holds 'L', after the VMM wrote 'H' there through its own view, and prints it. On the
/// one-backing model (before the contract) it printed 'H'.
#[test]
fn a_vmm_write_into_private_memory_after_launch_is_not_seen_by_the_snp_guest() {
    test_kit::require!(kvm);
    let mut code = vec![0x2e, 0xa0, 0x00, 0xf8]; // mov al, cs:[0xF800]
    code.extend_from_slice(&[0xba, 0xf8, 0x03, 0xee]); // mov dx, 0x3f8; out dx, al
    code.extend_from_slice(&SNP_POWER_OFF);
    code.resize(0x801, 0);
    code[0x800] = b'L'; // image offset 0xF800: GPA 0xFFFFF800
    let (stop, out) = run_snp(firmware(&code), |b| {
        b.with_vmm_write_after_launch(0xFFFF_F800, b"HOST".to_vec())
    });
    assert_eq!(stop, host_vmm::vstate::vcpu::VcpuStop::PowerOff, "{out:?}");
    assert_eq!(
        out, "L",
        "the SNP guest must see its launched byte, not the VMM's later write"
    );
}

/// The private-memory contract under emulated SNP, (c): a guest read of a private page
/// it never validated stops the VM with the fault's message (SNP #VC
/// page-not-validated, the GPA named), instead of reading whatever is there. The guest
/// makes 0x50000 (shared at launch: the launch did not add it) private with the GHCB
/// MSR protocol's page-state change (WRMSR 0xC0010130, VMGEXIT through the emulator
/// trap `out 0xE2, al`) and reads it without PVALIDATE.
#[test]
fn an_snp_guest_read_of_a_page_it_never_validated_stops_the_vm_with_the_fault() {
    test_kit::require!(kvm);
    let dir = tempfile::tempdir().unwrap();
    let plat = common::emulated_platform();
    let mut code = vec![0x66, 0xb9, 0x30, 0x01, 0x01, 0xc0]; // mov ecx, 0xC0010130
    code.extend_from_slice(&[0x66, 0xb8, 0x14, 0x00, 0x05, 0x00]); // mov eax, 0x50014 (PSC 0x50000)
    code.extend_from_slice(&[0x66, 0xba, 0x00, 0x00, 0x10, 0x00]); // mov edx, 1 << 20 (to private)
    code.extend_from_slice(&[0x0f, 0x30, 0xe6, 0xe2]); // wrmsr; out 0xE2, al (VMGEXIT)
    code.extend_from_slice(&[0x0f, 0x32]); // rdmsr (the response)
    code.extend_from_slice(&[0x3d, 0x15, 0x00]); // cmp ax, 0x015 (PSC response, success)
    code.extend_from_slice(&[0x75, 0x0c]); // jne to the power-off
    code.extend_from_slice(&[0xb8, 0x00, 0x50, 0x8e, 0xd8]); // mov ax, 0x5000; mov ds, ax
    code.extend_from_slice(&[0xa0, 0x00, 0x00]); // mov al, [0] (GPA 0x50000)
    code.extend_from_slice(&[0xba, 0xf8, 0x03, 0xee]); // mov dx, 0x3f8; out dx, al
    code.extend_from_slice(&SNP_POWER_OFF);
    let fw = dir.path().join("fw.fd");
    std::fs::write(&fw, firmware(&code)).unwrap();
    let o = run(&[
        "launch",
        "--tee",
        "emulated-snp",
        "--emulated-platform",
        &plat,
        "--firmware",
        fw.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "the SNP guest read a page it never validated (serial {:?}): {err}",
        o.stdout
    );
    assert!(
        err.contains("guest accessed unvalidated private page 0x50000: SNP #VC page-not-validated"),
        "{err}"
    );
}
