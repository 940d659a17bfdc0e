//! An I/O APIC in the VMM, for VMs with a split irqchip (TDX requires one: KVM keeps the
//! local APICs, the VMM the I/O APIC).
//!
//! The guest programs the 24 redirection entries through the usual window at
//! `0xFEC0_0000` (IOREGSEL at +0x00, IOWIN at +0x10). Device interrupt lines are KVM
//! irqfds on GSI = pin; after every change of a redirection entry the VMM rewrites
//! KVM's GSI routing so that each unmasked pin is an MSI carrying the entry's vector,
//! delivery mode and destination. Masked pins have no route, so their irqfds deliver
//! nothing. Lines are delivered edge-triggered (the devices raise their irqfd per
//! event, and the guest acknowledges in the device), so no EOI handling is needed.

use super::MmioDevice;

/// Base address of the I/O APIC window.
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Size of the window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Number of pins.
pub const IOAPIC_PINS: usize = 24;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARB: u32 = 0x02;
const REG_REDIR: u32 = 0x10;
/// Version 0x11 (82093AA-compatible), maximum redirection entry 23.
const VERSION: u32 = 0x11 | ((IOAPIC_PINS as u32 - 1) << 16);
const MASKED: u64 = 1 << 16;
/// Bits of an entry the guest may write: vector, delivery mode, destination mode,
/// polarity, trigger mode, mask and destination (not delivery status or remote IRR).
const WRITABLE: u64 = 0xFF00_0000_0001_AFFF;

/// One MSI route: (GSI, address, data).
pub type MsiRoute = (u32, u64, u32);

/// Why the I/O APIC's routes could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the I/O APIC's MSI routes ({what})")]
pub struct RouteError {
    /// The step that failed.
    pub what: &'static str,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Where the I/O APIC's routes go.
pub trait RouteSink: Send {
    /// Replaces all I/O APIC routes with `routes`.
    fn set_routes(&mut self, routes: &[MsiRoute]) -> Result<(), RouteError>;
}

/// The I/O APIC.
#[derive(Debug)]
pub struct IoApic<S> {
    id: u32,
    select: u32,
    redir: [u64; IOAPIC_PINS],
    sink: S,
}

impl<S: RouteSink> IoApic<S> {
    /// An I/O APIC with every pin masked.
    pub fn new(sink: S) -> Self {
        Self {
            id: 0,
            select: 0,
            redir: [MASKED; IOAPIC_PINS],
            sink,
        }
    }

    /// The MSI routes of the unmasked pins.
    pub fn routes(&self) -> Vec<MsiRoute> {
        self.redir
            .iter()
            .enumerate()
            .filter(|(_, e)| *e & MASKED == 0)
            .map(|(pin, &e)| {
                let vector = (e & 0xff) as u32;
                let delivery = ((e >> 8) & 0x7) as u32;
                let logical = (e >> 11) & 1;
                let dest = (e >> 56) & 0xff;
                let addr = 0xFEE0_0000 | (dest << 12) | (logical << 2);
                (pin as u32, addr, vector | (delivery << 8))
            })
            .collect()
    }

    fn read_reg(&self) -> u32 {
        match self.select {
            REG_ID => self.id << 24,
            REG_VERSION => VERSION,
            REG_ARB => self.id << 24,
            r if (REG_REDIR..REG_REDIR + 2 * IOAPIC_PINS as u32).contains(&r) => {
                let e = self.redir[((r - REG_REDIR) / 2) as usize];
                if (r - REG_REDIR) % 2 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_reg(&mut self, v: u32) {
        match self.select {
            REG_ID => self.id = (v >> 24) & 0xf,
            r if (REG_REDIR..REG_REDIR + 2 * IOAPIC_PINS as u32).contains(&r) => {
                let pin = ((r - REG_REDIR) / 2) as usize;
                let old = self.redir[pin];
                let new = if (r - REG_REDIR) % 2 == 0 {
                    (old & !0xffff_ffff) | u64::from(v)
                } else {
                    (old & 0xffff_ffff) | (u64::from(v) << 32)
                };
                self.redir[pin] = (old & !WRITABLE) | (new & WRITABLE);
                if self.redir[pin] != old {
                    if let Err(e) = self.sink.set_routes(&self.routes()) {
                        tracing::error!(error = %e, pin, "cannot update interrupt routing");
                    }
                }
            }
            _ => {}
        }
    }
}

impl<S: RouteSink> MmioDevice for IoApic<S> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            IOREGSEL => self.select,
            IOWIN => self.read_reg(),
            _ => 0,
        };
        let b = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&b[..n]);
        data[n..].fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only aligned 32-bit accesses are defined.
        let Ok(b) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let v = u32::from_le_bytes(b);
        match offset {
            IOREGSEL => self.select = v & 0xff,
            IOWIN => self.write_reg(v),
            _ => {} // EOI register and the rest: nothing to do for edge delivery.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Rec(Vec<Vec<MsiRoute>>);
    impl RouteSink for &mut Rec {
        fn set_routes(&mut self, routes: &[MsiRoute]) -> Result<(), RouteError> {
            self.0.push(routes.to_vec());
            Ok(())
        }
    }

    fn w(io: &mut IoApic<impl RouteSink>, reg: u32, v: u32) {
        io.write(IOREGSEL, &reg.to_le_bytes());
        io.write(IOWIN, &v.to_le_bytes());
    }
    fn r(io: &mut IoApic<impl RouteSink>, reg: u32) -> u32 {
        io.write(IOREGSEL, &reg.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn programming_a_pin_routes_it_as_an_msi() {
        let mut rec = Rec::default();
        let mut io = IoApic::new(&mut rec);
        assert_eq!(r(&mut io, REG_VERSION), 0x17_0011);
        assert_eq!(r(&mut io, 0x10 + 2 * 4), MASKED as u32, "pins start masked");
        // Pin 4 (COM1): destination APIC 2 (high dword), vector 0x24, fixed, unmasked.
        w(&mut io, 0x11 + 2 * 4, 2 << 24);
        w(&mut io, 0x10 + 2 * 4, 0x24);
        // Pin 16: logical destination 1, lowest priority (1), vector 0x31, then masked.
        w(&mut io, 0x11 + 2 * 16, 1 << 24);
        w(&mut io, 0x10 + 2 * 16, 0x31 | (1 << 8) | (1 << 11));
        assert_eq!(
            io.routes(),
            vec![(4, 0xFEE0_2000, 0x24), (16, 0xFEE0_1004, 0x131)]
        );
        w(&mut io, 0x10 + 2 * 16, 0x31 | (1 << 16));
        assert_eq!(io.routes(), vec![(4, 0xFEE0_2000, 0x24)]);
        assert_eq!(r(&mut io, 0x10 + 2 * 4), 0x24);
        assert_eq!(r(&mut io, 0x11 + 2 * 4), 2 << 24);
        let _ = io;
        assert_eq!(rec.0.last().unwrap(), &vec![(4, 0xFEE0_2000, 0x24)]);
        // Every change (and nothing else) rewrote the table: pin 4 high dword
        // (masked, no route change yet but the entry changed), pin 4 low, pin 16 x3.
        assert_eq!(rec.0.len(), 5);
    }

    #[test]
    fn hostile_accesses_change_nothing() {
        let mut rec = Rec::default();
        let mut io = IoApic::new(&mut rec);
        // Read-only bits (delivery status 12, remote IRR 14) cannot be set.
        w(&mut io, 0x10, 0x20 | (1 << 12) | (1 << 14));
        assert_eq!(r(&mut io, 0x10), 0x20);
        // Registers past the last pin, odd-sized writes, writes outside the window.
        w(&mut io, 0x10 + 2 * 24, 0x55);
        assert_eq!(r(&mut io, 0x10 + 2 * 24), 0);
        io.write(IOWIN, &[1, 2]);
        io.write(0x40, &0u32.to_le_bytes());
        io.write(0x800, &0u32.to_le_bytes());
        let mut b = [0xAAu8; 8];
        io.read(0x800, &mut b);
        assert_eq!(b, [0; 8]);
        assert_eq!(io.routes(), vec![(0, 0xFEE0_0000, 0x20)]);
    }
}
