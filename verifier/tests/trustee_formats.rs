//! Trustee's evidence formats (`SnpEvidence`, `TdxEvidence`) next to the cvm formats:
//! genuine vectors and the emulated platforms, the lossless SNP report conversion, the
//! CC event log replay, and the attacks (tampered report object, tampered log, mixed
//! or unknown members).

mod common;

use std::path::PathBuf;

use attestation::claims::{Claims, Tee, TeeClaims};
use attestation::snp::{CertTable, CertTableKind};
use attestation::tdx::emulated::{EmulatedTd, EmulatedTdxPlatform, TdConfig};
use attestation::ErrorKind;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use measured_boot::tdx::DirectBoot;
use serde_json::{json, Value};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, CertType};
use sev::parser::ByteParser;
use time::macros::datetime;
use time::OffsetDateTime;
use verifier::client::emulated::TdxGuest;
use verifier::evidence::{AttestationVerifier, EvidenceVerifier, VerifyFailure};
use verifier::evidence_formats::{parse_snp, parse_tdx, EvidenceFormat};

const REPORT_DATA: [u8; 64] = [0x42; 64];

fn data(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../attestation/tests/data")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Trustee's `SnpEvidence` JSON, built with the `sev` crate's own serde as Trustee's
/// attestation agent does.
fn trustee_snp(report: &[u8], table: Option<&[u8]>) -> Value {
    let report = AttestationReport::from_bytes(report).expect("sev parses the report");
    let chain = table.map(|t| {
        CertTable::parse(t)
            .expect("table")
            .entries
            .into_iter()
            .map(|e| {
                let ty = match e.kind {
                    CertTableKind::Ark => CertType::ARK,
                    CertTableKind::Ask => CertType::ASK,
                    CertTableKind::Vcek => CertType::VCEK,
                    CertTableKind::Vlek => CertType::VLEK,
                    CertTableKind::Crl => CertType::CRL,
                    CertTableKind::Other(_) => panic!("unexpected entry"),
                };
                CertTableEntry::new(ty, e.data)
            })
            .collect::<Vec<_>>()
    });
    json!({"attestation_report": report, "cert_chain": chain})
}

fn milan() -> (Vec<u8>, Vec<u8>) {
    let report = data("snp/milan-v2/report.bin");
    let table = CertTable {
        entries: vec![attestation::snp::CertTableEntry {
            kind: CertTableKind::Vcek,
            data: data("snp/milan-v2/vcek.der"),
        }],
    }
    .to_bytes()
    .unwrap();
    (report, table)
}

fn milan_report_data(report: &[u8]) -> [u8; 64] {
    report[0x50..0x90].try_into().unwrap()
}

const MILAN_AT: OffsetDateTime = datetime!(2024-06-01 00:00:00 UTC);

fn verify(
    v: &AttestationVerifier,
    tee: Tee,
    ev: &Value,
    rd: &[u8; 64],
    at: OffsetDateTime,
) -> Result<Claims, VerifyFailure> {
    v.verify(tee, &serde_json::to_vec(ev).unwrap(), rd, at)
}

#[test]
fn genuine_milan_report_round_trips_exactly_through_the_sev_json() {
    let (report, table) = milan();
    let ev = trustee_snp(&report, Some(&table));
    let parsed = parse_snp(&serde_json::to_vec(&ev).unwrap()).expect("parses");
    assert_eq!(parsed.format, EvidenceFormat::Trustee);
    assert_eq!(
        parsed.report, report,
        "the signed bytes must round-trip exactly"
    );
    assert_eq!(parsed.cert_table.as_deref(), Some(table.as_slice()));
    // The JSON is the sev crate's layout (what Trustee's agent sends).
    assert_eq!(ev["attestation_report"]["version"], 2);
    assert_eq!(ev["cert_chain"][0]["cert_type"], "VCEK");
}

#[test]
fn genuine_milan_evidence_verifies_in_both_formats_with_the_same_claims() {
    let v = AttestationVerifier::new(&[]).unwrap();
    let (report, table) = milan();
    let rd = milan_report_data(&report);
    let trustee = verify(
        &v,
        Tee::Snp,
        &trustee_snp(&report, Some(&table)),
        &rd,
        MILAN_AT,
    )
    .expect("Trustee SnpEvidence of the genuine Milan report");
    let cvm = json!({"report": B64.encode(&report), "cert_chain": B64.encode(&table)});
    let cvm = verify(&v, Tee::Snp, &cvm, &rd, MILAN_AT).expect("cvm format");
    assert_eq!(trustee, cvm);
    // Without the certificate list: collateral unavailable, not a crash or a pass.
    let bare = trustee_snp(&report, None);
    let e = verify(&v, Tee::Snp, &bare, &rd, MILAN_AT).unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{}", e.message);
}

#[test]
fn a_tampered_trustee_report_object_is_refused() {
    let v = AttestationVerifier::new(&[]).unwrap();
    let (report, table) = milan();
    let rd = milan_report_data(&report);

    // A changed signed field: the re-encoded bytes no longer match the signature.
    let mut ev = trustee_snp(&report, Some(&table));
    ev["attestation_report"]["guest_svn"] = json!(7);
    let e = verify(&v, Tee::Snp, &ev, &rd, MILAN_AT).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadSignature, "{}", e.message);

    // A value the version-2 Milan layout cannot hold would be dropped by the encoder
    // (and the signature would still verify): refused as malformed instead.
    let mut ev = trustee_snp(&report, Some(&table));
    ev["attestation_report"]["reported_tcb"]["fmc"] = json!(1);
    let e = verify(&v, Tee::Snp, &ev, &rd, MILAN_AT).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Malformed, "{}", e.message);
    assert!(e.message.contains("losslessly"), "{}", e.message);
    let mut ev = trustee_snp(&report, Some(&table));
    ev["attestation_report"]["cpuid_fam_id"] = json!(0x19);
    assert_eq!(
        verify(&v, Tee::Snp, &ev, &rd, MILAN_AT).unwrap_err().kind,
        ErrorKind::Malformed
    );

    // Unknown members, both formats at once, a terminator entry, duplicates.
    let mut ev = trustee_snp(&report, Some(&table));
    ev["extra"] = json!(1);
    assert_eq!(
        verify(&v, Tee::Snp, &ev, &rd, MILAN_AT).unwrap_err().kind,
        ErrorKind::Malformed
    );
    let mut ev = trustee_snp(&report, Some(&table));
    ev["report"] = json!(B64.encode(&report));
    assert_eq!(
        verify(&v, Tee::Snp, &ev, &rd, MILAN_AT).unwrap_err().kind,
        ErrorKind::Malformed
    );
    let mut ev = trustee_snp(&report, Some(&table));
    let chain = ev["cert_chain"].as_array_mut().unwrap();
    chain.insert(0, json!({"cert_type": "Empty", "data": [1]}));
    assert_eq!(
        verify(&v, Tee::Snp, &ev, &rd, MILAN_AT).unwrap_err().kind,
        ErrorKind::Malformed
    );
    let mut ev = trustee_snp(&report, Some(&table));
    let chain = ev["cert_chain"].as_array_mut().unwrap();
    chain.push(chain[0].clone());
    assert_eq!(
        verify(&v, Tee::Snp, &ev, &rd, MILAN_AT).unwrap_err().kind,
        ErrorKind::Malformed
    );
}

#[test]
fn emulated_snp_evidence_verifies_in_trustee_format() {
    let v = AttestationVerifier::new(&[emulated_dir()]).unwrap();
    let (report, table) = snp_guest().extended_report(&REPORT_DATA).unwrap();
    let ev = trustee_snp(&report, Some(&table));
    let claims = verify(&v, Tee::Snp, &ev, &REPORT_DATA, OffsetDateTime::now_utc())
        .expect("emulated SNP in Trustee format");
    assert_eq!(claims.measurement, MEASUREMENT.to_vec());
    // REPORT_DATA binding is checked in this format too.
    let e = verify(&v, Tee::Snp, &ev, &[0; 64], OffsetDateTime::now_utc()).unwrap_err();
    assert_eq!(e.check.as_deref(), Some("report-data"));
}

#[test]
fn genuine_tdx_quote_in_trustee_format_needs_collateral() {
    let quote = data("tdx/v4-uptodate/quote.bin");
    let ev = json!({"quote": B64.encode(&quote), "cc_eventlog": null});
    let parsed = parse_tdx(&serde_json::to_vec(&ev).unwrap()).unwrap();
    assert_eq!(parsed.format, EvidenceFormat::Trustee);
    assert_eq!(parsed.quote, quote);
    let v = AttestationVerifier::new(&[]).unwrap();
    let e = verify(
        &v,
        Tee::Tdx,
        &ev,
        &[0; 64],
        datetime!(2025-06-19 12:00:00 UTC),
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralUnavailable, "{}", e.message);

    // With the collateral member (the cvm extension) the same quote verifies.
    let coll: Value = serde_json::from_slice(&data("tdx/v4-uptodate/collateral.json")).unwrap();
    let ev = json!({"quote": B64.encode(&quote), "collateral": coll});
    let rd: [u8; 64] = attestation::tdx::Quote::parse(&quote)
        .unwrap()
        .body
        .report_data;
    verify(&v, Tee::Tdx, &ev, &rd, datetime!(2025-06-19 12:00:00 UTC)).expect("genuine quote");
    // A genuine CCEL from another TD does not replay to this quote's RTMRs.
    let mut ev = ev;
    ev["cc_eventlog"] = json!(B64.encode(data("tdx/ccel/CCEL_data_ovmf")));
    let e = verify(&v, Tee::Tdx, &ev, &rd, datetime!(2025-06-19 12:00:00 UTC)).unwrap_err();
    assert_eq!(e.check.as_deref(), Some("cc-eventlog"), "{}", e.message);
}

/// An emulated TD that booted `boot` (its RTMRs extended as the log says), with
/// evidence carrying the quote, the collateral and the log.
fn emulated_td_evidence(boot: &DirectBoot) -> (Value, Vec<u8>) {
    let platform = EmulatedTdxPlatform::open(&emulated_dir()).unwrap();
    let mut td = EmulatedTd::with_mrtd(TdConfig::default(), MEASUREMENT);
    let log = boot.events();
    for e in &log.events {
        td.extend_rtmr(e.rtmr().unwrap(), &e.digest).unwrap();
    }
    let guest = TdxGuest::new(platform, td).unwrap();
    let mut ev = verifier::client::kbs::EvidenceSource::evidence(&guest, &REPORT_DATA).unwrap();
    let bytes = log.to_bytes();
    ev["cc_eventlog"] = json!(B64.encode(&bytes));
    (ev, bytes)
}

#[test]
fn emulated_tdx_event_log_replays_and_exposes_boot_digests() {
    let v = AttestationVerifier::new(&[emulated_dir()]).unwrap();
    let boot = DirectBoot::measure(b"vmlinuz", Some(b"initrd"), Some("console=hvc0"));
    let (ev, _) = emulated_td_evidence(&boot);
    let claims = verify(&v, Tee::Tdx, &ev, &REPORT_DATA, OffsetDateTime::now_utc())
        .expect("the log replays");
    let TeeClaims::Tdx(tdx) = &claims.detail else {
        panic!("TDX claims")
    };
    let events = tdx.boot_events.as_ref().expect("boot events");
    assert_eq!(events.kernel, Some(boot.kernel));
    assert_eq!(events.initrd, Some(boot.initrd));
    assert_eq!(events.cmdline, Some(boot.cmdline));
    assert_eq!(events.events.len(), 3);

    // The policy can pin them.
    let pin = |kernel: [u8; 48]| attestation::policy::tdx::TdxPolicy {
        boot_digests: Some(attestation::policy::tdx::ExpectedBootDigests {
            kernel: Some(kernel),
            ..Default::default()
        }),
        ..Default::default()
    };
    pin(boot.kernel).check(tdx).expect("the pinned kernel");
    assert_eq!(pin([0; 48]).check(tdx).unwrap_err().check, "boot-digests");
}

#[test]
fn a_tampered_event_log_is_refused() {
    let v = AttestationVerifier::new(&[emulated_dir()]).unwrap();
    let boot = DirectBoot::measure(b"vmlinuz", Some(b"initrd"), Some("console=hvc0"));
    let (ev, log) = emulated_td_evidence(&boot);

    // Another kernel's digest in the log (the attacker wants policy to see a kernel the
    // TD did not boot): the replay no longer gives the quote's RTMR1.
    let evil = DirectBoot::measure(b"evil vmlinuz", Some(b"initrd"), Some("console=hvc0"));
    let mut tampered = ev.clone();
    tampered["cc_eventlog"] = json!(B64.encode(evil.events().to_bytes()));
    let e = verify(
        &v,
        Tee::Tdx,
        &tampered,
        &REPORT_DATA,
        OffsetDateTime::now_utc(),
    )
    .unwrap_err();
    assert_eq!(e.check.as_deref(), Some("cc-eventlog"), "{}", e.message);
    assert_eq!(e.kind, ErrorKind::BadSignature);
    assert!(e.message.contains("RTMR1"), "{}", e.message);

    // A dropped event (hiding an extension): RTMR2 no longer replays.
    let mut fewer = boot.events();
    fewer.events.pop();
    let mut tampered = ev.clone();
    tampered["cc_eventlog"] = json!(B64.encode(fewer.to_bytes()));
    let e = verify(
        &v,
        Tee::Tdx,
        &tampered,
        &REPORT_DATA,
        OffsetDateTime::now_utc(),
    )
    .unwrap_err();
    assert_eq!(e.check.as_deref(), Some("cc-eventlog"), "{}", e.message);

    // A truncated log: malformed.
    let mut tampered = ev.clone();
    tampered["cc_eventlog"] = json!(B64.encode(&log[..log.len() - 5]));
    let e = verify(
        &v,
        Tee::Tdx,
        &tampered,
        &REPORT_DATA,
        OffsetDateTime::now_utc(),
    )
    .unwrap_err();
    assert_eq!(
        (e.kind, e.check.as_deref()),
        (ErrorKind::Malformed, Some("cc-eventlog"))
    );

    // An older agent's separate AA event log, unknown members: malformed.
    for (k, val) in [
        ("aa_eventlog", json!("aW5pdA==")),
        ("eventlog", json!(null)),
    ] {
        let mut tampered = ev.clone();
        tampered[k] = val;
        let e = verify(
            &v,
            Tee::Tdx,
            &tampered,
            &REPORT_DATA,
            OffsetDateTime::now_utc(),
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed, "{k}: {}", e.message);
    }
}

/// The expected RTMR0..3 of Trustee's genuine CCEL vectors (Trustee's own replay test).
const GENUINE_CCEL: [(&str, [&str; 3]); 3] = [
    (
        "CCEL_data_ovmf",
        [
            "8566f998798db09443b244c62de9a3041fb02e2e6936c4396d784bba2e90177329ec5aba3bb484404f2ab9cc90abe193",
            "775b9f6bfe99f8a31396f0d0218e67ffa796d3b96ccf961cbb0deba48c79c00f082cda1a5567c1c16305f1fc210c13c6",
            "94eaf7a7bf398ed8d888c91057ae0261802e4f3df084213a76ca7f0b5055ac9d2241de43cd58d9e8b49c503bbf25f34a",
        ],
    ),
    (
        "CCEL_data_grub",
        [
            "cec0a104f691f60da2387fea3c2de00c4ac035e2bb479ff02edcce69039d9e9907f0b3e55031da3dc7038f423adebd79",
            "6c289e0c62182d41ebe97bdbc9872d10998a08eaa86adcdc684001a363207ee72942c7522cdf00a4bbc3d784bed7b670",
            "08919d017ba0e52cd6d966351c7de16fe76c1d3d3d3da4554239e4c7d16cb8b82a94e7eaea3a0e6e18eb690b999fd31e",
        ],
    ),
    (
        "CCEL_data_grub_gke",
        [
            "bc9945139042cf2cc75caf920aa57f14884ecfd7e893bccc51250c8ce90eb53ce72741e6adaa18183eb1331a87d4544a",
            "c17cb288a4dee302bb9ed8d27257a168f3264ad68cab53757f37eeaa7039657fa887cad65cf910e0fdc435ff110f8a7b",
            "334aeba2c985f8886cea97d1ecffbd512769d528b9a94009583db667ad7d2faa7d37fa145d75b192ceee2d2f10b2eb6d",
        ],
    ),
];

#[test]
fn genuine_ccel_logs_replay_and_tag_the_linux_boot() {
    use attestation::tdx::eventlog;
    for (name, rtmrs) in GENUINE_CCEL {
        let log = data(&format!("tdx/ccel/{name}"));
        let mut want = [[0u8; 48]; 4];
        for (w, h) in want.iter_mut().zip(rtmrs) {
            hex::decode_to_slice(h, w).unwrap();
        }
        let ev = eventlog::replay(&log, &want).unwrap_or_else(|e| panic!("{name}: {e}"));
        // OVMF and GRUB boots start the kernel as a UEFI application (RTMR1); the EFI
        // stub tags the command line and the initrd (RTMR2). The GKE boot is a UKI
        // (sections measured by systemd-stub): no Linux tags.
        assert!(ev.kernel.is_some(), "{name}: kernel");
        if name != "CCEL_data_grub_gke" {
            assert!(ev.cmdline.is_some() && ev.initrd.is_some(), "{name}: tags");
        }
        let mut wrong = want;
        wrong[2][0] ^= 1;
        let e = eventlog::replay(&log, &wrong).unwrap_err();
        assert!(e.to_string().contains("RTMR2"), "{name}: {e}");
    }
    // The OVMF log's tagged digests, from the log itself.
    let ev = eventlog::replay(&data("tdx/ccel/CCEL_data_ovmf"), &{
        let mut w = [[0u8; 48]; 4];
        for (w, h) in w.iter_mut().zip(GENUINE_CCEL[0].1) {
            hex::decode_to_slice(h, w).unwrap();
        }
        w
    })
    .unwrap();
    assert_eq!(&hex::encode(ev.cmdline.unwrap())[..16], "4230f84885a6f3f3");
    assert_eq!(&hex::encode(ev.initrd.unwrap())[..16], "b15af9286108d3d8");
    assert_eq!(&hex::encode(ev.kernel.unwrap())[..16], "a2ccae1e7d6c668c");
}

/// Runs `cvm-verifier verify TEE ARGS… --output json`: (exit code, JSON stdout).
fn cli(tee: &str, args: &[&str]) -> (i32, Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cvm-verifier"))
        .args(["verify", tee])
        .args(args)
        .args(["--output", "json"])
        .output()
        .expect("runs");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json)
}

fn write_json(dir: &tempfile::TempDir, name: &str, v: &Value) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn verify_snp_takes_evidence_in_either_format() {
    let dir = tempfile::tempdir().unwrap();
    let (report, table) = milan();
    let trustee = write_json(&dir, "trustee.json", &trustee_snp(&report, Some(&table)));
    let cvm = write_json(
        &dir,
        "cvm.json",
        &json!({"report": B64.encode(&report), "cert_chain": B64.encode(&table)}),
    );
    for f in [&trustee, &cvm] {
        let (code, j) = cli("snp", &["--evidence", f, "--at", "2024-06-01T00:00:00Z"]);
        assert_eq!(code, 0, "{f}: {j}");
        assert_eq!(j["claims"]["detail"]["product"], "Milan");
    }
    let mut bad = trustee_snp(&report, Some(&table));
    bad["attestation_report"]["vmpl"] = json!(1);
    let bad = write_json(&dir, "bad.json", &bad);
    let (code, j) = cli("snp", &["--evidence", &bad, "--at", "2024-06-01T00:00:00Z"]);
    assert_eq!(
        (code, j["error"]["kind"].as_str()),
        (1, Some("bad-signature")),
        "{j}"
    );
    let junk = write_json(&dir, "junk.json", &json!({"quote": "AA=="}));
    let (code, j) = cli("snp", &["--evidence", &junk]);
    assert_eq!(
        (code, j["error"]["kind"].as_str()),
        (1, Some("malformed")),
        "{j}"
    );
}

#[test]
fn verify_tdx_takes_evidence_and_replays_its_event_log() {
    let dir = tempfile::tempdir().unwrap();
    // Genuine quote in Trustee's format: collateral from --collateral.
    let quote = data("tdx/v4-uptodate/quote.bin");
    let ev = write_json(
        &dir,
        "tdx.json",
        &json!({"quote": B64.encode(&quote), "cc_eventlog": null}),
    );
    let at = ["--at", "2025-06-19T12:00:00Z"];
    let (code, j) = cli("tdx", &[&["--evidence", &ev][..], &at].concat());
    assert_eq!(
        (code, j["error"]["kind"].as_str()),
        (1, Some("collateral-unavailable")),
        "{j}"
    );
    let coll = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../attestation/tests/data/tdx/v4-uptodate/collateral.json");
    let coll = coll.to_str().unwrap();
    let (code, j) = cli(
        "tdx",
        &[
            &[
                "--evidence",
                &ev,
                "--collateral",
                coll,
                "--allow-tcb-status",
                "UpToDate",
            ][..],
            &at,
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{j}");

    // Emulated TD with a CC event log: replayed, boot digests in the claims.
    let boot = DirectBoot::measure(b"vmlinuz", Some(b"initrd"), Some("console=hvc0"));
    let (ev, _) = emulated_td_evidence(&boot);
    let good = write_json(&dir, "emu.json", &ev);
    let root = emulated_dir().join("tdx/root_ca.pem");
    let root = root.to_str().unwrap();
    let (code, j) = cli("tdx", &["--evidence", &good, "--trust-root", root]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(
        j["claims"]["detail"]["boot_events"]["kernel"],
        hex::encode(boot.kernel),
        "{j}"
    );
    let mut tampered = ev.clone();
    let evil = DirectBoot::measure(b"evil", Some(b"initrd"), Some("console=hvc0"));
    tampered["cc_eventlog"] = json!(B64.encode(evil.events().to_bytes()));
    let bad = write_json(&dir, "evil.json", &tampered);
    let (code, j) = cli("tdx", &["--evidence", &bad, "--trust-root", root]);
    assert_eq!(code, 1, "{j}");
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not replay"),
        "{j}"
    );
}

#[test]
fn the_fuzz_seeds_reach_the_trustee_parsers() {
    let seed = |name: &str| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/kbs_bodies")
            .join(name);
        let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        verifier::fuzzing::attest_request(&b[1..]).expect("the seed decodes")
    };
    let snp = seed("attest-snp-trustee-genuine.bin");
    let s = parse_snp(&snp.evidence).expect("Trustee SnpEvidence");
    assert_eq!(s.format, EvidenceFormat::Trustee);
    assert_eq!(s.report, data("snp/milan-v2/report.bin"));
    for name in [
        "attest-tdx-trustee-ccel.bin",
        "attest-tdx-emulated-ccel.bin",
    ] {
        let t = parse_tdx(&seed(name).evidence).expect(name);
        let log = t.cc_eventlog.expect("a CC event log");
        attestation::tdx::eventlog::parse(&log).expect("the log parses");
    }
}
