//! Shared state of the HTTP service and the request-body extractor.

use std::sync::Arc;
use std::time::Duration;

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

/// Rate-limit settings.
#[derive(Debug, Clone, Copy)]
pub struct AuthLimits {
    /// Failures allowed per client IP within the window.
    pub per_ip: usize,
    /// Failures allowed per user within the window.
    pub per_user: usize,
    /// The window.
    pub window: Duration,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            per_ip: 20,
            per_user: 5,
            window: Duration::from_secs(300),
        }
    }
}

/// What an unauthenticated client can make the service spend (`[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct FloodLimits {
    /// Open connections in total.
    pub max_connections: usize,
    /// Open connections per client IP.
    pub max_connections_per_ip: usize,
    /// Time to receive a request head; also the keep-alive idle time between requests.
    pub header_read_timeout: Duration,
    /// Time to receive the body and answer one request.
    pub request_timeout: Duration,
    /// Time to complete a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Longest life of a connection (then graceful shutdown; closed `request_timeout`
    /// later at the latest, so a request begun just before still gets its full time).
    pub max_connection_lifetime: Duration,
    /// Attest requests reading or verifying their body at once.
    pub attest_concurrency: usize,
    /// Concurrent argon2 verifications.
    pub argon2_concurrency: usize,
    /// Requests waiting for an argon2 slot.
    pub argon2_queue: usize,
    /// `/kbs/v0/auth` requests per client IP per window.
    pub kbs_auth_per_ip: usize,
    /// `/kbs/v0/auth` requests in total per window.
    pub kbs_auth_global: usize,
    /// The `/kbs/v0/auth` window.
    pub kbs_auth_window: Duration,
    /// Challenged sessions per client IP created within one session TTL.
    pub open_sessions_per_ip: usize,
    /// Challenged sessions in total created within one session TTL.
    pub open_sessions: usize,
    /// KBS refusals per client IP (per session for requests of an existing session) per
    /// window before 429.
    pub kbs_refusals_per_ip: usize,
    /// Accepted for compatibility and ignored: a global refusal limit locked every guest
    /// out; global refusal floods are bounded in the audit log by
    /// `audit_refusals_global` instead.
    pub kbs_refusals_global: usize,
    /// The KBS refusal window.
    pub kbs_refusal_window: Duration,
    /// Refusals audited one by one per (client, reason) per window.
    pub audit_refusals_per_client: usize,
    /// Refusals audited one by one in total per window.
    pub audit_refusals_global: usize,
    /// The audit aggregation window (also the flush period).
    pub audit_refusal_window: Duration,
    /// Longest resource path accepted (bytes).
    pub max_resource_path: usize,
}

impl Default for FloodLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_ip: 256,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connection_lifetime: Duration::from_secs(60),
            attest_concurrency: 64,
            argon2_concurrency: 2,
            argon2_queue: 32,
            kbs_auth_per_ip: 3000,
            kbs_auth_global: 30_000,
            kbs_auth_window: Duration::from_secs(60),
            open_sessions_per_ip: 5000,
            open_sessions: 50_000,
            kbs_refusals_per_ip: 600,
            kbs_refusals_global: 20_000,
            kbs_refusal_window: Duration::from_secs(60),
            audit_refusals_per_client: 20,
            audit_refusals_global: 500,
            audit_refusal_window: Duration::from_secs(60),
            max_resource_path: 256,
        }
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
