//! Booting unmodified kernels through their own boot protocols: where their
//! bytes, boot information and command line go in guest-physical memory, and
//! the register state they start with.
//!
//! - [`linux`]: the Linux/x86 boot protocol (bzImage, 64-bit entry point).
//! - [`multiboot`]: Multiboot 1 (32-bit kernels, ELF32 or a.out kludge).
//!
//! Both are pure planners: they read the image, check it against the VM's
//! memory and return a plan (segments to copy, boot structures to write,
//! entry state). Every address comes from checked arithmetic; a hostile or
//! truncated image is a typed error naming the problem, never a panic and
//! never an address outside the VM's memory.
//!
//! # Guest-physical layout of the boot structures
//!
//! | range | what |
//! |-------|------|
//! | `0x1000..0x8000` | [`layout::BOOT_RESERVED`]: GDT and page tables the hypervisor writes for a long-mode start |
//! | `0x8000..0x9000` | Linux zero page ([`linux::ZERO_PAGE`]) or the Multiboot information structure ([`multiboot::INFO`]) |
//! | `0x9000..0x10000` | Linux command line ([`linux::CMDLINE`]); Multiboot's memory map, loader name and command line live in `0x8000..0x10000` |
//! | `0x9FC00..0x100000` | legacy hole (EBDA, VGA, ROMs), reported reserved |
//! | `0x100000..` | the kernel (Linux: at its preferred aligned address), initrd as high as allowed |
//!
//! [`BOOT_INFO`] ([`layout::BOOT_INFO`]) is that `0x8000..0x10000` area:
//! outside `BOOT_RESERVED`, below the 1 MiB line kernels load above, inside
//! usable low memory.

pub mod linux;
pub mod multiboot;

use alloc::vec::Vec;
use core::ops::Range;

use crate::layout;

/// Guest-physical area for boot information written by the loaders.
pub const BOOT_INFO: Range<u64> = layout::BOOT_INFO;
/// End of usable conventional memory (the EBDA starts here on PCs).
pub const LOW_MEMORY_END: u64 = 0x9_FC00;
/// Start of extended memory, above the legacy hole.
pub const HIGH_MEMORY: u64 = 0x10_0000;

const _: () = {
    assert!(layout::BOOT_RESERVED.end <= BOOT_INFO.start);
    assert!(BOOT_INFO.end <= LOW_MEMORY_END);
};

/// What a memory-map range holds (E820 and Multiboot use the same codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    /// RAM the kernel may use (type 1).
    Usable,
    /// Not for the kernel: hypervisor structures, legacy hole (type 2).
    Reserved,
}

impl MemKind {
    /// The E820 / Multiboot type code.
    pub fn code(self) -> u32 {
        match self {
            Self::Usable => 1,
            Self::Reserved => 2,
        }
    }
}

/// One memory-map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRegion {
    /// First byte.
    pub base: u64,
    /// Length in bytes (non-zero).
    pub len: u64,
    /// Kind.
    pub kind: MemKind,
}

impl MemRegion {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.len)
    }
}

/// Bytes the plan owns (boot structures built by the loader), to be copied
/// to `gpa`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedSegment {
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// The memory map of a PC-style VM with `memory` bytes of RAM at 0: usable
/// RAM except the `reserved` ranges (marked reserved), the legacy hole
/// `0x9FC00..0x100000` reserved whatever the memory size. Entries are sorted,
/// disjoint, non-empty, and adjacent entries of one kind merged; nothing
/// beyond `max(memory, 1 MiB)` is listed.
pub fn pc_memory_map(memory: u64, reserved: &[Range<u64>]) -> Vec<MemRegion> {
    let top = memory.max(HIGH_MEMORY);
    let hole = LOW_MEMORY_END..HIGH_MEMORY;
    // Boundaries where the kind may change.
    let mut cuts: Vec<u64> = alloc::vec![0, LOW_MEMORY_END, HIGH_MEMORY, memory];
    for r in reserved {
        cuts.push(r.start.min(top));
        cuts.push(r.end.min(top));
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut map: Vec<MemRegion> = Vec::new();
    for pair in cuts.windows(2) {
        let (base, end) = (pair[0], pair[1]);
        let inside = |r: &Range<u64>| r.start <= base && end <= r.end;
        let kind = if inside(&hole) || reserved.iter().any(inside) {
            MemKind::Reserved
        } else if end <= memory {
            MemKind::Usable
        } else {
            continue;
        };
        match map.last_mut() {
            Some(last) if last.kind == kind && last.end() == base => last.len = end - last.base,
            _ => map.push(MemRegion {
                base,
                len: end - base,
                kind,
            }),
        }
    }
    map
}

/// `v` rounded up to a multiple of `align` (a power of two), if it fits.
pub(crate) fn align_up(v: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    v.checked_add(mask).map(|x| x & !mask)
}

/// `v` rounded down to a multiple of `align` (a power of two).
pub(crate) fn align_down(v: u64, align: u64) -> u64 {
    v & !(align.saturating_sub(1))
}

/// Whether `a` and `b` share a byte.
pub(crate) fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end && a.start < a.end && b.start < b.end
}

/// Little-endian field readers over an untrusted image: `None` past the end.
pub(crate) fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

pub(crate) fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub(crate) fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Writes `bytes` at `at` in a buffer the loader sized itself (a layout bug
/// would drop the write rather than panic; tests check the layout).
pub(crate) fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = at
        .checked_add(bytes.len())
        .and_then(|end| buf.get_mut(at..end))
    {
        dst.copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_well_formed(map: &[MemRegion], memory: u64) {
        for w in map.windows(2) {
            assert!(w[0].end() <= w[1].base, "{map:?}");
            assert!(
                !(w[0].kind == w[1].kind && w[0].end() == w[1].base),
                "unmerged {map:?}"
            );
        }
        for r in map {
            assert!(r.len > 0);
            if r.kind == MemKind::Usable {
                assert!(r.end() <= memory);
            }
        }
    }

    #[test]
    fn map_with_boot_reserved() {
        let map = pc_memory_map(256 << 20, &[layout::BOOT_RESERVED]);
        assert_eq!(
            map,
            [
                MemRegion {
                    base: 0,
                    len: 0x1000,
                    kind: MemKind::Usable
                },
                MemRegion {
                    base: 0x1000,
                    len: 0x7000,
                    kind: MemKind::Reserved
                },
                MemRegion {
                    base: 0x8000,
                    len: 0x9_7C00,
                    kind: MemKind::Usable
                },
                MemRegion {
                    base: 0x9_FC00,
                    len: 0x6_0400,
                    kind: MemKind::Reserved
                },
                MemRegion {
                    base: 0x10_0000,
                    len: (256 << 20) - 0x10_0000,
                    kind: MemKind::Usable
                },
            ]
        );
        check_well_formed(&map, 256 << 20);
        assert_eq!(MemKind::Usable.code(), 1);
        assert_eq!(MemKind::Reserved.code(), 2);
    }

    #[test]
    fn map_edge_cases() {
        // Reserved at 0, overlapping, empty and beyond-low-memory ranges.
        let map = pc_memory_map(
            64 << 20,
            &[
                0..0x1000,
                0x800..0x3000,
                0x5000..0x5000,
                0x9_0000..0x20_0000,
            ],
        );
        assert_eq!(
            map[0],
            MemRegion {
                base: 0,
                len: 0x3000,
                kind: MemKind::Reserved
            }
        );
        assert_eq!(map[1].base, 0x3000);
        assert_eq!(map[1].end(), 0x9_0000);
        assert_eq!(
            map[2],
            MemRegion {
                base: 0x9_0000,
                len: 0x17_0000,
                kind: MemKind::Reserved
            }
        );
        assert_eq!(
            map[3],
            MemRegion {
                base: 0x20_0000,
                len: (64 << 20) - 0x20_0000,
                kind: MemKind::Usable
            }
        );
        check_well_formed(&map, 64 << 20);
        // Less than 640 KiB of memory.
        let tiny = pc_memory_map(0x4_0000, &[layout::BOOT_RESERVED]);
        check_well_formed(&tiny, 0x4_0000);
        assert_eq!(tiny.last().map(|r| r.kind), Some(MemKind::Reserved));
        assert_eq!(pc_memory_map(0, &[]).len(), 1, "only the legacy hole");
    }

    #[test]
    fn helpers() {
        assert_eq!(align_up(0x10_0001, 0x20_0000), Some(0x20_0000));
        assert_eq!(align_up(u64::MAX, 0x1000), None);
        assert_eq!(align_up(5, 0), None);
        assert_eq!(align_down(0x1FFF, 0x1000), 0x1000);
        assert!(overlaps(&(0..10), &(9..11)));
        assert!(!overlaps(&(0..10), &(10..11)));
        assert!(!overlaps(&(0..10), &(5..5)));
        assert_eq!(le32(&[1, 0, 0, 0, 9], 0), Some(1));
        assert_eq!(le32(&[1, 0, 0], 0), None);
        assert_eq!(le64(&[0; 8], usize::MAX), None);
        let mut b = [0u8; 4];
        put(&mut b, 3, &[1, 2]);
        assert_eq!(b, [0; 4], "out-of-range write dropped");
        put(&mut b, 2, &[1, 2]);
        assert_eq!(b, [0, 0, 1, 2]);
    }
}
