//! `cvm emulated collateral-server`: serves an emulated platform's collateral over the
//! AMD KDS and Intel PCS v4 paths (built by `attestation`'s `kds_responses` /
//! `pcs_responses`), so `cvm-verifier serve --amd-kds-url URL --intel-pcs-url URL`
//! fetches an emulated platform's collateral exactly as a real one's.
//!
//! A deliberately tiny HTTP/1.1 server on `std::net`: GET only, one request per
//! connection (`Connection: close`), a 8 KiB request head read within 5 s, exact
//! path-and-query matches, anything else 404. It listens on loopback only: it is test
//! equipment, and its collateral is as insecure as the platform.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use attestation::snp::emulated::kds::CollateralResponse;
use attestation::snp::emulated::EmulatedSnpPlatform;
use attestation::tdx::emulated::{CollateralOptions, EmulatedTdxPlatform};

use cli_support::fail;

/// Options of `cvm emulated collateral-server`.
#[derive(Debug, clap::Args)]
pub struct CollateralArgs {
    /// The platform directory (`cvm emulated init --dir`).
    #[arg(long)]
    pub dir: PathBuf,
    /// Loopback ADDR:PORT to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Days the served CRLs, TCB info and QE identity stay valid.
    #[arg(long, default_value_t = 30)]
    pub validity_days: u32,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollateralServerError {
    /// Not a loopback address.
    #[error("the collateral server listens on loopback addresses only, not {0}")]
    NotLoopback(SocketAddr),
    /// The directory holds neither platform.
    #[error("{} holds no emulated SNP or TDX platform (run `cvm emulated init`)", .0.display())]
    NoPlatform(PathBuf),
    /// Building the responses failed.
    #[error("cannot build the emulated collateral")]
    Emulated(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Binding failed.
    #[error("cannot listen on {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// The responses for the platform(s) in `dir`, valid from a day ago for `days`.
pub fn responses(
    dir: &std::path::Path,
    days: u32,
) -> Result<Vec<CollateralResponse>, CollateralServerError> {
    let boxed = |e: Box<dyn std::error::Error + Send + Sync>| CollateralServerError::Emulated(e);
    let mut out = Vec::new();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    if dir.join("snp").exists() {
        let snp = EmulatedSnpPlatform::open(dir).map_err(|e| boxed(Box::new(e)))?;
        out.extend(
            snp.kds_responses(&[], now - day, now + day * days)
                .map_err(|e| boxed(Box::new(e)))?,
        );
    }
    if dir.join("tdx").exists() {
        let tdx = EmulatedTdxPlatform::open(dir).map_err(|e| boxed(Box::new(e)))?;
        out.extend(
            tdx.pcs_responses(&CollateralOptions::from_now(i64::from(days)))
                .map_err(|e| boxed(Box::new(e)))?,
        );
    }
    if out.is_empty() {
        return Err(CollateralServerError::NoPlatform(dir.to_owned()));
    }
    Ok(out)
}

/// Answers one connection.
fn answer(mut stream: TcpStream, responses: &[CollateralResponse]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 8 << 10 {
            return stream.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let found = responses.iter().find(|r| r.path == target);
    match (method, found) {
        ("GET", Some(r)) => {
            let mut head = format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
                r.content_type,
                r.body.len()
            );
            for (name, value) in &r.headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes())?;
            stream.write_all(&r.body)
        }
        ("GET", None) => stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
        _ => stream.write_all(
            b"HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        ),
    }
}

/// Serves `responses` on `listener` until the process ends.
pub fn serve(listener: TcpListener, responses: Vec<CollateralResponse>) {
    for stream in listener.incoming().flatten() {
        if let Err(e) = answer(stream, &responses) {
            tracing::debug!(error = %e, "collateral server connection failed");
        }
    }
}

/// Runs `cvm emulated collateral-server`.
pub fn run(args: CollateralArgs) -> ExitCode {
    if !args.listen.ip().is_loopback() {
        return fail(
            &CollateralServerError::NotLoopback(args.listen),
            cli_support::EXIT_USAGE,
        );
    }
    let responses = match responses(&args.dir, args.validity_days) {
        Ok(r) => r,
        Err(e) => return fail(&e, cli_support::EXIT_USAGE),
    };
    let listener = match TcpListener::bind(args.listen) {
        Ok(l) => l,
        Err(e) => {
            return fail(
                &CollateralServerError::Bind(args.listen, e),
                cli_support::EXIT_FAILURE,
            )
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    println!(
        "cvm emulated collateral-server listening on http://{addr} (INSECURE: emulated collateral)"
    );
    let _ = std::io::stdout().flush();
    serve(listener, responses);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, target: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn serves_exact_paths_with_headers_and_404_otherwise() {
        let responses = vec![CollateralResponse {
            path: "/tdx/certification/v4/qe/identity".into(),
            content_type: "application/json",
            headers: vec![("SGX-Enclave-Identity-Issuer-Chain".into(), "%2D%2D".into())],
            body: b"{}".to_vec(),
        }];
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener, responses));
        let ok = get(addr, "/tdx/certification/v4/qe/identity");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("SGX-Enclave-Identity-Issuer-Chain: %2D%2D\r\n"));
        assert!(ok.ends_with("\r\n\r\n{}"));
        let missing = get(addr, "/tdx/certification/v4/qe/identity?x=1");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    }

    #[test]
    fn refuses_a_non_loopback_address() {
        let code = run(CollateralArgs {
            dir: PathBuf::from("/nonexistent"),
            listen: "0.0.0.0:0".parse().unwrap(),
            validity_days: 1,
        });
        assert_eq!(code, ExitCode::from(2));
    }
}
