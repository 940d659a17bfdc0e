//! The emulated provisioning certificate hierarchy: P-256 keys, X.509 certificates
//! (root CA, PCK platform CA, PCK leaf with the SGX extension, TCB signing), CRLs, and
//! raw r||s signatures, shaped like Intel's so that dcap-qvl verifies them unchanged.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use der::asn1::{BitString, OctetString, UtcTime};
use der::oid::{AssociatedOid, ObjectIdentifier};
use der::{Decode, Encode, EncodePem};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, Signature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rand_core::{OsRng, RngCore};
use spki::{AlgorithmIdentifierOwned, EncodePublicKey, SubjectPublicKeyInfoOwned};
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;
use zeroize::Zeroizing;

use super::EmulatedError;
use crate::tdx::pck::SgxExtensionValues;

/// ecdsa-with-SHA256.
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// id-ce-cRLNumber.
const CRL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.20");

/// A certificate and its private key.
#[derive(Debug)]
pub(crate) struct Authority {
    pub(crate) cert: Certificate,
    pub(crate) key: SigningKey,
}

impl Authority {
    pub(crate) fn cert_der(&self) -> Result<Vec<u8>, EmulatedError> {
        self.cert.to_der().map_err(EmulatedError::Der)
    }

    pub(crate) fn cert_pem(&self) -> Result<String, EmulatedError> {
        self.cert.to_pem(LineEnding::LF).map_err(EmulatedError::Der)
    }

    pub(crate) fn key_pem(&self) -> Result<Zeroizing<String>, EmulatedError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(EmulatedError::Pkcs8)
    }

    /// Loads a certificate and key, checking that they belong together.
    pub(crate) fn from_pem(
        what: &'static str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, EmulatedError> {
        use der::DecodePem;
        let cert = Certificate::from_pem(cert_pem.as_bytes()).map_err(EmulatedError::Der)?;
        let key = SigningKey::from_pkcs8_pem(key_pem).map_err(EmulatedError::Pkcs8)?;
        let spki = SubjectPublicKeyInfoOwned::from_key(*key.verifying_key())
            .map_err(EmulatedError::Spki)?;
        if spki != cert.tbs_certificate.subject_public_key_info {
            return Err(EmulatedError::KeyMismatch(what));
        }
        Ok(Self { cert, key })
    }

    pub(crate) fn name(&self) -> &Name {
        &self.cert.tbs_certificate.subject
    }
}

/// A fresh P-256 key from the OS random generator.
pub(crate) fn new_key() -> SigningKey {
    SigningKey::random(&mut OsRng)
}

fn serial() -> Result<SerialNumber, EmulatedError> {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b[0] = (b[0] & 0x7f) | 0x01;
    SerialNumber::new(&b).map_err(EmulatedError::Der)
}

fn system_time(t: time::OffsetDateTime) -> SystemTime {
    let secs = u64::try_from(t.unix_timestamp()).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// An X.509 `Time` (UTCTime, as RFC 5280 wants before 2050).
pub(crate) fn x509_time(t: time::OffsetDateTime) -> Result<Time, EmulatedError> {
    let secs = u64::try_from(t.unix_timestamp()).unwrap_or(0);
    Ok(Time::UtcTime(
        UtcTime::from_unix_duration(Duration::from_secs(secs)).map_err(EmulatedError::Der)?,
    ))
}

fn validity(
    from: time::OffsetDateTime,
    until: time::OffsetDateTime,
) -> Result<Validity, EmulatedError> {
    Ok(Validity {
        not_before: Time::try_from(system_time(from)).map_err(EmulatedError::Der)?,
        not_after: Time::try_from(system_time(until)).map_err(EmulatedError::Der)?,
    })
}

fn name(s: &str) -> Result<Name, EmulatedError> {
    Name::from_str(s).map_err(EmulatedError::Der)
}

/// The SGX extension as an X.509 extension.
struct SgxExtension(der::asn1::Any);

impl AssociatedOid for SgxExtension {
    const OID: ObjectIdentifier = ObjectIdentifier::new_unwrap(crate::tdx::pck::SGX_EXTENSION_OID);
}

impl der::Encode for SgxExtension {
    fn encoded_len(&self) -> der::Result<der::Length> {
        self.0.encoded_len()
    }
    fn encode(&self, writer: &mut impl der::Writer) -> der::Result<()> {
        self.0.encode(writer)
    }
}

impl x509_cert::ext::AsExtension for SgxExtension {
    fn critical(&self, _subject: &Name, _extensions: &[Extension]) -> bool {
        false
    }
}

/// Distinguished names of the emulated hierarchy (Intel's, with "Emulated" in place of
/// "Intel", so dcap-qvl classifies the PCK issuer as a Platform CA).
pub(crate) const ROOT_DN: &str = "CN=Emulated SGX Root CA,O=cvm emulated TEE - insecure,C=US";
pub(crate) const PLATFORM_CA_DN: &str =
    "CN=Emulated SGX PCK Platform CA,O=cvm emulated TEE - insecure,C=US";
pub(crate) const PCK_DN: &str =
    "CN=Emulated SGX PCK Certificate,O=cvm emulated TEE - insecure,C=US";
pub(crate) const TCB_SIGNING_DN: &str =
    "CN=Emulated SGX TCB Signing,O=cvm emulated TEE - insecure,C=US";

fn spki_of(key: &SigningKey) -> Result<SubjectPublicKeyInfoOwned, EmulatedError> {
    let der = key
        .verifying_key()
        .to_public_key_der()
        .map_err(EmulatedError::Spki)?;
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(EmulatedError::Der)
}

fn build(
    profile: Profile,
    subject: Name,
    subject_key: &SigningKey,
    signer: &SigningKey,
    from: time::OffsetDateTime,
    until: time::OffsetDateTime,
    sgx: Option<&SgxExtensionValues>,
) -> Result<Certificate, EmulatedError> {
    let mut b = CertificateBuilder::new(
        profile,
        serial()?,
        validity(from, until)?,
        subject,
        spki_of(subject_key)?,
        signer,
    )
    .map_err(EmulatedError::Builder)?;
    if let Some(values) = sgx {
        let any = der::asn1::Any::from_der(&values.to_der()).map_err(EmulatedError::Der)?;
        b.add_extension(&SgxExtension(any))
            .map_err(EmulatedError::Builder)?;
    }
    b.build::<DerSignature>().map_err(EmulatedError::Builder)
}

/// Creates the self-signed root CA.
pub(crate) fn root_ca(
    from: time::OffsetDateTime,
    until: time::OffsetDateTime,
) -> Result<Authority, EmulatedError> {
    let key = new_key();
    let cert = build(Profile::Root, name(ROOT_DN)?, &key, &key, from, until, None)?;
    Ok(Authority { cert, key })
}

/// Creates an intermediate CA under `issuer`.
pub(crate) fn sub_ca(
    issuer: &Authority,
    dn: &str,
    from: time::OffsetDateTime,
    until: time::OffsetDateTime,
) -> Result<Authority, EmulatedError> {
    let key = new_key();
    let profile = Profile::SubCA {
        issuer: issuer.name().clone(),
        path_len_constraint: Some(0),
    };
    let cert = build(profile, name(dn)?, &key, &issuer.key, from, until, None)?;
    Ok(Authority { cert, key })
}

/// Creates an end-entity certificate under `issuer`, with the SGX extension if given.
pub(crate) fn leaf(
    issuer: &Authority,
    dn: &str,
    from: time::OffsetDateTime,
    until: time::OffsetDateTime,
    sgx: Option<&SgxExtensionValues>,
) -> Result<Authority, EmulatedError> {
    let key = new_key();
    let profile = Profile::Leaf {
        issuer: issuer.name().clone(),
        enable_key_agreement: false,
        enable_key_encipherment: false,
    };
    let cert = build(profile, name(dn)?, &key, &issuer.key, from, until, sgx)?;
    Ok(Authority { cert, key })
}

/// Signs a CRL by `issuer` listing `revoked` serial numbers, valid `from`..`until`.
pub(crate) fn crl(
    issuer: &Authority,
    revoked: &[SerialNumber],
    number: u32,
    from: time::OffsetDateTime,
    until: time::OffsetDateTime,
) -> Result<Vec<u8>, EmulatedError> {
    let algorithm = AlgorithmIdentifierOwned {
        oid: ECDSA_WITH_SHA256,
        parameters: None,
    };
    let crl_number = der::asn1::Uint::new(&number.to_be_bytes()).map_err(EmulatedError::Der)?;
    let ext = Extension {
        extn_id: CRL_NUMBER,
        critical: false,
        extn_value: OctetString::new(crl_number.to_der().map_err(EmulatedError::Der)?)
            .map_err(EmulatedError::Der)?,
    };
    let revoked_certificates = if revoked.is_empty() {
        None
    } else {
        let at = x509_time(from)?;
        Some(
            revoked
                .iter()
                .map(|s| RevokedCert {
                    serial_number: s.clone(),
                    revocation_date: at,
                    crl_entry_extensions: None,
                })
                .collect(),
        )
    };
    let tbs = TbsCertList {
        version: x509_cert::Version::V2,
        signature: algorithm.clone(),
        issuer: issuer.name().clone(),
        this_update: x509_time(from)?,
        next_update: Some(x509_time(until)?),
        revoked_certificates,
        crl_extensions: Some(vec![ext]),
    };
    let tbs_der = tbs.to_der().map_err(EmulatedError::Der)?;
    let sig: DerSignature = issuer.key.sign(&tbs_der);
    let list = CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(sig.as_bytes()).map_err(EmulatedError::Der)?,
    };
    list.to_der().map_err(EmulatedError::Der)
}

/// A raw r||s (big-endian) ECDSA-P256/SHA-256 signature, as DCAP structures carry them.
pub(crate) fn sign_raw(key: &SigningKey, message: &[u8]) -> [u8; 64] {
    let sig: Signature = key.sign(message);
    let mut out = [0u8; 64];
    out.copy_from_slice(&sig.to_bytes());
    out
}

/// The public key as DCAP's attestation key encoding (x||y).
pub(crate) fn raw_public_key(key: &SigningKey) -> [u8; 64] {
    let point = key.verifying_key().to_encoded_point(false);
    let mut out = [0u8; 64];
    if let Some(b) = point.as_bytes().get(1..65) {
        out.copy_from_slice(b);
    }
    out
}
