//! The guest CPUID template: what every vCPU sees on top of `KVM_GET_SUPPORTED_CPUID`,
//! the way established KVM VMMs normalise it (Firecracker's CPUID normalisation,
//! cloud-hypervisor, QEMU `-cpu host` with KVM).
//!
//! `KVM_GET_SUPPORTED_CPUID` reports what KVM *can* offer, not what a guest on a
//! hypervisor should see. A stock Linux kernel needs, on top of it:
//!
//! - the hypervisor bit CPUID.1:ECX\[31\]: without it Linux never looks at the
//!   hypervisor leaves, so it uses neither kvm-clock nor any paravirtual feature
//!   ("Booting paravirtualized kernel on bare hardware");
//! - TSC-deadline CPUID.1:ECX\[24\] when KVM emulates it (`KVM_CAP_TSC_DEADLINE_TIMER`;
//!   KVM reports it only through the capability, never in the supported leaves):
//!   without a timer it can calibrate, and with no PIT, Linux panics "IO-APIC + timer
//!   doesn't work!";
//! - KVM's signature leaf 0x4000_0000 ("KVMKVMKVM\0\0\0" and the highest hypervisor
//!   leaf) and its feature leaf 0x4000_0001 (kvm-clock, PV EOI, PV unhalt, …) exactly as
//!   KVM reports it — a feature KVM does not implement is never advertised;
//! - the TSC frequency leaf 0x4000_0010 (EAX = TSC kHz, EBX = local-APIC timer kHz) when
//!   KVM tells the VM's TSC frequency (`KVM_GET_TSC_KHZ` on the VM);
//! - a consistent topology for `vcpus` vCPUs: one package, one thread per core, one core
//!   per vCPU (leaf 1 logical count and HTT, leaves 0xB/0x1F, leaf 4 cores, AMD
//!   0x8000_0008). The per-vCPU APIC IDs are patched in by
//!   [`crate::vstate::vcpu::Vcpu::new`].
//!
//! The TEE backends adjust their own leaves afterwards
//! ([`crate::tee::backend::TeeBackend::adjust_cpuid`]).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use kvm_ioctls::{Cap, Kvm, VmFd};

/// KVM's hypervisor signature leaf.
pub const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
/// KVM's paravirtual feature leaf.
pub const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
/// The hypervisor timing leaf: EAX = TSC kHz, EBX = local-APIC timer kHz.
pub const LEAF_TSC_FREQ: u32 = 0x4000_0010;
/// CPUID.1:ECX bit: running on a hypervisor.
pub const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit: the local APIC's TSC-deadline timer mode.
pub const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:EDX bit: EBX\[23:16\] (the logical processor count) is valid.
pub const EDX_HTT: u32 = 1 << 28;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
pub const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
/// KVM's local-APIC timer runs at 1 GHz (one tick per nanosecond).
pub const KVM_APIC_TIMER_KHZ: u32 = 1_000_000;

/// What the template needs to know about this host and VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    /// Number of vCPUs (at least 1).
    pub vcpus: u32,
    /// KVM emulates the TSC-deadline timer (`KVM_CAP_TSC_DEADLINE_TIMER`).
    pub tsc_deadline: bool,
    /// The VM's TSC frequency in kHz, when KVM reports it.
    pub tsc_khz: Option<u32>,
}

vmm_sys_util::ioctl_io_nr!(KVM_GET_TSC_KHZ, kvm_bindings::KVMIO, 0xa3);

impl Template {
    /// Asks KVM what this host offers a guest of `vcpus` vCPUs in `vm`.
    pub fn for_host(kvm: &Kvm, vm: &VmFd, vcpus: u32) -> Self {
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        // SAFETY: KVM_GET_TSC_KHZ takes no argument and returns the frequency or -1;
        // `vm` is a valid VM fd for the duration of the call. Before Linux 6.0 the VM
        // ioctl does not exist (ENOTTY) and the leaf is left out.
        let ret = unsafe { vmm_sys_util::ioctl::ioctl(vm, KVM_GET_TSC_KHZ()) };
        let tsc_khz = u32::try_from(ret).ok().filter(|&k| k > 0);
        Self {
            vcpus: vcpus.max(1),
            tsc_deadline,
            tsc_khz,
        }
    }
}

/// The CPUID template could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The CPUID list has no room for another entry.
    #[error("the CPUID list has no room for leaf {function:#x} subleaf {index}")]
    Full {
        /// The leaf.
        function: u32,
        /// The subleaf.
        index: u32,
        /// Why.
        #[source]
        source: vmm_sys_util::fam::Error,
    },
}

fn entry(function: u32, index: u32, flags: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

fn push(cpuid: &mut CpuId, e: kvm_cpuid_entry2) -> Result<(), CpuidError> {
    let (function, index) = (e.function, e.index);
    cpuid.push(e).map_err(|source| CpuidError::Full {
        function,
        index,
        source,
    })
}

/// Bits needed to number `n` items (ceil(log2(n))).
fn id_bits(n: u32) -> u32 {
    n.max(1).next_power_of_two().trailing_zeros()
}

/// Applies the template to `cpuid` (the list from `KVM_GET_SUPPORTED_CPUID`).
pub fn apply(cpuid: &mut CpuId, t: &Template) -> Result<(), CpuidError> {
    let vcpus = t.vcpus.max(1);
    let has = |cpuid: &CpuId, f: u32| cpuid.as_slice().iter().any(|e| e.function == f);
    let has_0xb = has(cpuid, 0xb);
    let has_0x1f = has(cpuid, 0x1f);
    let kvm_features = has(cpuid, LEAF_KVM_FEATURES);
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ecx |= ECX_HYPERVISOR;
                if t.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !ECX_TSC_DEADLINE;
                }
                let logical = vcpus.next_power_of_two().min(128);
                e.ebx = (e.ebx & !0x00ff_0000) | (logical << 16);
                if vcpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            // Deterministic cache parameters (Intel): EAX[31:26] = cores per package - 1,
            // EAX[25:14] = logical processors sharing the cache - 1 (one thread per core).
            4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 {
                    vcpus.next_power_of_two() - 1
                } else {
                    0
                };
                let cores = vcpus.next_power_of_two().min(64) - 1;
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (cores << 26);
            }
            // AMD: ECX[7:0] = cores - 1, ECX[15:12] = APIC ID bits for the core.
            0x8000_0008 => {
                e.ecx = (e.ecx & !0xf0ff) | ((vcpus - 1) & 0xff) | (id_bits(vcpus) << 12);
            }
            _ => {}
        }
    }
    // Topology leaves: rewritten whole (the APIC ID in EDX is per vCPU).
    let core_bits = id_bits(vcpus);
    for (leaf, present) in [(0xb, has_0xb), (0x1f, has_0x1f)] {
        if !present {
            continue;
        }
        cpuid.retain(|e| e.function != leaf);
        let f = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        // Subleaf 0: SMT level (type 1), one thread per core.
        push(cpuid, entry(leaf, 0, f, [0, 1, 1 << 8, 0]))?;
        // Subleaf 1: core level (type 2), `vcpus` processors in the package.
        push(
            cpuid,
            entry(leaf, 1, f, [core_bits, vcpus, 1 | (2 << 8), 0]),
        )?;
        // Subleaf 2: invalid (end of the list).
        push(cpuid, entry(leaf, 2, f, [0, 0, 2, 0]))?;
    }
    // Hypervisor leaves: only what KVM itself implements.
    cpuid.retain(|e| !matches!(e.function, LEAF_KVM_SIGNATURE | LEAF_TSC_FREQ));
    if kvm_features {
        let max = if t.tsc_khz.is_some() {
            LEAF_TSC_FREQ
        } else {
            LEAF_KVM_FEATURES
        };
        let [b, c, d] = KVM_SIGNATURE;
        push(cpuid, entry(LEAF_KVM_SIGNATURE, 0, 0, [max, b, c, d]))?;
        if let Some(khz) = t.tsc_khz {
            push(
                cpuid,
                entry(LEAF_TSC_FREQ, 0, 0, [khz, KVM_APIC_TIMER_KHZ, 0, 0]),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list shaped like KVM_GET_SUPPORTED_CPUID on a standard upstream KVM (AMD).
    fn supported() -> CpuId {
        let f = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        CpuId::from_entries(&[
            entry(0, 0, 0, [0x1f, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            entry(
                1,
                0,
                0,
                [0x00a0_0f11, 0x0000_0800, 0x7ed8_320b, 0x178b_fbff],
            ),
            entry(4, 0, f, [0x0000_0121, 0x01c0_003f, 0x3f, 0]),
            entry(4, 1, f, [0x0000_0163, 0x01c0_003f, 0x3f, 0]),
            entry(0xb, 0, f, [0, 0, 0, 0]),
            entry(0xb, 1, f, [0, 0, 0, 0]),
            entry(0x1f, 0, f, [0, 0, 0, 0]),
            entry(0x4000_0000, 0, 0, [0x4000_0001, 0, 0, 0]),
            entry(0x4000_0001, 0, 0, [0x0100_7afb, 0, 0, 0]),
            entry(0x8000_0008, 0, 0, [0x3030, 0, 0x7003, 0]),
        ])
        .unwrap()
    }

    fn leaf(c: &CpuId, function: u32, index: u32) -> Option<kvm_cpuid_entry2> {
        c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .copied()
    }

    fn host(vcpus: u32) -> Template {
        Template {
            vcpus,
            tsc_deadline: true,
            tsc_khz: Some(2_345_678),
        }
    }

    #[test]
    fn the_guest_sees_the_hypervisor_bit_and_tsc_deadline() {
        let mut c = supported();
        apply(&mut c, &host(1)).unwrap();
        let l1 = leaf(&c, 1, 0).unwrap();
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        // Every other leaf-1 bit is KVM's.
        assert_eq!(l1.ecx & !(ECX_HYPERVISOR | ECX_TSC_DEADLINE), 0x7ed8_320b);
        assert_eq!(l1.eax, 0x00a0_0f11);
    }

    #[test]
    fn tsc_deadline_is_hidden_when_kvm_does_not_emulate_it() {
        let mut c = supported();
        c.as_mut_slice()[1].ecx |= ECX_TSC_DEADLINE;
        let t = Template {
            tsc_deadline: false,
            ..host(1)
        };
        apply(&mut c, &t).unwrap();
        assert_eq!(leaf(&c, 1, 0).unwrap().ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn kvm_signature_features_and_tsc_frequency_leaves() {
        let mut c = supported();
        apply(&mut c, &host(1)).unwrap();
        let sig = leaf(&c, LEAF_KVM_SIGNATURE, 0).unwrap();
        assert_eq!(sig.eax, LEAF_TSC_FREQ);
        let mut name = Vec::new();
        for r in [sig.ebx, sig.ecx, sig.edx] {
            name.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&name, b"KVMKVMKVM\0\0\0");
        // The feature leaf is KVM's, untouched.
        assert_eq!(leaf(&c, LEAF_KVM_FEATURES, 0).unwrap().eax, 0x0100_7afb);
        let tsc = leaf(&c, LEAF_TSC_FREQ, 0).unwrap();
        assert_eq!((tsc.eax, tsc.ebx), (2_345_678, KVM_APIC_TIMER_KHZ));
        assert_eq!(
            c.as_slice()
                .iter()
                .filter(|e| e.function == LEAF_KVM_SIGNATURE)
                .count(),
            1
        );
    }

    #[test]
    fn without_a_known_tsc_frequency_the_hypervisor_leaves_end_at_the_features() {
        let mut c = supported();
        let t = Template {
            tsc_khz: None,
            ..host(1)
        };
        apply(&mut c, &t).unwrap();
        assert_eq!(
            leaf(&c, LEAF_KVM_SIGNATURE, 0).unwrap().eax,
            LEAF_KVM_FEATURES
        );
        assert!(leaf(&c, LEAF_TSC_FREQ, 0).is_none());
    }

    #[test]
    fn no_kvm_leaves_are_invented_when_kvm_offers_none() {
        let mut c = supported();
        c.retain(|e| e.function < 0x4000_0000 || e.function >= 0x8000_0000);
        apply(&mut c, &host(1)).unwrap();
        assert!(c
            .as_slice()
            .iter()
            .all(|e| !(0x4000_0000..0x8000_0000).contains(&e.function)));
        // The hypervisor bit is still set: the guest does run on one.
        assert_ne!(leaf(&c, 1, 0).unwrap().ecx & ECX_HYPERVISOR, 0);
    }

    #[test]
    fn topology_of_several_vcpus_is_one_package_of_single_thread_cores() {
        for (n, bits) in [(1, 0), (2, 1), (3, 2), (4, 2), (8, 3)] {
            let mut c = supported();
            apply(&mut c, &host(n)).unwrap();
            let l1 = leaf(&c, 1, 0).unwrap();
            assert_eq!((l1.ebx >> 16) & 0xff, n.next_power_of_two(), "{n}");
            assert_eq!(l1.edx & EDX_HTT != 0, n > 1, "{n}");
            for f in [0xb, 0x1f] {
                let smt = leaf(&c, f, 0).unwrap();
                assert_eq!((smt.eax, smt.ebx, (smt.ecx >> 8) & 0xff), (0, 1, 1));
                let core = leaf(&c, f, 1).unwrap();
                assert_eq!(
                    (core.eax, core.ebx, (core.ecx >> 8) & 0xff),
                    (bits, n, 2),
                    "{n}"
                );
                assert_eq!((leaf(&c, f, 2).unwrap().ecx >> 8) & 0xff, 0);
                assert_eq!(c.as_slice().iter().filter(|e| e.function == f).count(), 3);
            }
            let amd = leaf(&c, 0x8000_0008, 0).unwrap();
            assert_eq!(amd.ecx & 0xff, n - 1);
            assert_eq!((amd.ecx >> 12) & 0xf, bits);
            let cache = leaf(&c, 4, 0).unwrap();
            assert_eq!(cache.eax >> 26, n.next_power_of_two() - 1);
            assert_eq!(cache.eax & 0x3fff, 0x121);
        }
    }

    #[test]
    fn applying_twice_gives_the_same_list() {
        let mut once = supported();
        apply(&mut once, &host(2)).unwrap();
        let mut twice = once.clone();
        apply(&mut twice, &host(2)).unwrap();
        let sorted = |c: &CpuId| {
            let mut v = c.as_slice().to_vec();
            v.sort_by_key(|e| (e.function, e.index));
            v
        };
        assert_eq!(sorted(&once), sorted(&twice));
    }

    #[test]
    fn this_hosts_kvm_gets_the_hypervisor_bit() {
        test_kit::require!(kvm);
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        let mut c = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let t = Template::for_host(&kvm, &vm, 2);
        apply(&mut c, &t).unwrap();
        eprintln!("this host: {t:?}");
        assert_ne!(leaf(&c, 1, 0).unwrap().ecx & ECX_HYPERVISOR, 0);
        assert_eq!(
            leaf(&c, 1, 0).unwrap().ecx & ECX_TSC_DEADLINE != 0,
            t.tsc_deadline
        );
    }
}
