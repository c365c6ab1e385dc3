//! Guest images: where their bytes go in guest-physical memory, and where the
//! guest starts. ELF64 executables (`PT_LOAD` segments at their physical
//! addresses, entry from the header) and flat binaries (one blob at the
//! configured load address). Everything is bounds-checked against the image
//! and the VM's memory: a bad image is an error naming the problem, never a
//! write outside the VM.

use alloc::vec::Vec;
use core::fmt;

use crate::config::ImageKind;

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

/// A loadable image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan<'a> {
    /// Segments in file order.
    pub segments: Vec<Segment<'a>>,
    /// Guest-physical (= linear, for the identity-mapped guests) entry point.
    pub entry: u64,
}

/// Why an image cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// Not an ELF64 little-endian x86_64 executable.
    NotElf64,
    /// A header or table lies outside the file.
    Truncated {
        /// What was being read.
        what: &'static str,
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
    },
    /// A flat image without a load address.
    NoLoadAddress,
    /// No `PT_LOAD` segment.
    NothingToLoad,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotElf64 => write!(f, "not an ELF64 x86_64 executable"),
            Self::Truncated { what } => write!(f, "truncated image: {what} lies outside the file"),
            Self::OutsideGuestMemory { gpa, len, memory } => write!(
                f,
                "segment {gpa:#x}..{:#x} lies outside the VM's {} MiB of memory",
                gpa.saturating_add(*len),
                memory >> 20
            ),
            Self::EntryOutside { entry } => write!(f, "entry point {entry:#x} lies outside the VM's memory"),
            Self::NoLoadAddress => write!(f, "a flat image needs a load address"),
            Self::NothingToLoad => write!(f, "the ELF image has no PT_LOAD segment"),
        }
    }
}

const PT_LOAD: u32 = 1;
const EM_X86_64: u16 = 62;

fn read<const N: usize>(bytes: &[u8], at: usize, what: &'static str) -> Result<[u8; N], ImageError> {
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
/// memory starting at 0.
pub fn plan<'a>(
    data: &'a [u8],
    kind: ImageKind,
    load_addr: Option<u64>,
    entry: Option<u64>,
    memory: u64,
) -> Result<LoadPlan<'a>, ImageError> {
    let plan = match kind {
        ImageKind::Flat => {
            let gpa = load_addr.ok_or(ImageError::NoLoadAddress)?;
            let len = data.len() as u64;
            check_inside(gpa, len, memory)?;
            LoadPlan { segments: alloc::vec![Segment { gpa, data, mem_len: len }], entry: entry.unwrap_or(gpa) }
        }
        ImageKind::Elf => plan_elf(data, memory)?,
    };
    let entry = entry.unwrap_or(plan.entry);
    if entry >= memory {
        return Err(ImageError::EntryOutside { entry });
    }
    Ok(LoadPlan { entry, ..plan })
}

/// ELF64 (System V gABI): header fields at fixed offsets, program headers
/// of `e_phentsize` bytes each.
fn plan_elf(data: &[u8], memory: u64) -> Result<LoadPlan<'_>, ImageError> {
    let ident = read::<6>(data, 0, "ELF header")?;
    // Magic, ELFCLASS64 (2), ELFDATA2LSB (1).
    if ident[..4] != *b"\x7fELF" || ident[4] != 2 || ident[5] != 1 {
        return Err(ImageError::NotElf64);
    }
    if u16_at(data, 18, "e_machine")? != EM_X86_64 {
        return Err(ImageError::NotElf64);
    }
    let entry = u64_at(data, 24, "e_entry")?;
    let phoff = u64_at(data, 32, "e_phoff")?;
    let phentsize = u16_at(data, 54, "e_phentsize")? as u64;
    let phnum = u16_at(data, 56, "e_phnum")? as u64;
    let mut segments = Vec::new();
    for i in 0..phnum {
        let at = phoff
            .checked_add(i.checked_mul(phentsize).ok_or(ImageError::Truncated { what: "program header" })?)
            .and_then(|a| usize::try_from(a).ok())
            .ok_or(ImageError::Truncated { what: "program header" })?;
        if u32_at(data, at, "program header")? != PT_LOAD {
            continue;
        }
        let offset = u64_at(data, at + 8, "p_offset")?;
        let paddr = u64_at(data, at + 24, "p_paddr")?;
        let filesz = u64_at(data, at + 32, "p_filesz")?;
        let memsz = u64_at(data, at + 40, "p_memsz")?.max(filesz);
        let bytes = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(filesz).ok())
            .and_then(|(o, n)| data.get(o..o.checked_add(n)?))
            .ok_or(ImageError::Truncated { what: "segment data" })?;
        check_inside(paddr, memsz, memory)?;
        segments.push(Segment { gpa: paddr, data: bytes, mem_len: memsz });
    }
    if segments.is_empty() {
        return Err(ImageError::NothingToLoad);
    }
    Ok(LoadPlan { segments, entry })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_LOAD of `payload` at `paddr`.
    fn elf(paddr: u64, payload: &[u8], memsz: u64, entry: u64) -> Vec<u8> {
        let mut b = alloc::vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        b[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
        b[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        b[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn elf_segment_and_entry() {
        let image = elf(0x10_0000, &[1, 2, 3], 0x2000, 0x10_0000);
        let p = plan(&image, ImageKind::Elf, None, None, 16 << 20).unwrap();
        assert_eq!(p.entry, 0x10_0000);
        assert_eq!(p.segments, alloc::vec![Segment { gpa: 0x10_0000, data: &[1, 2, 3], mem_len: 0x2000 }]);
    }

    #[test]
    fn elf_segment_outside_memory_is_refused() {
        let image = elf(0x1ff_f000, &[1, 2, 3], 0x2000, 0x1ff_f000);
        let e = plan(&image, ImageKind::Elf, None, None, 32 << 20).unwrap_err();
        assert!(matches!(e, ImageError::OutsideGuestMemory { .. }), "{e:?}");
        assert!(alloc::format!("{e}").contains("outside the VM's 32 MiB"));
    }

    #[test]
    fn entry_outside_memory_is_refused() {
        let image = elf(0x1000, &[0x90], 1, 0x4000_0000);
        assert_eq!(plan(&image, ImageKind::Elf, None, None, 4 << 20), Err(ImageError::EntryOutside { entry: 0x4000_0000 }));
    }

    #[test]
    fn truncated_and_garbage_images_never_panic() {
        let image = elf(0x10_0000, &[1, 2, 3, 4, 5, 6, 7, 8], 8, 0x10_0000);
        for len in 0..image.len() {
            assert!(plan(&image[..len], ImageKind::Elf, None, None, 16 << 20).is_err(), "len {len}");
        }
        let mut x = 0x1234_5678_u32;
        for _ in 0..2000 {
            let mut junk = image.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = x as usize % junk.len();
                junk[i] = (x >> 8) as u8;
            }
            let _ = plan(&junk, ImageKind::Elf, None, None, 16 << 20);
        }
    }

    #[test]
    fn flat_image_at_load_address() {
        let data = [0xf4u8; 16];
        let p = plan(&data, ImageKind::Flat, Some(0x7c00), None, 2 << 20).unwrap();
        assert_eq!(p.entry, 0x7c00);
        assert_eq!(p.segments[0].gpa, 0x7c00);
        assert_eq!(plan(&data, ImageKind::Flat, None, None, 2 << 20), Err(ImageError::NoLoadAddress));
        assert!(plan(&data, ImageKind::Flat, Some((2 << 20) - 8), None, 2 << 20).is_err());
    }
}
