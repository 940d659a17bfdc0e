//! `--net` and the `[[net]]` tables of the VM description: guest network interfaces on
//! tap devices (virtio-net), with optional rate limits.
//!
//! ```text
//! --net tap=NAME|create=NAME[,mac=MAC][,ip=ADDR/PREFIX][,rx-bps=RATE][,tx-bps=RATE]
//!       [,rx-pps=RATE][,tx-pps=RATE]
//! ```
//!
//! - `tap=NAME`: an existing persistent tap (`ip tuntap add NAME mode tap [user U]`),
//!   left in place when the VM stops; `create=NAME`: `cvm` creates the tap (the name
//!   must be free), brings it up, and it disappears when the VMM exits. Either way the
//!   tap is opened before the VMM enters its jail.
//! - `mac=`: the guest's MAC (a random locally administered one otherwise, logged at
//!   start); `ip=`: the guest's address, for the host's network policy (the guest
//!   configures its own address; the device never looks at IP).
//! - `rx-bps`/`tx-bps`: bits per second, `rx-pps`/`tx-pps`: packets per second, with
//!   decimal units (`100M`, `20k`); `rx` is host → guest, `tx` guest → host.
//!
//! The flags replace the file's `[[net]]` tables (the override is logged).

use std::collections::HashSet;

use cli_support::units::parse_rate;
use host_vmm::net::{
    IpCidr, MacAddr, NetAttachment, NetConfig, RateLimits, Tap, TapError, TapSpec,
};
use serde::Deserialize;

use super::description::{DescriptionError, Loaded};

/// Why a `--net` value or a `[[net]]` table is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetArgError {
    /// Neither `tap=` nor `create=`, or both.
    #[error("`{0}`: name exactly one tap with tap=NAME (an existing tap) or create=NAME (a tap cvm creates)")]
    Tap(String),
    /// An unknown key.
    #[error("`{0}`: unknown network option `{1}` (expected tap, create, mac, ip, rx-bps, tx-bps, rx-pps, tx-pps)")]
    Unknown(String, String),
    /// A key given twice.
    #[error("`{0}`: `{1}` is given twice")]
    Twice(String, String),
    /// A bad value.
    #[error("`{0}`: {1}")]
    Value(String, String),
    /// Two interfaces on one tap, or with one MAC.
    #[error("{0} is used by two network interfaces")]
    Duplicate(String),
}

/// One `--net` value or `[[net]]` table, before a MAC is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetArg {
    /// The tap.
    pub tap: TapSpec,
    /// The guest's MAC, if given.
    pub mac: Option<MacAddr>,
    /// The guest's address, if given.
    pub ip: Option<IpCidr>,
    /// Rate limits.
    pub limits: RateLimits,
}

fn rate(spec: &str, key: &str, v: &str) -> Result<u64, NetArgError> {
    let r = parse_rate(v).map_err(|e| NetArgError::Value(spec.into(), format!("{key}: {e}")))?;
    if r == 0 {
        return Err(NetArgError::Value(
            spec.into(),
            format!("{key}=0 would stop all traffic; leave it out for no limit"),
        ));
    }
    Ok(r)
}

/// Parses a `--net` value.
pub fn parse_net(s: &str) -> Result<NetArg, NetArgError> {
    let mut seen = HashSet::new();
    let (mut tap, mut mac, mut ip) = (None, None, None);
    let mut limits = RateLimits::default();
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| NetArgError::Unknown(s.into(), part.into()))?;
        if !seen.insert(k.to_owned()) {
            return Err(NetArgError::Twice(s.into(), k.into()));
        }
        let value = |e: String| NetArgError::Value(s.into(), e);
        match k {
            "tap" | "create" => {
                if tap.is_some() {
                    return Err(NetArgError::Tap(s.into()));
                }
                host_vmm::net::check_ifname(v).map_err(|e| value(e.to_string()))?;
                tap = Some(if k == "tap" {
                    TapSpec::Existing(v.into())
                } else {
                    TapSpec::Create(v.into())
                });
            }
            "mac" => mac = Some(v.parse::<MacAddr>().map_err(|e| value(e.to_string()))?),
            "ip" => ip = Some(v.parse::<IpCidr>().map_err(|e| value(e.to_string()))?),
            "rx-bps" => limits.rx_bps = Some(rate(s, k, v)?),
            "tx-bps" => limits.tx_bps = Some(rate(s, k, v)?),
            "rx-pps" => limits.rx_pps = Some(rate(s, k, v)?),
            "tx-pps" => limits.tx_pps = Some(rate(s, k, v)?),
            _ => return Err(NetArgError::Unknown(s.into(), k.into())),
        }
    }
    Ok(NetArg {
        tap: tap.ok_or_else(|| NetArgError::Tap(s.into()))?,
        mac,
        ip,
        limits,
    })
}

/// A rate in the file: a number or a string with a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RateValue {
    /// Per second.
    Number(u64),
    /// With a unit (`"100M"`).
    Text(String),
}

/// `[[net]]`: one interface (the keys of `--net`, with `_` for `-`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetTable {
    /// An existing persistent tap.
    pub tap: Option<String>,
    /// A tap cvm creates and removes.
    pub create: Option<String>,
    /// The guest's MAC.
    pub mac: Option<String>,
    /// The guest's address with its prefix length.
    pub ip: Option<String>,
    /// Host → guest, bits per second.
    pub rx_bps: Option<RateValue>,
    /// Guest → host, bits per second.
    pub tx_bps: Option<RateValue>,
    /// Host → guest, packets per second.
    pub rx_pps: Option<RateValue>,
    /// Guest → host, packets per second.
    pub tx_pps: Option<RateValue>,
}

impl NetTable {
    /// The table as a `--net` value (one parser for both).
    fn to_arg_string(&self) -> String {
        let mut parts = Vec::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        let r = |v: &Option<RateValue>| {
            v.as_ref().map(|v| match v {
                RateValue::Number(n) => n.to_string(),
                RateValue::Text(t) => t.clone(),
            })
        };
        put("tap", self.tap.clone());
        put("create", self.create.clone());
        put("mac", self.mac.clone());
        put("ip", self.ip.clone());
        put("rx-bps", r(&self.rx_bps));
        put("tx-bps", r(&self.tx_bps));
        put("rx-pps", r(&self.rx_pps));
        put("tx-pps", r(&self.tx_pps));
        parts.join(",")
    }
}

/// The interfaces of a launch: the flags if any (they replace the file's), else the
/// file's `[[net]]` tables; a MAC is generated where none is given. Two interfaces on
/// one tap or with one MAC are refused.
pub fn resolve(
    flags: Vec<NetArg>,
    file: Option<&Loaded>,
) -> Result<Vec<NetConfig>, DescriptionError> {
    let from_file = match file {
        Some(l) => l
            .desc
            .net
            .iter()
            .map(|t| parse_net(&t.to_arg_string()).map_err(|e| l.bad("net", e.to_string())))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let args = if flags.is_empty() {
        from_file
    } else {
        if !from_file.is_empty() {
            tracing::info!(
                event = "override",
                key = "net",
                "overriding net from the description: {from_file:?} -> {flags:?}"
            );
        }
        flags
    };
    let configs: Vec<NetConfig> = args
        .into_iter()
        .map(|a| NetConfig {
            tap: a.tap,
            mac: a.mac.unwrap_or_else(MacAddr::random_local),
            ip: a.ip,
            limits: a.limits,
        })
        .collect();
    check_unique(&configs).map_err(|e| match file {
        Some(l) => l.bad("net", e.to_string()),
        None => DescriptionError::Value {
            file: "--net".into(),
            key: "net",
            problem: e.to_string(),
        },
    })?;
    Ok(configs)
}

fn check_unique(configs: &[NetConfig]) -> Result<(), NetArgError> {
    let mut taps = HashSet::new();
    let mut macs = HashSet::new();
    for c in configs {
        if !taps.insert(c.tap.name().to_owned()) {
            return Err(NetArgError::Duplicate(format!("tap {}", c.tap.name())));
        }
        if !macs.insert(c.mac) {
            return Err(NetArgError::Duplicate(format!("MAC {}", c.mac)));
        }
    }
    Ok(())
}

/// Whether a tap error is about the operator's input (exit 2): a bad, missing or
/// taken name, or an interface that is no tap.
pub fn is_input_error(e: &TapError) -> bool {
    matches!(
        e,
        TapError::Name(_) | TapError::Missing(_) | TapError::NotTap(..) | TapError::Exists(_)
    )
}

/// Opens every interface's tap (before the jail); logs what the policy will see.
pub fn open_all(configs: &[NetConfig]) -> Result<Vec<NetAttachment>, TapError> {
    configs
        .iter()
        .map(|c| {
            let tap = Tap::open(&c.tap)?;
            let i = c.interface();
            tracing::info!(event = "net", tap = %i.tap, owned = i.owned, mac = %i.mac, ip = ?i.ip.map(|a| a.to_string()), "tap opened");
            Ok(NetAttachment {
                config: c.clone(),
                tap,
            })
        })
        .collect()
}

/// Once the network policy is installed (and before the VM runs): brings up the taps
/// `cvm` created (down until now, so nothing could be queued on them) and discards
/// the frames queued on the others since they were opened, which the policy never saw.
pub fn activate(net: &[NetAttachment]) -> Result<(), TapError> {
    for n in net {
        n.tap.bring_up()?;
        let dropped = n
            .tap
            .drain()
            .map_err(|e| TapError::Ioctl(n.tap.name().to_owned(), "read", e))?;
        if dropped > 0 {
            tracing::info!(event = "net", tap = %n.tap.name(), dropped, "frames queued before the network policy discarded");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn net_values_parse() {
        let a = parse_net("tap=tap0,mac=02:00:00:00:00:01,ip=10.0.0.2/24,tx-bps=100M,rx-pps=20k")
            .unwrap();
        assert_eq!(a.tap, TapSpec::Existing("tap0".into()));
        assert_eq!(a.mac.unwrap().to_string(), "02:00:00:00:00:01");
        assert_eq!(a.ip.unwrap().to_string(), "10.0.0.2/24");
        assert_eq!(a.limits.tx_bps, Some(100_000_000));
        assert_eq!(a.limits.rx_pps, Some(20_000));
        assert_eq!(a.limits.rx_bps, None);
        assert_eq!(
            parse_net("create=cvm-a").unwrap().tap,
            TapSpec::Create("cvm-a".into())
        );
    }

    #[test]
    fn bad_net_values_get_clear_errors() {
        let cases = [
            ("mac=02:00:00:00:00:01", "exactly one tap"),
            ("tap=a,create=b", "exactly one tap"),
            ("tap=a,tap=b", "given twice"),
            ("tap=a,speed=1", "unknown network option `speed`"),
            ("tap=a,mac=01:00:00:00:00:01", "multicast"),
            ("tap=a,ip=10.0.0.2", "prefix length"),
            ("tap=a,tx-bps=fast", "not a rate"),
            ("tap=a,tx-bps=0", "stop all traffic"),
            ("tap=a/b", "interface name"),
            ("tap=a,junk", "unknown network option `junk`"),
        ];
        for (v, want) in cases {
            let e = parse_net(v).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn the_file_tables_resolve_and_flags_replace_them() {
        let l = Loaded::parse(
            Path::new("/etc/cvm/vm.toml"),
            "version = 1\n[[net]]\ntap = \"tap0\"\nmac = \"02:00:00:00:00:05\"\ntx_bps = \"10M\"\nrx_pps = 500\n[[net]]\ncreate = \"cvm-b\"\n",
        )
        .unwrap();
        let n = resolve(Vec::new(), Some(&l)).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].limits.tx_bps, Some(10_000_000));
        assert_eq!(n[0].limits.rx_pps, Some(500));
        assert_eq!(n[0].interface().mac.to_string(), "02:00:00:00:00:05");
        assert!(n[1].interface().owned);
        assert_eq!(n[1].mac.0[0] & 3, 2, "a generated local unicast MAC");
        let n = resolve(vec![parse_net("tap=x").unwrap()], Some(&l)).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].tap.name(), "x");
        // Errors name the key; unknown keys are refused.
        let bad = Loaded::parse(
            Path::new("/v.toml"),
            "version = 1\n[[net]]\ntap = \"t\"\nspeed = 1\n",
        )
        .unwrap_err();
        assert!(bad.to_string().contains("speed"), "{bad}");
        let bad = Loaded::parse(
            Path::new("/v.toml"),
            "version = 1\n[[net]]\nmac = \"02:00:00:00:00:01\"\n",
        )
        .unwrap();
        let e = resolve(Vec::new(), Some(&bad)).unwrap_err().to_string();
        assert!(e.contains("`net`") && e.contains("exactly one tap"), "{e}");
        let dup = vec![parse_net("tap=a").unwrap(), parse_net("create=a").unwrap()];
        assert!(resolve(dup, None)
            .unwrap_err()
            .to_string()
            .contains("tap a"));
        let dup = vec![
            parse_net("tap=a,mac=02:00:00:00:00:01").unwrap(),
            parse_net("tap=b,mac=02:00:00:00:00:01").unwrap(),
        ];
        assert!(resolve(dup, None).unwrap_err().to_string().contains("MAC"));
    }
}
