//! The full RCAR flow against the real server, driven like a guest agent: auth,
//! attest with emulated SNP/TDX evidence, resource fetch, JWE decryption by the guest.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use verifier::client::kbs::{EvidenceSource, KbsClient};
use verifier::crypto::jwe::TeeKeyPair;
use verifier::crypto::token::{verify_with, verifying_key_from_jwk};

#[tokio::test(flavor = "multi_thread")]
async fn snp_and_tdx_release_with_every_key_type() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, &[]);
    let admin = admin_client(&server, &creds);
    provision(&admin, "web").await;
    let client = kbs(&server);

    let snp = snp_guest();
    for key in [
        TeeKeyPair::p256(),
        TeeKeyPair::p384(),
        TeeKeyPair::rsa(2048).unwrap(),
    ] {
        let got = client
            .fetch(&snp, &key, json!({}), RESOURCE)
            .await
            .expect("SNP release");
        assert_eq!(got.as_slice(), SECRET);
    }
    let tdx = tdx_guest();
    let got = client
        .fetch(
            &tdx,
            &TeeKeyPair::p256(),
            json!({"workload": "web-tdx"}),
            RESOURCE,
        )
        .await
        .expect("TDX release");
    assert_eq!(got.as_slice(), SECRET);

    // The token is an ES256 JWT verifiable with the published JWKS and marked emulated.
    let ch = client.auth("snp", json!({})).await.unwrap();
    let key = TeeKeyPair::p256();
    let body = KbsClient::attestation(&ch, &key, &snp).unwrap();
    let token = client.attest_raw(&ch.session, &body).await.unwrap();
    let jwks: Value = http()
        .get(format!("{}/.well-known/jwks.json", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (vk, kid) = verifying_key_from_jwk(&jwks["keys"][0]).unwrap();
    let claims = verify_with(&vk, &kid, &token, 0).expect("token verifies with the JWKS");
    assert_eq!(claims["trust"], "insecure-emulated");
    assert_eq!(claims["submods"]["cpu"]["ear.status"], "warning");
    assert_eq!(claims["workload"], "web");
    assert_eq!(
        claims["tee-pubkey"],
        serde_json::to_value(key.public_jwk()).unwrap()
    );
    assert_eq!(
        claims["submods"]["cpu"]["ear.veraison.annotated-evidence"]["measurement"],
        hex::encode(MEASUREMENT)
    );

    // The session cookie also authorizes the resource request.
    let resp = http()
        .get(format!("{}/kbs/v0/resource/{RESOURCE}", server.base))
        .header("cookie", format!("kbs-session-id={}", ch.session))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let jwe = resp.bytes().await.unwrap();
    assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), SECRET);

    // Inventory, metrics and audit reflect the releases.
    let inv = admin
        .call(Method::GET, "/admin/v1/inventory", None)
        .await
        .unwrap();
    let guests = inv["guests"].as_array().unwrap();
    assert_eq!(guests.len(), 2, "one SNP chip and one TDX platform: {inv}");
    assert!(guests
        .iter()
        .any(|g| g["tee"] == "snp" && g["attestations"] == 4));
    let metrics = http()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"cvm_attestations_total{tee="snp",outcome="accepted"} 4"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"cvm_key_releases_total{outcome="released"} 5"#),
        "{metrics}"
    );
    assert!(metrics.contains("cvm_attestation_duration_seconds_bucket"));
    let records = audit_records(&admin).await;
    assert_eq!(
        records
            .iter()
            .filter(|r| r["kind"] == "key-release" && r["outcome"] == "released")
            .count(),
        5
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r["kind"] == "attestation" && r["outcome"] == "accepted")
            .count(),
        5
    );
    // No secret value reaches the audit log.
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains("disk encryption key"));
    drop(server);
    let out = audit_verify(&env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_and_problem_for_unknown_route() {
    let env = Env::new();
    let server = start(&env, &[]);
    let r = http()
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .get(format!("{}/nope", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], 404);
}

/// The emulated guest's evidence source is what the load generator uses; check the
/// loadgen subcommand end to end with a few flows.
#[tokio::test(flavor = "multi_thread")]
async fn loadgen_runs_flows() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, &[]);
    provision(&admin_client(&server, &creds), "web").await;
    let base = server.base.clone();
    let dir = emulated_dir();
    let m = hex::encode(MEASUREMENT);
    let out = tokio::task::spawn_blocking(move || {
        run(&[
            "loadgen",
            "--url",
            &base,
            "--emulated",
            path_str(&dir),
            "--tee",
            "snp",
            "--measurement",
            &m,
            "--resource",
            RESOURCE,
            "--concurrency",
            "2",
            "--requests",
            "6",
        ])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], 6);
    let _ = snp_guest().tee();
}
