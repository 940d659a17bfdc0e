//! The TDX launch plan: the KVM_TDX_INIT_MEM_REGION calls in TDVF section order, and
//! the RTMR events the project's firmware adds for measured direct boot.
//!
//! Sections: BFV and CFV are copied from the image (zero-padded to their memory size)
//! and measured when they carry the MR.EXTEND attribute; TD_HOB and TempMem are added
//! as zero pages; PermMem (PAGE.AUG) is accepted at run time and not part of the plan;
//! Payload and PayloadParam are added as zero pages. A section whose contents the VMM
//! would fill (TD_HOB, Payload, PayloadParam) but which asks to be measured is refused:
//! its measurement would depend on the VMM, not on the firmware.
//!
//! Measured direct boot (the contract `guest-firmware` implements): the firmware
//! extends RTMR1 with SHA-384 of the kernel file, then RTMR2 with SHA-384 of the
//! command line including its terminating NUL and with SHA-384 of the initrd (of
//! nothing when there is none), each recorded in the CC event log as `EV_IPL`.

use serde::Serialize;
use sha2::{Digest, Sha384};

use super::eventlog::{Event, EventLog, EV_IPL};
use super::{MemRegion, Mrtd};
use crate::firmware::tdx::{TdvfSection, TdvfSectionType};
use crate::firmware::{FirmwareError, FirmwareImage, PAGE_SIZE};

/// The largest section the plan will materialise.
pub const MAX_SECTION_SIZE: u64 = 256 << 20;

/// Why a TDX plan cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TdxPlanError {
    /// The firmware image is unusable.
    #[error("invalid firmware")]
    Firmware(#[from] FirmwareError),
    /// A section is too large to add at build time.
    #[error("TDVF section {index} ({size:#x} bytes) exceeds the {MAX_SECTION_SIZE:#x}-byte limit")]
    SectionTooLarge {
        /// Section number.
        index: usize,
        /// Its memory size.
        size: u64,
    },
    /// A section filled by the VMM asks to be measured.
    #[error("TDVF section {index} ({section_type:?}) asks for MR.EXTEND but its contents come from the VMM")]
    MeasuredVmmData {
        /// Section number.
        index: usize,
        /// Its type.
        section_type: TdvfSectionType,
    },
}

/// The inputs of measured direct boot, reduced to their SHA-384 digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectBoot {
    /// SHA-384 of the kernel file.
    #[serde(with = "hex::serde")]
    pub kernel: [u8; 48],
    /// SHA-384 of the initrd (of nothing when there is none).
    #[serde(with = "hex::serde")]
    pub initrd: [u8; 48],
    /// SHA-384 of the command line including its terminating NUL.
    #[serde(with = "hex::serde")]
    pub cmdline: [u8; 48],
}

impl DirectBoot {
    /// Hashes the kernel, initrd and command line.
    pub fn measure(kernel: &[u8], initrd: Option<&[u8]>, cmdline: Option<&str>) -> Self {
        let mut c = Sha384::new();
        c.update(cmdline.unwrap_or("").as_bytes());
        c.update([0u8]);
        Self {
            kernel: Sha384::digest(kernel).into(),
            initrd: Sha384::digest(initrd.unwrap_or(&[])).into(),
            cmdline: c.finalize().into(),
        }
    }

    /// The events the firmware records, in extension order.
    pub fn events(&self) -> EventLog {
        let ev = |mr_index, digest: &[u8; 48], what: &str| Event {
            mr_index,
            event_type: EV_IPL,
            digest: *digest,
            data: what.as_bytes().to_vec(),
        };
        EventLog {
            events: vec![
                ev(2, &self.kernel, "cvm: kernel"),
                ev(3, &self.cmdline, "cvm: cmdline"),
                ev(3, &self.initrd, "cvm: initrd"),
            ],
        }
    }
}

#[derive(Debug, Clone)]
enum Contents {
    Image { start: usize, len: usize },
    Owned(Vec<u8>),
    Zero(usize),
}

#[derive(Debug, Clone)]
struct Planned {
    gpa: u64,
    contents: Contents,
    measure: bool,
}

/// The ordered build of a TD. Build it with [`TdxLaunchPlan::new`].
#[derive(Debug, Clone)]
pub struct TdxLaunchPlan {
    firmware: FirmwareImage,
    sections: Vec<TdvfSection>,
    regions: Vec<Planned>,
    zeros: Vec<u8>,
    direct_boot: Option<DirectBoot>,
}

impl TdxLaunchPlan {
    /// Builds the plan for `firmware` (which must carry TDVF metadata).
    pub fn new(
        firmware: FirmwareImage,
        direct_boot: Option<DirectBoot>,
    ) -> Result<Self, TdxPlanError> {
        let sections = firmware.tdx_metadata()?;
        let mut regions = Vec::new();
        let mut max_zero = 0usize;
        for (index, s) in sections.iter().enumerate() {
            if s.page_aug() {
                continue;
            }
            if s.mem_size > MAX_SECTION_SIZE {
                return Err(TdxPlanError::SectionTooLarge {
                    index,
                    size: s.mem_size,
                });
            }
            let size = s.mem_size as usize;
            let contents = match s.section_type {
                TdvfSectionType::Bfv | TdvfSectionType::Cfv => {
                    let (start, len) = (s.data_offset as usize, s.raw_size as usize);
                    if len == size {
                        Contents::Image { start, len }
                    } else {
                        let mut v = vec![0u8; size];
                        v[..len].copy_from_slice(&firmware.data()[start..start + len]);
                        Contents::Owned(v)
                    }
                }
                TdvfSectionType::TempMem => Contents::Zero(size),
                t @ (TdvfSectionType::TdHob
                | TdvfSectionType::Payload
                | TdvfSectionType::PayloadParam) => {
                    if s.measured() {
                        return Err(TdxPlanError::MeasuredVmmData {
                            index,
                            section_type: t,
                        });
                    }
                    Contents::Zero(size)
                }
                TdvfSectionType::PermMem => continue,
            };
            if let Contents::Zero(n) = contents {
                max_zero = max_zero.max(n);
            }
            regions.push(Planned {
                gpa: s.gpa,
                contents,
                measure: s.measured(),
            });
        }
        Ok(Self {
            firmware,
            sections,
            regions,
            zeros: vec![0; max_zero],
            direct_boot,
        })
    }

    /// The KVM_TDX_INIT_MEM_REGION calls, in order.
    pub fn regions(&self) -> impl Iterator<Item = MemRegion<'_>> + '_ {
        self.regions.iter().map(move |r| MemRegion {
            gpa: r.gpa,
            data: match &r.contents {
                Contents::Image { start, len } => &self.firmware.data()[*start..*start + *len],
                Contents::Owned(v) => v,
                Contents::Zero(n) => &self.zeros[..*n],
            },
            measure: r.measure,
        })
    }

    /// The MRTD the TDX module will report.
    pub fn mrtd(&self) -> [u8; 48] {
        let mut m = Mrtd::new();
        for r in self.regions() {
            m.add_region(&r);
        }
        m.value()
    }

    /// The RTMR events the project's firmware records for measured direct boot (empty
    /// without a kernel).
    pub fn event_log(&self) -> EventLog {
        self.direct_boot
            .as_ref()
            .map(DirectBoot::events)
            .unwrap_or_default()
    }

    /// The RTMR values after the firmware's direct-boot extensions.
    pub fn rtmrs(&self) -> [[u8; 48]; 4] {
        self.event_log().replay()
    }

    /// The TDVF sections of the firmware.
    pub fn sections(&self) -> &[TdvfSection] {
        &self.sections
    }

    /// The firmware image.
    pub fn firmware(&self) -> &FirmwareImage {
        &self.firmware
    }

    /// The direct-boot digests, if a kernel was given.
    pub fn direct_boot(&self) -> Option<&DirectBoot> {
        self.direct_boot.as_ref()
    }

    /// Total pages added at build time and how many of them are measured.
    pub fn page_counts(&self) -> (u64, u64) {
        self.regions().fold((0, 0), |(a, m), r| {
            let n = r.data.len() as u64 / PAGE_SIZE;
            (a + n, if r.measure { m + n } else { m })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tdx::MemRegion;
    use crate::testing::tdx_image as image_with;

    #[test]
    fn plan_follows_sections_and_pads_partial_volumes() {
        // BFV: 0x2000 bytes of data in 0x3000 bytes of memory; TD_HOB; TempMem; PermMem (AUG).
        let img = image_with(
            0x4000,
            &[
                (0x1000, 0x2000, 0xffff_d000, 0x3000, 0, 1),
                (0, 0, 0x80_0000, 0x1000, 2, 0),
                (0, 0, 0x80_1000, 0x2000, 3, 0),
                (0, 0, 0x100_0000, 0x1000, 4, 2),
            ],
        );
        let fw = FirmwareImage::parse(img).unwrap();
        let plan = TdxLaunchPlan::new(fw.clone(), None).unwrap();
        let r: Vec<_> = plan
            .regions()
            .map(|r| (r.gpa, r.data.len(), r.measure))
            .collect();
        assert_eq!(
            r,
            vec![
                (0xffff_d000, 0x3000, true),
                (0x80_0000, 0x1000, false),
                (0x80_1000, 0x2000, false)
            ]
        );
        assert_eq!(plan.page_counts(), (6, 3));

        let mut padded = fw.data()[0x1000..0x3000].to_vec();
        padded.resize(0x3000, 0);
        let mut m = Mrtd::new();
        m.add_region(&MemRegion {
            gpa: 0xffff_d000,
            data: &padded,
            measure: true,
        });
        m.add_region(&MemRegion {
            gpa: 0x80_0000,
            data: &[0; 0x1000],
            measure: false,
        });
        m.add_region(&MemRegion {
            gpa: 0x80_1000,
            data: &[0; 0x2000],
            measure: false,
        });
        assert_eq!(plan.mrtd(), m.value());
    }

    #[test]
    fn refuses_measured_vmm_sections() {
        let img = image_with(
            0x4000,
            &[
                (0, 0x1000, 0xffff_f000, 0x1000, 0, 1),
                (0, 0, 0x80_0000, 0x1000, 2, 1),
            ],
        );
        let err = TdxLaunchPlan::new(FirmwareImage::parse(img).unwrap(), None).unwrap_err();
        assert_eq!(
            err,
            TdxPlanError::MeasuredVmmData {
                index: 1,
                section_type: TdvfSectionType::TdHob
            }
        );
    }

    #[test]
    fn direct_boot_rtmrs() {
        let img = image_with(0x4000, &[(0, 0x1000, 0xffff_f000, 0x1000, 0, 1)]);
        let db = DirectBoot::measure(b"kernel", None, Some("quiet"));
        let plan =
            TdxLaunchPlan::new(FirmwareImage::parse(img).unwrap(), Some(db.clone())).unwrap();
        let r = plan.rtmrs();
        let mut r1 = [0u8; 48];
        crate::tdx::rtmr_extend(&mut r1, &<[u8; 48]>::from(Sha384::digest(b"kernel")));
        assert_eq!(r[1], r1);
        let mut r2 = [0u8; 48];
        crate::tdx::rtmr_extend(&mut r2, &<[u8; 48]>::from(Sha384::digest(b"quiet\0")));
        crate::tdx::rtmr_extend(&mut r2, &<[u8; 48]>::from(Sha384::digest(b"")));
        assert_eq!(r[2], r2);
        assert_eq!(r[0], [0; 48]);
        assert_eq!(plan.event_log().events.len(), 3);
    }
}
