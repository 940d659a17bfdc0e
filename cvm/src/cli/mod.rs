//! Subcommands of `cvm`, one module each. Binaries print `error: …` then one
//! `caused by: …` line per source.

pub mod api;
pub mod demo;
pub mod description;
pub mod firmware;
pub mod host_check;
pub mod launch;
pub mod measure;
pub mod net;
pub mod net_policy;

pub use cli_support::fail;
