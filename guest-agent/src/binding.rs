//! The REPORT_DATA binding of KBS protocol 0.4.0, computed exactly as the verifier
//! (`verifier::protocol::report_data_with`) and Trustee's KBS and attestation agent do:
//! `SHA-384(JCS(primary-runtime-data)) || 0^16`, where `primary-runtime-data` is
//! `{"additional-evidence": <the request's additional_evidence, "" here>, "nonce":
//! <challenge nonce>, "tee-pubkey": <JWK>}` and JCS is RFC 8785 canonical JSON
//! (guest-components `kbs_protocol/src/client/rcar_client.rs` at 8246e5e0: SHA-384
//! unless the challenge's `extra-params` selects another algorithm, which Trustee's KBS
//! does only for IBM SE).
//!
//! The objects have a fixed shape, so their canonical form is written directly: members
//! sorted by key (`additional-evidence` < `nonce` < `tee-pubkey`; `alg` < `crv` < `kty`
//! < `x` < `y`), no whitespace, strings escaped as ECMAScript's `JSON.stringify` does.
//! The request's `runtime-data` is [`runtime_data_json`] (nonce and key only); the
//! verifier rebuilds [`primary_runtime_data_json`] from it and the request's
//! `additional_evidence`.

use alloc::string::String;
use core::fmt::Write as _;
use sha2::{Digest, Sha384};

use crate::jwe::EcJwk;

/// Appends `s` as an RFC 8785 JSON string (quotes included).
pub fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The canonical JSON of the EC public key (`kty` "EC", `alg` "ECDH-ES+A256KW").
pub fn jwk_json(jwk: &EcJwk) -> String {
    let mut out = String::with_capacity(160);
    out.push_str("{\"alg\":");
    write_json_string(&mut out, crate::jwe::ALG_ECDH_ES_A256KW);
    out.push_str(",\"crv\":");
    write_json_string(&mut out, jwk.crv);
    out.push_str(",\"kty\":\"EC\",\"x\":");
    write_json_string(&mut out, &jwk.x);
    out.push_str(",\"y\":");
    write_json_string(&mut out, &jwk.y);
    out.push('}');
    out
}

/// The canonical JSON of the runtime data.
pub fn runtime_data_json(nonce: &str, jwk: &EcJwk) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"nonce\":");
    write_json_string(&mut out, nonce);
    out.push_str(",\"tee-pubkey\":");
    out.push_str(&jwk_json(jwk));
    out.push('}');
    out
}

/// The canonical JSON that REPORT_DATA hashes: the runtime data plus the request's
/// `additional_evidence` text.
pub fn primary_runtime_data_json(nonce: &str, jwk: &EcJwk, additional_evidence: &str) -> String {
    let mut out = String::with_capacity(288 + additional_evidence.len());
    out.push_str("{\"additional-evidence\":");
    write_json_string(&mut out, additional_evidence);
    out.push_str(",\"nonce\":");
    write_json_string(&mut out, nonce);
    out.push_str(",\"tee-pubkey\":");
    out.push_str(&jwk_json(jwk));
    out.push('}');
    out
}

/// REPORT_DATA for canonical JSON ([`primary_runtime_data_json`]).
pub fn report_data(canonical_runtime_data: &str) -> [u8; 64] {
    let digest = Sha384::digest(canonical_runtime_data.as_bytes());
    let mut out = [0u8; 64];
    out[..48].copy_from_slice(&digest);
    out
}
