//! The emulated SNP secure processor: its reports verify with the operator's trust
//! anchor and are refused without it; the measurement is the launch digest of the plan
//! fed in; v3 and v5 reports round-trip exactly.

use std::time::{Duration, SystemTime};

use attestation::claims::{TeeClaims, TrustLevel};
use attestation::snp::emulated::{
    sign_id_auth, EmulatedError, EmulatedSnpPlatform, FinishParams, IdBlock, ReportRequest,
};
use attestation::snp::{
    AttestationReport, CertKind, CertTable, Product, SnpCollateral, SnpVerifier, SnpVerifyError,
};
use attestation::ErrorKind;
use measured_boot::snp::{LaunchDigest, LaunchUpdate, PageType, UpdateContents};

mod snp_common;
use snp_common::{emulated_verifier, platform};

fn pages(fill: u8, n: usize) -> Vec<u8> {
    vec![fill; 4096 * n]
}

/// A small launch: firmware pages, a zero page, a secrets page, a CPUID page, a VMSA.
fn updates<'a>(fw: &'a [u8], vmsa: &'a [u8]) -> Vec<LaunchUpdate<'a>> {
    vec![
        LaunchUpdate {
            gpa: 0xFFE0_0000,
            page_type: PageType::Normal,
            contents: UpdateContents::Data(fw),
        },
        LaunchUpdate {
            gpa: 0x80_0000,
            page_type: PageType::Zero,
            contents: UpdateContents::Absent { pages: 2 },
        },
        LaunchUpdate {
            gpa: 0x80_2000,
            page_type: PageType::Secrets,
            contents: UpdateContents::Absent { pages: 1 },
        },
        LaunchUpdate {
            gpa: 0x80_3000,
            page_type: PageType::Cpuid,
            contents: UpdateContents::Absent { pages: 1 },
        },
        LaunchUpdate {
            gpa: 0,
            page_type: PageType::Vmsa,
            contents: UpdateContents::Data(vmsa),
        },
    ]
}

fn launch(
    p: &EmulatedSnpPlatform,
    host_data: [u8; 32],
) -> (attestation::snp::emulated::EmulatedGuest<'_>, [u8; 48]) {
    let (fw, vmsa) = (pages(0xAB, 3), pages(0x01, 1));
    let ups = updates(&fw, &vmsa);
    let mut expected = LaunchDigest::new();
    for u in &ups {
        expected.update(u);
    }
    let mut l = p.launch_start(0x30000).expect("policy accepted");
    for u in &ups {
        l.update(u);
    }
    let guest = l
        .finish(FinishParams {
            host_data,
            ..FinishParams::default()
        })
        .expect("finish");
    (guest, expected.value())
}

fn collateral(p: &EmulatedSnpPlatform) -> SnpCollateral {
    let mut c = SnpCollateral::new();
    c.add_cert_table(&p.cert_table())
        .expect("certificate table");
    c
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

#[test]
fn emulated_report_verifies_with_the_trust_root_and_not_without() {
    for product in [Product::Milan, Product::Turin] {
        let p = platform(product);
        let (guest, expected) = launch(p, [7; 32]);
        assert_eq!(
            guest.measurement(),
            expected,
            "measurement is the launch digest of the updates fed in"
        );
        for version in [3, 5] {
            let report = guest
                .report(&ReportRequest {
                    report_data: [9; 64],
                    vmpl: 0,
                    version,
                })
                .expect("report");
            let claims = emulated_verifier(p)
                .verify(&report, &collateral(p), now())
                .expect("verifies");
            assert_eq!(claims.trust, TrustLevel::InsecureEmulated);
            assert_eq!(claims.measurement, expected.to_vec());
            assert_eq!(claims.report_data, vec![9; 64]);
            assert_eq!(claims.host_data, vec![7; 32]);
            let TeeClaims::Snp(snp) = &claims.detail else {
                panic!("SNP claims expected")
            };
            assert_eq!(snp.product, product);
            assert_eq!(snp.version, version);
            assert_eq!(snp.reported_tcb, p.tcb());
            assert_eq!(snp.chip_id, p.chip_id().to_vec());
            // The default policy refuses emulated evidence.
            let err = attestation::policy::Policy::default()
                .evaluate(&claims)
                .expect_err("emulated refused");
            assert_eq!(err.check, "trust-anchor");

            // Without the operator's trust anchor: untrusted chain.
            let err = SnpVerifier::amd()
                .expect("amd")
                .verify(&report, &collateral(p), now())
                .expect_err("refused");
            assert_eq!(err.kind(), ErrorKind::UntrustedChain, "{err}");
            assert!(
                matches!(err, SnpVerifyError::UntrustedRoot(CertKind::Ask)),
                "{err}"
            );
        }
    }
}

#[test]
fn v3_and_v5_round_trip_exactly() {
    let p = platform(Product::Milan);
    let (guest, _) = launch(p, [0; 32]);
    for version in [3, 5] {
        let bytes = guest
            .report(&ReportRequest {
                report_data: [1; 64],
                vmpl: 2,
                version,
            })
            .expect("report");
        let parsed = AttestationReport::parse(&bytes).expect("parses");
        assert_eq!(parsed.version, version);
        assert_eq!(parsed.vmpl, 2);
        assert_eq!(parsed.launch_mit_vector.is_some(), version == 5);
        assert_eq!(parsed.to_bytes().expect("serializes"), bytes);
        assert_eq!(
            AttestationReport::parse(&parsed.to_bytes().expect("serializes")).expect("parses"),
            parsed
        );
    }
}

#[test]
fn measurement_follows_the_measured_boot_plan_digest() {
    // Changing one measured byte changes the measurement.
    let p = platform(Product::Milan);
    let (fw, vmsa) = (pages(0xAB, 3), pages(0x01, 1));
    let mut fw2 = fw.clone();
    fw2[100] ^= 1;
    let digest = |fw: &[u8]| {
        let mut l = p.launch_start(0x30000).expect("start");
        for u in updates(fw, &vmsa) {
            l.update(&u);
        }
        l.finish(FinishParams::default())
            .expect("finish")
            .measurement()
    };
    assert_ne!(digest(&fw), digest(&fw2));
}

#[test]
fn id_block_and_author_key_are_checked_and_reported() {
    let p = platform(Product::Milan);
    let (fw, vmsa) = (pages(0x11, 1), pages(0x02, 1));
    let start = || {
        let mut l = p.launch_start(0x30000).expect("start");
        for u in updates(&fw, &vmsa) {
            l.update(&u);
        }
        l
    };
    let ld = start().digest();
    let id_key = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let author_key = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let block = IdBlock {
        ld,
        family_id: [0xF; 16],
        image_id: [0xE; 16],
        guest_svn: 5,
        policy: 0x30000,
    };
    let auth = sign_id_auth(&block, &id_key, Some(&author_key));
    let guest = start()
        .finish(FinishParams {
            id_block: Some(block.clone()),
            id_auth: Some(auth.clone()),
            author_key_en: true,
            host_data: [0; 32],
        })
        .expect("ID block accepted");
    let report = guest
        .report(&ReportRequest {
            report_data: [0; 64],
            vmpl: 0,
            version: 3,
        })
        .expect("report");
    let claims = emulated_verifier(p)
        .verify(&report, &collateral(p), now())
        .expect("verifies");
    let TeeClaims::Snp(snp) = &claims.detail else {
        panic!("SNP claims expected")
    };
    assert_eq!(snp.guest_svn, 5);
    assert_eq!(snp.family_id, vec![0xF; 16]);
    assert!(snp.author_key_en);
    use sha2::Digest;
    let id_pub = attestation::snp::emulated::launch::encode_public_key(id_key.verifying_key());
    assert_eq!(snp.id_key_digest, sha2::Sha384::digest(id_pub).to_vec());
    assert_ne!(snp.author_key_digest, vec![0; 48]);

    // A wrong launch digest, a wrong policy or a bad signature is refused.
    let wrong_ld = IdBlock {
        ld: [0; 48],
        ..block.clone()
    };
    let r = start().finish(FinishParams {
        id_block: Some(wrong_ld.clone()),
        id_auth: Some(sign_id_auth(&wrong_ld, &id_key, None)),
        ..FinishParams::default()
    });
    assert!(matches!(r, Err(EmulatedError::IdBlock(_))));
    let mut bad_auth = auth;
    bad_auth[0x40] ^= 1;
    let r = start().finish(FinishParams {
        id_block: Some(block),
        id_auth: Some(bad_auth),
        ..FinishParams::default()
    });
    assert!(matches!(r, Err(EmulatedError::IdBlock(_))));
}

#[test]
fn launch_start_refuses_bad_policies() {
    let p = platform(Product::Milan);
    for policy in [0x0, 0x1_0000_0000_0000 | 0x30000, 0x30000 | 0x0200] {
        assert!(
            matches!(p.launch_start(policy), Err(EmulatedError::Policy { .. })),
            "{policy:#x}"
        );
    }
    let (guest, _) = launch(p, [0; 32]);
    assert!(matches!(
        guest.report(&ReportRequest {
            report_data: [0; 64],
            vmpl: 4,
            version: 3
        }),
        Err(EmulatedError::Vmpl(4))
    ));
    assert!(matches!(
        guest.report(&ReportRequest {
            report_data: [0; 64],
            vmpl: 0,
            version: 2
        }),
        Err(EmulatedError::Version(2))
    ));
}

#[test]
fn vcek_of_another_chip_is_refused() {
    let p = platform(Product::Milan);
    let (guest, _) = launch(p, [0; 32]);
    let report = guest
        .report(&ReportRequest {
            report_data: [0; 64],
            vmpl: 0,
            version: 3,
        })
        .expect("report");
    let other = p.certify_other_chip(&[0x5A; 64]).expect("issued");
    let mut c = SnpCollateral::new();
    c.set_vek(other);
    c.add_certificate(p.ask().clone());
    let err = emulated_verifier(p)
        .verify(&report, &c, now())
        .expect_err("another chip");
    assert!(matches!(err, SnpVerifyError::ChipIdMismatch), "{err}");
    assert_eq!(err.kind(), ErrorKind::UntrustedChain);
}

#[test]
fn wrong_certificate_kind_is_refused() {
    let p = platform(Product::Milan);
    let (guest, _) = launch(p, [0; 32]);
    let report = guest
        .report(&ReportRequest {
            report_data: [0; 64],
            vmpl: 0,
            version: 3,
        })
        .expect("report");
    let mut c = collateral(p);
    c.set_vek(p.ask().clone());
    let err = emulated_verifier(p)
        .verify(&report, &c, now())
        .expect_err("ASK given as VCEK");
    assert!(matches!(
        err,
        SnpVerifyError::WrongCertKind {
            expected: CertKind::Vcek,
            found: CertKind::Ask
        }
    ));
    assert_eq!(err.kind(), ErrorKind::UntrustedChain);
}

#[test]
fn revoked_ask_is_refused_and_a_stale_crl_is_unavailable_collateral() {
    let p = platform(Product::Milan);
    let (guest, _) = launch(p, [0; 32]);
    let report = guest
        .report(&ReportRequest {
            report_data: [0; 64],
            vmpl: 0,
            version: 5,
        })
        .expect("report");
    let t0 = SystemTime::now() - Duration::from_secs(3600);
    let t1 = SystemTime::now() + Duration::from_secs(3600);
    let v = emulated_verifier(p);

    let mut c = collateral(p);
    c.add_crl(p.crl(&[], t0, t1).expect("crl"));
    v.verify(&report, &c, now())
        .expect("an empty CRL revokes nothing");

    let mut c = collateral(p);
    c.add_crl(p.crl(&[p.ask()], t0, t1).expect("crl"));
    let err = v.verify(&report, &c, now()).expect_err("revoked");
    assert!(
        matches!(err, SnpVerifyError::Revoked(CertKind::Ask)),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::UntrustedChain);

    let mut c = collateral(p);
    c.add_crl(p.crl(&[], t0 - Duration::from_secs(7200), t0).expect("crl"));
    let err = v.verify(&report, &c, now()).expect_err("stale CRL");
    assert_eq!(err.kind(), ErrorKind::CollateralUnavailable, "{err}");
}

#[test]
fn extended_report_certificate_table_round_trips() {
    let p = platform(Product::Milan);
    let (guest, _) = launch(p, [0; 32]);
    let (report, table) = guest
        .extended_report(&ReportRequest {
            report_data: [0; 64],
            vmpl: 0,
            version: 3,
        })
        .expect("report");
    let bytes = table.to_bytes().expect("table");
    let parsed = CertTable::parse(&bytes).expect("parses");
    assert_eq!(parsed, table);
    let mut c = SnpCollateral::new();
    c.add_cert_table(&parsed).expect("collateral");
    emulated_verifier(p)
        .verify(&report, &c, now())
        .expect("verifies from the table alone");
}

#[test]
fn platform_on_disk_reopens_with_private_keys_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = platform(Product::Milan);
    p.write_to(dir.path()).expect("writes");
    for key in ["ark.key", "ask.key", "vcek.key"] {
        let mode = std::fs::metadata(dir.path().join("snp").join(key))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let q = EmulatedSnpPlatform::open(dir.path()).expect("reopens");
    assert_eq!(q.vcek(), p.vcek());
    assert_eq!(q.chip_id(), p.chip_id());
    // The reopened platform signs reports the original trust anchor accepts.
    let (guest, _) = launch(&q, [0; 32]);
    let report = guest
        .report(&ReportRequest {
            report_data: [0; 64],
            vmpl: 0,
            version: 3,
        })
        .expect("report");
    let mut c = SnpCollateral::new();
    c.load_dir(&dir.path().join("snp")).expect("certs dir");
    emulated_verifier(p)
        .verify(&report, &c, now())
        .expect("verifies");
    // Writing again refuses to overwrite.
    assert!(p.write_to(dir.path()).is_err());
}

#[test]
fn measurement_equals_the_launch_plan_digest() {
    use measured_boot::firmware::FirmwareImage;
    use measured_boot::snp::{SnpLaunchPlan, SnpPlanConfig};
    let fw = FirmwareImage::parse(measured_boot::testing::ovmf_like(0x40000))
        .expect("synthetic firmware");
    let config = SnpPlanConfig {
        vcpus: 2,
        vcpu_sig: 0xA00F11,
        guest_features: 1,
        vmm_type: Default::default(),
        hashes: None,
    };
    let plan = SnpLaunchPlan::new(fw, config).expect("plan");
    let p = platform(Product::Milan);
    let mut l = p.launch_start(0x30000).expect("start");
    l.update_plan(&plan);
    let guest = l.finish(FinishParams::default()).expect("finish");
    assert_eq!(
        guest.measurement(),
        plan.launch_digest(),
        "same digest as `cvm measure` computes"
    );
    let report = guest
        .report(&ReportRequest {
            report_data: [0; 64],
            vmpl: 0,
            version: 5,
        })
        .expect("report");
    let claims = emulated_verifier(p)
        .verify(&report, &collateral(p), now())
        .expect("verifies");
    assert_eq!(claims.measurement, plan.launch_digest().to_vec());
}

/// CRL checking is on whenever a CRL is available: one carried in the extended-report
/// certificate table (the path the verifier service takes) is verified and enforced,
/// and a stale one makes the evidence unusable rather than being skipped.
#[test]
fn a_crl_in_the_certificate_table_is_enforced() {
    use attestation::snp::cert_table::{CertTableEntry, CertTableKind};
    let p = platform(Product::Milan);
    let (guest, _) = launch(p, [0; 32]);
    let report = guest
        .report(&ReportRequest {
            report_data: [0; 64],
            vmpl: 0,
            version: 5,
        })
        .expect("report");
    let t0 = SystemTime::now() - Duration::from_secs(3600);
    let t1 = SystemTime::now() + Duration::from_secs(3600);
    let v = emulated_verifier(p);
    let with_crl = |crl: attestation::snp::AmdCrl| {
        let mut table = p.cert_table();
        table.entries.push(CertTableEntry {
            kind: CertTableKind::Crl,
            data: crl.der().to_vec(),
        });
        let mut c = SnpCollateral::new();
        c.add_cert_table(&table).expect("certificate table");
        c
    };
    v.verify(&report, &with_crl(p.crl(&[], t0, t1).expect("crl")), now())
        .expect("a current CRL revoking nothing");
    let err = v
        .verify(
            &report,
            &with_crl(p.crl(&[p.ask()], t0, t1).expect("crl")),
            now(),
        )
        .expect_err("the table's CRL revokes the ASK");
    assert!(
        matches!(err, SnpVerifyError::Revoked(CertKind::Ask)),
        "{err}"
    );
    let stale = p.crl(&[], t0 - Duration::from_secs(7200), t0).expect("crl");
    let err = v
        .verify(&report, &with_crl(stale), now())
        .expect_err("stale CRL");
    assert_eq!(err.kind(), ErrorKind::CollateralUnavailable, "{err}");
}
