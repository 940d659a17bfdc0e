//! A fake of KVM's SEV-SNP launch commands (Linux v6.16 `arch/x86/kvm/svm/sev.c`)
//! and of the SEV firmware behind them, enforcing KVM's checks.

use std::collections::BTreeMap;

use super::{copy_from_user, copy_to_user, page_aligned, slot_of, PrivateAttrs, PAGE};
use crate::vstate::sev::{SevCmdError, SevCommands, SevRequest};

/// `SNP_POLICY_MASK_RSVD_MBO` (bit 17).
pub(crate) const SNP_POLICY_MASK_RSVD_MBO: u64 = 1 << 17;
/// `SNP_POLICY_MASK_SINGLE_SOCKET` (bit 20), refused by KVM.
pub(crate) const SNP_POLICY_MASK_SINGLE_SOCKET: u64 = 1 << 20;
/// `SNP_POLICY_MASK_VALID` (sev.c): ABI minor/major (bits 0..=15), SMT (16), MBO
/// (17), debug (19), single socket (20). Bit 18 (MIGRATE_MA) is NOT in KVM's mask:
/// `snp_launch_start` refuses a policy with it (-EINVAL).
pub(crate) const SNP_POLICY_MASK_VALID: u64 =
    0xFFFF | (1 << 16) | (1 << 17) | (1 << 19) | (1 << 20);
/// `GHCB_VERSION_MAX`.
pub(crate) const GHCB_VERSION_MAX: u16 = 2;
/// SEV firmware status INVALID_PARAM.
pub(crate) const SEV_RET_INVALID_PARAM: u32 = 0x16;

/// `KVM_SEV_SNP_PAGE_TYPE_*` KVM accepts in LAUNCH_UPDATE (VMSA, 2, is not one).
const PAGE_TYPES: [u8; 5] = [1, 3, 4, 5, 6];
/// `KVM_SEV_SNP_PAGE_TYPE_ZERO`: no source.
const PAGE_TYPE_ZERO: u8 = 3;
/// `KVM_SEV_SNP_PAGE_TYPE_CPUID`.
const PAGE_TYPE_CPUID: u8 = 6;

/// What the fake accepted, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SevSeen {
    /// KVM_SEV_INIT2.
    Init {
        /// VMSA features.
        vmsa_features: u64,
        /// GHCB version (after KVM's default of 2).
        ghcb: u16,
    },
    /// SNP_LAUNCH_START.
    Start {
        /// Policy.
        policy: u64,
    },
    /// One LAUNCH_UPDATE call, as far as it got.
    Update {
        /// First GFN.
        gfn: u64,
        /// Source.
        uaddr: u64,
        /// Bytes processed by this call.
        len: u64,
        /// Page type.
        page_type: u8,
    },
    /// SNP_LAUNCH_FINISH.
    Finish {
        /// HOST_DATA.
        host_data: [u8; 32],
        /// ID block present.
        id_block_en: u8,
        /// Author key present.
        auth_key_en: u8,
    },
    /// SNP_ENABLE_REQ_CERTS.
    ReqCerts,
}

fn einval() -> SevCmdError {
    err(libc::EINVAL)
}

fn err(errno: i32) -> SevCmdError {
    SevCmdError { errno, fw_error: 0 }
}

/// KVM + the SEV firmware for one SNP VM.
#[derive(Debug)]
pub(crate) struct FakeKvmSnp {
    /// `sev_supported_vmsa_features` (DebugSwap, bit 5, on a typical host; never
    /// SNPActive, which KVM sets itself).
    pub supported_vmsa_features: u64,
    /// guest_memfd-backed memslots (gpa, size).
    pub memory: Vec<(u64, u64)>,
    /// Pages per LAUNCH_UPDATE call (KVM may stop early and update the struct).
    pub chunk: u64,
    /// Every `eagain_every`-th call answers -EAGAIN ("retry").
    pub eagain_every: usize,
    /// A command (id) to fail with this error.
    pub fail: Option<(u32, SevCmdError)>,
    /// vCPUs created so far.
    pub vcpus: u32,
    /// Read CPUID pages from `uaddr` and check them as the firmware does (the
    /// source must then be real memory).
    pub check_cpuid_pages: bool,
    /// After INIT2 (`sev->active`).
    pub active: bool,
    /// After LAUNCH_START (`sev->snp_context`).
    pub started: bool,
    /// After LAUNCH_FINISH.
    pub finished: bool,
    /// Certificate requests forwarded.
    pub req_certs: bool,
    /// Pages placed, with their type.
    pub pages: BTreeMap<u64, u8>,
    /// The ID block and auth structure LAUNCH_FINISH read (first bytes).
    pub id: Option<(Vec<u8>, Vec<u8>)>,
    /// What was accepted.
    pub seen: Vec<SevSeen>,
    /// Commands issued.
    pub calls: usize,
    /// Whether `kvm_sev_cmd.sev_fd` names an open `/dev/sev` (the launch code's
    /// `KvmSev` passes the fd it opened; a closed or foreign fd is refused where
    /// KVM hands it to the PSP driver, `__sev_issue_cmd`: -EBADF).
    pub sev_fd_valid: bool,
    /// KVM_SET_MEMORY_ATTRIBUTES state: `kvm_gmem_populate` needs PRIVATE.
    pub attrs: PrivateAttrs,
}

impl Default for FakeKvmSnp {
    fn default() -> Self {
        Self {
            supported_vmsa_features: 1 << 5,
            memory: vec![(0, 1 << 32)],
            chunk: 1 << 20,
            eagain_every: 0,
            fail: None,
            vcpus: 0,
            check_cpuid_pages: false,
            active: false,
            started: false,
            finished: false,
            req_certs: false,
            pages: BTreeMap::new(),
            id: None,
            seen: Vec::new(),
            calls: 0,
            sev_fd_valid: true,
            attrs: PrivateAttrs::default(),
        }
    }
}

impl FakeKvmSnp {
    /// KVM_CREATE_VCPU (after which INIT2 and certificate enabling are refused).
    pub fn create_vcpus(&mut self, n: u32) {
        self.vcpus += n;
    }

    /// KVM_SET_MEMORY_ATTRIBUTES on this VM (the launch sets PRIVATE on guest RAM
    /// before LAUNCH_UPDATE, `PrivateMemory::attach`).
    pub fn set_memory_attributes(&mut self, gpa: u64, size: u64, attrs: u64) -> Result<(), i32> {
        self.attrs.set(gpa, size, attrs)
    }

    fn init2(&mut self, i: &mut kvm_bindings::kvm_sev_init) -> Result<(), SevCmdError> {
        // __sev_guest_init: before vCPUs, flags zero, supported VMSA features only,
        // GHCB version <= 2 (0 means 2), SNP needs >= 2, once.
        if self.vcpus > 0 || i.flags != 0 {
            return Err(einval());
        }
        // Stricter than KVM (which does not read them): pad1/pad2 are zero.
        if i.pad1 != 0 || i.pad2.iter().any(|&p| p != 0) {
            return Err(einval());
        }
        if i.vmsa_features & !self.supported_vmsa_features != 0 {
            return Err(einval());
        }
        if i.ghcb_version > GHCB_VERSION_MAX {
            return Err(einval());
        }
        let ghcb = if i.ghcb_version == 0 {
            2
        } else {
            i.ghcb_version
        };
        if ghcb < 2 {
            return Err(einval());
        }
        self.active = true;
        self.seen.push(SevSeen::Init {
            vmsa_features: i.vmsa_features,
            ghcb,
        });
        Ok(())
    }

    fn start(&mut self, s: &mut kvm_bindings::kvm_sev_snp_launch_start) -> Result<(), SevCmdError> {
        // sev_mem_enc_ioctl: an SNP command before INIT2 -> -ENOTTY.
        if !self.active {
            return Err(err(libc::ENOTTY));
        }
        // snp_launch_start: one context only; flags zero; MBO bit set; no bit outside
        // the valid mask; single-socket refused.
        if self.started || s.flags != 0 {
            return Err(einval());
        }
        if s.policy & SNP_POLICY_MASK_RSVD_MBO == 0
            || s.policy & !SNP_POLICY_MASK_VALID != 0
            || s.policy & SNP_POLICY_MASK_SINGLE_SOCKET != 0
        {
            return Err(einval());
        }
        // Stricter than KVM: pad0/pad1 are zero.
        if s.pad0.iter().any(|&p| p != 0) || s.pad1.iter().any(|&p| p != 0) {
            return Err(einval());
        }
        // snp_context_create (after the policy checks since v6.13): SNP_GCTX_CREATE
        // through `argp->sev_fd`; when the PSP command fails (a bad fd: -EBADF
        // inside) the context is NULL -> -ENOTTY.
        if !self.sev_fd_valid {
            return Err(err(libc::ENOTTY));
        }
        self.started = true;
        self.seen.push(SevSeen::Start { policy: s.policy });
        Ok(())
    }

    fn update(
        &mut self,
        u: &mut kvm_bindings::kvm_sev_snp_launch_update,
    ) -> Result<(), SevCmdError> {
        if !self.active {
            return Err(err(libc::ENOTTY));
        }
        // snp_launch_update: needs the SNP context (START done).
        if !self.started {
            return Err(einval());
        }
        // After LAUNCH_FINISH the guest context is RUNNING: the firmware refuses.
        if self.finished {
            return Err(SevCmdError {
                errno: libc::EIO,
                fw_error: 0x1, // INVALID_PLATFORM_STATE
            });
        }
        // snp_launch_update: len page-aligned, flags zero, a known type (never VMSA).
        // (len == 0 reaches kvm_gmem_populate's `npages <= 0` WARN: -EINVAL there,
        // which snp_launch_update turns into -EIO; the fake keeps -EINVAL.)
        if u.len == 0 || !page_aligned(u.len) || u.flags != 0 || !PAGE_TYPES.contains(&u.type_) {
            return Err(einval());
        }
        // Stricter than KVM: a page-aligned source. No such check was found in
        // snp_launch_update, kvm_gmem_populate or sev_gmem_post_populate (v6.12-v6.16);
        // Documentation/virt/kvm/x86/amd-memory-encryption.rst documents `uaddr` as
        // 4k-aligned, so the fake holds the launch code to the documented contract.
        if u.type_ != PAGE_TYPE_ZERO && !page_aligned(u.uaddr) {
            return Err(einval());
        }
        // Stricter than KVM: pad0/pad1/pad2 are zero.
        if u.pad0 != 0 || u.pad1 != 0 || u.pad2.iter().any(|&p| p != 0) {
            return Err(einval());
        }
        // The first GFN's memslot must be guest_memfd-backed; kvm_gmem_populate
        // stops at the end of that slot.
        let gpa = u.gfn_start * PAGE;
        let Some((start, size)) = slot_of(&self.memory, gpa) else {
            return Err(einval());
        };
        if self.eagain_every > 0 && self.calls % self.eagain_every == 0 {
            return Err(err(libc::EAGAIN));
        }
        let in_slot = (start + size - gpa) / PAGE;
        let want = (u.len / PAGE).min(self.chunk.max(1)).min(in_slot);
        // kvm_gmem_populate, page by page: the GFN must have the PRIVATE attribute
        // (`kvm_range_has_memory_attributes` -> -EINVAL) and its guest_memfd folio must
        // not be prepared already ("already prepared" -> -EEXIST). It returns the pages
        // done before a failure, or the error when it fails on the first page;
        // snp_launch_update turns any error into -EIO with the firmware status of
        // the populate callback, which is 0 when the firmware was never reached.
        let mut n = 0;
        let mut stop = None;
        while n < want {
            let g = gpa + n * PAGE;
            if !self.attrs.is_private(g) {
                stop = Some(libc::EINVAL);
                break;
            }
            if self.pages.contains_key(&g) {
                stop = Some(libc::EEXIST);
                break;
            }
            if u.type_ == PAGE_TYPE_CPUID && self.check_cpuid_pages {
                let src = u.uaddr + n * PAGE;
                // sev_gmem_post_populate: copy_from_user of the source (-EFAULT).
                let page = match copy_from_user(src, PAGE as usize) {
                    Ok(p) => p,
                    Err(e) => {
                        stop = Some(e);
                        break;
                    }
                };
                if let Err(fixed) = firmware_check_cpuid_page(&page) {
                    // sev.c sev_gmem_post_populate: on INVALID_PARAM for a CPUID
                    // page, KVM copies the firmware's corrected page back to the
                    // source, for the VMM to report.
                    let _ = copy_to_user(src, &fixed);
                    return Err(SevCmdError {
                        errno: libc::EIO,
                        fw_error: SEV_RET_INVALID_PARAM,
                    });
                }
            }
            // sev_gmem_post_populate: SNP_LAUNCH_UPDATE through `argp->sev_fd`
            // (__sev_issue_cmd: -EBADF without an open /dev/sev).
            if !self.sev_fd_valid {
                stop = Some(libc::EBADF);
                break;
            }
            n += 1;
        }
        if n == 0 && stop.is_some() {
            return Err(SevCmdError {
                errno: libc::EIO,
                fw_error: 0,
            });
        }
        for k in 0..n {
            self.pages.insert(gpa + k * PAGE, u.type_);
        }
        self.seen.push(SevSeen::Update {
            gfn: u.gfn_start,
            uaddr: u.uaddr,
            len: n * PAGE,
            page_type: u.type_,
        });
        // Partial progress: the struct describes the rest.
        u.gfn_start += n;
        u.len -= n * PAGE;
        if u.type_ != PAGE_TYPE_ZERO {
            u.uaddr += n * PAGE;
        }
        Ok(())
    }

    fn finish(
        &mut self,
        f: &mut kvm_bindings::kvm_sev_snp_launch_finish,
    ) -> Result<(), SevCmdError> {
        if !self.active {
            return Err(err(libc::ENOTTY));
        }
        // snp_launch_finish: needs the SNP context; flags zero.
        if !self.started || self.finished || f.flags != 0 {
            return Err(einval());
        }
        // Stricter than KVM: pad0/pad1 are zero.
        if f.pad0.iter().any(|&p| p != 0) || f.pad1.iter().any(|&p| p != 0) {
            return Err(einval());
        }
        // snp_launch_finish -> snp_launch_update_vmsa: one SNP_LAUNCH_UPDATE per vCPU
        // through `argp->sev_fd` (__sev_issue_cmd: -EBADF without an open /dev/sev).
        if self.vcpus > 0 && !self.sev_fd_valid {
            return Err(err(libc::EBADF));
        }
        // snp_launch_finish: `auth_key_en` is read only inside `if (params.id_block_en)`,
        // so without an ID block it is silently ignored (the firmware gets 0).
        let auth_key_en = if f.id_block_en != 0 {
            u8::from(f.auth_key_en != 0)
        } else {
            0
        };
        if f.id_block_en != 0 {
            // psp_copy_user_blob of KVM_SEV_SNP_ID_BLOCK_SIZE / KVM_SEV_SNP_ID_AUTH_SIZE
            // (copy_from_user: an unreadable source is -EFAULT).
            let b = copy_from_user(f.id_block_uaddr, 96).map_err(err)?;
            let a = copy_from_user(f.id_auth_uaddr, 4096).map_err(err)?;
            self.id = Some((b, a));
        }
        self.finished = true;
        self.seen.push(SevSeen::Finish {
            host_data: f.host_data,
            id_block_en: f.id_block_en,
            auth_key_en,
        });
        Ok(())
    }

    fn enable_req_certs(&mut self) -> Result<(), SevCmdError> {
        if !self.active {
            return Err(err(libc::ENOTTY));
        }
        // KVM_SEV_SNP_ENABLE_REQ_CERTS: an SNP guest, before any vCPU.
        if !self.started || self.vcpus > 0 {
            return Err(einval());
        }
        self.req_certs = true;
        self.seen.push(SevSeen::ReqCerts);
        Ok(())
    }
}

impl SevCommands for &mut FakeKvmSnp {
    fn issue(&mut self, req: SevRequest<'_>) -> Result<(), SevCmdError> {
        self.calls += 1;
        if let Some((id, e)) = self.fail {
            if id == req.id() {
                return Err(e);
            }
        }
        // sev_mem_enc_ioctl: once KVM_SEV_INIT2 made this an SNP guest, only SNP
        // commands (ids >= KVM_SEV_SNP_LAUNCH_START) are allowed: -EPERM.
        if self.active && req.id() < crate::vstate::sev::KVM_SEV_SNP_LAUNCH_START {
            return Err(err(libc::EPERM));
        }
        match req {
            SevRequest::Init2(i) => self.init2(i),
            SevRequest::SnpLaunchStart(s) => self.start(s),
            SevRequest::SnpLaunchUpdate(u) => self.update(u),
            SevRequest::SnpLaunchFinish(f) => self.finish(f),
            SevRequest::SnpEnableReqCerts => self.enable_req_certs(),
        }
    }
}

/// XCR0 bits (x87 0, SSE 1, AVX 2, opmask 5, ZMM_Hi256 6, Hi16_ZMM 7, PKRU 9).
const XCR0_AVX: u64 = 1 << 2;
const XCR0_KREGS: u64 = 1 << 5;
const XCR0_ZMMHI: u64 = 1 << 6;
const XCR0_HIZMM: u64 = 1 << 7;
const XCR0_MPK: u64 = 1 << 9;

/// The SEV firmware's check of a CPUID page (SNP_LAUNCH_UPDATE, page type CPUID),
/// modelled on AMD's open-source SEV firmware (`cpuid_lookup.c`,
/// `sanitize_cpuid_list`, SEV-SNP ABI spec "CPUID Reporting"): at most 64 entries,
/// zero reserved words, and for Fn0000_000D sub-functions 0 and 1 an EBX EXACTLY
/// equal to the XSAVE area size implied by XCR0_IN (0x240 for x87/SSE, 0x340 with
/// AVX, 0x380 opmask, 0x580 ZMM_Hi256, 0x980 Hi16_ZMM, 0x988 PKRU). On failure the
/// firmware answers INVALID_PARAM and writes the corrected page back; this returns
/// the corrected page.
pub(crate) fn firmware_check_cpuid_page(page: &[u8]) -> Result<(), Vec<u8>> {
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(w)
    };
    let mut fixed = page.to_vec();
    let count = u32_at(page, 0) as usize;
    let mut failed = false;
    if count > 64 {
        fixed[0..4].copy_from_slice(&64u32.to_le_bytes());
        return Err(fixed);
    }
    for i in 0..count {
        let o = 16 + i * 48;
        let (eax_in, ecx_in, xcr0_in) = (u32_at(page, o), u32_at(page, o + 4), u64_at(page, o + 8));
        if u64_at(page, o + 40) != 0 {
            failed = true;
            fixed[o + 40..o + 48].fill(0);
        }
        if eax_in == 0xD && ecx_in <= 1 {
            let want: u32 = if xcr0_in & XCR0_MPK != 0 {
                0x988
            } else if xcr0_in & XCR0_HIZMM != 0 {
                0x980
            } else if xcr0_in & XCR0_ZMMHI != 0 {
                0x580
            } else if xcr0_in & XCR0_KREGS != 0 {
                0x380
            } else if xcr0_in & XCR0_AVX != 0 {
                0x340
            } else {
                0x240
            };
            if u32_at(page, o + 28) != want {
                failed = true;
                fixed[o + 28..o + 32].copy_from_slice(&want.to_le_bytes());
            }
        }
    }
    if failed {
        Err(fixed)
    } else {
        Ok(())
    }
}
