//! The admin plane (`/admin/v1/…`): authentication middleware, RBAC, and one handler per
//! route. Every change commits together with its audit record.
//!
//! | permission | admin | operator | auditor |
//! |---|---|---|---|
//! | users | yes | | |
//! | grants: resource values; creating or replacing a workload that has or gets resources or `allow_any_measurement`; restoring a revoked workload or guest | yes | | |
//! | workloads without grants, adding/removing reference values (never the last), revoking workloads and guests | yes | yes | |
//! | inventory (read) | yes | yes | yes |
//! | audit log (read, verify) | yes | | yes |
//!
//! Every admin request carries a TOTP code, so whatever can release a secret (a grant)
//! needs a token *and* the second factor; an operator token alone can narrow or close
//! access (remove a measurement, revoke) but never open it to a new guest population
//! other than by adding a reference value to a workload an admin already granted.
//!
//! Workload rules (fail closed): `tee` (`snp` or `tdx`) is required; the policy must list
//! at least one 48-byte measurement or set `allow_any_measurement` (admin only; the KBS
//! honours it only for insecure-emulated evidence); removing the last measurement is
//! refused with 409 (revoke or delete the workload instead).
//!
//! Authentication: `Authorization: Bearer cvmv.<id>.<secret>`; admins also send the
//! current TOTP code in `X-TOTP`. Attempts are reserved per client IP and per user before
//! any check and count as failures unless accepted (see [`authenticate`]); failures are
//! counted in metrics and audited (requests refused by the rate limiter are counted but
//! not audited, so a flood cannot grow the log without bound).

use attestation::claims::Tee;
use attestation::policy::Policy;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::state::{client_ip, AppState, JsonBody};
use crate::db::{now, Tx};
use crate::error::ApiError;
use crate::store::audit::{self, AuditEvent, AuditKind};
use crate::store::users::{self, AuthFailure, Role, UserError};
use crate::store::workloads::{self, valid_path, valid_segment, Workload};
use crate::store::{sessions, workloads::ResourceError};

/// The TOTP header.
pub const TOTP_HEADER: &str = "x-totp";

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// User name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Client address.
    pub client: String,
}

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Manage users.
    Users,
    /// Manage workloads without grants, reference values and revocations.
    Manage,
    /// Grant secrets: resource values, workloads with resources or
    /// `allow_any_measurement`, restoring revoked grants. Admin (with TOTP) only.
    Grant,
    /// Read the inventory.
    ReadInventory,
    /// Read and verify the audit log.
    ReadAudit,
}

impl Role {
    /// Whether this role has `p`.
    pub fn allows(self, p: Permission) -> bool {
        matches!(
            (self, p),
            (Role::Admin, _)
                | (
                    Role::Operator,
                    Permission::Manage | Permission::ReadInventory
                )
                | (
                    Role::Auditor,
                    Permission::ReadInventory | Permission::ReadAudit
                )
        )
    }
}

impl Principal {
    fn require(&self, p: Permission) -> Result<(), ApiError> {
        if self.role.allows(p) {
            Ok(())
        } else if p == Permission::Grant {
            Err(ApiError::Forbidden(format!(
                "granting access to secrets needs the admin role (with TOTP); the {} role may not do this",
                self.role.as_str()
            )))
        } else {
            Err(ApiError::Forbidden(format!(
                "the {} role may not do this",
                self.role.as_str()
            )))
        }
    }

    /// Records this caller's change in the audit log and commits it with the change:
    /// an admin change and its audit record are one transaction.
    async fn commit_change(
        &self,
        mut tx: Tx,
        subject: impl Into<String>,
        outcome: &str,
        detail: Value,
    ) -> Result<(), ApiError> {
        audit::append(&mut tx, &self.event(subject, outcome, detail)).await?;
        tx.commit().await.map_err(ApiError::internal)
    }

    fn event(&self, subject: impl Into<String>, outcome: &str, detail: Value) -> AuditEvent {
        AuditEvent {
            kind: AuditKind::AdminChange,
            actor: self.name.clone(),
            client: self.client.clone(),
            subject: subject.into(),
            outcome: outcome.into(),
            detail,
        }
    }
}

/// Authentication middleware for `/admin/v1`.
///
/// Cost is bounded before any check: one attempt is reserved for the client IP and one
/// for the token id (see [`crate::ratelimit`]); the reservations count as failures unless
/// the credentials are accepted, so `N` concurrent wrong attempts cost at most the
/// limit's worth of checks and the rest get 429. argon2 runs only for a token id that
/// exists, on [`crate::ratelimit::BlockingPool`]; an unknown id is answered after the
/// mean duration of recent verifications instead (token ids are random and carry no
/// secret; the residual timing difference is queueing under load).
pub async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let client = client_ip(req.extensions());
    let route = req.uri().path().to_owned();
    let Some(ip_slot) = st.ip_limiter.try_reserve(&client) else {
        return rate_limited(&st, "auth-ip");
    };
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let token = Zeroizing::new(
        auth.strip_prefix("Bearer ")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    );
    let totp = req
        .headers()
        .get(TOTP_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned());
    let Some((token_id, secret)) = users::split_token(&token) else {
        // The IP reservation stays counted.
        return auth_failed(&st, &client, None, &route, AuthFailure::Malformed).await;
    };
    let user_key = format!("token:{token_id}");
    let Some(user_slot) = st.user_limiter.try_reserve(&user_key) else {
        // Nothing was checked: the client's own budget is not spent on this refusal.
        ip_slot.forgive();
        return rate_limited(&st, "auth-user");
    };
    let row = match users::find_by_token_id(&st.db, token_id).await {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let ok = match &row {
        None => {
            let mean = st.argon2_nanos.load(std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(std::time::Duration::from_nanos(mean)).await;
            false
        }
        Some(found) => {
            let secret = Zeroizing::new(secret.to_owned());
            let found = found.clone();
            let metrics_st = st.clone();
            let checked = st
                .argon2_pool
                .run(move || {
                    metrics_st.metrics.auth_check("argon2");
                    let started = std::time::Instant::now();
                    let ok = users::check_secret(Some(&found), &secret);
                    (ok, started.elapsed())
                })
                .await;
            let Some((ok, took)) = checked else {
                return rate_limited(&st, "argon2-queue");
            };
            let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
            let mean = st.argon2_nanos.load(std::sync::atomic::Ordering::Relaxed);
            st.argon2_nanos.store(
                mean - mean / 8 + took / 8,
                std::sync::atomic::Ordering::Relaxed,
            );
            ok
        }
    };
    let Some(row) = row.filter(|_| ok) else {
        return auth_failed(&st, &client, None, &route, AuthFailure::BadToken).await;
    };
    if row.user.role == Role::Admin {
        let Some(code) = totp else {
            return auth_failed(
                &st,
                &client,
                Some(&row.user.name),
                &route,
                AuthFailure::TotpMissing,
            )
            .await;
        };
        let at = u64::try_from(now()).unwrap_or(0);
        st.metrics.auth_check("totp");
        match users::check_totp(&st.master_key, &row, &code, at) {
            Ok(true) => {}
            Ok(false) => {
                return auth_failed(
                    &st,
                    &client,
                    Some(&row.user.name),
                    &route,
                    AuthFailure::TotpWrong,
                )
                .await
            }
            Err(e) => return ApiError::internal(e).into_response(),
        }
    }
    ip_slot.forgive();
    user_slot.forgive();
    req.extensions_mut().insert(Principal {
        name: row.user.name.clone(),
        role: row.user.role,
        client,
    });
    next.run(req).await
}

fn rate_limited(st: &AppState, limit: &str) -> Response {
    st.metrics.auth_failure();
    st.metrics.rate_limited(limit);
    st.metrics.refusal("rate-limited");
    ApiError::TooManyRequests.into_response()
}

/// Audits and answers a failed authentication (the caller's reservations already
/// count it against the limits).
async fn auth_failed(
    st: &AppState,
    client: &str,
    user: Option<&str>,
    route: &str,
    why: AuthFailure,
) -> Response {
    st.metrics.auth_failure();
    st.metrics.refusal(why.as_str());
    let ev = AuditEvent {
        kind: AuditKind::AuthFailure,
        actor: user.unwrap_or("unknown").to_owned(),
        client: client.to_owned(),
        subject: route.to_owned(),
        outcome: "refused".into(),
        detail: json!({"reason": why.as_str()}),
    };
    if let Err(e) = audit::append_now(&st.db, &ev).await {
        return ApiError::from(e).into_response();
    }
    let msg = match why {
        AuthFailure::TotpMissing => "a TOTP code is required for the admin role (X-TOTP header)",
        _ => "authentication failed",
    };
    ApiError::Unauthorized(msg.into()).into_response()
}

type Caller = axum::Extension<Principal>;

/// `GET /admin/v1/whoami`.
pub async fn whoami(axum::Extension(p): Caller) -> Json<Value> {
    Json(json!({"name": p.name, "role": p.role}))
}

/// `GET /admin/v1/users`.
pub async fn list_users(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
) -> Result<Json<Value>, ApiError> {
    p.require(Permission::Users)?;
    Ok(Json(json!({ "users": users::list(&st.db).await? })))
}

/// Body of `POST /admin/v1/users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
}

fn user_error(e: UserError) -> ApiError {
    match e {
        UserError::BadName => ApiError::BadRequest(e.to_string()),
        UserError::Exists => ApiError::Conflict(e.to_string()),
        other => ApiError::internal(other),
    }
}

/// `POST /admin/v1/users`: creates a user; the token (and TOTP secret) are shown once.
pub async fn create_user(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    JsonBody(body): JsonBody<NewUser>,
) -> Result<Response, ApiError> {
    p.require(Permission::Users)?;
    let mut tx = st.db.begin().await?;
    let creds = users::create(&mut tx, &st.master_key, &body.name, body.role)
        .await
        .map_err(user_error)?;
    p.commit_change(
        tx,
        format!("user:{}", body.name),
        "created",
        json!({"role": body.role}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(creds)).into_response())
}

/// `DELETE /admin/v1/users/{name}`.
pub async fn delete_user(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require(Permission::Users)?;
    let mut tx = st.db.begin().await?;
    if users::other_admins(&mut tx, &name).await? == 0 {
        return Err(ApiError::Conflict(
            "the last admin cannot be deleted".into(),
        ));
    }
    if !users::delete(&mut tx, &name).await? {
        return Err(ApiError::NotFound(format!("no user {name}")));
    }
    p.commit_change(tx, format!("user:{name}"), "deleted", json!({}))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /admin/v1/workloads`.
pub async fn list_workloads(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
) -> Result<Json<Value>, ApiError> {
    p.require(Permission::Manage)?;
    Ok(Json(json!({ "workloads": workloads::list(&st.db).await? })))
}

/// `GET /admin/v1/workloads/{name}`.
pub async fn get_workload(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path(name): Path<String>,
) -> Result<Json<Workload>, ApiError> {
    p.require(Permission::Manage)?;
    workloads::get_db(&st.db, &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no workload {name}")))
}

/// Body of `PUT /admin/v1/workloads/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadBody {
    /// The TEE the workload is bound to (required; optional here only so that a missing
    /// value gets a clear message).
    #[serde(default)]
    pub tee: Option<Tee>,
    /// The policy (with the allowed measurements).
    #[serde(default)]
    pub policy: Policy,
    /// Granted resource paths.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Revoked.
    #[serde(default)]
    pub revoked: bool,
}

/// `PUT /admin/v1/workloads/{name}`: creates or replaces a workload.
pub async fn put_workload(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<WorkloadBody>,
) -> Result<Response, ApiError> {
    p.require(Permission::Manage)?;
    if !valid_segment(&name) {
        return Err(ApiError::BadRequest(
            "workload names are 1-128 of A-Za-z0-9._-".into(),
        ));
    }
    if let Some(bad) = body.resources.iter().find(|r| !valid_path(r)) {
        return Err(ApiError::BadRequest(format!(
            "`{bad}` is not a resource path repo/type/tag"
        )));
    }
    if let Some(m) = body.policy.measurements.iter().find(|m| m.len() != 48) {
        return Err(ApiError::BadRequest(format!(
            "measurement {} is not 48 bytes",
            hex::encode(m)
        )));
    }
    let Some(tee) = body.tee else {
        return Err(ApiError::BadRequest(
            "`tee` is required: the TEE whose guests the workload accepts (snp or tdx)".into(),
        ));
    };
    if body.policy.measurements.is_empty() && !body.policy.allow_any_measurement {
        return Err(ApiError::BadRequest(
            "the policy allows no measurement: list at least one, or set allow_any_measurement (honoured for insecure-emulated evidence only)".into(),
        ));
    }
    if tee == Tee::Tdx && !body.policy.allow_any_measurement {
        // MRTD measures only the firmware; the kernel, initrd and command line (with the
        // pinned verifier key) are in RTMR1 and RTMR2 (attestation::policy::tdx).
        let unpinned = body.policy.tdx.unpinned_boot_rtmrs();
        if !unpinned.is_empty() {
            let names: Vec<String> = unpinned.iter().map(|i| format!("RTMR{i}")).collect();
            return Err(ApiError::BadRequest(format!(
                "a tdx workload must pin {} (tdx.rtmrs or tdx.event_log): MRTD measures only the firmware, so a host could boot its own kernel and command line under it",
                names.join(" and ")
            )));
        }
    }
    let w = Workload {
        name: name.clone(),
        tee: Some(tee),
        policy: body.policy,
        resources: body.resources,
        revoked: body.revoked,
    };
    let mut tx = st.db.begin().await?;
    let old = workloads::get(&mut tx, &name).await?;
    // Opening access to secrets needs the second factor: a workload that has or gets
    // resources (its grant, its policy or its TEE change), that allows any measurement,
    // or that is un-revoked.
    let grants = !w.resources.is_empty()
        || w.policy.allow_any_measurement
        || old
            .as_ref()
            .is_some_and(|o| !o.resources.is_empty() || (o.revoked && !w.revoked));
    if grants {
        p.require(Permission::Grant)?;
    }
    let created = workloads::upsert(&mut tx, &w).await?;
    let detail =
        json!({"tee": tee, "policy": w.policy, "resources": w.resources, "revoked": w.revoked});
    p.commit_change(
        tx,
        format!("workload:{name}"),
        if created { "created" } else { "updated" },
        detail,
    )
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(w)).into_response())
}

/// `DELETE /admin/v1/workloads/{name}`.
pub async fn delete_workload(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require(Permission::Manage)?;
    let mut tx = st.db.begin().await?;
    if !workloads::delete(&mut tx, &name).await? {
        return Err(ApiError::NotFound(format!("no workload {name}")));
    }
    p.commit_change(tx, format!("workload:{name}"), "deleted", json!({}))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /admin/v1/workloads/{name}/measurements`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasurementBody {
    /// 48 bytes, hex.
    pub measurement: String,
}

fn parse_measurement(m: &str) -> Result<Vec<u8>, ApiError> {
    hex::decode(m.trim())
        .ok()
        .filter(|b| b.len() == 48)
        .ok_or_else(|| ApiError::BadRequest("a measurement is 48 bytes in hex".into()))
}

async fn edit_measurements(
    st: &AppState,
    p: &Principal,
    name: &str,
    m: Vec<u8>,
    add: bool,
) -> Result<Workload, ApiError> {
    let mut tx = st.db.begin().await?;
    let mut w = workloads::get(&mut tx, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no workload {name}")))?;
    let had = w.policy.measurements.contains(&m);
    if add && !had {
        w.policy.measurements.push(m.clone());
    } else if !add {
        if !had {
            return Err(ApiError::NotFound(
                "the workload does not allow this measurement".into(),
            ));
        }
        if w.policy.measurements.iter().all(|x| *x == m) && !w.policy.allow_any_measurement {
            return Err(ApiError::Conflict(format!(
                "{} is the last measurement of workload {name}: removing it would leave no reference value; revoke or delete the workload instead",
                hex::encode(&m)
            )));
        }
        w.policy.measurements.retain(|x| *x != m);
    }
    workloads::upsert(&mut tx, &w).await?;
    let outcome = if add {
        "measurement-added"
    } else {
        "measurement-removed"
    };
    p.commit_change(
        tx,
        format!("workload:{name}"),
        outcome,
        json!({"measurement": hex::encode(&m)}),
    )
    .await?;
    Ok(w)
}

/// `POST /admin/v1/workloads/{name}/measurements`: adds a reference value.
pub async fn add_measurement(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<MeasurementBody>,
) -> Result<Json<Workload>, ApiError> {
    p.require(Permission::Manage)?;
    let m = parse_measurement(&body.measurement)?;
    edit_measurements(&st, &p, &name, m, true).await.map(Json)
}

/// `DELETE /admin/v1/workloads/{name}/measurements/{measurement}`.
pub async fn remove_measurement(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path((name, measurement)): Path<(String, String)>,
) -> Result<Json<Workload>, ApiError> {
    p.require(Permission::Manage)?;
    let m = parse_measurement(&measurement)?;
    edit_measurements(&st, &p, &name, m, false).await.map(Json)
}

/// Body of the revocation routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationBody {
    /// Revoke (true) or restore (false).
    pub revoked: bool,
}

/// `PUT /admin/v1/workloads/{name}/revocation`.
pub async fn revoke_workload(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<RevocationBody>,
) -> Result<Json<Workload>, ApiError> {
    p.require(Permission::Manage)?;
    let mut tx = st.db.begin().await?;
    let mut w = workloads::get(&mut tx, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no workload {name}")))?;
    if w.revoked && !body.revoked {
        // Restoring re-opens a grant: it needs the second factor.
        p.require(Permission::Grant)?;
    }
    w.revoked = body.revoked;
    workloads::upsert(&mut tx, &w).await?;
    let outcome = if body.revoked { "revoked" } else { "restored" };
    p.commit_change(tx, format!("workload:{name}"), outcome, json!({}))
        .await?;
    Ok(Json(w))
}

/// `GET /admin/v1/resources`: metadata only, never values.
pub async fn list_resources(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
) -> Result<Json<Value>, ApiError> {
    p.require(Permission::Manage)?;
    Ok(Json(
        json!({ "resources": workloads::list_resources(&st.db).await? }),
    ))
}

/// Body of `PUT /admin/v1/resources/{repo}/{type}/{tag}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceBody {
    /// The value, standard base64.
    pub value: Zeroizing<String>,
}

impl std::fmt::Debug for ResourceBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResourceBody(<redacted>)")
    }
}

pub(crate) fn resource_path(repo: &str, kind: &str, tag: &str) -> Result<String, ApiError> {
    let path = format!("{repo}/{kind}/{tag}");
    if valid_path(&path) {
        Ok(path)
    } else {
        Err(ApiError::BadRequest(
            "resource path segments are 1-128 of A-Za-z0-9._-".into(),
        ))
    }
}

/// `PUT /admin/v1/resources/{repo}/{type}/{tag}`: stores a value sealed at rest.
pub async fn put_resource(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path((repo, kind, tag)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<ResourceBody>,
) -> Result<StatusCode, ApiError> {
    p.require(Permission::Grant)?;
    let path = resource_path(&repo, &kind, &tag)?;
    let value = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(body.value.trim())
            .map_err(|_| ApiError::BadRequest("value must be standard base64".into()))?,
    );
    let mut tx = st.db.begin().await?;
    let created = workloads::put_resource(&mut tx, &st.master_key, &path, &value)
        .await
        .map_err(|e| match e {
            ResourceError::Db(d) => ApiError::from(d),
            other => ApiError::internal(other),
        })?;
    let outcome = if created { "created" } else { "updated" };
    p.commit_change(
        tx,
        format!("resource:{path}"),
        outcome,
        json!({"bytes": value.len()}),
    )
    .await?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

/// `DELETE /admin/v1/resources/{repo}/{type}/{tag}`.
pub async fn delete_resource(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path((repo, kind, tag)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    p.require(Permission::Grant)?;
    let path = resource_path(&repo, &kind, &tag)?;
    let mut tx = st.db.begin().await?;
    if !workloads::delete_resource(&mut tx, &path).await? {
        return Err(ApiError::NotFound(format!("no resource {path}")));
    }
    p.commit_change(tx, format!("resource:{path}"), "deleted", json!({}))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /admin/v1/inventory`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryQuery {
    /// Only guests not seen for this many seconds.
    pub stale: Option<i64>,
}

/// `GET /admin/v1/inventory`.
pub async fn inventory(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Query(q): Query<InventoryQuery>,
) -> Result<Json<Value>, ApiError> {
    p.require(Permission::ReadInventory)?;
    let before = q.stale.map(|s| now().saturating_sub(s.max(0)));
    Ok(Json(
        json!({ "guests": sessions::inventory(&st.db, before).await? }),
    ))
}

/// `PUT /admin/v1/inventory/{id}/revocation`: revokes (or restores) one guest's grants.
pub async fn revoke_guest(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RevocationBody>,
) -> Result<Json<Value>, ApiError> {
    p.require(if body.revoked {
        Permission::Manage
    } else {
        Permission::Grant
    })?;
    let mut tx = st.db.begin().await?;
    if !sessions::set_guest_revoked(&mut tx, &id, body.revoked).await? {
        return Err(ApiError::NotFound(format!("no guest {id}")));
    }
    let entry = sessions::inventory_entry(&mut tx, &id).await?;
    let outcome = if body.revoked { "revoked" } else { "restored" };
    p.commit_change(tx, format!("guest:{id}"), outcome, json!({}))
        .await?;
    Ok(Json(json!(entry)))
}

/// Query of `GET /admin/v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only records at or after this Unix time.
    pub since: Option<i64>,
    /// Only records after this sequence number.
    pub after: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// `GET /admin/v1/audit`.
pub async fn audit_log(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    p.require(Permission::ReadAudit)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let records = audit::list(&st.db, q.since.unwrap_or(0), q.after.unwrap_or(0), limit).await?;
    let lines: Vec<Value> = records.iter().map(audit::export_line).collect();
    Ok(Json(json!({ "records": lines })))
}

/// `GET /admin/v1/audit/verify`.
pub async fn audit_verify(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
) -> Result<Json<Value>, ApiError> {
    p.require(Permission::ReadAudit)?;
    Ok(Json(json!(audit::verify(&st.db).await?)))
}
