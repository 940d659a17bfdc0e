//! The initial vCPU state of an SEV-SNP guest as the PSP measures it: the VMSA page
//! (the SEV-ES save area, AMD APM vol. 2 table B-4).
//!
//! With real hardware KVM builds the VMSAs at SNP_LAUNCH_FINISH from the vCPU registers
//! the VMM set; the measurement therefore depends on the reset state each VMM uses.
//! [`VmsaRegisters::reset`] reproduces QEMU's (and the EC2 and GCE variants that
//! sev-snp-measure knows), and [`VmsaRegisters::to_page`] lays it out at the save-area
//! offsets. The VMM sets the same registers, so the two cannot drift apart.

use serde::Serialize;

use crate::firmware::PAGE_SIZE;

/// Which VMM's reset state the guest starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VmmType {
    /// QEMU (and this project's `cvm`).
    #[default]
    Qemu,
    /// Amazon EC2: CPUID pages measured last, different segment attributes, RDX 0x600,
    /// MXCSR and FCW zero.
    Ec2,
    /// Google Compute Engine: SEC_MEM unmeasured, G_PAT 0x70106, RDX 0x600.
    Gce,
}

impl std::str::FromStr for VmmType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "qemu" => Ok(Self::Qemu),
            "ec2" => Ok(Self::Ec2),
            "gce" => Ok(Self::Gce),
            _ => Err(format!(
                "unknown VMM type `{s}` (expected qemu, ec2 or gce)"
            )),
        }
    }
}

/// A segment register in VMCB layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Attributes (VMCB packed format).
    pub attrib: u16,
    /// Limit.
    pub limit: u32,
    /// Base.
    pub base: u64,
}

impl Segment {
    const fn new(selector: u16, attrib: u16, limit: u32, base: u64) -> Self {
        Self {
            selector,
            attrib,
            limit,
            base,
        }
    }
}

/// The architectural state in a VMSA at launch. Fields not listed are zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct VmsaRegisters {
    pub es: Segment,
    pub cs: Segment,
    pub ss: Segment,
    pub ds: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub gdtr: Segment,
    pub ldtr: Segment,
    pub idtr: Segment,
    pub tr: Segment,
    pub efer: u64,
    pub cr4: u64,
    pub cr0: u64,
    pub dr7: u64,
    pub dr6: u64,
    pub rflags: u64,
    pub rip: u64,
    pub g_pat: u64,
    pub rdx: u64,
    pub sev_features: u64,
    pub xcr0: u64,
    pub mxcsr: u32,
    pub x87_fcw: u16,
}

/// Reset EIP of the bootstrap processor.
pub const BSP_RESET_EIP: u32 = 0xFFFF_FFF0;

impl VmsaRegisters {
    /// The reset state of a vCPU starting at `eip` (real mode, CS base `eip & 0xFFFF0000`).
    pub fn reset(eip: u32, sev_features: u64, vcpu_sig: u32, vmm: VmmType) -> Self {
        let (cs_attr, ss_attr, tr_attr, rdx, mxcsr, fcw, g_pat) = match vmm {
            VmmType::Qemu => (
                0x9b,
                0x93,
                0x8b,
                u64::from(vcpu_sig),
                0x1f80,
                0x37f,
                0x0007_0406_0007_0406,
            ),
            VmmType::Ec2 => {
                let cs = if eip == BSP_RESET_EIP { 0x9a } else { 0x9b };
                (cs, 0x92, 0x83, 0x600, 0, 0, 0x0007_0406_0007_0406)
            }
            VmmType::Gce => (0x9b, 0x93, 0x8b, 0x600, 0, 0, 0x0007_0106),
        };
        Self {
            es: Segment::new(0, 0x93, 0xffff, 0),
            cs: Segment::new(0xf000, cs_attr, 0xffff, u64::from(eip & 0xffff_0000)),
            ss: Segment::new(0, ss_attr, 0xffff, 0),
            ds: Segment::new(0, 0x93, 0xffff, 0),
            fs: Segment::new(0, 0x93, 0xffff, 0),
            gs: Segment::new(0, 0x93, 0xffff, 0),
            gdtr: Segment::new(0, 0, 0xffff, 0),
            ldtr: Segment::new(0, 0x82, 0xffff, 0),
            idtr: Segment::new(0, 0, 0xffff, 0),
            tr: Segment::new(0, tr_attr, 0xffff, 0),
            efer: 0x1000, // KVM sets EFER.SVME
            cr4: 0x40,    // KVM sets CR4.MCE
            cr0: 0x10,
            dr7: 0x400,
            dr6: 0xffff_0ff0,
            rflags: 0x2,
            rip: u64::from(eip & 0xffff),
            g_pat,
            rdx,
            sev_features,
            xcr0: 0x1,
            mxcsr,
            x87_fcw: fcw,
        }
    }

    /// The VMSA page: the save area at its architectural offsets, zero elsewhere.
    pub fn to_page(&self) -> Box<[u8; PAGE_SIZE as usize]> {
        let mut p = Box::new([0u8; PAGE_SIZE as usize]);
        let segs = [
            self.es, self.cs, self.ss, self.ds, self.fs, self.gs, self.gdtr, self.ldtr, self.idtr,
            self.tr,
        ];
        for (i, s) in segs.iter().enumerate() {
            let o = i * 16;
            p[o..o + 2].copy_from_slice(&s.selector.to_le_bytes());
            p[o + 2..o + 4].copy_from_slice(&s.attrib.to_le_bytes());
            p[o + 4..o + 8].copy_from_slice(&s.limit.to_le_bytes());
            p[o + 8..o + 16].copy_from_slice(&s.base.to_le_bytes());
        }
        let mut put64 = |off: usize, v: u64| p[off..off + 8].copy_from_slice(&v.to_le_bytes());
        put64(offsets::EFER, self.efer);
        put64(offsets::CR4, self.cr4);
        put64(offsets::CR0, self.cr0);
        put64(offsets::DR7, self.dr7);
        put64(offsets::DR6, self.dr6);
        put64(offsets::RFLAGS, self.rflags);
        put64(offsets::RIP, self.rip);
        put64(offsets::G_PAT, self.g_pat);
        put64(offsets::RDX, self.rdx);
        put64(offsets::SEV_FEATURES, self.sev_features);
        put64(offsets::XCR0, self.xcr0);
        p[offsets::MXCSR..offsets::MXCSR + 4].copy_from_slice(&self.mxcsr.to_le_bytes());
        p[offsets::X87_FCW..offsets::X87_FCW + 2].copy_from_slice(&self.x87_fcw.to_le_bytes());
        p
    }
}

/// Byte offsets in the SEV-ES save area (Linux `struct sev_es_save_area`).
pub mod offsets {
    #![allow(missing_docs)]
    pub const EFER: usize = 0xD0;
    pub const CR4: usize = 0x148;
    pub const CR0: usize = 0x158;
    pub const DR7: usize = 0x160;
    pub const DR6: usize = 0x168;
    pub const RFLAGS: usize = 0x170;
    pub const RIP: usize = 0x178;
    pub const G_PAT: usize = 0x268;
    pub const RDX: usize = 0x310;
    pub const SEV_FEATURES: usize = 0x3B0;
    pub const XCR0: usize = 0x3E8;
    pub const MXCSR: usize = 0x408;
    pub const X87_FCW: usize = 0x410;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_bsp_reset_state_layout() {
        let r = VmsaRegisters::reset(BSP_RESET_EIP, 0x1, 0x800f12, VmmType::Qemu);
        let p = r.to_page();
        // CS: selector f000, attr 9b, limit ffff, base ffff0000
        assert_eq!(
            &p[16..32],
            &[0x00, 0xf0, 0x9b, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(
            u64::from_le_bytes(p[0x178..0x180].try_into().unwrap()),
            0xfff0
        );
        assert_eq!(u64::from_le_bytes(p[0x3B0..0x3B8].try_into().unwrap()), 1);
        assert_eq!(
            u64::from_le_bytes(p[0x310..0x318].try_into().unwrap()),
            0x800f12
        );
        assert_eq!(
            u32::from_le_bytes(p[0x408..0x40c].try_into().unwrap()),
            0x1f80
        );
        assert_eq!(
            u16::from_le_bytes(p[0x410..0x412].try_into().unwrap()),
            0x37f
        );
        assert_eq!(
            u64::from_le_bytes(p[0x268..0x270].try_into().unwrap()),
            0x0007_0406_0007_0406
        );
    }

    #[test]
    fn ec2_variant_differs_where_documented() {
        let bsp = VmsaRegisters::reset(BSP_RESET_EIP, 0x1, 0x800f12, VmmType::Ec2);
        assert_eq!(
            (
                bsp.cs.attrib,
                bsp.ss.attrib,
                bsp.tr.attrib,
                bsp.rdx,
                bsp.mxcsr,
                bsp.x87_fcw
            ),
            (0x9a, 0x92, 0x83, 0x600, 0, 0)
        );
        let ap = VmsaRegisters::reset(0xffff_f000, 0x1, 0, VmmType::Ec2);
        assert_eq!(ap.cs.attrib, 0x9b);
        assert_eq!(ap.rip, 0xf000);
        assert_eq!(ap.cs.base, 0xffff_0000);
    }
}
