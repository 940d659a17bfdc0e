//! The `cvm-verifier` CLI refuses bad input before sending anything, with exit 2 and a
//! message naming the flag; failures name the flag that fixes them (`--ca-cert`,
//! `--totp-secret-file`); one vocabulary (`--url`/`--ca-cert` with their old names as
//! aliases, RFC 3339 times in text and JSON); `workload put --from-measure`; an
//! unreachable PostgreSQL fails fast with its cause.

mod common;

use std::net::TcpListener;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A TCP listener on 127.0.0.1 that counts the connections it gets: the "server" of the
/// refusal table (a refused input must not even connect).
fn counting_server() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (url, n)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn bad_admin_input_is_refused_naming_the_flag_and_nothing_is_sent() {
    let (url, connections) = counting_server();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let ok_m = "ab".repeat(48);
    std::fs::write(p("not-base32"), "this is not base32 at all!!").unwrap();
    std::fs::write(p("garbage.json"), "{not json").unwrap();
    std::fs::write(
        p("tdx.json"),
        json!({"tee": "tdx", "mrtd": ok_m, "rtmrs": [ok_m, ok_m, ok_m, ok_m]}).to_string(),
    )
    .unwrap();
    std::fs::write(p("value"), "secret").unwrap();
    let missing = p("missing");
    let (tdx_json, garbage, value, not_base32) = (
        p("tdx.json"),
        p("garbage.json"),
        p("value"),
        p("not-base32"),
    );
    let table: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "workload",
                "put",
                "w",
                "--tee",
                "snp",
                "--measurement",
                "zz",
            ],
            "--measurement: `zz` is not hex",
        ),
        (
            vec![
                "workload",
                "put",
                "w",
                "--tee",
                "snp",
                "--measurement",
                "abcd",
            ],
            "--measurement: 2 bytes; a measurement (SNP MEASUREMENT or TDX MRTD) is 48 bytes",
        ),
        (
            vec![
                "workload",
                "put",
                "../x",
                "--tee",
                "snp",
                "--measurement",
                &ok_m,
            ],
            "workload name `../x` is not a valid name",
        ),
        // Would be DELETE /admin/v1/users/bob once the client normalizes the path.
        (
            vec!["workload", "remove", "../users/bob"],
            "workload name `../users/bob` is not a valid name",
        ),
        (vec!["workload", "show", "a?b"], "workload name `a?b`"),
        (
            vec![
                "workload",
                "put",
                "w",
                "--tee",
                "snp",
                "--measurement",
                &ok_m,
                "--resource",
                "a/b",
            ],
            "--resource: `a/b` is not a resource path",
        ),
        (
            vec![
                "workload",
                "put",
                "w",
                "--tee",
                "snp",
                "--policy-file",
                &missing,
            ],
            "--policy-file: cannot read",
        ),
        (
            vec![
                "workload",
                "put",
                "w",
                "--tee",
                "snp",
                "--from-measure",
                &tdx_json,
            ],
            "--from-measure: the file measures a tdx guest but --tee is snp",
        ),
        (
            vec!["workload", "put", "w", "--from-measure", &garbage],
            "--from-measure: not JSON",
        ),
        (
            vec!["workload", "put", "w", "--from-measure", &missing],
            "--from-measure: cannot read",
        ),
        (
            vec!["workload", "put", "w", "--measurement", &ok_m],
            "--tee is required",
        ),
        (
            vec!["workload", "add-measurement", "w", "zz"],
            "MEASUREMENT: `zz` is not hex",
        ),
        (
            vec!["workload", "remove-measurement", "w", &ok_m[..94]],
            "MEASUREMENT: 47 bytes",
        ),
        (
            vec!["resource", "put", "a/b", "--value-file", &value],
            "PATH: `a/b` is not a resource path",
        ),
        (
            vec!["resource", "put", "a/b/c", "--value-file", &missing],
            "--value-file: cannot read",
        ),
        (vec!["resource", "remove", "a/../b"], "PATH: `a/../b`"),
        (
            vec!["user", "add", "Bob", "--role", "admin"],
            "user name `Bob` is not valid",
        ),
        (
            vec!["user", "add", "bob", "--role", "root"],
            "--role: `root` is not a role",
        ),
        (vec!["guest", "revoke", "a/b"], "guest id `a/b`"),
        (vec!["audit-log", "--since", "yesterday"], "--since"),
        (vec!["guest", "list", "--stale", "7x"], "--stale"),
        (
            vec!["--totp-secret-file", &not_base32, "whoami"],
            "--totp-secret-file:",
        ),
        (
            vec!["--totp", "12ab", "whoami"],
            "--totp: a TOTP code is 6 digits",
        ),
        (
            vec!["--ca-cert", &missing, "whoami"],
            "--ca-cert: cannot read",
        ),
        (
            vec!["--kbs-ca", &missing, "whoami"],
            "--ca-cert: cannot read",
        ),
    ];
    for (args, want) in &table {
        let mut all = vec!["admin", "--url", &url, "--token", "t0k3n"];
        all.extend(args.iter().copied());
        let o = run(&all);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
        assert_eq!(connections.load(Ordering::SeqCst), 0, "{args:?} was sent");
    }
    // Flags that need no server at all.
    for (args, want) in [
        (
            vec!["admin", "--url", "ftp://x", "--token", "t", "whoami"],
            "--url: `ftp://x` is not an http:// or https:// URL",
        ),
        (
            vec!["admin", "--url", &url, "--token-file", &missing, "whoami"],
            "--token-file: cannot read",
        ),
        (
            vec!["inventory", "--database", &missing, "--stale", "7x"],
            "--stale",
        ),
        (
            vec![
                "audit",
                "export",
                "--database",
                &missing,
                "--since",
                "yesterday",
            ],
            "--since",
        ),
    ] {
        let o = run(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    // The control: a valid request does reach the counting server (which hangs up), and
    // the old flag names are accepted as aliases.
    let o = run(&[
        "admin",
        "--verifier",
        &url,
        "--token",
        "t",
        "workload",
        "list",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(connections.load(Ordering::SeqCst) >= 1);
}

#[test]
fn an_unreachable_verifier_names_the_url_flag() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let o = run(&["admin", "--url", &url, "--token", "t", "whoami"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("cannot reach the verifier at {url} (check --url")),
        "{err}"
    );
}

#[test]
fn an_unreachable_postgresql_fails_fast_with_its_cause() {
    let url = format!("postgres://cvm:pw@127.0.0.1:{}/cvm", closed_port());
    let started = Instant::now();
    let o = run(&["inventory", "--database", &url]);
    let took = started.elapsed();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot connect to the database"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(!err.contains("timed out"), "{err}");
    // The pool used to retry a refused connection for its 30 s acquire timeout; a generous
    // bound well under that.
    assert!(took < Duration::from_secs(15), "took {took:?}: {err}");
    // A host that does not resolve: also at once, with the cause (never the pool's
    // "timed out").
    let started = Instant::now();
    let o = run(&[
        "inventory",
        "--database",
        "postgres://cvm:pw@cvm-no-such-host.invalid/cvm",
    ]);
    let took = started.elapsed();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot connect to the database"), "{err}");
    assert!(!err.contains("pool timed out"), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_failures_name_the_flag_that_fixes_them() {
    // TLS: a certificate no trusted CA signed.
    let env = Env::new();
    let creds = bootstrap(&env);
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
    let token = creds.token.as_str();
    let o = run(&["admin", "--url", &server.base, "--token", token, "whoami"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "the server's certificate is not signed by the CA given with --ca-cert (or the system roots)"
        ),
        "{err}"
    );
    // The admin role without a TOTP code: the flag, not the header.
    let base = server.base.as_str();
    let ca = path_str(&cert_path);
    let o = run(&[
        "admin",
        "--url",
        base,
        "--ca-cert",
        ca,
        "--token",
        token,
        "whoami",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the admin role needs a TOTP code: pass --totp-secret-file FILE"),
        "{err}"
    );
    // A wrong token.
    let o = run(&[
        "admin",
        "--url",
        base,
        "--ca-cert",
        ca,
        "--token",
        "nope",
        "whoami",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("check --token / --token-file"), "{err}");
}

/// `admin …` against `server` as the bootstrapped admin.
fn admin(server: &Server, env: &Env, creds: &AdminCreds, args: &[&str]) -> Output {
    let token = env.dir.path().join("token");
    let totp = env.dir.path().join("totp");
    std::fs::write(&token, &creds.token).unwrap();
    std::fs::write(&totp, &creds.totp_secret).unwrap();
    let mut all = vec![
        "admin",
        "--url",
        &server.base,
        "--token-file",
        path_str(&token),
        "--totp-secret-file",
        path_str(&totp),
    ];
    all.extend_from_slice(args);
    run(&all)
}

fn admin_json(server: &Server, env: &Env, creds: &AdminCreds, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let o = admin(server, env, creds, &all);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| cli_support::units::parse_time(s).is_ok() && s.ends_with('Z'))
}

#[test]
fn from_measure_registers_what_cvm_measure_printed_with_rfc3339_times() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, &[]);
    let m = "5a".repeat(48);
    let snp = env.dir.path().join("snp.json");
    std::fs::write(
        &snp,
        serde_json::to_vec_pretty(&json!({"tee": "snp", "measurement": m, "plan": {"vcpus": 1}}))
            .unwrap(),
    )
    .unwrap();
    let o = admin(
        &server,
        &env,
        &creds,
        &["workload", "put", "web", "--from-measure", path_str(&snp)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let w = admin_json(&server, &env, &creds, &["workload", "show", "web"]);
    assert_eq!(w["tee"], "snp", "{w}");
    assert_eq!(w["policy"]["measurements"], json!([m]), "{w}");
    // Times: RFC 3339 in JSON and in text (the API keeps Unix seconds).
    let value = env.dir.path().join("value");
    std::fs::write(&value, "k").unwrap();
    let put = ["resource", "put", "a/b/c", "--value-file", path_str(&value)];
    assert!(admin(&server, &env, &creds, &put).status.success());
    let r = admin_json(&server, &env, &creds, &["resource", "list"]);
    assert!(is_rfc3339(&r["resources"][0]["created_at"]), "{r}");
    let u = admin_json(&server, &env, &creds, &["user", "list"]);
    assert!(is_rfc3339(&u["users"][0]["created_at"]), "{u}");
    let o = admin(&server, &env, &creds, &["resource", "list"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("created_at: 20") && l.ends_with('Z')),
        "{text}"
    );
    // TDX: the MRTD and, by default, all four RTMRs; `--pin-rtmrs boot` only 1 and 2.
    let rt: Vec<String> = (1..=4).map(|i| format!("{i:02x}").repeat(48)).collect();
    let tdx = env.dir.path().join("tdx.json");
    std::fs::write(
        &tdx,
        json!({"tee": "tdx", "mrtd": m, "rtmrs": rt}).to_string(),
    )
    .unwrap();
    for (pin, want) in [("all", vec![0, 1, 2, 3]), ("boot", vec![1, 2])] {
        let o = admin(
            &server,
            &env,
            &creds,
            &[
                "workload",
                "put",
                "td",
                "--tee",
                "tdx",
                "--from-measure",
                path_str(&tdx),
                "--pin-rtmrs",
                pin,
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let w = admin_json(&server, &env, &creds, &["workload", "show", "td"]);
        let got: Vec<u64> = w["policy"]["tdx"]["rtmrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect();
        assert_eq!(got, want, "{w}");
        for r in w["policy"]["tdx"]["rtmrs"].as_array().unwrap() {
            let i = r["index"].as_u64().unwrap() as usize;
            assert_eq!(r["value"], rt[i], "{w}");
        }
        assert_eq!(w["policy"]["measurements"], json!([m]), "{w}");
    }
    // The audit log through the admin API: `--since` as RFC 3339; each record's `time`.
    let a = admin_json(
        &server,
        &env,
        &creds,
        &["audit-log", "--since", "2000-01-01T00:00:00Z"],
    );
    let records = a["records"].as_array().unwrap();
    assert!(!records.is_empty());
    assert!(records.iter().all(|r| is_rfc3339(&r["time"])), "{a}");
}

#[test]
fn key_maintenance_prints_json_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("mk");
    let o = run(&["admin", "gen-master-key", path_str(&f), "--output", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["file"], path_str(&f));
    assert!(
        v["master_key_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{v}"
    );
}

#[test]
fn from_measure_reads_standard_input() {
    use std::io::Write;
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, &[]);
    let token = env.dir.path().join("token");
    let totp = env.dir.path().join("totp");
    std::fs::write(&token, &creds.token).unwrap();
    std::fs::write(&totp, &creds.totp_secret).unwrap();
    let m = "c3".repeat(48);
    let mut child = std::process::Command::new(BIN)
        .args([
            "admin",
            "--url",
            &server.base,
            "--token-file",
            path_str(&token),
        ])
        .args(["--totp-secret-file", path_str(&totp)])
        .args([
            "workload",
            "put",
            "piped",
            "--tee",
            "snp",
            "--from-measure",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let doc = json!({"tee": "snp", "measurement": m});
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(doc.to_string().as_bytes()).unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let w = admin_json(&server, &env, &creds, &["workload", "show", "piped"]);
    assert_eq!(w["policy"]["measurements"], json!([m]), "{w}");
}
