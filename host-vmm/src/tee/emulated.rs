//! The emulated TEEs shared by the `emulated-snp` / `emulated-tdx` backends
//! ([`super::emulated_snp`], [`super::emulated_tdx`]) and `cvm emulated serve`: a
//! launch plan fed to the software secure processors of the `attestation` crate, and
//! the paravirtual mailbox through which the guest asks them for evidence. The
//! emulated SNP guest holds its platform through an `Arc`, so the backend owns both.
//!
//! **Insecure by design.** Guest memory is not encrypted and the host can read and
//! change everything; the evidence proves only what this host chose to say. It exists so
//! the production launch, measurement and verification code runs unchanged in CI. A
//! verifier accepts it only when configured with the emulated trust anchor, and marks
//! the result `insecure-emulated`.
//!
//! The measurement comes from the same [`SnpLaunchPlan`] / [`TdxLaunchPlan`] that
//! `cvm measure` folds; the launch is refused if the emulated processor's digest and the
//! plan's ever disagree.
//!
//! # Mailbox (emulated mode only)
//!
//! Port I/O at [`MAILBOX_PORT`] (32-bit accesses):
//!
//! | port | access | meaning |
//! |---|---|---|
//! | +0 | write | GPA of a 64 KiB request window (page-aligned, below 4 GiB) |
//! | +4 | write | command; executed at once |
//! | +4 | read | status of the last command (0 = success) |
//! | +8 | read | magic `0x454D5643` ("CVME") |
//!
//! Window layout: request at 0x000 (commands below), response length (u32) at 0x040,
//! response bytes from 0x100.
//!
//! | command | request | response |
//! |---|---|---|
//! | 1 SNP_REPORT | REPORT_DATA (64) at 0x00, VMPL (u32) at 0x40 | ATTESTATION_REPORT v3 (0x4A0) |
//! | 2 SNP_CERTS | — | extended-report certificate table |
//! | 3 TDX_QUOTE | REPORT_DATA (64) at 0x00 | quote v4 |
//! | 4 | retired (was TDX_RTMR_EXTEND; emulated TDX guests use TDG.MR.RTMR.EXTEND, [`super::emu_tdx`]) | UNSUPPORTED |
//! | 5 INFO | — | u32 kind (1 = emulated SNP, 2 = emulated TDX), u32 version (1) |
//! | 6 TDX_COLLATERAL | — | the platform's collateral: dcap-qvl `QuoteCollateralV3` JSON, as the verifier's `tdx` evidence carries it |
//!
//! Status: 0 OK, 1 BAD_REQUEST (malformed request or unknown command), 2 UNSUPPORTED
//! (a command of the other TEE), 3 FAILED, 4 BAD_WINDOW (no window, or outside RAM).
//! The collateral is generated once at launch (valid from a day before to 30 days
//! after), so serving it needs no randomness in the vCPU thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use attestation::snp::emulated::{EmulatedGuest, EmulatedSnpPlatform, FinishParams, ReportRequest};
use attestation::tdx::emulated::{CollateralOptions, EmulatedTd, EmulatedTdxPlatform, TdConfig};
use measured_boot::snp::{SnpLaunchPlan, SnpPlanError};
use measured_boot::tdx::{DirectBoot, TdxLaunchPlan, TdxPlanError};
use measured_boot::FirmwareImage;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::{PioDevice, VmEvent};
use crate::vstate::cc_memory::CcMemory;

/// First port of the mailbox.
pub const MAILBOX_PORT: u16 = 0xE00;
/// Number of ports of the mailbox.
pub const MAILBOX_LEN: u16 = 12;
/// Size of the request window.
pub const WINDOW: usize = 64 << 10;
/// Mailbox commands.
pub mod command {
    #![allow(missing_docs)]
    pub const SNP_REPORT: u32 = 1;
    pub const SNP_CERTS: u32 = 2;
    pub const TDX_QUOTE: u32 = 3;
    pub const INFO: u32 = 5;
    pub const TDX_COLLATERAL: u32 = 6;
}
/// INFO kind of an emulated SNP platform.
pub const KIND_EMULATED_SNP: u32 = 1;
/// INFO kind of an emulated TDX platform.
pub const KIND_EMULATED_TDX: u32 = 2;
/// INFO protocol version.
pub const MAILBOX_VERSION: u32 = 1;
/// Days the collateral served by TDX_COLLATERAL stays valid.
pub const COLLATERAL_DAYS: i64 = 30;
const RESPONSE_LEN_AT: usize = 0x40;
/// Bytes of the window a command may read as its request.
pub const REQUEST_LEN: usize = 0x44;
const RESPONSE_AT: usize = 0x100;
const MAGIC: u32 = 0x454D_5643;

/// Mailbox status codes.
pub mod status {
    #![allow(missing_docs)]
    pub const OK: u32 = 0;
    pub const BAD_REQUEST: u32 = 1;
    pub const UNSUPPORTED: u32 = 2;
    pub const FAILED: u32 = 3;
    pub const BAD_WINDOW: u32 = 4;
}

/// Why an emulated launch failed.
#[derive(Debug, thiserror::Error)]
pub enum EmulatedLaunchError {
    /// The emulated platform could not be opened.
    #[error(
        "cannot open the emulated platform in {0} (create it with `cvm emulated init --dir {0}`)"
    )]
    Platform(PathBuf, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// The firmware is unusable.
    #[error("invalid firmware")]
    Firmware(#[from] measured_boot::FirmwareError),
    /// The SNP plan could not be built.
    #[error("cannot build the SEV-SNP launch plan")]
    SnpPlan(#[from] SnpPlanError),
    /// The TDX plan could not be built.
    #[error("cannot build the TDX launch plan")]
    TdxPlan(#[from] TdxPlanError),
    /// The emulated TDX platform could not produce its collateral.
    #[error("the emulated TDX platform cannot produce its collateral")]
    Collateral(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The emulated secure processor refused the launch.
    #[error("the emulated secure processor refused the launch")]
    Refused(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The emulated TD's private memory could not be launched (emulated TDX).
    #[error("cannot launch the emulated TD's private memory: {0}")]
    PrivateMemory(
        &'static str,
        #[source] Box<dyn std::error::Error + Send + Sync>,
    ),
    /// The emulated processor's digest differs from the plan's (a bug; never launch).
    #[error("emulated launch digest {got} differs from the plan's {expected}")]
    DigestMismatch {
        /// What the processor computed.
        got: String,
        /// What the plan predicts.
        expected: String,
    },
}

/// RTMR0..3.
pub type Rtmrs = [[u8; 48]; 4];

/// A launched emulated confidential guest.
pub enum EmulatedTee {
    /// Emulated SEV-SNP.
    Snp {
        /// The platform.
        platform: Arc<EmulatedSnpPlatform>,
        /// The launched guest context (shares the platform).
        guest: EmulatedGuest<'static>,
    },
    /// Emulated TDX.
    Tdx {
        /// The platform.
        platform: Box<EmulatedTdxPlatform>,
        /// The TD (MRTD, RTMRs).
        td: EmulatedTd,
        /// The platform's collateral (QuoteCollateralV3 JSON), generated at launch.
        collateral: Vec<u8>,
    },
}

impl std::fmt::Debug for EmulatedTee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EmulatedTee::Snp { .. } => "EmulatedTee::Snp",
            EmulatedTee::Tdx { .. } => "EmulatedTee::Tdx",
        })
    }
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

impl EmulatedTee {
    /// `guest`, launched by `platform`, holding it by `Arc` so the backend owns both.
    pub fn share(
        guest: EmulatedGuest<'_>,
        platform: &Arc<EmulatedSnpPlatform>,
    ) -> Result<EmulatedGuest<'static>, EmulatedLaunchError> {
        guest
            .into_shared(platform)
            .ok_or(EmulatedLaunchError::Refused(
                "the guest was launched by another emulated platform".into(),
            ))
    }

    /// Launches `plan` (built by the caller, so the VMM can also place its pages in
    /// guest memory) on the emulated SNP platform in `dir` with `policy` and
    /// `host_data`; returns the backend and the measurement it will report.
    pub fn launch_snp(
        dir: &Path,
        plan: &SnpLaunchPlan,
        policy: u64,
        host_data: [u8; 32],
    ) -> Result<(Self, [u8; 48]), EmulatedLaunchError> {
        let expected = plan.launch_digest();
        let platform = Arc::new(
            EmulatedSnpPlatform::open(dir)
                .map_err(|e| EmulatedLaunchError::Platform(dir.to_owned(), boxed(e)))?,
        );
        let mut launch = platform
            .launch_start(policy)
            .map_err(|e| EmulatedLaunchError::Refused(boxed(e)))?;
        launch.update_plan(plan);
        let guest = launch
            .finish(FinishParams {
                host_data,
                ..Default::default()
            })
            .map_err(|e| EmulatedLaunchError::Refused(boxed(e)))?;
        let guest = EmulatedTee::share(guest, &platform)?;
        if guest.measurement() != expected {
            return Err(EmulatedLaunchError::DigestMismatch {
                got: hex::encode(guest.measurement()),
                expected: hex::encode(expected),
            });
        }
        Ok((EmulatedTee::Snp { platform, guest }, expected))
    }

    /// Launches `firmware` on the emulated TDX platform in `dir`; returns the backend,
    /// MRTD and the RTMRs expected once the firmware has measured `direct_boot`.
    ///
    /// The TD starts with zero RTMRs: the firmware extends them itself with
    /// TDG.MR.RTMR.EXTEND (the software TDX module, [`super::emu_tdx`]). Also returns the
    /// launch plan, whose pages the backend adds to the TD's private memory.
    pub fn launch_tdx(
        dir: &Path,
        firmware: Vec<u8>,
        config: TdConfig,
        direct_boot: Option<DirectBoot>,
    ) -> Result<(Self, [u8; 48], Rtmrs, TdxLaunchPlan), EmulatedLaunchError> {
        let plan = TdxLaunchPlan::new(FirmwareImage::parse(firmware)?, direct_boot)?;
        let expected = plan.mrtd();
        let platform = EmulatedTdxPlatform::open(dir)
            .map_err(|e| EmulatedLaunchError::Platform(dir.to_owned(), boxed(e)))?;
        let collateral = platform
            .collateral(&CollateralOptions::from_now(COLLATERAL_DAYS))
            .and_then(|c| Ok(c.to_json()?))
            .map_err(|e| EmulatedLaunchError::Collateral(boxed(e)))?
            .into_bytes();
        let td = EmulatedTd::launch(config, plan.regions());
        if td.mrtd() != expected {
            return Err(EmulatedLaunchError::DigestMismatch {
                got: hex::encode(td.mrtd()),
                expected: hex::encode(expected),
            });
        }
        Ok((
            EmulatedTee::Tdx {
                platform: Box::new(platform),
                td,
                collateral,
            },
            expected,
            plan.rtmrs(),
            plan,
        ))
    }

    /// Executes mailbox command `cmd` on `request` (at most [`REQUEST_LEN`] bytes are
    /// read); returns the response bytes or a status code. The mailbox and the vsock
    /// evidence service ([`super::evidence_vsock`]) answer with it.
    pub fn execute(&mut self, cmd: u32, request: &[u8]) -> Result<Vec<u8>, u32> {
        let report_data = || -> Result<[u8; 64], u32> {
            request
                .get(..64)
                .and_then(|r| r.try_into().ok())
                .ok_or(status::BAD_REQUEST)
        };
        match (self, cmd) {
            (tee, command::INFO) => {
                let kind = match tee {
                    EmulatedTee::Snp { .. } => KIND_EMULATED_SNP,
                    EmulatedTee::Tdx { .. } => KIND_EMULATED_TDX,
                };
                Ok([kind.to_le_bytes(), MAILBOX_VERSION.to_le_bytes()].concat())
            }
            (EmulatedTee::Tdx { collateral, .. }, command::TDX_COLLATERAL) => {
                Ok(collateral.clone())
            }
            (EmulatedTee::Snp { guest, .. }, 1) => {
                let vmpl = request
                    .get(0x40..0x44)
                    .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                let req = ReportRequest {
                    report_data: report_data()?,
                    vmpl,
                    version: 3,
                };
                guest.report(&req).map(|r| r.to_vec()).map_err(|e| {
                    tracing::warn!(error = %e, "emulated SNP report refused");
                    status::FAILED
                })
            }
            (EmulatedTee::Snp { platform, .. }, 2) => {
                platform.cert_table().to_bytes().map_err(|_| status::FAILED)
            }
            (EmulatedTee::Tdx { platform, td, .. }, 3) => {
                let quote = platform
                    .quote_td(td, &report_data()?, 4)
                    .map_err(|_| status::FAILED)?;
                quote.to_bytes().map_err(|_| status::FAILED)
            }
            (_, 1..=6) => Err(status::UNSUPPORTED),
            _ => Err(status::BAD_REQUEST),
        }
    }
}

/// The guest-facing mailbox of an emulated TEE (a port-I/O device).
#[derive(Debug)]
pub struct Mailbox {
    tee: Arc<Mutex<EmulatedTee>>,
    mem: GuestMemoryMmap,
    /// Emulated TDX under the private-memory contract: the window is read and written
    /// as the emulated TDX module accesses TD memory (the mailbox is the emulated
    /// module's legacy interface, not a device), once the launch has set it.
    trusted: Option<Arc<OnceLock<Arc<CcMemory>>>>,
    window: Option<u64>,
    status: u32,
}

impl Mailbox {
    /// A mailbox in front of `tee`, reading and writing `mem`.
    pub fn new(tee: EmulatedTee, mem: GuestMemoryMmap) -> Self {
        Self::shared(Arc::new(Mutex::new(tee)), mem)
    }

    /// A mailbox in front of a TEE it shares with its backend.
    pub fn shared(tee: Arc<Mutex<EmulatedTee>>, mem: GuestMemoryMmap) -> Self {
        Self {
            tee,
            mem,
            trusted: None,
            window: None,
            status: status::BAD_WINDOW,
        }
    }

    /// A mailbox of an emulated TD under the private-memory contract: its window is
    /// accessed with [`CcMemory::trusted_read`] / [`CcMemory::trusted_write`] once `cc`
    /// is set (before that, through `mem`).
    pub fn trusted(
        tee: Arc<Mutex<EmulatedTee>>,
        mem: GuestMemoryMmap,
        cc: Arc<OnceLock<Arc<CcMemory>>>,
    ) -> Self {
        Self {
            trusted: Some(cc),
            ..Self::shared(tee, mem)
        }
    }

    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> bool {
        match self.trusted.as_ref().and_then(|c| c.get()) {
            Some(cc) => cc.trusted_read(gpa, buf).is_ok(),
            None => self.mem.read_slice(buf, GuestAddress(gpa)).is_ok(),
        }
    }

    fn write_guest(&self, gpa: u64, data: &[u8]) -> bool {
        match self.trusted.as_ref().and_then(|c| c.get()) {
            Some(cc) => cc.trusted_write(gpa, data).is_ok(),
            None => self.mem.write_slice(data, GuestAddress(gpa)).is_ok(),
        }
    }

    fn run(&mut self, cmd: u32) -> u32 {
        let Some(gpa) = self.window else {
            return status::BAD_WINDOW;
        };
        let mut window = vec![0u8; WINDOW];
        if !self.read_guest(gpa, &mut window) {
            return status::BAD_WINDOW;
        }
        // The request area runs to 0x44: SNP_REPORT's VMPL sits at 0x40, where the
        // response length is written afterwards.
        let result = self
            .tee
            .lock()
            .map_err(|_| status::FAILED)
            .and_then(|mut tee| tee.execute(cmd, &window[..REQUEST_LEN]));
        match result {
            Ok(resp) if resp.len() <= WINDOW - RESPONSE_AT => {
                let len = (resp.len() as u32).to_le_bytes();
                let ok = self.write_guest(gpa + RESPONSE_LEN_AT as u64, &len)
                    && self.write_guest(gpa + RESPONSE_AT as u64, &resp);
                if ok {
                    tracing::info!(
                        event = "evidence",
                        command = cmd,
                        bytes = resp.len(),
                        "emulated TEE request served (insecure-emulated)"
                    );
                    status::OK
                } else {
                    status::BAD_WINDOW
                }
            }
            Ok(_) => status::FAILED,
            Err(s) => s,
        }
    }
}

impl PioDevice for Mailbox {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let v = match offset {
            4 => self.status,
            8 => MAGIC,
            _ => u32::MAX,
        };
        let b = v.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = b.get(i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent> {
        let Ok(b) = <[u8; 4]>::try_from(data) else {
            return None;
        };
        let v = u32::from_le_bytes(b);
        match offset {
            0 => {
                let gpa = u64::from(v);
                self.window = (gpa % 4096 == 0).then_some(gpa);
            }
            4 => self.status = self.run(v),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_guest_keeps_its_identity_and_only_its_own_platform() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let pa = Arc::new(EmulatedSnpPlatform::create(a.path()).unwrap());
        let pb = Arc::new(EmulatedSnpPlatform::create(b.path()).unwrap());
        let guest = pa
            .launch_start_from(0x30000, [5; 48])
            .and_then(|l| l.finish(FinishParams::default()))
            .unwrap();
        let req = ReportRequest {
            report_data: [1; 64],
            vmpl: 0,
            version: 3,
        };
        let before = guest.report(&req).unwrap();
        // Another platform's Arc is refused: its keys did not launch this guest.
        assert!(matches!(
            EmulatedTee::share(guest.clone(), &pb),
            Err(EmulatedLaunchError::Refused(_))
        ));
        let shared = EmulatedTee::share(guest, &pa).unwrap();
        drop(pa);
        let after = shared.report(&req).unwrap();
        assert_eq!(shared.measurement(), [5; 48]);
        // Same guest: same REPORT_ID (0x140..0x160) and the same signed body fields.
        assert_eq!(before[0x140..0x160], after[0x140..0x160]);
        assert_eq!(before[..0x2A0], after[..0x2A0]);
    }
}
