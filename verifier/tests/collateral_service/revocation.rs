//! Revocation and offline use: emulated platforms, CRLs enforced and refreshed, bundles
//! imported into an offline verifier, VLEK and carried chains against the KDS CRL.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_evidence_verifies_with_collateral_from_the_emulated_kds_and_pcs() {
    let (snp, tdx, dir) = emulated();
    let (mock, url) = start_mock().await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    mock.serve(snp.kds_responses(&[], now - day, now + day).unwrap());
    mock.serve(tdx.pcs_responses(&CollateralOptions::from_now(30)).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let service = emulated_service(config(&url), db(&tmp, "a.db").await, &dir);
    let v = verifier(&service, std::slice::from_ref(&dir));
    let t = time::OffsetDateTime::now_utc();
    verify(&v, Tee::Snp, &snp_report(&dir), t)
        .await
        .expect("emulated SNP with KDS collateral");
    verify(&v, Tee::Tdx, &tdx_quote(&dir), t)
        .await
        .expect("emulated TDX with PCS collateral");
    assert_eq!(mock.count(&snp.kds_vcek_path()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_revoking_the_chain_is_enforced() {
    let (snp, tdx, dir) = emulated();
    let (mock, url) = start_mock().await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    // The ARK's CRL lists the ASK.
    mock.serve(
        snp.kds_responses(&[snp.ask()], now - day, now + day)
            .unwrap(),
    );
    // The PCK CRL lists the PCK certificate.
    let opts = CollateralOptions {
        revoke_pck: true,
        ..CollateralOptions::from_now(30)
    };
    mock.serve(tdx.pcs_responses(&opts).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let service = emulated_service(config(&url), db(&tmp, "a.db").await, &dir);
    let v = verifier(&service, std::slice::from_ref(&dir));
    let t = time::OffsetDateTime::now_utc();
    let e = verify(&v, Tee::Snp, &snp_report(&dir), t)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UntrustedChain, "{e:?}");
    assert!(e.message.contains("revoked"), "{}", e.message);
    let e = verify(&v, Tee::Tdx, &tdx_quote(&dir), t).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::UntrustedChain, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_crl_is_refreshed_and_an_expired_one_refused() {
    let (snp, _, dir) = emulated();
    let (mock, url) = start_mock().await;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let crl_path = format!("/vcek/v1/{}/crl", snp.product());
    // A CRL valid for two more hours.
    mock.serve(snp.kds_responses(&[], now - hour, now + 2 * hour).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let service = emulated_service(config(&url), db(&tmp, "a.db").await, &dir);
    let v = verifier(&service, std::slice::from_ref(&dir));
    let report = snp_report(&dir);
    let t = time::OffsetDateTime::now_utc();
    verify(&v, Tee::Snp, &report, t).await.unwrap();
    assert_eq!(mock.count(&crl_path), 1);
    // Not yet due: the refresh task leaves it.
    assert_eq!(service.refresh_due(t.unix_timestamp()).await.unwrap(), 0);
    // The KDS publishes the next CRL; within the last quarter of the old one's life
    // the refresh task fetches it.
    mock.serve(snp.kds_responses(&[], now, now + 48 * hour).unwrap());
    let due = t + time::Duration::minutes(100);
    assert!(service.refresh_due(due.unix_timestamp()).await.unwrap() >= 1);
    assert_eq!(mock.count(&crl_path), 2);
    // Three hours on (the first CRL expired): verifies with the refreshed one, no fetch.
    verify(&v, Tee::Snp, &report, t + time::Duration::hours(3))
        .await
        .unwrap();
    assert_eq!(mock.count(&crl_path), 2);
    // The KDS now serves only an expired CRL and the cached one expires: refused.
    mock.serve(snp.kds_responses(&[], now - 4 * hour, now - hour).unwrap());
    let e = verify(&v, Tee::Snp, &report, t + time::Duration::hours(49))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert_eq!(mock.count(&crl_path), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_verifier_works_from_an_imported_bundle_only() {
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    let (kds, _) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    // The connected machine fetches and exports.
    let online_db = db(&dir, "online.db").await;
    let online = Arc::new(CollateralService::new(config(&url), online_db.clone()).unwrap());
    let quote = data("tdx-v4-uptodate/quote.bin");
    let report = data("snp-milan-v2/report.bin");
    verify(&verifier(&online, &[]), Tee::Tdx, &quote, tdx_time())
        .await
        .unwrap();
    verify(&verifier(&online, &[]), Tee::Snp, &report, snp_time())
        .await
        .unwrap();
    let json = serde_json::to_vec(&bundle::export_cached(&online_db).await.unwrap()).unwrap();
    // The air-gapped machine: offline, pointing at nothing.
    let offline_cfg = CollateralConfig {
        offline: true,
        ..config("http://127.0.0.1:9")
    };
    let empty =
        Arc::new(CollateralService::new(offline_cfg.clone(), db(&dir, "empty.db").await).unwrap());
    let e = verify(&verifier(&empty, &[]), Tee::Tdx, &quote, tdx_time())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("offline"), "{}", e.message);
    let air = db(&dir, "air.db").await;
    // 4 TDX items, the VCEK, the ASK/ARK chain and the KDS's "no CRL" answer.
    assert_eq!(bundle::import(&air, &json).await.unwrap(), 7);
    let offline = Arc::new(CollateralService::new(offline_cfg, air).unwrap());
    let before = mock.total();
    verify(&verifier(&offline, &[]), Tee::Tdx, &quote, tdx_time())
        .await
        .expect("TDX from the bundle");
    verify(&verifier(&offline, &[]), Tee::Snp, &report, snp_time())
        .await
        .expect("SNP from the bundle");
    assert_eq!(mock.total(), before, "offline: nothing fetched");
    // A bundle item whose body was swapped for another item's is refused at import.
    let mut b: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let items = b["items"].as_array_mut().unwrap();
    let body0 = items[0]["body"].clone();
    let last = items.len() - 1;
    items[last]["body"] = body0;
    let tampered = serde_json::to_vec(&b).unwrap();
    assert!(bundle::import(&db(&dir, "t.db").await, &tampered)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vlek_report_without_its_certificates_says_vleks_are_not_fetchable() {
    let (mock, url) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let report = data("snp-milan-vlek-v3/report.bin");
    let e = verify(&verifier(&service, &[]), Tee::Snp, &report, snp_time())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("VLEK"), "{}", e.message);
    assert_eq!(mock.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_chain_carried_in_the_evidence_is_checked_against_the_kds_crl() {
    // Attack: a host serves an extended report whose ASK AMD has revoked; before, the
    // verifier never looked at AMD's CRL when the evidence carried a chain. Now the
    // product's CRL must be obtained: an unreachable KDS refuses, a KDS that publishes
    // none (404) lets the chain verify.
    let (mock, url) = start_mock().await;
    mock.down.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let ev = serde_json::to_vec(&genuine_snp_with_table()).unwrap();
    let report = data("snp-milan-v2/report.bin");
    let rd: [u8; 64] = report[0x50..0x90].try_into().unwrap();
    let run = |v: Arc<AttestationVerifier>, ev: Vec<u8>| {
        tokio::task::spawn_blocking(move || v.verify(Tee::Snp, &ev, &rd, snp_time()).map(|_| ()))
    };
    let e = run(Arc::clone(&v), ev.clone()).await.unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("Milan CRL"), "{}", e.message);
    assert_eq!(mock.count("/vcek/v1/Milan/crl"), 3);
    // Without a collateral source (the old behaviour) the same evidence verifies: the
    // CRL check is what the service adds.
    let plain = Arc::new(AttestationVerifier::new(&[]).unwrap());
    run(plain, ev.clone()).await.unwrap().unwrap();
    // The KDS answers 404: no CRL published; verifies, and only the CRL was asked for.
    mock.down.store(false, Ordering::SeqCst);
    run(Arc::clone(&v), ev.clone()).await.unwrap().unwrap();
    assert_eq!(mock.count("/vcek/v1/Milan/cert_chain"), 0);
    assert_eq!(mock.count("/vcek/v1/Milan/crl"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoy_crl_in_the_table_does_not_replace_the_kds_crl() {
    // Attack: the host adds a CRL of its own (here an emulated ARK's, an issuer the
    // chain does not have) to the extended-report table of a genuine chain, hoping the
    // verifier takes "the table has a CRL" for "revocation was checked". The KDS is
    // down, so the product's real CRL cannot be had: the evidence must be refused.
    let (mock, url) = start_mock().await;
    mock.down.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let (snp, _, _) = emulated();
    let now = SystemTime::now();
    let decoy = snp
        .crl(
            &[],
            now - Duration::from_secs(86_400),
            now + Duration::from_secs(86_400),
        )
        .unwrap();
    let mut ev = genuine_snp_with_table();
    let mut table = attestation::snp::CertTable::parse(
        &B64.decode(ev["cert_chain"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    table.entries.push(attestation::snp::CertTableEntry {
        kind: attestation::snp::CertTableKind::Crl,
        data: decoy.der().to_vec(),
    });
    ev["cert_chain"] = json!(B64.encode(table.to_bytes().unwrap()));
    let ev = serde_json::to_vec(&ev).unwrap();
    let report = data("snp-milan-v2/report.bin");
    let rd: [u8; 64] = report[0x50..0x90].try_into().unwrap();
    let r = tokio::task::spawn_blocking(move || v.verify(Tee::Snp, &ev, &rd, snp_time()))
        .await
        .unwrap();
    let e = r.expect_err("a decoy CRL must not switch the KDS CRL off");
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(
        mock.count("/vcek/v1/Milan/crl") >= 1,
        "the KDS CRL was asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_no_crl_item_cannot_pin_the_cache() {
    // Attack: a bundle whose "the KDS publishes no CRL" item claims to be valid until
    // 2100; stored as is, it would beat every fresh CRL ("later expiry wins") for
    // decades. Its times are not trusted: it counts from the import, for a day at most.
    let dir = tempfile::tempdir().unwrap();
    let db = db(&dir, "a.db").await;
    let far = 4_102_444_800i64; // 2100-01-01
    let json = json!({
        "format": bundle::FORMAT,
        "created_at": far,
        "items": [{
            "key": "amd/Milan/crl",
            "url": "https://kds.invalid/vcek/v1/Milan/crl",
            "body": "",
            "issuer_chain": null,
            "fetched_at": far,
            "expires_at": far,
        }],
    });
    assert_eq!(
        bundle::import(&db, &serde_json::to_vec(&json).unwrap())
            .await
            .unwrap(),
        1
    );
    let items = verifier::collateral::list_items(&db).await.unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let crl = items.iter().find(|i| i.key == "amd/Milan/crl").unwrap();
    assert!(
        crl.expires_at <= now + 86_400 + 60,
        "expires at {} (now {now})",
        crl.expires_at
    );
}

/// A second emulated SNP platform of `product` (generated once under the target
/// directory): trusted alongside the harness's platform in the CRL-binding tests.
fn other_platform(
    name: &str,
    product: attestation::snp::Product,
) -> (EmulatedSnpPlatform, PathBuf) {
    let dir = test_kit::cached_dir(&format!("collateral-crl-{name}-v1"), |tmp| {
        EmulatedSnpPlatform::create_with(
            tmp,
            &attestation::snp::emulated::EmulatedSnpConfig {
                product,
                ..Default::default()
            },
        )
        .expect("emulated SNP platform");
    });
    (EmulatedSnpPlatform::open(&dir).unwrap(), dir)
}

/// The KDS response at `path` carrying `crl`.
fn crl_response(path: &str, crl: &attestation::snp::AmdCrl) -> CollateralResponse {
    CollateralResponse {
        path: path.to_owned(),
        content_type: "application/pkix-crl",
        headers: vec![],
        body: crl.der().to_vec(),
    }
}

/// The attack of the CRL-binding tests: platform A's ASK is revoked in A's own CRL, but
/// the KDS answers A's product's CRL path with `other`'s current CRL (revoking nothing;
/// `other` is trusted too). The evidence must be refused and the foreign CRL never
/// cached; with A's own CRL served, the revocation is enforced.
async fn foreign_crl_is_refused(other: &EmulatedSnpPlatform, other_dir: &std::path::Path) {
    let (snp, _, dir) = emulated();
    assert_ne!(snp.ark().der(), other.ark().der());
    let (mock, url) = start_mock().await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let crl_path = format!("/vcek/v1/{}/crl", snp.product());
    mock.serve(
        snp.kds_responses(&[snp.ask()], now - day, now + day)
            .unwrap(),
    );
    let foreign = other.crl(&[], now - day, now + day).unwrap();
    mock.serve(vec![crl_response(&crl_path, &foreign)]);
    let dirs = [dir.clone(), other_dir.to_owned()];
    let tmp = tempfile::tempdir().unwrap();
    let database = db(&tmp, "a.db").await;
    let service = Arc::new(
        CollateralService::new(config(&url), database.clone())
            .unwrap()
            .with_anchors(Anchors::with_emulated(&dirs).unwrap()),
    );
    let v = verifier(&service, &dirs);
    let t = time::OffsetDateTime::now_utc();
    let e = verify(&v, Tee::Snp, &snp_report(&dir), t)
        .await
        .expect_err("another issuer's CRL must not switch revocation off");
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("CRL"), "{}", e.message);
    assert!(mock.count(&crl_path) >= 1, "the CRL was fetched");
    let items = verifier::collateral::list_items(&database).await.unwrap();
    assert!(
        !items.iter().any(|i| i.key.ends_with("/crl")),
        "the foreign CRL was cached: {:?}",
        items.iter().map(|i| &i.key).collect::<Vec<_>>()
    );
    // The same KDS serving A's own CRL: the revoked ASK is refused as revoked.
    mock.serve(
        snp.kds_responses(&[snp.ask()], now - day, now + day)
            .unwrap(),
    );
    let service = Arc::new(
        CollateralService::new(config(&url), db(&tmp, "b.db").await)
            .unwrap()
            .with_anchors(Anchors::with_emulated(&dirs).unwrap()),
    );
    let e = verify(&verifier(&service, &dirs), Tee::Snp, &snp_report(&dir), t)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UntrustedChain, "{e:?}");
    assert!(e.message.contains("revoked"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kds_serving_another_products_crl_for_milan_cannot_disable_revocation() {
    // Attack (a): the Milan CRL path answers with a current CRL of another product
    // (the vectors hold no genuine AMD CRL, so an emulated Genoa platform's, trusted
    // like AMD's Genoa ARK would be). Before, any CRL signed by any trusted ARK was
    // cached as Milan's and the verification skipped it: the revoked ASK verified.
    let (genoa, dir) = other_platform("genoa", attestation::snp::Product::Genoa);
    assert_eq!(genoa.product(), attestation::snp::Product::Genoa);
    foreign_crl_is_refused(&genoa, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kds_serving_platform_bs_crl_for_platform_as_revoked_chain_is_refused() {
    // Attack (b): two trusted emulated platforms of the same product; the KDS serves
    // platform B's CRL for platform A, whose ASK A's own CRL revokes.
    let dir = common::untrusted_dir();
    let b = EmulatedSnpPlatform::open(&dir).unwrap();
    assert_eq!(b.product(), emulated().0.product());
    foreign_crl_is_refused(&b, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carried_genuine_chain_is_not_checked_against_another_arks_crl() {
    // Attack: an extended report carries the genuine Milan chain; the KDS answers the
    // Milan chain and CRL paths with a trusted emulated Milan platform's chain and CRL
    // (all authentic items of *a* Milan ARK). Before, that CRL was added and skipped
    // (another issuer), so AMD's CRL was never checked and the evidence verified.
    let (snp, _, dir) = emulated();
    let (mock, url) = start_mock().await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    mock.serve(snp.kds_responses(&[], now - day, now + day).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let strict = CollateralConfig {
        amd_crl_required: true,
        ..config(&url)
    };
    let service = emulated_service(strict, db(&tmp, "a.db").await, &dir);
    let v = verifier(&service, std::slice::from_ref(&dir));
    let ev = serde_json::to_vec(&genuine_snp_with_table()).unwrap();
    let report = data("snp-milan-v2/report.bin");
    let rd: [u8; 64] = report[0x50..0x90].try_into().unwrap();
    let r = tokio::task::spawn_blocking(move || v.verify(Tee::Snp, &ev, &rd, snp_time()))
        .await
        .unwrap();
    let e = r.expect_err("an emulated ARK's CRL is not AMD's Milan CRL");
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("CRL"), "{}", e.message);
    assert!(mock.count("/vcek/v1/Milan/crl") >= 1);
}
