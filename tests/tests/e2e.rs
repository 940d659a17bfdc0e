//! The mission end to end under the real /dev/kvm: the project firmware boots the
//! bare-metal test guest in an emulated confidential VM; the guest attests to a real
//! `cvm-verifier` through the host and unlocks its LUKS2 disk only when the verifier
//! releases the key — and every way a hostile host or a bad launch could get the key
//! is refused, with nothing released and an audit record naming the reason.
//!
//! The host side of the guest's attestation connection is, in most tests, the
//! [`malicious_relay`] of `cvm_tests`: `cvm launch --vsock-uds` hands guest connections
//! to a Unix socket the test serves, so the test plays the compromised host.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use cvm_tests::{bin, malicious_relay, ok, run, Tamper, Verifier, MESSAGE, RESOURCE};
use serde_json::{json, Value};

/// `cvm.tee_trap=port`: the guest attests through the SNP guest-request path or
/// TDG.MR.REPORT + TDVMCALL<GetQuote> (emulator trap from ring 3), as on hardware.
const CMDLINE: &str = "console=ttyS0 cvm.kbs_resource=default/disk/e2e cvm.tee_trap=port";

/// Images and the emulated platform, made once for the whole file.
struct Fixture {
    dir: PathBuf,
    platform: PathBuf,
    firmware: PathBuf,
    kernel: PathBuf,
    disk: PathBuf,
    key: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cvm = bin("cvm");
        let platform = dir.join("platform");
        ok(
            &cvm,
            &["emulated", "init", "--dir", platform.to_str().unwrap()],
        );
        let firmware = dir.join("firmware.fd");
        ok(&cvm, &["firmware", "--out", firmware.to_str().unwrap()]);
        let kernel = dir.join("testguest.bzImage");
        ok(
            &cvm,
            &[
                "firmware",
                "--test-guest",
                "--out",
                kernel.to_str().unwrap(),
            ],
        );
        let disk = dir.join("disk.img");
        let key = dir.join("disk.key");
        ok(
            &cvm,
            &[
                "image",
                "disk",
                "--size",
                "4M",
                "--out",
                disk.to_str().unwrap(),
                "--key-out",
                key.to_str().unwrap(),
                "--message",
                MESSAGE,
            ],
        );
        Fixture {
            dir,
            platform,
            firmware,
            kernel,
            disk,
            key,
        }
    })
}

/// A test's own directory, verifier and registered workload (SNP unless said).
struct Case {
    dir: PathBuf,
    verifier: Verifier,
    /// `snp` or `tdx`: the workload's TEE, launched as `--tee emulated-<tee>`.
    tee: &'static str,
    /// The guest's command line: [`CMDLINE`] and the pin of this case's verifier.
    cmdline: String,
}

fn snp_measurement(f: &Fixture, kernel: &Path, cmdline: &str) -> String {
    ok(
        &bin("cvm"),
        &[
            "measure",
            "snp",
            "--firmware",
            f.firmware.to_str().unwrap(),
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-v4",
            "--kernel",
            kernel.to_str().unwrap(),
            "--append",
            cmdline,
        ],
    )
    .trim()
    .to_owned()
}

/// `cvm measure tdx --output-format json` of the launch [`launch`] makes.
fn tdx_measurement(f: &Fixture, kernel: &Path, cmdline: &str) -> Value {
    let out = ok(
        &bin("cvm"),
        &[
            "measure",
            "tdx",
            "--firmware",
            f.firmware.to_str().unwrap(),
            "--kernel",
            kernel.to_str().unwrap(),
            "--append",
            cmdline,
            "--output-format",
            "json",
        ],
    );
    serde_json::from_str(out.trim()).expect("cvm measure tdx JSON")
}

fn case(name: &str, trust: bool) -> Case {
    case_tee(name, trust, "snp")
}

fn case_tee(name: &str, trust: bool, tee: &'static str) -> Case {
    let platform = trust.then_some(fixture().platform.as_path());
    case_with(name, tee, platform, platform, None)
}

/// A case whose verifier trusts `trust` and fetches collateral from `collateral`'s
/// server ([`Verifier::start_with`]); `host_data` (hex, zero-padded to 32 bytes) goes
/// into the workload policy.
fn case_with(
    name: &str,
    tee: &'static str,
    trust: Option<&Path>,
    collateral: Option<&Path>,
    host_data: Option<&str>,
) -> Case {
    let f = fixture();
    let dir = f.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let verifier = Verifier::start_with(&dir, trust, collateral);
    verifier.admin_ok(&[
        "resource",
        "put",
        RESOURCE,
        "--value-file",
        f.key.to_str().unwrap(),
    ]);
    // The pin is part of the command line, so of the measurement registered.
    let cmdline = format!("{CMDLINE} {}", verifier.cmdline_pin());
    let mut policy = if tee == "tdx" {
        let m = tdx_measurement(f, &f.kernel, &cmdline);
        let rtmrs: Vec<Value> = (0..4)
            .map(|i| json!({"index": i, "value": m["rtmrs"][i]}))
            .collect();
        json!({"allow_emulated": true, "measurements": [m["mrtd"]], "tdx": {"rtmrs": rtmrs}})
    } else {
        json!({"allow_emulated": true, "measurements": [snp_measurement(f, &f.kernel, &cmdline)]})
    };
    if let Some(h) = host_data {
        policy["host_data"] = json!(format!("{h:0<64}"));
    }
    let policy_path = dir.join("policy.json");
    std::fs::write(&policy_path, policy.to_string()).unwrap();
    verifier.admin_ok(&[
        "workload",
        "put",
        "e2e",
        "--tee",
        tee,
        "--policy-file",
        policy_path.to_str().unwrap(),
        "--resource",
        RESOURCE,
    ]);
    Case {
        dir,
        verifier,
        tee,
        cmdline,
    }
}

/// `cvm launch --tee emulated-<c.tee>` with the relay served by the test (`tamper`).
fn launch(
    c: &Case,
    kernel: &Path,
    extra: &[&str],
    tamper: Tamper,
) -> (Output, cvm_tests::Recorded) {
    let f = fixture();
    let uds = c.dir.join(format!("vsock-{}", rand_suffix()));
    let recorded = malicious_relay(&uds, 50000, &c.verifier.url, tamper);
    let tee = format!("emulated-{}", c.tee);
    let mut args = vec![
        "launch",
        "--tee",
        &tee,
        "--emulated-platform",
        f.platform.to_str().unwrap(),
        "--firmware",
        f.firmware.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        &c.cmdline,
        "--disk",
        f.disk.to_str().unwrap(),
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--serial",
        "stdout",
    ];
    args.extend_from_slice(extra);
    // Staging bytes other than the measured ones is test equipment, refused unless the
    // environment allows it.
    let out = std::process::Command::new(bin("cvm"))
        .args(&args)
        .env("CVM_ALLOW_TAMPER_FOR_TESTS", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cvm launch");
    (out, recorded)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn describe(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The launch exited 0 and the guest printed the disk's message.
fn assert_unlocked(o: &Output) {
    assert!(o.status.success(), "{}", describe(o));
    assert!(
        stdout(o).contains(&format!("disk message: {MESSAGE}")),
        "{}",
        describe(o)
    );
}

fn released(v: &Verifier) -> usize {
    v.audit()
        .iter()
        .filter(|r| r["kind"] == "key-release" && r["outcome"] == "released")
        .count()
}

/// The refusal records (attestation or key release) of the verifier.
fn refusals(v: &Verifier) -> Vec<Value> {
    v.audit()
        .into_iter()
        .filter(|r| r["outcome"] == "refused")
        .collect()
}

/// Asserts the launch failed, the guest printed no message and nothing was released.
fn assert_refused(c: &Case, o: &Output, reason: &str) {
    assert!(!o.status.success(), "the VMM exited 0:\n{}", describe(o));
    assert!(
        !stdout(o).contains(MESSAGE),
        "the guest read the disk:\n{}",
        describe(o)
    );
    assert_eq!(released(&c.verifier), 0, "a key was released");
    let r = refusals(&c.verifier);
    assert!(
        r.iter().any(|r| r["detail"].to_string().contains(reason)),
        "no refusal record names `{reason}`: {r:#?}"
    );
}

#[test]
fn guest_unlocks_its_disk_through_the_host() {
    test_kit::require!(kvm);
    let c = case("ok", true);
    let (o, recorded) = launch(&c, &fixture().kernel, &[], Tamper::None);
    assert_unlocked(&o);
    // The evidence came through the SNP guest-request path (VMPCK0-encrypted
    // MSG_REPORT_REQ, extended request for the certificates).
    assert!(
        stdout(&o).contains("emulated snp TEE (SNP guest request)"),
        "{}",
        describe(&o)
    );
    assert_eq!(released(&c.verifier), 1);
    // The host saw the protocol, but the key only as a JWE it cannot open.
    let rec = recorded.lock().unwrap();
    let lines: Vec<&str> = rec.iter().map(|(l, _)| l.as_str()).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("POST /kbs/v0/auth")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("POST /kbs/v0/attest")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("GET /kbs/v0/resource/default/disk/e2e")),
        "{lines:?}"
    );
    let key = std::fs::read(&fixture().key).unwrap();
    for (_, body) in rec.iter() {
        assert!(!body.windows(key.len()).any(|w| w == key.as_slice()));
    }
}

/// The TDX twin: the TD attests with TDG.MR.REPORT + TDVMCALL<GetQuote> and sends its
/// quote without collateral, as a real TD does; the verifier fetches the TCB info and QE
/// identity from the emulated platform's collateral server (its PCS), and releases.
/// Before the test guest dropped the mailbox it sent the collateral itself and the
/// verifier fetched nothing.
#[test]
fn td_unlocks_its_disk_with_collateral_the_verifier_fetched() {
    test_kit::require!(kvm);
    let c = case_tee("tdx-ok", true, "tdx");
    let pcs = c
        .verifier
        .collateral_url
        .clone()
        .expect("a collateral server");
    let fetched_tcb = |v: &Verifier| {
        v.collateral_items().into_iter().any(|i| {
            i["key"]
                .as_str()
                .is_some_and(|k| k.starts_with("intel/tdx/tcb/"))
                && i["url"].as_str().is_some_and(|u| u.starts_with(&pcs))
        })
    };
    assert!(
        !fetched_tcb(&c.verifier),
        "nothing fetched before the launch"
    );
    let (o, recorded) = launch(&c, &fixture().kernel, &[], Tamper::None);
    assert_unlocked(&o);
    assert!(
        stdout(&o).contains("emulated tdx TEE (TDG.MR.REPORT + GetQuote)"),
        "{}",
        describe(&o)
    );
    assert_eq!(released(&c.verifier), 1);
    // The evidence carried no collateral: the attest request's TDX evidence says null.
    let rec = recorded.lock().unwrap();
    let attest = rec
        .iter()
        .find(|(l, _)| l.starts_with("POST /kbs/v0/attest"))
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .expect("an attest request");
    assert!(
        attest.contains("\"collateral\":null"),
        "the guest sent collateral: {attest}"
    );
    assert!(
        fetched_tcb(&c.verifier),
        "the verifier holds no TDX TCB info from {pcs}: {:#?}",
        c.verifier.collateral_items()
    );
    // The TD never touched the SNP trap ports (0xE1-0xE4): it checks for a TD before it
    // probes SNP (an `out` there is a #VE on TDX hardware).
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.lines().any(|l| l.contains("unknown port")
            && ["0xe1", "0xe2", "0xe3", "0xe4"]
                .iter()
                .any(|p| l.contains(&format!("port={p}")))),
        "the TD wrote an SNP trap port:\n{}",
        describe(&o)
    );
}

/// Without SNP or TDX the test guest has nothing to attest with (no host-defined
/// fallback): it says so and never reaches the verifier.
#[test]
fn test_guest_without_a_tee_says_it_needs_one() {
    test_kit::require!(kvm);
    let f = fixture();
    let c = case("no-tee", true);
    let uds = c.dir.join("vsock-none");
    let recorded = malicious_relay(&uds, 50000, &c.verifier.url, Tamper::None);
    let o = run(
        &bin("cvm"),
        &[
            "launch",
            "--tee",
            "none",
            "--firmware",
            f.firmware.to_str().unwrap(),
            "--kernel",
            f.kernel.to_str().unwrap(),
            "--cmdline",
            &c.cmdline,
            "--disk",
            f.disk.to_str().unwrap(),
            "--vsock-uds",
            uds.to_str().unwrap(),
            "--serial",
            "stdout",
        ],
    );
    assert!(stdout(&o).contains(NO_TEE), "{}", describe(&o));
    assert!(!stdout(&o).contains(MESSAGE), "{}", describe(&o));
    assert!(recorded.lock().unwrap().is_empty());
    assert_eq!(released(&c.verifier), 0);
}

/// What the test guest says when it finds no TEE it can reach: it names the missing
/// measured word, never "hardware" (this CPL3 guest cannot attest there).
const NO_TEE: &str = "no SNP or TDX: this CPL3 test guest needs --tee emulated-snp|emulated-tdx \
                      and the word cvm.tee_trap=port on its measured command line";

/// Under `--tee emulated-snp` without `cvm.tee_trap=port` the guest cannot reach the
/// emulated PSP: it says which word is missing (before the fix it told the user to use
/// `--tee emulated-snp`, which they had) and never reaches the verifier.
#[test]
fn emulated_snp_without_the_trap_word_names_the_missing_word() {
    test_kit::require!(kvm);
    let mut c = case("snp-no-trap-word", true);
    c.cmdline = c.cmdline.replace(" cvm.tee_trap=port", "");
    assert!(!c.cmdline.contains("tee_trap"), "{}", c.cmdline);
    let (o, recorded) = launch(&c, &fixture().kernel, &[], Tamper::None);
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(stdout(&o).contains(NO_TEE), "{}", describe(&o));
    assert!(!stdout(&o).contains("or hardware"), "{}", describe(&o));
    assert!(recorded.lock().unwrap().is_empty());
    assert_eq!(released(&c.verifier), 0);
}

/// `cvm launch --host-data` reaches the emulated SNP report's HOST_DATA: a policy that
/// pins it releases to the launch that passes it, and refuses a launch with other host
/// data or none (so the test fails if the flag were dropped on the way to the PSP).
#[test]
fn host_data_reaches_the_emulated_snp_report() {
    test_kit::require!(kvm);
    let platform = fixture().platform.as_path();
    let c = case_with(
        "host-data",
        "snp",
        Some(platform),
        Some(platform),
        Some("abcd"),
    );
    let (o, _) = launch(
        &c,
        &fixture().kernel,
        &["--host-data", "abcd"],
        Tamper::None,
    );
    assert_unlocked(&o);
    assert_eq!(released(&c.verifier), 1);

    for (name, extra) in [
        ("host-data-other", &["--host-data", "abce"][..]),
        ("host-data-none", &[][..]),
    ] {
        let c = case_with(name, "snp", Some(platform), Some(platform), Some("abcd"));
        let (o, _) = launch(&c, &fixture().kernel, extra, Tamper::None);
        assert_refused(&c, &o, "host data");
    }
}

/// A TD whose verifier fetches collateral from the emulated platform's collateral
/// server (its PCS URL) but does not trust that platform (no `--emulated-trust`) is
/// refused: fetching an emulated platform's collateral is no trust in its QE.
#[test]
fn td_is_refused_by_a_verifier_that_fetches_but_does_not_trust_emulated_collateral() {
    test_kit::require!(kvm);
    let platform = fixture().platform.as_path();
    let c = case_with("tdx-no-trust", "tdx", None, Some(platform), None);
    assert!(c.verifier.collateral_url.is_some());
    let (o, _) = launch(&c, &fixture().kernel, &[], Tamper::None);
    // The TCB info's issuer chain ends at the emulated root, which this verifier does
    // not trust.
    assert_refused(&c, &o, "does not end at a trusted root CA");
}

/// The vsock evidence service (for a stock Linux under an emulated TEE) is attached only
/// when the staged, measured command line says `cvm.tsm=vsock`: the test guest's launch
/// gets none, and the log says which; a `cvm.tsm=` word the agent would refuse refuses
/// the launch.
#[test]
fn vsock_evidence_service_only_with_cvm_tsm_vsock() {
    test_kit::require!(kvm);
    let mut c = case("evidence-service", true);
    let (o, _) = launch(&c, &fixture().kernel, &[], Tamper::None);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{}", describe(&o));
    assert!(
        err.contains("no cvm.tsm=vsock on the measured command line"),
        "{}",
        describe(&o)
    );
    assert!(!err.contains("evidence_port"), "{}", describe(&o));
    assert!(
        !err.contains("evidence service is attached"),
        "{}",
        describe(&o)
    );

    // With the word the service is attached (the test guest ignores the word, and the
    // measurement no longer matches the registered one: the verifier refuses).
    let base = c.cmdline.clone();
    c.cmdline = format!("{base} cvm.tsm=vsock");
    let (o, _) = launch(&c, &fixture().kernel, &[], Tamper::None);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("evidence service is attached") && err.contains("evidence_port=50001"),
        "{}",
        describe(&o)
    );

    // Words the agent refuses: the launch is refused before the guest runs.
    for bad in ["cvm.tsm=vsock cvm.tsm=configfs", "cvm.tsm"] {
        c.cmdline = format!("{base} {bad}");
        let (o, _) = launch(&c, &fixture().kernel, &[], Tamper::None);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{}", describe(&o));
        assert!(err.contains("only cvm.tsm=vsock"), "{}", describe(&o));
        assert!(!stdout(&o).contains("cvm-testguest"), "{}", describe(&o));
    }
}

#[test]
fn firmware_refuses_a_swapped_kernel() {
    test_kit::require!(kvm);
    let c = case("swap-kernel", true);
    // The host measures the real kernel but stages another one.
    let (o, recorded) = launch(
        &c,
        &fixture().kernel,
        &["--tamper-staged", "kernel"],
        Tamper::None,
    );
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(
        stdout(&o).contains("refusing to boot: kernel hash mismatch"),
        "{}",
        describe(&o)
    );
    // The guest never reached the verifier.
    assert!(recorded.lock().unwrap().is_empty());
    assert_eq!(released(&c.verifier), 0);
}

#[test]
fn verifier_refuses_a_swapped_kernel_with_its_hashes() {
    test_kit::require!(kvm);
    let c = case("swap-kernel-and-hashes", true);
    // A different kernel, consistently hashed: the firmware boots it, but the launch
    // measurement is not the registered one.
    let mut other = std::fs::read(&fixture().kernel).unwrap();
    other.extend_from_slice(&[0u8; 4096]);
    let path = c.dir.join("other.bzImage");
    std::fs::write(&path, other).unwrap();
    let (o, _) = launch(&c, &path, &[], Tamper::None);
    assert_refused(&c, &o, "measurement");
}

#[test]
fn debug_policy_is_refused() {
    test_kit::require!(kvm);
    let c = case("debug", true);
    // Guest policy with DEBUG (bit 19) allowed.
    let (o, _) = launch(
        &c,
        &fixture().kernel,
        &["--policy", "0xB0000"],
        Tamper::None,
    );
    assert_refused(&c, &o, "debug");
}

#[test]
fn replayed_evidence_is_refused() {
    test_kit::require!(kvm);
    let c = case("replay", true);
    let (o, recorded) = launch(&c, &fixture().kernel, &[], Tamper::None);
    assert!(o.status.success(), "{}", describe(&o));
    let old = recorded
        .lock()
        .unwrap()
        .iter()
        .find(|(l, _)| l.starts_with("POST /kbs/v0/attest"))
        .map(|(_, b)| b.clone())
        .expect("recorded attest request");
    let before = released(&c.verifier);
    let (o, _) = launch(&c, &fixture().kernel, &[], Tamper::ReplayAttest(old));
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(!stdout(&o).contains(MESSAGE), "{}", describe(&o));
    assert_eq!(released(&c.verifier), before, "the replay released a key");
    assert!(
        refusals(&c.verifier)
            .iter()
            .any(|r| r["detail"].to_string().contains("nonce")
                || r["detail"].to_string().contains("report-data")),
        "{:#?}",
        refusals(&c.verifier)
    );
}

#[test]
fn untrusted_emulated_platform_is_refused() {
    test_kit::require!(kvm);
    let c = case("no-trust", false);
    let (o, _) = launch(&c, &fixture().kernel, &[], Tamper::None);
    assert_refused(&c, &o, "untrusted");
}

#[test]
fn evidence_altered_in_transit_is_refused() {
    test_kit::require!(kvm);
    let c = case("alter-evidence", true);
    let (o, _) = launch(&c, &fixture().kernel, &[], Tamper::CorruptEvidence);
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(!stdout(&o).contains(MESSAGE));
    assert_eq!(released(&c.verifier), 0);
    assert!(!refusals(&c.verifier).is_empty());
}

#[test]
fn key_altered_in_transit_does_not_decrypt() {
    test_kit::require!(kvm);
    let c = case("alter-key", true);
    let (o, _) = launch(&c, &fixture().kernel, &[], Tamper::CorruptResponse);
    // The verifier released the JWE; the altered body fails the release signature in
    // the guest (before decryption).
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(!stdout(&o).contains(MESSAGE), "{}", describe(&o));
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.contains("cvm-testguest: error:") && l.contains("not the pinned verifier")),
        "{}",
        describe(&o)
    );
}

#[test]
fn revoked_workload_is_refused() {
    test_kit::require!(kvm);
    let c = case("revoked", true);
    c.verifier.admin_ok(&["workload", "revoke", "e2e"]);
    let (o, _) = launch(&c, &fixture().kernel, &[], Tamper::None);
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(!stdout(&o).contains(MESSAGE));
    assert_eq!(released(&c.verifier), 0);
    assert!(
        refusals(&c.verifier)
            .iter()
            .any(|r| r["detail"].to_string().contains("revoked")),
        "{:#?}",
        c.verifier.audit()
    );
}

#[test]
fn demo_runs_both_tees() {
    test_kit::require!(kvm);
    let dir = fixture().dir.join("demo");
    let out = run(&bin("cvm"), &["demo", "--dir", dir.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        text.matches("the guest decrypted its disk").count(),
        2,
        "{text}"
    );
    // The audit chain printed two releases and verifies.
    assert!(text.contains("\"key-release\""), "{text}");
    // The TDX guest sent its quote alone: the verifier fetched the TCB info from the
    // emulated platform's collateral server.
    assert!(
        text.lines()
            .any(|l| l.contains("intel/tdx/tcb/") && l.contains("<- http://127.0.0.1:")),
        "{text}"
    );
}
