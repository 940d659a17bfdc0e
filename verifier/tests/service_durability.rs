//! Durability and integrity: audit tamper detection, kill -9 and restart, HTTPS,
//! configuration refusals, master-key permissions and rotation, PostgreSQL.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::{json, Value};
use sqlx::Connection;
use verifier::crypto::jwe::TeeKeyPair;

async fn sqlite(database: &str) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{database}"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_tampering_detected() {
    let env = Env::new();
    let creds = bootstrap(&env);
    {
        let server = start(&env, &[]);
        let admin = admin_client(&server, &creds);
        provision(&admin, "web").await;
        kbs(&server)
            .fetch(&snp_guest(), &TeeKeyPair::p256(), json!({}), RESOURCE)
            .await
            .unwrap();
    }
    let ok = audit_verify(&env);
    assert!(ok.status.success());
    let report: Value = serde_json::from_slice(&ok.stdout).unwrap();
    let n = report["records"].as_i64().unwrap();
    assert!(n >= 5, "{report}");

    // The database itself refuses updates of audit records.
    let mut db = sqlite(&env.database).await;
    let err = sqlx::query("UPDATE audit_log SET outcome = 'accepted' WHERE seq = 2")
        .execute(&mut db)
        .await;
    assert!(err.is_err(), "append-only trigger");

    // With DDL rights an attacker can drop the triggers; the chain still catches it.
    sqlx::query("DROP TRIGGER audit_log_no_update")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER audit_log_no_delete")
        .execute(&mut db)
        .await
        .unwrap();
    let original: (String,) = sqlx::query_as("SELECT outcome FROM audit_log WHERE seq = 3")
        .fetch_one(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET outcome = 'tampered' WHERE seq = 3")
        .execute(&mut db)
        .await
        .unwrap();
    let out = audit_verify(&env);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("record 3 was modified"));
    sqlx::query("UPDATE audit_log SET outcome = $1 WHERE seq = 3")
        .bind(&original.0)
        .execute(&mut db)
        .await
        .unwrap();
    assert!(audit_verify(&env).status.success(), "undone");
    // Reordering: swap two records.
    let swap = [
        "UPDATE audit_log SET seq = -1 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 4",
        "UPDATE audit_log SET seq = 4 WHERE seq = -1",
    ];
    for q in swap {
        sqlx::query(q).execute(&mut db).await.unwrap();
    }
    let out = audit_verify(&env);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not link"));
    for q in swap {
        sqlx::query(q).execute(&mut db).await.unwrap();
    }
    assert!(audit_verify(&env).status.success(), "swapped back");
    // Removing the last record.
    sqlx::query(&format!("DELETE FROM audit_log WHERE seq = {n}"))
        .execute(&mut db)
        .await
        .unwrap();
    let out = audit_verify(&env);
    assert_eq!(out.status.code(), Some(1), "tail removal detected");
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed"));
    // Removing a middle record.
    sqlx::query("DELETE FROM audit_log WHERE seq = 2")
        .execute(&mut db)
        .await
        .unwrap();
    let out = audit_verify(&env);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("record 2 is missing"));
    db.close().await.unwrap();

    // Export writes JSON lines.
    let out = run(&[
        "audit",
        "export",
        "--database",
        &env.database,
        "--since",
        "1970-01-01T00:00:00Z",
    ]);
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 3);
    assert!(lines
        .iter()
        .all(|l| l["hash"].as_str().is_some_and(|h| h.len() == 64)));
    let out = run(&[
        "audit",
        "export",
        "--database",
        &env.database,
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert!(out.status.success() && out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_restart_keeps_everything() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let key = TeeKeyPair::p384();
    let server = start(&env, &[]);
    let admin = admin_client(&server, &creds);
    provision(&admin, "web").await;
    let client = kbs(&server);
    // Attest on this instance, then kill it hard before the resource is fetched.
    let ch = client.auth("snp", json!({})).await.unwrap();
    let body = verifier::client::kbs::KbsClient::attestation(&ch, &key, &snp_guest()).unwrap();
    let token = client.attest_raw(&ch.session, &body).await.unwrap();
    let mut server = server;
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    let _ = server.child.wait();
    drop(server);
    assert!(audit_verify(&env).status.success());

    // A new instance finishes the session the old one began (sessions are in the DB).
    let server = start(&env, &[]);
    let client = kbs(&server);
    let jwe = client
        .resource_jwe(&token, RESOURCE)
        .await
        .expect("token survives restart");
    assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), SECRET);
    let admin = admin_client(&server, &creds);
    let w = admin
        .call(reqwest::Method::GET, "/admin/v1/workloads/web", None)
        .await
        .unwrap();
    assert_eq!(w["resources"][0], RESOURCE);
    drop(server);
    let out = audit_verify(&env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Inventory CLI sees the guest; nothing is stale yet.
    let out = run(&["inventory", "--database", &env.database, "--output", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["guests"].as_array().unwrap().len(), 1);
    let out = run(&[
        "inventory",
        "--database",
        &env.database,
        "--stale",
        "1h",
        "--output",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["guests"].as_array().unwrap().len(), 0);
}

/// `kill -9` while guests are attesting and fetching keys: after a restart the audit
/// chain verifies, the workload and resource are intact, every key a guest received has
/// its committed release record (a release and its audit record commit together), and
/// guests can attest again.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_load() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let env = Env::new();
    let creds = bootstrap(&env);
    let mut server = start(&env, &[]);
    provision(&admin_client(&server, &creds), "web").await;
    let received = Arc::new(AtomicUsize::new(0));
    let mut guests = Vec::new();
    for _ in 0..6 {
        let (client, received) = (kbs(&server), received.clone());
        guests.push(tokio::spawn(async move {
            // Each guest attests and fetches until the server disappears.
            while let Ok(got) = client
                .fetch(&snp_guest(), &TeeKeyPair::p256(), json!({}), RESOURCE)
                .await
            {
                assert_eq!(got.as_slice(), SECRET);
                received.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while received.load(Ordering::SeqCst) < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "load did not get going"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    let _ = server.child.wait();
    drop(server);
    for g in guests {
        g.await.unwrap();
    }
    let delivered = received.load(Ordering::SeqCst);

    let out = audit_verify(&env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let export = run(&[
        "audit",
        "export",
        "--database",
        &env.database,
        "--since",
        "1970-01-01T00:00:00Z",
    ]);
    assert!(export.status.success());
    let releases = String::from_utf8_lossy(&export.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "key-release" && r["outcome"] == "released")
        .count();
    assert!(
        releases >= delivered,
        "{delivered} keys delivered but only {releases} release records"
    );

    let server = start(&env, &[]);
    let w = admin_client(&server, &creds)
        .call(reqwest::Method::GET, "/admin/v1/workloads/web", None)
        .await
        .unwrap();
    assert_eq!(w["resources"][0], RESOURCE);
    let got = kbs(&server)
        .fetch(&snp_guest(), &TeeKeyPair::p256(), json!({}), RESOURCE)
        .await
        .unwrap();
    assert_eq!(got.as_slice(), SECRET);
    drop(server);
    assert!(audit_verify(&env).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn https_and_config_refusals() {
    let env = Env::new();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = env.dir.path().join("cert.pem");
    let key_path = env.dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let server = start_args(
        &env,
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            path_str(&cert_path),
            "--tls-key",
            path_str(&key_path),
        ],
        &[],
    );
    assert!(server.base.starts_with("https://"));
    let client = verifier::client::http_client(Some(&cert_path)).unwrap();
    let r = client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A client that does not trust the certificate fails the handshake.
    assert!(http()
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .is_err());
    // The challenge cookie is Secure over HTTPS.
    let r = client
        .post(format!("{}/kbs/v0/auth", server.base))
        .json(&json!({"version": "0.4.0", "tee": "snp", "extra-params": ""}))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("; Secure"));
    drop(server);

    // Plain HTTP on a non-loopback address is refused.
    let out = run(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--insecure-http",
        "--database",
        &env.database,
        "--master-key-file",
        env.mk(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    // Neither TLS nor --insecure-http.
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database",
        &env.database,
        "--master-key-file",
        env.mk(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    // A config file with an unknown key.
    let cfg = env.dir.path().join("bad.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n").unwrap();
    let out = run(&["serve", "--config", path_str(&cfg)]);
    assert_eq!(out.status.code(), Some(2));
    // A good config file is honoured (listen and insecure_http come from it).
    let cfg = env.dir.path().join("good.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ninsecure_http = true\n[database]\nurl = \"{}\"\n[keys]\nmaster_key_file = \"{}\"\n",
            env.database,
            env.mk()
        ),
    )
    .unwrap();
    let server = start_args(&env, &["--config", path_str(&cfg)], &[]);
    assert!(server.base.starts_with("http://127.0.0.1:"));
}

/// The master key can come from a KMS-style command instead of a file: the server
/// started that way opens what was sealed under the file's key (the admin's TOTP
/// secret), and a failing command stops it from starting.
#[tokio::test(flavor = "multi_thread")]
async fn master_key_from_a_command() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let cmd = format!("cat {}", env.mk());
    let server = spawn_server(&[
        "--listen",
        "127.0.0.1:0",
        "--insecure-http",
        "--database",
        &env.database,
        "--master-key-command",
        &cmd,
    ]);
    provision(&admin_client(&server, &creds), "web").await;
    drop(server);
    for bad in ["exit 1", "echo not-a-key"] {
        let out = run(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--database",
            &env.database,
            "--master-key-command",
            bad,
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("master key command"), "{bad}: {err}");
        assert!(
            !err.contains("not-a-key"),
            "the command's output is never echoed: {err}"
        );
    }
    let both = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--insecure-http",
        "--database",
        &env.database,
        "--master-key-file",
        env.mk(),
        "--master-key-command",
        &cmd,
    ]);
    assert_eq!(both.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn master_key_permissions_and_rotation() {
    let env = Env::new();
    let creds = bootstrap(&env);
    {
        let server = start(&env, &[]);
        provision(&admin_client(&server, &creds), "web").await;
    }
    // A world-readable key file is refused.
    std::fs::set_permissions(&env.master_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--insecure-http",
        "--database",
        &env.database,
        "--master-key-file",
        env.mk(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0600"));
    std::fs::set_permissions(&env.master_key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Rotate to a new key; the old key no longer opens the database.
    let new_key = env.dir.path().join("new.key");
    assert!(run(&["admin", "gen-master-key", path_str(&new_key)])
        .status
        .success());
    assert_eq!(
        std::fs::metadata(&new_key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = run(&[
        "admin",
        "rotate-master-key",
        "--database",
        &env.database,
        "--master-key-file",
        env.mk(),
        "--new-master-key-file",
        path_str(&new_key),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--insecure-http",
        "--database",
        &env.database,
        "--master-key-file",
        env.mk(),
    ]);
    assert_eq!(out.status.code(), Some(2), "old key refused after rotation");
    std::fs::copy(&new_key, &env.master_key).unwrap();
    let server = start(&env, &[]);
    // Everything sealed still opens: TOTP (admin login) and the resource (release).
    let admin = admin_client(&server, &creds);
    admin
        .call(reqwest::Method::GET, "/admin/v1/whoami", None)
        .await
        .unwrap();
    let got = kbs(&server)
        .fetch(&snp_guest(), &TeeKeyPair::p256(), json!({}), RESOURCE)
        .await
        .unwrap();
    assert_eq!(got.as_slice(), SECRET);
    let records = audit_records(&admin).await;
    assert!(records
        .iter()
        .any(|r| r["subject"] == "master-key" && r["outcome"] == "rotated"));
    // No secret bytes at rest in the database file.
    drop(server);
    let raw = std::fs::read(&env.database).unwrap();
    assert!(!raw.windows(SECRET.len()).any(|w| w == SECRET));
    // The audit key was re-wrapped with the other sealed values: the whole chain,
    // written before and after the rotation, verifies with the new key.
    let out = audit_verify(&env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PostgreSQL: the same flow against `CVM_TEST_POSTGRES_URL` (a server where the user
/// may CREATE DATABASE). Skipped, visibly, when unset; fails when unset under CI.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_flow() {
    // scripts/test sets it when PostgreSQL is up (and under CI it must be).
    let url = test_kit::require!(env "CVM_TEST_POSTGRES_URL");
    let name = format!("cvm_test_{}", verifier::crypto::random_hex(6));
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to CVM_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
    let db_url = format!("{base}/{name}");
    let env = Env::with_database(tempfile::tempdir().unwrap(), db_url.clone());
    let creds = bootstrap(&env);
    {
        let server = start(&env, &[]);
        let admin = admin_client(&server, &creds);
        provision(&admin, "web").await;
        let client = kbs(&server);
        for key in [TeeKeyPair::p256(), TeeKeyPair::rsa(2048).unwrap()] {
            let got = client
                .fetch(&snp_guest(), &key, json!({}), RESOURCE)
                .await
                .unwrap();
            assert_eq!(got.as_slice(), SECRET);
        }
        let got = client
            .fetch(&tdx_guest(), &TeeKeyPair::p256(), json!({}), RESOURCE)
            .await
            .unwrap();
        assert_eq!(got.as_slice(), SECRET);
        // Replay refused on PostgreSQL too.
        let ch = client.auth("snp", json!({})).await.unwrap();
        let body =
            verifier::client::kbs::KbsClient::attestation(&ch, &TeeKeyPair::p256(), &snp_guest())
                .unwrap();
        client.attest_raw(&ch.session, &body).await.unwrap();
        assert!(client.attest_raw(&ch.session, &body).await.is_err());

        // Two replicas share the database: a session begun on one is finished on the
        // other, the token from one is honoured by the other, and a replay is refused
        // by both.
        let replica = start(&env, &[]);
        let other = kbs(&replica);
        let key = TeeKeyPair::p256();
        let ch = client.auth("snp", json!({})).await.unwrap();
        let body = verifier::client::kbs::KbsClient::attestation(&ch, &key, &snp_guest()).unwrap();
        let token = other
            .attest_raw(&ch.session, &body)
            .await
            .expect("replica finishes the session");
        let jwe = client
            .resource_jwe(&token, RESOURCE)
            .await
            .expect("first replica honours the token");
        assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), SECRET);
        assert!(
            client.attest_raw(&ch.session, &body).await.is_err(),
            "replay refused on the first replica"
        );
        assert!(
            other.attest_raw(&ch.session, &body).await.is_err(),
            "replay refused on the second replica"
        );
    }
    assert!(audit_verify(&env).status.success());
    let mut db = sqlx::PgConnection::connect(&db_url).await.unwrap();
    assert!(
        sqlx::query("UPDATE audit_log SET outcome = 'x' WHERE seq = 2")
            .execute(&mut db)
            .await
            .is_err()
    );
    sqlx::query("DROP TRIGGER audit_log_no_update ON audit_log")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET outcome = 'x' WHERE seq = 2")
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(audit_verify(&env).status.code(), Some(1));
    db.close().await.unwrap();
    let second = run(&[
        "admin",
        "bootstrap",
        "--database",
        &db_url,
        "--master-key-file",
        env.mk(),
    ]);
    assert_eq!(second.status.code(), Some(1));
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Online rotation: at every moment one replica serves; the keys roll in phases
/// (accept new → seal new, accept old → re-wrap online → new only) and every secret
/// opens throughout.
#[tokio::test(flavor = "multi_thread")]
async fn master_key_rotation_without_downtime() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let old = env.mk().to_owned();
    let new_key = env.dir.path().join("new.key");
    assert!(run(&["admin", "gen-master-key", path_str(&new_key)])
        .status
        .success());
    let new = path_str(&new_key).to_owned();
    let serve = |main: &str, extra: Option<&str>| {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--emulated-trust",
            emulated_dir().to_str().unwrap(),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.extend(["--database".into(), env.database.clone()]);
        args.extend(["--master-key-file".into(), main.to_owned()]);
        if let Some(e) = extra {
            args.extend(["--extra-master-key-file".into(), e.to_owned()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_server(&refs)
    };
    let fetch = |server: &Server| {
        let k = kbs(server);
        async move {
            k.fetch(&snp_guest(), &TeeKeyPair::p256(), json!({}), RESOURCE)
                .await
                .unwrap()
        }
    };
    // Phase 0: the old key only.
    let a = serve(&old, None);
    provision(&admin_client(&a, &creds), "web").await;
    // Phase 1: seal with the old key, accept the new one.
    let b = serve(&old, Some(&new));
    assert_eq!(fetch(&b).await.as_slice(), SECRET);
    drop(a);
    // Phase 2: seal with the new key, accept the old one; new secrets use the new key.
    let c = serve(&new, Some(&old));
    drop(b);
    let admin = admin_client(&c, &creds);
    admin
        .call(reqwest::Method::GET, "/admin/v1/whoami", None)
        .await
        .unwrap();
    let out = admin
        .call(
            reqwest::Method::POST,
            "/admin/v1/users",
            Some(&json!({"name": "ops", "role": "admin"})),
        )
        .await;
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(fetch(&c).await.as_slice(), SECRET);
    // Phase 3: re-wrap everything still under the old key while `c` serves.
    let out = run(&[
        "admin",
        "rotate-master-key",
        "--database",
        &env.database,
        "--master-key-file",
        &old,
        "--new-master-key-file",
        &new,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fetch(&c).await.as_slice(), SECRET);
    // Phase 4: the new key only; everything opens, including the user made in phase 2.
    let d = serve(&new, None);
    drop(c);
    assert_eq!(fetch(&d).await.as_slice(), SECRET);
    let admin = admin_client(&d, &creds);
    let records = audit_records(&admin).await;
    let rot = records
        .iter()
        .find(|r| r["subject"] == "master-key" && r["outcome"] == "rotated")
        .expect("rotation record");
    // The admin's TOTP secret, the resource and the token key were re-wrapped; the new
    // user's TOTP secret was already under the new key.
    assert!(rot["detail"]["values"].as_u64().unwrap() >= 3, "{rot}");
    assert_eq!(rot["detail"]["already_new"], 1, "{rot}");
    // A replica with only the old key is refused now.
    drop(d);
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--insecure-http",
        "--database",
        &env.database,
        "--master-key-file",
        &old,
    ]);
    assert_eq!(out.status.code(), Some(2));
}
