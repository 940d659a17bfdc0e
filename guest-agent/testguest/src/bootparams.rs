//! What the test guest reads from the Linux `boot_params` (zero page) the firmware
//! built: the command line and the e820 map. Host-influenced data: bounded reads only.

use alloc::string::String;

/// Usable RAM range `[start, end)` from the e820 map that contains `at`, if any.
pub fn ram_range_containing(boot_params: usize, at: u64) -> Option<(u64, u64)> {
    // SAFETY: boot_params is the firmware's 4 KiB zero page (identity-mapped RAM); we
    // read inside it only (e820_entries at 0x1E8, at most 128 entries of 20 bytes at
    // 0x2D0, ending at 0xCD0).
    let count = unsafe { core::ptr::read_volatile((boot_params + 0x1E8) as *const u8) };
    for i in 0..usize::from(count).min(128) {
        let e = boot_params + 0x2D0 + 20 * i;
        // SAFETY: as above; unaligned reads of the packed entry.
        let (addr, size, kind) = unsafe {
            (
                core::ptr::read_unaligned(e as *const u64),
                core::ptr::read_unaligned((e + 8) as *const u64),
                core::ptr::read_unaligned((e + 16) as *const u32),
            )
        };
        let end = addr.saturating_add(size);
        if kind == 1 && addr <= at && at < end {
            return Some((addr, end));
        }
    }
    None
}

/// The kernel command line (at most 64 KiB, up to its NUL).
pub fn cmdline(boot_params: usize) -> String {
    // SAFETY: reads cmd_line_ptr (0x228) and ext_cmd_line_ptr (0x0C8) of the zero page.
    let ptr = unsafe {
        u64::from(core::ptr::read_volatile(
            (boot_params + 0x228) as *const u32,
        )) | u64::from(core::ptr::read_volatile(
            (boot_params + 0x0C8) as *const u32,
        )) << 32
    };
    let mut out = String::new();
    if ptr == 0 || ptr >= 0xC000_0000 {
        return out;
    }
    for i in 0..(64 << 10) {
        // SAFETY: the firmware's private command line copy (0x20000, 64 KiB, NUL
        // terminated) in identity-mapped RAM below the MMIO hole; bounded by 64 KiB.
        let b = unsafe { core::ptr::read_volatile((ptr + i) as *const u8) };
        if b == 0 {
            break;
        }
        out.push(if b.is_ascii() { b as char } else { '?' });
    }
    out
}
