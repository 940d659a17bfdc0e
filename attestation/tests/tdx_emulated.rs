//! The emulated TDX platform end to end: quotes verify with the emulated root and only
//! with it, measurements are carried through, the serializer round-trips, collateral
//! windows, revocation and TCB statuses behave like Intel's, and the platform persists.

use std::os::unix::fs::PermissionsExt;

use attestation::claims::{TeeClaims, TrustLevel};
use attestation::policy::tdx::{ExpectedEvent, ExpectedRtmr};
use attestation::policy::Policy;
use attestation::tdx::collateral::Collateral;
use attestation::tdx::emulated::{
    CollateralOptions, EmulatedTd, EmulatedTdxPlatform, PlatformOptions, TdConfig,
    EMULATED_ADVISORY,
};
use attestation::tdx::quote::Quote;
use attestation::tdx::verify::DcapRefusal;
use attestation::tdx::{TcbStatus, TdAttributes, TdxClaims, TdxVerifier, VerifyError};
use attestation::ErrorKind;
use measured_boot::tdx::{MemRegion, Mrtd};
use sha2::{Digest, Sha384};
use time::OffsetDateTime;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn platform() -> EmulatedTdxPlatform {
    EmulatedTdxPlatform::generate(PlatformOptions::default(), now()).expect("platform generates")
}

fn firmware_pages() -> Vec<u8> {
    (0..3 * 4096u32)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect()
}

fn launched_td(config: TdConfig) -> EmulatedTd {
    let pages = firmware_pages();
    let regions = [
        MemRegion {
            gpa: 0xffff_d000,
            data: &pages,
            measure: true,
        },
        MemRegion {
            gpa: 0x0080_0000,
            data: &pages[..4096],
            measure: false,
        },
    ];
    EmulatedTd::launch(config, regions)
}

fn tdx(claims: &attestation::claims::Claims) -> &TdxClaims {
    match &claims.detail {
        TeeClaims::Tdx(c) => c,
        TeeClaims::Snp(_) => panic!("expected TDX claims"),
    }
}

fn emulated_policy() -> Policy {
    Policy {
        allow_emulated: true,
        allow_any_measurement: true,
        ..Policy::default()
    }
}

#[test]
fn emulated_quote_verifies_with_the_emulated_root_only() {
    let p = platform();
    let mut td = launched_td(TdConfig::default());
    let digest: [u8; 48] = Sha384::digest(b"kernel").into();
    td.extend_rtmr(1, &digest).expect("RTMR1 exists");
    let report_data = [0x5a; 64];
    let quote = p
        .quote_td(&td, &report_data, 4)
        .expect("quote")
        .to_bytes()
        .expect("serializes");
    let collateral = p
        .collateral(&CollateralOptions::around(now(), 30))
        .expect("collateral");

    let verifier = TdxVerifier::new(p.trust_root());
    let v = verifier
        .verify(&quote, &collateral, now())
        .expect("emulated quote verifies with its root");
    assert_eq!(v.claims.trust, TrustLevel::InsecureEmulated);
    let c = tdx(&v.claims);
    assert_eq!(c.tcb_status, TcbStatus::UpToDate);
    assert!(c.advisory_ids.is_empty());
    assert_eq!(c.fmspc, p.options().fmspc);
    assert_eq!(c.pce_svn, p.options().pce_svn);
    assert_eq!(c.qe_svn, p.options().qe.isv_svn);
    // The platform identity comes from the verified PCK certificate: the emulated
    // platform has a Platform CA certificate, so its platform instance id.
    let id = &v.claims.platform_id;
    assert!(id.starts_with("tdx-platform:"), "{id}");
    assert_eq!(id.len(), "tdx-platform:".len() + 32);

    // MRTD is the measured-boot MRTD of the regions, and RTMR1 the extension.
    let pages = firmware_pages();
    let mut mrtd = Mrtd::new();
    mrtd.add_region(&MemRegion {
        gpa: 0xffff_d000,
        data: &pages,
        measure: true,
    });
    mrtd.add_region(&MemRegion {
        gpa: 0x0080_0000,
        data: &pages[..4096],
        measure: false,
    });
    assert_eq!(v.claims.measurement, mrtd.value().to_vec());
    let mut rtmr1 = [0u8; 48];
    measured_boot::tdx::rtmr_extend(&mut rtmr1, &digest);
    assert_eq!(c.rtmrs[1], rtmr1);
    assert_eq!(c.rtmrs[0], [0u8; 48]);
    assert_eq!(v.claims.report_data, report_data.to_vec());

    // The default policy refuses emulated evidence; allowing it, the rest passes.
    let err = Policy::default()
        .evaluate(&v.claims)
        .expect_err("emulated refused by default");
    assert_eq!(err.check, "trust-anchor");
    emulated_policy()
        .evaluate(&v.claims)
        .expect("policy with allow_emulated accepts");

    // Intel's root does not vouch for it.
    let err = TdxVerifier::intel()
        .verify(&quote, &collateral, now())
        .expect_err("refused without the emulated root");
    assert_eq!(err.kind(), ErrorKind::UntrustedChain, "{err}");
    // Nor does another emulated platform's root.
    let other = platform();
    let err = TdxVerifier::new(other.trust_root())
        .verify(&quote, &collateral, now())
        .expect_err("other root");
    assert_eq!(err.kind(), ErrorKind::UntrustedChain, "{err}");
}

#[test]
fn v4_and_v5_quotes_round_trip_and_verify() {
    let p = platform();
    let td = launched_td(TdConfig {
        mr_config_id: [7; 48],
        mr_owner: [8; 48],
        ..TdConfig::default()
    });
    let collateral = p
        .collateral(&CollateralOptions::around(now(), 30))
        .expect("collateral");
    let verifier = TdxVerifier::new(p.trust_root());
    for version in [4u16, 5] {
        let q = p.quote_td(&td, &[1; 64], version).expect("quote");
        let bytes = q.to_bytes().expect("serializes");
        let parsed = Quote::parse(&bytes).expect("parses");
        assert_eq!(parsed, q, "parse(serialize(x)) == x for v{version}");
        assert_eq!(parsed.to_bytes().expect("serializes"), bytes);
        // dcap-qvl's parser reads our bytes too.
        let theirs = dcap_qvl::quote::Quote::parse(&bytes).expect("dcap-qvl parses our quote");
        assert_eq!(theirs.report.as_td10().expect("TD body").mr_td, td.mrtd());
        let v = verifier
            .verify(&bytes, &collateral, now())
            .expect("verifies");
        let c = tdx(&v.claims);
        assert_eq!(c.quote_version, version);
        assert_eq!(c.body_type, if version == 5 { 3 } else { 2 });
        assert_eq!(c.mr_service_td.is_some(), version == 5);
        assert_eq!(v.claims.host_data, vec![7; 48]);
        assert_eq!(c.mr_owner, [8; 48]);
    }
    assert!(matches!(
        p.quote_td(&td, &[0; 64], 3),
        Err(attestation::tdx::emulated::EmulatedError::QuoteVersion(3))
    ));
}

#[test]
fn collateral_validity_window_and_revocation() {
    let p = platform();
    let td = launched_td(TdConfig::default());
    let quote = p
        .quote_td(&td, &[2; 64], 4)
        .expect("quote")
        .to_bytes()
        .expect("bytes");
    let t0 = now();
    let collateral = p
        .collateral(&CollateralOptions::around(t0, 30))
        .expect("collateral");
    let verifier = TdxVerifier::new(p.trust_root());
    verifier
        .verify(&quote, &collateral, t0 + time::Duration::days(29))
        .expect("inside the window");
    for at in [t0 + time::Duration::days(31), t0 - time::Duration::days(2)] {
        let err = verifier
            .verify(&quote, &collateral, at)
            .expect_err("outside the window");
        assert_eq!(err.kind(), ErrorKind::UntrustedChain, "{at}: {err}");
    }
    let revoked = p
        .collateral(&CollateralOptions {
            revoke_pck: true,
            ..CollateralOptions::around(t0, 30)
        })
        .expect("revoking");
    let err = verifier
        .verify(&quote, &revoked, t0)
        .expect_err("revoked PCK");
    assert_eq!(err.kind(), ErrorKind::UntrustedChain, "{err}");
}

#[test]
fn out_of_date_platform_is_reported_and_refused_by_default() {
    let p = platform();
    let quote = p
        .quote_td(&launched_td(TdConfig::default()), &[3; 64], 4)
        .expect("quote")
        .to_bytes()
        .expect("bytes");
    let opts = CollateralOptions {
        platform_out_of_date: true,
        ..CollateralOptions::around(now(), 30)
    };
    let collateral = p.collateral(&opts).expect("collateral");
    let v = TdxVerifier::new(p.trust_root())
        .verify(&quote, &collateral, now())
        .expect("authentic");
    let c = tdx(&v.claims);
    assert_eq!(c.tcb_status, TcbStatus::OutOfDate);
    assert_eq!(c.advisory_ids, vec![EMULATED_ADVISORY.to_string()]);
    let err = emulated_policy()
        .evaluate(&v.claims)
        .expect_err("OutOfDate refused by default");
    assert_eq!(err.check, "tcb-status");
    let mut policy = emulated_policy();
    policy.tdx.allowed_tcb_statuses.push(TcbStatus::OutOfDate);
    policy
        .evaluate(&v.claims)
        .expect("OutOfDate allowed explicitly");
    policy.tdx.allowed_advisory_ids = Some(vec!["INTEL-SA-00837".into()]);
    assert_eq!(
        policy
            .evaluate(&v.claims)
            .expect_err("advisory not allowed")
            .check,
        "advisory-ids"
    );
}

#[test]
fn debug_and_attribute_rules() {
    let p = platform();
    let collateral = p
        .collateral(&CollateralOptions::around(now(), 30))
        .expect("collateral");
    let verifier = TdxVerifier::new(p.trust_root());

    let debug = launched_td(TdConfig {
        attributes: TdAttributes::SEPT_VE_DISABLE | TdAttributes::DEBUG,
        ..TdConfig::default()
    });
    let quote = p
        .quote_td(&debug, &[0; 64], 4)
        .expect("quote")
        .to_bytes()
        .expect("bytes");
    let v = verifier
        .verify(&quote, &collateral, now())
        .expect("a debug TD's quote is authentic");
    assert!(v.claims.debug);
    assert!(tdx(&v.claims).td_attributes.debug);
    assert_eq!(
        emulated_policy()
            .evaluate(&v.claims)
            .expect_err("debug refused")
            .check,
        "debug"
    );
    Policy {
        allow_debug: true,
        ..emulated_policy()
    }
    .evaluate(&v.claims)
    .expect("debug allowed explicitly");

    let no_sept = launched_td(TdConfig {
        attributes: 0,
        ..TdConfig::default()
    });
    let quote = p
        .quote_td(&no_sept, &[0; 64], 4)
        .expect("quote")
        .to_bytes()
        .expect("bytes");
    let err = verifier
        .verify(&quote, &collateral, now())
        .expect_err("SEPT_VE_DISABLE clear is refused");
    assert_eq!(err.kind(), ErrorKind::PolicyNotMet, "{err}");
    assert!(
        matches!(
            err,
            VerifyError::Dcap {
                reason: DcapRefusal::TdAttributes,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn rtmr_and_event_log_policy() {
    let p = platform();
    let mut td = launched_td(TdConfig::default());
    let events: Vec<(u8, [u8; 48])> = vec![
        (0, Sha384::digest(b"config").into()),
        (1, Sha384::digest(b"kernel").into()),
        (1, Sha384::digest(b"initrd").into()),
    ];
    for (i, d) in &events {
        td.extend_rtmr(usize::from(*i), d).expect("extend");
    }
    let quote = p
        .quote_td(&td, &[0; 64], 4)
        .expect("quote")
        .to_bytes()
        .expect("bytes");
    let collateral = p
        .collateral(&CollateralOptions::around(now(), 30))
        .expect("collateral");
    let v = TdxVerifier::new(p.trust_root())
        .verify(&quote, &collateral, now())
        .expect("verifies");

    let mut policy = emulated_policy();
    policy.tdx.event_log = events
        .iter()
        .map(|(rtmr, digest)| ExpectedEvent {
            rtmr: *rtmr,
            digest: *digest,
        })
        .collect();
    policy.tdx.rtmrs = vec![ExpectedRtmr {
        index: 3,
        value: [0; 48],
    }];
    policy.measurements = vec![td.mrtd().to_vec()];
    policy
        .evaluate(&v.claims)
        .expect("replayed event log matches");

    // A missing event, a reordered log, or a wrong RTMR value is refused, naming the check.
    let mut missing = policy.clone();
    missing.tdx.event_log.pop();
    assert_eq!(
        missing
            .evaluate(&v.claims)
            .expect_err("missing event")
            .check,
        "event-log"
    );
    let mut reordered = policy.clone();
    reordered.tdx.event_log.swap(1, 2);
    assert_eq!(
        reordered.evaluate(&v.claims).expect_err("reordered").check,
        "event-log"
    );
    let mut wrong = policy.clone();
    wrong.tdx.rtmrs = vec![ExpectedRtmr {
        index: 1,
        value: [0; 48],
    }];
    assert_eq!(
        wrong.evaluate(&v.claims).expect_err("wrong RTMR1").check,
        "rtmr"
    );
    let mut other_mrtd = policy.clone();
    other_mrtd.allow_any_measurement = false;
    other_mrtd.measurements = vec![vec![0; 48]];
    assert_eq!(
        other_mrtd
            .evaluate(&v.claims)
            .expect_err("other MRTD")
            .check,
        "measurement"
    );
    let mut min_svn = policy.clone();
    min_svn.tdx.min_tee_tcb_svn = Some([6, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        min_svn
            .evaluate(&v.claims)
            .expect_err("TEE TCB SVN too low")
            .check,
        "min-tee-tcb-svn"
    );
    min_svn.tdx.min_tee_tcb_svn = Some([6, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    min_svn
        .evaluate(&v.claims)
        .expect("TEE TCB SVN meets the minimum");
    let mut owner = policy;
    owner.tdx.mr_owner = Some([1; 48]);
    assert_eq!(
        owner.evaluate(&v.claims).expect_err("MROWNER").check,
        "mr-owner"
    );
}

#[test]
fn verification_cache_serves_new_quotes_of_a_known_platform() {
    let p = platform();
    let collateral = p
        .collateral(&CollateralOptions::around(now(), 30))
        .expect("collateral");
    let verifier = TdxVerifier::new(p.trust_root());
    let td = launched_td(TdConfig::default());
    for i in 0..4u8 {
        let quote = p
            .quote_td(&td, &[i; 64], 4)
            .expect("quote")
            .to_bytes()
            .expect("bytes");
        let v = verifier
            .verify(&quote, &collateral, now())
            .expect("verifies");
        assert_eq!(v.claims.report_data, vec![i; 64]);
    }
    assert_eq!(
        verifier.cached_entries(),
        1,
        "one platform, one collateral: one cached verification"
    );
    // A cached platform still needs a valid quote signature.
    let mut bad = p
        .quote_td(&td, &[9; 64], 4)
        .expect("quote")
        .to_bytes()
        .expect("bytes");
    bad[48 + 520] ^= 1; // REPORTDATA
    assert_eq!(
        verifier
            .verify(&bad, &collateral, now())
            .expect_err("tampered")
            .kind(),
        ErrorKind::BadSignature
    );
}

#[test]
fn tdreport_from_another_module_is_not_quoted() {
    let p = platform();
    let other = platform();
    let td = launched_td(TdConfig::default());
    let report = other.module().report(&td, &[0; 64]).expect("report");
    assert!(other.module().verify_report(&report));
    assert!(!p.module().verify_report(&report));
    assert!(matches!(
        p.quote(&report, 4),
        Err(attestation::tdx::emulated::EmulatedError::ReportMac)
    ));
    // A TDREPORT round-trips through its 1024-byte form.
    let bytes = report.to_bytes();
    assert_eq!(bytes.len(), 1024);
    assert_eq!(
        attestation::tdx::report::TdReport::from_bytes(&bytes).expect("parses"),
        report
    );
}

#[test]
fn platform_persists_with_private_keys_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let created = EmulatedTdxPlatform::create(dir.path()).expect("create");
    let tdx_dir = dir.path().join("tdx");
    for name in [
        "root_ca.key",
        "pck_platform_ca.key",
        "pck.key",
        "tcb_signing.key",
        "attestation_key.key",
        "report_mac.key",
    ] {
        let mode = std::fs::metadata(tdx_dir.join(name))
            .expect("key file")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    let root_pem = std::fs::read(tdx_dir.join("root_ca.pem")).expect("root_ca.pem");
    assert!(
        EmulatedTdxPlatform::create(dir.path()).is_err(),
        "create refuses to overwrite"
    );

    let opened = EmulatedTdxPlatform::open(dir.path()).expect("open");
    assert_eq!(opened.options(), created.options());
    let td = launched_td(TdConfig::default());
    let quote = opened
        .quote_td(&td, &[4; 64], 4)
        .expect("quote")
        .to_bytes()
        .expect("bytes");
    let collateral_json = opened
        .collateral(&CollateralOptions::default())
        .expect("collateral")
        .to_json()
        .expect("json");
    let collateral = Collateral::from_json(collateral_json.as_bytes()).expect("parses");
    let root = attestation::tdx::TrustRoot::emulated_from_bytes(&root_pem).expect("root loads");
    TdxVerifier::new(root)
        .verify(&quote, &collateral, now())
        .expect("a reopened platform's quote verifies");
    // A report made by the original module is quoted by the reopened one (same MAC key).
    let report = created.module().report(&td, &[5; 64]).expect("report");
    opened
        .quote(&report, 4)
        .expect("same module key after reopening");
}

/// A TD launched from a measured-boot launch plan (synthetic OVMF-like firmware with
/// measured direct boot): the quote carries the plan's MRTD and RTMRs, and the plan's
/// event log, given to the policy, replays to the quoted RTMRs.
#[test]
fn td_from_a_launch_plan_carries_its_measurements() {
    use measured_boot::tdx::{DirectBoot, TdxLaunchPlan};
    let fw = measured_boot::FirmwareImage::parse(measured_boot::testing::ovmf_like(0x10000))
        .expect("firmware");
    let boot = DirectBoot::measure(
        b"kernel image",
        Some(b"initrd image"),
        Some("console=ttyS0"),
    );
    let plan = TdxLaunchPlan::new(fw, Some(boot)).expect("plan");
    let td = EmulatedTd::from_plan(TdConfig::default(), &plan);
    assert_eq!(td.mrtd(), plan.mrtd());

    let p = platform();
    let quote = p
        .quote_td(&td, &[6; 64], 4)
        .expect("quote")
        .to_bytes()
        .expect("bytes");
    let collateral = p
        .collateral(&CollateralOptions::around(now(), 30))
        .expect("collateral");
    let v = TdxVerifier::new(p.trust_root())
        .verify(&quote, &collateral, now())
        .expect("verifies");
    assert_eq!(v.claims.measurement, plan.mrtd().to_vec());
    assert_eq!(*tdx(&v.claims).rtmrs, plan.rtmrs());

    let mut policy = emulated_policy();
    policy.measurements = vec![plan.mrtd().to_vec()];
    policy.tdx.event_log = plan
        .event_log()
        .events
        .iter()
        .filter_map(|e| {
            Some(ExpectedEvent {
                rtmr: u8::try_from(e.rtmr()?).ok()?,
                digest: e.digest,
            })
        })
        .collect();
    assert!(
        !policy.tdx.event_log.is_empty(),
        "direct boot measures events"
    );
    policy
        .evaluate(&v.claims)
        .expect("the plan's event log replays to the quoted RTMRs");
    let other = DirectBoot::measure(
        b"another kernel",
        Some(b"initrd image"),
        Some("console=ttyS0"),
    );
    let other_plan = TdxLaunchPlan::new(
        measured_boot::FirmwareImage::parse(measured_boot::testing::ovmf_like(0x10000))
            .expect("fw"),
        Some(other),
    )
    .expect("plan");
    policy.tdx.event_log = other_plan
        .event_log()
        .events
        .iter()
        .filter_map(|e| {
            Some(ExpectedEvent {
                rtmr: u8::try_from(e.rtmr()?).ok()?,
                digest: e.digest,
            })
        })
        .collect();
    assert_eq!(
        policy
            .evaluate(&v.claims)
            .expect_err("another kernel")
            .check,
        "event-log"
    );
}
