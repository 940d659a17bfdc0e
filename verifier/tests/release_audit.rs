//! A released key leaves only with its committed audit record (issue 15, performance:
//! the group commit of `src/db.rs` must not weaken this).

mod common;

use common::*;
use serde_json::json;
use sqlx::Connection;
use verifier::crypto::jwe::TeeKeyPair;

/// Attack: make the release's audit record impossible to write (here a trigger added by
/// someone with write access to the database file; in production a full disk or an I/O
/// error) and ask for the key. The release must fail closed — no JWE, no release
/// signature — and the key must be released normally once the audit log accepts writes
/// again (the session is untouched).
#[tokio::test(flavor = "multi_thread")]
async fn release_fails_closed_when_its_audit_record_cannot_be_written() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, &[]);
    let admin = admin_client(&server, &creds);
    provision(&admin, "web").await;
    let client = kbs(&server);
    let key = TeeKeyPair::p256();
    let ch = client.auth("snp", json!({})).await.unwrap();
    let body = verifier::client::kbs::KbsClient::attestation(&ch, &key, &snp_guest()).unwrap();
    let token = client.attest_raw(&ch.session, &body).await.unwrap();

    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", env.database))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER test_no_release_audit BEFORE INSERT ON audit_log \
         WHEN NEW.kind = 'key-release' AND NEW.outcome = 'released' \
         BEGIN SELECT RAISE(ABORT, 'the audit log refuses the release record'); END",
    )
    .execute(&mut db)
    .await
    .unwrap();

    let resp = http()
        .get(format!("{}/kbs/v0/resource/{RESOURCE}", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500, "refused, not released");
    assert!(
        resp.headers().get("cvm-release-signature").is_none(),
        "no release signature"
    );
    let text = resp.text().await.unwrap();
    assert!(!text.contains("ciphertext"), "no JWE: {text}");
    let released: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_log WHERE kind = 'key-release' AND outcome = 'released'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(released.0, 0);

    sqlx::query("DROP TRIGGER test_no_release_audit")
        .execute(&mut db)
        .await
        .unwrap();
    let jwe = client
        .resource_jwe(&token, RESOURCE)
        .await
        .expect("released");
    assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), SECRET);
    let released: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_log WHERE kind = 'key-release' AND outcome = 'released'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(released.0, 1, "exactly the release that left is audited");
    drop(db);
    drop(server);
    assert!(audit_verify(&env).status.success());
}
