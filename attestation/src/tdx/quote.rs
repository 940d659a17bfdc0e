//! The TDX DCAP quote, versions 4 and 5, parsed and serialized byte for byte.
//!
//! Layout (Intel TDX DCAP Quote Generation Library and Quote Verification Library API,
//! appendix "Quote Format"):
//!
//! ```text
//! header (48)      version u16 | attestation key type u16 | TEE type u32 | QE SVN u16 |
//!                  PCE SVN u16 | QE vendor id [16] | user data [20]
//! v5 only (6)      body type u16 (2 = TD 1.0, 3 = TD 1.5) | body size u32
//! body             TD 1.0 report body (584) or TD 1.5 report body (648)
//! signature data   length u32, then: ECDSA-P256 signature r||s big-endian [64] |
//!                  attestation public key x||y [64] | certification data type u16 (6) |
//!                  size u32 | QE report (SGX report body, 384) | QE report signature [64] |
//!                  QE auth data size u16 | QE auth data | certification data type u16 (5) |
//!                  size u32 | PEM PCK certificate chain
//! ```
//!
//! The quote signature covers the header, the v5 body descriptor and the body (see
//! [`Quote::signed_len`]). Some quote producers pad the buffer with zero bytes after the
//! signature data (the genuine v4 test vector carries 70); the parser accepts zero
//! padding, records its length, and [`Quote::to_bytes`] reproduces it, so a parsed quote
//! re-serializes to identical bytes. Non-zero trailing bytes are refused.
//!
//! Our emulated quoting enclave produces its quotes with this serializer, so the
//! verifier parses exactly what the emulator writes.

use serde::{Deserialize, Serialize};

// The error type lives in `super::error`, which `super::report` uses too: `quote`
// depends on `report`, never the reverse.
pub use super::error::{QuoteError, MAX_QUOTE_LEN};
use super::report::SgxReportBody;
use super::wire::{Reader, Writer};

/// Length of the quote header.
pub const HEADER_LEN: usize = 48;
/// Length of a TD 1.0 report body.
pub const TD10_BODY_LEN: usize = 584;
/// Length of a TD 1.5 report body.
pub const TD15_BODY_LEN: usize = 648;
/// Length of the v5 body descriptor (type u16, size u32).
pub const BODY_DESCRIPTOR_LEN: usize = 6;
/// Attestation key type 2: ECDSA-256 with the P-256 curve.
pub const ATTESTATION_KEY_TYPE_ECDSA_P256: u16 = 2;
/// TEE type of TDX quotes.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// The QE vendor id of Intel's quoting enclave.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];
/// v5 body type of a TD 1.0 report body.
pub const BODY_TYPE_TD10: u16 = 2;
/// v5 body type of a TD 1.5 report body.
pub const BODY_TYPE_TD15: u16 = 3;
/// Certification data type 5: a PEM PCK certificate chain (leaf, intermediate, root).
pub const CERT_DATA_PCK_CHAIN: u16 = 5;
/// Certification data type 6: QE report certification data.
pub const CERT_DATA_QE_REPORT: u16 = 6;
/// The 48-byte quote header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteHeader {
    /// Quote version: 4 or 5.
    pub version: u16,
    /// Attestation key type: 2 (ECDSA-P256).
    pub attestation_key_type: u16,
    /// TEE type: 0x81 for TDX.
    pub tee_type: u32,
    /// QE SVN (reserved, zero, in Intel's TD quotes).
    pub qe_svn: u16,
    /// PCE SVN (reserved, zero, in Intel's TD quotes).
    pub pce_svn: u16,
    /// QE vendor id; Intel's is [`INTEL_QE_VENDOR_ID`].
    #[serde(with = "super::wire::hex_array")]
    pub qe_vendor_id: [u8; 16],
    /// User data: the QE id (16 bytes) and 4 zero bytes in Intel's quotes.
    #[serde(with = "super::wire::hex_array")]
    pub user_data: [u8; 20],
}

impl QuoteHeader {
    fn parse(r: &mut Reader<'_>) -> Result<Self, QuoteError> {
        Ok(Self {
            version: r.u16("header version")?,
            attestation_key_type: r.u16("attestation key type")?,
            tee_type: r.u32("TEE type")?,
            qe_svn: r.u16("QE SVN")?,
            pce_svn: r.u16("PCE SVN")?,
            qe_vendor_id: r.array("QE vendor id")?,
            user_data: r.array("user data")?,
        })
    }

    fn write(&self, w: &mut Vec<u8>) {
        w.put_u16(self.version);
        w.put_u16(self.attestation_key_type);
        w.put_u32(self.tee_type);
        w.put_u16(self.qe_svn);
        w.put_u16(self.pce_svn);
        w.put(&self.qe_vendor_id);
        w.put(&self.user_data);
    }
}

/// The TD report body of a quote: TD 1.0 fields, plus the TD 1.5 fields when present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReportBody {
    /// TEE_TCB_SVN: the TDX module and related SVNs.
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM: measurement of the TDX module.
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM: signer of the TDX module (zero for Intel's module).
    pub mr_signer_seam: [u8; 48],
    /// SEAMATTRIBUTES.
    pub seam_attributes: [u8; 8],
    /// TDATTRIBUTES (little-endian u64; bit 0 DEBUG, bit 28 SEPT_VE_DISABLE).
    pub td_attributes: [u8; 8],
    /// XFAM: extended features available to the TD.
    pub xfam: [u8; 8],
    /// MRTD: the build-time measurement of the TD.
    pub mr_td: [u8; 48],
    /// MRCONFIGID: host-provided configuration id.
    pub mr_config_id: [u8; 48],
    /// MROWNER: host-provided owner id.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG: host-provided owner configuration.
    pub mr_owner_config: [u8; 48],
    /// RTMR0..RTMR3: run-time measurement registers.
    pub rtmr: [[u8; 48]; 4],
    /// REPORTDATA chosen by the TD.
    pub report_data: [u8; 64],
    /// TD 1.5 fields (v5 body type 3 only).
    pub td15: Option<Td15Fields>,
}

/// The fields a TD 1.5 report body adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Td15Fields {
    /// TEE_TCB_SVN2: the current TCB after TD-preserving module updates.
    pub tee_tcb_svn2: [u8; 16],
    /// MRSERVICETD: hash of the service TDs bound to this TD (zero if none).
    pub mr_service_td: [u8; 48],
}

impl TdReportBody {
    fn parse(r: &mut Reader<'_>, td15: bool) -> Result<Self, QuoteError> {
        let mut body = Self {
            tee_tcb_svn: r.array("TEE_TCB_SVN")?,
            mr_seam: r.array("MRSEAM")?,
            mr_signer_seam: r.array("MRSIGNERSEAM")?,
            seam_attributes: r.array("SEAMATTRIBUTES")?,
            td_attributes: r.array("TDATTRIBUTES")?,
            xfam: r.array("XFAM")?,
            mr_td: r.array("MRTD")?,
            mr_config_id: r.array("MRCONFIGID")?,
            mr_owner: r.array("MROWNER")?,
            mr_owner_config: r.array("MROWNERCONFIG")?,
            rtmr: [
                r.array("RTMR0")?,
                r.array("RTMR1")?,
                r.array("RTMR2")?,
                r.array("RTMR3")?,
            ],
            report_data: r.array("REPORTDATA")?,
            td15: None,
        };
        if td15 {
            body.td15 = Some(Td15Fields {
                tee_tcb_svn2: r.array("TEE_TCB_SVN2")?,
                mr_service_td: r.array("MRSERVICETD")?,
            });
        }
        Ok(body)
    }

    fn write(&self, w: &mut Vec<u8>) {
        w.put(&self.tee_tcb_svn);
        w.put(&self.mr_seam);
        w.put(&self.mr_signer_seam);
        w.put(&self.seam_attributes);
        w.put(&self.td_attributes);
        w.put(&self.xfam);
        w.put(&self.mr_td);
        w.put(&self.mr_config_id);
        w.put(&self.mr_owner);
        w.put(&self.mr_owner_config);
        for r in &self.rtmr {
            w.put(r);
        }
        w.put(&self.report_data);
        if let Some(t) = &self.td15 {
            w.put(&t.tee_tcb_svn2);
            w.put(&t.mr_service_td);
        }
    }

    /// Length of this body on the wire.
    pub fn len(&self) -> usize {
        if self.td15.is_some() {
            TD15_BODY_LEN
        } else {
            TD10_BODY_LEN
        }
    }

    /// Always false: a body has a fixed, non-zero length.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The v5 body type of this body.
    pub fn body_type(&self) -> u16 {
        if self.td15.is_some() {
            BODY_TYPE_TD15
        } else {
            BODY_TYPE_TD10
        }
    }

    /// TDATTRIBUTES as a number.
    pub fn td_attributes_u64(&self) -> u64 {
        u64::from_le_bytes(self.td_attributes)
    }
}

/// The quote's signature data: the attestation key's signature, the key, and the QE
/// report certification data (type 6) with the nested PCK chain (type 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteSignatureData {
    /// ECDSA-P256 signature over the signed region, r||s big-endian.
    pub signature: [u8; 64],
    /// The attestation public key, x||y big-endian (uncompressed point without 0x04).
    pub attestation_key: [u8; 64],
    /// The quoting enclave's SGX report; its REPORTDATA binds the attestation key.
    pub qe_report: SgxReportBody,
    /// ECDSA-P256 signature of the QE report by the PCK key, r||s big-endian.
    pub qe_report_signature: [u8; 64],
    /// QE authentication data, hashed with the attestation key into the QE REPORTDATA.
    pub qe_auth_data: Vec<u8>,
    /// The PCK certificate chain, PEM, exactly as carried (Intel's ends in a NUL byte).
    pub pck_cert_chain: Vec<u8>,
}

impl QuoteSignatureData {
    fn parse(r: &mut Reader<'_>) -> Result<Self, QuoteError> {
        let signature = r.array("quote signature")?;
        let attestation_key = r.array("attestation key")?;
        let cert_type = r.u16("certification data type")?;
        if cert_type != CERT_DATA_QE_REPORT {
            return Err(QuoteError::UnsupportedCertificationData {
                level: "outer",
                found: cert_type,
                expected: CERT_DATA_QE_REPORT,
            });
        }
        let cert_size = r.u32("certification data size")? as usize;
        let cert = r.take(cert_size, "QE report certification data")?;
        let mut c = Reader::new(cert);
        let qe_report = SgxReportBody::parse(&mut c)?;
        let qe_report_signature = c.array("QE report signature")?;
        let auth_len = c.u16("QE auth data size")? as usize;
        let qe_auth_data = c.take(auth_len, "QE auth data")?.to_vec();
        let inner_type = c.u16("PCK certification data type")?;
        if inner_type != CERT_DATA_PCK_CHAIN {
            return Err(QuoteError::UnsupportedCertificationData {
                level: "inner",
                found: inner_type,
                expected: CERT_DATA_PCK_CHAIN,
            });
        }
        let chain_len = c.u32("PCK certification data size")? as usize;
        let pck_cert_chain = c.take(chain_len, "PCK certificate chain")?.to_vec();
        if !c.rest().is_empty() {
            return Err(QuoteError::LengthMismatch {
                what: "QE report certification data",
                declared: cert_size,
                actual: c.position(),
            });
        }
        Ok(Self {
            signature,
            attestation_key,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            pck_cert_chain,
        })
    }

    fn write(&self, w: &mut Vec<u8>) -> Result<(), QuoteError> {
        let auth_len = u16::try_from(self.qe_auth_data.len())
            .map_err(|_| QuoteError::FieldTooLong("QE auth data"))?;
        let chain_len = u32::try_from(self.pck_cert_chain.len())
            .map_err(|_| QuoteError::FieldTooLong("PCK certificate chain"))?;
        let mut cert = Vec::with_capacity(
            384 + 64 + 2 + self.qe_auth_data.len() + 6 + self.pck_cert_chain.len(),
        );
        self.qe_report.write(&mut cert);
        cert.put(&self.qe_report_signature);
        cert.put_u16(auth_len);
        cert.put(&self.qe_auth_data);
        cert.put_u16(CERT_DATA_PCK_CHAIN);
        cert.put_u32(chain_len);
        cert.put(&self.pck_cert_chain);
        let cert_len = u32::try_from(cert.len())
            .map_err(|_| QuoteError::FieldTooLong("certification data"))?;
        w.put(&self.signature);
        w.put(&self.attestation_key);
        w.put_u16(CERT_DATA_QE_REPORT);
        w.put_u32(cert_len);
        w.put(&cert);
        Ok(())
    }

    /// The QE report certification data as carried (the body of certification data type 6).
    pub fn qe_certification_data(&self) -> Result<Vec<u8>, QuoteError> {
        let mut all = Vec::new();
        self.write(&mut all)?;
        // Skip signature, key, type and size.
        Ok(all.get(64 + 64 + 2 + 4..).unwrap_or_default().to_vec())
    }
}

/// A TDX quote, version 4 or 5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The header.
    pub header: QuoteHeader,
    /// The TD report body.
    pub body: TdReportBody,
    /// The signature data.
    pub signature_data: QuoteSignatureData,
    /// Number of zero bytes that followed the signature data in the parsed input.
    pub trailing_zeros: usize,
}

impl Quote {
    /// Parses a quote, refusing anything that is not a well-formed TDX quote v4 or v5
    /// with an ECDSA-P256 key and QE report certification data.
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        if bytes.len() > MAX_QUOTE_LEN {
            return Err(QuoteError::TooLarge { len: bytes.len() });
        }
        let mut r = Reader::new(bytes);
        let header = QuoteHeader::parse(&mut r)?;
        if header.version != 4 && header.version != 5 {
            return Err(QuoteError::UnsupportedVersion(header.version));
        }
        if header.attestation_key_type != ATTESTATION_KEY_TYPE_ECDSA_P256 {
            return Err(QuoteError::UnsupportedKeyType(header.attestation_key_type));
        }
        if header.tee_type != TEE_TYPE_TDX {
            return Err(QuoteError::NotTdx(header.tee_type));
        }
        let td15 = if header.version == 5 {
            let body_type = r.u16("body type")?;
            let size = r.u32("body size")?;
            let expected = match body_type {
                BODY_TYPE_TD10 => TD10_BODY_LEN,
                BODY_TYPE_TD15 => TD15_BODY_LEN,
                other => return Err(QuoteError::UnsupportedBodyType(other)),
            };
            if size as usize != expected {
                return Err(QuoteError::BodySizeMismatch {
                    body_type,
                    size,
                    expected,
                });
            }
            body_type == BODY_TYPE_TD15
        } else {
            false
        };
        let body = TdReportBody::parse(&mut r, td15)?;
        let sig_len = r.u32("signature data length")? as usize;
        let sig = r.take(sig_len, "signature data")?;
        let mut s = Reader::new(sig);
        let signature_data = QuoteSignatureData::parse(&mut s)?;
        if !s.rest().is_empty() {
            return Err(QuoteError::LengthMismatch {
                what: "signature data",
                declared: sig_len,
                actual: s.position(),
            });
        }
        let trailing = r.rest();
        if trailing.iter().any(|b| *b != 0) {
            return Err(QuoteError::TrailingData {
                len: trailing.len(),
            });
        }
        Ok(Self {
            header,
            body,
            signature_data,
            trailing_zeros: trailing.len(),
        })
    }

    /// Serializes the quote; `Quote::parse(&q.to_bytes()?) == Ok(q)` for every quote
    /// this module can parse.
    pub fn to_bytes(&self) -> Result<Vec<u8>, QuoteError> {
        let mut out = self.signed_bytes()?;
        let mut sig = Vec::with_capacity(4096);
        self.signature_data.write(&mut sig)?;
        let sig_len =
            u32::try_from(sig.len()).map_err(|_| QuoteError::FieldTooLong("signature data"))?;
        out.put_u32(sig_len);
        out.put(&sig);
        out.resize(out.len() + self.trailing_zeros, 0);
        Ok(out)
    }

    /// The bytes covered by the quote signature: header, v5 body descriptor and body.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, QuoteError> {
        let mut out = Vec::with_capacity(self.signed_len());
        self.header.write(&mut out);
        if self.header.version == 5 {
            out.put_u16(self.body.body_type());
            // The body length is a small constant.
            out.put_u32(self.body.len() as u32);
        } else if self.body.td15.is_some() {
            return Err(QuoteError::Td15InV4);
        }
        self.body.write(&mut out);
        Ok(out)
    }

    /// Length of the signed region.
    pub fn signed_len(&self) -> usize {
        let descriptor = if self.header.version == 5 {
            BODY_DESCRIPTOR_LEN
        } else {
            0
        };
        HEADER_LEN + descriptor + self.body.len()
    }

    /// The v5 body type (2 for a v4 quote, whose body is always TD 1.0).
    pub fn body_type(&self) -> u16 {
        self.body.body_type()
    }
}
