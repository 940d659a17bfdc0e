//! Device tests: the tap is one end of a `SOCK_SEQPACKET` socket pair (frames keep
//! their boundaries, as on a tap); the guest is virtio-queue's `MockSplitQueue`.

use std::os::unix::io::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, GuestAddress};

use super::*;

const MEM: usize = 1 << 20;
const RX_RING: u64 = 0x1000;
const TX_RING: u64 = 0x8000;
const BUF: u64 = 0x20_000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
}

/// A device over one end of a socket pair; returns the other end (the "host").
fn device(limits: RateLimits) -> (Net, OwnedFd, Epoll) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair returns.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both descriptors were just created and are owned here.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let epoll = Epoll::new().unwrap();
    let tap = Tap::from_fd(a, "test0");
    let net = Net::new(tap, MacAddr([2, 0, 0, 0, 0, 1]), limits, &epoll).unwrap();
    (net, b, epoll)
}

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

fn hdr(flags: u8, gso_type: u8, gso_size: u16, csum_start: u16, csum_offset: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = flags;
    h[1] = gso_type;
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    h
}

fn frame(len: usize, tag: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| i as u8 ^ tag).collect();
    f[..6].copy_from_slice(&[0xff; 6]);
    f
}

fn recv(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut b = vec![0u8; 70_000];
    // SAFETY: `b` is a writable buffer of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
    (n >= 0).then(|| {
        b.truncate(n as usize);
        b
    })
}

fn send(fd: &OwnedFd, data: &[u8]) {
    // SAFETY: `data` is a readable buffer of its length.
    let n = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
    assert_eq!(n, data.len() as isize);
}

fn used_len(m: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>, i: u64) -> u32 {
    m.read_obj(vq.used_addr().unchecked_add(8 + 8 * i)).unwrap()
}

fn used_idx(m: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    m.read_obj(vq.used_addr().unchecked_add(2)).unwrap()
}

/// Runs the device with both queues (rx, tx).
fn run(net: &mut Net, qs: &mut [Queue; 2], m: &GuestMemoryMmap) -> u32 {
    net.backend_event(TOKEN_WAKE, 0, qs, m)
}

fn activate(net: &mut Net, extra: u64) {
    net.activate(super::super::F_VERSION_1 | extra);
}

#[test]
fn a_frame_goes_out_and_one_comes_in() {
    let m = mem();
    let (mut net, host, _e) = device(RateLimits::default());
    activate(&mut net, FEATURES);
    let rxq = MockSplitQueue::create(&m, GuestAddress(RX_RING), 16);
    let txq = MockSplitQueue::create(&m, GuestAddress(TX_RING), 16);
    // TX: header and frame in two descriptors.
    let f = frame(60, 1);
    m.write_slice(&hdr(0, 0, 0, 0, 0), GuestAddress(BUF))
        .unwrap();
    m.write_slice(&f, GuestAddress(BUF + 0x100)).unwrap();
    txq.add_desc_chains(
        &[
            desc(BUF, 12, VRING_DESC_F_NEXT, 1),
            desc(BUF + 0x100, 60, 0, 0),
        ],
        0,
    )
    .unwrap();
    // RX: one 2 KiB writable buffer.
    rxq.add_desc_chains(&[desc(BUF + 0x10_000, 2048, VRING_DESC_F_WRITE, 0)], 0)
        .unwrap();
    let mut qs: [Queue; 2] = [rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
    // The host has a frame for the guest (with a header that asks for nothing).
    let g = frame(100, 2);
    let mut wire = hdr(0, 0, 0, 0, 0).to_vec();
    wire.extend_from_slice(&g);
    send(&host, &wire);

    let used = run(&mut net, &mut qs, &m);
    assert_eq!(used, 0b11, "both queues returned buffers");
    let out = recv(&host).expect("the guest's frame reached the tap");
    assert_eq!(&out[12..], &f[..]);
    assert_eq!(&out[..12], &hdr(0, 0, 0, 0, 0));
    assert_eq!(used_idx(&m, &txq), 1);
    assert_eq!(used_idx(&m, &rxq), 1);
    assert_eq!(used_len(&m, &rxq, 0), 112, "header + frame");
    let mut got = vec![0u8; 112];
    m.read_slice(&mut got, GuestAddress(BUF + 0x10_000))
        .unwrap();
    assert_eq!(&got[12..], &g[..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    let s = net.stats();
    assert_eq!(NetStats::get(&s.tx_frames), 1);
    assert_eq!(NetStats::get(&s.tx_bytes), 60);
    assert_eq!(NetStats::get(&s.rx_frames), 1);
    assert_eq!(NetStats::get(&s.rx_bytes), 100);
}

#[test]
fn a_frame_waits_for_receive_buffers() {
    let m = mem();
    let (mut net, host, _e) = device(RateLimits::default());
    activate(&mut net, 0);
    let rxq = MockSplitQueue::create(&m, GuestAddress(RX_RING), 16);
    let txq = MockSplitQueue::create(&m, GuestAddress(TX_RING), 16);
    let mut qs: [Queue; 2] = [rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
    let mut wire = hdr(0, 0, 0, 0, 0).to_vec();
    wire.extend_from_slice(&frame(64, 3));
    send(&host, &wire);
    assert_eq!(run(&mut net, &mut qs, &m), 0, "no buffers yet");
    rxq.add_desc_chains(&[desc(BUF, 2048, VRING_DESC_F_WRITE, 0)], 0)
        .unwrap();
    assert_eq!(run(&mut net, &mut qs, &m), 1 << RXQ);
    assert_eq!(used_len(&m, &rxq, 0), 76);
}

#[test]
fn hostile_transmit_chains_are_refused_counted_and_completed() {
    let m = mem();
    let (mut net, host, _e) = device(RateLimits::default());
    // The guest accepted CSUM and HOST_TSO4 only.
    activate(
        &mut net,
        bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4),
    );
    let txq = MockSplitQueue::create(&m, GuestAddress(TX_RING), 32);
    let mut f = frame(100, 4);
    f[12..14].copy_from_slice(&[0x08, 0x00]); // IPv4, for the valid TSO4 case below
    let mut chains: Vec<RawDescriptor> = Vec::new();
    let put = |h: [u8; 12], body: &[u8], slot: u64| -> u64 {
        let a = BUF + slot * 0x1000;
        m.write_slice(&h, GuestAddress(a)).unwrap();
        m.write_slice(body, GuestAddress(a + 12)).unwrap();
        a
    };
    let csum = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    let cases: Vec<(&str, [u8; 12], u32)> = vec![
        ("unknown header flag", hdr(0x80, 0, 0, 0, 0), 112),
        ("DATA_VALID is receive-only", hdr(2, 0, 0, 0, 0), 112),
        (
            "checksum field past the frame",
            hdr(csum, 0, 0, 90, 10),
            112,
        ),
        (
            "TSO6 not negotiated",
            hdr(csum, VIRTIO_NET_HDR_GSO_TCPV6 as u8, 1448, 34, 16),
            112,
        ),
        (
            "UFO never offered",
            hdr(csum, VIRTIO_NET_HDR_GSO_UDP as u8, 1448, 34, 6),
            112,
        ),
        ("ECN never offered", hdr(csum, 0x81, 1448, 34, 16), 112),
        ("GSO without a segment size", hdr(csum, 1, 0, 34, 16), 112),
        ("GSO without NEEDS_CSUM", hdr(0, 1, 1448, 0, 0), 112),
        (
            "shorter than an Ethernet header",
            hdr(0, 0, 0, 0, 0),
            12 + 13,
        ),
        ("shorter than the virtio header", hdr(0, 0, 0, 0, 0), 11),
    ];
    let mut i = 0u16;
    for (slot, (_, h, len)) in cases.iter().enumerate() {
        let a = put(*h, &f, slot as u64);
        chains.push(desc(a, *len, 0, 0));
        i += 1;
    }
    // A writable descriptor in a transmit chain; a buffer outside guest memory; a
    // chain longer than FRAME_MAX; a looping chain.
    let a = put(hdr(0, 0, 0, 0, 0), &f, 20);
    let n = chains.len() as u16;
    chains.push(desc(a, 12, VRING_DESC_F_NEXT, n + 1));
    chains.push(desc(a + 12, 100, VRING_DESC_F_WRITE, 0));
    chains.push(desc(0xfff_0000, 112, 0, 0));
    chains.push(desc(0, (VNET_HDR_LEN + FRAME_MAX + 1) as u32, 0, 0));
    let n = chains.len() as u16;
    chains.push(desc(a, 12, VRING_DESC_F_NEXT, n + 1));
    chains.push(desc(a, 12, VRING_DESC_F_NEXT, n));
    i += 4;
    txq.add_desc_chains(&chains, 0).unwrap();
    let mut qs: [Queue; 2] = [Queue::new(16).unwrap(), txq.create_queue().unwrap()];
    run(&mut net, &mut qs, &m);
    if let Some(f) = recv(&host) {
        panic!(
            "a malformed chain reached the tap: {} bytes, header {:?}",
            f.len(),
            &f[..12]
        );
    }
    assert_eq!(used_idx(&m, &txq), i, "every chain was completed");
    let s = net.stats();
    assert_eq!(NetStats::get(&s.tx_malformed), u64::from(i));
    assert_eq!(NetStats::get(&s.tx_frames), 0);
    // The same frame with a valid TSO4 header goes out.
    let h = hdr(csum, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 30, 34, 16);
    let a = put(h, &f, 21);
    txq.add_desc_chains(&[desc(a, 112, 0, 0)], 24).unwrap();
    run(&mut net, &mut qs, &m);
    assert_eq!(recv(&host).unwrap().len(), 112);
    assert_eq!(NetStats::get(&s.tx_frames), 1);
}

#[test]
fn hostile_receive_chains_and_unaccepted_offloads_drop_the_frame() {
    let m = mem();
    let (mut net, host, _e) = device(RateLimits::default());
    activate(&mut net, 0); // no receive offloads accepted
    let rxq = MockSplitQueue::create(&m, GuestAddress(RX_RING), 16);
    rxq.add_desc_chains(
        &[
            // read-only
            desc(BUF, 2048, 0, 0),
            // too small
            desc(BUF, 20, VRING_DESC_F_WRITE, 0),
            // outside guest memory
            desc(0xfff_0000, 2048, VRING_DESC_F_WRITE, 0),
            // good, split over two descriptors
            desc(BUF + 0x1000, 50, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 4),
            desc(BUF + 0x2000, 2000, VRING_DESC_F_WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let mut qs: [Queue; 2] = [rxq.create_queue().unwrap(), Queue::new(16).unwrap()];
    let good = frame(100, 5);
    for _ in 0..3 {
        let mut w = hdr(0, 0, 0, 0, 0).to_vec();
        w.extend_from_slice(&good);
        send(&host, &w);
    }
    // A TSO frame and a partial-checksum frame the guest did not accept, a runt, then
    // the good frame.
    let mut w = hdr(1, 1, 1448, 34, 16).to_vec();
    w.extend_from_slice(&good);
    send(&host, &w);
    let mut w = hdr(1, 0, 0, 34, 16).to_vec();
    w.extend_from_slice(&good);
    send(&host, &w);
    send(&host, &[0u8; 20]);
    let mut w = hdr(0, 0, 0, 0, 0).to_vec();
    w.extend_from_slice(&good);
    send(&host, &w);
    run(&mut net, &mut qs, &m);
    assert_eq!(used_idx(&m, &rxq), 4);
    for i in 0..3 {
        assert_eq!(used_len(&m, &rxq, i), 0, "chain {i} returned empty");
    }
    assert_eq!(used_len(&m, &rxq, 3), 112);
    let mut got = vec![0u8; 100];
    m.read_slice(&mut got[..38], GuestAddress(BUF + 0x1000 + 12))
        .unwrap();
    m.read_slice(&mut got[38..], GuestAddress(BUF + 0x2000))
        .unwrap();
    assert_eq!(got, good);
    let s = net.stats();
    assert_eq!(NetStats::get(&s.rx_malformed), 2);
    assert_eq!(
        NetStats::get(&s.rx_dropped),
        1 + 3,
        "too small; TSO, csum, runt"
    );
    assert_eq!(NetStats::get(&s.rx_frames), 1);
}

/// Sends `n` frames of `size` bytes through a transmit limit, driving the device from
/// its epoll (wake and timer events) as the event thread does; returns the elapsed
/// time.
fn send_limited(limits: RateLimits, n: u16, size: usize) -> (Duration, Net) {
    let m = mem();
    let (mut net, host, epoll) = device(limits);
    activate(&mut net, 0);
    let txq = MockSplitQueue::create(&m, GuestAddress(TX_RING), 256);
    let a = BUF;
    m.write_slice(&hdr(0, 0, 0, 0, 0), GuestAddress(a)).unwrap();
    m.write_slice(&frame(size, 6), GuestAddress(a + 12))
        .unwrap();
    let chains: Vec<_> = (0..n).map(|_| desc(a, (12 + size) as u32, 0, 0)).collect();
    txq.add_desc_chains(&chains, 0).unwrap();
    let mut qs = [Queue::new(16).unwrap(), txq.create_queue().unwrap()];
    let start = Instant::now();
    net.backend_event(TOKEN_WAKE, 0, &mut qs, &m);
    let mut events = vec![EpollEvent::default(); 8];
    let mut received = 0;
    while used_idx(&m, &txq) < n {
        assert!(start.elapsed() < Duration::from_secs(20), "stalled");
        let k = epoll.wait(1000, &mut events).unwrap();
        for ev in &events[..k] {
            net.backend_event(ev.data(), ev.events(), &mut qs, &m);
        }
        while recv(&host).is_some() {
            received += 1;
        }
    }
    let elapsed = start.elapsed();
    while recv(&host).is_some() {
        received += 1;
    }
    assert_eq!(received, usize::from(n), "every frame reached the tap");
    (elapsed, net)
}

#[test]
fn a_transmit_byte_limit_holds_within_ten_percent() {
    // 2 Mbit/s = 250 kB/s with a 25 kB burst; 250 frames of 1000 bytes.
    let (elapsed, net) = send_limited(
        RateLimits {
            tx_bps: Some(2_000_000),
            ..Default::default()
        },
        250,
        1000,
    );
    let limited = 250_000.0 - 25_000.0;
    let rate = limited / elapsed.as_secs_f64();
    assert!(
        rate <= 250_000.0 * 1.1,
        "{rate:.0} B/s exceeds the limit by >10% ({elapsed:?})"
    );
    // Generous: the timer only ever fires late on a loaded machine.
    assert!(
        rate >= 250_000.0 * 0.5,
        "{rate:.0} B/s: the limiter starved the flow"
    );
    assert!(NetStats::get(&net.stats().throttled) > 0);
}

#[test]
fn a_transmit_packet_limit_holds_within_ten_percent() {
    // 1000 packets/s with a burst of 100; 250 frames.
    let (elapsed, _) = send_limited(
        RateLimits {
            tx_pps: Some(1000),
            ..Default::default()
        },
        250,
        100,
    );
    let rate = 150.0 / elapsed.as_secs_f64();
    assert!(
        rate <= 1000.0 * 1.1,
        "{rate:.0} pps exceeds the limit by >10% ({elapsed:?})"
    );
    assert!(rate >= 500.0, "{rate:.0} pps: the limiter starved the flow");
}

#[test]
fn a_receive_limit_holds_within_ten_percent() {
    let m = mem();
    let (mut net, host, epoll) = device(RateLimits {
        rx_pps: Some(500),
        ..Default::default()
    });
    activate(&mut net, 0);
    let rxq = MockSplitQueue::create(&m, GuestAddress(RX_RING), 128);
    let chains: Vec<_> = (0..100u64)
        .map(|i| desc(BUF + i * 0x800, 0x800, VRING_DESC_F_WRITE, 0))
        .collect();
    rxq.add_desc_chains(&chains, 0).unwrap();
    let mut qs = [rxq.create_queue().unwrap(), Queue::new(16).unwrap()];
    let mut w = hdr(0, 0, 0, 0, 0).to_vec();
    w.extend_from_slice(&frame(60, 7));
    for _ in 0..100 {
        send(&host, &w);
    }
    let start = Instant::now();
    net.backend_event(TOKEN_TAP, 0, &mut qs, &m);
    let mut events = vec![EpollEvent::default(); 8];
    while used_idx(&m, &rxq) < 100 {
        assert!(start.elapsed() < Duration::from_secs(20), "stalled");
        let k = epoll.wait(1000, &mut events).unwrap();
        for ev in &events[..k] {
            net.backend_event(ev.data(), ev.events(), &mut qs, &m);
        }
    }
    // 100 frames, a burst of 50: 50 frames at 500/s take >= 100 ms.
    let rate = 50.0 / start.elapsed().as_secs_f64();
    assert!(rate <= 550.0, "{rate:.0} pps exceeds the limit by >10%");
}

#[test]
fn notifications_while_throttled_read_no_chain() {
    let m = mem();
    let (mut net, _host, _e) = device(RateLimits {
        tx_pps: Some(1),
        ..Default::default()
    });
    activate(&mut net, 0);
    let txq = MockSplitQueue::create(&m, GuestAddress(TX_RING), 16);
    m.write_slice(&hdr(0, 0, 0, 0, 0), GuestAddress(BUF))
        .unwrap();
    m.write_slice(&frame(60, 8), GuestAddress(BUF + 12))
        .unwrap();
    let chains: Vec<_> = (0..4).map(|_| desc(BUF, 72, 0, 0)).collect();
    txq.add_desc_chains(&chains, 0).unwrap();
    let mut qs: [Queue; 2] = [Queue::new(16).unwrap(), txq.create_queue().unwrap()];
    run(&mut net, &mut qs, &m);
    let s = net.stats();
    assert_eq!(NetStats::get(&s.tx_frames), 1, "a burst of one packet");
    assert_eq!(NetStats::get(&s.throttled), 1);
    // A guest hammering the notify register while its bucket is empty costs no copy.
    for _ in 0..100 {
        run(&mut net, &mut qs, &m);
    }
    assert_eq!(NetStats::get(&s.throttled), 1);
    assert_eq!(NetStats::get(&s.tx_frames), 1);
    assert_eq!(used_idx(&m, &txq), 1);
}

/// Attack (red-team L5): rx-pps charged a received TSO frame as one packet, so a peer
/// sending large GSO frames got gso-fold the packet budget. It now costs
/// `ceil(len / gso_size)` packets, as on the wire.
#[test]
fn a_received_tso_frame_is_charged_per_segment() {
    let m = mem();
    // 100 packets/s: a burst of 10.
    let (mut net, host, _e) = device(RateLimits {
        rx_pps: Some(100),
        ..Default::default()
    });
    activate(
        &mut net,
        1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4,
    );
    let rxq = MockSplitQueue::create(&m, GuestAddress(RX_RING), 16);
    let chains: Vec<_> = (0..8u64)
        .map(|i| desc(BUF + i * 0x1000, 0x1000, VRING_DESC_F_WRITE, 0))
        .collect();
    rxq.add_desc_chains(&chains, 0).unwrap();
    let mut qs = [rxq.create_queue().unwrap(), Queue::new(16).unwrap()];
    // 2000 bytes in 100-byte segments: 20 packets, twice the burst.
    let mut tso = hdr(
        VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        100,
        34,
        16,
    )
    .to_vec();
    tso.extend_from_slice(&frame(2000, 3));
    send(&host, &tso);
    let mut small = hdr(0, 0, 0, 0, 0).to_vec();
    small.extend_from_slice(&frame(60, 4));
    for _ in 0..5 {
        send(&host, &small);
    }
    net.backend_event(TOKEN_TAP, 0, &mut qs, &m);
    assert_eq!(
        used_idx(&m, &rxq),
        1,
        "the TSO frame was charged less than its 20 segments"
    );
    assert_eq!(NetStats::get(&net.stats().throttled), 1);
}

/// Attack (red-team L8): INDIRECT_DESC is not offered, yet virtio-queue follows an
/// indirect table of up to 65,535 descriptors per chain. A chain longer than the queue
/// (only an indirect table makes one) is now refused, on both queues.
#[test]
fn a_chain_longer_than_the_queue_is_refused() {
    let m = mem();
    let (mut net, host, _e) = device(RateLimits::default());
    activate(&mut net, 0);
    let txq = MockSplitQueue::create(&m, GuestAddress(TX_RING), 16);
    // An indirect table of 40 descriptors: the frame, then 39 empty ones.
    let table = BUF + 0x8000;
    m.write_slice(&hdr(0, 0, 0, 0, 0), GuestAddress(BUF))
        .unwrap();
    m.write_slice(&frame(60, 9), GuestAddress(BUF + 12))
        .unwrap();
    for i in 0..40u16 {
        let (len, flags, next) = if i == 0 {
            (72, VRING_DESC_F_NEXT, 1)
        } else if i < 39 {
            (0, VRING_DESC_F_NEXT, i + 1)
        } else {
            (0, 0, 0)
        };
        let d = SplitDescriptor::new(
            if i == 0 { BUF } else { BUF + 0x100 },
            len,
            flags as u16,
            next,
        );
        m.write_obj(d, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }
    txq.add_desc_chains(&[desc(table, 40 * 16, VRING_DESC_F_INDIRECT, 0)], 0)
        .unwrap();
    let mut qs: [Queue; 2] = [Queue::new(16).unwrap(), txq.create_queue().unwrap()];
    run(&mut net, &mut qs, &m);
    assert_eq!(used_idx(&m, &txq), 1, "the chain is completed");
    assert!(
        recv(&host).is_none(),
        "a 40-descriptor chain on a 16-entry queue was sent"
    );
    assert_eq!(NetStats::get(&net.stats().tx_malformed), 1);
}

/// Attack (red-team L9): transmit headers were not checked against the frame: a TCPv4
/// GSO header on an IPv6 (or any) frame, a checksum start inside the IP header, a
/// header length past the frame all went to the host's stack. Now refused.
#[test]
fn transmit_headers_must_match_the_frames_protocol() {
    let m = mem();
    let (mut net, host, _e) = device(RateLimits::default());
    activate(
        &mut net,
        bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6),
    );
    let txq = MockSplitQueue::create(&m, GuestAddress(TX_RING), 32);
    let csum = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    let (v4, v6) = (
        VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        VIRTIO_NET_HDR_GSO_TCPV6 as u8,
    );
    let with_hdr_len = |mut h: [u8; 12], n: u16| {
        h[2..4].copy_from_slice(&n.to_le_bytes());
        h
    };
    let bad: Vec<(&str, [u8; 12], [u8; 2])> = vec![
        ("TSO4 on IPv6", hdr(csum, v4, 30, 54, 16), [0x86, 0xdd]),
        ("TSO6 on IPv4", hdr(csum, v6, 30, 54, 16), [0x08, 0x00]),
        ("TSO4 on ARP", hdr(csum, v4, 30, 34, 16), [0x08, 0x06]),
        (
            "TSO4 checksum inside the IP header",
            hdr(csum, v4, 30, 20, 16),
            [0x08, 0x00],
        ),
        (
            "TSO6 checksum inside the IP header",
            hdr(csum, v6, 30, 34, 16),
            [0x86, 0xdd],
        ),
        (
            "header length past the frame",
            with_hdr_len(hdr(csum, v4, 30, 34, 16), 200),
            [0x08, 0x00],
        ),
    ];
    let good: Vec<(&str, [u8; 12], [u8; 2])> = vec![
        (
            "TSO4",
            with_hdr_len(hdr(csum, v4, 30, 34, 16), 54),
            [0x08, 0x00],
        ),
        ("TSO6", hdr(csum, v6, 30, 54, 16), [0x86, 0xdd]),
    ];
    let mut chains = Vec::new();
    for (slot, (_, h, et)) in bad.iter().chain(&good).enumerate() {
        let a = BUF + slot as u64 * 0x1000;
        let mut f = frame(100, 5);
        f[12..14].copy_from_slice(et);
        m.write_slice(h, GuestAddress(a)).unwrap();
        m.write_slice(&f, GuestAddress(a + 12)).unwrap();
        chains.push(desc(a, 112, 0, 0));
    }
    txq.add_desc_chains(&chains, 0).unwrap();
    let mut qs: [Queue; 2] = [Queue::new(16).unwrap(), txq.create_queue().unwrap()];
    run(&mut net, &mut qs, &m);
    let mut sent = Vec::new();
    while let Some(f) = recv(&host) {
        sent.push(f);
    }
    assert_eq!(
        NetStats::get(&net.stats().tx_malformed),
        bad.len() as u64,
        "refused: {} of {:?}; sent ethertypes {:?}",
        NetStats::get(&net.stats().tx_malformed),
        bad.iter().map(|b| b.0).collect::<Vec<_>>(),
        sent.iter().map(|f| [f[24], f[25]]).collect::<Vec<_>>()
    );
    assert_eq!(sent.len(), good.len());
}
