//! The emulated TDX platform: TDX module, quoting enclave, provisioning certificate
//! hierarchy and collateral — test equipment that produces evidence in the exact
//! hardware formats so the production verifier runs unchanged.
//!
//! # What is emulated, and how faithfully
//!
//! - **TDX module** ([`EmulatedTdxModule`], [`EmulatedTd`]): MRTD is computed from the
//!   measured-boot launch plan by `measured_boot::tdx::Mrtd` (the one source of truth,
//!   also used by `cvm measure`); RTMRs extend as `SHA-384(RTMR || digest)`; TDREPORTs
//!   have the 1024-byte hardware layout with SHA-384 hashes of TEE_TCB_INFO and TDINFO
//!   and an HMAC-SHA-256 MAC under a module key (the CPU's report key on hardware).
//! - **Quoting enclave**: checks the TDREPORT MAC (as EVERIFYREPORT2 does), builds the
//!   quote with [`crate::tdx::quote`]'s serializer, signs header and body with an
//!   ECDSA-P256 attestation key, and carries a QE report (SGX report body) whose
//!   REPORTDATA is `SHA-256(attestation key || QE auth data) || 0^32`, signed by the PCK
//!   key, with the PEM PCK chain as certification data type 5 inside type 6.
//! - **Provisioning CA**: an emulated root CA, a PCK Platform CA, a PCK certificate with
//!   Intel's SGX extension (PPID, TCB components, PCESVN, CPUSVN, PCE-ID, FMSPC, SGX
//!   type, platform instance id and configuration), and a TCB signing certificate
//!   directly under the root.
//! - **Collateral** ([`CollateralOptions`]): TCB info (TDX, version 3, module identity,
//!   an UpToDate and an OutOfDate level) and QE identity signed by the TCB signing key,
//!   root CA CRL and PCK CRL, valid from `now - 1 day` to `now + 30 days` by default.
//!
//! The root is freshly generated per platform, so nothing chains to Intel's root: a
//! verifier accepts these quotes only when given this platform's `root_ca.pem` as its
//! trust root, and then marks the result
//! [`InsecureEmulated`](crate::claims::TrustLevel::InsecureEmulated).
//!
//! # On disk
//!
//! [`EmulatedTdxPlatform::create`] writes `DIR/tdx/`: `root_ca.pem` (the trust anchor an
//! operator hands to a verifier), `pck_platform_ca.pem`, `pck.pem`, `tcb_signing.pem`,
//! `platform.json` (identities and SVNs), and the secrets — `*.key` (PKCS#8 PEM) and
//! `report_mac.key` — created with mode 0600. [`EmulatedTdxPlatform::open`] loads it.

pub mod collateral;
pub mod module;
pub mod pcs;
mod pki;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use p256::ecdsa::SigningKey;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384};
use zeroize::Zeroizing;

pub use collateral::{CollateralOptions, EMULATED_ADVISORY};
pub use module::{EmulatedTd, EmulatedTdxModule, ModuleIdentity, TdConfig};

use crate::tdx::pck::SgxExtensionValues;
use crate::tdx::quote::{
    Quote, QuoteHeader, QuoteSignatureData, Td15Fields, TdReportBody,
    ATTESTATION_KEY_TYPE_ECDSA_P256, INTEL_QE_VENDOR_ID, TEE_TYPE_TDX,
};
use crate::tdx::report::{SgxReportBody, TdReport};
use crate::tdx::verify::TrustRoot;
use pki::Authority;

/// The emulated platform could not be created, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum EmulatedError {
    /// A file could not be read or written.
    #[error("cannot access {}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// DER or PEM encoding failed.
    #[error("a certificate or CRL could not be encoded or decoded")]
    Der(#[source] der::Error),
    /// A private key could not be encoded or decoded.
    #[error("a private key could not be encoded or decoded")]
    Pkcs8(#[source] p256::pkcs8::Error),
    /// A public key could not be encoded.
    #[error("a public key could not be encoded")]
    Spki(#[source] spki::Error),
    /// A certificate could not be built.
    #[error("a certificate could not be built")]
    Builder(#[source] x509_cert::builder::Error),
    /// A stored certificate does not hold the stored key's public key.
    #[error("the {0} certificate does not match its private key")]
    KeyMismatch(&'static str),
    /// The platform description does not parse.
    #[error("the platform description is not valid")]
    Json(#[source] serde_json::Error),
    /// The report MAC key is not 32 bytes of hex.
    #[error("the report MAC key is not 32 bytes of hex")]
    MacKey,
    /// A TDREPORT's MAC or hashes do not verify: it is not from this platform's module.
    #[error("the TDREPORT was not produced by this platform's TDX module")]
    ReportMac,
    /// RTMR indexes are 0..=3.
    #[error("RTMR index {0} does not exist (RTMRs are 0 to 3)")]
    RtmrIndex(usize),
    /// Only quote versions 4 and 5 can be produced.
    #[error("quote version {0} cannot be produced (use 4 or 5)")]
    QuoteVersion(u16),
    /// A time could not be formatted.
    #[error("a timestamp could not be formatted")]
    Time,
    /// The produced quote could not be serialized.
    #[error("the quote could not be serialized")]
    Quote(#[from] crate::tdx::quote::QuoteError),
    /// The produced collateral is not valid collateral.
    #[error("the generated collateral is not valid")]
    Collateral(#[from] crate::tdx::collateral::CollateralError),
}

/// The quoting enclave's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QeOptions {
    /// MRENCLAVE of the QE.
    #[serde(with = "crate::tdx::wire::hex_array")]
    pub mr_enclave: [u8; 32],
    /// MRSIGNER of the QE (published in the QE identity).
    #[serde(with = "crate::tdx::wire::hex_array")]
    pub mr_signer: [u8; 32],
    /// ISVPRODID (2 for Intel's TD QE).
    pub isv_prod_id: u16,
    /// ISVSVN.
    pub isv_svn: u16,
}

/// Identities and SVNs of an emulated platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformOptions {
    /// FMSPC.
    #[serde(with = "crate::tdx::wire::hex_array")]
    pub fmspc: [u8; 6],
    /// CPUSVN (also the 16 SGX TCB components).
    #[serde(with = "crate::tdx::wire::hex_array")]
    pub cpu_svn: [u8; 16],
    /// PCESVN.
    pub pce_svn: u16,
    /// PCE-ID.
    #[serde(with = "crate::tdx::wire::hex_array")]
    pub pce_id: [u8; 2],
    /// PPID.
    #[serde(with = "crate::tdx::wire::hex_array")]
    pub ppid: [u8; 16],
    /// The TDX module.
    pub module: ModuleIdentity,
    /// The quoting enclave.
    pub qe: QeOptions,
}

impl Default for PlatformOptions {
    /// A TDX 1.5 platform with made-up identities and a random PPID.
    fn default() -> Self {
        let mut ppid = [0u8; 16];
        OsRng.fill_bytes(&mut ppid);
        Self {
            fmspc: [0xee, 0x00, 0x6f, 0x00, 0x00, 0x00],
            cpu_svn: [3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0],
            pce_svn: 13,
            pce_id: [0, 0],
            ppid,
            module: ModuleIdentity {
                tee_tcb_svn: [6, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                mr_seam: Sha384::digest(b"cvm emulated TDX module").into(),
                mr_signer_seam: [0; 48],
                seam_attributes: [0; 8],
            },
            qe: QeOptions {
                mr_enclave: Sha256::digest(b"cvm emulated TD quoting enclave").into(),
                mr_signer: Sha256::digest(b"cvm emulated TD quoting enclave signer").into(),
                isv_prod_id: 2,
                isv_svn: 4,
            },
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PlatformFile {
    created: String,
    options: PlatformOptions,
}

/// QE authentication data, as Intel's QE emits it (bytes 0..31).
const QE_AUTH_DATA: [u8; 32] = {
    let mut a = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        a[i] = i as u8;
        i += 1;
    }
    a
};

/// An emulated TDX platform: TDX module, quoting enclave, keys and certificates.
#[derive(Debug)]
pub struct EmulatedTdxPlatform {
    options: PlatformOptions,
    created: time::OffsetDateTime,
    root: Authority,
    root_der: Vec<u8>,
    platform_ca: Authority,
    pck: Authority,
    tcb_signing: Authority,
    attestation_key: SigningKey,
    module: EmulatedTdxModule,
}

impl EmulatedTdxPlatform {
    /// Generates a platform in memory; certificates are valid from `now - 1 day` for
    /// ten years.
    pub fn generate(
        options: PlatformOptions,
        now: time::OffsetDateTime,
    ) -> Result<Self, EmulatedError> {
        let from = now - time::Duration::days(1);
        let until = now + time::Duration::days(3650);
        let root = pki::root_ca(from, until)?;
        let platform_ca = pki::sub_ca(&root, pki::PLATFORM_CA_DN, from, until)?;
        let mut instance = [0u8; 16];
        OsRng.fill_bytes(&mut instance);
        let sgx = SgxExtensionValues {
            ppid: options.ppid,
            cpu_svn: options.cpu_svn,
            pce_svn: options.pce_svn,
            pce_id: options.pce_id,
            fmspc: options.fmspc,
            sgx_type: 1,
            platform_instance_id: Some(instance),
        };
        let pck = pki::leaf(&platform_ca, pki::PCK_DN, from, until, Some(&sgx))?;
        let tcb_signing = pki::leaf(&root, pki::TCB_SIGNING_DN, from, until, None)?;
        let module = EmulatedTdxModule::new(options.module, options.cpu_svn);
        Ok(Self {
            options,
            created: now,
            root_der: root.cert_der()?,
            root,
            platform_ca,
            pck,
            tcb_signing,
            attestation_key: pki::new_key(),
            module,
        })
    }

    /// Generates a platform with default options and writes it to `dir/tdx/`; fails if
    /// a platform is already there.
    pub fn create(dir: &Path) -> Result<Self, EmulatedError> {
        let p = Self::generate(PlatformOptions::default(), time::OffsetDateTime::now_utc())?;
        p.save(dir)?;
        Ok(p)
    }

    /// Writes this platform to `dir/tdx/` (private keys with mode 0600).
    pub fn save(&self, dir: &Path) -> Result<(), EmulatedError> {
        let tdx = dir.join("tdx");
        std::fs::create_dir_all(&tdx).map_err(|source| EmulatedError::Io {
            path: tdx.clone(),
            source,
        })?;
        let created = collateral_rfc3339(self.created)?;
        let file = PlatformFile {
            created,
            options: self.options,
        };
        let json = serde_json::to_string_pretty(&file).map_err(EmulatedError::Json)?;
        write_new(&tdx.join("platform.json"), json.as_bytes(), false)?;
        for (name, a) in self.authorities() {
            write_new(
                &tdx.join(format!("{name}.pem")),
                a.cert_pem()?.as_bytes(),
                false,
            )?;
            write_new(
                &tdx.join(format!("{name}.key")),
                a.key_pem()?.as_bytes(),
                true,
            )?;
        }
        let ak = self
            .attestation_key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(EmulatedError::Pkcs8)?;
        write_new(&tdx.join("attestation_key.key"), ak.as_bytes(), true)?;
        let mac = Zeroizing::new(hex::encode(self.module.mac_key.as_ref()));
        write_new(&tdx.join("report_mac.key"), mac.as_bytes(), true)?;
        Ok(())
    }

    fn authorities(&self) -> [(&'static str, &Authority); 4] {
        [
            ("root_ca", &self.root),
            ("pck_platform_ca", &self.platform_ca),
            ("pck", &self.pck),
            ("tcb_signing", &self.tcb_signing),
        ]
    }

    /// Loads a platform written by [`EmulatedTdxPlatform::create`].
    pub fn open(dir: &Path) -> Result<Self, EmulatedError> {
        let tdx = dir.join("tdx");
        let read = |name: &str| -> Result<Zeroizing<String>, EmulatedError> {
            let path = tdx.join(name);
            std::fs::read_to_string(&path)
                .map(Zeroizing::new)
                .map_err(|source| EmulatedError::Io { path, source })
        };
        let file: PlatformFile =
            serde_json::from_str(&read("platform.json")?).map_err(EmulatedError::Json)?;
        let created = time::OffsetDateTime::parse(
            &file.created,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| EmulatedError::Time)?;
        let load = |name: &'static str| -> Result<Authority, EmulatedError> {
            Authority::from_pem(
                name,
                &read(&format!("{name}.pem"))?,
                &read(&format!("{name}.key"))?,
            )
        };
        let attestation_key = SigningKey::from_pkcs8_pem(&read("attestation_key.key")?)
            .map_err(EmulatedError::Pkcs8)?;
        let mac_hex = read("report_mac.key")?;
        let mut mac_key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(mac_hex.trim(), mac_key.as_mut())
            .map_err(|_| EmulatedError::MacKey)?;
        let module = EmulatedTdxModule {
            identity: file.options.module,
            cpu_svn: file.options.cpu_svn,
            mac_key,
        };
        let root = load("root_ca")?;
        Ok(Self {
            options: file.options,
            created,
            root_der: root.cert_der()?,
            root,
            platform_ca: load("pck_platform_ca")?,
            pck: load("pck")?,
            tcb_signing: load("tcb_signing")?,
            attestation_key,
            module,
        })
    }

    /// The platform's identities and SVNs.
    pub fn options(&self) -> &PlatformOptions {
        &self.options
    }

    /// The emulated TDX module.
    pub fn module(&self) -> &EmulatedTdxModule {
        &self.module
    }

    /// The root CA certificate (PEM): the trust anchor to hand to a verifier.
    pub fn root_ca_pem(&self) -> Result<String, EmulatedError> {
        self.root.cert_pem()
    }

    /// The root CA as a verifier trust root.
    pub fn trust_root(&self) -> TrustRoot {
        TrustRoot::Emulated {
            der: self.root_der.clone(),
        }
    }

    /// The PCK certificate chain as carried in quotes: PCK, platform CA, root, NUL.
    pub fn pck_chain_pem(&self) -> Result<String, EmulatedError> {
        Ok(format!(
            "{}{}{}\0",
            self.pck.cert_pem()?,
            self.platform_ca.cert_pem()?,
            self.root.cert_pem()?
        ))
    }

    /// The quoting enclave's SGX report for the current attestation key.
    fn qe_report(&self) -> SgxReportBody {
        let qe = &self.options.qe;
        let mut h = Sha256::new();
        h.update(pki::raw_public_key(&self.attestation_key));
        h.update(QE_AUTH_DATA);
        let mut report_data = [0u8; 64];
        report_data[..32].copy_from_slice(&h.finalize());
        let mut attributes = [0u8; 16];
        attributes[0] = 0x11; // INIT | MODE64BIT, not DEBUG.
        attributes[8] = 0xe7; // XFRM.
        SgxReportBody {
            cpu_svn: self.options.cpu_svn,
            attributes,
            mr_enclave: qe.mr_enclave,
            mr_signer: qe.mr_signer,
            isv_prod_id: qe.isv_prod_id,
            isv_svn: qe.isv_svn,
            report_data,
            ..SgxReportBody::zeroed()
        }
    }

    /// The quoting enclave: checks that `report` comes from this platform's TDX module
    /// and returns a signed quote of `version` 4 (TD 1.0 body) or 5 (TD 1.5 body).
    pub fn quote(&self, report: &TdReport, version: u16) -> Result<Quote, EmulatedError> {
        if version != 4 && version != 5 {
            return Err(EmulatedError::QuoteVersion(version));
        }
        if !self.module.verify_report(report) {
            return Err(EmulatedError::ReportMac);
        }
        let ak = pki::raw_public_key(&self.attestation_key);
        let mut user_data = [0u8; 20];
        user_data[..16].copy_from_slice(&Sha256::digest(ak)[..16]);
        let (tcb, td) = (&report.tee_tcb_info, &report.td_info);
        let body = TdReportBody {
            tee_tcb_svn: tcb.tee_tcb_svn,
            mr_seam: tcb.mr_seam,
            mr_signer_seam: tcb.mr_signer_seam,
            seam_attributes: tcb.attributes,
            td_attributes: td.attributes,
            xfam: td.xfam,
            mr_td: td.mr_td,
            mr_config_id: td.mr_config_id,
            mr_owner: td.mr_owner,
            mr_owner_config: td.mr_owner_config,
            rtmr: td.rtmr,
            report_data: report.mac_struct.report_data,
            td15: (version == 5).then_some(Td15Fields {
                tee_tcb_svn2: tcb.tee_tcb_svn2,
                mr_service_td: td.servtd_hash,
            }),
        };
        let qe_report = self.qe_report();
        let mut quote = Quote {
            header: QuoteHeader {
                version,
                attestation_key_type: ATTESTATION_KEY_TYPE_ECDSA_P256,
                tee_type: TEE_TYPE_TDX,
                qe_svn: 0,
                pce_svn: 0,
                qe_vendor_id: INTEL_QE_VENDOR_ID,
                user_data,
            },
            body,
            signature_data: QuoteSignatureData {
                signature: [0; 64],
                attestation_key: ak,
                qe_report_signature: pki::sign_raw(&self.pck.key, &qe_report.to_bytes()),
                qe_report,
                qe_auth_data: QE_AUTH_DATA.to_vec(),
                pck_cert_chain: self.pck_chain_pem()?.into_bytes(),
            },
            trailing_zeros: 0,
        };
        quote.signature_data.signature =
            pki::sign_raw(&self.attestation_key, &quote.signed_bytes()?);
        Ok(quote)
    }

    /// TDG.MR.REPORT followed by the quoting enclave: the quote of `td` over
    /// `report_data`.
    pub fn quote_td(
        &self,
        td: &EmulatedTd,
        report_data: &[u8; 64],
        version: u16,
    ) -> Result<Quote, EmulatedError> {
        let report = self.module.report(td, report_data)?;
        self.quote(&report, version)
    }
}

fn collateral_rfc3339(t: time::OffsetDateTime) -> Result<String, EmulatedError> {
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|_| EmulatedError::Time)
}

/// Creates `path` (failing if it exists), with mode 0600 for secrets.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), EmulatedError> {
    let io = |source| EmulatedError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}
