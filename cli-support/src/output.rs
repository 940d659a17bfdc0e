//! How commands print results, and the one overwrite rule.
//!
//! - `--output text|json` (alias `--output-format`): every command that prints a result
//!   prints it as text for people or as one JSON document for programs, on standard
//!   output. Times are RFC 3339 (UTC) in both ([`crate::units::rfc3339`]). Logs and
//!   progress never go to standard output.
//! - An output file that exists is refused unless `--force` is given ([`check_overwrite`]),
//!   for every command that writes one.

use std::path::{Path, PathBuf};

/// `--output`: the form of a command's result on standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON document for programs.
    Json,
}

impl Output {
    /// Whether JSON was asked for.
    pub fn is_json(self) -> bool {
        self == Output::Json
    }
}

/// Prints `v` as pretty JSON and a newline on standard output.
pub fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// An output file exists and `--force` was not given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} already exists; refusing to overwrite it (add --force to replace it)", .0.display())]
pub struct Exists(pub PathBuf);

impl crate::ExitClass for Exists {
    fn exit_code(&self) -> u8 {
        crate::EXIT_USAGE
    }
}

/// The overwrite rule: `path` may be written if it does not exist, or if `force`. A
/// regular file, a directory and a dangling symbolic link (it would be followed) count as
/// existing; a device, FIFO or socket (`/dev/null`, `/dev/stdout`) does not, since
/// writing to it replaces nothing.
pub fn check_overwrite(path: &Path, force: bool) -> Result<(), Exists> {
    if force {
        return Ok(());
    }
    let exists = match std::fs::metadata(path) {
        Ok(m) => m.is_file() || m.is_dir(),
        Err(_) => std::fs::symlink_metadata(path).is_ok(),
    };
    if exists {
        return Err(Exists(path.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_outputs_need_force() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out");
        check_overwrite(&p, false).unwrap();
        std::fs::write(&p, b"x").unwrap();
        let e = check_overwrite(&p, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(crate::ExitClass::exit_code(&e), crate::EXIT_USAGE);
        check_overwrite(&p, true).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("absent"), &link).unwrap();
        assert!(check_overwrite(&link, false).is_err(), "dangling link");
        check_overwrite(Path::new("/dev/null"), false).unwrap();
    }
}
