//! End-to-end tests across processes and the real KVM.
//!
//! The tests live in `tests/tests/`; this library holds their shared equipment: the
//! binaries under test (`cvm`, `cvm-verifier`, found next to the test executable in the
//! Cargo target directory, so run the suite with `cargo test --workspace`, which builds
//! them), a verifier process with its admin credentials (and, when it trusts an emulated
//! platform, that platform's collateral server `cvm emulated collateral-server`, which it
//! fetches TDX collateral from as from Intel's PCS), and a **malicious relay**: a
//! Unix-socket endpoint standing in for the host's side of the guest's attestation
//! connection, which can record, replay and alter what passes through — the host the
//! system must withstand.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub mod fake_kbs;

/// The message the tests write into the encrypted disk.
pub const MESSAGE: &str = "e2e: the disk opened";
/// The disk key's resource path.
pub const RESOURCE: &str = "default/disk/e2e";

/// The directory holding the workspace's binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned()
}

/// A binary of the workspace; panics with a clear message if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run the suite with `cargo test --workspace` (it builds every binary)",
        p.display()
    );
    p
}

/// Runs a command to completion with no stdin.
pub fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// Runs a command and requires success; returns stdout.
pub fn ok(program: &Path, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{} {:?} failed: {}\n{}",
        program.display(),
        args,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running `cvm-verifier` (plain HTTP on loopback) with a bootstrapped admin.
#[derive(Debug)]
pub struct Verifier {
    child: Child,
    /// The trusted emulated platform's collateral server, if any.
    _collateral: Option<Reaped>,
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Base URL of the collateral server the verifier fetches KDS/PCS collateral from
    /// (`--amd-kds-url`, `--intel-pcs-url`), when it trusts an emulated platform.
    pub collateral_url: Option<String>,
    /// The SQLite database path.
    pub database: String,
    /// Its identity as guests pin it (`cvm-verifier identity`): base64url of the
    /// token key's SEC1 point, for `cvm.verifier_key=` or `cvm-agent --verifier-key`.
    pub verifier_key: String,
    token_file: PathBuf,
    totp_file: PathBuf,
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed and reaped when dropped (also when a later start-up step
/// panics).
#[derive(Debug)]
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the URL of a child's first "listening on URL …" stdout line (`what` names it
/// in the panic when none comes within 60 s); the rest of stdout is drained.
fn listening_url(child: &mut Child, what: &str) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent {
                if let Some(u) = line.split("listening on ").nth(1) {
                    let u = u.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(u.to_owned());
                    sent = true;
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} did not start"))
}

impl Verifier {
    /// Starts a verifier in `dir`, trusting the emulated platform `trust` if given; then
    /// it also starts that platform's collateral server and points the verifier's KDS
    /// and PCS URLs at it (the test guest's TDX quote carries no collateral).
    pub fn start(dir: &Path, trust: Option<&Path>) -> Self {
        Self::start_with(dir, trust, trust)
    }

    /// As [`Self::start`], with the trust anchor and the collateral server chosen
    /// separately: `trust` is the platform given as `--emulated-trust`, `collateral` the
    /// platform whose collateral server the KDS and PCS URLs point at. A verifier that
    /// fetches the emulated platform's collateral without trusting it (`trust` None,
    /// `collateral` Some) must still refuse its evidence.
    pub fn start_with(dir: &Path, trust: Option<&Path>, collateral: Option<&Path>) -> Self {
        let vbin = bin("cvm-verifier");
        let database = dir.join("verifier.db").display().to_string();
        let mk = dir.join("master.key");
        ok(&vbin, &["admin", "gen-master-key", mk.to_str().unwrap()]);
        let creds = ok(
            &vbin,
            &[
                "admin",
                "bootstrap",
                "--database",
                &database,
                "--master-key-file",
                mk.to_str().unwrap(),
                "--output",
                "json",
            ],
        );
        let creds: Value = serde_json::from_str(creds.trim()).expect("bootstrap JSON");
        let token_file = dir.join("admin.token");
        std::fs::write(&token_file, creds["token"].as_str().unwrap()).unwrap();
        let totp_file = dir.join("admin.totp");
        std::fs::write(&totp_file, creds["totp_secret"].as_str().unwrap()).unwrap();
        let identity = ok(
            &vbin,
            &[
                "identity",
                "--database",
                &database,
                "--master-key-file",
                mk.to_str().unwrap(),
                "--output",
                "json",
            ],
        );
        let identity: Value = serde_json::from_str(identity.trim()).expect("identity JSON");
        let verifier_key = identity["verifier_key"].as_str().unwrap().to_owned();
        let mut args = vec![
            "serve".to_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--insecure-http".into(),
            "--database".into(),
            database.clone(),
            "--master-key-file".into(),
            mk.display().to_string(),
        ];
        let mut collateral_url = None;
        if let Some(t) = trust {
            args.push("--emulated-trust".into());
            args.push(t.display().to_string());
        }
        let collateral_dir = collateral;
        let mut collateral = None;
        if let Some(t) = collateral_dir {
            let log = std::fs::File::create(dir.join("collateral-server.log")).unwrap();
            let server = Command::new(bin("cvm"))
                .args(["emulated", "collateral-server", "--dir"])
                .arg(t)
                .args(["--listen", "127.0.0.1:0"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .expect("start cvm emulated collateral-server");
            let mut server = Reaped(server);
            let url = listening_url(&mut server.0, "cvm emulated collateral-server");
            for flag in ["--amd-kds-url", "--intel-pcs-url"] {
                args.push(flag.into());
                args.push(url.clone());
            }
            collateral = Some(server);
            collateral_url = Some(url);
        }
        let log = std::fs::File::create(dir.join("verifier.log")).unwrap();
        let mut child = Command::new(&vbin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start cvm-verifier");
        let url = listening_url(&mut child, "cvm-verifier");
        Verifier {
            child,
            _collateral: collateral,
            url,
            collateral_url,
            database,
            verifier_key,
            token_file,
            totp_file,
        }
    }

    /// Runs `cvm-verifier admin …` against this verifier; returns the output.
    pub fn admin(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "admin",
            "--url",
            &self.url,
            "--token-file",
            self.token_file.to_str().unwrap(),
            "--totp-secret-file",
            self.totp_file.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        run(&bin("cvm-verifier"), &all)
    }

    /// `admin` that must succeed.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(
            out.status.success(),
            "admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The kernel command line fragment pinning this verifier.
    pub fn cmdline_pin(&self) -> String {
        format!("cvm.verifier_key={}", self.verifier_key)
    }

    /// Every audit record, in order.
    pub fn audit(&self) -> Vec<Value> {
        let out = ok(
            &bin("cvm-verifier"),
            &["audit", "export", "--database", &self.database],
        );
        out.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The verifier's cached collateral (`cvm-verifier collateral status`): items with
    /// `key`, `url`, `fetched_at`, `expires_at`, `valid`.
    pub fn collateral_items(&self) -> Vec<Value> {
        let out = ok(
            &bin("cvm-verifier"),
            &[
                "collateral",
                "status",
                "--database",
                &self.database,
                "--output",
                "json",
            ],
        );
        let v: Value = serde_json::from_str(out.trim()).expect("collateral status JSON");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// The key-release records (`outcome` released or refused).
    pub fn releases(&self) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["kind"] == "key-release" || r["kind"] == "attestation")
            .collect()
    }
}

/// What the malicious relay does to the guest's attestation traffic.
#[derive(Debug, Clone)]
pub enum Tamper {
    /// Forward faithfully (and record requests).
    None,
    /// Replace the body of the guest's `POST /kbs/v0/attest` with this one (replay).
    ReplayAttest(Vec<u8>),
    /// Flip one character of the attestation report inside the attest request.
    CorruptEvidence,
    /// Flip one byte in the middle of the resource response body (the JWE).
    CorruptResponse,
}

/// Requests the relay saw, per connection: (request line, body).
pub type Recorded = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Serves `<uds>_<port>` like the VMM's hybrid vsock would reach, forwarding each guest
/// connection (one HTTP request) to the verifier at `verifier` (host:port), applying
/// `tamper`. Returns the record of requests.
pub fn malicious_relay(uds_base: &Path, port: u32, verifier: &str, tamper: Tamper) -> Recorded {
    let path = PathBuf::from(format!("{}_{port}", uds_base.display()));
    let listener = UnixListener::bind(&path).expect("bind relay socket");
    let addr = verifier
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let recorded: Recorded = Arc::default();
    let rec = recorded.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut guest) = conn else { break };
            let (head, mut body) = match read_request(&mut guest) {
                Some(r) => r,
                None => continue,
            };
            let line = head.lines().next().unwrap_or_default().to_owned();
            rec.lock().unwrap().push((line.clone(), body.clone()));
            let is_attest = line.starts_with("POST /kbs/v0/attest");
            let is_resource = line.starts_with("GET /kbs/v0/resource");
            match &tamper {
                Tamper::ReplayAttest(old) if is_attest => body = old.clone(),
                Tamper::CorruptEvidence if is_attest => {
                    // A character of the base64 report, inside its signed part.
                    let at = find(&body, b"\"report\":\"").map(|p| p + 10 + 200);
                    if let Some(i) = at.filter(|&i| i < body.len()) {
                        body[i] = if body[i] == b'A' { b'B' } else { b'A' };
                    }
                }
                _ => {}
            }
            let head = set_content_length(&head, body.len());
            let Ok(mut up) = TcpStream::connect(&addr) else {
                continue;
            };
            let _ = up.write_all(head.as_bytes());
            let _ = up.write_all(&body);
            let mut resp = Vec::new();
            let _ = up.read_to_end(&mut resp);
            if matches!(tamper, Tamper::CorruptResponse) && is_resource {
                if let Some(p) = find(&resp, b"\r\n\r\n") {
                    let body_len = resp.len() - (p + 4);
                    if body_len > 8 {
                        let i = p + 4 + body_len / 2;
                        resp[i] = if resp[i] == b'A' { b'B' } else { b'A' };
                    }
                }
            }
            let _ = guest.write_all(&resp);
        }
    });
    recorded
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one HTTP request (head + Content-Length body).
pub(crate) fn read_request(s: &mut impl Read) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while find(&buf, b"\r\n\r\n").is_none() {
        if s.read(&mut byte).ok()? == 0 || buf.len() > 64 << 10 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).ok()?;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn set_content_length(head: &str, len: usize) -> String {
    let mut out = String::new();
    for l in head.split("\r\n") {
        if l.to_ascii_lowercase().starts_with("content-length:") {
            out.push_str(&format!("Content-Length: {len}\r\n"));
        } else if !l.is_empty() {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_rewritten() {
        let h = "POST /kbs/v0/attest HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n";
        let out = set_content_length(h, 10);
        assert!(out.contains("Content-Length: 10\r\n"));
        assert!(!out.contains("Content-Length: 3\r\n"));
        assert!(out.ends_with("\r\n\r\n"));
    }

    #[test]
    fn requests_are_framed_by_content_length() {
        let raw = b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nbodyEXTRA";
        let (head, body) = read_request(&mut &raw[..]).unwrap();
        assert!(head.starts_with("POST /a"));
        assert_eq!(body, b"body");
    }
}
