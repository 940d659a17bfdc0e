//! End to end on KVM: `cvm launch --tee emulated-snp|emulated-tdx` boots the project
//! firmware and the test guest, which attests over vsock through the VMM's relay to the
//! real verifier, receives the disk key, opens a LUKS2 disk and prints its message.
//!
//! Ignored by default (boots a VM: needs /dev/kvm, the `cvm` binary built by `cargo build
//! -p cvm`, and the guest images under target/guest/; ~30-60 s per boot because the
//! firmware hashes the image at CPL0). Run:
//! `cargo build -p cvm && cargo test -p guest-agent --test e2e_kvm -- --ignored`

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::json;

const MESSAGE: &str = "hello from the encrypted disk";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn flat(elf: &Path, out: &Path) {
    let st = Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(elf)
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success(), "objcopy {}", elf.display());
}

fn boot(tee: &str) {
    test_kit::require!(kvm);
    let cvm = root().join("target/debug/cvm");
    let fw_elf = root().join("target/guest/cvm-firmware/release/cvm-firmware");
    let tg_elf = root().join("target/guest/cvm-testguest/release/cvm-testguest");
    for p in [&cvm, &fw_elf, &tg_elf] {
        assert!(p.exists(), "{} is missing: cargo build -p cvm", p.display());
    }
    let dir = tempfile::tempdir().unwrap();
    let (fw, tg) = (dir.path().join("fw.bin"), dir.path().join("tg.bin"));
    flat(&fw_elf, &fw);
    flat(&tg_elf, &tg);

    // The disk: LUKS2 (PBKDF2 keyslot) keyed by the resource, message at offset 0.
    let mut key = vec![0u8; 64];
    guest_agent::Entropy::fill(&mut guest_agent::rng::OsEntropy, &mut key).unwrap();
    let disk = dir.path().join("disk.img");
    let mut vol = luks::create(&disk, 20 << 20, &key, &luks::CreateOptions::default()).unwrap();
    vol.write_plaintext(0, format!("{MESSAGE}\0").as_bytes())
        .unwrap();
    drop(vol);

    // A workload that explicitly allows any measurement matches emulated guests that
    // name it (cvm.kbs_workload); an empty list alone would match none.
    let server = start_server_with(
        json!({"allow_emulated": true, "allow_any_measurement": true}),
        key,
    );
    let workload = if tee == "emulated-tdx" {
        "web-tdx"
    } else {
        "web"
    };
    let mut cmd = Command::new(&cvm);
    cmd.args(["launch", "--tee", tee, "--memory", "256M"]);
    // CVM_E2E_SECCOMP=off: debug a VMM that dies with SIGSYS.
    if let Ok(mode) = std::env::var("CVM_E2E_SECCOMP") {
        cmd.args(["--seccomp", &mode]);
    }
    cmd.arg("--emulated-platform")
        .arg(emulated_dir())
        .arg("--firmware")
        .arg(&fw)
        .arg("--kernel")
        .arg(&tg)
        .arg("--cmdline")
        .arg(format!(
            "cvm.kbs_resource={RESOURCE} cvm.kbs_workload={workload} cvm.verifier_key={}",
            server.verifier_key.to_b64url()
        ))
        .arg("--disk")
        .arg(&disk)
        .arg("--verifier")
        .arg(format!("http://{}", server.addr));
    let out = test_kit::run_with_deadline(&mut cmd, std::time::Duration::from_secs(600));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}\nstatus: {:?}", out.status);
    assert!(out.status.success(), "cvm launch failed");
    assert!(
        stdout.contains(&format!("cvm-testguest: disk message: {MESSAGE}")),
        "no message"
    );
}

#[test]
#[ignore = "boots a KVM guest: needs /dev/kvm, target/debug/cvm and the guest images"]
fn emulated_snp_guest_unlocks_its_disk() {
    boot("emulated-snp");
}

#[test]
#[ignore = "boots a KVM guest: needs /dev/kvm, target/debug/cvm and the guest images"]
fn emulated_tdx_guest_unlocks_its_disk() {
    boot("emulated-tdx");
}
