//! TDREPORT (the 1024-byte TDREPORT_STRUCT a TD gets from TDG.MR.REPORT) and the SGX
//! report body the quoting enclave embeds in a quote.
//!
//! TDREPORT layout (Intel TDX Module ABI specification, TDREPORT_STRUCT):
//!
//! ```text
//!   0  REPORTMACSTRUCT (256): REPORTTYPE [4] | reserved [12] | CPUSVN [16] |
//!        TEE_TCB_INFO_HASH [48] | TEE_INFO_HASH [48] | REPORTDATA [64] | reserved [32] | MAC [32]
//! 256  TEE_TCB_INFO (239): VALID [8] | TEE_TCB_SVN [16] | MRSEAM [48] | MRSIGNERSEAM [48] |
//!        ATTRIBUTES [8] | TEE_TCB_SVN2 [16] | reserved [95]
//! 495  reserved (17)
//! 512  TDINFO (512): ATTRIBUTES [8] | XFAM [8] | MRTD [48] | MRCONFIGID [48] | MROWNER [48] |
//!        MROWNERCONFIG [48] | RTMR0..3 [4 x 48] | SERVTD_HASH [48] | reserved [64]
//! ```
//!
//! TEE_TCB_INFO_HASH is SHA-384 of TEE_TCB_INFO and TEE_INFO_HASH is SHA-384 of TDINFO;
//! the MAC (a CPU-held key on hardware) binds REPORTMACSTRUCT. Reserved bytes are kept
//! so that parsing and serializing round-trip exactly.

use sha2::{Digest, Sha384};

use super::error::QuoteError;
use super::wire::{Reader, Writer};

/// Length of TDREPORT_STRUCT.
pub const TDREPORT_LEN: usize = 1024;
/// Length of an SGX report body.
pub const SGX_REPORT_BODY_LEN: usize = 384;

/// The SGX REPORTBODY of the quoting enclave (384 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SgxReportBody {
    /// CPUSVN of the platform.
    pub cpu_svn: [u8; 16],
    /// MISCSELECT.
    pub misc_select: u32,
    /// Reserved.
    pub reserved1: [u8; 28],
    /// ATTRIBUTES (flags u64 | XFRM u64); flags bit 1 is DEBUG.
    pub attributes: [u8; 16],
    /// MRENCLAVE.
    pub mr_enclave: [u8; 32],
    /// Reserved.
    pub reserved2: [u8; 32],
    /// MRSIGNER.
    pub mr_signer: [u8; 32],
    /// Reserved.
    pub reserved3: [u8; 96],
    /// ISVPRODID.
    pub isv_prod_id: u16,
    /// ISVSVN.
    pub isv_svn: u16,
    /// Reserved.
    pub reserved4: [u8; 60],
    /// REPORTDATA; for the QE: SHA-256(attestation key || QE auth data) || 32 zero bytes.
    pub report_data: [u8; 64],
}

impl SgxReportBody {
    /// An all-zero report body.
    pub fn zeroed() -> Self {
        Self {
            cpu_svn: [0; 16],
            misc_select: 0,
            reserved1: [0; 28],
            attributes: [0; 16],
            mr_enclave: [0; 32],
            reserved2: [0; 32],
            mr_signer: [0; 32],
            reserved3: [0; 96],
            isv_prod_id: 0,
            isv_svn: 0,
            reserved4: [0; 60],
            report_data: [0; 64],
        }
    }

    /// Parses exactly 384 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, QuoteError> {
        let mut r = Reader::new(bytes);
        let body = Self::parse(&mut r)?;
        if !r.rest().is_empty() {
            return Err(QuoteError::LengthMismatch {
                what: "SGX report body",
                declared: bytes.len(),
                actual: SGX_REPORT_BODY_LEN,
            });
        }
        Ok(body)
    }

    pub(crate) fn parse(r: &mut Reader<'_>) -> Result<Self, QuoteError> {
        Ok(Self {
            cpu_svn: r.array("QE CPUSVN")?,
            misc_select: r.u32("QE MISCSELECT")?,
            reserved1: r.array("QE reserved")?,
            attributes: r.array("QE ATTRIBUTES")?,
            mr_enclave: r.array("QE MRENCLAVE")?,
            reserved2: r.array("QE reserved")?,
            mr_signer: r.array("QE MRSIGNER")?,
            reserved3: r.array("QE reserved")?,
            isv_prod_id: r.u16("QE ISVPRODID")?,
            isv_svn: r.u16("QE ISVSVN")?,
            reserved4: r.array("QE reserved")?,
            report_data: r.array("QE REPORTDATA")?,
        })
    }

    pub(crate) fn write(&self, w: &mut Vec<u8>) {
        w.put(&self.cpu_svn);
        w.put_u32(self.misc_select);
        w.put(&self.reserved1);
        w.put(&self.attributes);
        w.put(&self.mr_enclave);
        w.put(&self.reserved2);
        w.put(&self.mr_signer);
        w.put(&self.reserved3);
        w.put_u16(self.isv_prod_id);
        w.put_u16(self.isv_svn);
        w.put(&self.reserved4);
        w.put(&self.report_data);
    }

    /// The 384 bytes of this report body (what the PCK key signs).
    pub fn to_bytes(&self) -> [u8; SGX_REPORT_BODY_LEN] {
        let mut v = Vec::with_capacity(SGX_REPORT_BODY_LEN);
        self.write(&mut v);
        let mut out = [0u8; SGX_REPORT_BODY_LEN];
        // `write` emits exactly SGX_REPORT_BODY_LEN bytes (checked by a unit test).
        for (o, b) in out.iter_mut().zip(v) {
            *o = b;
        }
        out
    }
}

/// REPORTMACSTRUCT: the MAC-protected header of a TDREPORT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportMacStruct {
    /// REPORTTYPE: type (0x81 = TDX), subtype, version (0 = TDX 1.0, 1 = TDX 1.5), reserved.
    pub report_type: [u8; 4],
    /// Reserved.
    pub reserved1: [u8; 12],
    /// CPUSVN.
    pub cpu_svn: [u8; 16],
    /// SHA-384 of TEE_TCB_INFO.
    pub tee_tcb_info_hash: [u8; 48],
    /// SHA-384 of TDINFO.
    pub tee_info_hash: [u8; 48],
    /// REPORTDATA chosen by the TD.
    pub report_data: [u8; 64],
    /// Reserved.
    pub reserved2: [u8; 32],
    /// MAC over the first 224 bytes of this structure.
    pub mac: [u8; 32],
}

/// Offset of the MAC in REPORTMACSTRUCT: everything before it is MACed.
pub const REPORT_MAC_OFFSET: usize = 224;

/// TEE_TCB_INFO: the TDX module's identity and SVNs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeeTcbInfo {
    /// VALID: which fields are valid.
    pub valid: [u8; 8],
    /// TEE_TCB_SVN.
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM.
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM.
    pub mr_signer_seam: [u8; 48],
    /// SEAM ATTRIBUTES.
    pub attributes: [u8; 8],
    /// TEE_TCB_SVN2 (TDX 1.5).
    pub tee_tcb_svn2: [u8; 16],
    /// Reserved.
    pub reserved: [u8; 95],
}

/// TDINFO: the TD's measurements and attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdInfo {
    /// TD ATTRIBUTES.
    pub attributes: [u8; 8],
    /// XFAM.
    pub xfam: [u8; 8],
    /// MRTD.
    pub mr_td: [u8; 48],
    /// MRCONFIGID.
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// RTMR0..3.
    pub rtmr: [[u8; 48]; 4],
    /// SERVTD_HASH (TDX 1.5; MRSERVICETD in the quote).
    pub servtd_hash: [u8; 48],
    /// Reserved.
    pub reserved: [u8; 64],
}

/// TDREPORT_STRUCT (1024 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdReport {
    /// REPORTMACSTRUCT.
    pub mac_struct: ReportMacStruct,
    /// TEE_TCB_INFO.
    pub tee_tcb_info: TeeTcbInfo,
    /// The 17 reserved bytes between TEE_TCB_INFO and TDINFO.
    pub reserved: [u8; 17],
    /// TDINFO.
    pub td_info: TdInfo,
}

impl TeeTcbInfo {
    /// The 239 bytes of TEE_TCB_INFO.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(239);
        w.put(&self.valid);
        w.put(&self.tee_tcb_svn);
        w.put(&self.mr_seam);
        w.put(&self.mr_signer_seam);
        w.put(&self.attributes);
        w.put(&self.tee_tcb_svn2);
        w.put(&self.reserved);
        w
    }

    /// SHA-384 of TEE_TCB_INFO, as carried in REPORTMACSTRUCT.
    pub fn hash(&self) -> [u8; 48] {
        Sha384::digest(self.to_bytes()).into()
    }
}

impl TdInfo {
    /// The 512 bytes of TDINFO.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(512);
        w.put(&self.attributes);
        w.put(&self.xfam);
        w.put(&self.mr_td);
        w.put(&self.mr_config_id);
        w.put(&self.mr_owner);
        w.put(&self.mr_owner_config);
        for r in &self.rtmr {
            w.put(r);
        }
        w.put(&self.servtd_hash);
        w.put(&self.reserved);
        w
    }

    /// SHA-384 of TDINFO, as carried in REPORTMACSTRUCT.
    pub fn hash(&self) -> [u8; 48] {
        Sha384::digest(self.to_bytes()).into()
    }
}

impl ReportMacStruct {
    /// The 256 bytes of REPORTMACSTRUCT.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(256);
        w.put(&self.report_type);
        w.put(&self.reserved1);
        w.put(&self.cpu_svn);
        w.put(&self.tee_tcb_info_hash);
        w.put(&self.tee_info_hash);
        w.put(&self.report_data);
        w.put(&self.reserved2);
        w.put(&self.mac);
        w
    }
}

impl TdReport {
    /// Parses exactly 1024 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, QuoteError> {
        if bytes.len() != TDREPORT_LEN {
            return Err(QuoteError::LengthMismatch {
                what: "TDREPORT",
                declared: bytes.len(),
                actual: TDREPORT_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        let mac_struct = ReportMacStruct {
            report_type: r.array("REPORTTYPE")?,
            reserved1: r.array("REPORTMACSTRUCT reserved")?,
            cpu_svn: r.array("CPUSVN")?,
            tee_tcb_info_hash: r.array("TEE_TCB_INFO_HASH")?,
            tee_info_hash: r.array("TEE_INFO_HASH")?,
            report_data: r.array("REPORTDATA")?,
            reserved2: r.array("REPORTMACSTRUCT reserved")?,
            mac: r.array("MAC")?,
        };
        let tee_tcb_info = TeeTcbInfo {
            valid: r.array("TEE_TCB_INFO VALID")?,
            tee_tcb_svn: r.array("TEE_TCB_SVN")?,
            mr_seam: r.array("MRSEAM")?,
            mr_signer_seam: r.array("MRSIGNERSEAM")?,
            attributes: r.array("SEAM ATTRIBUTES")?,
            tee_tcb_svn2: r.array("TEE_TCB_SVN2")?,
            reserved: r.array("TEE_TCB_INFO reserved")?,
        };
        let reserved = r.array("TDREPORT reserved")?;
        let td_info = TdInfo {
            attributes: r.array("TD ATTRIBUTES")?,
            xfam: r.array("XFAM")?,
            mr_td: r.array("MRTD")?,
            mr_config_id: r.array("MRCONFIGID")?,
            mr_owner: r.array("MROWNER")?,
            mr_owner_config: r.array("MROWNERCONFIG")?,
            rtmr: [
                r.array("RTMR0")?,
                r.array("RTMR1")?,
                r.array("RTMR2")?,
                r.array("RTMR3")?,
            ],
            servtd_hash: r.array("SERVTD_HASH")?,
            reserved: r.array("TDINFO reserved")?,
        };
        Ok(Self {
            mac_struct,
            tee_tcb_info,
            reserved,
            td_info,
        })
    }

    /// The 1024 bytes of this report.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = self.mac_struct.to_bytes();
        w.extend_from_slice(&self.tee_tcb_info.to_bytes());
        w.put(&self.reserved);
        w.extend_from_slice(&self.td_info.to_bytes());
        w
    }

    /// The MACed part of REPORTMACSTRUCT (everything before the MAC).
    pub fn mac_input(&self) -> Vec<u8> {
        let mut b = self.mac_struct.to_bytes();
        b.truncate(REPORT_MAC_OFFSET);
        b
    }

    /// Whether the two hashes in REPORTMACSTRUCT match TEE_TCB_INFO and TDINFO.
    pub fn hashes_consistent(&self) -> bool {
        self.mac_struct.tee_tcb_info_hash == self.tee_tcb_info.hash()
            && self.mac_struct.tee_info_hash == self.td_info.hash()
    }

    /// Whether this is a TDX 1.5 report (REPORTTYPE version 1).
    pub fn is_td15(&self) -> bool {
        self.mac_struct.report_type[2] >= 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgx_report_body_is_384_bytes() {
        let mut b = SgxReportBody::zeroed();
        b.isv_svn = 7;
        b.report_data[63] = 9;
        let mut v = Vec::new();
        b.write(&mut v);
        assert_eq!(v.len(), SGX_REPORT_BODY_LEN);
        assert_eq!(SgxReportBody::from_bytes(&b.to_bytes()), Ok(b));
    }

    #[test]
    fn tdreport_layout_sizes() {
        let bytes: Vec<u8> = (0..TDREPORT_LEN).map(|i| (i * 7 % 251) as u8).collect();
        let r = TdReport::from_bytes(&bytes).expect("1024 bytes parse");
        assert_eq!(r.mac_struct.to_bytes().len(), 256);
        assert_eq!(r.tee_tcb_info.to_bytes().len(), 239);
        assert_eq!(r.td_info.to_bytes().len(), 512);
        assert_eq!(r.to_bytes(), bytes);
        // TDINFO starts at 512: its first byte is the first byte of ATTRIBUTES.
        assert_eq!(r.td_info.attributes[0], bytes[512]);
        assert_eq!(r.td_info.mr_td[0], bytes[512 + 16]);
        assert!(TdReport::from_bytes(&bytes[..1023]).is_err());
    }
}
