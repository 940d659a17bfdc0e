//! `cvm-verifier serve`: runs the attestation service.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{ConfigFile, Overrides};
use crate::service;

use super::output::{fail, init_logging, server_runtime};

/// Options of `serve`; each also reads an environment variable, and falls back to the
/// configuration file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML configuration file (see cvm-verifier.sample.toml).
    #[arg(long, env = "CVM_VERIFIER_CONFIG")]
    pub config: Option<PathBuf>,
    /// ADDR:PORT to listen on.
    #[arg(long, env = "CVM_VERIFIER_LISTEN")]
    pub listen: Option<String>,
    /// SQLite file path, sqlite: URL, or postgres:// URL.
    #[arg(long, env = "CVM_VERIFIER_DATABASE")]
    pub database: Option<String>,
    /// File with the 32-byte master key (mode 0600).
    #[arg(long, env = "CVM_VERIFIER_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// KMS-style command that prints the master key (64 hex digits) on stdout.
    #[arg(long, env = "CVM_VERIFIER_MASTER_KEY_COMMAND")]
    pub master_key_command: Option<String>,
    /// An older or newer master key (0600 file) accepted for opening sealed values but
    /// never for sealing, for rotating the master key without downtime (repeatable).
    #[arg(
        long,
        value_name = "FILE",
        env = "CVM_VERIFIER_EXTRA_MASTER_KEY_FILES",
        value_delimiter = ','
    )]
    pub extra_master_key_file: Vec<PathBuf>,
    /// HTTPS certificate chain (PEM).
    #[arg(long, env = "CVM_VERIFIER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// HTTPS private key (PEM).
    #[arg(long, env = "CVM_VERIFIER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP (loopback addresses only).
    #[arg(long, env = "CVM_VERIFIER_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// Trust the emulated platform in DIR (INSECURE; repeatable).
    #[arg(
        long,
        value_name = "DIR",
        env = "CVM_VERIFIER_EMULATED_TRUST",
        value_delimiter = ','
    )]
    pub emulated_trust: Vec<PathBuf>,
    /// Challenge lifetime in seconds (default 300).
    #[arg(long, env = "CVM_VERIFIER_SESSION_TTL")]
    pub session_ttl: Option<i64>,
    /// AMD KDS base URL for VCEKs, ASK/ARK chains and CRLs (default
    /// `https://kdsintf.amd.com`).
    #[arg(long, value_name = "URL", env = "CVM_VERIFIER_AMD_KDS_URL")]
    pub amd_kds_url: Option<String>,
    /// Intel PCS or PCCS base URL for TDX collateral (default
    /// `https://api.trustedservices.intel.com`).
    #[arg(long, value_name = "URL", env = "CVM_VERIFIER_INTEL_PCS_URL")]
    pub intel_pcs_url: Option<String>,
    /// HTTP(S) proxy for collateral fetches.
    #[arg(long, value_name = "URL", env = "CVM_VERIFIER_COLLATERAL_PROXY")]
    pub collateral_proxy: Option<String>,
    /// Never fetch collateral: use only imported (`collateral import`) or cached items.
    #[arg(long, env = "CVM_VERIFIER_COLLATERAL_OFFLINE")]
    pub collateral_offline: bool,
}

/// Runs `serve`. Exit 0 after a graceful shutdown; 2 on configuration or start errors.
pub fn run(args: Args) -> ExitCode {
    init_logging();
    let file = match &args.config {
        Some(p) => match ConfigFile::load(p) {
            Ok(f) => f,
            Err(e) => return fail(&e, 2),
        },
        None => ConfigFile::default(),
    };
    let overrides = Overrides {
        listen: args.listen,
        database: args.database,
        master_key_file: args.master_key_file,
        master_key_command: args.master_key_command,
        extra_master_key_files: args.extra_master_key_file,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        insecure_http: args.insecure_http,
        emulated_trust: args.emulated_trust,
        session_ttl: args.session_ttl,
        amd_kds_url: args.amd_kds_url,
        intel_pcs_url: args.intel_pcs_url,
        collateral_proxy: args.collateral_proxy,
        collateral_offline: args.collateral_offline,
    };
    let cfg = match file.resolve(overrides) {
        Ok(c) => c,
        Err(e) => return fail(&e, 2),
    };
    let rt = match server_runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 2),
    };
    let result = rt.block_on(service::serve(cfg, |addr, tls| {
        let scheme = if tls { "https" } else { "http" };
        let mut out = std::io::stdout();
        let _ = writeln!(out, "cvm-verifier listening on {scheme}://{addr}");
        let _ = out.flush();
        tracing::info!(%addr, scheme, "listening");
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, 2),
    }
}
