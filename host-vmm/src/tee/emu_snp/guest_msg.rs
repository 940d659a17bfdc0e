//! SNP guest messages (AMD SEV-SNP ABI specification, §"Guest Messages"): the header,
//! AES-256-GCM under a VMPCK with the sequence number as IV, and the PSP side of
//! MSG_REPORT_REQ. The guest side (Linux `drivers/virt/coco/sev-guest`, the test
//! guest's `snp` module) encrypts a request with VMPCKn from the secrets page; the PSP
//! checks the sequence number (it must be the next one it expects for that VMPCK),
//! decrypts, answers with sequence number + 1, encrypted with the same key.
//!
//! Header (0x60 bytes): AUTHTAG (32, AES-GCM uses the first 16) | MSG_SEQNO u64 |
//! reserved 8 | ALGO u8 (1 = AES-256-GCM) | HDR_VERSION u8 (1) | HDR_SIZE u16 (0x60) |
//! MSG_TYPE u8 | MSG_VERSION u8 | MSG_SIZE u16 | reserved 4 | MSG_VMPCK u8 | reserved
//! 35. AAD: bytes 0x30..0x60. IV: MSG_SEQNO little-endian, zero-padded to 12 bytes.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::Zeroizing;

/// Header size.
pub const HDR_SIZE: usize = 0x60;
/// AES-256-GCM.
pub const ALGO_AES_256_GCM: u8 = 1;
/// Message types.
pub mod msg_type {
    #![allow(missing_docs)]
    pub const REPORT_REQ: u8 = 5;
    pub const REPORT_RSP: u8 = 6;
}
/// MSG_REPORT_REQ payload size: REPORT_DATA (64) | VMPL u32 | reserved 28.
pub const REPORT_REQ_SIZE: usize = 96;
/// MSG_REPORT_RSP payload: STATUS u32 | REPORT_SIZE u32 | reserved 24 | report.
pub const REPORT_RSP_HEADER: usize = 32;

/// Why a guest message is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GuestMsgError {
    /// The header is malformed (algorithm, version, sizes, VMPCK index).
    #[error("malformed guest message header")]
    Header,
    /// The sequence number is not the next one expected (a replay or a skip).
    #[error("guest message sequence number {got} where {expected} was expected")]
    Sequence {
        /// What the message carries.
        got: u64,
        /// What the PSP expects.
        expected: u64,
    },
    /// Authentication failed (wrong key, tampered message).
    #[error("guest message authentication failed")]
    Auth,
    /// The message type is not served.
    #[error("guest message type {0} is not served")]
    Type(u8),
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Sequence number.
    pub seqno: u64,
    /// Message type.
    pub msg_type: u8,
    /// Message version.
    pub msg_version: u8,
    /// Payload size.
    pub msg_size: u16,
    /// VMPCK index.
    pub vmpck: u8,
}

impl Header {
    /// Parses the header of `msg`.
    pub fn parse(msg: &[u8]) -> Result<Self, GuestMsgError> {
        if msg.len() < HDR_SIZE
            || msg[0x30] != ALGO_AES_256_GCM
            || msg[0x31] != 1
            || u16::from_le_bytes([msg[0x32], msg[0x33]]) as usize != HDR_SIZE
            || msg[0x3C] > 3
        {
            return Err(GuestMsgError::Header);
        }
        let h = Header {
            seqno: u64::from_le_bytes(
                msg[0x20..0x28]
                    .try_into()
                    .map_err(|_| GuestMsgError::Header)?,
            ),
            msg_type: msg[0x34],
            msg_version: msg[0x35],
            msg_size: u16::from_le_bytes([msg[0x36], msg[0x37]]),
            vmpck: msg[0x3C],
        };
        if HDR_SIZE + h.msg_size as usize > msg.len() {
            return Err(GuestMsgError::Header);
        }
        Ok(h)
    }

    /// Writes the header fields (not the tag) into `out[..HDR_SIZE]`.
    pub fn write(&self, out: &mut [u8]) {
        out[..HDR_SIZE].fill(0);
        out[0x20..0x28].copy_from_slice(&self.seqno.to_le_bytes());
        out[0x30] = ALGO_AES_256_GCM;
        out[0x31] = 1;
        out[0x32..0x34].copy_from_slice(&(HDR_SIZE as u16).to_le_bytes());
        out[0x34] = self.msg_type;
        out[0x35] = self.msg_version;
        out[0x36..0x38].copy_from_slice(&self.msg_size.to_le_bytes());
        out[0x3C] = self.vmpck;
    }
}

fn iv(seqno: u64) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[..8].copy_from_slice(&seqno.to_le_bytes());
    iv
}

/// Encrypts `payload` into a message with header `h` (its `msg_size` is set here)
/// under `key`.
pub fn seal(key: &[u8; 32], mut h: Header, payload: &[u8]) -> Vec<u8> {
    h.msg_size = payload.len() as u16;
    let mut out = vec![0u8; HDR_SIZE + payload.len()];
    h.write(&mut out);
    out[HDR_SIZE..].copy_from_slice(payload);
    let (head, body) = out.split_at_mut(HDR_SIZE);
    let cipher = Aes256Gcm::new(key.into());
    // Encryption fails only for messages longer than 64 GiB.
    if let Ok(tag) =
        cipher.encrypt_in_place_detached(&Nonce::from(iv(h.seqno)), &head[0x30..], body)
    {
        head[..16].copy_from_slice(&tag);
    }
    out
}

/// Decrypts and authenticates `msg` under `key`; returns the header and payload.
pub fn open(key: &[u8; 32], msg: &[u8]) -> Result<(Header, Zeroizing<Vec<u8>>), GuestMsgError> {
    let h = Header::parse(msg)?;
    let mut body = Zeroizing::new(msg[HDR_SIZE..HDR_SIZE + h.msg_size as usize].to_vec());
    let cipher = Aes256Gcm::new(key.into());
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&msg[..16]);
    cipher
        .decrypt_in_place_detached(
            &Nonce::from(iv(h.seqno)),
            &msg[0x30..HDR_SIZE],
            &mut body,
            &Tag::from(tag),
        )
        .map_err(|_| GuestMsgError::Auth)?;
    Ok((h, body))
}

/// The PSP's guest-message channel state: the four VMPCKs and the next sequence
/// number it expects on each.
pub struct Channel {
    vmpck: Zeroizing<[[u8; 32]; 4]>,
    next_seqno: [u64; 4],
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Channel(next {:?})", self.next_seqno)
    }
}

impl Channel {
    /// A channel with `vmpck` (what the launch writes into the secrets page); sequence
    /// numbers start at 1 (Linux's first request uses 1).
    pub fn new(vmpck: Zeroizing<[[u8; 32]; 4]>) -> Self {
        Self {
            vmpck,
            next_seqno: [1; 4],
        }
    }

    /// Handles request `msg`: `answer(type, version, payload)` builds the response
    /// payload (type + 1). Returns the encrypted response. The sequence number advances
    /// by two (request and response) only when the request authenticated.
    pub fn handle(
        &mut self,
        msg: &[u8],
        answer: impl FnOnce(u8, u8, &[u8]) -> Result<Vec<u8>, GuestMsgError>,
    ) -> Result<Vec<u8>, GuestMsgError> {
        let h = Header::parse(msg)?;
        let i = h.vmpck as usize;
        let (h, payload) = open(&self.vmpck[i], msg)?;
        if h.seqno != self.next_seqno[i] {
            return Err(GuestMsgError::Sequence {
                got: h.seqno,
                expected: self.next_seqno[i],
            });
        }
        self.next_seqno[i] = h.seqno + 2;
        let rsp = answer(h.msg_type, h.msg_version, &payload)?;
        let rh = Header {
            seqno: h.seqno + 1,
            msg_type: h.msg_type + 1,
            msg_version: h.msg_version,
            msg_size: 0,
            vmpck: h.vmpck,
        };
        Ok(seal(&self.vmpck[i], rh, &rsp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(seqno: u64, key: &[u8; 32]) -> Vec<u8> {
        let h = Header {
            seqno,
            msg_type: msg_type::REPORT_REQ,
            msg_version: 1,
            msg_size: 0,
            vmpck: 0,
        };
        seal(key, h, &[7u8; REPORT_REQ_SIZE])
    }

    #[test]
    fn a_request_is_answered_once_with_the_next_sequence_number() {
        let keys = Zeroizing::new([[1u8; 32], [2; 32], [3; 32], [4; 32]]);
        let mut ch = Channel::new(keys);
        let m = req(1, &[1; 32]);
        let rsp = ch
            .handle(&m, |t, _, p| {
                assert_eq!((t, p.len()), (msg_type::REPORT_REQ, REPORT_REQ_SIZE));
                assert_eq!(p[0], 7);
                Ok(vec![9; 40])
            })
            .unwrap();
        let (h, p) = open(&[1; 32], &rsp).unwrap();
        assert_eq!(
            (h.seqno, h.msg_type, &p[..]),
            (2, msg_type::REPORT_RSP, &[9u8; 40][..])
        );
        // Replaying the same request is refused: the PSP expects 3 now.
        assert_eq!(
            ch.handle(&m, |_, _, _| Ok(vec![])),
            Err(GuestMsgError::Sequence {
                got: 1,
                expected: 3
            })
        );
        ch.handle(&req(3, &[1; 32]), |_, _, _| Ok(vec![])).unwrap();
    }

    #[test]
    fn a_tampered_or_wrongly_keyed_request_fails_authentication() {
        let mut ch = Channel::new(Zeroizing::new([[1u8; 32]; 4]));
        let mut m = req(1, &[1; 32]);
        m[HDR_SIZE + 5] ^= 1;
        assert_eq!(
            ch.handle(&m, |_, _, _| Ok(vec![])),
            Err(GuestMsgError::Auth)
        );
        let mut m = req(1, &[1; 32]);
        m[0x35] = 2; // the header is authenticated data
        assert_eq!(
            ch.handle(&m, |_, _, _| Ok(vec![])),
            Err(GuestMsgError::Auth)
        );
        assert_eq!(
            ch.handle(&req(1, &[2; 32]), |_, _, _| Ok(vec![])),
            Err(GuestMsgError::Auth)
        );
        // A failed request does not advance the sequence number.
        ch.handle(&req(1, &[1; 32]), |_, _, _| Ok(vec![])).unwrap();
        let mut bad = req(3, &[1; 32]);
        bad[0x30] = 2;
        assert_eq!(
            ch.handle(&bad, |_, _, _| Ok(vec![])),
            Err(GuestMsgError::Header)
        );
    }
}
