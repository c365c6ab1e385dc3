//! Memory management: physical frames, the kernel heap and the page-table mapper.
//!
//! All physical memory is reachable through the bootloader's physical-memory
//! mapping at a fixed offset ([`phys_to_virt`]); the mapper only adds mappings
//! with other attributes (uncached MMIO) or places that must be contiguous in
//! virtual space (the growing heap).
//!
//! Frames come from [`hvcore::frames`]: a bump allocator until the heap exists,
//! a bitmap allocator after. Frames handed out are never used by anybody else:
//! VM partitions, EPT tables and VMCS regions all come from here.

pub mod heap;
pub mod mapper;

use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use hvcore::frames::{
    BootFrames, FrameAllocator, FrameError, MemRegion, MemorySummary, PhysRange, FRAME_SIZE,
};
use spin::Mutex;
use x86_64::VirtAddr;

use core::sync::atomic::{AtomicU64, Ordering};

/// The physical page reserved for the AP start-up trampoline (SIPI vector 0x08).
pub const AP_TRAMPOLINE: u64 = 0x8000;

static PHYS_OFFSET: AtomicU64 = AtomicU64::new(0);

// One instance, in a static: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Phase {
    Boot(BootFrames),
    Bitmap(FrameAllocator),
}

static FRAMES: Mutex<Option<Phase>> = Mutex::new(None);

/// The virtual address through which physical address `pa` is reachable.
pub fn phys_to_virt(pa: u64) -> VirtAddr {
    VirtAddr::new(PHYS_OFFSET.load(Ordering::Relaxed) + pa)
}

/// Offset of the physical-memory mapping.
pub fn phys_offset() -> u64 {
    PHYS_OFFSET.load(Ordering::Relaxed)
}

/// Starts the boot-phase frame allocator from the bootloader's memory map.
/// Only `Usable` regions are handed out; the first MiB stays reserved (real-mode
/// structures, the AP trampoline).
pub fn init(phys_offset: u64, regions: &MemoryRegions) -> Result<MemorySummary, FrameError> {
    PHYS_OFFSET.store(phys_offset, Ordering::Relaxed);
    let map = regions
        .iter()
        .map(|r| MemRegion::new(r.start, r.end, r.kind == MemoryRegionKind::Usable));
    let reserved = [PhysRange::new(0, 0x10_0000)];
    let boot = BootFrames::new(map, &reserved)?;
    let summary = boot.summary();
    *FRAMES.lock() = Some(Phase::Boot(boot));
    Ok(summary)
}

/// Switches to the bitmap allocator (needs the heap): from here on frames can
/// be freed.
pub fn enable_bitmap_allocator() {
    let mut frames = FRAMES.lock();
    if let Some(Phase::Boot(boot)) = frames.take() {
        *frames = Some(Phase::Bitmap(FrameAllocator::from_boot(boot)));
    }
}

/// Allocates `count` physically contiguous frames aligned to `align` frames,
/// zero-filled.
pub fn alloc_zeroed(count: usize, align: usize) -> Result<PhysRange, FrameError> {
    let range = {
        let mut frames = FRAMES.lock();
        match frames.as_mut() {
            Some(Phase::Boot(b)) => b.alloc(count, align)?,
            Some(Phase::Bitmap(b)) => b.alloc(count, align)?,
            None => return Err(FrameError::OutOfFrames { count, align }),
        }
    };
    zero(range);
    Ok(range)
}

/// Allocates one zeroed 4 KiB frame.
pub fn alloc_frame_zeroed() -> Result<u64, FrameError> {
    alloc_zeroed(1, 1).map(|r| r.start)
}

/// Marks a fixed range as taken (a VM with a configured host placement).
pub fn reserve(range: PhysRange) -> Result<(), FrameError> {
    match FRAMES.lock().as_mut() {
        Some(Phase::Bitmap(b)) => b.reserve(range),
        _ => Err(FrameError::OutOfFrames {
            count: range.frames() as usize,
            align: 1,
        }),
    }
}

/// Returns frames to the allocator.
pub fn free(range: PhysRange) -> Result<(), FrameError> {
    match FRAMES.lock().as_mut() {
        Some(Phase::Bitmap(b)) => b.free(range),
        // The bump phase cannot free; nothing is freed that early.
        _ => Ok(()),
    }
}

/// Free and total frame counts.
pub fn counts() -> (usize, usize) {
    match FRAMES.lock().as_ref() {
        Some(Phase::Bitmap(b)) => (b.free_count(), b.total_count()),
        Some(Phase::Boot(b)) => {
            let free: u64 = b.free_ranges().iter().map(|r| r.frames()).sum();
            (
                free as usize,
                b.summary().usable_bytes as usize / FRAME_SIZE as usize,
            )
        }
        None => (0, 0),
    }
}

/// The longest run of free frames starting at a multiple of `align` frames
/// (the largest VM partition that could be placed now, with `align` 512).
pub fn largest_free_run(align: usize) -> usize {
    match FRAMES.lock().as_ref() {
        Some(Phase::Bitmap(b)) => b.largest_free_run(align),
        _ => 0,
    }
}

/// Usable host-physical ranges (for validating fixed VM placements).
pub fn usable_ranges() -> alloc::vec::Vec<PhysRange> {
    match FRAMES.lock().as_ref() {
        Some(Phase::Bitmap(b)) => b.usable_ranges().to_vec(),
        _ => alloc::vec::Vec::new(),
    }
}

fn zero(range: PhysRange) {
    let ptr = phys_to_virt(range.start).as_mut_ptr::<u8>();
    // SAFETY: the range was just handed out by the frame allocator, so nobody
    // else uses it, and all physical memory is mapped writable at the offset.
    unsafe { core::ptr::write_bytes(ptr, 0, range.len() as usize) };
}
