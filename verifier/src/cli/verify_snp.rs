//! `cvm-verifier verify snp`: offline verification of an SEV-SNP attestation report.
//!
//! The report comes from `--report FILE` (raw 1184 bytes) or from `--evidence FILE`: a
//! `primary_evidence` JSON object in the cvm format or Trustee's `SnpEvidence`
//! ([`crate::evidence_formats`]), whose certificate table is used like `--cert-table`.
//!
//! The report is verified against AMD's pinned roots (plus an operator root file with
//! `--trust-root`, which also allows the resulting insecure-emulated claims), the
//! certificates supplied (`--vcek`, `--chain`, `--certs-dir`, `--cert-table`) and CRLs
//! (`--crl`), at `--at` (default: now). The claims are then checked against the policy:
//! `--policy-file` (JSON of `attestation::policy::Policy`) with the flags on top.
//!
//! Exit status: 0 accepted, 1 refused (reason on stderr, and in the JSON with
//! `--output json`), 2 usage or I/O error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use attestation::claims::Claims;
use attestation::policy::snp::MinTcb;
use attestation::policy::{Policy, PolicyViolation};
use attestation::snp::{
    AmdCertificate, AttestationReport, CertTable, SnpCollateral, SnpVerifier, TcbLayout, TrustRoots,
};
use attestation::ErrorKind;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Human-readable lines.
    Text,
    /// One JSON object on stdout.
    Json,
}

/// Arguments of `cvm-verifier verify snp`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ATTESTATION_REPORT (0x4A0 bytes, binary).
    #[arg(
        long,
        required_unless_present = "evidence",
        conflicts_with = "evidence"
    )]
    pub report: Option<PathBuf>,
    /// A `primary_evidence` JSON file (cvm format or Trustee's SnpEvidence) instead of
    /// --report; its certificates are used as with --cert-table.
    #[arg(long)]
    pub evidence: Option<PathBuf>,
    /// The VCEK or VLEK certificate (DER or PEM).
    #[arg(long)]
    pub vcek: Option<PathBuf>,
    /// Intermediate and root certificates (PEM bundle or DER: ASK, ASVK, ARK).
    #[arg(long)]
    pub chain: Option<PathBuf>,
    /// A directory in snpguest's layout (ark/ask/asvk/vcek/vlek/crl .pem or .der).
    #[arg(long)]
    pub certs_dir: Option<PathBuf>,
    /// An extended-report certificate table (binary).
    #[arg(long)]
    pub cert_table: Option<PathBuf>,
    /// An operator root file (e.g. an emulated platform's trust-anchor.pem). Evidence
    /// chaining to it is marked insecure-emulated, and is accepted.
    #[arg(long)]
    pub trust_root: Option<PathBuf>,
    /// Verification time, RFC 3339 (default: now).
    #[arg(long)]
    pub at: Option<String>,
    /// A CRL (DER or PEM) issued by the ARK; repeatable.
    #[arg(long)]
    pub crl: Vec<PathBuf>,
    /// Policy file: JSON of attestation::policy::Policy. Flags below apply on top.
    #[arg(long)]
    pub policy_file: Option<PathBuf>,
    /// Accept a guest launched with debugging allowed.
    #[arg(long)]
    pub allow_debug: bool,
    /// Allowed MEASUREMENT (hex, 48 bytes); repeatable.
    #[arg(long)]
    pub measurement: Vec<String>,
    /// Minimum TCB: `bl=3,tee=0,snp=8,ucode=115[,fmc=N]` or a raw TCB_VERSION as hex.
    #[arg(long)]
    pub min_tcb: Option<String>,
    /// Required HOST_DATA (hex, 32 bytes).
    #[arg(long)]
    pub host_data: Option<String>,
    /// Required REPORT_DATA (hex, 64 bytes).
    #[arg(long)]
    pub report_data: Option<String>,
    /// Required VMPL.
    #[arg(long)]
    pub vmpl: Option<u32>,
    /// Accept a guest whose policy allows a migration agent.
    #[arg(long)]
    pub allow_migration_agent: bool,
    /// Minimum GUEST_SVN.
    #[arg(long)]
    pub min_guest_svn: Option<u32>,
    /// Allowed CHIP_ID (hex, 64 bytes); repeatable.
    #[arg(long)]
    pub chip_id: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// A usage or I/O problem (exit 2).
#[derive(Debug, thiserror::Error)]
enum UsageError {
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("--{flag} is not valid hex of {len} bytes")]
    Hex { flag: &'static str, len: usize },
    #[error("--at is not an RFC 3339 time")]
    Time(#[source] time::error::Parse),
    #[error("--min-tcb is invalid")]
    MinTcb(#[source] attestation::policy::snp::MinTcbError),
    #[error("the policy file is invalid")]
    PolicyFile(#[source] serde_json::Error),
    #[error("the trust root file is invalid")]
    TrustRoot(#[source] attestation::snp::roots::RootError),
    #[error("AMD's pinned roots failed to load")]
    Roots(#[source] attestation::snp::SnpVerifyError),
}

/// A refusal (exit 1).
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the SNP report was refused")]
    Verify(#[source] attestation::snp::SnpVerifyError),
    #[error("the SNP report was refused by the policy")]
    Policy(#[source] PolicyViolation),
    #[error("the SNP evidence was refused")]
    Evidence(#[source] crate::evidence_formats::FormatError),
}

impl Refusal {
    fn kind(&self) -> ErrorKind {
        match self {
            Refusal::Verify(e) => e.kind(),
            Refusal::Policy(_) => ErrorKind::PolicyNotMet,
            Refusal::Evidence(e) => e.kind(),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, UsageError> {
    std::fs::read(path).map_err(|e| UsageError::Read(path.to_owned(), e))
}

fn hex_arg(v: &str, flag: &'static str, len: usize) -> Result<Vec<u8>, UsageError> {
    let b = hex::decode(v.trim().trim_start_matches("0x"))
        .map_err(|_| UsageError::Hex { flag, len })?;
    if b.len() != len {
        return Err(UsageError::Hex { flag, len });
    }
    Ok(b)
}

/// Writes a line to stdout, ignoring a closed pipe (unlike `println!`, never panics).
fn out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn print_chain(err: &dyn std::error::Error) {
    eprintln!("error: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        eprintln!("caused by: {s}");
        source = s.source();
    }
}

fn message_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Everything prepared from the arguments.
struct Prepared {
    report: Vec<u8>,
    verifier: SnpVerifier,
    collateral: SnpCollateral,
    at: time::OffsetDateTime,
    policy: Policy,
    /// Certificate files that failed to parse: a refusal (malformed collateral).
    collateral_error: Option<attestation::snp::SnpVerifyError>,
    /// An --evidence file that is in no known format: a refusal (malformed evidence).
    evidence_error: Option<crate::evidence_formats::FormatError>,
}

fn prepare(a: &Args) -> Result<Prepared, UsageError> {
    let mut evidence_error = None;
    let mut evidence_table = None;
    let report = match (&a.report, &a.evidence) {
        (Some(r), _) => read(r)?,
        (None, Some(e)) => match crate::evidence_formats::parse_snp(&read(e)?) {
            Ok(ev) => {
                evidence_table = ev.cert_table;
                ev.report
            }
            Err(e) => {
                evidence_error = Some(e);
                Vec::new()
            }
        },
        // clap requires one of them.
        (None, None) => {
            return Err(UsageError::Read(
                PathBuf::from("--report"),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ))
        }
    };
    let mut roots = TrustRoots::amd()
        .map_err(|e| UsageError::Roots(attestation::snp::SnpVerifyError::Roots(e)))?;
    let mut policy = match &a.policy_file {
        Some(p) => serde_json::from_slice::<Policy>(&read(p)?).map_err(UsageError::PolicyFile)?,
        None => Policy::default(),
    };
    if let Some(tr) = &a.trust_root {
        roots = roots
            .with_operator_roots(&read(tr)?)
            .map_err(UsageError::TrustRoot)?;
        policy.allow_emulated = true;
    }
    let at = match &a.at {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(UsageError::Time)?,
        None => time::OffsetDateTime::now_utc(),
    };

    let mut collateral = SnpCollateral::new();
    let mut collateral_error = None;
    let mut note = |r: Result<(), attestation::snp::SnpVerifyError>| {
        if let Err(e) = r {
            collateral_error.get_or_insert(e);
        }
    };
    if let Some(v) = &a.vcek {
        let bytes = read(v)?;
        note(
            AmdCertificate::parse_all(&bytes)
                .map_err(|source| attestation::snp::SnpVerifyError::Certificate {
                    what: v.display().to_string(),
                    source: Box::new(source),
                })
                .map(|certs| {
                    for (i, c) in certs.into_iter().enumerate() {
                        if i == 0 {
                            collateral.set_vek(c);
                        } else {
                            collateral.add_certificate(c);
                        }
                    }
                }),
        );
    }
    if let Some(c) = &a.chain {
        let bytes = read(c)?;
        note(collateral.add_certificates(&bytes, &c.display().to_string()));
    }
    if let Some(d) = &a.certs_dir {
        if !d.is_dir() {
            return Err(UsageError::Read(
                d.clone(),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        note(collateral.load_dir(d));
    }
    if let Some(t) = &a.cert_table {
        let bytes = read(t)?;
        note(
            CertTable::parse(&bytes)
                .map_err(attestation::snp::SnpVerifyError::CertTable)
                .and_then(|table| collateral.add_cert_table(&table)),
        );
    }
    if let Some(bytes) = &evidence_table {
        note(
            CertTable::parse(bytes)
                .map_err(attestation::snp::SnpVerifyError::CertTable)
                .and_then(|table| collateral.add_cert_table(&table)),
        );
    }
    for crl in &a.crl {
        let bytes = read(crl)?;
        note(collateral.add_crls(&bytes, &crl.display().to_string()));
    }

    if a.allow_debug {
        policy.allow_debug = true;
    }
    for m in &a.measurement {
        policy.measurements.push(hex_arg(m, "measurement", 48)?);
    }
    if let Some(h) = &a.host_data {
        policy.host_data = Some(hex_arg(h, "host-data", 32)?);
    }
    if let Some(r) = &a.report_data {
        policy.report_data = Some(hex_arg(r, "report-data", 64)?);
    }
    if let Some(v) = a.vmpl {
        policy.snp.vmpl = Some(v);
    }
    if a.allow_migration_agent {
        policy.snp.allow_migration_agent = true;
    }
    if let Some(s) = a.min_guest_svn {
        policy.snp.min_guest_svn = s;
    }
    for c in &a.chip_id {
        policy.snp.chip_ids.push(hex_arg(c, "chip-id", 64)?);
    }
    if let Some(spec) = &a.min_tcb {
        // A raw TCB_VERSION is decoded with the layout of the report's product.
        let product = AttestationReport::parse(&report)
            .ok()
            .and_then(|r| r.product());
        let layout = product.map_or(TcbLayout::Legacy, TcbLayout::for_product);
        policy.snp.min_tcb = Some(MinTcb::parse(spec, layout).map_err(UsageError::MinTcb)?);
    }
    // An offline check without a policy file or --measurement checks everything but the
    // measurement; a policy file must list measurements or say allow_any_measurement.
    if a.policy_file.is_none() && policy.measurements.is_empty() {
        policy.allow_any_measurement = true;
    }
    Ok(Prepared {
        report,
        verifier: SnpVerifier::new(roots),
        collateral,
        at,
        policy,
        collateral_error,
        evidence_error,
    })
}

fn evaluate(p: Prepared) -> Result<Claims, Refusal> {
    if let Some(e) = p.evidence_error {
        return Err(Refusal::Evidence(e));
    }
    if let Some(e) = p.collateral_error {
        return Err(Refusal::Verify(e));
    }
    let claims = p
        .verifier
        .verify(&p.report, &p.collateral, p.at)
        .map_err(Refusal::Verify)?;
    p.policy.evaluate(&claims).map_err(Refusal::Policy)?;
    Ok(claims)
}

/// Runs `cvm-verifier verify snp`.
pub fn run(args: Args) -> ExitCode {
    let json = args.output == Output::Json;
    let prepared = match prepare(&args) {
        Ok(p) => p,
        Err(e) => {
            if json {
                let v = serde_json::json!({
                    "verified": false, "tee": "snp", "trust": null,
                    "error": {"kind": "usage", "message": message_chain(&e)},
                });
                out(&v.to_string());
            }
            print_chain(&e);
            return ExitCode::from(2);
        }
    };
    match evaluate(prepared) {
        Ok(claims) => {
            if json {
                let v = serde_json::json!({
                    "verified": true, "tee": "snp", "trust": claims.trust, "claims": claims,
                });
                out(&v.to_string());
            } else {
                let trust = serde_json::to_value(claims.trust).ok();
                let trust = trust.as_ref().and_then(|t| t.as_str()).unwrap_or("unknown");
                out(&format!(
                    "verified: SEV-SNP report accepted (trust: {trust})"
                ));
                out(&format!(
                    "measurement: {}",
                    hex::encode(&claims.measurement)
                ));
                out(&format!(
                    "report_data: {}",
                    hex::encode(&claims.report_data)
                ));
                out(&format!("host_data:   {}", hex::encode(&claims.host_data)));
            }
            if claims.trust == attestation::claims::TrustLevel::InsecureEmulated {
                eprintln!("warning: the evidence comes from an EMULATED platform and proves nothing about hardware");
            }
            ExitCode::SUCCESS
        }
        Err(refusal) => {
            if json {
                let check = match &refusal {
                    Refusal::Policy(v) => Some(v.check.clone()),
                    Refusal::Verify(_) | Refusal::Evidence(_) => None,
                };
                let mut error = serde_json::json!({"kind": refusal.kind().as_str(), "message": message_chain(&refusal)});
                if let Some(c) = check {
                    error["check"] = serde_json::Value::String(c);
                }
                out(&serde_json::json!({"verified": false, "tee": "snp", "trust": null, "error": error}).to_string());
            }
            print_chain(&refusal);
            ExitCode::from(1)
        }
    }
}
