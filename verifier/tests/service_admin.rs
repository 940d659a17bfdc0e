//! The admin plane: RBAC matrix, TOTP enforcement, failed-auth rate limiting and audit,
//! bootstrap refusal.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use verifier::client::admin::AdminClient;
use verifier::client::ClientError;
use zeroize::Zeroizing;

fn status_of(r: Result<Value, ClientError>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(ClientError::Status { status, .. }) => status,
        Err(e) => panic!("transport error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rbac_matrix() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, &[]);
    let admin = admin_client(&server, &creds);
    provision(&admin, "web").await;
    let mut tokens = std::collections::HashMap::new();
    for role in ["operator", "auditor"] {
        let v = admin
            .call(
                Method::POST,
                "/admin/v1/users",
                Some(&json!({"name": format!("{role}1"), "role": role})),
            )
            .await
            .unwrap();
        assert!(v["totp_secret"].is_null(), "only admins get TOTP");
        tokens.insert(role, v["token"].as_str().unwrap().to_owned());
    }
    let client = |role: &str| {
        AdminClient::new(
            http(),
            &server.base,
            Zeroizing::new(tokens[role].clone()),
            None,
        )
    };
    let (op, au) = (client("operator"), client("auditor"));
    // A workload without grants: operators may manage it; one with grants: admins only.
    let wl = json!({"tee": "snp", "policy": {"measurements": [hex::encode([1u8; 48])]}, "resources": []});
    let granted = json!({"tee": "snp", "policy": {"measurements": [hex::encode([1u8; 48])]}, "resources": ["a/b/c"]});
    let res = json!({"value": "c2VjcmV0"});
    // (method, path, body, admin, operator, auditor) expected success (true) or 403.
    let cases: Vec<(Method, &str, Option<Value>, [bool; 3])> = vec![
        (Method::GET, "/admin/v1/whoami", None, [true, true, true]),
        (Method::GET, "/admin/v1/users", None, [true, false, false]),
        (
            Method::GET,
            "/admin/v1/workloads",
            None,
            [true, true, false],
        ),
        (
            Method::GET,
            "/admin/v1/workloads/web",
            None,
            [true, true, false],
        ),
        (
            Method::PUT,
            "/admin/v1/workloads/tmp",
            Some(wl.clone()),
            [true, true, false],
        ),
        (
            Method::PUT,
            "/admin/v1/workloads/granted",
            Some(granted.clone()),
            [true, false, false],
        ),
        (
            Method::GET,
            "/admin/v1/resources",
            None,
            [true, true, false],
        ),
        (
            Method::PUT,
            "/admin/v1/resources/a/b/c",
            Some(res.clone()),
            [true, false, false],
        ),
        (Method::GET, "/admin/v1/inventory", None, [true, true, true]),
        (Method::GET, "/admin/v1/audit", None, [true, false, true]),
        (
            Method::GET,
            "/admin/v1/audit/verify",
            None,
            [true, false, true],
        ),
    ];
    for (method, path, body, allowed) in &cases {
        for (who, c, ok) in [
            ("admin", &admin, allowed[0]),
            ("operator", &op, allowed[1]),
            ("auditor", &au, allowed[2]),
        ] {
            let got = status_of(c.call(method.clone(), path, body.as_ref()).await);
            let want_ok = if ok { got < 300 } else { got == 403 };
            assert!(want_ok, "{who} {method} {path}: got {got}");
        }
    }
    // Users are managed by admins only.
    let s = status_of(
        op.call(
            Method::POST,
            "/admin/v1/users",
            Some(&json!({"name": "x", "role": "admin"})),
        )
        .await,
    );
    assert_eq!(s, 403);
    // The last admin cannot be deleted; unknown users are 404.
    assert_eq!(
        status_of(
            admin
                .call(Method::DELETE, "/admin/v1/users/admin", None)
                .await
        ),
        409
    );
    assert_eq!(
        status_of(
            admin
                .call(Method::DELETE, "/admin/v1/users/nobody", None)
                .await
        ),
        404
    );
    assert_eq!(
        status_of(
            admin
                .call(Method::DELETE, "/admin/v1/users/auditor1", None)
                .await
        ),
        200
    );
    // A deleted user's token stops working.
    assert_eq!(
        status_of(au.call(Method::GET, "/admin/v1/whoami", None).await),
        401
    );
    // Resource values are never returned by the API.
    let list = admin
        .call(Method::GET, "/admin/v1/resources", None)
        .await
        .unwrap();
    assert!(!list.to_string().contains("c2VjcmV0"));
    // Admin changes are audited with the actor.
    let records = audit_records(&admin).await;
    assert!(records.iter().any(|r| r["kind"] == "admin-change"
        && r["actor"] == "operator1"
        && r["subject"] == "workload:tmp"));
    // Malformed admin bodies and queries are problems.
    assert_eq!(
        status_of(
            admin
                .call(
                    Method::PUT,
                    "/admin/v1/workloads/x",
                    Some(&json!({"bogus": 1}))
                )
                .await
        ),
        400
    );
    assert_eq!(
        status_of(
            admin
                .call(Method::GET, "/admin/v1/inventory?stale=abc", None)
                .await
        ),
        400
    );
    assert_eq!(
        status_of(
            admin
                .call(Method::PUT, "/admin/v1/resources/a/../c", Some(&res))
                .await
        ),
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn totp_enforced_and_failures_limited_and_audited() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, &[]);
    let good = admin_client(&server, &creds);
    assert_eq!(
        status_of(good.call(Method::GET, "/admin/v1/whoami", None).await),
        200
    );
    let no_totp = AdminClient::new(
        http(),
        &server.base,
        Zeroizing::new(creds.token.clone()),
        None,
    );
    let r = no_totp.call(Method::GET, "/admin/v1/whoami", None).await;
    assert!(
        matches!(&r, Err(ClientError::Status { status: 401, detail, .. }) if detail.contains("TOTP")),
        "{r:?}"
    );
    let wrong = AdminClient::new(
        http(),
        &server.base,
        Zeroizing::new(creds.token.clone()),
        Some(Zeroizing::new(
            if totp_now(&creds.totp_secret) == "000000" {
                "111111".into()
            } else {
                "000000".into()
            },
        )),
    );
    assert_eq!(
        status_of(wrong.call(Method::GET, "/admin/v1/whoami", None).await),
        401
    );
    // A wrong secret with the right token id.
    let (id, _) = verifier::store::users::split_token(&creds.token).unwrap();
    let forged = AdminClient::new(
        http(),
        &server.base,
        Zeroizing::new(format!("cvmv.{id}.AAAA")),
        None,
    );
    assert_eq!(
        status_of(forged.call(Method::GET, "/admin/v1/whoami", None).await),
        401
    );
    // Raw HTTP without credentials: a problem document.
    let r = http()
        .get(format!("{}/admin/v1/whoami", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // Failures are audited with their reason.
    let records = audit_records(&good).await;
    let reasons: Vec<&str> = records
        .iter()
        .filter(|r| r["kind"] == "auth-failure")
        .filter_map(|r| r["detail"]["reason"].as_str())
        .collect();
    for want in [
        "totp-missing",
        "totp-wrong",
        "bad-token",
        "malformed-credentials",
    ] {
        assert!(reasons.contains(&want), "{want} not audited: {reasons:?}");
    }
    // The user has 3 failures (limit 5): two more, then even correct credentials are refused.
    assert_eq!(
        status_of(good.call(Method::GET, "/admin/v1/whoami", None).await),
        200
    );
    assert_eq!(
        status_of(wrong.call(Method::GET, "/admin/v1/whoami", None).await),
        401
    );
    assert_eq!(
        status_of(wrong.call(Method::GET, "/admin/v1/whoami", None).await),
        401
    );
    assert_eq!(
        status_of(good.call(Method::GET, "/admin/v1/whoami", None).await),
        429
    );
    let metrics = http()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cvm_admin_auth_failures_total 7"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn second_bootstrap_refused() {
    let env = Env::new();
    bootstrap(&env);
    let out = run(&[
        "admin",
        "bootstrap",
        "--database",
        &env.database,
        "--master-key-file",
        env.mk(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bootstrap is refused"));
}

/// Issue 14 finding 9: an operator token alone (no second factor) cannot grant a secret;
/// operators still manage the reference values of existing grants, never removing the
/// last one, and may close access but not reopen it.
#[tokio::test(flavor = "multi_thread")]
async fn operator_token_cannot_grant_secrets() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, &[]);
    let admin = admin_client(&server, &creds);
    provision(&admin, "web").await;
    let v = admin
        .call(
            Method::POST,
            "/admin/v1/users",
            Some(&json!({"name": "op", "role": "operator"})),
        )
        .await
        .unwrap();
    let op = AdminClient::new(
        http(),
        &server.base,
        Zeroizing::new(v["token"].as_str().unwrap().to_owned()),
        None,
    );
    let m = hex::encode(MEASUREMENT);
    let other = hex::encode([0x77u8; 48]);
    let forbidden = |r: Result<Value, ClientError>, what: &str| match r {
        Err(ClientError::Status {
            status: 403, body, ..
        }) => {
            assert!(body.contains("admin role"), "{what}: {body}")
        }
        other => panic!("{what}: expected 403, got {other:?}"),
    };
    // The attack: a new workload granting the disk key to the operator's own build.
    forbidden(
        op.call(
            Method::PUT,
            "/admin/v1/workloads/mine",
            Some(&json!({"tee": "snp", "policy": {"measurements": [other], "allow_emulated": true}, "resources": [RESOURCE]})),
        )
        .await,
        "new workload with a grant",
    );
    // Nor by rewriting an existing grant, nor allow_any_measurement, nor a resource value.
    forbidden(
        op.call(
            Method::PUT,
            "/admin/v1/workloads/web",
            Some(&json!({"tee": "snp", "policy": {"measurements": [m, other], "allow_emulated": true, "allow_debug": true}, "resources": [RESOURCE]})),
        )
        .await,
        "replace a granted workload",
    );
    forbidden(
        op.call(
            Method::PUT,
            "/admin/v1/workloads/any",
            Some(&json!({"tee": "snp", "policy": {"allow_any_measurement": true}})),
        )
        .await,
        "allow_any_measurement",
    );
    forbidden(
        op.call(
            Method::PUT,
            &format!("/admin/v1/resources/{RESOURCE}"),
            Some(&json!({"value": "c2VjcmV0"})),
        )
        .await,
        "resource value",
    );
    let w = admin
        .call(Method::GET, "/admin/v1/workloads/web", None)
        .await
        .unwrap();
    assert_eq!(w["policy"]["measurements"], json!([m]), "unchanged");
    assert!(admin
        .call(Method::GET, "/admin/v1/workloads/mine", None)
        .await
        .is_err());
    // Operators manage reference values of existing grants: add, remove, not the last.
    op.call(
        Method::POST,
        "/admin/v1/workloads/web/measurements",
        Some(&json!({"measurement": other})),
    )
    .await
    .expect("operator adds a measurement");
    op.call(
        Method::DELETE,
        &format!("/admin/v1/workloads/web/measurements/{other}"),
        None,
    )
    .await
    .expect("operator removes one");
    let err = op
        .call(
            Method::DELETE,
            &format!("/admin/v1/workloads/web/measurements/{m}"),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 409, .. }),
        "{err}"
    );
    // A list holding one value twice is still its last value.
    op.call(
        Method::PUT,
        "/admin/v1/workloads/dup",
        Some(&json!({"tee": "snp", "policy": {"measurements": [other, other]}})),
    )
    .await
    .expect("operator creates a workload without grants");
    let err = op
        .call(
            Method::DELETE,
            &format!("/admin/v1/workloads/dup/measurements/{other}"),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 409, .. }),
        "{err}"
    );
    // Closing is allowed, reopening needs the admin.
    revoke(&op, true).await.expect("operator revokes");
    forbidden(revoke(&op, false).await, "restore");
    revoke(&admin, false).await.expect("admin restores");
    // Workloads without grants are the operator's, within the workload rules.
    op.call(
        Method::PUT,
        "/admin/v1/workloads/staging",
        Some(&json!({"tee": "tdx", "policy": {"measurements": [other], "tdx": tdx_pins()}})),
    )
    .await
    .expect("operator creates a workload without grants");
    for (body, want) in [
        (
            json!({"policy": {"measurements": [other]}}),
            "`tee` is required",
        ),
        (
            json!({"tee": "sgx", "policy": {"measurements": [other]}}),
            "unknown variant",
        ),
        (json!({"tee": "snp", "policy": {}}), "allows no measurement"),
        // A TDX workload pinning only MRTD (the firmware) would accept any kernel and
        // command line the host boots under it.
        (
            json!({"tee": "tdx", "policy": {"measurements": [other]}, "resources": [RESOURCE]}),
            "must pin RTMR1 and RTMR2",
        ),
        (
            json!({"tee": "tdx", "policy": {"measurements": [other], "tdx": {"rtmrs": [{"index": 1, "value": hex::encode([0u8; 48])}]}}}),
            "must pin RTMR2",
        ),
        (
            json!({"tee": "snp", "policy": {"measurements": []}}),
            "allows no measurement",
        ),
    ] {
        let err = admin
            .call(Method::PUT, "/admin/v1/workloads/bad", Some(&body))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Status { status: 400, body: b, .. } if b.contains(want)),
            "{body}: {err}"
        );
    }
}

async fn revoke(c: &AdminClient, revoked: bool) -> Result<Value, ClientError> {
    c.call(
        Method::PUT,
        "/admin/v1/workloads/web/revocation",
        Some(&json!({"revoked": revoked})),
    )
    .await
}
