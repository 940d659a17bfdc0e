//! Evidence from `cvm emulated serve` over a Unix socket (`--evidence
//! emulated-unix:PATH`): `cvm-agent` run as a host process against the emulated secure
//! processor. **Insecure-emulated test equipment**: the verifier marks such evidence
//! `insecure-emulated` and accepts it only with the emulated trust anchor configured.
//!
//! The protocol is the emulated TEEs' evidence command protocol (`host_vmm::tee::emulated`)
//! over a socket (all integers
//! little-endian u32):
//!
//! ```text
//! request:  command | length | payload (≤ 64 bytes)
//! response: status  | length | payload (≤ 65 280 bytes; empty unless status is 0)
//! ```
//!
//! Used here: 5 INFO (→ kind 1 SNP / 2 TDX, version 1), 1 SNP_REPORT (REPORT_DATA → the
//! 1184-byte report), 2 SNP_CERTS (→ certificate table), 3 TDX_QUOTE (REPORT_DATA →
//! quote), 6 TDX_COLLATERAL (→ `QuoteCollateralV3` JSON). Statuses: 0 OK, 1 BAD_REQUEST,
//! 2 UNSUPPORTED, 3 FAILED. The service is untrusted input like any TEE driver: lengths
//! are bounded and the verifier judges the evidence.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::evidence::{Evidence, EvidenceError, EvidenceProvider, Tee};

/// Commands of the evidence command protocol (as `host-vmm`'s `tee::emulated::command`).
pub mod command {
    /// SNP ATTESTATION_REPORT for a REPORT_DATA.
    pub const SNP_REPORT: u32 = 1;
    /// SNP extended-report certificate table.
    pub const SNP_CERTS: u32 = 2;
    /// TDX quote v4 for a REPORT_DATA.
    pub const TDX_QUOTE: u32 = 3;
    /// Platform kind and protocol version.
    pub const INFO: u32 = 5;
    /// TDX collateral (`QuoteCollateralV3` JSON).
    pub const TDX_COLLATERAL: u32 = 6;
}

/// INFO kind of an emulated SNP platform.
pub const KIND_SNP: u32 = 1;
/// INFO kind of an emulated TDX platform.
pub const KIND_TDX: u32 = 2;
/// The protocol version this client speaks.
pub const VERSION: u32 = 1;
/// Largest request payload.
pub const MAX_REQUEST: usize = 0x40;
/// Largest response payload accepted.
pub const MAX_RESPONSE: usize = (64 << 10) - 0x100;
const TIMEOUT: Duration = Duration::from_secs(30);

/// A protocol failure.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The socket failed.
    #[error("emulated secure processor socket")]
    Io(#[from] std::io::Error),
    /// The service answered with a non-zero status.
    #[error("emulated secure processor refused command {command}: status {status} ({})", status_name(*.status))]
    Status {
        /// The command.
        command: u32,
        /// The status.
        status: u32,
    },
    /// The answer is malformed.
    #[error("emulated secure processor: {0}")]
    Malformed(&'static str),
}

fn status_name(s: u32) -> &'static str {
    match s {
        1 => "bad request",
        2 => "unsupported by this TEE",
        3 => "failed",
        4 => "bad window",
        _ => "unknown",
    }
}

/// One request/response exchange on `s`.
pub fn call<S: Read + Write>(
    s: &mut S,
    command: u32,
    payload: &[u8],
) -> Result<Vec<u8>, ProtocolError> {
    if payload.len() > MAX_REQUEST {
        return Err(ProtocolError::Malformed("request payload too long"));
    }
    let mut req = Vec::with_capacity(8 + payload.len());
    req.extend_from_slice(&command.to_le_bytes());
    req.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    req.extend_from_slice(payload);
    s.write_all(&req)?;
    s.flush()?;
    let mut head = [0u8; 8];
    s.read_exact(&mut head)?;
    let status = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if len > MAX_RESPONSE {
        return Err(ProtocolError::Malformed("response length over the limit"));
    }
    if status != 0 {
        return Err(ProtocolError::Status { command, status });
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// Parses an INFO answer into the TEE kind.
pub fn parse_info(info: &[u8]) -> Result<Tee, ProtocolError> {
    let word = |i: usize| {
        info.get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(ProtocolError::Malformed("INFO answer shorter than 8 bytes"))
    };
    let (kind, version) = (word(0)?, word(4)?);
    if version != VERSION {
        return Err(ProtocolError::Malformed("unsupported protocol version"));
    }
    match kind {
        KIND_SNP => Ok(Tee::Snp),
        KIND_TDX => Ok(Tee::Tdx),
        _ => Err(ProtocolError::Malformed("unknown platform kind")),
    }
}

/// Evidence from `cvm emulated serve` on a Unix socket.
#[derive(Debug)]
pub struct EmulatedUnixEvidence {
    path: PathBuf,
    tee: Tee,
    tdx_collateral: Option<Vec<u8>>,
}

fn unavailable(e: impl std::fmt::Display) -> EvidenceError {
    EvidenceError::Unavailable(e.to_string())
}

impl EmulatedUnixEvidence {
    /// Connects to `path` and asks INFO for the TEE. `tdx_collateral`, if given, is sent
    /// instead of the service's own collateral.
    pub fn connect(path: &Path, tdx_collateral: Option<Vec<u8>>) -> Result<Self, EvidenceError> {
        let mut s = Self::stream(path)?;
        let tee = call(&mut s, command::INFO, &[])
            .and_then(|i| parse_info(&i))
            .map_err(|e| unavailable(Chain(&e)))?;
        Ok(Self {
            path: path.to_owned(),
            tee,
            tdx_collateral,
        })
    }

    fn stream(path: &Path) -> Result<UnixStream, EvidenceError> {
        let s = UnixStream::connect(path)
            .map_err(|e| unavailable(format!("cannot connect to {}: {e}", path.display())))?;
        s.set_read_timeout(Some(TIMEOUT)).map_err(unavailable)?;
        s.set_write_timeout(Some(TIMEOUT)).map_err(unavailable)?;
        Ok(s)
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Evidence over an established stream (the testable core of
    /// [`EvidenceProvider::evidence`]).
    pub fn evidence_on<S: Read + Write>(
        &self,
        s: &mut S,
        report_data: &[u8; 64],
    ) -> Result<Evidence, EvidenceError> {
        evidence_over(
            s,
            self.tee,
            self.tdx_collateral.as_deref(),
            None,
            report_data,
        )
    }
}

/// Evidence for `report_data` from a service speaking this protocol on `s` (a Unix
/// socket here, the VMM's vsock evidence service in [`super::vsock_tsm`]): SNP report +
/// certificate table, or TDX quote + collateral (`tdx_collateral` if given, else the
/// service's) + `ccel` (the CC event log, if any), in Trustee's shapes.
pub fn evidence_over<S: Read + Write>(
    s: &mut S,
    tee: Tee,
    tdx_collateral: Option<&[u8]>,
    ccel: Option<&[u8]>,
    report_data: &[u8; 64],
) -> Result<Evidence, EvidenceError> {
    let c = |s: &mut S, cmd, p: &[u8]| call(s, cmd, p).map_err(|e| unavailable(Chain(&e)));
    match tee {
        Tee::Snp => {
            let report = c(s, command::SNP_REPORT, report_data)?;
            let certs = c(s, command::SNP_CERTS, &[])?;
            Evidence::snp_trustee(&report, (!certs.is_empty()).then_some(certs.as_slice()))
        }
        Tee::Tdx => {
            let quote = c(s, command::TDX_QUOTE, report_data)?;
            let collateral = match tdx_collateral {
                Some(own) => own.to_vec(),
                None => c(s, command::TDX_COLLATERAL, &[])?,
            };
            Evidence::tdx_trustee(&quote, ccel, Some(&collateral))
        }
    }
}

impl EvidenceProvider for EmulatedUnixEvidence {
    fn tee(&self) -> Tee {
        self.tee
    }

    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let mut s = Self::stream(&self.path)?;
        self.evidence_on(&mut s, report_data)
    }
}

/// An error with its causes on one line.
pub(crate) struct Chain<'a>(pub(crate) &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake service: answers each request with `answer(command, payload)`.
    fn fake(dir: &Path, answer: impl Fn(u32, &[u8]) -> (u32, Vec<u8>) + Send + 'static) -> PathBuf {
        let path = dir.join("sp.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { return };
                loop {
                    let mut h = [0u8; 8];
                    if s.read_exact(&mut h).is_err() {
                        break;
                    }
                    let cmd = u32::from_le_bytes(h[..4].try_into().unwrap());
                    let len = u32::from_le_bytes(h[4..].try_into().unwrap()) as usize;
                    let mut p = vec![0u8; len];
                    s.read_exact(&mut p).unwrap();
                    let (st, body) = answer(cmd, &p);
                    let mut out = st.to_le_bytes().to_vec();
                    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
                    out.extend_from_slice(&body);
                    if s.write_all(&out).is_err() {
                        break;
                    }
                }
            }
        });
        path
    }

    fn info(kind: u32) -> Vec<u8> {
        [kind.to_le_bytes(), VERSION.to_le_bytes()].concat()
    }

    #[test]
    fn snp_evidence_is_the_report_and_the_certificate_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake(dir.path(), |cmd, p| match cmd {
            command::INFO => (0, info(KIND_SNP)),
            command::SNP_REPORT => {
                // The REPORT_DATA comes through unchanged.
                let mut r = vec![0u8; 0x4A0];
                r[0x50..0x90].copy_from_slice(p);
                (0, r)
            }
            command::SNP_CERTS => (0, vec![0xC5; 40]),
            _ => (1, Vec::new()),
        });
        let mut ev = EmulatedUnixEvidence::connect(&path, None).unwrap();
        assert_eq!(ev.tee(), Tee::Snp);
        let e = ev.evidence(&[0xAB; 64]).unwrap();
        assert_eq!(e.tee(), Tee::Snp);
        let v: serde_json::Value = serde_json::from_str(e.json()).unwrap();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let report = b64.decode(v["report"].as_str().unwrap()).unwrap();
        assert_eq!(&report[0x50..0x90], &[0xAB; 64]);
        assert_eq!(
            b64.decode(v["cert_chain"].as_str().unwrap()).unwrap(),
            vec![0xC5; 40]
        );
    }

    #[test]
    fn tdx_evidence_carries_the_services_collateral_or_the_given_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake(dir.path(), |cmd, _| match cmd {
            command::INFO => (0, info(KIND_TDX)),
            command::TDX_QUOTE => (0, vec![4; 600]),
            command::TDX_COLLATERAL => (0, br#"{"from":"service"}"#.to_vec()),
            _ => (2, Vec::new()),
        });
        let mut ev = EmulatedUnixEvidence::connect(&path, None).unwrap();
        assert_eq!(ev.tee(), Tee::Tdx);
        let v: serde_json::Value =
            serde_json::from_str(ev.evidence(&[0; 64]).unwrap().json()).unwrap();
        assert_eq!(v["collateral"]["from"], "service");
        let mut ev =
            EmulatedUnixEvidence::connect(&path, Some(br#"{"from":"file"}"#.to_vec())).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(ev.evidence(&[0; 64]).unwrap().json()).unwrap();
        assert_eq!(v["collateral"]["from"], "file");
    }

    #[test]
    fn refusals_and_malformed_answers_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        // A status is an error naming the command and status.
        let path = fake(dir.path(), |cmd, _| match cmd {
            command::INFO => (0, info(KIND_SNP)),
            _ => (3, Vec::new()),
        });
        let mut ev = EmulatedUnixEvidence::connect(&path, None).unwrap();
        let e = ev.evidence(&[0; 64]).unwrap_err().to_string();
        assert!(e.contains("command 1: status 3 (failed)"), "{e}");

        // INFO: short, wrong version, unknown kind.
        assert!(parse_info(&[1, 0, 0, 0]).is_err());
        assert!(parse_info(&[[1, 0, 0, 0], [2, 0, 0, 0]].concat()).is_err());
        assert!(parse_info(&info(9)).is_err());
        assert_eq!(parse_info(&info(KIND_TDX)).unwrap(), Tee::Tdx);

        // An oversized length is refused before reading the body.
        let mut answer = 0u32.to_le_bytes().to_vec();
        answer.extend_from_slice(&(MAX_RESPONSE as u32 + 1).to_le_bytes());
        let mut s = Duplex(std::io::Cursor::new(answer), Vec::new());
        assert!(matches!(
            call(&mut s, command::INFO, &[]),
            Err(ProtocolError::Malformed(_))
        ));
        // The request was framed as command, length, payload.
        assert_eq!(s.1, [5, 0, 0, 0, 0, 0, 0, 0]);

        // A truncated body is an I/O error.
        let mut answer = [0u32.to_le_bytes(), 10u32.to_le_bytes()].concat();
        answer.extend_from_slice(&[1, 2, 3]);
        let mut s = Duplex(std::io::Cursor::new(answer), Vec::new());
        assert!(matches!(
            call(&mut s, command::SNP_CERTS, &[]),
            Err(ProtocolError::Io(_))
        ));

        // Requests over the request area are refused locally.
        let mut s = Duplex(std::io::Cursor::new(Vec::new()), Vec::new());
        assert!(call(&mut s, command::SNP_REPORT, &[0; 65]).is_err());
        assert!(s.1.is_empty());

        // No service at all.
        assert!(EmulatedUnixEvidence::connect(&dir.path().join("absent"), None).is_err());
    }

    /// Reads from one buffer, writes to another.
    struct Duplex(std::io::Cursor<Vec<u8>>, Vec<u8>);

    impl Read for Duplex {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(b)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.1.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
