//! Evidence formats, verification, claims and policy for SEV-SNP and TDX, and the
//! software-emulated secure processors used as test equipment.
//!
//! # Layout
//! - [`snp`]: SEV-SNP attestation reports, AMD certificates, verification against the
//!   pinned AMD roots, and the emulated SNP secure processor.
//! - [`tdx`]: TDX quotes (v4, v5), TDREPORT, DCAP verification with collateral, and the
//!   emulated TDX module and quoting enclave.
//! - [`claims`]: the one normalized view of verified evidence that policies read.
//! - [`policy`]: policy checks evaluated on [`claims::Claims`], with secure defaults.
//!
//! # Errors
//! Every verification error reports an [`ErrorKind`], so callers can tell malformed
//! evidence from a bad signature, an untrusted chain, unavailable collateral and a policy
//! refusal: they act differently on each.

pub mod claims;
pub mod policy;
pub mod snp;
pub mod tdx;

/// The category of a verification failure. Callers act differently on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The evidence or a certificate could not be parsed, or violates its format.
    Malformed,
    /// A signature over the evidence or a certificate does not verify.
    BadSignature,
    /// The signer does not chain to a trusted root, or a certificate is expired,
    /// revoked, of the wrong kind, or for another chip/platform.
    UntrustedChain,
    /// Collateral (certificates, CRLs, TCB info) needed for the decision is missing.
    CollateralUnavailable,
    /// The evidence is authentic but does not satisfy the policy.
    PolicyNotMet,
}

impl ErrorKind {
    /// A short stable name, used in JSON output, metrics and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Malformed => "malformed",
            ErrorKind::BadSignature => "bad-signature",
            ErrorKind::UntrustedChain => "untrusted-chain",
            ErrorKind::CollateralUnavailable => "collateral-unavailable",
            ErrorKind::PolicyNotMet => "policy-not-met",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
