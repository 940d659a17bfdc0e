//! The HTTP service: the route table, the router, and `serve`.
//!
//! [`routes`] is the single list of routes; the router is built from it and the OpenAPI
//! test (`tests/openapi.rs`) compares it with `openapi.yaml` both ways.

pub mod admin;
mod conn;
pub mod kbs;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

use crate::collateral::CollateralService;
use crate::config::{ServeConfig, TlsMode};
use crate::crypto::master::{MasterKey, MasterKeyError};
use crate::db::{Db, DbError};
use crate::error::{problem_for_rejections, ApiError};
use crate::evidence::{AttestationVerifier, EvidenceVerifier, TrustError};
use crate::metrics::Metrics;
use crate::ratelimit::{BlockingPool, FailureLimiter, RateLimiter, RefusalAggregator};
use crate::store::sessions::{self, SigningKeyError};
pub use state::{AppState, AuthLimits, FloodLimits, Inner, Limits};

/// Which part of the service a route belongs to (decides middleware and body limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// Unauthenticated operational endpoints.
    Public,
    /// The guest-facing KBS protocol.
    Kbs,
    /// The admin plane (authenticated, RBAC).
    Admin,
}

/// One route: method, path (OpenAPI template syntax) and handler.
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path template, e.g. `/admin/v1/users/{name}`.
    pub path: &'static str,
    /// The plane.
    pub plane: Plane,
    handler: MethodRouter<AppState>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

fn r(method: Method, path: &'static str, plane: Plane, handler: MethodRouter<AppState>) -> Route {
    Route {
        method,
        path,
        plane,
        handler,
    }
}

/// Every route of the service.
pub fn routes() -> Vec<Route> {
    use Plane::{Admin, Kbs, Public};
    let get = |h| on(MethodFilter::GET, h);
    vec![
        r(Method::GET, "/healthz", Public, get(healthz)),
        r(
            Method::GET,
            "/metrics",
            Public,
            on(MethodFilter::GET, metrics),
        ),
        r(
            Method::GET,
            "/.well-known/jwks.json",
            Public,
            on(MethodFilter::GET, jwks),
        ),
        r(
            Method::POST,
            "/kbs/v0/auth",
            Kbs,
            on(MethodFilter::POST, kbs::auth),
        ),
        r(
            Method::POST,
            "/kbs/v0/attest",
            Kbs,
            on(MethodFilter::POST, kbs::attest),
        ),
        r(
            Method::GET,
            "/kbs/v0/resource/{repository}/{type}/{tag}",
            Kbs,
            on(MethodFilter::GET, kbs::resource),
        ),
        r(
            Method::GET,
            "/admin/v1/whoami",
            Admin,
            on(MethodFilter::GET, admin::whoami),
        ),
        r(
            Method::GET,
            "/admin/v1/users",
            Admin,
            on(MethodFilter::GET, admin::list_users),
        ),
        r(
            Method::POST,
            "/admin/v1/users",
            Admin,
            on(MethodFilter::POST, admin::create_user),
        ),
        r(
            Method::DELETE,
            "/admin/v1/users/{name}",
            Admin,
            on(MethodFilter::DELETE, admin::delete_user),
        ),
        r(
            Method::GET,
            "/admin/v1/workloads",
            Admin,
            on(MethodFilter::GET, admin::list_workloads),
        ),
        r(
            Method::GET,
            "/admin/v1/workloads/{name}",
            Admin,
            on(MethodFilter::GET, admin::get_workload),
        ),
        r(
            Method::PUT,
            "/admin/v1/workloads/{name}",
            Admin,
            on(MethodFilter::PUT, admin::put_workload),
        ),
        r(
            Method::DELETE,
            "/admin/v1/workloads/{name}",
            Admin,
            on(MethodFilter::DELETE, admin::delete_workload),
        ),
        r(
            Method::POST,
            "/admin/v1/workloads/{name}/measurements",
            Admin,
            on(MethodFilter::POST, admin::add_measurement),
        ),
        r(
            Method::DELETE,
            "/admin/v1/workloads/{name}/measurements/{measurement}",
            Admin,
            on(MethodFilter::DELETE, admin::remove_measurement),
        ),
        r(
            Method::PUT,
            "/admin/v1/workloads/{name}/revocation",
            Admin,
            on(MethodFilter::PUT, admin::revoke_workload),
        ),
        r(
            Method::GET,
            "/admin/v1/resources",
            Admin,
            on(MethodFilter::GET, admin::list_resources),
        ),
        r(
            Method::PUT,
            "/admin/v1/resources/{repository}/{type}/{tag}",
            Admin,
            on(MethodFilter::PUT, admin::put_resource),
        ),
        r(
            Method::DELETE,
            "/admin/v1/resources/{repository}/{type}/{tag}",
            Admin,
            on(MethodFilter::DELETE, admin::delete_resource),
        ),
        r(
            Method::GET,
            "/admin/v1/inventory",
            Admin,
            on(MethodFilter::GET, admin::inventory),
        ),
        r(
            Method::PUT,
            "/admin/v1/inventory/{id}/revocation",
            Admin,
            on(MethodFilter::PUT, admin::revoke_guest),
        ),
        r(
            Method::GET,
            "/admin/v1/audit",
            Admin,
            on(MethodFilter::GET, admin::audit_log),
        ),
        r(
            Method::GET,
            "/admin/v1/audit/verify",
            Admin,
            on(MethodFilter::GET, admin::audit_verify),
        ),
    ]
}

/// Builds the router for `state`.
pub fn router(state: AppState) -> Router {
    let mut public = Router::new();
    let mut kbs_routes = Router::new();
    let mut attest = Router::new();
    let mut admin_routes = Router::new();
    for route in routes() {
        match route.plane {
            Plane::Public => public = public.route(route.path, route.handler),
            Plane::Kbs if route.path == "/kbs/v0/attest" => {
                attest = attest.route(route.path, route.handler)
            }
            Plane::Kbs => kbs_routes = kbs_routes.route(route.path, route.handler),
            Plane::Admin => admin_routes = admin_routes.route(route.path, route.handler),
        }
    }
    let limits = &state.limits;
    let admin_routes = admin_routes.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        admin::authenticate,
    ));
    Router::new()
        .merge(public.layer(DefaultBodyLimit::max(limits.body_limit)))
        .merge(kbs_routes.layer(DefaultBodyLimit::max(limits.body_limit)))
        .merge(attest.layer(DefaultBodyLimit::max(limits.attest_body_limit)))
        .merge(admin_routes.layer(DefaultBodyLimit::max(limits.body_limit)))
        // Inside the problem mapping, so a 408 is a problem document too.
        .layer(axum::middleware::from_fn_with_state(
            state.flood.request_timeout,
            request_timeout,
        ))
        .layer(axum::middleware::map_response(problem_for_rejections))
        .with_state(state)
}

/// Bounds the time to receive a request's body and answer it (`request_timeout`).
async fn request_timeout(
    State(limit): State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "the request took too long").into_response(),
    }
}

async fn healthz(State(st): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(st.db.pool()).await {
        Ok(_) => axum::Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: database unavailable");
            let mut r = ApiError::Internal(Box::new(DbError::Query(e))).into_response();
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let mut r = st.metrics.encode().into_response();
    if let Ok(v) =
        header::HeaderValue::from_str("application/openmetrics-text; version=1.0.0; charset=utf-8")
    {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

async fn jwks(State(st): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(st.signer.jwks())
}

/// Errors starting or running the service.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The master key could not be loaded.
    #[error("cannot load the master key")]
    MasterKey(#[source] MasterKeyError),
    /// The database could not be opened.
    #[error("cannot open the database")]
    Db(#[source] DbError),
    /// The token signing key could not be loaded.
    #[error("cannot load the token signing key (is this the database's master key?)")]
    SigningKey(#[source] SigningKeyError),
    /// Trust anchors could not be loaded.
    #[error("cannot load trust anchors")]
    Trust(#[source] TrustError),
    /// The collateral service could not be started.
    #[error("cannot start the collateral service")]
    Collateral(#[source] crate::collateral::CollateralError),
    /// TLS material could not be loaded.
    #[error("cannot load the TLS certificate and key")]
    Tls(#[source] std::io::Error),
    /// Binding or serving failed.
    #[error("the server failed")]
    Io(#[source] std::io::Error),
}

/// Builds the state from a configuration (opens the DB, runs migrations, loads keys).
pub async fn build_state(
    cfg: &ServeConfig,
    verifier: Option<Arc<dyn EvidenceVerifier>>,
) -> Result<AppState, ServeError> {
    let mut extra = Vec::new();
    for f in &cfg.extra_master_keys {
        extra.push(MasterKey::load(f).map_err(ServeError::MasterKey)?);
    }
    let master_key = MasterKey::from_source(&cfg.master_key)
        .map_err(ServeError::MasterKey)?
        .with_extra_keys(extra);
    if !cfg.extra_master_keys.is_empty() {
        tracing::warn!(
            keys = ?master_key.accepted_ids_hex(),
            "extra master keys accepted for opening values (master-key rotation in progress)"
        );
    }
    let db = Db::open(&cfg.database_url).await.map_err(ServeError::Db)?;
    let signer = sessions::signing_key(&db, &master_key)
        .await
        .map_err(ServeError::SigningKey)?;
    let emulated = !cfg.emulated_trust.is_empty();
    let metrics = Metrics::new();
    let (verifier, collateral): (Arc<dyn EvidenceVerifier>, _) = match verifier {
        Some(v) => (v, None),
        None => {
            let service = Arc::new(
                CollateralService::new(cfg.collateral.clone(), db.clone())
                    .and_then(|c| {
                        Ok(c.with_anchors(crate::collateral::Anchors::with_emulated(
                            &cfg.emulated_trust,
                        )?)
                        .with_refusal_hook(metrics.collateral_refusal_hook()))
                    })
                    .map_err(ServeError::Collateral)?,
            );
            let v = AttestationVerifier::new(&cfg.emulated_trust)
                .map_err(ServeError::Trust)?
                .with_collateral(service.clone());
            (Arc::new(v), Some(service))
        }
    };
    let limits = Limits {
        session_ttl: cfg.session_ttl,
        token_ttl: cfg.token_ttl,
        secure_cookies: matches!(cfg.tls, TlsMode::Tls { .. }),
        attest_body_limit: cfg.attest_body_limit,
        body_limit: cfg.body_limit,
    };
    let a = cfg.auth_limits;
    let f = cfg.flood_limits;
    let session_window = Duration::from_secs(u64::try_from(cfg.session_ttl).unwrap_or(1).max(1));
    Ok(AppState(Arc::new(Inner {
        db,
        master_key,
        signer,
        verifier,
        collateral,
        emulated,
        metrics,
        ip_limiter: FailureLimiter::new(a.per_ip, a.window),
        user_limiter: FailureLimiter::new(a.per_user, a.window),
        argon2_pool: BlockingPool::new(f.argon2_concurrency, f.argon2_queue, "argon2")
            .map_err(ServeError::Io)?,
        argon2_nanos: std::sync::atomic::AtomicU64::new(50_000_000),
        kbs_auth_limiter: RateLimiter::new(f.kbs_auth_per_ip, f.kbs_auth_global, f.kbs_auth_window),
        session_budget: RateLimiter::new(f.open_sessions_per_ip, f.open_sessions, session_window),
        kbs_refusal_limiter: FailureLimiter::new(f.kbs_refusals_per_ip, f.kbs_refusal_window),
        attest_permits: tokio::sync::Semaphore::new(f.attest_concurrency),
        refusal_audit: RefusalAggregator::new(
            f.audit_refusals_per_client,
            f.audit_refusals_global,
            f.audit_refusal_window,
        ),
        flood: f,
        limits,
    })))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Loads the HTTPS certificate chain and key into a rustls configuration (HTTP/1.1 only).
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, std::io::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid =
        |e: rustls::pki_types::pem::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(invalid)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(invalid)?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Writes pending refusal summaries; a failure is logged and retried at the next flush.
async fn flush_summaries(st: &AppState, all: bool) {
    match kbs::flush_refusal_summaries(st, all).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(records = n, "wrote refusal summary records"),
        Err(e) => tracing::warn!(error = %e, "cannot write refusal summary records"),
    }
}

/// Runs the service until SIGINT/SIGTERM, then drains connections (up to 10 s) and
/// writes the pending refusal summaries. `on_listening` receives the bound address (with
/// the actual port for `:0`).
pub async fn serve(
    cfg: ServeConfig,
    on_listening: impl FnOnce(SocketAddr, bool),
) -> Result<(), ServeError> {
    // One process-wide rustls provider (ring); ignore if the embedder installed one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::ratelimit::release_large_allocations();
    let state = build_state(&cfg, None).await?;
    if state.emulated {
        let dirs: Vec<String> = cfg
            .emulated_trust
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        tracing::warn!(dirs = ?dirs, "EMULATED TRUST ANCHORS CONFIGURED: evidence from emulated TEEs proves nothing about memory encryption; results are marked insecure-emulated");
        eprintln!(
            "WARNING: emulated trust anchors configured ({}); accepted results are marked insecure-emulated and must never protect real secrets",
            dirs.join(", ")
        );
    }
    let tls = match &cfg.tls {
        TlsMode::Tls { cert, key } => Some(tls_acceptor(cert, key).map_err(ServeError::Tls)?),
        TlsMode::InsecureHttp => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(ServeError::Io)?;
    let addr = listener.local_addr().map_err(ServeError::Io)?;
    let db = state.db.clone();
    // Expired sessions are deleted promptly (every 10 s), so a flood of challenges
    // occupies the database for at most the session TTL.
    let purge_db = db.clone();
    // Collateral is refreshed in the background before it expires (not offline).
    let refresher = state
        .collateral
        .as_ref()
        .filter(|c| !c.config().offline)
        .map(|c| Arc::clone(c).spawn_refresh());
    let purge = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            if let Err(e) = sessions::purge_expired(&purge_db, 0).await {
                tracing::warn!(error = %e, "cannot purge expired sessions");
            }
        }
    });
    let flush_state = state.clone();
    let period = state.flood.audit_refusal_window;
    let flusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tick.tick().await;
            flush_summaries(&flush_state, true).await;
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: draining connections");
        let _ = stop_tx.send(true);
    });
    on_listening(addr, tls.is_some());
    conn::run(
        listener,
        tls,
        router(state.clone()),
        state.flood,
        state.clone(),
        stop_rx,
        Duration::from_secs(10),
    )
    .await;
    flusher.abort();
    purge.abort();
    if let Some(r) = refresher {
        r.abort();
    }
    flush_summaries(&state, true).await;
    db.close().await;
    Ok(())
}
