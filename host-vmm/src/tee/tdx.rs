//! The TDX launch sequence on upstream KVM (Linux >= 6.16), as a type-state machine:
//! `TdxLauncher<New>` → `capabilities` → `<Probed>` → `init_vm` → `<VmInitialized>` →
//! `init_vcpus` → `<VcpusInitialized>` → `add_region`… → `finalize` → `<Finalized>`.
//!
//! The memory regions come from [`TdxLaunchPlan::regions`], the sequence `cvm measure
//! tdx` folds into the expected MRTD. INIT_MEM_REGION copies from the plan's own buffers
//! (the source address is the region data), measuring the sections TDVF marks with
//! MR.EXTEND. INIT_VM is checked against the TDX module's capabilities first.
//!
//! This host has no TDX: the sequence is tested against a recording fake.

use std::marker::PhantomData;

use measured_boot::tdx::TdxLaunchPlan;

use crate::vstate::tdx::{
    KvmTdxCapabilities, KvmTdxInitMemRegion, KvmTdxInitVm, TdxCmdError, TdxCommands, TdxRequest,
};

/// TD attribute bit 0: the TD is debuggable (its memory readable by the host).
pub const TD_ATTR_DEBUG: u64 = 1;
/// TD attribute bit 28: SEPT #VE disabled (required by the verifier's default policy).
pub const TD_ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;

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
    /// with the module's configurable CPUID bits as the CPUID configuration.
    pub fn init_vm(self, cfg: &TdConfig) -> Result<TdxLauncher<VmInitialized, C>, TdxLaunchError> {
        let cpuid = self.caps.as_ref().map(|c| c.cpuid).unwrap_or_default();
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
        self.cmds
            .issue(TdxRequest::InitVm(&mut init))
            .map_err(command_error("KVM_TDX_INIT_VM"))?;
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
        let mut r = KvmTdxInitMemRegion {
            source_addr: data.as_ptr() as u64,
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
    use measured_boot::FirmwareImage;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Caps,
        InitVm {
            attributes: u64,
            xfam: u64,
            mrconfigid0: u64,
        },
        InitVcpu {
            index: u32,
            rcx: u64,
        },
        Region {
            source: u64,
            gpa: u64,
            pages: u64,
            measure: bool,
        },
        Finalize,
    }

    /// Adds at most `chunk` pages per call and is "interrupted" every third call.
    #[derive(Debug, Default)]
    struct FakeTdx {
        seen: Vec<Seen>,
        chunk: u64,
        calls: usize,
        fail_finalize: bool,
    }

    impl TdxCommands for &mut FakeTdx {
        fn issue(&mut self, req: TdxRequest<'_>) -> Result<(), TdxCmdError> {
            self.calls += 1;
            match req {
                TdxRequest::Capabilities(c) => {
                    c.supported_attrs = TD_ATTR_DEBUG | TD_ATTR_SEPT_VE_DISABLE | (1 << 30);
                    c.supported_xfam = 0x2ff;
                    self.seen.push(Seen::Caps);
                }
                TdxRequest::InitVm(i) => self.seen.push(Seen::InitVm {
                    attributes: i.attributes,
                    xfam: i.xfam,
                    mrconfigid0: i.mrconfigid[0],
                }),
                TdxRequest::InitVcpu { index, rcx } => {
                    self.seen.push(Seen::InitVcpu { index, rcx })
                }
                TdxRequest::InitMemRegion { region, measure } => {
                    let n = region.nr_pages.min(self.chunk.max(1));
                    self.seen.push(Seen::Region {
                        source: region.source_addr,
                        gpa: region.gpa,
                        pages: n,
                        measure,
                    });
                    region.source_addr += n * 4096;
                    region.gpa += n * 4096;
                    region.nr_pages -= n;
                    if self.calls % 3 == 0 && region.nr_pages > 0 {
                        return Err(TdxCmdError {
                            errno: libc::EINTR,
                            hw_error: 0,
                        });
                    }
                }
                TdxRequest::FinalizeVm if self.fail_finalize => {
                    return Err(TdxCmdError {
                        errno: libc::EIO,
                        hw_error: 0xC000_0B0B_0000_0000,
                    })
                }
                TdxRequest::FinalizeVm => self.seen.push(Seen::Finalize),
            }
            Ok(())
        }
    }

    fn plan() -> TdxLaunchPlan {
        let fw = FirmwareImage::parse(measured_boot::testing::ovmf_like(0x20000)).unwrap();
        TdxLaunchPlan::new(fw, None).unwrap()
    }

    #[test]
    fn the_plan_is_added_in_order_and_finalized() {
        let mut fake = FakeTdx {
            chunk: 5,
            ..Default::default()
        };
        let plan = plan();
        let mut cfg = TdConfig::default();
        cfg.mrconfigid[0] = 0xab;
        let l = TdxLauncher::new(&mut fake)
            .capabilities()
            .unwrap()
            .init_vm(&cfg)
            .unwrap();
        let mut l = l.init_vcpus(2, 0x80_9000).unwrap();
        l.apply_plan(&plan).unwrap();
        let (added, measured) = l.pages_added();
        l.finalize().unwrap();
        assert_eq!(plan.page_counts(), (added, measured));

        assert_eq!(fake.seen[0], Seen::Caps);
        assert_eq!(
            fake.seen[1],
            Seen::InitVm {
                attributes: TD_ATTR_SEPT_VE_DISABLE,
                xfam: 7,
                mrconfigid0: 0xab
            }
        );
        assert_eq!(
            fake.seen[2],
            Seen::InitVcpu {
                index: 0,
                rcx: 0x80_9000
            }
        );
        assert_eq!(
            fake.seen[3],
            Seen::InitVcpu {
                index: 1,
                rcx: 0x80_9000
            }
        );
        assert_eq!(*fake.seen.last().unwrap(), Seen::Finalize);
        // The chunks reassemble into the plan's regions, from the plan's own buffers.
        let mut covered: Vec<(u64, u64, u64, bool)> = Vec::new();
        for s in &fake.seen {
            if let Seen::Region {
                source,
                gpa,
                pages,
                measure,
            } = *s
            {
                match covered.last_mut() {
                    Some(c)
                        if c.1 + c.2 * 4096 == gpa
                            && c.0 + c.2 * 4096 == source
                            && c.3 == measure =>
                    {
                        c.2 += pages
                    }
                    _ => covered.push((source, gpa, pages, measure)),
                }
            }
        }
        let expected: Vec<_> = plan
            .regions()
            .map(|r| {
                (
                    r.data.as_ptr() as u64,
                    r.gpa,
                    r.data.len() as u64 / 4096,
                    r.measure,
                )
            })
            .collect();
        assert_eq!(covered, expected);
    }

    #[test]
    fn unsupported_configuration_and_failures_are_refused() {
        let mut fake = FakeTdx::default();
        let cfg = TdConfig {
            xfam: 0x1_0000,
            ..TdConfig::default()
        };
        let err = TdxLauncher::new(&mut fake)
            .capabilities()
            .unwrap()
            .init_vm(&cfg)
            .unwrap_err();
        assert_eq!(
            err,
            TdxLaunchError::Unsupported {
                what: "XFAM",
                bits: 0x1_0000
            }
        );
        assert!(
            !fake.seen.iter().any(|s| matches!(s, Seen::InitVm { .. })),
            "INIT_VM never reached KVM"
        );

        let mut fake = FakeTdx {
            chunk: 100,
            fail_finalize: true,
            ..Default::default()
        };
        let l = TdxLauncher::new(&mut fake)
            .capabilities()
            .unwrap()
            .init_vm(&TdConfig::default())
            .unwrap();
        assert_eq!(l.init_vcpus(0, 0).unwrap_err(), TdxLaunchError::NoVcpus);
        let mut fake2 = FakeTdx {
            chunk: 100,
            fail_finalize: true,
            ..Default::default()
        };
        let l = TdxLauncher::new(&mut fake2)
            .capabilities()
            .unwrap()
            .init_vm(&TdConfig::default())
            .unwrap();
        let mut l = l.init_vcpus(1, 0).unwrap();
        assert!(matches!(
            l.add_region(0x1001, &[0; 4096], true),
            Err(TdxLaunchError::Unaligned { .. })
        ));
        let err = l.finalize().unwrap_err();
        assert!(err.to_string().contains("0xc0000b0b00000000"), "{err}");
    }
}
