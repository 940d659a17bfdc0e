//! The guest side of the KBS protocol: auth → attest → resource, with JWE decryption.

use kbs_types::{Attestation, CompositeEvidence, RuntimeData};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{check, ClientError};
use crate::crypto::jwe::TeeKeyPair;
use crate::protocol::{report_data, PROTOCOL_VERSION, SESSION_COOKIE};

/// A KBS client bound to one verifier URL.
#[derive(Debug, Clone)]
pub struct KbsClient {
    http: reqwest::Client,
    base: String,
}

/// An open session: its cookie value and challenge nonce.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// The `kbs-session-id` value.
    pub session: String,
    /// The nonce to bind.
    pub nonce: String,
}

/// Produces evidence binding 64 bytes of REPORT_DATA (an emulated or a real guest).
pub trait EvidenceSource: Send + Sync {
    /// `"snp"` or `"tdx"`.
    fn tee(&self) -> &'static str;
    /// The `primary_evidence` object for `report_data`.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Value, ClientError>;
}

impl KbsClient {
    /// A client of `base` (e.g. `https://verifier:8443`).
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// `POST /kbs/v0/auth`.
    pub async fn auth(&self, tee: &str, extra_params: Value) -> Result<Challenge, ClientError> {
        let resp = self
            .http
            .post(format!("{}/kbs/v0/auth", self.base))
            .json(&json!({"version": PROTOCOL_VERSION, "tee": tee, "extra-params": extra_params}))
            .send()
            .await
            .map_err(ClientError::Http)?;
        let resp = check(resp).await?;
        let session = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|c| c.split(';').next())
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == SESSION_COOKIE)
            .map(|(_, v)| v.to_owned())
            .ok_or(ClientError::Protocol("no kbs-session-id cookie"))?;
        let v: Value = resp.json().await.map_err(ClientError::Http)?;
        let nonce = v
            .get("nonce")
            .and_then(Value::as_str)
            .ok_or(ClientError::Protocol("no nonce"))?
            .to_owned();
        Ok(Challenge { session, nonce })
    }

    /// The attestation request for a challenge (exposed so tests can alter it).
    pub fn attestation(
        challenge: &Challenge,
        key: &TeeKeyPair,
        src: &dyn EvidenceSource,
    ) -> Result<Value, ClientError> {
        let runtime_data = RuntimeData {
            nonce: challenge.nonce.clone(),
            tee_pubkey: key.public_jwk(),
        };
        let rd = report_data(&runtime_data)
            .map_err(|_| ClientError::Protocol("cannot bind runtime data"))?;
        let att = Attestation {
            init_data: None,
            runtime_data,
            tee_evidence: CompositeEvidence {
                primary_evidence: src.evidence(&rd)?,
                additional_evidence: String::new(),
            },
        };
        serde_json::to_value(att).map_err(|_| ClientError::Protocol("cannot encode the request"))
    }

    /// `POST /kbs/v0/attest` with a prepared body; returns the token.
    pub async fn attest_raw(&self, session: &str, body: &Value) -> Result<String, ClientError> {
        let resp = self
            .http
            .post(format!("{}/kbs/v0/attest", self.base))
            .header(
                reqwest::header::COOKIE,
                format!("{SESSION_COOKIE}={session}"),
            )
            .json(body)
            .send()
            .await
            .map_err(ClientError::Http)?;
        let v: Value = check(resp).await?.json().await.map_err(ClientError::Http)?;
        v.get("token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(ClientError::Protocol("no token"))
    }

    /// `GET /kbs/v0/resource/{path}` with the token; returns the JWE JSON text.
    pub async fn resource_jwe(&self, token: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        let resp = self
            .http
            .get(format!("{}/kbs/v0/resource/{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .map_err(ClientError::Http)?;
        Ok(check(resp)
            .await?
            .bytes()
            .await
            .map_err(ClientError::Http)?
            .to_vec())
    }

    /// The whole flow: auth, attest with evidence from `src`, fetch `path`, decrypt.
    pub async fn fetch(
        &self,
        src: &dyn EvidenceSource,
        key: &TeeKeyPair,
        extra_params: Value,
        path: &str,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let ch = self.auth(src.tee(), extra_params).await?;
        let body = Self::attestation(&ch, key, src)?;
        let token = self.attest_raw(&ch.session, &body).await?;
        let jwe = self.resource_jwe(&token, path).await?;
        key.decrypt(&jwe).map_err(ClientError::Jwe)
    }
}
