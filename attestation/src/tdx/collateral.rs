//! DCAP collateral in dcap-qvl's `QuoteCollateralV3` JSON format: PCK CRL and its
//! issuer chain, root CA CRL, TCB info (JSON text, signature, issuer chain) and QE
//! identity (JSON text, signature, issuer chain). Binary fields are hex strings.
//!
//! [`Collateral::from_json`] checks presence first (a missing or empty field is
//! [`CollateralError::Missing`], kind `CollateralUnavailable`: the caller should fetch
//! it), then shape (bad hex, unparsable CRL, PEM or TCB info JSON, wrong signature
//! length: [`ErrorKind::Malformed`](crate::ErrorKind::Malformed)). Nothing here is
//! trusted yet: signatures, chains and validity windows are checked by the DCAP
//! verification in [`super::verify`].
//!
//! A collateral value carries a SHA-256 digest of all its fields, computed once, which
//! keys the verifier's cache of collateral verification results.

use der::Decode;
use sha2::{Digest, Sha256};

pub use dcap_qvl::QuoteCollateralV3;

/// The fields of `QuoteCollateralV3` that verification needs.
pub const REQUIRED_FIELDS: [&str; 9] = [
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
];

/// Collateral that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CollateralError {
    /// The text is not a JSON object.
    #[error("the collateral is not a JSON object")]
    NotJson(#[source] serde_json::Error),
    /// A required field is absent or empty.
    #[error("the collateral has no `{0}`")]
    Missing(&'static str),
    /// The fields do not have the `QuoteCollateralV3` types.
    #[error("the collateral fields do not match the QuoteCollateralV3 format")]
    Format(#[source] serde_json::Error),
    /// The TCB info JSON does not parse.
    #[error("the TCB info in the collateral does not parse")]
    TcbInfo(#[source] serde_json::Error),
    /// The QE identity JSON does not parse.
    #[error("the QE identity in the collateral does not parse")]
    QeIdentity(#[source] serde_json::Error),
    /// A CRL is not DER.
    #[error("the {0} in the collateral is not a DER CRL")]
    Crl(&'static str, #[source] der::Error),
    /// An issuer chain is not PEM certificates.
    #[error("the {0} in the collateral is not a PEM certificate chain")]
    Chain(&'static str, #[source] der::Error),
    /// A signature is not 64 bytes (r||s).
    #[error("the {what} in the collateral is {len} bytes, expected 64 (r||s)")]
    SignatureLength {
        /// Which signature.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The collateral could not be serialized.
    #[error("the collateral could not be serialized")]
    Serialize(#[source] serde_json::Error),
}

impl CollateralError {
    /// `CollateralUnavailable` for missing pieces, `Malformed` for everything else.
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            CollateralError::Missing(_) => crate::ErrorKind::CollateralUnavailable,
            _ => crate::ErrorKind::Malformed,
        }
    }
}

/// How new a collateral set is: the TCB info's and the QE identity's
/// `tcbEvaluationDataNumber` and `issueDate` (Unix seconds; an unparsable date counts as
/// the oldest possible). Used to refuse a TCB rollback: older-but-still-valid
/// collateral offered in place of newer collateral the verifier has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// TCB info `tcbEvaluationDataNumber`.
    pub tcb_evaluation_data_number: u32,
    /// TCB info `issueDate`.
    pub tcb_info_issued: i64,
    /// QE identity `tcbEvaluationDataNumber`.
    pub qe_evaluation_data_number: u32,
    /// QE identity `issueDate`.
    pub qe_identity_issued: i64,
}

impl Freshness {
    /// Why `self` is older than `other` (in any of its four parts), or `None` when it is
    /// not older.
    pub fn older_than(&self, other: &Freshness) -> Option<String> {
        let parts = [
            (
                "TCB info tcbEvaluationDataNumber",
                i64::from(self.tcb_evaluation_data_number),
                i64::from(other.tcb_evaluation_data_number),
            ),
            (
                "TCB info issueDate",
                self.tcb_info_issued,
                other.tcb_info_issued,
            ),
            (
                "QE identity tcbEvaluationDataNumber",
                i64::from(self.qe_evaluation_data_number),
                i64::from(other.qe_evaluation_data_number),
            ),
            (
                "QE identity issueDate",
                self.qe_identity_issued,
                other.qe_identity_issued,
            ),
        ];
        parts
            .iter()
            .find(|(_, a, b)| a < b)
            .map(|(what, a, b)| format!("{what} {a} is older than {b}"))
    }
}

fn issued(s: &str) -> i64 {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .unwrap_or(i64::MIN)
}

/// Parsed, not yet verified collateral.
#[derive(Debug, Clone)]
pub struct Collateral {
    v3: QuoteCollateralV3,
    tcb_info: dcap_qvl::TcbInfo,
    qe_identity: dcap_qvl::QeIdentity,
    digest: [u8; 32],
}

impl Collateral {
    /// Reads `QuoteCollateralV3` JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CollateralError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(CollateralError::NotJson)?;
        let obj = value.as_object().ok_or_else(|| {
            CollateralError::NotJson(<serde_json::Error as serde::de::Error>::custom(
                "expected a JSON object",
            ))
        })?;
        for field in REQUIRED_FIELDS {
            match obj.get(field) {
                None | Some(serde_json::Value::Null) => {
                    return Err(CollateralError::Missing(field))
                }
                Some(serde_json::Value::String(s)) if s.is_empty() => {
                    return Err(CollateralError::Missing(field))
                }
                _ => {}
            }
        }
        let v3: QuoteCollateralV3 =
            serde_json::from_value(value).map_err(CollateralError::Format)?;
        Self::from_v3(v3)
    }

    /// Checks the shape of a `QuoteCollateralV3` value.
    pub fn from_v3(v3: QuoteCollateralV3) -> Result<Self, CollateralError> {
        let missing = [
            ("pck_crl_issuer_chain", v3.pck_crl_issuer_chain.is_empty()),
            ("root_ca_crl", v3.root_ca_crl.is_empty()),
            ("pck_crl", v3.pck_crl.is_empty()),
            ("tcb_info_issuer_chain", v3.tcb_info_issuer_chain.is_empty()),
            ("tcb_info", v3.tcb_info.is_empty()),
            ("tcb_info_signature", v3.tcb_info_signature.is_empty()),
            (
                "qe_identity_issuer_chain",
                v3.qe_identity_issuer_chain.is_empty(),
            ),
            ("qe_identity", v3.qe_identity.is_empty()),
            ("qe_identity_signature", v3.qe_identity_signature.is_empty()),
        ];
        if let Some((field, _)) = missing.iter().find(|(_, m)| *m) {
            return Err(CollateralError::Missing(field));
        }
        let tcb_info: dcap_qvl::TcbInfo =
            serde_json::from_str(&v3.tcb_info).map_err(CollateralError::TcbInfo)?;
        let qe_identity: dcap_qvl::QeIdentity =
            serde_json::from_str(&v3.qe_identity).map_err(CollateralError::QeIdentity)?;
        type Crl = x509_cert::crl::CertificateList;
        Crl::from_der(&v3.root_ca_crl).map_err(|e| CollateralError::Crl("root CA CRL", e))?;
        Crl::from_der(&v3.pck_crl).map_err(|e| CollateralError::Crl("PCK CRL", e))?;
        for (what, chain) in [
            ("PCK CRL issuer chain", &v3.pck_crl_issuer_chain),
            ("TCB info issuer chain", &v3.tcb_info_issuer_chain),
            ("QE identity issuer chain", &v3.qe_identity_issuer_chain),
        ] {
            let certs = super::pck::load_pem_chain(chain.as_bytes())
                .map_err(|e| CollateralError::Chain(what, e))?;
            if certs.is_empty() {
                return Err(CollateralError::Chain(
                    what,
                    der::Error::from(der::ErrorKind::Failed),
                ));
            }
        }
        for (what, sig) in [
            ("TCB info signature", &v3.tcb_info_signature),
            ("QE identity signature", &v3.qe_identity_signature),
        ] {
            if sig.len() != 64 {
                return Err(CollateralError::SignatureLength {
                    what,
                    len: sig.len(),
                });
            }
        }
        let digest = digest_of(&v3);
        Ok(Self {
            v3,
            tcb_info,
            qe_identity,
            digest,
        })
    }

    /// The collateral as dcap-qvl's type.
    pub fn as_v3(&self) -> &QuoteCollateralV3 {
        &self.v3
    }

    /// The parsed (unverified) TCB info.
    pub fn tcb_info(&self) -> &dcap_qvl::TcbInfo {
        &self.tcb_info
    }

    /// The parsed (unverified) QE identity.
    pub fn qe_identity(&self) -> &dcap_qvl::QeIdentity {
        &self.qe_identity
    }

    /// How new the collateral is (see [`Freshness`]).
    pub fn freshness(&self) -> Freshness {
        Freshness {
            tcb_evaluation_data_number: self.tcb_info.tcb_evaluation_data_number,
            tcb_info_issued: issued(&self.tcb_info.issue_date),
            qe_evaluation_data_number: self.qe_identity.tcb_evaluation_data_number,
            qe_identity_issued: issued(&self.qe_identity.issue_date),
        }
    }

    /// SHA-256 over every field (length-prefixed, in a fixed order).
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// `QuoteCollateralV3` JSON, the format [`Collateral::from_json`] reads.
    pub fn to_json(&self) -> Result<String, CollateralError> {
        serde_json::to_string_pretty(&self.v3).map_err(CollateralError::Serialize)
    }
}

fn digest_of(v3: &QuoteCollateralV3) -> [u8; 32] {
    let mut h = Sha256::new();
    let fields: [&[u8]; 10] = [
        v3.pck_crl_issuer_chain.as_bytes(),
        &v3.root_ca_crl,
        &v3.pck_crl,
        v3.tcb_info_issuer_chain.as_bytes(),
        v3.tcb_info.as_bytes(),
        &v3.tcb_info_signature,
        v3.qe_identity_issuer_chain.as_bytes(),
        v3.qe_identity.as_bytes(),
        &v3.qe_identity_signature,
        v3.pck_certificate_chain
            .as_deref()
            .unwrap_or_default()
            .as_bytes(),
    ];
    for f in fields {
        h.update((f.len() as u64).to_le_bytes());
        h.update(f);
    }
    h.finalize().into()
}
