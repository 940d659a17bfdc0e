//! The collateral service: fetches, caches and refreshes the certificates, CRLs, TCB
//! info and QE identity that evidence without its own collateral needs.
//!
//! # Sources
//!
//! - **AMD KDS** ([`items::AMD_KDS_URL`], `--amd-kds-url`): the VCEK of a chip (hwID,
//!   8 bytes on Turin) at the report's REPORTED_TCB
//!   (`/vcek/v1/{product}/{hwid}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=[&fmcSPL=]`), the
//!   product's ASK and ARK (`/vcek/v1/{product}/cert_chain`) and the ARK's CRL
//!   (`/vcek/v1/{product}/crl`). VLEKs are not published by the KDS: a VLEK-signed report
//!   must carry its certificates. A v2 report has no CPUID, so Milan then Genoa are
//!   tried.
//! - **Intel PCS v4 or a PCCS** ([`items::INTEL_PCS_URL`], `--intel-pcs-url`): TCB info
//!   by FMSPC (`/tdx/certification/v4/tcb?fmspc=`), the QE identity
//!   (`/tdx/certification/v4/qe/identity`), the PCK CRL of the PCK chain's issuer
//!   (`/sgx/certification/v4/pckcrl?ca=processor|platform&encoding=der`) and the root
//!   CA CRL (a PCCS's `/sgx/certification/v4/rootcacrl`, hex or DER; for the public
//!   PCS, the root certificate's distribution point), with the issuer chains of the
//!   `TCB-Info-Issuer-Chain` (or `SGX-TCB-Info-Issuer-Chain`),
//!   `SGX-Enclave-Identity-Issuer-Chain` and `SGX-PCK-CRL-Issuer-Chain` headers. They
//!   are assembled into the `QuoteCollateralV3` the DCAP verification already judges;
//!   the PCK chain (and so the FMSPC and the PCK CA) comes from the quote's
//!   certification data (type 5).
//!
//! # Cache, expiry, refresh
//!
//! Every item is one row of the `collateral_cache` table (migration 0006), shared by
//! every replica on the same database, with a copy in memory. An item is usable until
//! its own `nextUpdate` (CRLs, TCB info, QE identity) or `notAfter` (certificates),
//! judged at the *verification time*. Past it the item is fetched again; if that fails
//! the evidence is refused ([`ErrorKind::CollateralUnavailable`](attestation::ErrorKind)):
//! a fetch failure never downgrades a verdict, and stale collateral is never used. The
//! background task ([`CollateralService::spawn_refresh`]) fetches items a quarter of
//! their lifetime (at most a day) before they expire. Fetches time out
//! ([`CollateralConfig::timeout`]), are retried a bounded number of times with
//! exponential backoff, and a cache miss costs one fetch per item however many flows
//! need it at once (per-item single flight). Evidence chooses what is fetched (an
//! attester may invent CHIP_IDs and TCBs), so at most [`MAX_FETCHES`] fetches run at
//! once, a VCEK the KDS does not know is remembered for [`MISS_TTL`], and URLs are built
//! only from the configured bases, a product name, hex and decimal numbers (no request
//! can be steered elsewhere). Nothing cached is trusted: the SNP and DCAP
//! verification checks every signature, chain, CRL and validity window at every use.
//!
//! # Revocation
//!
//! The KDS's CRL (issued by the ARK; it lists revoked ASKs and VCEKs) is fetched with
//! every KDS chain and enforced by the SNP verification: a revoked ASK or VCEK, or an
//! expired CRL, is refused. A KDS answering 404 for the CRL is refused too (AMD's KDS
//! publishes one for every product, so a missing CRL is treated as an attack on
//! revocation), unless the operator sets `[collateral] amd_crl_optional = true` for a
//! private KDS that publishes none; then the 404 is cached (and exported) as an empty
//! item for [`NO_CRL_TTL`] and chains verify without a CRL. An unreachable KDS never
//! counts as "no CRL". On the TDX
//! side the PCK CRL and the root CA CRL are required parts of the collateral.
//!
//! # Offline mode
//!
//! With `offline`, nothing is fetched: only items imported with
//! `cvm-verifier collateral import` (exported on a connected machine with
//! `collateral export`) or cached earlier are used.
//!
//! # HTTP client
//!
//! reqwest over rustls with the ring provider: already linked by the admin CLI and the
//! load generator (same TLS stack as the service), with timeouts, an HTTP(S) proxy
//! setting (`proxy`; environment proxies are ignored so the configuration is the only
//! source) and the webpki roots, so no new dependency enters the tree. Responses are
//! bounded to [`MAX_RESPONSE`] bytes.

pub mod bundle;
pub mod items;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attestation::snp::{AmdCertificate, AttestationReport, Product, SnpCollateral, TcbLayout};
use attestation::tdx::collateral::{Collateral, QuoteCollateralV3};
use attestation::ErrorKind;
use base64::Engine;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::Db;
pub use items::{Item, ItemKey, PckCa, VcekTcb};

/// Largest response accepted from a KDS/PCS (a CRL of Intel's is ~3 KiB, TCB info
/// ~10 KiB).
pub const MAX_RESPONSE: usize = 1 << 20;
/// Outbound fetches in flight at once.
pub const MAX_FETCHES: usize = 8;
/// How long a KDS's 404 for a VCEK is remembered.
pub const MISS_TTL: Duration = Duration::from_secs(600);
/// How long a KDS's 404 for a product's CRL ("none published") is remembered, seconds.
pub const NO_CRL_TTL: i64 = 86_400;
/// Assembled collateral kept in memory (per TEE), then the map starts over.
const ASSEMBLED: usize = 4096;

/// Settings of the collateral service (`[collateral]`, `--amd-kds-url`, …).
#[derive(Debug, Clone)]
pub struct CollateralConfig {
    /// AMD KDS base URL.
    pub amd_kds_url: String,
    /// Intel PCS or PCCS base URL.
    pub intel_pcs_url: String,
    /// The root CA CRL URL (default: see [`ItemKey::url`]).
    pub intel_root_ca_crl_url: Option<String>,
    /// HTTP(S) proxy for every fetch.
    pub proxy: Option<String>,
    /// Never fetch: only imported or cached collateral.
    pub offline: bool,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Attempts per fetch (at least 1).
    pub attempts: u32,
    /// Delay before the first retry (doubled for each further one).
    pub backoff: Duration,
    /// How often the background task looks for items to refresh.
    pub refresh_interval: Duration,
    /// Refuse SNP chains when the KDS answers 404 for its CRL (default). AMD's KDS
    /// publishes a CRL for every product, so a missing one is treated as an attack on
    /// revocation; only a private KDS that publishes none is run with this `false`
    /// (`[collateral] amd_crl_optional = true`), and then chains verify without a CRL.
    pub amd_crl_required: bool,
}

impl Default for CollateralConfig {
    fn default() -> Self {
        Self {
            amd_kds_url: items::AMD_KDS_URL.into(),
            intel_pcs_url: items::INTEL_PCS_URL.into(),
            intel_root_ca_crl_url: None,
            proxy: None,
            offline: false,
            timeout: Duration::from_secs(10),
            attempts: 3,
            backoff: Duration::from_millis(500),
            refresh_interval: Duration::from_secs(300),
            amd_crl_required: true,
        }
    }
}

/// Why collateral could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum CollateralError {
    /// Offline mode and nothing usable cached.
    #[error("offline mode: no valid {what} is cached or imported (run `cvm-verifier collateral import`)")]
    Offline {
        /// The item.
        what: String,
    },
    /// The fetch failed (after retries).
    #[error("cannot fetch the {what} from {url}: {detail}")]
    Fetch {
        /// The item.
        what: String,
        /// The URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The service answered 404.
    #[error("{url} has no {what} (404)")]
    NotFound {
        /// The item.
        what: String,
        /// The URL.
        url: String,
    },
    /// The KDS publishes no CRL for the product and CRLs are required.
    #[error("the KDS at {url} publishes no CRL for {product}, so revocation cannot be checked; refused (set `[collateral] amd_crl_optional = true` only for a private KDS that publishes none)")]
    NoCrl {
        /// The product.
        product: String,
        /// The KDS base URL.
        url: String,
    },
    /// The item (cached or just fetched) is past its validity at the verification time.
    #[error("the newest {what} available expired at {expired} (before the verification time); fresh collateral is needed")]
    Stale {
        /// The item.
        what: String,
        /// Its expiry (RFC 3339).
        expired: String,
    },
    /// A response does not have the item's shape.
    #[error("the {what} received is unusable: {detail}")]
    BadResponse {
        /// The item.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// The evidence does not say what to fetch.
    #[error("{0}")]
    Evidence(String),
    /// A VLEK-signed report without its certificates.
    #[error("the report is signed by a VLEK, which the AMD KDS does not publish: the evidence must carry the VLEK certificate chain (cert_chain)")]
    VlekNotFetchable,
    /// A cache key does not parse.
    #[error("`{0}` is not a collateral item key")]
    BadKey(String),
    /// Created outside a Tokio runtime.
    #[error("the collateral service must be created inside a Tokio runtime")]
    NoRuntime,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The database failed.
    #[error("the collateral cache in the database failed")]
    Db(#[source] sqlx::Error),
    /// A cached row is corrupt.
    #[error("the collateral cache holds a corrupt row for {0}")]
    Corrupt(String),
}

impl CollateralError {
    /// The verification category: `Malformed` for unusable evidence, else
    /// `CollateralUnavailable`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CollateralError::Evidence(_) => ErrorKind::Malformed,
            _ => ErrorKind::CollateralUnavailable,
        }
    }
}

/// What the evidence verification asks of a collateral source: the narrow API used by
/// [`crate::evidence::AttestationVerifier`] when evidence carries no collateral.
pub trait CollateralSource: Send + Sync + std::fmt::Debug + 'static {
    /// The VCEK, ASK/ARK and CRL for an SNP report (raw ATTESTATION_REPORT), current at
    /// `now`.
    fn snp_collateral(
        &self,
        report: &[u8],
        now: time::OffsetDateTime,
    ) -> Result<Arc<SnpCollateral>, CollateralError>;
    /// The CRL (DER) the KDS publishes for `product`, current at `now`; `None` when the
    /// KDS publishes none. Used for chains the evidence carries (extended reports).
    fn snp_crl(
        &self,
        product: Product,
        now: time::OffsetDateTime,
    ) -> Result<Option<Arc<Item>>, CollateralError>;
    /// The DCAP collateral for a TDX quote, current at `now`.
    fn tdx_collateral(
        &self,
        quote: &[u8],
        now: time::OffsetDateTime,
    ) -> Result<Arc<Collateral>, CollateralError>;
}

type Flights = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;
/// Assembled collateral by lookup key, with the earliest expiry of its items.
type Assembled<K, C> = Mutex<HashMap<K, (Arc<C>, i64)>>;

/// The collateral service (see the module docs).
pub struct CollateralService {
    cfg: CollateralConfig,
    db: Db,
    http: reqwest::Client,
    handle: tokio::runtime::Handle,
    items: Mutex<HashMap<String, Arc<Item>>>,
    flights: Flights,
    /// Outbound fetches at once (evidence chooses what is fetched: bounded).
    fetches: tokio::sync::Semaphore,
    /// VCEK keys the KDS answered 404 for, and when (an attacker's made-up CHIP_IDs
    /// cost one KDS request per [`MISS_TTL`], not one per flow).
    misses: Mutex<HashMap<String, std::time::Instant>>,
    snp: Assembled<Vec<u8>, SnpCollateral>,
    tdx: Assembled<String, Collateral>,
}

impl std::fmt::Debug for CollateralService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollateralService")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn rfc3339(t: i64) -> String {
    crate::util::rfc3339(t)
}

impl CollateralService {
    /// A service caching in `db`. Must be called inside a Tokio runtime (its handle
    /// runs the fetches of synchronous callers).
    pub fn new(cfg: CollateralConfig, db: Db) -> Result<Self, CollateralError> {
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("cvm-verifier/", env!("CARGO_PKG_VERSION")));
        b = match &cfg.proxy {
            Some(p) => b.proxy(reqwest::Proxy::all(p).map_err(CollateralError::Client)?),
            None => b.no_proxy(),
        };
        let http = b.build().map_err(CollateralError::Client)?;
        Ok(Self {
            cfg,
            db,
            http,
            handle: tokio::runtime::Handle::try_current()
                .map_err(|_| CollateralError::NoRuntime)?,
            items: Mutex::default(),
            flights: Mutex::default(),
            fetches: tokio::sync::Semaphore::new(MAX_FETCHES),
            misses: Mutex::default(),
            snp: Mutex::default(),
            tdx: Mutex::default(),
        })
    }

    /// A product's CRL item: `Some` with the CRL, `None` for "the KDS publishes none"
    /// when that is allowed, or [`CollateralError::NoCrl`] (the default).
    fn crl_or_refuse(
        &self,
        product: Product,
        crl: Arc<Item>,
    ) -> Result<Option<Arc<Item>>, CollateralError> {
        if !crl.body.is_empty() {
            return Ok(Some(crl));
        }
        if self.cfg.amd_crl_required {
            return Err(CollateralError::NoCrl {
                product: format!("{product:?}"),
                url: self.cfg.amd_kds_url.clone(),
            });
        }
        Ok(None)
    }

    /// The configuration.
    pub fn config(&self) -> &CollateralConfig {
        &self.cfg
    }

    /// The item `key`, usable at `now` (Unix seconds): from memory, the database, or
    /// fetched (once, however many callers wait for it).
    pub async fn get(&self, key: &ItemKey, now: i64) -> Result<Arc<Item>, CollateralError> {
        let k = key.to_string();
        if let Some(hit) = self.memory(&k, now) {
            return Ok(hit);
        }
        let flight = Arc::clone(lock(&self.flights).entry(k.clone()).or_default());
        let turn = flight.lock().await;
        let result = self.get_turn(key, &k, now).await;
        // The outcome is in memory (or failed): later callers need no flight; waiters
        // holding this one find the memory copy when their turn comes.
        {
            let mut flights = lock(&self.flights);
            if flights.get(&k).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                flights.remove(&k);
            }
        }
        drop(turn);
        result
    }

    /// [`Self::get`] on the item's turn.
    async fn get_turn(
        &self,
        key: &ItemKey,
        k: &str,
        now: i64,
    ) -> Result<Arc<Item>, CollateralError> {
        if let Some(hit) = self.memory(k, now) {
            return Ok(hit);
        }
        if matches!(key, ItemKey::Vcek { .. }) {
            if let Some(at) = lock(&self.misses).get(k) {
                if at.elapsed() < MISS_TTL {
                    return Err(CollateralError::NotFound {
                        what: key.what(),
                        url: key.url(&self.cfg),
                    });
                }
            }
        }
        let cached = self.load(k).await?;
        if let Some(item) = &cached {
            if item.expires_at >= now {
                return Ok(self.remember(item.clone()));
            }
        }
        if self.cfg.offline {
            return Err(match cached {
                Some(item) => self.stale(key, item.expires_at),
                None => CollateralError::Offline { what: key.what() },
            });
        }
        let fetched = {
            let _permit = self.fetches.acquire().await;
            self.fetch(key).await
        };
        if matches!(
            (&fetched, key),
            (Err(CollateralError::NotFound { .. }), ItemKey::Vcek { .. })
        ) {
            let mut misses = lock(&self.misses);
            if misses.len() >= ASSEMBLED {
                misses.clear();
            }
            misses.insert(k.to_owned(), std::time::Instant::now());
        }
        let item = match fetched {
            Ok(item) => item,
            // The KDS publishes no CRL for this product: remembered (and exported) as an
            // empty item for a day, so that every flow does not ask again.
            // Required CRLs: a 404 is refused at once and not remembered, so that one
            // transient answer does not block every flow of the product for a day.
            Err(CollateralError::NotFound { .. })
                if matches!(key, ItemKey::AmdCrl(_)) && self.cfg.amd_crl_required =>
            {
                return Err(CollateralError::NoCrl {
                    product: key.to_string(),
                    url: self.cfg.amd_kds_url.clone(),
                });
            }
            Err(CollateralError::NotFound { .. }) if matches!(key, ItemKey::AmdCrl(_)) => {
                let fetched_at = crate::db::now();
                Item {
                    key: k.to_owned(),
                    url: key.url(&self.cfg),
                    body: Vec::new(),
                    issuer_chain: None,
                    fetched_at,
                    expires_at: fetched_at + NO_CRL_TTL,
                }
            }
            Err(e) => {
                tracing::warn!(item = k, error = %e, "collateral fetch failed");
                return Err(match cached {
                    // The service is down and the copy we have is past its validity.
                    Some(item) => CollateralError::Fetch {
                        what: key.what(),
                        url: key.url(&self.cfg),
                        detail: format!(
                            "{e}; the cached copy expired at {}",
                            rfc3339(item.expires_at)
                        ),
                    },
                    None => e,
                });
            }
        };
        self.store(&item).await?;
        let item = self.remember(item);
        if item.expires_at < now {
            return Err(self.stale(key, item.expires_at));
        }
        Ok(item)
    }

    fn stale(&self, key: &ItemKey, expired: i64) -> CollateralError {
        CollateralError::Stale {
            what: key.what(),
            expired: rfc3339(expired),
        }
    }

    fn memory(&self, k: &str, now: i64) -> Option<Arc<Item>> {
        lock(&self.items)
            .get(k)
            .filter(|i| i.expires_at >= now)
            .cloned()
    }

    fn remember(&self, item: Item) -> Arc<Item> {
        let item = Arc::new(item);
        let mut m = lock(&self.items);
        if m.len() >= ASSEMBLED * 4 {
            m.clear();
        }
        m.insert(item.key.clone(), Arc::clone(&item));
        item
    }

    /// Fetches `key` now (with retries) and checks the response.
    pub async fn fetch(&self, key: &ItemKey) -> Result<Item, CollateralError> {
        let url = key.url(&self.cfg);
        let attempts = self.cfg.attempts.max(1);
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                let delay = self.cfg.backoff.saturating_mul(1 << (attempt - 1).min(8));
                tokio::time::sleep(delay).await;
            }
            match self.fetch_once(key, &url).await {
                Ok(Some(item)) => return Ok(item),
                Ok(None) => {
                    return Err(CollateralError::NotFound {
                        what: key.what(),
                        url,
                    })
                }
                Err(Retry::No(e)) => return Err(e),
                Err(Retry::Yes(detail)) => last = detail,
            }
        }
        Err(CollateralError::Fetch {
            what: key.what(),
            url,
            detail: format!("{last} (after {attempts} attempts)"),
        })
    }

    async fn fetch_once(&self, key: &ItemKey, url: &str) -> Result<Option<Item>, Retry> {
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| Retry::Yes(error_chain(&e)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(Retry::Yes(format!("HTTP {status}")));
        }
        if !status.is_success() {
            return Err(Retry::No(CollateralError::Fetch {
                what: key.what(),
                url: url.to_owned(),
                detail: format!("HTTP {status}"),
            }));
        }
        let mut issuer_chain = None;
        for name in key.issuer_header() {
            if let Some(v) = resp.headers().get(*name) {
                let v = v.to_str().ok().and_then(items::percent_decode);
                issuer_chain = Some(v.ok_or_else(|| {
                    Retry::No(CollateralError::BadResponse {
                        what: key.what(),
                        detail: format!("the {name} header is not URL-encoded text"),
                    })
                })?);
                break;
            }
        }
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_RESPONSE as u64)
        {
            return Err(Retry::No(too_large(key)));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| Retry::Yes(error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(Retry::No(too_large(key)));
            }
            body.extend_from_slice(&chunk);
        }
        let (body, expires_at) = key
            .check(&body, issuer_chain.as_deref())
            .map_err(Retry::No)?;
        Ok(Some(Item {
            key: key.to_string(),
            url: url.to_owned(),
            body,
            issuer_chain,
            fetched_at: crate::db::now(),
            expires_at,
        }))
    }

    async fn load(&self, k: &str) -> Result<Option<Item>, CollateralError> {
        let row = sqlx::query(
            "SELECT key, url, body, issuer_chain, fetched_at, expires_at FROM collateral_cache WHERE key = $1",
        )
        .bind(k)
        .fetch_optional(self.db.pool())
        .await
        .map_err(CollateralError::Db)?;
        row.map(|r| item_from_row(&r)).transpose()
    }

    /// Stores `item` unless the database holds one that expires later.
    pub async fn store(&self, item: &Item) -> Result<(), CollateralError> {
        store_item(&self.db, item).await
    }

    /// Fetches every cached item that expires within a quarter of its lifetime (at most
    /// a day) of `now`, or has expired; failures are logged and the old copy kept.
    /// Returns the number of items refreshed.
    pub async fn refresh_due(&self, now: i64) -> Result<usize, CollateralError> {
        if self.cfg.offline {
            return Ok(0);
        }
        let mut n = 0;
        for item in list_items(&self.db).await? {
            let margin = ((item.expires_at - item.fetched_at) / 4).clamp(0, 86_400);
            if item.expires_at - margin > now {
                continue;
            }
            let Ok(key) = item.key.parse::<ItemKey>() else {
                continue;
            };
            let flight = Arc::clone(lock(&self.flights).entry(item.key.clone()).or_default());
            let _turn = flight.lock().await;
            let fetched = self.fetch(&key).await;
            {
                let mut flights = lock(&self.flights);
                if flights
                    .get(&item.key)
                    .is_some_and(|f| Arc::ptr_eq(f, &flight))
                {
                    flights.remove(&item.key);
                }
            }
            match fetched {
                Ok(fresh) => {
                    self.store(&fresh).await?;
                    self.remember(fresh);
                    n += 1;
                }
                Err(e) => tracing::warn!(item = %item.key, error = %e, "collateral refresh failed"),
            }
        }
        Ok(n)
    }

    /// Runs [`Self::refresh_due`] every `refresh_interval` at the wall-clock time.
    pub fn spawn_refresh(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.cfg.refresh_interval);
            loop {
                tick.tick().await;
                match self.refresh_due(crate::db::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(items = n, "refreshed collateral"),
                    Err(e) => tracing::warn!(error = %e, "collateral refresh failed"),
                }
            }
        })
    }

    /// The SNP collateral for `report` at `now` (async form of
    /// [`CollateralSource::snp_collateral`]).
    pub async fn snp(
        &self,
        report: &[u8],
        now: i64,
    ) -> Result<(Arc<SnpCollateral>, i64), CollateralError> {
        let r = AttestationReport::parse(report)
            .map_err(|e| CollateralError::Evidence(format!("the report is malformed: {e}")))?;
        use attestation::snp::report::SigningKey;
        match r.signer_info.signing_key {
            SigningKey::Vcek => {}
            SigningKey::Vlek => return Err(CollateralError::VlekNotFetchable),
            SigningKey::None => {
                return Err(CollateralError::Evidence("the report is not signed".into()))
            }
        }
        if r.chip_id_masked() {
            return Err(CollateralError::Evidence(
                "CHIP_ID is masked, so the VCEK cannot be fetched: the evidence must carry the certificate chain".into(),
            ));
        }
        let products: Vec<Product> = match r.cpuid {
            Some(c) => vec![c.product().ok_or_else(|| {
                CollateralError::Evidence("the report's CPUID is not an SNP product".into())
            })?],
            // Version 2 reports predate Turin and carry no CPUID.
            None => vec![Product::Milan, Product::Genoa],
        };
        let mut first = None;
        for product in products {
            let layout = TcbLayout::for_product(product);
            let tcb = r.reported_tcb.decode(layout);
            let hw_len = if layout == TcbLayout::Turin { 8 } else { 64 };
            let key = ItemKey::Vcek {
                product,
                hw_id: r.chip_id.get(..hw_len).unwrap_or_default().to_vec(),
                tcb: VcekTcb {
                    bootloader: tcb.bootloader,
                    tee: tcb.tee,
                    snp: tcb.snp,
                    microcode: tcb.microcode,
                    fmc: (layout == TcbLayout::Turin).then(|| tcb.fmc.unwrap_or(0)),
                },
            };
            let vcek = match self.get(&key, now).await {
                Ok(v) => v,
                Err(e @ CollateralError::NotFound { .. }) => {
                    first.get_or_insert(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let chain = self.get(&ItemKey::AmdCertChain(product), now).await?;
            // An empty item: the issuer publishes no CRL (see the module docs).
            let crl = self.get(&ItemKey::AmdCrl(product), now).await?;
            let crl = self.crl_or_refuse(product, crl)?;
            let mut c = SnpCollateral::new();
            let cert = AmdCertificate::from_der(&vcek.body).map_err(|e| corrupt(&key, e))?;
            c.set_vek(cert);
            c.add_certificates(&chain.body, "ASK/ARK chain from the KDS")
                .map_err(|e| corrupt(&key, e))?;
            let mut expires = vcek.expires_at.min(chain.expires_at);
            if let Some(crl) = crl {
                c.add_crls(&crl.body, "CRL from the KDS")
                    .map_err(|e| corrupt(&key, e))?;
                expires = expires.min(crl.expires_at);
            }
            return Ok((Arc::new(c), expires));
        }
        Err(first.unwrap_or_else(|| CollateralError::Evidence("no SNP product to try".into())))
    }

    /// The TDX collateral for `quote` at `now` (async form of
    /// [`CollateralSource::tdx_collateral`]).
    pub async fn tdx(
        &self,
        quote: &[u8],
        now: i64,
    ) -> Result<(Arc<Collateral>, i64), CollateralError> {
        let (fmspc, ca) = quote_platform(quote)?;
        let tcb = self.get(&ItemKey::TdxTcbInfo(fmspc), now).await?;
        let qe = self.get(&ItemKey::TdxQeIdentity, now).await?;
        let pck_crl = self.get(&ItemKey::PckCrl(ca), now).await?;
        let root_crl = self.get(&ItemKey::RootCaCrl, now).await?;
        let bad = |k: &ItemKey| CollateralError::Corrupt(k.to_string());
        let (tcb_info, tcb_info_signature) = items::signed_json(&tcb.body, "tcbInfo")
            .map_err(|_| bad(&ItemKey::TdxTcbInfo(fmspc)))?;
        let (qe_identity, qe_identity_signature) = items::signed_json(&qe.body, "enclaveIdentity")
            .map_err(|_| bad(&ItemKey::TdxQeIdentity))?;
        let v3 = QuoteCollateralV3 {
            pck_crl_issuer_chain: pck_crl.issuer_chain.clone().unwrap_or_default(),
            root_ca_crl: root_crl.body.clone(),
            pck_crl: pck_crl.body.clone(),
            tcb_info_issuer_chain: tcb.issuer_chain.clone().unwrap_or_default(),
            tcb_info: tcb_info.to_owned(),
            tcb_info_signature,
            qe_identity_issuer_chain: qe.issuer_chain.clone().unwrap_or_default(),
            qe_identity: qe_identity.to_owned(),
            qe_identity_signature,
            pck_certificate_chain: None,
        };
        let c = Collateral::from_v3(v3)
            .map_err(|e| CollateralError::Corrupt(format!("assembled TDX collateral: {e}")))?;
        let expires = [&tcb, &qe, &pck_crl, &root_crl]
            .iter()
            .map(|i| i.expires_at)
            .min()
            .unwrap_or(0);
        Ok((Arc::new(c), expires))
    }

    /// Runs `fut` to completion from synchronous code (a blocking-pool thread or any
    /// thread outside the runtime), on a helper thread so that it never blocks inside
    /// an async context.
    fn run<T: Send>(&self, fut: impl std::future::Future<Output = T> + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| self.handle.block_on(fut))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

enum Retry {
    Yes(String),
    No(CollateralError),
}

fn too_large(key: &ItemKey) -> CollateralError {
    CollateralError::BadResponse {
        what: key.what(),
        detail: format!("the response exceeds {MAX_RESPONSE} bytes"),
    }
}

fn corrupt(key: &ItemKey, e: impl std::fmt::Display) -> CollateralError {
    CollateralError::Corrupt(format!("{key}: {e}"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The FMSPC and PCK CA of a quote, from the PCK leaf certificate of its certification
/// data (type 5).
pub fn quote_platform(quote: &[u8]) -> Result<([u8; 6], PckCa), CollateralError> {
    let q = attestation::tdx::quote::Quote::parse(quote)
        .map_err(|e| CollateralError::Evidence(format!("the quote is malformed: {e}")))?;
    let chain = attestation::tdx::pck::PckChain::from_pem(&q.signature_data.pck_cert_chain)
        .map_err(|e| {
            CollateralError::Evidence(format!(
                "the quote's PCK certificate chain is unusable: {e}"
            ))
        })?;
    let leaf = chain
        .certs_der
        .first()
        .ok_or_else(|| CollateralError::Evidence("the quote's PCK chain is empty".into()))?;
    let ext = dcap_qvl::intel::parse_pck_extension(leaf).map_err(|e| {
        CollateralError::Evidence(format!(
            "the PCK certificate has no usable SGX extension: {e}"
        ))
    })?;
    let cert = attestation::tdx::pck::certificate_from_der(leaf)
        .map_err(|e| CollateralError::Evidence(format!("the PCK certificate is malformed: {e}")))?;
    let issuer = cert.tbs_certificate.issuer.to_string();
    let ca = if issuer.contains("PCK Platform CA") {
        PckCa::Platform
    } else if issuer.contains("PCK Processor CA") {
        PckCa::Processor
    } else {
        return Err(CollateralError::Evidence(format!(
            "the PCK certificate's issuer `{issuer}` is neither a PCK Platform CA nor a PCK Processor CA"
        )));
    };
    Ok((ext.fmspc, ca))
}

fn item_from_row(r: &sqlx::any::AnyRow) -> Result<Item, CollateralError> {
    let key: String = r.try_get("key").map_err(CollateralError::Db)?;
    let body: String = r.try_get("body").map_err(CollateralError::Db)?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| CollateralError::Corrupt(key.clone()))?;
    Ok(Item {
        url: r.try_get("url").map_err(CollateralError::Db)?,
        issuer_chain: r.try_get("issuer_chain").map_err(CollateralError::Db)?,
        fetched_at: r.try_get("fetched_at").map_err(CollateralError::Db)?,
        expires_at: r.try_get("expires_at").map_err(CollateralError::Db)?,
        body,
        key,
    })
}

/// Every cached item, by key.
pub async fn list_items(db: &Db) -> Result<Vec<Item>, CollateralError> {
    let rows = sqlx::query(
        "SELECT key, url, body, issuer_chain, fetched_at, expires_at FROM collateral_cache ORDER BY key",
    )
    .fetch_all(db.pool())
    .await
    .map_err(CollateralError::Db)?;
    rows.iter().map(item_from_row).collect()
}

/// Stores `item` unless the database holds a copy of it that expires later.
pub async fn store_item(db: &Db, item: &Item) -> Result<(), CollateralError> {
    let body = base64::engine::general_purpose::STANDARD.encode(&item.body);
    let q = sqlx::query(
        "INSERT INTO collateral_cache (key, url, body, issuer_chain, fetched_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (key) DO UPDATE SET url = excluded.url, body = excluded.body, \
         issuer_chain = excluded.issuer_chain, fetched_at = excluded.fetched_at, \
         expires_at = excluded.expires_at \
         WHERE excluded.expires_at >= collateral_cache.expires_at",
    )
    .bind(&item.key)
    .bind(&item.url)
    .bind(body)
    .bind(item.issuer_chain.clone())
    .bind(item.fetched_at)
    .bind(item.expires_at);
    match db.backend() {
        // One SQLite writer at a time: through the write turn.
        crate::db::Backend::Sqlite => {
            let mut tx = db.begin().await.map_err(|e| match e {
                crate::db::DbError::Query(q) => CollateralError::Db(q),
                other => CollateralError::Corrupt(other.to_string()),
            })?;
            q.execute(&mut *tx).await.map_err(CollateralError::Db)?;
            tx.commit().await.map_err(CollateralError::Db)?;
        }
        crate::db::Backend::Postgres => {
            q.execute(db.pool()).await.map_err(CollateralError::Db)?;
        }
    }
    Ok(())
}

impl CollateralSource for CollateralService {
    fn snp_collateral(
        &self,
        report: &[u8],
        now: time::OffsetDateTime,
    ) -> Result<Arc<SnpCollateral>, CollateralError> {
        let t = now.unix_timestamp();
        // The report's signed part identifies the chip and TCB; the assembled collateral
        // is keyed by the fields that choose it (CHIP_ID, REPORTED_TCB, CPUID).
        let id = snp_lookup_key(report);
        if let Some((c, exp)) = lock(&self.snp).get(&id) {
            if *exp >= t {
                return Ok(Arc::clone(c));
            }
        }
        let (c, exp) = self.run(self.snp(report, t))?;
        let mut m = lock(&self.snp);
        if m.len() >= ASSEMBLED {
            m.clear();
        }
        m.insert(id, (Arc::clone(&c), exp));
        Ok(c)
    }

    fn snp_crl(
        &self,
        product: Product,
        now: time::OffsetDateTime,
    ) -> Result<Option<Arc<Item>>, CollateralError> {
        let t = now.unix_timestamp();
        let key = ItemKey::AmdCrl(product);
        let item = match self.memory(&key.to_string(), t) {
            Some(hit) => hit,
            None => self.run(self.get(&key, t))?,
        };
        self.crl_or_refuse(product, item)
    }

    fn tdx_collateral(
        &self,
        quote: &[u8],
        now: time::OffsetDateTime,
    ) -> Result<Arc<Collateral>, CollateralError> {
        let t = now.unix_timestamp();
        // Keyed by the quote's PCK chain, which fixes the FMSPC and the PCK CA: a warm
        // lookup costs a quote parse and a SHA-256, not X.509 parsing.
        let q = attestation::tdx::quote::Quote::parse(quote)
            .map_err(|e| CollateralError::Evidence(format!("the quote is malformed: {e}")))?;
        let id = hex::encode(Sha256::digest(&q.signature_data.pck_cert_chain));
        if let Some((c, exp)) = lock(&self.tdx).get(&id) {
            if *exp >= t {
                return Ok(Arc::clone(c));
            }
        }
        let (c, exp) = self.run(self.tdx(quote, t))?;
        let mut m = lock(&self.tdx);
        if m.len() >= ASSEMBLED {
            m.clear();
        }
        m.insert(id, (Arc::clone(&c), exp));
        Ok(c)
    }
}

/// CHIP_ID, REPORTED_TCB, CPUID and SIGNING_KEY of a report: what chooses its VCEK.
fn snp_lookup_key(report: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(96);
    // SIGNER_INFO (0x48), CPUID (0x188..0x18B), REPORTED_TCB (0x180), CHIP_ID (0x1A0).
    for (a, b) in [(0x48, 0x4C), (0x180, 0x18C), (0x1A0, 0x1E0)] {
        k.extend_from_slice(report.get(a..b).unwrap_or_default());
    }
    k
}
