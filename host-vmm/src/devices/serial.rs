//! The 16550 UART at COM1 (0x3F8, IRQ 4), backed by vm-superio's model.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::{PioDevice, VmEvent};

/// COM1 base port.
pub const COM1_BASE: u16 = 0x3f8;
/// COM1 IRQ line.
pub const COM1_IRQ: u32 = 4;

/// Raises the UART interrupt through an eventfd registered as a KVM irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// COM1 as a port-I/O device writing guest output to `W`.
pub struct SerialPort<W: Write + Send> {
    inner: Serial<IrqTrigger, NoEvents, W>,
}

impl<W: Write + Send> std::fmt::Debug for SerialPort<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialPort")
    }
}

impl<W: Write + Send> SerialPort<W> {
    /// A UART that interrupts through `irq` and writes to `out`.
    pub fn new(irq: EventFd, out: W) -> Self {
        Self {
            inner: Serial::new(IrqTrigger(irq), out),
        }
    }
}

impl<W: Write + Send> PioDevice for SerialPort<W> {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [b]) => *b = self.inner.read(off),
            (_, d) => d.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent> {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            if let Err(e) = self.inner.write(off, *b) {
                tracing::debug!(error = %e, "serial write failed");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_bytes_and_ignores_wide_accesses() {
        let buf = Buf::default();
        let mut s = SerialPort::new(EventFd::new(0).unwrap(), buf.clone());
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        s.write(0, &[1, 2]); // a 16-bit access to THR is not a byte write
        assert_eq!(&*buf.0.lock().unwrap(), b"hi");
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
        let mut wide = [0u8; 2];
        s.read(5, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }
}
