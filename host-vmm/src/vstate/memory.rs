//! Guest physical memory layout and its registration with KVM.
//!
//! ```text
//!   0 ──────────── low RAM (up to 3 GiB) ────────────┐
//!   3 GiB ─────── MMIO hole (devices) ───────────────┤
//!   4 GiB - fw ── firmware image (ends at 4 GiB) ────┤
//!   4 GiB ─────── high RAM (the rest of --memory) ───┘
//! ```

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Start of the MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 3 << 30;
/// 4 GiB.
pub const FOUR_GIB: u64 = 1 << 32;
/// Smallest guest memory accepted.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest memory accepted.
pub const MAX_MEMORY: u64 = 1 << 40;

/// Errors building guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is unusable.
    #[error("guest memory size {0:#x} must be a multiple of 2 MiB between 16 MiB and 1 TiB")]
    BadSize(u64),
    /// The firmware image is unusable.
    #[error("firmware of {0:#x} bytes must be a non-zero multiple of 4 KiB no larger than 16 MiB")]
    BadFirmware(usize),
    /// mmap of guest memory failed.
    #[error("cannot allocate guest memory")]
    Allocate(#[source] vm_memory::mmap::FromRangesError),
    /// Writing the firmware into guest memory failed.
    #[error("cannot copy the firmware into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
    /// KVM refused a memory slot.
    #[error("KVM refused memory slot {slot} at {gpa:#x}")]
    Register {
        /// Slot number.
        slot: u32,
        /// Guest physical address.
        gpa: u64,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The ranges of guest RAM and firmware for a guest of `mem_size` bytes.
pub fn layout(mem_size: u64, fw_size: usize) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&mem_size) || mem_size % (2 << 20) != 0 {
        return Err(MemoryError::BadSize(mem_size));
    }
    if fw_size == 0 || fw_size % 4096 != 0 || fw_size > 16 << 20 {
        return Err(MemoryError::BadFirmware(fw_size));
    }
    let low = mem_size.min(MMIO_HOLE_START);
    let mut ranges = vec![
        (GuestAddress(0), low as usize),
        (GuestAddress(FOUR_GIB - fw_size as u64), fw_size),
    ];
    if mem_size > low {
        ranges.push((GuestAddress(FOUR_GIB), (mem_size - low) as usize));
    }
    Ok(ranges)
}

/// Allocates guest memory for `mem_size` bytes of RAM plus the firmware, and copies the
/// firmware so that it ends at 4 GiB.
pub fn create(mem_size: u64, firmware: &[u8]) -> Result<GuestMemoryMmap, MemoryError> {
    use vm_memory::Bytes;
    let ranges = layout(mem_size, firmware.len())?;
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(MemoryError::Allocate)?;
    mem.write_slice(firmware, GuestAddress(FOUR_GIB - firmware.len() as u64))
        .map_err(MemoryError::Write)?;
    Ok(mem)
}

/// Registers every region of `mem` with KVM as a memory slot.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let gpa = region.start_addr().raw_value();
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: `userspace_addr` and `memory_size` describe a live mmap owned by `mem`.
        // The VMM keeps `mem` alive for as long as the VM fd exists (the `Vm` struct
        // declares its fd before its memory, so the fd is closed first on drop), and the
        // slots do not overlap because they come from non-overlapping GuestMemoryMmap
        // regions.
        unsafe { vm.set_user_memory_region(r) }.map_err(|source| MemoryError::Register {
            slot,
            gpa,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_splits_around_the_hole() {
        let r = layout(512 << 20, 0x10000).unwrap();
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), 512 << 20),
                (GuestAddress(FOUR_GIB - 0x10000), 0x10000)
            ]
        );
        let r = layout(4 << 30, 0x1000).unwrap();
        assert_eq!(r[0], (GuestAddress(0), 3 << 30));
        assert_eq!(r[2], (GuestAddress(FOUR_GIB), 1 << 30));
        assert!(matches!(
            layout(1 << 20, 0x1000),
            Err(MemoryError::BadSize(_))
        ));
        assert!(matches!(
            layout((512 << 20) + 4096, 0x1000),
            Err(MemoryError::BadSize(_))
        ));
        assert!(matches!(
            layout(512 << 20, 100),
            Err(MemoryError::BadFirmware(100))
        ));
    }

    #[test]
    fn firmware_ends_at_4gib() {
        use vm_memory::Bytes;
        let fw: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let mem = create(16 << 20, &fw).unwrap();
        let mut last = [0u8; 16];
        mem.read_slice(&mut last, GuestAddress(FOUR_GIB - 16))
            .unwrap();
        assert_eq!(&last[..], &fw[8192 - 16..]);
    }
}
