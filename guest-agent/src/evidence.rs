//! Evidence providers: what the platform-specific front end supplies.
//!
//! An [`EvidenceProvider`] turns 64 bytes of REPORT_DATA into [`Evidence`]: the TEE
//! name for the `auth` request and the `primary_evidence` JSON object of the `attest`
//! request, in the shape the verifier expects (`verifier::evidence`):
//!
//! | tee | object |
//! |---|---|
//! | `snp` | `{"report": base64(1184-byte ATTESTATION_REPORT), "cert_chain": base64(certificate table) \| null}` |
//! | `tdx` | `{"quote": base64(DCAP quote), "collateral": <QuoteCollateralV3 JSON object> \| null}` |
//!
//! Providers: the test guest's emulated mailbox (`testguest/src/tee.rs`); `cvm-agent`'s
//! `/dev/sev-guest`, configfs-tsm and `/dev/tdx_guest` (host binary, `std`), and its
//! `emulated-unix:PATH` client of `cvm emulated serve` (test equipment).

use alloc::string::String;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// The TEE kinds the verifier accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tee {
    /// AMD SEV-SNP (real or emulated).
    Snp,
    /// Intel TDX (real or emulated).
    Tdx,
}

impl Tee {
    /// The protocol name (`"snp"`, `"tdx"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Tee::Snp => "snp",
            Tee::Tdx => "tdx",
        }
    }
}

/// Size of an SNP ATTESTATION_REPORT.
pub const SNP_REPORT_LEN: usize = 0x4A0;

/// Why evidence could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// The platform has no such TEE, or refused the request.
    #[error("the TEE is unavailable: {0}")]
    Unavailable(String),
    /// The platform returned something malformed.
    #[error("the TEE returned malformed evidence: {0}")]
    Malformed(&'static str),
}

/// Evidence for one REPORT_DATA: the TEE and its `primary_evidence` JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    tee: Tee,
    json: String,
}

impl Evidence {
    /// SNP evidence from a report and the extended report's certificate table.
    pub fn snp(report: &[u8], cert_table: Option<&[u8]>) -> Result<Self, EvidenceError> {
        if report.len() != SNP_REPORT_LEN {
            return Err(EvidenceError::Malformed("the SNP report is not 1184 bytes"));
        }
        let mut json = String::with_capacity(2 * report.len() + 32);
        json.push_str("{\"report\":\"");
        B64.encode_string(report, &mut json);
        json.push_str("\",\"cert_chain\":");
        match cert_table {
            Some(t) => {
                json.push('"');
                B64.encode_string(t, &mut json);
                json.push('"');
            }
            None => json.push_str("null"),
        }
        json.push('}');
        Ok(Self {
            tee: Tee::Snp,
            json,
        })
    }

    /// TDX evidence from a quote and the collateral as JSON text (an object).
    pub fn tdx(quote: &[u8], collateral_json: Option<&[u8]>) -> Result<Self, EvidenceError> {
        if quote.len() < 48 {
            return Err(EvidenceError::Malformed("the TDX quote is too short"));
        }
        let mut json = String::with_capacity(2 * quote.len() + 32);
        json.push_str("{\"quote\":\"");
        B64.encode_string(quote, &mut json);
        json.push_str("\",\"collateral\":");
        match collateral_json {
            Some(c) => {
                // Embedded verbatim, so it must be one valid JSON object.
                let text = core::str::from_utf8(c)
                    .map_err(|_| EvidenceError::Malformed("the collateral is not UTF-8"))?;
                if !text.trim_start().starts_with('{')
                    || serde_json::from_str::<serde::de::IgnoredAny>(text).is_err()
                {
                    return Err(EvidenceError::Malformed(
                        "the collateral is not a JSON object",
                    ));
                }
                json.push_str(text.trim());
            }
            None => json.push_str("null"),
        }
        json.push('}');
        Ok(Self {
            tee: Tee::Tdx,
            json,
        })
    }

    /// The TEE.
    pub fn tee(&self) -> Tee {
        self.tee
    }

    /// The `primary_evidence` JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// A source of attestation evidence (hardware driver, emulated mailbox, test double).
pub trait EvidenceProvider {
    /// The TEE this provider attests.
    fn tee(&self) -> Tee;
    /// Evidence binding `report_data`.
    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError>;
}
