//! Prometheus metrics (OpenMetrics text at `/metrics`).
//!
//! | metric | labels |
//! |---|---|
//! | `cvm_attestations_total` | `tee`, `outcome` (`accepted`, `refused`) |
//! | `cvm_key_releases_total` | `outcome` (`released`, `refused`) |
//! | `cvm_refusals_total` | `reason` (error kind or check: `malformed`, `report-data`, `replay`, …) |
//! | `cvm_attestation_duration_seconds` | `tee` (histogram, verification + policy + commit) |
//! | `cvm_admin_auth_failures_total` | none |
//! | `cvm_admin_auth_checks_total` | `check` (`argon2`, `totp`: credential checks actually run) |
//! | `cvm_rate_limited_total` | `limit` (`auth-ip`, `auth-user`, `argon2-queue`, `kbs-auth`, `open-sessions`, `kbs-refusals`) |
//! | `cvm_connections_refused_total` | `reason` (`per-ip`, `global`, `tls-handshake`) |
//! | `cvm_audit_refusals_suppressed_total` | none (refusals counted into summary records) |
//! | `cvm_collateral_fetch_refusals_total` | `scope` (`client`, `global`: evidence-driven KDS/PCS fetches refused by a budget) |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeeOutcome {
    tee: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Check {
    check: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Limit {
    limit: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeeLabel {
    tee: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}

/// The service's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    attestations: Family<TeeOutcome, Counter>,
    releases: Family<Outcome, Counter>,
    refusals: Family<Reason, Counter>,
    latency: Family<TeeLabel, Histogram, fn() -> Histogram>,
    auth_failures: Counter,
    auth_checks: Family<Check, Counter>,
    rate_limited: Family<Limit, Counter>,
    connections_refused: Family<Reason, Counter>,
    audit_suppressed: Counter,
    collateral_refusals: Family<ScopeLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let attestations = Family::<TeeOutcome, Counter>::default();
        let releases = Family::<Outcome, Counter>::default();
        let refusals = Family::<Reason, Counter>::default();
        let latency = Family::<TeeLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let auth_failures = Counter::default();
        registry.register(
            "cvm_attestations",
            "Attestations by TEE and outcome",
            attestations.clone(),
        );
        registry.register(
            "cvm_key_releases",
            "Resource releases by outcome",
            releases.clone(),
        );
        registry.register("cvm_refusals", "Refusals by reason", refusals.clone());
        registry.register(
            "cvm_attestation_duration_seconds",
            "Time to verify evidence, evaluate policy and commit",
            latency.clone(),
        );
        registry.register(
            "cvm_admin_auth_failures",
            "Failed admin authentications",
            auth_failures.clone(),
        );
        let auth_checks = Family::<Check, Counter>::default();
        let rate_limited = Family::<Limit, Counter>::default();
        let connections_refused = Family::<Reason, Counter>::default();
        let audit_suppressed = Counter::default();
        registry.register(
            "cvm_admin_auth_checks",
            "Admin credential checks run (argon2, totp)",
            auth_checks.clone(),
        );
        registry.register(
            "cvm_rate_limited",
            "Requests refused by a rate or cost limit",
            rate_limited.clone(),
        );
        registry.register(
            "cvm_connections_refused",
            "Connections closed by a connection cap or timeout",
            connections_refused.clone(),
        );
        registry.register(
            "cvm_audit_refusals_suppressed",
            "Refusals counted into summary audit records instead of one record each",
            audit_suppressed.clone(),
        );
        let collateral_refusals = Family::<ScopeLabel, Counter>::default();
        registry.register(
            "cvm_collateral_fetch_refusals",
            "Evidence-driven collateral fetches refused by the per-client or global budget",
            collateral_refusals.clone(),
        );
        Self {
            collateral_refusals,
            auth_checks,
            rate_limited,
            connections_refused,
            audit_suppressed,
            registry,
            attestations,
            releases,
            refusals,
            latency,
            auth_failures,
        }
    }

    /// Counts an attestation.
    pub fn attestation(&self, tee: &str, accepted: bool, seconds: f64) {
        let outcome = if accepted { "accepted" } else { "refused" };
        self.attestations
            .get_or_create(&TeeOutcome {
                tee: tee.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.latency
            .get_or_create(&TeeLabel { tee: tee.into() })
            .observe(seconds);
    }

    /// A hook counting collateral fetches refused by budget `scope` (for
    /// [`crate::collateral::CollateralService::with_refusal_hook`]).
    pub fn collateral_refusal_hook(&self) -> crate::collateral::RefusalHook {
        let family = self.collateral_refusals.clone();
        std::sync::Arc::new(move |scope: &'static str| {
            family
                .get_or_create(&ScopeLabel {
                    scope: scope.into(),
                })
                .inc();
        })
    }

    /// Counts a resource request outcome.
    pub fn release(&self, released: bool) {
        let outcome = if released { "released" } else { "refused" };
        self.releases
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts a refusal by reason.
    pub fn refusal(&self, reason: &str) {
        self.refusals
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a failed admin authentication.
    pub fn auth_failure(&self) {
        self.auth_failures.inc();
    }

    /// Counts a credential check actually run (`argon2`, `totp`).
    pub fn auth_check(&self, check: &str) {
        self.auth_checks
            .get_or_create(&Check {
                check: check.into(),
            })
            .inc();
    }

    /// Counts a request refused by limit `limit`.
    pub fn rate_limited(&self, limit: &str) {
        self.rate_limited
            .get_or_create(&Limit {
                limit: limit.into(),
            })
            .inc();
    }

    /// Counts a connection closed by a cap or timeout.
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a refusal not written as its own audit record.
    pub fn audit_suppressed(&self) {
        self.audit_suppressed.inc();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
