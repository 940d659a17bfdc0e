//! Policy checks on [`Claims`], with secure defaults.
//!
//! A [`Policy`] holds the checks common to both TEEs and one section per TEE
//! ([`snp::SnpPolicy`], [`tdx::TdxPolicy`]). `Policy::default()` is the secure default:
//! any measurement, but debug refused, the SNP migration agent refused, TDX TCB status
//! UpToDate only and SEPT_VE_DISABLE required. Every refusal names the failed check.

pub mod snp;
pub mod tdx;

use serde::{Deserialize, Serialize};

use crate::claims::{Claims, TeeClaims};

/// A refused check: the stable name of the check and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("policy check `{check}` failed: {detail}")]
pub struct PolicyViolation {
    /// Stable, machine-readable name of the check (for example `measurement`, `debug`).
    pub check: String,
    /// Human-readable description of what was found and what was required.
    pub detail: String,
}

impl PolicyViolation {
    /// A violation of `check` described by `detail`.
    pub fn new(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            detail: detail.into(),
        }
    }
}

/// The checks applied to verified claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Allowed launch measurements (SNP MEASUREMENT or TDX MRTD); empty allows any.
    #[serde(with = "hex_list")]
    pub measurements: Vec<Vec<u8>>,
    /// If set, REPORT_DATA must equal this (64 bytes).
    #[serde(with = "hex_opt")]
    pub report_data: Option<Vec<u8>>,
    /// If set, HOST_DATA (SNP) or MRCONFIGID (TDX) must equal this.
    #[serde(with = "hex_opt")]
    pub host_data: Option<Vec<u8>>,
    /// Accept guests launched with debugging enabled. Off by default.
    pub allow_debug: bool,
    /// Accept evidence whose trust anchor is emulated. Off by default.
    pub allow_emulated: bool,
    /// SEV-SNP specific checks.
    pub snp: snp::SnpPolicy,
    /// TDX specific checks.
    pub tdx: tdx::TdxPolicy,
}

impl Policy {
    /// Evaluates every check; the first refusal is returned.
    pub fn evaluate(&self, claims: &Claims) -> Result<(), PolicyViolation> {
        use crate::claims::TrustLevel;
        if claims.trust == TrustLevel::InsecureEmulated && !self.allow_emulated {
            return Err(PolicyViolation::new(
                "trust-anchor",
                "evidence is from an emulated TEE and emulated evidence is not allowed",
            ));
        }
        if !self.measurements.is_empty() && !self.measurements.contains(&claims.measurement) {
            return Err(PolicyViolation::new(
                "measurement",
                format!(
                    "measurement {} is not in the allowed list",
                    hex::encode(&claims.measurement)
                ),
            ));
        }
        if let Some(rd) = &self.report_data {
            if *rd != claims.report_data {
                return Err(PolicyViolation::new(
                    "report-data",
                    "REPORT_DATA does not match the expected value",
                ));
            }
        }
        if let Some(hd) = &self.host_data {
            if *hd != claims.host_data {
                return Err(PolicyViolation::new(
                    "host-data",
                    format!(
                        "host data {} does not match the expected value",
                        hex::encode(&claims.host_data)
                    ),
                ));
            }
        }
        if claims.debug && !self.allow_debug {
            return Err(PolicyViolation::new(
                "debug",
                "the guest was launched with debugging enabled",
            ));
        }
        match &claims.detail {
            TeeClaims::Snp(c) => self.snp.check(c),
            TeeClaims::Tdx(c) => self.tdx.check(c),
        }
    }
}

mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
