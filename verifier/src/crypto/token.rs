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

    /// Signs `claims` as a compact JWS.
    pub fn sign(&self, claims: &Value) -> Result<String, TokenError> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
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

    /// Verifies a token issued by this key and not expired at `now` (Unix seconds);
    /// returns its claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Value, TokenError> {
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public_sec1);
        verify_token(&self.kid, token, now, |input, sig| {
            key.verify(input, sig).is_ok()
        })
    }
}

/// Verifies a compact ES256 JWS against `key`/`kid` at `now`; returns the claims.
pub fn verify_with(
    key: &VerifyingKey,
    kid: &str,
    token: &str,
    now: i64,
) -> Result<Value, TokenError> {
    verify_token(kid, token, now, |input, sig| {
        Signature::from_slice(sig).is_ok_and(|sig| key.verify(input, &sig).is_ok())
    })
}

/// The checks of a token; `signature_ok(signing input, signature bytes)` checks the
/// ES256 signature.
fn verify_token(
    kid: &str,
    token: &str,
    now: i64,
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
}
