//! Intel TDX evidence: DCAP quotes (v4, v5), TDREPORT, collateral, verification, claims,
//! and the emulated TDX module and quoting enclave.
//!
//! # Design
//!
//! - [`quote`]: the one parser/serializer of TDX quotes v4 and v5 (TD 1.0 and TD 1.5
//!   bodies), exact to the byte: `Quote::parse(b)?.to_bytes()? == b`. [`report`]: the
//!   1024-byte TDREPORT and the 384-byte SGX report body of the quoting enclave.
//! - [`collateral`]: dcap-qvl's `QuoteCollateralV3` JSON (PCK CRL and chain, root CA CRL,
//!   TCB info, QE identity), checked for presence and shape.
//! - [`verify`]: [`TdxVerifier`] — our own checks of the quote's signatures (so that a
//!   forged quote is a clear `BadSignature`), then dcap-qvl's DCAP verification of the
//!   collateral and the PCK chain at an injected time, with the result of the latter
//!   cached per platform and collateral. Produces [`Claims`](crate::claims::Claims) with
//!   [`TdxClaims`].
//! - [`pck`]: the PCK chain in the quote, raw ECDSA checks, and the SGX extension DER.
//! - [`emulated`]: an emulated TDX module (MRTD from the measured-boot launch plan, RTMR
//!   extend, TDREPORT with a MAC) and quoting enclave (QE report signed by an emulated PCK
//!   key under an emulated provisioning CA hierarchy, quotes from the same serializer),
//!   plus collateral signed like Intel's, so the production verifier runs unchanged;
//!   [`emulated::pcs`] renders that collateral as Intel's PCS v4 serves it (paths and
//!   issuer-chain headers), for fetching it like a real platform's.
//!
//! ## Why dcap-qvl
//!
//! DCAP appraisal is more than signatures: TCB level ordering and matching with SGX and
//! TDX components, TDX module identities, QE identity masks, status convergence, CRLs
//! on every chain, and Intel's collateral time window. dcap-qvl (Phala) implements
//! Intel's QVL rules in pure Rust with RustCrypto and webpki, is maintained against
//! Intel's reference, and pins Intel's root CA. Re-implementing that logic would be a
//! second, divergent source of truth, so we delegate it and keep to what must be ours:
//! the exact wire format (the emulator writes it), error classification, claims and
//! policy. dcap-qvl uses the newer RustCrypto generation internally; that is fine, no
//! types cross the boundary except dcap-qvl's own.
//!
//! ## Custom roots
//!
//! dcap-qvl's `QuoteVerifier::new(root_ca_der)` verifies every chain (PCK, TCB info,
//! QE identity) and the root CA CRL against the given root instead of Intel's; it is the
//! same verifier the Python package exposes as `verify_with_root_ca`. We use it for an
//! operator-supplied root ([`TrustRoot::Emulated`]), and mark such results
//! [`TrustLevel::InsecureEmulated`](crate::claims::TrustLevel::InsecureEmulated).
//!
//! # Trust model
//!
//! | component | trusted for | how it is checked |
//! |---|---|---|
//! | Intel root CA (pinned in dcap-qvl) | everything below | compiled in; a `--trust-root` replaces it and marks results insecure-emulated |
//! | PCK certificate (in the quote) | the QE report | chain to the root, CRLs, validity at `now` |
//! | TCB signing certificate | TCB info, QE identity | issued directly by the root, CRL, validity |
//! | quoting enclave | the attestation key | QE report signed by PCK, MRSIGNER/ISVPRODID/attributes per QE identity, REPORTDATA binds the key |
//! | attestation key | header and TD report body | ECDSA-P256 signature |
//! | TDX module | MRTD, RTMRs, REPORTDATA of the TD | module identity and TEE_TCB_SVN against the TCB info |
//! | host, collateral transport | nothing | collateral is signed; the host only relays it |
//!
//! Policy (see [`crate::policy::tdx::TdxPolicy`]) then decides on the claims: allowed
//! TCB statuses (UpToDate by default), SEPT_VE_DISABLE, RTMRs or an event-log replay,
//! MROWNER(CONFIG), minimum TEE TCB SVN, advisories, service TDs; the common policy
//! decides MRTD, MRCONFIGID (host data), REPORTDATA and debug.
//!
//! # Error kinds
//!
//! | failure | [`ErrorKind`](crate::ErrorKind) |
//! |---|---|
//! | quote truncated, oversized, wrong version / key type / TEE type / body type, certification data not type 6 with type 5 inside, bad PEM chain, non-zero trailing bytes | `Malformed` |
//! | collateral JSON unreadable, bad hex, CRL/PEM/TCB info/QE identity that does not parse | `Malformed` |
//! | collateral field missing or empty; collateral for another FMSPC/TEE, no TDX module identity for this module | `CollateralUnavailable` |
//! | quote signature, QE report signature, QE report binding, TCB info or QE identity signature | `BadSignature` |
//! | chain to the root, CRLs, revocation, any validity window (certificates, CRLs, TCB info, QE identity) at the given time, QE or TDX module identity, not Intel's QE vendor, TCB `Revoked` | `UntrustedChain` |
//! | no TCB level matches the platform (Intel QVL's TCB_NOT_SUPPORTED): Intel no longer vouches for that TCB; no policy can accept it and fresher collateral does not help | `UntrustedChain` |
//! | TD attributes Intel's rules refuse (SEPT_VE_DISABLE clear, MIGRATABLE, reserved bits), found after the chain verified | `PolicyNotMet` |
//!
//! # Usage
//!
//! ```no_run
//! use attestation::tdx::{collateral::Collateral, TdxVerifier};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let quote = std::fs::read("quote.bin")?;
//! let collateral = Collateral::from_json(&std::fs::read("collateral.json")?)?;
//! let verifier = TdxVerifier::intel();
//! let at = time::OffsetDateTime::now_utc();
//! let verified = verifier.verify(&quote, &collateral, at)?;
//! // The default policy plus the expected MRTD and RTMR1/RTMR2 (from `cvm measure`):
//! // MRTD alone measures only the firmware, and the policy refuses it (`rtmr-unpinned`).
//! let expected = hex::decode(std::fs::read_to_string("mrtd.hex")?.trim())?;
//! let rtmr = |index: u8, file: &str| -> Result<_, Box<dyn std::error::Error>> {
//!     let v = hex::decode(std::fs::read_to_string(file)?.trim())?;
//!     Ok(attestation::policy::tdx::ExpectedRtmr { index, value: v.try_into().map_err(|_| "48 bytes")? })
//! };
//! attestation::policy::Policy {
//!     measurements: vec![expected],
//!     tdx: attestation::policy::tdx::TdxPolicy {
//!         rtmrs: vec![rtmr(1, "rtmr1.hex")?, rtmr(2, "rtmr2.hex")?],
//!         ..Default::default()
//!     },
//!     ..Default::default()
//! }
//! .evaluate(&verified.claims)?;
//! println!("MRTD {}", hex::encode(&verified.claims.measurement));
//! # Ok(()) }
//! ```

pub mod collateral;
pub mod emulated;
mod error;
pub mod pck;
pub mod quote;
pub mod report;
pub mod verify;
pub(crate) mod wire;

use serde::{Deserialize, Serialize};

pub use quote::{Quote, QuoteError};
pub use verify::{TdxVerifier, TrustRoot, VerifiedQuote, VerifyError};

/// TCB status of a platform, as Intel's TCB info and QE identity name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TcbStatus {
    /// The platform is patched.
    UpToDate,
    /// Software hardening (mitigations) is needed.
    SWHardeningNeeded,
    /// Platform configuration changes are needed.
    ConfigurationNeeded,
    /// Both of the above.
    ConfigurationAndSWHardeningNeeded,
    /// The platform TCB is out of date.
    OutOfDate,
    /// Out of date, and configuration changes are needed.
    OutOfDateConfigurationNeeded,
    /// The platform TCB is revoked.
    Revoked,
    /// TD 1.5: launched on an out-of-date TCB, now current; relaunch the TD.
    TDRelaunchAdvised,
    /// TD relaunch advised, and configuration changes are needed.
    TDRelaunchAdvisedConfigurationNeeded,
}

impl TcbStatus {
    /// Every status.
    pub const ALL: [TcbStatus; 9] = [
        TcbStatus::UpToDate,
        TcbStatus::SWHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
        TcbStatus::ConfigurationAndSWHardeningNeeded,
        TcbStatus::OutOfDate,
        TcbStatus::OutOfDateConfigurationNeeded,
        TcbStatus::Revoked,
        TcbStatus::TDRelaunchAdvised,
        TcbStatus::TDRelaunchAdvisedConfigurationNeeded,
    ];

    /// Intel's name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SWHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::Revoked => "Revoked",
            TcbStatus::TDRelaunchAdvised => "TDRelaunchAdvised",
            TcbStatus::TDRelaunchAdvisedConfigurationNeeded => {
                "TDRelaunchAdvisedConfigurationNeeded"
            }
        }
    }
}

impl std::fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A TCB status name that Intel does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a TCB status (expected one of UpToDate, SWHardeningNeeded, ConfigurationNeeded, ConfigurationAndSWHardeningNeeded, OutOfDate, OutOfDateConfigurationNeeded, Revoked, TDRelaunchAdvised, TDRelaunchAdvisedConfigurationNeeded)")]
pub struct UnknownTcbStatus(pub String);

impl std::str::FromStr for TcbStatus {
    type Err = UnknownTcbStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TcbStatus::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownTcbStatus(s.to_string()))
    }
}

impl From<dcap_qvl::TcbStatus> for TcbStatus {
    fn from(s: dcap_qvl::TcbStatus) -> Self {
        use dcap_qvl::TcbStatus as D;
        match s {
            D::UpToDate => TcbStatus::UpToDate,
            D::SWHardeningNeeded => TcbStatus::SWHardeningNeeded,
            D::ConfigurationNeeded => TcbStatus::ConfigurationNeeded,
            D::ConfigurationAndSWHardeningNeeded => TcbStatus::ConfigurationAndSWHardeningNeeded,
            D::OutOfDate => TcbStatus::OutOfDate,
            D::OutOfDateConfigurationNeeded => TcbStatus::OutOfDateConfigurationNeeded,
            D::Revoked => TcbStatus::Revoked,
            D::TDRelaunchAdvised => TcbStatus::TDRelaunchAdvised,
            D::TDRelaunchAdvisedConfigurationNeeded => {
                TcbStatus::TDRelaunchAdvisedConfigurationNeeded
            }
        }
    }
}

/// TD_ATTRIBUTES, decoded (Intel TDX Module ABI specification, TD_ATTRIBUTES).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdAttributes {
    /// The 8 bytes as carried in the quote (little-endian u64).
    #[serde(with = "wire::hex_array")]
    pub raw: [u8; 8],
    /// Bit 0: DEBUG — the host can read and modify the TD's state and memory.
    pub debug: bool,
    /// Bits 7:0 (TUD): any set bit makes the TD untrusted; bit 0 is DEBUG.
    pub tud: u8,
    /// Bit 28: SEPT_VE_DISABLE — EPT violations on pending pages do not become #VE.
    pub sept_ve_disable: bool,
    /// Bit 29: MIGRATABLE.
    pub migratable: bool,
    /// Bit 30: PKS — supervisor protection keys.
    pub pks: bool,
    /// Bit 31: KL — key locker.
    pub kl: bool,
    /// Bit 63: PERFMON — the TD may use performance monitoring.
    pub perfmon: bool,
}

impl TdAttributes {
    /// Bit of DEBUG.
    pub const DEBUG: u64 = 1 << 0;
    /// Bit of SEPT_VE_DISABLE.
    pub const SEPT_VE_DISABLE: u64 = 1 << 28;
    /// Bit of MIGRATABLE.
    pub const MIGRATABLE: u64 = 1 << 29;
    /// Bit of PKS.
    pub const PKS: u64 = 1 << 30;
    /// Bit of KL.
    pub const KL: u64 = 1 << 31;
    /// Bit of PERFMON.
    pub const PERFMON: u64 = 1 << 63;

    /// Decodes the 8 bytes carried in a quote or TDREPORT.
    pub fn from_bytes(raw: [u8; 8]) -> Self {
        let v = u64::from_le_bytes(raw);
        Self {
            raw,
            debug: v & Self::DEBUG != 0,
            tud: raw[0],
            sept_ve_disable: v & Self::SEPT_VE_DISABLE != 0,
            migratable: v & Self::MIGRATABLE != 0,
            pks: v & Self::PKS != 0,
            kl: v & Self::KL != 0,
            perfmon: v & Self::PERFMON != 0,
        }
    }

    /// The attributes as a number.
    pub fn value(&self) -> u64 {
        u64::from_le_bytes(self.raw)
    }

    /// Whether any TD-under-debug bit (7:0, including DEBUG) is set.
    pub fn under_debug(&self) -> bool {
        self.tud != 0
    }
}

/// TDX-specific claims of a verified quote.
///
/// The common claims carry MRTD (`measurement`), MRCONFIGID (`host_data`), REPORTDATA
/// and `debug` (any TD-under-debug bit of TD_ATTRIBUTES, bit 0 being DEBUG).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxClaims {
    /// Quote version (4 or 5).
    pub quote_version: u16,
    /// Body type: 2 (TD 1.0) or 3 (TD 1.5); 2 for v4 quotes.
    pub body_type: u16,
    /// TEE_TCB_SVN.
    #[serde(with = "wire::hex_array")]
    pub tee_tcb_svn: [u8; 16],
    /// TEE_TCB_SVN2 (TD 1.5 bodies).
    #[serde(
        with = "wire::hex_array_opt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// MRSEAM.
    #[serde(with = "wire::hex_array")]
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM.
    #[serde(with = "wire::hex_array")]
    pub mr_signer_seam: [u8; 48],
    /// SEAMATTRIBUTES.
    #[serde(with = "wire::hex_array")]
    pub seam_attributes: [u8; 8],
    /// TD_ATTRIBUTES, decoded.
    pub td_attributes: TdAttributes,
    /// XFAM.
    #[serde(with = "wire::hex_array")]
    pub xfam: [u8; 8],
    /// MROWNER.
    #[serde(with = "wire::hex_array")]
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    #[serde(with = "wire::hex_array")]
    pub mr_owner_config: [u8; 48],
    /// RTMR0..RTMR3.
    #[serde(with = "wire::hex_rtmrs")]
    pub rtmrs: Box<[[u8; 48]; 4]>,
    /// MRSERVICETD (TD 1.5 bodies).
    #[serde(
        with = "wire::hex_array_opt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mr_service_td: Option<[u8; 48]>,
    /// FMSPC of the platform (from the PCK certificate).
    #[serde(with = "wire::hex_array")]
    pub fmspc: [u8; 6],
    /// CPUSVN of the platform (from the PCK certificate).
    #[serde(with = "wire::hex_array")]
    pub cpu_svn: [u8; 16],
    /// PCESVN of the platform (from the PCK certificate).
    pub pce_svn: u16,
    /// ISVSVN of the quoting enclave (from the QE report).
    pub qe_svn: u16,
    /// Converged TCB status of platform, TDX module and QE.
    pub tcb_status: TcbStatus,
    /// Intel security advisories that apply to this TCB.
    pub advisory_ids: Vec<String>,
}
