//! The TDX launch sequence on upstream KVM (Linux >= 6.16), as a type-state machine:
//! `TdxLauncher<New>` → `capabilities` → `<Probed>` → `init_vm` → `<VmInitialized>` →
//! `init_vcpus` → `<VcpusInitialized>` → `add_region`… → `finalize` → `<Finalized>`.
//!
//! The memory regions come from [`TdxLaunchPlan::regions`], the sequence `cvm measure
//! tdx` folds into the expected MRTD. INIT_MEM_REGION copies from the plan's own buffers
//! (the source address is the region data), measuring the sections TDVF marks with
//! MR.EXTEND. INIT_VM is checked against the TDX module's capabilities first.
//!
//! Before INIT_VM the VMM sets `KVM_CAP_X86_APIC_BUS_CYCLES_NS` = 40 (the TDX module
//! fixes the TD's CPUID 0x15 at 25 MHz; KVM does not require it, but its emulated APIC
//! timer would run at the wrong rate; QEMU does the same), and INIT_VM is retried on
//! -EAGAIN (TDX_RND_NO_ENTROPY in `__tdx_td_init`), as QEMU does. INIT_MEM_REGION's
//! source must be page-aligned (`tdx_vcpu_init_mem_region`); a region that is not is
//! copied into page-aligned memory first.
//!
//! This host has no TDX: the sequence is tested against a KVM-faithful fake
//! (`tee::fake::tdx`) that enforces what Linux v6.16 `arch/x86/kvm/vmx/tdx.c` checks:
//! INIT_VM once, before vCPUs, zero `reserved`/`cpuid.padding`, supported attributes
//! and XFAM, GPAW 48 or 52 in CPUID 0x80000008:EAX\[23:16\], every CPUID entry found by
//! `kvm_find_cpuid_entry2`'s significant-index rule landing in a configurable slot,
//! no TSX/WAITPKG (`tdx_td_init`, `setup_tdparams*`); vCPUs only after INIT_VM and
//! with a split irqchip (`tdx_vcpu_create`); INIT_VCPU once; INIT_MEM_REGION after
//! INIT_VCPU and before FINALIZE with page-aligned source and GPA, private GPAs,
//! -EINTR partial progress (`tdx_vcpu_init_mem_region`); FINALIZE once. The full
//! table with sources is in host-vmm/README.md ("Conformance with upstream KVM").

use std::marker::PhantomData;

use measured_boot::tdx::TdxLaunchPlan;

use crate::vstate::tdx::{
    KvmTdxCapabilities, KvmTdxInitMemRegion, KvmTdxInitVm, TdxCmdError, TdxCommands, TdxRequest,
};

/// TD attribute bit 0: the TD is debuggable (its memory readable by the host).
pub const TD_ATTR_DEBUG: u64 = 1;
/// TD attribute bit 28: SEPT #VE disabled (required by the verifier's default policy).
pub const TD_ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;

/// The APIC bus cycle length of a TD: 40 ns, the TDX module's 25 MHz.
pub const TDX_APIC_BUS_CYCLES_NS: u64 = 40;
/// INIT_VM attempts after -EAGAIN (QEMU: 10000).
pub const INIT_VM_RETRIES: u32 = 10_000;

/// TD configuration given to INIT_VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdConfig {
    /// TD attributes.
    pub attributes: u64,
    /// XFAM.
    pub xfam: u64,
    /// MRCONFIGID.
    pub mrconfigid: [u8; 48],
    /// MROWNER.
    pub mrowner: [u8; 48],
    /// MROWNERCONFIG.
    pub mrownerconfig: [u8; 48],
}

impl Default for TdConfig {
    fn default() -> Self {
        // x87, SSE, AVX (XCR0 bits 0-2): what the project's firmware and guests use.
        Self {
            attributes: TD_ATTR_SEPT_VE_DISABLE,
            xfam: 0x7,
            mrconfigid: [0; 48],
            mrowner: [0; 48],
            mrownerconfig: [0; 48],
        }
    }
}

/// Why the TDX launch failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TdxLaunchError {
    /// A command failed in the kernel or in the TDX module.
    #[error("{command} failed: errno {errno}, TDX module status {hw_error:#x}")]
    Command {
        /// Command name.
        command: &'static str,
        /// ioctl errno.
        errno: i32,
        /// SEAMCALL status.
        hw_error: u64,
    },
    /// The TDX module does not support requested attributes or XFAM bits.
    #[error("the TDX module does not support {what} bits {bits:#x}")]
    Unsupported {
        /// "attributes" or "XFAM".
        what: &'static str,
        /// The unsupported bits.
        bits: u64,
    },
    /// INIT_MEM_REGION reported success without progress.
    #[error("KVM_TDX_INIT_MEM_REGION at {gpa:#x} made no progress")]
    NoProgress {
        /// GPA.
        gpa: u64,
    },
    /// A region is not page-aligned or empty.
    #[error("memory region at {gpa:#x} of {len:#x} bytes is not page-aligned or empty")]
    Unaligned {
        /// GPA.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// No vCPUs.
    #[error("a TD needs at least one vCPU")]
    NoVcpus,
    /// No memory for the page-aligned copy of a region.
    #[error("cannot allocate {len:#x} bytes of page-aligned memory for a TD region")]
    OutOfMemory {
        /// Length.
        len: u64,
    },
}

/// A page-aligned heap copy of a region: the INIT_MEM_REGION source.
struct AlignedPages {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedPages {
    /// A copy of `data` (non-empty) at a page-aligned address; `None` if the
    /// allocation fails.
    fn copy_of(data: &[u8]) -> Option<Self> {
        if data.is_empty() {
            return None;
        }
        let layout = std::alloc::Layout::from_size_align(data.len(), 4096).ok()?;
        // SAFETY: `layout` has a non-zero size (checked above).
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        // SAFETY: the new allocation is valid for `data.len()` bytes of writes,
        // `data` for as many reads, and they cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.as_ptr(), data.len()) };
        Some(Self { ptr, layout })
    }

    fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }
}

impl Drop for AlignedPages {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated with `layout` in `copy_of` and is freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

fn command_error(name: &'static str) -> impl Fn(TdxCmdError) -> TdxLaunchError {
    move |e| TdxLaunchError::Command {
        command: name,
        errno: e.errno,
        hw_error: e.hw_error,
    }
}

fn words(b: &[u8; 48]) -> [u64; 6] {
    let mut w = [0u64; 6];
    for (i, c) in b.chunks_exact(8).enumerate() {
        w[i] = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    }
    w
}

/// State: nothing issued.
#[derive(Debug)]
pub struct New;
/// State: capabilities read.
#[derive(Debug)]
pub struct Probed;
/// State: INIT_VM done; vCPUs may be created.
#[derive(Debug)]
pub struct VmInitialized;
/// State: every vCPU initialised; memory may be added.
#[derive(Debug)]
pub struct VcpusInitialized;
/// State: FINALIZE_VM done; the TD may run.
#[derive(Debug)]
pub struct Finalized;

/// The TDX launch of one TD.
#[derive(Debug)]
pub struct TdxLauncher<S, C> {
    cmds: C,
    caps: Option<Box<KvmTdxCapabilities>>,
    pages: (u64, u64),
    _state: PhantomData<S>,
}

impl<S, C> TdxLauncher<S, C> {
    fn into_state<T>(self) -> TdxLauncher<T, C> {
        TdxLauncher {
            cmds: self.cmds,
            caps: self.caps,
            pages: self.pages,
            _state: PhantomData,
        }
    }

    /// The command channel (to hand it the vCPUs once they exist).
    pub fn cmds_mut(&mut self) -> &mut C {
        &mut self.cmds
    }

    /// The TDX module's capabilities (once probed).
    pub fn caps(&self) -> Option<&KvmTdxCapabilities> {
        self.caps.as_deref()
    }

    /// Pages added so far: (all, measured).
    pub fn pages_added(&self) -> (u64, u64) {
        self.pages
    }
}

impl<C: TdxCommands> TdxLauncher<New, C> {
    /// A launch driven through `cmds`.
    pub fn new(cmds: C) -> Self {
        Self {
            cmds,
            caps: None,
            pages: (0, 0),
            _state: PhantomData,
        }
    }

    /// KVM_TDX_CAPABILITIES.
    pub fn capabilities(mut self) -> Result<TdxLauncher<Probed, C>, TdxLaunchError> {
        let mut caps = Box::<KvmTdxCapabilities>::default();
        self.cmds
            .issue(TdxRequest::Capabilities(&mut caps))
            .map_err(command_error("KVM_TDX_CAPABILITIES"))?;
        self.caps = Some(caps);
        Ok(self.into_state())
    }
}

impl<C: TdxCommands> TdxLauncher<Probed, C> {
    /// KVM_TDX_INIT_VM, after checking the configuration against the capabilities,
    /// with the CPUID [`crate::tee::launch::td_cpuid`] derives from the module's
    /// configurable bits and `supported` (KVM_GET_SUPPORTED_CPUID).
    pub fn init_vm(
        self,
        cfg: &TdConfig,
        supported: &[kvm_bindings::kvm_cpuid_entry2],
    ) -> Result<TdxLauncher<VmInitialized, C>, TdxLaunchError> {
        let cpuid = self
            .caps
            .as_ref()
            .map(|c| crate::tee::launch::td_cpuid(c, supported))
            .unwrap_or_default();
        self.init_vm_with_cpuid(cfg, cpuid)
    }

    /// KVM_TDX_INIT_VM with an explicit CPUID configuration (see
    /// [`crate::tee::launch::td_cpuid`]).
    pub fn init_vm_with_cpuid(
        mut self,
        cfg: &TdConfig,
        cpuid: crate::vstate::tdx::TdxCpuid,
    ) -> Result<TdxLauncher<VmInitialized, C>, TdxLaunchError> {
        let (attrs, xfam) = self
            .caps
            .as_ref()
            .map_or((0, 0), |c| (c.supported_attrs, c.supported_xfam));
        if cfg.attributes & !attrs != 0 {
            return Err(TdxLaunchError::Unsupported {
                what: "attributes",
                bits: cfg.attributes & !attrs,
            });
        }
        if cfg.xfam & !xfam != 0 {
            return Err(TdxLaunchError::Unsupported {
                what: "XFAM",
                bits: cfg.xfam & !xfam,
            });
        }
        let mut init = Box::new(KvmTdxInitVm {
            attributes: cfg.attributes,
            xfam: cfg.xfam,
            mrconfigid: words(&cfg.mrconfigid),
            mrowner: words(&cfg.mrowner),
            mrownerconfig: words(&cfg.mrownerconfig),
            ..Default::default()
        });
        init.cpuid = cpuid;
        // The TDX module fixes the TD's CPUID 0x15 at a 25 MHz crystal clock; KVM's
        // emulated APIC timer must run at that rate too (QEMU target/i386/kvm/tdx.c
        // sets KVM_CAP_X86_APIC_BUS_CYCLES_NS = 40 before INIT_VM). KVM does not
        // refuse INIT_VM without it; the TD's timer would be 40x off.
        self.cmds
            .enable_apic_bus_cycles_ns(TDX_APIC_BUS_CYCLES_NS)
            .map_err(command_error(
                "KVM_ENABLE_CAP(KVM_CAP_X86_APIC_BUS_CYCLES_NS)",
            ))?;
        // INIT_VM fails with -EAGAIN when TDH.MNG.CREATE/ADDCX find no entropy
        // (tdx.c __tdx_td_init: TDX_RND_NO_ENTROPY) and leaves the TD uninitialised:
        // retry, as QEMU does.
        let mut tries = 0;
        loop {
            match self.cmds.issue(TdxRequest::InitVm(&mut init)) {
                Ok(()) => break,
                Err(e) if e.errno == libc::EAGAIN && tries < INIT_VM_RETRIES => tries += 1,
                Err(e) => return Err(command_error("KVM_TDX_INIT_VM")(e)),
            }
        }
        Ok(self.into_state())
    }
}

impl<C: TdxCommands> TdxLauncher<VmInitialized, C> {
    /// KVM_TDX_INIT_VCPU for vCPUs 0..n, each with RCX = the TD HOB GPA.
    pub fn init_vcpus(
        mut self,
        n: u32,
        hob_gpa: u64,
    ) -> Result<TdxLauncher<VcpusInitialized, C>, TdxLaunchError> {
        if n == 0 {
            return Err(TdxLaunchError::NoVcpus);
        }
        for index in 0..n {
            self.cmds
                .issue(TdxRequest::InitVcpu {
                    index,
                    rcx: hob_gpa,
                })
                .map_err(command_error("KVM_TDX_INIT_VCPU"))?;
        }
        Ok(self.into_state())
    }
}

impl<C: TdxCommands> TdxLauncher<VcpusInitialized, C> {
    /// KVM_TDX_INIT_MEM_REGION of `data` at `gpa`, retried over interruptions (KVM
    /// updates the region to the remainder).
    pub fn add_region(
        &mut self,
        gpa: u64,
        data: &[u8],
        measure: bool,
    ) -> Result<(), TdxLaunchError> {
        let len = data.len() as u64;
        if len == 0 || gpa % 4096 != 0 || len % 4096 != 0 {
            return Err(TdxLaunchError::Unaligned { gpa, len });
        }
        // KVM refuses a source that is not page-aligned (tdx.c
        // tdx_vcpu_init_mem_region: `!PAGE_ALIGNED(region.source_addr)` -> -EINVAL);
        // a region's data is a slice of the firmware image or a heap buffer and can
        // start anywhere, so an unaligned one is copied into aligned pages first.
        let copy;
        let source_addr = if data.as_ptr() as u64 % 4096 == 0 {
            data.as_ptr() as u64
        } else {
            copy = AlignedPages::copy_of(data).ok_or(TdxLaunchError::OutOfMemory { len })?;
            copy.addr()
        };
        let mut r = KvmTdxInitMemRegion {
            source_addr,
            gpa,
            nr_pages: len / 4096,
        };
        while r.nr_pages > 0 {
            let before = r.nr_pages;
            match self.cmds.issue(TdxRequest::InitMemRegion {
                region: &mut r,
                measure,
            }) {
                Ok(()) if r.nr_pages < before => {}
                Ok(()) => return Err(TdxLaunchError::NoProgress { gpa: r.gpa }),
                Err(e)
                    if (e.errno == libc::EINTR || e.errno == libc::EAGAIN)
                        && r.nr_pages <= before => {}
                Err(e) => return Err(command_error("KVM_TDX_INIT_MEM_REGION")(e)),
            }
        }
        self.pages.0 += len / 4096;
        if measure {
            self.pages.1 += len / 4096;
        }
        Ok(())
    }

    /// Adds every region of `plan`, in order.
    pub fn apply_plan(&mut self, plan: &TdxLaunchPlan) -> Result<(), TdxLaunchError> {
        for r in plan.regions() {
            self.add_region(r.gpa, r.data, r.measure)?;
        }
        Ok(())
    }

    /// KVM_TDX_FINALIZE_VM: MRTD is sealed.
    pub fn finalize(mut self) -> Result<TdxLauncher<Finalized, C>, TdxLaunchError> {
        self.cmds
            .issue(TdxRequest::FinalizeVm)
            .map_err(command_error("KVM_TDX_FINALIZE_VM"))?;
        Ok(self.into_state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tee::fake::tdx::{FakeKvmTdx, TdState, TDX_OPERAND_INVALID};
    use crate::vstate::private::KVM_MEMORY_ATTRIBUTE_PRIVATE;

    /// What the real path does around the launch commands: the TD's RAM gets the
    /// PRIVATE attribute (`PrivateMemory::attach`) and each vCPU its CPUID, with
    /// x2APIC, through KVM_SET_CPUID2 (`Vcpu::new`) before KVM_TDX_INIT_VCPU.
    fn real_path_setup(fake: &mut FakeKvmTdx, vcpus: std::ops::Range<u32>) {
        fake.set_memory_attributes(0, 1 << 32, KVM_MEMORY_ATTRIBUTE_PRIVATE)
            .unwrap();
        let cpuid = fake.host_cpuid();
        for i in vcpus {
            fake.set_cpuid2(i, &cpuid).unwrap();
        }
    }
    use crate::tee::launch::td_cpuid;
    use measured_boot::FirmwareImage;

    fn plan() -> TdxLaunchPlan {
        let fw = FirmwareImage::parse(measured_boot::testing::ovmf_like(0x20000)).unwrap();
        TdxLaunchPlan::new(fw, None).unwrap()
    }

    /// CAPABILITIES and INIT_VM with the CPUID `td_cpuid` derives, then `n` vCPUs
    /// created and initialised.
    fn initialised<'f>(
        fake: &'f mut FakeKvmTdx,
        n: u32,
        cfg: &TdConfig,
    ) -> TdxLauncher<VcpusInitialized, &'f mut FakeKvmTdx> {
        let host = fake.host_cpuid();
        let probed = TdxLauncher::new(fake).capabilities().unwrap();
        let cpuid = td_cpuid(probed.caps().unwrap(), &host);
        let mut l = probed.init_vm_with_cpuid(cfg, cpuid).unwrap();
        l.cmds_mut().create_vcpus(n).unwrap();
        real_path_setup(l.cmds_mut(), 0..n);
        l.init_vcpus(n, 0x80_9000).unwrap()
    }

    #[test]
    fn the_plan_is_added_in_order_and_finalized() {
        // 5 pages per call, then a signal: the loop resumes from KVM's update.
        let mut fake = FakeKvmTdx {
            chunk: 5,
            ..Default::default()
        };
        let plan = plan();
        let mut cfg = TdConfig::default();
        cfg.mrconfigid[0] = 0xab;
        let mut l = initialised(&mut fake, 2, &cfg);
        l.apply_plan(&plan).unwrap();
        let (added, measured) = l.pages_added();
        l.finalize().unwrap();
        assert_eq!(plan.page_counts(), (added, measured));

        assert_eq!(
            fake.log[..5],
            [
                "KVM_TDX_CAPABILITIES",
                "KVM_CAP_X86_APIC_BUS_CYCLES_NS",
                "KVM_TDX_INIT_VM",
                "KVM_TDX_INIT_VCPU",
                "KVM_TDX_INIT_VCPU"
            ]
        );
        assert_eq!(fake.log.last(), Some(&"KVM_TDX_FINALIZE_VM"));
        assert_eq!(fake.state, TdState::Runnable);
        assert_eq!(fake.apic_bus_cycle_ns, Some(TDX_APIC_BUS_CYCLES_NS));
        assert_eq!(fake.init_vm, Some((TD_ATTR_SEPT_VE_DISABLE, 7, 0xab)));
        assert_eq!(fake.vcpu_rcx.get(&1), Some(&0x80_9000));
        // The TD's private memory holds exactly the plan's bytes, and MRTD covers
        // exactly the measured regions, in order.
        let mut want_measured = Vec::new();
        for r in plan.regions() {
            for (k, chunk) in r.data.chunks(4096).enumerate() {
                let gpa = r.gpa + 4096 * k as u64;
                assert_eq!(&fake.page(gpa).unwrap()[..], chunk, "page {gpa:#x}");
                if r.measure {
                    want_measured.push(gpa);
                }
            }
        }
        assert_eq!(fake.measured, want_measured);
        assert_eq!(fake.private.len() as u64, added);
        assert!(
            fake.regions.len() > plan.regions().count(),
            "partial progress (-EINTR) was exercised"
        );
        // Every call KVM saw had a page-aligned source.
        assert!(fake.regions.iter().all(|r| r.0 % 4096 == 0));
    }

    /// Bug 1 (issue 13): KVM refuses an INIT_MEM_REGION whose `source_addr` is not
    /// page-aligned; a region's data (a slice of the firmware image, a heap `Vec`)
    /// can start anywhere.
    #[test]
    fn init_mem_region_source_is_page_aligned() {
        let mut fake = FakeKvmTdx::default();
        let mut l = initialised(&mut fake, 1, &TdConfig::default());
        let buf: Vec<u8> = (0..0x3000u32).map(|i| (i % 251) as u8).collect();
        let off = (4096 - (buf.as_ptr() as usize % 4096) + 8) % 4096;
        let data = &buf[off..off + 0x2000];
        l.add_region(0x1000, data, true).unwrap();
        let _ = l;
        assert_eq!(&fake.page(0x1000).unwrap()[..], &data[..4096]);
        assert_eq!(&fake.page(0x2000).unwrap()[..], &data[4096..]);
    }

    #[test]
    fn init_vm_is_retried_while_the_module_is_busy() {
        let mut fake = FakeKvmTdx {
            init_vm_busy: 3,
            ..Default::default()
        };
        let _ = initialised(&mut fake, 1, &TdConfig::default());
        assert_eq!(fake.state, TdState::Initialized);
        assert_eq!(fake.init_vm_busy, 0);
    }

    #[test]
    fn unsupported_configuration_and_failures_are_refused() {
        // XFAM the module lacks: refused before KVM sees INIT_VM.
        let mut fake = FakeKvmTdx::default();
        let cfg = TdConfig {
            xfam: 0x1_0000,
            ..TdConfig::default()
        };
        let err = TdxLauncher::new(&mut fake)
            .capabilities()
            .unwrap()
            .init_vm(&cfg, &[])
            .unwrap_err();
        assert_eq!(
            err,
            TdxLaunchError::Unsupported {
                what: "XFAM",
                bits: 0x1_0000
            }
        );
        assert!(!fake.log.contains(&"KVM_TDX_INIT_VM"));
        // KVM v6.16 supports no DEBUG TD (KVM_SUPPORTED_TD_ATTRS): refused too.
        let mut fake = FakeKvmTdx::default();
        let cfg = TdConfig {
            attributes: TD_ATTR_SEPT_VE_DISABLE | TD_ATTR_DEBUG,
            ..TdConfig::default()
        };
        assert!(matches!(
            TdxLauncher::new(&mut fake)
                .capabilities()
                .unwrap()
                .init_vm(&cfg, &[]),
            Err(TdxLaunchError::Unsupported {
                what: "attributes",
                ..
            })
        ));
        // A TDX module status is reported.
        let mut fake = FakeKvmTdx {
            fail_finalize: Some(TdxCmdError {
                errno: libc::EIO,
                hw_error: 0xC000_0B0B_0000_0000,
            }),
            ..Default::default()
        };
        let mut l = initialised(&mut fake, 1, &TdConfig::default());
        assert!(matches!(
            l.add_region(0x1001, &[0; 4096], true),
            Err(TdxLaunchError::Unaligned { .. })
        ));
        let err = l.finalize().unwrap_err();
        assert!(err.to_string().contains("0xc0000b0b00000000"), "{err}");
        let mut fake = FakeKvmTdx::default();
        let host = fake.host_cpuid();
        assert_eq!(
            TdxLauncher::new(&mut fake)
                .capabilities()
                .unwrap()
                .init_vm(&TdConfig::default(), &host)
                .unwrap()
                .init_vcpus(0, 0)
                .unwrap_err(),
            TdxLaunchError::NoVcpus
        );
    }

    /// The fake enforces KVM's rules: each case is something the launch code never
    /// does, answered as KVM would.
    #[test]
    fn the_fake_refuses_what_kvm_refuses() {
        use crate::vstate::tdx::{KvmTdxInitMemRegion, KvmTdxInitVm};
        let errno = |r: Result<(), TdxCmdError>| r.unwrap_err().errno;
        // INIT_MEM_REGION before INIT_VM; FINALIZE before INIT_VM.
        let mut fake = FakeKvmTdx::default();
        let mut cmds = &mut fake;
        let mut r = KvmTdxInitMemRegion {
            source_addr: 0,
            gpa: 0,
            nr_pages: 1,
        };
        assert_eq!(
            errno(cmds.issue(TdxRequest::InitMemRegion {
                region: &mut r,
                measure: false
            })),
            libc::EINVAL
        );
        assert_eq!(errno(cmds.issue(TdxRequest::FinalizeVm)), libc::EINVAL);
        // vCPUs before INIT_VM: -EIO (tdx_vcpu_create).
        assert_eq!(cmds.create_vcpus(1).unwrap_err().errno, libc::EIO);
        // INIT_VM: reserved bytes, CPUID padding, no 0x80000008, GPAW 52 without
        // 5-level EPT, an entry no config slot takes, too many entries.
        let host = cmds.host_cpuid();
        let mut caps = Box::<crate::vstate::tdx::KvmTdxCapabilities>::default();
        cmds.issue(TdxRequest::Capabilities(&mut caps)).unwrap();
        let good = td_cpuid(&caps, &host);
        let with = |f: &dyn Fn(&mut KvmTdxInitVm)| {
            let mut i = Box::new(KvmTdxInitVm {
                attributes: TD_ATTR_SEPT_VE_DISABLE,
                xfam: 7,
                ..Default::default()
            });
            i.cpuid = good;
            f(&mut i);
            i
        };
        let cases: Vec<(&str, Box<KvmTdxInitVm>, i32)> = vec![
            ("reserved", with(&|i| i.reserved[3] = 1), libc::EINVAL),
            ("padding", with(&|i| i.cpuid.padding = 1), libc::EINVAL),
            (
                "no 0x80000008",
                with(&|i| {
                    let n = i.cpuid.nent as usize;
                    let k = i.cpuid.entries[..n]
                        .iter()
                        .position(|e| e.function == 0x8000_0008)
                        .unwrap();
                    i.cpuid.entries[k] = i.cpuid.entries[n - 1];
                    i.cpuid.nent -= 1;
                }),
                libc::EINVAL,
            ),
            (
                "GPAW 52",
                with(&|i| {
                    let n = i.cpuid.nent as usize;
                    let e = i.cpuid.entries[..n]
                        .iter_mut()
                        .find(|e| e.function == 0x8000_0008)
                        .unwrap();
                    e.eax = (e.eax & !0xff_0000) | (52 << 16);
                }),
                libc::EINVAL,
            ),
            (
                "stray leaf",
                with(&|i| {
                    let n = i.cpuid.nent as usize;
                    i.cpuid.entries[n] = kvm_bindings::kvm_cpuid_entry2 {
                        function: 0x4000_0000,
                        ..Default::default()
                    };
                    i.cpuid.nent += 1;
                }),
                libc::EINVAL,
            ),
            (
                "TSX",
                with(&|i| {
                    let n = i.cpuid.nent as usize;
                    let e = i.cpuid.entries[..n]
                        .iter_mut()
                        .find(|e| e.function == 7 && e.index == 0)
                        .unwrap();
                    e.ebx |= 1 << 11;
                }),
                libc::EINVAL,
            ),
            ("nent", with(&|i| i.cpuid.nent = 257), libc::E2BIG),
            (
                "DEBUG",
                with(&|i| i.attributes |= TD_ATTR_DEBUG),
                libc::EINVAL,
            ),
        ];
        for (what, mut init, want) in cases {
            assert_eq!(
                errno(cmds.issue(TdxRequest::InitVm(&mut init))),
                want,
                "{what}"
            );
        }
        // Flags copied from CAPABILITIES (bug 2): 0xD.1 takes 0xD.0's values and
        // the module refuses them (TDX_OPERAND_INVALID in hw_error).
        let mut bad = with(&|_| {});
        for e in bad.cpuid.entries.iter_mut() {
            e.flags = 0;
        }
        let e = cmds.issue(TdxRequest::InitVm(&mut bad)).unwrap_err();
        assert_eq!(
            (e.errno, e.hw_error & !0xff),
            (libc::EINVAL, TDX_OPERAND_INVALID)
        );
        // The good one passes, once.
        let mut init = with(&|_| {});
        cmds.issue(TdxRequest::InitVm(&mut init)).unwrap();
        assert_eq!(
            errno(cmds.issue(TdxRequest::InitVm(&mut init))),
            libc::EINVAL,
            "double INIT_VM"
        );
        // INIT_MEM_REGION before INIT_VCPU; INIT_VCPU twice; a shared or unaligned
        // or empty region; a page added twice.
        cmds.create_vcpus(1).unwrap();
        real_path_setup(cmds, 0..1);
        let page = AlignedPages::copy_of(&[7u8; 8192]).unwrap();
        let mut r = KvmTdxInitMemRegion {
            source_addr: page.addr(),
            gpa: 0x1000,
            nr_pages: 1,
        };
        assert_eq!(
            errno(cmds.issue(TdxRequest::InitMemRegion {
                region: &mut r,
                measure: true
            })),
            libc::EINVAL
        );
        cmds.issue(TdxRequest::InitVcpu { index: 0, rcx: 0 })
            .unwrap();
        assert_eq!(
            errno(cmds.issue(TdxRequest::InitVcpu { index: 0, rcx: 0 })),
            libc::EINVAL
        );
        assert_eq!(
            errno(cmds.issue(TdxRequest::InitVcpu { index: 1, rcx: 0 })),
            libc::ENODEV
        );
        for (source_addr, gpa, nr_pages) in [
            (page.addr() + 8, 0x1000, 1),
            (page.addr(), 0x1008, 1),
            (page.addr(), 0x1000, 0),
            (page.addr(), 1 << 47, 1),
            (page.addr(), (1 << 47) - 0x1000, 2),
        ] {
            let mut r = KvmTdxInitMemRegion {
                source_addr,
                gpa,
                nr_pages,
            };
            assert_eq!(
                errno(cmds.issue(TdxRequest::InitMemRegion {
                    region: &mut r,
                    measure: false
                })),
                libc::EINVAL,
                "{source_addr:#x} {gpa:#x} {nr_pages}"
            );
        }
        let mut r = KvmTdxInitMemRegion {
            source_addr: page.addr(),
            gpa: 0x1000,
            nr_pages: 2,
        };
        cmds.issue(TdxRequest::InitMemRegion {
            region: &mut r,
            measure: true,
        })
        .unwrap();
        assert_eq!(
            (r.nr_pages, r.gpa, r.source_addr),
            (0, 0x3000, page.addr() + 0x2000)
        );
        let mut r = KvmTdxInitMemRegion {
            source_addr: page.addr(),
            gpa: 0x2000,
            nr_pages: 1,
        };
        // kvm_gmem_populate: "already prepared" -> -EEXIST, returned as is.
        assert_eq!(
            errno(cmds.issue(TdxRequest::InitMemRegion {
                region: &mut r,
                measure: true
            })),
            libc::EEXIST
        );
        // After FINALIZE: no more memory, no second FINALIZE.
        cmds.issue(TdxRequest::FinalizeVm).unwrap();
        let mut r = KvmTdxInitMemRegion {
            source_addr: page.addr(),
            gpa: 0x8000,
            nr_pages: 1,
        };
        assert_eq!(
            errno(cmds.issue(TdxRequest::InitMemRegion {
                region: &mut r,
                measure: false
            })),
            libc::EINVAL
        );
        assert_eq!(errno(cmds.issue(TdxRequest::FinalizeVm)), libc::EINVAL);
        // A VM without an in-kernel irqchip cannot have the APIC bus setting
        // (x86.c: !irqchip_in_kernel -> -ENXIO).
        let mut fake = FakeKvmTdx {
            split_irqchip: false,
            ..Default::default()
        };
        let mut cmds = &mut fake;
        assert_eq!(
            cmds.enable_apic_bus_cycles_ns(40).unwrap_err().errno,
            libc::ENXIO
        );
    }

    /// x86.c kvm_vm_ioctl_enable_cap(KVM_CAP_X86_APIC_BUS_CYCLES_NS): -EINVAL for 0
    /// or a length whose `U32_MAX * 128 * ns` overflows; -ENXIO without an in-kernel
    /// irqchip; a split or a full one is accepted; -EINVAL once vCPUs exist.
    #[test]
    fn apic_bus_cycles_follow_kvm_enable_cap() {
        let bound = u64::MAX / (u64::from(u32::MAX) * 128);
        let mut none = FakeKvmTdx {
            split_irqchip: false,
            ..Default::default()
        };
        assert_eq!(
            (&mut none).enable_apic_bus_cycles_ns(25).unwrap_err().errno,
            libc::ENXIO
        );
        let mut full = FakeKvmTdx {
            split_irqchip: false,
            full_irqchip: true,
            ..Default::default()
        };
        (&mut full).enable_apic_bus_cycles_ns(25).unwrap();
        assert_eq!(full.apic_bus_cycle_ns, Some(25));
        let mut split = FakeKvmTdx::default();
        let mut cmds = &mut split;
        for ns in [0, bound + 1, u64::MAX] {
            assert_eq!(
                cmds.enable_apic_bus_cycles_ns(ns).unwrap_err().errno,
                libc::EINVAL,
                "{ns}"
            );
        }
        cmds.enable_apic_bus_cycles_ns(bound).unwrap();
        cmds.state = TdState::Initialized;
        cmds.create_vcpus(1).unwrap();
        assert_eq!(
            cmds.enable_apic_bus_cycles_ns(25).unwrap_err().errno,
            libc::EINVAL
        );
    }

    /// tdx_vcpu_init: the TD's vCPU runs in x2APIC mode, which kvm_apic_set_base
    /// refuses unless the vCPU's CPUID (KVM_SET_CPUID2, before INIT_VCPU) has x2APIC.
    #[test]
    fn init_vcpu_needs_x2apic_in_the_vcpu_cpuid() {
        let mut fake = FakeKvmTdx::default();
        let host = fake.host_cpuid();
        let probed = TdxLauncher::new(&mut fake).capabilities().unwrap();
        let cpuid = td_cpuid(probed.caps().unwrap(), &host);
        let mut l = probed
            .init_vm_with_cpuid(&TdConfig::default(), cpuid)
            .unwrap();
        l.cmds_mut().create_vcpus(2).unwrap();
        // No KVM_SET_CPUID2 at all.
        let cmds = l.cmds_mut();
        assert_eq!(
            cmds.issue(TdxRequest::InitVcpu { index: 0, rcx: 0 })
                .unwrap_err()
                .errno,
            libc::EINVAL
        );
        // A CPUID without x2APIC (CPUID.1:ECX[21]).
        let mut no_x2apic = host.clone();
        no_x2apic.iter_mut().find(|e| e.function == 1).unwrap().ecx &= !(1 << 21);
        cmds.set_cpuid2(0, &no_x2apic).unwrap();
        assert_eq!(
            cmds.issue(TdxRequest::InitVcpu { index: 0, rcx: 0 })
                .unwrap_err()
                .errno,
            libc::EINVAL
        );
        // vCPU 1 has it, vCPU 0 does not: the launch stops at vCPU 0.
        cmds.set_cpuid2(1, &host).unwrap();
        assert!(matches!(
            l.init_vcpus(2, 0x80_9000),
            Err(TdxLaunchError::Command { .. })
        ));
        assert!(fake.vcpu_rcx.is_empty());
    }

    /// kvm_gmem_populate needs the PRIVATE attribute (-EINVAL); a page added twice
    /// is -EEXIST before the TDX module (hw_error 0); a source that is not mapped is
    /// -EFAULT (the fake reads it as the kernel does, never dereferencing it).
    #[test]
    fn init_mem_region_populate_rules() {
        use crate::vstate::tdx::KvmTdxInitMemRegion;
        let mut fake = FakeKvmTdx::default();
        let mut l = initialised(&mut fake, 1, &TdConfig::default());
        l.cmds_mut()
            .set_memory_attributes(0x10_0000, 0x1000, 0)
            .unwrap();
        let page = AlignedPages::copy_of(&[5u8; 4096]).unwrap();
        fn add(cmds: &mut &mut FakeKvmTdx, src: u64, gpa: u64) -> Result<(), (i32, u64)> {
            let mut r = KvmTdxInitMemRegion {
                source_addr: src,
                gpa,
                nr_pages: 1,
            };
            cmds.issue(TdxRequest::InitMemRegion {
                region: &mut r,
                measure: true,
            })
            .map_err(|e| (e.errno, e.hw_error))
        }
        let c = l.cmds_mut();
        assert_eq!(add(c, page.addr(), 0x10_0000), Err((libc::EINVAL, 0)));
        add(c, page.addr(), 0x20_0000).unwrap();
        assert_eq!(add(c, page.addr(), 0x20_0000), Err((libc::EEXIST, 0)));
        assert_eq!(add(c, 0x1000, 0x30_0000), Err((libc::EFAULT, 0)));
        // The launch reports the errno.
        let e = l.add_region(0x20_0000, &[1; 4096], true).unwrap_err();
        assert!(e.to_string().contains("KVM_TDX_INIT_MEM_REGION"), "{e}");
        let _ = l;
        assert_eq!(fake.private.len(), 1);
        assert_eq!(fake.measured, [0x20_0000]);
    }
}
