//! Port I/O and the serial console, for each environment.
//!
//! Plain and emulated guests execute `in`/`out` directly (the VMM sees a normal exit).
//! In a real SEV-SNP guest `out` raises #VC, and in a TD it raises #VE; the firmware
//! installs no handler for either in long mode, so it asks the hypervisor explicitly:
//! a GHCB IOIO exit (SNP) or TDG.VP.VMCALL<Instruction.IO> (TDX).

use crate::{arch, snp, tdx};

/// How port I/O reaches the VMM.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// `in`/`out` instructions (plain and emulated guests).
    Direct,
    /// GHCB IOIO exits (real SEV-SNP; the GHCB page is registered).
    Ghcb,
    /// TDG.VP.VMCALL (real TDX).
    TdVmcall,
}

/// The 16550 UART's data port.
pub const COM1: u16 = 0x3F8;
/// QEMU ISA pvpanic.
pub const PVPANIC: u16 = 0x505;

impl Io {
    /// Writes a byte to `port`.
    pub fn out8(self, port: u16, v: u8) {
        match self {
            Io::Direct => arch::outb(port, v),
            Io::Ghcb => snp::ghcb_io_out(port, u32::from(v), 1),
            Io::TdVmcall => tdx::vmcall_io_out(port, u32::from(v), 1),
        }
    }

    /// Prints a string on the serial console.
    pub fn puts(self, s: &str) {
        for &b in s.as_bytes() {
            if b == b'\n' {
                self.out8(COM1, b'\r');
            }
            self.out8(COM1, b);
        }
    }

    /// Prints `v` in hex with a `0x` prefix.
    pub fn put_hex(self, v: u64) {
        self.puts("0x");
        let mut started = false;
        for i in (0..16).rev() {
            let d = ((v >> (i * 4)) & 0xF) as u8;
            if d != 0 || started || i == 0 {
                started = true;
                self.out8(COM1, if d < 10 { b'0' + d } else { b'a' + d - 10 });
            }
        }
    }

    /// Prints `v` in decimal.
    pub fn put_dec(self, mut v: u64) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &b in &buf[i..] {
            self.out8(COM1, b);
        }
    }

    /// Prints `cvm-firmware: refusing to boot: <why>`, signals pvpanic (the VMM exits
    /// non-zero) and halts.
    pub fn refuse(self, why: &str) -> ! {
        self.puts("cvm-firmware: refusing to boot: ");
        self.puts(why);
        self.puts("\n");
        self.panic_exit()
    }

    /// Signals pvpanic (PANICKED) and halts.
    pub fn panic_exit(self) -> ! {
        self.out8(PVPANIC, 1);
        arch::halt_forever()
    }
}
