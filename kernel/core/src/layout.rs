//! Guest-physical addresses the hypervisor itself uses inside a VM's memory.
//!
//! A 64-bit guest starts in long mode, so before its first instruction it
//! needs a GDT and page tables somewhere in its own memory. They live in one
//! documented range, [`BOOT_RESERVED`], that the host check (`check-config`,
//! `build`, `run`) and the kernel both refuse to load images into: the
//! hypervisor never overwrites a guest's bytes. Real-mode guests start with
//! no such structures and have no reserved range.

use core::ops::Range;

use crate::config::GuestMode;

/// Guest-physical range holding the hypervisor-written boot structures of a
/// 64-bit guest: GDT, PML4, PDPT and four page directories (identity map of
/// the first 4 GiB with 2 MiB pages, SDM Vol. 3A 4.5).
pub const BOOT_RESERVED: Range<u64> = 0x1000..0x8000;

/// Flat GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18, two slots).
pub const GDT: u64 = 0x1000;
/// PML4 of the initial identity map.
pub const PML4: u64 = 0x2000;
/// PDPT of the initial identity map.
pub const PDPT: u64 = 0x3000;
/// First of four page directories (each maps 1 GiB with 2 MiB pages).
pub const PD0: u64 = 0x4000;

/// Guest-physical range where a kernel boot-protocol loader writes boot
/// information ([`crate::boot_proto`]): the Linux zero page at 0x8000 and
/// command line at 0x9000, or the Multiboot information structure with its
/// memory map and command line. Right above [`BOOT_RESERVED`], inside usable
/// low memory (below 640 KiB), below the 1 MiB line kernels load above.
pub const BOOT_INFO: Range<u64> = 0x8000..0x1_0000;

/// The range the hypervisor writes into for a guest starting in `mode`
/// (empty when it writes nothing). Kernels started through a boot protocol
/// (`Linux64`, `Protected32`) keep their loaders off [`BOOT_RESERVED`] and
/// [`BOOT_INFO`] themselves ([`crate::boot_proto`]); `BOOT_RESERVED` is
/// theirs too, reported reserved in the memory map they are given.
pub fn reserved_for(mode: GuestMode) -> Range<u64> {
    match mode {
        GuestMode::Long64 | GuestMode::Linux64 | GuestMode::Protected32 => BOOT_RESERVED,
        GuestMode::Real16 => 0..0,
    }
}

/// Whether `start..start+len` touches the range reserved for `mode`.
pub fn overlaps_reserved(mode: GuestMode, start: u64, len: u64) -> bool {
    let r = reserved_for(mode);
    let end = start.saturating_add(len);
    len > 0 && !r.is_empty() && start < r.end && end > r.start
}

const _: () = {
    assert!(GDT >= BOOT_RESERVED.start && PD0 + 4 * 0x1000 <= BOOT_RESERVED.end);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_edges() {
        assert!(!overlaps_reserved(GuestMode::Long64, 0, 0x1000));
        assert!(overlaps_reserved(GuestMode::Long64, 0, 0x1001));
        assert!(overlaps_reserved(GuestMode::Long64, 0x7fff, 1));
        assert!(!overlaps_reserved(GuestMode::Long64, 0x8000, 0x1000));
        assert!(!overlaps_reserved(GuestMode::Long64, 0x2000, 0));
        assert!(!overlaps_reserved(GuestMode::Real16, 0x1000, 0x7000));
        assert!(overlaps_reserved(GuestMode::Long64, 0, u64::MAX));
    }
}
