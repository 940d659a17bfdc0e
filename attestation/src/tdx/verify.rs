//! DCAP verification of TDX quotes with collateral, at an injectable time, against
//! Intel's pinned root CA or an operator-configured (emulated) root.
//!
//! # Pipeline
//!
//! 1. Parse the quote ([`Quote::parse`]) and decode its PCK chain: `Malformed`.
//! 2. Check the three signatures the quote itself carries, with our own P-256 code so
//!    that a forged or corrupted quote is reported as `BadSignature`:
//!    the QE report signature (PCK leaf key), the QE report's binding of the
//!    attestation key (`REPORTDATA[..32] == SHA-256(attestation key || QE auth data)`),
//!    and the quote signature over header and body (attestation key).
//! 3. Run dcap-qvl's `QuoteVerifier` with the root CA: TCB info and QE identity
//!    signatures and chains, CRLs, the PCK chain to the root, validity windows at the
//!    given time, QE identity, TDX module identity, TCB level matching and status
//!    convergence. Its refusals are classified into an [`ErrorKind`] (see
//!    [`DcapRefusal`]).
//!
//! # Caching
//!
//! Step 3 costs about ten signature verifications plus JSON and X.509 parsing, and its
//! result depends only on the collateral, the root, the time, and the parts of the quote
//! that identify the platform, the QE and the TDX module: header, attestation key,
//! QE report certification data (QE report, its signature, auth data, PCK chain) and the
//! TCB-relevant body fields (TEE_TCB_SVN(2), MRSEAM, MRSIGNERSEAM, SEAMATTRIBUTES,
//! TDATTRIBUTES, MRSERVICETD). A [`TdxVerifier`] caches the outcome of step 3 under a
//! SHA-256 of exactly those inputs, together with the time window in which every piece
//! of collateral and every certificate is valid (dcap-qvl's collateral time window).
//! A later quote from the same TD platform — differing in REPORTDATA, RTMRs, MRTD,
//! MRCONFIGID, MROWNER(CONFIG) or XFAM, none of which step 3 reads — at a time inside
//! the window then costs steps 1 and 2 only: two ECDSA verifications. Step 2 always
//! runs; only accepted outcomes are cached.

use std::collections::HashMap;
use std::sync::Mutex;

use dcap_qvl::configs::RustCryptoConfig;
use dcap_qvl::verify::QuoteVerifier;
use p256::ecdsa::VerifyingKey;
use sha2::{Digest, Sha256};

use super::collateral::{Collateral, CollateralError};
use super::pck::{self, PckChain, PckError};
use super::quote::{Quote, QuoteError, INTEL_QE_VENDOR_ID};
use super::{TcbStatus, TdAttributes, TdxClaims};
use crate::claims::{Claims, Tee, TeeClaims, TrustLevel};
use crate::ErrorKind;

/// Number of verification outcomes a verifier keeps.
const CACHE_CAPACITY: usize = 256;

/// Why dcap-qvl refused a quote whose own signatures verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DcapRefusal {
    /// A certificate chain, CRL, revocation or validity period (of a certificate, CRL,
    /// TCB info or QE identity) did not verify at the given time.
    Chain,
    /// The TCB info or QE identity signature does not verify.
    CollateralSignature,
    /// The collateral is for another platform or TEE (FMSPC, TCB info id, QE identity
    /// id, no identity for this TDX module version).
    CollateralMismatch,
    /// The quoting enclave does not match Intel's QE identity.
    QeIdentity,
    /// The TDX module signer or attributes do not match the TCB info.
    ModuleIdentity,
    /// No TCB level in the TCB info is met by the platform: Intel no longer vouches
    /// for this platform's TCB (Intel QVL's TCB_NOT_SUPPORTED).
    TcbNotSupported,
    /// The platform's TCB is revoked.
    TcbRevoked,
    /// The TD attributes are refused by Intel's QVL rules (reserved bits, migratable,
    /// SEPT_VE_DISABLE clear).
    TdAttributes,
    /// The quote or collateral has a shape dcap-qvl refuses.
    Format,
}

impl DcapRefusal {
    /// The category of this refusal.
    pub fn kind(self) -> ErrorKind {
        match self {
            DcapRefusal::Chain
            | DcapRefusal::QeIdentity
            | DcapRefusal::ModuleIdentity
            | DcapRefusal::TcbNotSupported
            | DcapRefusal::TcbRevoked => ErrorKind::UntrustedChain,
            DcapRefusal::CollateralSignature => ErrorKind::BadSignature,
            DcapRefusal::CollateralMismatch => ErrorKind::CollateralUnavailable,
            DcapRefusal::TdAttributes => ErrorKind::PolicyNotMet,
            DcapRefusal::Format => ErrorKind::Malformed,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            DcapRefusal::Chain => {
                "a certificate chain, CRL or validity period does not verify at the given time"
            }
            DcapRefusal::CollateralSignature => {
                "the TCB info or QE identity signature does not verify"
            }
            DcapRefusal::CollateralMismatch => "the collateral is not for this platform or TEE",
            DcapRefusal::QeIdentity => "the quoting enclave does not match the QE identity",
            DcapRefusal::ModuleIdentity => "the TDX module does not match the TCB info",
            DcapRefusal::TcbNotSupported => "no TCB level in the TCB info is met by this platform",
            DcapRefusal::TcbRevoked => "the platform TCB is revoked",
            DcapRefusal::TdAttributes => {
                "the TD attributes are refused by Intel's verification rules"
            }
            DcapRefusal::Format => "the quote or collateral has an unsupported shape",
        }
    }

    /// Classifies dcap-qvl's error chain (dcap-qvl 0.7 reports `anyhow` messages).
    fn classify(messages: &str) -> Self {
        const RULES: &[(&str, DcapRefusal)] = &[
            ("Debug mode is enabled", DcapRefusal::TdAttributes),
            ("TD profiling is enabled", DcapRefusal::TdAttributes),
            ("Reserved bits in TD attributes", DcapRefusal::TdAttributes),
            ("TD migration is enabled", DcapRefusal::TdAttributes),
            ("SERVTD_EXT is enabled", DcapRefusal::TdAttributes),
            ("SEPT_VE_DISABLE is not enabled", DcapRefusal::TdAttributes),
            ("Invalid MR service TD", DcapRefusal::TdAttributes),
            (
                "Signature is invalid for tcb_info",
                DcapRefusal::CollateralSignature,
            ),
            (
                "Signature is invalid for qe_identity",
                DcapRefusal::CollateralSignature,
            ),
            ("Fmspc mismatch", DcapRefusal::CollateralMismatch),
            ("non-TDX TCB info", DcapRefusal::CollateralMismatch),
            ("No TDX module identity", DcapRefusal::CollateralMismatch),
            (
                "Unsupported QE Identity id/version",
                DcapRefusal::CollateralMismatch,
            ),
            ("QE MRSIGNER mismatch", DcapRefusal::QeIdentity),
            ("QE ISVPRODID mismatch", DcapRefusal::QeIdentity),
            ("QE MISCSELECT mismatch", DcapRefusal::QeIdentity),
            ("QE ATTRIBUTES mismatch", DcapRefusal::QeIdentity),
            ("QE ISVSVN", DcapRefusal::QeIdentity),
            ("QE report validation failed", DcapRefusal::QeIdentity),
            ("TDX module MRSIGNER mismatch", DcapRefusal::ModuleIdentity),
            ("SEAMATTRIBUTES", DcapRefusal::ModuleIdentity),
            ("No matching TCB level", DcapRefusal::TcbNotSupported),
            (
                "below minimum required from TDX module",
                DcapRefusal::TcbNotSupported,
            ),
            ("Revoked", DcapRefusal::TcbRevoked),
            ("Failed to decode quote", DcapRefusal::Format),
            ("Invalid QE auth data length", DcapRefusal::Format),
        ];
        RULES
            .iter()
            .find(|(needle, _)| messages.contains(needle))
            .map_or(DcapRefusal::Chain, |(_, r)| *r)
    }
}

/// A quote that did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The quote does not parse.
    #[error("the quote is malformed")]
    Quote(#[from] QuoteError),
    /// The collateral does not parse or is incomplete.
    #[error("the collateral is unusable")]
    Collateral(#[from] CollateralError),
    /// The PCK chain in the quote does not decode.
    #[error("the PCK certificate chain in the quote is unusable")]
    PckChain(#[from] PckError),
    /// The attestation key is not a point on P-256.
    #[error("the attestation key in the quote is not a P-256 public key")]
    AttestationKey,
    /// The quote signature does not verify with the attestation key.
    #[error("the quote signature does not verify with the attestation key")]
    QuoteSignature,
    /// The QE report signature does not verify with the PCK leaf key.
    #[error("the QE report signature does not verify with the PCK certificate key")]
    QeReportSignature,
    /// The QE report does not vouch for the attestation key.
    #[error("the QE report does not bind the attestation key and QE auth data")]
    QeReportBinding,
    /// The quote is not from Intel's quoting enclave.
    #[error("the QE vendor id {0} is not Intel's")]
    QeVendor(String),
    /// DCAP verification (dcap-qvl) refused the quote.
    #[error("DCAP verification refused the quote: {}", .reason.describe())]
    Dcap {
        /// The classified reason.
        reason: DcapRefusal,
        /// dcap-qvl's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl VerifyError {
    /// The category of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            VerifyError::Quote(e) => e.kind(),
            VerifyError::Collateral(e) => e.kind(),
            VerifyError::PckChain(e) => e.kind(),
            VerifyError::AttestationKey => ErrorKind::Malformed,
            VerifyError::QuoteSignature
            | VerifyError::QeReportSignature
            | VerifyError::QeReportBinding => ErrorKind::BadSignature,
            VerifyError::QeVendor(_) => ErrorKind::UntrustedChain,
            VerifyError::Dcap { reason, .. } => reason.kind(),
        }
    }
}

/// A trust root that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustRootError {
    /// The file is not a PEM or DER certificate.
    #[error("the trust root is not a PEM or DER X.509 certificate")]
    Certificate(#[source] der::Error),
    /// The file holds more than one certificate.
    #[error("the trust root file holds {0} certificates; give exactly one root CA")]
    NotOne(usize),
}

/// The trust anchor of a verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustRoot {
    /// Intel's SGX/TDX provisioning root CA, as pinned by dcap-qvl.
    Intel,
    /// An operator-configured root (the emulated platform's `root_ca.pem`). Evidence
    /// chaining to it is marked [`TrustLevel::InsecureEmulated`].
    Emulated {
        /// The root certificate, DER.
        der: Vec<u8>,
    },
}

impl TrustRoot {
    /// Loads an operator-supplied root CA certificate (PEM or DER).
    pub fn emulated_from_bytes(bytes: &[u8]) -> Result<Self, TrustRootError> {
        use der::{Decode, Encode};
        let trimmed = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .and_then(|i| bytes.get(i..))
            .unwrap_or_default();
        let der = if trimmed.starts_with(b"-----BEGIN") {
            let certs = super::pck::load_pem_chain(bytes).map_err(TrustRootError::Certificate)?;
            match certs.as_slice() {
                [one] => one.to_der().map_err(TrustRootError::Certificate)?,
                other => return Err(TrustRootError::NotOne(other.len())),
            }
        } else {
            x509_cert::Certificate::from_der(bytes).map_err(TrustRootError::Certificate)?;
            bytes.to_vec()
        };
        Ok(TrustRoot::Emulated { der })
    }

    /// The trust level of evidence chaining to this root.
    pub fn trust_level(&self) -> TrustLevel {
        match self {
            TrustRoot::Intel => TrustLevel::Hardware,
            TrustRoot::Emulated { .. } => TrustLevel::InsecureEmulated,
        }
    }
}

/// A verified quote and the claims derived from it.
#[derive(Debug, Clone)]
pub struct VerifiedQuote {
    /// The parsed quote.
    pub quote: Quote,
    /// The normalized claims (`detail` is [`TeeClaims::Tdx`]).
    pub claims: Claims,
}

impl VerifiedQuote {
    /// The TDX-specific claims.
    pub fn tdx_claims(&self) -> Option<&TdxClaims> {
        match &self.claims.detail {
            TeeClaims::Tdx(c) => Some(c),
            TeeClaims::Snp(_) => None,
        }
    }
}

/// What a DCAP verification established about a platform, reused while valid.
#[derive(Debug, Clone)]
struct CachedVerdict {
    not_before: u64,
    not_after: u64,
    pck_key: VerifyingKey,
    platform: PlatformVerdict,
}

/// The platform-level outcome of DCAP verification.
#[derive(Debug, Clone)]
struct PlatformVerdict {
    tcb_status: TcbStatus,
    advisory_ids: Vec<String>,
    fmspc: [u8; 6],
    cpu_svn: [u8; 16],
    pce_svn: u16,
    qe_svn: u16,
    /// [`Claims::platform_id`] from the verified PCK certificate.
    platform_id: String,
}

/// Verifies TDX quotes against one trust root, caching collateral verification.
///
/// `TdxVerifier` is `Sync`: share one per trust root across threads.
#[derive(Debug)]
pub struct TdxVerifier {
    root: TrustRoot,
    cache: Mutex<HashMap<[u8; 32], CachedVerdict>>,
}

impl TdxVerifier {
    /// A verifier trusting Intel's root CA (pinned by dcap-qvl).
    pub fn intel() -> Self {
        Self::new(TrustRoot::Intel)
    }

    /// A verifier trusting `root`.
    pub fn new(root: TrustRoot) -> Self {
        Self {
            root,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The trust root.
    pub fn root(&self) -> &TrustRoot {
        &self.root
    }

    fn dcap(&self) -> QuoteVerifier<RustCryptoConfig> {
        let v = match &self.root {
            TrustRoot::Intel => QuoteVerifier::new_prod(),
            TrustRoot::Emulated { der } => QuoteVerifier::new(der.clone()),
        };
        // Debug TDs and service-TD bindings are policy decisions (the common `allow_debug`
        // and `TdxPolicy::allow_service_td`), so they are not refused here.
        v.with_config::<RustCryptoConfig>()
            .allow_debug(true)
            .allow_service_td(true)
    }

    /// Verifies a quote (bytes) with its collateral at time `now`.
    pub fn verify(
        &self,
        quote: &[u8],
        collateral: &Collateral,
        now: time::OffsetDateTime,
    ) -> Result<VerifiedQuote, VerifyError> {
        let parsed = Quote::parse(quote)?;
        self.verify_parsed(quote, parsed, collateral, now)
    }

    /// Verifies a quote with its collateral at the current time.
    pub fn verify_now(
        &self,
        quote: &[u8],
        collateral: &Collateral,
    ) -> Result<VerifiedQuote, VerifyError> {
        self.verify(quote, collateral, time::OffsetDateTime::now_utc())
    }

    /// Verifies an already parsed quote; `raw` must be the bytes `quote` was parsed from.
    pub fn verify_parsed(
        &self,
        raw: &[u8],
        quote: Quote,
        collateral: &Collateral,
        now: time::OffsetDateTime,
    ) -> Result<VerifiedQuote, VerifyError> {
        let now_secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
        let key = cache_key(&quote, collateral);
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&key)
                .filter(|v| v.not_before <= now_secs && now_secs <= v.not_after)
                .cloned()
        };
        let pck_key = match &cached {
            Some(v) => v.pck_key,
            None => PckChain::from_pem(&quote.signature_data.pck_cert_chain)?.leaf_key,
        };
        check_quote_signatures(raw, &quote, &pck_key)?;
        if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID {
            return Err(VerifyError::QeVendor(hex::encode(
                quote.header.qe_vendor_id,
            )));
        }
        let platform = match cached {
            Some(v) => v.platform,
            None => {
                let verdict = self.run_dcap(raw, collateral, now_secs, pck_key)?;
                let platform = verdict.platform.clone();
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= CACHE_CAPACITY {
                    cache.retain(|_, v| v.not_after >= now_secs);
                    if cache.len() >= CACHE_CAPACITY {
                        cache.clear();
                    }
                }
                cache.insert(key, verdict);
                platform
            }
        };
        let claims = build_claims(&quote, &platform, self.root.trust_level());
        Ok(VerifiedQuote { quote, claims })
    }

    fn run_dcap(
        &self,
        raw: &[u8],
        collateral: &Collateral,
        now_secs: u64,
        pck_key: VerifyingKey,
    ) -> Result<CachedVerdict, VerifyError> {
        let mut v3 = collateral.as_v3().clone();
        // The PCK chain always comes from the quote, whose QE report signature we checked.
        v3.pck_certificate_chain = None;
        let policy = dcap_qvl::QuotePolicy::claims_only(now_secs);
        let claims = self
            .dcap()
            .verify_with_policy(raw, v3, now_secs, &policy)
            .map_err(|e| {
                let source: Box<dyn std::error::Error + Send + Sync> = e.into();
                let mut text = source.to_string();
                let mut s = source.source();
                while let Some(inner) = s {
                    text.push_str(": ");
                    text.push_str(&inner.to_string());
                    s = inner.source();
                }
                VerifyError::Dcap {
                    reason: DcapRefusal::classify(&text),
                    source,
                }
            })?;
        Ok(CachedVerdict {
            not_before: claims.latest_issue_date,
            not_after: claims.earliest_expiration_date,
            pck_key,
            platform: PlatformVerdict {
                tcb_status: TcbStatus::from(claims.tcb.status),
                advisory_ids: claims.tcb.advisory_ids.clone(),
                fmspc: claims.platform.pck.fmspc,
                cpu_svn: claims.platform.pck.cpu_svn,
                pce_svn: claims.platform.pck.pce_svn,
                qe_svn: claims.qe.report.isv_svn,
                platform_id: platform_identity(&claims.platform.pck),
            },
        })
    }

    /// Number of cached collateral verification outcomes.
    pub fn cached_entries(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The platform identity of a PCK certificate DCAP verification accepted (see
/// [`Claims::platform_id`]): its platform instance id (Platform CA certificates), else
/// its PPID.
fn platform_identity(pck: &dcap_qvl::policy::PckIdentity) -> String {
    match &pck.platform_instance_id {
        Some(id) => format!("tdx-platform:{}", hex::encode(id)),
        None => format!("tdx-ppid:{}", hex::encode(&pck.ppid)),
    }
}

/// Checks the QE report signature, the QE report's binding of the attestation key, and
/// the quote signature.
fn check_quote_signatures(
    raw: &[u8],
    quote: &Quote,
    pck_key: &VerifyingKey,
) -> Result<(), VerifyError> {
    let sd = &quote.signature_data;
    if !pck::verify_raw(pck_key, &sd.qe_report.to_bytes(), &sd.qe_report_signature) {
        return Err(VerifyError::QeReportSignature);
    }
    let mut h = Sha256::new();
    h.update(sd.attestation_key);
    h.update(&sd.qe_auth_data);
    let binding: [u8; 32] = h.finalize().into();
    if sd.qe_report.report_data.get(..32) != Some(&binding[..]) {
        return Err(VerifyError::QeReportBinding);
    }
    let ak = pck::attestation_key(&sd.attestation_key).ok_or(VerifyError::AttestationKey)?;
    let signed = raw
        .get(..quote.signed_len())
        .ok_or(VerifyError::QuoteSignature)?;
    if !pck::verify_raw(&ak, signed, &sd.signature) {
        return Err(VerifyError::QuoteSignature);
    }
    Ok(())
}

/// SHA-256 over everything DCAP verification reads (see the module docs).
fn cache_key(quote: &Quote, collateral: &Collateral) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cvm-attestation tdx dcap verdict v1");
    h.update(collateral.digest());
    let hd = &quote.header;
    h.update(hd.version.to_le_bytes());
    h.update(hd.attestation_key_type.to_le_bytes());
    h.update(hd.tee_type.to_le_bytes());
    h.update(hd.qe_svn.to_le_bytes());
    h.update(hd.pce_svn.to_le_bytes());
    h.update(hd.qe_vendor_id);
    h.update(hd.user_data);
    let b = &quote.body;
    h.update(b.body_type().to_le_bytes());
    h.update(b.tee_tcb_svn);
    h.update(b.mr_seam);
    h.update(b.mr_signer_seam);
    h.update(b.seam_attributes);
    h.update(b.td_attributes);
    match &b.td15 {
        Some(t) => {
            h.update([1]);
            h.update(t.tee_tcb_svn2);
            h.update(t.mr_service_td);
        }
        None => h.update([0]),
    }
    let sd = &quote.signature_data;
    h.update(sd.attestation_key);
    h.update(sd.qe_report.to_bytes());
    h.update(sd.qe_report_signature);
    h.update((sd.qe_auth_data.len() as u64).to_le_bytes());
    h.update(&sd.qe_auth_data);
    h.update((sd.pck_cert_chain.len() as u64).to_le_bytes());
    h.update(&sd.pck_cert_chain);
    h.finalize().into()
}

fn build_claims(quote: &Quote, p: &PlatformVerdict, trust: TrustLevel) -> Claims {
    let b = &quote.body;
    let attributes = TdAttributes::from_bytes(b.td_attributes);
    let tdx = TdxClaims {
        quote_version: quote.header.version,
        body_type: quote.body_type(),
        tee_tcb_svn: b.tee_tcb_svn,
        tee_tcb_svn2: b.td15.map(|t| t.tee_tcb_svn2),
        mr_seam: b.mr_seam,
        mr_signer_seam: b.mr_signer_seam,
        seam_attributes: b.seam_attributes,
        td_attributes: attributes,
        xfam: b.xfam,
        mr_owner: b.mr_owner,
        mr_owner_config: b.mr_owner_config,
        rtmrs: Box::new(b.rtmr),
        mr_service_td: b.td15.map(|t| t.mr_service_td),
        fmspc: p.fmspc,
        cpu_svn: p.cpu_svn,
        pce_svn: p.pce_svn,
        qe_svn: p.qe_svn,
        tcb_status: p.tcb_status,
        advisory_ids: p.advisory_ids.clone(),
        boot_events: None,
    };
    Claims {
        tee: Tee::Tdx,
        trust,
        measurement: b.mr_td.to_vec(),
        report_data: b.report_data.to_vec(),
        host_data: b.mr_config_id.to_vec(),
        debug: attributes.under_debug(),
        platform_id: p.platform_id.clone(),
        detail: TeeClaims::Tdx(tdx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_of_dcap_messages() {
        assert_eq!(
            DcapRefusal::classify("No matching TCB level found"),
            DcapRefusal::TcbNotSupported
        );
        assert_eq!(DcapRefusal::classify("TCBInfo expired"), DcapRefusal::Chain);
        assert_eq!(
            DcapRefusal::classify("Fmspc mismatch"),
            DcapRefusal::CollateralMismatch
        );
        assert_eq!(
            DcapRefusal::classify("Signature is invalid for tcb_info in quote_collateral"),
            DcapRefusal::CollateralSignature
        );
        assert_eq!(
            DcapRefusal::classify("SEPT_VE_DISABLE is not enabled"),
            DcapRefusal::TdAttributes
        );
        assert_eq!(
            DcapRefusal::classify("TCB status is invalid: Revoked"),
            DcapRefusal::TcbRevoked
        );
        assert_eq!(
            DcapRefusal::TcbNotSupported.kind(),
            ErrorKind::UntrustedChain
        );
    }
}
