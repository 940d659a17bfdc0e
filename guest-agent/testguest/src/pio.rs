//! Port I/O from ring 3 (IOPL = 3 is set by the prologue).

use core::arch::asm;

/// Writes a byte to `port`.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects; IOPL = 3 allows it at ring 3. The ports we
    // use (serial, PM1a, pvpanic) are the platform's documented devices.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from `port`.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Writes a 16-bit value to `port`.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}
