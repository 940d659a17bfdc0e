//! The host ends of vsock connections: Unix sockets (hybrid vsock) and the attestation
//! relay's TCP or TLS connection to the verifier. All are non-blocking and driven by
//! the vsock event thread; the VMM copies bytes and never parses them.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// A non-blocking byte stream to the host side of a connection.
pub trait Stream: Read + Write + AsRawFd + Send {
    /// Half-closes the sending direction (the guest will send no more).
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// Pushes bytes buffered by a protocol layer (TLS records) to the socket.
    fn flush_pending(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Whether a connection started without blocking is up: `Ok(true)` connected,
    /// `Ok(false)` still in progress, `Err` why it failed (refused, unreachable, …).
    fn connected(&self) -> io::Result<bool> {
        Ok(true)
    }
}

/// The state of a non-blocking TCP connect (see [`Stream::connected`]), with only the
/// system calls the vsock thread's seccomp filter allows: `SO_ERROR` (getsockopt) for a
/// failure, then an empty send, which a socket still connecting answers with `EAGAIN`
/// and a connected one with 0 (no byte is sent).
fn tcp_connected(sock: &TcpStream) -> io::Result<bool> {
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    let mut s = sock;
    match s.write(&[]) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

impl Stream for UnixStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Stream for TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    fn connected(&self) -> io::Result<bool> {
        tcp_connected(self)
    }
}

/// A TLS client connection over a non-blocking TCP socket.
pub struct TlsStream {
    conn: rustls::ClientConnection,
    sock: TcpStream,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("handshaking", &self.conn.is_handshaking())
            .finish()
    }
}

impl AsRawFd for TlsStream {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                // The verifier closed TCP without close_notify: the payload carries its
                // own framing and integrity (HTTP, JWE), so this is an ordinary EOF.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    self.conn
                        .process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    self.flush_pending()?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(buf)?;
        self.flush_pending()?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_pending()
    }
}

impl Stream for TlsStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush_pending()
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn connected(&self) -> io::Result<bool> {
        tcp_connected(&self.sock)
    }
}

/// Why `--url` / `--ca-cert` are unusable.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The URL is not http(s)://host\[:port\]\[/…\].
    #[error("`{0}` is not an http:// or https:// URL with a host")]
    Url(String),
    /// The host could not be resolved.
    #[error("cannot resolve the verifier host `{0}`")]
    Resolve(String, #[source] io::Error),
    /// Plain HTTP to a non-loopback address.
    #[error("http:// is only allowed to a loopback address, not {0}; use https:// with --ca-cert")]
    NotLoopback(String),
    /// https without a CA.
    #[error("an https:// verifier needs --ca-cert FILE (the relay trusts only that CA)")]
    NoCa,
    /// The CA file is unusable.
    #[error("cannot load the CA certificates in {0}")]
    Ca(PathBuf, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// The CA file holds no certificate.
    #[error("{0} holds no PEM certificate")]
    NoCaCert(PathBuf),
    /// rustls refused the configuration.
    #[error("cannot configure TLS")]
    Tls(#[source] rustls::Error),
}

/// Where and how the attestation relay connects.
#[derive(Clone)]
pub struct RelayConfig {
    /// The URL as given (for logs).
    pub url: String,
    /// Resolved addresses (resolved once at launch, before the sandbox is up).
    pub addrs: Vec<SocketAddr>,
    /// TLS configuration and server name, for https.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("url", &self.url)
            .field("addrs", &self.addrs)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Splits `scheme://host[:port][/path]` into (https?, host, port).
pub fn parse_url(url: &str) -> Result<(bool, String, u16), RelayError> {
    let bad = || RelayError::Url(url.to_string());
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad());
    }
    let default_port = if https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((https, host, port))
}

impl RelayConfig {
    /// Validates `url` (and loads `ca` for https) and resolves the host.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Self, RelayError> {
        let (https, host, port) = parse_url(url)?;
        let addrs: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| RelayError::Resolve(host.clone(), e))?
            .collect();
        if addrs.is_empty() {
            return Err(RelayError::Resolve(
                host.clone(),
                io::Error::new(io::ErrorKind::NotFound, "no address"),
            ));
        }
        let tls = if https {
            let ca = ca.ok_or(RelayError::NoCa)?;
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| RelayError::Ca(ca.to_owned(), Box::new(e)))?;
            for c in certs {
                let c = c.map_err(|e| RelayError::Ca(ca.to_owned(), Box::new(e)))?;
                roots
                    .add(c)
                    .map_err(|e| RelayError::Ca(ca.to_owned(), Box::new(e)))?;
            }
            if roots.is_empty() {
                return Err(RelayError::NoCaCert(ca.to_owned()));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(RelayError::Tls)?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name =
                ServerName::try_from(host.clone()).map_err(|_| RelayError::Url(url.into()))?;
            Some((Arc::new(config), name))
        } else {
            if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                return Err(RelayError::NotLoopback(a.ip().to_string()));
            }
            None
        };
        Ok(Self {
            url: url.to_string(),
            addrs,
            tls,
        })
    }

    /// Starts a non-blocking connection to the verifier (the connect completes in the
    /// background; reads and writes return WouldBlock until it does, and its error if
    /// it fails).
    pub fn connect(&self) -> io::Result<Box<dyn Stream>> {
        let addr = self.addrs[0];
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_nonblocking(true)?;
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let sock: TcpStream = sock.into();
        let _ = sock.set_nodelay(true);
        Ok(match &self.tls {
            None => Box::new(sock),
            Some((config, name)) => {
                let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(io::Error::other)?;
                Box::new(TlsStream { conn, sock })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_the_loopback_rule() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/kbs").unwrap(),
            (false, "127.0.0.1".into(), 8080)
        );
        assert_eq!(
            parse_url("https://v.example").unwrap(),
            (true, "v.example".into(), 443)
        );
        assert_eq!(
            parse_url("http://[::1]:9").unwrap(),
            (false, "::1".into(), 9)
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://a:b",
            "http://u@h",
            "http://[::1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(RelayConfig::new("http://127.0.0.1:1", None).is_ok());
        assert!(RelayConfig::new("http://[::1]:1", None).is_ok());
        assert!(matches!(
            RelayConfig::new("http://192.0.2.1:80", None),
            Err(RelayError::NotLoopback(_))
        ));
        assert!(matches!(
            RelayConfig::new("https://127.0.0.1:1", None),
            Err(RelayError::NoCa)
        ));
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        assert!(matches!(
            RelayConfig::new("https://127.0.0.1:1", Some(&empty)),
            Err(RelayError::NoCaCert(_))
        ));
    }
}
