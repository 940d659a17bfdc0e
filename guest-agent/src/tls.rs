//! An HTTPS [`Transport`] (`cvm-agent --kbs https://HOST:PORT --kbs-ca FILE`): TCP plus
//! rustls (ring provider, the one the verifier uses), trusting only the given CA
//! certificates. The guest's secrets are JWE-wrapped to its own key either way; TLS
//! protects the protocol's metadata and authenticates the verifier.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::http::{Transport, TransportError};

/// Connects to `host:port` over TLS per request.
#[derive(Debug)]
pub struct TlsTransport {
    host: String,
    port: u16,
    config: Arc<rustls::ClientConfig>,
    stream: Option<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

fn err(e: impl std::fmt::Display) -> TransportError {
    TransportError(format!("tls: {e}"))
}

impl TlsTransport {
    /// A transport to `host:port` trusting the PEM certificates in `ca_pem`.
    pub fn new(host: &str, port: u16, ca_pem: &[u8]) -> Result<Self, TransportError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.map_err(err)?).map_err(err)?;
        }
        if roots.is_empty() {
            return Err(TransportError::new("the CA file holds no certificate"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(err)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            host: host.to_owned(),
            port,
            config: Arc::new(config),
            stream: None,
        })
    }

    fn stream(
        &mut self,
    ) -> Result<&mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>, TransportError> {
        self.stream
            .as_mut()
            .ok_or_else(|| TransportError::new("not connected"))
    }
}

impl Transport for TlsTransport {
    fn open(&mut self) -> Result<(), TransportError> {
        self.stream = None;
        let mut last = TransportError::new("the KBS host does not resolve");
        let mut tcp = None;
        for addr in (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(err)?
        {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(30)) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = err(e),
            }
        }
        let tcp = tcp.ok_or(last)?;
        tcp.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(err)?;
        let name = ServerName::try_from(self.host.clone()).map_err(err)?;
        let conn = rustls::ClientConnection::new(self.config.clone(), name).map_err(err)?;
        self.stream = Some(rustls::StreamOwned::new(conn, tcp));
        Ok(())
    }

    fn write_all(&mut self, data: &[u8]) -> Result<(), TransportError> {
        let s = self.stream()?;
        s.write_all(data).map_err(err)?;
        s.flush().map_err(err)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        match self.stream()?.read(buf) {
            Ok(n) => Ok(n),
            // A peer that closes without close_notify after a complete response is
            // common; the HTTP framing detects truncation.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
            Err(e) => Err(err(e)),
        }
    }

    fn close(&mut self) {
        if let Some(mut s) = self.stream.take() {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }
}
