//! Entry points for the fuzz targets in `fuzz/` (not a stable interface).
//!
//! Thin wrappers over the parsers that see unauthenticated input, in the order the
//! handlers call them, so the fuzzer reaches the private helpers without the public API
//! growing: the `/kbs/v0/auth` and `/kbs/v0/attest` bodies, the session cookie, the
//! bearer token's session, resource paths and the admin token format. Nothing here
//! touches a database or the network.

use axum::http::{header, HeaderMap, HeaderValue};
use kbs_types::Attestation;
use serde_json::Value;

use crate::crypto::jwe::TeeKey;
use crate::crypto::token::{self, TokenError};
use crate::error::ApiError;
use crate::protocol::{report_data_with, version_supported};
use crate::service::state::parse_json;
use crate::store::workloads::valid_segment;

/// What the `/kbs/v0/auth` handler learns from a body before it opens a session: the
/// TEE name and the workload hint. The same checks in the same order as
/// `service::kbs::auth`.
pub fn auth_request(body: &[u8]) -> Result<(&'static str, Option<String>), ApiError> {
    let req: kbs_types::Request = parse_json(body)?;
    if !version_supported(&req.version) {
        return Err(ApiError::BadRequest("unsupported version".into()));
    }
    let tee = match req.tee {
        kbs_types::Tee::Snp => "snp",
        kbs_types::Tee::Tdx => "tdx",
        _ => return Err(ApiError::BadRequest("unsupported TEE".into())),
    };
    let hint = match req.extra_params.get("workload") {
        None => None,
        Some(Value::String(w)) if valid_segment(w) => Some(w.clone()),
        Some(_) => return Err(ApiError::BadRequest("bad workload".into())),
    };
    Ok((tee, hint))
}

/// An `/kbs/v0/attest` body as the handler decodes it before verification.
#[derive(Debug)]
pub struct AttestBody {
    /// The nonce the guest echoes.
    pub nonce: String,
    /// The REPORT_DATA its evidence must carry.
    pub expected_report_data: [u8; 64],
    /// The `primary_evidence` JSON handed to the evidence verifier.
    pub evidence: Vec<u8>,
}

/// Decodes an `/kbs/v0/attest` body as `service::kbs::attest` does: the JSON, the TEE
/// key ([`TeeKey::from_jwk`]), the REPORT_DATA binding and the evidence bytes.
pub fn attest_request(body: &[u8]) -> Result<AttestBody, ApiError> {
    let attestation: Attestation = parse_json(body)?;
    TeeKey::from_jwk(&attestation.runtime_data.tee_pubkey)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let expected_report_data = report_data_with(
        &attestation.runtime_data,
        &attestation.tee_evidence.additional_evidence,
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let evidence = serde_json::to_vec(&attestation.tee_evidence.primary_evidence)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(AttestBody {
        nonce: attestation.runtime_data.nonce,
        expected_report_data,
        evidence,
    })
}

/// The session id of a request whose `Cookie` headers are `values` (raw bytes, as on
/// the wire; values `http` refuses are dropped as hyper would refuse the request).
pub fn cookie_session(values: &[&[u8]]) -> Result<Option<String>, ApiError> {
    let mut headers = HeaderMap::new();
    for v in values {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append(header::COOKIE, v);
        }
    }
    crate::service::kbs::cookie_session(&headers)
}

/// The session a bearer token names, unverified ([`token::unverified_session`]).
pub fn unverified_session(token: &str) -> Result<String, TokenError> {
    token::unverified_session(token)
}

/// The resource path of an admin `PUT`/`DELETE /admin/v1/resources/{repo}/{type}/{tag}`.
pub fn resource_path(repo: &str, kind: &str, tag: &str) -> Result<String, ApiError> {
    crate::service::admin::resource_path(repo, kind, tag)
}

/// The (id, secret) of an admin API token ([`crate::store::users::split_token`]).
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    crate::store::users::split_token(token)
}
