//! The pure and hardware-facing parts of `cvm-firmware` (see `src/main.rs` for the
//! image, its memory map and what is verified where). A library so that its parsers and
//! hashes are unit-tested on the host with `cargo test --lib`; the binary adds the reset
//! code, the C memory routines, the entry point and the panic handler.

#![no_std]

#[cfg(test)]
extern crate std;

pub mod acpi;
pub mod arch;
pub mod boot;
pub mod descriptor;
pub mod env;
pub mod io;
pub mod measure;
pub mod sha;
pub mod snp;
pub mod tdx;
