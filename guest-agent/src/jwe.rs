//! The guest's ephemeral TEE key and JWE decryption (RFC 7516 flattened JSON, as the
//! verifier's `crypto::jwe::encrypt` produces): `ECDH-ES+A256KW` (RFC 7518 §4.6) with
//! the key's curve, Concat KDF over SHA-256 with AlgorithmID "ECDH-ES+A256KW" and empty
//! PartyU/PartyV info, AES-256 Key Wrap (RFC 3394) of the content key, then `A256GCM`
//! with AAD = ASCII(protected member as received).
//!
//! Only what the verifier sends is accepted: no `aad`, `header` or `unprotected`
//! members, no `zip` or `crit` header parameters, `epk` on the key's own curve (checked
//! to be on the curve). The private key and every derived key are zeroized on drop.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use alloc::string::String;
use alloc::vec::Vec;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde::de::IgnoredAny;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::rng::{Entropy, EntropyError};

/// `alg` of elliptic-curve TEE keys.
pub const ALG_ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";
/// `enc` of every JWE.
pub const ENC_A256GCM: &str = "A256GCM";

/// Why a JWE was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JweError {
    /// The JWE is malformed or uses something we do not accept.
    #[error("malformed JWE: {0}")]
    Malformed(&'static str),
    /// Key unwrapping or authenticated decryption failed (tampered or not for us).
    #[error("the JWE does not decrypt with this TEE key")]
    Decrypt,
}

/// Curves of the ephemeral key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    #[cfg(feature = "p384")]
    P384,
}

/// The public half as a JWK's EC members (base64url coordinates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcJwk {
    /// `crv`: "P-256" or "P-384".
    pub crv: &'static str,
    /// `x`.
    pub x: String,
    /// `y`.
    pub y: String,
}

enum KeyInner {
    P256(p256::SecretKey),
    #[cfg(feature = "p384")]
    P384(p384::SecretKey),
}

/// The guest's ephemeral key pair for one key release. The private half never leaves
/// this type (no accessor, no `Debug` output) and is zeroized on drop (by
/// `elliptic_curve::SecretKey`).
pub struct EphemeralKey {
    inner: KeyInner,
}

impl core::fmt::Debug for EphemeralKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("EphemeralKey(<secret>)")
    }
}

/// A released secret; zeroized on drop, never printed.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl core::fmt::Debug for Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

impl EphemeralKey {
    /// A fresh key from `rng` (rejection sampling of the scalar).
    pub fn generate(curve: Curve, rng: &mut dyn Entropy) -> Result<Self, EntropyError> {
        for _ in 0..64 {
            let inner = match curve {
                Curve::P256 => {
                    let mut b = Zeroizing::new([0u8; 32]);
                    rng.fill(b.as_mut())?;
                    p256::SecretKey::from_slice(b.as_ref())
                        .ok()
                        .map(KeyInner::P256)
                }
                #[cfg(feature = "p384")]
                Curve::P384 => {
                    let mut b = Zeroizing::new([0u8; 48]);
                    rng.fill(b.as_mut())?;
                    p384::SecretKey::from_slice(b.as_ref())
                        .ok()
                        .map(KeyInner::P384)
                }
            };
            if let Some(inner) = inner {
                return Ok(Self { inner });
            }
        }
        Err(EntropyError("the source keeps returning invalid scalars"))
    }

    /// The public key as JWK members.
    pub fn public_jwk(&self) -> EcJwk {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        match &self.inner {
            KeyInner::P256(k) => {
                let p = k.public_key().to_encoded_point(false);
                EcJwk {
                    crv: "P-256",
                    x: B64URL.encode(p.x().map(|c| &c[..]).unwrap_or_default()),
                    y: B64URL.encode(p.y().map(|c| &c[..]).unwrap_or_default()),
                }
            }
            #[cfg(feature = "p384")]
            KeyInner::P384(k) => {
                let p = k.public_key().to_encoded_point(false);
                EcJwk {
                    crv: "P-384",
                    x: B64URL.encode(p.x().map(|c| &c[..]).unwrap_or_default()),
                    y: B64URL.encode(p.y().map(|c| &c[..]).unwrap_or_default()),
                }
            }
        }
    }

    /// Decrypts a JWE (flattened JSON serialization) addressed to this key.
    pub fn decrypt(&self, jwe_json: &[u8]) -> Result<Secret, JweError> {
        let jwe: JweJson = serde_json::from_slice(jwe_json)
            .map_err(|_| JweError::Malformed("not a flattened JWE object"))?;
        let header_bytes = b64(&jwe.protected)?;
        let header: Header = serde_json::from_slice(&header_bytes)
            .map_err(|_| JweError::Malformed("bad protected header"))?;
        if header.alg != ALG_ECDH_ES_A256KW {
            return Err(JweError::Malformed("alg is not ECDH-ES+A256KW"));
        }
        if header.enc != ENC_A256GCM {
            return Err(JweError::Malformed("enc is not A256GCM"));
        }
        if header.zip.is_some() || header.crit.is_some() {
            return Err(JweError::Malformed("zip and crit are not supported"));
        }
        let epk = header.epk.ok_or(JweError::Malformed("epk is missing"))?;
        if epk.kty != "EC" {
            return Err(JweError::Malformed("epk is not an EC key"));
        }
        let (x, y) = (b64(&epk.x)?, b64(&epk.y)?);
        let kek = match &self.inner {
            KeyInner::P256(sk) => {
                if epk.crv != "P-256" {
                    return Err(JweError::Malformed("epk is not on the key's curve"));
                }
                let pk = p256::PublicKey::from_sec1_bytes(&sec1(&x, &y, 32)?)
                    .map_err(|_| JweError::Malformed("epk is not a point on P-256"))?;
                let z = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                concat_kdf(z.raw_secret_bytes(), ALG_ECDH_ES_A256KW.as_bytes())
            }
            #[cfg(feature = "p384")]
            KeyInner::P384(sk) => {
                if epk.crv != "P-384" {
                    return Err(JweError::Malformed("epk is not on the key's curve"));
                }
                let pk = p384::PublicKey::from_sec1_bytes(&sec1(&x, &y, 48)?)
                    .map_err(|_| JweError::Malformed("epk is not a point on P-384"))?;
                let z = p384::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                concat_kdf(z.raw_secret_bytes(), ALG_ECDH_ES_A256KW.as_bytes())
            }
        };
        let wrapped = b64(&jwe.encrypted_key)?;
        if wrapped.len() != 40 {
            return Err(JweError::Malformed(
                "encrypted_key is not a wrapped 256-bit key",
            ));
        }
        let mut cek = Zeroizing::new([0u8; 32]);
        aes_kw::KekAes256::from(*kek)
            .unwrap(&wrapped, cek.as_mut())
            .map_err(|_| JweError::Decrypt)?;
        let iv = b64(&jwe.iv)?;
        let iv: [u8; 12] = iv
            .as_slice()
            .try_into()
            .map_err(|_| JweError::Malformed("iv is not 96 bits"))?;
        let tag = b64(&jwe.tag)?;
        let tag: [u8; 16] = tag
            .as_slice()
            .try_into()
            .map_err(|_| JweError::Malformed("tag is not 128 bits"))?;
        let mut buf = Zeroizing::new(b64(&jwe.ciphertext)?);
        Aes256Gcm::new(cek.as_ref().into())
            .decrypt_in_place_detached(
                &Nonce::from(iv),
                jwe.protected.as_bytes(),
                &mut buf,
                &Tag::from(tag),
            )
            .map_err(|_| {
                buf.zeroize();
                JweError::Decrypt
            })?;
        Ok(Secret(buf))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JweJson {
    protected: String,
    encrypted_key: String,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    enc: String,
    #[serde(default)]
    epk: Option<Epk>,
    #[serde(default)]
    zip: Option<IgnoredAny>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Epk {
    kty: String,
    crv: String,
    x: String,
    y: String,
}

fn b64(s: &str) -> Result<Vec<u8>, JweError> {
    B64URL
        .decode(s)
        .map_err(|_| JweError::Malformed("a member is not base64url"))
}

fn sec1(x: &[u8], y: &[u8], len: usize) -> Result<Vec<u8>, JweError> {
    if x.len() != len || y.len() != len {
        return Err(JweError::Malformed("epk coordinates have the wrong length"));
    }
    let mut p = Vec::with_capacity(1 + 2 * len);
    p.push(4);
    p.extend_from_slice(x);
    p.extend_from_slice(y);
    Ok(p)
}

/// Concat KDF (NIST SP 800-56A, RFC 7518 §4.6.2) for a 256-bit key: one SHA-256 block
/// `SHA-256(00000001 || Z || len(alg) || alg || 0 || 0 || 256)`.
fn concat_kdf(z: &[u8], alg: &[u8]) -> Zeroizing<[u8; 32]> {
    concat_kdf_with(z, alg, b"", b"", 256)
}

fn concat_kdf_with(
    z: &[u8],
    alg: &[u8],
    apu: &[u8],
    apv: &[u8],
    key_bits: u32,
) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    for part in [alg, apu, apv] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.update(key_bits.to_be_bytes());
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&h.finalize());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7518 Appendix C (ECDH-ES with A128GCM: the first 128 bits of the block).
    #[test]
    fn concat_kdf_matches_rfc7518_appendix_c() {
        let z: [u8; 32] = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
            110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        let k = concat_kdf_with(&z, b"A128GCM", b"Alice", b"Bob", 128);
        assert_eq!(B64URL.encode(&k[..16]), "VqqN6vgjbSBcIijNcacQGg");
    }
}
