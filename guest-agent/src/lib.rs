//! In-guest attestation agent.
//!
//! Not built yet: this crate will hold the no_std KBS client core, the Linux
//! `cvm-agent` and the bare-metal test guest.
