//! `cvm-agent` as a host process, end to end without a VM: the real binary attests to a
//! real `cvm-verifier` (plain HTTP on loopback) with evidence from the emulated secure
//! processor served by `cvm emulated serve` on a Unix socket, receives the disk key and
//! checks it against a LUKS2 image with `cryptsetup open --test-passphrase` (no
//! dm-crypt). Refusals (revoked workload, wrong measurement) release nothing, and the
//! agent never prints the key. The agent pins the verifier (`--verifier-key`, as
//! `cvm-verifier identity` prints it): against a fake KBS, a compromised host's
//! substitute that releases the host's own key, it refuses and `cryptsetup` never runs.
//!
//! Needs `cryptsetup` (skipped without it, except under CI).

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cvm_tests::fake_kbs::{self, Forgery};
use cvm_tests::{bin, ok, Verifier, MESSAGE, RESOURCE};
use serde_json::{json, Value};

const WORKLOAD: &str = "agent";
/// What the emulated secure processor reports (SNP MEASUREMENT or TDX MRTD) for the
/// registered workload.
const GOOD: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0";
const OTHER: &str = "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000ff";

/// The emulated platform and two LUKS2 images (the registered key's, and another).
struct Fixture {
    dir: PathBuf,
    platform: PathBuf,
    disk: PathBuf,
    key: PathBuf,
    other_disk: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("agent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cvm = bin("cvm");
        let platform = dir.join("platform");
        ok(
            &cvm,
            &["emulated", "init", "--dir", platform.to_str().unwrap()],
        );
        let make = |name: &str| {
            let img = dir.join(format!("{name}.img"));
            let key = dir.join(format!("{name}.key"));
            ok(
                &cvm,
                &[
                    "image",
                    "disk",
                    "--size",
                    "4M",
                    "--out",
                    img.to_str().unwrap(),
                    "--key-out",
                    key.to_str().unwrap(),
                    "--message",
                    MESSAGE,
                ],
            );
            (img, key)
        };
        let (disk, key) = make("disk");
        let (other_disk, _) = make("other");
        Fixture {
            dir,
            platform,
            disk,
            key,
            other_disk,
        }
    })
}

/// A running `cvm emulated serve`, killed on drop.
struct Serve {
    child: Child,
    socket: PathBuf,
    tee: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, tee: &str, measurement: &str) -> Serve {
    let f = fixture();
    let socket = dir.join(format!("sp-{tee}.sock"));
    let log = dir.join(format!("serve-{tee}.log"));
    let flag = if tee == "snp" {
        "--measurement"
    } else {
        "--mrtd"
    };
    let mut child = Command::new(bin("cvm"))
        .args([
            "emulated",
            "serve",
            "--dir",
            f.platform.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--tee",
            tee,
            flag,
            measurement,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start cvm emulated serve");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        line.contains("listening on") && line.contains("insecure-emulated"),
        "cvm emulated serve did not start: {line}{stderr}"
    );
    assert!(stderr.contains("insecure-emulated"), "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "no socket at {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is not private");
    Serve {
        child,
        socket,
        tee: tee.to_owned(),
    }
}

/// A test's directory and verifier with the key resource and the workload registered
/// for `tee` with measurement [`GOOD`].
struct Case {
    dir: PathBuf,
    verifier: Verifier,
}

fn case(name: &str) -> Case {
    let f = fixture();
    let dir = f.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let verifier = Verifier::start(&dir, Some(&f.platform));
    verifier.admin_ok(&[
        "resource",
        "put",
        RESOURCE,
        "--value-file",
        f.key.to_str().unwrap(),
    ]);
    // RTMR1 and RTMR2 pinned for the TDX workload (MRTD is only the firmware): the
    // emulated TD `cvm emulated serve` runs extends nothing, so both are zero.
    let zero = "00".repeat(48);
    let policy = json!({"allow_emulated": true, "measurements": [GOOD],
        "tdx": {"rtmrs": [{"index": 1, "value": zero}, {"index": 2, "value": zero}]}});
    let policy_path = dir.join("policy.json");
    std::fs::write(&policy_path, policy.to_string()).unwrap();
    // Each workload is bound to one TEE: `agent` (SNP) and `agent-tdx`.
    for (workload, tee) in [
        (WORKLOAD.to_owned(), "snp"),
        (format!("{WORKLOAD}-tdx"), "tdx"),
    ] {
        verifier.admin_ok(&[
            "workload",
            "put",
            &workload,
            "--tee",
            tee,
            "--policy-file",
            policy_path.to_str().unwrap(),
            "--resource",
            RESOURCE,
        ]);
    }
    Case { dir, verifier }
}

/// Runs the real `cvm-agent` against `sp` and the case's verifier, on `disk`.
fn agent(c: &Case, sp: &Serve, disk: &Path) -> Output {
    let evidence = format!("emulated-unix:{}", sp.socket.display());
    let workload = match sp.tee.as_str() {
        "tdx" => format!("{WORKLOAD}-tdx"),
        _ => WORKLOAD.to_owned(),
    };
    Command::new(bin("cvm-agent"))
        .args([
            "--evidence",
            &evidence,
            "--kbs",
            &c.verifier.url,
            "--resource",
            RESOURCE,
            "--workload",
            &workload,
            "--verifier-key",
            &c.verifier.verifier_key,
            "--device",
            disk.to_str().unwrap(),
            "--test-passphrase",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run cvm-agent")
}

fn describe(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts the agent's output holds the key in no form.
fn assert_no_key(o: &Output) {
    let key = std::fs::read(&fixture().key).unwrap();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let b64 = base64(&key, STANDARD);
    let forms: Vec<Vec<u8>> = vec![
        key.clone(),
        hex.clone().into_bytes(),
        hex.to_ascii_uppercase().into_bytes(),
        b64.trim_end_matches('=').as_bytes().to_vec(),
        base64(&key, URL_SAFE)
            .trim_end_matches('=')
            .as_bytes()
            .to_vec(),
        // A Debug dump of the bytes.
        format!("{:?}", &key[..16])
            .trim_end_matches(']')
            .as_bytes()
            .to_vec(),
    ];
    for out in [&o.stdout, &o.stderr] {
        for f in &forms {
            assert!(
                !out.windows(f.len()).any(|w| w == f.as_slice()),
                "the agent printed the key:\n{}",
                describe(o)
            );
        }
    }
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 with `alphabet` and `=` padding (the test crate has no base64 dependency).
fn base64(data: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(alphabet[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc_4648() {
    assert_eq!(base64(b"foobar", STANDARD), "Zm9vYmFy");
    assert_eq!(base64(b"fooba", STANDARD), "Zm9vYmE=");
    assert_eq!(base64(b"foob", STANDARD), "Zm9vYg==");
    assert_eq!(base64(&[0xfb, 0xff], URL_SAFE), "-_8=");
}

fn released(v: &Verifier) -> usize {
    v.audit()
        .iter()
        .filter(|r| r["kind"] == "key-release" && r["outcome"] == "released")
        .count()
}

fn refusals(v: &Verifier) -> Vec<Value> {
    v.audit()
        .into_iter()
        .filter(|r| r["outcome"] == "refused")
        .collect()
}

fn assert_refused(c: &Case, o: &Output, reason: &str) {
    assert!(!o.status.success(), "the agent exited 0:\n{}", describe(o));
    assert_no_key(o);
    assert_eq!(released(&c.verifier), 0, "a key was released");
    let r = refusals(&c.verifier);
    assert!(
        r.iter().any(|r| r["detail"].to_string().contains(reason)),
        "no refusal record names `{reason}`: {r:#?}\n{}",
        describe(o)
    );
}

fn opens_the_disk(tee: &str) {
    test_kit::require!(tool "cryptsetup");
    let c = case(&format!("ok-{tee}"));
    let sp = serve(&c.dir, tee, GOOD);
    let o = agent(&c, &sp, &fixture().disk);
    assert!(o.status.success(), "{}", describe(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the released key opens a LUKS2 keyslot"),
        "{}",
        describe(&o)
    );
    assert!(err.contains("insecure-emulated"), "{}", describe(&o));
    assert!(
        err.contains(&format!("attesting ({tee} via emulated-unix:")),
        "{err}"
    );
    assert_no_key(&o);
    assert_eq!(released(&c.verifier), 1);
    // The verifier saw emulated evidence for what the service reports.
    let audit = c.verifier.audit();
    let text = serde_json::to_string(&audit).unwrap();
    assert!(text.contains("insecure-emulated"), "{audit:#?}");
}

#[test]
fn snp_agent_opens_the_disk() {
    opens_the_disk("snp");
}

#[test]
fn tdx_agent_opens_the_disk() {
    opens_the_disk("tdx");
}

#[test]
fn revoked_workload_releases_nothing() {
    test_kit::require!(tool "cryptsetup");
    let c = case("revoked");
    c.verifier.admin_ok(&["workload", "revoke", WORKLOAD]);
    let sp = serve(&c.dir, "snp", GOOD);
    let o = agent(&c, &sp, &fixture().disk);
    assert_refused(&c, &o, "revoked");
}

#[test]
fn wrong_measurement_releases_nothing() {
    test_kit::require!(tool "cryptsetup");
    for tee in ["snp", "tdx"] {
        let c = case(&format!("measurement-{tee}"));
        let sp = serve(&c.dir, tee, OTHER);
        let o = agent(&c, &sp, &fixture().disk);
        assert_refused(&c, &o, "measurement");
    }
}

#[test]
fn a_key_that_does_not_open_the_disk_fails_the_check() {
    test_kit::require!(tool "cryptsetup");
    let c = case("other-disk");
    let sp = serve(&c.dir, "snp", GOOD);
    // Released, but the image is keyed by another key: cryptsetup's test fails.
    let o = agent(&c, &sp, &fixture().other_disk);
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cryptsetup open --test-passphrase failed"),
        "{}",
        describe(&o)
    );
    assert_no_key(&o);
    assert_eq!(released(&c.verifier), 1);
}

#[test]
fn no_service_means_no_attestation() {
    let c = case("no-service");
    let o = Command::new(bin("cvm-agent"))
        .args([
            "--evidence",
            &format!("emulated-unix:{}", c.dir.join("absent.sock").display()),
            "--kbs",
            &c.verifier.url,
            "--resource",
            RESOURCE,
            "--verifier-key",
            &c.verifier.verifier_key,
            "--device",
            fixture().disk.to_str().unwrap(),
            "--test-passphrase",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot connect"),
        "{}",
        describe(&o)
    );
    assert_eq!(released(&c.verifier), 0);
}

/// A `cryptsetup` on PATH that records each call in `log`, then runs the real one.
fn recording_cryptsetup(dir: &Path, log: &Path) -> PathBuf {
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v cryptsetup"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let bindir = dir.join("bin");
    std::fs::create_dir_all(&bindir).unwrap();
    let script = bindir.join("cryptsetup");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.trim()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bindir
}

/// The agent pinned to an honest verifier, pointed at a fake KBS (the compromised
/// host's substitute) that releases the host's own disk key, encrypted to the agent's
/// key: the agent refuses and never runs `cryptsetup`.
#[test]
fn agent_refuses_a_fake_kbs() {
    test_kit::require!(tool "cryptsetup");
    let f = fixture();
    let dir = f.dir.join("fake-kbs");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("cryptsetup.log");
    let bindir = recording_cryptsetup(&dir, &log);
    let path = format!(
        "{}:{}",
        bindir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let honest = verifier::crypto::token::TokenSigner::generate()
        .identity()
        .verifier_key;
    let sp = serve(&dir, "snp", GOOD);
    let evidence = format!("emulated-unix:{}", sp.socket.display());
    let host_key = std::fs::read(&f.key).unwrap();
    let run = |kbs: &fake_kbs::FakeKbs, pin: Option<&str>| {
        let mut cmd = Command::new(bin("cvm-agent"));
        cmd.args(["--evidence", &evidence, "--kbs", &kbs.url()])
            .args(["--resource", RESOURCE, "--workload", WORKLOAD])
            .args(["--device", f.disk.to_str().unwrap(), "--test-passphrase"]);
        if let Some(p) = pin {
            cmd.args(["--verifier-key", p]);
        }
        cmd.env("PATH", &path)
            .stdin(Stdio::null())
            .output()
            .expect("run cvm-agent")
    };
    for forgery in [Forgery::Bare, Forgery::OwnKey] {
        let kbs = fake_kbs::start(host_key.clone(), forgery);
        let o = run(&kbs, Some(&honest));
        assert!(!o.status.success(), "{forgery:?}: {}", describe(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("not the pinned verifier"),
            "{forgery:?}: {}",
            describe(&o)
        );
        assert!(
            !log.exists(),
            "{forgery:?}: cryptsetup ran: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert_no_key(&o);
    }
    // No pin at all: refused before any request.
    let kbs = fake_kbs::start(host_key, Forgery::Bare);
    let o = run(&kbs, None);
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no pinned verifier"),
        "{}",
        describe(&o)
    );
    assert!(kbs.requests.lock().unwrap().is_empty());
    assert!(!log.exists(), "cryptsetup ran");
    // The recording wrapper itself works (so the checks above mean something).
    let st = Command::new(bindir.join("cryptsetup"))
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success() && log.exists());
}
