//! The heap: a bump allocator over one RAM range from the e820 map (from 16 MiB up; from
//! 20 MiB in a TD, where 16–20 MiB is the shared DMA pool of [`crate::dma`]), which
//! frees in place when the last allocation is released or resized. The guest runs one
//! short flow, so fragmentation does not matter; memory is identity-mapped, so heap
//! addresses are guest-physical addresses (without a TD or SNP, virtio rings and buffers
//! come from here too).

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

/// The allocator state.
pub struct Bump {
    inner: UnsafeCell<State>,
}

struct State {
    start: usize,
    next: usize,
    end: usize,
    last: usize,
}

// SAFETY: the guest is single-threaded with no interrupts; nothing accesses the state
// concurrently.
unsafe impl Sync for Bump {}

impl Bump {
    /// An empty heap (every allocation fails until `init`).
    pub const fn new() -> Self {
        Self {
            inner: UnsafeCell::new(State {
                start: 0,
                next: 0,
                end: 0,
                last: usize::MAX,
            }),
        }
    }

    /// Gives the allocator `[start, end)`.
    pub fn init(&self, start: usize, end: usize) {
        // SAFETY: single-threaded; called once before any allocation.
        let s = unsafe { &mut *self.inner.get() };
        s.start = start;
        s.next = start;
        s.end = end;
        s.last = usize::MAX;
    }
}

// SAFETY: returns aligned, non-overlapping blocks inside the range given to `init` (RAM
// per the e820 map, identity-mapped), or null.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: single-threaded, no reentrancy (the allocator never allocates).
        let s = unsafe { &mut *self.inner.get() };
        let Some(at) = s.next.checked_add(layout.align() - 1) else {
            return core::ptr::null_mut();
        };
        let at = at & !(layout.align() - 1);
        match at.checked_add(layout.size()) {
            Some(end) if end <= s.end => {
                s.next = end;
                s.last = at;
                at as *mut u8
            }
            _ => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as in `alloc`.
        let s = unsafe { &mut *self.inner.get() };
        if ptr as usize == s.last && s.last + layout.size() == s.next {
            s.next = s.last;
            s.last = usize::MAX;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        {
            // SAFETY: as in `alloc`.
            let s = unsafe { &mut *self.inner.get() };
            if ptr as usize == s.last {
                if let Some(end) = s.last.checked_add(new_size) {
                    if end <= s.end {
                        s.next = end;
                        return ptr;
                    }
                }
            }
        }
        // SAFETY: the GlobalAlloc contract holds for the caller's layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as in `alloc`.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not overlap.
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}
