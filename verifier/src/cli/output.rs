//! Shared output conventions of the service subcommands: `error: …` then one
//! `caused by: …` line per source; `--output text|json`.

use std::process::ExitCode;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// JSON.
    Json,
}

/// Prints `err` and its sources to stderr and returns exit code `code`.
pub fn fail(err: &dyn std::error::Error, code: u8) -> ExitCode {
    eprintln!("error: {err}");
    let mut src = err.source();
    while let Some(s) = src {
        eprintln!("caused by: {s}");
        src = s.source();
    }
    ExitCode::from(code)
}

/// A current-thread-plus-workers tokio runtime for a subcommand.
pub fn runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Logs to stderr; `RUST_LOG` overrides the default level `info`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
