//! The SEV-SNP launch sequence on upstream KVM (Linux >= 6.11), as a type-state
//! machine: `SnpLauncher<New>` → `init` → `<Initialized>` → `start` → `<Started>` →
//! `update`… → `finish` → `<Finished>`. Calling the steps out of order does not compile.
//!
//! The updates come from [`SnpLaunchPlan::updates`], the same sequence `cvm measure`
//! folds into the expected digest, so the launch and the registered measurement cannot
//! drift apart. VMSA pages are not sent: upstream KVM builds each vCPU's VMSA at
//! LAUNCH_FINISH from the registers the VMM set (`SnpLaunchPlan::vcpu_registers`) and
//! the VMSA features given to INIT2.
//!
//! This host has no SEV-SNP hardware: the sequence is tested against a KVM-faithful
//! fake (`tee::fake::snp`) that enforces what Linux v6.16 `arch/x86/kvm/svm/sev.c`
//! checks and answers with its errno: INIT2 before vCPUs, once, `flags` zero, VMSA
//! features KVM supports (never SNPActive, which KVM sets), GHCB version 2
//! (`__sev_guest_init`); other commands -ENOTTY before INIT2 (`sev_mem_enc_ioctl`);
//! one LAUNCH_START, `flags` zero, policy bit 17 set, nothing outside the valid mask,
//! no single-socket (`snp_launch_start`); LAUNCH_UPDATE after START with a non-zero
//! page-aligned `len`, zero `flags`, a non-VMSA type and a page-aligned `uaddr`
//! (except ZERO), within a guest_memfd slot, with partial progress (`gfn_start`,
//! `len`, `uaddr` updated; `uaddr` not for ZERO) and -EAGAIN (`snp_launch_update`,
//! `kvm_gmem_populate`); LAUNCH_FINISH once, `flags` zero (`snp_launch_finish`); zero
//! padding (stricter than KVM). The full table with sources is in host-vmm/README.md
//! ("Conformance with upstream KVM").

use std::marker::PhantomData;

use kvm_bindings::{
    kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update,
};
use measured_boot::snp::{PageType, SnpLaunchPlan};

use crate::vstate::sev::{SevCmdError, SevCommands, SevRequest};

/// SEV_FEATURES bit 0: SNPActive. KVM sets it itself for SNP VMs.
pub const SEV_FEATURE_SNP_ACTIVE: u64 = 1;
/// Guest policy bit 17, reserved and required to be one.
pub const POLICY_RESERVED_MBO: u64 = 1 << 17;
/// Guest policy bit 19: debugging allowed.
pub const POLICY_DEBUG: u64 = 1 << 19;
/// GHCB protocol version for SNP guests.
pub const GHCB_VERSION: u16 = 2;

/// Why the SNP launch failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnpLaunchError {
    /// A command failed in the kernel or in the SEV firmware.
    #[error("{command} failed: errno {errno}{}", fw_text(*fw_error))]
    Command {
        /// Command name.
        command: &'static str,
        /// ioctl errno.
        errno: i32,
        /// SEV firmware status code.
        fw_error: u32,
    },
    /// LAUNCH_UPDATE reported success without making progress.
    #[error("KVM_SEV_SNP_LAUNCH_UPDATE at {gpa:#x} made no progress")]
    NoProgress {
        /// GPA of the stalled range.
        gpa: u64,
    },
    /// The guest features lack SNPActive.
    #[error("guest features {0:#x} lack bit 0 (SNPActive)")]
    NotSnp(u64),
    /// The guest policy lacks its must-be-one bit.
    #[error("guest policy {0:#x} lacks bit 17, which must be one")]
    BadPolicy(u64),
    /// A range is not page-aligned.
    #[error("launch update at {gpa:#x} of {len:#x} bytes is not page-aligned or empty")]
    Unaligned {
        /// GPA.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// VMSA pages are built by KVM, not sent.
    #[error("VMSA pages are built by KVM at LAUNCH_FINISH and cannot be sent with LAUNCH_UPDATE")]
    VmsaUpdate,
    /// The VMM has no host mapping for a GPA range of the plan.
    #[error("no host memory backs guest range {gpa:#x}+{len:#x}")]
    Unmapped {
        /// GPA.
        gpa: u64,
        /// Length.
        len: u64,
    },
}

fn fw_text(code: u32) -> String {
    if code == 0 {
        String::new()
    } else {
        format!(
            ", SEV firmware status {code:#x} ({})",
            sev::error::SevError::from(code)
        )
    }
}

fn command_error(req: &'static str) -> impl Fn(SevCmdError) -> SnpLaunchError {
    move |e| SnpLaunchError::Command {
        command: req,
        errno: e.errno,
        fw_error: e.fw_error,
    }
}

/// State: nothing issued yet.
#[derive(Debug)]
pub struct New;
/// State: KVM_SEV_INIT2 done.
#[derive(Debug)]
pub struct Initialized;
/// State: LAUNCH_START done; pages may be added.
#[derive(Debug)]
pub struct Started;
/// State: LAUNCH_FINISH done; the guest may run.
#[derive(Debug)]
pub struct Finished;

/// The SNP launch of one VM.
#[derive(Debug)]
pub struct SnpLauncher<S, C> {
    cmds: C,
    pages: u64,
    _state: PhantomData<S>,
}

impl<S, C> SnpLauncher<S, C> {
    fn into_state<T>(self) -> SnpLauncher<T, C> {
        SnpLauncher {
            cmds: self.cmds,
            pages: self.pages,
            _state: PhantomData,
        }
    }

    /// Pages handed to LAUNCH_UPDATE so far.
    pub fn pages_updated(&self) -> u64 {
        self.pages
    }
}

impl<C: SevCommands> SnpLauncher<New, C> {
    /// A launch driven through `cmds`.
    pub fn new(cmds: C) -> Self {
        Self {
            cmds,
            pages: 0,
            _state: PhantomData,
        }
    }

    /// KVM_SEV_INIT2 with the guest's SEV features (SNPActive is implied by the VM type
    /// and not passed).
    pub fn init(
        mut self,
        guest_features: u64,
    ) -> Result<SnpLauncher<Initialized, C>, SnpLaunchError> {
        if guest_features & SEV_FEATURE_SNP_ACTIVE == 0 {
            return Err(SnpLaunchError::NotSnp(guest_features));
        }
        let mut init = kvm_sev_init {
            vmsa_features: guest_features & !SEV_FEATURE_SNP_ACTIVE,
            ghcb_version: GHCB_VERSION,
            ..Default::default()
        };
        self.cmds
            .issue(SevRequest::Init2(&mut init))
            .map_err(command_error("KVM_SEV_INIT2"))?;
        Ok(self.into_state())
    }
}

impl<C: SevCommands> SnpLauncher<Initialized, C> {
    /// KVM_SEV_SNP_LAUNCH_START with the guest policy.
    pub fn start(mut self, policy: u64) -> Result<SnpLauncher<Started, C>, SnpLaunchError> {
        if policy & POLICY_RESERVED_MBO == 0 {
            return Err(SnpLaunchError::BadPolicy(policy));
        }
        let mut start = kvm_sev_snp_launch_start {
            policy,
            ..Default::default()
        };
        self.cmds
            .issue(SevRequest::SnpLaunchStart(&mut start))
            .map_err(command_error("KVM_SEV_SNP_LAUNCH_START"))?;
        Ok(self.into_state())
    }
}

impl<C: SevCommands> SnpLauncher<Started, C> {
    /// KVM_SEV_SNP_ENABLE_REQ_CERTS: the guest's extended-report certificate requests
    /// come to the VMM. Must precede vCPU creation.
    pub fn enable_req_certs(&mut self) -> Result<(), SnpLaunchError> {
        self.cmds
            .issue(SevRequest::SnpEnableReqCerts)
            .map_err(command_error("KVM_SEV_SNP_ENABLE_REQ_CERTS"))
    }

    /// KVM_SEV_SNP_LAUNCH_UPDATE of `len` bytes at `gpa` from host address `uaddr`,
    /// repeated until KVM has processed the whole range (it may do part of it per call,
    /// or ask to be called again with EAGAIN).
    pub fn update(
        &mut self,
        gpa: u64,
        page_type: PageType,
        uaddr: u64,
        len: u64,
    ) -> Result<(), SnpLaunchError> {
        if page_type == PageType::Vmsa {
            return Err(SnpLaunchError::VmsaUpdate);
        }
        if len == 0 || gpa % 4096 != 0 || len % 4096 != 0 || uaddr % 4096 != 0 {
            return Err(SnpLaunchError::Unaligned { gpa, len });
        }
        let mut u = kvm_sev_snp_launch_update {
            gfn_start: gpa >> 12,
            uaddr,
            len,
            type_: page_type as u8,
            ..Default::default()
        };
        while u.len > 0 {
            let before = u.len;
            match self.cmds.issue(SevRequest::SnpLaunchUpdate(&mut u)) {
                Ok(()) if u.len < before => {}
                Ok(()) => {
                    return Err(SnpLaunchError::NoProgress {
                        gpa: u.gfn_start << 12,
                    })
                }
                Err(e) if e.errno == libc::EAGAIN || e.errno == libc::EINTR => {}
                Err(e) => return Err(command_error("KVM_SEV_SNP_LAUNCH_UPDATE")(e)),
            }
        }
        self.pages += len / 4096;
        Ok(())
    }

    /// Issues every update of `plan` except the VMSAs. `host` maps a guest range to the
    /// host address where the VMM placed its contents.
    pub fn apply_plan(
        &mut self,
        plan: &SnpLaunchPlan,
        host: impl Fn(u64, u64) -> Option<u64>,
    ) -> Result<(), SnpLaunchError> {
        for u in plan.updates().filter(|u| u.page_type != PageType::Vmsa) {
            let uaddr = host(u.gpa, u.len()).ok_or(SnpLaunchError::Unmapped {
                gpa: u.gpa,
                len: u.len(),
            })?;
            self.update(u.gpa, u.page_type, uaddr, u.len())?;
        }
        Ok(())
    }

    /// KVM_SEV_SNP_LAUNCH_FINISH with the host data and, optionally, an ID block
    /// (96 bytes) and its ID authentication structure (4096 bytes).
    pub fn finish(
        mut self,
        host_data: [u8; 32],
        id: Option<(&[u8; 96], &[u8; 4096])>,
    ) -> Result<SnpLauncher<Finished, C>, SnpLaunchError> {
        let mut fin = kvm_sev_snp_launch_finish {
            host_data,
            ..Default::default()
        };
        if let Some((block, auth)) = id {
            fin.id_block_uaddr = block.as_ptr() as u64;
            fin.id_auth_uaddr = auth.as_ptr() as u64;
            fin.id_block_en = 1;
            // AUTHOR_KEY_EN: the auth structure carries an author key when its
            // author-key algorithm field (offset 0x4) is non-zero.
            fin.auth_key_en = u8::from(auth[4..8] != [0; 4]);
        }
        self.cmds
            .issue(SevRequest::SnpLaunchFinish(&mut fin))
            .map_err(command_error("KVM_SEV_SNP_LAUNCH_FINISH"))?;
        Ok(self.into_state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use measured_boot::snp::vmsa::VmmType;
    use measured_boot::snp::{hashes::SevHashes, SnpPlanConfig};
    use measured_boot::FirmwareImage;

    use crate::tee::fake::snp::{FakeKvmSnp as FakePsp, SevSeen as Seen};
    use crate::vstate::private::KVM_MEMORY_ATTRIBUTE_PRIVATE;

    /// Guest RAM gets the PRIVATE attribute before LAUNCH_UPDATE, as the real path
    /// does (`PrivateMemory::attach`); kvm_gmem_populate refuses other pages.
    fn private(mut psp: FakePsp) -> FakePsp {
        psp.set_memory_attributes(0, 1 << 32, KVM_MEMORY_ATTRIBUTE_PRIVATE)
            .unwrap();
        psp
    }

    fn plan() -> SnpLaunchPlan {
        let fw = FirmwareImage::parse(measured_boot::testing::ovmf_like(0x20000)).unwrap();
        let hashes = Some(SevHashes::compute(b"kernel", None, Some("console=ttyS0")));
        SnpLaunchPlan::new(
            fw,
            SnpPlanConfig {
                vcpus: 2,
                vcpu_sig: 0xa00f11,
                guest_features: 0x21,
                vmm_type: VmmType::Qemu,
                hashes,
            },
        )
        .unwrap()
    }

    /// Host addresses: pretend guest memory is mapped at 0x7f00_0000_0000 + GPA.
    fn host(gpa: u64, _len: u64) -> Option<u64> {
        Some(0x7f00_0000_0000 + gpa)
    }

    #[test]
    fn the_plan_is_issued_in_order_with_partial_progress_and_eagain() {
        let mut psp = private(FakePsp {
            chunk: 7,
            eagain_every: 5,
            ..Default::default()
        });
        let plan = plan();
        let mut l = SnpLauncher::new(&mut psp)
            .init(plan.guest_features())
            .unwrap()
            .start(0x30000)
            .unwrap();
        l.apply_plan(&plan, host).unwrap();
        let pages = l.pages_updated();
        l.finish([9; 32], None).unwrap();

        assert_eq!(
            psp.seen[0],
            Seen::Init {
                vmsa_features: 0x20,
                ghcb: 2
            }
        );
        assert_eq!(psp.seen[1], Seen::Start { policy: 0x30000 });
        assert_eq!(
            *psp.seen.last().unwrap(),
            Seen::Finish {
                host_data: [9; 32],
                id_block_en: 0,
                auth_key_en: 0
            }
        );
        // Reassemble the chunks: they must cover exactly the plan's non-VMSA updates,
        // contiguously, in order, with matching host addresses.
        let mut covered: Vec<(u64, u64, u8)> = Vec::new();
        for s in &psp.seen {
            if let Seen::Update {
                gfn,
                uaddr,
                len,
                page_type,
            } = s
            {
                // KVM advances `uaddr` with the GFN, except for ZERO pages, which
                // have no source.
                if *page_type != PageType::Zero as u8 {
                    assert_eq!(*uaddr, 0x7f00_0000_0000 + gfn * 4096);
                }
                match covered.last_mut() {
                    Some(last) if last.0 + last.1 == gfn * 4096 && last.2 == *page_type => {
                        last.1 += len
                    }
                    _ => covered.push((gfn * 4096, *len, *page_type)),
                }
            }
        }
        let expected: Vec<(u64, u64, u8)> = plan
            .updates()
            .filter(|u| u.page_type != PageType::Vmsa)
            .map(|u| (u.gpa, u.len(), u.page_type as u8))
            .collect();
        // Adjacent updates of the same type merge in `covered`; merge `expected` the same way.
        let mut merged: Vec<(u64, u64, u8)> = Vec::new();
        for e in expected {
            match merged.last_mut() {
                Some(last) if last.0 + last.1 == e.0 && last.2 == e.2 => last.1 += e.1,
                _ => merged.push(e),
            }
        }
        assert_eq!(covered, merged);
        assert_eq!(pages, merged.iter().map(|m| m.1 / 4096).sum::<u64>());
        assert_eq!(psp.pages.len() as u64, pages, "every page placed once");
        assert!(
            psp.seen
                .iter()
                .filter(|s| matches!(s, Seen::Update { .. }))
                .count()
                > merged.len(),
            "partial progress was exercised"
        );
    }

    #[test]
    fn firmware_errors_are_reported_with_their_status() {
        let mut psp = FakePsp {
            chunk: 1000,
            fail: Some((
                101,
                SevCmdError {
                    errno: libc::EIO,
                    fw_error: 0x16,
                },
            )),
            ..Default::default()
        };
        let plan = plan();
        let mut l = SnpLauncher::new(&mut psp)
            .init(1)
            .unwrap()
            .start(0x30000)
            .unwrap();
        let err = l.apply_plan(&plan, host).unwrap_err();
        assert!(matches!(
            err,
            SnpLaunchError::Command {
                command: "KVM_SEV_SNP_LAUNCH_UPDATE",
                errno: 5,
                fw_error: 0x16
            }
        ));
        assert!(err.to_string().contains("0x16"), "{err}");
    }

    #[test]
    fn refuses_bad_inputs_before_reaching_the_firmware() {
        let mut psp = FakePsp::default();
        assert_eq!(
            SnpLauncher::new(&mut psp).init(0x20).unwrap_err(),
            SnpLaunchError::NotSnp(0x20)
        );
        let mut psp = FakePsp::default();
        assert_eq!(
            SnpLauncher::new(&mut psp)
                .init(1)
                .unwrap()
                .start(0x10000)
                .unwrap_err(),
            SnpLaunchError::BadPolicy(0x10000)
        );
        let mut psp = FakePsp {
            chunk: 1,
            ..Default::default()
        };
        let mut l = SnpLauncher::new(&mut psp)
            .init(1)
            .unwrap()
            .start(0x30000)
            .unwrap();
        assert_eq!(
            l.update(0x1000, PageType::Vmsa, 0x1000, 4096).unwrap_err(),
            SnpLaunchError::VmsaUpdate
        );
        assert!(matches!(
            l.update(0x1001, PageType::Normal, 0x1000, 4096),
            Err(SnpLaunchError::Unaligned { .. })
        ));
        assert!(matches!(
            l.update(0x1000, PageType::Normal, 0x1000, 0),
            Err(SnpLaunchError::Unaligned { .. })
        ));
        let plan = plan();
        assert!(matches!(
            l.apply_plan(&plan, |_, _| None),
            Err(SnpLaunchError::Unmapped { .. })
        ));
    }

    #[test]
    fn certificate_requests_are_enabled_after_start() {
        let mut psp = FakePsp::default();
        let mut l = SnpLauncher::new(&mut psp)
            .init(1)
            .unwrap()
            .start(0x30000)
            .unwrap();
        l.enable_req_certs().unwrap();
        let _ = l;
        assert_eq!(psp.seen.last(), Some(&Seen::ReqCerts));
        let mut psp = FakePsp {
            fail: Some((
                103,
                SevCmdError {
                    errno: libc::EINVAL,
                    fw_error: 0,
                },
            )),
            ..Default::default()
        };
        let mut l = SnpLauncher::new(&mut psp)
            .init(1)
            .unwrap()
            .start(0x30000)
            .unwrap();
        assert!(l
            .enable_req_certs()
            .unwrap_err()
            .to_string()
            .contains("KVM_SEV_SNP_ENABLE_REQ_CERTS"));
    }

    #[test]
    fn id_block_and_author_key_flags() {
        let mut psp = FakePsp {
            chunk: 1,
            ..Default::default()
        };
        let block = [0u8; 96];
        let mut auth = [0u8; 4096];
        auth[4] = 1; // author key algorithm: ECDSA P-384
        let l = SnpLauncher::new(&mut psp)
            .init(1)
            .unwrap()
            .start(0x30000)
            .unwrap();
        l.finish([0; 32], Some((&block, &auth))).unwrap();
        assert_eq!(
            *psp.seen.last().unwrap(),
            Seen::Finish {
                host_data: [0; 32],
                id_block_en: 1,
                auth_key_en: 1
            }
        );
    }

    /// The fake enforces KVM's rules: each case is something the launch code never
    /// does, answered as KVM (sev.c) would.
    #[test]
    fn the_fake_refuses_what_kvm_refuses() {
        use kvm_bindings::{kvm_sev_init, kvm_sev_snp_launch_start as Start};
        let errno = |r: Result<(), SevCmdError>| r.unwrap_err().errno;
        let mut fake = private(FakePsp::default());
        let mut cmds = &mut fake;
        // Commands before INIT2: -ENOTTY.
        let mut st = Start {
            policy: 0x30000,
            ..Default::default()
        };
        assert_eq!(
            errno(cmds.issue(SevRequest::SnpLaunchStart(&mut st))),
            libc::ENOTTY
        );
        // INIT2: flags, SNPActive passed by the VMM, GHCB version 1 or 3.
        for init in [
            kvm_sev_init {
                flags: 1,
                ..Default::default()
            },
            kvm_sev_init {
                vmsa_features: 1,
                ..Default::default()
            },
            kvm_sev_init {
                ghcb_version: 1,
                ..Default::default()
            },
            kvm_sev_init {
                ghcb_version: 3,
                ..Default::default()
            },
        ] {
            let mut init = init;
            assert_eq!(
                errno(cmds.issue(SevRequest::Init2(&mut init))),
                libc::EINVAL,
                "{init:?}"
            );
        }
        let mut init = kvm_sev_init::default();
        cmds.issue(SevRequest::Init2(&mut init)).unwrap();
        assert_eq!(
            cmds.seen[0],
            Seen::Init {
                vmsa_features: 0,
                ghcb: 2
            }
        );
        // A second INIT2: sev_mem_enc_ioctl allows only SNP commands now (-EPERM).
        assert_eq!(errno(cmds.issue(SevRequest::Init2(&mut init))), libc::EPERM);
        // UPDATE and FINISH before START.
        let mut u = kvm_sev_snp_launch_update {
            gfn_start: 1,
            uaddr: 0x7f00_0000_0000,
            len: 4096,
            type_: PageType::Normal as u8,
            ..Default::default()
        };
        assert_eq!(
            errno(cmds.issue(SevRequest::SnpLaunchUpdate(&mut u))),
            libc::EINVAL
        );
        // START: no MBO bit, single socket, MIGRATE_MA (bit 18, outside KVM's
        // SNP_POLICY_MASK_VALID), bits beyond the valid mask, flags.
        for (policy, flags) in [
            (0x10000, 0),
            (0x130000, 0),
            (0x70000, 0),
            (1 << 40 | 0x30000, 0),
            (0x30000, 1),
        ] {
            let mut st = Start {
                policy,
                flags,
                ..Default::default()
            };
            assert_eq!(
                errno(cmds.issue(SevRequest::SnpLaunchStart(&mut st))),
                libc::EINVAL,
                "{policy:#x}"
            );
        }
        cmds.issue(SevRequest::SnpLaunchStart(&mut st)).unwrap();
        assert_eq!(
            errno(cmds.issue(SevRequest::SnpLaunchStart(&mut st))),
            libc::EINVAL,
            "one SNP context"
        );
        // UPDATE: unaligned source (stricter than KVM: the uAPI documents it, no
        // upstream check was found), unaligned or empty length, the VMSA type, flags,
        // a page outside guest_memfd memory.
        let bad = [
            (0x7f00_0000_0008, 4096, PageType::Normal as u8, 0, 1),
            (0x7f00_0000_0000, 4095, PageType::Normal as u8, 0, 1),
            (0x7f00_0000_0000, 0, PageType::Normal as u8, 0, 1),
            (0x7f00_0000_0000, 4096, PageType::Vmsa as u8, 0, 1),
            (0x7f00_0000_0000, 4096, PageType::Normal as u8, 1, 1),
            (0x7f00_0000_0000, 4096, PageType::Normal as u8, 0, 1 << 21),
        ];
        for (uaddr, len, type_, flags, gfn_start) in bad {
            let mut u = kvm_sev_snp_launch_update {
                gfn_start,
                uaddr,
                len,
                type_,
                flags,
                ..Default::default()
            };
            assert_eq!(
                errno(cmds.issue(SevRequest::SnpLaunchUpdate(&mut u))),
                libc::EINVAL,
                "{u:?}"
            );
        }
        // A page updated twice: kvm_gmem_populate's -EEXIST ("already prepared")
        // before the firmware, which snp_launch_update reports as -EIO with
        // fw_error 0.
        cmds.issue(SevRequest::SnpLaunchUpdate(&mut u)).unwrap();
        assert_eq!((u.len, u.gfn_start, u.uaddr), (0, 2, 0x7f00_0000_1000));
        let mut again = kvm_sev_snp_launch_update {
            gfn_start: 1,
            uaddr: 0x7f00_0000_0000,
            len: 4096,
            type_: PageType::Normal as u8,
            ..Default::default()
        };
        let e = cmds
            .issue(SevRequest::SnpLaunchUpdate(&mut again))
            .unwrap_err();
        assert_eq!((e.errno, e.fw_error), (libc::EIO, 0));
        // Certificate requests after the vCPUs exist; a second FINISH.
        cmds.create_vcpus(1);
        assert_eq!(
            errno(cmds.issue(SevRequest::SnpEnableReqCerts)),
            libc::EINVAL
        );
        let mut fin = kvm_sev_snp_launch_finish::default();
        cmds.issue(SevRequest::SnpLaunchFinish(&mut fin)).unwrap();
        assert_eq!(
            errno(cmds.issue(SevRequest::SnpLaunchFinish(&mut fin))),
            libc::EINVAL
        );
    }

    /// A CPUID page the firmware rejects comes back corrected in the source (sev.c
    /// `sev_gmem_post_populate`), and the launch reports the firmware status; the
    /// page the launch builds passes.
    #[test]
    fn a_rejected_cpuid_page_is_reported_with_the_correction() {
        use crate::tee::launch::snp_cpuid_table;
        let mut psp = private(FakePsp {
            check_cpuid_pages: true,
            ..Default::default()
        });
        let mut l = SnpLauncher::new(&mut psp)
            .init(1)
            .unwrap()
            .start(0x30000)
            .unwrap();
        let leaf = |ebx| kvm_bindings::kvm_cpuid_entry2 {
            function: 0xD,
            index: 0,
            ebx,
            ..Default::default()
        };
        // Page-aligned buffers for the two pages.
        let mut buf = vec![0u8; 3 * 4096];
        let off = (4096 - buf.as_ptr() as usize % 4096) % 4096;
        let good = snp_cpuid_table(&[leaf(0x988)]).unwrap();
        buf[off..off + good.len()].copy_from_slice(&good);
        // The fake (as KVM) writes the corrected page back through this address:
        // take it from a mutable borrow, anew after each write through `buf`.
        let uaddr = buf[off..].as_mut_ptr() as u64;
        l.update(0x1000, PageType::Cpuid, uaddr, 4096).unwrap();
        // A page with KVM's full-size EBX for XCR0_IN = 1.
        let mut bad = good.clone();
        bad[16 + 28..16 + 32].copy_from_slice(&0x988u32.to_le_bytes());
        buf[off..off + bad.len()].copy_from_slice(&bad);
        let uaddr = buf[off..].as_mut_ptr() as u64;
        let err = l.update(0x2000, PageType::Cpuid, uaddr, 4096).unwrap_err();
        assert!(matches!(
            err,
            SnpLaunchError::Command {
                command: "KVM_SEV_SNP_LAUNCH_UPDATE",
                fw_error: 0x16,
                ..
            }
        ));
        assert_eq!(
            u32::from_le_bytes(buf[off + 16 + 28..off + 16 + 32].try_into().unwrap()),
            0x240,
            "the firmware's correction is written back"
        );
    }

    /// KVM's SNP_POLICY_MASK_VALID (sev.c) has no bit 18 (MIGRATE_MA):
    /// snp_launch_start answers -EINVAL, and so does the fake.
    #[test]
    fn the_migrate_ma_policy_bit_is_refused_as_kvm_does() {
        let mut psp = FakePsp::default();
        let err = SnpLauncher::new(&mut psp)
            .init(1)
            .unwrap()
            .start(0x30000 | (1 << 18))
            .unwrap_err();
        assert!(
            matches!(
                err,
                SnpLaunchError::Command {
                    command: "KVM_SEV_SNP_LAUNCH_START",
                    errno: libc::EINVAL,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!psp.started);
    }

    /// snp_launch_finish reads `auth_key_en` only when `id_block_en` is set: without
    /// an ID block it is silently ignored (the firmware gets 0), not an error.
    #[test]
    fn an_author_key_flag_without_an_id_block_is_ignored() {
        let mut psp = FakePsp::default();
        let mut cmds = &mut psp;
        cmds.issue(SevRequest::Init2(&mut kvm_sev_init::default()))
            .unwrap();
        let mut st = kvm_sev_snp_launch_start {
            policy: 0x30000,
            ..Default::default()
        };
        cmds.issue(SevRequest::SnpLaunchStart(&mut st)).unwrap();
        let mut fin = kvm_sev_snp_launch_finish {
            auth_key_en: 1,
            ..Default::default()
        };
        cmds.issue(SevRequest::SnpLaunchFinish(&mut fin)).unwrap();
        assert_eq!(
            psp.seen.last(),
            Some(&Seen::Finish {
                host_data: [0; 32],
                id_block_en: 0,
                auth_key_en: 0
            })
        );
    }

    /// A page populated twice: kvm_gmem_populate stops with -EEXIST ("already
    /// prepared") before the firmware, after the pages it did; snp_launch_update
    /// reports the error as -EIO with fw_error 0 (no firmware status).
    #[test]
    fn a_page_populated_twice_is_eio_without_a_firmware_status() {
        let mut psp = private(FakePsp::default());
        let mut l = SnpLauncher::new(&mut psp)
            .init(1)
            .unwrap()
            .start(0x30000)
            .unwrap();
        l.update(0x3000, PageType::Zero, 0, 4096).unwrap();
        // 0x2000 is new, 0x3000 is not: one page of progress, then the error.
        let err = l.update(0x2000, PageType::Zero, 0, 0x2000).unwrap_err();
        assert_eq!(
            err,
            SnpLaunchError::Command {
                command: "KVM_SEV_SNP_LAUNCH_UPDATE",
                errno: libc::EIO,
                fw_error: 0
            }
        );
        let _ = l;
        assert_eq!(
            psp.pages.keys().copied().collect::<Vec<_>>(),
            [0x2000, 0x3000]
        );
    }

    /// kvm_gmem_populate needs the PRIVATE memory attribute on every GFN
    /// (`kvm_range_has_memory_attributes`): without it LAUNCH_UPDATE fails (-EIO,
    /// fw_error 0) and nothing is placed; it stops at the first shared page.
    #[test]
    fn launch_update_needs_the_private_attribute() {
        let mut psp = FakePsp::default();
        let mut l = SnpLauncher::new(&mut psp)
            .init(1)
            .unwrap()
            .start(0x30000)
            .unwrap();
        let err = l.update(0x1000, PageType::Zero, 0, 4096).unwrap_err();
        assert!(
            matches!(
                err,
                SnpLaunchError::Command {
                    errno: libc::EIO,
                    fw_error: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        let _ = l;
        assert!(psp.pages.is_empty());
        psp.set_memory_attributes(0x1000, 0x1000, KVM_MEMORY_ATTRIBUTE_PRIVATE)
            .unwrap();
        let mut cmds = &mut psp;
        let mut u = kvm_sev_snp_launch_update {
            gfn_start: 1,
            len: 0x2000,
            type_: PageType::Zero as u8,
            ..Default::default()
        };
        cmds.issue(SevRequest::SnpLaunchUpdate(&mut u)).unwrap();
        assert_eq!(
            (u.gfn_start, u.len),
            (2, 0x1000),
            "stopped at the shared page"
        );
        // Attributes are set page-aligned only (kvm_vm_ioctl_set_mem_attributes).
        assert_eq!(
            psp.set_memory_attributes(0x1800, 0x1000, KVM_MEMORY_ATTRIBUTE_PRIVATE),
            Err(libc::EINVAL)
        );
    }

    /// The SEV commands reach the PSP through `kvm_sev_cmd.sev_fd`: without an
    /// open /dev/sev, START fails in snp_context_create (-ENOTTY), LAUNCH_UPDATE in
    /// sev_gmem_post_populate (-EIO, fw_error 0) and FINISH in
    /// snp_launch_update_vmsa (-EBADF).
    #[test]
    fn sev_commands_need_an_open_sev_fd() {
        let mut psp = private(FakePsp {
            sev_fd_valid: false,
            ..Default::default()
        });
        let e = SnpLauncher::new(&mut psp)
            .init(1)
            .unwrap()
            .start(0x30000)
            .unwrap_err();
        assert!(
            matches!(
                e,
                SnpLaunchError::Command {
                    errno: libc::ENOTTY,
                    ..
                }
            ),
            "{e:?}"
        );
        // Started with a good fd, then a bad one.
        let mut psp = private(FakePsp::default());
        let mut l = SnpLauncher::new(&mut psp)
            .init(1)
            .unwrap()
            .start(0x30000)
            .unwrap();
        l.cmds.sev_fd_valid = false;
        let e = l.update(0x1000, PageType::Zero, 0, 4096).unwrap_err();
        assert!(
            matches!(
                e,
                SnpLaunchError::Command {
                    errno: libc::EIO,
                    fw_error: 0,
                    ..
                }
            ),
            "{e:?}"
        );
        l.cmds.create_vcpus(1);
        let e = l.finish([0; 32], None).unwrap_err();
        assert!(
            matches!(
                e,
                SnpLaunchError::Command {
                    errno: libc::EBADF,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(psp.pages.is_empty() && !psp.finished);
    }

    /// The fake reads the ID block as psp_copy_user_blob does (copy_from_user): an
    /// address that is not mapped is -EFAULT, never a dereference in the test.
    #[test]
    fn an_unmapped_id_block_is_efault() {
        let mut psp = FakePsp::default();
        let mut cmds = &mut psp;
        cmds.issue(SevRequest::Init2(&mut kvm_sev_init::default()))
            .unwrap();
        let mut st = kvm_sev_snp_launch_start {
            policy: 0x30000,
            ..Default::default()
        };
        cmds.issue(SevRequest::SnpLaunchStart(&mut st)).unwrap();
        let auth = [0u8; 4096];
        let mut fin = kvm_sev_snp_launch_finish {
            id_block_en: 1,
            id_block_uaddr: 0x1000, // never mapped in a Linux process
            id_auth_uaddr: auth.as_ptr() as u64,
            ..Default::default()
        };
        assert_eq!(
            cmds.issue(SevRequest::SnpLaunchFinish(&mut fin))
                .unwrap_err()
                .errno,
            libc::EFAULT
        );
        assert!(!psp.finished);
    }
}
