use super::*;
use crate::config::MIB;
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
        for bits in 0..16u8 {
            let options = BootOptions {
                serial_input: bits & 1 != 0,
                bench: bits & 2 != 0,
                stop_after_ms: (bits & 4 != 0).then_some(u32::MAX),
                power_off: bits & 8 != 0,
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
    let mut v2 = bytes.clone();
    v2[8] = 2;
    assert_eq!(decode(&v2), Err(DecodeError::UnsupportedVersion(2)));
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
fn fuzz_random_bytes_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut buf = Vec::new();
    for round in 0..20_000 {
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
        let _ = decode(&buf);
    }
}

#[test]
fn fuzz_mutated_packages_never_panic() {
    let valid = encode(&sample()).unwrap();
    let mut rng = XorShift(42);
    for _ in 0..20_000 {
        let mut bytes = valid.clone();
        for _ in 0..1 + rng.below(4) {
            let i = HEADER_LEN + rng.below(bytes.len() - HEADER_LEN - CRC_LEN);
            bytes[i] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                _ => rng.next() as u8,
            };
        }
        reseal(&mut bytes);
        if let Ok(package) = decode(&bytes) {
            // Whatever decodes must encode back to the same bytes' meaning.
            assert_eq!(decode(&encode(&package).unwrap()), Ok(package));
        }
    }
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
