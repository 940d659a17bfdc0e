//! The virtio-mmio transport, register layout version 2.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vm_superio::Trigger;

use super::{VirtioDevice, F_ACCESS_PLATFORM, F_VERSION_1};
use crate::devices::serial::IrqTrigger;
use crate::devices::MmioDevice;

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4d56_5643; // "CVMV"

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    #![allow(missing_docs)]
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// A virtio device behind the MMIO transport.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    irq: IrqTrigger,
    queues: Vec<Queue>,
    required: u64,
    offered: u64,
    acked: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    status: u32,
    interrupt_status: std::sync::atomic::AtomicU32,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .finish()
    }
}

impl MmioTransport {
    /// Wraps `device`. With `confidential`, VIRTIO_F_ACCESS_PLATFORM is offered and
    /// required.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: IrqTrigger,
        confidential: bool,
    ) -> Self {
        let platform = if confidential { F_ACCESS_PLATFORM } else { 0 };
        let queues = device
            .queue_max_sizes()
            .iter()
            .filter_map(|&m| Queue::new(m).ok())
            .collect();
        let offered = device.features() | F_VERSION_1 | platform;
        Self {
            device,
            mem,
            irq,
            queues,
            required: F_VERSION_1 | platform,
            offered,
            acked: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: std::sync::atomic::AtomicU32::new(0),
            config_generation: 0,
        }
    }

    /// The driver status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
        self.acked = 0;
        self.status = 0;
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // FEATURES_OK is granted only for an acceptable feature set.
        let mut v = v;
        if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            if self.acked & !self.offered != 0 || self.acked & self.required != self.required {
                tracing::warn!(
                    acked = format_args!("{:#x}", self.acked),
                    required = format_args!("{:#x}", self.required),
                    "virtio driver declined required features"
                );
                v &= !status::FEATURES_OK;
            } else {
                self.device.activate(self.acked);
            }
        }
        // DRIVER_OK needs FEATURES_OK.
        if v & status::DRIVER_OK != 0 && v & status::FEATURES_OK == 0 {
            v &= !status::DRIVER_OK;
        }
        self.status = v;
    }

    /// Hands a backend readiness event to the device (from the VMM's event thread) and
    /// interrupts the driver if the device returned buffers.
    pub fn backend_event(&mut self, token: u64, events: u32) {
        let running = self.status & status::DRIVER_OK != 0;
        let queues: &mut [Queue] = if running { &mut self.queues } else { &mut [] };
        let used = self.device.backend_event(token, events, queues, &self.mem);
        let mut wants = false;
        for (i, q) in self.queues.iter_mut().enumerate() {
            if used & (1 << i) != 0 {
                wants |= q.needs_notification(&self.mem).unwrap_or(true);
            }
        }
        if wants {
            self.raise();
        }
    }

    fn raise(&mut self) {
        self.interrupt_status
            .fetch_or(VIRTIO_MMIO_INT_VRING, Ordering::SeqCst);
        if let Err(e) = self.irq.trigger() {
            tracing::warn!(error = %e, "cannot signal the virtio interrupt");
        }
    }

    fn notify(&mut self, index: u32) {
        if self.status & status::DRIVER_OK == 0 {
            return;
        }
        let Some(q) = self.queues.get_mut(index as usize) else {
            return;
        };
        if !q.ready() {
            return;
        }
        if self.device.process_queue(index as usize, q, &self.mem)
            && q.needs_notification(&self.mem).unwrap_or(true)
        {
            self.raise();
        }
    }
}

fn read_u32(data: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(data).ok().map(u32::from_le_bytes)
}

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        let v: u32 = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            if self.status & status::DRIVER != 0 {
                self.device
                    .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            }
            return;
        }
        let Some(v) = read_u32(data) else { return };
        // Queue registers may only change while the selected queue is not live.
        let queue_idle = self
            .queues
            .get(self.queue_sel as usize)
            .is_some_and(|q| !q.ready());
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES
                if self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0 =>
            {
                match self.driver_features_sel {
                    0 => self.acked = (self.acked & !0xffff_ffff) | u64::from(v),
                    1 => self.acked = (self.acked & 0xffff_ffff) | (u64::from(v) << 32),
                    _ => {}
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM if queue_idle => {
                if let Some(q) = self.selected() {
                    q.set_size(v as u16);
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(v),
            VIRTIO_MMIO_INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            VIRTIO_MMIO_STATUS => self.set_status(v),
            VIRTIO_MMIO_QUEUE_DESC_LOW if queue_idle => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_desc_table_address(Some(v), None)),
            VIRTIO_MMIO_QUEUE_DESC_HIGH if queue_idle => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_desc_table_address(None, Some(v))),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW if queue_idle => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_avail_ring_address(Some(v), None)),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH if queue_idle => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_avail_ring_address(None, Some(v))),
            VIRTIO_MMIO_QUEUE_USED_LOW if queue_idle => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_used_ring_address(Some(v), None)),
            VIRTIO_MMIO_QUEUE_USED_HIGH if queue_idle => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_used_ring_address(None, Some(v))),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::Block;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    fn w(t: &mut MmioTransport, off: u32, v: u32) {
        t.write(u64::from(off), &v.to_le_bytes());
    }
    fn r(t: &mut MmioTransport, off: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(off), &mut b);
        u32::from_le_bytes(b)
    }

    fn setup(
        confidential: bool,
    ) -> (
        MmioTransport,
        GuestMemoryMmap,
        EventFd,
        tempfile::NamedTempFile,
    ) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(4096).unwrap();
        let blk = Block::open(f.path(), false).unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(
            Box::new(blk),
            mem.clone(),
            IrqTrigger(evt.try_clone().unwrap()),
            confidential,
        );
        (t, mem, evt, f)
    }

    fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
        w(t, VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        for sel in 0..2u32 {
            w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            w(
                t,
                VIRTIO_MMIO_DRIVER_FEATURES,
                (features >> (32 * sel)) as u32,
            );
        }
        w(
            t,
            VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        r(t, VIRTIO_MMIO_STATUS)
    }

    #[test]
    fn identity_registers() {
        let (mut t, ..) = setup(false);
        assert_eq!(r(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_ID), 2);
        w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_DEVICE_FEATURES) & 1,
            1,
            "VERSION_1 offered"
        );
        // Config space: capacity of 8 sectors.
        let mut cap = [0u8; 8];
        t.read(0x100, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        // Odd-sized register reads return zeros instead of failing.
        let mut two = [0xffu8; 2];
        t.read(0, &mut two);
        assert_eq!(two, [0, 0]);
    }

    #[test]
    fn feature_negotiation_requires_version_1_and_access_platform_when_confidential() {
        let (mut t, ..) = setup(false);
        assert_eq!(
            negotiate(&mut t, 0) & status::FEATURES_OK,
            0,
            "a legacy driver is refused"
        );
        w(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_ne!(negotiate(&mut t, F_VERSION_1) & status::FEATURES_OK, 0);

        let (mut c, ..) = setup(true);
        w(&mut c, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            r(&mut c, VIRTIO_MMIO_DEVICE_FEATURES) & 2,
            2,
            "ACCESS_PLATFORM offered"
        );
        assert_eq!(
            negotiate(&mut c, F_VERSION_1) & status::FEATURES_OK,
            0,
            "confidential guests must accept ACCESS_PLATFORM"
        );
        w(&mut c, VIRTIO_MMIO_STATUS, 0);
        assert_ne!(
            negotiate(&mut c, F_VERSION_1 | F_ACCESS_PLATFORM) & status::FEATURES_OK,
            0
        );
        // Features the device never offered are refused.
        w(&mut c, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(
            negotiate(&mut c, F_VERSION_1 | F_ACCESS_PLATFORM | (1 << 40)) & status::FEATURES_OK,
            0
        );
    }

    #[test]
    fn a_driver_round_trip_raises_the_interrupt() {
        let (mut t, mem, evt, _f) = setup(false);
        assert_ne!(negotiate(&mut t, F_VERSION_1) & status::FEATURES_OK, 0);
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        w(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
        for (lo, hi, addr) in [
            (
                VIRTIO_MMIO_QUEUE_DESC_LOW,
                VIRTIO_MMIO_QUEUE_DESC_HIGH,
                vq.desc_table_addr(),
            ),
            (
                VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                vq.avail_addr(),
            ),
            (
                VIRTIO_MMIO_QUEUE_USED_LOW,
                VIRTIO_MMIO_QUEUE_USED_HIGH,
                vq.used_addr(),
            ),
        ] {
            w(&mut t, lo, addr.0 as u32);
            w(&mut t, hi, (addr.0 >> 32) as u32);
        }
        w(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        // Reconfiguring a live queue is ignored.
        w(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0xdead_0000);
        w(
            &mut t,
            VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );

        // A GET_ID request.
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&8u32.to_le_bytes());
        mem.write_slice(&hdr, GuestAddress(0x10_000)).unwrap();
        let d = |a: u64, l: u32, f: u32, n: u16| {
            RawDescriptor::from(SplitDescriptor::new(a, l, f as u16, n))
        };
        vq.add_desc_chains(
            &[
                d(0x10_000, 16, VRING_DESC_F_NEXT, 1),
                d(0x20_000, 20, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2),
                d(0x30_000, 1, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x30_000)).unwrap(),
            0,
            "status OK"
        );
        assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS) & 1, 1);
        assert_eq!(evt.read().unwrap(), 1, "the irqfd fired");
        w(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        // Notifying a queue that does not exist is harmless.
        w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
        // Reset clears everything.
        w(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    }
}
