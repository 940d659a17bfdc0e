//! The policy as written in the VM description (`[network_policy]`, serde structs with
//! `deny_unknown_fields`) and the validated model the ruleset is generated from.
//!
//! Everything that ends up in an nftables script is checked here against a narrow
//! character set (names, taps) or parsed into a typed value (MACs, addresses, CIDRs,
//! ports), so the generated script cannot be steered by the description's text.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Longest VM name.
pub const MAX_NAME: usize = 32;
/// Longest interface name (Linux `IFNAMSIZ` - 1).
pub const MAX_TAP: usize = 15;

/// `[network_policy]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyToml {
    /// This VM's name on this host; other VMs' policies name it (`vm = "NAME"`).
    #[serde(default)]
    pub name: String,
    /// The explicit opt-out of filtering: `unfiltered = true` alone in the section lets
    /// the VM's interfaces run without a policy (debugging only).
    #[serde(default)]
    pub unfiltered: bool,
    /// One entry per VM network interface (tap).
    #[serde(default)]
    pub interfaces: Vec<InterfaceToml>,
}

/// `[[network_policy.interfaces]]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceToml {
    /// The host's tap device of this interface.
    pub tap: String,
    /// The guest's MAC address on it: frames from the tap must carry it.
    pub mac: String,
    /// The guest's addresses on it: IPv4 host addresses (packets and ARP from the tap
    /// must carry one) and IPv6 host addresses or prefixes (`fd00:1::2`,
    /// `fd00:1::/64`: IPv6 from the tap must come from one, or from its link-local
    /// address).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The guest's IPv6 link-local address, when it does not derive it from its MAC
    /// (modified EUI-64, the default) — e.g. a guest with stable-privacy addresses
    /// (RFC 7217). Setting it enables IPv6 on the interface even without other IPv6
    /// addresses.
    pub link_local: Option<String>,
    /// What the guest may reach.
    #[serde(default)]
    pub egress: Vec<RuleToml>,
    /// What may reach the guest.
    #[serde(default)]
    pub ingress: Vec<RuleToml>,
}

/// One allow rule as written: a peer (`cidr` or `vm`), a protocol and ports.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleToml {
    /// The peer's addresses, `10.0.0.0/24` or one address.
    pub cidr: Option<String>,
    /// The peer VM by its `network_policy.name` (resolved while it runs on this host).
    pub vm: Option<String>,
    /// `tcp`, `udp` or `icmp`.
    pub proto: Option<String>,
    /// Ports (tcp/udp): numbers or `"LOW-HIGH"` ranges; omitted: every port.
    pub ports: Option<Vec<PortToml>>,
}

/// A port as written: `8080` or `"8000-8080"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PortToml {
    /// One port.
    Number(i64),
    /// A port or a range as a string.
    Text(String),
}

/// Why a policy is refused; the key is named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {problem}")]
pub struct PolicyError {
    /// The key (`network_policy.interfaces[0].egress[1].ports`).
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

fn err(key: impl Into<String>, problem: impl Into<String>) -> PolicyError {
    PolicyError {
        key: key.into(),
        problem: problem.into(),
    }
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// This VM's name.
    pub name: VmName,
    /// Its interfaces.
    pub interfaces: Vec<Interface>,
}

/// A VM name: 1 to 32 of `a-z 0-9 -`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmName(String);

impl VmName {
    /// Checks `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= MAX_NAME
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-');
        if !ok {
            return Err(format!(
                "`{s}` is not a VM name: 1 to {MAX_NAME} of a-z, 0-9 and `-`, not starting with `-`"
            ));
        }
        Ok(Self(s.to_owned()))
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The name as an nftables identifier (`-` becomes `_`, which a name cannot hold,
    /// so distinct names stay distinct).
    pub fn ident(&self) -> String {
        self.0.replace('-', "_")
    }
}

impl std::fmt::Display for VmName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tap name: 1 to 15 of `A-Z a-z 0-9 _ . -`, not `.`/`..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TapName(String);

impl TapName {
    /// Checks `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= MAX_TAP
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && s != "."
            && s != "..";
        if !ok {
            return Err(format!(
                "`{s}` is not an interface name: 1 to {MAX_TAP} of A-Z, a-z, 0-9, `_`, `.`, `-`"
            ));
        }
        Ok(Self(s.to_owned()))
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TapName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A unicast Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Parses `aa:bb:cc:dd:ee:ff`; refuses multicast/broadcast and all-zero addresses.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || format!("`{s}` is not a MAC address (six hex octets, aa:bb:cc:dd:ee:ff)");
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut m = [0u8; 6];
        for (o, p) in m.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if m[0] & 1 == 1 {
            return Err(format!(
                "`{s}` is a multicast or broadcast MAC address; a guest needs a unicast one"
            ));
        }
        if m == [0; 6] {
            return Err(format!("`{s}` is the all-zero MAC address"));
        }
        Ok(Self(m))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// An IPv4 network with its host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `a.b.c.d` (a /32). Host bits must be clear.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an IPv4 address or CIDR (10.0.0.0/24)"))?;
        let len: u8 = match l {
            None => 32,
            Some(l) => l
                .parse()
                .ok()
                .filter(|n| *n <= 32)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to 32"))?,
        };
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        let bits = u32::from(addr);
        if bits & !mask != 0 {
            return Err(format!(
                "`{s}` has host bits set; did you mean {}/{len}?",
                Ipv4Addr::from(bits & mask)
            ));
        }
        Ok(Self { addr, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// An IPv6 network with its host bits clear (a host is a /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr6 {
    /// The network address.
    pub addr: Ipv6Addr,
    /// The prefix length, 0 to 128.
    pub len: u8,
}

impl Cidr6 {
    /// A host.
    pub fn host(addr: Ipv6Addr) -> Self {
        Self { addr, len: 128 }
    }

    fn mask(len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(len))
        }
    }

    /// Parses `fd00::/64` or `fd00::1` (a /128). Host bits must be clear.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: Ipv6Addr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an IPv6 address or prefix (fd00::/64)"))?;
        let len: u8 = match l {
            None => 128,
            Some(l) => l
                .parse()
                .ok()
                .filter(|n| *n <= 128)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to 128"))?,
        };
        let bits = u128::from(addr);
        let mask = Self::mask(len);
        if bits & !mask != 0 {
            return Err(format!(
                "`{s}` has host bits set; did you mean {}/{len}?",
                Ipv6Addr::from(bits & mask)
            ));
        }
        Ok(Self { addr, len })
    }

    /// The first and last address.
    pub fn range(&self) -> (u128, u128) {
        let lo = u128::from(self.addr);
        (lo, lo | !Self::mask(self.len))
    }

    /// Whether `self` and `o` share an address.
    pub fn overlaps(&self, o: &Cidr6) -> bool {
        let (a, b) = (self.range(), o.range());
        a.0 <= b.1 && b.0 <= a.1
    }
}

impl std::fmt::Display for Cidr6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.len == 128 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

impl Serialize for Cidr6 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr6 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr6::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A peer network of a rule, IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Net {
    /// IPv4.
    V4(Cidr),
    /// IPv6.
    V6(Cidr6),
}

impl Net {
    /// Parses an IPv4 or an IPv6 address or network (by the `:` an IPv6 one has).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.contains(':') {
            Cidr6::parse(s).map(Net::V6)
        } else {
            Cidr::parse(s).map(Net::V4)
        }
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Net::V4(c) => c.fmt(f),
            Net::V6(c) => write!(f, "{}/{}", c.addr, c.len),
        }
    }
}

/// The shortest IPv6 prefix an interface may hold (a SLAAC /64 with temporary
/// addresses, RFC 8981): anything shorter lets one guest claim a whole site.
pub const MIN_PREFIX6: u8 = 64;

/// The link-local address a guest derives from `mac` (modified EUI-64, RFC 4291
/// appendix A, as Linux does with `addr_gen_mode` 0).
pub fn eui64_link_local(mac: Mac) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]]),
    )
}

/// An interface of the VM and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The tap.
    pub tap: TapName,
    /// The guest's MAC.
    pub mac: Mac,
    /// The guest's IPv4 addresses (none: IPv4 and ARP from the guest are dropped).
    pub addresses: Vec<Ipv4Addr>,
    /// The guest's IPv6 addresses and prefixes, its link-local address included (empty:
    /// IPv6 is dropped both ways).
    pub addresses6: Vec<Cidr6>,
    /// What the guest may reach.
    pub egress: Vec<Rule>,
    /// What may reach the guest.
    pub ingress: Vec<Rule>,
}

/// The other end of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Addresses.
    Cidr(Net),
    /// A VM on this host by name; its addresses while it runs, nothing otherwise.
    Vm(VmName),
}

/// A protocol of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (IPv4).
    Icmp,
    /// ICMPv6: echo and errors (never neighbour discovery, which the anti-spoofing
    /// rules handle).
    Icmpv6,
}

impl Proto {
    /// The nftables keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmpv6 => "icmpv6",
        }
    }
}

/// An inclusive port range (`lo == hi` for one port), 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The peer.
    pub peer: Peer,
    /// The protocol.
    pub proto: Proto,
    /// The ports (tcp/udp); empty means every port.
    pub ports: Vec<PortRange>,
}

fn port_number(n: i64, key: &str) -> Result<u16, PolicyError> {
    match n {
        0 => Err(err(key, "port 0 is not a port")),
        1..=65535 => Ok(n as u16),
        _ => Err(err(key, format!("port {n} is out of range (1 to 65535)"))),
    }
}

fn parse_port(p: &PortToml, key: &str) -> Result<PortRange, PolicyError> {
    match p {
        PortToml::Number(n) => {
            let n = port_number(*n, key)?;
            Ok(PortRange { lo: n, hi: n })
        }
        PortToml::Text(s) => {
            let num = |t: &str| -> Result<u16, PolicyError> {
                let n: i64 = t
                    .trim()
                    .parse()
                    .map_err(|_| err(key, format!("`{s}` is not a port or a LOW-HIGH range")))?;
                port_number(n, key)
            };
            let (lo, hi) = match s.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let n = num(s)?;
                    (n, n)
                }
            };
            if lo > hi {
                return Err(err(
                    key,
                    format!("the range `{s}` is reversed; did you mean {hi}-{lo}?"),
                ));
            }
            Ok(PortRange { lo, hi })
        }
    }
}

fn parse_rule(r: &RuleToml, key: &str, own: &VmName) -> Result<Rule, PolicyError> {
    let peer = match (&r.cidr, &r.vm) {
        (Some(c), None) => {
            Peer::Cidr(Net::parse(c.trim()).map_err(|e| err(format!("{key}.cidr"), e))?)
        }
        (None, Some(v)) => {
            let n = VmName::parse(v).map_err(|e| err(format!("{key}.vm"), e))?;
            if &n == own {
                return Err(err(
                    format!("{key}.vm"),
                    format!("`{n}` is this VM; a rule names another VM"),
                ));
            }
            Peer::Vm(n)
        }
        (Some(_), Some(_)) => {
            return Err(err(key, "give either `cidr` or `vm`, not both"));
        }
        (None, None) => {
            return Err(err(
                key,
                "a rule needs a peer: `cidr = \"…\"` or `vm = \"…\"`",
            ));
        }
    };
    let proto = match r.proto.as_deref() {
        Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        Some("icmp") => Proto::Icmp,
        Some("icmpv6") => Proto::Icmpv6,
        Some(p) => {
            return Err(err(
                format!("{key}.proto"),
                format!("unknown protocol `{p}` (expected tcp, udp, icmp or icmpv6)"),
            ))
        }
        None => {
            return Err(err(
                format!("{key}.proto"),
                "a rule needs a protocol: tcp, udp, icmp or icmpv6",
            ))
        }
    };
    match (&peer, proto) {
        (Peer::Cidr(Net::V6(_)), Proto::Icmp) => {
            return Err(err(
                format!("{key}.proto"),
                "icmp is IPv4; an IPv6 peer needs `icmpv6`",
            ))
        }
        (Peer::Cidr(Net::V4(_)), Proto::Icmpv6) => {
            return Err(err(
                format!("{key}.proto"),
                "icmpv6 is IPv6; an IPv4 peer needs `icmp`",
            ))
        }
        _ => {}
    }
    let ports = match &r.ports {
        None => Vec::new(),
        Some(_) if matches!(proto, Proto::Icmp | Proto::Icmpv6) => {
            return Err(err(
                format!("{key}.ports"),
                format!("{} has no ports", proto.as_str()),
            ));
        }
        Some(v) if v.is_empty() => {
            return Err(err(
                format!("{key}.ports"),
                "an empty port list would allow nothing; omit `ports` to allow every port, or remove the rule",
            ));
        }
        Some(v) => v
            .iter()
            .enumerate()
            .map(|(i, p)| parse_port(p, &format!("{key}.ports[{i}]")))
            .collect::<Result<_, _>>()?,
    };
    Ok(Rule { peer, proto, ports })
}

/// Refuses IPv6 addresses no guest can send from: unspecified, loopback, multicast,
/// IPv4-mapped.
fn check_unicast6(a: Ipv6Addr, text: &str) -> Result<(), String> {
    if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.to_ipv4_mapped().is_some() {
        return Err(format!("`{text}` cannot be a guest's address"));
    }
    Ok(())
}

impl NetworkPolicyToml {
    /// Whether this section is the opt-out `unfiltered = true` and nothing else.
    pub fn is_unfiltered_opt_out(&self) -> bool {
        self.unfiltered && self.name.is_empty() && self.interfaces.is_empty()
    }

    /// Validates the whole section.
    pub fn validate(&self) -> Result<NetworkPolicy, PolicyError> {
        let base = "network_policy";
        if self.unfiltered {
            return Err(err(
                format!("{base}.unfiltered"),
                "`unfiltered = true` turns filtering off; it cannot be combined with a name \
                 or interfaces",
            ));
        }
        let name = VmName::parse(&self.name).map_err(|e| err(format!("{base}.name"), e))?;
        if self.interfaces.is_empty() {
            return Err(err(
                format!("{base}.interfaces"),
                "a policy needs at least one interface",
            ));
        }
        let mut interfaces: Vec<Interface> = Vec::new();
        for (i, t) in self.interfaces.iter().enumerate() {
            let key = format!("{base}.interfaces[{i}]");
            let tap = TapName::parse(&t.tap).map_err(|e| err(format!("{key}.tap"), e))?;
            if interfaces.iter().any(|x| x.tap == tap) {
                return Err(err(
                    format!("{key}.tap"),
                    format!("`{tap}` has two policies"),
                ));
            }
            let mac = Mac::parse(t.mac.trim()).map_err(|e| err(format!("{key}.mac"), e))?;
            if t.addresses.is_empty() && t.link_local.is_none() {
                return Err(err(
                    format!("{key}.addresses"),
                    "an interface needs the guest's address (IPv4 and/or IPv6: the only sources it may send from)",
                ));
            }
            let mut addresses = Vec::new();
            let mut addresses6: Vec<Cidr6> = Vec::new();
            for (j, a) in t.addresses.iter().enumerate() {
                let k = format!("{key}.addresses[{j}]");
                match Net::parse(a.trim()).map_err(|e| err(&k, e))? {
                    Net::V4(c) => {
                        if c.len != 32 {
                            return Err(err(
                                &k,
                                format!("`{a}`: give the guest's IPv4 address, not a network"),
                            ));
                        }
                        let ip = c.addr;
                        if ip.is_unspecified()
                            || ip.is_multicast()
                            || ip.is_broadcast()
                            || ip.is_loopback()
                        {
                            return Err(err(&k, format!("`{a}` cannot be a guest's address")));
                        }
                        if !addresses.contains(&ip) {
                            addresses.push(ip);
                        }
                    }
                    Net::V6(c) => {
                        if c.len < MIN_PREFIX6 {
                            return Err(err(
                                &k,
                                format!(
                                    "`{a}`: an IPv6 prefix of a guest is at most a /{MIN_PREFIX6} \
                                     (prefix length {MIN_PREFIX6} to 128)"
                                ),
                            ));
                        }
                        check_unicast6(c.addr, a).map_err(|e| err(&k, e))?;
                        if c.addr.segments()[0] & 0xffc0 == 0xfe80 {
                            return Err(err(
                                &k,
                                format!("`{a}` is link-local; give it as `link_local`"),
                            ));
                        }
                        if let Some(o) = addresses6.iter().find(|o| o.overlaps(&c)) {
                            return Err(err(&k, format!("`{a}` overlaps {o}")));
                        }
                        addresses6.push(c);
                    }
                }
            }
            if !addresses6.is_empty() || t.link_local.is_some() {
                let k = format!("{key}.link_local");
                let ll = match &t.link_local {
                    None => eui64_link_local(mac),
                    Some(s) => {
                        let c = Cidr6::parse(s.trim()).map_err(|e| err(&k, e))?;
                        if c.len != 128 || c.addr.segments()[..4] != [0xfe80, 0, 0, 0] {
                            return Err(err(
                                &k,
                                format!("`{s}` is not a link-local host address (fe80::/64)"),
                            ));
                        }
                        check_unicast6(c.addr, s).map_err(|e| err(&k, e))?;
                        c.addr
                    }
                };
                addresses6.insert(0, Cidr6::host(ll));
            }
            let rules = |v: &[RuleToml], dir: &str| -> Result<Vec<Rule>, PolicyError> {
                let rules: Vec<Rule> = v
                    .iter()
                    .enumerate()
                    .map(|(j, r)| parse_rule(r, &format!("{key}.{dir}[{j}]"), &name))
                    .collect::<Result<_, _>>()?;
                for (j, r) in rules.iter().enumerate() {
                    let v4 = matches!(r.peer, Peer::Cidr(Net::V4(_))) || r.proto == Proto::Icmp;
                    let v6 = matches!(r.peer, Peer::Cidr(Net::V6(_))) || r.proto == Proto::Icmpv6;
                    let problem = if v4 && addresses.is_empty() {
                        Some("an IPv4 rule, but the interface has no IPv4 address")
                    } else if v6 && addresses6.is_empty() {
                        Some("an IPv6 rule, but the interface has no IPv6 address")
                    } else {
                        None
                    };
                    if let Some(p) = problem {
                        return Err(err(format!("{key}.{dir}[{j}]"), p));
                    }
                }
                Ok(rules)
            };
            let egress = rules(&t.egress, "egress")?;
            let ingress = rules(&t.ingress, "ingress")?;
            interfaces.push(Interface {
                tap,
                mac,
                addresses,
                addresses6,
                egress,
                ingress,
            });
        }
        Ok(NetworkPolicy { name, interfaces })
    }
}

impl NetworkPolicy {
    /// The VMs this policy names, sorted, once each.
    pub fn peer_vms(&self) -> Vec<VmName> {
        let mut v: Vec<VmName> = self
            .interfaces
            .iter()
            .flat_map(|i| i.egress.iter().chain(&i.ingress))
            .filter_map(|r| match &r.peer {
                Peer::Vm(n) => Some(n.clone()),
                Peer::Cidr(_) => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Result<NetworkPolicy, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct F {
            network_policy: NetworkPolicyToml,
        }
        let f: F = toml::from_str(text).map_err(|e| e.to_string())?;
        f.network_policy.validate().map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
[network_policy]
name = "web-a"
[[network_policy.interfaces]]
tap = "cvm-a0"
mac = "52:54:00:00:00:0A"
addresses = ["10.0.0.2"]
egress = [
  { vm = "db", proto = "tcp", ports = [5432] },
  { cidr = "10.9.0.0/16", proto = "udp", ports = ["53", "5000-5010"] },
  { cidr = "192.0.2.7", proto = "icmp" },
]
ingress = [{ vm = "lb", proto = "tcp", ports = [8080] }]
"#;

    #[test]
    fn a_policy_parses_into_the_validated_model() {
        let p = policy(GOOD).unwrap();
        assert_eq!(p.name.as_str(), "web-a");
        let i = &p.interfaces[0];
        assert_eq!(i.tap.as_str(), "cvm-a0");
        assert_eq!(i.mac.to_string(), "52:54:00:00:00:0a");
        assert_eq!(i.addresses, vec![Ipv4Addr::new(10, 0, 0, 2)]);
        assert_eq!(
            i.egress[0],
            Rule {
                peer: Peer::Vm(VmName::parse("db").unwrap()),
                proto: Proto::Tcp,
                ports: vec![PortRange { lo: 5432, hi: 5432 }],
            }
        );
        assert_eq!(
            i.egress[1].ports,
            vec![
                PortRange { lo: 53, hi: 53 },
                PortRange { lo: 5000, hi: 5010 }
            ]
        );
        assert_eq!(
            i.egress[2].peer,
            Peer::Cidr(Net::parse("192.0.2.7/32").unwrap())
        );
        assert_eq!(
            p.peer_vms(),
            vec![VmName::parse("db").unwrap(), VmName::parse("lb").unwrap()]
        );
    }

    #[test]
    fn bad_policies_are_refused_with_the_key_named() {
        let base = "[network_policy]\nname = \"a\"\n[[network_policy.interfaces]]\ntap = \"t0\"\nmac = \"52:54:00:00:00:01\"\naddresses = [\"10.0.0.2\"]\n";
        let cases: &[(&str, &str, &str)] = &[
            ("egres = []\n", "egres", "unknown"),
            (
                "egress = [{ cidr = \"10.0.0.1/24\", proto = \"tcp\" }]\n",
                "egress[0].cidr",
                "did you mean 10.0.0.0/24",
            ),
            (
                "egress = [{ cidr = \"10.0.0.0/33\", proto = \"tcp\" }]\n",
                "egress[0].cidr",
                "0 to 32",
            ),
            (
                "egress = [{ cidr = \"10.0.0\", proto = \"tcp\" }]\n",
                "egress[0].cidr",
                "not an IPv4",
            ),
            (
                "egress = [{ cidr = \"fd00::/8\", proto = \"tcp\" }]\n",
                "egress[0]",
                "no IPv6 address",
            ),
            (
                "egress = [{ vm = \"b\", proto = \"icmpv6\" }]\n",
                "egress[0]",
                "no IPv6 address",
            ),
            (
                "egress = [{ cidr = \"fd00::1/64\", proto = \"tcp\" }]\n",
                "egress[0].cidr",
                "did you mean fd00::/64",
            ),
            (
                "egress = [{ cidr = \"10.0.0.0/8\", proto = \"icmpv6\" }]\n",
                "egress[0].proto",
                "needs `icmp`",
            ),
            (
                "egress = [{ cidr = \"fd00::/8\", proto = \"icmp\" }]\n",
                "egress[0].proto",
                "needs `icmpv6`",
            ),
            (
                "egress = [{ cidr = \"10.0.0.0/8\", proto = \"tcp\", ports = [0] }]\n",
                "ports[0]",
                "port 0",
            ),
            (
                "egress = [{ cidr = \"10.0.0.0/8\", proto = \"tcp\", ports = [\"90-80\"] }]\n",
                "ports[0]",
                "reversed",
            ),
            (
                "egress = [{ cidr = \"10.0.0.0/8\", proto = \"tcp\", ports = [70000] }]\n",
                "ports[0]",
                "out of range",
            ),
            (
                "egress = [{ cidr = \"10.0.0.0/8\", proto = \"tcp\", ports = [] }]\n",
                "ports",
                "allow nothing",
            ),
            (
                "egress = [{ cidr = \"10.0.0.0/8\", proto = \"icmp\", ports = [1] }]\n",
                "ports",
                "no ports",
            ),
            (
                "egress = [{ cidr = \"10.0.0.0/8\", proto = \"sctp\" }]\n",
                "proto",
                "unknown protocol",
            ),
            (
                "egress = [{ cidr = \"10.0.0.0/8\" }]\n",
                "proto",
                "needs a protocol",
            ),
            (
                "egress = [{ proto = \"tcp\" }]\n",
                "egress[0]",
                "needs a peer",
            ),
            (
                "egress = [{ vm = \"b\", cidr = \"10.0.0.0/8\", proto = \"tcp\" }]\n",
                "egress[0]",
                "not both",
            ),
            (
                "egress = [{ vm = \"a\", proto = \"tcp\" }]\n",
                "vm",
                "this VM",
            ),
            (
                "egress = [{ vm = \"B_\", proto = \"tcp\" }]\n",
                "vm",
                "not a VM name",
            ),
            (
                "egress = [{ vm = \"b\", proto = \"tcp\", port = 1 }]\n",
                "port",
                "unknown",
            ),
        ];
        for (extra, key, what) in cases {
            let e = policy(&format!("{base}{extra}")).unwrap_err();
            assert!(e.contains(key) && e.contains(what), "{extra}: {e}");
        }
        let iface = |tap: &str, mac: &str, addrs: &str| {
            format!("[network_policy]\nname = \"a\"\n[[network_policy.interfaces]]\ntap = \"{tap}\"\nmac = \"{mac}\"\naddresses = {addrs}\n")
        };
        for (text, what) in [
            (
                iface("t0", "52:54:00:00:00:01", "[]"),
                "needs the guest's address",
            ),
            (
                iface("t0", "52:54:00:00:00:01", "[\"10.0.0.0/24\"]"),
                "not a network",
            ),
            (
                iface("t0", "52:54:00:00:00:01", "[\"0.0.0.0\"]"),
                "cannot be",
            ),
            (
                iface("t0", "52:54:00:00:00:01", "[\"224.0.0.1\"]"),
                "cannot be",
            ),
            (
                iface("t0", "ff:ff:ff:ff:ff:ff", "[\"10.0.0.2\"]"),
                "multicast",
            ),
            (
                iface("t0", "00:00:00:00:00:00", "[\"10.0.0.2\"]"),
                "all-zero",
            ),
            (iface("t0", "52:54:00:00:00", "[\"10.0.0.2\"]"), "not a MAC"),
            (
                iface(
                    "t0\\\"; flush ruleset",
                    "52:54:00:00:00:01",
                    "[\"10.0.0.2\"]",
                ),
                "not an interface name",
            ),
            (
                iface("sixteen-chars-xx", "52:54:00:00:00:01", "[\"10.0.0.2\"]"),
                "not an interface name",
            ),
            (
                "[network_policy]\nname = \"a\"\n".into(),
                "at least one interface",
            ),
            (
                "[network_policy]\nname = \"-a\"\ninterfaces = []\n".into(),
                "not a VM name",
            ),
        ] {
            let e = policy(&text).unwrap_err();
            assert!(e.contains(what), "{text}: {e}");
        }
        let two = format!(
            "{}[[network_policy.interfaces]]\ntap = \"t0\"\nmac = \"52:54:00:00:00:02\"\naddresses = [\"10.0.0.3\"]\n",
            iface("t0", "52:54:00:00:00:01", "[\"10.0.0.2\"]")
        );
        assert!(policy(&two).unwrap_err().contains("two policies"));
    }

    #[test]
    fn ipv6_addresses_prefixes_and_link_local_parse_and_bad_ones_are_refused() {
        let iface = |addrs: &str, extra: &str| {
            format!("[network_policy]\nname = \"a\"\n[[network_policy.interfaces]]\ntap = \"t0\"\nmac = \"52:54:00:00:00:0a\"\naddresses = {addrs}\n{extra}")
        };
        // Mixed families; the EUI-64 link-local address is added (RFC 4291 appendix A).
        let p = policy(&iface(
            "[\"10.0.0.2\", \"fd00:1::2\", \"2001:db8::/64\"]",
            "egress = [{ vm = \"b\", proto = \"tcp\" }, { cidr = \"fd00::/8\", proto = \"icmpv6\" }]\n",
        ))
        .unwrap();
        let i = &p.interfaces[0];
        assert_eq!(i.addresses, vec![Ipv4Addr::new(10, 0, 0, 2)]);
        let six: Vec<String> = i.addresses6.iter().map(ToString::to_string).collect();
        assert_eq!(six, ["fe80::5054:ff:fe00:a", "fd00:1::2", "2001:db8::/64"]);
        // IPv6 only, and an explicit link-local address (stable-privacy guests).
        let p = policy(&iface("[\"fd00:1::2\"]", "link_local = \"fe80::1234\"\n")).unwrap();
        assert!(p.interfaces[0].addresses.is_empty());
        assert_eq!(p.interfaces[0].addresses6[0].to_string(), "fe80::1234");
        // Without IPv6 in the description, the interface has no IPv6 at all.
        let p = policy(&iface("[\"10.0.0.2\"]", "")).unwrap();
        assert!(p.interfaces[0].addresses6.is_empty());
        for (addrs, extra, what) in [
            ("[\"fd00::/48\"]", "", "at most a /64"),
            ("[\"fd00::1/64\"]", "", "did you mean fd00::/64"),
            ("[\"ff02::1\"]", "", "cannot be"),
            ("[\"::\"]", "", "cannot be"),
            ("[\"::1\"]", "", "cannot be"),
            ("[\"::ffff:10.0.0.2\"]", "", "cannot be"),
            ("[\"fe80::2\"]", "", "give it as `link_local`"),
            ("[\"fd00::/64\", \"fd00::2\"]", "", "overlaps"),
            (
                "[\"fd00::2\"]",
                "link_local = \"fd00::3\"\n",
                "not a link-local",
            ),
            (
                "[\"fd00::2\"]",
                "link_local = \"fe80::/64\"\n",
                "not a link-local",
            ),
            (
                "[\"fd00::2\"]",
                "egress = [{ cidr = \"10.0.0.0/8\", proto = \"tcp\" }]\n",
                "no IPv4 address",
            ),
            (
                "[\"fd00::2\"]",
                "ingress = [{ vm = \"b\", proto = \"icmp\" }]\n",
                "no IPv4 address",
            ),
            (
                "[\"10.0.0.2\"]",
                "ingress = [{ cidr = \"fd00::/8\", proto = \"udp\" }]\n",
                "no IPv6 address",
            ),
        ] {
            let e = policy(&iface(addrs, extra)).unwrap_err();
            assert!(e.contains(what), "{addrs} {extra}: {e}");
        }
    }

    #[test]
    fn names_map_to_distinct_identifiers() {
        assert_eq!(VmName::parse("web-a").unwrap().ident(), "web_a");
        assert!(VmName::parse("web_a").is_err(), "`_` is not in a name");
        assert!(VmName::parse(&"a".repeat(33)).is_err());
        assert!(TapName::parse("..").is_err());
        assert!(TapName::parse("tap0.1").is_ok());
    }
}
