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

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (`linux/vm_sockets.h`, the `struct timeval` form).
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;
/// How long a connect to the relay may take (the relay's own TCP connect included).
const CONNECT_TIMEOUT_SECS: libc::time_t = 10;

fn io(e: std::io::Error) -> TransportError {
    TransportError(format!("vsock: {e}"))
}

/// The error of a failed `connect` to the relay. The VMM's relay answers a connection
/// only once it has reached the verifier and resets it otherwise (`ECONNRESET`), so a
/// reset here means the verifier was unreachable, not a broken guest.
fn connect_error(e: std::io::Error) -> TransportError {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) => TransportError(
            "the verifier was unreachable (the host relay could not connect; \
             the host logs why)"
                .into(),
        ),
        Some(libc::ETIMEDOUT) => TransportError(format!(
            "the host relay did not answer (the verifier may be unreachable): vsock: {e}"
        )),
        _ => io(e),
    }
}

/// A connected AF_VSOCK stream to `cid:port` (the relay's connect timeout applies); the
/// error is the relay's reading of a failed connect (`connect_error`).
pub fn connect_stream(cid: u32, port: u32) -> Result<File, TransportError> {
    connect_raw(cid, port).map_err(connect_error)
}

/// A connected AF_VSOCK stream to `cid:port`, with the OS error of a failed connect.
pub fn connect_raw(cid: u32, port: u32) -> std::io::Result<File> {
    connect_from(cid, port, false)
}

/// The privileged source ports [`connect_raw_privileged`] tries, highest first (Linux:
/// only CAP_NET_BIND_SERVICE binds a vsock port ≤ 1023, `LAST_RESERVED_PORT`).
pub const PRIVILEGED_PORTS: std::ops::RangeInclusive<u32> = 512..=1023;

/// As [`connect_raw`], from a privileged source port (≤ 1023), which only root (or
/// CAP_NET_BIND_SERVICE) can bind: the VMM's evidence service answers such ports only,
/// so that an unprivileged guest process cannot get evidence. Fails with the bind
/// error (EACCES without the capability) rather than falling back to an ephemeral port.
pub fn connect_raw_privileged(cid: u32, port: u32) -> std::io::Result<File> {
    connect_from(cid, port, true)
}

/// Binds `fd` to the first free port of [`PRIVILEGED_PORTS`], highest first.
fn bind_privileged(fd: libc::c_int) -> std::io::Result<()> {
    let mut last = std::io::Error::from_raw_os_error(libc::EADDRINUSE);
    for p in PRIVILEGED_PORTS.rev() {
        // SAFETY: sockaddr_vm is plain data; all-zero is valid.
        let mut local: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        local.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        local.svm_cid = libc::VMADDR_CID_ANY;
        local.svm_port = p;
        // SAFETY: `local` is a valid sockaddr_vm of the given length.
        let rc = unsafe {
            libc::bind(
                fd,
                &local as *const libc::sockaddr_vm as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        last = std::io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EADDRINUSE) {
            return Err(last);
        }
    }
    Err(last)
}

fn connect_from(cid: u32, port: u32, privileged: bool) -> std::io::Result<File> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if privileged {
        bind_privileged(fd)?;
    }
    // The relay answers only once it reached the verifier (see `connect_error`):
    // allow that connect more than the kernel's default 2 s. Best effort.
    let timeout = libc::timeval {
        tv_sec: CONNECT_TIMEOUT_SECS,
        tv_usec: 0,
    };
    // SAFETY: setsockopt(2) on our descriptor with a valid timeval of the given size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::AF_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            &timeout as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    // SAFETY: sockaddr_vm is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm of the given length.
    let rc = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(File::from(owned))
}

/// Sets `SO_RCVTIMEO` and `SO_SNDTIMEO` of the socket `f` to `secs` seconds.
pub fn set_timeouts(f: &File, secs: libc::time_t) -> Result<(), TransportError> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: secs,
        tv_usec: 0,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: setsockopt(2) on a descriptor `f` owns, with a valid timeval of the
        // given size; the result is checked.
        let rc = unsafe {
            libc::setsockopt(
                f.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

impl Transport for VsockTransport {
    fn open(&mut self) -> Result<(), TransportError> {
        self.stream = None;
        self.stream = Some(connect_stream(self.cid, self.port)?);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_connect_says_the_verifier_was_unreachable() {
        let e = connect_error(std::io::Error::from_raw_os_error(libc::ECONNRESET));
        assert!(
            e.0.starts_with("the verifier was unreachable (the host relay could not connect"),
            "{e}"
        );
        let e = connect_error(std::io::Error::from_raw_os_error(libc::ENODEV));
        assert!(e.0.starts_with("vsock: "), "{e}");
    }

    /// F2: the agent's evidence connection comes from a privileged source port (the
    /// VMM refuses any other). Needs AF_VSOCK in this kernel (skips visibly without).
    #[test]
    fn the_privileged_bind_picks_a_port_at_most_1023() {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "no AF_VSOCK under CI"
            );
            eprintln!(
                "SKIPPED: no AF_VSOCK here: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        // SAFETY: a fresh descriptor we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        match bind_privileged(owned.as_raw_fd()) {
            Ok(()) => {
                assert!(root, "an unprivileged process bound a port ≤ 1023");
                // SAFETY: sockaddr_vm is plain data; getsockname writes at most `len`.
                let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
                // SAFETY: valid out-pointers of the given length.
                let rc = unsafe {
                    libc::getsockname(
                        owned.as_raw_fd(),
                        &mut a as *mut libc::sockaddr_vm as *mut libc::sockaddr,
                        &mut len,
                    )
                };
                assert_eq!(rc, 0);
                assert!(PRIVILEGED_PORTS.contains(&a.svm_port), "{}", a.svm_port);
            }
            Err(e) => {
                if root && e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                    eprintln!("SKIPPED: no vsock transport to bind on here: {e}");
                    return;
                }
                assert!(!root, "root could not bind a privileged port: {e}");
                assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
            }
        }
    }
}
