//! The service and the CLI: `serve` fetches for the KBS flow, `collateral export/import/status`,
//! PostgreSQL replicas sharing the cache, made-up chips, Turin hwIDs.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_fetches_collateral_for_the_kbs_flow_and_the_cli_exports_imports_and_lists_it() {
    use verifier::crypto::jwe::TeeKeyPair;
    let (snp, tdx, dir) = emulated();
    let (mock, url) = start_mock().await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    mock.serve(snp.kds_responses(&[], now - day, now + day).unwrap());
    mock.serve(tdx.pcs_responses(&CollateralOptions::from_now(30)).unwrap());
    let env = common::Env::new();
    let creds = common::bootstrap(&env);
    let server = {
        let env = &env;
        let url = url.clone();
        let dir = dir.clone();
        tokio::task::block_in_place(move || {
            common::start_args(
                env,
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--insecure-http",
                    "--emulated-trust",
                    dir.to_str().unwrap(),
                    "--amd-kds-url",
                    &url,
                    "--intel-pcs-url",
                    &url,
                ],
                &[],
            )
        })
    };
    let admin = common::admin_client(&server, &creds);
    common::provision(&admin, "web").await;
    let client = common::kbs(&server);
    let got = client
        .fetch(
            &Bare(common::snp_guest()),
            &TeeKeyPair::p256(),
            json!({}),
            common::RESOURCE,
        )
        .await
        .expect("SNP release with KDS collateral");
    assert_eq!(got.as_slice(), common::SECRET);
    let got = client
        .fetch(
            &Bare(common::tdx_guest()),
            &TeeKeyPair::p256(),
            json!({"workload": "web-tdx"}),
            common::RESOURCE,
        )
        .await
        .expect("TDX release with PCS collateral");
    assert_eq!(got.as_slice(), common::SECRET);
    assert_eq!(mock.count(&snp.kds_vcek_path()), 1);
    assert_eq!(
        mock.count(TCB_PATH.replace("B0C06F000000", "EE006F000000").as_str()),
        1
    );
    drop(server);

    // status: every item, valid.
    let out = cli(vec![
        "collateral".into(),
        "status".into(),
        "--database".into(),
        env.database.clone(),
        "--output".into(),
        "json".into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 7, "{v}");
    assert!(items.iter().all(|i| i["valid"] == true), "{v}");
    assert!(items.iter().any(|i| i["key"] == "intel/tdx/qe_identity"));
    // export, then import into a fresh database, whose status lists the same items.
    let bundle = env.dir.path().join("bundle.json");
    let out = cli(vec![
        "collateral".into(),
        "export".into(),
        "--database".into(),
        env.database.clone(),
        "--out".into(),
        bundle.display().to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let air = env.dir.path().join("air.db").display().to_string();
    // `collateral import` checks items against the genuine roots only: the emulated
    // platform's items are refused there, naming one, and nothing is stored.
    let import = |extra: Vec<String>| {
        let mut args = vec![
            "collateral".to_string(),
            "import".into(),
            "--database".into(),
            air.clone(),
        ];
        args.extend(extra);
        args.push(bundle.display().to_string());
        cli(args)
    };
    let out = import(vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not authentic"), "{err}");
    // A directory that is not a platform's (a mistyped path) is refused, not read as
    // "no emulated anchors".
    let out = import(vec![
        "--emulated-trust".into(),
        env.dir.path().display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no emulated platform anchors"), "{err}");
    // With the platform's anchors (`--emulated-trust`, as `serve` has them) it imports.
    let out = import(vec!["--emulated-trust".into(), dir.display().to_string()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "imported 7 items"
    );
    let out = cli(vec![
        "collateral".into(),
        "status".into(),
        "--database".into(),
        air,
    ])
    .await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("valid").count(), 7, "{text}");
    // export --product fetches from the KDS (and, with the genuine roots only, refuses
    // the emulated platform's chain rather than exporting it).
    let before = mock.count(&format!("/vcek/v1/{}/cert_chain", snp.product()));
    let out = cli(vec![
        "collateral".into(),
        "export".into(),
        "--database".into(),
        env.dir.path().join("fresh.db").display().to_string(),
        "--product".into(),
        snp.product().to_string(),
        "--amd-kds-url".into(),
        url.clone(),
        "--out".into(),
        bundle.display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not authentic"), "{err}");
    assert_eq!(
        mock.count(&format!("/vcek/v1/{}/cert_chain", snp.product())),
        before + 1
    );
}

/// PostgreSQL: two replicas share the cache (the second fetches nothing), and a bundle
/// re-imports (upsert) cleanly. Skipped, visibly, without
/// `CVM_TEST_POSTGRES_URL`; required under CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_share_the_collateral_cache() {
    use sqlx::Connection;
    let Ok(url) = std::env::var("CVM_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI requires CVM_TEST_POSTGRES_URL"
        );
        eprintln!("SKIPPED: CVM_TEST_POSTGRES_URL not set");
        return;
    };
    let name = format!("cvm_test_{}", verifier::crypto::random_hex(6));
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
    let db_url = format!("{base}/{name}");
    let (mock, pcs) = start_mock().await;
    mock.serve(genuine_pcs());
    let quote = data("tdx-v4-uptodate/quote.bin");
    let a =
        Arc::new(CollateralService::new(config(&pcs), Db::open(&db_url).await.unwrap()).unwrap());
    verify(&verifier(&a, &[]), Tee::Tdx, &quote, tdx_time())
        .await
        .unwrap();
    assert_eq!(mock.total(), 4);
    let b_db = Db::open(&db_url).await.unwrap();
    let b = Arc::new(CollateralService::new(config(&pcs), b_db.clone()).unwrap());
    verify(&verifier(&b, &[]), Tee::Tdx, &quote, tdx_time())
        .await
        .unwrap();
    assert_eq!(mock.total(), 4, "the second replica used the shared cache");
    // Re-importing the replica's own export updates the rows in place.
    let mut bundle = bundle::export_cached(&b_db).await.unwrap();
    assert_eq!(bundle.items.len(), 4);
    for i in &mut bundle.items {
        i.fetched_at -= 1000;
    }
    let json = serde_json::to_vec(&bundle).unwrap();
    assert_eq!(bundle::import(&b_db, &json).await.unwrap(), 4);
    let after = bundle::export_cached(&b_db).await.unwrap();
    assert_eq!(after.items.len(), 4);
    b_db.close().await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_chip_ids_cost_one_kds_request_per_chip_not_per_flow() {
    // Attack: an attester sends reports for a CHIP_ID the KDS does not know, over and
    // over, to make the verifier hammer AMD's KDS (which rate-limits it for everyone).
    let (mock, url) = start_mock().await;
    let (kds, vcek_path) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let mut report = data("snp-milan-v2/report.bin");
    report[0x1A0] ^= 0xff; // another chip
    for _ in 0..5 {
        let e = verify(&v, Tee::Snp, &report, snp_time()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
        assert!(e.message.contains("404"), "{}", e.message);
    }
    // One request per product tried (Milan, Genoa), for five flows.
    assert_eq!(mock.total(), 2, "{:?}", mock.counts.lock().unwrap());
    assert_eq!(mock.count(&vcek_path), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turin_vcek_is_fetched_by_its_8_byte_hwid_with_fmc_spl() {
    use attestation::snp::emulated::EmulatedSnpConfig;
    use attestation::snp::{Product, TcbParts};
    let dir = tempfile::tempdir().unwrap();
    let snp = EmulatedSnpPlatform::create_with(
        dir.path(),
        &EmulatedSnpConfig {
            product: Product::Turin,
            tcb: TcbParts {
                bootloader: 1,
                tee: 2,
                snp: 3,
                microcode: 4,
                fmc: Some(5),
            },
            ..EmulatedSnpConfig::default()
        },
    )
    .unwrap();
    let (mock, url) = start_mock().await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    mock.serve(snp.kds_responses(&[], now - day, now + day).unwrap());
    let path = snp.kds_vcek_path();
    let hw = hex::encode(&snp.chip_id()[..8]);
    assert_eq!(
        path,
        format!("/vcek/v1/Turin/{hw}?blSPL=1&teeSPL=2&snpSPL=3&ucodeSPL=4&fmcSPL=5")
    );
    let service = emulated_service(config(&url), db(&dir, "a.db").await, dir.path());
    let v = verifier(&service, &[dir.path().to_owned()]);
    verify(
        &v,
        Tee::Snp,
        &snp_report(dir.path()),
        time::OffsetDateTime::now_utc(),
    )
    .await
    .expect("Turin report with the fetched VCEK");
    assert_eq!(mock.count(&path), 1);
}
