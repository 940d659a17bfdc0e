//! The 16550 serial port at 0x3F8 (polled), power off and failure signalling.

use crate::pio::{inb, outb, outw};

const COM1: u16 = 0x3F8;
const PM1A_CNT: u16 = 0x604;
const PVPANIC: u16 = 0x505;

/// A `core::fmt::Write` to the serial port.
pub struct Serial;

impl Serial {
    fn byte(b: u8) {
        // Wait for the transmit holding register (bounded: a missing UART must not hang).
        for _ in 0..100_000 {
            if inb(COM1 + 5) & 0x20 != 0 {
                break;
            }
        }
        outb(COM1, b);
    }
}

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                Self::byte(b'\r');
            }
            Self::byte(b);
        }
        Ok(())
    }
}

/// Prints to the serial port.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Serial, $($arg)*);
    }};
}

/// ACPI S5 (the VMM exits 0).
pub fn power_off() -> ! {
    outw(PM1A_CNT, 0x3400);
    halt()
}

/// pvpanic (the VMM exits non-zero).
pub fn fail() -> ! {
    outb(PVPANIC, 1);
    halt()
}

fn halt() -> ! {
    // `hlt` is privileged; ring 3 can only spin until the VMM stops the vCPU.
    loop {
        core::hint::spin_loop();
    }
}
