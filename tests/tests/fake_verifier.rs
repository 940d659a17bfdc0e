//! A compromised host substitutes the verifier (issue 14, finding 2): the real test
//! guest, launched by the real `cvm launch --tee emulated-snp` on /dev/kvm, attests
//! through the VMM's relay to a fake KBS on 127.0.0.1 that accepts anything and
//! releases the host's own disk key, encrypted to the guest's public key. The guest
//! pins the honest verifier's key on its (measured) command line and must refuse: it
//! prints `cvm-testguest: error:`, never the disk message, and `cvm` exits non-zero.
//! A guest launched without a pin refuses before it attests at all.
//!
//! Needs /dev/kvm (skipped visibly without it, except under CI) and the workspace
//! binaries (`cargo test --workspace` builds them).

use std::path::PathBuf;
use std::process::Output;
use std::sync::OnceLock;

use cvm_tests::fake_kbs::{self, FakeKbs, Forgery};
use cvm_tests::{bin, ok, MESSAGE, RESOURCE};
use verifier::crypto::token::TokenSigner;

/// Images, the emulated platform and the host's own disk, made once for the file.
struct Fixture {
    dir: PathBuf,
    platform: PathBuf,
    firmware: PathBuf,
    kernel: PathBuf,
    disk: PathBuf,
    key: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fake-verifier-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cvm = bin("cvm");
        let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
        let platform = dir.join("platform");
        ok(&cvm, &["emulated", "init", "--dir", &s(&platform)]);
        let firmware = dir.join("firmware.fd");
        ok(&cvm, &["firmware", "--out", &s(&firmware)]);
        let kernel = dir.join("testguest.bzImage");
        ok(&cvm, &["firmware", "--test-guest", "--out", &s(&kernel)]);
        // The host's disk: the host knows its key.
        let disk = dir.join("host-disk.img");
        let key_file = dir.join("host-disk.key");
        ok(
            &cvm,
            &[
                "image",
                "disk",
                "--size",
                "4M",
                "--out",
                &s(&disk),
                "--key-out",
                &s(&key_file),
                "--message",
                MESSAGE,
            ],
        );
        let key = std::fs::read(&key_file).unwrap();
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

/// The key of the honest verifier the tenant pins (the host does not hold it).
fn honest_pin() -> String {
    let honest = TokenSigner::generate();
    honest.identity().verifier_key
}

/// `cvm launch --tee emulated-snp` with the relay pointed at `kbs`, `extra` appended
/// to the command line.
fn launch(kbs: &FakeKbs, extra: &str) -> Output {
    let f = fixture();
    let cmdline = format!("console=ttyS0 cvm.kbs_resource={RESOURCE} cvm.tee_trap=port {extra}");
    std::process::Command::new(bin("cvm"))
        .args([
            "launch",
            "--tee",
            "emulated-snp",
            "--emulated-platform",
            f.platform.to_str().unwrap(),
            "--firmware",
            f.firmware.to_str().unwrap(),
            "--kernel",
            f.kernel.to_str().unwrap(),
            "--cmdline",
            &cmdline,
            "--disk",
            f.disk.to_str().unwrap(),
            "--verifier",
            &kbs.url(),
            "--serial",
            "stdout",
        ])
        .current_dir(&f.dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cvm launch")
}

fn describe(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The guest refused with an `error:` line naming `why`, and never read the disk.
fn assert_guest_refused(o: &Output, why: &str) {
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "cvm exited 0:\n{}", describe(o));
    assert!(
        !out.contains("disk message:") && !out.contains(MESSAGE),
        "the guest opened the host's disk:\n{}",
        describe(o)
    );
    assert!(
        out.lines()
            .any(|l| l.contains("cvm-testguest: error:") && l.contains(why)),
        "no `cvm-testguest: error: … {why}` line:\n{}",
        describe(o)
    );
}

/// The attack verbatim: token `a.b.c`, a JWE of the host's key to the guest's
/// key, no proof of the verifier's identity.
#[test]
fn pinned_guest_refuses_a_fake_kbs() {
    test_kit::require!(kvm);
    let kbs = fake_kbs::start(fixture().key.clone(), Forgery::Bare);
    let o = launch(&kbs, &format!("cvm.verifier_key={}", honest_pin()));
    assert_guest_refused(&o, "not the pinned verifier");
    // Refused at the token, before the resource was requested.
    assert!(!kbs.released(), "{:?}", kbs.requests.lock().unwrap());
}

/// A fake KBS that signs its token and its release consistently with its own key.
#[test]
fn pinned_guest_refuses_a_kbs_signing_with_another_key() {
    test_kit::require!(kvm);
    let kbs = fake_kbs::start(fixture().key.clone(), Forgery::OwnKey);
    let o = launch(&kbs, &format!("cvm.verifier_key={}", honest_pin()));
    assert_guest_refused(&o, "not the pinned verifier");
}

/// Without `cvm.verifier_key=` the guest refuses before it sends anything.
#[test]
fn unpinned_guest_refuses_to_attest() {
    test_kit::require!(kvm);
    let kbs = fake_kbs::start(fixture().key.clone(), Forgery::Bare);
    let o = launch(&kbs, "");
    assert_guest_refused(&o, "no pinned verifier");
    assert!(
        kbs.requests.lock().unwrap().is_empty(),
        "the unpinned guest talked to the KBS: {:?}",
        kbs.requests.lock().unwrap()
    );
}
