//! `cvm emulated report snp`: the report written by the CLI verifies with the
//! platform's trust anchor, carries the requested fields, and bad arguments exit 2.

use std::process::Command;

use attestation::snp::{Product, SnpCollateral, SnpVerifier, TrustRoots};

#[path = "../../attestation/tests/snp_common/mod.rs"]
mod snp_common;

fn cvm(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(args)
        .output()
        .expect("cvm runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn report_snp_writes_a_verifiable_report_and_cert_table() {
    let dir = snp_common::platform_dir(Product::Milan);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (report, table) = (tmp.path().join("report.bin"), tmp.path().join("certs.bin"));
    let measurement = "ab".repeat(48);
    let (code, err) = cvm(&[
        "emulated",
        "report",
        "snp",
        "--dir",
        dir.to_str().expect("utf8"),
        "--report-data",
        "0102",
        "--measurement",
        &measurement,
        "--host-data",
        "ff",
        "--vmpl",
        "1",
        "--version",
        "5",
        "--out",
        report.to_str().expect("utf8"),
        "--cert-table-out",
        table.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{err}");
    let anchor = std::fs::read(dir.join("snp/trust-anchor.pem")).expect("anchor");
    let roots = TrustRoots::amd()
        .expect("roots")
        .with_operator_roots(&anchor)
        .expect("anchor loads");
    let mut c = SnpCollateral::new();
    let t =
        attestation::snp::CertTable::parse(&std::fs::read(&table).expect("table")).expect("parses");
    c.add_cert_table(&t).expect("collateral");
    let bytes = std::fs::read(&report).expect("report");
    let claims = SnpVerifier::new(roots)
        .verify(&bytes, &c, time::OffsetDateTime::now_utc())
        .expect("verifies");
    assert_eq!(hex::encode(&claims.measurement), measurement);
    assert_eq!(&claims.report_data[..3], &[1, 2, 0]);
    assert_eq!(claims.host_data[0], 0xff);
    let attestation::claims::TeeClaims::Snp(snp) = claims.detail else {
        panic!("SNP claims")
    };
    assert_eq!((snp.vmpl, snp.version), (1, 5));
}

#[test]
fn report_snp_refuses_bad_arguments() {
    let dir = snp_common::platform_dir(Product::Milan);
    let d = dir.to_str().expect("utf8");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("r.bin");
    let o = out.to_str().expect("utf8");
    assert_eq!(
        cvm(&[
            "emulated",
            "report",
            "snp",
            "--dir",
            d,
            "--report-data",
            "zz",
            "--out",
            o
        ])
        .0,
        2
    );
    assert_eq!(
        cvm(&[
            "emulated",
            "report",
            "snp",
            "--dir",
            d,
            "--report-data",
            "00",
            "--measurement",
            "00",
            "--out",
            o
        ])
        .0,
        2
    );
    assert_eq!(
        cvm(&[
            "emulated",
            "report",
            "snp",
            "--dir",
            "/nonexistent",
            "--report-data",
            "00",
            "--out",
            o
        ])
        .0,
        2
    );
    // Refused by the emulated PSP: policy bit 17 clear, VMPL out of range.
    assert_eq!(
        cvm(&[
            "emulated",
            "report",
            "snp",
            "--dir",
            d,
            "--report-data",
            "00",
            "--policy",
            "0",
            "--out",
            o
        ])
        .0,
        1
    );
    assert_eq!(
        cvm(&[
            "emulated",
            "report",
            "snp",
            "--dir",
            d,
            "--report-data",
            "00",
            "--vmpl",
            "4",
            "--out",
            o
        ])
        .0,
        1
    );
}
