//! Shell completions and man pages come from the clap definitions: every command is in
//! them, and they are generated without error (CI runs this).

use std::process::Command;

const CVM: &str = env!("CARGO_BIN_EXE_cvm");

const COMMANDS: &[&str] = &[
    "measure",
    "launch",
    "host-check",
    "image",
    "emulated",
    "firmware",
    "demo",
    "api",
    "net",
];

#[test]
fn completions_name_every_command_and_flag() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(CVM)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        for c in COMMANDS {
            assert!(text.contains(c), "{shell} completion lacks {c}");
        }
        assert!(
            text.contains("emulated-platform"),
            "{shell}: no launch flags"
        );
    }
    let out = Command::new(CVM)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_pages_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(CVM)
        .args(["man", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = |name: &str| std::fs::read_to_string(dir.path().join(format!("{name}.1")));
    let top = page("cvm").unwrap();
    assert!(top.starts_with(".ie") || top.contains(".TH cvm"), "{top}");
    for c in COMMANDS {
        let p = page(&format!("cvm-{c}")).unwrap_or_else(|e| panic!("cvm-{c}.1: {e}"));
        assert!(p.contains(".TH"), "cvm-{c}.1 is not a man page");
    }
    assert!(page("cvm-image-disk").unwrap().contains("key\\-out"));
    assert!(page("cvm-launch").unwrap().contains("api\\-socket"));
}

#[test]
fn the_verifier_has_completions_and_man_pages_too() {
    let verifier = std::path::Path::new(CVM).with_file_name("cvm-verifier");
    // Built by `cargo test --workspace`; with `-p cvm` alone it may be absent.
    test_kit::require!(file & verifier);
    let out = Command::new(&verifier)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for c in ["serve", "admin", "audit", "verify", "identity"] {
        assert!(text.contains(c), "no {c}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&verifier)
        .args(["man", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(dir.path().join("cvm-verifier-serve.1").exists());
    assert!(dir.path().join("cvm-verifier-verify-snp.1").exists());
}
