//! The confidential-computing event log (TCG PC Client crypto-agile format, as carried
//! by the CCEL ACPI table) that records every RTMR extension, so a verifier can replay
//! it and compare against the RTMRs in a quote.
//!
//! Layout: a first event in the legacy SHA-1 format (`EV_NO_ACTION` carrying the
//! `"Spec ID Event03"` structure that lists the digest algorithms), then
//! `TCG_PCR_EVENT2` records: u32 MR index | u32 event type | u32 digest count |
//! {u16 algorithm id | digest}… | u32 event size | event data. For CC event logs the MR
//! index is 0 for MRTD and 1..=4 for RTMR0..3.

use serde::Serialize;

use super::rtmr_extend;

/// TCG algorithm id of SHA-384.
pub const TPM_ALG_SHA384: u16 = 0x000C;
/// `EV_NO_ACTION`: informational, never extended.
pub const EV_NO_ACTION: u32 = 0x3;
/// `EV_IPL`: an initial program loader component (kernel, initrd, command line).
pub const EV_IPL: u32 = 0xD;
/// `EV_EVENT_TAG`: a tagged event.
pub const EV_EVENT_TAG: u32 = 0x6;

/// The largest log accepted by [`EventLog::parse`] (the CCEL area is normally 64 KiB).
pub const MAX_LOG_LEN: usize = 16 << 20;
const MAX_EVENT_DATA: usize = 1 << 20;

/// One measured event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// CC MR index: 1..=4 for RTMR0..3.
    pub mr_index: u32,
    /// TCG event type.
    pub event_type: u32,
    /// The SHA-384 digest extended into the RTMR.
    #[serde(with = "hex::serde")]
    pub digest: [u8; 48],
    /// Event data (a description; not part of the extension).
    #[serde(serialize_with = "ser_data")]
    pub data: Vec<u8>,
}

fn ser_data<S: serde::Serializer>(d: &[u8], s: S) -> Result<S::Ok, S::Error> {
    match std::str::from_utf8(d) {
        Ok(t) if t.chars().all(|c| !c.is_control() || c == '\0') => {
            s.serialize_str(t.trim_end_matches('\0'))
        }
        _ => s.serialize_str(&hex::encode(d)),
    }
}

impl Event {
    /// The RTMR index (0..=3) this event extends.
    pub fn rtmr(&self) -> Option<usize> {
        (1..=4)
            .contains(&self.mr_index)
            .then(|| self.mr_index as usize - 1)
    }
}

/// Why an event log was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventLogError {
    /// The log ended inside a record.
    #[error("event log is truncated at byte {0}")]
    Truncated(usize),
    /// The first event is not a Spec ID event.
    #[error("event log does not start with a \"Spec ID Event03\" header")]
    NoSpecId,
    /// The log does not use SHA-384.
    #[error("event log does not record SHA-384 digests")]
    NoSha384,
    /// A record names an algorithm the header did not declare.
    #[error("event {index} uses undeclared digest algorithm {alg:#06x}")]
    UnknownAlgorithm {
        /// Record number.
        index: usize,
        /// Algorithm id.
        alg: u16,
    },
    /// A record extends an MR that does not exist.
    #[error("event {index} names MR index {mr_index}, expected 1..=4 (RTMR0..3)")]
    BadMrIndex {
        /// Record number.
        index: usize,
        /// The index found.
        mr_index: u32,
    },
    /// A size field is absurd.
    #[error("event log is too large or has an oversized field")]
    TooLarge,
}

/// An ordered list of RTMR events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventLog {
    /// The events, in extension order.
    pub events: Vec<Event>,
}

fn spec_id_event() -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(b"Spec ID Event03\0");
    e.extend_from_slice(&0u32.to_le_bytes()); // platform class
    e.extend_from_slice(&[0, 2, 0, 2]); // spec version minor, major, errata, uintn size (UINT64)
    e.extend_from_slice(&1u32.to_le_bytes()); // number of algorithms
    e.extend_from_slice(&TPM_ALG_SHA384.to_le_bytes());
    e.extend_from_slice(&48u16.to_le_bytes());
    e.push(0); // vendor info size
    e
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EventLogError> {
        let end = self.pos.checked_add(n).ok_or(EventLogError::TooLarge)?;
        let s = self
            .b
            .get(self.pos..end)
            .ok_or(EventLogError::Truncated(self.pos))?;
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, EventLogError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, EventLogError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

impl EventLog {
    /// Appends an event and extends nothing: use [`EventLog::replay`] for the values.
    pub fn push(&mut self, e: Event) {
        self.events.push(e);
    }

    /// The RTMR values the events produce, starting from zero.
    pub fn replay(&self) -> [[u8; 48]; 4] {
        let mut rtmrs = [[0u8; 48]; 4];
        for e in &self.events {
            if let Some(i) = e.rtmr() {
                rtmr_extend(&mut rtmrs[i], &e.digest);
            }
        }
        rtmrs
    }

    /// Serializes the log in the TCG crypto-agile format (SHA-384 only).
    pub fn to_bytes(&self) -> Vec<u8> {
        let spec = spec_id_event();
        let mut v = Vec::new();
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        v.extend_from_slice(&[0u8; 20]);
        v.extend_from_slice(&(spec.len() as u32).to_le_bytes());
        v.extend_from_slice(&spec);
        for e in &self.events {
            v.extend_from_slice(&e.mr_index.to_le_bytes());
            v.extend_from_slice(&e.event_type.to_le_bytes());
            v.extend_from_slice(&1u32.to_le_bytes());
            v.extend_from_slice(&TPM_ALG_SHA384.to_le_bytes());
            v.extend_from_slice(&e.digest);
            v.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
            v.extend_from_slice(&e.data);
        }
        v
    }

    /// Parses a crypto-agile log. Unused trailing space (all 0x00 or all 0xFF, as
    /// firmware leaves the CCEL area) is accepted. `EV_NO_ACTION` records and MRTD
    /// records (index 0) are skipped; other algorithms' digests are ignored.
    pub fn parse(b: &[u8]) -> Result<Self, EventLogError> {
        if b.len() > MAX_LOG_LEN {
            return Err(EventLogError::TooLarge);
        }
        let mut r = Reader { b, pos: 0 };
        // Legacy-format header event.
        let _pcr = r.u32()?;
        let ty = r.u32()?;
        r.take(20)?;
        let size = r.u32()? as usize;
        if ty != EV_NO_ACTION || size > MAX_EVENT_DATA {
            return Err(EventLogError::NoSpecId);
        }
        let spec = r.take(size)?;
        let mut s = Reader { b: spec, pos: 0 };
        if s.take(16).map_err(|_| EventLogError::NoSpecId)? != b"Spec ID Event03\0" {
            return Err(EventLogError::NoSpecId);
        }
        s.take(8).map_err(|_| EventLogError::NoSpecId)?;
        let n_alg = s.u32().map_err(|_| EventLogError::NoSpecId)? as usize;
        if n_alg > 16 {
            return Err(EventLogError::TooLarge);
        }
        let mut algs = Vec::with_capacity(n_alg);
        for _ in 0..n_alg {
            let id = s.u16().map_err(|_| EventLogError::NoSpecId)?;
            let len = s.u16().map_err(|_| EventLogError::NoSpecId)? as usize;
            // An algorithm declared twice (with two sizes) is not a valid Spec ID event.
            if algs.iter().any(|&(a, _)| a == id) {
                return Err(EventLogError::NoSpecId);
            }
            algs.push((id, len));
        }
        if !algs.contains(&(TPM_ALG_SHA384, 48)) {
            return Err(EventLogError::NoSha384);
        }

        // Where the trailing padding starts (all 0x00, or all 0xFF, to the end): found
        // once, so a log of many tiny records costs linear time, not quadratic.
        let padding_from = |fill: u8| {
            b.iter()
                .rposition(|&x| x != fill)
                .map_or(0, |last| last + 1)
        };
        let padding = padding_from(0).min(padding_from(0xFF));
        let mut log = EventLog::default();
        let mut index = 0;
        while r.pos < b.len() {
            if r.pos >= padding {
                break;
            }
            index += 1;
            let mr_index = r.u32()?;
            let event_type = r.u32()?;
            let count = r.u32()? as usize;
            if count > n_alg {
                return Err(EventLogError::TooLarge);
            }
            let mut digest = None;
            for _ in 0..count {
                let alg = r.u16()?;
                let len = algs
                    .iter()
                    .find(|(id, _)| *id == alg)
                    .map(|&(_, l)| l)
                    .ok_or(EventLogError::UnknownAlgorithm { index, alg })?;
                let d = r.take(len)?;
                if alg == TPM_ALG_SHA384 {
                    let mut a = [0u8; 48];
                    a.copy_from_slice(d);
                    digest = Some(a);
                }
            }
            let size = r.u32()? as usize;
            if size > MAX_EVENT_DATA {
                return Err(EventLogError::TooLarge);
            }
            let data = r.take(size)?.to_vec();
            if event_type == EV_NO_ACTION || mr_index == 0 {
                continue;
            }
            if !(1..=4).contains(&mr_index) {
                return Err(EventLogError::BadMrIndex { index, mr_index });
            }
            let digest = digest.ok_or(EventLogError::NoSha384)?;
            log.events.push(Event {
                mr_index,
                event_type,
                digest,
                data,
            });
        }
        Ok(log)
    }
}

#[cfg(test)]
mod tests {
    /// A Spec ID event declaring SHA-384 twice with different sizes is refused, never a
    /// panic (a 32-byte "SHA-384" digest copied into 48 bytes).
    #[test]
    fn an_algorithm_declared_twice_is_refused() {
        let mut spec = b"Spec ID Event03\0".to_vec();
        spec.extend_from_slice(&[0u8; 8]);
        spec.extend_from_slice(&2u32.to_le_bytes());
        for (id, len) in [(0x000Cu16, 32u16), (0x000C, 48)] {
            spec.extend_from_slice(&id.to_le_bytes());
            spec.extend_from_slice(&len.to_le_bytes());
        }
        spec.push(0);
        let mut b = Vec::new();
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        b.extend_from_slice(&[0u8; 20]);
        b.extend_from_slice(&(spec.len() as u32).to_le_bytes());
        b.extend_from_slice(&spec);
        // One record with a 32-byte digest under the SHA-384 id.
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0xDu32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0x000Cu16.to_le_bytes());
        b.extend_from_slice(&[7u8; 32]);
        b.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(EventLog::parse(&b), Err(EventLogError::NoSpecId)));
    }

    /// Trailing padding is recognised whatever precedes it, and a long run of tiny
    /// records before a final non-padding byte is parsed record by record (linear).
    #[test]
    fn padding_is_found_once_and_tiny_records_still_parse() {
        let mut log = EventLog::default();
        log.events.push(Event {
            mr_index: 2,
            event_type: 0xD,
            digest: [1u8; 48],
            data: b"x".to_vec(),
        });
        let mut b = log.to_bytes();
        let n = b.len();
        b.extend_from_slice(&[0xFF; 64]);
        assert_eq!(EventLog::parse(&b).unwrap().events.len(), 1);
        b.truncate(n);
        b.extend_from_slice(&[0u8; 64]);
        assert_eq!(EventLog::parse(&b).unwrap().events.len(), 1);
        // 16-byte MR-index-0 records of zeros, then one byte that is not padding: the
        // records are read (and skipped) until the reader runs out.
        b.truncate(n);
        b.extend_from_slice(&vec![0u8; 16 * 20_000]);
        b.push(1);
        assert!(EventLog::parse(&b).is_err());
    }

    use super::*;

    fn sample() -> EventLog {
        let mut l = EventLog::default();
        l.push(Event {
            mr_index: 2,
            event_type: EV_IPL,
            digest: [1; 48],
            data: b"kernel".to_vec(),
        });
        l.push(Event {
            mr_index: 3,
            event_type: EV_IPL,
            digest: [2; 48],
            data: b"cmdline".to_vec(),
        });
        l
    }

    #[test]
    fn round_trips_and_replays() {
        let l = sample();
        let mut bytes = l.to_bytes();
        bytes.extend_from_slice(&[0xFF; 64]);
        let p = EventLog::parse(&bytes).unwrap();
        assert_eq!(p, l);
        let r = p.replay();
        let mut expect = [0u8; 48];
        rtmr_extend(&mut expect, &[1; 48]);
        assert_eq!(r[1], expect);
        assert_eq!(r[0], [0; 48]);
        assert_eq!(r[3], [0; 48]);
    }

    #[test]
    fn rejects_malformed_logs_without_panicking() {
        let good = sample().to_bytes();
        for cut in 1..good.len() {
            // Every truncation is either an error or a shorter valid prefix, never a panic.
            let _ = EventLog::parse(&good[..cut]);
        }
        assert!(matches!(
            EventLog::parse(&good[..good.len() - 3]),
            Err(EventLogError::Truncated(_))
        ));
        let mut bad_mr = good.clone();
        let first_event = 32 + spec_id_event().len();
        bad_mr[first_event] = 9;
        assert_eq!(
            EventLog::parse(&bad_mr).unwrap_err(),
            EventLogError::BadMrIndex {
                index: 1,
                mr_index: 9
            }
        );
        let mut no_spec = good.clone();
        no_spec[32] = b'X';
        assert_eq!(
            EventLog::parse(&no_spec).unwrap_err(),
            EventLogError::NoSpecId
        );
    }
}
