//! TDX quote verification throughput.
//!
//! A TDX quote verification contains: the quote signature, the QE report signature,
//! the PCK chain (cacheable), and the TCB info and QE identity signatures (cacheable).
//! With collateral verification cached, a full verification should cost at most 1.25x
//! the two bare ECDSA-P256 verifications it must always perform. This bench measures,
//! in one run:
//!
//! - `bare_ecdsa_p256_x2`: the quote signature and the QE report signature, verified
//!   directly with p256 over the same bytes (the floor);
//! - `full_cached`: `TdxVerifier::verify` on a quote whose platform and collateral were
//!   verified before (fresh REPORTDATA each time would not change the cost: the cache key
//!   excludes it);
//! - `full_uncached`: a new verifier each time (complete DCAP verification).
//!
//! The ratio `full_cached / bare_ecdsa_p256_x2` is printed at the end.

use std::time::{Duration, Instant};

use attestation::tdx::collateral::Collateral;
use attestation::tdx::emulated::{
    CollateralOptions, EmulatedTd, EmulatedTdxPlatform, PlatformOptions, TdConfig,
};
use attestation::tdx::{pck, Quote, TdxVerifier};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

struct Fixture {
    quote: Vec<u8>,
    collateral: Collateral,
    platform: EmulatedTdxPlatform,
    now: time::OffsetDateTime,
}

fn fixture() -> Fixture {
    let now = time::OffsetDateTime::now_utc();
    let platform =
        EmulatedTdxPlatform::generate(PlatformOptions::default(), now).expect("platform");
    let td = EmulatedTd::with_mrtd(TdConfig::default(), [0x11; 48]);
    let quote = platform
        .quote_td(&td, &[0x22; 64], 4)
        .expect("quote")
        .to_bytes()
        .expect("bytes");
    let collateral = platform
        .collateral(&CollateralOptions::around(now, 30))
        .expect("collateral");
    Fixture {
        quote,
        collateral,
        platform,
        now,
    }
}

fn bare(f: &Fixture) -> impl Fn() -> bool + '_ {
    let q = Quote::parse(&f.quote).expect("parses");
    let chain = pck::PckChain::from_pem(&q.signature_data.pck_cert_chain).expect("chain");
    let ak = pck::attestation_key(&q.signature_data.attestation_key).expect("key");
    let signed = f.quote[..q.signed_len()].to_vec();
    let qe = q.signature_data.qe_report.to_bytes();
    let (sig, qe_sig) = (
        q.signature_data.signature,
        q.signature_data.qe_report_signature,
    );
    move || {
        pck::verify_raw(&ak, black_box(&signed), &sig)
            && pck::verify_raw(&chain.leaf_key, black_box(&qe), &qe_sig)
    }
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    let verifier = TdxVerifier::new(f.platform.trust_root());
    verifier
        .verify(&f.quote, &f.collateral, f.now)
        .expect("warm-up verifies");

    let floor = bare(&f);
    assert!(floor(), "bare signatures verify");
    let mut g = c.benchmark_group("tdx_verify");
    // One quote per iteration: criterion reports quotes per second.
    g.throughput(Throughput::Elements(1));
    g.bench_function("bare_ecdsa_p256_x2", |b| b.iter(|| black_box(floor())));
    g.bench_function("full_cached", |b| {
        b.iter(|| {
            verifier
                .verify(black_box(&f.quote), &f.collateral, f.now)
                .expect("verifies")
        })
    });
    g.sample_size(20);
    g.bench_function("full_uncached", |b| {
        b.iter(|| {
            TdxVerifier::new(f.platform.trust_root())
                .verify(black_box(&f.quote), &f.collateral, f.now)
                .expect("verifies")
        })
    });
    g.finish();

    // The ratio, measured in this run: interleaved rounds of each, keeping the fastest
    // round of each so that load from other processes does not bias one side.
    let round = |run: &dyn Fn()| {
        let n = 50u32;
        let start = Instant::now();
        for _ in 0..n {
            run();
        }
        start.elapsed() / n
    };
    let (mut bare_t, mut full_t) = (Duration::MAX, Duration::MAX);
    for _ in 0..20 {
        bare_t = bare_t.min(round(&|| {
            black_box(floor());
        }));
        full_t = full_t.min(round(&|| {
            black_box(verifier.verify(&f.quote, &f.collateral, f.now).is_ok());
        }));
    }
    println!(
        "tdx_verify: full_cached {:?} / bare_ecdsa_p256_x2 {:?} = {:.3} (goal <= 1.25)",
        full_t,
        bare_t,
        full_t.as_secs_f64() / bare_t.as_secs_f64()
    );
}

criterion_group!(tdx, benches);
criterion_main!(tdx);
