//! `/dev/sev-guest` (`include/uapi/linux/sev-guest.h`): `SNP_GET_EXT_REPORT`, the
//! attestation report plus the host's certificate table.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::evidence::SNP_REPORT_LEN;

/// `struct snp_report_req`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SnpReportReq {
    /// REPORT_DATA.
    pub user_data: [u8; 64],
    /// VMPL of the report.
    pub vmpl: u32,
    /// Reserved, zero.
    pub rsvd: [u8; 28],
}

/// `struct snp_ext_report_req`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SnpExtReportReq {
    /// The report request.
    pub data: SnpReportReq,
    /// Address of a page-aligned buffer for the certificate table.
    pub certs_address: u64,
    /// Its length (a multiple of 4096); updated by the kernel when too small.
    pub certs_len: u32,
}

/// `struct snp_report_resp`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SnpReportResp {
    /// MSG_REPORT_RSP: status (u32), report_size (u32), 24 reserved, report.
    pub data: [u8; 4000],
}

/// `struct snp_guest_request_ioctl` (the `exitinfo2` union as one u64).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SnpGuestRequestIoctl {
    /// Message version (1).
    pub msg_version: u8,
    /// Address of the request.
    pub req_data: u64,
    /// Address of the response.
    pub resp_data: u64,
    /// Firmware error (low 32 bits) and VMM error (high 32 bits).
    pub exitinfo2: u64,
}

const _: () = assert!(std::mem::size_of::<SnpReportReq>() == 96);
const _: () = assert!(std::mem::size_of::<SnpExtReportReq>() == 112);
const _: () = assert!(std::mem::size_of::<SnpReportResp>() == 4000);
const _: () = assert!(std::mem::size_of::<SnpGuestRequestIoctl>() == 32);
const _: () = assert!(std::mem::offset_of!(SnpGuestRequestIoctl, req_data) == 8);
const _: () = assert!(std::mem::offset_of!(SnpExtReportReq, certs_address) == 96);

const fn iowr(ty: u8, nr: u8, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

/// `SNP_GET_REPORT`.
pub const SNP_GET_REPORT: u64 = iowr(b'S', 0, std::mem::size_of::<SnpGuestRequestIoctl>());
/// `SNP_GET_EXT_REPORT`.
pub const SNP_GET_EXT_REPORT: u64 = iowr(b'S', 2, std::mem::size_of::<SnpGuestRequestIoctl>());

/// VMM error: the certificate buffer is too small (`SNP_GUEST_VMM_ERR_INVALID_LEN`).
const VMM_ERR_INVALID_LEN: u64 = 1;

/// Errors of the SEV guest device.
#[derive(Debug, thiserror::Error)]
pub enum SevGuestError {
    /// The device could not be opened.
    #[error("cannot open /dev/sev-guest")]
    Open(#[source] std::io::Error),
    /// The ioctl failed.
    #[error("SNP_GET_EXT_REPORT failed (firmware error {fw:#x}, VMM error {vmm:#x})")]
    Ioctl {
        /// The cause.
        #[source]
        source: std::io::Error,
        /// Firmware error.
        fw: u32,
        /// VMM error.
        vmm: u32,
    },
    /// The response is malformed.
    #[error("the SNP report response is malformed: {0}")]
    Malformed(&'static str),
}

/// A page-aligned, zeroed buffer.
struct Pages(Vec<u8>, usize);

impl Pages {
    fn new(len: usize) -> Self {
        let v = vec![0u8; len + 4096];
        let off = v.as_ptr().align_offset(4096);
        Self(v, off)
    }
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.0[self.1..].as_mut_ptr()
    }
    fn slice(&self, len: usize) -> &[u8] {
        &self.0[self.1..self.1 + len]
    }
}

/// The report (1184 bytes) and certificate table for `report_data` at VMPL 0.
pub fn ext_report(report_data: &[u8; 64]) -> Result<(Vec<u8>, Vec<u8>), SevGuestError> {
    let dev = File::options()
        .read(true)
        .write(true)
        .open("/dev/sev-guest")
        .map_err(SevGuestError::Open)?;
    let mut certs_len: u32 = 4 * 4096;
    for _ in 0..2 {
        let mut certs = Pages::new(certs_len as usize);
        let mut req = SnpExtReportReq {
            data: SnpReportReq {
                user_data: *report_data,
                vmpl: 0,
                rsvd: [0; 28],
            },
            certs_address: certs.as_mut_ptr() as u64,
            certs_len,
        };
        let mut resp = SnpReportResp { data: [0; 4000] };
        let mut ioc = SnpGuestRequestIoctl {
            msg_version: 1,
            req_data: &mut req as *mut _ as u64,
            resp_data: &mut resp as *mut _ as u64,
            exitinfo2: 0,
        };
        // SAFETY: SNP_GET_EXT_REPORT reads `req` and writes `resp`, the certificate
        // buffer (certs_len bytes, page-aligned, alive) and `ioc`, all live for the call.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), SNP_GET_EXT_REPORT as _, &mut ioc) };
        if rc != 0 {
            let source = std::io::Error::last_os_error();
            let vmm = ioc.exitinfo2 >> 32;
            if vmm == VMM_ERR_INVALID_LEN && req.certs_len > certs_len {
                certs_len = req.certs_len.next_multiple_of(4096);
                continue;
            }
            return Err(SevGuestError::Ioctl {
                source,
                fw: ioc.exitinfo2 as u32,
                vmm: vmm as u32,
            });
        }
        return parse_response(&resp.data).map(|r| (r, certs.slice(certs_len as usize).to_vec()));
    }
    Err(SevGuestError::Malformed(
        "the certificate table keeps growing",
    ))
}

/// The report from a MSG_REPORT_RSP.
pub fn parse_response(data: &[u8]) -> Result<Vec<u8>, SevGuestError> {
    let status = u32::from_le_bytes(data[0..4].try_into().unwrap_or_default());
    let size = u32::from_le_bytes(data[4..8].try_into().unwrap_or_default()) as usize;
    if status != 0 {
        return Err(SevGuestError::Malformed("the firmware reports a failure"));
    }
    if size != SNP_REPORT_LEN || 0x20 + size > data.len() {
        return Err(SevGuestError::Malformed("unexpected report size"));
    }
    Ok(data[0x20..0x20 + size].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ioctl numbers of the kernel headers (`_IOWR('S', n, 32 bytes)`).
    #[test]
    fn ioctl_numbers() {
        assert_eq!(SNP_GET_REPORT, 0xC020_5300);
        assert_eq!(SNP_GET_EXT_REPORT, 0xC020_5302);
    }

    #[test]
    fn parses_msg_report_rsp() {
        let mut d = [0u8; 4000];
        d[4..8].copy_from_slice(&(SNP_REPORT_LEN as u32).to_le_bytes());
        d[0x20] = 0xAB;
        assert_eq!(parse_response(&d).unwrap()[0], 0xAB);
        d[0] = 0x16;
        assert!(parse_response(&d).is_err());
    }
}
