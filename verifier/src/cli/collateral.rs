//! `cvm-verifier collateral export|import|status`: the collateral cache, directly on the
//! database (see [`crate::collateral`]).

use std::path::PathBuf;
use std::process::ExitCode;

use attestation::snp::Product;

use crate::collateral::{bundle, Anchors};
use crate::collateral::{list_items, CollateralConfig, CollateralService, ItemKey, PckCa};
use crate::db::{now, Db};
use crate::util::rfc3339;

use super::output::{fail, runtime, Format};

/// `collateral` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write a bundle of collateral (cached, plus what `--product`/`--fmspc` fetch) for
    /// an offline verifier.
    Export(ExportArgs),
    /// Load a bundle written by `export` into the cache.
    Import(ImportArgs),
    /// List the cached items and when they expire.
    Status(StatusArgs),
}

/// Options of `collateral export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Database path or URL (its cache is exported, and fetched items are cached in it).
    #[arg(long, env = "CVM_VERIFIER_DATABASE")]
    pub database: String,
    /// The bundle file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Fetch the ASK/ARK chain and CRL of this product (Milan, Genoa, Turin; repeatable).
    #[arg(long, value_name = "PRODUCT")]
    pub product: Vec<String>,
    /// Fetch TDX TCB info for this FMSPC (12 hex digits; repeatable), with the QE
    /// identity, the PCK CRLs and the root CA CRL.
    #[arg(long, value_name = "HEX")]
    pub fmspc: Vec<String>,
    /// AMD KDS base URL.
    #[arg(long, value_name = "URL", env = "CVM_VERIFIER_AMD_KDS_URL")]
    pub amd_kds_url: Option<String>,
    /// Intel PCS or PCCS base URL.
    #[arg(long, value_name = "URL", env = "CVM_VERIFIER_INTEL_PCS_URL")]
    pub intel_pcs_url: Option<String>,
    /// HTTP(S) proxy.
    #[arg(long, value_name = "URL", env = "CVM_VERIFIER_COLLATERAL_PROXY")]
    pub proxy: Option<String>,
    /// Also accept items issued under an emulated platform's roots (`DIR/snp/trust-anchor.pem`,
    /// `DIR/tdx/root_ca.pem`), as `serve --emulated-trust`: for test and CI verifiers only.
    #[arg(
        long,
        value_name = "DIR",
        env = "CVM_VERIFIER_EMULATED_TRUST",
        value_delimiter = ','
    )]
    pub emulated_trust: Vec<PathBuf>,
}

/// Options of `collateral import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Database path or URL.
    #[arg(long, env = "CVM_VERIFIER_DATABASE")]
    pub database: String,
    /// The bundle written by `collateral export`.
    pub file: PathBuf,
    /// Also accept items issued under an emulated platform's roots (`DIR/snp/trust-anchor.pem`,
    /// `DIR/tdx/root_ca.pem`), as `serve --emulated-trust`: for test and CI verifiers only.
    #[arg(
        long,
        value_name = "DIR",
        env = "CVM_VERIFIER_EMULATED_TRUST",
        value_delimiter = ','
    )]
    pub emulated_trust: Vec<PathBuf>,
}

/// Options of `collateral status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Database path or URL.
    #[arg(long, env = "CVM_VERIFIER_DATABASE")]
    pub database: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Format,
}

/// Errors of the subcommands beyond the library's.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("`{0}` is not a product (Milan, Genoa or Turin)")]
    Product(String),
    #[error("`{0}` is not an FMSPC (12 hex digits)")]
    Fmspc(String),
    #[error("cannot write {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
}

/// Runs a `collateral` subcommand.
pub fn run(cmd: Command) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 2),
    };
    rt.block_on(async move {
        match cmd {
            Command::Export(a) => export(a).await,
            Command::Import(a) => import(a).await,
            Command::Status(a) => status(a).await,
        }
    })
}

async fn export(a: ExportArgs) -> ExitCode {
    let mut keys = Vec::new();
    for p in &a.product {
        let Some(product) = Product::from_name(p) else {
            return fail(&CliError::Product(p.clone()), 2);
        };
        keys.push(ItemKey::AmdCertChain(product));
        keys.push(ItemKey::AmdCrl(product));
    }
    for f in &a.fmspc {
        let Some(fmspc) = hex::decode(f)
            .ok()
            .and_then(|v| <[u8; 6]>::try_from(v).ok())
        else {
            return fail(&CliError::Fmspc(f.clone()), 2);
        };
        keys.push(ItemKey::TdxTcbInfo(fmspc));
    }
    if !a.fmspc.is_empty() {
        keys.extend([
            ItemKey::TdxQeIdentity,
            ItemKey::PckCrl(PckCa::Processor),
            ItemKey::PckCrl(PckCa::Platform),
            ItemKey::RootCaCrl,
        ]);
    }
    let db = match Db::open(&a.database).await {
        Ok(db) => db,
        Err(e) => return fail(&e, 2),
    };
    if !keys.is_empty() {
        let d = CollateralConfig::default();
        let cfg = CollateralConfig {
            amd_kds_url: a.amd_kds_url.unwrap_or(d.amd_kds_url),
            intel_pcs_url: a.intel_pcs_url.unwrap_or(d.intel_pcs_url),
            proxy: a.proxy,
            ..d
        };
        let service = match anchors(&a.emulated_trust)
            .and_then(|an| Ok(CollateralService::new(cfg, db.clone())?.with_anchors(an)))
        {
            Ok(s) => s,
            Err(e) => return fail(&e, 2),
        };
        for k in &keys {
            match service.get(k, now()).await {
                Ok(_) => eprintln!("fetched {k}"),
                // A product's KDS may publish no CRL; a PCS has one CA's CRL per platform.
                Err(e @ crate::collateral::CollateralError::NotFound { .. })
                    if matches!(k, ItemKey::AmdCrl(_) | ItemKey::PckCrl(_)) =>
                {
                    eprintln!("skipped {k}: {e}");
                }
                Err(e) => return fail(&e, 1),
            }
        }
    }
    let b = match bundle::export_cached(&db).await {
        Ok(b) => b,
        Err(e) => return fail(&e, 2),
    };
    let json = match serde_json::to_vec_pretty(&b) {
        Ok(j) => j,
        Err(e) => return fail(&e, 2),
    };
    if let Err(e) = std::fs::write(&a.out, json) {
        return fail(&CliError::Write(a.out, e), 2);
    }
    println!("wrote {} items to {}", b.items.len(), a.out.display());
    ExitCode::SUCCESS
}

/// The genuine roots, plus the emulated platforms' with `--emulated-trust`.
fn anchors(emulated_trust: &[PathBuf]) -> Result<Anchors, crate::collateral::CollateralError> {
    if emulated_trust.is_empty() {
        Anchors::genuine()
    } else {
        Anchors::with_emulated(emulated_trust)
    }
}

async fn import(a: ImportArgs) -> ExitCode {
    let json = match std::fs::read(&a.file) {
        Ok(j) => j,
        Err(e) => return fail(&CliError::Read(a.file, e), 2),
    };
    let db = match Db::open(&a.database).await {
        Ok(db) => db,
        Err(e) => return fail(&e, 2),
    };
    let anchors = match anchors(&a.emulated_trust) {
        Ok(anchors) => anchors,
        Err(e) => return fail(&e, 2),
    };
    match bundle::import_with(&db, &json, &anchors).await {
        Ok(n) => {
            println!("imported {n} items");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, 1),
    }
}

async fn status(a: StatusArgs) -> ExitCode {
    let db = match Db::connect_existing(&a.database).await {
        Ok(db) => db,
        Err(e) => return fail(&e, 2),
    };
    let items = match list_items(&db).await {
        Ok(i) => i,
        Err(e) => return fail(&e, 2),
    };
    let t = now();
    match a.output {
        Format::Json => {
            let list: Vec<_> = items
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "key": i.key,
                        "url": i.url,
                        "fetched_at": rfc3339(i.fetched_at),
                        "expires_at": rfc3339(i.expires_at),
                        "valid": i.expires_at >= t,
                    })
                })
                .collect();
            println!("{}", serde_json::json!({ "items": list }));
        }
        Format::Text => {
            println!(
                "{:<60}  {:<20}  {:<20}  state",
                "item", "fetched", "expires"
            );
            for i in &items {
                let state = if i.expires_at >= t {
                    "valid"
                } else {
                    "EXPIRED"
                };
                println!(
                    "{:<60}  {:<20}  {:<20}  {state}",
                    i.key,
                    rfc3339(i.fetched_at),
                    rfc3339(i.expires_at)
                );
            }
        }
    }
    ExitCode::SUCCESS
}
