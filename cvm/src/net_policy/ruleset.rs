//! The nftables ruleset of one VM interface, generated from the validated model.
//!
//! One `netdev` table per VM interface, with two base chains on the tap device:
//! `from_vm` on the tap's **ingress** hook sees every frame the guest sends, before the
//! host's stack, a bridge or a route sees it; `to_vm` on its **egress** hook sees every
//! frame about to be written to the guest, whether a bridge forwarded it from another
//! port or the host routed it there. So the same table enforces the policy for two VMs
//! on one bridge and for routed taps, and needs neither `br_netfilter` nor a guess at
//! the topology. Both chains have `policy drop`: what no rule allows is dropped.
//!
//! The netdev family has no connection tracking, so replies are allowed statelessly
//! and narrowly: a reply must come from (or go to) the allowed peer and port, and a TCP
//! reply may not be a bare SYN (`tcp flags & (syn | ack) != syn`), so no allowed
//! *reply* direction can open a connection. UDP replies are matched by the peer's port
//! only (see the README's threat model).
//!
//! IPv6 (only on an interface with IPv6 addresses; otherwise it is another ethertype):
//! the source must be the guest's (`::` only for duplicate address detection of its own
//! address), neighbour discovery from the guest must carry its MAC and advertise only
//! its own addresses (router advertisements and redirects never pass), no extension
//! header passes either way (the fixed header's next header must be TCP, UDP or
//! ICMPv6: nftables' transport matches would skip them), and to the guest only neighbour
//! discovery for its addresses, packet-too-big and the rules pass. nftables has no
//! field for a neighbour discovery target or option, so those are raw `@th` payload
//! matches (offsets in [`ip6_from_vm`]); they are safe because no extension header can
//! shift the transport header.
//!
//! Named counters count each kind of denial: `spoofed` (a frame from the tap with
//! another MAC, or an IPv4/ARP source that is not the guest's), `egress_denied` (IPv4
//! from the guest that no rule allows), `ingress_denied` (IPv4 to the guest that no rule
//! allows), `other_denied` (any other ethertype either way, IPv6 on an interface
//! without IPv6, and MLD), and for IPv6 `spoofed_ipv6` (another source, forged or
//! router neighbour discovery), `egress_denied_ipv6` and `ingress_denied_ipv6`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use sha2::{Digest, Sha256};

use super::model::{
    Cidr6, Interface, Mac, Net, NetworkPolicy, Peer, PortRange, Proto, Rule, TapName, VmName,
};

/// Every table `cvm` installs starts with this.
pub const TABLE_PREFIX: &str = "cvm_";

/// The counters of a table, in the order [`super::Counts`] holds them.
pub const COUNTERS: [&str; 7] = [
    "spoofed",
    "egress_denied",
    "ingress_denied",
    "other_denied",
    "spoofed_ipv6",
    "egress_denied_ipv6",
    "ingress_denied_ipv6",
];

/// The ICMP types allowed back as replies to an allowed ICMP flow.
const ICMP_REPLIES: &str =
    "{ echo-reply, destination-unreachable, time-exceeded, parameter-problem }";

/// The ICMPv6 types an `icmpv6` rule allows towards the peer: echo and the errors
/// (RFC 4443), never neighbour discovery, MLD or router renumbering.
const ICMP6_FORWARD: &str = "{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request, echo-reply }";

/// The ICMPv6 types allowed back as replies to an allowed ICMPv6 flow.
const ICMP6_REPLIES: &str =
    "{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-reply }";

/// The neighbour discovery types (RFC 4861 4.1-4.5).
const ND_TYPES: &str =
    "{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect }";

/// The table of `vm`'s interface on `tap`: `cvm_<vm>_<tap>_<hash>`, readable, and
/// collision-safe because the hash covers the exact names (two taps that read the same
/// after `-`/`.` become `_` still get different tables).
pub fn table_name(vm: &VmName, tap: &TapName) -> String {
    let readable: String = tap
        .as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut h = Sha256::new();
    h.update(vm.as_str().as_bytes());
    h.update([0]);
    h.update(tap.as_str().as_bytes());
    let digest = h.finalize();
    format!(
        "{TABLE_PREFIX}{}_{readable}_{}",
        vm.ident(),
        hex::encode(&digest[..8])
    )
}

/// The comment of `vm`'s table on `tap`, installed by the registry `owner` (only
/// characters the model allows: `owner` is hex, `vm` and `tap` are checked names).
pub fn owner_comment(vm: &VmName, tap: &str, owner: &str) -> String {
    format!("cvm network policy: vm {vm} tap {tap} {OWNER_KEY}{owner}")
}

/// What precedes the registry id in a table's comment.
const OWNER_KEY: &str = "registry ";

/// Whether a table comment names `owner` as its registry.
pub fn owned_by(comment: &str, owner: &str) -> bool {
    comment
        .rsplit_once(OWNER_KEY)
        .is_some_and(|(_, id)| !owner.is_empty() && id == owner)
}

/// The set holding `vm`'s IPv4 addresses.
fn peer_set(vm: &VmName) -> String {
    format!("vm_{}", vm.ident())
}

/// The set holding `vm`'s IPv6 addresses.
fn peer_set6(vm: &VmName) -> String {
    format!("vm6_{}", vm.ident())
}

/// The scripts emptying `vm`'s IPv4 and IPv6 address sets in `table` (when `vm`
/// stops): two transactions, since a table holds only the sets of its families.
pub fn forget_peer_scripts(table: &str, vm: &VmName) -> [String; 2] {
    [peer_set(vm), peer_set6(vm)].map(|set| format!("flush set netdev {table} {set}\n"))
}

/// The addresses of a running VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerAddrs {
    /// IPv4.
    pub v4: Vec<Ipv4Addr>,
    /// IPv6 (link-local included), hosts and prefixes.
    pub v6: Vec<Cidr6>,
}

/// The resolved addresses of the VMs a policy names (absent or empty: not running).
pub type Peers = BTreeMap<VmName, PeerAddrs>;

/// Sorted, merged IPv6 ranges as nftables set elements (a range that is exactly a
/// prefix is written as one; overlapping entries, which an interval set refuses, are
/// merged).
fn addr6_list(a: &[Cidr6]) -> String {
    merged6(a)
        .iter()
        .map(|&(lo, hi)| range6(lo, hi))
        .collect::<Vec<_>>()
        .join(", ")
}

fn merged6(a: &[Cidr6]) -> Vec<(u128, u128)> {
    let mut v: Vec<(u128, u128)> = a.iter().map(Cidr6::range).collect();
    v.sort();
    let mut out: Vec<(u128, u128)> = Vec::new();
    for (lo, hi) in v {
        match out.last_mut() {
            Some(m) if lo <= m.1.saturating_add(1) => m.1 = m.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn range6(lo: u128, hi: u128) -> String {
    let span = hi - lo;
    if span == 0 {
        Ipv6Addr::from(lo).to_string()
    } else if span.wrapping_add(1).is_power_of_two() && lo & span == 0 {
        format!("{}/{}", Ipv6Addr::from(lo), 128 - (span.count_ones()))
    } else {
        format!("{}-{}", Ipv6Addr::from(lo), Ipv6Addr::from(hi))
    }
}

/// `a` as an anonymous set of 128-bit integers, for the raw payload match of a
/// neighbour discovery target address (nftables has no named field for it).
fn int6_set(a: &[Cidr6]) -> String {
    let items: Vec<String> = merged6(a)
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                format!("0x{lo:032x}")
            } else {
                format!("0x{lo:032x}-0x{hi:032x}")
            }
        })
        .collect();
    format!("{{ {} }}", items.join(", "))
}

/// The destinations neighbour discovery from the guest may have: link-local unicast,
/// link-scope multicast, and the /64 of each of its own (non-link-local) addresses.
fn onlink6(own: &[Cidr6]) -> String {
    let link_local = Cidr6 {
        addr: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        len: 10,
    };
    let mut nets: std::collections::BTreeSet<Cidr6> = std::collections::BTreeSet::new();
    for c in own {
        if c.overlaps(&link_local) || c.len < 64 {
            continue;
        }
        let bits = u128::from(c.addr) & (u128::MAX << 64);
        nets.insert(Cidr6 {
            addr: Ipv6Addr::from(bits),
            len: 64,
        });
    }
    let mut items = vec!["fe80::/10".to_string(), "ff02::/16".to_string()];
    items.extend(nets.iter().map(|c| format!("{}/{}", c.addr, c.len)));
    format!("{{ {} }}", items.join(", "))
}

/// The MAC as the 48-bit integer a raw payload match compares.
fn mac_int(m: Mac) -> String {
    format!("0x{}", hex::encode(m.0))
}

/// The multicast groups neighbour discovery for `own` is sent to: all-nodes and the
/// solicited-node group of each address (RFC 4291 2.7.1; the whole ff02::1:ff00:0/104
/// for a prefix).
fn nd_groups(own: &[Cidr6]) -> Vec<Cidr6> {
    let base = u128::from(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0));
    let mut v = vec![Cidr6::host(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1))];
    for c in own {
        if c.len >= 104 {
            let (lo, hi) = c.range();
            let low24 = (1u128 << 24) - 1;
            let _ = hi;
            // At most 24 host bits: the groups form a prefix of the same length.
            v.push(Cidr6 {
                addr: Ipv6Addr::from(base | (lo & low24)),
                len: c.len,
            });
        } else {
            v.push(Cidr6 {
                addr: Ipv6Addr::from(base),
                len: 104,
            });
        }
    }
    v
}

fn addr_list(a: &[Ipv4Addr]) -> String {
    let mut v: Vec<Ipv4Addr> = a.to_vec();
    v.sort();
    v.dedup();
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sorted, merged port ranges as an nftables set (`{ 53, 5000-5010 }`).
fn port_set(ports: &[PortRange]) -> String {
    let mut v = ports.to_vec();
    v.sort_by_key(|p| (p.lo, p.hi));
    let mut merged: Vec<PortRange> = Vec::new();
    for p in v {
        match merged.last_mut() {
            Some(m) if u32::from(p.lo) <= u32::from(m.hi) + 1 => m.hi = m.hi.max(p.hi),
            _ => merged.push(p),
        }
    }
    let items: Vec<String> = merged.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

/// An address family of the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

/// Whether `r` applies to `family`: a CIDR to its own family, a named VM to both
/// (`icmp` is IPv4, `icmpv6` IPv6).
fn applies(r: &Rule, family: Family) -> bool {
    match (&r.peer, r.proto, family) {
        (_, Proto::Icmp, Family::V6) | (_, Proto::Icmpv6, Family::V4) => false,
        (Peer::Cidr(Net::V4(_)), _, f) => f == Family::V4,
        (Peer::Cidr(Net::V6(_)), _, f) => f == Family::V6,
        (Peer::Vm(_), _, _) => true,
    }
}

fn peer_expr(p: &Peer, family: Family) -> String {
    match (p, family) {
        (Peer::Cidr(c), _) => c.to_string(),
        (Peer::Vm(n), Family::V4) => format!("@{}", peer_set(n)),
        (Peer::Vm(n), Family::V6) => format!("@{}", peer_set6(n)),
    }
}

/// The rule line allowing `r`'s traffic in its own direction (`to`: the peer is the
/// destination, i.e. an egress rule seen on `from_vm`; otherwise the source).
fn forward_line(r: &Rule, peer_is_daddr: bool, family: Family) -> String {
    let side = if peer_is_daddr { "daddr" } else { "saddr" };
    let peer = peer_expr(&r.peer, family);
    let ip = family.keyword();
    let l4 = match family {
        Family::V4 => "ip protocol",
        Family::V6 => "ip6 nexthdr",
    };
    match r.proto {
        Proto::Icmp => format!("ip {side} {peer} ip protocol icmp accept"),
        Proto::Icmpv6 => format!("ip6 {side} {peer} icmpv6 type {ICMP6_FORWARD} accept"),
        p if r.ports.is_empty() => format!("{ip} {side} {peer} {l4} {} accept", p.as_str()),
        p => format!(
            "{ip} {side} {peer} {} dport {} accept",
            p.as_str(),
            port_set(&r.ports)
        ),
    }
}

/// The ports a reply may go to: the initiator's ephemeral range (Linux's default
/// `ip_local_port_range` 32768-60999 and the IANA dynamic range 49152-65535; a guest
/// must keep its `ip_local_port_range` inside it). Replies are matched
/// statelessly (netdev hooks have no connection tracking), so without it a reply rule
/// would let one side send from the allowed port to every port of the other.
pub const REPLY_PORTS: &str = "32768-65535";

/// The rule line allowing the replies to `r`'s traffic, in the other direction: from
/// the allowed port(s) to the initiator's ephemeral ports ([`REPLY_PORTS`]), and for
/// TCP never a bare SYN.
fn reply_line(r: &Rule, peer_is_daddr: bool, family: Family) -> String {
    let side = if peer_is_daddr { "daddr" } else { "saddr" };
    let peer = peer_expr(&r.peer, family);
    let ip = family.keyword();
    let proto = r.proto.as_str();
    let sport = if r.ports.is_empty() {
        String::new()
    } else {
        format!(" {proto} sport {}", port_set(&r.ports))
    };
    match r.proto {
        Proto::Icmp => format!("ip {side} {peer} icmp type {ICMP_REPLIES} accept"),
        Proto::Icmpv6 => format!("ip6 {side} {peer} icmpv6 type {ICMP6_REPLIES} accept"),
        Proto::Tcp => format!(
            "{ip} {side} {peer}{sport} tcp dport {REPLY_PORTS} tcp flags & (syn | ack) != syn accept"
        ),
        Proto::Udp => format!("{ip} {side} {peer}{sport} udp dport {REPLY_PORTS} accept"),
    }
}

fn describe(r: &Rule) -> String {
    let peer = match &r.peer {
        Peer::Cidr(c) => format!("cidr {c}"),
        Peer::Vm(n) => format!("vm {n}"),
    };
    let ports = if r.ports.is_empty() {
        if matches!(r.proto, Proto::Icmp | Proto::Icmpv6) {
            String::new()
        } else {
            " every port".into()
        }
    } else {
        format!(" ports {}", port_set(&r.ports))
    };
    format!("{peer} {}{ports}", r.proto.as_str())
}

/// The VMs `iface`'s rules name, sorted, once each.
fn named_peers(iface: &Interface) -> Vec<&VmName> {
    let mut v: Vec<&VmName> = iface
        .egress
        .iter()
        .chain(&iface.ingress)
        .filter_map(|r| match &r.peer {
            Peer::Vm(n) => Some(n),
            Peer::Cidr(_) => None,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The whole `nft -f` script installing `iface`'s table, replacing any table of the
/// same name in the same transaction (a stale table of a crashed run of the same VM).
/// `peers` holds the addresses of the named VMs that run now.
pub fn table_script(vm: &VmName, iface: &Interface, peers: &Peers, owner: &str) -> String {
    let t = table_name(vm, &iface.tap);
    let tap = iface.tap.as_str();
    let mac = iface.mac;
    let v4 = !iface.addresses.is_empty();
    let v6 = !iface.addresses6.is_empty();
    let mut s = String::new();
    let w = &mut s;
    // `writeln!` into a String cannot fail.
    let _ = writeln!(
        w,
        "# cvm network policy of VM {vm} on tap {tap} (generated by cvm; replaced as a whole)"
    );
    let _ = writeln!(w, "table netdev {t}");
    let _ = writeln!(w, "delete table netdev {t}");
    let _ = writeln!(w, "table netdev {t} {{");
    let _ = writeln!(w, "\tcomment \"{}\"", owner_comment(vm, tap, owner));
    for c in COUNTERS {
        let _ = writeln!(w, "\tcounter {c} {{ }}");
    }
    if v4 {
        let _ = writeln!(
            w,
            "\tset own {{ type ipv4_addr; elements = {{ {} }}; }}",
            addr_list(&iface.addresses)
        );
    }
    if v6 {
        let _ = writeln!(
            w,
            "\tset own6 {{ type ipv6_addr; flags interval; elements = {{ {} }}; }}",
            addr6_list(&iface.addresses6)
        );
        let mut nd = iface.addresses6.clone();
        nd.extend(nd_groups(&iface.addresses6));
        let _ = writeln!(
            w,
            "\tset nd6 {{ type ipv6_addr; flags interval; elements = {{ {} }}; }}",
            addr6_list(&nd)
        );
    }
    let named = named_peers(iface);
    for n in &named {
        let addrs = peers.get(*n).cloned().unwrap_or_default();
        if v4 {
            let elements = if addrs.v4.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", addr_list(&addrs.v4))
            };
            let _ = writeln!(
                w,
                "\tset {} {{ type ipv4_addr; flags interval;{elements} }}",
                peer_set(n)
            );
        }
        if v6 {
            let elements = if addrs.v6.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", addr6_list(&addrs.v6))
            };
            let _ = writeln!(
                w,
                "\tset {} {{ type ipv6_addr; flags interval;{elements} }}",
                peer_set6(n)
            );
        }
    }
    // From the guest.
    let _ = writeln!(w, "\tchain from_vm {{");
    let _ = writeln!(
        w,
        "\t\ttype filter hook ingress device \"{tap}\" priority -500; policy drop;"
    );
    let _ = writeln!(w, "\t\tether saddr != {mac} counter name \"spoofed\" drop");
    if v4 {
        let _ = writeln!(w, "\t\tether type arp jump arp_from_vm");
        let _ = writeln!(w, "\t\tether type ip jump ip_from_vm");
    }
    if v6 {
        let _ = writeln!(w, "\t\tether type ip6 jump ip6_from_vm");
    }
    let _ = writeln!(w, "\t\tcounter name \"other_denied\" drop");
    let _ = writeln!(w, "\t}}");
    if v4 {
        let _ = writeln!(w, "\tchain arp_from_vm {{");
        let _ = writeln!(
            w,
            "\t\tarp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp operation {{ request, reply }} arp saddr ether {mac} arp saddr ip @own accept"
        );
        let _ = writeln!(w, "\t\tcounter name \"spoofed\" drop");
        let _ = writeln!(w, "\t}}");
        let _ = writeln!(w, "\tchain ip_from_vm {{");
        let _ = writeln!(w, "\t\tip saddr != @own counter name \"spoofed\" drop");
        let _ = writeln!(
            w,
            "\t\t# IPv4 options (source routes LSRR/SSRR among them) never pass"
        );
        let _ = writeln!(
            w,
            "\t\tip hdrlength != 5 counter name \"egress_denied\" drop"
        );
        rule_lines(w, iface, Family::V4, true);
        let _ = writeln!(w, "\t\tcounter name \"egress_denied\" drop");
        let _ = writeln!(w, "\t}}");
    }
    if v6 {
        ip6_from_vm(w, iface);
    }
    // To the guest.
    let _ = writeln!(w, "\tchain to_vm {{");
    let _ = writeln!(
        w,
        "\t\ttype filter hook egress device \"{tap}\" priority -500; policy drop;"
    );
    if v4 {
        let _ = writeln!(w, "\t\tether type arp accept");
        let _ = writeln!(w, "\t\tether type ip jump ip_to_vm");
    }
    if v6 {
        let _ = writeln!(w, "\t\tether type ip6 jump ip6_to_vm");
    }
    let _ = writeln!(w, "\t\tcounter name \"other_denied\" drop");
    let _ = writeln!(w, "\t}}");
    if v4 {
        let _ = writeln!(w, "\tchain ip_to_vm {{");
        let _ = writeln!(
            w,
            "\t\tip daddr != @own counter name \"ingress_denied\" drop"
        );
        let _ = writeln!(
            w,
            "\t\t# IPv4 options (source routes LSRR/SSRR among them) never pass"
        );
        let _ = writeln!(
            w,
            "\t\tip hdrlength != 5 counter name \"ingress_denied\" drop"
        );
        rule_lines(w, iface, Family::V4, false);
        let _ = writeln!(w, "\t\tcounter name \"ingress_denied\" drop");
        let _ = writeln!(w, "\t}}");
    }
    if v6 {
        let _ = writeln!(w, "\tchain ip6_to_vm {{");
        let _ = writeln!(w, "\t\t# MLD (queries, other nodes' reports), never needed");
        let _ = writeln!(
            w,
            "\t\tip6 nexthdr 0 ip6 daddr ff02::/16 counter name \"other_denied\" drop"
        );
        let _ = writeln!(
            w,
            "\t\t# extension headers (fragments and routing headers among them) never pass"
        );
        let _ = writeln!(
            w,
            "\t\tip6 nexthdr != {{ tcp, udp, ipv6-icmp }} counter name \"ingress_denied_ipv6\" drop"
        );
        let _ = writeln!(
            w,
            "\t\t# neighbour discovery for its addresses, from the link only (hop limit 255)"
        );
        let _ = writeln!(
            w,
            "\t\ticmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} ip6 hoplimit 255 ip6 daddr @nd6 accept"
        );
        // The invoking packet a packet-too-big quotes (RFC 4443 3.2) starts at bit 64 of
        // the message; its source (bit 128) must be the guest's, so it is about a packet
        // the guest sent, not ~1.2 KB of anything from anywhere (review finding).
        let _ = writeln!(
            w,
            "\t\t# path MTU discovery: packet too big from any router, about a packet the guest sent"
        );
        let _ = writeln!(
            w,
            "\t\ticmpv6 type packet-too-big ip6 daddr @own6 @th,128,128 {} accept",
            int6_set(&iface.addresses6)
        );
        let _ = writeln!(
            w,
            "\t\tip6 daddr != @own6 counter name \"ingress_denied_ipv6\" drop"
        );
        rule_lines(w, iface, Family::V6, false);
        let _ = writeln!(w, "\t\tcounter name \"ingress_denied_ipv6\" drop");
        let _ = writeln!(w, "\t}}");
    }
    let _ = writeln!(w, "}}");
    s
}

/// The allow lines of `family` in one direction: `from_vm`, the egress rules and the
/// replies to the ingress rules; otherwise the ingress rules and the replies to the
/// egress rules.
fn rule_lines(w: &mut String, iface: &Interface, family: Family, from_vm: bool) {
    let (forward, replies, fname, rname) = if from_vm {
        (&iface.egress, &iface.ingress, "egress", "ingress")
    } else {
        (&iface.ingress, &iface.egress, "ingress", "egress")
    };
    for (i, r) in forward.iter().enumerate() {
        if applies(r, family) {
            let _ = writeln!(w, "\t\t# {fname}[{i}]: {}", describe(r));
            let _ = writeln!(w, "\t\t{}", forward_line(r, from_vm, family));
        }
    }
    for (i, r) in replies.iter().enumerate() {
        if applies(r, family) {
            let _ = writeln!(w, "\t\t# replies to {rname}[{i}]: {}", describe(r));
            let _ = writeln!(w, "\t\t{}", reply_line(r, from_vm, family));
        }
    }
}

/// The IPv6 chains from the guest: anti-spoofing, duplicate address detection,
/// neighbour discovery, then the rules.
fn ip6_from_vm(w: &mut String, iface: &Interface) {
    let own = int6_set(&iface.addresses6);
    let mac = mac_int(iface.mac);
    let _ = writeln!(w, "\tchain ip6_from_vm {{");
    // MLD chatter is dropped as `other_denied` only from `::` or its own addresses: a
    // forged source behind a hop-by-hop header counts as spoofed (review finding).
    let _ = writeln!(
        w,
        "\t\t# link-scope multicast behind a hop-by-hop header: MLD reports (RFC 3810; from :: before an address, RFC 3590), never needed"
    );
    let _ = writeln!(
        w,
        "\t\tip6 saddr :: ip6 nexthdr 0 ip6 daddr ff02::/16 counter name \"other_denied\" drop"
    );
    let _ = writeln!(w, "\t\tip6 saddr :: jump dad_from_vm");
    let _ = writeln!(
        w,
        "\t\tip6 saddr != @own6 counter name \"spoofed_ipv6\" drop"
    );
    let _ = writeln!(
        w,
        "\t\tip6 nexthdr 0 ip6 daddr ff02::/16 counter name \"other_denied\" drop"
    );
    let _ = writeln!(
        w,
        "\t\t# extension headers (fragments and routing headers among them) never pass"
    );
    let _ = writeln!(
        w,
        "\t\tip6 nexthdr != {{ tcp, udp, ipv6-icmp }} counter name \"egress_denied_ipv6\" drop"
    );
    let _ = writeln!(w, "\t\ticmpv6 type {ND_TYPES} jump nd_from_vm");
    rule_lines(w, iface, Family::V6, true);
    let _ = writeln!(w, "\t\tcounter name \"egress_denied_ipv6\" drop");
    let _ = writeln!(w, "\t}}");
    // Offsets in the ICMPv6 message (`@th`, bits): the target address of a
    // solicitation or an advertisement at 64 (128 bits), its first option at 192 (type
    // and length, 16 bits; a link-layer address option of length 1 holds the MAC at
    // 208); a router solicitation's first option at 64 (MAC at 80).
    let _ = writeln!(w, "\tchain dad_from_vm {{");
    let _ = writeln!(
        w,
        "\t\t# duplicate address detection of its own address: no link-layer option (a nonce may follow)"
    );
    let dad = format!(
        "ip6 nexthdr ipv6-icmp icmpv6 type nd-neighbor-solicit ip6 daddr ff02::1:ff00:0/104 @th,64,128 {own}"
    );
    let _ = writeln!(w, "\t\t{dad} ip6 length 24 accept");
    let _ = writeln!(w, "\t\t{dad} ip6 length 32 @th,192,16 0x0e01 accept");
    let _ = writeln!(
        w,
        "\t\t# router solicitation before it has an address: no link-layer option"
    );
    let _ = writeln!(
        w,
        "\t\tip6 nexthdr ipv6-icmp icmpv6 type nd-router-solicit ip6 daddr ff02::2 ip6 length 8 accept"
    );
    let _ = writeln!(w, "\t\tcounter name \"spoofed_ipv6\" drop");
    let _ = writeln!(w, "\t}}");
    let _ = writeln!(w, "\tchain nd_from_vm {{");
    // Neighbour discovery is no way off the link (review finding: an NS or NA with the
    // guest's own source to any address passed a deny-all policy, and a router forwards
    // it): hop limit 255, as every receiver requires (RFC 4861 7.1.1, 7.1.2), and a
    // destination on the link: link-local, link-scope multicast, or the /64 of one of
    // its own addresses (RFC 4291 2.5.4; prefixes shorter than /64 are refused).
    let _ = writeln!(
        w,
        "\t\t# from the link and to the link only: hop limit 255, a link-local, link-scope multicast or on-link /64 destination"
    );
    let _ = writeln!(
        w,
        "\t\tip6 hoplimit != 255 counter name \"spoofed_ipv6\" drop"
    );
    let _ = writeln!(
        w,
        "\t\tip6 daddr != {} counter name \"spoofed_ipv6\" drop",
        onlink6(&iface.addresses6)
    );
    let _ = writeln!(
        w,
        "\t\t# solicitations: a link-layer address option, if any, is its MAC"
    );
    let _ = writeln!(
        w,
        "\t\ticmpv6 type nd-neighbor-solicit ip6 length 24 accept"
    );
    let _ = writeln!(
        w,
        "\t\ticmpv6 type nd-neighbor-solicit ip6 length 32 @th,192,16 0x0101 @th,208,48 {mac} accept"
    );
    let _ = writeln!(w, "\t\ticmpv6 type nd-router-solicit ip6 length 8 accept");
    let _ = writeln!(
        w,
        "\t\ticmpv6 type nd-router-solicit ip6 length 16 @th,64,16 0x0101 @th,80,48 {mac} accept"
    );
    let _ = writeln!(
        w,
        "\t\t# advertisements: only for its own addresses, with its MAC"
    );
    let _ = writeln!(
        w,
        "\t\ticmpv6 type nd-neighbor-advert @th,64,128 {own} ip6 length 24 accept"
    );
    let _ = writeln!(
        w,
        "\t\ticmpv6 type nd-neighbor-advert @th,64,128 {own} ip6 length 32 @th,192,16 0x0201 @th,208,48 {mac} accept"
    );
    let _ = writeln!(
        w,
        "\t\t# router advertisements and redirects (a VM is not a router), forged solicitations and advertisements"
    );
    let _ = writeln!(w, "\t\tcounter name \"spoofed_ipv6\" drop");
    let _ = writeln!(w, "\t}}");
}

/// The script that replaces the addresses of the named VMs in `iface`'s table (one
/// transaction: a set is never seen half-updated).
pub fn peers_script(vm: &VmName, iface: &Interface, peers: &Peers) -> Option<String> {
    let t = table_name(vm, &iface.tap);
    let mut s = String::new();
    let names = named_peers(iface);
    for n in &names {
        let addrs = peers.get(*n).cloned().unwrap_or_default();
        if !iface.addresses.is_empty() {
            let set = peer_set(n);
            let _ = writeln!(s, "flush set netdev {t} {set}");
            if !addrs.v4.is_empty() {
                let _ = writeln!(
                    s,
                    "add element netdev {t} {set} {{ {} }}",
                    addr_list(&addrs.v4)
                );
            }
        }
        if !iface.addresses6.is_empty() {
            let set = peer_set6(n);
            let _ = writeln!(s, "flush set netdev {t} {set}");
            if !addrs.v6.is_empty() {
                let _ = writeln!(
                    s,
                    "add element netdev {t} {set} {{ {} }}",
                    addr6_list(&addrs.v6)
                );
            }
        }
    }
    (!names.is_empty()).then_some(s)
}

/// The script removing tables; a table that is already gone is not an error (each is
/// declared, which creates it if missing, then deleted, in one transaction).
pub fn delete_script<'a>(tables: impl IntoIterator<Item = &'a str>) -> String {
    tables
        .into_iter()
        .map(|t| format!("table netdev {t}\ndelete table netdev {t}\n"))
        .collect()
}

/// Every table of a policy.
pub fn tables(p: &NetworkPolicy) -> Vec<String> {
    p.interfaces
        .iter()
        .map(|i| table_name(&p.name, &i.tap))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::model::NetworkPolicyToml;
    use super::*;

    fn policy() -> NetworkPolicy {
        let t: NetworkPolicyToml = toml::from_str(
            r#"
name = "web-a"
[[interfaces]]
tap = "cvm-a.0"
mac = "52:54:00:00:00:0a"
addresses = ["10.0.0.2"]
egress = [
  { vm = "db", proto = "tcp", ports = [5432] },
  { cidr = "10.9.0.0/16", proto = "udp", ports = ["5000-5010", 53, "5005-5020"] },
  { cidr = "192.0.2.7", proto = "icmp" },
]
ingress = [{ vm = "lb", proto = "tcp", ports = [8080] }]
"#,
        )
        .unwrap();
        t.validate().unwrap()
    }

    /// The golden ruleset, reviewed by reading it: every frame from the tap needs the
    /// guest's MAC; ARP needs its MAC and IP; IPv4 needs its IP and an egress rule (or
    /// is a reply to an ingress rule); to the guest, only ARP and the ingress rules (and
    /// replies to egress rules, never a bare SYN) pass; every drop is counted.
    const GOLDEN: &str = r#"# cvm network policy of VM web-a on tap cvm-a.0 (generated by cvm; replaced as a whole)
table netdev cvm_web_a_cvm_a_0_e0f4e0da9616b5ef
delete table netdev cvm_web_a_cvm_a_0_e0f4e0da9616b5ef
table netdev cvm_web_a_cvm_a_0_e0f4e0da9616b5ef {
	comment "cvm network policy: vm web-a tap cvm-a.0 registry 00112233aabbccdd"
	counter spoofed { }
	counter egress_denied { }
	counter ingress_denied { }
	counter other_denied { }
	counter spoofed_ipv6 { }
	counter egress_denied_ipv6 { }
	counter ingress_denied_ipv6 { }
	set own { type ipv4_addr; elements = { 10.0.0.2 }; }
	set vm_db { type ipv4_addr; flags interval; elements = { 10.0.0.5 }; }
	set vm_lb { type ipv4_addr; flags interval; }
	chain from_vm {
		type filter hook ingress device "cvm-a.0" priority -500; policy drop;
		ether saddr != 52:54:00:00:00:0a counter name "spoofed" drop
		ether type arp jump arp_from_vm
		ether type ip jump ip_from_vm
		counter name "other_denied" drop
	}
	chain arp_from_vm {
		arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp operation { request, reply } arp saddr ether 52:54:00:00:00:0a arp saddr ip @own accept
		counter name "spoofed" drop
	}
	chain ip_from_vm {
		ip saddr != @own counter name "spoofed" drop
		# IPv4 options (source routes LSRR/SSRR among them) never pass
		ip hdrlength != 5 counter name "egress_denied" drop
		# egress[0]: vm db tcp ports { 5432 }
		ip daddr @vm_db tcp dport { 5432 } accept
		# egress[1]: cidr 10.9.0.0/16 udp ports { 53, 5000-5020 }
		ip daddr 10.9.0.0/16 udp dport { 53, 5000-5020 } accept
		# egress[2]: cidr 192.0.2.7/32 icmp
		ip daddr 192.0.2.7/32 ip protocol icmp accept
		# replies to ingress[0]: vm lb tcp ports { 8080 }
		ip daddr @vm_lb tcp sport { 8080 } tcp dport 32768-65535 tcp flags & (syn | ack) != syn accept
		counter name "egress_denied" drop
	}
	chain to_vm {
		type filter hook egress device "cvm-a.0" priority -500; policy drop;
		ether type arp accept
		ether type ip jump ip_to_vm
		counter name "other_denied" drop
	}
	chain ip_to_vm {
		ip daddr != @own counter name "ingress_denied" drop
		# IPv4 options (source routes LSRR/SSRR among them) never pass
		ip hdrlength != 5 counter name "ingress_denied" drop
		# ingress[0]: vm lb tcp ports { 8080 }
		ip saddr @vm_lb tcp dport { 8080 } accept
		# replies to egress[0]: vm db tcp ports { 5432 }
		ip saddr @vm_db tcp sport { 5432 } tcp dport 32768-65535 tcp flags & (syn | ack) != syn accept
		# replies to egress[1]: cidr 10.9.0.0/16 udp ports { 53, 5000-5020 }
		ip saddr 10.9.0.0/16 udp sport { 53, 5000-5020 } udp dport 32768-65535 accept
		# replies to egress[2]: cidr 192.0.2.7/32 icmp
		ip saddr 192.0.2.7/32 icmp type { echo-reply, destination-unreachable, time-exceeded, parameter-problem } accept
		counter name "ingress_denied" drop
	}
}
"#;

    #[test]
    fn the_ruleset_matches_the_reviewed_golden_text() {
        let p = policy();
        let mut peers = Peers::new();
        peers.insert(
            VmName::parse("db").unwrap(),
            PeerAddrs {
                v4: vec![Ipv4Addr::new(10, 0, 0, 5)],
                v6: vec![],
            },
        );
        let got = table_script(&p.name, &p.interfaces[0], &peers, "00112233aabbccdd");
        assert_eq!(got, GOLDEN, "got:\n{got}");
    }

    /// The IPv6 part, reviewed by reading it: IPv6 from the tap needs one of the
    /// guest's addresses (its EUI-64 link-local one included) or is duplicate address
    /// detection of its own address from `::`; no extension header passes either way;
    /// neighbour discovery from the guest carries its MAC and advertises only its own
    /// addresses, router advertisements and redirects never pass; to the guest only
    /// neighbour discovery for its addresses (hop limit 255), packet-too-big and the
    /// rules pass; every drop is counted.
    const GOLDEN6: &str = r#"# cvm network policy of VM web-6 on tap cvm-6 (generated by cvm; replaced as a whole)
table netdev cvm_web_6_cvm_6_21f34e3469242edc
delete table netdev cvm_web_6_cvm_6_21f34e3469242edc
table netdev cvm_web_6_cvm_6_21f34e3469242edc {
	comment "cvm network policy: vm web-6 tap cvm-6 registry 00112233aabbccdd"
	counter spoofed { }
	counter egress_denied { }
	counter ingress_denied { }
	counter other_denied { }
	counter spoofed_ipv6 { }
	counter egress_denied_ipv6 { }
	counter ingress_denied_ipv6 { }
	set own6 { type ipv6_addr; flags interval; elements = { 2001:db8:5::/64, fd00:1::2, fe80::5054:ff:fe00:a }; }
	set nd6 { type ipv6_addr; flags interval; elements = { 2001:db8:5::/64, fd00:1::2, fe80::5054:ff:fe00:a, ff02::1, ff02::1:ff00:0/104 }; }
	set vm6_db { type ipv6_addr; flags interval; elements = { fd00:1::5, fe80::1 }; }
	chain from_vm {
		type filter hook ingress device "cvm-6" priority -500; policy drop;
		ether saddr != 52:54:00:00:00:0a counter name "spoofed" drop
		ether type ip6 jump ip6_from_vm
		counter name "other_denied" drop
	}
	chain ip6_from_vm {
		# link-scope multicast behind a hop-by-hop header: MLD reports (RFC 3810; from :: before an address, RFC 3590), never needed
		ip6 saddr :: ip6 nexthdr 0 ip6 daddr ff02::/16 counter name "other_denied" drop
		ip6 saddr :: jump dad_from_vm
		ip6 saddr != @own6 counter name "spoofed_ipv6" drop
		ip6 nexthdr 0 ip6 daddr ff02::/16 counter name "other_denied" drop
		# extension headers (fragments and routing headers among them) never pass
		ip6 nexthdr != { tcp, udp, ipv6-icmp } counter name "egress_denied_ipv6" drop
		icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } jump nd_from_vm
		# egress[0]: vm db tcp ports { 5432 }
		ip6 daddr @vm6_db tcp dport { 5432 } accept
		# egress[1]: cidr fd00:9::/48 udp ports { 53 }
		ip6 daddr fd00:9::/48 udp dport { 53 } accept
		# egress[2]: cidr fd00:1::1/128 icmpv6
		ip6 daddr fd00:1::1/128 icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request, echo-reply } accept
		# replies to ingress[0]: cidr fd00:1::/64 tcp ports { 8080 }
		ip6 daddr fd00:1::/64 tcp sport { 8080 } tcp dport 32768-65535 tcp flags & (syn | ack) != syn accept
		counter name "egress_denied_ipv6" drop
	}
	chain dad_from_vm {
		# duplicate address detection of its own address: no link-layer option (a nonce may follow)
		ip6 nexthdr ipv6-icmp icmpv6 type nd-neighbor-solicit ip6 daddr ff02::1:ff00:0/104 @th,64,128 { 0x20010db8000500000000000000000000-0x20010db800050000ffffffffffffffff, 0xfd000001000000000000000000000002, 0xfe80000000000000505400fffe00000a } ip6 length 24 accept
		ip6 nexthdr ipv6-icmp icmpv6 type nd-neighbor-solicit ip6 daddr ff02::1:ff00:0/104 @th,64,128 { 0x20010db8000500000000000000000000-0x20010db800050000ffffffffffffffff, 0xfd000001000000000000000000000002, 0xfe80000000000000505400fffe00000a } ip6 length 32 @th,192,16 0x0e01 accept
		# router solicitation before it has an address: no link-layer option
		ip6 nexthdr ipv6-icmp icmpv6 type nd-router-solicit ip6 daddr ff02::2 ip6 length 8 accept
		counter name "spoofed_ipv6" drop
	}
	chain nd_from_vm {
		# from the link and to the link only: hop limit 255, a link-local, link-scope multicast or on-link /64 destination
		ip6 hoplimit != 255 counter name "spoofed_ipv6" drop
		ip6 daddr != { fe80::/10, ff02::/16, 2001:db8:5::/64, fd00:1::/64 } counter name "spoofed_ipv6" drop
		# solicitations: a link-layer address option, if any, is its MAC
		icmpv6 type nd-neighbor-solicit ip6 length 24 accept
		icmpv6 type nd-neighbor-solicit ip6 length 32 @th,192,16 0x0101 @th,208,48 0x52540000000a accept
		icmpv6 type nd-router-solicit ip6 length 8 accept
		icmpv6 type nd-router-solicit ip6 length 16 @th,64,16 0x0101 @th,80,48 0x52540000000a accept
		# advertisements: only for its own addresses, with its MAC
		icmpv6 type nd-neighbor-advert @th,64,128 { 0x20010db8000500000000000000000000-0x20010db800050000ffffffffffffffff, 0xfd000001000000000000000000000002, 0xfe80000000000000505400fffe00000a } ip6 length 24 accept
		icmpv6 type nd-neighbor-advert @th,64,128 { 0x20010db8000500000000000000000000-0x20010db800050000ffffffffffffffff, 0xfd000001000000000000000000000002, 0xfe80000000000000505400fffe00000a } ip6 length 32 @th,192,16 0x0201 @th,208,48 0x52540000000a accept
		# router advertisements and redirects (a VM is not a router), forged solicitations and advertisements
		counter name "spoofed_ipv6" drop
	}
	chain to_vm {
		type filter hook egress device "cvm-6" priority -500; policy drop;
		ether type ip6 jump ip6_to_vm
		counter name "other_denied" drop
	}
	chain ip6_to_vm {
		# MLD (queries, other nodes' reports), never needed
		ip6 nexthdr 0 ip6 daddr ff02::/16 counter name "other_denied" drop
		# extension headers (fragments and routing headers among them) never pass
		ip6 nexthdr != { tcp, udp, ipv6-icmp } counter name "ingress_denied_ipv6" drop
		# neighbour discovery for its addresses, from the link only (hop limit 255)
		icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 ip6 daddr @nd6 accept
		# path MTU discovery: packet too big from any router, about a packet the guest sent
		icmpv6 type packet-too-big ip6 daddr @own6 @th,128,128 { 0x20010db8000500000000000000000000-0x20010db800050000ffffffffffffffff, 0xfd000001000000000000000000000002, 0xfe80000000000000505400fffe00000a } accept
		ip6 daddr != @own6 counter name "ingress_denied_ipv6" drop
		# ingress[0]: cidr fd00:1::/64 tcp ports { 8080 }
		ip6 saddr fd00:1::/64 tcp dport { 8080 } accept
		# replies to egress[0]: vm db tcp ports { 5432 }
		ip6 saddr @vm6_db tcp sport { 5432 } tcp dport 32768-65535 tcp flags & (syn | ack) != syn accept
		# replies to egress[1]: cidr fd00:9::/48 udp ports { 53 }
		ip6 saddr fd00:9::/48 udp sport { 53 } udp dport 32768-65535 accept
		# replies to egress[2]: cidr fd00:1::1/128 icmpv6
		ip6 saddr fd00:1::1/128 icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-reply } accept
		counter name "ingress_denied_ipv6" drop
	}
}
"#;

    #[test]
    fn the_ipv6_ruleset_matches_the_reviewed_golden_text() {
        let t: NetworkPolicyToml = toml::from_str(
            r#"
name = "web-6"
[[interfaces]]
tap = "cvm-6"
mac = "52:54:00:00:00:0a"
addresses = ["fd00:1::2", "2001:db8:5::/64"]
egress = [
  { vm = "db", proto = "tcp", ports = [5432] },
  { cidr = "fd00:9::/48", proto = "udp", ports = [53] },
  { cidr = "fd00:1::1", proto = "icmpv6" },
]
ingress = [{ cidr = "fd00:1::/64", proto = "tcp", ports = [8080] }]
"#,
        )
        .unwrap();
        let p = t.validate().unwrap();
        let mut peers = Peers::new();
        peers.insert(
            VmName::parse("db").unwrap(),
            PeerAddrs {
                v4: vec![Ipv4Addr::new(10, 0, 0, 5)],
                v6: vec![
                    Cidr6::parse("fd00:1::5").unwrap(),
                    Cidr6::parse("fe80::1").unwrap(),
                ],
            },
        );
        let got = table_script(&p.name, &p.interfaces[0], &peers, "00112233aabbccdd");
        assert_eq!(got, GOLDEN6, "got:\n{got}");
    }

    #[test]
    fn peer_refresh_replaces_each_named_set_in_one_script() {
        let p = policy();
        let mut peers = Peers::new();
        peers.insert(
            VmName::parse("lb").unwrap(),
            PeerAddrs {
                v4: vec![Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::new(10, 0, 0, 8)],
                v6: vec![],
            },
        );
        let t = table_name(&p.name, &p.interfaces[0].tap);
        let s = peers_script(&p.name, &p.interfaces[0], &peers).unwrap();
        assert_eq!(
            s,
            format!(
                "flush set netdev {t} vm_db\nflush set netdev {t} vm_lb\nadd element netdev {t} vm_lb {{ 10.0.0.8, 10.0.0.9 }}\n"
            )
        );
    }

    #[test]
    fn table_names_are_distinct_for_lookalike_taps_and_vms() {
        let v = |s| VmName::parse(s).unwrap();
        let t = |s| TapName::parse(s).unwrap();
        let a = table_name(&v("a"), &t("tap-0"));
        let b = table_name(&v("a"), &t("tap.0"));
        let c = table_name(&v("a"), &t("tap_0"));
        let d = table_name(&v("b"), &t("tap-0"));
        assert!(a.starts_with("cvm_a_tap_0_"), "{a}");
        for (x, y) in [(&a, &b), (&a, &c), (&b, &c), (&a, &d)] {
            assert_ne!(x, y);
        }
        assert_eq!(a, table_name(&v("a"), &t("tap-0")), "stable across runs");
        // 8 bytes of hash (red-team L7: 4 bytes made collisions affordable).
        let hash = a.rsplit('_').next().unwrap();
        assert_eq!(hash.len(), 16, "{a}");
    }
}
