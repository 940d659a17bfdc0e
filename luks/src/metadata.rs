//! The JSON metadata area, decoded with serde into the subset this crate implements and
//! checked against the LUKS2 rules (every offset and length bounded) before use.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use base64::Engine as _;
use serde::Deserialize;

use crate::Error;

/// Most keyslots LUKS2 allows.
pub const MAX_KEYSLOTS: u32 = 32;
/// Anti-forensic stripes: cryptsetup accepts only 4000.
pub const AF_STRIPES: u32 = 4000;
/// Largest keyslots area cryptsetup creates or accepts (128 MiB).
pub const MAX_KEYSLOTS_SIZE: u64 = 128 << 20;

/// A hash function named in the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// `sha256`.
    Sha256,
    /// `sha512`.
    Sha512,
}

impl Hash {
    fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "sha256" => Ok(Self::Sha256),
            "sha512" => Ok(Self::Sha512),
            _ => Err(Error::Unsupported("hash other than sha256 or sha512")),
        }
    }

    /// The name LUKS2 uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }
}

/// Argon2 flavour of a keyslot KDF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Argon2Type {
    /// `argon2i`.
    Argon2i,
    /// `argon2id`.
    Argon2id,
}

/// A keyslot's password-based key derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kdf {
    /// PBKDF2-HMAC.
    Pbkdf2 {
        /// The HMAC hash.
        hash: Hash,
        /// Iteration count.
        iterations: u32,
        /// Salt.
        salt: Vec<u8>,
    },
    /// Argon2 version 0x13.
    Argon2 {
        /// `argon2i` or `argon2id`.
        kind: Argon2Type,
        /// Passes (`time`).
        time: u32,
        /// Memory in KiB (`memory`).
        memory_kib: u32,
        /// Lanes (`cpus`).
        cpus: u32,
        /// Salt.
        salt: Vec<u8>,
    },
}

/// A `luks2` keyslot with `luks1` anti-forensic splitting and an `aes-xts-plain64` area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyslot {
    /// Keyslot id (0..32).
    pub id: u32,
    /// Length of the volume key it holds.
    pub key_size: usize,
    /// 0 = ignore unless asked for, 1 = normal, 2 = high (tried first).
    pub priority: u8,
    /// Key derivation.
    pub kdf: Kdf,
    /// Anti-forensic diffuser hash.
    pub af_hash: Hash,
    /// Anti-forensic stripes (always 4000).
    pub stripes: u32,
    /// Device offset of the keyslot area.
    pub area_offset: u64,
    /// Size of the keyslot area.
    pub area_size: u64,
    /// Key length of the area's `aes-xts-plain64` (and so the KDF output length).
    pub area_key_size: usize,
}

impl Keyslot {
    /// Bytes of split key material: `key_size × stripes` rounded up to 512-byte sectors.
    pub fn material_len(&self) -> usize {
        (self.key_size * self.stripes as usize).div_ceil(512) * 512
    }
}

/// A `pbkdf2` digest that checks a candidate volume key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDigest {
    /// Keyslots whose key it checks.
    pub keyslots: Vec<u32>,
    /// Segments whose key it checks.
    pub segments: Vec<u32>,
    /// HMAC hash.
    pub hash: Hash,
    /// Iterations.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// Expected PBKDF2 output.
    pub digest: Vec<u8>,
}

/// The encrypted data segment (`crypt`, `aes-xts-plain64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Segment id in the metadata.
    pub id: u32,
    /// Device byte offset of the first encrypted sector.
    pub offset: u64,
    /// Size in bytes, or `None` for `dynamic` (up to the end of the device).
    pub size: Option<u64>,
    /// Encryption sector size: 512, 1024, 2048 or 4096.
    pub sector_size: u32,
    /// Volume key length: 32 (AES-128-XTS) or 64 (AES-256-XTS).
    pub key_size: usize,
}

/// The decoded metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Keyslots, by id.
    pub keyslots: Vec<Keyslot>,
    /// Digests.
    pub digests: Vec<KeyDigest>,
    /// The single data segment.
    pub segment: Segment,
    /// `config.json_size`.
    pub json_size: u64,
    /// `config.keyslots_size`.
    pub keyslots_size: u64,
}

// ---- serde layer: the JSON as written, every field optional where the format allows ----

#[derive(Deserialize)]
struct Json {
    keyslots: BTreeMap<String, JKeyslot>,
    segments: BTreeMap<String, JSegment>,
    digests: BTreeMap<String, JDigest>,
    config: JConfig,
}

#[derive(Deserialize)]
struct JKeyslot {
    #[serde(rename = "type")]
    kind: String,
    key_size: u32,
    af: Option<JAf>,
    area: Option<JArea>,
    kdf: Option<JKdf>,
    priority: Option<u8>,
}

#[derive(Deserialize)]
struct JAf {
    #[serde(rename = "type")]
    kind: String,
    stripes: Option<u32>,
    hash: Option<String>,
}

#[derive(Deserialize)]
struct JArea {
    #[serde(rename = "type")]
    kind: String,
    offset: String,
    size: String,
    encryption: Option<String>,
    key_size: Option<u32>,
}

#[derive(Deserialize)]
struct JKdf {
    #[serde(rename = "type")]
    kind: String,
    hash: Option<String>,
    iterations: Option<u32>,
    time: Option<u32>,
    memory: Option<u32>,
    cpus: Option<u32>,
    salt: String,
}

#[derive(Deserialize)]
struct JSegment {
    #[serde(rename = "type")]
    kind: String,
    offset: String,
    size: String,
    iv_tweak: Option<String>,
    encryption: Option<String>,
    sector_size: Option<u32>,
    integrity: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct JDigest {
    #[serde(rename = "type")]
    kind: String,
    keyslots: Vec<String>,
    segments: Vec<String>,
    hash: Option<String>,
    iterations: Option<u32>,
    salt: Option<String>,
    digest: Option<String>,
}

#[derive(Deserialize)]
struct JConfig {
    json_size: String,
    keyslots_size: String,
    requirements: Option<JRequirements>,
}

#[derive(Deserialize)]
struct JRequirements {
    #[serde(default)]
    mandatory: Vec<String>,
}

/// A decimal `uint64` written as a JSON string, as LUKS2 does for offsets and sizes.
fn u64_str(s: &str, what: &'static str) -> Result<u64, Error> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidMetadata(what));
    }
    s.parse().map_err(|_| Error::InvalidMetadata(what))
}

fn id(s: &str, what: &'static str) -> Result<u32, Error> {
    let v = u64_str(s, what)?;
    u32::try_from(v)
        .ok()
        .filter(|&v| v < MAX_KEYSLOTS)
        .ok_or(Error::InvalidMetadata(what))
}

fn b64(s: &str, what: &'static str, max: usize) -> Result<Vec<u8>, Error> {
    if s.len() > max.div_ceil(3) * 4 + 4 {
        return Err(Error::InvalidMetadata(what));
    }
    let v = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| Error::InvalidMetadata(what))?;
    if v.is_empty() || v.len() > max {
        return Err(Error::InvalidMetadata(what));
    }
    Ok(v)
}

fn xts_key_size(encryption: Option<&str>, key_size: u32) -> Result<usize, Error> {
    if encryption != Some("aes-xts-plain64") {
        return Err(Error::Unsupported("encryption other than aes-xts-plain64"));
    }
    match key_size {
        32 | 64 => Ok(key_size as usize),
        _ => Err(Error::InvalidMetadata(
            "aes-xts-plain64 key size must be 32 or 64 bytes",
        )),
    }
}

/// Decodes and validates the JSON text (without its NUL terminator) of a header whose
/// copies are `hdr_size` bytes each.
pub(crate) fn parse(text: &[u8], hdr_size: u64) -> Result<Metadata, Error> {
    let json: Json = serde_json::from_slice(text).map_err(Error::Json)?;

    // config
    let json_size = u64_str(&json.config.json_size, "config.json_size")?;
    if json_size != hdr_size - crate::disk::BINARY_HEADER_LEN as u64 {
        return Err(Error::InvalidMetadata(
            "config.json_size does not match the binary header's hdr_size",
        ));
    }
    let keyslots_size = u64_str(&json.config.keyslots_size, "config.keyslots_size")?;
    if keyslots_size % 4096 != 0 || keyslots_size > MAX_KEYSLOTS_SIZE {
        return Err(Error::InvalidMetadata(
            "config.keyslots_size must be a multiple of 4096 and at most 128 MiB",
        ));
    }
    if let Some(req) = &json.config.requirements {
        if !req.mandatory.is_empty() {
            return Err(Error::Unsupported(
                "mandatory requirements (for example online reencryption)",
            ));
        }
    }
    let area_start = 2 * hdr_size;
    let area_end = area_start + keyslots_size; // both bounded far below u64::MAX

    // segment
    if json.segments.len() != 1 {
        return Err(Error::Unsupported("more or fewer than one segment"));
    }
    let (seg_id, js) = json
        .segments
        .iter()
        .next()
        .ok_or(Error::InvalidMetadata("no segment"))?;
    let seg_id = id(seg_id, "segment id")?;
    if js.kind != "crypt" {
        return Err(Error::Unsupported("segment type other than crypt"));
    }
    if js.integrity.is_some() {
        return Err(Error::Unsupported(
            "authenticated encryption (dm-integrity)",
        ));
    }
    let iv_tweak = u64_str(js.iv_tweak.as_deref().unwrap_or("0"), "segment iv_tweak")?;
    if iv_tweak != 0 {
        return Err(Error::Unsupported("non-zero iv_tweak"));
    }
    let sector_size = js
        .sector_size
        .ok_or(Error::InvalidMetadata("segment sector_size missing"))?;
    if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
        return Err(Error::InvalidMetadata(
            "segment sector_size must be 512, 1024, 2048 or 4096",
        ));
    }
    let seg_offset = u64_str(&js.offset, "segment offset")?;
    if seg_offset % u64::from(sector_size) != 0 || seg_offset < area_end {
        return Err(Error::InvalidMetadata(
            "segment offset must be sector-aligned and after the keyslots area",
        ));
    }
    let seg_size = if js.size == "dynamic" {
        None
    } else {
        let s = u64_str(&js.size, "segment size")?;
        if s % u64::from(sector_size) != 0 || seg_offset.checked_add(s).is_none() {
            return Err(Error::InvalidMetadata(
                "segment size must be a multiple of the sector size",
            ));
        }
        Some(s)
    };
    // The segment's key size is the digest's volume key size; take it from the keyslots
    // that reference it below, after checking it is a valid XTS key size.
    let mut segment = Segment {
        id: seg_id,
        offset: seg_offset,
        size: seg_size,
        sector_size,
        key_size: 0,
    };
    if js.encryption.as_deref() != Some("aes-xts-plain64") {
        return Err(Error::Unsupported("encryption other than aes-xts-plain64"));
    }

    // keyslots
    if json.keyslots.len() > MAX_KEYSLOTS as usize {
        return Err(Error::InvalidMetadata("more than 32 keyslots"));
    }
    let mut keyslots = Vec::new();
    for (k, jk) in &json.keyslots {
        let ks_id = id(k, "keyslot id")?;
        if jk.kind != "luks2" {
            return Err(Error::Unsupported("keyslot type other than luks2"));
        }
        let key_size = xts_key_size(Some("aes-xts-plain64"), jk.key_size)?;
        let af = jk
            .af
            .as_ref()
            .ok_or(Error::InvalidMetadata("keyslot af missing"))?;
        if af.kind != "luks1" {
            return Err(Error::Unsupported("anti-forensic type other than luks1"));
        }
        let stripes = af
            .stripes
            .ok_or(Error::InvalidMetadata("af stripes missing"))?;
        if stripes != AF_STRIPES {
            return Err(Error::InvalidMetadata("af stripes must be 4000"));
        }
        let af_hash = Hash::parse(af.hash.as_deref().unwrap_or(""))?;
        let area = jk
            .area
            .as_ref()
            .ok_or(Error::InvalidMetadata("keyslot area missing"))?;
        if area.kind != "raw" {
            return Err(Error::Unsupported("keyslot area type other than raw"));
        }
        let area_key_size = xts_key_size(area.encryption.as_deref(), area.key_size.unwrap_or(0))?;
        let area_offset = u64_str(&area.offset, "keyslot area offset")?;
        let area_size = u64_str(&area.size, "keyslot area size")?;
        let in_bounds = area_offset >= area_start
            && area_offset % 512 == 0
            && area_offset
                .checked_add(area_size)
                .is_some_and(|end| end <= area_end);
        if !in_bounds {
            return Err(Error::InvalidMetadata(
                "keyslot area lies outside the keyslots area",
            ));
        }
        let jkdf = jk
            .kdf
            .as_ref()
            .ok_or(Error::InvalidMetadata("keyslot kdf missing"))?;
        let salt = b64(&jkdf.salt, "keyslot kdf salt (base64, 1..=64 bytes)", 64)?;
        let kdf = match jkdf.kind.as_str() {
            "pbkdf2" => Kdf::Pbkdf2 {
                hash: Hash::parse(jkdf.hash.as_deref().unwrap_or(""))?,
                iterations: jkdf
                    .iterations
                    .filter(|&i| i > 0)
                    .ok_or(Error::InvalidMetadata("pbkdf2 iterations missing or zero"))?,
                salt,
            },
            "argon2i" | "argon2id" => Kdf::Argon2 {
                kind: if jkdf.kind == "argon2i" {
                    Argon2Type::Argon2i
                } else {
                    Argon2Type::Argon2id
                },
                time: jkdf
                    .time
                    .filter(|&t| t > 0)
                    .ok_or(Error::InvalidMetadata("argon2 time missing or zero"))?,
                memory_kib: jkdf
                    .memory
                    .filter(|&m| m > 0)
                    .ok_or(Error::InvalidMetadata("argon2 memory missing or zero"))?,
                cpus: jkdf
                    .cpus
                    .filter(|&c| c > 0)
                    .ok_or(Error::InvalidMetadata("argon2 cpus missing or zero"))?,
                salt,
            },
            _ => {
                return Err(Error::Unsupported(
                    "keyslot kdf other than pbkdf2 or argon2",
                ))
            }
        };
        let ks = Keyslot {
            id: ks_id,
            key_size,
            priority: jk.priority.unwrap_or(1),
            kdf,
            af_hash,
            stripes,
            area_offset,
            area_size,
            area_key_size,
        };
        if (ks.material_len() as u64) > area_size {
            return Err(Error::InvalidMetadata(
                "keyslot area is smaller than its key material",
            ));
        }
        if ks.priority > 2 {
            return Err(Error::InvalidMetadata("keyslot priority must be 0, 1 or 2"));
        }
        keyslots.push(ks);
    }

    // digests
    let mut digests = Vec::new();
    for (k, jd) in &json.digests {
        id(k, "digest id")?;
        if jd.kind != "pbkdf2" {
            return Err(Error::Unsupported("digest type other than pbkdf2"));
        }
        if jd.keyslots.len() > MAX_KEYSLOTS as usize || jd.segments.len() > MAX_KEYSLOTS as usize {
            return Err(Error::InvalidMetadata("digest references too many objects"));
        }
        let ks: Vec<u32> = jd
            .keyslots
            .iter()
            .map(|s| id(s, "digest keyslot reference"))
            .collect::<Result<_, _>>()?;
        let segs: Vec<u32> = jd
            .segments
            .iter()
            .map(|s| id(s, "digest segment reference"))
            .collect::<Result<_, _>>()?;
        let digest = b64(
            jd.digest.as_deref().unwrap_or(""),
            "digest value (base64, 1..=64 bytes)",
            64,
        )?;
        if digest.len() < 16 {
            return Err(Error::InvalidMetadata("digest value shorter than 16 bytes"));
        }
        digests.push(KeyDigest {
            keyslots: ks,
            segments: segs,
            hash: Hash::parse(jd.hash.as_deref().unwrap_or(""))?,
            iterations: jd
                .iterations
                .filter(|&i| i > 0)
                .ok_or(Error::InvalidMetadata("digest iterations missing or zero"))?,
            salt: b64(
                jd.salt.as_deref().unwrap_or(""),
                "digest salt (base64, 1..=64 bytes)",
                64,
            )?,
            digest,
        });
    }

    // Every keyslot must be bound to the segment by a digest, with matching key sizes.
    let seg_digests: Vec<&KeyDigest> = digests
        .iter()
        .filter(|d| d.segments.contains(&seg_id))
        .collect();
    if seg_digests.is_empty() {
        return Err(Error::InvalidMetadata("no digest covers the segment"));
    }
    for ks in &keyslots {
        if !seg_digests.iter().any(|d| d.keyslots.contains(&ks.id)) {
            return Err(Error::InvalidMetadata(
                "a keyslot is not bound to the segment",
            ));
        }
        if segment.key_size != 0 && segment.key_size != ks.key_size {
            return Err(Error::InvalidMetadata(
                "keyslots disagree on the volume key size",
            ));
        }
        segment.key_size = ks.key_size;
    }
    if keyslots.is_empty() {
        return Err(Error::InvalidMetadata("no keyslot"));
    }
    // Keyslot areas must not overlap one another.
    for (i, a) in keyslots.iter().enumerate() {
        for b in &keyslots[i + 1..] {
            if a.area_offset < b.area_offset + b.area_size
                && b.area_offset < a.area_offset + a.area_size
            {
                return Err(Error::InvalidMetadata("keyslot areas overlap"));
            }
        }
    }

    Ok(Metadata {
        keyslots,
        digests,
        segment,
        json_size,
        keyslots_size,
    })
}
