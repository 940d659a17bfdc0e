//! Measurements of this machine's KVM that decide the design (module docs, "Measured
//! facts"). Each test prints what it saw (`--nocapture`) and asserts the properties the
//! design relies on, so a host where they do not hold fails here first.

use std::time::Instant;

use super::probe::{Outcome, Probe, ALIAS_VA, READ, WRITE_5A};
use super::sys::{memfd, Mapping};

const LEN: u64 = 4 << 20;
const TARGET: u64 = 0x20_1000;

fn kvm() -> Option<kvm_ioctls::Kvm> {
    if !test_kit::require_kvm() {
        return None;
    }
    Some(kvm_ioctls::Kvm::new().expect("KVM_GET_API_VERSION"))
}

/// Runs `code` with rbx = `rbx` in a VM whose slot 0 maps `view0` at GPA 0 and, if
/// given, slot 1 maps `alias` at `alias_base`.
fn run(
    kvm: &kvm_ioctls::Kvm,
    cpl3: bool,
    rbx: u64,
    view0: &Mapping,
    alias: Option<(&Mapping, u64)>,
) -> Result<Outcome, kvm_ioctls::Error> {
    let mut p = Probe::new(kvm, cpl3, rbx);
    // SAFETY: the mappings outlive `p` (they are borrowed for this function).
    unsafe { p.add_slot(0, 0, view0.ptr(), view0.len())? };
    if let Some((m, base)) = alias {
        // SAFETY: as above.
        unsafe { p.add_slot(1, base, m.ptr(), m.len())? };
    }
    Ok(p.run())
}

#[test]
fn an_alias_slot_at_bit_47_reaches_the_same_bytes_and_bit_51_is_unreachable() {
    let Some(kvm) = kvm() else { return };
    let fd = memfd("probe", LEN).unwrap();
    for cpl3 in [false, true] {
        for (bit, expect_ok) in [(47u32, true), (51, false)] {
            let a = Mapping::shared(&fd, 0, LEN).unwrap();
            let b = Mapping::shared(&fd, 0, LEN).unwrap();
            a.write_at(0, &super::probe::boot_image(1 << bit, WRITE_5A));
            a.write_at(TARGET, &[0]);
            let r = run(&kvm, cpl3, ALIAS_VA + TARGET, &a, Some((&b, 1 << bit)));
            eprintln!(
                "FACT alias slot at 1<<{bit}, cpl{}: {r:?}",
                if cpl3 { 3 } else { 0 }
            );
            if expect_ok {
                assert_eq!(r.unwrap(), Outcome::Reported(0x5a));
                assert_eq!(a.read_at(TARGET), 0x5a, "the write reached the memfd");
            } else {
                // A 48-bit host: measured, this KVM *accepts* the slot at 1 << 51, but a
                // guest PTE with bit 51 set has a reserved bit (guest MAXPHYADDR 48), so
                // the access is a #PF, which this KVM cannot deliver: a triple fault.
                // Either way the guest cannot use bit 51 as its attribute bit.
                let bits = host_phys_bits(&kvm);
                eprintln!("FACT host physical-address bits: {bits}");
                if bits < 52 {
                    assert!(
                        matches!(r, Err(_) | Ok(Outcome::Shutdown)),
                        "{bits}-bit host: {r:?}"
                    );
                }
            }
        }
    }
}

fn host_phys_bits(kvm: &kvm_ioctls::Kvm) -> u32 {
    let c = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    c.as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map(|e| e.eax & 0xff)
        .unwrap_or(36)
}

#[test]
fn a_guest_access_to_a_protected_host_page_is_a_memory_fault_with_its_gpa() {
    let Some(kvm) = kvm() else { return };
    eprintln!(
        "FACT KVM_CAP_MEMORY_FAULT_INFO = {}",
        kvm.check_extension_int(kvm_ioctls::Cap::MemoryFaultInfo)
    );
    let fd = memfd("probe", LEN).unwrap();
    for cpl3 in [false, true] {
        for how in ["prot-none", "munmap", "prot-none-alias"] {
            let a = Mapping::shared(&fd, 0, LEN).unwrap();
            let b = Mapping::shared(&fd, 0, LEN).unwrap();
            a.write_at(0, &super::probe::boot_image(1 << 47, READ));
            let (rbx, gpa) = match how {
                "prot-none-alias" => {
                    b.protect(TARGET, 4096, libc::PROT_NONE).unwrap();
                    (ALIAS_VA + TARGET, (1 << 47) + TARGET)
                }
                "munmap" => {
                    // SAFETY: the page is ours and nothing references it.
                    let r = unsafe { libc::munmap(a.ptr().add(TARGET as usize).cast(), 4096) };
                    assert_eq!(r, 0);
                    (TARGET, TARGET)
                }
                _ => {
                    a.protect(TARGET, 4096, libc::PROT_NONE).unwrap();
                    (TARGET, TARGET)
                }
            };
            let r = run(&kvm, cpl3, rbx, &a, Some((&b, 1 << 47))).unwrap();
            eprintln!("FACT {how} read at cpl{}: {r:?}", if cpl3 { 3 } else { 0 });
            match r {
                // A standard KVM (TDP MMU, Linux >= 6.8): KVM_EXIT_MEMORY_FAULT.
                Outcome::MemoryFault { gpa: g, .. } => assert_eq!(g, gpa),
                // This machine at CPL0: the emulator's guest read fails and it falls
                // back to MMIO at the GPA.
                Outcome::Mmio { gpa: g, .. } => assert_eq!(g, gpa),
                // This machine at CPL3: EFAULT with no memory-fault information (the
                // reason hole mode exists; `CcMemory::expose_faults`).
                Outcome::RunError(libc::EFAULT) if cpl3 => {}
                other => panic!("{how}: unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn cost_of_protecting_and_replacing_host_pages() {
    // 128 MiB: alternating 4 KiB protections over 256 MiB exceed the default
    // vm.max_map_count (65530 VMAs) and mprotect fails with ENOMEM (measured).
    let fd = memfd("cost", 256 << 20).unwrap();
    let m = Mapping::shared(&fd, 0, 256 << 20).unwrap();
    for i in (0..(256u64 << 20)).step_by(4096) {
        m.write_at(i, &[1]);
    }
    let vmas = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .count()
    };
    let before = vmas();
    let t = Instant::now();
    for i in (0..(128u64 << 20)).step_by(8192) {
        m.protect(i, 4096, libc::PROT_NONE).unwrap();
    }
    let per4k = t.elapsed() / 16384;
    let after = vmas();
    let t = Instant::now();
    for i in (0..(256u64 << 20)).step_by(4 << 20) {
        m.protect(i, 2 << 20, libc::PROT_READ | libc::PROT_WRITE)
            .unwrap();
    }
    let per2m = t.elapsed() / 64;
    // The common case: whole 2 MiB runs of one state, in the untouched upper half.
    let t = Instant::now();
    for i in ((128u64 << 20)..(256 << 20)).step_by(2 << 20) {
        m.protect(i, 2 << 20, libc::PROT_NONE).unwrap();
        m.protect(i, 2 << 20, libc::PROT_READ | libc::PROT_WRITE)
            .unwrap();
    }
    let toggle2m = t.elapsed() / 128;
    let t = Instant::now();
    for i in (0..(256u64 << 20)).step_by(4 << 20) {
        super::sys::punch_hole(&fd, i, 2 << 20).unwrap();
    }
    let punch = t.elapsed() / 64;
    let t = Instant::now();
    for i in (0..(256u64 << 20)).step_by(4 << 20) {
        m.replace_anonymous(i, 2 << 20).unwrap();
    }
    let anon = t.elapsed() / 64;
    eprintln!(
        "FACT mprotect 4K: {per4k:?}/op, VMAs {before} -> {after} after 16384 alternating pages; \
         mprotect 2M over 512 VMAs (RW again): {per2m:?}/op; \
         mprotect 2M uniform: {toggle2m:?}/op; punch hole 2M: {punch:?}/op; MAP_FIXED anon 2M: {anon:?}/op"
    );
    assert!(
        after >= before + 16384,
        "each alternating page is its own VMA"
    );
}

#[test]
fn a_guest_access_to_a_gpa_without_memslot_is_an_mmio_exit_and_slot_changes_cost() {
    let Some(kvm) = kvm() else { return };
    let fd = memfd("probe", LEN).unwrap();
    let a = Mapping::shared(&fd, 0, LEN).unwrap();
    a.write_at(0, &super::probe::boot_image(1 << 47, READ));
    for cpl3 in [false, true] {
        let mut p = Probe::new(&kvm, cpl3, TARGET);
        // SAFETY: `a` outlives `p`.
        unsafe {
            p.add_slot(0, 0, a.ptr(), TARGET).unwrap();
            p.add_slot(
                1,
                TARGET + 4096,
                a.ptr().add(TARGET as usize + 4096),
                LEN - TARGET - 4096,
            )
            .unwrap();
        }
        let r = p.run();
        eprintln!(
            "FACT read of a GPA in a memslot hole at cpl{}: {r:?}",
            if cpl3 { 3 } else { 0 }
        );
        assert_eq!(
            r,
            Outcome::Mmio {
                gpa: TARGET,
                write: false
            }
        );
        // Slot churn on a VM that has run: delete and re-create slot 1.
        let t = Instant::now();
        for _ in 0..50 {
            // SAFETY: as above; size 0 deletes the slot.
            unsafe {
                p.add_slot(1, TARGET + 4096, a.ptr().add(TARGET as usize + 4096), 0)
                    .unwrap();
                p.add_slot(
                    1,
                    TARGET + 4096,
                    a.ptr().add(TARGET as usize + 4096),
                    LEN - TARGET - 4096,
                )
                .unwrap();
            }
        }
        eprintln!(
            "FACT memslot delete + create: {:?} per pair",
            t.elapsed() / 50
        );
    }
}

#[test]
fn a_guest_write_to_or_fetch_from_a_protected_page_is_stopped() {
    let Some(kvm) = kvm() else { return };
    let fd = memfd("probe", LEN).unwrap();
    for cpl3 in [false, true] {
        for fetch in [false, true] {
            let a = Mapping::shared(&fd, 0, LEN).unwrap();
            a.write_at(0, &super::probe::boot_image(1 << 47, WRITE_5A));
            let page = if fetch { super::probe::CODE } else { TARGET };
            a.protect(page, 4096, libc::PROT_NONE).unwrap();
            let r = run(&kvm, cpl3, TARGET, &a, None).unwrap();
            let what = if fetch { "instruction fetch" } else { "write" };
            eprintln!(
                "FACT {what} on a PROT_NONE page at cpl{}: {r:?}",
                if cpl3 { 3 } else { 0 }
            );
            match (fetch, &r) {
                (false, Outcome::Mmio { gpa, write: true }) => assert_eq!(*gpa, TARGET),
                (_, Outcome::MemoryFault { gpa, .. }) => assert_eq!(*gpa, page),
                (_, Outcome::RunError(libc::EFAULT)) if cpl3 => {}
                (true, Outcome::Internal(_) | Outcome::Mmio { .. }) if !cpl3 => {}
                _ => panic!("{what}: unexpected {r:?}"),
            }
        }
    }
}
