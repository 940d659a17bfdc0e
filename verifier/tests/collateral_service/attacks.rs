//! Attacks on the cache and the fetcher: forged bundle items and rows, fetch budgets,
//! remembered negative answers, TDX collateral rollback.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bundle_items_are_refused_at_import_naming_the_item() {
    // Attack (red team, last round): `collateral import` stored bundle items after a
    // shape check only, so a forged VCEK, TCB info or CRL in a bundle entered the cache
    // and was served from it (a far-future expiry pinned it there). Every item must now
    // chain to AMD's pinned ARKs / Intel's root CA before it is stored; one forged item
    // refuses the bundle, naming the item, and nothing of it is stored.
    let dir = tempfile::tempdir().unwrap();
    let (_mock, _url, json) = genuine_bundle(&dir).await;
    let (snp, _, _) = emulated();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let forged_crl = snp
        .crl(&[], now - day, now + 3650 * day)
        .unwrap()
        .der()
        .to_vec();
    let forge = |prefix: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let mut b = json.clone();
        let items = b["items"].as_array_mut().unwrap();
        let item = items
            .iter_mut()
            .find(|i| i["key"].as_str().unwrap().starts_with(prefix))
            .unwrap();
        f(item);
        serde_json::to_vec(&b).unwrap()
    };
    // A VCEK of another (emulated) root under the genuine chip's key.
    let vcek = B64.encode(emulated_vcek(&snp));
    let forged_vcek = forge("amd/Milan/vcek/", &|i| i["body"] = json!(vcek));
    // The genuine TCB info with its nextUpdate moved to 2099 (signature kept).
    let forged_tcb = forge("intel/tdx/tcb/", &|i| {
        let body = String::from_utf8(B64.decode(i["body"].as_str().unwrap()).unwrap()).unwrap();
        let at = body.find("\"nextUpdate\":\"").unwrap() + 14;
        let body = format!("{}2099{}", &body[..at], &body[at + 4..]);
        i["body"] = json!(B64.encode(body));
    });
    // A CRL of another (emulated) ARK as Milan's, valid for ten years.
    let crl = B64.encode(&forged_crl);
    let forged_crl = forge("amd/Milan/crl", &|i| i["body"] = json!(crl));
    for (n, (bytes, key)) in [
        (forged_vcek, "amd/Milan/vcek/"),
        (forged_tcb, "intel/tdx/tcb/"),
        (forged_crl, "amd/Milan/crl"),
    ]
    .into_iter()
    .enumerate()
    {
        let air = db(&dir, &format!("air{n}.db")).await;
        let e = bundle::import(&air, &bytes)
            .await
            .expect_err("a forged item must be refused");
        let text = format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(text.contains(key), "{text}");
        assert!(text.contains("not authentic"), "{text}");
        assert!(
            bundle::export_cached(&air).await.unwrap().items.is_empty(),
            "nothing of a refused bundle is stored"
        );
    }
    // The genuine bundle still imports.
    let air = db(&dir, "genuine.db").await;
    assert_eq!(
        bundle::import(&air, &serde_json::to_vec(&json).unwrap())
            .await
            .unwrap(),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cached_row_cannot_pin_the_cache() {
    // Attack: a forged VCEK already in the cache table (written by an older verifier's
    // import, or by anyone with write access to a shared database) with a far-future
    // expiry. Before, it was served until then: every flow of the chip was refused and
    // the genuine VCEK never fetched. Now a cached row is authenticated when loaded;
    // an unauthentic one is dropped and the genuine item fetched.
    use verifier::collateral::{Item, ItemKey, VcekTcb};
    let (mock, url) = start_mock().await;
    let (kds, vcek_path) = genuine_kds();
    mock.serve(kds);
    let dir = tempfile::tempdir().unwrap();
    let database = db(&dir, "a.db").await;
    let ext = AmdCertificate::from_der(&data("snp-milan-v2/vcek.der"))
        .unwrap()
        .vek_extensions()
        .unwrap();
    let key = ItemKey::Vcek {
        product: attestation::snp::Product::Milan,
        hw_id: ext.hw_id.clone().unwrap(),
        tcb: VcekTcb {
            bootloader: ext.bootloader,
            tee: ext.tee,
            snp: ext.snp,
            microcode: ext.microcode,
            fmc: None,
        },
    };
    let (snp, _, _) = emulated();
    verifier::collateral::store_item(
        &database,
        &Item {
            key: key.to_string(),
            url: format!("{url}{vcek_path}"),
            body: emulated_vcek(&snp),
            issuer_chain: None,
            fetched_at: 0,
            expires_at: 4_000_000_000,
        },
    )
    .await
    .unwrap();
    let service = Arc::new(CollateralService::new(config(&url), database).unwrap());
    verify(
        &verifier(&service, &[]),
        Tee::Snp,
        &data("snp-milan-v2/report.bin"),
        snp_time(),
    )
    .await
    .expect("the forged row is dropped and the genuine VCEK fetched");
    assert_eq!(mock.count(&vcek_path), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_vlek_chain_is_checked_against_the_kds_vlek_crl() {
    // Attack (red team, last round): VLEK chains had no revocation source, so a VLEK
    // (or ASVK) AMD has revoked was accepted. VLEKs are not fetchable, but their CRL is
    // (`/vlek/v1/{product}/crl`): it is now required like the VCEK CRL.
    let (mock, url) = start_mock().await;
    mock.down.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let ev = serde_json::to_vec(&genuine_vlek_with_table()).unwrap();
    let report = data("snp-milan-vlek-v3/report.bin");
    let rd: [u8; 64] = report[0x50..0x90].try_into().unwrap();
    let run = |v: Arc<AttestationVerifier>, ev: Vec<u8>| {
        tokio::task::spawn_blocking(move || v.verify(Tee::Snp, &ev, &rd, snp_time()).map(|_| ()))
    };
    // Without a collateral source the chain itself verifies (the vector is genuine).
    let plain = Arc::new(AttestationVerifier::new(&[]).unwrap());
    run(plain, ev.clone()).await.unwrap().unwrap();
    // The KDS is down: the VLEK CRL cannot be had, so the evidence is refused.
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let e = run(verifier(&service, &[]), ev.clone())
        .await
        .unwrap()
        .expect_err("no VLEK CRL, no verdict");
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(e.message.contains("VLEK CRL"), "{}", e.message);
    assert_eq!(mock.count("/vlek/v1/Milan/crl"), 3);
    assert_eq!(mock.count("/vcek/v1/Milan/crl"), 0);
    // A KDS answering 404 for it: refused by default (`amd_crl_optional` false)…
    mock.down.store(false, Ordering::SeqCst);
    let strict = CollateralConfig {
        amd_crl_required: true,
        ..config(&url)
    };
    let service = Arc::new(CollateralService::new(strict, db(&dir, "b.db").await).unwrap());
    let e = run(verifier(&service, &[]), ev.clone())
        .await
        .unwrap()
        .expect_err("a missing VLEK CRL is refused by default");
    assert!(e.message.contains("publishes no CRL"), "{}", e.message);
    // …and accepted only with `amd_crl_optional` (a private KDS).
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "c.db").await).unwrap());
    run(verifier(&service, &[]), ev).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_platforms_are_held_to_a_fetch_budget() {
    // Attack (red team, last round): an unauthenticated client sends reports for ever
    // new made-up CHIP_IDs (or TCBs / FMSPCs), each a cache miss, to make the verifier
    // fetch without bound from AMD's KDS / Intel's PCS (which rate-limit the verifier
    // for everyone). Cache-miss fetches are now held to a per-client budget (16 per
    // minute by default) and a global one.
    let (mock, url) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let mut report = data("snp-milan-v2/report.bin");
    let mut refused = 0;
    for i in 0..40u8 {
        report[0x1A0] = i;
        report[0x1A1] = 0xee;
        let e = verify(&v, Tee::Snp, &report, snp_time()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
        if e.message.contains("budget") {
            refused += 1;
        }
    }
    // Two requests per made-up chip (Milan, then Genoa) until the budget is spent.
    assert!(mock.total() <= 16, "{} KDS requests", mock.total());
    assert_eq!(refused, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_fmspc_costs_one_pcs_request_per_miss_ttl() {
    // Attack: TDX did not remember the PCS's 404 for an FMSPC, so every flow with the
    // same unknown platform asked the PCS again.
    let (mock, url) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let quote = data("tdx-v4-uptodate/quote.bin");
    for _ in 0..5 {
        let e = verify(&v, Tee::Tdx, &quote, tdx_time()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
        assert!(e.message.contains("404"), "{}", e.message);
    }
    assert_eq!(mock.count(TCB_PATH), 1, "{:?}", mock.counts.lock().unwrap());
    assert_eq!(mock.total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_remembered_not_retried() {
    // Attack: once the KDS rate-limits the verifier (429), every flow retried, which
    // keeps it rate-limited. A 429 with Retry-After is now honoured: not retried, and
    // nothing is asked for again until then.
    let (mock, url) = start_mock().await;
    let (_, vcek_path) = genuine_kds();
    *mock.throttle.lock().unwrap() = Some(120);
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(CollateralService::new(config(&url), db(&dir, "a.db").await).unwrap());
    let v = verifier(&service, &[]);
    let report = data("snp-milan-v2/report.bin");
    for _ in 0..3 {
        let e = verify(&v, Tee::Snp, &report, snp_time()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
        assert!(e.message.contains("429"), "{}", e.message);
    }
    assert_eq!(
        mock.count(&vcek_path),
        1,
        "{:?}",
        mock.counts.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_collateral_in_tdx_evidence_cannot_roll_back_the_tcb() {
    // Attack (red team, last round): TDX collateral carried in the evidence took
    // priority over the service's, so a guest (or the host feeding it) could send an
    // older-but-still-valid set in which the platform was still UpToDate, after Intel
    // had published a TCB evaluation marking it OutOfDate.
    use attestation::claims::TeeClaims;
    use attestation::tdx::TcbStatus;
    let (_, tdx, dir) = emulated();
    let (mock, url) = start_mock().await;
    let now = time::OffsetDateTime::now_utc();
    let newer = CollateralOptions {
        platform_out_of_date: true,
        ..CollateralOptions::around(now, 30)
    };
    let older = CollateralOptions::around(now - time::Duration::days(5), 30);
    mock.serve(tdx.pcs_responses(&newer).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let service = emulated_service(config(&url), db(&tmp, "a.db").await, &dir);
    let quote = tdx_quote(&dir);
    let rd: [u8; 64] = quote[568..632].try_into().unwrap();
    let with = |c: &CollateralOptions| {
        let json = tdx.collateral(c).unwrap().to_json().unwrap();
        serde_json::to_vec(&json!({
            "quote": B64.encode(&quote),
            "collateral": serde_json::from_str::<serde_json::Value>(&json).unwrap(),
        }))
        .unwrap()
    };
    let run = |v: Arc<AttestationVerifier>, ev: Vec<u8>| {
        tokio::task::spawn_blocking(move || v.verify(Tee::Tdx, &ev, &rd, now))
    };
    let status = |c: attestation::claims::Claims| match c.detail {
        TeeClaims::Tdx(t) => t.tcb_status,
        TeeClaims::Snp(_) => panic!("TDX claims expected"),
    };
    let v = verifier(&service, std::slice::from_ref(&dir));
    // The service's collateral (newest): OutOfDate.
    let plain = serde_json::to_vec(&json!({ "quote": B64.encode(&quote) })).unwrap();
    let c = run(Arc::clone(&v), plain).await.unwrap().unwrap();
    assert_eq!(status(c), TcbStatus::OutOfDate);
    // The older set carried in the evidence does not replace it.
    let c = run(Arc::clone(&v), with(&older)).await.unwrap().unwrap();
    assert_eq!(
        status(c),
        TcbStatus::OutOfDate,
        "the evidence's older collateral was used"
    );
    // The PCS is down and a restarted verifier has only the database: the older set
    // is refused as a rollback; a set as new as the cached one is accepted.
    mock.down.store(true, Ordering::SeqCst);
    let restarted = emulated_service(config(&url), db(&tmp, "a.db").await, &dir);
    let v = verifier(&restarted, std::slice::from_ref(&dir));
    let e = run(Arc::clone(&v), with(&older))
        .await
        .unwrap()
        .expect_err("older collateral is a rollback");
    assert_eq!(e.check.as_deref(), Some("collateral-rollback"), "{e:?}");
    let c = run(Arc::clone(&v), with(&newer)).await.unwrap().unwrap();
    assert_eq!(status(c), TcbStatus::OutOfDate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetch_budget_is_per_client_then_global_and_refusals_are_counted() {
    use std::sync::atomic::AtomicUsize;
    use verifier::collateral::budget::with_client;
    let (mock, url) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = CollateralConfig {
        fetch_budget_per_client: 2,
        fetch_budget_global: 5,
        ..config(&url)
    };
    let refusals = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&refusals);
    let service = Arc::new(
        CollateralService::new(cfg, db(&dir, "a.db").await)
            .unwrap()
            .with_refusal_hook(Arc::new(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
            })),
    );
    let v = verifier(&service, &[]);
    let report = data("snp-milan-v2/report.bin");
    let flow = |client: &'static str, chip: u8| {
        let v = Arc::clone(&v);
        let mut report = report.clone();
        report[0x1A0] = chip;
        report[0x1A1] = 0xee;
        let rd: [u8; 64] = report[0x50..0x90].try_into().unwrap();
        let ev = serde_json::to_vec(&json!({ "report": B64.encode(&report) })).unwrap();
        tokio::task::spawn_blocking(move || {
            with_client(client, || v.verify(Tee::Snp, &ev, &rd, snp_time()))
                .map(|_| ())
                .unwrap_err()
                .message
        })
    };
    // Client A: its first made-up chip costs 2 fetches (Milan, Genoa); the next is refused.
    assert!(flow("10.0.0.1", 1).await.unwrap().contains("404"));
    let e = flow("10.0.0.1", 2).await.unwrap();
    assert!(e.contains("client budget"), "{e}");
    // Client B is not held to A's budget, but the global one (5) runs out.
    assert!(flow("10.0.0.2", 3).await.unwrap().contains("404"));
    let e = flow("10.0.0.3", 4).await.unwrap();
    assert!(e.contains("global budget"), "{e}");
    assert_eq!(mock.total(), 5);
    assert_eq!(refusals.load(Ordering::SeqCst), 2);
}

/// An emulated TDX platform claiming the genuine vector's FMSPC, generated at the
/// vector's time and written to `dir` (its `tdx/root_ca.pem` is the emulated root),
/// with its PCS responses valid then.
fn emulated_tdx_at_genuine_fmspc(dir: &std::path::Path) -> Vec<CollateralResponse> {
    let options = attestation::tdx::emulated::PlatformOptions {
        fmspc: [0xb0, 0xc0, 0x6f, 0, 0, 0],
        ..Default::default()
    };
    let p = EmulatedTdxPlatform::generate(options, tdx_time()).unwrap();
    p.save(dir).unwrap();
    p.pcs_responses(&CollateralOptions::around(tdx_time(), 30))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcb_info_and_qe_identity_of_an_emulated_root_do_not_judge_a_genuine_quote() {
    // Attack (mixed roots): the verifier trusts an emulated platform (`--emulated-trust`)
    // and the PCS answers a genuine quote's FMSPC with TCB info and a QE identity
    // signed under that emulated root (authentic items of *a* trusted root, so they are
    // cached), next to Intel's genuine PCK and root CA CRLs. Each TDX verifier holds one
    // root: the quote chains to Intel's, the TCB info to the emulated one, so no
    // verifier accepts the mix.
    let tmp = tempfile::tempdir().unwrap();
    let emulated_dir = tmp.path().join("emulated");
    let emulated_items = emulated_tdx_at_genuine_fmspc(&emulated_dir);
    let (mock, url) = start_mock().await;
    mock.serve(genuine_pcs());
    mock.serve(
        emulated_items
            .into_iter()
            .filter(|r| r.path == TCB_PATH || r.path == QE_PATH)
            .collect(),
    );
    let dirs = [emulated_dir.clone()];
    let service = Arc::new(
        CollateralService::new(config(&url), db(&tmp, "a.db").await)
            .unwrap()
            .with_anchors(Anchors::with_emulated(&dirs).unwrap()),
    );
    let quote = data("tdx-v4-uptodate/quote.bin");
    let e = verify(&verifier(&service, &dirs), Tee::Tdx, &quote, tdx_time())
        .await
        .expect_err("a genuine quote judged by emulated TCB info");
    assert_eq!(e.kind, ErrorKind::UntrustedChain, "{e:?}");
    assert_eq!(
        mock.count(TCB_PATH),
        1,
        "the emulated TCB info was what was used"
    );
    // Control: the genuine items verify the same quote with the same verifier setup.
    mock.serve(genuine_pcs());
    let service = Arc::new(
        CollateralService::new(config(&url), db(&tmp, "b.db").await)
            .unwrap()
            .with_anchors(Anchors::with_emulated(&dirs).unwrap()),
    );
    verify(&verifier(&service, &dirs), Tee::Tdx, &quote, tdx_time())
        .await
        .expect("the genuine collateral");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_collateral_is_refused_and_not_cached_without_emulated_trust() {
    // Attack: a verifier without `--emulated-trust` whose PCS URL serves an emulated
    // platform's collateral (for the genuine quote's FMSPC). Nothing of it may be
    // cached, and the genuine quote is not verified with it.
    let tmp = tempfile::tempdir().unwrap();
    let emulated_items = emulated_tdx_at_genuine_fmspc(&tmp.path().join("emulated"));
    let (mock, url) = start_mock().await;
    mock.serve(emulated_items);
    let database = db(&tmp, "a.db").await;
    let service = Arc::new(CollateralService::new(config(&url), database.clone()).unwrap());
    let quote = data("tdx-v4-uptodate/quote.bin");
    let e = verify(&verifier(&service, &[]), Tee::Tdx, &quote, tdx_time())
        .await
        .expect_err("emulated collateral without emulated trust");
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{e:?}");
    assert!(
        e.message.contains("not authentic") || e.message.contains("root"),
        "{}",
        e.message
    );
    assert!(mock.count(TCB_PATH) >= 1);
    let items = verifier::collateral::list_items(&database).await.unwrap();
    assert!(
        items.is_empty(),
        "cached: {:?}",
        items.iter().map(|i| &i.key).collect::<Vec<_>>()
    );
}
