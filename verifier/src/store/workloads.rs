//! Workloads (a policy with its allowed measurements, the TEE it is bound to, and the
//! resources it may receive) and resources (values sealed under the master key, bound to
//! their path).

use attestation::claims::Tee;
use attestation::policy::Policy;
use serde::{Deserialize, Serialize};
use sqlx::{Any, AnyConnection, Row};
use zeroize::Zeroizing;

use crate::crypto::master::{MasterKey, MasterKeyError};
use crate::db::{now, Batch, Db, DbError, StmtResult, Tx};

/// A workload: what a guest must prove, and what it then receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Unique name (same alphabet as resource path segments).
    pub name: String,
    /// The TEE whose guests this workload accepts; a guest of another TEE never matches
    /// it. `None` only for workloads stored before schema v4 ("unbound"): they match no
    /// guest until an admin sets the TEE.
    #[serde(default)]
    pub tee: Option<Tee>,
    /// The policy; `policy.measurements` are the reference values (allowed launch
    /// measurements). An empty list matches no guest unless the policy sets
    /// `allow_any_measurement`, which the KBS honours only for insecure-emulated evidence
    /// of a guest that names the workload in the `extra-params` of its auth request.
    #[serde(default)]
    pub policy: Policy,
    /// Resource paths `repo/type/tag` this workload may receive.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Revoked workloads receive nothing.
    #[serde(default)]
    pub revoked: bool,
}

/// Whether `s` is a valid path segment or name: 1-128 of `A-Za-z0-9._-`, not `.`/`..`.
pub fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Whether `p` is a valid resource path `repo/type/tag`.
pub fn valid_path(p: &str) -> bool {
    let parts: Vec<&str> = p.split('/').collect();
    parts.len() == 3 && parts.iter().all(|s| valid_segment(s))
}

/// The stored name of a TEE (`workloads.tee`).
pub fn tee_name(tee: Tee) -> &'static str {
    match tee {
        Tee::Snp => "snp",
        Tee::Tdx => "tdx",
    }
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<Workload, DbError> {
    from_row_at(r, 0)
}

/// A workload from columns `base…base+4` of `r`: name, policy, resources, revoked, tee.
pub(crate) fn from_row_at(r: &sqlx::any::AnyRow, base: usize) -> Result<Workload, DbError> {
    let policy: String = r.try_get(base + 1)?;
    let resources: String = r.try_get(base + 2)?;
    let revoked: i64 = r.try_get(base + 3)?;
    let tee: Option<String> = r.try_get(base + 4)?;
    let tee = match tee.as_deref() {
        None => None,
        Some("snp") => Some(Tee::Snp),
        Some("tdx") => Some(Tee::Tdx),
        Some(_) => return Err(DbError::Corrupt("a stored workload TEE is not valid")),
    };
    Ok(Workload {
        name: r.try_get(base)?,
        tee,
        policy: serde_json::from_str(&policy)
            .map_err(|_| DbError::Corrupt("a stored policy is not valid"))?,
        resources: serde_json::from_str(&resources)
            .map_err(|_| DbError::Corrupt("a stored resource list is not valid"))?,
        revoked: revoked != 0,
    })
}

/// All workloads, by name.
pub async fn list(db: &Db) -> Result<Vec<Workload>, DbError> {
    list_with(db.pool()).await
}

/// All workloads, by name, on a connection the caller holds.
pub async fn list_on(conn: &mut AnyConnection) -> Result<Vec<Workload>, DbError> {
    list_with(conn).await
}

async fn list_with<'e, E>(ex: E) -> Result<Vec<Workload>, DbError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let rows =
        sqlx::query("SELECT name, policy, resources, revoked, tee FROM workloads ORDER BY name")
            .fetch_all(ex)
            .await?;
    rows.iter().map(from_row).collect()
}

/// One workload.
pub async fn get(tx: &mut Tx, name: &str) -> Result<Option<Workload>, DbError> {
    let row =
        sqlx::query("SELECT name, policy, resources, revoked, tee FROM workloads WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?;
    row.as_ref().map(from_row).transpose()
}

/// One workload, outside a transaction.
pub async fn get_db(db: &Db, name: &str) -> Result<Option<Workload>, DbError> {
    get_with(db.pool(), name).await
}

/// One workload, on a connection the caller holds.
pub async fn get_on(conn: &mut AnyConnection, name: &str) -> Result<Option<Workload>, DbError> {
    get_with(conn, name).await
}

async fn get_with<'e, E>(ex: E, name: &str) -> Result<Option<Workload>, DbError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let row =
        sqlx::query("SELECT name, policy, resources, revoked, tee FROM workloads WHERE name = $1")
            .bind(name)
            .fetch_optional(ex)
            .await?;
    row.as_ref().map(from_row).transpose()
}

/// Creates or replaces a workload; returns whether it was created.
pub async fn upsert(tx: &mut Tx, w: &Workload) -> Result<bool, DbError> {
    let existed = get(tx, &w.name).await?.is_some();
    let policy = serde_json::to_string(&w.policy).map_err(DbError::Encode)?;
    let resources = serde_json::to_string(&w.resources).map_err(DbError::Encode)?;
    let t = now();
    sqlx::query(
        "INSERT INTO workloads (name, policy, resources, revoked, created_at, updated_at, tee) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (name) DO UPDATE SET policy = excluded.policy, resources = excluded.resources, \
         revoked = excluded.revoked, updated_at = excluded.updated_at, tee = excluded.tee",
    )
    .bind(&w.name)
    .bind(policy)
    .bind(resources)
    .bind(i64::from(w.revoked))
    .bind(t)
    .bind(t)
    .bind(w.tee.map(tee_name))
    .execute(&mut **tx)
    .await?;
    Ok(!existed)
}

/// Deletes a workload; returns whether it existed.
pub async fn delete(tx: &mut Tx, name: &str) -> Result<bool, DbError> {
    Ok(sqlx::query("DELETE FROM workloads WHERE name = $1")
        .bind(name)
        .execute(&mut **tx)
        .await?
        .rows_affected()
        == 1)
}

/// Resource metadata (never the value).
#[derive(Debug, Clone, Serialize)]
pub struct ResourceInfo {
    /// `repo/type/tag`.
    pub path: String,
    /// Creation time.
    pub created_at: i64,
    /// Last update.
    pub updated_at: i64,
}

fn resource_context(path: &str) -> String {
    format!("resource:{path}")
}

/// Stores a resource value sealed under the master key; returns whether it was created.
pub async fn put_resource(
    tx: &mut Tx,
    mk: &MasterKey,
    path: &str,
    value: &[u8],
) -> Result<bool, ResourceError> {
    let sealed = mk
        .seal(&resource_context(path), value)
        .map_err(ResourceError::Seal)?;
    let existed = sqlx::query("SELECT path FROM resources WHERE path = $1")
        .bind(path)
        .fetch_optional(&mut **tx)
        .await
        .map_err(DbError::from)?
        .is_some();
    let t = now();
    sqlx::query(
        "INSERT INTO resources (path, sealed, created_at, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (path) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
    )
    .bind(path)
    .bind(sealed.0)
    .bind(t)
    .bind(t)
    .execute(&mut **tx)
    .await
    .map_err(DbError::from)?;
    Ok(!existed)
}

/// Errors reading or writing resource values.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// Sealing or opening failed.
    #[error("cannot seal or open a resource value")]
    Seal(#[source] MasterKeyError),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Opens a resource value; `None` if there is no such resource.
pub async fn open_resource(
    tx: &mut Tx,
    mk: &MasterKey,
    path: &str,
) -> Result<Option<Zeroizing<Vec<u8>>>, ResourceError> {
    let row = sqlx::query("SELECT sealed FROM resources WHERE path = $1")
        .bind(path)
        .fetch_optional(&mut **tx)
        .await
        .map_err(DbError::from)?;
    let Some(row) = row else { return Ok(None) };
    let sealed: Vec<u8> = row.try_get(0).map_err(DbError::from)?;
    mk.open(&resource_context(path), &sealed)
        .map(Some)
        .map_err(ResourceError::Seal)
}

/// What a key release checks, read in one statement inside its transaction.
#[derive(Debug)]
pub struct ReleaseInputs {
    /// The session's workload (`None`: it was removed).
    pub workload: Option<Workload>,
    /// Whether the session's inventory entry is revoked (`None`: there is no such entry).
    pub guest_revoked: Option<bool>,
    /// The inventory entry's TEE, trust level and measurement (hex), as attested; the
    /// release re-checks them against the workload's current rules.
    pub guest: Option<(String, String, String)>,
    /// The resource's sealed value (`None`: no such resource). Opened only once every
    /// check passed ([`open_sealed`]).
    pub sealed: Option<Vec<u8>>,
}

/// Reads the workload `name`, the revocation, TEE, trust and measurement of inventory
/// entry `inventory_id` and the sealed value of resource `path`, in one statement.
pub async fn release_inputs(
    tx: &mut Tx,
    name: &str,
    inventory_id: &str,
    path: &str,
) -> Result<ReleaseInputs, DbError> {
    let mut b = Batch::new();
    push_release_inputs(&mut b, name, inventory_id, path);
    release_inputs_from(&tx.run(b).await?[0])
}

/// Adds [`release_inputs`]'s statement to `batch`; its result is read with
/// [`release_inputs_from`].
pub fn push_release_inputs<'a>(
    batch: &mut Batch<'a>,
    name: &'a str,
    inventory_id: &'a str,
    path: &'a str,
) {
    // Placeholders in ascending order of appearance (see crate::db).
    batch.push(
        "SELECT w.name, w.policy, w.resources, w.revoked, w.tee, \
         i.revoked, (SELECT r.sealed FROM resources r WHERE r.path = $1), \
         i.tee, i.trust, i.measurement \
         FROM (SELECT 1 AS one) AS o LEFT JOIN workloads w ON w.name = $2 \
         LEFT JOIN inventory i ON i.id = $3",
        vec![path.into(), name.into(), inventory_id.into()],
    );
}

/// The inputs [`push_release_inputs`]'s statement read.
pub fn release_inputs_from(r: &StmtResult) -> Result<ReleaseInputs, DbError> {
    let row = r.one()?;
    let found: Option<String> = row.try_get(0)?;
    let workload = match found {
        Some(_) => Some(from_row(row)?),
        None => None,
    };
    let guest_revoked: Option<i64> = row.try_get(5)?;
    let guest = match (
        row.try_get::<Option<String>, _>(7)?,
        row.try_get::<Option<String>, _>(8)?,
        row.try_get::<Option<String>, _>(9)?,
    ) {
        (Some(tee), Some(trust), Some(measurement)) => Some((tee, trust, measurement)),
        _ => None,
    };
    Ok(ReleaseInputs {
        workload,
        guest_revoked: guest_revoked.map(|r| r != 0),
        guest,
        sealed: row.try_get(6)?,
    })
}

/// Opens the sealed value of resource `path` (read by [`release_inputs`]).
pub fn open_sealed(
    mk: &MasterKey,
    path: &str,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, MasterKeyError> {
    mk.open(&resource_context(path), sealed)
}

/// Resource metadata, by path.
pub async fn list_resources(db: &Db) -> Result<Vec<ResourceInfo>, DbError> {
    let rows = sqlx::query("SELECT path, created_at, updated_at FROM resources ORDER BY path")
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ResourceInfo {
                path: r.try_get(0)?,
                created_at: r.try_get(1)?,
                updated_at: r.try_get(2)?,
            })
        })
        .collect()
}

/// Deletes a resource; returns whether it existed.
pub async fn delete_resource(tx: &mut Tx, path: &str) -> Result<bool, DbError> {
    Ok(sqlx::query("DELETE FROM resources WHERE path = $1")
        .bind(path)
        .execute(&mut **tx)
        .await?
        .rows_affected()
        == 1)
}

/// Every sealed value (table, key, context, sealed) for master-key rotation.
pub async fn all_sealed(tx: &mut Tx) -> Result<Vec<(String, Vec<u8>)>, DbError> {
    let rows = sqlx::query("SELECT path, sealed FROM resources")
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Replaces a resource's sealed value (rotation).
pub async fn set_sealed(tx: &mut Tx, path: &str, sealed: &[u8]) -> Result<(), DbError> {
    sqlx::query("UPDATE resources SET sealed = $1 WHERE path = $2")
        .bind(sealed)
        .bind(path)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The sealing context of a resource path.
pub fn resource_seal_context(path: &str) -> String {
    resource_context(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(valid_path("default/key/disk"));
        assert!(valid_path("a.b/c_d/e-f"));
        assert!(!valid_path("a/b"));
        assert!(!valid_path("a/../c"));
        assert!(!valid_path("a/b/c/d"));
        assert!(!valid_path("a//c"));
        assert!(!valid_path("a/b/c d"));
    }
}
