//! The verifier keeps one `AttestationVerifier` for its lifetime, and the `attestation`
//! crate behind it caches verified SNP certificate chains (keyed by SHA-384 of the exact
//! VCEK DER; the trust anchors are fixed per verifier). These tests check that the cache
//! never changes a verdict: a verifier that has just accepted genuine evidence (its cache
//! warm) and a fresh one (cold) agree on every variant below, and the variants that must
//! be refused are — a bad report signature, a leaf from another platform, an expired or
//! not-yet-valid chain, a revoked intermediate (CRL in the certificate table), a stale
//! CRL, anchors that do not include the platform.

mod common;

use attestation::claims::Tee;
use attestation::snp::emulated::EmulatedSnpPlatform;
use attestation::snp::{CertTable, CertTableEntry, CertTableKind};
use attestation::ErrorKind;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use serde_json::json;
use time::OffsetDateTime;
use verifier::client::emulated::SnpGuest;
use verifier::evidence::{AttestationVerifier, EvidenceVerifier, VerifyFailure};

const REPORT_DATA: [u8; 64] = [0x42; 64];

fn evidence(report: &[u8], table: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({"report": B64.encode(report), "cert_chain": B64.encode(table)}))
        .unwrap()
}

/// `table` with the certificate of `kind` replaced by `with`'s.
fn swap(table: &[u8], kind: CertTableKind, with: &[u8]) -> Vec<u8> {
    let mut t = CertTable::parse(table).unwrap();
    let donor = CertTable::parse(with).unwrap();
    let data = donor.get(kind).unwrap().to_vec();
    t.entries.iter_mut().find(|e| e.kind == kind).unwrap().data = data;
    t.to_bytes().unwrap()
}

fn trusted() -> AttestationVerifier {
    AttestationVerifier::new(&[emulated_dir()]).unwrap()
}

/// The verdict of a warm and of a cold verifier, which must agree.
fn verdict(warm: &AttestationVerifier, ev: &[u8], at: OffsetDateTime) -> Result<(), ErrorKind> {
    let kind = |r: Result<_, VerifyFailure>| r.map(|_| ()).map_err(|f| f.kind);
    let w = kind(warm.verify(Tee::Snp, ev, &REPORT_DATA, at));
    let c = kind(trusted().verify(Tee::Snp, ev, &REPORT_DATA, at));
    assert_eq!(w, c, "the chain cache changed the verdict");
    w
}

#[test]
fn a_cached_chain_never_changes_a_verdict() {
    let now = OffsetDateTime::now_utc();
    let (report, table) = snp_guest().extended_report(&REPORT_DATA).unwrap();
    let other = SnpGuest::open(&untrusted_dir(), MEASUREMENT).unwrap();
    let (other_report, other_table) = other.extended_report(&REPORT_DATA).unwrap();

    let warm = trusted();
    let genuine = evidence(&report, &table);
    warm.verify(Tee::Snp, &genuine, &REPORT_DATA, now)
        .expect("genuine evidence");
    assert_eq!(verdict(&warm, &genuine, now), Ok(()));

    // The report's signature is checked on every use: a flipped signed byte (FAMILY_ID),
    // a flipped signature byte.
    let mut flipped = report.clone();
    flipped[0x10] ^= 1;
    assert_eq!(
        verdict(&warm, &evidence(&flipped, &table), now),
        Err(ErrorKind::BadSignature)
    );
    let mut sig = report.clone();
    sig[0x2a0 + 10] ^= 1; // the signature itself
    assert_eq!(
        verdict(&warm, &evidence(&sig, &table), now),
        Err(ErrorKind::BadSignature)
    );

    // Validity is checked on every use: the VCEK (7 years) expired, every certificate
    // expired, none yet valid.
    for at in [
        now + time::Duration::days(8 * 366),
        now + time::Duration::days(30 * 366),
        time::macros::datetime!(2000-01-01 0:00 UTC),
    ] {
        assert_eq!(
            verdict(&warm, &genuine, at),
            Err(ErrorKind::UntrustedChain),
            "at {at}"
        );
    }

    // Revocation is checked on every use: a current CRL from the ARK revoking the ASK;
    // a stale one.
    let platform = EmulatedSnpPlatform::open(&emulated_dir()).unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let sys_now = std::time::SystemTime::now();
    for (this_update, next_update, want) in [
        (
            sys_now - hour,
            sys_now + 24 * hour,
            ErrorKind::UntrustedChain,
        ),
        (
            sys_now - 48 * hour,
            sys_now - 24 * hour,
            ErrorKind::CollateralUnavailable,
        ),
    ] {
        let crl = platform
            .crl(&[platform.ask()], this_update, next_update)
            .unwrap();
        let mut t = CertTable::parse(&table).unwrap();
        t.entries.push(CertTableEntry {
            kind: CertTableKind::Crl,
            data: crl.der().to_vec(),
        });
        let ev = evidence(&report, &t.to_bytes().unwrap());
        assert_eq!(verdict(&warm, &ev, now), Err(want));
    }

    // Another platform's leaf, alone or under the trusted platform's ASK and ARK, and
    // another platform's whole chain: refused (its report signature would verify
    // against its own VCEK).
    for t in [
        other_table.clone(),
        swap(&table, CertTableKind::Vcek, &other_table),
    ] {
        let v = verdict(&warm, &evidence(&other_report, &t), now);
        assert!(
            matches!(v, Err(ErrorKind::UntrustedChain | ErrorKind::BadSignature)),
            "{v:?}"
        );
    }
    // The trusted leaf presented under another platform's ASK: the leaf is the one
    // verified before, so the verdict is the cold verifier's (which also finds the ASK
    // among its trust anchors).
    let mixed = evidence(&report, &swap(&table, CertTableKind::Ask, &other_table));
    let _ = verdict(&warm, &mixed, now);
    // The trusted platform's report under the other platform's VCEK: the signature
    // does not verify.
    let v = verdict(
        &warm,
        &evidence(&report, &swap(&table, CertTableKind::Vcek, &other_table)),
        now,
    );
    assert!(v.is_err(), "{v:?}");

    // The same verifier, still warm, accepts the genuine evidence again.
    assert_eq!(verdict(&warm, &genuine, now), Ok(()));
}

/// Trust anchors are fixed per verifier, and so is its cache: a verifier built without
/// the platform's anchor refuses evidence another verifier has cached.
#[test]
fn a_cache_does_not_outlive_its_trust_anchors() {
    let now = OffsetDateTime::now_utc();
    let (report, table) = snp_guest().extended_report(&REPORT_DATA).unwrap();
    let ev = evidence(&report, &table);
    let warm = trusted();
    warm.verify(Tee::Snp, &ev, &REPORT_DATA, now).unwrap();
    for anchors in [vec![], vec![untrusted_dir()]] {
        let other = AttestationVerifier::new(&anchors).unwrap();
        // No anchor: untrusted root; the other platform's anchor (same names, another
        // key): the chain signature does not verify.
        let v = other.verify(Tee::Snp, &ev, &REPORT_DATA, now).map(|_| ());
        assert!(
            matches!(
                v.as_ref().map_err(|f| f.kind),
                Err(ErrorKind::UntrustedChain | ErrorKind::BadSignature)
            ),
            "{v:?}"
        );
    }
    assert!(warm.verify(Tee::Snp, &ev, &REPORT_DATA, now).is_ok());
}
