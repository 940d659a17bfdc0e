//! Measured-boot firmware for confidential guests.
//!
//! Not built yet: this crate will hold the freestanding firmware that runs first in
//! the guest (reset vector, SEV/TDX metadata, measured direct boot). Until it exists,
//! `cvm measure` requires `--firmware`.
