//! The emulated platform's certificate hierarchy, shaped like AMD's: an RSA-4096 ARK
//! and ASK signing with RSASSA-PSS SHA-384 (salt 48), and a P-384 VCEK whose
//! certificate carries AMD's VCEK extensions.
//!
//! Certificates are assembled field by field (`TbsCertificate` then the signature)
//! rather than with `x509-cert`'s builder: AMD's VCEK has no standard extensions, and
//! the builder's profiles would add some.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::asn1::{BitString, GeneralizedTime, Ia5StringRef, OctetString, UtcTime};
use der::Encode;
use rand_core::OsRng;
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use spki::{DynSignatureAlgorithmIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use super::EmulatedError;
use crate::snp::certs::{oid, AmdCertificate, AmdCrl};
use crate::snp::tcb::TcbParts;
use crate::snp::Product;

/// The organization of every emulated certificate: it differs from AMD's, so an
/// emulated certificate can never be mistaken for (or matched by name with) AMD's.
pub const EMULATED_ORG: &str = "cvm emulated SEV-SNP platform (INSECURE)";

/// The distinguished name of an emulated certificate with common name `cn`.
pub fn emulated_name(cn: &str) -> Result<Name, EmulatedError> {
    Name::from_str(&format!("CN={cn},O={EMULATED_ORG},OU=Engineering,C=US"))
        .map_err(EmulatedError::Der)
}

/// An X.509 time for `t` (UTCTime before 2050, GeneralizedTime after, per RFC 5280).
fn x509_time(t: SystemTime) -> Result<Time, EmulatedError> {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    // 2050-01-01T00:00:00Z
    if d.as_secs() < 2_524_608_000 {
        Ok(Time::UtcTime(
            UtcTime::from_unix_duration(d).map_err(EmulatedError::Der)?,
        ))
    } else {
        Ok(Time::GeneralTime(
            GeneralizedTime::from_unix_duration(d).map_err(EmulatedError::Der)?,
        ))
    }
}

/// A validity window starting at `from` and lasting `years`.
pub fn validity(from: SystemTime, years: u64) -> Result<Validity, EmulatedError> {
    let until = from + Duration::from_secs(years * 365 * 24 * 3600);
    Ok(Validity {
        not_before: x509_time(from)?,
        not_after: x509_time(until)?,
    })
}

fn ext<T: Encode>(
    oid: der::asn1::ObjectIdentifier,
    critical: bool,
    value: &T,
) -> Result<Extension, EmulatedError> {
    let der = value.to_der().map_err(EmulatedError::Der)?;
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(der).map_err(EmulatedError::Der)?,
    })
}

fn raw_ext(oid: der::asn1::ObjectIdentifier, value: &[u8]) -> Result<Extension, EmulatedError> {
    Ok(Extension {
        extn_id: oid,
        critical: false,
        extn_value: OctetString::new(value).map_err(EmulatedError::Der)?,
    })
}

fn ca_extensions() -> Result<Vec<Extension>, EmulatedError> {
    use der::oid::AssociatedOid;
    Ok(vec![
        ext(
            BasicConstraints::OID,
            true,
            &BasicConstraints {
                ca: true,
                path_len_constraint: None,
            },
        )?,
        ext(
            KeyUsage::OID,
            true,
            &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
        )?,
    ])
}

/// Signs `tbs` with `key` (RSASSA-PSS SHA-384, salt 48) and parses the result.
fn sign(
    mut tbs: TbsCertificate,
    key: &rsa::RsaPrivateKey,
) -> Result<AmdCertificate, EmulatedError> {
    let signer = rsa::pss::BlindedSigningKey::<sha2::Sha384>::new_with_salt_len(key.clone(), 48);
    let alg = signer
        .signature_algorithm_identifier()
        .map_err(EmulatedError::Spki)?;
    tbs.signature = alg.clone();
    let tbs_der = tbs.to_der().map_err(EmulatedError::Der)?;
    let sig = signer
        .try_sign_with_rng(&mut OsRng, &tbs_der)
        .map_err(|_| EmulatedError::Sign)?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(&sig.to_bytes()).map_err(EmulatedError::Der)?,
    };
    let der = cert.to_der().map_err(EmulatedError::Der)?;
    AmdCertificate::from_der(&der).map_err(EmulatedError::Certificate)
}

fn placeholder_alg() -> spki::AlgorithmIdentifierOwned {
    spki::AlgorithmIdentifierOwned {
        oid: crate::snp::certs::OID_RSASSA_PSS,
        parameters: None,
    }
}

/// A self-signed ARK for `product` (CN `ARK-<Product>`).
pub fn make_ark(
    key: &rsa::RsaPrivateKey,
    product: Product,
    from: SystemTime,
) -> Result<AmdCertificate, EmulatedError> {
    let name = emulated_name(&format!("ARK-{}", product.name()))?;
    let spki =
        SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).map_err(EmulatedError::Spki)?;
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::from(1u32),
        signature: placeholder_alg(),
        issuer: name.clone(),
        validity: validity(from, 20)?,
        subject: name,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(ca_extensions()?),
    };
    sign(tbs, key)
}

/// An ASK for `product` (CN `SEV-<Product>`), issued by the ARK.
pub fn make_ask(
    key: &rsa::RsaPrivateKey,
    ark: &AmdCertificate,
    ark_key: &rsa::RsaPrivateKey,
    product: Product,
    from: SystemTime,
) -> Result<AmdCertificate, EmulatedError> {
    let spki =
        SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).map_err(EmulatedError::Spki)?;
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::from(0x0001_0001u32),
        signature: placeholder_alg(),
        issuer: ark.x509().tbs_certificate.subject.clone(),
        validity: validity(from, 20)?,
        subject: emulated_name(&format!("SEV-{}", product.name()))?,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(ca_extensions()?),
    };
    sign(tbs, ark_key)
}

/// The product name AMD writes into VCEKs ("Milan-B0", "Genoa-B1", "Turin").
fn product_name(product: Product) -> &'static str {
    match product {
        Product::Milan => "Milan-B0",
        Product::Genoa => "Genoa-B1",
        Product::Turin => "Turin",
    }
}

/// A VCEK certificate (CN `SEV-VCEK`) for `public` on the chip `hw_id` at `tcb`,
/// issued by the ASK, with AMD's extensions in AMD's order.
pub fn make_vcek(
    public: &p384::PublicKey,
    hw_id: &[u8],
    tcb: &TcbParts,
    product: Product,
    ask: &AmdCertificate,
    ask_key: &rsa::RsaPrivateKey,
    from: SystemTime,
) -> Result<AmdCertificate, EmulatedError> {
    let spki = SubjectPublicKeyInfoOwned::from_key(*public).map_err(EmulatedError::Spki)?;
    let name = Ia5StringRef::new(product_name(product)).map_err(EmulatedError::Der)?;
    let mut exts = vec![
        ext(oid::STRUCT_VERSION, false, &0u8)?,
        ext(oid::PRODUCT_NAME, false, &name)?,
    ];
    if product == Product::Turin {
        exts.push(ext(oid::FMC_SPL, false, &tcb.fmc.unwrap_or(0))?);
    }
    exts.extend([
        ext(oid::BL_SPL, false, &tcb.bootloader)?,
        ext(oid::TEE_SPL, false, &tcb.tee)?,
        ext(oid::SPL_4, false, &0u8)?,
        ext(oid::SPL_5, false, &0u8)?,
        ext(oid::SPL_6, false, &0u8)?,
        ext(oid::SPL_7, false, &0u8)?,
        ext(oid::SNP_SPL, false, &tcb.snp)?,
        ext(oid::UCODE_SPL, false, &tcb.microcode)?,
        raw_ext(oid::HW_ID, hw_id)?,
    ]);
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::from(0u32),
        signature: placeholder_alg(),
        issuer: ask.x509().tbs_certificate.subject.clone(),
        validity: validity(from, 7)?,
        subject: emulated_name("SEV-VCEK")?,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(exts),
    };
    sign(tbs, ask_key)
}

/// A CRL issued by the ARK revoking `revoked`, current from `this_update` to
/// `next_update`.
pub fn make_crl(
    ark: &AmdCertificate,
    ark_key: &rsa::RsaPrivateKey,
    revoked: &[&AmdCertificate],
    this_update: SystemTime,
    next_update: SystemTime,
) -> Result<AmdCrl, EmulatedError> {
    let signer =
        rsa::pss::BlindedSigningKey::<sha2::Sha384>::new_with_salt_len(ark_key.clone(), 48);
    let alg = signer
        .signature_algorithm_identifier()
        .map_err(EmulatedError::Spki)?;
    let list = revoked
        .iter()
        .map(|c| {
            Ok(RevokedCert {
                serial_number: c.x509().tbs_certificate.serial_number.clone(),
                revocation_date: x509_time(this_update)?,
                crl_entry_extensions: None,
            })
        })
        .collect::<Result<Vec<_>, EmulatedError>>()?;
    let tbs = TbsCertList {
        version: Version::V2,
        signature: alg.clone(),
        issuer: ark.x509().tbs_certificate.subject.clone(),
        this_update: x509_time(this_update)?,
        next_update: Some(x509_time(next_update)?),
        revoked_certificates: (!list.is_empty()).then_some(list),
        crl_extensions: None,
    };
    let tbs_der = tbs.to_der().map_err(EmulatedError::Der)?;
    let sig = signer
        .try_sign_with_rng(&mut OsRng, &tbs_der)
        .map_err(|_| EmulatedError::Sign)?;
    let crl = CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(&sig.to_bytes()).map_err(EmulatedError::Der)?,
    };
    AmdCrl::from_der(&crl.to_der().map_err(EmulatedError::Der)?).map_err(EmulatedError::Certificate)
}
