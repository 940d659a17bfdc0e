//! Normalized claims: evidence is turned into claims once, and policies read claims,
//! never raw bytes.

use serde::{Deserialize, Serialize};

/// Which trusted execution environment produced the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tee {
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
}

/// Who vouches for the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrustLevel {
    /// The evidence chains to AMD's or Intel's genuine root.
    Hardware,
    /// The evidence chains to an operator-configured emulated root: it proves nothing
    /// about memory encryption and must never protect real secrets.
    InsecureEmulated,
}

/// The normalized result of verifying one piece of evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The TEE that produced the evidence.
    pub tee: Tee,
    /// Whether the trust anchor was genuine hardware or emulated.
    pub trust: TrustLevel,
    /// The launch measurement: SNP MEASUREMENT or TDX MRTD (48 bytes).
    #[serde(with = "hex::serde")]
    pub measurement: Vec<u8>,
    /// The 64 bytes of guest-chosen data bound into the evidence.
    #[serde(with = "hex::serde")]
    pub report_data: Vec<u8>,
    /// Host-provided launch data: SNP HOST_DATA (32 bytes) or TDX MRCONFIGID (48 bytes).
    #[serde(with = "hex::serde")]
    pub host_data: Vec<u8>,
    /// Whether the guest was launched debuggable (SNP policy DEBUG, TDX TD_ATTRIBUTES.DEBUG).
    pub debug: bool,
    /// The identity of the hardware platform, taken from the *verified* endorsement
    /// certificate and never from a report field the host controls (SNP CHIP_ID can be
    /// masked by the guest policy the host picks):
    /// - SNP signed by a VCEK: the VCEK's hwID extension (1.3.6.1.4.1.3704.1.4), as 64
    ///   bytes of hex, zero-padded (equal to the unmasked CHIP_ID);
    /// - SNP signed by a VLEK (which has no hwID): `vlek:` and the hex of the report's
    ///   CHIP_ID, which the VLEK signed. A VLEK is per chip, per cloud provider and per
    ///   TCB, so its key digest would give one chip a new identity for every
    ///   REPORTED_TCB the host loads a VLEK for; the CHIP_ID does not change. A VLEK
    ///   report with MASK_CHIP_ID set has **no** identity: this field is empty, and
    ///   consumers that key revocation on it must refuse it (the verifier service does);
    /// - TDX: `tdx-platform:` and the PCK certificate's platform instance id (Platform
    ///   CA certificates, multi-package platforms), else `tdx-ppid:` and its PPID
    ///   (1.2.840.113741.1.13.1.1), from the chain DCAP verification accepted.
    #[serde(default)]
    pub platform_id: String,
    /// TEE-specific claims.
    pub detail: TeeClaims,
}

/// TEE-specific claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tee", rename_all = "lowercase")]
pub enum TeeClaims {
    /// SEV-SNP specifics.
    Snp(crate::snp::SnpClaims),
    /// TDX specifics.
    Tdx(crate::tdx::TdxClaims),
}
