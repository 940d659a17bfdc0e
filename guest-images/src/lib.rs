//! The project firmware (`guest-firmware/`), built by `build.rs` and embedded in `cvm`.
//!
//! The image is a flat 64 KiB file that ends at 4 GiB in guest memory: reset vector,
//! SEV metadata ("ASEV": SNP_SEC_MEM, SECRETS 0xA000, CPUID 0xB000, SNP_KERNEL_HASHES
//! 0xC000), the SEV hashes table entry (base 0xC000), the SEV-ES AP reset block and TDVF
//! metadata (the image as a measured BFV, TempMem for the firmware's low pages, a TD_HOB
//! page for the boot-data descriptor). Its boot contract is
//! `docs/guest-boot-protocol.md`.

/// The embedded firmware image (empty when `cvm` was built with `CVM_SKIP_GUEST_BUILD`).
pub fn image() -> &'static [u8] {
    include_bytes!(env!("CVM_FIRMWARE_IMAGE"))
}

/// The bare-metal test guest of `guest-agent/testguest` (a bzImage-format file; test
/// equipment for `cvm demo` and the end-to-end tests), or an empty slice if this build
/// has none.
pub fn testguest_image() -> &'static [u8] {
    include_bytes!(env!("CVM_TESTGUEST_IMAGE"))
}

/// Why the embedded firmware cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FirmwareError {
    /// The build skipped the firmware.
    #[error("this cvm was built without its firmware (CVM_SKIP_GUEST_BUILD was set); rebuild it, or pass a firmware file")]
    NotEmbedded,
}

/// The embedded firmware image, or an error if this build has none.
pub fn embedded() -> Result<&'static [u8], FirmwareError> {
    match image() {
        [] => Err(FirmwareError::NotEmbedded),
        img => Ok(img),
    }
}
