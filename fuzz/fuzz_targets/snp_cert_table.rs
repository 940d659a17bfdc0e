//! Fuzz the extended-report certificate table parser and the certificate parsers it
//! feeds (DER and PEM).
//!
//! Invariants: nothing panics; a parsed table rebuilds into a table that parses to the
//! same entries.
#![no_main]

use attestation::snp::{AmdCertificate, AmdCrl, CertTable, SnpCollateral};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(table) = CertTable::parse(data) {
        let rebuilt = table.to_bytes().expect("a parsed table rebuilds");
        assert_eq!(
            CertTable::parse(&rebuilt).expect("rebuilt table parses"),
            table
        );
        let mut c = SnpCollateral::new();
        let _ = c.add_cert_table(&table);
    }
    if let Ok(cert) = AmdCertificate::from_der(data) {
        let _ = cert.vek_extensions();
        let _ = cert.product();
        let _ = cert.validity();
    }
    let _ = AmdCertificate::parse_all(data);
    let _ = AmdCrl::parse_all(data);
});
