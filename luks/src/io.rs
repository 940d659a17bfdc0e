//! The one thing the reader needs from a device: reading bytes at an offset.

/// A device error, opaque to this crate: the backend describes it in `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct IoError {
    /// What went wrong, for people.
    pub message: &'static str,
}

impl IoError {
    /// An error with a fixed description.
    pub const fn new(message: &'static str) -> Self {
        Self { message }
    }
}

/// Random-access reads from the device holding the LUKS2 volume (a virtio-blk disk in the
/// guest, a `std::fs::File` on the host, a byte slice in tests).
///
/// `read` must fill all of `buf` or fail; short reads are errors.
pub trait BlockRead {
    /// Reads `buf.len()` bytes starting at byte `offset` of the device.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError>;
}

impl<T: BlockRead + ?Sized> BlockRead for &mut T {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        (**self).read(offset, buf)
    }
}

impl BlockRead for &[u8] {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        read_slice(self, offset, buf)
    }
}

impl BlockRead for alloc::vec::Vec<u8> {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        read_slice(self, offset, buf)
    }
}

fn read_slice(data: &[u8], offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
    let start = usize::try_from(offset).map_err(|_| IoError::new("read past the end"))?;
    let end = start
        .checked_add(buf.len())
        .filter(|&e| e <= data.len())
        .ok_or(IoError::new("read past the end of the image"))?;
    buf.copy_from_slice(&data[start..end]);
    Ok(())
}

#[cfg(feature = "std")]
impl BlockRead for std::fs::File {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset).map_err(|e| {
            IoError::new(match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "read past the end of the file",
                _ => "file read failed",
            })
        })
    }
}

pub(crate) fn read_at<R: BlockRead + ?Sized>(
    io: &mut R,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), crate::Error> {
    io.read(offset, buf).map_err(|source| crate::Error::Io {
        offset,
        len: buf.len(),
        source,
    })
}
