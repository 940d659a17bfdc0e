//! `cvm emulated serve`: the emulated secure processor on a Unix socket, for a guest
//! agent running as an ordinary host process (`cvm-agent --evidence
//! emulated-unix:PATH`).
//!
//! **Insecure-emulated test equipment.** There is no VM and no memory encryption: the
//! evidence says what this process was told to say (`--measurement`, `--mrtd`, …). A
//! verifier accepts it only with the emulated trust anchor configured, and marks it
//! `insecure-emulated`.
//!
//! The service answers with [`EmulatedTee::execute`], the evidence command protocol of
//! [`host_vmm::tee::emulated`] that the vsock evidence service for stock Linux guests
//! also speaks, so the commands, status codes and evidence are the same there and here.
//!
//! # Protocol
//!
//! A stream of requests on one connection, each answered in order; all integers are
//! little-endian u32:
//!
//! ```text
//! request:  command | length | payload (≤ 0x44 bytes: the request area, zero-padded)
//! response: status  | length | payload (length ≤ 65 280 bytes)
//! ```
//!
//! Commands and statuses are the protocol's: 1 SNP_REPORT (payload: REPORT_DATA, 64
//! bytes, then VMPL as u32 at 0x40), 2 SNP_CERTS, 3 TDX_QUOTE (REPORT_DATA), 4 retired
//! (UNSUPPORTED), 5 INFO (→ kind 1 SNP / 2 TDX, version 1), 6 TDX_COLLATERAL; status 0 OK,
//! 1 BAD_REQUEST, 2 UNSUPPORTED, 3 FAILED. A non-OK status has an empty payload. A
//! request longer than 0x44 bytes is answered BAD_REQUEST and the connection closed.
//! Connections are served one at a time, each with a 10 s idle timeout.
//!
//! The socket is created mode 0600 (owner only); an existing socket at the path is
//! replaced, any other file is refused.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use attestation::snp::emulated::{EmulatedSnpPlatform, FinishParams};
use attestation::tdx::emulated::{CollateralOptions, EmulatedTd, EmulatedTdxPlatform, TdConfig};

use cli_support::fail;
use host_vmm::tee::emulated::{status, EmulatedTee, COLLATERAL_DAYS};

/// Largest request payload: the protocol's request area (REPORT_DATA and VMPL).
pub const MAX_REQUEST: usize = host_vmm::tee::emulated::REQUEST_LEN;
/// Largest response payload.
pub const MAX_RESPONSE: usize = host_vmm::tee::emulated::MAX_RESPONSE;
const IDLE: Duration = Duration::from_secs(10);

/// Which emulated TEE to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TeeKind {
    /// Emulated AMD SEV-SNP.
    Snp,
    /// Emulated Intel TDX.
    Tdx,
}

/// Arguments of `cvm emulated serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Platform directory (created by `cvm emulated init`).
    #[arg(long)]
    pub dir: PathBuf,
    /// The Unix socket to listen on (created 0600).
    #[arg(long)]
    pub socket: PathBuf,
    /// The TEE to emulate.
    #[arg(long, value_enum)]
    pub tee: TeeKind,
    /// SNP: the MEASUREMENT (launch digest) to report, hex (48 bytes), e.g. from `cvm
    /// measure snp`. Default: 48 zero bytes.
    #[arg(long)]
    pub measurement: Option<String>,
    /// SNP: HOST_DATA, hex, up to 32 bytes (zero-padded). Default: zero.
    #[arg(long)]
    pub host_data: Option<String>,
    /// SNP: guest policy, hex (bit 17 must be set; bit 19 is DEBUG).
    #[arg(long, default_value = "0x30000")]
    pub policy: String,
    /// TDX: MRTD, hex (48 bytes), e.g. from `cvm measure tdx`. Default: the MRTD of a TD
    /// with no pages.
    #[arg(long)]
    pub mrtd: Option<String>,
    /// TDX: initial RTMR value as INDEX=HEX (48 bytes), INDEX 0..3; repeatable.
    #[arg(long = "rtmr", value_name = "I=HEX")]
    pub rtmrs: Vec<String>,
    /// TDX: MRCONFIGID, hex (48 bytes). Default: zero.
    #[arg(long)]
    pub mrconfigid: Option<String>,
    /// TDX: TD_ATTRIBUTES, hex (bit 0 DEBUG, bit 28 SEPT_VE_DISABLE).
    #[arg(long, default_value = "0x10000000")]
    pub td_attributes: String,
}

/// Why `cvm emulated serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A bad option value.
    #[error("--{0}: {1}")]
    Arg(&'static str, String),
    /// An option of the other TEE.
    #[error("--{0} applies only to --tee {1}")]
    WrongTee(&'static str, &'static str),
    /// The platform could not be opened or refused the launch.
    #[error("cannot use the emulated platform in {} (create it with `cvm emulated init`)", .0.display())]
    Platform(PathBuf, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// The socket path holds something other than a socket.
    #[error("{} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// Socket or window setup failed.
    #[error("cannot {0}")]
    Io(&'static str, #[source] std::io::Error),
}

fn hex_arg<const N: usize>(what: &'static str, s: &str, pad: bool) -> Result<[u8; N], ServeError> {
    let b = hex::decode(s.trim().trim_start_matches("0x"))
        .map_err(|e| ServeError::Arg(what, e.to_string()))?;
    if b.len() > N || (!pad && b.len() != N) {
        return Err(ServeError::Arg(
            what,
            format!(
                "expected {}{N} bytes, found {}",
                if pad { "at most " } else { "" },
                b.len()
            ),
        ));
    }
    let mut out = [0u8; N];
    out[..b.len()].copy_from_slice(&b);
    Ok(out)
}

fn hex_u64(what: &'static str, s: &str) -> Result<u64, ServeError> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16)
        .map_err(|e| ServeError::Arg(what, e.to_string()))
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// Launches the emulated guest context `a` describes; returns it and a description of
/// what it reports.
fn launch(a: &ServeArgs) -> Result<(EmulatedTee, String), ServeError> {
    let platform_err = |e| ServeError::Platform(a.dir.clone(), e);
    match a.tee {
        TeeKind::Snp => {
            for (set, what) in [
                (a.mrtd.is_some(), "mrtd"),
                (!a.rtmrs.is_empty(), "rtmr"),
                (a.mrconfigid.is_some(), "mrconfigid"),
            ] {
                if set {
                    return Err(ServeError::WrongTee(what, "tdx"));
                }
            }
            let measurement = match &a.measurement {
                Some(m) => hex_arg::<48>("measurement", m, false)?,
                None => [0; 48],
            };
            let host_data = match &a.host_data {
                Some(h) => hex_arg::<32>("host-data", h, true)?,
                None => [0; 32],
            };
            let policy = hex_u64("policy", &a.policy)?;
            let platform = std::sync::Arc::new(
                EmulatedSnpPlatform::open(&a.dir).map_err(|e| platform_err(boxed(e)))?,
            );
            let guest = platform
                .launch_start_from(policy, measurement)
                .and_then(|l| {
                    l.finish(FinishParams {
                        host_data,
                        ..FinishParams::default()
                    })
                })
                .map_err(|e| platform_err(boxed(e)))?;
            let guest = EmulatedTee::share(guest, &platform).map_err(|e| platform_err(boxed(e)))?;
            let what = format!(
                "SEV-SNP MEASUREMENT {} policy {policy:#x}",
                hex::encode(guest.measurement())
            );
            Ok((EmulatedTee::Snp { platform, guest }, what))
        }
        TeeKind::Tdx => {
            for (set, what) in [
                (a.measurement.is_some(), "measurement"),
                (a.host_data.is_some(), "host-data"),
            ] {
                if set {
                    return Err(ServeError::WrongTee(what, "snp"));
                }
            }
            let config = TdConfig {
                attributes: hex_u64("td-attributes", &a.td_attributes)?,
                mr_config_id: match &a.mrconfigid {
                    Some(s) => hex_arg::<48>("mrconfigid", s, false)?,
                    None => [0; 48],
                },
                ..TdConfig::default()
            };
            let mut td = match &a.mrtd {
                Some(s) => EmulatedTd::with_mrtd(config, hex_arg::<48>("mrtd", s, false)?),
                None => EmulatedTd::launch(config, []),
            };
            for r in &a.rtmrs {
                let bad = || ServeError::Arg("rtmr", format!("`{r}` is not INDEX=HEX, INDEX 0..3"));
                let (i, v) = r.split_once('=').ok_or_else(bad)?;
                let index: usize = i.trim().parse().map_err(|_| bad())?;
                td.set_rtmr(index, hex_arg::<48>("rtmr", v, false)?)
                    .map_err(|_| bad())?;
            }
            let platform = EmulatedTdxPlatform::open(&a.dir).map_err(|e| platform_err(boxed(e)))?;
            let collateral = platform
                .collateral(&CollateralOptions::from_now(COLLATERAL_DAYS))
                .and_then(|c| Ok(c.to_json()?))
                .map_err(|e| platform_err(boxed(e)))?
                .into_bytes();
            let what = format!("TDX MRTD {}", hex::encode(td.mrtd()));
            Ok((
                EmulatedTee::Tdx {
                    platform: Box::new(platform),
                    td,
                    collateral,
                },
                what,
            ))
        }
    }
}

/// The emulated guest context answering the protocol.
struct Service {
    tee: EmulatedTee,
}

impl Service {
    fn new(tee: EmulatedTee) -> Result<Self, ServeError> {
        Ok(Self { tee })
    }

    /// One command: `Ok(response)` or `Err(status)`.
    fn call(&mut self, command: u32, request: &[u8]) -> Result<Vec<u8>, u32> {
        if request.len() > MAX_REQUEST {
            return Err(status::BAD_REQUEST);
        }
        // The whole request area, VMPL (0x40..0x44) included, zero-padded.
        let mut area = [0u8; MAX_REQUEST];
        area[..request.len()].copy_from_slice(request);
        let out = self.tee.execute(command, &area)?;
        if out.len() > MAX_RESPONSE {
            return Err(status::FAILED);
        }
        tracing::info!(
            event = "evidence",
            command,
            bytes = out.len(),
            "emulated TEE request served (insecure-emulated)"
        );
        Ok(out)
    }

    /// Serves one connection until EOF, a framing error or the idle timeout.
    fn connection(&mut self, s: &mut UnixStream) -> std::io::Result<()> {
        s.set_read_timeout(Some(IDLE))?;
        s.set_write_timeout(Some(IDLE))?;
        loop {
            let mut head = [0u8; 8];
            match s.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let command = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
            if len > MAX_REQUEST {
                // Do not read (or trust) the rest: answer and close.
                s.write_all(&frame(status::BAD_REQUEST, &[]))?;
                return Ok(());
            }
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload)?;
            let answer = match self.call(command, &payload) {
                Ok(resp) => frame(status::OK, &resp),
                Err(st) => frame(st, &[]),
            };
            s.write_all(&answer)?;
        }
    }
}

fn frame(st: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&st.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Binds `path` mode 0600, replacing a stale socket.
fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| ServeError::Io("remove the stale socket", e))?
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServeError::Io("inspect the socket path", e)),
    }
    // SAFETY: umask only changes this process's file-creation mask; it cannot fail and
    // touches no memory. The previous mask is restored right after bind.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| ServeError::Io("bind the socket", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServeError::Io("restrict the socket to its owner", e))?;
    Ok(listener)
}

/// Runs `cvm emulated serve` (until killed).
pub fn run(a: ServeArgs) -> ExitCode {
    let (tee, what) = match launch(&a) {
        Ok(v) => v,
        Err(e @ (ServeError::Arg(..) | ServeError::WrongTee(..))) => {
            return fail(&e, cli_support::EXIT_USAGE)
        }
        Err(e) => return fail(&e, cli_support::EXIT_FAILURE),
    };
    let mut service = match Service::new(tee) {
        Ok(s) => s,
        Err(e) => return fail(&e, cli_support::EXIT_FAILURE),
    };
    let listener = match bind(&a.socket) {
        Ok(l) => l,
        Err(e) => return fail(&e, cli_support::EXIT_FAILURE),
    };
    eprintln!(
        "WARNING: insecure-emulated secure processor: no VM, no memory encryption; the \
         evidence proves only what this host chose to say (test equipment)"
    );
    println!(
        "cvm emulated serve: {what} (insecure-emulated, evidence command protocol) listening on {}",
        a.socket.display()
    );
    let _ = std::io::stdout().flush();
    for conn in listener.incoming() {
        match conn {
            Ok(mut s) => {
                if let Err(e) = service.connection(&mut s) {
                    eprintln!("cvm emulated serve: connection closed: {e}");
                }
            }
            Err(e) => eprintln!("cvm emulated serve: accept failed: {e}"),
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snp_service(dir: &Path, measurement: [u8; 48]) -> Service {
        let platform = std::sync::Arc::new(EmulatedSnpPlatform::create(dir).unwrap());
        let guest = platform
            .launch_start_from(0x30000, measurement)
            .and_then(|l| l.finish(FinishParams::default()))
            .unwrap();
        let guest = EmulatedTee::share(guest, &platform).unwrap();
        Service::new(EmulatedTee::Snp { platform, guest }).unwrap()
    }

    #[test]
    fn serves_the_evidence_commands_over_the_socket_framing() {
        let dir = tempfile::tempdir().unwrap();
        let mut svc = snp_service(dir.path(), [7; 48]);
        let (mut client, mut server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || svc.connection(&mut server).unwrap());
        let call = |c: &mut UnixStream, cmd: u32, p: &[u8]| {
            c.write_all(&frame(cmd, p)).unwrap();
            let mut h = [0u8; 8];
            c.read_exact(&mut h).unwrap();
            let mut b = vec![0u8; u32::from_le_bytes(h[4..].try_into().unwrap()) as usize];
            c.read_exact(&mut b).unwrap();
            (u32::from_le_bytes(h[..4].try_into().unwrap()), b)
        };
        let (st, info) = call(&mut client, 5, &[]);
        assert_eq!(
            (st, info),
            (0, [1u32.to_le_bytes(), 1u32.to_le_bytes()].concat())
        );
        let (st, report) = call(&mut client, 1, &[9; 64]);
        assert_eq!(st, 0);
        assert_eq!(report.len(), 0x4A0);
        assert_eq!(&report[0x50..0x90], &[9u8; 64]); // REPORT_DATA
        assert_eq!(&report[0x90..0xC0], &[7u8; 48]); // MEASUREMENT
        let (st, certs) = call(&mut client, 2, &[]);
        assert_eq!(st, 0);
        assert!(!certs.is_empty());
        assert_eq!(call(&mut client, 3, &[0; 64]).0, status::UNSUPPORTED);
        // A short payload is zero-padded.
        assert_eq!(call(&mut client, 1, &[0; 10]).0, status::OK);
        assert_eq!(call(&mut client, 99, &[]).0, status::BAD_REQUEST);
        // VMPL (u32 at 0x40) reaches the report.
        let mut req = vec![9u8; 64];
        req.extend_from_slice(&2u32.to_le_bytes());
        let (st, report) = call(&mut client, 1, &req);
        assert_eq!(st, 0);
        assert_eq!(&report[0x30..0x34], &2u32.to_le_bytes()); // VMPL
                                                              // An oversized request is refused and the connection closed.
        assert_eq!(
            call(&mut client, 1, &[0; MAX_REQUEST + 1]).0,
            status::BAD_REQUEST
        );
        t.join().unwrap();
    }

    #[test]
    fn the_socket_is_private_and_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        drop(bind(&p).unwrap());
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(bind(&p).unwrap()); // a stale socket is replaced
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(bind(&f), Err(ServeError::NotASocket(_))));
    }
}
