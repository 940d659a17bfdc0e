//! The collateral service against a mock AMD KDS / Intel PCS on 127.0.0.1 serving the
//! genuine vectors (tests/data/collateral, see PROVENANCE) and the emulated platforms'
//! collateral with the real paths and headers: fetch, cache hit, shared cache, single
//! flight, expiry and refresh, outages, revocation, expired CRLs, offline bundles.

#[path = "../common/mod.rs"]
mod common;

mod attacks;
mod cli;
mod fetch;
mod revocation;

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
