//! `cvm firmware --out FILE`: write the embedded project firmware to a file (to pass it
//! to `cvm measure`, `sev-snp-measure` or another VMM). With `--test-guest`, write the
//! embedded bare-metal test guest (a bzImage; test equipment) instead.

use std::path::PathBuf;
use std::process::ExitCode;

use guest_images::{self as firmware, FirmwareError};

/// `cvm firmware`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the image.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Write the bare-metal test guest (guest-agent/testguest, a bzImage) instead.
    #[arg(long)]
    pub test_guest: bool,
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
}

fn write(a: &Args) -> Result<usize, Error> {
    let img = if a.test_guest {
        match firmware::testguest_image() {
            [] => return Err(Error::NoTestGuest),
            img => img,
        }
    } else {
        firmware::embedded()?
    };
    std::fs::write(&a.out, img).map_err(|e| Error::Write(a.out.clone(), e))?;
    Ok(img.len())
}

/// Runs `cvm firmware`.
pub fn run(a: Args) -> ExitCode {
    match write(&a) {
        Ok(n) => {
            let what = if a.test_guest {
                "the test guest"
            } else {
                "firmware"
            };
            eprintln!("wrote {n} bytes of {what} to {}", a.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(&e, cli_support::EXIT_FAILURE),
    }
}
