//! The emulated platform's collateral as AMD's KDS serves it: the VCEK at
//! `/vcek/v1/{product}/{hwid}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=[&fmcSPL=]` (DER), the ASK
//! and ARK at `/vcek/v1/{product}/cert_chain` (PEM, ASK first) and the ARK's CRL at
//! `/vcek/v1/{product}/crl` (DER). An HTTP server (the tests' mock, `cvm emulated
//! collateral-server`) serves these responses verbatim, so a verifier fetches an
//! emulated platform's collateral exactly as a real one's.

use std::time::SystemTime;

use super::{EmulatedError, EmulatedSnpPlatform};
use crate::snp::AmdCertificate;

/// One response of an emulated collateral service (KDS or PCS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollateralResponse {
    /// The request path and query it answers (exact match).
    pub path: String,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// Further headers (name, value).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl EmulatedSnpPlatform {
    /// The KDS path of this platform's VCEK (at its TCB).
    pub fn kds_vcek_path(&self) -> String {
        let product = self.state.product;
        let tcb = &self.state.tcb;
        let mut path = format!(
            "/vcek/v1/{product}/{}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
            hex::encode(Self::hw_id_of(product, &self.state.chip_id)),
            tcb.bootloader,
            tcb.tee,
            tcb.snp,
            tcb.microcode
        );
        if product == crate::snp::Product::Turin {
            path.push_str(&format!("&fmcSPL={}", tcb.fmc.unwrap_or(0)));
        }
        path
    }

    /// The KDS responses for this platform: VCEK, ASK/ARK chain, and a CRL valid from
    /// `this_update` to `next_update` revoking `revoked` (ASKs; may be empty).
    pub fn kds_responses(
        &self,
        revoked: &[&AmdCertificate],
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<Vec<CollateralResponse>, EmulatedError> {
        let product = self.state.product;
        let crl = self.crl(revoked, this_update, next_update)?;
        let chain = format!("{}{}", self.ask.to_pem(), self.ark.to_pem());
        Ok(vec![
            CollateralResponse {
                path: self.kds_vcek_path(),
                content_type: "application/x-x509-ca-cert",
                headers: Vec::new(),
                body: self.vcek.der().to_vec(),
            },
            CollateralResponse {
                path: format!("/vcek/v1/{product}/cert_chain"),
                content_type: "application/x-pem-file",
                headers: Vec::new(),
                body: chain.into_bytes(),
            },
            CollateralResponse {
                path: format!("/vcek/v1/{product}/crl"),
                content_type: "application/pkix-crl",
                headers: Vec::new(),
                body: crl.der().to_vec(),
            },
        ])
    }
}
