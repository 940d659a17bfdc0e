//! Fuzz the TDX quote parser: no panic on any input, and whatever parses re-serializes
//! to the same bytes; the signature checks of the verifier run on what parses.
#![no_main]

use attestation::tdx::quote::Quote;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = Quote::parse(data) {
        let bytes = q.to_bytes().expect("a parsed quote serializes");
        assert_eq!(bytes, data, "parse/serialize round trip");
        let _ = attestation::tdx::pck::PckChain::from_pem(&q.signature_data.pck_cert_chain);
    }
    let _ = attestation::tdx::report::TdReport::from_bytes(data);
});
