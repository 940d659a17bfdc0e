//! Tampering and malformed input: every byte of the report and of the VCEK, flipped,
//! is refused without a panic; malformed inputs fail with the right error kind.

use attestation::snp::emulated::ReportRequest;
use attestation::snp::report::REPORT_LEN;
use attestation::snp::{AmdCertificate, Product, SnpCollateral, SnpVerifier, SnpVerifyError};
use attestation::ErrorKind;
use time::macros::datetime;

mod snp_common;
use snp_common::{data, emulated_verifier, platform};

const MILAN_TIME: time::OffsetDateTime = datetime!(2024-06-01 00:00 UTC);

fn milan() -> (Vec<u8>, SnpCollateral, SnpVerifier) {
    let mut c = SnpCollateral::new();
    c.set_vek(AmdCertificate::from_der(&data("milan-v2/vcek.der")).expect("VCEK"));
    c.add_certificates(&data("milan-v2/ask_ark.pem"), "chain")
        .expect("chain");
    (
        data("milan-v2/report.bin"),
        c,
        SnpVerifier::amd().expect("roots"),
    )
}

/// Exhaustive: every byte of the whole report (signed region, signature and its
/// reserved tail), with two different flips each.
#[test]
fn every_report_byte_flipped_is_refused() {
    let (report, c, v) = milan();
    v.verify(&report, &c, MILAN_TIME)
        .expect("the untampered report verifies");
    for mask in [0x01u8, 0x80] {
        for i in 0..REPORT_LEN {
            let mut b = report.clone();
            b[i] ^= mask;
            let err = v
                .verify(&b, &c, MILAN_TIME)
                .expect_err("tampered report must be refused");
            assert_ne!(
                err.kind(),
                ErrorKind::CollateralUnavailable,
                "byte {i:#x}: {err}"
            );
        }
    }
}

#[test]
fn every_emulated_v5_report_byte_flipped_is_refused() {
    let p = platform(Product::Milan);
    let guest = p
        .launch_start(0x30000)
        .expect("start")
        .finish(Default::default())
        .expect("finish");
    let report = guest
        .report(&ReportRequest {
            report_data: [3; 64],
            vmpl: 0,
            version: 5,
        })
        .expect("report");
    let v = emulated_verifier(p);
    let mut c = SnpCollateral::new();
    c.add_cert_table(&p.cert_table()).expect("table");
    let now = time::OffsetDateTime::now_utc();
    v.verify(&report, &c, now).expect("untampered verifies");
    for i in 0..REPORT_LEN {
        let mut b = report;
        b[i] ^= 0x01;
        assert!(
            v.verify(&b, &c, now).is_err(),
            "byte {i:#x} flipped was accepted"
        );
    }
}

/// Exhaustive over the VCEK DER: each flipped certificate either fails to parse
/// (malformed) or fails verification; none is accepted and none panics.
#[test]
fn every_vcek_byte_flipped_is_refused() {
    let (report, chain, v) = milan();
    let vcek = data("milan-v2/vcek.der");
    for i in 0..vcek.len() {
        let mut der = vcek.clone();
        der[i] ^= 0x01;
        let cert = match AmdCertificate::from_der(&der) {
            Ok(c) => c,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Malformed);
                continue;
            }
        };
        let mut c = chain.clone();
        c.set_vek(cert);
        assert!(
            v.verify(&report, &c, MILAN_TIME).is_err(),
            "VCEK byte {i} flipped was accepted"
        );
    }
}

/// A tampered copy of the ASK supplied with the evidence is never used (its signature
/// fails) and cannot displace the pinned ASK.
#[test]
fn tampered_supplied_ask_cannot_displace_the_pinned_one() {
    let (report, _, _) = milan();
    let chain = data("milan-v2/ask_ark.pem");
    let certs = AmdCertificate::parse_all(&chain).expect("chain");
    let ask = certs
        .iter()
        .find(|c| c.kind() == attestation::snp::CertKind::Ask)
        .expect("ASK")
        .der()
        .to_vec();
    let vcek = AmdCertificate::from_der(&data("milan-v2/vcek.der")).expect("VCEK");
    for i in (0..ask.len()).step_by(7) {
        let mut der = ask.clone();
        der[i] ^= 0x04;
        let Ok(cert) = AmdCertificate::from_der(&der) else {
            continue;
        };
        let mut c = SnpCollateral::new();
        c.set_vek(vcek.clone());
        c.add_certificate(cert);
        // The pinned ASK still lets the genuine chain verify: tampering with the
        // supplied copy cannot make a bad report good, and cannot break a good one.
        let fresh = SnpVerifier::amd().expect("roots");
        fresh
            .verify(&report, &c, MILAN_TIME)
            .expect("pinned ASK still verifies the VCEK");
    }
}

#[test]
fn malformed_reports_fail_with_malformed() {
    let (report, c, v) = milan();
    let kind = |b: &[u8]| v.verify(b, &c, MILAN_TIME).expect_err("refused").kind();
    assert_eq!(
        kind(&report[..REPORT_LEN - 1]),
        ErrorKind::Malformed,
        "truncated"
    );
    assert_eq!(kind(&[]), ErrorKind::Malformed, "empty");
    let mut long = report.clone();
    long.push(0);
    assert_eq!(kind(&long), ErrorKind::Malformed, "oversized");
    for version in [1u32, 4, 6] {
        let mut b = report.clone();
        b[..4].copy_from_slice(&version.to_le_bytes());
        assert_eq!(kind(&b), ErrorKind::Malformed, "version {version}");
    }
    let mut b = report.clone();
    b[0x34] = 2;
    let err = v.verify(&b, &c, MILAN_TIME).expect_err("refused");
    assert!(
        matches!(err, SnpVerifyError::SignatureAlgorithm(2)),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Malformed);
    for off in [0x4C, 0x190, 0x1EB, 0x250, 0x400] {
        let mut b = report.clone();
        b[off] = 0x55;
        assert_eq!(kind(&b), ErrorKind::Malformed, "reserved byte {off:#x}");
    }
    let mut b = report.clone();
    b[0x48] = 7 << 2; // SIGNING_KEY none
    assert_eq!(kind(&b), ErrorKind::BadSignature, "unsigned report");
}

#[test]
fn malformed_certificates_fail_with_malformed() {
    let (report, _, v) = milan();
    let mut c = SnpCollateral::new();
    let err = c
        .add_certificates(&data("milan-v2/vcek.der")[..500], "VCEK")
        .expect_err("truncated DER");
    assert_eq!(err.kind(), ErrorKind::Malformed);
    let err = c.add_certificates(
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        "VCEK",
    );
    assert_eq!(err.expect_err("bad PEM").kind(), ErrorKind::Malformed);
    // No VCEK at all: collateral unavailable.
    let err = v
        .verify(&report, &SnpCollateral::new(), MILAN_TIME)
        .expect_err("no VCEK");
    assert_eq!(err.kind(), ErrorKind::CollateralUnavailable);
    // The VLEK of another report in the VCEK slot: wrong kind.
    let mut c = SnpCollateral::new();
    c.set_vek(AmdCertificate::from_der(&data("milan-vlek-v3/vlek.der")).expect("VLEK"));
    let err = v.verify(&report, &c, MILAN_TIME).expect_err("wrong kind");
    assert!(matches!(err, SnpVerifyError::WrongCertKind { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::UntrustedChain);
    // The Turin VCEK for a Milan report: another chip, another product.
    let mut c = SnpCollateral::new();
    c.set_vek(AmdCertificate::from_der(&data("turin-chain/vcek.der")).expect("Turin VCEK"));
    let err = v
        .verify(&report, &c, datetime!(2025-06-01 00:00 UTC))
        .expect_err("another chip");
    assert_eq!(err.kind(), ErrorKind::UntrustedChain, "{err}");
}
