//! virtio-net, polled: queue 0 receives into `RX_BUFS` posted buffers of [`BUF`] bytes
//! (header and frame in one device-writable descriptor), queue 1 sends one frame at a
//! time. Only `VIRTIO_NET_F_MAC` is negotiated: no offloads, so every frame carries a
//! zero `virtio_net_hdr_v1` and full checksums.

use alloc::vec::Vec;

use crate::dma::DmaBuf;

use super::DESC_WRITE;
use super::{dma_buffer, driver_ok, negotiate, Mmio, Queue, VirtioError};

/// `virtio_net_hdr_v1`.
pub const HDR: usize = 12;
/// Bytes per receive buffer (header + a 1514-byte frame, rounded up).
pub const BUF: usize = 2048;
const RX_BUFS: u16 = 8;
const F_MAC: u64 = 1 << 5;

/// A virtio-net device.
#[derive(Debug)]
pub struct Net {
    rx: Queue,
    tx: Queue,
    rx_bufs: DmaBuf,
    tx_buf: DmaBuf,
    mac: [u8; 6],
}

impl Net {
    /// Initializes the device at `mmio` and posts the receive buffers.
    pub fn new(mmio: Mmio) -> Result<Self, VirtioError> {
        negotiate(&mmio, F_MAC)?;
        let mut rx = Queue::new(mmio, 0, RX_BUFS)?;
        let tx = Queue::new(mmio, 1, 2)?;
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = mmio.config_u8(i);
        }
        let rx_bufs = dma_buffer(BUF * usize::from(RX_BUFS))?;
        let tx_buf = dma_buffer(BUF)?;
        driver_ok(&mmio);
        for i in 0..RX_BUFS {
            rx.set_desc(
                i,
                rx_bufs.gpa_at(usize::from(i) * BUF),
                BUF as u32,
                DESC_WRITE,
                0,
            );
            rx.push(i);
        }
        rx.notify();
        Ok(Self {
            rx,
            tx,
            rx_bufs,
            tx_buf,
            mac,
        })
    }

    /// The MAC the device gave us.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends one Ethernet frame (at most `BUF - HDR` bytes).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), VirtioError> {
        if frame.len() > BUF - HDR {
            return Err(VirtioError::Device("frame too large"));
        }
        self.tx_buf.buf[..HDR].fill(0);
        self.tx_buf.buf[HDR..HDR + frame.len()].copy_from_slice(frame);
        self.tx
            .set_desc(0, self.tx_buf.gpa, (HDR + frame.len()) as u32, 0, 0);
        self.tx.push(0);
        self.tx.notify();
        self.tx.wait_used().map(|_| ())
    }

    /// The next received frame, if one is there (its buffer is posted again).
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let (id, len) = self.rx.pop_used()?;
        let id = id % RX_BUFS;
        let len = (len as usize).min(BUF);
        let at = usize::from(id) * BUF;
        let frame = if len > HDR {
            self.rx_bufs.buf[at + HDR..at + len].to_vec()
        } else {
            Vec::new()
        };
        self.rx.push(id);
        self.rx.notify();
        Some(frame)
    }
}
