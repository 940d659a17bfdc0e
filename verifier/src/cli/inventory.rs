//! `cvm-verifier inventory`: attested guests, directly from the database.

use std::process::ExitCode;

use crate::db::{now, Db};
use crate::store::sessions;
use crate::util::{parse_duration, rfc3339};

use super::output::{fail, print_value, runtime, Format};

/// Options of `inventory`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Database path or URL.
    #[arg(long, env = "CVM_VERIFIER_DATABASE")]
    pub database: String,
    /// Only guests not attested for DURATION (e.g. 30m, 12h, 7d; plain: seconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stale: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Format,
}

/// Runs `inventory`.
pub fn run(args: Args) -> ExitCode {
    let before = args
        .stale
        .map(|d| now().saturating_sub(i64::try_from(d).unwrap_or(i64::MAX)));
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 2),
    };
    rt.block_on(async move {
        let db = match Db::connect_existing(&args.database).await {
            Ok(db) => db,
            Err(e) => return fail(&e, 2),
        };
        let guests = match sessions::inventory(&db, before).await {
            Ok(g) => g,
            Err(e) => return fail(&e, 2),
        };
        match args.output {
            Format::Json => print_value(serde_json::json!({ "guests": guests }), Format::Json),
            Format::Text => {
                println!(
                    "{:<36}  {:<16}  {:<4}  {:<19}  {:<20}  {:<20}  revoked",
                    "id", "workload", "tee", "trust", "first", "last"
                );
                for g in &guests {
                    println!(
                        "{:<36}  {:<16}  {:<4}  {:<19}  {:<20}  {:<20}  {}",
                        g.id,
                        g.workload,
                        g.tee,
                        g.trust,
                        rfc3339(g.first_seen),
                        rfc3339(g.last_seen),
                        g.revoked
                    );
                }
            }
        }
        ExitCode::SUCCESS
    })
}
