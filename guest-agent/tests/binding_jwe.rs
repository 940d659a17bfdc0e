//! The binding and the JWE against the verifier's own code, byte for byte.

use base64::Engine;
use guest_agent::binding::{primary_runtime_data_json, report_data};
use guest_agent::jwe::{Curve, EphemeralKey, JweError};
use guest_agent::rng::OsEntropy;
use kbs_types::{RuntimeData, TeePubKey};
use verifier::crypto::jwe::{encrypt, TeeKey};

fn to_kbs(jwk: &guest_agent::jwe::EcJwk) -> TeePubKey {
    TeePubKey::EC {
        crv: jwk.crv.into(),
        alg: "ECDH-ES+A256KW".into(),
        x: jwk.x.clone(),
        y: jwk.y.clone(),
    }
}

#[test]
fn report_data_matches_the_verifier() {
    let nonces = [
        "bm9uY2U=".to_string(),
        String::new(),
        "a\"b\\c/d\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f}é€😀<>&'".into(),
        base64::engine::general_purpose::STANDARD.encode([0xffu8; 32]),
    ];
    for curve in [Curve::P256, Curve::P384] {
        let key = EphemeralKey::generate(curve, &mut OsEntropy).unwrap();
        let jwk = key.public_jwk();
        for nonce in &nonces {
            let rd = RuntimeData {
                nonce: nonce.clone(),
                tee_pubkey: to_kbs(&jwk),
            };
            let ours = report_data(&primary_runtime_data_json(nonce, &jwk, ""));
            let theirs = verifier::protocol::report_data(&rd).unwrap();
            assert_eq!(ours, theirs, "nonce {nonce:?}");
            // Non-empty additional evidence is bound identically.
            let extra = r#"{"nvgpu":"é\n"}"#;
            let ours = report_data(&primary_runtime_data_json(nonce, &jwk, extra));
            let theirs = verifier::protocol::report_data_with(&rd, extra).unwrap();
            assert_eq!(ours, theirs, "nonce {nonce:?} with additional evidence");
        }
        // The verifier accepts our JWK.
        TeeKey::from_jwk(&to_kbs(&jwk)).unwrap();
    }
}

#[test]
fn decrypts_the_verifiers_jwe_and_refuses_tampering() {
    for curve in [Curve::P256, Curve::P384] {
        let key = EphemeralKey::generate(curve, &mut OsEntropy).unwrap();
        let tee_key = TeeKey::from_jwk(&to_kbs(&key.public_jwk())).unwrap();
        let jwe = serde_json::to_vec(&encrypt(&tee_key, b"disk key").unwrap()).unwrap();
        assert_eq!(key.decrypt(&jwe).unwrap().expose(), b"disk key");
        // Every byte flipped in turn is refused (JSON, base64url, header, KW, GCM).
        for i in 0..jwe.len() {
            let mut bad = jwe.clone();
            bad[i] ^= 0x01;
            assert!(
                key.decrypt(&bad).is_err(),
                "byte {i} flipped still decrypts"
            );
        }
        // Another key cannot decrypt it.
        let other = EphemeralKey::generate(curve, &mut OsEntropy).unwrap();
        assert_eq!(other.decrypt(&jwe).unwrap_err(), JweError::Decrypt);
    }
}

#[test]
fn refuses_extra_members_and_wrong_algorithms() {
    let key = EphemeralKey::generate(Curve::P256, &mut OsEntropy).unwrap();
    let tee_key = TeeKey::from_jwk(&to_kbs(&key.public_jwk())).unwrap();
    let jwe = serde_json::to_value(encrypt(&tee_key, b"k").unwrap()).unwrap();
    let mut with_aad = jwe.clone();
    with_aad["aad"] = "eA".into();
    assert!(key
        .decrypt(&serde_json::to_vec(&with_aad).unwrap())
        .is_err());
    // A P-384 key cannot take a P-256 epk.
    let p384 = EphemeralKey::generate(Curve::P384, &mut OsEntropy).unwrap();
    assert!(matches!(
        p384.decrypt(&serde_json::to_vec(&jwe).unwrap()),
        Err(JweError::Malformed(_))
    ));
}
