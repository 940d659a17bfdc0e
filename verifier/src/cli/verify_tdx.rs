//! `cvm-verifier verify tdx`: verify a TDX DCAP quote with its collateral offline, then
//! evaluate a policy on the claims.
//!
//! Without `--trust-root` the quote must chain to Intel's root CA (pinned by dcap-qvl).
//! `--trust-root FILE` replaces it with an operator-supplied emulated root (for example
//! `DIR/tdx/root_ca.pem` of `cvm emulated init`): results are then marked
//! `insecure-emulated` and emulated evidence is allowed by the policy.
//!
//! A policy that lists an MRTD (`--measurement` or a policy file) must also pin RTMR1
//! and RTMR2 (`--rtmr 1=… --rtmr 2=…`, `tdx.rtmrs` or `tdx.event_log`; values from `cvm
//! measure tdx`): MRTD measures only the firmware, and the policy refuses such a TD
//! with `rtmr-unpinned`.
//!
//! The quote comes from `--quote FILE` or from `--evidence FILE`: a `primary_evidence`
//! JSON object in Trustee's `TdxEvidence` format or the cvm format
//! ([`crate::evidence_formats`]). Collateral comes from `--collateral FILE`, else from
//! the evidence (cvm format); without either the quote is refused as
//! `collateral-unavailable`. A `cc_eventlog` in the evidence is replayed against the
//! verified quote's RTMR0..3 (refused with check `cc-eventlog` unless it replays), and
//! its kernel/initrd/command-line digests become `claims.detail.boot_events` for the
//! policy's `tdx.boot_digests`.
//!
//! Exit codes: 0 accepted; 1 refused (verification or policy, reason on stderr and in
//! the JSON); 2 usage or I/O error.

use std::path::PathBuf;
use std::process::ExitCode;

use attestation::claims::Claims;
use attestation::policy::tdx::ExpectedRtmr;
use attestation::policy::{Policy, PolicyViolation};
use attestation::tdx::collateral::Collateral;
use attestation::tdx::{TcbStatus, TdxVerifier, TrustRoot};
use attestation::ErrorKind;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Human-readable lines.
    Text,
    /// One JSON object on stdout.
    Json,
}

/// Arguments of `cvm-verifier verify tdx`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The quote (binary, as produced by the quoting enclave).
    #[arg(
        long,
        required_unless_present = "evidence",
        conflicts_with = "evidence"
    )]
    pub quote: Option<PathBuf>,
    /// A `primary_evidence` JSON file (Trustee's TdxEvidence or the cvm format) instead
    /// of --quote; its cc_eventlog is replayed against the quote's RTMRs.
    #[arg(long)]
    pub evidence: Option<PathBuf>,
    /// The collateral (QuoteCollateralV3 JSON); needed unless the evidence carries it.
    #[arg(long)]
    pub collateral: Option<PathBuf>,
    /// An emulated root CA (PEM or DER) to trust instead of Intel's; marks results insecure.
    #[arg(long)]
    pub trust_root: Option<PathBuf>,
    /// Verification time (RFC 3339). Default: now.
    #[arg(long)]
    pub at: Option<String>,
    /// A policy file (TOML if it ends in .toml, JSON otherwise); flags add to it.
    #[arg(long)]
    pub policy_file: Option<PathBuf>,
    /// Accept a TD launched with debugging enabled.
    #[arg(long)]
    pub allow_debug: bool,
    /// An allowed MRTD (hex, 48 bytes); repeatable. Needs `--rtmr 1=…` and `--rtmr 2=…`.
    #[arg(long = "measurement", value_name = "HEX")]
    pub measurements: Vec<String>,
    /// Minimum TEE_TCB_SVN, component-wise (hex, 16 bytes).
    #[arg(long, value_name = "HEX")]
    pub min_tcb: Option<String>,
    /// Expected MRCONFIGID (hex, 48 bytes).
    #[arg(long, value_name = "HEX")]
    pub host_data: Option<String>,
    /// Expected REPORTDATA (hex, 64 bytes).
    #[arg(long, value_name = "HEX")]
    pub report_data: Option<String>,
    /// Expected RTMR value as INDEX=HEX; repeatable.
    #[arg(long = "rtmr", value_name = "I=HEX")]
    pub rtmrs: Vec<String>,
    /// Also accept this TCB status (UpToDate is always accepted); repeatable.
    #[arg(long = "allow-tcb-status", value_name = "NAME")]
    pub allow_tcb_statuses: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// A usage or I/O problem (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A file could not be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A hex option does not decode to the right length.
    #[error("--{what} must be {len} bytes of hex")]
    Hex {
        /// The option.
        what: &'static str,
        /// The required length.
        len: usize,
    },
    /// Neither --quote nor --evidence.
    #[error("give --quote or --evidence")]
    NoQuote,
    /// No collateral in the evidence and no --collateral.
    #[error("the evidence carries no collateral: give --collateral FILE (QuoteCollateralV3 JSON)")]
    NoCollateral,
    /// A bad --rtmr.
    #[error("--rtmr `{0}` is not INDEX=HEX with INDEX 0 to 3 and 48 bytes of hex")]
    Rtmr(String),
    /// A bad --allow-tcb-status.
    #[error("--allow-tcb-status is invalid")]
    TcbStatus(#[source] attestation::tdx::UnknownTcbStatus),
    /// A bad --at.
    #[error("--at `{0}` is not an RFC 3339 time")]
    Time(String),
    /// The trust root does not load.
    #[error("the trust root is unusable")]
    TrustRoot(#[source] attestation::tdx::verify::TrustRootError),
    /// The policy file does not parse.
    #[error("the policy file {} is invalid: {message}", .path.display())]
    Policy {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

fn read(path: &PathBuf) -> Result<Vec<u8>, UsageError> {
    std::fs::read(path).map_err(|source| UsageError::Read {
        path: path.clone(),
        source,
    })
}

fn hex_len(what: &'static str, s: &str, len: usize) -> Result<Vec<u8>, UsageError> {
    match hex::decode(s.trim().trim_start_matches("0x")) {
        Ok(v) if v.len() == len => Ok(v),
        _ => Err(UsageError::Hex { what, len }),
    }
}

fn policy(a: &Args) -> Result<Policy, UsageError> {
    let mut p = match &a.policy_file {
        Some(path) => {
            let text = String::from_utf8_lossy(&read(path)?).into_owned();
            let parsed = if path.extension().is_some_and(|e| e == "toml") {
                toml::from_str::<Policy>(&text).map_err(|e| e.to_string())
            } else {
                serde_json::from_str::<Policy>(&text).map_err(|e| e.to_string())
            };
            parsed.map_err(|message| UsageError::Policy {
                path: path.clone(),
                message,
            })?
        }
        None => Policy::default(),
    };
    p.allow_debug |= a.allow_debug;
    for m in &a.measurements {
        p.measurements.push(hex_len("measurement", m, 48)?);
    }
    if let Some(h) = &a.host_data {
        p.host_data = Some(hex_len("host-data", h, 48)?);
    }
    if let Some(r) = &a.report_data {
        p.report_data = Some(hex_len("report-data", r, 64)?);
    }
    if let Some(m) = &a.min_tcb {
        let v = hex_len("min-tcb", m, 16)?;
        let mut min = [0u8; 16];
        min.copy_from_slice(&v);
        p.tdx.min_tee_tcb_svn = Some(min);
    }
    for r in &a.rtmrs {
        let (i, v) = r
            .split_once('=')
            .ok_or_else(|| UsageError::Rtmr(r.clone()))?;
        let index: u8 = i
            .trim()
            .parse()
            .ok()
            .filter(|i| *i < 4)
            .ok_or_else(|| UsageError::Rtmr(r.clone()))?;
        let value: [u8; 48] = hex::decode(v.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| UsageError::Rtmr(r.clone()))?;
        p.tdx.rtmrs.push(ExpectedRtmr { index, value });
    }
    // An offline check without a policy file or --measurement checks everything but the
    // measurement; a policy file must list measurements or say allow_any_measurement.
    if a.policy_file.is_none() && p.measurements.is_empty() {
        p.allow_any_measurement = true;
    }
    for s in &a.allow_tcb_statuses {
        let status: TcbStatus = s.parse().map_err(UsageError::TcbStatus)?;
        if !p.tdx.allowed_tcb_statuses.contains(&status) {
            p.tdx.allowed_tcb_statuses.push(status);
        }
    }
    if a.trust_root.is_some() {
        // The operator configured an emulated trust anchor explicitly.
        p.allow_emulated = true;
    }
    Ok(p)
}

/// A refusal: verification or policy.
enum Refusal {
    Verify(Box<dyn std::error::Error>, ErrorKind),
    Policy(PolicyViolation),
}

fn print_error(err: &dyn std::error::Error) {
    eprintln!("error: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        eprintln!("caused by: {s}");
        source = s.source();
    }
}

fn emit(a: &Args, trust: &str, claims: Option<&Claims>, refusal: Option<&Refusal>) -> ExitCode {
    if let Some(r) = refusal {
        match r {
            Refusal::Verify(e, _) => print_error(e.as_ref()),
            Refusal::Policy(v) => print_error(v),
        }
    }
    match a.output {
        Output::Json => {
            let error = refusal.map(|r| match r {
                Refusal::Verify(e, kind) => {
                    let mut message = e.to_string();
                    let mut s = e.source();
                    while let Some(inner) = s {
                        message.push_str(": ");
                        message.push_str(&inner.to_string());
                        s = inner.source();
                    }
                    serde_json::json!({ "kind": kind.as_str(), "message": message })
                }
                Refusal::Policy(v) => {
                    serde_json::json!({ "kind": ErrorKind::PolicyNotMet.as_str(), "check": v.check, "message": v.to_string() })
                }
            });
            let mut out =
                serde_json::json!({ "verified": refusal.is_none(), "tee": "tdx", "trust": trust });
            if let Some(c) = claims {
                out["claims"] = serde_json::to_value(c).unwrap_or(serde_json::Value::Null);
            }
            if let Some(e) = error {
                out["error"] = e;
            }
            println!("{out}");
        }
        Output::Text => {
            if let (Some(c), None) = (claims, refusal) {
                if let attestation::claims::TeeClaims::Tdx(t) = &c.detail {
                    println!(
                        "verified: TDX quote v{} ({trust}), TCB status {}",
                        t.quote_version, t.tcb_status
                    );
                    println!("MRTD        {}", hex::encode(&c.measurement));
                    println!("MRCONFIGID  {}", hex::encode(&c.host_data));
                    for (i, r) in t.rtmrs.iter().enumerate() {
                        println!("RTMR{i}       {}", hex::encode(r));
                    }
                    println!("REPORTDATA  {}", hex::encode(&c.report_data));
                    if let Some(b) = &t.boot_events {
                        println!("event log   {} events, replayed", b.events.len());
                        for (what, d) in [
                            ("kernel", b.kernel),
                            ("initrd", b.initrd),
                            ("cmdline", b.cmdline),
                        ] {
                            if let Some(d) = d {
                                println!("{what:<11} {}", hex::encode(d));
                            }
                        }
                    }
                }
            }
        }
    }
    if refusal.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs `cvm-verifier verify tdx`.
pub fn run(a: Args) -> ExitCode {
    let usage = |e: &dyn std::error::Error| {
        print_error(e);
        ExitCode::from(2)
    };
    let policy = match policy(&a) {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    let root = match &a.trust_root {
        Some(path) => match read(path)
            .and_then(|b| TrustRoot::emulated_from_bytes(&b).map_err(UsageError::TrustRoot))
        {
            Ok(r) => r,
            Err(e) => return usage(&e),
        },
        None => TrustRoot::Intel,
    };
    let at = match &a.at {
        Some(s) => {
            match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
                Ok(t) => t,
                Err(_) => return usage(&UsageError::Time(s.clone())),
            }
        }
        None => time::OffsetDateTime::now_utc(),
    };
    let trust = match root.trust_level() {
        attestation::claims::TrustLevel::Hardware => "hardware",
        attestation::claims::TrustLevel::InsecureEmulated => "insecure-emulated",
    };
    let refuse = |e: Box<dyn std::error::Error>, kind: ErrorKind| {
        emit(&a, trust, None, Some(&Refusal::Verify(e, kind)))
    };
    let (quote, evidence_collateral, cc_eventlog) = match (&a.quote, &a.evidence) {
        (Some(q), _) => match read(q) {
            Ok(q) => (q, None, None),
            Err(e) => return usage(&e),
        },
        (None, Some(path)) => {
            let bytes = match read(path) {
                Ok(b) => b,
                Err(e) => return usage(&e),
            };
            match crate::evidence_formats::parse_tdx(&bytes) {
                Ok(ev) => (ev.quote, ev.collateral, ev.cc_eventlog),
                Err(e) => {
                    let kind = e.kind();
                    return refuse(Box::new(e), kind);
                }
            }
        }
        (None, None) => return usage(&UsageError::NoQuote),
    };
    let collateral = match &a.collateral {
        Some(path) => match read(path) {
            Ok(c) => c,
            Err(e) => return usage(&e),
        },
        None => match evidence_collateral {
            Some(c) => c,
            None => {
                return refuse(
                    Box::new(UsageError::NoCollateral),
                    ErrorKind::CollateralUnavailable,
                )
            }
        },
    };
    let collateral = match Collateral::from_json(&collateral) {
        Ok(c) => c,
        Err(e) => {
            let kind = e.kind();
            return refuse(Box::new(e), kind);
        }
    };
    let mut verified = match TdxVerifier::new(root).verify(&quote, &collateral, at) {
        Ok(v) => v,
        Err(e) => {
            let kind = e.kind();
            return refuse(Box::new(e), kind);
        }
    };
    if let (Some(log), attestation::claims::TeeClaims::Tdx(t)) =
        (&cc_eventlog, &mut verified.claims.detail)
    {
        match attestation::tdx::eventlog::replay(log, &t.rtmrs) {
            Ok(events) => t.boot_events = Some(Box::new(events)),
            Err(e) => {
                let kind = e.kind();
                return refuse(Box::new(e), kind);
            }
        }
    }
    let refusal = policy.evaluate(&verified.claims).err().map(Refusal::Policy);
    emit(&a, trust, Some(&verified.claims), refusal.as_ref())
}
