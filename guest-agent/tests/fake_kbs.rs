//! A compromised host's verifier (issue 14, finding 2), in process: a fake KBS behind a
//! [`Transport`] that parses the client's real HTTP request bytes and answers with real
//! HTTP response bytes. It accepts any evidence and releases a key the host chose,
//! encrypted (the verifier's own ECDH-ES+A256KW/A256GCM code) to the TEE key the
//! client sent — which ECDH-ES lets anyone do. The client pins the honest verifier's key
//! and must refuse every forgery with [`KbsError::UntrustedVerifier`] (or
//! [`KbsError::NoPinnedVerifier`] without a pin), returning nothing.
//!
//! The forgeries: the issue's bare attack (token `a.b.c`, no proof); everything signed
//! by another key; and, with the honest verifier's genuine token relayed (a host in the
//! middle), a release with no signature, a signature by another key, a genuine
//! signature for another path, for another TEE key, or over another body.

use std::sync::{Arc, Mutex};

use guest_agent::evidence::{Evidence, EvidenceError, EvidenceProvider, Tee};
use guest_agent::http::{Transport, TransportError};
use guest_agent::jwe::Curve;
use guest_agent::pin::PinError;
use guest_agent::rng::OsEntropy;
use guest_agent::{KbsClient, KbsConfig, KbsError, ResourcePath, VerifierKey};
use serde_json::{json, Value};
use verifier::crypto::jwe::{self, TeeKey};
use verifier::crypto::token::{self, TokenSigner};

const PATH: &str = "default/key/disk";
const HOST_KEY: &[u8] = b"the host's own disk key, chosen by the host";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forgery {
    /// Token `a.b.c`, no release signature.
    Bare,
    /// A token and a release signature by the host's own key.
    OwnKey,
    /// The honest token and release signature: the control that the fake is otherwise
    /// a faithful verifier (only the honest verifier's key can do this).
    Honest,
    /// Honest token (relayed); the release has no signature.
    NoSignature,
    /// Honest token; the release is signed by another key.
    OtherKeySignature,
    /// Honest token; a genuine release signature, but for another resource path.
    OtherPath,
    /// Honest token; a genuine release signature, but for another TEE key.
    OtherTeeKey,
    /// Honest token; a genuine signature over another body (the body was replaced).
    OtherBody,
}

/// The fake KBS: `honest` is the pinned verifier's key (a host in the middle can relay
/// what it signs, never sign itself); `host` is the host's own key.
struct FakeKbs {
    forgery: Forgery,
    honest: Arc<TokenSigner>,
    host: Arc<TokenSigner>,
    tee_pubkey: Option<Value>,
    request: Vec<u8>,
    response: Vec<u8>,
    at: usize,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FakeKbs {
    fn new(forgery: Forgery, honest: Arc<TokenSigner>) -> Self {
        Self {
            forgery,
            honest,
            host: Arc::new(TokenSigner::generate()),
            tee_pubkey: None,
            request: Vec::new(),
            response: Vec::new(),
            at: 0,
            seen: Arc::default(),
        }
    }

    fn answer(&mut self, line: &str, body: &[u8]) -> Vec<u8> {
        if line.starts_with("POST /kbs/v0/auth ") {
            return ok(
                &[("Set-Cookie", "kbs-session-id=fake; Path=/kbs")],
                br#"{"nonce":"AAAAAAAAAAAAAAAAAAAAAA"}"#,
            );
        }
        if line.starts_with("POST /kbs/v0/attest ") {
            let req: Value = serde_json::from_slice(body).unwrap();
            let k = req["runtime-data"]["tee-pubkey"].clone();
            self.tee_pubkey = Some(k.clone());
            let claims = json!({"exp": 4_000_000_000u64, "jti": "fake", "tee-pubkey": k});
            let tok = match self.forgery {
                Forgery::Bare => "a.b.c".to_owned(),
                Forgery::OwnKey => self.host.sign(&claims).unwrap(),
                _ => self.honest.sign(&claims).unwrap(),
            };
            return ok(&[], json!({ "token": tok }).to_string().as_bytes());
        }
        let path = line
            .strip_prefix("GET /kbs/v0/resource/")
            .and_then(|r| r.split(' ').next())
            .expect("a resource request");
        let jwk: kbs_types::TeePubKey =
            serde_json::from_value(self.tee_pubkey.clone().expect("attested")).unwrap();
        let tee_key = TeeKey::from_jwk(&jwk).unwrap();
        let body = serde_json::to_vec(&jwe::encrypt(&tee_key, HOST_KEY).unwrap()).unwrap();
        let tp = token::jwk_thumbprint(&jwk).unwrap();
        let other_tp = {
            let k = guest_agent::EphemeralKey::generate(Curve::P256, &mut OsEntropy).unwrap();
            guest_agent::pin::jwk_thumbprint(&k.public_jwk())
        };
        let sig = match self.forgery {
            Forgery::Bare | Forgery::NoSignature => None,
            Forgery::OwnKey | Forgery::OtherKeySignature => {
                Some(self.host.sign_release(path, &tp, &body).unwrap())
            }
            Forgery::Honest => Some(self.honest.sign_release(path, &tp, &body).unwrap()),
            Forgery::OtherPath => Some(
                self.honest
                    .sign_release("default/key/other", &tp, &body)
                    .unwrap(),
            ),
            Forgery::OtherTeeKey => Some(self.honest.sign_release(path, &other_tp, &body).unwrap()),
            Forgery::OtherBody => {
                // A genuine release (to this guest's key) of another value, its JWE
                // then replaced by the host's.
                let genuine =
                    serde_json::to_vec(&jwe::encrypt(&tee_key, b"the real key").unwrap()).unwrap();
                Some(self.honest.sign_release(path, &tp, &genuine).unwrap())
            }
        };
        match sig {
            Some(s) => ok(&[(token::RELEASE_SIGNATURE_HEADER, &s)], &body),
            None => ok(&[], &body),
        }
    }
}

fn ok(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Transport for FakeKbs {
    fn open(&mut self) -> Result<(), TransportError> {
        self.request.clear();
        self.response.clear();
        self.at = 0;
        Ok(())
    }
    fn write_all(&mut self, data: &[u8]) -> Result<(), TransportError> {
        self.request.extend_from_slice(data);
        Ok(())
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        if self.response.is_empty() {
            let req = std::mem::take(&mut self.request);
            let end = find(&req, b"\r\n\r\n").expect("a complete request head") + 4;
            let head = String::from_utf8(req[..end].to_vec()).unwrap();
            let line = head.lines().next().unwrap().to_owned();
            self.seen.lock().unwrap().push(line.clone());
            self.response = self.answer(&line, &req[end..]);
        }
        let n = buf.len().min(self.response.len() - self.at);
        buf[..n].copy_from_slice(&self.response[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
    fn close(&mut self) {}
}

/// Evidence of anything: the fake KBS accepts it all.
struct AnyEvidence;

impl EvidenceProvider for AnyEvidence {
    fn tee(&self) -> Tee {
        Tee::Snp
    }
    fn evidence(&mut self, _report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        Evidence::snp(&[0u8; 1184], None)
    }
}

fn pinned(honest: &TokenSigner) -> KbsConfig {
    KbsConfig {
        verifier_key: Some(VerifierKey::from_sec1(honest.public_sec1()).unwrap()),
        ..Default::default()
    }
}

fn fetch(
    forgery: Forgery,
    config: KbsConfig,
    honest: Arc<TokenSigner>,
) -> (Result<Vec<u8>, KbsError>, Vec<String>) {
    let fake = FakeKbs::new(forgery, honest);
    let seen = fake.seen.clone();
    let mut c = KbsClient::new(fake, config);
    let r = c
        .fetch(
            &mut AnyEvidence,
            &mut OsEntropy,
            Curve::P256,
            &ResourcePath::parse(PATH).unwrap(),
        )
        .map(|s| s.expose().to_vec());
    let seen = seen.lock().unwrap().clone();
    (r, seen)
}

#[test]
fn the_fake_kbs_is_faithful_with_the_honest_key() {
    // Control: with the honest verifier's signatures the same fake releases, so every
    // refusal below is due to the pin, not to a broken fake.
    let honest = Arc::new(TokenSigner::generate());
    let (r, _) = fetch(Forgery::Honest, pinned(&honest), honest.clone());
    assert_eq!(r.unwrap(), HOST_KEY);
}

#[test]
fn a_fake_kbs_is_refused() {
    let honest = Arc::new(TokenSigner::generate());
    let cases = [
        (Forgery::Bare, PinError::MalformedToken),
        (Forgery::OwnKey, PinError::BadTokenSignature),
        (Forgery::NoSignature, PinError::MissingSignature),
        (Forgery::OtherKeySignature, PinError::BadSignature),
        (Forgery::OtherPath, PinError::BadSignature),
        (Forgery::OtherTeeKey, PinError::BadSignature),
        (Forgery::OtherBody, PinError::BadSignature),
    ];
    for (forgery, want) in cases {
        let (r, seen) = fetch(forgery, pinned(&honest), honest.clone());
        match r {
            Err(KbsError::UntrustedVerifier(e)) => assert_eq!(e, want, "{forgery:?}"),
            Err(e) => panic!("{forgery:?}: refused for another reason: {e:?}"),
            Ok(key) => panic!(
                "{forgery:?}: the client accepted the host's key ({} bytes)",
                key.len()
            ),
        }
        // Token forgeries are refused before the resource is even requested.
        let asked = seen.iter().any(|l| l.starts_with("GET /kbs/v0/resource/"));
        let token_forgery = matches!(forgery, Forgery::Bare | Forgery::OwnKey);
        assert_eq!(asked, !token_forgery, "{forgery:?}: {seen:?}");
    }
}

#[test]
fn an_unpinned_client_refuses_before_sending_anything() {
    let honest = Arc::new(TokenSigner::generate());
    let (r, seen) = fetch(Forgery::Bare, KbsConfig::default(), honest);
    assert!(matches!(r, Err(KbsError::NoPinnedVerifier)), "{r:?}");
    assert_eq!(r.unwrap_err().to_string(), "no pinned verifier: refusing");
    assert!(seen.is_empty(), "{seen:?}");
}
