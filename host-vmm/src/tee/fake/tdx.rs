//! A fake of KVM's TDX commands (Linux v6.16 `arch/x86/kvm/vmx/tdx.c`) and of the
//! TDX module behind them, enforcing KVM's checks.

use std::collections::BTreeMap;

use kvm_bindings::kvm_cpuid_entry2;

use super::{copy_from_user, page_aligned, slot_of, PrivateAttrs, PAGE};
use crate::tee::launch::find_cpuid_entry2;
use crate::tee::tdx::TD_ATTR_SEPT_VE_DISABLE;
use crate::vstate::tdx::{TdxCmdError, TdxCommands, TdxRequest, TDX_CPUID_ENTRIES};

/// `TDX_OPERAND_INVALID` (arch/x86/virt/vmx/tdx/tdx_errno.h), as TDH.MNG.INIT reports it.
pub(crate) const TDX_OPERAND_INVALID: u64 = 0xC000_0100_0000_0000;
/// `KVM_MAX_CPUID_ENTRIES` (arch/x86/include/asm/kvm_host.h).
pub(crate) const KVM_MAX_CPUID_ENTRIES: u32 = 256;
/// CPUID.7.0:EBX HLE (4) and RTM (11): `TDX_FEATURE_TSX`, refused by
/// `tdx_unsupported_cpuid`.
const TDX_FEATURE_TSX: u32 = (1 << 4) | (1 << 11);
/// CPUID.7.0:ECX WAITPKG (bit 5), refused by `tdx_unsupported_cpuid`.
const WAITPKG: u32 = 1 << 5;

/// `enum kvm_tdx_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TdState {
    /// Before INIT_VM.
    Uninitialized,
    /// After INIT_VM (`TD_STATE_INITIALIZED`).
    Initialized,
    /// After FINALIZE_VM (`TD_STATE_RUNNABLE`).
    Runnable,
}

fn einval() -> TdxCmdError {
    err(libc::EINVAL)
}

fn err(errno: i32) -> TdxCmdError {
    TdxCmdError { errno, hw_error: 0 }
}

/// `tdx_get_guest_phys_addr_bits`: CPUID.0x80000008:EAX[23:16].
pub(crate) fn gpaw_of(eax: u32) -> u32 {
    (eax >> 16) & 0xff
}

/// KVM + the TDX module for one TD.
#[derive(Debug)]
pub(crate) struct FakeKvmTdx {
    /// TD attributes KVM reports (`tdx_get_supported_attrs`: only SEPT_VE_DISABLE in
    /// v6.16, `KVM_SUPPORTED_TD_ATTRS`).
    pub supported_attrs: u64,
    /// XFAM bits KVM reports (`tdx_get_supported_xfam`).
    pub supported_xfam: u64,
    /// The module's CPUID_CONFIG (function, index, configurable bits).
    pub cpuid_configs: Vec<kvm_cpuid_entry2>,
    /// The platform has 5-level EPT (GPAW 52 allowed).
    pub ept_5level: bool,
    /// The VM has a split irqchip (a TD cannot have a full in-kernel one).
    pub split_irqchip: bool,
    /// The VM has a full in-kernel irqchip (KVM_CREATE_IRQCHIP; refused for a real
    /// TD, modelled for the generic KVM_ENABLE_CAP rules).
    pub full_irqchip: bool,
    /// KVM_SET_MEMORY_ATTRIBUTES state: `kvm_gmem_populate` needs PRIVATE.
    pub attrs: PrivateAttrs,
    /// Each vCPU's CPUID as set by KVM_SET_CPUID2 (None before it).
    pub vcpu_cpuid: Vec<Option<Vec<kvm_cpuid_entry2>>>,
    /// guest_memfd-backed memslots (gpa, size).
    pub memory: Vec<(u64, u64)>,
    /// Pages INIT_MEM_REGION adds per call before a (simulated) signal: -EINTR.
    pub chunk: u64,
    /// INIT_VM calls that fail with -EAGAIN (TDH.MNG.CREATE: TDX_RND_NO_ENTROPY).
    pub init_vm_busy: u32,
    /// FINALIZE_VM failure to inject.
    pub fail_finalize: Option<TdxCmdError>,
    /// TD state.
    pub state: TdState,
    /// Created vCPUs: initialised or not.
    pub vcpus: Vec<bool>,
    /// The APIC bus cycle length set before vCPUs exist (KVM_CAP_X86_APIC_BUS_CYCLES_NS).
    pub apic_bus_cycle_ns: Option<u64>,
    /// GPAW chosen at INIT_VM.
    pub gpaw: u32,
    /// The CPUID values TDH.MNG.INIT received, per CPUID_CONFIG slot.
    pub td_cpuid: Vec<Option<kvm_cpuid_entry2>>,
    /// INIT_VM arguments seen (attributes, xfam, mrconfigid[0]).
    pub init_vm: Option<(u64, u64, u64)>,
    /// RCX of each initialised vCPU.
    pub vcpu_rcx: BTreeMap<u32, u64>,
    /// Private memory: the pages TDH.MEM.PAGE.ADD copied.
    pub private: BTreeMap<u64, Box<[u8; 4096]>>,
    /// Pages extended into MRTD, in order.
    pub measured: Vec<u64>,
    /// Every INIT_MEM_REGION call: (source_addr, gpa, nr_pages, measure) as sent.
    pub regions: Vec<(u64, u64, u64, bool)>,
    /// Commands in the order KVM accepted them.
    pub log: Vec<&'static str>,
}

impl Default for FakeKvmTdx {
    fn default() -> Self {
        let cfg = |function, index, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        Self {
            supported_attrs: TD_ATTR_SEPT_VE_DISABLE,
            supported_xfam: 0x2e7,
            // A module configuration in the shape td_init_cpuid_entry2 reports it
            // (no flags; the GPAW field of 0x80000008 reported as configurable).
            cpuid_configs: vec![
                cfg(1, 0, 0, 0, !0, !0),
                cfg(7, 0, 0, !TDX_FEATURE_TSX, !WAITPKG, !0),
                cfg(7, 1, 0x10, 0, 0, 0),
                cfg(0xD, 0, 0x2e7, 0, 0, 0),
                cfg(0xD, 1, 0xf, 0, 0, 0),
                cfg(0x8000_0008, 0, 0x00ff_0000, 0, 0, 0),
            ],
            ept_5level: false,
            split_irqchip: true,
            full_irqchip: false,
            attrs: PrivateAttrs::default(),
            vcpu_cpuid: Vec::new(),
            memory: vec![(0, 1 << 32)],
            chunk: 1 << 20,
            init_vm_busy: 0,
            fail_finalize: None,
            state: TdState::Uninitialized,
            vcpus: Vec::new(),
            apic_bus_cycle_ns: None,
            gpaw: 0,
            td_cpuid: Vec::new(),
            init_vm: None,
            vcpu_rcx: BTreeMap::new(),
            private: BTreeMap::new(),
            measured: Vec::new(),
            regions: Vec::new(),
            log: Vec::new(),
        }
    }
}

impl FakeKvmTdx {
    /// The CPUID of a host whose KVM_GET_SUPPORTED_CPUID covers every configurable
    /// leaf (as KVM reports it: indexed leaves flagged).
    pub fn host_cpuid(&self) -> Vec<kvm_cpuid_entry2> {
        let sig = crate::tee::launch::KVM_CPUID_FLAG_SIGNIFICANT_INDEX;
        let v = |f: u32, i: u32, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
            function: f,
            index: i,
            flags: if crate::tee::launch::cpuid_function_is_indexed(f) {
                sig
            } else {
                0
            },
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        vec![
            v(0, 0, 0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            v(1, 0, 0x806f8, 0x0080_0800, 0xfffa_3223, 0x1f8b_fbff),
            v(
                7,
                0,
                2,
                0xf3bf_bfff | TDX_FEATURE_TSX,
                0x1b41_5f6e | WAITPKG,
                0xbc10_4010,
            ),
            v(7, 1, 0x1c30, 0, 0, 0),
            v(0xD, 0, 0x2e7, 0xa88, 0x2b00, 0),
            v(0xD, 1, 0xf, 0x330, 0x1900, 0),
            v(0x8000_0008, 0, 0x0000_3934, 0, 0, 0),
        ]
    }

    /// KVM_CREATE_VCPU `n` times (arch/x86/kvm/vmx/tdx.c `tdx_vcpu_create`): only
    /// after INIT_VM (`TD_STATE_INITIALIZED`, else -EIO) and only with the local APIC
    /// in the kernel (else -EINVAL), which for a TD means a split irqchip
    /// (arch/x86/kvm/x86.c KVM_CREATE_IRQCHIP: -ENOTTY with `has_protected_eoi`).
    pub fn create_vcpus(&mut self, n: u32) -> Result<(), TdxCmdError> {
        for _ in 0..n {
            if self.state != TdState::Initialized {
                return Err(err(libc::EIO));
            }
            if !self.split_irqchip {
                return Err(einval());
            }
            self.vcpus.push(false);
            self.vcpu_cpuid.push(None);
        }
        Ok(())
    }

    /// KVM_SET_CPUID2 on vCPU `index` (-ENODEV in the fake when it does not exist).
    pub fn set_cpuid2(&mut self, index: u32, entries: &[kvm_cpuid_entry2]) -> Result<(), i32> {
        let slot = self
            .vcpu_cpuid
            .get_mut(index as usize)
            .ok_or(libc::ENODEV)?;
        *slot = Some(entries.to_vec());
        Ok(())
    }

    /// KVM_SET_MEMORY_ATTRIBUTES on this VM (the launch sets PRIVATE on the TD's
    /// RAM before INIT_MEM_REGION, `PrivateMemory::attach`).
    pub fn set_memory_attributes(&mut self, gpa: u64, size: u64, attrs: u64) -> Result<(), i32> {
        self.attrs.set(gpa, size, attrs)
    }

    /// The TD's view of the private page at `gpa`.
    pub fn page(&self, gpa: u64) -> Option<&[u8; 4096]> {
        self.private.get(&gpa).map(|b| &**b)
    }

    fn capabilities(
        &mut self,
        c: &mut crate::vstate::tdx::KvmTdxCapabilities,
    ) -> Result<(), TdxCmdError> {
        // tdx_get_capabilities: fewer entries than the module's configs -> -E2BIG.
        if (c.cpuid.nent as usize) < self.cpuid_configs.len() {
            return Err(err(libc::E2BIG));
        }
        c.supported_attrs = self.supported_attrs;
        c.supported_xfam = self.supported_xfam;
        c.cpuid.nent = self.cpuid_configs.len() as u32;
        for (i, e) in self.cpuid_configs.iter().enumerate() {
            // td_init_cpuid_entry2: flags stay 0 (never SIGNIFCANT_INDEX).
            c.cpuid.entries[i] = kvm_cpuid_entry2 { flags: 0, ..*e };
        }
        Ok(())
    }

    fn init_vm(&mut self, init: &crate::vstate::tdx::KvmTdxInitVm) -> Result<(), TdxCmdError> {
        // tdx_td_init: only once.
        if self.state != TdState::Uninitialized {
            return Err(einval());
        }
        // tdx_td_init: nent > KVM_MAX_CPUID_ENTRIES -> -E2BIG.
        if init.cpuid.nent > KVM_MAX_CPUID_ENTRIES || init.cpuid.nent as usize > TDX_CPUID_ENTRIES {
            return Err(err(libc::E2BIG));
        }
        // tdx_td_init: memchr_inv(init_vm->reserved) and cpuid.padding -> -EINVAL.
        if init.reserved.iter().any(|&r| r != 0) || init.cpuid.padding != 0 {
            return Err(einval());
        }
        // setup_tdparams: vCPUs already created -> -EBUSY.
        if !self.vcpus.is_empty() {
            return Err(err(libc::EBUSY));
        }
        // setup_tdparams: unsupported attributes / XFAM -> -EINVAL.
        if init.attributes & !self.supported_attrs != 0 || init.xfam & !self.supported_xfam != 0 {
            return Err(einval());
        }
        let entries = &init.cpuid.entries[..init.cpuid.nent as usize];
        // setup_tdparams_eptp_controls: CPUID.0x80000008 must be there, GPAW 48 or
        // 52, and 52 only with 5-level EPT.
        let gpaw = find_cpuid_entry2(entries, 0x8000_0008, 0)
            .map(|e| gpaw_of(e.eax))
            .ok_or_else(einval)?;
        if gpaw != 48 && gpaw != 52 || gpaw == 52 && !self.ept_5level {
            return Err(einval());
        }
        // setup_tdparams_cpuids: each config slot takes the entry kvm_find_cpuid_entry2
        // finds (significant-index rule); TSX/WAITPKG refused; every entry given must
        // land in a slot.
        let mut copied = 0u32;
        let mut slots = Vec::new();
        for cfg in &self.cpuid_configs {
            let Some(e) = find_cpuid_entry2(entries, cfg.function, cfg.index) else {
                slots.push(None);
                continue;
            };
            if e.function == 7
                && e.index == 0
                && (e.ebx & TDX_FEATURE_TSX != 0 || e.ecx & WAITPKG != 0)
            {
                return Err(einval());
            }
            copied += 1;
            let mut v = *e;
            if cfg.function == 0x8000_0008 {
                v.eax &= !0x00ff_0000;
            }
            slots.push(Some(v));
        }
        if copied != init.cpuid.nent {
            return Err(einval());
        }
        // __tdx_td_init: TDH.MNG.CREATE may find no entropy: -EAGAIN, state unchanged.
        if self.init_vm_busy > 0 {
            self.init_vm_busy -= 1;
            return Err(err(libc::EAGAIN));
        }
        // TDH.MNG.INIT (modelled): a CPUID value with a bit the module does not let
        // the VMM configure is TDX_OPERAND_INVALID, which KVM returns as -EINVAL with
        // the status in hw_error.
        for (i, (cfg, v)) in self.cpuid_configs.iter().zip(&slots).enumerate() {
            let Some(v) = v else { continue };
            let mask_eax = if cfg.function == 0x8000_0008 {
                cfg.eax & !0x00ff_0000
            } else {
                cfg.eax
            };
            if v.eax & !mask_eax != 0
                || v.ebx & !cfg.ebx != 0
                || v.ecx & !cfg.ecx != 0
                || v.edx & !cfg.edx != 0
            {
                return Err(TdxCmdError {
                    errno: libc::EINVAL,
                    hw_error: TDX_OPERAND_INVALID | i as u64,
                });
            }
        }
        self.td_cpuid = slots;
        self.gpaw = gpaw;
        self.init_vm = Some((init.attributes, init.xfam, init.mrconfigid[0]));
        self.state = TdState::Initialized;
        Ok(())
    }

    fn init_vcpu(&mut self, index: u32, rcx: u64) -> Result<(), TdxCmdError> {
        // tdx_vcpu_ioctl: no HKID yet (before INIT_VM) or TD runnable -> -EINVAL.
        if self.state != TdState::Initialized {
            return Err(einval());
        }
        // The vCPU fd must exist (KvmTdx answers -ENODEV without one).
        let v = self
            .vcpus
            .get_mut(index as usize)
            .ok_or(err(libc::ENODEV))?;
        // tdx_vcpu_init: only once per vCPU.
        if *v {
            return Err(einval());
        }
        // tdx_vcpu_init: "TDX requires X2APIC, userspace is responsible for
        // configuring guest CPUID accordingly": kvm_apic_set_base(x2APIC mode) fails
        // (reserved X2APIC_ENABLE bit) unless the vCPU's CPUID (KVM_SET_CPUID2) has
        // CPUID.1:ECX.x2APIC[21] -> -EINVAL.
        let x2apic = self
            .vcpu_cpuid
            .get(index as usize)
            .and_then(|c| c.as_deref())
            .and_then(|c| find_cpuid_entry2(c, 1, 0))
            .is_some_and(|e| e.ecx & (1 << 21) != 0);
        if !x2apic {
            return Err(einval());
        }
        *v = true;
        self.vcpu_rcx.insert(index, rcx);
        Ok(())
    }

    fn init_mem_region(
        &mut self,
        r: &mut crate::vstate::tdx::KvmTdxInitMemRegion,
        measure: bool,
    ) -> Result<(), TdxCmdError> {
        self.regions
            .push((r.source_addr, r.gpa, r.nr_pages, measure));
        // tdx_vcpu_ioctl: before INIT_VM or after FINALIZE_VM -> -EINVAL.
        if self.state != TdState::Initialized {
            return Err(einval());
        }
        // tdx_vcpu_init_mem_region: the vCPU must be initialised.
        match self.vcpus.first() {
            None => return Err(err(libc::ENODEV)),
            Some(false) => return Err(einval()),
            Some(true) => {}
        }
        // tdx_vcpu_init_mem_region: PAGE_ALIGNED(source_addr), PAGE_ALIGNED(gpa),
        // nr_pages != 0, no wrap, and the whole range private (below the shared bit).
        let shared = 1u64 << (self.gpaw - 1);
        let end = r
            .nr_pages
            .checked_mul(PAGE)
            .and_then(|l| r.gpa.checked_add(l));
        let Some(end) = end.filter(|&e| e > r.gpa) else {
            return Err(einval());
        };
        if !page_aligned(r.source_addr)
            || !page_aligned(r.gpa)
            || r.nr_pages == 0
            || r.gpa >= shared
            || end > shared
        {
            return Err(einval());
        }
        let mut done = 0;
        while r.nr_pages > 0 {
            // A signal between pages: -EINTR with the region updated to the rest.
            if done == self.chunk {
                return Err(err(libc::EINTR));
            }
            // kvm_gmem_populate (one page per call from tdx_vcpu_init_mem_region,
            // whose error is returned as is): the GFN's memslot must be
            // guest_memfd-backed and the GFN PRIVATE (`kvm_range_has_memory_attributes`)
            // -> -EINVAL; a folio already prepared (the page was added before) ->
            // -EEXIST, before the TDX module is reached (hw_error 0).
            if slot_of(&self.memory, r.gpa).is_none() || !self.attrs.is_private(r.gpa) {
                return Err(einval());
            }
            if self.private.contains_key(&r.gpa) {
                return Err(err(libc::EEXIST));
            }
            // tdx_gmem_post_populate: get_user_pages_fast of the source; an address
            // that is not mapped is -EFAULT (the fake reads it as the kernel does).
            let bytes = copy_from_user(r.source_addr, PAGE as usize).map_err(err)?;
            let mut page = Box::new([0u8; 4096]);
            page.copy_from_slice(&bytes);
            self.private.insert(r.gpa, page);
            if measure {
                self.measured.push(r.gpa);
            }
            r.source_addr += PAGE;
            r.gpa += PAGE;
            r.nr_pages -= 1;
            done += 1;
        }
        Ok(())
    }

    fn finalize(&mut self) -> Result<(), TdxCmdError> {
        // tdx_td_finalize: before INIT_VM or twice -> -EINVAL.
        if self.state != TdState::Initialized {
            return Err(einval());
        }
        if let Some(e) = self.fail_finalize {
            return Err(e);
        }
        self.state = TdState::Runnable;
        Ok(())
    }
}

impl TdxCommands for &mut FakeKvmTdx {
    fn issue(&mut self, req: TdxRequest<'_>) -> Result<(), TdxCmdError> {
        let name = req.name();
        let r = match req {
            TdxRequest::Capabilities(c) => self.capabilities(c),
            TdxRequest::InitVm(i) => self.init_vm(i),
            TdxRequest::InitVcpu { index, rcx } => self.init_vcpu(index, rcx),
            TdxRequest::InitMemRegion { region, measure } => self.init_mem_region(region, measure),
            TdxRequest::FinalizeVm => self.finalize(),
        };
        if r.is_ok() {
            self.log.push(name);
        }
        r
    }

    fn enable_apic_bus_cycles_ns(&mut self, ns: u64) -> Result<(), TdxCmdError> {
        // arch/x86/kvm/x86.c kvm_vm_ioctl_enable_cap(KVM_CAP_X86_APIC_BUS_CYCLES_NS):
        // non-zero and `(u64)U32_MAX * 128 * ns` must not overflow (tmict_to_ns)
        // -> -EINVAL; then `!irqchip_in_kernel(kvm)` (neither split nor full)
        // -> -ENXIO; vCPUs already created -> -EINVAL.
        if ns == 0 || (u64::from(u32::MAX) * 128).checked_mul(ns).is_none() {
            return Err(einval());
        }
        if !self.split_irqchip && !self.full_irqchip {
            return Err(err(libc::ENXIO));
        }
        if !self.vcpus.is_empty() {
            return Err(einval());
        }
        self.apic_bus_cycle_ns = Some(ns);
        self.log.push("KVM_CAP_X86_APIC_BUS_CYCLES_NS");
        Ok(())
    }
}

/// `TDX_MAP_GPA_MAX_LEN`: KVM converts a MapGPA in chunks of at most 2 MiB.
pub(crate) const TDX_MAP_GPA_MAX_LEN: u64 = 2 << 20;

/// What the TD sees after a TDG.VP.VMCALL<MapGPA>: R10 status and R11.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapGpaResult {
    /// TDVMCALL status.
    pub status: u64,
    /// R11: the GPA to resume from (on RETRY or failure).
    pub r11: u64,
    /// KVM_EXIT_HYPERCALL exits to the VMM.
    pub exits: usize,
}

/// The TD as KVM's MapGPA handling sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapGpaVm {
    /// GPAW (48 or 52): the shared bit is `1 << (gpaw - 1)`.
    pub gpaw: u32,
    /// The guest's MAXPHYADDR (vCPU CPUID.0x80000008:EAX[7:0], `vcpu->arch.maxphyaddr`),
    /// which `kvm_vcpu_is_legal_gpa` checks against.
    pub maxphyaddr: u32,
    /// Whether the VMM enabled KVM_CAP_EXIT_HYPERCALL for KVM_HC_MAP_GPA_RANGE
    /// (`user_exit_on_hypercall`).
    pub exit_on_map_gpa: bool,
}

/// TDG.VP.VMCALL<MapGPA> as KVM v6.16 handles it (tdx.c `tdx_map_gpa`,
/// `__tdx_map_gpa`, `tdx_complete_vmcall_map_gpa`): without user exits for
/// KVM_HC_MAP_GPA_RANGE -> SUBFUNC_UNSUPPORTED; operand checks (no wrap, GPAs legal
/// for the guest MAXPHYADDR, both ends on the same side of the shared bit ->
/// INVALID_OPERAND; unaligned -> ALIGN_ERROR), then one `KVM_EXIT_HYPERCALL(KVM_HC_MAP_GPA_RANGE)` per chunk of
/// at most 2 MiB with the shared bit stripped from `args[0]`, `args[1]` in 4 KiB
/// pages and `args[2]` ENCRYPTED or DECRYPTED (0). A non-zero `ret` from the VMM ends
/// it with INVALID_OPERAND and R11 = the failed chunk; an interrupt pending between
/// chunks ends it with RETRY and R11 = the next chunk (KVM's decision, never the
/// VMM's). `vmm` is the VMM's hypercall handler; `irq_after` the number of exits
/// after which an interrupt is pending.
pub(crate) fn kvm_tdx_map_gpa(
    gpa: u64,
    size: u64,
    vm: MapGpaVm,
    irq_after: Option<usize>,
    mut vmm: impl FnMut(&[u64; 6]) -> u64,
) -> MapGpaResult {
    use crate::tee::services::{
        TDVMCALL_ALIGN_ERROR, TDVMCALL_INVALID_OPERAND, TDVMCALL_RETRY,
        TDVMCALL_SUBFUNC_UNSUPPORTED, TDVMCALL_SUCCESS,
    };
    use crate::vstate::private::KVM_MAP_GPA_RANGE_ENCRYPTED;
    let shared = 1u64 << (vm.gpaw - 1);
    // kvm_vcpu_is_legal_gpa: below 1 << vcpu->arch.maxphyaddr (the guest's CPUID
    // MAXPHYADDR, not GPAW).
    let legal = |g: u64| vm.maxphyaddr >= 64 || g < (1u64 << vm.maxphyaddr);
    let private = |g: u64| g & shared == 0;
    let fail = |status, r11, exits| MapGpaResult { status, r11, exits };
    // tdx_map_gpa: `!user_exit_on_hypercall(kvm, KVM_HC_MAP_GPA_RANGE)` ->
    // TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED (R11 = the GPA).
    if !vm.exit_on_map_gpa {
        return fail(TDVMCALL_SUBFUNC_UNSUPPORTED, gpa, 0);
    }
    let end = gpa.wrapping_add(size);
    if end <= gpa || !legal(gpa) || !legal(end - 1) || private(gpa) != private(end - 1) {
        return fail(TDVMCALL_INVALID_OPERAND, gpa, 0);
    }
    if !page_aligned(gpa) || !page_aligned(size) {
        return fail(TDVMCALL_ALIGN_ERROR, gpa, 0);
    }
    let mut next = gpa;
    let mut exits = 0;
    loop {
        let len = (end - next).min(TDX_MAP_GPA_MAX_LEN);
        let attrs = if private(next) {
            KVM_MAP_GPA_RANGE_ENCRYPTED
        } else {
            0
        };
        let args = [next & !shared, len / PAGE, attrs, 0, 0, 0];
        exits += 1;
        if vmm(&args) != 0 {
            return fail(TDVMCALL_INVALID_OPERAND, next, exits);
        }
        next += TDX_MAP_GPA_MAX_LEN;
        if next >= end {
            return fail(TDVMCALL_SUCCESS, 0, exits);
        }
        if irq_after == Some(exits) {
            return fail(TDVMCALL_RETRY, next, exits);
        }
    }
}
