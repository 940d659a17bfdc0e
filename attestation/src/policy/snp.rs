//! SEV-SNP policy checks on [`SnpClaims`], following go-sev-guest's `validate.Options`
//! as the checklist: minimum TCB per component, minimum guest SVN, family and image
//! IDs, ID-key and author-key digest allow lists, chip-id allow list, VMPL, SMT,
//! single socket, migration agent, minimum ABI, and platform-info bits.
//!
//! `SnpPolicy::default()` is the secure default: the report must be requested at VMPL 0
//! (`vmpl = 0`), every TCB (reported, current, committed) must meet the product's
//! [`MinTcb::baseline`] (`min_tcb` absent), and a guest whose policy allows a migration
//! agent is refused. Debug is refused by the common [`Policy`](super::Policy)
//! (`claims.debug`). Every refusal names its check.
//!
//! The built-in TCB baseline is a floor, not a recommendation: production policies should
//! pin `min_tcb` to the levels of AMD's latest security bulletins (for example
//! AMD-SB-3019 asks for SNP firmware SPL 0x18 on Milan and 0x17 on Genoa).

use serde::{Deserialize, Serialize};

use super::PolicyViolation;
use crate::snp::{Product, SnpClaims, TcbLayout, TcbParts, TcbVersion};

/// Why a minimum-TCB specification could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MinTcbError {
    /// An item is not `name=value`.
    #[error("`{0}` is not of the form name=value")]
    Item(String),
    /// An unknown component name.
    #[error("unknown TCB component `{0}` (expected bl, tee, snp, ucode, fmc)")]
    Component(String),
    /// A value is not a number in 0..=255.
    #[error("`{0}` is not a number in 0..=255")]
    Value(String),
    /// A raw TCB_VERSION is not 64-bit hex.
    #[error("`{0}` is not a 64-bit hexadecimal TCB_VERSION")]
    Raw(String),
}

/// Minimum security patch level of each TCB component (0 = no minimum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MinTcb {
    /// Minimum boot loader SPL.
    pub bootloader: u8,
    /// Minimum TEE SPL.
    pub tee: u8,
    /// Minimum SNP firmware SPL.
    pub snp: u8,
    /// Minimum microcode SPL.
    pub microcode: u8,
    /// Minimum FMC SPL (Turin; a missing FMC counts as 0).
    pub fmc: u8,
}

impl MinTcb {
    fn as_parts(&self) -> TcbParts {
        TcbParts {
            bootloader: self.bootloader,
            tee: self.tee,
            snp: self.snp,
            microcode: self.microcode,
            fmc: Some(self.fmc),
        }
    }

    fn is_zero(&self) -> bool {
        *self == MinTcb::default()
    }

    /// The minimum TCB required when a policy does not set `min_tcb`.
    ///
    /// | product | bl | tee | snp | ucode | source |
    /// |---|---|---|---|---|---|
    /// | Milan | 3 | 0 | 8 | 115 | the genuine Milan v2 report of virtee/sev's test data (`report_milan.hex`) |
    /// | Genoa | 0 | 0 | 8 | 0 | SNP firmware SPL only: no genuine Genoa report is on file to pin the other components |
    /// | Turin | 0 | 0 | 8 | 0 | as Genoa |
    ///
    /// Every baseline is non-zero, so a policy without `min_tcb` never accepts a platform
    /// whose SNP firmware predates these levels. The emulated platforms report above it.
    pub fn baseline(product: Product) -> MinTcb {
        match product {
            Product::Milan => MinTcb {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115,
                fmc: 0,
            },
            Product::Genoa | Product::Turin => MinTcb {
                snp: 8,
                ..MinTcb::default()
            },
        }
    }

    /// Parses `bl=3,tee=0,snp=8,ucode=115[,fmc=N]` (missing components are 0;
    /// `boot_loader`/`bootloader`, `microcode` also accepted) or a raw TCB_VERSION in
    /// hex (`0x7300000000000003`), decoded with `layout`.
    pub fn parse(spec: &str, layout: TcbLayout) -> Result<Self, MinTcbError> {
        let spec = spec.trim();
        if !spec.contains('=') {
            let digits = spec
                .strip_prefix("0x")
                .or_else(|| spec.strip_prefix("0X"))
                .unwrap_or(spec);
            let raw =
                u64::from_str_radix(digits, 16).map_err(|_| MinTcbError::Raw(spec.to_owned()))?;
            let p = TcbVersion(raw).decode(layout);
            return Ok(Self {
                bootloader: p.bootloader,
                tee: p.tee,
                snp: p.snp,
                microcode: p.microcode,
                fmc: p.fmc.unwrap_or(0),
            });
        }
        let mut out = Self::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| MinTcbError::Item(item.to_owned()))?;
            let v: u8 = value
                .trim()
                .parse()
                .map_err(|_| MinTcbError::Value(value.to_owned()))?;
            match name.trim().to_ascii_lowercase().as_str() {
                "bl" | "bootloader" | "boot_loader" => out.bootloader = v,
                "tee" => out.tee = v,
                "snp" => out.snp = v,
                "ucode" | "microcode" => out.microcode = v,
                "fmc" => out.fmc = v,
                other => return Err(MinTcbError::Component(other.to_owned())),
            }
        }
        Ok(out)
    }
}

/// SEV-SNP specific checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnpPolicy {
    /// Minimum TCB of REPORTED_TCB, CURRENT_TCB and COMMITTED_TCB. `None` (the default):
    /// the product's [`MinTcb::baseline`]. An explicit all-zero value disables the check.
    pub min_tcb: Option<MinTcb>,
    /// Minimum LAUNCH_TCB.
    pub min_launch_tcb: MinTcb,
    /// Minimum GUEST_SVN.
    pub min_guest_svn: u32,
    /// Required FAMILY_ID (16 bytes, hex).
    #[serde(with = "super::hex_opt")]
    pub family_id: Option<Vec<u8>>,
    /// Required IMAGE_ID (16 bytes, hex).
    #[serde(with = "super::hex_opt")]
    pub image_id: Option<Vec<u8>>,
    /// Allowed ID_KEY_DIGESTs (48 bytes, hex); empty allows any.
    #[serde(with = "super::hex_list")]
    pub id_key_digests: Vec<Vec<u8>>,
    /// Allowed AUTHOR_KEY_DIGESTs (48 bytes, hex); empty allows any. A non-empty list
    /// also requires AUTHOR_KEY_EN.
    #[serde(with = "super::hex_list")]
    pub author_key_digests: Vec<Vec<u8>>,
    /// Allowed CHIP_IDs (64 bytes, hex); empty allows any (masked chip ids never match
    /// a non-empty list).
    #[serde(with = "super::hex_list")]
    pub chip_ids: Vec<Vec<u8>>,
    /// Required VMPL of the report request. Default `Some(0)`; `None` (JSON `null`)
    /// accepts a report requested at any VMPL.
    pub vmpl: Option<u32>,
    /// Require the guest policy to forbid SMT and the platform to have SMT disabled.
    pub require_smt_disabled: bool,
    /// Require the guest policy's SINGLE_SOCKET bit.
    pub require_single_socket: bool,
    /// Accept a guest policy that allows a migration agent. Off by default.
    pub allow_migration_agent: bool,
    /// Minimum ABI version in the guest policy, as (major, minor).
    pub min_abi: Option<(u8, u8)>,
    /// PLATFORM_INFO bits that must be set.
    pub platform_info_required: u64,
    /// PLATFORM_INFO bits that must be clear.
    pub platform_info_forbidden: u64,
}

impl Default for SnpPolicy {
    fn default() -> Self {
        Self {
            min_tcb: None,
            min_launch_tcb: MinTcb::default(),
            min_guest_svn: 0,
            family_id: None,
            image_id: None,
            id_key_digests: Vec::new(),
            author_key_digests: Vec::new(),
            chip_ids: Vec::new(),
            vmpl: Some(0),
            require_smt_disabled: false,
            require_single_socket: false,
            allow_migration_agent: false,
            min_abi: None,
            platform_info_required: 0,
            platform_info_forbidden: 0,
        }
    }
}

fn fail(check: &str, detail: String) -> Result<(), PolicyViolation> {
    Err(PolicyViolation::new(check, detail))
}

impl SnpPolicy {
    /// Evaluates the SNP checks; the first refusal is returned.
    pub fn check(&self, c: &SnpClaims) -> Result<(), PolicyViolation> {
        let min_tcb = self.min_tcb.unwrap_or_else(|| MinTcb::baseline(c.product));
        if !min_tcb.is_zero() {
            let min = min_tcb.as_parts();
            for (name, tcb) in [
                ("reported", &c.reported_tcb),
                ("current", &c.current_tcb),
                ("committed", &c.committed_tcb),
            ] {
                if !tcb.at_least(&min) {
                    return fail(
                        "min-tcb",
                        format!("{name} TCB {tcb} is below the minimum {}", min),
                    );
                }
            }
        }
        if !self.min_launch_tcb.is_zero() && !c.launch_tcb.at_least(&self.min_launch_tcb.as_parts())
        {
            return fail(
                "min-launch-tcb",
                format!("launch TCB {} is below the minimum", c.launch_tcb),
            );
        }
        if c.guest_svn < self.min_guest_svn {
            return fail(
                "min-guest-svn",
                format!("guest SVN {} is below {}", c.guest_svn, self.min_guest_svn),
            );
        }
        if let Some(f) = &self.family_id {
            if *f != c.family_id {
                return fail(
                    "family-id",
                    format!(
                        "family id {} is not the required one",
                        hex::encode(&c.family_id)
                    ),
                );
            }
        }
        if let Some(i) = &self.image_id {
            if *i != c.image_id {
                return fail(
                    "image-id",
                    format!(
                        "image id {} is not the required one",
                        hex::encode(&c.image_id)
                    ),
                );
            }
        }
        if !self.id_key_digests.is_empty() && !self.id_key_digests.contains(&c.id_key_digest) {
            return fail(
                "id-key-digest",
                format!(
                    "ID key digest {} is not allowed",
                    hex::encode(&c.id_key_digest)
                ),
            );
        }
        if !self.author_key_digests.is_empty() {
            if !c.author_key_en {
                return fail(
                    "author-key-digest",
                    "the guest has no author key (AUTHOR_KEY_EN is clear)".to_owned(),
                );
            }
            if !self.author_key_digests.contains(&c.author_key_digest) {
                return fail(
                    "author-key-digest",
                    format!(
                        "author key digest {} is not allowed",
                        hex::encode(&c.author_key_digest)
                    ),
                );
            }
        }
        if !self.chip_ids.is_empty() && (c.mask_chip_id || !self.chip_ids.contains(&c.chip_id)) {
            return fail(
                "chip-id",
                format!("chip id {} is not allowed", hex::encode(&c.chip_id)),
            );
        }
        if let Some(v) = self.vmpl {
            if c.vmpl != v {
                return fail(
                    "vmpl",
                    format!("the report was requested at VMPL {}, not {v}", c.vmpl),
                );
            }
        }
        if self.require_smt_disabled {
            if c.policy.smt {
                return fail("smt", "the guest policy allows SMT".to_owned());
            }
            if c.platform_info.smt_enabled {
                return fail("smt", "SMT is enabled on the platform".to_owned());
            }
        }
        if self.require_single_socket && !c.policy.single_socket {
            return fail(
                "single-socket",
                "the guest policy does not require a single socket".to_owned(),
            );
        }
        if c.policy.migrate_ma && !self.allow_migration_agent {
            return fail(
                "migration-agent",
                "the guest policy allows a migration agent".to_owned(),
            );
        }
        if let Some((major, minor)) = self.min_abi {
            if (c.policy.abi_major, c.policy.abi_minor) < (major, minor) {
                return fail(
                    "min-abi",
                    format!(
                        "the guest policy's ABI {}.{} is below {major}.{minor}",
                        c.policy.abi_major, c.policy.abi_minor
                    ),
                );
            }
        }
        let info = c.platform_info.raw;
        if info & self.platform_info_required != self.platform_info_required {
            return fail(
                "platform-info",
                format!(
                    "platform info {info:#x} lacks required bits {:#x}",
                    self.platform_info_required
                ),
            );
        }
        if info & self.platform_info_forbidden != 0 {
            return fail(
                "platform-info",
                format!(
                    "platform info {info:#x} has forbidden bits {:#x}",
                    info & self.platform_info_forbidden
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::snp::claims::{SnpGuestPolicy, SnpPlatformInfo};
    use crate::snp::Signer;

    pub(in crate::policy) fn claims() -> SnpClaims {
        let tcb = TcbParts {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: None,
        };
        SnpClaims {
            version: 3,
            guest_svn: 2,
            policy: SnpGuestPolicy {
                raw: 0x30000,
                abi_major: 0,
                abi_minor: 0,
                smt: true,
                migrate_ma: false,
                debug: false,
                single_socket: false,
                cxl_allow: false,
                mem_aes_256_xts: false,
                rapl_dis: false,
                ciphertext_hiding: false,
                page_swap_disable: false,
            },
            family_id: vec![1; 16],
            image_id: vec![2; 16],
            vmpl: 0,
            signature_algo: 1,
            platform_info: SnpPlatformInfo {
                raw: 0x5,
                smt_enabled: true,
                tsme_enabled: false,
                ecc_enabled: true,
                rapl_disabled: false,
                ciphertext_hiding_enabled: false,
                alias_check_complete: false,
                tio_enabled: false,
            },
            author_key_en: false,
            mask_chip_key: false,
            mask_chip_id: false,
            reported_tcb: tcb,
            current_tcb: tcb,
            committed_tcb: tcb,
            launch_tcb: tcb,
            chip_id: vec![9; 64],
            id_key_digest: vec![4; 48],
            author_key_digest: vec![0; 48],
            report_id: vec![0; 32],
            report_id_ma: vec![0xFF; 32],
            product: Product::Milan,
            signer: Signer::Vcek,
            current_version: "1.55.21".into(),
            committed_version: "1.55.21".into(),
            launch_mit_vector: None,
            current_mit_vector: None,
        }
    }

    fn refused(p: SnpPolicy, c: &SnpClaims) -> String {
        p.check(c).expect_err("refused").check
    }

    #[test]
    fn default_accepts_and_refuses_a_migration_agent() {
        let mut c = claims();
        SnpPolicy::default().check(&c).expect("default accepts");
        c.policy.migrate_ma = true;
        assert_eq!(refused(SnpPolicy::default(), &c), "migration-agent");
        SnpPolicy {
            allow_migration_agent: true,
            ..Default::default()
        }
        .check(&c)
        .expect("allowed");
    }

    #[test]
    fn default_requires_vmpl_0() {
        // Attack: a report requested from VMPL 3 (by less privileged guest software, or
        // by a host-planted SVSM-level component) was accepted by the default policy.
        let mut c = claims();
        c.vmpl = 3;
        assert_eq!(refused(SnpPolicy::default(), &c), "vmpl");
        c.vmpl = 1;
        assert_eq!(refused(SnpPolicy::default(), &c), "vmpl");
        c.vmpl = 0;
        SnpPolicy::default().check(&c).expect("VMPL 0");
        let any: SnpPolicy = serde_json::from_str(r#"{"vmpl": null}"#).expect("parses");
        c.vmpl = 3;
        any.check(&c).expect("an explicit null accepts any VMPL");
    }

    #[test]
    fn default_requires_the_baseline_tcb() {
        // Attack: a platform at SNP firmware SPL 0 (no security fixes) was accepted by
        // the default policy, whose minimum TCB was zero.
        let mut c = claims();
        let old = TcbParts {
            bootloader: 3,
            tee: 0,
            snp: 0,
            microcode: 115,
            fmc: None,
        };
        for product in [Product::Milan, Product::Genoa, Product::Turin] {
            assert!(!MinTcb::baseline(product).is_zero());
            c.product = product;
            c.reported_tcb = old;
            assert_eq!(refused(SnpPolicy::default(), &c), "min-tcb", "{product:?}");
            c.reported_tcb = c.current_tcb;
            c.committed_tcb = old;
            assert_eq!(refused(SnpPolicy::default(), &c), "min-tcb", "{product:?}");
            c.committed_tcb = c.current_tcb;
            SnpPolicy::default().check(&c).expect("at the baseline");
        }
        // Milan also pins microcode: one below the baseline is refused.
        c.product = Product::Milan;
        c.current_tcb.microcode = 114;
        assert_eq!(refused(SnpPolicy::default(), &c), "min-tcb");
        // An explicit zero minimum is the operator's explicit choice.
        SnpPolicy {
            min_tcb: Some(MinTcb::default()),
            ..Default::default()
        }
        .check(&c)
        .expect("explicit zero");
        // The emulated platform's default TCB meets the Milan baseline.
        let emulated = crate::snp::emulated::EmulatedSnpConfig::default().tcb;
        assert!(emulated.at_least(&MinTcb::baseline(Product::Milan).as_parts()));
    }

    #[test]
    fn each_check_names_itself() {
        let c = claims();
        let min = |f: fn(&mut MinTcb)| {
            let mut m = MinTcb::default();
            f(&mut m);
            SnpPolicy {
                min_tcb: Some(m),
                ..Default::default()
            }
        };
        assert_eq!(refused(min(|m| m.microcode = 116), &c), "min-tcb");
        assert_eq!(refused(min(|m| m.fmc = 1), &c), "min-tcb");
        min(|m| m.snp = 8).check(&c).expect("equal is enough");
        assert_eq!(
            refused(
                SnpPolicy {
                    min_launch_tcb: MinTcb {
                        bootloader: 4,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                &c
            ),
            "min-launch-tcb"
        );
        assert_eq!(
            refused(
                SnpPolicy {
                    min_guest_svn: 3,
                    ..Default::default()
                },
                &c
            ),
            "min-guest-svn"
        );
        assert_eq!(
            refused(
                SnpPolicy {
                    family_id: Some(vec![0; 16]),
                    ..Default::default()
                },
                &c
            ),
            "family-id"
        );
        assert_eq!(
            refused(
                SnpPolicy {
                    image_id: Some(vec![0; 16]),
                    ..Default::default()
                },
                &c
            ),
            "image-id"
        );
        assert_eq!(
            refused(
                SnpPolicy {
                    id_key_digests: vec![vec![0; 48]],
                    ..Default::default()
                },
                &c
            ),
            "id-key-digest"
        );
        SnpPolicy {
            id_key_digests: vec![vec![4; 48]],
            ..Default::default()
        }
        .check(&c)
        .expect("listed");
        assert_eq!(
            refused(
                SnpPolicy {
                    author_key_digests: vec![vec![0; 48]],
                    ..Default::default()
                },
                &c
            ),
            "author-key-digest"
        );
        assert_eq!(
            refused(
                SnpPolicy {
                    chip_ids: vec![vec![8; 64]],
                    ..Default::default()
                },
                &c
            ),
            "chip-id"
        );
        SnpPolicy {
            chip_ids: vec![vec![9; 64]],
            ..Default::default()
        }
        .check(&c)
        .expect("listed chip");
        assert_eq!(
            refused(
                SnpPolicy {
                    vmpl: Some(1),
                    ..Default::default()
                },
                &c
            ),
            "vmpl"
        );
        assert_eq!(
            refused(
                SnpPolicy {
                    require_smt_disabled: true,
                    ..Default::default()
                },
                &c
            ),
            "smt"
        );
        assert_eq!(
            refused(
                SnpPolicy {
                    require_single_socket: true,
                    ..Default::default()
                },
                &c
            ),
            "single-socket"
        );
        assert_eq!(
            refused(
                SnpPolicy {
                    min_abi: Some((1, 51)),
                    ..Default::default()
                },
                &c
            ),
            "min-abi"
        );
        assert_eq!(
            refused(
                SnpPolicy {
                    platform_info_required: 0x2,
                    ..Default::default()
                },
                &c
            ),
            "platform-info"
        );
        assert_eq!(
            refused(
                SnpPolicy {
                    platform_info_forbidden: 0x1,
                    ..Default::default()
                },
                &c
            ),
            "platform-info"
        );
    }

    #[test]
    fn min_tcb_parses_both_forms() {
        let want = MinTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: 0,
        };
        assert_eq!(
            MinTcb::parse("bl=3,tee=0,snp=8,ucode=115", TcbLayout::Legacy),
            Ok(want)
        );
        assert_eq!(
            MinTcb::parse("0x7308000000000003", TcbLayout::Legacy),
            Ok(want)
        );
        assert_eq!(
            MinTcb::parse("0x0900000004030201", TcbLayout::Turin),
            Ok(MinTcb {
                fmc: 1,
                bootloader: 2,
                tee: 3,
                snp: 4,
                microcode: 9
            })
        );
        assert!(matches!(
            MinTcb::parse("bl=3,xx=1", TcbLayout::Legacy),
            Err(MinTcbError::Component(_))
        ));
        assert!(matches!(
            MinTcb::parse("bl=300", TcbLayout::Legacy),
            Err(MinTcbError::Value(_))
        ));
        assert!(matches!(
            MinTcb::parse("zz", TcbLayout::Legacy),
            Err(MinTcbError::Raw(_))
        ));
    }

    #[test]
    fn serde_refuses_unknown_fields_and_defaults_missing_ones() {
        let p: SnpPolicy =
            serde_json::from_str(r#"{"min_guest_svn": 2, "min_tcb": {"snp": 8}}"#).expect("parses");
        assert_eq!(p.min_guest_svn, 2);
        assert_eq!(p.min_tcb.map(|m| m.snp), Some(8));
        assert_eq!(p.vmpl, Some(0), "a missing vmpl means VMPL 0");
        assert!(!p.allow_migration_agent);
        assert!(serde_json::from_str::<SnpPolicy>(r#"{"min_guest_sv": 2}"#).is_err());
        let round: SnpPolicy =
            serde_json::from_str(&serde_json::to_string(&p).expect("ser")).expect("de");
        assert_eq!(round, p);
    }
}
