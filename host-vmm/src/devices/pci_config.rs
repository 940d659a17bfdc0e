//! PCI configuration mechanism #1 (ports 0xCF8 address, 0xCFC..0xCFF data) on a machine
//! with no PCI devices: the quiet, correct answer for a guest that probes PCI.
//!
//! The address register latches what the guest writes with a 32-bit `out` (enable bit,
//! bus, device, function, dword register) and reads it back, as the hardware does;
//! every configuration read answers all ones (vendor 0xFFFF: no device at any bus,
//! device and function) and configuration writes are ignored. Linux therefore finds the
//! mechanism, no host bridge and no device, and boots without PCI, with no
//! unknown-port warnings. A byte write to 0xCF9 (the PC reset control register) with
//! RST_CPU (bit 2) set is a reset request, like the i8042 reset line.

use super::{PioDevice, VmEvent};

/// The address port; the data ports are at +4..+7, the reset control register at +1.
pub const PCI_CONFIG_BASE: u16 = 0xcf8;
/// The number of ports.
pub const PCI_CONFIG_LEN: u16 = 8;
/// Reset control register bit: reset the CPU.
const RST_CPU: u8 = 1 << 2;
/// Enable, bus, device, function and dword-aligned register bits of the address.
const ADDRESS_MASK: u32 = 0x80ff_fffc;

/// Configuration mechanism #1 with nothing behind it.
#[derive(Debug, Default)]
pub struct NoPci {
    address: u32,
}

impl PioDevice for NoPci {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent> {
        match (offset, data) {
            (0, &[a, b, c, d]) => {
                self.address = u32::from_le_bytes([a, b, c, d]) & ADDRESS_MASK;
                None
            }
            (1, &[v]) if v & RST_CPU != 0 => Some(VmEvent::Reset),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_latches_and_every_device_is_absent() {
        let mut p = NoPci::default();
        // Linux's type-1 probe: write the enable bit, read it back.
        assert_eq!(p.write(0, &0x8000_0000u32.to_le_bytes()), None);
        let mut a = [0u8; 4];
        p.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_0000);
        // Bus 0, device 0..31: vendor/device reads all ones.
        for dev in 0..32u32 {
            p.write(0, &(0x8000_0000 | dev << 11).to_le_bytes());
            let mut id = [0u8; 4];
            p.read(4, &mut id);
            assert_eq!(id, [0xff; 4]);
        }
        // Reserved bits do not latch.
        p.write(0, &0x7f00_0003u32.to_le_bytes());
        p.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0);
        // Byte reads of the address ports (the type-2 probe) read all ones.
        let mut b = [0u8; 1];
        p.read(0, &mut b);
        assert_eq!(b, [0xff]);
        // Config writes go nowhere.
        assert_eq!(p.write(4, &[1, 2, 3, 4]), None);
    }

    #[test]
    fn the_reset_control_register_resets() {
        let mut p = NoPci::default();
        assert_eq!(p.write(1, &[0x02]), None, "SYS_RST alone does not reset");
        assert_eq!(p.write(1, &[0x06]), Some(VmEvent::Reset));
        assert_eq!(p.write(1, &[]), None);
    }
}
