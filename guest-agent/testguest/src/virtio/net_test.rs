//! The network self-test (`cvm.net_test=GUEST_IP,HOST_IP,PORT`): over the first
//! virtio-net device, the guest resolves the host's MAC with ARP, sends the UDP
//! datagram `cvm-testguest hello` from GUEST_IP:PORT to HOST_IP:PORT, then waits for a
//! datagram from the host to GUEST_IP:PORT and sends it back prefixed with `echo: `. It
//! answers ARP requests for GUEST_IP all along. Used by `cvm/tests/launch_net.rs`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::net::Net;
use super::{find, DEVICE_NET};

const ETH_ARP: u16 = 0x0806;
const ETH_IP: u16 = 0x0800;
/// Spins between ARP retries, and in all (native ring-3 spins).
const RETRY_SPINS: u64 = 30_000_000;
const MAX_RETRIES: u32 = 200;

struct Params {
    guest: [u8; 4],
    host: [u8; 4],
    port: u16,
}

fn ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut out {
        *o = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn parse(v: &str) -> Result<Params, String> {
    let bad = || String::from("cvm.net_test= needs GUEST_IP,HOST_IP,PORT");
    let mut it = v.split(',');
    let guest = it.next().and_then(ipv4).ok_or_else(bad)?;
    let host = it.next().and_then(ipv4).ok_or_else(bad)?;
    let port = it.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    Ok(Params { guest, host, port })
}

/// The `cvm.net_test=` value of the command line, if any.
pub fn requested(cmdline: &str) -> Option<&str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("cvm.net_test="))
}

fn eth(dst: [u8; 6], src: [u8; 6], kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&kind.to_be_bytes());
    f.extend_from_slice(payload);
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa);
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa);
    a
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp(p: &Params, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut ip = Vec::with_capacity(total);
    ip.extend_from_slice(&[0x45, 0]);
    ip.extend_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&p.guest);
    ip.extend_from_slice(&p.host);
    let c = checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&p.port.to_be_bytes());
    ip.extend_from_slice(&p.port.to_be_bytes());
    ip.extend_from_slice(&(udp_len as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0]); // no UDP checksum (IPv4)
    ip.extend_from_slice(payload);
    ip
}

/// What a received frame is.
enum Rx {
    ArpReply([u8; 6]),
    Udp(Vec<u8>),
    Other,
}

/// Answers an ARP request for our address; classifies everything else.
fn handle(net: &mut Net, p: &Params, f: &[u8]) -> Result<Rx, String> {
    if f.len() < 14 {
        return Ok(Rx::Other);
    }
    let kind = u16::from_be_bytes([f[12], f[13]]);
    let body = &f[14..];
    if kind == ETH_ARP && body.len() >= 28 {
        let op = u16::from_be_bytes([body[6], body[7]]);
        let sha: [u8; 6] = body[8..14].try_into().unwrap_or_default();
        let spa: [u8; 4] = body[14..18].try_into().unwrap_or_default();
        let tpa: [u8; 4] = body[24..28].try_into().unwrap_or_default();
        if op == 1 && tpa == p.guest {
            let reply = arp(2, net.mac(), p.guest, sha, spa);
            net.send(&eth(sha, net.mac(), ETH_ARP, &reply))
                .map_err(|e| format!("virtio-net: {e}"))?;
        } else if op == 2 && spa == p.host {
            return Ok(Rx::ArpReply(sha));
        }
        return Ok(Rx::Other);
    }
    if kind == ETH_IP && body.len() >= 28 && body[0] == 0x45 && body[9] == 17 {
        let total = usize::from(u16::from_be_bytes([body[2], body[3]])).min(body.len());
        let dst: [u8; 4] = body[16..20].try_into().unwrap_or_default();
        let dport = u16::from_be_bytes([body[22], body[23]]);
        if dst == p.guest && dport == p.port && total >= 28 {
            return Ok(Rx::Udp(body[28..total].to_vec()));
        }
    }
    Ok(Rx::Other)
}

/// Runs the exchange; returns what the host sent.
pub fn run(spec: &str) -> Result<String, String> {
    let p = parse(spec)?;
    let dev = find(DEVICE_NET, 0).ok_or("no virtio-net device")?;
    let mut net = Net::new(dev).map_err(|e| format!("virtio-net: {e}"))?;
    let mac = net.mac();
    crate::println!(
        "cvm-testguest: virtio-net {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}; resolving the host",
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    let who_has = eth(
        [0xff; 6],
        mac,
        ETH_ARP,
        &arp(1, mac, p.guest, [0; 6], p.host),
    );
    let mut host_mac = None;
    'arp: for _ in 0..MAX_RETRIES {
        net.send(&who_has).map_err(|e| format!("virtio-net: {e}"))?;
        for _ in 0..RETRY_SPINS {
            if let Some(f) = net.recv() {
                if let Rx::ArpReply(m) = handle(&mut net, &p, &f)? {
                    host_mac = Some(m);
                    break 'arp;
                }
            }
            core::hint::spin_loop();
        }
    }
    let host_mac = host_mac.ok_or("the host did not answer ARP")?;
    net.send(&eth(
        host_mac,
        mac,
        ETH_IP,
        &udp(&p, b"cvm-testguest hello"),
    ))
    .map_err(|e| format!("virtio-net: {e}"))?;
    crate::println!("cvm-testguest: hello sent; waiting for the host");
    for _ in 0..u64::from(MAX_RETRIES) * RETRY_SPINS {
        if let Some(f) = net.recv() {
            if let Rx::Udp(data) = handle(&mut net, &p, &f)? {
                let mut echo = Vec::from(&b"echo: "[..]);
                echo.extend_from_slice(&data);
                net.send(&eth(host_mac, mac, ETH_IP, &udp(&p, &echo)))
                    .map_err(|e| format!("virtio-net: {e}"))?;
                return Ok(String::from_utf8_lossy(&data)
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect());
            }
        }
        core::hint::spin_loop();
    }
    Err("no datagram from the host".into())
}
