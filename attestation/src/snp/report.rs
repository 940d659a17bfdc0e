//! The SEV-SNP ATTESTATION_REPORT (SEV-SNP ABI specification, table "ATTESTATION_REPORT
//! Structure"), versions 2, 3 and 5, parsed and serialized explicitly field by field.
//!
//! Layout (offsets in bytes, all integers little-endian):
//!
//! | offset | field | notes |
//! |--------|-------|-------|
//! | 0x000 | VERSION (u32) | 2, 3 or 5 |
//! | 0x004 | GUEST_SVN (u32) | |
//! | 0x008 | POLICY (u64) | bit 17 must be one |
//! | 0x010 | FAMILY_ID (16) | |
//! | 0x020 | IMAGE_ID (16) | |
//! | 0x030 | VMPL (u32) | |
//! | 0x034 | SIGNATURE_ALGO (u32) | 1 = ECDSA P-384 with SHA-384 |
//! | 0x038 | CURRENT_TCB (u64) | |
//! | 0x040 | PLATFORM_INFO (u64) | |
//! | 0x048 | AUTHOR_KEY_EN bit 0, MASK_CHIP_KEY bit 1, SIGNING_KEY bits 4:2 (u32) | bits 31:5 reserved |
//! | 0x04C | reserved (4) | |
//! | 0x050 | REPORT_DATA (64) | |
//! | 0x090 | MEASUREMENT (48) | |
//! | 0x0C0 | HOST_DATA (32) | |
//! | 0x0E0 | ID_KEY_DIGEST (48) | |
//! | 0x110 | AUTHOR_KEY_DIGEST (48) | |
//! | 0x140 | REPORT_ID (32) | |
//! | 0x160 | REPORT_ID_MA (32) | |
//! | 0x180 | REPORTED_TCB (u64) | |
//! | 0x188 | CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP (3 × u8) | v3+; reserved in v2 |
//! | 0x18B | reserved (21) | |
//! | 0x1A0 | CHIP_ID (64) | zero when MASK_CHIP_ID is set |
//! | 0x1E0 | COMMITTED_TCB (u64) | |
//! | 0x1E8 | CURRENT_BUILD, CURRENT_MINOR, CURRENT_MAJOR (3 × u8), reserved (1) | |
//! | 0x1EC | COMMITTED_BUILD, COMMITTED_MINOR, COMMITTED_MAJOR (3 × u8), reserved (1) | |
//! | 0x1F0 | LAUNCH_TCB (u64) | |
//! | 0x1F8 | LAUNCH_MIT_VECTOR (u64), CURRENT_MIT_VECTOR (u64) | v5; reserved before |
//! | 0x208 | reserved (0x98) | |
//! | 0x2A0 | SIGNATURE: R (72, LE), S (72, LE), reserved (0x170) | not signed |
//!
//! Every reserved byte must be zero; the parser refuses anything else, so
//! `parse(bytes)?.to_bytes()? == bytes` for every accepted input (the emulated secure
//! processor produces its reports with this same serializer).

use serde::{Deserialize, Serialize};

use super::tcb::TcbVersion;
use super::Product;
use crate::ErrorKind;

/// Size of an ATTESTATION_REPORT.
pub const REPORT_LEN: usize = 0x4A0;
/// End of the signed region: the signature covers bytes `0..SIGNED_LEN`.
pub const SIGNED_LEN: usize = 0x2A0;
/// SIGNATURE_ALGO value for ECDSA P-384 with SHA-384, the only algorithm defined.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

const OFF_R: usize = 0x2A0;
const OFF_S: usize = 0x2E8;
const SIG_COMPONENT_LEN: usize = 72;
const OFF_SIG_RESERVED: usize = 0x330;

/// Errors from parsing or serializing a report. All are [`ErrorKind::Malformed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The input is not exactly 0x4A0 bytes.
    #[error("an attestation report is {REPORT_LEN} bytes, got {0}")]
    Length(usize),
    /// VERSION is not 2, 3 or 5.
    #[error("unsupported attestation report version {0} (supported: 2, 3, 5)")]
    Version(u32),
    /// A reserved field holds a non-zero value.
    #[error("reserved bytes {start:#x}..{end:#x} of the report are not zero")]
    Reserved {
        /// First offset of the reserved range.
        start: usize,
        /// End (exclusive) of the reserved range.
        end: usize,
    },
    /// Reserved bits 31:5 of the signer-info word are set.
    #[error("reserved bits of the signer info word are set ({0:#x})")]
    KeyInfoReserved(u32),
    /// SIGNING_KEY is a reserved encoding.
    #[error("signing key encoding {0} is reserved")]
    SigningKey(u32),
    /// POLICY bit 17, which must be one, is clear.
    #[error("guest policy {0:#x} has reserved bit 17 clear")]
    PolicyBit17(u64),
    /// A field's presence does not match the version (for serialization).
    #[error("field `{field}` is inconsistent with report version {version}")]
    Inconsistent {
        /// The field.
        field: &'static str,
        /// The report version.
        version: u32,
    },
}

impl ReportError {
    /// The verification error category: always [`ErrorKind::Malformed`].
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Malformed
    }
}

/// The guest policy set at launch (POLICY field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GuestPolicy(pub u64);

impl GuestPolicy {
    /// Bit 17, reserved, must be one.
    pub const RESERVED_ONE: u64 = 1 << 17;

    fn bit(self, n: u32) -> bool {
        self.0 >> n & 1 == 1
    }
    /// Minimum ABI minor version (bits 7:0).
    pub fn abi_minor(self) -> u8 {
        (self.0 & 0xFF) as u8
    }
    /// Minimum ABI major version (bits 15:8).
    pub fn abi_major(self) -> u8 {
        (self.0 >> 8 & 0xFF) as u8
    }
    /// SMT (bit 16): host SMT usage allowed.
    pub fn smt_allowed(self) -> bool {
        self.bit(16)
    }
    /// MIGRATE_MA (bit 18): association with a migration agent allowed.
    pub fn migrate_ma_allowed(self) -> bool {
        self.bit(18)
    }
    /// DEBUG (bit 19): debugging allowed.
    pub fn debug_allowed(self) -> bool {
        self.bit(19)
    }
    /// SINGLE_SOCKET (bit 20): the guest may run on one socket only.
    pub fn single_socket_required(self) -> bool {
        self.bit(20)
    }
    /// CXL_ALLOW (bit 21).
    pub fn cxl_allowed(self) -> bool {
        self.bit(21)
    }
    /// MEM_AES_256_XTS (bit 22): AES-256-XTS memory encryption required.
    pub fn mem_aes_256_xts(self) -> bool {
        self.bit(22)
    }
    /// RAPL_DIS (bit 23): RAPL must be disabled.
    pub fn rapl_dis(self) -> bool {
        self.bit(23)
    }
    /// CIPHERTEXT_HIDING (bit 24): ciphertext hiding must be enabled.
    pub fn ciphertext_hiding(self) -> bool {
        self.bit(24)
    }
    /// PAGE_SWAP_DISABLE (bit 25).
    pub fn page_swap_disabled(self) -> bool {
        self.bit(25)
    }
}

/// PLATFORM_INFO: the platform's state when the report was generated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PlatformInfo(pub u64);

impl PlatformInfo {
    fn bit(self, n: u32) -> bool {
        self.0 >> n & 1 == 1
    }
    /// SMT_EN (bit 0): SMT is enabled in the system.
    pub fn smt_enabled(self) -> bool {
        self.bit(0)
    }
    /// TSME_EN (bit 1): TSME is enabled.
    pub fn tsme_enabled(self) -> bool {
        self.bit(1)
    }
    /// ECC_EN (bit 2): the platform uses error-correcting memory.
    pub fn ecc_enabled(self) -> bool {
        self.bit(2)
    }
    /// RAPL_DIS (bit 3): RAPL is disabled.
    pub fn rapl_disabled(self) -> bool {
        self.bit(3)
    }
    /// CIPHERTEXT_HIDING_EN (bit 4).
    pub fn ciphertext_hiding_enabled(self) -> bool {
        self.bit(4)
    }
    /// ALIAS_CHECK_COMPLETE (bit 5).
    pub fn alias_check_complete(self) -> bool {
        self.bit(5)
    }
    /// SEV-TIO enabled (bit 7).
    pub fn tio_enabled(self) -> bool {
        self.bit(7)
    }
}

/// Which key signed the report (SIGNING_KEY, bits 4:2 of the signer-info word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningKey {
    /// The Versioned Chip Endorsement Key (encoding 0).
    Vcek,
    /// The Versioned Loaded Endorsement Key (encoding 1).
    Vlek,
    /// Not signed (encoding 7).
    None,
}

impl SigningKey {
    fn encoding(self) -> u32 {
        match self {
            SigningKey::Vcek => 0,
            SigningKey::Vlek => 1,
            SigningKey::None => 7,
        }
    }
    fn from_encoding(v: u32) -> Result<Self, ReportError> {
        match v {
            0 => Ok(SigningKey::Vcek),
            1 => Ok(SigningKey::Vlek),
            7 => Ok(SigningKey::None),
            other => Err(ReportError::SigningKey(other)),
        }
    }
}

/// The signer-info word at 0x48.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignerInfo {
    /// AUTHOR_KEY_EN: AUTHOR_KEY_DIGEST holds the digest of the author key.
    pub author_key_en: bool,
    /// MASK_CHIP_KEY: the firmware does not sign with the VCEK.
    pub mask_chip_key: bool,
    /// SIGNING_KEY.
    pub signing_key: SigningKey,
}

impl SignerInfo {
    fn to_u32(self) -> u32 {
        u32::from(self.author_key_en)
            | u32::from(self.mask_chip_key) << 1
            | self.signing_key.encoding() << 2
    }
    fn from_u32(v: u32) -> Result<Self, ReportError> {
        if v >> 5 != 0 {
            return Err(ReportError::KeyInfoReserved(v));
        }
        Ok(Self {
            author_key_en: v & 1 == 1,
            mask_chip_key: v >> 1 & 1 == 1,
            signing_key: SigningKey::from_encoding(v >> 2 & 0x7)?,
        })
    }
}

/// CPUID family, model and stepping of the chip (report version 3 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cpuid {
    /// Combined extended family and family (e.g. 0x19).
    pub family: u8,
    /// Combined extended model and model.
    pub model: u8,
    /// Stepping.
    pub stepping: u8,
}

impl Cpuid {
    /// The product this CPUID identifies, if it is a known SEV-SNP product. Same table
    /// as the `sev` crate's `Generation::identify_cpu` (Venice has no pinned roots yet,
    /// so it is not recognized).
    pub fn product(self) -> Option<Product> {
        match (self.family, self.model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        }
    }
}

/// A firmware version (major.minor.build).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct FirmwareVersion {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Build number.
    pub build: u8,
}

impl std::fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)
    }
}

/// The report signature: R and S as stored, little-endian, 72 bytes each (P-384 uses
/// the low 48; the rest must be zero for the signature to verify).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReportSignature {
    /// R, little-endian.
    pub r: [u8; SIG_COMPONENT_LEN],
    /// S, little-endian.
    pub s: [u8; SIG_COMPONENT_LEN],
}

impl Default for ReportSignature {
    fn default() -> Self {
        Self {
            r: [0; SIG_COMPONENT_LEN],
            s: [0; SIG_COMPONENT_LEN],
        }
    }
}

impl ReportSignature {
    /// From big-endian 48-byte scalars (as produced by `p384::ecdsa::Signature`).
    pub fn from_be_scalars(r: &[u8; 48], s: &[u8; 48]) -> Self {
        let mut out = Self::default();
        for (dst, src) in out.r.iter_mut().zip(r.iter().rev()) {
            *dst = *src;
        }
        for (dst, src) in out.s.iter_mut().zip(s.iter().rev()) {
            *dst = *src;
        }
        out
    }

    /// The big-endian 48-byte scalars, or `None` if the high 24 bytes of R or S are not
    /// zero (no P-384 scalar has them).
    pub fn to_be_scalars(&self) -> Option<([u8; 48], [u8; 48])> {
        fn one(le: &[u8; SIG_COMPONENT_LEN]) -> Option<[u8; 48]> {
            let (low, high) = le.split_at(48);
            if high.iter().any(|b| *b != 0) {
                return None;
            }
            let mut be = [0u8; 48];
            for (dst, src) in be.iter_mut().zip(low.iter().rev()) {
                *dst = *src;
            }
            Some(be)
        }
        Some((one(&self.r)?, one(&self.s)?))
    }
}

/// An SEV-SNP ATTESTATION_REPORT, every field decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttestationReport {
    /// VERSION: 2, 3 or 5.
    pub version: u32,
    /// GUEST_SVN from the ID block.
    pub guest_svn: u32,
    /// POLICY.
    pub policy: GuestPolicy,
    /// FAMILY_ID from the ID block.
    pub family_id: [u8; 16],
    /// IMAGE_ID from the ID block.
    pub image_id: [u8; 16],
    /// VMPL of the request (0..=3, or 0xFFFFFFFF for host-requested reports).
    pub vmpl: u32,
    /// SIGNATURE_ALGO (1 = ECDSA P-384 SHA-384).
    pub signature_algo: u32,
    /// CURRENT_TCB.
    pub current_tcb: TcbVersion,
    /// PLATFORM_INFO.
    pub platform_info: PlatformInfo,
    /// The signer-info word.
    pub signer_info: SignerInfo,
    /// REPORT_DATA: guest-chosen data.
    pub report_data: [u8; 64],
    /// MEASUREMENT: the launch digest.
    pub measurement: [u8; 48],
    /// HOST_DATA: host-chosen data fixed at launch.
    pub host_data: [u8; 32],
    /// ID_KEY_DIGEST: SHA-384 of the ID public key.
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST: SHA-384 of the author public key (if AUTHOR_KEY_EN).
    pub author_key_digest: [u8; 48],
    /// REPORT_ID.
    pub report_id: [u8; 32],
    /// REPORT_ID_MA (all ones when there is no migration agent).
    pub report_id_ma: [u8; 32],
    /// REPORTED_TCB: the TCB the signing key was derived from.
    pub reported_tcb: TcbVersion,
    /// CPUID family/model/stepping; present from version 3.
    pub cpuid: Option<Cpuid>,
    /// CHIP_ID (zero when MASK_CHIP_ID is set).
    pub chip_id: [u8; 64],
    /// COMMITTED_TCB.
    pub committed_tcb: TcbVersion,
    /// The current firmware version.
    pub current_version: FirmwareVersion,
    /// The committed firmware version.
    pub committed_version: FirmwareVersion,
    /// LAUNCH_TCB: CURRENT_TCB when the guest was launched.
    pub launch_tcb: TcbVersion,
    /// LAUNCH_MIT_VECTOR; present from version 5.
    pub launch_mit_vector: Option<u64>,
    /// CURRENT_MIT_VECTOR; present from version 5.
    pub current_mit_vector: Option<u64>,
    /// The signature over bytes 0..0x2A0.
    pub signature: ReportSignature,
}

fn take<const N: usize>(b: &[u8; REPORT_LEN], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[off..off + N]);
    out
}
fn u32_at(b: &[u8; REPORT_LEN], off: usize) -> u32 {
    u32::from_le_bytes(take(b, off))
}
fn u64_at(b: &[u8; REPORT_LEN], off: usize) -> u64 {
    u64::from_le_bytes(take(b, off))
}
fn zero(b: &[u8; REPORT_LEN], start: usize, end: usize) -> Result<(), ReportError> {
    if b[start..end].iter().any(|x| *x != 0) {
        return Err(ReportError::Reserved { start, end });
    }
    Ok(())
}

impl AttestationReport {
    /// Parses a report, refusing unknown versions, reserved encodings and non-zero
    /// reserved bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReportError> {
        let b: &[u8; REPORT_LEN] = bytes
            .try_into()
            .map_err(|_| ReportError::Length(bytes.len()))?;
        let version = u32_at(b, 0x000);
        if !matches!(version, 2 | 3 | 5) {
            return Err(ReportError::Version(version));
        }
        let policy = GuestPolicy(u64_at(b, 0x008));
        if policy.0 & GuestPolicy::RESERVED_ONE == 0 {
            return Err(ReportError::PolicyBit17(policy.0));
        }
        let signer_info = SignerInfo::from_u32(u32_at(b, 0x048))?;
        zero(b, 0x04C, 0x050)?;
        let cpuid = if version >= 3 {
            zero(b, 0x18B, 0x1A0)?;
            Some(Cpuid {
                family: b[0x188],
                model: b[0x189],
                stepping: b[0x18A],
            })
        } else {
            zero(b, 0x188, 0x1A0)?;
            None
        };
        zero(b, 0x1EB, 0x1EC)?;
        zero(b, 0x1EF, 0x1F0)?;
        let (launch_mit_vector, current_mit_vector) = if version >= 5 {
            zero(b, 0x208, SIGNED_LEN)?;
            (Some(u64_at(b, 0x1F8)), Some(u64_at(b, 0x200)))
        } else {
            zero(b, 0x1F8, SIGNED_LEN)?;
            (None, None)
        };
        zero(b, OFF_SIG_RESERVED, REPORT_LEN)?;
        Ok(Self {
            version,
            guest_svn: u32_at(b, 0x004),
            policy,
            family_id: take(b, 0x010),
            image_id: take(b, 0x020),
            vmpl: u32_at(b, 0x030),
            signature_algo: u32_at(b, 0x034),
            current_tcb: TcbVersion(u64_at(b, 0x038)),
            platform_info: PlatformInfo(u64_at(b, 0x040)),
            signer_info,
            report_data: take(b, 0x050),
            measurement: take(b, 0x090),
            host_data: take(b, 0x0C0),
            id_key_digest: take(b, 0x0E0),
            author_key_digest: take(b, 0x110),
            report_id: take(b, 0x140),
            report_id_ma: take(b, 0x160),
            reported_tcb: TcbVersion(u64_at(b, 0x180)),
            cpuid,
            chip_id: take(b, 0x1A0),
            committed_tcb: TcbVersion(u64_at(b, 0x1E0)),
            current_version: FirmwareVersion {
                build: b[0x1E8],
                minor: b[0x1E9],
                major: b[0x1EA],
            },
            committed_version: FirmwareVersion {
                build: b[0x1EC],
                minor: b[0x1ED],
                major: b[0x1EE],
            },
            launch_tcb: TcbVersion(u64_at(b, 0x1F0)),
            launch_mit_vector,
            current_mit_vector,
            signature: ReportSignature {
                r: take(b, OFF_R),
                s: take(b, OFF_S),
            },
        })
    }

    /// Serializes the report in the exact hardware layout. Fails if a field's presence
    /// does not match the version (CPUID from v3, mitigation vectors from v5) or the
    /// policy lacks bit 17.
    pub fn to_bytes(&self) -> Result<[u8; REPORT_LEN], ReportError> {
        let v = self.version;
        if !matches!(v, 2 | 3 | 5) {
            return Err(ReportError::Version(v));
        }
        if self.policy.0 & GuestPolicy::RESERVED_ONE == 0 {
            return Err(ReportError::PolicyBit17(self.policy.0));
        }
        if self.cpuid.is_some() != (v >= 3) {
            return Err(ReportError::Inconsistent {
                field: "cpuid",
                version: v,
            });
        }
        if self.launch_mit_vector.is_some() != (v >= 5) {
            return Err(ReportError::Inconsistent {
                field: "launch_mit_vector",
                version: v,
            });
        }
        if self.current_mit_vector.is_some() != (v >= 5) {
            return Err(ReportError::Inconsistent {
                field: "current_mit_vector",
                version: v,
            });
        }
        let mut b = [0u8; REPORT_LEN];
        let mut put = |off: usize, src: &[u8]| b[off..off + src.len()].copy_from_slice(src);
        put(0x000, &v.to_le_bytes());
        put(0x004, &self.guest_svn.to_le_bytes());
        put(0x008, &self.policy.0.to_le_bytes());
        put(0x010, &self.family_id);
        put(0x020, &self.image_id);
        put(0x030, &self.vmpl.to_le_bytes());
        put(0x034, &self.signature_algo.to_le_bytes());
        put(0x038, &self.current_tcb.to_bytes());
        put(0x040, &self.platform_info.0.to_le_bytes());
        put(0x048, &self.signer_info.to_u32().to_le_bytes());
        put(0x050, &self.report_data);
        put(0x090, &self.measurement);
        put(0x0C0, &self.host_data);
        put(0x0E0, &self.id_key_digest);
        put(0x110, &self.author_key_digest);
        put(0x140, &self.report_id);
        put(0x160, &self.report_id_ma);
        put(0x180, &self.reported_tcb.to_bytes());
        if let Some(c) = self.cpuid {
            put(0x188, &[c.family, c.model, c.stepping]);
        }
        put(0x1A0, &self.chip_id);
        put(0x1E0, &self.committed_tcb.to_bytes());
        let cv = self.current_version;
        put(0x1E8, &[cv.build, cv.minor, cv.major]);
        let mv = self.committed_version;
        put(0x1EC, &[mv.build, mv.minor, mv.major]);
        put(0x1F0, &self.launch_tcb.to_bytes());
        if let (Some(l), Some(c)) = (self.launch_mit_vector, self.current_mit_vector) {
            put(0x1F8, &l.to_le_bytes());
            put(0x200, &c.to_le_bytes());
        }
        put(OFF_R, &self.signature.r);
        put(OFF_S, &self.signature.s);
        Ok(b)
    }

    /// The product named by CPUID (version 3 and later); `None` for version 2 or an
    /// unknown CPUID, in which case the product comes from the certificate.
    pub fn product(&self) -> Option<Product> {
        self.cpuid.and_then(Cpuid::product)
    }

    /// Whether CHIP_ID is all zero, i.e. MASK_CHIP_ID was set by the host.
    pub fn chip_id_masked(&self) -> bool {
        self.chip_id.iter().all(|b| *b == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(version: u32) -> AttestationReport {
        AttestationReport {
            version,
            guest_svn: 7,
            policy: GuestPolicy(0x30000),
            family_id: [1; 16],
            image_id: [2; 16],
            vmpl: 1,
            signature_algo: 1,
            current_tcb: TcbVersion(0x7300_0800_0000_0003),
            platform_info: PlatformInfo(0x25),
            signer_info: SignerInfo {
                author_key_en: true,
                mask_chip_key: false,
                signing_key: SigningKey::Vlek,
            },
            report_data: [3; 64],
            measurement: [4; 48],
            host_data: [5; 32],
            id_key_digest: [6; 48],
            author_key_digest: [7; 48],
            report_id: [8; 32],
            report_id_ma: [0xFF; 32],
            reported_tcb: TcbVersion(0x7300_0800_0000_0002),
            cpuid: (version >= 3).then_some(Cpuid {
                family: 0x19,
                model: 0x11,
                stepping: 1,
            }),
            chip_id: [9; 64],
            committed_tcb: TcbVersion(0x7300_0800_0000_0001),
            current_version: FirmwareVersion {
                major: 1,
                minor: 55,
                build: 4,
            },
            committed_version: FirmwareVersion {
                major: 1,
                minor: 55,
                build: 3,
            },
            launch_tcb: TcbVersion(0x7300_0800_0000_0003),
            launch_mit_vector: (version >= 5).then_some(0x11),
            current_mit_vector: (version >= 5).then_some(0x13),
            signature: ReportSignature::from_be_scalars(&[0xAA; 48], &[0xBB; 48]),
        }
    }

    #[test]
    fn round_trips_every_version() {
        for v in [2, 3, 5] {
            let r = sample(v);
            let bytes = r.to_bytes().expect("serializes");
            assert_eq!(AttestationReport::parse(&bytes).expect("parses"), r);
        }
    }

    #[test]
    fn fields_land_at_the_specified_offsets() {
        let b = sample(5).to_bytes().expect("serializes");
        assert_eq!(&b[0x50..0x90], &[3; 64]);
        assert_eq!(&b[0x90..0xC0], &[4; 48]);
        assert_eq!(&b[0xC0..0xE0], &[5; 32]);
        assert_eq!(&b[0x188..0x18B], &[0x19, 0x11, 1]);
        assert_eq!(&b[0x1A0..0x1E0], &[9; 64]);
        assert_eq!(&b[0x1E8..0x1EB], &[4, 55, 1]);
        assert_eq!(b[0x1F8], 0x11);
        assert_eq!(b[0x200], 0x13);
        assert_eq!(
            u32::from_le_bytes([b[0x48], b[0x49], b[0x4A], b[0x4B]]),
            0b00101
        );
        assert_eq!(b[0x2A0], 0xAA);
        assert_eq!(b[0x2A0 + 48], 0);
        assert_eq!(b[0x2E8], 0xBB);
    }

    #[test]
    fn refuses_bad_inputs() {
        let good = sample(3).to_bytes().expect("serializes");
        assert_eq!(
            AttestationReport::parse(&good[..100]),
            Err(ReportError::Length(100))
        );
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(
            AttestationReport::parse(&long),
            Err(ReportError::Length(REPORT_LEN + 1))
        );
        for v in [0u32, 1, 4, 6, 0xFFFF_FFFF] {
            let mut b = good;
            b[..4].copy_from_slice(&v.to_le_bytes());
            assert_eq!(AttestationReport::parse(&b), Err(ReportError::Version(v)));
        }
        for off in [0x4C, 0x18B, 0x19F, 0x1EB, 0x1EF, 0x1F8, 0x29F, 0x330, 0x49F] {
            let mut b = good;
            b[off] = 1;
            assert!(
                matches!(
                    AttestationReport::parse(&b),
                    Err(ReportError::Reserved { .. })
                ),
                "offset {off:#x}"
            );
        }
        let mut b = good;
        b[0x48] |= 0x20;
        assert!(matches!(
            AttestationReport::parse(&b),
            Err(ReportError::KeyInfoReserved(_))
        ));
        let mut b = good;
        b[0x48] = 3 << 2;
        assert_eq!(
            AttestationReport::parse(&b),
            Err(ReportError::SigningKey(3))
        );
        let mut b = good;
        b[0x0A] = 0; // policy bit 17 clear
        assert!(matches!(
            AttestationReport::parse(&b),
            Err(ReportError::PolicyBit17(_))
        ));
    }

    #[test]
    fn v2_has_no_cpuid_and_v3_no_mitigation_vectors() {
        let mut b = sample(2).to_bytes().expect("serializes");
        b[0x188] = 0x19;
        assert!(matches!(
            AttestationReport::parse(&b),
            Err(ReportError::Reserved { start: 0x188, .. })
        ));
        let mut b = sample(3).to_bytes().expect("serializes");
        b[0x1F8] = 1;
        assert!(matches!(
            AttestationReport::parse(&b),
            Err(ReportError::Reserved { start: 0x1F8, .. })
        ));
        let mut r = sample(3);
        r.launch_mit_vector = Some(1);
        assert!(matches!(
            r.to_bytes(),
            Err(ReportError::Inconsistent { .. })
        ));
    }

    #[test]
    fn signature_scalars_reverse_byte_order() {
        let mut r = [0u8; 48];
        r[47] = 1;
        let sig = ReportSignature::from_be_scalars(&r, &r);
        assert_eq!(sig.r[0], 1);
        assert_eq!(sig.to_be_scalars(), Some((r, r)));
        let mut bad = sig;
        bad.s[60] = 1;
        assert_eq!(bad.to_be_scalars(), None);
    }

    #[test]
    fn cpuid_identifies_products() {
        let c = |family, model| {
            Cpuid {
                family,
                model,
                stepping: 0,
            }
            .product()
        };
        assert_eq!(c(0x19, 0x01), Some(Product::Milan));
        assert_eq!(c(0x19, 0x11), Some(Product::Genoa));
        assert_eq!(c(0x19, 0xA0), Some(Product::Genoa));
        assert_eq!(c(0x1A, 0x02), Some(Product::Turin));
        assert_eq!(c(0x17, 0x31), None);
    }
}
