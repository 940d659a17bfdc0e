//! KVM-faithful fakes (tests only) of the SEV-SNP and TDX launch commands and of the
//! private-memory operations, shared by the launch tests of [`crate::tee::snp`],
//! [`crate::tee::tdx`], [`crate::tee::launch`] and [`crate::vstate::private`].
//!
//! A recording fake accepts whatever the code sends, so it cannot catch a launch that
//! real KVM would refuse. These fakes ENFORCE the checks upstream KVM makes, each rule
//! ported from the kernel function named next to it (Linux v6.16:
//! `arch/x86/kvm/vmx/tdx.c`, `arch/x86/kvm/svm/sev.c`, `arch/x86/kvm/cpuid.c`,
//! `arch/x86/kvm/x86.c`, `virt/kvm/kvm_main.c`, `virt/kvm/guest_memfd.c`), and answer
//! with the errno KVM returns. Where a fake is stricter than KVM (padding KVM does not
//! read but the uAPI documents as zero), the rule says so. Partial progress, `-EINTR`
//! and `-EAGAIN` are injected so the retry loops run.
//!
//! The rules and their sources are listed in host-vmm/README.md ("Conformance with
//! upstream KVM").

pub(crate) mod private;
pub(crate) mod snp;
pub(crate) mod tdx;
mod uapi_conformance;

/// `PAGE_SIZE`.
pub(crate) const PAGE: u64 = 4096;

/// `PAGE_ALIGNED(x)`.
pub(crate) fn page_aligned(x: u64) -> bool {
    x % PAGE == 0
}

/// Whether `gpa..gpa+len` lies in one of `slots` (guest_memfd-backed memslots:
/// `kvm_gmem_populate` works within the slot of its first GFN).
pub(crate) fn slot_of(slots: &[(u64, u64)], gpa: u64) -> Option<(u64, u64)> {
    slots
        .iter()
        .copied()
        .find(|&(start, size)| start <= gpa && gpa < start + size)
}

/// `copy_from_user`: reads `len` bytes at the caller-supplied address `addr` the way
/// the kernel does, through `process_vm_readv(2)` on this process, so an address
/// that is not mapped readable is `-EFAULT` (as KVM answers) instead of undefined
/// behaviour in the fake. The fakes never dereference caller-supplied addresses.
pub(crate) fn copy_from_user(addr: u64, len: usize) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` describes `buf`, which this function owns and which is `len`
    // bytes long; the remote range is only read by the kernel, which checks it
    // (unmapped or unreadable -> EFAULT) and never touches it on our behalf.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    user_copy_result(n, len)?;
    Ok(buf)
}

/// `copy_to_user`: writes `data` at the caller-supplied address `addr` through
/// `process_vm_writev(2)`; an address not mapped writable is `-EFAULT`.
pub(crate) fn copy_to_user(addr: u64, data: &[u8]) -> Result<(), i32> {
    let local = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: `local` describes `data`, which the kernel only reads; the remote range
    // is checked by the kernel (unmapped or read-only -> EFAULT). The caller of the
    // faked ioctl handed over `addr` for the kernel to write, as with KVM.
    let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
    user_copy_result(n, data.len())
}

/// A short or EFAULT copy is the caller's bad address (-EFAULT); any other failure
/// (process_vm_* refused by a sandbox: EPERM, ENOSYS) is the test environment's, and
/// stops the test with that reason rather than passing as a refusal.
fn user_copy_result(n: isize, len: usize) -> Result<(), i32> {
    if n >= 0 {
        return if n as usize == len {
            Ok(())
        } else {
            Err(libc::EFAULT)
        };
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EFAULT) => Err(libc::EFAULT),
        _ => panic!("the fake cannot read or write user memory (process_vm_readv/writev): {e}"),
    }
}

/// `KVM_MEMORY_ATTRIBUTE_PRIVATE` per GFN, as KVM keeps it (`kvm->mem_attr_array`):
/// disjoint, sorted private ranges `[start, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PrivateAttrs(Vec<(u64, u64)>);

impl PrivateAttrs {
    /// KVM_SET_MEMORY_ATTRIBUTES (virt/kvm/kvm_main.c
    /// `kvm_vm_ioctl_set_mem_attributes`): only PRIVATE is supported, size non-zero,
    /// no wrap, address and size page-aligned -> else -EINVAL.
    pub fn set(&mut self, gpa: u64, size: u64, attributes: u64) -> Result<(), i32> {
        use crate::vstate::private::KVM_MEMORY_ATTRIBUTE_PRIVATE;
        let Some(end) = gpa.checked_add(size) else {
            return Err(libc::EINVAL);
        };
        if attributes & !KVM_MEMORY_ATTRIBUTE_PRIVATE != 0
            || size == 0
            || !page_aligned(gpa)
            || !page_aligned(size)
        {
            return Err(libc::EINVAL);
        }
        let mut out = Vec::with_capacity(self.0.len() + 2);
        for &(s, e) in &self.0 {
            // Keep the parts of existing ranges outside [gpa, end).
            if s < gpa {
                out.push((s, e.min(gpa)));
            }
            if e > end {
                out.push((s.max(end), e));
            }
        }
        if attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
            out.push((gpa, end));
        }
        out.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(out.len());
        for (s, e) in out {
            match merged.last_mut() {
                Some(last) if last.1 >= s => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.0 = merged;
        Ok(())
    }

    /// Whether the page at `gpa` has the PRIVATE attribute
    /// (`kvm_range_has_memory_attributes(.., PRIVATE, PRIVATE)` for one page).
    pub fn is_private(&self, gpa: u64) -> bool {
        self.0.iter().any(|&(s, e)| s <= gpa && gpa < e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::private::KVM_MEMORY_ATTRIBUTE_PRIVATE as P;

    #[test]
    fn private_attributes_are_set_and_cleared_per_page() {
        let mut a = PrivateAttrs::default();
        a.set(0, 0x4000, P).unwrap();
        a.set(0x1000, 0x1000, 0).unwrap();
        assert!(a.is_private(0) && !a.is_private(0x1000) && a.is_private(0x2000));
        assert!(!a.is_private(0x4000));
        a.set(0x1000, 0x1000, P).unwrap();
        assert_eq!(a, PrivateAttrs(vec![(0, 0x4000)]));
        for (gpa, size, attrs) in [(0x800, 0x1000, P), (0, 0x800, P), (0, 0, P), (0, 0x1000, 2)] {
            assert_eq!(a.set(gpa, size, attrs), Err(libc::EINVAL));
        }
        assert_eq!(a.set(!0xfff, 0x2000, P), Err(libc::EINVAL));
    }

    #[test]
    fn user_copies_fault_instead_of_dereferencing() {
        let mut buf = vec![3u8; 64];
        let addr = buf.as_mut_ptr() as u64;
        assert_eq!(copy_from_user(addr, 64).unwrap(), vec![3u8; 64]);
        copy_to_user(addr, &[9u8; 8]).unwrap();
        assert_eq!(&buf[..9], &[9, 9, 9, 9, 9, 9, 9, 9, 3]);
        assert_eq!(copy_from_user(0x1000, 8), Err(libc::EFAULT));
        assert_eq!(copy_to_user(0x1000, &[0; 8]), Err(libc::EFAULT));
        // Read-only memory: a write faults.
        static RO: [u8; 8] = [1; 8];
        assert_eq!(copy_to_user(RO.as_ptr() as u64, &[0; 8]), Err(libc::EFAULT));
        assert_eq!(RO, [1; 8]);
    }
}
