//! `cvm-verifier loadgen`: a load generator that runs complete guest flows (auth, attest
//! with emulated evidence, resource fetch, JWE decryption) against a verifier, and
//! reports throughput and latency percentiles as JSON.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::client::emulated::{SnpGuest, TdxGuest};
use crate::client::kbs::{EvidenceSource, KbsClient};
use crate::client::{http_client, ClientError};
use crate::crypto::jwe::TeeKeyPair;

use super::output::{fail, print_value, runtime, Format};

/// Options of `loadgen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Verifier base URL (old names: --verifier, --kbs).
    #[arg(
        long,
        env = "CVM_VERIFIER_URL",
        visible_alias = "verifier",
        alias = "kbs"
    )]
    pub url: String,
    /// Extra CA certificate (PEM) to trust for HTTPS (old names: --verifier-ca,
    /// --kbs-ca).
    #[arg(long, alias = "verifier-ca", alias = "kbs-ca")]
    pub ca_cert: Option<PathBuf>,
    /// Emulated platform directory (with private keys) producing the evidence.
    #[arg(long)]
    pub emulated: PathBuf,
    /// TEE: snp or tdx.
    #[arg(long, default_value = "snp")]
    pub tee: String,
    /// Launch measurement (48 bytes hex) of the emulated guests.
    #[arg(long)]
    pub measurement: String,
    /// Resource to fetch after attesting (repo/type/tag).
    #[arg(long)]
    pub resource: String,
    /// Workload name to send in extra-params (optional).
    #[arg(long)]
    pub workload: Option<String>,
    /// Concurrent guests.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Total flows.
    #[arg(long, default_value_t = 100)]
    pub requests: usize,
    /// Output format of the report.
    #[arg(long, value_enum, default_value = "json")]
    pub output: Format,
}

/// Runs `loadgen`. Exit 0: every flow succeeded; 1: some failed; 2: setup error.
pub fn run(args: Args) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 2),
    };
    match rt.block_on(generate(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => fail(&e, 2),
    }
}

async fn generate(args: Args) -> Result<bool, ClientError> {
    let mut m = [0u8; 48];
    hex::decode_to_slice(args.measurement.trim(), &mut m)
        .map_err(|_| ClientError::Protocol("--measurement must be 48 bytes of hex"))?;
    let src: Arc<dyn EvidenceSource> = match args.tee.as_str() {
        "snp" => Arc::new(SnpGuest::open(&args.emulated, m)?),
        "tdx" => Arc::new(TdxGuest::open(&args.emulated, m)?),
        _ => return Err(ClientError::Protocol("--tee must be snp or tdx")),
    };
    let client = KbsClient::new(http_client(args.ca_cert.as_deref())?, &args.url);
    let extra = match &args.workload {
        Some(w) => json!({"workload": w}),
        None => json!({}),
    };
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, src, extra, next, resource) = (
            client.clone(),
            src.clone(),
            extra.clone(),
            next.clone(),
            args.resource.clone(),
        );
        let total = args.requests;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let key = TeeKeyPair::p256();
                let t = Instant::now();
                match client
                    .fetch(src.as_ref(), &key, extra.clone(), &resource)
                    .await
                {
                    Ok(_) => lat.push(t.elapsed().as_secs_f64()),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors.extend(e);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat.get(i).copied().unwrap_or(0.0)
    };
    errors.sort();
    errors.dedup();
    let summary = json!({
        "flows": lat.len() + errors.len(),
        "ok": lat.len(),
        "failed": args.requests.saturating_sub(lat.len()),
        "wall_seconds": wall,
        "flows_per_second": if wall > 0.0 { lat.len() as f64 / wall } else { 0.0 },
        "latency_seconds": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": lat.last().copied().unwrap_or(0.0)},
        "distinct_errors": errors,
    });
    print_value(summary, args.output);
    Ok(lat.len() == args.requests)
}
