//! `cvm emulated init` (TDX half) and `cvm emulated quote tdx`: an emulated TDX module
//! and quoting enclave producing DCAP quotes v4/v5 and their collateral.
//!
//! The emulated platform lives in `DIR/tdx/` (see
//! [`attestation::tdx::emulated`]); its `root_ca.pem` is the trust anchor to give a
//! verifier (`cvm-verifier verify tdx --trust-root DIR/tdx/root_ca.pem`). The quotes are
//! insecure test evidence.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use attestation::tdx::emulated::{CollateralOptions, EmulatedTd, EmulatedTdxPlatform, TdConfig};

use cli_support::fail;

/// Arguments of `cvm emulated quote tdx`.
#[derive(Debug, clap::Args)]
pub struct QuoteArgs {
    /// Platform directory (created by `cvm emulated init`).
    #[arg(long)]
    pub dir: PathBuf,
    /// REPORTDATA, hex, up to 64 bytes (zero-padded to 64).
    #[arg(long)]
    pub report_data: String,
    /// MRTD, hex (48 bytes). Default: the MRTD of a TD with no pages.
    #[arg(long)]
    pub mrtd: Option<String>,
    /// RTMR value as INDEX=HEX (48 bytes), INDEX 0..3; repeatable. Default: zero.
    #[arg(long = "rtmr", value_name = "I=HEX")]
    pub rtmrs: Vec<String>,
    /// MRCONFIGID, hex (48 bytes). Default: zero.
    #[arg(long)]
    pub mrconfigid: Option<String>,
    /// TD_ATTRIBUTES as a 64-bit number in hex (bit 0 DEBUG, bit 28 SEPT_VE_DISABLE).
    #[arg(long, default_value = "0x10000000")]
    pub td_attributes: String,
    /// Quote version: 4 (TD 1.0 body) or 5 (TD 1.5 body) (the same flag as `report snp
    /// --version`).
    #[arg(long = "version", visible_alias = "quote-version", default_value_t = 4)]
    pub quote_version: u16,
    /// Days the generated collateral stays valid (it is valid from now - 1 day).
    #[arg(long, default_value_t = 30)]
    pub collateral_days: i64,
    /// Where to write the quote.
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the collateral (QuoteCollateralV3 JSON).
    #[arg(long)]
    pub collateral_out: PathBuf,
    /// Replace --out and --collateral-out if they exist (else they must not exist).
    #[arg(long)]
    pub force: bool,
}

/// A bad argument of `cvm emulated quote tdx`.
#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    /// Not hex.
    #[error("--{what} is not hex")]
    Hex {
        /// The option.
        what: &'static str,
        /// The cause.
        #[source]
        source: hex::FromHexError,
    },
    /// Wrong length.
    #[error("--{what} must be {expected} bytes, found {found}")]
    Length {
        /// The option.
        what: &'static str,
        /// Expected length (or maximum, for REPORTDATA).
        expected: usize,
        /// Found length.
        found: usize,
    },
    /// Bad --rtmr.
    #[error("--rtmr `{0}` is not INDEX=HEX with INDEX 0 to 3")]
    Rtmr(String),
    /// Bad --td-attributes.
    #[error("--td-attributes `{0}` is not a 64-bit hex number")]
    Attributes(String),
    /// An output exists and --force was not given.
    #[error(transparent)]
    Exists(#[from] cli_support::output::Exists),
}

/// A failure writing an output.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}", .path.display())]
pub struct WriteError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn hex_exact<const N: usize>(what: &'static str, s: &str) -> Result<[u8; N], ArgError> {
    let v = hex::decode(s.trim().trim_start_matches("0x"))
        .map_err(|source| ArgError::Hex { what, source })?;
    let found = v.len();
    v.try_into().map_err(|_| ArgError::Length {
        what,
        expected: N,
        found,
    })
}

fn parse_args(a: &QuoteArgs) -> Result<(EmulatedTd, [u8; 64]), ArgError> {
    for out in [&a.out, &a.collateral_out] {
        cli_support::check_overwrite(out, a.force)?;
    }
    let rd = hex::decode(a.report_data.trim().trim_start_matches("0x")).map_err(|source| {
        ArgError::Hex {
            what: "report-data",
            source,
        }
    })?;
    if rd.len() > 64 {
        return Err(ArgError::Length {
            what: "report-data",
            expected: 64,
            found: rd.len(),
        });
    }
    let mut report_data = [0u8; 64];
    report_data[..rd.len()].copy_from_slice(&rd);
    let attributes = u64::from_str_radix(a.td_attributes.trim().trim_start_matches("0x"), 16)
        .map_err(|_| ArgError::Attributes(a.td_attributes.clone()))?;
    let mr_config_id = match &a.mrconfigid {
        Some(s) => hex_exact("mrconfigid", s)?,
        None => [0; 48],
    };
    let config = TdConfig {
        attributes,
        mr_config_id,
        ..TdConfig::default()
    };
    let mut td = match &a.mrtd {
        Some(s) => EmulatedTd::with_mrtd(config, hex_exact("mrtd", s)?),
        None => EmulatedTd::launch(config, []),
    };
    for r in &a.rtmrs {
        let (i, v) = r.split_once('=').ok_or_else(|| ArgError::Rtmr(r.clone()))?;
        let index: usize = i.trim().parse().map_err(|_| ArgError::Rtmr(r.clone()))?;
        let value = hex_exact("rtmr", v)?;
        td.set_rtmr(index, value)
            .map_err(|_| ArgError::Rtmr(r.clone()))?;
    }
    Ok((td, report_data))
}

/// Creates the TDX half of an emulated platform in `dir` (the text result is printed
/// unless `output` is JSON).
pub fn init(dir: &Path, output: cli_support::Output) -> ExitCode {
    match EmulatedTdxPlatform::create(dir) {
        Ok(_) if output.is_json() => ExitCode::SUCCESS,
        Ok(_) => {
            println!(
                "emulated TDX platform created in {}; trust anchor: {}",
                dir.join("tdx").display(),
                dir.join("tdx").join("root_ca.pem").display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, cli_support::EXIT_FAILURE),
    }
}

/// Runs `cvm emulated quote tdx`.
pub fn quote(a: QuoteArgs) -> ExitCode {
    let (td, report_data) = match parse_args(&a) {
        Ok(v) => v,
        Err(e) => return fail(&e, cli_support::EXIT_USAGE),
    };
    let platform = match EmulatedTdxPlatform::open(&a.dir) {
        Ok(p) => p,
        Err(e) => return fail(&e, cli_support::EXIT_USAGE),
    };
    let quote = match platform
        .quote_td(&td, &report_data, a.quote_version)
        .and_then(|q| Ok(q.to_bytes()?))
    {
        Ok(q) => q,
        Err(e) => return fail(&e, cli_support::EXIT_FAILURE),
    };
    let opts = CollateralOptions::from_now(a.collateral_days);
    let collateral = match platform.collateral(&opts).and_then(|c| Ok(c.to_json()?)) {
        Ok(c) => c,
        Err(e) => return fail(&e, cli_support::EXIT_FAILURE),
    };
    for (path, bytes) in [
        (&a.out, quote.as_slice()),
        (&a.collateral_out, collateral.as_bytes()),
    ] {
        if let Err(source) = std::fs::write(path, bytes) {
            return fail(
                &WriteError {
                    path: path.clone(),
                    source,
                },
                cli_support::EXIT_FAILURE,
            );
        }
    }
    ExitCode::SUCCESS
}
