//! Facts of the Trustee KBS protocol 0.4.0 shared by the service and its clients.
//!
//! REPORT_DATA binding (as Trustee): the guest puts
//! `SHA-384(JCS(primary-runtime-data)) || 0^16` in its evidence, where
//! `primary-runtime-data` is `{"additional-evidence": <tee-evidence.additional_evidence
//! string, "" when none>, "nonce": <challenge nonce>, "tee-pubkey": <JWK>}` and JCS is
//! RFC 8785 canonical JSON. This is byte for byte what Trustee's KBS builds
//! (`kbs/src/attestation/backend.rs`, `primary_runtime_data`, hashed by the attestation
//! service with `serde_json_canonicalizer` and SHA-384, its default when the challenge
//! selects no algorithm) and what guest-components' attestation agent hashes
//! (`kbs_protocol/src/client/rcar_client.rs`), at trustee 78962cd4 and guest-components
//! 8246e5e0. The verifier recomputes it from the runtime data and the additional evidence
//! it receives, so evidence produced for another nonce, key or additional evidence does
//! not verify.
//!
//! Members of the `tee-pubkey` JWK beyond the key are ignored, as Trustee ignores them:
//! Trustee's KBS parses the attest body into `kbs_types::Attestation`, whose `TeePubKey`
//! keeps only `kty` and the key's own members (EC: `crv`, `alg`, `x`, `y`; RSA: `alg`,
//! `n`, `e`), and hashes the runtime data rebuilt from those typed values. So does
//! [`report_data`]: a JWK that also carries `kid`, `use`, `key_ops`, `x5c`… binds exactly
//! like the same key without them, and a guest must hash the runtime data without them
//! (ours sends none). A JWK missing a required member (for example `alg`) is refused as
//! malformed. The JWE is encrypted to the key members only, so an extra member can change
//! neither the binding nor the key that receives the secret.

use kbs_types::RuntimeData;
use sha2::{Digest, Sha384};

/// The protocol version this verifier speaks.
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// The session cookie.
pub const SESSION_COOKIE: &str = "kbs-session-id";

/// The runtime data could not be canonicalized.
#[derive(Debug, thiserror::Error)]
#[error("the runtime data cannot be canonicalized")]
pub struct BindingError(#[source] serde_json::Error);

/// The 64-byte REPORT_DATA that binds `runtime_data` with no additional evidence (what
/// a guest without devices sends): [`report_data_with`] of `""`.
pub fn report_data(runtime_data: &RuntimeData) -> Result<[u8; 64], BindingError> {
    report_data_with(runtime_data, "")
}

/// The 64-byte REPORT_DATA that binds `runtime_data` and the request's
/// `additional_evidence` text: the typed runtime data (extra JWK members already dropped
/// by parsing) plus `"additional-evidence"`, as RFC 8785 JSON, hashed with SHA-384.
pub fn report_data_with(
    runtime_data: &RuntimeData,
    additional_evidence: &str,
) -> Result<[u8; 64], BindingError> {
    let mut value = serde_json::to_value(runtime_data).map_err(BindingError)?;
    if let serde_json::Value::Object(m) = &mut value {
        m.insert(
            "additional-evidence".into(),
            serde_json::Value::String(additional_evidence.into()),
        );
    }
    let canonical = serde_json_canonicalizer::to_vec(&value).map_err(BindingError)?;
    let digest = Sha384::digest(&canonical);
    let mut out = [0u8; 64];
    out[..48].copy_from_slice(&digest);
    Ok(out)
}

/// Whether a client's protocol version is compatible (0.4.x).
pub fn version_supported(v: &str) -> bool {
    v.strip_prefix("0.4.")
        .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kbs_types::TeePubKey;

    #[test]
    fn binding_is_sha384_of_jcs_padded() {
        let rd = RuntimeData {
            nonce: "bm9uY2U=".into(),
            tee_pubkey: TeePubKey::EC {
                crv: "P-256".into(),
                alg: "ECDH-ES+A256KW".into(),
                x: "eA".into(),
                y: "eQ".into(),
            },
        };
        // JCS: keys sorted at every level, no whitespace; Trustee's KBS adds the
        // additional evidence (empty here) to the runtime data it hashes.
        let jcs = r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"eA","y":"eQ"}}"#;
        let want = Sha384::digest(jcs.as_bytes());
        let got = report_data(&rd).unwrap();
        assert_eq!(&got[..48], &want[..]);
        assert_eq!(&got[48..], &[0u8; 16]);
        // The additional evidence is bound too.
        let jcs = r#"{"additional-evidence":"{\"x\":1}","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"eA","y":"eQ"}}"#;
        let got = report_data_with(&rd, r#"{"x":1}"#).unwrap();
        assert_eq!(&got[..48], &Sha384::digest(jcs.as_bytes())[..]);
    }

    #[test]
    fn extra_jwk_members_are_ignored_as_trustee_does() {
        // The attest body as a client sends it, with members beyond the key.
        let body = |extra: &str| {
            format!(
                r#"{{"nonce":"bm9uY2U=","tee-pubkey":{{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"eA","y":"eQ"{extra}}}}}"#
            )
        };
        let bare: RuntimeData = serde_json::from_str(&body("")).unwrap();
        let want = report_data(&bare).unwrap();
        for extra in [
            r#","kid":"guest-key-1""#,
            r#","use":"enc","key_ops":["deriveKey"]"#,
            r#","kid":"k","x5t#S256":"abc","ext":true"#,
        ] {
            let rd: RuntimeData = serde_json::from_str(&body(extra)).expect(extra);
            assert_eq!(report_data(&rd).unwrap(), want, "{extra}");
        }
        // What is hashed: the key members only, byte-identical to Trustee's rebuild.
        let jcs = r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"eA","y":"eQ"}}"#;
        assert_eq!(&want[..48], &Sha384::digest(jcs.as_bytes())[..]);
        // A guest that hashed its `kid` too does not match: it must hash the key alone.
        let with_kid = r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kid":"guest-key-1","kty":"EC","x":"eA","y":"eQ"}}"#;
        assert_ne!(&want[..48], &Sha384::digest(with_kid.as_bytes())[..]);
        // A JWK without a key member is malformed, not silently re-shaped.
        assert!(serde_json::from_str::<RuntimeData>(
            r#"{"nonce":"n","tee-pubkey":{"kty":"EC","crv":"P-256","x":"eA","y":"eQ","kid":"k"}}"#
        )
        .is_err());
    }

    #[test]
    fn versions() {
        assert!(version_supported("0.4.0"));
        assert!(version_supported("0.4.12"));
        assert!(!version_supported("0.3.0"));
        assert!(!version_supported("0.4."));
        assert!(!version_supported("1.0.0"));
    }
}
