//! SEV-SNP evidence: the ATTESTATION_REPORT, AMD's certificates, verification against
//! AMD's pinned roots, claims, and the emulated SNP secure processor.
//!
//! # Design
//!
//! - [`report`]: the 0x4A0-byte ATTESTATION_REPORT, versions 2, 3 and 5, parsed and
//!   serialized field by field at fixed offsets (never transmuted). Reserved bytes must
//!   be zero, so `parse` and `to_bytes` are exact inverses; the emulated platform signs
//!   reports produced by the same serializer. Raw TCB values are kept as read and
//!   decoded per product ([`tcb`]): Turin reorders the bytes and adds the FMC SPL.
//!   The `sev` crate's `AttestationReport` decoder is used as a cross-check in tests;
//!   ours is separate because we need strict reserved-byte checks, exact
//!   re-serialization, and errors instead of `std::io::Error`.
//! - [`certs`]: ARK, ASK, ASVK, VCEK and VLEK certificates (DER or PEM) on
//!   RustCrypto's `x509-cert`; RSASSA-PSS SHA-384 salt-48 signature checks with `rsa`,
//!   VCEK/VLEK TCB, product and hwID extensions, and AMD's CRLs.
//! - [`cert_table`]: the extended-report certificate table (GUID, offset, length).
//! - [`roots`]: trust anchors — AMD's Milan, Genoa and Turin ARK/ASK pinned in the
//!   binary (taken from the `sev` crate's `certs/snp/builtin`), plus operator roots.
//! - [`verify`]: [`SnpVerifier`], which checks a report against its collateral at a
//!   caller-supplied time and returns [`Claims`](crate::claims::Claims). Verified
//!   chains are cached, keyed by the SHA-384 of the VCEK/VLEK DER, so a steady stream of
//!   reports from known chips costs one ECDSA P-384 verification each (see the
//!   `snp_verify` benchmark).
//! - [`claims`]: [`SnpClaims`], the normalized SNP view read by
//!   [`policy::snp::SnpPolicy`](crate::policy::snp::SnpPolicy).
//! - [`emulated`]: a software SNP secure processor (test equipment): launch digest over
//!   the measured-boot launch plan, reports in the exact v3/v5 formats signed by an
//!   emulated VCEK under an emulated ASK and ARK. [`emulated::kds`] renders its
//!   VCEK, ASK/ARK chain and CRL as AMD's KDS serves them (paths and content types),
//!   so a verifier can fetch an emulated platform's collateral like a real one's.
//!
//! # Trust model
//!
//! A report is authentic when its signature verifies under a VCEK (or VLEK) whose
//! certificate chains, with RSASSA-PSS SHA-384 signatures, to a *trusted root*, and
//! whose TCB and hwID extensions match the report's REPORTED_TCB and CHIP_ID.
//!
//! - By default the only trusted roots are AMD's pinned ARKs; claims are
//!   [`TrustLevel::Hardware`](crate::claims::TrustLevel::Hardware).
//! - An operator can add a root file ([`TrustRoots::with_operator_roots`], the
//!   verifier's `--trust-root`), typically the trust anchor of an emulated platform.
//!   Evidence chaining to it is
//!   [`TrustLevel::InsecureEmulated`](crate::claims::TrustLevel::InsecureEmulated),
//!   which the default policy refuses. Without such a file, emulated evidence fails
//!   with [`ErrorKind::UntrustedChain`](crate::ErrorKind::UntrustedChain).
//! - Certificates supplied with the evidence (the certificate table, `--chain`,
//!   `--certs-dir`) are untrusted input: they only help build a path to a root. An ARK
//!   supplied with the evidence is never trusted.
//! - Time is an input: certificate validity (and CRL currency) is checked at the time
//!   the caller passes, so tests and audits are reproducible.
//!
//! # Usage
//!
//! ```no_run
//! use attestation::snp::{SnpCollateral, SnpVerifier};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = SnpVerifier::amd()?;
//! let mut collateral = SnpCollateral::new();
//! collateral.add_certificates(&std::fs::read("vcek.der")?, "VCEK")?;
//! let report = std::fs::read("report.bin")?;
//! let claims = verifier.verify(&report, &collateral, time::OffsetDateTime::now_utc())?;
//! // The default policy plus the expected launch measurement (from `cvm measure`).
//! let expected = hex::decode(std::fs::read_to_string("measurement.hex")?.trim())?;
//! attestation::policy::Policy {
//!     measurements: vec![expected],
//!     ..Default::default()
//! }
//! .evaluate(&claims)?;
//! # Ok(()) }
//! ```

pub mod cert_table;
pub mod certs;
pub mod claims;
pub mod emulated;
pub mod report;
pub mod roots;
pub mod tcb;
pub mod verify;

use serde::{Deserialize, Serialize};

pub use cert_table::{CertTable, CertTableEntry, CertTableKind};
pub use certs::{AmdCertificate, AmdCrl, CertKind};
pub use claims::{Signer, SnpClaims, SnpGuestPolicy, SnpPlatformInfo};
pub use report::AttestationReport;
pub use roots::TrustRoots;
pub use tcb::{TcbLayout, TcbParts, TcbVersion};
pub use verify::{SnpCollateral, SnpVerifier, SnpVerifyError, VerifiedChain, VerifiedReport};

/// An SEV-SNP capable EPYC processor generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Product {
    /// 3rd generation EPYC (family 19h, models 00h-0Fh).
    Milan,
    /// 4th generation EPYC (family 19h, models 10h-1Fh, A0h-AFh).
    Genoa,
    /// 5th generation EPYC (family 1Ah, models 00h-11h).
    Turin,
}

impl Product {
    /// The name AMD uses ("Milan", "Genoa", "Turin").
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// From AMD's names, with or without a stepping suffix ("Milan", "Milan-B0").
    pub fn from_name(name: &str) -> Option<Self> {
        let base = name.split('-').next().unwrap_or(name);
        match base.to_ascii_lowercase().as_str() {
            "milan" => Some(Product::Milan),
            "genoa" => Some(Product::Genoa),
            "turin" => Some(Product::Turin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
