//! configfs-tsm (`Documentation/ABI/testing/configfs-tsm`, Linux ≥ 6.7): a report is an
//! object directory under `/sys/kernel/config/tsm/report`; write `inblob` (REPORT_DATA),
//! read `outblob` (SNP report or TDX quote), `auxblob` (SNP certificate table) and
//! `provider` (`sev_guest`, `tdx_guest`), checking `generation` so a concurrent writer
//! cannot hand us another request's report.

use std::fs;
use std::path::{Path, PathBuf};

/// The configfs-tsm report directory.
pub const TSM_REPORT: &str = "/sys/kernel/config/tsm/report";

/// What configfs-tsm returned.
#[derive(Debug, Clone)]
pub struct TsmReport {
    /// `provider`.
    pub provider: String,
    /// `outblob`.
    pub outblob: Vec<u8>,
    /// `auxblob` (absent for TDX).
    pub auxblob: Option<Vec<u8>>,
}

/// Whether configfs-tsm is available.
pub fn available() -> bool {
    Path::new(TSM_REPORT).is_dir()
}

struct Entry(PathBuf);

impl Drop for Entry {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// Generates a report for `report_data` in `base` (normally [`TSM_REPORT`]).
pub fn report(base: &Path, report_data: &[u8; 64]) -> std::io::Result<TsmReport> {
    let entry = Entry(base.join(format!("cvm-agent-{}", std::process::id())));
    fs::create_dir(&entry.0)?;
    report_in(&entry.0, report_data)
}

/// The request/response exchange in an existing report object directory.
pub fn report_in(entry: &Path, report_data: &[u8; 64]) -> std::io::Result<TsmReport> {
    fs::write(entry.join("inblob"), report_data)?;
    let generation = fs::read_to_string(entry.join("generation"))?;
    let outblob = fs::read(entry.join("outblob"))?;
    let auxblob = fs::read(entry.join("auxblob"))
        .ok()
        .filter(|a| !a.is_empty());
    let provider = fs::read_to_string(entry.join("provider"))?
        .trim()
        .to_owned();
    if fs::read_to_string(entry.join("generation"))? != generation {
        return Err(std::io::Error::other(
            "the configfs-tsm report changed while it was read",
        ));
    }
    Ok(TsmReport {
        provider,
        outblob,
        auxblob,
    })
}
