//! `cvm firmware --out FILE`: write the embedded project firmware to a file (to pass it
//! to `cvm measure`, `sev-snp-measure` or another VMM). With `--test-guest`, write the
//! embedded bare-metal test guest (a bzImage; test equipment) instead.

use std::path::PathBuf;
use std::process::ExitCode;

use guest_images::{self as firmware, FirmwareError};

/// `cvm firmware`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the image (must not exist, unless --force).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Write the bare-metal test guest (guest-agent/testguest, a bzImage) instead.
    #[arg(long)]
    pub test_guest: bool,
    /// `text` or `json` (what was written, with its SHA-256, on standard output).
    #[arg(long, visible_alias = "output-format", value_enum, default_value_t)]
    pub output: cli_support::Output,
}

/// Why `cvm firmware` failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No image in this build.
    #[error("no firmware to write")]
    Missing(#[from] FirmwareError),
    /// No test guest in this build.
    #[error("this cvm was built without the test guest (guest-agent/testguest)")]
    NoTestGuest,
    /// The file could not be written.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    /// The file exists and --force was not given.
    #[error(transparent)]
    Exists(#[from] cli_support::output::Exists),
}

impl cli_support::ExitClass for Error {
    fn exit_code(&self) -> u8 {
        match self {
            Error::Exists(_) => cli_support::EXIT_USAGE,
            _ => cli_support::EXIT_FAILURE,
        }
    }
}

fn write(a: &Args) -> Result<&'static [u8], Error> {
    cli_support::check_overwrite(&a.out, a.force)?;
    let img = if a.test_guest {
        match firmware::testguest_image() {
            [] => return Err(Error::NoTestGuest),
            img => img,
        }
    } else {
        firmware::embedded()?
    };
    std::fs::write(&a.out, img).map_err(|e| Error::Write(a.out.clone(), e))?;
    Ok(img)
}

/// Runs `cvm firmware`.
pub fn run(a: Args) -> ExitCode {
    match write(&a) {
        Ok(img) => {
            let what = if a.test_guest {
                "the test guest"
            } else {
                "firmware"
            };
            if a.output.is_json() {
                use sha2::Digest as _;
                cli_support::output::print_json(&serde_json::json!({
                    "path": a.out,
                    "image": if a.test_guest { "test-guest" } else { "firmware" },
                    "bytes": img.len(),
                    "sha256": hex::encode(sha2::Sha256::digest(img)),
                }));
            } else {
                eprintln!("wrote {} bytes of {what} to {}", img.len(), a.out.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => cli_support::exit_with(&e),
    }
}
