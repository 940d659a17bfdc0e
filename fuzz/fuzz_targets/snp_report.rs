//! Fuzz the SEV-SNP ATTESTATION_REPORT parser and the verifier behind it.
//!
//! Structure-aware: a report is exactly 0x4A0 bytes, so besides the raw input (which
//! exercises the length check) every input is padded with zeros or truncated to 0x4A0
//! bytes and that report goes through the parser and the full verifier, with the genuine
//! Milan VCEK, VLEK and their ASK/ARK/ASVK chains of the seed corpus as collateral, at a
//! time when all of them are valid.
//!
//! Invariants: parsing never panics; an accepted report re-serializes to exactly its
//! bytes; a report verifies only if its signed region (0x000..0x2A0) is byte for byte
//! that of a genuine report (no forgery, no unsigned field changing the claims).
#![no_main]

use attestation::snp::{AttestationReport, SnpCollateral, SnpVerifier};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const REPORT_LEN: usize = 0x4A0;
const SIGNED_LEN: usize = 0x2A0;
const GENUINE: [&[u8]; 2] = [
    include_bytes!("../corpus/snp_report/genuine-milan-v2.bin"),
    include_bytes!("../corpus/snp_report/genuine-milan-vlek-v3.bin"),
];

fn verifier() -> &'static (SnpVerifier, SnpCollateral) {
    static V: OnceLock<(SnpVerifier, SnpCollateral)> = OnceLock::new();
    V.get_or_init(|| {
        let mut c = SnpCollateral::new();
        for (bytes, what) in [
            (
                &include_bytes!("../corpus/snp_cert_table/genuine-milan-vcek.der")[..],
                "vcek",
            ),
            (
                &include_bytes!("../corpus/snp_cert_table/genuine-milan-ask-ark.pem")[..],
                "ask/ark",
            ),
            (
                &include_bytes!("../corpus/snp_cert_table/genuine-milan-vlek.der")[..],
                "vlek",
            ),
            (
                &include_bytes!("../corpus/snp_cert_table/genuine-milan-ask-ark-asvk.pem")[..],
                "asvk",
            ),
        ] {
            c.add_certificates(bytes, what)
                .expect("the genuine certificates parse");
        }
        (SnpVerifier::amd().expect("AMD's roots load"), c)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = AttestationReport::parse(data) {
        assert_eq!(data.len(), REPORT_LEN);
        let bytes = report.to_bytes().expect("a parsed report serializes");
        assert_eq!(&bytes[..], data, "parse/serialize must be exact inverses");
    }
    let mut fixed = [0u8; REPORT_LEN];
    let n = data.len().min(REPORT_LEN);
    fixed[..n].copy_from_slice(&data[..n]);
    if let Ok(report) = AttestationReport::parse(&fixed) {
        let bytes = report.to_bytes().expect("a parsed report serializes");
        assert_eq!(
            bytes[..],
            fixed[..],
            "parse/serialize must be exact inverses"
        );
        let _ = report.product();
    }
    let (v, collateral) = verifier();
    // 2025-06-19T12:00:00Z: inside the VCEK's and the VLEK's validity.
    let at = time::OffsetDateTime::from_unix_timestamp(1_750_334_400).unwrap();
    if v.verify(&fixed, collateral, at).is_ok() {
        assert!(
            GENUINE
                .iter()
                .any(|g| g[..SIGNED_LEN] == fixed[..SIGNED_LEN]),
            "a report that is not genuine verified"
        );
    }
});
