//! Bounds-checked little-endian reading and writing for the TDX wire formats.
//!
//! Every read returns [`Truncated`] instead of panicking, so parsers built on it can be
//! fed arbitrary bytes.

/// A read ran past the end of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {what} needs {needed} bytes at offset {offset} but only {available} remain")]
pub struct Truncated {
    /// The field being read.
    pub what: &'static str,
    /// Offset of the field in the input.
    pub offset: usize,
    /// Bytes the field needs.
    pub needed: usize,
    /// Bytes left in the input.
    pub available: usize,
}

/// A cursor over untrusted bytes.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Current offset from the start of the input.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Truncated> {
        let rest = self.rest();
        match rest.get(..n) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(Truncated {
                what,
                offset: self.pos,
                needed: n,
                available: rest.len(),
            }),
        }
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], Truncated> {
        let s = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, Truncated> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
}

/// Appends little-endian integers and byte strings.
pub(crate) trait Writer {
    fn put(&mut self, b: &[u8]);
    fn put_u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
}

impl Writer for Vec<u8> {
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

/// Serde helpers for fixed-size byte arrays as lowercase hex strings.
pub(crate) mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s.trim_start_matches("0x")).map_err(serde::de::Error::custom)?;
        v.try_into().map_err(|v: Vec<u8>| {
            serde::de::Error::custom(format!("expected {N} bytes of hex, found {}", v.len()))
        })
    }
}

/// Serde helpers for optional fixed-size byte arrays as hex strings.
pub(crate) mod hex_array_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(
        v: &Option<[u8; N]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<Option<[u8; N]>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                let v =
                    hex::decode(s.trim_start_matches("0x")).map_err(serde::de::Error::custom)?;
                v.try_into().map_err(|v: Vec<u8>| {
                    serde::de::Error::custom(format!(
                        "expected {N} bytes of hex, found {}",
                        v.len()
                    ))
                })
            })
            .transpose()
    }
}

/// Serde helpers for the four RTMRs (boxed) as a list of hex strings.
pub(crate) mod hex_rtmrs {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[[u8; 48]; 4], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<[[u8; 48]; 4]>, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        if list.len() != 4 {
            return Err(serde::de::Error::custom(format!(
                "expected 4 RTMRs, found {}",
                list.len()
            )));
        }
        let mut out = [[0u8; 48]; 4];
        for (slot, s) in out.iter_mut().zip(&list) {
            let v = hex::decode(s).map_err(serde::de::Error::custom)?;
            *slot = v
                .try_into()
                .map_err(|_| serde::de::Error::custom("an RTMR must be 48 bytes"))?;
        }
        Ok(Box::new(out))
    }
}
