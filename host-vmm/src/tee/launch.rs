//! Launching real SEV-SNP and TDX guests: the glue between the launch sequences
//! ([`super::snp`], [`super::tdx`]), private memory ([`crate::vstate::private`]) and
//! the vCPUs, in the order upstream KVM requires.
//!
//! SEV-SNP (Linux >= 6.11), as QEMU does it:
//! 1. `KVM_CREATE_VM(KVM_X86_SNP_VM)`, in-kernel irqchip, guest_memfd memslots, all
//!    memory private ([`crate::vstate::vm::Vm::new_confidential`]);
//! 2. `KVM_SEV_INIT2` (VMSA features) and `SNP_LAUNCH_START` (policy) — before any
//!    vCPU exists ([`snp_begin`]);
//! 3. vCPUs are created; each gets the register state of its VMSA in the launch plan
//!    (KVM builds the VMSA from it at LAUNCH_FINISH);
//! 4. the CPUID page is filled from the vCPUs' CPUID in the SNP CPUID-table format;
//!    `SNP_LAUNCH_UPDATE` for every non-VMSA page of the plan, copying from the shared
//!    view where the VMM placed the contents; `SNP_LAUNCH_FINISH` with the ID block,
//!    ID auth and host data ([`snp_complete`]).
//!
//! TDX (Linux >= 6.16):
//! 1. `KVM_CREATE_VM(KVM_X86_TDX_VM)`, split irqchip, guest_memfd memslots, private;
//! 2. `KVM_TDX_CAPABILITIES`, `KVM_TDX_INIT_VM` (attributes and XFAM checked against
//!    the module, CPUID = host-supported values masked to what the module lets the
//!    VMM configure) before vCPUs ([`tdx_begin`]);
//! 3. vCPUs are created; `KVM_TDX_INIT_VCPU` with the TD HOB address;
//!    `KVM_TDX_INIT_MEM_REGION` for each TDVF section of the plan, with a TD HOB built
//!    here in the (unmeasured) TD_HOB section; `KVM_TDX_FINALIZE_VM` ([`tdx_complete`]).
//!
//! None of this can run on a host without SNP/TDX; the sequences are tested against
//! KVM-faithful fakes (`tee::fake`, rules in host-vmm/README.md), and the pure parts
//! (CPUID table and INIT_VM CPUID, TD HOB, register mapping) are unit-tested here.

use kvm_bindings::{kvm_cpuid_entry2, kvm_segment, CpuId};
use measured_boot::firmware::tdx::{TdvfSection, TdvfSectionType};
use measured_boot::snp::vmsa::{Segment, VmsaRegisters};
use measured_boot::snp::{PageType, SnpLaunchPlan};
use measured_boot::tdx::TdxLaunchPlan;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::snp::{SnpLaunchError, SnpLauncher, Started};
use super::tdx::{TdConfig, TdxLaunchError, TdxLauncher, VmInitialized};
use crate::vstate::sev::KvmSev;
use crate::vstate::tdx::{KvmTdx, KvmTdxCapabilities, TdxCpuid, TDX_CPUID_ENTRIES};
use crate::vstate::vm::Vm;

/// An SNP ID block (96 bytes) and its ID authentication structure (4096 bytes).
pub type IdBlock = (Box<[u8; 96]>, Box<[u8; 4096]>);

/// What a real SEV-SNP launch needs besides the VM.
#[derive(Debug)]
pub struct SnpLaunch {
    /// The plan `cvm measure snp` folds into the expected measurement.
    pub plan: SnpLaunchPlan,
    /// Guest policy.
    pub policy: u64,
    /// HOST_DATA.
    pub host_data: [u8; 32],
    /// ID block and ID authentication structure.
    pub id: Option<IdBlock>,
    /// `/dev/sev`, opened before the VMM entered its jail (authorises the commands).
    pub sev: std::fs::File,
    /// The certificate table served to extended-report requests (Linux 7.0's
    /// `KVM_EXIT_SNP_REQ_CERTS`); without one, KVM answers with an empty table.
    pub certs: Option<super::services::CertTable>,
}

/// What a real TDX launch needs besides the VM.
#[derive(Debug)]
pub struct TdxLaunch {
    /// The plan `cvm measure tdx` folds into the expected MRTD.
    pub plan: TdxLaunchPlan,
    /// TD attributes, XFAM and the owner-controlled measurement registers.
    pub config: TdConfig,
    /// Guest RAM size (for the TD HOB's memory map).
    pub memory: u64,
    /// The Quote Generation Service's Unix socket, for the guest's GetQuote calls
    /// (without one, GetQuote answers SERVICE_UNAVAILABLE).
    pub qgs: Option<std::path::PathBuf>,
}

/// Why a real launch failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchStepError {
    /// An SNP command failed.
    #[error(transparent)]
    Snp(#[from] SnpLaunchError),
    /// A TDX command failed.
    #[error(transparent)]
    Tdx(#[from] TdxLaunchError),
    /// The SEV firmware corrected the CPUID page: the vCPUs' CPUID is not what this
    /// CPU can promise to the guest.
    #[error("the SEV firmware rejected the CPUID page; leaves it corrected: {0}")]
    CpuidRejected(String),
    /// A vCPU's launch register state could not be set.
    #[error("cannot set vCPU {index}'s launch state: {what} failed: {source}")]
    Registers {
        /// vCPU.
        index: u32,
        /// The ioctl.
        what: &'static str,
        /// Error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The plan has no register state for a vCPU.
    #[error("the launch plan has no VMSA for vCPU {0}")]
    NoVmsa(u32),
    /// Guest memory could not be written.
    #[error("cannot write {what} into guest memory at {gpa:#x}")]
    Memory {
        /// What.
        what: &'static str,
        /// Where.
        gpa: u64,
    },
    /// The firmware's TDVF metadata has no TD_HOB section.
    #[error("the firmware's TDVF metadata has no TD_HOB section")]
    NoTdHob,
    /// More CPUID leaves than the SNP CPUID page holds.
    #[error("the vCPUs have {count} CPUID leaves; the SNP CPUID page holds at most 64")]
    TooManyCpuidLeaves {
        /// Leaves.
        count: usize,
    },
    /// The TD HOB does not fit its section.
    #[error("the TD HOB needs {need} bytes; the TD_HOB section has {have}")]
    HobTooLarge {
        /// Needed.
        need: usize,
        /// Available.
        have: u64,
    },
}

// ---------------------------------------------------------------------------------
// SEV-SNP

/// `KVM_SEV_INIT2` and `SNP_LAUNCH_START`; must run before any vCPU is created.
pub fn snp_begin<'a>(
    vm: &'a Vm,
    l: &SnpLaunch,
) -> Result<SnpLauncher<Started, KvmSev<'a>>, LaunchStepError> {
    use std::os::fd::AsRawFd;
    let mut started = SnpLauncher::new(KvmSev::new(vm.fd(), l.sev.as_raw_fd()))
        .init(l.plan.guest_features())?
        .start(l.policy)?;
    if l.certs.is_some() {
        started.enable_req_certs()?;
    }
    Ok(started)
}

/// Sets the vCPUs' launch state, fills the CPUID page, issues every launch update and
/// LAUNCH_FINISH. Returns the number of pages measured or placed.
pub fn snp_complete(
    mut launcher: SnpLauncher<Started, KvmSev<'_>>,
    vm: &Vm,
    vcpus: &[&kvm_ioctls::VcpuFd],
    cpuid: &CpuId,
    l: &SnpLaunch,
) -> Result<u64, LaunchStepError> {
    for (i, fd) in vcpus.iter().enumerate() {
        let i = i as u32;
        let regs = l.plan.vcpu_registers(i).ok_or(LaunchStepError::NoVmsa(i))?;
        set_vmsa_registers(fd, i, regs)?;
    }
    let table = snp_cpuid_table(cpuid.as_slice())?;
    let cpuid_pages: Vec<u64> = l
        .plan
        .updates()
        .filter(|u| u.page_type == PageType::Cpuid)
        .map(|u| u.gpa)
        .collect();
    for &gpa in &cpuid_pages {
        vm.memory()
            .write_slice(&table, GuestAddress(gpa))
            .map_err(|_| LaunchStepError::Memory {
                what: "the SNP CPUID page",
                gpa,
            })?;
    }
    let mem = vm.memory();
    if let Err(e) = launcher.apply_plan(&l.plan, |gpa, len| host_range(mem, gpa, len)) {
        // On a CPUID page it rejects, the firmware writes back the values it accepts.
        for &gpa in &cpuid_pages {
            let mut back = vec![0u8; table.len()];
            if mem.read_slice(&mut back, GuestAddress(gpa)).is_ok() && back != table {
                return Err(LaunchStepError::CpuidRejected(cpuid_diff(&table, &back)));
            }
        }
        return Err(e.into());
    }
    let pages = launcher.pages_updated();
    let id = l.id.as_ref().map(|(b, a)| (&**b, &**a));
    launcher.finish(l.host_data, id)?;
    Ok(pages)
}

/// The host address of `gpa..gpa+len`, if one region of `mem` holds all of it.
fn host_range(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> Option<u64> {
    let last = gpa.checked_add(len.checked_sub(1)?)?;
    let a = mem.get_host_address(GuestAddress(gpa)).ok()?;
    let b = mem.get_host_address(GuestAddress(last)).ok()?;
    (b as u64 - a as u64 == len - 1).then_some(a as u64)
}

/// `SNP_CPUID_FUNCTION_MAXCOUNT`.
pub const SNP_CPUID_MAX: usize = 64;

/// The XSAVE area size for XCR0 = 1 (x87): the 512-byte legacy area and the 64-byte
/// header.
pub const XSAVE_SIZE_X87: u32 = 0x240;

/// The SNP CPUID table (`struct snp_cpuid_info` of the SEV-SNP firmware ABI): count,
/// 12 reserved bytes, then up to 64 entries of {eax_in, ecx_in, xcr0_in, xss_in, eax,
/// ebx, ecx, edx, reserved} (48 bytes each).
///
/// Leaf 0xD sub-leaves 0 and 1 are given for XCR0_IN = 1 (x87), the state the VMSA
/// starts in, with EBX = [`XSAVE_SIZE_X87`]: the SEV firmware requires EBX to be
/// exactly the XSAVE size implied by XCR0_IN (AMD's SEV firmware `cpuid_lookup.c`;
/// KVM reports the size for every supported feature, e.g. 0x988, which the firmware
/// corrects and refuses), and guests recompute it for their XCR0 from the
/// per-feature sub-leaves (Linux `snp_cpuid_calc_xsave_size`). QEMU
/// (target/i386/sev.c) does the same.
///
/// More than 64 leaves is refused ([`LaunchStepError::TooManyCpuidLeaves`]), as
/// QEMU refuses: silently dropping leaves would give the guest a CPUID page missing
/// leaves the vCPUs have.
pub fn snp_cpuid_table(entries: &[kvm_cpuid_entry2]) -> Result<Vec<u8>, LaunchStepError> {
    if entries.len() > SNP_CPUID_MAX {
        return Err(LaunchStepError::TooManyCpuidLeaves {
            count: entries.len(),
        });
    }
    let mut t = vec![0u8; 16 + SNP_CPUID_MAX * 48];
    t[0..4].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    for (i, e) in entries.iter().enumerate() {
        let o = 16 + i * 48;
        let xsave_leaf = e.function == 0xD && e.index <= 1;
        let xcr0_in: u64 = if xsave_leaf { 1 } else { 0 };
        let ebx = if xsave_leaf { XSAVE_SIZE_X87 } else { e.ebx };
        t[o..o + 4].copy_from_slice(&e.function.to_le_bytes());
        t[o + 4..o + 8].copy_from_slice(&e.index.to_le_bytes());
        t[o + 8..o + 16].copy_from_slice(&xcr0_in.to_le_bytes());
        // xss_in stays 0.
        for (k, v) in [e.eax, ebx, e.ecx, e.edx].into_iter().enumerate() {
            t[o + 24 + 4 * k..o + 28 + 4 * k].copy_from_slice(&v.to_le_bytes());
        }
    }
    Ok(t)
}

fn cpuid_diff(ours: &[u8], theirs: &[u8]) -> String {
    let n = u32::from_le_bytes([ours[0], ours[1], ours[2], ours[3]]) as usize;
    let mut out = Vec::new();
    for i in 0..n.min(SNP_CPUID_MAX) {
        let o = 16 + i * 48;
        if ours[o..o + 48] != theirs[o..o + 48] {
            let w = |b: &[u8], k: usize| {
                u32::from_le_bytes([b[o + k], b[o + k + 1], b[o + k + 2], b[o + k + 3]])
            };
            out.push(format!(
                "leaf {:#x}.{:#x}: ours {:08x} {:08x} {:08x} {:08x}, firmware {:08x} {:08x} {:08x} {:08x}",
                w(ours, 0), w(ours, 4),
                w(ours, 24), w(ours, 28), w(ours, 32), w(ours, 36),
                w(theirs, 24), w(theirs, 28), w(theirs, 32), w(theirs, 36)
            ));
        }
    }
    if out.is_empty() {
        "(only the header changed)".into()
    } else {
        out.join("; ")
    }
}

/// A VMCB-format segment (packed attributes) as KVM's `kvm_segment`.
pub fn kvm_segment_from_vmcb(s: &Segment) -> kvm_segment {
    let a = s.attrib;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (a & 0xf) as u8,
        s: ((a >> 4) & 1) as u8,
        dpl: ((a >> 5) & 3) as u8,
        present: ((a >> 7) & 1) as u8,
        avl: ((a >> 8) & 1) as u8,
        l: ((a >> 9) & 1) as u8,
        db: ((a >> 10) & 1) as u8,
        g: ((a >> 11) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// `MSR_IA32_CR_PAT`.
const MSR_PAT: u32 = 0x277;

/// Puts vCPU `index` in the state its VMSA in the plan describes, so the VMSA KVM
/// builds at LAUNCH_FINISH is the one `cvm measure` folded into the digest.
fn set_vmsa_registers(
    fd: &kvm_ioctls::VcpuFd,
    index: u32,
    r: &VmsaRegisters,
) -> Result<(), LaunchStepError> {
    let err = |what| {
        move |source| LaunchStepError::Registers {
            index,
            what,
            source,
        }
    };
    let mut sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    sregs.cs = kvm_segment_from_vmcb(&r.cs);
    sregs.ds = kvm_segment_from_vmcb(&r.ds);
    sregs.es = kvm_segment_from_vmcb(&r.es);
    sregs.fs = kvm_segment_from_vmcb(&r.fs);
    sregs.gs = kvm_segment_from_vmcb(&r.gs);
    sregs.ss = kvm_segment_from_vmcb(&r.ss);
    sregs.tr = kvm_segment_from_vmcb(&r.tr);
    sregs.ldt = kvm_segment_from_vmcb(&r.ldtr);
    sregs.gdt.base = r.gdtr.base;
    sregs.gdt.limit = r.gdtr.limit as u16;
    sregs.idt.base = r.idtr.base;
    sregs.idt.limit = r.idtr.limit as u16;
    sregs.cr0 = r.cr0;
    sregs.cr4 = r.cr4;
    sregs.efer = r.efer;
    fd.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
    let mut regs = fd.get_regs().map_err(err("KVM_GET_REGS"))?;
    regs.rip = r.rip;
    regs.rdx = r.rdx;
    regs.rflags = r.rflags;
    fd.set_regs(&regs).map_err(err("KVM_SET_REGS"))?;
    let mut dbg = fd.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?;
    dbg.dr6 = r.dr6;
    dbg.dr7 = r.dr7;
    fd.set_debug_regs(&dbg).map_err(err("KVM_SET_DEBUGREGS"))?;
    let mut fpu = fd.get_fpu().map_err(err("KVM_GET_FPU"))?;
    fpu.fcw = r.x87_fcw;
    fpu.mxcsr = r.mxcsr;
    fd.set_fpu(&fpu).map_err(err("KVM_SET_FPU"))?;
    let mut xcrs = kvm_bindings::kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = r.xcr0;
    fd.set_xcrs(&xcrs).map_err(err("KVM_SET_XCRS"))?;
    let msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: MSR_PAT,
        data: r.g_pat,
        ..Default::default()
    }])
    .map_err(|_| LaunchStepError::Registers {
        index,
        what: "KVM_SET_MSRS",
        source: kvm_ioctls::Error::new(libc::ENOMEM),
    })?;
    match fd.set_msrs(&msrs) {
        Ok(1) => Ok(()),
        Ok(_) => Err(LaunchStepError::Registers {
            index,
            what: "KVM_SET_MSRS(IA32_PAT)",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        }),
        Err(e) => Err(err("KVM_SET_MSRS")(e)),
    }
}

// ---------------------------------------------------------------------------------
// TDX

/// `KVM_TDX_CAPABILITIES` and `KVM_TDX_INIT_VM`; must run before any vCPU is created.
/// `supported` is KVM_GET_SUPPORTED_CPUID.
pub fn tdx_begin<'a>(
    vm: &'a Vm,
    supported: &CpuId,
    l: &TdxLaunch,
) -> Result<TdxLauncher<VmInitialized, KvmTdx<'a>>, LaunchStepError> {
    let probed = TdxLauncher::new(KvmTdx::new(vm.fd(), Vec::new())).capabilities()?;
    Ok(probed.init_vm(&l.config, supported.as_slice())?)
}

/// The CPUID given to INIT_VM: for every leaf the TDX module lets the VMM configure,
/// the host-supported value restricted to the configurable bits, with KVM's
/// significant-index flag on the indexed leaves and GPAW [`TD_GPAW`].
pub fn td_cpuid(caps: &KvmTdxCapabilities, supported: &[kvm_cpuid_entry2]) -> TdxCpuid {
    let mut out = TdxCpuid::default();
    let n = (caps.cpuid.nent as usize).min(TDX_CPUID_ENTRIES);
    for mask in &caps.cpuid.entries[..n] {
        let Some(host) = find_cpuid_entry2(supported, mask.function, mask.index) else {
            continue;
        };
        let i = out.nent as usize;
        out.entries[i] = kvm_cpuid_entry2 {
            function: mask.function,
            index: mask.index,
            // Our own flags, as QEMU (target/i386/kvm/tdx.c) takes them from its
            // CPUID entries: KVM_TDX_CAPABILITIES never sets SIGNIFCANT_INDEX, and
            // without it kvm_find_cpuid_entry2 would answer 0xD.1 / 0x7.1 with the
            // subleaf-0 entry at INIT_VM (setup_tdparams_cpuids).
            flags: if cpuid_function_is_indexed(mask.function) {
                KVM_CPUID_FLAG_SIGNIFICANT_INDEX
            } else {
                0
            },
            eax: host.eax & mask.eax,
            ebx: host.ebx & mask.ebx,
            ecx: host.ecx & mask.ecx,
            edx: host.edx & mask.edx,
            ..Default::default()
        };
        if mask.function == 0x8000_0008 {
            // CPUID.0x80000008:EAX[23:16] is KVM's GPAW interface: INIT_VM accepts
            // only 48 or 52 (tdx.c setup_tdparams_eptp_controls, -EINVAL otherwise),
            // and the host's value is not one of them in general.
            let e = &mut out.entries[i];
            e.eax = (e.eax & !0x00ff_0000) | (TD_GPAW << 16);
        }
        out.nent += 1;
    }
    out
}

/// The TD's guest physical address width: 48 bits (4-level EPT, supported on every
/// TDX platform; 52 needs 5-level EPT). The shared bit is bit 47.
pub const TD_GPAW: u32 = 48;

/// Whether KVM treats `function`'s subleaf index as significant
/// (`cpuid_function_is_indexed`, arch/x86/include/asm/cpuid/api.h, Linux v6.16).
pub fn cpuid_function_is_indexed(function: u32) -> bool {
    matches!(
        function,
        4 | 7
            | 0xb
            | 0xd
            | 0xf
            | 0x10
            | 0x12
            | 0x14
            | 0x17
            | 0x18
            | 0x1d
            | 0x1e
            | 0x1f
            | 0x24
            | 0x8000_001d
    )
}

/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX` (sic, the uAPI's spelling).
pub const KVM_CPUID_FLAG_SIGNIFICANT_INDEX: u32 = kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX;

/// The CPUID entry KVM uses for (`function`, `index`), as
/// `kvm_find_cpuid_entry2` (arch/x86/kvm/cpuid.c, Linux v6.16) finds it: the first
/// entry with that function whose index matches, where an entry WITHOUT
/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX` matches every index.
pub fn find_cpuid_entry2(
    entries: &[kvm_cpuid_entry2],
    function: u32,
    index: u32,
) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| {
        e.function == function
            && (e.index == index || e.flags & KVM_CPUID_FLAG_SIGNIFICANT_INDEX == 0)
    })
}

/// INIT_VCPU for each vCPU (RCX = the TD HOB), INIT_MEM_REGION for each section of the
/// plan (the TD_HOB section as [`tdx_pages`] fills it), FINALIZE_VM. `descriptor` is
/// the boot-data descriptor the VMM staged. Returns (pages added, pages measured).
pub fn tdx_complete<'a>(
    mut launcher: TdxLauncher<VmInitialized, KvmTdx<'a>>,
    vcpus: Vec<&'a kvm_ioctls::VcpuFd>,
    l: &TdxLaunch,
    descriptor: &[u8; crate::boot::DESCRIPTOR_SIZE],
) -> Result<(u64, u64), LaunchStepError> {
    let pages = tdx_pages(l, descriptor)?;
    let n = vcpus.len() as u32;
    launcher.cmds_mut().set_vcpus(vcpus);
    let mut launcher = launcher.init_vcpus(n, pages.hob)?;
    for (gpa, data, measure) in &pages.regions {
        launcher.add_region(*gpa, data, *measure)?;
    }
    let pages = launcher.pages_added();
    launcher.finalize()?;
    Ok(pages)
}

/// What a TDX launch adds: the TD HOB address INIT_VCPU passes in RCX, and the
/// INIT_MEM_REGION regions in order as (GPA, contents, measured).
#[derive(Debug)]
pub struct TdxPages<'p> {
    /// The TD HOB's GPA.
    pub hob: u64,
    /// The regions.
    pub regions: Vec<(u64, std::borrow::Cow<'p, [u8]>, bool)>,
}

/// The pages of `l`'s plan, with the TD_HOB section filled by the VMM: the boot-data
/// descriptor at its start (where the project firmware reads it, GPA 0x8000: a TD sees
/// only private memory, so the descriptor must be initial private content — bug 3),
/// then the TD HOB list, whose address INIT_VCPU passes in RCX (TDVF takes the HOB from
/// RCX, not from the section start). The section is unmeasured: neither changes MRTD.
pub fn tdx_pages<'p>(
    l: &'p TdxLaunch,
    descriptor: &[u8; crate::boot::DESCRIPTOR_SIZE],
) -> Result<TdxPages<'p>, LaunchStepError> {
    let sections = l.plan.sections();
    let hob_section = sections
        .iter()
        .find(|s| s.section_type == TdvfSectionType::TdHob)
        .ok_or(LaunchStepError::NoTdHob)?;
    let skip = descriptor.len() as u64;
    let list_section = TdvfSection {
        gpa: hob_section.gpa + skip,
        mem_size: hob_section.mem_size.saturating_sub(skip),
        ..*hob_section
    };
    let mut content = descriptor.to_vec();
    content.extend_from_slice(&td_hob(sections, &list_section, l.memory)?);
    let regions = l
        .plan
        .regions()
        .map(|r| {
            let data = if r.gpa == hob_section.gpa {
                std::borrow::Cow::Owned(content.clone())
            } else {
                std::borrow::Cow::Borrowed(r.data)
            };
            (r.gpa, data, r.measure)
        })
        .collect();
    Ok(TdxPages {
        hob: list_section.gpa,
        regions,
    })
}

const HOB_HANDOFF: u16 = 0x0001;
const HOB_RESOURCE: u16 = 0x0003;
const HOB_END: u16 = 0xFFFF;
const RESOURCE_SYSTEM_MEMORY: u32 = 0;
const RESOURCE_MEMORY_UNACCEPTED: u32 = 7;
/// PRESENT | INITIALIZED | TESTED.
const RESOURCE_ATTRS: u32 = 0x7;

/// The TD HOB list TDVF reads (PI spec HOBs, the layout QEMU's tdvf-hob.c writes): a
/// PHIT handoff header, one resource descriptor per RAM range — `SYSTEM_MEMORY` for
/// what the TDVF sections occupy (added before the TD runs) and `MEMORY_UNACCEPTED`
/// for the rest, which the firmware accepts — and the end marker. Padded to the
/// section's size. The section is not measured, so the HOB does not change the MRTD.
pub fn td_hob(
    sections: &[TdvfSection],
    hob: &TdvfSection,
    memory: u64,
) -> Result<Vec<u8>, LaunchStepError> {
    use crate::vstate::memory::{FOUR_GIB, MMIO_HOLE_START};
    // RAM as the VMM lays it out.
    let low = memory.min(MMIO_HOLE_START);
    let mut ram = vec![(0, low)];
    if memory > low {
        ram.push((FOUR_GIB, FOUR_GIB + (memory - low)));
    }
    // Ranges added by the launch (inside RAM), sorted.
    let mut added: Vec<(u64, u64)> = sections
        .iter()
        .filter(|s| {
            !s.page_aug()
                && s.section_type != TdvfSectionType::Bfv
                && s.section_type != TdvfSectionType::Cfv
        })
        .map(|s| (s.gpa, s.gpa + s.mem_size))
        .filter(|&(a, _)| ram.iter().any(|&(s, e)| s <= a && a < e))
        .collect();
    added.sort();
    // Coalesce adjacent or overlapping sections into one range.
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (a, b) in added {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let added = merged;
    let mut res = Vec::new();
    for &(start, end) in &ram {
        let mut at = start;
        for &(a, b) in added.iter().filter(|&&(a, _)| a >= start && a < end) {
            if a > at {
                res.push((RESOURCE_MEMORY_UNACCEPTED, at, a - at));
            }
            let b = b.min(end);
            if b > a.max(at) {
                res.push((RESOURCE_SYSTEM_MEMORY, a.max(at), b - a.max(at)));
            }
            at = at.max(b);
        }
        if at < end {
            res.push((RESOURCE_MEMORY_UNACCEPTED, at, end - at));
        }
    }
    let need = 56 + res.len() * 48 + 8;
    if need as u64 > hob.mem_size {
        return Err(LaunchStepError::HobTooLarge {
            need,
            have: hob.mem_size,
        });
    }
    let mut b = Vec::with_capacity(hob.mem_size as usize);
    let header = |b: &mut Vec<u8>, ty: u16, len: u16| {
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
    };
    header(&mut b, HOB_HANDOFF, 56);
    b.extend_from_slice(&9u32.to_le_bytes()); // EFI_HOB_HANDOFF_TABLE_VERSION
    b.extend_from_slice(&0u32.to_le_bytes()); // BOOT_WITH_FULL_CONFIGURATION
    for _ in 0..4 {
        b.extend_from_slice(&0u64.to_le_bytes()); // memory top/bottom, free top/bottom
    }
    let end_of_list = hob.gpa + (need - 8) as u64;
    b.extend_from_slice(&end_of_list.to_le_bytes());
    for (ty, start, len) in res {
        header(&mut b, HOB_RESOURCE, 48);
        b.extend_from_slice(&[0; 16]); // owner GUID
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&RESOURCE_ATTRS.to_le_bytes());
        b.extend_from_slice(&start.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
    }
    header(&mut b, HOB_END, 8);
    b.resize(hob.mem_size as usize, 0);
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(ty: TdvfSectionType, gpa: u64, size: u64) -> TdvfSection {
        TdvfSection {
            data_offset: 0,
            raw_size: 0,
            gpa,
            mem_size: size,
            section_type: ty,
            attributes: 0,
        }
    }

    #[test]
    fn td_hob_describes_added_and_unaccepted_ram() {
        let secs = vec![
            section(TdvfSectionType::Bfv, 0xFFC0_0000, 0x40_0000),
            section(TdvfSectionType::TdHob, 0x80_9000, 0x2000),
            section(TdvfSectionType::TempMem, 0x80_0000, 0x9000),
        ];
        let hob = td_hob(&secs, &secs[1], 5 << 30).unwrap();
        assert_eq!(hob.len(), 0x2000);
        let u16_at = |o: usize| u16::from_le_bytes([hob[o], hob[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(hob[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(hob[o..o + 8].try_into().unwrap());
        assert_eq!((u16_at(0), u16_at(2)), (HOB_HANDOFF, 56));
        // Resources: [0, 8M) unaccepted, [8M, 8M+0xB000) added, rest of low RAM
        // (3 GiB) unaccepted, 2 GiB above 4 GiB unaccepted.
        let want = [
            (RESOURCE_MEMORY_UNACCEPTED, 0, 0x80_0000),
            (RESOURCE_SYSTEM_MEMORY, 0x80_0000, 0xB000),
            (RESOURCE_MEMORY_UNACCEPTED, 0x80_B000, (3 << 30) - 0x80_B000),
            (RESOURCE_MEMORY_UNACCEPTED, 1 << 32, 2 << 30),
        ];
        for (i, (ty, start, len)) in want.into_iter().enumerate() {
            let o = 56 + i * 48;
            assert_eq!((u16_at(o), u16_at(o + 2)), (HOB_RESOURCE, 48), "entry {i}");
            assert_eq!(u32_at(o + 24), ty, "entry {i}");
            assert_eq!(u32_at(o + 28), RESOURCE_ATTRS);
            assert_eq!((u64_at(o + 32), u64_at(o + 40)), (start, len), "entry {i}");
        }
        let end = 56 + 4 * 48;
        assert_eq!((u16_at(end), u16_at(end + 2)), (HOB_END, 8));
        // The PHIT's EfiEndOfHobList points at the end marker.
        assert_eq!(u64_at(48), 0x80_9000 + end as u64);
        // Too small a section is refused rather than truncated.
        let tiny = section(TdvfSectionType::TdHob, 0x80_9000, 64);
        assert!(matches!(
            td_hob(&secs, &tiny, 1 << 30),
            Err(LaunchStepError::HobTooLarge { .. })
        ));
    }

    /// Bug 3: a TD reads its boot-data descriptor at 0x8000 (the TD_HOB section) from
    /// private memory, so the descriptor must be part of what the launch adds there;
    /// the shared view the VMM staged it in is invisible to a TD.
    #[test]
    fn the_boot_data_descriptor_is_added_as_private_td_hob_content() {
        // The project firmware's TDVF layout: BFV, TempMem, TD_HOB at 0x8000, TempMem.
        let size = 0x10000u32;
        let fw = measured_boot::testing::tdx_image(
            size as usize,
            &[
                (0, size, (1 << 32) - u64::from(size), u64::from(size), 0, 1),
                (0, 0, 0x1000, 0x7000, 3, 0),
                (0, 0, 0x8000, 0x1000, 2, 0),
                (0, 0, 0x9000, 0x57000, 3, 0),
            ],
        );
        let plan =
            TdxLaunchPlan::new(measured_boot::FirmwareImage::parse(fw).unwrap(), None).unwrap();
        let l = TdxLaunch {
            plan,
            config: Default::default(),
            memory: 256 << 20,
            qgs: None,
        };
        let mut descriptor = [0u8; crate::boot::DESCRIPTOR_SIZE];
        descriptor[..8].copy_from_slice(&crate::boot::MAGIC);
        descriptor[0x40..0x48].copy_from_slice(&(256u64 << 20).to_le_bytes());
        let pages = tdx_pages(&l, &descriptor).unwrap();
        let (_, at_hob, measured) = pages
            .regions
            .iter()
            .find(|(gpa, _, _)| *gpa == crate::boot::DESCRIPTOR_GPA)
            .expect("the launch adds the TD_HOB page at 0x8000");
        assert!(!measured, "the TD_HOB section is not measured");
        assert_eq!(
            &at_hob[..descriptor.len()],
            &descriptor[..],
            "the descriptor is private initial content at 0x8000"
        );
        // The HOB list follows it, and RCX points there.
        let hob_at = (pages.hob - crate::boot::DESCRIPTOR_GPA) as usize;
        assert!(hob_at >= descriptor.len());
        assert_eq!(
            u16::from_le_bytes([at_hob[hob_at], at_hob[hob_at + 1]]),
            HOB_HANDOFF
        );
    }

    #[test]
    fn snp_cpuid_table_layout() {
        let e = |function, index, v| kvm_cpuid_entry2 {
            function,
            index,
            eax: v,
            ebx: v + 1,
            ecx: v + 2,
            edx: v + 3,
            ..Default::default()
        };
        let t = snp_cpuid_table(&[e(0, 0, 0x10), e(0xD, 1, 0x20), e(0xD, 2, 0x30)]).unwrap();
        assert_eq!(t.len(), 16 + 64 * 48);
        assert!(t.len() <= 4096);
        assert_eq!(u32::from_le_bytes(t[0..4].try_into().unwrap()), 3);
        let entry = |i: usize| &t[16 + i * 48..16 + (i + 1) * 48];
        let x = entry(1);
        assert_eq!(u32::from_le_bytes(x[0..4].try_into().unwrap()), 0xD);
        assert_eq!(u32::from_le_bytes(x[4..8].try_into().unwrap()), 1);
        assert_eq!(
            u64::from_le_bytes(x[8..16].try_into().unwrap()),
            1,
            "xcr0_in"
        );
        assert_eq!(u32::from_le_bytes(x[24..28].try_into().unwrap()), 0x20);
        assert_eq!(
            u32::from_le_bytes(x[28..32].try_into().unwrap()),
            XSAVE_SIZE_X87,
            "0xD.1 EBX for XCR0 = 1"
        );
        // Other leaves keep KVM's EBX (0xD.2's 0x31).
        assert_eq!(
            u32::from_le_bytes(entry(2)[28..32].try_into().unwrap()),
            0x31
        );
        assert_eq!(u32::from_le_bytes(x[36..40].try_into().unwrap()), 0x23);
        assert_eq!(u64::from_le_bytes(entry(2)[8..16].try_into().unwrap()), 0);
        // More than 64 leaves: refused, not truncated; 64 fit.
        let many: Vec<_> = (0..65).map(|i| e(i, 0, i)).collect();
        assert!(matches!(
            snp_cpuid_table(&many),
            Err(LaunchStepError::TooManyCpuidLeaves { count: 65 })
        ));
        assert_eq!(
            u32::from_le_bytes(
                snp_cpuid_table(&many[..64]).unwrap()[0..4]
                    .try_into()
                    .unwrap()
            ),
            64
        );
        // A corrected leaf is reported by number.
        let mut back = t.clone();
        back[16 + 48 + 24] = 0x99;
        assert!(
            cpuid_diff(&t, &back).contains("leaf 0xd.0x1"),
            "{}",
            cpuid_diff(&t, &back)
        );
    }

    #[test]
    fn vmcb_segments_unpack_into_kvm_segments() {
        // Real-mode CS at reset: attributes 0x9b = present, S, type 0xb (code, accessed).
        let cs = kvm_segment_from_vmcb(&Segment {
            selector: 0xf000,
            attrib: 0x9b,
            limit: 0xffff,
            base: 0xffff_0000,
        });
        assert_eq!((cs.type_, cs.s, cs.dpl, cs.present), (0xb, 1, 0, 1));
        assert_eq!((cs.l, cs.db, cs.g), (0, 0, 0));
        assert_eq!(
            (cs.base, cs.limit, cs.selector),
            (0xffff_0000, 0xffff, 0xf000)
        );
        // A 64-bit code segment: L (bit 9) and G (bit 11), DPL 3.
        let l = kvm_segment_from_vmcb(&Segment {
            selector: 0x33,
            attrib: 0xa9b | 0x60,
            limit: 0xffff_ffff,
            base: 0,
        });
        assert_eq!((l.l, l.g, l.db, l.dpl), (1, 1, 0, 3));
    }

    #[test]
    fn td_cpuid_keeps_only_configurable_bits_the_host_has() {
        let mut caps = KvmTdxCapabilities::default();
        caps.cpuid.nent = 2;
        caps.cpuid.entries[0] = kvm_cpuid_entry2 {
            function: 7,
            index: 0,
            ebx: 0xff00,
            ..Default::default()
        };
        caps.cpuid.entries[1] = kvm_cpuid_entry2 {
            function: 0x4000_0000,
            ebx: !0,
            ..Default::default()
        };
        let host = [kvm_cpuid_entry2 {
            function: 7,
            index: 0,
            ebx: 0x0ff0,
            ecx: 0x1234,
            ..Default::default()
        }];
        let c = td_cpuid(&caps, &host);
        assert_eq!(c.nent, 1, "leaves the host lacks are left out");
        assert_eq!(c.entries[0].ebx, 0x0f00);
        assert_eq!(
            c.entries[0].ecx, 0,
            "bits the module does not let us configure"
        );
    }

    /// Bug 2 (issue 13): KVM_TDX_CAPABILITIES never sets the significant-index flag,
    /// so copying its flags makes `kvm_find_cpuid_entry2` answer 0xD.1 (and 0x7.1)
    /// with the subleaf-0 entry.
    #[test]
    fn td_cpuid_indexed_leaves_are_found_by_subleaf() {
        let mut caps = KvmTdxCapabilities::default();
        caps.cpuid.nent = 4;
        for (i, (f, idx)) in [(0xD, 0), (0xD, 1), (7, 0), (7, 1)].into_iter().enumerate() {
            caps.cpuid.entries[i] = kvm_cpuid_entry2 {
                function: f,
                index: idx,
                flags: 0, // what tdx.c td_init_cpuid_entry2 reports
                eax: !0,
                ebx: !0,
                ecx: !0,
                edx: !0,
                ..Default::default()
            };
        }
        let sig = KVM_CPUID_FLAG_SIGNIFICANT_INDEX;
        let host = [
            kvm_cpuid_entry2 {
                function: 0xD,
                index: 0,
                flags: sig,
                eax: 0x2e7,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xD,
                index: 1,
                flags: sig,
                eax: 0xf,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                index: 0,
                flags: sig,
                eax: 2,
                ebx: 0x1234,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                index: 1,
                flags: sig,
                eax: 0x10,
                ..Default::default()
            },
        ];
        let c = td_cpuid(&caps, &host);
        let got = &c.entries[..c.nent as usize];
        assert_eq!(
            find_cpuid_entry2(got, 0xD, 1).map(|e| e.eax),
            Some(0xf),
            "0xD.1"
        );
        assert_eq!(
            find_cpuid_entry2(got, 7, 1).map(|e| e.eax),
            Some(0x10),
            "0x7.1"
        );
        assert_eq!(find_cpuid_entry2(got, 0xD, 0).map(|e| e.eax), Some(0x2e7));
    }

    /// The CPUID `td_cpuid` builds from KVM's capabilities and
    /// KVM_GET_SUPPORTED_CPUID passes INIT_VM's checks (GPAW, significant index,
    /// configurable bits), and each subleaf reaches its own slot.
    #[test]
    fn td_cpuid_passes_init_vm() {
        use crate::tee::fake::tdx::FakeKvmTdx;
        use crate::tee::tdx::{TdConfig, TdxLauncher};
        let mut fake = FakeKvmTdx::default();
        let host = fake.host_cpuid();
        {
            let probed = TdxLauncher::new(&mut fake).capabilities().unwrap();
            let cpuid = td_cpuid(probed.caps().unwrap(), &host);
            probed
                .init_vm_with_cpuid(&TdConfig::default(), cpuid)
                .unwrap();
        }
        assert_eq!(fake.gpaw, TD_GPAW);
        let slot = |f, i| {
            fake.cpuid_configs
                .iter()
                .position(|c| c.function == f && c.index == i)
                .unwrap()
        };
        assert_eq!(fake.td_cpuid[slot(0xD, 1)].unwrap().eax, 0xf);
        assert_eq!(fake.td_cpuid[slot(7, 1)].unwrap().eax, 0x10);
        assert_eq!(fake.td_cpuid[slot(0xD, 0)].unwrap().eax, 0x2e7);
    }

    /// The CPUID page as the SEV firmware checks it: leaf 0xD sub-leaves 0 and 1
    /// carry EBX = 0x240, the XSAVE size for XCR0_IN = 1, not KVM's size for every
    /// supported feature (the firmware requires the exact value; QEMU
    /// target/i386/sev.c forces 0x240).
    #[test]
    fn snp_cpuid_page_passes_the_firmware_check() {
        use crate::tee::fake::snp::firmware_check_cpuid_page;
        let e = |function, index, ebx| kvm_cpuid_entry2 {
            function,
            index,
            flags: if function == 0xD {
                KVM_CPUID_FLAG_SIGNIFICANT_INDEX
            } else {
                0
            },
            eax: 0x2e7,
            ebx,
            ..Default::default()
        };
        // What KVM_GET_SUPPORTED_CPUID reports on an AVX-512 host.
        let host = [
            e(0, 0, 0x6874_7541),
            e(0xD, 0, 0x988),
            e(0xD, 1, 0x988),
            e(0xD, 2, 0x240),
        ];
        let t = snp_cpuid_table(&host).unwrap();
        if let Err(fixed) = firmware_check_cpuid_page(&t) {
            panic!("the firmware corrects the page: {}", cpuid_diff(&t, &fixed));
        }
    }
}
