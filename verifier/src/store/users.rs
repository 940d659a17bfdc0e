//! Admin-plane users: a role, an API token stored only as a salted argon2id hash, and
//! (for admins) a TOTP secret sealed under the master key.
//!
//! Tokens look like `cvmv.<id>.<secret>`: the 8-byte id (hex) finds the row, the 32-byte
//! secret is checked against the argon2id PHC hash. An unknown id still costs one
//! argon2 verification, so response times do not reveal which ids exist.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use totp_rs::{Algorithm, TOTP};
use zeroize::Zeroizing;

use crate::crypto::master::{MasterKey, MasterKeyError};
use crate::crypto::{random_b64url, random_hex};
use crate::db::{now, Db, DbError, Tx};

/// A role on the admin plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including users. Requires TOTP.
    Admin,
    /// Workloads, reference values, resources, revocations.
    Operator,
    /// Read the audit log and the inventory.
    Auditor,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }
}

/// A user as listed (no secrets).
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Internal id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Whether a TOTP secret is enrolled.
    pub totp: bool,
    /// Creation time (Unix seconds).
    pub created_at: i64,
}

/// Freshly issued credentials, shown once.
#[derive(Debug, Serialize)]
pub struct Credentials {
    /// The user.
    pub user: User,
    /// The API token.
    pub token: Zeroizing<String>,
    /// The TOTP secret (base32), for admins.
    pub totp_secret: Option<Zeroizing<String>>,
    /// The otpauth:// URI, for admins.
    pub otpauth_uri: Option<Zeroizing<String>>,
}

/// Errors creating users.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The name is not acceptable.
    #[error("user names are 1 to 64 characters of a-z, 0-9, '.', '_' and '-'")]
    BadName,
    /// The name is taken.
    #[error("a user with this name already exists")]
    Exists,
    /// Hashing failed.
    #[error("cannot hash the token")]
    Hash,
    /// TOTP setup failed.
    #[error("cannot set up TOTP")]
    Totp,
    /// Sealing failed.
    #[error("cannot seal the TOTP secret")]
    Seal(#[source] MasterKeyError),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Whether `name` is an acceptable user name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn totp_for(secret: Vec<u8>, name: &str) -> Result<TOTP, UserError> {
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        30,
        secret,
        Some("cvm-verifier".into()),
        name.into(),
    )
    .map_err(|_| UserError::Totp)
}

fn totp_context(user_id: &str) -> String {
    format!("totp:{user_id}")
}

/// Creates a user with a fresh token (and TOTP secret for admins).
pub async fn create(
    tx: &mut Tx,
    mk: &MasterKey,
    name: &str,
    role: Role,
) -> Result<Credentials, UserError> {
    if !valid_name(name) {
        return Err(UserError::BadName);
    }
    let exists = sqlx::query("SELECT id FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(DbError::from)?;
    if exists.is_some() {
        return Err(UserError::Exists);
    }
    let id = uuid::Uuid::new_v4().to_string();
    let token_id = random_hex(8);
    let secret = Zeroizing::new(random_b64url(32));
    let salt = SaltString::generate(&mut OsRng);
    let hash = Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|_| UserError::Hash)?
        .to_string();
    let token = Zeroizing::new(format!("cvmv.{token_id}.{}", secret.as_str()));
    let (totp_sealed, totp_secret, uri) = if role == Role::Admin {
        let mut raw = Zeroizing::new(vec![0u8; 20]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut raw);
        let totp = totp_for(raw.to_vec(), name)?;
        let sealed = mk.seal(&totp_context(&id), &raw).map_err(UserError::Seal)?;
        (
            Some(sealed.0),
            Some(Zeroizing::new(totp.get_secret_base32())),
            Some(Zeroizing::new(totp.get_url())),
        )
    } else {
        (None, None, None)
    };
    let created_at = now();
    sqlx::query(
        "INSERT INTO users (id, name, role, token_id, token_hash, totp_sealed, created_at, disabled) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
    )
    .bind(&id)
    .bind(name)
    .bind(role.as_str())
    .bind(&token_id)
    .bind(&hash)
    .bind(totp_sealed)
    .bind(created_at)
    .execute(&mut **tx)
    .await
    .map_err(DbError::from)?;
    let user = User {
        id,
        name: name.into(),
        role,
        totp: totp_secret.is_some(),
        created_at,
    };
    Ok(Credentials {
        user,
        token,
        totp_secret,
        otpauth_uri: uri,
    })
}

/// The number of users.
pub async fn count(tx: &mut Tx) -> Result<i64, DbError> {
    Ok(sqlx::query("SELECT COUNT(*) FROM users")
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?)
}

/// All users.
pub async fn list(db: &Db) -> Result<Vec<User>, DbError> {
    let rows = sqlx::query("SELECT id, name, role, totp_sealed, created_at FROM users WHERE disabled = 0 ORDER BY name")
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|r| {
            let role: String = r.try_get(2)?;
            let totp: Option<Vec<u8>> = r.try_get(3)?;
            Ok(User {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                role: Role::parse(&role).ok_or(DbError::Corrupt("unknown role"))?,
                totp: totp.is_some(),
                created_at: r.try_get(4)?,
            })
        })
        .collect()
}

/// Deletes a user; returns whether it existed.
pub async fn delete(tx: &mut Tx, name: &str) -> Result<bool, DbError> {
    Ok(sqlx::query("DELETE FROM users WHERE name = $1")
        .bind(name)
        .execute(&mut **tx)
        .await?
        .rows_affected()
        == 1)
}

/// The number of admins other than `name`.
pub async fn other_admins(tx: &mut Tx, name: &str) -> Result<i64, DbError> {
    Ok(sqlx::query(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND name <> $1 AND disabled = 0",
    )
    .bind(name)
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?)
}

/// Why authentication failed (recorded in the audit log, never sent to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No or malformed credentials.
    Malformed,
    /// Unknown token id or wrong secret.
    BadToken,
    /// TOTP required but missing.
    TotpMissing,
    /// TOTP code wrong.
    TotpWrong,
}

impl AuthFailure {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Malformed => "malformed-credentials",
            AuthFailure::BadToken => "bad-token",
            AuthFailure::TotpMissing => "totp-missing",
            AuthFailure::TotpWrong => "totp-wrong",
        }
    }
}

/// The row needed to authenticate.
#[derive(Debug, Clone)]
pub struct AuthRow {
    /// The user.
    pub user: User,
    token_hash: String,
    totp_sealed: Option<Vec<u8>>,
}

/// Splits a token into its id and secret.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let mut it = token.splitn(3, '.');
    match (it.next(), it.next(), it.next()) {
        (Some("cvmv"), Some(id), Some(secret)) if id.len() == 16 && !secret.is_empty() => {
            Some((id, secret))
        }
        _ => None,
    }
}

/// Looks up the user holding token id `token_id`.
pub async fn find_by_token_id(db: &Db, token_id: &str) -> Result<Option<AuthRow>, DbError> {
    let row = sqlx::query(
        "SELECT id, name, role, totp_sealed, created_at, token_hash FROM users WHERE token_id = $1 AND disabled = 0",
    )
    .bind(token_id)
    .fetch_optional(db.pool())
    .await?;
    let Some(r) = row else { return Ok(None) };
    let role: String = r.try_get(2)?;
    let totp_sealed: Option<Vec<u8>> = r.try_get(3)?;
    Ok(Some(AuthRow {
        user: User {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            role: Role::parse(&role).ok_or(DbError::Corrupt("unknown role"))?,
            totp: totp_sealed.is_some(),
            created_at: r.try_get(4)?,
        },
        token_hash: r.try_get(5)?,
        totp_sealed,
    }))
}

/// A PHC string for a random secret, verified when the token id is unknown.
static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Checks the token secret (argon2id; blocking: call from a blocking thread).
pub fn check_secret(row: Option<&AuthRow>, secret: &str) -> bool {
    let dummy;
    let phc = match row {
        Some(r) => r.token_hash.as_str(),
        None => {
            dummy = DUMMY_HASH.get_or_init(|| {
                let salt = SaltString::generate(&mut OsRng);
                Argon2::default()
                    .hash_password(b"dummy", &salt)
                    .map(|h| h.to_string())
                    .unwrap_or_default()
            });
            dummy.as_str()
        }
    };
    let ok = PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false);
    ok && row.is_some()
}

/// Checks a TOTP code for the user at Unix time `at`.
pub fn check_totp(
    mk: &MasterKey,
    row: &AuthRow,
    code: &str,
    at: u64,
) -> Result<bool, MasterKeyError> {
    let Some(sealed) = &row.totp_sealed else {
        return Ok(false);
    };
    let raw = mk.open(&totp_context(&row.user.id), sealed)?;
    let Ok(totp) = totp_for(raw.to_vec(), &row.user.name) else {
        return Ok(false);
    };
    Ok(code.len() == 6 && totp.check(code, at))
}

/// The current TOTP code for a base32 secret (for clients and tests).
pub fn totp_code(secret_b32: &str, at: u64) -> Option<String> {
    let raw = totp_rs::Secret::Encoded(secret_b32.trim().to_owned())
        .to_bytes()
        .ok()?;
    let totp = TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        30,
        raw,
        Some("cvm-verifier".into()),
        "user".into(),
    )
    .ok()?;
    Some(totp.generate(at))
}

/// Every sealed TOTP secret: (user id, sealed), for master-key rotation.
pub async fn sealed_secrets(tx: &mut Tx) -> Result<Vec<(String, Vec<u8>)>, DbError> {
    let rows = sqlx::query("SELECT id, totp_sealed FROM users WHERE totp_sealed IS NOT NULL")
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Replaces a user's sealed TOTP secret (rotation).
pub async fn set_sealed_secret(tx: &mut Tx, id: &str, sealed: &[u8]) -> Result<(), DbError> {
    sqlx::query("UPDATE users SET totp_sealed = $1 WHERE id = $2")
        .bind(sealed)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The context a user's TOTP secret is sealed under.
pub fn totp_seal_context(user_id: &str) -> String {
    totp_context(user_id)
}
