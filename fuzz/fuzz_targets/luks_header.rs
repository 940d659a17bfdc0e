//! Fuzzes the LUKS2 header parser and the keyslot unlock path on hostile devices.
//!
//! Input: byte 0 picks the shape, byte 1 the key length (1..=64), then the key, then the
//! body.
//! - even byte 0: the body is the device as is (binary header parsing, both copies,
//!   the secondary-offset search);
//! - odd byte 0: the body up to its first NUL is the JSON area of a 16 KiB header whose
//!   binary part and SHA-256 checksum are made valid here (so the fuzzer reaches the
//!   JSON and metadata checks), mirrored as the secondary copy; the rest of the body
//!   follows at 32 KiB as keyslot area and data.
//!
//! When the header parses, `unlock_with_limits` runs with the key against the same bytes
//! as the device, with small KDF ceilings so each run stays fast.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const HDR: usize = 16 * 1024;
const MAGIC_PRIMARY: [u8; 6] = *b"LUKS\xba\xbe";
const MAGIC_SECONDARY: [u8; 6] = *b"SKUL\xba\xbe";

fn binary_header(magic: &[u8; 6], offset: u64, seqid: u64) -> [u8; 4096] {
    let mut b = [0u8; 4096];
    b[..6].copy_from_slice(magic);
    b[6..8].copy_from_slice(&2u16.to_be_bytes());
    b[8..16].copy_from_slice(&(HDR as u64).to_be_bytes());
    b[16..24].copy_from_slice(&seqid.to_be_bytes());
    b[72..78].copy_from_slice(b"sha256");
    b[168..204].copy_from_slice(b"0b4c0d8e-5c54-4a8e-9f7e-2f0c1d2e3f40");
    b[256..264].copy_from_slice(&offset.to_be_bytes());
    b
}

fn header_copy(magic: &[u8; 6], offset: u64, json: &[u8]) -> Vec<u8> {
    let mut copy = vec![0u8; HDR];
    copy[..4096].copy_from_slice(&binary_header(magic, offset, 1));
    let n = json.len().min(HDR - 4096 - 1);
    copy[4096..4096 + n].copy_from_slice(&json[..n]);
    // The checksum field (448..512) is zero while hashing.
    let sum: [u8; 32] = Sha256::digest(&copy).into();
    copy[448..480].copy_from_slice(&sum);
    copy
}

fuzz_target!(|data: &[u8]| {
    let [shape, klen, rest @ ..] = data else {
        return;
    };
    let klen = usize::from(*klen % 64) + 1;
    if rest.len() < klen {
        return;
    }
    let (key, body) = rest.split_at(klen);
    let device: Vec<u8> = if shape & 1 == 0 {
        body.to_vec()
    } else {
        let (json, tail) = match body.iter().position(|&b| b == 0) {
            Some(i) => (&body[..i], &body[i + 1..]),
            None => (body, &[][..]),
        };
        let mut d = header_copy(&MAGIC_PRIMARY, 0, json);
        d.extend_from_slice(&header_copy(&MAGIC_SECONDARY, HDR as u64, json));
        d.extend_from_slice(tail);
        d
    };
    let Ok(header) = luks::Header::parse(&device) else {
        return;
    };
    let limits = luks::Limits {
        max_argon2_memory_kib: 64,
        max_argon2_time: 2,
        max_argon2_cpus: 2,
        max_pbkdf2_iterations: 2000,
    };
    let mut io: &[u8] = &device;
    let _ = header.unlock_with_limits(key, &mut io, &limits);
});
