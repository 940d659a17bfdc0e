//! virtio-blk, read-only, one request at a time: header (device-readable), data
//! (device-writable), status byte (device-writable).

use crate::dma::DmaBuf;

use super::{dma_buffer, driver_ok, negotiate, Mmio, Queue, VirtioError, DESC_NEXT, DESC_WRITE};

const T_IN: u32 = 0;
/// Bytes per request (a multiple of 512).
const CHUNK: usize = 64 << 10;

/// A virtio-blk device.
#[derive(Debug)]
pub struct Blk {
    queue: Queue,
    header: DmaBuf,
    data: DmaBuf,
    status: DmaBuf,
    capacity: u64,
}

impl Blk {
    /// Initializes the device at `mmio`.
    pub fn new(mmio: Mmio) -> Result<Self, VirtioError> {
        negotiate(&mmio, 0)?;
        let queue = Queue::new(mmio, 0, 4)?;
        let mut cap = [0u8; 8];
        for (i, b) in cap.iter_mut().enumerate() {
            *b = mmio.config_u8(i);
        }
        driver_ok(&mmio);
        Ok(Self {
            queue,
            header: dma_buffer(16)?,
            data: dma_buffer(CHUNK)?,
            status: dma_buffer(1)?,
            capacity: u64::from_le_bytes(cap) * 512,
        })
    }

    fn read_sectors(&mut self, sector: u64, len: usize) -> Result<(), VirtioError> {
        self.header.buf[..4].copy_from_slice(&T_IN.to_le_bytes());
        self.header.buf[4..8].fill(0);
        self.header.buf[8..16].copy_from_slice(&sector.to_le_bytes());
        self.status.buf[0] = 0xFF;
        let (h, d, s) = (self.header.gpa, self.data.gpa, self.status.gpa);
        self.queue.set_desc(0, h, 16, DESC_NEXT, 1);
        self.queue
            .set_desc(1, d, len as u32, DESC_NEXT | DESC_WRITE, 2);
        self.queue.set_desc(2, s, 1, DESC_WRITE, 0);
        self.queue.push(0);
        self.queue.notify();
        let (id, _) = self.queue.wait_used()?;
        // SAFETY: the device wrote the status byte before publishing the used element.
        let status = unsafe { core::ptr::read_volatile(self.status.buf.as_ptr()) };
        if id != 0 || status != 0 {
            return Err(VirtioError::Device("the block read failed"));
        }
        Ok(())
    }
}

impl luks::BlockRead for Blk {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), luks::IoError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.capacity)
            .ok_or(luks::IoError::new("read past the end of the disk"))?;
        let _ = end;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let sector = at / 512;
            let skip = (at % 512) as usize;
            let want = (buf.len() - done + skip).next_multiple_of(512).min(CHUNK);
            self.read_sectors(sector, want)
                .map_err(|_| luks::IoError::new("virtio-blk read failed"))?;
            let n = (want - skip).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.data.buf[skip..skip + n]);
            done += n;
        }
        Ok(())
    }
}
