//! The vsock connection multiplexer: the stream state machine between guest packets and
//! host sockets, with credit-based flow control.
//!
//! Every method runs on the vsock event thread, under the transport lock. The guest is
//! hostile: a packet from another CID is dropped; a packet for the wrong host CID, of a
//! non-stream type, for an unknown connection, with an oversized length, or that
//! overruns the credit it was given is answered with RST (and the connection, if any,
//! is closed). Buffers are bounded per connection ([`CONN_BUF`] from the guest,
//! [`RX_CHUNK`] towards it) and the number of connections is bounded
//! ([`MAX_CONNECTIONS`]), so no guest behaviour makes the VMM allocate without limit.
//!
//! Under an emulated TEE, [`EVIDENCE_PORT`] (50001) reaches the VMM's evidence service
//! ([`crate::tee::evidence_vsock`]) from a privileged guest source port (≤
//! [`LAST_RESERVED_PORT`], i.e. root in the guest) only; under any other TEE that port is refused with RST
//! (it never falls through to a hybrid-vsock Unix socket).
//!
//! A guest connection to the attestation relay ([`RELAY_PORT`]) is answered only once
//! the relay's TCP connection to the verifier is up, as a TCP proxy accepts: if the
//! verifier cannot be reached, the relay logs the OS error at WARN (with the verifier's
//! URL and address) and answers the guest's request with RST, so the guest's `connect`
//! fails at once (Linux: `ECONNRESET`) instead of reading an empty stream.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::backend::{RelayConfig, Stream};
use super::packet::{op, Header, HDR_LEN, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM};
use crate::tee::evidence_vsock::EvidenceService;
pub use crate::tee::evidence_vsock::EVIDENCE_PORT;

/// The highest privileged vsock port: only a guest process with CAP_NET_BIND_SERVICE
/// binds a source port ≤ this (Linux `net/vmw_vsock/af_vsock.c`), and only such ports
/// reach [`EVIDENCE_PORT`].
pub const LAST_RESERVED_PORT: u32 = 1023;

/// Host port of the attestation relay.
pub const RELAY_PORT: u32 = 50000;
/// Most simultaneous connections (guest- and host-initiated).
pub const MAX_CONNECTIONS: usize = 64;
/// Most host clients waiting to send their `CONNECT` line.
pub const MAX_HANDSHAKES: usize = 16;
/// Longest `CONNECT <port>\n` line.
pub const MAX_HANDSHAKE_LINE: usize = 32;
/// Receive buffer the VMM advertises to the guest per connection (buf_alloc): the most
/// guest bytes it holds for a host socket that does not read.
pub const CONN_BUF: u32 = 256 << 10;
/// Most host bytes read ahead of the guest per connection, and the largest payload.
pub const RX_CHUNK: usize = 64 << 10;
/// Most control packets queued for a guest that supplies no receive buffers.
pub const MAX_PENDING_CONTROL: usize = 4 * MAX_CONNECTIONS;
/// First host port given to host-initiated connections.
pub const FIRST_EPHEMERAL_PORT: u32 = 1 << 30;

/// Queue indexes.
pub const RXQ: usize = 0;
/// Transmit queue.
pub const TXQ: usize = 1;
/// Event queue.
pub const EVQ: usize = 2;

/// Epoll token of the wake eventfd.
pub const TOKEN_WAKE: u64 = 1;
/// Epoll token of the Unix listener.
pub const TOKEN_LISTENER: u64 = 2;
const FIRST_TOKEN: u64 = 16;

/// (host port, guest port).
type Key = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Guest connected to a Unix socket `PATH_P`.
    Unix,
    /// Host client connected through the listener.
    Host,
    /// Guest connected to the attestation relay.
    Relay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Guest-initiated to the relay: waiting for the TCP connect to the verifier before
    /// answering the guest's REQUEST.
    Dialing,
    Established,
}

struct Conn {
    stream: Box<dyn Stream>,
    token: u64,
    kind: Kind,
    state: State,
    // Guest -> host.
    tx_buf: VecDeque<u8>,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    peer_shutdown: u32,
    write_shut: bool,
    // Host -> guest.
    rx_pending: Vec<u8>,
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    readable: bool,
    eof: bool,
    shutdown_sent: bool,
    // Lifecycle.
    dead: bool,
    logged: bool,
    to_host: u64,
    to_guest: u64,
}

impl Conn {
    fn new(stream: Box<dyn Stream>, token: u64, kind: Kind, state: State) -> Self {
        Self {
            stream,
            token,
            kind,
            state,
            tx_buf: VecDeque::new(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            peer_shutdown: 0,
            write_shut: false,
            rx_pending: Vec::new(),
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            readable: true,
            eof: false,
            shutdown_sent: false,
            dead: false,
            logged: false,
            to_host: 0,
            to_guest: 0,
        }
    }

    /// How many more bytes the guest can take.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }
}

/// Counters for tests and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Packets dropped without reply (foreign source CID, unreadable chains).
    pub dropped: u64,
    /// RST packets sent.
    pub resets: u64,
}

/// The multiplexer.
pub struct Muxer {
    guest_cid: u64,
    epoll: Arc<Epoll>,
    uds: Option<PathBuf>,
    listener: Option<UnixListener>,
    relay: Option<RelayConfig>,
    evidence: Option<EvidenceService>,
    conns: BTreeMap<Key, Conn>,
    tokens: HashMap<u64, Key>,
    handshakes: HashMap<u64, (UnixStream, Vec<u8>)>,
    control: VecDeque<Header>,
    next_token: u64,
    next_port: u32,
    stats: Stats,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("guest_cid", &self.guest_cid)
            .field("connections", &self.conns.len())
            .finish()
    }
}

fn register(epoll: &Epoll, fd: i32, token: u64) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED,
            token,
        ),
    )
}

impl Muxer {
    /// A multiplexer for guest `guest_cid`, registering its sockets with `epoll`.
    pub fn new(
        guest_cid: u64,
        epoll: Arc<Epoll>,
        uds: Option<PathBuf>,
        listener: Option<UnixListener>,
        relay: Option<RelayConfig>,
    ) -> io::Result<Self> {
        if let Some(l) = &listener {
            l.set_nonblocking(true)?;
            epoll.ctl(
                ControlOperation::Add,
                l.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, TOKEN_LISTENER),
            )?;
        }
        Ok(Self {
            guest_cid,
            epoll,
            uds,
            listener,
            relay,
            evidence: None,
            conns: BTreeMap::new(),
            tokens: HashMap::new(),
            handshakes: HashMap::new(),
            control: VecDeque::new(),
            next_token: FIRST_TOKEN,
            next_port: FIRST_EPHEMERAL_PORT,
            stats: Stats::default(),
        })
    }

    /// Offers the emulated TEE's evidence service on [`EVIDENCE_PORT`] (module docs).
    pub fn set_evidence(&mut self, service: EvidenceService) {
        self.evidence = Some(service);
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Number of open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Drops every connection (device reset): host sockets see EOF.
    pub fn reset(&mut self) {
        for (key, c) in std::mem::take(&mut self.conns) {
            self.log_close(key, &c);
        }
        self.tokens.clear();
        self.control.clear();
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn header(&self, key: Key, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            type_: TYPE_STREAM,
            op,
            buf_alloc: CONN_BUF,
            ..Default::default()
        }
    }

    fn push_control(&mut self, mut h: Header) {
        if let Some(c) = self.conns.get_mut(&(h.src_port, h.dst_port)) {
            h.fwd_cnt = c.fwd_cnt;
            c.last_fwd_cnt_sent = c.fwd_cnt;
        }
        if self.control.len() >= MAX_PENDING_CONTROL {
            tracing::warn!("vsock: the guest takes no packets; dropping a control packet");
            return;
        }
        self.control.push_back(h);
    }

    fn reset_to_guest(&mut self, key: Key) {
        self.stats.resets += 1;
        let h = self.header(key, op::RST);
        self.push_control(h);
    }

    /// Closes `key` with an RST to the guest.
    fn kill(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.dead {
                c.dead = true;
                self.reset_to_guest(key);
            }
        }
    }

    /// Advances a relay connection waiting for its TCP connect: answers the guest with
    /// RESPONSE once the verifier is reached, or with RST (and a WARN) if it cannot be.
    fn dial(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.dead || c.state != State::Dialing {
            return;
        }
        match c.stream.connected() {
            Ok(false) => {}
            Ok(true) => {
                c.state = State::Established;
                c.readable = true;
                tracing::info!(
                    event = "attestation-relay",
                    guest_port = key.1,
                    "attestation relay connection opened"
                );
                let r = self.header(key, op::RESPONSE);
                self.push_control(r);
            }
            Err(e) => {
                c.logged = true;
                if let Some(r) = &self.relay {
                    relay_unreachable(r, &e);
                }
                self.kill(key);
            }
        }
    }

    /// Closes `key` after an I/O error on its host socket (RST to the guest); a relay
    /// connection's error is logged at WARN (a TLS failure, a verifier that reset).
    fn stream_failed(&mut self, key: Key, e: &io::Error) {
        if let Some(c) = self.conns.get_mut(&key) {
            if c.kind == Kind::Relay && !c.dead {
                c.logged = true;
                tracing::warn!(
                    event = "attestation-relay",
                    verifier = self.relay.as_ref().map(|r| r.url.as_str()).unwrap_or("-"),
                    guest_port = key.1,
                    to_verifier_bytes = c.to_host,
                    from_verifier_bytes = c.to_guest,
                    error = %e,
                    "attestation relay: the connection to the verifier failed; resetting the guest's connection"
                );
            }
        }
        self.kill(key);
    }

    /// Handles readiness of `token`.
    pub fn event(&mut self, token: u64, events: u32, running: bool) {
        match token {
            TOKEN_LISTENER => self.accept(running),
            t => {
                if self.handshakes.contains_key(&t) {
                    self.handshake(t, running);
                } else if let Some(key) = self.tokens.get(&t) {
                    if let Some(c) = self.conns.get_mut(key) {
                        let ev = EventSet::from_bits_truncate(events);
                        if ev.intersects(
                            EventSet::IN
                                | EventSet::HANG_UP
                                | EventSet::ERROR
                                | EventSet::READ_HANG_UP,
                        ) {
                            c.readable = true;
                        }
                    }
                }
            }
        }
    }

    fn accept(&mut self, running: bool) {
        loop {
            let Some(l) = &self.listener else { return };
            match l.accept() {
                Ok((s, _)) => {
                    if !running || self.handshakes.len() >= MAX_HANDSHAKES {
                        tracing::warn!(running, "vsock: refusing a host connection");
                        continue;
                    }
                    let t = self.token();
                    if s.set_nonblocking(true).is_err()
                        || register(&self.epoll, s.as_raw_fd(), t).is_err()
                    {
                        continue;
                    }
                    self.handshakes.insert(t, (s, Vec::new()));
                    self.handshake(t, running);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "vsock: accept failed");
                    return;
                }
            }
        }
    }

    /// Reads a host client's `CONNECT <port>\n`.
    fn handshake(&mut self, t: u64, running: bool) {
        let Some((s, line)) = self.handshakes.get_mut(&t) else {
            return;
        };
        let mut buf = [0u8; MAX_HANDSHAKE_LINE];
        let outcome = loop {
            let room = MAX_HANDSHAKE_LINE.saturating_sub(line.len()).max(1);
            match s.read(&mut buf[..room]) {
                Ok(0) => break Err("closed"),
                Ok(n) => {
                    line.extend_from_slice(&buf[..n]);
                    if let Some(i) = line.iter().position(|&b| b == b'\n') {
                        break Ok(i);
                    }
                    if line.len() >= MAX_HANDSHAKE_LINE {
                        break Err("line too long");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break Err("read error"),
            }
        };
        let Some((s, line)) = self.handshakes.remove(&t) else {
            return;
        };
        let port = outcome.ok().and_then(|i| {
            std::str::from_utf8(&line[..i])
                .ok()?
                .strip_prefix("CONNECT ")?
                .trim()
                .parse::<u32>()
                .ok()
                .map(|p| (p, i))
        });
        let Some((port, i)) = port else {
            tracing::warn!("vsock: a host client sent no valid `CONNECT <port>` line");
            return;
        };
        if !running || self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!(port, "vsock: cannot connect a host client now");
            return;
        }
        let host_port = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(FIRST_EPHEMERAL_PORT);
        let key = (host_port, port);
        if self.conns.contains_key(&key) {
            return;
        }
        let mut c = Conn::new(Box::new(s), t, Kind::Host, State::Connecting);
        c.rx_pending = line[i + 1..].to_vec();
        self.conns.insert(key, c);
        self.tokens.insert(t, key);
        let h = self.header(key, op::REQUEST);
        self.push_control(h);
    }

    /// Opens the host side of a guest connection from `src_port` to `port`.
    fn open(&mut self, port: u32, src_port: u32) -> Option<(Box<dyn Stream>, Kind)> {
        if port == EVIDENCE_PORT {
            // Root only, as configfs-tsm and `/dev/sev-guest`: any guest user may
            // connect to CID 2, but only CAP_NET_BIND_SERVICE binds a vsock port ≤
            // 1023 (Linux `__vsock_bind_connectible`, LAST_RESERVED_PORT); an
            // unprivileged process would otherwise get evidence with its own
            // REPORT_DATA and could run the key broker's protocol.
            if src_port > LAST_RESERVED_PORT {
                tracing::warn!(
                    event = "evidence",
                    src_port,
                    "vsock: evidence asked for from an unprivileged guest port (> 1023); refused"
                );
                return None;
            }
            // Reserved: only the emulated TEE's own service answers here, never a host
            // Unix socket (`--vsock-uds`); without a service the guest gets RST.
            let Some(service) = &self.evidence else {
                tracing::warn!(
                    event = "evidence",
                    "vsock: the guest asked for emulated TEE evidence, which this TEE does not offer; refused"
                );
                return None;
            };
            return match service.connect() {
                Ok(s) => Some((Box::new(s), Kind::Unix)),
                Err(e) => {
                    tracing::warn!(event = "evidence", error = %e, "vsock: evidence connection refused");
                    None
                }
            };
        }
        if port == RELAY_PORT {
            if let Some(r) = &self.relay {
                return match r.connect() {
                    Ok(s) => Some((s, Kind::Relay)),
                    Err(e) => {
                        relay_unreachable(r, &e);
                        None
                    }
                };
            }
        }
        let base = self.uds.as_ref()?;
        let mut path = base.clone().into_os_string();
        path.push(format!("_{port}"));
        match connect_unix(Path::new(&path)) {
            Ok(s) => Some((Box::new(s), Kind::Unix)),
            Err(e) => {
                tracing::debug!(port, error = %e, "vsock: no host listener");
                None
            }
        }
    }

    /// Handles one packet from the guest.
    pub fn guest_packet(&mut self, h: &Header, payload: &[u8]) {
        if h.src_cid != self.guest_cid {
            self.stats.dropped += 1;
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.dst_cid != HOST_CID || h.type_ != TYPE_STREAM {
            if h.op != op::RST {
                self.reset_to_guest(key);
            }
            return;
        }
        if h.op == op::REQUEST {
            if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
                self.reset_to_guest(key);
                return;
            }
            let Some((stream, kind)) = self.open(h.dst_port, h.src_port) else {
                self.reset_to_guest(key);
                return;
            };
            let t = self.token();
            if register(&self.epoll, stream.as_raw_fd(), t).is_err() {
                self.reset_to_guest(key);
                return;
            }
            // The relay answers once the verifier is reached (see the module docs).
            let state = if kind == Kind::Relay {
                State::Dialing
            } else {
                State::Established
            };
            let mut c = Conn::new(stream, t, kind, state);
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
            self.conns.insert(key, c);
            self.tokens.insert(t, key);
            if state == State::Established {
                let r = self.header(key, op::RESPONSE);
                self.push_control(r);
            } else {
                self.dial(key);
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&key).filter(|c| !c.dead) else {
            if h.op != op::RST {
                self.reset_to_guest(key);
            }
            return;
        };
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        match h.op {
            op::RESPONSE if c.state == State::Connecting => {
                let line = format!("OK {}\n", key.0);
                // A fresh socket always takes these few bytes.
                if c.stream.write_all(line.as_bytes()).is_err() {
                    self.kill(key);
                } else {
                    c.state = State::Established;
                }
            }
            op::RW if c.state == State::Established && c.peer_shutdown & SHUTDOWN_SEND == 0 => {
                if c.tx_buf.len() + payload.len() > CONN_BUF as usize {
                    tracing::warn!("vsock: the guest overran its credit");
                    self.kill(key);
                } else {
                    c.tx_buf.extend(payload);
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => {
                let u = self.header(key, op::CREDIT_UPDATE);
                self.push_control(u);
            }
            op::SHUTDOWN => c.peer_shutdown |= h.flags & SHUTDOWN_BOTH,
            op::RST => {
                c.dead = true;
            }
            _ => self.kill(key),
        }
    }

    /// Moves guest data to host sockets and applies shutdowns.
    fn flush(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            if c.dead || c.state == State::Dialing {
                continue;
            }
            let mut failed = c.stream.flush_pending().err();
            while failed.is_none() && !c.tx_buf.is_empty() {
                let (a, _) = c.tx_buf.as_slices();
                match c.stream.write(a) {
                    Ok(0) => failed = Some(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        c.tx_buf.drain(..n);
                        c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                        c.to_host += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                self.stream_failed(key, &e);
                continue;
            }
            if c.tx_buf.is_empty() && c.peer_shutdown & SHUTDOWN_SEND != 0 && !c.write_shut {
                c.write_shut = true;
                let _ = c.stream.shutdown_write();
            }
            if c.tx_buf.is_empty() && c.peer_shutdown == SHUTDOWN_BOTH {
                self.kill(key);
                continue;
            }
            if c.fwd_cnt.wrapping_sub(c.last_fwd_cnt_sent) >= CONN_BUF / 4 {
                let u = self.header(key, op::CREDIT_UPDATE);
                self.push_control(u);
            }
        }
    }

    /// Reads host data ahead for connections that can take it.
    fn read_ahead(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            if c.dead || c.state != State::Established || !c.rx_pending.is_empty() {
                continue;
            }
            if c.eof {
                if !c.shutdown_sent {
                    c.shutdown_sent = true;
                    if c.kind == Kind::Relay {
                        // The verifier's answer is all delivered: the relay's work is done.
                        c.logged = true;
                        tracing::info!(
                            event = "attestation-relay",
                            guest_port = key.1,
                            to_verifier_bytes = c.to_host,
                            from_verifier_bytes = c.to_guest,
                            "attestation relayed"
                        );
                    }
                    let mut s = self.header(key, op::SHUTDOWN);
                    s.flags = SHUTDOWN_BOTH;
                    self.push_control(s);
                }
                continue;
            }
            let credit = c.peer_credit() as usize;
            if !c.readable || credit == 0 {
                continue;
            }
            let mut buf = vec![0u8; credit.min(RX_CHUNK)];
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    c.eof = true;
                    c.readable = false;
                }
                Ok(n) => {
                    buf.truncate(n);
                    c.rx_pending = buf;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                Err(e) => self.stream_failed(key, &e),
            }
        }
    }

    /// Fills the guest's receive queue: control packets first, then data, until the
    /// guest has no receive buffer or nothing can make progress.
    fn fill_rx(&mut self, rxq: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        loop {
            self.read_ahead();
            let mut progress = false;
            while let Some(h) = self.control.front().copied() {
                if !deliver(rxq, mem, &h, &mut used) {
                    return used;
                }
                self.control.pop_front();
                progress = true;
            }
            let keys: Vec<Key> = self
                .conns
                .iter()
                .filter(|(_, c)| {
                    !c.dead && c.state == State::Established && !c.rx_pending.is_empty()
                })
                .map(|(k, _)| *k)
                .collect();
            for key in keys {
                let mut h = self.header(key, op::RW);
                let Some(c) = self.conns.get_mut(&key) else {
                    continue;
                };
                h.fwd_cnt = c.fwd_cnt;
                let Some(n) = deliver_data(rxq, mem, &mut h, &c.rx_pending, &mut used) else {
                    return used;
                };
                c.last_fwd_cnt_sent = c.fwd_cnt;
                c.rx_pending.drain(..n);
                c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                c.to_guest += n as u64;
                progress = true;
            }
            if !progress {
                return used;
            }
        }
    }

    fn log_close(&self, key: Key, c: &Conn) {
        match c.kind {
            Kind::Relay if !c.logged => tracing::info!(
                event = "attestation-relay",
                guest_port = key.1,
                to_verifier_bytes = c.to_host,
                from_verifier_bytes = c.to_guest,
                "attestation relayed"
            ),
            _ => tracing::debug!(
                host_port = key.0,
                guest_port = key.1,
                to_host = c.to_host,
                to_guest = c.to_guest,
                "vsock connection closed"
            ),
        }
    }

    fn reap(&mut self) {
        let dead: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.dead)
            .map(|(k, _)| *k)
            .collect();
        for key in dead {
            if let Some(c) = self.conns.remove(&key) {
                self.tokens.remove(&c.token);
                self.log_close(key, &c);
            }
        }
    }

    /// Runs everything that can make progress: guest packets on the transmit queue,
    /// writes to host sockets, and packets to the receive queue. Returns the queues
    /// that got used buffers (bit i = queue i).
    pub fn pump(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> u32 {
        let mut used = 0;
        if let Some(txq) = queues.get_mut(TXQ).filter(|q| q.ready()) {
            if self.drain_tx(txq, mem) {
                used |= 1 << TXQ;
            }
        }
        let dialing: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::Dialing && !c.dead)
            .map(|(k, _)| *k)
            .collect();
        for key in dialing {
            self.dial(key);
        }
        self.flush();
        if let Some(rxq) = queues.get_mut(RXQ).filter(|q| q.ready()) {
            if self.fill_rx(rxq, mem) {
                used |= 1 << RXQ;
            }
        }
        self.reap();
        used
    }

    fn drain_tx(&mut self, txq: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = txq.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if let Some((h, payload)) = read_packet(chain, mem) {
                self.guest_packet(&h, &payload);
            } else {
                self.stats.dropped += 1;
            }
            if txq.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

/// Logs at WARN that the relay cannot reach the verifier, with its URL, address and the
/// OS error.
fn relay_unreachable(r: &RelayConfig, e: &io::Error) {
    tracing::warn!(
        event = "attestation-relay",
        verifier = %r.url,
        address = %r.addrs[0],
        error = %e,
        "attestation relay: cannot connect to the verifier (check the --verifier address and that the verifier runs); resetting the guest's connection"
    );
}

/// Connects to a Unix socket without blocking: a server whose backlog is full (it does
/// not accept) refuses the connection instead of stalling the event thread.
fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    sock.connect(&socket2::SockAddr::unix(path)?)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(sock)))
}

/// Reads one guest packet; `None` for a malformed one (dropped). A header whose length
/// is oversized or exceeds the chain yields an empty payload with `len` preserved, so
/// the caller answers with RST.
fn read_packet(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> Option<(Header, Vec<u8>)> {
    let mut r = chain.reader(mem).ok()?;
    let mut hb = [0u8; HDR_LEN];
    r.read_exact(&mut hb).ok()?;
    let mut h = Header::parse(&hb);
    let len = h.len as usize;
    if len > RX_CHUNK || len > r.available_bytes() {
        // Turn it into an invalid operation so the connection is reset.
        h.op = u16::MAX;
        return Some((h, Vec::new()));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).ok()?;
    if h.op != op::RW && !payload.is_empty() {
        payload.clear();
    }
    Some((h, payload))
}

/// Writes a header-only packet into the next receive chain. Returns false when the
/// guest has no receive buffer.
fn deliver(rxq: &mut Queue, mem: &GuestMemoryMmap, h: &Header, used: &mut bool) -> bool {
    let mut h = *h;
    deliver_data(rxq, mem, &mut h, &[], used).is_some()
}

/// Writes `h` and as much of `data` as fits into the next usable receive chain; returns
/// the payload bytes written, or `None` when the guest has no receive buffer. Chains
/// too small for a header are returned empty and skipped.
fn deliver_data(
    rxq: &mut Queue,
    mem: &GuestMemoryMmap,
    h: &mut Header,
    data: &[u8],
    used: &mut bool,
) -> Option<usize> {
    loop {
        let chain = rxq.pop_descriptor_chain(mem)?;
        let head = chain.head_index();
        let Ok(mut w) = chain.writer(mem) else {
            let _ = rxq.add_used(mem, head, 0);
            *used = true;
            continue;
        };
        let cap = w.available_bytes();
        // A data packet needs room for at least one payload byte.
        if cap < HDR_LEN + usize::from(!data.is_empty()) {
            let _ = rxq.add_used(mem, head, 0);
            *used = true;
            continue;
        }
        let n = data.len().min(cap - HDR_LEN).min(RX_CHUNK);
        h.len = n as u32;
        let ok = w.write_all(&h.to_bytes()).is_ok() && w.write_all(&data[..n]).is_ok();
        let written = if ok { (HDR_LEN + n) as u32 } else { 0 };
        let _ = rxq.add_used(mem, head, written);
        *used = true;
        if ok {
            return Some(n);
        }
    }
}
