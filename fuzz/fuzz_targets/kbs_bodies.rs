//! Fuzzes the KBS request bodies an unauthenticated guest sends the verifier, through
//! `verifier::fuzzing` (the handlers' own parsing, in the handlers' order).
//!
//! Input: byte 0 picks the body, the rest is the body.
//! - 0 mod 3: `/kbs/v0/auth` (`kbs_types::Request`, version, TEE, `extra-params`);
//! - 1 and 2 mod 3: `/kbs/v0/attest` (`kbs_types::Attestation`, the TEE key JWK, the
//!   REPORT_DATA binding), then the evidence verifier on its `primary_evidence` (cvm or
//!   Trustee format, `verifier::evidence_formats`, with a TDX CC event log replayed) as
//!   an SNP (1) or TDX (2) session would, with AMD's and Intel's real roots, at a time
//!   inside the validity of the genuine vectors in the seed corpus.
//!
//! Invariants: nothing panics; an accepted auth body names a valid workload; the binding
//! is deterministic; no evidence verifies against a REPORT_DATA the input chose (the
//! fuzzer would need a SHA-384 preimage or a forged AMD/Intel signature).
#![no_main]

use std::sync::OnceLock;

use attestation::claims::Tee;
use libfuzzer_sys::fuzz_target;
use verifier::evidence::{AttestationVerifier, EvidenceVerifier};
use verifier::fuzzing;

fn verifier() -> &'static AttestationVerifier {
    static V: OnceLock<AttestationVerifier> = OnceLock::new();
    V.get_or_init(|| AttestationVerifier::new(&[]).expect("the built-in trust roots load"))
}

fuzz_target!(|data: &[u8]| {
    let [sel, body @ ..] = data else { return };
    match sel % 3 {
        0 => {
            if let Ok((tee, hint)) = fuzzing::auth_request(body) {
                assert!(tee == "snp" || tee == "tdx");
                if let Some(h) = hint {
                    assert!(verifier::store::workloads::valid_segment(&h));
                    assert!(!h.contains('/'));
                }
            }
        }
        s => {
            let Ok(a) = fuzzing::attest_request(body) else {
                return;
            };
            assert_eq!(&a.expected_report_data[48..], &[0u8; 16]);
            let again = fuzzing::attest_request(body).expect("a body decodes twice");
            assert_eq!(again.expected_report_data, a.expected_report_data);
            let tee = if s == 1 { Tee::Snp } else { Tee::Tdx };
            // 2025-06-19T12:00:00Z: the genuine SNP VCEK and TDX v4 collateral are valid.
            let at = time::OffsetDateTime::from_unix_timestamp(1_750_334_400).unwrap();
            let r = verifier().verify(tee, &a.evidence, &a.expected_report_data, at);
            assert!(
                r.is_err(),
                "evidence verified for a REPORT_DATA the fuzzer chose"
            );
        }
    }
});
