//! SEV-SNP evidence through the real guest-request path (AMD GHCB spec 2.x §4.1.8
//! "SNP Guest Request", SEV-SNP ABI spec "Guest Messages"; the same protocol as Linux
//! `drivers/virt/coco/sev-guest`): an MSG_REPORT_REQ encrypted with VMPCK0 from the
//! secrets page, sent with the Extended Guest Request NAE through the GHCB, the
//! response decrypted and checked (sequence number, type, key), the certificate table
//! returned with it.
//!
//! This guest runs at CPL3 (module `boot`), where RDMSR/WRMSR/PVALIDATE/VMGEXIT do not
//! exist; it uses the emulator trap (`out 0xE1..0xE4, al` with every other register
//! set as for the instruction; host-vmm `tee::emu_snp`). The trap is chosen from the
//! measured command line only (`cvm.tee_trap=port`), never from anything the host
//! answers. All protocol logic above the trap is what a CPL0 guest on hardware does.
//!
//! Memory: the messages and the certificate buffer live in one 2 MiB block of the
//! heap, which the firmware validated as private; it is rescinded (PVALIDATE with
//! validate = 0) and converted to shared (Page State Change NAE, one 2 MiB entry)
//! before the host may see it, as Linux's `set_memory_decrypted` does. The GHCB is the
//! firmware's, already registered at 0x9000; the secrets page is at 0xA000 (the
//! firmware's SEV metadata).

use alloc::alloc::{alloc_zeroed, Layout};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::arch::asm;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use guest_agent::evidence::{Evidence, EvidenceError, EvidenceProvider, Tee};
use zeroize::Zeroizing;

const GHCB: u64 = 0x9000;
const SECRETS: u64 = 0xA000;
const MSR_GHCB: u32 = 0xC001_0130;
const MSR_SEV_STATUS: u32 = 0xC001_0131;
const TWO_MIB: usize = 0x20_0000;
const HDR: usize = 0x60;
const REPORT_LEN: usize = 0x4A0;
/// Pages for the certificate table (ARK, ASK, VCEK DER: a few KiB).
const CERT_PAGES: u64 = 8;
/// GHCB offsets.
const RAX: usize = 0x1F8;
const RBX: usize = 0x318;
const SW_EXIT_CODE: usize = 0x390;
const SW_EXIT_INFO_1: usize = 0x398;
const SW_EXIT_INFO_2: usize = 0x3A0;
const SW_SCRATCH: usize = 0x3A8;
const VALID_BITMAP: usize = 0x3F0;
const SHARED_BUFFER: usize = 0x800;

fn err(what: &str) -> EvidenceError {
    EvidenceError::Unavailable(what.to_string())
}

/// RDMSR through the trap.
fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the emulator trap is an `out` to a VMM port (IOPL 3); the VMM writes
    // EDX:EAX as RDMSR would.
    unsafe {
        asm!("out 0xE3, al", in("ecx") msr, inout("eax") 0u32 => lo, inout("edx") 0u32 => hi, options(nostack))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// WRMSR through the trap.
fn wrmsr(msr: u32, v: u64) {
    // SAFETY: as `rdmsr`.
    unsafe {
        asm!("out 0xE4, al", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack))
    }
}

/// VMGEXIT through the trap.
fn vmgexit() {
    // SAFETY: as `rdmsr`; the VMM may write the GHCB and the shared pages it names.
    unsafe { asm!("out 0xE2, al", in("al") 0u8, options(nostack)) }
}

/// PVALIDATE through the trap: (RAX, CF).
fn pvalidate(va: u64, huge: bool, validate: bool) -> (u64, bool) {
    let rc: u64;
    let cf: u8;
    // SAFETY: as `rdmsr`; RAX/ECX/EDX as for PVALIDATE, the VMM sets RAX and CF.
    unsafe {
        asm!("out 0xE1, al", "setc {cf}", cf = out(reg_byte) cf,
             inout("rax") va => rc, in("ecx") u32::from(huge), in("edx") u32::from(validate),
             options(nostack))
    }
    (rc, cf != 0)
}

fn ghcb() -> &'static mut [u8; 4096] {
    // SAFETY: the firmware's GHCB page, identity-mapped, shared and registered for this
    // (only) vCPU; nothing else uses it while the guest runs.
    unsafe { &mut *(GHCB as *mut [u8; 4096]) }
}

fn put(g: &mut [u8; 4096], off: usize, v: u64) {
    g[off..off + 8].copy_from_slice(&v.to_le_bytes());
    let q = off / 8;
    g[VALID_BITMAP + q / 8] |= 1 << (q % 8);
}

fn get(g: &[u8; 4096], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&g[off..off + 8]);
    u64::from_le_bytes(b)
}

/// One GHCB page request: returns (sw_exit_info_1, sw_exit_info_2).
fn ghcb_call(code: u64, info1: u64, info2: u64, setup: impl FnOnce(&mut [u8; 4096])) -> (u64, u64) {
    let g = ghcb();
    g[VALID_BITMAP..VALID_BITMAP + 16].fill(0);
    put(g, SW_EXIT_CODE, code);
    put(g, SW_EXIT_INFO_1, info1);
    put(g, SW_EXIT_INFO_2, info2);
    setup(g);
    g[0xFFA..0xFFC].copy_from_slice(&2u16.to_le_bytes());
    g[0xFFC..0x1000].fill(0);
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    wrmsr(MSR_GHCB, GHCB);
    vmgexit();
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    let g = ghcb();
    (get(g, SW_EXIT_INFO_1), get(g, SW_EXIT_INFO_2))
}

/// Whether this guest runs under SEV-SNP with the emulator trap: the measured command
/// line asks for the trap (`cvm.tee_trap=port`) and SEV_STATUS says SNP.
pub fn active(cmdline: &str) -> bool {
    cmdline
        .split_ascii_whitespace()
        .any(|w| w == "cvm.tee_trap=port")
        && rdmsr(MSR_SEV_STATUS) & 0b100 != 0
}

/// Makes `[gpa, gpa + size)` (2 MiB aligned, validated private heap RAM) shared for the
/// devices, as Linux's `set_memory_decrypted` does: each 2 MiB page is rescinded
/// (PVALIDATE validate = 0; page by page where the RMP holds 4 KiB entries) and then
/// converted with one 2 MiB Page State Change entry.
pub fn share(gpa: u64, size: u64) -> Result<(), String> {
    let mut block = gpa;
    while block < gpa + size {
        let (rc, unchanged) = pvalidate(block, true, false);
        if rc == 6 {
            // FAIL_SIZEMISMATCH: 4 KiB RMP entries.
            for p in (block..block + TWO_MIB as u64).step_by(4096) {
                let (rc, unchanged) = pvalidate(p, false, false);
                if rc != 0 || unchanged {
                    return Err(format!("PVALIDATE (rescind) of {p:#x}: rc {rc}"));
                }
            }
        } else if rc != 0 || unchanged {
            return Err(format!(
                "PVALIDATE (rescind) of {block:#x} failed: rc {rc}, unchanged {unchanged}"
            ));
        }
        let entry = block | (2 << 52) | (1 << 56);
        let (_, info2) = ghcb_call(0x8000_0010, 0, 0, |g| {
            let b = SHARED_BUFFER;
            g[b..b + 8].fill(0); // cur_entry 0, end_entry 0
            g[b + 8..b + 16].copy_from_slice(&entry.to_le_bytes());
            put(g, SW_SCRATCH, GHCB + b as u64);
        });
        let g = ghcb();
        if info2 != 0 || u16::from_le_bytes([g[SHARED_BUFFER], g[SHARED_BUFFER + 1]]) != 1 {
            return Err(format!(
                "page-state change of {block:#x} to shared failed ({info2:#x})"
            ));
        }
        block += TWO_MIB as u64;
    }
    Ok(())
}

/// The guest side of the SNP guest-message channel.
pub struct SnpGuest {
    /// The 2 MiB shared block: request page, response page, certificate pages.
    shared: u64,
    vmpck0: Zeroizing<[u8; 32]>,
    /// The last sequence number used (Linux keeps it in the secrets page's OS area).
    seqno: u64,
}

impl core::fmt::Debug for SnpGuest {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SnpGuest(seqno {})", self.seqno)
    }
}

impl SnpGuest {
    /// SNP through the emulator trap when the measured command line asks for it and
    /// SEV_STATUS says SNP; `Ok(None)` otherwise.
    pub fn detect(cmdline: &str) -> Result<Option<Self>, String> {
        if !cmdline
            .split_ascii_whitespace()
            .any(|w| w == "cvm.tee_trap=port")
        {
            return Ok(None);
        }
        if rdmsr(MSR_SEV_STATUS) & 0b100 == 0 {
            // Not SNP (e.g. emulated TDX): its own path.
            return Ok(None);
        }
        let layout = Layout::from_size_align(TWO_MIB, TWO_MIB).map_err(|_| "layout")?;
        // SAFETY: a non-zero-size layout.
        let block = unsafe { alloc_zeroed(layout) } as u64;
        if block == 0 || block >= 0xC000_0000 {
            return Err("cannot allocate the 2 MiB shared block below 3 GiB".into());
        }
        // Private -> shared: rescind the validation, then the page-state change.
        let (rc, unchanged) = pvalidate(block, true, false);
        if rc != 0 || unchanged {
            return Err(format!(
                "PVALIDATE (rescind) of {block:#x} failed: rc {rc}, unchanged {unchanged}"
            ));
        }
        let entry = block | (2 << 52) | (1 << 56);
        let (_, info2) = ghcb_call(0x8000_0010, 0, 0, |g| {
            let b = SHARED_BUFFER;
            g[b..b + 8].fill(0); // cur_entry 0, end_entry 0
            g[b + 8..b + 16].copy_from_slice(&entry.to_le_bytes());
            put(g, SW_SCRATCH, GHCB + b as u64);
        });
        let g = ghcb();
        if info2 != 0 || u16::from_le_bytes([g[SHARED_BUFFER], g[SHARED_BUFFER + 1]]) != 1 {
            return Err(format!("page-state change to shared failed ({info2:#x})"));
        }
        let mut vmpck0 = Zeroizing::new([0u8; 32]);
        // SAFETY: the secrets page is identity-mapped private memory the PSP filled.
        unsafe {
            core::ptr::copy_nonoverlapping((SECRETS + 0x20) as *const u8, vmpck0.as_mut_ptr(), 32)
        };
        if vmpck0.iter().all(|&b| b == 0) {
            return Err("VMPCK0 in the secrets page is empty".into());
        }
        Ok(Some(Self {
            shared: block,
            vmpck0,
            seqno: 0,
        }))
    }

    fn page(&self, i: u64) -> &'static mut [u8] {
        // SAFETY: page `i` of our 2 MiB shared block (i < 512), identity-mapped.
        unsafe { core::slice::from_raw_parts_mut((self.shared + i * 4096) as *mut u8, 4096) }
    }

    /// MSG_REPORT_REQ for `report_data` with the extended request: the report and the
    /// certificate table.
    fn extended_report(
        &mut self,
        report_data: &[u8; 64],
    ) -> Result<(Vec<u8>, Vec<u8>), EvidenceError> {
        let seqno = self.seqno + 1;
        let cipher = Aes256Gcm::new((&*self.vmpck0).into());
        let mut iv = [0u8; 12];
        iv[..8].copy_from_slice(&seqno.to_le_bytes());
        let req = self.page(0);
        req.fill(0);
        req[0x20..0x28].copy_from_slice(&seqno.to_le_bytes());
        req[0x30] = 1; // AES-256-GCM
        req[0x31] = 1; // header version
        req[0x32..0x34].copy_from_slice(&(HDR as u16).to_le_bytes());
        req[0x34] = 5; // MSG_REPORT_REQ
        req[0x35] = 1;
        req[0x36..0x38].copy_from_slice(&96u16.to_le_bytes());
        req[0x3C] = 0; // VMPCK0
        req[HDR..HDR + 64].copy_from_slice(report_data); // VMPL 0, reserved 0
        let (head, body) = req.split_at_mut(HDR);
        let tag = cipher
            .encrypt_in_place_detached(&Nonce::from(iv), &head[0x30..], &mut body[..96])
            .map_err(|_| err("guest message encryption failed"))?;
        head[..16].copy_from_slice(&tag);
        self.page(1).fill(0);
        let certs = self.shared + 2 * 4096;
        let (rsp_gpa, req_gpa) = (self.shared + 4096, self.shared);
        let (_, info2) = ghcb_call(0x8000_0012, req_gpa, rsp_gpa, |g| {
            put(g, RAX, certs);
            put(g, RBX, CERT_PAGES);
        });
        if info2 != 0 {
            return Err(EvidenceError::Unavailable(format!(
                "the extended guest request failed: {info2:#x}"
            )));
        }
        // Request and response both consumed a sequence number.
        self.seqno = seqno + 1;
        let rsp = self.page(1);
        let mut rseq = [0u8; 8];
        rseq.copy_from_slice(&rsp[0x20..0x28]);
        let size = usize::from(u16::from_le_bytes([rsp[0x36], rsp[0x37]]));
        if u64::from_le_bytes(rseq) != seqno + 1
            || rsp[0x30] != 1
            || rsp[0x34] != 6
            || rsp[0x3C] != 0
            || HDR + size > 4096
            || size < 32 + REPORT_LEN
        {
            return Err(EvidenceError::Malformed("unexpected MSG_REPORT_RSP header"));
        }
        let mut iv = [0u8; 12];
        iv[..8].copy_from_slice(&(seqno + 1).to_le_bytes());
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&rsp[..16]);
        let mut body = Zeroizing::new(rsp[HDR..HDR + size].to_vec());
        cipher
            .decrypt_in_place_detached(
                &Nonce::from(iv),
                &rsp[0x30..HDR],
                &mut body,
                &Tag::from(tag),
            )
            .map_err(|_| {
                EvidenceError::Malformed("MSG_REPORT_RSP does not authenticate under VMPCK0")
            })?;
        let status = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
        let len = u32::from_le_bytes([body[4], body[5], body[6], body[7]]) as usize;
        if status != 0 || len != REPORT_LEN {
            return Err(EvidenceError::Unavailable(format!(
                "MSG_REPORT_RSP status {status:#x}, report size {len}"
            )));
        }
        let report = body[32..32 + REPORT_LEN].to_vec();
        // SAFETY: the certificate pages of our shared block.
        let table = unsafe {
            core::slice::from_raw_parts(certs as *const u8, (CERT_PAGES * 4096) as usize)
        };
        Ok((report, table[..cert_table_len(table)].to_vec()))
    }
}

/// The length of a certificate table (GHCB spec: entries {GUID, offset u32, length u32}
/// ending with an all-zero entry; the certificates follow): the end of the last
/// certificate.
pub fn cert_table_len(t: &[u8]) -> usize {
    let mut end = 0;
    for e in t.chunks_exact(24) {
        if e.iter().all(|&b| b == 0) {
            return end.max(e.as_ptr() as usize - t.as_ptr() as usize + 24);
        }
        let off = u32::from_le_bytes([e[16], e[17], e[18], e[19]]) as usize;
        let len = u32::from_le_bytes([e[20], e[21], e[22], e[23]]) as usize;
        end = end.max(off.saturating_add(len).min(t.len()));
    }
    end
}

impl EvidenceProvider for SnpGuest {
    fn tee(&self) -> Tee {
        Tee::Snp
    }

    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let (report, certs) = self.extended_report(report_data)?;
        Evidence::snp(&report, Some(&certs))
    }
}
