//! Test harness: the real verifier service in-process on 127.0.0.1 (plain HTTP, the
//! emulated trust anchors), provisioned directly in its database, and emulated guests
//! from the `attestation` crate's platforms (the verifier's own test pattern).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use guest_agent::evidence::{Evidence, EvidenceError, EvidenceProvider, Tee};
use guest_agent::http::{Transport, TransportError};
use guest_agent::tcp::TcpTransport;
use serde_json::json;
use verifier::client::emulated::{SnpGuest, TdxGuest};
use verifier::client::kbs::EvidenceSource;
use verifier::config::{ConfigFile, Overrides};
use verifier::crypto::master::MasterKey;
use verifier::db::Db;
use verifier::store::workloads::{self, Workload};

pub const MEASUREMENT: [u8; 48] = [0x5a; 48];
pub const RESOURCE: &str = "default/key/disk";
pub const SECRET: &[u8] = b"the disk encryption key \x00\x01\x02";

/// The emulated SNP and TDX platforms (generated once per target dir: RSA-4096).
pub fn emulated_dir() -> PathBuf {
    test_kit::emulated_platform()
}

/// A running verifier (its runtime thread ends with the test process).
pub struct Server {
    pub addr: SocketAddr,
    pub ca_pem: Vec<u8>,
    /// The verifier's identity (its token key), as `cvm-verifier identity` reads it.
    pub verifier_key: guest_agent::VerifierKey,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Client settings pinning this verifier.
    pub fn config(&self) -> guest_agent::KbsConfig {
        guest_agent::KbsConfig {
            verifier_key: Some(self.verifier_key.clone()),
            ..Default::default()
        }
    }
}

/// Starts the verifier with workloads `web` (SNP) and `web-tdx` (emulated evidence of [`MEASUREMENT`]
/// allowed) granted [`RESOURCE`] = [`SECRET`].
pub fn start_server() -> Server {
    start_server_with(
        json!({
            "measurements": [hex::encode(MEASUREMENT)], "allow_emulated": true,
        }),
        SECRET.to_vec(),
    )
}

/// Starts the verifier with workloads `web` (SNP) and `web-tdx` under `policy`, granted [`RESOURCE`] =
/// `secret`.
pub fn start_server_with(policy: serde_json::Value, secret: Vec<u8>) -> Server {
    start(policy, secret, false)
}

/// Starts the verifier over HTTPS with a self-signed certificate for `localhost`
/// (`Server::ca_pem`).
pub fn start_tls_server() -> Server {
    start(
        json!({"measurements": [hex::encode(MEASUREMENT)], "allow_emulated": true}),
        SECRET.to_vec(),
        true,
    )
}

fn start(policy: serde_json::Value, secret: Vec<u8>, tls: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_pem = Vec::new();
    let (mut tls_cert, mut tls_key) = (None, None);
    if tls {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.key_pair.serialize_pem()).unwrap();
        ca_pem = ck.cert.pem().into_bytes();
        (tls_cert, tls_key) = (Some(c), Some(k));
    }
    let db_path = dir.path().join("verifier.db").display().to_string();
    let mk_path = dir.path().join("master.key");
    MasterKey::generate().write_new(&mk_path).unwrap();
    let cfg = ConfigFile::default()
        .resolve(Overrides {
            listen: Some("127.0.0.1:0".into()),
            database: Some(db_path.clone()),
            master_key_file: Some(mk_path.clone()),
            insecure_http: !tls,
            tls_cert,
            tls_key,
            emulated_trust: vec![emulated_dir()],
            ..Default::default()
        })
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let db = Db::open(&db_path).await.unwrap();
            let mk = MasterKey::load(&mk_path).unwrap();
            let mut t = db.begin().await.unwrap();
            let policy: attestation::policy::Policy = serde_json::from_value(policy).unwrap();
            // Each workload is bound to one TEE: `web` (SNP) and `web-tdx`.
            for (name, tee) in [
                ("web", attestation::claims::Tee::Snp),
                ("web-tdx", attestation::claims::Tee::Tdx),
            ] {
                let mut policy = policy.clone();
                if tee == attestation::claims::Tee::Tdx {
                    // A TDX policy must pin RTMR1 and RTMR2 (MRTD is only the
                    // firmware); the emulated TD of these tests extends nothing.
                    for index in policy.tdx.unpinned_boot_rtmrs() {
                        policy
                            .tdx
                            .rtmrs
                            .push(attestation::policy::tdx::ExpectedRtmr {
                                index,
                                value: [0; 48],
                            });
                    }
                }
                workloads::upsert(
                    &mut t,
                    &Workload {
                        name: name.into(),
                        tee: Some(tee),
                        policy,
                        resources: vec![RESOURCE.into()],
                        revoked: false,
                    },
                )
                .await
                .unwrap();
            }
            workloads::put_resource(&mut t, &mk, RESOURCE, &secret)
                .await
                .unwrap();
            t.commit().await.unwrap();
            // The key `serve` will load: the pin, from the database (a trusted source).
            let signer = verifier::store::sessions::signing_key(&db, &mk)
                .await
                .unwrap();
            let pin = guest_agent::VerifierKey::from_sec1(signer.public_sec1()).unwrap();
            db.close().await;
            verifier::service::serve(cfg, move |addr, _| {
                let _ = tx.send((addr, pin.clone()));
            })
            .await
            .unwrap();
        });
    });
    let (addr, verifier_key) = rx.recv().expect("the verifier starts");
    Server {
        addr,
        verifier_key,
        ca_pem,
        _dir: dir,
    }
}

/// An emulated SNP guest as an [`EvidenceProvider`] (report + certificate table).
pub struct SnpProvider(pub SnpGuest);

impl SnpProvider {
    pub fn new() -> Self {
        Self(SnpGuest::open(&emulated_dir(), MEASUREMENT).unwrap())
    }
}

impl EvidenceProvider for SnpProvider {
    fn tee(&self) -> Tee {
        Tee::Snp
    }
    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let (report, table) = self
            .0
            .extended_report(report_data)
            .map_err(|e| EvidenceError::Unavailable(e.to_string()))?;
        Evidence::snp(&report, Some(&table))
    }
}

/// An emulated TDX guest (quote + collateral).
pub struct TdxProvider(pub TdxGuest);

impl TdxProvider {
    pub fn new() -> Self {
        Self(TdxGuest::open(&emulated_dir(), MEASUREMENT).unwrap())
    }
}

impl EvidenceProvider for TdxProvider {
    fn tee(&self) -> Tee {
        Tee::Tdx
    }
    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let v = self
            .0
            .evidence(report_data)
            .map_err(|e| EvidenceError::Unavailable(e.to_string()))?;
        let quote = self.0.quote(report_data).unwrap();
        let coll = serde_json::to_vec(&v["collateral"]).unwrap();
        Evidence::tdx(&quote, Some(&coll))
    }
}

/// A transport that lets a test see and alter requests and responses.
pub struct Tap<F, G> {
    pub inner: TcpTransport,
    pub on_request: F,
    pub on_response: G,
    pending: Vec<u8>,
    response: Option<(Vec<u8>, usize)>,
}

impl<F: FnMut(&mut Vec<u8>), G: FnMut(&mut Vec<u8>)> Tap<F, G> {
    pub fn new(addr: SocketAddr, on_request: F, on_response: G) -> Self {
        Self {
            inner: TcpTransport::new(addr),
            on_request,
            on_response,
            pending: Vec::new(),
            response: None,
        }
    }
}

impl<F: FnMut(&mut Vec<u8>), G: FnMut(&mut Vec<u8>)> Transport for Tap<F, G> {
    fn open(&mut self) -> Result<(), TransportError> {
        self.pending.clear();
        self.response = None;
        self.inner.open()
    }
    fn write_all(&mut self, data: &[u8]) -> Result<(), TransportError> {
        self.pending.extend_from_slice(data);
        Ok(())
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        if self.response.is_none() {
            let mut req = std::mem::take(&mut self.pending);
            (self.on_request)(&mut req);
            self.inner.write_all(&req)?;
            let mut all = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = self.inner.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&chunk[..n]);
            }
            (self.on_response)(&mut all);
            self.response = Some((all, 0));
        }
        let (all, at) = self.response.as_mut().unwrap();
        let n = buf.len().min(all.len() - *at);
        buf[..n].copy_from_slice(&all[*at..*at + n]);
        *at += n;
        Ok(n)
    }
    fn close(&mut self) {
        self.inner.close();
    }
}

/// Replaces the first occurrence of `from` with `to` (same length) in `buf`.
pub fn replace_once(buf: &mut [u8], from: &[u8], to: &[u8]) -> bool {
    assert_eq!(from.len(), to.len());
    match buf.windows(from.len()).position(|w| w == from) {
        Some(p) => {
            buf[p..p + to.len()].copy_from_slice(to);
            true
        }
        None => false,
    }
}
