//! One bare ECDSA P-384/SHA-384 verification — the genuine Milan report's signature by
//! its VCEK — with each implementation available to the project, side by side in the
//! same run (issue 15, performance): RustCrypto `p384`, `ring` (what `attestation` uses
//! without its `aws-lc` feature) and `aws-lc-rs` (with it: the verifier's build).
//!
//! All three check the same message, key and signature; the bench asserts that first.

use attestation::snp::report::SIGNED_LEN;
use attestation::snp::{AmdCertificate, AttestationReport};
use criterion::{criterion_group, criterion_main, Criterion};
use p384::ecdsa::signature::Verifier;

fn data(path: &str) -> Vec<u8> {
    let p = format!("{}/tests/data/snp/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn bench(c: &mut Criterion) {
    let report = data("milan-v2/report.bin");
    let vcek = AmdCertificate::from_der(&data("milan-v2/vcek.der")).expect("VCEK");
    let key = vcek.ec_verifying_key().expect("P-384 key");
    let parsed = AttestationReport::parse(&report).expect("report");
    let (r, s) = parsed.signature.to_be_scalars().expect("scalars");
    let sig = p384::ecdsa::Signature::from_scalars(r, s).expect("signature");
    let msg = &report[..SIGNED_LEN];
    key.verify(msg, &sig).expect("p384 verifies");

    let point = key.to_encoded_point(false);
    let ring_key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P384_SHA384_FIXED,
        point.as_bytes().to_vec(),
    );
    let fixed = sig.to_bytes();
    ring_key.verify(msg, &fixed).expect("ring verifies");
    let mut bad = fixed;
    bad[10] ^= 1;
    assert!(
        ring_key.verify(msg, &bad).is_err(),
        "ring refuses a bad signature"
    );
    let aws_key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
        point.as_bytes().to_vec(),
    );
    aws_key.verify(msg, &fixed).expect("aws-lc-rs verifies");
    assert!(
        aws_key.verify(msg, &bad).is_err(),
        "aws-lc-rs refuses a bad signature"
    );

    let mut g = c.benchmark_group("p384_verify");
    g.bench_function("rustcrypto_p384", |b| {
        b.iter(|| {
            key.verify(std::hint::black_box(msg), &sig)
                .expect("verifies")
        })
    });
    g.bench_function("ring", |b| {
        b.iter(|| {
            ring_key
                .verify(std::hint::black_box(msg), &fixed)
                .expect("verifies")
        })
    });
    g.bench_function("aws_lc_rs", |b| {
        b.iter(|| {
            aws_key
                .verify(std::hint::black_box(msg), &fixed)
                .expect("verifies")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
