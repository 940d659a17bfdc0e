//! `cvm-agent`: attest, receive the disk key, open the LUKS2 root, switch to it.
//!
//! Test mode, as a host process: `--evidence emulated-unix:PATH` (evidence from `cvm
//! emulated serve`, insecure-emulated) and `--test-passphrase` (check the released key
//! with `cryptsetup open --test-passphrase`, no dm-crypt; exit 0 if it opens a keyslot,
//! 1 otherwise).
//!
//! The verifier is pinned (`cvm.verifier_key=` on the kernel command line, or
//! `--verifier-key`; see `guest_agent::pin`): without a pin it refuses to start, and it
//! opens nothing a verifier without that key released.
//!
//! Build a static binary for an initramfs:
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p guest-agent --bin cvm-agent --target x86_64-unknown-linux-gnu`
//! (`--target` keeps crt-static off the proc macros; ~3.9 MB stripped)

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use guest_agent::agent::emulated_unix::EmulatedUnixEvidence;
use guest_agent::agent::vsock_tsm::{self, TsmSelection, VsockTsmEvidence};
use guest_agent::agent::{self, LinuxEvidence};
use guest_agent::evidence::EvidenceProvider;
use guest_agent::jwe::Curve;
use guest_agent::linux::vsock::VsockTransport;
use guest_agent::rng::OsEntropy;
use guest_agent::tcp::TcpTransport;
use guest_agent::tls::TlsTransport;
use guest_agent::{KbsClient, KbsConfig, ResourcePath, Transport, VerifierKey};

/// Attests to the KBS, receives the disk key and boots the encrypted root.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// KBS resource of the disk key (repo/type/tag); default: cvm.kbs_resource= from
    /// /proc/cmdline.
    #[arg(long)]
    resource: Option<String>,
    /// The KBS: `vsock:CID:PORT` (default vsock:2:50000, the VMM relay),
    /// `https://HOST:PORT` (with --kbs-ca) or `http://IP:PORT` (plain HTTP; loopback
    /// tests only).
    #[arg(long, default_value = "vsock:2:50000")]
    kbs: String,
    /// CA certificate(s) (PEM) trusted for an https:// --kbs.
    #[arg(long, value_name = "FILE")]
    kbs_ca: Option<PathBuf>,
    /// `extra-params.workload` for the verifier.
    #[arg(long)]
    workload: Option<String>,
    /// The pinned verifier key (base64url of its 65-byte SEC1 P-256 point, as `cvm-verifier
    /// identity` prints it). `cvm.verifier_key=` on the kernel command line (measured)
    /// takes precedence; both present and different is an error. Required: without a
    /// pin nothing is sent.
    #[arg(long, value_name = "KEY")]
    verifier_key: Option<String>,
    /// TDX collateral (QuoteCollateralV3 JSON) to send with quotes.
    #[arg(long)]
    tdx_collateral: Option<PathBuf>,
    /// Evidence source: `auto` (configfs-tsm, then /dev/sev-guest; the VMM's vsock
    /// evidence service instead when the kernel command line says cvm.tsm=vsock) or
    /// `emulated-unix:PATH` (`cvm emulated serve` on a Unix socket; insecure-emulated test
    /// equipment).
    #[arg(long, default_value = "auto")]
    evidence: String,
    /// Only check that the released key opens a keyslot of --device (`cryptsetup open
    /// --test-passphrase`, key on stdin; no dm-crypt, no mount) and exit 0, or 1.
    #[arg(long, visible_alias = "check-only", conflicts_with = "switch_root")]
    test_passphrase: bool,
    /// The LUKS2 device (or image file, with --test-passphrase).
    #[arg(long)]
    device: PathBuf,
    /// The dm-crypt mapping name.
    #[arg(long, default_value = "cvmroot")]
    name: String,
    /// Where to mount the opened volume.
    #[arg(long, default_value = "/newroot")]
    mount: PathBuf,
    /// After mounting, exec `switch_root MOUNT INIT`.
    #[arg(long, value_name = "INIT")]
    switch_root: Option<String>,
}

fn report(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("cvm-agent: error: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        eprintln!("caused by: {s}");
        src = s.source();
    }
    ExitCode::FAILURE
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn transport(spec: &str, ca: Option<&PathBuf>) -> Result<Box<dyn Transport>, Usage> {
    if let Some(rest) = spec.strip_prefix("https://") {
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse().ok()?)))
            .ok_or_else(|| Usage(format!("bad --kbs {spec}: https://HOST:PORT")))?;
        let ca = ca.ok_or_else(|| Usage("an https:// --kbs needs --kbs-ca FILE".into()))?;
        let pem =
            std::fs::read(ca).map_err(|e| Usage(format!("cannot read {}: {e}", ca.display())))?;
        return TlsTransport::new(host, port, &pem)
            .map(|t| Box::new(t) as Box<dyn Transport>)
            .map_err(|e| Usage(e.to_string()));
    }
    if let Some(rest) = spec.strip_prefix("vsock:") {
        let (cid, port) = rest
            .split_once(':')
            .and_then(|(c, p)| Some((c.parse().ok()?, p.parse().ok()?)))
            .ok_or_else(|| Usage(format!("bad --kbs {spec}: vsock:CID:PORT")))?;
        return Ok(Box::new(VsockTransport::new(cid, port)));
    }
    if let Some(rest) = spec.strip_prefix("http://") {
        let addr = rest
            .trim_end_matches('/')
            .parse()
            .map_err(|_| Usage(format!("bad --kbs {spec}: http://IP:PORT")))?;
        return Ok(Box::new(TcpTransport::new(addr)));
    }
    Err(Usage(format!(
        "bad --kbs {spec}: use vsock:CID:PORT, https://HOST:PORT or http://IP:PORT"
    )))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = agent::cmdline_params(&cmdline);
    // Before anything else: without a trusted verifier nothing is worth attesting to.
    let verifier_key = match VerifierKey::resolve(&cmdline, args.verifier_key.as_deref()) {
        Ok(k) => k,
        Err(e) => return report(&e),
    };
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(resource) = args.resource.clone().or_else(|| param("kbs_resource")) else {
        return report(&Usage(
            "no --resource and no cvm.kbs_resource= on the kernel command line".into(),
        ));
    };
    let path = match ResourcePath::parse(&resource) {
        Ok(p) => p,
        Err(e) => return report(&e),
    };
    let collateral = match &args.tdx_collateral {
        Some(p) => match std::fs::read(p) {
            Ok(c) => Some(c),
            Err(e) => return report(&e),
        },
        None => None,
    };
    let (mut evidence, source): (Box<dyn EvidenceProvider>, String) = match args.evidence.as_str() {
        "auto" => match vsock_tsm::selection(&cmdline) {
            Err(e) => return report(&e),
            // Only the measured command line selects the VMM's evidence service.
            Ok(TsmSelection::Vsock) => match VsockTsmEvidence::connect(collateral) {
                Ok(e) => {
                    eprintln!(
                        "cvm-agent: WARNING: evidence from the VMM's emulated secure processor \
                         (cvm.tsm=vsock): insecure-emulated test equipment"
                    );
                    (Box::new(e), "vsock-tsm".to_owned())
                }
                Err(e) => return report(&e),
            },
            Ok(TsmSelection::Kernel) => match LinuxEvidence::detect(collateral) {
                Ok(e) => {
                    let source = format!("{:?}", e.source());
                    (Box::new(e), source)
                }
                Err(e) => return report(&e),
            },
        },
        spec => match spec.strip_prefix("emulated-unix:") {
            Some(path) if !path.is_empty() => {
                match EmulatedUnixEvidence::connect(path.as_ref(), collateral) {
                    Ok(e) => {
                        eprintln!(
                            "cvm-agent: WARNING: evidence from the emulated secure processor \
                                 at {path}: insecure-emulated test equipment"
                        );
                        (Box::new(e), format!("emulated-unix:{path}"))
                    }
                    Err(e) => return report(&e),
                }
            }
            _ => {
                return report(&Usage(format!(
                    "bad --evidence {spec}: use auto or emulated-unix:PATH"
                )))
            }
        },
    };
    let transport = match transport(&args.kbs, args.kbs_ca.as_ref()) {
        Ok(t) => t,
        Err(e) => return report(&e),
    };
    eprintln!(
        "cvm-agent: attesting ({} via {source}) for {}",
        evidence.tee().as_str(),
        path.as_str()
    );
    let mut client = KbsClient::new(
        transport,
        KbsConfig {
            workload: args.workload.clone().or_else(|| param("kbs_workload")),
            verifier_key: Some(verifier_key),
            ..Default::default()
        },
    );
    let key = match client.fetch(evidence.as_mut(), &mut OsEntropy, Curve::P384, &path) {
        Ok(k) => k,
        Err(e) => return report(&e),
    };
    if args.test_passphrase {
        let checked = agent::cryptsetup_test_passphrase(&args.device, key.expose());
        drop(key);
        return match checked {
            Ok(()) => {
                eprintln!(
                    "cvm-agent: the released key opens a LUKS2 keyslot of {} \
                     (cryptsetup --test-passphrase)",
                    args.device.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => report(&e),
        };
    }
    let mapped = match agent::cryptsetup_open(&args.device, &args.name, key.expose()) {
        Ok(m) => m,
        Err(e) => return report(&e),
    };
    drop(key);
    if let Err(e) = agent::mount(&mapped, &args.mount) {
        return report(&e);
    }
    eprintln!(
        "cvm-agent: {} mounted on {}",
        mapped.display(),
        args.mount.display()
    );
    match &args.switch_root {
        Some(init) => report(&agent::switch_root(&args.mount, init)),
        None => ExitCode::SUCCESS,
    }
}
