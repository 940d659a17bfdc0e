//! Verification of an SNP report against AMD's (or an operator's) roots.
//!
//! Order of checks, each failure mapped to an [`ErrorKind`]:
//!
//! 1. parse the report (reserved bytes, version) — `Malformed`;
//! 2. SIGNATURE_ALGO is ECDSA P-384 SHA-384 — `Malformed`; SIGNING_KEY is not "none" —
//!    `BadSignature`;
//! 3. pick the endorsement certificate of the signing key's kind (VCEK or VLEK) —
//!    `CollateralUnavailable` if absent, `UntrustedChain` if of the wrong kind;
//! 4. chain: VCEK ← ASK ← ARK or VLEK ← ASVK ← ARK, RSASSA-PSS SHA-384 salt 48, up to a
//!    trusted root — `BadSignature` / `UntrustedChain` / `CollateralUnavailable` (missing
//!    intermediate). The result is cached, keyed by SHA-384 of the VCEK/VLEK DER;
//! 5. every certificate valid at the caller's time, none revoked by a supplied CRL —
//!    `UntrustedChain` (stale CRL: `CollateralUnavailable`). A CRL applies only to the
//!    certificates its issuer issued (RFC 5280 §6.3.3: the CRL issuer must be the
//!    certificate's issuer; AMD's KDS publishes one CRL per product, signed by that
//!    product's ARK). A CRL of another issuer is ignored; when the collateral requires
//!    a CRL ([`SnpCollateral::require_ark_crl`], as the verifier's collateral service
//!    sets it) and none issued by the chain's ARK was supplied, the chain is refused —
//!    `CollateralUnavailable` — so a CRL of another product or platform cannot stand in
//!    for the chain's own;
//! 6. product (CPUID for v3+, else the certificate) agrees with the certificate and
//!    the root — `UntrustedChain`;
//! 7. REPORTED_TCB equals the certificate's TCB extensions, and hwID equals CHIP_ID
//!    unless masked (VCEK only) — `UntrustedChain`;
//! 8. the report's ECDSA P-384 signature over bytes 0..0x2A0 — `BadSignature`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The implementation of the report's ECDSA P-384/SHA-384 verification (the two share
/// `ring`'s API): with the `aws-lc` feature (the verifier enables it) AWS-LC through
/// `aws-lc-rs`, whose P-384 arithmetic (s2n-bignum assembly) verifies ~3-4x faster than
/// `ring`'s; otherwise `ring`, ~1.5x faster than RustCrypto `p384`
/// (`benches/p384_impls.rs` measures all three).
#[cfg(feature = "aws-lc")]
use aws_lc_rs::signature as report_sig;
#[cfg(not(feature = "aws-lc"))]
use ring::signature as report_sig;

use sha2::{Digest, Sha384};

use super::cert_table::{CertTable, CertTableError, CertTableKind};
use super::certs::{AmdCertificate, AmdCrl, CertError, CertKind, VekExtensions};
use super::claims::claims_from_report;
use super::report::{
    AttestationReport, ReportError, SigningKey, SIGNED_LEN, SIG_ALGO_ECDSA_P384_SHA384,
};
use super::roots::{RootError, TrustRoots};
use super::tcb::TcbLayout;
use super::Product;
use crate::claims::{Claims, TrustLevel};
use crate::ErrorKind;

/// Largest number of verified chains kept in the cache.
const CACHE_CAPACITY: usize = 4096;

/// Errors from SNP verification.
#[derive(Debug, thiserror::Error)]
pub enum SnpVerifyError {
    /// The report could not be parsed.
    #[error("the attestation report is malformed")]
    Report(#[source] ReportError),
    /// A supplied certificate or CRL is invalid.
    #[error("the {what} is invalid")]
    Certificate {
        /// Which certificate.
        what: String,
        /// The cause (boxed: keeps the error small).
        #[source]
        source: Box<CertError>,
    },
    /// The extended-report certificate table is malformed.
    #[error("the certificate table is malformed")]
    CertTable(#[source] CertTableError),
    /// The trust anchors could not be built.
    #[error("the trust anchors are invalid")]
    Roots(#[source] RootError),
    /// SIGNATURE_ALGO is not ECDSA P-384 with SHA-384.
    #[error(
        "unsupported report signature algorithm {0} (only 1, ECDSA P-384 with SHA-384, is defined)"
    )]
    SignatureAlgorithm(u32),
    /// SIGNING_KEY says the report is not signed.
    #[error("the report is not signed (SIGNING_KEY is none)")]
    Unsigned,
    /// No certificate of the signing key's kind was supplied.
    #[error("no {0} certificate was supplied (offline verification needs it)")]
    MissingVek(CertKind),
    /// A certificate of another kind was supplied as the endorsement key.
    #[error("the certificate supplied is a {found}, but the report needs its {expected}")]
    WrongCertKind {
        /// What the report needs.
        expected: CertKind,
        /// What was supplied.
        found: CertKind,
    },
    /// No intermediate issuing the endorsement key is available.
    #[error("no {issuer} certificate issuing the {vek} was supplied or pinned")]
    MissingIntermediate {
        /// The intermediate's kind.
        issuer: CertKind,
        /// The endorsement key's kind.
        vek: CertKind,
    },
    /// A certificate signature in the chain does not verify.
    #[error("the certificate chain does not verify")]
    ChainSignature(#[source] Box<CertError>),
    /// The chain does not end at a trusted root.
    #[error("the {0} certificate does not chain to a trusted root (emulated platforms need --trust-root)")]
    UntrustedRoot(CertKind),
    /// A certificate is outside its validity period at the verification time.
    #[error(
        "the {kind} certificate is not valid at {} (valid from {} to {})",
        unix_time(*at), unix_time(*not_before as i64), unix_time(*not_after as i64)
    )]
    Expired {
        /// Which certificate.
        kind: CertKind,
        /// The verification time (Unix seconds).
        at: i64,
        /// notBefore (Unix seconds).
        not_before: u64,
        /// notAfter (Unix seconds).
        not_after: u64,
    },
    /// A supplied CRL revokes a certificate of the chain.
    #[error("the {0} certificate is revoked by the supplied CRL")]
    Revoked(CertKind),
    /// A supplied CRL's signature does not verify.
    #[error("a supplied CRL does not verify under its issuer")]
    CrlSignature(#[source] Box<CertError>),
    /// A supplied CRL is not current at the verification time.
    #[error("the supplied CRL is not current at the verification time (a fresh CRL is needed)")]
    CrlStale,
    /// The collateral requires a CRL ([`SnpCollateral::require_ark_crl`]) but none of
    /// the supplied CRLs is issued by the chain's ARK (a CRL of another issuer, such as
    /// another product's or another platform's ARK, revokes nothing of this chain).
    #[error("no CRL issued by the chain's ARK ({ark}) was supplied, so revocation cannot be checked (CRLs of other issuers are ignored: RFC 5280 section 6.3.3)")]
    NoCrlForIssuer {
        /// The subject of the chain's ARK.
        ark: String,
    },
    /// The product could not be determined.
    #[error("the processor product could not be determined from the report or the certificate")]
    UnknownProduct,
    /// The report and the certificates name different products.
    #[error("the report is from a {report} processor but the {what} is for {cert}")]
    ProductMismatch {
        /// The report's product.
        report: Product,
        /// Which certificate.
        what: &'static str,
        /// The certificate's product.
        cert: Product,
    },
    /// REPORTED_TCB does not match the endorsement key's TCB extensions.
    #[error("REPORTED_TCB {component} is {report} but the {kind} certifies {cert}")]
    TcbMismatch {
        /// The TCB component.
        component: &'static str,
        /// The value in the report.
        report: u8,
        /// The value in the certificate.
        cert: u8,
        /// The endorsement key kind.
        kind: CertKind,
    },
    /// CHIP_ID does not match the VCEK's hwID.
    #[error("CHIP_ID does not match the VCEK's hwID: the VCEK belongs to another chip")]
    ChipIdMismatch,
    /// The report's signature does not verify.
    #[error("the report signature does not verify under the {0} key")]
    ReportSignature(CertKind),
    /// Reading collateral from disk failed.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl SnpVerifyError {
    /// The verification error category.
    pub fn kind(&self) -> ErrorKind {
        use SnpVerifyError::*;
        match self {
            Report(_) | CertTable(_) | SignatureAlgorithm(_) | UnknownProduct => {
                ErrorKind::Malformed
            }
            Certificate { source, .. } => source.kind(),
            Roots(e) => e.kind(),
            Unsigned | ChainSignature(_) | CrlSignature(_) | ReportSignature(_) => {
                ErrorKind::BadSignature
            }
            MissingVek(_)
            | MissingIntermediate { .. }
            | CrlStale
            | NoCrlForIssuer { .. }
            | Io { .. } => ErrorKind::CollateralUnavailable,
            WrongCertKind { .. }
            | UntrustedRoot(_)
            | Expired { .. }
            | Revoked(_)
            | ProductMismatch { .. }
            | TcbMismatch { .. }
            | ChipIdMismatch => ErrorKind::UntrustedChain,
        }
    }
}

/// Certificates and CRLs supplied with a report.
#[derive(Debug, Clone, Default)]
pub struct SnpCollateral {
    vek: Option<AmdCertificate>,
    certs: Vec<AmdCertificate>,
    crls: Vec<AmdCrl>,
    ark_crl_required: bool,
}

impl SnpCollateral {
    /// No collateral.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the certificate the caller says is the endorsement key (`--vcek`). Its kind
    /// must match the report's SIGNING_KEY.
    pub fn set_vek(&mut self, cert: AmdCertificate) {
        self.vek = Some(cert);
    }

    /// Adds a certificate (any kind).
    pub fn add_certificate(&mut self, cert: AmdCertificate) {
        if !self.certs.contains(&cert) {
            self.certs.push(cert);
        }
    }

    /// Adds every certificate in a PEM bundle or DER file.
    pub fn add_certificates(&mut self, bytes: &[u8], what: &str) -> Result<(), SnpVerifyError> {
        let certs =
            AmdCertificate::parse_all(bytes).map_err(|source| SnpVerifyError::Certificate {
                what: what.to_owned(),
                source: Box::new(source),
            })?;
        for c in certs {
            self.add_certificate(c);
        }
        Ok(())
    }

    /// Adds a CRL.
    pub fn add_crl(&mut self, crl: AmdCrl) {
        self.crls.push(crl);
    }

    /// Adds every CRL in a PEM or DER file.
    pub fn add_crls(&mut self, bytes: &[u8], what: &str) -> Result<(), SnpVerifyError> {
        let crls = AmdCrl::parse_all(bytes).map_err(|source| SnpVerifyError::Certificate {
            what: what.to_owned(),
            source: Box::new(source),
        })?;
        self.crls.extend(crls);
        Ok(())
    }

    /// Adds the certificates and CRL of an extended-report certificate table.
    pub fn add_cert_table(&mut self, table: &CertTable) -> Result<(), SnpVerifyError> {
        for e in &table.entries {
            match e.kind {
                CertTableKind::Crl => self.add_crls(&e.data, "CRL in the certificate table")?,
                CertTableKind::Other(_) => {}
                k => self.add_certificates(
                    &e.data,
                    &format!("{k:?} certificate in the certificate table"),
                )?,
            }
        }
        Ok(())
    }

    /// Loads a directory in snpguest's layout: `ark`, `ask`, `asvk`, `vcek`, `vlek` and
    /// `crl`, each `.pem` or `.der`; missing files are skipped.
    pub fn load_dir(&mut self, dir: &Path) -> Result<(), SnpVerifyError> {
        for name in ["ark", "ask", "asvk", "vcek", "vlek", "crl"] {
            for ext in ["pem", "der"] {
                let path = dir.join(format!("{name}.{ext}"));
                let bytes = match std::fs::read(&path) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(SnpVerifyError::Io { path, source }),
                };
                let what = path.display().to_string();
                if name == "crl" {
                    self.add_crls(&bytes, &what)?;
                } else {
                    self.add_certificates(&bytes, &what)?;
                }
            }
        }
        Ok(())
    }

    /// Requires a current CRL issued by the ARK of the chain being verified: without
    /// one the verification fails ([`SnpVerifyError::NoCrlForIssuer`]) instead of
    /// passing unchecked. Set by callers that obtained the product's CRL (the verifier's
    /// collateral service) so that a CRL of another issuer cannot stand in for it.
    pub fn require_ark_crl(&mut self) {
        self.ark_crl_required = true;
    }

    /// Whether a CRL of the chain's ARK is required ([`Self::require_ark_crl`]).
    pub fn ark_crl_required(&self) -> bool {
        self.ark_crl_required
    }

    /// The CRLs supplied.
    pub fn crls(&self) -> &[AmdCrl] {
        &self.crls
    }

    /// The certificates supplied.
    pub fn certificates(&self) -> impl Iterator<Item = &AmdCertificate> {
        self.vek.iter().chain(self.certs.iter())
    }
}

/// A verified endorsement key and the chain above it (cached).
#[derive(Debug)]
struct VerifiedVek {
    vek: AmdCertificate,
    /// The VCEK/VLEK's P-384 key (uncompressed SEC1 point) for the fastest P-384
    /// verification built in ([`report_sig`]), kept with the cached chain: the report
    /// signature is the one public-key operation every SNP flow pays.
    key: report_sig::UnparsedPublicKey<Vec<u8>>,
    ext: VekExtensions,
    intermediate: AmdCertificate,
    root_index: usize,
}

/// The result of verifying a VCEK/VLEK chain.
#[derive(Debug, Clone)]
pub struct VerifiedChain {
    /// Which root the chain ends at.
    pub trust: TrustLevel,
    /// The root's product (from its name), if any.
    pub root_product: Option<Product>,
    /// The endorsement key's kind.
    pub kind: CertKind,
    /// The endorsement key's AMD extensions.
    pub extensions: VekExtensions,
}

/// A verified report with its claims.
#[derive(Debug, Clone)]
pub struct VerifiedReport {
    /// The parsed report.
    pub report: AttestationReport,
    /// The normalized claims.
    pub claims: Claims,
}

/// Verifies SNP reports; holds the trust anchors and a cache of verified chains.
#[derive(Debug)]
pub struct SnpVerifier {
    roots: TrustRoots,
    cache: Mutex<HashMap<[u8; 48], Arc<VerifiedVek>>>,
}

/// Formats Unix seconds as RFC 3339 (or the number, if out of range).
fn unix_time(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (Unix seconds)"))
}

fn check_time(cert: &AmdCertificate, at: i64) -> Result<(), SnpVerifyError> {
    let (not_before, not_after) = cert.validity();
    let ok = at >= 0 && (at as u64) >= not_before && (at as u64) <= not_after;
    if !ok {
        return Err(SnpVerifyError::Expired {
            kind: cert.kind(),
            at,
            not_before,
            not_after,
        });
    }
    Ok(())
}

impl SnpVerifier {
    /// A verifier trusting exactly `roots`.
    pub fn new(roots: TrustRoots) -> Self {
        Self {
            roots,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A verifier trusting AMD's pinned roots only.
    pub fn amd() -> Result<Self, SnpVerifyError> {
        Ok(Self::new(TrustRoots::amd().map_err(SnpVerifyError::Roots)?))
    }

    /// The trust anchors.
    pub fn roots(&self) -> &TrustRoots {
        &self.roots
    }

    /// Verifies `report` with `collateral` at time `now` and returns its claims.
    pub fn verify(
        &self,
        report: &[u8],
        collateral: &SnpCollateral,
        now: time::OffsetDateTime,
    ) -> Result<Claims, SnpVerifyError> {
        self.verify_report(report, collateral, now)
            .map(|v| v.claims)
    }

    /// Verifies `report` and returns the parsed report with its claims.
    pub fn verify_report(
        &self,
        bytes: &[u8],
        collateral: &SnpCollateral,
        now: time::OffsetDateTime,
    ) -> Result<VerifiedReport, SnpVerifyError> {
        let report = AttestationReport::parse(bytes).map_err(SnpVerifyError::Report)?;
        if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(SnpVerifyError::SignatureAlgorithm(report.signature_algo));
        }
        let want = match report.signer_info.signing_key {
            SigningKey::Vcek => CertKind::Vcek,
            SigningKey::Vlek => CertKind::Vlek,
            SigningKey::None => return Err(SnpVerifyError::Unsigned),
        };
        let candidates = self.candidates(collateral, want)?;
        let mut first_err = None;
        for vek in candidates {
            match self.verify_with(&report, bytes, vek, collateral, now) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or(SnpVerifyError::MissingVek(want)))
    }

    /// Verifies only the chain of an endorsement key (VCEK/VLEK) at `now`.
    pub fn verify_chain(
        &self,
        vek: &AmdCertificate,
        collateral: &SnpCollateral,
        now: time::OffsetDateTime,
    ) -> Result<VerifiedChain, SnpVerifyError> {
        if vek.kind().is_rsa() {
            return Err(SnpVerifyError::WrongCertKind {
                expected: CertKind::Vcek,
                found: vek.kind(),
            });
        }
        let v = self.chain(vek, collateral)?;
        self.check_current(&v, collateral, now.unix_timestamp())?;
        let root = self
            .roots
            .roots()
            .get(v.root_index)
            .ok_or(SnpVerifyError::UntrustedRoot(v.intermediate.kind()))?;
        Ok(VerifiedChain {
            trust: root.level,
            root_product: root.product,
            kind: vek.kind(),
            extensions: v.ext.clone(),
        })
    }

    fn candidates<'c>(
        &self,
        collateral: &'c SnpCollateral,
        want: CertKind,
    ) -> Result<Vec<&'c AmdCertificate>, SnpVerifyError> {
        if let Some(v) = &collateral.vek {
            if v.kind() != want {
                return Err(SnpVerifyError::WrongCertKind {
                    expected: want,
                    found: v.kind(),
                });
            }
        }
        let list: Vec<&AmdCertificate> = collateral
            .certificates()
            .filter(|c| c.kind() == want)
            .collect();
        if list.is_empty() {
            let other = if want == CertKind::Vcek {
                CertKind::Vlek
            } else {
                CertKind::Vcek
            };
            if collateral.certificates().any(|c| c.kind() == other) {
                return Err(SnpVerifyError::WrongCertKind {
                    expected: want,
                    found: other,
                });
            }
            return Err(SnpVerifyError::MissingVek(want));
        }
        Ok(list)
    }

    fn verify_with(
        &self,
        report: &AttestationReport,
        bytes: &[u8],
        vek: &AmdCertificate,
        collateral: &SnpCollateral,
        now: time::OffsetDateTime,
    ) -> Result<VerifiedReport, SnpVerifyError> {
        let v = self.chain(vek, collateral)?;
        self.check_current(&v, collateral, now.unix_timestamp())?;
        let root = self
            .roots
            .roots()
            .get(v.root_index)
            .ok_or(SnpVerifyError::UntrustedRoot(v.intermediate.kind()))?;

        // Product: CPUID (v3+) or the certificate; every source must agree.
        let cert_product = v.ext.product_name.as_deref().and_then(Product::from_name);
        let report_product = match report.cpuid {
            Some(c) => Some(c.product().ok_or(SnpVerifyError::UnknownProduct)?),
            None => None,
        };
        let product = report_product
            .or(cert_product)
            .or(root.product)
            .ok_or(SnpVerifyError::UnknownProduct)?;
        for (what, other) in [
            ("endorsement certificate", cert_product),
            ("trusted root", root.product),
        ] {
            if let Some(cert) = other {
                if cert != product {
                    return Err(SnpVerifyError::ProductMismatch {
                        report: product,
                        what,
                        cert,
                    });
                }
            }
        }

        // REPORTED_TCB must be the TCB the key was derived for.
        let layout = TcbLayout::for_product(product);
        let tcb = report.reported_tcb.decode(layout);
        let kind = vek.kind();
        let mut pairs = vec![
            ("boot loader", tcb.bootloader, v.ext.bootloader),
            ("TEE", tcb.tee, v.ext.tee),
            ("SNP", tcb.snp, v.ext.snp),
            ("microcode", tcb.microcode, v.ext.microcode),
        ];
        if layout == TcbLayout::Turin {
            let cert_fmc = v.ext.fmc.ok_or_else(|| SnpVerifyError::Certificate {
                what: format!("{kind} certificate"),
                source: Box::new(CertError::MissingExtension {
                    kind,
                    oid: super::certs::oid::FMC_SPL,
                }),
            })?;
            pairs.push(("FMC", tcb.fmc.unwrap_or(0), cert_fmc));
        }
        for (component, r, c) in pairs {
            if r != c {
                return Err(SnpVerifyError::TcbMismatch {
                    component,
                    report: r,
                    cert: c,
                    kind,
                });
            }
        }

        // hwID binds a VCEK to one chip (unless the host masks CHIP_ID).
        if kind == CertKind::Vcek && !report.chip_id_masked() {
            let hw = v.ext.hw_id.as_deref().unwrap_or(&[]);
            let (head, tail) = report.chip_id.split_at(hw.len().min(64));
            if hw.is_empty() || head != hw || tail.iter().any(|b| *b != 0) {
                return Err(SnpVerifyError::ChipIdMismatch);
            }
        }

        // The signature itself.
        let bad = || SnpVerifyError::ReportSignature(kind);
        let (r, s) = report.signature.to_be_scalars().ok_or_else(bad)?;
        let sig = p384::ecdsa::Signature::from_scalars(r, s).map_err(|_| bad())?;
        let signed = bytes.get(..SIGNED_LEN).ok_or_else(bad)?;
        // ECDSA P-384/SHA-384 over the signed region, r||s big-endian.
        v.key.verify(signed, &sig.to_bytes()).map_err(|_| bad())?;

        // The platform identity comes from the verified certificate (a VCEK's hwID), or
        // for a VLEK from the CHIP_ID it signed; never from a masked CHIP_ID. Empty: no
        // identity (a VLEK report with MASK_CHIP_ID), which the verifier service refuses.
        let platform_id = v
            .vek
            .platform_identity(&v.ext, &report.chip_id)
            .unwrap_or_default();
        let claims = claims_from_report(report, product, root.level, platform_id)
            .ok_or(SnpVerifyError::Unsigned)?;
        Ok(VerifiedReport {
            report: report.clone(),
            claims,
        })
    }

    /// Verifies (or fetches from the cache) the chain above `vek`.
    fn chain(
        &self,
        vek: &AmdCertificate,
        collateral: &SnpCollateral,
    ) -> Result<Arc<VerifiedVek>, SnpVerifyError> {
        let key: [u8; 48] = Sha384::digest(vek.der()).into();
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Arc::clone(hit));
        }
        let what = format!("{} certificate", vek.kind());
        let wrap = |source| SnpVerifyError::Certificate {
            what: what.clone(),
            source: Box::new(source),
        };
        let ext = vek.vek_extensions().map_err(wrap)?;
        let ec = vek.ec_verifying_key().map_err(wrap)?;
        let issuer_kind = vek.kind().issuer_kind();
        let named: Vec<&AmdCertificate> = collateral
            .certificates()
            .chain(self.roots.intermediates().iter())
            .filter(|c| c.kind() == issuer_kind && vek.names_issuer(c))
            .collect();
        if named.is_empty() {
            return Err(SnpVerifyError::MissingIntermediate {
                issuer: issuer_kind,
                vek: vek.kind(),
            });
        }
        let mut last = None;
        for inter in named {
            if let Err(e) = vek.verify_issued_by(inter) {
                last = Some(SnpVerifyError::ChainSignature(Box::new(e)));
                continue;
            }
            let mut found_root = false;
            for (index, root) in self.roots.roots().iter().enumerate() {
                if !inter.names_issuer(&root.ark) {
                    continue;
                }
                found_root = true;
                match inter.verify_issued_by(&root.ark) {
                    Ok(()) => {
                        let v = Arc::new(VerifiedVek {
                            vek: vek.clone(),
                            key: report_sig::UnparsedPublicKey::new(
                                &report_sig::ECDSA_P384_SHA384_FIXED,
                                ec.to_encoded_point(false).as_bytes().to_vec(),
                            ),
                            ext,
                            intermediate: inter.clone(),
                            root_index: index,
                        });
                        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                        if cache.len() >= CACHE_CAPACITY {
                            cache.clear();
                        }
                        cache.insert(key, Arc::clone(&v));
                        return Ok(v);
                    }
                    Err(e) => last = Some(SnpVerifyError::ChainSignature(Box::new(e))),
                }
            }
            if !found_root && last.is_none() {
                last = Some(SnpVerifyError::UntrustedRoot(inter.kind()));
            }
        }
        Err(last.unwrap_or(SnpVerifyError::UntrustedRoot(issuer_kind)))
    }

    /// Time validity and revocation: checked on every use, cached chain or not.
    fn check_current(
        &self,
        v: &VerifiedVek,
        collateral: &SnpCollateral,
        at: i64,
    ) -> Result<(), SnpVerifyError> {
        let root = self
            .roots
            .roots()
            .get(v.root_index)
            .ok_or(SnpVerifyError::UntrustedRoot(v.intermediate.kind()))?;
        check_time(&root.ark, at)?;
        check_time(&v.intermediate, at)?;
        check_time(&v.vek, at)?;
        // RFC 5280 section 6.3.3: a CRL applies to a certificate only when its issuer
        // is the certificate's issuer. A CRL of another issuer (another product's ARK,
        // another platform's) revokes nothing of this chain: it is ignored here, and
        // when the collateral requires a CRL (`require_ark_crl`) one issued by this
        // chain's ARK must still be among them, or the chain is refused below.
        let mut ark_crl_checked = false;
        for crl in &collateral.crls {
            let (issuer, targets, of_ark): (&AmdCertificate, &[&AmdCertificate], bool) =
                if crl.issued_by(&root.ark) {
                    (&root.ark, &[&v.intermediate], true)
                } else if crl.issued_by(&v.intermediate) {
                    (&v.intermediate, &[&v.vek], false)
                } else {
                    continue;
                };
            crl.verify_signature(issuer)
                .map_err(|e| SnpVerifyError::CrlSignature(Box::new(e)))?;
            let (this_update, next_update) = crl.update_times();
            let current = at >= 0
                && (at as u64) >= this_update
                && next_update.is_none_or(|n| (at as u64) <= n);
            if !current {
                return Err(SnpVerifyError::CrlStale);
            }
            for t in targets {
                if crl.revokes(t.serial()) {
                    return Err(SnpVerifyError::Revoked(t.kind()));
                }
            }
            ark_crl_checked |= of_ark;
        }
        if collateral.ark_crl_required && !ark_crl_checked {
            return Err(SnpVerifyError::NoCrlForIssuer {
                ark: root.ark.common_name().to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::snp::emulated::{EmulatedSnpConfig, EmulatedSnpPlatform};

    /// An emulated platform of `product`, generated once (RSA-4096 keys are slow in
    /// debug builds) under the target directory and reopened.
    fn platform(name: &str, product: Product) -> EmulatedSnpPlatform {
        let dir = test_kit::cached_dir(&format!("snp-verify-unit-v1-{name}"), |tmp| {
            let config = EmulatedSnpConfig {
                product,
                ..EmulatedSnpConfig::default()
            };
            EmulatedSnpPlatform::generate(&config)
                .expect("platform generates")
                .write_to(tmp)
                .expect("platform writes");
        });
        EmulatedSnpPlatform::open(&dir).expect("platform opens")
    }

    fn chain_of(p: &EmulatedSnpPlatform) -> SnpCollateral {
        let mut c = SnpCollateral::new();
        c.add_cert_table(&p.cert_table())
            .expect("certificate table");
        c
    }

    /// Attack: the collateral of platform A's chain carries a CRL of another trusted
    /// issuer (platform B's ARK, of another product; and of the same product) while
    /// A's own CRL revokes A's ASK. Before, the foreign CRL was skipped with `continue`
    /// and the revoked chain verified as if revocation had been checked.
    #[test]
    fn a_crl_of_another_issuer_does_not_count_as_the_chains_crl() {
        let a = platform("a-milan", Product::Milan);
        let others = [
            platform("b-genoa", Product::Genoa),
            platform("c-milan", Product::Milan),
        ];
        let mut roots = TrustRoots::amd()
            .expect("AMD roots")
            .with_operator_roots(a.trust_anchor_pem().as_bytes())
            .expect("anchor A");
        for b in &others {
            roots = roots
                .with_operator_roots(b.trust_anchor_pem().as_bytes())
                .expect("anchor B");
        }
        let v = SnpVerifier::new(roots);
        let t0 = SystemTime::now() - Duration::from_secs(3600);
        let t1 = SystemTime::now() + Duration::from_secs(3600);
        let now = time::OffsetDateTime::now_utc();
        // Another product's ARK has another name: its CRL is ignored, and required
        // CRLs fail closed. Another platform of the same product has an ARK of the same
        // name but another key: its CRL is taken as the chain's and fails its signature.
        let same_name = &others[1];
        assert_eq!(same_name.ark().common_name(), a.ark().common_name());
        for required in [false, true] {
            let mut c = chain_of(&a);
            c.add_crl(same_name.crl(&[], t0, t1).expect("crl"));
            if required {
                c.require_ark_crl();
            }
            let err = v.verify_chain(a.vcek(), &c, now).expect_err("forged");
            assert!(matches!(err, SnpVerifyError::CrlSignature(_)), "{err}");
        }
        for b in &others[..1] {
            assert_ne!(a.ark().der(), b.ark().der());
            // The foreign CRL only, required: refused, the chain's issuer named.
            let mut c = chain_of(&a);
            c.add_crl(b.crl(&[], t0, t1).expect("crl B"));
            c.require_ark_crl();
            let err = v
                .verify_chain(a.vcek(), &c, now)
                .expect_err("a CRL of another issuer stands in for none");
            assert!(
                matches!(err, SnpVerifyError::NoCrlForIssuer { ref ark } if ark == a.ark().common_name()),
                "{err}"
            );
            assert_eq!(err.kind(), ErrorKind::CollateralUnavailable);
            // Not required (a caller that has no CRL to offer): ignored, as before.
            let mut c = chain_of(&a);
            c.add_crl(b.crl(&[], t0, t1).expect("crl B"));
            v.verify_chain(a.vcek(), &c, now)
                .expect("a foreign CRL is ignored when none is required");
            // A's own CRL next to the foreign one is still enforced.
            let mut c = chain_of(&a);
            c.add_crl(b.crl(&[], t0, t1).expect("crl B"));
            c.add_crl(a.crl(&[a.ask()], t0, t1).expect("crl A"));
            c.require_ark_crl();
            let err = v.verify_chain(a.vcek(), &c, now).expect_err("revoked");
            assert!(
                matches!(err, SnpVerifyError::Revoked(CertKind::Ask)),
                "{err}"
            );
            // A's current CRL revoking nothing satisfies the requirement.
            let mut c = chain_of(&a);
            c.add_crl(a.crl(&[], t0, t1).expect("crl A"));
            c.require_ark_crl();
            v.verify_chain(a.vcek(), &c, now)
                .expect("the chain's own CRL");
        }
    }
}
