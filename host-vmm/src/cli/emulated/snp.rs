//! (Being written.)
use std::path::Path;
use std::process::ExitCode;

/// Arguments of `cvm emulated report snp`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {}

/// Creates the SNP half of an emulated platform in `dir`.
pub fn init(_dir: &Path) -> ExitCode {
    ExitCode::from(2)
}

/// Runs `cvm emulated report snp`.
pub fn report(_a: ReportArgs) -> ExitCode {
    ExitCode::from(2)
}
