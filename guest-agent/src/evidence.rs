//! Evidence providers: what the platform-specific front end supplies.
//!
//! An [`EvidenceProvider`] turns 64 bytes of REPORT_DATA into [`Evidence`]: the TEE
//! name for the `auth` request and the `primary_evidence` JSON object of the `attest`
//! request, in one of the shapes the verifier accepts (`verifier::evidence_formats`):
//!
//! | constructor | tee | object |
//! |---|---|---|
//! | [`Evidence::snp_trustee`] (`std`) | `snp` | Trustee's `SnpEvidence`: `{"attestation_report": <sev AttestationReport JSON>, "cert_chain": [{"cert_type", "data"}] \| null}` |
//! | [`Evidence::tdx_trustee`] | `tdx` | Trustee's `TdxEvidence`: `{"quote": base64(DCAP quote), "cc_eventlog": base64(CCEL) \| null}`, plus `"collateral": <QuoteCollateralV3 object>` when the agent has collateral (Trustee ignores that member) |
//! | [`Evidence::snp`] | `snp` | cvm: `{"report": base64(1184-byte ATTESTATION_REPORT), "cert_chain": base64(certificate table) \| null}` |
//! | [`Evidence::tdx`] | `tdx` | cvm: `{"quote": base64(DCAP quote), "collateral": <QuoteCollateralV3 JSON object> \| null}` |
//!
//! `cvm-agent` sends Trustee's formats, so the same agent works against a Trustee KBS
//! and against `cvm-verifier`; the bare-metal test guest (no_std, no `sev` crate) sends
//! the cvm formats, which `cvm-verifier` accepts too.
//!
//! Providers: the test guest's SNP guest request and TD quote (`testguest/src/snp.rs`,
//! `testguest/src/tee.rs`); `cvm-agent`'s
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
            Some(c) => json.push_str(json_object(c)?),
            None => json.push_str("null"),
        }
        json.push('}');
        Ok(Self {
            tee: Tee::Tdx,
            json,
        })
    }

    /// Trustee's `TdxEvidence`: the quote, the CC event log (the CCEL ACPI table's data
    /// area) when there is one, and — a cvm extension Trustee's verifier ignores — the
    /// collateral as JSON text (an object) when the agent has it.
    pub fn tdx_trustee(
        quote: &[u8],
        cc_eventlog: Option<&[u8]>,
        collateral_json: Option<&[u8]>,
    ) -> Result<Self, EvidenceError> {
        if quote.len() < 48 {
            return Err(EvidenceError::Malformed("the TDX quote is too short"));
        }
        let log_len = cc_eventlog.map_or(0, |l| l.len());
        let mut json = String::with_capacity(2 * (quote.len() + log_len) + 48);
        json.push_str("{\"quote\":\"");
        B64.encode_string(quote, &mut json);
        json.push_str("\",\"cc_eventlog\":");
        match cc_eventlog {
            Some(l) if !l.is_empty() => {
                json.push('"');
                B64.encode_string(l, &mut json);
                json.push('"');
            }
            _ => json.push_str("null"),
        }
        if let Some(c) = collateral_json {
            json.push_str(",\"collateral\":");
            json.push_str(json_object(c)?);
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

/// `c` as JSON text to embed verbatim: it must be one valid JSON object.
fn json_object(c: &[u8]) -> Result<&str, EvidenceError> {
    let text = core::str::from_utf8(c)
        .map_err(|_| EvidenceError::Malformed("the collateral is not UTF-8"))?;
    if !text.trim_start().starts_with('{')
        || serde_json::from_str::<serde::de::IgnoredAny>(text).is_err()
    {
        return Err(EvidenceError::Malformed(
            "the collateral is not a JSON object",
        ));
    }
    Ok(text.trim())
}

#[cfg(feature = "std")]
mod trustee_snp {
    use super::{Evidence, EvidenceError, Tee, SNP_REPORT_LEN};
    use sev::firmware::guest::AttestationReport;
    use sev::firmware::host::CertTableEntry;
    use sev::parser::ByteParser;

    #[derive(serde::Serialize)]
    struct SnpEvidence<'a> {
        attestation_report: &'a AttestationReport,
        cert_chain: Option<Vec<CertTableEntry>>,
    }

    /// The entries of an extended-report certificate table (GUID, offset, length
    /// records up to the all-zero terminator; data bounds checked).
    fn entries(table: &[u8]) -> Result<Vec<CertTableEntry>, EvidenceError> {
        const BAD: EvidenceError = EvidenceError::Malformed("the certificate table is malformed");
        let mut out = Vec::new();
        let mut pos = 0usize;
        loop {
            let rec = table.get(pos..pos + 24).ok_or(BAD)?;
            let mut guid = [0u8; 16];
            guid.copy_from_slice(&rec[..16]);
            if guid == [0u8; 16] {
                return Ok(out);
            }
            let word = |o: usize| u32::from_le_bytes([rec[o], rec[o + 1], rec[o + 2], rec[o + 3]]);
            let (offset, len) = (word(16) as usize, word(20) as usize);
            let data = offset
                .checked_add(len)
                .and_then(|end| table.get(offset..end))
                .ok_or(BAD)?;
            if out.len() == 64 || data.is_empty() {
                return Err(BAD);
            }
            out.push(
                CertTableEntry::from_guid(&uuid::Uuid::from_bytes(guid), data.to_vec())
                    .map_err(|_| BAD)?,
            );
            pos += 24;
        }
    }

    impl Evidence {
        /// Trustee's `SnpEvidence`: the report as the `sev` crate's `AttestationReport`
        /// and the certificate table as a list of `sev` `CertTableEntry`.
        ///
        /// The verifier re-encodes the report object and checks the signature over the
        /// result, so the object must describe the report's bytes exactly. A report the
        /// `sev` crate cannot represent losslessly (an unknown CPU generation, a masked
        /// CHIP_ID in a version-2 report, non-zero reserved bytes) is sent in the cvm
        /// format instead ([`Evidence::snp`]), which `cvm-verifier` accepts (a Trustee
        /// KBS would refuse either way).
        pub fn snp_trustee(
            report: &[u8],
            cert_table: Option<&[u8]>,
        ) -> Result<Self, EvidenceError> {
            if report.len() != SNP_REPORT_LEN {
                return Err(EvidenceError::Malformed("the SNP report is not 1184 bytes"));
            }
            let parsed = match AttestationReport::from_bytes(report) {
                Ok(r) if r.to_bytes().is_ok_and(|b| b.as_ref() == report) => r,
                _ => return Self::snp(report, cert_table),
            };
            let cert_chain = cert_table.map(entries).transpose()?;
            let json = serde_json::to_string(&SnpEvidence {
                attestation_report: &parsed,
                cert_chain,
            })
            .map_err(|_| EvidenceError::Malformed("the SNP report cannot be serialized"))?;
            Ok(Self {
                tee: Tee::Snp,
                json,
            })
        }
    }
}

/// A source of attestation evidence (hardware driver, emulated TEE service, test double).
pub trait EvidenceProvider {
    /// The TEE this provider attests.
    fn tee(&self) -> Tee;
    /// Evidence binding `report_data`.
    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError>;
}
