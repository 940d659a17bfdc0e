//! Cryptography of the service: the master key and envelope encryption ([`master`]),
//! JWE to TEE keys ([`jwe`]) and attestation result tokens ([`token`]).

pub mod jwe;
pub mod master;
pub mod token;

use base64::Engine;
use rand_core::{OsRng, RngCore};

/// `n` random bytes, base64url without padding (session ids, token secrets).
pub fn random_b64url(n: usize) -> String {
    let mut b = vec![0u8; n];
    OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b)
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    OsRng.fill_bytes(&mut b);
    hex::encode(&b)
}
