//! Private guest memory for SEV-SNP and TDX guests (the guest_memfd interface of
//! Linux >= 6.8, used by SNP since 6.11 and TDX since 6.16).
//!
//! Every guest memory region gets two backings:
//! - the anonymous mmap that `GuestMemoryMmap` owns: the *shared* view, which devices
//!   read and write and which the host can see;
//! - a guest_memfd of the same size (`KVM_CREATE_GUEST_MEMFD`): the *private* view,
//!   which the CPU encrypts with the guest's key and which the host cannot map.
//!
//! `KVM_SET_USER_MEMORY_REGION2` with `KVM_MEM_GUEST_MEMFD` ties both to one memslot,
//! and the per-page `KVM_MEMORY_ATTRIBUTE_PRIVATE` attribute (`KVM_SET_MEMORY_ATTRIBUTES`)
//! decides which one the guest uses. All memory starts private, so that every page the
//! launch measures is encrypted.
//!
//! At run time the guest converts ranges: it asks to share one (SNP page-state change,
//! TDX `MapGPA`; KVM forwards both as a `KVM_HC_MAP_GPA_RANGE` hypercall exit) or it
//! touches a page whose attribute disagrees with how the guest maps it
//! (`KVM_EXIT_MEMORY_FAULT`). [`PrivateMemory::convert`] flips the attribute and then
//! discards the backing that is no longer in use, as QEMU does:
//! - becoming shared: the guest_memfd pages are punched out (`fallocate(PUNCH_HOLE)`),
//!   so no private page lingers behind a shared one;
//! - becoming private: the shared pages are dropped (`madvise(MADV_DONTNEED)`), so
//!   the host keeps no copy of what the guest once shared there.
//!
//! A conversion outside guest memory, unaligned, or empty is refused without touching
//! anything. The operations go through [`PrivateOps`], so the range logic is tested
//! here with a fake that enforces the kernel's checks (`tee::fake::private`:
//! `kvm_vm_ioctl_set_mem_attributes`, `kvm_gmem_fallocate`); the kernel side cannot run
//! on a host without SNP or TDX.
//!
//! `KVM_HC_MAP_GPA_RANGE` ([`PrivateMemory::map_gpa_range`]): the page-size bits are a
//! hint KVM passes through (SNP 2M page-state changes arrive with `PAGE_SZ_2M`,
//! `args[1]` still in 4 KiB pages) and are accepted; a failure is a negative errno.
//! On TDX, KVM splits a MapGPA into <= 2 MiB exits and answers RETRY itself when an
//! interrupt is pending; the VMM only answers each chunk.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use kvm_bindings::{
    kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2,
    KVM_MEM_GUEST_MEMFD,
};
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
pub const KVM_MEMORY_ATTRIBUTE_PRIVATE: u64 = 1 << 3;
/// `KVM_MEMORY_EXIT_FLAG_PRIVATE`: the faulting access was a private one.
pub const KVM_MEMORY_EXIT_FLAG_PRIVATE: u64 = 1 << 3;
/// `KVM_HC_MAP_GPA_RANGE`: the guest converts a range (args: gpa, pages, attributes).
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;
/// `KVM_MAP_GPA_RANGE_ENCRYPTED`: the range becomes private.
pub const KVM_MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;
/// `KVM_MAP_GPA_RANGE_PAGE_SZ_MASK`: the page-size bits of the attributes.
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_MASK: u64 = 0x3;
/// `KVM_MAP_GPA_RANGE_PAGE_SZ_4K`.
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_4K: u64 = 0;
/// `KVM_MAP_GPA_RANGE_PAGE_SZ_2M`.
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_2M: u64 = 1;
/// `KVM_MAP_GPA_RANGE_PAGE_SZ_1G`.
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_1G: u64 = 2;

/// The `hypercall.ret` for a failed `KVM_HC_MAP_GPA_RANGE`: a NEGATIVE errno, as
/// KVM's own hypercalls return `-KVM_EINVAL` & co. (include/uapi/linux/kvm_para.h;
/// arch/x86/kvm/x86.c `complete_hypercall_exit` puts `ret` in RAX for a plain
/// guest). For SNP and TDX guests KVM only tests it for non-zero
/// (sev.c `snp_complete_psc_msr`/`snp_complete_one_psc`, tdx.c
/// `tdx_complete_vmcall_map_gpa` -> TDVMCALL_STATUS_INVALID_OPERAND).
pub fn hypercall_error(errno: i32) -> u64 {
    (-i64::from(errno.abs())) as u64
}

const PAGE: u64 = 4096;

/// Why a conversion or the set-up of private memory failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivateMemoryError {
    /// The range is empty, unaligned or overflows.
    #[error("conversion of {gpa:#x}+{size:#x}: not a non-empty range of whole 4 KiB pages")]
    Unaligned {
        /// Guest physical address.
        gpa: u64,
        /// Size in bytes.
        size: u64,
    },
    /// Part of the range is not guest memory.
    #[error("conversion of {gpa:#x}+{size:#x}: {hole:#x} is not guest memory")]
    OutsideMemory {
        /// Guest physical address.
        gpa: u64,
        /// Size in bytes.
        size: u64,
        /// The first address of the range that no region backs.
        hole: u64,
    },
    /// A kernel operation failed.
    #[error("{op} on {gpa:#x}+{size:#x} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The operation.
        op: &'static str,
        /// Guest physical address.
        gpa: u64,
        /// Size in bytes.
        size: u64,
        /// errno.
        errno: i32,
    },
}

impl PrivateMemoryError {
    /// The errno to report to the guest for a refused conversion request.
    pub fn errno(&self) -> i32 {
        match self {
            PrivateMemoryError::Kernel { errno, .. } => *errno,
            _ => libc::EINVAL,
        }
    }
}

/// The kernel operations a conversion needs.
pub trait PrivateOps {
    /// `KVM_SET_MEMORY_ATTRIBUTES` on `gpa..gpa+size`.
    fn set_attributes(&self, gpa: u64, size: u64, attributes: u64) -> Result<(), i32>;
    /// Frees `size` bytes at `offset` of the guest_memfd `fd`.
    fn punch_private(&self, fd: RawFd, offset: u64, size: u64) -> Result<(), i32>;
    /// Drops the shared pages at host address `host`.
    fn discard_shared(&self, host: u64, size: u64) -> Result<(), i32>;
}

/// One memslot with its private backing.
#[derive(Debug)]
pub struct PrivateSlot {
    /// Guest physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host address of the shared view.
    pub host: u64,
    /// The guest_memfd (offset 0 maps `gpa`).
    pub gmem: OwnedFd,
}

/// The private backings of a confidential VM's memory.
#[derive(Debug)]
pub struct PrivateMemory {
    slots: Vec<PrivateSlot>,
}

impl PrivateMemory {
    /// Private memory over `slots` (no kernel calls; see [`PrivateMemory::attach`]).
    pub fn from_slots(mut slots: Vec<PrivateSlot>) -> Self {
        slots.sort_by_key(|s| s.gpa);
        Self { slots }
    }

    /// Creates a guest_memfd per region of `mem`, registers each region as a
    /// guest_memfd-backed memslot, and marks all of it private.
    pub fn attach(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<Self, PrivateMemoryError> {
        let mut slots = Vec::new();
        for (slot, region) in mem.iter().enumerate() {
            let gpa = region.start_addr().raw_value();
            let size = region.len();
            let kernel = |op, errno| PrivateMemoryError::Kernel {
                op,
                gpa,
                size,
                errno,
            };
            let fd = vm
                .create_guest_memfd(kvm_create_guest_memfd {
                    size,
                    flags: 0,
                    reserved: [0; 6],
                })
                .map_err(|e| kernel("KVM_CREATE_GUEST_MEMFD", e.errno()))?;
            // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd that nothing else owns.
            let gmem = unsafe { OwnedFd::from_raw_fd(fd) };
            let host = region.as_ptr() as u64;
            let r = kvm_userspace_memory_region2 {
                slot: slot as u32,
                flags: KVM_MEM_GUEST_MEMFD,
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: host,
                guest_memfd_offset: 0,
                guest_memfd: gmem.as_raw_fd() as u32,
                ..Default::default()
            };
            // SAFETY: `userspace_addr`/`memory_size` describe a live mmap owned by `mem`,
            // which the `Vm` keeps alive longer than the VM fd (see `Vm`'s field
            // order); the guest_memfd is at least `size` bytes; slots come from
            // non-overlapping regions.
            unsafe { vm.set_user_memory_region2(r) }
                .map_err(|e| kernel("KVM_SET_USER_MEMORY_REGION2", e.errno()))?;
            slots.push(PrivateSlot {
                gpa,
                size,
                host,
                gmem,
            });
        }
        let private = Self::from_slots(slots);
        let ops = KvmPrivateOps { vm };
        for s in &private.slots {
            ops.set_attributes(s.gpa, s.size, KVM_MEMORY_ATTRIBUTE_PRIVATE)
                .map_err(|errno| PrivateMemoryError::Kernel {
                    op: "KVM_SET_MEMORY_ATTRIBUTES",
                    gpa: s.gpa,
                    size: s.size,
                    errno,
                })?;
        }
        Ok(private)
    }

    /// The slots.
    pub fn slots(&self) -> &[PrivateSlot] {
        &self.slots
    }

    /// Converts `gpa..gpa+size` to private (`to_private`) or shared, and discards the
    /// backing no longer in use. The range may span adjacent regions but must be
    /// wholly guest memory.
    pub fn convert(
        &self,
        ops: &impl PrivateOps,
        gpa: u64,
        size: u64,
        to_private: bool,
    ) -> Result<(), PrivateMemoryError> {
        let end = gpa
            .checked_add(size)
            .filter(|_| size > 0 && gpa % PAGE == 0 && size % PAGE == 0)
            .ok_or(PrivateMemoryError::Unaligned { gpa, size })?;
        // Check coverage before changing anything.
        let mut pieces = Vec::new();
        let mut at = gpa;
        while at < end {
            let slot = self
                .slots
                .iter()
                .find(|s| s.gpa <= at && at < s.gpa + s.size)
                .ok_or(PrivateMemoryError::OutsideMemory {
                    gpa,
                    size,
                    hole: at,
                })?;
            let piece_end = end.min(slot.gpa + slot.size);
            pieces.push((slot, at, piece_end - at));
            at = piece_end;
        }
        let kernel = |op, errno| PrivateMemoryError::Kernel {
            op,
            gpa,
            size,
            errno,
        };
        let attributes = if to_private {
            KVM_MEMORY_ATTRIBUTE_PRIVATE
        } else {
            0
        };
        ops.set_attributes(gpa, size, attributes)
            .map_err(|e| kernel("KVM_SET_MEMORY_ATTRIBUTES", e))?;
        for (slot, at, len) in pieces {
            let offset = at - slot.gpa;
            if to_private {
                ops.discard_shared(slot.host + offset, len)
                    .map_err(|e| kernel("madvise(MADV_DONTNEED)", e))?;
            } else {
                ops.punch_private(slot.gmem.as_raw_fd(), offset, len)
                    .map_err(|e| kernel("fallocate(PUNCH_HOLE) on guest_memfd", e))?;
            }
        }
        Ok(())
    }

    /// Handles a `KVM_HC_MAP_GPA_RANGE` request (`args[0]` = GPA, `args[1]` = number
    /// of 4 KiB pages, `args[2]` = attributes). Returns the value for the hypercall's
    /// `ret`: 0, or a NEGATIVE errno ([`hypercall_error`]).
    ///
    /// The attributes' page-size bits (`KVM_MAP_GPA_RANGE_PAGE_SZ_4K/2M/1G`) are a
    /// hint KVM passes through: SEV-SNP page-state changes of 2M entries arrive with
    /// `PAGE_SZ_2M` and `args[1]` = 512 (arch/x86/kvm/svm/sev.c `snp_begin_psc`).
    /// The conversion is the same; only undefined bits are refused.
    pub fn map_gpa_range(&self, ops: &impl PrivateOps, args: &[u64; 6]) -> u64 {
        let (gpa, pages, attrs) = (args[0], args[1], args[2]);
        if attrs & !(KVM_MAP_GPA_RANGE_PAGE_SZ_MASK | KVM_MAP_GPA_RANGE_ENCRYPTED) != 0
            || attrs & KVM_MAP_GPA_RANGE_PAGE_SZ_MASK == KVM_MAP_GPA_RANGE_PAGE_SZ_MASK
        {
            return hypercall_error(libc::EINVAL);
        }
        let Some(size) = pages.checked_mul(PAGE) else {
            return hypercall_error(libc::EINVAL);
        };
        match self.convert(ops, gpa, size, attrs & KVM_MAP_GPA_RANGE_ENCRYPTED != 0) {
            Ok(()) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "guest conversion request refused");
                hypercall_error(e.errno())
            }
        }
    }
}

/// [`PrivateOps`] on a real VM.
#[derive(Debug)]
pub struct KvmPrivateOps<'a> {
    /// The VM.
    pub vm: &'a VmFd,
}

impl PrivateOps for KvmPrivateOps<'_> {
    fn set_attributes(&self, gpa: u64, size: u64, attributes: u64) -> Result<(), i32> {
        self.vm
            .set_memory_attributes(kvm_memory_attributes {
                address: gpa,
                size,
                attributes,
                flags: 0,
            })
            .map_err(|e| e.errno())
    }

    fn punch_private(&self, fd: RawFd, offset: u64, size: u64) -> Result<(), i32> {
        let (off, len) = (
            libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?,
            libc::off_t::try_from(size).map_err(|_| libc::EINVAL)?,
        );
        // SAFETY: fallocate on a file descriptor we own, with integer arguments only.
        let r = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(vmm_sys_util::errno::Error::last().errno())
        }
    }

    fn discard_shared(&self, host: u64, size: u64) -> Result<(), i32> {
        // SAFETY: `host..host+size` lies inside a guest memory mapping the VMM owns (the
        // caller derived it from a slot); MADV_DONTNEED on anonymous memory only
        // replaces its contents with zero pages, which is what a range that became
        // private must look like from the host side.
        let r = unsafe {
            libc::madvise(
                host as *mut libc::c_void,
                size as usize,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(vmm_sys_util::errno::Error::last().errno())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tee::fake::private::{FakePrivateOps as Rec, Op};

    fn memfd() -> OwnedFd {
        let f = tempfile::tempfile().unwrap();
        OwnedFd::from(f)
    }

    /// Low RAM 0..16 MiB, firmware just below 4 GiB, high RAM from 4 GiB: the layout
    /// `vstate::memory::layout` produces.
    fn mem() -> PrivateMemory {
        PrivateMemory::from_slots(vec![
            PrivateSlot {
                gpa: 0x1_0000_0000,
                size: 0x20_0000,
                host: 0x7f00_0000_0000,
                gmem: memfd(),
            },
            PrivateSlot {
                gpa: 0,
                size: 0x100_0000,
                host: 0x7e00_0000_0000,
                gmem: memfd(),
            },
            PrivateSlot {
                gpa: 0xFFFF_0000,
                size: 0x1_0000,
                host: 0x7d00_0000_0000,
                gmem: memfd(),
            },
        ])
    }

    #[test]
    fn sharing_punches_the_private_pages_and_privatising_drops_the_shared_ones() {
        let m = mem();
        let low = m.slots()[0].gmem.as_raw_fd();
        let r = Rec::default();
        m.convert(&r, 0x20_0000, 0x3000, false).unwrap();
        m.convert(&r, 0x20_0000, 0x1000, true).unwrap();
        assert_eq!(
            *r.ops.borrow(),
            vec![
                Op::Attr(0x20_0000, 0x3000, 0),
                Op::Punch(low, 0x20_0000, 0x3000),
                Op::Attr(0x20_0000, 0x1000, KVM_MEMORY_ATTRIBUTE_PRIVATE),
                Op::Discard(0x7e00_0000_0000 + 0x20_0000, 0x1000),
            ]
        );
    }

    #[test]
    fn a_range_across_adjacent_regions_is_split_per_backing() {
        let m = mem();
        let (fw, high) = (m.slots()[1].gmem.as_raw_fd(), m.slots()[2].gmem.as_raw_fd());
        let r = Rec::default();
        m.convert(&r, 0xFFFF_F000, 0x2000, false).unwrap();
        assert_eq!(
            *r.ops.borrow(),
            vec![
                Op::Attr(0xFFFF_F000, 0x2000, 0),
                Op::Punch(fw, 0xF000, 0x1000),
                Op::Punch(high, 0, 0x1000),
            ]
        );
    }

    #[test]
    fn bad_ranges_are_refused_before_any_kernel_call() {
        let m = mem();
        let r = Rec::default();
        for (gpa, size) in [
            (0x1001, 0x1000),
            (0x1000, 0x800),
            (0x1000, 0),
            (!0xfff, 0x2000),
        ] {
            assert!(matches!(
                m.convert(&r, gpa, size, false),
                Err(PrivateMemoryError::Unaligned { .. })
            ));
        }
        // Runs off the end of low RAM into the MMIO hole.
        assert_eq!(
            m.convert(&r, 0xFF_F000, 0x2000, true),
            Err(PrivateMemoryError::OutsideMemory {
                gpa: 0xFF_F000,
                size: 0x2000,
                hole: 0x100_0000
            })
        );
        // Device MMIO, not memory.
        assert!(m.convert(&r, 0xFEC0_0000, 0x1000, false).is_err());
        assert!(r.ops.borrow().is_empty(), "{:?}", r.ops.borrow());
    }

    #[test]
    fn map_gpa_range_hypercall_results() {
        let m = mem();
        let r = Rec::default();
        assert_eq!(m.map_gpa_range(&r, &[0x1000, 2, 0, 0, 0, 0]), 0);
        assert_eq!(
            m.map_gpa_range(&r, &[0x1000, 2, KVM_MAP_GPA_RANGE_ENCRYPTED, 0, 0, 0]),
            0
        );
        assert_eq!(
            r.ops.borrow()[2],
            Op::Attr(0x1000, 0x2000, KVM_MEMORY_ATTRIBUTE_PRIVATE)
        );
        // Outside memory; page-count overflow.
        assert_eq!(
            m.map_gpa_range(&r, &[0x8000_0000, 1, 0, 0, 0, 0]),
            hypercall_error(libc::EINVAL)
        );
        assert_eq!(
            m.map_gpa_range(&r, &[0, u64::MAX, 0, 0, 0, 0]),
            hypercall_error(libc::EINVAL)
        );
        // Undefined attribute bits and page-size value 3.
        assert_eq!(
            m.map_gpa_range(&r, &[0, 1, 1 << 5, 0, 0, 0]),
            hypercall_error(libc::EINVAL)
        );
        assert_eq!(
            m.map_gpa_range(&r, &[0, 1, 3, 0, 0, 0]),
            hypercall_error(libc::EINVAL)
        );
        // The errno is negative, as KVM's hypercall convention has it.
        assert_eq!(hypercall_error(libc::EINVAL) as i64, -22);
        let failing = Rec {
            fail_attr: Some(libc::EAGAIN),
            ..Default::default()
        };
        assert_eq!(
            m.map_gpa_range(&failing, &[0x1000, 1, 0, 0, 0, 0]),
            hypercall_error(libc::EAGAIN)
        );
    }

    /// Bug 5 (issue 13): KVM's SEV page-state-change path (arch/x86/kvm/svm/sev.c
    /// snp_begin_psc) sets KVM_MAP_GPA_RANGE_PAGE_SZ_2M for a 2M entry, with
    /// `args[1]` still counting 4 KiB pages; the VMM must convert, not refuse.
    #[test]
    fn map_gpa_range_accepts_page_size_hints() {
        let m = mem();
        let r = Rec::default();
        // 2M entry: 512 4 KiB pages at a 2 MiB boundary, made private.
        assert_eq!(
            m.map_gpa_range(
                &r,
                &[
                    0x20_0000,
                    512,
                    KVM_MAP_GPA_RANGE_ENCRYPTED | KVM_MAP_GPA_RANGE_PAGE_SZ_2M,
                    0,
                    0,
                    0
                ]
            ),
            0
        );
        // 1G hint (bits 1:0 = 2) on a shared conversion.
        assert_eq!(
            m.map_gpa_range(&r, &[0x40_0000, 2, KVM_MAP_GPA_RANGE_PAGE_SZ_1G, 0, 0, 0]),
            0
        );
        assert_eq!(
            r.ops.borrow()[0],
            Op::Attr(0x20_0000, 0x20_0000, KVM_MEMORY_ATTRIBUTE_PRIVATE)
        );
        assert_eq!(r.ops.borrow()[2], Op::Attr(0x40_0000, 0x2000, 0));
    }

    use crate::tee::fake::tdx::MapGpaVm;

    /// tdx.c tdx_map_gpa checks the GPAs with `kvm_vcpu_is_legal_gpa`, i.e. against
    /// the guest's MAXPHYADDR (vCPU CPUID.0x80000008:EAX[7:0]), not GPAW: a private
    /// GPA below the shared bit but beyond MAXPHYADDR is INVALID_OPERAND, before
    /// any exit to the VMM.
    #[test]
    fn tdx_map_gpa_legality_is_the_guest_maxphyaddr() {
        use crate::tee::fake::tdx::kvm_tdx_map_gpa;
        use crate::tee::services::TDVMCALL_INVALID_OPERAND;
        let vm = MapGpaVm {
            gpaw: 48,
            maxphyaddr: 39,
            exit_on_map_gpa: true,
        };
        let mut exits = 0;
        let res = kvm_tdx_map_gpa(1 << 40, 0x1000, vm, None, |_| {
            exits += 1;
            0
        });
        assert_eq!(
            (res.status, res.r11, exits),
            (TDVMCALL_INVALID_OPERAND, 1 << 40, 0)
        );
        // Below MAXPHYADDR it reaches the VMM.
        let res = kvm_tdx_map_gpa(1 << 38, 0x1000, vm, None, |_| 0);
        assert_eq!(res.exits, 1);
    }

    /// tdx.c tdx_map_gpa: without KVM_CAP_EXIT_HYPERCALL for KVM_HC_MAP_GPA_RANGE
    /// (`user_exit_on_hypercall`) the TD gets SUBFUNC_UNSUPPORTED, and the VMM no exit.
    #[test]
    fn tdx_map_gpa_without_the_hypercall_exit_is_unsupported() {
        use crate::tee::fake::tdx::kvm_tdx_map_gpa;
        use crate::tee::services::TDVMCALL_SUBFUNC_UNSUPPORTED;
        let vm = MapGpaVm {
            gpaw: 48,
            maxphyaddr: 52,
            exit_on_map_gpa: false,
        };
        let res = kvm_tdx_map_gpa(0x20_0000, 0x20_0000, vm, None, |_| 0);
        assert_eq!(
            (res.status, res.r11, res.exits),
            (TDVMCALL_SUBFUNC_UNSUPPORTED, 0x20_0000, 0)
        );
    }

    /// MapGPA on real KVM (settles issue 13's "TDVMCALL_STATUS_RETRY" item): KVM
    /// splits the TD's request into <= 2 MiB KVM_HC_MAP_GPA_RANGE exits; the VMM
    /// answers each with 0 or an error, and RETRY is KVM's own answer when an
    /// interrupt is pending between chunks; the VMM never returns it.
    #[test]
    fn tdx_map_gpa_under_kvm_chunking() {
        use crate::tee::fake::tdx::kvm_tdx_map_gpa;
        use crate::tee::services::{TDVMCALL_INVALID_OPERAND, TDVMCALL_RETRY, TDVMCALL_SUCCESS};
        const TD: MapGpaVm = MapGpaVm {
            gpaw: 48,
            maxphyaddr: 52,
            exit_on_map_gpa: true,
        };
        let m = mem();
        let shared = 1u64 << 47;
        // 5 MiB made shared: three exits, the shared bit stripped, 4 KiB page counts.
        let r = Rec::default();
        let res = kvm_tdx_map_gpa(shared | 0x20_0000, 0x50_0000, TD, None, |a| {
            m.map_gpa_range(&r, a)
        });
        assert_eq!((res.status, res.exits), (TDVMCALL_SUCCESS, 3));
        let attrs: Vec<_> = r
            .ops
            .borrow()
            .iter()
            .filter_map(|o| match o {
                Op::Attr(g, s, a) => Some((*g, *s, *a)),
                _ => None,
            })
            .collect();
        assert_eq!(
            attrs,
            [
                (0x20_0000, 0x20_0000, 0),
                (0x40_0000, 0x20_0000, 0),
                (0x60_0000, 0x10_0000, 0)
            ]
        );
        // An interrupt after the first chunk: RETRY from the next one; the guest
        // resumes at R11 and finishes (back to private this time).
        let r = Rec::default();
        let res = kvm_tdx_map_gpa(0x20_0000, 0x40_0000, TD, Some(1), |a| {
            m.map_gpa_range(&r, a)
        });
        assert_eq!((res.status, res.r11), (TDVMCALL_RETRY, 0x40_0000));
        let res = kvm_tdx_map_gpa(res.r11, 0x60_0000 - res.r11, TD, None, |a| {
            m.map_gpa_range(&r, a)
        });
        assert_eq!(res.status, TDVMCALL_SUCCESS);
        assert_eq!(
            r.ops
                .borrow()
                .iter()
                .filter(|o| matches!(o, Op::Attr(_, _, KVM_MEMORY_ATTRIBUTE_PRIVATE)))
                .count(),
            2
        );
        // A chunk the VMM refuses (it runs off the end of low RAM): INVALID_OPERAND
        // with R11 at that chunk; what came before stays converted.
        let r = Rec::default();
        let res = kvm_tdx_map_gpa(shared | 0xC0_0000, 0x60_0000, TD, None, |a| {
            m.map_gpa_range(&r, a)
        });
        assert_eq!(
            (res.status, res.r11, res.exits),
            (TDVMCALL_INVALID_OPERAND, shared | 0x100_0000, 3)
        );
    }
}

#[cfg(test)]
mod kvm_tests {
    use super::*;

    /// On this host's KVM, a default-type VM can create a guest_memfd but (lacking
    /// private-memory VM types) not register it; where it can, the punch-hole path runs
    /// for real.
    #[test]
    fn guest_memfd_punch_on_this_host() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("NOT CHECKED: no /dev/kvm");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let fd = match vm.create_guest_memfd(kvm_create_guest_memfd {
            size: 0x10000,
            flags: 0,
            reserved: [0; 6],
        }) {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("NOT CHECKED: KVM_CREATE_GUEST_MEMFD on a default VM: {e}");
                return;
            }
        };
        // SAFETY: a new fd nothing else owns.
        let gmem = unsafe { OwnedFd::from_raw_fd(fd) };
        let ops = KvmPrivateOps { vm: &vm };
        ops.punch_private(gmem.as_raw_fd(), 0x1000, 0x2000).unwrap();
        assert_eq!(
            ops.punch_private(gmem.as_raw_fd(), 0x1001, 0x1000),
            Err(libc::EINVAL)
        );
    }
}

#[cfg(test)]
mod attach_tests {
    use super::*;

    /// A default-type VM has no private memory: attaching must fail with the failing
    /// operation named. (This machine's KVM accepts guest_memfd and guest_memfd
    /// memslots on a default VM, so creation and registration run for real here and
    /// KVM_SET_MEMORY_ATTRIBUTES is what refuses.)
    #[test]
    fn attach_on_a_vm_without_private_memory_fails_precisely() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("NOT CHECKED: no /dev/kvm");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let mem = crate::vstate::memory::create(16 << 20, &[0u8; 4096]).unwrap();
        match PrivateMemory::attach(&vm, &mem) {
            Err(PrivateMemoryError::Kernel { op, gpa, .. }) => {
                let caps = crate::tee::KvmCapabilities::query(&kvm);
                eprintln!("attach refused at {op}");
                assert!(
                    [
                        "KVM_CREATE_GUEST_MEMFD",
                        "KVM_SET_USER_MEMORY_REGION2",
                        "KVM_SET_MEMORY_ATTRIBUTES"
                    ]
                    .contains(&op),
                    "{op}"
                );
                if caps.memory_attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE == 0 && caps.guest_memfd {
                    assert_ne!(op, "KVM_CREATE_GUEST_MEMFD");
                }
                assert_eq!(gpa, 0, "the first region fails");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(p) => {
                // A host whose default VMs support private memory: every region is
                // backed.
                assert_eq!(p.slots().len(), 2);
            }
        }
    }

    /// Creating an SNP or TDX VM on a host without them fails at KVM_CREATE_VM.
    #[test]
    fn confidential_vm_types_are_refused_by_this_kvm() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("NOT CHECKED: no /dev/kvm");
            return;
        };
        let caps = crate::tee::KvmCapabilities::query(&kvm);
        for (ty, chip) in [
            (
                kvm_bindings::KVM_X86_SNP_VM,
                crate::vstate::vm::IrqChip::Full,
            ),
            (
                kvm_bindings::KVM_X86_TDX_VM,
                crate::vstate::vm::IrqChip::Split,
            ),
        ] {
            if caps.supports_vm_type(ty) {
                eprintln!("NOT CHECKED: this host offers VM type {ty}");
                continue;
            }
            let e = crate::vstate::vm::Vm::new_confidential(
                &kvm,
                u64::from(ty),
                chip,
                16 << 20,
                &[0u8; 4096],
            )
            .unwrap_err();
            assert!(
                matches!(e, crate::vstate::vm::VmError::CreateVm(_)),
                "type {ty}: {e:?}"
            );
        }
    }
}
