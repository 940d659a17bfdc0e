//! The accept loop: connection caps, TLS handshake and header-read timeouts, graceful
//! shutdown.
//!
//! Small on purpose, on hyper's own HTTP/1.1 connection driver (`axum::serve` and
//! axum-server have no header-read timeout, no handshake timeout and no connection cap):
//!
//! - a connection beyond `max_connections` in total or `max_connections_per_ip` from its
//!   client IP is closed as soon as it is accepted (counted in
//!   `cvm_connections_refused_total`), so half-open connections cannot use up the
//!   process's file descriptors or crowd out other clients;
//! - a TLS handshake must complete within `tls_handshake_timeout`;
//! - a request head must arrive within `header_read_timeout`, measured from the moment
//!   the connection waits for a request, so the same timer closes a keep-alive connection
//!   that stays idle between requests and a TLS connection that sends nothing after its
//!   handshake;
//! - the body and the answer of one request are bounded by `request_timeout` (a router
//!   layer, see `super::router`);
//! - a request head must fit in 64 KiB, the read buffer of each connection;
//! - a connection lives at most `max_connection_lifetime`: then it is shut down
//!   gracefully (the request in progress is answered, no further one is read) and, if
//!   that has not finished within `request_timeout` (a client that sends requests and never
//!   reads the answers, so the write stalls), closed. Without it, a client pipelining
//!   requests without reading held its connection forever: hyper stops reading while a
//!   response cannot be written, so neither timeout above ever fires;
//! - connections are counted per IPv4 address and per IPv6 /64.
//!
//! Only HTTP/1.1 is served (ALPN `http/1.1`): the KBS protocol and the admin plane need
//! nothing more, and HTTP/2 would need its own set of stream limits.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use super::state::{AppState, FloodLimits};

/// hyper's read buffer per connection, hence the largest request head.
const MAX_BUF: usize = 64 << 10;

/// The address a connection is counted under: IPv4 as itself, IPv6 by its /64.
fn conn_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Open connections, per client IP and in total.
#[derive(Debug)]
struct Tracker {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
    max_total: usize,
}

/// One admitted connection; releases its slot when dropped.
#[derive(Debug)]
struct Slot {
    tracker: Arc<Tracker>,
    ip: IpAddr,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy)]
enum Refused {
    PerIp,
    Global,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut map = self.lock();
        let total: usize = map.values().sum();
        if total >= self.max_total {
            return Err(Refused::Global);
        }
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        Ok(Slot {
            tracker: self.clone(),
            ip,
        })
    }

    fn open(&self) -> usize {
        self.lock().values().sum()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.tracker.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` turns true, then
/// lets open connections finish their current request for up to `drain`.
pub(crate) async fn run(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    limits: FloodLimits,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let tracker = Arc::new(Tracker {
        per_ip: Mutex::new(HashMap::new()),
        max_per_ip: limits.max_connections_per_ip,
        max_total: limits.max_connections,
    });
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or a transient network error: back off briefly
                // rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match tracker.admit(conn_key(peer.ip())) {
            Ok(s) => s,
            Err(why) => {
                let reason = match why {
                    Refused::PerIp => "per-ip",
                    Refused::Global => "global",
                };
                state.metrics.connection_refused(reason);
                tracing::debug!(%peer, reason, "connection refused by the connection cap");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(stream, peer, app, limits, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(
                        limits.tls_handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => serve_connection(s, peer, app, limits, shutdown).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            state.metrics.connection_refused("tls-handshake");
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + drain;
    while tracker.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    limits: FloodLimits,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // A request head (line and headers) must fit in 64 KiB (431 otherwise), so a
        // connection's read buffer stays at 64 KiB instead of hyper's default ~408 KiB.
        .max_buf_size(MAX_BUF)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(limits.max_connection_lifetime);
    tokio::pin!(lifetime);
    let result = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = shutdown.changed() => {
            // Bounded by the caller's drain time.
            conn.as_mut().graceful_shutdown();
            Some(conn.await)
        }
        _ = &mut lifetime => {
            conn.as_mut().graceful_shutdown();
            // The request in progress keeps its full `request_timeout`.
            tokio::time::timeout(limits.request_timeout, conn.as_mut()).await.ok()
        }
    };
    match result {
        Some(Ok(())) => {}
        Some(Err(e)) => tracing::debug!(%peer, error = %e, "connection closed with an error"),
        // Dropping `conn` closes the socket.
        None => tracing::debug!(%peer, "connection closed: it did not finish in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_ip_and_total() {
        let t = Arc::new(Tracker {
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip: 2,
            max_total: 3,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = t.admit(a).unwrap();
        let _s2 = t.admit(a).unwrap();
        assert!(matches!(t.admit(a), Err(Refused::PerIp)));
        let _s3 = t.admit(b).unwrap();
        assert!(matches!(t.admit(b), Err(Refused::Global)));
        drop(s1);
        assert_eq!(t.open(), 2);
        assert!(t.admit(a).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t = Arc::new(Tracker {
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip: 2,
            max_total: 100,
        });
        let k = |s: &str| conn_key(s.parse().unwrap());
        let _a = t.admit(k("2001:db8:1:2::1")).unwrap();
        let _b = t.admit(k("2001:db8:1:2:ffff::9")).unwrap();
        assert!(matches!(
            t.admit(k("2001:db8:1:2:dead:beef:0:1")),
            Err(Refused::PerIp)
        ));
        assert!(t.admit(k("2001:db8:1:3::1")).is_ok(), "another /64");
        assert_eq!(k("::ffff:10.0.0.1"), k("10.0.0.1"));
    }
}
