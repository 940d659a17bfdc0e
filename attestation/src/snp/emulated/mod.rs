//! A software-emulated SEV-SNP secure processor: test equipment, never trusted by
//! default.
//!
//! It behaves like the PSP where a verifier can tell: the launch digest is computed
//! over the measured-boot launch plan with the same [`LaunchDigest`] code
//! `cvm measure` uses; reports are produced in the exact v3/v5 layout by the same
//! serializer the verifier parses, and signed (ECDSA P-384) by an emulated VCEK whose
//! certificate carries AMD's VCEK extensions (TCB SPLs, hwID = CHIP_ID, productName),
//! under an emulated ASK and ARK (RSA-4096, RSASSA-PSS SHA-384, salt 48, like AMD's).
//! Everything but the trust anchor is therefore exercised by the production
//! verification path, and by independent tools such as `snpguest`.
//!
//! The certificates' organization is [`pki::EMULATED_ORG`], never AMD's, and the
//! verifier trusts the emulated ARK only when the operator passes the platform's
//! trust anchor file explicitly; claims are then marked insecure-emulated.
//!
//! # On disk
//!
//! `EmulatedSnpPlatform::create(dir)` writes `dir/snp/`:
//!
//! | file | content |
//! |------|---------|
//! | `ark.pem`, `ask.pem`, `vcek.pem` | certificates (snpguest's `verify certs` layout) |
//! | `trust-anchor.pem` | ARK and ASK, to hand to `cvm-verifier --trust-root` |
//! | `ark.key`, `ask.key`, `vcek.key` | PKCS#8 private keys, created with mode 0600 |
//! | `platform.json` | product, chip id, TCB, platform info, firmware version |
//!
//! RSA-4096 key generation is slow (seconds in release builds, much longer in debug
//! builds): it happens once, at creation; `open` only loads.
//!
//! [`LaunchDigest`]: measured_boot::snp::LaunchDigest

pub mod kds;
pub mod launch;
pub mod pki;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

pub use launch::{sign_id_auth, EmulatedGuest, FinishParams, GuestLaunch, IdBlock, ReportRequest};

use super::certs::{AmdCertificate, AmdCrl, CertError};
use super::report::{FirmwareVersion, PlatformInfo, ReportError};
use super::tcb::TcbParts;
use super::Product;
use crate::ErrorKind;

/// Errors of the emulated platform.
#[derive(Debug, thiserror::Error)]
pub enum EmulatedError {
    /// A file could not be read or written.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The platform already exists.
    #[error("an emulated SNP platform already exists in {}", .0.display())]
    Exists(PathBuf),
    /// A private key file is invalid.
    #[error("the {0} private key file is invalid")]
    Key(&'static str),
    /// A private key does not belong to its certificate.
    #[error("the {0} private key does not match its certificate")]
    KeyMismatch(&'static str),
    /// `platform.json` is invalid.
    #[error("the platform description is invalid")]
    State(#[source] serde_json::Error),
    /// RSA key generation failed.
    #[error("RSA key generation failed")]
    KeyGen(#[source] rsa::Error),
    /// Encoding a certificate failed.
    #[error("encoding a certificate failed")]
    Der(#[source] der::Error),
    /// Encoding a public key failed.
    #[error("encoding a public key failed")]
    Spki(#[source] spki::Error),
    /// Signing failed.
    #[error("signing failed")]
    Sign,
    /// A generated or loaded certificate is invalid.
    #[error("a platform certificate is invalid")]
    Certificate(#[source] CertError),
    /// LAUNCH_START refused the policy.
    #[error("launch policy {policy:#x} refused: {why}")]
    Policy {
        /// The policy.
        policy: u64,
        /// Why.
        why: &'static str,
    },
    /// LAUNCH_FINISH refused the ID block or its authentication.
    #[error("launch finish refused: {0}")]
    IdBlock(&'static str),
    /// A report was requested from an invalid VMPL.
    #[error("VMPL {0} is out of range (0..=3)")]
    Vmpl(u32),
    /// An unsupported report version was requested.
    #[error("the emulated platform produces report versions 3 and 5, not {0}")]
    Version(u32),
    /// Serializing the report failed.
    #[error("the report could not be serialized")]
    Report(#[source] ReportError),
}

impl EmulatedError {
    /// The error category (emulation errors are not verification errors; input
    /// problems are reported as malformed, missing files as unavailable collateral).
    pub fn kind(&self) -> ErrorKind {
        match self {
            EmulatedError::Io { .. } => ErrorKind::CollateralUnavailable,
            _ => ErrorKind::Malformed,
        }
    }
}

/// How to create an emulated platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedSnpConfig {
    /// The processor generation to emulate (CPUID, TCB layout, certificate names).
    pub product: Product,
    /// The platform's TCB (reported, current, committed and launch TCB alike).
    pub tcb: TcbParts,
    /// CHIP_ID; random if `None` (Turin: 8 random bytes, then zeros).
    pub chip_id: Option<[u8; 64]>,
    /// PLATFORM_INFO.
    pub platform_info: u64,
    /// The firmware version reported.
    pub firmware_version: FirmwareVersion,
    /// Start of the certificates' validity; now minus one day if `None`.
    pub not_before: Option<SystemTime>,
}

impl Default for EmulatedSnpConfig {
    fn default() -> Self {
        Self {
            product: Product::Milan,
            tcb: TcbParts {
                bootloader: 4,
                tee: 0,
                snp: 22,
                microcode: 213,
                fmc: None,
            },
            chip_id: None,
            // TSME and ECC enabled, SMT disabled.
            platform_info: 0b110,
            firmware_version: FirmwareVersion {
                major: 1,
                minor: 55,
                build: 21,
            },
            not_before: None,
        }
    }
}

/// The public, serializable state of a platform (`platform.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlatformState {
    product: Product,
    #[serde(with = "hex::serde")]
    chip_id: [u8; 64],
    tcb: TcbParts,
    platform_info: u64,
    firmware_version: FirmwareVersion,
}

/// The platform's private keys (zeroized on drop by their types; never printed).
struct Keys {
    ark: rsa::RsaPrivateKey,
    ask: rsa::RsaPrivateKey,
    vcek: p384::ecdsa::SigningKey,
}

impl Keys {
    fn new(
        ark: rsa::RsaPrivateKey,
        ask: rsa::RsaPrivateKey,
        vcek: p384::ecdsa::SigningKey,
    ) -> Self {
        Self { ark, ask, vcek }
    }

    /// Signs `msg` with the VCEK (ECDSA P-384/SHA-384): the big-endian `(r, s)`.
    /// RustCrypto with RFC 6979 nonces: no random source, so no system call — the
    /// emulated PSP signs on the VMM's seccomp-confined vCPU threads, where AWS-LC's
    /// lazily initialised RNG (a `newfstatat` of its snapshot-safety device) was killed.
    pub(super) fn sign_vcek(&self, msg: &[u8]) -> ([u8; 48], [u8; 48]) {
        use p384::ecdsa::signature::Signer;
        let sig: p384::ecdsa::Signature = self.vcek.sign(msg);
        let (r, s) = sig.split_bytes();
        (r.into(), s.into())
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

/// An emulated SEV-SNP platform: keys, certificates and state.
#[derive(Debug)]
pub struct EmulatedSnpPlatform {
    state: PlatformState,
    keys: Keys,
    ark: AmdCertificate,
    ask: AmdCertificate,
    vcek: AmdCertificate,
    /// The host's MASK_CHIP_ID setting (SNP_SET_CONFIG): reports carry a zero CHIP_ID.
    mask_chip_id: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EmulatedError + '_ {
    move |source| EmulatedError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a new file with `mode`, refusing to overwrite.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), EmulatedError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

impl EmulatedSnpPlatform {
    /// Generates a platform in memory (RSA-4096 keys: slow).
    pub fn generate(config: &EmulatedSnpConfig) -> Result<Self, EmulatedError> {
        let from = config
            .not_before
            .unwrap_or_else(|| SystemTime::now() - Duration::from_secs(24 * 3600));
        let product = config.product;
        let chip_id = config.chip_id.unwrap_or_else(|| {
            let mut c = [0u8; 64];
            let n = if product == Product::Turin { 8 } else { 64 };
            OsRng.fill_bytes(&mut c[..n]);
            c
        });
        let mut tcb = config.tcb;
        tcb.fmc = (product == Product::Turin).then_some(tcb.fmc.unwrap_or(0));
        let ark_key = rsa::RsaPrivateKey::new(&mut OsRng, 4096).map_err(EmulatedError::KeyGen)?;
        let ask_key = rsa::RsaPrivateKey::new(&mut OsRng, 4096).map_err(EmulatedError::KeyGen)?;
        let vcek_key = p384::ecdsa::SigningKey::random(&mut OsRng);
        let ark = pki::make_ark(&ark_key, product, from)?;
        let ask = pki::make_ask(&ask_key, &ark, &ark_key, product, from)?;
        let hw_id = Self::hw_id_of(product, &chip_id);
        let vcek_pub = p384::PublicKey::from(vcek_key.verifying_key());
        let vcek = pki::make_vcek(&vcek_pub, hw_id, &tcb, product, &ask, &ask_key, from)?;
        let state = PlatformState {
            product,
            chip_id,
            tcb,
            platform_info: config.platform_info,
            firmware_version: config.firmware_version,
        };
        Ok(Self {
            state,
            keys: Keys::new(ark_key, ask_key, vcek_key),
            ark,
            ask,
            vcek,
            mask_chip_id: false,
        })
    }

    fn hw_id_of(product: Product, chip_id: &[u8; 64]) -> &[u8] {
        if product == Product::Turin {
            chip_id.get(..8).unwrap_or(chip_id)
        } else {
            chip_id
        }
    }

    /// Creates a platform with the default configuration and writes it to `dir/snp`.
    pub fn create(dir: &Path) -> Result<Self, EmulatedError> {
        Self::create_with(dir, &EmulatedSnpConfig::default())
    }

    /// Creates a platform with `config` and writes it to `dir/snp`.
    pub fn create_with(dir: &Path, config: &EmulatedSnpConfig) -> Result<Self, EmulatedError> {
        let snp = dir.join("snp");
        if snp.join("platform.json").exists() {
            return Err(EmulatedError::Exists(snp));
        }
        let p = Self::generate(config)?;
        p.write_to(dir)?;
        Ok(p)
    }

    /// Writes the platform to `dir/snp` (files must not exist yet).
    pub fn write_to(&self, dir: &Path) -> Result<(), EmulatedError> {
        let snp = dir.join("snp");
        std::fs::create_dir_all(&snp).map_err(io(&snp))?;
        let key_err = |what| move |_| EmulatedError::Key(what);
        let le = p384::pkcs8::LineEnding::LF;
        let ark_pem = self.keys.ark.to_pkcs8_pem(le).map_err(key_err("ARK"))?;
        let ask_pem = self.keys.ask.to_pkcs8_pem(le).map_err(key_err("ASK"))?;
        let vcek_pem = self.keys.vcek.to_pkcs8_pem(le).map_err(key_err("VCEK"))?;
        write_new(&snp.join("ark.key"), ark_pem.as_bytes(), 0o600)?;
        write_new(&snp.join("ask.key"), ask_pem.as_bytes(), 0o600)?;
        write_new(&snp.join("vcek.key"), vcek_pem.as_bytes(), 0o600)?;
        write_new(&snp.join("ark.pem"), self.ark.to_pem().as_bytes(), 0o644)?;
        write_new(&snp.join("ask.pem"), self.ask.to_pem().as_bytes(), 0o644)?;
        write_new(&snp.join("vcek.pem"), self.vcek.to_pem().as_bytes(), 0o644)?;
        write_new(
            &snp.join("trust-anchor.pem"),
            self.trust_anchor_pem().as_bytes(),
            0o644,
        )?;
        let state = serde_json::to_vec_pretty(&self.state).map_err(EmulatedError::State)?;
        write_new(&snp.join("platform.json"), &state, 0o644)
    }

    /// Loads a platform written by [`create`](Self::create) from `dir/snp`.
    pub fn open(dir: &Path) -> Result<Self, EmulatedError> {
        let snp = dir.join("snp");
        let read = |name: &str| {
            let path = snp.join(name);
            std::fs::read(&path).map_err(|source| EmulatedError::Io { path, source })
        };
        let state: PlatformState =
            serde_json::from_slice(&read("platform.json")?).map_err(EmulatedError::State)?;
        let cert = |name: &str| -> Result<AmdCertificate, EmulatedError> {
            AmdCertificate::from_pem(&read(name)?).map_err(EmulatedError::Certificate)
        };
        let (ark, ask, vcek) = (cert("ark.pem")?, cert("ask.pem")?, cert("vcek.pem")?);
        let text = |name: &str| -> Result<zeroize::Zeroizing<String>, EmulatedError> {
            let bytes = zeroize::Zeroizing::new(read(name)?);
            Ok(zeroize::Zeroizing::new(
                String::from_utf8_lossy(&bytes).into_owned(),
            ))
        };
        let ark_key = rsa::RsaPrivateKey::from_pkcs8_pem(&text("ark.key")?)
            .map_err(|_| EmulatedError::Key("ARK"))?;
        let ask_key = rsa::RsaPrivateKey::from_pkcs8_pem(&text("ask.key")?)
            .map_err(|_| EmulatedError::Key("ASK"))?;
        let vcek_key = p384::ecdsa::SigningKey::from_pkcs8_pem(&text("vcek.key")?)
            .map_err(|_| EmulatedError::Key("VCEK"))?;
        if ark.rsa_public_key().map_err(EmulatedError::Certificate)? != ark_key.to_public_key() {
            return Err(EmulatedError::KeyMismatch("ARK"));
        }
        if ask.rsa_public_key().map_err(EmulatedError::Certificate)? != ask_key.to_public_key() {
            return Err(EmulatedError::KeyMismatch("ASK"));
        }
        if vcek
            .ec_verifying_key()
            .map_err(EmulatedError::Certificate)?
            != *vcek_key.verifying_key()
        {
            return Err(EmulatedError::KeyMismatch("VCEK"));
        }
        Ok(Self {
            state,
            keys: Keys::new(ark_key, ask_key, vcek_key),
            ark,
            ask,
            vcek,
            mask_chip_id: false,
        })
    }

    /// The emulated ARK.
    pub fn ark(&self) -> &AmdCertificate {
        &self.ark
    }

    /// The emulated ASK.
    pub fn ask(&self) -> &AmdCertificate {
        &self.ask
    }

    /// The emulated VCEK.
    pub fn vcek(&self) -> &AmdCertificate {
        &self.vcek
    }

    /// The emulated product.
    pub fn product(&self) -> Product {
        self.state.product
    }

    /// CHIP_ID.
    pub fn chip_id(&self) -> [u8; 64] {
        self.state.chip_id
    }

    /// The platform TCB.
    pub fn tcb(&self) -> TcbParts {
        self.state.tcb
    }

    /// Sets MASK_CHIP_ID, as a host does with SNP_SET_CONFIG: later reports carry an
    /// all-zero CHIP_ID (the VCEK still names the chip by its hwID).
    pub fn set_mask_chip_id(&mut self, mask: bool) {
        self.mask_chip_id = mask;
    }

    /// The CHIP_ID reports carry: zero when MASK_CHIP_ID is set.
    pub fn reported_chip_id(&self) -> [u8; 64] {
        if self.mask_chip_id {
            [0; 64]
        } else {
            self.state.chip_id
        }
    }

    /// PLATFORM_INFO.
    pub fn platform_info(&self) -> PlatformInfo {
        PlatformInfo(self.state.platform_info)
    }

    /// The trust anchor an operator hands to the verifier: ARK and ASK, PEM.
    pub fn trust_anchor_pem(&self) -> String {
        format!("{}{}", self.ark.to_pem(), self.ask.to_pem())
    }

    /// SNP_LAUNCH_START with guest `policy` (refused like the PSP would: bit 17 clear,
    /// reserved bits set, an ABI newer than the firmware, SMT disallowed while on).
    pub fn launch_start(&self, policy: u64) -> Result<GuestLaunch<'_>, EmulatedError> {
        GuestLaunch::start(self, policy)
    }

    /// SNP_LAUNCH_START continuing from a known launch digest (for example one
    /// computed by `cvm measure` for a whole launch plan): a guest launched with no
    /// further updates reports exactly `digest` as its MEASUREMENT.
    pub fn launch_start_from(
        &self,
        policy: u64,
        digest: [u8; 48],
    ) -> Result<GuestLaunch<'_>, EmulatedError> {
        let mut l = GuestLaunch::start(self, policy)?;
        l.resume_from(digest);
        Ok(l)
    }

    /// A CRL from this platform's ARK revoking `revoked` (for revocation tests).
    pub fn crl(
        &self,
        revoked: &[&AmdCertificate],
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<AmdCrl, EmulatedError> {
        pki::make_crl(&self.ark, &self.keys.ark, revoked, this_update, next_update)
    }

    /// Issues a VCEK certificate for another chip (a fresh key) under this platform's
    /// ASK, at this platform's TCB; the key is discarded. Used to test that a VCEK of
    /// another chip is refused.
    pub fn certify_other_chip(&self, chip_id: &[u8; 64]) -> Result<AmdCertificate, EmulatedError> {
        let key = p384::ecdsa::SigningKey::random(&mut OsRng);
        let from = SystemTime::now() - Duration::from_secs(24 * 3600);
        let public = p384::PublicKey::from(key.verifying_key());
        let hw_id = Self::hw_id_of(self.state.product, chip_id);
        pki::make_vcek(
            &public,
            hw_id,
            &self.state.tcb,
            self.state.product,
            &self.ask,
            &self.keys.ask,
            from,
        )
    }
}
