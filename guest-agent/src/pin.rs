//! The pinned verifier: the guest trusts exactly one verifier, named by its ES256
//! public key in measured input, and accepts only what that key signed.
//!
//! # Where the pin comes from
//!
//! The kernel command line parameter `cvm.verifier_key=<base64url, no padding, of the
//! 65-byte uncompressed SEC1 P-256 point>` ([`VerifierKey::parse`]). The command line
//! is measured (SNP: its hash is in the firmware's hashes table, part of the launch
//! digest; TDX: the firmware extends it into RTMR2), so a host that changes the pin
//! changes the measurement every relying party checks. `cvm-agent` also takes
//! `--verifier-key` (its flags are part of the measured initramfs).
//!
//! # What is checked
//!
//! - The attestation token ([`verify_token`]): a compact JWS with `alg` ES256 whose
//!   signature verifies under the pin and whose `tee-pubkey` claim has the thumbprint
//!   of this attempt's ephemeral key (defence in depth: an early refusal before the
//!   resource is even requested).
//! - The release ([`verify_release`]): the `Cvm-Release-Signature` response header is
//!   an ES256 signature by the pin over [`release_message`] — the resource path, the
//!   RFC 7638 thumbprint of the ephemeral key ([`ec_thumbprint`]) and SHA-256 of the
//!   exact response body. Only then is the JWE decrypted.
//!
//! ECDH-ES lets anyone encrypt to the guest's public key, so decryption alone proves
//! nothing about who released the key; this signature does. The ephemeral key is fresh
//! per attempt, so the signature binds the release to this attested session.
//!
//! The verifier's twin of [`release_message`] is
//! `verifier::crypto::token::release_message`; `tests/pin.rs` checks them byte for byte.

use alloc::string::String;
use alloc::vec::Vec;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::binding::write_json_string;
use crate::jwe::EcJwk;

/// The kernel command line parameter naming the verifier's key.
pub const CMDLINE_PARAM: &str = "cvm.verifier_key=";
/// The response header carrying the release signature.
pub const RELEASE_SIGNATURE_HEADER: &str = "cvm-release-signature";
/// The domain-separation line that starts every [`release_message`].
pub const RELEASE_CONTEXT: &str = "cvm-kbs-release-v1";

/// Errors of the pin checks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PinError {
    /// The pinned key is not a base64url P-256 point.
    #[error("the verifier key is not base64url of a 65-byte uncompressed P-256 point")]
    InvalidKey,
    /// No key was given.
    #[error("no pinned verifier (cvm.verifier_key= on the kernel command line): refusing")]
    NotPinned,
    /// Two different keys were given (command line and flag, or twice on the command line).
    #[error("conflicting verifier keys: the command line and the flag name different keys")]
    Conflict,
    /// The release carries no signature header.
    #[error("the release carries no Cvm-Release-Signature header")]
    MissingSignature,
    /// The signature is not base64url of 64 bytes.
    #[error("the release signature is malformed")]
    MalformedSignature,
    /// The signature does not verify under the pinned key.
    #[error("the release signature does not verify under the pinned verifier key")]
    BadSignature,
    /// The token is not a compact ES256 JWS with a `tee-pubkey` claim.
    #[error("the attestation token is malformed")]
    MalformedToken,
    /// The token signature does not verify under the pinned key.
    #[error("the attestation token is not signed by the pinned verifier")]
    BadTokenSignature,
    /// The token is for another TEE key.
    #[error("the attestation token is for another TEE key")]
    WrongTeeKey,
}

/// The pinned verifier public key (P-256, ES256).
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey(VerifyingKey);

impl core::fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "VerifierKey({})", self.to_b64url())
    }
}

impl VerifierKey {
    /// Parses base64url (no padding) of the 65-byte uncompressed SEC1 point.
    pub fn parse(b64url: &str) -> Result<Self, PinError> {
        let bytes = B64URL.decode(b64url).map_err(|_| PinError::InvalidKey)?;
        Self::from_sec1(&bytes)
    }

    /// From the 65-byte uncompressed SEC1 point (`04 || x || y`).
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, PinError> {
        if bytes.len() != 65 || bytes.first() != Some(&4) {
            return Err(PinError::InvalidKey);
        }
        VerifyingKey::from_sec1_bytes(bytes)
            .map(Self)
            .map_err(|_| PinError::InvalidKey)
    }

    /// The key as [`VerifierKey::parse`] reads it.
    pub fn to_b64url(&self) -> String {
        B64URL.encode(self.0.to_encoded_point(false).as_bytes())
    }

    /// The key from a kernel command line (`cvm.verifier_key=`): `Ok(None)` when absent;
    /// an error when invalid or given twice with different values.
    pub fn from_cmdline(cmdline: &str) -> Result<Option<Self>, PinError> {
        let mut found: Option<Self> = None;
        for word in cmdline.split_ascii_whitespace() {
            if let Some(v) = word.strip_prefix(CMDLINE_PARAM) {
                let key = Self::parse(v)?;
                if found.as_ref().is_some_and(|k| *k != key) {
                    return Err(PinError::Conflict);
                }
                found = Some(key);
            }
        }
        Ok(found)
    }

    /// The pin of a front end that has both a kernel command line and a flag (`cvm-agent
    /// --verifier-key`): the command line's when present; the same key in both is fine;
    /// different keys are refused (never silently picked); none at all is refused.
    pub fn resolve(cmdline: &str, flag: Option<&str>) -> Result<Self, PinError> {
        let from_cmdline = Self::from_cmdline(cmdline)?;
        let from_flag = flag.map(Self::parse).transpose()?;
        match (from_cmdline, from_flag) {
            (Some(c), Some(f)) if c != f => Err(PinError::Conflict),
            (Some(k), _) | (None, Some(k)) => Ok(k),
            (None, None) => Err(PinError::NotPinned),
        }
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        Signature::from_slice(sig).is_ok_and(|s| self.0.verify(msg, &s).is_ok())
    }
}

/// Appends lowercase hex of `bytes`.
fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
}

/// The byte string a release signature covers:
/// `"cvm-kbs-release-v1\n" || path || "\n" || tee_thumbprint || "\n" || hex(SHA-256(body))`.
pub fn release_message(path: &str, tee_thumbprint: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(RELEASE_CONTEXT.len() + path.len() + tee_thumbprint.len() + 67);
    m.extend_from_slice(RELEASE_CONTEXT.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(path.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(tee_thumbprint.as_bytes());
    m.push(b'\n');
    push_hex(&mut m, &Sha256::digest(body));
    m
}

/// The RFC 7638 thumbprint of an EC public key: base64url of SHA-256 of
/// `{"crv":…,"kty":"EC","x":…,"y":…}` (required members only, in this order).
pub fn ec_thumbprint(crv: &str, x: &str, y: &str) -> String {
    let mut c = String::with_capacity(160);
    c.push_str("{\"crv\":");
    write_json_string(&mut c, crv);
    c.push_str(",\"kty\":\"EC\",\"x\":");
    write_json_string(&mut c, x);
    c.push_str(",\"y\":");
    write_json_string(&mut c, y);
    c.push('}');
    B64URL.encode(Sha256::digest(c.as_bytes()))
}

/// The thumbprint of our ephemeral key.
pub fn jwk_thumbprint(jwk: &EcJwk) -> String {
    ec_thumbprint(jwk.crv, &jwk.x, &jwk.y)
}

/// Verifies the release signature header value over `path`, our key's thumbprint and
/// the exact response `body`.
pub fn verify_release(
    key: &VerifierKey,
    path: &str,
    tee_thumbprint: &str,
    body: &[u8],
    header: Option<&str>,
) -> Result<(), PinError> {
    let header = header.ok_or(PinError::MissingSignature)?;
    let sig = B64URL
        .decode(header.trim())
        .map_err(|_| PinError::MalformedSignature)?;
    if sig.len() != 64 {
        return Err(PinError::MalformedSignature);
    }
    if !key.verify(&release_message(path, tee_thumbprint, body), &sig) {
        return Err(PinError::BadSignature);
    }
    Ok(())
}

#[derive(Deserialize)]
struct JwsHeader<'a> {
    #[serde(borrow)]
    alg: &'a str,
}

#[derive(Deserialize)]
struct TokenClaims {
    #[serde(rename = "tee-pubkey")]
    tee_pubkey: TokenJwk,
}

#[derive(Deserialize)]
struct TokenJwk {
    kty: String,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// Verifies the attestation token: ES256 under the pin, `tee-pubkey` with thumbprint
/// `tee_thumbprint`. (The guest has no trusted clock; `exp` is the verifier's to check.)
pub fn verify_token(key: &VerifierKey, token: &str, tee_thumbprint: &str) -> Result<(), PinError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PinError::MalformedToken);
    };
    let header = B64URL.decode(h).map_err(|_| PinError::MalformedToken)?;
    let header: JwsHeader<'_> =
        serde_json::from_slice(&header).map_err(|_| PinError::MalformedToken)?;
    if header.alg != "ES256" {
        return Err(PinError::MalformedToken);
    }
    let sig = B64URL.decode(s).map_err(|_| PinError::MalformedToken)?;
    let input = token
        .get(..h.len() + 1 + p.len())
        .ok_or(PinError::MalformedToken)?;
    if !key.verify(input.as_bytes(), &sig) {
        return Err(PinError::BadTokenSignature);
    }
    let claims = B64URL.decode(p).map_err(|_| PinError::MalformedToken)?;
    let claims: TokenClaims =
        serde_json::from_slice(&claims).map_err(|_| PinError::MalformedToken)?;
    let k = claims.tee_pubkey;
    match (k.kty.as_str(), k.crv, k.x, k.y) {
        ("EC", Some(crv), Some(x), Some(y)) if ec_thumbprint(&crv, &x, &y) == tee_thumbprint => {
            Ok(())
        }
        _ => Err(PinError::WrongTeeKey),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::sec1::ToEncodedPoint;

    #[test]
    fn message_layout() {
        let m = release_message("a/b/c", "tp", b"");
        assert_eq!(
            m,
            b"cvm-kbs-release-v1\na/b/c\ntp\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn keys() {
        assert_eq!(VerifierKey::parse("AAAA"), Err(PinError::InvalidKey));
        // x = y = 0 is not on the curve.
        let mut off = [0u8; 65];
        off[0] = 4;
        assert_eq!(VerifierKey::from_sec1(&off), Err(PinError::InvalidKey));
        assert_eq!(VerifierKey::from_cmdline("console=ttyS0"), Ok(None));
        assert_eq!(
            VerifierKey::from_cmdline("cvm.verifier_key=!!"),
            Err(PinError::InvalidKey)
        );
        let a = VerifierKey::from_sec1(
            p256::SecretKey::from_slice(&[1; 32])
                .unwrap()
                .public_key()
                .to_encoded_point(false)
                .as_bytes(),
        )
        .unwrap();
        let b = VerifierKey::from_sec1(
            p256::SecretKey::from_slice(&[2; 32])
                .unwrap()
                .public_key()
                .to_encoded_point(false)
                .as_bytes(),
        )
        .unwrap();
        let (ka, kb) = (a.to_b64url(), b.to_b64url());
        assert_eq!(VerifierKey::parse(&ka).as_ref(), Ok(&a));
        let line = |k: &str| alloc::format!("quiet cvm.verifier_key={k} root=/dev/vda");
        assert_eq!(VerifierKey::resolve(&line(&ka), None), Ok(a.clone()));
        assert_eq!(VerifierKey::resolve("quiet", Some(&kb)), Ok(b.clone()));
        assert_eq!(VerifierKey::resolve(&line(&ka), Some(&ka)), Ok(a.clone()));
        assert_eq!(
            VerifierKey::resolve(&line(&ka), Some(&kb)),
            Err(PinError::Conflict)
        );
        assert_eq!(
            VerifierKey::resolve("quiet", None),
            Err(PinError::NotPinned)
        );
        assert_eq!(
            VerifierKey::resolve(&alloc::format!("{} cvm.verifier_key={kb}", line(&ka)), None),
            Err(PinError::Conflict)
        );
    }
}
