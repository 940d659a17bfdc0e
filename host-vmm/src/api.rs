//! `--api-socket PATH`: a small REST control API on a Unix socket, in the style of
//! Firecracker and cloud-hypervisor. The contract is `host-vmm/openapi.yaml`.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/v1/vm` | `{"state", "tee", "vcpus", "memory_bytes", "uptime_ms"}` |
//! | GET | `/v1/vm/measurement` | `{"tee", "measurement", "insecure_emulated"}` |
//! | PUT | `/v1/vm/pause` | 204; vCPUs leave KVM_RUN and wait |
//! | PUT | `/v1/vm/resume` | 204 |
//! | PUT | `/v1/vm/shutdown` | 202; the VM stops, `cvm launch` exits 0 |
//! | GET | `/v1/metrics` | `{NAME: value}` from every source [`register_metrics`] added |
//!
//! Errors are RFC 7807 problem JSON. The socket is created with mode 0600 (only the
//! VMM's user can control the VM); a stale socket file is replaced, any other existing
//! file is refused. Requests are small and bounded: a request head over 8 KiB, a body,
//! or a connection idle for more than 5 s is refused. One thread serves the socket,
//! one connection at a time; the API cannot reach guest memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// The largest request head accepted.
pub const MAX_HEAD: usize = 8 << 10;

/// What the API can ask of the VMM.
pub trait VmControl: Send + Sync {
    /// `{"state", "tee", "vcpus", "memory_bytes", "uptime_ms"}`.
    fn status(&self) -> Value;
    /// `{"tee", "measurement", "insecure_emulated"}`.
    fn measurement(&self) -> Value;
    /// Pauses the vCPUs. Err with the reason when the state does not allow it.
    fn pause(&self) -> Result<(), ControlError>;
    /// Resumes the vCPUs.
    fn resume(&self) -> Result<(), ControlError>;
    /// Stops the VM.
    fn shutdown(&self);
}

/// Why a control request does not apply to the VM's state (answered 409).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The VM is stopping.
    #[error("the VM is stopping")]
    Stopping,
    /// Pause while paused.
    #[error("the VM is already paused")]
    AlreadyPaused,
    /// Resume while running.
    #[error("the VM is not paused")]
    NotPaused,
}

/// Why the API socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The path exists and is not a socket.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    Exists(PathBuf),
    /// Binding failed.
    #[error("cannot serve the API socket {}", .0.display())]
    Bind(PathBuf, #[source] std::io::Error),
}

/// A source of `/v1/metrics` values (e.g. the network policy's denied-packet counters,
/// which the unconfined `cvm` supervisor reads and shares with the VMM).
pub type MetricsSource = Arc<dyn Fn() -> Value + Send + Sync>;

static METRICS: Mutex<Vec<(String, MetricsSource)>> = Mutex::new(Vec::new());

/// Adds a `/v1/metrics` source under `name` (replacing one of the same name). Sources
/// are process-wide: a VMM process serves one VM.
pub fn register_metrics(name: &str, source: MetricsSource) {
    let mut m = METRICS.lock().unwrap_or_else(|e| e.into_inner());
    m.retain(|(n, _)| n != name);
    m.push((name.to_owned(), source));
}

/// The `/v1/metrics` body: `{NAME: value}` of every registered source.
pub fn metrics() -> Value {
    let sources: Vec<(String, MetricsSource)> =
        METRICS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Value::Object(sources.into_iter().map(|(n, f)| (n, f())).collect())
}

/// Binds `path` (mode 0600), replacing a stale socket but nothing else.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ApiError::Exists(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(|e| ApiError::Bind(path.to_owned(), e))?;
    }
    let l = UnixListener::bind(path).map_err(|e| ApiError::Bind(path.to_owned(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ApiError::Bind(path.to_owned(), e))?;
    Ok(l)
}

/// Removes the socket file [`bind`] made when the VMM has ended (a socket is removed,
/// anything else is left alone, as in [`bind`]).
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the API socket");
        }
    }
}

/// Serves `listener` until it fails; run it on its own thread.
pub fn serve(listener: UnixListener, vm: Arc<dyn VmControl>) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "the control API stopped accepting connections");
                break;
            }
        };
        if let Err(e) = handle(stream, vm.as_ref()) {
            tracing::debug!(error = %e, "API connection ended");
        }
    }
}

/// One parsed request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Content-Length.
    pub body_len: usize,
}

/// Why a request head is refused (answered 400).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Reading failed (including the idle timeout).
    #[error("cannot read the request")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection mid-request.
    #[error("connection closed mid-request")]
    Truncated,
    /// The head is over [`MAX_HEAD`].
    #[error("request head too large")]
    TooLarge,
    /// The head is not UTF-8.
    #[error("request head is not UTF-8")]
    NotUtf8,
    /// The request line is malformed.
    #[error("malformed request line `{0}`")]
    RequestLine(String),
    /// Not HTTP/1.x.
    #[error("unsupported version `{0}`")]
    Version(String),
    /// Content-Length is not a number.
    #[error("bad Content-Length")]
    ContentLength,
    /// A chunked (or otherwise encoded) body.
    #[error("request bodies are not accepted")]
    TransferEncoding,
}

/// Reads a request head (bounded) from `r`.
pub fn read_request(r: &mut impl BufRead) -> Result<Option<Request>, RequestError> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r
            .take((MAX_HEAD + 1 - head.len().min(MAX_HEAD)) as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(RequestError::Truncated)
            };
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(RequestError::TooLarge);
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = std::str::from_utf8(&head).map_err(|_| RequestError::NotUtf8)?;
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::RequestLine(first.to_owned()));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(RequestError::Version(version.to_owned()));
    }
    let mut body_len = 0;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                body_len = v.trim().parse().map_err(|_| RequestError::ContentLength)?;
            } else if k.trim().eq_ignore_ascii_case("transfer-encoding") {
                return Err(RequestError::TransferEncoding);
            }
        }
    }
    Ok(Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        body_len,
    }))
}

/// Routes a request; returns (status, body).
pub fn route(req: &Request, vm: &dyn VmControl) -> (u16, Option<Value>) {
    if req.body_len > 0 {
        return problem(413, "this API takes no request bodies");
    }
    let path = req.path.split('?').next().unwrap_or_default();
    match (req.method.as_str(), path) {
        ("GET", "/v1/vm") => (200, Some(vm.status())),
        ("GET", "/v1/vm/measurement") => (200, Some(vm.measurement())),
        ("GET", "/v1/metrics") => (200, Some(metrics())),
        ("PUT", "/v1/vm/pause") => match vm.pause() {
            Ok(()) => (204, None),
            Err(e) => problem(409, &e.to_string()),
        },
        ("PUT", "/v1/vm/resume") => match vm.resume() {
            Ok(()) => (204, None),
            Err(e) => problem(409, &e.to_string()),
        },
        ("PUT", "/v1/vm/shutdown") => {
            vm.shutdown();
            (202, None)
        }
        (
            _,
            "/v1/vm" | "/v1/vm/measurement" | "/v1/vm/pause" | "/v1/vm/resume" | "/v1/vm/shutdown"
            | "/v1/metrics",
        ) => problem(405, &format!("{} is not allowed on {path}", req.method)),
        _ => problem(404, &format!("no such resource: {path}")),
    }
}

fn problem(status: u16, detail: &str) -> (u16, Option<Value>) {
    (
        status,
        Some(
            json!({"type": "about:blank", "title": reason(status), "status": status, "detail": detail}),
        ),
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        _ => "Error",
    }
}

fn handle(stream: UnixStream, vm: &dyn VmControl) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let (status, body) = match read_request(&mut r) {
            Ok(None) => return Ok(()),
            Ok(Some(req)) => {
                let out = route(&req, vm);
                tracing::info!(event = "api", method = %req.method, path = %req.path, status = out.0, "API request");
                out
            }
            Err(e) => {
                let (s, b) = problem(400, &e.to_string());
                respond(&mut w, s, b.as_ref())?;
                return Ok(());
            }
        };
        respond(&mut w, status, body.as_ref())?;
    }
}

fn respond(w: &mut impl Write, status: u16, body: Option<&Value>) -> std::io::Result<()> {
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let ctype = if status >= 400 {
        "application/problem+json"
    } else {
        "application/json"
    };
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{text}",
        reason(status),
        text.len()
    )?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    #[derive(Default)]
    struct Fake {
        paused: AtomicBool,
        shutdowns: AtomicU32,
    }

    impl VmControl for Fake {
        fn status(&self) -> Value {
            json!({"state": if self.paused.load(Ordering::SeqCst) { "paused" } else { "running" }})
        }
        fn measurement(&self) -> Value {
            json!({"tee": "none", "measurement": null})
        }
        fn pause(&self) -> Result<(), ControlError> {
            if self.paused.swap(true, Ordering::SeqCst) {
                return Err(ControlError::AlreadyPaused);
            }
            Ok(())
        }
        fn resume(&self) -> Result<(), ControlError> {
            if !self.paused.swap(false, Ordering::SeqCst) {
                return Err(ControlError::NotPaused);
            }
            Ok(())
        }
        fn shutdown(&self) {
            self.shutdowns.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn call(sock: &Path, raw: &str) -> String {
        let mut s = UnixStream::connect(sock).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_the_documented_routes_over_a_0600_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let l = bind(&sock).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let fake = Arc::new(Fake::default());
        let vm: Arc<dyn VmControl> = fake.clone();
        std::thread::spawn(move || serve(l, vm));
        let r = call(&sock, "GET /v1/vm HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200 OK") && r.contains("\"running\""),
            "{r}"
        );
        let r = call(&sock, "PUT /v1/vm/pause HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 204"), "{r}");
        let r = call(&sock, "PUT /v1/vm/pause HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 409") && r.contains("already paused"),
            "{r}"
        );
        let r = call(&sock, "GET /v1/vm HTTP/1.1\r\n\r\n");
        assert!(r.contains("\"paused\""), "{r}");
        let r = call(&sock, "PUT /v1/vm/resume HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 204"), "{r}");
        let r = call(&sock, "GET /v1/vm/measurement HTTP/1.1\r\n\r\n");
        assert!(r.contains("\"measurement\":null"), "{r}");
        register_metrics("test", Arc::new(|| json!({"denied": 7})));
        let r = call(&sock, "GET /v1/metrics HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("\"test\":{\"denied\":7}"),
            "{r}"
        );
        let r = call(&sock, "DELETE /v1/vm HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 405") && r.contains("application/problem+json"),
            "{r}"
        );
        let r = call(&sock, "GET /nope HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = call(&sock, "PUT /v1/vm/shutdown HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 202"), "{r}");
        assert_eq!(fake.shutdowns.load(Ordering::SeqCst), 1);
        // Two requests on one connection.
        let r = call(
            &sock,
            "GET /v1/vm HTTP/1.1\r\n\r\nGET /v1/vm/measurement HTTP/1.1\r\n\r\n",
        );
        assert_eq!(r.matches("HTTP/1.1 200").count(), 2, "{r}");
    }

    #[test]
    fn hostile_requests_are_refused() {
        let fake = Fake::default();
        let big = format!("GET /v1/vm HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(
            read_request(&mut big.as_bytes()),
            Err(RequestError::TooLarge)
        ));
        assert!(read_request(&mut &b"GARBAGE\r\n\r\n"[..]).is_err());
        assert!(read_request(&mut &b"GET / SPDY/3\r\n\r\n"[..]).is_err());
        assert!(read_request(&mut &b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"[..]).is_err());
        assert!(read_request(&mut &b"GET / HTTP/1.1\r\n"[..]).is_err());
        assert_eq!(read_request(&mut &b""[..]).unwrap(), None);
        let req = read_request(&mut &b"PUT /v1/vm/pause HTTP/1.1\r\nContent-Length: 5\r\n\r\n"[..])
            .unwrap()
            .unwrap();
        assert_eq!(route(&req, &fake).0, 413);
        assert!(!fake.paused.load(Ordering::SeqCst));
    }

    #[test]
    fn only_stale_sockets_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"data").unwrap();
        assert!(matches!(bind(&file), Err(ApiError::Exists(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
        let sock = dir.path().join("api.sock");
        drop(bind(&sock).unwrap());
        bind(&sock).unwrap();
    }
}
