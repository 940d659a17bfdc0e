//! The KBS protocol 0.4.0 client flow over a [`Transport`]:
//!
//! 1. `POST /kbs/v0/auth` `{"version":"0.4.0","tee":<tee>,"extra-params":{…}}` →
//!    `{"nonce":…}` and the `kbs-session-id` cookie ([`KbsClient::auth`]);
//! 2. a fresh [`EphemeralKey`]; REPORT_DATA = SHA-384(JCS(runtime-data)) ‖ 0¹⁶
//!    ([`crate::binding`]); evidence from the [`EvidenceProvider`];
//!    `POST /kbs/v0/attest` with the cookie → `{"token":…}` ([`KbsClient::attest`]);
//! 3. `GET /kbs/v0/resource/<repo>/<type>/<tag>` with `Authorization: Bearer <token>`
//!    and the cookie → a JWE, decrypted with the ephemeral key ([`KbsClient::resource`]).
//!
//! The client trusts exactly one verifier, [`KbsConfig::verifier_key`] ([`crate::pin`]):
//! without it nothing is sent; the token must be signed by it for this attempt's key,
//! and the release must carry its signature (`Cvm-Release-Signature`) over the path,
//! the key and the body before the JWE is decrypted. A failure of these checks is
//! [`KbsError::UntrustedVerifier`]: nothing is returned.
//!
//! The steps are type-states: [`Challenge`] (from `auth`) is consumed by `attest`, which
//! yields [`Attested`], which `resource` needs. Refusals come back as RFC 7807 problem
//! documents; their `detail` is kept (sanitized: printable ASCII, bounded length).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;

use crate::binding;
use crate::evidence::{EvidenceError, EvidenceProvider, Tee};
use crate::http::{self, HttpError, Limits, Method, Request, Response, Transport};
use crate::jwe::{Curve, EphemeralKey, JweError, Secret};
use crate::pin::{self, PinError, VerifierKey};
use crate::rng::{Entropy, EntropyError};

/// The protocol version we speak.
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// The session cookie.
pub const SESSION_COOKIE: &str = "kbs-session-id";

/// Errors of the KBS flow.
#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    /// The HTTP exchange failed.
    #[error("the HTTP exchange failed")]
    Http(#[source] HttpError),
    /// The KBS refused the request.
    #[error("the KBS answered {status}: {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's `detail` (sanitized).
        detail: String,
    },
    /// The answer does not follow the protocol.
    #[error("unexpected answer from the KBS: {0}")]
    Protocol(&'static str),
    /// Evidence could not be produced.
    #[error("cannot produce evidence")]
    Evidence(#[source] EvidenceError),
    /// The released resource does not decrypt.
    #[error("cannot decrypt the released resource")]
    Jwe(#[source] JweError),
    /// No randomness for the ephemeral key.
    #[error("cannot generate the ephemeral key")]
    Entropy(#[source] EntropyError),
    /// A parameter is invalid.
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
    /// No verifier key is pinned: the client refuses to start.
    #[error("no pinned verifier: refusing")]
    NoPinnedVerifier,
    /// The answer is not proven to come from the pinned verifier; nothing is released.
    #[error("the KBS is not the pinned verifier")]
    UntrustedVerifier(#[source] PinError),
}

/// A resource path `repo/type/tag` (segments of 1–128 `A-Za-z0-9._-`, as the verifier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath(String);

fn valid_segment(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && s != "."
        && s != ".."
}

impl ResourcePath {
    /// Validates `repo/type/tag`.
    pub fn parse(s: &str) -> Result<Self, KbsError> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() != 3 || !parts.iter().all(|p| valid_segment(p)) {
            return Err(KbsError::InvalidParameter(
                "a resource path is repo/type/tag, each 1-128 of A-Za-z0-9._-",
            ));
        }
        Ok(Self(s.into()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct KbsConfig {
    /// The `Host` header (the relay ignores it; the verifier does not route on it).
    pub host: String,
    /// `extra-params.workload`, naming the workload whose policy applies.
    pub workload: Option<String>,
    /// Response limits.
    pub limits: Limits,
    /// The pinned verifier key (from measured input). Required: `None` refuses.
    pub verifier_key: Option<VerifierKey>,
}

impl Default for KbsConfig {
    fn default() -> Self {
        Self {
            host: "kbs".into(),
            workload: None,
            limits: Limits::default(),
            verifier_key: None,
        }
    }
}

/// An open session: the challenge to bind.
#[derive(Debug)]
pub struct Challenge {
    tee: Tee,
    session: String,
    nonce: String,
}

impl Challenge {
    /// The challenge nonce.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }
}

/// An attested session. `Debug` redacts the token (a bearer credential).
pub struct Attested {
    session: String,
    token: String,
    /// The thumbprint of the key the token is bound to.
    tee_thumbprint: String,
}

impl core::fmt::Debug for Attested {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Attested")
            .field("session", &self.session)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Attested {
    /// The attestation token (a JWT).
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// A KBS client over a transport.
#[derive(Debug)]
pub struct KbsClient<T: Transport> {
    transport: T,
    config: KbsConfig,
}

#[derive(Deserialize)]
struct ChallengeJson {
    nonce: String,
}

#[derive(Deserialize)]
struct TokenJson {
    token: String,
}

#[derive(Deserialize)]
struct ProblemJson {
    #[serde(default)]
    detail: Option<String>,
}

/// Printable ASCII only, at most 200 characters (server text reaches the console).
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}

fn cookie_value_ok(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl<T: Transport> KbsClient<T> {
    /// A client.
    pub fn new(transport: T, config: KbsConfig) -> Self {
        Self { transport, config }
    }

    /// The transport (for its owner to reuse).
    pub fn into_transport(self) -> T {
        self.transport
    }

    fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, KbsError> {
        let req = Request {
            method,
            path,
            host: &self.config.host,
            headers,
            body,
        };
        let resp = http::exchange(&mut self.transport, &req, &self.config.limits)
            .map_err(KbsError::Http)?;
        if resp.status != 200 {
            let detail = serde_json::from_slice::<ProblemJson>(&resp.body)
                .ok()
                .and_then(|p| p.detail)
                .map(|d| sanitize(&d))
                .unwrap_or_default();
            return Err(KbsError::Refused {
                status: resp.status,
                detail,
            });
        }
        Ok(resp)
    }

    fn pinned(&self) -> Result<&VerifierKey, KbsError> {
        self.config
            .verifier_key
            .as_ref()
            .ok_or(KbsError::NoPinnedVerifier)
    }

    /// `POST /kbs/v0/auth`. Refuses without a pinned verifier.
    pub fn auth(&mut self, tee: Tee) -> Result<Challenge, KbsError> {
        self.pinned()?;
        let mut body = String::from("{\"version\":\"0.4.0\",\"tee\":\"");
        body.push_str(tee.as_str());
        body.push_str("\",\"extra-params\":{");
        if let Some(w) = &self.config.workload {
            body.push_str("\"workload\":");
            binding::write_json_string(&mut body, w);
        }
        body.push_str("}}");
        let resp = self.send(Method::Post, "/kbs/v0/auth", &[], body.as_bytes())?;
        let session = resp
            .header_values("set-cookie")
            .filter_map(|c| c.split(';').next())
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == SESSION_COOKIE)
            .map(|(_, v)| String::from(v.trim()))
            .ok_or(KbsError::Protocol("no kbs-session-id cookie"))?;
        if !cookie_value_ok(&session) {
            return Err(KbsError::Protocol("the session cookie is malformed"));
        }
        let ch: ChallengeJson = serde_json::from_slice(&resp.body)
            .map_err(|_| KbsError::Protocol("the challenge is malformed"))?;
        if ch.nonce.is_empty() || ch.nonce.len() > 1024 {
            return Err(KbsError::Protocol("the nonce is empty or too long"));
        }
        Ok(Challenge {
            tee,
            session,
            nonce: ch.nonce,
        })
    }

    /// The `attest` request body for a challenge (exposed so tests can alter it).
    pub fn attestation_body(
        challenge: &Challenge,
        key: &EphemeralKey,
        provider: &mut dyn EvidenceProvider,
    ) -> Result<Vec<u8>, KbsError> {
        if provider.tee() != challenge.tee {
            return Err(KbsError::InvalidParameter(
                "the evidence provider attests another TEE than the session",
            ));
        }
        let jwk = key.public_jwk();
        let runtime_data = binding::runtime_data_json(&challenge.nonce, &jwk);
        // The request's additional_evidence is "" (below), and is bound as Trustee does.
        let report_data = binding::report_data(&binding::primary_runtime_data_json(
            &challenge.nonce,
            &jwk,
            "",
        ));
        let evidence = provider
            .evidence(&report_data)
            .map_err(KbsError::Evidence)?;
        if evidence.tee() != challenge.tee {
            return Err(KbsError::InvalidParameter(
                "the evidence is for another TEE than the session",
            ));
        }
        let body = format!(
            "{{\"runtime-data\":{runtime_data},\"tee-evidence\":{{\"primary_evidence\":{},\"additional_evidence\":\"\"}}}}",
            evidence.json()
        );
        Ok(body.into_bytes())
    }

    /// `POST /kbs/v0/attest` with a prepared body for `key`; the token must be signed
    /// by the pinned verifier and bound to `key`.
    pub fn attest_raw(
        &mut self,
        challenge: Challenge,
        key: &EphemeralKey,
        body: &[u8],
    ) -> Result<Attested, KbsError> {
        self.pinned()?;
        let cookie = format!("{SESSION_COOKIE}={}", challenge.session);
        let resp = self.send(Method::Post, "/kbs/v0/attest", &[("Cookie", &cookie)], body)?;
        let t: TokenJson = serde_json::from_slice(&resp.body)
            .map_err(|_| KbsError::Protocol("the attestation answer is malformed"))?;
        let token_ok = !t.token.is_empty()
            && t.token.len() <= 16 << 10
            && t.token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !token_ok {
            return Err(KbsError::Protocol("the token is not a JWT"));
        }
        let tee_thumbprint = pin::jwk_thumbprint(&key.public_jwk());
        pin::verify_token(self.pinned()?, &t.token, &tee_thumbprint)
            .map_err(KbsError::UntrustedVerifier)?;
        Ok(Attested {
            session: challenge.session,
            token: t.token,
            tee_thumbprint,
        })
    }

    /// `POST /kbs/v0/attest` with evidence for `key`.
    pub fn attest(
        &mut self,
        challenge: Challenge,
        key: &EphemeralKey,
        provider: &mut dyn EvidenceProvider,
    ) -> Result<Attested, KbsError> {
        let body = Self::attestation_body(&challenge, key, provider)?;
        self.attest_raw(challenge, key, &body)
    }

    /// `GET /kbs/v0/resource/<path>` → the decrypted resource, only if the release
    /// signature verifies under the pinned key for `path`, `key` and the body.
    pub fn resource(
        &mut self,
        attested: &Attested,
        key: &EphemeralKey,
        path: &ResourcePath,
    ) -> Result<Secret, KbsError> {
        let target = format!("/kbs/v0/resource/{}", path.as_str());
        let bearer = format!("Bearer {}", attested.token);
        let cookie = format!("{SESSION_COOKIE}={}", attested.session);
        let resp = self.send(
            Method::Get,
            &target,
            &[("Authorization", &bearer), ("Cookie", &cookie)],
            b"",
        )?;
        let tee_thumbprint = pin::jwk_thumbprint(&key.public_jwk());
        if tee_thumbprint != attested.tee_thumbprint {
            return Err(KbsError::InvalidParameter(
                "the key is not the one the session was attested with",
            ));
        }
        pin::verify_release(
            self.pinned()?,
            path.as_str(),
            &tee_thumbprint,
            &resp.body,
            resp.header(pin::RELEASE_SIGNATURE_HEADER),
        )
        .map_err(KbsError::UntrustedVerifier)?;
        key.decrypt(&resp.body).map_err(KbsError::Jwe)
    }

    /// The whole flow: auth, a fresh key, attest, fetch and decrypt `path`.
    pub fn fetch(
        &mut self,
        provider: &mut dyn EvidenceProvider,
        rng: &mut dyn Entropy,
        curve: Curve,
        path: &ResourcePath,
    ) -> Result<Secret, KbsError> {
        let challenge = self.auth(provider.tee())?;
        let key = EphemeralKey::generate(curve, rng).map_err(KbsError::Entropy)?;
        let attested = self.attest(challenge, &key, provider)?;
        self.resource(&attested, &key, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_paths() {
        assert!(ResourcePath::parse("default/key/disk").is_ok());
        for bad in ["a/b", "a/b/c/d", "a//c", "a/b/c d", "a/../c", "a/b/c\r\n"] {
            assert!(ResourcePath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sanitizes_details() {
        assert_eq!(sanitize("a\r\n\x1b[31mb"), "a[31mb");
    }
}
