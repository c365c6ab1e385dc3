//! The kernel heap: `linked_list_allocator` over a virtual region that grows
//! page by page from the frame allocator when an allocation does not fit.
//! An allocation that cannot be satisfied even after growing is reported on the
//! console (size, heap size, free frames) before the allocation error panics.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use linked_list_allocator::Heap;
use spin::Mutex;
use x86_64::structures::paging::PageTableFlags;
use x86_64::VirtAddr;

use super::mapper::{self, MapError};

/// Initial heap size.
const INITIAL_SIZE: u64 = 4 << 20;
/// Smallest growth step.
const GROW_STEP: u64 = 1 << 20;
/// Upper bound: the heap never grows past this (a runaway allocation loop
/// should be reported, not eat the VMs' memory).
const MAX_SIZE: u64 = 256 << 20;

struct KernelHeap {
    inner: Mutex<HeapState>,
}

struct HeapState {
    heap: Heap,
    /// Start of the heap's virtual region (0 until `init`).
    base: u64,
    /// Bytes mapped so far.
    mapped: u64,
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap {
    inner: Mutex::new(HeapState {
        heap: Heap::empty(),
        base: 0,
        mapped: 0,
    }),
};

impl HeapState {
    /// Maps `bytes` more at the end of the heap.
    fn map_more(&mut self, bytes: u64) -> Result<(), MapError> {
        let flags = PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        let mut off = 0;
        while off < bytes {
            let frame = super::alloc_frame_zeroed().map_err(|_| MapError::OutOfFrames)?;
            mapper::map(VirtAddr::new(self.base + self.mapped + off), frame, flags)?;
            off += 4096;
        }
        self.mapped += bytes;
        Ok(())
    }

    fn grow(&mut self, at_least: u64) -> Result<(), MapError> {
        let step = at_least.next_multiple_of(GROW_STEP).max(GROW_STEP);
        if self.mapped + step > MAX_SIZE {
            return Err(MapError::OutOfFrames);
        }
        self.map_more(step)?;
        // SAFETY: the `step` bytes directly after the heap's current top were
        // just mapped writable and belong to nobody else.
        unsafe { self.heap.extend(step as usize) };
        Ok(())
    }
}

/// Creates the heap in a free higher-half region.
pub fn init() -> Result<(), MapError> {
    let base = mapper::free_region()?;
    let mut state = HEAP.inner.lock();
    state.base = base.as_u64();
    state.map_more(INITIAL_SIZE)?;
    // SAFETY: `INITIAL_SIZE` bytes at `base` were just mapped writable, are
    // used by nothing else, and stay mapped for the kernel's lifetime.
    unsafe { state.heap.init(base.as_mut_ptr(), INITIAL_SIZE as usize) };
    Ok(())
}

/// Heap bytes: (mapped, used).
pub fn usage() -> (u64, u64) {
    let state = HEAP.inner.lock();
    (state.mapped, state.heap.used() as u64)
}

// SAFETY: allocation and deallocation go through the locked linked-list heap,
// which returns blocks of at least the requested size and alignment.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut state = self.inner.lock();
        if let Ok(ptr) = state.heap.allocate_first_fit(layout) {
            return ptr.as_ptr();
        }
        let need = (layout.size() + layout.align()) as u64;
        if state.grow(need).is_ok() {
            if let Ok(ptr) = state.heap.allocate_first_fit(layout) {
                return ptr.as_ptr();
            }
        }
        let (mapped, used) = (state.mapped, state.heap.used());
        drop(state);
        let (free_frames, _) = super::counts();
        log::error!(
            "kernel heap exhausted: {} bytes (align {}) requested; heap {} KiB mapped, {} KiB used; {} free frames",
            layout.size(),
            layout.align(),
            mapped / 1024,
            used / 1024,
            free_frames
        );
        core::ptr::null_mut()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: the caller passes a block this allocator returned for `layout`.
            unsafe { self.inner.lock().heap.deallocate(ptr, layout) };
        }
    }
}
