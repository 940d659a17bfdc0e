//! Evidence from the VMM's vsock evidence service (`cvm.tsm=vsock`): the transport a
//! stock Linux guest uses under cvm's **emulated** TEEs, where the kernel does not see
//! SNP/TDX and has no configfs-tsm or `/dev/sev-guest`.
//!
//! The VMM (`host_vmm::tee::evidence_vsock`) answers on host CID 2, port
//! [`EVIDENCE_PORT`], with the emulated TEEs' evidence command protocol ([`super::emulated_unix`]):
//! INFO names the TEE; then SNP report + certificate table, or TDX quote + collateral
//! (+ the CC event log from ACPI, as the configfs-tsm path sends it), so the evidence
//! the KBS receives has the shapes configfs-tsm's would.
//!
//! # Selection: only by the measured command line
//!
//! `cvm-agent` uses this provider only when the kernel command line (which the
//! firmware measures: the SNP hashes table, the TDX RTMR) carries `cvm.tsm=vsock`; there
//! is no command-line flag of the agent for it. A policy for real hardware registers a
//! measurement whose command line does not say that, so evidence taken this way can
//! never satisfy it; and the evidence is signed by the emulated PSP/QE, which a verifier
//! trusts only with its emulated trust anchor (`--emulated-trust`), marking the result
//! `insecure-emulated`. Any other `cvm.tsm=` value, or two that disagree, is an error
//! (fail closed, never a silent fallback). Under `--tee none` or on hardware the VMM
//! refuses the port, and the agent fails.
//!
//! **Insecure-emulated test equipment.**

use std::fs::File;
use std::path::Path;

use super::emulated_unix::{call, command, evidence_over, parse_info, Chain};
use super::{read_ccel, CCEL_PATH};
use crate::evidence::{Evidence, EvidenceError, EvidenceProvider, Tee};
use crate::linux::vsock::{connect_raw_privileged, set_timeouts};

/// The host CID.
pub const HOST_CID: u32 = 2;
/// The VMM's evidence service port.
pub const EVIDENCE_PORT: u32 = 50001;
/// How long one exchange may wait for the VMM.
const TIMEOUT_SECS: libc::time_t = 30;

/// What the command line selects as the evidence transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsmSelection {
    /// No `cvm.tsm=`: the kernel's own interfaces (configfs-tsm, `/dev/sev-guest`).
    Kernel,
    /// `cvm.tsm=vsock`: the VMM's vsock evidence service (emulated TEEs only).
    Vsock,
}

/// Why the command line's `cvm.tsm=` is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    /// An unknown value.
    #[error("unknown cvm.tsm={0} on the kernel command line (only cvm.tsm=vsock is known)")]
    Unknown(String),
}

/// The transport the kernel command line `cmdline` selects.
pub fn selection(cmdline: &str) -> Result<TsmSelection, SelectionError> {
    let mut out = TsmSelection::Kernel;
    for (k, v) in super::cmdline_params(cmdline) {
        if k != "tsm" {
            continue;
        }
        match v.as_str() {
            "vsock" => out = TsmSelection::Vsock,
            _ => return Err(SelectionError::Unknown(v)),
        }
    }
    // A bare `cvm.tsm` (no value) is not a selection either.
    if cmdline
        .split_ascii_whitespace()
        .any(|w| w == "cvm.tsm" || w == "cvm.tsm=")
    {
        return Err(SelectionError::Unknown(String::new()));
    }
    Ok(out)
}

/// Evidence from the VMM's vsock evidence service.
#[derive(Debug)]
pub struct VsockTsmEvidence {
    cid: u32,
    port: u32,
    tee: Tee,
    tdx_collateral: Option<Vec<u8>>,
}

fn unavailable(e: impl std::fmt::Display) -> EvidenceError {
    EvidenceError::Unavailable(e.to_string())
}

impl VsockTsmEvidence {
    /// Connects to the service at host CID 2 and asks INFO for the TEE.
    pub fn connect(tdx_collateral: Option<Vec<u8>>) -> Result<Self, EvidenceError> {
        Self::connect_to(HOST_CID, EVIDENCE_PORT, tdx_collateral)
    }

    /// As [`Self::connect`], at `cid:port`.
    pub fn connect_to(
        cid: u32,
        port: u32,
        tdx_collateral: Option<Vec<u8>>,
    ) -> Result<Self, EvidenceError> {
        let mut s = Self::stream(cid, port)?;
        let tee = call(&mut s, command::INFO, &[])
            .and_then(|i| parse_info(&i))
            .map_err(|e| unavailable(Chain(&e)))?;
        Ok(Self {
            cid,
            port,
            tee,
            tdx_collateral,
        })
    }

    fn stream(cid: u32, port: u32) -> Result<File, EvidenceError> {
        // From a privileged source port: the VMM answers root only (as configfs-tsm).
        let s = connect_raw_privileged(cid, port).map_err(|e| {
            unavailable(format!(
                "the VMM's evidence service (vsock {cid}:{port}) is unavailable: {e} \
                 (it exists only under cvm's emulated TEEs)"
            ))
        })?;
        set_timeouts(&s, TIMEOUT_SECS).map_err(unavailable)?;
        Ok(s)
    }
}

impl EvidenceProvider for VsockTsmEvidence {
    fn tee(&self) -> Tee {
        self.tee
    }

    fn evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let ccel = match self.tee {
            Tee::Tdx => read_ccel(Path::new(CCEL_PATH))?,
            Tee::Snp => None,
        };
        let mut s = Self::stream(self.cid, self.port)?;
        evidence_over(
            &mut s,
            self.tee,
            self.tdx_collateral.as_deref(),
            ccel.as_deref(),
            report_data,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_command_line_selects_vsock_and_unknown_values_fail_closed() {
        assert_eq!(
            selection("console=ttyS0 quiet").unwrap(),
            TsmSelection::Kernel
        );
        assert_eq!(
            selection("quiet cvm.tsm=vsock cvm.kbs_resource=a/b/c").unwrap(),
            TsmSelection::Vsock
        );
        for bad in [
            "cvm.tsm=configfs",
            "cvm.tsm=vsock cvm.tsm=mailbox",
            "cvm.tsm",
            "cvm.tsm=",
            "cvm.tsm=VSOCK",
        ] {
            assert!(selection(bad).is_err(), "{bad}");
        }
        // Another parameter that merely contains the word is no selection.
        assert_eq!(
            selection("xcvm.tsm=vsock cvm.tsmx=vsock").unwrap(),
            TsmSelection::Kernel
        );
    }

    #[test]
    fn without_the_vmm_service_the_agent_gets_no_evidence() {
        // No VMM here (or a VMM that refuses the port): connect fails, nothing is sent.
        let e = VsockTsmEvidence::connect_to(HOST_CID, EVIDENCE_PORT, None).unwrap_err();
        assert!(e.to_string().contains("evidence service"), "{e}");
    }
}
