use super::*;
use alloc::string::ToString;
use alloc::vec;

const MEM: u64 = 16 << 20;

/// One PT_LOAD of `payload` at `paddr` with `memsz` bytes in memory.
fn elf(paddr: u64, payload: &[u8], memsz: u64, entry: u64) -> Vec<u8> {
    minimal_elf(entry, &[(paddr, payload, memsz)])
}

fn good() -> Vec<u8> {
    elf(0x10_0000, &[1, 2, 3], 0x2000, 0x10_0000)
}

fn plan_elf_bytes(image: &[u8]) -> Result<LoadPlan<'_>, ImageError> {
    plan(image, ImageKind::Elf, None, None, MEM)
}

/// `good()` with the bytes at `at` replaced.
fn patched(at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut image = good();
    image[at..at + bytes.len()].copy_from_slice(bytes);
    image
}

/// Offset of the first program header's field at `field` in `good()`.
fn ph(field: usize) -> usize {
    EHDR_LEN + field
}

#[test]
fn elf_segment_and_entry() {
    let image = good();
    let p = plan_elf_bytes(&image).unwrap();
    assert_eq!(p.entry, 0x10_0000);
    assert_eq!(
        p.segments,
        vec![Segment {
            gpa: 0x10_0000,
            data: &[1, 2, 3],
            mem_len: 0x2000
        }]
    );
}

#[test]
fn several_segments_and_empty_ones() {
    let image = minimal_elf(
        0x20_0010,
        &[
            (0x10_0000, &[1], 0x1000),
            (0x18_0000, &[], 0),
            (0x20_0000, &[2; 32], 32),
        ],
    );
    let p = plan_elf_bytes(&image).unwrap();
    let starts: Vec<u64> = p.segments.iter().map(|s| s.gpa).collect();
    assert_eq!(
        starts,
        [0x10_0000, 0x20_0000],
        "a zero-size segment loads nothing"
    );
}

#[test]
fn header_refusals_name_the_problem() {
    let cases: Vec<(Vec<u8>, ImageError, &str)> = vec![
        (Vec::new(), ImageError::Empty, "the image is empty"),
        (
            b"\x7fELF".to_vec(),
            ImageError::Truncated {
                what: "ELF identification",
            },
            "truncated",
        ),
        (
            b"MZ\x90\0 not an elf".to_vec(),
            ImageError::BadMagic,
            "not an ELF file",
        ),
        (
            patched(4, &[1]),
            ImageError::WrongClass { class: 1 },
            "a 32-bit ELF",
        ),
        (
            patched(4, &[7]),
            ImageError::WrongClass { class: 7 },
            "ELF class 7",
        ),
        (
            patched(5, &[2]),
            ImageError::WrongEndian { data: 2 },
            "big-endian",
        ),
        (
            patched(6, &[0]),
            ImageError::WrongVersion { version: 0 },
            "ELF version 0",
        ),
        (
            patched(20, &[2, 0, 0, 0]),
            ImageError::WrongVersion { version: 2 },
            "ELF version 2",
        ),
        (
            patched(18, &183u16.to_le_bytes()),
            ImageError::WrongMachine { machine: 183 },
            "(AArch64)",
        ),
        (
            patched(18, &3u16.to_le_bytes()),
            ImageError::WrongMachine { machine: 3 },
            "(i386)",
        ),
        (
            patched(16, &3u16.to_le_bytes()),
            ImageError::NotExecutable { e_type: 3 },
            "--no-pie",
        ),
        (
            patched(16, &1u16.to_le_bytes()),
            ImageError::NotExecutable { e_type: 1 },
            "ELF type 1",
        ),
        (
            patched(54, &32u16.to_le_bytes()),
            ImageError::BadProgramHeaderSize { size: 32 },
            "smaller than",
        ),
        (
            patched(56, &0u16.to_le_bytes()),
            ImageError::NothingToLoad,
            "no PT_LOAD",
        ),
        (
            patched(ph(0), &4u32.to_le_bytes()),
            ImageError::NothingToLoad,
            "no PT_LOAD",
        ),
    ];
    for (image, expected, words) in cases {
        let got = plan_elf_bytes(&image).unwrap_err();
        assert_eq!(got, expected, "{image:x?}");
        assert!(got.to_string().contains(words), "{got}");
    }
    // The ELF header proper (64 bytes) must be there once the class is known.
    assert_eq!(
        plan_elf_bytes(&good()[..40]),
        Err(ImageError::Truncated { what: "ELF header" })
    );
}

#[test]
fn table_and_segment_refusals() {
    let far = u64::MAX - 8;
    let cases: Vec<(Vec<u8>, ImageError)> = vec![
        // Program header table outside the file, or overflowing.
        (
            patched(32, &0x1000u64.to_le_bytes()),
            ImageError::Truncated {
                what: "program header table",
            },
        ),
        (
            patched(32, &far.to_le_bytes()),
            ImageError::Truncated {
                what: "program header table",
            },
        ),
        // Segment bytes outside the file.
        (
            patched(ph(8), &0x1000u64.to_le_bytes()),
            ImageError::Truncated {
                what: "segment data",
            },
        ),
        (
            patched(ph(32), &far.to_le_bytes()),
            ImageError::FileSizeAboveMemSize {
                index: 0,
                filesz: far,
                memsz: 0x2000,
            },
        ),
        // More file bytes than memory bytes.
        (
            patched(ph(40), &2u64.to_le_bytes()),
            ImageError::FileSizeAboveMemSize {
                index: 0,
                filesz: 3,
                memsz: 2,
            },
        ),
        // Outside the VM's memory: past its end, p_memsz = 2^63, overflowing.
        (
            patched(ph(24), &MEM.to_le_bytes()),
            ImageError::OutsideGuestMemory {
                gpa: MEM,
                len: 0x2000,
                memory: MEM,
            },
        ),
        (
            patched(ph(40), &(1u64 << 63).to_le_bytes()),
            ImageError::OutsideGuestMemory {
                gpa: 0x10_0000,
                len: 1 << 63,
                memory: MEM,
            },
        ),
        (
            patched(ph(24), &far.to_le_bytes()),
            ImageError::OutsideGuestMemory {
                gpa: far,
                len: 0x2000,
                memory: MEM,
            },
        ),
        // Entry outside memory, and inside memory but in no segment.
        (
            patched(24, &MEM.to_le_bytes()),
            ImageError::EntryOutside {
                entry: MEM,
                memory: MEM,
            },
        ),
        (
            patched(24, &0x8000u64.to_le_bytes()),
            ImageError::EntryNotLoaded { entry: 0x8000 },
        ),
        (
            patched(24, &0x10_2000u64.to_le_bytes()),
            ImageError::EntryNotLoaded { entry: 0x10_2000 },
        ),
    ];
    for (image, expected) in cases {
        assert_eq!(plan_elf_bytes(&image), Err(expected), "{expected}");
    }
    // The last byte of the segment's memory is still a valid entry.
    assert!(plan_elf_bytes(&patched(24, &0x10_1fffu64.to_le_bytes())).is_ok());
}

#[test]
fn messages_read_well() {
    let e = plan(
        &elf(0x1ff_f000, &[1, 2, 3], 0x2000, 0x1ff_f000),
        ImageKind::Elf,
        None,
        None,
        32 << 20,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "segment 0x1fff000..0x2001000 lies outside the VM's 32 MiB of memory"
    );
    let e = ImageError::OutsideGuestMemory {
        gpa: u64::MAX,
        len: 2,
        memory: MEM,
    };
    assert!(
        e.to_string()
            .contains("runs past the end of the address space"),
        "{e}"
    );
    assert_eq!(
        ImageError::EntryNotLoaded { entry: 0x8000 }.to_string(),
        "entry point 0x8000 is not inside a loaded segment of the image"
    );
    assert!(ImageError::EntryNotLoaded { entry: 0 }.is_about_entry());
    assert!(!ImageError::NothingToLoad.is_about_entry());
}

#[test]
fn entry_override() {
    let image = good();
    let p = plan(&image, ImageKind::Elf, None, Some(0x10_0100), MEM).unwrap();
    assert_eq!(p.entry, 0x10_0100);
    assert_eq!(
        plan(&image, ImageKind::Elf, None, Some(0x20_0000), MEM),
        Err(ImageError::EntryNotLoaded { entry: 0x20_0000 })
    );
    assert_eq!(
        plan(&image, ImageKind::Elf, None, Some(MEM), MEM),
        Err(ImageError::EntryOutside {
            entry: MEM,
            memory: MEM
        })
    );
}

#[test]
fn every_truncation_is_refused() {
    let image = minimal_elf(0x10_0000, &[(0x10_0000, &[1, 2, 3, 4, 5, 6, 7, 8], 8)]);
    for len in 0..image.len() {
        assert!(plan_elf_bytes(&image[..len]).is_err(), "len {len}");
    }
    assert!(plan_elf_bytes(&image).is_ok());
}

#[test]
fn flat_image_at_load_address() {
    let data = [0xf4u8; 16];
    let p = plan(&data, ImageKind::Flat, Some(0x7c00), None, 2 << 20).unwrap();
    assert_eq!(p.entry, 0x7c00);
    assert_eq!(p.segments[0].gpa, 0x7c00);
    assert_eq!(
        plan(&data, ImageKind::Flat, None, None, 2 << 20),
        Err(ImageError::NoLoadAddress)
    );
    assert!(matches!(
        plan(&data, ImageKind::Flat, Some((2 << 20) - 8), None, 2 << 20),
        Err(ImageError::OutsideGuestMemory { .. })
    ));
    assert_eq!(
        plan(&[], ImageKind::Flat, Some(0), None, 2 << 20),
        Err(ImageError::Empty)
    );
    // A flat image may start anywhere inside memory: its entry is not checked
    // against the image (it may jump into memory it sets up).
    assert_eq!(
        plan(&data, ImageKind::Flat, Some(0x7c00), Some(0x100), 2 << 20)
            .unwrap()
            .entry,
        0x100
    );
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Rounds of a fuzz loop: `default`, or `HV_FUZZ_ROUNDS` when set (the long
/// run described in README.md).
fn rounds(default: u64) -> u64 {
    std::env::var("HV_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whatever the bytes, a plan that comes out keeps every promise: segments
/// inside guest memory, their bytes inside the input, the entry in a segment.
#[test]
fn fuzz_plans_keep_their_promises() {
    let base = minimal_elf(
        0x10_0040,
        &[
            (0x10_0000, &[0x90; 64], 0x1000),
            (0x20_0000, &[0xcc; 16], 0x40),
        ],
    );
    let mut rng = XorShift(0xDEC0_DE00_1234_5678);
    let memory = 4 << 20;
    for _ in 0..rounds(20_000) {
        let mut image = base.clone();
        for _ in 0..1 + rng.below(6) {
            let i = rng.below(image.len());
            image[i] = match rng.below(5) {
                0 => 0,
                1 => 0xff,
                2 => image[i] ^ (1 << rng.below(8)),
                _ => rng.next() as u8,
            };
        }
        if rng.below(8) == 0 {
            image.truncate(rng.below(image.len() + 1));
        }
        let Ok(p) = plan(&image, ImageKind::Elf, None, None, memory) else {
            continue;
        };
        let input = image.as_ptr_range();
        for s in &p.segments {
            assert!(
                s.gpa
                    .checked_add(s.mem_len)
                    .is_some_and(|end| end <= memory),
                "{s:x?}"
            );
            assert!(s.data.len() as u64 <= s.mem_len && s.mem_len > 0);
            let r = s.data.as_ptr_range();
            assert!(s.data.is_empty() || (input.start <= r.start && r.end <= input.end));
        }
        assert!(p.segments.iter().any(|s| s.contains(p.entry)));
    }
}
