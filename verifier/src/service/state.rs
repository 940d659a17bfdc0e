//! Shared state of the HTTP service and the request-body extractor.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::collateral::CollateralService;
use crate::crypto::master::MasterKey;
use crate::crypto::token::TokenSigner;
use crate::db::Db;
use crate::error::ApiError;
use crate::evidence::EvidenceVerifier;
use crate::metrics::Metrics;
use crate::ratelimit::{BlockingPool, FailureLimiter, RateLimiter, RefusalAggregator};

// The settings types live in `crate::limits` (shared with `crate::config` without a
// dependency cycle); `service::{AuthLimits, FloodLimits}` stay valid paths.
pub use crate::limits::{AuthLimits, FloodLimits};

/// Tunables of the service.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Lifetime of a challenge, and of an attested session and its token (seconds).
    pub session_ttl: i64,
    /// Lifetime of an attestation token (seconds); sessions live as long as their token.
    pub token_ttl: i64,
    /// Whether cookies get the `Secure` attribute (HTTPS).
    pub secure_cookies: bool,
    /// Body limit of `/kbs/v0/attest` (bytes).
    pub attest_body_limit: usize,
    /// Body limit of every other route (bytes).
    pub body_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            session_ttl: 300,
            token_ttl: 300,
            secure_cookies: true,
            attest_body_limit: 1 << 20,
            body_limit: 64 << 10,
        }
    }
}

/// Everything a handler needs.
pub struct Inner {
    /// The database.
    pub db: Db,
    /// The master key.
    pub master_key: MasterKey,
    /// The token signing key.
    pub signer: TokenSigner,
    /// Evidence verification.
    pub verifier: Arc<dyn EvidenceVerifier>,
    /// The collateral service the default verifier fetches through (None when the
    /// caller supplied its own verifier).
    pub collateral: Option<Arc<CollateralService>>,
    /// Whether emulated trust anchors are configured.
    pub emulated: bool,
    /// Metrics.
    pub metrics: Metrics,
    /// Failed admin authentications per client IP.
    pub ip_limiter: FailureLimiter,
    /// Failed admin authentications per user (token id).
    pub user_limiter: FailureLimiter,
    /// The threads that run argon2 verifications.
    pub argon2_pool: BlockingPool,
    /// Mean duration of recent argon2 verifications (nanoseconds), the delay applied to
    /// an unknown token id instead of running argon2.
    pub argon2_nanos: std::sync::atomic::AtomicU64,
    /// `/kbs/v0/auth` requests per client IP and in total.
    pub kbs_auth_limiter: RateLimiter,
    /// Challenged sessions created within one session TTL, per client IP and in total.
    pub session_budget: RateLimiter,
    /// KBS refusals per client (IP, or session for requests of an existing session).
    /// There is no global refusal limit: it would refuse every guest once one client
    /// flooded; a global flood only stops individual audit records (`refusal_audit`).
    pub kbs_refusal_limiter: FailureLimiter,
    /// Attest requests reading or verifying their body at once (`attest_concurrency`);
    /// a request that finds none free is refused at once (429).
    pub attest_permits: tokio::sync::Semaphore,
    /// Aggregation of refusal floods in the audit log.
    pub refusal_audit: RefusalAggregator,
    /// Connection, timeout, argon2, session and refusal limits.
    pub flood: FloodLimits,
    /// Tunables.
    pub limits: Limits,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("emulated", &self.emulated)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Cheaply clonable handle on [`Inner`].
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppState")
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// A JSON body whose every failure (too large, unreadable, malformed, wrong shape) is an
/// [`ApiError`], hence problem+json.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// Reads the body, mapping failures to problems.
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest("the request body cannot be read".into())
        }
    })
}

/// Parses JSON, mapping failures to a 400 problem.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        // serde's message can quote the input (an invalid value, an unknown field):
        // bounded and escaped, so neither the response nor the audit log echoes it.
        let (msg, _) = crate::store::audit::sanitize(&e.to_string(), 200);
        ApiError::BadRequest(format!(
            "the body is not valid JSON for this request: {msg}"
        ))
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The client address of a request, as an extractor (`-` when unknown).
#[derive(Debug, Clone)]
pub struct ClientIp(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(&parts.extensions)))
    }
}

/// The client address of a request (`-` when unknown).
pub fn client_ip(req_ext: &axum::http::Extensions) -> String {
    req_ext
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "-".into())
}
