//! In-guest attestation agent: a `no_std` + `alloc` client of the Trustee KBS protocol
//! 0.4.0 exactly as `cvm-verifier` speaks it, plus (with `std`) host-side helpers for the
//! Linux agent `cvm-agent`. The bare-metal test guest (`testguest/`, a Cargo workspace of
//! its own) uses this crate with default features off.
//!
//! # Protocol
//!
//! See [`kbs`] for the three requests, [`binding`] for the REPORT_DATA binding (RFC 8785
//! canonical JSON, SHA-384, zero-padded to 64 bytes), [`jwe`] for the resource
//! encryption (ECDH-ES+A256KW on P-256 or P-384, A256GCM), [`pin`] for the pinned
//! verifier (its ES256 key from `cvm.verifier_key=`, checked on the token and on the
//! `Cvm-Release-Signature` of every release before decryption), [`evidence`] for the
//! `tee-evidence` shapes, and [`http`] for the HTTP/1.1 subset (one request per
//! connection) and its limits.
//!
//! # Front ends
//!
//! A front end supplies three things behind narrow traits: a byte-stream
//! [`http::Transport`] to the KBS (the test guest: virtio-vsock to host CID 2 port
//! 50000, the VMM's relay; `cvm-agent`: vsock or TCP), an
//! [`evidence::EvidenceProvider`], and an [`rng::Entropy`] source (the test guest:
//! RDRAND at ring 3 after checking CPUID, failing closed without it).
//!
//! # The bare-metal test guest (`testguest/`)
//!
//! `cvm-testguest` is a bzImage (boot sector + one setup sector with the "HdrS" header,
//! protocol 2.15, XLF_KERNEL_64, pref_address 0x100000; payload at file offset 0x400,
//! loaded at 0x100000, 64-bit entry 0x100200) that the project firmware verifies and
//! enters at CPL0. Its assembly-only prologue (~8 000 interpreted instructions) builds
//! identity page tables of 0–4 GiB with the U/S bit, loads a GDT with ring-3 segments,
//! enables SSE, sets IOPL 3 and `iretq`s to ring 3, where everything else runs natively
//! (no interrupts, no syscalls; polled devices).
//!
//! | GPA | use |
//! |---|---|
//! | 0x100000 – ~0x143000 | code, rodata, data (the image, ~270 KiB) |
//! | then (`init_size`) | .bss with the 256 KiB stack (zeroed at ring 3), page tables (24 KiB) |
//! | 16 MiB – end of that e820 RAM range (≤ 3 GiB) | bump heap: virtio rings and buffers (in an SNP guest or a TD: the shared DMA pool), JSON, LUKS |
//!
//! Flow: command line from `boot_params` (`cvm.kbs_resource=repo/type/tag` and
//! `cvm.verifier_key=` required — without a pin the guest refuses to attest —, optional
//! `cvm.kbs_port=` (default 50000) and `cvm.kbs_workload=`); the TEE (SNP: SEV_STATUS and
//! the CPUID page; TDX: CPUID 0x21) and its evidence through the hardware's paths (SNP
//! guest request; TDG.MR.REPORT + `TDVMCALL<GetQuote>`, the quote sent without collateral);
//! a P-256 key from RDRAND; this crate's KBS flow over
//! virtio-vsock to host CID 2; the LUKS2 volume on the first virtio-blk disk unlocked
//! with the released bytes as key file (`luks` crate); the message printed as
//! `cvm-testguest: disk message: <text>`; ACPI S5. Any failure prints
//! `cvm-testguest: error: <reason>` and writes pvpanic.
//!
//! Disk format: LUKS2 as `luks::create` or `cryptsetup luksFormat --type luks2` writes
//! it (PBKDF2, or Argon2id up to 256 MiB), key = the resource bytes; the data segment
//! starts with the message, UTF-8, NUL-terminated, within its first 4 KiB.
//!
//! # The Linux agent (`cvm-agent`, feature `std`)
//!
//! [`agent`] and the kernel interfaces in [`linux`] (configfs-tsm, `/dev/sev-guest`
//! `SNP_GET_EXT_REPORT`, `/dev/tdx_guest` `TDX_CMD_GET_REPORT0`, AF_VSOCK; under cvm's
//! emulated TEEs, with `cvm.tsm=vsock` on the measured command line, the VMM's vsock
//! evidence service, [`agent::vsock_tsm`]): attest,
//! receive the disk key, `cryptsetup open --key-file=-` (key on a pipe), mount,
//! `switch_root`.
//!
//! # Secrets
//!
//! The ephemeral private key ([`jwe::EphemeralKey`]), the derived key-encryption and
//! content keys and the released resource ([`jwe::Secret`]) are zeroized on drop and
//! have no `Debug` output beyond their size. Nothing in this crate logs.
//!
//! # Dependencies and why
//!
//! All with default features off so they build without `std`:
//! - `p256`, `p384` (`ecdh`): the ephemeral key and ECDH (RustCrypto, the generation the
//!   verifier uses); `p256`'s `ecdsa` verifies the pinned verifier's ES256 signatures
//!   (its signing half is unused and dropped by LTO in the test guest); `p384` is optional (feature `p384`) because it adds ~100 KiB to
//!   the test guest image, which the firmware hashes at ~1 µs per instruction.
//! - `aes-kw`, `aes-gcm`: A256KW and A256GCM; `sha2`: SHA-384 (binding) and the
//!   SHA-256 Concat KDF (a single hash block, written here rather than a crate).
//! - `serde` + `serde_json` (`alloc`): parsing the KBS answers and the JWE; requests are
//!   written directly (their canonical form matters).
//! - `base64`, `zeroize`, `thiserror` (2.x is `no_std`).
//! - `libc`, `clap`, `rustls` (feature `std` only): `cvm-agent`'s ioctls and AF_VSOCK
//!   socket, its command line, and HTTPS straight to a verifier (ring provider, as the
//!   verifier uses).
//! - No HTTP crate: `hyper` and friends need `std`; [`http`] is a strict ~300-line
//!   subset.
//!
//! # Example
//!
//! ```
//! use guest_agent::binding::{primary_runtime_data_json, report_data, runtime_data_json};
//! use guest_agent::jwe::EcJwk;
//!
//! let jwk = EcJwk { crv: "P-256", x: "eA".into(), y: "eQ".into() };
//! let canonical = runtime_data_json("bm9uY2U=", &jwk);
//! assert_eq!(
//!     canonical,
//!     r#"{"nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"eA","y":"eQ"}}"#
//! );
//! // What REPORT_DATA hashes (as Trustee): the same plus the additional evidence.
//! let bound = primary_runtime_data_json("bm9uY2U=", &jwk, "");
//! assert!(bound.starts_with(r#"{"additional-evidence":"","nonce":"#));
//! assert_eq!(&report_data(&bound)[48..], &[0u8; 16]);
//! ```
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(feature = "std")]
pub mod agent;
pub mod binding;
pub mod evidence;
pub mod http;
pub mod jwe;
pub mod kbs;
#[cfg(feature = "std")]
pub mod linux;
pub mod pin;
pub mod rng;
#[cfg(feature = "std")]
pub mod tcp;
#[cfg(feature = "std")]
pub mod tls;

pub use evidence::{Evidence, EvidenceError, EvidenceProvider, Tee};
pub use http::{Transport, TransportError};
pub use jwe::{Curve, EphemeralKey, Secret};
pub use kbs::{KbsClient, KbsConfig, KbsError, ResourcePath};
pub use pin::VerifierKey;
pub use rng::{Entropy, EntropyError};
