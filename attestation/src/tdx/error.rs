//! The error of the TDX wire formats: parsing and serializing quotes
//! ([`super::quote`]) and the reports they carry ([`super::report`]). Apart from both so
//! that `quote` depends on `report` and not the reverse; `tdx::quote::QuoteError` and
//! `tdx::QuoteError` remain its public paths.

use super::wire::Truncated;

/// Largest accepted quote: real quotes are about 5 KiB; the bound keeps a hostile length
/// field from making us allocate or scan much.
pub const MAX_QUOTE_LEN: usize = 64 * 1024;

/// A quote that could not be parsed or serialized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// The input ended inside a field.
    #[error("the quote is truncated")]
    Truncated(#[source] Truncated),
    /// The input is larger than any quote we accept.
    #[error("the quote is {len} bytes, more than the {MAX_QUOTE_LEN} accepted")]
    TooLarge {
        /// Input length.
        len: usize,
    },
    /// Only versions 4 and 5 carry TD reports.
    #[error("quote version {0} is not supported (TDX quotes are version 4 or 5)")]
    UnsupportedVersion(u16),
    /// Only ECDSA-P256 attestation keys exist in DCAP today.
    #[error("attestation key type {0} is not supported (expected 2, ECDSA-P256)")]
    UnsupportedKeyType(u16),
    /// The quote is not from a TD.
    #[error("TEE type {0:#x} is not TDX (0x81)")]
    NotTdx(u32),
    /// The v5 body is not a TD 1.0 or TD 1.5 report.
    #[error("quote body type {0} is not supported (expected 2, TD 1.0, or 3, TD 1.5)")]
    UnsupportedBodyType(u16),
    /// The v5 body size does not match its type.
    #[error(
        "quote body type {body_type} declares {size} bytes, but that body is {expected} bytes"
    )]
    BodySizeMismatch {
        /// Declared body type.
        body_type: u16,
        /// Declared size.
        size: u32,
        /// Size of that body type.
        expected: usize,
    },
    /// Certification data of an unexpected type.
    #[error("{level} certification data has type {found}, expected {expected}")]
    UnsupportedCertificationData {
        /// Which certification data: outer (expected 6) or inner (expected 5).
        level: &'static str,
        /// Type found.
        found: u16,
        /// Type expected.
        expected: u16,
    },
    /// A length field disagrees with the data it describes.
    #[error("the {what} declares {declared} bytes but its contents take {actual}")]
    LengthMismatch {
        /// The structure whose length is wrong.
        what: &'static str,
        /// Declared length.
        declared: usize,
        /// Length of its contents.
        actual: usize,
    },
    /// Bytes other than zero padding follow the signature data.
    #[error("{len} non-padding bytes follow the signature data")]
    TrailingData {
        /// Number of trailing bytes.
        len: usize,
    },
    /// A structure cannot be serialized in the requested version.
    #[error("a TD 1.5 report body cannot be carried in a version 4 quote")]
    Td15InV4,
    /// A variable-length field is too long for its length prefix.
    #[error("the {0} is too long to serialize")]
    FieldTooLong(&'static str),
}

impl From<Truncated> for QuoteError {
    fn from(t: Truncated) -> Self {
        QuoteError::Truncated(t)
    }
}

impl QuoteError {
    /// Every quote format error is [`ErrorKind::Malformed`](crate::ErrorKind::Malformed).
    pub fn kind(&self) -> crate::ErrorKind {
        crate::ErrorKind::Malformed
    }
}
