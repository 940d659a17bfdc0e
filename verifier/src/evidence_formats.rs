//! Parsing of the `primary_evidence` JSON object, in our own format and in Trustee's.
//!
//! Parsing only: the result is the raw evidence the `attestation` crate verifies. The
//! format is detected from the object's member names, and each format is then parsed
//! strictly (unknown members refused):
//!
//! | tee | format | object | detected by |
//! |---|---|---|---|
//! | `snp` | cvm | `{"report": base64(1184 bytes), "cert_chain": base64(certificate table) \| null}` | `report` |
//! | `snp` | Trustee `SnpEvidence` | `{"attestation_report": <sev::AttestationReport JSON>, "cert_chain": [{"cert_type": …, "data": [bytes…]}] \| null}` | `attestation_report` |
//! | `tdx` | Trustee `TdxEvidence` | `{"quote": base64, "cc_eventlog": base64(CCEL) \| null}` (and `"aa_eventlog": null` from older agents) | no `collateral` |
//! | `tdx` | cvm | Trustee's object plus `"collateral": <QuoteCollateralV3 object> \| null` | `collateral` |
//!
//! An SNP object with both formats' members (`report` and `attestation_report`) is
//! refused, never guessed. The cvm TDX format is Trustee's `TdxEvidence` extended by
//! `collateral` (so the two cannot conflict; Trustee's own verifier ignores the extra
//! member, which lets an agent send one object to both), and `cc_eventlog` is
//! replayed in either.
//!
//! # Trustee's SNP report
//!
//! Trustee's `SnpEvidence.attestation_report` is the `sev` crate's `AttestationReport`
//! serialized with serde (the project's `sev` 8.0; Trustee pins a virtee/sev git
//! revision and guest-components' attester uses sev 6.3 — the members are the same
//! fields, but a layout change in a future `sev` would be refused here as malformed,
//! not misread). The verifier checks the signature over the raw 1184 bytes, so the
//! object is converted back with `sev`'s encoder and then **decoded again and compared
//! with the object**: any value the raw layout cannot hold (an `fmc` on a pre-Turin
//! TCB, CPUID fields in a version-2 report, a masked CHIP_ID in a version-2 report,
//! where `sev` cannot tell the generation) is refused instead of silently dropped, so
//! the bytes judged are exactly the bytes the object describes. Reserved bytes are
//! encoded as zero, as the firmware writes them; a report with non-zero reserved bytes
//! cannot be represented in this format and fails its signature check.
//!
//! Trustee's `cert_chain` is a list of `sev` `CertTableEntry` (`cert_type`: `"ARK"`,
//! `"ASK"`, `"VCEK"`, `"VLEK"`, `"CRL"` or `{"OTHER": uuid}`; `data`: the DER as an
//! array of byte values); it is converted to the extended-report certificate table that
//! the cvm format carries, so both formats are verified by the same code.
//!
//! # Trustee's TDX evidence
//!
//! `cc_eventlog` is standard base64 of the CCEL data area (the TCG crypto-agile event
//! log, which current attestation agents append their own runtime events to); it is
//! replayed against the quote's RTMRs by the caller
//! ([`attestation::tdx::eventlog::replay`]). Trustee's TDX evidence carries no
//! collateral. A non-null `aa_eventlog` (the separate AA event log of older agents) is
//! refused: its events extend RTMR3 without being in the CCEL, so the log could not be
//! replayed, and ignoring it would hide what RTMR3 measures.

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::CertTableEntry as SevCertTableEntry;
use sev::parser::ByteParser;

use attestation::snp::{CertTable, CertTableEntry, CertTableKind};

/// Which format a `primary_evidence` object was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvidenceFormat {
    /// The cvm format (`report` / `collateral`).
    Cvm,
    /// Trustee's `SnpEvidence` / `TdxEvidence`.
    Trustee,
}

/// Parsed SNP evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpInput {
    /// The format it came in.
    pub format: EvidenceFormat,
    /// The raw ATTESTATION_REPORT (1184 bytes when genuine; length is checked by the
    /// verifier).
    pub report: Vec<u8>,
    /// The extended-report certificate table (raw bytes), when the evidence has one.
    pub cert_table: Option<Vec<u8>>,
}

/// Parsed TDX evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxInput {
    /// The format it came in.
    pub format: EvidenceFormat,
    /// The DCAP quote.
    pub quote: Vec<u8>,
    /// The `QuoteCollateralV3` JSON object (text), cvm format only.
    pub collateral: Option<Vec<u8>>,
    /// The CC event log, Trustee format only (`None` when absent, null or empty).
    pub cc_eventlog: Option<Vec<u8>>,
}

/// Why a `primary_evidence` object could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Not JSON, or not an object.
    #[error("the {tee} evidence is not a JSON object")]
    NotObject {
        /// `snp` or `tdx`.
        tee: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The members match neither format, or both.
    #[error("the {tee} evidence object is in no known format: {why}")]
    UnknownFormat {
        /// `snp` or `tdx`.
        tee: &'static str,
        /// What was found.
        why: &'static str,
    },
    /// The object does not have the shape of its format.
    #[error("the {tee} evidence object ({format}) is malformed")]
    Shape {
        /// `snp` or `tdx`.
        tee: &'static str,
        /// `cvm` or `Trustee`.
        format: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A member is not base64.
    #[error("{0} is not base64")]
    Base64(&'static str),
    /// Trustee's report object cannot be turned into the exact signed bytes.
    #[error("the attestation_report object cannot be encoded losslessly as an SNP report: {0}")]
    Report(String),
    /// Trustee's certificate list cannot be turned into a certificate table.
    #[error("the cert_chain list is not a valid certificate table: {0}")]
    CertChain(String),
    /// An older agent's separate AA event log.
    #[error("a separate aa_eventlog is not supported: send the attestation agent's events in cc_eventlog (current Trustee format)")]
    AaEventLog,
}

impl FormatError {
    /// The category: always [`attestation::ErrorKind::Malformed`].
    pub fn kind(&self) -> attestation::ErrorKind {
        attestation::ErrorKind::Malformed
    }
}

/// Decodes standard base64 (with padding), or URL-safe as a fallback.
pub fn decode_b64(s: &str, what: &'static str) -> Result<Vec<u8>, FormatError> {
    let s = s.trim();
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('='))
        })
        .map_err(|_| FormatError::Base64(what))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CvmSnp {
    report: String,
    #[serde(default)]
    cert_chain: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrusteeSnp {
    attestation_report: AttestationReport,
    #[serde(default)]
    cert_chain: Option<Vec<SevCertTableEntry>>,
}

/// Trustee's `TdxEvidence` and the cvm format (Trustee's plus `collateral`) in one
/// strict shape: the members do not conflict, so no guessing is needed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnyTdx {
    quote: String,
    #[serde(default)]
    collateral: Option<Value>,
    #[serde(default)]
    cc_eventlog: Option<String>,
    #[serde(default)]
    aa_eventlog: Option<Value>,
}

/// Which SNP members are present (values skipped, not built).
#[derive(Deserialize)]
struct SnpPeek {
    #[serde(default)]
    report: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    attestation_report: Option<serde::de::IgnoredAny>,
}

/// Parses SNP `primary_evidence` in either format.
pub fn parse_snp(bytes: &[u8]) -> Result<SnpInput, FormatError> {
    const TEE: &str = "snp";
    // A first pass only notes which members exist; the chosen format's strict struct
    // then parses the text (a null member counts as absent, and is then refused as an
    // unknown member of the other format).
    let peek: SnpPeek = serde_json::from_slice(bytes)
        .map_err(|source| FormatError::NotObject { tee: TEE, source })?;
    let strict = |format: &'static str| {
        move |source| FormatError::Shape {
            tee: TEE,
            format,
            source,
        }
    };
    match (peek.report.is_some(), peek.attestation_report.is_some()) {
        (true, false) => {
            let ev: CvmSnp = serde_json::from_slice(bytes).map_err(strict("cvm"))?;
            Ok(SnpInput {
                format: EvidenceFormat::Cvm,
                report: decode_b64(&ev.report, "report")?,
                cert_table: ev
                    .cert_chain
                    .map(|c| decode_b64(&c, "cert_chain"))
                    .transpose()?,
            })
        }
        (false, true) => {
            let ev: TrusteeSnp =
                serde_json::from_slice(bytes).map_err(strict("Trustee SnpEvidence"))?;
            Ok(SnpInput {
                format: EvidenceFormat::Trustee,
                report: report_bytes(&ev.attestation_report)?,
                cert_table: ev.cert_chain.map(|c| cert_table_bytes(&c)).transpose()?,
            })
        }
        (true, true) => Err(FormatError::UnknownFormat {
            tee: TEE,
            why: "it has both report and attestation_report",
        }),
        (false, false) => Err(FormatError::UnknownFormat {
            tee: TEE,
            why: "it has neither report nor attestation_report",
        }),
    }
}

/// The raw 1184 bytes of `report`, refused unless decoding them gives `report` back.
pub fn report_bytes(report: &AttestationReport) -> Result<Vec<u8>, FormatError> {
    let bytes = report
        .to_bytes()
        .map_err(|e| FormatError::Report(e.to_string()))?;
    let again = AttestationReport::from_bytes(&bytes[..])
        .map_err(|e| FormatError::Report(e.to_string()))?;
    if again != *report {
        return Err(FormatError::Report(
            "it holds values the report layout of its version and generation cannot carry".into(),
        ));
    }
    Ok(bytes.to_vec())
}

/// The GUID of a `sev` certificate type in RFC 4122 byte order.
fn guid(t: &sev::firmware::host::CertType) -> Result<[u8; 16], FormatError> {
    let text = t.to_string();
    let hex_text: String = text.chars().filter(|c| *c != '-').collect();
    let mut g = [0u8; 16];
    hex::decode_to_slice(&hex_text, &mut g)
        .map_err(|_| FormatError::CertChain(format!("certificate type {text} is not a GUID")))?;
    Ok(g)
}

/// The extended-report certificate table holding `entries`.
pub fn cert_table_bytes(entries: &[SevCertTableEntry]) -> Result<Vec<u8>, FormatError> {
    let mut table = CertTable::default();
    for (i, e) in entries.iter().enumerate() {
        let g = guid(&e.cert_type)?;
        if g == [0u8; 16] {
            return Err(FormatError::CertChain(format!(
                "entry {i} has the empty (terminator) type"
            )));
        }
        if e.data.is_empty() {
            return Err(FormatError::CertChain(format!("entry {i} is empty")));
        }
        let kind = CertTableKind::from_guid(g);
        if table.entries.iter().any(|x| x.kind == kind) {
            return Err(FormatError::CertChain(format!(
                "entry {i} repeats the type {}",
                e.cert_type
            )));
        }
        table.entries.push(CertTableEntry {
            kind,
            data: e.data.clone(),
        });
    }
    table
        .to_bytes()
        .map_err(|e| FormatError::CertChain(e.to_string()))
}

/// Parses TDX `primary_evidence` in either format.
pub fn parse_tdx(bytes: &[u8]) -> Result<TdxInput, FormatError> {
    const TEE: &str = "tdx";
    let ev: AnyTdx = serde_json::from_slice(bytes).map_err(|source| FormatError::Shape {
        tee: TEE,
        format: "cvm or Trustee TdxEvidence",
        source,
    })?;
    if ev.aa_eventlog.is_some_and(|v| !v.is_null()) {
        return Err(FormatError::AaEventLog);
    }
    let (format, collateral) = match ev.collateral {
        None | Some(Value::Null) => (EvidenceFormat::Trustee, None),
        Some(v @ Value::Object(_)) => (
            EvidenceFormat::Cvm,
            Some(serde_json::to_vec(&v).map_err(|source| FormatError::Shape {
                tee: TEE,
                format: "cvm",
                source,
            })?),
        ),
        Some(_) => {
            return Err(FormatError::UnknownFormat {
                tee: TEE,
                why: "collateral is neither an object nor null",
            })
        }
    };
    let cc_eventlog = match ev.cc_eventlog.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(decode_b64(s, "cc_eventlog")?),
    };
    Ok(TdxInput {
        format,
        quote: decode_b64(&ev.quote, "quote")?,
        collateral,
        cc_eventlog,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_is_strict() {
        for bad in [
            &br#"{"report":"AA==","attestation_report":{}}"#[..],
            br#"{"cert_chain":null}"#,
            br#"[1]"#,
            br#"{"report":"AA==","extra":1}"#,
        ] {
            let e = parse_snp(bad).unwrap_err();
            assert_eq!(e.kind(), attestation::ErrorKind::Malformed, "{e}");
        }
        for bad in [
            &br#"{"cc_eventlog":null}"#[..],
            br#"{"quote":"AA==","cc_eventlog":null,"other":1}"#,
            br#"{"quote":"AA==","aa_eventlog":"bG9n"}"#,
            br#"{"quote":"AA==","collateral":"text"}"#,
        ] {
            assert!(parse_tdx(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let q = parse_tdx(br#"{"quote":"AAE=","cc_eventlog":"","aa_eventlog":null}"#).unwrap();
        assert_eq!(q.format, EvidenceFormat::Trustee);
        assert_eq!((q.quote, q.cc_eventlog), (vec![0, 1], None));
        let q = parse_tdx(br#"{"quote":"AAE=","collateral":null,"cc_eventlog":"AQ=="}"#).unwrap();
        // A null collateral is no collateral: the object is Trustee's.
        assert_eq!((q.format, q.collateral), (EvidenceFormat::Trustee, None));
        assert_eq!(q.cc_eventlog, Some(vec![1]));
    }
}
