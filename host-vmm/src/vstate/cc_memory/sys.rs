//! The memfd and the mappings of it: all the `unsafe` of this module.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

/// A new memfd of `len` bytes (zeroed).
pub fn memfd(name: &str, len: u64) -> io::Result<File> {
    let name = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `name` is a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len)?;
    Ok(file)
}

/// Frees `len` bytes of `file` at `offset`: they read as zeros afterwards, in every
/// mapping of the file (KVM's MMU notifier drops the guest's mappings of them).
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own; the result is checked.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An owned shared mapping of a memfd range; unmapped on drop. Parts of it may be
/// re-protected or replaced (MAP_FIXED) but it always stays one reserved address range.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: u64,
}

// SAFETY: the mapping is plain memory; every access goes through raw pointers with
// volatile or copy semantics, and the page-state lock serialises the changes of
// protection.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

fn check_range(m: &Mapping, off: u64, len: u64) -> io::Result<()> {
    if off % 4096 != 0 || len % 4096 != 0 || off.checked_add(len).is_none_or(|e| e > m.len) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    Ok(())
}

impl Mapping {
    /// Maps `len` bytes of `file` at `offset`, read-write and shared.
    pub fn shared(file: &File, offset: u64, len: u64) -> io::Result<Self> {
        // SAFETY: a new mapping chosen by the kernel; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Host address of the start.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Sets the protection of `len` bytes at `off`.
    pub fn protect(&self, off: u64, len: u64, prot: i32) -> io::Result<()> {
        check_range(self, off, len)?;
        // SAFETY: the range lies inside our own mapping (checked above); changing its
        // protection cannot invalidate Rust references because none are handed out.
        let r = unsafe { libc::mprotect(self.ptr.add(off as usize).cast(), len as usize, prot) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    #[cfg(test)]
    /// Replaces `len` bytes at `off` by fresh anonymous zero pages (writes land there
    /// and never reach the file).
    pub fn replace_anonymous(&self, off: u64, len: u64) -> io::Result<()> {
        check_range(self, off, len)?;
        replace_anonymous(self.ptr, off, len)
    }

    #[cfg(test)]
    /// Copies `data` to `off` (tests and launch-time loading).
    pub fn write_at(&self, off: u64, data: &[u8]) {
        assert!(
            off + data.len() as u64 <= self.len,
            "write past the mapping"
        );
        // SAFETY: in bounds (asserted); the mapping is writable where callers write.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off as usize), data.len())
        }
    }

    #[cfg(test)]
    /// The byte at `off`.
    pub fn read_at(&self, off: u64) -> u8 {
        assert!(off < self.len, "read past the mapping");
        // SAFETY: in bounds (asserted); callers read only readable pages.
        unsafe { self.ptr.add(off as usize).read_volatile() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping; nothing references it after drop.
        unsafe { libc::munmap(self.ptr.cast(), self.len as usize) };
    }
}

/// Replaces `[base+off, base+off+len)` by anonymous private zero pages (MAP_FIXED).
/// `base+off..+len` must lie inside a mapping the caller owns.
pub fn replace_anonymous(base: *mut u8, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: MAP_FIXED over a range of a mapping the caller owns (documented
    // precondition): the old pages are replaced atomically, no other mapping is hit,
    // and the address range stays reserved for its owner.
    let p = unsafe {
        libc::mmap(
            base.add(off as usize).cast(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Maps `fd` at `file_off` over `[base+off, base+off+len)` (MAP_FIXED, shared).
/// Same precondition as [`replace_anonymous`].
pub fn restore_file(base: *mut u8, off: u64, len: u64, fd: i32, file_off: u64) -> io::Result<()> {
    // SAFETY: as in `replace_anonymous`; `fd` is the memfd the range mapped before.
    let p = unsafe {
        libc::mmap(
            base.add(off as usize).cast(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_NORESERVE,
            fd,
            file_off as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `KVM_SET_USER_MEMORY_REGION` (`_IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)`).
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;

/// Sets (or, with `len` 0, deletes) memslot `slot` of the VM `vm` (a dup of its fd).
///
/// # Safety
/// `host..host+len` must stay mapped (or be replaced only by other mappings of the
/// same size) while the slot exists.
pub unsafe fn set_slot(vm: &File, slot: u32, gpa: u64, len: u64, host: *mut u8) -> io::Result<()> {
    let r = kvm_bindings::kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: len,
        userspace_addr: host as u64,
    };
    // SAFETY: the ioctl reads `r` only; the caller guarantees the mapping (above).
    let ret = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_SET_USER_MEMORY_REGION, &r) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
