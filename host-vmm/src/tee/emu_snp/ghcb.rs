//! The GHCB protocol as the hypervisor sees it (AMD GHCB specification 2.x): the MSR
//! protocol (§2.3.1) and the GHCB page layout (§2.3.2, Table 2: save-area offsets, the
//! valid bitmap, `sw_exit_code`, `sw_exit_info_1/2`, `sw_scratch`, the shared buffer)
//! with the exit codes the emulated PSP serves.

/// The GHCB MSR.
pub const MSR_GHCB: u32 = 0xC001_0130;
/// SEV_STATUS.
pub const MSR_SEV_STATUS: u32 = 0xC001_0131;
/// SEV_STATUS bits: SEV, SEV-ES, SNP enabled.
pub const SEV_STATUS_SNP: u64 = 0b111;

/// Lowest and highest GHCB protocol versions served.
pub const GHCB_VERSION_MIN: u64 = 2;
/// See [`GHCB_VERSION_MIN`].
pub const GHCB_VERSION_MAX: u64 = 2;

/// MSR protocol requests / responses (GHCBInfo, bits 11:0).
pub mod msr {
    #![allow(missing_docs)]
    pub const SEV_INFO_RESP: u64 = 0x001;
    pub const SEV_INFO_REQ: u64 = 0x002;
    pub const CPUID_REQ: u64 = 0x004;
    pub const CPUID_RESP: u64 = 0x005;
    pub const REG_GHCB_REQ: u64 = 0x012;
    pub const REG_GHCB_RESP: u64 = 0x013;
    pub const PSC_REQ: u64 = 0x014;
    pub const PSC_RESP: u64 = 0x015;
    pub const HV_FEATURES_REQ: u64 = 0x080;
    pub const HV_FEATURES_RESP: u64 = 0x081;
    pub const TERM_REQ: u64 = 0x100;
}

/// SVM exit codes carried in `sw_exit_code`.
pub mod exit {
    #![allow(missing_docs)]
    pub const IOIO: u64 = 0x7B;
    pub const SNP_PSC: u64 = 0x8000_0010;
    pub const SNP_GUEST_REQUEST: u64 = 0x8000_0011;
    pub const SNP_EXT_GUEST_REQUEST: u64 = 0x8000_0012;
    pub const HV_FEATURES: u64 = 0x8000_FFFD;
}

/// Hypervisor features announced (GHCB spec §2.3.1 "Hypervisor Feature Support"):
/// bit 0 SEV-SNP.
pub const HV_FEATURES: u64 = 1;

/// GHCB page offsets (save area and control fields).
pub mod off {
    #![allow(missing_docs)]
    pub const RAX: usize = 0x1F8;
    pub const RCX: usize = 0x308;
    pub const RDX: usize = 0x310;
    pub const RBX: usize = 0x318;
    pub const SW_EXIT_CODE: usize = 0x390;
    pub const SW_EXIT_INFO_1: usize = 0x398;
    pub const SW_EXIT_INFO_2: usize = 0x3A0;
    pub const SW_SCRATCH: usize = 0x3A8;
    pub const VALID_BITMAP: usize = 0x3F0;
    pub const SHARED_BUFFER: usize = 0x800;
    pub const SHARED_BUFFER_END: usize = 0xFF0;
    pub const PROTOCOL_VERSION: usize = 0xFFA;
    pub const USAGE: usize = 0xFFC;
}

/// `sw_exit_info_2` reason for malformed input, returned with `sw_exit_info_1` = 2
/// (GHCB_HV_RESP_MALFORMED_INPUT) as KVM's `svm_vmgexit_bad_input` does (Linux
/// arch/x86/include/asm/sev-common.h: GHCB_ERR_INVALID_INPUT = 5).
pub const GHCB_ERR_INVALID_INPUT: u64 = 5;
/// `sw_exit_info_2` reason: the scratch area is not inside the GHCB's shared buffer
/// (GHCB_ERR_INVALID_SCRATCH_AREA = 3).
pub const GHCB_ERR_INVALID_SCRATCH_AREA: u64 = 3;
/// Page State Change status (`sw_exit_info_2`, `sw_exit_info_1` = 0): invalid header
/// (KVM's VMGEXIT_PSC_ERROR_INVALID_HDR).
pub const PSC_ERROR_INVALID_HDR: u64 = (1 << 32) | 1;
/// Page State Change status: invalid entry (VMGEXIT_PSC_ERROR_INVALID_ENTRY).
pub const PSC_ERROR_INVALID_ENTRY: u64 = (1 << 32) | 2;
/// Guest request: the certificate buffer is too small (upper 32 bits of
/// `sw_exit_info_2`; RBX gets the number of pages needed).
pub const GUEST_VMM_ERR_INVALID_LEN: u64 = 1;

/// A decoded MSR-protocol request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrRequest {
    /// SEV information.
    SevInfo,
    /// CPUID register `reg` (0 EAX .. 3 EDX) of `leaf`.
    Cpuid {
        /// Leaf.
        leaf: u32,
        /// Register.
        reg: u8,
    },
    /// Register the GHCB at this GFN.
    RegisterGhcb(u64),
    /// Page-state change of one 4 KiB page.
    PageState {
        /// GPA of the page.
        gpa: u64,
        /// To private (else shared).
        private: bool,
    },
    /// Hypervisor feature support.
    HvFeatures,
    /// The guest asks to be terminated.
    Terminate {
        /// Reason code set.
        set: u8,
        /// Reason code.
        code: u8,
    },
    /// Something else.
    Unknown(u64),
}

impl MsrRequest {
    /// Decodes the GHCB MSR value `v` (its low 12 bits are not zero).
    pub fn decode(v: u64) -> Self {
        match v & 0xFFF {
            msr::SEV_INFO_REQ => MsrRequest::SevInfo,
            msr::CPUID_REQ => MsrRequest::Cpuid {
                leaf: (v >> 32) as u32,
                reg: ((v >> 30) & 3) as u8,
            },
            msr::REG_GHCB_REQ => MsrRequest::RegisterGhcb(v >> 12),
            msr::PSC_REQ => match (v >> 52) & 0xF {
                op @ (1 | 2) => MsrRequest::PageState {
                    gpa: v & 0x000F_FFFF_FFFF_F000,
                    private: op == 1,
                },
                _ => MsrRequest::Unknown(v),
            },
            msr::HV_FEATURES_REQ => MsrRequest::HvFeatures,
            msr::TERM_REQ => MsrRequest::Terminate {
                set: ((v >> 12) & 0xF) as u8,
                code: ((v >> 16) & 0xFF) as u8,
            },
            _ => MsrRequest::Unknown(v),
        }
    }
}

/// The SEV information response for C-bit position `cbit`.
pub fn sev_info(cbit: u8) -> u64 {
    (GHCB_VERSION_MAX << 48)
        | (GHCB_VERSION_MIN << 32)
        | (u64::from(cbit) << 24)
        | msr::SEV_INFO_RESP
}

/// A page-state-change response: `error` 0 is success.
pub fn psc_response(error: u32) -> u64 {
    (u64::from(error) << 32) | msr::PSC_RESP
}

/// Reads a u64 at `off` of a GHCB page.
pub fn get(page: &[u8; 4096], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&page[off..off + 8]);
    u64::from_le_bytes(b)
}

/// Writes a u64 at `off` of a GHCB page and marks it valid.
pub fn set(page: &mut [u8; 4096], off: usize, v: u64) {
    page[off..off + 8].copy_from_slice(&v.to_le_bytes());
    let q = off / 8;
    page[off::VALID_BITMAP + q / 8] |= 1 << (q % 8);
}

/// Whether the guest marked the field at `off` valid.
pub fn valid(page: &[u8; 4096], off: usize) -> bool {
    let q = off / 8;
    page[off::VALID_BITMAP + q / 8] & (1 << (q % 8)) != 0
}

/// One decoded IOIO exit (`sw_exit_info_1`, AMD APM vol. 2 §15.10.2 "IN/OUT
/// Intercept Information").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ioio {
    /// The port.
    pub port: u16,
    /// Operand size in bytes (1, 2 or 4).
    pub size: u8,
    /// IN (else OUT).
    pub input: bool,
}

impl Ioio {
    /// Decodes `sw_exit_info_1`; string and REP forms are refused (the GHCB page
    /// protocol passes them through the shared buffer; nobody here uses them).
    pub fn decode(info1: u64) -> Option<Self> {
        if info1 & (1 << 2 | 1 << 3) != 0 {
            return None;
        }
        let size = match (info1 >> 4) & 7 {
            1 => 1,
            2 => 2,
            4 => 4,
            _ => return None,
        };
        Some(Ioio {
            port: (info1 >> 16) as u16,
            size,
            input: info1 & 1 != 0,
        })
    }
}

/// One Page State Change entry (GHCB spec §4.1.6, "SNP Page State Change").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PscEntry {
    /// GPA of the page.
    pub gpa: u64,
    /// Operation: 1 private, 2 shared, 3 PSMASH, 4 UNSMASH.
    pub op: u8,
    /// A 2 MiB page.
    pub huge: bool,
    /// Bits 11:0: progress within a 2 MiB entry (4 KiB pages done).
    pub cur_page: u16,
}

impl PscEntry {
    /// Decodes an entry.
    pub fn decode(e: u64) -> Self {
        PscEntry {
            cur_page: (e & 0xFFF) as u16,
            gpa: ((e >> 12) & 0xFF_FFFF_FFFF) << 12,
            op: ((e >> 52) & 0xF) as u8,
            huge: e & (1 << 56) != 0,
        }
    }

    /// Encodes it.
    pub fn encode(&self) -> u64 {
        u64::from(self.cur_page & 0xFFF)
            | ((self.gpa >> 12) & 0xFF_FFFF_FFFF) << 12
            | u64::from(self.op & 0xF) << 52
            | u64::from(self.huge) << 56
    }
}

/// PSC operations.
pub mod psc_op {
    #![allow(missing_docs)]
    pub const PRIVATE: u8 = 1;
    pub const SHARED: u8 = 2;
    pub const PSMASH: u8 = 3;
    pub const UNSMASH: u8 = 4;
}

/// The most entries a PSC buffer in the GHCB shared buffer holds.
pub const PSC_MAX_ENTRIES: usize = 253;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_requests_decode_as_the_spec_lays_them_out() {
        assert_eq!(MsrRequest::decode(0x002), MsrRequest::SevInfo);
        assert_eq!(
            MsrRequest::decode(0x8000_001F_0000_0000 | (1 << 30) | 0x004),
            MsrRequest::Cpuid {
                leaf: 0x8000_001F,
                reg: 1
            }
        );
        assert_eq!(
            MsrRequest::decode(0x9000 | 0x012),
            MsrRequest::RegisterGhcb(9)
        );
        assert_eq!(
            MsrRequest::decode((2 << 52) | 0x1234_5000 | 0x014),
            MsrRequest::PageState {
                gpa: 0x1234_5000,
                private: false
            }
        );
        assert_eq!(
            MsrRequest::decode((1 << 52) | 0x5000 | 0x014),
            MsrRequest::PageState {
                gpa: 0x5000,
                private: true
            }
        );
        assert_eq!(
            MsrRequest::decode((3 << 52) | 0x014),
            MsrRequest::Unknown((3 << 52) | 0x014)
        );
        assert_eq!(
            MsrRequest::decode((0x12 << 16) | (1 << 12) | 0x100),
            MsrRequest::Terminate { set: 1, code: 0x12 }
        );
        assert_eq!(
            sev_info(47),
            (2 << 48) | (2 << 32) | (47 << 24) | 1,
            "max/min version, C-bit, response code"
        );
        assert_eq!(psc_response(0), 0x015);
    }

    #[test]
    fn ioio_and_psc_entries_round_trip() {
        // OUT of one byte to COM1: port in 31:16, SZ8 bit 4, type OUT.
        let info1 = (0x3F8 << 16) | (1 << 4) | (1 << 9);
        assert_eq!(
            Ioio::decode(info1),
            Some(Ioio {
                port: 0x3F8,
                size: 1,
                input: false
            })
        );
        assert_eq!(Ioio::decode(info1 | 4), None, "string I/O refused");
        let e = PscEntry {
            gpa: 0x1_2340_0000,
            op: psc_op::SHARED,
            huge: true,
            cur_page: 3,
        };
        assert_eq!(PscEntry::decode(e.encode()), e);
        assert_eq!(e.encode() >> 56 & 1, 1);
        let mut page = [0u8; 4096];
        set(&mut page, off::RAX, 7);
        assert!(valid(&page, off::RAX));
        assert!(!valid(&page, off::RBX));
        assert_eq!(page[off::VALID_BITMAP + 7], 0x80, "RAX is qword 63");
    }
}
