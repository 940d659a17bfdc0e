//! The emulated TEEs shared by the `emulated-snp` / `emulated-tdx` backends
//! ([`super::emulated_snp`], [`super::emulated_tdx`]) and `cvm emulated serve`: a
//! launch plan fed to the software secure processors of the `attestation` crate, and
//! the **evidence command protocol** through which evidence is asked of them outside a
//! VM's own TEE instructions. The emulated SNP guest holds its platform through an
//! `Arc`, so the backend owns both.
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
//! # How guests get evidence
//!
//! A guest of `--tee emulated-snp|emulated-tdx` attests as on hardware: SNP through the
//! guest-request path of the software PSP ([`super::emu_snp`]), TDX through
//! TDG.MR.REPORT and `TDVMCALL<GetQuote>` of the software TDX module ([`super::emu_tdx`]).
//! There is no paravirtual device for it (no port at 0xE00; a guest that touches one
//! gets what any unknown port gives: reads of all ones, writes ignored). The verifier
//! fetches the emulated TDX platform's collateral from its PCS, as for hardware
//! (`cvm emulated collateral-server`).
//!
//! # Evidence command protocol (sockets only)
//!
//! [`EmulatedTee::execute`] answers these commands. They are spoken over sockets, never
//! through a guest device: `cvm emulated serve` (a Unix socket, for an agent running as
//! a host process) and the vsock evidence service for stock Linux guests
//! ([`super::evidence_vsock`]).
//!
//! | command | request (at most [`REQUEST_LEN`] bytes) | response (at most [`MAX_RESPONSE`] bytes) |
//! |---|---|---|
//! | 1 SNP_REPORT | REPORT_DATA (64) at 0x00, VMPL (u32) at 0x40 | ATTESTATION_REPORT v3 (0x4A0) |
//! | 2 SNP_CERTS | — | extended-report certificate table |
//! | 3 TDX_QUOTE | REPORT_DATA (64) at 0x00 | quote v4 |
//! | 4 | retired (was TDX_RTMR_EXTEND; emulated TDX guests use TDG.MR.RTMR.EXTEND, [`super::emu_tdx`]) | UNSUPPORTED |
//! | 5 INFO | — | u32 kind (1 = emulated SNP, 2 = emulated TDX), u32 version (1) |
//! | 6 TDX_COLLATERAL | — | the platform's collateral: dcap-qvl `QuoteCollateralV3` JSON, as the verifier's `tdx` evidence carries it |
//!
//! Status: 0 OK, 1 BAD_REQUEST (malformed request or unknown command), 2 UNSUPPORTED
//! (a command of the other TEE), 3 FAILED, 4 BAD_WINDOW (retired: the status of the
//! former guest-memory window; never returned now).
//! The collateral is generated once at launch (valid from a day before to 30 days
//! after), so serving it needs no randomness in the serving thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use attestation::snp::emulated::{EmulatedGuest, EmulatedSnpPlatform, FinishParams, ReportRequest};
use attestation::tdx::emulated::{CollateralOptions, EmulatedTd, EmulatedTdxPlatform, TdConfig};
use measured_boot::snp::{SnpLaunchPlan, SnpPlanError};
use measured_boot::tdx::{DirectBoot, TdxLaunchPlan, TdxPlanError};
use measured_boot::FirmwareImage;

/// Largest response of a command (the protocol's limit since its guest-memory window
/// of 64 KiB with the response at 0x100; a certificate table or quote is far smaller).
pub const MAX_RESPONSE: usize = (64 << 10) - 0x100;
/// Commands of the evidence command protocol.
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
pub const PROTOCOL_VERSION: u32 = 1;
/// Days the collateral served by TDX_COLLATERAL stays valid.
pub const COLLATERAL_DAYS: i64 = 30;
/// Bytes a command may read as its request (REPORT_DATA and SNP_REPORT's VMPL).
pub const REQUEST_LEN: usize = 0x44;

/// Status codes of the evidence command protocol.
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

    /// Executes command `cmd` of the evidence command protocol (module docs) on
    /// `request` (at most [`REQUEST_LEN`] bytes are read); returns the response bytes or
    /// a status code. `cvm emulated serve` and the vsock evidence service
    /// ([`super::evidence_vsock`]) answer with it.
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
                Ok([kind.to_le_bytes(), PROTOCOL_VERSION.to_le_bytes()].concat())
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
