//! PCK certificates: the PEM chain carried in a quote, the leaf's P-256 key, raw ECDSA
//! signature checks, and the DER encoding of Intel's SGX extension
//! (OID 1.2.840.113741.1.13.1) used by the emulated provisioning CA.
//!
//! The chain is *trusted* only by the DCAP verification in [`super::verify`]
//! (dcap-qvl's webpki-based path building against the pinned or configured root, with
//! CRLs); this module only decodes it so that the quote's signatures can be checked and
//! classified before that.

use der::{Decode, Encode};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use x509_cert::Certificate;

/// OID of Intel's SGX extension in PCK certificates.
pub const SGX_EXTENSION_OID: &str = "1.2.840.113741.1.13.1";

/// A PCK certificate chain that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum PckError {
    /// The PEM text does not decode to certificates.
    #[error("the PCK certificate chain is not valid PEM certificates")]
    Pem(#[source] der::Error),
    /// The chain holds no certificate.
    #[error("the PCK certificate chain is empty")]
    Empty,
    /// The leaf certificate's key is not an uncompressed P-256 key.
    #[error("the PCK leaf certificate does not hold a P-256 public key")]
    LeafKey(#[source] p256::elliptic_curve::Error),
    /// The leaf certificate could not be re-encoded.
    #[error("the PCK leaf certificate could not be encoded")]
    Encode(#[source] der::Error),
}

impl PckError {
    /// Every PCK chain decoding error is [`ErrorKind::Malformed`](crate::ErrorKind::Malformed).
    pub fn kind(&self) -> crate::ErrorKind {
        crate::ErrorKind::Malformed
    }
}

/// A decoded (not yet trusted) PCK certificate chain, leaf first.
#[derive(Debug, Clone)]
pub struct PckChain {
    /// The certificates, leaf first, DER.
    pub certs_der: Vec<Vec<u8>>,
    /// The leaf's public key.
    pub leaf_key: VerifyingKey,
}

impl PckChain {
    /// Decodes the PEM chain carried in certification data type 5 (trailing NUL bytes
    /// and whitespace, as Intel's quotes carry, are ignored).
    pub fn from_pem(pem: &[u8]) -> Result<Self, PckError> {
        let certs = load_pem_chain(pem).map_err(PckError::Pem)?;
        let leaf = certs.first().ok_or(PckError::Empty)?;
        let key_bytes = leaf
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        let leaf_key = VerifyingKey::from_sec1_bytes(key_bytes)
            .map_err(|_| PckError::LeafKey(p256::elliptic_curve::Error))?;
        let certs_der = certs
            .iter()
            .map(|c| c.to_der())
            .collect::<Result<Vec<_>, _>>()
            .map_err(PckError::Encode)?;
        Ok(Self {
            certs_der,
            leaf_key,
        })
    }
}

/// Decodes a PEM certificate chain, ignoring surrounding whitespace and trailing NUL
/// bytes. Empty input gives an empty list (x509-cert's `load_pem_chain` would underflow
/// on it).
pub fn load_pem_chain(pem: &[u8]) -> Result<Vec<Certificate>, der::Error> {
    let end = pem
        .iter()
        .rposition(|b| *b != 0 && !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let start = pem
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0)
        .min(end);
    match pem.get(start..end) {
        Some(text) if !text.is_empty() => Certificate::load_pem_chain(text),
        _ => Ok(Vec::new()),
    }
}

/// Verifies a raw r||s big-endian ECDSA-P256/SHA-256 signature. Returns false for an
/// encoding that is not a valid signature.
pub fn verify_raw(key: &VerifyingKey, message: &[u8], raw_signature: &[u8; 64]) -> bool {
    match Signature::from_slice(raw_signature) {
        Ok(sig) => key.verify(message, &sig).is_ok(),
        Err(_) => false,
    }
}

/// The attestation key carried in a quote (x||y) as a verifying key.
pub fn attestation_key(raw: &[u8; 64]) -> Option<VerifyingKey> {
    let mut sec1 = [0x04u8; 65];
    sec1[1..].copy_from_slice(raw);
    VerifyingKey::from_sec1_bytes(&sec1).ok()
}

/// Platform identity and TCB values carried in a PCK certificate's SGX extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgxExtensionValues {
    /// PPID (16 bytes).
    pub ppid: [u8; 16],
    /// CPUSVN (16 bytes); its bytes are also the 16 SGX TCB component SVNs.
    pub cpu_svn: [u8; 16],
    /// PCESVN.
    pub pce_svn: u16,
    /// PCE-ID (2 bytes).
    pub pce_id: [u8; 2],
    /// FMSPC (6 bytes).
    pub fmspc: [u8; 6],
    /// SGX type: 0 standard, 1 scalable.
    pub sgx_type: u8,
    /// Platform instance id (Platform CA certificates only).
    pub platform_instance_id: Option<[u8; 16]>,
}

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

fn oid(dotted: &str) -> Vec<u8> {
    // Our OIDs are compile-time constants below; a parse failure would be a bug caught
    // by the unit test, and yields an empty OID rather than a panic.
    match der::asn1::ObjectIdentifier::new(dotted) {
        Ok(o) => tlv(0x06, o.as_bytes()),
        Err(_) => tlv(0x06, &[]),
    }
}

fn integer(v: u32) -> Vec<u8> {
    let mut bytes: Vec<u8> = v
        .to_be_bytes()
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect();
    if bytes.first().is_none_or(|b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    tlv(0x02, &bytes)
}

fn entry(oid_str: &str, value: Vec<u8>) -> Vec<u8> {
    let mut c = oid(oid_str);
    c.extend_from_slice(&value);
    tlv(0x30, &c)
}

impl SgxExtensionValues {
    /// DER of the extension value (the SEQUENCE inside the extension's OCTET STRING),
    /// in the layout of Intel's PCK certificates.
    pub fn to_der(&self) -> Vec<u8> {
        let base = SGX_EXTENSION_OID;
        let mut tcb = Vec::new();
        for (i, svn) in self.cpu_svn.iter().enumerate() {
            tcb.extend_from_slice(&entry(
                &format!("{base}.2.{}", i + 1),
                integer(u32::from(*svn)),
            ));
        }
        tcb.extend_from_slice(&entry(
            &format!("{base}.2.17"),
            integer(u32::from(self.pce_svn)),
        ));
        tcb.extend_from_slice(&entry(&format!("{base}.2.18"), tlv(0x04, &self.cpu_svn)));
        let mut seq = Vec::new();
        seq.extend_from_slice(&entry(&format!("{base}.1"), tlv(0x04, &self.ppid)));
        seq.extend_from_slice(&entry(&format!("{base}.2"), tlv(0x30, &tcb)));
        seq.extend_from_slice(&entry(&format!("{base}.3"), tlv(0x04, &self.pce_id)));
        seq.extend_from_slice(&entry(&format!("{base}.4"), tlv(0x04, &self.fmspc)));
        seq.extend_from_slice(&entry(&format!("{base}.5"), tlv(0x0a, &[self.sgx_type])));
        if let Some(id) = &self.platform_instance_id {
            seq.extend_from_slice(&entry(&format!("{base}.6"), tlv(0x04, id)));
            let mut conf = Vec::new();
            for i in 1..=3 {
                conf.extend_from_slice(&entry(&format!("{base}.7.{i}"), tlv(0x01, &[0x00])));
            }
            seq.extend_from_slice(&entry(&format!("{base}.7"), tlv(0x30, &conf)));
        }
        tlv(0x30, &seq)
    }
}

/// Decodes the raw DER of a certificate into an owned value (used by tests and the
/// emulated platform).
pub fn certificate_from_der(der_bytes: &[u8]) -> Result<Certificate, der::Error> {
    Certificate::from_der(der_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        let mut v = Vec::new();
        der_len(0x7f, &mut v);
        assert_eq!(v, [0x7f]);
        v.clear();
        der_len(0x80, &mut v);
        assert_eq!(v, [0x81, 0x80]);
        v.clear();
        der_len(0x1234, &mut v);
        assert_eq!(v, [0x82, 0x12, 0x34]);
        assert_eq!(integer(0), [0x02, 0x01, 0x00]);
        assert_eq!(integer(0x80), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(integer(13), [0x02, 0x01, 0x0d]);
        assert!(oid(SGX_EXTENSION_OID).len() > 2);
    }
}

/// Why a certificate chain or CRL from Intel's PCS (or a PCCS) is not authentic.
#[derive(Debug, thiserror::Error)]
pub enum IssuerChainError {
    /// The chain holds no certificate.
    #[error("the issuer chain is empty")]
    Empty,
    /// A certificate or CRL does not encode.
    #[error("a certificate or CRL of the issuer chain does not encode")]
    Encode(#[source] der::Error),
    /// A key is not an uncompressed P-256 key.
    #[error("certificate {index} of the issuer chain does not hold a P-256 public key")]
    Key {
        /// The certificate's position (0 = leaf).
        index: usize,
    },
    /// A signature does not verify.
    #[error("the signature of {what} does not verify with its issuer's key")]
    Signature {
        /// What was signed.
        what: String,
    },
    /// The chain does not end at a trusted root.
    #[error("the issuer chain does not end at a trusted root CA")]
    UntrustedRoot,
}

fn p256_key(cert: &Certificate, index: usize) -> Result<VerifyingKey, IssuerChainError> {
    VerifyingKey::from_sec1_bytes(
        cert.tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes(),
    )
    .map_err(|_| IssuerChainError::Key { index })
}

fn verify_der_signature(
    key: &VerifyingKey,
    message: &[u8],
    der_signature: Option<&[u8]>,
    what: impl Fn() -> String,
) -> Result<(), IssuerChainError> {
    let ok = der_signature
        .and_then(|s| Signature::from_der(s).ok())
        .is_some_and(|sig| key.verify(message, &sig).is_ok());
    if ok {
        Ok(())
    } else {
        Err(IssuerChainError::Signature { what: what() })
    }
}

/// Verifies an Intel issuer chain (PEM, leaf first, as in the PCS's `*-Issuer-Chain`
/// headers): every certificate is signed (ECDSA P-256/SHA-256) by the next, and the
/// last is one of `roots` (DER) or signed by one. Returns the leaf's key, which signs
/// the item the chain came with.
pub fn verify_issuer_chain(pem: &[u8], roots: &[&[u8]]) -> Result<VerifyingKey, IssuerChainError> {
    let certs = load_pem_chain(pem).map_err(IssuerChainError::Encode)?;
    let leaf = certs.first().ok_or(IssuerChainError::Empty)?;
    for (i, pair) in certs.windows(2).enumerate() {
        let [cert, issuer] = pair else { continue };
        let key = p256_key(issuer, i + 1)?;
        let tbs = cert
            .tbs_certificate
            .to_der()
            .map_err(IssuerChainError::Encode)?;
        verify_der_signature(&key, &tbs, cert.signature.as_bytes(), || {
            format!("certificate {i} of the issuer chain")
        })?;
    }
    let last = certs.last().ok_or(IssuerChainError::Empty)?;
    let last_der = last.to_der().map_err(IssuerChainError::Encode)?;
    let anchored = roots.iter().any(|root| {
        if *root == last_der.as_slice() {
            return true;
        }
        let Ok(root) = Certificate::from_der(root) else {
            return false;
        };
        let (Ok(key), Ok(tbs)) = (p256_key(&root, certs.len()), last.tbs_certificate.to_der())
        else {
            return false;
        };
        root.tbs_certificate.subject == last.tbs_certificate.issuer
            && verify_der_signature(&key, &tbs, last.signature.as_bytes(), String::new).is_ok()
    });
    if !anchored {
        return Err(IssuerChainError::UntrustedRoot);
    }
    p256_key(leaf, 0)
}

/// Verifies that `crl` (DER) is signed by `key` (ECDSA P-256/SHA-256).
pub fn verify_crl_signature(crl: &[u8], key: &VerifyingKey) -> Result<(), IssuerChainError> {
    let list = x509_cert::crl::CertificateList::from_der(crl).map_err(IssuerChainError::Encode)?;
    let tbs = list
        .tbs_cert_list
        .to_der()
        .map_err(IssuerChainError::Encode)?;
    verify_der_signature(key, &tbs, list.signature.as_bytes(), || "the CRL".into())
}

/// The public key of a root CA certificate (DER) whose subject issued `crl` (DER), if
/// one of `roots` did.
pub fn crl_root_key(crl: &[u8], roots: &[&[u8]]) -> Option<VerifyingKey> {
    let list = x509_cert::crl::CertificateList::from_der(crl).ok()?;
    roots.iter().find_map(|r| {
        let root = Certificate::from_der(r).ok()?;
        (root.tbs_certificate.subject == list.tbs_cert_list.issuer)
            .then(|| p256_key(&root, 0).ok())
            .flatten()
    })
}

/// Intel's SGX/TDX provisioning root CA certificate (DER): the root dcap-qvl pins
/// (`Intel SGX Root CA`, public; a test checks it is the root of the genuine
/// collateral's issuer chains). Collateral fetched or imported is checked against it.
pub const INTEL_ROOT_CA_DER: &[u8] = include_bytes!("intel_root_ca.der");
