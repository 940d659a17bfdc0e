//! The `cvm` confidential-VM host.
//!
//! Today: `cvm measure` (expected SEV-SNP launch digests and TDX MRTD/RTMRs from the
//! measured-boot launch plan) and `cvm emulated` (software-emulated TEE platforms that
//! produce evidence in the exact hardware formats, for tests). The KVM VMM comes next.

pub mod cli;
