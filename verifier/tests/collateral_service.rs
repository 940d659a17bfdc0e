//! The collateral service against a mock AMD KDS / Intel PCS on 127.0.0.1 serving the
//! genuine vectors (tests/data/collateral, see PROVENANCE) and the emulated platforms'
//! collateral with the real paths and headers: fetch, cache hit, shared cache, single
//! flight, expiry and refresh, outages, revocation, expired CRLs, offline bundles.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use attestation::claims::Tee;
use attestation::snp::emulated::kds::CollateralResponse;
use attestation::snp::emulated::EmulatedSnpPlatform;
use attestation::snp::AmdCertificate;
use attestation::tdx::collateral::Collateral;
use attestation::tdx::emulated::{CollateralOptions, EmulatedTdxPlatform};
use attestation::ErrorKind;
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::json;
use verifier::collateral::{bundle, Anchors, CollateralConfig, CollateralService};
use verifier::db::Db;
use verifier::evidence::{AttestationVerifier, EvidenceVerifier, VerifyFailure};

fn data(path: &str) -> Vec<u8> {
    let p = format!(
        "{}/tests/data/collateral/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn at(rfc3339: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .expect("time")
}

/// The valid times of the genuine vectors.
fn snp_time() -> time::OffsetDateTime {
    at("2025-06-01T00:00:00Z")
}
fn tdx_time() -> time::OffsetDateTime {
    at("2025-06-19T12:00:00Z")
}

/// A mock KDS + PCS: exact path-and-query matches, request counts, an outage switch.
#[derive(Default)]
struct Mock {
    responses: Mutex<HashMap<String, CollateralResponse>>,
    counts: Mutex<HashMap<String, usize>>,
    down: AtomicBool,
    /// Answer every request 429 with this Retry-After (seconds).
    throttle: Mutex<Option<u64>>,
}

impl Mock {
    fn serve(&self, list: Vec<CollateralResponse>) {
        let mut m = self.responses.lock().unwrap();
        for r in list {
            m.insert(r.path.clone(), r);
        }
    }

    fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.counts.lock().unwrap().values().sum()
    }

    fn answer(&self, uri: &Uri) -> Response {
        let key = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        *self.counts.lock().unwrap().entry(key.clone()).or_default() += 1;
        if self.down.load(Ordering::SeqCst) {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        if let Some(secs) = *self.throttle.lock().unwrap() {
            let mut resp = StatusCode::TOO_MANY_REQUESTS.into_response();
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
            return resp;
        }
        let Some(r) = self.responses.lock().unwrap().get(&key).cloned() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let mut resp = (StatusCode::OK, r.body).into_response();
        let h = resp.headers_mut();
        h.insert("content-type", HeaderValue::from_static(r.content_type));
        for (name, value) in r.headers {
            h.insert(
                HeaderName::try_from(name).expect("header name"),
                HeaderValue::try_from(value).expect("header value"),
            );
        }
        resp
    }
}

async fn start_mock() -> (Arc<Mock>, String) {
    let mock = Arc::new(Mock::default());
    let m = Arc::clone(&mock);
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let m = Arc::clone(&m);
        async move { m.answer(&uri) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (mock, url)
}

fn config(url: &str) -> CollateralConfig {
    CollateralConfig {
        amd_kds_url: url.to_owned(),
        intel_pcs_url: url.to_owned(),
        timeout: Duration::from_secs(5),
        attempts: 3,
        backoff: Duration::from_millis(20),
        // The genuine vectors come without an AMD-signed CRL, so the mock KDS answers
        // 404 for it: these tests run as against a private KDS that publishes none.
        // `a_kds_without_a_crl_is_refused_by_default` checks the default.
        amd_crl_required: false,
        ..CollateralConfig::default()
    }
}

async fn db(dir: &tempfile::TempDir, name: &str) -> Db {
    Db::open(dir.path().join(name).to_str().unwrap())
        .await
        .unwrap()
}

/// A collateral service that also trusts the emulated platform in `dir` (as `serve
/// --emulated-trust DIR` configures it): items chaining elsewhere are never cached.
fn emulated_service(
    cfg: CollateralConfig,
    db: Db,
    dir: &std::path::Path,
) -> Arc<CollateralService> {
    Arc::new(
        CollateralService::new(cfg, db)
            .unwrap()
            .with_anchors(Anchors::with_emulated(&[dir.to_owned()]).unwrap()),
    )
}

fn verifier(service: &Arc<CollateralService>, emulated: &[PathBuf]) -> Arc<AttestationVerifier> {
    Arc::new(
        AttestationVerifier::new(emulated)
            .unwrap()
            .with_collateral(service.clone()),
    )
}

/// Verifies evidence without collateral on the blocking pool (as the service does).
async fn verify(
    v: &Arc<AttestationVerifier>,
    tee: Tee,
    raw: &[u8],
    now: time::OffsetDateTime,
) -> Result<(), VerifyFailure> {
    let (evidence, rd) = match tee {
        Tee::Snp => (
            json!({ "report": B64.encode(raw) }),
            raw[0x50..0x90].to_vec(),
        ),
        Tee::Tdx => (json!({ "quote": B64.encode(raw) }), raw[568..632].to_vec()),
    };
    let v = Arc::clone(v);
    let bytes = serde_json::to_vec(&evidence).unwrap();
    let rd: [u8; 64] = rd.try_into().unwrap();
    tokio::task::spawn_blocking(move || v.verify(tee, &bytes, &rd, now).map(|_| ()))
        .await
        .unwrap()
}

/// The genuine Milan VCEK, ASK and ARK at the KDS paths (AMD publishes a CRL too; no
/// genuine one is among the vectors, so this KDS answers 404 for it).
fn genuine_kds() -> (Vec<CollateralResponse>, String) {
    let vcek = data("snp-milan-v2/vcek.der");
    let ext = AmdCertificate::from_der(&vcek)
        .unwrap()
        .vek_extensions()
        .unwrap();
    let vcek_path = format!(
        "/vcek/v1/Milan/{}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
        hex::encode(ext.hw_id.unwrap()),
        ext.bootloader,
        ext.tee,
        ext.snp,
        ext.microcode
    );
    let list = vec![
        CollateralResponse {
            path: vcek_path.clone(),
            content_type: "application/x-x509-ca-cert",
            headers: vec![],
            body: vcek,
        },
        CollateralResponse {
            path: "/vcek/v1/Milan/cert_chain".into(),
            content_type: "application/x-pem-file",
            headers: vec![],
            body: data("snp-milan-v2/ask_ark.pem"),
        },
    ];
    (list, vcek_path)
}

/// The genuine TDX collateral at the PCS paths (a PCCS: rootcacrl in hex).
fn genuine_pcs() -> Vec<CollateralResponse> {
    let c = Collateral::from_json(&data("tdx-v4-uptodate/collateral.json")).unwrap();
    attestation::tdx::emulated::pcs::pcs_responses_for(
        c.as_v3(),
        [0xb0, 0xc0, 0x6f, 0, 0, 0],
        "platform",
    )
}

const TCB_PATH: &str = "/tdx/certification/v4/tcb?fmspc=B0C06F000000";
const QE_PATH: &str = "/tdx/certification/v4/qe/identity";
const PCKCRL_PATH: &str = "/sgx/certification/v4/pckcrl?ca=platform&encoding=der";
const ROOTCRL_PATH: &str = "/sgx/certification/v4/rootcacrl";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genuine_snp_verifies_with_the_vcek_fetched_from_the_kds_then_from_the_cache() {
    let (mock, url) = start_mock().await;
    let (kds, vcek_path) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let report = data("snp-milan-v2/report.bin");
    verify(&v, Tee::Snp, &report, snp_time())
        .await
        .expect("genuine report with the fetched VCEK");
    assert_eq!(mock.count(&vcek_path), 1);
    assert_eq!(mock.count("/vcek/v1/Milan/cert_chain"), 1);
    assert_eq!(mock.count("/vcek/v1/Milan/crl"), 1, "the CRL is asked for");
    // Cache hit: no request.
    verify(&v, Tee::Snp, &report, snp_time()).await.unwrap();
    assert_eq!(mock.total(), 3);
    // Another replica on the same database: no request either.
    let replica = Arc::new(
        CollateralService::new(
            config(&url),
            Db::open(dir.path().join("a.db").to_str().unwrap())
                .await
                .unwrap(),
        )
        .unwrap(),
    );
    verify(&verifier(&replica, &[]), Tee::Snp, &report, snp_time())
        .await
        .unwrap();
    assert_eq!(
        mock.count(&vcek_path),
        1,
        "the replica used the shared cache"
    );
    assert_eq!(mock.count("/vcek/v1/Milan/cert_chain"), 1);
    // A tampered report still fails: the cache holds collateral, not verdicts.
    let mut bad = report.clone();
    bad[0x90] ^= 1;
    let e = verify(&v, Tee::Snp, &bad, snp_time()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadSignature, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kds_without_a_crl_is_refused_by_default() {
    // A network attacker (or a misconfigured mirror) answering 404 for the CRL must not
    // switch revocation off: by default the chain is refused.
    let (mock, url) = start_mock().await;
    let (kds, _) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let cfg = CollateralConfig {
        amd_crl_required: true,
        ..config(&url)
    };
    assert!(CollateralConfig::default().amd_crl_required);
    let service = Arc::new(CollateralService::new(cfg, db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let report = data("snp-milan-v2/report.bin");
    let e = verify(&v, Tee::Snp, &report, snp_time()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("publishes no CRL"), "{e:?}");
    // The 404 is not remembered: the next flow asks the KDS again (a transient 404
    // does not block the product for a day).
    let before = mock.count("/vcek/v1/Milan/crl");
    verify(&v, Tee::Snp, &report, snp_time()).await.unwrap_err();
    assert_eq!(mock.count("/vcek/v1/Milan/crl"), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genuine_tdx_verifies_with_collateral_fetched_from_the_pcs() {
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let quote = data("tdx-v4-uptodate/quote.bin");
    verify(&v, Tee::Tdx, &quote, tdx_time())
        .await
        .expect("genuine quote with fetched collateral");
    for p in [TCB_PATH, QE_PATH, PCKCRL_PATH, ROOTCRL_PATH] {
        assert_eq!(mock.count(p), 1, "{p}");
    }
    verify(&v, Tee::Tdx, &quote, tdx_time()).await.unwrap();
    assert_eq!(mock.total(), 4, "the second flow is a cache hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_miss_costs_one_fetch_per_item_however_many_flows_wait() {
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    let (kds, vcek_path) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let quote = data("tdx-v4-uptodate/quote.bin");
    let report = data("snp-milan-v2/report.bin");
    let mut flows = Vec::new();
    for i in 0..24 {
        let v = Arc::clone(&v);
        let (quote, report) = (quote.clone(), report.clone());
        flows.push(tokio::spawn(async move {
            if i % 2 == 0 {
                verify(&v, Tee::Tdx, &quote, tdx_time()).await
            } else {
                verify(&v, Tee::Snp, &report, snp_time()).await
            }
        }));
    }
    for f in flows {
        f.await.unwrap().expect("every concurrent flow verifies");
    }
    for p in [
        TCB_PATH,
        QE_PATH,
        PCKCRL_PATH,
        ROOTCRL_PATH,
        &vcek_path,
        "/vcek/v1/Milan/cert_chain",
        "/vcek/v1/Milan/crl",
    ] {
        assert_eq!(mock.count(p), 1, "{p} fetched once for 12 concurrent flows");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collateral_past_its_next_update_is_refetched_and_an_expired_crl_refused() {
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let quote = data("tdx-v4-uptodate/quote.bin");
    verify(&v, Tee::Tdx, &quote, tdx_time()).await.unwrap();
    // In 2026 every item (CRLs, TCB info, QE identity) is past its nextUpdate: the
    // service asks again, gets the same stale items, and the quote is refused.
    let e = verify(&v, Tee::Tdx, &quote, at("2026-03-01T00:00:00Z"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("expired"), "{}", e.message);
    assert_eq!(mock.count(TCB_PATH), 2, "an expired item is fetched again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_refuses_without_a_valid_cached_copy_and_retries_are_bounded() {
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    mock.down.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let quote = data("tdx-v4-uptodate/quote.bin");
    let e = verify(&v, Tee::Tdx, &quote, tdx_time()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("503"), "{}", e.message);
    assert_eq!(mock.count(TCB_PATH), 3, "three attempts, then the refusal");
    // A service that is down and a cached copy past its validity: still refused.
    mock.down.store(false, Ordering::SeqCst);
    verify(&v, Tee::Tdx, &quote, tdx_time()).await.unwrap();
    mock.down.store(true, Ordering::SeqCst);
    let e = verify(&v, Tee::Tdx, &quote, at("2025-08-01T00:00:00Z"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("cached copy expired"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_a_valid_cached_copy_still_verifies() {
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    let (kds, _) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let quote = data("tdx-v4-uptodate/quote.bin");
    let report = data("snp-milan-v2/report.bin");
    verify(&verifier(&service, &[]), Tee::Tdx, &quote, tdx_time())
        .await
        .unwrap();
    verify(&verifier(&service, &[]), Tee::Snp, &report, snp_time())
        .await
        .unwrap();
    mock.down.store(true, Ordering::SeqCst);
    let before = mock.total();
    // A restarted verifier (empty memory) on the same database.
    let restarted = Arc::new(
        CollateralService::new(
            config(&url),
            Db::open(dir.path().join("a.db").to_str().unwrap())
                .await
                .unwrap(),
        )
        .unwrap(),
    );
    let v = verifier(&restarted, &[]);
    verify(&v, Tee::Tdx, &quote, tdx_time())
        .await
        .expect("valid cached TDX collateral");
    verify(&v, Tee::Snp, &report, snp_time())
        .await
        .expect("valid cached SNP collateral (and the cached 'no CRL published')");
    assert_eq!(mock.total(), before, "nothing fetched during the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_kds_never_counts_as_no_crl_published() {
    let (mock, url) = start_mock().await;
    let (kds, _) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    // The VCEK and chain are cached, then the KDS fails only for the CRL.
    let vcek = genuine_kds().0.remove(0);
    let report = data("snp-milan-v2/report.bin");
    mock.serve(vec![CollateralResponse {
        path: "/vcek/v1/Milan/crl".into(),
        content_type: "application/pkix-crl",
        headers: vec![],
        body: b"not a CRL".to_vec(),
    }]);
    let e = verify(&verifier(&service, &[]), Tee::Snp, &report, snp_time())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("CRL"), "{}", e.message);
    assert_eq!(mock.count(&vcek.path), 1);
    mock.down.store(true, Ordering::SeqCst);
    let e = verify(&verifier(&service, &[]), Tee::Snp, &report, snp_time())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("503"), "{}", e.message);
}

/// The emulated platforms of the shared test harness, and a verifier trusting them.
fn emulated() -> (EmulatedSnpPlatform, EmulatedTdxPlatform, PathBuf) {
    let dir = common::emulated_dir();
    (
        EmulatedSnpPlatform::open(&dir).unwrap(),
        EmulatedTdxPlatform::open(&dir).unwrap(),
        dir,
    )
}

fn snp_report(dir: &std::path::Path) -> Vec<u8> {
    let guest = verifier::client::emulated::SnpGuest::open(dir, [0x5a; 48]).unwrap();
    guest.extended_report(&[7; 64]).unwrap().0
}

fn tdx_quote(dir: &std::path::Path) -> Vec<u8> {
    let guest = verifier::client::emulated::TdxGuest::open(dir, [0x5a; 48]).unwrap();
    guest.quote(&[7; 64]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_evidence_verifies_with_collateral_from_the_emulated_kds_and_pcs() {
    let (snp, tdx, dir) = emulated();
    let (mock, url) = start_mock().await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    mock.serve(snp.kds_responses(&[], now - day, now + day).unwrap());
    mock.serve(tdx.pcs_responses(&CollateralOptions::from_now(30)).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let service = emulated_service(config(&url), db(&tmp, "a.db").await, &dir);
    let v = verifier(&service, std::slice::from_ref(&dir));
    let t = time::OffsetDateTime::now_utc();
    verify(&v, Tee::Snp, &snp_report(&dir), t)
        .await
        .expect("emulated SNP with KDS collateral");
    verify(&v, Tee::Tdx, &tdx_quote(&dir), t)
        .await
        .expect("emulated TDX with PCS collateral");
    assert_eq!(mock.count(&snp.kds_vcek_path()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_revoking_the_chain_is_enforced() {
    let (snp, tdx, dir) = emulated();
    let (mock, url) = start_mock().await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    // The ARK's CRL lists the ASK.
    mock.serve(
        snp.kds_responses(&[snp.ask()], now - day, now + day)
            .unwrap(),
    );
    // The PCK CRL lists the PCK certificate.
    let opts = CollateralOptions {
        revoke_pck: true,
        ..CollateralOptions::from_now(30)
    };
    mock.serve(tdx.pcs_responses(&opts).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let service = emulated_service(config(&url), db(&tmp, "a.db").await, &dir);
    let v = verifier(&service, std::slice::from_ref(&dir));
    let t = time::OffsetDateTime::now_utc();
    let e = verify(&v, Tee::Snp, &snp_report(&dir), t)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UntrustedChain, "{e:?}");
    assert!(e.message.contains("revoked"), "{}", e.message);
    let e = verify(&v, Tee::Tdx, &tdx_quote(&dir), t).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::UntrustedChain, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_crl_is_refreshed_and_an_expired_one_refused() {
    let (snp, _, dir) = emulated();
    let (mock, url) = start_mock().await;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let crl_path = format!("/vcek/v1/{}/crl", snp.product());
    // A CRL valid for two more hours.
    mock.serve(snp.kds_responses(&[], now - hour, now + 2 * hour).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let service = emulated_service(config(&url), db(&tmp, "a.db").await, &dir);
    let v = verifier(&service, std::slice::from_ref(&dir));
    let report = snp_report(&dir);
    let t = time::OffsetDateTime::now_utc();
    verify(&v, Tee::Snp, &report, t).await.unwrap();
    assert_eq!(mock.count(&crl_path), 1);
    // Not yet due: the refresh task leaves it.
    assert_eq!(service.refresh_due(t.unix_timestamp()).await.unwrap(), 0);
    // The KDS publishes the next CRL; within the last quarter of the old one's life
    // the refresh task fetches it.
    mock.serve(snp.kds_responses(&[], now, now + 48 * hour).unwrap());
    let due = t + time::Duration::minutes(100);
    assert!(service.refresh_due(due.unix_timestamp()).await.unwrap() >= 1);
    assert_eq!(mock.count(&crl_path), 2);
    // Three hours on (the first CRL expired): verifies with the refreshed one, no fetch.
    verify(&v, Tee::Snp, &report, t + time::Duration::hours(3))
        .await
        .unwrap();
    assert_eq!(mock.count(&crl_path), 2);
    // The KDS now serves only an expired CRL and the cached one expires: refused.
    mock.serve(snp.kds_responses(&[], now - 4 * hour, now - hour).unwrap());
    let e = verify(&v, Tee::Snp, &report, t + time::Duration::hours(49))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert_eq!(mock.count(&crl_path), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_verifier_works_from_an_imported_bundle_only() {
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    let (kds, _) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    // The connected machine fetches and exports.
    let online_db = db(&dir, "online.db").await;
    let online = Arc::new(CollateralService::new(config(&url), online_db.clone()).unwrap());
    let quote = data("tdx-v4-uptodate/quote.bin");
    let report = data("snp-milan-v2/report.bin");
    verify(&verifier(&online, &[]), Tee::Tdx, &quote, tdx_time())
        .await
        .unwrap();
    verify(&verifier(&online, &[]), Tee::Snp, &report, snp_time())
        .await
        .unwrap();
    let json = serde_json::to_vec(&bundle::export_cached(&online_db).await.unwrap()).unwrap();
    // The air-gapped machine: offline, pointing at nothing.
    let offline_cfg = CollateralConfig {
        offline: true,
        ..config("http://127.0.0.1:9")
    };
    let empty =
        Arc::new(CollateralService::new(offline_cfg.clone(), db(&dir, "empty.db").await).unwrap());
    let e = verify(&verifier(&empty, &[]), Tee::Tdx, &quote, tdx_time())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("offline"), "{}", e.message);
    let air = db(&dir, "air.db").await;
    // 4 TDX items, the VCEK, the ASK/ARK chain and the KDS's "no CRL" answer.
    assert_eq!(bundle::import(&air, &json).await.unwrap(), 7);
    let offline = Arc::new(CollateralService::new(offline_cfg, air).unwrap());
    let before = mock.total();
    verify(&verifier(&offline, &[]), Tee::Tdx, &quote, tdx_time())
        .await
        .expect("TDX from the bundle");
    verify(&verifier(&offline, &[]), Tee::Snp, &report, snp_time())
        .await
        .expect("SNP from the bundle");
    assert_eq!(mock.total(), before, "offline: nothing fetched");
    // A bundle item whose body was swapped for another item's is refused at import.
    let mut b: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let items = b["items"].as_array_mut().unwrap();
    let body0 = items[0]["body"].clone();
    let last = items.len() - 1;
    items[last]["body"] = body0;
    let tampered = serde_json::to_vec(&b).unwrap();
    assert!(bundle::import(&db(&dir, "t.db").await, &tampered)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vlek_report_without_its_certificates_says_vleks_are_not_fetchable() {
    let (mock, url) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let report = data("snp-milan-vlek-v3/report.bin");
    let e = verify(&verifier(&service, &[]), Tee::Snp, &report, snp_time())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("VLEK"), "{}", e.message);
    assert_eq!(mock.total(), 0);
}

/// The genuine Milan report with its certificate table (VCEK, ASK, ARK; no CRL), as an
/// extended report carries it.
fn genuine_snp_with_table() -> serde_json::Value {
    use attestation::snp::{CertTable, CertTableEntry, CertTableKind};
    let chain = AmdCertificate::parse_all(&data("snp-milan-v2/ask_ark.pem")).unwrap();
    let table = CertTable {
        entries: vec![
            CertTableEntry {
                kind: CertTableKind::Vcek,
                data: data("snp-milan-v2/vcek.der"),
            },
            CertTableEntry {
                kind: CertTableKind::Ask,
                data: chain[0].der().to_vec(),
            },
            CertTableEntry {
                kind: CertTableKind::Ark,
                data: chain[1].der().to_vec(),
            },
        ],
    };
    json!({
        "report": B64.encode(data("snp-milan-v2/report.bin")),
        "cert_chain": B64.encode(table.to_bytes().unwrap()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_chain_carried_in_the_evidence_is_checked_against_the_kds_crl() {
    // Attack: a host serves an extended report whose ASK AMD has revoked; before, the
    // verifier never looked at AMD's CRL when the evidence carried a chain. Now the
    // product's CRL must be obtained: an unreachable KDS refuses, a KDS that publishes
    // none (404) lets the chain verify.
    let (mock, url) = start_mock().await;
    mock.down.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let ev = serde_json::to_vec(&genuine_snp_with_table()).unwrap();
    let report = data("snp-milan-v2/report.bin");
    let rd: [u8; 64] = report[0x50..0x90].try_into().unwrap();
    let run = |v: Arc<AttestationVerifier>, ev: Vec<u8>| {
        tokio::task::spawn_blocking(move || v.verify(Tee::Snp, &ev, &rd, snp_time()).map(|_| ()))
    };
    let e = run(Arc::clone(&v), ev.clone()).await.unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("Milan CRL"), "{}", e.message);
    assert_eq!(mock.count("/vcek/v1/Milan/crl"), 3);
    // Without a collateral source (the old behaviour) the same evidence verifies: the
    // CRL check is what the service adds.
    let plain = Arc::new(AttestationVerifier::new(&[]).unwrap());
    run(plain, ev.clone()).await.unwrap().unwrap();
    // The KDS answers 404: no CRL published; verifies, and only the CRL was asked for.
    mock.down.store(false, Ordering::SeqCst);
    run(Arc::clone(&v), ev.clone()).await.unwrap().unwrap();
    assert_eq!(mock.count("/vcek/v1/Milan/cert_chain"), 0);
    assert_eq!(mock.count("/vcek/v1/Milan/crl"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoy_crl_in_the_table_does_not_replace_the_kds_crl() {
    // Attack: the host adds a CRL of its own (here an emulated ARK's, an issuer the
    // chain does not have) to the extended-report table of a genuine chain, hoping the
    // verifier takes "the table has a CRL" for "revocation was checked". The KDS is
    // down, so the product's real CRL cannot be had: the evidence must be refused.
    let (mock, url) = start_mock().await;
    mock.down.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let (snp, _, _) = emulated();
    let now = SystemTime::now();
    let decoy = snp
        .crl(
            &[],
            now - Duration::from_secs(86_400),
            now + Duration::from_secs(86_400),
        )
        .unwrap();
    let mut ev = genuine_snp_with_table();
    let mut table = attestation::snp::CertTable::parse(
        &B64.decode(ev["cert_chain"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    table.entries.push(attestation::snp::CertTableEntry {
        kind: attestation::snp::CertTableKind::Crl,
        data: decoy.der().to_vec(),
    });
    ev["cert_chain"] = json!(B64.encode(table.to_bytes().unwrap()));
    let ev = serde_json::to_vec(&ev).unwrap();
    let report = data("snp-milan-v2/report.bin");
    let rd: [u8; 64] = report[0x50..0x90].try_into().unwrap();
    let r = tokio::task::spawn_blocking(move || v.verify(Tee::Snp, &ev, &rd, snp_time()))
        .await
        .unwrap();
    let e = r.expect_err("a decoy CRL must not switch the KDS CRL off");
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(
        mock.count("/vcek/v1/Milan/crl") >= 1,
        "the KDS CRL was asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_no_crl_item_cannot_pin_the_cache() {
    // Attack: a bundle whose "the KDS publishes no CRL" item claims to be valid until
    // 2100; stored as is, it would beat every fresh CRL ("later expiry wins") for
    // decades. Its times are not trusted: it counts from the import, for a day at most.
    let dir = tempfile::tempdir().unwrap();
    let db = db(&dir, "a.db").await;
    let far = 4_102_444_800i64; // 2100-01-01
    let json = json!({
        "format": bundle::FORMAT,
        "created_at": far,
        "items": [{
            "key": "amd/Milan/crl",
            "url": "https://kds.invalid/vcek/v1/Milan/crl",
            "body": "",
            "issuer_chain": null,
            "fetched_at": far,
            "expires_at": far,
        }],
    });
    assert_eq!(
        bundle::import(&db, &serde_json::to_vec(&json).unwrap())
            .await
            .unwrap(),
        1
    );
    let items = verifier::collateral::list_items(&db).await.unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let crl = items.iter().find(|i| i.key == "amd/Milan/crl").unwrap();
    assert!(
        crl.expires_at <= now + 86_400 + 60,
        "expires at {} (now {now})",
        crl.expires_at
    );
}

/// An emulated guest whose evidence carries no certificates and no collateral, as a real
/// TDX guest with only a QGS quote, or an SNP host serving no extended-report table.
struct Bare<T>(T);

impl<T: verifier::client::kbs::EvidenceSource> verifier::client::kbs::EvidenceSource for Bare<T> {
    fn tee(&self) -> &'static str {
        self.0.tee()
    }

    fn evidence(
        &self,
        report_data: &[u8; 64],
    ) -> Result<serde_json::Value, verifier::client::ClientError> {
        let mut v = self.0.evidence(report_data)?;
        let obj = v.as_object_mut().expect("object");
        obj.remove("cert_chain");
        obj.remove("collateral");
        Ok(v)
    }
}

async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::run(&args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_fetches_collateral_for_the_kbs_flow_and_the_cli_exports_imports_and_lists_it() {
    use verifier::crypto::jwe::TeeKeyPair;
    let (snp, tdx, dir) = emulated();
    let (mock, url) = start_mock().await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    mock.serve(snp.kds_responses(&[], now - day, now + day).unwrap());
    mock.serve(tdx.pcs_responses(&CollateralOptions::from_now(30)).unwrap());
    let env = common::Env::new();
    let creds = common::bootstrap(&env);
    let server = {
        let env = &env;
        let url = url.clone();
        let dir = dir.clone();
        tokio::task::block_in_place(move || {
            common::start_args(
                env,
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--insecure-http",
                    "--emulated-trust",
                    dir.to_str().unwrap(),
                    "--amd-kds-url",
                    &url,
                    "--intel-pcs-url",
                    &url,
                ],
                &[],
            )
        })
    };
    let admin = common::admin_client(&server, &creds);
    common::provision(&admin, "web").await;
    let client = common::kbs(&server);
    let got = client
        .fetch(
            &Bare(common::snp_guest()),
            &TeeKeyPair::p256(),
            json!({}),
            common::RESOURCE,
        )
        .await
        .expect("SNP release with KDS collateral");
    assert_eq!(got.as_slice(), common::SECRET);
    let got = client
        .fetch(
            &Bare(common::tdx_guest()),
            &TeeKeyPair::p256(),
            json!({"workload": "web-tdx"}),
            common::RESOURCE,
        )
        .await
        .expect("TDX release with PCS collateral");
    assert_eq!(got.as_slice(), common::SECRET);
    assert_eq!(mock.count(&snp.kds_vcek_path()), 1);
    assert_eq!(
        mock.count(TCB_PATH.replace("B0C06F000000", "EE006F000000").as_str()),
        1
    );
    drop(server);

    // status: every item, valid.
    let out = cli(vec![
        "collateral".into(),
        "status".into(),
        "--database".into(),
        env.database.clone(),
        "--output".into(),
        "json".into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 7, "{v}");
    assert!(items.iter().all(|i| i["valid"] == true), "{v}");
    assert!(items.iter().any(|i| i["key"] == "intel/tdx/qe_identity"));
    // export, then import into a fresh database, whose status lists the same items.
    let bundle = env.dir.path().join("bundle.json");
    let out = cli(vec![
        "collateral".into(),
        "export".into(),
        "--database".into(),
        env.database.clone(),
        "--out".into(),
        bundle.display().to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let air = env.dir.path().join("air.db").display().to_string();
    // `collateral import` checks items against the genuine roots only: the emulated
    // platform's items are refused there, naming one, and nothing is stored.
    let import = |extra: Vec<String>| {
        let mut args = vec![
            "collateral".to_string(),
            "import".into(),
            "--database".into(),
            air.clone(),
        ];
        args.extend(extra);
        args.push(bundle.display().to_string());
        cli(args)
    };
    let out = import(vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not authentic"), "{err}");
    // A directory that is not a platform's (a mistyped path) is refused, not read as
    // "no emulated anchors".
    let out = import(vec![
        "--emulated-trust".into(),
        env.dir.path().display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no emulated platform anchors"), "{err}");
    // With the platform's anchors (`--emulated-trust`, as `serve` has them) it imports.
    let out = import(vec!["--emulated-trust".into(), dir.display().to_string()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "imported 7 items"
    );
    let out = cli(vec![
        "collateral".into(),
        "status".into(),
        "--database".into(),
        air,
    ])
    .await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("valid").count(), 7, "{text}");
    // export --product fetches from the KDS (and, with the genuine roots only, refuses
    // the emulated platform's chain rather than exporting it).
    let before = mock.count(&format!("/vcek/v1/{}/cert_chain", snp.product()));
    let out = cli(vec![
        "collateral".into(),
        "export".into(),
        "--database".into(),
        env.dir.path().join("fresh.db").display().to_string(),
        "--product".into(),
        snp.product().to_string(),
        "--amd-kds-url".into(),
        url.clone(),
        "--out".into(),
        bundle.display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not authentic"), "{err}");
    assert_eq!(
        mock.count(&format!("/vcek/v1/{}/cert_chain", snp.product())),
        before + 1
    );
}

/// PostgreSQL: two replicas share the cache (the second fetches nothing), and a bundle
/// re-imports (upsert) cleanly. Skipped, visibly, without
/// `CVM_TEST_POSTGRES_URL`; required under CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_share_the_collateral_cache() {
    use sqlx::Connection;
    let Ok(url) = std::env::var("CVM_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI requires CVM_TEST_POSTGRES_URL"
        );
        eprintln!("SKIPPED: CVM_TEST_POSTGRES_URL not set");
        return;
    };
    let name = format!("cvm_test_{}", verifier::crypto::random_hex(6));
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
    let db_url = format!("{base}/{name}");
    let (mock, pcs) = start_mock().await;
    mock.serve(genuine_pcs());
    let quote = data("tdx-v4-uptodate/quote.bin");
    let a =
        Arc::new(CollateralService::new(config(&pcs), Db::open(&db_url).await.unwrap()).unwrap());
    verify(&verifier(&a, &[]), Tee::Tdx, &quote, tdx_time())
        .await
        .unwrap();
    assert_eq!(mock.total(), 4);
    let b_db = Db::open(&db_url).await.unwrap();
    let b = Arc::new(CollateralService::new(config(&pcs), b_db.clone()).unwrap());
    verify(&verifier(&b, &[]), Tee::Tdx, &quote, tdx_time())
        .await
        .unwrap();
    assert_eq!(mock.total(), 4, "the second replica used the shared cache");
    // Re-importing the replica's own export updates the rows in place.
    let mut bundle = bundle::export_cached(&b_db).await.unwrap();
    assert_eq!(bundle.items.len(), 4);
    for i in &mut bundle.items {
        i.fetched_at -= 1000;
    }
    let json = serde_json::to_vec(&bundle).unwrap();
    assert_eq!(bundle::import(&b_db, &json).await.unwrap(), 4);
    let after = bundle::export_cached(&b_db).await.unwrap();
    assert_eq!(after.items.len(), 4);
    b_db.close().await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_chip_ids_cost_one_kds_request_per_chip_not_per_flow() {
    // Attack: an attester sends reports for a CHIP_ID the KDS does not know, over and
    // over, to make the verifier hammer AMD's KDS (which rate-limits it for everyone).
    let (mock, url) = start_mock().await;
    let (kds, vcek_path) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let mut report = data("snp-milan-v2/report.bin");
    report[0x1A0] ^= 0xff; // another chip
    for _ in 0..5 {
        let e = verify(&v, Tee::Snp, &report, snp_time()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
        assert!(e.message.contains("404"), "{}", e.message);
    }
    // One request per product tried (Milan, Genoa), for five flows.
    assert_eq!(mock.total(), 2, "{:?}", mock.counts.lock().unwrap());
    assert_eq!(mock.count(&vcek_path), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turin_vcek_is_fetched_by_its_8_byte_hwid_with_fmc_spl() {
    use attestation::snp::emulated::EmulatedSnpConfig;
    use attestation::snp::{Product, TcbParts};
    let dir = tempfile::tempdir().unwrap();
    let snp = EmulatedSnpPlatform::create_with(
        dir.path(),
        &EmulatedSnpConfig {
            product: Product::Turin,
            tcb: TcbParts {
                bootloader: 1,
                tee: 2,
                snp: 3,
                microcode: 4,
                fmc: Some(5),
            },
            ..EmulatedSnpConfig::default()
        },
    )
    .unwrap();
    let (mock, url) = start_mock().await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    mock.serve(snp.kds_responses(&[], now - day, now + day).unwrap());
    let path = snp.kds_vcek_path();
    let hw = hex::encode(&snp.chip_id()[..8]);
    assert_eq!(
        path,
        format!("/vcek/v1/Turin/{hw}?blSPL=1&teeSPL=2&snpSPL=3&ucodeSPL=4&fmcSPL=5")
    );
    let service = emulated_service(config(&url), db(&dir, "a.db").await, dir.path());
    let v = verifier(&service, &[dir.path().to_owned()]);
    verify(
        &v,
        Tee::Snp,
        &snp_report(dir.path()),
        time::OffsetDateTime::now_utc(),
    )
    .await
    .expect("Turin report with the fetched VCEK");
    assert_eq!(mock.count(&path), 1);
}

/// The genuine export of a connected verifier (TDX and SNP items), with the mock still
/// serving the genuine items.
async fn genuine_bundle(dir: &tempfile::TempDir) -> (Arc<Mock>, String, serde_json::Value) {
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    let (kds, _) = genuine_kds();
    mock.serve(kds);
    let online_db = db(dir, "online.db").await;
    let online = Arc::new(CollateralService::new(config(&url), online_db.clone()).unwrap());
    verify(
        &verifier(&online, &[]),
        Tee::Tdx,
        &data("tdx-v4-uptodate/quote.bin"),
        tdx_time(),
    )
    .await
    .unwrap();
    verify(
        &verifier(&online, &[]),
        Tee::Snp,
        &data("snp-milan-v2/report.bin"),
        snp_time(),
    )
    .await
    .unwrap();
    let json = serde_json::to_value(bundle::export_cached(&online_db).await.unwrap()).unwrap();
    (mock, url, json)
}

/// The emulated platform's VCEK (DER), as its KDS serves it.
fn emulated_vcek(snp: &EmulatedSnpPlatform) -> Vec<u8> {
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let path = snp.kds_vcek_path();
    snp.kds_responses(&[], now - day, now + day)
        .unwrap()
        .into_iter()
        .find(|r| r.path == path)
        .unwrap()
        .body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bundle_items_are_refused_at_import_naming_the_item() {
    // Attack (red team, last round): `collateral import` stored bundle items after a
    // shape check only, so a forged VCEK, TCB info or CRL in a bundle entered the cache
    // and was served from it (a far-future expiry pinned it there). Every item must now
    // chain to AMD's pinned ARKs / Intel's root CA before it is stored; one forged item
    // refuses the bundle, naming the item, and nothing of it is stored.
    let dir = tempfile::tempdir().unwrap();
    let (_mock, _url, json) = genuine_bundle(&dir).await;
    let (snp, _, _) = emulated();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let forged_crl = snp
        .crl(&[], now - day, now + 3650 * day)
        .unwrap()
        .der()
        .to_vec();
    let forge = |prefix: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let mut b = json.clone();
        let items = b["items"].as_array_mut().unwrap();
        let item = items
            .iter_mut()
            .find(|i| i["key"].as_str().unwrap().starts_with(prefix))
            .unwrap();
        f(item);
        serde_json::to_vec(&b).unwrap()
    };
    // A VCEK of another (emulated) root under the genuine chip's key.
    let vcek = B64.encode(emulated_vcek(&snp));
    let forged_vcek = forge("amd/Milan/vcek/", &|i| i["body"] = json!(vcek));
    // The genuine TCB info with its nextUpdate moved to 2099 (signature kept).
    let forged_tcb = forge("intel/tdx/tcb/", &|i| {
        let body = String::from_utf8(B64.decode(i["body"].as_str().unwrap()).unwrap()).unwrap();
        let at = body.find("\"nextUpdate\":\"").unwrap() + 14;
        let body = format!("{}2099{}", &body[..at], &body[at + 4..]);
        i["body"] = json!(B64.encode(body));
    });
    // A CRL of another (emulated) ARK as Milan's, valid for ten years.
    let crl = B64.encode(&forged_crl);
    let forged_crl = forge("amd/Milan/crl", &|i| i["body"] = json!(crl));
    for (n, (bytes, key)) in [
        (forged_vcek, "amd/Milan/vcek/"),
        (forged_tcb, "intel/tdx/tcb/"),
        (forged_crl, "amd/Milan/crl"),
    ]
    .into_iter()
    .enumerate()
    {
        let air = db(&dir, &format!("air{n}.db")).await;
        let e = bundle::import(&air, &bytes)
            .await
            .expect_err("a forged item must be refused");
        let text = format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(text.contains(key), "{text}");
        assert!(text.contains("not authentic"), "{text}");
        assert!(
            bundle::export_cached(&air).await.unwrap().items.is_empty(),
            "nothing of a refused bundle is stored"
        );
    }
    // The genuine bundle still imports.
    let air = db(&dir, "genuine.db").await;
    assert_eq!(
        bundle::import(&air, &serde_json::to_vec(&json).unwrap())
            .await
            .unwrap(),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cached_row_cannot_pin_the_cache() {
    // Attack: a forged VCEK already in the cache table (written by an older verifier's
    // import, or by anyone with write access to a shared database) with a far-future
    // expiry. Before, it was served until then: every flow of the chip was refused and
    // the genuine VCEK never fetched. Now a cached row is authenticated when loaded;
    // an unauthentic one is dropped and the genuine item fetched.
    use verifier::collateral::{Item, ItemKey, VcekTcb};
    let (mock, url) = start_mock().await;
    let (kds, vcek_path) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let database = db(&dir, "a.db").await;
    let ext = AmdCertificate::from_der(&data("snp-milan-v2/vcek.der"))
        .unwrap()
        .vek_extensions()
        .unwrap();
    let key = ItemKey::Vcek {
        product: attestation::snp::Product::Milan,
        hw_id: ext.hw_id.clone().unwrap(),
        tcb: VcekTcb {
            bootloader: ext.bootloader,
            tee: ext.tee,
            snp: ext.snp,
            microcode: ext.microcode,
            fmc: None,
        },
    };
    let (snp, _, _) = emulated();
    verifier::collateral::store_item(
        &database,
        &Item {
            key: key.to_string(),
            url: format!("{url}{vcek_path}"),
            body: emulated_vcek(&snp),
            issuer_chain: None,
            fetched_at: 0,
            expires_at: 4_000_000_000,
        },
    )
    .await
    .unwrap();
    let service = Arc::new(CollateralService::new(config(&url), database).unwrap());
    verify(
        &verifier(&service, &[]),
        Tee::Snp,
        &data("snp-milan-v2/report.bin"),
        snp_time(),
    )
    .await
    .expect("the forged row is dropped and the genuine VCEK fetched");
    assert_eq!(mock.count(&vcek_path), 1);
}

/// The genuine VLEK-signed Milan report with its certificate table (VLEK, ASVK, ARK),
/// as an extended report carries it (VLEKs are never fetched).
fn genuine_vlek_with_table() -> serde_json::Value {
    use attestation::snp::{CertKind, CertTable, CertTableEntry, CertTableKind};
    let chain = AmdCertificate::parse_all(&data("snp-milan-vlek-v3/ask_ark_asvk.pem")).unwrap();
    let of = |k: CertKind| chain.iter().find(|c| c.kind() == k).unwrap().der().to_vec();
    let table = CertTable {
        entries: vec![
            CertTableEntry {
                kind: CertTableKind::Vlek,
                data: data("snp-milan-vlek-v3/vlek.der"),
            },
            CertTableEntry {
                kind: CertTableKind::Ask,
                data: of(CertKind::Asvk),
            },
            CertTableEntry {
                kind: CertTableKind::Ark,
                data: of(CertKind::Ark),
            },
        ],
    };
    json!({
        "report": B64.encode(data("snp-milan-vlek-v3/report.bin")),
        "cert_chain": B64.encode(table.to_bytes().unwrap()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_vlek_chain_is_checked_against_the_kds_vlek_crl() {
    // Attack (red team, last round): VLEK chains had no revocation source, so a VLEK
    // (or ASVK) AMD has revoked was accepted. VLEKs are not fetchable, but their CRL is
    // (`/vlek/v1/{product}/crl`): it is now required like the VCEK CRL.
    let (mock, url) = start_mock().await;
    mock.down.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let ev = serde_json::to_vec(&genuine_vlek_with_table()).unwrap();
    let report = data("snp-milan-vlek-v3/report.bin");
    let rd: [u8; 64] = report[0x50..0x90].try_into().unwrap();
    let run = |v: Arc<AttestationVerifier>, ev: Vec<u8>| {
        tokio::task::spawn_blocking(move || v.verify(Tee::Snp, &ev, &rd, snp_time()).map(|_| ()))
    };
    // Without a collateral source the chain itself verifies (the vector is genuine).
    let plain = Arc::new(AttestationVerifier::new(&[]).unwrap());
    run(plain, ev.clone()).await.unwrap().unwrap();
    // The KDS is down: the VLEK CRL cannot be had, so the evidence is refused.
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let e = run(verifier(&service, &[]), ev.clone())
        .await
        .unwrap()
        .expect_err("no VLEK CRL, no verdict");
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("VLEK CRL"), "{}", e.message);
    assert_eq!(mock.count("/vlek/v1/Milan/crl"), 3);
    assert_eq!(mock.count("/vcek/v1/Milan/crl"), 0);
    // A KDS answering 404 for it: refused by default (`amd_crl_optional` false)…
    mock.down.store(false, Ordering::SeqCst);
    let strict = CollateralConfig {
        amd_crl_required: true,
        ..config(&url)
    };
    let service = Arc::new(CollateralService::new(strict, db(&dir, "b.db").await).unwrap());
    let e = run(verifier(&service, &[]), ev.clone())
        .await
        .unwrap()
        .expect_err("a missing VLEK CRL is refused by default");
    assert!(e.message.contains("publishes no CRL"), "{}", e.message);
    // …and accepted only with `amd_crl_optional` (a private KDS).
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "c.db").await).unwrap());
    run(verifier(&service, &[]), ev).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_platforms_are_held_to_a_fetch_budget() {
    // Attack (red team, last round): an unauthenticated client sends reports for ever
    // new made-up CHIP_IDs (or TCBs / FMSPCs), each a cache miss, to make the verifier
    // fetch without bound from AMD's KDS / Intel's PCS (which rate-limit the verifier
    // for everyone). Cache-miss fetches are now held to a per-client budget (16 per
    // minute by default) and a global one.
    let (mock, url) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let mut report = data("snp-milan-v2/report.bin");
    let mut refused = 0;
    for i in 0..40u8 {
        report[0x1A0] = i;
        report[0x1A1] = 0xee;
        let e = verify(&v, Tee::Snp, &report, snp_time()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
        if e.message.contains("budget") {
            refused += 1;
        }
    }
    // Two requests per made-up chip (Milan, then Genoa) until the budget is spent.
    assert!(mock.total() <= 16, "{} KDS requests", mock.total());
    assert_eq!(refused, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_fmspc_costs_one_pcs_request_per_miss_ttl() {
    // Attack: TDX did not remember the PCS's 404 for an FMSPC, so every flow with the
    // same unknown platform asked the PCS again.
    let (mock, url) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let quote = data("tdx-v4-uptodate/quote.bin");
    for _ in 0..5 {
        let e = verify(&v, Tee::Tdx, &quote, tdx_time()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
        assert!(e.message.contains("404"), "{}", e.message);
    }
    assert_eq!(mock.count(TCB_PATH), 1, "{:?}", mock.counts.lock().unwrap());
    assert_eq!(mock.total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_remembered_not_retried() {
    // Attack: once the KDS rate-limits the verifier (429), every flow retried, which
    // keeps it rate-limited. A 429 with Retry-After is now honoured: not retried, and
    // nothing is asked for again until then.
    let (mock, url) = start_mock().await;
    let (_, vcek_path) = genuine_kds();
    *mock.throttle.lock().unwrap() = Some(120);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let report = data("snp-milan-v2/report.bin");
    for _ in 0..3 {
        let e = verify(&v, Tee::Snp, &report, snp_time()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
        assert!(e.message.contains("429"), "{}", e.message);
    }
    assert_eq!(
        mock.count(&vcek_path),
        1,
        "{:?}",
        mock.counts.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_collateral_in_tdx_evidence_cannot_roll_back_the_tcb() {
    // Attack (red team, last round): TDX collateral carried in the evidence took
    // priority over the service's, so a guest (or the host feeding it) could send an
    // older-but-still-valid set in which the platform was still UpToDate, after Intel
    // had published a TCB evaluation marking it OutOfDate.
    use attestation::claims::TeeClaims;
    use attestation::tdx::TcbStatus;
    let (_, tdx, dir) = emulated();
    let (mock, url) = start_mock().await;
    let now = time::OffsetDateTime::now_utc();
    let newer = CollateralOptions {
        platform_out_of_date: true,
        ..CollateralOptions::around(now, 30)
    };
    let older = CollateralOptions::around(now - time::Duration::days(5), 30);
    mock.serve(tdx.pcs_responses(&newer).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let service = emulated_service(config(&url), db(&tmp, "a.db").await, &dir);
    let quote = tdx_quote(&dir);
    let rd: [u8; 64] = quote[568..632].try_into().unwrap();
    let with = |c: &CollateralOptions| {
        let json = tdx.collateral(c).unwrap().to_json().unwrap();
        serde_json::to_vec(&json!({
            "quote": B64.encode(&quote),
            "collateral": serde_json::from_str::<serde_json::Value>(&json).unwrap(),
        }))
        .unwrap()
    };
    let run = |v: Arc<AttestationVerifier>, ev: Vec<u8>| {
        tokio::task::spawn_blocking(move || v.verify(Tee::Tdx, &ev, &rd, now))
    };
    let status = |c: attestation::claims::Claims| match c.detail {
        TeeClaims::Tdx(t) => t.tcb_status,
        TeeClaims::Snp(_) => panic!("TDX claims expected"),
    };
    let v = verifier(&service, std::slice::from_ref(&dir));
    // The service's collateral (newest): OutOfDate.
    let plain = serde_json::to_vec(&json!({ "quote": B64.encode(&quote) })).unwrap();
    let c = run(Arc::clone(&v), plain).await.unwrap().unwrap();
    assert_eq!(status(c), TcbStatus::OutOfDate);
    // The older set carried in the evidence does not replace it.
    let c = run(Arc::clone(&v), with(&older)).await.unwrap().unwrap();
    assert_eq!(
        status(c),
        TcbStatus::OutOfDate,
        "the evidence's older collateral was used"
    );
    // The PCS is down and a restarted verifier has only the database: the older set
    // is refused as a rollback; a set as new as the cached one is accepted.
    mock.down.store(true, Ordering::SeqCst);
    let restarted = emulated_service(config(&url), db(&tmp, "a.db").await, &dir);
    let v = verifier(&restarted, std::slice::from_ref(&dir));
    let e = run(Arc::clone(&v), with(&older))
        .await
        .unwrap()
        .expect_err("older collateral is a rollback");
    assert_eq!(e.check.as_deref(), Some("collateral-rollback"), "{e:?}");
    let c = run(Arc::clone(&v), with(&newer)).await.unwrap().unwrap();
    assert_eq!(status(c), TcbStatus::OutOfDate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetch_budget_is_per_client_then_global_and_refusals_are_counted() {
    use std::sync::atomic::AtomicUsize;
    use verifier::collateral::budget::with_client;
    let (mock, url) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = CollateralConfig {
        fetch_budget_per_client: 2,
        fetch_budget_global: 5,
        ..config(&url)
    };
    let refusals = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&refusals);
    let service = Arc::new(
        CollateralService::new(cfg, db(&dir, "a.db").await)
            .unwrap()
            .with_refusal_hook(Arc::new(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
            })),
    );
    let v = verifier(&service, &[]);
    let report = data("snp-milan-v2/report.bin");
    let flow = |client: &'static str, chip: u8| {
        let v = Arc::clone(&v);
        let mut report = report.clone();
        report[0x1A0] = chip;
        report[0x1A1] = 0xee;
        let rd: [u8; 64] = report[0x50..0x90].try_into().unwrap();
        let ev = serde_json::to_vec(&json!({ "report": B64.encode(&report) })).unwrap();
        tokio::task::spawn_blocking(move || {
            with_client(client, || v.verify(Tee::Snp, &ev, &rd, snp_time()))
                .map(|_| ())
                .unwrap_err()
                .message
        })
    };
    // Client A: its first made-up chip costs 2 fetches (Milan, Genoa); the next is refused.
    assert!(flow("10.0.0.1", 1).await.unwrap().contains("404"));
    let e = flow("10.0.0.1", 2).await.unwrap();
    assert!(e.contains("client budget"), "{e}");
    // Client B is not held to A's budget, but the global one (5) runs out.
    assert!(flow("10.0.0.2", 3).await.unwrap().contains("404"));
    let e = flow("10.0.0.3", 4).await.unwrap();
    assert!(e.contains("global budget"), "{e}");
    assert_eq!(mock.total(), 5);
    assert_eq!(refusals.load(Ordering::SeqCst), 2);
}
