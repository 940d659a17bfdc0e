//! Memory the VMM's devices read and write (virtio rings and buffers, the TDX GetQuote
//! buffer).
//!
//! Without a TEE (and under SEV-SNP without the emulator trap) DMA memory is ordinary heap memory:
//! identity-mapped, so a buffer's virtual address is its GPA ([`Mode::Heap`]).
//!
//! In a TD, heap memory is private: the VMM cannot read or write it (a real TD's
//! devices would time out, and so do the emulated TD's under the private-memory
//! contract). [`init_shared_pool`] turns a 2 MiB-aligned range of RAM into a **shared
//! pool**: the caller converts it to shared first (TDX: `TDVMCALL<MapGPA>` with the shared
//! bit), then this module maps it at [`POOL_VA`] through the *attribute alias*
//! (`GPA | attr`, TDX's shared bit 47 for GPAW 48) with 2 MiB pages, and every DMA
//! allocation comes from it. The device is handed the plain GPA (no attribute bit:
//! KVM strips the shared bit, and the VMM's memslots sit at the plain GPA), while the
//! guest touches the bytes at the alias VA, so a [`DmaBuf`] keeps both.
//!
//! SEV-SNP uses the same pool with `attr` = 0 (the C-bit clear in the alias PTEs is
//! what makes an SNP page shared), after `snp::share` rescinded and converted it.
//!
//! Allocations are page-aligned, zeroed and never freed (the guest runs one flow: one
//! set of queues and buffers per device, one 32 KiB GetQuote buffer
//! per quote; about 300 KiB of the pool). An exhausted pool is an error
//! ([`DmaError::NoMemory`]), never a fallback to private memory.

use alloc::alloc::{alloc_zeroed, Layout};
use core::cell::UnsafeCell;

/// Bytes of the shared pool (the test guest needs ~300 KiB of it).
pub const POOL_SIZE: u64 = 4 << 20;
/// The pool's alignment (it is mapped with 2 MiB pages).
pub const POOL_ALIGN: u64 = 2 << 20;
/// Where the shared pool is mapped: PDPT entry 4 (4–5 GiB of linear addresses, unused
/// by the identity map of 0–4 GiB).
pub const POOL_VA: u64 = 4 << 30;
const PAGE: usize = 4096;

/// A zeroed DMA buffer: `buf` is where the guest accesses it, `gpa` what the device is
/// told.
#[derive(Debug)]
pub struct DmaBuf {
    /// The bytes, at the guest's virtual address.
    pub buf: &'static mut [u8],
    /// The guest-physical address the device uses (never with an attribute bit).
    pub gpa: u64,
}

impl DmaBuf {
    /// The GPA of byte `offset`.
    pub fn gpa_at(&self, offset: usize) -> u64 {
        self.gpa + offset as u64
    }
}

/// Where DMA memory comes from.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// The heap (identity-mapped: VA = GPA).
    Heap,
    /// The shared pool: `[gpa, gpa + size)` mapped at `va`, bump-allocated from `next`.
    Pool {
        va: u64,
        gpa: u64,
        size: u64,
        next: u64,
        attr: u64,
    },
}

struct State(UnsafeCell<Mode>);

// SAFETY: the guest is single-threaded with no interrupts; nothing accesses the state
// concurrently.
unsafe impl Sync for State {}

static STATE: State = State(UnsafeCell::new(Mode::Heap));

/// The page directory mapping the pool (one per guest; zeroed in .bss).
#[repr(C, align(4096))]
struct PageDirectory([u64; 512]);

struct PdCell(UnsafeCell<PageDirectory>);

// SAFETY: as `State`.
unsafe impl Sync for PdCell {}

static POOL_PD: PdCell = PdCell(UnsafeCell::new(PageDirectory([0; 512])));

// SAFETY: the symbol is defined by layout.ld (the prologue's PDPT, 4 KiB, page
// aligned); it is only declared here and accessed through raw pointers below.
unsafe extern "C" {
    /// The prologue's page-directory-pointer table (layout.ld; identity-mapped, user,
    /// writable).
    static mut __pdpt: [u64; 512];
}

/// Why the pool cannot be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaError {
    /// The range is not 2 MiB-aligned, too large, or set up twice.
    BadPool,
    /// An allocation did not fit.
    NoMemory,
}

impl core::fmt::Display for DmaError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DmaError::BadPool => f.write_str("the shared DMA pool range is invalid"),
            DmaError::NoMemory => f.write_str("out of DMA memory"),
        }
    }
}

/// Maps `[gpa, gpa + size)` (already converted to shared by the caller) at [`POOL_VA`]
/// through `gpa | attr`, and serves every later [`alloc()`] from it.
pub fn init_shared_pool(gpa: u64, size: u64, attr: u64) -> Result<u64, DmaError> {
    // SAFETY: single-threaded (see `State`).
    let mode = unsafe { &mut *STATE.0.get() };
    if !matches!(mode, Mode::Heap)
        || !gpa.is_multiple_of(POOL_ALIGN)
        || !size.is_multiple_of(POOL_ALIGN)
        || size == 0
        || size > 1 << 30
        || (gpa | attr) & !0x000F_FFFF_FFE0_0000 != 0
    {
        return Err(DmaError::BadPool);
    }
    // SAFETY: single-threaded; the page directory is ours, 4 KiB-aligned, identity-mapped
    // (its address is its GPA) and not yet referenced by any paging structure. The PDPT
    // entry for 4–5 GiB was never present, so no translation of it is cached and no
    // INVLPG is needed (which ring 3 could not execute anyway).
    unsafe {
        let pd = &mut (*POOL_PD.0.get()).0;
        for (i, e) in pd.iter_mut().take((size / POOL_ALIGN) as usize).enumerate() {
            // Present, writable, user, 2 MiB page.
            *e = (gpa + i as u64 * POOL_ALIGN) | attr | 0x87;
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        let pdpt = &raw mut __pdpt;
        core::ptr::write_volatile(
            &raw mut (*pdpt)[(POOL_VA >> 30) as usize],
            pd.as_ptr() as u64 | 7,
        );
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
    *mode = Mode::Pool {
        va: POOL_VA,
        gpa,
        size,
        next: 0,
        attr,
    };
    Ok(POOL_VA)
}

/// The attribute bit of the shared pool (TDX: the shared bit), if there is a pool.
pub fn pool_attr() -> Option<u64> {
    // SAFETY: single-threaded (see `State`).
    match unsafe { *STATE.0.get() } {
        Mode::Pool { attr, .. } => Some(attr),
        Mode::Heap => None,
    }
}

/// A zeroed, page-aligned DMA buffer of `bytes` bytes (from the pool when there is one).
pub fn alloc(bytes: usize) -> Result<DmaBuf, DmaError> {
    let size = bytes.max(1).next_multiple_of(PAGE);
    // SAFETY: single-threaded (see `State`).
    let mode = unsafe { &mut *STATE.0.get() };
    match mode {
        Mode::Heap => {
            let layout = Layout::from_size_align(size, PAGE).map_err(|_| DmaError::NoMemory)?;
            // SAFETY: a non-zero-size layout.
            let p = unsafe { alloc_zeroed(layout) };
            if p.is_null() {
                return Err(DmaError::NoMemory);
            }
            // SAFETY: a fresh, exclusively owned allocation of at least `bytes` bytes,
            // never freed.
            let buf = unsafe { core::slice::from_raw_parts_mut(p, bytes) };
            Ok(DmaBuf { buf, gpa: p as u64 })
        }
        Mode::Pool {
            va,
            gpa,
            size: pool,
            next,
            ..
        } => {
            let at = *next;
            let end = at.checked_add(size as u64).ok_or(DmaError::NoMemory)?;
            if end > *pool {
                return Err(DmaError::NoMemory);
            }
            *next = end;
            let p = (*va + at) as *mut u8;
            // SAFETY: `[at, end)` of the pool is mapped at `va + at` (init_shared_pool),
            // handed out once and never freed. The conversion scrubbed it, but zero it
            // anyway: the host could write shared memory at any time before this.
            let buf = unsafe {
                core::ptr::write_bytes(p, 0, size);
                core::slice::from_raw_parts_mut(p, bytes)
            };
            Ok(DmaBuf {
                buf,
                gpa: *gpa + at,
            })
        }
    }
}
