//! Minimal polled virtio-mmio (version 2) drivers: device discovery by probing the MMIO
//! slots, feature negotiation (VERSION_1, plus ACCESS_PLATFORM when offered), and split
//! virtqueues. Every ring and every buffer the device touches comes from
//! [`crate::dma`]: heap memory without a TEE, the shared pool in a TD (whose private
//! memory the VMM cannot reach). The device is told each buffer's GPA, the guest uses
//! its virtual address (they differ for pool memory). No interrupts: drivers poll the
//! used rings.
//!
//! Why not the `virtio-drivers` crate: it needs a HAL and the `log`/`zerocopy`/
//! `bitflags` stack for what is ~300 lines here, and image size costs boot time (the
//! firmware hashes the image at ~1 µs per instruction).

pub mod blk;
pub mod net;
pub mod net_test;
pub mod vsock;

use core::sync::atomic::{fence, Ordering};

use crate::dma::{self, DmaBuf, DmaError};

/// First device slot.
pub const MMIO_BASE: usize = 0xD000_0000;
/// Slot stride.
pub const MMIO_STRIDE: usize = 0x1000;
/// Slots probed.
pub const MMIO_SLOTS: usize = 32;

/// Device ids.
pub const DEVICE_NET: u32 = 1;
/// Device ids.
pub const DEVICE_BLOCK: u32 = 2;
/// Device ids.
pub const DEVICE_VSOCK: u32 = 19;

const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const STATUS: usize = 0x070;
const QUEUE_DESC: usize = 0x080;
const QUEUE_DRIVER: usize = 0x090;
const QUEUE_DEVICE: usize = 0x0A0;
/// Device configuration space.
pub const CONFIG: usize = 0x100;

const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_FAILED: u32 = 0x80;

const F_VERSION_1: u64 = 1 << 32;
const F_ACCESS_PLATFORM: u64 = 1 << 33;

/// Descriptor flags.
pub const DESC_NEXT: u16 = 1;
/// Descriptor flags.
pub const DESC_WRITE: u16 = 2;

/// Driver errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioError {
    /// Feature negotiation or queue setup failed.
    Setup(&'static str),
    /// The device did not answer in time.
    Timeout,
    /// The device answered something invalid.
    Device(&'static str),
    /// Out of memory.
    NoMemory,
}

impl From<DmaError> for VirtioError {
    fn from(_: DmaError) -> Self {
        VirtioError::NoMemory
    }
}

impl core::fmt::Display for VirtioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VirtioError::Setup(w) => write!(f, "virtio setup failed: {w}"),
            VirtioError::Timeout => f.write_str("virtio device timed out"),
            VirtioError::Device(w) => write!(f, "virtio device error: {w}"),
            VirtioError::NoMemory => f.write_str("out of memory for virtio queues"),
        }
    }
}

/// One virtio-mmio register block.
#[derive(Debug, Clone, Copy)]
pub struct Mmio {
    base: usize,
}

impl Mmio {
    /// Reads a 32-bit register.
    pub fn read(&self, off: usize) -> u32 {
        // SAFETY: `base` is a virtio-mmio slot in the identity-mapped, uncached MMIO
        // hole; register reads have no memory side effects on our data.
        unsafe { core::ptr::read_volatile((self.base + off) as *const u32) }
    }

    /// Writes a 32-bit register.
    pub fn write(&self, off: usize, v: u32) {
        // SAFETY: as for `read`; writes reach the VMM's device model.
        unsafe { core::ptr::write_volatile((self.base + off) as *mut u32, v) }
    }

    /// Reads a byte of the configuration space.
    pub fn config_u8(&self, off: usize) -> u8 {
        // SAFETY: as for `read`.
        unsafe { core::ptr::read_volatile((self.base + CONFIG + off) as *const u8) }
    }
}

/// Finds the `n`th (0-based) device of type `id` by probing the slots.
pub fn find(id: u32, n: usize) -> Option<Mmio> {
    (0..MMIO_SLOTS)
        .map(|i| Mmio {
            base: MMIO_BASE + MMIO_STRIDE * i,
        })
        .filter(|m| m.read(MAGIC) == 0x7472_6976 && m.read(VERSION) == 2)
        .filter(|m| m.read(DEVICE_ID) == id)
        .nth(n)
}

/// Resets the device and negotiates features (`wanted` plus VERSION_1/ACCESS_PLATFORM).
pub fn negotiate(m: &Mmio, wanted: u64) -> Result<(), VirtioError> {
    m.write(STATUS, 0);
    m.write(STATUS, S_ACKNOWLEDGE);
    m.write(STATUS, S_ACKNOWLEDGE | S_DRIVER);
    m.write(DEVICE_FEATURES_SEL, 0);
    let lo = u64::from(m.read(DEVICE_FEATURES));
    m.write(DEVICE_FEATURES_SEL, 1);
    let hi = u64::from(m.read(DEVICE_FEATURES));
    let offered = lo | hi << 32;
    if offered & F_VERSION_1 == 0 {
        m.write(STATUS, S_FAILED);
        return Err(VirtioError::Setup("the device is not virtio 1.x"));
    }
    let accept = offered & (wanted | F_VERSION_1 | F_ACCESS_PLATFORM);
    m.write(DRIVER_FEATURES_SEL, 0);
    m.write(DRIVER_FEATURES, accept as u32);
    m.write(DRIVER_FEATURES_SEL, 1);
    m.write(DRIVER_FEATURES, (accept >> 32) as u32);
    m.write(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if m.read(STATUS) & S_FEATURES_OK == 0 {
        m.write(STATUS, S_FAILED);
        return Err(VirtioError::Setup("the device refused our features"));
    }
    Ok(())
}

/// Sets DRIVER_OK.
pub fn driver_ok(m: &Mmio) {
    m.write(
        STATUS,
        S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A split virtqueue of `size` entries in zeroed DMA pages.
pub struct Queue {
    mmio: Mmio,
    index: u16,
    size: u16,
    desc: *mut Desc,
    avail: *mut u16,
    used: *const u8,
    avail_idx: u16,
    last_used: u16,
}

impl core::fmt::Debug for Queue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Queue({}, {} entries)", self.index, self.size)
    }
}

/// A zeroed DMA buffer of `bytes` bytes (see [`crate::dma`]).
pub fn dma_buffer(bytes: usize) -> Result<DmaBuf, VirtioError> {
    Ok(dma::alloc(bytes)?)
}

impl Queue {
    /// Sets up queue `index` with `size` entries (a power of two).
    pub fn new(mmio: Mmio, index: u16, size: u16) -> Result<Self, VirtioError> {
        mmio.write(QUEUE_SEL, u32::from(index));
        let max = mmio.read(QUEUE_NUM_MAX);
        if max == 0 || max < u32::from(size) {
            return Err(VirtioError::Setup("queue too small or absent"));
        }
        let n = usize::from(size);
        let desc = dma_buffer(16 * n)?;
        let avail = dma_buffer(6 + 2 * n)?;
        let used = dma_buffer(6 + 8 * n)?;
        mmio.write(QUEUE_NUM, u32::from(size));
        for (reg, b) in [
            (QUEUE_DESC, &desc),
            (QUEUE_DRIVER, &avail),
            (QUEUE_DEVICE, &used),
        ] {
            mmio.write(reg, b.gpa as u32);
            mmio.write(reg + 4, (b.gpa >> 32) as u32);
        }
        mmio.write(QUEUE_READY, 1);
        Ok(Self {
            mmio,
            index,
            size,
            desc: desc.buf.as_mut_ptr().cast(),
            avail: avail.buf.as_mut_ptr().cast(),
            used: used.buf.as_ptr(),
            avail_idx: 0,
            last_used: 0,
        })
    }

    /// Writes descriptor `i` (`gpa`: the buffer's guest-physical address, as
    /// [`DmaBuf::gpa_at`] gives it).
    pub fn set_desc(&mut self, i: u16, gpa: u64, len: u32, flags: u16, next: u16) {
        assert!(i < self.size && next < self.size);
        // SAFETY: `i` is inside the descriptor table we allocated.
        unsafe {
            self.desc.add(usize::from(i)).write_volatile(Desc {
                addr: gpa,
                len,
                flags,
                next,
            })
        }
    }

    /// Makes the chain starting at `head` available (without notifying).
    pub fn push(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        // SAFETY: avail ring layout: flags, idx, ring[size]; all inside our allocation.
        unsafe {
            self.avail.add(2 + slot).write_volatile(head);
            fence(Ordering::SeqCst);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.avail.add(1).write_volatile(self.avail_idx);
        }
        fence(Ordering::SeqCst);
    }

    /// Notifies the device.
    pub fn notify(&self) {
        self.mmio.write(QUEUE_NOTIFY, u32::from(self.index));
    }

    /// The next used element (head id, bytes written), if any.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        fence(Ordering::SeqCst);
        // SAFETY: used ring layout: flags, idx, ring[size] of (u32 id, u32 len).
        let idx = unsafe { (self.used.add(2) as *const u16).read_volatile() };
        if idx == self.last_used {
            return None;
        }
        let slot = usize::from(self.last_used % self.size);
        // SAFETY: as above.
        let (id, len) = unsafe {
            let e = self.used.add(4 + 8 * slot);
            (
                (e as *const u32).read_volatile(),
                (e.add(4) as *const u32).read_volatile(),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        fence(Ordering::SeqCst);
        Some((id as u16, len))
    }

    /// Polls until a used element appears (bounded).
    pub fn wait_used(&mut self) -> Result<(u16, u32), VirtioError> {
        for _ in 0..SPIN_LIMIT {
            if let Some(u) = self.pop_used() {
                return Ok(u);
            }
            core::hint::spin_loop();
        }
        Err(VirtioError::Timeout)
    }
}

/// Polling bound (native ring-3 spins; a few seconds to minutes of wall time).
pub const SPIN_LIMIT: u64 = 4_000_000_000;
