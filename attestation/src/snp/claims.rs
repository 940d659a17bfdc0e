//! Turning a verified SNP report into normalized [`Claims`].

use serde::{Deserialize, Serialize};

use super::report::{AttestationReport, GuestPolicy, PlatformInfo, SigningKey};
use super::tcb::{TcbLayout, TcbParts};
use super::Product;
use crate::claims::{Claims, Tee, TeeClaims, TrustLevel};

/// The decoded guest POLICY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpGuestPolicy {
    /// The raw 64-bit value.
    pub raw: u64,
    /// Minimum ABI major version.
    pub abi_major: u8,
    /// Minimum ABI minor version.
    pub abi_minor: u8,
    /// Host SMT allowed.
    pub smt: bool,
    /// Association with a migration agent allowed.
    pub migrate_ma: bool,
    /// Debugging allowed.
    pub debug: bool,
    /// Single socket required.
    pub single_socket: bool,
    /// CXL allowed.
    pub cxl_allow: bool,
    /// AES-256-XTS memory encryption required.
    pub mem_aes_256_xts: bool,
    /// RAPL must be disabled.
    pub rapl_dis: bool,
    /// Ciphertext hiding required.
    pub ciphertext_hiding: bool,
    /// Page swap commands disabled.
    pub page_swap_disable: bool,
}

impl From<GuestPolicy> for SnpGuestPolicy {
    fn from(p: GuestPolicy) -> Self {
        Self {
            raw: p.0,
            abi_major: p.abi_major(),
            abi_minor: p.abi_minor(),
            smt: p.smt_allowed(),
            migrate_ma: p.migrate_ma_allowed(),
            debug: p.debug_allowed(),
            single_socket: p.single_socket_required(),
            cxl_allow: p.cxl_allowed(),
            mem_aes_256_xts: p.mem_aes_256_xts(),
            rapl_dis: p.rapl_dis(),
            ciphertext_hiding: p.ciphertext_hiding(),
            page_swap_disable: p.page_swap_disabled(),
        }
    }
}

/// The decoded PLATFORM_INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpPlatformInfo {
    /// The raw 64-bit value.
    pub raw: u64,
    /// SMT is enabled on the platform.
    pub smt_enabled: bool,
    /// TSME is enabled.
    pub tsme_enabled: bool,
    /// ECC memory is in use.
    pub ecc_enabled: bool,
    /// RAPL is disabled.
    pub rapl_disabled: bool,
    /// Ciphertext hiding is enabled.
    pub ciphertext_hiding_enabled: bool,
    /// Alias check complete.
    pub alias_check_complete: bool,
    /// SEV-TIO enabled.
    pub tio_enabled: bool,
}

impl From<PlatformInfo> for SnpPlatformInfo {
    fn from(p: PlatformInfo) -> Self {
        Self {
            raw: p.0,
            smt_enabled: p.smt_enabled(),
            tsme_enabled: p.tsme_enabled(),
            ecc_enabled: p.ecc_enabled(),
            rapl_disabled: p.rapl_disabled(),
            ciphertext_hiding_enabled: p.ciphertext_hiding_enabled(),
            alias_check_complete: p.alias_check_complete(),
            tio_enabled: p.tio_enabled(),
        }
    }
}

/// Which endorsement key signed the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signer {
    /// The chip's VCEK.
    Vcek,
    /// A cloud provider's VLEK.
    Vlek,
}

/// SEV-SNP specific claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpClaims {
    /// Report VERSION.
    pub version: u32,
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// The decoded guest POLICY.
    pub policy: SnpGuestPolicy,
    /// FAMILY_ID.
    #[serde(with = "hex::serde")]
    pub family_id: Vec<u8>,
    /// IMAGE_ID.
    #[serde(with = "hex::serde")]
    pub image_id: Vec<u8>,
    /// VMPL of the request.
    pub vmpl: u32,
    /// SIGNATURE_ALGO.
    pub signature_algo: u32,
    /// The decoded PLATFORM_INFO.
    pub platform_info: SnpPlatformInfo,
    /// AUTHOR_KEY_EN.
    pub author_key_en: bool,
    /// MASK_CHIP_KEY.
    pub mask_chip_key: bool,
    /// Whether CHIP_ID is masked (all zero).
    pub mask_chip_id: bool,
    /// REPORTED_TCB (matched against the signing certificate).
    pub reported_tcb: TcbParts,
    /// CURRENT_TCB.
    pub current_tcb: TcbParts,
    /// COMMITTED_TCB.
    pub committed_tcb: TcbParts,
    /// LAUNCH_TCB.
    pub launch_tcb: TcbParts,
    /// CHIP_ID.
    #[serde(with = "hex::serde")]
    pub chip_id: Vec<u8>,
    /// ID_KEY_DIGEST.
    #[serde(with = "hex::serde")]
    pub id_key_digest: Vec<u8>,
    /// AUTHOR_KEY_DIGEST.
    #[serde(with = "hex::serde")]
    pub author_key_digest: Vec<u8>,
    /// REPORT_ID.
    #[serde(with = "hex::serde")]
    pub report_id: Vec<u8>,
    /// REPORT_ID_MA.
    #[serde(with = "hex::serde")]
    pub report_id_ma: Vec<u8>,
    /// The processor product.
    pub product: Product,
    /// The key that signed the report.
    pub signer: Signer,
    /// Current firmware version, "major.minor.build".
    pub current_version: String,
    /// Committed firmware version.
    pub committed_version: String,
    /// LAUNCH_MIT_VECTOR (report version 5).
    pub launch_mit_vector: Option<u64>,
    /// CURRENT_MIT_VECTOR (report version 5).
    pub current_mit_vector: Option<u64>,
}

/// Builds the claims of a report whose signature, chain and TCB binding have been
/// verified, with `product` known, `trust` decided by the anchor and `platform_id`
/// taken from the verified VCEK/VLEK ([`Claims::platform_id`]).
pub(crate) fn claims_from_report(
    report: &AttestationReport,
    product: Product,
    trust: TrustLevel,
    platform_id: String,
) -> Option<Claims> {
    let signer = match report.signer_info.signing_key {
        SigningKey::Vcek => Signer::Vcek,
        SigningKey::Vlek => Signer::Vlek,
        SigningKey::None => return None,
    };
    let layout = TcbLayout::for_product(product);
    let snp = SnpClaims {
        version: report.version,
        guest_svn: report.guest_svn,
        policy: report.policy.into(),
        family_id: report.family_id.to_vec(),
        image_id: report.image_id.to_vec(),
        vmpl: report.vmpl,
        signature_algo: report.signature_algo,
        platform_info: report.platform_info.into(),
        author_key_en: report.signer_info.author_key_en,
        mask_chip_key: report.signer_info.mask_chip_key,
        mask_chip_id: report.chip_id_masked(),
        reported_tcb: report.reported_tcb.decode(layout),
        current_tcb: report.current_tcb.decode(layout),
        committed_tcb: report.committed_tcb.decode(layout),
        launch_tcb: report.launch_tcb.decode(layout),
        chip_id: report.chip_id.to_vec(),
        id_key_digest: report.id_key_digest.to_vec(),
        author_key_digest: report.author_key_digest.to_vec(),
        report_id: report.report_id.to_vec(),
        report_id_ma: report.report_id_ma.to_vec(),
        product,
        signer,
        current_version: report.current_version.to_string(),
        committed_version: report.committed_version.to_string(),
        launch_mit_vector: report.launch_mit_vector,
        current_mit_vector: report.current_mit_vector,
    };
    Some(Claims {
        tee: Tee::Snp,
        trust,
        measurement: report.measurement.to_vec(),
        report_data: report.report_data.to_vec(),
        host_data: report.host_data.to_vec(),
        debug: report.policy.debug_allowed(),
        platform_id,
        detail: TeeClaims::Snp(snp),
    })
}
