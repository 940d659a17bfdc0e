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
//! A product's CRL is bound to that product (RFC 5280 §6.3.3: a CRL speaks only for
//! the certificates its issuer issued): it is cached only if it is issued and signed by
//! a trusted ARK of that product *and* by the ARK of the product's authentic ASK/ARK
//! chain item (AMD's per-product roots; under `--emulated-trust`, the emulated
//! platform's own ARK), see [`auth`]. So a KDS answering `/vcek/v1/Milan/crl` with
//! Genoa's genuine CRL, or with another emulated platform's, is refused and nothing is
//! cached. When the KDS's CRL is used, the collateral also requires a CRL of the
//! verified chain's ARK ([`SnpCollateral::require_ark_crl`]): CRLs of other issuers are
//! ignored, and if none of the chain's ARK is left the evidence is refused.
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

pub mod auth;
pub mod budget;
pub mod bundle;
pub mod items;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attestation::snp::{AmdCertificate, AttestationReport, Product, SnpCollateral, TcbLayout};
use attestation::tdx::collateral::{Collateral, Freshness, QuoteCollateralV3};
use attestation::ErrorKind;
use base64::Engine;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::Db;
pub use auth::Anchors;
pub use items::{Item, ItemKey, PckCa, VcekTcb};

/// Largest response accepted from a KDS/PCS (a CRL of Intel's is ~3 KiB, TCB info
/// ~10 KiB).
pub const MAX_RESPONSE: usize = 1 << 20;
/// Outbound fetches in flight at once.
pub const MAX_FETCHES: usize = 8;
/// How long a KDS's or PCS's 404 for a VCEK or TCB info is remembered.
pub const MISS_TTL: Duration = Duration::from_secs(600);
/// The longest `Retry-After` of a 429 that is honoured (a longer one is cut to this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// A hook counting budget refusals by scope (`client`, `global`): the metrics.
pub type RefusalHook = Arc<dyn Fn(&'static str) + Send + Sync>;
/// How long a KDS's 404 for a product's CRL ("none published") is remembered, seconds.
pub const NO_CRL_TTL: i64 = 86_400;
/// How long a TDX rollback floor read from the database is reused.
const FLOOR_TTL: Duration = Duration::from_secs(60);
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
    /// Evidence-driven cache-miss fetches one client (source IP) may cause per
    /// [`Self::fetch_budget_window`].
    pub fetch_budget_per_client: u32,
    /// Evidence-driven cache-miss fetches all clients together may cause per window.
    pub fetch_budget_global: u32,
    /// The budget window.
    pub fetch_budget_window: Duration,
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
            fetch_budget_per_client: 16,
            fetch_budget_global: 256,
            fetch_budget_window: Duration::from_secs(60),
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
    /// An item is not signed by the trusted roots (forged, or from another root).
    #[error("the {what} is not authentic: {detail}")]
    Unauthentic {
        /// The item.
        what: String,
        /// What did not verify.
        detail: String,
    },
    /// The trust anchors could not be loaded.
    #[error("cannot load the collateral trust anchors: {0}")]
    Anchors(String),
    /// A fetch budget is spent (see [`budget`]).
    #[error("too many collateral fetches for evidence not seen before ({} budget of {limit} per {window_secs} s spent); the {what} was not fetched, try again later", scope.as_str())]
    Budget {
        /// The item.
        what: String,
        /// Which budget.
        scope: budget::Scope,
        /// Its size.
        limit: u32,
        /// Its window, seconds.
        window_secs: u64,
    },
    /// The service answered 429 with Retry-After (remembered until then).
    #[error("{url} is rate-limiting the verifier (429); the {what} is not asked for again for {retry_after_secs} s")]
    Throttled {
        /// The item.
        what: String,
        /// The URL.
        url: String,
        /// Seconds until asking again.
        retry_after_secs: u64,
    },
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
    /// The VLEK CRL (DER) the KDS publishes for `product` (`/vlek/v1/{product}/crl`),
    /// current at `now`; `None` when the KDS publishes none and that is allowed
    /// (`amd_crl_optional`). Used for VLEK chains, which the evidence always carries.
    fn snp_vlek_crl(
        &self,
        product: Product,
        now: time::OffsetDateTime,
    ) -> Result<Option<Arc<Item>>, CollateralError>;
    /// How new the newest TDX collateral the source has seen for `quote`'s platform is
    /// (cached, even if expired; nothing is fetched), if any: the floor below which
    /// collateral carried in evidence is a rollback.
    fn tdx_floor(&self, quote: &[u8]) -> Option<Freshness>;
    /// The source's current DCAP collateral for `quote` at `now` if it has it in memory
    /// (nothing is fetched).
    fn tdx_cached(&self, quote: &[u8], now: time::OffsetDateTime) -> Option<Arc<Collateral>>;
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
    /// What every item must chain to before it is cached or served.
    anchors: Anchors,
    http: reqwest::Client,
    handle: tokio::runtime::Handle,
    items: Mutex<HashMap<String, Arc<Item>>>,
    flights: Flights,
    /// Outbound fetches at once (evidence chooses what is fetched: bounded).
    fetches: tokio::sync::Semaphore,
    /// Negative answers remembered until an instant: 404 for a VCEK or TCB info (an
    /// attacker's made-up CHIP_IDs and FMSPCs cost one request per [`MISS_TTL`], not
    /// one per flow) and 429 with Retry-After for any item.
    misses: Mutex<HashMap<String, (std::time::Instant, Negative)>>,
    /// Budgets of evidence-driven cache-miss fetches.
    budget: budget::FetchBudget,
    /// Counts budget refusals (the service's metrics).
    on_refusal: Option<RefusalHook>,
    snp: Assembled<Vec<u8>, SnpCollateral>,
    tdx: Assembled<String, Collateral>,
    /// TDX rollback floors read from the database, by PCK chain (see
    /// [`CollateralSource::tdx_floor`]).
    floors: Mutex<HashMap<String, (Option<Freshness>, std::time::Instant)>>,
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
        let budget = budget::FetchBudget::new(
            cfg.fetch_budget_per_client,
            cfg.fetch_budget_global,
            cfg.fetch_budget_window,
        );
        Ok(Self {
            cfg,
            db,
            anchors: Anchors::genuine()?,
            http,
            handle: tokio::runtime::Handle::try_current()
                .map_err(|_| CollateralError::NoRuntime)?,
            items: Mutex::default(),
            flights: Mutex::default(),
            fetches: tokio::sync::Semaphore::new(MAX_FETCHES),
            misses: Mutex::default(),
            budget,
            on_refusal: None,
            snp: Mutex::default(),
            tdx: Mutex::default(),
            floors: Mutex::default(),
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

    /// Counts budget refusals with `hook`.
    pub fn with_refusal_hook(mut self, hook: RefusalHook) -> Self {
        self.on_refusal = Some(hook);
        self
    }

    /// Checks items against `anchors` (default: AMD's and Intel's genuine roots only;
    /// the service adds each `--emulated-trust` directory's).
    pub fn with_anchors(mut self, anchors: Anchors) -> Self {
        self.anchors = anchors;
        self
    }

    /// Checks that `item` is authentic (see [`auth`]) for `key`. A VCEK not issued by
    /// one of AMD's pinned ASKs (an emulated platform's) is checked against its
    /// product's ASK/ARK chain item, obtained (and itself authenticated) first.
    async fn authenticate(
        &self,
        key: &ItemKey,
        item: &Item,
        now: i64,
        who: Requester<'_>,
    ) -> Result<(), CollateralError> {
        let first = self
            .anchors
            .verify(key, &item.body, item.issuer_chain.as_deref(), &[]);
        if let (Ok(()), ItemKey::AmdCrl(product) | ItemKey::VlekCrl(product)) = (&first, key) {
            if item.body.is_empty() {
                return first;
            }
            // A product's CRL must be its chain's ARK's (see auth.rs): the chain item
            // is needed to judge it, and without it the CRL is not taken (fail closed).
            let chain = Box::pin(self.get_as(&ItemKey::AmdCertChain(*product), now, who)).await?;
            return self.anchors.crl_of_chain(key, &item.body, &chain.body);
        }
        let (Err(e), ItemKey::Vcek { product, .. }) = (&first, key) else {
            return first;
        };
        let chain = match Box::pin(self.get_as(&ItemKey::AmdCertChain(*product), now, who)).await {
            Ok(c) => c,
            Err(_) => return Err(clone_unauthentic(e)),
        };
        let asks = self.anchors.chain_asks(&chain.body).unwrap_or_default();
        self.anchors
            .verify(key, &item.body, item.issuer_chain.as_deref(), &asks)
    }

    /// The configuration.
    pub fn config(&self) -> &CollateralConfig {
        &self.cfg
    }

    /// The item `key`, usable at `now` (Unix seconds): from memory, the database, or
    /// fetched (once, however many callers wait for it).
    /// Fetches made here are the operator's (not budgeted); evidence-driven lookups go
    /// through [`Self::get_for`].
    pub async fn get(&self, key: &ItemKey, now: i64) -> Result<Arc<Item>, CollateralError> {
        self.get_as(key, now, Requester::Operator).await
    }

    /// [`Self::get`] on behalf of evidence sent by `client` (a source IP, `None` when
    /// unknown): a cache-miss fetch is taken from the fetch budgets.
    pub async fn get_for(
        &self,
        key: &ItemKey,
        now: i64,
        client: Option<&str>,
    ) -> Result<Arc<Item>, CollateralError> {
        self.get_as(key, now, Requester::Evidence(client)).await
    }

    async fn get_as(
        &self,
        key: &ItemKey,
        now: i64,
        who: Requester<'_>,
    ) -> Result<Arc<Item>, CollateralError> {
        let k = key.to_string();
        if let Some(hit) = self.memory(&k, now) {
            return Ok(hit);
        }
        let flight = Arc::clone(lock(&self.flights).entry(k.clone()).or_default());
        let turn = flight.lock().await;
        let result = self.get_turn(key, &k, now, who).await;
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
        who: Requester<'_>,
    ) -> Result<Arc<Item>, CollateralError> {
        if let Some(hit) = self.memory(k, now) {
            return Ok(hit);
        }
        if let Some(e) = self.negative(key, k) {
            return Err(e);
        }
        let mut cached = self.load(k).await?;
        // A row that is not authentic (written before items were checked, or tampered
        // with) is dropped, so that a genuine copy can replace it.
        if let Some(item) = &cached {
            match self.authenticate(key, item, now, who).await {
                Ok(()) => {}
                Err(e @ CollateralError::Unauthentic { .. }) => {
                    tracing::warn!(item = k, error = %e, "dropping an unauthentic cached collateral item");
                    delete_item(&self.db, k).await?;
                    cached = None;
                }
                // Authenticity could not be judged now (a CRL's chain item could not
                // be had): not used, but not deleted either.
                Err(e) => return Err(e),
            }
        }
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
        if let Requester::Evidence(client) = who {
            if let Err(scope) = self.budget.take(client) {
                if let Some(hook) = &self.on_refusal {
                    hook(scope.as_str());
                }
                tracing::warn!(
                    item = k,
                    client = client.unwrap_or("-"),
                    scope = scope.as_str(),
                    "collateral fetch refused: budget spent"
                );
                return Err(CollateralError::Budget {
                    what: key.what(),
                    scope,
                    limit: match scope {
                        budget::Scope::Client => self.cfg.fetch_budget_per_client,
                        budget::Scope::Global => self.cfg.fetch_budget_global,
                    },
                    window_secs: self.budget.window().as_secs(),
                });
            }
        }
        let fetched = {
            let _permit = self.fetches.acquire().await;
            self.fetch(key).await
        };
        self.remember_negative(key, k, &fetched);
        let fetched = match fetched {
            Ok(item) => self.authenticate(key, &item, now, who).await.map(|()| item),
            Err(e) => Err(e),
        };
        let item = match fetched {
            Ok(item) => item,
            // The KDS publishes no CRL for this product: remembered (and exported) as an
            // empty item for a day, so that every flow does not ask again.
            // Required CRLs: a 404 is refused at once and not remembered, so that one
            // transient answer does not block every flow of the product for a day.
            Err(CollateralError::NotFound { .. })
                if matches!(key, ItemKey::AmdCrl(_) | ItemKey::VlekCrl(_))
                    && self.cfg.amd_crl_required =>
            {
                return Err(CollateralError::NoCrl {
                    product: key.to_string(),
                    url: self.cfg.amd_kds_url.clone(),
                });
            }
            Err(CollateralError::NotFound { .. })
                if matches!(key, ItemKey::AmdCrl(_) | ItemKey::VlekCrl(_)) =>
            {
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

    /// A negative answer remembered for `key`, if still current.
    fn negative(&self, key: &ItemKey, k: &str) -> Option<CollateralError> {
        let misses = lock(&self.misses);
        let (until, what) = misses.get(k)?;
        let left = until.checked_duration_since(std::time::Instant::now())?;
        Some(match what {
            Negative::NotFound => CollateralError::NotFound {
                what: key.what(),
                url: key.url(&self.cfg),
            },
            Negative::Throttled => CollateralError::Throttled {
                what: key.what(),
                url: key.url(&self.cfg),
                retry_after_secs: left.as_secs().max(1),
            },
        })
    }

    /// Remembers a 404 for an item an attester chooses (VCEK, TCB info) for
    /// [`MISS_TTL`], and a 429 with Retry-After for any item until then.
    fn remember_negative(&self, key: &ItemKey, k: &str, fetched: &Result<Item, CollateralError>) {
        let entry = match (fetched, key) {
            (
                Err(CollateralError::NotFound { .. }),
                ItemKey::Vcek { .. } | ItemKey::TdxTcbInfo(_),
            ) => (MISS_TTL, Negative::NotFound),
            (
                Err(CollateralError::Throttled {
                    retry_after_secs, ..
                }),
                _,
            ) => (
                Duration::from_secs(*retry_after_secs).min(MAX_RETRY_AFTER),
                Negative::Throttled,
            ),
            _ => return,
        };
        let mut misses = lock(&self.misses);
        if misses.len() >= ASSEMBLED {
            let now = std::time::Instant::now();
            misses.retain(|_, (until, _)| *until > now);
            if misses.len() >= ASSEMBLED {
                misses.clear();
            }
        }
        misses.insert(k.to_owned(), (std::time::Instant::now() + entry.0, entry.1));
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
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            // With Retry-After: not retried, remembered until then (see get_turn).
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(secs) = after {
                return Err(Retry::No(CollateralError::Throttled {
                    what: key.what(),
                    url: url.to_owned(),
                    retry_after_secs: secs.clamp(1, MAX_RETRY_AFTER.as_secs()),
                }));
            }
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
            let fetched = match fetched {
                Ok(item) => self
                    .authenticate(&key, &item, now, Requester::Operator)
                    .await
                    .map(|()| item),
                Err(e) => Err(e),
            };
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
    /// [`CollateralSource::snp_collateral`]), fetched on behalf of `client`.
    pub async fn snp(
        &self,
        report: &[u8],
        now: i64,
        client: Option<&str>,
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
            let vcek = match self.get_for(&key, now, client).await {
                Ok(v) => v,
                Err(e @ CollateralError::NotFound { .. }) => {
                    first.get_or_insert(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let chain = self
                .get_for(&ItemKey::AmdCertChain(product), now, client)
                .await?;
            // An empty item: the issuer publishes no CRL (see the module docs).
            let crl = self.get_for(&ItemKey::AmdCrl(product), now, client).await?;
            let crl = self.crl_or_refuse(product, crl)?;
            let mut c = SnpCollateral::new();
            let cert = AmdCertificate::from_der(&vcek.body).map_err(|e| corrupt(&key, e))?;
            c.set_vek(cert);
            c.add_certificates(&chain.body, "ASK/ARK chain from the KDS")
                .map_err(|e| corrupt(&key, e))?;
            let mut expires = vcek.expires_at.min(chain.expires_at);
            if let Some(crl) = crl {
                // The CRL must be the chain's ARK's (checked when it was cached; checked
                // again here against the chain assembled with it), and the verification
                // then requires a CRL of the chain's ARK: another issuer's cannot stand
                // in for it.
                self.anchors
                    .crl_of_chain(&ItemKey::AmdCrl(product), &crl.body, &chain.body)?;
                c.add_crls(&crl.body, "CRL from the KDS")
                    .map_err(|e| corrupt(&key, e))?;
                c.require_ark_crl();
                expires = expires.min(crl.expires_at);
            }
            return Ok((Arc::new(c), expires));
        }
        Err(first.unwrap_or_else(|| CollateralError::Evidence("no SNP product to try".into())))
    }

    /// The TDX collateral for `quote` at `now` (async form of
    /// [`CollateralSource::tdx_collateral`]), fetched on behalf of `client`.
    pub async fn tdx(
        &self,
        quote: &[u8],
        now: i64,
        client: Option<&str>,
    ) -> Result<(Arc<Collateral>, i64), CollateralError> {
        let (fmspc, ca) = quote_platform(quote)?;
        let tcb = self
            .get_for(&ItemKey::TdxTcbInfo(fmspc), now, client)
            .await?;
        let qe = self.get_for(&ItemKey::TdxQeIdentity, now, client).await?;
        let pck_crl = self.get_for(&ItemKey::PckCrl(ca), now, client).await?;
        let root_crl = self.get_for(&ItemKey::RootCaCrl, now, client).await?;
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

/// Who asks for an item: the operator (CLI, refresh) or evidence (budgeted).
#[derive(Debug, Clone, Copy)]
enum Requester<'a> {
    Operator,
    Evidence(Option<&'a str>),
}

/// A remembered negative answer.
#[derive(Debug, Clone, Copy)]
enum Negative {
    NotFound,
    Throttled,
}

enum Retry {
    Yes(String),
    No(CollateralError),
}

fn clone_unauthentic(e: &CollateralError) -> CollateralError {
    match e {
        CollateralError::Unauthentic { what, detail } => CollateralError::Unauthentic {
            what: what.clone(),
            detail: detail.clone(),
        },
        other => CollateralError::Corrupt(other.to_string()),
    }
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

/// Deletes the cached item `key`.
pub async fn delete_item(db: &Db, key: &str) -> Result<(), CollateralError> {
    sqlx::query("DELETE FROM collateral_cache WHERE key = $1")
        .bind(key)
        .execute(db.pool())
        .await
        .map_err(CollateralError::Db)?;
    Ok(())
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
        let client = budget::current_client();
        let (c, exp) = self.run(self.snp(report, t, client.as_deref()))?;
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
            None => {
                let client = budget::current_client();
                self.run(self.get_for(&key, t, client.as_deref()))?
            }
        };
        self.crl_or_refuse(product, item)
    }

    fn snp_vlek_crl(
        &self,
        product: Product,
        now: time::OffsetDateTime,
    ) -> Result<Option<Arc<Item>>, CollateralError> {
        let t = now.unix_timestamp();
        let key = ItemKey::VlekCrl(product);
        let item = match self.memory(&key.to_string(), t) {
            Some(hit) => hit,
            None => {
                let client = budget::current_client();
                self.run(self.get_for(&key, t, client.as_deref()))?
            }
        };
        self.crl_or_refuse(product, item)
    }

    fn tdx_floor(&self, quote: &[u8]) -> Option<Freshness> {
        let id = tdx_lookup_key(quote)?;
        // The assembled collateral for this PCK chain, even if expired.
        if let Some((c, _)) = lock(&self.tdx).get(&id) {
            return Some(c.freshness());
        }
        // Else the database rows, looked up at most once a minute per PCK chain.
        if let Some((f, at)) = lock(&self.floors).get(&id) {
            if at.elapsed() < FLOOR_TTL {
                return *f;
            }
        }
        let f = self.run(self.tdx_floor_async(quote));
        let mut floors = lock(&self.floors);
        if floors.len() >= ASSEMBLED {
            floors.clear();
        }
        floors.insert(id, (f, std::time::Instant::now()));
        f
    }

    fn tdx_cached(&self, quote: &[u8], now: time::OffsetDateTime) -> Option<Arc<Collateral>> {
        let id = tdx_lookup_key(quote)?;
        lock(&self.tdx)
            .get(&id)
            .filter(|(_, exp)| *exp >= now.unix_timestamp())
            .map(|(c, _)| Arc::clone(c))
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
        let client = budget::current_client();
        let (c, exp) = self.run(self.tdx(quote, t, client.as_deref()))?;
        let mut m = lock(&self.tdx);
        if m.len() >= ASSEMBLED {
            m.clear();
        }
        m.insert(id, (Arc::clone(&c), exp));
        Ok(c)
    }
}

impl CollateralService {
    /// See [`CollateralSource::tdx_floor`]: the assembled collateral in memory, else
    /// the TCB info and QE identity rows of the database (authenticated).
    async fn tdx_floor_async(&self, quote: &[u8]) -> Option<Freshness> {
        let (fmspc, _) = quote_platform(quote).ok()?;
        let tcb_key = ItemKey::TdxTcbInfo(fmspc);
        let qe_key = ItemKey::TdxQeIdentity;
        let mut parts = Vec::new();
        for key in [&tcb_key, &qe_key] {
            let k = key.to_string();
            let in_memory = lock(&self.items).get(&k).cloned();
            let item = match in_memory {
                Some(i) => (*i).clone(),
                None => self.load(&k).await.ok()??,
            };
            self.authenticate(key, &item, 0, Requester::Operator)
                .await
                .ok()?;
            let field = if key == &tcb_key {
                "tcbInfo"
            } else {
                "enclaveIdentity"
            };
            let (inner, _) = items::signed_json(&item.body, field).ok()?;
            let head: items::FreshnessHead = serde_json::from_str(inner).ok()?;
            let issued = time::OffsetDateTime::parse(
                &head.issue_date,
                &time::format_description::well_known::Rfc3339,
            )
            .map(|t| t.unix_timestamp())
            .unwrap_or(i64::MIN);
            parts.push((head.tcb_evaluation_data_number, issued));
        }
        let [(tcb_n, tcb_t), (qe_n, qe_t)] = parts.as_slice() else {
            return None;
        };
        Some(Freshness {
            tcb_evaluation_data_number: *tcb_n,
            tcb_info_issued: *tcb_t,
            qe_evaluation_data_number: *qe_n,
            qe_identity_issued: *qe_t,
        })
    }
}

/// The assembled-collateral key of a quote: SHA-256 of its PCK chain (which fixes the
/// FMSPC and the PCK CA).
fn tdx_lookup_key(quote: &[u8]) -> Option<String> {
    let q = attestation::tdx::quote::Quote::parse(quote).ok()?;
    Some(hex::encode(Sha256::digest(
        &q.signature_data.pck_cert_chain,
    )))
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
