//! Hostile and malformed headers: every case must end in a precise error, never a panic,
//! an unbounded allocation or unbounded work.

mod common;

use luks::{Error, Header, Limits};
use proptest::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

const HDR: usize = 0x4000;

/// A valid image (header area + keyslot + one data sector) made by our writer.
fn valid_image() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    luks::create(&img, 4096, &common::key(1), &luks::CreateOptions::default()).unwrap();
    std::fs::read(&img).unwrap()
}

fn fix_checksum(copy: &mut [u8]) {
    copy[448..512].fill(0);
    let sum = Sha256::digest(&*copy);
    copy[448..480].copy_from_slice(&sum);
}

fn json_of(copy: &[u8]) -> Value {
    let area = &copy[4096..];
    let end = area.iter().position(|&b| b == 0).unwrap();
    serde_json::from_slice(&area[..end]).unwrap()
}

/// Rewrites the JSON of both copies (re-checksummed, so only the metadata rules reject it).
fn with_json(image: &[u8], f: impl Fn(&mut Value)) -> Vec<u8> {
    with_json_text(image, |v| {
        let mut v = v;
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    })
}

fn with_json_text(image: &[u8], f: impl Fn(Value) -> Vec<u8>) -> Vec<u8> {
    let mut out = image.to_vec();
    for off in [0, HDR] {
        let copy = &mut out[off..off + HDR];
        let text = f(json_of(copy));
        assert!(text.len() < HDR - 4096, "test JSON too large");
        copy[4096..].fill(0);
        copy[4096..4096 + text.len()].copy_from_slice(&text);
        fix_checksum(copy);
    }
    out
}

fn parse_err(bytes: &[u8]) -> Error {
    match Header::parse(bytes) {
        Ok(h) => panic!("hostile header accepted: {h:?}"),
        Err(e) => e,
    }
}

/// For errors wrapped as "neither copy valid", the primary's reason.
fn primary_reason(e: Error) -> Error {
    match e {
        Error::NoValidHeader { primary, .. } => *primary,
        e => e,
    }
}

fn unlock(image: &[u8], limits: &Limits) -> Result<luks::VolumeKey, Error> {
    let mut dev: &[u8] = image;
    let h = Header::read_from(&mut dev)?;
    h.unlock_with_limits(&common::key(1), &mut dev, limits)
}

#[test]
fn truncated_headers_say_how_much_is_needed() {
    let img = valid_image();
    assert!(matches!(
        parse_err(&img[..100]),
        Error::Truncated {
            needed: 4096,
            got: 100
        }
    ));
    assert!(matches!(
        parse_err(&img[..4096]),
        Error::Truncated {
            needed: 32768,
            got: 4096
        }
    ));
    assert!(matches!(
        parse_err(&img[..32767]),
        Error::Truncated { needed: 32768, .. }
    ));
    for len in (0..40_000).step_by(97) {
        let _ = Header::parse(&img[..len]);
    }
    // A device too short to hold the keyslot: an I/O error at unlock.
    let mut short: &[u8] = &img[..40_000];
    let h = Header::read_from(&mut short).unwrap();
    assert!(matches!(
        h.unlock(&common::key(1), &mut short),
        Err(Error::Io { .. })
    ));
}

#[test]
fn checksums_and_copies() {
    let img = valid_image();
    // Bad primary checksum: the secondary is used.
    let mut bad = img.clone();
    bad[4096 + 5] ^= 1;
    let h = Header::parse(&bad).unwrap();
    assert_eq!(h.used, luks::Copy::Secondary);
    assert!(!h.both_copies_valid);
    // Destroyed primary magic: the secondary is found by scanning.
    let mut bad = img.clone();
    bad[..6].fill(0);
    let h = Header::parse(&bad).unwrap();
    assert_eq!(h.used, luks::Copy::Secondary);
    let mut dev: &[u8] = &bad;
    let h = Header::read_from(&mut dev).unwrap();
    h.unlock(&common::key(1), &mut dev).unwrap();
    // Both checksums bad.
    let mut bad = img.clone();
    bad[4096 + 5] ^= 1;
    bad[HDR + 4096 + 5] ^= 1;
    assert!(matches!(
        primary_reason(parse_err(&bad)),
        Error::BadChecksum { offset: 0 }
    ));
    // Checksum field with junk after the 32 SHA-256 bytes.
    let mut bad = img.clone();
    bad[500] = 1;
    bad[HDR + 500] = 1;
    assert!(matches!(
        primary_reason(parse_err(&bad)),
        Error::BadChecksum { .. }
    ));
    // Newer secondary (higher seqid) wins.
    let mut newer = img.clone();
    newer[HDR + 16..HDR + 24].copy_from_slice(&5u64.to_be_bytes());
    fix_checksum(&mut newer[HDR..2 * HDR]);
    let h = Header::parse(&newer).unwrap();
    assert_eq!((h.used, h.seqid), (luks::Copy::Secondary, 5));
}

#[test]
fn hostile_binary_header_fields() {
    let img = valid_image();
    let set = |off: usize, bytes: &[u8]| {
        let mut b = img.clone();
        for base in [0, HDR] {
            b[base + off..base + off + bytes.len()].copy_from_slice(bytes);
            fix_checksum(&mut b[base..base + HDR]);
        }
        b
    };
    // Huge and odd header sizes.
    for size in [u64::MAX, 1 << 40, 0, 4096, 0x4001, 0x800000] {
        let e = primary_reason(parse_err(&set(8, &size.to_be_bytes())));
        assert!(matches!(e, Error::BadHeaderSize(s) if s == size), "{e:?}");
    }
    assert!(matches!(
        primary_reason(parse_err(&set(6, &1u16.to_be_bytes()))),
        Error::UnsupportedVersion(1)
    ));
    assert!(matches!(
        primary_reason(parse_err(&set(72, b"sha1\0\0"))),
        Error::UnsupportedChecksum
    ));
    assert!(matches!(
        primary_reason(parse_err(&set(256, &7u64.to_be_bytes()))),
        Error::BadHeaderOffset { claimed: 7, .. }
    ));
    // A header size of 4 MiB with only 32 KiB supplied: asks for 8 MiB, allocates nothing.
    let mut b = img.clone();
    b[8..16].copy_from_slice(&0x400000u64.to_be_bytes());
    assert!(matches!(
        parse_err(&b[..HDR * 2]),
        Error::Truncated {
            needed: 0x800000,
            ..
        }
    ));
}

#[test]
fn hostile_json() {
    let img = valid_image();
    // Not NUL-terminated.
    let mut b = img.clone();
    for base in [0, HDR] {
        b[base + 4096..base + HDR].fill(b' ');
        fix_checksum(&mut b[base..base + HDR]);
    }
    assert!(matches!(
        primary_reason(parse_err(&b)),
        Error::JsonNotTerminated
    ));
    // Not JSON, and deeply nested JSON (serde_json's recursion limit, no stack overflow).
    let b = with_json_text(&img, |_| b"{\"keyslots\": [".to_vec());
    assert!(matches!(primary_reason(parse_err(&b)), Error::Json(_)));
    let b = with_json_text(&img, |v| {
        let mut s = serde_json::to_vec(&v).unwrap();
        s.pop();
        s.extend_from_slice(b",\"tokens\":");
        s.extend(std::iter::repeat_n(b'[', 5000));
        s.extend(std::iter::repeat_n(b']', 5000));
        s.push(b'}');
        s
    });
    let _ = Header::parse(&b); // either outcome, but no crash
    let b = with_json_text(&img, |v| {
        let mut s = b"{\"keyslots\":".to_vec();
        s.extend(std::iter::repeat_n(b'[', 5000));
        s.extend(std::iter::repeat_n(b']', 5000));
        s.extend_from_slice(&serde_json::to_vec(&v).unwrap()[1..]);
        s
    });
    assert!(matches!(primary_reason(parse_err(&b)), Error::Json(_)));

    type Case = (&'static str, fn(&mut Value));
    let invalid: &[Case] = &[
        ("json_size mismatch", |v| {
            v["config"]["json_size"] = "4096".into()
        }),
        ("json_size as number", |v| {
            v["config"]["json_size"] = 12288.into()
        }),
        ("keyslots_size huge", |v| {
            v["config"]["keyslots_size"] = "18446744073709551615".into()
        }),
        ("keyslots_size unaligned", |v| {
            v["config"]["keyslots_size"] = "16744447".into()
        }),
        ("area offset overflow", |v| {
            v["keyslots"]["0"]["area"]["offset"] = "18446744073709551615".into()
        }),
        ("area offset in header", |v| {
            v["keyslots"]["0"]["area"]["offset"] = "4096".into()
        }),
        ("area offset junk", |v| {
            v["keyslots"]["0"]["area"]["offset"] = "32768x".into()
        }),
        ("area offset signed", |v| {
            v["keyslots"]["0"]["area"]["offset"] = "+32768".into()
        }),
        ("area too small", |v| {
            v["keyslots"]["0"]["area"]["size"] = "4096".into()
        }),
        ("area past keyslots", |v| {
            v["keyslots"]["0"]["area"]["size"] = "16748544".into()
        }),
        ("stripes", |v| {
            v["keyslots"]["0"]["af"]["stripes"] = 4001.into()
        }),
        ("stripes huge", |v| {
            v["keyslots"]["0"]["af"]["stripes"] = u32::MAX.into()
        }),
        ("key size 48", |v| {
            v["keyslots"]["0"]["key_size"] = 48.into()
        }),
        ("area key size 16", |v| {
            v["keyslots"]["0"]["area"]["key_size"] = 16.into()
        }),
        ("key size negative", |v| {
            v["keyslots"]["0"]["key_size"] = (-64).into()
        }),
        ("keyslot id 32", |v| {
            let ks = v["keyslots"]["0"].take();
            v["keyslots"] = serde_json::json!({ "32": ks });
        }),
        ("salt not base64", |v| {
            v["keyslots"]["0"]["kdf"]["salt"] = "!!!".into()
        }),
        ("salt too long", |v| {
            v["keyslots"]["0"]["kdf"]["salt"] = "QUFB".repeat(30).into()
        }),
        ("iterations zero", |v| {
            v["keyslots"]["0"]["kdf"]["iterations"] = 0.into()
        }),
        ("iterations overflow", |v| {
            v["keyslots"]["0"]["kdf"]["iterations"] = 1u64.wrapping_shl(40).into()
        }),
        ("digest empty", |v| v["digests"]["0"]["digest"] = "".into()),
        ("digest unbound", |v| {
            v["digests"]["0"]["segments"] = serde_json::json!([])
        }),
        ("digest bad ref", |v| {
            v["digests"]["0"]["keyslots"] = serde_json::json!(["x"])
        }),
        ("segment offset in keyslots", |v| {
            v["segments"]["0"]["offset"] = "4096".into()
        }),
        ("segment unaligned", |v| {
            v["segments"]["0"]["offset"] = "16777217".into()
        }),
        ("sector size 8192", |v| {
            v["segments"]["0"]["sector_size"] = 8192.into()
        }),
        ("sector size 0", |v| {
            v["segments"]["0"]["sector_size"] = 0.into()
        }),
        ("segment size unaligned", |v| {
            v["segments"]["0"]["size"] = "100".into()
        }),
        ("no keyslots", |v| v["keyslots"] = serde_json::json!({})),
        ("priority 3", |v| v["keyslots"]["0"]["priority"] = 3.into()),
        ("missing config", |v| {
            v.as_object_mut().unwrap().remove("config");
        }),
    ];
    for (name, f) in invalid {
        let e = primary_reason(parse_err(&with_json(&img, f)));
        assert!(
            matches!(e, Error::InvalidMetadata(_) | Error::Json(_)),
            "{name}: {e:?}"
        );
    }
    let unsupported: &[Case] = &[
        ("cipher", |v| {
            v["segments"]["0"]["encryption"] = "aes-cbc-essiv:sha256".into()
        }),
        ("keyslot cipher", |v| {
            v["keyslots"]["0"]["area"]["encryption"] = "serpent-xts-plain64".into()
        }),
        ("integrity", |v| {
            v["segments"]["0"]["integrity"] = serde_json::json!({"type": "hmac(sha256)"})
        }),
        ("iv_tweak", |v| v["segments"]["0"]["iv_tweak"] = "8".into()),
        ("two segments", |v| {
            v["segments"]["1"] = v["segments"]["0"].clone()
        }),
        ("kdf", |v| {
            v["keyslots"]["0"]["kdf"]["type"] = "scrypt".into()
        }),
        ("hash", |v| {
            v["keyslots"]["0"]["kdf"]["hash"] = "whirlpool".into()
        }),
        ("af", |v| v["keyslots"]["0"]["af"]["type"] = "luks2".into()),
        ("reencrypt", |v| {
            v["config"]["requirements"] = serde_json::json!({"mandatory": ["online-reencrypt-v2"]})
        }),
    ];
    for (name, f) in unsupported {
        let e = primary_reason(parse_err(&with_json(&img, f)));
        assert!(matches!(e, Error::Unsupported(_)), "{name}: {e:?}");
    }
}

/// KDF parameters a hostile host might choose to exhaust guest memory or time: refused by
/// the limits before any work or allocation.
#[test]
fn absurd_kdf_parameters_hit_the_limits() {
    let img = valid_image();
    let argon = |mem: u64, time: u64, cpus: u64| {
        with_json(&img, move |v| {
            let salt = v["keyslots"]["0"]["kdf"]["salt"].clone();
            v["keyslots"]["0"]["kdf"] = serde_json::json!({
                "type": "argon2id", "time": time, "memory": mem, "cpus": cpus, "salt": salt,
            });
        })
    };
    let limits = Limits::default();
    for (bytes, what) in [
        (argon(u64::from(u32::MAX), 4, 1), "argon2 memory (KiB)"),
        (argon(32768, u64::from(u32::MAX), 1), "argon2 time"),
        (argon(32768, 4, 1 << 24), "argon2 cpus"),
        (
            with_json(&img, |v| {
                v["keyslots"]["0"]["kdf"]["iterations"] = u32::MAX.into()
            }),
            "pbkdf2 iterations",
        ),
        (
            with_json(&img, |v| v["digests"]["0"]["iterations"] = u32::MAX.into()),
            "digest pbkdf2 iterations",
        ),
    ] {
        let e = unlock(&bytes, &limits).unwrap_err();
        assert!(
            matches!(e, Error::KdfLimit { what: w, .. } if w == what),
            "{what}: {e:?}"
        );
    }
    // Argon2 parameters that are within limits but invalid (memory < 8 × lanes).
    let e = unlock(&argon(8, 4, 4), &limits).unwrap_err();
    assert!(matches!(e, Error::Kdf), "{e:?}");
    // A tight guest cap.
    let tight = Limits {
        max_argon2_memory_kib: 1024,
        ..Limits::default()
    };
    assert!(matches!(
        unlock(&argon(2048, 4, 1), &tight),
        Err(Error::KdfLimit {
            value: 2048,
            limit: 1024,
            ..
        })
    ));
    // Valid-looking argon2 with the wrong derived key: a wrong key, not a crash.
    assert!(matches!(
        unlock(&argon(64, 1, 1), &tight),
        Err(Error::WrongKey)
    ));
}

#[test]
fn key_material_length() {
    let img = valid_image();
    let mut dev: &[u8] = &img;
    let h = Header::read_from(&mut dev).unwrap();
    assert!(matches!(
        h.unlock(&[], &mut dev),
        Err(Error::KeyMaterialLength(0))
    ));
    let huge = vec![0u8; (8 << 20) + 1];
    assert!(matches!(
        h.unlock(&huge, &mut dev),
        Err(Error::KeyMaterialLength(_))
    ));
    // A 63-byte prefix of the right key is simply wrong.
    assert!(matches!(
        h.unlock(&common::key(1)[..63], &mut dev),
        Err(Error::WrongKey)
    ));
}

fn quick_limits() -> Limits {
    Limits {
        max_argon2_memory_kib: 256,
        max_argon2_time: 2,
        max_argon2_cpus: 2,
        max_pbkdf2_iterations: 2000,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random bytes, with a valid primary magic and header size half the time.
    #[test]
    fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..40_000), magic in any::<bool>()) {
        if magic && bytes.len() >= 16 {
            bytes[..6].copy_from_slice(b"LUKS\xba\xbe");
            bytes[6..8].copy_from_slice(&2u16.to_be_bytes());
            bytes[8..16].copy_from_slice(&0x4000u64.to_be_bytes());
        }
        let _ = Header::parse(&bytes);
        let _ = luks::header_area_len(&bytes);
        let mut dev: &[u8] = &bytes;
        let _ = Header::read_from(&mut dev);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A valid image with random byte flips in the JSON area (checksums fixed so the
    /// metadata parser sees them) or anywhere in the header area (checksums not fixed).
    #[test]
    fn mutated_headers_never_panic(
        flips in proptest::collection::vec((0usize..HDR - 4096, any::<u8>()), 1..8),
        raw in proptest::collection::vec((0usize..2 * HDR, any::<u8>()), 0..4),
    ) {
        static IMG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let img = IMG.get_or_init(|| {
            let full = valid_image();
            full[..300_000].to_vec() // header area and keyslot, no data
        });
        let mut b = img.clone();
        let text_len = b[4096..HDR].iter().position(|&c| c == 0).unwrap();
        for (pos, val) in &flips {
            let p = 4096 + pos % (text_len + 1);
            b[p] = *val;
            b[HDR + p] = *val;
        }
        fix_checksum(&mut b[..HDR]);
        fix_checksum(&mut b[HDR..2 * HDR]);
        for (pos, val) in &raw {
            b[*pos] ^= *val;
        }
        let mut dev: &[u8] = &b;
        if let Ok(h) = Header::read_from(&mut dev) {
            let _ = h.unlock_with_limits(&common::key(1), &mut dev, &quick_limits());
        }
    }
}
