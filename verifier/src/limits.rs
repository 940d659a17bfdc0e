//! The service's authentication and flood limits: plain settings, read from the
//! configuration (`crate::config`) and enforced by the service (`crate::service`). They
//! live apart from both so that `service` depends on `config`, never the reverse.

use std::time::Duration;

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
