//! Shared fixtures of the SNP integration tests.
//!
//! Emulated platforms need RSA-4096 keys, which take a long time to generate in debug
//! builds, so each product's platform is generated once, written under the target directory
//! (`test_kit::cached_dir`) and reopened by later tests and test binaries.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use attestation::snp::emulated::{EmulatedSnpConfig, EmulatedSnpPlatform};
use attestation::snp::{Product, SnpVerifier, TrustRoots};

/// Bump when the emulated certificate format changes, to regenerate cached platforms.
const FIXTURE_VERSION: u32 = 1;

/// Reads a file of tests/data/snp.
pub fn data(path: &str) -> Vec<u8> {
    let p = format!("{}/tests/data/snp/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The directory holding the cached platform of `product` (its `snp/` subdirectory
/// has the snpguest layout).
pub fn platform_dir(product: Product) -> PathBuf {
    let name = format!("snp-emulated-v{FIXTURE_VERSION}-{product}");
    test_kit::cached_dir(&name, |tmp| {
        let config = EmulatedSnpConfig {
            product,
            ..EmulatedSnpConfig::default()
        };
        let p = EmulatedSnpPlatform::generate(&config).expect("platform generates");
        p.write_to(tmp).expect("platform writes");
    })
}

/// The emulated platform of `product`, shared by the tests of one binary.
pub fn platform(product: Product) -> &'static EmulatedSnpPlatform {
    static MILAN: OnceLock<EmulatedSnpPlatform> = OnceLock::new();
    static GENOA: OnceLock<EmulatedSnpPlatform> = OnceLock::new();
    static TURIN: OnceLock<EmulatedSnpPlatform> = OnceLock::new();
    let cell = match product {
        Product::Milan => &MILAN,
        Product::Genoa => &GENOA,
        Product::Turin => &TURIN,
    };
    cell.get_or_init(|| {
        EmulatedSnpPlatform::open(&platform_dir(product)).expect("cached platform opens")
    })
}

/// A verifier trusting AMD's roots and `p`'s trust anchor.
pub fn emulated_verifier(p: &EmulatedSnpPlatform) -> SnpVerifier {
    let roots = TrustRoots::amd()
        .expect("AMD roots")
        .with_operator_roots(p.trust_anchor_pem().as_bytes())
        .expect("trust anchor loads");
    SnpVerifier::new(roots)
}
