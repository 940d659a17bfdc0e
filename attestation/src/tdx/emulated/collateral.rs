//! Emulated DCAP collateral: TCB info for TDX (with `tdxtcbcomponents`, a TDX module
//! identity and two TCB levels) and the TD QE identity, each signed by the emulated TCB
//! signing certificate like Intel's, plus the root CA CRL and the PCK CRL.

use serde_json::json;
use time::format_description::well_known::Rfc3339;

use super::pki;
use super::{EmulatedError, EmulatedTdxPlatform};
use crate::tdx::collateral::{Collateral, QuoteCollateralV3};

/// Advisory id attached to the emulated out-of-date TCB level.
pub const EMULATED_ADVISORY: &str = "EMULATED-SA-00001";

/// Validity of generated collateral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollateralOptions {
    /// Start of validity (issue date, CRL thisUpdate).
    pub valid_from: time::OffsetDateTime,
    /// End of validity (nextUpdate).
    pub valid_until: time::OffsetDateTime,
    /// List the PCK certificate on the PCK CRL.
    pub revoke_pck: bool,
    /// Publish a TCB info in which a newer TDX module microcode SVN exists, so this
    /// platform's TCB is `OutOfDate` (with advisory [`EMULATED_ADVISORY`]).
    pub platform_out_of_date: bool,
}

impl CollateralOptions {
    /// Valid from `now - 1 day` to `now + days`.
    pub fn around(now: time::OffsetDateTime, days: i64) -> Self {
        Self {
            valid_from: now - time::Duration::days(1),
            valid_until: now + time::Duration::days(days),
            revoke_pck: false,
            platform_out_of_date: false,
        }
    }
}

impl CollateralOptions {
    /// Valid from `now - 1 day` to `now + days`, `now` being the current time.
    pub fn from_now(days: i64) -> Self {
        Self::around(time::OffsetDateTime::now_utc(), days)
    }
}

impl Default for CollateralOptions {
    /// Valid from now - 1 day to now + 30 days.
    fn default() -> Self {
        Self::around(time::OffsetDateTime::now_utc(), 30)
    }
}

fn rfc3339(t: time::OffsetDateTime) -> Result<String, EmulatedError> {
    t.replace_nanosecond(0)
        .map_err(|_| EmulatedError::Time)?
        .to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .map_err(|_| EmulatedError::Time)
}

fn components(svns: &[u8; 16]) -> Vec<serde_json::Value> {
    svns.iter().map(|s| json!({ "svn": s })).collect()
}

impl EmulatedTdxPlatform {
    /// The TCB info JSON (the text that is signed).
    pub fn tcb_info_json(&self, opts: &CollateralOptions) -> Result<String, EmulatedError> {
        let o = &self.options;
        // Two levels: the latest (UpToDate) and one with the SEAM late microcode SVN one
        // lower (OutOfDate). The platform is at the latest level, or, with
        // `platform_out_of_date`, at the older one.
        let (latest, older) = if opts.platform_out_of_date {
            let mut latest = o.module.tee_tcb_svn;
            latest[2] = latest[2].saturating_add(1);
            (latest, o.module.tee_tcb_svn)
        } else {
            let mut older = o.module.tee_tcb_svn;
            older[2] = older[2].saturating_sub(1);
            (o.module.tee_tcb_svn, older)
        };
        let tee = latest;
        let tcb_date = rfc3339(self.created)?;
        let zero_signer = hex::encode_upper(o.module.mr_signer_seam);
        let attrs = hex::encode_upper(o.module.seam_attributes);
        let v = json!({
            "id": "TDX",
            "version": 3,
            "issueDate": rfc3339(opts.valid_from)?,
            "nextUpdate": rfc3339(opts.valid_until)?,
            "fmspc": hex::encode_upper(o.fmspc),
            "pceId": hex::encode_upper(o.pce_id),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tdxModule": { "mrsigner": zero_signer, "attributes": attrs, "attributesMask": "FFFFFFFFFFFFFFFF" },
            "tdxModuleIdentities": [{
                "id": format!("TDX_{:02X}", tee[1]),
                "mrsigner": zero_signer,
                "attributes": attrs,
                "attributesMask": "FFFFFFFFFFFFFFFF",
                "tcbLevels": [{ "tcb": { "isvsvn": tee[0] }, "tcbDate": tcb_date, "tcbStatus": "UpToDate" }]
            }],
            "tcbLevels": [
                {
                    "tcb": { "sgxtcbcomponents": components(&o.cpu_svn), "pcesvn": o.pce_svn, "tdxtcbcomponents": components(&tee) },
                    "tcbDate": tcb_date,
                    "tcbStatus": "UpToDate"
                },
                {
                    "tcb": { "sgxtcbcomponents": components(&o.cpu_svn), "pcesvn": o.pce_svn, "tdxtcbcomponents": components(&older) },
                    "tcbDate": tcb_date,
                    "tcbStatus": "OutOfDate",
                    "advisoryIDs": [EMULATED_ADVISORY]
                }
            ]
        });
        Ok(v.to_string())
    }

    /// The TD QE identity JSON (the text that is signed).
    pub fn qe_identity_json(&self, opts: &CollateralOptions) -> Result<String, EmulatedError> {
        let qe = &self.options.qe;
        let v = json!({
            "id": "TD_QE",
            "version": 2,
            "issueDate": rfc3339(opts.valid_from)?,
            "nextUpdate": rfc3339(opts.valid_until)?,
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": hex::encode_upper(qe.mr_signer),
            "isvprodid": qe.isv_prod_id,
            "tcbLevels": [{ "tcb": { "isvsvn": qe.isv_svn }, "tcbDate": rfc3339(self.created)?, "tcbStatus": "UpToDate" }]
        });
        Ok(v.to_string())
    }

    /// Complete collateral for this platform's quotes, signed by the emulated hierarchy.
    pub fn collateral(&self, opts: &CollateralOptions) -> Result<Collateral, EmulatedError> {
        let tcb_info = self.tcb_info_json(opts)?;
        let qe_identity = self.qe_identity_json(opts)?;
        let root_pem = self.root.cert_pem()?;
        let tcb_chain = format!("{}{}", self.tcb_signing.cert_pem()?, root_pem);
        let revoked = if opts.revoke_pck {
            vec![self.pck.cert.tbs_certificate.serial_number.clone()]
        } else {
            Vec::new()
        };
        let v3 = QuoteCollateralV3 {
            pck_crl_issuer_chain: format!("{}{}", self.platform_ca.cert_pem()?, root_pem),
            root_ca_crl: pki::crl(&self.root, &[], 1, opts.valid_from, opts.valid_until)?,
            pck_crl: pki::crl(
                &self.platform_ca,
                &revoked,
                1,
                opts.valid_from,
                opts.valid_until,
            )?,
            tcb_info_issuer_chain: tcb_chain.clone(),
            tcb_info_signature: pki::sign_raw(&self.tcb_signing.key, tcb_info.as_bytes()).to_vec(),
            tcb_info,
            qe_identity_issuer_chain: tcb_chain,
            qe_identity_signature: pki::sign_raw(&self.tcb_signing.key, qe_identity.as_bytes())
                .to_vec(),
            qe_identity,
            pck_certificate_chain: None,
        };
        Ok(Collateral::from_v3(v3)?)
    }
}
