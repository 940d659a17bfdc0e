//! An AF_VSOCK stream [`Transport`] (to the VMM's attestation relay: host CID 2, port
//! 50000).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use crate::http::{Transport, TransportError};

/// Connects to `cid:port` per request.
#[derive(Debug)]
pub struct VsockTransport {
    cid: u32,
    port: u32,
    stream: Option<File>,
}

impl VsockTransport {
    /// A transport to `cid:port`.
    pub fn new(cid: u32, port: u32) -> Self {
        Self {
            cid,
            port,
            stream: None,
        }
    }
}

fn io(e: std::io::Error) -> TransportError {
    TransportError(format!("vsock: {e}"))
}

impl Transport for VsockTransport {
    fn open(&mut self) -> Result<(), TransportError> {
        self.stream = None;
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_vm is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = self.cid;
        addr.svm_port = self.port;
        // SAFETY: `addr` is a valid sockaddr_vm of the given length.
        let rc = unsafe {
            libc::connect(
                fd,
                &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        self.stream = Some(File::from(owned));
        Ok(())
    }

    fn write_all(&mut self, data: &[u8]) -> Result<(), TransportError> {
        self.stream
            .as_mut()
            .ok_or_else(|| TransportError::new("not connected"))?
            .write_all(data)
            .map_err(io)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        self.stream
            .as_mut()
            .ok_or_else(|| TransportError::new("not connected"))?
            .read(buf)
            .map_err(io)
    }

    fn close(&mut self) {
        self.stream = None;
    }
}
