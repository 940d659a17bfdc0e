//! Power control: the i8042 reset line and the ACPI PM1a control register.
//!
//! - i8042 (ports 0x60..0x64): writing 0xFE to the command port 0x64 pulses reset. A
//!   confidential guest cannot be rebooted with the same measurement, so a reset ends
//!   the VM (as Firecracker does).
//! - ACPI PM1a event block at [`PM1A_EVT`] (status, enable) and control register at
//!   [`PM1A_CNT`]: writing SLP_EN with SLP_TYP = [`S5_SLP_TYP`] powers off. The FADT
//!   and the DSDT's `\_S5` package describe exactly these values.
//! - pvpanic (QEMU's ISA pvpanic, port [`PVPANIC_PORT`], ACPI HID `QEMU0001`): reading
//!   returns the supported events (PANICKED | CRASH_LOADED); writing PANICKED ends the
//!   VM as a guest panic (`cvm launch` exits non-zero); CRASH_LOADED is only logged.

use super::{PioDevice, VmEvent};

/// i8042 data port.
pub const I8042_BASE: u16 = 0x60;
/// PM1a event block (4 bytes).
pub const PM1A_EVT: u16 = 0x600;
/// PM1a control register (2 bytes).
pub const PM1A_CNT: u16 = 0x604;
/// SLP_TYP value for S5 (soft off).
pub const S5_SLP_TYP: u16 = 5;
const SLP_EN: u16 = 1 << 13;
/// pvpanic I/O port (QEMU's default).
pub const PVPANIC_PORT: u16 = 0x505;
/// pvpanic event: the guest panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// pvpanic event: a crash kernel was loaded.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic device.
#[derive(Debug, Default)]
pub struct PvPanic;

impl PioDevice for PvPanic {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> Option<VmEvent> {
        let v = data.first().copied().unwrap_or(0);
        if v & PVPANIC_PANICKED != 0 {
            return Some(VmEvent::Panic);
        }
        if v & PVPANIC_CRASH_LOADED != 0 {
            tracing::warn!(event = "pvpanic", "guest reports a crash kernel was loaded");
        }
        None
    }
}

/// The i8042 controller, reduced to its reset line.
#[derive(Debug, Default)]
pub struct I8042;

impl PioDevice for I8042 {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty.
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent> {
        (offset == 4 && data.first() == Some(&0xfe)).then_some(VmEvent::Reset)
    }
}

/// The ACPI PM1a event and control registers.
#[derive(Debug, Default)]
pub struct AcpiPm {
    status: u16,
    enable: u16,
    control: u16,
}

impl PioDevice for AcpiPm {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let regs = [
            self.status.to_le_bytes(),
            self.enable.to_le_bytes(),
            self.control.to_le_bytes(),
        ]
        .concat();
        for (i, b) in data.iter_mut().enumerate() {
            *b = regs.get(usize::from(offset) + i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent> {
        let v = match data {
            [a] => u16::from(*a),
            [a, b, ..] => u16::from_le_bytes([*a, *b]),
            [] => return None,
        };
        match offset {
            0 => self.status &= !v, // write-one-to-clear
            2 => self.enable = v,
            4 => {
                self.control = v & !SLP_EN;
                if v & SLP_EN != 0 && (v >> 10) & 7 == S5_SLP_TYP {
                    return Some(VmEvent::PowerOff);
                }
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_other_sleep_states_do_not() {
        let mut pm = AcpiPm::default();
        assert_eq!(
            pm.write(4, &(SLP_EN | (S5_SLP_TYP << 10)).to_le_bytes()),
            Some(VmEvent::PowerOff)
        );
        assert_eq!(pm.write(4, &(SLP_EN | (3 << 10)).to_le_bytes()), None);
        assert_eq!(
            pm.write(4, &(S5_SLP_TYP << 10).to_le_bytes()),
            None,
            "SLP_EN is required"
        );
        let mut r = [0u8; 2];
        pm.read(4, &mut r);
        assert_eq!(u16::from_le_bytes(r), S5_SLP_TYP << 10);
    }

    #[test]
    fn pvpanic_reports_its_features_and_stops_on_panicked() {
        let mut p = PvPanic;
        let mut b = [0u8; 1];
        p.read(0, &mut b);
        assert_eq!(b, [3]);
        assert_eq!(p.write(0, &[1]), Some(VmEvent::Panic));
        assert_eq!(p.write(0, &[3]), Some(VmEvent::Panic));
        assert_eq!(p.write(0, &[2]), None, "crash loaded is not a panic");
        assert_eq!(p.write(0, &[0]), None);
    }

    #[test]
    fn i8042_reset() {
        let mut k = I8042;
        assert_eq!(k.write(4, &[0xfe]), Some(VmEvent::Reset));
        assert_eq!(k.write(4, &[0xad]), None);
        assert_eq!(k.write(0, &[0xfe]), None);
    }
}
