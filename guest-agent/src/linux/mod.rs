//! Linux kernel interfaces of `cvm-agent` (the only `unsafe` of the host side): the
//! SEV guest driver, the TDX guest driver, configfs-tsm, and AF_VSOCK.

pub mod sev_guest;
pub mod tdx_guest;
pub mod tsm;
pub mod vsock;
