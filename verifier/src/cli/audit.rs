//! `cvm-verifier audit verify|export|checkpoints|checkpoint`: offline checks of the audit
//! log, directly on the database.
//!
//! `verify` needs the master key (the same flags as `serve`): the chain is keyed with an
//! audit key sealed under it (see [`crate::store::audit`]). Exit codes: 0 intact,
//! 1 tampered, 2 usage or access error.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::crypto::master::{MasterKey, MasterKeySource};
use crate::db::Db;
use crate::store::audit::{self, Checkpoint};
use crate::util::parse_time;

use super::output::{fail, runtime, Format};

/// Where the master key comes from: the flags of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct MasterKeyArgs {
    /// File with the 32-byte master key (mode 0600).
    #[arg(
        long,
        env = "CVM_VERIFIER_MASTER_KEY_FILE",
        conflicts_with = "master_key_command"
    )]
    pub master_key_file: Option<PathBuf>,
    /// KMS-style command that prints the master key (64 hex digits) on stdout.
    #[arg(long, env = "CVM_VERIFIER_MASTER_KEY_COMMAND")]
    pub master_key_command: Option<String>,
    /// An older or newer master key (0600 file) also accepted for opening (during a
    /// master-key rotation; repeatable).
    #[arg(
        long,
        value_name = "FILE",
        env = "CVM_VERIFIER_EXTRA_MASTER_KEY_FILES",
        value_delimiter = ','
    )]
    pub extra_master_key_file: Vec<PathBuf>,
}

/// Errors of the `audit` subcommands.
#[derive(Debug, thiserror::Error)]
pub enum AuditCliError {
    /// No master key was given.
    #[error("the master key is required: pass --master-key-file or --master-key-command")]
    NoMasterKey,
    /// The master key could not be loaded.
    #[error(transparent)]
    MasterKey(#[from] crate::crypto::master::MasterKeyError),
    /// The exported checkpoints file could not be read.
    #[error("cannot read the checkpoints file {}", path.display())]
    CheckpointsIo {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line of the exported checkpoints file is not a checkpoint.
    #[error("line {line} of the checkpoints file {} is not a checkpoint", path.display())]
    CheckpointsFormat {
        /// The file.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl MasterKeyArgs {
    fn load(&self) -> Result<MasterKey, AuditCliError> {
        let source = match (&self.master_key_file, &self.master_key_command) {
            (Some(f), _) => MasterKeySource::File(f.clone()),
            (None, Some(c)) => MasterKeySource::Command(c.clone()),
            (None, None) => return Err(AuditCliError::NoMasterKey),
        };
        let mut extra = Vec::new();
        for f in &self.extra_master_key_file {
            extra.push(MasterKey::load(f)?);
        }
        Ok(MasterKey::from_source(&source)?.with_extra_keys(extra))
    }
}

/// `audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Recompute the keyed chain and check its signed checkpoints. Exit 0: intact;
    /// 1: tampered; 2: error.
    Verify {
        /// Database path or URL.
        #[arg(long, env = "CVM_VERIFIER_DATABASE")]
        database: String,
        /// The master key.
        #[command(flatten)]
        key: MasterKeyArgs,
        /// Checkpoints exported earlier (`audit checkpoints`, JSON lines) and kept out
        /// of band: each must be validly signed and match the chain, which detects a
        /// tail cut off after them.
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
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
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        since: Option<i64>,
    },
    /// Write the signed checkpoints as JSON lines to stdout (to keep out of band and
    /// pass to `audit verify --checkpoints`).
    Checkpoints {
        /// Database path or URL.
        #[arg(long, env = "CVM_VERIFIER_DATABASE")]
        database: String,
        /// Only checkpoints taken at or after TIME (RFC 3339 or Unix seconds).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        since: Option<i64>,
    },
    /// Sign and store a checkpoint of the current head now, and print it (JSON).
    Checkpoint {
        /// Database path or URL.
        #[arg(long, env = "CVM_VERIFIER_DATABASE")]
        database: String,
        /// The master key.
        #[command(flatten)]
        key: MasterKeyArgs,
    },
}

/// Reads exported checkpoints (JSON lines; blank lines ignored).
fn read_checkpoints(path: &std::path::Path) -> Result<Vec<Checkpoint>, AuditCliError> {
    let io = |source| AuditCliError::CheckpointsIo {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|source| {
            AuditCliError::CheckpointsFormat {
                path: path.to_owned(),
                line: i + 1,
                source,
            }
        })?);
    }
    Ok(out)
}

async fn verify(
    database: &str,
    key: &MasterKeyArgs,
    checkpoints: Option<&std::path::Path>,
    output: Format,
) -> ExitCode {
    let mk = match key.load() {
        Ok(k) => k,
        Err(e) => return fail(&e, 2),
    };
    let exported = match checkpoints.map(read_checkpoints).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => return fail(&e, 2),
    };
    let db = match Db::connect_existing(database).await {
        Ok(db) => db,
        Err(e) => return fail(&e, 2),
    };
    let keys = match audit::read_keys(&db, &mk).await {
        Ok(k) => k,
        // No audit key: the chain is not keyed (never served by this version, or the
        // key row was deleted to pass a rewritten unkeyed chain off as intact).
        Err(e @ audit::AuditKeyError::Missing) => {
            eprintln!("error: the audit log cannot be trusted: {e}");
            return ExitCode::from(1);
        }
        Err(e) => return fail(&e, 2),
    };
    let report = match audit::verify_with(&db, &keys, &exported).await {
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
                "audit log intact: {} records (keyed from record {}), head {}, {} stored and {} exported checkpoints match",
                report.records,
                report.keyed_from,
                report.head_hash,
                report.checkpoints,
                report.exported_checkpoints
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

/// Runs an `audit` subcommand.
pub fn run(cmd: Command) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 2),
    };
    rt.block_on(async move {
        match cmd {
            Command::Verify {
                database,
                key,
                checkpoints,
                output,
            } => verify(&database, &key, checkpoints.as_deref(), output).await,
            Command::Export { database, since } => {
                let since = since.unwrap_or(0);
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
            Command::Checkpoints { database, since } => {
                let since = since.unwrap_or(0);
                let db = match Db::connect_existing(&database).await {
                    Ok(db) => db,
                    Err(e) => return fail(&e, 2),
                };
                let list = match audit::checkpoints(&db, since).await {
                    Ok(l) => l,
                    Err(e) => return fail(&e, 2),
                };
                let mut out = std::io::stdout().lock();
                for cp in &list {
                    let line = serde_json::to_string(cp).unwrap_or_default();
                    if writeln!(out, "{line}").is_err() {
                        return ExitCode::from(2);
                    }
                }
                ExitCode::SUCCESS
            }
            Command::Checkpoint { database, key } => {
                let mk = match key.load() {
                    Ok(k) => k,
                    Err(e) => return fail(&e, 2),
                };
                let db = match Db::connect_existing(&database).await {
                    Ok(db) => db,
                    Err(e) => return fail(&e, 2),
                };
                // Loads the audit key and the checkpoint signer (both exist on a
                // database a verifier has served).
                if let Err(e) = crate::store::sessions::signing_key(&db, &mk).await {
                    return fail(&e, 2);
                }
                match audit::checkpoint(&db).await {
                    Ok(cp) => {
                        println!("{}", serde_json::to_string(&cp).unwrap_or_default());
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e, 2),
                }
            }
        }
    })
}
