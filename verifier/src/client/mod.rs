//! Clients of the service: the guest side of the KBS protocol ([`kbs`]), emulated guests
//! that produce real-format evidence ([`emulated`]), and the admin API client
//! ([`admin`]). The load generator and the integration tests drive the service through
//! these, exactly as a guest agent or an operator would.

pub mod admin;
pub mod emulated;
pub mod kbs;

use std::path::Path;

/// Errors of the clients.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The HTTP request failed.
    #[error("the HTTP request failed")]
    Http(#[source] reqwest::Error),
    /// The server answered with an error status.
    #[error("the server answered {status}: {detail}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The problem's `detail` (or the body).
        detail: String,
        /// The whole body.
        body: String,
    },
    /// The server's answer does not follow the protocol.
    #[error("unexpected answer: {0}")]
    Protocol(&'static str),
    /// The CA certificate could not be read.
    #[error("cannot read the CA certificate {0}")]
    Ca(String, #[source] std::io::Error),
    /// An emulated platform failed.
    #[error("the emulated platform failed: {0}")]
    Emulated(String),
    /// JWE decryption failed.
    #[error("cannot decrypt the released resource")]
    Jwe(#[source] crate::crypto::jwe::JweError),
}

/// An HTTPS client trusting `ca_pem` in addition to the web PKI roots.
pub fn http_client(ca_pem: Option<&Path>) -> Result<reqwest::Client, ClientError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(std::time::Duration::from_secs(60));
    if let Some(p) = ca_pem {
        let pem = std::fs::read(p).map_err(|e| ClientError::Ca(p.display().to_string(), e))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(ClientError::Http)?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(ClientError::Http)
}

/// Turns an error response into [`ClientError::Status`].
pub async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.clone());
    Err(ClientError::Status {
        status: status.as_u16(),
        detail,
        body,
    })
}
