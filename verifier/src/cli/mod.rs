//! Subcommands of `cvm-verifier`, one module each.

pub mod verify_snp;
pub mod verify_tdx;
