//! A fake of the private-memory operations ([`PrivateOps`]) enforcing the kernel's
//! checks, recording what it was asked.

use std::cell::RefCell;
use std::os::fd::RawFd;

use super::page_aligned;
use crate::vstate::private::{PrivateOps, KVM_MEMORY_ATTRIBUTE_PRIVATE};

/// One operation the fake accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// KVM_SET_MEMORY_ATTRIBUTES (gpa, size, attributes).
    Attr(u64, u64, u64),
    /// fallocate(PUNCH_HOLE) on a guest_memfd (fd, offset, size).
    Punch(RawFd, u64, u64),
    /// madvise(MADV_DONTNEED) (host address, size).
    Discard(u64, u64),
}

/// The kernel side of private memory.
#[derive(Debug, Default)]
pub(crate) struct FakePrivateOps {
    /// Accepted operations, in order.
    pub ops: RefCell<Vec<Op>>,
    /// Fail KVM_SET_MEMORY_ATTRIBUTES with this errno.
    pub fail_attr: Option<i32>,
}

impl PrivateOps for FakePrivateOps {
    fn set_attributes(&self, gpa: u64, size: u64, attributes: u64) -> Result<(), i32> {
        if let Some(e) = self.fail_attr {
            return Err(e);
        }
        // virt/kvm/kvm_main.c kvm_vm_ioctl_set_mem_attributes: only supported
        // attributes (PRIVATE), size non-zero, no wrap, address and size page-aligned.
        if attributes & !KVM_MEMORY_ATTRIBUTE_PRIVATE != 0
            || size == 0
            || gpa.checked_add(size).is_none()
            || !page_aligned(gpa)
            || !page_aligned(size)
        {
            return Err(libc::EINVAL);
        }
        self.ops.borrow_mut().push(Op::Attr(gpa, size, attributes));
        Ok(())
    }

    fn punch_private(&self, fd: RawFd, offset: u64, size: u64) -> Result<(), i32> {
        // virt/kvm/guest_memfd.c kvm_gmem_fallocate / kvm_gmem_punch_hole:
        // offset and length page-aligned.
        if !page_aligned(offset) || !page_aligned(size) || size == 0 {
            return Err(libc::EINVAL);
        }
        self.ops.borrow_mut().push(Op::Punch(fd, offset, size));
        Ok(())
    }

    fn discard_shared(&self, host: u64, size: u64) -> Result<(), i32> {
        // mm/madvise.c: the start must be page-aligned.
        if !page_aligned(host) {
            return Err(libc::EINVAL);
        }
        self.ops.borrow_mut().push(Op::Discard(host, size));
        Ok(())
    }
}
