//! Per-VM network policy, default deny, enforced with nftables on the VM's taps.
//!
//! The policy lives in the VM description (`[network_policy]`, see
//! docs/vm-description.md): for each VM interface (tap), the guest's MAC and IPv4 and
//! IPv6 addresses (anti-spoofing: frames from the tap must carry them, ARP and IPv6
//! neighbour discovery included; no IPv6 address, no IPv6), what the
//! guest may reach (`egress`) and what may reach it (`ingress`), by CIDR or by the name
//! of another VM on this host, with protocol and ports. What no rule allows is dropped
//! and counted; an empty list allows nothing. A VM with interfaces and no policy is
//! refused unless it opts out explicitly (`--net-unfiltered`, `[network_policy]
//! unfiltered = true`).
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
//! denying; the next start of the same VM replaces them, and `cvm net gc` removes them
//! (only the tables of its own registry's stale entries that carry its registry's id in
//! their comment). A registry entry's name, taps, tables, MACs and addresses are its
//! own while the VM runs; a stopping VM empties its address set in its peers' tables.

pub mod model;
pub mod nft;
pub mod registry;
pub mod ruleset;
pub mod supervisor;

#[cfg(test)]
mod netns_support;
#[cfg(test)]
mod netns_tests;

pub use model::{NetworkPolicy, NetworkPolicyToml, PolicyError};

/// A network interface of the VM as the launch configures it (`--net`, `[[net]]`).
#[derive(Debug, Clone, Copy)]
pub struct Device<'a> {
    /// The tap.
    pub tap: &'a str,
    /// The MAC the virtio-net device offers the guest.
    pub mac: [u8; 6],
    /// The address the operator stated for it (`ip=`), if any.
    pub ip: Option<std::net::IpAddr>,
}

/// Checks that `p` covers exactly the VM's interfaces: every device has a policy
/// interface on its tap with the same MAC (and, when the device states its address, the
/// policy lists it), and every policy interface is one of the devices. A device without
/// a policy would be unfiltered; a policy for a tap the VM does not use is most likely a
/// typo that leaves the real tap unfiltered.
pub fn check_devices(p: &NetworkPolicy, devices: &[Device<'_>]) -> Result<(), PolicyError> {
    let err = |key: String, problem: String| PolicyError { key, problem };
    for d in devices {
        let Some((k, i)) = p
            .interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.tap.as_str() == d.tap)
        else {
            return Err(err(
                "network_policy.interfaces".into(),
                format!(
                    "the VM's interface on tap `{}` has no policy: with a [network_policy], \
                     every interface needs one (tap, mac, addresses and its rules)",
                    d.tap
                ),
            ));
        };
        let key = format!("network_policy.interfaces[{k}]");
        if i.mac.0 != d.mac {
            return Err(err(
                format!("{key}.mac"),
                format!(
                    "{} is not the MAC of the VM's interface on `{}` ({}); give the \
                     interface mac={}",
                    i.mac,
                    d.tap,
                    model::Mac(d.mac),
                    i.mac
                ),
            ));
        }
        if let Some(ip) = d.ip {
            let listed = match ip {
                std::net::IpAddr::V4(v4) => i.addresses.contains(&v4),
                std::net::IpAddr::V6(v6) => i
                    .addresses6
                    .iter()
                    .any(|c| c.overlaps(&model::Cidr6::host(v6))),
            };
            if !listed {
                return Err(err(
                    format!("{key}.addresses"),
                    format!(
                        "the interface on `{}` has ip={ip}, which the policy does not list",
                        d.tap
                    ),
                ));
            }
        }
    }
    for (k, i) in p.interfaces.iter().enumerate() {
        if !devices.iter().any(|d| d.tap == i.tap.as_str()) {
            return Err(err(
                format!("network_policy.interfaces[{k}].tap"),
                format!(
                    "`{}` is not one of the VM's network interfaces (--net / [[net]])",
                    i.tap
                ),
            ));
        }
    }
    Ok(())
}

/// Packet counts of one table's named counters, in [`ruleset::COUNTERS`] order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; ruleset::COUNTERS.len()]);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_must_cover_exactly_the_vms_interfaces() {
        let p: NetworkPolicy = toml::from_str::<NetworkPolicyToml>(
            "name = \"a\"\n[[interfaces]]\ntap = \"t0\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.0.2\"]\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        let mac = [2, 0, 0, 0, 0, 0x0a];
        let dev = |tap, mac, ip: Option<&str>| Device {
            tap,
            mac,
            ip: ip.map(|i| i.parse().unwrap()),
        };
        check_devices(&p, &[dev("t0", mac, Some("10.0.0.2"))]).unwrap();
        check_devices(&p, &[dev("t0", mac, None)]).unwrap();
        for (devices, what) in [
            (
                vec![dev("t0", mac, None), dev("t1", mac, None)],
                "has no policy",
            ),
            (
                vec![dev("t0", [2, 0, 0, 0, 0, 0x0b], None)],
                "is not the MAC",
            ),
            (vec![dev("t0", mac, Some("10.0.0.3"))], "does not list"),
            (vec![dev("t0", mac, Some("fd00::2"))], "does not list"),
            (vec![], "is not one of the VM's network interfaces"),
        ] {
            let e = check_devices(&p, &devices).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        // An IPv6 `ip=` must be one of the policy's IPv6 addresses or in its prefix.
        let p6: NetworkPolicy = toml::from_str::<NetworkPolicyToml>(
            "name = \"a\"\n[[interfaces]]\ntap = \"t0\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"fd00::2\", \"fd01::/64\"]\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        for ip in ["fd00::2", "fd01::77", "fe80::ff:fe00:a"] {
            check_devices(&p6, &[dev("t0", mac, Some(ip))]).unwrap();
        }
        for ip in ["fd00::3", "fd02::1", "10.0.0.2"] {
            let e = check_devices(&p6, &[dev("t0", mac, Some(ip))]).unwrap_err();
            assert!(e.to_string().contains("does not list"), "{ip}: {e}");
        }
    }
}
