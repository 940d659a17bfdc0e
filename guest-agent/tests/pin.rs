//! The two ends of the release signature agree byte for byte: the guest's
//! `guest_agent::pin` and the verifier's `verifier::crypto::token` build the same
//! message and the same RFC 7638 thumbprints, and what the verifier signs the guest
//! verifies (and nothing else).

use guest_agent::jwe::{Curve, EphemeralKey};
use guest_agent::pin::{self, PinError};
use guest_agent::rng::OsEntropy;
use guest_agent::VerifierKey;
use verifier::crypto::token::{self, TokenSigner};

fn tee_jwk(k: &EphemeralKey, alg: &str) -> kbs_types::TeePubKey {
    let j = k.public_jwk();
    kbs_types::TeePubKey::EC {
        crv: j.crv.into(),
        alg: alg.into(),
        x: j.x,
        y: j.y,
    }
}

#[test]
fn messages_and_thumbprints_agree() {
    for curve in [Curve::P256, Curve::P384] {
        let k = EphemeralKey::generate(curve, &mut OsEntropy).unwrap();
        let ours = pin::jwk_thumbprint(&k.public_jwk());
        // Extra or different members (alg, as kid would be) do not change it.
        assert_eq!(
            token::jwk_thumbprint(&tee_jwk(&k, "ECDH-ES+A256KW")).unwrap(),
            ours
        );
        assert_eq!(token::jwk_thumbprint(&tee_jwk(&k, "other")).unwrap(), ours);
        for (path, body) in [
            ("default/key/disk", &b"{\"protected\":\"x\"}"[..]),
            ("a/b/c", b""),
            ("repo.1/type_2/tag-3", &[0u8, 255, 10, 13][..]),
        ] {
            assert_eq!(
                pin::release_message(path, &ours, body),
                token::release_message(path, &ours, body)
            );
        }
    }
}

#[test]
fn what_the_verifier_signs_the_guest_verifies() {
    let signer = TokenSigner::generate();
    let id = signer.identity();
    let pinned = VerifierKey::parse(&id.verifier_key).unwrap();
    assert_eq!(
        pinned,
        VerifierKey::from_sec1(signer.public_sec1()).unwrap()
    );
    assert_eq!(
        VerifierKey::from_cmdline(&format!("console=ttyS0 {}", id.cmdline)).unwrap(),
        Some(pinned.clone())
    );
    let k = EphemeralKey::generate(Curve::P256, &mut OsEntropy).unwrap();
    let tp = pin::jwk_thumbprint(&k.public_jwk());
    let body = b"{\"ciphertext\":\"abc\"}";
    let sig = signer.sign_release("a/b/c", &tp, body).unwrap();
    assert_eq!(
        pin::verify_release(&pinned, "a/b/c", &tp, body, Some(&sig)),
        Ok(())
    );
    assert_eq!(
        pin::verify_release(&pinned, "a/b/d", &tp, body, Some(&sig)),
        Err(PinError::BadSignature)
    );
    assert_eq!(
        pin::verify_release(&pinned, "a/b/c", &tp, body, None),
        Err(PinError::MissingSignature)
    );
    assert_eq!(
        pin::verify_release(&pinned, "a/b/c", &tp, body, Some("AAAA")),
        Err(PinError::MalformedSignature)
    );
    // The token: signed by the pin, for this key; not for another key.
    let claims = serde_json::json!({"exp": 1, "tee-pubkey": tee_jwk(&k, "ECDH-ES+A256KW")});
    let t = signer.sign(&claims).unwrap();
    assert_eq!(pin::verify_token(&pinned, &t, &tp), Ok(()));
    let other = EphemeralKey::generate(Curve::P256, &mut OsEntropy).unwrap();
    let other_tp = pin::jwk_thumbprint(&other.public_jwk());
    assert_eq!(
        pin::verify_token(&pinned, &t, &other_tp),
        Err(PinError::WrongTeeKey)
    );
    let forged = TokenSigner::generate().sign(&claims).unwrap();
    assert_eq!(
        pin::verify_token(&pinned, &forged, &tp),
        Err(PinError::BadTokenSignature)
    );
    // One changed character of the signed claims.
    let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
    let mid = parts[1].len() / 2;
    let c = if &parts[1][mid..=mid] == "A" {
        "B"
    } else {
        "A"
    };
    parts[1].replace_range(mid..=mid, c);
    assert!(pin::verify_token(&pinned, &parts.join("."), &tp).is_err());
}
