//! Genuine Intel TDX quotes and collateral (see tests/data/tdx/PROVENANCE): parsing,
//! exact re-serialization, cross-checks against dcap-qvl's parser, and verification at
//! pinned times.

use attestation::claims::{TeeClaims, TrustLevel};
use attestation::tdx::collateral::Collateral;
use attestation::tdx::quote::{Quote, BODY_TYPE_TD15};
use attestation::tdx::{TcbStatus, TdxVerifier, VerifyError};
use attestation::ErrorKind;
use time::macros::datetime;

const V4_QUOTE: &[u8] = include_bytes!("data/tdx/v4-uptodate/quote.bin");
const V4_COLLATERAL: &[u8] = include_bytes!("data/tdx/v4-uptodate/collateral.json");
const V5_QUOTE: &[u8] = include_bytes!("data/tdx/v5-no-tcb-match/quote.bin");
const V5_COLLATERAL: &[u8] = include_bytes!("data/tdx/v5-no-tcb-match/collateral.json");

fn v4_collateral() -> Collateral {
    Collateral::from_json(V4_COLLATERAL).expect("v4 collateral parses")
}

#[test]
fn v4_parses_and_reserializes_identically() {
    let q = Quote::parse(V4_QUOTE).expect("v4 parses");
    assert_eq!(q.header.version, 4);
    assert_eq!(q.header.tee_type, 0x81);
    assert!(q.body.td15.is_none());
    // The vector carries 70 bytes of zero padding after the signature data.
    assert_eq!(q.trailing_zeros, 70);
    assert_eq!(q.to_bytes().expect("serializes"), V4_QUOTE);
    assert_eq!(q.signed_len(), 48 + 584);
    assert_eq!(hex::encode(q.body.td_attributes), "0000001000000000");
}

#[test]
fn v5_parses_and_reserializes_identically() {
    let q = Quote::parse(V5_QUOTE).expect("v5 parses");
    assert_eq!(q.header.version, 5);
    assert_eq!(q.body_type(), BODY_TYPE_TD15);
    let td15 = q.body.td15.expect("TD 1.5 body");
    assert_eq!(
        hex::encode(td15.tee_tcb_svn2),
        "0d010300000000000000000000000000"
    );
    assert_eq!(td15.mr_service_td, [0u8; 48]);
    assert_eq!(q.trailing_zeros, 0);
    assert_eq!(q.to_bytes().expect("serializes"), V5_QUOTE);
    assert_eq!(q.signed_len(), 48 + 6 + 648);
}

/// Our parser and dcap-qvl's agree on every field of both genuine quotes.
#[test]
fn parser_agrees_with_dcap_qvl() {
    for raw in [V4_QUOTE, V5_QUOTE] {
        let ours = Quote::parse(raw).expect("ours parses");
        let theirs = dcap_qvl::quote::Quote::parse(raw).expect("dcap-qvl parses");
        assert_eq!(ours.header.version, theirs.header.version);
        assert_eq!(
            ours.header.attestation_key_type,
            theirs.header.attestation_key_type
        );
        assert_eq!(ours.header.tee_type, theirs.header.tee_type);
        assert_eq!(ours.header.qe_vendor_id, theirs.header.qe_vendor_id);
        assert_eq!(ours.header.user_data, theirs.header.user_data);
        let td = theirs.report.as_td10().expect("TD report");
        let b = &ours.body;
        assert_eq!(b.tee_tcb_svn, td.tee_tcb_svn);
        assert_eq!(b.mr_seam, td.mr_seam);
        assert_eq!(b.mr_signer_seam, td.mr_signer_seam);
        assert_eq!(b.seam_attributes, td.seam_attributes);
        assert_eq!(b.td_attributes, td.td_attributes);
        assert_eq!(b.xfam, td.xfam);
        assert_eq!(b.mr_td, td.mr_td);
        assert_eq!(b.mr_config_id, td.mr_config_id);
        assert_eq!(b.mr_owner, td.mr_owner);
        assert_eq!(b.mr_owner_config, td.mr_owner_config);
        assert_eq!(b.rtmr, [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3]);
        assert_eq!(b.report_data, td.report_data);
        if let Some(t15) = theirs.report.as_td15() {
            let ours15 = b.td15.expect("ours has TD 1.5 fields");
            assert_eq!(ours15.tee_tcb_svn2, t15.tee_tcb_svn2);
            assert_eq!(ours15.mr_service_td, t15.mr_service_td);
        } else {
            assert!(b.td15.is_none());
        }
        let auth = theirs.auth_data.clone().into_v3();
        let sd = &ours.signature_data;
        assert_eq!(sd.signature, auth.ecdsa_signature);
        assert_eq!(sd.attestation_key, auth.ecdsa_attestation_key);
        assert_eq!(sd.qe_report.to_bytes(), auth.qe_report);
        assert_eq!(sd.qe_report_signature, auth.qe_report_signature);
        assert_eq!(sd.qe_auth_data, auth.qe_auth_data.data);
        assert_eq!(
            sd.pck_cert_chain,
            theirs.raw_cert_chain().expect("type 5 chain")
        );
        assert_eq!(ours.signed_len(), theirs.signed_length());
    }
}

#[test]
fn v4_verifies_up_to_date_on_2025_06_19() {
    let verifier = TdxVerifier::intel();
    let v = verifier
        .verify(
            V4_QUOTE,
            &v4_collateral(),
            datetime!(2025-06-19 12:00:00 UTC),
        )
        .expect("genuine v4 verifies");
    assert_eq!(v.claims.trust, TrustLevel::Hardware);
    assert_eq!(v.claims.measurement, v.quote.body.mr_td.to_vec());
    assert_eq!(v.claims.host_data, v.quote.body.mr_config_id.to_vec());
    assert!(!v.claims.debug);
    let TeeClaims::Tdx(c) = &v.claims.detail else {
        panic!("TDX claims expected")
    };
    assert_eq!(c.tcb_status, TcbStatus::UpToDate);
    assert!(c.advisory_ids.is_empty());
    assert_eq!(hex::encode(c.fmspc), "b0c06f000000");
    assert_eq!(c.pce_svn, 11);
    assert_eq!(c.quote_version, 4);
    assert_eq!(c.body_type, 2);
    assert!(c.td_attributes.sept_ve_disable);
    assert!(!c.td_attributes.debug);
    // The default policy with its MRTD and its RTMR1/RTMR2 (kernel, initrd and command
    // line) accepts it (UpToDate, SEPT_VE_DISABLE, not debug); without a listed
    // measurement, or with the MRTD alone, it refuses.
    let err = attestation::policy::Policy::default()
        .evaluate(&v.claims)
        .expect_err("no measurement listed");
    assert_eq!(err.check, "measurement");
    let mrtd_only = attestation::policy::Policy {
        measurements: vec![v.claims.measurement.clone()],
        ..Default::default()
    };
    let err = mrtd_only.evaluate(&v.claims).expect_err("MRTD alone");
    assert_eq!(err.check, "rtmr-unpinned");
    let mut pinned = mrtd_only;
    pinned.tdx.rtmrs = [1u8, 2]
        .into_iter()
        .map(|index| attestation::policy::tdx::ExpectedRtmr {
            index,
            value: c.rtmrs[usize::from(index)],
        })
        .collect();
    pinned
        .evaluate(&v.claims)
        .expect("default policy with the MRTD, RTMR1 and RTMR2 accepts");
}

#[test]
fn v4_is_refused_throughout_2026() {
    let verifier = TdxVerifier::intel();
    let collateral = v4_collateral();
    for at in [
        datetime!(2026-01-01 00:00:00 UTC),
        datetime!(2026-02-19 00:00:00 UTC),
        datetime!(2026-07-01 12:00:00 UTC),
        datetime!(2026-12-31 23:59:59 UTC),
    ] {
        let err = verifier
            .verify(V4_QUOTE, &collateral, at)
            .expect_err("expired collateral is refused");
        assert_eq!(err.kind(), ErrorKind::UntrustedChain, "{at}: {err}");
    }
    // And a cached success does not outlive the collateral window.
    verifier
        .verify(V4_QUOTE, &collateral, datetime!(2025-06-19 12:00:00 UTC))
        .expect("verifies");
    let err = verifier
        .verify(V4_QUOTE, &collateral, datetime!(2026-01-01 00:00:00 UTC))
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::UntrustedChain);
}

/// The v5 vector's signatures and chain are genuine, but the platform (SEAMLDR ACM SVN 3)
/// meets no TCB level of its TCB info: Intel no longer vouches for that TCB, which no
/// policy can accept and fresher collateral does not change: `UntrustedChain`.
#[test]
fn v5_no_tcb_match_is_refused_as_untrusted() {
    let collateral = Collateral::from_json(V5_COLLATERAL).expect("v5 collateral parses");
    let err = TdxVerifier::intel()
        .verify(V5_QUOTE, &collateral, datetime!(2026-02-19 00:00:00 UTC))
        .expect_err("no TCB level matches");
    assert_eq!(err.kind(), ErrorKind::UntrustedChain, "{err}");
    assert!(
        matches!(
            err,
            VerifyError::Dcap {
                reason: attestation::tdx::verify::DcapRefusal::TcbNotSupported,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn genuine_quote_refused_with_another_root() {
    // An emulated root in place of Intel's: the genuine chain does not lead to it.
    let platform = attestation::tdx::emulated::EmulatedTdxPlatform::generate(
        attestation::tdx::emulated::PlatformOptions::default(),
        datetime!(2025-06-01 00:00:00 UTC),
    )
    .expect("emulated platform");
    let verifier = TdxVerifier::new(platform.trust_root());
    let err = verifier
        .verify(
            V4_QUOTE,
            &v4_collateral(),
            datetime!(2025-06-19 12:00:00 UTC),
        )
        .expect_err("genuine collateral does not chain to the emulated root");
    assert_eq!(err.kind(), ErrorKind::UntrustedChain, "{err}");
}

/// Every byte of the signed region (header and body) and of the QE report, flipped, is
/// refused — including when the platform's DCAP verdict is cached.
#[test]
fn every_flipped_signed_byte_is_refused() {
    let verifier = TdxVerifier::intel();
    let collateral = v4_collateral();
    let at = datetime!(2025-06-19 12:00:00 UTC);
    verifier
        .verify(V4_QUOTE, &collateral, at)
        .expect("baseline verifies and warms the cache");
    let q = Quote::parse(V4_QUOTE).expect("parses");
    let signed = 0..q.signed_len();
    // The QE report starts after the signed region, the signature data length (4), the
    // quote signature and key (128) and the certification data type and size (6).
    let qe_start = q.signed_len() + 4 + 128 + 6;
    let qe = qe_start..qe_start + 384;
    for i in signed.chain(qe) {
        let mut bad = V4_QUOTE.to_vec();
        bad[i] ^= 0x01;
        let err = verifier
            .verify(&bad, &collateral, at)
            .expect_err("a flipped byte is refused");
        assert!(
            matches!(err.kind(), ErrorKind::BadSignature | ErrorKind::Malformed),
            "byte {i}: unexpected {:?}: {err}",
            err.kind()
        );
    }
}

/// The same for the v5 (TD 1.5) vector: its body descriptor, TEE_TCB_SVN2 and
/// MRSERVICETD are signed too. (Unmodified, it is refused only later, for its TCB.)
#[test]
fn every_flipped_signed_byte_of_v5_is_refused_as_bad_signature() {
    let verifier = TdxVerifier::intel();
    let collateral = Collateral::from_json(V5_COLLATERAL).expect("collateral");
    let at = datetime!(2026-02-19 00:00:00 UTC);
    let q = Quote::parse(V5_QUOTE).expect("parses");
    let qe_start = q.signed_len() + 4 + 128 + 6;
    for i in (0..q.signed_len()).chain(qe_start..qe_start + 384) {
        let mut bad = V5_QUOTE.to_vec();
        bad[i] ^= 0x80;
        let err = verifier
            .verify(&bad, &collateral, at)
            .expect_err("a flipped byte is refused");
        assert!(
            matches!(err.kind(), ErrorKind::BadSignature | ErrorKind::Malformed),
            "byte {i}: unexpected {:?}: {err}",
            err.kind()
        );
    }
}

/// Every byte of the PCK leaf and platform CA certificates carried in the quote (the
/// chain's unpinned part), flipped, is refused — also after a successful verification
/// has warmed the verifier's cache, so a cached verdict can never vouch for a different
/// chain. The third certificate is a copy of Intel's root, which the verifier pins: a
/// tampered copy is ignored or refused, never trusted.
#[test]
fn every_flipped_pck_chain_byte_is_refused() {
    let verifier = TdxVerifier::intel();
    let collateral = v4_collateral();
    let at = datetime!(2025-06-19 12:00:00 UTC);
    verifier
        .verify(V4_QUOTE, &collateral, at)
        .expect("baseline verifies and warms the cache");
    let certs: Vec<(usize, usize)> = {
        let (b, e) = (b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----");
        let starts = (0..V4_QUOTE.len()).filter(|&i| V4_QUOTE[i..].starts_with(b));
        let ends = (0..V4_QUOTE.len())
            .filter(|&i| V4_QUOTE[i..].starts_with(e))
            .map(|i| i + e.len());
        starts.zip(ends).collect()
    };
    assert_eq!(certs.len(), 3, "PCK leaf, platform CA, root CA");
    let unpinned = certs[0].0..certs[1].1;
    for i in unpinned.clone() {
        let mut bad = V4_QUOTE.to_vec();
        bad[i] ^= 0x01;
        assert!(
            verifier.verify(&bad, &collateral, at).is_err(),
            "PCK chain byte {i} ({:?}) flipped was accepted",
            V4_QUOTE[i] as char
        );
    }
    for i in certs[2].0..certs[2].1 {
        let mut bad = V4_QUOTE.to_vec();
        bad[i] ^= 0x01;
        if let Ok(v) = verifier.verify(&bad, &collateral, at) {
            // Only possible because the pinned root, not the copy, anchors the chain.
            assert_eq!(v.claims.trust, TrustLevel::Hardware);
        }
    }
    assert!(
        unpinned.len() > 1500,
        "both unpinned certificates were covered"
    );
}
