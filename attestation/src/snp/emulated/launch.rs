//! The emulated guest launch: LAUNCH_START (policy), LAUNCH_UPDATE (the launch digest,
//! computed by measured-boot's [`LaunchDigest`], the same code `cvm measure` uses),
//! LAUNCH_FINISH (ID block, ID authentication, host data), then guest report requests.
//!
//! Order is enforced by types: [`GuestLaunch`] accepts updates until
//! [`GuestLaunch::finish`] consumes it and yields an [`EmulatedGuest`], which alone can
//! produce reports.

use measured_boot::snp::{LaunchDigest, LaunchUpdate, SnpLaunchPlan};
use p384::ecdsa::signature::{Signer as _, Verifier as _};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha384};

use super::{EmulatedError, EmulatedSnpPlatform};
use crate::snp::cert_table::{CertTable, CertTableEntry, CertTableKind};
use crate::snp::report::{
    AttestationReport, Cpuid, GuestPolicy, ReportSignature, SignerInfo, SigningKey, SIGNED_LEN,
    SIG_ALGO_ECDSA_P384_SHA384,
};
use crate::snp::tcb::{TcbLayout, TcbVersion};
use crate::snp::Product;

/// Size of an ID_BLOCK.
pub const ID_BLOCK_LEN: usize = 0x60;
/// Size of an ID_AUTH_INFO structure.
pub const ID_AUTH_LEN: usize = 0x1000;
/// Size of the SEV public key format.
const PUBKEY_LEN: usize = 0x404;
/// ID_KEY_ALGO / AUTH_KEY_ALGO value for ECDSA P-384 with SHA-384.
const KEY_ALGO_ECDSA_P384: u32 = 1;
/// CURVE value for P-384 in the SEV public key format.
const CURVE_P384: u32 = 2;

/// The ID block given to LAUNCH_FINISH (SEV-SNP ABI, ID_BLOCK, 0x60 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdBlock {
    /// The expected launch digest.
    pub ld: [u8; 48],
    /// FAMILY_ID.
    pub family_id: [u8; 16],
    /// IMAGE_ID.
    pub image_id: [u8; 16],
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// The expected guest policy.
    pub policy: u64,
}

impl IdBlock {
    /// The 0x60-byte encoding (VERSION = 1).
    pub fn to_bytes(&self) -> [u8; ID_BLOCK_LEN] {
        let mut b = [0u8; ID_BLOCK_LEN];
        b[0x00..0x30].copy_from_slice(&self.ld);
        b[0x30..0x40].copy_from_slice(&self.family_id);
        b[0x40..0x50].copy_from_slice(&self.image_id);
        b[0x50..0x54].copy_from_slice(&1u32.to_le_bytes());
        b[0x54..0x58].copy_from_slice(&self.guest_svn.to_le_bytes());
        b[0x58..0x60].copy_from_slice(&self.policy.to_le_bytes());
        b
    }
}

/// Encodes a P-384 public key in the SEV public key format (0x404 bytes).
pub fn encode_public_key(key: &p384::ecdsa::VerifyingKey) -> [u8; PUBKEY_LEN] {
    let mut out = [0u8; PUBKEY_LEN];
    out[0..4].copy_from_slice(&CURVE_P384.to_le_bytes());
    let point = key.to_encoded_point(false);
    if let (Some(x), Some(y)) = (point.x(), point.y()) {
        for (i, b) in x.iter().rev().enumerate() {
            out[4 + i] = *b;
        }
        for (i, b) in y.iter().rev().enumerate() {
            out[0x4C + i] = *b;
        }
    }
    out
}

fn decode_public_key(b: &[u8]) -> Option<p384::ecdsa::VerifyingKey> {
    let curve = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?);
    if curve != CURVE_P384
        || b.get(0x34..0x4C)?.iter().any(|x| *x != 0)
        || b.get(0x7C..0x94)?.iter().any(|x| *x != 0)
    {
        return None;
    }
    let mut sec1 = [0u8; 97];
    sec1[0] = 4;
    for (i, v) in b.get(4..0x34)?.iter().rev().enumerate() {
        sec1[1 + i] = *v;
    }
    for (i, v) in b.get(0x4C..0x7C)?.iter().rev().enumerate() {
        sec1[49 + i] = *v;
    }
    p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).ok()
}

fn encode_signature(sig: &p384::ecdsa::Signature) -> [u8; 0x200] {
    let mut out = [0u8; 0x200];
    let (r, s) = sig.split_bytes();
    let rs = ReportSignature::from_be_scalars(&r.into(), &s.into());
    out[..72].copy_from_slice(&rs.r);
    out[72..144].copy_from_slice(&rs.s);
    out
}

fn decode_signature(b: &[u8]) -> Option<p384::ecdsa::Signature> {
    let mut rs = ReportSignature::default();
    rs.r.copy_from_slice(b.get(..72)?);
    rs.s.copy_from_slice(b.get(72..144)?);
    let (r, s) = rs.to_be_scalars()?;
    p384::ecdsa::Signature::from_scalars(r, s).ok()
}

/// Builds an ID_AUTH_INFO (0x1000 bytes): the ID block signed by `id_key`, and
/// optionally the ID key signed by `author_key`.
pub fn sign_id_auth(
    id_block: &IdBlock,
    id_key: &p384::ecdsa::SigningKey,
    author_key: Option<&p384::ecdsa::SigningKey>,
) -> Vec<u8> {
    let mut out = vec![0u8; ID_AUTH_LEN];
    out[0..4].copy_from_slice(&KEY_ALGO_ECDSA_P384.to_le_bytes());
    let sig: p384::ecdsa::Signature = id_key.sign(&id_block.to_bytes());
    out[0x40..0x240].copy_from_slice(&encode_signature(&sig));
    let id_pub = encode_public_key(id_key.verifying_key());
    out[0x240..0x240 + PUBKEY_LEN].copy_from_slice(&id_pub);
    if let Some(ak) = author_key {
        out[4..8].copy_from_slice(&KEY_ALGO_ECDSA_P384.to_le_bytes());
        let sig: p384::ecdsa::Signature = ak.sign(&id_pub);
        out[0x680..0x880].copy_from_slice(&encode_signature(&sig));
        out[0x880..0x880 + PUBKEY_LEN].copy_from_slice(&encode_public_key(ak.verifying_key()));
    }
    out
}

/// Parameters of LAUNCH_FINISH.
#[derive(Debug, Clone, Default)]
pub struct FinishParams {
    /// The ID block, if the guest owner provides one.
    pub id_block: Option<IdBlock>,
    /// ID_AUTH_INFO (0x1000 bytes); required with an ID block.
    pub id_auth: Option<Vec<u8>>,
    /// AUTHOR_KEY_EN: the author key in ID_AUTH_INFO certifies the ID key.
    pub author_key_en: bool,
    /// HOST_DATA.
    pub host_data: [u8; 32],
}

/// A guest between LAUNCH_START and LAUNCH_FINISH.
#[derive(Debug)]
pub struct GuestLaunch<'p> {
    platform: &'p EmulatedSnpPlatform,
    policy: GuestPolicy,
    digest: LaunchDigest,
}

impl<'p> GuestLaunch<'p> {
    pub(super) fn start(
        platform: &'p EmulatedSnpPlatform,
        policy: u64,
    ) -> Result<Self, EmulatedError> {
        let p = GuestPolicy(policy);
        let refuse = |why| Err(EmulatedError::Policy { policy, why });
        if policy & GuestPolicy::RESERVED_ONE == 0 {
            return refuse("bit 17 must be one");
        }
        if policy >> 26 != 0 {
            return refuse("reserved bits 63:26 are set");
        }
        let fw = platform.state.firmware_version;
        if (p.abi_major(), p.abi_minor()) > (fw.major, fw.minor) {
            return refuse("the minimum ABI version is newer than the firmware");
        }
        if !p.smt_allowed() && platform.platform_info().smt_enabled() {
            return refuse("SMT is enabled on the platform but the policy disallows it");
        }
        Ok(Self {
            platform,
            policy: p,
            digest: LaunchDigest::new(),
        })
    }

    pub(super) fn resume_from(&mut self, digest: [u8; 48]) {
        self.digest = LaunchDigest::from_value(digest);
    }

    /// SNP_LAUNCH_UPDATE: folds one update into the launch digest.
    pub fn update(&mut self, update: &LaunchUpdate<'_>) {
        self.digest.update(update);
    }

    /// Feeds every update of a launch plan, in PSP order.
    pub fn update_plan(&mut self, plan: &SnpLaunchPlan) {
        for u in plan.updates() {
            self.digest.update(&u);
        }
    }

    /// The launch digest so far.
    pub fn digest(&self) -> [u8; 48] {
        self.digest.value()
    }

    /// SNP_LAUNCH_FINISH: checks the ID block and its authentication as the PSP does
    /// (LD and POLICY must match, signatures must verify) and seals the launch.
    pub fn finish(self, params: FinishParams) -> Result<EmulatedGuest<'p>, EmulatedError> {
        let measurement = self.digest.value();
        let mut guest = EmulatedGuest {
            platform: PlatformRef::Borrowed(self.platform),
            policy: self.policy,
            measurement,
            host_data: params.host_data,
            family_id: [0; 16],
            image_id: [0; 16],
            guest_svn: 0,
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            author_key_en: false,
            report_id: [0; 32],
        };
        OsRng.fill_bytes(&mut guest.report_id);
        let Some(block) = params.id_block else {
            if params.id_auth.is_some() || params.author_key_en {
                return Err(EmulatedError::IdBlock(
                    "ID authentication given without an ID block",
                ));
            }
            return Ok(guest);
        };
        if block.ld != measurement {
            return Err(EmulatedError::IdBlock(
                "the ID block's launch digest does not match the measurement",
            ));
        }
        if block.policy != self.policy.0 {
            return Err(EmulatedError::IdBlock(
                "the ID block's policy does not match the launch policy",
            ));
        }
        let auth = params.id_auth.ok_or(EmulatedError::IdBlock(
            "an ID block needs ID authentication",
        ))?;
        if auth.len() != ID_AUTH_LEN {
            return Err(EmulatedError::IdBlock("ID_AUTH_INFO is not 0x1000 bytes"));
        }
        let algo = |off: usize| {
            auth.get(off..off + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_le_bytes)
        };
        if algo(0) != Some(KEY_ALGO_ECDSA_P384) {
            return Err(EmulatedError::IdBlock("ID_KEY_ALGO is not ECDSA P-384"));
        }
        let id_pub = auth.get(0x240..0x240 + PUBKEY_LEN).unwrap_or(&[]);
        let id_key =
            decode_public_key(id_pub).ok_or(EmulatedError::IdBlock("the ID key is invalid"))?;
        let sig = decode_signature(auth.get(0x40..0x240).unwrap_or(&[])).ok_or(
            EmulatedError::IdBlock("the ID block signature is malformed"),
        )?;
        id_key
            .verify(&block.to_bytes(), &sig)
            .map_err(|_| EmulatedError::IdBlock("the ID block signature does not verify"))?;
        guest.id_key_digest = Sha384::digest(id_pub).into();
        if params.author_key_en {
            if algo(4) != Some(KEY_ALGO_ECDSA_P384) {
                return Err(EmulatedError::IdBlock("AUTH_KEY_ALGO is not ECDSA P-384"));
            }
            let author_pub = auth.get(0x880..0x880 + PUBKEY_LEN).unwrap_or(&[]);
            let author = decode_public_key(author_pub)
                .ok_or(EmulatedError::IdBlock("the author key is invalid"))?;
            let sig = decode_signature(auth.get(0x680..0x880).unwrap_or(&[]))
                .ok_or(EmulatedError::IdBlock("the ID key signature is malformed"))?;
            author.verify(id_pub, &sig).map_err(|_| {
                EmulatedError::IdBlock("the author key's signature on the ID key does not verify")
            })?;
            guest.author_key_digest = Sha384::digest(author_pub).into();
            guest.author_key_en = true;
        }
        guest.family_id = block.family_id;
        guest.image_id = block.image_id;
        guest.guest_svn = block.guest_svn;
        Ok(guest)
    }
}

/// A report request from the guest (SNP_GUEST_REQUEST MSG_REPORT_REQ).
#[derive(Debug, Clone)]
pub struct ReportRequest {
    /// REPORT_DATA.
    pub report_data: [u8; 64],
    /// The requesting VMPL (0..=3).
    pub vmpl: u32,
    /// Report format version: 3 or 5.
    pub version: u32,
}

/// The platform a guest belongs to: borrowed, or shared with the guest's owner.
#[derive(Debug, Clone)]
enum PlatformRef<'p> {
    Borrowed(&'p EmulatedSnpPlatform),
    Shared(std::sync::Arc<EmulatedSnpPlatform>),
}

impl std::ops::Deref for PlatformRef<'_> {
    type Target = EmulatedSnpPlatform;

    fn deref(&self) -> &EmulatedSnpPlatform {
        match self {
            PlatformRef::Borrowed(p) => p,
            PlatformRef::Shared(p) => p,
        }
    }
}

/// A launched guest of the emulated platform.
#[derive(Debug, Clone)]
pub struct EmulatedGuest<'p> {
    platform: PlatformRef<'p>,
    policy: GuestPolicy,
    measurement: [u8; 48],
    host_data: [u8; 32],
    family_id: [u8; 16],
    image_id: [u8; 16],
    guest_svn: u32,
    id_key_digest: [u8; 48],
    author_key_digest: [u8; 48],
    author_key_en: bool,
    report_id: [u8; 32],
}

/// The CPUID the emulated platform reports for `product`.
fn cpuid_of(product: Product) -> Cpuid {
    match product {
        Product::Milan => Cpuid {
            family: 0x19,
            model: 0x01,
            stepping: 0x01,
        },
        Product::Genoa => Cpuid {
            family: 0x19,
            model: 0x11,
            stepping: 0x01,
        },
        Product::Turin => Cpuid {
            family: 0x1A,
            model: 0x02,
            stepping: 0x01,
        },
    }
}

impl EmulatedGuest<'_> {
    /// The same guest (same REPORT_ID and launch state) holding `platform` through an
    /// `Arc` instead of a borrow, so an owner can keep both for as long as it needs;
    /// `None` when `platform` is not the platform that launched this guest.
    pub fn into_shared(
        self,
        platform: &std::sync::Arc<EmulatedSnpPlatform>,
    ) -> Option<EmulatedGuest<'static>> {
        if !std::ptr::eq(&*self.platform, &**platform) {
            return None;
        }
        Some(EmulatedGuest {
            platform: PlatformRef::Shared(platform.clone()),
            policy: self.policy,
            measurement: self.measurement,
            host_data: self.host_data,
            family_id: self.family_id,
            image_id: self.image_id,
            guest_svn: self.guest_svn,
            id_key_digest: self.id_key_digest,
            author_key_digest: self.author_key_digest,
            author_key_en: self.author_key_en,
            report_id: self.report_id,
        })
    }

    /// The launch measurement.
    pub fn measurement(&self) -> [u8; 48] {
        self.measurement
    }

    /// Produces a signed ATTESTATION_REPORT in the exact hardware layout.
    pub fn report(&self, req: &ReportRequest) -> Result<[u8; 0x4A0], EmulatedError> {
        if req.vmpl > 3 {
            return Err(EmulatedError::Vmpl(req.vmpl));
        }
        if !matches!(req.version, 3 | 5) {
            return Err(EmulatedError::Version(req.version));
        }
        let st = &self.platform.state;
        let layout = TcbLayout::for_product(st.product);
        let tcb = TcbVersion::encode(&st.tcb, layout);
        let mut report = AttestationReport {
            version: req.version,
            guest_svn: self.guest_svn,
            policy: self.policy,
            family_id: self.family_id,
            image_id: self.image_id,
            vmpl: req.vmpl,
            signature_algo: SIG_ALGO_ECDSA_P384_SHA384,
            current_tcb: tcb,
            platform_info: self.platform.platform_info(),
            signer_info: SignerInfo {
                author_key_en: self.author_key_en,
                mask_chip_key: false,
                signing_key: SigningKey::Vcek,
            },
            report_data: req.report_data,
            measurement: self.measurement,
            host_data: self.host_data,
            id_key_digest: self.id_key_digest,
            author_key_digest: self.author_key_digest,
            report_id: self.report_id,
            report_id_ma: [0xFF; 32],
            reported_tcb: tcb,
            cpuid: Some(cpuid_of(st.product)),
            chip_id: self.platform.reported_chip_id(),
            committed_tcb: tcb,
            current_version: st.firmware_version,
            committed_version: st.firmware_version,
            launch_tcb: tcb,
            launch_mit_vector: (req.version >= 5).then_some(0),
            current_mit_vector: (req.version >= 5).then_some(0),
            signature: ReportSignature::default(),
        };
        let unsigned = report.to_bytes().map_err(EmulatedError::Report)?;
        let (r, s) = self.platform.keys.sign_vcek(&unsigned[..SIGNED_LEN]);
        report.signature = ReportSignature::from_be_scalars(&r, &s);
        report.to_bytes().map_err(EmulatedError::Report)
    }

    /// An extended report: the report and the certificate table (ARK, ASK, VCEK DER).
    pub fn extended_report(
        &self,
        req: &ReportRequest,
    ) -> Result<([u8; 0x4A0], CertTable), EmulatedError> {
        Ok((self.report(req)?, self.platform.cert_table()))
    }
}

impl EmulatedSnpPlatform {
    /// The extended-report certificate table of this platform.
    pub fn cert_table(&self) -> CertTable {
        CertTable {
            entries: vec![
                CertTableEntry {
                    kind: CertTableKind::Ark,
                    data: self.ark.der().to_vec(),
                },
                CertTableEntry {
                    kind: CertTableKind::Ask,
                    data: self.ask.der().to_vec(),
                },
                CertTableEntry {
                    kind: CertTableKind::Vcek,
                    data: self.vcek.der().to_vec(),
                },
            ],
        }
    }
}
