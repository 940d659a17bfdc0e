//! AMD SEV-SNP certificates: ARK, ASK, ASVK, VCEK and VLEK, in DER or PEM.
//!
//! AMD's key hierarchy (VCEK specification 57230, VLEK specification 58369):
//!
//! ```text
//!   ARK  (AMD Root Key, RSA-4096, self-signed)            CN = ARK-<Product>
//!    ├── ASK  (AMD SEV Key, RSA-4096)                      CN = SEV-<Product>
//!    │    └── VCEK (Versioned Chip Endorsement Key, P-384)  CN = SEV-VCEK
//!    └── ASVK (AMD SEV VLEK Key, RSA-4096)                 CN = SEV-VLEK-<Product>
//!         └── VLEK (Versioned Loaded Endorsement Key, P-384) CN = SEV-VLEK
//! ```
//!
//! Every signature in the hierarchy is RSASSA-PSS with SHA-384, MGF1-SHA-384 and a
//! 48-byte salt; the parameters are checked exactly. A certificate's *kind* is read from
//! its subject common name (AMD's naming, which the emulated platform copies) and must
//! agree with its key type; the kind only selects the verification path, trust comes
//! from the signatures up to a trusted root.
//!
//! VCEK/VLEK certificates carry AMD extensions under 1.3.6.1.4.1.3704.1: the product
//! name (.2), the TCB security patch levels the key was derived for (.3.1 boot loader,
//! .3.2 TEE, .3.3 SNP, .3.8 microcode, .3.9 FMC on Turin; DER INTEGERs) and, for VCEKs,
//! the chip's hardware ID (.4, raw bytes: 64 on Milan/Genoa, 8 on Turin).

use der::asn1::ObjectIdentifier;
use der::{Decode, Reader, SliceReader};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::signature::Verifier;
use serde::{Deserialize, Serialize};
use x509_cert::crl::CertificateList;
use x509_cert::Certificate;

use super::Product;
use crate::ErrorKind;

/// id-RSASSA-PSS.
pub const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
/// rsaEncryption.
pub const OID_RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// id-mgf1.
pub const OID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
/// id-sha384.
pub const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
/// id-ecPublicKey.
pub const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp384r1.
pub const OID_SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// commonName.
pub const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// AMD VCEK/VLEK extension OIDs (1.3.6.1.4.1.3704.1.*).
pub mod oid {
    use der::asn1::ObjectIdentifier;
    /// structVersion.
    pub const STRUCT_VERSION: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.1");
    /// productName (IA5String, e.g. "Milan-B0").
    pub const PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
    /// blSPL.
    pub const BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
    /// teeSPL.
    pub const TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
    /// snpSPL.
    pub const SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
    /// spl_4 .. spl_7 (reserved, zero).
    pub const SPL_4: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.4");
    /// spl_5.
    pub const SPL_5: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.5");
    /// spl_6.
    pub const SPL_6: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.6");
    /// spl_7.
    pub const SPL_7: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.7");
    /// ucodeSPL.
    pub const UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
    /// fmcSPL (Turin and later).
    pub const FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
    /// hwID (VCEK only).
    pub const HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
    /// cspID (VLEK only).
    pub const CSP_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.5");
}

/// Errors about a certificate or CRL.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The PEM armour could not be decoded.
    #[error("the PEM data could not be decoded")]
    Pem(#[source] der::Error),
    /// The DER is not a valid X.509 certificate or CRL.
    #[error("the data is not a valid DER X.509 {what}")]
    Der {
        /// "certificate" or "CRL".
        what: &'static str,
        /// The decoder's complaint.
        #[source]
        source: der::Error,
    },
    /// The input holds no certificate.
    #[error("no certificate found in the input")]
    Empty,
    /// The subject is not one of AMD's SEV-SNP certificate kinds.
    #[error("certificate subject `{0}` is not an AMD ARK, ASK, ASVK, VCEK or VLEK")]
    UnknownKind(String),
    /// The certificate holds a key of the wrong type for its kind.
    #[error("the {kind} certificate does not hold {expected}")]
    KeyType {
        /// The certificate's kind.
        kind: CertKind,
        /// What was expected.
        expected: &'static str,
    },
    /// The RSA public key could not be decoded.
    #[error("the {kind} certificate's RSA public key is invalid")]
    RsaKey {
        /// The certificate's kind.
        kind: CertKind,
        /// The decoder's complaint.
        #[source]
        source: rsa::pkcs1::Error,
    },
    /// The signature algorithm is not RSASSA-PSS SHA-384 / MGF1-SHA-384 / salt 48.
    #[error("the {what} is not signed with RSASSA-PSS SHA-384, MGF1-SHA-384, salt 48 ({detail})")]
    SignatureAlgorithm {
        /// What was signed.
        what: String,
        /// What was found.
        detail: &'static str,
    },
    /// The signature does not verify under the issuer's key.
    #[error("the signature on the {what} does not verify under the {issuer} key")]
    Signature {
        /// What was signed.
        what: String,
        /// The issuer's kind.
        issuer: CertKind,
    },
    /// An AMD extension is malformed.
    #[error("certificate extension {oid} is malformed: {detail}")]
    Extension {
        /// The extension.
        oid: ObjectIdentifier,
        /// What is wrong.
        detail: &'static str,
    },
    /// A required AMD extension is missing.
    #[error("the {kind} certificate lacks extension {oid}")]
    MissingExtension {
        /// The certificate's kind.
        kind: CertKind,
        /// The extension.
        oid: ObjectIdentifier,
    },
    /// An extension appears twice.
    #[error("certificate extension {0} appears more than once")]
    DuplicateExtension(ObjectIdentifier),
}

impl CertError {
    /// The verification error category.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CertError::Signature { .. } => ErrorKind::BadSignature,
            _ => ErrorKind::Malformed,
        }
    }
}

/// The kinds of certificate in AMD's SEV-SNP hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// AMD Root Key.
    Ark,
    /// AMD SEV Key (signs VCEKs).
    Ask,
    /// AMD SEV VLEK Key (signs VLEKs).
    Asvk,
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
}

impl CertKind {
    /// Lower-case name, as used for file names (`ark.pem`, `vcek.pem`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            CertKind::Ark => "ark",
            CertKind::Ask => "ask",
            CertKind::Asvk => "asvk",
            CertKind::Vcek => "vcek",
            CertKind::Vlek => "vlek",
        }
    }

    /// Whether keys of this kind are RSA (ARK, ASK, ASVK) rather than P-384.
    pub fn is_rsa(self) -> bool {
        matches!(self, CertKind::Ark | CertKind::Ask | CertKind::Asvk)
    }

    /// The kind of the issuer of this kind (the ARK issues itself).
    pub fn issuer_kind(self) -> CertKind {
        match self {
            CertKind::Ark | CertKind::Ask | CertKind::Asvk => CertKind::Ark,
            CertKind::Vcek => CertKind::Ask,
            CertKind::Vlek => CertKind::Asvk,
        }
    }

    /// Classifies AMD's subject common names.
    pub fn from_common_name(cn: &str) -> Option<(CertKind, Option<Product>)> {
        if cn == "SEV-VCEK" {
            return Some((CertKind::Vcek, None));
        }
        if cn == "SEV-VLEK" {
            return Some((CertKind::Vlek, None));
        }
        if let Some(p) = cn.strip_prefix("ARK-") {
            return Some((CertKind::Ark, Product::from_name(p)));
        }
        if let Some(p) = cn.strip_prefix("SEV-VLEK-") {
            return Some((CertKind::Asvk, Product::from_name(p)));
        }
        if let Some(p) = cn.strip_prefix("SEV-") {
            return Some((CertKind::Ask, Product::from_name(p)));
        }
        None
    }
}

impl std::fmt::Display for CertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertKind::Ark => "ARK",
            CertKind::Ask => "ASK",
            CertKind::Asvk => "ASVK",
            CertKind::Vcek => "VCEK",
            CertKind::Vlek => "VLEK",
        })
    }
}

/// The AMD extensions of a VCEK or VLEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VekExtensions {
    /// productName, e.g. "Milan-B0".
    pub product_name: Option<String>,
    /// blSPL.
    pub bootloader: u8,
    /// teeSPL.
    pub tee: u8,
    /// snpSPL.
    pub snp: u8,
    /// ucodeSPL.
    pub microcode: u8,
    /// fmcSPL (Turin).
    pub fmc: Option<u8>,
    /// hwID (VCEK only).
    pub hw_id: Option<Vec<u8>>,
    /// cspID (VLEK only).
    pub csp_id: Option<String>,
}

/// A parsed AMD SEV-SNP certificate.
#[derive(Debug, Clone)]
pub struct AmdCertificate {
    der: Vec<u8>,
    tbs: Vec<u8>,
    cert: Certificate,
    kind: CertKind,
    name_product: Option<Product>,
    cn: String,
}

impl PartialEq for AmdCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}
impl Eq for AmdCertificate {}

/// The raw bytes of the first element (the to-be-signed part) of a signed SEQUENCE.
fn tbs_bytes(der: &[u8]) -> der::Result<Vec<u8>> {
    let mut r = SliceReader::new(der)?;
    let header = der::Header::decode(&mut r)?;
    header.tag.assert_eq(der::Tag::Sequence)?;
    Ok(r.tlv_bytes()?.to_vec())
}

/// Reads a common name from a distinguished name.
pub(crate) fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == OID_CN {
                if let Ok(s) = atv.value.decode_as::<der::asn1::Utf8StringRef<'_>>() {
                    return Some(s.as_str().to_owned());
                }
                if let Ok(s) = atv.value.decode_as::<der::asn1::PrintableStringRef<'_>>() {
                    return Some(s.as_str().to_owned());
                }
                if let Ok(s) = atv.value.decode_as::<der::asn1::Ia5StringRef<'_>>() {
                    return Some(s.as_str().to_owned());
                }
            }
        }
    }
    None
}

/// Splits PEM text into its blocks with `label`, decoding each.
fn pem_blocks(text: &[u8], label: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let text = String::from_utf8_lossy(text);
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest: &str = &text;
    while let Some(start) = rest.find(&begin) {
        let tail = rest.get(start..).unwrap_or("");
        let Some(stop) = tail.find(&end) else {
            return Err(CertError::Pem(
                der::pem::Error::PostEncapsulationBoundary.into(),
            ));
        };
        let block = tail.get(..stop + end.len()).unwrap_or("");
        let (_, der) =
            der::pem::decode_vec(block.as_bytes()).map_err(|e| CertError::Pem(e.into()))?;
        out.push(der);
        rest = tail.get(stop + end.len()..).unwrap_or("");
    }
    Ok(out)
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Checks that `alg` is RSASSA-PSS with SHA-384, MGF1-SHA-384, salt 48, trailer 1.
fn check_pss_params(alg: &spki::AlgorithmIdentifierOwned, what: &str) -> Result<(), CertError> {
    let bad = |detail| CertError::SignatureAlgorithm {
        what: what.to_owned(),
        detail,
    };
    if alg.oid != OID_RSASSA_PSS {
        return Err(bad("not RSASSA-PSS"));
    }
    let params = alg
        .parameters
        .as_ref()
        .ok_or_else(|| bad("parameters missing"))?;
    let params = params
        .decode_as::<rsa::pkcs1::RsaPssParams<'_>>()
        .map_err(|_| bad("parameters do not decode"))?;
    if params.hash.oid != OID_SHA384 {
        return Err(bad("hash is not SHA-384"));
    }
    if params.mask_gen.oid != OID_MGF1
        || params.mask_gen.parameters.map(|h| h.oid) != Some(OID_SHA384)
    {
        return Err(bad("mask generation is not MGF1 with SHA-384"));
    }
    if params.salt_len != 48 {
        return Err(bad("salt length is not 48"));
    }
    if params.trailer_field != rsa::pkcs1::TrailerField::BC {
        return Err(bad("trailer field is not 1"));
    }
    Ok(())
}

/// Verifies an RSASSA-PSS SHA-384 (salt 48) signature over `msg`.
pub(crate) fn verify_pss(
    key: &rsa::RsaPublicKey,
    alg: &spki::AlgorithmIdentifierOwned,
    msg: &[u8],
    signature: &der::asn1::BitString,
    what: &str,
    issuer: CertKind,
) -> Result<(), CertError> {
    check_pss_params(alg, what)?;
    let bad = || CertError::Signature {
        what: what.to_owned(),
        issuer,
    };
    let sig_bytes = signature.as_bytes().ok_or_else(bad)?;
    let sig = rsa::pss::Signature::try_from(sig_bytes).map_err(|_| bad())?;
    let vk = rsa::pss::VerifyingKey::<sha2::Sha384>::new_with_salt_len(key.clone(), 48);
    vk.verify(msg, &sig).map_err(|_| bad())
}

impl AmdCertificate {
    /// Parses one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let derr = |source| CertError::Der {
            what: "certificate",
            source,
        };
        let cert = Certificate::from_der(der).map_err(derr)?;
        let tbs = tbs_bytes(der).map_err(derr)?;
        let cn = common_name(&cert.tbs_certificate.subject).unwrap_or_default();
        let (kind, name_product) =
            CertKind::from_common_name(&cn).ok_or_else(|| CertError::UnknownKind(cn.clone()))?;
        let out = Self {
            der: der.to_vec(),
            tbs,
            cert,
            kind,
            name_product,
            cn,
        };
        // Key type must agree with the kind.
        if kind.is_rsa() {
            out.rsa_public_key()?;
        } else {
            out.ec_verifying_key()?;
        }
        Ok(out)
    }

    /// Parses one PEM certificate (the first block if there are several).
    pub fn from_pem(pem: &[u8]) -> Result<Self, CertError> {
        let blocks = pem_blocks(pem, "CERTIFICATE")?;
        let first = blocks.first().ok_or(CertError::Empty)?;
        Self::from_der(first)
    }

    /// Parses every certificate in `bytes`: a PEM bundle, or a single DER certificate.
    pub fn parse_all(bytes: &[u8]) -> Result<Vec<Self>, CertError> {
        let out: Vec<Self> = if looks_like_pem(bytes) {
            pem_blocks(bytes, "CERTIFICATE")?
                .iter()
                .map(|d| Self::from_der(d))
                .collect::<Result<_, _>>()?
        } else {
            vec![Self::from_der(bytes)?]
        };
        if out.is_empty() {
            return Err(CertError::Empty);
        }
        Ok(out)
    }

    /// The DER encoding as parsed.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The PEM encoding.
    pub fn to_pem(&self) -> String {
        der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &self.der)
            .unwrap_or_default()
    }

    /// The certificate's kind.
    pub fn kind(&self) -> CertKind {
        self.kind
    }

    /// The subject common name.
    pub fn common_name(&self) -> &str {
        &self.cn
    }

    /// The decoded X.509 structure.
    pub fn x509(&self) -> &Certificate {
        &self.cert
    }

    /// The product: from the CN for ARK/ASK/ASVK, from productName for VCEK/VLEK.
    pub fn product(&self) -> Option<Product> {
        if self.kind.is_rsa() {
            return self.name_product;
        }
        self.vek_extensions()
            .ok()
            .and_then(|e| e.product_name)
            .and_then(|n| Product::from_name(&n))
    }

    /// Whether subject and issuer names are equal.
    pub fn is_self_issued(&self) -> bool {
        self.cert.tbs_certificate.subject == self.cert.tbs_certificate.issuer
    }

    /// Whether `issuer`'s subject is this certificate's issuer name.
    pub fn names_issuer(&self, issuer: &AmdCertificate) -> bool {
        self.cert.tbs_certificate.issuer == issuer.cert.tbs_certificate.subject
    }

    /// The platform identity this VCEK or VLEK vouches for (see
    /// `Claims::platform_id`), given the CHIP_ID of a report it signed:
    /// - a VCEK: its hwID as 64 bytes of hex (zero-padded, so it equals the report's
    ///   unmasked CHIP_ID); `vcek:` and the hex SHA-256 of its SubjectPublicKeyInfo for
    ///   a VCEK whose hwID is not 1 to 64 bytes, which AMD does not issue;
    /// - a VLEK (no hwID; one per chip, per cloud provider and per TCB): `vlek:` and the
    ///   hex of the report's CHIP_ID, which the VLEK's signature covers. `None` when
    ///   CHIP_ID is masked (all zero): the VLEK alone does not identify the chip, and
    ///   its key digest would change with every REPORTED_TCB the host loads a VLEK for,
    ///   giving one chip as many identities as it has TCBs (a revocation bypass).
    pub fn platform_identity(&self, ext: &VekExtensions, chip_id: &[u8]) -> Option<String> {
        match (&self.kind, &ext.hw_id) {
            (CertKind::Vlek, _) => {
                if chip_id.is_empty() || chip_id.iter().all(|b| *b == 0) {
                    None
                } else {
                    Some(format!("vlek:{}", hex::encode(chip_id)))
                }
            }
            (CertKind::Vcek, Some(hw)) if !hw.is_empty() && hw.len() <= 64 => {
                let mut id = [0u8; 64];
                id[..hw.len()].copy_from_slice(hw);
                Some(hex::encode(id))
            }
            (kind, _) => {
                use der::Encode;
                use sha2::Digest;
                let spki = self
                    .cert
                    .tbs_certificate
                    .subject_public_key_info
                    .to_der()
                    .unwrap_or_default();
                Some(format!(
                    "{}:{}",
                    kind.as_str(),
                    hex::encode(sha2::Sha256::digest(&spki))
                ))
            }
        }
    }

    /// The serial number bytes.
    pub fn serial(&self) -> &[u8] {
        self.cert.tbs_certificate.serial_number.as_bytes()
    }

    /// notBefore and notAfter, as seconds since the Unix epoch.
    pub fn validity(&self) -> (u64, u64) {
        let v = &self.cert.tbs_certificate.validity;
        (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        )
    }

    /// The RSA public key (ARK, ASK, ASVK). Accepts rsaEncryption and RSASSA-PSS SPKIs.
    pub fn rsa_public_key(&self) -> Result<rsa::RsaPublicKey, CertError> {
        let spki = &self.cert.tbs_certificate.subject_public_key_info;
        let expected = "an RSA public key";
        if !self.kind.is_rsa()
            || (spki.algorithm.oid != OID_RSA_ENCRYPTION && spki.algorithm.oid != OID_RSASSA_PSS)
        {
            return Err(CertError::KeyType {
                kind: self.kind,
                expected,
            });
        }
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or(CertError::KeyType {
                kind: self.kind,
                expected,
            })?;
        rsa::RsaPublicKey::from_pkcs1_der(bits).map_err(|source| CertError::RsaKey {
            kind: self.kind,
            source,
        })
    }

    /// The ECDSA P-384 verifying key (VCEK, VLEK).
    pub fn ec_verifying_key(&self) -> Result<p384::ecdsa::VerifyingKey, CertError> {
        let spki = &self.cert.tbs_certificate.subject_public_key_info;
        let err = CertError::KeyType {
            kind: self.kind,
            expected: "an ECDSA P-384 public key",
        };
        if self.kind.is_rsa() || spki.algorithm.oid != OID_EC_PUBLIC_KEY {
            return Err(err);
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if curve != Some(OID_SECP384R1) {
            return Err(err);
        }
        let point = spki
            .subject_public_key
            .as_bytes()
            .ok_or(CertError::KeyType {
                kind: self.kind,
                expected: "an ECDSA P-384 public key",
            })?;
        p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| err)
    }

    /// Verifies that `issuer` signed this certificate (RSASSA-PSS SHA-384, salt 48).
    /// Checks the issuer name, that the outer and inner signature algorithms agree, and
    /// that the issuer is of the kind that issues this kind.
    pub fn verify_issued_by(&self, issuer: &AmdCertificate) -> Result<(), CertError> {
        let what = format!("{} certificate", self.kind);
        let bad = || CertError::Signature {
            what: what.clone(),
            issuer: issuer.kind,
        };
        if issuer.kind != self.kind.issuer_kind() || !self.names_issuer(issuer) {
            return Err(bad());
        }
        if self.cert.signature_algorithm != self.cert.tbs_certificate.signature {
            return Err(CertError::SignatureAlgorithm {
                what,
                detail: "outer and inner algorithms differ",
            });
        }
        let key = issuer.rsa_public_key()?;
        verify_pss(
            &key,
            &self.cert.signature_algorithm,
            &self.tbs,
            &self.cert.signature,
            &what,
            issuer.kind,
        )
    }

    /// Decodes the AMD extensions of a VCEK or VLEK. The four SPLs are required, FMC
    /// is optional, hwID is required for a VCEK.
    pub fn vek_extensions(&self) -> Result<VekExtensions, CertError> {
        if self.kind.is_rsa() {
            return Err(CertError::KeyType {
                kind: self.kind,
                expected: "VCEK/VLEK extensions",
            });
        }
        let mut seen: Vec<ObjectIdentifier> = Vec::new();
        let mut out = VekExtensions {
            product_name: None,
            bootloader: 0,
            tee: 0,
            snp: 0,
            microcode: 0,
            fmc: None,
            hw_id: None,
            csp_id: None,
        };
        let mut spls: [Option<u8>; 4] = [None; 4];
        for ext in self.cert.tbs_certificate.extensions.iter().flatten() {
            if seen.contains(&ext.extn_id) {
                return Err(CertError::DuplicateExtension(ext.extn_id));
            }
            seen.push(ext.extn_id);
            let value = ext.extn_value.as_bytes();
            let spl = |oid| -> Result<u8, CertError> {
                u8::from_der(value).map_err(|_| CertError::Extension {
                    oid,
                    detail: "not a DER INTEGER in 0..=255",
                })
            };
            let ia5 = |oid| -> Result<String, CertError> {
                der::asn1::Ia5StringRef::from_der(value)
                    .map(|s| s.as_str().to_owned())
                    .map_err(|_| CertError::Extension {
                        oid,
                        detail: "not a DER IA5String",
                    })
            };
            match ext.extn_id {
                oid::BL_SPL => spls[0] = Some(spl(oid::BL_SPL)?),
                oid::TEE_SPL => spls[1] = Some(spl(oid::TEE_SPL)?),
                oid::SNP_SPL => spls[2] = Some(spl(oid::SNP_SPL)?),
                oid::UCODE_SPL => spls[3] = Some(spl(oid::UCODE_SPL)?),
                oid::FMC_SPL => out.fmc = Some(spl(oid::FMC_SPL)?),
                oid::PRODUCT_NAME => out.product_name = Some(ia5(oid::PRODUCT_NAME)?),
                oid::CSP_ID => out.csp_id = Some(ia5(oid::CSP_ID)?),
                oid::HW_ID => {
                    if value.is_empty() || value.len() > 64 {
                        return Err(CertError::Extension {
                            oid: oid::HW_ID,
                            detail: "hwID is not 1..=64 bytes",
                        });
                    }
                    out.hw_id = Some(value.to_vec());
                }
                _ => {}
            }
        }
        let need = |v: Option<u8>, oid| {
            v.ok_or(CertError::MissingExtension {
                kind: self.kind,
                oid,
            })
        };
        out.bootloader = need(spls[0], oid::BL_SPL)?;
        out.tee = need(spls[1], oid::TEE_SPL)?;
        out.snp = need(spls[2], oid::SNP_SPL)?;
        out.microcode = need(spls[3], oid::UCODE_SPL)?;
        if self.kind == CertKind::Vcek && out.hw_id.is_none() {
            return Err(CertError::MissingExtension {
                kind: self.kind,
                oid: oid::HW_ID,
            });
        }
        Ok(out)
    }
}

/// A certificate revocation list issued by an ARK (AMD publishes one per product).
#[derive(Debug, Clone)]
pub struct AmdCrl {
    der: Vec<u8>,
    tbs: Vec<u8>,
    crl: CertificateList,
}

impl AmdCrl {
    /// Parses one DER CRL.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let derr = |source| CertError::Der {
            what: "CRL",
            source,
        };
        let crl = CertificateList::from_der(der).map_err(derr)?;
        let tbs = tbs_bytes(der).map_err(derr)?;
        Ok(Self {
            der: der.to_vec(),
            tbs,
            crl,
        })
    }

    /// Parses every CRL in `bytes`: PEM ("X509 CRL" blocks) or a single DER CRL.
    pub fn parse_all(bytes: &[u8]) -> Result<Vec<Self>, CertError> {
        if looks_like_pem(bytes) {
            let blocks = pem_blocks(bytes, "X509 CRL")?;
            if blocks.is_empty() {
                return Err(CertError::Empty);
            }
            blocks.iter().map(|d| Self::from_der(d)).collect()
        } else {
            Ok(vec![Self::from_der(bytes)?])
        }
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Whether `cert` issued this CRL (by name).
    pub fn issued_by(&self, cert: &AmdCertificate) -> bool {
        self.crl.tbs_cert_list.issuer == cert.cert.tbs_certificate.subject
    }

    /// Verifies the CRL's signature under `issuer` (an ARK).
    pub fn verify_signature(&self, issuer: &AmdCertificate) -> Result<(), CertError> {
        let what = "certificate revocation list".to_owned();
        if self.crl.signature_algorithm != self.crl.tbs_cert_list.signature {
            return Err(CertError::SignatureAlgorithm {
                what,
                detail: "outer and inner algorithms differ",
            });
        }
        let key = issuer.rsa_public_key()?;
        verify_pss(
            &key,
            &self.crl.signature_algorithm,
            &self.tbs,
            &self.crl.signature,
            &what,
            issuer.kind,
        )
    }

    /// thisUpdate and nextUpdate (if any), seconds since the Unix epoch.
    pub fn update_times(&self) -> (u64, Option<u64>) {
        let t = &self.crl.tbs_cert_list;
        (
            t.this_update.to_unix_duration().as_secs(),
            t.next_update.map(|n| n.to_unix_duration().as_secs()),
        )
    }

    /// Whether the CRL lists `serial`.
    pub fn revokes(&self, serial: &[u8]) -> bool {
        self.crl
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .any(|r| r.serial_number.as_bytes() == serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> AmdCertificate {
        let path = format!("{}/tests/data/snp/{name}", env!("CARGO_MANIFEST_DIR"));
        AmdCertificate::from_der(&std::fs::read(path).expect("vector")).expect("parses")
    }

    #[test]
    fn a_vlek_identity_is_the_chip_id_it_signed_and_never_a_masked_one() {
        // Attack (red team round 2, finding 6): the host masks CHIP_ID and loads the VLEK
        // of another REPORTED_TCB; a key-digest identity gave the revoked chip a fresh
        // inventory entry. The identity is now the signed CHIP_ID, independent of which
        // VLEK signed it, and there is none when CHIP_ID is masked.
        let vlek = vector("milan-vlek-v3/vlek.der");
        assert_eq!(vlek.kind(), CertKind::Vlek);
        let ext = vlek.vek_extensions().expect("extensions");
        assert_eq!(vlek.platform_identity(&ext, &[0u8; 64]), None);
        let chip = [0xc1u8; 64];
        let id = vlek.platform_identity(&ext, &chip).expect("identity");
        assert_eq!(id, format!("vlek:{}", hex::encode(chip)));
        // Another VLEK key (another TCB) of the same chip: same identity. Different
        // extensions stand in for the other certificate; the key is not part of it.
        let other_tcb = VekExtensions {
            snp: ext.snp.wrapping_add(1),
            ..ext.clone()
        };
        assert_eq!(vlek.platform_identity(&other_tcb, &chip), Some(id));
        // A VCEK keeps its hwID, whatever the (possibly masked) CHIP_ID.
        let vcek = vector("milan-v2/vcek.der");
        let ext = vcek.vek_extensions().expect("extensions");
        let hw = ext.hw_id.clone().expect("hwID");
        let want = vcek.platform_identity(&ext, &[0u8; 64]).expect("hwID");
        assert!(want.starts_with(&hex::encode(&hw)), "{want}");
        assert_eq!(want.len(), 128);
    }
}
