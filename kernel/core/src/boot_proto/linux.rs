//! The Linux/x86 boot protocol (Documentation/arch/x86/boot.rst; field
//! offsets from arch/x86/include/uapi/asm/bootparam.h), 64-bit entry.
//!
//! A bzImage is the real-mode setup (`setup_sects + 1` sectors of 512 bytes,
//! `setup_sects = 0` meaning 4) with the setup header at 0x1F1, followed by
//! the protected-mode kernel (`syssize` paragraphs of 16 bytes). This loader
//! skips the real-mode setup and BIOS entirely and uses the **64-bit boot
//! protocol**:
//!
//! - the protected-mode kernel is copied to its load address: the kernel's
//!   `pref_address` (aligned up to `kernel_alignment`, at least 1 MiB) for a
//!   relocatable kernel, exactly `pref_address` for a non-relocatable one.
//!   For the 64-bit entry the decompressor runs the kernel at
//!   `max(align_up(load, kernel_alignment), pref_address)`, so loading at the
//!   aligned `pref_address` makes the runtime start the load address and
//!   `load .. load + init_size` the whole memory the kernel needs before it
//!   reads the memory map (it decompresses in place inside it);
//! - the zero page (`struct boot_params`, 4 KiB) at [`ZERO_PAGE`]: zero,
//!   with the setup header copied from the image (0x1F1 up to
//!   `0x202 + image[0x201]`) and then `type_of_loader = 0xFF`, `loadflags |=
//!   CAN_USE_HEAP` (LOADED_HIGH is required of the image), `heap_end_ptr =
//!   0xFE00`, `code32_start` = load address, `cmd_line_ptr` (and
//!   `ext_cmd_line_ptr`), `ramdisk_image`/`ramdisk_size` (and the `ext_`
//!   high halves), and the E820 table (`e820_entries` at 0x1E8, 20-byte
//!   entries at 0x2D0) from [`super::pc_memory_map`] with
//!   [`layout::BOOT_RESERVED`] reserved;
//! - the NUL-terminated command line at [`CMDLINE`], at most `cmdline_size`
//!   bytes;
//! - the initrd page-aligned, as high as possible below
//!   `min(initrd_addr_max + 1, memory)`, outside the kernel's region (above
//!   it, else between 1 MiB and the kernel) and outside the ACPI tables.
//!
//! # ACPI tables
//!
//! [`plan_with`] takes the VM's ACPI tables ([`AcpiRegion`], e.g. from
//! [`crate::firmware::acpi::build`]); [`plan`] is `plan_with` without them.
//! With tables, the plan sets `acpi_rsdp_addr` (zero page offset 0x070, read
//! by kernels of protocol 2.14 and later; older ones find the RSDP by the
//! legacy scan of 0xE0000-0xFFFFF) and reports the tables' range reserved
//! (E820 type 2) in the memory map, splitting a RAM entry if they lie in
//! RAM. The hypervisor places them at 0xE0000
//! ([`crate::firmware::acpi::DEFAULT_BASE`]), inside the legacy hole
//! `0x9FC00..0x100000` that the map already reports reserved and that no
//! part of the plan is written to (the zero page and command line are below
//! 0x10000, the kernel and initrd at or above 1 MiB). A range elsewhere is
//! checked: it must lie inside the VM's memory, hold the RSDP, and not
//! overlap [`layout::BOOT_RESERVED`], the zero page and command-line area
//! ([`layout::BOOT_INFO`]) or the kernel's region; the initrd is placed
//! around it.
//!
//! # The entry state (what the vCPU starts with)
//!
//! [`LinuxPlan::entry64`] = load address + 0x200 (requires `XLF_KERNEL_64`,
//! protocol 2.12+), in 64-bit mode with paging on and an identity map that
//! covers the kernel's region, the zero page and the command line (the
//! project's 4 GiB identity map at [`layout::PML4`] does for VMs up to
//! 4 GiB), RSI = [`LinuxPlan::rsi`] (the zero page), RFLAGS.IF = 0, a GDT
//! with flat 4 GiB code (execute/read) and data (read/write) descriptors with
//! CS on the code and DS/ES/SS on the data descriptor. The protocol names
//! selectors 0x10/0x18 (`__BOOT_CS`/`__BOOT_DS`); the decompressor's
//! `startup_64` clears the data segments and loads its own GDT and CS before
//! it depends on either, so the project's 0x08/0x10 GDT works as well.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use super::{
    align_down, align_up, le16, le32, le64, overlaps, pc_memory_map, put, MemRegion, OwnedSegment,
    HIGH_MEMORY,
};
use crate::image::Segment;
use crate::layout;

/// Guest-physical address of the zero page (`struct boot_params`).
pub const ZERO_PAGE: u64 = 0x8000;
/// Size of the zero page.
pub const ZERO_PAGE_SIZE: usize = 4096;
/// Guest-physical address of the command line.
pub const CMDLINE: u64 = 0x9000;
/// End of the command-line area: a command line takes at most
/// `CMDLINE_AREA_END - CMDLINE - 1` bytes plus its NUL here.
pub const CMDLINE_AREA_END: u64 = 0x1_0000;
/// Oldest protocol accepted (`cmdline_size` exists from 2.06).
pub const MIN_VERSION: u16 = 0x0206;
/// Protocol that introduced `xloadflags` and with it the 64-bit entry flag.
pub const VERSION_64BIT_ENTRY: u16 = 0x020C;
/// `type_of_loader` written: 0xFF, "undefined" (no assigned ID).
pub const LOADER_TYPE: u8 = 0xFF;
/// Offset of the 64-bit entry point from the load address.
pub const ENTRY64_OFFSET: u64 = 0x200;
/// Maximum E820 entries in the zero page.
pub const E820_MAX: usize = 128;
/// Protocol from which the kernel reads `acpi_rsdp_addr` (2.14; the field
/// is in `boot_params` from Linux 5.0 on).
pub const VERSION_ACPI_RSDP_ADDR: u16 = 0x020E;

/// `loadflags` bit 0: the protected-mode code loads at 0x100000.
pub const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags` bit 5: suppress early messages.
pub const QUIET_FLAG: u8 = 1 << 5;
/// `loadflags` bit 6: obsolete.
pub const KEEP_SEGMENTS: u8 = 1 << 6;
/// `loadflags` bit 7: `heap_end_ptr` is valid.
pub const CAN_USE_HEAP: u8 = 1 << 7;
/// `xloadflags` bit 0: the kernel has the 64-bit entry point at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit 1: kernel, boot_params, command line and ramdisk may lie
/// above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;

/// Offsets in the image and in `struct boot_params`.
mod off {
    pub const SETUP_SECTS: usize = 0x1F1;
    pub const SYSSIZE: usize = 0x1F4;
    pub const BOOT_FLAG: usize = 0x1FE;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21C;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22C;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const MIN_ALIGNMENT: usize = 0x235;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// One past the last field the loader reads (init_size, 2.10+).
    pub const READ_END: usize = 0x264;
    /// Where `boot_params` stops holding the header (`_pad7` ends).
    pub const HEADER_LIMIT: usize = 0x290;
    // boot_params fields outside the setup header.
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const EXT_RAMDISK_IMAGE: usize = 0x0C0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0C4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0C8;
    pub const E820_ENTRIES: usize = 0x1E8;
    pub const SENTINEL: usize = 0x1EF;
    pub const E820_TABLE: usize = 0x2D0;
}

/// "HdrS" as a little-endian u32.
pub const HEADER_MAGIC: u32 = 0x5372_6448;
/// Boot sector signature at 0x1FE.
pub const BOOT_FLAG: u16 = 0xAA55;

/// Why a kernel cannot be booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxError {
    /// The image ends before a part the protocol needs.
    Truncated {
        /// The part.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes the image has.
        len: u64,
    },
    /// No "HdrS" at 0x202 or no 0xAA55 at 0x1FE: not a bzImage.
    NotBzImage {
        /// The value found at 0x202.
        header: u32,
        /// The value found at 0x1FE.
        boot_flag: u16,
    },
    /// Boot protocol older than 2.06.
    ProtocolTooOld {
        /// The image's `version`.
        version: u16,
    },
    /// `loadflags` lacks LOADED_HIGH: a zImage loading at 0x10000.
    NotLoadedHigh,
    /// No 64-bit entry point: protocol before 2.12 or `XLF_KERNEL_64` clear.
    No64BitEntry {
        /// The image's `version`.
        version: u16,
        /// The image's `xloadflags` (0 before 2.12).
        xloadflags: u16,
    },
    /// Not relocatable and no usable `pref_address` (at least 1 MiB).
    NotRelocatable {
        /// The image's `pref_address`.
        pref_address: u64,
    },
    /// `kernel_alignment` is not a power of two.
    BadAlignment {
        /// The image's `kernel_alignment`.
        kernel_alignment: u32,
    },
    /// The kernel's region (load address + `init_size`) is not inside the
    /// VM's memory.
    KernelDoesNotFit {
        /// Load (= runtime start) address.
        load: u64,
        /// Bytes the kernel needs from there (init_size or image, larger).
        size: u64,
        /// The VM's memory size.
        memory: u64,
    },
    /// No page-aligned place for the initrd below the limit and outside the
    /// kernel's region.
    InitrdDoesNotFit {
        /// Initrd size.
        len: u64,
        /// It must end at or below this address.
        limit: u64,
        /// The kernel's region, which it must avoid.
        kernel: (u64, u64),
    },
    /// The command line is longer than the kernel (`cmdline_size`) or the
    /// command-line area accepts.
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
    /// The ACPI tables' range is empty, does not hold the RSDP or is not
    /// inside the VM's memory.
    BadAcpiRegion {
        /// The RSDP's address.
        rsdp: u64,
        /// The tables' range.
        range: (u64, u64),
        /// The VM's memory size.
        memory: u64,
    },
    /// The ACPI tables overlap memory the boot needs.
    AcpiOverlap {
        /// What they overlap.
        what: &'static str,
        /// The tables' range.
        acpi: (u64, u64),
        /// The other range.
        other: (u64, u64),
    },
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { what, need, len } => {
                write!(f, "truncated bzImage: the {what} needs {need} bytes, the image has {len}")
            }
            Self::NotBzImage { header, boot_flag } => write!(
                f,
                "not a bzImage: no \"HdrS\" magic at 0x202 (found {header:#010x}) or boot flag 0xaa55 at 0x1fe (found {boot_flag:#06x})"
            ),
            Self::ProtocolTooOld { version } => write!(
                f,
                "boot protocol {}.{:02} is too old (2.06 or later needed)",
                version >> 8,
                version & 0xFF
            ),
            Self::NotLoadedHigh => write!(f, "a zImage (LOADED_HIGH clear) cannot be booted; build a bzImage"),
            Self::No64BitEntry { version, xloadflags } => write!(
                f,
                "the kernel has no 64-bit entry point (protocol {}.{:02}, xloadflags {xloadflags:#x}; XLF_KERNEL_64 needs 2.12+)",
                version >> 8,
                version & 0xFF
            ),
            Self::NotRelocatable { pref_address } => write!(
                f,
                "the kernel is not relocatable and its preferred address {pref_address:#x} is below 1 MiB"
            ),
            Self::BadAlignment { kernel_alignment } => {
                write!(f, "kernel_alignment {kernel_alignment:#x} is not a power of two")
            }
            Self::KernelDoesNotFit { load, size, memory } => write!(
                f,
                "the kernel needs {:#x}..{:#x} ({} MiB from its load address, init_size included) but the VM has {} MiB of memory",
                load,
                load.saturating_add(size),
                size.div_ceil(1 << 20),
                memory >> 20
            ),
            Self::InitrdDoesNotFit { len, limit, kernel } => write!(
                f,
                "the initrd ({len} bytes) does not fit below {limit:#x} outside the kernel at {:#x}..{:#x}",
                kernel.0, kernel.1
            ),
            Self::CmdlineTooLong { len, max } => {
                write!(f, "the command line has {len} bytes, the kernel accepts at most {max}")
            }
            Self::CmdlineHasNul { at } => write!(f, "the command line contains a NUL byte at offset {at}"),
            Self::BadAcpiRegion { rsdp, range, memory } => write!(
                f,
                "ACPI tables at {:#x}..{:#x} with the RSDP at {rsdp:#x}: not a range holding the RSDP inside the VM's {memory:#x} bytes of memory",
                range.0, range.1
            ),
            Self::AcpiOverlap { what, acpi, other } => write!(
                f,
                "the ACPI tables at {:#x}..{:#x} overlap the {what} at {:#x}..{:#x}",
                acpi.0, acpi.1, other.0, other.1
            ),
        }
    }
}

/// The setup-header fields the loader uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// Setup sectors (0 in the image means 4).
    pub setup_sects: u8,
    /// Protocol version, e.g. 0x020F.
    pub version: u16,
    /// `loadflags`.
    pub loadflags: u8,
    /// Protected-mode code size in 16-byte paragraphs (0: unknown).
    pub syssize: u32,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    /// `kernel_alignment`.
    pub kernel_alignment: u32,
    /// `relocatable_kernel` is non-zero.
    pub relocatable: bool,
    /// `min_alignment` (power of two exponent).
    pub min_alignment: u8,
    /// `xloadflags`.
    pub xloadflags: u16,
    /// Maximum command-line length without the NUL.
    pub cmdline_size: u32,
    /// `pref_address`.
    pub pref_address: u64,
    /// `init_size`.
    pub init_size: u32,
    /// One past the setup header in the image (`0x202 + image[0x201]`,
    /// bounded by the zero page's header area).
    pub header_end: usize,
}

impl SetupHeader {
    /// Offset of the protected-mode kernel in the image.
    pub fn kernel_offset(&self) -> usize {
        (usize::from(self.setup_sects) + 1) * 512
    }
}

fn field<T>(v: Option<T>, image: &[u8], need: usize) -> Result<T, LinuxError> {
    v.ok_or(LinuxError::Truncated {
        what: "setup header",
        need: need as u64,
        len: image.len() as u64,
    })
}

/// Parses and checks the setup header of a bzImage for the 64-bit entry.
pub fn parse_header(image: &[u8]) -> Result<SetupHeader, LinuxError> {
    let header = field(le32(image, off::HEADER), image, off::HEADER + 4)?;
    let boot_flag = field(le16(image, off::BOOT_FLAG), image, off::BOOT_FLAG + 2)?;
    if header != HEADER_MAGIC || boot_flag != BOOT_FLAG {
        return Err(LinuxError::NotBzImage { header, boot_flag });
    }
    let version = field(le16(image, off::VERSION), image, off::VERSION + 2)?;
    if version < MIN_VERSION {
        return Err(LinuxError::ProtocolTooOld { version });
    }
    let jump_len = image.get(off::JUMP + 1).copied().unwrap_or(0);
    let header_end = (off::HEADER + usize::from(jump_len)).min(off::HEADER_LIMIT);
    let loadflags = field(
        image.get(off::LOADFLAGS).copied(),
        image,
        off::LOADFLAGS + 1,
    )?;
    if loadflags & LOADED_HIGH == 0 {
        return Err(LinuxError::NotLoadedHigh);
    }
    // 2.12+ defines every field up to init_size; the header (as its jump
    // says) and the image must hold them.
    if version >= VERSION_64BIT_ENTRY && (header_end < off::READ_END || image.len() < off::READ_END)
    {
        return Err(LinuxError::Truncated {
            what: "setup header",
            need: off::READ_END as u64,
            len: header_end.min(image.len()) as u64,
        });
    }
    let xloadflags = if version >= VERSION_64BIT_ENTRY {
        field(le16(image, off::XLOADFLAGS), image, off::XLOADFLAGS + 2)?
    } else {
        0
    };
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LinuxError::No64BitEntry {
            version,
            xloadflags,
        });
    }
    let b = |at: usize| image.get(at).copied().unwrap_or(0);
    let w = |at: usize| le32(image, at).unwrap_or(0);
    let setup_sects = match b(off::SETUP_SECTS) {
        0 => 4,
        n => n,
    };
    Ok(SetupHeader {
        setup_sects,
        version,
        loadflags,
        syssize: w(off::SYSSIZE),
        initrd_addr_max: w(off::INITRD_ADDR_MAX),
        kernel_alignment: w(off::KERNEL_ALIGNMENT),
        relocatable: b(off::RELOCATABLE_KERNEL) != 0,
        min_alignment: b(off::MIN_ALIGNMENT),
        xloadflags,
        cmdline_size: w(off::CMDLINE_SIZE),
        pref_address: le64(image, off::PREF_ADDRESS).unwrap_or(0),
        init_size: w(off::INIT_SIZE),
        header_end,
    })
}

/// Everything to put into the VM and how to start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxPlan<'a> {
    /// The parsed header.
    pub header: SetupHeader,
    /// The protected-mode kernel at its load address.
    pub kernel: Segment<'a>,
    /// The memory the kernel owns until it reads the memory map:
    /// `load .. load + max(init_size, kernel image)`.
    pub kernel_region: Range<u64>,
    /// The initrd, if one was given (and not empty).
    pub initrd: Option<Segment<'a>>,
    /// The zero page at [`ZERO_PAGE`].
    pub zero_page: OwnedSegment,
    /// The NUL-terminated command line at [`CMDLINE`].
    pub cmdline: OwnedSegment,
    /// The memory map written into the zero page.
    pub e820: Vec<MemRegion>,
    /// 64-bit entry point (load address + 0x200).
    pub entry64: u64,
    /// RSI at entry: the zero page's address.
    pub rsi: u64,
}

impl LinuxPlan<'_> {
    /// Every byte range to copy into guest memory, as (gpa, bytes): kernel,
    /// initrd, zero page, command line. Disjoint and inside the VM's memory.
    pub fn writes(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        [
            Some((self.kernel.gpa, self.kernel.data)),
            self.initrd.as_ref().map(|s| (s.gpa, s.data)),
            Some((self.zero_page.gpa, self.zero_page.bytes.as_slice())),
            Some((self.cmdline.gpa, self.cmdline.bytes.as_slice())),
        ]
        .into_iter()
        .flatten()
    }
}

fn check_cmdline(cmdline: &[u8], header: &SetupHeader) -> Result<(), LinuxError> {
    if let Some(at) = cmdline.iter().position(|&b| b == 0) {
        return Err(LinuxError::CmdlineHasNul { at: at as u64 });
    }
    let area_max = CMDLINE_AREA_END - CMDLINE - 1;
    let max = u64::from(header.cmdline_size).min(area_max);
    let len = cmdline.len() as u64;
    if len > max {
        return Err(LinuxError::CmdlineTooLong { len, max });
    }
    Ok(())
}

/// Where the kernel loads (= runs) and how long the protected-mode image is.
fn place_kernel<'a>(
    image: &'a [u8],
    h: &SetupHeader,
    memory: u64,
) -> Result<(u64, &'a [u8], u64), LinuxError> {
    let start = h.kernel_offset();
    let rest = image
        .get(start..)
        .filter(|r| !r.is_empty())
        .ok_or(LinuxError::Truncated {
            what: "protected-mode kernel",
            need: start as u64 + 1,
            len: image.len() as u64,
        })?;
    let pm_len = match u64::from(h.syssize) * 16 {
        0 => rest.len() as u64,
        n if n > rest.len() as u64 => {
            return Err(LinuxError::Truncated {
                what: "protected-mode kernel (syssize)",
                need: start as u64 + n,
                len: image.len() as u64,
            })
        }
        n => n,
    };
    if pm_len <= ENTRY64_OFFSET {
        return Err(LinuxError::Truncated {
            what: "protected-mode kernel (64-bit entry at 0x200)",
            need: start as u64 + ENTRY64_OFFSET + 1,
            len: start as u64 + pm_len,
        });
    }
    let data = rest.get(..pm_len as usize).unwrap_or(rest);
    let load = if h.relocatable {
        if !h.kernel_alignment.is_power_of_two() {
            return Err(LinuxError::BadAlignment {
                kernel_alignment: h.kernel_alignment,
            });
        }
        align_up(
            h.pref_address.max(HIGH_MEMORY),
            u64::from(h.kernel_alignment),
        )
    } else if h.pref_address >= HIGH_MEMORY {
        Some(h.pref_address)
    } else {
        return Err(LinuxError::NotRelocatable {
            pref_address: h.pref_address,
        });
    };
    let size = u64::from(h.init_size).max(pm_len);
    let fits = load
        .and_then(|l| l.checked_add(size))
        .is_some_and(|end| end <= memory);
    match load {
        Some(load) if fits => Ok((load, data, size)),
        _ => Err(LinuxError::KernelDoesNotFit {
            load: load.unwrap_or(u64::MAX),
            size,
            memory,
        }),
    }
}

/// The highest page-aligned start for `len` bytes ending at or below
/// `limit`, outside every range of `avoid`, at or above 1 MiB. The best
/// place ends just below `limit` or just below the start of an avoided
/// range, so those are the only candidates.
fn place_initrd(len: u64, limit: u64, avoid: &[Range<u64>]) -> Option<u64> {
    core::iter::once(limit)
        .chain(avoid.iter().map(|r| r.start.min(limit)))
        .filter_map(|hi| {
            let start = align_down(hi.checked_sub(len)?, 4096);
            let r = start..start.checked_add(len)?;
            (start >= HIGH_MEMORY && !avoid.iter().any(|a| overlaps(&r, a))).then_some(start)
        })
        .max()
}

fn build_zero_page(
    image: &[u8],
    h: &SetupHeader,
    load: u64,
    initrd: Option<(u64, u64)>,
    e820: &[MemRegion],
    acpi_rsdp: Option<u64>,
) -> Vec<u8> {
    let mut zp = alloc::vec![0u8; ZERO_PAGE_SIZE];
    if let Some(hdr) = image.get(off::SETUP_SECTS..h.header_end) {
        put(&mut zp, off::SETUP_SECTS, hdr);
    }
    zp[off::SENTINEL] = 0;
    zp[off::TYPE_OF_LOADER] = LOADER_TYPE;
    zp[off::LOADFLAGS] = (h.loadflags | CAN_USE_HEAP) & !KEEP_SEGMENTS;
    put(&mut zp, off::HEAP_END_PTR, &0xFE00u16.to_le_bytes());
    put(&mut zp, off::CODE32_START, &(load as u32).to_le_bytes());
    let (lo, hi) = split(CMDLINE);
    put(&mut zp, off::CMD_LINE_PTR, &lo);
    put(&mut zp, off::EXT_CMD_LINE_PTR, &hi);
    let (gpa, len) = initrd.unwrap_or((0, 0));
    let (lo, hi) = split(gpa);
    put(&mut zp, off::RAMDISK_IMAGE, &lo);
    put(&mut zp, off::EXT_RAMDISK_IMAGE, &hi);
    let (lo, hi) = split(len);
    put(&mut zp, off::RAMDISK_SIZE, &lo);
    put(&mut zp, off::EXT_RAMDISK_SIZE, &hi);
    if let Some(rsdp) = acpi_rsdp.filter(|_| h.version >= VERSION_ACPI_RSDP_ADDR) {
        put(&mut zp, off::ACPI_RSDP_ADDR, &rsdp.to_le_bytes());
    }
    let entries = e820.iter().take(E820_MAX);
    zp[off::E820_ENTRIES] = entries.len() as u8;
    for (i, r) in entries.enumerate() {
        let at = off::E820_TABLE + i * 20;
        put(&mut zp, at, &r.base.to_le_bytes());
        put(&mut zp, at + 8, &r.len.to_le_bytes());
        put(&mut zp, at + 16, &r.kind.code().to_le_bytes());
    }
    zp
}

/// Low and high 32-bit halves, little-endian.
fn split(v: u64) -> ([u8; 4], [u8; 4]) {
    ((v as u32).to_le_bytes(), ((v >> 32) as u32).to_le_bytes())
}

/// ACPI tables in the VM's memory, for the kernel to be pointed at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiRegion {
    /// Guest-physical address of the RSDP.
    pub rsdp: u64,
    /// The guest-physical range the tables occupy.
    pub range: Range<u64>,
}

impl AcpiRegion {
    /// The region of tables built by [`crate::firmware::acpi::build`].
    pub fn of(tables: &crate::firmware::acpi::AcpiTables) -> Self {
        AcpiRegion {
            rsdp: tables.rsdp_gpa,
            range: tables.range(),
        }
    }
}

/// What a plan may take beyond the image, initrd, command line and memory
/// size. The default asks for nothing more ([`plan`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// The VM's ACPI tables, if it has any.
    pub acpi: Option<AcpiRegion>,
}

/// Plans booting the bzImage `image` with an optional `initrd` and
/// `cmdline` in a VM with `memory` bytes of RAM at guest-physical 0
/// (no ACPI tables: [`plan_with`] and default [`PlanOptions`]).
pub fn plan<'a>(
    image: &'a [u8],
    initrd: Option<&'a [u8]>,
    cmdline: &[u8],
    memory: u64,
) -> Result<LinuxPlan<'a>, LinuxError> {
    plan_with(image, initrd, cmdline, memory, &PlanOptions::default())
}

/// Checks that ACPI tables at `acpi` can stay where they are while the
/// kernel at `kernel` boots (see the module documentation).
fn check_acpi(acpi: &AcpiRegion, kernel: &Range<u64>, memory: u64) -> Result<(), LinuxError> {
    let r = &acpi.range;
    let pair = |r: &Range<u64>| (r.start, r.end);
    if r.is_empty() || !r.contains(&acpi.rsdp) || r.end > memory {
        return Err(LinuxError::BadAcpiRegion {
            rsdp: acpi.rsdp,
            range: pair(r),
            memory,
        });
    }
    for (what, other) in [
        ("hypervisor's boot structures", &layout::BOOT_RESERVED),
        ("zero page and command line", &layout::BOOT_INFO),
        ("kernel", kernel),
    ] {
        if overlaps(r, other) {
            return Err(LinuxError::AcpiOverlap {
                what,
                acpi: pair(r),
                other: pair(other),
            });
        }
    }
    Ok(())
}

/// The command line with `tsc_early_khz=KHZ` appended, for a Linux VM
/// whose TSC rate the hypervisor knows (`tsc_khz`, nonzero) and whose
/// machine has no PIT to calibrate against (hardware-reduced ACPI): Linux
/// reads CPUID leaf 0x15 only on Intel CPUs, and its calibration against
/// the ACPI PM timer fails when a vCPU is delayed between two reads (an
/// emulated machine, a busy host), which leaves it without a timer. `None`
/// when the line already sets the parameter or the rate is unknown.
pub fn with_tsc_khz(cmdline: &str, tsc_khz: u64) -> Option<alloc::string::String> {
    if tsc_khz == 0 || cmdline.split(' ').any(|p| p.starts_with("tsc_early_khz=")) {
        return None;
    }
    let sep = if cmdline.is_empty() { "" } else { " " };
    Some(alloc::format!("{cmdline}{sep}tsc_early_khz={tsc_khz}"))
}

/// [`plan`] with `options`: with [`PlanOptions::acpi`], the zero page
/// points the kernel at the RSDP and the memory map reserves the tables.
pub fn plan_with<'a>(
    image: &'a [u8],
    initrd: Option<&'a [u8]>,
    cmdline: &[u8],
    memory: u64,
    options: &PlanOptions,
) -> Result<LinuxPlan<'a>, LinuxError> {
    let header = parse_header(image)?;
    check_cmdline(cmdline, &header)?;
    let (load, data, size) = place_kernel(image, &header, memory)?;
    let kernel_region = load..load + size;
    if let Some(acpi) = &options.acpi {
        check_acpi(acpi, &kernel_region, memory)?;
    }
    let acpi_range = options.acpi.as_ref().map(|a| a.range.clone());
    let initrd = match initrd.filter(|d| !d.is_empty()) {
        None => None,
        Some(d) => {
            let len = d.len() as u64;
            let limit = memory.min(u64::from(header.initrd_addr_max).saturating_add(1));
            let mut avoid = alloc::vec![kernel_region.clone()];
            avoid.extend(acpi_range.clone());
            let gpa = place_initrd(len, limit, &avoid).ok_or(LinuxError::InitrdDoesNotFit {
                len,
                limit,
                kernel: (kernel_region.start, kernel_region.end),
            })?;
            Some(Segment {
                gpa,
                data: d,
                mem_len: len,
            })
        }
    };
    let mut reserved = alloc::vec![layout::BOOT_RESERVED];
    reserved.extend(acpi_range.clone());
    let e820 = pc_memory_map(memory, &reserved);
    let zero_page = build_zero_page(
        image,
        &header,
        load,
        initrd.map(|s| (s.gpa, s.mem_len)),
        &e820,
        options.acpi.as_ref().map(|a| a.rsdp),
    );
    let mut line = Vec::with_capacity(cmdline.len() + 1);
    line.extend_from_slice(cmdline);
    line.push(0);
    let plan = LinuxPlan {
        header,
        kernel: Segment {
            gpa: load,
            data,
            mem_len: data.len() as u64,
        },
        kernel_region,
        initrd,
        zero_page: OwnedSegment {
            gpa: ZERO_PAGE,
            bytes: zero_page,
        },
        cmdline: OwnedSegment {
            gpa: CMDLINE,
            bytes: line,
        },
        e820,
        entry64: load + ENTRY64_OFFSET,
        rsi: ZERO_PAGE,
    };
    debug_assert!(plan.writes().all(|(gpa, b)| {
        let r = gpa..gpa + b.len() as u64;
        r.end <= memory
            && !overlaps(&r, &layout::BOOT_RESERVED)
            && !acpi_range.as_ref().is_some_and(|a| overlaps(&r, a))
    }));
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot_proto::MemKind;
    use alloc::string::ToString;

    const MIB: u64 = 1 << 20;

    /// A synthetic bzImage with Debian's cloud kernel header values
    /// (protocol 2.15, relocatable, 2 MiB alignment, pref 16 MiB), with
    /// `init_size` and a protected-mode part of `pm_len` bytes.
    fn bzimage(pm_len: usize, init_size: u32) -> Vec<u8> {
        let setup_sects = 27u8;
        let kernel_off = (usize::from(setup_sects) + 1) * 512;
        let mut b = alloc::vec![0u8; kernel_off + pm_len];
        b[off::SETUP_SECTS] = setup_sects;
        b[off::SYSSIZE..off::SYSSIZE + 4].copy_from_slice(&((pm_len / 16) as u32).to_le_bytes());
        b[off::BOOT_FLAG..off::BOOT_FLAG + 2].copy_from_slice(&BOOT_FLAG.to_le_bytes());
        b[off::JUMP] = 0xEB;
        b[off::JUMP + 1] = 0x6A; // header ends at 0x26C
        b[off::HEADER..off::HEADER + 4].copy_from_slice(b"HdrS");
        b[off::VERSION..off::VERSION + 2].copy_from_slice(&0x020Fu16.to_le_bytes());
        b[off::LOADFLAGS] = LOADED_HIGH;
        b[off::INITRD_ADDR_MAX..off::INITRD_ADDR_MAX + 4]
            .copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        b[off::KERNEL_ALIGNMENT..off::KERNEL_ALIGNMENT + 4]
            .copy_from_slice(&0x20_0000u32.to_le_bytes());
        b[off::RELOCATABLE_KERNEL] = 1;
        b[off::MIN_ALIGNMENT] = 21;
        b[off::XLOADFLAGS..off::XLOADFLAGS + 2].copy_from_slice(&0x7Fu16.to_le_bytes());
        b[off::CMDLINE_SIZE..off::CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
        b[off::PREF_ADDRESS..off::PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
        b[off::INIT_SIZE..off::INIT_SIZE + 4].copy_from_slice(&init_size.to_le_bytes());
        for (i, byte) in b[kernel_off..].iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        b
    }

    const CMD: &[u8] = b"console=ttyS0 acpi=off pci=off reboot=t";

    fn zp_u32(p: &LinuxPlan, at: usize) -> u32 {
        le32(&p.zero_page.bytes, at).unwrap()
    }

    #[test]
    fn debian_like_kernel_plan() {
        let image = bzimage(64 * 1024, 0x338_0000); // init_size 51.5 MiB
        let initrd = alloc::vec![0x5Au8; 1_000_000];
        let memory = 256 * MIB;
        let p = plan(&image, Some(&initrd), CMD, memory).unwrap();
        assert_eq!(p.header.version, 0x020F);
        assert_eq!(p.kernel.gpa, 0x100_0000, "pref_address");
        assert_eq!(p.kernel.data, &image[28 * 512..]);
        assert_eq!(p.kernel_region, 0x100_0000..0x100_0000 + 0x338_0000);
        assert_eq!(p.entry64, 0x100_0200);
        assert_eq!(p.rsi, ZERO_PAGE);
        let rd = p.initrd.unwrap();
        assert_eq!(rd.gpa % 4096, 0);
        assert!(rd.gpa + rd.mem_len <= memory && rd.gpa + rd.mem_len > memory - 4096 - 1_000_000);
        assert!(rd.gpa >= p.kernel_region.end);
        // Zero page fields.
        let zp = &p.zero_page.bytes;
        assert_eq!(zp.len(), 4096);
        // The header is copied; only the loader's fields differ.
        let written = [0x210..0x212, 0x214..0x220, 0x224..0x226, 0x228..0x22C];
        for at in 0x1F1..0x26C {
            if !written.iter().any(|r| r.contains(&at)) {
                assert_eq!(zp[at], image[at], "header byte {at:#x}");
            }
        }
        assert_eq!(zp[off::TYPE_OF_LOADER], LOADER_TYPE);
        assert_eq!(zp[off::LOADFLAGS], LOADED_HIGH | CAN_USE_HEAP);
        assert_eq!(
            zp[0x26C..0x290],
            [0u8; 0x24],
            "nothing copied past the header"
        );
        assert!(
            zp[..0x1E8].iter().all(|&b| b == 0),
            "screen_info and the rest zero"
        );
        assert_eq!(zp[off::SENTINEL], 0);
        assert_eq!(zp_u32(&p, off::CMD_LINE_PTR), CMDLINE as u32);
        assert_eq!(zp_u32(&p, off::EXT_CMD_LINE_PTR), 0);
        assert_eq!(zp_u32(&p, off::RAMDISK_IMAGE), rd.gpa as u32);
        assert_eq!(zp_u32(&p, off::RAMDISK_SIZE), 1_000_000);
        assert_eq!(zp_u32(&p, off::EXT_RAMDISK_IMAGE), 0);
        assert_eq!(zp_u32(&p, off::CODE32_START), 0x100_0000);
        assert_eq!(le16(zp, off::HEAP_END_PTR), Some(0xFE00));
        // E820: the hypervisor's structures and the legacy hole reserved.
        assert_eq!(usize::from(zp[off::E820_ENTRIES]), p.e820.len());
        let entry = |i: usize| {
            let at = off::E820_TABLE + 20 * i;
            (
                le64(zp, at).unwrap(),
                le64(zp, at + 8).unwrap(),
                le32(zp, at + 16).unwrap(),
            )
        };
        assert_eq!(entry(0), (0, 0x1000, 1));
        assert_eq!(entry(1), (0x1000, 0x7000, 2));
        assert_eq!(entry(2), (0x8000, 0x9_FC00 - 0x8000, 1));
        assert_eq!(entry(3), (0x9_FC00, 0x10_0000 - 0x9_FC00, 2));
        assert_eq!(entry(4), (0x10_0000, memory - 0x10_0000, 1));
        // Command line with its NUL.
        assert_eq!(p.cmdline.gpa, CMDLINE);
        assert_eq!(&p.cmdline.bytes[..CMD.len()], CMD);
        assert_eq!(p.cmdline.bytes.last(), Some(&0));
        check_writes(&p, memory);
    }

    /// Every write inside memory, disjoint, outside BOOT_RESERVED.
    fn check_writes(p: &LinuxPlan, memory: u64) {
        let ranges: Vec<Range<u64>> = p.writes().map(|(g, b)| g..g + b.len() as u64).collect();
        for (i, a) in ranges.iter().enumerate() {
            assert!(a.end <= memory, "{a:?} outside {memory:#x}");
            assert!(!overlaps(a, &layout::BOOT_RESERVED), "{a:?}");
            for b in &ranges[i + 1..] {
                assert!(!overlaps(a, b), "{a:?} overlaps {b:?}");
            }
        }
        if let Some(rd) = &p.initrd {
            assert!(!overlaps(&(rd.gpa..rd.gpa + rd.mem_len), &p.kernel_region));
        }
        assert!(p.kernel_region.end <= memory);
    }

    #[test]
    fn minimum_memory_is_pref_plus_init_size() {
        let image = bzimage(4096, 0x338_0000);
        let need = 0x100_0000 + 0x338_0000;
        assert!(plan(&image, None, CMD, need).is_ok());
        let e = plan(&image, None, CMD, need - 4096).unwrap_err();
        assert_eq!(
            e,
            LinuxError::KernelDoesNotFit {
                load: 0x100_0000,
                size: 0x338_0000,
                memory: need - 4096
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("0x1000000..0x4380000") && msg.contains("52 MiB"),
            "{msg}"
        );
        assert!(msg.contains("67 MiB of memory"), "{msg}");
    }

    #[test]
    fn initrd_below_kernel_when_no_room_above() {
        let image = bzimage(4096, 0x338_0000);
        let memory = 0x100_0000 + 0x338_0000 + 0x800;
        let initrd = alloc::vec![1u8; 3 * MIB as usize];
        let p = plan(&image, Some(&initrd), CMD, memory).unwrap();
        let rd = p.initrd.unwrap();
        assert!(rd.gpa >= HIGH_MEMORY && rd.gpa + rd.mem_len <= 0x100_0000);
        assert_eq!(rd.gpa, align_down(0x100_0000 - 3 * MIB, 4096));
        check_writes(&p, memory);
        let big = alloc::vec![1u8; 16 * MIB as usize];
        let e = plan(&image, Some(&big), CMD, memory).unwrap_err();
        assert!(matches!(e, LinuxError::InitrdDoesNotFit { len, .. } if len == 16 * MIB));
        assert!(e.to_string().contains("does not fit below"));
        // An empty initrd is no initrd.
        let p = plan(&image, Some(&[]), CMD, memory).unwrap();
        assert!(p.initrd.is_none());
        assert_eq!(zp_u32(&p, off::RAMDISK_IMAGE), 0);
    }

    #[test]
    fn initrd_respects_initrd_addr_max() {
        let mut image = bzimage(4096, 0x100_0000);
        image[off::INITRD_ADDR_MAX..off::INITRD_ADDR_MAX + 4]
            .copy_from_slice(&0x3FFF_FFFFu32.to_le_bytes());
        let initrd = alloc::vec![1u8; 10_000];
        let p = plan(&image, Some(&initrd), CMD, 2 << 30).unwrap();
        let rd = p.initrd.unwrap();
        assert!(rd.gpa + rd.mem_len <= 0x4000_0000);
        assert_eq!(rd.gpa, align_down(0x4000_0000 - 10_000, 4096));
    }

    #[test]
    fn initrd_above_4g_uses_ext_fields() {
        let mut image = bzimage(4096, 0x100_0000);
        image[off::INITRD_ADDR_MAX..off::INITRD_ADDR_MAX + 4]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        let memory = 6u64 << 30;
        let initrd = alloc::vec![1u8; 8192];
        let p = plan(&image, Some(&initrd), CMD, memory).unwrap();
        let rd = p.initrd.unwrap();
        // initrd_addr_max + 1 = 4 GiB.
        assert_eq!(rd.gpa, (4u64 << 30) - 8192);
        assert_eq!(zp_u32(&p, off::EXT_RAMDISK_IMAGE), 0);
        // The ext_ fields carry the high halves of an address or size above
        // 4 GiB (written by the zero-page builder directly).
        let h = parse_header(&image).unwrap();
        let zp = build_zero_page(
            &image,
            &h,
            0x100_0000,
            Some(((5u64 << 30) + 0x1000, 1 << 32)),
            &[],
            None,
        );
        assert_eq!(le32(&zp, off::RAMDISK_IMAGE), Some(0x1000 + (1 << 30)));
        assert_eq!(le32(&zp, off::EXT_RAMDISK_IMAGE), Some(1));
        assert_eq!(le32(&zp, off::RAMDISK_SIZE), Some(0));
        assert_eq!(le32(&zp, off::EXT_RAMDISK_SIZE), Some(1));
        // More than 4 GiB of memory: E820 covers it all.
        assert_eq!(
            p.e820.last().map(|r| (r.end(), r.kind)),
            Some((memory, MemKind::Usable))
        );
    }

    #[test]
    fn relocatable_alignment_and_non_relocatable() {
        let mut image = bzimage(4096, 0x100_0000);
        image[off::PREF_ADDRESS..off::PREF_ADDRESS + 8]
            .copy_from_slice(&0x123_4567u64.to_le_bytes());
        let p = plan(&image, None, CMD, 256 * MIB).unwrap();
        assert_eq!(p.kernel.gpa, 0x140_0000, "aligned up to 2 MiB");
        image[off::PREF_ADDRESS..off::PREF_ADDRESS + 8].copy_from_slice(&0u64.to_le_bytes());
        let p = plan(&image, None, CMD, 256 * MIB).unwrap();
        assert_eq!(p.kernel.gpa, 0x20_0000, "1 MiB aligned up");
        image[off::KERNEL_ALIGNMENT..off::KERNEL_ALIGNMENT + 4]
            .copy_from_slice(&0x30_0000u32.to_le_bytes());
        assert_eq!(
            plan(&image, None, CMD, 256 * MIB),
            Err(LinuxError::BadAlignment {
                kernel_alignment: 0x30_0000
            })
        );
        image[off::RELOCATABLE_KERNEL] = 0;
        assert_eq!(
            plan(&image, None, CMD, 256 * MIB),
            Err(LinuxError::NotRelocatable { pref_address: 0 })
        );
        image[off::PREF_ADDRESS..off::PREF_ADDRESS + 8]
            .copy_from_slice(&0x100_0000u64.to_le_bytes());
        assert_eq!(
            plan(&image, None, CMD, 256 * MIB).unwrap().kernel.gpa,
            0x100_0000
        );
    }

    #[test]
    fn header_errors_name_the_problem() {
        let good = bzimage(4096, 0x100_0000);
        let mut bad = good.clone();
        bad[off::HEADER] = b'X';
        let e = plan(&bad, None, CMD, 256 * MIB).unwrap_err();
        assert!(matches!(e, LinuxError::NotBzImage { .. }));
        assert!(e.to_string().contains("not a bzImage"), "{e}");
        let mut bad = good.clone();
        bad[off::BOOT_FLAG] = 0;
        assert!(matches!(
            plan(&bad, None, CMD, 256 * MIB),
            Err(LinuxError::NotBzImage { .. })
        ));
        let mut old = good.clone();
        old[off::VERSION..off::VERSION + 2].copy_from_slice(&0x0204u16.to_le_bytes());
        let e = plan(&old, None, CMD, 256 * MIB).unwrap_err();
        assert_eq!(e, LinuxError::ProtocolTooOld { version: 0x0204 });
        assert!(e.to_string().contains("2.04 is too old"), "{e}");
        let mut v210 = good.clone();
        v210[off::VERSION..off::VERSION + 2].copy_from_slice(&0x020Au16.to_le_bytes());
        assert_eq!(
            plan(&v210, None, CMD, 256 * MIB),
            Err(LinuxError::No64BitEntry {
                version: 0x020A,
                xloadflags: 0
            })
        );
        let mut no64 = good.clone();
        no64[off::XLOADFLAGS] = 0x7E;
        let e = plan(&no64, None, CMD, 256 * MIB).unwrap_err();
        assert_eq!(
            e,
            LinuxError::No64BitEntry {
                version: 0x020F,
                xloadflags: 0x7E
            }
        );
        assert!(e.to_string().contains("no 64-bit entry point"));
        let mut zimage = good.clone();
        zimage[off::LOADFLAGS] = 0;
        assert_eq!(
            plan(&zimage, None, CMD, 256 * MIB),
            Err(LinuxError::NotLoadedHigh)
        );
        let mut short_hdr = good.clone();
        short_hdr[off::JUMP + 1] = 0x30;
        assert!(matches!(
            plan(&short_hdr, None, CMD, 256 * MIB),
            Err(LinuxError::Truncated { .. })
        ));
        let mut syssize = good.clone();
        syssize[off::SYSSIZE..off::SYSSIZE + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
        let e = plan(&syssize, None, CMD, 256 * MIB).unwrap_err();
        assert!(e.to_string().starts_with("truncated bzImage"), "{e}");
    }

    #[test]
    fn setup_sects_zero_means_four() {
        let mut image = bzimage(8192, 0x100_0000);
        image[off::SETUP_SECTS] = 0;
        let h = parse_header(&image).unwrap();
        assert_eq!(h.kernel_offset(), 5 * 512);
        let p = plan(&image, None, CMD, 256 * MIB).unwrap();
        assert_eq!(p.kernel.data.len(), 8192, "syssize bytes from sector 5");
        assert_eq!(p.kernel.data, &image[5 * 512..5 * 512 + 8192]);
    }

    #[test]
    fn command_line_limits() {
        let image = bzimage(4096, 0x100_0000);
        let long = alloc::vec![b'a'; 2047];
        assert!(plan(&image, None, &long, 256 * MIB).is_ok());
        let longer = alloc::vec![b'a'; 2048];
        let e = plan(&image, None, &longer, 256 * MIB).unwrap_err();
        assert_eq!(
            e,
            LinuxError::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        );
        assert!(e.to_string().contains("2048 bytes"), "{e}");
        let e = plan(&image, None, b"a\0b", 256 * MIB).unwrap_err();
        assert_eq!(e, LinuxError::CmdlineHasNul { at: 1 });
        // A kernel accepting more than the area still gets the area's limit.
        let mut big = image.clone();
        big[off::CMDLINE_SIZE..off::CMDLINE_SIZE + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let huge = alloc::vec![b'a'; 0x7000];
        assert_eq!(
            plan(&big, None, &huge, 256 * MIB),
            Err(LinuxError::CmdlineTooLong {
                len: 0x7000,
                max: 0x6FFF
            })
        );
        let p = plan(&big, None, &huge[..0x6FFF], 256 * MIB).unwrap();
        assert_eq!(
            p.cmdline.gpa + p.cmdline.bytes.len() as u64,
            CMDLINE_AREA_END
        );
        assert_eq!(
            plan(&image, None, b"", 256 * MIB).unwrap().cmdline.bytes,
            [0]
        );
    }

    fn with_acpi(rsdp: u64, range: Range<u64>) -> PlanOptions {
        PlanOptions {
            acpi: Some(AcpiRegion { rsdp, range }),
        }
    }

    fn region(base: u64, len: u64, kind: MemKind) -> MemRegion {
        MemRegion { base, len, kind }
    }

    #[test]
    fn acpi_tables_in_the_legacy_hole() {
        use crate::firmware::acpi;
        let image = bzimage(4096, 0x100_0000);
        let memory = 256 * MIB;
        let ids = [0, 1];
        let cfg = acpi::AcpiConfig {
            apic_ids: &ids,
            ioapic: Some(acpi::IoApicEntry::pc(0)),
            oem_id: *b"RUSTHV",
            oem_table_id: *b"HVVM0001",
            pm_timer_port: None,
        };
        let tables = acpi::build(acpi::DEFAULT_BASE, &cfg).unwrap();
        let region = AcpiRegion::of(&tables);
        assert_eq!(region.rsdp, 0xE_0000);
        let opts = PlanOptions {
            acpi: Some(region.clone()),
        };
        let p = plan_with(&image, None, CMD, memory, &opts).unwrap();
        let zp = &p.zero_page.bytes;
        assert_eq!(le64(zp, off::ACPI_RSDP_ADDR), Some(0xE_0000));
        // The legacy hole already reserves them: the map is unchanged.
        let without = plan(&image, None, CMD, memory).unwrap();
        assert_eq!(p.e820, without.e820);
        assert!(p.e820.iter().any(|r| r.kind == MemKind::Reserved
            && r.base <= region.range.start
            && region.range.end <= r.end()));
        // Only the RSDP pointer differs in the zero page.
        assert_eq!(le64(&without.zero_page.bytes, off::ACPI_RSDP_ADDR), Some(0));
        let mut zp2 = zp.clone();
        zp2[off::ACPI_RSDP_ADDR..off::ACPI_RSDP_ADDR + 8].fill(0);
        assert_eq!(zp2, without.zero_page.bytes);
        for (gpa, b) in p.writes() {
            assert!(!overlaps(&(gpa..gpa + b.len() as u64), &region.range));
        }
        check_writes(&p, memory);
    }

    #[test]
    fn acpi_rsdp_addr_needs_protocol_2_14() {
        let mut image = bzimage(4096, 0x100_0000);
        let opts = with_acpi(0xE_0000, 0xE_0000..0xE_1000);
        for (version, expected) in [
            (0x020C, 0),
            (0x020D, 0),
            (0x020E, 0xE_0000),
            (0x020F, 0xE_0000),
        ] {
            image[off::VERSION..off::VERSION + 2].copy_from_slice(&u16::to_le_bytes(version));
            let p = plan_with(&image, None, CMD, 256 * MIB, &opts).unwrap();
            assert_eq!(
                le64(&p.zero_page.bytes, off::ACPI_RSDP_ADDR),
                Some(expected),
                "protocol {version:#x}"
            );
        }
    }

    #[test]
    fn acpi_tables_in_ram_split_the_map() {
        let image = bzimage(4096, 0x100_0000);
        let memory = 256 * MIB;
        // Low memory.
        let p = plan_with(
            &image,
            None,
            CMD,
            memory,
            &with_acpi(0x5_0000, 0x5_0000..0x5_1000),
        )
        .unwrap();
        assert_eq!(
            p.e820,
            [
                region(0, 0x1000, MemKind::Usable),
                region(0x1000, 0x7000, MemKind::Reserved),
                region(0x8000, 0x4_8000, MemKind::Usable),
                region(0x5_0000, 0x1000, MemKind::Reserved),
                region(0x5_1000, 0x9_FC00 - 0x5_1000, MemKind::Usable),
                region(0x9_FC00, 0x10_0000 - 0x9_FC00, MemKind::Reserved),
                region(0x10_0000, memory - 0x10_0000, MemKind::Usable),
            ]
        );
        let zp = &p.zero_page.bytes;
        assert_eq!(usize::from(zp[off::E820_ENTRIES]), 7);
        let at = off::E820_TABLE + 20 * 3;
        assert_eq!(le64(zp, at), Some(0x5_0000));
        assert_eq!(le64(zp, at + 8), Some(0x1000));
        assert_eq!(le32(zp, at + 16), Some(2));
        // Extended memory, below the kernel.
        let p = plan_with(
            &image,
            None,
            CMD,
            memory,
            &with_acpi(0x20_0000, 0x20_0000..0x20_3000),
        )
        .unwrap();
        assert_eq!(
            p.e820[4..],
            [
                region(0x10_0000, 0x10_0000, MemKind::Usable),
                region(0x20_0000, 0x3000, MemKind::Reserved),
                region(0x20_3000, memory - 0x20_3000, MemKind::Usable),
            ]
        );
        assert_eq!(
            le64(&p.zero_page.bytes, off::ACPI_RSDP_ADDR),
            Some(0x20_0000)
        );
    }

    #[test]
    fn initrd_placed_around_acpi_tables() {
        let image = bzimage(4096, 0x338_0000);
        let memory = 0x100_0000 + 0x338_0000 + 0x800; // no room above the kernel
        let initrd = alloc::vec![1u8; 3 * MIB as usize];
        // Where the initrd would go: 13 MiB..16 MiB.
        let p = plan(&image, Some(&initrd), CMD, memory).unwrap();
        assert_eq!(p.initrd.unwrap().gpa, 0xD0_0000);
        // Tables at 14 MiB push it below them.
        let tables = 0xE0_0000..0xE0_2000;
        let opts = with_acpi(tables.start, tables.clone());
        let p = plan_with(&image, Some(&initrd), CMD, memory, &opts).unwrap();
        let rd = p.initrd.unwrap();
        assert_eq!(rd.gpa, 0xE0_0000 - 3 * MIB);
        assert!(!overlaps(&(rd.gpa..rd.gpa + rd.mem_len), &tables));
        check_writes(&p, memory);
        // Tables at the top of the gap: the initrd ends right below them.
        let opts = with_acpi(0xFF_F000, 0xFF_F000..0x100_0000);
        let p = plan_with(&image, Some(&initrd), CMD, memory, &opts).unwrap();
        assert_eq!(p.initrd.unwrap().gpa, 0xFF_F000 - 3 * MIB);
        // No room at all.
        let opts = with_acpi(0x40_0000, 0x20_0000..0x100_0000);
        assert!(matches!(
            plan_with(&image, Some(&initrd), CMD, memory, &opts),
            Err(LinuxError::InitrdDoesNotFit { .. })
        ));
    }

    #[test]
    fn acpi_region_errors() {
        let image = bzimage(4096, 0x100_0000);
        let memory = 256 * MIB;
        let bad = |opts: PlanOptions| plan_with(&image, None, CMD, memory, &opts).unwrap_err();
        // RSDP outside, empty range, beyond memory.
        for (rsdp, range) in [
            (0xD_0000, 0xE_0000..0xE_1000),
            (0xE_1000, 0xE_0000..0xE_1000),
            (0xE_0000, 0xE_0000..0xE_0000),
            (memory - 16, memory - 16..memory + 16),
        ] {
            let e = bad(with_acpi(rsdp, range.clone()));
            assert_eq!(
                e,
                LinuxError::BadAcpiRegion {
                    rsdp,
                    range: (range.start, range.end),
                    memory
                }
            );
            assert!(e.to_string().contains("ACPI tables"), "{e}");
        }
        // Overlaps.
        for (range, what) in [
            (0x7000..0x8010, "hypervisor's boot structures"),
            (0x8000..0x9000, "zero page and command line"),
            (0xF000..0x1_1000, "zero page and command line"),
            (0x110_0000..0x110_1000, "kernel"),
        ] {
            let e = bad(with_acpi(range.start, range.clone()));
            assert!(
                matches!(e, LinuxError::AcpiOverlap { what: w, acpi, .. } if w == what && acpi == (range.start, range.end)),
                "{e:?}"
            );
            assert!(e.to_string().contains(what), "{e}");
        }
        assert_eq!(
            LinuxError::AcpiOverlap {
                what: "kernel",
                acpi: (1, 2),
                other: (3, 4)
            }
            .to_string(),
            "the ACPI tables at 0x1..0x2 overlap the kernel at 0x3..0x4"
        );
    }

    #[test]
    fn truncated_images_never_panic() {
        let image = bzimage(2048, 0x100_0000);
        for len in 0..image.len() {
            let r = plan(&image[..len], None, CMD, 256 * MIB);
            assert!(r.is_err(), "len {len}");
        }
        assert!(plan(&image, None, CMD, 256 * MIB).is_ok());
    }

    #[test]
    fn fuzzed_headers_never_panic_or_escape_memory() {
        let base = bzimage(4096, 0x100_0000);
        let initrd = alloc::vec![7u8; 300_000];
        let mut x = 0x2545_F491_u32;
        let mut ok = 0;
        for round in 0..5000 {
            let mut img = base.clone();
            for _ in 0..1 + round % 6 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // Mostly the header, sometimes anywhere.
                let i = if x & 0x100 != 0 {
                    0x1F1 + (x as usize >> 9) % (0x270 - 0x1F1)
                } else {
                    (x as usize >> 9) % img.len()
                };
                img[i] = (x >> 24) as u8;
            }
            let memory = [16 * MIB, 64 * MIB, 100 * MIB, 4u64 << 30, u64::MAX][round % 5];
            let rd = (round % 3 != 0).then_some(&initrd[..]);
            if let Ok(p) = plan(&img, rd, CMD, memory) {
                check_writes(&p, memory);
                assert!(p.entry64 >= HIGH_MEMORY && p.entry64 < memory);
                ok += 1;
            }
        }
        assert!(ok > 100, "fuzzing should keep some images valid ({ok})");
    }
}

/// Checks a real kernel when `HV_LINUX_BZIMAGE` names one (e.g. Debian's
/// `/boot/vmlinuz-*-cloud-amd64`); does nothing otherwise.
#[cfg(test)]
mod real_image {
    use super::*;

    #[test]
    fn real_bzimage_from_env() {
        let Some(path) = std::env::var_os("HV_LINUX_BZIMAGE") else {
            return;
        };
        let image = std::fs::read(&path).expect("HV_LINUX_BZIMAGE is readable");
        let h = parse_header(&image).expect("a 64-bit bzImage");
        std::println!("{h:#x?}");
        let initrd = alloc::vec![0u8; 1 << 20];
        let memory = 256 << 20;
        let p = plan(
            &image,
            Some(&initrd),
            b"console=ttyS0 acpi=off pci=off reboot=t",
            memory,
        )
        .expect("plans in 256 MiB");
        std::println!(
            "load {:#x} region {:#x?} entry64 {:#x} initrd {:#x?}",
            p.kernel.gpa,
            p.kernel_region,
            p.entry64,
            p.initrd.map(|s| s.gpa)
        );
        assert!(p.kernel_region.end <= memory);
    }

    #[test]
    fn tsc_khz_appended_once() {
        assert_eq!(
            with_tsc_khz("console=ttyS0", 2_600_000).as_deref(),
            Some("console=ttyS0 tsc_early_khz=2600000")
        );
        assert_eq!(
            with_tsc_khz("", 1000).as_deref(),
            Some("tsc_early_khz=1000")
        );
        assert_eq!(with_tsc_khz("a tsc_early_khz=5", 1000), None);
        assert_eq!(with_tsc_khz("console=ttyS0", 0), None);
        // A parameter that merely contains the name is not the parameter.
        assert!(with_tsc_khz("xtsc_early_khz=5", 1000).is_some());
    }
}
