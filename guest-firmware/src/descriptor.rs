//! The boot-data descriptor the VMM writes at GPA 0x8000 (docs/guest-boot-protocol.md).
//! It is host-written and unmeasured: it is copied once and every field is checked
//! before use. It only says *where* things are; *what* they are is checked against the
//! measured hashes (SNP, plain) or measured into RTMRs (TDX).

use crate::arch;

/// GPA of the descriptor.
pub const GPA: u64 = 0x8000;
/// Size of the descriptor.
pub const SIZE: usize = 0x80;
/// Lowest address the staging region may start at (above all firmware pages and the
/// legacy/ACPI area).
const STAGING_MIN: u64 = 0x100000;
/// RAM below 4 GiB ends at most at the MMIO hole.
pub const MMIO_HOLE: u64 = 0xC000_0000;
/// Largest command line (the private copy at 0x20000 is 64 KiB).
pub const CMDLINE_MAX: u64 = 0x10000;

/// A range in the staging region.
#[derive(Clone, Copy)]
pub struct Blob {
    /// GPA.
    pub gpa: u64,
    /// Size in bytes (0 = absent).
    pub size: u64,
}

/// A validated descriptor.
pub struct BootData {
    /// The whole bzImage file.
    pub kernel: Blob,
    /// The initrd (size 0 = none).
    pub initrd: Blob,
    /// The command line including its NUL (size 0 = empty).
    pub cmdline: Blob,
    /// RAM bytes from GPA 0.
    pub ram_below_4g: u64,
    /// RAM bytes from 4 GiB.
    pub ram_above_4g: u64,
    /// The link address of the ACPI table blob: where its RSDP was built to live and
    /// what its pointers are relative to (0xE0000-0xFFFFF). After the firmware's private
    /// copy ([`crate::acpi`]), where the RSDP is.
    pub rsdp: u64,
    /// Staging region.
    pub staging: Blob,
    /// The ACPI table blob in the staging region (untrusted; size 0 = none staged).
    pub acpi: Blob,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn page_aligned(v: u64) -> bool {
    v & 0xFFF == 0
}

/// Whether `[gpa, gpa + size)` lies inside `outer` (size 0 requires gpa 0).
fn inside(b: Blob, outer: Blob) -> bool {
    if b.size == 0 {
        return b.gpa == 0;
    }
    match (b.gpa.checked_add(b.size), outer.gpa.checked_add(outer.size)) {
        (Some(end), Some(outer_end)) => b.gpa >= outer.gpa && end <= outer_end,
        _ => false,
    }
}

/// Copies the descriptor out of shared memory and validates it.
pub fn read() -> Result<BootData, &'static str> {
    let mut d = [0u8; SIZE];
    // SAFETY: 0x8000 is identity-mapped RAM (the descriptor page); we copy it once and
    // use only the copy.
    d.copy_from_slice(unsafe { arch::phys(GPA, SIZE) });
    parse(&d)
}

/// Validates a copy of the descriptor.
pub fn parse(d: &[u8; SIZE]) -> Result<BootData, &'static str> {
    if &d[..8] != b"CVMBOOT1" {
        return Err("no boot-data descriptor at 0x8000 (magic CVMBOOT1)");
    }
    if u32_at(d, 0x08) != 1 || u32_at(d, 0x0C) != SIZE as u32 {
        return Err("boot-data descriptor: unsupported version or size");
    }
    if u32_at(d, 0x5C) != 0 {
        return Err("boot-data descriptor: reserved fields are not zero");
    }
    let blob = |o| Blob {
        gpa: u64_at(d, o),
        size: u64_at(d, o + 8),
    };
    let bd = BootData {
        kernel: blob(0x10),
        initrd: blob(0x20),
        cmdline: blob(0x30),
        ram_below_4g: u64_at(d, 0x40),
        ram_above_4g: u64_at(d, 0x48),
        rsdp: u64_at(d, 0x50),
        staging: blob(0x60),
        acpi: blob(0x70),
    };
    if !page_aligned(bd.ram_below_4g)
        || bd.ram_below_4g < 0x0200_0000
        || bd.ram_below_4g > MMIO_HOLE
        || !page_aligned(bd.ram_above_4g)
        || bd.ram_above_4g > 1 << 46
    {
        return Err("boot-data descriptor: RAM sizes out of range");
    }
    if !(0xE0000..0x100000).contains(&bd.rsdp) {
        return Err("boot-data descriptor: ACPI RSDP outside 0xE0000-0xFFFFF");
    }
    if u32_at(d, 0x58) == 0 {
        return Err("boot-data descriptor: vCPU count is 0");
    }
    let s = bd.staging;
    if bd.kernel.size != 0 {
        let ram = Blob {
            gpa: STAGING_MIN,
            size: bd.ram_below_4g - STAGING_MIN,
        };
        if !page_aligned(s.gpa) || s.size == 0 || !inside(s, ram) {
            return Err("boot-data descriptor: staging region outside RAM above 1 MiB");
        }
    }
    if !inside(bd.kernel, s) || !inside(bd.initrd, s) || !inside(bd.cmdline, s) {
        return Err("boot-data descriptor: kernel, initrd or cmdline outside the staging region");
    }
    if bd.acpi.size > crate::acpi::MAX {
        return Err("boot-data descriptor: ACPI tables larger than 128 KiB");
    }
    if !inside(bd.acpi, s) {
        return Err("boot-data descriptor: ACPI tables outside the staging region");
    }
    if bd.cmdline.size > CMDLINE_MAX {
        return Err("boot-data descriptor: command line longer than 64 KiB");
    }
    Ok(bd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> [u8; SIZE] {
        let mut d = [0u8; SIZE];
        let mut put = |o: usize, v: &[u8]| d[o..o + v.len()].copy_from_slice(v);
        put(0, b"CVMBOOT1");
        put(0x08, &1u32.to_le_bytes());
        put(0x0C, &0x80u32.to_le_bytes());
        put(0x10, &0x1FF0_0000u64.to_le_bytes());
        put(0x18, &0x5000u64.to_le_bytes());
        put(0x20, &0x1FF0_5000u64.to_le_bytes());
        put(0x28, &0x100u64.to_le_bytes());
        put(0x30, &0x1FF0_6000u64.to_le_bytes());
        put(0x38, &0x10u64.to_le_bytes());
        put(0x40, &0x2000_0000u64.to_le_bytes());
        put(0x50, &0xE0000u64.to_le_bytes());
        put(0x58, &1u32.to_le_bytes());
        put(0x60, &0x1FF0_0000u64.to_le_bytes());
        put(0x68, &0x10_0000u64.to_le_bytes());
        put(0x70, &0x1FF0_7000u64.to_le_bytes());
        put(0x78, &0x1000u64.to_le_bytes());
        d
    }

    #[test]
    fn accepts_a_well_formed_descriptor() {
        let bd = parse(&good()).unwrap();
        assert_eq!((bd.kernel.gpa, bd.kernel.size), (0x1FF0_0000, 0x5000));
        assert_eq!(bd.ram_below_4g, 0x2000_0000);
        assert_eq!((bd.acpi.gpa, bd.acpi.size), (0x1FF0_7000, 0x1000));
        // No kernel: staging may be absent.
        let mut d = good();
        for o in [0x10, 0x18, 0x20, 0x28, 0x30, 0x38, 0x60, 0x68, 0x70, 0x78] {
            d[o..o + 8].fill(0);
        }
        assert_eq!(parse(&d).unwrap().kernel.size, 0);
    }

    #[test]
    fn refuses_every_malformed_field() {
        let cases: &[(usize, u64)] = &[
            (0x00, 0),                 // magic
            (0x08, 2),                 // version (u32, low half)
            (0x10, 0x1FEF_F000),       // kernel below staging
            (0x18, 0x20_0000),         // kernel past the staging end
            (0x18, u64::MAX),          // overflow
            (0x28, 0x20_0000),         // initrd past the staging end
            (0x38, 0x1_0001),          // cmdline longer than 64 KiB
            (0x40, 0xC000_1000),       // RAM into the MMIO hole
            (0x40, 0x100_0000),        // less than 32 MiB
            (0x50, 0xF0000 - 0x20000), // RSDP outside 0xE0000-0xFFFFF
            (0x60, 0x1FF0_0800),       // staging not page aligned
            (0x60, 0x8000),            // staging over firmware pages
            (0x68, 0x20_0000),         // staging past RAM
            (0x5C, 1),                 // reserved (u32)
            (0x70, 0x1FEF_F000),       // ACPI tables below staging
            (0x78, 0x10_0000),         // ACPI tables past the staging end
            (0x78, 0x2_1000),          // ACPI tables larger than 128 KiB
            (0x78, u64::MAX),          // overflow
        ];
        for &(off, v) in cases {
            let mut d = good();
            d[off..off + 8].copy_from_slice(&v.to_le_bytes());
            assert!(parse(&d).is_err(), "offset {off:#x} = {v:#x} accepted");
        }
        let mut d = good();
        d[0x58..0x5C].fill(0);
        assert!(parse(&d).is_err(), "zero vCPUs accepted");
    }
}
