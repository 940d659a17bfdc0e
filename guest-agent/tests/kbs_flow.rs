//! The full KBS protocol against the real verifier: release with emulated SNP and TDX
//! evidence in Trustee's formats (what `cvm-agent` sends) and in the cvm formats (what
//! the bare-metal test guest sends), and refusals (wrong nonce, evidence for another REPORT_DATA, replayed
//! evidence, tampered JWE: refused by the release signature before decryption).

mod common;

use common::*;
use guest_agent::evidence::{Evidence, EvidenceError, EvidenceProvider, Tee};
use guest_agent::http::Transport;
use guest_agent::jwe::{Curve, EphemeralKey};
use guest_agent::rng::OsEntropy;
use guest_agent::tcp::TcpTransport;
use guest_agent::{KbsClient, KbsConfig, KbsError, ResourcePath};

fn client<T: Transport>(server: &Server, t: T) -> KbsClient<T> {
    KbsClient::new(t, server.config())
}

fn path() -> ResourcePath {
    ResourcePath::parse(RESOURCE).unwrap()
}

#[test]
fn snp_and_tdx_release_the_resource() {
    let server = start_server();
    let mut snp = SnpProvider::new();
    for curve in [Curve::P256, Curve::P384] {
        let mut c = client(&server, TcpTransport::new(server.addr));
        let secret = c
            .fetch(&mut snp, &mut OsEntropy, curve, &path())
            .expect("SNP release");
        assert_eq!(secret.expose(), SECRET);
    }
    let mut tdx = TdxProvider::new();
    let mut c = KbsClient::new(
        TcpTransport::new(server.addr),
        KbsConfig {
            workload: Some("web-tdx".into()),
            ..server.config()
        },
    );
    let secret = c
        .fetch(&mut tdx, &mut OsEntropy, Curve::P256, &path())
        .expect("TDX release");
    assert_eq!(secret.expose(), SECRET);
    // An ungranted resource is refused with the verifier's problem detail.
    let err = c
        .fetch(
            &mut tdx,
            &mut OsEntropy,
            Curve::P256,
            &ResourcePath::parse("default/key/other").unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, KbsError::Refused { status: 403, detail } if detail.contains("not granted")),
        "{err:?}"
    );
}

#[test]
fn https_release() {
    let server = start_tls_server();
    let t = guest_agent::tls::TlsTransport::new("localhost", server.addr.port(), &server.ca_pem)
        .unwrap();
    let mut c = client(&server, t);
    let secret = c
        .fetch(
            &mut SnpProvider::new(),
            &mut OsEntropy,
            Curve::P384,
            &path(),
        )
        .expect("release over HTTPS");
    assert_eq!(secret.expose(), SECRET);
    // Another CA is refused before any request is sent.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let t = guest_agent::tls::TlsTransport::new(
        "localhost",
        server.addr.port(),
        other.cert.pem().as_bytes(),
    )
    .unwrap();
    let err = client(&server, t)
        .fetch(
            &mut SnpProvider::new(),
            &mut OsEntropy,
            Curve::P256,
            &path(),
        )
        .unwrap_err();
    assert!(matches!(err, KbsError::Http(_)), "{err:?}");
}

#[test]
fn a_wrong_nonce_is_refused() {
    let server = start_server();
    let mut nonce = None::<String>;
    let mut c = client(
        &server,
        Tap::new(
            server.addr,
            |req: &mut Vec<u8>| {
                // Alter one character of the nonce in runtime-data (same length).
                if req.starts_with(b"POST /kbs/v0/attest") {
                    let text = String::from_utf8(req.clone()).unwrap();
                    let at = text.find("\"nonce\":\"").unwrap() + 9;
                    let c = req[at];
                    req[at] = if c == b'A' { b'B' } else { b'A' };
                }
            },
            |_: &mut Vec<u8>| {},
        ),
    );
    let mut snp = SnpProvider::new();
    let ch = c.auth(Tee::Snp).unwrap();
    nonce.get_or_insert(ch.nonce().into());
    let key = EphemeralKey::generate(Curve::P256, &mut OsEntropy).unwrap();
    let err = c.attest(ch, &key, &mut snp).unwrap_err();
    assert!(
        matches!(&err, KbsError::Refused { status: 401, detail } if detail.contains("nonce")),
        "{err:?}"
    );
}

/// The cvm formats (`Evidence::snp` / `Evidence::tdx`), as the no_std test guest sends.
struct Cvm<P>(P);

impl EvidenceProvider for Cvm<SnpProvider> {
    fn tee(&self) -> Tee {
        Tee::Snp
    }
    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let (report, table) = self.0 .0.extended_report(report_data).unwrap();
        Evidence::snp(&report, Some(&table))
    }
}

impl EvidenceProvider for Cvm<TdxProvider> {
    fn tee(&self) -> Tee {
        Tee::Tdx
    }
    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let trustee = self.0.evidence(report_data)?;
        let v: serde_json::Value = serde_json::from_str(trustee.json()).unwrap();
        let quote = self.0 .0.quote(report_data).unwrap();
        Evidence::tdx(&quote, Some(&serde_json::to_vec(&v["collateral"]).unwrap()))
    }
}

#[test]
fn the_agent_sends_trustee_formats_and_both_formats_release() {
    let rd = [7u8; 64];
    let snp = SnpProvider::new().evidence(&rd).unwrap();
    let v: serde_json::Value = serde_json::from_str(snp.json()).unwrap();
    assert!(v["attestation_report"]["measurement"].is_array(), "{v}");
    let types: Vec<&str> = v["cert_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cert_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["ARK", "ASK", "VCEK"]);
    let tdx = TdxProvider::new().evidence(&rd).unwrap();
    let v: serde_json::Value = serde_json::from_str(tdx.json()).unwrap();
    assert!(v["quote"].is_string() && v["cc_eventlog"].is_null(), "{v}");

    let server = start_server();
    let mut c = client(&server, TcpTransport::new(server.addr));
    let secret = c
        .fetch(
            &mut Cvm(SnpProvider::new()),
            &mut OsEntropy,
            Curve::P256,
            &path(),
        )
        .expect("SNP release in the cvm format");
    assert_eq!(secret.expose(), SECRET);
    let mut c = KbsClient::new(
        TcpTransport::new(server.addr),
        KbsConfig {
            workload: Some("web-tdx".into()),
            ..server.config()
        },
    );
    let secret = c
        .fetch(
            &mut Cvm(TdxProvider::new()),
            &mut OsEntropy,
            Curve::P256,
            &path(),
        )
        .expect("TDX release in the cvm format");
    assert_eq!(secret.expose(), SECRET);
}

/// Evidence that binds a REPORT_DATA other than the one asked for.
struct Unbound(SnpProvider);

impl EvidenceProvider for Unbound {
    fn tee(&self) -> Tee {
        Tee::Snp
    }
    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let mut rd = *report_data;
        rd[0] ^= 1;
        self.0.evidence(&rd)
    }
}

#[test]
fn evidence_for_other_report_data_is_refused() {
    let server = start_server();
    let mut c = client(&server, TcpTransport::new(server.addr));
    let err = c
        .fetch(
            &mut Unbound(SnpProvider::new()),
            &mut OsEntropy,
            Curve::P256,
            &path(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, KbsError::Refused { status: 401 | 403, detail } if detail.contains("REPORT_DATA")),
        "{err:?}"
    );
}

#[test]
fn replayed_evidence_is_refused() {
    let server = start_server();
    let mut snp = SnpProvider::new();
    let mut c = client(&server, TcpTransport::new(server.addr));
    let key = EphemeralKey::generate(Curve::P256, &mut OsEntropy).unwrap();
    let first = c.auth(Tee::Snp).unwrap();
    let body = KbsClient::<TcpTransport>::attestation_body(&first, &key, &mut snp).unwrap();
    let attested = c
        .attest_raw(first, &key, &body)
        .expect("first use is accepted");
    assert_eq!(
        c.resource(&attested, &key, &path()).unwrap().expose(),
        SECRET
    );
    // The same evidence and runtime data in a new session: its nonce differs.
    let second = c.auth(Tee::Snp).unwrap();
    let err = c.attest_raw(second, &key, &body).unwrap_err();
    assert!(
        matches!(&err, KbsError::Refused { status: 401, .. }),
        "{err:?}"
    );
}

#[test]
fn a_tampered_jwe_is_refused() {
    let server = start_server();
    let mut snp = SnpProvider::new();
    // Each JWE member in turn: flip one base64url character of its value.
    for member in [
        "\"ciphertext\":\"",
        "\"tag\":\"",
        "\"iv\":\"",
        "\"encrypted_key\":\"",
        "\"protected\":\"",
    ] {
        let mut c = client(
            &server,
            Tap::new(
                server.addr,
                |_: &mut Vec<u8>| {},
                move |resp: &mut Vec<u8>| {
                    let text = String::from_utf8_lossy(resp).into_owned();
                    if let Some(p) = text.find(member) {
                        let at = p + member.len() + 2;
                        resp[at] = if resp[at] == b'A' { b'B' } else { b'A' };
                    }
                },
            ),
        );
        let err = c
            .fetch(&mut snp, &mut OsEntropy, Curve::P256, &path())
            .unwrap_err();
        // The release signature covers the exact body: an altered JWE is refused
        // before it is decrypted.
        assert!(
            matches!(
                err,
                KbsError::UntrustedVerifier(guest_agent::pin::PinError::BadSignature)
            ),
            "{member}: {err:?}"
        );
    }
}
