//! The append-only, keyed, hash-chained audit log.
//!
//! Record `n` stores `mac_n = HMAC-SHA-256(K_audit, mac_{n-1} || JCS(record_n))`, where
//! `JCS(record)` is the RFC 8785 canonical JSON of
//! `{seq, ts, kind, actor, client, subject, outcome, detail}`. Sequence numbers are dense
//! from 1. The head (last `seq` and `mac`) is kept in `audit_head`, updated in the same
//! transaction as the append (the append takes the next `seq` from it; a trigger on
//! `audit_log` moves its `hash` to the inserted record's), so [`verify`] detects
//! modified, removed (including the last ones, up to the last checkpoint) and reordered
//! records. The database additionally refuses `UPDATE` and `DELETE` on `audit_log`
//! (triggers), so tampering needs DDL rights and is still detected.
//!
//! **The audit key.** `K_audit` is 32 random bytes created once per database (by the
//! first verifier of this version that starts on it) and stored sealed under the master
//! key in `signing_keys` (id [`AUDIT_KEY_ID`]), so replicas sharing the master key share
//! it and a master-key rotation re-wraps it like every other sealed value; old records
//! stay verifiable. The sealed value also holds the sequence number of the *transition
//! record* (the first keyed record, "audit-chain keyed"): records before it were written
//! by older versions with the unkeyed rule `hash_n = SHA-256(hash_{n-1} ||
//! JCS(record_n))` (`hash_0` is 32 zero bytes) and are verified with it; the transition
//! record's MAC covers the last legacy hash, so the legacy records cannot be changed
//! afterwards either. Without the master key nobody can move that boundary, forge a
//! MAC, or pass a chain without an audit key as intact ([`verify`] refuses it).
//!
//! **Checkpoints.** Every [`CHECKPOINT_RECORDS`] records or [`CHECKPOINT_SECONDS`]
//! (checked at each append), and on demand ([`checkpoint`]), `{seq, mac, ts}` of the head
//! is signed with the verifier's ES256 token key and stored in `audit_checkpoints`. They
//! are exported (`cvm-verifier audit checkpoints`) to be kept out of band: [`verify`]
//! checks every stored checkpoint's signature and that it matches the chain, and with
//! exported checkpoints it detects a tail that was cut off and a head rewritten to
//! match (which the stored data alone cannot show once the attacker also deletes the
//! stored checkpoints).
//!
//! **Input hygiene.** [`append`] is the single write path: it bounds every field
//! ([`MAX_SHORT_FIELD`], [`MAX_TEXT_FIELD`], the whole record to [`MAX_RECORD`] bytes,
//! marking shortened records with `"truncated": true` in the detail) and escapes control
//! and invisible format characters ([`sanitize`]), so unauthenticated input can neither
//! grow one record without bound nor forge log lines.
//!
//! Appends happen inside the caller's transaction: a key release and its audit record
//! commit together or not at all. An append without a loaded audit key fails
//! ([`load_key`]): the verifier never writes an unkeyed record.

use std::sync::Arc;

use ring::hmac;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;
use zeroize::Zeroizing;

use crate::crypto::master::{MasterKey, MasterKeyError};
use crate::crypto::token::TokenSigner;
use crate::db::{now, Batch, Db, DbError, StmtResult, Tx};

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

/// Longest stored `actor`, `client` or `outcome`, in bytes (before escaping).
pub const MAX_SHORT_FIELD: usize = 128;
/// Longest stored `subject` and string inside `detail`, in bytes (before escaping).
pub const MAX_TEXT_FIELD: usize = 512;
/// Largest stored record (all fields and the canonical detail), in bytes.
pub const MAX_RECORD: usize = 4096;
/// Deepest nesting kept in `detail`.
const MAX_DEPTH: usize = 8;
/// Most members (array elements or object keys) kept per `detail` container.
const MAX_MEMBERS: usize = 32;

/// The format characters (General_Category=Cf) of Unicode 15.1, from
/// `extracted/DerivedGeneralCategory.txt` of the Unicode Character Database
/// (<https://www.unicode.org/Public/15.1.0/ucd/extracted/DerivedGeneralCategory.txt>):
/// invisible or direction-changing characters (soft hyphen, Arabic letter mark,
/// Mongolian vowel separator, zero-width and bidirectional controls, interlinear
/// annotation, tag characters, …) that make a log line read differently from what it
/// holds. Inclusive ranges, sorted.
const FORMAT_CHARS: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Whether `c` is a format character ([`FORMAT_CHARS`]).
fn is_format(c: char) -> bool {
    let c = u32::from(c);
    FORMAT_CHARS
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Whether `c` is escaped at write: control characters (Cc: C0, DEL, C1), the backslash
/// (so that escapes are unambiguous), every format character (Cf, [`FORMAT_CHARS`]),
/// the line and paragraph separators (U+2028, U+2029) and U+2065 (unassigned, inside
/// the bidirectional block).
fn must_escape(c: char) -> bool {
    c == '\\' || c.is_control() || is_format(c) || matches!(c, '\u{2028}' | '\u{2029}' | '\u{2065}')
}

/// `s` with the characters `must_escape` names written as `\\`, `\n`, `\t`, `\r` or `\u{hex}`,
/// cut so that the result holds at most `max` bytes plus the `…` that marks a cut (at a
/// character boundary). Returns the text and whether it was cut.
pub fn sanitize(s: &str, max: usize) -> (String, bool) {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len().min(max) + 3);
    let mut esc = String::new();
    for c in s.chars() {
        esc.clear();
        match c {
            '\\' => esc.push_str("\\\\"),
            '\n' => esc.push_str("\\n"),
            '\t' => esc.push_str("\\t"),
            '\r' => esc.push_str("\\r"),
            c if must_escape(c) => {
                let _ = write!(esc, "\\u{{{:x}}}", u32::from(c));
            }
            c => esc.push(c),
        }
        if out.len() + esc.len() > max {
            out.push('…');
            return (out, true);
        }
        out.push_str(&esc);
    }
    (out, false)
}

/// Bounds and escapes every string (keys included) of a detail value; drops members
/// beyond [`MAX_MEMBERS`] and nesting beyond [`MAX_DEPTH`]. Sets `*cut` when anything
/// was shortened or dropped.
fn sanitize_value(v: &Value, depth: usize, cut: &mut bool) -> Value {
    match v {
        Value::String(s) => {
            let (t, c) = sanitize(s, MAX_TEXT_FIELD);
            *cut |= c;
            Value::String(t)
        }
        Value::Array(a) => {
            if depth >= MAX_DEPTH {
                *cut = true;
                return Value::Null;
            }
            *cut |= a.len() > MAX_MEMBERS;
            Value::Array(
                a.iter()
                    .take(MAX_MEMBERS)
                    .map(|x| sanitize_value(x, depth + 1, cut))
                    .collect(),
            )
        }
        Value::Object(o) => {
            if depth >= MAX_DEPTH {
                *cut = true;
                return Value::Null;
            }
            *cut |= o.len() > MAX_MEMBERS;
            Value::Object(
                o.iter()
                    .take(MAX_MEMBERS)
                    .map(|(k, x)| {
                        let (k, c) = sanitize(k, MAX_SHORT_FIELD);
                        *cut |= c;
                        (k, sanitize_value(x, depth + 1, cut))
                    })
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

/// The event as it is stored: every field bounded and escaped, the whole record at
/// most [`MAX_RECORD`] bytes. A shortened event's detail is an object carrying
/// `"truncated": true` (a non-object detail is wrapped as `{"value": …}`); a detail
/// still too large after the per-field bounds is replaced by
/// `{"truncated": true, "prefix": <its first bytes>}`.
fn stored_fields(ev: &AuditEvent) -> Result<(StoredFields, Value), DbError> {
    let mut cut = false;
    let mut field = |s: &str, max: usize| {
        let (t, c) = sanitize(s, max);
        cut |= c;
        t
    };
    let fields = StoredFields {
        actor: field(&ev.actor, MAX_SHORT_FIELD),
        client: field(&ev.client, MAX_SHORT_FIELD),
        subject: field(&ev.subject, MAX_TEXT_FIELD),
        outcome: field(&ev.outcome, MAX_SHORT_FIELD),
    };
    let mut detail = sanitize_value(&ev.detail, 0, &mut cut);
    if cut {
        detail = match detail {
            Value::Object(mut o) => {
                o.insert("truncated".into(), Value::Bool(true));
                Value::Object(o)
            }
            other => json!({ "value": other, "truncated": true }),
        };
    }
    let head =
        fields.actor.len() + fields.client.len() + fields.subject.len() + fields.outcome.len();
    let budget = MAX_RECORD.saturating_sub(head + 256);
    let text = serde_json_canonicalizer::to_string(&detail).map_err(DbError::Encode)?;
    if text.len() > budget {
        let (prefix, _) = sanitize(&text, budget.saturating_sub(64).min(text.len()) / 2);
        detail = json!({ "truncated": true, "prefix": prefix });
    }
    Ok((fields, detail))
}

struct StoredFields {
    actor: String,
    client: String,
    subject: String,
    outcome: String,
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

fn chain_mac(key: &hmac::Key, prev_hex: &str, canonical: &str) -> Option<String> {
    let prev = hex::decode(prev_hex).ok().filter(|p| p.len() == 32)?;
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(&prev);
    ctx.update(canonical.as_bytes());
    Some(hex::encode(ctx.sign().as_ref()))
}

/// The id of the sealed audit key in `signing_keys` (so master-key rotation re-wraps
/// it with the other signing keys, under the context `signing-key:<id>`).
pub const AUDIT_KEY_ID: &str = "audit-hmac-sha256";
/// A checkpoint is written after this many records…
pub const CHECKPOINT_RECORDS: i64 = 1000;
/// …or when the last one is older than this (checked at each append).
pub const CHECKPOINT_SECONDS: i64 = 600;

fn audit_key_context() -> String {
    format!("signing-key:{AUDIT_KEY_ID}")
}

/// Errors of the audit key and checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    /// Opening or sealing failed (for example the wrong master key).
    #[error("cannot open the audit key")]
    Seal(#[source] MasterKeyError),
    /// The stored audit key is not 32 bytes and a sequence number.
    #[error("the stored audit key is malformed")]
    Invalid,
    /// The database has no audit key (it was never opened by a verifier that keys the
    /// chain, or the key was deleted).
    #[error("the database holds no audit key: the audit chain is not keyed")]
    Missing,
    /// A checkpoint was requested from a process that loaded no signing key.
    #[error("no checkpoint signing key is loaded")]
    NoSigner,
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The keys of the audit chain: `K_audit`, the first keyed record, and the signer of
/// checkpoints (none in tools that only verify or rotate).
pub struct AuditKeys {
    mac: hmac::Key,
    keyed_from: i64,
    signer: Option<TokenSigner>,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKeys(keyed from record {})", self.keyed_from)
    }
}

impl AuditKeys {
    /// The sequence number of the transition record (the first keyed record).
    pub fn keyed_from(&self) -> i64 {
        self.keyed_from
    }
}

fn keys_from_plain(plain: &[u8], signer: Option<TokenSigner>) -> Result<AuditKeys, AuditKeyError> {
    if plain.len() != 40 {
        return Err(AuditKeyError::Invalid);
    }
    let (k, seq) = plain.split_at(32);
    let seq: [u8; 8] = seq.try_into().map_err(|_| AuditKeyError::Invalid)?;
    let keyed_from = i64::from_be_bytes(seq);
    if keyed_from < 1 {
        return Err(AuditKeyError::Invalid);
    }
    Ok(AuditKeys {
        mac: hmac::Key::new(hmac::HMAC_SHA256, k),
        keyed_from,
        signer,
    })
}

async fn stored_sealed<'e, E>(ex: E, id: &str) -> Result<Option<Vec<u8>>, DbError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT sealed FROM signing_keys WHERE id = $1")
        .bind(id.to_owned())
        .fetch_optional(ex)
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Reads the audit key (and, when `with_signer`, the token signing key that signs
/// checkpoints) without writing anything: for `audit verify`. `mk` may be a ring with
/// extra keys (see [`MasterKey::with_extra_keys`]).
pub async fn read_keys(db: &Db, mk: &MasterKey) -> Result<AuditKeys, AuditKeyError> {
    let sealed = stored_sealed(db.pool(), AUDIT_KEY_ID)
        .await?
        .ok_or(AuditKeyError::Missing)?;
    let plain = mk
        .open(&audit_key_context(), &sealed)
        .map_err(AuditKeyError::Seal)?;
    let signer = match stored_sealed(db.pool(), "token-es256").await? {
        Some(s) => {
            let bytes = mk
                .open(&crate::store::sessions::signing_key_context(), &s)
                .map_err(AuditKeyError::Seal)?;
            Some(TokenSigner::from_bytes(&bytes).map_err(|_| AuditKeyError::Invalid)?)
        }
        None => None,
    };
    keys_from_plain(&plain, signer)
}

/// Loads the audit key into `db` (every later [`Db::begin`] transaction appends with
/// it), creating it on first use together with the transition record — race-free across
/// replicas: the head row serializes the creators and the loser uses the winner's key.
/// `signer` signs checkpoints; without it none are written.
pub async fn load_key(
    db: &Db,
    mk: &MasterKey,
    signer: Option<TokenSigner>,
) -> Result<Arc<AuditKeys>, AuditKeyError> {
    if stored_sealed(db.pool(), AUDIT_KEY_ID).await?.is_none() {
        let mut tx = db.begin().await?;
        let (seq, prev, _, _) = bump_head(&mut tx).await?;
        if stored_sealed(&mut *tx, AUDIT_KEY_ID).await?.is_some() {
            // Another replica created it first.
            tx.rollback().await.map_err(DbError::from)?;
        } else {
            let mut plain = Zeroizing::new([0u8; 40]);
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut plain[..32]);
            plain[32..].copy_from_slice(&seq.to_be_bytes());
            let sealed = mk
                .seal(&audit_key_context(), plain.as_ref())
                .map_err(AuditKeyError::Seal)?;
            sqlx::query("INSERT INTO signing_keys (id, sealed, created_at) VALUES ($1, $2, $3)")
                .bind(AUDIT_KEY_ID)
                .bind(sealed.0)
                .bind(now())
                .execute(&mut *tx)
                .await
                .map_err(DbError::from)?;
            let keys = keys_from_plain(plain.as_ref(), None)?;
            let ev = AuditEvent {
                kind: AuditKind::Maintenance,
                actor: "system".into(),
                client: "-".into(),
                subject: "audit-chain".into(),
                outcome: "keyed".into(),
                detail: json!({ "mac": "hmac-sha256", "legacy_records": seq - 1 }),
            };
            write_record(&mut tx, &keys, seq, &prev, &ev).await?;
            tx.commit().await.map_err(DbError::from)?;
        }
    }
    let sealed = stored_sealed(db.pool(), AUDIT_KEY_ID)
        .await?
        .ok_or(AuditKeyError::Missing)?;
    let plain = mk
        .open(&audit_key_context(), &sealed)
        .map_err(AuditKeyError::Seal)?;
    let keys = Arc::new(keys_from_plain(&plain, signer)?);
    db.set_audit_keys(Arc::clone(&keys));
    Ok(keys)
}

/// Takes the next sequence number and returns `(seq, previous mac, last checkpoint
/// seq, its time)`. Taking the head row first serializes concurrent appenders.
const BUMP_HEAD: &str =
    "UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash, cp_seq, cp_ts";

const INSERT_RECORD: &str = "INSERT INTO audit_log (seq, ts, kind, actor, client, subject, outcome, detail, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

const INSERT_CHECKPOINT: &str =
    "INSERT INTO audit_checkpoints (seq, ts, mac, jws) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (seq) DO NOTHING";

const CHECKPOINT_HEAD: &str = "UPDATE audit_head SET cp_seq = $1, cp_ts = $2 WHERE id = 1";

/// The chain head an append continues, taken in the append's transaction
/// ([`push_take_head`], [`head_from`]).
#[derive(Debug, Clone)]
pub struct Head {
    /// The sequence number of the record to append.
    seq: i64,
    /// The MAC of the record before it.
    prev: String,
    /// The last checkpoint's sequence number and time.
    cp_seq: i64,
    cp_ts: i64,
}

/// Adds the statement that takes the next sequence number (and with it the write lock
/// on the head) to `batch`; its result is read with [`head_from`].
pub fn push_take_head(batch: &mut Batch<'_>) {
    batch.push(BUMP_HEAD, Vec::new());
}

/// The head taken by [`push_take_head`]'s statement.
pub fn head_from(r: &StmtResult) -> Result<Head, DbError> {
    let row = r.one()?;
    Ok(Head {
        seq: row.try_get(0)?,
        prev: row.try_get(1)?,
        cp_seq: row.try_get(2)?,
        cp_ts: row.try_get(3)?,
    })
}

async fn bump_head(tx: &mut Tx) -> Result<(i64, String, i64, i64), DbError> {
    let mut b = Batch::new();
    push_take_head(&mut b);
    let h = head_from(&tx.run(b).await?[0])?;
    Ok((h.seq, h.prev, h.cp_seq, h.cp_ts))
}

/// Adds record `seq` (linked to `prev`) with its MAC to `batch`; returns the MAC.
fn push_record(
    batch: &mut Batch<'_>,
    keys: &AuditKeys,
    seq: i64,
    prev: &str,
    ev: &AuditEvent,
) -> Result<String, DbError> {
    let ts = now();
    let (stored, detail) = stored_fields(ev)?;
    let f = RecordFields {
        kind: ev.kind.as_str(),
        actor: &stored.actor,
        client: &stored.client,
        subject: &stored.subject,
        outcome: &stored.outcome,
    };
    let detail_text = serde_json_canonicalizer::to_string(&detail).map_err(DbError::Encode)?;
    let canon = canonical(seq, ts, &f, &detail).map_err(DbError::Encode)?;
    let mac = chain_mac(&keys.mac, prev, &canon).ok_or(DbError::Corrupt(
        "the audit head hash is not 32 bytes of hex",
    ))?;
    // The trigger `audit_head_follows` sets the head's hash to `mac`.
    batch.push(
        INSERT_RECORD,
        vec![
            seq.into(),
            ts.into(),
            ev.kind.as_str().into(),
            stored.actor.into(),
            stored.client.into(),
            stored.subject.into(),
            stored.outcome.into(),
            detail_text.into(),
            prev.to_owned().into(),
            mac.clone().into(),
        ],
    );
    Ok(mac)
}

/// Writes record `seq` (linked to `prev`) with its MAC; returns the MAC.
async fn write_record(
    tx: &mut Tx,
    keys: &AuditKeys,
    seq: i64,
    prev: &str,
    ev: &AuditEvent,
) -> Result<String, DbError> {
    let mut b = Batch::new();
    let mac = push_record(&mut b, keys, seq, prev, ev)?;
    tx.run(b).await?;
    Ok(mac)
}

/// Adds the append of `ev` after `head` to `batch` (bounded and escaped, see the module
/// docs): the record, and a signed checkpoint when one is due. Returns its sequence
/// number. `keys`: the transaction's ([`Tx::audit_keys`]).
pub fn push_append(
    batch: &mut Batch<'_>,
    keys: &AuditKeys,
    head: &Head,
    ev: &AuditEvent,
) -> Result<i64, DbError> {
    let mac = push_record(batch, keys, head.seq, &head.prev, ev)?;
    if let Some(signer) = &keys.signer {
        let ts = now();
        if head.seq - head.cp_seq >= CHECKPOINT_RECORDS || ts - head.cp_ts >= CHECKPOINT_SECONDS {
            push_checkpoint(batch, signer, head.seq, &mac, ts)?;
        }
    }
    Ok(head.seq)
}

/// Appends `ev` inside `tx` (bounded and escaped, see the module docs); returns its
/// sequence number. Fails when no audit key is loaded ([`load_key`]). Two round trips;
/// a caller with statements of its own batches them with [`push_take_head`] and
/// [`push_append`].
pub async fn append(tx: &mut Tx, ev: &AuditEvent) -> Result<i64, DbError> {
    let keys = tx.audit_keys().ok_or(DbError::NoAuditKey)?;
    let mut b = Batch::new();
    push_take_head(&mut b);
    let head = head_from(&tx.run(b).await?[0])?;
    let mut b = Batch::new();
    let seq = push_append(&mut b, &keys, &head, ev)?;
    tx.run(b).await?;
    Ok(seq)
}

/// Appends `ev` in its own transaction.
pub async fn append_now(db: &Db, ev: &AuditEvent) -> Result<i64, DbError> {
    let mut tx = db.begin().await?;
    let seq = append(&mut tx, ev).await?;
    tx.commit().await?;
    Ok(seq)
}

/// A signed checkpoint of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// The last record it covers.
    pub seq: i64,
    /// That record's MAC (hex).
    pub mac: String,
    /// When it was taken (Unix seconds).
    pub ts: i64,
    /// `{iss, typ, seq, mac, ts}` as an ES256 compact JWS under the token key, with the
    /// JOSE header `typ` [`CHECKPOINT_TYP`] (checkpoints written before it: `JWT` and an
    /// `exp` in 9999, still verified here).
    pub jws: String,
}

/// The JOSE header `typ` of a checkpoint: distinct from the tokens' `JWT`, and the
/// checkpoint carries no `exp`, so that a checkpoint is never accepted as a token.
pub const CHECKPOINT_TYP: &str = "cvm-audit-checkpoint+jwt";

/// Adds a signed checkpoint of record `seq` (MAC `mac`) at `ts` to `batch`.
fn push_checkpoint(
    batch: &mut Batch<'_>,
    signer: &TokenSigner,
    seq: i64,
    mac: &str,
    ts: i64,
) -> Result<Checkpoint, DbError> {
    let jws = signer
        .sign_typed(
            CHECKPOINT_TYP,
            &json!({
                "iss": "cvm-verifier", "typ": "audit-checkpoint",
                "seq": seq, "mac": mac, "ts": ts,
            }),
        )
        .map_err(|_| DbError::Corrupt("the token key cannot sign an audit checkpoint"))?;
    batch.push(
        INSERT_CHECKPOINT,
        vec![
            seq.into(),
            ts.into(),
            mac.to_owned().into(),
            jws.clone().into(),
        ],
    );
    batch.push(CHECKPOINT_HEAD, vec![seq.into(), ts.into()]);
    Ok(Checkpoint {
        seq,
        mac: mac.to_owned(),
        ts,
        jws,
    })
}

async fn write_checkpoint(
    tx: &mut Tx,
    signer: &TokenSigner,
    seq: i64,
    mac: &str,
    ts: i64,
) -> Result<Checkpoint, DbError> {
    let mut b = Batch::new();
    let cp = push_checkpoint(&mut b, signer, seq, mac, ts)?;
    tx.run(b).await?;
    Ok(cp)
}

/// Signs and stores a checkpoint of the current head now (needs a loaded key with a
/// signer); returns it.
pub async fn checkpoint(db: &Db) -> Result<Checkpoint, AuditKeyError> {
    let mut tx = db.begin().await?;
    let keys = tx.audit_keys().ok_or(DbError::NoAuditKey)?;
    let signer = keys.signer.as_ref().ok_or(AuditKeyError::NoSigner)?;
    let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut *tx)
        .await
        .map_err(DbError::from)?;
    let seq: i64 = row.try_get(0).map_err(DbError::from)?;
    let mac: String = row.try_get(1).map_err(DbError::from)?;
    let cp = write_checkpoint(&mut tx, signer, seq, &mac, now()).await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(cp)
}

/// Stored checkpoints with `ts >= since`, in order.
pub async fn checkpoints(db: &Db, since: i64) -> Result<Vec<Checkpoint>, DbError> {
    let rows =
        sqlx::query("SELECT seq, ts, mac, jws FROM audit_checkpoints WHERE ts >= $1 ORDER BY seq")
            .bind(since)
            .fetch_all(db.pool())
            .await?;
    rows.iter()
        .map(|r| {
            Ok(Checkpoint {
                seq: r.try_get(0)?,
                ts: r.try_get(1)?,
                mac: r.try_get(2)?,
                jws: r.try_get(3)?,
            })
        })
        .collect()
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
    /// The first keyed record (earlier ones follow the legacy unkeyed rule).
    pub keyed_from: i64,
    /// Stored checkpoints checked.
    pub checkpoints: usize,
    /// Exported checkpoints checked.
    pub exported_checkpoints: usize,
    /// Whether the chain is intact.
    pub ok: bool,
    /// The first problem found.
    pub problem: Option<String>,
}

/// Where a checkpoint being checked came from.
#[derive(Clone, Copy)]
enum CpSource {
    Stored,
    Exported,
}

impl CpSource {
    fn as_str(self) -> &'static str {
        match self {
            CpSource::Stored => "stored",
            CpSource::Exported => "exported",
        }
    }
}

/// Checks a checkpoint's signature and that its signed claims are its fields.
fn check_checkpoint_signature(
    cp: &Checkpoint,
    source: CpSource,
    signer: Option<&TokenSigner>,
) -> Option<String> {
    let what = format!("the {} checkpoint at record {}", source.as_str(), cp.seq);
    let Some(signer) = signer else {
        return Some(format!(
            "{what} cannot be checked: the database holds no token key"
        ));
    };
    let Ok(claims) = signer
        .verify_typed(CHECKPOINT_TYP, &cp.jws)
        .or_else(|_| signer.verify_legacy_checkpoint(&cp.jws, now()))
    else {
        return Some(format!("{what} is not signed by this verifier's token key"));
    };
    let matches = claims.get("typ").and_then(Value::as_str) == Some("audit-checkpoint")
        && claims.get("seq").and_then(Value::as_i64) == Some(cp.seq)
        && claims.get("mac").and_then(Value::as_str) == Some(cp.mac.as_str())
        && claims.get("ts").and_then(Value::as_i64) == Some(cp.ts);
    (!matches).then(|| format!("{what} does not match what was signed"))
}

/// [`verify_with`] the audit key loaded into `db` ([`load_key`]), without exported
/// checkpoints.
pub async fn verify(db: &Db) -> Result<ChainReport, DbError> {
    let keys = db.audit_keys().ok_or(DbError::NoAuditKey)?;
    verify_with(db, &keys, &[]).await
}

/// Recomputes the whole chain with `keys` (legacy records before the transition record
/// with the unkeyed rule) and compares it with the head, with every stored checkpoint
/// and with `exported` checkpoints (kept out of band).
pub async fn verify_with(
    db: &Db,
    keys: &AuditKeys,
    exported: &[Checkpoint],
) -> Result<ChainReport, DbError> {
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(db.pool())
        .await?;
    let head_seq: i64 = head.try_get(0)?;
    let head_hash: String = head.try_get(1)?;
    let stored = checkpoints(db, i64::MIN).await?;
    let mut problem = None;
    // Every checkpoint, by the record it covers.
    let mut wanted: std::collections::BTreeMap<i64, Vec<(CpSource, &Checkpoint)>> =
        std::collections::BTreeMap::new();
    for (source, list) in [
        (CpSource::Stored, &stored[..]),
        (CpSource::Exported, exported),
    ] {
        for cp in list {
            if problem.is_none() {
                problem = check_checkpoint_signature(cp, source, keys.signer.as_ref());
            }
            wanted.entry(cp.seq).or_default().push((source, cp));
        }
    }
    let mut expected_seq = 1i64;
    let mut running = GENESIS.to_owned();
    let mut after = 0i64;
    'outer: while problem.is_none() {
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
            if let Some(p) = check_record(&r, expected_seq, &running, keys) {
                problem = Some(p);
                break 'outer;
            }
            for (source, cp) in wanted.get(&r.seq).into_iter().flatten() {
                if cp.mac != r.hash {
                    problem = Some(format!(
                        "record {} does not match the {} checkpoint signed for it: the log was rewritten",
                        r.seq,
                        source.as_str()
                    ));
                    break 'outer;
                }
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
        } else if records < keys.keyed_from {
            problem = Some(format!(
                "the keyed chain starts at record {} but the log ends at record {records}: records were removed",
                keys.keyed_from
            ));
        } else if let Some((seq, cps)) = wanted.range(records + 1..).next() {
            let source = cps.first().map_or("a", |(s, _)| s.as_str());
            problem = Some(format!(
                "the {source} checkpoint at record {seq} is beyond the log's end (record {records}): records after it were removed and the head rewritten"
            ));
        }
    }
    Ok(ChainReport {
        records,
        head_seq,
        head_hash,
        keyed_from: keys.keyed_from,
        checkpoints: stored.len(),
        exported_checkpoints: exported.len(),
        ok: problem.is_none(),
        problem,
    })
}

fn check_record(
    r: &AuditRecord,
    expected_seq: i64,
    running: &str,
    keys: &AuditKeys,
) -> Option<String> {
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
    let expected = if r.seq < keys.keyed_from {
        chain_hash(running, &canon)
    } else {
        chain_mac(&keys.mac, running, &canon)
    };
    match expected {
        Some(h) if h == r.hash => None,
        _ => Some(format!(
            "record {} was modified or forged (its MAC does not match its contents)",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::master::MasterKey;

    fn ev(subject: &str, detail: Value) -> AuditEvent {
        AuditEvent {
            kind: AuditKind::Maintenance,
            actor: "system".into(),
            client: "-".into(),
            subject: subject.into(),
            outcome: "ok".into(),
            detail,
        }
    }

    async fn fresh() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("v.db").to_str().unwrap())
            .await
            .unwrap();
        (dir, db)
    }

    /// What versions before the keyed chain wrote: `hash = SHA-256(prev || JCS)`.
    async fn append_legacy(db: &Db, e: &AuditEvent) {
        let mut tx = db.begin().await.unwrap();
        let (seq, prev, _, _) = bump_head(&mut tx).await.unwrap();
        let ts = now();
        let f = RecordFields {
            kind: e.kind.as_str(),
            actor: &e.actor,
            client: &e.client,
            subject: &e.subject,
            outcome: &e.outcome,
        };
        let canon = canonical(seq, ts, &f, &e.detail).unwrap();
        let hash = chain_hash(&prev, &canon).unwrap();
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
        .bind(serde_json_canonicalizer::to_string(&e.detail).unwrap())
        .bind(&prev)
        .bind(&hash)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    #[test]
    fn sanitize_escapes_and_bounds() {
        assert_eq!(sanitize("plain", 64), ("plain".into(), false));
        let (s, cut) = sanitize("a\u{1b}[2J\nb\\c\u{202e}d\u{7f}", 64);
        assert!(!cut);
        assert_eq!(s, "a\\u{1b}[2J\\nb\\\\c\\u{202e}d\\u{7f}");
        assert!(!s.chars().any(must_escape_unescaped));
        let (s, cut) = sanitize(&"é".repeat(100), 11);
        assert!(cut);
        assert_eq!(s, format!("{}…", "é".repeat(5)));
        // Escapes count against the bound: no growth beyond it.
        let (s, cut) = sanitize(&"\u{1}".repeat(1000), 100);
        assert!(cut && s.len() <= 100 + '…'.len_utf8());
    }

    /// Red-team round 2, finding 10: invisible format characters outside the old list
    /// were stored raw. Every Cf character is escaped now.
    #[test]
    fn every_format_character_is_escaped() {
        for c in [
            '\u{ad}',
            '\u{61c}',
            '\u{180e}',
            '\u{fff9}',
            '\u{fffa}',
            '\u{fffb}',
            '\u{e0001}',
            '\u{e0041}',
            '\u{e007f}',
            '\u{200b}',
            '\u{2066}',
            '\u{feff}',
        ] {
            let (s, _) = sanitize(&format!("a{c}b"), 64);
            assert_eq!(
                s,
                format!("a\\u{{{:x}}}b", u32::from(c)),
                "{:x}",
                u32::from(c)
            );
        }
        for c in ['a', 'é', '\u{e0080}', '\u{2070}', '\u{1f600}'] {
            assert_eq!(sanitize(&c.to_string(), 64).0, c.to_string());
        }
        assert!(FORMAT_CHARS.windows(2).all(|w| w[0].1 < w[1].0));
    }

    fn must_escape_unescaped(c: char) -> bool {
        c != '\\' && must_escape(c)
    }

    #[tokio::test]
    async fn appends_need_the_audit_key() {
        let (_dir, db) = fresh().await;
        let err = append_now(&db, &ev("x", json!({}))).await.unwrap_err();
        assert!(matches!(err, DbError::NoAuditKey), "{err}");
    }

    /// Oversized and hostile input is stored bounded and escaped, marked truncated.
    #[tokio::test]
    async fn records_are_bounded_and_escaped() {
        let (_dir, db) = fresh().await;
        load_key(&db, &MasterKey::generate(), None).await.unwrap();
        let big = "A".repeat(500 << 10);
        let hostile = "x\u{1b}[31mFAKE\nseq=9 accepted\r";
        let mut e = ev(
            &format!("{hostile}{big}"),
            json!({
                "message": big, "path": hostile, "list": vec![1; 1000],
                "deep": [[[[[[[[[[[["bottom"]]]]]]]]]]]],
            }),
        );
        e.actor = hostile.repeat(100);
        append_now(&db, &e).await.unwrap();
        let r = list(&db, 0, 0, 10).await.unwrap().pop().unwrap();
        let size = r.actor.len()
            + r.client.len()
            + r.subject.len()
            + r.outcome.len()
            + r.detail.len()
            + r.kind.len();
        assert!(size <= MAX_RECORD, "record of {size} bytes");
        for field in [&r.actor, &r.subject, &r.detail] {
            assert!(
                !field.chars().any(|c| c.is_control()),
                "raw control character in {field:?}"
            );
        }
        assert!(
            r.subject.starts_with("x\\u{1b}[31mFAKE\\nseq=9"),
            "{}",
            r.subject
        );
        let detail: Value = serde_json::from_str(&r.detail).unwrap();
        assert_eq!(detail["truncated"], true);
        assert!(verify(&db).await.unwrap().ok);
        // A small, clean event is stored exactly.
        let clean = ev("workload:web", json!({"a": "b"}));
        append_now(&db, &clean).await.unwrap();
        let r = list(&db, 0, 0, 10).await.unwrap().pop().unwrap();
        assert_eq!(
            (r.subject.as_str(), r.detail.as_str()),
            ("workload:web", "{\"a\":\"b\"}")
        );
    }

    /// Legacy (unkeyed) records stay verifiable up to the transition record, after which
    /// the chain is keyed; changing a legacy record is still detected.
    #[tokio::test]
    async fn legacy_records_then_keyed_chain() {
        let (_dir, db) = fresh().await;
        for i in 0..3 {
            append_legacy(&db, &ev(&format!("legacy:{i}"), json!({"i": i}))).await;
        }
        let mk = MasterKey::generate();
        let keys = load_key(&db, &mk, None).await.unwrap();
        assert_eq!(keys.keyed_from(), 4);
        append_now(&db, &ev("keyed", json!({}))).await.unwrap();
        let report = verify(&db).await.unwrap();
        assert!(report.ok, "{:?}", report.problem);
        assert_eq!((report.records, report.keyed_from), (5, 4));
        let transition = list(&db, 0, 3, 1).await.unwrap().pop().unwrap();
        assert_eq!(
            (transition.subject.as_str(), transition.outcome.as_str()),
            ("audit-chain", "keyed")
        );
        // A second load (a replica, a restart) reuses the key: no second transition.
        load_key(&db, &mk, None).await.unwrap();
        assert_eq!(verify(&db).await.unwrap().records, 5);
        // Rewriting a legacy record (and re-hashing the legacy prefix) breaks the link
        // to the keyed transition record.
        sqlx::query("DROP TRIGGER audit_log_no_update")
            .execute(db.pool())
            .await
            .unwrap();
        sqlx::query("UPDATE audit_log SET outcome = 'forged' WHERE seq = 2")
            .execute(db.pool())
            .await
            .unwrap();
        let report = verify(&db).await.unwrap();
        assert!(!report.ok);
        assert!(report.problem.unwrap().contains("record 2 was modified"));
    }

    /// The attack of issue 14 finding 8 at the library level: a record forged with the
    /// unkeyed rule and the head moved to it.
    #[tokio::test]
    async fn forged_record_with_the_unkeyed_rule_is_detected() {
        let (_dir, db) = fresh().await;
        load_key(&db, &MasterKey::generate(), None).await.unwrap();
        append_now(&db, &ev("real", json!({}))).await.unwrap();
        assert!(verify(&db).await.unwrap().ok);
        append_legacy(&db, &ev("forged", json!({"released": true}))).await;
        let report = verify(&db).await.unwrap();
        assert!(!report.ok);
        assert!(report
            .problem
            .unwrap()
            .contains("record 3 was modified or forged"));
    }
}
