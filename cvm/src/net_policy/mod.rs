//! Per-VM network policy, default deny, enforced with nftables on the VM's taps.
//!
//! The policy lives in the VM description (`[network_policy]`, see
//! docs/vm-description.md): for each VM interface (tap), the guest's MAC and IPv4
//! addresses (anti-spoofing: frames from the tap must carry them, ARP included), what the
//! guest may reach (`egress`) and what may reach it (`ingress`), by CIDR or by the name
//! of another VM on this host, with protocol and ports. What no rule allows is dropped
//! and counted; an empty list allows nothing.
//!
//! This lives in the `cvm` binary, not in the host-vmm library: the policy is installed
//! and removed by the unconfined `cvm` process that supervises the VMM (it runs `nft`,
//! which a seccomp-confined, jailed VMM must not be able to do), and the VMM library has
//! no business knowing about nftables.
//!
//! Life cycle ([`supervisor`]): before the guest starts, `cvm` checks the taps exist,
//! registers the VM ([`registry`]), resolves named peers, and installs one `netdev`
//! table per interface ([`ruleset`]) in one `nft -f` transaction; a failure refuses the
//! launch. It then forks: the child runs the VM, the parent supervises it: every 2 s it
//! reads the denied-packet counters (logged as `net-policy-denied` events when they
//! grow, and shared with the VMM for the API's `/v1/metrics`) and refreshes the
//! addresses of named peers (a peer that starts later becomes reachable, one that stops
//! becomes unreachable). When the VM ends, however it ends (power-off, a panic or a
//! crash of the VMM, SIGTERM/SIGINT/SIGHUP to `cvm`, which are forwarded to the VM), the
//! parent removes the tables and the registry entry. If the supervisor itself is killed
//! (SIGKILL), the VMM dies with it (`PR_SET_PDEATHSIG`) and the tables stay, still
//! denying; the next start of the same VM replaces them, and `cvm net gc` removes them.

pub mod model;
pub mod nft;
pub mod registry;
pub mod ruleset;
pub mod supervisor;

#[cfg(test)]
mod netns_tests;

pub use model::{NetworkPolicy, NetworkPolicyToml};

/// Packet counts of one table's named counters, in [`ruleset::COUNTERS`] order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; 4]);

impl Counts {
    /// The count of counter `name`. (tests)
    #[cfg(test)]
    pub fn get(&self, name: &str) -> u64 {
        ruleset::COUNTERS
            .iter()
            .position(|n| *n == name)
            .map_or(0, |i| self.0[i])
    }
}

/// Why the network policy could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetPolicyError {
    /// A tap named in the policy does not exist.
    #[error(
        "tap `{0}` does not exist (create it before the launch, e.g. `ip tuntap add {0} mode tap`)"
    )]
    NoTap(String),
    /// The registry of running VMs.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// nftables.
    #[error("cannot install the network policy")]
    Nft(#[from] nft::NftError),
    /// The process cannot fork its supervisor.
    #[error("cannot start the network policy's supervisor: {0}")]
    Supervise(String, #[source] std::io::Error),
}
