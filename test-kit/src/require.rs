//! Requirements of a test (KVM, a tool, a file, a variable, root) that skip visibly
//! outside CI and fail under CI.

use std::ffi::OsStr;
use std::fmt::Display;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Whether the tests run under CI: `CI` is set to anything but empty, `0` or `false`
/// (`.ci/run` sets `CI=true`). Under CI a missing requirement fails the test.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The name of the running test: libtest names each test's thread after it; the test
/// executable's name when that is not available (`--test-threads=1` on older libtest,
/// or a helper thread).
pub fn test_name() -> String {
    match std::thread::current().name() {
        Some(n) if n != "main" => n.to_owned(),
        _ => std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "test".to_owned()),
    }
}

/// Reports that (part of) the running test did not run because of `reason`.
///
/// Outside CI: prints `SKIPPED <test>: <reason>` to the process's stderr, bypassing
/// libtest's capture, so `cargo test` shows it although the test passes.
///
/// # Panics
/// Under CI ([`in_ci`]): the requirement is part of CI's machine, so its absence fails.
pub fn skip(reason: impl Display) {
    report(in_ci(), &test_name(), &reason.to_string());
}

/// Reports that (part of) the running test did not run because an *optional* input is
/// absent, one CI does not provide either (e.g. a stock Linux kernel to boot): prints
/// the `SKIPPED` line as [`skip`] does, but never fails, CI or not.
pub fn skip_optional(reason: impl Display) {
    report(false, &test_name(), &reason.to_string());
}

fn report(ci: bool, test: &str, reason: &str) {
    if ci {
        panic!("{test}: {reason}, and CI is set: CI must provide it (see scripts/setup)");
    }
    // Straight to the file descriptor: `eprintln!` would be captured with the passing
    // test's output and never shown. One stream only, so `2>&1` logs it once.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// `ok`, or a skip with `reason` ([`skip`]): the general form of the `require_*`
/// functions, e.g. for "a Python module is importable".
pub fn require(ok: bool, reason: impl Display) -> bool {
    if !ok {
        skip(reason);
    }
    ok
}

/// Whether `/dev/kvm` opens read-write.
pub fn require_kvm() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    require(ok, "/dev/kvm is not available")
}

/// Whether the process runs as root (namespaces, chroot, cgroups, the jail).
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    require(root, "needs root")
}

/// Where `name` is found on `PATH` as an executable file.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether the program `name` is on `PATH`.
pub fn require_tool(name: &str) -> bool {
    require(
        find_tool(name).is_some(),
        format_args!("`{name}` is not installed (not found on PATH)"),
    )
}

/// Whether `path` exists.
pub fn require_file(path: impl AsRef<Path>) -> bool {
    let path = path.as_ref();
    require(
        path.exists(),
        format_args!("{} does not exist", path.display()),
    )
}

/// The value of the environment variable `var`, if set and not empty.
pub fn require_env(var: impl AsRef<OsStr>) -> Option<String> {
    let var = var.as_ref();
    let value = std::env::var(var).ok().filter(|v| !v.is_empty());
    if value.is_none() {
        skip(format_args!("{} is not set", var.to_string_lossy()));
    }
    value
}

/// Returns from the calling test when a requirement is missing (after the visible skip
/// or, under CI, the failure of the `require_*` function):
///
/// ```no_run
/// # fn t() {
/// test_kit::require!(kvm);
/// test_kit::require!(root);
/// test_kit::require!(tool "cryptsetup");
/// test_kit::require!(file "/lib/modules");
/// let url = test_kit::require!(env "CVM_TEST_POSTGRES_URL");
/// test_kit::require!(std::path::Path::new("/x").exists(), "no /x");
/// # let _ = url; }
/// ```
#[macro_export]
macro_rules! require {
    (kvm) => {
        if !$crate::require_kvm() {
            return;
        }
    };
    (root) => {
        if !$crate::require_root() {
            return;
        }
    };
    (tool $name:expr) => {
        if !$crate::require_tool($name) {
            return;
        }
    };
    (file $path:expr) => {
        if !$crate::require_file($path) {
            return;
        }
    };
    (env $var:expr) => {
        match $crate::require_env($var) {
            Some(v) => v,
            None => return,
        }
    };
    ($ok:expr, $reason:expr) => {
        if !$crate::require($ok, $reason) {
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_ci_a_skip_only_reports() {
        report(false, "some_test", "`x` is not installed");
    }

    #[test]
    #[should_panic(expected = "some_test: `x` is not installed, and CI is set")]
    fn under_ci_a_skip_fails() {
        report(true, "some_test", "`x` is not installed");
    }

    #[test]
    fn the_test_name_comes_from_libtest() {
        assert!(test_name().ends_with("the_test_name_comes_from_libtest"));
    }

    #[test]
    fn tools_are_found_on_path() {
        assert!(find_tool("sh").is_some());
        assert!(find_tool("no-such-tool-test-kit").is_none());
    }

    #[test]
    fn the_macro_returns_early_when_missing() {
        fn t(hit: &mut bool) {
            if in_ci() {
                // Under CI the skip would panic; the early return is the same code.
                return;
            }
            crate::require!(false, "never");
            *hit = true;
        }
        let mut hit = false;
        t(&mut hit);
        assert!(!hit);
    }
}
