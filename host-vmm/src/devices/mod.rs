//! Emulated devices and the port-I/O bus that dispatches guest accesses to them.
//!
//! The guest is hostile: every access is bounded-checked, unknown ports read as all ones
//! and swallow writes (rate-limited warnings), and no access can panic the VMM.

pub mod cmos;
pub mod ioapic;
pub mod legacy;
pub mod pci_config;
pub mod serial;
pub mod virtio;

use std::sync::{Arc, Mutex};

/// Something a device asks the VMM to do after a guest access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    /// ACPI S5: the guest powered off.
    PowerOff,
    /// The guest requested a reset (i8042 or reset register); treated as a stop.
    Reset,
    /// The guest signalled a panic (pvpanic PANICKED).
    Panic,
}

/// A device reached through port I/O.
pub trait PioDevice: Send {
    /// A guest `in` at `offset` from the device's base port.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// A guest `out` at `offset`; may ask the VMM to stop the guest.
    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent>;
}

struct Range {
    base: u16,
    len: u16,
    dev: Arc<Mutex<dyn PioDevice>>,
}

/// Port-I/O dispatch.
#[derive(Default)]
pub struct PioBus {
    ranges: Vec<Range>,
    unknown: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r: Vec<_> = self
            .ranges
            .iter()
            .map(|r| format!("{:#x}+{}", r.base, r.len))
            .collect();
        f.debug_struct("PioBus").field("ranges", &r).finish()
    }
}

/// A device range overlaps one already on the bus.
#[derive(Debug, thiserror::Error)]
#[error("port range {base:#x}+{len} overlaps a device already on the bus")]
pub struct BusOverlap {
    /// First port.
    pub base: u16,
    /// Number of ports.
    pub len: u16,
}

impl PioBus {
    /// Adds a device at ports `base..base+len`.
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        dev: Arc<Mutex<dyn PioDevice>>,
    ) -> Result<(), BusOverlap> {
        let end = u32::from(base) + u32::from(len);
        if self.ranges.iter().any(|r| {
            u32::from(base) < u32::from(r.base) + u32::from(r.len) && u32::from(r.base) < end
        }) {
            return Err(BusOverlap { base, len });
        }
        self.ranges.push(Range { base, len, dev });
        Ok(())
    }

    fn find(&self, port: u16, size: usize) -> Option<(&Range, u16)> {
        self.ranges.iter().find_map(|r| {
            let off = port.checked_sub(r.base)?;
            (usize::from(off) + size <= usize::from(r.len)).then_some((r, off))
        })
    }

    fn note_unknown(&self, what: &str, port: u16) {
        if let Some((_, _, why)) = KNOWN_ABSENT
            .iter()
            .find(|(base, len, _)| port.checked_sub(*base).is_some_and(|off| off < *len))
        {
            tracing::debug!(port = format_args!("{port:#x}"), "guest {what} to {why}");
            return;
        }
        let n = self
            .unknown
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n < 16 || n.is_power_of_two() {
            tracing::warn!(
                port = format_args!("{port:#x}"),
                count = n + 1,
                "guest {what} to an unknown port"
            );
        }
    }

    /// Dispatches a guest `in`; unknown ports read as all ones.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port, data.len()) {
            Some((r, off)) => match r.dev.lock() {
                Ok(mut d) => d.read(off, data),
                Err(_) => data.fill(0xff),
            },
            None => {
                self.note_unknown("read", port);
                data.fill(0xff);
            }
        }
    }

    /// Dispatches a guest `out`; unknown ports swallow the write.
    pub fn write(&self, port: u16, data: &[u8]) -> Option<VmEvent> {
        match self.find(port, data.len()) {
            Some((r, off)) => r.dev.lock().ok().and_then(|mut d| d.write(off, data)),
            None => {
                self.note_unknown("write", port);
                None
            }
        }
    }
}

/// Ports a stock Linux kernel probes by design on a PC where nothing answers: it reads all
/// ones there and moves on, so these accesses are not worth a warning (every other unknown
/// port is). COM2-COM4 (the 8250 driver's legacy probe list), the 8254 PIT (no in-kernel
/// PIT is created: the guest uses the TSC-deadline LAPIC timer and kvm-clock).
const KNOWN_ABSENT: &[(u16, u16, &str)] = &[
    (0x2E8, 8, "the absent COM4"),
    (0x2F8, 8, "the absent COM2"),
    (0x3E8, 8, "the absent COM3"),
    (0x40, 4, "the absent 8254 PIT"),
];

/// A device reached through MMIO.
pub trait MmioDevice: Send {
    /// A guest read at `offset` from the device's base address.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

struct MmioRange {
    base: u64,
    len: u64,
    dev: Arc<Mutex<dyn MmioDevice>>,
}

/// MMIO dispatch.
#[derive(Default)]
pub struct MmioBus {
    ranges: Vec<MmioRange>,
    unknown: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r: Vec<_> = self
            .ranges
            .iter()
            .map(|r| format!("{:#x}+{:#x}", r.base, r.len))
            .collect();
        f.debug_struct("MmioBus").field("ranges", &r).finish()
    }
}

/// An MMIO range overlaps one already on the bus.
#[derive(Debug, thiserror::Error)]
#[error("MMIO range {base:#x}+{len:#x} overlaps a device already on the bus")]
pub struct MmioOverlap {
    /// Base.
    pub base: u64,
    /// Length.
    pub len: u64,
}

impl MmioBus {
    /// Adds a device at `base..base+len`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn MmioDevice>>,
    ) -> Result<(), MmioOverlap> {
        let end = base.checked_add(len).ok_or(MmioOverlap { base, len })?;
        if self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(MmioOverlap { base, len });
        }
        self.ranges.push(MmioRange { base, len, dev });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&MmioRange, u64)> {
        self.ranges.iter().find_map(|r| {
            let off = addr.checked_sub(r.base)?;
            (off.checked_add(size as u64)? <= r.len).then_some((r, off))
        })
    }

    fn note_unknown(&self, what: &str, addr: u64) {
        let n = self
            .unknown
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n < 16 || n.is_power_of_two() {
            tracing::warn!(
                addr = format_args!("{addr:#x}"),
                count = n + 1,
                "guest MMIO {what} to an unknown address"
            );
        }
    }

    /// Dispatches a guest MMIO read; unknown addresses read as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((r, off)) => match r.dev.lock() {
                Ok(mut d) => d.read(off, data),
                Err(_) => data.fill(0xff),
            },
            None => {
                self.note_unknown("read", addr);
                data.fill(0xff);
            }
        }
    }

    /// Dispatches a guest MMIO write; unknown addresses swallow it.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.find(addr, data.len()) {
            Some((r, off)) => {
                if let Ok(mut d) = r.dev.lock() {
                    d.write(off, data);
                }
            }
            None => self.note_unknown("write", addr),
        }
    }
}

/// Both buses.
#[derive(Debug, Default)]
pub struct Buses {
    /// Port I/O.
    pub pio: PioBus,
    /// MMIO.
    pub mmio: MmioBus,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u16, data: &[u8]) -> Option<VmEvent> {
            self.0 = data[0];
            (data[0] == 0xff).then_some(VmEvent::PowerOff)
        }
    }

    #[test]
    fn dispatch_and_unknown_ports() {
        let mut bus = PioBus::default();
        bus.insert(0x100, 4, Arc::new(Mutex::new(Echo(1)))).unwrap();
        assert!(bus.insert(0x103, 2, Arc::new(Mutex::new(Echo(0)))).is_err());
        let mut b = [0u8; 1];
        bus.read(0x102, &mut b);
        assert_eq!(b, [3]);
        // An access that straddles the end of the range is unknown.
        let mut w = [0u8; 2];
        bus.read(0x103, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        bus.read(0xffff, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        assert_eq!(bus.write(0x100, &[7]), None);
        bus.read(0x100, &mut b);
        assert_eq!(b, [7]);
        assert_eq!(bus.write(0x100, &[0xff]), Some(VmEvent::PowerOff));
        assert_eq!(bus.write(0x9999, &[0xff]), None);
    }

    /// The ports Linux probes where nothing answers read as all ones without counting
    /// as unknown; a port next to them still counts.
    #[test]
    fn known_absent_ports_read_all_ones_quietly() {
        use std::sync::atomic::Ordering::Relaxed;
        let bus = PioBus::default();
        let mut b = [0u8; 1];
        for port in [0x2E8, 0x2EF, 0x2F9, 0x3E8, 0x3EF, 0x40, 0x43] {
            b = [0];
            bus.read(port, &mut b);
            assert_eq!(b, [0xff], "{port:#x}");
            assert_eq!(bus.write(port, &[1]), None);
        }
        assert_eq!(bus.unknown.load(Relaxed), 0);
        bus.read(0x3F0, &mut b);
        bus.read(0x44, &mut b);
        assert_eq!(bus.unknown.load(Relaxed), 2);
    }
}
