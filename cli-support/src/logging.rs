//! One logging scheme for every binary (`cvm`, `cvm-verifier`).
//!
//! - The filter comes from `CVM_LOG` (as `RUST_LOG` syntax: `info`, `debug,sqlx=warn`),
//!   else from `RUST_LOG` (still honoured), else the binary's default.
//! - `--log-format text|json` (or `CVM_LOG_FORMAT`): `json` writes one JSON object per
//!   event (`timestamp`, `level`, `fields`, …) for log collectors.
//! - Colour only when standard error is a terminal, so redirected logs hold no escape
//!   codes.
//!
//! Logs go to standard error; results go to standard output.

use std::io::IsTerminal;
use std::sync::OnceLock;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Records the format chosen on the command line (the first call wins); [`init`] uses it.
pub fn set_format(format: LogFormat) {
    let _ = FORMAT.set(format);
}

/// The filter: `CVM_LOG`, else `RUST_LOG`, else `default`.
pub fn filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("CVM_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("RUST_LOG"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

/// Installs the global subscriber (a second call does nothing).
pub fn init(default: &str) {
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter(default))
        .with_target(false)
        .with_ansi(ansi);
    let _ = match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
