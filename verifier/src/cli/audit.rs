//! `cvm-verifier audit verify|export`: offline checks of the audit log, directly on the
//! database.

use std::io::Write;
use std::process::ExitCode;

use crate::db::Db;
use crate::store::audit;
use crate::util::parse_time;

use super::output::{fail, runtime, Format};

/// `audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Recompute the hash chain. Exit 0: intact; 1: tampered; 2: error.
    Verify {
        /// Database path or URL.
        #[arg(long, env = "CVM_VERIFIER_DATABASE")]
        database: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Format,
    },
    /// Write records as JSON lines to stdout.
    Export {
        /// Database path or URL.
        #[arg(long, env = "CVM_VERIFIER_DATABASE")]
        database: String,
        /// Only records at or after TIME (RFC 3339 or Unix seconds).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
}

/// Runs an `audit` subcommand.
pub fn run(cmd: Command) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 2),
    };
    rt.block_on(async move {
        match cmd {
            Command::Verify { database, output } => {
                let db = match Db::connect_existing(&database).await {
                    Ok(db) => db,
                    Err(e) => return fail(&e, 2),
                };
                let report = match audit::verify(&db).await {
                    Ok(r) => r,
                    Err(e) => return fail(&e, 2),
                };
                match output {
                    Format::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    ),
                    Format::Text if report.ok => {
                        println!(
                            "audit log intact: {} records, head {}",
                            report.records, report.head_hash
                        )
                    }
                    Format::Text => {}
                }
                if report.ok {
                    ExitCode::SUCCESS
                } else {
                    eprintln!(
                        "error: the audit log was tampered with: {}",
                        report.problem.unwrap_or_default()
                    );
                    ExitCode::from(1)
                }
            }
            Command::Export { database, since } => {
                let since = match since.as_deref().map(parse_time).transpose() {
                    Ok(s) => s.unwrap_or(0),
                    Err(e) => return fail(&e, 2),
                };
                let db = match Db::connect_existing(&database).await {
                    Ok(db) => db,
                    Err(e) => return fail(&e, 2),
                };
                let mut after = 0;
                let mut out = std::io::stdout().lock();
                loop {
                    let batch = match audit::list(&db, since, after, 1000).await {
                        Ok(b) => b,
                        Err(e) => return fail(&e, 2),
                    };
                    let Some(last) = batch.last() else { break };
                    after = last.seq;
                    for r in &batch {
                        if writeln!(out, "{}", audit::export_line(r)).is_err() {
                            return ExitCode::from(2);
                        }
                    }
                }
                ExitCode::SUCCESS
            }
        }
    })
}
