//! Real packets through installed policies, each test in a fresh network namespace
//! (the thread running it unshares one, so the host's network is untouched and the
//! namespace, its taps and tables vanish with the thread). The test plays the guests:
//! it owns the taps' file descriptors, writes the frames a guest would send and reads
//! what the host delivers to the guest. Needs root and `nft`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use super::model::NetworkPolicyToml;
use super::netns_support::in_netns;
use super::nft::Nft;
use super::registry::Registry;
use super::supervisor::{gc, Installed};
use super::{Counts, NetPolicyError, NetworkPolicy};

fn requirements() -> bool {
    test_kit::require_root()
        && test_kit::require_tool("nft")
        && test_kit::require_tool("ip")
        && test_kit::require_file("/dev/net/tun")
}

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tap whose guest side is this descriptor.
struct Tap(OwnedFd);

impl Tap {
    fn create(name: &str) -> Tap {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        let mut ifr = [0u8; 40];
        ifr[..name.len()].copy_from_slice(name.as_bytes());
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as u16;
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a 40-byte ifreq, which `ifr` is.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), 0x400454ca, ifr.as_mut_ptr()) };
        assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        ip(&format!("link set {name} up"));
        Tap(f.into())
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: writes `frame.len()` bytes from a valid buffer to our descriptor.
        let n = unsafe { libc::write(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        assert_eq!(
            n,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// Whether a frame for which `want` holds arrives within `wait`.
    fn receives(&self, wait: Duration, want: impl Fn(&[u8]) -> bool) -> bool {
        let end = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut p = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut p, 1, left.as_millis() as i32 + 1) };
            if rc <= 0 {
                continue;
            }
            // SAFETY: reads at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 && want(&buf[..n as usize]) {
                return true;
            }
        }
    }
}

/// The MAC address of interface `name` (`ip -o link show`).
fn mac_of(name: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-o", "link", "show", name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mac = text
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    super::model::Mac::parse(mac).unwrap().0
}

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const TCP_SYN: u8 = 0x02;
const TCP_SYN_ACK: u8 = 0x12;

/// An Ethernet frame carrying an IPv4 TCP segment (`flags`), or UDP when `flags` is
/// `None`; the payload is `marker` so the receiver can recognise it.
#[allow(clippy::too_many_arguments)]
fn ipv4_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: Option<u8>,
    marker: u32,
) -> Vec<u8> {
    let payload = marker.to_be_bytes();
    let l4 = match flags {
        Some(f) => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[4..8].copy_from_slice(&marker.to_be_bytes());
            if f & 0x10 != 0 {
                t[8..12].copy_from_slice(&1u32.to_be_bytes());
            }
            t[12] = 5 << 4;
            t[13] = f;
            t[14..16].copy_from_slice(&64240u16.to_be_bytes());
            t
        }
        None => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u[4..6].copy_from_slice(&(8 + payload.len() as u16).to_be_bytes());
            u.extend_from_slice(&payload);
            u
        }
    };
    let proto = if flags.is_some() { 6u8 } else { 17 };
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&l4);
    let mut l4 = l4;
    let c = checksum(&pseudo, 0);
    let at = if flags.is_some() { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    let mut ipv4 = vec![0u8; 20];
    ipv4[0] = 0x45;
    ipv4[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ipv4[6] = 0x40;
    ipv4[8] = 64;
    ipv4[9] = proto;
    ipv4[12..16].copy_from_slice(&src.octets());
    ipv4[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ipv4, 0);
    ipv4[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ipv4);
    f.extend_from_slice(&l4);
    f
}

/// An ARP reply: `sender_ip` is at `sender_mac`.
fn arp_frame(
    eth_src: [u8; 6],
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&target_ip.octets());
    f
}

fn is_ipv4_from(frame: &[u8], src: Ipv4Addr, marker: u32) -> bool {
    frame.len() >= 42
        && frame[12..14] == [0x08, 0x00]
        && frame[26..30] == src.octets()
        && (frame[38..42] == marker.to_be_bytes()
            || frame.len() >= 46 && frame[42..46] == marker.to_be_bytes())
}

fn is_arp_for(frame: &[u8], sender_ip: Ipv4Addr) -> bool {
    frame.len() >= 42 && frame[12..14] == [0x08, 0x06] && frame[28..32] == sender_ip.octets()
}

fn policy(text: &str) -> NetworkPolicy {
    toml::from_str::<NetworkPolicyToml>(text)
        .unwrap()
        .validate()
        .unwrap()
}

fn counts(nft: &Nft, i: &Installed) -> Counts {
    nft.counts(&i.tables()[0]).unwrap()
}

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const SHORT: Duration = Duration::from_millis(400);
const LONG: Duration = Duration::from_secs(2);

/// Two VMs on one bridge: A may reach B on TCP 8080, nothing else passes.
#[test]
fn two_vms_on_a_bridge_reach_each_other_only_as_the_policy_allows() {
    if !requirements() {
        return;
    }
    in_netns(|| {
        let state = tempfile::tempdir().unwrap();
        let reg = || Registry::open(&state.path().join("net")).unwrap();
        let nft = Nft::default();
        let ta = Tap::create("cvmta");
        let tb = Tap::create("cvmtb");
        ip("link add cvmbr type bridge");
        ip("link set cvmta master cvmbr");
        ip("link set cvmtb master cvmbr");
        ip("link set cvmbr up");
        let pa = policy(
            "name = \"a\"\n[[interfaces]]\ntap = \"cvmta\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.0.2\"]\negress = [{ vm = \"b\", proto = \"tcp\", ports = [8080] }]\n",
        );
        let pb = policy(
            "name = \"b\"\n[[interfaces]]\ntap = \"cvmtb\"\nmac = \"02:00:00:00:00:0b\"\naddresses = [\"10.0.0.3\"]\ningress = [{ vm = \"a\", proto = \"tcp\", ports = [8080] }]\n",
        );
        // A starts first: B is not running, so A may reach nothing yet.
        let mut ia = Installed::install(&pa, nft.clone(), reg()).unwrap();
        let syn = |m| ipv4_frame(MAC_A, MAC_B, A, B, 40000, 8080, Some(TCP_SYN), m);
        ta.send(&syn(1));
        assert!(
            !tb.receives(SHORT, |f| is_ipv4_from(f, A, 1)),
            "a peer that is not running resolves to nothing"
        );
        assert_eq!(counts(&nft, &ia).get("egress_denied"), 1);
        let ib = Installed::install(&pb, nft.clone(), reg()).unwrap();
        assert!(
            ia.refresh_peers().unwrap(),
            "B's address is resolved once B runs"
        );
        // The allowed port passes, and B's SYN-ACK comes back.
        ta.send(&syn(2));
        assert!(
            tb.receives(LONG, |f| is_ipv4_from(f, A, 2)),
            "A -> B:8080 is allowed"
        );
        tb.send(&ipv4_frame(
            MAC_B,
            MAC_A,
            B,
            A,
            8080,
            40000,
            Some(TCP_SYN_ACK),
            3,
        ));
        assert!(
            ta.receives(LONG, |f| is_ipv4_from(f, B, 3)),
            "B's reply reaches A"
        );
        // Every other A -> B port is dropped and counted (by A's egress).
        let before = counts(&nft, &ia);
        ta.send(&ipv4_frame(MAC_A, MAC_B, A, B, 40000, 22, Some(TCP_SYN), 4));
        ta.send(&ipv4_frame(MAC_A, MAC_B, A, B, 40000, 8080, None, 5));
        assert!(!tb.receives(SHORT, |f| is_ipv4_from(f, A, 4) || is_ipv4_from(f, A, 5)));
        assert_eq!(
            counts(&nft, &ia).get("egress_denied"),
            before.get("egress_denied") + 2
        );
        // B -> A is dropped: a new connection, and a SYN dressed as a reply from 8080.
        let before = counts(&nft, &ib);
        tb.send(&ipv4_frame(
            MAC_B,
            MAC_A,
            B,
            A,
            40001,
            8080,
            Some(TCP_SYN),
            6,
        ));
        tb.send(&ipv4_frame(MAC_B, MAC_A, B, A, 8080, 22, Some(TCP_SYN), 7));
        assert!(!ta.receives(SHORT, |f| is_ipv4_from(f, B, 6) || is_ipv4_from(f, B, 7)));
        assert_eq!(
            counts(&nft, &ib).get("egress_denied"),
            before.get("egress_denied") + 2
        );
        // A spoofed source address, a spoofed MAC and a spoofed ARP from A are dropped
        // and counted.
        let before = counts(&nft, &ia);
        let evil = Ipv4Addr::new(10, 0, 0, 99);
        ta.send(&ipv4_frame(
            MAC_A,
            MAC_B,
            evil,
            B,
            40000,
            8080,
            Some(TCP_SYN),
            8,
        ));
        ta.send(&ipv4_frame(
            [2, 0, 0, 0, 0, 0x66],
            MAC_B,
            A,
            B,
            40000,
            8080,
            Some(TCP_SYN),
            9,
        ));
        ta.send(&arp_frame(MAC_A, MAC_A, B, B));
        assert!(!tb.receives(SHORT, |f| is_ipv4_from(f, evil, 8)
            || is_ipv4_from(f, A, 9)
            || is_arp_for(f, B)));
        assert_eq!(counts(&nft, &ia).get("spoofed"), before.get("spoofed") + 3);
        // A's own ARP passes (to B, which may receive ARP).
        ta.send(&arp_frame(MAC_A, MAC_A, A, B));
        assert!(
            tb.receives(LONG, |f| is_arp_for(f, A)),
            "A's honest ARP reaches B"
        );
        // IPv6 (and any other ethertype) is dropped and counted.
        let mut v6 = ipv4_frame(MAC_A, MAC_B, A, B, 1, 8080, Some(TCP_SYN), 10);
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        let before = counts(&nft, &ia);
        ta.send(&v6);
        assert_eq!(
            counts(&nft, &ia).get("other_denied"),
            before.get("other_denied") + 1
        );
        // Removing A removes its table and registry entry, and nothing else.
        ia.remove().unwrap();
        let tables = nft.netdev_tables().unwrap();
        assert!(!tables.contains(&ia.tables()[0]), "{tables:?}");
        assert!(tables.contains(&ib.tables()[0]), "{tables:?}");
        assert!(reg().read("a").is_none());
        ib.remove().unwrap();
        assert!(nft.netdev_tables().unwrap().is_empty());
    });
}

/// A routed tap: the host's own stack answers on the allowed port only, and the host
/// cannot open a connection to the guest.
#[test]
fn a_routed_tap_passes_the_allowed_port_and_nothing_else() {
    if !requirements() {
        return;
    }
    in_netns(|| {
        let state = tempfile::tempdir().unwrap();
        let reg = Registry::open(&state.path().join("net")).unwrap();
        let nft = Nft::default();
        let tap = Tap::create("cvmtr");
        ip("addr add 10.0.1.1/24 dev cvmtr");
        ip("neigh replace 10.0.1.2 lladdr 02:00:00:00:00:0a dev cvmtr");
        let host = Ipv4Addr::new(10, 0, 1, 1);
        let guest = Ipv4Addr::new(10, 0, 1, 2);
        let open = std::net::TcpListener::bind((host, 8080)).unwrap();
        let _closed = std::net::TcpListener::bind((host, 9090)).unwrap();
        let p = policy(
            "name = \"r\"\n[[interfaces]]\ntap = \"cvmtr\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.1.2\"]\negress = [{ cidr = \"10.0.1.1\", proto = \"tcp\", ports = [8080] }, { cidr = \"10.0.1.1\", proto = \"udp\", ports = [5353] }]\n",
        );
        let udp = std::net::UdpSocket::bind((host, 5353)).unwrap();
        udp.set_read_timeout(Some(SHORT)).unwrap();
        let i = Installed::install(&p, nft.clone(), reg).unwrap();
        let hmac = mac_of("cvmtr");
        // The allowed port: the host's SYN-ACK comes back to the guest.
        tap.send(&ipv4_frame(
            MAC_A,
            hmac,
            guest,
            host,
            40000,
            8080,
            Some(TCP_SYN),
            1,
        ));
        let synack = |f: &[u8]| {
            f.len() >= 54
                && f[12..14] == [8, 0]
                && f[26..30] == host.octets()
                && f[47] == TCP_SYN_ACK
        };
        assert!(
            tap.receives(LONG, synack),
            "the host answers on the allowed port"
        );
        drop(open);
        // UDP to the allowed port arrives from the guest's address, not from a spoofed
        // one (the host would accept it: the address is on the tap's subnet).
        let mut buf = [0u8; 16];
        let before = counts(&nft, &i);
        tap.send(&ipv4_frame(
            MAC_A,
            hmac,
            Ipv4Addr::new(10, 0, 1, 99),
            host,
            40000,
            5353,
            None,
            11,
        ));
        assert!(
            udp.recv_from(&mut buf).is_err(),
            "a spoofed source reached the host"
        );
        assert_eq!(counts(&nft, &i).get("spoofed"), before.get("spoofed") + 1);
        tap.send(&ipv4_frame(MAC_A, hmac, guest, host, 40000, 5353, None, 12));
        let (n, from) = udp
            .recv_from(&mut buf)
            .expect("the guest's own datagram arrives");
        assert_eq!(
            (&buf[..n], from),
            (&12u32.to_be_bytes()[..], (guest, 40000).into())
        );
        // Only the guest's own address is delivered to it: a datagram from the allowed
        // peer and port (a "reply") to another address on the tap is dropped.
        ip("neigh replace 10.0.1.77 lladdr 02:00:00:00:00:0a dev cvmtr");
        let before = counts(&nft, &i);
        udp.send_to(&13u32.to_be_bytes(), (Ipv4Addr::new(10, 0, 1, 77), 40000))
            .unwrap();
        assert!(!tap.receives(SHORT, |f| f.len() >= 46 && f[30..34] == [10, 0, 1, 77]));
        assert_eq!(
            counts(&nft, &i).get("ingress_denied"),
            before.get("ingress_denied") + 1
        );
        udp.send_to(&14u32.to_be_bytes(), (guest, 40000)).unwrap();
        assert!(
            tap.receives(LONG, |f| is_ipv4_from(f, host, 14)),
            "the reply to the guest passes"
        );
        // Another port: dropped before the host sees it, so no answer, and counted.
        let before = counts(&nft, &i);
        tap.send(&ipv4_frame(
            MAC_A,
            hmac,
            guest,
            host,
            40000,
            9090,
            Some(TCP_SYN),
            2,
        ));
        assert!(!tap.receives(SHORT, |f| f.len() >= 30
            && f[12..14] == [8, 0]
            && f[26..30] == host.octets()));
        assert_eq!(
            counts(&nft, &i).get("egress_denied"),
            before.get("egress_denied") + 1
        );
        // The host connecting to the guest: its SYN never reaches the guest.
        let before = counts(&nft, &i);
        let t = std::thread::spawn(move || {
            std::net::TcpStream::connect_timeout(&(guest, 22).into(), Duration::from_millis(300))
        });
        assert!(!tap.receives(SHORT, |f| f.len() >= 34
            && f[12..14] == [8, 0]
            && f[30..34] == guest.octets()
            && f[23] == 6));
        assert!(t.join().unwrap().is_err());
        assert!(counts(&nft, &i).get("ingress_denied") > before.get("ingress_denied"));
        i.remove().unwrap();
        assert!(nft.netdev_tables().unwrap().is_empty());
    });
}

/// Fail closed: a missing tap or a ruleset nft refuses leaves nothing installed; a
/// crashed run's tables are replaced by the next start and removed by `gc`.
#[test]
fn failures_leave_nothing_and_stale_tables_are_replaced_or_collected() {
    if !requirements() {
        return;
    }
    in_netns(|| {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("net");
        let nft = Nft::default();
        let p = policy(
            "name = \"s\"\n[[interfaces]]\ntap = \"cvmts\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.2.2\"]\n",
        );
        let e = Installed::install(&p, nft.clone(), Registry::open(&dir).unwrap()).unwrap_err();
        assert!(matches!(e, NetPolicyError::NoTap(_)), "{e}");
        let _tap = Tap::create("cvmts");
        // nft itself refuses (a binary that always fails stands in for a kernel without
        // nf_tables): the registry entry is withdrawn too.
        let failing = Nft::with_binary("/bin/false".into());
        let e = Installed::install(&p, failing, Registry::open(&dir).unwrap()).unwrap_err();
        assert!(matches!(e, NetPolicyError::Nft(_)), "{e}");
        assert!(Registry::open(&dir).unwrap().read("s").is_none());
        assert!(nft.netdev_tables().unwrap().is_empty());
        // A run that crashed: its table and entry stay (an entry whose process is gone).
        let i = Installed::install(&p, nft.clone(), Registry::open(&dir).unwrap()).unwrap();
        let table = i.tables()[0].clone();
        let file = dir.join("s.json");
        let mut e: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        e["start_time"] = serde_json::json!(1);
        std::fs::write(&file, e.to_string()).unwrap();
        std::mem::forget(i);
        // Its stale table is replaced as a whole (an object only the stale one has is gone).
        nft.apply(&format!(
            "add counter netdev {table} stale_marker {{ packets 5 bytes 5 }}\n"
        ))
        .unwrap();
        let listed = |t: &str| {
            let o = Command::new("nft")
                .args(["list", "table", "netdev", t])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        assert!(listed(&table).contains("stale_marker"));
        let i = Installed::install(&p, nft.clone(), Registry::open(&dir).unwrap()).unwrap();
        assert!(
            !listed(&table).contains("stale_marker"),
            "{}",
            listed(&table)
        );
        assert_eq!(nft.counts(&table).unwrap().get("spoofed"), 0);
        assert_eq!(nft.netdev_tables().unwrap(), vec![table.clone()]);
        // gc keeps a live VM's table and removes a stale one.
        let reg = Registry::open(&dir).unwrap();
        assert!(gc(&nft, &reg).unwrap().is_empty());
        std::fs::write(&file, e.to_string()).unwrap();
        assert_eq!(gc(&nft, &reg).unwrap(), vec![table]);
        assert!(nft.netdev_tables().unwrap().is_empty());
        assert!(reg.read("s").is_none());
        drop(i);
        // A crashed VM's table on a tap that another VM now uses would still filter that
        // tap: the new VM's start removes it with its entry.
        let i = Installed::install(&p, nft.clone(), Registry::open(&dir).unwrap()).unwrap();
        std::fs::write(&file, e.to_string()).unwrap();
        std::mem::forget(i);
        let q = policy(
            "name = \"s2\"\n[[interfaces]]\ntap = \"cvmts\"\nmac = \"02:00:00:00:00:0b\"\naddresses = [\"10.0.2.3\"]\n",
        );
        let i = Installed::install(&q, nft.clone(), Registry::open(&dir).unwrap()).unwrap();
        assert_eq!(nft.netdev_tables().unwrap(), i.tables().to_vec());
        assert!(Registry::open(&dir).unwrap().read("s").is_none());
        i.remove().unwrap();
    });
}

/// Attack (red-team M3): `cvm net gc` deleted every `cvm_*` netdev table that was not
/// live in ITS registry, so a gc run with another state directory (or a foreign
/// `cvm_*` table) left a running VM's tap unfiltered. gc now deletes only the tables of
/// its own registry's stale entries, and only when the table carries its registry's
/// owner mark.
#[test]
fn gc_removes_only_tables_its_own_registry_owns() {
    if !requirements() {
        return;
    }
    in_netns(|| {
        let state = tempfile::tempdir().unwrap();
        let dir1 = state.path().join("net1");
        let dir2 = state.path().join("net2");
        let nft = Nft::default();
        let _tap = Tap::create("cvmtg");
        let p = policy(
            "name = \"g\"\n[[interfaces]]\ntap = \"cvmtg\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.3.2\"]\n",
        );
        let i = Installed::install(&p, nft.clone(), Registry::open(&dir1).unwrap()).unwrap();
        let table = i.tables()[0].clone();
        nft.apply("table netdev cvm_foreign { }\n").unwrap();
        let sorted = || {
            let mut v = nft.netdev_tables().unwrap();
            v.sort();
            v
        };
        let both = vec!["cvm_foreign".to_owned(), table.clone()];
        let reg2 = Registry::open(&dir2).unwrap();
        assert_eq!(gc(&nft, &reg2).unwrap(), Vec::<String>::new());
        assert_eq!(sorted(), both, "gc with another registry deleted tables");
        assert!(gc(&nft, &Registry::open(&dir1).unwrap())
            .unwrap()
            .is_empty());
        assert_eq!(sorted(), both);
        // A stale entry copied into the other registry does not make the table its own.
        let mut e: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir1.join("g.json")).unwrap()).unwrap();
        e["start_time"] = serde_json::json!(1);
        std::fs::write(dir2.join("g.json"), e.to_string()).unwrap();
        assert!(gc(&nft, &reg2).unwrap().is_empty());
        assert_eq!(sorted(), both, "a copied entry let gc delete a live table");
        // The owner's gc of its own stale entry still removes the table, not the foreign one.
        std::fs::write(dir1.join("g.json"), e.to_string()).unwrap();
        std::mem::forget(i);
        assert_eq!(
            gc(&nft, &Registry::open(&dir1).unwrap()).unwrap(),
            vec![table]
        );
        assert_eq!(sorted(), vec!["cvm_foreign".to_owned()]);
    });
}

/// Attack (red-team M1): stateless reply rules matched only the peer and the allowed
/// port, so a guest allowed to SERVE UDP 53 (an ingress rule) could send "replies"
/// from port 53 to every UDP port of its peers (and TCP non-SYN segments from an
/// allowed port to any port). Replies must now target the initiator's ephemeral range.
#[test]
fn reply_rules_reach_only_the_initiators_ephemeral_ports() {
    if !requirements() {
        return;
    }
    in_netns(|| {
        let state = tempfile::tempdir().unwrap();
        let reg = Registry::open(&state.path().join("net")).unwrap();
        let nft = Nft::default();
        let ta = Tap::create("cvmra");
        let tb = Tap::create("cvmrb");
        ip("link add cvmbr type bridge");
        ip("link set cvmra master cvmbr");
        ip("link set cvmrb master cvmbr");
        ip("link set cvmbr up");
        let p = policy(
            "name = \"a\"\n[[interfaces]]\ntap = \"cvmra\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.0.2\"]\n\
             ingress = [{ cidr = \"10.0.0.0/24\", proto = \"udp\", ports = [53] }, { cidr = \"10.0.0.0/24\", proto = \"tcp\", ports = [8080] }]\n\
             egress = [{ cidr = \"10.0.0.0/24\", proto = \"udp\", ports = [53] }]\n",
        );
        let i = Installed::install(&p, nft.clone(), reg).unwrap();
        let before = counts(&nft, &i);
        // The attack: "replies" from the served ports to B's services.
        ta.send(&ipv4_frame(MAC_A, MAC_B, A, B, 53, 9999, None, 11));
        ta.send(&ipv4_frame(MAC_A, MAC_B, A, B, 53, 123, None, 12));
        ta.send(&ipv4_frame(MAC_A, MAC_B, A, B, 8080, 22, Some(0x10), 13));
        assert!(
            !tb.receives(SHORT, |f| [11, 12, 13]
                .iter()
                .any(|m| is_ipv4_from(f, A, *m))),
            "a reply rule let the guest reach a peer's service port"
        );
        assert_eq!(
            counts(&nft, &i).get("egress_denied"),
            before.get("egress_denied") + 3
        );
        // Real replies, to the initiator's ephemeral port, still pass.
        ta.send(&ipv4_frame(MAC_A, MAC_B, A, B, 53, 40000, None, 14));
        assert!(tb.receives(LONG, |f| is_ipv4_from(f, A, 14)));
        ta.send(&ipv4_frame(MAC_A, MAC_B, A, B, 8080, 40001, Some(0x10), 15));
        assert!(tb.receives(LONG, |f| is_ipv4_from(f, A, 15)));
        // The other direction: the replies to the guest's UDP 53 queries reach its
        // ephemeral ports, not its low ports.
        let before = counts(&nft, &i);
        tb.send(&ipv4_frame(MAC_B, MAC_A, B, A, 53, 123, None, 16));
        assert!(!ta.receives(SHORT, |f| is_ipv4_from(f, B, 16)));
        assert!(counts(&nft, &i).get("ingress_denied") > before.get("ingress_denied"));
        tb.send(&ipv4_frame(MAC_B, MAC_A, B, A, 53, 40002, None, 17));
        assert!(ta.receives(LONG, |f| is_ipv4_from(f, B, 17)));
        i.remove().unwrap();
    });
}

/// Attack (red-team M2, second half): a stopped VM's address stayed in its peers'
/// `vm = "NAME"` sets until their next 2 s poll, long enough for a new VM to take the
/// address over and pass as it. Removing a VM now empties its set in its peers' tables.
#[test]
fn a_stopped_vm_leaves_its_peers_sets_at_once() {
    if !requirements() {
        return;
    }
    in_netns(|| {
        let state = tempfile::tempdir().unwrap();
        let reg = || Registry::open(&state.path().join("net")).unwrap();
        let nft = Nft::default();
        let _ta = Tap::create("cvmpa");
        let _tb = Tap::create("cvmpb");
        let pa = policy(
            "name = \"a\"\n[[interfaces]]\ntap = \"cvmpa\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.0.2\", \"fd00::2\"]\negress = [{ vm = \"b\", proto = \"tcp\", ports = [8080] }]\n",
        );
        let pb = policy(
            "name = \"b\"\n[[interfaces]]\ntap = \"cvmpb\"\nmac = \"02:00:00:00:00:0b\"\naddresses = [\"10.0.0.3\", \"fd00::3\"]\n",
        );
        let mut ia = Installed::install(&pa, nft.clone(), reg()).unwrap();
        let ib = Installed::install(&pb, nft.clone(), reg()).unwrap();
        assert!(ia.refresh_peers().unwrap());
        let set = |name: &str| {
            let o = Command::new("nft")
                .args(["list", "set", "netdev", &ia.tables()[0], name])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let both = || format!("{}{}", set("vm_b"), set("vm6_b"));
        // B's IPv4, IPv6 and EUI-64 link-local addresses.
        for a in ["10.0.0.3", "fd00::3", "fe80::ff:fe00:b"] {
            assert!(both().contains(a), "{a}: {}", both());
        }
        ib.remove().unwrap();
        for a in ["10.0.0.3", "fd00::3", "fe80::ff:fe00:b"] {
            assert!(
                !both().contains(a),
                "B's address {a} outlived B: {}",
                both()
            );
        }
        ia.remove().unwrap();
    });
}

/// `frame` (from [`ipv4_frame`]) with a loose source route option (LSRR via `hop`)
/// in its IPv4 header.
fn with_lsrr(frame: &[u8], hop: Ipv4Addr) -> Vec<u8> {
    let mut opt = vec![0x83, 7, 4];
    opt.extend_from_slice(&hop.octets());
    opt.push(0); // end of options: 8 bytes in all
    let mut ip = frame[14..34].to_vec();
    ip[0] = 0x47;
    let total = u16::from_be_bytes([ip[2], ip[3]]) + 8;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[10..12].fill(0);
    ip.extend_from_slice(&opt);
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = frame[..14].to_vec();
    f.extend_from_slice(&ip);
    f.extend_from_slice(&frame[34..]);
    f
}

/// Red-team info: IPv4 source-route options (LSRR/SSRR) let a packet name its own
/// path past the host's routing; they are dropped both ways.
#[test]
fn source_routed_packets_are_dropped() {
    if !requirements() {
        return;
    }
    in_netns(|| {
        let state = tempfile::tempdir().unwrap();
        let reg = Registry::open(&state.path().join("net")).unwrap();
        let nft = Nft::default();
        let ta = Tap::create("cvmsa");
        let tb = Tap::create("cvmsb");
        ip("link add cvmbr type bridge");
        ip("link set cvmsa master cvmbr");
        ip("link set cvmsb master cvmbr");
        ip("link set cvmbr up");
        let p = policy(
            "name = \"a\"\n[[interfaces]]\ntap = \"cvmsa\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.0.2\"]\n\
             egress = [{ cidr = \"10.0.0.0/24\", proto = \"udp\" }]\ningress = [{ cidr = \"10.0.0.0/24\", proto = \"udp\" }]\n",
        );
        let i = Installed::install(&p, nft.clone(), reg).unwrap();
        let hop = Ipv4Addr::new(192, 0, 2, 1);
        ta.send(&with_lsrr(
            &ipv4_frame(MAC_A, MAC_B, A, B, 40000, 53, None, 21),
            hop,
        ));
        tb.send(&with_lsrr(
            &ipv4_frame(MAC_B, MAC_A, B, A, 40000, 53, None, 22),
            hop,
        ));
        assert!(
            !tb.receives(SHORT, |f| f.len() > 50 && f[26..30] == A.octets()),
            "LSRR from the guest passed"
        );
        assert!(
            !ta.receives(SHORT, |f| f.len() > 50 && f[26..30] == B.octets()),
            "LSRR to the guest passed"
        );
        // Without the option both pass.
        ta.send(&ipv4_frame(MAC_A, MAC_B, A, B, 40000, 53, None, 23));
        assert!(tb.receives(LONG, |f| is_ipv4_from(f, A, 23)));
        i.remove().unwrap();
    });
}

const MAC_C: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 3);
const ETH_IPV6: [u8; 2] = [0x86, 0xdd];
const ICMPV6: u8 = 58;

/// A TCP segment (`flags`) whose sequence number is `marker`.
fn tcp_segment(sport: u16, dport: u16, flags: u8, marker: u32) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&marker.to_be_bytes());
    if flags & 0x10 != 0 {
        t[8..12].copy_from_slice(&1u32.to_be_bytes());
    }
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t
}

/// An Ethernet frame carrying an IPv6 packet: `next` is the first next-header value,
/// `payload` everything after the fixed header; the upper-layer checksum (RFC 8200
/// 8.1) is filled in at `csum_at` of `payload` when given (computed over the whole
/// payload, so only without extension headers).
#[allow(clippy::too_many_arguments)]
fn ipv6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    hop_limit: u8,
    payload: &[u8],
    csum_at: Option<usize>,
) -> Vec<u8> {
    let mut payload = payload.to_vec();
    if let Some(at) = csum_at {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, next]);
        pseudo.extend_from_slice(&payload);
        let c = checksum(&pseudo, 0);
        payload[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETH_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, hop_limit]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&payload);
    f
}

/// A TCP segment over IPv6.
#[allow(clippy::too_many_arguments)]
fn tcp6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    marker: u32,
) -> Vec<u8> {
    let seg = tcp_segment(sport, dport, flags, marker);
    ipv6_frame(src_mac, dst_mac, src, dst, 6, 64, &seg, Some(16))
}

/// An ICMPv6 message (type, code, body after the checksum).
fn icmp6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ty: u8,
    body: &[u8],
) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(body);
    ipv6_frame(src_mac, dst_mac, src, dst, ICMPV6, 255, &m, Some(2))
}

/// The body of a neighbour solicitation (`flags` 0) or advertisement for `target`,
/// with a link-layer address option (`opt` 1: source, 2: target) when `lladdr` is given.
fn nd_body(flags: u8, target: Ipv6Addr, lladdr: Option<(u8, [u8; 6])>) -> Vec<u8> {
    let mut b = vec![flags, 0, 0, 0];
    b.extend_from_slice(&target.octets());
    if let Some((opt, mac)) = lladdr {
        b.extend_from_slice(&[opt, 1]);
        b.extend_from_slice(&mac);
    }
    b
}

/// The solicited-node multicast group of `a` and its Ethernet address.
fn solicited(a: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let o = a.octets();
    let g = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    );
    let go = g.octets();
    (g, [0x33, 0x33, go[12], go[13], go[14], go[15]])
}

fn is_ipv6_from(frame: &[u8], src: Ipv6Addr, marker: u32) -> bool {
    frame.len() >= 62
        && frame[12..14] == ETH_IPV6
        && frame[22..38] == src.octets()
        && frame[58..62] == marker.to_be_bytes()
}

/// An ICMPv6 message of type `ty` whose bytes 8..24 (an ND target) are `target`.
fn is_icmp6(frame: &[u8], ty: u8, target: Ipv6Addr) -> bool {
    frame.len() >= 78
        && frame[12..14] == ETH_IPV6
        && frame[20] == ICMPV6
        && frame[54] == ty
        && frame[62..78] == target.octets()
}

const ND_RS: u8 = 133;
const ND_RA: u8 = 134;
const ND_NS: u8 = 135;
const ND_NA: u8 = 136;
const ND_REDIRECT: u8 = 137;

/// IPv6 between two VMs on one bridge (issue 18): A may reach B on TCP 8080 over IPv6;
/// every other port, a spoofed source, a guest's router advertisement and redirect,
/// a forged neighbour advertisement for B's address and fragments are dropped and
/// counted; honest neighbour discovery and duplicate address detection pass; a VM
/// without IPv6 in its policy receives and sends no IPv6.
#[test]
fn ipv6_between_two_vms_passes_only_as_the_policy_allows() {
    if !requirements() {
        return;
    }
    in_netns(|| {
        let state = tempfile::tempdir().unwrap();
        let reg = || Registry::open(&state.path().join("net")).unwrap();
        let nft = Nft::default();
        let ta = Tap::create("cvm6a");
        let tb = Tap::create("cvm6b");
        let tc = Tap::create("cvm6c");
        ip("link add cvmbr type bridge");
        for t in ["cvm6a", "cvm6b", "cvm6c"] {
            ip(&format!("link set {t} master cvmbr"));
        }
        ip("link set cvmbr up");
        let pa = policy(
            "name = \"a\"\n[[interfaces]]\ntap = \"cvm6a\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.0.2\", \"fd00:1::2\"]\negress = [{ vm = \"b\", proto = \"tcp\", ports = [8080] }, { cidr = \"fd00:1::/64\", proto = \"icmpv6\" }]\n",
        );
        let pb = policy(
            "name = \"b\"\n[[interfaces]]\ntap = \"cvm6b\"\nmac = \"02:00:00:00:00:0b\"\naddresses = [\"10.0.0.3\", \"fd00:1::3\"]\ningress = [{ vm = \"a\", proto = \"tcp\", ports = [8080] }, { vm = \"a\", proto = \"icmpv6\" }]\n",
        );
        let pc = policy(
            "name = \"c\"\n[[interfaces]]\ntap = \"cvm6c\"\nmac = \"02:00:00:00:00:0c\"\naddresses = [\"10.0.0.4\"]\ningress = [{ cidr = \"10.0.0.0/24\", proto = \"tcp\" }]\negress = [{ cidr = \"10.0.0.0/24\", proto = \"tcp\" }]\n",
        );
        let ib = Installed::install(&pb, nft.clone(), reg()).unwrap();
        let mut ia = Installed::install(&pa, nft.clone(), reg()).unwrap();
        let ic = Installed::install(&pc, nft.clone(), reg()).unwrap();
        let mut ib = ib;
        assert!(
            ib.refresh_peers().unwrap(),
            "A's addresses resolve in B's table"
        );
        let _ = ia.refresh_peers();
        let ll_a = super::model::eui64_link_local(super::model::Mac(MAC_A));
        let ll_b = super::model::eui64_link_local(super::model::Mac(MAC_B));
        assert_eq!(ll_a, "fe80::ff:fe00:a".parse::<Ipv6Addr>().unwrap());

        // Address resolution: A solicits B (source its address, its MAC in the
        // option); B answers for its own address. Both pass.
        let (g_b, gmac_b) = solicited(B6);
        ta.send(&icmp6_frame(
            MAC_A,
            gmac_b,
            A6,
            g_b,
            ND_NS,
            &nd_body(0, B6, Some((1, MAC_A))),
        ));
        assert!(
            tb.receives(LONG, |f| is_icmp6(f, ND_NS, B6)),
            "A's solicitation reaches B"
        );
        tb.send(&icmp6_frame(
            MAC_B,
            MAC_A,
            B6,
            A6,
            ND_NA,
            &nd_body(0x60, B6, Some((2, MAC_B))),
        ));
        assert!(
            ta.receives(LONG, |f| is_icmp6(f, ND_NA, B6)),
            "B's advertisement reaches A"
        );
        // Duplicate address detection from :: for its own address, and A's link-local
        // solicitation, pass.
        let (g_a, gmac_a) = solicited(A6);
        ta.send(&icmp6_frame(
            MAC_A,
            gmac_a,
            Ipv6Addr::UNSPECIFIED,
            g_a,
            ND_NS,
            &nd_body(0, A6, None),
        ));
        ta.send(&icmp6_frame(
            MAC_A,
            gmac_b,
            ll_a,
            solicited(ll_b).0,
            ND_NS,
            &nd_body(0, ll_b, Some((1, MAC_A))),
        ));
        let mut rs = vec![0u8, 0, 0, 0, 1, 1];
        rs.extend_from_slice(&MAC_A);
        let all_routers: Ipv6Addr = "ff02::2".parse().unwrap();
        ta.send(&icmp6_frame(
            MAC_A,
            [0x33, 0x33, 0, 0, 0, 2],
            ll_a,
            all_routers,
            ND_RS,
            &rs,
        ));
        assert!(
            !tb.receives(SHORT, |f| f.len() > 54
                && f[12..14] == ETH_IPV6
                && f[54] == ND_RS),
            "B's policy takes no router solicitations (not its address)"
        );
        let before = counts(&nft, &ia);
        assert_eq!(
            before.get("spoofed_ipv6"),
            0,
            "honest neighbour discovery was counted as spoofed"
        );
        assert_eq!(before.get("egress_denied_ipv6"), 0);

        // The allowed TCP port passes both ways (B's SYN-ACK comes back to A).
        ta.send(&tcp6_frame(MAC_A, MAC_B, A6, B6, 40000, 8080, TCP_SYN, 1));
        assert!(
            tb.receives(LONG, |f| is_ipv6_from(f, A6, 1)),
            "A -> B:8080 over IPv6 is allowed"
        );
        tb.send(&tcp6_frame(
            MAC_B,
            MAC_A,
            B6,
            A6,
            8080,
            40000,
            TCP_SYN_ACK,
            2,
        ));
        assert!(
            ta.receives(LONG, |f| is_ipv6_from(f, B6, 2)),
            "B's reply reaches A"
        );
        // Echo to the allowed prefix passes.
        ta.send(&icmp6_frame(MAC_A, MAC_B, A6, B6, 128, &3u32.to_be_bytes()));
        assert!(tb.receives(LONG, |f| f.len() >= 62
            && f[54] == 128
            && f[58..62] == 3u32.to_be_bytes()));

        // A denied port, and B opening a connection to A, are dropped and counted.
        let (ca, cb) = (counts(&nft, &ia), counts(&nft, &ib));
        ta.send(&tcp6_frame(MAC_A, MAC_B, A6, B6, 40000, 22, TCP_SYN, 4));
        tb.send(&tcp6_frame(MAC_B, MAC_A, B6, A6, 40001, 8080, TCP_SYN, 5));
        tb.send(&tcp6_frame(MAC_B, MAC_A, B6, A6, 8080, 22, TCP_SYN, 6));
        assert!(!tb.receives(SHORT, |f| is_ipv6_from(f, A6, 4)));
        assert!(!ta.receives(SHORT, |f| is_ipv6_from(f, B6, 5) || is_ipv6_from(f, B6, 6)));
        assert_eq!(
            counts(&nft, &ia).get("egress_denied_ipv6"),
            ca.get("egress_denied_ipv6") + 1
        );
        assert_eq!(
            counts(&nft, &ib).get("egress_denied_ipv6"),
            cb.get("egress_denied_ipv6") + 2
        );

        // Spoofing from A: another source address, a router advertisement, a redirect,
        // an advertisement for B's address (the NDP poisoning attack), an advertisement
        // for its own address with another MAC, a solicitation with another MAC, and
        // a "duplicate address detection" for B's address: each dropped and counted.
        let ca = counts(&nft, &ia);
        let evil = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x99);
        ta.send(&tcp6_frame(MAC_A, MAC_B, evil, B6, 40000, 8080, TCP_SYN, 7));
        let mut ra = vec![64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        ra.extend_from_slice(&[1, 1]);
        ra.extend_from_slice(&MAC_A);
        let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
        let all_mac = [0x33, 0x33, 0, 0, 0, 1];
        ta.send(&icmp6_frame(MAC_A, all_mac, ll_a, all_nodes, ND_RA, &ra));
        let mut redirect = vec![0u8; 4];
        redirect.extend_from_slice(&ll_a.octets());
        redirect.extend_from_slice(&B6.octets());
        ta.send(&icmp6_frame(MAC_A, MAC_B, ll_a, B6, ND_REDIRECT, &redirect));
        ta.send(&icmp6_frame(
            MAC_A,
            all_mac,
            A6,
            all_nodes,
            ND_NA,
            &nd_body(0x20, B6, Some((2, MAC_A))),
        ));
        ta.send(&icmp6_frame(
            MAC_A,
            all_mac,
            A6,
            all_nodes,
            ND_NA,
            &nd_body(0x20, A6, Some((2, MAC_C))),
        ));
        ta.send(&icmp6_frame(
            MAC_A,
            gmac_b,
            A6,
            g_b,
            ND_NS,
            &nd_body(0, B6, Some((1, MAC_C))),
        ));
        ta.send(&icmp6_frame(
            MAC_A,
            gmac_b,
            Ipv6Addr::UNSPECIFIED,
            g_b,
            ND_NS,
            &nd_body(0, B6, None),
        ));
        // Neighbour discovery as a way off the link (review finding M1): a solicitation
        // from A's own address to an off-link destination (a router would forward it
        // despite A's deny-all egress), and one with hop limit 64.
        let off_link = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 1);
        ta.send(&icmp6_frame(
            MAC_A,
            MAC_B,
            A6,
            off_link,
            ND_NS,
            &nd_body(0, off_link, None),
        ));
        let mut ns64 = vec![ND_NS, 0, 0, 0];
        ns64.extend_from_slice(&nd_body(0, B6, None));
        ta.send(&ipv6_frame(
            MAC_A,
            MAC_B,
            A6,
            B6,
            ICMPV6,
            64,
            &ns64,
            Some(2),
        ));
        assert!(!tb.receives(SHORT, |f| is_ipv6_from(f, evil, 7)
            || is_icmp6(f, ND_NS, off_link)
            || (f.len() > 54
                && f[12..14] == ETH_IPV6
                && matches!(f[54], ND_RA | ND_REDIRECT))
            || is_icmp6(f, ND_NA, B6)
            || is_icmp6(f, ND_NA, A6)
            || is_icmp6(f, ND_NS, B6)));
        assert_eq!(
            counts(&nft, &ia).get("spoofed_ipv6"),
            ca.get("spoofed_ipv6") + 9
        );

        // A fragment (an extension header) of an allowed flow is dropped and counted.
        let ca = counts(&nft, &ia);
        let mut frag = vec![6, 0, 0, 0, 0, 0, 0, 1]; // next TCP, offset 0, last, id 1
        frag.extend_from_slice(&tcp_segment(40000, 8080, TCP_SYN, 8));
        ta.send(&ipv6_frame(MAC_A, MAC_B, A6, B6, 44, 64, &frag, None));
        assert!(!tb.receives(SHORT, |f| f.len() > 70
            && f[12..14] == ETH_IPV6
            && f[22..38] == A6.octets()
            && f[20] == 44));
        assert_eq!(
            counts(&nft, &ia).get("egress_denied_ipv6"),
            ca.get("egress_denied_ipv6") + 1
        );

        // C has no IPv6 in its policy: IPv6 to it and from it is dropped (as other
        // ethertypes are), even where its IPv4 rules would allow the port.
        let cc = counts(&nft, &ic);
        let c6 = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 4);
        tc.send(&tcp6_frame(MAC_C, MAC_B, c6, B6, 40000, 8080, TCP_SYN, 9));
        assert!(!tb.receives(SHORT, |f| is_ipv6_from(f, c6, 9)));
        assert_eq!(
            counts(&nft, &ic).get("other_denied"),
            cc.get("other_denied") + 1
        );
        ta.send(&icmp6_frame(
            MAC_A,
            MAC_C,
            A6,
            c6,
            128,
            &10u32.to_be_bytes(),
        ));
        assert!(!tc.receives(SHORT, |f| f.len() >= 62
            && f[12..14] == ETH_IPV6
            && f[58..62] == 10u32.to_be_bytes()));
        assert_eq!(
            counts(&nft, &ic).get("other_denied"),
            cc.get("other_denied") + 2
        );

        ia.remove().unwrap();
        ib.remove().unwrap();
        ic.remove().unwrap();
        assert!(nft.netdev_tables().unwrap().is_empty());
    });
}

/// IPv6 on a routed tap against the host's real IPv6 stack: the host resolves the
/// guest with neighbour discovery through the policy and the guest's answer is
/// accepted by the host's kernel; a TCP connection to the allowed port gets the
/// host's SYN-ACK; another port and the host connecting to the guest are dropped and
/// counted.
#[test]
fn ipv6_on_a_routed_tap_reaches_the_hosts_stack_only_as_allowed() {
    if !requirements() {
        return;
    }
    in_netns(|| {
        let state = tempfile::tempdir().unwrap();
        let reg = Registry::open(&state.path().join("net")).unwrap();
        let nft = Nft::default();
        let tap = Tap::create("cvm6r");
        super::netns_support::enable_ipv6("cvm6r");
        ip("-6 addr add fd00:2::1/64 dev cvm6r nodad");
        let host: Ipv6Addr = "fd00:2::1".parse().unwrap();
        let guest: Ipv6Addr = "fd00:2::2".parse().unwrap();
        let p = policy(
            "name = \"r6\"\n[[interfaces]]\ntap = \"cvm6r\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"fd00:2::2\"]\negress = [{ cidr = \"fd00:2::1\", proto = \"tcp\", ports = [8080] }, { cidr = \"fd00:2::1\", proto = \"udp\", ports = [5353] }]\n",
        );
        let i = Installed::install(&p, nft.clone(), reg).unwrap();
        let hmac = mac_of("cvm6r");
        let open = std::net::TcpListener::bind((host, 8080)).unwrap();
        let _closed = std::net::TcpListener::bind((host, 9090)).unwrap();
        let udp = std::net::UdpSocket::bind((host, 5353)).unwrap();

        // The host resolves the guest: its solicitation reaches the guest, the guest's
        // advertisement (its own address, its MAC) reaches the host's kernel.
        udp.send_to(&1u32.to_be_bytes(), (guest, 40000)).unwrap();
        assert!(
            tap.receives(LONG, |f| is_icmp6(f, ND_NS, guest)),
            "the host's neighbour solicitation for the guest reaches it"
        );
        tap.send(&icmp6_frame(
            MAC_A,
            hmac,
            guest,
            host,
            ND_NA,
            &nd_body(0x60, guest, Some((2, MAC_A))),
        ));
        assert!(
            tap.receives(LONG, |f| f.len() >= 66
                && f[12..14] == ETH_IPV6
                && f[22..38] == host.octets()
                && f[62..66] == 1u32.to_be_bytes()),
            "once resolved, the host's datagram from the allowed port reaches the guest"
        );
        let neigh = Command::new("ip")
            .args(["-6", "neigh", "show", "fd00:2::2", "dev", "cvm6r"])
            .output()
            .unwrap();
        let neigh = String::from_utf8_lossy(&neigh.stdout).into_owned();
        assert!(neigh.contains("02:00:00:00:00:0a"), "{neigh}");

        // The allowed port: the host's stack answers with a SYN-ACK.
        let synack = |f: &[u8]| {
            f.len() >= 74
                && f[12..14] == ETH_IPV6
                && f[20] == 6
                && f[22..38] == host.octets()
                && f[67] == TCP_SYN_ACK
        };
        tap.send(&tcp6_frame(
            MAC_A, hmac, guest, host, 40000, 8080, TCP_SYN, 2,
        ));
        assert!(
            tap.receives(LONG, synack),
            "the host answers on the allowed port"
        );
        drop(open);
        // Another port: dropped before the host sees it (no RST, no SYN-ACK), counted.
        let before = counts(&nft, &i);
        tap.send(&tcp6_frame(
            MAC_A, hmac, guest, host, 40001, 9090, TCP_SYN, 3,
        ));
        assert!(!tap.receives(SHORT, |f| f.len() >= 54
            && f[12..14] == ETH_IPV6
            && f[20] == 6
            && f[22..38] == host.octets()));
        assert_eq!(
            counts(&nft, &i).get("egress_denied_ipv6"),
            before.get("egress_denied_ipv6") + 1
        );
        // The host connecting to the guest: its SYN never reaches the guest.
        let before = counts(&nft, &i);
        let t = std::thread::spawn(move || {
            std::net::TcpStream::connect_timeout(&(guest, 22).into(), Duration::from_millis(300))
        });
        assert!(!tap.receives(SHORT, |f| f.len() >= 54
            && f[12..14] == ETH_IPV6
            && f[20] == 6
            && f[38..54] == guest.octets()));
        assert!(t.join().unwrap().is_err());
        assert!(counts(&nft, &i).get("ingress_denied_ipv6") > before.get("ingress_denied_ipv6"));
        i.remove().unwrap();
        assert!(nft.netdev_tables().unwrap().is_empty());
    });
}

/// What reaches a guest over IPv6 from an unfiltered port of its bridge (the host's
/// network, another host): a reply to its allowed flow and a packet-too-big pass; a
/// router advertisement (a rogue router), the same reply behind a routing header (RFC
/// 5095), a neighbour solicitation with a hop limit below 255 (from off the link) and a
/// packet-too-big about a packet the guest never sent are dropped and counted.
#[test]
fn ipv6_to_a_guest_passes_only_neighbour_discovery_pmtu_and_its_rules() {
    if !requirements() {
        return;
    }
    in_netns(|| {
        let state = tempfile::tempdir().unwrap();
        let reg = Registry::open(&state.path().join("net")).unwrap();
        let nft = Nft::default();
        let ta = Tap::create("cvm6t");
        let tx = Tap::create("cvm6x");
        ip("link add cvmbr type bridge");
        ip("link set cvm6t master cvmbr");
        ip("link set cvm6x master cvmbr");
        ip("link set cvmbr up");
        let p = policy(
            "name = \"a\"\n[[interfaces]]\ntap = \"cvm6t\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"fd00:1::2\"]\negress = [{ cidr = \"fd00:1::3\", proto = \"tcp\", ports = [8080] }]\n",
        );
        let i = Installed::install(&p, nft.clone(), reg).unwrap();
        let router: Ipv6Addr = "fe80::1".parse().unwrap();
        let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
        let all_mac = [0x33, 0x33, 0, 0, 0, 1];
        // Passes: the reply to A's allowed flow, a packet-too-big for A, an NS for A.
        tx.send(&tcp6_frame(
            MAC_B,
            MAC_A,
            B6,
            A6,
            8080,
            40000,
            TCP_SYN_ACK,
            1,
        ));
        assert!(ta.receives(LONG, |f| is_ipv6_from(f, B6, 1)));
        let mut ptb = 1280u32.to_be_bytes().to_vec();
        ptb.extend_from_slice(&tcp6_frame(MAC_A, MAC_B, A6, B6, 40000, 8080, 0x10, 2)[14..]);
        tx.send(&icmp6_frame(MAC_B, MAC_A, B6, A6, 2, &ptb));
        assert!(ta.receives(LONG, |f| f.len() > 54
            && f[12..14] == ETH_IPV6
            && f[54] == 2));
        let (g_a, gmac_a) = solicited(A6);
        tx.send(&icmp6_frame(
            MAC_B,
            gmac_a,
            B6,
            g_a,
            ND_NS,
            &nd_body(0, A6, Some((1, MAC_B))),
        ));
        assert!(ta.receives(LONG, |f| is_icmp6(f, ND_NS, A6)));
        let before = counts(&nft, &i);
        assert_eq!(before.get("ingress_denied_ipv6"), 0);
        // Dropped: a router advertisement, the reply behind a routing header (type 0,
        // no segments left), an NS with hop limit 64.
        let mut ra = vec![64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        ra.extend_from_slice(&[1, 1]);
        ra.extend_from_slice(&MAC_B);
        tx.send(&icmp6_frame(MAC_B, all_mac, router, all_nodes, ND_RA, &ra));
        let mut rh = vec![6, 0, 0, 0, 0, 0, 0, 0];
        rh.extend_from_slice(&tcp_segment(8080, 40000, TCP_SYN_ACK, 3));
        tx.send(&ipv6_frame(MAC_B, MAC_A, B6, A6, 43, 64, &rh, None));
        let mut ns = icmp6_frame(
            MAC_B,
            gmac_a,
            B6,
            g_a,
            ND_NS,
            &nd_body(0, A6, Some((1, MAC_B))),
        );
        ns[21] = 64;
        tx.send(&ns);
        // A packet-too-big quoting a packet A never sent (another source): a way to
        // deliver ~1.2 KB of anything to a deny-all guest.
        let mut ptb = 1280u32.to_be_bytes().to_vec();
        ptb.extend_from_slice(&tcp6_frame(MAC_B, MAC_A, B6, A6, 8080, 40000, 0x10, 4)[14..]);
        tx.send(&icmp6_frame(MAC_B, MAC_A, B6, A6, 2, &ptb));
        assert!(!ta.receives(SHORT, |f| f.len() > 54
            && f[12..14] == ETH_IPV6
            && (f[20] == 43
                || f[54] == ND_RA
                || (f[54] == ND_NS && f[21] != 255)
                || (f[54] == 2 && f.len() > 86 && f[70..86] == B6.octets()))));
        assert_eq!(
            counts(&nft, &i).get("ingress_denied_ipv6"),
            before.get("ingress_denied_ipv6") + 4
        );
        i.remove().unwrap();
    });
}
