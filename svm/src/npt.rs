//! Nested page tables (APM Vol. 2, 15.25 "Nested Paging").
//!
//! Nested page tables translate guest-physical to host-physical addresses
//! with the ordinary x86-64 long-mode 4-level format (APM Vol. 2, 5.3 and
//! 15.25.1); the walk uses the *host's* paging mode, so with a 64-bit host
//! these are PML4/PDPT/PD/PT tables whose entries have the usual P, RW, US,
//! PWT, PCD, A, D, PS, G and NX bits. [`NptEntry`] names them.
//!
//! Two rules differ from ordinary paging (APM 15.25.5):
//! - every guest access is checked as a *user* access, so US must be set at
//!   every level or the guest faults on everything;
//! - NX only takes effect when the host runs with EFER.NXE = 1; with
//!   EFER.NXE = 0 bit 63 is reserved and a set NX bit is a reserved-bit
//!   fault.
//!
//! [`Npt`] builds and queries the tables for one guest, like the `vmx`
//! crate's EPT builder: it never touches memory itself; frames come from a
//! [`FrameSource`] and are reached through a [`TableMemory`], so the whole
//! builder runs on the host against a vector, and on the kernel through its
//! physical-memory mapping. [`Npt::n_cr3`] is the value for the VMCB's N_CR3.
//!
//! The tables are meant to be built before the guest runs: the processor
//! sets A and D bits during nested walks, racing with the builder's plain
//! reads, and removing or changing a mapping needs a TLB flush of the ASID.

use core::fmt;

use bitflags::bitflags;

use crate::addr::{GuestPhysAddr, HostPhysAddr, PageSize, PAGE_SIZE};

/// Bits 51:12 of an entry: the physical address of the next table or page
/// (APM Vol. 2, 5.3.3-5.3.5).
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// First guest-physical address a 4-level table cannot map (48-bit space).
pub const MAX_GUEST_PHYS: u64 = 1 << 48;
/// First host-physical address an entry cannot hold (52-bit physical
/// addresses, APM Vol. 2, 5.3).
pub const MAX_HOST_PHYS: u64 = 1 << 52;
/// Entries per table.
pub const ENTRIES_PER_TABLE: usize = 512;

bitflags! {
    /// The flag bits of a long-mode page-table entry as used in nested page
    /// tables (APM Vol. 2, 5.4.1 "Field Definitions"; 15.25.5).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct NptFlags: u64 {
        /// Bit 0 (P): present.
        const PRESENT = 1 << 0;
        /// Bit 1 (R/W): writes allowed.
        const WRITE = 1 << 1;
        /// Bit 2 (U/S): user accesses allowed; required at every level of a
        /// nested table, since guest accesses count as user accesses
        /// (APM 15.25.5).
        const USER = 1 << 2;
        /// Bit 3 (PWT): page-level write-through.
        const WRITE_THROUGH = 1 << 3;
        /// Bit 4 (PCD): page-level cache disable.
        const CACHE_DISABLE = 1 << 4;
        /// Bit 5 (A): accessed, set by the processor.
        const ACCESSED = 1 << 5;
        /// Bit 6 (D): dirty, leaf entries only, set by the processor.
        const DIRTY = 1 << 6;
        /// Bit 7 (PS): page size, a 2 MiB page in a PDE or 1 GiB page in a
        /// PDPE (in a PTE this bit is PAT).
        const PAGE_SIZE = 1 << 7;
        /// Bit 8 (G): global, leaf entries only.
        const GLOBAL = 1 << 8;
        /// Bit 63 (NX): no execute, with host EFER.NXE = 1 (APM 15.25.5).
        const NO_EXECUTE = 1 << 63;
    }
}

bitflags! {
    /// Access rights of a guest mapping. Reading is implied by a present
    /// entry; these add writing and execution.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct NptPermissions: u8 {
        /// Writes allowed (R/W = 1).
        const WRITE = 1 << 0;
        /// Instruction fetches allowed (NX = 0).
        const EXECUTE = 1 << 1;
        /// Read, write and execute.
        const RWX = Self::WRITE.bits() | Self::EXECUTE.bits();
        /// Read and write, no execute.
        const RW = Self::WRITE.bits();
        /// Read and execute.
        const RX = Self::EXECUTE.bits();
    }
}

impl NptPermissions {
    /// Read only, no execute.
    pub const READ_ONLY: Self = Self::empty();
}

/// Caching of a mapped page through PCD and PWT, which index the first four
/// entries of the host's PAT (APM Vol. 2, 7.8; 15.25). The names assume
/// those entries hold their reset values WB, WT, UC-, UC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheType {
    /// PCD = 0, PWT = 0: PAT entry 0, write-back.
    WriteBack,
    /// PCD = 0, PWT = 1: PAT entry 1, write-through.
    WriteThrough,
    /// PCD = 1, PWT = 0: PAT entry 2, UC- (uncacheable, overridable by
    /// write combining).
    UncacheableMinus,
    /// PCD = 1, PWT = 1: PAT entry 3, uncacheable (for device memory).
    Uncacheable,
}

impl CacheType {
    /// The PCD and PWT bits of an entry.
    pub const fn flags(self) -> NptFlags {
        match self {
            CacheType::WriteBack => NptFlags::empty(),
            CacheType::WriteThrough => NptFlags::WRITE_THROUGH,
            CacheType::UncacheableMinus => NptFlags::CACHE_DISABLE,
            CacheType::Uncacheable => NptFlags::from_bits_retain(
                NptFlags::CACHE_DISABLE.bits() | NptFlags::WRITE_THROUGH.bits(),
            ),
        }
    }

    /// Decodes PCD and PWT (other bits ignored).
    pub const fn from_flags(flags: NptFlags) -> Self {
        match (
            flags.contains(NptFlags::CACHE_DISABLE),
            flags.contains(NptFlags::WRITE_THROUGH),
        ) {
            (false, false) => CacheType::WriteBack,
            (false, true) => CacheType::WriteThrough,
            (true, false) => CacheType::UncacheableMinus,
            (true, true) => CacheType::Uncacheable,
        }
    }
}

/// One 64-bit nested page-table entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct NptEntry(u64);

impl NptEntry {
    /// The not-present entry.
    pub const EMPTY: NptEntry = NptEntry(0);

    /// Wraps a raw entry.
    pub const fn from_raw(raw: u64) -> Self {
        NptEntry(raw)
    }

    /// The raw entry.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// An entry referencing the next table: present, writable, user, and
    /// executable, so that the leaf alone decides the rights.
    pub const fn table(next: HostPhysAddr) -> Self {
        NptEntry(
            (next.as_u64() & ADDR_MASK)
                | NptFlags::PRESENT.bits()
                | NptFlags::WRITE.bits()
                | NptFlags::USER.bits(),
        )
    }

    /// A leaf entry mapping a page at `frame`: present and user, writable
    /// and executable as `perms` says, cached as `cache`; `large` sets PS
    /// for a 2 MiB PDE or 1 GiB PDPE.
    pub const fn leaf(
        frame: HostPhysAddr,
        perms: NptPermissions,
        cache: CacheType,
        large: bool,
    ) -> Self {
        let mut raw = (frame.as_u64() & ADDR_MASK)
            | NptFlags::PRESENT.bits()
            | NptFlags::USER.bits()
            | cache.flags().bits();
        if perms.contains(NptPermissions::WRITE) {
            raw |= NptFlags::WRITE.bits();
        }
        if !perms.contains(NptPermissions::EXECUTE) {
            raw |= NptFlags::NO_EXECUTE.bits();
        }
        if large {
            raw |= NptFlags::PAGE_SIZE.bits();
        }
        NptEntry(raw)
    }

    /// Bit 0: present.
    pub const fn is_present(self) -> bool {
        self.0 & NptFlags::PRESENT.bits() != 0
    }

    /// Bit 7 in a PDPE or PDE: maps a large page.
    pub const fn is_large(self) -> bool {
        self.0 & NptFlags::PAGE_SIZE.bits() != 0
    }

    /// The named flag bits.
    pub const fn flags(self) -> NptFlags {
        NptFlags::from_bits_truncate(self.0)
    }

    /// The rights the entry grants (R/W and NX).
    pub const fn permissions(self) -> NptPermissions {
        let mut p = NptPermissions::empty();
        if self.0 & NptFlags::WRITE.bits() != 0 {
            p = p.union(NptPermissions::WRITE);
        }
        if self.0 & NptFlags::NO_EXECUTE.bits() == 0 {
            p = p.union(NptPermissions::EXECUTE);
        }
        p
    }

    /// The caching selected by PCD and PWT.
    pub const fn cache_type(self) -> CacheType {
        CacheType::from_flags(self.flags())
    }

    /// The physical address in bits 51:12.
    pub const fn addr(self) -> HostPhysAddr {
        HostPhysAddr::new(self.0 & ADDR_MASK)
    }
}

impl fmt::Debug for NptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NptEntry")
            .field("addr", &self.addr())
            .field("flags", &self.flags())
            .finish()
    }
}

/// Supplies 4 KiB frames for nested page tables.
///
/// A frame must be 4 KiB-aligned (the [`Npt`] checks) and not used for
/// anything else while the tables exist (promised by the [`TableMemory`]
/// implementation). It need not be zeroed: the [`Npt`] zeroes it.
pub trait FrameSource {
    /// A fresh frame, or `None` when out of memory.
    fn alloc_zeroed_frame(&mut self) -> Option<HostPhysAddr>;
}

/// Access to nested page-table frames by host-physical address.
///
/// # Safety
///
/// The processor walks the tables the [`Npt`] builds, so the translations
/// the `Npt` checks are the translations a guest gets only if this access is
/// faithful. For every `frame` passed in (always a frame that the paired
/// [`FrameSource`] handed to the same `Npt`), an implementation guarantees:
///
/// - the returned array *is* the 4096 bytes at host-physical `frame`, the
///   memory the processor reads when it walks the tables;
/// - that memory is valid for reads (and, for `table_mut`, writes) for the
///   lifetime of the borrow, and no other reference to it exists meanwhile:
///   the frame belongs to this `Npt` alone;
/// - distinct frames give non-overlapping arrays.
#[allow(unsafe_code)] // Declaring the contract; implementations live in the kernel.
pub unsafe trait TableMemory {
    /// The table at `frame`.
    fn table(&self, frame: HostPhysAddr) -> &[u64; ENTRIES_PER_TABLE];
    /// The table at `frame`, writable.
    fn table_mut(&mut self, frame: HostPhysAddr) -> &mut [u64; ENTRIES_PER_TABLE];
}

/// Why a nested-paging operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NptError {
    /// An address or length is not aligned to the page size used.
    Misaligned,
    /// This guest-physical address is already mapped.
    AlreadyMapped(GuestPhysAddr),
    /// The frame source ran out of frames. A [`Npt::map_range`] may have
    /// mapped part of the range.
    OutOfFrames,
    /// The guest-physical range reaches 2^48, or the host-physical one 2^52.
    AddressTooLarge,
    /// The frame source returned an unusable frame (misaligned or above 2^52).
    BadFrame(HostPhysAddr),
}

impl fmt::Display for NptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NptError::Misaligned => f.write_str("address or length not page-aligned"),
            NptError::AlreadyMapped(gpa) => write!(f, "{gpa} is already mapped"),
            NptError::OutOfFrames => f.write_str("out of frames for nested page tables"),
            NptError::AddressTooLarge => {
                f.write_str("address beyond what the nested page tables can map")
            }
            NptError::BadFrame(hpa) => write!(f, "frame source returned unusable frame {hpa}"),
        }
    }
}

impl core::error::Error for NptError {}

/// Where a guest-physical address leads ([`Npt::translate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The host-physical address, including the offset within the page.
    pub hpa: HostPhysAddr,
    /// The rights of the leaf entry.
    pub perms: NptPermissions,
    /// The caching of the leaf entry.
    pub cache: CacheType,
    /// The size of the page containing the address.
    pub page_size: PageSize,
}

/// One leaf mapping, as reported by [`Npt::walk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// First guest-physical address of the page.
    pub gpa: GuestPhysAddr,
    /// First host-physical address of the page.
    pub hpa: HostPhysAddr,
    /// The page size.
    pub size: PageSize,
    /// The rights.
    pub perms: NptPermissions,
    /// The caching.
    pub cache: CacheType,
}

/// How many pages of each size a [`Npt::map_range`] used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapStats {
    /// 4 KiB pages mapped.
    pub pages_4k: u64,
    /// 2 MiB pages mapped.
    pub pages_2m: u64,
}

/// Bit position of the index into the table at `level` (0 = PML4, 1 = PDPT,
/// 2 = PD, 3 = PT; APM Vol. 2, 5.3.1).
const fn level_shift(level: usize) -> u32 {
    39 - 9 * level as u32
}

/// Bytes mapped by one entry at `level`.
const fn level_span(level: usize) -> u64 {
    1 << level_shift(level)
}

const fn table_index(gpa: u64, level: usize) -> usize {
    ((gpa >> level_shift(level)) & 0x1FF) as usize
}

const fn leaf_level(size: PageSize) -> usize {
    match size {
        PageSize::Size1G => 1,
        PageSize::Size2M => 2,
        PageSize::Size4K => 3,
    }
}

const fn level_page_size(level: usize) -> Option<PageSize> {
    match level {
        1 => Some(PageSize::Size1G),
        2 => Some(PageSize::Size2M),
        3 => Some(PageSize::Size4K),
        _ => None,
    }
}

/// The result of looking up one guest-physical address.
enum Lookup {
    /// A leaf entry at `level` maps the address.
    Leaf { entry: NptEntry, level: usize },
    /// Nothing is mapped in the aligned block of `span` bytes around it.
    Hole { span: u64 },
}

/// 4-level nested page tables for one guest (APM 15.25).
pub struct Npt<F, M> {
    frames: F,
    memory: M,
    pml4: HostPhysAddr,
}

impl<F, M> fmt::Debug for Npt<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Npt")
            .field("pml4", &self.pml4)
            .finish_non_exhaustive()
    }
}

impl<F: FrameSource, M: TableMemory> Npt<F, M> {
    /// Empty tables: allocates the PML4.
    pub fn new(mut frames: F, mut memory: M) -> Result<Self, NptError> {
        let pml4 = Self::alloc_table(&mut frames, &mut memory)?;
        Ok(Npt {
            frames,
            memory,
            pml4,
        })
    }

    /// The PML4's address.
    pub fn pml4(&self) -> HostPhysAddr {
        self.pml4
    }

    /// The value for the VMCB's N_CR3 (offset 0B0h): the PML4 address, with
    /// PWT = PCD = 0 (write-back table walks) (APM 15.25.3).
    pub fn n_cr3(&self) -> HostPhysAddr {
        self.pml4
    }

    /// The frame source and table memory, giving up the tables (to free
    /// them after the guest is gone).
    pub fn into_parts(self) -> (F, M, HostPhysAddr) {
        (self.frames, self.memory, self.pml4)
    }

    fn alloc_table(frames: &mut F, memory: &mut M) -> Result<HostPhysAddr, NptError> {
        let frame = frames.alloc_zeroed_frame().ok_or(NptError::OutOfFrames)?;
        if !frame.is_page_aligned() || frame.as_u64() >= MAX_HOST_PHYS {
            return Err(NptError::BadFrame(frame));
        }
        *memory.table_mut(frame) = [0; ENTRIES_PER_TABLE];
        Ok(frame)
    }

    fn entry(&self, table: HostPhysAddr, index: usize) -> NptEntry {
        NptEntry(self.memory.table(table)[index])
    }

    /// Maps one 4 KiB page.
    pub fn map_4k(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        perms: NptPermissions,
        cache: CacheType,
    ) -> Result<(), NptError> {
        self.map_page(gpa, hpa, perms, cache, PageSize::Size4K)
    }

    /// Maps one 2 MiB page.
    pub fn map_2m(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        perms: NptPermissions,
        cache: CacheType,
    ) -> Result<(), NptError> {
        self.map_page(gpa, hpa, perms, cache, PageSize::Size2M)
    }

    /// Maps one 1 GiB page. The host CPU must support 1 GiB pages (CPUID
    /// 8000_0001h EDX bit 26, Page1GB); [`Self::map_range`] never uses them.
    pub fn map_1g(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        perms: NptPermissions,
        cache: CacheType,
    ) -> Result<(), NptError> {
        self.map_page(gpa, hpa, perms, cache, PageSize::Size1G)
    }

    /// Checks alignment and limits of a page or range request.
    fn check_request(
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: u64,
        align: u64,
    ) -> Result<(), NptError> {
        if !gpa.is_aligned(align) || !hpa.is_aligned(align) || !len.is_multiple_of(align) {
            return Err(NptError::Misaligned);
        }
        let gpa_end = gpa.checked_add(len).ok_or(NptError::AddressTooLarge)?;
        let hpa_end = hpa.checked_add(len).ok_or(NptError::AddressTooLarge)?;
        if gpa_end.as_u64() > MAX_GUEST_PHYS || hpa_end.as_u64() > MAX_HOST_PHYS {
            return Err(NptError::AddressTooLarge);
        }
        Ok(())
    }

    fn map_page(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        perms: NptPermissions,
        cache: CacheType,
        size: PageSize,
    ) -> Result<(), NptError> {
        Self::check_request(gpa, hpa, size.bytes(), size.bytes())?;
        let target = leaf_level(size);
        let g = gpa.as_u64();
        let mut table = self.pml4;
        for level in 0..target {
            let index = table_index(g, level);
            let entry = self.entry(table, index);
            table = if !entry.is_present() {
                let next = Self::alloc_table(&mut self.frames, &mut self.memory)?;
                self.memory.table_mut(table)[index] = NptEntry::table(next).raw();
                next
            } else if level > 0 && entry.is_large() {
                return Err(NptError::AlreadyMapped(gpa));
            } else {
                entry.addr()
            };
        }
        let index = table_index(g, target);
        let entry = self.entry(table, index);
        if entry.is_present() {
            // A large leaf, a 4 KiB leaf, or a table with mappings beneath.
            let first = if entry.is_large() || target == 3 {
                g
            } else {
                self.first_mapped_in(g, g + size.bytes()).unwrap_or(g)
            };
            return Err(NptError::AlreadyMapped(GuestPhysAddr::new(first)));
        }
        let leaf = NptEntry::leaf(hpa, perms, cache, size != PageSize::Size4K);
        self.memory.table_mut(table)[index] = leaf.raw();
        Ok(())
    }

    /// Maps `len` bytes at `gpa` to `hpa`, using 2 MiB pages wherever both
    /// addresses are 2 MiB-aligned and at least 2 MiB remain, else 4 KiB
    /// pages. Fails without changing anything if any part of the range is
    /// already mapped; on [`NptError::OutOfFrames`] a prefix may stay mapped.
    pub fn map_range(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: u64,
        perms: NptPermissions,
        cache: CacheType,
    ) -> Result<MapStats, NptError> {
        Self::check_request(gpa, hpa, len, PAGE_SIZE)?;
        let start = gpa.as_u64();
        if let Some(first) = self.first_mapped_in(start, start + len) {
            return Err(NptError::AlreadyMapped(GuestPhysAddr::new(first)));
        }
        let big = PageSize::Size2M.bytes();
        let mut stats = MapStats::default();
        let mut offset = 0;
        while offset < len {
            // In range: check_request proved gpa + len and hpa + len fit.
            let g = GuestPhysAddr::new(start + offset);
            let h = HostPhysAddr::new(hpa.as_u64() + offset);
            if g.is_aligned(big) && h.is_aligned(big) && len - offset >= big {
                self.map_page(g, h, perms, cache, PageSize::Size2M)?;
                stats.pages_2m += 1;
                offset += big;
            } else {
                self.map_page(g, h, perms, cache, PageSize::Size4K)?;
                stats.pages_4k += 1;
                offset += PAGE_SIZE;
            }
        }
        Ok(stats)
    }

    fn lookup(&self, gpa: u64) -> Lookup {
        let mut table = self.pml4;
        for level in 0..4 {
            let entry = self.entry(table, table_index(gpa, level));
            if !entry.is_present() {
                return Lookup::Hole {
                    span: level_span(level),
                };
            }
            if level == 3 || (level > 0 && entry.is_large()) {
                return Lookup::Leaf { entry, level };
            }
            table = entry.addr();
        }
        // Unreachable: level 3 always returns above.
        Lookup::Hole { span: PAGE_SIZE }
    }

    /// The lowest mapped address in `[start, end)`, skipping unmapped
    /// subtrees whole.
    fn first_mapped_in(&self, start: u64, end: u64) -> Option<u64> {
        let mut addr = start;
        while addr < end {
            match self.lookup(addr) {
                Lookup::Leaf { .. } => return Some(addr),
                Lookup::Hole { span } => {
                    addr = (addr & !(span - 1)).checked_add(span)?;
                }
            }
        }
        None
    }

    /// What guest-physical `gpa` maps to, if anything.
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<Translation> {
        if gpa.as_u64() >= MAX_GUEST_PHYS {
            return None;
        }
        match self.lookup(gpa.as_u64()) {
            Lookup::Hole { .. } => None,
            Lookup::Leaf { entry, level } => {
                let page_size = level_page_size(level)?;
                let offset = gpa.as_u64() & (page_size.bytes() - 1);
                Some(Translation {
                    hpa: entry
                        .addr()
                        .align_down(page_size.bytes())
                        .checked_add(offset)?,
                    perms: entry.permissions(),
                    cache: entry.cache_type(),
                    page_size,
                })
            }
        }
    }

    /// Calls `f` for every leaf mapping, in ascending guest-physical order.
    pub fn walk(&self, mut f: impl FnMut(Mapping)) {
        self.walk_table(self.pml4, 0, 0, &mut f);
    }

    fn walk_table(
        &self,
        table: HostPhysAddr,
        level: usize,
        base: u64,
        f: &mut impl FnMut(Mapping),
    ) {
        for index in 0..ENTRIES_PER_TABLE {
            let entry = self.entry(table, index);
            if !entry.is_present() {
                continue;
            }
            let gpa = base | ((index as u64) << level_shift(level));
            if level == 3 || (level > 0 && entry.is_large()) {
                if let Some(size) = level_page_size(level) {
                    f(Mapping {
                        gpa: GuestPhysAddr::new(gpa),
                        hpa: entry.addr().align_down(size.bytes()),
                        size,
                        perms: entry.permissions(),
                        cache: entry.cache_type(),
                    });
                }
            } else {
                self.walk_table(entry.addr(), level + 1, gpa, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME_BASE: u64 = 0x1_0000_0000;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const WB: CacheType = CacheType::WriteBack;

    /// Hands out frames at FRAME_BASE upwards.
    struct BumpFrames {
        next: u64,
        end: u64,
    }

    impl FrameSource for BumpFrames {
        fn alloc_zeroed_frame(&mut self) -> Option<HostPhysAddr> {
            if self.next >= self.end {
                return None;
            }
            let frame = HostPhysAddr::new(self.next);
            self.next += PAGE_SIZE;
            Some(frame)
        }
    }

    /// Frames in a vector, indexed by (address - FRAME_BASE) / 4096.
    struct VecMemory(Vec<[u64; ENTRIES_PER_TABLE]>);

    // SAFETY: each frame address maps to its own vector element, borrowed
    // through `self`; nothing else aliases them (and no CPU walks them).
    #[allow(unsafe_code)]
    unsafe impl TableMemory for VecMemory {
        fn table(&self, frame: HostPhysAddr) -> &[u64; ENTRIES_PER_TABLE] {
            &self.0[((frame.as_u64() - FRAME_BASE) / PAGE_SIZE) as usize]
        }
        fn table_mut(&mut self, frame: HostPhysAddr) -> &mut [u64; ENTRIES_PER_TABLE] {
            &mut self.0[((frame.as_u64() - FRAME_BASE) / PAGE_SIZE) as usize]
        }
    }

    fn npt(frames: usize) -> Npt<BumpFrames, VecMemory> {
        let source = BumpFrames {
            next: FRAME_BASE,
            end: FRAME_BASE + frames as u64 * PAGE_SIZE,
        };
        // Garbage in every frame: the Npt must zero what it allocates.
        Npt::new(
            source,
            VecMemory(vec![[0xdead_beef; ENTRIES_PER_TABLE]; frames]),
        )
        .unwrap()
    }

    fn gpa(a: u64) -> GuestPhysAddr {
        GuestPhysAddr::new(a)
    }
    fn hpa(a: u64) -> HostPhysAddr {
        HostPhysAddr::new(a)
    }

    fn mappings(n: &Npt<BumpFrames, VecMemory>) -> Vec<Mapping> {
        let mut v = Vec::new();
        n.walk(|m| v.push(m));
        v
    }

    #[test]
    fn entry_bits() {
        // APM Vol. 2, 5.4.1: P 0, R/W 1, U/S 2, PWT 3, PCD 4, A 5, D 6, PS 7,
        // G 8, NX 63.
        assert_eq!(NptFlags::PRESENT.bits(), 1);
        assert_eq!(NptFlags::WRITE.bits(), 2);
        assert_eq!(NptFlags::USER.bits(), 4);
        assert_eq!(NptFlags::WRITE_THROUGH.bits(), 8);
        assert_eq!(NptFlags::CACHE_DISABLE.bits(), 0x10);
        assert_eq!(NptFlags::ACCESSED.bits(), 0x20);
        assert_eq!(NptFlags::DIRTY.bits(), 0x40);
        assert_eq!(NptFlags::PAGE_SIZE.bits(), 0x80);
        assert_eq!(NptFlags::GLOBAL.bits(), 0x100);
        assert_eq!(NptFlags::NO_EXECUTE.bits(), 1 << 63);

        let e = NptEntry::leaf(hpa(0x1234_5000), NptPermissions::RW, WB, false);
        assert_eq!(e.raw(), 0x1234_5000 | 0b111 | (1 << 63));
        assert!(e.is_present() && !e.is_large());
        assert_eq!(e.permissions(), NptPermissions::RW);
        assert_eq!(e.addr(), hpa(0x1234_5000));
        let e = NptEntry::leaf(
            hpa(0x20_0000),
            NptPermissions::RX,
            CacheType::Uncacheable,
            true,
        );
        assert_eq!(e.raw(), 0x20_0000 | 0b101 | 0x18 | 0x80);
        assert_eq!(e.permissions(), NptPermissions::RX);
        assert_eq!(e.cache_type(), CacheType::Uncacheable);
        let ro = NptEntry::leaf(hpa(0x3000), NptPermissions::READ_ONLY, WB, false);
        assert_eq!(ro.raw(), 0x3000 | 0b101 | (1 << 63));
        assert_eq!(ro.permissions(), NptPermissions::empty());
        // Tables: P, RW, US, never NX.
        assert_eq!(NptEntry::table(hpa(0x5000)).raw(), 0x5007);
        assert!(!NptEntry::EMPTY.is_present());
        assert!(format!("{e:?}").contains("HPA(0x200000)"));
    }

    #[test]
    fn cache_types_round_trip() {
        for c in [
            CacheType::WriteBack,
            CacheType::WriteThrough,
            CacheType::UncacheableMinus,
            CacheType::Uncacheable,
        ] {
            assert_eq!(CacheType::from_flags(c.flags()), c);
        }
        assert_eq!(CacheType::WriteThrough.flags(), NptFlags::WRITE_THROUGH);
        assert_eq!(CacheType::UncacheableMinus.flags(), NptFlags::CACHE_DISABLE);
    }

    #[test]
    fn map_4k_and_translate() {
        let mut n = npt(8);
        n.map_4k(gpa(0x7000), hpa(0x4_2000), NptPermissions::RW, WB)
            .unwrap();
        let t = n.translate(gpa(0x7abc)).unwrap();
        assert_eq!(t.hpa, hpa(0x4_2abc));
        assert_eq!(t.perms, NptPermissions::RW);
        assert_eq!(t.cache, WB);
        assert_eq!(t.page_size, PageSize::Size4K);
        assert_eq!(n.translate(gpa(0x6fff)), None);
        assert_eq!(n.translate(gpa(0x8000)), None);
        assert_eq!(n.translate(gpa(MAX_GUEST_PHYS)), None);
        assert_eq!(n.n_cr3(), hpa(FRAME_BASE));
        assert_eq!(n.pml4(), hpa(FRAME_BASE));
        // PML4 + PDPT + PD + PT.
        assert_eq!(n.into_parts().0.next, FRAME_BASE + 4 * PAGE_SIZE);
    }

    #[test]
    fn map_2m_and_1g() {
        let mut n = npt(8);
        n.map_2m(gpa(0x4000_0000), hpa(0x20_0000), NptPermissions::RWX, WB)
            .unwrap();
        let t = n.translate(gpa(0x401f_fff8)).unwrap();
        assert_eq!((t.hpa, t.page_size), (hpa(0x3f_fff8), PageSize::Size2M));
        assert_eq!(n.translate(gpa(0x4020_0000)), None);
        assert_eq!(
            n.map_2m(gpa(0x1000), hpa(0x20_0000), NptPermissions::RWX, WB),
            Err(NptError::Misaligned)
        );
        assert_eq!(
            n.map_2m(gpa(0x20_0000), hpa(0x1000), NptPermissions::RWX, WB),
            Err(NptError::Misaligned)
        );
        n.map_1g(gpa(2 * GIB), hpa(5 * GIB), NptPermissions::RW, WB)
            .unwrap();
        let t = n.translate(gpa(3 * GIB - 1)).unwrap();
        assert_eq!((t.hpa, t.page_size), (hpa(6 * GIB - 1), PageSize::Size1G));
        assert_eq!(
            n.map_1g(gpa(GIB + 0x20_0000), hpa(0), NptPermissions::RW, WB),
            Err(NptError::Misaligned)
        );
        // A 1 GiB page over the PD holding the 2 MiB page.
        assert_eq!(
            n.map_1g(gpa(GIB), hpa(0), NptPermissions::RW, WB),
            Err(NptError::AlreadyMapped(gpa(0x4000_0000)))
        );
        // A 4 KiB page inside the 1 GiB page.
        assert_eq!(
            n.map_4k(gpa(2 * GIB + 0x5000), hpa(0), NptPermissions::RW, WB),
            Err(NptError::AlreadyMapped(gpa(2 * GIB + 0x5000)))
        );
    }

    #[test]
    fn map_range_prefers_2m_pages() {
        let mut n = npt(16);
        // 1 MiB of 4K pages up to the 2 MiB boundary, two 2 MiB pages, 12 KiB.
        let stats = n
            .map_range(
                gpa(MIB),
                hpa(0x8010_0000),
                5 * MIB + 0x3000,
                NptPermissions::RWX,
                WB,
            )
            .unwrap();
        assert_eq!(
            stats,
            MapStats {
                pages_4k: 256 + 3,
                pages_2m: 2
            }
        );
        assert_eq!(n.translate(gpa(MIB)).unwrap().page_size, PageSize::Size4K);
        let t = n.translate(gpa(2 * MIB + 0x1234)).unwrap();
        assert_eq!((t.hpa, t.page_size), (hpa(0x8020_1234), PageSize::Size2M));
        let t = n.translate(gpa(6 * MIB + 0x2fff)).unwrap();
        assert_eq!((t.hpa, t.page_size), (hpa(0x8060_2fff), PageSize::Size4K));
        assert_eq!(n.translate(gpa(6 * MIB + 0x3000)), None);
        assert_eq!(n.translate(gpa(MIB - 1)), None);
    }

    #[test]
    fn map_range_uses_4k_when_alignments_differ() {
        let mut n = npt(16);
        let stats = n
            .map_range(gpa(0), hpa(0x1000), 4 * MIB, NptPermissions::RW, WB)
            .unwrap();
        assert_eq!(
            stats,
            MapStats {
                pages_4k: 1024,
                pages_2m: 0
            }
        );
        assert_eq!(
            n.translate(gpa(3 * MIB)).unwrap().hpa,
            hpa(3 * MIB + 0x1000)
        );
    }

    #[test]
    fn overlapping_maps_are_refused() {
        let mut n = npt(16);
        n.map_range(
            gpa(0x20_0000),
            hpa(0x20_0000),
            0x20_0000,
            NptPermissions::RWX,
            WB,
        )
        .unwrap();
        n.map_4k(gpa(0x40_5000), hpa(0x9000), NptPermissions::READ_ONLY, WB)
            .unwrap();
        assert_eq!(
            n.map_4k(gpa(0x21_0000), hpa(0), NptPermissions::RW, WB),
            Err(NptError::AlreadyMapped(gpa(0x21_0000)))
        );
        assert_eq!(
            n.map_2m(gpa(0x40_0000), hpa(0), NptPermissions::RW, WB),
            Err(NptError::AlreadyMapped(gpa(0x40_5000)))
        );
        assert_eq!(
            n.map_4k(gpa(0x40_5000), hpa(0), NptPermissions::RW, WB),
            Err(NptError::AlreadyMapped(gpa(0x40_5000)))
        );
        let before = mappings(&n);
        assert_eq!(
            n.map_range(
                gpa(0x1_0000),
                hpa(0x1_0000),
                0x40_0000,
                NptPermissions::RW,
                WB
            ),
            Err(NptError::AlreadyMapped(gpa(0x20_0000)))
        );
        assert_eq!(mappings(&n), before);
    }

    #[test]
    fn bad_requests() {
        let mut n = npt(8);
        assert_eq!(
            n.map_4k(gpa(0x1001), hpa(0x1000), NptPermissions::RW, WB),
            Err(NptError::Misaligned)
        );
        assert_eq!(
            n.map_range(gpa(0), hpa(0), 0x1800, NptPermissions::RW, WB),
            Err(NptError::Misaligned)
        );
        assert_eq!(
            n.map_4k(gpa(MAX_GUEST_PHYS), hpa(0), NptPermissions::RW, WB),
            Err(NptError::AddressTooLarge)
        );
        assert_eq!(
            n.map_range(
                gpa(MAX_GUEST_PHYS - 0x1000),
                hpa(0),
                0x2000,
                NptPermissions::RW,
                WB
            ),
            Err(NptError::AddressTooLarge)
        );
        assert_eq!(
            n.map_4k(gpa(0), hpa(MAX_HOST_PHYS), NptPermissions::RW, WB),
            Err(NptError::AddressTooLarge)
        );
        assert_eq!(
            n.map_range(gpa(0), hpa(0), !0xfff, NptPermissions::RW, WB),
            Err(NptError::AddressTooLarge)
        );
        assert_eq!(
            n.map_range(gpa(0), hpa(0), 0, NptPermissions::RW, WB),
            Ok(MapStats::default())
        );
        assert!(mappings(&n).is_empty());
        // The highest mappable page works.
        n.map_4k(
            gpa(MAX_GUEST_PHYS - 0x1000),
            hpa(MAX_HOST_PHYS - 0x1000),
            NptPermissions::RW,
            WB,
        )
        .unwrap();
        assert_eq!(
            n.translate(gpa(MAX_GUEST_PHYS - 1)).unwrap().hpa,
            hpa(MAX_HOST_PHYS - 1)
        );
    }

    #[test]
    fn out_of_frames() {
        // PML4 only: the first mapping needs three more tables.
        let mut n = npt(2);
        assert_eq!(
            n.map_4k(gpa(0), hpa(0), NptPermissions::RW, WB),
            Err(NptError::OutOfFrames)
        );
        assert_eq!(n.translate(gpa(0)), None);
        assert!(matches!(
            Npt::new(BumpFrames { next: 0, end: 0 }, VecMemory(Vec::new())),
            Err(NptError::OutOfFrames)
        ));
        assert_eq!(
            format!("{}", NptError::OutOfFrames),
            "out of frames for nested page tables"
        );
    }

    #[test]
    fn misaligned_frames_are_refused() {
        let source = BumpFrames {
            next: FRAME_BASE + 8,
            end: FRAME_BASE + PAGE_SIZE,
        };
        assert!(matches!(
            Npt::new(source, VecMemory(Vec::new())),
            Err(NptError::BadFrame(f)) if f == hpa(FRAME_BASE + 8)
        ));
    }

    #[test]
    fn walk_reports_mixed_page_sizes_once() {
        let mut n = npt(32);
        n.map_range(gpa(0), hpa(0x1000_0000), 6 * MIB, NptPermissions::RWX, WB)
            .unwrap();
        n.map_range(
            gpa(0x80_0000_0000),
            hpa(0x2000_0000),
            0x5000,
            NptPermissions::RW,
            WB,
        )
        .unwrap();
        n.map_4k(
            gpa(0xfee0_0000),
            hpa(0xfee0_0000),
            NptPermissions::RW,
            CacheType::Uncacheable,
        )
        .unwrap();
        n.map_1g(gpa(4 * GIB), hpa(8 * GIB), NptPermissions::RX, WB)
            .unwrap();
        let maps = mappings(&n);
        assert_eq!(maps.len(), 3 + 1 + 1 + 5);
        for pair in maps.windows(2) {
            let end = pair[0].gpa.as_u64() + pair[0].size.bytes();
            assert!(end <= pair[1].gpa.as_u64(), "{pair:?}");
        }
        let total: u64 = maps.iter().map(|m| m.size.bytes()).sum();
        assert_eq!(total, 6 * MIB + 0x1000 + GIB + 0x5000);
        for m in &maps {
            let t = n.translate(m.gpa).unwrap();
            assert_eq!(
                (t.hpa, t.page_size, t.perms, t.cache),
                (m.hpa, m.size, m.perms, m.cache)
            );
        }
        assert_eq!(maps[0].size, PageSize::Size2M);
        assert_eq!(maps[3].gpa, gpa(0xfee0_0000));
        assert_eq!(maps[3].cache, CacheType::Uncacheable);
        assert_eq!(maps[4].gpa, gpa(4 * GIB));
        assert_eq!(maps[4].size, PageSize::Size1G);
        assert_eq!(maps[5].gpa, gpa(0x80_0000_0000));
    }

    #[test]
    fn tables_hold_hardware_format() {
        let mut n = npt(8);
        n.map_4k(gpa(0x8000_1000), hpa(0x5000), NptPermissions::RX, WB)
            .unwrap();
        let (_, mem, pml4) = n.into_parts();
        let pml4e = NptEntry::from_raw(mem.table(pml4)[0]);
        assert_eq!(pml4e.raw() & 0xfff, 0b111, "P, RW, US on tables");
        let pdpte = NptEntry::from_raw(mem.table(pml4e.addr())[2]);
        assert_eq!(pdpte.raw() & (1 << 63), 0, "no NX on tables");
        let pde = NptEntry::from_raw(mem.table(pdpte.addr())[0]);
        let pte = mem.table(pde.addr())[1];
        assert_eq!(pte, 0x5000 | 0b101);
        // Every other slot of every table was zeroed.
        assert_eq!(mem.table(pml4).iter().filter(|e| **e != 0).count(), 1);
    }
}
