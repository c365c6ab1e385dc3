//! Physical frame allocation over the boot memory map.
//!
//! The kernel owns every 4 KiB frame of host-physical memory that the firmware marks
//! usable. This module decides which frames those are and hands them out; it never
//! touches memory itself (pure logic, tested on the host).
//!
//! Two phases:
//! - [`BootFrames`]: a bump allocator that works before the heap exists (fixed-size
//!   storage, no `alloc`). The kernel uses it for its first page tables and the heap.
//! - [`FrameAllocator`]: a bitmap allocator built from a `BootFrames` once the heap is
//!   up. Frames the bump phase handed out stay marked used, so nothing is handed out
//!   twice across the hand-over.
//!
//! Input is a list of [`MemRegion`]s (the kernel translates the bootloader's memory map:
//! only `Usable` regions are usable; bootloader, kernel, framebuffer and ramdisk regions
//! are not) plus extra reserved ranges to keep out (the first 1 MiB, the AP trampoline
//! page, ...). Usable regions are rounded *inward* to 4 KiB boundaries; non-usable
//! regions and reserved ranges are rounded *outward*, and win wherever they overlap a
//! usable region.
//!
//! Runs are physically contiguous and aligned in physical frame numbers, so
//! `alloc(512, 512)` returns a 2 MiB-aligned 2 MiB block (large pages, VM partitions).

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Size of one frame in bytes.
pub const FRAME_SIZE: u64 = 4096;
/// Frames in a 2 MiB block (a large page, the unit of VM partitions).
pub const FRAMES_PER_2M: usize = 512;
/// How many disjoint free ranges the boot phase can track (after splitting usable
/// regions around reserved ones). UEFI memory maps with a few hundred entries merge
/// down to far fewer usable runs.
pub const MAX_RANGES: usize = 256;
/// How many separate runs the boot phase can hand out (adjacent runs merge, so a
/// bump allocator normally needs only a few).
pub const MAX_BOOT_RUNS: usize = 64;

/// A range of host-physical memory `[start, end)`, in bytes. Ranges handed out by the
/// allocators are always 4 KiB aligned at both ends.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl PhysRange {
    /// The range `[start, end)`; an inverted range becomes empty.
    pub const fn new(start: u64, end: u64) -> Self {
        if end < start {
            Self { start, end: start }
        } else {
            Self { start, end }
        }
    }

    /// `count` frames starting at frame number `first_frame`.
    pub const fn from_frames(first_frame: u64, count: u64) -> Self {
        Self::new(first_frame * FRAME_SIZE, (first_frame + count) * FRAME_SIZE)
    }

    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range holds no byte.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Number of whole frames in the range (for aligned ranges: all of it).
    pub const fn frames(&self) -> u64 {
        self.len() / FRAME_SIZE
    }

    /// Whether both ends sit on a 4 KiB boundary.
    pub const fn is_frame_aligned(&self) -> bool {
        self.start.is_multiple_of(FRAME_SIZE) && self.end.is_multiple_of(FRAME_SIZE)
    }

    /// Whether the two ranges share at least one byte.
    pub const fn overlaps(&self, other: &PhysRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// The largest frame-aligned range inside this one (usable memory shrinks).
    pub const fn round_inward(&self) -> Self {
        Self::new(
            align_up(self.start, FRAME_SIZE),
            self.end / FRAME_SIZE * FRAME_SIZE,
        )
    }

    /// The smallest frame-aligned range covering this one (reserved memory grows).
    pub const fn round_outward(&self) -> Self {
        Self::new(
            self.start / FRAME_SIZE * FRAME_SIZE,
            align_up(self.end, FRAME_SIZE),
        )
    }
}

impl fmt::Debug for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..{:#x}", self.start, self.end)
    }
}

const fn align_up(value: u64, align: u64) -> u64 {
    match value.checked_add(align - 1) {
        Some(v) => v / align * align,
        None => u64::MAX / align * align,
    }
}

/// One entry of the memory map as the kernel translated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRegion {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Free RAM the kernel may hand out (bootloader `Usable` only).
    pub usable: bool,
}

impl MemRegion {
    /// A region `[start, end)`.
    pub const fn new(start: u64, end: u64, usable: bool) -> Self {
        Self { start, end, usable }
    }
}

/// Why an allocator call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No free run of `count` frames aligned to `align` frames is left.
    OutOfFrames {
        /// Frames asked for.
        count: usize,
        /// Alignment asked for, in frames.
        align: usize,
    },
    /// A request for zero frames, or an alignment that is zero or not a power of two.
    BadRequest {
        /// Frames asked for.
        count: usize,
        /// Alignment asked for, in frames.
        align: usize,
    },
    /// The range passed to `free` or `reserve` does not sit on 4 KiB boundaries or is empty.
    Unaligned(PhysRange),
    /// The frame at this address is not usable RAM (never managed by the allocator).
    NotUsable(u64),
    /// `free` of a frame that is not allocated.
    DoubleFree(u64),
    /// `reserve` of a frame that is already handed out.
    AlreadyTaken(u64),
    /// The memory map splits into more than [`MAX_RANGES`] free ranges.
    TooManyRanges,
    /// The boot phase handed out more than [`MAX_BOOT_RUNS`] separate runs.
    TooManyBootRuns,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfFrames { count, align } => {
                write!(
                    f,
                    "out of physical memory: no free run of {count} frames aligned to {align}"
                )
            }
            Self::BadRequest { count, align } => {
                write!(f, "bad frame request: count {count}, align {align}")
            }
            Self::Unaligned(r) => write!(f, "range {r:?} is not 4 KiB aligned or is empty"),
            Self::NotUsable(a) => write!(f, "frame {a:#x} is not usable RAM"),
            Self::DoubleFree(a) => write!(f, "double free of frame {a:#x}"),
            Self::AlreadyTaken(a) => write!(f, "frame {a:#x} is already taken"),
            Self::TooManyRanges => write!(f, "memory map has more than {MAX_RANGES} free ranges"),
            Self::TooManyBootRuns => write!(
                f,
                "boot allocator handed out more than {MAX_BOOT_RUNS} runs"
            ),
        }
    }
}

/// What the memory map held, for the boot log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemorySummary {
    /// Entries in the memory map as given.
    pub regions: usize,
    /// Bytes the map marks usable (before rounding and exclusions).
    pub usable_bytes: u64,
    /// Bytes the map marks not usable.
    pub reserved_bytes: u64,
    /// Frames left to the allocator after rounding and excluding reserved ranges.
    pub managed_frames: u64,
}

impl MemorySummary {
    /// Usable memory in MiB (rounded down).
    pub const fn usable_mib(&self) -> u64 {
        self.usable_bytes >> 20
    }

    /// Non-usable memory in MiB (rounded down).
    pub const fn reserved_mib(&self) -> u64 {
        self.reserved_bytes >> 20
    }
}

/// Fixed-capacity sorted list of disjoint frame-aligned ranges (no heap).
#[derive(Clone)]
struct RangeSet<const N: usize> {
    ranges: [PhysRange; N],
    len: usize,
}

impl<const N: usize> RangeSet<N> {
    const fn new() -> Self {
        Self {
            ranges: [PhysRange { start: 0, end: 0 }; N],
            len: 0,
        }
    }

    fn as_slice(&self) -> &[PhysRange] {
        &self.ranges[..self.len]
    }

    /// Adds `r`, merging with overlapping or touching ranges.
    fn add(&mut self, r: PhysRange) -> Result<(), ()> {
        if r.is_empty() {
            return Ok(());
        }
        let mut merged = r;
        let mut out = Self::new();
        let mut placed = false;
        for &cur in self.as_slice() {
            if cur.end < merged.start {
                out.push(cur)?;
            } else if merged.end < cur.start {
                if !placed {
                    out.push(merged)?;
                    placed = true;
                }
                out.push(cur)?;
            } else {
                merged = PhysRange::new(merged.start.min(cur.start), merged.end.max(cur.end));
            }
        }
        if !placed {
            out.push(merged)?;
        }
        *self = out;
        Ok(())
    }

    /// Removes every byte of `r`, splitting ranges where needed.
    fn remove(&mut self, r: PhysRange) -> Result<(), ()> {
        if r.is_empty() {
            return Ok(());
        }
        let mut out = Self::new();
        for &cur in self.as_slice() {
            if !cur.overlaps(&r) {
                out.push(cur)?;
                continue;
            }
            let left = PhysRange::new(cur.start, r.start.min(cur.end));
            let right = PhysRange::new(r.end.max(cur.start), cur.end);
            if !left.is_empty() {
                out.push(left)?;
            }
            if !right.is_empty() {
                out.push(right)?;
            }
        }
        *self = out;
        Ok(())
    }

    fn push(&mut self, r: PhysRange) -> Result<(), ()> {
        let slot = self.ranges.get_mut(self.len).ok_or(())?;
        *slot = r;
        self.len += 1;
        Ok(())
    }
}

/// Bump allocator for the time before the heap exists.
///
/// Hands out frames in address order from the free ranges; alignment gaps it skips
/// stay free for the bitmap phase. It cannot free.
#[derive(Clone)]
pub struct BootFrames {
    free: RangeSet<MAX_RANGES>,
    /// Index into `free` of the range the cursor is in.
    range: usize,
    /// Next free byte at or after which the bump continues.
    next: u64,
    handed_out: RangeSet<MAX_BOOT_RUNS>,
    summary: MemorySummary,
}

impl fmt::Debug for BootFrames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootFrames")
            .field("free", &self.free.as_slice())
            .field("next", &format_args!("{:#x}", self.next))
            .field("handed_out", &self.handed_out.as_slice())
            .finish()
    }
}

impl BootFrames {
    /// Builds the set of allocatable frames: usable regions rounded inward, minus
    /// non-usable regions and `reserved` ranges rounded outward.
    pub fn new<I>(regions: I, reserved: &[PhysRange]) -> Result<Self, FrameError>
    where
        I: IntoIterator<Item = MemRegion>,
        I::IntoIter: Clone,
    {
        let regions = regions.into_iter();
        let mut summary = MemorySummary::default();
        let mut free = RangeSet::<MAX_RANGES>::new();
        for r in regions.clone() {
            let range = PhysRange::new(r.start, r.end);
            summary.regions += 1;
            if r.usable {
                summary.usable_bytes += range.len();
                free.add(range.round_inward())
                    .map_err(|()| FrameError::TooManyRanges)?;
            } else {
                summary.reserved_bytes += range.len();
            }
        }
        let not_usable = regions
            .filter(|r| !r.usable)
            .map(|r| PhysRange::new(r.start, r.end));
        for r in not_usable.chain(reserved.iter().copied()) {
            free.remove(r.round_outward())
                .map_err(|()| FrameError::TooManyRanges)?;
        }
        summary.managed_frames = free.as_slice().iter().map(PhysRange::frames).sum();
        let next = free.as_slice().first().map_or(0, |r| r.start);
        Ok(Self {
            free,
            range: 0,
            next,
            handed_out: RangeSet::new(),
            summary,
        })
    }

    /// Hands out `count` physically contiguous frames whose first frame number is a
    /// multiple of `align` (a power of two).
    pub fn alloc(&mut self, count: usize, align: usize) -> Result<PhysRange, FrameError> {
        check_request(count, align)?;
        let bytes = count as u64 * FRAME_SIZE;
        let align_bytes = align as u64 * FRAME_SIZE;
        while let Some(&range) = self.free.as_slice().get(self.range) {
            let start = align_up(self.next.max(range.start), align_bytes);
            if let Some(end) = start.checked_add(bytes).filter(|&end| end <= range.end) {
                let run = PhysRange::new(start, end);
                self.handed_out
                    .add(run)
                    .map_err(|()| FrameError::TooManyBootRuns)?;
                self.next = end;
                return Ok(run);
            }
            self.range += 1;
        }
        Err(FrameError::OutOfFrames { count, align })
    }

    /// Hands out one frame; returns its physical address.
    pub fn alloc_frame(&mut self) -> Result<u64, FrameError> {
        self.alloc(1, 1).map(|r| r.start)
    }

    /// The allocatable ranges computed from the memory map (before any hand-out).
    pub fn free_ranges(&self) -> &[PhysRange] {
        self.free.as_slice()
    }

    /// The runs handed out so far (merged where adjacent).
    pub fn handed_out(&self) -> &[PhysRange] {
        self.handed_out.as_slice()
    }

    /// What the memory map held.
    pub fn summary(&self) -> MemorySummary {
        self.summary
    }
}

fn check_request(count: usize, align: usize) -> Result<(), FrameError> {
    if count == 0 || align == 0 || !align.is_power_of_two() {
        return Err(FrameError::BadRequest { count, align });
    }
    Ok(())
}

/// Bitmap allocator over every frame between the lowest and highest usable frame.
///
/// One bit per frame, set when the frame is handed out or not usable RAM; the list of
/// usable ranges tells the two apart for error reports.
pub struct FrameAllocator {
    usable: Vec<PhysRange>,
    /// Frame number of bit 0.
    base_frame: u64,
    /// Frames covered by the bitmap.
    frames: usize,
    used: Vec<u64>,
    free: usize,
    total: usize,
    /// Bit index where single-frame searches start (next fit).
    hint: usize,
    summary: MemorySummary,
}

impl fmt::Debug for FrameAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameAllocator")
            .field("usable", &self.usable)
            .field("free", &self.free)
            .field("total", &self.total)
            .finish()
    }
}

impl FrameAllocator {
    /// Builds the bitmap allocator directly from a memory map (needs the heap).
    pub fn new<I>(regions: I, reserved: &[PhysRange]) -> Result<Self, FrameError>
    where
        I: IntoIterator<Item = MemRegion>,
        I::IntoIter: Clone,
    {
        BootFrames::new(regions, reserved).map(Self::from_boot)
    }

    /// Takes over from the boot phase: everything `boot` handed out stays used.
    pub fn from_boot(boot: BootFrames) -> Self {
        let usable: Vec<PhysRange> = boot.free_ranges().to_vec();
        let base_frame = usable.first().map_or(0, |r| r.start / FRAME_SIZE);
        let top_frame = usable.last().map_or(0, |r| r.end / FRAME_SIZE);
        let frames = usize::try_from(top_frame - base_frame).unwrap_or(usize::MAX);
        let mut this = Self {
            usable,
            base_frame,
            frames,
            used: vec![!0u64; frames.div_ceil(64)],
            free: 0,
            total: 0,
            hint: 0,
            summary: boot.summary(),
        };
        for r in this.usable.clone() {
            let (first, count) = this.bit_span(r);
            this.set_bits(first, count, false);
            this.total += count;
        }
        this.free = this.total;
        for &r in boot.handed_out() {
            let (first, count) = this.bit_span(r);
            this.set_bits(first, count, true);
            this.free -= count;
        }
        this
    }

    /// Hands out `count` physically contiguous frames whose first frame number is a
    /// multiple of `align` (a power of two): `alloc(512, 512)` is a 2 MiB-aligned
    /// 2 MiB block.
    pub fn alloc(&mut self, count: usize, align: usize) -> Result<PhysRange, FrameError> {
        check_request(count, align)?;
        let out = Err(FrameError::OutOfFrames { count, align });
        if count > self.free {
            return out;
        }
        let start_bit = if count == 1 && align == 1 {
            self.hint
        } else {
            0
        };
        let found = self.find_run(start_bit, count, align).or_else(|| {
            if start_bit > 0 {
                self.find_run(0, count, align)
            } else {
                None
            }
        });
        let Some(bit) = found else { return out };
        self.set_bits(bit, count, true);
        self.free -= count;
        if count == 1 && align == 1 {
            self.hint = bit + 1;
        }
        Ok(PhysRange::from_frames(
            self.base_frame + bit as u64,
            count as u64,
        ))
    }

    /// Hands out one frame; returns its physical address.
    pub fn alloc_frame(&mut self) -> Result<u64, FrameError> {
        self.alloc(1, 1).map(|r| r.start)
    }

    /// Gives back a range handed out earlier (or part of one). Fails without change if
    /// any frame of it is not usable RAM or not allocated.
    pub fn free(&mut self, range: PhysRange) -> Result<(), FrameError> {
        let (first, count) = self.check_range(range)?;
        if let Some(bit) = (first..first + count).find(|&b| !self.bit(b)) {
            return Err(FrameError::DoubleFree(self.addr_of(bit)));
        }
        self.set_bits(first, count, false);
        self.free += count;
        self.hint = self.hint.min(first);
        Ok(())
    }

    /// Takes a fixed range (e.g. a VM's host base). Fails without change if any frame
    /// of it is not usable RAM or is already taken.
    pub fn reserve(&mut self, range: PhysRange) -> Result<(), FrameError> {
        let (first, count) = self.check_range(range)?;
        if let Some(bit) = self.first_used(first, count) {
            return Err(FrameError::AlreadyTaken(self.addr_of(bit)));
        }
        self.set_bits(first, count, true);
        self.free -= count;
        Ok(())
    }

    /// Frames not handed out.
    pub fn free_count(&self) -> usize {
        self.free
    }

    /// The longest run of free frames that starts at a multiple of `align`
    /// frames (a power of two), in frames: the largest block [`Self::alloc`]
    /// could hand out with that alignment (issue 11's pool report).
    pub fn largest_free_run(&self, align: usize) -> usize {
        let align = align.max(1) as u64;
        let mut best = 0usize;
        let mut bit = 0usize;
        while let Some(start) = self.first_free(bit) {
            let end = self
                .first_used(start, self.frames - start)
                .unwrap_or(self.frames);
            let frame = self.base_frame + start as u64;
            let aligned = (frame.div_ceil(align) * align - self.base_frame) as usize;
            if aligned < end {
                best = best.max(end - aligned);
            }
            bit = end;
        }
        best
    }

    /// Frames managed (usable after exclusions).
    pub fn total_count(&self) -> usize {
        self.total
    }

    /// What the memory map held.
    pub fn summary(&self) -> MemorySummary {
        self.summary
    }

    /// The usable ranges the allocator manages.
    pub fn usable_ranges(&self) -> &[PhysRange] {
        &self.usable
    }

    fn check_range(&self, range: PhysRange) -> Result<(usize, usize), FrameError> {
        if !range.is_frame_aligned() || range.is_empty() {
            return Err(FrameError::Unaligned(range));
        }
        // The range must lie inside the usable ranges; find the first frame outside.
        let mut addr = range.start;
        while addr < range.end {
            let Some(r) = self.usable.iter().find(|r| r.start <= addr && addr < r.end) else {
                return Err(FrameError::NotUsable(addr));
            };
            addr = r.end;
        }
        Ok(self.bit_span(range))
    }

    /// Bit index and frame count of a frame-aligned range inside the bitmap.
    fn bit_span(&self, r: PhysRange) -> (usize, usize) {
        (
            (r.start / FRAME_SIZE - self.base_frame) as usize,
            r.frames() as usize,
        )
    }

    fn addr_of(&self, bit: usize) -> u64 {
        (self.base_frame + bit as u64) * FRAME_SIZE
    }

    fn bit(&self, bit: usize) -> bool {
        self.used[bit / 64] & (1 << (bit % 64)) != 0
    }

    fn set_bits(&mut self, first: usize, count: usize, value: bool) {
        let mut bit = first;
        let end = first + count;
        while bit < end {
            let word = bit / 64;
            let lo = bit % 64;
            let n = (64 - lo).min(end - bit);
            let mask = if n == 64 { !0 } else { ((1u64 << n) - 1) << lo };
            if value {
                self.used[word] |= mask;
            } else {
                self.used[word] &= !mask;
            }
            bit += n;
        }
    }

    /// First used bit in `[first, first + count)`, whole words at a time.
    fn first_used(&self, first: usize, count: usize) -> Option<usize> {
        let mut bit = first;
        let end = first + count;
        while bit < end {
            let word = bit / 64;
            let lo = bit % 64;
            let n = (64 - lo).min(end - bit);
            let mask = if n == 64 { !0 } else { ((1u64 << n) - 1) << lo };
            let hits = self.used[word] & mask;
            if hits != 0 {
                return Some(word * 64 + hits.trailing_zeros() as usize);
            }
            bit += n;
        }
        None
    }

    /// First free bit at or after `from`, skipping full words.
    fn first_free(&self, from: usize) -> Option<usize> {
        let mut bit = from;
        while bit < self.frames {
            let word = bit / 64;
            let free = !self.used[word] & (!0u64 << (bit % 64));
            if free != 0 {
                let found = word * 64 + free.trailing_zeros() as usize;
                return (found < self.frames).then_some(found);
            }
            bit = (word + 1) * 64;
        }
        None
    }

    /// Lowest bit index `>= from` starting a free run of `count` frames whose
    /// physical frame number is a multiple of `align`.
    fn find_run(&self, from: usize, count: usize, align: usize) -> Option<usize> {
        let align = align as u64;
        let mut bit = from;
        loop {
            bit = self.first_free(bit)?;
            let frame = self.base_frame + bit as u64;
            let aligned = (frame.div_ceil(align) * align - self.base_frame) as usize;
            if aligned.checked_add(count)? > self.frames {
                return None;
            }
            match self.first_used(aligned, count) {
                None => return Some(aligned),
                Some(used) => bit = used + 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn largest_free_run_follows_alloc_and_free() {
        let mut a = FrameAllocator::new(regions(), &[]).unwrap();
        let before = (a.free_count(), a.largest_free_run(512));
        assert!(before.1 > 0);
        let blocks: Vec<PhysRange> = (0..3).filter_map(|_| a.alloc(512, 512).ok()).collect();
        assert!(a.largest_free_run(512) < before.1 || blocks.len() < 3);
        // A block as large as the largest run fits; one frame more does not.
        let largest = a.largest_free_run(512);
        if largest > 0 {
            let r = a.alloc(largest, 512).unwrap();
            assert!(a.alloc(a.largest_free_run(512) + 1, 512).is_err());
            a.free(r).unwrap();
        }
        for b in blocks {
            a.free(b).unwrap();
        }
        assert_eq!((a.free_count(), a.largest_free_run(512)), before);
        assert!(a.largest_free_run(1) >= a.largest_free_run(512));
    }

    const MIB: u64 = 1 << 20;

    fn regions() -> Vec<MemRegion> {
        vec![
            MemRegion::new(0, 0x9f000, true),
            MemRegion::new(0x9f000, 0x100000, false),
            MemRegion::new(0x100000, 0x400000, false), // kernel image
            MemRegion::new(0x400000, 8 * MIB, true),
            MemRegion::new(8 * MIB, 9 * MIB, false), // framebuffer
            MemRegion::new(9 * MIB, 16 * MIB, true),
        ]
    }

    fn first_mib() -> [PhysRange; 1] {
        [PhysRange::new(0, MIB)]
    }

    #[test]
    fn rounding_and_exclusions() {
        let map = [
            MemRegion::new(0x1001, 0x5fff, true),    // -> 0x2000..0x5000
            MemRegion::new(0x10000, 0x20000, true),  // minus reserved 0x13000..0x15000
            MemRegion::new(0x14800, 0x14900, false), // rounds out to 0x14000..0x15000
        ];
        let boot = BootFrames::new(map, &[PhysRange::new(0x13fff, 0x14001)]).unwrap();
        assert_eq!(
            boot.free_ranges(),
            &[
                PhysRange::new(0x2000, 0x5000),
                PhysRange::new(0x10000, 0x13000),
                PhysRange::new(0x15000, 0x20000)
            ]
        );
        let s = boot.summary();
        assert_eq!(s.regions, 3);
        assert_eq!(s.managed_frames, 3 + 3 + 11);
        assert_eq!(s.usable_bytes, (0x5fff - 0x1001) + 0x10000);
        assert_eq!(s.reserved_bytes, 0x100);
    }

    #[test]
    fn summary_in_mib() {
        let a = FrameAllocator::new(regions(), &first_mib()).unwrap();
        let s = a.summary();
        assert_eq!(s.regions, 6);
        assert_eq!(s.reserved_mib(), 4); // 0x9f000..0x100000 + 3 MiB kernel + 1 MiB fb
        assert_eq!(s.reserved_bytes, 0x61000 + 3 * MIB + MIB);
        assert_eq!(s.usable_mib(), 11);
        assert_eq!(a.total_count(), ((8 - 4) + (16 - 9)) * 256);
    }

    #[test]
    fn no_double_hand_out_and_exhaustion() {
        let mut a = FrameAllocator::new(regions(), &first_mib()).unwrap();
        let total = a.total_count();
        let mut seen = HashSet::new();
        while let Ok(f) = a.alloc_frame() {
            assert_eq!(f % FRAME_SIZE, 0);
            assert!(f >= MIB && !(8 * MIB..9 * MIB).contains(&f) && f < 16 * MIB);
            assert!(f >= 0x400000, "kernel image handed out: {f:#x}");
            assert!(seen.insert(f), "frame {f:#x} handed out twice");
        }
        assert_eq!(seen.len(), total);
        assert_eq!(a.free_count(), 0);
        assert_eq!(
            a.alloc(1, 1),
            Err(FrameError::OutOfFrames { count: 1, align: 1 })
        );
    }

    #[test]
    fn contiguous_aligned_2m_blocks() {
        let mut a = FrameAllocator::new(regions(), &first_mib()).unwrap();
        a.alloc_frame().unwrap(); // disturb alignment of the lowest free frame
        let mut blocks = Vec::new();
        while let Ok(r) = a.alloc(FRAMES_PER_2M, FRAMES_PER_2M) {
            assert_eq!(r.start % (2 * MIB), 0);
            assert_eq!(r.len(), 2 * MIB);
            // Contiguous and entirely usable.
            assert!(a
                .usable_ranges()
                .iter()
                .any(|u| u.start <= r.start && r.end <= u.end));
            blocks.push(r);
        }
        // 4..6 MiB has its first frame taken, so 6..8 is the first block; 9..16 MiB
        // holds 10..12, 12..14 and 14..16.
        assert_eq!(
            blocks,
            vec![
                PhysRange::new(6 * MIB, 8 * MIB),
                PhysRange::new(10 * MIB, 12 * MIB),
                PhysRange::new(12 * MIB, 14 * MIB),
                PhysRange::new(14 * MIB, 16 * MIB),
            ]
        );
        // Single frames still come out of the gaps.
        assert!(a.alloc(3, 1).is_ok());
    }

    #[test]
    fn runs_do_not_cross_holes() {
        // Two usable ranges touching a 4K hole: a 3-frame run must not span it.
        let map = [
            MemRegion::new(0x1000, 0x3000, true),
            MemRegion::new(0x4000, 0x6000, true),
        ];
        let mut a = FrameAllocator::new(map, &[]).unwrap();
        assert_eq!(a.total_count(), 4);
        assert!(a.alloc(3, 1).is_err());
        assert_eq!(a.alloc(2, 1).unwrap(), PhysRange::new(0x1000, 0x3000));
        assert_eq!(a.alloc(2, 2).unwrap(), PhysRange::new(0x4000, 0x6000));
    }

    #[test]
    fn reserved_ranges_never_handed_out() {
        let trampoline = PhysRange::new(0x8000, 0x9000);
        let map = [MemRegion::new(0, 0x20000, true)];
        let mut boot = BootFrames::new(map, &[trampoline]).unwrap();
        let mut got = Vec::new();
        while let Ok(f) = boot.alloc_frame() {
            got.push(f);
            if got.len() == 4 {
                break;
            }
        }
        let mut a = FrameAllocator::from_boot(boot);
        while let Ok(f) = a.alloc_frame() {
            got.push(f);
        }
        assert_eq!(got.len(), 31);
        assert!(!got.contains(&0x8000));
        let uniq: HashSet<_> = got.iter().collect();
        assert_eq!(uniq.len(), got.len());
        assert_eq!(a.reserve(trampoline), Err(FrameError::NotUsable(0x8000)));
    }

    #[test]
    fn boot_hand_over_keeps_boot_frames_used() {
        let map = [MemRegion::new(0x100000, 0x800000, true)];
        let mut boot = BootFrames::new(map, &[]).unwrap();
        let a1 = boot.alloc(3, 1).unwrap();
        let big = boot.alloc(512, 512).unwrap(); // skips to 2 MiB, leaving a gap
        assert_eq!(big.start, 0x200000);
        let a2 = boot.alloc_frame().unwrap();
        assert_eq!(a2, 0x400000);
        let mut a = FrameAllocator::from_boot(boot);
        assert_eq!(a.total_count(), 7 * 256);
        assert_eq!(a.free_count(), 7 * 256 - 3 - 512 - 1);
        assert_eq!(a.free(a1), Ok(()));
        assert_eq!(a.free(a1), Err(FrameError::DoubleFree(a1.start)));
        // The gap the bump phase skipped is free; the boot runs are not.
        assert_eq!(a.reserve(PhysRange::new(0x103000, 0x200000)), Ok(()));
        assert_eq!(a.reserve(big), Err(FrameError::AlreadyTaken(0x200000)));
        assert_eq!(
            a.reserve(PhysRange::new(0x400000, 0x401000)),
            Err(FrameError::AlreadyTaken(0x400000))
        );
    }

    #[test]
    fn boot_exhaustion_and_bad_requests() {
        let mut boot = BootFrames::new([MemRegion::new(0x1000, 0x3000, true)], &[]).unwrap();
        assert_eq!(
            boot.alloc(0, 1),
            Err(FrameError::BadRequest { count: 0, align: 1 })
        );
        assert_eq!(
            boot.alloc(1, 3),
            Err(FrameError::BadRequest { count: 1, align: 3 })
        );
        assert!(boot.alloc(2, 1).is_ok());
        assert_eq!(
            boot.alloc(1, 1),
            Err(FrameError::OutOfFrames { count: 1, align: 1 })
        );
    }

    #[test]
    fn free_then_realloc() {
        let mut a = FrameAllocator::new(regions(), &first_mib()).unwrap();
        let total = a.total_count();
        let r = a.alloc(16, 16).unwrap();
        assert_eq!(a.free_count(), total - 16);
        a.free(r).unwrap();
        assert_eq!(a.free_count(), total);
        assert_eq!(a.alloc(16, 16).unwrap(), r);
        // Partial free of a run is allowed; the rest stays allocated.
        a.free(PhysRange::new(r.start, r.start + FRAME_SIZE))
            .unwrap();
        assert_eq!(a.alloc_frame().unwrap(), r.start);
    }

    #[test]
    fn double_free_and_bad_ranges_detected() {
        let mut a = FrameAllocator::new(regions(), &first_mib()).unwrap();
        let f = a.alloc_frame().unwrap();
        a.free(PhysRange::new(f, f + FRAME_SIZE)).unwrap();
        assert_eq!(
            a.free(PhysRange::new(f, f + FRAME_SIZE)),
            Err(FrameError::DoubleFree(f))
        );
        assert_eq!(
            a.free(PhysRange::new(f + 1, f + FRAME_SIZE)),
            Err(FrameError::Unaligned(PhysRange::new(f + 1, f + FRAME_SIZE)))
        );
        assert_eq!(
            a.free(PhysRange::new(8 * MIB, 8 * MIB + FRAME_SIZE)),
            Err(FrameError::NotUsable(8 * MIB))
        );
        assert_eq!(
            a.free(PhysRange::new(64 * MIB, 65 * MIB)),
            Err(FrameError::NotUsable(64 * MIB))
        );
        assert_eq!(a.free_count(), a.total_count());
    }

    #[test]
    fn reserve_fixed_placement() {
        let mut a = FrameAllocator::new(regions(), &first_mib()).unwrap();
        let host_base = PhysRange::new(10 * MIB, 12 * MIB);
        a.reserve(host_base).unwrap();
        assert_eq!(
            a.reserve(host_base),
            Err(FrameError::AlreadyTaken(10 * MIB))
        );
        // A range straddling the framebuffer hole is refused without change.
        let before = a.free_count();
        assert_eq!(
            a.reserve(PhysRange::new(7 * MIB, 10 * MIB)),
            Err(FrameError::NotUsable(8 * MIB))
        );
        assert_eq!(a.free_count(), before);
        while let Ok(f) = a.alloc_frame() {
            assert!(!(10 * MIB..12 * MIB).contains(&f));
        }
    }

    #[test]
    fn empty_map() {
        let mut a = FrameAllocator::new(core::iter::empty(), &[]).unwrap();
        assert_eq!(a.total_count(), 0);
        assert!(a.alloc_frame().is_err());
        assert!(a.free(PhysRange::new(0, 0x1000)).is_err());
    }

    #[test]
    fn too_many_ranges_is_an_error() {
        let map: Vec<_> = (0..(MAX_RANGES as u64 + 1))
            .map(|i| MemRegion::new(i * 0x2000, i * 0x2000 + 0x1000, true))
            .collect();
        assert_eq!(
            BootFrames::new(map, &[]).err(),
            Some(FrameError::TooManyRanges)
        );
    }
}
