//! `cvm`: launch and measure confidential VMs.
//!
//! The operator CLI. The VMM itself is the `host-vmm` library; `cvm image` is the
//! `cvm-image` crate, `cvm emulated` the `emulated-sp` crate, the embedded guest images
//! come from `guest-images`, and the error and exit-code convention from `cli-support`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod cli;
mod net_policy;

#[derive(Debug, Parser)]
#[command(
    name = "cvm",
    version,
    about = "Confidential-VM host: measure and launch SEV-SNP and TDX guests"
)]
struct Cli {
    /// Log line format on standard error (`CVM_LOG` sets the level, e.g. `debug`).
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
    /// Compute the expected launch measurement of a guest (from a VM description file,
    /// or sev-snp-measure style flags).
    Measure(cli::measure::Args),
    /// Launch a guest and wait for it to stop.
    Launch(Box<cli::launch::Args>),
    /// Report what this host can run (KVM, SNP, TDX, cgroups, seccomp).
    HostCheck(cli::host_check::Args),
    /// Build guest disk images (encrypted LUKS2 disks and their keys).
    #[command(subcommand)]
    Image(cvm_image::Command),
    /// Software-emulated TEE platforms (test equipment; insecure).
    #[command(subcommand)]
    Emulated(emulated_sp::Command),
    /// Write the embedded project firmware to a file.
    Firmware(cli::firmware::Args),
    /// Talk to a running VMM's control socket (status, measurement, pause, resume,
    /// shutdown).
    Api(cli::api::Args),
    /// Network policies of this host's VMs (show a ruleset, list, remove stale ones).
    #[command(subcommand)]
    Net(cli::net_policy::Command),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cli_support::docs::CompletionsArgs),
    /// Write the man pages of cvm and every subcommand.
    Man(cli_support::docs::ManArgs),
    /// Run the whole system on this machine: a verifier, emulated SEV-SNP and TDX
    /// launches of the test guest that unlock an encrypted disk only after attestation.
    Demo(cli::demo::Args),
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
    cli_support::logging::set_format(cli.log_format);
    cli_support::logging::init("info");
    match cli.command {
        Command::Measure(c) => cli::measure::run(c),
        Command::Emulated(c) => emulated_sp::run(c),
        Command::Launch(a) => cli::launch::run(*a),
        Command::HostCheck(a) => cli::host_check::run(a),
        Command::Image(c) => cvm_image::run(c),
        Command::Firmware(a) => cli::firmware::run(a),
        Command::Demo(a) => cli::demo::run(a),
        Command::Api(a) => cli::api::run(a),
        Command::Net(c) => cli::net_policy::run(c),
        Command::Completions(a) => cli_support::docs::completions(Cli::command(), &a),
        Command::Man(a) => cli_support::docs::man(Cli::command(), &a),
    }
}
