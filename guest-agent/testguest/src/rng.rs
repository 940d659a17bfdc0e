//! RDRAND at ring 3 (native on this platform), after checking `CPUID.1:ECX[30]`. Fails
//! closed: no RDRAND, or ten consecutive failures, is an error.

use guest_agent::rng::{Entropy, EntropyError};

/// RDRAND-backed entropy.
#[derive(Debug)]
pub struct Rdrand(());

impl Rdrand {
    /// Checks that the CPU has RDRAND.
    pub fn new() -> Result<Self, EntropyError> {
        let leaf1 = core::arch::x86_64::__cpuid(1);
        if leaf1.ecx & (1 << 30) == 0 {
            return Err(EntropyError("the CPU has no RDRAND"));
        }
        Ok(Self(()))
    }

    fn next(&mut self) -> Result<u64, EntropyError> {
        for _ in 0..10 {
            let mut v = 0u64;
            // SAFETY: RDRAND exists (checked in `new`); it writes only `v`.
            if unsafe { core::arch::x86_64::_rdrand64_step(&mut v) } == 1 {
                return Ok(v);
            }
        }
        Err(EntropyError("RDRAND keeps failing"))
    }
}

impl Entropy for Rdrand {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        for chunk in buf.chunks_mut(8) {
            let v = self.next()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}
