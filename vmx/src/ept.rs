//! Extended page tables (SDM Vol. 3C, 29.3; EPTP in 25.6.11).
//!
//! [`EptEntry`] and [`Eptp`] give the hardware formats named fields.
//! [`Ept`] builds and queries a 4-level EPT for one guest. It never touches
//! memory itself: frames come from a [`FrameSource`] and are reached through a
//! [`TableMemory`], so the whole builder runs on the host against an in-memory
//! fake, and on the kernel through its physical-memory mapping.
//!
//! The EPT is meant to be built before the guest runs. Changing a live EPT is
//! possible (adding mappings needs no invalidation, SDM 29.4.3) but A/D
//! updates by the processor race with the builder's plain reads.

use core::fmt;

use bitflags::bitflags;

use crate::addr::{GuestPhysAddr, HostPhysAddr, PageSize, PAGE_SIZE};

/// Bits 51:12 of an EPT entry or EPTP: the physical address (SDM Tables 29-1..29-6).
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// First guest-physical address a 4-level EPT cannot map (SDM 29.3.2: bits 47:0).
pub const MAX_GUEST_PHYS: u64 = 1 << 48;
/// First host-physical address an EPT entry cannot hold (bits 51:12, SDM 29.3.2).
pub const MAX_HOST_PHYS: u64 = 1 << 52;
/// Entries per EPT paging structure (SDM 29.3.2).
pub const ENTRIES_PER_TABLE: usize = 512;

const MEMORY_TYPE_SHIFT: u32 = 3;
const MEMORY_TYPE_MASK: u64 = 0b111 << MEMORY_TYPE_SHIFT;

/// An EPT memory type (SDM 29.3.7, 29.3.3.1). Types 2, 3
/// and 7 are reserved and cannot be expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MemoryType {
    /// 0: uncacheable (UC).
    Uncacheable = 0,
    /// 1: write combining (WC).
    WriteCombining = 1,
    /// 4: write-through (WT).
    WriteThrough = 4,
    /// 5: write-protected (WP).
    WriteProtected = 5,
    /// 6: write-back (WB).
    WriteBack = 6,
}

impl MemoryType {
    /// Decodes a 3-bit memory type; `None` for the reserved values 2, 3 and 7.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::Uncacheable),
            1 => Some(Self::WriteCombining),
            4 => Some(Self::WriteThrough),
            5 => Some(Self::WriteProtected),
            6 => Some(Self::WriteBack),
            _ => None,
        }
    }

    /// The 3-bit encoding.
    pub const fn raw(self) -> u8 {
        self as u8
    }
}

bitflags! {
    /// The flag bits of an EPT entry (SDM Tables 29-1..29-6). The memory type
    /// (bits 5:3) and address (bits 51:12) have their own accessors on
    /// [`EptEntry`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EptFlags: u64 {
        /// Bit 0: read access (SDM Tables 29-1..29-6).
        const READ = 1 << 0;
        /// Bit 1: write access (SDM Tables 29-1..29-6).
        const WRITE = 1 << 1;
        /// Bit 2: execute access (supervisor-mode with mode-based control) (SDM Tables 29-1..29-6).
        const EXECUTE = 1 << 2;
        /// Bit 6: ignore PAT memory type, leaf entries only (SDM Tables 29-2, 29-4, 29-6).
        const IGNORE_PAT = 1 << 6;
        /// Bit 7: maps a page (1 GiB in a PDPTE, 2 MiB in a PDE) (SDM Tables 29-2, 29-4).
        const LARGE = 1 << 7;
        /// Bit 8: accessed, if EPT A/D flags are enabled (SDM 29.3.5).
        const ACCESSED = 1 << 8;
        /// Bit 9: dirty, leaf entries only, if A/D flags are enabled (SDM 29.3.5).
        const DIRTY = 1 << 9;
        /// Bit 10: user-mode execute access with mode-based execute control (SDM Table 29-6).
        const USER_EXECUTE = 1 << 10;
        /// Bit 63: suppress #VE, leaf entries only (SDM Table 29-6).
        const SUPPRESS_VE = 1 << 63;
    }
}

bitflags! {
    /// Access rights a guest gets to a mapping (EPT entry bits 2:0,
    /// SDM Tables 29-1..29-6).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EptPermissions: u8 {
        /// Bit 0: reads allowed.
        const READ = 1 << 0;
        /// Bit 1: writes allowed (requires READ, SDM 29.3.3.1).
        const WRITE = 1 << 1;
        /// Bit 2: instruction fetches allowed.
        const EXECUTE = 1 << 2;
        /// Read, write and execute.
        const RWX = Self::READ.bits() | Self::WRITE.bits() | Self::EXECUTE.bits();
        /// Read and write, no execute.
        const RW = Self::READ.bits() | Self::WRITE.bits();
        /// Read and execute.
        const RX = Self::READ.bits() | Self::EXECUTE.bits();
    }
}

impl EptPermissions {
    /// Whether an entry with these rights would be present and not an EPT
    /// misconfiguration: not empty, and not writable without readable
    /// (SDM 29.3.3.1). Execute-only needs a CPU capability (SDM A.10).
    pub const fn is_valid_mapping(self) -> bool {
        !self.is_empty() && (self.contains(Self::READ) || !self.contains(Self::WRITE))
    }
}

/// One 64-bit EPT paging-structure entry (SDM 29.3.2, Tables 29-1..29-6).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct EptEntry(u64);

impl EptEntry {
    /// The not-present entry.
    pub const EMPTY: EptEntry = EptEntry(0);

    /// Wraps a raw entry.
    pub const fn from_raw(raw: u64) -> Self {
        EptEntry(raw)
    }

    /// The raw entry.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// An entry referencing the next paging structure, with all access allowed
    /// (the leaf entry decides) (SDM Tables 29-1, 29-3, 29-5).
    pub const fn table(next: HostPhysAddr) -> Self {
        EptEntry((next.as_u64() & ADDR_MASK) | EptPermissions::RWX.bits() as u64)
    }

    /// A leaf entry mapping a page at `frame`; `large` for a 2 MiB PDE or
    /// 1 GiB PDPTE (SDM Tables 29-2, 29-4, 29-6).
    pub const fn leaf(
        frame: HostPhysAddr,
        perms: EptPermissions,
        memory_type: MemoryType,
        large: bool,
    ) -> Self {
        let large_bit = if large { EptFlags::LARGE.bits() } else { 0 };
        EptEntry(
            (frame.as_u64() & ADDR_MASK)
                | perms.bits() as u64
                | ((memory_type.raw() as u64) << MEMORY_TYPE_SHIFT)
                | large_bit,
        )
    }

    /// Whether the entry is present: any of bits 2:0 set (SDM 29.3.2).
    pub const fn is_present(self) -> bool {
        self.0 & 0b111 != 0
    }

    /// Whether bit 7 is set (a large-page leaf in a PDPTE or PDE).
    pub const fn is_large(self) -> bool {
        self.0 & EptFlags::LARGE.bits() != 0
    }

    /// The flag bits.
    pub const fn flags(self) -> EptFlags {
        EptFlags::from_bits_truncate(self.0)
    }

    /// Replaces the flag bits, keeping address and memory type.
    pub fn set_flags(&mut self, flags: EptFlags) {
        self.0 = (self.0 & !EptFlags::all().bits()) | flags.bits();
    }

    /// Bits 2:0 as access rights.
    pub const fn permissions(self) -> EptPermissions {
        EptPermissions::from_bits_truncate((self.0 & 0b111) as u8)
    }

    /// Replaces bits 2:0.
    pub fn set_permissions(&mut self, perms: EptPermissions) {
        self.0 = (self.0 & !0b111) | u64::from(perms.bits());
    }

    /// The physical address in bits 51:12: a page frame (leaf) or the next
    /// paging structure.
    pub const fn addr(self) -> HostPhysAddr {
        HostPhysAddr::new(self.0 & ADDR_MASK)
    }

    /// Replaces bits 51:12 (low 12 bits of `addr` are dropped).
    pub fn set_addr(&mut self, addr: HostPhysAddr) {
        self.0 = (self.0 & !ADDR_MASK) | (addr.as_u64() & ADDR_MASK);
    }

    /// The memory type of a leaf entry (bits 5:3); `None` if reserved.
    pub const fn memory_type(self) -> Option<MemoryType> {
        MemoryType::from_raw(((self.0 & MEMORY_TYPE_MASK) >> MEMORY_TYPE_SHIFT) as u8)
    }

    /// Replaces bits 5:3.
    pub fn set_memory_type(&mut self, memory_type: MemoryType) {
        self.0 = (self.0 & !MEMORY_TYPE_MASK) | (u64::from(memory_type.raw()) << MEMORY_TYPE_SHIFT);
    }
}

impl fmt::Debug for EptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EptEntry")
            .field("addr", &self.addr())
            .field("flags", &self.flags())
            .field("memory_type", &self.memory_type())
            .finish()
    }
}

/// The extended-page-table pointer, VMCS field [`crate::vmcs::EPT_POINTER`]
/// (SDM 25.6.11).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Eptp(u64);

impl Eptp {
    /// Bits 2:0: memory type of the paging structures (SDM 25.6.11).
    const MEMORY_TYPE_MASK: u64 = 0b111;
    /// Bits 5:3: page-walk length minus 1 (SDM 25.6.11).
    const WALK_SHIFT: u32 = 3;
    /// Bit 6: enable accessed and dirty flags (SDM 25.6.11).
    const ACCESSED_DIRTY: u64 = 1 << 6;

    /// An EPTP for a 4-level EPT rooted at `pml4`: write-back paging
    /// structures, page-walk length 4, A/D flags off. The low 12 bits of
    /// `pml4` are dropped.
    pub const fn new(pml4: HostPhysAddr) -> Self {
        Eptp((pml4.as_u64() & ADDR_MASK) | (3 << Self::WALK_SHIFT) | MemoryType::WriteBack as u64)
    }

    /// Enables or disables EPT accessed/dirty flags (bit 6; needs SDM A.10 bit 21).
    pub const fn with_accessed_dirty(self, enable: bool) -> Self {
        if enable {
            Eptp(self.0 | Self::ACCESSED_DIRTY)
        } else {
            Eptp(self.0 & !Self::ACCESSED_DIRTY)
        }
    }

    /// Sets the paging-structure memory type; only uncacheable and write-back
    /// are allowed (SDM 25.6.11), so other types give `None`.
    pub const fn with_memory_type(self, memory_type: MemoryType) -> Option<Self> {
        match memory_type {
            MemoryType::Uncacheable | MemoryType::WriteBack => Some(Eptp(
                (self.0 & !Self::MEMORY_TYPE_MASK) | memory_type as u64,
            )),
            _ => None,
        }
    }

    /// Wraps a raw EPTP value.
    pub const fn from_raw(raw: u64) -> Self {
        Eptp(raw)
    }

    /// The raw value to write to the EPTP field.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Paging-structure memory type (bits 2:0).
    pub const fn memory_type(self) -> Option<MemoryType> {
        MemoryType::from_raw((self.0 & Self::MEMORY_TYPE_MASK) as u8)
    }

    /// The page-walk length (bits 5:3, plus 1).
    pub const fn page_walk_length(self) -> u8 {
        ((self.0 >> Self::WALK_SHIFT) & 0b111) as u8 + 1
    }

    /// Whether A/D flags are enabled (bit 6).
    pub const fn accessed_dirty(self) -> bool {
        self.0 & Self::ACCESSED_DIRTY != 0
    }

    /// The PML4 table address (bits 51:12).
    pub const fn pml4(self) -> HostPhysAddr {
        HostPhysAddr::new(self.0 & ADDR_MASK)
    }
}

impl fmt::Debug for Eptp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Eptp({:#x})", self.0)
    }
}

/// Supplies 4 KiB frames for EPT paging structures.
///
/// A frame must be 4 KiB-aligned (the [`Ept`] checks) and not used for
/// anything else while the EPT exists (promised by the [`TableMemory`]
/// implementation). It need not be zeroed: the [`Ept`] zeroes it.
pub trait FrameSource {
    /// A fresh frame, or `None` when out of memory.
    fn alloc_zeroed_frame(&mut self) -> Option<HostPhysAddr>;
}

/// Access to EPT paging-structure frames by host-physical address.
///
/// # Safety
///
/// The processor walks the tables the [`Ept`] builds, so the translations the
/// `Ept` checks are the translations a guest gets only if this access is
/// faithful. For every `frame` passed in (always a frame that the paired
/// [`FrameSource`] handed to the same `Ept`), an implementation guarantees:
///
/// - the returned array *is* the 4096 bytes at host-physical `frame`, the
///   memory the processor reads when it walks the EPT;
/// - that memory is valid for reads (and, for `table_mut`, writes) for the
///   lifetime of the borrow, and no other reference to it exists meanwhile:
///   the frame belongs to this `Ept` alone;
/// - distinct frames give non-overlapping arrays.
#[allow(unsafe_code)] // Declaring the contract; implementations live in the kernel.
pub unsafe trait TableMemory {
    /// The paging structure at `frame`.
    fn table(&self, frame: HostPhysAddr) -> &[u64; ENTRIES_PER_TABLE];
    /// The paging structure at `frame`, writable.
    fn table_mut(&mut self, frame: HostPhysAddr) -> &mut [u64; ENTRIES_PER_TABLE];
}

/// Why an EPT operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EptError {
    /// An address or length is not aligned to the page size used.
    Misaligned,
    /// This guest-physical address is already mapped.
    AlreadyMapped(GuestPhysAddr),
    /// The frame source ran out of frames. A [`Ept::map_range`] may have mapped
    /// part of the range.
    OutOfFrames,
    /// The guest-physical range reaches 2^48, or the host-physical one 2^52.
    AddressTooLarge,
    /// Permissions that are empty or writable without readable (SDM 29.3.3.1).
    InvalidPermissions(EptPermissions),
    /// The frame source returned an unusable frame (misaligned or above 2^52).
    BadFrame(HostPhysAddr),
}

impl fmt::Display for EptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EptError::Misaligned => f.write_str("address or length not page-aligned"),
            EptError::AlreadyMapped(gpa) => write!(f, "{gpa} is already mapped"),
            EptError::OutOfFrames => f.write_str("out of frames for EPT tables"),
            EptError::AddressTooLarge => f.write_str("address beyond what the EPT can map"),
            EptError::InvalidPermissions(p) => write!(f, "invalid EPT permissions {p:?}"),
            EptError::BadFrame(hpa) => write!(f, "frame source returned unusable frame {hpa}"),
        }
    }
}

impl core::error::Error for EptError {}

/// Where a guest-physical address leads ([`Ept::translate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The host-physical address, including the offset within the page.
    pub hpa: HostPhysAddr,
    /// The access rights of the leaf entry.
    pub perms: EptPermissions,
    /// The memory type of the leaf entry (`None` if reserved).
    pub memory_type: Option<MemoryType>,
    /// The size of the page containing the address.
    pub page_size: PageSize,
}

/// One leaf mapping, as reported by [`Ept::walk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// First guest-physical address of the page.
    pub gpa: GuestPhysAddr,
    /// First host-physical address of the page.
    pub hpa: HostPhysAddr,
    /// The page size.
    pub size: PageSize,
    /// Access rights.
    pub perms: EptPermissions,
    /// Memory type (`None` if reserved).
    pub memory_type: Option<MemoryType>,
}

/// How many pages of each size a [`Ept::map_range`] used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapStats {
    /// 4 KiB pages mapped.
    pub pages_4k: u64,
    /// 2 MiB pages mapped.
    pub pages_2m: u64,
}

/// Bit position of the index into the paging structure at `level`
/// (0 = PML4, 1 = PDPT, 2 = PD, 3 = PT) (SDM 29.3.2).
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
    Leaf { entry: EptEntry, level: usize },
    /// Nothing is mapped in the aligned block of `span` bytes around the address.
    Hole { span: u64 },
}

/// A 4-level EPT for one guest (SDM 29.3).
pub struct Ept<F, M> {
    frames: F,
    memory: M,
    pml4: HostPhysAddr,
}

impl<F, M> fmt::Debug for Ept<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ept")
            .field("pml4", &self.pml4)
            .finish_non_exhaustive()
    }
}

impl<F: FrameSource, M: TableMemory> Ept<F, M> {
    /// An empty EPT: allocates the PML4 table.
    pub fn new(mut frames: F, mut memory: M) -> Result<Self, EptError> {
        let pml4 = Self::alloc_table(&mut frames, &mut memory)?;
        Ok(Ept {
            frames,
            memory,
            pml4,
        })
    }

    /// The PML4 table's address.
    pub fn pml4(&self) -> HostPhysAddr {
        self.pml4
    }

    /// The EPTP for this EPT: write-back, 4-level walk, A/D flags off
    /// (use [`Eptp::with_accessed_dirty`] to turn them on).
    pub fn eptp(&self) -> Eptp {
        Eptp::new(self.pml4)
    }

    /// The frame source and table memory, giving up the EPT (for freeing it
    /// after the guest is gone).
    pub fn into_parts(self) -> (F, M, HostPhysAddr) {
        (self.frames, self.memory, self.pml4)
    }

    fn alloc_table(frames: &mut F, memory: &mut M) -> Result<HostPhysAddr, EptError> {
        let frame = frames.alloc_zeroed_frame().ok_or(EptError::OutOfFrames)?;
        if !frame.is_page_aligned() || frame.as_u64() >= MAX_HOST_PHYS {
            return Err(EptError::BadFrame(frame));
        }
        *memory.table_mut(frame) = [0; ENTRIES_PER_TABLE];
        Ok(frame)
    }

    fn entry(&self, table: HostPhysAddr, index: usize) -> EptEntry {
        EptEntry(self.memory.table(table)[index])
    }

    /// Maps one 4 KiB page.
    pub fn map_4k(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        perms: EptPermissions,
        memory_type: MemoryType,
    ) -> Result<(), EptError> {
        self.map_page(gpa, hpa, perms, memory_type, PageSize::Size4K)
    }

    /// Maps one 2 MiB page (needs SDM A.10 bit 16, reported in
    /// [`crate::caps::EptVpidCap::PAGE_2M`]).
    pub fn map_2m(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        perms: EptPermissions,
        memory_type: MemoryType,
    ) -> Result<(), EptError> {
        self.map_page(gpa, hpa, perms, memory_type, PageSize::Size2M)
    }

    /// Checks a page-or-range request: permissions, alignment, limits.
    fn check_request(
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: u64,
        align: u64,
        perms: EptPermissions,
    ) -> Result<(), EptError> {
        if !perms.is_valid_mapping() {
            return Err(EptError::InvalidPermissions(perms));
        }
        if !gpa.is_aligned(align) || !hpa.is_aligned(align) || !len.is_multiple_of(align) {
            return Err(EptError::Misaligned);
        }
        let gpa_end = gpa.checked_add(len).ok_or(EptError::AddressTooLarge)?;
        let hpa_end = hpa.checked_add(len).ok_or(EptError::AddressTooLarge)?;
        if gpa_end.as_u64() > MAX_GUEST_PHYS || hpa_end.as_u64() > MAX_HOST_PHYS {
            return Err(EptError::AddressTooLarge);
        }
        Ok(())
    }

    fn map_page(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        perms: EptPermissions,
        memory_type: MemoryType,
        size: PageSize,
    ) -> Result<(), EptError> {
        Self::check_request(gpa, hpa, size.bytes(), size.bytes(), perms)?;
        let target = leaf_level(size);
        let g = gpa.as_u64();
        let mut table = self.pml4;
        for level in 0..target {
            let index = table_index(g, level);
            let entry = self.entry(table, index);
            table = if !entry.is_present() {
                let next = Self::alloc_table(&mut self.frames, &mut self.memory)?;
                self.memory.table_mut(table)[index] = EptEntry::table(next).raw();
                next
            } else if entry.is_large() {
                return Err(EptError::AlreadyMapped(gpa));
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
            return Err(EptError::AlreadyMapped(GuestPhysAddr::new(first)));
        }
        let leaf = EptEntry::leaf(hpa, perms, memory_type, size != PageSize::Size4K);
        self.memory.table_mut(table)[index] = leaf.raw();
        Ok(())
    }

    /// Maps `len` bytes at `gpa` to `hpa`, using 2 MiB pages wherever both
    /// addresses are 2 MiB-aligned and at least 2 MiB remain, else 4 KiB pages.
    /// Fails without changing anything if any part of the range is already
    /// mapped; on [`EptError::OutOfFrames`] a prefix may stay mapped.
    pub fn map_range(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: u64,
        perms: EptPermissions,
        memory_type: MemoryType,
    ) -> Result<MapStats, EptError> {
        Self::check_request(gpa, hpa, len, PAGE_SIZE, perms)?;
        let start = gpa.as_u64();
        if let Some(first) = self.first_mapped_in(start, start + len) {
            return Err(EptError::AlreadyMapped(GuestPhysAddr::new(first)));
        }
        let big = PageSize::Size2M.bytes();
        let mut stats = MapStats::default();
        let mut offset = 0;
        while offset < len {
            // In range: check_request proved gpa + len and hpa + len fit.
            let g = GuestPhysAddr::new(start + offset);
            let h = HostPhysAddr::new(hpa.as_u64() + offset);
            if g.is_aligned(big) && h.is_aligned(big) && len - offset >= big {
                self.map_page(g, h, perms, memory_type, PageSize::Size2M)?;
                stats.pages_2m += 1;
                offset += big;
            } else {
                self.map_page(g, h, perms, memory_type, PageSize::Size4K)?;
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
                    memory_type: entry.memory_type(),
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
                        memory_type: entry.memory_type(),
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

    fn ept(frames: usize) -> Ept<BumpFrames, VecMemory> {
        let source = BumpFrames {
            next: FRAME_BASE,
            end: FRAME_BASE + frames as u64 * PAGE_SIZE,
        };
        // Garbage in every frame: the Ept must zero what it allocates.
        Ept::new(
            source,
            VecMemory(vec![[0xdead_beef; ENTRIES_PER_TABLE]; frames]),
        )
        .unwrap()
    }

    const MIB: u64 = 1 << 20;
    const WB: MemoryType = MemoryType::WriteBack;

    fn gpa(a: u64) -> GuestPhysAddr {
        GuestPhysAddr::new(a)
    }
    fn hpa(a: u64) -> HostPhysAddr {
        HostPhysAddr::new(a)
    }

    fn mappings(e: &Ept<BumpFrames, VecMemory>) -> Vec<Mapping> {
        let mut v = Vec::new();
        e.walk(|m| v.push(m));
        v
    }

    #[test]
    fn entry_fields() {
        let mut e = EptEntry::leaf(
            hpa(0x1234_5000),
            EptPermissions::RX,
            MemoryType::WriteBack,
            false,
        );
        assert_eq!(e.raw(), 0x1234_5000 | 0b101 | (6 << 3));
        assert!(e.is_present());
        assert!(!e.is_large());
        assert_eq!(e.addr(), hpa(0x1234_5000));
        assert_eq!(e.permissions(), EptPermissions::RX);
        assert_eq!(e.memory_type(), Some(MemoryType::WriteBack));
        e.set_memory_type(MemoryType::Uncacheable);
        e.set_permissions(EptPermissions::RW);
        e.set_addr(hpa(0xf_ffff_ffff_f000));
        e.set_flags(EptFlags::READ | EptFlags::IGNORE_PAT | EptFlags::ACCESSED);
        assert_eq!(e.raw(), 0xf_ffff_ffff_f000 | 0b1 | (1 << 6) | (1 << 8));
        assert_eq!(e.memory_type(), Some(MemoryType::Uncacheable));
        let large = EptEntry::leaf(
            hpa(0x20_0000),
            EptPermissions::RWX,
            MemoryType::WriteCombining,
            true,
        );
        assert_eq!(large.raw(), 0x20_0000 | 0b111 | (1 << 3) | (1 << 7));
        assert_eq!(EptEntry::table(hpa(0x5000)).raw(), 0x5007);
        assert!(!EptEntry::EMPTY.is_present());
        assert_eq!(EptEntry::from_raw(2 << 3 | 1).memory_type(), None);
    }

    #[test]
    fn eptp_layout() {
        let p = Eptp::new(hpa(0x1_2345_6000));
        assert_eq!(p.as_u64(), 0x1_2345_6000 | (3 << 3) | 6);
        assert_eq!(p.as_u64() & 0x7, 6, "WB in bits 2:0");
        assert_eq!((p.as_u64() >> 3) & 0x7, 3, "walk length - 1 in bits 5:3");
        assert_eq!(p.page_walk_length(), 4);
        assert!(!p.accessed_dirty());
        let ad = p.with_accessed_dirty(true);
        assert_eq!(ad.as_u64(), p.as_u64() | (1 << 6));
        assert!(ad.accessed_dirty());
        assert_eq!(ad.with_accessed_dirty(false), p);
        assert_eq!(p.pml4(), hpa(0x1_2345_6000));
        assert_eq!(p.memory_type(), Some(MemoryType::WriteBack));
        let uc = p.with_memory_type(MemoryType::Uncacheable).unwrap();
        assert_eq!(uc.as_u64() & 7, 0);
        assert_eq!(p.with_memory_type(MemoryType::WriteThrough), None);

        let e = ept(4);
        assert_eq!(e.eptp().pml4(), e.pml4());
        assert_eq!(e.pml4(), hpa(FRAME_BASE));
    }

    #[test]
    fn map_4k_and_translate() {
        let mut e = ept(8);
        e.map_4k(gpa(0x7000), hpa(0x4_2000), EptPermissions::RW, WB)
            .unwrap();
        let t = e.translate(gpa(0x7abc)).unwrap();
        assert_eq!(t.hpa, hpa(0x4_2abc));
        assert_eq!(t.perms, EptPermissions::RW);
        assert_eq!(t.memory_type, Some(WB));
        assert_eq!(t.page_size, PageSize::Size4K);
        assert_eq!(e.translate(gpa(0x6fff)), None);
        assert_eq!(e.translate(gpa(0x8000)), None);
        assert_eq!(e.translate(gpa(MAX_GUEST_PHYS)), None);
        // PML4 + PDPT + PD + PT.
        assert_eq!(e.into_parts().0.next, FRAME_BASE + 4 * PAGE_SIZE);
    }

    #[test]
    fn map_2m_and_translate() {
        let mut e = ept(8);
        e.map_2m(gpa(0x4000_0000), hpa(0x20_0000), EptPermissions::RWX, WB)
            .unwrap();
        let t = e.translate(gpa(0x401f_fff8)).unwrap();
        assert_eq!(t.hpa, hpa(0x3f_fff8));
        assert_eq!(t.page_size, PageSize::Size2M);
        assert_eq!(e.translate(gpa(0x4020_0000)), None);
        assert_eq!(
            e.map_2m(gpa(0x1000), hpa(0x20_0000), EptPermissions::RWX, WB),
            Err(EptError::Misaligned)
        );
        assert_eq!(
            e.map_2m(gpa(0x20_0000), hpa(0x1000), EptPermissions::RWX, WB),
            Err(EptError::Misaligned)
        );
    }

    #[test]
    fn map_range_prefers_2m_pages() {
        let mut e = ept(16);
        // 1 MiB of 4K pages up to the 2 MiB boundary, two 2 MiB pages, then 12 KiB.
        let stats = e
            .map_range(
                gpa(MIB),
                hpa(0x8010_0000),
                5 * MIB + 0x3000,
                EptPermissions::RWX,
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
        assert_eq!(e.translate(gpa(MIB)).unwrap().page_size, PageSize::Size4K);
        let t = e.translate(gpa(2 * MIB + 0x1234)).unwrap();
        assert_eq!((t.hpa, t.page_size), (hpa(0x8020_1234), PageSize::Size2M));
        let t = e.translate(gpa(4 * MIB + 5)).unwrap();
        assert_eq!((t.hpa, t.page_size), (hpa(0x8040_0005), PageSize::Size2M));
        let t = e.translate(gpa(6 * MIB + 0x2fff)).unwrap();
        assert_eq!((t.hpa, t.page_size), (hpa(0x8060_2fff), PageSize::Size4K));
        assert_eq!(e.translate(gpa(6 * MIB + 0x3000)), None);
        assert_eq!(e.translate(gpa(MIB - 1)), None);
    }

    #[test]
    fn map_range_uses_4k_when_alignments_differ() {
        let mut e = ept(16);
        let stats = e
            .map_range(gpa(0), hpa(0x1000), 4 * MIB, EptPermissions::RW, WB)
            .unwrap();
        assert_eq!(
            stats,
            MapStats {
                pages_4k: 1024,
                pages_2m: 0
            }
        );
        assert_eq!(
            e.translate(gpa(3 * MIB)).unwrap().hpa,
            hpa(3 * MIB + 0x1000)
        );
    }

    #[test]
    fn detects_overlaps() {
        let mut e = ept(16);
        e.map_range(
            gpa(0x20_0000),
            hpa(0x20_0000),
            0x20_0000,
            EptPermissions::RWX,
            WB,
        )
        .unwrap();
        e.map_4k(gpa(0x40_5000), hpa(0x9000), EptPermissions::READ, WB)
            .unwrap();
        // 4 KiB inside an existing 2 MiB page.
        assert_eq!(
            e.map_4k(gpa(0x21_0000), hpa(0), EptPermissions::READ, WB),
            Err(EptError::AlreadyMapped(gpa(0x21_0000)))
        );
        // 2 MiB over a table holding a 4 KiB page: reports the mapped page.
        assert_eq!(
            e.map_2m(gpa(0x40_0000), hpa(0), EptPermissions::READ, WB),
            Err(EptError::AlreadyMapped(gpa(0x40_5000)))
        );
        // Same 4 KiB page twice.
        assert_eq!(
            e.map_4k(gpa(0x40_5000), hpa(0), EptPermissions::READ, WB),
            Err(EptError::AlreadyMapped(gpa(0x40_5000)))
        );
        // A range overlapping in its middle changes nothing.
        let before = mappings(&e);
        assert_eq!(
            e.map_range(
                gpa(0x1_0000),
                hpa(0x1_0000),
                0x40_0000,
                EptPermissions::RW,
                WB
            ),
            Err(EptError::AlreadyMapped(gpa(0x20_0000)))
        );
        assert_eq!(mappings(&e), before);
    }

    #[test]
    fn rejects_bad_requests() {
        let mut e = ept(8);
        assert_eq!(
            e.map_4k(gpa(0x1000), hpa(0x1000), EptPermissions::WRITE, WB),
            Err(EptError::InvalidPermissions(EptPermissions::WRITE))
        );
        assert_eq!(
            e.map_4k(gpa(0x1000), hpa(0x1000), EptPermissions::empty(), WB),
            Err(EptError::InvalidPermissions(EptPermissions::empty()))
        );
        assert_eq!(
            e.map_4k(gpa(0x1001), hpa(0x1000), EptPermissions::READ, WB),
            Err(EptError::Misaligned)
        );
        assert_eq!(
            e.map_range(gpa(0), hpa(0), 0x1800, EptPermissions::READ, WB),
            Err(EptError::Misaligned)
        );
        assert_eq!(
            e.map_4k(gpa(MAX_GUEST_PHYS), hpa(0), EptPermissions::READ, WB),
            Err(EptError::AddressTooLarge)
        );
        assert_eq!(
            e.map_range(
                gpa(MAX_GUEST_PHYS - 0x1000),
                hpa(0),
                0x2000,
                EptPermissions::READ,
                WB
            ),
            Err(EptError::AddressTooLarge)
        );
        assert_eq!(
            e.map_4k(gpa(0), hpa(MAX_HOST_PHYS), EptPermissions::READ, WB),
            Err(EptError::AddressTooLarge)
        );
        assert_eq!(
            e.map_range(gpa(0), hpa(0), !0xfff, EptPermissions::READ, WB),
            Err(EptError::AddressTooLarge)
        );
        assert_eq!(
            e.map_range(gpa(0), hpa(0), 0, EptPermissions::READ, WB),
            Ok(MapStats::default())
        );
        assert!(mappings(&e).is_empty());
        // Highest mappable page works.
        e.map_4k(
            gpa(MAX_GUEST_PHYS - 0x1000),
            hpa(MAX_HOST_PHYS - 0x1000),
            EptPermissions::READ,
            WB,
        )
        .unwrap();
        assert_eq!(
            e.translate(gpa(MAX_GUEST_PHYS - 1)).unwrap().hpa,
            hpa(MAX_HOST_PHYS - 1)
        );
    }

    #[test]
    fn out_of_frames() {
        // PML4 only: the first mapping needs three more tables.
        let mut e = ept(2);
        assert_eq!(
            e.map_4k(gpa(0), hpa(0), EptPermissions::READ, WB),
            Err(EptError::OutOfFrames)
        );
        assert_eq!(e.translate(gpa(0)), None);
        let source = BumpFrames { next: 0, end: 0 };
        assert!(matches!(
            Ept::new(source, VecMemory(Vec::new())),
            Err(EptError::OutOfFrames)
        ));
    }

    #[test]
    fn rejects_misaligned_frames() {
        let source = BumpFrames {
            next: FRAME_BASE + 8,
            end: FRAME_BASE + PAGE_SIZE,
        };
        assert!(matches!(
            Ept::new(source, VecMemory(Vec::new())),
            Err(EptError::BadFrame(f)) if f == hpa(FRAME_BASE + 8)
        ));
    }

    #[test]
    fn walk_reports_every_mapping_once() {
        let mut e = ept(32);
        // Two guest partitions plus a shared MMIO page, at scattered addresses.
        e.map_range(gpa(0), hpa(0x1000_0000), 6 * MIB, EptPermissions::RWX, WB)
            .unwrap();
        e.map_range(
            gpa(0x80_0000_0000),
            hpa(0x2000_0000),
            0x5000,
            EptPermissions::RW,
            WB,
        )
        .unwrap();
        e.map_4k(
            gpa(0xfee0_0000),
            hpa(0xfee0_0000),
            EptPermissions::RW,
            MemoryType::Uncacheable,
        )
        .unwrap();
        let maps = mappings(&e);
        assert_eq!(maps.len(), 3 + 5 + 1);
        // Ascending, non-overlapping in guest space.
        for pair in maps.windows(2) {
            let end = pair[0].gpa.as_u64() + pair[0].size.bytes();
            assert!(end <= pair[1].gpa.as_u64(), "{pair:?}");
        }
        // Total bytes and each mapping agree with translate.
        let total: u64 = maps.iter().map(|m| m.size.bytes()).sum();
        assert_eq!(total, 6 * MIB + 0x5000 + 0x1000);
        for m in &maps {
            let t = e.translate(m.gpa).unwrap();
            assert_eq!((t.hpa, t.page_size, t.perms), (m.hpa, m.size, m.perms));
        }
        assert_eq!(maps[0].size, PageSize::Size2M);
        assert_eq!(maps[3].gpa, gpa(0xfee0_0000));
        assert_eq!(maps[3].memory_type, Some(MemoryType::Uncacheable));
        assert_eq!(maps[4].gpa, gpa(0x80_0000_0000));
        // Host ranges do not overlap either.
        let mut host: Vec<(u64, u64)> = maps
            .iter()
            .map(|m| (m.hpa.as_u64(), m.hpa.as_u64() + m.size.bytes()))
            .collect();
        host.sort();
        for pair in host.windows(2) {
            assert!(pair[0].1 <= pair[1].0);
        }
    }

    #[test]
    fn tables_hold_hardware_format() {
        let mut e = ept(8);
        e.map_4k(gpa(0x8000_1000), hpa(0x5000), EptPermissions::RX, WB)
            .unwrap();
        let (_, mem, pml4) = e.into_parts();
        let pml4e = EptEntry::from_raw(mem.table(pml4)[0]);
        assert_eq!(pml4e.permissions(), EptPermissions::RWX);
        let pdpte = EptEntry::from_raw(mem.table(pml4e.addr())[2]);
        let pde = EptEntry::from_raw(mem.table(pdpte.addr())[0]);
        let pte = mem.table(pde.addr())[1];
        assert_eq!(pte, 0x5000 | 0b101 | (6 << 3));
        // Every other slot in every table was zeroed.
        assert_eq!(mem.table(pml4).iter().filter(|e| **e != 0).count(), 1);
    }
}
