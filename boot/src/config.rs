//! The VM configuration file: TOML in, validated [`VmSpec`]s and image files out.
//!
//! A configuration lists VMs as `[[vm]]` tables (see `configs/default.toml` for
//! the commented reference):
//!
//! ```toml
//! [[vm]]
//! name = "alpha"
//! memory = "16M"         # K/M/G suffixes (binary), or bytes as an integer
//! cpus = [0]             # one vCPU per physical CPU listed; 0 is the boot CPU
//! image = "counter"      # a guest of this project, or "file:path/relative/to/this.toml"
//! slice_ms = 10          # or slice_us; 10 ms when neither is given
//! # host_base = 0x4000000  fixed host-physical placement (2 MiB aligned)
//! # entry = 0x7c00         entry point (default: the ELF entry, or load_addr)
//! # load_addr = 0x7c00     where a flat (non-ELF) image is copied; required for those
//! # mode = "long64"        or "real16" (flat images only)
//! # on_reboot = "stop"     or "restart": what a guest's reset (triple fault) does
//!
//! [[vm]]                 # a kernel instead of an image
//! name = "linux"
//! memory = "256M"
//! cpus = [1]
//! kernel = "file:vmlinuz"          # a Linux bzImage or a Multiboot kernel
//! initrd = "file:initramfs.cpio.gz" # Linux only
//! cmdline = "console=ttyS0"        # Linux and Multiboot
//! # on_reboot = "restart"            the default for kernels
//! ```
//!
//! A VM gives exactly one of `image` and `kernel`. A kernel's format is found
//! from its bytes ([`ImageKind::detect_kernel`]: a bzImage by "HdrS" at 0x202,
//! else a Multiboot kernel by its header in the first 8 KiB, an ELF32 one
//! included) and sets the VM's mode ([`GuestMode::Linux64`] or
//! [`GuestMode::Protected32`]); `mode`, `entry` and `load_addr` are refused
//! with it. An initrd is packed as raw bytes ([`ImageKind::Flat`]).
//! `on_reboot` defaults to [`RebootPolicy::default_for`] the VM's mode.
//!
//! [`load`] reads the file (a regular file of at most [`MAX_CONFIG_BYTES`]),
//! rejects unknown keys and syntax errors with their line and column, resolves
//! each image, kernel and initrd (project guests through the caller's
//! resolver, `file:` paths relative to the configuration file), reads the
//! files (once per distinct file; regular files only, no larger than the
//! memory of the VMs that use them), and runs [`hvcore::config::validate`],
//! the rules the kernel applies again, with the images parsed by the kernel's
//! own loader, kernels planned by its boot-protocol loaders, and the machine
//! limits the caller knows ([`MachineHint`]). Every problem is reported at
//! once, each naming the VM and the field; a problem shared by many VMs is
//! shown once with a count.
//!
//! This file uses only `hvcore`, `serde`, `toml` and `std`.

use hvcore::config::{
    self, ConfigError, GuestMode, HostRange, ImageInfo, ImageKind, MachineLimits, MemoryLimits,
    Problem, RebootPolicy, Size, VmLabel, VmSpec, GIB, MEMORY_ALIGN, MIB, MIN_MEMORY,
};
use hvcore::package::{BootOptions, Command, Image, Package};
use hvcore::text::{Escaped, EscapedLines};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::files::{self, ReadError};

/// Slice used when a VM gives neither `slice_ms` nor `slice_us`.
pub const DEFAULT_SLICE_US: u32 = 10_000;
/// Prefix of an image reference that is a file path rather than a project guest.
pub const FILE_PREFIX: &str = "file:";
/// The largest configuration file read (a few hundred VMs' worth of text).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// The largest image, kernel or initrd file read, whatever the VM's memory
/// (each is also limited to the memory of the VMs that use it).
pub const MAX_IMAGE_BYTES: u64 = GIB;
/// Memory of an emulated machine that VMs cannot have: firmware, the
/// bootloader, the hypervisor's image, heap and page tables. An estimate; the
/// kernel checks against the real figure.
pub const MACHINE_RESERVE: u64 = 64 * MIB;
/// The boot package's own bytes besides the images (tables, padding), at most.
pub const PACKAGE_OVERHEAD: u64 = 64 * 1024;

/// Turns the name of a guest built by this project into the path of its ELF file.
pub type Resolver<'a> = &'a dyn Fn(&str) -> Result<PathBuf, String>;

/// What the host knows about the machine the VMs will run on, and from which
/// option: nothing (`check-config FILE`), a CPU count (`--cpus`, `--smp`), a
/// memory size (`--mem`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineHint {
    /// CPU count, and the option that gave it.
    pub cpus: Option<(u32, &'static str)>,
    /// Memory in MiB, and the option that gave it.
    pub memory_mib: Option<(u32, &'static str)>,
}

impl MachineHint {
    /// Nothing known.
    pub const NONE: MachineHint = MachineHint {
        cpus: None,
        memory_mib: None,
    };

    /// Only the CPU count is known (`--cpus N`).
    pub fn cpus(count: u32) -> MachineHint {
        MachineHint {
            cpus: Some((count, "--cpus")),
            memory_mib: None,
        }
    }

    /// The physical ranges where RAM can be on a machine of `bytes`: below
    /// 3 GiB, and above 4 GiB for what does not fit below (QEMU's q35 and
    /// Bochs put RAM there). The host cannot know the real map; this only
    /// refuses placements that cannot be RAM at all.
    fn ram_ranges(bytes: u64) -> Vec<HostRange> {
        let low_end = bytes.min(3 * GIB);
        let mut ranges = vec![HostRange {
            start: 0,
            end: low_end,
        }];
        if bytes > 2 * GIB {
            ranges.push(HostRange {
                start: 4 * GIB,
                end: 4 * GIB + bytes,
            });
        }
        ranges
    }
}

/// A configuration that passed every host-side check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedConfig {
    /// The VMs, in file order; `image` indexes `images`.
    pub vms: Vec<VmSpec>,
    /// The distinct image files to pack.
    pub images: Vec<ImageFile>,
}

/// One image file to pack: an image, a kernel or an initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// The reference as first written in the configuration (`counter`, `file:x.bin`).
    pub name: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// What it is: for an image [`ImageKind::detect`], for a kernel
    /// [`ImageKind::detect_kernel`] (else what `detect` says, which the
    /// kernel checks refuse), [`ImageKind::Flat`] for an initrd. A file used
    /// in two ways is packed once per kind.
    pub kind: ImageKind,
    /// The file's contents.
    pub data: Vec<u8>,
}

impl ImageFile {
    /// What the validation rules take.
    pub fn info(&self) -> ImageInfo<'_> {
        ImageInfo {
            name: &self.name,
            kind: self.kind,
            data: &self.data,
        }
    }
}

impl LoadedConfig {
    /// A boot package for these VMs, ready for [`hvcore::package::encode`].
    pub fn package(&self, command: Command, options: BootOptions) -> Package<'_> {
        Package {
            command,
            options,
            vms: self.vms.clone(),
            images: self
                .images
                .iter()
                .map(|i| Image {
                    name: &i.name,
                    kind: i.kind,
                    data: &i.data,
                })
                .collect(),
        }
    }

    /// The image table as [`hvcore::config::validate`] takes it.
    pub fn image_infos(&self) -> Vec<ImageInfo<'_>> {
        self.images.iter().map(ImageFile::info).collect()
    }
}

/// A path shown in a message: control characters escaped.
pub fn shown(path: &Path) -> String {
    Escaped(&path.display().to_string()).to_string()
}

/// Why a configuration file was refused.
#[derive(Debug)]
pub enum ConfigFileError {
    /// The file could not be read.
    Read {
        /// The configuration file.
        path: PathBuf,
        /// Why.
        error: ReadError,
    },
    /// Not valid TOML, or keys or values that do not fit the schema.
    Syntax {
        /// The configuration file.
        path: PathBuf,
        /// The parser's message, with line, column and the offending line.
        message: String,
    },
    /// Well-formed, but the VMs break the rules.
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// Every problem found, in VM order.
        problems: Vec<FileProblem>,
        /// What the machine limits were, when some were known.
        machine: Option<String>,
    },
}

/// A problem shared by more VMs than this is shown once, with a count.
pub const SHOWN_REPEATS: usize = 3;

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigFileError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", shown(path))
            }
            ConfigFileError::Syntax { path, message } => {
                write!(f, "{}: {}", shown(path), EscapedLines(message.trim_end()))
            }
            ConfigFileError::Invalid {
                path,
                problems,
                machine,
            } => {
                let n = problems.len();
                write!(
                    f,
                    "{}: {n} problem{}:",
                    shown(path),
                    if n == 1 { "" } else { "s" }
                )?;
                let details: Vec<String> = problems.iter().map(FileProblem::detail).collect();
                let mut count: HashMap<&str, usize> = HashMap::new();
                for d in &details {
                    *count.entry(d).or_default() += 1;
                }
                let mut done: HashSet<&str> = HashSet::new();
                for (p, d) in problems.iter().zip(&details) {
                    let n = count[d.as_str()];
                    if n <= SHOWN_REPEATS || p.label().is_none() {
                        write!(f, "\n  {p}")?;
                    } else if done.insert(d) {
                        write!(
                            f,
                            "\n  {p}\n  ... and {} more VMs with the same problem",
                            n - 1
                        )?;
                    }
                }
                if let Some(machine) = machine {
                    write!(f, "\n  (checked against {machine})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigFileError::Read { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// One problem found after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileProblem {
    /// Both `slice_ms` and `slice_us` given.
    SliceTwice {
        /// How the VM is shown (`vm "alpha"` or `vm #2`).
        vm: String,
    },
    /// The resolver does not know the guest.
    ImageUnknown {
        /// How the VM is shown.
        vm: String,
        /// The key: `image`, `kernel` or `initrd`.
        field: &'static str,
        /// The reference as written.
        image: String,
        /// The resolver's explanation.
        reason: String,
    },
    /// The image, kernel or initrd file could not be read.
    ImageUnreadable {
        /// How the VM is shown.
        vm: String,
        /// The key: `image`, `kernel` or `initrd`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Keys that do not go together, or a key missing (`image` or `kernel`).
    Keys {
        /// How the VM is shown.
        vm: String,
        /// The key the problem is charged to.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The images would make a boot package the machine cannot hold.
    PackageTooLarge {
        /// Estimated package size in bytes.
        package: u64,
        /// The machine's memory in bytes.
        machine: u64,
        /// The option that gave the machine's memory.
        from: &'static str,
    },
    /// A rule of [`hvcore::config`] is broken.
    Config(ConfigError),
}

impl FileProblem {
    /// How the problem names its VM (`vm "alpha"`), if it is about one.
    pub fn label(&self) -> Option<String> {
        match self {
            FileProblem::SliceTwice { vm }
            | FileProblem::ImageUnknown { vm, .. }
            | FileProblem::ImageUnreadable { vm, .. }
            | FileProblem::Keys { vm, .. } => Some(vm.clone()),
            FileProblem::Config(ConfigError::Vm(e)) => Some(e.label().to_string()),
            FileProblem::Config(ConfigError::NoVms) | FileProblem::PackageTooLarge { .. } => None,
        }
    }

    /// The message without the VM's label: the same for the same mistake in
    /// different VMs.
    pub fn detail(&self) -> String {
        match self {
            FileProblem::SliceTwice { .. } => {
                "slice: give slice_ms or slice_us, not both".to_string()
            }
            FileProblem::ImageUnknown {
                field,
                image,
                reason,
                ..
            } => {
                format!("{field}: {:?}: {reason}", image)
            }
            FileProblem::ImageUnreadable {
                field,
                path,
                reason,
                ..
            } => {
                format!("{field}: cannot read {}: {reason}", shown(path))
            }
            FileProblem::Keys { field, reason, .. } => format!("{field}: {reason}"),
            FileProblem::PackageTooLarge {
                package,
                machine,
                from,
            } => format!(
                "the boot package would take {}; with {} for firmware and hypervisor it does \
                 not fit the machine's {} ({from})",
                Size(package.next_multiple_of(MIB)),
                Size(MACHINE_RESERVE),
                Size(*machine)
            ),
            FileProblem::Config(ConfigError::NoVms) => ConfigError::NoVms.to_string(),
            FileProblem::Config(ConfigError::Vm(e)) => match e.problem.field() {
                Some(field) => format!("{}: {}", field.key(), e.problem),
                None => e.problem.to_string(),
            },
        }
    }
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.label() {
            Some(label) => write!(f, "{label}: {}", self.detail()),
            None => write!(f, "{}", self.detail()),
        }
    }
}

/// Reads, parses and validates the configuration at `path` (a regular file of
/// at most [`MAX_CONFIG_BYTES`]).
///
/// `machine` is what the caller knows about the machine (`--cpus`, `--smp`,
/// `--mem`); without it only machine-independent rules apply. `resolve` maps
/// a project guest's name to its image file.
pub fn load(
    path: &Path,
    machine: &MachineHint,
    resolve: Resolver<'_>,
) -> Result<LoadedConfig, ConfigFileError> {
    let text = files::read_text_bounded(path, MAX_CONFIG_BYTES).map_err(|error| {
        ConfigFileError::Read {
            path: path.to_path_buf(),
            error,
        }
    })?;
    parse(&text, path, machine, resolve)
}

/// Like [`load`] for text already read; `path` names the file in messages and
/// anchors `file:` image paths.
pub fn parse(
    text: &str,
    path: &Path,
    machine: &MachineHint,
    resolve: Resolver<'_>,
) -> Result<LoadedConfig, ConfigFileError> {
    let file: FileToml = toml::from_str(text).map_err(|e| ConfigFileError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let base_dir = path.parent().unwrap_or(Path::new("."));

    // (VM index or None for the whole file, problem), sorted by VM at the end.
    let mut problems: Vec<(Option<usize>, FileProblem)> = Vec::new();
    let labels: Vec<String> = file
        .vm
        .iter()
        .enumerate()
        .map(|(index, vm)| vm_label(index, &vm.name))
        .collect();

    // What each VM boots: `image` or `kernel` (exactly one), and an initrd.
    let mains: Vec<Option<(Role, &str)>> = file
        .vm
        .iter()
        .enumerate()
        .map(|(index, vm)| {
            let keys = |field, reason| {
                (
                    Some(index),
                    FileProblem::Keys {
                        vm: labels[index].clone(),
                        field,
                        reason,
                    },
                )
            };
            match (&vm.image, &vm.kernel) {
                (Some(image), None) => Some((Role::Image, image.as_str())),
                (None, Some(kernel)) => {
                    if vm.mode.is_some() {
                        problems.push(keys("mode", MODE_WITH_KERNEL));
                    }
                    Some((Role::Kernel, kernel.as_str()))
                }
                (Some(_), Some(_)) => {
                    problems.push(keys("kernel", "give image or kernel, not both"));
                    None
                }
                (None, None) => {
                    problems.push(keys("image", NO_IMAGE));
                    None
                }
            }
        })
        .collect();

    // Resolve every reference, then read each distinct file once, with a size
    // limit from the largest VM that uses it.
    struct Distinct {
        key: PathBuf,
        path: PathBuf,
        limit: u64,
        /// The bytes, or why they were not read: the size when too large,
        /// else the error.
        data: Result<Vec<u8>, Result<u64, String>>,
    }
    let mut distinct: Vec<Distinct> = Vec::new();
    let mut use_file = |reference: &str, memory: u64| {
        resolve_image(reference, base_dir, resolve).map(|path| {
            let key = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            let limit = memory.clamp(MIN_MEMORY, MAX_IMAGE_BYTES);
            match distinct.iter().position(|d| d.key == key) {
                Some(i) => {
                    distinct[i].limit = distinct[i].limit.max(limit);
                    i
                }
                None => {
                    distinct.push(Distinct {
                        key,
                        path,
                        limit,
                        data: Err(Err("not read".to_string())),
                    });
                    distinct.len() - 1
                }
            }
        })
    };
    // Per VM: the main file (image or kernel) and the initrd file, each as a
    // distinct-file index or the resolver's refusal.
    let mut uses: Vec<[Option<Result<usize, String>>; 2]> = Vec::with_capacity(file.vm.len());
    for (vm, main) in file.vm.iter().zip(&mains) {
        let memory = vm.memory.0;
        uses.push([
            main.map(|(_, reference)| use_file(reference, memory)),
            vm.initrd
                .as_deref()
                .map(|reference| use_file(reference, memory)),
        ]);
    }
    for d in &mut distinct {
        d.data = files::read_bounded(&d.path, d.limit).map_err(|e| match e {
            ReadError::TooLarge { len, .. } => Ok(len),
            e => Err(e.to_string()),
        });
    }

    // The image table: one entry per distinct file and kind, in the order of
    // first use.
    let mut images: Vec<ImageFile> = Vec::new();
    let mut entries: HashMap<(usize, ImageKind), usize> = HashMap::new();
    let mut unresolved = vec![[false; 2]; file.vm.len()];
    let mut vms = Vec::with_capacity(file.vm.len());
    for (index, vm) in file.vm.iter().enumerate() {
        let label = &labels[index];
        let slice_us = match (vm.slice_ms, vm.slice_us) {
            (Some(_), Some(_)) => {
                problems.push((Some(index), FileProblem::SliceTwice { vm: label.clone() }));
                DEFAULT_SLICE_US
            }
            (Some(ms), None) => ms.saturating_mul(1000),
            (None, Some(us)) => us,
            (None, None) => DEFAULT_SLICE_US,
        };
        // Neither or both of image and kernel: a kernel when kernel keys say so.
        let role = match mains[index] {
            Some((role, _)) => role,
            None if vm.kernel.is_some() || vm.initrd.is_some() || vm.cmdline.is_some() => {
                Role::Kernel
            }
            None => Role::Image,
        };
        let mut table_index =
            |slot: usize, role: Role, reference: &str| -> Option<(u32, ImageKind)> {
                let field = role.field();
                let problem = match uses[index][slot].as_ref()? {
                    Err(reason) => FileProblem::ImageUnknown {
                        vm: label.clone(),
                        field,
                        image: reference.to_string(),
                        reason: reason.clone(),
                    },
                    Ok(d) => match &distinct[*d].data {
                        Ok(data) => {
                            let kind = role.kind(data);
                            let i = *entries.entry((*d, kind)).or_insert_with(|| {
                                images.push(ImageFile {
                                    name: reference.to_string(),
                                    path: distinct[*d].path.clone(),
                                    kind,
                                    data: data.clone(),
                                });
                                images.len() - 1
                            });
                            return Some((u32::try_from(i).unwrap_or(u32::MAX), kind));
                        }
                        Err(failure) => FileProblem::ImageUnreadable {
                            vm: label.clone(),
                            field,
                            path: distinct[*d].path.clone(),
                            reason: match failure {
                                Ok(len) if *len > vm.memory.0 => format!(
                                    "it holds {}, more than the VM's {} of memory",
                                    Size(*len),
                                    Size(vm.memory.0)
                                ),
                                Ok(len) => format!(
                                    "it holds {}, more than the limit of {} per file",
                                    Size(*len),
                                    Size(MAX_IMAGE_BYTES)
                                ),
                                Err(reason) => reason.clone(),
                            },
                        },
                    },
                };
                problems.push((Some(index), problem));
                None
            };
        let main = match mains[index] {
            Some((role, reference)) => table_index(0, role, reference),
            None => None,
        };
        let initrd = match vm.initrd.as_deref() {
            Some(reference) => {
                let found = table_index(1, Role::Initrd, reference);
                unresolved[index][1] = found.is_none();
                Some(found.map_or(u32::MAX, |(i, _)| i))
            }
            None => None,
        };
        unresolved[index][0] = main.is_none();
        let mode = match role {
            Role::Kernel => main
                .and_then(|(_, kind)| kind.kernel_mode())
                .unwrap_or(GuestMode::Linux64),
            _ => match vm.mode.unwrap_or_default() {
                ModeToml::Long64 => GuestMode::Long64,
                ModeToml::Real16 => GuestMode::Real16,
            },
        };
        vms.push(VmSpec {
            name: vm.name.clone(),
            memory_bytes: vm.memory.0,
            host_base: vm.host_base.map(|b| b.0),
            cpus: vm.cpus.clone(),
            image: main.map_or(u32::MAX, |(i, _)| i),
            slice_us,
            entry: vm.entry,
            load_addr: vm.load_addr,
            mode,
            initrd,
            cmdline: vm.cmdline.clone().unwrap_or_default(),
            on_reboot: match vm.on_reboot {
                Some(RebootToml::Stop) => RebootPolicy::Stop,
                Some(RebootToml::Restart) => RebootPolicy::Restart,
                None => RebootPolicy::default_for(mode),
            },
        });
    }

    let infos: Vec<ImageInfo<'_>> = images.iter().map(ImageFile::info).collect();
    let package_estimate = images
        .iter()
        .map(|i| i.data.len() as u64)
        .sum::<u64>()
        .saturating_add(PACKAGE_OVERHEAD);
    let (limits, machine_note, too_large) = machine_limits(machine, package_estimate);
    if let Some(problem) = too_large {
        problems.push((None, problem));
    }
    if let Err(errors) = config::validate(&vms, &infos, &limits) {
        for error in errors {
            let index = match &error {
                ConfigError::NoVms => None,
                ConfigError::Vm(e) => {
                    // Already reported as unresolved, with the reason.
                    let [main, initrd] = unresolved[e.index];
                    let missing = match e.problem {
                        Problem::ImageMissing { .. } | Problem::KernelMissing { .. } => main,
                        Problem::InitrdMissing { .. } => initrd,
                        _ => false,
                    };
                    if missing {
                        continue;
                    }
                    Some(e.index)
                }
            };
            problems.push((index, FileProblem::Config(error)));
        }
    }
    if problems.is_empty() {
        Ok(LoadedConfig { vms, images })
    } else {
        problems.sort_by_key(|(index, _)| *index);
        Err(ConfigFileError::Invalid {
            path: path.to_path_buf(),
            problems: problems.into_iter().map(|(_, p)| p).collect(),
            machine: machine_note,
        })
    }
}

/// The limits `validate` applies for `machine`, a description of them for
/// messages, and a problem when the boot package alone would not fit.
fn machine_limits(
    machine: &MachineHint,
    package: u64,
) -> (MachineLimits, Option<String>, Option<FileProblem>) {
    let mut limits = MachineLimits {
        cpu_count: machine.cpus.map(|(n, _)| n),
        memory: None,
    };
    let mut notes = Vec::new();
    if let Some((n, from)) = machine.cpus {
        notes.push(format!("{n} CPU(s) ({from} {n})"));
    }
    let mut too_large = None;
    if let Some((mib, from)) = machine.memory_mib {
        let bytes = u64::from(mib) * MIB;
        match bytes.checked_sub(MACHINE_RESERVE.saturating_add(package)) {
            None => {
                too_large = Some(FileProblem::PackageTooLarge {
                    package,
                    machine: bytes,
                    from,
                })
            }
            Some(left) => {
                // Whole 2 MiB pages, as guest memory is allocated.
                let usable = left - left % MEMORY_ALIGN;
                notes.push(format!(
                    "a machine of {} ({from} {mib}): about {} for VMs after {} for firmware and \
                     hypervisor and {} of boot package",
                    Size(bytes),
                    Size(usable),
                    Size(MACHINE_RESERVE),
                    Size(package.next_multiple_of(MIB))
                ));
                limits.memory = Some(MemoryLimits {
                    usable_bytes: usable,
                    usable_ranges: MachineHint::ram_ranges(bytes),
                });
            }
        }
    }
    let note = (!notes.is_empty()).then(|| notes.join(" and "));
    (limits, note, too_large)
}

/// How messages name a VM: by name (escaped), or by 1-based position when it
/// has none.
fn vm_label(index: usize, name: &str) -> String {
    VmLabel { index, name }.to_string()
}

/// Why `mode` is refused with `kernel`.
const MODE_WITH_KERNEL: &str = "a kernel's mode follows from its format (linux for a bzImage, \
     protected32 for a Multiboot kernel); remove mode";
/// Why a VM without `image` and `kernel` is refused.
const NO_IMAGE: &str = "missing: give image (a guest of this project or a file) or kernel \
     (a Linux bzImage or a Multiboot kernel)";

/// What a file reference of a VM is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `image =`: ELF or flat.
    Image,
    /// `kernel =`: a bzImage or a Multiboot kernel.
    Kernel,
    /// `initrd =`: raw bytes.
    Initrd,
}

impl Role {
    /// The configuration key.
    fn field(self) -> &'static str {
        match self {
            Role::Image => "image",
            Role::Kernel => "kernel",
            Role::Initrd => "initrd",
        }
    }

    /// The kind a file used this way is packed as.
    fn kind(self, data: &[u8]) -> ImageKind {
        match self {
            Role::Image => ImageKind::detect(data),
            Role::Kernel => {
                ImageKind::detect_kernel(data).unwrap_or_else(|| ImageKind::detect(data))
            }
            Role::Initrd => ImageKind::Flat,
        }
    }
}

fn resolve_image(image: &str, base_dir: &Path, resolve: Resolver<'_>) -> Result<PathBuf, String> {
    match image.strip_prefix(FILE_PREFIX) {
        Some("") => Err("file: needs a path".to_string()),
        Some(relative) => Ok(base_dir.join(relative)),
        None => resolve(image),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    vm: Vec<VmToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmToml {
    name: String,
    memory: ByteSize,
    #[serde(default)]
    host_base: Option<ByteSize>,
    cpus: Vec<u32>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    kernel: Option<String>,
    #[serde(default)]
    initrd: Option<String>,
    #[serde(default)]
    cmdline: Option<String>,
    #[serde(default)]
    on_reboot: Option<RebootToml>,
    #[serde(default)]
    slice_ms: Option<u32>,
    #[serde(default)]
    slice_us: Option<u32>,
    #[serde(default)]
    entry: Option<u64>,
    #[serde(default)]
    load_addr: Option<u64>,
    #[serde(default)]
    mode: Option<ModeToml>,
}

/// The modes a configuration may name; kernel modes follow from the kernel.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ModeToml {
    #[default]
    Long64,
    Real16,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RebootToml {
    Stop,
    Restart,
}

/// A byte count written as an integer or as a string with a binary suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ByteSize(u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count such as 16777216 or \"16M\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative; sizes are byte counts")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Parses `"16M"`, `"16MiB"`, `"512K"`, `"1G"` or plain digits (bytes). Units are
/// binary: `M` is 2^20.
fn parse_size(text: &str) -> Result<u64, String> {
    let bad =
        || format!("{text:?} is not a size: use bytes, or a number with K, M or G (binary units)");
    let s = text.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(bad());
    }
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(bad()),
    };
    let too_large = || format!("{text:?} is too large");
    let n: u64 = digits.parse().map_err(|_| too_large())?;
    n.checked_mul(1u64 << shift).ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scratch directory with guest files: `counter.elf` (ELF), `boot.bin`
    /// (512-byte flat), `three.bin` (3 MiB flat), removed on drop.
    struct Scratch {
        dir: PathBuf,
    }

    impl Scratch {
        fn new() -> Scratch {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "hv-boot-config-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            let elf = hvcore::image::minimal_elf(0x10_0000, &[(0x10_0000, &[0x90; 64], 0x1_0000)]);
            fs::write(dir.join("counter.elf"), elf).unwrap();
            fs::write(dir.join("boot.bin"), [0x90u8; 512]).unwrap();
            fs::write(dir.join("three.bin"), vec![0u8; 3 * MIB as usize]).unwrap();
            Scratch { dir }
        }

        fn config_path(&self) -> PathBuf {
            self.dir.join("vms.toml")
        }

        /// Project guests: `counter` exists, `ghost` resolves to a missing file.
        fn resolve(&self, name: &str) -> Result<PathBuf, String> {
            match name {
                "counter" => Ok(self.dir.join("counter.elf")),
                "ghost" => Ok(self.dir.join("ghost.elf")),
                _ => Err("no such guest (known: counter, ghost)".to_string()),
            }
        }

        fn parse(&self, text: &str, cpus: Option<u32>) -> Result<LoadedConfig, ConfigFileError> {
            let machine = cpus.map(MachineHint::cpus).unwrap_or_default();
            self.parse_on(text, &machine)
        }

        fn parse_on(
            &self,
            text: &str,
            machine: &MachineHint,
        ) -> Result<LoadedConfig, ConfigFileError> {
            parse(text, &self.config_path(), machine, &|name| {
                self.resolve(name)
            })
        }

        /// The problems' messages of a configuration that must be invalid.
        fn problems(&self, text: &str, cpus: Option<u32>) -> Vec<String> {
            match self.parse(text, cpus) {
                Err(ConfigFileError::Invalid { problems, .. }) => {
                    problems.iter().map(|p| p.to_string()).collect()
                }
                other => panic!("expected validation problems, got {other:?}"),
            }
        }

        /// The parser's message of a configuration that must not parse.
        fn syntax(&self, text: &str) -> String {
            match self.parse(text, None) {
                Err(ConfigFileError::Syntax { message, .. }) => message,
                other => panic!("expected a syntax error, got {other:?}"),
            }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    /// One VM with `extra` lines added to a valid table.
    fn vm(name: &str, extra: &str) -> String {
        format!("[[vm]]\nname = \"{name}\"\nmemory = \"16M\"\ncpus = [0]\nimage = \"counter\"\n{extra}\n")
    }

    /// A valid VM whose `key = ...` line is replaced by `line`.
    fn vm_with(name: &str, key: &str, line: &str) -> String {
        vm(name, "")
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{key} =")) {
                    line
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }

    #[test]
    fn default_config_is_valid() {
        let s = Scratch::new();
        let loaded = s
            .parse(include_str!("../configs/default.toml"), Some(2))
            .unwrap();
        let names: Vec<&str> = loaded.vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["alpha", "beta", "gamma"]);
        assert_eq!(loaded.images.len(), 1, "one shared image");
        assert!(loaded
            .vms
            .iter()
            .all(|v| v.image == 0 && v.memory_bytes == 16 * MIB && v.slice_us == 10_000));
        assert_eq!(loaded.vms[2].cpus, [1]);
        assert_eq!(loaded.images[0].kind, ImageKind::Elf);
    }

    #[test]
    fn load_reads_the_file_and_anchors_file_paths() {
        let s = Scratch::new();
        let text = vm(
            "a",
            "image = \"file:boot.bin\"\nload_addr = 0x7c00\nmode = \"real16\"",
        )
        .replace("image = \"counter\"\n", "");
        fs::write(s.config_path(), text).unwrap();
        let loaded = load(&s.config_path(), &MachineHint::NONE, &|n| s.resolve(n)).unwrap();
        assert_eq!(loaded.images[0].path, s.dir.join("boot.bin"));
        assert_eq!(loaded.images[0].kind, ImageKind::Flat);
        assert_eq!(loaded.vms[0].mode, GuestMode::Real16);
        assert_eq!(loaded.vms[0].load_addr, Some(0x7c00));

        let missing = s.dir.join("nope.toml");
        let err = load(&missing, &MachineHint::NONE, &|n| s.resolve(n)).unwrap_err();
        assert!(matches!(err, ConfigFileError::Read { .. }));
        assert_eq!(
            err.to_string(),
            format!("cannot read {}: no such file", missing.display())
        );
    }

    #[test]
    fn package_round_trips() {
        let s = Scratch::new();
        let loaded = s
            .parse(
                &(vm("a", "")
                    + &vm("b", "image = \"file:boot.bin\"\nload_addr = 0x8000")
                        .replace("image = \"counter\"\n", "")),
                None,
            )
            .unwrap();
        let package = loaded.package(Command::RunVms, BootOptions::default());
        let bytes = hvcore::package::encode(&package).unwrap();
        let decoded = hvcore::package::decode(&bytes).unwrap();
        assert_eq!(decoded, package);
        assert_eq!(decoded.images[1].data, &[0x90u8; 512][..]);
    }

    #[test]
    fn identical_images_are_packed_once() {
        let s = Scratch::new();
        let text = vm("a", "")
            + &vm_with("b", "image", "image = \"file:counter.elf\"")
            + &vm_with(
                "c",
                "image",
                "image = \"file:./boot.bin\"\nload_addr = 0x8000",
            );
        let loaded = s.parse(&text, None).unwrap();
        assert_eq!(loaded.images.len(), 2);
        assert_eq!(loaded.images[0].name, "counter");
        let indices: Vec<u32> = loaded.vms.iter().map(|v| v.image).collect();
        assert_eq!(indices, [0, 0, 1]);
    }

    #[test]
    fn sizes_and_slices() {
        let s = Scratch::new();
        let text = vm_with("a", "memory", "memory = 33554432\nslice_us = 500")
            + &vm_with("b", "memory", "memory = \"1G\"\nslice_ms = 20")
            + &vm_with("c", "memory", "memory = \"4096 KiB\"");
        let loaded = s.parse(&text, None).unwrap();
        let got: Vec<(u64, u32)> = loaded
            .vms
            .iter()
            .map(|v| (v.memory_bytes, v.slice_us))
            .collect();
        assert_eq!(
            got,
            [
                (32 * MIB, 500),
                (1 << 30, 20_000),
                (4 * MIB, DEFAULT_SLICE_US)
            ]
        );
        assert_eq!(parse_size("2K"), Ok(2048));
        assert!(parse_size("16Q").is_err());
        assert!(parse_size("M").is_err());
        assert_eq!(
            parse_size("99999999999G"),
            Err("\"99999999999G\" is too large".to_string())
        );
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let s = Scratch::new();
        let message = s.syntax(&vm("a", "cpu = 1"));
        assert!(message.contains("unknown field `cpu`"), "{message}");
        assert!(message.contains("line 6"), "{message}");
        let message = s.syntax("[machine]\ncores = 2\n");
        assert!(message.contains("unknown field `machine`"), "{message}");
    }

    #[test]
    fn syntax_errors_show_line_and_column() {
        let s = Scratch::new();
        let message = s.syntax("[[vm]]\nname = \"a\nmemory = 1\n");
        assert!(message.contains("line 2, column"), "{message}");
        let err = s
            .parse("[[vm]]\nname = \"a\nmemory = 1\n", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "{}: TOML parse error at line 2",
                s.config_path().display()
            )),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_syntax_errors_at_their_line() {
        let s = Scratch::new();
        let message = s.syntax(&vm_with("a", "memory", "memory = \"16Q\""));
        assert!(message.contains("\"16Q\" is not a size"), "{message}");
        assert!(message.contains("line 3"), "{message}");
        let message = s.syntax(&vm_with("a", "memory", "memory = -4"));
        assert!(message.contains("-4 is negative"), "{message}");
        let message = s.syntax(&vm("a", "mode = \"protected\""));
        assert!(message.contains("unknown variant `protected`"), "{message}");
        let message = s.syntax("[[vm]]\nname = \"a\"\ncpus = [0]\nimage = \"counter\"\n");
        assert!(message.contains("missing field `memory`"), "{message}");
        let message = s.syntax(&vm_with("a", "cpus", "cpus = [-1]"));
        assert!(message.contains("line 4"), "{message}");
    }

    #[test]
    fn memory_rules() {
        let s = Scratch::new();
        assert_eq!(
            s.problems(&vm_with("web", "memory", "memory = \"3M\""), None),
            ["vm \"web\": memory: 3 MiB is not a multiple of 2 MiB"]
        );
        assert_eq!(
            s.problems(&vm_with("web", "memory", "memory = 0"), None),
            ["vm \"web\": memory: must not be zero"]
        );
        assert_eq!(
            s.problems(&vm_with("web", "memory", "memory = \"1M\""), None),
            ["vm \"web\": memory: 1 MiB is below the minimum of 2 MiB"]
        );
    }

    #[test]
    fn name_rules() {
        let s = Scratch::new();
        assert_eq!(
            s.problems(&(vm("a", "") + &vm("a", "")), None),
            ["vm \"a\": name: already used by vm #1"]
        );
        assert_eq!(
            s.problems(&vm("", ""), None),
            ["vm #1: name: must not be empty"]
        );
        assert_eq!(
            s.problems(&vm("a b", ""), None),
            ["vm \"a b\": name: character ' ' is not allowed (use letters, digits, '-', '_', '.')"]
        );
    }

    #[test]
    fn host_base_rules() {
        let s = Scratch::new();
        let text = vm_with("a", "memory", "memory = \"32M\"\nhost_base = 0x4000000")
            + &vm_with("b", "memory", "memory = \"32M\"\nhost_base = \"80M\"");
        assert_eq!(
            s.problems(&text, None),
            ["vm \"b\": host_base: host 0x5000000..0x7000000 overlaps vm \"a\" (host 0x4000000..0x6000000)"]
        );
        assert_eq!(
            s.problems(&vm("a", "host_base = 0x4001000"), None),
            ["vm \"a\": host_base: 0x4001000 is not aligned to 2 MiB"]
        );
    }

    #[test]
    fn cpu_rules() {
        let s = Scratch::new();
        let text = vm("a", "") + &vm_with("b", "cpus", "cpus = [0, 5]");
        assert_eq!(
            s.problems(&text, Some(2)),
            ["vm \"b\": cpus: CPU 5 does not exist (machine has 2)"]
        );
        assert!(
            s.parse(&text, None).is_ok(),
            "without --cpus any plausible CPU is accepted"
        );
        assert_eq!(
            s.problems(&vm_with("b", "cpus", "cpus = []"), None),
            ["vm \"b\": cpus: no CPU given"]
        );
        assert_eq!(
            s.problems(&vm_with("b", "cpus", "cpus = [1, 1]"), None),
            ["vm \"b\": cpus: CPU 1 is listed more than once"]
        );
    }

    #[test]
    fn image_rules() {
        let s = Scratch::new();
        assert_eq!(
            s.problems(&vm_with("a", "image", "image = \"countr\""), None),
            ["vm \"a\": image: \"countr\": no such guest (known: counter, ghost)"]
        );
        let ghost = s.dir.join("ghost.elf");
        let problems = s.problems(&vm_with("a", "image", "image = \"ghost\""), None);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with(&format!(
                "vm \"a\": image: cannot read {}: ",
                ghost.display()
            )),
            "{problems:?}"
        );
        let missing = s.dir.join("sub/x.bin");
        let problems = s.problems(&vm_with("a", "image", "image = \"file:sub/x.bin\""), None);
        assert!(
            problems[0].starts_with(&format!(
                "vm \"a\": image: cannot read {}: ",
                missing.display()
            )),
            "{problems:?}"
        );
        assert_eq!(
            s.problems(&vm_with("a", "image", "image = \"file:\""), None),
            ["vm \"a\": image: \"file:\": file: needs a path"]
        );
    }

    #[test]
    fn flat_image_rules() {
        let s = Scratch::new();
        assert_eq!(
            s.problems(&vm_with("f", "image", "image = \"file:boot.bin\""), None),
            ["vm \"f\": load_addr: a flat image needs a load address"]
        );
        assert_eq!(
            s.problems(&vm_with("f", "image", "image = \"file:boot.bin\"\nload_addr = 0xffff00"), None),
            ["vm \"f\": load_addr: the image at 0xffff00 (512 bytes) ends past the VM's 16 MiB of memory"]
        );
        let text = vm_with(
            "f",
            "image",
            "image = \"file:three.bin\"\nload_addr = 0x8000",
        )
        .replace("\"16M\"", "\"2M\"");
        assert_eq!(
            s.problems(&text, None),
            [format!(
                "vm \"f\": image: cannot read {}: it holds 3 MiB, more than the VM's 2 MiB of memory",
                s.dir.join("three.bin").display()
            )]
        );
        assert_eq!(
            s.problems(&vm("e", "load_addr = 0x1000"), None),
            ["vm \"e\": load_addr: only flat images take a load address (ELF images load where their headers say)"]
        );
        assert_eq!(
            s.problems(&vm("r", "mode = \"real16\""), None),
            ["vm \"r\": mode: real16 needs a flat image"]
        );
    }

    #[test]
    fn entry_rules() {
        let s = Scratch::new();
        assert_eq!(
            s.problems(&vm("a", "entry = 0x1000000"), None),
            ["vm \"a\": entry: 0x1000000 is outside the VM's 16 MiB of memory"]
        );
    }

    #[test]
    fn slice_rules() {
        let s = Scratch::new();
        assert_eq!(
            s.problems(&vm("a", "slice_ms = 0"), None),
            ["vm \"a\": slice: must not be zero"]
        );
        assert_eq!(
            s.problems(&vm("a", "slice_ms = 1500"), None),
            ["vm \"a\": slice: 1500 ms is longer than the maximum of 1 s"]
        );
        assert_eq!(
            s.problems(&vm("a", "slice_ms = 10\nslice_us = 10"), None),
            ["vm \"a\": slice: give slice_ms or slice_us, not both"]
        );
    }

    #[test]
    fn vm_count_rules() {
        let s = Scratch::new();
        assert_eq!(
            s.problems("# nothing here\n", None),
            ["no VM is configured"]
        );
        let text: String = (0..17).map(|i| vm(&format!("v{i}"), "")).collect();
        assert_eq!(
            s.problems(&text, None),
            ["vm \"v16\": at most 16 VMs can be configured"]
        );
    }

    #[test]
    fn every_problem_is_reported_in_vm_order() {
        let s = Scratch::new();
        let text = vm_with("a", "memory", "memory = \"3M\"\nslice_ms = 0")
            + "[[vm]]\nname = \"b\"\nmemory = \"16M\"\ncpus = [9]\nimage = \"nope\"\n"
            + &vm("a", "");
        let err = s.parse(&text, Some(2)).unwrap_err();
        let shown = err.to_string();
        assert_eq!(
            shown,
            format!(
                "{}: 5 problems:\n  \
                 vm \"a\": memory: 3 MiB is not a multiple of 2 MiB\n  \
                 vm \"a\": slice: must not be zero\n  \
                 vm \"b\": image: \"nope\": no such guest (known: counter, ghost)\n  \
                 vm \"b\": cpus: CPU 9 does not exist (machine has 2)\n  \
                 vm \"a\": name: already used by vm #1\n  \
                 (checked against 2 CPU(s) (--cpus 2))",
                s.config_path().display()
            )
        );
    }

    #[test]
    fn repeated_problems_are_summarised() {
        let s = Scratch::new();
        let text: String = (0..1000).map(|i| vm(&format!("v{i}"), "")).collect();
        let err = s.parse(&text, None).unwrap_err();
        let shown = err.to_string();
        assert_eq!(
            shown,
            format!(
                "{}: 984 problems:\n  \
                 vm \"v16\": at most 16 VMs can be configured\n  \
                 ... and 983 more VMs with the same problem",
                s.config_path().display()
            )
        );
        // Up to three identical problems are all shown; different ones stay apart.
        let text = vm_with("a", "cpus", "cpus = [9]")
            + &vm_with("b", "cpus", "cpus = [9]")
            + &vm_with("c", "memory", "memory = \"3M\"");
        assert_eq!(
            s.problems(&text, Some(2)),
            [
                "vm \"a\": cpus: CPU 9 does not exist (machine has 2)",
                "vm \"b\": cpus: CPU 9 does not exist (machine has 2)",
                "vm \"c\": memory: 3 MiB is not a multiple of 2 MiB",
            ]
        );
        let shown = s.parse(&text, Some(2)).unwrap_err().to_string();
        assert!(
            shown.ends_with("(checked against 2 CPU(s) (--cpus 2))"),
            "{shown}"
        );
    }

    #[test]
    fn names_are_escaped_in_messages() {
        let s = Scratch::new();
        let text = vm("\\u001b[2J\\u001b[H", "");
        let err = s.parse(&text, None).unwrap_err().to_string();
        assert!(!err.contains('\x1b'), "{err:?}");
        assert!(
            err.contains("vm \"\\x1b[2J\\x1b[H\": name: character '\\u{1b}' is not allowed"),
            "{err}"
        );
    }

    #[test]
    fn special_files_are_refused_by_name_and_at_once() {
        let s = Scratch::new();
        let start = std::time::Instant::now();
        let text = vm_with(
            "z",
            "image",
            "image = \"file:/dev/zero\"\nload_addr = 0x8000",
        );
        assert_eq!(
            s.problems(&text, None),
            ["vm \"z\": image: cannot read /dev/zero: a character device, not a regular file"]
        );
        let fifo = s.dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(
            made.is_ok_and(|st| st.success()),
            "mkfifo (coreutils) is needed"
        );
        let text = vm_with("p", "image", "image = \"file:fifo\"\nload_addr = 0x8000");
        assert_eq!(
            s.problems(&text, None),
            [format!(
                "vm \"p\": image: cannot read {}: a FIFO (named pipe), not a regular file",
                fifo.display()
            )]
        );
        for config in [Path::new("/dev/zero"), fifo.as_path(), s.dir.as_path()] {
            let err = load(config, &MachineHint::NONE, &|n| s.resolve(n)).unwrap_err();
            assert!(
                err.to_string().ends_with(", not a regular file"),
                "{config:?}: {err}"
            );
        }
        // A configuration file larger than the limit is not read.
        let big = s.dir.join("big.toml");
        fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        let err = load(&big, &MachineHint::NONE, &|n| s.resolve(n)).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("is larger than the limit of 4 MiB"),
            "{err}"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn elf_images_are_checked_on_the_host() {
        let s = Scratch::new();
        let mut bits32 = fs::read(s.dir.join("counter.elf")).unwrap();
        bits32[4] = 1;
        fs::write(s.dir.join("x32.elf"), &bits32).unwrap();
        fs::write(s.dir.join("four.elf"), b"\x7fELF").unwrap();
        let low = hvcore::image::minimal_elf(0x1000, &[(0x1000, &[0x90; 16], 0x10)]);
        fs::write(s.dir.join("low.elf"), low).unwrap();
        let text = vm_with("a", "image", "image = \"file:x32.elf\"")
            + &vm_with("b", "image", "image = \"file:four.elf\"")
            + &vm_with("c", "image", "image = \"file:low.elf\"");
        assert_eq!(
            s.problems(&text, None),
            [
                "vm \"a\": image: \"file:x32.elf\": a 32-bit ELF (ELFCLASS32); guests must be ELF64",
                "vm \"b\": image: \"file:four.elf\": truncated image: ELF identification lies outside the file",
                "vm \"c\": image: segment 0x1000..0x1010 overlaps 0x1000..0x8000, where the hypervisor \
                 writes a 64-bit guest's GDT and page tables (link the image at 0x8000 or above)",
            ]
        );
    }

    #[test]
    fn machine_limits_apply_when_known() {
        let s = Scratch::new();
        let machine = MachineHint {
            cpus: Some((2, "--smp")),
            memory_mib: Some((512, "--mem")),
        };
        // 512 MiB less 64 MiB reserved and 1 MiB of package: 446 MiB for VMs.
        let text = vm_with("big", "memory", "memory = \"448M\"");
        let err = s.parse_on(&text, &machine).unwrap_err().to_string();
        assert!(
            err.contains(
                "vm \"big\": memory: 448 MiB is more than the machine's 446 MiB of usable memory"
            ),
            "{err}"
        );
        assert!(
            err.contains("(checked against 2 CPU(s) (--smp 2) and a machine of 512 MiB (--mem 512): about 446 MiB for VMs"),
            "{err}"
        );
        let text = vm("a", "") + &vm_with("b", "cpus", "cpus = [2]");
        assert_eq!(
            s.parse_on(&text, &machine)
                .unwrap_err()
                .to_string()
                .lines()
                .nth(1),
            Some("  vm \"b\": cpus: CPU 2 does not exist (machine has 2)")
        );
        assert!(s
            .parse_on(&vm("a", "host_base = \"1G\""), &machine)
            .is_err());
        assert!(s
            .parse_on(&vm("a", "host_base = \"256M\""), &machine)
            .is_ok());
        // A package that alone would not fit the machine.
        fs::write(s.dir.join("huge.bin"), vec![0u8; 600 << 20]).unwrap();
        let text = vm_with(
            "h",
            "memory",
            "memory = \"1G\"\nimage = \"file:huge.bin\"\nload_addr = 0x8000",
        )
        .replace("image = \"counter\"\n", "");
        let err = s.parse_on(&text, &machine).unwrap_err().to_string();
        assert!(
            err.contains("the boot package would take 601 MiB; with 64 MiB for firmware and hypervisor it does not fit the machine's 512 MiB (--mem)"),
            "{err}"
        );
        let roomy = MachineHint {
            memory_mib: Some((2048, "--mem")),
            ..machine
        };
        assert!(s.parse_on(&text, &roomy).is_ok());
    }

    /// Writes the kernel fixtures into the scratch folder: `vmlinuz` (a
    /// bzImage like Debian's cloud kernel: init_size 51.5 MiB from 16 MiB,
    /// cmdline_size 2047), `old-vmlinuz` (boot protocol 2.04), `mboot` (a
    /// Multiboot kernel with the a.out kludge at 1 MiB), `mboot32.elf` (an
    /// ELF32 Multiboot kernel) and `initrd.gz` (64 KiB).
    fn kernel_files(s: &Scratch) {
        let bz = hvcore::image::minimal_bzimage(0x1000, 0x338_0000);
        fs::write(s.dir.join("vmlinuz"), &bz).unwrap();
        let mut old = bz;
        old[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
        fs::write(s.dir.join("old-vmlinuz"), old).unwrap();
        fs::write(
            s.dir.join("mboot"),
            hvcore::image::minimal_multiboot(0x10_0000, 0x1000),
        )
        .unwrap();
        fs::write(s.dir.join("mboot32.elf"), elf32_multiboot()).unwrap();
        fs::write(s.dir.join("initrd.gz"), vec![0x1fu8; 64 * 1024]).unwrap();
    }

    /// An ELF32 i386 executable with one PT_LOAD segment at 1 MiB holding a
    /// Multiboot header (memory information required), entry at 1 MiB.
    fn elf32_multiboot() -> Vec<u8> {
        let mut b = vec![0u8; 0x2000];
        b[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(16, &2u16.to_le_bytes()); // ET_EXEC
        put(18, &3u16.to_le_bytes()); // EM_386
        put(20, &1u32.to_le_bytes());
        put(24, &0x10_0000u32.to_le_bytes()); // e_entry
        put(28, &52u32.to_le_bytes()); // e_phoff
        put(42, &32u16.to_le_bytes()); // e_phentsize
        put(44, &1u16.to_le_bytes()); // e_phnum
        for (i, v) in [1u32, 0x1000, 0x10_0000, 0x10_0000, 0x1000, 0x1000]
            .iter()
            .enumerate()
        {
            put(52 + 4 * i, &v.to_le_bytes());
        }
        let magic = 0x1BAD_B002u32;
        put(0x1000, &magic.to_le_bytes());
        put(0x1004, &2u32.to_le_bytes());
        put(
            0x1008,
            &0u32.wrapping_sub(magic).wrapping_sub(2).to_le_bytes(),
        );
        b
    }

    /// A Linux VM booting the scratch `vmlinuz` with `extra` lines.
    fn linux(name: &str, extra: &str) -> String {
        format!(
            "[[vm]]\nname = \"{name}\"\nmemory = \"256M\"\ncpus = [1]\nkernel = \"file:vmlinuz\"\n{extra}\n"
        )
    }

    #[test]
    fn kernels_initrds_and_command_lines_are_read() {
        let s = Scratch::new();
        kernel_files(&s);
        let text = linux(
            "linux",
            "initrd = \"file:initrd.gz\"\ncmdline = \"console=ttyS0 acpi=off pci=off reboot=t\"",
        ) + &linux("mb", "cmdline = \"debug\"\non_reboot = \"stop\"")
            .replace("file:vmlinuz", "file:mboot")
            + &linux("elf32", "").replace("file:vmlinuz", "file:mboot32.elf")
            + &vm("plain", "")
            + &vm("restarts", "on_reboot = \"restart\"");
        let loaded = s.parse(&text, Some(2)).unwrap();
        let kinds: Vec<(&str, ImageKind)> = loaded
            .images
            .iter()
            .map(|i| (i.name.as_str(), i.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("file:vmlinuz", ImageKind::BzImage),
                ("file:initrd.gz", ImageKind::Flat),
                ("file:mboot", ImageKind::Multiboot),
                ("file:mboot32.elf", ImageKind::Multiboot),
                ("counter", ImageKind::Elf),
            ]
        );
        let v = &loaded.vms;
        assert_eq!(
            (v[0].mode, v[0].image, v[0].initrd, v[0].on_reboot),
            (GuestMode::Linux64, 0, Some(1), RebootPolicy::Restart)
        );
        assert_eq!(v[0].cmdline, "console=ttyS0 acpi=off pci=off reboot=t");
        assert_eq!(
            (v[1].mode, v[1].image, v[1].initrd, v[1].on_reboot),
            (GuestMode::Protected32, 2, None, RebootPolicy::Stop)
        );
        assert_eq!(v[1].cmdline, "debug");
        assert_eq!((v[2].mode, v[2].image), (GuestMode::Protected32, 3));
        assert_eq!(
            v[2].on_reboot,
            RebootPolicy::Restart,
            "the default for kernels"
        );
        assert_eq!(
            (
                v[3].mode,
                v[3].on_reboot,
                v[3].cmdline.as_str(),
                v[3].initrd
            ),
            (GuestMode::Long64, RebootPolicy::Stop, "", None),
            "the defaults for images"
        );
        assert_eq!(v[4].on_reboot, RebootPolicy::Restart);
        // The package carries all of it.
        let package = loaded.package(Command::RunVms, BootOptions::default());
        let bytes = hvcore::package::encode(&package).unwrap();
        assert_eq!(hvcore::package::decode(&bytes), Ok(package));
    }

    #[test]
    fn a_file_used_as_kernel_and_as_image_is_packed_once_per_kind() {
        let s = Scratch::new();
        kernel_files(&s);
        // An ELF32 Multiboot kernel as an image is an ELF image (refused by
        // the ELF64 loader); as a kernel a Multiboot kernel. The initrd is
        // shared and raw whatever its bytes.
        let text = linux("k", "initrd = \"file:vmlinuz\"")
            + &linux("k2", "initrd = \"file:./vmlinuz\"")
            + &vm_with("e", "image", "image = \"file:mboot32.elf\"");
        let problems = s.problems(&text, None);
        assert_eq!(
            problems,
            ["vm \"e\": image: \"file:mboot32.elf\": a 32-bit ELF (ELFCLASS32); guests must be ELF64"]
        );
        let text = linux("k", "initrd = \"file:vmlinuz\"")
            + &linux("k2", "initrd = \"file:./vmlinuz\"")
            + &linux("m", "").replace("file:vmlinuz", "file:mboot32.elf");
        let loaded = s.parse(&text, None).unwrap();
        let kinds: Vec<ImageKind> = loaded.images.iter().map(|i| i.kind).collect();
        assert_eq!(
            kinds,
            [ImageKind::BzImage, ImageKind::Flat, ImageKind::Multiboot]
        );
        assert_eq!(loaded.images[0].data, loaded.images[1].data);
        assert_eq!(loaded.vms[1].initrd, Some(1), "the same file, packed once");
    }

    #[test]
    fn image_or_kernel_exactly_once() {
        let s = Scratch::new();
        kernel_files(&s);
        assert_eq!(
            s.problems(&vm("a", "kernel = \"file:vmlinuz\""), None),
            ["vm \"a\": kernel: give image or kernel, not both"]
        );
        assert_eq!(
            s.problems(&vm("a", "").replace("image = \"counter\"\n", ""), None),
            [
                "vm \"a\": image: missing: give image (a guest of this project or a file) or \
              kernel (a Linux bzImage or a Multiboot kernel)"
            ]
        );
        // Kernel keys alone mean a kernel was meant: no complaint about them.
        let text = linux("a", "initrd = \"file:initrd.gz\"\ncmdline = \"quiet\"")
            .replace("kernel = \"file:vmlinuz\"\n", "");
        assert_eq!(
            s.problems(&text, None),
            [
                "vm \"a\": image: missing: give image (a guest of this project or a file) or \
              kernel (a Linux bzImage or a Multiboot kernel)"
            ]
        );
    }

    #[test]
    fn image_keys_are_refused_with_a_kernel() {
        let s = Scratch::new();
        kernel_files(&s);
        let text = linux(
            "l",
            "mode = \"long64\"\nentry = 0x1000200\nload_addr = 0x1000000",
        );
        assert_eq!(
            s.problems(&text, None),
            [
                "vm \"l\": mode: a kernel's mode follows from its format (linux for a bzImage, \
                 protected32 for a Multiboot kernel); remove mode",
                "vm \"l\": entry: a kernel starts where its boot protocol says (remove entry)",
                "vm \"l\": load_addr: a kernel loads where its boot protocol says (remove load_addr)",
            ]
        );
        // The kernel modes cannot be written at all.
        let message = s.syntax(&linux("l", "mode = \"linux\""));
        assert!(message.contains("unknown variant `linux`"), "{message}");
        let message = s.syntax(&vm("a", "mode = \"protected32\""));
        assert!(
            message.contains("unknown variant `protected32`"),
            "{message}"
        );
        let message = s.syntax(&vm("a", "on_reboot = \"reset\""));
        assert!(
            message.contains("unknown variant `reset`, expected `stop` or `restart`"),
            "{message}"
        );
    }

    #[test]
    fn kernel_keys_are_refused_with_an_image() {
        let s = Scratch::new();
        kernel_files(&s);
        let text = vm("a", "initrd = \"file:initrd.gz\"\ncmdline = \"quiet\"")
            + &linux("m", "initrd = \"file:initrd.gz\"").replace("file:vmlinuz", "file:mboot");
        assert_eq!(
            s.problems(&text, None),
            [
                "vm \"a\": initrd: only a Linux kernel (`kernel = ...`) takes an initrd, not an image",
                "vm \"a\": cmdline: only a kernel (`kernel = ...`) takes a command line, not an image",
                "vm \"m\": initrd: a Multiboot kernel takes no initrd (only a Linux bzImage does)",
            ]
        );
        // A kernel named as an image gets a hint.
        assert_eq!(
            s.problems(&vm_with("v", "image", "image = \"file:vmlinuz\""), None),
            ["vm \"v\": image: \"file:vmlinuz\" is a Linux bzImage: boot it with `kernel = ...` \
              instead of `image = ...`"]
        );
        assert_eq!(
            s.problems(&vm_with("v", "image", "image = \"file:mboot\""), None),
            ["vm \"v\": image: \"file:mboot\" is a Multiboot kernel: boot it with `kernel = ...` \
              instead of `image = ...`"]
        );
    }

    #[test]
    fn command_lines_are_checked() {
        let s = Scratch::new();
        kernel_files(&s);
        let with = |cmdline: &str| s.problems(&linux("l", &format!("cmdline = {cmdline}")), None);
        assert_eq!(
            with("\"console=ttyS0\\tquiet\""),
            [
                "vm \"l\": cmdline: character '\\t' at byte 13 is not allowed (no control \
              characters; separate options with spaces)"
            ]
        );
        assert_eq!(
            with("\"a\\u0000b\""),
            [
                "vm \"l\": cmdline: character '\\0' at byte 1 is not allowed (no control \
              characters; separate options with spaces)"
            ]
        );
        assert_eq!(
            with(&format!("\"{}\"", "a".repeat(4096))),
            ["vm \"l\": cmdline: 4096 bytes is longer than the limit of 4095"]
        );
        assert_eq!(
            with(&format!("\"{}\"", "a".repeat(2048))),
            ["vm \"l\": cmdline: the command line has 2048 bytes, the kernel accepts at most 2047"]
        );
        assert!(s
            .parse(
                &linux("l", &format!("cmdline = \"{}\"", "a".repeat(2047))),
                None
            )
            .is_ok());
        // Shown escaped, never raw.
        let err = s
            .parse(&linux("l", "cmdline = \"\\u001b[2J\""), None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\x1b'), "{err:?}");
    }

    #[test]
    fn kernels_are_checked_by_their_loaders_on_the_host() {
        let s = Scratch::new();
        kernel_files(&s);
        fs::write(s.dir.join("big-initrd"), vec![1u8; 16 * MIB as usize]).unwrap();
        let text = linux("elf", "").replace("file:vmlinuz", "file:counter.elf")
            + &linux("flat", "").replace("file:vmlinuz", "file:boot.bin")
            + &linux("old", "").replace("file:vmlinuz", "file:old-vmlinuz")
            + &linux("small", "").replace("256M", "64M")
            + &linux("tight", "initrd = \"file:big-initrd\"").replace("256M", "68M");
        assert_eq!(
            s.problems(&text, None),
            [
                "vm \"elf\": kernel: \"file:counter.elf\" is neither a Linux bzImage (\"HdrS\" at \
                 0x202) nor a Multiboot kernel (a Multiboot header in the first 8 KiB)",
                "vm \"flat\": kernel: \"file:boot.bin\" is neither a Linux bzImage (\"HdrS\" at \
                 0x202) nor a Multiboot kernel (a Multiboot header in the first 8 KiB)",
                "vm \"old\": kernel: \"file:old-vmlinuz\": boot protocol 2.04 is too old (2.06 or \
                 later needed)",
                "vm \"small\": kernel: \"file:vmlinuz\": the kernel needs 0x1000000..0x4380000 (52 \
                 MiB from its load address, init_size included) but the VM has 64 MiB of memory",
                "vm \"tight\": initrd: \"file:big-initrd\": the initrd (16777216 bytes) does not fit \
                 below 0x4400000 outside the kernel at 0x1000000..0x4380000",
            ]
        );
    }

    #[test]
    fn kernel_and_initrd_files_are_named_by_their_key() {
        let s = Scratch::new();
        kernel_files(&s);
        let text = linux("a", "initrd = \"file:nope.gz\"").replace("file:vmlinuz", "file:gone")
            + &linux("b", "initrd = \"no-such-guest\"").replace("file:vmlinuz", "ghost2")
            + &linux("c", "initrd = \"file:/dev/zero\"");
        let problems = s.problems(&text, None);
        assert_eq!(
            problems,
            [
                format!(
                    "vm \"a\": kernel: cannot read {}: no such file",
                    s.dir.join("gone").display()
                ),
                format!(
                    "vm \"a\": initrd: cannot read {}: no such file",
                    s.dir.join("nope.gz").display()
                ),
                "vm \"b\": kernel: \"ghost2\": no such guest (known: counter, ghost)".to_string(),
                "vm \"b\": initrd: \"no-such-guest\": no such guest (known: counter, ghost)"
                    .to_string(),
                "vm \"c\": initrd: cannot read /dev/zero: a character device, not a regular file"
                    .to_string(),
            ]
        );
    }

    /// Kernels and initrds of real sizes are read; each file may hold as much
    /// as the memory of the largest VM using it.
    #[test]
    fn large_kernels_and_initrds_are_read_up_to_the_vms_memory() {
        let s = Scratch::new();
        kernel_files(&s);
        // A 64 MiB bzImage (init_size below its size: the image is what it needs).
        let mut big = hvcore::image::minimal_bzimage(64 * MIB as usize - 28 * 512, 0x100_0000);
        big.truncate(64 * MIB as usize);
        fs::write(s.dir.join("big-vmlinuz"), &big).unwrap();
        fs::write(s.dir.join("initrd-100m"), vec![7u8; 100 * MIB as usize]).unwrap();
        let text = linux("big", "initrd = \"file:initrd-100m\"")
            .replace("file:vmlinuz", "file:big-vmlinuz");
        let loaded = s.parse(&text, None).unwrap();
        assert_eq!(loaded.images[0].data.len(), 64 * MIB as usize);
        assert_eq!(loaded.images[1].data.len(), 100 * MIB as usize);
        // More than the VM's memory is refused before reading.
        let text = linux("small", "initrd = \"file:initrd-100m\"").replace("256M", "96M");
        assert_eq!(
            s.problems(&text, None),
            [format!(
                "vm \"small\": initrd: cannot read {}: it holds 100 MiB, more than the VM's 96 MiB \
                 of memory",
                s.dir.join("initrd-100m").display()
            )]
        );
        // With a machine: the package's size counts against its memory.
        let machine = MachineHint {
            cpus: Some((2, "--smp")),
            memory_mib: Some((512, "--mem")),
        };
        let text = linux("big", "initrd = \"file:initrd-100m\"")
            .replace("file:vmlinuz", "file:big-vmlinuz");
        assert!(s.parse_on(&text, &machine).is_ok());
        let tight = MachineHint {
            memory_mib: Some((200, "--mem")),
            ..machine
        };
        let err = s.parse_on(&text, &tight).unwrap_err().to_string();
        assert!(
            err.contains(
                "the boot package would take 165 MiB; with 64 MiB for firmware and \
                          hypervisor it does not fit the machine's 200 MiB (--mem)"
            ),
            "{err}"
        );
    }

    #[test]
    fn linux_config_is_valid() {
        // configs/linux.toml with the assets where it expects them: two
        // folders up from the configuration, in target/linux/.
        let s = Scratch::new();
        kernel_files(&s);
        let configs = s.dir.join("boot/configs");
        let assets = s.dir.join("target/linux");
        fs::create_dir_all(&configs).unwrap();
        fs::create_dir_all(&assets).unwrap();
        fs::copy(s.dir.join("vmlinuz"), assets.join("vmlinuz")).unwrap();
        fs::copy(s.dir.join("initrd.gz"), assets.join("initramfs.cpio.gz")).unwrap();
        let path = configs.join("linux.toml");
        let machine = MachineHint {
            cpus: Some((2, "--smp")),
            memory_mib: Some((512, "--mem")),
        };
        let loaded = parse(
            include_str!("../configs/linux.toml"),
            &path,
            &machine,
            &|name| s.resolve(name),
        )
        .unwrap();
        let names: Vec<&str> = loaded.vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["counter0", "counter1", "linux"]);
        let linux = &loaded.vms[2];
        assert_eq!(
            (linux.mode, linux.memory_bytes, linux.cpus.as_slice()),
            (GuestMode::Linux64, 256 * MIB, &[1][..])
        );
        assert_eq!(linux.cmdline, "console=ttyS0 acpi=off pci=off reboot=t");
        assert_eq!(linux.on_reboot, RebootPolicy::Restart);
        assert!(linux.initrd.is_some());
        assert!(loaded.vms[..2].iter().all(|v| v.cpus == [0]));
    }

    /// The real assets of `tests/linux-assets.sh`, when they have been
    /// fetched: boot/configs/linux.toml passes on a 512 MiB, 2-CPU machine.
    #[test]
    fn linux_config_with_the_fetched_assets() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let config = root.join("boot/configs/linux.toml");
        if !root.join("target/linux/vmlinuz").is_file() {
            eprintln!("target/linux/vmlinuz not fetched (tests/linux-assets.sh): skipped");
            return;
        }
        let s = Scratch::new();
        let machine = MachineHint {
            cpus: Some((2, "--smp")),
            memory_mib: Some((512, "--mem")),
        };
        let loaded = load(&config, &machine, &|name| s.resolve(name)).unwrap();
        assert_eq!(loaded.images[1].kind, ImageKind::BzImage);
        assert!(loaded.images[1].data.len() > MIB as usize);
    }

    #[test]
    fn hostile_cpu_list_is_checked_quickly() {
        let s = Scratch::new();
        let cpus: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
        let text = vm_with("many", "cpus", &format!("cpus = [{}]", cpus.join(", ")));
        let start = std::time::Instant::now();
        assert_eq!(
            s.problems(&text, None),
            ["vm \"many\": cpus: 100000 CPUs listed; there are at most 256 distinct CPUs"]
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    /// Rounds of a fuzz loop: `default`, or `HV_FUZZ_ROUNDS` when set (the
    /// long run described in README.md).
    fn rounds(default: u64) -> u64 {
        std::env::var("HV_FUZZ_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Mutated configurations never panic the parser, and whatever it accepts
    /// passes the kernel's rules and survives the boot package unchanged.
    #[test]
    fn fuzz_mutated_configs() {
        let s = Scratch::new();
        kernel_files(&s);
        let base = vm("a", "host_base = 0x4000000\nslice_us = 500")
            + &vm_with(
                "b",
                "image",
                "image = \"file:boot.bin\"\nload_addr = 0x7c00\nmode = \"real16\"",
            )
            + &vm_with("c", "cpus", "cpus = [1, 0]\nentry = 0x100010")
            + &linux(
                "d",
                "initrd = \"file:initrd.gz\"\ncmdline = \"console=ttyS0 quiet\"\non_reboot = \"stop\"",
            )
            + &linux("e", "cmdline = \"x\"").replace("file:vmlinuz", "file:mboot");
        assert!(s.parse(&base, Some(2)).is_ok());
        const PIECES: &[&str] = &[
            "[",
            "]",
            "[[vm]]",
            "=",
            "\"",
            ",",
            "\n",
            " ",
            "0",
            "1",
            "7",
            "9",
            "0x",
            "M",
            "G",
            "K",
            "-",
            "_",
            ".",
            "#",
            "name",
            "memory",
            "cpus",
            "image",
            "entry",
            "load_addr",
            "mode",
            "real16",
            "long64",
            "file:",
            "counter",
            "slice_ms",
            "host_base",
            "kernel",
            "initrd",
            "cmdline",
            "on_reboot",
            "restart",
            "stop",
            "file:vmlinuz",
            "file:mboot",
            "file:initrd.gz",
            "\\t",
            "\u{1b}",
            "é",
            "99999999999999999999",
            "-1",
            "true",
            "{",
            "}",
        ];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut accepted, n) = (0u64, rounds(400));
        for _ in 0..n {
            let mut text = base.clone();
            for _ in 0..1 + next() % 4 {
                let mut at = (next() % (text.len() as u64 + 1)) as usize;
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let piece = PIECES[(next() % PIECES.len() as u64) as usize];
                match next() % 3 {
                    0 => text.insert_str(at, piece),
                    1 => {
                        let mut end = (at + 1 + (next() % 8) as usize).min(text.len());
                        while !text.is_char_boundary(end) {
                            end += 1;
                        }
                        text.replace_range(at..end, piece);
                    }
                    _ => {
                        let mut end = (at + 1 + (next() % 4) as usize).min(text.len());
                        while !text.is_char_boundary(end) {
                            end += 1;
                        }
                        text.replace_range(at..end, "");
                    }
                }
            }
            let Ok(loaded) = s.parse(&text, Some(2)) else {
                continue;
            };
            accepted += 1;
            let limits = MachineLimits {
                cpu_count: Some(2),
                memory: None,
            };
            assert_eq!(
                config::validate(&loaded.vms, &loaded.image_infos(), &limits),
                Ok(()),
                "{text}"
            );
            let package = loaded.package(Command::RunVms, BootOptions::default());
            let bytes = hvcore::package::encode(&package).unwrap();
            assert_eq!(hvcore::package::decode(&bytes).as_ref(), Ok(&package));
        }
        assert!(
            accepted > 0,
            "no mutated configuration was accepted in {n} rounds"
        );
    }
}
