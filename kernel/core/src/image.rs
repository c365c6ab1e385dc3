//! Guest images: where their bytes go in guest-physical memory, and where the
//! guest starts. ELF64 executables (`PT_LOAD` segments at their physical
//! addresses, entry from the header) and flat binaries (one blob at the
//! configured load address). Everything is bounds-checked against the image
//! and the VM's memory: a bad image is an error naming the problem, never a
//! write outside the VM.
//!
//! [`plan`] is the one loader: the kernel calls it to copy an image into a VM,
//! and [`crate::config::check_each`] calls it, on the host (`boot check-config`,
//! `build`, `run`) and in the kernel alike, so that an image is refused before
//! anything is packed or started. ELF images must be what the loader can run
//! without relocating anything: ELF64, little-endian, x86_64, `ET_EXEC`, at
//! least one `PT_LOAD` segment, every segment inside the VM's memory and the
//! entry point inside a loaded segment.

use alloc::vec::Vec;
use core::fmt;

use crate::config::{ImageKind, Size};

/// One piece of the image to place in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// Bytes to copy (the rest of `mem_len` is zero).
    pub data: &'a [u8],
    /// Bytes the segment occupies in guest memory (>= `data.len()`).
    pub mem_len: u64,
}

impl Segment<'_> {
    /// One past the segment's last guest-physical byte (never overflows for
    /// a planned segment: it lies inside guest memory).
    pub fn end(&self) -> u64 {
        self.gpa.saturating_add(self.mem_len)
    }

    /// Whether guest-physical `addr` lies inside the segment.
    pub fn contains(&self, addr: u64) -> bool {
        self.gpa <= addr && addr < self.end()
    }
}

/// A loadable image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan<'a> {
    /// Segments in file order (`PT_LOAD` segments with a size of zero are left
    /// out: they load nothing).
    pub segments: Vec<Segment<'a>>,
    /// Guest-physical (= linear, for the identity-mapped guests) entry point.
    pub entry: u64,
}

/// Why an image cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// An image of zero bytes.
    Empty,
    /// An ELF image without the ELF magic `\x7fELF`.
    BadMagic,
    /// Not ELFCLASS64 (1 is a 32-bit ELF).
    WrongClass {
        /// `e_ident[EI_CLASS]`.
        class: u8,
    },
    /// Not little-endian (2 is big-endian).
    WrongEndian {
        /// `e_ident[EI_DATA]`.
        data: u8,
    },
    /// `e_ident[EI_VERSION]` or `e_version` is not 1 (EV_CURRENT).
    WrongVersion {
        /// The version found.
        version: u32,
    },
    /// Not an x86_64 ELF.
    WrongMachine {
        /// `e_machine` (62 is x86_64, 183 AArch64, 3 i386).
        machine: u16,
    },
    /// Not an executable (`ET_EXEC`): shared objects and position-independent
    /// executables need relocation, which the loader does not do.
    NotExecutable {
        /// `e_type` (3 is `ET_DYN`, 1 `ET_REL`).
        e_type: u16,
    },
    /// `e_phentsize` is smaller than an ELF64 program header (56 bytes).
    BadProgramHeaderSize {
        /// `e_phentsize`.
        size: u16,
    },
    /// A header or table lies outside the file.
    Truncated {
        /// What was being read.
        what: &'static str,
    },
    /// A `PT_LOAD` segment claims more file bytes than memory bytes.
    FileSizeAboveMemSize {
        /// Index of the program header.
        index: u16,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A segment lies (partly) outside the VM's memory.
    OutsideGuestMemory {
        /// Segment start.
        gpa: u64,
        /// Segment length in memory.
        len: u64,
        /// The VM's memory size.
        memory: u64,
    },
    /// The entry point is outside the VM's memory.
    EntryOutside {
        /// Entry point.
        entry: u64,
        /// The VM's memory size.
        memory: u64,
    },
    /// The entry point of an ELF image is not inside any loaded segment: the
    /// guest would start in zeroed memory.
    EntryNotLoaded {
        /// Entry point.
        entry: u64,
    },
    /// A flat image without a load address.
    NoLoadAddress,
    /// No `PT_LOAD` segment with a size.
    NothingToLoad,
    /// A kernel (bzImage, Multiboot) is loaded by its boot protocol
    /// ([`crate::boot_proto`]), not as an image.
    NotAnImage {
        /// What it is.
        kind: ImageKind,
    },
}

impl ImageError {
    /// Whether the problem is about the entry point rather than the image.
    pub fn is_about_entry(&self) -> bool {
        matches!(
            self,
            Self::EntryOutside { .. } | Self::EntryNotLoaded { .. }
        )
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "the image is empty (0 bytes)"),
            Self::BadMagic => write!(f, "not an ELF file (no \\x7fELF magic)"),
            Self::WrongClass { class: 1 } => {
                write!(f, "a 32-bit ELF (ELFCLASS32); guests must be ELF64")
            }
            Self::WrongClass { class } => {
                write!(f, "ELF class {class} is not ELFCLASS64 (2)")
            }
            Self::WrongEndian { data: 2 } => {
                write!(f, "a big-endian ELF; x86_64 guests are little-endian")
            }
            Self::WrongEndian { data } => {
                write!(f, "ELF data encoding {data} is not little-endian (1)")
            }
            Self::WrongVersion { version } => {
                write!(f, "ELF version {version} is not 1 (EV_CURRENT)")
            }
            Self::WrongMachine { machine } => {
                let name = match machine {
                    3 => " (i386)",
                    40 => " (ARM)",
                    183 => " (AArch64)",
                    243 => " (RISC-V)",
                    _ => "",
                };
                write!(
                    f,
                    "an ELF for machine {machine}{name}; guests must be x86_64 (62)"
                )
            }
            Self::NotExecutable { e_type: 3 } => write!(
                f,
                "a position-independent ELF (ET_DYN); guests load without relocation: link with --no-pie"
            ),
            Self::NotExecutable { e_type } => {
                write!(f, "ELF type {e_type} is not an executable (ET_EXEC)")
            }
            Self::BadProgramHeaderSize { size } => write!(
                f,
                "program headers of {size} bytes are smaller than an ELF64 program header (56)"
            ),
            Self::Truncated { what } => {
                write!(f, "truncated image: {what} lies outside the file")
            }
            Self::FileSizeAboveMemSize {
                index,
                filesz,
                memsz,
            } => write!(
                f,
                "program header #{index}: p_filesz {filesz:#x} is larger than p_memsz {memsz:#x}"
            ),
            Self::OutsideGuestMemory { gpa, len, memory } => match gpa.checked_add(*len) {
                Some(end) => write!(
                    f,
                    "segment {gpa:#x}..{end:#x} lies outside the VM's {} of memory",
                    Size(*memory)
                ),
                None => write!(
                    f,
                    "segment at {gpa:#x} of {len:#x} bytes runs past the end of the address space (the VM has {})",
                    Size(*memory)
                ),
            },
            Self::EntryOutside { entry, memory } => write!(
                f,
                "entry point {entry:#x} lies outside the VM's {} of memory",
                Size(*memory)
            ),
            Self::EntryNotLoaded { entry } => write!(
                f,
                "entry point {entry:#x} is not inside a loaded segment of the image"
            ),
            Self::NoLoadAddress => write!(f, "a flat image needs a load address"),
            Self::NothingToLoad => write!(f, "the ELF image has no PT_LOAD segment to load"),
            Self::NotAnImage { kind } => write!(
                f,
                "{} is booted through its boot protocol, not loaded as an image",
                kind.describe()
            ),
        }
    }
}

const PT_LOAD: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
/// Size of the ELF64 file header.
const EHDR_LEN: usize = 64;
/// Size of one ELF64 program header.
const PHDR_LEN: u64 = 56;

fn read<const N: usize>(
    bytes: &[u8],
    at: usize,
    what: &'static str,
) -> Result<[u8; N], ImageError> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or(ImageError::Truncated { what })
}

fn u16_at(b: &[u8], at: usize, what: &'static str) -> Result<u16, ImageError> {
    read::<2>(b, at, what).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize, what: &'static str) -> Result<u32, ImageError> {
    read::<4>(b, at, what).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize, what: &'static str) -> Result<u64, ImageError> {
    read::<8>(b, at, what).map(u64::from_le_bytes)
}

fn check_inside(gpa: u64, len: u64, memory: u64) -> Result<(), ImageError> {
    match gpa.checked_add(len) {
        Some(end) if end <= memory => Ok(()),
        _ => Err(ImageError::OutsideGuestMemory { gpa, len, memory }),
    }
}

/// Plans loading `data` into a VM with `memory` bytes of guest-physical
/// memory starting at 0. `entry` overrides the image's own entry point (the
/// ELF header's, or `load_addr` for a flat image); for an ELF image, either
/// must lie inside a loaded segment.
pub fn plan(
    data: &[u8],
    kind: ImageKind,
    load_addr: Option<u64>,
    entry: Option<u64>,
    memory: u64,
) -> Result<LoadPlan<'_>, ImageError> {
    let plan = segments(data, kind, load_addr, memory)?;
    let entry = entry.unwrap_or(plan.entry);
    if entry >= memory {
        return Err(ImageError::EntryOutside { entry, memory });
    }
    if kind == ImageKind::Elf && !plan.segments.iter().any(|s| s.contains(entry)) {
        return Err(ImageError::EntryNotLoaded { entry });
    }
    Ok(LoadPlan { entry, ..plan })
}

/// The first half of [`plan`]: the segments and the image's own entry point
/// (the ELF header's, or `load_addr`), with every check but those of the entry
/// point. Configuration checks use it to judge an entry point given in the
/// configuration on its own.
pub fn segments(
    data: &[u8],
    kind: ImageKind,
    load_addr: Option<u64>,
    memory: u64,
) -> Result<LoadPlan<'_>, ImageError> {
    if data.is_empty() {
        return Err(ImageError::Empty);
    }
    Ok(match kind {
        ImageKind::Flat => {
            let gpa = load_addr.ok_or(ImageError::NoLoadAddress)?;
            let len = data.len() as u64;
            check_inside(gpa, len, memory)?;
            LoadPlan {
                segments: alloc::vec![Segment {
                    gpa,
                    data,
                    mem_len: len
                }],
                entry: gpa,
            }
        }
        ImageKind::Elf => plan_elf(data, memory)?,
        ImageKind::BzImage | ImageKind::Multiboot => return Err(ImageError::NotAnImage { kind }),
    })
}

/// ELF64 (System V gABI): the file header at offset 0, program headers of
/// `e_phentsize` bytes each at `e_phoff`.
fn plan_elf(data: &[u8], memory: u64) -> Result<LoadPlan<'_>, ImageError> {
    // e_ident: magic, EI_CLASS, EI_DATA, EI_VERSION.
    let ident = read::<7>(data, 0, "ELF identification")?;
    if ident[..4] != *b"\x7fELF" {
        return Err(ImageError::BadMagic);
    }
    if ident[4] != ELFCLASS64 {
        return Err(ImageError::WrongClass { class: ident[4] });
    }
    if ident[5] != ELFDATA2LSB {
        return Err(ImageError::WrongEndian { data: ident[5] });
    }
    if ident[6] != EV_CURRENT {
        return Err(ImageError::WrongVersion {
            version: ident[6].into(),
        });
    }
    if data.len() < EHDR_LEN {
        return Err(ImageError::Truncated { what: "ELF header" });
    }
    let machine = u16_at(data, 18, "e_machine")?;
    if machine != EM_X86_64 {
        return Err(ImageError::WrongMachine { machine });
    }
    let e_type = u16_at(data, 16, "e_type")?;
    if e_type != ET_EXEC {
        return Err(ImageError::NotExecutable { e_type });
    }
    let version = u32_at(data, 20, "e_version")?;
    if version != u32::from(EV_CURRENT) {
        return Err(ImageError::WrongVersion { version });
    }
    let entry = u64_at(data, 24, "e_entry")?;
    let phoff = u64_at(data, 32, "e_phoff")?;
    let phentsize = u16_at(data, 54, "e_phentsize")?;
    let phnum = u16_at(data, 56, "e_phnum")?;
    if phnum > 0 && u64::from(phentsize) < PHDR_LEN {
        return Err(ImageError::BadProgramHeaderSize { size: phentsize });
    }
    let mut segments = Vec::new();
    for index in 0..phnum {
        let table = ImageError::Truncated {
            what: "program header table",
        };
        let at = u64::from(index)
            .checked_mul(phentsize.into())
            .and_then(|off| phoff.checked_add(off))
            .and_then(|a| usize::try_from(a).ok())
            .ok_or(table)?;
        // The whole header must be inside the file, not just the fields read.
        let header = at
            .checked_add(PHDR_LEN as usize)
            .and_then(|end| data.get(at..end))
            .ok_or(table)?;
        if u32_at(header, 0, "p_type")? != PT_LOAD {
            continue;
        }
        let offset = u64_at(header, 8, "p_offset")?;
        let paddr = u64_at(header, 24, "p_paddr")?;
        let filesz = u64_at(header, 32, "p_filesz")?;
        let memsz = u64_at(header, 40, "p_memsz")?;
        if filesz > memsz {
            return Err(ImageError::FileSizeAboveMemSize {
                index,
                filesz,
                memsz,
            });
        }
        if memsz == 0 {
            continue;
        }
        let bytes = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(filesz).ok())
            .and_then(|(o, n)| data.get(o..o.checked_add(n)?))
            .ok_or(ImageError::Truncated {
                what: "segment data",
            })?;
        check_inside(paddr, memsz, memory)?;
        segments.push(Segment {
            gpa: paddr,
            data: bytes,
            mem_len: memsz,
        });
    }
    if segments.is_empty() {
        return Err(ImageError::NothingToLoad);
    }
    Ok(LoadPlan { segments, entry })
}

/// Writes a minimal ELF64 x86_64 executable: one `PT_LOAD` program header per
/// `(p_paddr, bytes, p_memsz)` and entry point `entry`. For tests of the code
/// that checks images (here, in `boot` and in the integration tests) and for
/// fuzzing; real guests come from the linker.
pub fn minimal_elf(entry: u64, segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
    let phnum = segments.len();
    let mut out = alloc::vec![0u8; EHDR_LEN + phnum * PHDR_LEN as usize];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = ELFCLASS64;
    out[5] = ELFDATA2LSB;
    out[6] = EV_CURRENT;
    out[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    out[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    out[20..24].copy_from_slice(&u32::from(EV_CURRENT).to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&(EHDR_LEN as u64).to_le_bytes());
    out[52..54].copy_from_slice(&(EHDR_LEN as u16).to_le_bytes());
    out[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
    out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    for (i, &(paddr, bytes, memsz)) in segments.iter().enumerate() {
        let offset = out.len() as u64;
        out.extend_from_slice(bytes);
        let ph = EHDR_LEN + i * PHDR_LEN as usize;
        out[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        out[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        out[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
        out[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        out[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        out[ph + 32..ph + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        out[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        out[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
    }
    out
}

/// Writes a minimal Linux bzImage with the header values of Debian's cloud
/// kernel (boot protocol 2.15, 64-bit entry, relocatable, 2 MiB alignment,
/// preferred address 16 MiB, `cmdline_size` 2047, initrd below 2 GiB), the
/// given `init_size` and a protected-mode part of `pm_len` bytes (at least
/// 0x201, a multiple of 16). For tests of the code that checks kernels;
/// nothing in it runs.
pub fn minimal_bzimage(pm_len: usize, init_size: u32) -> Vec<u8> {
    let setup_sects = 27u8;
    let kernel_off = (usize::from(setup_sects) + 1) * 512;
    let mut b = alloc::vec![0u8; kernel_off + pm_len];
    let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x1F1, &[setup_sects]);
    put(0x1F4, &((pm_len / 16) as u32).to_le_bytes()); // syssize
    put(0x1FE, &0xAA55u16.to_le_bytes()); // boot_flag
    put(0x200, &[0xEB, 0x6A]); // jump: the header ends at 0x26C
    put(0x202, b"HdrS");
    put(0x206, &0x020Fu16.to_le_bytes()); // version 2.15
    put(0x211, &[1]); // loadflags: LOADED_HIGH
    put(0x22C, &0x7FFF_FFFFu32.to_le_bytes()); // initrd_addr_max
    put(0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(0x234, &[1, 21]); // relocatable_kernel, min_alignment
    put(0x236, &0x7Fu16.to_le_bytes()); // xloadflags: XLF_KERNEL_64 and more
    put(0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(0x258, &0x100_0000u64.to_le_bytes()); // pref_address
    put(0x260, &init_size.to_le_bytes());
    b
}

/// Writes a minimal Multiboot 1 kernel with the a.out kludge: the header at
/// file offset 0x40 (memory information required), the whole file of `len`
/// bytes (at least 0x80) loaded at `load_addr`, entry 0x80 bytes in. For
/// tests of the code that checks kernels.
pub fn minimal_multiboot(load_addr: u32, len: usize) -> Vec<u8> {
    const MAGIC: u32 = 0x1BAD_B002;
    const FLAGS: u32 = (1 << 16) | (1 << 1); // a.out kludge, memory info
    let mut b = alloc::vec![0x90u8; len.max(0x80)];
    let fields = [
        MAGIC,
        FLAGS,
        0u32.wrapping_sub(MAGIC).wrapping_sub(FLAGS),
        load_addr + 0x40, // header_addr
        load_addr,        // load_addr
        0,                // load_end_addr: the end of the file
        0,                // bss_end_addr: no bss
        load_addr + 0x80, // entry_addr
    ];
    for (i, v) in fields.iter().enumerate() {
        b[0x40 + 4 * i..0x44 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests;
