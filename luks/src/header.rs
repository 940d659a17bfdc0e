//! A parsed LUKS2 header (both copies checked) and unlocking it.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use zeroize::Zeroizing;

use crate::crypto::{self, Xts};
use crate::disk::{self, BINARY_HEADER_LEN, HEADER_SIZES, MAGIC_PRIMARY, MAGIC_SECONDARY};
use crate::io::{read_at, BlockRead};
use crate::metadata::{self, Keyslot, Metadata, Segment};
use crate::volume::VolumeKey;
use crate::{Error, Limits};

/// Which header copy the metadata came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// The copy at offset 0.
    Primary,
    /// The copy at offset `hdr_size`.
    Secondary,
}

/// A validated LUKS2 header.
#[derive(Debug, Clone)]
pub struct Header {
    /// Size of one header copy (binary header plus JSON area).
    pub hdr_size: u64,
    /// Sequence id of the copy in use.
    pub seqid: u64,
    /// Volume UUID.
    pub uuid: String,
    /// Label (may be empty).
    pub label: String,
    /// Subsystem (may be empty).
    pub subsystem: String,
    /// Which copy is in use.
    pub used: Copy,
    /// Whether the other copy was also valid and identical in sequence id. `false` means a
    /// damaged or stale copy (cryptsetup would repair it on the next write).
    pub both_copies_valid: bool,
    metadata: Metadata,
}

/// How many bytes from the start of the device [`Header::parse`] needs, read from the
/// primary binary header in `first` (at least [`BINARY_HEADER_LEN`] bytes): both header
/// copies, `2 × hdr_size` (32 KiB for cryptsetup's default).
pub fn header_area_len(first: &[u8]) -> Result<usize, Error> {
    let b = disk::parse_binary(first, 0, &MAGIC_PRIMARY)?;
    Ok(2 * b.hdr_size as usize)
}

struct ValidCopy {
    bin: disk::BinaryHeader,
    metadata: Metadata,
}

/// Validates the header copy that starts at device offset `offset`; `copy` is exactly its
/// `hdr_size` bytes (the caller got `hdr_size` from the binary header).
fn parse_copy(copy: &[u8], offset: u64, magic: &[u8; 6]) -> Result<ValidCopy, Error> {
    let bin = disk::parse_binary(copy, offset, magic)?;
    let size = bin.hdr_size as usize;
    let copy = copy.get(..size).ok_or(Error::Truncated {
        needed: size,
        got: copy.len(),
    })?;
    disk::verify_checksum(copy, offset)?;
    let area = &copy[BINARY_HEADER_LEN..];
    let end = area
        .iter()
        .position(|&b| b == 0)
        .ok_or(Error::JsonNotTerminated)?;
    let metadata = metadata::parse(&area[..end], bin.hdr_size)?;
    Ok(ValidCopy { bin, metadata })
}

fn choose(
    primary: Result<ValidCopy, Error>,
    secondary: Result<ValidCopy, Error>,
) -> Result<Header, Error> {
    let (v, used, both) = match (primary, secondary) {
        (Ok(p), Ok(s)) => {
            if p.bin.hdr_size != s.bin.hdr_size {
                return Err(Error::HeaderSizeMismatch {
                    primary: p.bin.hdr_size,
                    secondary: s.bin.hdr_size,
                });
            }
            if s.bin.seqid > p.bin.seqid {
                (s, Copy::Secondary, false)
            } else {
                let same = s.bin.seqid == p.bin.seqid;
                (p, Copy::Primary, same)
            }
        }
        (Ok(p), Err(_)) => (p, Copy::Primary, false),
        (Err(_), Ok(s)) => (s, Copy::Secondary, false),
        (Err(p), Err(s)) => {
            return Err(Error::NoValidHeader {
                primary: Box::new(p),
                secondary: Box::new(s),
            })
        }
    };
    Ok(Header {
        hdr_size: v.bin.hdr_size,
        seqid: v.bin.seqid,
        uuid: v.bin.uuid,
        label: v.bin.label,
        subsystem: v.bin.subsystem,
        used,
        both_copies_valid: both,
        metadata: v.metadata,
    })
}

impl Header {
    /// Parses the header area: `bytes` starts at device offset 0 and holds at least
    /// [`header_area_len`] bytes (both copies). With fewer, returns
    /// [`Error::Truncated`] naming how many are needed.
    ///
    /// If the primary copy is damaged, the secondary is searched at every offset the
    /// specification allows that lies within `bytes` (up to 8 MiB for the largest header).
    /// When both copies are valid, the one with the higher sequence id wins.
    pub fn parse(bytes: &[u8]) -> Result<Header, Error> {
        if bytes.len() < BINARY_HEADER_LEN {
            return Err(Error::Truncated {
                needed: BINARY_HEADER_LEN,
                got: bytes.len(),
            });
        }
        match disk::parse_binary(bytes, 0, &MAGIC_PRIMARY) {
            Ok(bin) => {
                let size = bin.hdr_size as usize;
                if bytes.len() < 2 * size {
                    return Err(Error::Truncated {
                        needed: 2 * size,
                        got: bytes.len(),
                    });
                }
                let primary = parse_copy(&bytes[..size], 0, &MAGIC_PRIMARY);
                let secondary = parse_copy(&bytes[size..2 * size], size as u64, &MAGIC_SECONDARY);
                choose(primary, secondary)
            }
            Err(primary_err) => {
                let mut secondary = Err(Error::BadMagic {
                    offset: HEADER_SIZES[0],
                });
                for &off in &HEADER_SIZES {
                    let off_us = off as usize;
                    let Some(rest) = bytes.get(off_us..) else {
                        break;
                    };
                    if rest.len() < BINARY_HEADER_LEN || rest[..6] != MAGIC_SECONDARY {
                        continue;
                    }
                    secondary = parse_copy(rest, off, &MAGIC_SECONDARY);
                    if secondary.is_ok() {
                        break;
                    }
                }
                choose(Err(primary_err), secondary)
            }
        }
    }

    /// Reads and parses the header area from a device: the primary binary header first,
    /// then both copies; if the primary is damaged, each allowed secondary offset in turn.
    /// Reads at most 8 MiB + 4 KiB, whatever the device holds.
    pub fn read_from<R: BlockRead + ?Sized>(io: &mut R) -> Result<Header, Error> {
        let mut first = [0u8; BINARY_HEADER_LEN];
        read_at(io, 0, &mut first)?;
        match header_area_len(&first) {
            Ok(len) => {
                let mut buf = alloc_zeroed(len)?;
                read_at(io, 0, &mut buf)?;
                Header::parse(&buf)
            }
            Err(primary_err) => {
                let mut secondary = Err(Error::BadMagic {
                    offset: HEADER_SIZES[0],
                });
                for &off in &HEADER_SIZES {
                    let mut bin = [0u8; BINARY_HEADER_LEN];
                    if read_at(io, off, &mut bin).is_err() || bin[..6] != MAGIC_SECONDARY {
                        continue;
                    }
                    secondary = match disk::parse_binary(&bin, off, &MAGIC_SECONDARY) {
                        Ok(b) => {
                            let mut buf = alloc_zeroed(b.hdr_size as usize)?;
                            read_at(io, off, &mut buf)?;
                            parse_copy(&buf, off, &MAGIC_SECONDARY)
                        }
                        Err(e) => Err(e),
                    };
                    if secondary.is_ok() {
                        break;
                    }
                }
                choose(Err(primary_err), secondary)
            }
        }
    }

    /// The encrypted data segment.
    pub fn segment(&self) -> Segment {
        self.metadata.segment
    }

    /// The decoded metadata (keyslots, digests, segment, config sizes).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Unlocks the volume key with a passphrase or key file's bytes, under the default
    /// [`Limits`].
    pub fn unlock<R: BlockRead + ?Sized>(
        &self,
        key: &[u8],
        io: &mut R,
    ) -> Result<VolumeKey, Error> {
        self.unlock_with_limits(key, io, &Limits::default())
    }

    /// Unlocks the volume key: tries keyslots by priority (high first; priority 0 is never
    /// tried, as in cryptsetup) and returns the first key that matches its digest.
    ///
    /// Keyslots whose KDF exceeds `limits` are skipped; if none unlocks, the first such
    /// [`Error::KdfLimit`] is returned, else [`Error::WrongKey`].
    pub fn unlock_with_limits<R: BlockRead + ?Sized>(
        &self,
        key: &[u8],
        io: &mut R,
        limits: &Limits,
    ) -> Result<VolumeKey, Error> {
        crypto::check_key_material(key)?;
        let mut order: Vec<&Keyslot> = self
            .metadata
            .keyslots
            .iter()
            .filter(|k| k.priority > 0)
            .collect();
        order.sort_by_key(|k| (core::cmp::Reverse(k.priority), k.id));
        let mut first_err = None;
        for ks in order {
            match self.try_keyslot(ks, key, io, limits) {
                Ok(Some(vk)) => return Ok(vk),
                Ok(None) => {}
                Err(e @ (Error::Io { .. } | Error::OutOfMemory(_))) => return Err(e),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or(Error::WrongKey))
    }

    fn try_keyslot<R: BlockRead + ?Sized>(
        &self,
        ks: &Keyslot,
        key: &[u8],
        io: &mut R,
        limits: &Limits,
    ) -> Result<Option<VolumeKey>, Error> {
        crypto::check_limits(ks, limits)?;
        let digests: Vec<_> = self
            .metadata
            .digests
            .iter()
            .filter(|d| {
                d.keyslots.contains(&ks.id) && d.segments.contains(&self.metadata.segment.id)
            })
            .collect();
        for d in &digests {
            if d.iterations > limits.max_pbkdf2_iterations {
                return Err(Error::KdfLimit {
                    keyslot: ks.id,
                    what: "digest pbkdf2 iterations",
                    value: d.iterations.into(),
                    limit: limits.max_pbkdf2_iterations.into(),
                });
            }
        }
        let mut area_key = Zeroizing::new([0u8; 64]);
        let area_key = &mut area_key[..ks.area_key_size];
        crypto::derive(&ks.kdf, key, area_key)?;

        let len = ks.material_len();
        let mut material = Zeroizing::new(alloc_zeroed(len)?);
        read_at(io, ks.area_offset, &mut material)?;
        let xts = Xts::new(area_key)?;
        for (i, sector) in material.chunks_mut(512).enumerate() {
            xts.decrypt(sector, i as u64);
        }
        drop(xts);
        let candidate = crypto::af_merge(&material, ks.key_size, ks.stripes as usize, ks.af_hash);

        for d in digests {
            let mut out = Zeroizing::new([0u8; 64]);
            let out = &mut out[..d.digest.len()];
            crypto::pbkdf2(d.hash, &candidate, &d.salt, d.iterations, out);
            if crypto::ct_eq(out, &d.digest) {
                return VolumeKey::new(&candidate, self.metadata.segment, ks.id).map(Some);
            }
        }
        Ok(None)
    }
}

fn alloc_zeroed(len: usize) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| Error::OutOfMemory(len))?;
    v.resize(len, 0);
    Ok(v)
}
