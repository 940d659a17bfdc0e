//! `cvm emulated init` (SNP half) and `cvm emulated report snp`: an emulated SEV-SNP
//! secure processor producing ATTESTATION_REPORTs in the exact hardware format.
//!
//! The platform lives in `DIR/snp/` (see [`attestation::snp::emulated`]), in the layout
//! `snpguest verify certs|attestation DIR/snp` reads; `DIR/snp/trust-anchor.pem` is the
//! trust anchor to give a verifier (`cvm-verifier verify snp --trust-root ...`). The
//! reports are insecure test evidence.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use attestation::snp::emulated::{EmulatedSnpPlatform, FinishParams, ReportRequest};

use cli_support::fail;

/// Arguments of `cvm emulated report snp`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Platform directory (created by `cvm emulated init`).
    #[arg(long)]
    pub dir: PathBuf,
    /// REPORT_DATA, hex, up to 64 bytes (zero-padded to 64).
    #[arg(long)]
    pub report_data: String,
    /// MEASUREMENT, hex (48 bytes), e.g. from `cvm measure`. Default: the launch digest
    /// of a launch with no pages (48 zero bytes).
    #[arg(long)]
    pub measurement: Option<String>,
    /// HOST_DATA, hex, up to 32 bytes (zero-padded). Default: zero.
    #[arg(long)]
    pub host_data: Option<String>,
    /// Guest policy as a 64-bit number in hex (bit 17 must be set; bit 19 is DEBUG).
    #[arg(long, default_value = "0x30000")]
    pub policy: String,
    /// The requesting VMPL (0..=3).
    #[arg(long, default_value_t = 0)]
    pub vmpl: u32,
    /// Report version: 3 or 5 (the same flag as `quote tdx --version`).
    #[arg(long, visible_alias = "report-version", default_value_t = 3)]
    pub version: u32,
    /// Where to write the report (0x4A0 bytes; must not exist, unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the extended-report certificate table (optional).
    #[arg(long)]
    pub cert_table_out: Option<PathBuf>,
    /// Replace the output files if they exist.
    #[arg(long)]
    pub force: bool,
}

/// A bad argument of `cvm emulated report snp`.
#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    /// Not hex of an acceptable length.
    #[error("--{what} is not hex of at most {max} bytes")]
    Hex {
        /// The option.
        what: &'static str,
        /// The largest length.
        max: usize,
    },
    /// The measurement is not 48 bytes.
    #[error("--measurement must be 48 bytes of hex")]
    Measurement,
    /// The policy is not a hex number.
    #[error("--policy is not a 64-bit hexadecimal number")]
    Policy,
    /// Writing an output failed.
    #[error("cannot write {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    /// An output exists and --force was not given.
    #[error(transparent)]
    Exists(#[from] cli_support::output::Exists),
}

fn padded<const N: usize>(hex_str: &str, what: &'static str) -> Result<[u8; N], ArgError> {
    let bytes = hex::decode(hex_str.trim().trim_start_matches("0x"))
        .map_err(|_| ArgError::Hex { what, max: N })?;
    let mut out = [0u8; N];
    out.get_mut(..bytes.len())
        .ok_or(ArgError::Hex { what, max: N })?
        .copy_from_slice(&bytes);
    Ok(out)
}

/// Creates the SNP half of an emulated platform in `dir` (the text result is printed
/// unless `output` is JSON; the caller prints the JSON of both halves).
pub fn init(dir: &Path, output: cli_support::Output) -> ExitCode {
    match EmulatedSnpPlatform::create(dir) {
        Ok(_) if output.is_json() => ExitCode::SUCCESS,
        Ok(_) => {
            let snp = dir.join("snp");
            println!(
                "emulated SEV-SNP platform created in {}; trust anchor: {}",
                snp.display(),
                snp.join("trust-anchor.pem").display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, cli_support::EXIT_FAILURE),
    }
}

struct Parsed {
    report_data: [u8; 64],
    measurement: [u8; 48],
    host_data: [u8; 32],
    policy: u64,
}

fn parse_args(a: &ReportArgs) -> Result<Parsed, ArgError> {
    let measurement = match &a.measurement {
        Some(m) => {
            let b = hex::decode(m.trim().trim_start_matches("0x"))
                .map_err(|_| ArgError::Measurement)?;
            b.try_into().map_err(|_| ArgError::Measurement)?
        }
        None => [0u8; 48],
    };
    for out in std::iter::once(&a.out).chain(a.cert_table_out.as_ref()) {
        cli_support::check_overwrite(out, a.force)?;
    }
    let policy_str = a.policy.trim();
    let digits = policy_str.strip_prefix("0x").unwrap_or(policy_str);
    Ok(Parsed {
        report_data: padded(&a.report_data, "report-data")?,
        measurement,
        host_data: match &a.host_data {
            Some(h) => padded(h, "host-data")?,
            None => [0u8; 32],
        },
        policy: u64::from_str_radix(digits, 16).map_err(|_| ArgError::Policy)?,
    })
}

/// Runs `cvm emulated report snp`.
pub fn report(a: ReportArgs) -> ExitCode {
    let args = match parse_args(&a) {
        Ok(v) => v,
        Err(e) => return fail(&e, cli_support::EXIT_USAGE),
    };
    let platform = match EmulatedSnpPlatform::open(&a.dir) {
        Ok(p) => p,
        Err(e) => return fail(&e, cli_support::EXIT_USAGE),
    };
    let result = platform
        .launch_start_from(args.policy, args.measurement)
        .and_then(|launch| {
            let guest = launch.finish(FinishParams {
                host_data: args.host_data,
                ..FinishParams::default()
            })?;
            guest.extended_report(&ReportRequest {
                report_data: args.report_data,
                vmpl: a.vmpl,
                version: a.version,
            })
        });
    let (report, table) = match result {
        Ok(v) => v,
        Err(e) => return fail(&e, cli_support::EXIT_FAILURE),
    };
    if let Err(e) = std::fs::write(&a.out, report) {
        return fail(
            &ArgError::Write(a.out.clone(), e),
            cli_support::EXIT_FAILURE,
        );
    }
    if let Some(path) = &a.cert_table_out {
        let bytes = match table.to_bytes() {
            Ok(b) => b,
            Err(e) => return fail(&e, cli_support::EXIT_FAILURE),
        };
        if let Err(e) = std::fs::write(path, bytes) {
            return fail(&ArgError::Write(path.clone(), e), cli_support::EXIT_FAILURE);
        }
    }
    ExitCode::SUCCESS
}
