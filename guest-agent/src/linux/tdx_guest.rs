//! `/dev/tdx_guest` (`include/uapi/linux/tdx-guest.h`): `TDX_CMD_GET_REPORT0`, the
//! TDREPORT for REPORT_DATA. The quote comes from configfs-tsm ([`super::tsm`]), which
//! sends the TDREPORT to the quoting enclave.

use std::fs::File;
use std::os::fd::AsRawFd;

/// `struct tdx_report_req`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TdxReportReq {
    /// REPORT_DATA.
    pub reportdata: [u8; 64],
    /// TDREPORT_STRUCT (out).
    pub tdreport: [u8; 1024],
}

const _: () = assert!(std::mem::size_of::<TdxReportReq>() == 1088);
const _: () = assert!(std::mem::offset_of!(TdxReportReq, tdreport) == 64);

/// `TDX_CMD_GET_REPORT0` = `_IOWR('T', 1, struct tdx_report_req)`.
pub const TDX_CMD_GET_REPORT0: u64 =
    (3 << 30) | ((std::mem::size_of::<TdxReportReq>() as u64) << 16) | ((b'T' as u64) << 8) | 1;

/// The TDREPORT (1024 bytes) for `report_data`.
pub fn report0(report_data: &[u8; 64]) -> std::io::Result<Vec<u8>> {
    let dev = File::options()
        .read(true)
        .write(true)
        .open("/dev/tdx_guest")?;
    let mut req = TdxReportReq {
        reportdata: *report_data,
        tdreport: [0; 1024],
    };
    // SAFETY: the ioctl reads `reportdata` and writes `tdreport` of `req`, alive for the
    // call.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), TDX_CMD_GET_REPORT0 as _, &mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(req.tdreport.to_vec())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ioctl_number() {
        assert_eq!(super::TDX_CMD_GET_REPORT0, 0xC440_5401);
    }
}
