//! The test guest's evidence: [`Provider::detect`] picks TDX when CPUID leaf 0x21 says
//! "IntelTDX    " (the TD protocol of [`crate::trap_tdx`]: TDG.MR.REPORT and
//! TDVMCALL<GetQuote>, through the trap the measured command line names), otherwise the
//! emulated secure processor's mailbox (port 0xE00; see `host_vmm::tee::emulated`),
//! which also serves the emulated TDX platform's collateral (command 6).
//!
//! | port | access | meaning |
//! |---|---|---|
//! | 0xE00 | write | GPA of the request window (page-aligned, below 4 GiB) |
//! | 0xE04 | write / read | command / status of the last command (0 = success) |
//! | 0xE08 | read | magic 0x454D5643 ("CVME") |
//!
//! Window: request at 0x000, response length (u32) at 0x040, response from 0x100. We
//! allocate 64 KiB (the VMM's window is 16 or 64 KiB; responses never exceed it).
//! Commands: 1 SNP_REPORT, 2 SNP_CERTS, 3 TDX_QUOTE, 5 INFO, 6 TDX_COLLATERAL.
//!
//! Everything the mailbox returns is host-controlled: lengths are bounded by the window,
//! and the verifier, not this guest, judges the evidence.

use alloc::string::ToString;
use alloc::vec::Vec;
use guest_agent::evidence::{Evidence, EvidenceError, EvidenceProvider, Tee};

use crate::pio::{inl, outl};
use crate::trap_tdx::{self, Trap};

const PORT: u16 = 0xE00;
const MAGIC: u32 = 0x454D_5643;
const WINDOW: usize = 64 << 10;
const RESPONSE_LEN_AT: usize = 0x40;
const RESPONSE_AT: usize = 0x100;

/// The mailbox with its window.
#[derive(Debug)]
pub struct Mailbox {
    /// The window at the guest's virtual address.
    window: *mut u8,
    /// The window's GPA (what the VMM is told).
    window_gpa: u64,
    tee: Tee,
}

fn unavailable(what: &str) -> EvidenceError {
    EvidenceError::Unavailable(what.to_string())
}

impl Mailbox {
    /// Detects the mailbox (magic) and the emulated TEE (INFO; older VMMs without INFO:
    /// SNP_CERTS succeeds only on SNP).
    pub fn detect() -> Result<Self, EvidenceError> {
        if inl(PORT + 8) != MAGIC {
            return Err(unavailable(
                "no emulated TEE mailbox (this test guest needs --tee emulated-snp or emulated-tdx)",
            ));
        }
        // DMA memory: in a TD the shared pool (the VMM cannot write private memory).
        let dma = crate::dma::alloc(WINDOW)
            .map_err(|_| unavailable("out of memory for the mailbox window"))?;
        if dma.gpa + WINDOW as u64 > 0xC000_0000 {
            return Err(unavailable(
                "cannot allocate the mailbox window below 3 GiB",
            ));
        }
        let mut mb = Self {
            window: dma.buf.as_mut_ptr(),
            window_gpa: dma.gpa,
            tee: Tee::Snp,
        };
        mb.tee = match mb.command(5, &[]) {
            Ok(info) if info.len() >= 4 => {
                match u32::from_le_bytes([info[0], info[1], info[2], info[3]]) {
                    1 => Tee::Snp,
                    2 => Tee::Tdx,
                    _ => return Err(unavailable("the mailbox reports an unknown TEE kind")),
                }
            }
            Ok(_) => return Err(EvidenceError::Malformed("short INFO response")),
            Err(_) => match mb.command(2, &[]) {
                Ok(_) => Tee::Snp,
                Err(_) => Tee::Tdx,
            },
        };
        Ok(mb)
    }

    /// Runs `cmd` with `request` at window offset 0; returns the response bytes.
    fn command(&mut self, cmd: u32, request: &[u8]) -> Result<Vec<u8>, EvidenceError> {
        if request.len() > RESPONSE_LEN_AT {
            return Err(unavailable("request too large"));
        }
        // SAFETY: `window` is our 64 KiB allocation; we write the request area and the
        // response length, then let the VMM fill the rest during the port write.
        unsafe {
            core::ptr::write_bytes(self.window, 0, RESPONSE_AT);
            core::ptr::copy_nonoverlapping(request.as_ptr(), self.window, request.len());
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        outl(PORT, self.window_gpa as u32);
        outl(PORT + 4, cmd);
        let status = inl(PORT + 4);
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        if status != 0 {
            return Err(EvidenceError::Unavailable(alloc::format!(
                "mailbox command {cmd} failed with status {status}"
            )));
        }
        // SAFETY: inside the window; the VMM finished writing before the status read.
        let len =
            unsafe { core::ptr::read_volatile(self.window.add(RESPONSE_LEN_AT) as *const u32) }
                as usize;
        if len > WINDOW - RESPONSE_AT {
            return Err(EvidenceError::Malformed(
                "the mailbox response overflows the window",
            ));
        }
        let mut out = Vec::with_capacity(len);
        // SAFETY: `len` bytes from RESPONSE_AT lie inside the window.
        unsafe {
            core::ptr::copy_nonoverlapping(self.window.add(RESPONSE_AT), out.as_mut_ptr(), len);
            out.set_len(len);
        }
        Ok(out)
    }
}

impl EvidenceProvider for Mailbox {
    fn tee(&self) -> Tee {
        self.tee
    }

    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        match self.tee {
            Tee::Snp => {
                // VMPL (at 0x40) is left 0: the VMM reads 0x40 request bytes.
                let report = self.command(1, report_data)?;
                let certs = self.command(2, &[])?;
                Evidence::snp(&report, Some(&certs))
            }
            Tee::Tdx => {
                let quote = self.command(3, report_data)?;
                let collateral = self.command(6, &[])?;
                Evidence::tdx(&quote, Some(&collateral))
            }
        }
    }
}

/// Where the evidence comes from.
#[derive(Debug)]
pub enum Provider {
    /// A TD: TDREPORT + GetQuote through `trap`; the collateral from the emulated
    /// platform's mailbox when there is one.
    Tdx {
        /// How TDCALL reaches the module.
        trap: Trap,
        /// The emulated platform's mailbox (collateral only).
        mailbox: Option<Mailbox>,
    },
    /// The emulated SNP mailbox.
    Mailbox(Mailbox),
}

impl Provider {
    /// TDX (CPUID 0x21) with `trap`, otherwise the emulated mailbox.
    pub fn detect(trap: Trap) -> Result<Self, EvidenceError> {
        if trap_tdx::is_td() {
            return Ok(Provider::Tdx {
                trap,
                mailbox: Mailbox::detect().ok(),
            });
        }
        Mailbox::detect().map(Provider::Mailbox)
    }
}

impl EvidenceProvider for Provider {
    fn tee(&self) -> Tee {
        match self {
            Provider::Tdx { .. } => Tee::Tdx,
            Provider::Mailbox(m) => m.tee(),
        }
    }

    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        match self {
            Provider::Tdx { trap, mailbox } => {
                let quote = trap_tdx::quote(*trap, report_data)?;
                let collateral = match mailbox {
                    Some(m) => Some(m.command(6, &[])?),
                    None => None,
                };
                Evidence::tdx(&quote, collateral.as_deref())
            }
            Provider::Mailbox(m) => m.evidence(report_data),
        }
    }
}
