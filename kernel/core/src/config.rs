//! VM configuration: what a VM is, and the rules a set of VMs must obey.
//!
//! A [`VmSpec`] is the declarative description of one VM: its name, how much
//! memory it gets (and optionally exactly where in host-physical memory, in the
//! style of Jailhouse cells), which physical CPUs it may run on, which guest image
//! it boots, its scheduler time slice and how it is entered.
//!
//! The same rules run twice:
//! - on the host, in `boot`, right after the TOML file is parsed, so that a user
//!   sees every mistake at once with the VM and the field named
//!   ([`validate`], with limits it knows, usually none or just a CPU count);
//! - in the kernel, against the real machine ([`check_each`] with the CPU count
//!   and the usable memory map). There each VM is judged on its own: the kernel
//!   starts the VMs that pass and refuses the others, never a VM half-configured.
//!
//! Conflicts between two VMs (same name, overlapping fixed host memory) are charged
//! to the later VM in the table, so the earlier one can still start. The memory
//! budget is admitted greedily in table order: a VM whose memory would take the
//! VMs accepted before it past the usable total is refused.
//!
//! Images are judged by the loader itself ([`crate::image::segments`]): an ELF
//! image the kernel could not load, a segment outside the VM's memory or in the
//! range the hypervisor writes a 64-bit guest's boot structures into
//! ([`crate::layout::reserved_for`]), or an entry point outside a loaded segment
//! is refused here, on the host as in the kernel.
//!
//! Kernels (a VM whose [`GuestMode`] is [`GuestMode::Linux64`] or
//! [`GuestMode::Protected32`], configured with `kernel =` instead of
//! `image =`) are judged the same way, by the boot-protocol loaders that will
//! boot them: [`crate::boot_proto::linux::plan`] with the initrd and command
//! line, or [`crate::boot_proto::multiboot::plan`]. A kernel that is neither a
//! bzImage nor a Multiboot kernel, a boot protocol too old, a kernel or initrd
//! that does not fit the VM's memory, or a command line the kernel would not
//! take is refused here, again on the host as in the kernel.
//!
//! Addresses here are plain `u64`s whose field names say which address space they
//! are in: `host_base` is host-physical, `load_addr` and `entry` are
//! guest-physical (guests start with an identity mapping, so a 64-bit entry point
//! is the same number).
//!
//! The checks take time linear in the size of the table (a CPU list is checked
//! with a bitmap, names with an ordered map), so a hostile table costs little.
//!
//! Everything here is pure and `no_std` + `alloc`; errors are typed and render as
//! messages such as `vm "web": memory: 3 MiB is not a multiple of 2 MiB`. Names
//! in messages are shown through [`Escaped`], so a name that is not valid cannot
//! drive the terminal it is printed on.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::boot_proto::linux::{self, LinuxError};
use crate::boot_proto::multiboot::{self, MultibootError};
use crate::image::{self, ImageError};
use crate::layout;
use crate::text::Escaped;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;
/// Guest memory is mapped with 2 MiB pages: sizes and fixed bases are multiples.
pub const MEMORY_ALIGN: u64 = 2 * MIB;
/// The smallest VM: one 2 MiB page.
pub const MIN_MEMORY: u64 = 2 * MIB;
/// The most VMs one configuration may describe.
pub const MAX_VMS: usize = 16;
/// CPU indices must be below this even when the machine's CPU count is unknown.
pub const MAX_CPUS: u32 = 256;
/// The longest VM name, in bytes.
pub const MAX_NAME_LEN: usize = 32;
/// The longest scheduler time slice: one second.
pub const MAX_SLICE_US: u32 = 1_000_000;
/// A real16 guest's entry point must be below this (1 MiB, 0x100000): the
/// vCPU starts at CS:IP with CS = (entry >> 4) & 0xF000 and IP = entry - CS * 16
/// (see [`real_mode_cs_ip`]), which reaches only the first mebibyte.
pub const REAL_MODE_LIMIT: u64 = MIB;
/// The longest kernel command line, in bytes (without the NUL the loaders
/// add); a kernel's own limit (Linux's `cmdline_size`) may be lower.
pub const MAX_CMDLINE_LEN: usize = 4095;

/// Where a real16 guest entered at `entry` starts: `(CS, IP)` with
/// CS = (entry >> 4) & 0xF000 and IP = entry - CS * 16; `None` when `entry`
/// is not below [`REAL_MODE_LIMIT`].
pub fn real_mode_cs_ip(entry: u64) -> Option<(u16, u16)> {
    if entry >= REAL_MODE_LIMIT {
        return None;
    }
    let cs = ((entry >> 4) & 0xF000) as u16;
    let ip = (entry - u64::from(cs) * 16) as u16;
    Some((cs, ip))
}

/// How the vCPU is set up when the VM starts.
///
/// `Long64` and `Real16` start an image (`image =` in the configuration; the
/// `mode` key picks one). `Linux64` and `Protected32` start a kernel through
/// its boot protocol (`kernel =`); they follow from the kernel's format and
/// are never written in a configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestMode {
    /// 64-bit long mode with identity-mapped paging (the project's own guests).
    Long64,
    /// 16-bit real mode, as after reset (flat binaries such as boot sectors).
    Real16,
    /// The 64-bit Linux boot protocol ([`crate::boot_proto::linux`]): a
    /// bzImage entered at its 64-bit entry point in long mode with an
    /// identity map, RSI = the zero page.
    Linux64,
    /// Multiboot 1 ([`crate::boot_proto::multiboot`]): 32-bit protected mode
    /// with paging off, EAX = the boot loader magic, EBX = the information
    /// structure.
    Protected32,
}

impl GuestMode {
    /// Every mode, in encoding order.
    pub const ALL: [GuestMode; 4] = [
        GuestMode::Long64,
        GuestMode::Real16,
        GuestMode::Linux64,
        GuestMode::Protected32,
    ];

    /// The name used in configuration files and messages.
    pub fn name(self) -> &'static str {
        match self {
            GuestMode::Long64 => "long64",
            GuestMode::Real16 => "real16",
            GuestMode::Linux64 => "linux",
            GuestMode::Protected32 => "protected32",
        }
    }

    /// The mode called `name` (see [`GuestMode::name`]).
    pub fn from_name(name: &str) -> Option<GuestMode> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether the VM boots a kernel through its boot protocol (`kernel =`)
    /// rather than an image (`image =`).
    pub fn is_kernel(self) -> bool {
        self.kernel_kind().is_some()
    }

    /// The kind of kernel a VM in this mode boots: a bzImage for `Linux64`,
    /// a Multiboot kernel for `Protected32`; `None` for image modes.
    pub fn kernel_kind(self) -> Option<ImageKind> {
        match self {
            GuestMode::Linux64 => Some(ImageKind::BzImage),
            GuestMode::Protected32 => Some(ImageKind::Multiboot),
            GuestMode::Long64 | GuestMode::Real16 => None,
        }
    }
}

/// What a VM does when its guest resets the machine (a triple fault: Linux's
/// `reboot` with `reboot=t`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RebootPolicy {
    /// Stop the VM with a report (the default for images).
    #[default]
    Stop,
    /// Load the VM's image or kernel afresh and start it again (the default
    /// for kernels).
    Restart,
}

impl RebootPolicy {
    /// Every policy, in encoding order.
    pub const ALL: [RebootPolicy; 2] = [RebootPolicy::Stop, RebootPolicy::Restart];

    /// The name used in configuration files (`on_reboot = "..."`).
    pub fn name(self) -> &'static str {
        match self {
            RebootPolicy::Stop => "stop",
            RebootPolicy::Restart => "restart",
        }
    }

    /// The policy called `name`.
    pub fn from_name(name: &str) -> Option<RebootPolicy> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The policy of a VM in `mode` whose configuration does not say:
    /// `Restart` for kernels (a reboot of an operating system starts it
    /// again, as on a real machine), `Stop` for images (a triple fault of a
    /// test guest is a failure to report).
    pub fn default_for(mode: GuestMode) -> RebootPolicy {
        if mode.is_kernel() {
            RebootPolicy::Restart
        } else {
            RebootPolicy::Stop
        }
    }
}

/// What a guest image file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// An ELF64 executable: segments load where its program headers say.
    Elf,
    /// Raw bytes copied to the VM's `load_addr` (also every initrd).
    Flat,
    /// A Linux bzImage ("HdrS" at 0x202), booted by
    /// [`crate::boot_proto::linux`].
    BzImage,
    /// A Multiboot 1 kernel (a Multiboot header in the first 8 KiB; ELF32 or
    /// the a.out kludge), booted by [`crate::boot_proto::multiboot`].
    Multiboot,
}

impl ImageKind {
    /// Every kind, in encoding order.
    pub const ALL: [ImageKind; 4] = [
        ImageKind::Elf,
        ImageKind::Flat,
        ImageKind::BzImage,
        ImageKind::Multiboot,
    ];

    /// The kind of a file named by `image =`, judged by its bytes, first
    /// match wins: "HdrS" at 0x202 is a bzImage; the ELF magic an ELF image
    /// (whether or not it has a Multiboot header: as an image it loads as
    /// ELF64); a Multiboot header (magic and checksum) in the first 8 KiB a
    /// Multiboot kernel; anything else a flat image. A bzImage or Multiboot
    /// kernel named by `image =` is refused with a hint to use `kernel =`.
    pub fn detect(data: &[u8]) -> ImageKind {
        if is_bzimage(data) {
            ImageKind::BzImage
        } else if data.starts_with(b"\x7fELF") {
            ImageKind::Elf
        } else if has_multiboot_header(data) {
            ImageKind::Multiboot
        } else {
            ImageKind::Flat
        }
    }

    /// The kind of a file named by `kernel =`: a bzImage ("HdrS" at 0x202,
    /// checked first), else a Multiboot kernel (a Multiboot header in the
    /// first 8 KiB, an ELF32 file included), else `None`: not a kernel this
    /// hypervisor boots.
    pub fn detect_kernel(data: &[u8]) -> Option<ImageKind> {
        if is_bzimage(data) {
            Some(ImageKind::BzImage)
        } else if has_multiboot_header(data) {
            Some(ImageKind::Multiboot)
        } else {
            None
        }
    }

    /// The mode a kernel of this kind starts in: `Linux64` for a bzImage,
    /// `Protected32` for a Multiboot kernel; `None` for images.
    pub fn kernel_mode(self) -> Option<GuestMode> {
        match self {
            ImageKind::BzImage => Some(GuestMode::Linux64),
            ImageKind::Multiboot => Some(GuestMode::Protected32),
            ImageKind::Elf | ImageKind::Flat => None,
        }
    }

    /// A short lowercase name for messages.
    pub fn name(self) -> &'static str {
        match self {
            ImageKind::Elf => "elf",
            ImageKind::Flat => "flat",
            ImageKind::BzImage => "bzimage",
            ImageKind::Multiboot => "multiboot",
        }
    }

    /// What the kind is, in words, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ImageKind::Elf => "an ELF image",
            ImageKind::Flat => "a flat image",
            ImageKind::BzImage => "a Linux bzImage",
            ImageKind::Multiboot => "a Multiboot kernel",
        }
    }
}

/// "HdrS" at 0x202: the Linux boot protocol's setup header magic.
fn is_bzimage(data: &[u8]) -> bool {
    data.get(0x202..0x206) == Some(b"HdrS".as_slice())
}

/// A Multiboot header (magic with a valid checksum) in the first 8 KiB,
/// whether or not this loader supports what it asks for.
fn has_multiboot_header(data: &[u8]) -> bool {
    !matches!(multiboot::find_header(data), Err(MultibootError::NoHeader))
}

/// One VM as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// Unique name: letters, digits, `-`, `_`, `.`; at most [`MAX_NAME_LEN`] bytes.
    pub name: String,
    /// Guest memory size in bytes, a multiple of [`MEMORY_ALIGN`].
    pub memory_bytes: u64,
    /// Fixed host-physical base of the guest memory; `None` lets the kernel choose.
    pub host_base: Option<u64>,
    /// One vCPU per entry: vCPU i runs on physical CPU `cpus[i]` (0 = the
    /// boot CPU); not empty, no CPU twice.
    pub cpus: Vec<u32>,
    /// Index into the package's image table: the image (`image =`), or for
    /// a kernel mode ([`GuestMode::is_kernel`]) the kernel (`kernel =`).
    pub image: u32,
    /// Scheduler time slice in microseconds, 1 ..= [`MAX_SLICE_US`].
    pub slice_us: u32,
    /// Guest-physical entry point; `None` means the ELF entry, or `load_addr`
    /// for a flat image.
    pub entry: Option<u64>,
    /// Guest-physical address a flat image is copied to (required for flat
    /// images, refused for ELF images).
    pub load_addr: Option<u64>,
    /// How the vCPU starts; for a kernel, the mode its format implies
    /// ([`ImageKind::kernel_mode`]).
    pub mode: GuestMode,
    /// Index into the package's image table of the initrd (`Linux64` only).
    pub initrd: Option<u32>,
    /// The kernel command line (kernel modes only; empty otherwise): at most
    /// [`MAX_CMDLINE_LEN`] bytes, no control characters.
    pub cmdline: String,
    /// What happens when the guest resets the machine.
    pub on_reboot: RebootPolicy,
}

impl VmSpec {
    /// Where a flat image starts executing: `entry`, else `load_addr`.
    pub fn flat_entry(&self) -> Option<u64> {
        self.entry.or(self.load_addr)
    }

    /// The host-physical range of fixed guest memory, if placed and not overflowing.
    pub fn host_range(&self) -> Option<HostRange> {
        let start = self.host_base?;
        let end = start.checked_add(self.memory_bytes)?;
        Some(HostRange { start, end })
    }
}

/// What validation needs to know about one image of the package: everything,
/// since the image is checked by the loader that will load it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo<'a> {
    /// The image's name (the reference used in the configuration file).
    pub name: &'a str,
    /// ELF, flat, bzImage or Multiboot.
    pub kind: ImageKind,
    /// The image's bytes, exactly as packed.
    pub data: &'a [u8],
}

impl ImageInfo<'_> {
    /// Size of the image in bytes.
    pub fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// Whether the image has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A half-open host-physical range `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl HostRange {
    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, other: &HostRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn contains(&self, other: &HostRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

impl fmt::Display for HostRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..{:#x}", self.start, self.end)
    }
}

/// Host-physical memory VMs may be given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Total bytes available for all guest memory together.
    pub usable_bytes: u64,
    /// Ranges a fixed `host_base` placement must fall inside (each VM's memory
    /// entirely inside one range).
    pub usable_ranges: Vec<HostRange>,
}

impl MemoryLimits {
    /// Limits whose budget is the sum of `ranges`.
    pub fn from_ranges(ranges: Vec<HostRange>) -> MemoryLimits {
        let usable_bytes = ranges.iter().fold(0u64, |sum, r| {
            sum.saturating_add(r.end.saturating_sub(r.start))
        });
        MemoryLimits {
            usable_bytes,
            usable_ranges: ranges,
        }
    }
}

/// What is known about the machine the VMs will run on. On the host usually
/// nothing, or just a CPU count; in the kernel, everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineLimits {
    /// Number of CPUs, if known; valid indices are `0..cpu_count`.
    pub cpu_count: Option<u32>,
    /// Memory available to VMs, if known.
    pub memory: Option<MemoryLimits>,
}

impl MachineLimits {
    /// Nothing known: only the machine-independent rules apply.
    pub const UNKNOWN: MachineLimits = MachineLimits {
        cpu_count: None,
        memory: None,
    };
}

/// A byte count shown in the largest binary unit that divides it exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b != 0 && b.is_multiple_of(GIB) {
            write!(f, "{} GiB", b / GIB)
        } else if b != 0 && b.is_multiple_of(MIB) {
            write!(f, "{} MiB", b / MIB)
        } else if b != 0 && b.is_multiple_of(1024) {
            write!(f, "{} KiB", b / 1024)
        } else {
            write!(f, "{b} bytes")
        }
    }
}

/// A duration in microseconds shown in the largest unit that divides it exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Micros(pub u32);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        if us != 0 && us.is_multiple_of(1_000_000) {
            write!(f, "{} s", us / 1_000_000)
        } else if us != 0 && us.is_multiple_of(1000) {
            write!(f, "{} ms", us / 1000)
        } else {
            write!(f, "{us} us")
        }
    }
}

/// The configuration field a problem is about, named as in the TOML file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// `name`
    Name,
    /// `memory`
    Memory,
    /// `host_base`
    HostBase,
    /// `cpus`
    Cpus,
    /// `image`
    Image,
    /// `slice_ms` / `slice_us`
    Slice,
    /// `entry`
    Entry,
    /// `load_addr`
    LoadAddr,
    /// `mode`
    Mode,
    /// `kernel`
    Kernel,
    /// `initrd`
    Initrd,
    /// `cmdline`
    Cmdline,
}

impl Field {
    /// The key as written in the configuration file.
    pub fn key(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Memory => "memory",
            Field::HostBase => "host_base",
            Field::Cpus => "cpus",
            Field::Image => "image",
            Field::Slice => "slice",
            Field::Entry => "entry",
            Field::LoadAddr => "load_addr",
            Field::Mode => "mode",
            Field::Kernel => "kernel",
            Field::Initrd => "initrd",
            Field::Cmdline => "cmdline",
        }
    }
}

/// What is wrong with one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// There are more than [`MAX_VMS`] VMs and this is one past the limit.
    TooManyVms,
    /// The name is empty.
    NameEmpty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    NameTooLong { len: usize },
    /// The name contains a character other than letters, digits, `-`, `_`, `.`.
    NameBadChar { ch: char },
    /// An earlier VM (by index) has the same name.
    NameDuplicate { first: usize },
    /// Memory size zero.
    MemoryZero,
    /// Memory below [`MIN_MEMORY`].
    MemoryTooSmall { bytes: u64 },
    /// Memory not a multiple of [`MEMORY_ALIGN`].
    MemoryUnaligned { bytes: u64 },
    /// Memory larger than all usable memory of the machine.
    MemoryExceedsMachine { bytes: u64, usable: u64 },
    /// Memory would take the VMs accepted so far past the usable total.
    MemoryBudget { bytes: u64, used: u64, usable: u64 },
    /// `host_base` not a multiple of [`MEMORY_ALIGN`].
    HostBaseUnaligned { base: u64 },
    /// `host_base + memory` does not fit in 64 bits.
    HostRangeOverflow { base: u64 },
    /// The fixed range is not inside one usable memory range.
    HostRangeUnusable { range: HostRange },
    /// The fixed range overlaps an earlier VM's fixed range.
    HostOverlap {
        range: HostRange,
        other: usize,
        other_name: String,
        other_range: HostRange,
    },
    /// No CPU given.
    NoCpus,
    /// More CPUs listed than there can be distinct valid indices.
    TooManyCpus { count: usize },
    /// A CPU index at or above the machine's CPU count.
    CpuMissing { cpu: u32, count: u32 },
    /// A CPU index at or above [`MAX_CPUS`].
    CpuBeyondMax { cpu: u32 },
    /// A CPU listed more than once.
    CpuRepeated { cpu: u32 },
    /// The image index is not in the image table.
    ImageMissing { index: u32, count: usize },
    /// A flat image larger than the VM's memory.
    ImageTooLarge { len: u64, memory: u64 },
    /// A flat image placed so that it ends past the VM's memory.
    ImageOutsideMemory {
        load_addr: u64,
        len: u64,
        memory: u64,
    },
    /// The loader refuses the image (or, when `error.is_about_entry()`, its
    /// entry point).
    ImageInvalid { image: String, error: ImageError },
    /// An ELF segment overlaps the range the hypervisor writes boot
    /// structures into ([`layout::reserved_for`]).
    SegmentInReserved { start: u64, end: u64 },
    /// A flat image placed over the range the hypervisor writes boot
    /// structures into.
    LoadInReserved { start: u64, end: u64 },
    /// The entry point lies in the range the hypervisor writes boot
    /// structures into.
    EntryInReserved { entry: u64 },
    /// A flat image without `load_addr`.
    FlatWithoutLoadAddr,
    /// `load_addr` given for an ELF image.
    LoadAddrWithElf,
    /// Slice zero.
    SliceZero,
    /// Slice above [`MAX_SLICE_US`].
    SliceTooLong { us: u32 },
    /// The entry point is not inside guest memory.
    EntryOutsideMemory { entry: u64, memory: u64 },
    /// Real mode with an ELF image.
    RealModeNeedsFlat,
    /// Real mode starting at or above [`REAL_MODE_LIMIT`] (0x100000).
    RealModeEntryTooHigh { entry: u64 },
    /// An image (`image =`) that is a kernel: boot it with `kernel =`.
    KernelAsImage { image: String, kind: ImageKind },
    /// The kernel index is not in the image table.
    KernelMissing { index: u32, count: usize },
    /// A kernel (`kernel =`) that is neither a bzImage nor a Multiboot kernel.
    NotAKernel { image: String },
    /// A kernel whose format is not the one the VM's mode boots (only in a
    /// package not written by `boot`).
    KernelModeMismatch { mode: GuestMode, kind: ImageKind },
    /// The boot-protocol loader refuses the kernel, its initrd or its
    /// command line (`image` names the kernel, or the initrd when the error
    /// is about it).
    KernelInvalid { image: String, error: KernelError },
    /// `entry` given for a kernel.
    EntryWithKernel,
    /// `load_addr` given for a kernel.
    LoadAddrWithKernel,
    /// The initrd index is not in the image table.
    InitrdMissing { index: u32, count: usize },
    /// An initrd of zero bytes.
    InitrdEmpty { image: String },
    /// An initrd for an image (`image =`).
    InitrdWithImage,
    /// An initrd for a Multiboot kernel.
    InitrdWithMultiboot,
    /// A command line for an image (`image =`).
    CmdlineWithImage,
    /// A command line longer than [`MAX_CMDLINE_LEN`].
    CmdlineTooLong { len: usize },
    /// A control character (NUL included) in the command line.
    CmdlineBadChar { at: usize, ch: char },
}

/// Why a boot-protocol loader refuses a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// [`linux::plan`] refuses the bzImage, initrd or command line.
    Linux(LinuxError),
    /// [`multiboot::plan`] refuses the kernel or command line.
    Multiboot(MultibootError),
}

impl KernelError {
    /// The configuration field the error is about: `initrd` when the initrd
    /// does not fit, `cmdline` for the command line, otherwise `kernel`.
    pub fn field(&self) -> Field {
        match self {
            KernelError::Linux(LinuxError::InitrdDoesNotFit { .. }) => Field::Initrd,
            KernelError::Linux(
                LinuxError::CmdlineTooLong { .. } | LinuxError::CmdlineHasNul { .. },
            )
            | KernelError::Multiboot(
                MultibootError::CmdlineTooLong { .. } | MultibootError::CmdlineHasNul { .. },
            ) => Field::Cmdline,
            _ => Field::Kernel,
        }
    }
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Linux(e) => e.fmt(f),
            KernelError::Multiboot(e) => e.fmt(f),
        }
    }
}

impl Problem {
    /// The field this problem is about; `None` for the VM as a whole.
    pub fn field(&self) -> Option<Field> {
        use Problem::*;
        Some(match self {
            TooManyVms => return None,
            NameEmpty | NameTooLong { .. } | NameBadChar { .. } | NameDuplicate { .. } => {
                Field::Name
            }
            MemoryZero
            | MemoryTooSmall { .. }
            | MemoryUnaligned { .. }
            | MemoryExceedsMachine { .. }
            | MemoryBudget { .. } => Field::Memory,
            HostBaseUnaligned { .. }
            | HostRangeOverflow { .. }
            | HostRangeUnusable { .. }
            | HostOverlap { .. } => Field::HostBase,
            NoCpus
            | TooManyCpus { .. }
            | CpuMissing { .. }
            | CpuBeyondMax { .. }
            | CpuRepeated { .. } => Field::Cpus,
            ImageInvalid { error, .. } if error.is_about_entry() => Field::Entry,
            ImageMissing { .. }
            | ImageTooLarge { .. }
            | ImageInvalid { .. }
            | SegmentInReserved { .. } => Field::Image,
            ImageOutsideMemory { .. }
            | FlatWithoutLoadAddr
            | LoadAddrWithElf
            | LoadInReserved { .. } => Field::LoadAddr,
            SliceZero | SliceTooLong { .. } => Field::Slice,
            EntryOutsideMemory { .. } | RealModeEntryTooHigh { .. } | EntryInReserved { .. } => {
                Field::Entry
            }
            RealModeNeedsFlat | KernelModeMismatch { .. } => Field::Mode,
            KernelAsImage { .. } => Field::Image,
            KernelMissing { .. } | NotAKernel { .. } => Field::Kernel,
            KernelInvalid { error, .. } => error.field(),
            EntryWithKernel => Field::Entry,
            LoadAddrWithKernel => Field::LoadAddr,
            InitrdMissing { .. } | InitrdEmpty { .. } | InitrdWithImage | InitrdWithMultiboot => {
                Field::Initrd
            }
            CmdlineWithImage | CmdlineTooLong { .. } | CmdlineBadChar { .. } => Field::Cmdline,
        })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Problem::*;
        match self {
            TooManyVms => write!(f, "at most {MAX_VMS} VMs can be configured"),
            NameEmpty => write!(f, "must not be empty"),
            NameTooLong { len } => {
                write!(f, "{len} bytes is longer than the limit of {MAX_NAME_LEN}")
            }
            NameBadChar { ch } => {
                write!(
                    f,
                    "character {ch:?} is not allowed (use letters, digits, '-', '_', '.')"
                )
            }
            NameDuplicate { first } => write!(f, "already used by vm #{}", first + 1),
            MemoryZero => write!(f, "must not be zero"),
            MemoryTooSmall { bytes } => {
                write!(
                    f,
                    "{} is below the minimum of {}",
                    Size(*bytes),
                    Size(MIN_MEMORY)
                )
            }
            MemoryUnaligned { bytes } => {
                write!(
                    f,
                    "{} is not a multiple of {}",
                    Size(*bytes),
                    Size(MEMORY_ALIGN)
                )
            }
            MemoryExceedsMachine { bytes, usable } => write!(
                f,
                "{} is more than the machine's {} of usable memory",
                Size(*bytes),
                Size(*usable)
            ),
            MemoryBudget {
                bytes,
                used,
                usable,
            } => write!(
                f,
                "{} does not fit: the VMs before it already take {} of {} usable",
                Size(*bytes),
                Size(*used),
                Size(*usable)
            ),
            HostBaseUnaligned { base } => {
                write!(f, "{base:#x} is not aligned to {}", Size(MEMORY_ALIGN))
            }
            HostRangeOverflow { base } => {
                write!(
                    f,
                    "{base:#x} plus the memory size runs past the end of the address space"
                )
            }
            HostRangeUnusable { range } => {
                write!(f, "host {range} is not inside one usable memory range")
            }
            HostOverlap {
                range,
                other_name,
                other_range,
                ..
            } => write!(
                f,
                "host {range} overlaps vm \"{}\" (host {other_range})",
                Escaped(other_name)
            ),
            NoCpus => write!(f, "no CPU given"),
            TooManyCpus { count } => write!(
                f,
                "{count} CPUs listed; there are at most {MAX_CPUS} distinct CPUs"
            ),
            CpuMissing { cpu, count } => {
                write!(f, "CPU {cpu} does not exist (machine has {count})")
            }
            CpuBeyondMax { cpu } => {
                write!(
                    f,
                    "CPU {cpu} is beyond the supported maximum of {}",
                    MAX_CPUS - 1
                )
            }
            CpuRepeated { cpu } => write!(f, "CPU {cpu} is listed more than once"),
            ImageMissing { index, count } => {
                write!(f, "image #{index} does not exist (the package has {count})")
            }
            ImageTooLarge { len, memory } => write!(
                f,
                "the image ({}) is larger than the VM's {} of memory",
                Size(*len),
                Size(*memory)
            ),
            ImageOutsideMemory {
                load_addr,
                len,
                memory,
            } => write!(
                f,
                "the image at {load_addr:#x} ({}) ends past the VM's {} of memory",
                Size(*len),
                Size(*memory)
            ),
            ImageInvalid { image, error } => write!(f, "\"{}\": {error}", Escaped(image)),
            SegmentInReserved { start, end } => write!(
                f,
                "segment {start:#x}..{end:#x} overlaps {}, {RESERVED_WHY} (link the image at {:#x} or above)",
                Reserved,
                layout::BOOT_RESERVED.end
            ),
            LoadInReserved { start, end } => write!(
                f,
                "the image at {start:#x}..{end:#x} overlaps {}, {RESERVED_WHY} (load it at {:#x} or above)",
                Reserved,
                layout::BOOT_RESERVED.end
            ),
            EntryInReserved { entry } => {
                write!(f, "{entry:#x} lies in {}, {RESERVED_WHY}", Reserved)
            }
            FlatWithoutLoadAddr => write!(f, "a flat image needs a load address"),
            LoadAddrWithElf => write!(
                f,
                "only flat images take a load address (ELF images load where their headers say)"
            ),
            SliceZero => write!(f, "must not be zero"),
            SliceTooLong { us } => write!(
                f,
                "{} is longer than the maximum of {}",
                Micros(*us),
                Micros(MAX_SLICE_US)
            ),
            EntryOutsideMemory { entry, memory } => {
                write!(
                    f,
                    "{entry:#x} is outside the VM's {} of memory",
                    Size(*memory)
                )
            }
            RealModeNeedsFlat => write!(f, "real16 needs a flat image"),
            RealModeEntryTooHigh { entry } => write!(
                f,
                "{entry:#x} is not below {REAL_MODE_LIMIT:#x} ({}): real16 starts at \
                 CS:IP with CS = (entry >> 4) & 0xf000, inside the first MiB",
                Size(REAL_MODE_LIMIT)
            ),
            KernelAsImage { image, kind } => write!(
                f,
                "\"{}\" is {}: boot it with `kernel = ...` instead of `image = ...`",
                Escaped(image),
                kind.describe()
            ),
            KernelMissing { index, count } => {
                write!(f, "image #{index} does not exist (the package has {count})")
            }
            NotAKernel { image } => write!(
                f,
                "\"{}\" is neither a Linux bzImage (\"HdrS\" at 0x202) nor a Multiboot kernel \
                 (a Multiboot header in the first 8 KiB)",
                Escaped(image)
            ),
            KernelModeMismatch { mode, kind } => write!(
                f,
                "{} does not boot {}",
                mode.name(),
                kind.describe()
            ),
            KernelInvalid { image, error } => {
                if error.field() == Field::Cmdline {
                    write!(f, "{error}")
                } else {
                    write!(f, "\"{}\": {error}", Escaped(image))
                }
            }
            EntryWithKernel => write!(
                f,
                "a kernel starts where its boot protocol says (remove entry)"
            ),
            LoadAddrWithKernel => write!(
                f,
                "a kernel loads where its boot protocol says (remove load_addr)"
            ),
            InitrdMissing { index, count } => {
                write!(f, "image #{index} does not exist (the package has {count})")
            }
            InitrdEmpty { image } => {
                write!(f, "\"{}\": the initrd is empty (0 bytes)", Escaped(image))
            }
            InitrdWithImage => write!(
                f,
                "only a Linux kernel (`kernel = ...`) takes an initrd, not an image"
            ),
            InitrdWithMultiboot => write!(
                f,
                "a Multiboot kernel takes no initrd (only a Linux bzImage does)"
            ),
            CmdlineWithImage => write!(
                f,
                "only a kernel (`kernel = ...`) takes a command line, not an image"
            ),
            CmdlineTooLong { len } => write!(
                f,
                "{len} bytes is longer than the limit of {MAX_CMDLINE_LEN}"
            ),
            CmdlineBadChar { at, ch } => write!(
                f,
                "character {ch:?} at byte {at} is not allowed (no control characters; \
                 separate options with spaces)"
            ),
        }
    }
}

/// Why the boot-structure range is off limits, for messages.
const RESERVED_WHY: &str = "where the hypervisor writes a 64-bit guest's GDT and page tables";

/// The boot-structure range of a 64-bit guest, for messages.
struct Reserved;

impl fmt::Display for Reserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = layout::BOOT_RESERVED;
        write!(f, "{:#x}..{:#x}", r.start, r.end)
    }
}

/// One problem with one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmError {
    /// Position of the VM in the table (0-based; shown 1-based as `vm #N`).
    pub index: usize,
    /// The VM's name as configured (may be empty or invalid).
    pub name: String,
    /// What is wrong.
    pub problem: Problem,
}

/// How messages name a VM: `vm "NAME"` (escaped, and cut after
/// [`MAX_NAME_LEN`] bytes with `...`), or `vm #N` (1-based) when it has no name.
#[derive(Clone, Copy, Debug)]
pub struct VmLabel<'a> {
    /// Position in the table, 0-based.
    pub index: usize,
    /// The name as configured.
    pub name: &'a str,
}

impl fmt::Display for VmLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            return write!(f, "vm #{}", self.index + 1);
        }
        let mut cut = self.name.len().min(MAX_NAME_LEN);
        while !self.name.is_char_boundary(cut) {
            cut -= 1;
        }
        let more = if cut < self.name.len() { "..." } else { "" };
        write!(f, "vm \"{}{more}\"", Escaped(&self.name[..cut]))
    }
}

impl VmError {
    /// How this error names its VM.
    pub fn label(&self) -> VmLabel<'_> {
        VmLabel {
            index: self.index,
            name: &self.name,
        }
    }
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.label())?;
        if let Some(field) = self.problem.field() {
            write!(f, "{}: ", field.key())?;
        }
        write!(f, "{}", self.problem)
    }
}

/// A problem with a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The configuration has no VM at all.
    NoVms,
    /// Something is wrong with one VM.
    Vm(VmError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoVms => write!(f, "no VM is configured"),
            ConfigError::Vm(e) => e.fmt(f),
        }
    }
}

/// Checks the whole configuration and returns every problem found, in VM order.
pub fn validate(
    vms: &[VmSpec],
    images: &[ImageInfo<'_>],
    limits: &MachineLimits,
) -> Result<(), Vec<ConfigError>> {
    let mut errors = Vec::new();
    if vms.is_empty() {
        errors.push(ConfigError::NoVms);
    }
    for verdict in check_each(vms, images, limits) {
        if let Err(vm_errors) = verdict {
            errors.extend(vm_errors.into_iter().map(ConfigError::Vm));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Judges each VM on its own, in table order: element `i` is `Ok` when VM `i`
/// may be started, together with every other `Ok` VM, and otherwise lists all of
/// its problems.
///
/// Conflicts with an earlier VM (same name, overlapping fixed memory) are charged
/// to the later VM. Memory is admitted greedily: each VM that passes every other
/// check is counted against the usable total, and a VM that would exceed it is
/// refused.
pub fn check_each(
    vms: &[VmSpec],
    images: &[ImageInfo<'_>],
    limits: &MachineLimits,
) -> Vec<Result<(), Vec<VmError>>> {
    let mut admitted_bytes: u64 = 0;
    let mut verdicts = Vec::with_capacity(vms.len());
    // First VM (by index) of each name, for duplicates.
    let mut first_of_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, vm) in vms.iter().enumerate() {
        let mut problems = Vec::new();
        if index >= MAX_VMS {
            problems.push(Problem::TooManyVms);
        }
        check_vm(vm, images, limits, &mut problems);
        if !vm.name.is_empty() {
            match first_of_name.get(vm.name.as_str()) {
                Some(&first) => problems.push(Problem::NameDuplicate { first }),
                None => {
                    first_of_name.insert(&vm.name, index);
                }
            }
        }
        // Only VMs within the limit can start, so only they can be overlapped.
        check_host_overlap(vm, &vms[..index.min(MAX_VMS)], &mut problems);
        if let Some(memory) = &limits.memory {
            if problems.is_empty() {
                let used = admitted_bytes;
                match used.checked_add(vm.memory_bytes) {
                    Some(total) if total <= memory.usable_bytes => admitted_bytes = total,
                    _ => problems.push(Problem::MemoryBudget {
                        bytes: vm.memory_bytes,
                        used,
                        usable: memory.usable_bytes,
                    }),
                }
            }
        }
        verdicts.push(if problems.is_empty() {
            Ok(())
        } else {
            Err(problems
                .into_iter()
                .map(|problem| VmError {
                    index,
                    name: vm.name.clone(),
                    problem,
                })
                .collect())
        });
    }
    verdicts
}

/// Checks one VM in isolation (everything but conflicts with other VMs and the
/// shared memory budget) and appends its problems.
pub fn check_vm(
    vm: &VmSpec,
    images: &[ImageInfo<'_>],
    limits: &MachineLimits,
    problems: &mut Vec<Problem>,
) {
    check_name(&vm.name, problems);
    check_memory(vm, limits, problems);
    check_cpus(&vm.cpus, limits, problems);
    if vm.slice_us == 0 {
        problems.push(Problem::SliceZero);
    } else if vm.slice_us > MAX_SLICE_US {
        problems.push(Problem::SliceTooLong { us: vm.slice_us });
    }
    if let Some(entry) = vm.entry.filter(|_| !vm.mode.is_kernel()) {
        if entry >= vm.memory_bytes {
            problems.push(Problem::EntryOutsideMemory {
                entry,
                memory: vm.memory_bytes,
            });
        }
    }
    check_image(vm, images, problems);
}

fn check_name(name: &str, problems: &mut Vec<Problem>) {
    if name.is_empty() {
        problems.push(Problem::NameEmpty);
    } else if name.len() > MAX_NAME_LEN {
        problems.push(Problem::NameTooLong { len: name.len() });
    } else if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        problems.push(Problem::NameBadChar { ch });
    }
}

fn check_memory(vm: &VmSpec, limits: &MachineLimits, problems: &mut Vec<Problem>) {
    let bytes = vm.memory_bytes;
    if bytes == 0 {
        problems.push(Problem::MemoryZero);
    } else if bytes < MIN_MEMORY {
        problems.push(Problem::MemoryTooSmall { bytes });
    } else if !bytes.is_multiple_of(MEMORY_ALIGN) {
        problems.push(Problem::MemoryUnaligned { bytes });
    }
    if let Some(memory) = &limits.memory {
        if bytes > memory.usable_bytes {
            problems.push(Problem::MemoryExceedsMachine {
                bytes,
                usable: memory.usable_bytes,
            });
        }
    }
    let Some(base) = vm.host_base else { return };
    if !base.is_multiple_of(MEMORY_ALIGN) {
        problems.push(Problem::HostBaseUnaligned { base });
    }
    match vm.host_range() {
        None => problems.push(Problem::HostRangeOverflow { base }),
        Some(range) => {
            if let Some(memory) = &limits.memory {
                if !memory
                    .usable_ranges
                    .iter()
                    .any(|usable| usable.contains(&range))
                {
                    problems.push(Problem::HostRangeUnusable { range });
                }
            }
        }
    }
}

fn check_cpus(cpus: &[u32], limits: &MachineLimits, problems: &mut Vec<Problem>) {
    if cpus.is_empty() {
        problems.push(Problem::NoCpus);
        return;
    }
    if cpus.len() > MAX_CPUS as usize {
        problems.push(Problem::TooManyCpus { count: cpus.len() });
        return;
    }
    // One bit per valid index; indices beyond MAX_CPUS (at most MAX_CPUS of
    // them, see above) are remembered in a short list.
    let mut seen = [0u64; MAX_CPUS as usize / 64];
    let mut seen_beyond: Vec<u32> = Vec::new();
    let mut repeated = [0u64; MAX_CPUS as usize / 64];
    let mut repeated_beyond: Vec<u32> = Vec::new();
    for &cpu in cpus {
        let (first_time, first_repeat) =
            match usize::try_from(cpu).ok().filter(|&i| i < MAX_CPUS as usize) {
                Some(i) => {
                    let (word, bit) = (i / 64, 1u64 << (i % 64));
                    let first_time = seen[word] & bit == 0;
                    let first_repeat = !first_time && repeated[word] & bit == 0;
                    seen[word] |= bit;
                    if !first_time {
                        repeated[word] |= bit;
                    }
                    (first_time, first_repeat)
                }
                None => {
                    let first_time = !seen_beyond.contains(&cpu);
                    let first_repeat = !first_time && !repeated_beyond.contains(&cpu);
                    if first_time {
                        seen_beyond.push(cpu);
                    } else if first_repeat {
                        repeated_beyond.push(cpu);
                    }
                    (first_time, first_repeat)
                }
            };
        if first_repeat {
            problems.push(Problem::CpuRepeated { cpu });
        }
        if !first_time {
            continue;
        }
        match limits.cpu_count {
            Some(count) if cpu >= count => problems.push(Problem::CpuMissing { cpu, count }),
            _ if cpu >= MAX_CPUS => problems.push(Problem::CpuBeyondMax { cpu }),
            _ => {}
        }
    }
}

/// The image at `index` of the table, if there is one.
fn image_at<'a, 'b>(images: &'b [ImageInfo<'a>], index: u32) -> Option<&'b ImageInfo<'a>> {
    usize::try_from(index).ok().and_then(|i| images.get(i))
}

fn check_image(vm: &VmSpec, images: &[ImageInfo<'_>], problems: &mut Vec<Problem>) {
    if vm.mode.is_kernel() {
        check_kernel(vm, images, problems);
        return;
    }
    if vm.initrd.is_some() {
        problems.push(Problem::InitrdWithImage);
    }
    if !vm.cmdline.is_empty() {
        problems.push(Problem::CmdlineWithImage);
    }
    let image = image_at(images, vm.image);
    let Some(image) = image else {
        problems.push(Problem::ImageMissing {
            index: vm.image,
            count: images.len(),
        });
        return;
    };
    let memory = vm.memory_bytes;
    if memory < MIN_MEMORY {
        // Reported under `memory`; images are judged against a usable size.
        return;
    }
    let invalid = |error| Problem::ImageInvalid {
        image: String::from(image.name),
        error,
    };
    if image.is_empty() {
        problems.push(invalid(ImageError::Empty));
        return;
    }
    match image.kind {
        ImageKind::BzImage | ImageKind::Multiboot => problems.push(Problem::KernelAsImage {
            image: String::from(image.name),
            kind: image.kind,
        }),
        ImageKind::Elf => {
            if vm.load_addr.is_some() {
                problems.push(Problem::LoadAddrWithElf);
            }
            if vm.mode == GuestMode::Real16 {
                problems.push(Problem::RealModeNeedsFlat);
            }
            // The loader's own checks, segments first; the entry point is
            // judged below, once.
            match image::segments(image.data, ImageKind::Elf, None, memory) {
                Err(error) => problems.push(invalid(error)),
                Ok(plan) => {
                    for s in &plan.segments {
                        if layout::overlaps_reserved(vm.mode, s.gpa, s.mem_len) {
                            problems.push(Problem::SegmentInReserved {
                                start: s.gpa,
                                end: s.end(),
                            });
                        }
                    }
                    let entry = vm.entry.unwrap_or(plan.entry);
                    if entry >= memory {
                        // A configured entry point was reported by check_vm.
                        if vm.entry.is_none() {
                            problems.push(invalid(ImageError::EntryOutside { entry, memory }));
                        }
                    } else if !plan.segments.iter().any(|s| s.contains(entry)) {
                        problems.push(invalid(ImageError::EntryNotLoaded { entry }));
                    }
                }
            }
        }
        ImageKind::Flat => {
            let len = image.len();
            if len > memory {
                problems.push(Problem::ImageTooLarge { len, memory });
            }
            match vm.load_addr {
                None => problems.push(Problem::FlatWithoutLoadAddr),
                Some(load_addr) => {
                    let end = load_addr.checked_add(len);
                    let fits = end.is_some_and(|end| end <= memory);
                    if len <= memory && !fits {
                        problems.push(Problem::ImageOutsideMemory {
                            load_addr,
                            len,
                            memory,
                        });
                    }
                    if layout::overlaps_reserved(vm.mode, load_addr, len) {
                        problems.push(Problem::LoadInReserved {
                            start: load_addr,
                            end: end.unwrap_or(u64::MAX),
                        });
                    }
                }
            }
            if let Some(entry) = vm.flat_entry() {
                if vm.mode == GuestMode::Real16 && real_mode_cs_ip(entry).is_none() {
                    problems.push(Problem::RealModeEntryTooHigh { entry });
                }
                if layout::reserved_for(vm.mode).contains(&entry)
                    && !layout::overlaps_reserved(vm.mode, vm.load_addr.unwrap_or(0), len)
                {
                    problems.push(Problem::EntryInReserved { entry });
                }
            }
        }
    }
}

/// Checks a command line on its own (the kernel's limits are the loader's);
/// `false` when it is refused.
fn check_cmdline(cmdline: &str, problems: &mut Vec<Problem>) -> bool {
    if let Some((at, ch)) = cmdline.char_indices().find(|(_, c)| c.is_control()) {
        problems.push(Problem::CmdlineBadChar { at, ch });
        return false;
    }
    if cmdline.len() > MAX_CMDLINE_LEN {
        problems.push(Problem::CmdlineTooLong { len: cmdline.len() });
        return false;
    }
    true
}

/// A VM booting a kernel: the keys of images refused, the initrd and command
/// line checked, and the kernel planned by its boot-protocol loader.
fn check_kernel(vm: &VmSpec, images: &[ImageInfo<'_>], problems: &mut Vec<Problem>) {
    if vm.entry.is_some() {
        problems.push(Problem::EntryWithKernel);
    }
    if vm.load_addr.is_some() {
        problems.push(Problem::LoadAddrWithKernel);
    }
    let cmdline_ok = check_cmdline(&vm.cmdline, problems);
    let initrd = match vm.initrd {
        None => None,
        Some(_) if vm.mode != GuestMode::Linux64 => {
            problems.push(Problem::InitrdWithMultiboot);
            None
        }
        Some(index) => match image_at(images, index) {
            None => {
                problems.push(Problem::InitrdMissing {
                    index,
                    count: images.len(),
                });
                None
            }
            Some(initrd) if initrd.is_empty() => {
                problems.push(Problem::InitrdEmpty {
                    image: String::from(initrd.name),
                });
                None
            }
            Some(initrd) => Some(initrd),
        },
    };
    let Some(kernel) = image_at(images, vm.image) else {
        problems.push(Problem::KernelMissing {
            index: vm.image,
            count: images.len(),
        });
        return;
    };
    let memory = vm.memory_bytes;
    if memory < MIN_MEMORY {
        // Reported under `memory`; kernels are judged against a usable size.
        return;
    }
    match kernel.kind.kernel_mode() {
        Some(mode) if mode == vm.mode => {}
        Some(_) => {
            problems.push(Problem::KernelModeMismatch {
                mode: vm.mode,
                kind: kernel.kind,
            });
            return;
        }
        None => {
            problems.push(Problem::NotAKernel {
                image: String::from(kernel.name),
            });
            return;
        }
    }
    // A command line refused above is not judged again by the loader.
    let cmdline = if cmdline_ok {
        vm.cmdline.as_bytes()
    } else {
        b""
    };
    let verdict = match vm.mode {
        GuestMode::Linux64 => linux::plan(kernel.data, initrd.map(|i| i.data), cmdline, memory)
            .map(drop)
            .map_err(KernelError::Linux),
        _ => multiboot::plan(kernel.data, cmdline, memory)
            .map(drop)
            .map_err(KernelError::Multiboot),
    };
    if let Err(error) = verdict {
        let image = match (error.field(), initrd) {
            (Field::Initrd, Some(initrd)) => initrd.name,
            _ => kernel.name,
        };
        problems.push(Problem::KernelInvalid {
            image: String::from(image),
            error,
        });
    }
}

fn check_host_overlap(vm: &VmSpec, earlier: &[VmSpec], problems: &mut Vec<Problem>) {
    let Some(range) = vm.host_range() else { return };
    for (other, other_vm) in earlier.iter().enumerate() {
        if let Some(other_range) = other_vm.host_range() {
            if range.overlaps(&other_range) {
                problems.push(Problem::HostOverlap {
                    range,
                    other,
                    other_name: other_vm.name.clone(),
                    other_range,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
