//! Prints the CPU cost of one bare ECDSA P-384/SHA-384 signature verification in each
//! implementation available to the project, side by side, so `scripts/bench-verifier`
//! can put the verifier's CPU time per attestation next to the fastest, measured in the
//! same run:
//!
//! - RustCrypto `p384`,
//! - `ring` (already linked: rustls's provider, the tokens and the JWE),
//! - `aws-lc-rs` (AWS-LC: what the verifier's `attestation` dependency, built with its
//!   `aws-lc` feature, uses for the SNP report signature).
//!
//! Output (JSON): `p384_verify_seconds` (the fastest), `rustcrypto_seconds`,
//! `ring_seconds`, `aws_lc_rs_seconds`, `fastest`.

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
    let aws_key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
        point.as_bytes().to_vec(),
    );
    let mut bad = fixed;
    bad[7] ^= 1;
    assert!(
        aws_key.verify(&msg, &bad).is_err(),
        "AWS-LC refuses a bad signature"
    );
    let aws = per_call(iters, || assert!(aws_key.verify(&msg, &fixed).is_ok()));
    let (fastest, best) = [
        ("rustcrypto-p384", rustcrypto),
        ("ring", ring_s),
        ("aws-lc-rs", aws),
    ]
    .into_iter()
    .fold(
        ("none", f64::INFINITY),
        |a, b| if b.1 < a.1 { b } else { a },
    );
    println!(
        "{{\"p384_verify_seconds\": {best}, \"rustcrypto_seconds\": {rustcrypto}, \"ring_seconds\": {ring_s}, \"aws_lc_rs_seconds\": {aws}, \"fastest\": \"{fastest}\"}}"
    );
}
