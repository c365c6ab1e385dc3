//! The kernel's page-table mapper (4-level paging, SDM Vol. 3A 4.5) over the
//! physical-memory mapping: map, unmap, translate.

use spin::Mutex;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::mapper::{MapToError, Translate, UnmapError};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use super::phys_to_virt;

static MAPPER: Mutex<Option<OffsetPageTable<'static>>> = Mutex::new(None);

/// Why a mapping call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// No frame left for a page table.
    OutOfFrames,
    /// The page is already mapped.
    AlreadyMapped(u64),
    /// The page is mapped with a huge page in the way.
    HugePage(u64),
    /// The page is not mapped.
    NotMapped(u64),
    /// No free top-level slot for a new kernel region.
    NoFreeSlot,
}

struct KernelFrames;

// SAFETY: frames come from the global frame allocator, which hands each
// frame out once; they are zeroed, as fresh page tables must be.
unsafe impl FrameAllocator<Size4KiB> for KernelFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let pa = super::alloc_frame_zeroed().ok()?;
        PhysFrame::from_start_address(PhysAddr::new(pa)).ok()
    }
}

/// Takes over the active page tables (the bootloader's).
pub fn init() {
    let (l4, _) = Cr3::read();
    let l4_ptr = phys_to_virt(l4.start_address().as_u64()).as_mut_ptr::<PageTable>();
    // SAFETY: CR3 names the active level-4 table, reachable through the
    // physical-memory mapping; the mapper below becomes its only user.
    let table = unsafe { &mut *l4_ptr };
    // SAFETY: all physical memory is mapped at `phys_offset()`.
    let mapper = unsafe { OffsetPageTable::new(table, VirtAddr::new(super::phys_offset())) };
    *MAPPER.lock() = Some(mapper);
}

/// Maps one 4 KiB page to a frame with the given flags (PRESENT is added).
pub fn map(page: VirtAddr, frame: u64, flags: PageTableFlags) -> Result<(), MapError> {
    let mut guard = MAPPER.lock();
    let mapper = guard.as_mut().ok_or(MapError::OutOfFrames)?;
    let page = Page::<Size4KiB>::containing_address(page);
    let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(frame));
    // SAFETY: callers map either fresh frames (heap) or device MMIO that no
    // other mapping aliases with different caching; the page is unused (checked
    // by map_to, which fails on an existing mapping).
    let flush = unsafe {
        mapper.map_to(
            page,
            frame,
            flags | PageTableFlags::PRESENT,
            &mut KernelFrames,
        )
    }
    .map_err(|e| match e {
        MapToError::FrameAllocationFailed => MapError::OutOfFrames,
        MapToError::PageAlreadyMapped(_) => MapError::AlreadyMapped(page.start_address().as_u64()),
        MapToError::ParentEntryHugePage => MapError::HugePage(page.start_address().as_u64()),
    })?;
    flush.flush();
    Ok(())
}

/// Removes a 4 KiB mapping; returns the frame it pointed to.
pub fn unmap(page: VirtAddr) -> Result<u64, MapError> {
    let mut guard = MAPPER.lock();
    let mapper = guard.as_mut().ok_or(MapError::OutOfFrames)?;
    let page = Page::<Size4KiB>::containing_address(page);
    let addr = page.start_address().as_u64();
    let (frame, flush) = mapper.unmap(page).map_err(|e| match e {
        UnmapError::ParentEntryHugePage => MapError::HugePage(addr),
        _ => MapError::NotMapped(addr),
    })?;
    flush.flush();
    Ok(frame.start_address().as_u64())
}

/// The physical address a virtual address maps to, if any.
pub fn translate(addr: VirtAddr) -> Option<u64> {
    let guard = MAPPER.lock();
    guard.as_ref()?.translate_addr(addr).map(|pa| pa.as_u64())
}

/// Start of a free 512 GiB region of the higher half (an empty level-4 slot),
/// for kernel regions that grow (heap) or collect mappings (MMIO).
pub fn free_region() -> Result<VirtAddr, MapError> {
    let mut guard = MAPPER.lock();
    let mapper = guard.as_mut().ok_or(MapError::NoFreeSlot)?;
    let l4 = mapper.level_4_table_mut();
    // Slots 256..511 are the higher half; scan from the top down, skipping 511
    // (recursive-mapping convention) and any slot already in use.
    for slot in (256..511).rev() {
        if l4[slot].is_unused() {
            // Claim it with a fresh empty table so nobody else picks it.
            let table = super::alloc_frame_zeroed().map_err(|_| MapError::OutOfFrames)?;
            l4[slot].set_addr(
                PhysAddr::new(table),
                PageTableFlags::PRESENT | PageTableFlags::WRITABLE,
            );
            let addr = (slot as u64) << 39;
            // Sign-extend the canonical higher-half address.
            return Ok(VirtAddr::new_truncate(addr | 0xffff_0000_0000_0000));
        }
    }
    Err(MapError::NoFreeSlot)
}

/// Maps `len` bytes of device memory at physical `pa` uncached, at `va`.
pub fn map_mmio(va: VirtAddr, pa: u64, len: u64) -> Result<(), MapError> {
    let flags = PageTableFlags::WRITABLE
        | PageTableFlags::NO_CACHE
        | PageTableFlags::WRITE_THROUGH
        | PageTableFlags::NO_EXECUTE;
    let mut off = 0;
    while off < len {
        map(va + off, (pa & !0xfff) + off, flags)?;
        off += 4096;
    }
    Ok(())
}
