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

/// The runtime of `serve`: one async worker fewer than the CPUs (at least one), since
/// evidence verification — most of the CPU an attestation costs — runs on the blocking
/// pool beside them. On two CPUs that is one worker: the same throughput as two, with
/// fewer thread hand-offs per request. `TOKIO_WORKER_THREADS` overrides it.
pub fn server_runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        b.worker_threads(cpus.saturating_sub(1).max(1));
    }
    b.enable_all().build()
}

/// Logs to stderr in the shared scheme (`cli_support::logging`): `CVM_LOG`, else
/// `RUST_LOG`, else `info,sqlx=warn`; `--log-format json`; colour only on a terminal.
pub fn init_logging() {
    cli_support::logging::init("info,sqlx=warn");
}
