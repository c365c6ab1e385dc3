//! Multiboot 1 (the Multiboot Specification 0.6.96) for 32-bit kernels.
//!
//! **The header** is found by scanning the first 8192 bytes of the image at
//! 4-byte alignment for `magic = 0x1BADB002` with `magic + flags + checksum
//! = 0`. Flag bits 0-15 are requirements: bit 0 (page-align modules: there
//! are none) and bit 1 (memory information: always provided) are met; bit 2
//! (video mode table) and the undefined bits 3-15 are refused. Bit 16 says
//! the a.out kludge address fields are valid and used instead of the
//! executable's own headers; otherwise the image must be ELF32 (i386) and
//! its `PT_LOAD` segments are loaded at their physical addresses.
//!
//! **a.out kludge**: the file offset of `load_addr` is the header's offset
//! minus `header_addr - load_addr`; `load_end_addr` (0: the end of the file)
//! bounds the bytes copied; `bss_end_addr` (0: none) extends the zeroed
//! part; `entry_addr` is the entry point. **ELF32**: `p_offset`, `p_filesz`,
//! `p_memsz` at `p_paddr`; the entry is `e_entry`, translated from virtual
//! to physical when it lies in a segment whose virtual and physical
//! addresses differ (as GRUB does).
//!
//! **The information structure** goes to [`INFO`], with (offsets from it)
//! the memory map at 0x80, the boot loader name at 0x400 and the command
//! line at 0x800, all inside [`super::BOOT_INFO`]: flags = memory (bit 0),
//! command line (bit 2), memory map (bit 6), boot loader name (bit 9);
//! `mem_lower` = 639 KiB, `mem_upper` = KiB from 1 MiB to the end of memory
//! (or 4 GiB); map entries of 24 bytes (`size` = 20, 64-bit base and length,
//! type 1 usable / 2 reserved) from [`super::pc_memory_map`] with
//! [`layout::BOOT_RESERVED`] reserved.
//!
//! # The entry state (Multiboot section 3.2)
//!
//! EAX = [`BOOTLOADER_MAGIC`], EBX = [`MultibootPlan::ebx`] (the information
//! structure), EIP = [`MultibootPlan::entry`], 32-bit protected mode with
//! paging off (CR0.PE = 1, CR0.PG = 0), CS a flat 4 GiB 32-bit
//! execute/read code segment, DS/ES/FS/GS/SS flat 4 GiB 32-bit read/write
//! data segments, A20 enabled, EFLAGS.VM = 0 and IF = 0. ESP, GDTR and IDTR
//! are undefined: the kernel sets its own before using them. Segments'
//! bytes past their data up to `mem_len` (bss) must read as zero.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use super::{
    le16, le32, overlaps, pc_memory_map, put, MemRegion, OwnedSegment, BOOT_INFO, HIGH_MEMORY,
    LOW_MEMORY_END,
};
use crate::image::Segment;
use crate::layout;

/// Header magic.
pub const MAGIC: u32 = 0x1BAD_B002;
/// EAX at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header lies within this many bytes from the start of the image.
pub const SEARCH_LEN: usize = 8192;
/// Guest-physical address of the information structure.
pub const INFO: u64 = 0x8000;
/// Memory map, offset from [`INFO`].
const MMAP_OFF: usize = 0x80;
/// Boot loader name, offset from [`INFO`].
const NAME_OFF: usize = 0x400;
/// Command line, offset from [`INFO`].
const CMDLINE_OFF: usize = 0x800;
/// Size of `struct multiboot_info` up to the framebuffer fields.
const INFO_SIZE: usize = 116;
/// Bytes per memory-map entry (`size` field included).
const MMAP_ENTRY: usize = 24;
/// What the boot loader name field says.
pub const LOADER_NAME: &str = "rust-hv";

// The parts of the information blob do not overlap and fit the boot area.
const _: () = {
    assert!(INFO_SIZE <= MMAP_OFF);
    assert!(MMAP_OFF + 16 * MMAP_ENTRY <= NAME_OFF);
    assert!(NAME_OFF + LOADER_NAME.len() < CMDLINE_OFF);
    assert!(INFO >= BOOT_INFO.start && INFO + CMDLINE_OFF as u64 + 1 < BOOT_INFO.end);
};

/// Header flag: align modules on 4 KiB (required; no modules here).
pub const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: memory information required.
pub const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: video mode table required (not provided).
pub const FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Header flag: the a.out kludge address fields are valid.
pub const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Requirement bits this loader meets.
const SUPPORTED_REQUIRED: u32 = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO;

/// Info flag: `mem_lower`/`mem_upper` valid.
pub const INFO_MEMORY: u32 = 1 << 0;
/// Info flag: `cmdline` valid.
pub const INFO_CMDLINE: u32 = 1 << 2;
/// Info flag: `mmap_length`/`mmap_addr` valid.
pub const INFO_MEM_MAP: u32 = 1 << 6;
/// Info flag: `boot_loader_name` valid.
pub const INFO_BOOT_LOADER_NAME: u32 = 1 << 9;

/// Why a Multiboot kernel cannot be booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultibootError {
    /// No header (magic with a matching checksum) in the first 8192 bytes.
    NoHeader,
    /// The header requires something this loader does not provide.
    UnsupportedFlags {
        /// The header's flags.
        flags: u32,
        /// The requirement bits not met.
        unsupported: u32,
    },
    /// The image ends before a part the header or ELF headers describe.
    Truncated {
        /// The part.
        what: &'static str,
    },
    /// Inconsistent a.out kludge address fields.
    BadAddresses {
        /// What is wrong.
        reason: &'static str,
    },
    /// No a.out kludge and not an ELF32 i386 executable.
    NotElf32,
    /// Nothing to load (no `PT_LOAD` with bytes, or an empty kludge range).
    NothingToLoad,
    /// A segment lies (partly) outside the VM's memory or above 4 GiB.
    OutsideMemory {
        /// Segment start.
        gpa: u64,
        /// Length in memory.
        len: u64,
        /// The VM's memory (or 4 GiB, whichever is lower).
        limit: u64,
    },
    /// A segment overlaps the hypervisor's boot structures and the boot
    /// information (`0x1000..0x10000`).
    OverlapsBootArea {
        /// Segment start.
        gpa: u64,
        /// Length in memory.
        len: u64,
    },
    /// The entry point is outside the loaded memory.
    EntryOutside {
        /// The entry point.
        entry: u64,
    },
    /// The command line does not fit the boot information area.
    CmdlineTooLong {
        /// Its length.
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// The command line contains a NUL byte.
    CmdlineHasNul {
        /// Offset of the NUL.
        at: u64,
    },
}

impl fmt::Display for MultibootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoHeader => write!(
                f,
                "no Multiboot header (magic 0x1badb002 with a valid checksum) in the first 8192 bytes"
            ),
            Self::UnsupportedFlags { flags, unsupported } => write!(
                f,
                "the Multiboot header requires features this loader lacks (flags {flags:#x}, unsupported {unsupported:#x}; bit 2 is the video mode table)"
            ),
            Self::Truncated { what } => write!(f, "truncated Multiboot image: {what} lies outside the file"),
            Self::BadAddresses { reason } => write!(f, "bad Multiboot a.out kludge addresses: {reason}"),
            Self::NotElf32 => write!(f, "no a.out kludge and not an ELF32 i386 executable"),
            Self::NothingToLoad => write!(f, "the Multiboot image has nothing to load"),
            Self::OutsideMemory { gpa, len, limit } => write!(
                f,
                "segment {gpa:#x}..{:#x} lies outside the VM's memory (limit {limit:#x})",
                gpa.saturating_add(len)
            ),
            Self::OverlapsBootArea { gpa, len } => write!(
                f,
                "segment {gpa:#x}..{:#x} overlaps the boot structures at {:#x}..{:#x}",
                gpa.saturating_add(len),
                layout::BOOT_RESERVED.start,
                BOOT_INFO.end
            ),
            Self::EntryOutside { entry } => write!(f, "entry point {entry:#x} lies outside the VM's memory"),
            Self::CmdlineTooLong { len, max } => {
                write!(f, "the command line has {len} bytes, at most {max} fit")
            }
            Self::CmdlineHasNul { at } => write!(f, "the command line contains a NUL byte at offset {at}"),
        }
    }
}

/// The a.out kludge address fields (header offsets 12-28).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AoutKludge {
    /// Where the header itself is loaded.
    pub header_addr: u32,
    /// Start of the text segment.
    pub load_addr: u32,
    /// End of the data segment (0: end of file).
    pub load_end_addr: u32,
    /// End of bss (0: no bss).
    pub bss_end_addr: u32,
    /// Entry point.
    pub entry_addr: u32,
}

/// A Multiboot header found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultibootHeader {
    /// File offset of the magic.
    pub offset: usize,
    /// Flags.
    pub flags: u32,
    /// The address fields, when flag bit 16 is set.
    pub kludge: Option<AoutKludge>,
}

/// Finds and checks the Multiboot header.
pub fn find_header(image: &[u8]) -> Result<MultibootHeader, MultibootError> {
    let end = image.len().min(SEARCH_LEN);
    let offset = (0..end.saturating_sub(11))
        .step_by(4)
        .find(|&at| {
            let word = |i: usize| le32(image, at + i).unwrap_or(0);
            word(0) == MAGIC && word(0).wrapping_add(word(4)).wrapping_add(word(8)) == 0
        })
        .ok_or(MultibootError::NoHeader)?;
    let flags = le32(image, offset + 4).unwrap_or(0);
    let unsupported = flags & 0xFFFF & !SUPPORTED_REQUIRED;
    if unsupported != 0 {
        return Err(MultibootError::UnsupportedFlags { flags, unsupported });
    }
    let kludge = if flags & FLAG_AOUT_KLUDGE != 0 {
        let f = |i: usize| {
            le32(image, offset + i).ok_or(MultibootError::Truncated {
                what: "the header's address fields",
            })
        };
        Some(AoutKludge {
            header_addr: f(12)?,
            load_addr: f(16)?,
            load_end_addr: f(20)?,
            bss_end_addr: f(24)?,
            entry_addr: f(28)?,
        })
    } else {
        None
    };
    Ok(MultibootHeader {
        offset,
        flags,
        kludge,
    })
}

/// Everything to put into the VM and how to start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultibootPlan<'a> {
    /// The header found.
    pub header: MultibootHeader,
    /// Kernel segments (zero-fill `data.len()..mem_len`).
    pub segments: Vec<Segment<'a>>,
    /// The information structure, memory map, loader name and command line,
    /// one blob at [`INFO`].
    pub info: OwnedSegment,
    /// The memory map given to the kernel.
    pub memory_map: Vec<MemRegion>,
    /// EIP at entry (32-bit).
    pub entry: u32,
    /// EAX at entry: [`BOOTLOADER_MAGIC`].
    pub eax: u32,
    /// EBX at entry: the information structure's address.
    pub ebx: u32,
}

impl MultibootPlan<'_> {
    /// Every byte range to copy into guest memory, as (gpa, bytes).
    pub fn writes(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.segments
            .iter()
            .map(|s| (s.gpa, s.data))
            .chain(core::iter::once((
                self.info.gpa,
                self.info.bytes.as_slice(),
            )))
    }
}

fn kludge_segment<'a>(
    image: &'a [u8],
    h: &MultibootHeader,
    k: &AoutKludge,
) -> Result<(Segment<'a>, u64), MultibootError> {
    let bad = |reason| MultibootError::BadAddresses { reason };
    if k.load_addr > k.header_addr {
        return Err(bad("load_addr lies above header_addr"));
    }
    let delta = (k.header_addr - k.load_addr) as usize;
    let file_start = h.offset.checked_sub(delta).ok_or(bad(
        "header_addr - load_addr exceeds the header's file offset",
    ))?;
    let rest = image.len() - file_start;
    let load_len = match k.load_end_addr {
        0 => rest,
        end if end < k.load_addr => return Err(bad("load_end_addr lies below load_addr")),
        end => (end - k.load_addr) as usize,
    };
    let data = image
        .get(file_start..file_start + load_len)
        .ok_or(MultibootError::Truncated {
            what: "the text and data up to load_end_addr",
        })?;
    let load_end = u64::from(k.load_addr) + load_len as u64;
    let mem_len = match u64::from(k.bss_end_addr) {
        0 => load_len as u64,
        bss if bss < load_end => return Err(bad("bss_end_addr lies below load_end_addr")),
        bss => bss - u64::from(k.load_addr),
    };
    if mem_len == 0 {
        return Err(MultibootError::NothingToLoad);
    }
    Ok((
        Segment {
            gpa: u64::from(k.load_addr),
            data,
            mem_len,
        },
        u64::from(k.entry_addr),
    ))
}

const PT_LOAD: u32 = 1;
const EM_386: u16 = 3;

fn elf32_segments(image: &[u8]) -> Result<(Vec<Segment<'_>>, u64), MultibootError> {
    let ident = image.get(..6).ok_or(MultibootError::NotElf32)?;
    if ident[..4] != *b"\x7fELF"
        || ident[4] != 1
        || ident[5] != 1
        || le16(image, 18) != Some(EM_386)
    {
        return Err(MultibootError::NotElf32);
    }
    let t = |what| MultibootError::Truncated { what };
    let entry = le32(image, 24).ok_or(t("the ELF header"))?;
    let phoff = le32(image, 28).ok_or(t("the ELF header"))? as usize;
    let phentsize = usize::from(le16(image, 42).ok_or(t("the ELF header"))?);
    let phnum = usize::from(le16(image, 44).ok_or(t("the ELF header"))?);
    if phnum > 0 && phentsize < 32 {
        return Err(t("a program header (e_phentsize below 32)"));
    }
    let mut segments = Vec::new();
    let mut entry_phys = u64::from(entry);
    for i in 0..phnum {
        let at = phoff
            .checked_add(i * phentsize)
            .ok_or(t("a program header"))?;
        let word = |o: usize| le32(image, at + o).ok_or(t("a program header"));
        if word(0)? != PT_LOAD {
            continue;
        }
        let (offset, vaddr, paddr, filesz) = (word(4)?, word(8)?, word(12)?, word(16)?);
        let memsz = word(20)?.max(filesz);
        if memsz == 0 {
            continue;
        }
        let data = image
            .get(
                offset as usize
                    ..(offset as usize)
                        .checked_add(filesz as usize)
                        .ok_or(t("segment data"))?,
            )
            .ok_or(t("segment data"))?;
        if (vaddr..vaddr.saturating_add(memsz)).contains(&entry) && vaddr != paddr {
            entry_phys = u64::from(entry - vaddr) + u64::from(paddr);
        }
        segments.push(Segment {
            gpa: u64::from(paddr),
            data,
            mem_len: u64::from(memsz),
        });
    }
    if segments.is_empty() {
        return Err(MultibootError::NothingToLoad);
    }
    Ok((segments, entry_phys))
}

fn check_segment(s: &Segment<'_>, limit: u64) -> Result<(), MultibootError> {
    let range: Range<u64> = s.gpa..s.gpa.saturating_add(s.mem_len);
    if s.gpa.checked_add(s.mem_len).is_none_or(|end| end > limit) {
        return Err(MultibootError::OutsideMemory {
            gpa: s.gpa,
            len: s.mem_len,
            limit,
        });
    }
    if overlaps(&range, &(layout::BOOT_RESERVED.start..BOOT_INFO.end)) {
        return Err(MultibootError::OverlapsBootArea {
            gpa: s.gpa,
            len: s.mem_len,
        });
    }
    Ok(())
}

fn build_info(cmdline: &[u8], memory: u64, map: &[MemRegion]) -> Vec<u8> {
    let mut b = alloc::vec![0u8; CMDLINE_OFF + cmdline.len() + 1];
    let addr = |off: usize| (INFO as u32) + off as u32;
    let entries = map.len().min((NAME_OFF - MMAP_OFF) / MMAP_ENTRY);
    let flags = INFO_MEMORY | INFO_CMDLINE | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME;
    let mem_lower = memory.min(LOW_MEMORY_END) >> 10;
    let mem_upper = memory.min(1 << 32).saturating_sub(HIGH_MEMORY) >> 10;
    put(&mut b, 0, &flags.to_le_bytes());
    put(&mut b, 4, &(mem_lower as u32).to_le_bytes());
    put(&mut b, 8, &(mem_upper as u32).to_le_bytes());
    put(&mut b, 16, &addr(CMDLINE_OFF).to_le_bytes());
    put(&mut b, 44, &((entries * MMAP_ENTRY) as u32).to_le_bytes());
    put(&mut b, 48, &addr(MMAP_OFF).to_le_bytes());
    put(&mut b, 64, &addr(NAME_OFF).to_le_bytes());
    for (i, r) in map.iter().take(entries).enumerate() {
        let at = MMAP_OFF + i * MMAP_ENTRY;
        put(&mut b, at, &20u32.to_le_bytes());
        put(&mut b, at + 4, &r.base.to_le_bytes());
        put(&mut b, at + 12, &r.len.to_le_bytes());
        put(&mut b, at + 20, &r.kind.code().to_le_bytes());
    }
    put(&mut b, NAME_OFF, LOADER_NAME.as_bytes());
    put(&mut b, CMDLINE_OFF, cmdline);
    b
}

/// Plans booting the Multiboot kernel `image` with `cmdline` in a VM with
/// `memory` bytes of RAM at guest-physical 0.
pub fn plan<'a>(
    image: &'a [u8],
    cmdline: &[u8],
    memory: u64,
) -> Result<MultibootPlan<'a>, MultibootError> {
    let header = find_header(image)?;
    if let Some(at) = cmdline.iter().position(|&b| b == 0) {
        return Err(MultibootError::CmdlineHasNul { at: at as u64 });
    }
    let max = BOOT_INFO.end - INFO - CMDLINE_OFF as u64 - 1;
    if cmdline.len() as u64 > max {
        return Err(MultibootError::CmdlineTooLong {
            len: cmdline.len() as u64,
            max,
        });
    }
    let (segments, entry) = match &header.kludge {
        Some(k) => {
            let (s, e) = kludge_segment(image, &header, k)?;
            (alloc::vec![s], e)
        }
        None => elf32_segments(image)?,
    };
    let limit = memory.min(1 << 32);
    for s in &segments {
        check_segment(s, limit)?;
    }
    if entry >= limit {
        return Err(MultibootError::EntryOutside { entry });
    }
    let memory_map = pc_memory_map(memory, &[layout::BOOT_RESERVED]);
    let info = OwnedSegment {
        gpa: INFO,
        bytes: build_info(cmdline, memory, &memory_map),
    };
    Ok(MultibootPlan {
        header,
        segments,
        info,
        memory_map,
        entry: entry as u32,
        eax: BOOTLOADER_MAGIC,
        ebx: INFO as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot_proto::{le64, MemKind};
    use alloc::string::ToString;

    const MIB: u64 = 1 << 20;

    fn header(flags: u32) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&flags.to_le_bytes());
        h[8..].copy_from_slice(&(0u32.wrapping_sub(MAGIC).wrapping_sub(flags)).to_le_bytes());
        h
    }

    /// An ELF32 i386 executable with two PT_LOAD segments (text at
    /// 0x100000, virtual 0xC0100000; data at 0x200000 with bss) and a
    /// Multiboot header at file offset 0x1000 (in the text).
    fn elf32() -> Vec<u8> {
        let mut b = alloc::vec![0u8; 0x3000];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 1;
        b[5] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&EM_386.to_le_bytes());
        b[24..28].copy_from_slice(&0xC010_0010u32.to_le_bytes());
        b[28..32].copy_from_slice(&52u32.to_le_bytes());
        b[42..44].copy_from_slice(&32u16.to_le_bytes());
        b[44..46].copy_from_slice(&3u16.to_le_bytes());
        let ph = |b: &mut Vec<u8>, i: usize, f: [u32; 6]| {
            for (j, v) in f.iter().enumerate() {
                let at = 52 + i * 32 + j * 4;
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        };
        ph(
            &mut b,
            0,
            [PT_LOAD, 0x1000, 0xC010_0000, 0x10_0000, 0x1000, 0x1000],
        );
        ph(&mut b, 1, [4, 0, 0, 0, 0, 0]); // PT_NOTE: skipped
        ph(
            &mut b,
            2,
            [PT_LOAD, 0x2000, 0x20_0000, 0x20_0000, 0x800, 0x4000],
        );
        b[0x1000..0x100C].copy_from_slice(&header(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO));
        b
    }

    /// A flat image with the a.out kludge: header at offset 0x40, loaded at
    /// 0x100000, 0x2000 bytes of file, bss to 0x104000, entry 0x100080.
    fn aout() -> Vec<u8> {
        let mut b = alloc::vec![0x90u8; 0x2000];
        b[0x40..0x4C].copy_from_slice(&header(FLAG_AOUT_KLUDGE | FLAG_MEMORY_INFO));
        for (i, v) in [0x10_0040u32, 0x10_0000, 0x10_2000, 0x10_4000, 0x10_0080]
            .iter()
            .enumerate()
        {
            b[0x4C + i * 4..0x50 + i * 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Segments inside memory and below 4 GiB, the information blob inside
    /// the boot area and apart from every segment.
    fn check_writes(p: &MultibootPlan, memory: u64) {
        let info = p.info.gpa..p.info.gpa + p.info.bytes.len() as u64;
        assert!(info.start >= BOOT_INFO.start && info.end <= BOOT_INFO.end);
        for s in &p.segments {
            let r = s.gpa..s.gpa + s.mem_len;
            assert!(r.end <= memory.min(1 << 32), "{r:?}");
            assert!(!overlaps(&r, &info), "{r:?}");
        }
        assert_eq!(p.writes().count(), p.segments.len() + 1);
        assert!(u64::from(p.entry) < memory);
    }

    #[test]
    fn elf32_kernel_plan_and_info() {
        let image = elf32();
        let memory = 64 * MIB;
        let p = plan(&image, b"/boot/kernel debug=1", memory).unwrap();
        assert_eq!(p.header.offset, 0x1000);
        assert_eq!(p.segments.len(), 2);
        assert_eq!(p.segments[0].gpa, 0x10_0000);
        assert_eq!(p.segments[0].data, &image[0x1000..0x2000]);
        assert_eq!(
            (
                p.segments[1].gpa,
                p.segments[1].data.len(),
                p.segments[1].mem_len
            ),
            (0x20_0000, 0x800, 0x4000)
        );
        assert_eq!(p.entry, 0x10_0010, "virtual entry translated to physical");
        assert_eq!((p.eax, p.ebx), (BOOTLOADER_MAGIC, INFO as u32));
        let info = &p.info.bytes;
        let w = |at: usize| le32(info, at).unwrap();
        assert_eq!(
            w(0),
            INFO_MEMORY | INFO_CMDLINE | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME
        );
        assert_eq!(w(4), 639);
        assert_eq!(w(8), 63 * 1024);
        assert_eq!(w(16), 0x8800);
        let cmd = &info[0x800..];
        assert_eq!(cmd, b"/boot/kernel debug=1\0");
        assert_eq!(w(48), 0x8080);
        assert_eq!(w(44) as usize, p.memory_map.len() * 24);
        assert_eq!(&info[0x400..0x408], b"rust-hv\0");
        assert_eq!(w(64), 0x8400);
        for (i, r) in p.memory_map.iter().enumerate() {
            let at = 0x80 + 24 * i;
            assert_eq!(w(at), 20, "size field");
            assert_eq!(le64(info, at + 4), Some(r.base));
            assert_eq!(le64(info, at + 12), Some(r.len));
            assert_eq!(w(at + 20), r.kind.code());
        }
        assert_eq!(
            p.memory_map[1],
            MemRegion {
                base: 0x1000,
                len: 0x7000,
                kind: MemKind::Reserved
            }
        );
        assert!(info[INFO_SIZE..0x80].iter().all(|&b| b == 0));
        check_writes(&p, memory);
    }

    #[test]
    fn aout_kludge_plan() {
        let image = aout();
        let p = plan(&image, b"", 16 * MIB).unwrap();
        assert_eq!(p.segments.len(), 1);
        let s = p.segments[0];
        assert_eq!(
            (s.gpa, s.data.len(), s.mem_len),
            (0x10_0000, 0x2000, 0x4000)
        );
        assert_eq!(s.data, &image[..]);
        assert_eq!(p.entry, 0x10_0080);
        assert_eq!(&p.info.bytes[0x800..], b"\0");
        check_writes(&p, 16 * MIB);
        // load_end_addr 0: to the end of the file; bss_end_addr 0: no bss.
        let mut img = aout();
        img[0x54..0x5C].fill(0);
        let s = plan(&img, b"", 16 * MIB).unwrap().segments[0];
        assert_eq!((s.data.len(), s.mem_len), (0x2000, 0x2000));
        // The kludge wins over ELF headers.
        let mut elf_with_kludge = elf32();
        elf_with_kludge[0x1000..0x100C].copy_from_slice(&header(FLAG_AOUT_KLUDGE));
        for (i, v) in [0x10_0000u32, 0x10_0000 - 0x1000, 0x10_1000, 0, 0x10_0000]
            .iter()
            .enumerate()
        {
            elf_with_kludge[0x100C + i * 4..0x1010 + i * 4].copy_from_slice(&v.to_le_bytes());
        }
        let p = plan(&elf_with_kludge, b"", 16 * MIB).unwrap();
        assert_eq!(p.segments[0].data, &elf_with_kludge[..0x2000]);
        assert_eq!(p.segments[0].gpa, 0xF_F000);
    }

    #[test]
    fn memory_info_with_large_and_small_memory() {
        let image = aout();
        let p = plan(&image, b"", 6u64 << 30).unwrap();
        assert_eq!(
            le32(&p.info.bytes, 8),
            Some(4 * 1024 * 1024 - 1024),
            "up to 4 GiB"
        );
        assert_eq!(p.memory_map.last().unwrap().end(), 6u64 << 30);
        let p = plan(&image, b"", 2 * MIB).unwrap();
        assert_eq!(le32(&p.info.bytes, 8), Some(1024));
    }

    #[test]
    fn header_search_rules() {
        // Checksum must match.
        let mut img = aout();
        img[0x48] ^= 1;
        assert_eq!(plan(&img, b"", 16 * MIB), Err(MultibootError::NoHeader));
        // Must be 4-byte aligned.
        let mut img = alloc::vec![0u8; 0x100];
        img[0x42..0x4E].copy_from_slice(&header(0));
        assert_eq!(find_header(&img), Err(MultibootError::NoHeader));
        // Must lie within the first 8192 bytes.
        let mut img = alloc::vec![0u8; 0x4000];
        img[8192..8204].copy_from_slice(&header(0));
        assert_eq!(find_header(&img), Err(MultibootError::NoHeader));
        img[8180..8192].copy_from_slice(&header(0));
        assert_eq!(find_header(&img).map(|h| h.offset), Ok(8180));
        // Video mode and unknown requirement bits are refused.
        let mut img = aout();
        img[0x40..0x4C].copy_from_slice(&header(FLAG_AOUT_KLUDGE | FLAG_VIDEO_MODE));
        let e = plan(&img, b"", 16 * MIB).unwrap_err();
        assert_eq!(
            e,
            MultibootError::UnsupportedFlags {
                flags: FLAG_AOUT_KLUDGE | FLAG_VIDEO_MODE,
                unsupported: 4
            }
        );
        assert!(e.to_string().contains("video mode"));
        // Optional bits above 16 are fine.
        img[0x40..0x4C].copy_from_slice(&header(FLAG_AOUT_KLUDGE | 1 << 20));
        assert!(plan(&img, b"", 16 * MIB).is_ok());
    }

    #[test]
    fn kludge_and_placement_errors() {
        let set = |img: &mut Vec<u8>, field: usize, v: u32| {
            img[0x4C + field * 4..0x50 + field * 4].copy_from_slice(&v.to_le_bytes());
        };
        let mut img = aout();
        set(&mut img, 1, 0x10_0050); // load_addr above header_addr
        assert!(matches!(
            plan(&img, b"", 16 * MIB),
            Err(MultibootError::BadAddresses { .. })
        ));
        let mut img = aout();
        set(&mut img, 1, 0x0F_0000); // text would start before the file
        let e = plan(&img, b"", 16 * MIB).unwrap_err();
        assert!(
            e.to_string().contains("exceeds the header's file offset"),
            "{e}"
        );
        let mut img = aout();
        set(&mut img, 2, 0x10_3000); // past the end of the file
        assert_eq!(
            plan(&img, b"", 16 * MIB),
            Err(MultibootError::Truncated {
                what: "the text and data up to load_end_addr"
            })
        );
        let mut img = aout();
        set(&mut img, 3, 0x10_1000); // bss below load end
        assert!(matches!(
            plan(&img, b"", 16 * MIB),
            Err(MultibootError::BadAddresses { .. })
        ));
        let mut img = aout();
        set(&mut img, 4, 0x4000_0000);
        assert_eq!(
            plan(&img, b"", 16 * MIB),
            Err(MultibootError::EntryOutside { entry: 0x4000_0000 })
        );
        // Too little memory for the bss.
        let e = plan(&aout(), b"", 0x10_3000).unwrap_err();
        assert_eq!(
            e,
            MultibootError::OutsideMemory {
                gpa: 0x10_0000,
                len: 0x4000,
                limit: 0x10_3000
            }
        );
        // A kernel loading into the boot area.
        let mut img = aout();
        set(&mut img, 0, 0x9040);
        set(&mut img, 1, 0x9000);
        set(&mut img, 2, 0xB000);
        set(&mut img, 3, 0);
        set(&mut img, 4, 0x9000);
        let e = plan(&img, b"", 16 * MIB).unwrap_err();
        assert_eq!(
            e,
            MultibootError::OverlapsBootArea {
                gpa: 0x9000,
                len: 0x2000
            }
        );
        assert!(e.to_string().contains("0x1000..0x10000"), "{e}");
        // Above 4 GiB is outside, whatever the memory.
        let mut img = aout();
        set(&mut img, 0, 0xFFFF_F040);
        set(&mut img, 1, 0xFFFF_F000);
        set(&mut img, 2, 0);
        set(&mut img, 3, 0);
        set(&mut img, 4, 0xFFFF_F000);
        assert!(matches!(
            plan(&img, b"", 8u64 << 30),
            Err(MultibootError::OutsideMemory { .. })
        ));
    }

    #[test]
    fn elf_errors_and_command_line() {
        let mut img = elf32();
        img[18] = 62; // x86_64
        assert_eq!(plan(&img, b"", 64 * MIB), Err(MultibootError::NotElf32));
        let mut img = elf32();
        img[4] = 2;
        assert_eq!(plan(&img, b"", 64 * MIB), Err(MultibootError::NotElf32));
        let mut img = elf32();
        img[44..46].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            plan(&img, b"", 64 * MIB),
            Err(MultibootError::NothingToLoad)
        );
        let mut img = elf32();
        img[52 + 64 + 16..52 + 64 + 20].copy_from_slice(&0x10_0000u32.to_le_bytes()); // filesz
        assert_eq!(
            plan(&img, b"", 64 * MIB),
            Err(MultibootError::Truncated {
                what: "segment data"
            })
        );
        assert_eq!(
            plan(&elf32(), b"a\0", 64 * MIB),
            Err(MultibootError::CmdlineHasNul { at: 1 })
        );
        let long = alloc::vec![b'x'; 0x7800];
        assert_eq!(
            plan(&elf32(), &long, 64 * MIB),
            Err(MultibootError::CmdlineTooLong {
                len: 0x7800,
                max: 0x77FF
            })
        );
        let image = elf32();
        let p = plan(&image, &long[..0x77FF], 64 * MIB).unwrap();
        assert_eq!(p.info.gpa + p.info.bytes.len() as u64, BOOT_INFO.end);
    }

    #[test]
    fn truncated_and_fuzzed_images_never_panic() {
        for base in [elf32(), aout()] {
            // Every length through the headers, then a sample (each plan
            // scans up to 8 KiB for the header).
            for len in (0..0x120).chain((0x120..base.len()).step_by(7)) {
                let _ = plan(&base[..len], b"x", 64 * MIB);
            }
            let mut x = 0x7F4A_7C15_u32;
            let mut ok = 0;
            for round in 0..2000 {
                let mut img = base.clone();
                for _ in 0..1 + round % 5 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let i = if x & 0x100 != 0 {
                        // The ELF/program headers or the Multiboot header.
                        [0usize, 52, 0x1000, 0x40][(x as usize >> 9) % 4] + (x as usize >> 11) % 64
                    } else {
                        (x as usize >> 9) % img.len()
                    };
                    if let Some(b) = img.get_mut(i) {
                        *b = (x >> 24) as u8;
                    }
                }
                let memory = [2 * MIB, 64 * MIB, 8u64 << 30][round % 3];
                if let Ok(p) = plan(&img, b"k", memory) {
                    for s in &p.segments {
                        assert!(s.gpa + s.mem_len <= memory.min(1 << 32));
                        assert!(!overlaps(&(s.gpa..s.gpa + s.mem_len), &(0x1000..0x1_0000)));
                        assert!(s.data.len() as u64 <= s.mem_len);
                    }
                    assert!(u64::from(p.entry) < memory);
                    ok += 1;
                }
            }
            assert!(ok > 50, "{ok}");
        }
    }
}
