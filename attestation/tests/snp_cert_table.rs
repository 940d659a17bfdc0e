//! The extended-report certificate table: our builder matches the `sev` crate's byte
//! for byte, a table of AMD's genuine Milan certificates verifies the genuine report,
//! and arbitrary input never panics the parser.

use attestation::snp::cert_table::{CertTable, CertTableEntry, CertTableKind};
use attestation::snp::{AmdCertificate, CertKind, SnpCollateral, SnpVerifier};
use proptest::prelude::*;
use time::macros::datetime;

mod snp_common;
use snp_common::data;

fn milan_table() -> CertTable {
    let chain = AmdCertificate::parse_all(&data("milan-v2/ask_ark.pem")).expect("chain");
    let der = |k: CertKind| {
        chain
            .iter()
            .find(|c| c.kind() == k)
            .expect("present")
            .der()
            .to_vec()
    };
    CertTable {
        entries: vec![
            CertTableEntry {
                kind: CertTableKind::Ark,
                data: der(CertKind::Ark),
            },
            CertTableEntry {
                kind: CertTableKind::Ask,
                data: der(CertKind::Ask),
            },
            CertTableEntry {
                kind: CertTableKind::Vcek,
                data: data("milan-v2/vcek.der"),
            },
        ],
    }
}

#[test]
fn builder_matches_the_sev_crate() {
    use sev::firmware::host::{CertTableEntry as SevEntry, CertType};
    let ours = milan_table();
    let theirs: Vec<SevEntry> = ours
        .entries
        .iter()
        .map(|e| {
            let t = match e.kind {
                CertTableKind::Ark => CertType::ARK,
                CertTableKind::Ask => CertType::ASK,
                CertTableKind::Vcek => CertType::VCEK,
                _ => unreachable!("only ARK, ASK and VCEK entries here"),
            };
            SevEntry::new(t, e.data.clone())
        })
        .collect();
    let sev_bytes = SevEntry::cert_table_to_vec_bytes(&theirs).expect("sev builds");
    assert_eq!(ours.to_bytes().expect("we build"), sev_bytes);
    assert_eq!(
        CertTable::parse(&sev_bytes).expect("we parse sev's table"),
        ours
    );
}

#[test]
fn genuine_report_verifies_from_a_certificate_table() {
    let mut bytes = milan_table().to_bytes().expect("table");
    bytes.resize(4 * 4096, 0); // the kernel hands out whole pages
    let table = CertTable::parse(&bytes).expect("parses");
    let mut c = SnpCollateral::new();
    c.add_cert_table(&table).expect("collateral");
    let claims = SnpVerifier::amd()
        .expect("roots")
        .verify(
            &data("milan-v2/report.bin"),
            &c,
            datetime!(2024-06-01 00:00 UTC),
        )
        .expect("verifies");
    assert_eq!(claims.trust, attestation::claims::TrustLevel::Hardware);
}

proptest! {
    #[test]
    fn arbitrary_tables_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(t) = CertTable::parse(&bytes) {
            let rebuilt = t.to_bytes().expect("rebuilds");
            prop_assert_eq!(CertTable::parse(&rebuilt).expect("reparses"), t);
        }
    }

    #[test]
    fn mutated_genuine_tables_never_panic(pos in 0usize..96, val in any::<u8>()) {
        let mut bytes = milan_table().to_bytes().expect("table");
        bytes[pos] = val;
        let _ = CertTable::parse(&bytes);
    }

    #[test]
    fn arbitrary_reports_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0x4A0), v in prop_oneof![Just(2u32), Just(3), Just(5)]) {
        bytes[..4].copy_from_slice(&v.to_le_bytes());
        if let Ok(r) = attestation::snp::AttestationReport::parse(&bytes) {
            prop_assert_eq!(r.to_bytes().expect("serializes").to_vec(), bytes);
        }
    }
}
