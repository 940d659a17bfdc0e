//! (Being written.)
use std::path::Path;
use std::process::ExitCode;

/// Arguments of `cvm emulated quote tdx`.
#[derive(Debug, clap::Args)]
pub struct QuoteArgs {}

/// Creates the TDX half of an emulated platform in `dir`.
pub fn init(_dir: &Path) -> ExitCode {
    ExitCode::from(2)
}

/// Runs `cvm emulated quote tdx`.
pub fn quote(_a: QuoteArgs) -> ExitCode {
    ExitCode::from(2)
}
