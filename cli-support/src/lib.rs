//! The command-line conventions shared by `cvm`'s crates (`cvm`, `cvm-image`,
//! `emulated-sp`).
//!
//! # Exit codes
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | a refusal or a failed run (the host cannot provide the TEE, the guest panicked, a verification failed, an I/O error while doing the work) |
//! | 2 | usage: a bad flag or an unreadable or invalid input (a missing or malformed file, a bad size) |
//!
//! `cvm launch` exits with the guest's own status where the guest has one. Errors are
//! printed by [`fail`]: `error: <message>` and then one `caused by: <source>` line per
//! error in the `source()` chain, so a typed error keeps its whole cause chain.

use std::process::ExitCode;

pub mod args;
pub mod docs;
pub mod logging;
pub mod output;
pub mod progress;
pub mod units;

pub use output::{check_overwrite, Output};

/// Exit code for a refusal or a failed run.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for a usage error or an unreadable or invalid input.
pub const EXIT_USAGE: u8 = 2;

/// An error that knows which exit code it means under the convention above.
pub trait ExitClass: std::error::Error {
    /// [`EXIT_USAGE`] for a usage error or an unreadable or invalid input, else
    /// [`EXIT_FAILURE`].
    fn exit_code(&self) -> u8;
}

/// Prints `err` as [`fail`] does and returns the exit code it classifies itself as.
pub fn exit_with<E: ExitClass>(err: &E) -> ExitCode {
    fail(err, err.exit_code())
}

/// Prints `error: <err>` and one `caused by:` line per source, and returns `code`.
pub fn fail(err: &dyn std::error::Error, code: u8) -> ExitCode {
    eprintln!("{}", render(err));
    ExitCode::from(code)
}

/// The text [`fail`] prints: `error: <err>` and one `caused by:` line per source.
pub fn render(err: &dyn std::error::Error) -> String {
    let mut out = format!("error: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(&format!("\ncaused by: {s}"));
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("cannot read the firmware")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn render_keeps_the_whole_cause_chain() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        ));
        assert_eq!(
            render(&e),
            "error: cannot read the firmware\ncaused by: no such file"
        );
    }
}
