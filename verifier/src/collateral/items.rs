//! The collateral items: what each is, where it is fetched (AMD KDS, Intel PCS v4 /
//! PCCS paths), how its response is checked, and when it expires.
//!
//! Checking here is about *shape and lifetime* (the body parses, the issuer chain
//! header is present, the expiry is read from the item itself); authenticity (chains to
//! the trusted roots, signatures) is checked by [`super::auth`] before an item enters
//! the cache, and again at every use by the `attestation` crate's SNP and DCAP
//! verification.

use std::fmt;
use std::str::FromStr;

use attestation::snp::{AmdCertificate, AmdCrl, Product};
use der::Decode;
use serde::{Deserialize, Serialize};

use super::{CollateralConfig, CollateralError};

/// A PCK CRL issuer: Intel publishes one CRL per PCK CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PckCa {
    /// Intel SGX PCK Processor CA.
    Processor,
    /// Intel SGX PCK Platform CA.
    Platform,
}

impl PckCa {
    /// The `ca=` value of the PCS API.
    pub fn as_str(self) -> &'static str {
        match self {
            PckCa::Processor => "processor",
            PckCa::Platform => "platform",
        }
    }
}

/// The TCB a VCEK is requested for (the report's REPORTED_TCB, decoded per product).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VcekTcb {
    /// blSPL.
    pub bootloader: u8,
    /// teeSPL.
    pub tee: u8,
    /// snpSPL.
    pub snp: u8,
    /// ucodeSPL.
    pub microcode: u8,
    /// fmcSPL (Turin only).
    pub fmc: Option<u8>,
}

/// One cached item, identified by what it is (its key in the cache).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ItemKey {
    /// A VCEK (DER) for a chip (hwID) at a TCB.
    Vcek {
        /// The product.
        product: Product,
        /// The hwID (64 bytes; 8 on Turin).
        hw_id: Vec<u8>,
        /// The TCB.
        tcb: VcekTcb,
    },
    /// The ASK and ARK of a product (PEM).
    AmdCertChain(Product),
    /// The CRL the ARK of a product publishes (DER).
    AmdCrl(Product),
    /// The CRL of a product's VLEK chain (`/vlek/v1/{product}/crl`, DER): VLEKs are not
    /// fetchable, but their revocation list is.
    VlekCrl(Product),
    /// TDX TCB info for an FMSPC (`{"tcbInfo":…,"signature":…}`).
    TdxTcbInfo([u8; 6]),
    /// The TDX QE identity (`{"enclaveIdentity":…,"signature":…}`).
    TdxQeIdentity,
    /// A PCK CRL (DER).
    PckCrl(PckCa),
    /// The Intel SGX root CA CRL (DER).
    RootCaCrl,
}

fn product_from(s: &str) -> Option<Product> {
    match s {
        "Milan" => Some(Product::Milan),
        "Genoa" => Some(Product::Genoa),
        "Turin" => Some(Product::Turin),
        _ => None,
    }
}

impl fmt::Display for ItemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemKey::Vcek {
                product,
                hw_id,
                tcb,
            } => {
                write!(
                    f,
                    "amd/{product}/vcek/{}/{}-{}-{}-{}",
                    hex::encode(hw_id),
                    tcb.bootloader,
                    tcb.tee,
                    tcb.snp,
                    tcb.microcode
                )?;
                if let Some(fmc) = tcb.fmc {
                    write!(f, "-{fmc}")?;
                }
                Ok(())
            }
            ItemKey::AmdCertChain(p) => write!(f, "amd/{p}/cert_chain"),
            ItemKey::AmdCrl(p) => write!(f, "amd/{p}/crl"),
            ItemKey::VlekCrl(p) => write!(f, "amd/{p}/vlek_crl"),
            ItemKey::TdxTcbInfo(fmspc) => write!(f, "intel/tdx/tcb/{}", hex::encode(fmspc)),
            ItemKey::TdxQeIdentity => f.write_str("intel/tdx/qe_identity"),
            ItemKey::PckCrl(ca) => write!(f, "intel/pckcrl/{}", ca.as_str()),
            ItemKey::RootCaCrl => f.write_str("intel/rootcacrl"),
        }
    }
}

impl FromStr for ItemKey {
    type Err = CollateralError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CollateralError::BadKey(s.to_owned());
        let parts: Vec<&str> = s.split('/').collect();
        Ok(match parts.as_slice() {
            ["amd", p, "cert_chain"] => ItemKey::AmdCertChain(product_from(p).ok_or_else(bad)?),
            ["amd", p, "crl"] => ItemKey::AmdCrl(product_from(p).ok_or_else(bad)?),
            ["amd", p, "vlek_crl"] => ItemKey::VlekCrl(product_from(p).ok_or_else(bad)?),
            ["amd", p, "vcek", hw, tcb] => {
                let product = product_from(p).ok_or_else(bad)?;
                let hw_id = hex::decode(hw).map_err(|_| bad())?;
                let n: Vec<u8> = tcb
                    .split('-')
                    .map(|x| x.parse::<u8>().map_err(|_| bad()))
                    .collect::<Result<_, _>>()?;
                let tcb = match n.as_slice() {
                    [b, t, s, u] => VcekTcb {
                        bootloader: *b,
                        tee: *t,
                        snp: *s,
                        microcode: *u,
                        fmc: None,
                    },
                    [b, t, s, u, m] => VcekTcb {
                        bootloader: *b,
                        tee: *t,
                        snp: *s,
                        microcode: *u,
                        fmc: Some(*m),
                    },
                    _ => return Err(bad()),
                };
                ItemKey::Vcek {
                    product,
                    hw_id,
                    tcb,
                }
            }
            ["intel", "tdx", "tcb", fmspc] => {
                let v = hex::decode(fmspc).map_err(|_| bad())?;
                ItemKey::TdxTcbInfo(v.try_into().map_err(|_| bad())?)
            }
            ["intel", "tdx", "qe_identity"] => ItemKey::TdxQeIdentity,
            ["intel", "pckcrl", "processor"] => ItemKey::PckCrl(PckCa::Processor),
            ["intel", "pckcrl", "platform"] => ItemKey::PckCrl(PckCa::Platform),
            ["intel", "rootcacrl"] => ItemKey::RootCaCrl,
            _ => return Err(bad()),
        })
    }
}

/// The public AMD KDS.
pub const AMD_KDS_URL: &str = "https://kdsintf.amd.com";
/// The public Intel PCS (a PCCS URL works too: same API).
pub const INTEL_PCS_URL: &str = "https://api.trustedservices.intel.com";
/// Where Intel publishes the SGX root CA CRL (the root certificate's CRL distribution
/// point); the public PCS has no `rootcacrl` path, a PCCS has.
pub const INTEL_ROOT_CA_CRL_URL: &str =
    "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der";

impl ItemKey {
    /// Whether the item comes from AMD's KDS (else Intel's PCS).
    pub fn is_amd(&self) -> bool {
        matches!(
            self,
            ItemKey::Vcek { .. }
                | ItemKey::AmdCertChain(_)
                | ItemKey::AmdCrl(_)
                | ItemKey::VlekCrl(_)
        )
    }

    /// What the item is, for messages.
    pub fn what(&self) -> String {
        match self {
            ItemKey::Vcek { product, .. } => format!("{product} VCEK"),
            ItemKey::AmdCertChain(p) => format!("{p} ASK/ARK chain"),
            ItemKey::AmdCrl(p) => format!("{p} CRL"),
            ItemKey::VlekCrl(p) => format!("{p} VLEK CRL"),
            ItemKey::TdxTcbInfo(f) => format!("TDX TCB info for FMSPC {}", hex::encode(f)),
            ItemKey::TdxQeIdentity => "TDX QE identity".into(),
            ItemKey::PckCrl(ca) => format!("PCK {} CA CRL", ca.as_str()),
            ItemKey::RootCaCrl => "Intel SGX root CA CRL".into(),
        }
    }

    /// The URL the item is fetched from.
    pub fn url(&self, cfg: &CollateralConfig) -> String {
        let kds = cfg.amd_kds_url.trim_end_matches('/');
        let pcs = cfg
            .intel_pcs_url
            .trim_end_matches('/')
            .trim_end_matches("/sgx/certification/v4")
            .trim_end_matches("/tdx/certification/v4");
        match self {
            ItemKey::Vcek {
                product,
                hw_id,
                tcb,
            } => {
                let mut u = format!(
                    "{kds}/vcek/v1/{product}/{}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
                    hex::encode(hw_id),
                    tcb.bootloader,
                    tcb.tee,
                    tcb.snp,
                    tcb.microcode
                );
                if let Some(fmc) = tcb.fmc {
                    u.push_str(&format!("&fmcSPL={fmc}"));
                }
                u
            }
            ItemKey::AmdCertChain(p) => format!("{kds}/vcek/v1/{p}/cert_chain"),
            ItemKey::AmdCrl(p) => format!("{kds}/vcek/v1/{p}/crl"),
            ItemKey::VlekCrl(p) => format!("{kds}/vlek/v1/{p}/crl"),
            ItemKey::TdxTcbInfo(f) => format!(
                "{pcs}/tdx/certification/v4/tcb?fmspc={}",
                hex::encode_upper(f)
            ),
            ItemKey::TdxQeIdentity => format!("{pcs}/tdx/certification/v4/qe/identity"),
            ItemKey::PckCrl(ca) => format!(
                "{pcs}/sgx/certification/v4/pckcrl?ca={}&encoding=der",
                ca.as_str()
            ),
            ItemKey::RootCaCrl => match &cfg.intel_root_ca_crl_url {
                Some(u) => u.clone(),
                None if pcs == INTEL_PCS_URL => INTEL_ROOT_CA_CRL_URL.to_owned(),
                None => format!("{pcs}/sgx/certification/v4/rootcacrl"),
            },
        }
    }

    /// The response header carrying the issuer chain (Intel items), in the order tried.
    pub fn issuer_header(&self) -> &'static [&'static str] {
        match self {
            ItemKey::TdxTcbInfo(_) => &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"],
            ItemKey::TdxQeIdentity => &[
                "SGX-Enclave-Identity-Issuer-Chain",
                "Enclave-Identity-Issuer-Chain",
            ],
            ItemKey::PckCrl(_) => &["SGX-PCK-CRL-Issuer-Chain"],
            _ => &[],
        }
    }

    /// Checks a response body (and issuer chain) and returns the stored body and the
    /// item's expiry (Unix seconds).
    pub fn check(
        &self,
        body: &[u8],
        issuer_chain: Option<&str>,
    ) -> Result<(Vec<u8>, i64), CollateralError> {
        let bad = |detail: String| CollateralError::BadResponse {
            what: self.what(),
            detail,
        };
        if !self.issuer_header().is_empty() {
            let chain = issuer_chain.ok_or_else(|| bad("no issuer chain header".into()))?;
            let certs = attestation::tdx::pck::load_pem_chain(chain.as_bytes())
                .map_err(|e| bad(format!("the issuer chain is not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(bad("the issuer chain is empty".into()));
            }
        }
        match self {
            ItemKey::Vcek { .. } => {
                let cert = AmdCertificate::from_der(body)
                    .or_else(|_| AmdCertificate::from_pem(body))
                    .map_err(|e| bad(format!("not a VCEK certificate: {e}")))?;
                let (_, not_after) = cert.validity();
                Ok((cert.der().to_vec(), clamp(not_after)))
            }
            ItemKey::AmdCertChain(_) => {
                let certs = AmdCertificate::parse_all(body)
                    .map_err(|e| bad(format!("not a PEM certificate chain: {e}")))?;
                if certs.len() < 2 {
                    return Err(bad("expected the ASK (or ASVK) and the ARK".into()));
                }
                let expiry = certs.iter().map(|c| c.validity().1).min().unwrap_or(0);
                Ok((body.to_vec(), clamp(expiry)))
            }
            ItemKey::AmdCrl(_) | ItemKey::VlekCrl(_) => {
                let crls = AmdCrl::parse_all(body).map_err(|e| bad(format!("not a CRL: {e}")))?;
                let [crl] = crls.as_slice() else {
                    return Err(bad("expected exactly one CRL".into()));
                };
                let (_, next) = crl.update_times();
                let next = next.ok_or_else(|| bad("the CRL has no nextUpdate".into()))?;
                Ok((crl.der().to_vec(), clamp(next)))
            }
            ItemKey::TdxTcbInfo(fmspc) => {
                let (inner, _) = signed_json(body, "tcbInfo").map_err(bad)?;
                let info: TcbInfoHead = serde_json::from_str(inner)
                    .map_err(|e| bad(format!("the tcbInfo does not parse: {e}")))?;
                if !info.fmspc.eq_ignore_ascii_case(&hex::encode(fmspc)) {
                    return Err(bad(format!("the tcbInfo is for FMSPC {}", info.fmspc)));
                }
                Ok((body.to_vec(), rfc3339(&info.next_update).map_err(bad)?))
            }
            ItemKey::TdxQeIdentity => {
                let (inner, _) = signed_json(body, "enclaveIdentity").map_err(bad)?;
                let id: IdentityHead = serde_json::from_str(inner)
                    .map_err(|e| bad(format!("the enclaveIdentity does not parse: {e}")))?;
                Ok((body.to_vec(), rfc3339(&id.next_update).map_err(bad)?))
            }
            ItemKey::PckCrl(_) | ItemKey::RootCaCrl => {
                let der = crl_der(body).ok_or_else(|| bad("not a DER, PEM or hex CRL".into()))?;
                let crl = x509_cert::crl::CertificateList::from_der(&der)
                    .map_err(|e| bad(format!("not a CRL: {e}")))?;
                let next = crl
                    .tbs_cert_list
                    .next_update
                    .ok_or_else(|| bad("the CRL has no nextUpdate".into()))?;
                Ok((der, clamp(next.to_unix_duration().as_secs())))
            }
        }
    }
}

/// The `issueDate` and `tcbEvaluationDataNumber` of a TCB info or QE identity.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FreshnessHead {
    pub issue_date: String,
    pub tcb_evaluation_data_number: u32,
}

fn clamp(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn rfc3339(s: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("nextUpdate `{s}` is not an RFC 3339 time: {e}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TcbInfoHead {
    fmspc: String,
    next_update: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityHead {
    next_update: String,
}

#[derive(Deserialize)]
struct Signed<'a> {
    #[serde(borrow, rename = "tcbInfo")]
    tcb_info: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, rename = "enclaveIdentity")]
    enclave_identity: Option<&'a serde_json::value::RawValue>,
    signature: String,
}

/// The exact text of the signed object `field` of a PCS JSON response and its
/// signature (hex, 64 bytes r||s): the signature covers these exact bytes.
pub fn signed_json<'a>(body: &'a [u8], field: &str) -> Result<(&'a str, Vec<u8>), String> {
    let s: Signed<'a> = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let raw = match field {
        "tcbInfo" => s.tcb_info,
        _ => s.enclave_identity,
    }
    .ok_or_else(|| format!("no `{field}` object"))?;
    let sig = hex::decode(&s.signature).map_err(|_| "the signature is not hex".to_owned())?;
    if sig.len() != 64 {
        return Err(format!("the signature is {} bytes, expected 64", sig.len()));
    }
    Ok((raw.get(), sig))
}

/// A CRL body as DER: DER, PEM, or hex (a PCCS returns the root CA CRL as hex).
fn crl_der(body: &[u8]) -> Option<Vec<u8>> {
    if body.first() == Some(&0x30) {
        return Some(body.to_vec());
    }
    if let Ok(crls) = AmdCrl::parse_all(body) {
        if let [one] = crls.as_slice() {
            return Some(one.der().to_vec());
        }
    }
    let text = std::str::from_utf8(body).ok()?.trim();
    hex::decode(text).ok().filter(|d| d.first() == Some(&0x30))
}

/// One cached collateral item (also the entry format of an export bundle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The cache key ([`ItemKey`] as text).
    pub key: String,
    /// Where it was fetched.
    pub url: String,
    /// The response body (base64 in JSON).
    #[serde(with = "b64")]
    pub body: Vec<u8>,
    /// The issuer chain of the response headers (PEM), for Intel items.
    pub issuer_chain: Option<String>,
    /// When it was fetched (Unix seconds).
    pub fetched_at: i64,
    /// When it stops being usable (Unix seconds): nextUpdate or notAfter.
    pub expires_at: i64,
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// Percent-decodes a header value (Intel URL-encodes the PEM issuer chains).
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let keys = [
            ItemKey::Vcek {
                product: Product::Turin,
                hw_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
                tcb: VcekTcb {
                    bootloader: 1,
                    tee: 2,
                    snp: 3,
                    microcode: 4,
                    fmc: Some(5),
                },
            },
            ItemKey::AmdCertChain(Product::Milan),
            ItemKey::AmdCrl(Product::Genoa),
            ItemKey::TdxTcbInfo([0xb0, 0xc0, 0x6f, 0, 0, 0]),
            ItemKey::TdxQeIdentity,
            ItemKey::PckCrl(PckCa::Platform),
            ItemKey::RootCaCrl,
        ];
        for k in keys {
            assert_eq!(k.to_string().parse::<ItemKey>().unwrap(), k);
        }
        assert!("amd/Naples/crl".parse::<ItemKey>().is_err());
        assert!("intel/tdx/tcb/zz".parse::<ItemKey>().is_err());
    }

    #[test]
    fn turin_vcek_url_has_fmc_spl() {
        let cfg = CollateralConfig::default();
        let k = ItemKey::Vcek {
            product: Product::Turin,
            hw_id: vec![0xab; 8],
            tcb: VcekTcb {
                bootloader: 1,
                tee: 2,
                snp: 3,
                microcode: 4,
                fmc: Some(5),
            },
        };
        assert_eq!(
            k.url(&cfg),
            "https://kdsintf.amd.com/vcek/v1/Turin/abababababababab?blSPL=1&teeSPL=2&snpSPL=3&ucodeSPL=4&fmcSPL=5"
        );
        assert_eq!(
            ItemKey::RootCaCrl.url(&cfg),
            INTEL_ROOT_CA_CRL_URL,
            "the public PCS has no rootcacrl path"
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%0A").as_deref(), Some("a b\n"));
        assert_eq!(percent_decode("%2"), None);
    }
}
