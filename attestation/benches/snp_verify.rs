//! SNP verification throughput: a full report verification with the VCEK chain cached,
//! against the bare ECDSA P-384 signature verification it contains, in the same run.
//!
//! Goal: `snp_verify/full_cached` takes at most 1.25x `snp_verify/bare_ecdsa_p384`
//! (the chain's three RSA-PSS checks are done once per VCEK and cached; what remains is
//! parsing, the TCB/hwID binding checks and the one ECDSA verification).

use attestation::snp::report::SIGNED_LEN;
use attestation::snp::{AmdCertificate, AttestationReport, SnpCollateral, SnpVerifier};
use criterion::{criterion_group, criterion_main, Criterion};
use p384::ecdsa::signature::Verifier;

fn data(path: &str) -> Vec<u8> {
    let p = format!("{}/tests/data/snp/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn bench(c: &mut Criterion) {
    let report = data("milan-v2/report.bin");
    let vcek = AmdCertificate::from_der(&data("milan-v2/vcek.der")).expect("VCEK");
    let mut collateral = SnpCollateral::new();
    collateral.set_vek(vcek.clone());
    let verifier = SnpVerifier::amd().expect("AMD roots");
    let at = time::macros::datetime!(2024-06-01 00:00 UTC);
    verifier
        .verify(&report, &collateral, at)
        .expect("authentic (warms the chain cache)");

    let key = vcek.ec_verifying_key().expect("P-384 key");
    let parsed = AttestationReport::parse(&report).expect("report");
    let (r, s) = parsed.signature.to_be_scalars().expect("scalars");
    let sig = p384::ecdsa::Signature::from_scalars(r, s).expect("signature");
    key.verify(&report[..SIGNED_LEN], &sig)
        .expect("bare signature verifies");

    let mut g = c.benchmark_group("snp_verify");
    g.bench_function("full_cached", |b| {
        b.iter(|| {
            verifier
                .verify(std::hint::black_box(&report), &collateral, at)
                .expect("verifies")
        })
    });
    g.bench_function("bare_ecdsa_p384", |b| {
        b.iter(|| {
            key.verify(std::hint::black_box(&report[..SIGNED_LEN]), &sig)
                .expect("verifies")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
