//! Host side of guest networking: the tap backend ([`tap`]), the per-interface token
//! buckets ([`rate_limiter`]) and the description of a VM's interface that the rest of
//! `cvm` consumes ([`NetConfig`], [`NetInterface`]).
//!
//! The virtio-net device model itself is [`crate::devices::virtio::net`].
//!
//! # Who knows what about an interface
//! An operator states each interface as `--net tap=NAME|create=NAME[,mac=…][,ip=…]
//! [,rx-bps=…]…` or as a `[[net]]` table of the VM description; `cvm` resolves it into a
//! [`NetConfig`] (a MAC is generated when none is given, so the value is always known).
//! [`NetConfig::interface`] is the small, stable summary the host's network policy
//! consumes: the tap's name, the guest's MAC and the guest's address. The tap is opened
//! ([`tap::Tap::open`]) before the VMM enters its jail; the VMM only reads and writes
//! the open descriptor.

pub mod rate_limiter;
pub mod tap;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

pub use rate_limiter::{RateLimit, TokenBucket};
pub use tap::{Tap, TapError};

/// Why a network setting is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetValueError {
    /// Not a MAC address.
    #[error("`{0}` is not a MAC address (six hex pairs: 02:00:00:00:00:01)")]
    Mac(String),
    /// A multicast MAC cannot be an interface's address.
    #[error("`{0}` is a multicast MAC address; a guest interface needs a unicast one")]
    MulticastMac(String),
    /// Not ADDR/PREFIX.
    #[error("`{0}` is not an address with a prefix length (10.0.0.2/24, fd00::2/64)")]
    Cidr(String),
    /// Not a valid interface name.
    #[error(
        "`{0}` is not a valid interface name (1 to 15 characters; letters, digits, `-`, `_`, `.`)"
    )]
    IfName(String),
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally administered unicast address (`x2:…`, `x6:…`, `xA:…`, `xE:…`).
    pub fn random_local() -> Self {
        let mut b = [0u8; 6];
        // SAFETY: getrandom writes at most `b.len()` bytes into the buffer we own.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            // Never with a working kernel; fall back to time and pid bits, still unique
            // enough per host for an unnamed interface.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()) << 20;
            b.copy_from_slice(&t.to_le_bytes()[..6]);
        }
        b[0] = (b[0] & 0xfe) | 0x02;
        Self(b)
    }
}

impl FromStr for MacAddr {
    type Err = NetValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetValueError::Mac(s.to_owned());
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut b = [0u8; 6];
        for (d, p) in b.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *d = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if b[0] & 1 != 0 {
            return Err(NetValueError::MulticastMac(s.to_owned()));
        }
        Ok(Self(b))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An address with a prefix length: the guest's address on its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpCidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length (0..=32 for IPv4, 0..=128 for IPv6).
    pub prefix: u8,
}

impl FromStr for IpCidr {
    type Err = NetValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetValueError::Cidr(s.to_owned());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max || addr.is_unspecified() || addr.is_multicast() {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which tap an interface uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSpec {
    /// An existing persistent tap (`ip tuntap add NAME mode tap`), left in place when the
    /// VM stops.
    Existing(String),
    /// A tap `cvm` creates (it must not exist yet), brings up, and that disappears when
    /// the VMM exits (it is not persistent: the kernel deletes it with its last
    /// descriptor).
    Create(String),
}

impl TapSpec {
    /// The interface name.
    pub fn name(&self) -> &str {
        match self {
            TapSpec::Existing(n) | TapSpec::Create(n) => n,
        }
    }
}

/// Checks a Linux interface name (IFNAMSIZ - 1 bytes, no `/`, whitespace or `:`).
pub fn check_ifname(name: &str) -> Result<(), NetValueError> {
    let ok = !name.is_empty()
        && name.len() < tap::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(NetValueError::IfName(name.to_owned()))
    }
}

/// Rate limits of one interface (bytes and packets per second, each direction seen from
/// the guest: `rx` is host → guest, `tx` guest → host). `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Host → guest, bits per second.
    pub rx_bps: Option<u64>,
    /// Guest → host, bits per second.
    pub tx_bps: Option<u64>,
    /// Host → guest, packets per second.
    pub rx_pps: Option<u64>,
    /// Guest → host, packets per second.
    pub tx_pps: Option<u64>,
}

/// One guest network interface, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap backend.
    pub tap: TapSpec,
    /// The guest's MAC address (offered as VIRTIO_NET_F_MAC).
    pub mac: MacAddr,
    /// The guest's address, if the operator states it (the policy's anti-spoofing and
    /// allow rules use it; the device does not).
    pub ip: Option<IpCidr>,
    /// Rate limits.
    pub limits: RateLimits,
}

/// What the host's network policy needs to know about a VM's interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetInterface {
    /// The host-side tap interface name.
    pub tap: String,
    /// Whether `cvm` created the tap (and it disappears with the VMM).
    pub owned: bool,
    /// The only source MAC the guest may use.
    pub mac: MacAddr,
    /// The only source address the guest may use, if stated.
    pub ip: Option<IpCidr>,
}

impl NetConfig {
    /// The summary the network policy consumes.
    pub fn interface(&self) -> NetInterface {
        NetInterface {
            tap: self.tap.name().to_owned(),
            owned: matches!(self.tap, TapSpec::Create(_)),
            mac: self.mac,
            ip: self.ip,
        }
    }
}

/// A resolved interface with its tap open (opened before the jail).
#[derive(Debug)]
pub struct NetAttachment {
    /// The interface.
    pub config: NetConfig,
    /// The open tap.
    pub tap: Tap,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_print_and_refuse_multicast() {
        let m: MacAddr = "02:AA:bb:00:01:ff".parse().unwrap();
        assert_eq!(m.to_string(), "02:aa:bb:00:01:ff");
        assert_eq!("02-aa-bb-00-01-ff".parse::<MacAddr>().unwrap(), m);
        assert!(matches!(
            "01:00:5e:00:00:01".parse::<MacAddr>(),
            Err(NetValueError::MulticastMac(_))
        ));
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "0g:00:00:00:00:00",
            "2:0:0:0:0:0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        let r = MacAddr::random_local();
        assert_eq!(r.0[0] & 3, 2, "locally administered unicast");
        assert_ne!(MacAddr::random_local(), r);
    }

    #[test]
    fn cidrs_and_interface_names_are_checked() {
        let c: IpCidr = "10.0.0.2/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.2/24");
        assert_eq!("fd00::2/64".parse::<IpCidr>().unwrap().prefix, 64);
        for bad in [
            "10.0.0.2",
            "10.0.0.2/33",
            "fd00::2/129",
            "0.0.0.0/0",
            "224.0.0.1/32",
            "x/1",
        ] {
            assert!(bad.parse::<IpCidr>().is_err(), "{bad}");
        }
        assert!(check_ifname("tap0").is_ok());
        assert!(check_ifname("cvm-vm_1.a").is_ok());
        for bad in ["", "a/b", "0123456789abcdef", "..", "a b", "eth0:1"] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }
}
