//! Subcommands of `cvm`, one module each. Binaries print `error: …` then one
//! `caused by: …` line per source.

pub mod demo;
pub mod emulated;
pub mod firmware;
pub mod host_check;
pub mod image;
pub mod launch;
pub mod measure;

use std::process::ExitCode;

/// Prints `error: <err>` and one `caused by:` line per source, and returns `code`.
pub fn fail(err: &dyn std::error::Error, code: u8) -> ExitCode {
    eprintln!("error: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        eprintln!("caused by: {s}");
        source = s.source();
    }
    ExitCode::from(code)
}
