//! Guest-linear to guest-physical translation through the guest's own page
//! tables, read from its memory ([`GuestMemory`]): what a backend needs to
//! look at the bytes of a guest instruction when the hardware does not say
//! how long it was (AMD-V without NRIP save).
//!
//! The walk follows the paging mode the guest's CR0, CR4 and EFER select
//! (SDM Vol. 3A 4.1-4.5; APM Vol. 2, 5.2-5.5):
//!
//! | CR0.PG | CR4.PAE | EFER.LMA | mode | pages |
//! |---|---|---|---|---|
//! | 0 | - | - | none: linear = physical (32 bits) | - |
//! | 1 | 0 | 0 | 32-bit | 4 KiB; 4 MiB with CR4.PSE (PSE-36 high bits) |
//! | 1 | 1 | 0 | PAE | 4 KiB, 2 MiB |
//! | 1 | 1 | 1 | 4-level | 4 KiB, 2 MiB, 1 GiB |
//!
//! 5-level paging (CR4.LA57 in long mode) is refused. Only translation is
//! done: no permission is checked (a fetch for an instruction that already
//! caused a VM exit was allowed) and no accessed or dirty bit is set. Table
//! entries are read from memory, so a guest that changed its tables without
//! flushing its TLB may see a different translation than its CPU did; a
//! caller that needs the bytes the CPU executed checks what it reads (an
//! instruction decoder checks the opcode).
//!
//! A table entry outside the VM's memory, a not-present entry and a
//! reserved large-page bit are errors ([`PagingError`]), never a guess.
//!
//! ```
//! use hvcore::arch::{GuestMemory, GuestMemoryError};
//! use hvcore::guest_paging::{translate, PagingRegs};
//! struct Flat;
//! impl GuestMemory for Flat {
//!     fn read(&self, gpa: u64, _: &mut [u8]) -> Result<(), GuestMemoryError> {
//!         Err(GuestMemoryError::OutOfRange { gpa })
//!     }
//! }
//! // Paging off: linear addresses are physical, no table is read.
//! let regs = PagingRegs { cr0: 0x11, cr3: 0, cr4: 0, efer: 0 };
//! assert_eq!(translate(&Flat, &regs, 0x7c00).unwrap().gpa, 0x7c00);
//! ```

use core::fmt;

use crate::arch::{GuestMemory, GuestMemoryError, CR0_PG, CR4_PAE, EFER_LMA};

/// CR4.PSE: 4 MiB pages with 32-bit paging.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.LA57: 5-level paging in long mode.
pub const CR4_LA57: u64 = 1 << 12;

/// Entry bit 0: present.
const PRESENT: u64 = 1 << 0;
/// Entry bit 7: PS, the entry maps a page (PDE, PDPTE in long mode).
const PAGE_SIZE: u64 = 1 << 7;
/// Address bits 51:12 of a PAE or long-mode entry.
const ADDR_4K: u64 = 0x000F_FFFF_FFFF_F000;
/// Address bits 51:21 of a 2 MiB page.
const ADDR_2M: u64 = 0x000F_FFFF_FFE0_0000;
/// Address bits 51:30 of a 1 GiB page.
const ADDR_1G: u64 = 0x000F_FFFF_C000_0000;

const KIB_4: u64 = 1 << 12;
const MIB_2: u64 = 1 << 21;
const MIB_4: u64 = 1 << 22;
const GIB_1: u64 = 1 << 30;

/// The guest registers that select and locate its page tables
/// (guest-visible values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingRegs {
    /// CR0 (PG).
    pub cr0: u64,
    /// CR3 (the root table).
    pub cr3: u64,
    /// CR4 (PAE, PSE, LA57).
    pub cr4: u64,
    /// EFER (LMA).
    pub efer: u64,
}

/// The paging mode [`PagingRegs`] select (see the module table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG = 0: linear addresses (32 bits) are physical.
    None,
    /// 32-bit paging: two levels of 4-byte entries.
    Bits32,
    /// PAE paging: a 4-entry PDPT, then two levels of 8-byte entries.
    Pae,
    /// 4-level paging (long mode).
    Level4,
}

impl PagingRegs {
    /// The paging mode, or [`PagingError::FiveLevel`] for 5-level paging.
    pub fn mode(&self) -> Result<PagingMode, PagingError> {
        if self.cr0 & CR0_PG == 0 {
            return Ok(PagingMode::None);
        }
        if self.efer & EFER_LMA != 0 {
            // LA57 only matters in long mode (it cannot change there).
            if self.cr4 & CR4_LA57 != 0 {
                return Err(PagingError::FiveLevel);
            }
            return Ok(PagingMode::Level4);
        }
        Ok(if self.cr4 & CR4_PAE != 0 {
            PagingMode::Pae
        } else {
            PagingMode::Bits32
        })
    }
}

/// Why a linear address could not be translated or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingError {
    /// 5-level paging (CR4.LA57 with EFER.LMA) is not walked.
    FiveLevel,
    /// A long-mode address whose bits 63:47 differ.
    NonCanonical {
        /// The address.
        linear: u64,
    },
    /// A paging-structure entry has P = 0.
    NotPresent {
        /// The address being translated.
        linear: u64,
        /// The entry's level: 1 = page table ... 4 = PML4 (PAE: 3 = PDPT).
        level: u8,
    },
    /// A paging-structure entry sets PS where no page can be mapped (PML4E,
    /// PAE PDPTE): a reserved bit.
    ReservedBit {
        /// The address being translated.
        linear: u64,
        /// The entry's level.
        level: u8,
    },
    /// A paging-structure entry lies outside the VM's memory.
    TableOutOfRange {
        /// The address being translated.
        linear: u64,
        /// Guest-physical address of the entry.
        gpa: u64,
    },
    /// The translated page lies outside the VM's memory ([`read_linear`]).
    OutOfRange {
        /// The address being read.
        linear: u64,
        /// Its guest-physical address.
        gpa: u64,
    },
}

impl PagingError {
    /// A short description without addresses (for fixed-text reports).
    pub fn describe(&self) -> &'static str {
        match self {
            PagingError::FiveLevel => "5-level paging is not supported",
            PagingError::NonCanonical { .. } => "the address is not canonical",
            PagingError::NotPresent { .. } => "a guest page-table entry is not present",
            PagingError::ReservedBit { .. } => "a guest page-table entry sets a reserved bit",
            PagingError::TableOutOfRange { .. } => {
                "a guest page-table entry lies outside the VM's memory"
            }
            PagingError::OutOfRange { .. } => "the page lies outside the VM's memory",
        }
    }
}

impl fmt::Display for PagingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = self.describe();
        match *self {
            PagingError::FiveLevel => f.write_str(what),
            PagingError::NonCanonical { linear } => write!(f, "{what} (linear {linear:#x})"),
            PagingError::NotPresent { linear, level }
            | PagingError::ReservedBit { linear, level } => {
                write!(f, "{what} (level {level}, linear {linear:#x})")
            }
            PagingError::TableOutOfRange { linear, gpa }
            | PagingError::OutOfRange { linear, gpa } => {
                write!(f, "{what} (gpa {gpa:#x}, linear {linear:#x})")
            }
        }
    }
}

/// Where a linear address lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The guest-physical address.
    pub gpa: u64,
    /// Size of the page that maps it (4 KiB, 2 MiB, 4 MiB or 1 GiB; 4 KiB
    /// without paging).
    pub page_size: u64,
}

/// Reads the 4- or 8-byte entry at `gpa`.
fn entry(mem: &dyn GuestMemory, linear: u64, gpa: u64, wide: bool) -> Result<u64, PagingError> {
    let mut b = [0u8; 8];
    let buf = if wide { &mut b[..] } else { &mut b[..4] };
    mem.read(gpa, buf)
        .map_err(
            |GuestMemoryError::OutOfRange { .. }| PagingError::TableOutOfRange { linear, gpa },
        )?;
    Ok(u64::from_le_bytes(b))
}

/// Reads the entry at `index` of the table at `table`, checking P.
fn present(
    mem: &dyn GuestMemory,
    linear: u64,
    table: u64,
    index: u64,
    wide: bool,
    level: u8,
) -> Result<u64, PagingError> {
    let size = if wide { 8 } else { 4 };
    let e = entry(mem, linear, table + index * size, wide)?;
    if e & PRESENT == 0 {
        return Err(PagingError::NotPresent { linear, level });
    }
    Ok(e)
}

/// Translates guest-linear `linear` into a guest-physical address through
/// the guest's page tables (see the module docs). Outside long mode only
/// the low 32 bits of `linear` count, as on the CPU.
pub fn translate(
    mem: &dyn GuestMemory,
    regs: &PagingRegs,
    linear: u64,
) -> Result<Translation, PagingError> {
    let found = |gpa, page_size| Ok(Translation { gpa, page_size });
    let idx = |shift: u32, bits: u32| (linear >> shift) & ((1 << bits) - 1);
    match regs.mode()? {
        PagingMode::None => found(linear & 0xFFFF_FFFF, KIB_4),
        PagingMode::Bits32 => {
            let linear = linear & 0xFFFF_FFFF;
            let pde = present(mem, linear, regs.cr3 & 0xFFFF_F000, idx(22, 10), false, 2)?;
            if pde & PAGE_SIZE != 0 && regs.cr4 & CR4_PSE != 0 {
                // PSE-36: PDE bits 20:13 are physical-address bits 39:32.
                let high = ((pde >> 13) & 0xFF) << 32;
                return found(high | (pde & 0xFFC0_0000) | (linear & (MIB_4 - 1)), MIB_4);
            }
            let pte = present(mem, linear, pde & 0xFFFF_F000, idx(12, 10), false, 1)?;
            found((pte & 0xFFFF_F000) | (linear & (KIB_4 - 1)), KIB_4)
        }
        PagingMode::Pae => {
            let linear = linear & 0xFFFF_FFFF;
            let pdpte = present(mem, linear, regs.cr3 & 0xFFFF_FFE0, idx(30, 2), true, 3)?;
            if pdpte & PAGE_SIZE != 0 {
                return Err(PagingError::ReservedBit { linear, level: 3 });
            }
            walk_pd(mem, linear, pdpte & ADDR_4K, idx(21, 9), idx(12, 9))
        }
        PagingMode::Level4 => {
            let sign = (linear as i64) >> 47;
            if sign != 0 && sign != -1 {
                return Err(PagingError::NonCanonical { linear });
            }
            let pml4e = present(mem, linear, regs.cr3 & ADDR_4K, idx(39, 9), true, 4)?;
            if pml4e & PAGE_SIZE != 0 {
                return Err(PagingError::ReservedBit { linear, level: 4 });
            }
            let pdpte = present(mem, linear, pml4e & ADDR_4K, idx(30, 9), true, 3)?;
            if pdpte & PAGE_SIZE != 0 {
                return found((pdpte & ADDR_1G) | (linear & (GIB_1 - 1)), GIB_1);
            }
            walk_pd(mem, linear, pdpte & ADDR_4K, idx(21, 9), idx(12, 9))
        }
    }
}

/// The last two levels of PAE and 4-level paging: a page directory (2 MiB
/// pages) and a page table.
fn walk_pd(
    mem: &dyn GuestMemory,
    linear: u64,
    pd: u64,
    pd_index: u64,
    pt_index: u64,
) -> Result<Translation, PagingError> {
    let pde = present(mem, linear, pd, pd_index, true, 2)?;
    if pde & PAGE_SIZE != 0 {
        return Ok(Translation {
            gpa: (pde & ADDR_2M) | (linear & (MIB_2 - 1)),
            page_size: MIB_2,
        });
    }
    let pte = present(mem, linear, pde & ADDR_4K, pt_index, true, 1)?;
    Ok(Translation {
        gpa: (pte & ADDR_4K) | (linear & (KIB_4 - 1)),
        page_size: KIB_4,
    })
}

/// Reads `buf.len()` bytes at guest-linear `linear`, translating each 4 KiB
/// page on its own: a read that crosses into another page finds that page
/// wherever the guest mapped it (and fails if it is not mapped). Outside
/// long mode the address wraps at 4 GiB, as on the CPU.
pub fn read_linear(
    mem: &dyn GuestMemory,
    regs: &PagingRegs,
    linear: u64,
    buf: &mut [u8],
) -> Result<(), PagingError> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = linear.wrapping_add(done as u64);
        let t = translate(mem, regs, at)?;
        let in_page = (KIB_4 - (at & (KIB_4 - 1))) as usize;
        let n = in_page.min(buf.len() - done);
        let chunk = &mut buf[done..done + n];
        mem.read(t.gpa, chunk)
            .map_err(
                |GuestMemoryError::OutOfRange { gpa }| PagingError::OutOfRange { linear: at, gpa },
            )?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::CR0_PE;
    use alloc::vec;
    use alloc::vec::Vec;

    /// Guest RAM at 0..len; every read is checked.
    struct Ram(Vec<u8>);

    impl Ram {
        fn new(len: usize) -> Ram {
            Ram(vec![0; len])
        }
        fn put(&mut self, gpa: u64, bytes: &[u8]) {
            let at = gpa as usize;
            self.0[at..at + bytes.len()].copy_from_slice(bytes);
        }
        fn put32(&mut self, gpa: u64, v: u32) {
            self.put(gpa, &v.to_le_bytes());
        }
        fn put64(&mut self, gpa: u64, v: u64) {
            self.put(gpa, &v.to_le_bytes());
        }
    }

    impl GuestMemory for Ram {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
            let src = usize::try_from(gpa)
                .ok()
                .and_then(|s| self.0.get(s..s.checked_add(buf.len())?))
                .ok_or(GuestMemoryError::OutOfRange { gpa })?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    const P: u64 = 1;
    const RW: u64 = 2;
    const PS: u64 = 1 << 7;
    const PG: u64 = CR0_PG | CR0_PE;

    fn long_regs(cr3: u64) -> PagingRegs {
        PagingRegs {
            cr0: PG,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
        }
    }

    fn gpa(mem: &Ram, regs: &PagingRegs, linear: u64) -> Result<(u64, u64), PagingError> {
        translate(mem, regs, linear).map(|t| (t.gpa, t.page_size))
    }

    #[test]
    fn modes_from_the_registers() {
        let r = |cr0, cr4, efer| {
            PagingRegs {
                cr0,
                cr3: 0,
                cr4,
                efer,
            }
            .mode()
        };
        assert_eq!(r(0x11, CR4_PAE, 0), Ok(PagingMode::None));
        assert_eq!(r(PG, 0, 0), Ok(PagingMode::Bits32));
        assert_eq!(r(PG, CR4_PSE, 0), Ok(PagingMode::Bits32));
        assert_eq!(r(PG, CR4_PAE, 0), Ok(PagingMode::Pae));
        assert_eq!(r(PG, CR4_PAE, EFER_LMA), Ok(PagingMode::Level4));
        assert_eq!(
            r(PG, CR4_PAE | CR4_LA57, EFER_LMA),
            Err(PagingError::FiveLevel)
        );
        // LA57 without long mode does nothing yet.
        assert_eq!(r(PG, CR4_PAE | CR4_LA57, 0), Ok(PagingMode::Pae));
    }

    #[test]
    fn no_paging_is_identity_on_32_bits() {
        let mem = Ram::new(0);
        let regs = PagingRegs {
            cr0: CR0_PE,
            ..Default::default()
        };
        assert_eq!(gpa(&mem, &regs, 0xF_FFF0), Ok((0xF_FFF0, 4096)));
        assert_eq!(gpa(&mem, &regs, 0x1_0000_1234), Ok((0x1234, 4096)));
    }

    #[test]
    fn bits32_with_4k_and_4m_pages() {
        let mut mem = Ram::new(0x10_0000);
        // PD at 0x1000: PDE 0 -> PT at 0x2000; PDE 1 a 4 MiB page at
        // 0x40_0000 with PSE-36 bits (0x3 -> bits 33:32); PDE 3 has PS but
        // points at a table when CR4.PSE is clear.
        mem.put32(0x1000, (0x2000 | P | RW) as u32);
        mem.put32(0x1004, (0xC0_0000 | (0x3 << 13) | PS | P) as u32);
        mem.put32(0x100C, (0x3000 | PS | P) as u32);
        // PT: linear 0x5000 -> 0x9000; PT at 0x3000: linear 0xC0_1000 -> 0x7000.
        mem.put32(0x2000 + 5 * 4, (0x9000 | P) as u32);
        mem.put32(0x3000 + 4, (0x7000 | P) as u32);
        let mut regs = PagingRegs {
            cr0: PG,
            cr3: 0x1000 | 0x18, // PWT/PCD ignored
            cr4: CR4_PSE,
            efer: 0,
        };
        assert_eq!(gpa(&mem, &regs, 0x5123), Ok((0x9123, 4096)));
        assert_eq!(
            gpa(&mem, &regs, 0x41_2345),
            Ok((0x3_00C1_2345, 4 << 20)),
            "4 MiB page with PSE-36 bits"
        );
        // Upper half of a 64-bit linear address is ignored outside long mode.
        assert_eq!(gpa(&mem, &regs, 0xFFFF_0000_0000_5123), Ok((0x9123, 4096)));
        // PS is honoured only with CR4.PSE.
        // With CR4.PSE the same entry maps a 4 MiB page at 0 whose PSE-36
        // bits (entry bit 13, from the table address 0x3000) give bit 32.
        assert_eq!(gpa(&mem, &regs, 0xC0_1010), Ok((0x1_0000_1010, 4 << 20)));
        regs.cr4 = 0;
        assert_eq!(gpa(&mem, &regs, 0xC0_1010), Ok((0x7010, 4096)));
        // Not present: PDE 2, and PTE 6 in the first table.
        assert_eq!(
            gpa(&mem, &regs, 0x80_0000),
            Err(PagingError::NotPresent {
                linear: 0x80_0000,
                level: 2
            })
        );
        assert_eq!(
            gpa(&mem, &regs, 0x6000),
            Err(PagingError::NotPresent {
                linear: 0x6000,
                level: 1
            })
        );
    }

    #[test]
    fn pae_with_4k_and_2m_pages() {
        let mut mem = Ram::new(0x10_0000);
        // PDPT at 0x1020 (32-byte aligned); PDPTE 0 -> PD 0x2000; PDPTE 3
        // -> PD 0x3000.
        mem.put64(0x1020, 0x2000 | P);
        mem.put64(0x1020 + 3 * 8, 0x3000 | P);
        // PD 0x2000: PDE 1 -> 2 MiB page at 0x1_0000_0000 (above 4 GiB);
        // PDE 0 -> PT 0x4000.
        mem.put64(0x2000 + 8, 0x1_0000_0000 | PS | RW | P | (1 << 63));
        mem.put64(0x2000, 0x4000 | P);
        mem.put64(0x4000 + 7 * 8, 0x8000 | P | (1 << 63));
        // PD 0x3000: last PDE -> PT 0x5000; last PTE -> 0xA000.
        mem.put64(0x3000 + 511 * 8, 0x5000 | P);
        mem.put64(0x5000 + 511 * 8, 0xA000 | P);
        let regs = PagingRegs {
            cr0: PG,
            cr3: 0x1020,
            cr4: CR4_PAE,
            efer: 0,
        };
        assert_eq!(gpa(&mem, &regs, 0x7FFF), Ok((0x8FFF, 4096)));
        assert_eq!(
            gpa(&mem, &regs, 0x20_1234),
            Ok((0x1_0000_1234, 2 << 20)),
            "NX and PAT-free 2 MiB page"
        );
        assert_eq!(gpa(&mem, &regs, 0xFFFF_FFF0), Ok((0xAFF0, 4096)));
        assert_eq!(
            gpa(&mem, &regs, 0x4000_0000),
            Err(PagingError::NotPresent {
                linear: 0x4000_0000,
                level: 3
            })
        );
        // A PDPTE with PS is reserved in PAE paging.
        mem.put64(0x1020 + 2 * 8, 0x6000 | PS | P);
        assert_eq!(
            gpa(&mem, &regs, 0x8000_0000),
            Err(PagingError::ReservedBit {
                linear: 0x8000_0000,
                level: 3
            })
        );
    }

    /// 4-level tables: PML4 0x1000; PML4E 0 -> PDPT 0x2000; PML4E 511 ->
    /// PDPT 0x5000. PDPT 0x2000: PDPTE 1 -> 1 GiB page at 0x4000_0000;
    /// PDPTE 0 -> PD 0x3000. PD: PDE 0 -> PT 0x4000, PDE 1 -> 2 MiB page at
    /// 0x60_0000. PT: PTE 0x10 -> 0x9000, PTE 0x11 -> 0x7000 (so linear
    /// 0x10000 and 0x11000 are adjacent but physically reversed).
    fn long_tables() -> Ram {
        let mut mem = Ram::new(0x10_0000);
        mem.put64(0x1000, 0x2000 | P | RW);
        mem.put64(0x1000 + 511 * 8, 0x5000 | P);
        mem.put64(0x2000 + 8, 0x4000_0000 | PS | P);
        mem.put64(0x2000, 0x3000 | P | RW);
        mem.put64(0x3000, 0x4000 | P | RW);
        mem.put64(0x3000 + 8, 0x60_0000 | PS | P);
        mem.put64(0x4000 + 0x10 * 8, 0x9000 | P);
        mem.put64(0x4000 + 0x11 * 8, 0x7000 | P);
        // PDPT 0x5000: last entry -> PD 0x6000 whose last PDE -> 2 MiB at 0.
        mem.put64(0x5000 + 511 * 8, 0x6000 | P);
        mem.put64(0x6000 + 511 * 8, PS | P);
        mem
    }

    #[test]
    fn long_mode_with_1g_2m_and_4k_pages() {
        let mem = long_tables();
        let regs = long_regs(0x1000 | 0x5); // PCID bits ignored
        assert_eq!(gpa(&mem, &regs, 0x10_0AB), Ok((0x90AB, 4096)));
        assert_eq!(gpa(&mem, &regs, 0x11_000), Ok((0x7000, 4096)));
        assert_eq!(gpa(&mem, &regs, 0x20_0042), Ok((0x60_0042, 2 << 20)));
        assert_eq!(
            gpa(&mem, &regs, 0x7654_3210),
            Ok((0x7654_3210, 1 << 30)),
            "1 GiB page"
        );
        // The top of the address space: PML4E 511, PDPTE 511, PDE 511.
        assert_eq!(
            gpa(&mem, &regs, 0xFFFF_FFFF_FFE0_1234),
            Ok((0x1234, 2 << 20))
        );
        assert_eq!(
            gpa(&mem, &regs, 0x0000_8000_0000_0000),
            Err(PagingError::NonCanonical {
                linear: 0x0000_8000_0000_0000
            })
        );
        for (linear, level) in [
            (0x0000_0080_0000_0000, 4),
            (0x8000_0000, 3),
            (0x40_0000, 2),
            (0x12_000, 1),
        ] {
            assert_eq!(
                gpa(&mem, &regs, linear),
                Err(PagingError::NotPresent { linear, level }),
                "{linear:#x}"
            );
        }
    }

    #[test]
    fn reserved_ps_in_a_pml4e() {
        let mut mem = long_tables();
        mem.put64(0x1000 + 8, 0x2000 | PS | P);
        assert_eq!(
            gpa(&mem, &long_regs(0x1000), 0x80_0000_0000),
            Err(PagingError::ReservedBit {
                linear: 0x80_0000_0000,
                level: 4
            })
        );
    }

    #[test]
    fn tables_outside_guest_memory() {
        let mut mem = long_tables();
        // CR3 beyond RAM; a PDPTE pointing beyond RAM.
        assert_eq!(
            gpa(&mem, &long_regs(0x40_0000_0000), 0x1000),
            Err(PagingError::TableOutOfRange {
                linear: 0x1000,
                gpa: 0x40_0000_0000
            })
        );
        mem.put64(0x2000 + 2 * 8, 0xF_FFFF_FFFF_F000 | P);
        assert_eq!(
            gpa(&mem, &long_regs(0x1000), 0x8000_0123),
            Err(PagingError::TableOutOfRange {
                linear: 0x8000_0123,
                gpa: 0xF_FFFF_FFFF_F000
            })
        );
        // A 32-bit PD at the end of RAM: the entry's last bytes are missing.
        let mut small = Ram::new(0x2002);
        small.put(0x2000, &[1, 0]);
        let regs = PagingRegs {
            cr0: PG,
            cr3: 0x2000,
            cr4: 0,
            efer: 0,
        };
        assert_eq!(
            gpa(&small, &regs, 0x123),
            Err(PagingError::TableOutOfRange {
                linear: 0x123,
                gpa: 0x2000
            })
        );
    }

    #[test]
    fn reads_cross_pages_wherever_they_are_mapped() {
        let mut mem = long_tables();
        let regs = long_regs(0x1000);
        // Linear 0x10FFE..0x11002 is physical 0x9FFE..0xA000 then 0x7000..
        mem.put(0x9FFE, &[0xAA, 0xBB]);
        mem.put(0x7000, &[0xCC, 0xDD]);
        let mut buf = [0u8; 4];
        read_linear(&mem, &regs, 0x10FFE, &mut buf).unwrap();
        assert_eq!(buf, [0xAA, 0xBB, 0xCC, 0xDD]);
        // Into the unmapped page after: the error names the second page.
        let mut buf = [0u8; 3];
        assert_eq!(
            read_linear(&mem, &regs, 0x11FFE, &mut buf),
            Err(PagingError::NotPresent {
                linear: 0x12000,
                level: 1
            })
        );
        // Nothing to read is fine even at an unmapped address.
        read_linear(&mem, &regs, 0x12000, &mut []).unwrap();
        // A mapped page outside RAM.
        let mut mem = long_tables();
        mem.put64(0x4000 + 0x20 * 8, 0x80_0000 | P);
        assert_eq!(
            read_linear(&mem, &regs, 0x20_010, &mut buf),
            Err(PagingError::OutOfRange {
                linear: 0x20_010,
                gpa: 0x80_0010
            })
        );
    }

    #[test]
    fn reads_wrap_at_4g_outside_long_mode() {
        // 32-bit paging: linear 0xFFFF_F000 -> 0x5000, linear 0 -> 0x6000.
        let mut mem = Ram::new(0x10_0000);
        mem.put32(0x1000 + 1023 * 4, (0x2000 | P) as u32);
        mem.put32(0x2000 + 1023 * 4, (0x5000 | P) as u32);
        mem.put32(0x1000, (0x3000 | P) as u32);
        mem.put32(0x3000, (0x6000 | P) as u32);
        mem.put(0x5FFF, &[1]);
        mem.put(0x6000, &[2]);
        let regs = PagingRegs {
            cr0: PG,
            cr3: 0x1000,
            cr4: 0,
            efer: 0,
        };
        let mut buf = [0u8; 2];
        read_linear(&mem, &regs, 0xFFFF_FFFF, &mut buf).unwrap();
        assert_eq!(buf, [1, 2]);
        // Without paging the same wrap lands at physical 0.
        let flat = PagingRegs::default();
        let mut one = [0u8; 1];
        read_linear(&mem, &flat, 0x1_0000_5FFF, &mut one).unwrap();
        assert_eq!(one, [1]);
        assert_eq!(
            read_linear(&mem, &flat, 0xFFFF_FFFF, &mut buf),
            Err(PagingError::OutOfRange {
                linear: 0xFFFF_FFFF,
                gpa: 0xFFFF_FFFF
            })
        );
    }

    #[test]
    fn errors_describe_themselves() {
        let e = PagingError::NotPresent {
            linear: 0x12000,
            level: 1,
        };
        assert_eq!(
            alloc::format!("{e}"),
            "a guest page-table entry is not present (level 1, linear 0x12000)"
        );
        let e = PagingError::TableOutOfRange { linear: 1, gpa: 2 };
        assert!(alloc::format!("{e}").contains("gpa 0x2"));
        assert_eq!(
            PagingError::FiveLevel.to_string(),
            "5-level paging is not supported"
        );
    }
}
