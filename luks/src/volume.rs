//! The unlocked volume key and sector encryption of the data segment.

use zeroize::Zeroize;

use crate::crypto::Xts;
use crate::io::{read_at, BlockRead};
use crate::metadata::Segment;
use crate::Error;

/// The volume (master) key of an unlocked LUKS2 volume, with the data segment it
/// encrypts. The key bytes and the AES round keys are zeroized on drop; `Debug` does not
/// print the key.
pub struct VolumeKey {
    key: [u8; 64],
    len: usize,
    xts: Xts,
    segment: Segment,
    keyslot: u32,
}

impl core::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VolumeKey")
            .field("len", &self.len)
            .field("segment", &self.segment)
            .field("keyslot", &self.keyslot)
            .finish_non_exhaustive()
    }
}

impl Drop for VolumeKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl VolumeKey {
    pub(crate) fn new(key: &[u8], segment: Segment, keyslot: u32) -> Result<Self, Error> {
        if key.len() != segment.key_size {
            return Err(Error::InvalidMetadata(
                "volume key size differs from the segment's",
            ));
        }
        let xts = Xts::new(key)?;
        let mut k = [0u8; 64];
        k[..key.len()].copy_from_slice(key);
        Ok(Self {
            key: k,
            len: key.len(),
            xts,
            segment,
            keyslot,
        })
    }

    /// The raw volume key (what `cryptsetup luksDump --dump-volume-key` prints).
    pub fn as_bytes(&self) -> &[u8] {
        &self.key[..self.len]
    }

    /// The encrypted segment: device offset, size, sector size.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The keyslot that yielded this key.
    pub fn keyslot(&self) -> u32 {
        self.keyslot
    }

    fn check_sector(&self, sector_no: u64, buf: &[u8]) -> Result<(), Error> {
        let ss = self.segment.sector_size as usize;
        if buf.len() != ss {
            return Err(Error::SectorBuffer {
                expected: ss,
                got: buf.len(),
            });
        }
        let in_range = sector_no
            .checked_add(1)
            .and_then(|n| n.checked_mul(ss as u64))
            .is_some_and(|end| self.segment.size.is_none_or(|size| end <= size));
        if !in_range {
            return Err(Error::OutOfRange {
                offset: sector_no.saturating_mul(ss as u64),
                len: ss as u64,
            });
        }
        Ok(())
    }

    /// Decrypts sector `sector_no` of the segment (counted in `sector_size` units from the
    /// segment's start, which is also its `plain64` IV, as dm-crypt's `iv_large_sectors`)
    /// in place. `buf` is exactly one sector.
    pub fn decrypt_sector(&self, sector_no: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.check_sector(sector_no, buf)?;
        self.xts.decrypt(buf, sector_no);
        Ok(())
    }

    /// Encrypts sector `sector_no` of the segment in place; the inverse of
    /// [`decrypt_sector`](Self::decrypt_sector).
    pub fn encrypt_sector(&self, sector_no: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.check_sector(sector_no, buf)?;
        self.xts.encrypt(buf, sector_no);
        Ok(())
    }

    /// Reads and decrypts `buf.len()` plaintext bytes at byte `offset` of the segment,
    /// any alignment. Fails with [`Error::OutOfRange`] past a fixed-size segment's end.
    pub fn read_plaintext<R: BlockRead + ?Sized>(
        &self,
        io: &mut R,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), Error> {
        let ss = u64::from(self.segment.sector_size);
        let oor = Error::OutOfRange {
            offset,
            len: buf.len() as u64,
        };
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or(Error::OutOfRange {
                offset,
                len: buf.len() as u64,
            })?;
        if self.segment.size.is_some_and(|s| end > s) {
            return Err(oor);
        }
        let mut sector = [0u8; 4096];
        let sector = &mut sector[..ss as usize];
        let mut pos = offset;
        let mut done = 0usize;
        while done < buf.len() {
            let n = pos / ss;
            let within = (pos % ss) as usize;
            let dev = self
                .segment
                .offset
                .checked_add(n * ss)
                .ok_or(Error::OutOfRange {
                    offset,
                    len: buf.len() as u64,
                })?;
            read_at(io, dev, sector)?;
            self.decrypt_sector(n, sector)?;
            let take = (ss as usize - within).min(buf.len() - done);
            buf[done..done + take].copy_from_slice(&sector[within..within + take]);
            done += take;
            pos += take as u64;
        }
        sector.zeroize();
        Ok(())
    }
}
