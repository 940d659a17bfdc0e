//! The contract's negative tests with real KVM: each runs a tiny guest (`probe.rs`) and
//! asserts what the guest sees. Each names the enforcement it depends on; removing it
//! makes the test fail (the proof is in the branch's report).

use vm_memory::{Bytes, GuestAddress};

use super::probe::{boot_image, Outcome, Probe, ALIAS_VA, READ};
use super::*;

const MEM: usize = 4 << 20;
/// A launched (measured) private data page.
const LAUNCHED: u64 = 0x20_1000;
/// A private page the launch did not measure.
const UNLAUNCHED: u64 = 0x20_2000;
const ALIAS: u64 = 1 << 47;

fn kvm() -> Option<kvm_ioctls::Kvm> {
    if !test_kit::require_kvm() {
        return None;
    }
    Some(kvm_ioctls::Kvm::new().expect("KVM_GET_API_VERSION"))
}

fn snp() -> CcConfig {
    CcConfig {
        tee: CcTee::Snp,
        alias_bit: None,
    }
}

fn tdx_aliased() -> CcConfig {
    CcConfig {
        tee: CcTee::Tdx,
        alias_bit: Some(47),
    }
}

/// Guest memory after a launch of the boot image (page tables + `READ`) and `LAUNCHED`
/// holding 0x11, with `before` run before `finish_launch`.
fn launched(config: CcConfig, before: impl FnOnce(&CcMemory)) -> CcMemory {
    let cc = CcMemory::new(&[(GuestAddress(0), MEM)], config).unwrap();
    let mem = cc.vmm_memory();
    mem.write_slice(&boot_image(ALIAS, READ), GuestAddress(0))
        .unwrap();
    mem.write_obj(0x11u8, GuestAddress(LAUNCHED)).unwrap();
    cc.launch_private(0, 0x2_0000).unwrap();
    cc.launch_private(LAUNCHED, 4096).unwrap();
    before(&cc);
    cc.finish_launch().unwrap();
    cc
}

/// A vCPU at CPL0 or CPL3 about to read `rbx`, over `cc`'s memslots.
fn vcpu(kvm: &kvm_ioctls::Kvm, cc: &CcMemory, cpl3: bool, rbx: u64) -> Probe {
    let p = Probe::new(kvm, cpl3, rbx);
    cc.register(&p.vm, 0).unwrap();
    p
}

/// Runs `p` expecting a fault, as the vCPU loop will: an EFAULT without memory-fault
/// information (this machine, CPL3) switches to hole mode and runs again.
fn run_to_fault(p: &mut Probe, cc: &CcMemory) -> Outcome {
    match p.run() {
        Outcome::RunError(libc::EFAULT) => {
            cc.expose_faults().unwrap();
            p.run()
        }
        o => o,
    }
}

/// The GPA of a faulting access, as the vCPU loop gets it on this KVM.
fn fault_gpa(o: &Outcome) -> Option<u64> {
    match *o {
        Outcome::MemoryFault { gpa, .. } | Outcome::Mmio { gpa, .. } => Some(gpa),
        _ => None,
    }
}

fn cpl(cpl3: bool) -> &'static str {
    if cpl3 {
        "CPL3"
    } else {
        "CPL0"
    }
}

/// Depends on: `finish_launch` replacing private pages of the VMM view by throwaway
/// anonymous pages. Without it the guest reads 0x99.
#[test]
fn a_vmm_write_to_private_memory_after_launch_does_not_reach_the_guest() {
    let Some(kvm) = kvm() else { return };
    for cpl3 in [false, true] {
        let cc = launched(snp(), |_| {});
        let mem = cc.vmm_memory();
        mem.write_obj(0x99u8, GuestAddress(LAUNCHED)).unwrap();
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(LAUNCHED)).unwrap(),
            0x99,
            "the VMM's write lands in its throwaway page"
        );
        let mut p = vcpu(&kvm, &cc, cpl3, LAUNCHED);
        assert_eq!(
            p.run(),
            Outcome::Reported(0x11),
            "{}: the guest sees what the launch measured, not the VMM's later write",
            cpl(cpl3)
        );
    }
}

/// The TDX bug-3 pattern: the VMM writes into a private page the launch does not
/// measure. Depends on: `finish_launch` scrubbing unlaunched private pages. Without it
/// the guest reads 0x42.
#[test]
fn a_vmm_write_to_an_unmeasured_private_page_is_gone_at_launch() {
    let Some(kvm) = kvm() else { return };
    let cc = launched(snp(), |cc| {
        cc.vmm_memory()
            .write_obj(0x42u8, GuestAddress(UNLAUNCHED))
            .unwrap();
    });
    assert!(cc.validate(UNLAUNCHED, PageSize::Size4K, true).unwrap());
    let mut p = vcpu(&kvm, &cc, true, UNLAUNCHED);
    assert_eq!(p.run(), Outcome::Reported(0), "scrubbed at launch");
}

/// The TDX bug-3 pattern with the launch as the hardware does it: the VMM writes a
/// descriptor into its view at a launched page, but the launch copies the plan's source
/// page there. Depends on `launch_private_with` copying the source (with
/// `launch_private` the guest would read 0x42).
#[test]
fn the_launch_copies_its_source_not_what_the_vmm_wrote_in_its_view() {
    let Some(kvm) = kvm() else { return };
    let hob = 0x20_3000;
    let cc = launched(tdx_aliased(), |cc| {
        cc.vmm_memory()
            .write_obj(0x42u8, GuestAddress(hob))
            .unwrap();
        let mut source = vec![0u8; 4096];
        source[0] = 0x5e;
        cc.launch_private_with(hob, &source).unwrap();
    });
    let mut p = vcpu(&kvm, &cc, true, hob);
    assert_eq!(p.run(), Outcome::Reported(0x5e));
    assert!(matches!(
        cc.launch_private_with(hob, &[0; 4096]),
        Err(CcMemoryError::AfterLaunch(_))
    ));
    assert!(matches!(
        cc.launch_private_with(hob, &[0; 100]),
        Err(CcMemoryError::Unaligned { .. })
    ));
}

/// Depends on: unvalidated private pages being PROT_NONE in the guest view. Without it
/// the guest reads the page (zero) and nothing is reported.
#[test]
fn a_guest_read_of_an_unvalidated_page_is_reported_with_its_gpa_and_works_after_validation() {
    let Some(kvm) = kvm() else { return };
    for cpl3 in [false, true] {
        let cc = launched(snp(), |_| {});
        let mut p = vcpu(&kvm, &cc, cpl3, UNLAUNCHED);
        let o = run_to_fault(&mut p, &cc);
        let gpa = fault_gpa(&o)
            .unwrap_or_else(|| panic!("{}: the read was not stopped: {o:?}", cpl(cpl3)));
        let f = cc.classify(gpa);
        assert_eq!(f.gpa, UNLAUNCHED);
        assert_eq!(f.kind, FaultKind::NotValidated);
        assert_eq!(
            f.to_string(),
            "guest accessed unvalidated private page 0x202000: SNP #VC page-not-validated"
        );
        // The guest validates (PVALIDATE through its backend); the same read resumes.
        assert!(cc.validate(UNLAUNCHED, PageSize::Size4K, true).unwrap());
        assert_eq!(p.run(), Outcome::Reported(0), "{}", cpl(cpl3));
    }
}

/// Depends on: conversion scrubbing the page. Without it the shared view shows the
/// private 0x11.
#[test]
fn a_page_converted_to_shared_reads_zero_in_the_shared_view_and_faults_as_private() {
    let Some(kvm) = kvm() else { return };
    for cpl3 in [false, true] {
        let cc = launched(tdx_aliased(), |_| {});
        assert!(cc.convert(LAUNCHED, 4096, false).unwrap());
        let mem = cc.vmm_memory();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(LAUNCHED)).unwrap(), 0);
        // Through the shared alias (TDX: shared bit set).
        let mut p = vcpu(&kvm, &cc, cpl3, ALIAS_VA + LAUNCHED);
        assert_eq!(p.run(), Outcome::Reported(0), "{}", cpl(cpl3));
        // A VMM write to a shared page does reach the guest (the positive control).
        mem.write_obj(0x33u8, GuestAddress(LAUNCHED)).unwrap();
        let mut p = vcpu(&kvm, &cc, cpl3, ALIAS_VA + LAUNCHED);
        assert_eq!(p.run(), Outcome::Reported(0x33), "{}", cpl(cpl3));
        // A private access (shared bit clear) to the now-shared page faults.
        let mut p = vcpu(&kvm, &cc, cpl3, LAUNCHED);
        let o = run_to_fault(&mut p, &cc);
        let f = cc.classify(fault_gpa(&o).unwrap_or_else(|| panic!("not stopped: {o:?}")));
        assert_eq!(
            (f.gpa, f.kind),
            (LAUNCHED, FaultKind::PrivateAccessToShared)
        );
    }
}

/// Depends on: private pages being PROT_NONE in the shared alias. Without it the guest
/// reads the private byte through the shared view.
#[test]
fn a_shared_access_to_a_private_page_faults_and_the_private_view_works() {
    let Some(kvm) = kvm() else { return };
    for cpl3 in [false, true] {
        let cc = launched(tdx_aliased(), |_| {});
        let mut p = vcpu(&kvm, &cc, cpl3, ALIAS_VA + LAUNCHED);
        let o = run_to_fault(&mut p, &cc);
        let f = cc.classify(fault_gpa(&o).unwrap_or_else(|| panic!("not stopped: {o:?}")));
        assert_eq!(
            (f.gpa, f.kind),
            (ALIAS | LAUNCHED, FaultKind::SharedAccessToPrivate)
        );
        assert!(f.to_string().contains("TDX EPT violation"), "{f}");
        let mut p = vcpu(&kvm, &cc, cpl3, LAUNCHED);
        assert_eq!(p.run(), Outcome::Reported(0x11), "{}", cpl(cpl3));
    }
}

/// An unaccepted TD page faults; after `accept` the read works and sees zero.
#[test]
fn a_td_read_of_an_unaccepted_page_faults_until_accepted() {
    let Some(kvm) = kvm() else { return };
    let cc = launched(tdx_aliased(), |_| {});
    let mut p = vcpu(&kvm, &cc, true, UNLAUNCHED);
    let o = run_to_fault(&mut p, &cc);
    let f = cc.classify(fault_gpa(&o).unwrap_or_else(|| panic!("not stopped: {o:?}")));
    assert_eq!(f.kind, FaultKind::NotValidated);
    assert!(f.to_string().contains("TDX #VE"), "{f}");
    cc.accept(UNLAUNCHED, PageSize::Size4K).unwrap();
    assert_eq!(p.run(), Outcome::Reported(0));
}

// ---- page-state rules (no KVM needed) ----

/// A contract on a host with huge-page guest_memfd (2 MiB private pages), for the
/// page-state rules at both sizes.
fn fresh(config: CcConfig) -> CcMemory {
    let cc = CcMemory::new(&[(GuestAddress(0), MEM)], config).unwrap();
    cc.set_largest_private_page(PageSize::Size2M);
    cc
}

#[test]
fn two_mib_operations_fail_as_on_a_host_with_4k_guest_memfd_by_default() {
    for config in [snp(), tdx_aliased()] {
        let cc = CcMemory::new(&[(GuestAddress(0), MEM)], config).unwrap();
        let two_m = 2 << 20;
        match config.tee {
            CcTee::Snp => {
                cc.convert(two_m, two_m, true).unwrap();
                let e = cc.validate(two_m, PageSize::Size2M, true).unwrap_err();
                assert!(matches!(e, RmpError::SizeMismatch { .. }), "{e}");
                assert_eq!(e.pvalidate_code(), Some(6));
                // The 4 KiB fallback works.
                assert!(cc.validate(two_m, PageSize::Size4K, true).unwrap());
            }
            CcTee::Tdx => {
                let e = cc.accept(two_m, PageSize::Size2M).unwrap_err();
                assert!(matches!(e, AcceptError::SizeMismatch { .. }), "{e}");
                cc.accept(two_m, PageSize::Size4K).unwrap();
            }
        }
    }
}

#[test]
fn pvalidate_results_follow_the_rmp() {
    let cc = fresh(snp());
    let two_m = 2 << 20;
    // Misaligned and outside memory: FAIL_INPUT.
    let e = cc
        .validate(two_m + 4096, PageSize::Size2M, true)
        .unwrap_err();
    assert_eq!(e.pvalidate_code(), Some(1));
    let e = cc.validate(8 << 20, PageSize::Size4K, true).unwrap_err();
    assert_eq!(e.pvalidate_code(), Some(1));
    // 2 MiB validate, then again: no update.
    assert!(cc.validate(two_m, PageSize::Size2M, true).unwrap());
    assert!(!cc.validate(two_m, PageSize::Size2M, true).unwrap());
    assert_eq!(
        cc.state(two_m + 8192),
        Some(PageState::Validated(PageSize::Size2M))
    );
    // A 4 KiB validate inside it: KVM's PSMASH, then "no update".
    assert!(!cc.validate(two_m + 8192, PageSize::Size4K, true).unwrap());
    assert_eq!(
        cc.state(two_m),
        Some(PageState::Validated(PageSize::Size4K))
    );
    // Now 2 MiB over 4 KiB entries: FAIL_SIZEMISMATCH.
    let e = cc.validate(two_m, PageSize::Size2M, false).unwrap_err();
    assert_eq!(e.pvalidate_code(), Some(6));
    // Rescind one 4 KiB page; rescind again: no update.
    assert!(cc.validate(two_m, PageSize::Size4K, false).unwrap());
    assert!(!cc.validate(two_m, PageSize::Size4K, false).unwrap());
    // A shared page is not the guest's: #NPF, no result code.
    cc.convert(0, 4096, false).unwrap();
    let e = cc.validate(0, PageSize::Size4K, true).unwrap_err();
    assert!(matches!(e, RmpError::NotAssigned { gpa: 0 }), "{e}");
    assert_eq!(e.pvalidate_code(), None);
}

#[test]
fn accept_results_follow_the_sept() {
    let cc = fresh(tdx_aliased());
    let two_m = 2 << 20;
    cc.accept(two_m, PageSize::Size2M).unwrap();
    assert!(matches!(
        cc.accept(two_m, PageSize::Size2M),
        Err(AcceptError::AlreadyAccepted { .. })
    ));
    assert!(matches!(
        cc.accept(two_m + 4096, PageSize::Size4K),
        Err(AcceptError::AlreadyAccepted { .. })
    ));
    cc.accept(0, PageSize::Size4K).unwrap();
    assert!(matches!(
        cc.accept(0, PageSize::Size2M),
        Err(AcceptError::SizeMismatch { .. })
    ));
    // The attribute bit is stripped: the shared alias of a page names the same page.
    cc.convert(ALIAS | 4096, 4096, false).unwrap();
    assert!(matches!(
        cc.accept(4096, PageSize::Size4K),
        Err(AcceptError::NotPrivate { gpa: 4096 })
    ));
    assert!(matches!(
        cc.accept(8 << 20, PageSize::Size4K),
        Err(AcceptError::OperandInvalid { .. })
    ));
}

#[test]
fn a_4k_conversion_splits_a_2m_unit_and_private_pages_stay_sealed() {
    let cc = fresh(snp());
    let two_m = 2 << 20;
    cc.validate(two_m, PageSize::Size2M, true).unwrap();
    cc.finish_launch().unwrap();
    assert!(cc.convert(two_m + 4096, 4096, false).unwrap());
    assert!(
        !cc.convert(two_m + 4096, 4096, false).unwrap(),
        "already shared"
    );
    assert_eq!(
        cc.state(two_m),
        Some(PageState::Validated(PageSize::Size4K))
    );
    assert_eq!(
        cc.state(two_m + 8192),
        Some(PageState::Validated(PageSize::Size4K))
    );
    assert_eq!(cc.state(two_m + 4096), Some(PageState::Shared));
    assert!(matches!(
        cc.launch_private(0, 4096),
        Err(CcMemoryError::AfterLaunch(_))
    ));
    // Shared → private after launch: the VMM view of the page is sealed again.
    let mem = cc.vmm_memory();
    mem.write_obj(7u8, GuestAddress(two_m + 4096)).unwrap();
    cc.convert(two_m + 4096, 4096, true).unwrap();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(two_m + 4096)).unwrap(), 0);
    cc.validate(two_m + 4096, PageSize::Size4K, true).unwrap();
    mem.write_obj(9u8, GuestAddress(two_m + 4096)).unwrap();
    // The guest's bytes (the guest view, and the emulated TEE's trusted access): the
    // VMM's 9 is not there.
    assert_eq!(cc.regions[0].plain.read_at(two_m + 4096), 0);
    let mut b = [0xffu8; 2];
    cc.trusted_read(two_m + 4095, &mut b).unwrap();
    assert_eq!(b, [0, 0]);
    // The emulated TEE writes private memory (a TDREPORT); the VMM still sees zeros.
    cc.trusted_write(two_m + 4096, &[0xAB]).unwrap();
    assert_eq!(cc.regions[0].plain.read_at(two_m + 4096), 0xAB);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(two_m + 4096)).unwrap(), 9);
    assert!(matches!(
        cc.trusted_read((4 << 20) - 1, &mut b),
        Err(CcMemoryError::Outside(_))
    ));
}

#[test]
fn bad_configurations_are_refused() {
    let r = CcMemory::new(
        &[(GuestAddress(0), MEM)],
        CcConfig {
            tee: CcTee::Snp,
            alias_bit: Some(20),
        },
    );
    assert!(matches!(r, Err(CcMemoryError::BadAliasBit { bit: 20, .. })));
    let r = CcMemory::new(
        &[(GuestAddress(0), MEM)],
        CcConfig {
            tee: CcTee::Snp,
            alias_bit: Some(52),
        },
    );
    assert!(matches!(r, Err(CcMemoryError::BadAliasBit { .. })));
    let r = CcMemory::new(&[(GuestAddress(0), MEM), (GuestAddress(4096), 4096)], snp());
    assert!(matches!(r, Err(CcMemoryError::Overlap { gpa: 4096 })));
    let cc = fresh(snp());
    assert!(matches!(
        cc.convert(100, 4096, true),
        Err(CcMemoryError::Unaligned { .. })
    ));
    assert!(matches!(
        cc.convert(0, 8 << 20, true),
        Err(CcMemoryError::Outside(_))
    ));
}

#[test]
fn an_emulated_confidential_vm_seals_its_firmware_from_the_vmm_after_launch() {
    let Some(kvm) = kvm() else { return };
    let bit = host_alias_bit(&kvm).expect("KVM reports a physical-address width");
    assert!(bit >= 35, "{bit}");
    let fw = vec![0xF4u8; 8192];
    let vm = crate::vstate::vm::Vm::new_emulated_confidential(
        &kvm,
        64 << 20,
        &fw,
        CcConfig {
            tee: CcTee::Snp,
            alias_bit: Some(bit),
        },
    )
    .unwrap();
    let cc = vm
        .cc_memory()
        .expect("emulated-confidential memory")
        .clone();
    let top = crate::vstate::memory::FOUR_GIB - 8192;
    let mem = vm.memory();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(top)).unwrap(), 0xF4);
    cc.launch_private(top, 8192).unwrap();
    cc.finish_launch().unwrap();
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(top)).unwrap(),
        0,
        "the VMM sees no private bytes after launch"
    );
    assert_eq!(
        cc.state(top | 1 << bit),
        Some(PageState::Validated(PageSize::Size4K))
    );
    assert_eq!(
        cc.classify_mmio(0xFEC0_0000),
        None,
        "the MMIO hole is for devices"
    );
    // SNP's plain view serves private accesses too (fetches, page-table walks, paging
    // off): a plain access to a page nobody validated is the not-validated fault.
    assert_eq!(
        cc.classify_mmio(0x1000).unwrap().kind,
        FaultKind::NotValidated
    );
    assert_eq!(
        cc.classify_mmio(top).unwrap().kind,
        FaultKind::Accessible,
        "validated private memory is reachable at its plain GPA"
    );
}

/// SNP with the C-bit alias: the alias (C-bit set) is the private view; the plain GPA
/// serves shared pages and, as instruction fetches, page-table walks and accesses with
/// paging off are private on SNP whatever the C-bit, validated private pages too. The
/// probe's page tables and code are made shared (rewritten after the conversion
/// scrubbed them), the data page stays private. A C-bit-set access to a shared page
/// and a plain access to an unvalidated page fault. Depends on the alias views'
/// protections (without them the alias read of the shared page returns its byte).
#[test]
fn snp_c_bit_set_reaches_private_memory_and_faults_on_shared_memory() {
    let Some(kvm) = kvm() else { return };
    for cpl3 in [false, true] {
        let cc = launched(
            CcConfig {
                tee: CcTee::Snp,
                alias_bit: Some(47),
            },
            |_| {},
        );
        cc.convert(0, 0x2_0000, false).unwrap();
        cc.vmm_memory()
            .write_slice(&boot_image(ALIAS, READ), GuestAddress(0))
            .unwrap();
        let mut p = vcpu(&kvm, &cc, cpl3, ALIAS_VA + LAUNCHED);
        assert_eq!(p.run(), Outcome::Reported(0x11), "{}", cpl(cpl3));
        let mut p = vcpu(&kvm, &cc, cpl3, LAUNCHED);
        assert_eq!(p.run(), Outcome::Reported(0x11), "{}", cpl(cpl3));
        let mut p = vcpu(&kvm, &cc, cpl3, ALIAS_VA + 0x1_0000);
        let o = run_to_fault(&mut p, &cc);
        let f = cc.classify(fault_gpa(&o).unwrap_or_else(|| panic!("not stopped: {o:?}")));
        assert_eq!(
            f.to_string(),
            "guest accessed shared page 0x800000010000 as private (C-bit set): SNP #NPF (RMP violation)",
            "{}",
            cpl(cpl3)
        );
        let mut p = vcpu(&kvm, &cc, cpl3, UNLAUNCHED);
        let o = run_to_fault(&mut p, &cc);
        let f = cc.classify(fault_gpa(&o).unwrap_or_else(|| panic!("not stopped: {o:?}")));
        assert_eq!(
            f.to_string(),
            "guest accessed unvalidated private page 0x202000: SNP #VC page-not-validated",
            "{}",
            cpl(cpl3)
        );
    }
}

/// The cost of the API itself on a 4 GiB guest (printed; the bound is generous and
/// only catches a per-4-KiB walk).
#[test]
fn validating_and_accepting_4_gib_in_2_mib_steps_is_cheap() {
    for config in [snp(), tdx_aliased()] {
        let layout = crate::vstate::memory::layout(4 << 30, 2 << 20).unwrap();
        let cc = CcMemory::new(&layout, config).unwrap();
        cc.set_largest_private_page(PageSize::Size2M);
        cc.finish_launch().unwrap();
        let t = std::time::Instant::now();
        let mut ops = 0u32;
        for &(GuestAddress(start), len) in &layout {
            for gpa in (start..start + len as u64).step_by(2 << 20) {
                match config.tee {
                    CcTee::Snp => assert!(cc.validate(gpa, PageSize::Size2M, true).unwrap()),
                    CcTee::Tdx => cc.accept(gpa, PageSize::Size2M).unwrap(),
                }
                ops += 1;
            }
        }
        let per = t.elapsed() / ops;
        eprintln!("{:?}: {ops} 2 MiB operations, {per:?} each", config.tee);
        assert_eq!(ops, 2049);
        assert!(cc.lock().pages.run_count() <= 3, "one run per RAM range");
        assert!(per < std::time::Duration::from_millis(5), "{per:?}");
    }
}

/// The plain handoff (emulated TDX, `cvm.emulated_handoff=plain`): after
/// `end_contract` an unaware kernel reaches every page at its plain GPA with the
/// contents the guest had — an accepted page keeps what the guest wrote, a launched
/// page its launch bytes, a page nobody accepted reads zero instead of faulting — and
/// the VMM's view (virtio devices) sees the guest's bytes. Depends on `end_contract`:
/// without it the read of the unaccepted page faults and the VMM reads zeros.
#[test]
fn after_the_plain_handoff_every_page_is_ordinary_memory_with_its_contents() {
    let Some(kvm) = kvm() else { return };
    for cpl3 in [false, true] {
        let cc = launched(tdx_aliased(), |_| {});
        assert!(matches!(
            fresh(tdx_aliased()).end_contract(),
            Err(CcMemoryError::BeforeLaunch(_))
        ));
        let accepted = 0x20_4000;
        cc.accept(accepted, PageSize::Size4K).unwrap();
        cc.trusted_write(accepted, &[0x77]).unwrap();
        // The contract holds before the handoff.
        let mut p = vcpu(&kvm, &cc, cpl3, UNLAUNCHED);
        let o = run_to_fault(&mut p, &cc);
        assert!(fault_gpa(&o).is_some(), "{}: not stopped: {o:?}", cpl(cpl3));
        assert_eq!(
            cc.vmm_memory()
                .read_obj::<u8>(GuestAddress(accepted))
                .unwrap(),
            0,
            "sealed from the VMM"
        );
        cc.end_contract().unwrap();
        cc.end_contract().unwrap();
        assert!(cc.contract_ended());
        for (gpa, want) in [(UNLAUNCHED, 0u8), (accepted, 0x77), (LAUNCHED, 0x11)] {
            let mut p = vcpu(&kvm, &cc, cpl3, gpa);
            assert_eq!(p.run(), Outcome::Reported(want), "{} {gpa:#x}", cpl(cpl3));
            assert_eq!(cc.state(gpa), Some(PageState::Shared));
            assert_eq!(
                cc.vmm_memory().read_obj::<u8>(GuestAddress(gpa)).unwrap(),
                want,
                "the VMM view maps the guest's bytes again"
            );
        }
        // The alias reaches the same bytes; a VMM write (a virtio device) reaches the guest.
        cc.vmm_memory()
            .write_obj(0x55u8, GuestAddress(accepted))
            .unwrap();
        let mut p = vcpu(&kvm, &cc, cpl3, ALIAS_VA + accepted);
        assert_eq!(p.run(), Outcome::Reported(0x55), "{}", cpl(cpl3));
        // No conversion after the handoff; accept finds a shared page.
        assert!(matches!(
            cc.convert(LAUNCHED, 4096, true),
            Err(CcMemoryError::ContractEnded(_))
        ));
        assert!(matches!(
            cc.accept(UNLAUNCHED, PageSize::Size4K),
            Err(AcceptError::NotPrivate { .. })
        ));
    }
}
