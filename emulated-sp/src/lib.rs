//! `cvm emulated`: create an emulated TEE platform and produce evidence offline.
//!
//! Emulated TEEs are test equipment: their evidence proves nothing about memory
//! encryption, and a verifier accepts it only with the emulated trust anchor configured.

pub mod collateral;
pub mod serve;
pub mod snp;
pub mod tdx;

use std::path::PathBuf;
use std::process::ExitCode;

/// `cvm emulated` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create an emulated platform (SNP and TDX keys, certificates and trust anchors).
    Init(InitArgs),
    /// Produce an emulated SEV-SNP attestation report.
    #[command(subcommand)]
    Report(ReportCmd),
    /// Produce an emulated TDX quote and its collateral.
    #[command(subcommand)]
    Quote(QuoteCmd),
    /// Serve the emulated secure processor's evidence command protocol on a Unix socket (for `cvm-agent
    /// --evidence emulated-unix:PATH` as a host process). Insecure-emulated.
    Serve(Box<serve::ServeArgs>),
    /// Serve the platform's collateral over the AMD KDS and Intel PCS paths on loopback
    /// (for `cvm-verifier serve --amd-kds-url/--intel-pcs-url`). Insecure-emulated.
    CollateralServer(collateral::CollateralArgs),
}

/// `cvm emulated init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to create the platform in (created if missing). An existing platform
    /// there (DIR/snp, DIR/tdx) is refused unless --force.
    #[arg(long)]
    pub dir: PathBuf,
    /// Replace an existing platform in DIR (removes DIR/snp and DIR/tdx first).
    #[arg(long)]
    pub force: bool,
    /// `text` or `json` (the trust anchors created, on standard output).
    #[arg(long, visible_alias = "output-format", value_enum, default_value_t)]
    pub output: cli_support::Output,
}

/// Why `cvm emulated init` refused or failed before creating keys.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A platform exists and --force was not given.
    #[error(transparent)]
    Exists(#[from] cli_support::output::Exists),
    /// The old platform could not be removed for --force.
    #[error("cannot remove the existing platform {0}")]
    Remove(PathBuf, #[source] std::io::Error),
}

impl cli_support::ExitClass for InitError {
    fn exit_code(&self) -> u8 {
        match self {
            InitError::Exists(_) => cli_support::EXIT_USAGE,
            InitError::Remove(..) => cli_support::EXIT_FAILURE,
        }
    }
}

/// Applies the overwrite rule to DIR/snp and DIR/tdx.
fn prepare_init(a: &InitArgs) -> Result<(), InitError> {
    for half in ["snp", "tdx"] {
        let p = a.dir.join(half);
        cli_support::check_overwrite(&p, a.force)?;
    }
    for half in ["snp", "tdx"] {
        let p = a.dir.join(half);
        match std::fs::remove_dir_all(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(InitError::Remove(p, e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `cvm emulated report`.
#[derive(Debug, clap::Subcommand)]
pub enum ReportCmd {
    /// An SEV-SNP ATTESTATION_REPORT.
    Snp(snp::ReportArgs),
}

/// `cvm emulated quote`.
#[derive(Debug, clap::Subcommand)]
pub enum QuoteCmd {
    /// A TDX quote v4.
    Tdx(tdx::QuoteArgs),
}

/// Runs `cvm emulated`.
pub fn run(cmd: Command) -> ExitCode {
    match cmd {
        Command::Init(a) => {
            if let Err(e) = prepare_init(&a) {
                return cli_support::exit_with(&e);
            }
            let ok = cli_support::progress::ticking("creating the emulated platform keys", || {
                snp::init(&a.dir, a.output) == ExitCode::SUCCESS
                    && tdx::init(&a.dir, a.output) == ExitCode::SUCCESS
            });
            if !ok {
                return ExitCode::from(cli_support::EXIT_FAILURE);
            }
            if a.output.is_json() {
                cli_support::output::print_json(&serde_json::json!({
                    "dir": a.dir,
                    "snp": {
                        "dir": a.dir.join("snp"),
                        "trust_anchor": a.dir.join("snp").join("trust-anchor.pem"),
                    },
                    "tdx": {
                        "dir": a.dir.join("tdx"),
                        "trust_anchor": a.dir.join("tdx").join("root_ca.pem"),
                    },
                    "insecure_emulated": true,
                }));
            }
            ExitCode::SUCCESS
        }
        Command::Report(ReportCmd::Snp(a)) => snp::report(a),
        Command::Quote(QuoteCmd::Tdx(a)) => tdx::quote(a),
        Command::Serve(a) => serve::run(*a),
        Command::CollateralServer(a) => collateral::run(a),
    }
}
