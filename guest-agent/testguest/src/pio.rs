//! Port I/O from ring 3 (IOPL = 3 is set by the prologue).

use core::arch::asm;

/// Writes a byte to `port`.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects; IOPL = 3 allows it at ring 3. The ports we
    // use (serial, PM1a, pvpanic, the mailbox) are the platform's documented devices.
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

/// Writes a 32-bit value to `port`.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`. The mailbox reads guest memory the window register names;
    // callers keep that window alive and untouched until the command completes.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    }
}

/// Reads a 32-bit value from `port`.
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for `outb`; the mailbox may have written guest memory (no `nomem`).
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") v, options(nostack, preserves_flags)) }
    v
}
