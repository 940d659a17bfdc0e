//! Every refusal: a 4xx problem response, nothing released, exactly one audit record.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use verifier::client::admin::AdminClient;
use verifier::client::emulated::SnpGuest;
use verifier::client::kbs::{EvidenceSource, KbsClient};
use verifier::client::ClientError;
use verifier::crypto::jwe::TeeKeyPair;

struct Ctx {
    server: Server,
    admin: AdminClient,
    client: KbsClient,
    _env: Env,
}

fn b64url(s: &str) -> Vec<u8> {
    base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s).unwrap()
}

async fn setup(extra: &[&str]) -> Ctx {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, extra);
    let admin = admin_client(&server, &creds);
    provision(&admin, "web").await;
    let client = kbs(&server);
    Ctx {
        server,
        admin,
        client,
        _env: env,
    }
}

/// Runs `f`, expects a problem with `status`, and exactly one new audit record of `kind`
/// with outcome refused; returns the problem body.
async fn expect_refusal<F, Fut>(ctx: &Ctx, status: u16, kind: &str, f: F) -> Value
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let before = audit_records(&ctx.admin).await;
    let resp = f().await;
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["type"]
        .as_str()
        .unwrap()
        .starts_with("urn:cvm-verifier:problem:"));
    let after = audit_records(&ctx.admin).await;
    let new: Vec<&Value> = after.iter().skip(before.len()).collect();
    assert_eq!(new.len(), 1, "exactly one audit record: {new:?}");
    assert_eq!(new[0]["kind"], kind);
    assert_eq!(new[0]["outcome"], "refused");
    assert!(
        !new.iter().any(|r| r["outcome"] == "released"),
        "nothing released"
    );
    body
}

fn post_attest(ctx: &Ctx, cookie: Option<&str>, body: Vec<u8>) -> reqwest::RequestBuilder {
    let mut r = http()
        .post(format!("{}/kbs/v0/attest", ctx.server.base))
        .header("content-type", "application/json")
        .body(body);
    if let Some(c) = cookie {
        r = r.header("cookie", c.to_owned());
    }
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn attest_refusals() {
    let ctx = setup(&[]).await;
    let snp = snp_guest();
    let key = TeeKeyPair::p256();

    // Malformed JSON.
    let ch = ctx.client.auth("snp", json!({})).await.unwrap();
    let cookie = format!("kbs-session-id={}", ch.session);
    expect_refusal(&ctx, 400, "attestation", || async {
        post_attest(&ctx, Some(&cookie), b"{not json".to_vec())
            .send()
            .await
            .unwrap()
    })
    .await;
    // Malformed cookie; no cookie.
    expect_refusal(&ctx, 400, "attestation", || async {
        post_attest(&ctx, Some("kbs-session-id=%%%"), b"{}".to_vec())
            .send()
            .await
            .unwrap()
    })
    .await;
    expect_refusal(&ctx, 401, "attestation", || async {
        post_attest(&ctx, None, b"{}".to_vec())
            .send()
            .await
            .unwrap()
    })
    .await;
    // Unknown session.
    let good = KbsClient::attestation(&ch, &key, &snp).unwrap();
    let body = serde_json::to_vec(&good).unwrap();
    expect_refusal(&ctx, 401, "attestation", || async {
        post_attest(
            &ctx,
            Some("kbs-session-id=6f1c2e0a-1d3b-4c5a-9e7f-0a1b2c3d4e5f"),
            body.clone(),
        )
        .send()
        .await
        .unwrap()
    })
    .await;
    // Malformed JWK (a point not on the curve).
    let mut bad_jwk = good.clone();
    bad_jwk["runtime-data"]["tee-pubkey"]["x"] = json!("AAAA");
    let b = serde_json::to_vec(&bad_jwk).unwrap();
    expect_refusal(&ctx, 400, "attestation", || async {
        post_attest(&ctx, Some(&cookie), b.clone())
            .send()
            .await
            .unwrap()
    })
    .await;
    // Malformed evidence.
    let mut bad_ev = good.clone();
    bad_ev["tee-evidence"]["primary_evidence"] = json!({"report": "!!!", "cert_chain": null});
    let b = serde_json::to_vec(&bad_ev).unwrap();
    let p = expect_refusal(&ctx, 400, "attestation", || async {
        post_attest(&ctx, Some(&cookie), b.clone())
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(p["kind"], "malformed");

    // Report-data mismatch: evidence bound to another key.
    let ch = ctx.client.auth("snp", json!({})).await.unwrap();
    let mut body = KbsClient::attestation(&ch, &key, &snp).unwrap();
    body["runtime-data"]["tee-pubkey"] =
        serde_json::to_value(TeeKeyPair::p256().public_jwk()).unwrap();
    let cookie = format!("kbs-session-id={}", ch.session);
    let b = serde_json::to_vec(&body).unwrap();
    let p = expect_refusal(&ctx, 401, "attestation", || async {
        post_attest(&ctx, Some(&cookie), b.clone())
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(p["check"], "report-data");
    // The nonce was spent by that attempt: replaying a correct request is refused.
    let good = KbsClient::attestation(&ch, &key, &snp).unwrap();
    let b = serde_json::to_vec(&good).unwrap();
    let p = expect_refusal(&ctx, 401, "attestation", || async {
        post_attest(&ctx, Some(&cookie), b.clone())
            .send()
            .await
            .unwrap()
    })
    .await;
    assert!(p["detail"].as_str().unwrap().contains("already used"));

    // Replay after success.
    let ch = ctx.client.auth("snp", json!({})).await.unwrap();
    let body = KbsClient::attestation(&ch, &key, &snp).unwrap();
    ctx.client
        .attest_raw(&ch.session, &body)
        .await
        .expect("first use accepted");
    let cookie = format!("kbs-session-id={}", ch.session);
    let b = serde_json::to_vec(&body).unwrap();
    expect_refusal(&ctx, 401, "attestation", || async {
        post_attest(&ctx, Some(&cookie), b.clone())
            .send()
            .await
            .unwrap()
    })
    .await;

    // The same challenge answered eight times at once: exactly one attempt wins.
    let ch = ctx.client.auth("snp", json!({})).await.unwrap();
    let body = KbsClient::attestation(&ch, &key, &snp).unwrap();
    let attempts = (0..8).map(|_| {
        let (client, session, body) = (ctx.client.clone(), ch.session.clone(), body.clone());
        tokio::spawn(async move { client.attest_raw(&session, &body).await })
    });
    let mut won = 0;
    for a in attempts {
        if a.await.unwrap().is_ok() {
            won += 1;
        }
    }
    assert_eq!(won, 1, "a challenge was used more than once");

    // Unknown measurement: no workload accepts it.
    let other = SnpGuest::open(&emulated_dir(), [0x11; 48]).unwrap();
    let ch = ctx.client.auth("snp", json!({})).await.unwrap();
    let body = KbsClient::attestation(&ch, &key, &other).unwrap();
    let cookie = format!("kbs-session-id={}", ch.session);
    let b = serde_json::to_vec(&body).unwrap();
    let p = expect_refusal(&ctx, 401, "attestation", || async {
        post_attest(&ctx, Some(&cookie), b.clone())
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(p["check"], "workload");

    // Untrusted root: a platform the server was not told to trust (its certificates
    // carry the same names as the trusted emulated ones, so the chain fails on the
    // signature under the trusted root).
    let rogue = SnpGuest::open(&untrusted_dir(), MEASUREMENT).unwrap();
    let ch = ctx.client.auth("snp", json!({})).await.unwrap();
    let body = KbsClient::attestation(&ch, &key, &rogue).unwrap();
    let cookie = format!("kbs-session-id={}", ch.session);
    let b = serde_json::to_vec(&body).unwrap();
    let p = expect_refusal(&ctx, 401, "attestation", || async {
        post_attest(&ctx, Some(&cookie), b.clone())
            .send()
            .await
            .unwrap()
    })
    .await;
    assert!(
        p["kind"] == "untrusted-chain" || p["kind"] == "bad-signature",
        "{p}"
    );

    // Auth request problems are plain 400s.
    let r = http()
        .post(format!("{}/kbs/v0/auth", ctx.server.base))
        .json(&json!({"version": "0.4.0", "tee": "sgx", "extra-params": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http()
        .post(format!("{}/kbs/v0/auth", ctx.server.base))
        .json(&json!({"version": "9.0.0", "tee": "snp", "extra-params": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Oversized bodies.
    let r = http()
        .post(format!("{}/kbs/v0/auth", ctx.server.base))
        .header("content-type", "application/json")
        .body(vec![b' '; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_refusals_and_revocation() {
    let ctx = setup(&[]).await;
    let snp = snp_guest();
    let key = TeeKeyPair::p256();
    // A workload whose policy does not allow emulated evidence.
    let body = json!({"tee": "snp", "policy": {"measurements": [hex::encode(MEASUREMENT)]}, "resources": [RESOURCE]});
    ctx.admin
        .call(Method::PUT, "/admin/v1/workloads/strict", Some(&body))
        .await
        .unwrap();
    let ch = ctx
        .client
        .auth("snp", json!({"workload": "strict"}))
        .await
        .unwrap();
    let b = serde_json::to_vec(&KbsClient::attestation(&ch, &key, &snp).unwrap()).unwrap();
    let cookie = format!("kbs-session-id={}", ch.session);
    let p = expect_refusal(&ctx, 401, "attestation", || async {
        post_attest(&ctx, Some(&cookie), b.clone())
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(p["check"], "trust-anchor");

    // Resource refusals: unknown resource, not granted, no token, bad token.
    let ch = ctx
        .client
        .auth("snp", json!({"workload": "web"}))
        .await
        .unwrap();
    let token = ctx
        .client
        .attest_raw(
            &ch.session,
            &KbsClient::attestation(&ch, &key, &snp).unwrap(),
        )
        .await
        .unwrap();
    let get = |path: &'static str, auth: Option<String>| {
        let mut r = http().get(format!("{}/kbs/v0/resource/{path}", ctx.server.base));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r
    };
    ctx.admin
        .call(
            Method::PUT,
            "/admin/v1/workloads/web",
            Some(&json!({
                "tee": "snp",
                "policy": {"measurements": [hex::encode(MEASUREMENT)], "allow_emulated": true},
                "resources": [RESOURCE, "default/key/missing"],
            })),
        )
        .await
        .unwrap();
    let bearer = format!("Bearer {token}");
    expect_refusal(&ctx, 404, "key-release", || async {
        get("default/key/missing", Some(bearer.clone()))
            .send()
            .await
            .unwrap()
    })
    .await;
    expect_refusal(&ctx, 403, "key-release", || async {
        get("other/key/disk", Some(bearer.clone()))
            .send()
            .await
            .unwrap()
    })
    .await;
    expect_refusal(&ctx, 401, "key-release", || async {
        get(RESOURCE, None).send().await.unwrap()
    })
    .await;
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    expect_refusal(&ctx, 401, "key-release", || async {
        get(RESOURCE, Some(format!("Bearer {forged}")))
            .send()
            .await
            .unwrap()
    })
    .await;
    // A token whose claims were altered (here: its expiry extended) is not the one
    // issued for its session, whatever its signature.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&b64url(parts[1])).unwrap();
    claims["exp"] = json!(claims["exp"].as_i64().unwrap() + 3600);
    let altered = format!(
        "{}.{}.{}",
        parts[0],
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            claims.to_string()
        ),
        parts[2]
    );
    let p = expect_refusal(&ctx, 401, "key-release", || async {
        get(RESOURCE, Some(format!("Bearer {altered}")))
            .send()
            .await
            .unwrap()
    })
    .await;
    assert!(
        p["detail"].as_str().unwrap().contains("not the one issued"),
        "{p}"
    );
    // A session attested before the verifier kept token digests: the signature decides.
    {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", ctx._env.database))
            .await
            .unwrap();
        sqlx::query("UPDATE kbs_sessions SET token_sha256 = NULL WHERE id = $1")
            .bind(&ch.session)
            .execute(&mut db)
            .await
            .unwrap();
    }
    for bad in [&forged, &altered] {
        expect_refusal(&ctx, 401, "key-release", || async {
            get(RESOURCE, Some(format!("Bearer {bad}")))
                .send()
                .await
                .unwrap()
        })
        .await;
    }
    // The token still works for the granted resource.
    let jwe = ctx.client.resource_jwe(&token, RESOURCE).await.unwrap();
    assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), SECRET);

    // Revoking the guest stops releases for existing tokens and new attestations.
    let inv = ctx
        .admin
        .call(Method::GET, "/admin/v1/inventory", None)
        .await
        .unwrap();
    let id = inv["guests"][0]["id"].as_str().unwrap().to_owned();
    ctx.admin
        .call(
            Method::PUT,
            &format!("/admin/v1/inventory/{id}/revocation"),
            Some(&json!({"revoked": true})),
        )
        .await
        .unwrap();
    expect_refusal(&ctx, 403, "key-release", || async {
        get(RESOURCE, Some(bearer.clone())).send().await.unwrap()
    })
    .await;
    let err = ctx
        .client
        .fetch(&snp, &key, json!({}), RESOURCE)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Status { status: 403, .. }),
        "{err}"
    );
    ctx.admin
        .call(
            Method::PUT,
            &format!("/admin/v1/inventory/{id}/revocation"),
            Some(&json!({"revoked": false})),
        )
        .await
        .unwrap();
    ctx.client
        .fetch(&snp, &key, json!({}), RESOURCE)
        .await
        .expect("restored");

    // Revoking the workload does the same.
    ctx.admin
        .call(
            Method::PUT,
            "/admin/v1/workloads/web/revocation",
            Some(&json!({"revoked": true})),
        )
        .await
        .unwrap();
    expect_refusal(&ctx, 403, "key-release", || async {
        get(RESOURCE, Some(bearer.clone())).send().await.unwrap()
    })
    .await;
    let err = ctx
        .client
        .fetch(&snp, &key, json!({"workload": "web"}), RESOURCE)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Status { status: 403, .. }),
        "{err}"
    );
    let _ = snp.tee();
}

/// Without `--emulated-trust`, emulated evidence does not chain to any trusted root.
#[tokio::test(flavor = "multi_thread")]
async fn emulated_evidence_untrusted_by_default() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start_args(&env, &["--listen", "127.0.0.1:0", "--insecure-http"], &[]);
    let admin = admin_client(&server, &creds);
    provision(&admin, "web").await;
    for guest in [&snp_guest() as &dyn EvidenceSource, &tdx_guest()] {
        let before = audit_count(&admin).await;
        let err = kbs(&server)
            .fetch(guest, &TeeKeyPair::p256(), json!({}), RESOURCE)
            .await
            .unwrap_err();
        match err {
            ClientError::Status { status, body, .. } => {
                assert_eq!(status, 401);
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["kind"], "untrusted-chain", "{v}");
            }
            other => panic!("{other}"),
        }
        assert_eq!(audit_count(&admin).await, before + 1);
    }
}

/// An SNP guest of the trusted emulated platform whose report is requested at `vmpl`.
struct VmplGuest(u32);

impl EvidenceSource for VmplGuest {
    fn tee(&self) -> &'static str {
        "snp"
    }
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Value, ClientError> {
        use attestation::snp::emulated::{EmulatedSnpPlatform, FinishParams, ReportRequest};
        use base64::Engine;
        let e = |e: attestation::snp::emulated::EmulatedError| ClientError::Emulated(e.to_string());
        let platform = EmulatedSnpPlatform::open(&emulated_dir()).map_err(e)?;
        let guest = platform
            .launch_start_from(verifier::client::emulated::SNP_GUEST_POLICY, MEASUREMENT)
            .map_err(e)?
            .finish(FinishParams::default())
            .map_err(e)?;
        let (report, table) = guest
            .extended_report(&ReportRequest {
                report_data: *report_data,
                vmpl: self.0,
                version: 3,
            })
            .map_err(e)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(json!({
            "report": b64.encode(report),
            "cert_chain": b64.encode(table.to_bytes().map_err(|x| ClientError::Emulated(x.to_string()))?),
        }))
    }
}

/// The check named by a refused fetch (the attest problem's `check`), or the status.
async fn refused_check(
    ctx: &Ctx,
    guest: &dyn EvidenceSource,
    extra: Value,
) -> (u16, Option<String>) {
    match ctx
        .client
        .fetch(guest, &TeeKeyPair::p256(), extra, RESOURCE)
        .await
    {
        Ok(_) => panic!("the resource was released"),
        Err(ClientError::Status { status, body, .. }) => {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            (status, v["check"].as_str().map(str::to_owned))
        }
        Err(other) => panic!("{other}"),
    }
}

async fn released(ctx: &Ctx) -> usize {
    audit_records(&ctx.admin)
        .await
        .iter()
        .filter(|r| r["kind"] == "key-release" && r["outcome"] == "released")
        .count()
}

/// Issue 14 finding 1: empty or emptied measurement lists, named workloads, other TEEs,
/// unbound legacy workloads and reports at VMPL 3 release nothing.
#[tokio::test(flavor = "multi_thread")]
async fn fail_closed_workloads() {
    let ctx = setup(&[]).await;
    let other = SnpGuest::open(&emulated_dir(), [0x77; 48]).expect("snp guest");
    let put = |name: &'static str, body: Value| {
        let admin = &ctx.admin;
        async move {
            admin
                .call(
                    Method::PUT,
                    &format!("/admin/v1/workloads/{name}"),
                    Some(&body),
                )
                .await
        }
    };

    // 1. A workload without measurements cannot be created ...
    let err = put(
        "empty",
        json!({"tee": "snp", "policy": {"allow_emulated": true}, "resources": [RESOURCE]}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 400, body, .. } if body.contains("allows no measurement")),
        "{err}"
    );
    // ... and one stored without measurements (by an older version) matches no guest,
    // named or not.
    {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", ctx._env.database))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO workloads (name, policy, resources, revoked, created_at, updated_at, tee) \
             VALUES ('legacy-empty', '{\"allow_emulated\": true}', $1, 0, 0, 0, 'snp')",
        )
        .bind(json!([RESOURCE]).to_string())
        .execute(&mut db)
        .await
        .unwrap();
    }
    assert_eq!(
        refused_check(&ctx, &other, json!({"workload": "legacy-empty"})).await,
        (401, Some("measurement".into()))
    );
    assert_eq!(
        refused_check(&ctx, &other, json!({})).await,
        (401, Some("workload".into()))
    );

    // 2. Emptying a workload: removing its last measurement is refused (409), and the
    // workload still refuses a guest of another measurement that names it.
    put(
        "one",
        json!({"tee": "snp", "policy": {"measurements": [hex::encode(MEASUREMENT)], "allow_emulated": true}, "resources": [RESOURCE]}),
    )
    .await
    .unwrap();
    let err = ctx
        .admin
        .call(
            Method::DELETE,
            &format!(
                "/admin/v1/workloads/one/measurements/{}",
                hex::encode(MEASUREMENT)
            ),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 409, body, .. } if body.contains("last measurement")),
        "{err}"
    );
    let w = ctx
        .admin
        .call(Method::GET, "/admin/v1/workloads/one", None)
        .await
        .unwrap();
    assert_eq!(
        w["policy"]["measurements"],
        json!([hex::encode(MEASUREMENT)])
    );
    // 3. A named workload is filtered by measurement too.
    for name in ["one", "web"] {
        assert_eq!(
            refused_check(&ctx, &other, json!({"workload": name})).await,
            (401, Some("measurement".into())),
            "{name}"
        );
    }

    // 4. An SNP guest never matches a TDX workload, named or not.
    assert_eq!(
        refused_check(&ctx, &snp_guest(), json!({"workload": "web-tdx"})).await,
        (401, Some("workload-tee".into()))
    );
    let ctx2 = {
        let env = Env::new();
        let creds = bootstrap(&env);
        let server = start(&env, &[]);
        let admin = admin_client(&server, &creds);
        admin
            .call(
                Method::PUT,
                "/admin/v1/workloads/tdx-only",
                Some(&json!({"tee": "tdx", "policy": {"measurements": [hex::encode(MEASUREMENT)], "allow_emulated": true, "tdx": tdx_pins()}, "resources": [RESOURCE]})),
            )
            .await
            .unwrap();
        use base64::Engine;
        let v = json!({"value": base64::engine::general_purpose::STANDARD.encode(SECRET)});
        admin
            .call(
                Method::PUT,
                &format!("/admin/v1/resources/{RESOURCE}"),
                Some(&v),
            )
            .await
            .unwrap();
        let client = kbs(&server);
        Ctx {
            server,
            admin,
            client,
            _env: env,
        }
    };
    assert_eq!(
        refused_check(&ctx2, &snp_guest(), json!({})).await,
        (401, Some("workload-tee".into()))
    );
    ctx2.client
        .fetch(&tdx_guest(), &TeeKeyPair::p256(), json!({}), RESOURCE)
        .await
        .expect("the TDX guest is served");
    // A TDX workload row that pins only MRTD (stored before RTMR1/RTMR2 were required, or
    // written directly) is refused by the policy itself: a host could boot its own
    // kernel and command line under the tenant's firmware.
    {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", ctx2._env.database))
            .await
            .unwrap();
        let mrtd_only =
            json!({"measurements": [hex::encode(MEASUREMENT)], "allow_emulated": true}).to_string();
        sqlx::query("UPDATE workloads SET policy = $1")
            .bind(mrtd_only)
            .execute(&mut db)
            .await
            .unwrap();
    }
    assert_eq!(
        refused_check(&ctx2, &tdx_guest(), json!({})).await,
        (401, Some("rtmr-unpinned".into()))
    );
    // A workload stored before schema v4 (no TEE) matches nobody until an admin sets it.
    {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", ctx2._env.database))
            .await
            .unwrap();
        sqlx::query("UPDATE workloads SET tee = NULL")
            .execute(&mut db)
            .await
            .unwrap();
    }
    let w = ctx2
        .admin
        .call(Method::GET, "/admin/v1/workloads/tdx-only", None)
        .await
        .unwrap();
    assert_eq!(w["tee"], Value::Null);
    let err = ctx2
        .client
        .fetch(&tdx_guest(), &TeeKeyPair::p256(), json!({}), RESOURCE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 401, body, .. } if body.contains("not bound to a TEE")),
        "{err}"
    );

    // 5. A report requested at VMPL 3 is refused by the default policy; VMPL 0 is served.
    assert_eq!(
        refused_check(&ctx, &VmplGuest(3), json!({"workload": "web"})).await,
        (401, Some("vmpl".into()))
    );
    assert_eq!(released(&ctx).await, 0, "nothing was released");
    ctx.client
        .fetch(
            &VmplGuest(0),
            &TeeKeyPair::p256(),
            json!({"workload": "web"}),
            RESOURCE,
        )
        .await
        .expect("VMPL 0 is served");
    assert_eq!(released(&ctx).await, 1);
}

/// `allow_any_measurement` stands in for the list only for emulated evidence of a guest
/// that names the workload.
#[tokio::test(flavor = "multi_thread")]
async fn allow_any_measurement_is_named_and_emulated_only() {
    let ctx = setup(&[]).await;
    let other = SnpGuest::open(&emulated_dir(), [0x77; 48]).expect("snp guest");
    ctx.admin
        .call(
            Method::PUT,
            "/admin/v1/workloads/any",
            Some(&json!({"tee": "snp", "policy": {"allow_any_measurement": true, "allow_emulated": true}, "resources": [RESOURCE]})),
        )
        .await
        .unwrap();
    // Not named: no workload lists the measurement.
    assert_eq!(
        refused_check(&ctx, &other, json!({})).await,
        (401, Some("workload".into()))
    );
    // Named: served (emulated evidence only; hardware evidence needs a listed value,
    // which the unit tests of `choose_workload`'s rule cover through `admits`).
    let got = ctx
        .client
        .fetch(
            &other,
            &TeeKeyPair::p256(),
            json!({"workload": "any"}),
            RESOURCE,
        )
        .await
        .expect("named, emulated");
    assert_eq!(got.as_slice(), SECRET);
}

/// Extra members of the tee-pubkey JWK (`kid`, `use`) are ignored by the binding, as by
/// Trustee: a guest that hashes the key members only is served and the JWE opens.
#[tokio::test(flavor = "multi_thread")]
async fn kid_carrying_jwk_binds_like_the_bare_key() {
    let ctx = setup(&[]).await;
    let key = TeeKeyPair::p256();
    let ch = ctx.client.auth("snp", json!({})).await.unwrap();
    let mut body = KbsClient::attestation(&ch, &key, &snp_guest()).unwrap();
    body["runtime-data"]["tee-pubkey"]["kid"] = json!("guest-key-1");
    body["runtime-data"]["tee-pubkey"]["use"] = json!("enc");
    let token = ctx
        .client
        .attest_raw(&ch.session, &body)
        .await
        .expect("accepted");
    let jwe = ctx.client.resource_jwe(&token, RESOURCE).await.unwrap();
    assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), SECRET);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_measurement_stops_attested_sessions_at_once() {
    // Attack (red team round 2, finding 9): a guest of a bad build attests, the operator
    // removes its measurement, and the guest kept fetching with its token until expiry.
    let ctx = setup(&[]).await;
    let key = TeeKeyPair::p256();
    let ch = ctx.client.auth("snp", json!({})).await.unwrap();
    let body = KbsClient::attestation(&ch, &key, &snp_guest()).unwrap();
    let token = ctx.client.attest_raw(&ch.session, &body).await.unwrap();
    let jwe = ctx.client.resource_jwe(&token, RESOURCE).await.unwrap();
    assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), SECRET);

    // The good build replaces the bad one (the last measurement cannot be removed).
    let good = hex::encode([0x11u8; 48]);
    ctx.admin
        .call(
            Method::POST,
            "/admin/v1/workloads/web/measurements",
            Some(&json!({ "measurement": good })),
        )
        .await
        .unwrap();
    ctx.admin
        .call(
            Method::DELETE,
            &format!(
                "/admin/v1/workloads/web/measurements/{}",
                hex::encode(MEASUREMENT)
            ),
            None,
        )
        .await
        .unwrap();
    let before = released(&ctx).await;
    let err = ctx
        .client
        .resource_jwe(&token, RESOURCE)
        .await
        .expect_err("the removed measurement's session is refused");
    assert!(
        matches!(&err, ClientError::Status { status: 403, body, .. } if body.contains("no longer admits")),
        "{err}"
    );
    assert_eq!(released(&ctx).await, before, "nothing released");
    let records = audit_records(&ctx.admin).await;
    let last = records.last().unwrap();
    assert_eq!(last["outcome"], "refused");
    assert_eq!(last["detail"]["reason"], "release-measurement", "{last}");

    // Listed again, the same session is served again (the check is the current list).
    ctx.admin
        .call(
            Method::POST,
            "/admin/v1/workloads/web/measurements",
            Some(&json!({ "measurement": hex::encode(MEASUREMENT) })),
        )
        .await
        .unwrap();
    let jwe = ctx.client.resource_jwe(&token, RESOURCE).await.unwrap();
    assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), SECRET);
}
