//! Trust anchors: AMD's pinned roots, and operator-supplied roots for emulated
//! platforms.
//!
//! AMD's ARK and ASK certificates for Milan, Genoa and Turin are compiled into the
//! binary (the `sev` crate ships them under `certs/snp/builtin`; we take them from
//! there rather than fetching from AMD's KDS, so verification works offline and a
//! network attacker cannot substitute a root). They are checked at construction: each
//! ARK is self-signed and signs its ASK.
//!
//! An operator may add roots from a file (`cvm-verifier --trust-root`). Evidence that
//! chains to such a root is marked [`TrustLevel::InsecureEmulated`]: it proves nothing
//! about hardware. Without one, only AMD's roots are trusted and emulated evidence is
//! refused as an untrusted chain.

use super::certs::{AmdCertificate, CertError, CertKind};
use super::Product;
use crate::claims::TrustLevel;
use crate::ErrorKind;

/// Errors building a set of trust anchors.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// A root certificate could not be parsed or its signature does not verify.
    #[error("trust anchor certificate {what} is invalid")]
    Certificate {
        /// Which certificate.
        what: String,
        /// The cause (boxed: keeps the error small).
        #[source]
        source: Box<CertError>,
    },
    /// The trust-anchor file holds no self-signed ARK.
    #[error("the trust anchor file holds no self-signed ARK certificate")]
    NoRoot,
}

impl RootError {
    /// The verification error category.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RootError::Certificate { source, .. } => source.kind(),
            RootError::NoRoot => ErrorKind::Malformed,
        }
    }
}

/// One trusted ARK.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    /// The self-signed ARK.
    pub ark: AmdCertificate,
    /// Hardware (AMD pinned) or insecure-emulated (operator supplied).
    pub level: TrustLevel,
    /// The product named by the ARK, if any.
    pub product: Option<Product>,
}

/// The set of roots a verifier trusts, plus intermediates shipped with them.
#[derive(Debug, Clone, Default)]
pub struct TrustRoots {
    roots: Vec<TrustedRoot>,
    intermediates: Vec<AmdCertificate>,
}

fn checked_root(
    ark: AmdCertificate,
    level: TrustLevel,
    what: &str,
) -> Result<TrustedRoot, RootError> {
    let wrap = |source| RootError::Certificate {
        what: what.to_owned(),
        source: Box::new(source),
    };
    if ark.kind() != CertKind::Ark || !ark.is_self_issued() {
        return Err(RootError::NoRoot);
    }
    ark.verify_issued_by(&ark).map_err(wrap)?;
    let product = ark.product();
    Ok(TrustedRoot {
        ark,
        level,
        product,
    })
}

impl TrustRoots {
    /// No roots at all (everything is refused).
    pub fn empty() -> Self {
        Self::default()
    }

    /// AMD's pinned Milan, Genoa and Turin ARKs (with their ASKs as intermediates).
    pub fn amd() -> Result<Self, RootError> {
        use sev::certs::snp::builtin::{genoa, milan, turin};
        let mut out = Self::default();
        for (name, ark, ask) in [
            ("Milan", milan::ARK, milan::ASK),
            ("Genoa", genoa::ARK, genoa::ASK),
            ("Turin", turin::ARK, turin::ASK),
        ] {
            let parse = |pem: &[u8], what: String| {
                AmdCertificate::from_pem(pem).map_err(|source| RootError::Certificate {
                    what,
                    source: Box::new(source),
                })
            };
            let ark = parse(ark, format!("{name} ARK"))?;
            let ask = parse(ask, format!("{name} ASK"))?;
            let root = checked_root(ark, TrustLevel::Hardware, &format!("{name} ARK"))?;
            ask.verify_issued_by(&root.ark)
                .map_err(|source| RootError::Certificate {
                    what: format!("{name} ASK"),
                    source: Box::new(source),
                })?;
            out.roots.push(root);
            out.intermediates.push(ask);
        }
        Ok(out)
    }

    /// Adds operator-supplied roots (PEM bundle or DER). Self-signed ARKs become
    /// [`TrustLevel::InsecureEmulated`] roots; other certificates in the file (an ASK
    /// or ASVK) are kept as intermediates and still verified to a root at use.
    pub fn with_operator_roots(mut self, bytes: &[u8]) -> Result<Self, RootError> {
        let certs = AmdCertificate::parse_all(bytes).map_err(|source| RootError::Certificate {
            what: "in the trust anchor file".to_owned(),
            source: Box::new(source),
        })?;
        let mut added = 0;
        for c in certs {
            if c.kind() == CertKind::Ark && c.is_self_issued() {
                let root =
                    checked_root(c, TrustLevel::InsecureEmulated, "in the trust anchor file")?;
                // AMD's own ARK supplied again stays a hardware root.
                if !self.roots.iter().any(|r| r.ark == root.ark) {
                    self.roots.push(root);
                }
                added += 1;
            } else if c.kind().is_rsa() {
                self.intermediates.push(c);
            }
        }
        if added == 0 {
            return Err(RootError::NoRoot);
        }
        Ok(self)
    }

    /// The trusted roots.
    pub fn roots(&self) -> &[TrustedRoot] {
        &self.roots
    }

    /// Intermediates (ASK/ASVK) shipped with the roots.
    pub fn intermediates(&self) -> &[AmdCertificate] {
        &self.intermediates
    }
}
