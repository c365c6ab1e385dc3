//! `flash`: write the UEFI disk image to a USB stick for a real test machine.
//!
//! The command must never destroy the wrong disk, so it refuses any target that
//! is not clearly a removable whole disk that nothing is using. Linux only (it reads
//! sysfs and procfs).
//!
//! # Layers
//!
//! 1. **Decision** ([`check_target`]): a pure function over a [`DeviceInfo`].
//!    Every refusal rule lives here and is tested with hand-written values.
//! 2. **Probe** ([`SysRoot::probe`]): fills a [`DeviceInfo`] from sysfs/procfs
//!    below a root prefix (`/` on the host, a fake tree in tests). The file type
//!    and device number of paths come from a [`NodeInspector`], so tests can make a
//!    regular file pose as a block device.
//! 3. **Write and verify** ([`write_image`], [`verify_image`]): generic over
//!    `Read`/`Write`/`Seek`, so tests use temporary files and corrupting wrappers.
//!
//! # Rules (checked in this order)
//!
//! - The path must exist and be a block device (not a regular file, character
//!   device, directory, ...), and a whole disk: `/sys/class/block/<name>/partition`
//!   must not exist and `/sys/block/<name>` must.
//! - The disk must be removable: `/sys/block/<name>/removable` is `1`, **or** its
//!   transport is USB, i.e. the resolved `/sys/block/<name>` path has a component
//!   starting with `usb` (`.../usb2/2-1/...`). Many USB SSDs and some card readers
//!   report `removable=0`; accepting USB transport lets them through while still
//!   refusing internal SATA/NVMe disks.
//! - Neither the disk nor any of its partitions may be mounted (`/proc/self/mounts`,
//!   matched by name — `/dev/<name>`, `/dev/<name><N>`, or `/dev/<name>p<N>` when the
//!   name ends in a digit — and by major:minor for other `/dev/...` sources such as
//!   `/dev/disk/by-label/...`), used as swap (`/proc/swaps`), or held by
//!   device-mapper/md (`holders/` not empty, e.g. an open LUKS volume).
//! - The disk must be at least as large as the image.
//!
//! Then the device and image are shown and the user must pass `--yes` or type the
//! device name on an interactive stdin. Just before opening, the device is probed
//! and checked again (a stick may be automounted while the user types), and it is
//! opened with `O_EXCL`, which Linux refuses for a block device that is mounted or
//! claimed. The opened handle must still be the probed device (same major:minor).
//!
//! Writing is in 1 MiB blocks, each followed by `fdatasync`, with a progress line.
//! The device is then closed — Linux drops a block device's page cache when its last
//! opener closes it — and reopened to read the image length back and compare it byte
//! for byte.
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Size of one write and one read-back block.
pub const BLOCK_SIZE: usize = 1 << 20;

/// `O_EXCL` on a block device: fail with `EBUSY` if it is mounted or claimed.
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )
))]
const O_EXCL: i32 = 0o200;
/// Unknown value on this platform: no exclusive open (the checks still apply).
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )
)))]
const O_EXCL: i32 = 0;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashOptions {
    /// Disk image to write.
    pub image: PathBuf,
    /// Whole-disk block device, e.g. `/dev/sdb`.
    pub device: PathBuf,
    /// Skip the interactive confirmation.
    pub yes: bool,
    /// Check and describe, write nothing.
    pub dry_run: bool,
}

/// Why `flash` refused or failed. Every refusal happens before the device is opened
/// for writing.
#[derive(Debug)]
pub enum FlashError {
    /// An argument that is not `--yes`/`--dry-run`.
    UnknownOption { option: String },
    /// Too few positional arguments.
    MissingArgument { what: &'static str },
    /// A positional argument beyond `<image> <device>`.
    UnexpectedArgument { argument: String },
    /// The image cannot be opened or inspected.
    Image { path: PathBuf, source: io::Error },
    /// The image is not a regular file.
    ImageNotFile { path: PathBuf },
    /// The image is empty.
    EmptyImage { path: PathBuf },
    /// The device path does not exist.
    DeviceMissing { device: PathBuf },
    /// The device path is not a block device.
    NotBlockDevice { device: PathBuf, kind: NodeKind },
    /// The device is a partition, not a whole disk.
    IsPartition { device: PathBuf, name: String },
    /// A block device without a `/sys/block` entry (so not a whole disk we know).
    NotWholeDisk { device: PathBuf, name: String },
    /// Neither `removable=1` nor USB transport.
    NotRemovable { device: PathBuf, model: String },
    /// The disk or one of its partitions is mounted or used as swap.
    Mounted {
        device: PathBuf,
        mounts: Vec<String>,
    },
    /// The disk or one of its partitions is held by device-mapper/md.
    InUse {
        device: PathBuf,
        holders: Vec<String>,
    },
    /// The disk is smaller than the image.
    TooSmall {
        device: PathBuf,
        device_bytes: u64,
        image_bytes: u64,
    },
    /// No `--yes` and stdin is not a terminal.
    NotInteractive { device: PathBuf },
    /// The typed name was not the device name.
    NotConfirmed {
        device: PathBuf,
        expected: String,
        typed: String,
    },
    /// The device changed between checking and opening.
    DeviceChanged { device: PathBuf },
    /// Reading sysfs/procfs or inspecting a path failed.
    Probe { path: PathBuf, source: io::Error },
    /// Opening the device failed (`EBUSY`: mounted or claimed).
    Open { device: PathBuf, source: io::Error },
    /// Reading the image failed.
    ImageRead { offset: u64, source: io::Error },
    /// The image ended early (it changed while flashing).
    ImageShort { expected: u64, got: u64 },
    /// Writing or syncing the device failed.
    Write { offset: u64, source: io::Error },
    /// Reading the device back failed.
    ReadBack { offset: u64, source: io::Error },
    /// The device ended before the image length during read-back.
    ReadBackShort { offset: u64 },
    /// The read-back differs from the image.
    VerifyMismatch {
        offset: u64,
        expected: u8,
        found: u8,
    },
}

impl fmt::Display for FlashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FlashError::*;
        match self {
            UnknownOption { option } => {
                write!(f, "unknown option {option:?}; usage: {USAGE}")
            }
            MissingArgument { what } => write!(f, "missing {what}; usage: {USAGE}"),
            UnexpectedArgument { argument } => {
                write!(f, "unexpected argument {argument:?}; usage: {USAGE}")
            }
            Image { path, source } => write!(f, "cannot read image {}: {source}", path.display()),
            ImageNotFile { path } => write!(f, "image {} is not a regular file", path.display()),
            EmptyImage { path } => write!(f, "image {} is empty", path.display()),
            DeviceMissing { device } => write!(f, "{} does not exist", device.display()),
            NotBlockDevice { device, kind } => write!(
                f,
                "refusing {}: it is a {kind}, not a block device",
                device.display()
            ),
            IsPartition { device, name } => write!(
                f,
                "refusing {}: {name} is a partition; give the whole disk instead",
                device.display()
            ),
            NotWholeDisk { device, name } => write!(
                f,
                "refusing {}: {name} is not a whole disk (no /sys/block/{name})",
                device.display()
            ),
            NotRemovable { device, model } => write!(
                f,
                "refusing {} ({}): not removable and not on USB; this looks like an internal disk",
                device.display(),
                or_unknown(model)
            ),
            Mounted { device, mounts } => write!(
                f,
                "refusing {}: in use: {}; unmount first",
                device.display(),
                mounts.join(", ")
            ),
            InUse { device, holders } => write!(
                f,
                "refusing {}: held by {}; close those first",
                device.display(),
                holders.join(", ")
            ),
            TooSmall {
                device,
                device_bytes,
                image_bytes,
            } => write!(
                f,
                "refusing {}: device holds {} but the image needs {}",
                device.display(),
                human_size(*device_bytes),
                human_size(*image_bytes)
            ),
            NotInteractive { device } => write!(
                f,
                "refusing {}: stdin is not a terminal; pass --yes to confirm",
                device.display()
            ),
            NotConfirmed {
                device,
                expected,
                typed,
            } => write!(
                f,
                "not confirmed: typed {typed:?}, expected {expected:?}; {} left untouched",
                device.display()
            ),
            DeviceChanged { device } => write!(
                f,
                "refusing {}: the device changed since it was checked",
                device.display()
            ),
            Probe { path, source } => write!(f, "cannot inspect {}: {source}", path.display()),
            Open { device, source } => {
                write!(f, "cannot open {} for writing: {source}", device.display())?;
                if source.raw_os_error() == Some(EBUSY) {
                    write!(f, " (mounted or claimed by another user)")?;
                }
                Ok(())
            }
            ImageRead { offset, source } => {
                write!(f, "reading the image at offset {offset} failed: {source}")
            }
            ImageShort { expected, got } => write!(
                f,
                "the image ended after {got} of {expected} bytes (was it changed while flashing?)"
            ),
            Write { offset, source } => {
                write!(f, "writing the device at offset {offset} failed: {source}")
            }
            ReadBack { offset, source } => {
                write!(
                    f,
                    "reading the device back at offset {offset} failed: {source}"
                )
            }
            ReadBackShort { offset } => {
                write!(f, "verify failed: the device ended at offset {offset}")
            }
            VerifyMismatch {
                offset,
                expected,
                found,
            } => write!(
                f,
                "verify failed: first difference at offset {offset} (0x{offset:x}): \
                 wrote 0x{expected:02x}, read back 0x{found:02x}"
            ),
        }
    }
}

impl std::error::Error for FlashError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FlashError::Image { source, .. }
            | FlashError::Probe { source, .. }
            | FlashError::Open { source, .. }
            | FlashError::ImageRead { source, .. }
            | FlashError::Write { source, .. }
            | FlashError::ReadBack { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Linux `EBUSY`, the answer to an `O_EXCL` open of a mounted block device.
const EBUSY: i32 = 16;

const USAGE: &str = "flash [<image>] <device> [--yes] [--dry-run]";

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "unknown model"
    } else {
        s
    }
}

// ---------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------

/// Parses the arguments after the `flash` subcommand: `<image> <device> [--yes] [--dry-run]`.
pub fn parse_args(args: &[String]) -> Result<FlashOptions, FlashError> {
    parse_args_with_default(args, None)
}

/// Like [`parse_args`], but with `default_image` the image may be left out
/// (`flash <device>`); the main program decides the default.
pub fn parse_args_with_default(
    args: &[String],
    default_image: Option<&Path>,
) -> Result<FlashOptions, FlashError> {
    let mut yes = false;
    let mut dry_run = false;
    let mut positional = Vec::new();
    for arg in args {
        match arg.as_str() {
            "--yes" => yes = true,
            "--dry-run" => dry_run = true,
            a if a.starts_with('-') => {
                return Err(FlashError::UnknownOption {
                    option: arg.clone(),
                })
            }
            _ => positional.push(arg),
        }
    }
    let (image, device) = match (positional.as_slice(), default_image) {
        ([image, device], _) => (PathBuf::from(image), PathBuf::from(device)),
        ([device], Some(default)) => (default.to_path_buf(), PathBuf::from(device)),
        ([_], None) => return Err(FlashError::MissingArgument { what: "<device>" }),
        ([], _) => return Err(FlashError::MissingArgument { what: "<device>" }),
        ([_, _, extra, ..], _) => {
            return Err(FlashError::UnexpectedArgument {
                argument: extra.to_string(),
            })
        }
    };
    Ok(FlashOptions {
        image,
        device,
        yes,
        dry_run,
    })
}

// ---------------------------------------------------------------------------
// Decision layer
// ---------------------------------------------------------------------------

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    /// Parses sysfs `dev` contents (`"8:16\n"`).
    pub fn parse(s: &str) -> Option<DevNum> {
        let (major, minor) = s.trim().split_once(':')?;
        Some(DevNum {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    /// Splits a Linux `st_rdev` (glibc `gnu_dev_major`/`gnu_dev_minor` encoding).
    pub fn from_rdev(rdev: u64) -> DevNum {
        let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff);
        let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff);
        // Both expressions are masked to 32 bits.
        DevNum {
            major: major as u32,
            minor: minor as u32,
        }
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Everything the decision needs to know about a target device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The path the user gave.
    pub path: PathBuf,
    /// Kernel name, e.g. `sdb`.
    pub name: String,
    pub is_block_device: bool,
    /// What the path is, for messages when it is not a block device.
    pub kind: NodeKind,
    pub is_partition: bool,
    /// `/sys/block/<name>` exists.
    pub is_whole_disk: bool,
    /// `/sys/block/<name>/removable` is `1`.
    pub removable: bool,
    /// The resolved `/sys/block/<name>` path goes through a USB controller.
    pub usb_transport: bool,
    pub size_bytes: u64,
    pub model: String,
    pub vendor: String,
    /// Device number of the disk, when known.
    pub dev: Option<DevNum>,
    /// Mounts and swaps on the disk or its partitions, e.g. `/dev/sdb1 on /media/x`.
    pub mounted_partitions: Vec<String>,
    /// Device-mapper/md holders, e.g. `sdb1 held by dm-0`.
    pub holders: Vec<String>,
}

/// Decides whether `dev` may receive an image of `image_len` bytes.
pub fn check_target(dev: &DeviceInfo, image_len: u64) -> Result<(), FlashError> {
    let device = dev.path.clone();
    if !dev.is_block_device {
        return Err(FlashError::NotBlockDevice {
            device,
            kind: dev.kind,
        });
    }
    if dev.is_partition {
        return Err(FlashError::IsPartition {
            device,
            name: dev.name.clone(),
        });
    }
    if !dev.is_whole_disk {
        return Err(FlashError::NotWholeDisk {
            device,
            name: dev.name.clone(),
        });
    }
    if !(dev.removable || dev.usb_transport) {
        return Err(FlashError::NotRemovable {
            device,
            model: dev.model_line(),
        });
    }
    if !dev.mounted_partitions.is_empty() {
        return Err(FlashError::Mounted {
            device,
            mounts: dev.mounted_partitions.clone(),
        });
    }
    if !dev.holders.is_empty() {
        return Err(FlashError::InUse {
            device,
            holders: dev.holders.clone(),
        });
    }
    if dev.size_bytes < image_len {
        return Err(FlashError::TooSmall {
            device,
            device_bytes: dev.size_bytes,
            image_bytes: image_len,
        });
    }
    Ok(())
}

impl DeviceInfo {
    /// `vendor model`, either part may be missing.
    pub fn model_line(&self) -> String {
        let parts: Vec<&str> = [self.vendor.as_str(), self.model.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        parts.join(" ")
    }

    /// What the user sees before confirming.
    pub fn describe(&self, image: &Path, image_len: u64) -> String {
        let mut how = Vec::new();
        if self.removable {
            how.push("removable");
        }
        if self.usb_transport {
            how.push("USB");
        }
        format!(
            "device: {} ({})\n\
             model:  {}\n\
             size:   {} ({} bytes), {}\n\
             image:  {}\n\
             length: {} ({} bytes)\n",
            self.path.display(),
            self.name,
            or_unknown(&self.model_line()),
            human_size(self.size_bytes),
            self.size_bytes,
            how.join(", "),
            image.display(),
            human_size(image_len),
            image_len,
        )
    }
}

/// `1536` -> `"1.5 KiB"`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Asks the user to type the device name. `interactive` says whether `input` is a
/// terminal; without one there is nobody to ask, so the answer is no.
pub fn confirm(
    dev: &DeviceInfo,
    interactive: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), FlashError> {
    if !interactive {
        return Err(FlashError::NotInteractive {
            device: dev.path.clone(),
        });
    }
    let not_confirmed = |typed: String| FlashError::NotConfirmed {
        device: dev.path.clone(),
        expected: dev.name.clone(),
        typed,
    };
    // A prompt that cannot be shown cannot be answered.
    write!(
        out,
        "ALL DATA ON {} WILL BE DESTROYED. Type the device name ({}) to continue: ",
        dev.path.display(),
        dev.name
    )
    .and_then(|()| out.flush())
    .map_err(|_| not_confirmed(String::new()))?;
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|_| not_confirmed(String::new()))?;
    let typed = line.trim();
    if typed == dev.name {
        Ok(())
    } else {
        Err(not_confirmed(typed.to_string()))
    }
}

// ---------------------------------------------------------------------------
// Probe layer
// ---------------------------------------------------------------------------

/// The type of a filesystem node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NodeKind {
    #[default]
    Missing,
    BlockDevice,
    CharDevice,
    RegularFile,
    Directory,
    Other,
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeKind::Missing => "missing path",
            NodeKind::BlockDevice => "block device",
            NodeKind::CharDevice => "character device",
            NodeKind::RegularFile => "regular file",
            NodeKind::Directory => "directory",
            NodeKind::Other => "special file",
        })
    }
}

/// What a path (symlinks followed) or an open handle is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// Device number, for block and character devices.
    pub dev: Option<DevNum>,
    /// The path with symlinks resolved (as given if it cannot be resolved).
    pub resolved: PathBuf,
}

/// Source of file types and device numbers; faked in tests.
pub trait NodeInspector {
    /// Inspects `path`, following symlinks; a missing path is `NodeKind::Missing`.
    fn inspect(&self, path: &Path) -> io::Result<Node>;
    /// Inspects a handle opened from `path` (`fstat`), to catch a device that was
    /// replaced between the checks and the open.
    fn inspect_open(&self, path: &Path, file: &File) -> io::Result<Node>;
}

/// The real filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostNodes;

fn node_from_metadata(meta: &fs::Metadata, resolved: PathBuf) -> Node {
    let ft = meta.file_type();
    let kind = if ft.is_block_device() {
        NodeKind::BlockDevice
    } else if ft.is_char_device() {
        NodeKind::CharDevice
    } else if ft.is_file() {
        NodeKind::RegularFile
    } else if ft.is_dir() {
        NodeKind::Directory
    } else {
        NodeKind::Other
    };
    let dev = matches!(kind, NodeKind::BlockDevice | NodeKind::CharDevice)
        .then(|| DevNum::from_rdev(meta.rdev()));
    Node {
        kind,
        dev,
        resolved,
    }
}

impl NodeInspector for HostNodes {
    fn inspect(&self, path: &Path) -> io::Result<Node> {
        match fs::metadata(path) {
            Ok(meta) => {
                let resolved = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
                Ok(node_from_metadata(&meta, resolved))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Node {
                kind: NodeKind::Missing,
                dev: None,
                resolved: path.to_path_buf(),
            }),
            Err(e) => Err(e),
        }
    }

    fn inspect_open(&self, path: &Path, file: &File) -> io::Result<Node> {
        Ok(node_from_metadata(&file.metadata()?, path.to_path_buf()))
    }
}

/// Where sysfs and procfs are: `/` on the host, a fake tree in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysRoot {
    root: PathBuf,
}

impl Default for SysRoot {
    fn default() -> Self {
        SysRoot::host()
    }
}

impl SysRoot {
    pub fn new(root: impl Into<PathBuf>) -> SysRoot {
        SysRoot { root: root.into() }
    }

    /// The running system.
    pub fn host() -> SysRoot {
        SysRoot::new("/")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Fills a [`DeviceInfo`] for `device`. Only fails when the path is missing or
    /// when something that must be readable is not; everything else is left to
    /// [`check_target`].
    pub fn probe(
        &self,
        device: &Path,
        nodes: &dyn NodeInspector,
    ) -> Result<DeviceInfo, FlashError> {
        let probe_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FlashError::Probe { path, source }
        };
        let node = nodes.inspect(device).map_err(probe_err(device))?;
        let mut info = DeviceInfo {
            path: device.to_path_buf(),
            name: file_name(&node.resolved),
            kind: node.kind,
            dev: node.dev,
            ..DeviceInfo::default()
        };
        match node.kind {
            NodeKind::Missing => return Err(FlashError::DeviceMissing { device: info.path }),
            NodeKind::BlockDevice => info.is_block_device = true,
            _ => return Ok(info),
        }
        // The kernel's name for the device number beats the path's basename
        // (`/dev/disk/by-id/usb-...` or a renamed node).
        let by_number = node
            .dev
            .and_then(|dev| fs::canonicalize(self.path(&format!("sys/dev/block/{dev}"))).ok());
        if let Some(real) = by_number {
            info.name = file_name(&real);
        }
        let name = info.name.clone();
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Ok(info);
        }
        info.is_partition = self
            .path(&format!("sys/class/block/{name}/partition"))
            .exists();
        let disk = self.path(&format!("sys/block/{name}"));
        info.is_whole_disk = disk.is_dir();
        if info.is_partition || !info.is_whole_disk {
            return Ok(info);
        }

        info.removable = read_trimmed(&disk.join("removable")).as_deref() == Some("1");
        info.usb_transport = self.is_usb(&disk);
        info.size_bytes = read_trimmed(&disk.join("size"))
            .and_then(|s| s.parse::<u64>().ok())
            .and_then(|sectors| sectors.checked_mul(512))
            .unwrap_or(0);
        info.model = read_trimmed(&disk.join("device/model"))
            .or_else(|| read_trimmed(&disk.join("device/name")))
            .unwrap_or_default();
        info.vendor = read_trimmed(&disk.join("device/vendor")).unwrap_or_default();
        if let Some(dev) = read_trimmed(&disk.join("dev")).and_then(|s| DevNum::parse(&s)) {
            info.dev = Some(dev);
        }

        // The disk and its partitions: (name, dev, sysfs dir).
        let mut members = vec![(name.clone(), info.dev, disk.clone())];
        let entries = fs::read_dir(&disk).map_err(probe_err(&disk))?;
        for entry in entries {
            let entry = entry.map_err(probe_err(&disk))?;
            let dir = entry.path();
            if dir.join("partition").exists() {
                let dev = read_trimmed(&dir.join("dev")).and_then(|s| DevNum::parse(&s));
                members.push((entry.file_name().to_string_lossy().into_owned(), dev, dir));
            }
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));

        for (member, _, dir) in &members {
            let holders = dir.join("holders");
            if let Ok(entries) = fs::read_dir(&holders) {
                let mut held: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| format!("{member} held by {}", e.file_name().to_string_lossy()))
                    .collect();
                held.sort();
                info.holders.extend(held);
            }
        }

        let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
        let devs: Vec<DevNum> = members.iter().filter_map(|m| m.1).collect();
        let is_ours = |source: &str| -> bool {
            let Some(rest) = source.strip_prefix("/dev/") else {
                return false;
            };
            if names.contains(&rest) || is_partition_name(rest, &name) {
                return true;
            }
            // Other /dev paths (by-label symlinks, renamed nodes): compare numbers.
            matches!(
                nodes.inspect(Path::new(source)),
                Ok(Node { kind: NodeKind::BlockDevice, dev: Some(d), .. }) if devs.contains(&d)
            )
        };

        // Mounts must be readable: not knowing is not "unmounted".
        let mounts_path = self.path("proc/self/mounts");
        let mounts = fs::read_to_string(&mounts_path).map_err(probe_err(&mounts_path))?;
        for (source, target) in parse_mounts(&mounts) {
            if is_ours(&source) {
                info.mounted_partitions
                    .push(format!("{source} on {target}"));
            }
        }
        // Swap needs CONFIG_SWAP; without /proc/swaps there is no swap.
        if let Ok(swaps) = fs::read_to_string(self.path("proc/swaps")) {
            for source in parse_swaps(&swaps) {
                if is_ours(&source) {
                    info.mounted_partitions.push(format!("{source} as swap"));
                }
            }
        }
        Ok(info)
    }

    /// Whether the resolved sysfs path of `disk` (below the root) has a `usb*`
    /// component, i.e. the disk hangs off a USB host controller.
    fn is_usb(&self, disk: &Path) -> bool {
        let (Ok(real), Ok(root)) = (fs::canonicalize(disk), fs::canonicalize(&self.root)) else {
            return false;
        };
        let below = real.strip_prefix(&root).unwrap_or(&real);
        format!("/{}", below.to_string_lossy()).contains("/usb")
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Whether `candidate` is the kernel's name for a partition of `disk`:
/// `sdb1` for `sdb`, `nvme0n1p1` for `nvme0n1` (names ending in a digit get a `p`).
fn is_partition_name(candidate: &str, disk: &str) -> bool {
    let Some(suffix) = candidate.strip_prefix(disk) else {
        return false;
    };
    let digits = if disk.ends_with(|c: char| c.is_ascii_digit()) {
        match suffix.strip_prefix('p') {
            Some(d) => d,
            None => return false,
        }
    } else {
        suffix
    };
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `(source, mount point)` pairs of a `/proc/self/mounts` text.
fn parse_mounts(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((
                unescape_octal(fields.next()?),
                unescape_octal(fields.next()?),
            ))
        })
        .collect()
}

/// Swap sources of a `/proc/swaps` text (first line is a header).
fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next().map(unescape_octal))
        .collect()
}

/// Undoes the kernel's `\ooo` escaping of spaces, tabs, newlines and backslashes.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// Write and verify
// ---------------------------------------------------------------------------

/// Makes written data durable; `fdatasync` for files and block devices.
pub trait SyncData {
    fn sync_data(&mut self) -> io::Result<()>;
}

impl SyncData for File {
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
fn read_full(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn blocks_for(len: u64, at: u64) -> usize {
    // At most BLOCK_SIZE, so the cast cannot truncate.
    (len - at).min(BLOCK_SIZE as u64) as usize
}

/// Copies `len` bytes of `src` to the start of `dst` in [`BLOCK_SIZE`] blocks,
/// syncing after each block and reporting progress on one line of `progress`.
pub fn write_image<S: Read, D: Write + Seek + SyncData>(
    src: &mut S,
    len: u64,
    dst: &mut D,
    progress: &mut dyn Write,
) -> Result<(), FlashError> {
    dst.seek(SeekFrom::Start(0))
        .map_err(|source| FlashError::Write { offset: 0, source })?;
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut done = 0u64;
    while done < len {
        let want = blocks_for(len, done);
        let got = read_full(src, &mut buf[..want]).map_err(|source| FlashError::ImageRead {
            offset: done,
            source,
        })?;
        if got < want {
            return Err(FlashError::ImageShort {
                expected: len,
                got: done + got as u64,
            });
        }
        let write_err = |source| FlashError::Write {
            offset: done,
            source,
        };
        dst.write_all(&buf[..want]).map_err(write_err)?;
        dst.flush().map_err(write_err)?;
        dst.sync_data().map_err(write_err)?;
        done += want as u64;
        // Progress is a courtesy: a closed stderr must not abort a half-written stick.
        let _ = write!(
            progress,
            "\rwritten {} of {} ({}%)",
            human_size(done),
            human_size(len),
            done * 100 / len
        );
        let _ = progress.flush();
    }
    let _ = writeln!(progress);
    Ok(())
}

/// Reads `len` bytes from the start of `dev` and compares them with `src`; the
/// first difference is an error naming its offset.
pub fn verify_image<S: Read, D: Read + Seek>(
    src: &mut S,
    len: u64,
    dev: &mut D,
) -> Result<(), FlashError> {
    dev.seek(SeekFrom::Start(0))
        .map_err(|source| FlashError::ReadBack { offset: 0, source })?;
    let mut expected = vec![0u8; BLOCK_SIZE];
    let mut found = vec![0u8; BLOCK_SIZE];
    let mut done = 0u64;
    while done < len {
        let want = blocks_for(len, done);
        let got =
            read_full(src, &mut expected[..want]).map_err(|source| FlashError::ImageRead {
                offset: done,
                source,
            })?;
        if got < want {
            return Err(FlashError::ImageShort {
                expected: len,
                got: done + got as u64,
            });
        }
        let got = read_full(dev, &mut found[..want]).map_err(|source| FlashError::ReadBack {
            offset: done,
            source,
        })?;
        if let Some(i) = (0..got).find(|&i| expected[i] != found[i]) {
            return Err(FlashError::VerifyMismatch {
                offset: done + i as u64,
                expected: expected[i],
                found: found[i],
            });
        }
        if got < want {
            return Err(FlashError::ReadBackShort {
                offset: done + got as u64,
            });
        }
        done += want as u64;
    }
    Ok(())
}

/// [`write_image`] then [`verify_image`] on the same handle. The real command
/// reopens the device between the two instead, so the read-back comes from the
/// device rather than the page cache.
pub fn write_and_verify<S: Read + Seek, D: Read + Write + Seek + SyncData>(
    src: &mut S,
    len: u64,
    dev: &mut D,
    progress: &mut dyn Write,
) -> Result<(), FlashError> {
    src.seek(SeekFrom::Start(0))
        .map_err(|source| FlashError::ImageRead { offset: 0, source })?;
    write_image(src, len, dev, progress)?;
    src.seek(SeekFrom::Start(0))
        .map_err(|source| FlashError::ImageRead { offset: 0, source })?;
    verify_image(src, len, dev)
}

// ---------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------

/// Parses `args` (after the subcommand) and flashes.
pub fn run(args: &[String]) -> Result<(), FlashError> {
    flash(&parse_args(args)?)
}

/// Checks the target, shows it, asks for confirmation, writes and verifies.
pub fn flash(opts: &FlashOptions) -> Result<(), FlashError> {
    let stdin = io::stdin();
    let interactive = stdin.is_terminal();
    let mut input = stdin.lock();
    let mut out = io::stderr();
    flash_with(
        opts,
        &SysRoot::host(),
        &HostNodes,
        interactive,
        &mut input,
        &mut out,
    )
}

fn open_image(path: &Path) -> Result<(File, u64), FlashError> {
    let image_err = |source| FlashError::Image {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(image_err)?;
    let meta = file.metadata().map_err(image_err)?;
    if !meta.is_file() {
        return Err(FlashError::ImageNotFile {
            path: path.to_path_buf(),
        });
    }
    if meta.len() == 0 {
        return Err(FlashError::EmptyImage {
            path: path.to_path_buf(),
        });
    }
    Ok((file, meta.len()))
}

/// [`flash`] with the system, stdin and output supplied by the caller.
fn flash_with(
    opts: &FlashOptions,
    sys: &SysRoot,
    nodes: &dyn NodeInspector,
    interactive: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), FlashError> {
    let device = &opts.device;
    let (mut image, len) = open_image(&opts.image)?;
    let info = sys.probe(device, nodes)?;
    check_target(&info, len)?;
    // The summary and messages are informational; failing to print them is not a
    // reason to stop, and confirmation fails on its own if the prompt cannot show.
    let _ = write!(out, "{}", info.describe(&opts.image, len));

    if opts.dry_run {
        let _ = writeln!(
            out,
            "dry run: would write {len} bytes to {} in {} blocks of 1 MiB with fdatasync, \
             then read them back and compare; nothing written",
            device.display(),
            len.div_ceil(BLOCK_SIZE as u64)
        );
        return Ok(());
    }
    if !opts.yes {
        confirm(&info, interactive, input, out)?;
    }

    // Time has passed (the user typed); the stick may have been automounted.
    let again = sys.probe(device, nodes)?;
    check_target(&again, len)?;
    if again.name != info.name || again.dev != info.dev {
        return Err(FlashError::DeviceChanged {
            device: device.clone(),
        });
    }

    let open_err = |source| FlashError::Open {
        device: device.clone(),
        source,
    };
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_EXCL)
        .open(device)
        .map_err(open_err)?;
    let opened = nodes.inspect_open(device, &dev).map_err(open_err)?;
    if opened.kind != NodeKind::BlockDevice || opened.dev != info.dev {
        return Err(FlashError::DeviceChanged {
            device: device.clone(),
        });
    }
    let real_size = dev.seek(SeekFrom::End(0)).map_err(open_err)?;
    if real_size < len {
        return Err(FlashError::TooSmall {
            device: device.clone(),
            device_bytes: real_size,
            image_bytes: len,
        });
    }

    write_image(&mut image, len, &mut dev, out)?;
    drop(dev);

    let _ = writeln!(out, "verifying {} bytes", len);
    let mut dev = File::open(device).map_err(open_err)?;
    image
        .seek(SeekFrom::Start(0))
        .map_err(|source| FlashError::ImageRead { offset: 0, source })?;
    verify_image(&mut image, len, &mut dev)?;
    let _ = writeln!(
        out,
        "done: {} written and verified on {}",
        human_size(len),
        device.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Cursor;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("flash-test-{}-{n}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn path(&self) -> &Path {
            &self.0
        }
        fn write(&self, rel: &str, contents: &str) {
            let p = self.0.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, contents).unwrap();
        }
        fn mkdir(&self, rel: &str) {
            fs::create_dir_all(self.0.join(rel)).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Fake file types: paths not listed are missing.
    #[derive(Default)]
    struct FakeNodes(HashMap<PathBuf, Node>);

    impl FakeNodes {
        fn add(mut self, path: &str, kind: NodeKind, dev: Option<DevNum>) -> Self {
            let p = PathBuf::from(path);
            self.0.insert(
                p.clone(),
                Node {
                    kind,
                    dev,
                    resolved: p,
                },
            );
            self
        }
        fn block(self, path: &str, major: u32, minor: u32) -> Self {
            self.add(path, NodeKind::BlockDevice, Some(DevNum { major, minor }))
        }
    }

    impl NodeInspector for FakeNodes {
        fn inspect(&self, path: &Path) -> io::Result<Node> {
            Ok(self.0.get(path).cloned().unwrap_or(Node {
                kind: NodeKind::Missing,
                dev: None,
                resolved: path.to_path_buf(),
            }))
        }
        fn inspect_open(&self, path: &Path, _file: &File) -> io::Result<Node> {
            self.inspect(path)
        }
    }

    const USB_DEVPATH: &str =
        "sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block";
    const SATA_DEVPATH: &str =
        "sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block";

    /// Builds a fake sysfs disk `name` with partitions `parts`, linked the way the
    /// kernel links it (`sys/block/<name>` -> `devices/.../block/<name>`).
    fn fake_disk(
        t: &TempDir,
        devpath: &str,
        name: &str,
        removable: bool,
        sectors: u64,
        dev: DevNum,
        parts: &[&str],
    ) {
        let DevNum {
            major,
            minor: first_minor,
        } = dev;
        let real = format!("{devpath}/{name}");
        t.mkdir(&real);
        t.write(
            &format!("{real}/removable"),
            if removable { "1\n" } else { "0\n" },
        );
        t.write(&format!("{real}/size"), &format!("{sectors}\n"));
        t.write(&format!("{real}/dev"), &format!("{major}:{first_minor}\n"));
        t.write(&format!("{real}/device/model"), "Cruzer Blade    \n");
        t.write(&format!("{real}/device/vendor"), "SanDisk \n");
        t.mkdir(&format!("{real}/holders"));
        t.mkdir("sys/block");
        t.mkdir("sys/class/block");
        t.mkdir("sys/dev/block");
        let abs = t.path().join(&real);
        symlink(&abs, t.path().join(format!("sys/block/{name}"))).unwrap();
        symlink(&abs, t.path().join(format!("sys/class/block/{name}"))).unwrap();
        symlink(
            &abs,
            t.path()
                .join(format!("sys/dev/block/{major}:{first_minor}")),
        )
        .unwrap();
        for (i, part) in parts.iter().enumerate() {
            let minor = first_minor + 1 + i as u32;
            let pdir = format!("{real}/{part}");
            t.write(&format!("{pdir}/partition"), &format!("{}\n", i + 1));
            t.write(&format!("{pdir}/dev"), &format!("{major}:{minor}\n"));
            t.mkdir(&format!("{pdir}/holders"));
            let pabs = t.path().join(&pdir);
            symlink(&pabs, t.path().join(format!("sys/class/block/{part}"))).unwrap();
            symlink(
                &pabs,
                t.path().join(format!("sys/dev/block/{major}:{minor}")),
            )
            .unwrap();
        }
    }

    const MOUNTS: &str =
        "sysfs /sys sysfs rw 0 0\n/dev/sda2 / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n";

    /// A fake host: internal `sda` (SATA, 8:0), USB stick `sdb` (8:16, 16 GiB,
    /// partitions sdb1 sdb2), with `sda2` mounted on `/`.
    fn fake_host(tag: &str) -> (TempDir, FakeNodes) {
        let t = TempDir::new(tag);
        fake_disk(
            &t,
            SATA_DEVPATH,
            "sda",
            false,
            1 << 30,
            DevNum { major: 8, minor: 0 },
            &["sda1", "sda2"],
        );
        fake_disk(
            &t,
            USB_DEVPATH,
            "sdb",
            true,
            32 << 20,
            DevNum {
                major: 8,
                minor: 16,
            },
            &["sdb1", "sdb2"],
        );
        t.write("proc/self/mounts", MOUNTS);
        t.write("proc/swaps", "Filename Type Size Used Priority\n");
        let nodes = FakeNodes::default()
            .block("/dev/sda", 8, 0)
            .block("/dev/sda1", 8, 1)
            .block("/dev/sda2", 8, 2)
            .block("/dev/sdb", 8, 16)
            .block("/dev/sdb1", 8, 17)
            .block("/dev/sdb2", 8, 18)
            .add(
                "/dev/ttyS0",
                NodeKind::CharDevice,
                Some(DevNum {
                    major: 4,
                    minor: 64,
                }),
            )
            .add("/home/me/notes.txt", NodeKind::RegularFile, None);
        (t, nodes)
    }

    fn probe(t: &TempDir, nodes: &FakeNodes, dev: &str) -> Result<DeviceInfo, FlashError> {
        SysRoot::new(t.path()).probe(Path::new(dev), nodes)
    }

    fn good_device() -> DeviceInfo {
        DeviceInfo {
            path: "/dev/sdb".into(),
            name: "sdb".into(),
            is_block_device: true,
            kind: NodeKind::BlockDevice,
            is_whole_disk: true,
            removable: true,
            usb_transport: true,
            size_bytes: 16 << 30,
            model: "Cruzer Blade".into(),
            vendor: "SanDisk".into(),
            dev: Some(DevNum {
                major: 8,
                minor: 16,
            }),
            ..DeviceInfo::default()
        }
    }

    const MIB: u64 = 1 << 20;

    // --- decision layer -------------------------------------------------------

    #[test]
    fn check_accepts_removable_unmounted_big_enough_disk() {
        check_target(&good_device(), 64 * MIB).unwrap();
    }

    #[test]
    fn check_refuses_non_block_device() {
        let dev = DeviceInfo {
            is_block_device: false,
            kind: NodeKind::RegularFile,
            ..good_device()
        };
        let err = check_target(&dev, 1).unwrap_err();
        assert!(matches!(
            err,
            FlashError::NotBlockDevice {
                kind: NodeKind::RegularFile,
                ..
            }
        ));
        assert!(err.to_string().contains("regular file"), "{err}");
    }

    #[test]
    fn check_refuses_partition() {
        let dev = DeviceInfo {
            is_partition: true,
            ..good_device()
        };
        assert!(matches!(
            check_target(&dev, 1),
            Err(FlashError::IsPartition { .. })
        ));
    }

    #[test]
    fn check_refuses_non_removable_non_usb() {
        let dev = DeviceInfo {
            removable: false,
            usb_transport: false,
            ..good_device()
        };
        let err = check_target(&dev, 1).unwrap_err();
        match &err {
            FlashError::NotRemovable { model, .. } => assert_eq!(model, "SanDisk Cruzer Blade"),
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("internal disk"));
    }

    #[test]
    fn check_accepts_usb_disk_reporting_not_removable() {
        let dev = DeviceInfo {
            removable: false,
            usb_transport: true,
            ..good_device()
        };
        check_target(&dev, 1).unwrap();
        let dev = DeviceInfo {
            removable: true,
            usb_transport: false,
            ..good_device()
        };
        check_target(&dev, 1).unwrap();
    }

    #[test]
    fn check_refuses_mounted_and_held() {
        let dev = DeviceInfo {
            mounted_partitions: vec!["/dev/sdb1 on /media/stick".into()],
            ..good_device()
        };
        let err = check_target(&dev, 1).unwrap_err();
        assert!(
            err.to_string().contains("/dev/sdb1 on /media/stick"),
            "{err}"
        );
        let dev = DeviceInfo {
            holders: vec!["sdb2 held by dm-0".into()],
            ..good_device()
        };
        assert!(matches!(
            check_target(&dev, 1),
            Err(FlashError::InUse { .. })
        ));
    }

    #[test]
    fn check_refuses_too_small_accepts_exact_fit() {
        let dev = DeviceInfo {
            size_bytes: 64 * MIB,
            ..good_device()
        };
        check_target(&dev, 64 * MIB).unwrap();
        let err = check_target(&dev, 64 * MIB + 1).unwrap_err();
        assert!(matches!(
            err,
            FlashError::TooSmall { device_bytes, image_bytes, .. }
                if device_bytes == 64 * MIB && image_bytes == 64 * MIB + 1
        ));
    }

    // --- probe layer ----------------------------------------------------------

    #[test]
    fn probe_fills_usb_stick() {
        let (t, nodes) = fake_host("usb");
        let info = probe(&t, &nodes, "/dev/sdb").unwrap();
        assert_eq!(info.name, "sdb");
        assert!(info.is_block_device && info.is_whole_disk && !info.is_partition);
        assert!(info.removable && info.usb_transport);
        assert_eq!(info.size_bytes, (32 << 20) * 512);
        assert_eq!(
            (info.vendor.as_str(), info.model.as_str()),
            ("SanDisk", "Cruzer Blade")
        );
        assert_eq!(
            info.dev,
            Some(DevNum {
                major: 8,
                minor: 16
            })
        );
        assert!(info.mounted_partitions.is_empty() && info.holders.is_empty());
        check_target(&info, 64 * MIB).unwrap();
        let shown = info.describe(Path::new("/out/uefi.img"), 64 * MIB);
        assert!(
            shown.contains("SanDisk Cruzer Blade") && shown.contains("16.0 GiB"),
            "{shown}"
        );
        assert!(
            shown.contains("/out/uefi.img") && shown.contains("64.0 MiB"),
            "{shown}"
        );
    }

    #[test]
    fn probe_refuses_internal_disk() {
        let (t, nodes) = fake_host("internal");
        t.write("proc/self/mounts", "");
        let info = probe(&t, &nodes, "/dev/sda").unwrap();
        assert!(!info.removable && !info.usb_transport);
        assert!(matches!(
            check_target(&info, 1),
            Err(FlashError::NotRemovable { .. })
        ));
    }

    #[test]
    fn probe_usb_rule_ignores_usb_in_root_path() {
        // A root prefix containing "/usb" must not make a SATA disk look USB.
        let t = TempDir::new("usbroot");
        let root = t.path().join("usbroot");
        let inner = TempDir(root.clone());
        fs::create_dir_all(&root).unwrap();
        fake_disk(
            &inner,
            SATA_DEVPATH,
            "sda",
            false,
            1 << 20,
            DevNum { major: 8, minor: 0 },
            &[],
        );
        inner.write("proc/self/mounts", "");
        let nodes = FakeNodes::default().block("/dev/sda", 8, 0);
        let info = SysRoot::new(&root)
            .probe(Path::new("/dev/sda"), &nodes)
            .unwrap();
        assert!(!info.usb_transport);
        std::mem::forget(inner); // removed with `t`
    }

    #[test]
    fn probe_accepts_usb_ssd_with_removable_zero() {
        let t = TempDir::new("usbssd");
        fake_disk(
            &t,
            USB_DEVPATH,
            "sdc",
            false,
            1 << 22,
            DevNum {
                major: 8,
                minor: 32,
            },
            &["sdc1"],
        );
        t.write("proc/self/mounts", MOUNTS);
        let nodes = FakeNodes::default().block("/dev/sdc", 8, 32);
        let info = probe(&t, &nodes, "/dev/sdc").unwrap();
        assert!(!info.removable && info.usb_transport);
        check_target(&info, MIB).unwrap();
    }

    #[test]
    fn probe_refuses_partition() {
        let (t, nodes) = fake_host("part");
        let info = probe(&t, &nodes, "/dev/sdb1").unwrap();
        assert!(info.is_partition);
        let err = check_target(&info, 1).unwrap_err();
        assert!(
            matches!(&err, FlashError::IsPartition { name, .. } if name == "sdb1"),
            "{err}"
        );
    }

    #[test]
    fn probe_refuses_missing_regular_and_char_device() {
        let (t, nodes) = fake_host("kinds");
        assert!(matches!(
            probe(&t, &nodes, "/dev/sdz"),
            Err(FlashError::DeviceMissing { .. })
        ));
        for (path, kind) in [
            ("/home/me/notes.txt", NodeKind::RegularFile),
            ("/dev/ttyS0", NodeKind::CharDevice),
        ] {
            let info = probe(&t, &nodes, path).unwrap();
            assert!(!info.is_block_device);
            let err = check_target(&info, 1).unwrap_err();
            assert!(matches!(err, FlashError::NotBlockDevice { kind: k, .. } if k == kind));
        }
    }

    #[test]
    fn probe_refuses_block_device_without_sysfs_disk() {
        let (t, nodes) = fake_host("nosys");
        let nodes = nodes.add("/dev/odd", NodeKind::BlockDevice, None);
        let info = probe(&t, &nodes, "/dev/odd").unwrap();
        assert!(matches!(
            check_target(&info, 1),
            Err(FlashError::NotWholeDisk { .. })
        ));
    }

    #[test]
    fn probe_finds_mounted_partition_and_whole_disk() {
        let (t, nodes) = fake_host("mounted");
        t.write(
            "proc/self/mounts",
            &format!("{MOUNTS}/dev/sdb1 /media/me/MY\\040STICK vfat rw 0 0\n"),
        );
        let info = probe(&t, &nodes, "/dev/sdb").unwrap();
        assert_eq!(
            info.mounted_partitions,
            vec!["/dev/sdb1 on /media/me/MY STICK"]
        );
        assert!(matches!(
            check_target(&info, 1),
            Err(FlashError::Mounted { .. })
        ));

        t.write(
            "proc/self/mounts",
            &format!("{MOUNTS}/dev/sdb /mnt iso9660 ro 0 0\n"),
        );
        let info = probe(&t, &nodes, "/dev/sdb").unwrap();
        assert_eq!(info.mounted_partitions, vec!["/dev/sdb on /mnt"]);
    }

    #[test]
    fn probe_mount_match_by_name_rule_and_by_number() {
        let (t, nodes) = fake_host("mountrule");
        // sdb5 is not in sysfs (yet), matched by the naming rule; sdbb1 and sda are other disks.
        t.write(
            "proc/self/mounts",
            &format!("{MOUNTS}/dev/sdbb1 /x ext4 rw 0 0\n/dev/sdb5 /y ext4 rw 0 0\n"),
        );
        let info = probe(&t, &nodes, "/dev/sdb").unwrap();
        assert_eq!(info.mounted_partitions, vec!["/dev/sdb5 on /y"]);

        // A by-label source resolving to 8:18 (sdb2).
        let nodes = nodes.block("/dev/disk/by-label/DATA", 8, 18);
        t.write(
            "proc/self/mounts",
            &format!("{MOUNTS}/dev/disk/by-label/DATA /data ext4 rw 0 0\n"),
        );
        let info = probe(&t, &nodes, "/dev/sdb").unwrap();
        assert_eq!(
            info.mounted_partitions,
            vec!["/dev/disk/by-label/DATA on /data"]
        );
    }

    #[test]
    fn probe_mount_nvme_style_names() {
        let t = TempDir::new("nvme");
        fake_disk(
            &t,
            USB_DEVPATH,
            "nvme0n1",
            true,
            1 << 22,
            DevNum {
                major: 259,
                minor: 0,
            },
            &["nvme0n1p1"],
        );
        // nvme0n11 is another namespace, not a partition of nvme0n1.
        t.write(
            "proc/self/mounts",
            "/dev/nvme0n11 /a ext4 rw 0 0\n/dev/nvme0n1p3 /b ext4 rw 0 0\n",
        );
        let nodes = FakeNodes::default().block("/dev/nvme0n1", 259, 0);
        let info = probe(&t, &nodes, "/dev/nvme0n1").unwrap();
        assert_eq!(info.mounted_partitions, vec!["/dev/nvme0n1p3 on /b"]);
        assert!(is_partition_name("mmcblk0p1", "mmcblk0"));
        assert!(!is_partition_name("mmcblk01", "mmcblk0"));
        assert!(is_partition_name("sdb12", "sdb"));
        assert!(!is_partition_name("sdb", "sdb") && !is_partition_name("sdbp1", "sdb"));
    }

    #[test]
    fn probe_finds_swap_and_holders() {
        let (t, nodes) = fake_host("swap");
        t.write(
            "proc/swaps",
            "Filename Type Size Used Priority\n/dev/sdb2 partition 1024 0 -2\n",
        );
        let info = probe(&t, &nodes, "/dev/sdb").unwrap();
        assert_eq!(info.mounted_partitions, vec!["/dev/sdb2 as swap"]);

        t.write("proc/swaps", "Filename Type Size Used Priority\n");
        let real = t.path().join(USB_DEVPATH).join("sdb/sdb1/holders/dm-0");
        fs::create_dir_all(real).unwrap();
        let info = probe(&t, &nodes, "/dev/sdb").unwrap();
        assert_eq!(info.holders, vec!["sdb1 held by dm-0"]);
        assert!(matches!(
            check_target(&info, 1),
            Err(FlashError::InUse { .. })
        ));
    }

    #[test]
    fn probe_fails_closed_without_mounts() {
        let (t, nodes) = fake_host("nomounts");
        fs::remove_file(t.path().join("proc/self/mounts")).unwrap();
        assert!(matches!(
            probe(&t, &nodes, "/dev/sdb"),
            Err(FlashError::Probe { .. })
        ));
    }

    #[test]
    fn probe_names_device_by_number_through_symlink() {
        let (t, nodes) = fake_host("byid");
        let nodes = nodes.block("/dev/disk/by-id/usb-SanDisk_Cruzer", 8, 16);
        let info = probe(&t, &nodes, "/dev/disk/by-id/usb-SanDisk_Cruzer").unwrap();
        assert_eq!(info.name, "sdb");
        check_target(&info, MIB).unwrap();
    }

    #[test]
    fn probe_refuses_too_small_disk() {
        let (t, nodes) = fake_host("small");
        let info = probe(&t, &nodes, "/dev/sdb").unwrap();
        assert!(matches!(
            check_target(&info, info.size_bytes + 1),
            Err(FlashError::TooSmall { .. })
        ));
    }

    #[test]
    fn mount_fields_unescape() {
        assert_eq!(unescape_octal(r"/a\040b\011c\134d\0"), "/a b\tc\\d\\0");
        let m = parse_mounts("/dev/sdb1 /m\\040x vfat rw 0 0\n\n");
        assert_eq!(m, vec![("/dev/sdb1".to_string(), "/m x".to_string())]);
    }

    // --- arguments and confirmation -------------------------------------------

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse_args_cases() {
        let o = parse_args(&args(&["img", "/dev/sdb"])).unwrap();
        assert_eq!(
            o,
            FlashOptions {
                image: "img".into(),
                device: "/dev/sdb".into(),
                yes: false,
                dry_run: false
            }
        );
        let o = parse_args(&args(&["--dry-run", "img", "--yes", "/dev/sdb"])).unwrap();
        assert!(o.yes && o.dry_run);
        assert!(matches!(
            parse_args(&args(&["img"])),
            Err(FlashError::MissingArgument { .. })
        ));
        assert!(matches!(
            parse_args(&args(&[])),
            Err(FlashError::MissingArgument { .. })
        ));
        assert!(matches!(
            parse_args(&args(&["img", "/dev/sdb", "--force"])),
            Err(FlashError::UnknownOption { .. })
        ));
        assert!(matches!(
            parse_args(&args(&["img", "/dev/sdb", "/dev/sdc"])),
            Err(FlashError::UnexpectedArgument { .. })
        ));
        let o = parse_args_with_default(&args(&["/dev/sdb"]), Some(Path::new("def.img"))).unwrap();
        assert_eq!(
            (o.image, o.device),
            (PathBuf::from("def.img"), PathBuf::from("/dev/sdb"))
        );
    }

    #[test]
    fn confirmation_rules() {
        let dev = good_device();
        let mut out = Vec::new();
        confirm(&dev, true, &mut Cursor::new("sdb\n"), &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("(sdb)"));

        let err = confirm(&dev, true, &mut Cursor::new("sda\n"), &mut Vec::new()).unwrap_err();
        assert!(
            matches!(&err, FlashError::NotConfirmed { typed, .. } if typed == "sda"),
            "{err}"
        );
        for typed in ["", "/dev/sdb\n", "yes\n", "SDB\n"] {
            let r = confirm(&dev, true, &mut Cursor::new(typed), &mut Vec::new());
            assert!(
                matches!(r, Err(FlashError::NotConfirmed { .. })),
                "{typed:?}"
            );
        }
        let r = confirm(&dev, false, &mut Cursor::new("sdb\n"), &mut Vec::new());
        assert!(matches!(r, Err(FlashError::NotInteractive { .. })));
    }

    // --- write and verify -----------------------------------------------------

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// A temporary file implementing the writer traits.
    fn temp_file(t: &TempDir, name: &str, contents: &[u8]) -> (PathBuf, File) {
        let p = t.path().join(name);
        fs::write(&p, contents).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        (p, f)
    }

    #[test]
    fn write_and_verify_to_temp_file() {
        let t = TempDir::new("write");
        let image = pattern(2 * BLOCK_SIZE + 12345);
        let len = image.len() as u64;
        // The "device" is bigger than the image and full of 0xee.
        let (path, mut dev) = temp_file(&t, "dev", &vec![0xee; 3 * BLOCK_SIZE]);
        let mut progress = Vec::new();
        write_and_verify(&mut Cursor::new(&image), len, &mut dev, &mut progress).unwrap();
        let written = fs::read(&path).unwrap();
        assert_eq!(&written[..image.len()], &image[..]);
        assert!(written[image.len()..].iter().all(|&b| b == 0xee));
        let progress = String::from_utf8(progress).unwrap();
        assert_eq!(progress.matches('\r').count(), 3, "{progress:?}");
        assert!(progress.contains("(100%)"));
    }

    /// Reads through to the inner device but flips one byte at `offset`.
    struct FlipOnRead<D> {
        inner: D,
        offset: u64,
    }

    impl<D: Read + Seek> Read for FlipOnRead<D> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let pos = self.inner.stream_position()?;
            let n = self.inner.read(buf)?;
            if (pos..pos + n as u64).contains(&self.offset) {
                buf[(self.offset - pos) as usize] ^= 0x40;
            }
            Ok(n)
        }
    }
    impl<D: Write> Write for FlipOnRead<D> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }
    impl<D: Seek> Seek for FlipOnRead<D> {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.inner.seek(pos)
        }
    }
    impl<D: SyncData> SyncData for FlipOnRead<D> {
        fn sync_data(&mut self) -> io::Result<()> {
            self.inner.sync_data()
        }
    }

    #[test]
    fn verify_reports_first_differing_offset() {
        let t = TempDir::new("flip");
        let image = pattern(BLOCK_SIZE + 5000);
        let len = image.len() as u64;
        for offset in [0, 4097, BLOCK_SIZE as u64 + 4999] {
            let (_, dev) = temp_file(&t, "dev", &vec![0; 2 * BLOCK_SIZE]);
            let mut dev = FlipOnRead { inner: dev, offset };
            let err = write_and_verify(&mut Cursor::new(&image), len, &mut dev, &mut io::sink())
                .unwrap_err();
            let expected = image[offset as usize];
            match err {
                FlashError::VerifyMismatch {
                    offset: o,
                    expected: e,
                    found,
                } => {
                    assert_eq!((o, e, found), (offset, expected, expected ^ 0x40));
                }
                other => panic!("{other}"),
            }
        }
        // A flip past the image length is outside what is verified.
        let (_, dev) = temp_file(&t, "dev", &vec![0; 2 * BLOCK_SIZE]);
        let mut dev = FlipOnRead {
            inner: dev,
            offset: len,
        };
        write_and_verify(&mut Cursor::new(&image), len, &mut dev, &mut io::sink()).unwrap();
    }

    #[test]
    fn verify_reports_short_device_and_short_image() {
        let image = pattern(3000);
        let err = verify_image(
            &mut Cursor::new(&image),
            3000,
            &mut Cursor::new(&image[..2000]),
        )
        .unwrap_err();
        assert!(matches!(err, FlashError::ReadBackShort { offset: 2000 }));

        let t = TempDir::new("short");
        let (_, mut dev) = temp_file(&t, "dev", &[]);
        let err =
            write_image(&mut Cursor::new(&image), 4000, &mut dev, &mut io::sink()).unwrap_err();
        assert!(matches!(
            err,
            FlashError::ImageShort {
                expected: 4000,
                got: 3000
            }
        ));
    }

    // --- the whole command on a fake host --------------------------------------

    /// A fake host whose `/dev/sdb` is a regular file at `<tmp>/sdb` posing as the
    /// block device 8:16, plus an image file.
    fn command_setup(tag: &str, image: &[u8]) -> (TempDir, FakeNodes, FlashOptions, PathBuf) {
        let (t, _) = fake_host(tag);
        let dev_path = t.path().join("sdb");
        fs::write(&dev_path, vec![0xaa; 2 * BLOCK_SIZE]).unwrap();
        let image_path = t.path().join("uefi.img");
        fs::write(&image_path, image).unwrap();
        let nodes = FakeNodes::default().block(dev_path.to_str().unwrap(), 8, 16);
        let opts = FlashOptions {
            image: image_path,
            device: dev_path.clone(),
            yes: false,
            dry_run: false,
        };
        (t, nodes, opts, dev_path)
    }

    fn run_fake(
        t: &TempDir,
        nodes: &FakeNodes,
        opts: &FlashOptions,
        interactive: bool,
        typed: &str,
    ) -> (Result<(), FlashError>, String) {
        let mut out = Vec::new();
        let r = flash_with(
            opts,
            &SysRoot::new(t.path()),
            nodes,
            interactive,
            &mut Cursor::new(typed),
            &mut out,
        );
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn command_dry_run_writes_nothing() {
        let image = pattern(BLOCK_SIZE + 1);
        let (t, nodes, mut opts, dev) = command_setup("dry", &image);
        opts.dry_run = true;
        let (r, out) = run_fake(&t, &nodes, &opts, false, "");
        r.unwrap();
        assert!(out.contains("dry run") && out.contains("2 blocks"), "{out}");
        assert!(fs::read(&dev).unwrap().iter().all(|&b| b == 0xaa));
    }

    #[test]
    fn command_refusals_write_nothing() {
        let image = pattern(BLOCK_SIZE + 1);
        let (t, nodes, opts, dev) = command_setup("refuse", &image);
        let untouched = || fs::read(&dev).unwrap().iter().all(|&b| b == 0xaa);

        let (r, _) = run_fake(&t, &nodes, &opts, true, "sda\n");
        assert!(matches!(r, Err(FlashError::NotConfirmed { .. })));
        assert!(untouched());

        let (r, _) = run_fake(&t, &nodes, &opts, false, "sdb\n");
        assert!(matches!(r, Err(FlashError::NotInteractive { .. })));
        assert!(untouched());

        t.write(
            "proc/self/mounts",
            &format!("{MOUNTS}/dev/sdb2 /media/x ext4 rw 0 0\n"),
        );
        let yes = FlashOptions {
            yes: true,
            ..opts.clone()
        };
        let (r, _) = run_fake(&t, &nodes, &yes, true, "");
        assert!(matches!(r, Err(FlashError::Mounted { .. })));
        assert!(untouched());
        t.write("proc/self/mounts", MOUNTS);

        let empty = t.path().join("empty.img");
        fs::write(&empty, b"").unwrap();
        let (r, _) = run_fake(
            &t,
            &nodes,
            &FlashOptions {
                image: empty,
                ..yes.clone()
            },
            true,
            "",
        );
        assert!(matches!(r, Err(FlashError::EmptyImage { .. })));
        assert!(untouched());

        // The opened handle must be the probed device.
        let other = FakeNodes::default().block(dev.to_str().unwrap(), 8, 16);
        struct Swapped(FakeNodes);
        impl NodeInspector for Swapped {
            fn inspect(&self, path: &Path) -> io::Result<Node> {
                self.0.inspect(path)
            }
            fn inspect_open(&self, path: &Path, _f: &File) -> io::Result<Node> {
                Ok(Node {
                    dev: Some(DevNum { major: 8, minor: 0 }),
                    ..self.0.inspect(path)?
                })
            }
        }
        let mut out = Vec::new();
        let r = flash_with(
            &yes,
            &SysRoot::new(t.path()),
            &Swapped(other),
            true,
            &mut Cursor::new(""),
            &mut out,
        );
        assert!(matches!(r, Err(FlashError::DeviceChanged { .. })));
        assert!(untouched());
    }

    #[test]
    fn command_writes_and_verifies_after_confirmation() {
        let image = pattern(BLOCK_SIZE + 777);
        let (t, nodes, opts, dev) = command_setup("ok", &image);
        let (r, out) = run_fake(&t, &nodes, &opts, true, "sdb\n");
        r.unwrap();
        assert!(
            out.contains("SanDisk Cruzer Blade") && out.contains("verified"),
            "{out}"
        );
        let written = fs::read(&dev).unwrap();
        assert_eq!(&written[..image.len()], &image[..]);
        assert!(written[image.len()..].iter().all(|&b| b == 0xaa));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(16 << 30), "16.0 GiB");
    }
}
