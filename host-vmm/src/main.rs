//! `cvm`: launch and measure confidential VMs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use host_vmm::cli;

#[derive(Debug, Parser)]
#[command(
    name = "cvm",
    version,
    about = "Confidential-VM host: measure and launch SEV-SNP and TDX guests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compute the expected launch measurement of a guest.
    #[command(subcommand)]
    Measure(cli::measure::Command),
    /// Software-emulated TEE platforms (test equipment; insecure).
    #[command(subcommand)]
    Emulated(cli::emulated::Command),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Measure(c) => cli::measure::run(c),
        Command::Emulated(c) => cli::emulated::run(c),
    }
}
