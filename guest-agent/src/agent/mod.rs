//! `cvm-agent`: the Linux initramfs agent. It attests with the platform's evidence,
//! receives the disk key from the KBS, opens the LUKS2 root with `cryptsetup open
//! --key-file=-` (the key goes through a pipe: never on disk, in argv or in logs), mounts
//! it and `switch_root`s into it.
//!
//! Evidence providers ([`LinuxEvidence`]), tried in this order by `auto`:
//! - configfs-tsm (`/sys/kernel/config/tsm/report`, Linux ≥ 6.7): SNP report + `auxblob`
//!   certificate table, or TDX quote;
//! - `/dev/sev-guest` `SNP_GET_EXT_REPORT` (report + certificate table);
//! - TDX without configfs-tsm is refused: `/dev/tdx_guest` gives only a TDREPORT, which
//!   the verifier cannot check without a quote.
//!
//! The evidence is in Trustee's formats (`SnpEvidence`, `TdxEvidence`; see
//! [`crate::evidence`]), so the agent works against a Trustee KBS as well as against
//! `cvm-verifier`. For TDX the agent adds the CC event log (the CCEL ACPI table data,
//! `/sys/firmware/acpi/tables/data/CCEL`, as Trustee's attestation agent does) when the
//! kernel exposes it; the verifier replays it against the quote's RTMRs.
//!
//! TDX collateral is not fetched by the agent (no PCCS client): pass it with
//! `--tdx-collateral FILE` (the `QuoteCollateralV3` JSON, sent as the cvm extension
//! member `collateral`), or the verifier must have it (else "collateral unavailable").
//!
//! Under cvm's emulated TEEs a stock kernel has neither (it does not see SNP/TDX): the
//! measured kernel command line `cvm.tsm=vsock` selects
//! [`vsock_tsm::VsockTsmEvidence`] instead, the VMM's vsock evidence service, which
//! answers what configfs-tsm would (insecure-emulated; see that module for why a
//! hardware policy can never be met through it).
//!
//! Test equipment: [`emulated_unix::EmulatedUnixEvidence`] (`--evidence
//! emulated-unix:PATH`) asks `cvm emulated serve` on a Unix socket instead, so the agent
//! runs as a host process; with `--test-passphrase` it then only checks the key with
//! [`cryptsetup_test_passphrase`] (no dm-crypt, no mount) and exits 0 or 1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::evidence::{Evidence, EvidenceError, EvidenceProvider, Tee};
use crate::linux::{sev_guest, tsm};

pub mod emulated_unix;
pub mod vsock_tsm;

/// Which evidence source to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// configfs-tsm.
    Tsm,
    /// `/dev/sev-guest`.
    SevGuest,
}

/// Evidence from the Linux TEE drivers.
#[derive(Debug)]
pub struct LinuxEvidence {
    source: Source,
    tee: Tee,
    tdx_collateral: Option<Vec<u8>>,
}

fn unavailable(e: impl std::fmt::Display) -> EvidenceError {
    EvidenceError::Unavailable(e.to_string())
}

impl LinuxEvidence {
    /// Detects the source (configfs-tsm first, then `/dev/sev-guest`).
    pub fn detect(tdx_collateral: Option<Vec<u8>>) -> Result<Self, EvidenceError> {
        if tsm::available() {
            // The provider name is known only after a first report.
            let r = tsm::report(Path::new(tsm::TSM_REPORT), &[0; 64]).map_err(unavailable)?;
            let tee = match r.provider.as_str() {
                "sev_guest" => Tee::Snp,
                "tdx_guest" => Tee::Tdx,
                other => {
                    return Err(unavailable(format!(
                        "unknown configfs-tsm provider {other}"
                    )))
                }
            };
            return Ok(Self {
                source: Source::Tsm,
                tee,
                tdx_collateral,
            });
        }
        if Path::new("/dev/sev-guest").exists() {
            return Ok(Self {
                source: Source::SevGuest,
                tee: Tee::Snp,
                tdx_collateral: None,
            });
        }
        if Path::new("/dev/tdx_guest").exists() {
            return Err(unavailable(
                "TDX needs configfs-tsm for a quote (Linux >= 6.7 with TSM_REPORTS)",
            ));
        }
        Err(unavailable(
            "no TEE guest interface (configfs-tsm, /dev/sev-guest)",
        ))
    }

    /// The source in use.
    pub fn source(&self) -> Source {
        self.source
    }
}

impl EvidenceProvider for LinuxEvidence {
    fn tee(&self) -> Tee {
        self.tee
    }

    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        match self.source {
            Source::Tsm => {
                let r =
                    tsm::report(Path::new(tsm::TSM_REPORT), report_data).map_err(unavailable)?;
                match self.tee {
                    Tee::Snp => Evidence::snp_trustee(&r.outblob, r.auxblob.as_deref()),
                    Tee::Tdx => Evidence::tdx_trustee(
                        &r.outblob,
                        read_ccel(Path::new(CCEL_PATH))?.as_deref(),
                        self.tdx_collateral.as_deref(),
                    ),
                }
            }
            Source::SevGuest => {
                let (report, certs) = sev_guest::ext_report(report_data).map_err(unavailable)?;
                let certs = (!certs.iter().all(|&b| b == 0)).then_some(certs);
                Evidence::snp_trustee(&report, certs.as_deref())
            }
        }
    }
}

/// Where Linux exposes the CC event log (the CCEL ACPI table's data area).
pub const CCEL_PATH: &str = "/sys/firmware/acpi/tables/data/CCEL";
/// How much of the CCEL's 0xFF padding is kept after the last non-0xFF byte.
pub const CCEL_PAD: usize = 64;
/// The largest CC event log sent (the verifier's request limit bounds it anyway).
pub const CCEL_MAX: u64 = 1 << 20;

/// The CC event log at `path`, `None` when the platform has none; an unreadable or
/// oversized log is an error, not silently dropped (the verifier would then judge a
/// different evidence than the platform produced).
pub fn read_ccel(path: &Path) -> Result<Option<Vec<u8>>, EvidenceError> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unavailable(format!("cannot read {}: {e}", path.display()))),
    };
    let mut log = Vec::new();
    f.take(CCEL_MAX + 1)
        .read_to_end(&mut log)
        .map_err(|e| unavailable(format!("cannot read {}: {e}", path.display())))?;
    if log.len() as u64 > CCEL_MAX {
        return Err(unavailable(format!(
            "{} is larger than {CCEL_MAX} bytes",
            path.display()
        )));
    }
    // Unused CCEL space is 0xFF-filled (OVMF/TDVF): send the records and at most
    // CCEL_PAD bytes of that padding (a last record whose data ends in more than
    // CCEL_PAD 0xFF bytes would be cut, and the verifier would refuse the log as
    // truncated: visible, never silently wrong).
    if let Some(last) = log.iter().rposition(|&b| b != 0xFF) {
        log.truncate((last + 1 + CCEL_PAD).min(log.len()));
    } else {
        return Ok(None);
    }
    Ok(Some(log))
}

/// Errors of the unlock steps.
#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    /// A helper could not be started.
    #[error("cannot run {0}")]
    Spawn(&'static str, #[source] std::io::Error),
    /// A helper failed.
    #[error("{0} failed ({1})")]
    Failed(&'static str, std::process::ExitStatus),
    /// The key could not be passed on.
    #[error("cannot pass the key to cryptsetup")]
    Pipe(#[source] std::io::Error),
}

/// `cryptsetup open --key-file=- DEVICE NAME` with `key` on stdin.
pub fn cryptsetup_open(device: &Path, name: &str, key: &[u8]) -> Result<PathBuf, UnlockError> {
    let mut cmd = Command::new("cryptsetup");
    cmd.args(["open", "--type", "luks2", "--key-file=-"])
        .arg(device)
        .arg(name);
    cryptsetup_with_key(cmd, key, "cryptsetup open")?;
    Ok(Path::new("/dev/mapper").join(name))
}

/// `cryptsetup open --test-passphrase --key-file=- DEVICE` with `key` on stdin: checks
/// that `key` opens a LUKS2 keyslot of `device` without creating a dm-crypt mapping
/// (works on an image file, without device-mapper).
pub fn cryptsetup_test_passphrase(device: &Path, key: &[u8]) -> Result<(), UnlockError> {
    let mut cmd = Command::new("cryptsetup");
    cmd.args([
        "open",
        "--type",
        "luks2",
        "--test-passphrase",
        "--key-file=-",
    ])
    .arg(device);
    cryptsetup_with_key(cmd, key, "cryptsetup open --test-passphrase")
}

/// Runs `cmd` with `key` written to its stdin (a pipe: never on disk or in argv).
fn cryptsetup_with_key(
    mut cmd: Command,
    key: &[u8],
    what: &'static str,
) -> Result<(), UnlockError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| UnlockError::Spawn("cryptsetup", e))?;
    let written = match child.stdin.take() {
        // Dropping the pipe at the end of this arm sends EOF: the key is all of stdin.
        Some(mut stdin) => stdin.write_all(key).map_err(UnlockError::Pipe),
        None => Err(UnlockError::Pipe(std::io::Error::other("no stdin pipe"))),
    };
    let status = child
        .wait()
        .map_err(|e| UnlockError::Spawn("cryptsetup", e))?;
    written?;
    if !status.success() {
        return Err(UnlockError::Failed(what, status));
    }
    Ok(())
}

/// `mount DEVICE TARGET` (the file system type is detected by mount).
pub fn mount(device: &Path, target: &Path) -> Result<(), UnlockError> {
    std::fs::create_dir_all(target).map_err(|e| UnlockError::Spawn("mkdir", e))?;
    let status = Command::new("mount")
        .arg(device)
        .arg(target)
        .status()
        .map_err(|e| UnlockError::Spawn("mount", e))?;
    if !status.success() {
        return Err(UnlockError::Failed("mount", status));
    }
    Ok(())
}

/// Replaces this process with `switch_root NEWROOT INIT` (returns only on failure).
pub fn switch_root(new_root: &Path, init: &str) -> UnlockError {
    use std::os::unix::process::CommandExt;
    let e = Command::new("switch_root").arg(new_root).arg(init).exec();
    UnlockError::Spawn("switch_root", e)
}

/// `cvm.*` parameters from a kernel command line: `(key, value)` pairs.
pub fn cmdline_params(cmdline: &str) -> Vec<(String, String)> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("cvm."))
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cvm_parameters() {
        let p = cmdline_params("quiet cvm.kbs_resource=a/b/c root=/dev/vda cvm.kbs_port=5");
        assert_eq!(
            p,
            vec![
                ("kbs_resource".to_owned(), "a/b/c".to_owned()),
                ("kbs_port".to_owned(), "5".to_owned())
            ]
        );
    }

    #[test]
    fn the_ccel_is_read_without_most_of_its_padding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("CCEL");
        assert_eq!(read_ccel(&path).unwrap(), None, "no CCEL: no log");
        // A record ending in 0x00 and 0xFF bytes, then the 0xFF-filled area.
        let mut area = b"records\0\xff".to_vec();
        area.extend_from_slice(&[0xFF; 4096]);
        std::fs::write(&path, &area).unwrap();
        let log = read_ccel(&path).unwrap().unwrap();
        assert_eq!(&log[..9], b"records\0\xff");
        assert_eq!(
            log.len(),
            8 + CCEL_PAD,
            "kept up to the last non-0xFF byte + CCEL_PAD"
        );
        std::fs::write(&path, [0xFFu8; 64]).unwrap();
        assert_eq!(read_ccel(&path).unwrap(), None, "an empty area: no log");
        std::fs::write(&path, vec![1u8; CCEL_MAX as usize + 1]).unwrap();
        assert!(
            read_ccel(&path).is_err(),
            "oversized: an error, not a cut log"
        );
    }

    #[test]
    fn snp_evidence_falls_back_to_the_cvm_format_when_sev_cannot_represent_it() {
        // A version-2 report with a masked (zero) CHIP_ID: the sev crate cannot tell
        // its generation, so the object could not be encoded back to these bytes.
        let mut report = [0u8; crate::evidence::SNP_REPORT_LEN];
        report[0] = 2;
        let ev = Evidence::snp_trustee(&report, None).unwrap();
        assert!(ev.json().starts_with("{\"report\":"), "{}", ev.json());
    }

    /// The configfs-tsm exchange against a directory standing in for a report object.
    #[test]
    fn tsm_report_reads_the_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let e = dir.path();
        std::fs::write(e.join("generation"), "1\n").unwrap();
        std::fs::write(e.join("outblob"), [7u8; 1184]).unwrap();
        std::fs::write(e.join("auxblob"), [9u8; 64]).unwrap();
        std::fs::write(e.join("provider"), "sev_guest\n").unwrap();
        let r = tsm::report_in(e, &[1; 64]).unwrap();
        assert_eq!(std::fs::read(e.join("inblob")).unwrap(), [1u8; 64]);
        assert_eq!(r.provider, "sev_guest");
        assert_eq!(r.outblob.len(), 1184);
        assert_eq!(r.auxblob.unwrap().len(), 64);
        // A missing base directory fails without leaving anything behind.
        assert!(tsm::report(&e.join("absent"), &[0; 64]).is_err());
    }
}
