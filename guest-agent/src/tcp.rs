//! A TCP [`Transport`] (host use: tests, and `cvm-agent` talking HTTP to a verifier
//! directly).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::http::{Transport, TransportError};

/// Connects to one address per request.
#[derive(Debug)]
pub struct TcpTransport {
    addr: SocketAddr,
    stream: Option<TcpStream>,
}

impl TcpTransport {
    /// A transport to `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, stream: None }
    }

    fn stream(&mut self) -> Result<&mut TcpStream, TransportError> {
        self.stream
            .as_mut()
            .ok_or_else(|| TransportError::new("not connected"))
    }
}

fn io(e: std::io::Error) -> TransportError {
    TransportError(e.to_string())
}

impl Transport for TcpTransport {
    fn open(&mut self) -> Result<(), TransportError> {
        let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(30)).map_err(|e| {
            TransportError(format!(
                "the verifier at {} was unreachable: {e}",
                self.addr
            ))
        })?;
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(io)?;
        self.stream = Some(s);
        Ok(())
    }

    fn write_all(&mut self, data: &[u8]) -> Result<(), TransportError> {
        self.stream()?.write_all(data).map_err(io)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        self.stream()?.read(buf).map_err(io)
    }

    fn close(&mut self) {
        self.stream = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_is_named_unreachable_with_the_os_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = TcpTransport::new(addr).open().unwrap_err();
        assert!(
            e.0.contains(&format!("the verifier at {addr} was unreachable")),
            "{e}"
        );
        assert!(e.0.to_lowercase().contains("refused"), "{e}");
    }
}
