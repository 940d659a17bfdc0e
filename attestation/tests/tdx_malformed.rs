//! Malformed quotes and collateral get a clear error of the right kind, never a panic.

use attestation::tdx::collateral::{Collateral, CollateralError};
use attestation::tdx::quote::{Quote, QuoteError};
use attestation::tdx::{TdxVerifier, VerifyError};
use attestation::ErrorKind;
use proptest::prelude::*;
use time::macros::datetime;

const V4_QUOTE: &[u8] = include_bytes!("data/tdx/v4-uptodate/quote.bin");
const V5_QUOTE: &[u8] = include_bytes!("data/tdx/v5-no-tcb-match/quote.bin");
const V4_COLLATERAL: &[u8] = include_bytes!("data/tdx/v4-uptodate/collateral.json");
const AT: time::OffsetDateTime = datetime!(2025-06-19 12:00:00 UTC);

fn verify(quote: &[u8]) -> VerifyError {
    let collateral = Collateral::from_json(V4_COLLATERAL).expect("collateral");
    TdxVerifier::intel()
        .verify(quote, &collateral, AT)
        .expect_err("must be refused")
}

/// Offset of the certification data type (outer) in the v4 vector.
const OUTER_CERT_TYPE: usize = 48 + 584 + 4 + 128;
/// Offset of the inner certification data type in the v4 vector (after QE report,
/// its signature, the auth data size and 32 bytes of auth data).
const INNER_CERT_TYPE: usize = OUTER_CERT_TYPE + 6 + 384 + 64 + 2 + 32;

#[test]
fn truncated_quotes_are_malformed() {
    let q = Quote::parse(V4_QUOTE).expect("parses");
    let end = V4_QUOTE.len() - q.trailing_zeros;
    for len in [0, 1, 47, 48, 100, 632, 633, 636, 700, 1100, end - 1] {
        let err = Quote::parse(&V4_QUOTE[..len]).expect_err("truncated");
        assert!(matches!(err, QuoteError::Truncated(_)), "{len}: {err:?}");
        assert_eq!(verify(&V4_QUOTE[..len]).kind(), ErrorKind::Malformed);
    }
    Quote::parse(&V4_QUOTE[..end]).expect("without the padding it still parses");
}

#[test]
fn oversized_and_trailing_data_are_malformed() {
    let mut big = V4_QUOTE.to_vec();
    big.resize(70_000, 0);
    assert!(matches!(
        Quote::parse(&big),
        Err(QuoteError::TooLarge { len: 70_000 })
    ));
    let mut trailing = V5_QUOTE.to_vec();
    trailing.extend_from_slice(b"junk");
    assert!(matches!(
        Quote::parse(&trailing),
        Err(QuoteError::TrailingData { len: 4 })
    ));
    assert_eq!(verify(&trailing).kind(), ErrorKind::Malformed);
}

#[test]
fn wrong_header_fields_are_malformed() {
    let patch = |off: usize, bytes: &[u8]| {
        let mut q = V4_QUOTE.to_vec();
        q[off..off + bytes.len()].copy_from_slice(bytes);
        q
    };
    assert!(matches!(
        Quote::parse(&patch(0, &3u16.to_le_bytes())),
        Err(QuoteError::UnsupportedVersion(3))
    ));
    assert!(matches!(
        Quote::parse(&patch(0, &6u16.to_le_bytes())),
        Err(QuoteError::UnsupportedVersion(6))
    ));
    assert!(matches!(
        Quote::parse(&patch(2, &3u16.to_le_bytes())),
        Err(QuoteError::UnsupportedKeyType(3))
    ));
    assert!(matches!(
        Quote::parse(&patch(4, &0u32.to_le_bytes())),
        Err(QuoteError::NotTdx(0))
    ));
    for q in [
        patch(0, &3u16.to_le_bytes()),
        patch(2, &3u16.to_le_bytes()),
        patch(4, &0u32.to_le_bytes()),
    ] {
        let e = verify(&q);
        assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    }
    // v5: unknown body type and inconsistent body size.
    let mut v5 = V5_QUOTE.to_vec();
    v5[48..50].copy_from_slice(&4u16.to_le_bytes());
    assert!(matches!(
        Quote::parse(&v5),
        Err(QuoteError::UnsupportedBodyType(4))
    ));
    let mut v5 = V5_QUOTE.to_vec();
    v5[50..54].copy_from_slice(&584u32.to_le_bytes());
    assert!(matches!(
        Quote::parse(&v5),
        Err(QuoteError::BodySizeMismatch { .. })
    ));
}

#[test]
fn certification_data_of_the_wrong_type_is_malformed() {
    let mut outer = V4_QUOTE.to_vec();
    outer[OUTER_CERT_TYPE..OUTER_CERT_TYPE + 2].copy_from_slice(&5u16.to_le_bytes());
    assert!(matches!(
        Quote::parse(&outer),
        Err(QuoteError::UnsupportedCertificationData {
            level: "outer",
            found: 5,
            expected: 6
        })
    ));
    let mut inner = V4_QUOTE.to_vec();
    assert_eq!(
        u16::from_le_bytes([inner[INNER_CERT_TYPE], inner[INNER_CERT_TYPE + 1]]),
        5
    );
    inner[INNER_CERT_TYPE..INNER_CERT_TYPE + 2].copy_from_slice(&3u16.to_le_bytes());
    assert!(matches!(
        Quote::parse(&inner),
        Err(QuoteError::UnsupportedCertificationData {
            level: "inner",
            found: 3,
            expected: 5
        })
    ));
    assert_eq!(verify(&outer).kind(), ErrorKind::Malformed);
    assert_eq!(verify(&inner).kind(), ErrorKind::Malformed);
}

#[test]
fn bad_pem_chain_is_malformed() {
    let mut q = Quote::parse(V4_QUOTE).expect("parses");
    q.signature_data.pck_cert_chain =
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec();
    let err = verify(&q.to_bytes().expect("serializes"));
    assert!(matches!(err, VerifyError::PckChain(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Malformed);
    q.signature_data.pck_cert_chain = Vec::new();
    assert_eq!(
        verify(&q.to_bytes().expect("serializes")).kind(),
        ErrorKind::Malformed
    );
}

#[test]
fn collateral_with_missing_fields_is_unavailable() {
    let full: serde_json::Value = serde_json::from_slice(V4_COLLATERAL).expect("json");
    for field in attestation::tdx::collateral::REQUIRED_FIELDS {
        let mut c = full.clone();
        c.as_object_mut().expect("object").remove(field);
        let err = Collateral::from_json(c.to_string().as_bytes()).expect_err("missing field");
        assert!(
            matches!(err, CollateralError::Missing(f) if f == field),
            "{field}: {err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::CollateralUnavailable);
        let mut c = full.clone();
        c[field] = serde_json::Value::String(String::new());
        assert_eq!(
            Collateral::from_json(c.to_string().as_bytes())
                .expect_err("empty")
                .kind(),
            ErrorKind::CollateralUnavailable
        );
    }
}

#[test]
fn collateral_with_bad_contents_is_malformed() {
    let full: serde_json::Value = serde_json::from_slice(V4_COLLATERAL).expect("json");
    let cases: [(&str, serde_json::Value); 6] = [
        ("pck_crl", "zz".into()),
        ("root_ca_crl", "00112233".into()),
        ("tcb_info", "{\"id\":\"TDX\"}".into()),
        ("qe_identity", "not json".into()),
        (
            "tcb_info_issuer_chain",
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n".into(),
        ),
        ("qe_identity_signature", "0011".into()),
    ];
    for (field, value) in cases {
        let mut c = full.clone();
        c[field] = value;
        let err = Collateral::from_json(c.to_string().as_bytes()).expect_err("bad field");
        assert_eq!(err.kind(), ErrorKind::Malformed, "{field}: {err}");
    }
    assert_eq!(
        Collateral::from_json(b"[1,2]")
            .expect_err("not an object")
            .kind(),
        ErrorKind::Malformed
    );
    assert_eq!(
        Collateral::from_json(b"{").expect_err("not json").kind(),
        ErrorKind::Malformed
    );
}

#[test]
fn tampered_collateral_signature_is_bad_signature() {
    let mut c: serde_json::Value = serde_json::from_slice(V4_COLLATERAL).expect("json");
    let sig = c["tcb_info_signature"].as_str().expect("hex").to_string();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    );
    c["tcb_info_signature"] = flipped.into();
    let collateral = Collateral::from_json(c.to_string().as_bytes()).expect("shape is fine");
    let err = TdxVerifier::intel()
        .verify(V4_QUOTE, &collateral, AT)
        .expect_err("bad TCB info signature");
    assert_eq!(err.kind(), ErrorKind::BadSignature, "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes never panic the parser, and whatever parses re-serializes to the
    /// same bytes.
    #[test]
    fn parser_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
        if let Ok(q) = Quote::parse(&bytes) {
            prop_assert_eq!(q.to_bytes().expect("serializes"), bytes);
        }
    }

    /// Random corruptions of a genuine quote before its PEM chain (everything the
    /// signatures and the QE binding cover, and every length and type field) never panic
    /// the verifier and are refused. (The PEM text itself is not signed, only the
    /// certificates it encodes, so e.g. its final NUL may become a newline harmlessly.)
    #[test]
    fn corrupted_quotes_are_refused(pos in 0usize..INNER_CERT_TYPE + 6, val in any::<u8>()) {
        let mut q = V4_QUOTE.to_vec();
        prop_assume!(q[pos] != val);
        q[pos] = val;
        let collateral = Collateral::from_json(V4_COLLATERAL).expect("collateral");
        let r = TdxVerifier::intel().verify(&q, &collateral, AT);
        prop_assert!(r.is_err(), "byte {} set to {} was accepted", pos, val);
    }
}
