//! The evidence service the VMM offers a Linux guest under the **emulated** TEEs, over
//! virtio-vsock (host CID 2, port [`EVIDENCE_PORT`]).
//!
//! # Why
//!
//! Under `--tee emulated-snp|emulated-tdx` on a standard KVM, a stock Linux kernel runs
//! as a guest that does not see SNP or TDX (its PVALIDATE/TDCALL/VMGEXIT code would
//! raise #UD there), so configfs-tsm and `/dev/sev-guest` do not exist in it. This
//! service gives `cvm-agent` what configfs-tsm would: for emulated SNP the
//! ATTESTATION_REPORT of this launch's emulated PSP (VMPL 0, version 3) and the
//! extended-report certificate table (configfs-tsm's `auxblob`); for emulated TDX a
//! quote v4 made on the path the emulated TD's GetQuote takes (the emulated TDX module's
//! TDREPORT with the guest's REPORT_DATA and the RTMRs the firmware extended, quoted by
//! the emulated QE) and the platform's collateral.
//!
//! # Protocol
//!
//! The emulated TEEs' evidence command protocol ([`super::emulated`]) on a stream, as `cvm emulated
//! serve` speaks them on its Unix socket (integers little-endian u32):
//!
//! ```text
//! request:  command | length | payload (≤ 64 bytes)
//! response: status  | length | payload (empty unless status is 0)
//! ```
//!
//! Commands: 5 INFO, 1 SNP_REPORT (REPORT_DATA, 64 bytes), 2 SNP_CERTS, 3 TDX_QUOTE
//! (REPORT_DATA), 6 TDX_COLLATERAL. Statuses: 0 OK, 1 BAD_REQUEST, 2 UNSUPPORTED (the
//! other TEE's command), 3 FAILED, 5 [`status::BUSY`] (the rate limit).
//!
//! # Rules
//!
//! - Offered only by the emulated backends ([`super::TeeBackend::evidence_source`]),
//!   and only when the staged, measured kernel command line carries the word
//!   `cvm.tsm=vsock` ([`requested`], the rule `cvm-agent` applies; an unknown or
//!   disagreeing `cvm.tsm=` word refuses the launch): the service is for a stock Linux
//!   under an emulated TEE, not for guests that attest through the hardware's paths
//!   (the test guest). Otherwise, under `--tee none` and on the hardware backends the
//!   port is refused with RST and never reaches a host Unix socket (`--vsock-uds`), so
//!   no host process can answer there either.
//! - The evidence is signed by the emulated PSP / QE, whose roots a verifier trusts only
//!   when configured with the emulated trust anchor (`--emulated-trust`), and marks
//!   `insecure-emulated`. `cvm-agent` uses this service only when the measured kernel
//!   command line says `cvm.tsm=vsock`, so a policy for real hardware (whose measurement
//!   never includes that command line) cannot be satisfied through it.
//! - Bounded: a request payload over 64 bytes closes the connection after a
//!   BAD_REQUEST; at most [`MAX_REQUESTS_PER_CONNECTION`] requests per connection and
//!   [`MAX_QUEUED`] connections waiting (more are refused with RST); evidence is made at
//!   most [`RATE_BURST`] times in a burst and [`RATE_PER_SEC`] per second after that
//!   (BUSY beyond); a peer that stalls for [`IO_TIMEOUT`] is dropped, and every
//!   connection is closed at the latest [`CONNECTION_DEADLINE`] after the service took
//!   it (one deadline in all, not per read, so dribbling bytes does not help). One thread serves
//!   the connections one at a time, so a guest cannot make the VMM sign in parallel.
//! - Errors fail closed: every refusal is a non-zero status or a closed connection,
//!   never partial evidence.
//!
//! # Threads
//!
//! The vsock event thread answers a guest REQUEST for [`EVIDENCE_PORT`] with one end of
//! a fresh socket pair and hands the other end to the service thread
//! ([`EvidenceService::connect`]); the muxer then copies bytes as for any host socket.
//! The service thread runs under its own seccomp filter
//! ([`crate::seccomp::ThreadKind::Evidence`]).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::emulated::{command, EmulatedTee};
use crate::seccomp::{self, SeccompMode, ThreadKind};

/// The vsock port (on host CID 2) of the evidence service.
pub const EVIDENCE_PORT: u32 = 50001;
/// Largest request payload (REPORT_DATA).
pub const MAX_REQUEST: usize = 64;
/// Requests served on one connection before it is closed.
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 8;
/// Guest connections waiting for the service thread; more are refused.
pub const MAX_QUEUED: usize = 2;
/// Evidence made back to back before the rate applies.
pub const RATE_BURST: u32 = 16;
/// Evidence made per second once the burst is spent.
pub const RATE_PER_SEC: u32 = 4;
/// How long the service waits for a request's bytes or for the guest to take an answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection may hold the service thread in all.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(15);

/// Statuses beyond the protocol's ([`super::emulated::status`]).
pub mod status {
    /// The rate limit: try again later.
    pub const BUSY: u32 = 5;
    /// The payload is over [`super::MAX_REQUEST`] bytes.
    pub const BAD_REQUEST: u32 = super::super::emulated::status::BAD_REQUEST;
}

/// What answers the service's commands: the emulated TEE of this launch.
pub trait EvidenceSource: Send + Sync + std::fmt::Debug {
    /// Executes command `cmd` of the evidence command protocol on `request`; the answer
    /// bytes or a status.
    fn execute(&self, cmd: u32, request: &[u8]) -> Result<Vec<u8>, u32>;
}

impl EvidenceSource for Mutex<EmulatedTee> {
    fn execute(&self, cmd: u32, request: &[u8]) -> Result<Vec<u8>, u32> {
        // The SNP report is always for VMPL 0 (a Linux guest at VMPL 0, as
        // configfs-tsm's default privlevel).
        let mut req = [0u8; super::emulated::REQUEST_LEN];
        req[..request.len().min(MAX_REQUEST)]
            .copy_from_slice(&request[..request.len().min(MAX_REQUEST)]);
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .execute(cmd, &req)
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceServiceError {
    /// The service thread could not be started.
    #[error("cannot start the evidence service thread")]
    Thread(#[source] io::Error),
    /// The staged command line's `cvm.tsm=` word is not one the agent knows.
    #[error(
        "the kernel command line says cvm.tsm={0:?}: only cvm.tsm=vsock selects the evidence \
         service (cvm-agent refuses any other value, and two cvm.tsm= words that disagree)"
    )]
    TsmWord(String),
    /// The staged command line could not be read back from guest memory.
    #[error("cannot read the staged kernel command line")]
    Cmdline(#[source] vm_memory::GuestMemoryError),
}

/// Whether the kernel command line `cmdline` (the staged, measured one) asks for the
/// evidence service: the whole word `cvm.tsm=vsock`, the rule `cvm-agent` applies
/// (`guest_agent::agent::vsock_tsm::selection`). `Ok(false)` without any `cvm.tsm=`
/// word; an error for any other value, a bare `cvm.tsm` / `cvm.tsm=`, or two words that
/// disagree (the agent would refuse to attest with that command line).
pub fn requested(cmdline: &str) -> Result<bool, EvidenceServiceError> {
    let mut vsock = false;
    for word in cmdline.split_ascii_whitespace() {
        if word == "cvm.tsm" {
            return Err(EvidenceServiceError::TsmWord(String::new()));
        }
        match word.strip_prefix("cvm.tsm=") {
            Some("vsock") => vsock = true,
            Some(other) => return Err(EvidenceServiceError::TsmWord(other.to_owned())),
            None => {}
        }
    }
    Ok(vsock)
}

/// The handle the vsock device holds: hands guest connections to the service thread.
#[derive(Debug, Clone)]
pub struct EvidenceService {
    tx: mpsc::SyncSender<UnixStream>,
}

impl EvidenceService {
    /// Starts the service thread over `source`; it ends when every handle is dropped.
    pub fn start(
        source: Arc<dyn EvidenceSource>,
        mode: SeccompMode,
    ) -> Result<Self, EvidenceServiceError> {
        let (tx, rx) = mpsc::sync_channel::<UnixStream>(MAX_QUEUED);
        std::thread::Builder::new()
            .name("evidence".into())
            .spawn(move || match seccomp::install(ThreadKind::Evidence, mode) {
                Ok(()) => serve(rx, source.as_ref()),
                Err(e) => {
                    tracing::error!(error = %e, "evidence thread not confined; not serving")
                }
            })
            .map_err(EvidenceServiceError::Thread)?;
        Ok(Self { tx })
    }

    /// A new connection for a guest: the muxer's end (non-blocking), the other end
    /// queued for the service thread. Refused when [`MAX_QUEUED`] are waiting.
    pub fn connect(&self) -> io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        match self.tx.try_send(theirs) {
            Ok(()) => Ok(ours),
            Err(mpsc::TrySendError::Full(_)) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the evidence service is busy",
            )),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the evidence service has stopped",
            )),
        }
    }
}

/// A token bucket: [`RATE_BURST`] tokens, [`RATE_PER_SEC`] added per second.
#[derive(Debug)]
pub struct RateLimit {
    tokens: f64,
    last: Instant,
    burst: f64,
    per_sec: f64,
}

impl RateLimit {
    /// A full bucket of `burst` tokens refilled at `per_sec`.
    pub fn new(burst: u32, per_sec: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: Instant::now(),
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
        }
    }

    /// Takes a token at `now`; false when none is left.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Serves queued connections one at a time until every sender is gone.
pub fn serve(rx: mpsc::Receiver<UnixStream>, source: &dyn EvidenceSource) {
    serve_for(rx, source, CONNECTION_DEADLINE)
}

/// As [`serve`], each connection closed at the latest `deadline` after it was taken.
pub fn serve_for(rx: mpsc::Receiver<UnixStream>, source: &dyn EvidenceSource, deadline: Duration) {
    let mut rate = RateLimit::new(RATE_BURST, RATE_PER_SEC);
    for s in rx {
        let mut s = Deadline {
            s,
            until: Instant::now() + deadline,
        };
        let served = serve_connection(&mut s, source, &mut rate);
        tracing::info!(
            event = "evidence",
            requests = served.requests,
            refused = served.refused,
            "emulated TEE evidence connection closed (insecure-emulated)"
        );
        let _ = s.s.shutdown(std::net::Shutdown::Both);
    }
}

/// A connection with one deadline in all: before each read or write the socket's
/// timeout is set to the time left (at most [`IO_TIMEOUT`]), so a peer that sends or
/// takes a byte just inside every timeout is still dropped at the deadline.
struct Deadline {
    s: UnixStream,
    until: Instant,
}

impl Deadline {
    /// The timeout for the next I/O call, or TimedOut once the deadline has passed.
    fn left(&self) -> io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection's deadline has passed",
            ));
        }
        Ok(left.min(IO_TIMEOUT))
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = self.left()?;
        self.s.set_read_timeout(Some(t))?;
        self.s.read(buf)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = self.left()?;
        self.s.set_write_timeout(Some(t))?;
        self.s.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.s.flush()
    }
}

/// What one connection did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Requests answered (any status).
    pub requests: u32,
    /// Of those, answered with a non-zero status.
    pub refused: u32,
}

/// Serves the requests of one connection `s` (the testable core of the thread).
pub fn serve_connection<S: Read + Write>(
    s: &mut S,
    source: &dyn EvidenceSource,
    rate: &mut RateLimit,
) -> Served {
    let mut served = Served::default();
    while served.requests < MAX_REQUESTS_PER_CONNECTION {
        let mut head = [0u8; 8];
        if s.read_exact(&mut head).is_err() {
            break;
        }
        let cmd = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        served.requests += 1;
        if len > MAX_REQUEST {
            served.refused += 1;
            // The rest of the stream cannot be framed: answer, then close.
            let _ = answer(s, Err(status::BAD_REQUEST));
            break;
        }
        let mut payload = [0u8; MAX_REQUEST];
        if s.read_exact(&mut payload[..len]).is_err() {
            break;
        }
        let result = match cmd {
            // Evidence costs a signature: rate-limited. INFO and the static answers
            // (certificates, collateral) are cheap.
            command::SNP_REPORT | command::TDX_QUOTE => {
                if len != MAX_REQUEST {
                    Err(status::BAD_REQUEST)
                } else if !rate.take(Instant::now()) {
                    Err(status::BUSY)
                } else {
                    source.execute(cmd, &payload[..len])
                }
            }
            _ => source.execute(cmd, &payload[..len]),
        };
        if result.is_err() {
            served.refused += 1;
        }
        if answer(s, result).is_err() {
            break;
        }
    }
    served
}

fn answer<S: Write>(s: &mut S, result: Result<Vec<u8>, u32>) -> io::Result<()> {
    let (st, body) = match result {
        Ok(b) => (0u32, b),
        Err(st) => (st, Vec::new()),
    };
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&st.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    s.write_all(&out)?;
    s.flush()
}

#[cfg(test)]
mod tests;
