//! The cost of each stage of one complete guest flow (auth, attest, key release) in the
//! verifier, measured one stage at a time with the verifier's own code, so the
//! per-flow CPU time `scripts/bench-verifier` reports can be split up (issue 15,
//! performance). Usage: `flow_stages PLATFORM_DIR` (an emulated SNP platform, as
//! `examples/emulated_snp_platform` writes it).
//!
//! For every stage: wall time and the process's CPU time (all threads, so SQLite's
//! worker threads count) per call, the best of three runs. Database stages run on a
//! temporary SQLite file exactly as the service opens it (WAL, group commit), one call
//! at a time: a durable commit's wall time is then one whole `fdatasync`, which the
//! service shares between concurrent commits. HTTP (hyper, axum, the connection's
//! tasks) is not a stage here; it is what remains of the per-flow CPU time.
//!
//! Output: one JSON object, `{"stages": [{"stage", "per_flow", "wall_us", "cpu_us"}],
//! "p384_verify_us"}`.

use std::path::Path;
use std::time::Instant;

use attestation::claims::Tee;
use kbs_types::Attestation;
use serde_json::{json, Value};
use verifier::client::emulated::SnpGuest;
use verifier::client::kbs::{Challenge, KbsClient};
use verifier::crypto::jwe::{self, TeeKey, TeeKeyPair};
use verifier::crypto::master::MasterKey;
use verifier::crypto::token::{self, TokenSigner};
use verifier::db::Db;
use verifier::evidence::{AttestationVerifier, EvidenceVerifier};
use verifier::store::{audit, sessions, workloads};

/// A key release's transaction as the service runs it: `BEGIN IMMEDIATE`, the release
/// inputs and the audit head in one round trip, then the audit record and `COMMIT` in
/// another, and the (group) `fdatasync`.
async fn release_transaction(db: &Db, ev: &audit::AuditEvent) -> Result<(), verifier::db::DbError> {
    let mut b = verifier::db::Batch::new();
    workloads::push_release_inputs(&mut b, "web", "inventory-id", "default/key/disk");
    audit::push_take_head(&mut b);
    let (tx, out) = db.begin_with(b).await?;
    let [_, head] = verifier::db::results(out)?;
    let keys = tx.audit_keys().ok_or(verifier::db::DbError::NoAuditKey)?;
    let mut b = verifier::db::Batch::new();
    audit::push_append(&mut b, &keys, &audit::head_from(&head)?, ev)?;
    tx.commit_with(b).await?;
    Ok(())
}

fn cpu_seconds() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `struct rusage` into the pointer it is given, which
    // points at one, zero-initialised, owned by this frame.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: getrusage returned 0, so it filled the struct.
    let u = unsafe { u.assume_init() };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// (wall, cpu) seconds per call: the best of three runs of `iters` calls.
fn measure(iters: u32, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..iters.div_ceil(10) {
        f();
    }
    let mut best = (f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        let (w0, c0) = (Instant::now(), cpu_seconds());
        for _ in 0..iters {
            f();
        }
        let n = f64::from(iters);
        best.0 = best.0.min(w0.elapsed().as_secs_f64() / n);
        best.1 = best.1.min((cpu_seconds() - c0) / n);
    }
    best
}

struct Table(Vec<Value>);

impl Table {
    fn add(&mut self, stage: &str, per_flow: u32, (wall, cpu): (f64, f64)) {
        self.0.push(json!({
            "stage": stage, "per_flow": per_flow,
            "wall_us": (wall * 1e7).round() / 10.0, "cpu_us": (cpu * 1e7).round() / 10.0,
        }));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .ok_or("usage: flow_stages PLATFORM_DIR")?;
    let dir = Path::new(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut t = Table(Vec::new());

    // --- attest: the request body, its binding and the evidence ---
    let guest = SnpGuest::open(dir, [0xab; 48])?;
    let key = TeeKeyPair::p256();
    let ch = Challenge {
        session: uuid::Uuid::new_v4().to_string(),
        nonce: "bm9uY2Ugb2YgdGhlIGNoYWxsZW5nZSwgMzIgYnl0ZXM=".into(),
    };
    let body = serde_json::to_vec(&KbsClient::attestation(&ch, &key, &guest)?)?;
    let att: Attestation = serde_json::from_slice(&body)?;
    t.add(
        "attest: parse the request JSON",
        1,
        measure(2000, || {
            let a: Attestation = serde_json::from_slice(&body).expect("parses");
            std::hint::black_box(a);
        }),
    );
    t.add(
        "TEE key JWK validation (attest and release)",
        2,
        measure(2000, || {
            TeeKey::from_jwk(&att.runtime_data.tee_pubkey).expect("valid");
        }),
    );
    let expected = verifier::protocol::report_data_with(
        &att.runtime_data,
        &att.tee_evidence.additional_evidence,
    )?;
    t.add(
        "attest: REPORT_DATA binding (RFC 8785 + SHA-384)",
        1,
        measure(2000, || {
            verifier::protocol::report_data_with(&att.runtime_data, "").expect("binds");
        }),
    );
    let evidence = serde_json::to_vec(&att.tee_evidence.primary_evidence)?;
    t.add(
        "attest: re-serialise the evidence",
        1,
        measure(2000, || {
            serde_json::to_vec(&att.tee_evidence.primary_evidence).expect("encodes");
        }),
    );
    let v = AttestationVerifier::new(&[dir.to_path_buf()])?;
    let now = time::OffsetDateTime::now_utc();
    let claims = v
        .verify(Tee::Snp, &evidence, &expected, now)
        .map_err(|f| f.message)?;
    t.add(
        "attest: evidence verification (parse, cached chain, report signature, claims)",
        1,
        measure(300, || {
            v.verify(Tee::Snp, &evidence, &expected, now)
                .expect("verifies");
        }),
    );
    let signer = TokenSigner::generate();
    let claims_json = json!({
        "iss": "cvm-verifier", "iat": 0, "nbf": 0, "exp": 300, "jti": ch.session,
        "eat_profile": "tag:github.com,2023:veraison/ear",
        "submods": {"cpu": {"ear.status": "warning", "ear.veraison.annotated-evidence": claims}},
        "tee": "snp", "workload": "web", "trust": "insecure-emulated",
        "tee-pubkey": att.runtime_data.tee_pubkey,
    });
    t.add(
        "attest: sign the token (ES256, ring)",
        1,
        measure(2000, || {
            signer.sign(&claims_json).expect("signs");
        }),
    );
    let tok = signer.sign(&claims_json)?;
    t.add(
        "attest + release: token digest",
        2,
        measure(5000, || {
            std::hint::black_box(token::digest(&tok));
        }),
    );

    // --- release: open the sealed value, JWE, release signature ---
    let mk = MasterKey::generate();
    let sealed = mk.seal("resource:default/key/disk", &[7u8; 32])?;
    t.add(
        "release: open the sealed resource (master key)",
        1,
        measure(5000, || {
            mk.open("resource:default/key/disk", &sealed.0)
                .expect("opens");
        }),
    );
    let tee_key = TeeKey::from_jwk(&att.runtime_data.tee_pubkey)?;
    t.add(
        "release: JWE (ephemeral ECDH P-256 with ring, A256KW, A256GCM) and its JSON",
        1,
        measure(2000, || {
            let j = jwe::encrypt(&tee_key, &[7u8; 32]).expect("encrypts");
            serde_json::to_vec(&j).expect("encodes");
        }),
    );
    let jwe_body = serde_json::to_vec(&jwe::encrypt(&tee_key, &[7u8; 32])?)?;
    t.add(
        "release: release signature (thumbprint, ES256)",
        1,
        measure(2000, || {
            let tp = token::jwk_thumbprint(&att.runtime_data.tee_pubkey).expect("thumbprint");
            signer
                .sign_release("default/key/disk", &tp, &jwe_body)
                .expect("signs");
        }),
    );

    // --- the database, as the service uses it ---
    let tmp = std::env::temp_dir().join(format!("flow-stages-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let db_path = tmp.join("v.db");
    let result = rt.block_on(async {
        let db = Db::open(db_path.to_str().ok_or("path")?).await?;
        audit::load_key(&db, &mk, Some(TokenSigner::generate())).await?;
        let s = sessions::create(&db, "snp", &ch.nonce, None, 300).await?;
        Ok::<_, Box<dyn std::error::Error>>((db, s))
    });
    let (db, s) = result?;
    let h = rt.handle().clone();
    t.add(
        "auth: insert the challenged session (no fsync)",
        1,
        measure(500, || {
            h.block_on(sessions::create(&db, "snp", &ch.nonce, None, 300))
                .expect("created");
        }),
    );
    t.add(
        "attest + release: read the session",
        2,
        measure(2000, || {
            h.block_on(sessions::get(&db, &s.id)).expect("read");
        }),
    );
    let ev = audit::AuditEvent {
        kind: audit::AuditKind::KeyRelease,
        actor: format!("guest:{}", s.id),
        client: "127.0.0.1".into(),
        subject: "default/key/disk".into(),
        outcome: "released".into(),
        detail: json!({"session": s.id, "workload": "web", "inventory_id": s.id, "trust": "insecure-emulated", "tee": "snp"}),
    };
    t.add(
        "attest + release: a durable transaction with one audit record, alone (2 round trips: BEGIN + 2 statements, 1 statement + COMMIT; fdatasync)",
        2,
        measure(200, || {
            h.block_on(release_transaction(&db, &ev)).expect("committed");
        }),
    );
    let syncs0 = db.group_syncs();
    let concurrent = measure(5, || {
        h.block_on(async {
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let (db, ev) = (db.clone(), ev.clone());
                    tokio::spawn(async move { release_transaction(&db, &ev).await })
                })
                .collect();
            for task in tasks {
                task.await.expect("joins").expect("appended");
            }
        })
    });
    // measure(5, ..): one warm-up call and three runs of five, of 16 commits each.
    let calls = 16 * (1 + 3 * 5);
    t.add(
        "the same, 16 concurrent (per transaction; the fdatasync is shared)",
        2,
        (concurrent.0 / 16.0, concurrent.1 / 16.0),
    );
    let syncs = db.group_syncs() - syncs0;
    rt.block_on(db.close());
    drop(rt);
    let _ = std::fs::remove_dir_all(&tmp);

    // The reference: one bare P-384 verification with AWS-LC (the report signature's
    // implementation in the verifier, and the fastest measured).
    let p384 = {
        use p384::ecdsa::signature::Signer;
        let k = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let msg = [0x5au8; 0x2a0];
        let sig: p384::ecdsa::Signature = k.sign(&msg);
        let point = k.verifying_key().to_encoded_point(false);
        let key = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
            point.as_bytes().to_vec(),
        );
        let fixed = sig.to_bytes();
        measure(1000, || assert!(key.verify(&msg, &fixed).is_ok()))
    };
    println!(
        "{}",
        json!({
            "stages": t.0,
            "p384_verify_us": (p384.1 * 1e7).round() / 10.0,
            "concurrent_commits": calls, "concurrent_syncs": syncs,
        })
    );
    Ok(())
}
