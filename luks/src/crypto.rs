//! The primitives: keyslot KDFs (PBKDF2, Argon2), the LUKS1 anti-forensic splitter and
//! `aes-xts-plain64`.

use alloc::vec::Vec;

use aes::cipher::KeyInit;
use aes::{Aes128, Aes256};
use sha2::{Digest, Sha256, Sha512};
use xts_mode::Xts128;
use zeroize::{Zeroize, Zeroizing};

use crate::metadata::{Argon2Type, Hash, Kdf, Keyslot};
use crate::Error;

/// Caller-chosen ceilings on the work a header can demand, checked before any KDF runs.
///
/// They apply per keyslot; a header has at most 32 keyslots, each tried at most once per
/// unlock, so the worst case is 32 × (keyslot KDF + digest PBKDF2) at these limits. Memory
/// is not cumulative: each keyslot's Argon2 memory is freed before the next is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest Argon2 `memory` (KiB) to allocate. Default 1 GiB, cryptsetup's own
    /// ceiling for the memory it picks by benchmark; guests should set what they can spare.
    pub max_argon2_memory_kib: u32,
    /// Largest Argon2 `time` (passes). Default 64.
    pub max_argon2_time: u32,
    /// Largest Argon2 `cpus` (lanes; computed one after another here). Default 16.
    pub max_argon2_cpus: u32,
    /// Largest PBKDF2 iteration count, for keyslots and digests. Default 10 000 000.
    pub max_pbkdf2_iterations: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_argon2_memory_kib: 1 << 20,
            max_argon2_time: 64,
            max_argon2_cpus: 16,
            max_pbkdf2_iterations: 10_000_000,
        }
    }
}

fn limit(keyslot: u32, what: &'static str, value: u32, max: u32) -> Result<(), Error> {
    if value > max {
        Err(Error::KdfLimit {
            keyslot,
            what,
            value: value.into(),
            limit: max.into(),
        })
    } else {
        Ok(())
    }
}

/// Checks a keyslot's KDF against `limits` without running it.
pub(crate) fn check_limits(ks: &Keyslot, limits: &Limits) -> Result<(), Error> {
    match &ks.kdf {
        Kdf::Pbkdf2 { iterations, .. } => limit(
            ks.id,
            "pbkdf2 iterations",
            *iterations,
            limits.max_pbkdf2_iterations,
        ),
        Kdf::Argon2 {
            time,
            memory_kib,
            cpus,
            ..
        } => {
            limit(
                ks.id,
                "argon2 memory (KiB)",
                *memory_kib,
                limits.max_argon2_memory_kib,
            )?;
            limit(ks.id, "argon2 time", *time, limits.max_argon2_time)?;
            limit(ks.id, "argon2 cpus", *cpus, limits.max_argon2_cpus)
        }
    }
}

pub(crate) fn pbkdf2(hash: Hash, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
    match hash {
        Hash::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, out),
        Hash::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, out),
    }
}

/// Derives the keyslot area key (`out.len()` = area key size). Call [`check_limits`] first.
pub(crate) fn derive(kdf: &Kdf, password: &[u8], out: &mut [u8]) -> Result<(), Error> {
    match kdf {
        Kdf::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => {
            pbkdf2(*hash, password, salt, *iterations, out);
            Ok(())
        }
        Kdf::Argon2 {
            kind,
            time,
            memory_kib,
            cpus,
            salt,
        } => {
            let params = argon2::Params::new(*memory_kib, *time, *cpus, Some(out.len()))
                .map_err(|_| Error::Kdf)?;
            let alg = match kind {
                Argon2Type::Argon2i => argon2::Algorithm::Argon2i,
                Argon2Type::Argon2id => argon2::Algorithm::Argon2id,
            };
            let blocks = params.block_count();
            // Allocate fallibly: a failed allocation is an error, not an abort.
            let mut memory: Vec<argon2::Block> = Vec::new();
            memory
                .try_reserve_exact(blocks)
                .map_err(|_| Error::OutOfMemory(blocks.saturating_mul(argon2::Block::SIZE)))?;
            memory.resize(blocks, argon2::Block::default());
            let ctx = argon2::Argon2::new(alg, argon2::Version::V0x13, params);
            let r = ctx
                .hash_password_into_with_memory(password, salt, out, &mut memory[..])
                .map_err(|_| Error::Kdf);
            for b in memory.iter_mut() {
                *b = argon2::Block::default();
            }
            r
        }
    }
}

/// The LUKS1 diffuser: each digest-sized block `i` of `buf` becomes `H(be32(i) || block)`
/// (the last, partial block keeps only the first bytes of its hash).
fn diffuse<D: Digest>(buf: &mut [u8]) {
    let ds = <D as Digest>::output_size();
    for (i, chunk) in buf.chunks_mut(ds).enumerate() {
        let mut h = D::new();
        h.update((i as u32).to_be_bytes());
        h.update(&*chunk);
        let mut out = h.finalize();
        chunk.copy_from_slice(&out[..chunk.len()]);
        let o: &mut [u8] = &mut out;
        o.zeroize();
    }
}

fn diffuse_with(hash: Hash, buf: &mut [u8]) {
    match hash {
        Hash::Sha256 => diffuse::<Sha256>(buf),
        Hash::Sha512 => diffuse::<Sha512>(buf),
    }
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= *s;
    }
}

/// AF-merge: recovers a `key_size`-byte key from `stripes` split blocks in `material`.
/// `material` holds at least `key_size × stripes` bytes.
pub(crate) fn af_merge(
    material: &[u8],
    key_size: usize,
    stripes: usize,
    hash: Hash,
) -> Zeroizing<Vec<u8>> {
    let mut block = Zeroizing::new(alloc::vec![0u8; key_size]);
    for i in 0..stripes - 1 {
        xor_into(&mut block, &material[i * key_size..(i + 1) * key_size]);
        diffuse_with(hash, &mut block);
    }
    let last = (stripes - 1) * key_size;
    xor_into(&mut block, &material[last..last + key_size]);
    block
}

/// AF-split: fills `material` (`key_size × stripes` bytes) so that [`af_merge`] yields
/// `key`; `random` supplies the first `stripes − 1` blocks.
#[cfg(feature = "std")]
pub(crate) fn af_split(
    key: &[u8],
    material: &mut [u8],
    stripes: usize,
    hash: Hash,
    random: &mut dyn FnMut(&mut [u8]),
) {
    let ks = key.len();
    let mut block = Zeroizing::new(alloc::vec![0u8; ks]);
    for i in 0..stripes - 1 {
        let s = &mut material[i * ks..(i + 1) * ks];
        random(s);
        xor_into(&mut block, s);
        diffuse_with(hash, &mut block);
    }
    let last = &mut material[(stripes - 1) * ks..stripes * ks];
    last.copy_from_slice(key);
    xor_into(last, &block);
}

/// `aes-xts-plain64` with a 32-byte (AES-128) or 64-byte (AES-256) key. The first half of
/// the key encrypts data, the second half the tweak; the tweak of sector `n` is `n` as a
/// 64-bit little-endian integer zero-padded to 16 bytes (`plain64`). The ciphers' round
/// keys are zeroized on drop (`aes` feature `zeroize`).
// Both variants are large (expanded AES keys); boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Xts {
    Aes128(Xts128<Aes128>),
    Aes256(Xts128<Aes256>),
}

impl core::fmt::Debug for Xts {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Xts(..)")
    }
}

impl Xts {
    pub(crate) fn new(key: &[u8]) -> Result<Self, Error> {
        let bad = || Error::InvalidMetadata("aes-xts-plain64 key size must be 32 or 64 bytes");
        match key.len() {
            32 => Ok(Self::Aes128(Xts128::new(
                Aes128::new_from_slice(&key[..16]).map_err(|_| bad())?,
                Aes128::new_from_slice(&key[16..]).map_err(|_| bad())?,
            ))),
            64 => Ok(Self::Aes256(Xts128::new(
                Aes256::new_from_slice(&key[..32]).map_err(|_| bad())?,
                Aes256::new_from_slice(&key[32..]).map_err(|_| bad())?,
            ))),
            _ => Err(bad()),
        }
    }

    fn tweak(sector: u64) -> [u8; 16] {
        xts_mode::get_tweak_default(u128::from(sector))
    }

    /// Decrypts one sector in place; `buf.len()` is a multiple of 16 and at least 16.
    pub(crate) fn decrypt(&self, buf: &mut [u8], sector: u64) {
        match self {
            Self::Aes128(x) => x.decrypt_sector(buf, Self::tweak(sector)),
            Self::Aes256(x) => x.decrypt_sector(buf, Self::tweak(sector)),
        }
    }

    /// Encrypts one sector in place; `buf.len()` is a multiple of 16 and at least 16.
    pub(crate) fn encrypt(&self, buf: &mut [u8], sector: u64) {
        match self {
            Self::Aes128(x) => x.encrypt_sector(buf, Self::tweak(sector)),
            Self::Aes256(x) => x.encrypt_sector(buf, Self::tweak(sector)),
        }
    }
}

/// Constant-time equality of two byte strings of equal length.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut d = 0u8;
    for (x, y) in a.iter().zip(b) {
        d |= x ^ y;
    }
    core::hint::black_box(d) == 0
}

pub(crate) fn check_key_material(key: &[u8]) -> Result<(), Error> {
    if key.is_empty() || key.len() > 8 << 20 {
        Err(Error::KeyMaterialLength(key.len()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers from an independent XTS implementation (OpenSSL, through Python
    /// `cryptography` 48: `Cipher(AES(key), XTS(sector.to_bytes(16, "little")))`), key =
    /// bytes 0..64 (or 0..32), plaintext byte i = (7i + 3) mod 256, 4096-byte sector.
    /// This pins the key halves (data, tweak) and the `plain64` tweak encoding.
    #[test]
    fn xts_plain64_known_answers() {
        let key: alloc::vec::Vec<u8> = (0..64u8).collect();
        let pt: alloc::vec::Vec<u8> = (0..4096u32).map(|i| ((i * 7 + 3) % 256) as u8).collect();
        for (sector, ks, want) in [
            (
                5u64,
                64usize,
                "37e155ee6472024f13e6a98d5beb360b7874f2005512f42872c565e0ad4728c6",
            ),
            (
                0x1_0000_0001,
                64,
                "ad88591e91380731ef60e5f3738a7289c7d9d1ee8e84f70c6eabe80d80bbaba8",
            ),
            (
                3,
                32,
                "19ccab17e73af90b29964b8813d9c35f12db8bede7d53db8ec77b81d2d7e985c",
            ),
        ] {
            let x = Xts::new(&key[..ks]).unwrap();
            let mut buf = pt.clone();
            x.encrypt(&mut buf, sector);
            assert_eq!(
                hex::encode(Sha256::digest(&buf)),
                want,
                "sector {sector} key {ks}"
            );
            x.decrypt(&mut buf, sector);
            assert_eq!(buf, pt);
        }
    }

    #[test]
    #[cfg(feature = "std")]
    fn af_split_merge_round_trip() {
        let key: alloc::vec::Vec<u8> = (0..64u8).map(|b| b ^ 0x5a).collect();
        let mut material = alloc::vec![0u8; 64 * 4000];
        let mut n = 0u8;
        af_split(
            &key,
            &mut material,
            4000,
            Hash::Sha256,
            &mut |b: &mut [u8]| {
                for x in b {
                    n = n.wrapping_mul(31).wrapping_add(17);
                    *x = n;
                }
            },
        );
        assert_eq!(&af_merge(&material, 64, 4000, Hash::Sha256)[..], &key[..]);
        // A changed stripe changes the merged key (all stripes matter).
        material[100] ^= 1;
        assert_ne!(&af_merge(&material, 64, 4000, Hash::Sha256)[..], &key[..]);
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
