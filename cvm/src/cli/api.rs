//! `cvm api`: a client for a running VMM's control socket (`cvm launch --api-socket`),
//! in the style of cloud-hypervisor's `ch-remote`.
//!
//! | command | request | prints |
//! |---|---|---|
//! | `status` | `GET /v1/vm` | the VM's state, TEE, vCPUs, memory, uptime (JSON) |
//! | `measurement` | `GET /v1/vm/measurement` | the expected launch measurement (JSON) |
//! | `pause` / `resume` | `PUT /v1/vm/pause` / `resume` | nothing (204) |
//! | `shutdown` | `PUT /v1/vm/shutdown` | nothing (202); `cvm launch` then exits 0 |
//!
//! Exit codes follow the convention of `cli-support`: 2 when the socket path does not
//! exist or is not a socket, 1 when the VMM cannot be reached or refuses the request
//! (for example `pause` on a paused VM), with the VMM's problem detail in the message.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use cli_support::{ExitClass, EXIT_FAILURE, EXIT_USAGE};

/// The largest response accepted (the VMM's answers are a few hundred bytes).
const MAX_RESPONSE: u64 = 64 << 10;

/// `cvm api`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The VMM's control socket (`cvm launch --api-socket`).
    #[arg(long, visible_alias = "api-socket", value_name = "PATH")]
    pub socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Request,
}

/// A request to the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Request {
    /// Print the VM's state, TEE, vCPUs, memory and uptime.
    #[command(visible_alias = "info")]
    Status,
    /// Print the launch measurement the VMM expects.
    Measurement,
    /// Stop the vCPUs (the guest keeps its state).
    Pause,
    /// Let paused vCPUs run again.
    Resume,
    /// Stop the VM; `cvm launch` exits 0.
    Shutdown,
}

impl Request {
    fn method_and_path(self) -> (&'static str, &'static str) {
        match self {
            Request::Status => ("GET", "/v1/vm"),
            Request::Measurement => ("GET", "/v1/vm/measurement"),
            Request::Pause => ("PUT", "/v1/vm/pause"),
            Request::Resume => ("PUT", "/v1/vm/resume"),
            Request::Shutdown => ("PUT", "/v1/vm/shutdown"),
        }
    }
}

/// Why `cvm api` failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// The socket path names nothing, or not a socket.
    #[error("{0} is not a VMM control socket (start the VM with `cvm launch --api-socket PATH`)")]
    NotASocket(PathBuf, #[source] Option<std::io::Error>),
    /// Connecting or talking to the VMM failed.
    #[error("cannot talk to the VMM at {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The VMM answered something that is not an HTTP response of its API.
    #[error("the VMM's answer is malformed: {0}")]
    Malformed(&'static str),
    /// The VMM refused the request.
    #[error("the VMM refused the request ({status}): {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem detail.
        detail: String,
    },
}

impl ExitClass for ApiClientError {
    fn exit_code(&self) -> u8 {
        match self {
            ApiClientError::NotASocket(..) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
}

/// Sends `req` to the socket at `path`; returns the status and the body.
pub fn call(path: &Path, req: Request) -> Result<(u16, String), ApiClientError> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => return Err(ApiClientError::NotASocket(path.to_owned(), None)),
        Err(e) => return Err(ApiClientError::NotASocket(path.to_owned(), Some(e))),
    }
    let io = |e| ApiClientError::Io(path.to_owned(), e);
    let mut s = UnixStream::connect(path).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let (method, target) = req.method_and_path();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    s.flush().map_err(io)?;
    let mut r = BufReader::new(s.take(MAX_RESPONSE));
    let mut line = String::new();
    r.read_line(&mut line).map_err(io)?;
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(ApiClientError::Malformed("no HTTP/1.1 status line"))?;
    let mut len = None;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(io)? == 0 {
            return Err(ApiClientError::Malformed("the head ends early"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = Some(
                    value
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| ApiClientError::Malformed("a bad Content-Length"))?,
                );
            }
        }
    }
    let len = len.ok_or(ApiClientError::Malformed("no Content-Length"))?;
    let mut body = Vec::new();
    r.take(len).read_to_end(&mut body).map_err(io)?;
    if body.len() as u64 != len {
        return Err(ApiClientError::Malformed("the body is truncated"));
    }
    let body = String::from_utf8(body).map_err(|_| ApiClientError::Malformed("not UTF-8"))?;
    if status >= 400 {
        let detail = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
            .unwrap_or(body);
        return Err(ApiClientError::Refused { status, detail });
    }
    Ok((status, body))
}

/// Runs `cvm api`.
pub fn run(a: Args) -> ExitCode {
    match call(&a.socket, a.command) {
        Ok((_, body)) => {
            if !body.is_empty() {
                println!("{body}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => cli_support::exit_with(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A one-shot server answering `response` and returning the request it read.
    fn serve_once(path: &Path, response: String) -> std::thread::JoinHandle<String> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            s.write_all(response.as_bytes()).unwrap();
            head
        })
    }

    #[test]
    fn sends_the_route_and_returns_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let t = serve_once(
            &sock,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 19\r\n\r\n{\"state\":\"running\"}".into(),
        );
        let (status, body) = call(&sock, Request::Status).unwrap();
        assert_eq!((status, body.as_str()), (200, "{\"state\":\"running\"}"));
        assert!(t.join().unwrap().starts_with("GET /v1/vm HTTP/1.1\r\n"));
    }

    #[test]
    fn a_refusal_carries_the_problem_detail_and_exits_1() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let body = r#"{"status":409,"detail":"the VM is already paused"}"#;
        let resp = format!(
            "HTTP/1.1 409 Conflict\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let t = serve_once(&sock, resp);
        let e = call(&sock, Request::Pause).unwrap_err();
        assert!(t
            .join()
            .unwrap()
            .starts_with("PUT /v1/vm/pause HTTP/1.1\r\n"));
        assert_eq!(e.exit_code(), EXIT_FAILURE);
        assert!(e.to_string().contains("already paused"), "{e}");
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        for p in [file, dir.path().join("missing")] {
            let e = call(&p, Request::Status).unwrap_err();
            assert_eq!(e.exit_code(), EXIT_USAGE, "{e}");
        }
    }

    #[test]
    fn a_truncated_answer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let t = serve_once(
            &sock,
            "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}".into(),
        );
        let e = call(&sock, Request::Status).unwrap_err();
        t.join().unwrap();
        assert!(matches!(e, ApiClientError::Malformed(_)), "{e}");
    }
}
