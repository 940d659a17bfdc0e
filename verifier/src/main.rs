//! `cvm-verifier`: attestation verifier and key broker.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use verifier::cli;

#[derive(Debug, Parser)]
#[command(
    name = "cvm-verifier",
    version,
    about = "Attestation verifier and key broker for confidential VMs"
)]
struct Cli {
    /// Log line format on standard error (`CVM_LOG`, or `RUST_LOG`, sets the level).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "CVM_LOG_FORMAT"
    )]
    log_format: cli_support::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify evidence offline. Exit 0: accepted; 1: refused; 2: usage or I/O error.
    #[command(subcommand)]
    Verify(Verify),
    /// Run the attestation service (KBS protocol, admin API, metrics).
    Serve(cli::serve::Args),
    /// Administration: bootstrap, master key, and the admin API.
    Admin(cli::admin::Args),
    /// Check or export the audit log (directly on the database).
    #[command(subcommand)]
    Audit(cli::audit::Command),
    /// Print the verifier's identity (the key guests pin: `cvm.verifier_key=`).
    Identity(cli::identity::Args),
    /// List attested guests (directly on the database).
    Inventory(cli::inventory::Args),
    /// Generate load: complete guest flows with emulated evidence.
    Loadgen(cli::loadgen::Args),
    /// The collateral cache: export, import (offline verifiers), status.
    #[command(subcommand)]
    Collateral(cli::collateral::Command),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cli_support::docs::CompletionsArgs),
    /// Write the man pages of cvm-verifier and every subcommand.
    Man(cli_support::docs::ManArgs),
}

#[derive(Debug, Subcommand)]
enum Verify {
    /// Verify an SEV-SNP attestation report.
    Snp(cli::verify_snp::Args),
    /// Verify a TDX quote with its collateral.
    Tdx(cli::verify_tdx::Args),
}

fn main() -> ExitCode {
    let cli = match cli_support::args::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli_support::logging::set_format(cli.log_format);
    match cli.command {
        Command::Verify(Verify::Snp(a)) => cli::verify_snp::run(a),
        Command::Verify(Verify::Tdx(a)) => cli::verify_tdx::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::Admin(a) => cli::admin::run(a),
        Command::Audit(c) => cli::audit::run(c),
        Command::Identity(a) => cli::identity::run(a),
        Command::Inventory(a) => cli::inventory::run(a),
        Command::Loadgen(a) => cli::loadgen::run(a),
        Command::Collateral(c) => cli::collateral::run(c),
        Command::Completions(a) => cli_support::docs::completions(Cli::command(), &a),
        Command::Man(a) => cli_support::docs::man(Cli::command(), &a),
    }
}
