//! `cvm-verifier`: the attestation verifier and key broker.
//!
//! Today it provides offline verification of SEV-SNP reports and TDX quotes
//! (`cvm-verifier verify snp|tdx`); see [`cli`].

pub mod cli;
