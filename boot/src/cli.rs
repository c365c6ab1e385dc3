//! The command line of `boot`, parsed completely before anything is built:
//! unknown options, missing values, numbers out of range and options that
//! exclude each other are refused at once, naming the option.
//!
//! Numbers are parsed into their real range (never wrapped): each option
//! states its range, and a value outside it is an error such as
//! `--mem: 4294967808 is out of range: give 64 to 65536 (MiB)`.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use hvcore::package::{BootOptions, Command, CrashTest};
use hvcore::text::Escaped;

use crate::config::MachineHint;
use crate::image::Firmware;
use crate::kernel_build;
use crate::pack::Scenario;
use crate::run::{CpuModel, Emulator};
use crate::Error;

/// The usage text (`boot help`).
pub const HELP: &str = "\
boot: build, run and flash the hypervisor

USAGE:
  boot build [SCENARIO] [--smp N] [--mem MIB] [--for-usb]
                                   build the kernel, guests and both disk images
  boot run [SCENARIO] [RUN]        build, then boot in an emulator
  boot ctl [--json] COMMAND        manage VMs of a running hypervisor (`boot ctl --help`)
  boot flash DEVICE [--image IMG] [--yes] [--dry-run]
                                   write the UEFI image to a USB stick
  boot check-config FILE [--cpus N] [--mem MIB]
                                   validate a VM configuration (build first:
                                   project guests are checked as packed)

SCENARIO (what the kernel does; default: run the VMs of boot/configs/default.toml):
  --config FILE     VM configuration (TOML)
  --selftest [F]    run the in-kernel test cases (names containing F)
  --crash KIND      take a deliberate exception: page-fault, breakpoint, double-fault
  --bench           run the benchmark guests and print figures
  --stop-after MS   shut down after MS milliseconds (1 to 4294967295)
  --no-power-off    halt at the end instead of powering off (real machines)

RUN:
  --bios            boot the BIOS image instead of UEFI
  --bochs           use Bochs (BIOS image) instead of QEMU
  --cpu MODEL       intel (Bochs Skylake-X with VT-x; QEMU only with nested
                    KVM), amd (Bochs Ryzen or QEMU EPYC, AMD-V), none (QEMU,
                    neither); default: QEMU picks KVM when it runs nested
                    guests, else TCG with AMD-V; Bochs picks intel
  --mem MIB         machine memory in MiB, 64 to 65536 (default 512)
  --smp N           number of CPUs, 1 to 256 (default 2)
  --gdb             QEMU waits for GDB on localhost:1234 (target remote :1234)
  --display         show the emulator window (framebuffer console)
  --timeout SECS    kill the emulator after SECS seconds (1 to 31536000)

The configuration is checked against the machine `run` boots (--smp, --mem),
and by `build` and `check-config` against --smp/--cpus and --mem when given.

ENVIRONMENT:
  HV_TARGET_DIR     where builds, images and run logs go (default <repo>/target)

EXIT STATUS of `run`:
  0    the kernel reported success (and started every configured VM)
  2    the host tool failed: options, configuration, build, missing emulator
  3    the kernel refused some configured VMs and ran the others
  4    the kernel started none of the configured VMs (also: no usable VT-x)
  17-20  the kernel's own failure codes (hvcore::KernelExit): 0x11 failure,
       0x12 panic, 0x13 CPU exception, 0x14 bad boot package
  124  timed out (--timeout); 125 the emulator died without a result";

/// Machine memory in MiB that `--mem` accepts.
pub const MEM_MIB: RangeInclusive<u64> = 64..=65536;
/// CPU counts that `--smp` and `--cpus` accept.
pub const CPUS: RangeInclusive<u64> = 1..=hvcore::config::MAX_CPUS as u64;
/// Milliseconds that `--stop-after` accepts (the boot package holds a `u32`).
pub const STOP_AFTER_MS: RangeInclusive<u64> = 1..=u32::MAX as u64;
/// Seconds that `--timeout` accepts (up to a year).
pub const TIMEOUT_SECS: RangeInclusive<u64> = 1..=365 * 24 * 3600;
/// Default machine memory of `run`, MiB.
pub const DEFAULT_MEM_MIB: u32 = 512;
/// Default CPU count of `run`.
pub const DEFAULT_CPUS: u32 = 2;

/// A parsed command line.
#[derive(Debug, Clone)]
pub enum Cli {
    /// `help`, `--help`, `-h`, or nothing.
    Help,
    /// `build`.
    Build {
        /// What the images do.
        scenario: Scenario,
        /// Limits to check the configuration against (`--smp`, `--mem`).
        machine: MachineHint,
    },
    /// `run`.
    Run {
        /// What the kernel does.
        scenario: Scenario,
        /// How the emulator runs.
        run: RunOptions,
    },
    /// `flash`.
    Flash {
        /// The image (`--image`, default: the UEFI image of the last build).
        image: PathBuf,
        /// The remaining arguments, for [`crate::flash::parse_args_with_default`].
        rest: Vec<String>,
    },
    /// `check-config`.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
        /// Limits to check against (`--cpus`/`--smp`, `--mem`).
        machine: MachineHint,
    },
}

/// How `run` starts the emulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// QEMU or Bochs.
    pub emulator: Emulator,
    /// UEFI or BIOS image.
    pub firmware: Firmware,
    /// Machine memory, MiB.
    pub memory_mib: u32,
    /// CPU count.
    pub cpus: u32,
    /// Emulated CPU model.
    pub cpu: CpuModel,
    /// Wait for GDB.
    pub gdb: bool,
    /// Show the emulator window.
    pub display: bool,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
}

impl RunOptions {
    /// The machine the configuration is checked against.
    pub fn machine(&self) -> MachineHint {
        MachineHint {
            cpus: Some((self.cpus, "--smp")),
            memory_mib: Some((self.memory_mib, "--mem")),
        }
    }
}

struct Args {
    list: Vec<String>,
}

impl Args {
    fn flag(&mut self, name: &str) -> bool {
        if let Some(i) = self.list.iter().position(|a| a == name) {
            self.list.remove(i);
            true
        } else {
            false
        }
    }

    fn value(&mut self, name: &str, what: &str) -> Result<Option<String>, Error> {
        let Some(i) = self.list.iter().position(|a| a == name) else {
            return Ok(None);
        };
        if i + 1 >= self.list.len() || self.list[i + 1].starts_with("--") {
            return Err(Error::Usage(format!("{name} needs a value: {what}")));
        }
        let v = self.list.remove(i + 1);
        self.list.remove(i);
        Ok(Some(v))
    }

    fn optional_value(&mut self, name: &str) -> Option<String> {
        let i = self.list.iter().position(|a| a == name)?;
        self.list.remove(i);
        if i < self.list.len() && !self.list[i].starts_with("--") {
            Some(self.list.remove(i))
        } else {
            Some(String::new())
        }
    }

    /// A whole number in `range`, `unit` naming what it counts.
    fn number(
        &mut self,
        name: &str,
        range: RangeInclusive<u64>,
        unit: &str,
    ) -> Result<Option<u64>, Error> {
        let what = format!("{} to {} ({unit})", range.start(), range.end());
        let Some(v) = self.value(name, &what)? else {
            return Ok(None);
        };
        parse_number(name, &v, range, unit).map(Some)
    }

    fn finish(self) -> Result<(), Error> {
        match self.list.first() {
            None => Ok(()),
            Some(a) => Err(Error::Usage(format!(
                "unexpected argument `{}` (see `boot help`)",
                Escaped(a)
            ))),
        }
    }
}

/// Parses `text` as a whole number in `range`, or says what `name` takes.
pub fn parse_number(
    name: &str,
    text: &str,
    range: RangeInclusive<u64>,
    unit: &str,
) -> Result<u64, Error> {
    let give = format!("give {} to {} ({unit})", range.start(), range.end());
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits {
        return Err(Error::Usage(format!(
            "{name}: `{}` is not a whole number: {give}",
            Escaped(text)
        )));
    }
    match text.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(Error::Usage(format!(
            "{name}: {text} is out of range: {give}"
        ))),
    }
}

fn to_u32(n: u64) -> u32 {
    // Every range above fits a u32.
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn scenario(args: &mut Args) -> Result<Scenario, Error> {
    let root = kernel_build::repo_root();
    let config = args
        .value("--config", "a VM configuration file (TOML)")?
        .map(PathBuf::from);
    let selftest = args.optional_value("--selftest");
    let crash = args.value("--crash", "page-fault, breakpoint or double-fault")?;
    let bench = args.flag("--bench");
    let stop_after_ms = args
        .number("--stop-after", STOP_AFTER_MS, "milliseconds")?
        .map(to_u32);
    let no_power_off = args.flag("--no-power-off");
    let command = match (selftest, crash) {
        (Some(_), Some(_)) => {
            return Err(Error::Usage(
                "--selftest and --crash exclude each other".into(),
            ))
        }
        (Some(filter), None) => Command::SelfTest { filter },
        (None, Some(kind)) => Command::Crash(CrashTest::from_name(&kind).ok_or_else(|| {
            Error::Usage(format!(
                "--crash: unknown kind `{}` (page-fault, breakpoint, double-fault)",
                Escaped(&kind)
            ))
        })?),
        (None, None) => Command::RunVms,
    };
    let config = match (&command, config) {
        (_, Some(c)) => Some(c),
        (Command::RunVms, None) if bench => Some(root.join("boot/configs/bench.toml")),
        (Command::RunVms, None) => Some(root.join("boot/configs/default.toml")),
        _ => None,
    };
    let options = BootOptions {
        serial_input: false,
        stop_after_ms,
        bench,
        power_off: !no_power_off,
        control: false,
    };
    Ok(Scenario {
        command,
        options,
        config,
    })
}

/// `--smp`/`--cpus` and `--mem` for `build` and `check-config`: limits only
/// when given.
fn machine(args: &mut Args, cpu_options: &[&'static str]) -> Result<MachineHint, Error> {
    let mut cpus = None;
    for &name in cpu_options {
        if let Some(n) = args.number(name, CPUS, "CPUs")? {
            if cpus.is_some() {
                return Err(Error::Usage(format!(
                    "give the CPU count once ({})",
                    cpu_options.join(" or ")
                )));
            }
            cpus = Some((to_u32(n), name));
        }
    }
    let memory_mib = args
        .number("--mem", MEM_MIB, "MiB")?
        .map(|n| (to_u32(n), "--mem"));
    Ok(MachineHint { cpus, memory_mib })
}

fn run_options(args: &mut Args) -> Result<RunOptions, Error> {
    let bochs = args.flag("--bochs");
    let bios = args.flag("--bios") || bochs;
    let gdb = args.flag("--gdb");
    if bochs && gdb {
        return Err(Error::Usage(
            "--gdb works with QEMU only (Debian's Bochs has no gdbstub)".into(),
        ));
    }
    Ok(RunOptions {
        emulator: if bochs {
            Emulator::Bochs
        } else {
            Emulator::Qemu
        },
        firmware: if bios { Firmware::Bios } else { Firmware::Uefi },
        memory_mib: args
            .number("--mem", MEM_MIB, "MiB")?
            .map_or(DEFAULT_MEM_MIB, to_u32),
        cpus: args
            .number("--smp", CPUS, "CPUs")?
            .map_or(DEFAULT_CPUS, to_u32),
        cpu: match args.value("--cpu", "intel, amd or none")? {
            None => CpuModel::Default,
            Some(name) => CpuModel::from_name(&name).ok_or_else(|| {
                Error::Usage(format!(
                    "--cpu {}: expected intel, amd or none",
                    Escaped(&name)
                ))
            })?,
        },
        gdb,
        display: args.flag("--display"),
        timeout: args
            .number("--timeout", TIMEOUT_SECS, "seconds")?
            .map(Duration::from_secs),
    })
}

/// Parses the arguments after the program name. Nothing is built or read.
pub fn parse(argv: Vec<String>) -> Result<Cli, Error> {
    let mut argv = argv;
    if argv.is_empty() {
        return Ok(Cli::Help);
    }
    let cmd = argv.remove(0);
    let mut args = Args { list: argv };
    let cli = match cmd.as_str() {
        "help" | "--help" | "-h" => Cli::Help,
        "build" => {
            let mut scenario = scenario(&mut args)?;
            // Images for real machines should keep the final report on screen.
            scenario.options.power_off = scenario.options.power_off && !args.flag("--for-usb");
            let machine = machine(&mut args, &["--smp"])?;
            Cli::Build { scenario, machine }
        }
        "run" => {
            let mut scenario = scenario(&mut args)?;
            scenario.options.serial_input = true;
            // Interactive runs are managed at run time (issue 11) unless
            // they measure: benchmarks end when their VMs do.
            scenario.options.control = !scenario.options.bench;
            let run = run_options(&mut args)?;
            Cli::Run { scenario, run }
        }
        "flash" => {
            let given = args
                .value("--image", "a disk image file")?
                .map(PathBuf::from);
            let default =
                kernel_build::output_dir(&kernel_build::repo_root()).join("images/hv-uefi.img");
            let rest = std::mem::take(&mut args.list);
            return Ok(Cli::Flash {
                image: given.unwrap_or(default),
                rest,
            });
        }
        "check-config" => {
            let machine = machine(&mut args, &["--cpus", "--smp"])?;
            let file = match args.list.iter().position(|a| !a.starts_with("--")) {
                Some(i) => PathBuf::from(args.list.remove(i)),
                None => return Err(Error::Usage("check-config needs a FILE".into())),
            };
            Cli::CheckConfig { file, machine }
        }
        other => {
            return Err(Error::Usage(format!(
                "unknown command `{}` (see `boot help`)",
                Escaped(other)
            )));
        }
    };
    args.finish()?;
    Ok(cli)
}

/// Why `flash --image PATH` cannot use PATH, if it cannot: missing (build
/// first) or not a regular file (named by kind).
pub fn flash_image_problem(image: &std::path::Path) -> Option<String> {
    let shown = crate::config::shown(image);
    match std::fs::metadata(image) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "{shown} does not exist: build it first with `cargo run -p boot -- build --for-usb`"
        )),
        Err(e) => Some(format!("{shown}: {e}")),
        Ok(meta) if !meta.is_file() => Some(format!(
            "{shown} is {}, not a disk image file (--image takes the image to write; the device comes separately)",
            crate::files::kind_of(&meta)
        )),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Cli, Error> {
        parse(line.split_whitespace().map(String::from).collect())
    }

    fn usage_error(line: &str) -> String {
        match parse_str(line) {
            Err(Error::Usage(m)) => m,
            other => panic!("{line}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn numbers_are_parsed_into_their_range() {
        assert_eq!(
            usage_error("run --stop-after 4294967296"),
            "--stop-after: 4294967296 is out of range: give 1 to 4294967295 (milliseconds)"
        );
        assert_eq!(
            usage_error("run --mem 4294967808"),
            "--mem: 4294967808 is out of range: give 64 to 65536 (MiB)"
        );
        assert_eq!(
            usage_error("run --smp 4294967298"),
            "--smp: 4294967298 is out of range: give 1 to 256 (CPUs)"
        );
        assert_eq!(
            usage_error("check-config x.toml --cpus 4294967296"),
            "--cpus: 4294967296 is out of range: give 1 to 256 (CPUs)"
        );
        assert_eq!(
            usage_error("run --smp -1"),
            "--smp: `-1` is not a whole number: give 1 to 256 (CPUs)"
        );
        assert_eq!(
            usage_error("run --smp 0"),
            "--smp: 0 is out of range: give 1 to 256 (CPUs)"
        );
        assert_eq!(
            usage_error("run --timeout 0"),
            "--timeout: 0 is out of range: give 1 to 31536000 (seconds)"
        );
        assert_eq!(
            usage_error("run --mem +512"),
            "--mem: `+512` is not a whole number: give 64 to 65536 (MiB)"
        );
        assert_eq!(
            usage_error("run --mem 99999999999999999999999"),
            "--mem: 99999999999999999999999 is out of range: give 64 to 65536 (MiB)"
        );
        assert_eq!(
            usage_error("run --mem"),
            "--mem needs a value: 64 to 65536 (MiB)"
        );
        assert_eq!(
            usage_error("run --mem --bochs"),
            "--mem needs a value: 64 to 65536 (MiB)"
        );
        // The edges are accepted.
        match parse_str("run --mem 65536 --smp 256 --stop-after 4294967295 --timeout 1").unwrap() {
            Cli::Run { scenario, run } => {
                assert_eq!((run.memory_mib, run.cpus), (65536, 256));
                assert_eq!(scenario.options.stop_after_ms, Some(u32::MAX));
                assert_eq!(run.timeout, Some(Duration::from_secs(1)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_options_are_refused_before_anything_is_built() {
        assert_eq!(
            usage_error("run --frobnicate"),
            "unexpected argument `--frobnicate` (see `boot help`)"
        );
        assert_eq!(
            usage_error("run --bochs --gdb"),
            "--gdb works with QEMU only (Debian's Bochs has no gdbstub)"
        );
        assert_eq!(
            usage_error("build --selftest x --crash page-fault"),
            "--selftest and --crash exclude each other"
        );
        assert_eq!(
            usage_error("run --crash triple"),
            "--crash: unknown kind `triple` (page-fault, breakpoint, double-fault)"
        );
        assert_eq!(
            usage_error("frob"),
            "unknown command `frob` (see `boot help`)"
        );
        assert_eq!(usage_error("check-config"), "check-config needs a FILE");
        assert_eq!(
            usage_error("check-config a.toml b.toml"),
            "unexpected argument `b.toml` (see `boot help`)"
        );
        assert_eq!(
            usage_error("check-config a.toml --cpus 2 --smp 2"),
            "give the CPU count once (--cpus or --smp)"
        );
        assert_eq!(
            usage_error("run \u{1b}[2J"),
            "unexpected argument `\\x1b[2J` (see `boot help`)"
        );
    }

    #[test]
    fn run_knows_its_machine_and_check_config_its_hints() {
        match parse_str("run").unwrap() {
            Cli::Run { scenario, run } => {
                assert_eq!(
                    run.machine(),
                    MachineHint {
                        cpus: Some((2, "--smp")),
                        memory_mib: Some((512, "--mem"))
                    }
                );
                assert_eq!(run.emulator, Emulator::Qemu);
                assert!(scenario.options.serial_input);
                assert!(scenario
                    .config
                    .unwrap()
                    .ends_with("boot/configs/default.toml"));
            }
            other => panic!("{other:?}"),
        }
        match parse_str("run --bochs --smp 1").unwrap() {
            Cli::Run { run, .. } => assert_eq!(
                (run.emulator, run.firmware, run.cpus),
                (Emulator::Bochs, Firmware::Bios, 1)
            ),
            other => panic!("{other:?}"),
        }
        match parse_str("check-config --mem 1024 vms.toml --cpus 4").unwrap() {
            Cli::CheckConfig { file, machine } => {
                assert_eq!(file, PathBuf::from("vms.toml"));
                assert_eq!(
                    machine,
                    MachineHint {
                        cpus: Some((4, "--cpus")),
                        memory_mib: Some((1024, "--mem"))
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        match parse_str("build --for-usb").unwrap() {
            Cli::Build { scenario, machine } => {
                assert!(!scenario.options.power_off);
                assert_eq!(machine, MachineHint::NONE);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flash_image_must_be_an_image_file() {
        let dir = std::env::temp_dir().join(format!("hv-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("none.img");
        assert!(flash_image_problem(&missing).unwrap().ends_with(
            "does not exist: build it first with `cargo run -p boot -- build --for-usb`"
        ));
        let shown = flash_image_problem(&dir).unwrap();
        assert!(
            shown.contains("is a directory, not a disk image file"),
            "{shown}"
        );
        let shown = flash_image_problem(std::path::Path::new("/dev/null")).unwrap();
        assert!(
            shown.contains("is a character device, not a disk image file"),
            "{shown}"
        );
        let file = dir.join("hv.img");
        std::fs::write(&file, [0u8; 512]).unwrap();
        assert_eq!(flash_image_problem(&file), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
