//! The one place that maps errors to HTTP status codes and RFC 7807 problem documents.
//!
//! Handlers return [`ApiError`]; its `IntoResponse` picks the status and writes
//! `application/problem+json` with `type`, `title`, `status` and `detail` (plus `kind`
//! and `check` for attestation refusals). Internal errors are logged with their cause
//! chain on the server and answered with a generic detail: no cause chain leaves the
//! process.

use attestation::ErrorKind;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Errors answered to HTTP clients.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (JSON, evidence, JWK, cookie, path).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or invalid credentials, session or token.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed (role, grant, revocation).
    #[error("{0}")]
    Forbidden(String),
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than allowed.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// Too many failed attempts from this client or for this user.
    #[error("too many failed authentication attempts; try again later")]
    TooManyRequests,
    /// The evidence was verified and refused (or could not be verified).
    #[error("{message}")]
    AttestationRefused {
        /// The category.
        kind: ErrorKind,
        /// The failed check.
        check: Option<String>,
        /// The reason.
        message: String,
    },
    /// A server-side failure; the cause is logged, not sent.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// Wraps a server-side error.
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(e))
    }

    /// The status code of each variant — the single mapping.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ApiError::AttestationRefused { kind, .. } => match kind {
                ErrorKind::Malformed => StatusCode::BAD_REQUEST,
                ErrorKind::CollateralUnavailable => StatusCode::UNPROCESSABLE_ENTITY,
                ErrorKind::BadSignature | ErrorKind::UntrustedChain | ErrorKind::PolicyNotMet => {
                    StatusCode::UNAUTHORIZED
                }
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable problem type slug.
    pub fn slug(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad-request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge => "payload-too-large",
            ApiError::TooManyRequests => "too-many-requests",
            ApiError::AttestationRefused { .. } => "attestation-refused",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// The problem type URI prefix.
pub const PROBLEM_BASE: &str = "urn:cvm-verifier:problem:";

/// The longest `detail` of a problem document, in bytes (longer ones are cut).
pub const MAX_DETAIL: usize = 512;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(e) = &self {
            let mut chain = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                src = s.source();
            }
            tracing::error!(error = %chain, "internal error");
        }
        let mut extra = serde_json::Map::new();
        if let ApiError::AttestationRefused { kind, check, .. } = &self {
            extra.insert("kind".into(), json!(kind.as_str()));
            if let Some(c) = check {
                extra.insert("check".into(), json!(c));
            }
        }
        // Messages can carry request input (a path, a field): bounded and escaped.
        let (detail, _) = crate::store::audit::sanitize(&self.to_string(), MAX_DETAIL);
        problem(status, self.slug(), &detail, extra)
    }
}

/// A problem+json response.
pub fn problem(
    status: StatusCode,
    slug: &str,
    detail: &str,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Response {
    let mut body = json!({
        "type": format!("{PROBLEM_BASE}{slug}"),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(obj) = body.as_object_mut() {
        obj.extend(extra);
    }
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        ApiError::internal(e)
    }
}

/// Turns axum's rejections (bodies too large, bad paths) into problems, so every error
/// response of the service is problem+json.
pub async fn problem_for_rejections(resp: Response) -> Response {
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge.into_response(),
        StatusCode::NOT_FOUND => ApiError::NotFound("no such route".into()).into_response(),
        StatusCode::METHOD_NOT_ALLOWED => problem(
            status,
            "method-not-allowed",
            "method not allowed on this route",
            Default::default(),
        ),
        s if s.is_client_error() => problem(
            s,
            "bad-request",
            "the request is malformed",
            Default::default(),
        ),
        _ => resp,
    }
}
