//! Shared output conventions of the service subcommands: `error: …` then one
//! `caused by: …` line per source; `--output text|json`, with times in RFC 3339 in both
//! (the admin API and the database keep Unix seconds; [`times_to_rfc3339`] converts
//! what is printed).

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::Value;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// JSON.
    Json,
}

/// Prints `err` and its sources to stderr and returns exit code `code` (the shared
/// [`cli_support::fail`]).
pub fn fail(err: &dyn std::error::Error, code: u8) -> ExitCode {
    cli_support::fail(err, code)
}

/// Fields that hold Unix seconds in answers of the admin API and in database rows.
/// (Audit records keep `ts`, the hashed value, beside their RFC 3339 `time`.)
pub const TIME_FIELDS: &[&str] = &["created_at", "updated_at", "first_seen", "last_seen"];

/// Replaces every integer [`TIME_FIELDS`] value in `v` (at any depth) by its RFC 3339
/// form.
pub fn times_to_rfc3339(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x.as_i64() {
                    Some(secs) if TIME_FIELDS.contains(&k.as_str()) => {
                        *x = Value::String(cli_support::units::rfc3339(secs));
                    }
                    _ => times_to_rfc3339(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(times_to_rfc3339),
        _ => {}
    }
}

/// Prints a JSON result in `format` with RFC 3339 times (nothing for `null`).
pub fn print_value(mut v: Value, format: Format) {
    if v.is_null() {
        return;
    }
    times_to_rfc3339(&mut v);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Format::Text => print!("{}", text(&v)),
    }
}

/// The text form of a JSON result: `key: value` lines, nested values indented, one
/// block per element of a list of objects.
pub fn text(v: &Value) -> String {
    let mut out = String::new();
    text_into(&mut out, v, 0);
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("-".into()),
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
        Value::Array(a) if a.is_empty() => Some("-".into()),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            Some(a.iter().filter_map(scalar).collect::<Vec<_>>().join(", "))
        }
        Value::Object(m) if m.is_empty() => Some("-".into()),
        _ => None,
    }
}

fn text_into(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match scalar(x) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}{k}: {s}");
                    }
                    None => {
                        let _ = writeln!(out, "{pad}{k}:");
                        text_into(out, x, indent + 2);
                    }
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                if i > 0 && x.is_object() {
                    out.push('\n');
                }
                match scalar(x) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}{s}");
                    }
                    None => text_into(out, x, indent),
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other).unwrap_or_default());
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_become_rfc3339_and_text_is_key_value() {
        let mut v = serde_json::json!({"workloads": [
            {"name": "w", "created_at": 60, "measurements": ["aa", "bb"], "policy": {"x": 1}},
            {"name": "v", "created_at": 0, "measurements": []}
        ], "ts": 5});
        times_to_rfc3339(&mut v);
        assert_eq!(v["workloads"][0]["created_at"], "1970-01-01T00:01:00Z");
        assert_eq!(v["ts"], 5);
        // (Key order depends on serde_json's `preserve_order` feature in the build.)
        let t = text(&v);
        for line in [
            "ts: 5\n",
            "workloads:\n",
            "  created_at: 1970-01-01T00:01:00Z\n",
            "  measurements: aa, bb\n",
            "  policy:\n    x: 1\n",
            "  created_at: 1970-01-01T00:00:00Z\n",
            "  measurements: -\n",
            "  name: v\n",
        ] {
            assert!(t.contains(line), "{line:?} in {t}");
        }
        assert_eq!(
            t.matches("\n\n").count(),
            1,
            "one blank line between the two: {t}"
        );
    }
}
