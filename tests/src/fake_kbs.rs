//! A fake KBS: what a compromised host runs in place of the verifier. It speaks the
//! protocol over real HTTP on 127.0.0.1, accepts any evidence, and releases a key the
//! host chose, encrypted (real ECDH-ES+A256KW / A256GCM, the verifier's own JWE code)
//! to the TEE public key the guest sent in its attest body — the attack of issue 14,
//! finding 2. ECDH-ES lets anyone encrypt to the guest, so only the guest's check of the
//! pinned verifier's signature stops it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use verifier::crypto::jwe::{self, TeeKey};
use verifier::crypto::token::{self, TokenSigner};

/// How the fake KBS dresses its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// The attack: token `a.b.c`, no release signature.
    Bare,
    /// Everything signed, consistently, by a key of the host's own: a plausible ES256
    /// token for the guest's key and a release signature over the right message.
    OwnKey,
}

/// A running fake KBS (its thread ends with the test process).
#[derive(Debug)]
pub struct FakeKbs {
    /// `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    /// Requests seen (request lines).
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl FakeKbs {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether a resource request (the release) was served.
    pub fn released(&self) -> bool {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("GET /kbs/v0/resource/"))
    }
}

/// Starts a fake KBS that releases `key` (the host's own disk key) to any guest.
pub fn start(key: Vec<u8>, forgery: Forgery) -> FakeKbs {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake KBS");
    let addr = listener.local_addr().unwrap();
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = requests.clone();
    std::thread::spawn(move || {
        let signer = TokenSigner::generate();
        let mut tee_pubkey: Option<Value> = None;
        // Bounded: a guest flow is three requests; a few retries at most.
        for conn in listener.incoming().take(64) {
            let Ok(mut s) = conn else { break };
            let Some((head, body)) = crate::read_request(&mut s) else {
                continue;
            };
            let line = head.lines().next().unwrap_or_default().to_owned();
            seen.lock().unwrap().push(line.clone());
            let resp = if line.starts_with("POST /kbs/v0/auth") {
                response(
                    &[("Set-Cookie", "kbs-session-id=fakesession; Path=/kbs")],
                    json!({"nonce": "AAAAAAAAAAAAAAAAAAAAAA"})
                        .to_string()
                        .as_bytes(),
                )
            } else if line.starts_with("POST /kbs/v0/attest") {
                let req: Value = serde_json::from_slice(&body).unwrap_or_default();
                tee_pubkey = Some(req["runtime-data"]["tee-pubkey"].clone());
                let tok = match forgery {
                    Forgery::Bare => "a.b.c".to_owned(),
                    Forgery::OwnKey => signer
                        .sign(&json!({"exp": 4_000_000_000u64, "jti": "fakesession",
                            "tee-pubkey": tee_pubkey}))
                        .unwrap(),
                };
                response(&[], json!({ "token": tok }).to_string().as_bytes())
            } else if let Some(path) = line
                .strip_prefix("GET /kbs/v0/resource/")
                .and_then(|r| r.split(' ').next())
            {
                match tee_pubkey
                    .as_ref()
                    .and_then(|k| serde_json::from_value::<kbs_types::TeePubKey>(k.clone()).ok())
                {
                    Some(jwk) => {
                        let tee_key = TeeKey::from_jwk(&jwk).expect("the guest's key");
                        let body =
                            serde_json::to_vec(&jwe::encrypt(&tee_key, &key).unwrap()).unwrap();
                        let sig = signer
                            .sign_release(path, &token::jwk_thumbprint(&jwk).unwrap(), &body)
                            .unwrap();
                        match forgery {
                            Forgery::Bare => response(&[], &body),
                            Forgery::OwnKey => {
                                response(&[(token::RELEASE_SIGNATURE_HEADER, &sig)], &body)
                            }
                        }
                    }
                    None => b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_vec(),
                }
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()
            };
            let _ = s.write_all(&resp);
            let _ = s.flush();
            // Drain until the peer closes (one request per connection).
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = [0u8; 256];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    FakeKbs { addr, requests }
}

fn response(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = String::from("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}
