//! Launch plans and expected measurements for SEV-SNP and TDX confidential VMs.
//!
//! A *launch plan* is the ordered list of pages a secure processor receives at launch
//! (guest physical address, page type, contents) plus the initial vCPU state. The KVM
//! SNP/TDX backends of the VMM, the emulated secure processors of the `attestation`
//! crate and `cvm measure` all consume the same plan, so the measurement an operator
//! registers is computed by the code that performs the launch — never by a second,
//! separate path.
//!
//! - [`firmware`]: the firmware image, its OVMF footer GUID table, SEV metadata and TDVF
//!   metadata.
//! - [`snp`]: the PAGE_INFO launch digest, VMSAs, vCPU types, the kernel hashes table
//!   and [`snp::SnpLaunchPlan`].
//! - [`tdx`]: MRTD (TDH.MEM.PAGE.ADD / TDH.MR.EXTEND), RTMRs, the CC event log and
//!   [`tdx::TdxLaunchPlan`].
//!
//! # Example
//! ```
//! use measured_boot::snp::{LaunchDigest, LaunchUpdate, PageType, UpdateContents};
//!
//! let page = [0u8; 4096];
//! let mut ld = LaunchDigest::new();
//! ld.update(&LaunchUpdate { gpa: 0xffff_f000, page_type: PageType::Normal, contents: UpdateContents::Data(&page) });
//! assert_eq!(ld.value().len(), 48);
//! ```
//!
//! # Dependencies
//! Only `sha2` for hashing (RustCrypto's SHA-384 uses the AVX2 code path on x86_64;
//! see the `digest` benchmark for throughput against OpenSSL), `serde` for the JSON
//! summaries, `hex` and `thiserror`.

pub mod firmware;
pub mod guid;
pub mod snp;
pub mod tdx;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use firmware::{FirmwareError, FirmwareImage};
pub use guid::Guid;
