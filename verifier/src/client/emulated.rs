//! Emulated guests (test equipment): evidence from the `attestation` crate's emulated
//! SNP and TDX platforms, in the exact hardware formats and the `tee-evidence` shapes
//! documented in [`crate::evidence`].

use std::path::Path;

use attestation::snp::emulated::{EmulatedSnpPlatform, FinishParams, ReportRequest};
use attestation::tdx::emulated::{CollateralOptions, EmulatedTd, EmulatedTdxPlatform, TdConfig};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use super::kbs::EvidenceSource;
use super::ClientError;

/// The default SNP guest policy of emulated guests: SMT allowed, reserved bit 17 set.
pub const SNP_GUEST_POLICY: u64 = 0x30000;

/// An emulated SEV-SNP guest with a given launch measurement.
#[derive(Debug)]
pub struct SnpGuest {
    platform: EmulatedSnpPlatform,
    measurement: [u8; 48],
    policy: u64,
}

impl SnpGuest {
    /// A guest of the platform in `dir` (as written by `EmulatedSnpPlatform::create`).
    pub fn open(dir: &Path, measurement: [u8; 48]) -> Result<Self, ClientError> {
        let platform =
            EmulatedSnpPlatform::open(dir).map_err(|e| ClientError::Emulated(e.to_string()))?;
        Ok(Self {
            platform,
            measurement,
            policy: SNP_GUEST_POLICY,
        })
    }

    /// A guest of an in-memory platform.
    pub fn new(platform: EmulatedSnpPlatform, measurement: [u8; 48], policy: u64) -> Self {
        Self {
            platform,
            measurement,
            policy,
        }
    }

    /// The raw extended report for `report_data`: (report, certificate table bytes).
    pub fn extended_report(
        &self,
        report_data: &[u8; 64],
    ) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        let e = |e: attestation::snp::emulated::EmulatedError| ClientError::Emulated(e.to_string());
        let guest = self
            .platform
            .launch_start_from(self.policy, self.measurement)
            .map_err(e)?
            .finish(FinishParams::default())
            .map_err(e)?;
        let (report, table) = guest
            .extended_report(&ReportRequest {
                report_data: *report_data,
                vmpl: 0,
                version: 3,
            })
            .map_err(e)?;
        let table = table
            .to_bytes()
            .map_err(|x| ClientError::Emulated(x.to_string()))?;
        Ok((report.to_vec(), table))
    }
}

impl EvidenceSource for SnpGuest {
    fn tee(&self) -> &'static str {
        "snp"
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Value, ClientError> {
        let (report, table) = self.extended_report(report_data)?;
        Ok(json!({"report": B64.encode(report), "cert_chain": B64.encode(table)}))
    }
}

/// An emulated TDX guest (TD) with a given MRTD.
#[derive(Debug)]
pub struct TdxGuest {
    platform: EmulatedTdxPlatform,
    td: EmulatedTd,
    collateral: Value,
}

impl TdxGuest {
    /// A TD of the platform in `dir` (as written by `EmulatedTdxPlatform::create`).
    pub fn open(dir: &Path, mrtd: [u8; 48]) -> Result<Self, ClientError> {
        let platform =
            EmulatedTdxPlatform::open(dir).map_err(|e| ClientError::Emulated(e.to_string()))?;
        Self::new(platform, EmulatedTd::with_mrtd(TdConfig::default(), mrtd))
    }

    /// A TD of an in-memory platform; collateral valid around now.
    pub fn new(platform: EmulatedTdxPlatform, td: EmulatedTd) -> Result<Self, ClientError> {
        let coll = platform
            .collateral(&CollateralOptions::default())
            .map_err(|e| ClientError::Emulated(e.to_string()))?;
        let text = coll
            .to_json()
            .map_err(|e| ClientError::Emulated(e.to_string()))?;
        let collateral =
            serde_json::from_str(&text).map_err(|e| ClientError::Emulated(e.to_string()))?;
        Ok(Self {
            platform,
            td,
            collateral,
        })
    }

    /// The quote bytes for `report_data`.
    pub fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, ClientError> {
        let q = self
            .platform
            .quote_td(&self.td, report_data, 4)
            .map_err(|e| ClientError::Emulated(e.to_string()))?;
        q.to_bytes()
            .map_err(|e| ClientError::Emulated(e.to_string()))
    }
}

impl EvidenceSource for TdxGuest {
    fn tee(&self) -> &'static str {
        "tdx"
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Value, ClientError> {
        Ok(json!({"quote": B64.encode(self.quote(report_data)?), "collateral": self.collateral}))
    }
}
