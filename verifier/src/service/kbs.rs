//! Guest-facing Trustee KBS protocol 0.4.0: `auth`, `attest`, `resource`.
//!
//! Every refusal of `attest` and `resource` (malformed input, unknown session, replayed
//! nonce, failed verification, policy, revocation, missing grant) is answered with a
//! problem document and written to the audit log once; nothing is released. An accepted
//! attestation and a release commit together with their audit record.
//!
//! Unauthenticated cost is bounded: `auth` is rate-limited per client IP and in total,
//! and so are the challenged sessions it creates (the global caps bound the database;
//! a flood from many addresses can therefore make `auth` refuse everyone until the
//! window passes, the documented trade-off); a client over its KBS refusal limit is
//! answered 429 before any work. The refusal limit is per client IP for requests
//! without an existing session and per session for requests carrying the cookie (or
//! token) of one, so one guest behind a shared relay address cannot lock out its
//! neighbours; there is no global refusal limit (it refused every guest once one
//! client flooded). `attest` looks its session up before reading the body, and at most
//! `attest_concurrency` attest bodies are read and verified at once (429 beyond).
//! Refusal floods are aggregated in the audit log (the first refusals of a client and
//! reason in a window are written one by one, the rest are counted into one summary
//! record per window, also once the global audit budget of a window is spent); an
//! over-long resource path is refused before anything else and only its length is
//! recorded. IPv6 clients are limited per /64.

use std::time::Instant;

use attestation::claims::{Claims, Tee, TeeClaims, TrustLevel};
use attestation::ErrorKind;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use kbs_types::{Attestation, Challenge};
use serde_json::{json, Value};

use super::state::{client_ip, parse_json, read_body, AppState, ClientIp, JsonBody};
use crate::crypto::jwe::{self, TeeKey};
use crate::crypto::token;
use crate::db::{self, now, Batch, Tx};
use crate::error::ApiError;
use crate::protocol::{report_data_with, version_supported, SESSION_COOKIE};
use crate::ratelimit::{AuditDecision, RefusalSummary};
use crate::store::audit::{self, AuditEvent, AuditKind};
use crate::store::sessions::{self, Attested, GuestIdentity, Session};
use crate::store::workloads::{self, valid_path, valid_segment, Workload};

/// A refusal with the reason recorded in metrics and the audit log.
struct Refusal {
    reason: String,
    error: ApiError,
}

impl Refusal {
    fn new(reason: &str, error: ApiError) -> Self {
        Self {
            reason: reason.into(),
            error,
        }
    }
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        let reason = match &error {
            ApiError::Internal(_) => "internal-error",
            ApiError::PayloadTooLarge => "body-too-large",
            _ => "bad-request",
        };
        Self {
            reason: reason.into(),
            error,
        }
    }
}

impl From<crate::db::DbError> for Refusal {
    fn from(e: crate::db::DbError) -> Self {
        ApiError::from(e).into()
    }
}

fn trust_name(t: TrustLevel) -> &'static str {
    match t {
        TrustLevel::Hardware => "hardware",
        TrustLevel::InsecureEmulated => "insecure-emulated",
    }
}

fn session_cookie(st: &AppState, id: &str, max_age: i64) -> HeaderValue {
    let secure = if st.limits.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let v = format!(
        "{SESSION_COOKIE}={id}; Path=/kbs/v0; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age.max(0)
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The session id from the `kbs-session-id` cookie: `Ok(None)` if absent, an error if
/// malformed.
pub(crate) fn cookie_session(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::BadRequest("the Cookie header is not ASCII".into()))?;
        for pair in text.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if k == SESSION_COOKIE {
                let id = uuid::Uuid::parse_str(v.trim()).map_err(|_| {
                    ApiError::BadRequest("the kbs-session-id cookie is malformed".into())
                })?;
                found = Some(id.hyphenated().to_string());
            }
        }
    }
    Ok(found)
}

/// `POST /kbs/v0/auth`: opens a session and returns a challenge.
///
/// Limited before the body is read: `/kbs/v0/auth` requests per client IP and in total
/// per window, then (for a valid request) challenged sessions created within one session
/// TTL per client IP and in total, which bounds the open sessions an unauthenticated
/// client can make the database hold.
pub async fn auth(
    State(st): State<AppState>,
    ClientIp(client): ClientIp,
    req: Request,
) -> Result<Response, ApiError> {
    if let Err(l) = st.kbs_auth_limiter.try_acquire(&client) {
        tracing::debug!(%client, limit = %l, "auth refused by the rate limit");
        st.metrics.rate_limited("kbs-auth");
        return Err(ApiError::TooManyRequests);
    }
    let JsonBody(req): JsonBody<kbs_types::Request> = JsonBody::from_request(req, &()).await?;
    if !version_supported(&req.version) {
        return Err(ApiError::BadRequest(format!(
            "protocol version {} is not supported; use 0.4.0",
            req.version
        )));
    }
    let tee = match req.tee {
        kbs_types::Tee::Snp => "snp",
        kbs_types::Tee::Tdx => "tdx",
        other => {
            return Err(ApiError::BadRequest(format!(
                "TEE `{other}` is not supported; use snp or tdx"
            )))
        }
    };
    let hint = match req.extra_params.get("workload") {
        None => None,
        Some(Value::String(w)) if valid_segment(w) => Some(w.clone()),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "extra-params.workload must be a workload name".into(),
            ))
        }
    };
    if st.session_budget.try_acquire(&client).is_err() {
        st.metrics.rate_limited("open-sessions");
        return Err(ApiError::TooManyRequests);
    }
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let nonce = base64::engine::general_purpose::STANDARD.encode(nonce);
    let session =
        sessions::create(&st.db, tee, &nonce, hint.as_deref(), st.limits.session_ttl).await?;
    let challenge = Challenge {
        nonce,
        extra_params: json!({}),
    };
    let mut resp = axum::Json(challenge).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&st, &session.id, st.limits.session_ttl),
    );
    Ok(resp)
}

/// `POST /kbs/v0/attest`: verifies evidence and returns an attestation token.
pub async fn attest(State(st): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let client = client_ip(req.extensions());
    let mut ctx = AttestCtx {
        session: None,
        tee: "unknown".into(),
        consumed: false,
        limit_key: client.clone(),
        client: client.clone(),
    };
    let result = attest_inner(&st, req, &mut ctx).await;
    let elapsed = started.elapsed().as_secs_f64();
    match result {
        Ok(resp) => {
            st.metrics.attestation(&ctx.tee, true, elapsed);
            resp
        }
        Err(r) => {
            st.metrics.attestation(&ctx.tee, false, elapsed);
            st.metrics.refusal(&r.reason);
            let (kind, check) = match &r.error {
                ApiError::AttestationRefused { kind, check, .. } => {
                    (Some(kind.as_str()), check.clone())
                }
                _ => (None, None),
            };
            let detail = json!({
                "session": ctx.session, "tee": ctx.tee, "reason": r.reason, "kind": kind, "check": check,
                "message": r.error.to_string(), "status": r.error.status().as_u16(),
            });
            let ev = AuditEvent {
                kind: AuditKind::Attestation,
                actor: ctx
                    .session
                    .as_deref()
                    .map(|s| format!("guest:{s}"))
                    .unwrap_or_else(|| "guest:-".into()),
                client,
                subject: ctx.tee.clone(),
                outcome: "refused".into(),
                detail,
            };
            if let Err(e) = record_refusal(
                &st,
                &ev,
                &ctx.limit_key,
                &r.reason,
                ctx.consumed.then_some(ctx.session.as_deref()).flatten(),
            )
            .await
            {
                return ApiError::from(e).into_response();
            }
            r.error.into_response()
        }
    }
}

/// Rolls back a transaction that must not commit, before the caller records the
/// refusal in a new one (a dropped transaction's rollback would run only later).
async fn rollback(tx: Tx) {
    if let Err(e) = tx.rollback().await {
        tracing::warn!(error = %e, "rollback failed");
    }
}

/// The refusal of a client (`key`: its IP, or `session:<id>`) over its own KBS refusal
/// limit: answered before any other work. Other clients are never refused by it.
fn refusal_limited(st: &AppState, key: &str) -> Option<Refusal> {
    if !st.kbs_refusal_limiter.blocked(key) {
        return None;
    }
    tracing::debug!(%key, "KBS request refused by the refusal limit");
    st.metrics.rate_limited("kbs-refusals");
    Some(Refusal::new(RATE_LIMITED, ApiError::TooManyRequests))
}

/// The reason of refusals answered by [`refusal_limited`] (not counted again).
const RATE_LIMITED: &str = "rate-limited";
/// The reason of attests refused because `attest_concurrency` bodies are in progress
/// (the service's load, not the client's fault: not counted).
const BUSY: &str = "busy";

/// Counts refusal `ev` (for `reason`) against its client's KBS refusal limit, fails the
/// session whose challenge it burnt, and audits it: one record each for the first
/// refusals of a client and reason in a window, then counted into a summary record
/// (see [`flush_refusal_summaries`]).
async fn record_refusal(
    st: &AppState,
    ev: &AuditEvent,
    limit_key: &str,
    reason: &str,
    fail_session: Option<&str>,
) -> Result<(), crate::db::DbError> {
    if reason != RATE_LIMITED && reason != BUSY {
        // Counted even when over the limit; the next request is then refused early.
        st.kbs_refusal_limiter.record(limit_key);
    }
    let key = format!("{}/{reason}", ev.kind.as_str());
    let write = st.refusal_audit.admit(&ev.client, &key, now()) == AuditDecision::Write;
    if !write {
        st.metrics.audit_suppressed();
        if fail_session.is_none() {
            return Ok(());
        }
    }
    let mut tx = st.db.begin().await?;
    if let Some(id) = fail_session {
        sessions::fail(&mut tx, id).await?;
    }
    if write {
        audit::append(&mut tx, ev).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Writes one summary record per (client, reason) whose refusals were counted instead of
/// audited: windows that rolled over, and with `all` every pending count (the periodic
/// flush and shutdown), so the log accounts for every refusal. A failed write is retried
/// at the next flush.
pub async fn flush_refusal_summaries(
    st: &AppState,
    all: bool,
) -> Result<usize, crate::db::DbError> {
    let summaries = st.refusal_audit.drain(all);
    if summaries.is_empty() {
        return Ok(0);
    }
    let n = summaries.len();
    match write_summaries(st, &summaries).await {
        Ok(()) => Ok(n),
        Err(e) => {
            st.refusal_audit.restore(summaries);
            Err(e)
        }
    }
}

async fn write_summaries(
    st: &AppState,
    summaries: &[RefusalSummary],
) -> Result<(), crate::db::DbError> {
    let mut tx = st.db.begin().await?;
    for s in summaries {
        let (kind, reason) = match s.reason.split_once('/') {
            Some(("attestation", r)) => (AuditKind::Attestation, r),
            Some((_, r)) => (AuditKind::KeyRelease, r),
            None => (AuditKind::KeyRelease, s.reason.as_str()),
        };
        let ev = AuditEvent {
            kind,
            actor: "guest:-".into(),
            client: s.client.clone(),
            subject: "refusal-summary".into(),
            outcome: "refused-aggregated".into(),
            detail: json!({
                "reason": reason, "count": s.suppressed, "first": s.first_unix,
                "last": s.last_unix, "window_secs": s.window_secs,
            }),
        };
        audit::append(&mut tx, &ev).await?;
    }
    tx.commit().await?;
    Ok(())
}

struct AttestCtx {
    client: String,
    /// What refusals count against: the client IP, or `session:<id>` once the request
    /// is known to belong to an existing session.
    limit_key: String,
    session: Option<String>,
    tee: String,
    consumed: bool,
}

async fn attest_inner(
    st: &AppState,
    req: Request,
    ctx: &mut AttestCtx,
) -> Result<Response, Refusal> {
    // Everything that needs no body comes first: the session must exist, be challenged
    // and unexpired before a byte of the (up to 1 MiB) body is read.
    let id = match cookie_session(req.headers()) {
        Ok(Some(id)) => id,
        other => {
            if let Some(r) = refusal_limited(st, &ctx.limit_key) {
                return Err(r);
            }
            return Err(match other {
                Err(e) => Refusal::new("malformed-cookie", e),
                _ => Refusal::new(
                    "no-session",
                    ApiError::Unauthorized(
                        "no kbs-session-id cookie; call /kbs/v0/auth first".into(),
                    ),
                ),
            });
        }
    };
    ctx.session = Some(id.clone());
    // The session, and the workloads it may match (read while the session is still
    // challenged; one statement).
    let Some((session, candidates)) = sessions::get_for_attest(&st.db, &id, now()).await? else {
        if let Some(r) = refusal_limited(st, &ctx.limit_key) {
            return Err(r);
        }
        return Err(Refusal::new(
            "unknown-session",
            ApiError::Unauthorized("unknown or expired session".into()),
        ));
    };
    ctx.limit_key = format!("session:{id}");
    if let Some(r) = refusal_limited(st, &ctx.limit_key) {
        return Err(r);
    }
    ctx.tee = session.tee.clone();
    if session.state != "challenged" {
        return Err(Refusal::new(
            "replay",
            ApiError::Unauthorized("the challenge of this session was already used".into()),
        ));
    }
    if session.expires_at <= now() {
        return Err(Refusal::new(
            "session-expired",
            ApiError::Unauthorized("the session has expired".into()),
        ));
    }
    // Bodies read and verified at once are bounded; held to the end of the request.
    let Ok(_permit) = st.attest_permits.try_acquire() else {
        st.metrics.rate_limited("attest-concurrency");
        return Err(Refusal::new(BUSY, ApiError::TooManyRequests));
    };
    let body = read_body(req, &()).await?;
    let attestation: Attestation =
        parse_json(&body).map_err(|e| Refusal::new("malformed-request", e))?;
    drop(body);
    if attestation.runtime_data.nonce != session.nonce {
        return Err(Refusal::new(
            "nonce-mismatch",
            ApiError::Unauthorized("the nonce does not match the challenge".into()),
        ));
    }
    // Validated now so that a bad key is refused before the nonce is spent.
    TeeKey::from_jwk(&attestation.runtime_data.tee_pubkey)
        .map_err(|e| Refusal::new("malformed-tee-pubkey", ApiError::BadRequest(e.to_string())))?;
    let expected = report_data_with(
        &attestation.runtime_data,
        &attestation.tee_evidence.additional_evidence,
    )
    .map_err(|e| Refusal::new("malformed-request", ApiError::BadRequest(e.to_string())))?;
    let evidence = serde_json::to_vec(&attestation.tee_evidence.primary_evidence)
        .map_err(|e| Refusal::new("malformed-evidence", ApiError::BadRequest(e.to_string())))?;
    // From here on a refusal burns the challenge. The nonce itself is consumed in the
    // same transaction that records the accepted attestation (one durable commit per
    // attestation); of concurrent attempts with the same challenge, only one can win.
    ctx.consumed = true;
    let tee = if session.tee == "snp" {
        Tee::Snp
    } else {
        Tee::Tdx
    };
    let verifier = st.verifier.clone();
    // Cache-miss collateral fetches this evidence causes are budgeted per client.
    let client = ctx.client.clone();
    let claims = tokio::task::spawn_blocking(move || {
        crate::collateral::budget::with_client(&client, || {
            verifier.verify(tee, &evidence, &expected, time::OffsetDateTime::now_utc())
        })
    })
    .await
    .map_err(|e| Refusal::from(ApiError::internal(e)))?
    .map_err(|f| {
        let reason = f
            .check
            .clone()
            .unwrap_or_else(|| f.kind.as_str().to_owned());
        Refusal::new(
            &reason,
            ApiError::AttestationRefused {
                kind: f.kind,
                check: f.check,
                message: f.message,
            },
        )
    })?;
    let workload = choose_workload(&session, &claims, candidates)?;
    let platform_id = platform_id(&claims)?;
    let legacy_platform_id = legacy_platform_id(&claims);
    let measurement = hex::encode(&claims.measurement);
    let trust = trust_name(claims.trust);
    let pubkey_json = serde_json::to_string(&attestation.runtime_data.tee_pubkey)
        .map_err(|e| Refusal::from(ApiError::internal(e)))?;
    let expires_at = now() + st.limits.token_ttl;
    // Signed before the transaction: it is returned only if the transaction commits.
    let token = st
        .signer
        .sign(&token_claims(
            &id,
            &session.tee,
            &workload.name,
            &claims,
            &attestation,
            expires_at,
        ))
        .map_err(|e| Refusal::from(ApiError::internal(e)))?;

    let token_sha256 = token::digest(&token);

    // One transaction in two round trips: the inventory upsert, the consumption of the
    // nonce and the audit head first; then, once checked, the audit record and COMMIT.
    let identity = GuestIdentity {
        workload: &workload.name,
        tee: &session.tee,
        platform_id: &platform_id,
        legacy_platform_id: legacy_platform_id.as_deref(),
        measurement: &measurement,
        trust,
    };
    let attested = Attested {
        workload: &workload.name,
        tee_pubkey: &pubkey_json,
        trust,
        expires_at,
        token_sha256: &token_sha256,
    };
    let mut batch = Batch::new();
    sessions::push_record_guest(&mut batch, &identity);
    // Consumes the nonce: of concurrent attempts with one challenge, only one wins.
    sessions::push_attest(&mut batch, &id, &session.nonce, &identity, &attested);
    audit::push_take_head(&mut batch);
    let (tx, results) = st.db.begin_with(batch).await?;
    let [guest, won, head] = db::results(results)?;
    let guest = sessions::guest_from(&guest)?;
    if guest.revoked {
        rollback(tx).await;
        return Err(Refusal::new(
            "guest-revoked",
            ApiError::Forbidden("this guest's grants are revoked".into()),
        ));
    }
    if won.rows_affected != 1 {
        rollback(tx).await;
        return Err(Refusal::new(
            "replay",
            ApiError::Unauthorized("the challenge of this session was already used".into()),
        ));
    }
    let keys = tx.audit_keys().ok_or(crate::db::DbError::NoAuditKey)?;
    let mut batch = Batch::new();
    audit::push_append(
        &mut batch,
        &keys,
        &audit::head_from(&head)?,
        &AuditEvent {
            kind: AuditKind::Attestation,
            actor: format!("guest:{id}"),
            client: ctx.client.clone(),
            subject: session.tee.clone(),
            outcome: "accepted".into(),
            detail: json!({
                "session": id, "tee": session.tee, "trust": trust, "workload": workload.name,
                "measurement": measurement, "platform_id": platform_id, "inventory_id": guest.id,
            }),
        },
    )?;
    tx.commit_with(batch).await?;

    if claims.trust == TrustLevel::InsecureEmulated {
        tracing::warn!(session = %id, workload = %workload.name, "accepted INSECURE-EMULATED evidence");
    }
    let mut resp = axum::Json(json!({ "token": token })).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(st, &id, st.limits.token_ttl),
    );
    Ok(resp)
}

/// The inventory's platform id: the identity the verified endorsement certificate
/// vouches for (VCEK hwID, `vlek:` + the CHIP_ID a VLEK signed, PCK PPID / platform
/// instance id; see `attestation::claims::Claims::platform_id`), never a masked or
/// otherwise host-chosen value. Evidence without one is refused: revocation is keyed on
/// it. A VLEK report with MASK_CHIP_ID set has none (a VLEK's key changes with the TCB
/// the host loads, so it cannot stand in for the chip).
fn platform_id(claims: &Claims) -> Result<String, Refusal> {
    if claims.platform_id.is_empty() {
        let message = match &claims.detail {
            TeeClaims::Snp(c) if c.signer == attestation::snp::Signer::Vlek => {
                "the report is signed by a VLEK with CHIP_ID masked (MASK_CHIP_ID): a VLEK-signed report must carry its CHIP_ID, the only identity of its chip"
            }
            _ => "the evidence's certificate names no platform identity",
        };
        return Err(Refusal::new(
            "platform-identity",
            ApiError::AttestationRefused {
                kind: attestation::ErrorKind::UntrustedChain,
                check: Some("platform-identity".into()),
                message: message.into(),
            },
        ));
    }
    Ok(claims.platform_id.clone())
}

/// The platform id inventories before schema v5 recorded for this evidence, when it
/// differs from [`platform_id`]: TDX entries were keyed by FMSPC (a revocation recorded
/// then still refuses). SNP VCEK ids are unchanged (hwID = unmasked CHIP_ID).
fn legacy_platform_id(claims: &Claims) -> Option<String> {
    match &claims.detail {
        TeeClaims::Snp(_) => None,
        TeeClaims::Tdx(c) => Some(format!("fmspc:{}", hex::encode(c.fmspc))),
    }
}

fn token_claims(
    id: &str,
    tee: &str,
    workload: &str,
    claims: &Claims,
    att: &Attestation,
    exp: i64,
) -> Value {
    let iat = now();
    let status = match claims.trust {
        TrustLevel::Hardware => "affirming",
        TrustLevel::InsecureEmulated => "warning",
    };
    json!({
        "iss": "cvm-verifier",
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "jti": id,
        "eat_profile": "tag:github.com,2023:veraison/ear",
        "ear.verifier-id": {"developer": "cvm-verifier", "build": env!("CARGO_PKG_VERSION")},
        "submods": {
            "cpu": {
                "ear.status": status,
                "ear.trust": trust_name(claims.trust),
                "ear.veraison.annotated-evidence": claims,
            }
        },
        "tee": tee,
        "workload": workload,
        "trust": trust_name(claims.trust),
        "tee-pubkey": att.runtime_data.tee_pubkey,
    })
}

/// The workload whose policy `claims` meet, among `candidates` (the hinted workload, or
/// every workload).
///
/// Fail closed, named or not: a workload matches only a guest of its own TEE (an unbound
/// legacy workload matches none), whose measurement it lists. `allow_any_measurement`
/// stands in for the list only for insecure-emulated evidence of a guest that names the
/// workload; hardware evidence must always match a listed measurement. Then the policy.
fn choose_workload(
    session: &Session,
    claims: &Claims,
    candidates: Vec<Workload>,
) -> Result<Workload, Refusal> {
    let hinted = session.workload_hint.is_some();
    let candidates: Vec<Workload> = candidates
        .into_iter()
        .filter(|w| hinted || w.policy.measurements.contains(&claims.measurement))
        .collect();
    if candidates.is_empty() {
        let msg = match &session.workload_hint {
            Some(n) => format!("no workload named {n}"),
            None => format!(
                "no workload allows measurement {}",
                hex::encode(&claims.measurement)
            ),
        };
        return Err(Refusal::new(
            "workload",
            ApiError::AttestationRefused {
                kind: ErrorKind::PolicyNotMet,
                check: Some("workload".into()),
                message: msg,
            },
        ));
    }
    let mut first = None;
    for w in candidates {
        match admits(&w, claims) {
            Ok(()) => return Ok(w),
            Err(r) => {
                first.get_or_insert(r);
            }
        }
    }
    Err(first.unwrap_or_else(|| {
        Refusal::from(ApiError::Forbidden("no workload accepts this guest".into()))
    }))
}

fn policy_refusal(check: &str, message: String) -> Refusal {
    Refusal::new(
        check,
        ApiError::AttestationRefused {
            kind: ErrorKind::PolicyNotMet,
            check: Some(check.into()),
            message,
        },
    )
}

/// Whether workload `w` accepts a guest with `claims`: the workload rules
/// ([`workload_admits`]), then the policy.
fn admits(w: &Workload, claims: &Claims) -> Result<(), Refusal> {
    workload_admits(w, claims.tee, claims.trust, &claims.measurement)?;
    w.policy
        .evaluate(claims)
        .map_err(|v| policy_refusal(&v.check, v.to_string()))
}

/// The workload rules before its policy: not revoked, bound to the guest's TEE, and the
/// measurement listed — or any, only for insecure-emulated evidence when the policy
/// says `allow_any_measurement` (the policy's own check then lets it pass).
fn workload_admits(
    w: &Workload,
    tee: Tee,
    trust: TrustLevel,
    measurement: &[u8],
) -> Result<(), Refusal> {
    if w.revoked {
        return Err(Refusal::new(
            "workload-revoked",
            ApiError::Forbidden(format!("workload {} is revoked", w.name)),
        ));
    }
    let guest_tee = workloads::tee_name(tee);
    match w.tee {
        None => {
            return Err(policy_refusal(
                "workload-tee",
                format!(
                    "workload {} is not bound to a TEE (stored before schema v4); an admin must set its tee",
                    w.name
                ),
            ))
        }
        Some(t) if t != tee => {
            return Err(policy_refusal(
                "workload-tee",
                format!(
                    "workload {} accepts {} guests, not {guest_tee}",
                    w.name,
                    workloads::tee_name(t)
                ),
            ))
        }
        Some(_) => {}
    }
    let listed = w.policy.measurements.iter().any(|m| m == measurement);
    let any_emulated = w.policy.allow_any_measurement && trust == TrustLevel::InsecureEmulated;
    if !listed && !any_emulated {
        let why = if w.policy.allow_any_measurement {
            " (allow_any_measurement is honoured for insecure-emulated evidence only)"
        } else {
            ""
        };
        return Err(policy_refusal(
            "measurement",
            format!(
                "measurement {} is not in the allowed list of workload {}{why}",
                hex::encode(measurement),
                w.name
            ),
        ));
    }
    Ok(())
}

/// `GET /kbs/v0/resource/{repo}/{type}/{tag}`: releases a resource as a JWE to the TEE key.
pub async fn resource(
    State(st): State<AppState>,
    Path((repo, kind, tag)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    let client = client_ip(req.extensions());
    let len = repo.len() + kind.len() + tag.len() + 2;
    // Bounded before anything else: an over-long path is never stored, only its length.
    let too_long = len > st.flood.max_resource_path;
    let path = if too_long {
        format!("<{len} bytes>")
    } else {
        format!("{repo}/{kind}/{tag}")
    };
    drop((repo, kind, tag));
    // A request with no credential at all counts against its IP: refused at once when
    // that IP is over its limit. One with a token or cookie is limited by its session
    // once that is established (`resource_inner`), by its IP otherwise (below).
    let credential = req.headers().contains_key(header::AUTHORIZATION)
        || req.headers().contains_key(header::COOKIE);
    let ip_limited = (!credential)
        .then(|| refusal_limited(&st, &client))
        .flatten();
    let early = ip_limited.or_else(|| {
        too_long.then(|| {
            let msg = format!(
                "the resource path is longer than {} bytes",
                st.flood.max_resource_path
            );
            Refusal::new("path-too-long", ApiError::BadRequest(msg))
        })
    });
    let mut session_id = None;
    let mut limit_key = client.clone();
    let result = match early {
        Some(r) => Err(r),
        None => {
            resource_inner(
                &st,
                &path,
                req.headers(),
                &client,
                &mut session_id,
                &mut limit_key,
            )
            .await
        }
    };
    // Refused before a session was established: the IP's limit applies.
    let result = match result {
        Err(r) if r.reason != RATE_LIMITED && limit_key == client => {
            Err(refusal_limited(&st, &client).unwrap_or(r))
        }
        other => other,
    };
    match result {
        Ok(resp) => {
            st.metrics.release(true);
            resp
        }
        Err(r) => {
            st.metrics.release(false);
            st.metrics.refusal(&r.reason);
            let ev = AuditEvent {
                kind: AuditKind::KeyRelease,
                actor: session_id
                    .as_deref()
                    .map(|s| format!("guest:{s}"))
                    .unwrap_or_else(|| "guest:-".into()),
                client,
                subject: path,
                outcome: "refused".into(),
                detail: json!({"session": session_id, "reason": r.reason, "message": r.error.to_string(), "status": r.error.status().as_u16()}),
            };
            if let Err(e) = record_refusal(&st, &ev, &limit_key, &r.reason, None).await {
                return ApiError::from(e).into_response();
            }
            r.error.into_response()
        }
    }
}

/// The checks of a release, in order: the workload exists and is not revoked, it is
/// granted `path`, the guest is not revoked, the workload rules still admit the guest's
/// attested TEE and measurement (a measurement removed after the attestation stops its
/// sessions at once, not at token expiry), the resource exists.
fn check_release(
    path: &str,
    inputs: workloads::ReleaseInputs,
) -> Result<(Workload, Vec<u8>), Refusal> {
    let Some(workload) = inputs.workload.filter(|w| !w.revoked) else {
        return Err(Refusal::new(
            "workload-revoked",
            ApiError::Forbidden("the workload is revoked or was removed".into()),
        ));
    };
    if !workload.resources.iter().any(|r| r == path) {
        return Err(Refusal::new(
            "not-granted",
            ApiError::Forbidden(format!("workload {} is not granted {path}", workload.name)),
        ));
    }
    if inputs.guest_revoked != Some(false) {
        return Err(Refusal::new(
            "guest-revoked",
            ApiError::Forbidden("this guest's grants are revoked".into()),
        ));
    }
    let corrupt = || {
        Refusal::from(ApiError::internal(crate::db::DbError::Corrupt(
            "an inventory entry's TEE, trust or measurement is not valid",
        )))
    };
    let (tee, trust, measurement) = inputs.guest.ok_or_else(corrupt)?;
    let tee = match tee.as_str() {
        "snp" => Tee::Snp,
        "tdx" => Tee::Tdx,
        _ => return Err(corrupt()),
    };
    let trust = match trust.as_str() {
        "hardware" => TrustLevel::Hardware,
        "insecure-emulated" => TrustLevel::InsecureEmulated,
        _ => return Err(corrupt()),
    };
    let measurement = hex::decode(&measurement).map_err(|_| corrupt())?;
    if let Err(r) = workload_admits(&workload, tee, trust, &measurement) {
        return Err(Refusal::new(
            &format!("release-{}", r.reason),
            ApiError::Forbidden(format!(
                "the workload no longer admits this guest: {}",
                r.error
            )),
        ));
    }
    let Some(sealed) = inputs.sealed else {
        return Err(Refusal::new(
            "unknown-resource",
            ApiError::NotFound(format!("no resource {path}")),
        ));
    };
    Ok((workload, sealed))
}

async fn resource_inner(
    st: &AppState,
    path: &str,
    headers: &HeaderMap,
    client: &str,
    session_id: &mut Option<String>,
    limit_key: &mut String,
) -> Result<Response, Refusal> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let token = match &bearer {
        Some(b) => Some(
            b.strip_prefix("Bearer ")
                .ok_or_else(|| {
                    Refusal::new(
                        "malformed-token",
                        ApiError::BadRequest(
                            "the Authorization header must be `Bearer <token>`".into(),
                        ),
                    )
                })?
                .trim(),
        ),
        None => None,
    };
    let bad_token =
        |e: token::TokenError| Refusal::new("bad-token", ApiError::Unauthorized(e.to_string()));
    let id = match token {
        // Not trusted until the token is checked against the session below.
        Some(t) => token::unverified_session(t).map_err(bad_token)?,
        None => cookie_session(headers)
            .map_err(|e| Refusal::new("malformed-cookie", e))?
            .ok_or_else(|| {
                Refusal::new(
                    "no-session",
                    ApiError::Unauthorized("no attestation token or session cookie".into()),
                )
            })?,
    };
    let session = sessions::get(&st.db, &id).await?;
    if let Some(t) = token {
        // The token must be the one issued for this session (its digest is kept on the
        // session) and unexpired (its `exp` is the session's expiry); sessions without a
        // digest (attested by an older version, or gone) need the signature instead.
        match session
            .as_ref()
            .and_then(|s| Some((s.token_sha256.as_deref()?, s.expires_at)))
        {
            Some((digest, expires_at)) => {
                if !token::digest_matches(t, digest) {
                    return Err(bad_token(token::TokenError::NotIssued));
                }
                if expires_at <= now() {
                    return Err(bad_token(token::TokenError::Expired));
                }
            }
            None => {
                st.signer.verify(t, now()).map_err(bad_token)?;
            }
        }
    }
    *session_id = Some(id.clone());
    if session.is_some() {
        // The token matched (or the cookie named) an existing session: its refusals
        // count against that session, not against the address it shares with others.
        *limit_key = format!("session:{id}");
        if let Some(r) = refusal_limited(st, limit_key) {
            return Err(r);
        }
    }
    if !valid_path(path) {
        return Err(Refusal::new(
            "bad-path",
            ApiError::BadRequest("resource path segments are 1-128 of A-Za-z0-9._-".into()),
        ));
    }
    let session = match session {
        Some(s) if s.state == "attested" && s.expires_at > now() => s,
        _ => {
            return Err(Refusal::new(
                "not-attested",
                ApiError::Unauthorized("the session is not attested or has expired".into()),
            ))
        }
    };
    let (Some(workload_name), Some(pubkey), Some(inventory_id)) = (
        &session.workload,
        &session.tee_pubkey,
        &session.inventory_id,
    ) else {
        return Err(Refusal::from(ApiError::internal(
            crate::db::DbError::Corrupt("an attested session lacks its binding"),
        )));
    };
    let jwk: kbs_types::TeePubKey =
        serde_json::from_str(pubkey).map_err(|e| Refusal::from(ApiError::internal(e)))?;
    let tee_key = TeeKey::from_jwk(&jwk).map_err(|e| Refusal::from(ApiError::internal(e)))?;

    // Revocation, grant and the value are read in the transaction that records the
    // release, so a revocation committed before it is seen.
    // One transaction in two round trips: the inputs and the audit head; then, once
    // every check passed, the audit record and COMMIT.
    let mut batch = Batch::new();
    workloads::push_release_inputs(&mut batch, workload_name, inventory_id, path);
    audit::push_take_head(&mut batch);
    let (tx, results) = st.db.begin_with(batch).await?;
    let [inputs, head] = db::results(results)?;
    let inputs = workloads::release_inputs_from(&inputs)?;
    let (workload, sealed) = match check_release(path, inputs) {
        Ok(v) => v,
        Err(r) => {
            rollback(tx).await;
            return Err(r);
        }
    };
    let value = workloads::open_sealed(&st.master_key, path, &sealed)
        .map_err(|e| Refusal::from(ApiError::internal(e)))?;
    let jwe = jwe::encrypt(&tee_key, &value).map_err(|e| Refusal::from(ApiError::internal(e)))?;
    drop(value);
    let keys = tx.audit_keys().ok_or(crate::db::DbError::NoAuditKey)?;
    let mut batch = Batch::new();
    audit::push_append(
        &mut batch,
        &keys,
        &audit::head_from(&head)?,
        &AuditEvent {
            kind: AuditKind::KeyRelease,
            actor: format!("guest:{id}"),
            client: client.to_owned(),
            subject: path.to_owned(),
            outcome: "released".into(),
            detail: json!({
                "session": id, "workload": workload.name, "inventory_id": inventory_id,
                "trust": session.trust, "tee": session.tee,
            }),
        },
    )?;
    // The release proof the guest checks against its pinned key (crypto::token docs):
    // signed over the exact body bytes sent.
    let body = serde_json::to_vec(&jwe).map_err(|e| Refusal::from(ApiError::internal(e)))?;
    let tee_thumbprint =
        token::jwk_thumbprint(&jwk).map_err(|e| Refusal::from(ApiError::internal(e)))?;
    let release_signature = st
        .signer
        .sign_release(path, &tee_thumbprint, &body)
        .map_err(|e| Refusal::from(ApiError::internal(e)))?;
    tx.commit_with(batch).await?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::HeaderName::from_static(token::RELEASE_SIGNATURE_HEADER),
                release_signature,
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod workload_rules {
    use super::*;

    fn workload(tee: Option<Tee>, measurements: Vec<Vec<u8>>, any: bool) -> Workload {
        Workload {
            name: "w".into(),
            tee,
            policy: attestation::policy::Policy {
                measurements,
                allow_any_measurement: any,
                ..Default::default()
            },
            resources: vec!["a/b/c".into()],
            revoked: false,
        }
    }

    fn reason(r: Result<(), Refusal>) -> String {
        r.err()
            .map(|r| r.reason)
            .unwrap_or_else(|| "admitted".into())
    }

    #[test]
    fn hardware_evidence_needs_a_listed_measurement() {
        use TrustLevel::{Hardware, InsecureEmulated};
        let m = vec![7u8; 48];
        let any = workload(Some(Tee::Snp), vec![], true);
        assert_eq!(
            reason(workload_admits(&any, Tee::Snp, Hardware, &m)),
            "measurement"
        );
        assert_eq!(
            reason(workload_admits(&any, Tee::Snp, InsecureEmulated, &m)),
            "admitted"
        );
        let listed = workload(Some(Tee::Snp), vec![m.clone()], false);
        assert_eq!(
            reason(workload_admits(&listed, Tee::Snp, Hardware, &m)),
            "admitted"
        );
        assert_eq!(
            reason(workload_admits(&listed, Tee::Snp, Hardware, &[8u8; 48])),
            "measurement"
        );
        let empty = workload(Some(Tee::Snp), vec![], false);
        for trust in [Hardware, InsecureEmulated] {
            assert_eq!(
                reason(workload_admits(&empty, Tee::Snp, trust, &m)),
                "measurement"
            );
        }
    }

    #[test]
    fn a_vlek_report_with_chip_id_masked_has_no_inventory_identity() {
        // Attack (red team round 2, finding 6): a revoked guest re-attests with CHIP_ID
        // masked under the VLEK of another TCB and got a fresh inventory entry. The
        // genuine VLEK vector (CHIP_ID masked) is now refused before any entry exists.
        let data = |p: &str| {
            std::fs::read(format!(
                "{}/../attestation/tests/data/snp/milan-vlek-v3/{p}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .expect("vector")
        };
        let mut c = attestation::snp::SnpCollateral::new();
        c.set_vek(attestation::snp::AmdCertificate::from_der(&data("vlek.der")).expect("VLEK"));
        c.add_certificates(&data("ask_ark_asvk.pem"), "chain")
            .expect("chain");
        let claims = attestation::snp::SnpVerifier::amd()
            .expect("roots")
            .verify(
                &data("report.bin"),
                &c,
                time::macros::datetime!(2025-06-01 00:00 UTC),
            )
            .expect("authentic");
        let r = platform_id(&claims).expect_err("no identity");
        assert_eq!(r.reason, "platform-identity");
        assert!(r.error.to_string().contains("MASK_CHIP_ID"), "{}", r.error);
    }

    #[test]
    fn a_workload_matches_its_own_tee_only() {
        let m = vec![7u8; 48];
        let tdx = workload(Some(Tee::Tdx), vec![m.clone()], false);
        assert_eq!(
            reason(workload_admits(&tdx, Tee::Snp, TrustLevel::Hardware, &m)),
            "workload-tee"
        );
        let unbound = workload(None, vec![m.clone()], false);
        for tee in [Tee::Snp, Tee::Tdx] {
            assert_eq!(
                reason(workload_admits(&unbound, tee, TrustLevel::Hardware, &m)),
                "workload-tee"
            );
        }
        let mut revoked = workload(Some(Tee::Snp), vec![m.clone()], false);
        revoked.revoked = true;
        assert_eq!(
            reason(workload_admits(
                &revoked,
                Tee::Snp,
                TrustLevel::Hardware,
                &m
            )),
            "workload-revoked"
        );
    }
}
