//! Authenticity of collateral items *before* they enter the cache: every fetched,
//! imported or database-loaded item is checked here exactly the same way, so that a
//! forged item (from a bundle, a tampered database row or a network attacker between
//! the verifier and the KDS/PCS) is never stored or served, and so can never pin the
//! cache with a far-future expiry.
//!
//! | item | authentic when |
//! |---|---|
//! | AMD ASK/ARK chain | its ARK is a trusted root (AMD's pinned ARKs, or an emulated platform's anchor) and every other certificate is signed by it |
//! | VCEK | signed by an ASK that a trusted ARK signed (AMD's pinned ASKs, or the ASKs of an authentic chain item) |
//! | AMD VCEK/VLEK CRL of product P | issued (by name) and signed by a trusted ARK *of product P*, and by the ARK of P's authentic ASK/ARK chain item ([`Anchors::crl_of_chain`]) |
//! | Intel TCB info, QE identity | the issuer chain ends at Intel's root CA (or an emulated root) with every link signed, and its leaf signs the JSON |
//! | PCK CRL | the issuer chain as above, and its leaf signs the CRL |
//! | root CA CRL | signed by a trusted Intel (or emulated) root CA |
//!
//! A CRL binds to its product's chain because a CRL only speaks for its issuer
//! (RFC 5280 §6.3.3: the CRL issuer must be the certificate's issuer; AMD's KDS serves
//! at `/vcek/v1/{product}/crl` the CRL its product's ARK signs, one per product). A
//! KDS answering the Milan path with Genoa's genuine CRL, or with another emulated
//! platform's, would otherwise be cached as "Milan's CRL" and revoke nothing of a Milan
//! chain: such an item is refused and never cached.
//!
//! Validity in time is judged at every use (the SNP and DCAP verification check every
//! certificate's window and each CRL's and JSON item's `nextUpdate` at the verification
//! time); the cache stores each item's own expiry, read from the authenticated item.

use std::path::PathBuf;

use attestation::snp::{AmdCertificate, AmdCrl, CertKind, TrustRoots};
use attestation::tdx::pck;

use super::items::{signed_json, ItemKey};
use super::CollateralError;

/// The trust anchors collateral items are checked against.
#[derive(Debug, Clone)]
pub struct Anchors {
    snp: TrustRoots,
    tdx_roots: Vec<Vec<u8>>,
}

impl Anchors {
    /// AMD's pinned ARKs (with their ASKs) and Intel's SGX root CA.
    pub fn genuine() -> Result<Self, CollateralError> {
        Ok(Self {
            snp: TrustRoots::amd()
                .map_err(|e| CollateralError::Anchors(format!("AMD's pinned roots: {e}")))?,
            tdx_roots: vec![pck::INTEL_ROOT_CA_DER.to_vec()],
        })
    }

    /// The genuine anchors plus each emulated platform directory's
    /// (`DIR/snp/trust-anchor.pem`, `DIR/tdx/root_ca.pem`), as `--emulated-trust`. A
    /// directory holding neither (a mistyped path) or one that cannot be read is an
    /// error, not an empty set of anchors.
    pub fn with_emulated(dirs: &[PathBuf]) -> Result<Self, CollateralError> {
        let read = |path: &std::path::Path| match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CollateralError::Anchors(format!("{}: {e}", path.display()))),
        };
        let mut a = Self::genuine()?;
        for dir in dirs {
            let snp = dir.join("snp").join("trust-anchor.pem");
            let tdx = dir.join("tdx").join("root_ca.pem");
            let (snp_bytes, tdx_bytes) = (read(&snp)?, read(&tdx)?);
            if snp_bytes.is_none() && tdx_bytes.is_none() {
                return Err(CollateralError::Anchors(format!(
                    "{} holds no emulated platform anchors (snp/trust-anchor.pem, tdx/root_ca.pem)",
                    dir.display()
                )));
            }
            if let Some(bytes) = snp_bytes {
                a.snp = a
                    .snp
                    .with_operator_roots(&bytes)
                    .map_err(|e| CollateralError::Anchors(format!("{}: {e}", snp.display())))?;
            }
            if let Some(bytes) = tdx_bytes {
                match attestation::tdx::verify::TrustRoot::emulated_from_bytes(&bytes) {
                    Ok(attestation::tdx::verify::TrustRoot::Emulated { der }) => {
                        a.tdx_roots.push(der)
                    }
                    Ok(attestation::tdx::verify::TrustRoot::Intel) => {}
                    Err(e) => {
                        return Err(CollateralError::Anchors(format!("{}: {e}", tdx.display())))
                    }
                }
            }
        }
        Ok(a)
    }

    /// Checks that `body` (as stored: see [`ItemKey::check`]) with `issuer_chain` is an
    /// authentic `key`. `asks` are ASKs from authentic chain items (for VCEKs whose ASK
    /// is not pinned, such as an emulated platform's).
    pub fn verify(
        &self,
        key: &ItemKey,
        body: &[u8],
        issuer_chain: Option<&str>,
        asks: &[AmdCertificate],
    ) -> Result<(), CollateralError> {
        let bad = |detail: String| CollateralError::Unauthentic {
            what: key.what(),
            detail,
        };
        let roots: Vec<&[u8]> = self.tdx_roots.iter().map(Vec::as_slice).collect();
        match key {
            ItemKey::AmdCertChain(product) => {
                let ark = self.chain_ark(body).map_err(bad)?;
                if ark.product() != Some(*product) {
                    return Err(bad(format!(
                        "its ARK ({}) is not {product}'s",
                        ark.common_name()
                    )));
                }
                self.chain_asks(body).map_err(bad)?;
                Ok(())
            }
            ItemKey::Vcek { .. } => {
                let vcek = AmdCertificate::from_der(body)
                    .map_err(|e| bad(format!("not a certificate: {e}")))?;
                if vcek.kind() != CertKind::Vcek {
                    return Err(bad(format!("the certificate is a {}", vcek.kind())));
                }
                let signed = asks
                    .iter()
                    .chain(self.snp.intermediates())
                    .filter(|ask| vcek.names_issuer(ask))
                    .any(|ask| {
                        vcek.verify_issued_by(ask).is_ok()
                            && self
                                .snp
                                .roots()
                                .iter()
                                .any(|r| ask.verify_issued_by(&r.ark).is_ok())
                    });
                if !signed {
                    return Err(bad(
                        "it is not signed by an ASK of a trusted ARK (AMD's pinned roots or a configured emulated anchor)".into(),
                    ));
                }
                Ok(())
            }
            ItemKey::AmdCrl(product) | ItemKey::VlekCrl(product) => {
                if body.is_empty() {
                    // "The KDS publishes no CRL": not a signed item (see bundle.rs).
                    return Ok(());
                }
                let crl = AmdCrl::from_der(body).map_err(|e| bad(format!("not a CRL: {e}")))?;
                // The product's own ARK, not any trusted one: another product's (or
                // platform's) genuine CRL revokes nothing of this product's chains.
                let signed = self.snp.roots().iter().any(|r| {
                    r.product == Some(*product)
                        && crl.issued_by(&r.ark)
                        && crl.verify_signature(&r.ark).is_ok()
                });
                if !signed {
                    return Err(bad(format!(
                        "the CRL is not issued and signed by a trusted {product} ARK"
                    )));
                }
                Ok(())
            }
            ItemKey::TdxTcbInfo(_) | ItemKey::TdxQeIdentity => {
                let field = if matches!(key, ItemKey::TdxTcbInfo(_)) {
                    "tcbInfo"
                } else {
                    "enclaveIdentity"
                };
                let chain = issuer_chain.ok_or_else(|| bad("no issuer chain".into()))?;
                let leaf = pck::verify_issuer_chain(chain.as_bytes(), &roots)
                    .map_err(|e| bad(e.to_string()))?;
                let (inner, sig) = signed_json(body, field).map_err(bad)?;
                let sig: [u8; 64] = sig
                    .try_into()
                    .map_err(|_| bad("the signature is not 64 bytes".into()))?;
                if !pck::verify_raw(&leaf, inner.as_bytes(), &sig) {
                    return Err(bad(format!(
                        "the {field} signature does not verify with the issuer chain's leaf"
                    )));
                }
                Ok(())
            }
            ItemKey::PckCrl(_) => {
                let chain = issuer_chain.ok_or_else(|| bad("no issuer chain".into()))?;
                let leaf = pck::verify_issuer_chain(chain.as_bytes(), &roots)
                    .map_err(|e| bad(e.to_string()))?;
                pck::verify_crl_signature(body, &leaf).map_err(|e| bad(e.to_string()))
            }
            ItemKey::RootCaCrl => {
                let key = pck::crl_root_key(body, &roots)
                    .ok_or_else(|| bad("the CRL is not issued by a trusted root CA".into()))?;
                pck::verify_crl_signature(body, &key).map_err(|e| bad(e.to_string()))
            }
        }
    }

    /// Binds the CRL item `key` (`body`, already checked with [`Self::verify`]) to the
    /// authentic ASK/ARK chain item `chain` of the same product: the CRL's issuer name
    /// must be that chain's ARK's subject and its signature must verify under that ARK.
    /// Under `--emulated-trust` this is what tells two emulated platforms of the same
    /// product apart (both ARKs are trusted roots of that product). An empty body ("the
    /// KDS publishes no CRL") has nothing to bind.
    pub fn crl_of_chain(
        &self,
        key: &ItemKey,
        body: &[u8],
        chain: &[u8],
    ) -> Result<(), CollateralError> {
        let bad = |detail: String| CollateralError::Unauthentic {
            what: key.what(),
            detail,
        };
        if body.is_empty() {
            return Ok(());
        }
        let ark = self
            .chain_ark(chain)
            .map_err(|e| bad(format!("the product's ASK/ARK chain: {e}")))?;
        let crl = AmdCrl::from_der(body).map_err(|e| bad(format!("not a CRL: {e}")))?;
        if !crl.issued_by(&ark) || crl.verify_signature(&ark).is_err() {
            return Err(bad(format!(
                "the CRL is not issued and signed by the ARK of the product's ASK/ARK chain ({}); a CRL of another issuer revokes nothing of that chain (RFC 5280 section 6.3.3)",
                ark.common_name()
            )));
        }
        Ok(())
    }

    /// The ARK of an ASK/ARK chain item, if it is a trusted root.
    pub fn chain_ark(&self, body: &[u8]) -> Result<AmdCertificate, String> {
        let certs =
            AmdCertificate::parse_all(body).map_err(|e| format!("not certificates: {e}"))?;
        let ark = certs
            .into_iter()
            .find(|c| c.kind() == CertKind::Ark)
            .ok_or("the chain has no ARK")?;
        if !self.snp.roots().iter().any(|r| r.ark == ark) {
            return Err(
                "its ARK is not a trusted root (AMD's pinned ARKs or a configured emulated anchor)"
                    .into(),
            );
        }
        Ok(ark)
    }

    /// The ASKs of an ASK/ARK chain item whose ARK is a trusted root.
    pub fn chain_asks(&self, body: &[u8]) -> Result<Vec<AmdCertificate>, String> {
        let ark = self.chain_ark(body)?;
        let certs =
            AmdCertificate::parse_all(body).map_err(|e| format!("not certificates: {e}"))?;
        let mut asks = Vec::new();
        for c in certs.iter().filter(|c| c.kind() != CertKind::Ark) {
            c.verify_issued_by(&ark)
                .map_err(|e| format!("its {} is not signed by its ARK: {e}", c.kind()))?;
            asks.push(c.clone());
        }
        Ok(asks)
    }
}
