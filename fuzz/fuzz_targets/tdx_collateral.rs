//! Fuzz the DCAP collateral parser (QuoteCollateralV3 JSON, with the TCB info and QE
//! identity JSON, CRLs and PEM chains inside): no panic on any input.
#![no_main]

use attestation::tdx::collateral::Collateral;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Collateral::from_json(data) {
        let json = c.to_json().expect("parsed collateral serializes");
        let again = Collateral::from_json(json.as_bytes()).expect("serialized collateral parses");
        assert_eq!(again.digest(), c.digest());
    }
});
