//! Fetching: genuine SNP/TDX evidence verifies with collateral fetched from the mock KDS/PCS,
//! then from the cache; single flight; refetch past nextUpdate; outages.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genuine_snp_verifies_with_the_vcek_fetched_from_the_kds_then_from_the_cache() {
    let (mock, url) = start_mock().await;
    let (kds, vcek_path) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let report = data("snp-milan-v2/report.bin");
    verify(&v, Tee::Snp, &report, snp_time())
        .await
        .expect("genuine report with the fetched VCEK");
    assert_eq!(mock.count(&vcek_path), 1);
    assert_eq!(mock.count("/vcek/v1/Milan/cert_chain"), 1);
    assert_eq!(mock.count("/vcek/v1/Milan/crl"), 1, "the CRL is asked for");
    // Cache hit: no request.
    verify(&v, Tee::Snp, &report, snp_time()).await.unwrap();
    assert_eq!(mock.total(), 3);
    // Another replica on the same database: no request either.
    let replica = Arc::new(
        CollateralService::new(
            config(&url),
            Db::open(dir.path().join("a.db").to_str().unwrap())
                .await
                .unwrap(),
        )
        .unwrap(),
    );
    verify(&verifier(&replica, &[]), Tee::Snp, &report, snp_time())
        .await
        .unwrap();
    assert_eq!(
        mock.count(&vcek_path),
        1,
        "the replica used the shared cache"
    );
    assert_eq!(mock.count("/vcek/v1/Milan/cert_chain"), 1);
    // A tampered report still fails: the cache holds collateral, not verdicts.
    let mut bad = report.clone();
    bad[0x90] ^= 1;
    let e = verify(&v, Tee::Snp, &bad, snp_time()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadSignature, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kds_without_a_crl_is_refused_by_default() {
    // A network attacker (or a misconfigured mirror) answering 404 for the CRL must not
    // switch revocation off: by default the chain is refused.
    let (mock, url) = start_mock().await;
    let (kds, _) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let cfg = CollateralConfig {
        amd_crl_required: true,
        ..config(&url)
    };
    assert!(CollateralConfig::default().amd_crl_required);
    let service = Arc::new(CollateralService::new(cfg, db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let report = data("snp-milan-v2/report.bin");
    let e = verify(&v, Tee::Snp, &report, snp_time()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("publishes no CRL"), "{e:?}");
    // The 404 is not remembered: the next flow asks the KDS again (a transient 404
    // does not block the product for a day).
    let before = mock.count("/vcek/v1/Milan/crl");
    verify(&v, Tee::Snp, &report, snp_time()).await.unwrap_err();
    assert_eq!(mock.count("/vcek/v1/Milan/crl"), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genuine_tdx_verifies_with_collateral_fetched_from_the_pcs() {
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let quote = data("tdx-v4-uptodate/quote.bin");
    verify(&v, Tee::Tdx, &quote, tdx_time())
        .await
        .expect("genuine quote with fetched collateral");
    for p in [TCB_PATH, QE_PATH, PCKCRL_PATH, ROOTCRL_PATH] {
        assert_eq!(mock.count(p), 1, "{p}");
    }
    verify(&v, Tee::Tdx, &quote, tdx_time()).await.unwrap();
    assert_eq!(mock.total(), 4, "the second flow is a cache hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_miss_costs_one_fetch_per_item_however_many_flows_wait() {
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    let (kds, vcek_path) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let quote = data("tdx-v4-uptodate/quote.bin");
    let report = data("snp-milan-v2/report.bin");
    let mut flows = Vec::new();
    for i in 0..24 {
        let v = Arc::clone(&v);
        let (quote, report) = (quote.clone(), report.clone());
        flows.push(tokio::spawn(async move {
            if i % 2 == 0 {
                verify(&v, Tee::Tdx, &quote, tdx_time()).await
            } else {
                verify(&v, Tee::Snp, &report, snp_time()).await
            }
        }));
    }
    for f in flows {
        f.await.unwrap().expect("every concurrent flow verifies");
    }
    for p in [
        TCB_PATH,
        QE_PATH,
        PCKCRL_PATH,
        ROOTCRL_PATH,
        &vcek_path,
        "/vcek/v1/Milan/cert_chain",
        "/vcek/v1/Milan/crl",
    ] {
        assert_eq!(mock.count(p), 1, "{p} fetched once for 12 concurrent flows");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collateral_past_its_next_update_is_refetched_and_an_expired_crl_refused() {
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let quote = data("tdx-v4-uptodate/quote.bin");
    verify(&v, Tee::Tdx, &quote, tdx_time()).await.unwrap();
    // In 2026 every item (CRLs, TCB info, QE identity) is past its nextUpdate: the
    // service asks again, gets the same stale items, and the quote is refused.
    let e = verify(&v, Tee::Tdx, &quote, at("2026-03-01T00:00:00Z"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("expired"), "{}", e.message);
    assert_eq!(mock.count(TCB_PATH), 2, "an expired item is fetched again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_refuses_without_a_valid_cached_copy_and_retries_are_bounded() {
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    mock.down.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let quote = data("tdx-v4-uptodate/quote.bin");
    let e = verify(&v, Tee::Tdx, &quote, tdx_time()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("503"), "{}", e.message);
    assert_eq!(mock.count(TCB_PATH), 3, "three attempts, then the refusal");
    // A service that is down and a cached copy past its validity: still refused.
    mock.down.store(false, Ordering::SeqCst);
    verify(&v, Tee::Tdx, &quote, tdx_time()).await.unwrap();
    mock.down.store(true, Ordering::SeqCst);
    let e = verify(&v, Tee::Tdx, &quote, at("2025-08-01T00:00:00Z"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("cached copy expired"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_a_valid_cached_copy_still_verifies() {
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    let (kds, _) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let quote = data("tdx-v4-uptodate/quote.bin");
    let report = data("snp-milan-v2/report.bin");
    verify(&verifier(&service, &[]), Tee::Tdx, &quote, tdx_time())
        .await
        .unwrap();
    verify(&verifier(&service, &[]), Tee::Snp, &report, snp_time())
        .await
        .unwrap();
    mock.down.store(true, Ordering::SeqCst);
    let before = mock.total();
    // A restarted verifier (empty memory) on the same database.
    let restarted = Arc::new(
        CollateralService::new(
            config(&url),
            Db::open(dir.path().join("a.db").to_str().unwrap())
                .await
                .unwrap(),
        )
        .unwrap(),
    );
    let v = verifier(&restarted, &[]);
    verify(&v, Tee::Tdx, &quote, tdx_time())
        .await
        .expect("valid cached TDX collateral");
    verify(&v, Tee::Snp, &report, snp_time())
        .await
        .expect("valid cached SNP collateral (and the cached 'no CRL published')");
    assert_eq!(mock.total(), before, "nothing fetched during the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_kds_never_counts_as_no_crl_published() {
    let (mock, url) = start_mock().await;
    let (kds, _) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    // The VCEK and chain are cached, then the KDS fails only for the CRL.
    let vcek = genuine_kds().0.remove(0);
    let report = data("snp-milan-v2/report.bin");
    mock.serve(vec![CollateralResponse {
        path: "/vcek/v1/Milan/crl".into(),
        content_type: "application/pkix-crl",
        headers: vec![],
        body: b"not a CRL".to_vec(),
    }]);
    let e = verify(&verifier(&service, &[]), Tee::Snp, &report, snp_time())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("CRL"), "{}", e.message);
    assert_eq!(mock.count(&vcek.path), 1);
    mock.down.store(true, Ordering::SeqCst);
    let e = verify(&verifier(&service, &[]), Tee::Snp, &report, snp_time())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("503"), "{}", e.message);
}
