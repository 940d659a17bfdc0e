//! Prometheus metrics (OpenMetrics text at `/metrics`).
//!
//! | metric | labels |
//! |---|---|
//! | `cvm_attestations_total` | `tee`, `outcome` (`accepted`, `refused`) |
//! | `cvm_key_releases_total` | `outcome` (`released`, `refused`) |
//! | `cvm_refusals_total` | `reason` (error kind or check: `malformed`, `report-data`, `replay`, …) |
//! | `cvm_attestation_duration_seconds` | `tee` (histogram, verification + policy + commit) |
//! | `cvm_admin_auth_failures_total` | none |

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
        Self {
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

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
