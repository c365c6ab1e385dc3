//! The boot package: what `boot` packs into the bootloader ramdisk and the kernel
//! reads at start, so that the kernel needs no text parser.
//!
//! A package holds the boot [`Command`] (run the VMs, run in-kernel self tests, or
//! deliberately crash to test the fault path), [`BootOptions`], the VM table
//! ([`VmSpec`]s, already validated by `boot`; the kernel re-validates them against
//! the real machine with [`crate::config::check_each`]) and the guest images.
//!
//! [`encode`] writes one, [`decode`] reads one back with images borrowed from the
//! input. Decoding checks every length and offset and never panics, whatever the
//! bytes; garbage gives a [`DecodeError`]. The decoder accepts exactly what
//! [`encode`] writes: whatever decodes encodes back to the same bytes, so a
//! package cannot hide bytes in gaps, padding or overlapping images.
//!
//! # Format (version 2)
//!
//! All integers little-endian.
//!
//! | offset | size | field                                                         |
//! |--------|------|---------------------------------------------------------------|
//! | 0      | 8    | magic `"HVPKG\0\0\x01"`                                        |
//! | 8      | 4    | format version, `u32` = 2                                      |
//! | 12     | 8    | total package length `N` in bytes, checksum included, `u64`   |
//! | 20     | ...  | body (below)                                                   |
//! | N - 4  | 4    | CRC-32 (IEEE 802.3, as zlib) of bytes `0..N-4`                 |
//!
//! Bytes after `N` are ignored: the bootloader may pad the ramdisk.
//!
//! Body, in order (`str` = `u32` byte length + UTF-8 bytes; `opt<T>` = `u8` 0
//! for none, or 1 followed by `T`):
//!
//! - command: `u8` tag: 0 = `RunVms`; 1 = `SelfTest`, then `str` filter;
//!   2 = `Crash`, then `u8` test (0 page fault, 1 breakpoint, 2 double fault)
//! - options: `u8` flags (bit 0 serial input, bit 1 bench, bit 2 stop-after
//!   present, bit 3 power off at the end, other bits zero), then `u32`
//!   stop-after in ms if bit 2 is set
//! - VM table: `u32` count, then per VM: `str` name, `u64` memory bytes,
//!   `opt<u64>` host base, `u32` CPU count + that many `u32` CPU indices,
//!   `u32` image index (the kernel's, for a kernel mode), `u32` slice in µs,
//!   `opt<u64>` entry, `opt<u64>` load address, `u8` mode (0 long64,
//!   1 real16, 2 linux, 3 protected32), `opt<u32>` initrd image index, `str`
//!   kernel command line, `u8` on reboot (0 stop, 1 restart)
//! - image table: `u32` count, then per image: `str` name, `u8` kind (0 ELF,
//!   1 flat, 2 bzImage, 3 Multiboot), `u64` offset from the start of the
//!   package, `u64` length
//! - image data: the images in table order, each at the first multiple of
//!   [`IMAGE_ALIGN`] at or after the end of the table or of the image before it,
//!   with zero bytes in between; the checksum follows the last image (or the
//!   table) directly
//!
//! Version 2 added the modes linux and protected32, the image kinds bzImage
//! and Multiboot, and each VM's initrd, command line and reboot policy;
//! version 1 packages are refused (`boot` and the kernel are built together).

use crate::config::{GuestMode, ImageInfo, ImageKind, RebootPolicy, VmSpec};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// First eight bytes of every package.
pub const MAGIC: [u8; 8] = *b"HVPKG\0\0\x01";
/// The format version this code writes and reads.
pub const VERSION: u32 = 2;
/// Images start at multiples of this offset in packages written by [`encode`].
pub const IMAGE_ALIGN: usize = 16;
/// Size of the fixed header: magic, version, total length.
const HEADER_LEN: usize = 8 + 4 + 8;
/// Size of the trailing checksum.
const CRC_LEN: usize = 4;

/// In-kernel fault tests: each makes the hypervisor itself take one exception,
/// to prove the report-and-exit path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrashTest {
    /// Touch an unmapped page.
    PageFault,
    /// Execute `int3`.
    Breakpoint,
    /// Fault while delivering a fault.
    DoubleFault,
}

impl CrashTest {
    /// Every test, in encoding order.
    pub const ALL: [CrashTest; 3] = [
        CrashTest::PageFault,
        CrashTest::Breakpoint,
        CrashTest::DoubleFault,
    ];

    /// The name used on command lines and in logs.
    pub fn name(self) -> &'static str {
        match self {
            CrashTest::PageFault => "page-fault",
            CrashTest::Breakpoint => "breakpoint",
            CrashTest::DoubleFault => "double-fault",
        }
    }

    /// The test called `name`.
    pub fn from_name(name: &str) -> Option<CrashTest> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    fn code(self) -> u8 {
        match self {
            CrashTest::PageFault => 0,
            CrashTest::Breakpoint => 1,
            CrashTest::DoubleFault => 2,
        }
    }
}

/// What the kernel does after it has booted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Start the VMs of the VM table.
    RunVms,
    /// Run the in-kernel test cases whose names contain `filter` (empty: all).
    SelfTest {
        /// Substring of the test-case names to run.
        filter: String,
    },
    /// Deliberately take an exception in the hypervisor.
    Crash(CrashTest),
}

/// Switches for one boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootOptions {
    /// Read key presses from the serial console (interactive runs); off for
    /// scripted runs, whose serial input is not a keyboard.
    pub serial_input: bool,
    /// Shut down after this many milliseconds; `None` runs until stopped.
    pub stop_after_ms: Option<u32>,
    /// Measure and report benchmark figures.
    pub bench: bool,
    /// Power the machine off at the end (emulators, tests); off for images
    /// meant for a real machine, whose screen should keep the final report.
    pub power_off: bool,
    /// Serve the control protocol (issue 11): requests on COM2 and typed
    /// commands on the console; CPUs keep serving their mailboxes when their
    /// VMs have stopped, until a `shutdown` (or `q`, or `stop_after_ms`).
    pub control: bool,
}

const OPT_SERIAL_INPUT: u8 = 1 << 0;
const OPT_BENCH: u8 = 1 << 1;
const OPT_STOP_AFTER: u8 = 1 << 2;
const OPT_POWER_OFF: u8 = 1 << 3;
const OPT_CONTROL: u8 = 1 << 4;
const OPT_KNOWN: u8 = OPT_SERIAL_INPUT | OPT_BENCH | OPT_STOP_AFTER | OPT_POWER_OFF | OPT_CONTROL;

/// One guest image of a package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image<'a> {
    /// The name the configuration referred to it by.
    pub name: &'a str,
    /// ELF, flat, bzImage or Multiboot.
    pub kind: ImageKind,
    /// The image file's bytes.
    pub data: &'a [u8],
}

impl<'a> Image<'a> {
    /// What validation needs to know about this image.
    pub fn info(&self) -> ImageInfo<'a> {
        ImageInfo {
            name: self.name,
            kind: self.kind,
            data: self.data,
        }
    }
}

/// A whole boot package: what [`encode`] writes and [`decode`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package<'a> {
    /// What to do.
    pub command: Command,
    /// How to do it.
    pub options: BootOptions,
    /// The VMs; each `image` indexes `images`.
    pub vms: Vec<VmSpec>,
    /// The guest images.
    pub images: Vec<Image<'a>>,
}

impl<'a> Package<'a> {
    /// The image table as [`crate::config::validate`] and
    /// [`crate::config::check_each`] take it.
    pub fn image_infos(&self) -> Vec<ImageInfo<'a>> {
        self.images.iter().map(Image::info).collect()
    }
}

/// Why a package could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// A count or string length does not fit the format's `u32`.
    TooLong {
        /// What was too long.
        what: &'static str,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLong { what } => {
                write!(f, "{what} is too long for the boot package format")
            }
        }
    }
}

/// Why bytes are not a valid package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The input does not start with [`MAGIC`].
    BadMagic,
    /// A format version this kernel does not read.
    UnsupportedVersion(u32),
    /// The declared length is too small to hold a package.
    BadLength {
        /// The declared total length.
        declared: u64,
    },
    /// The input ends before the field at this offset does.
    Truncated {
        /// Offset of the field that did not fit.
        at: usize,
    },
    /// The checksum does not match the contents.
    BadChecksum {
        /// Checksum stored in the package.
        stored: u32,
        /// Checksum of the contents.
        computed: u32,
    },
    /// The string at this offset is not UTF-8.
    BadUtf8 {
        /// Offset of the string's bytes.
        at: usize,
    },
    /// A field holds a value that names nothing.
    BadEnum {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// An image's bytes are not inside the data area.
    ImageOutOfBounds {
        /// Position of the image in the image table.
        index: usize,
    },
    /// An image inside the data area, but not where the format puts it.
    ImageMisplaced {
        /// Position of the image in the image table.
        index: usize,
        /// The offset it must have.
        expected: usize,
    },
    /// A padding byte before an image is not zero.
    NonZeroPadding {
        /// Offset of the byte.
        at: usize,
    },
    /// Bytes between the last image (or the table) and the checksum.
    TrailingBytes {
        /// Offset of the first one.
        at: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadMagic => write!(f, "not a boot package (bad magic)"),
            DecodeError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "boot package version {v} is not supported (expected {VERSION})"
                )
            }
            DecodeError::BadLength { declared } => {
                write!(f, "declared package length {declared} is impossible")
            }
            DecodeError::Truncated { at } => write!(f, "boot package truncated at byte {at}"),
            DecodeError::BadChecksum { stored, computed } => write!(
                f,
                "boot package checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            DecodeError::BadUtf8 { at } => write!(f, "string at byte {at} is not UTF-8"),
            DecodeError::BadEnum { field, value } => write!(f, "{field}: invalid value {value}"),
            DecodeError::ImageOutOfBounds { index } => {
                write!(f, "image #{index} lies outside the image data")
            }
            DecodeError::ImageMisplaced { index, expected } => {
                write!(f, "image #{index} does not start at offset {expected}")
            }
            DecodeError::NonZeroPadding { at } => {
                write!(f, "padding byte at {at} is not zero")
            }
            DecodeError::TrailingBytes { at } => {
                write!(f, "unused bytes from {at} up to the checksum")
            }
        }
    }
}

/// CRC-32 as used by Ethernet, zlib and PNG (reflected polynomial 0xEDB88320).
pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &b| {
        CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// Byte-at-a-time lookup table, computed by the compiler from the polynomial.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The code of `value` in the format: its position in `all` (the type's
/// `ALL`, "in encoding order").
fn code_of<T: PartialEq + Copy>(all: &[T], value: T) -> u8 {
    all.iter().position(|&v| v == value).unwrap_or(0) as u8
}

/// The value of `code` (see [`code_of`]), or a `BadEnum` naming `field`.
fn from_code<T: Copy>(all: &[T], code: u8, field: &'static str) -> Result<T, DecodeError> {
    all.get(usize::from(code))
        .copied()
        .ok_or(DecodeError::BadEnum {
            field,
            value: code.into(),
        })
}

/// Writes `package` in the boot package format.
pub fn encode(package: &Package<'_>) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer { out: Vec::new() };
    w.out.extend_from_slice(&MAGIC);
    w.u32(VERSION);
    w.u64(0); // total length, patched below
    match &package.command {
        Command::RunVms => w.u8(0),
        Command::SelfTest { filter } => {
            w.u8(1);
            w.str(filter, "self-test filter")?;
        }
        Command::Crash(test) => {
            w.u8(2);
            w.u8(test.code());
        }
    }
    let o = &package.options;
    let flags = (if o.serial_input { OPT_SERIAL_INPUT } else { 0 })
        | (if o.bench { OPT_BENCH } else { 0 })
        | (if o.power_off { OPT_POWER_OFF } else { 0 })
        | (if o.control { OPT_CONTROL } else { 0 })
        | (if o.stop_after_ms.is_some() {
            OPT_STOP_AFTER
        } else {
            0
        });
    w.u8(flags);
    if let Some(ms) = o.stop_after_ms {
        w.u32(ms);
    }
    w.count(package.vms.len(), "VM table")?;
    for vm in &package.vms {
        w.str(&vm.name, "VM name")?;
        w.u64(vm.memory_bytes);
        w.opt_u64(vm.host_base);
        w.count(vm.cpus.len(), "CPU list")?;
        for &cpu in &vm.cpus {
            w.u32(cpu);
        }
        w.u32(vm.image);
        w.u32(vm.slice_us);
        w.opt_u64(vm.entry);
        w.opt_u64(vm.load_addr);
        w.u8(code_of(&GuestMode::ALL, vm.mode));
        w.opt_u32(vm.initrd);
        w.str(&vm.cmdline, "kernel command line")?;
        w.u8(code_of(&RebootPolicy::ALL, vm.on_reboot));
    }
    w.count(package.images.len(), "image table")?;
    // The table has a known size, so image offsets can be written in one pass.
    let table_len: usize = package
        .images
        .iter()
        .map(|i| 4 + i.name.len() + 1 + 8 + 8)
        .sum();
    let mut offset = w.out.len() + table_len;
    for image in &package.images {
        offset = offset.next_multiple_of(IMAGE_ALIGN);
        w.str(image.name, "image name")?;
        w.u8(code_of(&ImageKind::ALL, image.kind));
        w.u64(offset as u64);
        w.u64(image.data.len() as u64);
        offset += image.data.len();
    }
    for image in &package.images {
        w.out.resize(w.out.len().next_multiple_of(IMAGE_ALIGN), 0);
        w.out.extend_from_slice(image.data);
    }
    let total = (w.out.len() + CRC_LEN) as u64;
    w.out[12..HEADER_LEN].copy_from_slice(&total.to_le_bytes());
    let crc = crc32(&w.out);
    w.u32(crc);
    Ok(w.out)
}

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn count(&mut self, n: usize, what: &'static str) -> Result<(), EncodeError> {
        self.u32(u32::try_from(n).map_err(|_| EncodeError::TooLong { what })?);
        Ok(())
    }
    fn str(&mut self, s: &str, what: &'static str) -> Result<(), EncodeError> {
        self.count(s.len(), what)?;
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
        }
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u32(v);
            }
        }
    }
}

/// Reads a package. `bytes` may extend past the package (ramdisk padding); images
/// borrow from it.
pub fn decode(bytes: &[u8]) -> Result<Package<'_>, DecodeError> {
    if bytes.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(bytes) {
            DecodeError::Truncated { at: bytes.len() }
        } else {
            DecodeError::BadMagic
        });
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let mut header = Reader {
        bytes,
        pos: MAGIC.len(),
    };
    let version = header.u32()?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let declared = header.u64()?;
    let total = usize::try_from(declared)
        .ok()
        .filter(|&n| n >= HEADER_LEN + CRC_LEN)
        .ok_or(DecodeError::BadLength { declared })?;
    if total > bytes.len() {
        return Err(DecodeError::Truncated { at: bytes.len() });
    }
    let crc_at = total - CRC_LEN;
    let stored = u32::from_le_bytes([
        bytes[crc_at],
        bytes[crc_at + 1],
        bytes[crc_at + 2],
        bytes[crc_at + 3],
    ]);
    let computed = crc32(&bytes[..crc_at]);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }

    let mut r = Reader {
        bytes: &bytes[..crc_at],
        pos: HEADER_LEN,
    };
    let command = match r.u8()? {
        0 => Command::RunVms,
        1 => Command::SelfTest {
            filter: String::from(r.str()?),
        },
        2 => {
            let code = r.u8()?;
            let test = CrashTest::ALL
                .into_iter()
                .find(|t| t.code() == code)
                .ok_or(DecodeError::BadEnum {
                    field: "crash test",
                    value: code.into(),
                })?;
            Command::Crash(test)
        }
        tag => {
            return Err(DecodeError::BadEnum {
                field: "command",
                value: tag.into(),
            })
        }
    };
    let flags = r.u8()?;
    if flags & !OPT_KNOWN != 0 {
        return Err(DecodeError::BadEnum {
            field: "option flags",
            value: flags.into(),
        });
    }
    let options = BootOptions {
        serial_input: flags & OPT_SERIAL_INPUT != 0,
        bench: flags & OPT_BENCH != 0,
        power_off: flags & OPT_POWER_OFF != 0,
        control: flags & OPT_CONTROL != 0,
        stop_after_ms: if flags & OPT_STOP_AFTER != 0 {
            Some(r.u32()?)
        } else {
            None
        },
    };

    // Counts are not trusted for preallocation: every element consumes input, so
    // a huge count just runs into `Truncated`.
    let vm_count = r.u32()?;
    let mut vms = Vec::new();
    for _ in 0..vm_count {
        let name = String::from(r.str()?);
        let memory_bytes = r.u64()?;
        let host_base = r.opt_u64("VM host base")?;
        let cpu_count = r.u32()?;
        let mut cpus = Vec::new();
        for _ in 0..cpu_count {
            cpus.push(r.u32()?);
        }
        let image = r.u32()?;
        let slice_us = r.u32()?;
        let entry = r.opt_u64("VM entry")?;
        let load_addr = r.opt_u64("VM load address")?;
        let mode = from_code(&GuestMode::ALL, r.u8()?, "VM mode")?;
        let initrd = r.opt_u32("VM initrd")?;
        let cmdline = String::from(r.str()?);
        let on_reboot = from_code(&RebootPolicy::ALL, r.u8()?, "VM reboot policy")?;
        vms.push(VmSpec {
            name,
            memory_bytes,
            host_base,
            cpus,
            image,
            slice_us,
            entry,
            load_addr,
            mode,
            initrd,
            cmdline,
            on_reboot,
        });
    }

    let image_count = r.u32()?;
    let mut table = Vec::new();
    for _ in 0..image_count {
        let name = r.str()?;
        let kind = from_code(&ImageKind::ALL, r.u8()?, "image kind")?;
        let offset = r.u64()?;
        let len = r.u64()?;
        table.push((name, kind, offset, len));
    }
    // The data area: each image at the next aligned offset, zeros between.
    let data_start = r.pos;
    let mut pos = data_start;
    let mut images = Vec::new();
    for (index, (name, kind, offset, len)) in table.into_iter().enumerate() {
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?))
            .filter(|range| range.start >= data_start && range.end <= crc_at)
            .ok_or(DecodeError::ImageOutOfBounds { index })?;
        let expected = pos.next_multiple_of(IMAGE_ALIGN);
        if range.start != expected {
            return Err(DecodeError::ImageMisplaced { index, expected });
        }
        if let Some(at) = (pos..expected).find(|&at| bytes[at] != 0) {
            return Err(DecodeError::NonZeroPadding { at });
        }
        pos = range.end;
        images.push(Image {
            name,
            kind,
            data: &bytes[range],
        });
    }
    if pos != crc_at {
        return Err(DecodeError::TrailingBytes { at: pos });
    }
    Ok(Package {
        command,
        options,
        vms,
        images,
    })
}

/// A cursor over the input that returns `Truncated` instead of reading past it.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let end = at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated { at })?;
        self.pos = end;
        Ok(&self.bytes[at..end])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len_at = self.pos;
        let len =
            usize::try_from(self.u32()?).map_err(|_| DecodeError::Truncated { at: len_at })?;
        let at = self.pos;
        core::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::BadUtf8 { at })
    }
    fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.u64()?)),
            v => Err(DecodeError::BadEnum {
                field,
                value: v.into(),
            }),
        }
    }
    fn opt_u32(&mut self, field: &'static str) -> Result<Option<u32>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.u32()?)),
            v => Err(DecodeError::BadEnum {
                field,
                value: v.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
