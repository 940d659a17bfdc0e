//! Test equipment shared by every test crate of the workspace (a dev-dependency only;
//! never linked into a shipped binary).
//!
//! - **Requirements that skip visibly.** [`require_kvm`], [`require_tool`],
//!   [`require_file`], [`require_env`], [`require_root`] and the general [`require()`]
//!   return whether the test can proceed. When it cannot, they print
//!   `SKIPPED <test>: <reason>` straight to the process's stderr (bypassing libtest's
//!   output capture, so the line shows in a normal `cargo test` run) and, when `CI` is
//!   set (see [`in_ci`]), panic with the reason instead: CI must have every tool.
//!   The [`require!`] macro returns from the test early.
//! - **Processes with a deadline.** [`run_with_deadline`] spawns a [`Command`](std::process::Command), collects
//!   its stdout and stderr, and at the deadline kills it and fails with what it printed.
//! - **CLI refusal tables.** [`Refusal`] rows and [`assert_refusals`]: run a binary with
//!   bad arguments and check the exit code and a text in stderr, reporting every failing
//!   row at once.
//! - **Cached directories.** [`cached_dir`] makes a slow-to-generate directory once per
//!   target directory (shared by test processes, race-free); with the `emulated`
//!   feature, `emulated_platform()` and `untrusted_snp_platform()` are the emulated
//!   SNP/TDX platforms the verifier and guest-agent tests trust.
//!
//! Synthetic firmware images live in `measured_boot::testing` (feature `test-utils`).

mod process;
mod require;

pub use process::{assert_refusals, run_timed, run_with_deadline, Refusal, DEFAULT_DEADLINE};
pub use require::{
    find_tool, in_ci, require, require_env, require_file, require_kvm, require_root, require_tool,
    skip, skip_optional, test_name,
};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The directory for test scratch data that may outlive one run: `target/tmp` (Cargo's
/// `CARGO_TARGET_TMPDIR`), found from the test executable (`target/<profile>/deps/…`);
/// the system temporary directory if that layout is not there.
pub fn target_tmpdir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("tmp")))
        .filter(|p| p.parent().is_some_and(Path::is_dir))
        .unwrap_or_else(std::env::temp_dir)
}

/// A directory `name` under [`target_tmpdir`], filled once by `create` and reused by
/// later calls, test binaries and runs (a `ready` marker says it is complete). Put a
/// version in `name` and bump it when `create` changes.
///
/// `create` fills a private scratch directory that is then renamed into place, so two
/// test processes racing to create it both end with a complete directory.
///
/// # Panics
/// If the directory cannot be created (a broken test environment).
pub fn cached_dir(name: &str, create: impl FnOnce(&Path)) -> PathBuf {
    static DONE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let done = DONE.get_or_init(Default::default);
    // Held while creating: one creation per name per process.
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = done.get(name) {
        return p.clone();
    }
    let root = target_tmpdir();
    let base = root.join(name);
    if !base.join("ready").exists() {
        let tmp = root.join(format!("{name}-tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", tmp.display()));
        create(&tmp);
        std::fs::write(tmp.join("ready"), b"ok").expect("write the ready marker");
        if std::fs::rename(&tmp, &base).is_err() {
            // A directory without the marker is not one of ours (a leftover of an older
            // layout, or damage): replace it. Complete ones only ever appear by rename.
            if !base.join("ready").exists() {
                let _ = std::fs::remove_dir_all(&base);
                let _ = std::fs::rename(&tmp, &base);
            }
            // Otherwise another process won the race; either copy is complete.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        assert!(
            base.join("ready").exists(),
            "{} is not complete after creation",
            base.display()
        );
    }
    done.insert(name.to_owned(), base.clone());
    base
}

/// The emulated SNP and TDX platforms (one directory, both platforms) that the verifier
/// and guest-agent tests trust: generated once per target directory (RSA-4096 keys are
/// slow) and reused.
#[cfg(feature = "emulated")]
pub fn emulated_platform() -> PathBuf {
    cached_dir("test-kit-emulated-v1", |dir| {
        attestation::snp::emulated::EmulatedSnpPlatform::create(dir)
            .expect("emulated SNP platform");
        attestation::tdx::emulated::EmulatedTdxPlatform::create(dir)
            .expect("emulated TDX platform");
    })
}

/// A second, independent emulated SNP platform that no test server trusts.
#[cfg(feature = "emulated")]
pub fn untrusted_snp_platform() -> PathBuf {
    cached_dir("test-kit-untrusted-snp-v1", |dir| {
        attestation::snp::emulated::EmulatedSnpPlatform::create(dir)
            .expect("emulated SNP platform");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incomplete_directory_is_replaced() {
        let name = format!("test-kit-selftest-stale-{}", std::process::id());
        let stale = target_tmpdir().join(&name);
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("old"), b"half-written").unwrap();
        let d = cached_dir(&name, |d| std::fs::write(d.join("data"), b"y").unwrap());
        assert_eq!(d, stale);
        assert_eq!(std::fs::read(d.join("data")).unwrap(), b"y");
        assert!(!d.join("old").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn cached_dir_is_created_once_and_reused() {
        let name = format!("test-kit-selftest-{}", std::process::id());
        let calls = std::cell::Cell::new(0);
        let a = cached_dir(&name, |d| {
            calls.set(calls.get() + 1);
            std::fs::write(d.join("data"), b"x").unwrap();
        });
        let b = cached_dir(&name, |_| calls.set(calls.get() + 1));
        assert_eq!(a, b);
        assert_eq!(calls.get(), 1, "the second call must reuse the directory");
        assert_eq!(std::fs::read(a.join("data")).unwrap(), b"x");
        assert!(a.join("ready").exists());
        std::fs::remove_dir_all(&a).unwrap();
    }
}
