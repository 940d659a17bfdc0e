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
    /// Serve the emulated secure processor's mailbox on a Unix socket (for `cvm-agent
    /// --evidence emulated-unix:PATH` as a host process). Insecure-emulated.
    Serve(Box<serve::ServeArgs>),
    /// Serve the platform's collateral over the AMD KDS and Intel PCS paths on loopback
    /// (for `cvm-verifier serve --amd-kds-url/--intel-pcs-url`). Insecure-emulated.
    CollateralServer(collateral::CollateralArgs),
}

/// `cvm emulated init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to create the platform in (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
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
            let snp = snp::init(&a.dir);
            if snp != ExitCode::SUCCESS {
                return snp;
            }
            tdx::init(&a.dir)
        }
        Command::Report(ReportCmd::Snp(a)) => snp::report(a),
        Command::Quote(QuoteCmd::Tdx(a)) => tdx::quote(a),
        Command::Serve(a) => serve::run(*a),
        Command::CollateralServer(a) => collateral::run(a),
    }
}
