//! The emulated TDX module: a TD's build-time measurement (MRTD, from the measured-boot
//! launch plan), its run-time measurement registers, and TDREPORTs MACed with a
//! module-held key, as TDG.MR.REPORT produces them.

use hmac::{Hmac, Mac};
use measured_boot::tdx::{rtmr_extend, MemRegion, Mrtd, TdxLaunchPlan};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::EmulatedError;
use crate::tdx::report::{ReportMacStruct, TdInfo, TdReport, TeeTcbInfo};
use crate::tdx::TdAttributes;

/// Launch-time configuration of a TD chosen by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdConfig {
    /// TD_ATTRIBUTES (default: SEPT_VE_DISABLE only).
    pub attributes: u64,
    /// XFAM (default 0x61ae7: x87, SSE, AVX, AVX-512 state, PKRU, as QEMU's default TDs).
    pub xfam: u64,
    /// MRCONFIGID.
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
}

impl Default for TdConfig {
    fn default() -> Self {
        Self {
            attributes: TdAttributes::SEPT_VE_DISABLE,
            xfam: 0x0006_1ae7,
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
        }
    }
}

/// An emulated trust domain: its configuration and measurement registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedTd {
    config: TdConfig,
    mrtd: [u8; 48],
    rtmr: [[u8; 48]; 4],
}

impl EmulatedTd {
    /// Builds a TD from memory regions (KVM_TDX_INIT_MEM_REGION order), measuring MRTD
    /// exactly as the TDX module does.
    pub fn launch<'a>(config: TdConfig, regions: impl IntoIterator<Item = MemRegion<'a>>) -> Self {
        let mut mrtd = Mrtd::new();
        for r in regions {
            mrtd.add_region(&r);
        }
        Self {
            config,
            mrtd: mrtd.value(),
            rtmr: [[0; 48]; 4],
        }
    }

    /// Builds a TD from a measured-boot launch plan: MRTD from its regions, and RTMRs
    /// replayed from its event log (what the firmware extends during boot).
    pub fn from_plan(config: TdConfig, plan: &TdxLaunchPlan) -> Self {
        let mut td = Self::launch(config, plan.regions());
        td.rtmr = plan.rtmrs();
        td
    }

    /// A TD whose MRTD was measured elsewhere (for example by `cvm measure`).
    pub fn with_mrtd(config: TdConfig, mrtd: [u8; 48]) -> Self {
        Self {
            config,
            mrtd,
            rtmr: [[0; 48]; 4],
        }
    }

    /// TDG.MR.RTMR.EXTEND: `RTMR[index] = SHA-384(RTMR[index] || digest)`.
    pub fn extend_rtmr(&mut self, index: usize, digest: &[u8; 48]) -> Result<(), EmulatedError> {
        let r = self
            .rtmr
            .get_mut(index)
            .ok_or(EmulatedError::RtmrIndex(index))?;
        rtmr_extend(r, digest);
        Ok(())
    }

    /// Sets an RTMR to a given value (test equipment: reproduce a TD whose boot was
    /// measured elsewhere).
    pub fn set_rtmr(&mut self, index: usize, value: [u8; 48]) -> Result<(), EmulatedError> {
        *self
            .rtmr
            .get_mut(index)
            .ok_or(EmulatedError::RtmrIndex(index))? = value;
        Ok(())
    }

    /// MRTD.
    pub fn mrtd(&self) -> [u8; 48] {
        self.mrtd
    }

    /// RTMR0..3.
    pub fn rtmrs(&self) -> [[u8; 48]; 4] {
        self.rtmr
    }

    /// The launch configuration.
    pub fn config(&self) -> &TdConfig {
        &self.config
    }
}

/// The identity and SVNs of the emulated TDX module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModuleIdentity {
    /// TEE_TCB_SVN: [module ISVSVN, module major version, SEAM late microcode SVN, 0...].
    #[serde(with = "crate::tdx::wire::hex_array")]
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM.
    #[serde(with = "crate::tdx::wire::hex_array")]
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM (zero, as for Intel's module).
    #[serde(with = "crate::tdx::wire::hex_array")]
    pub mr_signer_seam: [u8; 48],
    /// SEAMATTRIBUTES.
    #[serde(with = "crate::tdx::wire::hex_array")]
    pub seam_attributes: [u8; 8],
}

/// The emulated TDX module: produces and checks TDREPORTs.
pub struct EmulatedTdxModule {
    pub(crate) identity: ModuleIdentity,
    pub(crate) cpu_svn: [u8; 16],
    pub(crate) mac_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for EmulatedTdxModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedTdxModule")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl EmulatedTdxModule {
    /// A module with a fresh report MAC key.
    pub fn new(identity: ModuleIdentity, cpu_svn: [u8; 16]) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut());
        Self {
            identity,
            cpu_svn,
            mac_key: key,
        }
    }

    /// The module identity.
    pub fn identity(&self) -> &ModuleIdentity {
        &self.identity
    }

    fn mac(&self, input: &[u8]) -> Result<[u8; 32], EmulatedError> {
        let mut m = HmacSha256::new_from_slice(self.mac_key.as_ref())
            .map_err(|_| EmulatedError::ReportMac)?;
        m.update(input);
        Ok(m.finalize().into_bytes().into())
    }

    /// TDG.MR.REPORT: a TDREPORT of `td` carrying `report_data`, MACed by the module.
    pub fn report(
        &self,
        td: &EmulatedTd,
        report_data: &[u8; 64],
    ) -> Result<TdReport, EmulatedError> {
        let tee_tcb_info = TeeTcbInfo {
            valid: [0xff, 0x01, 0, 0, 0, 0, 0, 0],
            tee_tcb_svn: self.identity.tee_tcb_svn,
            mr_seam: self.identity.mr_seam,
            mr_signer_seam: self.identity.mr_signer_seam,
            attributes: self.identity.seam_attributes,
            tee_tcb_svn2: self.identity.tee_tcb_svn,
            reserved: [0; 95],
        };
        let td_info = TdInfo {
            attributes: td.config.attributes.to_le_bytes(),
            xfam: td.config.xfam.to_le_bytes(),
            mr_td: td.mrtd,
            mr_config_id: td.config.mr_config_id,
            mr_owner: td.config.mr_owner,
            mr_owner_config: td.config.mr_owner_config,
            rtmr: td.rtmr,
            servtd_hash: [0; 48],
            reserved: [0; 64],
        };
        let mut report = TdReport {
            mac_struct: ReportMacStruct {
                report_type: [0x81, 0, 1, 0],
                reserved1: [0; 12],
                cpu_svn: self.cpu_svn,
                tee_tcb_info_hash: tee_tcb_info.hash(),
                tee_info_hash: td_info.hash(),
                report_data: *report_data,
                reserved2: [0; 32],
                mac: [0; 32],
            },
            tee_tcb_info,
            reserved: [0; 17],
            td_info,
        };
        report.mac_struct.mac = self.mac(&report.mac_input())?;
        Ok(report)
    }

    /// EVERIFYREPORT2's check: the MAC is this module's (compared in constant time) and
    /// the hashes in REPORTMACSTRUCT match the report.
    pub fn verify_report(&self, report: &TdReport) -> bool {
        let Ok(mut m) = HmacSha256::new_from_slice(self.mac_key.as_ref()) else {
            return false;
        };
        m.update(&report.mac_input());
        m.verify_slice(&report.mac_struct.mac).is_ok() && report.hashes_consistent()
    }
}
