//! `cvm-verifier`: the attestation verifier and key broker.
//!
//! - Offline verification of SEV-SNP reports and TDX quotes (`cvm-verifier verify
//!   snp|tdx`, [`cli`]).
//! - The service (`cvm-verifier serve`, [`service`]): Trustee's KBS protocol 0.4.0 for
//!   guests (`/kbs/v0/auth`, `/attest`, `/resource`), attestation result tokens (ES256
//!   JWT, JWKS at `/.well-known/jwks.json`), resources released as JWE to the TEE key
//!   with a `Cvm-Release-Signature` by the token key — the identity guests pin on their
//!   measured command line (`cvm-verifier identity`, [`crypto::token`]) —, and an admin plane (`/admin/v1`, RBAC, argon2id API tokens, TOTP for admins).
//! - Storage ([`db`], [`store`]): SQLite or PostgreSQL through sqlx, versioned
//!   migrations, secrets sealed under a master key ([`crypto::master`]), an append-only
//!   audit log chained with HMAC under a sealed audit key, with signed checkpoints
//!   ([`store::audit`]), and an inventory of attested guests identified by their
//!   verified platform certificate.
//! - Clients ([`client`]): the guest side of the protocol (used by the load generator
//!   and the tests) and the admin API client behind `cvm-verifier admin`.
//! - Collateral ([`collateral`]): evidence without its certificates or DCAP collateral
//!   is completed from AMD's KDS and Intel's PCS/PCCS, cached in the database (shared by
//!   replicas) until each item's own expiry and refreshed before it, with single-flight
//!   fetches, enforced CRLs and an offline mode fed by `cvm-verifier collateral
//!   export|import` bundles.
//!
//! # Design
//!
//! The verifier decides with the `attestation` crate behind one narrow trait,
//! [`evidence::EvidenceVerifier`]; policies are `attestation::policy::Policy` values per
//! workload. Every decision that releases something commits together with its audit
//! record in one database transaction, so a crash never leaves a release unaudited or an
//! audit chain half-written. Errors reach clients only through [`error::ApiError`], the
//! single mapping to HTTP status codes and RFC 7807 problem documents.
//!
//! # Performance: what a complete flow costs, and what is cached
//!
//! A complete flow (auth, attest, resource) costs the verifier about twice one bare
//! ECDSA P-384 verification of CPU (`scripts/bench-verifier` measures both in one run).
//! The report's own P-384 signature — half of that — is verified on every attestation.
//! The rest is kept small by:
//!
//! - Fetched collateral (see [`collateral`]): with it cached, a flow without collateral
//!   in its evidence costs one in-memory lookup more than one carrying it (SNP: by
//!   CHIP_ID, REPORTED_TCB, CPUID and SIGNING_KEY; TDX: by SHA-256 of the quote's PCK
//!   chain).
//! - Caches that never hold a verdict on the report: parsed SNP certificate tables
//!   (by the exact `cert_chain` string, at most 256 of at most 32 KiB; see
//!   [`evidence`]), and, in the `attestation` crate, verified VCEK/VLEK chains (by
//!   SHA-384 of the exact certificate DER, at most 4096, per verifier and so per set of
//!   trust anchors). Every use still checks every certificate's validity at the
//!   current time, any CRL supplied, the product, TCB and chip binding, and the report
//!   signature; `tests/evidence_chain_cache.rs` checks that a warm cache never changes a
//!   verdict.
//! - `ring` for the verifier's own ES256 signatures and ECDH ([`crypto`]).
//! - A release checks the presented token against the SHA-256 of the token issued to
//!   that session, stored when the attestation committed ([`crypto::token`]), instead of
//!   verifying the verifier's own signature again.
//! - Two durable commits per flow (the attestation with its nonce, the release with its
//!   audit record), each one short transaction; on SQLite, writers queue on one FIFO
//!   lock and write through dedicated connections, and guest reads use dedicated
//!   connections ([`db`]).
//! - `serve` runs one async worker fewer than the CPUs; verification runs on the
//!   blocking pool.
//!
//! # Bounded cost per unauthenticated request
//!
//! What a client without credentials can make the service spend is capped
//! ([`ratelimit`], the `[limits]` configuration section): connections per IP and in
//! total, time to handshake, send a request head (or stay idle) and a body; credential
//! checks reserved per IP and per token id before they run, argon2 on a fixed pool of
//! threads (memory `threads × 19 MiB`); `/kbs/v0/auth` requests and the challenged
//! sessions they create, per IP and in total; KBS refusals per IP and in total, and the
//! audit records they write (floods are counted into summary records).
//!
//! # Dependencies and why
//!
//! - `axum` + `tokio`, served by a small accept loop on `hyper`'s HTTP/1.1 driver and
//!   `tokio-rustls` (`service::conn`): connection caps, TLS handshake and header-read
//!   timeouts, graceful shutdown — which `axum::serve` and `axum-server` lack;
//!   `reqwest` (rustls) for the clients and the collateral service's KDS/PCS fetches
//!   (see [`collateral`] for why); `dcap-qvl` (already the TDX verifier's) to read the
//!   FMSPC from a PCK certificate, `x509-cert`/`der` for CRL `nextUpdate`.
//! - `sqlx` (`Any` driver): one set of portable queries for SQLite and PostgreSQL.
//! - `kbs-types`: Trustee's protocol types, so the JSON matches guest components.
//! - `serde_json_canonicalizer`: RFC 8785 JCS for the REPORT_DATA binding and audit
//!   records.
//! - `aes-gcm`, `aes-kw`, `concat-kdf`, `p256`/`p384`, `rsa`: JWE and envelope
//!   encryption on the RustCrypto generation used by the rest of the workspace
//!   (see [`crypto::jwe`] for why not a JOSE crate).
//! - `ring` (already linked for rustls): the per-attestation elliptic-curve work the
//!   verifier does for itself — ES256 token signatures and their verification, and the
//!   ephemeral ECDH of key release — several times faster than the RustCrypto curves.
//!   Evidence (the report's P-384 signature) is verified by the `attestation` crate.
//! - `argon2` (API token hashes), `totp-rs` (RFC 6238), `prometheus-client` (metrics).
//!
//! # Example
//!
//! ```
//! use verifier::protocol::report_data;
//! use verifier::crypto::jwe::TeeKeyPair;
//!
//! // What a guest puts in REPORT_DATA for a challenge nonce and its ephemeral key.
//! let key = TeeKeyPair::p256();
//! let rd = kbs_types::RuntimeData { nonce: "bm9uY2U=".into(), tee_pubkey: key.public_jwk() };
//! let report_data: [u8; 64] = report_data(&rd).unwrap();
//! assert_eq!(&report_data[48..], &[0u8; 16]);
//! ```

pub mod cli;
pub mod client;
pub mod collateral;
pub mod config;
pub mod crypto;
pub mod db;
pub mod error;
pub mod evidence;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod ratelimit;
pub mod service;
pub mod store;
pub mod util;
