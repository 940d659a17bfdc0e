//! Virtio devices over the MMIO transport (virtio 1.2, §4.2 "Virtio Over MMIO").
//!
//! The guest is hostile. The transport refuses feature sets a device requires but the
//! driver declined (for confidential guests that includes VIRTIO_F_ACCESS_PLATFORM, so
//! the guest bounces I/O through memory it shared), ignores queue reconfiguration once
//! a queue is live, and devices treat every descriptor chain as untrusted: lengths and
//! addresses are bounded by guest memory (virtio-queue checks), looping chains end at
//! the queue size, and a malformed request completes with an error status (or length 0
//! when it has no status byte) — never a panic.

pub mod block;
pub mod mmio;
pub mod net;
pub mod vsock;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_ACCESS_PLATFORM: the device accesses memory through the platform's DMA
/// rules (the guest must use shared bounce buffers).
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;

/// A virtio device model behind a transport.
pub trait VirtioDevice: Send {
    /// Virtio device id (1 net, 2 block, 19 vsock).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver (the transport adds VERSION_1 and, for
    /// confidential guests, ACCESS_PLATFORM).
    fn features(&self) -> u64;
    /// Reads the device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space (read-only by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Called once the driver accepted `features`.
    fn activate(&mut self, _features: u64) {}
    /// Processes the available buffers of queue `index`; returns whether any buffer
    /// was returned to the driver.
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool;
    /// Returns the device to its initial state (driver reset).
    fn reset(&mut self) {}
    /// Handles readiness `events` of a backend fd the device registered under `token`
    /// with the VMM's event loop. `queues` is empty unless the driver is running.
    /// Returns the queues that got used buffers (bit i = queue i).
    fn backend_event(
        &mut self,
        _token: u64,
        _events: u32,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
    ) -> u32 {
        0
    }
}

/// Copies the bytes of `config` at `offset` into `data`; out-of-range bytes read as 0.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| config.get(o + i))
            .copied()
            .unwrap_or(0);
    }
}
