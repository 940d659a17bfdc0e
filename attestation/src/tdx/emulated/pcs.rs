//! The emulated platform's collateral as Intel's PCS v4 (or a PCCS) serves it: TCB info
//! at `/tdx/certification/v4/tcb?fmspc=` with the `TCB-Info-Issuer-Chain` header, the
//! QE identity at `/tdx/certification/v4/qe/identity` with
//! `SGX-Enclave-Identity-Issuer-Chain`, the PCK CRL at
//! `/sgx/certification/v4/pckcrl?ca=platform&encoding=der` with
//! `SGX-PCK-CRL-Issuer-Chain` (issuer chains URL-encoded PEM), and the root CA CRL at
//! `/sgx/certification/v4/rootcacrl` (hex, as a PCCS answers).

use super::collateral::CollateralOptions;
use super::{EmulatedError, EmulatedTdxPlatform};
use crate::snp::emulated::kds::CollateralResponse;

/// URL-encodes `s` as Intel encodes issuer-chain headers (unreserved characters kept).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The PCS responses for a complete `QuoteCollateralV3` of a platform with `fmspc`
/// whose PCK chain is issued by the `ca` (`platform` or `processor`) CA.
pub fn pcs_responses_for(
    v3: &crate::tdx::collateral::QuoteCollateralV3,
    fmspc: [u8; 6],
    ca: &str,
) -> Vec<CollateralResponse> {
    let signed = |field: &str, text: &str, sig: &[u8]| {
        format!(
            "{{\"{field}\":{text},\"signature\":\"{}\"}}",
            hex::encode(sig)
        )
        .into_bytes()
    };
    vec![
        CollateralResponse {
            path: format!(
                "/tdx/certification/v4/tcb?fmspc={}",
                hex::encode_upper(fmspc)
            ),
            content_type: "application/json",
            headers: vec![(
                "TCB-Info-Issuer-Chain".into(),
                url_encode(&v3.tcb_info_issuer_chain),
            )],
            body: signed("tcbInfo", &v3.tcb_info, &v3.tcb_info_signature),
        },
        CollateralResponse {
            path: "/tdx/certification/v4/qe/identity".into(),
            content_type: "application/json",
            headers: vec![(
                "SGX-Enclave-Identity-Issuer-Chain".into(),
                url_encode(&v3.qe_identity_issuer_chain),
            )],
            body: signed(
                "enclaveIdentity",
                &v3.qe_identity,
                &v3.qe_identity_signature,
            ),
        },
        CollateralResponse {
            path: format!("/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"),
            content_type: "application/pkix-crl",
            headers: vec![(
                "SGX-PCK-CRL-Issuer-Chain".into(),
                url_encode(&v3.pck_crl_issuer_chain),
            )],
            body: v3.pck_crl.clone(),
        },
        CollateralResponse {
            path: "/sgx/certification/v4/rootcacrl".into(),
            content_type: "text/plain",
            headers: Vec::new(),
            body: hex::encode(&v3.root_ca_crl).into_bytes(),
        },
    ]
}

impl EmulatedTdxPlatform {
    /// This platform's collateral (see [`Self::collateral`]) as PCS responses.
    pub fn pcs_responses(
        &self,
        opts: &CollateralOptions,
    ) -> Result<Vec<CollateralResponse>, EmulatedError> {
        let c = self.collateral(opts)?;
        Ok(pcs_responses_for(c.as_v3(), self.options.fmspc, "platform"))
    }
}
