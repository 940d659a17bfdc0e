//! virtio-vsock stream sockets, one connection at a time, polled; implements
//! [`guest_agent::Transport`] to host CID 2, port `port` (the VMM's attestation relay).
//!
//! Queues: 0 rx (we post `RX_BUFS` buffers, each a 44-byte header descriptor chained
//! to a 4 KiB payload descriptor, both device-writable), 1 tx (one packet in flight:
//! header descriptor then payload descriptor), 2 event (buffers posted, events ignored).
//! Flow control (virtio 1.2 §5.10.6.3): we advertise `BUF_ALLOC` and our `fwd_cnt` in
//! every header, send a CREDIT_UPDATE after consuming half of it, and send no more than
//! the peer's `buf_alloc - (tx_cnt - peer_fwd_cnt)`.

use alloc::collections::VecDeque;
use guest_agent::http::{Transport, TransportError};

use crate::dma::DmaBuf;

use super::{
    dma_buffer, driver_ok, negotiate, Mmio, Queue, VirtioError, DESC_NEXT, DESC_WRITE, SPIN_LIMIT,
};

const HDR: usize = 44;
const PAYLOAD: usize = 4096;
const RX_BUFS: u16 = 8;
const BUF_ALLOC: u32 = 256 << 10;
const HOST_CID: u64 = 2;

const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_SEND: u32 = 2;

#[derive(Debug, Clone, Copy, Default)]
struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    kind: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Header {
    fn encode(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Closed,
    Connecting,
    Connected,
    /// The peer will send no more.
    PeerClosed,
}

/// The vsock device and its single connection.
#[derive(Debug)]
pub struct Vsock {
    rx: Queue,
    tx: Queue,
    _event: Queue,
    rx_hdr: DmaBuf,
    rx_data: DmaBuf,
    tx_hdr: DmaBuf,
    tx_data: DmaBuf,
    guest_cid: u64,
    port: u32,
    local_port: u32,
    state: State,
    received: VecDeque<u8>,
    fwd_cnt: u32,
    fwd_cnt_sent: u32,
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
}

fn tx_err(e: VirtioError) -> TransportError {
    TransportError(alloc::format!("{e}"))
}

impl Vsock {
    /// Initializes the device at `mmio`; connections go to host CID 2, `port`.
    pub fn new(mmio: Mmio, port: u32) -> Result<Self, VirtioError> {
        negotiate(&mmio, 0)?;
        let mut rx = Queue::new(mmio, 0, RX_BUFS * 2)?;
        let tx = Queue::new(mmio, 1, 2)?;
        let mut event = Queue::new(mmio, 2, 2)?;
        let mut cid = [0u8; 8];
        for (i, b) in cid.iter_mut().enumerate() {
            *b = mmio.config_u8(i);
        }
        let rx_hdr = dma_buffer(HDR * usize::from(RX_BUFS))?;
        let rx_data = dma_buffer(PAYLOAD * usize::from(RX_BUFS))?;
        let events = dma_buffer(8 * 2)?;
        for i in 0..2u16 {
            event.set_desc(i, events.gpa_at(8 * usize::from(i)), 8, DESC_WRITE, 0);
            event.push(i);
        }
        for i in 0..RX_BUFS {
            let (h, d) = (
                rx_hdr.gpa_at(HDR * usize::from(i)),
                rx_data.gpa_at(PAYLOAD * usize::from(i)),
            );
            rx.set_desc(2 * i, h, HDR as u32, DESC_WRITE | DESC_NEXT, 2 * i + 1);
            rx.set_desc(2 * i + 1, d, PAYLOAD as u32, DESC_WRITE, 0);
            rx.push(2 * i);
        }
        driver_ok(&mmio);
        rx.notify();
        event.notify();
        Ok(Self {
            rx,
            tx,
            _event: event,
            rx_hdr,
            rx_data,
            tx_hdr: dma_buffer(HDR)?,
            tx_data: dma_buffer(PAYLOAD)?,
            guest_cid: u64::from_le_bytes(cid),
            port,
            local_port: 0xC000 + (rdtsc() as u32 % 0x1000),
            state: State::Closed,
            received: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        })
    }

    fn send(&mut self, op: u16, flags: u32, payload: &[u8]) -> Result<(), VirtioError> {
        let h = Header {
            src_cid: self.guest_cid,
            dst_cid: HOST_CID,
            src_port: self.local_port,
            dst_port: self.port,
            len: payload.len() as u32,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        };
        h.encode(self.tx_hdr.buf);
        self.tx_data.buf[..payload.len()].copy_from_slice(payload);
        let (hp, dp) = (self.tx_hdr.gpa, self.tx_data.gpa);
        if payload.is_empty() {
            self.tx.set_desc(0, hp, HDR as u32, 0, 0);
        } else {
            self.tx.set_desc(0, hp, HDR as u32, DESC_NEXT, 1);
            self.tx.set_desc(1, dp, payload.len() as u32, 0, 0);
        }
        self.tx.push(0);
        self.tx.notify();
        self.tx.wait_used()?;
        self.fwd_cnt_sent = self.fwd_cnt;
        Ok(())
    }

    /// Processes one received packet, if any; returns whether there was one.
    fn poll(&mut self) -> Result<bool, VirtioError> {
        let Some((head, written)) = self.rx.pop_used() else {
            return Ok(false);
        };
        let i = usize::from(head / 2);
        if head % 2 != 0 || i >= usize::from(RX_BUFS) || (written as usize) < HDR {
            return Err(VirtioError::Device("bad rx element"));
        }
        let h = Header::decode(&self.rx_hdr.buf[HDR * i..HDR * (i + 1)]);
        let len = (h.len as usize).min(PAYLOAD).min(written as usize - HDR);
        let ours = h.src_cid == HOST_CID
            && h.src_port == self.port
            && h.dst_port == self.local_port
            && h.kind == TYPE_STREAM
            && self.state != State::Closed;
        if ours {
            self.peer_buf_alloc = h.buf_alloc;
            self.peer_fwd_cnt = h.fwd_cnt;
            match h.op {
                OP_RESPONSE if self.state == State::Connecting => self.state = State::Connected,
                OP_RW if self.state == State::Connected => {
                    self.received
                        .extend(&self.rx_data.buf[PAYLOAD * i..PAYLOAD * i + len]);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(len as u32);
                }
                OP_SHUTDOWN if h.flags & SHUTDOWN_SEND != 0 => self.state = State::PeerClosed,
                OP_RST => {
                    self.state = if self.state == State::Connecting {
                        State::Closed
                    } else {
                        State::PeerClosed
                    }
                }
                OP_CREDIT_REQUEST => {
                    // Re-post the buffer first: `send` waits on the tx queue only.
                    self.rx.push(head);
                    self.rx.notify();
                    self.send(OP_CREDIT_UPDATE, 0, &[])?;
                    return Ok(true);
                }
                _ => {}
            }
        }
        self.rx.push(head);
        self.rx.notify();
        Ok(true)
    }

    fn spin_until(&mut self, mut done: impl FnMut(&Self) -> bool) -> Result<(), VirtioError> {
        for _ in 0..SPIN_LIMIT {
            if done(self) {
                return Ok(());
            }
            if !self.poll()? {
                core::hint::spin_loop();
            }
        }
        Err(VirtioError::Timeout)
    }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC is unprivileged unless CR4.TSD, which nobody sets here.
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl Transport for Vsock {
    fn open(&mut self) -> Result<(), TransportError> {
        self.close();
        self.local_port = 0xC000 + (self.local_port + 1 - 0xC000) % 0x3000;
        self.received.clear();
        self.fwd_cnt = 0;
        self.tx_cnt = 0;
        self.peer_buf_alloc = 0;
        self.peer_fwd_cnt = 0;
        self.state = State::Connecting;
        self.send(OP_REQUEST, 0, &[]).map_err(tx_err)?;
        self.spin_until(|s| s.state != State::Connecting)
            .map_err(tx_err)?;
        if self.state != State::Connected {
            self.state = State::Closed;
            return Err(TransportError::new(
                "the host refused the vsock connection (is the VMM's --verifier relay on?)",
            ));
        }
        Ok(())
    }

    fn write_all(&mut self, mut data: &[u8]) -> Result<(), TransportError> {
        while !data.is_empty() {
            if self.state != State::Connected {
                return Err(TransportError::new("the vsock connection closed"));
            }
            let credit = self
                .peer_buf_alloc
                .wrapping_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt));
            if credit == 0 || credit > self.peer_buf_alloc {
                self.send(OP_CREDIT_REQUEST, 0, &[]).map_err(tx_err)?;
                let before = self.peer_fwd_cnt;
                self.spin_until(|s| s.peer_fwd_cnt != before || s.state != State::Connected)
                    .map_err(tx_err)?;
                continue;
            }
            let n = data.len().min(PAYLOAD).min(credit as usize);
            let (chunk, rest) = data.split_at(n);
            self.send(OP_RW, 0, chunk).map_err(tx_err)?;
            self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
            data = rest;
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        self.spin_until(|s| !s.received.is_empty() || s.state != State::Connected)
            .map_err(tx_err)?;
        let n = buf.len().min(self.received.len());
        for (d, s) in buf.iter_mut().zip(self.received.drain(..n)) {
            *d = s;
        }
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= BUF_ALLOC / 2
            && self.state == State::Connected
        {
            self.send(OP_CREDIT_UPDATE, 0, &[]).map_err(tx_err)?;
        }
        Ok(n)
    }

    fn close(&mut self) {
        if self.state != State::Closed {
            let _ = self.send(OP_SHUTDOWN, 3, &[]);
            let _ = self.send(OP_RST, 0, &[]);
            self.state = State::Closed;
        }
    }
}
