//! Prints the CPU cost of one bare ECDSA P-384/SHA-384 signature verification in each
//! implementation available to the project, side by side, so `scripts/bench-verifier`
//! can put the verifier's CPU time per attestation next to the fastest, measured in the
//! same run:
//!
//! - RustCrypto `p384` (what the `attestation` crate uses for SNP reports),
//! - `ring` (already linked: rustls's provider).
//!
//! `aws-lc-rs` is not measured: it is not in the dependency tree (and not in the local
//! registry cache of this machine, which has no network), and it needs cmake and a C
//! toolchain build of AWS-LC.
//!
//! Output (JSON): `p384_verify_seconds` (the fastest), `rustcrypto_seconds`,
//! `ring_seconds`, `fastest`.

use p384::ecdsa::signature::{Signer, Verifier};
use p384::ecdsa::{Signature, SigningKey};

fn per_call(iters: u32, mut f: impl FnMut()) -> f64 {
    // Warm up, then the best of three runs (the machine is shared).
    for _ in 0..iters / 10 {
        f();
    }
    (0..3)
        .map(|_| {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_secs_f64() / f64::from(iters)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let key = SigningKey::random(&mut rand_core::OsRng);
    let msg = [0x5au8; 0x2a0]; // the size of an SNP report's signed region
    let sig: Signature = key.sign(&msg);
    let vk = *key.verifying_key();
    let iters = 1000;
    let rustcrypto = per_call(iters, || assert!(vk.verify(&msg, &sig).is_ok()));
    let point = vk.to_encoded_point(false);
    let ring_key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P384_SHA384_FIXED,
        point.as_bytes().to_vec(),
    );
    let fixed = sig.to_bytes();
    let ring_s = per_call(iters, || assert!(ring_key.verify(&msg, &fixed).is_ok()));
    let (fastest, best) = if ring_s < rustcrypto {
        ("ring", ring_s)
    } else {
        ("rustcrypto-p384", rustcrypto)
    };
    println!(
        "{{\"p384_verify_seconds\": {best}, \"rustcrypto_seconds\": {rustcrypto}, \"ring_seconds\": {ring_s}, \"fastest\": \"{fastest}\"}}"
    );
}
