//! uAPI conformance: every hand-written KVM constant, struct size and field offset
//! the VMM relies on, and the kvm-bindings layouts it uses, pinned against the
//! values of a NAMED kernel tag.
//!
//! Reference: Linux **v6.16** (torvalds/linux tag v6.16),
//! `include/uapi/linux/kvm.h`, `arch/x86/include/uapi/asm/kvm.h`,
//! `include/uapi/linux/kvm_para.h`, `arch/x86/include/uapi/asm/kvm_para.h`, and
//! `arch/x86/include/asm/cpuid/api.h`. Exceptions are marked: `KVM_EXIT_SNP_REQ_CERTS`
//! and `KVM_SEV_SNP_ENABLE_REQ_CERTS` are not in v6.16 (Linux 7.0).
//!
//! A kvm-bindings bump that changes one of these layouts, or an edit of a constant,
//! fails here. Numbers are written out, not derived from the code under test.

use std::mem::{offset_of, size_of};

use kvm_bindings as kb;

use crate::tee::launch::{cpuid_function_is_indexed, KVM_CPUID_FLAG_SIGNIFICANT_INDEX};
use crate::vstate::private as pm;
use crate::vstate::sev;
use crate::vstate::tdx as td;
use crate::vstate::vcpu;

/// `_IOWR(KVMIO, nr, size)` (include/uapi/asm-generic/ioctl.h).
const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (0xAE << 8) | nr
}

#[test]
fn ioctl_numbers() {
    // include/uapi/linux/kvm.h v6.16: KVM_MEMORY_ENCRYPT_OP _IOWR(KVMIO, 0xba, unsigned long).
    assert_eq!(td::KVM_MEMORY_ENCRYPT_OP, iowr(0xba, 8));
    assert_eq!(td::KVM_MEMORY_ENCRYPT_OP, 0xC008_AEBA);
}

#[test]
fn vm_types_and_exit_reasons() {
    // arch/x86/include/uapi/asm/kvm.h v6.16.
    assert_eq!(kb::KVM_X86_SNP_VM, 4);
    assert_eq!(kb::KVM_X86_TDX_VM, 5);
    // include/uapi/linux/kvm.h v6.16.
    assert_eq!(kb::KVM_EXIT_HYPERCALL, 3);
    assert_eq!(kb::KVM_EXIT_INTERNAL_ERROR, 17);
    assert_eq!(kb::KVM_EXIT_MEMORY_FAULT, 39);
    assert_eq!(vcpu::KVM_EXIT_TDX, 40);
    // Not in v6.16: Linux 7.0 (after KVM_EXIT_ARM_SEA 41 and KVM_EXIT_ARM_LDST64B 42;
    // earlier revisions of the series used 40 and 42).
    assert_eq!(vcpu::KVM_EXIT_SNP_REQ_CERTS, 43);
    // KVM_INTERNAL_ERROR_EMULATION.
    assert_eq!(kb::KVM_INTERNAL_ERROR_EMULATION, 1);
    assert_eq!(kb::KVM_CAP_X86_APIC_BUS_CYCLES_NS, 237);
    assert_eq!(kb::KVM_CAP_EXIT_HYPERCALL, 201);
}

#[test]
fn private_memory_constants() {
    // include/uapi/linux/kvm_para.h v6.16 and arch/x86/include/uapi/asm/kvm_para.h.
    assert_eq!(pm::KVM_HC_MAP_GPA_RANGE, 12);
    assert_eq!(pm::KVM_MAP_GPA_RANGE_PAGE_SZ_4K, 0);
    assert_eq!(pm::KVM_MAP_GPA_RANGE_PAGE_SZ_2M, 1);
    assert_eq!(pm::KVM_MAP_GPA_RANGE_PAGE_SZ_1G, 2);
    assert_eq!(pm::KVM_MAP_GPA_RANGE_PAGE_SZ_MASK, 3);
    assert_eq!(pm::KVM_MAP_GPA_RANGE_ENCRYPTED, 1 << 4);
    // include/uapi/linux/kvm.h v6.16.
    assert_eq!(pm::KVM_MEMORY_ATTRIBUTE_PRIVATE, 1 << 3);
    assert_eq!(
        u64::from(kb::KVM_MEMORY_ATTRIBUTE_PRIVATE),
        pm::KVM_MEMORY_ATTRIBUTE_PRIVATE
    );
    assert_eq!(pm::KVM_MEMORY_EXIT_FLAG_PRIVATE, 1 << 3);
    assert_eq!(
        u64::from(kb::KVM_MEMORY_EXIT_FLAG_PRIVATE),
        pm::KVM_MEMORY_EXIT_FLAG_PRIVATE
    );
    assert_eq!(kb::KVM_MEM_GUEST_MEMFD, 1 << 2);
    // struct kvm_memory_attributes, kvm_create_guest_memfd, kvm_userspace_memory_region2.
    assert_eq!(size_of::<kb::kvm_memory_attributes>(), 32);
    assert_eq!(offset_of!(kb::kvm_memory_attributes, attributes), 16);
    assert_eq!(offset_of!(kb::kvm_memory_attributes, flags), 24);
    assert_eq!(size_of::<kb::kvm_create_guest_memfd>(), 64);
    assert_eq!(offset_of!(kb::kvm_create_guest_memfd, reserved), 16);
    assert_eq!(size_of::<kb::kvm_userspace_memory_region2>(), 160);
    assert_eq!(
        offset_of!(kb::kvm_userspace_memory_region2, guest_memfd_offset),
        32
    );
    assert_eq!(
        offset_of!(kb::kvm_userspace_memory_region2, guest_memfd),
        40
    );
    assert_eq!(offset_of!(kb::kvm_userspace_memory_region2, pad2), 48);
}

#[test]
fn kvm_run_exit_union() {
    // struct kvm_run (include/uapi/linux/kvm.h v6.16): the exit union at 32, 256 bytes.
    assert_eq!(offset_of!(kb::kvm_run, exit_reason), 8);
    assert_eq!(offset_of!(kb::kvm_run, __bindgen_anon_1), 32);
    assert_eq!(size_of::<kb::kvm_run__bindgen_ty_1>(), 256);
    // hypercall {nr, args[6], ret, flags}: what vcpu.rs reads and answers.
    type Hc = kb::kvm_run__bindgen_ty_1__bindgen_ty_8;
    assert_eq!(offset_of!(Hc, nr), 0);
    assert_eq!(offset_of!(Hc, args), 8);
    assert_eq!(offset_of!(Hc, ret), 56);
    assert_eq!(offset_of!(Hc, __bindgen_anon_1), 64);
    // internal {suberror, ndata, data[16]}.
    type Int = kb::kvm_run__bindgen_ty_1__bindgen_ty_13;
    assert_eq!(offset_of!(Int, suberror), 0);
    assert_eq!(offset_of!(Int, ndata), 4);
    assert_eq!(offset_of!(Int, data), 8);
    // memory_fault {flags, gpa, size}.
    type Mf = kb::kvm_run__bindgen_ty_1__bindgen_ty_27;
    assert_eq!(offset_of!(Mf, flags), 0);
    assert_eq!(offset_of!(Mf, gpa), 8);
    assert_eq!(offset_of!(Mf, size), 16);
}

/// The `tdx` member of the exit union (v6.16), which kvm-bindings 0.14 lacks and
/// tee/services.rs reads at fixed offsets: flags @0, nr @8, ret @16; GetQuote
/// {gpa @24, size @32}; GetTdVmCallInfo {leaf @24, r11..r14 @32..56};
/// SetupEventNotifyInterrupt {vector @24}.
#[test]
fn kvm_exit_tdx_layout() {
    #[repr(C)]
    struct GetQuote {
        ret: u64,
        gpa: u64,
        size: u64,
    }
    #[repr(C)]
    struct GetTdVmCallInfo {
        ret: u64,
        leaf: u64,
        r11: u64,
        r12: u64,
        r13: u64,
        r14: u64,
    }
    #[repr(C)]
    struct SetupEventNotify {
        ret: u64,
        vector: u64,
    }
    #[repr(C)]
    struct Tdx {
        flags: u64,
        nr: u64,
        u: [u64; 6],
    }
    assert_eq!(offset_of!(Tdx, nr), 8);
    assert_eq!(offset_of!(Tdx, u), 16);
    assert_eq!(16 + offset_of!(GetQuote, ret), 16);
    assert_eq!(16 + offset_of!(GetQuote, gpa), 24);
    assert_eq!(16 + offset_of!(GetQuote, size), 32);
    assert_eq!(16 + offset_of!(GetTdVmCallInfo, leaf), 24);
    assert_eq!(16 + offset_of!(GetTdVmCallInfo, r11), 32);
    assert_eq!(16 + offset_of!(GetTdVmCallInfo, r12), 40);
    assert_eq!(16 + offset_of!(GetTdVmCallInfo, r13), 48);
    assert_eq!(16 + offset_of!(GetTdVmCallInfo, r14), 56);
    assert_eq!(16 + offset_of!(SetupEventNotify, vector), 24);
    assert!(size_of::<Tdx>() <= 256);
    // TDVMCALL leaves (include/uapi/linux/kvm.h v6.16 / GHCI 1.5).
    use crate::tee::services as s;
    assert_eq!(s::TDVMCALL_GET_TD_VM_CALL_INFO, 0x10000);
    assert_eq!(s::TDVMCALL_GET_QUOTE, 0x10002);
    assert_eq!(s::TDVMCALL_SETUP_EVENT_NOTIFY, 0x10004);
    assert_eq!(s::TDVMCALL_RETRY, 1);
    assert_eq!(s::TDVMCALL_INVALID_OPERAND, 0x8000_0000_0000_0000);
    assert_eq!(s::TDVMCALL_ALIGN_ERROR, 0x8000_0000_0000_0002);
    assert_eq!(s::TDVMCALL_SUBFUNC_UNSUPPORTED, 0x8000_0000_0000_0003);
}

#[test]
fn tdx_commands_and_structs() {
    // arch/x86/include/uapi/asm/kvm.h v6.16: enum kvm_tdx_cmd_id.
    use td::TdxCmdId as Id;
    assert_eq!(
        [
            Id::Capabilities,
            Id::InitVm,
            Id::InitVcpu,
            Id::InitMemRegion,
            Id::FinalizeVm,
            Id::GetCpuid
        ]
        .map(|i| i as u32),
        [0, 1, 2, 3, 4, 5]
    );
    assert_eq!(td::KVM_TDX_MEASURE_MEMORY_REGION, 1);
    // struct kvm_tdx_cmd.
    assert_eq!(size_of::<td::KvmTdxCmd>(), 24);
    assert_eq!(offset_of!(td::KvmTdxCmd, flags), 4);
    assert_eq!(offset_of!(td::KvmTdxCmd, data), 8);
    assert_eq!(offset_of!(td::KvmTdxCmd, hw_error), 16);
    // struct kvm_tdx_capabilities (v6.16 adds the tdvmcallinfo words before reserved).
    assert_eq!(offset_of!(td::KvmTdxCapabilities, supported_xfam), 8);
    assert_eq!(
        offset_of!(td::KvmTdxCapabilities, kernel_tdvmcallinfo_1_r11),
        16
    );
    assert_eq!(
        offset_of!(td::KvmTdxCapabilities, user_tdvmcallinfo_1_r11),
        24
    );
    assert_eq!(
        offset_of!(td::KvmTdxCapabilities, kernel_tdvmcallinfo_1_r12),
        32
    );
    assert_eq!(
        offset_of!(td::KvmTdxCapabilities, user_tdvmcallinfo_1_r12),
        40
    );
    assert_eq!(offset_of!(td::KvmTdxCapabilities, reserved), 48);
    assert_eq!(offset_of!(td::KvmTdxCapabilities, cpuid), 48 + 250 * 8);
    // struct kvm_tdx_init_vm: 256 bytes of TD_PARAMS fields, then struct kvm_cpuid2
    // (tdx.c BUILD_BUG_ON(sizeof(*init_vm) != 256 + sizeof_field(.., cpuid))).
    assert_eq!(offset_of!(td::KvmTdxInitVm, xfam), 8);
    assert_eq!(offset_of!(td::KvmTdxInitVm, mrconfigid), 16);
    assert_eq!(offset_of!(td::KvmTdxInitVm, mrowner), 64);
    assert_eq!(offset_of!(td::KvmTdxInitVm, mrownerconfig), 112);
    assert_eq!(offset_of!(td::KvmTdxInitVm, reserved), 160);
    assert_eq!(offset_of!(td::KvmTdxInitVm, cpuid), 256);
    assert_eq!(
        size_of::<td::KvmTdxInitVm>(),
        256 + 8 + 40 * td::TDX_CPUID_ENTRIES
    );
    // struct kvm_tdx_init_mem_region.
    assert_eq!(size_of::<td::KvmTdxInitMemRegion>(), 24);
    assert_eq!(offset_of!(td::KvmTdxInitMemRegion, gpa), 8);
    assert_eq!(offset_of!(td::KvmTdxInitMemRegion, nr_pages), 16);
    // struct kvm_cpuid2 header and struct kvm_cpuid_entry2.
    assert_eq!(offset_of!(td::TdxCpuid, padding), 4);
    assert_eq!(offset_of!(td::TdxCpuid, entries), 8);
    assert_eq!(size_of::<kb::kvm_cpuid_entry2>(), 40);
    assert_eq!(offset_of!(kb::kvm_cpuid_entry2, index), 4);
    assert_eq!(offset_of!(kb::kvm_cpuid_entry2, flags), 8);
    assert_eq!(offset_of!(kb::kvm_cpuid_entry2, eax), 12);
    assert_eq!(offset_of!(kb::kvm_cpuid_entry2, edx), 24);
    assert_eq!(offset_of!(kb::kvm_cpuid_entry2, padding), 28);
    // KVM_CPUID_FLAG_SIGNIFCANT_INDEX and KVM_MAX_CPUID_ENTRIES (TDX_CPUID_ENTRIES).
    assert_eq!(KVM_CPUID_FLAG_SIGNIFICANT_INDEX, 1);
    assert_eq!(td::TDX_CPUID_ENTRIES, 256);
}

#[test]
fn cpuid_indexed_functions() {
    // arch/x86/include/asm/cpuid/api.h v6.16 cpuid_function_is_indexed.
    let indexed: Vec<u32> = (0..0x30)
        .chain(0x8000_0000..0x8000_0030)
        .filter(|&f| cpuid_function_is_indexed(f))
        .collect();
    assert_eq!(
        indexed,
        [
            4,
            7,
            0xb,
            0xd,
            0xf,
            0x10,
            0x12,
            0x14,
            0x17,
            0x18,
            0x1d,
            0x1e,
            0x1f,
            0x24,
            0x8000_001d
        ]
    );
}

#[test]
fn sev_commands_and_structs() {
    // include/uapi/linux/kvm.h v6.16: enum sev_cmd_id.
    assert_eq!(sev::KVM_SEV_INIT2, 22);
    assert_eq!(sev::KVM_SEV_SNP_LAUNCH_START, 100);
    assert_eq!(sev::KVM_SEV_SNP_LAUNCH_UPDATE, 101);
    assert_eq!(sev::KVM_SEV_SNP_LAUNCH_FINISH, 102);
    assert_eq!(sev::KVM_SEV_INIT2, kb::sev_cmd_id_KVM_SEV_INIT2);
    assert_eq!(
        sev::KVM_SEV_SNP_LAUNCH_UPDATE,
        kb::sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE
    );
    // Not in v6.16 (Linux 7.0): the next id after LAUNCH_FINISH.
    assert_eq!(sev::KVM_SEV_SNP_ENABLE_REQ_CERTS, 103);
    // KVM_SEV_SNP_PAGE_TYPE_* against measured-boot's PageType.
    use measured_boot::snp::PageType;
    assert_eq!(PageType::Normal as u32, kb::KVM_SEV_SNP_PAGE_TYPE_NORMAL);
    assert_eq!(PageType::Zero as u32, kb::KVM_SEV_SNP_PAGE_TYPE_ZERO);
    assert_eq!(
        PageType::Unmeasured as u32,
        kb::KVM_SEV_SNP_PAGE_TYPE_UNMEASURED
    );
    assert_eq!(PageType::Secrets as u32, kb::KVM_SEV_SNP_PAGE_TYPE_SECRETS);
    assert_eq!(PageType::Cpuid as u32, kb::KVM_SEV_SNP_PAGE_TYPE_CPUID);
    assert_eq!(
        [1, 3, 4, 5, 6],
        [
            kb::KVM_SEV_SNP_PAGE_TYPE_NORMAL,
            kb::KVM_SEV_SNP_PAGE_TYPE_ZERO,
            kb::KVM_SEV_SNP_PAGE_TYPE_UNMEASURED,
            kb::KVM_SEV_SNP_PAGE_TYPE_SECRETS,
            kb::KVM_SEV_SNP_PAGE_TYPE_CPUID
        ]
    );
    // struct kvm_sev_cmd.
    assert_eq!(size_of::<kb::kvm_sev_cmd>(), 24);
    assert_eq!(offset_of!(kb::kvm_sev_cmd, data), 8);
    assert_eq!(offset_of!(kb::kvm_sev_cmd, error), 16);
    assert_eq!(offset_of!(kb::kvm_sev_cmd, sev_fd), 20);
    // struct kvm_sev_init.
    assert_eq!(size_of::<kb::kvm_sev_init>(), 48);
    assert_eq!(offset_of!(kb::kvm_sev_init, flags), 8);
    assert_eq!(offset_of!(kb::kvm_sev_init, ghcb_version), 12);
    assert_eq!(offset_of!(kb::kvm_sev_init, pad1), 14);
    assert_eq!(offset_of!(kb::kvm_sev_init, pad2), 16);
    // struct kvm_sev_snp_launch_start.
    assert_eq!(size_of::<kb::kvm_sev_snp_launch_start>(), 64);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_start, gosvw), 8);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_start, flags), 24);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_start, pad0), 26);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_start, pad1), 32);
    // struct kvm_sev_snp_launch_update.
    assert_eq!(size_of::<kb::kvm_sev_snp_launch_update>(), 64);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_update, uaddr), 8);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_update, len), 16);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_update, type_), 24);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_update, flags), 26);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_update, pad1), 28);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_update, pad2), 32);
    // struct kvm_sev_snp_launch_finish.
    assert_eq!(size_of::<kb::kvm_sev_snp_launch_finish>(), 88);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_finish, id_auth_uaddr), 8);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_finish, id_block_en), 16);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_finish, auth_key_en), 17);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_finish, vcek_disabled), 18);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_finish, host_data), 19);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_finish, pad0), 51);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_finish, flags), 54);
    assert_eq!(offset_of!(kb::kvm_sev_snp_launch_finish, pad1), 56);
    assert_eq!(kb::KVM_SEV_SNP_ID_BLOCK_SIZE, 96);
    assert_eq!(kb::KVM_SEV_SNP_ID_AUTH_SIZE, 4096);
}

/// The fakes' copies of KVM-internal masks and status codes (not uAPI, but rules the
/// fakes enforce), pinned against arch/x86/kvm/svm/sev.c, arch/x86/kvm/vmx/tdx.c and
/// arch/x86/include/asm/shared/tdx.h (v6.16).
#[test]
fn fake_rule_constants() {
    // SNP_POLICY_MASK_VALID: API minor/major, SMT, RSVD_MBO, DEBUG, SINGLE_SOCKET;
    // bit 18 (MIGRATE_MA) is not in it.
    assert_eq!(super::snp::SNP_POLICY_MASK_VALID, 0x1B_FFFF);
    assert_eq!(super::snp::SNP_POLICY_MASK_VALID & (1 << 18), 0);
    // TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, the MapGPA answer without the user exit.
    assert_eq!(
        crate::tee::services::TDVMCALL_SUBFUNC_UNSUPPORTED,
        0x8000_0000_0000_0003
    );
}
