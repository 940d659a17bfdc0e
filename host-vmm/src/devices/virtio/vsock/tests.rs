//! The vsock state machine driven as a guest would: packets through a mock split queue
//! pair in guest memory, host sockets on the other side.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{Epoll, EpollEvent};

use super::backend::RelayConfig;
use super::muxer::{Muxer, CONN_BUF, FIRST_EPHEMERAL_PORT, RELAY_PORT, RXQ, TOKEN_LISTENER, TXQ};
use super::packet::{op, Header, HDR_LEN, HOST_CID, SHUTDOWN_BOTH, TYPE_STREAM};

const GUEST_CID: u64 = 3;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;
const BUF: u64 = 0x1000;
const BIG: u64 = 0x30_0000;

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// The guest memory a [`Guest`] drives its queues in.
fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
}

/// A guest driver: RX and TX queues in guest memory and the muxer under test.
struct Guest<'m> {
    mem: &'m GuestMemoryMmap,
    rx: MockSplitQueue<'m, GuestMemoryMmap>,
    tx: MockSplitQueue<'m, GuestMemoryMmap>,
    queues: Vec<Queue>,
    rx_next: u16,
    tx_next: u16,
    rx_seen: u16,
    muxer: Muxer,
    epoll: Arc<Epoll>,
}

impl<'m> Guest<'m> {
    fn new(
        mem: &'m GuestMemoryMmap,
        uds: Option<std::path::PathBuf>,
        listener: Option<UnixListener>,
    ) -> Self {
        Self::with_relay(mem, uds, listener, None)
    }

    fn with_relay(
        mem: &'m GuestMemoryMmap,
        uds: Option<std::path::PathBuf>,
        listener: Option<UnixListener>,
        relay: Option<RelayConfig>,
    ) -> Self {
        let rx = MockSplitQueue::create(mem, GuestAddress(0x1000), 64);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x8000), 64);
        let queues = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            Queue::new(4).unwrap(),
        ];
        let epoll = Arc::new(Epoll::new().unwrap());
        let muxer = Muxer::new(GUEST_CID, epoll.clone(), uds, listener, relay).unwrap();
        Self {
            mem,
            rx,
            tx,
            queues,
            rx_next: 0,
            tx_next: 0,
            rx_seen: 0,
            muxer,
            epoll,
        }
    }

    fn give_rx(&mut self, n: u16, len: u32) {
        for _ in 0..n {
            let i = self.rx_next;
            self.rx
                .add_desc_chains(
                    &[desc(
                        RX_BUFS + u64::from(i) * BUF,
                        len,
                        VRING_DESC_F_WRITE,
                        0,
                    )],
                    i,
                )
                .unwrap();
            self.rx_next += 1;
        }
    }

    fn send_raw(&mut self, bytes: &[u8], declared: u32) {
        let i = self.tx_next;
        let addr = TX_BUFS + u64::from(i) * BUF;
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        let _ = declared;
        self.tx
            .add_desc_chains(&[desc(addr, bytes.len() as u32, 0, 0)], i)
            .unwrap();
        self.tx_next += 1;
    }

    fn send(&mut self, h: Header, payload: &[u8]) {
        let mut b = h.to_bytes().to_vec();
        b.extend_from_slice(payload);
        self.send_raw(&b, h.len);
        self.pump();
    }

    fn pkt(&self, op: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 64 << 10,
            ..Default::default()
        }
    }

    /// Delivers pending epoll events, then runs the muxer.
    fn pump(&mut self) -> u32 {
        let mut evs = vec![EpollEvent::default(); 16];
        let n = self.epoll.wait(0, &mut evs).unwrap();
        for e in &evs[..n] {
            self.muxer.event(e.data(), e.events(), true);
        }
        self.muxer.pump(&mut self.queues, self.mem)
    }

    /// Pumps until a packet shows up on RX (or a timeout), returning every new packet.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for _ in 0..200 {
            self.pump();
            let used = self.rx.used_addr();
            let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
            while self.rx_seen != idx {
                let e = used.unchecked_add(4 + 8 * u64::from(self.rx_seen % 64));
                let id: u32 = self.mem.read_obj(e).unwrap();
                let len: u32 = self.mem.read_obj(e.unchecked_add(4)).unwrap();
                self.rx_seen = self.rx_seen.wrapping_add(1);
                if (len as usize) < HDR_LEN {
                    continue;
                }
                let mut b = vec![0u8; len as usize];
                self.mem
                    .read_slice(&mut b, GuestAddress(RX_BUFS + u64::from(id) * BUF))
                    .unwrap();
                let h = Header::parse(b[..HDR_LEN].try_into().unwrap());
                out.push((h, b[HDR_LEN..].to_vec()));
            }
            if !out.is_empty() {
                return out;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        out
    }
}

fn ops(p: &[(Header, Vec<u8>)]) -> Vec<u16> {
    p.iter().map(|(h, _)| h.op).collect()
}

#[test]
fn guest_stream_to_a_unix_socket_with_credit_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("v.sock");
    let server = UnixListener::bind(dir.path().join("v.sock_1234")).unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, Some(base), None);
    g.give_rx(16, 4096);

    let req = g.pkt(op::REQUEST, 777, 1234);
    g.send(req, &[]);
    let p = g.recv();
    assert_eq!(ops(&p), vec![op::RESPONSE]);
    let r = p[0].0;
    assert_eq!(
        (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
        (2, 3, 1234, 777)
    );
    assert_eq!(r.buf_alloc, CONN_BUF);
    let (mut host, _) = server.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    let mut rw = g.pkt(op::RW, 777, 1234);
    rw.len = 5;
    g.send(rw, b"hello");
    let mut b = [0u8; 5];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");

    host.write_all(b"world").unwrap();
    let p = g.recv();
    assert_eq!(ops(&p), vec![op::RW]);
    assert_eq!(p[0].1, b"world");
    assert_eq!(p[0].0.fwd_cnt, 5, "the host forwarded the guest's 5 bytes");

    // The guest asks for credit.
    g.send(g.pkt(op::CREDIT_REQUEST, 777, 1234), &[]);
    let p = g.recv();
    assert_eq!(ops(&p), vec![op::CREDIT_UPDATE]);

    // The host closes: the guest is told, then resets, and the connection is gone.
    drop(host);
    let p = g.recv();
    assert_eq!(ops(&p), vec![op::SHUTDOWN]);
    assert_eq!(p[0].0.flags, SHUTDOWN_BOTH);
    g.send(g.pkt(op::RST, 777, 1234), &[]);
    assert_eq!(g.muxer.connections(), 0);
}

#[test]
fn guest_shutdown_half_closes_and_full_shutdown_resets() {
    let dir = tempfile::tempdir().unwrap();
    let server = UnixListener::bind(dir.path().join("s_9")).unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, Some(dir.path().join("s")), None);
    g.give_rx(8, 4096);
    g.send(g.pkt(op::REQUEST, 5, 9), &[]);
    assert_eq!(ops(&g.recv()), vec![op::RESPONSE]);
    let (mut host, _) = server.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = g.pkt(op::SHUTDOWN, 5, 9);
    s.flags = 2; // SEND
    g.send(s, &[]);
    let mut v = Vec::new();
    host.read_to_end(&mut v).unwrap();
    assert!(v.is_empty(), "the host sees EOF");
    s.flags = SHUTDOWN_BOTH;
    g.send(s, &[]);
    assert_eq!(ops(&g.recv()), vec![op::RST]);
    assert_eq!(g.muxer.connections(), 0);
}

#[test]
fn hostile_packets_get_rst_or_are_dropped_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let _server = UnixListener::bind(dir.path().join("s_1")).unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, Some(dir.path().join("s")), None);
    g.give_rx(32, 4096);

    // No listener on port 2: RST.
    g.send(g.pkt(op::REQUEST, 10, 2), &[]);
    assert_eq!(ops(&g.recv()), vec![op::RST]);
    // RW on an unknown connection: RST.
    let mut rw = g.pkt(op::RW, 11, 1);
    rw.len = 1;
    g.send(rw, b"x");
    assert_eq!(ops(&g.recv()), vec![op::RST]);
    // A forged source CID is dropped without a reply.
    let mut forged = g.pkt(op::REQUEST, 12, 1);
    forged.src_cid = 99;
    g.send(forged, &[]);
    assert!(g.recv().is_empty());
    assert_eq!(g.muxer.stats().dropped, 1);
    // Wrong destination CID, wrong type: RST.
    let mut wrong = g.pkt(op::REQUEST, 13, 1);
    wrong.dst_cid = 7;
    g.send(wrong, &[]);
    assert_eq!(ops(&g.recv()), vec![op::RST]);
    let mut dgram = g.pkt(op::REQUEST, 14, 1);
    dgram.type_ = 2;
    g.send(dgram, &[]);
    assert_eq!(ops(&g.recv()), vec![op::RST]);
    // A header claiming more payload than the chain carries, or an absurd length.
    g.send(g.pkt(op::REQUEST, 15, 1), &[]);
    assert_eq!(ops(&g.recv()), vec![op::RESPONSE]);
    let mut liar = g.pkt(op::RW, 15, 1);
    liar.len = 1000;
    g.send(liar, b"short");
    assert_eq!(ops(&g.recv()), vec![op::RST]);
    let mut huge = g.pkt(op::RW, 16, 1);
    huge.len = u32::MAX;
    g.send(huge, &[]);
    assert_eq!(ops(&g.recv()), vec![op::RST]);
    // A truncated header is dropped.
    g.send_raw(&[0u8; 10], 0);
    g.pump();
    assert!(g.muxer.stats().dropped >= 2);
    // Unknown operation on a live connection: RST and the connection is closed.
    g.send(g.pkt(op::REQUEST, 17, 1), &[]);
    assert_eq!(ops(&g.recv()), vec![op::RESPONSE]);
    g.send(g.pkt(0x77, 17, 1), &[]);
    assert_eq!(ops(&g.recv()), vec![op::RST]);
    // A looping descriptor chain on TX and a too-small RX buffer.
    let i = g.tx_next;
    g.tx.add_desc_chains(
        &[
            desc(TX_BUFS, 44, VRING_DESC_F_NEXT, i + 1),
            desc(TX_BUFS, 44, VRING_DESC_F_NEXT, i),
        ],
        i,
    )
    .unwrap();
    g.tx_next += 2;
    g.pump();
}

#[test]
fn credit_overrun_resets_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    // A host that never reads.
    let server = UnixListener::bind(dir.path().join("s_1")).unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, Some(dir.path().join("s")), None);
    g.give_rx(8, 4096);
    g.send(g.pkt(op::REQUEST, 20, 1), &[]);
    assert_eq!(ops(&g.recv()), vec![op::RESPONSE]);
    let (_host, _) = server.accept().unwrap();
    let chunk = vec![0xabu8; 60_000];
    g.mem.write_slice(&chunk, GuestAddress(BIG)).unwrap();
    let mut saw_rst = false;
    // CONN_BUF plus the socket buffer is all the guest may have outstanding.
    for _ in 0..40 {
        let mut rw = g.pkt(op::RW, 20, 1);
        rw.len = chunk.len() as u32;
        g.mem
            .write_slice(&rw.to_bytes(), GuestAddress(BIG - 44))
            .unwrap();
        let i = g.tx_next;
        g.tx.add_desc_chains(&[desc(BIG - 44, 44 + 60_000, 0, 0)], i)
            .unwrap();
        g.tx_next += 1;
        g.pump();
        if ops(&g.recv_now()).contains(&op::RST) {
            saw_rst = true;
            break;
        }
    }
    assert!(saw_rst, "a guest that ignores credit is reset");
    assert_eq!(g.muxer.connections(), 0);
}

impl Guest<'_> {
    /// Like `recv`, without waiting.
    fn recv_now(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used = self.rx.used_addr();
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.rx_seen != idx {
            let e = used.unchecked_add(4 + 8 * u64::from(self.rx_seen % 64));
            let id: u32 = self.mem.read_obj(e).unwrap();
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let mut b = [0u8; HDR_LEN];
            self.mem
                .read_slice(&mut b, GuestAddress(RX_BUFS + u64::from(id) * BUF))
                .unwrap();
            out.push((Header::parse(&b), Vec::new()));
        }
        out
    }
}

#[test]
fn host_initiated_connection_with_connect_and_ok() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("h.sock");
    let listener = UnixListener::bind(&base).unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, Some(base.clone()), Some(listener));
    g.give_rx(8, 4096);
    let mut client = UnixStream::connect(&base).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"CONNECT 52\nearly").unwrap();
    let p = g.recv();
    assert_eq!(ops(&p), vec![op::REQUEST]);
    let req = p[0].0;
    assert_eq!((req.src_port, req.dst_port), (FIRST_EPHEMERAL_PORT, 52));
    g.send(g.pkt(op::RESPONSE, 52, FIRST_EPHEMERAL_PORT), &[]);
    let mut line = [0u8; 14];
    client.read_exact(&mut line).unwrap();
    assert_eq!(&line, format!("OK {FIRST_EPHEMERAL_PORT}\n").as_bytes());
    // Bytes the client sent after its CONNECT line reach the guest.
    let p = g.recv();
    assert_eq!(ops(&p), vec![op::RW]);
    assert_eq!(p[0].1, b"early");

    // A client with a bad line is closed.
    let mut bad = UnixStream::connect(&base).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bad.write_all(b"HELLO\n").unwrap();
    g.muxer.event(TOKEN_LISTENER, 0, true);
    g.pump();
    let mut v = Vec::new();
    assert_eq!(bad.read_to_end(&mut v).unwrap(), 0);
    let _ = (RXQ, TXQ);
}

#[test]
fn a_host_server_that_never_accepts_cannot_stall_the_event_thread() {
    let dir = tempfile::tempdir().unwrap();
    // A listener with a tiny backlog that never accepts.
    let l = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    l.bind(&socket2::SockAddr::unix(dir.path().join("s_1")).unwrap())
        .unwrap();
    l.listen(0).unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, Some(dir.path().join("s")), None);
    g.give_rx(16, 4096);
    let mut resets = 0;
    for port in 0..6 {
        g.send(g.pkt(op::REQUEST, 100 + port, 1), &[]);
        resets += ops(&g.recv()).iter().filter(|&&o| o == op::RST).count();
    }
    assert!(resets > 0, "a full backlog is refused, not waited for");
}

/// Runs `f` with a subscriber that records the log lines (plain text, no colour).
fn with_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    let buf = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || LogWriter(w.clone()))
        .finish();
    let out = tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    (out, text)
}

struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_relay_whose_verifier_is_unreachable_resets_the_guest_and_warns() {
    let port = closed_port();
    let relay = RelayConfig::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
    let mem = guest_memory();
    let (packets, logs) = with_logs(|| {
        let mut g = Guest::with_relay(&mem, None, None, Some(relay));
        g.give_rx(16, 4096);
        let req = g.pkt(op::REQUEST, 777, RELAY_PORT);
        g.send(req, &[]);
        let mut all = g.recv();
        // Anything that follows (nothing should).
        all.extend(g.recv());
        all
    });
    // The guest's connect is refused at once: no RESPONSE first (which would make it
    // read an empty stream and report a truncated response).
    assert_eq!(ops(&packets), vec![op::RST], "{logs}");
    let warn = logs
        .lines()
        .find(|l| l.contains("WARN") && l.contains("cannot connect to the verifier"))
        .unwrap_or_else(|| panic!("no WARN about the verifier in:\n{logs}"));
    assert!(warn.contains(&format!("127.0.0.1:{port}")), "{warn}");
    assert!(warn.to_lowercase().contains("refused"), "{warn}");
}

#[test]
fn a_relay_answers_the_guest_once_the_verifier_is_connected() {
    let verifier = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", verifier.local_addr().unwrap());
    let relay = RelayConfig::new(&url, None).unwrap();
    let mem = guest_memory();
    let mut g = Guest::with_relay(&mem, None, None, Some(relay));
    g.give_rx(16, 4096);
    let req = g.pkt(op::REQUEST, 778, RELAY_PORT);
    g.send(req, &[]);
    assert_eq!(ops(&g.recv()), vec![op::RESPONSE]);
    let (mut v, _) = verifier.accept().unwrap();
    v.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rw = g.pkt(op::RW, 778, RELAY_PORT);
    rw.len = 4;
    g.send(rw, b"ping");
    let mut b = [0u8; 4];
    v.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    v.write_all(b"pong").unwrap();
    let p = g.recv();
    assert_eq!(ops(&p), vec![op::RW]);
    assert_eq!(p[0].1, b"pong");
}

/// ATTACK: without an emulated TEE (`--tee none`, hardware backends) the evidence port
/// must not reach a host process listening on the hybrid-vsock socket `<uds>_50001`:
/// a guest selecting `cvm.tsm=vsock` would otherwise take "evidence" from the host.
#[test]
fn the_evidence_port_is_refused_without_an_emulated_tee_even_with_a_host_listener() {
    use super::muxer::EVIDENCE_PORT;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("v.sock");
    let _host = UnixListener::bind(dir.path().join(format!("v.sock_{EVIDENCE_PORT}"))).unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, Some(base), None);
    g.give_rx(16, 4096);
    let req = g.pkt(op::REQUEST, 900, EVIDENCE_PORT);
    g.send(req, &[]);
    assert_eq!(ops(&g.recv()), vec![op::RST]);
    assert_eq!(g.muxer.connections(), 0);
}

/// Under an emulated TEE the evidence port reaches the VMM's service (not a host
/// socket) and carries its answers.
#[test]
fn the_evidence_port_reaches_the_emulated_tee_s_service() {
    use super::muxer::EVIDENCE_PORT;
    use crate::tee::evidence_vsock::{EvidenceService, EvidenceSource};

    #[derive(Debug)]
    struct Info;
    impl EvidenceSource for Info {
        fn execute(&self, cmd: u32, _request: &[u8]) -> Result<Vec<u8>, u32> {
            match cmd {
                5 => Ok(vec![1, 0, 0, 0, 1, 0, 0, 0]),
                _ => Err(2),
            }
        }
    }
    let mem = guest_memory();
    let mut g = Guest::new(&mem, None, None);
    g.muxer.set_evidence(
        EvidenceService::start(Arc::new(Info), crate::seccomp::SeccompMode::Off).unwrap(),
    );
    g.give_rx(16, 4096);
    let req = g.pkt(op::REQUEST, 901, EVIDENCE_PORT);
    g.send(req, &[]);
    assert_eq!(ops(&g.recv()), vec![op::RESPONSE]);
    let mut rw = g.pkt(op::RW, 901, EVIDENCE_PORT);
    let info = [5u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
    rw.len = info.len() as u32;
    g.send(rw, &info);
    let mut answer = Vec::new();
    for _ in 0..20 {
        for (h, p) in g.recv() {
            if h.op == op::RW {
                answer.extend_from_slice(&p);
            }
        }
        if answer.len() >= 16 {
            break;
        }
    }
    assert_eq!(
        answer,
        [0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0],
        "status 0, 8 bytes: emulated SNP, version 1"
    );
}

/// ATTACK (F2): an unprivileged guest process (any user may `connect` to CID 2) must
/// not get signed evidence with its own REPORT_DATA, which configfs-tsm and
/// `/dev/sev-guest` give to root only. Linux lets only CAP_NET_BIND_SERVICE bind a
/// vsock port ≤ 1023, so the service accepts privileged source ports only.
#[test]
fn the_evidence_port_refuses_an_unprivileged_source_port() {
    use super::muxer::EVIDENCE_PORT;
    use crate::tee::evidence_vsock::{EvidenceService, EvidenceSource};

    #[derive(Debug)]
    struct Info;
    impl EvidenceSource for Info {
        fn execute(&self, _cmd: u32, _request: &[u8]) -> Result<Vec<u8>, u32> {
            Ok(vec![1, 0, 0, 0, 1, 0, 0, 0])
        }
    }
    let mem = guest_memory();
    let mut g = Guest::new(&mem, None, None);
    g.muxer.set_evidence(
        EvidenceService::start(Arc::new(Info), crate::seccomp::SeccompMode::Off).unwrap(),
    );
    g.give_rx(16, 4096);
    for unprivileged in [40000u32, 1024] {
        let req = g.pkt(op::REQUEST, unprivileged, EVIDENCE_PORT);
        g.send(req, &[]);
        assert_eq!(ops(&g.recv()), vec![op::RST], "source port {unprivileged}");
        assert_eq!(g.muxer.connections(), 0);
    }
    for privileged in [900u32, 1023] {
        let req = g.pkt(op::REQUEST, privileged, EVIDENCE_PORT);
        g.send(req, &[]);
        assert_eq!(
            ops(&g.recv()),
            vec![op::RESPONSE],
            "source port {privileged}"
        );
    }
}
