//! Subcommands of `cvm-verifier`, one module each.

pub mod verify_snp;
pub mod verify_tdx;

// The verifier service and its tools.
pub mod admin;
pub mod admin_input;
pub mod audit;
pub mod collateral;
pub mod identity;
pub mod inventory;
pub mod loadgen;
pub mod output;
pub mod serve;
