//! The VM configuration file: TOML in, validated [`VmSpec`]s and image files out.
//!
//! A configuration lists VMs as `[[vm]]` tables (see `configs/default.toml` for
//! the commented reference):
//!
//! ```toml
//! [[vm]]
//! name = "alpha"
//! memory = "16M"         # K/M/G suffixes (binary), or bytes as an integer
//! cpus = [0]             # physical CPUs it may run on; 0 is the boot CPU
//! image = "counter"      # a guest of this project, or "file:path/relative/to/this.toml"
//! slice_ms = 10          # or slice_us; 10 ms when neither is given
//! # host_base = 0x4000000  fixed host-physical placement (2 MiB aligned)
//! # entry = 0x7c00         entry point (default: the ELF entry, or load_addr)
//! # load_addr = 0x7c00     where a flat (non-ELF) image is copied; required for those
//! # mode = "long64"        or "real16" (flat images only)
//! ```
//!
//! [`load`] reads the file, rejects unknown keys and syntax errors with their
//! line and column, resolves each image (project guests through the caller's
//! resolver, `file:` paths relative to the configuration file), reads the image
//! files (once per distinct file), and runs [`hvcore::config::validate`]. Every
//! problem is reported at once, each naming the VM and the field.
//!
//! This file uses only `hvcore`, `serde`, `toml` and `std`.

use hvcore::config::{
    self, ConfigError, GuestMode, ImageInfo, ImageKind, MachineLimits, Problem, VmSpec,
};
use hvcore::package::{BootOptions, Command, Image, Package};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Slice used when a VM gives neither `slice_ms` nor `slice_us`.
pub const DEFAULT_SLICE_US: u32 = 10_000;
/// Prefix of an image reference that is a file path rather than a project guest.
pub const FILE_PREFIX: &str = "file:";

/// Turns the name of a guest built by this project into the path of its ELF file.
pub type Resolver<'a> = &'a dyn Fn(&str) -> Result<PathBuf, String>;

/// A configuration that passed every host-side check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedConfig {
    /// The VMs, in file order; `image` indexes `images`.
    pub vms: Vec<VmSpec>,
    /// The distinct image files to pack.
    pub images: Vec<ImageFile>,
}

/// One image file to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// The reference as first written in the configuration (`counter`, `file:x.bin`).
    pub name: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// ELF (by its magic) or flat.
    pub kind: ImageKind,
    /// The file's contents.
    pub data: Vec<u8>,
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
}

/// Why a configuration file was refused.
#[derive(Debug)]
pub enum ConfigFileError {
    /// The file could not be read.
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
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
    },
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigFileError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            ConfigFileError::Syntax { path, message } => {
                write!(f, "{}: {}", path.display(), message.trim_end())
            }
            ConfigFileError::Invalid { path, problems } => {
                let n = problems.len();
                write!(
                    f,
                    "{}: {n} problem{}:",
                    path.display(),
                    if n == 1 { "" } else { "s" }
                )?;
                for p in problems {
                    write!(f, "\n  {p}")?;
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
        /// The reference as written.
        image: String,
        /// The resolver's explanation.
        reason: String,
    },
    /// The image file could not be read.
    ImageUnreadable {
        /// How the VM is shown.
        vm: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A rule of [`hvcore::config`] is broken.
    Config(ConfigError),
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileProblem::SliceTwice { vm } => {
                write!(f, "{vm}: slice: give slice_ms or slice_us, not both")
            }
            FileProblem::ImageUnknown { vm, image, reason } => {
                write!(f, "{vm}: image: {image:?}: {reason}")
            }
            FileProblem::ImageUnreadable { vm, path, reason } => {
                write!(f, "{vm}: image: cannot read {}: {reason}", path.display())
            }
            FileProblem::Config(e) => e.fmt(f),
        }
    }
}

/// Reads, parses and validates the configuration at `path`.
///
/// `cpus_hint` is the machine's CPU count when the caller knows it (`--cpus N`);
/// without it only machine-independent rules apply. `resolve` maps a project
/// guest's name to its ELF file.
pub fn load(
    path: &Path,
    cpus_hint: Option<u32>,
    resolve: Resolver<'_>,
) -> Result<LoadedConfig, ConfigFileError> {
    let text = fs::read_to_string(path).map_err(|error| ConfigFileError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text, path, cpus_hint, resolve)
}

/// Like [`load`] for text already read; `path` names the file in messages and
/// anchors `file:` image paths.
pub fn parse(
    text: &str,
    path: &Path,
    cpus_hint: Option<u32>,
    resolve: Resolver<'_>,
) -> Result<LoadedConfig, ConfigFileError> {
    let file: FileToml = toml::from_str(text).map_err(|e| ConfigFileError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let base_dir = path.parent().unwrap_or(Path::new("."));

    // (VM index or None for the whole file, problem), sorted by VM at the end.
    let mut problems: Vec<(Option<usize>, FileProblem)> = Vec::new();
    let mut images: Vec<ImageFile> = Vec::new();
    let mut image_keys: Vec<PathBuf> = Vec::new();
    let mut unresolved = vec![false; file.vm.len()];
    let mut vms = Vec::with_capacity(file.vm.len());

    for (index, vm) in file.vm.into_iter().enumerate() {
        let label = vm_label(index, &vm.name);
        let slice_us = match (vm.slice_ms, vm.slice_us) {
            (Some(_), Some(_)) => {
                problems.push((Some(index), FileProblem::SliceTwice { vm: label.clone() }));
                DEFAULT_SLICE_US
            }
            (Some(ms), None) => ms.saturating_mul(1000),
            (None, Some(us)) => us,
            (None, None) => DEFAULT_SLICE_US,
        };
        let image = match resolve_image(&vm.image, base_dir, resolve) {
            Err(reason) => Err(FileProblem::ImageUnknown {
                vm: label.clone(),
                image: vm.image.clone(),
                reason,
            }),
            Ok(image_path) => {
                let key = fs::canonicalize(&image_path).unwrap_or_else(|_| image_path.clone());
                match image_keys.iter().position(|k| *k == key) {
                    Some(i) => Ok(i),
                    None => match fs::read(&image_path) {
                        Err(e) => Err(FileProblem::ImageUnreadable {
                            vm: label.clone(),
                            path: image_path,
                            reason: e.to_string(),
                        }),
                        Ok(data) => {
                            image_keys.push(key);
                            images.push(ImageFile {
                                name: vm.image.clone(),
                                path: image_path,
                                kind: ImageKind::detect(&data),
                                data,
                            });
                            Ok(images.len() - 1)
                        }
                    },
                }
            }
        };
        let image = match image.map(u32::try_from) {
            Ok(Ok(i)) => i,
            Ok(Err(_)) => u32::MAX,
            Err(problem) => {
                problems.push((Some(index), problem));
                unresolved[index] = true;
                u32::MAX
            }
        };
        vms.push(VmSpec {
            name: vm.name,
            memory_bytes: vm.memory.0,
            host_base: vm.host_base.map(|b| b.0),
            cpus: vm.cpus,
            image,
            slice_us,
            entry: vm.entry,
            load_addr: vm.load_addr,
            mode: match vm.mode {
                ModeToml::Long64 => GuestMode::Long64,
                ModeToml::Real16 => GuestMode::Real16,
            },
        });
    }

    let infos: Vec<ImageInfo<'_>> = images
        .iter()
        .map(|i| ImageInfo {
            name: &i.name,
            len: i.data.len() as u64,
            kind: i.kind,
        })
        .collect();
    let limits = MachineLimits {
        cpu_count: cpus_hint,
        memory: None,
    };
    if let Err(errors) = config::validate(&vms, &infos, &limits) {
        for error in errors {
            let index = match &error {
                ConfigError::NoVms => None,
                ConfigError::Vm(e) => {
                    // Already reported as unresolved, with the reason.
                    if unresolved[e.index] && matches!(e.problem, Problem::ImageMissing { .. }) {
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
        })
    }
}

/// How messages name a VM: by name, or by 1-based position when it has none.
fn vm_label(index: usize, name: &str) -> String {
    if name.is_empty() {
        format!("vm #{}", index + 1)
    } else {
        format!("vm \"{name}\"")
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
    image: String,
    #[serde(default)]
    slice_ms: Option<u32>,
    #[serde(default)]
    slice_us: Option<u32>,
    #[serde(default)]
    entry: Option<u64>,
    #[serde(default)]
    load_addr: Option<u64>,
    #[serde(default)]
    mode: ModeToml,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ModeToml {
    #[default]
    Long64,
    Real16,
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
    use hvcore::config::MIB;
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
            let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
            elf.resize(4096, 0);
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
            parse(text, &self.config_path(), cpus, &|name| self.resolve(name))
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
        let loaded = load(&s.config_path(), None, &|n| s.resolve(n)).unwrap();
        assert_eq!(loaded.images[0].path, s.dir.join("boot.bin"));
        assert_eq!(loaded.images[0].kind, ImageKind::Flat);
        assert_eq!(loaded.vms[0].mode, GuestMode::Real16);
        assert_eq!(loaded.vms[0].load_addr, Some(0x7c00));

        let missing = s.dir.join("nope.toml");
        let err = load(&missing, None, &|n| s.resolve(n)).unwrap_err();
        assert!(matches!(err, ConfigFileError::Read { .. }));
        assert!(err
            .to_string()
            .starts_with(&format!("cannot read {}: ", missing.display())));
    }

    #[test]
    fn package_round_trips() {
        let s = Scratch::new();
        let loaded = s
            .parse(
                &(vm("a", "")
                    + &vm("b", "image = \"file:boot.bin\"\nload_addr = 0x1000")
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
            + &vm_with("c", "image", "image = \"file:./boot.bin\"\nload_addr = 0");
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
        let text = vm_with("f", "image", "image = \"file:three.bin\"\nload_addr = 0")
            .replace("\"16M\"", "\"2M\"");
        assert_eq!(
            s.problems(&text, None),
            ["vm \"f\": image: the image (3 MiB) is larger than the VM's 2 MiB of memory"]
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
                 vm \"a\": name: already used by vm #1",
                s.config_path().display()
            )
        );
    }
}
