//! JWE (RFC 7516, flattened JSON serialization as Trustee's `kbs_types::Response`) to
//! the TEE's ephemeral public key.
//!
//! Key management: `ECDH-ES+A256KW` (RFC 7518 §4.6: ephemeral-static ECDH on P-256 or
//! P-384, Concat KDF with SHA-256 over `Z`, AlgorithmID = "ECDH-ES+A256KW", empty
//! PartyU/PartyV info, 256-bit key, then AES Key Wrap of the content key) or
//! `RSA-OAEP-256` (RSAES-OAEP with SHA-256 and MGF1-SHA-256, 2048- to 8192-bit keys).
//! Content encryption: `A256GCM` with AAD = ASCII(BASE64URL(protected header)).
//!
//! Built from RustCrypto primitives (p256/p384 keys, `concat-kdf`, `aes-kw`, `aes-gcm`,
//! `rsa`) rather than a JOSE crate: the two algorithms are small, the RustCrypto
//! generation matches the rest of the workspace, and the available JOSE crates either
//! bind OpenSSL (`josekit`) or lack ECDH-ES key wrapping. The verifier's half of the
//! key agreement (ephemeral key and `Z`) uses `ring`, already linked for rustls and
//! about 4x faster than RustCrypto's curves on this per-release path; the guest's half,
//! [`TeeKeyPair::decrypt`], stays on RustCrypto, so the round-trip tests check one
//! implementation against the other.
//!
//! Both directions are here: [`encrypt`] is what the verifier does at key release;
//! [`TeeKeyPair::decrypt`] is what a guest does, used by the load generator and tests.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use kbs_types::{ProtectedHeader, TeePubKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::{OsRng, RngCore};
use ring::agreement;
use ring::rand::SystemRandom;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

/// `alg` for elliptic-curve keys.
pub const ALG_ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";
/// `alg` for RSA keys.
pub const ALG_RSA_OAEP_256: &str = "RSA-OAEP-256";
/// `enc` for every JWE.
pub const ENC_A256GCM: &str = "A256GCM";

/// Errors of JWK validation and JWE processing.
#[derive(Debug, thiserror::Error)]
pub enum JweError {
    /// The key type or algorithm is not supported.
    #[error("unsupported TEE key: {0}")]
    Unsupported(&'static str),
    /// The JWK is malformed.
    #[error("malformed TEE key: {0}")]
    MalformedKey(&'static str),
    /// The JWE is malformed.
    #[error("malformed JWE: {0}")]
    Malformed(&'static str),
    /// Decryption or key unwrapping failed.
    #[error("JWE decryption failed")]
    Decrypt,
    /// Encryption failed (an RSA or AES error).
    #[error("JWE encryption failed")]
    Encrypt,
}

/// A validated TEE public key from the runtime data.
#[derive(Debug, Clone)]
pub enum TeeKey {
    /// P-256, `ECDH-ES+A256KW`.
    P256(p256::PublicKey),
    /// P-384, `ECDH-ES+A256KW`.
    P384(p384::PublicKey),
    /// RSA, `RSA-OAEP-256`.
    Rsa(rsa::RsaPublicKey),
}

fn b64(s: &str, what: &'static str) -> Result<Vec<u8>, JweError> {
    B64URL
        .decode(s.trim_end_matches('='))
        .map_err(|_| JweError::MalformedKey(what))
}

fn ec_point(x: &[u8], y: &[u8], len: usize) -> Result<Vec<u8>, JweError> {
    if x.len() != len || y.len() != len {
        return Err(JweError::MalformedKey(
            "EC coordinates have the wrong length",
        ));
    }
    let mut sec1 = Vec::with_capacity(1 + 2 * len);
    sec1.push(4);
    sec1.extend_from_slice(x);
    sec1.extend_from_slice(y);
    Ok(sec1)
}

impl TeeKey {
    /// Validates a TEE public key JWK (curve point on the curve, RSA size limits).
    pub fn from_jwk(k: &TeePubKey) -> Result<Self, JweError> {
        match k {
            TeePubKey::EC { crv, alg, x, y } => {
                if alg != ALG_ECDH_ES_A256KW {
                    return Err(JweError::Unsupported("EC keys must use alg ECDH-ES+A256KW"));
                }
                let (x, y) = (b64(x, "x is not base64url")?, b64(y, "y is not base64url")?);
                match crv.as_str() {
                    "P-256" => p256::PublicKey::from_sec1_bytes(&ec_point(&x, &y, 32)?)
                        .map(TeeKey::P256)
                        .map_err(|_| JweError::MalformedKey("the point is not on P-256")),
                    "P-384" => p384::PublicKey::from_sec1_bytes(&ec_point(&x, &y, 48)?)
                        .map(TeeKey::P384)
                        .map_err(|_| JweError::MalformedKey("the point is not on P-384")),
                    _ => Err(JweError::Unsupported("EC curve must be P-256 or P-384")),
                }
            }
            TeePubKey::RSA { alg, k_mod, k_exp } => {
                if alg != ALG_RSA_OAEP_256 {
                    return Err(JweError::Unsupported("RSA keys must use alg RSA-OAEP-256"));
                }
                let n = rsa::BigUint::from_bytes_be(&b64(k_mod, "n is not base64url")?);
                let e = rsa::BigUint::from_bytes_be(&b64(k_exp, "e is not base64url")?);
                let key = rsa::RsaPublicKey::new_with_max_size(n, e, 8192)
                    .map_err(|_| JweError::MalformedKey("invalid RSA public key"))?;
                if key.size() < 256 {
                    return Err(JweError::Unsupported("RSA keys must be at least 2048 bits"));
                }
                Ok(TeeKey::Rsa(key))
            }
            TeePubKey::AKP { .. } => Err(JweError::Unsupported(
                "AKP (post-quantum) keys are not supported",
            )),
        }
    }
}

/// Concat KDF (RFC 7518 §4.6.2) for ECDH-ES+A256KW: a 256-bit key-encryption key.
fn kdf(z: &[u8]) -> Result<Zeroizing<[u8; 32]>, JweError> {
    let alg = ALG_ECDH_ES_A256KW.as_bytes();
    let mut other = Vec::new();
    other.extend_from_slice(&(alg.len() as u32).to_be_bytes());
    other.extend_from_slice(alg);
    other.extend_from_slice(&0u32.to_be_bytes()); // PartyUInfo: empty
    other.extend_from_slice(&0u32.to_be_bytes()); // PartyVInfo: empty
    other.extend_from_slice(&256u32.to_be_bytes()); // SuppPubInfo: keydatalen
    let mut kek = Zeroizing::new([0u8; 32]);
    concat_kdf::derive_key_into::<sha2::Sha256>(z, &other, kek.as_mut())
        .map_err(|_| JweError::Encrypt)?;
    Ok(kek)
}

fn epk_json(crv: &str, sec1: &[u8], len: usize) -> Value {
    let x = sec1.get(1..1 + len).unwrap_or_default();
    let y = sec1.get(1 + len..1 + 2 * len).unwrap_or_default();
    json!({"kty": "EC", "crv": crv, "x": B64URL.encode(x), "y": B64URL.encode(y)})
}

/// Encrypts `plaintext` to `key`; returns the JWE as Trustee's response type.
pub fn encrypt(key: &TeeKey, plaintext: &[u8]) -> Result<kbs_types::Response, JweError> {
    let mut cek = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(cek.as_mut());
    let mut other = Map::new();
    let (alg, encrypted_key) = match key {
        TeeKey::P256(pk) => {
            let peer = pk.to_encoded_point(false);
            let (epk, kek) = ecdh_es(&agreement::ECDH_P256, peer.as_bytes())?;
            other.insert("epk".into(), epk_json("P-256", &epk, 32));
            (ALG_ECDH_ES_A256KW, wrap(&kek, &cek)?)
        }
        TeeKey::P384(pk) => {
            let peer = pk.to_encoded_point(false);
            let (epk, kek) = ecdh_es(&agreement::ECDH_P384, peer.as_bytes())?;
            other.insert("epk".into(), epk_json("P-384", &epk, 48));
            (ALG_ECDH_ES_A256KW, wrap(&kek, &cek)?)
        }
        TeeKey::Rsa(pk) => {
            let ek = pk
                .encrypt(&mut OsRng, rsa::Oaep::new::<sha2::Sha256>(), cek.as_ref())
                .map_err(|_| JweError::Encrypt)?;
            (ALG_RSA_OAEP_256, ek)
        }
    };
    let protected = ProtectedHeader {
        alg: alg.into(),
        enc: ENC_A256GCM.into(),
        other_fields: other,
    };
    let aad = protected.generate_aad().map_err(|_| JweError::Encrypt)?;
    let mut iv = [0u8; 12];
    OsRng.fill_bytes(&mut iv);
    let mut ct = Aes256Gcm::new(cek.as_ref().into())
        .encrypt(
            &Nonce::from(iv),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| JweError::Encrypt)?;
    let tag = ct.split_off(ct.len().saturating_sub(16));
    Ok(kbs_types::Response {
        protected,
        encrypted_key,
        aad: None,
        iv: iv.to_vec(),
        ciphertext: ct,
        tag,
    })
}

/// Ephemeral-static ECDH with `ring` (a fresh ephemeral key per JWE; `ring` checks that
/// the peer's point is on the curve): the ephemeral public key (uncompressed SEC1) and
/// the key-encryption key derived from `Z`.
fn ecdh_es(
    curve: &'static agreement::Algorithm,
    peer_sec1: &[u8],
) -> Result<(Vec<u8>, Zeroizing<[u8; 32]>), JweError> {
    let rng = SystemRandom::new();
    let eph =
        agreement::EphemeralPrivateKey::generate(curve, &rng).map_err(|_| JweError::Encrypt)?;
    let epk = eph
        .compute_public_key()
        .map_err(|_| JweError::Encrypt)?
        .as_ref()
        .to_vec();
    let peer = agreement::UnparsedPublicKey::new(curve, peer_sec1);
    let kek = agreement::agree_ephemeral(eph, &peer, kdf).map_err(|_| JweError::Encrypt)??;
    Ok((epk, kek))
}

fn wrap(kek: &[u8; 32], cek: &[u8; 32]) -> Result<Vec<u8>, JweError> {
    let kw = aes_kw::KekAes256::from(*kek);
    kw.wrap_vec(cek).map_err(|_| JweError::Encrypt)
}

/// A TEE key pair as a guest holds it: the private half stays in the guest.
#[derive(Clone)]
pub enum TeeKeyPair {
    /// P-256.
    P256(p256::SecretKey),
    /// P-384.
    P384(p384::SecretKey),
    /// RSA.
    Rsa(Box<rsa::RsaPrivateKey>),
}

impl std::fmt::Debug for TeeKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TeeKeyPair::P256(_) => "TeeKeyPair::P256(<secret>)",
            TeeKeyPair::P384(_) => "TeeKeyPair::P384(<secret>)",
            TeeKeyPair::Rsa(_) => "TeeKeyPair::Rsa(<secret>)",
        })
    }
}

impl TeeKeyPair {
    /// A fresh P-256 key pair.
    pub fn p256() -> Self {
        TeeKeyPair::P256(p256::SecretKey::random(&mut OsRng))
    }

    /// A fresh P-384 key pair.
    pub fn p384() -> Self {
        TeeKeyPair::P384(p384::SecretKey::random(&mut OsRng))
    }

    /// A fresh RSA key pair of `bits` bits.
    pub fn rsa(bits: usize) -> Result<Self, JweError> {
        rsa::RsaPrivateKey::new(&mut OsRng, bits)
            .map(|k| TeeKeyPair::Rsa(Box::new(k)))
            .map_err(|_| JweError::Encrypt)
    }

    /// The public key as the JWK sent in the runtime data.
    pub fn public_jwk(&self) -> TeePubKey {
        match self {
            TeeKeyPair::P256(k) => {
                let p = k.public_key().to_encoded_point(false);
                TeePubKey::EC {
                    crv: "P-256".into(),
                    alg: ALG_ECDH_ES_A256KW.into(),
                    x: B64URL.encode(p.x().map(|x| &x[..]).unwrap_or_default()),
                    y: B64URL.encode(p.y().map(|y| &y[..]).unwrap_or_default()),
                }
            }
            TeeKeyPair::P384(k) => {
                let p = k.public_key().to_encoded_point(false);
                TeePubKey::EC {
                    crv: "P-384".into(),
                    alg: ALG_ECDH_ES_A256KW.into(),
                    x: B64URL.encode(p.x().map(|x| &x[..]).unwrap_or_default()),
                    y: B64URL.encode(p.y().map(|y| &y[..]).unwrap_or_default()),
                }
            }
            TeeKeyPair::Rsa(k) => TeePubKey::RSA {
                alg: ALG_RSA_OAEP_256.into(),
                k_mod: B64URL.encode(k.n().to_bytes_be()),
                k_exp: B64URL.encode(k.e().to_bytes_be()),
            },
        }
    }

    /// Decrypts a JWE given as its JSON text (flattened serialization). The AAD is the
    /// `protected` member exactly as received.
    pub fn decrypt(&self, jwe_json: &[u8]) -> Result<Zeroizing<Vec<u8>>, JweError> {
        let v: Value =
            serde_json::from_slice(jwe_json).map_err(|_| JweError::Malformed("not JSON"))?;
        let field = |name: &'static str| -> Result<&str, JweError> {
            v.get(name)
                .and_then(Value::as_str)
                .ok_or(JweError::Malformed("a member is missing"))
        };
        let dec = |s: &str| {
            B64URL
                .decode(s)
                .map_err(|_| JweError::Malformed("a member is not base64url"))
        };
        let protected_b64 = field("protected")?;
        let header: Value = serde_json::from_slice(&dec(protected_b64)?)
            .map_err(|_| JweError::Malformed("bad protected header"))?;
        if header.get("enc").and_then(Value::as_str) != Some(ENC_A256GCM) {
            return Err(JweError::Malformed("enc is not A256GCM"));
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let encrypted_key = dec(field("encrypted_key")?)?;
        let ec = matches!(self, TeeKeyPair::P256(_) | TeeKeyPair::P384(_));
        if ec && alg != ALG_ECDH_ES_A256KW {
            return Err(JweError::Malformed("alg does not match the key"));
        }
        let cek: Zeroizing<Vec<u8>> = match self {
            TeeKeyPair::P256(sk) => {
                let epk = epk_sec1(&header, 32)?;
                let pk = p256::PublicKey::from_sec1_bytes(&epk)
                    .map_err(|_| JweError::Malformed("bad epk"))?;
                let z = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                {
                    let kek = kdf(z.raw_secret_bytes())?;
                    unwrap_kw(&kek, &encrypted_key)?
                }
            }
            TeeKeyPair::P384(sk) => {
                let epk = epk_sec1(&header, 48)?;
                let pk = p384::PublicKey::from_sec1_bytes(&epk)
                    .map_err(|_| JweError::Malformed("bad epk"))?;
                let z = p384::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                {
                    let kek = kdf(z.raw_secret_bytes())?;
                    unwrap_kw(&kek, &encrypted_key)?
                }
            }
            TeeKeyPair::Rsa(sk) => {
                if alg != ALG_RSA_OAEP_256 {
                    return Err(JweError::Malformed("alg does not match the key"));
                }
                Zeroizing::new(
                    sk.decrypt(rsa::Oaep::new::<sha2::Sha256>(), &encrypted_key)
                        .map_err(|_| JweError::Decrypt)?,
                )
            }
        };
        if cek.len() != 32 {
            return Err(JweError::Decrypt);
        }
        let iv = dec(field("iv")?)?;
        if iv.len() != 12 {
            return Err(JweError::Malformed("iv is not 96 bits"));
        }
        let mut ct = dec(field("ciphertext")?)?;
        ct.extend_from_slice(&dec(field("tag")?)?);
        let iv: [u8; 12] = iv
            .try_into()
            .map_err(|_| JweError::Malformed("iv is not 96 bits"))?;
        Aes256Gcm::new(cek.as_slice().into())
            .decrypt(
                &Nonce::from(iv),
                Payload {
                    msg: &ct,
                    aad: protected_b64.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| JweError::Decrypt)
    }
}

fn epk_sec1(header: &Value, len: usize) -> Result<Vec<u8>, JweError> {
    let epk = header
        .get("epk")
        .ok_or(JweError::Malformed("epk is missing"))?;
    let coord = |n: &str| {
        epk.get(n)
            .and_then(Value::as_str)
            .and_then(|s| B64URL.decode(s).ok())
            .ok_or(JweError::Malformed("epk coordinate missing"))
    };
    ec_point(&coord("x")?, &coord("y")?, len)
        .map_err(|_| JweError::Malformed("epk coordinate length"))
}

fn unwrap_kw(kek: &[u8; 32], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, JweError> {
    let kw = aes_kw::KekAes256::from(*kek);
    kw.unwrap_vec(wrapped)
        .map(Zeroizing::new)
        .map_err(|_| JweError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(kp: TeeKeyPair) {
        let key = TeeKey::from_jwk(&kp.public_jwk()).unwrap();
        let jwe = encrypt(&key, b"disk key").unwrap();
        let text = serde_json::to_vec(&jwe).unwrap();
        assert_eq!(kp.decrypt(&text).unwrap().as_slice(), b"disk key");
        // Tampering with the protected header breaks the AAD.
        let mut v: Value = serde_json::from_slice(&text).unwrap();
        let tag = v["tag"].as_str().unwrap().to_string();
        let mut t = B64URL.decode(tag).unwrap();
        t[0] ^= 1;
        v["tag"] = Value::String(B64URL.encode(t));
        assert!(kp.decrypt(&serde_json::to_vec(&v).unwrap()).is_err());
    }

    #[test]
    fn p256_roundtrip() {
        roundtrip(TeeKeyPair::p256());
    }

    #[test]
    fn p384_roundtrip() {
        roundtrip(TeeKeyPair::p384());
    }

    #[test]
    fn rsa_roundtrip() {
        roundtrip(TeeKeyPair::rsa(2048).unwrap());
    }

    /// RFC 7518 Appendix C: Concat KDF for ECDH-ES (the structure; A128GCM variant).
    #[test]
    fn concat_kdf_matches_rfc7518_appendix_c() {
        let z: [u8; 32] = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
            110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        let mut other = Vec::new();
        for part in [b"A128GCM".as_slice(), b"Alice", b"Bob"] {
            other.extend_from_slice(&(part.len() as u32).to_be_bytes());
            other.extend_from_slice(part);
        }
        other.extend_from_slice(&128u32.to_be_bytes());
        let mut k = [0u8; 16];
        concat_kdf::derive_key_into::<sha2::Sha256>(&z, &other, &mut k).unwrap();
        assert_eq!(B64URL.encode(k), "VqqN6vgjbSBcIijNcacQGg");
    }

    #[test]
    fn rejects_bad_keys() {
        let bad = TeePubKey::EC {
            crv: "P-256".into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: "AA".into(),
            y: "AA".into(),
        };
        assert!(matches!(
            TeeKey::from_jwk(&bad),
            Err(JweError::MalformedKey(_))
        ));
        let wrong_alg = TeePubKey::RSA {
            alg: "RSA1_5".into(),
            k_mod: "AQAB".into(),
            k_exp: "AQAB".into(),
        };
        assert!(matches!(
            TeeKey::from_jwk(&wrong_alg),
            Err(JweError::Unsupported(_))
        ));
        let small = TeePubKey::RSA {
            alg: ALG_RSA_OAEP_256.into(),
            k_mod: B64URL.encode([0xffu8; 64]),
            k_exp: "AQAB".into(),
        };
        assert!(TeeKey::from_jwk(&small).is_err());
    }
}
