//! Loading a bzImage and handing over to it (Linux x86 boot protocol, 64-bit entry):
//! the private copies, `boot_params` (the zero page) at 0x7000, the e820 map and the
//! jump to `0x100000 + 0x200` with RSI = 0x7000.

use crate::arch;
use crate::descriptor::{BootData, MMIO_HOLE};

/// Where the protected-mode part of the kernel is copied.
pub const KERNEL_LOAD: u64 = 0x100000;
/// boot_params (zero page).
pub const BOOT_PARAMS: u64 = 0x7000;
/// Private copy of the command line.
pub const CMDLINE: u64 = 0x20000;
/// Private copy of the bzImage's setup sectors (boot sector + setup), at most 128 KiB.
pub const SETUP_COPY: u64 = 0x40000;
const SETUP_MAX: u64 = 0x20000;
/// The SNP CC blob / setup_data page.
pub const CC_BLOB_PAGE: u64 = 0xD000;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
/// ACPI reclaimable (what OVMF reports for EfiACPIReclaimMemory): Linux maps it
/// encrypted/private under SNP and TDX (`crate::acpi` docs).
const E820_ACPI: u32 = 3;
const TWO_MIB: u64 = 0x200000;

/// What the firmware learnt from the kernel's setup header.
pub struct Kernel {
    /// Bytes of boot sector + setup (`(setup_sects or 4) + 1) * 512`).
    pub setup_len: u64,
    /// Bytes of the protected-mode part (copied to 0x100000).
    pub pm_len: u64,
    /// End of the memory the kernel may use while it decompresses itself.
    pub end: u64,
    /// Highest address the initrd may end at (initrd_addr_max + 1).
    pub initrd_limit: u64,
}

fn rd16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn rd64(b: &[u8], o: usize) -> u64 {
    u64::from(rd32(b, o)) | (u64::from(rd32(b, o + 4)) << 32)
}

/// Whether the NUL-terminated command line `cmdline` holds the word `word`.
pub fn cmdline_has(cmdline: &[u8], word: &[u8]) -> bool {
    let end = cmdline
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(cmdline.len());
    cmdline[..end]
        .split(|&b| b == b' ' || b == b'\t' || b == b'\n')
        .any(|w| w == word)
}

/// The measured command-line word that asks the firmware, under the emulated SNP of
/// this project only, to boot the kernel as a plain guest (no CC blob; the emulated
/// PSP then reports SEV_STATUS = 0): a stock kernel's own SNP code cannot run on a
/// standard KVM (README "Linux guests and the nested-KVM tier").
pub const EMULATED_PLAIN_HANDOFF: &[u8] = b"cvm.emulated_handoff=plain";

/// The setup length implied by the first sector (`setup_sects` at 0x1F1).
pub fn setup_len(first_sector: &[u8; 512]) -> u64 {
    let sects = match first_sector[0x1F1] {
        0 => 4,
        n => u64::from(n),
    };
    (sects + 1) * 512
}

/// Validates the setup header of a private copy of the setup sectors.
pub fn parse(setup: &[u8], file_size: u64) -> Result<Kernel, &'static str> {
    if setup.len() < 1024 || setup.len() as u64 > SETUP_MAX {
        return Err("kernel is not a bzImage (setup too short or too long)");
    }
    let first: &[u8; 512] = setup[..512].try_into().map_err(|_| "short setup")?;
    if setup_len(first) != setup.len() as u64 {
        return Err("kernel setup_sects changed while it was copied");
    }
    if &setup[0x202..0x206] != b"HdrS" {
        return Err("kernel is not a bzImage (no HdrS)");
    }
    if rd16(setup, 0x206) < 0x020C {
        return Err("kernel boot protocol is older than 2.12");
    }
    if rd16(setup, 0x236) & 1 == 0 {
        return Err("kernel has no 64-bit entry point (XLF_KERNEL_64)");
    }
    if file_size <= setup.len() as u64 {
        return Err("kernel has no protected-mode part");
    }
    let pm_len = file_size - setup.len() as u64;
    let init_size = u64::from(rd32(setup, 0x260));
    let pref = rd64(setup, 0x258);
    let end_a = KERNEL_LOAD + pm_len.max(init_size);
    let end_b = pref
        .checked_add(init_size)
        .ok_or("kernel pref_address overflows")?;
    Ok(Kernel {
        setup_len: setup.len() as u64,
        pm_len,
        end: (end_a.max(end_b) + 0xFFF) & !0xFFF,
        initrd_limit: u64::from(rd32(setup, 0x22C)) + 1,
    })
}

/// The part of the staging region the firmware reserves (rounded to 2 MiB, the
/// granularity at which SNP can map it shared).
pub fn staging_reserved(bd: &BootData) -> (u64, u64) {
    let lo = bd.staging.gpa & !(TWO_MIB - 1);
    let hi = (bd.staging.gpa + bd.staging.size + TWO_MIB - 1) & !(TWO_MIB - 1);
    (lo, hi.min(bd.ram_below_4g))
}

/// Where the private initrd copy goes: as high as possible below the staging region and
/// the kernel's initrd_addr_max, above everything the kernel uses.
pub fn initrd_addr(bd: &BootData, k: &Kernel) -> Result<u64, &'static str> {
    if bd.initrd.size == 0 {
        return Ok(0);
    }
    let top = staging_reserved(bd).0.min(k.initrd_limit);
    let addr = top
        .checked_sub(bd.initrd.size)
        .ok_or("initrd does not fit in RAM")?
        & !0xFFF;
    if addr < k.end {
        return Err("initrd does not fit between the kernel and the staging region");
    }
    Ok(addr)
}

/// The guest RAM the kernel may use, as (start, end, type) ranges in address order.
pub fn memory_map(bd: &BootData, image_size: u64) -> [(u64, u64, u32); 13] {
    let (slo, shi) = staging_reserved(bd);
    [
        (0, 0x8000, E820_RAM),
        // Descriptor, GHCB, SNP secrets and CPUID pages, hashes table, CC blob.
        (0x8000, 0xE000, E820_RESERVED),
        (0xE000, 0x1C000, E820_RAM),
        // ACPI Multiprocessor Wakeup mailbox (TD guests' parked APs; the MADT names it).
        (0x1C000, 0x1D000, E820_RESERVED),
        (0x1D000, 0x30000, E820_RAM),
        // CC event log (CCEL).
        (0x30000, 0x40000, E820_RESERVED),
        (0x40000, 0xA0000, E820_RAM),
        // ACPI tables: the firmware's private, checked copy (`crate::acpi`).
        (
            crate::acpi::BASE,
            crate::acpi::BASE + crate::acpi::MAX,
            E820_ACPI,
        ),
        (0x100000, slo, E820_RAM),
        // Staging region (shared on SNP).
        (slo, shi, E820_RESERVED),
        (shi, bd.ram_below_4g, E820_RAM),
        (
            MMIO_HOLE.max(0x1_0000_0000 - image_size),
            0x1_0000_0000,
            E820_RESERVED,
        ),
        (0x1_0000_0000, 0x1_0000_0000 + bd.ram_above_4g, E820_RAM),
    ]
}

/// Builds boot_params at 0x7000.
///
/// # Safety
/// The setup copy, boot_params page and CC blob page must be mapped private RAM.
pub unsafe fn build_boot_params(
    setup: &[u8],
    bd: &BootData,
    initrd: u64,
    image_size: u64,
    snp_cc_blob: bool,
) {
    // SAFETY: the zero page is firmware memory, used by nothing else now.
    let bp = unsafe { arch::phys_mut(BOOT_PARAMS, 4096) };
    bp.fill(0);
    // Setup header: from 0x1F1 to 0x202 + the byte at 0x201 (its own length).
    let hdr_end = (0x202 + usize::from(setup[0x201]))
        .min(0x290)
        .min(setup.len());
    bp[0x1F1..hdr_end].copy_from_slice(&setup[0x1F1..hdr_end]);
    bp[0x210] = 0xFF; // type_of_loader: undefined
    bp[0x211] |= 0x01; // loadflags: LOADED_HIGH
    bp[0x214..0x218].copy_from_slice(&(KERNEL_LOAD as u32).to_le_bytes()); // code32_start
    bp[0x218..0x21C].copy_from_slice(&(initrd as u32).to_le_bytes()); // ramdisk_image
    bp[0x21C..0x220].copy_from_slice(&(bd.initrd.size as u32).to_le_bytes()); // ramdisk_size
    bp[0x0C0..0x0C4].copy_from_slice(&((initrd >> 32) as u32).to_le_bytes()); // ext_ramdisk_image
    bp[0x0C4..0x0C8].copy_from_slice(&((bd.initrd.size >> 32) as u32).to_le_bytes());
    bp[0x228..0x22C].copy_from_slice(&(CMDLINE as u32).to_le_bytes()); // cmd_line_ptr
    bp[0x070..0x078].copy_from_slice(&bd.rsdp.to_le_bytes()); // acpi_rsdp_addr
    let mut n = 0;
    for (start, end, kind) in memory_map(bd, image_size) {
        if end <= start {
            continue;
        }
        let e = 0x2D0 + 20 * n;
        bp[e..e + 8].copy_from_slice(&start.to_le_bytes());
        bp[e + 8..e + 16].copy_from_slice(&(end - start).to_le_bytes());
        bp[e + 16..e + 20].copy_from_slice(&kind.to_le_bytes());
        n += 1;
    }
    bp[0x1E8] = n as u8; // e820_entries
    if snp_cc_blob {
        // setup_data (type 7, SETUP_CC_BLOB) -> struct cc_blob_sev_info at +0x100.
        let blob = CC_BLOB_PAGE + 0x100;
        // SAFETY: the CC blob page is firmware memory (SNP_SEC_MEM).
        let p = unsafe { arch::phys_mut(CC_BLOB_PAGE, 4096) };
        p.fill(0);
        p[8..12].copy_from_slice(&7u32.to_le_bytes());
        p[12..16].copy_from_slice(&4u32.to_le_bytes());
        p[16..20].copy_from_slice(&(blob as u32).to_le_bytes());
        let b = &mut p[0x100..0x128];
        b[0..4].copy_from_slice(&0x4544_4d41u32.to_le_bytes()); // "AMDE"
        b[8..16].copy_from_slice(&crate::snp::SECRETS_PAGE.to_le_bytes());
        b[16..20].copy_from_slice(&0x1000u32.to_le_bytes());
        b[24..32].copy_from_slice(&crate::snp::CPUID_PAGE.to_le_bytes());
        b[32..36].copy_from_slice(&0x1000u32.to_le_bytes());
        bp[0x250..0x258].copy_from_slice(&CC_BLOB_PAGE.to_le_bytes()); // hdr.setup_data
        bp[0x13C..0x140].copy_from_slice(&(blob as u32).to_le_bytes()); // cc_blob_address
    }
}

/// Enters the kernel's 64-bit entry point.
///
/// # Safety
/// The kernel, boot_params and command line must be in place.
pub unsafe fn enter_kernel() -> ! {
    // SAFETY: upheld by the caller; CS is 0x10 (64-bit), DS/ES/SS 0x18, the identity
    // map of 0-4 GiB is live, interrupts are off.
    unsafe {
        core::arch::asm!(
            "cli",
            "xor ebp, ebp",
            "xor edi, edi",
            "xor ebx, ebx",
            "jmp rax",
            in("rax") KERNEL_LOAD + 0x200,
            in("rsi") BOOT_PARAMS,
            options(noreturn)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::Blob;

    fn header() -> std::vec::Vec<u8> {
        let mut s = std::vec![0u8; 1024];
        s[0x1F1] = 1;
        s[0x202..0x206].copy_from_slice(b"HdrS");
        s[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
        s[0x22C..0x230].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        s[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
        s[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        s[0x260..0x264].copy_from_slice(&0x80_0000u32.to_le_bytes());
        s
    }

    fn boot_data() -> BootData {
        BootData {
            kernel: Blob {
                gpa: 0x1FE0_0000,
                size: 0x10_0000,
            },
            initrd: Blob {
                gpa: 0x1FF0_0000,
                size: 0x8_0000,
            },
            cmdline: Blob {
                gpa: 0x1FF8_0000,
                size: 16,
            },
            ram_below_4g: 0x2000_0000,
            ram_above_4g: 0x4000_0000,
            rsdp: 0xE0000,
            staging: Blob {
                gpa: 0x1FE0_0000,
                size: 0x20_0000,
            },
            acpi: Blob {
                gpa: 0x1FFE_0000,
                size: 0x1000,
            },
        }
    }

    #[test]
    fn accepts_only_64_bit_bzimages_of_protocol_2_12_or_later() {
        let k = parse(&header(), 0x10_0000).unwrap();
        assert_eq!((k.setup_len, k.pm_len), (1024, 0x10_0000 - 1024));
        // The relocated kernel (pref_address + init_size) bounds the area.
        assert_eq!(k.end, 0x180_0000);
        for (off, v) in [(0x202usize, 0u8), (0x207, 0x01), (0x236, 0), (0x1F1, 2)] {
            let mut h = header();
            h[off] = v;
            assert!(parse(&h, 0x10_0000).is_err(), "byte {off:#x} = {v:#x}");
        }
        assert!(parse(&header(), 1024).is_err(), "no protected-mode part");
        assert!(parse(&header()[..512], 0x10_0000).is_err());
    }

    #[test]
    fn initrd_goes_high_below_staging_and_above_the_kernel() {
        let bd = boot_data();
        let k = parse(&header(), bd.kernel.size).unwrap();
        assert_eq!(staging_reserved(&bd), (0x1FE0_0000, 0x2000_0000));
        assert_eq!(initrd_addr(&bd, &k).unwrap(), 0x1FE0_0000 - 0x8_0000);
        let mut low = header();
        low[0x22C..0x230].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes()); // initrd_addr_max
        let k = parse(&low, bd.kernel.size).unwrap();
        assert_eq!(initrd_addr(&bd, &k).unwrap(), 0x1000_0000 - 0x8_0000);
        let mut huge = boot_data();
        huge.initrd.size = 0x1F00_0000;
        assert!(initrd_addr(&huge, &k).is_err());
    }

    #[test]
    fn memory_map_is_ordered_and_disjoint() {
        let map = memory_map(&boot_data(), 0x10000);
        // The AP wakeup mailbox is never RAM for the kernel.
        assert!(map.contains(&(0x1C000, 0x1D000, E820_RESERVED)));
        assert!(!map
            .iter()
            .any(|&(s, e, k)| k == E820_RAM && s < 0x1D000 && e > 0x1C000));
        let mut last = 0;
        for (start, end, _) in map.iter().filter(|(s, e, _)| e > s) {
            assert!(*start >= last, "{start:#x} overlaps");
            last = *end;
        }
        assert_eq!(last, 0x1_4000_0000);
        // The tables' private copy is ACPI memory (type 3), not reserved.
        assert!(map.contains(&(0xE0000, 0x100000, E820_ACPI)));
        // The staging region and the firmware are not RAM.
        assert!(map
            .iter()
            .any(|&(s, e, t)| (s, e, t) == (0x1FE0_0000, 0x2000_0000, 2)));
        assert!(map
            .iter()
            .any(|&(s, e, t)| (s, e, t) == (0xFFFF_0000, 0x1_0000_0000, 2)));
    }

    #[test]
    fn the_plain_handoff_word_is_matched_as_a_whole_word() {
        let w = EMULATED_PLAIN_HANDOFF;
        assert!(cmdline_has(
            b"console=ttyS0 cvm.emulated_handoff=plain\0junk",
            w
        ));
        assert!(!cmdline_has(
            b"console=ttyS0 xcvm.emulated_handoff=plain\0",
            w
        ));
        assert!(!cmdline_has(b"cvm.emulated_handoff=plainer\0", w));
        assert!(
            !cmdline_has(b"console=ttyS0\0 cvm.emulated_handoff=plain", w),
            "after the NUL"
        );
    }
}
