//! `cvm net`: the network policies of this host's VMs.
//!
//! - `cvm net show --config FILE`: the nftables ruleset `cvm launch --config FILE`
//!   would install (named peers resolved against the VMs running now), checked by
//!   `nft -c` when `--check` is given.
//! - `cvm net list`: the running VMs with a policy, their taps, addresses and tables.
//! - `cvm net gc`: removes the tables and registry entries of VMs that are not running
//!   (left by a `cvm` that was killed with SIGKILL or by a crash of the host process).

use std::path::PathBuf;
use std::process::ExitCode;

use cli_support::{EXIT_FAILURE, EXIT_USAGE};

use super::description::Loaded;
use crate::net_policy::nft::Nft;
use crate::net_policy::registry::Registry;
use crate::net_policy::{ruleset, supervisor};

/// `cvm net`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the nftables ruleset a VM description's `[network_policy]` installs.
    Show(ShowArgs),
    /// List the running VMs that have a network policy.
    List(StateArgs),
    /// Remove the tables and registry entries of VMs that are no longer running.
    Gc(StateArgs),
}

/// `cvm net show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// VM description file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Also check the ruleset with `nft -c` (needs root and nftables).
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    state: StateArgs,
}

/// The registry directory.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// Directory of the running VMs' registry.
    #[arg(long, value_name = "DIR", env = "CVM_NET_STATE_DIR", default_value = crate::net_policy::registry::DEFAULT_DIR)]
    pub state_dir: PathBuf,
}

/// Runs `cvm net`.
pub fn run(c: Command) -> ExitCode {
    match c {
        Command::Show(a) => show(a),
        Command::List(a) => list(a),
        Command::Gc(a) => gc(a),
    }
}

fn show(a: ShowArgs) -> ExitCode {
    let loaded = match Loaded::read(&a.config) {
        Ok(l) => l,
        Err(e) => return super::fail(&e, EXIT_USAGE),
    };
    let policy = match loaded.network_policy() {
        Ok(Some(p)) => p,
        Ok(None) => {
            eprintln!(
                "error: {} has no [network_policy]: a VM without one gets no network policy",
                a.config.display()
            );
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => return super::fail(&e, EXIT_USAGE),
    };
    // Peers resolve only against a registry that exists; `show` creates nothing.
    // The owner mark is the registry's id; without a registry, a placeholder.
    let (peers, owner) = if a.state.state_dir.is_dir() {
        match Registry::open(&a.state.state_dir) {
            Ok(r) => (r.resolve(&policy.peer_vms()), r.id().to_owned()),
            Err(e) => return super::fail(&e, EXIT_FAILURE),
        }
    } else {
        (ruleset::Peers::new(), "0000000000000000".to_owned())
    };
    let script: String = policy
        .interfaces
        .iter()
        .map(|i| ruleset::table_script(&policy.name, i, &peers, &owner))
        .collect();
    print!("{script}");
    if a.check {
        if let Err(e) = Nft::default().check(&script) {
            return super::fail(&e, EXIT_FAILURE);
        }
    }
    ExitCode::SUCCESS
}

fn list(a: StateArgs) -> ExitCode {
    if !a.state_dir.is_dir() {
        return ExitCode::SUCCESS;
    }
    let r = match Registry::open(&a.state_dir).and_then(|r| r.entries()) {
        Ok(e) => e,
        Err(e) => return super::fail(&e, EXIT_FAILURE),
    };
    for e in r {
        let state = if e.is_live() { "running" } else { "stale" };
        for i in &e.interfaces {
            let addrs: Vec<String> = i
                .addresses
                .iter()
                .map(ToString::to_string)
                .chain(i.addresses6.iter().map(ToString::to_string))
                .collect();
            println!(
                "{}\t{state}\tpid {}\t{}\t{}\t{}\t{}",
                e.name,
                e.pid,
                i.tap,
                i.mac,
                addrs.join(","),
                i.table
            );
        }
    }
    ExitCode::SUCCESS
}

fn gc(a: StateArgs) -> ExitCode {
    let r = match Registry::open(&a.state_dir) {
        Ok(r) => r,
        Err(e) => return super::fail(&e, EXIT_FAILURE),
    };
    match supervisor::gc(&Nft::default(), &r) {
        Ok(removed) => {
            for t in &removed {
                println!("removed table netdev {t}");
            }
            tracing::info!(
                event = "net-gc",
                removed = removed.len(),
                "stale network policies removed"
            );
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(&e, EXIT_FAILURE),
    }
}
