//! Test harness: starts the real `cvm-verifier serve` on 127.0.0.1 with an ephemeral
//! port, bootstraps an admin, and provides emulated guests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use reqwest::Method;
use serde_json::{json, Value};
use verifier::client::admin::AdminClient;
use verifier::client::emulated::{SnpGuest, TdxGuest};
use verifier::client::kbs::KbsClient;
use verifier::crypto::master::MasterKey;
use zeroize::Zeroizing;

pub const BIN: &str = env!("CARGO_BIN_EXE_cvm-verifier");

/// The measurement every test guest reports.
pub const MEASUREMENT: [u8; 48] = [0x5a; 48];
pub const RESOURCE: &str = "default/key/disk";
pub const SECRET: &[u8] = b"the disk encryption key \x00\x01\x02";

/// The `tdx` policy section every TDX workload needs: RTMR1 and RTMR2 pinned (MRTD
/// measures only the firmware). The emulated TD of [`tdx_guest`] extends nothing, so
/// both are zero.
pub fn tdx_pins() -> Value {
    let zero = hex::encode([0u8; 48]);
    json!({"rtmrs": [{"index": 1, "value": zero}, {"index": 2, "value": zero}]})
}

/// The emulated SNP and TDX platforms the test servers trust (`test_kit`: generated
/// once per target dir, RSA-4096 is slow, and shared with the guest-agent tests).
pub fn emulated_dir() -> PathBuf {
    test_kit::emulated_platform()
}

/// A second, independent emulated platform nobody trusts.
pub fn untrusted_dir() -> PathBuf {
    test_kit::untrusted_snp_platform()
}

pub fn snp_guest() -> SnpGuest {
    SnpGuest::open(&emulated_dir(), MEASUREMENT).expect("snp guest")
}

pub fn tdx_guest() -> TdxGuest {
    TdxGuest::open(&emulated_dir(), MEASUREMENT).expect("tdx guest")
}

/// Where a server keeps its state (survives restarts of the server process).
pub struct Env {
    pub dir: tempfile::TempDir,
    pub database: String,
    pub master_key: PathBuf,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("verifier.db").display().to_string();
        Self::with_database(dir, database)
    }

    pub fn with_database(dir: tempfile::TempDir, database: String) -> Self {
        let master_key = dir.path().join("master.key");
        MasterKey::generate().write_new(&master_key).unwrap();
        Self {
            dir,
            database,
            master_key,
        }
    }

    pub fn mk(&self) -> &str {
        self.master_key.to_str().unwrap()
    }
}

/// A running server process (killed on drop).
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(env: &Env, extra: &[&str]) -> Server {
    start_args(
        env,
        &[
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--emulated-trust",
            emulated_dir().to_str().unwrap(),
        ],
        extra,
    )
}

pub fn start_args(env: &Env, base_args: &[&str], extra: &[&str]) -> Server {
    let mut args: Vec<&str> = base_args.to_vec();
    args.extend(["--database", &env.database, "--master-key-file", env.mk()]);
    args.extend_from_slice(extra);
    spawn_server(&args)
}

/// Starts `cvm-verifier serve ARGS` and waits for its listening line.
pub fn spawn_server(args: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("cvm-verifier listening on ")
        .unwrap_or_else(|| panic!("no listening line: {line:?}"));
    Server {
        child,
        base: url.to_owned(),
    }
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run cvm-verifier")
}

/// Bootstrap output: token and TOTP secret.
pub struct AdminCreds {
    pub token: String,
    pub totp_secret: String,
}

pub fn bootstrap(env: &Env) -> AdminCreds {
    let out = run(&[
        "admin",
        "bootstrap",
        "--database",
        &env.database,
        "--master-key-file",
        env.mk(),
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "bootstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["otpauth_uri"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/"));
    AdminCreds {
        token: v["token"].as_str().unwrap().into(),
        totp_secret: v["totp_secret"].as_str().unwrap().into(),
    }
}

pub fn totp_now(secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    verifier::store::users::totp_code(secret, now).unwrap()
}

pub fn http() -> reqwest::Client {
    verifier::client::http_client(None).unwrap()
}

pub fn admin_client(server: &Server, creds: &AdminCreds) -> AdminClient {
    AdminClient::with_totp_secret(
        http(),
        &server.base,
        Zeroizing::new(creds.token.clone()),
        Zeroizing::new(creds.totp_secret.clone()),
    )
}

pub fn kbs(server: &Server) -> KbsClient {
    KbsClient::new(http(), &server.base)
}

/// Creates workloads `name` (SNP) and `{name}-tdx` (TDX), each allowing [`MEASUREMENT`]
/// (and emulated evidence) with [`RESOURCE`] granted, and stores the resource.
pub async fn provision(admin: &AdminClient, name: &str) {
    for (workload, tee) in [(name.to_owned(), "snp"), (format!("{name}-tdx"), "tdx")] {
        let body = json!({
            "tee": tee,
            "policy": {"measurements": [hex::encode(MEASUREMENT)], "allow_emulated": true, "tdx": tdx_pins()},
            "resources": [RESOURCE],
        });
        admin
            .call(
                Method::PUT,
                &format!("/admin/v1/workloads/{workload}"),
                Some(&body),
            )
            .await
            .unwrap();
    }
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
}

/// The number of audit records, via the admin API.
pub async fn audit_count(admin: &AdminClient) -> usize {
    let v = admin
        .call(Method::GET, "/admin/v1/audit?limit=1000", None)
        .await
        .unwrap();
    v["records"].as_array().unwrap().len()
}

pub async fn audit_records(admin: &AdminClient) -> Vec<Value> {
    let v = admin
        .call(Method::GET, "/admin/v1/audit?limit=1000", None)
        .await
        .unwrap();
    v["records"].as_array().unwrap().clone()
}

/// `cvm-verifier audit verify` of `env`'s database with its master key (JSON output).
pub fn audit_verify(env: &Env) -> Output {
    run(&[
        "audit",
        "verify",
        "--database",
        &env.database,
        "--master-key-file",
        env.mk(),
        "--output",
        "json",
    ])
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
