//! Persistent state, one module per concern. Every function takes the [`Db`] or a
//! transaction ([`Tx`](crate::db::Tx)) so that callers decide what commits together (a
//! key release and its audit record, a change and its audit record).

pub mod audit;
pub mod sessions;
pub mod users;
pub mod workloads;

use serde_json::json;

use crate::crypto::master::{MasterKey, MasterKeyError, Sealed};
use crate::db::{Db, DbError};

/// Errors of master-key rotation.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// A value could not be re-wrapped (for example, the old key is not the one in use).
    #[error("cannot re-wrap {what}")]
    Rewrap {
        /// Which value.
        what: String,
        /// The cause.
        #[source]
        source: MasterKeyError,
    },
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The audit key (needed for the rotation's audit record) could not be loaded.
    #[error("cannot load the audit key")]
    AuditKey(#[source] audit::AuditKeyError),
}

/// Re-wraps every data key from `old` to `new` in one transaction, with an audit record.
/// Returns the number of values re-wrapped.
pub async fn rotate_master_key(
    db: &Db,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<usize, RotateError> {
    // The audit key is sealed under the old key, or already under the new one when a
    // replica running with the new key created it.
    if audit::load_key(db, old, None).await.is_err() {
        audit::load_key(db, new, None)
            .await
            .map_err(RotateError::AuditKey)?;
    }
    let mut tx = db.begin().await?;
    let mut n = 0usize;
    // Values a replica already sealed under the new key (during an online rotation,
    // replicas run with the new key and accept the old one) are left as they are.
    let mut already = 0usize;
    let mut rewrap = |what: String, ctx: String, sealed: &[u8]| {
        if new.sealed_with_this_key(sealed) {
            already += 1;
            return Ok(None);
        }
        Sealed::rewrap(sealed, &ctx, old, new)
            .map(Some)
            .map_err(|source| RotateError::Rewrap { what, source })
    };
    for (path, sealed) in workloads::all_sealed(&mut tx).await? {
        let Some(s) = rewrap(
            format!("resource {path}"),
            workloads::resource_seal_context(&path),
            &sealed,
        )?
        else {
            continue;
        };
        workloads::set_sealed(&mut tx, &path, &s.0).await?;
        n += 1;
    }
    for (id, sealed) in users::sealed_secrets(&mut tx).await? {
        let Some(s) = rewrap(
            format!("the TOTP secret of user {id}"),
            users::totp_seal_context(&id),
            &sealed,
        )?
        else {
            continue;
        };
        users::set_sealed_secret(&mut tx, &id, &s.0).await?;
        n += 1;
    }
    for (id, sealed) in sessions::sealed_signing_keys(&mut tx).await? {
        let Some(s) = rewrap(
            format!("signing key {id}"),
            format!("signing-key:{id}"),
            &sealed,
        )?
        else {
            continue;
        };
        sessions::set_sealed_signing_key(&mut tx, &id, &s.0).await?;
        n += 1;
    }
    audit::append(
        &mut tx,
        &audit::AuditEvent {
            kind: audit::AuditKind::Maintenance,
            actor: "system".into(),
            client: "-".into(),
            subject: "master-key".into(),
            outcome: "rotated".into(),
            detail: json!({"old_key_id": old.id_hex(), "new_key_id": new.id_hex(), "values": n, "already_new": already}),
        },
    )
    .await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(n)
}
