//! Fuzz the TDX quote parser and the DCAP verifier behind it.
//!
//! Structure-aware: besides the raw input, a copy gets a well-formed header (version 4
//! or 5, ECDSA P-256 attestation key, TEE type TDX; for v5 a body descriptor whose size
//! matches its type) and signature-data and certification-data lengths that fit the
//! bytes present (cut to them), so the fuzzer spends its time in the body, the QE
//! report and the certification data instead of on the length checks. That copy is verified with
//! Intel's root and the genuine v4 collateral of the seed corpus, at a time when that
//! collateral is valid.
//!
//! Invariants: no panic on any input; whatever parses re-serializes to the same bytes;
//! a quote verifies only if its signed header and body are byte for byte the genuine
//! quote's.
#![no_main]

use std::sync::OnceLock;

use attestation::tdx::collateral::Collateral;
use attestation::tdx::quote::{Quote, HEADER_LEN, TD10_BODY_LEN, TD15_BODY_LEN};
use attestation::tdx::verify::TdxVerifier;
use libfuzzer_sys::fuzz_target;

const GENUINE: &[u8] = include_bytes!("../corpus/tdx_quote/genuine-v4-uptodate.bin");

fn verifier() -> &'static (TdxVerifier, Collateral) {
    static V: OnceLock<(TdxVerifier, Collateral)> = OnceLock::new();
    V.get_or_init(|| {
        let c = Collateral::from_json(include_bytes!(
            "../corpus/tdx_collateral/genuine-v4-uptodate.json"
        ))
        .expect("the genuine collateral parses");
        (TdxVerifier::intel(), c)
    })
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Cuts the little-endian u32 length at `at` to at most `max`; returns it.
fn clamp(b: &mut [u8], at: usize, max: usize) -> usize {
    let declared = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
    let len = declared.min(max);
    put_u32(b, at, len as u32);
    len
}

/// `data` with the header and the outer lengths made consistent; `None` if too short.
fn well_formed(data: &[u8]) -> Option<Vec<u8>> {
    let mut q = data.to_vec();
    if q.len() < HEADER_LEN + 6 {
        return None;
    }
    let v5 = q[0] & 1 == 1;
    put_u16(&mut q, 0, if v5 { 5 } else { 4 });
    put_u16(&mut q, 2, 2);
    put_u32(&mut q, 4, 0x81);
    let mut at = HEADER_LEN;
    let body = if v5 {
        let td15 = q[at] & 1 == 1;
        let (ty, len) = if td15 {
            (3, TD15_BODY_LEN)
        } else {
            (2, TD10_BODY_LEN)
        };
        put_u16(&mut q, at, ty);
        put_u32(&mut q, at + 2, len as u32);
        at += 6;
        len
    } else {
        TD10_BODY_LEN
    };
    at += body;
    // Signature data: length, then signature (64), attestation key (64), then the
    // certification data: type, length, data. Lengths that overrun what is present are
    // cut to it (the zero padding a quote may carry after them is kept).
    if q.len() < at + 4 {
        return None;
    }
    let room = q.len() - at - 4;
    let sig_len = clamp(&mut q, at, room);
    let cert = at + 4 + 128;
    if sig_len >= 128 + 6 {
        clamp(&mut q, cert + 2, sig_len - 128 - 6);
    }
    Some(q)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = Quote::parse(data) {
        let bytes = q.to_bytes().expect("a parsed quote serializes");
        assert_eq!(bytes, data, "parse/serialize round trip");
        let _ = attestation::tdx::pck::PckChain::from_pem(&q.signature_data.pck_cert_chain);
    }
    let _ = attestation::tdx::report::TdReport::from_bytes(data);
    let Some(fixed) = well_formed(data) else {
        return;
    };
    if let Ok(q) = Quote::parse(&fixed) {
        let bytes = q.to_bytes().expect("a parsed quote serializes");
        assert_eq!(bytes, fixed, "parse/serialize round trip");
    }
    let (v, collateral) = verifier();
    // 2025-06-19T12:00:00Z: the genuine collateral is valid.
    let at = time::OffsetDateTime::from_unix_timestamp(1_750_334_400).unwrap();
    if v.verify(&fixed, collateral, at).is_ok() {
        let signed = HEADER_LEN + TD10_BODY_LEN;
        assert_eq!(
            fixed[..signed],
            GENUINE[..signed],
            "a quote that is not genuine verified"
        );
    }
});
