//! Creating LUKS2 volumes on the host (feature `std`), without dm-crypt: the header,
//! keyslot and data sectors are encrypted in process and written to a regular file.
//!
//! The layout is cryptsetup 2.x's default for `luksFormat --type luks2`: two 16 KiB header
//! copies, a 16 MiB - 32 KiB keyslots area, one keyslot at offset 32 KiB and the data
//! segment at 16 MiB with size `dynamic` (to the end of the file).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::prelude::rust_2021::*;
use std::{format, vec};

use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::crypto::{self, Xts};
use crate::disk;
use crate::metadata::{Argon2Type, Hash, Kdf, AF_STRIPES};
use crate::{Error, Header, VolumeKey};

/// Size of one header copy written here (cryptsetup's default).
pub const HDR_SIZE: u64 = 0x4000;
/// Device offset of keyslot 0's area.
pub const KEYSLOT_OFFSET: u64 = 2 * HDR_SIZE;
/// Device offset of the data segment (cryptsetup's default, 16 MiB).
pub const DATA_OFFSET: u64 = 16 << 20;
/// Size of the keyslots area.
pub const KEYSLOTS_SIZE: u64 = DATA_OFFSET - 2 * HDR_SIZE;
/// Volume key length: AES-256-XTS.
pub const VOLUME_KEY_LEN: usize = 64;
/// Fewest key material bytes accepted with PBKDF2: with a cheap KDF the key material
/// itself must carry the strength, so it must be a random key of at least 256 bits.
pub const MIN_PBKDF2_KEY_MATERIAL: usize = 32;

/// The keyslot KDF of a new volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KdfChoice {
    /// PBKDF2-HMAC-SHA-256.
    ///
    /// Use this with random key files (the `cvm image disk` key is 64 random bytes): a
    /// 512-bit random key cannot be guessed, so stretching it buys nothing and only
    /// slows down every unlock, notably in a guest. 1000 iterations is the least
    /// cryptsetup accepts (`--pbkdf-force-iterations` minimum), which keeps the volume
    /// openable by stock cryptsetup. Key material shorter than
    /// [`MIN_PBKDF2_KEY_MATERIAL`] is refused.
    Pbkdf2Sha256 {
        /// Iterations (at least 1000).
        iterations: u32,
    },
    /// Argon2id, for human passphrases.
    Argon2id {
        /// Passes (at least 4, cryptsetup's minimum).
        time: u32,
        /// Memory in KiB (at least 32, at most 4 GiB).
        memory_kib: u32,
        /// Lanes (1..=4 here).
        cpus: u32,
    },
}

/// Options for [`create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Keyslot KDF. Default PBKDF2-SHA-256 with 1000 iterations.
    pub kdf: KdfChoice,
    /// Encryption sector size: 512, 1024, 2048 or 4096 (default).
    pub sector_size: u32,
    /// Header label (at most 47 bytes).
    pub label: String,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            kdf: KdfChoice::Pbkdf2Sha256 { iterations: 1000 },
            sector_size: 4096,
            label: String::new(),
        }
    }
}

/// Why a volume could not be created, opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The options or arguments are invalid (message names which).
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// The volume's header or key was rejected.
    #[error("LUKS2 volume error")]
    Luks(#[from] Error),
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// A fresh random 64-byte key file (from the OS RNG), zeroized on drop: the key material
/// `cvm image disk` uses with [`KdfChoice::Pbkdf2Sha256`].
pub fn random_key() -> Zeroizing<[u8; 64]> {
    let mut k = Zeroizing::new([0u8; 64]);
    random(&mut k[..]);
    k
}

fn random(buf: &mut [u8]) {
    OsRng.fill_bytes(buf);
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn uuid_v4() -> String {
    let mut u = [0u8; 16];
    random(&mut u);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

fn validate(payload_size: u64, key_material: &[u8], o: &CreateOptions) -> Result<(), WriteError> {
    crypto::check_key_material(key_material)?;
    if !matches!(o.sector_size, 512 | 1024 | 2048 | 4096) {
        return Err(WriteError::Invalid(
            "sector size must be 512, 1024, 2048 or 4096",
        ));
    }
    if payload_size == 0 || payload_size % u64::from(o.sector_size) != 0 {
        return Err(WriteError::Invalid(
            "payload size must be a non-zero multiple of the sector size",
        ));
    }
    if DATA_OFFSET
        .checked_add(payload_size)
        .is_none_or(|t| t > i64::MAX as u64)
    {
        return Err(WriteError::Invalid("payload size too large"));
    }
    if o.label.len() > 47 || o.label.contains('\0') {
        return Err(WriteError::Invalid(
            "label must be at most 47 bytes, without NUL",
        ));
    }
    match o.kdf {
        KdfChoice::Pbkdf2Sha256 { iterations } => {
            if iterations < 1000 {
                return Err(WriteError::Invalid("pbkdf2 needs at least 1000 iterations"));
            }
            if key_material.len() < MIN_PBKDF2_KEY_MATERIAL {
                return Err(WriteError::Invalid(
                    "pbkdf2 keyslots need at least 32 bytes of random key material",
                ));
            }
        }
        KdfChoice::Argon2id {
            time,
            memory_kib,
            cpus,
        } => {
            if time < 4 || !(32..=4 << 20).contains(&memory_kib) || !(1..=4).contains(&cpus) {
                return Err(WriteError::Invalid(
                    "argon2id needs time >= 4, memory 32..=4194304 KiB, cpus 1..=4",
                ));
            }
        }
    }
    Ok(())
}

/// The binary header of one copy, checksum not yet filled in.
fn binary_header(magic: &[u8; 6], offset: u64, uuid: &str, label: &str) -> [u8; 4096] {
    let mut b = [0u8; 4096];
    b[..6].copy_from_slice(magic);
    b[disk::OFF_VERSION..disk::OFF_VERSION + 2].copy_from_slice(&2u16.to_be_bytes());
    b[disk::OFF_HDR_SIZE..disk::OFF_HDR_SIZE + 8].copy_from_slice(&HDR_SIZE.to_be_bytes());
    b[disk::OFF_SEQID..disk::OFF_SEQID + 8].copy_from_slice(&1u64.to_be_bytes());
    b[disk::OFF_LABEL..disk::OFF_LABEL + label.len()].copy_from_slice(label.as_bytes());
    b[disk::OFF_CSUM_ALG..disk::OFF_CSUM_ALG + 6].copy_from_slice(b"sha256");
    random(&mut b[disk::OFF_SALT..disk::OFF_SALT + 64]);
    b[disk::OFF_UUID..disk::OFF_UUID + uuid.len()].copy_from_slice(uuid.as_bytes());
    b[disk::OFF_HDR_OFFSET..disk::OFF_HDR_OFFSET + 8].copy_from_slice(&offset.to_be_bytes());
    b
}

/// Creates a new LUKS2 volume at `path` (which must not exist) holding `payload_size`
/// bytes of encrypted data (a multiple of the sector size), unlockable with
/// `key_material` (a key file's bytes or a passphrase). The file is
/// `16 MiB + payload_size` bytes, sparse; unwritten data sectors decrypt to
/// pseudo-random bytes, as on any fresh LUKS volume.
///
/// On error after the file was created, the file is removed.
pub fn create(
    path: &Path,
    payload_size: u64,
    key_material: &[u8],
    options: &CreateOptions,
) -> Result<Volume, WriteError> {
    validate(payload_size, key_material, options)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err("cannot create", path))?;
    let r = write_new(&file, path, payload_size, key_material, options)
        .and_then(|()| Volume::from_file(file, path, key_material));
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

fn write_new(
    file: &File,
    path: &Path,
    payload_size: u64,
    key_material: &[u8],
    o: &CreateOptions,
) -> Result<(), WriteError> {
    file.set_len(DATA_OFFSET + payload_size)
        .map_err(io_err("cannot size", path))?;

    let mut vk = Zeroizing::new([0u8; VOLUME_KEY_LEN]);
    random(&mut vk[..]);

    // Digest of the volume key: PBKDF2-SHA-256, 1000 iterations, 32-byte salt (as cryptsetup).
    let mut digest_salt = [0u8; 32];
    random(&mut digest_salt);
    let mut digest = [0u8; 32];
    crypto::pbkdf2(Hash::Sha256, &vk[..], &digest_salt, 1000, &mut digest);

    // Keyslot 0: KDF → area key; AF-split the volume key; encrypt the material.
    let mut kdf_salt = vec![0u8; 32];
    random(&mut kdf_salt);
    let (kdf, kdf_json) = match o.kdf {
        KdfChoice::Pbkdf2Sha256 { iterations } => (
            Kdf::Pbkdf2 {
                hash: Hash::Sha256,
                iterations,
                salt: kdf_salt.clone(),
            },
            serde_json::json!({
                "type": "pbkdf2", "hash": "sha256", "iterations": iterations,
                "salt": b64(&kdf_salt),
            }),
        ),
        KdfChoice::Argon2id {
            time,
            memory_kib,
            cpus,
        } => (
            Kdf::Argon2 {
                kind: Argon2Type::Argon2id,
                time,
                memory_kib,
                cpus,
                salt: kdf_salt.clone(),
            },
            serde_json::json!({
                "type": "argon2id", "time": time, "memory": memory_kib, "cpus": cpus,
                "salt": b64(&kdf_salt),
            }),
        ),
    };
    let mut area_key = Zeroizing::new([0u8; VOLUME_KEY_LEN]);
    crypto::derive(&kdf, key_material, &mut area_key[..])?;
    let material_len = (VOLUME_KEY_LEN * AF_STRIPES as usize).div_ceil(512) * 512;
    let area_size = (material_len as u64).div_ceil(4096) * 4096;
    let mut material = Zeroizing::new(vec![0u8; material_len]);
    crypto::af_split(
        &vk[..],
        &mut material[..VOLUME_KEY_LEN * AF_STRIPES as usize],
        AF_STRIPES as usize,
        Hash::Sha256,
        &mut random,
    );
    let xts = Xts::new(&area_key[..])?;
    for (i, sector) in material.chunks_mut(512).enumerate() {
        xts.encrypt(sector, i as u64);
    }
    drop(xts);

    let json = serde_json::json!({
        "keyslots": {
            "0": {
                "type": "luks2",
                "key_size": VOLUME_KEY_LEN,
                "af": { "type": "luks1", "stripes": AF_STRIPES, "hash": "sha256" },
                "area": {
                    "type": "raw",
                    "offset": KEYSLOT_OFFSET.to_string(),
                    "size": area_size.to_string(),
                    "encryption": "aes-xts-plain64",
                    "key_size": VOLUME_KEY_LEN,
                },
                "kdf": kdf_json,
            }
        },
        "tokens": {},
        "segments": {
            "0": {
                "type": "crypt",
                "offset": DATA_OFFSET.to_string(),
                "size": "dynamic",
                "iv_tweak": "0",
                "encryption": "aes-xts-plain64",
                "sector_size": o.sector_size,
            }
        },
        "digests": {
            "0": {
                "type": "pbkdf2",
                "keyslots": ["0"],
                "segments": ["0"],
                "hash": "sha256",
                "iterations": 1000,
                "salt": b64(&digest_salt),
                "digest": b64(&digest),
            }
        },
        "config": {
            "json_size": (HDR_SIZE - 4096).to_string(),
            "keyslots_size": KEYSLOTS_SIZE.to_string(),
        }
    });
    let text = serde_json::to_vec(&json).map_err(|_| WriteError::Invalid("metadata"))?;
    if text.len() >= (HDR_SIZE as usize - 4096) {
        return Err(WriteError::Invalid("metadata does not fit the JSON area"));
    }

    let uuid = uuid_v4();
    for (magic, off) in [
        (&disk::MAGIC_PRIMARY, 0u64),
        (&disk::MAGIC_SECONDARY, HDR_SIZE),
    ] {
        let mut copy = vec![0u8; HDR_SIZE as usize];
        copy[..4096].copy_from_slice(&binary_header(magic, off, &uuid, &o.label));
        copy[4096..4096 + text.len()].copy_from_slice(&text);
        let sum = disk::checksum(&copy);
        copy[disk::OFF_CSUM..disk::OFF_CSUM + 32].copy_from_slice(&sum);
        file.write_all_at(&copy, off)
            .map_err(io_err("cannot write the header to", path))?;
    }
    file.write_all_at(&material, KEYSLOT_OFFSET)
        .map_err(io_err("cannot write the keyslot to", path))?;
    Ok(())
}

/// An unlocked LUKS2 volume in a regular file, readable and writable sector by sector.
#[derive(Debug)]
pub struct Volume {
    file: File,
    path: std::path::PathBuf,
    header: Header,
    key: VolumeKey,
    payload_size: u64,
}

impl Volume {
    /// Opens an existing volume read-write and unlocks it with `key_material`.
    pub fn open(path: &Path, key_material: &[u8]) -> Result<Volume, WriteError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("cannot open", path))?;
        Self::from_file(file, path, key_material)
    }

    fn from_file(mut file: File, path: &Path, key_material: &[u8]) -> Result<Volume, WriteError> {
        let header = Header::read_from(&mut file)?;
        let key = header.unlock(key_material, &mut file)?;
        let seg = header.segment();
        let payload_size = match seg.size {
            Some(s) => s,
            None => {
                let len = file.metadata().map_err(io_err("cannot stat", path))?.len();
                let ss = u64::from(seg.sector_size);
                (len.saturating_sub(seg.offset) / ss) * ss
            }
        };
        Ok(Volume {
            file,
            path: path.to_owned(),
            header,
            key,
            payload_size,
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The volume key.
    pub fn volume_key(&self) -> &VolumeKey {
        &self.key
    }

    /// Bytes of plaintext the segment holds.
    pub fn payload_size(&self) -> u64 {
        self.payload_size
    }

    fn range(&self, offset: u64, len: usize) -> Result<(), WriteError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.payload_size => Ok(()),
            _ => Err(Error::OutOfRange {
                offset,
                len: len as u64,
            }
            .into()),
        }
    }

    /// Encrypts `data` into the segment at plaintext byte `offset`. Partial sectors are
    /// read, decrypted, patched and re-encrypted.
    pub fn write_plaintext(&mut self, offset: u64, data: &[u8]) -> Result<(), WriteError> {
        self.range(offset, data.len())?;
        let seg = *self.key.segment();
        let ss = u64::from(seg.sector_size);
        let mut sector = Zeroizing::new(vec![0u8; ss as usize]);
        let mut pos = offset;
        let mut done = 0usize;
        while done < data.len() {
            let n = pos / ss;
            let within = (pos % ss) as usize;
            let take = (ss as usize - within).min(data.len() - done);
            let dev = seg.offset + n * ss;
            if take != ss as usize {
                self.file
                    .read_exact_at(&mut sector, dev)
                    .map_err(io_err("cannot read", &self.path))?;
                self.key.decrypt_sector(n, &mut sector)?;
            }
            sector[within..within + take].copy_from_slice(&data[done..done + take]);
            self.key.encrypt_sector(n, &mut sector)?;
            self.file
                .write_all_at(&sector, dev)
                .map_err(io_err("cannot write", &self.path))?;
            done += take;
            pos += take as u64;
        }
        Ok(())
    }

    /// Reads and decrypts plaintext at byte `offset` of the segment.
    pub fn read_plaintext(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), WriteError> {
        self.range(offset, buf.len())?;
        self.key.read_plaintext(&mut self.file, offset, buf)?;
        Ok(())
    }

    /// Flushes data and metadata to the disk.
    pub fn sync(&self) -> Result<(), WriteError> {
        self.file
            .sync_all()
            .map_err(io_err("cannot sync", &self.path))
    }
}
