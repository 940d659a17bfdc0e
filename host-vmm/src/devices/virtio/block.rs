//! virtio-blk (virtio 1.2 §5.2) backed by a raw image file.
//!
//! Requests: IN (read), OUT (write; refused with IOERR on a read-only disk), FLUSH
//! (fdatasync), GET_ID; anything else completes with UNSUPP. Every request is checked
//! against the disk size and sector alignment; data moves in bounded chunks, so a
//! request cannot make the VMM allocate more than [`CHUNK`] bytes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{read_config_bytes, VirtioDevice};

/// Virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Sector size.
pub const SECTOR: u64 = 512;
/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
/// Largest piece of data moved at once.
pub const CHUNK: usize = 64 << 10;

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("cannot open disk image {0}")]
    Open(PathBuf, #[source] std::io::Error),
    /// The image size is not a whole number of sectors.
    #[error("disk image {0} is {1} bytes, not a multiple of 512")]
    Size(PathBuf, u64),
}

/// A virtio-blk device.
#[derive(Debug)]
pub struct Block {
    file: File,
    capacity: u64,
    read_only: bool,
    id: [u8; 20],
    config: [u8; 24],
    features: u64,
    queue_sizes: [u16; 1],
}

impl Block {
    /// Opens `path` (read-only if asked; the file is then opened read-only too).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| BlockError::Open(path.to_owned(), e))?;
        let len = file
            .metadata()
            .map_err(|e| BlockError::Open(path.to_owned(), e))?
            .len();
        if len % SECTOR != 0 {
            return Err(BlockError::Size(path.to_owned(), len));
        }
        let mut id = [0u8; 20];
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (d, s) in id.iter_mut().zip(name.bytes()) {
            *d = s;
        }
        Ok(Self::with_file(file, len, read_only, id))
    }

    /// A device over an already open file of `len` bytes.
    pub fn with_file(file: File, len: u64, read_only: bool, id: [u8; 20]) -> Self {
        let mut config = [0u8; 24];
        config[0..8].copy_from_slice(&(len / SECTOR).to_le_bytes());
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max
        let mut features = (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX);
        if read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        Self {
            file,
            capacity: len,
            read_only,
            id,
            config,
            features,
            queue_sizes: [QUEUE_SIZE],
        }
    }

    /// Handles one request; returns the number of bytes written to the chain.
    fn handle(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> u32 {
        let (Ok(mut r), Ok(mut w)) = (chain.clone().reader(mem), chain.writer(mem)) else {
            return 0;
        };
        let writable = w.available_bytes();
        if writable == 0 {
            return 0; // no status byte: nothing can be reported
        }
        let Ok(mut status_w) = w.split_at(writable - 1) else {
            return 0;
        };
        let mut hdr = [0u8; 16];
        let (status, written) = if r.read_exact(&mut hdr).is_err() {
            (VIRTIO_BLK_S_IOERR, 0)
        } else {
            let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let sector = u64::from_le_bytes([
                hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
            ]);
            match kind {
                VIRTIO_BLK_T_IN => self.read(sector, &mut w),
                VIRTIO_BLK_T_OUT => (self.write(sector, &mut r), 0),
                VIRTIO_BLK_T_FLUSH => (
                    if self.file.sync_data().is_ok() {
                        VIRTIO_BLK_S_OK
                    } else {
                        VIRTIO_BLK_S_IOERR
                    },
                    0,
                ),
                VIRTIO_BLK_T_GET_ID => {
                    let n = w.available_bytes().min(self.id.len());
                    match w.write_all(&self.id[..n]) {
                        Ok(()) => (VIRTIO_BLK_S_OK, n),
                        Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                    }
                }
                _ => (VIRTIO_BLK_S_UNSUPP, 0),
            }
        };
        match status_w.write_all(&[status as u8]) {
            Ok(()) => (written + 1) as u32,
            Err(_) => written as u32,
        }
    }

    /// The byte range of a request, if it is aligned and inside the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let off = sector.checked_mul(SECTOR)?;
        let end = off.checked_add(len as u64)?;
        (len as u64 % SECTOR == 0 && end <= self.capacity).then_some(off)
    }

    fn read(&mut self, sector: u64, w: &mut virtio_queue::Writer<'_>) -> (u32, usize) {
        let len = w.available_bytes();
        let Some(mut off) = self.range(sector, len) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        let mut buf = vec![0u8; len.min(CHUNK)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            if self.file.read_exact_at(&mut buf[..n], off).is_err()
                || w.write_all(&buf[..n]).is_err()
            {
                return (VIRTIO_BLK_S_IOERR, done);
            }
            off += n as u64;
            done += n;
        }
        (VIRTIO_BLK_S_OK, done)
    }

    fn write(&mut self, sector: u64, r: &mut virtio_queue::Reader<'_>) -> u32 {
        if self.read_only {
            return VIRTIO_BLK_S_IOERR;
        }
        let len = r.available_bytes();
        let Some(mut off) = self.range(sector, len) else {
            return VIRTIO_BLK_S_IOERR;
        };
        let mut buf = vec![0u8; len.min(CHUNK)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            if r.read_exact(&mut buf[..n]).is_err()
                || self.file.write_all_at(&buf[..n], off).is_err()
            {
                return VIRTIO_BLK_S_IOERR;
            }
            off += n as u64;
            done += n;
        }
        VIRTIO_BLK_S_OK
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = self.handle(chain, mem);
            if queue.add_used(mem, head, len).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const HDR: u64 = 0x10_000;
    const DATA: u64 = 0x20_000;
    const STATUS: u64 = 0x30_000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn disk(len: u64, read_only: bool) -> (Block, tempfile::NamedTempFile) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..len).map(|i| (i / 512) as u8 ^ (i as u8)).collect();
        f.write_all(&content).unwrap();
        (Block::open(f.path(), read_only).unwrap(), f)
    }

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    /// Submits one request (header, optional data, status) and runs the device.
    pub(crate) fn request(
        blk: &mut Block,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data_len: u32,
        data_write: bool,
    ) -> (u8, u32) {
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let vq = MockSplitQueue::create(mem, GuestAddress(0x1000), 16);
        let mut descs = vec![desc(HDR, 16, VRING_DESC_F_NEXT, 1)];
        if data_len > 0 {
            let f = VRING_DESC_F_NEXT | if data_write { VRING_DESC_F_WRITE } else { 0 };
            descs.push(desc(DATA, data_len, f, 2));
        }
        let n = descs.len() as u16;
        descs.push(desc(STATUS, 1, VRING_DESC_F_WRITE, n + 1));
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(blk.process_queue(0, &mut q, mem));
        let used_len: u32 = mem.read_obj(vq.used_addr().unchecked_add(8)).unwrap();
        (mem.read_obj(GuestAddress(STATUS)).unwrap(), used_len)
    }

    #[test]
    fn reads_writes_flushes_and_ids() {
        let m = mem();
        let (mut blk, f) = disk(8 * 512, false);
        // Read sectors 2..4.
        let (st, used) = request(&mut blk, &m, VIRTIO_BLK_T_IN, 2, 1024, true);
        assert_eq!((st, used), (VIRTIO_BLK_S_OK as u8, 1025));
        let mut got = vec![0u8; 1024];
        m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        let expect: Vec<u8> = (1024..2048u64)
            .map(|i| (i / 512) as u8 ^ (i as u8))
            .collect();
        assert_eq!(got, expect);
        // Write sector 7.
        m.write_slice(&[0xAB; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(
            request(&mut blk, &m, VIRTIO_BLK_T_OUT, 7, 512, false),
            (VIRTIO_BLK_S_OK as u8, 1)
        );
        let on_disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&on_disk[7 * 512..], &[0xAB; 512][..]);
        assert_eq!(
            request(&mut blk, &m, VIRTIO_BLK_T_FLUSH, 0, 0, false),
            (VIRTIO_BLK_S_OK as u8, 1)
        );
        let (st, used) = request(&mut blk, &m, VIRTIO_BLK_T_GET_ID, 0, 20, true);
        assert_eq!((st, used), (VIRTIO_BLK_S_OK as u8, 21));
        let mut config = [0u8; 8];
        blk.read_config(0, &mut config);
        assert_eq!(u64::from_le_bytes(config), 8, "capacity in sectors");
    }

    #[test]
    fn refuses_out_of_range_unaligned_read_only_and_unknown() {
        let m = mem();
        let (mut blk, _f) = disk(8 * 512, false);
        assert_eq!(
            request(&mut blk, &m, VIRTIO_BLK_T_IN, 7, 1024, true).0,
            VIRTIO_BLK_S_IOERR as u8,
            "past the end"
        );
        assert_eq!(
            request(&mut blk, &m, VIRTIO_BLK_T_IN, u64::MAX, 512, true).0,
            VIRTIO_BLK_S_IOERR as u8,
            "overflow"
        );
        assert_eq!(
            request(&mut blk, &m, VIRTIO_BLK_T_IN, 0, 100, true).0,
            VIRTIO_BLK_S_IOERR as u8,
            "unaligned"
        );
        assert_eq!(
            request(&mut blk, &m, 0xdead, 0, 0, false).0,
            VIRTIO_BLK_S_UNSUPP as u8
        );
        let (mut ro, f) = disk(8 * 512, true);
        let before = std::fs::read(f.path()).unwrap();
        assert_eq!(
            request(&mut ro, &m, VIRTIO_BLK_T_OUT, 0, 512, false).0,
            VIRTIO_BLK_S_IOERR as u8
        );
        assert_eq!(
            std::fs::read(f.path()).unwrap(),
            before,
            "a read-only disk is never written"
        );
        assert_ne!(ro.features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn hostile_chains_complete_without_panicking() {
        let m = mem();
        let (mut blk, _f) = disk(8 * 512, false);
        let vq = MockSplitQueue::create(&m, GuestAddress(0x1000), 16);
        // A chain whose descriptors point outside guest memory, one with no writable
        // status byte, and a looping chain.
        vq.add_desc_chains(
            &[
                desc(0xffff_0000, 16, VRING_DESC_F_NEXT, 1),
                desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        vq.add_desc_chains(&[desc(HDR, 16, 0, 0)], 2).unwrap();
        vq.add_desc_chains(
            &[
                desc(HDR, 16, VRING_DESC_F_NEXT, 5),
                desc(HDR, 16, VRING_DESC_F_NEXT, 4),
            ],
            4,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        blk.process_queue(0, &mut q, &m);
        let used_idx: u16 = m.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        assert!(
            used_idx >= 2,
            "malformed requests are completed, not dropped: {used_idx}"
        );
    }
}
