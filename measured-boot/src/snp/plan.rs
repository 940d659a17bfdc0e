//! The SEV-SNP launch plan: the ordered SNP_LAUNCH_UPDATEs and the initial vCPU state.
//!
//! Order (QEMU's, which sev-snp-measure reproduces): the firmware as NORMAL pages ending
//! at 4 GiB; the SEV metadata sections in table order (SNP_SEC_MEM → ZERO, or
//! UNMEASURED for GCE; SNP_SECRETS → SECRETS; CPUID → CPUID, moved after all other
//! sections for EC2; SVSM_CAA → ZERO; SNP_KERNEL_HASHES → a NORMAL page holding the
//! hashes table, or ZERO when no kernel is given); then one VMSA per vCPU, BSP first.
//!
//! [`SnpLaunchPlan::updates`] is the only producer of that sequence. The KVM SNP
//! backend issues it as SNP_LAUNCH_UPDATE ioctls, the emulated PSP folds it into its
//! digest, and [`SnpLaunchPlan::launch_digest`] folds it with the same
//! [`LaunchDigest`]: the expected measurement is never computed by a second path.

use std::collections::BTreeMap;

use serde::Serialize;

use super::hashes::{HashesTableError, SevHashes};
use super::vmsa::{VmmType, VmsaRegisters, BSP_RESET_EIP};
use super::{LaunchDigest, LaunchUpdate, PageType, UpdateContents, VMSA_GPA};
use crate::firmware::sev::{SevSection, SevSectionType};
use crate::firmware::{FirmwareError, FirmwareImage, PAGE_SIZE};

/// The most vCPUs a plan accepts (KVM's limit for SEV-ES/SNP guests is far lower in
/// practice; anything beyond this is a typo).
pub const MAX_VCPUS: u32 = 512;

/// What to build a plan for, besides the firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpPlanConfig {
    /// Number of vCPUs (one VMSA each).
    pub vcpus: u32,
    /// CPUID signature placed in RDX (see [`super::cpu`]).
    pub vcpu_sig: u32,
    /// SEV_FEATURES of every VMSA (bit 0, SNPActive, is normally set).
    pub guest_features: u64,
    /// Whose reset state and page order to reproduce.
    pub vmm_type: VmmType,
    /// The kernel hashes for measured direct boot, if a kernel is given.
    pub hashes: Option<SevHashes>,
}

/// Why a plan cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnpPlanError {
    /// The firmware image is unusable.
    #[error("invalid firmware")]
    Firmware(#[from] FirmwareError),
    /// The vCPU count is 0 or absurd.
    #[error("vCPU count {0} is out of range (1..={MAX_VCPUS})")]
    VcpuCount(u32),
    /// A kernel was given but the firmware cannot check it.
    #[error("a kernel was given but the firmware's SEV metadata has no SNP_KERNEL_HASHES section, so it cannot verify the kernel")]
    NoKernelHashesSection,
    /// The kernel hashes section and the hashes-table entry disagree.
    #[error("the firmware's kernel hashes table at {table_gpa:#x} is not inside its SNP_KERNEL_HASHES section ({section_gpa:#x}, {section_size:#x} bytes)")]
    HashesTableOutsideSection {
        /// GPA from the hashes-table footer entry.
        table_gpa: u64,
        /// GPA of the section.
        section_gpa: u64,
        /// Size of the section.
        section_size: u64,
    },
    /// The hashes table does not fit in its page.
    #[error("the kernel hashes table does not fit in its page")]
    HashesTable(#[from] HashesTableError),
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Firmware,
    Pages {
        gpa: u64,
        pages: u64,
        page_type: PageType,
    },
    HashesPage {
        gpa: u64,
    },
    Vmsa {
        cpu: u32,
    },
}

/// The ordered launch of an SEV-SNP guest. Build it with [`SnpLaunchPlan::new`].
#[derive(Debug, Clone)]
pub struct SnpLaunchPlan {
    firmware: FirmwareImage,
    config: SnpPlanConfig,
    steps: Vec<Step>,
    sections: Vec<SevSection>,
    hashes_page: Option<Box<[u8; PAGE_SIZE as usize]>>,
    ap_reset_eip: Option<u32>,
    bsp: VmsaRegisters,
    ap: Option<VmsaRegisters>,
    bsp_page: Box<[u8; PAGE_SIZE as usize]>,
    ap_page: Option<Box<[u8; PAGE_SIZE as usize]>>,
}

impl SnpLaunchPlan {
    /// Builds the plan for `firmware` (which must carry SEV metadata).
    pub fn new(firmware: FirmwareImage, config: SnpPlanConfig) -> Result<Self, SnpPlanError> {
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(SnpPlanError::VcpuCount(config.vcpus));
        }
        let sections = firmware.sev_metadata()?;
        // APs start at the SEV-ES reset block; a single-vCPU guest does not need it.
        let ap_reset_eip = if config.vcpus > 1 {
            Some(firmware.sev_es_reset_eip()?)
        } else {
            firmware.sev_es_reset_eip().ok()
        };

        let mut steps = vec![Step::Firmware];
        let mut hashes_page = None;
        for s in &sections {
            let pages = s.size / PAGE_SIZE;
            let step = match s.section_type {
                SevSectionType::SnpSecMem if config.vmm_type == VmmType::Gce => Step::Pages {
                    gpa: s.gpa,
                    pages,
                    page_type: PageType::Unmeasured,
                },
                SevSectionType::SnpSecMem | SevSectionType::SvsmCaa => Step::Pages {
                    gpa: s.gpa,
                    pages,
                    page_type: PageType::Zero,
                },
                SevSectionType::SnpSecrets => Step::Pages {
                    gpa: s.gpa,
                    pages: 1,
                    page_type: PageType::Secrets,
                },
                SevSectionType::Cpuid if config.vmm_type == VmmType::Ec2 => continue,
                SevSectionType::Cpuid => Step::Pages {
                    gpa: s.gpa,
                    pages: 1,
                    page_type: PageType::Cpuid,
                },
                SevSectionType::SnpKernelHashes => match &config.hashes {
                    Some(h) => {
                        let table_gpa = u64::from(firmware.sev_hashes_table_gpa()?);
                        let offset = table_gpa.wrapping_sub(s.gpa);
                        if s.size != PAGE_SIZE || table_gpa < s.gpa || offset >= PAGE_SIZE {
                            return Err(SnpPlanError::HashesTableOutsideSection {
                                table_gpa,
                                section_gpa: s.gpa,
                                section_size: s.size,
                            });
                        }
                        hashes_page = Some(h.to_page(offset as usize)?);
                        Step::HashesPage { gpa: s.gpa }
                    }
                    None => Step::Pages {
                        gpa: s.gpa,
                        pages,
                        page_type: PageType::Zero,
                    },
                },
            };
            steps.push(step);
        }
        if config.vmm_type == VmmType::Ec2 {
            for s in sections
                .iter()
                .filter(|s| s.section_type == SevSectionType::Cpuid)
            {
                steps.push(Step::Pages {
                    gpa: s.gpa,
                    pages: 1,
                    page_type: PageType::Cpuid,
                });
            }
        }
        if config.hashes.is_some() && hashes_page.is_none() {
            return Err(SnpPlanError::NoKernelHashesSection);
        }
        steps.extend((0..config.vcpus).map(|cpu| Step::Vmsa { cpu }));

        let bsp = VmsaRegisters::reset(
            BSP_RESET_EIP,
            config.guest_features,
            config.vcpu_sig,
            config.vmm_type,
        );
        let ap = ap_reset_eip.map(|eip| {
            VmsaRegisters::reset(eip, config.guest_features, config.vcpu_sig, config.vmm_type)
        });
        let bsp_page = bsp.to_page();
        let ap_page = ap.as_ref().map(VmsaRegisters::to_page);
        Ok(Self {
            firmware,
            config,
            steps,
            sections,
            hashes_page,
            ap_reset_eip,
            bsp,
            ap,
            bsp_page,
            ap_page,
        })
    }

    /// The SNP_LAUNCH_UPDATEs in PSP order, VMSAs last.
    pub fn updates(&self) -> impl Iterator<Item = LaunchUpdate<'_>> + '_ {
        self.steps.iter().filter_map(move |step| {
            Some(match *step {
                Step::Firmware => LaunchUpdate {
                    gpa: self.firmware.gpa(),
                    page_type: PageType::Normal,
                    contents: UpdateContents::Data(self.firmware.data()),
                },
                Step::Pages {
                    gpa,
                    pages,
                    page_type,
                } => LaunchUpdate {
                    gpa,
                    page_type,
                    contents: UpdateContents::Absent { pages },
                },
                Step::HashesPage { gpa } => LaunchUpdate {
                    gpa,
                    page_type: PageType::Normal,
                    contents: UpdateContents::Data(&self.hashes_page.as_deref()?[..]),
                },
                Step::Vmsa { cpu } => LaunchUpdate {
                    gpa: VMSA_GPA,
                    page_type: PageType::Vmsa,
                    contents: UpdateContents::Data(self.vmsa_page(cpu)?),
                },
            })
        })
    }

    /// The launch digest the PSP will report as MEASUREMENT.
    pub fn launch_digest(&self) -> [u8; 48] {
        let mut ld = LaunchDigest::new();
        for u in self.updates() {
            ld.update(&u);
        }
        ld.value()
    }

    /// SEV_FEATURES of the VMSAs (what KVM_SEV_INIT2 must be given).
    pub fn guest_features(&self) -> u64 {
        self.config.guest_features
    }

    /// The configuration the plan was built from.
    pub fn config(&self) -> &SnpPlanConfig {
        &self.config
    }

    /// The firmware image.
    pub fn firmware(&self) -> &FirmwareImage {
        &self.firmware
    }

    /// The SEV metadata sections of the firmware.
    pub fn sections(&self) -> &[SevSection] {
        &self.sections
    }

    /// The initial register state of vCPU `cpu` (what the VMM sets before launch finish).
    pub fn vcpu_registers(&self, cpu: u32) -> Option<&VmsaRegisters> {
        match cpu {
            0 => Some(&self.bsp),
            c if c < self.config.vcpus => self.ap.as_ref(),
            _ => None,
        }
    }

    /// The VMSA page of vCPU `cpu`.
    pub fn vmsa_page(&self, cpu: u32) -> Option<&[u8]> {
        match cpu {
            0 => Some(&self.bsp_page[..]),
            c if c < self.config.vcpus => self.ap_page.as_deref().map(|p| &p[..]),
            _ => None,
        }
    }

    /// A summary for display and JSON output.
    pub fn summary(&self) -> SnpPlanSummary {
        let mut pages_by_type = BTreeMap::new();
        let mut updates = Vec::new();
        for u in self.updates() {
            *pages_by_type
                .entry(format!("{:?}", u.page_type).to_lowercase())
                .or_insert(0) += u.pages();
            updates.push(UpdateSummary {
                gpa: format!("{:#x}", u.gpa),
                page_type: u.page_type,
                pages: u.pages(),
            });
        }
        SnpPlanSummary {
            firmware_gpa: format!("{:#x}", self.firmware.gpa()),
            firmware_size: self.firmware.data().len() as u64,
            vcpus: self.config.vcpus,
            vcpu_sig: format!("{:#x}", self.config.vcpu_sig),
            guest_features: format!("{:#x}", self.config.guest_features),
            vmm_type: self.config.vmm_type,
            ap_reset_eip: self.ap_reset_eip.map(|e| format!("{e:#x}")),
            sections: self.sections.clone(),
            hashes: self.config.hashes,
            pages_by_type,
            updates,
        }
    }
}

/// One update in a [`SnpPlanSummary`].
#[derive(Debug, Clone, Serialize)]
pub struct UpdateSummary {
    /// GPA of the first page (hex).
    pub gpa: String,
    /// Page type.
    pub page_type: PageType,
    /// Number of pages.
    pub pages: u64,
}

/// What a plan contains, for display and `--output-format json`.
#[derive(Debug, Clone, Serialize)]
pub struct SnpPlanSummary {
    /// GPA where the firmware starts (hex).
    pub firmware_gpa: String,
    /// Firmware size in bytes.
    pub firmware_size: u64,
    /// Number of vCPUs (VMSAs).
    pub vcpus: u32,
    /// vCPU signature (hex).
    pub vcpu_sig: String,
    /// SEV_FEATURES (hex).
    pub guest_features: String,
    /// VMM reset-state variant.
    pub vmm_type: VmmType,
    /// AP reset EIP from the firmware (hex), if it has a reset block.
    pub ap_reset_eip: Option<String>,
    /// SEV metadata sections.
    pub sections: Vec<SevSection>,
    /// The kernel hashes table contents, with measured direct boot.
    pub hashes: Option<SevHashes>,
    /// Page counts by page type.
    pub pages_by_type: BTreeMap<String, u64>,
    /// The updates in order.
    pub updates: Vec<UpdateSummary>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::{SEV_ES_RESET_BLOCK_GUID, SEV_HASH_TABLE_RV_GUID, SEV_METADATA_GUID};
    use crate::snp::hashes::SevHashes;
    use crate::testing::{asev, sev_image as image_with, ImageBuilder};

    fn config(vcpus: u32) -> SnpPlanConfig {
        SnpPlanConfig {
            vcpus,
            vcpu_sig: 0x800f12,
            guest_features: 1,
            vmm_type: VmmType::Qemu,
            hashes: None,
        }
    }

    fn full_image() -> FirmwareImage {
        let mut b = ImageBuilder::default();
        b.blobs.push((
            0x100,
            asev(&[
                (0x80_0000, 0x9000, 1),
                (0x80_9000, 0x1000, 2),
                (0x80_a000, 0x1000, 3),
                (0x80_b000, 0x1000, 0x10),
            ]),
        ));
        b.entries.push((
            SEV_METADATA_GUID,
            ((0x2000 - 0x100) as u32).to_le_bytes().to_vec(),
        ));
        b.entries.push((
            SEV_ES_RESET_BLOCK_GUID,
            0xffff_e000u32.to_le_bytes().to_vec(),
        ));
        b.entries.push((
            SEV_HASH_TABLE_RV_GUID,
            [0x80_bc00u32.to_le_bytes(), 0x400u32.to_le_bytes()].concat(),
        ));
        FirmwareImage::parse(b.build(0x2000)).unwrap()
    }

    #[test]
    fn order_and_page_types_follow_qemu() {
        let plan = SnpLaunchPlan::new(full_image(), config(2)).unwrap();
        let u: Vec<_> = plan
            .updates()
            .map(|u| (u.gpa, u.page_type, u.pages()))
            .collect();
        assert_eq!(
            u,
            vec![
                (0xffff_e000, PageType::Normal, 2),
                (0x80_0000, PageType::Zero, 9),
                (0x80_9000, PageType::Secrets, 1),
                (0x80_a000, PageType::Cpuid, 1),
                (0x80_b000, PageType::Zero, 1),
                (VMSA_GPA, PageType::Vmsa, 1),
                (VMSA_GPA, PageType::Vmsa, 1),
            ]
        );
        // The AP starts at the reset block.
        assert_eq!(plan.vcpu_registers(1).unwrap().rip, 0xe000);
        assert_eq!(plan.vcpu_registers(0).unwrap().rip, 0xfff0);
        assert!(plan.vcpu_registers(2).is_none());
    }

    #[test]
    fn ec2_moves_cpuid_last_and_gce_leaves_sec_mem_unmeasured() {
        let mut c = config(1);
        c.vmm_type = VmmType::Ec2;
        let plan = SnpLaunchPlan::new(full_image(), c.clone()).unwrap();
        let types: Vec<_> = plan.updates().map(|u| u.page_type).collect();
        assert_eq!(
            types,
            vec![
                PageType::Normal,
                PageType::Zero,
                PageType::Secrets,
                PageType::Zero,
                PageType::Cpuid,
                PageType::Vmsa
            ]
        );
        c.vmm_type = VmmType::Gce;
        let plan = SnpLaunchPlan::new(full_image(), c).unwrap();
        assert_eq!(
            plan.updates().nth(1).unwrap().page_type,
            PageType::Unmeasured
        );
    }

    #[test]
    fn kernel_hashes_fill_the_hashes_page() {
        let mut c = config(1);
        let h = SevHashes::compute(b"kernel", Some(b"initrd"), Some("console=ttyS0"));
        c.hashes = Some(h);
        let plan = SnpLaunchPlan::new(full_image(), c).unwrap();
        let u = plan.updates().nth(4).unwrap();
        assert_eq!((u.gpa, u.page_type), (0x80_b000, PageType::Normal));
        let UpdateContents::Data(page) = u.contents else {
            panic!("hashes page must carry data")
        };
        assert_eq!(&page[0xc00..0xc00 + 176], &h.to_table()[..]);
        // Different kernels give different digests; the same inputs the same digest.
        let d1 = plan.launch_digest();
        let mut c2 = config(1);
        c2.hashes = Some(SevHashes::compute(
            b"kernel2",
            Some(b"initrd"),
            Some("console=ttyS0"),
        ));
        assert_ne!(
            d1,
            SnpLaunchPlan::new(full_image(), c2)
                .unwrap()
                .launch_digest()
        );
        let mut c3 = config(1);
        c3.hashes = Some(h);
        assert_eq!(
            d1,
            SnpLaunchPlan::new(full_image(), c3)
                .unwrap()
                .launch_digest()
        );
    }

    #[test]
    fn refuses_kernel_without_hashes_section_and_bad_vcpu_counts() {
        let img = FirmwareImage::parse(image_with(0x2000, &[(0x80_0000, 0x1000, 1)])).unwrap();
        let mut c = config(1);
        c.hashes = Some(SevHashes::compute(b"k", None, None));
        assert_eq!(
            SnpLaunchPlan::new(img.clone(), c).unwrap_err(),
            SnpPlanError::NoKernelHashesSection
        );
        assert_eq!(
            SnpLaunchPlan::new(img.clone(), config(0)).unwrap_err(),
            SnpPlanError::VcpuCount(0)
        );
        assert_eq!(
            SnpLaunchPlan::new(img.clone(), config(MAX_VCPUS + 1)).unwrap_err(),
            SnpPlanError::VcpuCount(MAX_VCPUS + 1)
        );
        // Two vCPUs need the AP reset block, which this image lacks.
        assert!(matches!(
            SnpLaunchPlan::new(img, config(2)).unwrap_err(),
            SnpPlanError::Firmware(FirmwareError::MissingEntry { .. })
        ));
    }

    #[test]
    fn digest_equals_folding_the_updates_page_by_page() {
        let plan = SnpLaunchPlan::new(full_image(), config(3)).unwrap();
        let mut ld = LaunchDigest::new();
        for u in plan.updates() {
            match u.contents {
                UpdateContents::Data(d) => {
                    for (i, p) in d.chunks(4096).enumerate() {
                        let gpa = if u.page_type == PageType::Vmsa {
                            VMSA_GPA
                        } else {
                            u.gpa + 4096 * i as u64
                        };
                        ld.update_measured_page(gpa, u.page_type, p.try_into().unwrap());
                    }
                }
                UpdateContents::Absent { pages } => (0..pages)
                    .for_each(|i| ld.update_unmeasured_page(u.gpa + 4096 * i, u.page_type)),
            }
        }
        assert_eq!(ld.value(), plan.launch_digest());
    }
}
