//! Generates the seed corpus of the fuzz targets in `fuzz/` from the emulated SNP and
//! TDX platforms, synthetic firmware images and hand-laid device requests; the genuine
//! vectors committed in the corpus (`genuine-*`) are read back to build the certificate
//! tables and KBS bodies that carry them.
//!
//! ```text
//! cargo run -p attestation --example fuzz_corpus -- fuzz/corpus
//! ```
//!
//! `fuzz/gen-corpus` runs this and the LUKS2 generator of the `luks` crate. The emulated
//! platforms use fresh keys, so every run writes different bytes with the same shapes.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use attestation::snp::emulated::{
    EmulatedSnpConfig, EmulatedSnpPlatform, FinishParams, ReportRequest,
};
use attestation::snp::{AmdCertificate, CertKind, CertTable, CertTableEntry, CertTableKind};
use attestation::tdx::emulated::{
    CollateralOptions, EmulatedTd, EmulatedTdxPlatform, PlatformOptions, TdConfig,
};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use measured_boot::firmware::{
    FOOTER_GUID, SEV_ES_RESET_BLOCK_GUID, SEV_METADATA_GUID, TDX_METADATA_OFFSET_GUID,
};
use measured_boot::testing::{asev, ovmf_like, sev_image, tdvf, tdx_image, ImageBuilder};
use sha2::{Digest, Sha384};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: fuzz_corpus <corpus directory>")?,
    );
    let w = Writer(out);
    let snp = snp(&w)?;
    let tdx = tdx(&w)?;
    firmware(&w)?;
    virtio_blk(&w)?;
    vsock(&w)?;
    kbs_bodies(&w, &snp, &tdx)?;
    verifier_http(&w)?;
    guest_agent(&w)?;
    Ok(())
}

struct Writer(PathBuf);

impl Writer {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.0.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)?;
        Ok(())
    }

    fn get(&self, target: &str, name: &str) -> Result<Vec<u8>> {
        let p = self.0.join(target).join(name);
        fs::read(&p).map_err(|e| format!("{}: {e}", p.display()).into())
    }
}

/// A seed of a target whose byte 0 selects the parser.
fn sel(s: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![s];
    v.extend_from_slice(body);
    v
}

/// SNP evidence for the KBS bodies: (report, certificate table) pairs.
struct Snp {
    emulated: (Vec<u8>, Vec<u8>),
    genuine: (Vec<u8>, Vec<u8>),
}

fn table(certs: &[AmdCertificate]) -> Result<Vec<u8>> {
    let entries = certs
        .iter()
        .map(|c| CertTableEntry {
            kind: match c.kind() {
                CertKind::Ark => CertTableKind::Ark,
                CertKind::Ask | CertKind::Asvk => CertTableKind::Ask,
                CertKind::Vcek => CertTableKind::Vcek,
                CertKind::Vlek => CertTableKind::Vlek,
            },
            data: c.der().to_vec(),
        })
        .collect();
    Ok(CertTable { entries }.to_bytes()?)
}

fn snp(w: &Writer) -> Result<Snp> {
    let p = EmulatedSnpPlatform::generate(&EmulatedSnpConfig::default())?;
    let guest = p
        .launch_start_from(0x30000, [0x5a; 48])?
        .finish(FinishParams::default())?;
    let rd = [0x11; 64];
    let mut emulated = None;
    for (version, vmpl) in [(3, 0), (5, 0), (3, 2)] {
        let (report, t) = guest.extended_report(&ReportRequest {
            report_data: rd,
            vmpl,
            version,
        })?;
        w.put(
            "snp_report",
            &format!("emulated-v{version}-vmpl{vmpl}.bin"),
            &report,
        )?;
        emulated.get_or_insert((report.to_vec(), t.to_bytes()?));
    }
    let emulated = emulated.ok_or("no report")?;
    w.put("snp_cert_table", "emulated-table.bin", &emulated.1)?;
    w.put("snp_cert_table", "emulated-vcek.der", p.vcek().der())?;
    let now = SystemTime::now();
    let crl = p.crl(&[p.vcek()], now, now + Duration::from_secs(86_400))?;
    w.put("snp_cert_table", "emulated-crl.der", crl.der())?;
    let mut with_crl = p.cert_table();
    with_crl.entries.push(CertTableEntry {
        kind: CertTableKind::Crl,
        data: crl.der().to_vec(),
    });
    w.put(
        "snp_cert_table",
        "emulated-table-crl.bin",
        &with_crl.to_bytes()?,
    )?;

    // Tables of the genuine certificates, as a host would send them with the reports.
    let mut milan = AmdCertificate::parse_all(&w.get("snp_cert_table", "genuine-milan-vcek.der")?)?;
    milan.extend(AmdCertificate::parse_all(
        &w.get("snp_cert_table", "genuine-milan-ask-ark.pem")?,
    )?);
    let milan = table(&milan)?;
    w.put("snp_cert_table", "genuine-milan-table.bin", &milan)?;
    let mut vlek = AmdCertificate::parse_all(&w.get("snp_cert_table", "genuine-milan-vlek.der")?)?;
    vlek.extend(
        AmdCertificate::parse_all(&w.get("snp_cert_table", "genuine-milan-ask-ark-asvk.pem")?)?
            .into_iter()
            .filter(|c| c.kind() != CertKind::Ask),
    );
    w.put(
        "snp_cert_table",
        "genuine-milan-vlek-table.bin",
        &table(&vlek)?,
    )?;
    let genuine = (w.get("snp_report", "genuine-milan-v2.bin")?, milan);
    Ok(Snp { emulated, genuine })
}

/// TDX evidence for the KBS bodies: (quote, collateral JSON) pairs.
struct Tdx {
    emulated: (Vec<u8>, String),
    genuine: (Vec<u8>, String),
}

fn tdx(w: &Writer) -> Result<Tdx> {
    let p =
        EmulatedTdxPlatform::generate(PlatformOptions::default(), time::OffsetDateTime::now_utc())?;
    let td = EmulatedTd::with_mrtd(TdConfig::default(), [0x3c; 48]);
    let mut emulated = None;
    for version in [4, 5] {
        let q = p.quote_td(&td, &[0x22; 64], version)?.to_bytes()?;
        w.put("tdx_quote", &format!("emulated-v{version}.bin"), &q)?;
        emulated.get_or_insert(q);
    }
    let coll = p.collateral(&CollateralOptions::default())?.to_json()?;
    w.put("tdx_collateral", "emulated.json", coll.as_bytes())?;
    let genuine = (
        w.get("tdx_quote", "genuine-v4-uptodate.bin")?,
        String::from_utf8(w.get("tdx_collateral", "genuine-v4-uptodate.json")?)?,
    );
    Ok(Tdx {
        emulated: (emulated.ok_or("no quote")?, coll),
        genuine,
    })
}

fn firmware(w: &Writer) -> Result<()> {
    w.put(
        "firmware_metadata",
        "ovmf-like-64k.bin",
        &ovmf_like(0x10000),
    )?;
    w.put(
        "firmware_metadata",
        "sev-only-8k.bin",
        &sev_image(
            0x2000,
            &[
                (0x80_0000, 0x1000, 1),
                (0x80_1000, 0x1000, 2),
                (0x80_2000, 0x1000, 3),
            ],
        ),
    )?;
    w.put(
        "firmware_metadata",
        "tdx-only-8k.bin",
        &tdx_image(
            0x2000,
            &[
                (0, 0x2000, 0xffff_e000, 0x2000, 0, 1),
                (0, 0, 0x80_0000, 0x1000, 2, 0),
            ],
        ),
    )?;
    // Both metadata blocks near the end of a small image, plus a reset block entry.
    let size = 0x3000;
    let mut b = ImageBuilder::default();
    b.blobs.push((
        0x1000,
        asev(&[(0x80_0000, 0x1000, 1), (0x80_1000, 0x1000, 3)]),
    ));
    b.blobs.push((
        0x1400,
        tdvf(&[
            (0, 0x3000, 0xffff_d000, 0x3000, 0, 1),
            (0, 0, 0x80_0000, 0x2000, 3, 0),
        ]),
    ));
    b.entries.push((
        SEV_METADATA_GUID,
        ((size - 0x1000) as u32).to_le_bytes().to_vec(),
    ));
    b.entries.push((
        TDX_METADATA_OFFSET_GUID,
        ((size - 0x1400) as u32).to_le_bytes().to_vec(),
    ));
    b.entries
        .push((SEV_ES_RESET_BLOCK_GUID, 0x80_0004u32.to_le_bytes().to_vec()));
    w.put("firmware_metadata", "sev-tdx-12k.bin", &b.build(size))?;
    // Just the footer GUID table (entries the parsers skip).
    let mut only = ImageBuilder::default();
    only.entries.push((FOOTER_GUID, vec![1, 2, 3, 4]));
    w.put(
        "firmware_metadata",
        "footer-only-4k.bin",
        &only.build(0x1000),
    )?;
    Ok(())
}

/// One virtio split-queue descriptor.
fn desc(mem: &mut [u8], table: usize, i: usize, addr: u64, len: u32, flags: u16, next: u16) {
    let d = &mut mem[table + 16 * i..table + 16 * (i + 1)];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
}

fn virtio_blk(w: &Writer) -> Result<()> {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    // Harness: bytes 0..4 pick queue size 16 (and read-only if bit 7), the descriptor
    // table at 0, the available ring at 0x8000, the used ring at 0xC000; the rest is
    // guest memory from 0.
    let build = |ctl: u8, reqs: &[(u32, u64, u32)]| {
        let mut mem = vec![0u8; 0x8000 + 4 + 2 * 16];
        let mut heads = Vec::new();
        for (i, (ty, sector, len)) in reqs.iter().enumerate() {
            let buf = 0x1000 + 0x1000 * i;
            mem[buf..buf + 4].copy_from_slice(&ty.to_le_bytes());
            mem[buf + 8..buf + 16].copy_from_slice(&sector.to_le_bytes());
            let d = 3 * i;
            desc(&mut mem, 0, d, buf as u64, 16, NEXT, (d + 1) as u16);
            let data_flags = if *ty == 1 { NEXT } else { NEXT | WRITE };
            for (j, b) in mem[buf + 0x100..buf + 0x100 + *len as usize]
                .iter_mut()
                .enumerate()
            {
                *b = j as u8;
            }
            desc(
                &mut mem,
                0,
                d + 1,
                (buf + 0x100) as u64,
                *len,
                data_flags,
                (d + 2) as u16,
            );
            desc(&mut mem, 0, d + 2, (buf + 0xF00) as u64, 1, WRITE, 0);
            heads.push(d as u16);
        }
        let avail = 0x8000;
        mem[avail + 2..avail + 4].copy_from_slice(&(heads.len() as u16).to_le_bytes());
        for (i, h) in heads.iter().enumerate() {
            mem[avail + 4 + 2 * i..avail + 6 + 2 * i].copy_from_slice(&h.to_le_bytes());
        }
        let mut v = vec![ctl, 0, 0, 0];
        v.extend_from_slice(&mem);
        v
    };
    // Types: 0 read, 1 write, 4 flush, 8 get id.
    w.put(
        "virtio_blk",
        "read-write-flush-getid.bin",
        &build(4, &[(0, 0, 512), (1, 1, 1024), (4, 0, 0), (8, 0, 20)]),
    )?;
    w.put(
        "virtio_blk",
        "read-past-end.bin",
        &build(4, &[(0, 15, 1024), (0, 1 << 40, 512)]),
    )?;
    w.put(
        "virtio_blk",
        "read-only-write.bin",
        &build(0x84, &[(1, 0, 512), (0, 0, 4096)]),
    )?;
    w.put(
        "virtio_blk",
        "unsupported-type.bin",
        &build(4, &[(0x42, 0, 512), (1, 0, 100)]),
    )?;
    Ok(())
}

fn vsock(w: &Writer) -> Result<()> {
    // Packet mode (byte 0 odd); byte 1: receive buffers; then records of a control byte
    // (1: guest CID 3 -> host CID 2, stream; 2: to port 1 from port ctl>>4; 4: header
    // length = payload; 8: split over two descriptors), a 44-byte header, the payload.
    const REQUEST: u16 = 1;
    const RST: u16 = 3;
    const SHUTDOWN: u16 = 4;
    const RW: u16 = 5;
    const CREDIT_UPDATE: u16 = 6;
    const CREDIT_REQUEST: u16 = 7;
    let pkt = |ctl: u8, op: u16, flags: u32, payload: &[u8]| {
        let mut h = [0u8; 44];
        h[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        h[30..32].copy_from_slice(&op.to_le_bytes());
        h[32..36].copy_from_slice(&flags.to_le_bytes());
        h[36..40].copy_from_slice(&65536u32.to_le_bytes());
        let mut v = vec![ctl];
        v.extend_from_slice(&h);
        v.extend_from_slice(payload);
        v
    };
    let seed = |rx: u8, pkts: &[Vec<u8>]| {
        let mut v = vec![1, rx];
        for p in pkts {
            v.extend_from_slice(p);
        }
        // The harness reads a record only while more than a bare header remains.
        v.push(0);
        v
    };
    let c = 0x10 | 1 | 2 | 4;
    w.put(
        "vsock",
        "connect-rw-shutdown.bin",
        &seed(
            16,
            &[
                pkt(c, REQUEST, 0, b""),
                pkt(c, RW, 0, b"GET / HTTP/1.1\r\n\r\n"),
                pkt(c | 8, RW, 0, b"split payload"),
                pkt(c, SHUTDOWN, 3, b""),
            ],
        ),
    )?;
    w.put(
        "vsock",
        "connect-credit-rst.bin",
        &seed(
            2,
            &[
                pkt(c, REQUEST, 0, b""),
                pkt(c, CREDIT_REQUEST, 0, b""),
                pkt(c, CREDIT_UPDATE, 0, b""),
                pkt(c, RST, 0, b""),
            ],
        ),
    )?;
    w.put(
        "vsock",
        "no-listener.bin",
        &seed(
            4,
            &[pkt(0x20 | 1 | 4, REQUEST, 0, b""), pkt(1 | 4, RW, 0, b"x")],
        ),
    )?;
    Ok(())
}

/// An EC TEE key JWK and the JCS of its runtime data with `nonce` (RFC 8785: members
/// sorted, no whitespace), and REPORT_DATA as `verifier::protocol::report_data` computes
/// it.
fn runtime_data(nonce: &str, p384: bool) -> (String, [u8; 64]) {
    let (crv, x, y) = if p384 {
        let k = p384::SecretKey::random(&mut rand_core::OsRng);
        let p =
            p384::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&k.public_key(), false);
        (
            "P-384",
            B64URL.encode(p.x().unwrap()),
            B64URL.encode(p.y().unwrap()),
        )
    } else {
        let k = p256::SecretKey::random(&mut rand_core::OsRng);
        let p =
            p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&k.public_key(), false);
        (
            "P-256",
            B64URL.encode(p.x().unwrap()),
            B64URL.encode(p.y().unwrap()),
        )
    };
    let jcs = format!(
        r#"{{"nonce":"{nonce}","tee-pubkey":{{"alg":"ECDH-ES+A256KW","crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}}}"#
    );
    // REPORT_DATA binds the runtime data plus the (empty) additional evidence, as
    // Trustee's KBS does.
    let bound = format!(r#"{{"additional-evidence":"",{}"#, &jcs[1..]);
    let mut rd = [0u8; 64];
    rd[..48].copy_from_slice(&Sha384::digest(bound.as_bytes()));
    (jcs, rd)
}

fn attest_body(runtime: &str, evidence: &serde_json::Value) -> Vec<u8> {
    let body = format!(
        r#"{{"runtime-data":{runtime},"tee-evidence":{{"primary_evidence":{evidence},"additional_evidence":""}}}}"#
    );
    body.into_bytes()
}

fn kbs_bodies(w: &Writer, snp: &Snp, tdx: &Tdx) -> Result<()> {
    for (name, body) in [
        (
            "auth-snp.bin",
            r#"{"version":"0.4.0","tee":"snp","extra-params":{}}"#,
        ),
        (
            "auth-tdx-workload.bin",
            r#"{"version":"0.4.2","tee":"tdx","extra-params":{"workload":"demo-1.0_x"}}"#,
        ),
        (
            "auth-bad-workload.bin",
            r#"{"version":"0.4.0","tee":"snp","extra-params":{"workload":"../x"}}"#,
        ),
        (
            "auth-other-tee.bin",
            r#"{"version":"0.4.0","tee":"az-snp-vtpm","extra-params":""}"#,
        ),
        (
            "auth-old-version.bin",
            r#"{"version":"0.3.0","tee":"sample","extra-params":{"workload":7}}"#,
        ),
    ] {
        w.put("kbs_bodies", name, &sel(0, body.as_bytes()))?;
    }
    let nonce = B64.encode([7u8; 32]);
    let (rt, _) = runtime_data(&nonce, false);
    let ev = serde_json::json!({"report": B64.encode(&snp.emulated.0), "cert_chain": B64.encode(&snp.emulated.1)});
    w.put(
        "kbs_bodies",
        "attest-snp-emulated.bin",
        &sel(1, &attest_body(&rt, &ev)),
    )?;
    let (rt384, _) = runtime_data(&nonce, true);
    let ev = serde_json::json!({"report": B64.encode(&snp.genuine.0), "cert_chain": B64.encode(&snp.genuine.1)});
    w.put(
        "kbs_bodies",
        "attest-snp-genuine.bin",
        &sel(1, &attest_body(&rt384, &ev)),
    )?;
    let ev = serde_json::json!({"report": B64URL.encode(&snp.genuine.0)});
    w.put(
        "kbs_bodies",
        "attest-snp-no-chain.bin",
        &sel(1, &attest_body(&rt, &ev)),
    )?;
    let coll: serde_json::Value = serde_json::from_str(&tdx.emulated.1)?;
    let ev = serde_json::json!({"quote": B64.encode(&tdx.emulated.0), "collateral": coll});
    w.put(
        "kbs_bodies",
        "attest-tdx-emulated.bin",
        &sel(2, &attest_body(&rt, &ev)),
    )?;
    let coll: serde_json::Value = serde_json::from_str(&tdx.genuine.1)?;
    let ev = serde_json::json!({"quote": B64.encode(&tdx.genuine.0), "collateral": coll});
    w.put(
        "kbs_bodies",
        "attest-tdx-genuine.bin",
        &sel(2, &attest_body(&rt384, &ev)),
    )?;
    // Trustee's formats (verifier::evidence_formats): SnpEvidence with the sev crate's
    // report object and certificate list; TdxEvidence with a CC event log, alone and
    // with the cvm collateral member.
    {
        use sev::parser::ByteParser;
        let report = sev::firmware::guest::AttestationReport::from_bytes(&snp.genuine.0)?;
        let chain: Vec<sev::firmware::host::CertTableEntry> = CertTable::parse(&snp.genuine.1)?
            .entries
            .into_iter()
            .filter(|e| e.kind == CertTableKind::Vcek)
            .map(|e| {
                sev::firmware::host::CertTableEntry::new(
                    sev::firmware::host::CertType::VCEK,
                    e.data,
                )
            })
            .collect();
        let ev = serde_json::json!({"attestation_report": report, "cert_chain": chain});
        w.put(
            "kbs_bodies",
            "attest-snp-trustee-genuine.bin",
            &sel(1, &attest_body(&rt384, &ev)),
        )?;
    }
    let log =
        measured_boot::tdx::DirectBoot::measure(b"kernel", Some(b"initrd"), Some("console=hvc0"))
            .events()
            .to_bytes();
    let ev =
        serde_json::json!({"quote": B64.encode(&tdx.genuine.0), "cc_eventlog": B64.encode(&log)});
    w.put(
        "kbs_bodies",
        "attest-tdx-trustee-ccel.bin",
        &sel(2, &attest_body(&rt, &ev)),
    )?;
    let coll: serde_json::Value = serde_json::from_str(&tdx.emulated.1)?;
    let ev = serde_json::json!({"quote": B64.encode(&tdx.emulated.0), "collateral": coll, "cc_eventlog": B64.encode(&log)});
    w.put(
        "kbs_bodies",
        "attest-tdx-emulated-ccel.bin",
        &sel(2, &attest_body(&rt, &ev)),
    )?;
    let rsa = r#"{"nonce":"bm9uY2U=","tee-pubkey":{"kty":"RSA","alg":"RSA-OAEP-256","n":"AQAB","e":"AQAB"}}"#;
    let ev = serde_json::json!({"quote": "AAAA"});
    w.put(
        "kbs_bodies",
        "attest-rsa-small.bin",
        &sel(2, &attest_body(rsa, &ev)),
    )?;
    Ok(())
}

fn verifier_http(w: &Writer) -> Result<()> {
    let id = "6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7e8";
    let seeds: [(&str, u8, String); 9] = [
        ("cookie.bin", 0, format!("kbs-session-id={id}")),
        (
            "cookie-among-others.bin",
            0,
            format!("theme=dark; kbs-session-id={id}; x=y"),
        ),
        (
            "cookie-two-headers.bin",
            0,
            format!("a=b\0kbs-session-id={}", id.to_uppercase()),
        ),
        (
            "cookie-malformed.bin",
            0,
            "kbs-session-id=not-a-uuid".into(),
        ),
        ("bearer.bin", 1, {
            let h = B64URL.encode(r#"{"alg":"ES256","typ":"JWT","kid":"k1"}"#);
            let p = B64URL.encode(format!(
                r#"{{"jti":"{id}","exp":4102444800,"iss":"cvm-verifier"}}"#
            ));
            format!("{h}.{p}.{}", B64URL.encode([9u8; 64]))
        }),
        (
            "bearer-no-jti.bin",
            1,
            format!("a.{}.c", B64URL.encode("{}")),
        ),
        ("resource-path.bin", 2, "default\0key\0disk-1.0_a".into()),
        ("resource-path-dots.bin", 2, "..\0key\0.".into()),
        (
            "admin-token.bin",
            3,
            "cvmv.0123456789abcdef.c2VjcmV0LXNlY3JldA".into(),
        ),
    ];
    for (name, s, text) in seeds {
        w.put("verifier_http", name, &sel(s, text.as_bytes()))?;
    }
    Ok(())
}

fn guest_agent(w: &Writer) -> Result<()> {
    let responses: [(&str, &str); 4] = [
        ("http-content-length.bin", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: kbs-session-id=6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7e8; Path=/kbs/v0; HttpOnly\r\nContent-Length: 17\r\n\r\n{\"nonce\":\"bm9u\"}\n"),
        ("http-chunked.bin", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n"),
        ("http-close.bin", "HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Type: application/problem+json\r\n\r\n{\"type\":\"about:blank\",\"status\":401}"),
        ("http-no-body.bin", "HTTP/1.1 204 No Content\r\nServer: cvm\r\n\r\n"),
    ];
    for (name, r) in responses {
        w.put("guest_agent", name, &sel(0, r.as_bytes()))?;
    }
    // A flattened JWE of the shape the verifier releases (ECDH-ES+A256KW, A256GCM),
    // to a key other than the harness's: the fuzzer starts from the parsing and the
    // key agreement, the unwrap fails.
    let k = p256::SecretKey::random(&mut rand_core::OsRng);
    let p = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&k.public_key(), false);
    let protected = format!(
        r#"{{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}}}"#,
        B64URL.encode(p.x().unwrap()),
        B64URL.encode(p.y().unwrap())
    );
    let jwe = serde_json::json!({
        "protected": B64URL.encode(protected),
        "encrypted_key": B64URL.encode([1u8; 40]),
        "iv": B64URL.encode([2u8; 12]),
        "ciphertext": B64URL.encode([3u8; 32]),
        "tag": B64URL.encode([4u8; 16]),
    });
    w.put(
        "guest_agent",
        "jwe-p256.bin",
        &sel(1, jwe.to_string().as_bytes()),
    )?;
    Ok(())
}
