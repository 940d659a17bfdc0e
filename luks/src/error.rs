//! The reader's error type.

use alloc::boxed::Box;

/// Why a LUKS2 header could not be parsed or a volume could not be unlocked or read.
///
/// Every malformed or hostile input ends in one of these; the reader never panics on input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller supplied fewer bytes than the header area needs; read `needed` bytes from
    /// the start of the device and call again.
    #[error("the header area needs {needed} bytes but only {got} were supplied")]
    Truncated {
        /// Bytes needed from offset 0 of the device.
        needed: usize,
        /// Bytes supplied.
        got: usize,
    },
    /// The magic is neither `LUKS\xba\xbe` nor `SKUL\xba\xbe` where a header copy should be.
    #[error("no LUKS2 magic at byte offset {offset}")]
    BadMagic {
        /// Device offset of the header copy.
        offset: u64,
    },
    /// A header with another LUKS version (LUKS1 is not supported).
    #[error("LUKS version {0} is not supported (only LUKS2)")]
    UnsupportedVersion(u16),
    /// `hdr_size` is not one of the sizes the LUKS2 specification allows (16 KiB to 4 MiB).
    #[error("header size {0} is not one of the LUKS2 sizes (16 KiB..4 MiB, powers of two)")]
    BadHeaderSize(u64),
    /// The header copy says it lives somewhere other than where it was found.
    #[error("header copy at offset {found} claims offset {claimed}")]
    BadHeaderOffset {
        /// Where the copy was read.
        found: u64,
        /// The copy's `hdr_offset` field.
        claimed: u64,
    },
    /// The two header copies disagree on the header size.
    #[error("primary header size {primary} differs from the secondary's {secondary}")]
    HeaderSizeMismatch {
        /// Primary `hdr_size`.
        primary: u64,
        /// Secondary `hdr_size`.
        secondary: u64,
    },
    /// A checksum algorithm other than SHA-256.
    #[error("header checksum algorithm is not sha256")]
    UnsupportedChecksum,
    /// The SHA-256 over the header copy does not match its checksum field.
    #[error("header checksum mismatch at offset {offset}")]
    BadChecksum {
        /// Device offset of the header copy.
        offset: u64,
    },
    /// Neither header copy is usable; `primary` is why the primary copy failed.
    #[error("neither LUKS2 header copy is valid (secondary: {secondary})")]
    NoValidHeader {
        /// Why the primary copy was rejected.
        #[source]
        primary: Box<Error>,
        /// Why the secondary copy was rejected (or that none was found).
        secondary: Box<Error>,
    },
    /// The JSON area has no NUL terminator.
    #[error("the JSON metadata area is not NUL-terminated")]
    JsonNotTerminated,
    /// The JSON metadata is not valid JSON of the expected shape.
    #[error("the JSON metadata does not parse")]
    Json(#[source] serde_json::Error),
    /// The JSON metadata parses but violates the LUKS2 format (message names the rule).
    #[error("invalid LUKS2 metadata: {0}")]
    InvalidMetadata(&'static str),
    /// Valid LUKS2 but outside the subset this crate implements (message names the feature).
    #[error("unsupported LUKS2 feature: {0}")]
    Unsupported(&'static str),
    /// A keyslot's KDF parameters exceed the caller's [`Limits`](crate::Limits).
    #[error("keyslot {keyslot}: {what} {value} exceeds the limit {limit}")]
    KdfLimit {
        /// Keyslot id.
        keyslot: u32,
        /// Which parameter.
        what: &'static str,
        /// The header's value.
        value: u64,
        /// The configured limit.
        limit: u64,
    },
    /// Memory for the KDF or a keyslot could not be allocated.
    #[error("could not allocate {0} bytes")]
    OutOfMemory(usize),
    /// The KDF rejected its parameters (for example an Argon2 salt shorter than 8 bytes).
    #[error("the key derivation function rejected its parameters")]
    Kdf,
    /// The passphrase or key file is empty or longer than 8 MiB (cryptsetup's limit).
    #[error("key material must be 1..=8388608 bytes, got {0}")]
    KeyMaterialLength(usize),
    /// No keyslot accepted the passphrase or key file.
    #[error("no keyslot accepts this passphrase or key file")]
    WrongKey,
    /// The buffer passed for one sector has the wrong length.
    #[error("sector buffer is {got} bytes, the segment's sector size is {expected}")]
    SectorBuffer {
        /// The segment's sector size.
        expected: usize,
        /// The buffer's length.
        got: usize,
    },
    /// A read or write past the end of the encrypted segment.
    #[error("range {offset}+{len} lies outside the encrypted segment")]
    OutOfRange {
        /// Offset within the segment.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The block device failed.
    #[error("reading {len} bytes at device offset {offset} failed")]
    Io {
        /// Device offset.
        offset: u64,
        /// Length.
        len: usize,
        /// The device's error.
        #[source]
        source: crate::IoError,
    },
}
