//! The append-only, hash-chained audit log.
//!
//! Record `n` stores `hash_n = SHA-256(hash_{n-1} || JCS(record_n))` where `hash_0` is 32
//! zero bytes and `JCS(record)` is the RFC 8785 canonical JSON of
//! `{seq, ts, kind, actor, client, subject, outcome, detail}`. Sequence numbers are dense
//! from 1. The head (last `seq` and `hash`) is kept in `audit_head`, updated in the same
//! transaction as the append (the append takes the next `seq` from it; a trigger on
//! `audit_log` moves its `hash` to the inserted record's), so [`verify`] detects
//! modified, removed (including the last ones) and reordered records. The database additionally refuses `UPDATE` and `DELETE`
//! on `audit_log` (triggers), so tampering needs DDL rights and is still detected.
//!
//! Appends happen inside the caller's transaction: a key release and its audit record
//! commit together or not at all.

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::{now, Db, DbError, Tx};

/// What happened; the `kind` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// An attestation (accepted or refused).
    Attestation,
    /// A resource released to a guest (or refused).
    KeyRelease,
    /// A change made through the admin plane.
    AdminChange,
    /// A failed authentication on the admin plane.
    AuthFailure,
    /// A maintenance operation (bootstrap, master-key rotation).
    Maintenance,
}

impl AuditKind {
    /// The stable name stored in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Attestation => "attestation",
            AuditKind::KeyRelease => "key-release",
            AuditKind::AdminChange => "admin-change",
            AuditKind::AuthFailure => "auth-failure",
            AuditKind::Maintenance => "maintenance",
        }
    }
}

/// One event to append.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// What happened.
    pub kind: AuditKind,
    /// Who: a user name, `guest:<session>` or `system`.
    pub actor: String,
    /// The client address, or `-`.
    pub client: String,
    /// What it concerned (a workload, resource path, user…).
    pub subject: String,
    /// `accepted`, `refused`, `released`, `ok`, `failed`…
    pub outcome: String,
    /// Structured detail; never secret values.
    pub detail: Value,
}

/// One stored record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Sequence number, dense from 1.
    pub seq: i64,
    /// Unix seconds.
    pub ts: i64,
    /// [`AuditKind::as_str`].
    pub kind: String,
    /// Who.
    pub actor: String,
    /// Client address.
    pub client: String,
    /// Subject.
    pub subject: String,
    /// Outcome.
    pub outcome: String,
    /// Detail (canonical JSON text as stored).
    pub detail: String,
    /// The previous record's hash (hex).
    pub prev_hash: String,
    /// This record's hash (hex).
    pub hash: String,
}

/// The all-zero hash preceding record 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn canonical(
    seq: i64,
    ts: i64,
    r: &RecordFields<'_>,
    detail: &Value,
) -> Result<String, serde_json::Error> {
    serde_json_canonicalizer::to_string(&json!({
        "seq": seq, "ts": ts, "kind": r.kind, "actor": r.actor, "client": r.client,
        "subject": r.subject, "outcome": r.outcome, "detail": detail,
    }))
}

struct RecordFields<'a> {
    kind: &'a str,
    actor: &'a str,
    client: &'a str,
    subject: &'a str,
    outcome: &'a str,
}

fn chain_hash(prev_hex: &str, canonical: &str) -> Option<String> {
    let prev = hex::decode(prev_hex).ok().filter(|p| p.len() == 32)?;
    let mut h = Sha256::new();
    h.update(&prev);
    h.update(canonical.as_bytes());
    Some(hex::encode(h.finalize()))
}

/// Appends `ev` inside `tx`; returns its sequence number.
pub async fn append(tx: &mut Tx, ev: &AuditEvent) -> Result<i64, DbError> {
    // Taking the head row first serializes concurrent appenders.
    let row = sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
        .fetch_one(&mut **tx)
        .await?;
    let seq: i64 = row.try_get(0)?;
    let prev: String = row.try_get(1)?;
    let ts = now();
    let f = RecordFields {
        kind: ev.kind.as_str(),
        actor: &ev.actor,
        client: &ev.client,
        subject: &ev.subject,
        outcome: &ev.outcome,
    };
    let detail_text = serde_json_canonicalizer::to_string(&ev.detail).map_err(DbError::Encode)?;
    let canon = canonical(seq, ts, &f, &ev.detail).map_err(DbError::Encode)?;
    let hash = chain_hash(&prev, &canon).ok_or(DbError::Corrupt(
        "the audit head hash is not 32 bytes of hex",
    ))?;
    sqlx::query(
        "INSERT INTO audit_log (seq, ts, kind, actor, client, subject, outcome, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(seq)
    .bind(ts)
    .bind(f.kind)
    .bind(f.actor)
    .bind(f.client)
    .bind(f.subject)
    .bind(f.outcome)
    .bind(&detail_text)
    .bind(&prev)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    // The trigger `audit_head_follows` has set the head's hash to `hash`.
    Ok(seq)
}

/// Appends `ev` in its own transaction.
pub async fn append_now(db: &Db, ev: &AuditEvent) -> Result<i64, DbError> {
    let mut tx = db.begin().await?;
    let seq = append(&mut tx, ev).await?;
    tx.commit().await?;
    Ok(seq)
}

fn record_from_row(row: &sqlx::any::AnyRow) -> Result<AuditRecord, sqlx::Error> {
    Ok(AuditRecord {
        seq: row.try_get(0)?,
        ts: row.try_get(1)?,
        kind: row.try_get(2)?,
        actor: row.try_get(3)?,
        client: row.try_get(4)?,
        subject: row.try_get(5)?,
        outcome: row.try_get(6)?,
        detail: row.try_get(7)?,
        prev_hash: row.try_get(8)?,
        hash: row.try_get(9)?,
    })
}

const COLUMNS: &str = "seq, ts, kind, actor, client, subject, outcome, detail, prev_hash, hash";

/// Records with `ts >= since`, optionally only after `after_seq`, at most `limit`.
pub async fn list(
    db: &Db,
    since: i64,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<AuditRecord>, DbError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit_log WHERE ts >= $1 AND seq > $2 ORDER BY seq LIMIT $3"
    ))
    .bind(since)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    Ok(rows.iter().map(record_from_row).collect::<Result<_, _>>()?)
}

/// The result of checking the chain.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    /// Records checked.
    pub records: i64,
    /// The head's sequence number.
    pub head_seq: i64,
    /// The head's hash.
    pub head_hash: String,
    /// Whether the chain is intact.
    pub ok: bool,
    /// The first problem found.
    pub problem: Option<String>,
}

/// Recomputes the whole chain and compares it with the head.
pub async fn verify(db: &Db) -> Result<ChainReport, DbError> {
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(db.pool())
        .await?;
    let head_seq: i64 = head.try_get(0)?;
    let head_hash: String = head.try_get(1)?;
    let mut expected_seq = 1i64;
    let mut running = GENESIS.to_owned();
    let mut problem = None;
    let mut after = 0i64;
    'outer: loop {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 1000"
        ))
        .bind(after)
        .fetch_all(db.pool())
        .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let r = record_from_row(row)?;
            after = r.seq;
            if let Some(p) = check_record(&r, expected_seq, &running) {
                problem = Some(p);
                break 'outer;
            }
            running = r.hash.clone();
            expected_seq += 1;
        }
    }
    let records = expected_seq - 1;
    if problem.is_none() {
        if records != head_seq {
            problem = Some(format!("the log holds {records} intact records but the head says {head_seq}: records were removed"));
        } else if running != head_hash {
            problem = Some("the last record's hash does not match the head".into());
        }
    }
    Ok(ChainReport {
        records,
        head_seq,
        head_hash,
        ok: problem.is_none(),
        problem,
    })
}

fn check_record(r: &AuditRecord, expected_seq: i64, running: &str) -> Option<String> {
    if r.seq != expected_seq {
        return Some(format!(
            "record {expected_seq} is missing (found {} next)",
            r.seq
        ));
    }
    if r.prev_hash != running {
        return Some(format!(
            "record {} does not link to record {}",
            r.seq,
            r.seq - 1
        ));
    }
    let Ok(detail) = serde_json::from_str::<Value>(&r.detail) else {
        return Some(format!("record {} has a malformed detail", r.seq));
    };
    let f = RecordFields {
        kind: &r.kind,
        actor: &r.actor,
        client: &r.client,
        subject: &r.subject,
        outcome: &r.outcome,
    };
    let Ok(canon) = canonical(r.seq, r.ts, &f, &detail) else {
        return Some(format!("record {} cannot be canonicalized", r.seq));
    };
    match chain_hash(running, &canon) {
        Some(h) if h == r.hash => None,
        _ => Some(format!(
            "record {} was modified (its hash does not match its contents)",
            r.seq
        )),
    }
}

/// The JSON-lines form of a record (`ts` also as RFC 3339).
pub fn export_line(r: &AuditRecord) -> Value {
    let detail =
        serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::String(r.detail.clone()));
    json!({
        "seq": r.seq, "ts": r.ts, "time": crate::util::rfc3339(r.ts), "kind": r.kind, "actor": r.actor,
        "client": r.client, "subject": r.subject, "outcome": r.outcome, "detail": detail,
        "prev_hash": r.prev_hash, "hash": r.hash,
    })
}
