//! Prints the CPU cost of one bare ECDSA P-384 signature verification (RustCrypto, the
//! implementation the verifier uses), so `scripts/bench-verifier` can put the
//! verifier's CPU time per attestation next to it, measured in the same run.

use p384::ecdsa::signature::{Signer, Verifier};
use p384::ecdsa::{Signature, SigningKey};

fn main() {
    let key = SigningKey::random(&mut rand_core::OsRng);
    let msg = [0x5au8; 0x2a0]; // the size of an SNP report's signed region
    let sig: Signature = key.sign(&msg);
    let vk = *key.verifying_key();
    let iters = 2000;
    let start = std::time::Instant::now();
    for _ in 0..iters {
        assert!(vk.verify(&msg, &sig).is_ok());
    }
    let per = start.elapsed().as_secs_f64() / f64::from(iters);
    println!("{{\"p384_verify_seconds\": {per}}}");
}
