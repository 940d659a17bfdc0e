//! virtio-net (virtio 1.2 §5.1, device id 1) over the MMIO transport, backed by a tap.
//!
//! One receive/transmit queue pair. Every frame carries the 12-byte
//! `virtio_net_hdr_v1`, which the tap takes and gives unchanged (`IFF_VNET_HDR`,
//! `TUNSETVNETHDRSZ` 12): checksum and segmentation offloads cost the device nothing.
//!
//! # Features
//! | feature | offered | why |
//! |---|---|---|
//! | `MAC` | yes | the operator's (or a generated) MAC: the host policy's anti-spoofing rules need to know it |
//! | `CSUM`, `HOST_TSO4`, `HOST_TSO6` | yes | the guest sends partial checksums and 64 KiB TCP frames; the tap hands them to the host stack, which segments only if it must (often never: local delivery, bridges to a GSO-capable peer). The largest single win for a copying device |
//! | `GUEST_CSUM`, `GUEST_TSO4`, `GUEST_TSO6` | yes | the same for receive, enabled on the tap with `TUNSETOFFLOAD` only for what the guest accepted |
//! | `HOST_UFO`, `GUEST_UFO`, `*_ECN`, `USO` | no | UFO is deprecated in Linux (4.14) and USO needs 6.2 kernels on both sides; ECN-marked GSO is rare. Unnegotiated GSO types from the guest are refused |
//! | `MRG_RXBUF` | no | the device copies each frame once anyway; without it a Linux guest posts whole-frame receive buffers ("big packets" mode when it takes `GUEST_TSO*`), which is simpler to bound here |
//! | `MQ`, `CTRL_VQ` | no | one event thread serves the device; multiqueue needs a thread and a tap queue per pair (`IFF_MULTI_QUEUE`) and pays off only with several vCPUs driving traffic. Filtering (`CTRL_RX`) and MAC changes (`CTRL_MAC_ADDR`) belong to the host policy, not to the guest |
//! | `EVENT_IDX` | no | as for the other devices of this VMM |
//!
//! # Hostile guests
//! Each transmit chain must consist only of device-readable descriptors inside guest
//! memory, hold at least the header plus an Ethernet header and at most [`FRAME_MAX`]
//! bytes after the header; its header may only ask for what was negotiated (flags
//! `NEEDS_CSUM` with `CSUM`, GSO types TCPv4/TCPv6 with `HOST_TSO4`/`HOST_TSO6`, a
//! non-zero `gso_size`, a checksum field inside the frame and after the Ethernet
//! header, `hdr_len` within the frame; a TCPv4 GSO frame must be IPv4 (ethertype
//! 0x0800) with the checksum start at 34 or later, a TCPv6 one IPv6 (0x86dd) at 54 or
//! later). Each receive chain must be
//! device-writable and inside guest memory. A chain of either queue may have at most
//! queue-size descriptors (`INDIRECT_DESC` is not offered; virtio-queue would follow an
//! indirect table of up to 65,535). A chain that breaks a rule is returned with
//! length 0 and counted ([`NetStats`]); the frame is never sent. No guest input panics
//! the VMM or makes it allocate: both directions use one fixed buffer each (and the
//! receive side one reused descriptor list).
//!
//! In confidential guests the rings and buffers are in memory the guest shared
//! (`VIRTIO_F_ACCESS_PLATFORM`, required by the transport); the device reads each
//! transmit chain once into its own buffer before checking it, so a guest (or host)
//! changing shared memory behind the device cannot make it send what it did not check.
//!
//! # Threads
//! As virtio-vsock: a queue notification only wakes the device's event thread (an
//! eventfd), which does all tap I/O under the transport lock; the vCPU threads' seccomp
//! filters need nothing new. The event thread's filter allows reading and writing its
//! descriptors, arming its timers and `TUNSETOFFLOAD`.
//!
//! # Rate limits
//! Per direction, a byte and a packet [`TokenBucket`](crate::net::TokenBucket); a
//! queue is not processed while its bucket is empty, and the bucket's timerfd wakes the
//! thread. A TSO frame (sent, or received with a GSO header) counts as
//! `ceil(len / gso_size)` packets, as on the wire.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_net::*;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;
use super::{read_config_bytes, VirtioDevice};
use crate::net::rate_limiter::{RateLimit, RateLimiter};
use crate::net::tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN};
use crate::net::{MacAddr, RateLimits};

/// Virtio device id of a network device.
pub const VIRTIO_ID_NET: u32 = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Receive queue index.
pub const RXQ: usize = 0;
/// Transmit queue index.
pub const TXQ: usize = 1;
/// Largest frame after the header: a 64 KiB IP packet, an Ethernet and a VLAN header.
pub const FRAME_MAX: usize = 65535 + 14 + 4;
/// Smallest frame after the header: an Ethernet header.
pub const FRAME_MIN: usize = 14;

/// Epoll token that stops the event thread.
pub const TOKEN_STOP: u64 = 0;
/// Epoll token of the wake eventfd (queue notifications).
pub const TOKEN_WAKE: u64 = 1;
/// Epoll token of the tap.
pub const TOKEN_TAP: u64 = 2;
/// Epoll token of the receive limiter's timer.
pub const TOKEN_RX_TIMER: u64 = 3;
/// Epoll token of the transmit limiter's timer.
pub const TOKEN_TX_TIMER: u64 = 4;

const fn bit(f: u32) -> u64 {
    1 << f
}

/// The features the device offers.
pub const FEATURES: u64 = bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6);

/// Counters (shared with whoever wants to read them: tests, logs).
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames sent to the tap.
    pub tx_frames: AtomicU64,
    /// Bytes sent to the tap (without the virtio header).
    pub tx_bytes: AtomicU64,
    /// Transmit chains refused (bad descriptors, lengths or header).
    pub tx_malformed: AtomicU64,
    /// Frames the tap did not take.
    pub tx_errors: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Bytes delivered to the guest (without the virtio header).
    pub rx_bytes: AtomicU64,
    /// Receive chains refused (read-only or outside guest memory).
    pub rx_malformed: AtomicU64,
    /// Frames from the tap dropped (too short, larger than the guest's buffer, or with
    /// offloads the guest did not accept).
    pub rx_dropped: AtomicU64,
    /// Times a direction waited for its rate limiter.
    pub throttled: AtomicU64,
}

impl NetStats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// A snapshot for logs.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Why the device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// epoll, an eventfd or a timerfd could not be created or registered.
    #[error("cannot set up the virtio-net event loop")]
    EventLoop(#[source] io::Error),
}

/// The virtio-net device model.
pub struct Net {
    tap: Tap,
    config: [u8; 6],
    acked: u64,
    /// Offloads to apply to the tap on the event thread (`None`: up to date).
    offload: Option<u32>,
    wake: EventFd,
    tap_readable: bool,
    rx_buf: Vec<u8>,
    /// The descriptors of the receive chain being filled (reused: no allocation per
    /// frame).
    rx_descs: Vec<(vm_memory::GuestAddress, usize)>,
    /// Length of the frame waiting in `rx_buf` (0: none).
    rx_len: usize,
    tx_buf: Vec<u8>,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    stats: Arc<NetStats>,
    queue_sizes: [u16; 2],
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("tap", &self.tap.name())
            .field("acked", &format_args!("{:#x}", self.acked))
            .finish_non_exhaustive()
    }
}

fn register(epoll: &Epoll, fd: i32, token: u64, edge: bool) -> io::Result<()> {
    let mut set = EventSet::IN;
    if edge {
        set |= EventSet::EDGE_TRIGGERED;
    }
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, token))
}

impl Net {
    /// Creates the device over `tap` and registers its descriptors with `epoll`.
    pub fn new(
        tap: Tap,
        mac: MacAddr,
        limits: RateLimits,
        epoll: &Epoll,
    ) -> Result<Self, NetError> {
        let bytes = |bps: Option<u64>| bps.map(|b| (b / 8).max(1));
        let rx_limiter = RateLimiter::new(RateLimit {
            bytes: bytes(limits.rx_bps),
            packets: limits.rx_pps,
        })
        .map_err(NetError::EventLoop)?;
        let tx_limiter = RateLimiter::new(RateLimit {
            bytes: bytes(limits.tx_bps),
            packets: limits.tx_pps,
        })
        .map_err(NetError::EventLoop)?;
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventLoop)?;
        register(epoll, wake.as_raw_fd(), TOKEN_WAKE, false).map_err(NetError::EventLoop)?;
        register(epoll, tap.as_raw_fd(), TOKEN_TAP, true).map_err(NetError::EventLoop)?;
        for (l, token) in [(&rx_limiter, TOKEN_RX_TIMER), (&tx_limiter, TOKEN_TX_TIMER)] {
            if let Some(fd) = l.timer_fd() {
                register(epoll, fd, token, false).map_err(NetError::EventLoop)?;
            }
        }
        Ok(Self {
            tap,
            config: mac.0,
            acked: 0,
            offload: None,
            wake,
            tap_readable: true,
            rx_buf: vec![0; VNET_HDR_LEN + FRAME_MAX],
            rx_descs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            rx_len: 0,
            tx_buf: vec![0; VNET_HDR_LEN + FRAME_MAX],
            rx_limiter,
            tx_limiter,
            stats: Arc::new(NetStats::default()),
            queue_sizes: [QUEUE_SIZE; 2],
        })
    }

    /// The counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    fn acked(&self, f: u32) -> bool {
        self.acked & bit(f) != 0
    }

    /// Runs both directions; returns the queues that got used buffers.
    pub fn process(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> u32 {
        if let Some(flags) = self.offload.take() {
            if let Err(e) = self.tap.set_offload(flags) {
                tracing::warn!(tap = self.tap.name(), error = %e, "cannot set the tap's offloads; dropping offloaded frames");
            }
        }
        let mut used = 0;
        if let Some(q) = queues.get_mut(TXQ) {
            if self.process_tx(q, mem) {
                used |= 1 << TXQ;
            }
        }
        if let Some(q) = queues.get_mut(RXQ) {
            if self.process_rx(q, mem) {
                used |= 1 << RXQ;
            }
        }
        used
    }

    /// Copies a transmit chain into `tx_buf`; returns its length, or `None` if it is
    /// malformed (a writable descriptor, outside guest memory, too long, looping, more
    /// descriptors than the queue has: only an indirect table, which is not offered,
    /// makes such a chain).
    fn read_tx_chain(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        max_descs: usize,
    ) -> Option<usize> {
        let mut len = 0usize;
        let mut more = false;
        for (k, d) in chain.enumerate() {
            if d.is_write_only() || k >= max_descs {
                return None;
            }
            // virtio-queue ends a chain after queue-size descriptors; one whose last
            // descriptor still points on loops or is longer than the queue.
            more = d.has_next();
            let n = d.len() as usize;
            let end = len.checked_add(n).filter(|&e| e <= self.tx_buf.len())?;
            mem.read_slice(&mut self.tx_buf[len..end], d.addr()).ok()?;
            len = end;
        }
        (!more).then_some(len)
    }

    /// Checks a transmit header against the negotiated features; returns the number of
    /// wire packets the frame makes.
    fn check_tx_header(&self, len: usize) -> Option<u64> {
        let frame = len.checked_sub(VNET_HDR_LEN)?;
        if frame < FRAME_MIN {
            return None;
        }
        let h = &self.tx_buf[..VNET_HDR_LEN];
        let (flags, gso_type) = (u32::from(h[0]), u32::from(h[1]));
        let gso_size = u16::from_le_bytes([h[4], h[5]]);
        let csum_start = usize::from(u16::from_le_bytes([h[6], h[7]]));
        let csum_offset = usize::from(u16::from_le_bytes([h[8], h[9]]));
        if flags & !VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            return None;
        }
        let needs_csum = flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
        if needs_csum && (!self.acked(VIRTIO_NET_F_CSUM) || csum_start + csum_offset + 2 > frame) {
            return None;
        }
        // The header must fit the frame: its header length, and a checksum that
        // starts after the Ethernet header.
        let hdr_len = usize::from(u16::from_le_bytes([h[2], h[3]]));
        if hdr_len > frame || (needs_csum && csum_start < ETH_HLEN) {
            return None;
        }
        let ethertype = u16::from_be_bytes([
            self.tx_buf[VNET_HDR_LEN + 12],
            self.tx_buf[VNET_HDR_LEN + 13],
        ]);
        // A GSO header must match the frame's protocol, with the checksum (the TCP
        // header) after the minimal IP header.
        let gso_ok = match gso_type {
            VIRTIO_NET_HDR_GSO_NONE => return Some(1),
            VIRTIO_NET_HDR_GSO_TCPV4 => {
                self.acked(VIRTIO_NET_F_HOST_TSO4)
                    && ethertype == ETHERTYPE_IPV4
                    && csum_start >= ETH_HLEN + 20
            }
            VIRTIO_NET_HDR_GSO_TCPV6 => {
                self.acked(VIRTIO_NET_F_HOST_TSO6)
                    && ethertype == ETHERTYPE_IPV6
                    && csum_start >= ETH_HLEN + 40
            }
            _ => false,
        };
        if !gso_ok || !needs_csum || gso_size == 0 {
            return None;
        }
        Some(frame.div_ceil(usize::from(gso_size)).max(1) as u64)
    }

    fn process_tx(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        let max_descs = usize::from(q.size());
        // While throttled, a notification costs nothing (no chain is read).
        while !self.tx_limiter.is_blocked() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = self.read_tx_chain(chain, mem, max_descs);
            let packets = len.and_then(|l| self.check_tx_header(l));
            // Malformed chains are charged too (one packet, their bytes): a guest cannot
            // spin the device for free.
            let cost = len.unwrap_or(0).saturating_sub(VNET_HDR_LEN) as u64;
            if !self.tx_limiter.consume(cost, packets.unwrap_or(1)) {
                NetStats::add(&self.stats.throttled, 1);
                q.go_to_previous_position();
                break;
            }
            match (len, packets) {
                (Some(len), Some(_)) => {
                    // num_buffers is receive-only.
                    self.tx_buf[10..12].fill(0);
                    match self.tap.write_frame(&self.tx_buf[..len]) {
                        Ok(_) => {
                            NetStats::add(&self.stats.tx_frames, 1);
                            NetStats::add(&self.stats.tx_bytes, cost);
                        }
                        Err(e) => {
                            NetStats::add(&self.stats.tx_errors, 1);
                            tracing::debug!(tap = self.tap.name(), error = %e, "tap write failed; frame dropped");
                        }
                    }
                }
                _ => NetStats::add(&self.stats.tx_malformed, 1),
            }
            if q.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    /// Whether the guest accepted the offloads of a received frame's header.
    fn rx_header_acceptable(&self) -> bool {
        let (flags, gso_type) = (u32::from(self.rx_buf[0]), u32::from(self.rx_buf[1]));
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !self.acked(VIRTIO_NET_F_GUEST_CSUM) {
            return false;
        }
        match gso_type {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => self.acked(VIRTIO_NET_F_GUEST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => self.acked(VIRTIO_NET_F_GUEST_TSO6),
            _ => false,
        }
    }

    /// The wire packets the pending received frame makes: `ceil(len / gso_size)` for a
    /// GSO frame (as transmit charges), else one.
    fn rx_packets(&self) -> u64 {
        let frame = self.rx_len.saturating_sub(VNET_HDR_LEN);
        let gso_type = u32::from(self.rx_buf[1]);
        let gso_size = usize::from(u16::from_le_bytes([self.rx_buf[4], self.rx_buf[5]]));
        if gso_type == VIRTIO_NET_HDR_GSO_NONE || gso_size == 0 {
            return 1;
        }
        frame.div_ceil(gso_size).max(1) as u64
    }

    /// Reads the next frame from the tap into `rx_buf`; false when none is queued.
    fn fill_rx(&mut self) -> bool {
        while self.rx_len == 0 && self.tap_readable {
            match self.tap.read_frame(&mut self.rx_buf) {
                Ok(n) if n >= VNET_HDR_LEN + FRAME_MIN => {
                    self.rx_len = n;
                    if !self.rx_header_acceptable() {
                        self.rx_len = 0;
                        NetStats::add(&self.stats.rx_dropped, 1);
                    }
                }
                Ok(_) => NetStats::add(&self.stats.rx_dropped, 1),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::warn!(tap = self.tap.name(), error = %e, "tap read failed");
                    }
                    self.tap_readable = false;
                }
            }
        }
        self.rx_len > 0
    }

    /// Writes the pending frame into a receive chain; returns the bytes written, or
    /// `None` when the chain is malformed or too small (the frame is then dropped).
    fn write_rx_chain(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        max_descs: usize,
    ) -> Option<usize> {
        let mut descs = std::mem::take(&mut self.rx_descs);
        descs.clear();
        let r = self.write_rx_chain_into(chain, mem, max_descs, &mut descs);
        self.rx_descs = descs;
        r
    }

    fn write_rx_chain_into(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        max_descs: usize,
        descs: &mut Vec<(vm_memory::GuestAddress, usize)>,
    ) -> Option<usize> {
        // num_buffers = 1 (no MRG_RXBUF).
        self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
        let mut room = 0usize;
        for d in chain {
            // More descriptors than the queue has: only an indirect table (not
            // offered) makes such a chain.
            if !d.is_write_only() || descs.len() >= max_descs {
                NetStats::add(&self.stats.rx_malformed, 1);
                return None;
            }
            room = room.saturating_add(d.len() as usize);
            descs.push((d.addr(), d.len() as usize));
            if room >= self.rx_len {
                break;
            }
        }
        if room < self.rx_len {
            NetStats::add(&self.stats.rx_dropped, 1);
            return None;
        }
        let mut off = 0;
        for &(addr, n) in descs.iter() {
            let end = (off + n).min(self.rx_len);
            if mem.write_slice(&self.rx_buf[off..end], addr).is_err() {
                NetStats::add(&self.stats.rx_malformed, 1);
                return None;
            }
            off = end;
            if off == self.rx_len {
                break;
            }
        }
        Some(off)
    }

    fn process_rx(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        let max_descs = usize::from(q.size());
        while !self.rx_limiter.is_blocked() && self.fill_rx() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break; // the frame waits for buffers
            };
            let frame = (self.rx_len - VNET_HDR_LEN) as u64;
            if !self.rx_limiter.consume(frame, self.rx_packets()) {
                NetStats::add(&self.stats.throttled, 1);
                q.go_to_previous_position();
                break;
            }
            let head = chain.head_index();
            let written = match self.write_rx_chain(chain, mem, max_descs) {
                Some(n) => {
                    NetStats::add(&self.stats.rx_frames, 1);
                    NetStats::add(&self.stats.rx_bytes, frame);
                    n
                }
                None => 0,
            };
            self.rx_len = 0;
            if q.add_used(mem, head, written as u32).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

/// The Ethernet header's length (no VLAN tag: a tagged GSO frame is refused).
const ETH_HLEN: usize = 14;
/// The IPv4 ethertype.
const ETHERTYPE_IPV4: u16 = 0x0800;
/// The IPv6 ethertype.
const ETHERTYPE_IPV6: u16 = 0x86dd;

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, features: u64) {
        self.acked = features;
        let mut tun = 0;
        if self.acked(VIRTIO_NET_F_GUEST_CSUM) {
            tun |= TUN_F_CSUM;
            if self.acked(VIRTIO_NET_F_GUEST_TSO4) {
                tun |= TUN_F_TSO4;
            }
            if self.acked(VIRTIO_NET_F_GUEST_TSO6) {
                tun |= TUN_F_TSO6;
            }
        }
        self.offload = Some(tun);
        let _ = self.wake.write(1);
    }

    fn process_queue(&mut self, _index: usize, _queue: &mut Queue, _mem: &GuestMemoryMmap) -> bool {
        // The event thread does the work.
        let _ = self.wake.write(1);
        false
    }

    fn reset(&mut self) {
        self.acked = 0;
        self.offload = Some(0);
        self.rx_len = 0;
    }

    fn backend_event(
        &mut self,
        token: u64,
        _events: u32,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> u32 {
        match token {
            TOKEN_WAKE => {
                let _ = self.wake.read();
            }
            TOKEN_TAP => self.tap_readable = true,
            TOKEN_RX_TIMER => self.rx_limiter.timer_event(),
            TOKEN_TX_TIMER => self.tx_limiter.timer_event(),
            _ => {}
        }
        if queues.len() > TXQ {
            self.process(queues, mem)
        } else {
            0
        }
    }
}

/// Runs a virtio-net device's event loop until `TOKEN_STOP` fires.
pub fn event_loop(epoll: &Epoll, transport: &Mutex<MmioTransport>) {
    let mut events = vec![EpollEvent::default(); 16];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "virtio-net event loop failed");
                return;
            }
        };
        for ev in &events[..n] {
            if ev.data() == TOKEN_STOP {
                return;
            }
            if let Ok(mut t) = transport.lock() {
                t.backend_event(ev.data(), ev.events());
            }
        }
    }
}

#[cfg(test)]
mod tests;
