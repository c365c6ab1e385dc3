use super::*;
use crate::config::{RebootPolicy, MIB};
use alloc::string::ToString;
use alloc::vec;

const ELF_BYTES: &[u8] = b"\x7fELF\x02\x01\x01 pretend this is a guest";
const FLAT_BYTES: &[u8] = &[0xeb, 0xfe, 0x90];

fn sample() -> Package<'static> {
    Package {
        command: Command::SelfTest {
            filter: "ept".to_string(),
        },
        options: BootOptions {
            serial_input: true,
            stop_after_ms: Some(5000),
            bench: false,
            power_off: true,
            control: false,
        },
        vms: vec![
            VmSpec {
                name: "alpha".to_string(),
                memory_bytes: 16 * MIB,
                host_base: None,
                cpus: vec![0],
                image: 0,
                slice_us: 10_000,
                entry: None,
                load_addr: None,
                mode: GuestMode::Long64,
                initrd: None,
                cmdline: String::new(),
                on_reboot: RebootPolicy::Stop,
            },
            VmSpec {
                name: "bóot".to_string(),
                memory_bytes: 2 * MIB,
                host_base: Some(0x400_0000),
                cpus: vec![1, 0],
                image: 1,
                slice_us: 1,
                entry: Some(0x7c00),
                load_addr: Some(0x7c00),
                mode: GuestMode::Real16,
                initrd: None,
                cmdline: String::new(),
                on_reboot: RebootPolicy::Restart,
            },
            VmSpec {
                name: "linux".to_string(),
                memory_bytes: 256 * MIB,
                host_base: None,
                cpus: vec![1],
                image: 0,
                slice_us: 10_000,
                entry: None,
                load_addr: None,
                mode: GuestMode::Linux64,
                initrd: Some(1),
                cmdline: "console=ttyS0 acpi=off pci=off reboot=t".to_string(),
                on_reboot: RebootPolicy::Restart,
            },
        ],
        images: vec![
            Image {
                name: "counter",
                kind: ImageKind::Elf,
                data: ELF_BYTES,
            },
            Image {
                name: "file:boot.bin",
                kind: ImageKind::Flat,
                data: FLAT_BYTES,
            },
        ],
    }
}

/// Recomputes the checksum of a (mutated) package so the parser behind it runs.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= HEADER_LEN + CRC_LEN {
        let at = bytes.len() - CRC_LEN;
        let crc = crc32(&bytes[..at]);
        bytes[at..].copy_from_slice(&crc.to_le_bytes());
    }
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

/// Where each field of `encode(&sample())` sits, found by walking the format as
/// the module documentation describes it (an independent reading of the spec).
#[derive(Debug)]
struct Fields {
    command: usize,
    filter_len: usize,
    flags: usize,
    stop_after: usize,
    vm_count: usize,
    /// Per VM: name length, memory, host-base tag, CPU count, image index,
    /// slice, entry tag, load-address tag, mode, initrd tag, command-line
    /// length, reboot policy.
    vms: Vec<[usize; 12]>,
    image_count: usize,
    /// Per image: name length, kind, offset, length.
    images: Vec<[usize; 4]>,
    table_end: usize,
    crc: usize,
}

fn fields(bytes: &[u8]) -> Fields {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let mut at = HEADER_LEN;
    let command = at;
    let filter_len = at + 1;
    at += 1 + 4 + u32_at(filter_len);
    let flags = at;
    let stop_after = at + 1;
    at += 1 + 4;
    let vm_count = at;
    at += 4;
    let mut vms = Vec::new();
    for _ in 0..u32_at(vm_count) {
        let name = at;
        at += 4 + u32_at(at);
        let memory = at;
        at += 8;
        let host = at;
        at += 1 + if bytes[host] == 1 { 8 } else { 0 };
        let cpus = at;
        at += 4 + 4 * u32_at(cpus);
        let image = at;
        let slice = at + 4;
        at += 8;
        let entry = at;
        at += 1 + if bytes[entry] == 1 { 8 } else { 0 };
        let load = at;
        at += 1 + if bytes[load] == 1 { 8 } else { 0 };
        let mode = at;
        at += 1;
        let initrd = at;
        at += 1 + if bytes[initrd] == 1 { 4 } else { 0 };
        let cmdline = at;
        at += 4 + u32_at(cmdline);
        let on_reboot = at;
        at += 1;
        vms.push([
            name, memory, host, cpus, image, slice, entry, load, mode, initrd, cmdline, on_reboot,
        ]);
    }
    let image_count = at;
    at += 4;
    let mut images = Vec::new();
    for _ in 0..u32_at(image_count) {
        let name = at;
        at += 4 + u32_at(at);
        images.push([name, at, at + 1, at + 9]);
        at += 1 + 8 + 8;
    }
    Fields {
        command,
        filter_len,
        flags,
        stop_after,
        vm_count,
        vms,
        image_count,
        images,
        table_end: at,
        crc: bytes.len() - CRC_LEN,
    }
}

/// `bytes` with `value` written at `at`, checksum recomputed, decoded.
fn decode_patched(bytes: &[u8], at: usize, value: &[u8]) -> Result<(), DecodeError> {
    let mut bad = bytes.to_vec();
    bad[at..at + value.len()].copy_from_slice(value);
    reseal(&mut bad);
    decode(&bad).map(|_| ())
}

#[test]
fn crc32_known_values() {
    assert_eq!(crc32(b""), 0);
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(
        crc32(b"The quick brown fox jumps over the lazy dog"),
        0x414F_A339
    );
}

#[test]
fn roundtrip() {
    let package = sample();
    let bytes = encode(&package).unwrap();
    assert_eq!(&bytes[..8], &MAGIC);
    assert_eq!(decode(&bytes), Ok(package));
}

#[test]
fn roundtrip_every_command_and_option() {
    let commands = [
        Command::RunVms,
        Command::SelfTest {
            filter: String::new(),
        },
    ]
    .into_iter()
    .chain(CrashTest::ALL.into_iter().map(Command::Crash));
    for command in commands {
        for bits in 0..32u8 {
            let options = BootOptions {
                serial_input: bits & 1 != 0,
                bench: bits & 2 != 0,
                stop_after_ms: (bits & 4 != 0).then_some(u32::MAX),
                power_off: bits & 8 != 0,
                control: bits & 16 != 0,
            };
            let package = Package {
                command: command.clone(),
                options,
                vms: vec![],
                images: vec![],
            };
            assert_eq!(decode(&encode(&package).unwrap()), Ok(package));
        }
    }
}

#[test]
fn images_are_aligned_and_borrowed() {
    let bytes = encode(&sample()).unwrap();
    let package = decode(&bytes).unwrap();
    for image in &package.images {
        let offset = image.data.as_ptr() as usize - bytes.as_ptr() as usize;
        assert_eq!(offset % IMAGE_ALIGN, 0);
    }
    assert_eq!(package.image_infos()[1].len(), 3);
}

#[test]
fn trailing_padding_is_ignored() {
    let mut bytes = encode(&sample()).unwrap();
    bytes.resize(bytes.len() + 4096, 0xAA);
    assert_eq!(decode(&bytes), Ok(sample()));
}

#[test]
fn empty_packages_round_trip() {
    let package = Package {
        command: Command::RunVms,
        options: BootOptions::default(),
        vms: vec![],
        images: vec![],
    };
    let bytes = encode(&package).unwrap();
    assert_eq!(bytes.len(), HEADER_LEN + 1 + 1 + 4 + 4 + CRC_LEN);
    assert_eq!(decode(&bytes), Ok(package));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = encode(&sample()).unwrap();
    for len in 0..bytes.len() {
        let err = decode(&bytes[..len]).unwrap_err();
        assert!(
            matches!(err, DecodeError::Truncated { .. }),
            "length {len}: {err:?}"
        );
    }
}

#[test]
fn every_single_byte_flip_is_an_error() {
    let bytes = encode(&sample()).unwrap();
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[i] ^= mask;
            assert!(decode(&bad).is_err(), "byte {i} ^ {mask:#x} accepted");
        }
    }
}

#[test]
fn header_errors() {
    let bytes = encode(&sample()).unwrap();
    assert_eq!(decode(b"ELF\0garbage"), Err(DecodeError::BadMagic));
    let mut v1 = bytes.clone();
    v1[8] = 1;
    assert_eq!(decode(&v1), Err(DecodeError::UnsupportedVersion(1)));
    let mut short = bytes.clone();
    short[12..20].copy_from_slice(&3u64.to_le_bytes());
    assert_eq!(decode(&short), Err(DecodeError::BadLength { declared: 3 }));
    let mut flipped = bytes;
    let last = flipped.len() - 1;
    flipped[last - 10] ^= 1;
    assert!(matches!(
        decode(&flipped),
        Err(DecodeError::BadChecksum { .. })
    ));
}

#[test]
fn structural_errors_behind_a_valid_checksum() {
    let bytes = encode(&sample()).unwrap();
    // Command tag.
    let mut bad = bytes.clone();
    bad[HEADER_LEN] = 9;
    reseal(&mut bad);
    assert_eq!(
        decode(&bad),
        Err(DecodeError::BadEnum {
            field: "command",
            value: 9
        })
    );
    // The self-test filter's bytes are not UTF-8.
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 5] = 0xff;
    reseal(&mut bad);
    assert_eq!(
        decode(&bad),
        Err(DecodeError::BadUtf8 { at: HEADER_LEN + 5 })
    );
    // Unknown option bit.
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 1 + 4 + 3] |= 0x80;
    reseal(&mut bad);
    assert!(matches!(
        decode(&bad),
        Err(DecodeError::BadEnum {
            field: "option flags",
            ..
        })
    ));
    // The last image claims to run into the checksum.
    let table_end = bytes.len() - CRC_LEN - FLAT_BYTES.len();
    let mut bad = bytes.clone();
    let len_field = (HEADER_LEN..table_end)
        .rev()
        .find(|&i| bad[i..i + 8] == (FLAT_BYTES.len() as u64).to_le_bytes())
        .unwrap();
    bad[len_field..len_field + 8].copy_from_slice(&100u64.to_le_bytes());
    reseal(&mut bad);
    assert_eq!(
        decode(&bad),
        Err(DecodeError::ImageOutOfBounds { index: 1 })
    );
}

#[test]
fn every_header_field_is_checked() {
    let bytes = encode(&sample()).unwrap();
    let f = fields(&bytes);
    // Each magic byte.
    for i in 0..MAGIC.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x20;
        assert_eq!(decode(&bad), Err(DecodeError::BadMagic), "magic byte {i}");
    }
    assert_eq!(decode(&MAGIC[..5]), Err(DecodeError::Truncated { at: 5 }));
    assert_eq!(decode(b"HVPKX"), Err(DecodeError::BadMagic));
    assert_eq!(decode(&[]), Err(DecodeError::Truncated { at: 0 }));
    // The version.
    for v in [0u32, 1, 3, u32::MAX] {
        let mut bad = bytes.clone();
        bad[8..12].copy_from_slice(&v.to_le_bytes());
        assert_eq!(decode(&bad), Err(DecodeError::UnsupportedVersion(v)));
    }
    // The declared length: too small for a header and checksum, larger than
    // the input, and shorter than the package (then the checksum is wrong).
    let length = |declared: u64| {
        let mut bad = bytes.clone();
        bad[12..20].copy_from_slice(&declared.to_le_bytes());
        decode(&bad).map(|_| ())
    };
    for declared in [0, 1, (HEADER_LEN + CRC_LEN - 1) as u64] {
        assert_eq!(length(declared), Err(DecodeError::BadLength { declared }));
    }
    let n = bytes.len() as u64;
    assert_eq!(
        length(n + 1),
        Err(DecodeError::Truncated { at: bytes.len() })
    );
    assert_eq!(
        length(u64::MAX),
        Err(DecodeError::Truncated { at: bytes.len() })
    );
    assert!(matches!(
        length(n - 1),
        Err(DecodeError::BadChecksum { .. })
    ));
    // The smallest declared length is read as a package without a body.
    let mut minimal = bytes[..HEADER_LEN + CRC_LEN].to_vec();
    minimal[12..20].copy_from_slice(&((HEADER_LEN + CRC_LEN) as u64).to_le_bytes());
    reseal(&mut minimal);
    assert_eq!(
        decode(&minimal),
        Err(DecodeError::Truncated { at: HEADER_LEN })
    );
    // Each checksum byte.
    for i in f.crc..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 1;
        assert!(
            matches!(decode(&bad), Err(DecodeError::BadChecksum { .. })),
            "byte {i}"
        );
    }
}

#[test]
fn every_enumerated_field_is_checked() {
    let bytes = encode(&sample()).unwrap();
    let f = fields(&bytes);
    let bad_enum = |field: &'static str, value: u32| Err(DecodeError::BadEnum { field, value });
    assert_eq!(
        decode_patched(&bytes, f.command, &[3]),
        bad_enum("command", 3)
    );
    assert_eq!(
        decode_patched(&bytes, f.command, &[0xff]),
        bad_enum("command", 0xff)
    );
    for bit in 5..8 {
        let flags = bytes[f.flags] | 1 << bit;
        assert_eq!(
            decode_patched(&bytes, f.flags, &[flags]),
            bad_enum("option flags", flags.into())
        );
    }
    let vm = f.vms[1];
    assert_eq!(
        decode_patched(&bytes, vm[2], &[2]),
        bad_enum("VM host base", 2)
    );
    assert_eq!(decode_patched(&bytes, vm[6], &[2]), bad_enum("VM entry", 2));
    assert_eq!(
        decode_patched(&bytes, vm[7], &[9]),
        bad_enum("VM load address", 9)
    );
    assert_eq!(decode_patched(&bytes, vm[8], &[4]), bad_enum("VM mode", 4));
    assert_eq!(
        decode_patched(&bytes, vm[8], &[0xff]),
        bad_enum("VM mode", 0xff)
    );
    for vm in &f.vms {
        assert_eq!(
            decode_patched(&bytes, vm[9], &[2]),
            bad_enum("VM initrd", 2)
        );
        assert_eq!(
            decode_patched(&bytes, vm[11], &[2]),
            bad_enum("VM reboot policy", 2)
        );
    }
    assert_eq!(
        decode_patched(&bytes, f.images[0][1], &[4]),
        bad_enum("image kind", 4)
    );
    // The crash test code, in a package of its own.
    let crash = encode(&Package {
        command: Command::Crash(CrashTest::DoubleFault),
        options: BootOptions::default(),
        vms: vec![],
        images: vec![],
    })
    .unwrap();
    assert_eq!(
        decode_patched(&crash, HEADER_LEN + 1, &[3]),
        bad_enum("crash test", 3)
    );
}

#[test]
fn every_length_is_checked() {
    let bytes = encode(&sample()).unwrap();
    let f = fields(&bytes);
    let huge = u32::MAX.to_le_bytes();
    // String lengths: the self-test filter, each VM name, each image name. A
    // length past the end is truncation at the string's bytes.
    for at in [
        f.filter_len,
        f.vms[0][0],
        f.vms[1][0],
        f.vms[2][0],
        f.vms[0][10],
        f.vms[2][10],
        f.images[0][0],
        f.images[1][0],
    ] {
        assert_eq!(
            decode_patched(&bytes, at, &huge),
            Err(DecodeError::Truncated { at: at + 4 }),
            "string length at {at}"
        );
    }
    // Counts: VMs, CPUs of each VM, images. Each element consumes input, so a
    // huge count ends in an error (the bytes after are misread), never in a
    // huge allocation.
    for at in [f.vm_count, f.vms[0][3], f.vms[1][3], f.image_count] {
        assert!(decode_patched(&bytes, at, &huge).is_err(), "count at {at}");
        assert!(
            decode_patched(&bytes, at, &[0xff, 0xff, 0, 0]).is_err(),
            "count at {at}"
        );
    }
    // One VM fewer than the table holds: the rest of the table is misread.
    assert!(decode_patched(&bytes, f.vm_count, &1u32.to_le_bytes()).is_err());
    // Image lengths: one byte more runs into the next image or the checksum;
    // one byte less leaves bytes unaccounted for.
    let len_of = |i: usize| u64::from_le_bytes(bytes[f.images[i][3]..][..8].try_into().unwrap());
    assert_eq!(
        decode_patched(&bytes, f.images[1][3], &(len_of(1) + 1).to_le_bytes()),
        Err(DecodeError::ImageOutOfBounds { index: 1 })
    );
    assert_eq!(
        decode_patched(&bytes, f.images[1][3], &(len_of(1) - 1).to_le_bytes()),
        Err(DecodeError::TrailingBytes { at: f.crc - 1 })
    );
    assert_eq!(
        decode_patched(&bytes, f.images[0][3], &u64::MAX.to_le_bytes()),
        Err(DecodeError::ImageOutOfBounds { index: 0 })
    );
    // Image 0 grown past the padding into image 1 (which starts right after
    // it): image 1 is then out of place.
    let offset_of = |i: usize| {
        usize::try_from(u64::from_le_bytes(
            bytes[f.images[i][2]..][..8].try_into().unwrap(),
        ))
        .unwrap()
    };
    let image1 = offset_of(1);
    let grown_end = offset_of(0) + len_of(0) as usize + 2;
    assert!(grown_end > image1 && grown_end < f.crc);
    assert_eq!(
        decode_patched(&bytes, f.images[0][3], &(len_of(0) + 2).to_le_bytes()),
        Err(DecodeError::ImageMisplaced {
            index: 1,
            expected: grown_end.next_multiple_of(IMAGE_ALIGN)
        })
    );
    // The stop-after value is present exactly when its flag says so.
    let no_stop = bytes[f.flags] & !OPT_STOP_AFTER;
    assert!(decode_patched(&bytes, f.flags, &[no_stop]).is_err());
    let _ = f.stop_after;
}

#[test]
fn every_offset_is_checked() {
    let bytes = encode(&sample()).unwrap();
    let f = fields(&bytes);
    let offset_at = |i: usize| f.images[i][2];
    let offset_of = |i: usize| u64::from_le_bytes(bytes[offset_at(i)..][..8].try_into().unwrap());
    let first = usize::try_from(offset_of(0)).unwrap();
    assert_eq!(first, f.table_end.next_multiple_of(IMAGE_ALIGN));
    let patch = |i: usize, offset: u64| decode_patched(&bytes, offset_at(i), &offset.to_le_bytes());
    // Before the data area: inside the image table, or the header.
    for offset in [0, HEADER_LEN as u64, (f.table_end - 1) as u64] {
        assert_eq!(
            patch(0, offset),
            Err(DecodeError::ImageOutOfBounds { index: 0 }),
            "{offset}"
        );
    }
    // Inside the data area but off its aligned place, overlapping image 0, or
    // into the checksum, or overflowing.
    assert_eq!(
        patch(0, first as u64 + 1),
        Err(DecodeError::ImageMisplaced {
            index: 0,
            expected: first
        })
    );
    assert!(matches!(
        patch(1, offset_of(0)),
        Err(DecodeError::ImageMisplaced { index: 1, .. })
    ));
    assert_eq!(
        patch(1, f.crc as u64),
        Err(DecodeError::ImageOutOfBounds { index: 1 })
    );
    assert_eq!(
        patch(1, u64::MAX - 1),
        Err(DecodeError::ImageOutOfBounds { index: 1 })
    );
    // Non-zero padding between the table and the first image.
    if first > f.table_end {
        assert_eq!(
            decode_patched(&bytes, first - 1, &[0xaa]),
            Err(DecodeError::NonZeroPadding { at: first - 1 })
        );
    }
}

#[test]
fn bytes_hidden_before_the_checksum_are_refused() {
    // A package with no images and one extra byte before the checksum.
    let package = Package {
        command: Command::RunVms,
        options: BootOptions::default(),
        vms: vec![],
        images: vec![],
    };
    let mut bytes = encode(&package).unwrap();
    let crc_at = bytes.len() - CRC_LEN;
    bytes.insert(crc_at, 0);
    let total = bytes.len() as u64;
    bytes[12..20].copy_from_slice(&total.to_le_bytes());
    reseal(&mut bytes);
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::TrailingBytes { at: crc_at })
    );
}

#[test]
fn huge_counts_do_not_allocate_or_panic() {
    let package = Package {
        command: Command::RunVms,
        options: BootOptions::default(),
        vms: vec![],
        images: vec![],
    };
    let mut bytes = encode(&package).unwrap();
    let vm_count_at = HEADER_LEN + 2;
    bytes[vm_count_at..vm_count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut bytes);
    assert!(matches!(decode(&bytes), Err(DecodeError::Truncated { .. })));
}

#[test]
fn kernel_fields_are_where_the_format_says() {
    let bytes = encode(&sample()).unwrap();
    let f = fields(&bytes);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let linux = f.vms[2];
    assert_eq!(bytes[linux[8]], 2, "mode linux");
    assert_eq!((bytes[linux[9]], u32_at(linux[9] + 1)), (1, 1), "initrd #1");
    let cmdline = "console=ttyS0 acpi=off pci=off reboot=t";
    assert_eq!(u32_at(linux[10]) as usize, cmdline.len());
    assert_eq!(&bytes[linux[10] + 4..][..cmdline.len()], cmdline.as_bytes());
    assert_eq!(bytes[linux[11]], 1, "restart");
    let alpha = f.vms[0];
    assert_eq!(
        (
            bytes[alpha[8]],
            bytes[alpha[9]],
            u32_at(alpha[10]),
            bytes[alpha[11]]
        ),
        (0, 0, 0, 0),
        "long64, no initrd, no command line, stop"
    );
    assert_eq!(bytes[f.vms[1][8]], 1, "real16");
    // Image kinds: 0 ELF, 1 flat, 2 bzImage, 3 Multiboot.
    for (code, kind) in ImageKind::ALL.into_iter().enumerate() {
        let package = Package {
            images: vec![Image {
                name: "k",
                kind,
                data: FLAT_BYTES,
            }],
            ..sample()
        };
        let bytes = encode(&package).unwrap();
        assert_eq!(bytes[fields(&bytes).images[0][1]], code as u8);
        assert_eq!(decode(&bytes), Ok(package));
    }
    for (code, mode) in GuestMode::ALL.into_iter().enumerate() {
        let mut package = sample();
        package.vms[0].mode = mode;
        let bytes = encode(&package).unwrap();
        assert_eq!(bytes[fields(&bytes).vms[0][8]], code as u8);
    }
}

#[test]
fn roundtrip_every_mode_kind_and_reboot_policy() {
    let long_line = "é".repeat(2000) + "x";
    for mode in GuestMode::ALL {
        for on_reboot in RebootPolicy::ALL {
            for initrd in [None, Some(0), Some(1), Some(u32::MAX)] {
                for cmdline in ["", "quiet", long_line.as_str()] {
                    let mut package = sample();
                    let vm = &mut package.vms[2];
                    vm.mode = mode;
                    vm.on_reboot = on_reboot;
                    vm.initrd = initrd;
                    vm.cmdline = cmdline.to_string();
                    package.images[0].kind = ImageKind::ALL[mode.name().len() % 4];
                    let bytes = encode(&package).unwrap();
                    assert_eq!(decode(&bytes), Ok(package));
                }
            }
        }
    }
}

#[test]
fn kernel_fields_are_checked() {
    let bytes = encode(&sample()).unwrap();
    let f = fields(&bytes);
    let linux = f.vms[2];
    // The command line's bytes are not UTF-8.
    assert_eq!(
        decode_patched(&bytes, linux[10] + 4, &[0xff]),
        Err(DecodeError::BadUtf8 { at: linux[10] + 4 })
    );
    // A command line length one too long or short misreads what follows.
    let len = u32::from_le_bytes(bytes[linux[10]..][..4].try_into().unwrap());
    for wrong in [len + 1, len - 1, 0] {
        assert!(
            decode_patched(&bytes, linux[10], &wrong.to_le_bytes()).is_err(),
            "length {wrong}"
        );
    }
    // The initrd present without its index, or absent with one.
    assert!(decode_patched(&bytes, linux[9], &[0]).is_err());
    assert!(decode_patched(&bytes, f.vms[0][9], &[1]).is_err());
    // Truncated inside the new fields.
    for at in [
        linux[9],
        linux[9] + 3,
        linux[10] + 2,
        linux[10] + 10,
        linux[11],
    ] {
        let mut cut = bytes[..at].to_vec();
        cut.extend_from_slice(&[0; CRC_LEN]);
        let total = cut.len() as u64;
        cut[12..20].copy_from_slice(&total.to_le_bytes());
        reseal(&mut cut);
        assert!(
            matches!(decode(&cut), Err(DecodeError::Truncated { .. })),
            "cut at {at}: {:?}",
            decode(&cut)
        );
    }
}

/// A Linux VM with a kernel and an initrd of realistic size (Debian's cloud
/// kernel is 14 MiB, a busybox initramfs 1 MiB) packs, and decodes without
/// copying either.
#[test]
fn large_kernels_and_initrds_pack() {
    let kernel = vec![0x5au8; 14 * MIB as usize + 123];
    let initrd = vec![0x1fu8; MIB as usize + 7];
    let package = Package {
        command: Command::RunVms,
        options: BootOptions::default(),
        vms: vec![sample().vms[2].clone()],
        images: vec![
            Image {
                name: "file:../../target/linux/vmlinuz",
                kind: ImageKind::BzImage,
                data: &kernel,
            },
            Image {
                name: "file:../../target/linux/initramfs.cpio.gz",
                kind: ImageKind::Flat,
                data: &initrd,
            },
        ],
    };
    let start = std::time::Instant::now();
    let bytes = encode(&package).unwrap();
    let decoded = decode(&bytes).unwrap();
    assert_eq!(decoded, package);
    let inside = |data: &[u8]| {
        let at = data.as_ptr() as usize - bytes.as_ptr() as usize;
        at.is_multiple_of(IMAGE_ALIGN) && at + data.len() <= bytes.len()
    };
    assert!(decoded.images.iter().all(|i| inside(i.data)));
    assert!(bytes.len() < kernel.len() + initrd.len() + 4096);
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn names_round_trip() {
    for t in CrashTest::ALL {
        assert_eq!(CrashTest::from_name(t.name()), Some(t));
    }
    assert_eq!(CrashTest::from_name("triple-fault"), None);
    assert_eq!(
        DecodeError::BadEnum {
            field: "VM mode",
            value: 7
        }
        .to_string(),
        "VM mode: invalid value 7"
    );
}

/// Rounds of a fuzz loop: `default`, or `HV_FUZZ_ROUNDS` when set (the long
/// run described in README.md).
fn rounds(default: u64) -> u64 {
    std::env::var("HV_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn fuzz_random_bytes_are_refused_without_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut buf = Vec::new();
    for round in 0..rounds(20_000) {
        buf.clear();
        let len = rng.below(256);
        buf.extend((0..len).map(|_| rng.next() as u8));
        if round % 2 == 0 && len >= HEADER_LEN + CRC_LEN {
            // Get past the header checks half of the time.
            buf[..8].copy_from_slice(&MAGIC);
            buf[8..12].copy_from_slice(&VERSION.to_le_bytes());
            buf[12..20].copy_from_slice(&(len as u64).to_le_bytes());
            reseal(&mut buf);
        }
        if let Ok(package) = decode(&buf) {
            // Random bytes that decode must be a package, byte for byte.
            assert_eq!(encode(&package).unwrap(), buf, "round {round}");
        }
    }
}

/// Whatever a mutated package decodes to encodes back to the very same bytes:
/// the decoder accepts nothing the encoder would not write.
#[test]
fn fuzz_mutated_packages_decode_canonically() {
    let valid = encode(&sample()).unwrap();
    let mut rng = XorShift(42);
    let mut accepted = 0u64;
    let n = rounds(20_000);
    for _ in 0..n {
        let mut bytes = valid.clone();
        for _ in 0..1 + rng.below(4) {
            let i = HEADER_LEN + rng.below(bytes.len() - HEADER_LEN - CRC_LEN);
            bytes[i] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                2 => bytes[i] ^ (1 << rng.below(8)),
                _ => rng.next() as u8,
            };
        }
        reseal(&mut bytes);
        if let Ok(package) = decode(&bytes) {
            accepted += 1;
            assert_eq!(encode(&package).unwrap(), bytes);
        }
    }
    // Mutations of values (memory sizes, CPU indices, image bytes) decode.
    assert!(
        accepted > n / 20,
        "only {accepted} of {n} mutated packages decoded"
    );
}
