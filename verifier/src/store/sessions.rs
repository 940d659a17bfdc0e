//! KBS sessions, the attested-guest inventory, and the token signing key.
//!
//! Sessions live in the database, so any replica can finish a session another began.
//! A session moves `challenged` → `attested` (the nonce is consumed by a conditional
//! `UPDATE` in the transaction that records the accepted attestation, so a nonce is
//! accepted at most once even across replicas) or `failed`. (`verifying`, an
//! intermediate state older versions set inside that transaction, is treated like
//! `challenged` by [`fail`].)

use serde::Serialize;
use sqlx::{Any, AnyConnection, Row};

use crate::crypto::master::{MasterKey, MasterKeyError};
use crate::crypto::token::TokenSigner;
use crate::db::{now, Batch, Db, DbError, StmtResult, Tx};
use crate::store::workloads::{self, Workload};

/// A stored session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Session id (the cookie value).
    pub id: String,
    /// `snp` or `tdx`.
    pub tee: String,
    /// The challenge nonce (base64).
    pub nonce: String,
    /// A workload named by the guest in `extra-params`.
    pub workload_hint: Option<String>,
    /// `challenged`, `verifying`, `attested`, `failed`.
    pub state: String,
    /// Expiry (Unix seconds).
    pub expires_at: i64,
    /// The matched workload, once attested.
    pub workload: Option<String>,
    /// The TEE public key JWK (JSON text), once attested.
    pub tee_pubkey: Option<String>,
    /// The inventory entry, once attested.
    pub inventory_id: Option<String>,
    /// `hardware` or `insecure-emulated`, once attested.
    pub trust: Option<String>,
    /// SHA-256 (hex) of the attestation token issued, once attested (`None` for sessions
    /// attested by versions before the token binding).
    pub token_sha256: Option<String>,
}

/// Creates a challenged session.
pub async fn create(
    db: &Db,
    tee: &str,
    nonce: &str,
    hint: Option<&str>,
    ttl: i64,
) -> Result<Session, DbError> {
    let id = uuid::Uuid::new_v4().to_string();
    let t = now();
    let mut conn = db.ephemeral().await?;
    sqlx::query(
        "INSERT INTO kbs_sessions (id, tee, nonce, workload_hint, state, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, 'challenged', $5, $6)",
    )
    .bind(&id)
    .bind(tee)
    .bind(nonce)
    .bind(hint)
    .bind(t)
    .bind(t + ttl)
    .execute(&mut *conn)
    .await?;
    drop(conn);
    Ok(Session {
        id,
        tee: tee.into(),
        nonce: nonce.into(),
        workload_hint: hint.map(str::to_owned),
        state: "challenged".into(),
        expires_at: t + ttl,
        workload: None,
        tee_pubkey: None,
        inventory_id: None,
        trust: None,
        token_sha256: None,
    })
}

/// Loads a session.
pub async fn get(db: &Db, id: &str) -> Result<Option<Session>, DbError> {
    fetch(&mut *db.read().await?, id).await
}

/// Loads a session on a connection the caller holds (to read more on it).
pub async fn get_on(conn: &mut AnyConnection, id: &str) -> Result<Option<Session>, DbError> {
    fetch(conn, id).await
}

async fn fetch<'e, E>(ex: E, id: &str) -> Result<Option<Session>, DbError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let row = sqlx::query(
        "SELECT id, tee, nonce, workload_hint, state, expires_at, workload, tee_pubkey, inventory_id, trust, \
         token_sha256 FROM kbs_sessions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(ex)
    .await?;
    row.as_ref().map(session_from_row).transpose()
}

fn session_from_row(r: &sqlx::any::AnyRow) -> Result<Session, DbError> {
    Ok(Session {
        id: r.try_get(0)?,
        tee: r.try_get(1)?,
        nonce: r.try_get(2)?,
        workload_hint: r.try_get(3)?,
        state: r.try_get(4)?,
        expires_at: r.try_get(5)?,
        workload: r.try_get(6)?,
        tee_pubkey: r.try_get(7)?,
        inventory_id: r.try_get(8)?,
        trust: r.try_get(9)?,
        token_sha256: r.try_get(10)?,
    })
}

/// Loads session `id` and, while it is challenged and unexpired at `now`, the workloads
/// an attestation of it may match (the one it names, or every workload, by name) — in
/// one statement (the attestation's only read). `None`: no such session.
pub async fn get_for_attest(
    db: &Db,
    id: &str,
    now: i64,
) -> Result<Option<(Session, Vec<Workload>)>, DbError> {
    let rows = sqlx::query(
        "SELECT s.id, s.tee, s.nonce, s.workload_hint, s.state, s.expires_at, s.workload, s.tee_pubkey, \
         s.inventory_id, s.trust, s.token_sha256, w.name, w.policy, w.resources, w.revoked, w.tee \
         FROM kbs_sessions s LEFT JOIN workloads w ON s.state = 'challenged' AND s.expires_at > $1 \
         AND (s.workload_hint IS NULL OR w.name = s.workload_hint) \
         WHERE s.id = $2 ORDER BY w.name",
    )
    .bind(now)
    .bind(id)
    .fetch_all(&mut *db.read().await?)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let session = session_from_row(first)?;
    let mut candidates = Vec::with_capacity(rows.len());
    for r in &rows {
        if r.try_get::<Option<String>, _>(11)?.is_some() {
            candidates.push(workloads::from_row_at(r, 11)?);
        }
    }
    Ok(Some((session, candidates)))
}

/// Marks a session whose challenge was not used successfully as failed, so its nonce
/// cannot be tried again (an attested session is left alone).
pub async fn fail(tx: &mut Tx, id: &str) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE kbs_sessions SET state = 'failed' WHERE id = $1 AND state IN ('challenged', 'verifying')",
    )
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What an accepted attestation records on its session.
#[derive(Debug, Clone)]
pub struct Attested<'a> {
    /// Matched workload.
    pub workload: &'a str,
    /// TEE public key JWK (JSON text).
    pub tee_pubkey: &'a str,
    /// Trust level name.
    pub trust: &'a str,
    /// New expiry (that of the token).
    pub expires_at: i64,
    /// SHA-256 (hex) of the token issued.
    pub token_sha256: &'a str,
}

/// Adds the consumption of the session's challenge `nonce` to `batch`: one conditional
/// `UPDATE` marks the session attested, bound to guest `g`'s inventory entry (which
/// [`push_record_guest`] must have written earlier in the transaction); only a session
/// still `challenged` with this nonce and unexpired changes. The caller won iff it
/// changed one row ([`StmtResult::rows_affected`]; otherwise: replayed, expired or
/// unknown).
pub fn push_attest<'a>(
    batch: &mut Batch<'a>,
    id: &'a str,
    nonce: &'a str,
    g: &GuestIdentity<'a>,
    a: &Attested<'a>,
) {
    batch.push(
        "UPDATE kbs_sessions SET state = 'attested', workload = $1, tee_pubkey = $2, \
         inventory_id = (SELECT i.id FROM inventory i WHERE i.workload = $3 AND i.tee = $4 \
         AND i.platform_id = $5 AND i.measurement = $6), trust = $7, expires_at = $8, token_sha256 = $9 \
         WHERE id = $10 AND nonce = $11 AND state = 'challenged' AND expires_at > $12",
        vec![
            a.workload.into(),
            a.tee_pubkey.into(),
            g.workload.into(),
            g.tee.into(),
            g.platform_id.into(),
            g.measurement.into(),
            a.trust.into(),
            a.expires_at.into(),
            a.token_sha256.into(),
            id.into(),
            nonce.into(),
            now().into(),
        ],
    );
}

/// Deletes sessions that expired more than `grace` seconds ago; returns how many.
pub async fn purge_expired(db: &Db, grace: i64) -> Result<u64, DbError> {
    let mut tx = db.begin().await?;
    let n = sqlx::query("DELETE FROM kbs_sessions WHERE expires_at < $1")
        .bind(now() - grace)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(n)
}

/// One attested guest.
#[derive(Debug, Clone, Serialize)]
pub struct InventoryEntry {
    /// Entry id.
    pub id: String,
    /// Workload.
    pub workload: String,
    /// `snp` or `tdx`.
    pub tee: String,
    /// Platform id from the verified certificate (SNP VCEK hwID = unmasked CHIP_ID,
    /// `vlek:<CHIP_ID hex>`; TDX `tdx-ppid:<hex>` / `tdx-platform:<hex>`; entries
    /// recorded before schema v5: TDX `fmspc:<hex>`, SNP CHIP_ID, all zero if masked;
    /// VLEK entries recorded before round 2 of issue 14: `vlek:<key digest>`).
    pub platform_id: String,
    /// Launch measurement (hex).
    pub measurement: String,
    /// `hardware` or `insecure-emulated`.
    pub trust: String,
    /// First accepted attestation.
    pub first_seen: i64,
    /// Last accepted attestation.
    pub last_seen: i64,
    /// Accepted attestations.
    pub attestations: i64,
    /// Whether the guest's grants are revoked.
    pub revoked: bool,
}

/// The identity of an attested guest.
#[derive(Debug, Clone)]
pub struct GuestIdentity<'a> {
    /// Workload.
    pub workload: &'a str,
    /// TEE.
    pub tee: &'a str,
    /// Platform id, from the verified endorsement certificate (never CHIP_ID).
    pub platform_id: &'a str,
    /// The id an inventory before schema v5 gave this platform, if different (TDX:
    /// `fmspc:<hex>`): revocations recorded under it still apply.
    pub legacy_platform_id: Option<&'a str>,
    /// Measurement (hex).
    pub measurement: &'a str,
    /// Trust level name.
    pub trust: &'a str,
}

/// Records an accepted attestation; returns the entry (with its revocation state).
///
/// A *guest* is a platform (from the verified certificate) running a measurement; its
/// entry is per workload. The returned entry is revoked when any entry of the same TEE,
/// platform and measurement is revoked — whichever workload it was recorded for, and
/// under the legacy platform id too — so a revoked guest cannot come back by naming
/// another workload or changing any other host-controlled input.
pub async fn record_guest(tx: &mut Tx, g: &GuestIdentity<'_>) -> Result<InventoryEntry, DbError> {
    let mut b = Batch::new();
    push_record_guest(&mut b, g);
    guest_from(&tx.run(b).await?[0])
}

/// Adds [`record_guest`]'s statement to `batch`; its result is read with [`guest_from`].
pub fn push_record_guest<'a>(batch: &mut Batch<'a>, g: &GuestIdentity<'a>) {
    let t = now();
    // One statement: the upsert, and whether any entry of this TEE, measurement and
    // platform (or its legacy id) is revoked (the subquery of RETURNING). The entry just
    // written is among those counted, which changes nothing: revoked itself, it is
    // refused either way.
    batch.push(
        "INSERT INTO inventory (id, workload, tee, platform_id, measurement, trust, first_seen, last_seen, attestations, revoked) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, 0) \
         ON CONFLICT (workload, tee, platform_id, measurement) DO UPDATE SET last_seen = excluded.last_seen, \
         trust = excluded.trust, attestations = inventory.attestations + 1 \
         RETURNING id, workload, tee, platform_id, measurement, trust, first_seen, last_seen, attestations, revoked, \
         (SELECT COUNT(*) FROM inventory r WHERE r.revoked <> 0 AND r.tee = $9 AND r.measurement = $10 \
          AND (r.platform_id = $11 OR r.platform_id = $12))",
        vec![
            uuid::Uuid::new_v4().to_string().into(),
            g.workload.into(),
            g.tee.into(),
            g.platform_id.into(),
            g.measurement.into(),
            g.trust.into(),
            t.into(),
            t.into(),
            g.tee.into(),
            g.measurement.into(),
            g.platform_id.into(),
            g.legacy_platform_id.unwrap_or(g.platform_id).into(),
        ],
    );
}

/// The entry [`push_record_guest`]'s statement returned (with its revocation state).
pub fn guest_from(r: &StmtResult) -> Result<InventoryEntry, DbError> {
    let row = r.one()?;
    let mut entry = inventory_from_row(row)?;
    let revoked_matches: i64 = row.try_get(10)?;
    entry.revoked = entry.revoked || revoked_matches > 0;
    Ok(entry)
}

fn inventory_from_row(r: &sqlx::any::AnyRow) -> Result<InventoryEntry, DbError> {
    let revoked: i64 = r.try_get(9)?;
    Ok(InventoryEntry {
        id: r.try_get(0)?,
        workload: r.try_get(1)?,
        tee: r.try_get(2)?,
        platform_id: r.try_get(3)?,
        measurement: r.try_get(4)?,
        trust: r.try_get(5)?,
        first_seen: r.try_get(6)?,
        last_seen: r.try_get(7)?,
        attestations: r.try_get(8)?,
        revoked: revoked != 0,
    })
}

const INV_COLUMNS: &str = "id, workload, tee, platform_id, measurement, trust, first_seen, last_seen, attestations, revoked";

/// Inventory entries; with `last_seen_before`, only those not seen since then (stale).
pub async fn inventory(
    db: &Db,
    last_seen_before: Option<i64>,
) -> Result<Vec<InventoryEntry>, DbError> {
    let rows = sqlx::query(&format!(
        "SELECT {INV_COLUMNS} FROM inventory WHERE last_seen < $1 ORDER BY workload, last_seen"
    ))
    .bind(last_seen_before.unwrap_or(i64::MAX))
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(inventory_from_row).collect()
}

/// One inventory entry.
pub async fn inventory_entry(tx: &mut Tx, id: &str) -> Result<Option<InventoryEntry>, DbError> {
    let row = sqlx::query(&format!(
        "SELECT {INV_COLUMNS} FROM inventory WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(inventory_from_row).transpose()
}

/// Sets the revocation of an inventory entry; returns whether it exists.
pub async fn set_guest_revoked(tx: &mut Tx, id: &str, revoked: bool) -> Result<bool, DbError> {
    Ok(
        sqlx::query("UPDATE inventory SET revoked = $1 WHERE id = $2")
            .bind(i64::from(revoked))
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Errors loading the token signing key.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// Opening or sealing failed (for example the wrong master key).
    #[error("cannot open the token signing key")]
    Seal(#[source] MasterKeyError),
    /// The stored key is invalid.
    #[error("the stored token signing key is invalid")]
    Invalid,
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The audit key could not be loaded or created.
    #[error("cannot load the audit key")]
    AuditKey(#[from] crate::store::audit::AuditKeyError),
}

const SIGNING_KEY_ID: &str = "token-es256";

/// The sealing context of the token signing key.
pub fn signing_key_context() -> String {
    format!("signing-key:{SIGNING_KEY_ID}")
}

/// Loads the token signing key, creating it on first start (race-free across replicas).
pub async fn signing_key(db: &Db, mk: &MasterKey) -> Result<TokenSigner, SigningKeyError> {
    let fresh = TokenSigner::generate();
    let sealed = mk
        .seal(&signing_key_context(), &fresh.to_bytes())
        .map_err(SigningKeyError::Seal)?;
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO signing_keys (id, sealed, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
        .bind(SIGNING_KEY_ID)
        .bind(sealed.0)
        .bind(now())
        .execute(&mut *tx)
        .await
        .map_err(DbError::from)?;
    tx.commit().await.map_err(DbError::from)?;
    let row = sqlx::query("SELECT sealed FROM signing_keys WHERE id = $1")
        .bind(SIGNING_KEY_ID)
        .fetch_one(db.pool())
        .await
        .map_err(DbError::from)?;
    let stored: Vec<u8> = row.try_get(0).map_err(DbError::from)?;
    let bytes = mk
        .open(&signing_key_context(), &stored)
        .map_err(SigningKeyError::Seal)?;
    let signer = TokenSigner::from_bytes(&bytes).map_err(|_| SigningKeyError::Invalid)?;
    // Every process that signs tokens also appends keyed audit records and signs
    // checkpoints: load (or create) the audit key now.
    let checkpoints = TokenSigner::from_bytes(&bytes).map_err(|_| SigningKeyError::Invalid)?;
    crate::store::audit::load_key(db, mk, Some(checkpoints)).await?;
    Ok(signer)
}

/// Every sealed signing key (id, sealed), for master-key rotation.
pub async fn sealed_signing_keys(tx: &mut Tx) -> Result<Vec<(String, Vec<u8>)>, DbError> {
    let rows = sqlx::query("SELECT id, sealed FROM signing_keys")
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Replaces a sealed signing key (rotation).
pub async fn set_sealed_signing_key(tx: &mut Tx, id: &str, sealed: &[u8]) -> Result<(), DbError> {
    sqlx::query("UPDATE signing_keys SET sealed = $1 WHERE id = $2")
        .bind(sealed)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
