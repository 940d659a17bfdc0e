//! Attestation result tokens: compact JWS (JWT) signed ES256 by the verifier's own
//! P-256 key, and the JWKS that publishes its public half.
//!
//! The key is generated on first start and stored sealed under the master key, so
//! every replica signs with the same key and a token issued by one replica is accepted
//! by another. Tokens are verified strictly: `alg` must be `ES256`, `kid` must be ours,
//! the signature must verify and `exp` must lie in the future.
//!
//! The service signs and verifies with `ring` (about 8x faster signing and 4x faster
//! verification than the RustCrypto `p256` crate on the per-attestation path); the key
//! is stored, published and parsed with `p256`, and [`verify_with`] (for relying
//! parties and tests) verifies with `p256`, so the two implementations check each other.
//!
//! # Tokens presented back to the verifier
//!
//! A guest presents its token to this verifier again to fetch a resource. The verifier
//! keeps the SHA-256 of every token it issues on the token's session ([`digest`], stored
//! in the transaction that records the attestation), so that check needs no signature
//! verification: the session named by the token's `jti` ([`unverified_session`]; read,
//! not trusted) must hold exactly this token's digest ([`digest_matches`]) and be
//! unexpired (its expiry is the token's `exp`). Only the byte-exact token issued for
//! that session passes (finding another would need a SHA-256 second preimage); any
//! altered header, claim or signature fails. Sessions attested before the digest was
//! kept fall back to [`TokenSigner::verify`]. Relying parties other than this verifier
//! verify the signature against the JWKS.
//!
//! # The verifier's identity and release signatures
//!
//! The same key is the verifier's identity towards guests. A guest learns the public
//! key from measured input (the kernel command line `cvm.verifier_key=<base64url of the
//! 65-byte uncompressed SEC1 point>`, see [`TokenSigner::identity`] and `cvm-verifier
//! identity`) and accepts a released resource only with a [`RELEASE_SIGNATURE_HEADER`]
//! that verifies under it: ES256 over [`release_message`], which binds the resource
//! path, the session's TEE key (its RFC 7638 thumbprint, [`jwk_thumbprint`]) and the
//! exact response body. A host that relays to a verifier of its own choosing cannot
//! produce that signature. The guest-side twin of [`release_message`] is
//! `guest_agent::pin::release_message`; a test checks the two byte for byte.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::OsRng;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// A token could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS with a JSON header and payload.
    #[error("the token is malformed")]
    Malformed,
    /// Wrong algorithm or key id.
    #[error("the token was not issued by this verifier")]
    WrongKey,
    /// The JOSE header `typ` is not the expected one (e.g. an audit checkpoint
    /// presented as a token).
    #[error("the signed object is not of the expected type")]
    WrongType,
    /// The signature does not verify.
    #[error("the token signature does not verify")]
    BadSignature,
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// The token is not the one issued for the session it names.
    #[error("the token is not the one issued for its session")]
    NotIssued,
    /// The stored signing key is invalid.
    #[error("the stored token signing key is invalid")]
    InvalidKey,
    /// The key type has no thumbprint here (AKP).
    #[error("the key type has no JWK thumbprint")]
    UnsupportedKey,
}

/// The domain-separation line that starts every [`release_message`].
pub const RELEASE_CONTEXT: &str = "cvm-kbs-release-v1";

/// The response header of a successful `GET /kbs/v0/resource/...` carrying the release
/// signature: base64url (no padding) of the 64-byte ES256 signature `r || s`.
pub const RELEASE_SIGNATURE_HEADER: &str = "cvm-release-signature";

/// The byte string a release signature covers:
/// `"cvm-kbs-release-v1\n" || path || "\n" || tee_thumbprint || "\n" || hex(SHA-256(body))`,
/// with `path` the resource path `repo/type/tag` and `tee_thumbprint` the RFC 7638
/// thumbprint of the session's TEE public key ([`jwk_thumbprint`]).
pub fn release_message(path: &str, tee_thumbprint: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(RELEASE_CONTEXT.len() + path.len() + tee_thumbprint.len() + 67);
    m.extend_from_slice(RELEASE_CONTEXT.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(path.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(tee_thumbprint.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(hex::encode(Sha256::digest(body)).as_bytes());
    m
}

/// The RFC 7638 JWK thumbprint of a TEE public key: base64url (no padding) of the
/// SHA-256 of the canonical JSON of its required members only (EC `crv`, `kty`, `x`,
/// `y`; RSA `e`, `kty`, `n`), so other members (`alg`, `kid`, ...) never change it.
pub fn jwk_thumbprint(jwk: &kbs_types::TeePubKey) -> Result<String, TokenError> {
    let s = |v: &str| serde_json::to_string(v).map_err(|_| TokenError::UnsupportedKey);
    let canonical = match jwk {
        kbs_types::TeePubKey::EC { crv, x, y, .. } => format!(
            "{{\"crv\":{},\"kty\":\"EC\",\"x\":{},\"y\":{}}}",
            s(crv)?,
            s(x)?,
            s(y)?
        ),
        kbs_types::TeePubKey::RSA { k_mod, k_exp, .. } => format!(
            "{{\"e\":{},\"kty\":\"RSA\",\"n\":{}}}",
            s(k_exp)?,
            s(k_mod)?
        ),
        kbs_types::TeePubKey::AKP { .. } => return Err(TokenError::UnsupportedKey),
    };
    Ok(B64URL.encode(Sha256::digest(canonical.as_bytes())))
}

/// Verifies a release signature (the header value) by `key` over [`release_message`]
/// (for relying parties and tests; guests use `guest_agent::pin`).
pub fn verify_release(
    key: &VerifyingKey,
    path: &str,
    tee_thumbprint: &str,
    body: &[u8],
    signature_b64: &str,
) -> Result<(), TokenError> {
    let sig = B64URL
        .decode(signature_b64)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    key.verify(&release_message(path, tee_thumbprint, body), &sig)
        .map_err(|_| TokenError::BadSignature)
}

/// The verifier's public identity: what a guest pins.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// base64url (no padding) of the 65-byte uncompressed SEC1 P-256 point.
    pub verifier_key: String,
    /// The kernel command line fragment `cvm.verifier_key=<verifier_key>`.
    pub cmdline: String,
    /// The RFC 7638 thumbprint of the public key as an EC JWK.
    pub jwk_thumbprint: String,
    /// The key id in the JWKS and token headers.
    pub kid: String,
}

/// The verifier's token signing key.
pub struct TokenSigner {
    key: SigningKey,
    /// The same key for `ring`, which signs.
    ring_key: EcdsaKeyPair,
    /// The public key, uncompressed SEC1, for `ring`'s verification.
    public_sec1: Vec<u8>,
    rng: SystemRandom,
    kid: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSigner(kid {})", self.kid)
    }
}

impl TokenSigner {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_key(SigningKey::random(&mut OsRng))
    }

    /// The key from its 32-byte scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        SigningKey::from_slice(bytes)
            .map_err(|_| TokenError::InvalidKey)
            .and_then(Self::try_from_key)
    }

    fn from_key(key: SigningKey) -> Self {
        // A nonzero scalar below the order with its own public key: ring accepts it.
        Self::try_from_key(key).expect("ring accepts a valid P-256 key pair")
    }

    fn try_from_key(key: SigningKey) -> Result<Self, TokenError> {
        let point = key.verifying_key().to_encoded_point(false);
        let digest = Sha256::digest(point.as_bytes());
        let kid = B64URL.encode(digest.get(..12).unwrap_or_default());
        let rng = SystemRandom::new();
        let scalar = Zeroizing::new(key.to_bytes());
        let ring_key = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &scalar[..],
            point.as_bytes(),
            &rng,
        )
        .map_err(|_| TokenError::InvalidKey)?;
        Ok(Self {
            key,
            ring_key,
            public_sec1: point.as_bytes().to_vec(),
            rng,
            kid,
        })
    }

    /// The 32-byte scalar (to seal it for storage).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key.to_bytes().to_vec())
    }

    /// The key id published in the JWKS and every token header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, 65-byte uncompressed SEC1.
    pub fn public_sec1(&self) -> &[u8] {
        &self.public_sec1
    }

    /// What a guest pins: the public key and its command line fragment.
    pub fn identity(&self) -> Identity {
        let verifier_key = B64URL.encode(&self.public_sec1);
        let jwk = self.public_jwk();
        let field = |k: &str| jwk[k].as_str().unwrap_or_default().to_owned();
        let ec = kbs_types::TeePubKey::EC {
            crv: field("crv"),
            alg: field("alg"),
            x: field("x"),
            y: field("y"),
        };
        Identity {
            cmdline: format!("cvm.verifier_key={verifier_key}"),
            verifier_key,
            // An EC key always has a thumbprint.
            jwk_thumbprint: jwk_thumbprint(&ec).unwrap_or_default(),
            kid: self.kid.clone(),
        }
    }

    /// Signs a release ([`release_message`]); returns the header value.
    pub fn sign_release(
        &self,
        path: &str,
        tee_thumbprint: &str,
        body: &[u8],
    ) -> Result<String, TokenError> {
        let sig = self
            .ring_key
            .sign(&self.rng, &release_message(path, tee_thumbprint, body))
            .map_err(|_| TokenError::InvalidKey)?;
        Ok(B64URL.encode(sig.as_ref()))
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> Value {
        let p = self.key.verifying_key().to_encoded_point(false);
        json!({
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": self.kid,
            "x": B64URL.encode(p.x().map(|x| &x[..]).unwrap_or_default()),
            "y": B64URL.encode(p.y().map(|y| &y[..]).unwrap_or_default()),
        })
    }

    /// The JWKS document.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk()] })
    }

    /// Signs `claims` as a token: a compact JWS with the JOSE header `typ` [`TOKEN_TYP`].
    pub fn sign(&self, claims: &Value) -> Result<String, TokenError> {
        self.sign_typed(TOKEN_TYP, claims)
    }

    /// Signs `claims` as a compact JWS with the JOSE header `typ` `typ` (anything but
    /// [`TOKEN_TYP`] is never accepted by [`TokenSigner::verify`]).
    pub fn sign_typed(&self, typ: &str, claims: &Value) -> Result<String, TokenError> {
        let header = json!({"alg": "ES256", "typ": typ, "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        // ES256 (RFC 7518 3.4): r || s, 32 bytes each: ring's "fixed" encoding.
        let sig = self
            .ring_key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| TokenError::InvalidKey)?;
        Ok(format!("{signing_input}.{}", B64URL.encode(sig.as_ref())))
    }

    /// Verifies a token issued by this key (JOSE header `typ` [`TOKEN_TYP`], not an
    /// audit checkpoint) and not expired at `now` (Unix seconds); returns its claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Value, TokenError> {
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public_sec1);
        verify_token(&self.kid, token, Expect::Token(now), |input, sig| {
            key.verify(input, sig).is_ok()
        })
    }

    /// Verifies a JWS of this key whose JOSE header `typ` is `typ` (no `exp` needed);
    /// returns its claims. For signed objects that are not tokens (audit checkpoints).
    pub fn verify_typed(&self, typ: &str, jws: &str) -> Result<Value, TokenError> {
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public_sec1);
        verify_token(&self.kid, jws, Expect::Typed(typ), |input, sig| {
            key.verify(input, sig).is_ok()
        })
    }

    /// Verifies an audit checkpoint written before checkpoints had their own `typ`
    /// (header `JWT`, claim `typ` `audit-checkpoint`, `exp` in 9999); returns its claims.
    pub fn verify_legacy_checkpoint(&self, jws: &str, now: i64) -> Result<Value, TokenError> {
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public_sec1);
        verify_token(
            &self.kid,
            jws,
            Expect::LegacyCheckpoint(now),
            |input, sig| key.verify(input, sig).is_ok(),
        )
    }
}

/// Verifies a compact ES256 JWS against `key`/`kid` at `now`; returns the claims.
pub fn verify_with(
    key: &VerifyingKey,
    kid: &str,
    token: &str,
    now: i64,
) -> Result<Value, TokenError> {
    verify_token(kid, token, Expect::Token(now), |input, sig| {
        Signature::from_slice(sig).is_ok_and(|sig| key.verify(input, &sig).is_ok())
    })
}

/// The JOSE header `typ` of attestation tokens.
pub const TOKEN_TYP: &str = "JWT";

/// The claim `typ` of audit checkpoints (legacy ones carried the token header `typ`).
const CHECKPOINT_CLAIM_TYP: &str = "audit-checkpoint";

/// What [`verify_token`] checks beyond the signature.
#[derive(Debug, Clone, Copy)]
enum Expect<'a> {
    /// A token: header `typ` [`TOKEN_TYP`], `exp` after this time, not a checkpoint.
    Token(i64),
    /// Header `typ` as given; no `exp` required.
    Typed(&'a str),
    /// A legacy checkpoint: header `typ` [`TOKEN_TYP`], claim `typ` `audit-checkpoint`,
    /// `exp` after this time.
    LegacyCheckpoint(i64),
}

/// The checks of a token; `signature_ok(signing input, signature bytes)` checks the
/// ES256 signature.
fn verify_token(
    kid: &str,
    token: &str,
    expect: Expect<'_>,
    signature_ok: impl FnOnce(&[u8], &[u8]) -> bool,
) -> Result<Value, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: Value = B64URL
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256")
        || header.get("kid").and_then(Value::as_str) != Some(kid)
    {
        return Err(TokenError::WrongKey);
    }
    let typ = header.get("typ").and_then(Value::as_str);
    let want_typ = match expect {
        Expect::Typed(t) => t,
        Expect::Token(_) | Expect::LegacyCheckpoint(_) => TOKEN_TYP,
    };
    if typ != Some(want_typ) {
        return Err(TokenError::WrongType);
    }
    let sig = B64URL.decode(s).map_err(|_| TokenError::Malformed)?;
    if sig.len() != 64 {
        return Err(TokenError::Malformed);
    }
    let input_len = h.len() + 1 + p.len();
    let input = token.get(..input_len).ok_or(TokenError::Malformed)?;
    if !signature_ok(input.as_bytes(), &sig) {
        return Err(TokenError::BadSignature);
    }
    let claims: Value = B64URL
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    let checkpoint = claims.get("typ").and_then(Value::as_str) == Some(CHECKPOINT_CLAIM_TYP);
    let now = match expect {
        Expect::Typed(_) => return Ok(claims),
        Expect::Token(_) if checkpoint => return Err(TokenError::WrongType),
        Expect::LegacyCheckpoint(_) if !checkpoint => return Err(TokenError::WrongType),
        Expect::Token(now) | Expect::LegacyCheckpoint(now) => now,
    };
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(TokenError::Malformed)?;
    if exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// The digest kept for an issued token: SHA-256 of its exact text, hex.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token`'s [`digest`] is `stored` (compared in constant time).
pub fn digest_matches(token: &str, stored: &str) -> bool {
    let ours = digest(token);
    ours.len() == stored.len()
        && ours
            .bytes()
            .zip(stored.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The session (`jti`) a compact token names, read WITHOUT verifying anything: the
/// caller must then check the token against that session ([`digest_matches`]) or
/// verify it ([`TokenSigner::verify`]).
pub fn unverified_session(token: &str) -> Result<String, TokenError> {
    #[derive(serde::Deserialize)]
    struct Jti {
        jti: String,
    }
    let mut parts = token.split('.');
    let (Some(_), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    B64URL
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice::<Jti>(&b).ok())
        .map(|j| j.jti)
        .ok_or(TokenError::Malformed)
}

/// Parses a JWKS entry published by [`TokenSigner::jwks`] (for relying parties and tests).
pub fn verifying_key_from_jwk(jwk: &Value) -> Option<(VerifyingKey, String)> {
    let x = B64URL.decode(jwk.get("x")?.as_str()?).ok()?;
    let y = B64URL.decode(jwk.get("y")?.as_str()?).ok()?;
    if x.len() != 32 || y.len() != 32 || jwk.get("crv")?.as_str()? != "P-256" {
        return None;
    }
    let mut sec1 = vec![4u8];
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    let key = VerifyingKey::from_sec1_bytes(&sec1).ok()?;
    Some((key, jwk.get("kid")?.as_str()?.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;

    #[test]
    fn sign_verify_expiry_and_tamper() {
        let s = TokenSigner::generate();
        let t = s.sign(&json!({"exp": 100, "sub": "x"})).unwrap();
        assert_eq!(s.verify(&t, 99).unwrap()["sub"], "x");
        assert!(matches!(s.verify(&t, 100), Err(TokenError::Expired)));
        let other = TokenSigner::generate();
        assert!(matches!(other.verify(&t, 0), Err(TokenError::WrongKey)));
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = B64URL.encode(json!({"exp": 100, "sub": "y"}).to_string());
        parts[1] = &forged;
        assert!(matches!(
            s.verify(&parts.join("."), 0),
            Err(TokenError::BadSignature)
        ));
        let (vk, kid) = verifying_key_from_jwk(&s.jwks()["keys"][0]).unwrap();
        assert!(verify_with(&vk, &kid, &t, 0).is_ok());
        let again = TokenSigner::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(again.kid(), s.kid());
        assert!(again.verify(&t, 0).is_ok());
    }

    /// Only the byte-exact token matches its digest; the session is read from `jti`.
    #[test]
    fn digest_binding() {
        let s = TokenSigner::generate();
        let t = s.sign(&json!({"exp": 100, "jti": "sess-1"})).unwrap();
        let d = digest(&t);
        assert!(digest_matches(&t, &d));
        assert_eq!(unverified_session(&t).unwrap(), "sess-1");
        // Another token for the same session, and any one-character change, fail.
        let other = s.sign(&json!({"exp": 100, "jti": "sess-1"})).unwrap();
        assert_ne!(other, t);
        assert!(!digest_matches(&other, &d));
        for i in [0, t.len() / 2, t.len() - 1] {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            assert!(!digest_matches(std::str::from_utf8(&b).unwrap(), &d));
        }
        assert!(!digest_matches(&t, &d[..63]));
        assert!(!digest_matches(&t, ""));
        assert!(matches!(
            unverified_session("a.b"),
            Err(TokenError::Malformed)
        ));
        assert!(matches!(
            unverified_session(&format!("x.{}.y", B64URL.encode("{}"))),
            Err(TokenError::Malformed)
        ));
    }

    /// The RFC 7638 example (section 3.1) and member independence.
    #[test]
    fn thumbprints() {
        let rsa = kbs_types::TeePubKey::RSA {
            alg: "RS256".into(),
            k_mod: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into(),
            k_exp: "AQAB".into(),
        };
        assert_eq!(
            jwk_thumbprint(&rsa).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        let s = TokenSigner::generate();
        let id = s.identity();
        let ec = |alg: &str| {
            let j = s.public_jwk();
            kbs_types::TeePubKey::EC {
                crv: "P-256".into(),
                alg: alg.into(),
                x: j["x"].as_str().unwrap().into(),
                y: j["y"].as_str().unwrap().into(),
            }
        };
        assert_eq!(jwk_thumbprint(&ec("ES256")).unwrap(), id.jwk_thumbprint);
        assert_eq!(
            jwk_thumbprint(&ec("ECDH-ES+A256KW")).unwrap(),
            id.jwk_thumbprint
        );
        assert_eq!(B64URL.decode(&id.verifier_key).unwrap(), s.public_sec1());
        assert_eq!(id.cmdline, format!("cvm.verifier_key={}", id.verifier_key));
    }

    /// A release signature verifies only for its key, path, TEE key and body.
    #[test]
    fn release_signatures() {
        let s = TokenSigner::generate();
        let m = release_message("a/b/c", "tp", b"{}");
        assert_eq!(
            m,
            format!(
                "cvm-kbs-release-v1\na/b/c\ntp\n{}",
                hex::encode(Sha256::digest(b"{}"))
            )
            .into_bytes()
        );
        let sig = s.sign_release("a/b/c", "tp", b"{}").unwrap();
        let vk = s.key.verifying_key();
        assert!(verify_release(vk, "a/b/c", "tp", b"{}", &sig).is_ok());
        for (path, tp, body) in [
            ("a/b/d", "tp", &b"{}"[..]),
            ("a/b/c", "tq", b"{}"),
            ("a/b/c", "tp", b"{ }"),
        ] {
            assert!(matches!(
                verify_release(vk, path, tp, body, &sig),
                Err(TokenError::BadSignature)
            ));
        }
        let other = TokenSigner::generate();
        assert!(verify_release(other.key.verifying_key(), "a/b/c", "tp", b"{}", &sig).is_err());
        assert!(matches!(
            verify_release(vk, "a/b/c", "tp", b"{}", "!!"),
            Err(TokenError::Malformed)
        ));
    }

    /// The ring path refuses a signature by another key over our header and claims, and
    /// a signature of the wrong length; the p256 path accepts what ring signs.
    #[test]
    fn ring_and_p256_agree() {
        let s = TokenSigner::generate();
        let t = s.sign(&json!({"exp": 100})).unwrap();
        let (input, _) = t.rsplit_once('.').unwrap();
        let other = TokenSigner::generate();
        let sig = other.ring_key.sign(&other.rng, input.as_bytes()).unwrap();
        let forged = format!("{input}.{}", B64URL.encode(sig.as_ref()));
        assert!(matches!(
            s.verify(&forged, 0),
            Err(TokenError::BadSignature)
        ));
        assert!(matches!(
            verify_with(s.key.verifying_key(), s.kid(), &forged, 0),
            Err(TokenError::BadSignature)
        ));
        let short = format!("{input}.{}", B64URL.encode([1u8; 63]));
        assert!(matches!(s.verify(&short, 0), Err(TokenError::Malformed)));
        // RustCrypto signature, ring verification.
        let p256_sig: Signature = s.key.sign(input.as_bytes());
        let by_p256 = format!("{input}.{}", B64URL.encode(p256_sig.to_bytes()));
        assert!(s.verify(&by_p256, 0).is_ok());
    }

    /// Red-team round 2, finding 11: an audit checkpoint (signed with the token key)
    /// must not verify as a token, whether new (own `typ`, no `exp`) or legacy
    /// (header `JWT`, `exp` in 9999).
    #[test]
    fn checkpoints_are_not_tokens() {
        let s = TokenSigner::generate();
        let cp = s
            .sign_typed(
                "cvm-audit-checkpoint+jwt",
                &json!({"iss": "cvm-verifier", "typ": "audit-checkpoint", "seq": 1}),
            )
            .unwrap();
        assert!(matches!(s.verify(&cp, 0), Err(TokenError::WrongType)));
        assert_eq!(
            s.verify_typed("cvm-audit-checkpoint+jwt", &cp).unwrap()["seq"],
            1
        );
        let legacy = s
            .sign(&json!({"typ": "audit-checkpoint", "seq": 2, "exp": 253_402_300_799i64}))
            .unwrap();
        assert!(matches!(s.verify(&legacy, 0), Err(TokenError::WrongType)));
        assert_eq!(s.verify_legacy_checkpoint(&legacy, 0).unwrap()["seq"], 2);
        let token = s.sign(&json!({"session": "x", "exp": 10})).unwrap();
        assert!(s.verify_typed("cvm-audit-checkpoint+jwt", &token).is_err());
        assert!(s.verify_legacy_checkpoint(&token, 0).is_err());
        assert!(s.verify(&token, 0).is_ok());
    }
}
