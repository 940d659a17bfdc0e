//! Fuzz the SEV-SNP ATTESTATION_REPORT parser and the verifier's early checks.
//!
//! Invariants: parsing never panics; an accepted report re-serializes to exactly the
//! input bytes; verification of arbitrary bytes (no certificates) never panics and
//! never succeeds.
#![no_main]

use attestation::snp::{AttestationReport, SnpCollateral, SnpVerifier};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn verifier() -> Option<&'static SnpVerifier> {
    static V: OnceLock<Option<SnpVerifier>> = OnceLock::new();
    V.get_or_init(|| SnpVerifier::amd().ok()).as_ref()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = AttestationReport::parse(data) {
        let bytes = report.to_bytes().expect("a parsed report serializes");
        assert_eq!(&bytes[..], data, "parse/serialize must be exact inverses");
        let _ = report.product();
    }
    if let Some(v) = verifier() {
        let at = time::OffsetDateTime::UNIX_EPOCH;
        assert!(v.verify(data, &SnpCollateral::new(), at).is_err());
    }
});
