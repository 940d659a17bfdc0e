//! Randomness, provided by the front end (`getrandom`-style). The core never falls back
//! to a weak source: a failing source fails the protocol.

/// The entropy source failed or is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no usable entropy source: {0}")]
pub struct EntropyError(pub &'static str);

/// A cryptographically secure random source.
pub trait Entropy {
    /// Fills `buf` with random bytes, or fails (never returns weak bytes).
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError>;
}

impl<E: Entropy + ?Sized> Entropy for &mut E {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        (**self).fill(buf)
    }
}

/// The operating system's source (`/dev/urandom`, which blocks until seeded on Linux
/// only through `getrandom(2)`; we read it after boot, where it is seeded).
#[cfg(feature = "std")]
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

#[cfg(feature = "std")]
impl Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(buf))
            .map_err(|_| EntropyError("cannot read /dev/urandom"))
    }
}
