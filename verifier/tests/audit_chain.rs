//! The keyed audit chain and its signed checkpoints (issue 14 finding 8), and audit
//! input hygiene (finding 4, write side), attacked as someone with write access to the
//! database and as an unauthenticated client.

mod common;

use std::process::Output;

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Row};
use verifier::crypto::jwe::TeeKeyPair;
use verifier::store::audit::MAX_RECORD;

async fn sqlite(database: &str) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{database}"))
        .await
        .unwrap()
}

/// A database with some history: bootstrap, provisioning and one key release.
async fn with_history() -> Env {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, &[]);
    provision(&admin_client(&server, &creds), "web").await;
    kbs(&server)
        .fetch(&snp_guest(), &TeeKeyPair::p256(), json!({}), RESOURCE)
        .await
        .unwrap();
    env
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn verify_with_checkpoints(env: &Env, file: &std::path::Path) -> Output {
    run(&[
        "audit",
        "verify",
        "--database",
        &env.database,
        "--master-key-file",
        env.mk(),
        "--checkpoints",
        file.to_str().unwrap(),
    ])
}

/// The attack of finding 8: one INSERT of a record hashed with the (public) unkeyed
/// rule plus an UPDATE of the head. Before the fix `audit verify` reported it intact.
#[tokio::test(flavor = "multi_thread")]
async fn forged_insert_and_head_update_are_detected() {
    let env = with_history().await;
    let ok = audit_verify(&env);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let mut db = sqlite(&env.database).await;
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let (seq, prev): (i64, String) = (head.get(0), head.get(1));
    let forged_seq = seq + 1;
    let ts = 1_800_000_000i64;
    let detail = json!({"session": "forged", "workload": "web", "resource": RESOURCE});
    let canon = serde_json_canonicalizer::to_string(&json!({
        "seq": forged_seq, "ts": ts, "kind": "key-release", "actor": "guest:forged",
        "client": "10.0.0.9", "subject": RESOURCE, "outcome": "released", "detail": detail,
    }))
    .unwrap();
    let mut h = Sha256::new();
    h.update(hex::decode(&prev).unwrap());
    h.update(canon.as_bytes());
    let hash = hex::encode(h.finalize());
    sqlx::query(
        "INSERT INTO audit_log (seq, ts, kind, actor, client, subject, outcome, detail, prev_hash, hash) \
         VALUES ($1, $2, 'key-release', 'guest:forged', '10.0.0.9', $3, 'released', $4, $5, $6)",
    )
    .bind(forged_seq)
    .bind(ts)
    .bind(RESOURCE)
    .bind(serde_json_canonicalizer::to_string(&detail).unwrap())
    .bind(&prev)
    .bind(&hash)
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(forged_seq)
        .bind(&hash)
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    let out = audit_verify(&env);
    assert_eq!(out.status.code(), Some(1), "forged record accepted");
    assert!(
        stderr(&out).contains(&format!("record {forged_seq} was modified or forged")),
        "{}",
        stderr(&out)
    );
    // Without the master key nothing is verified (exit 2, not a false "intact").
    let out = run(&["audit", "verify", "--database", &env.database]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// Deleting the audit key row (to pass a rewritten, unkeyed chain off as legacy) makes
/// `audit verify` fail instead of falling back to the unkeyed rule.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_audit_key_is_detected() {
    let env = with_history().await;
    let mut db = sqlite(&env.database).await;
    sqlx::query("DELETE FROM signing_keys WHERE id = 'audit-hmac-sha256'")
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    let out = audit_verify(&env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not keyed"), "{}", stderr(&out));
}

/// Cutting off the tail and rewriting the head (and the stored checkpoints) to match
/// is invisible in the database alone, but detected against an exported checkpoint.
#[tokio::test(flavor = "multi_thread")]
async fn tail_truncation_is_detected_against_an_exported_checkpoint() {
    let env = with_history().await;
    let out = run(&[
        "audit",
        "checkpoint",
        "--database",
        &env.database,
        "--master-key-file",
        env.mk(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let taken: Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = run(&["audit", "checkpoints", "--database", &env.database]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exported = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.len() >= 2,
        "the transition record and the one taken: {exported}"
    );
    assert_eq!(lines.last().unwrap(), &taken);
    assert!(taken["jws"].as_str().unwrap().split('.').count() == 3);
    let file = env.dir.path().join("checkpoints.jsonl");
    std::fs::write(&file, &exported).unwrap();
    let out = verify_with_checkpoints(&env, &file);
    assert!(out.status.success(), "{}", stderr(&out));

    // The attacker (with DDL rights) removes the last two records, moves the head
    // back and deletes the stored checkpoints beyond it.
    let cut = taken["seq"].as_i64().unwrap() - 2;
    let mut db = sqlite(&env.database).await;
    let keep: String = sqlx::query("SELECT hash FROM audit_log WHERE seq = $1")
        .bind(cut)
        .fetch_one(&mut db)
        .await
        .unwrap()
        .get(0);
    // The database refuses deleting checkpoints…
    let refused = sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&mut db)
        .await;
    assert!(refused.is_err(), "append-only checkpoints");
    // …until the triggers are dropped.
    for q in [
        "DROP TRIGGER audit_log_no_delete".to_owned(),
        "DROP TRIGGER audit_checkpoints_no_delete".to_owned(),
        format!("DELETE FROM audit_log WHERE seq > {cut}"),
        format!("DELETE FROM audit_checkpoints WHERE seq > {cut}"),
        format!("UPDATE audit_head SET seq = {cut}, hash = '{keep}' WHERE id = 1"),
    ] {
        sqlx::query(&q).execute(&mut db).await.unwrap();
    }
    db.close().await.unwrap();
    // What the database alone shows (documented: the tail after the last exported
    // checkpoint can be cut).
    assert!(audit_verify(&env).status.success());
    let out = verify_with_checkpoints(&env, &file);
    assert_eq!(out.status.code(), Some(1), "truncation not detected");
    assert!(
        stderr(&out).contains("beyond the log's end"),
        "{}",
        stderr(&out)
    );

    // A checkpoint whose fields were changed no longer matches its signature.
    let mut forged = lines[0].clone();
    forged["seq"] = json!(cut + 5);
    let bad = env.dir.path().join("forged.jsonl");
    std::fs::write(&bad, format!("{forged}\n")).unwrap();
    let out = verify_with_checkpoints(&env, &bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not match what was signed"),
        "{}",
        stderr(&out)
    );
}

/// Finding 4 (write side): a malformed attest with a 500 KB body, and resource paths
/// carrying terminal escapes and newlines, are stored bounded and escaped; the error
/// answered to the client does not echo the input either. Before the fix the serde
/// message put the whole body into one record.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_is_stored_bounded_and_escaped() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, &[]);
    provision(&admin_client(&server, &creds), "web").await;
    let http = http();
    let big = "A".repeat(500 << 10);
    // A real session: the body of an unknown session is not even read.
    let challenge = http
        .post(format!("{}/kbs/v0/auth", server.base))
        .json(&serde_json::json!({"version": "0.4.0", "tee": "snp", "extra-params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(challenge.status(), 200);
    let cookie = challenge.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let resp = http
        .post(format!("{}/kbs/v0/attest", server.base))
        .header("cookie", cookie)
        .header("content-type", "application/json")
        .body(format!("{{\"runtime-data\": \"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(
        text.len() < 2048,
        "the answer echoes the body: {} bytes",
        text.len()
    );
    for path in [
        "evil%1B%5B2J/x%0Aforged%20line/tag",
        "evil/%E2%80%AEtxt/%0D",
    ] {
        let resp = http
            .get(format!("{}/kbs/v0/resource/{path}", server.base))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_client_error(), "{}", resp.status());
    }
    drop(server);

    let mut db = sqlite(&env.database).await;
    let rows =
        sqlx::query("SELECT seq, actor, client, subject, outcome, detail, kind FROM audit_log")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let mut evil = 0;
    for r in &rows {
        let fields: Vec<String> = (1..7).map(|i| r.get::<String, _>(i)).collect();
        let size: usize = fields.iter().map(String::len).sum();
        assert!(
            size <= MAX_RECORD,
            "record {} holds {size} bytes",
            r.get::<i64, _>(0)
        );
        for f in &fields {
            assert!(
                !f.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "raw control character stored: {f:?}"
            );
        }
        if fields.iter().any(|f| f.contains("evil")) {
            evil += 1;
            assert!(
                fields
                    .iter()
                    .any(|f| f.contains("\\u{1b}") || f.contains("\\u{202e}")),
                "{fields:?}"
            );
        }
    }
    assert!(evil >= 1, "the refused releases were audited");
    db.close().await.unwrap();
    let out = audit_verify(&env);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Red-team round 2, finding 11: checkpoints were signed like tokens (header `typ` `JWT`,
/// `exp` in 9999), so a relying party checking only signature and `exp` accepted one as a
/// token. Now they carry their own JOSE `typ` and no `exp`, and still verify.
#[tokio::test]
async fn checkpoints_are_typed_and_never_expire_like_tokens() {
    use base64::Engine;
    let env = with_history().await;
    let out = run(&[
        "audit",
        "checkpoint",
        "--database",
        &env.database,
        "--master-key-file",
        env.mk(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let taken: Value = serde_json::from_slice(&out.stdout).unwrap();
    let jws = taken["jws"].as_str().unwrap();
    let part = |i: usize| -> Value {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jws.split('.').nth(i).unwrap())
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    };
    assert_eq!(part(0)["typ"], "cvm-audit-checkpoint+jwt", "{}", part(0));
    assert!(part(1).get("exp").is_none(), "{}", part(1));
    assert!(part(1).get("session").is_none());
    assert!(audit_verify(&env).status.success());
}
