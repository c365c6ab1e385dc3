//! `boot`: the hypervisor's host tool. Run `boot help` for the commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use boot::image::Firmware;
use boot::pack::Scenario;
use boot::run::{Emulator, Ending, RunSpec};
use boot::{kernel_build, pack, run, Error};
use hvcore::package::{BootOptions, Command, CrashTest};

const HELP: &str = "\
boot: build, run and flash the hypervisor

USAGE:
  boot build [SCENARIO]            build the kernel, guests and both disk images
  boot run [SCENARIO] [RUN]        build, then boot in an emulator
  boot flash DEVICE [--image IMG] [--yes] [--dry-run]
                                   write the UEFI image to a USB stick
  boot check-config FILE [--cpus N]
                                   validate a VM configuration

SCENARIO (what the kernel does; default: run the VMs of boot/configs/default.toml):
  --config FILE     VM configuration (TOML)
  --selftest [F]    run the in-kernel test cases (names containing F)
  --crash KIND      take a deliberate exception: page-fault, breakpoint, double-fault
  --bench           run the benchmark guests and print figures
  --stop-after MS   shut down after MS milliseconds
  --no-power-off    halt at the end instead of powering off (real machines)

RUN:
  --bios            boot the BIOS image instead of UEFI
  --bochs           use Bochs (BIOS image, Skylake-X CPU with VMX) instead of QEMU
  --mem MIB         machine memory in MiB (default 512)
  --smp N           number of CPUs (default 2)
  --gdb             QEMU waits for GDB on localhost:1234 (target remote :1234)
  --display         show the emulator window (framebuffer console)
  --timeout SECS    kill the emulator after SECS seconds

ENVIRONMENT:
  HV_TARGET_DIR     where builds, images and run logs go (default <repo>/target)

The exit status of `run` is the kernel's: 0 for success, else the kernel's
exit code (see hvcore::KernelExit), 124 on timeout, 125 if the emulator died.";

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

    fn value(&mut self, name: &str) -> Result<Option<String>, Error> {
        let Some(i) = self.list.iter().position(|a| a == name) else { return Ok(None) };
        if i + 1 >= self.list.len() || self.list[i + 1].starts_with("--") {
            return Err(Error::Usage(format!("{name} needs a value")));
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

    fn number(&mut self, name: &str) -> Result<Option<u64>, Error> {
        match self.value(name)? {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| Error::Usage(format!("{name}: `{v}` is not a number"))),
        }
    }

    fn finish(self) -> Result<(), Error> {
        match self.list.first() {
            None => Ok(()),
            Some(a) => Err(Error::Usage(format!("unexpected argument `{a}` (see `boot help`)"))),
        }
    }
}

fn scenario(args: &mut Args) -> Result<Scenario, Error> {
    let root = kernel_build::repo_root();
    let config = args.value("--config")?.map(PathBuf::from);
    let selftest = args.optional_value("--selftest");
    let crash = args.value("--crash")?;
    let bench = args.flag("--bench");
    let stop_after_ms = args.number("--stop-after")?.map(|v| v as u32);
    let no_power_off = args.flag("--no-power-off");
    let command = match (selftest, crash) {
        (Some(_), Some(_)) => return Err(Error::Usage("--selftest and --crash exclude each other".into())),
        (Some(filter), None) => Command::SelfTest { filter },
        (None, Some(kind)) => Command::Crash(CrashTest::from_name(&kind).ok_or_else(|| {
            Error::Usage(format!("--crash: unknown kind `{kind}` (page-fault, breakpoint, double-fault)"))
        })?),
        (None, None) => Command::RunVms,
    };
    let config = match (&command, config) {
        (_, Some(c)) => Some(c),
        (Command::RunVms, None) if bench => Some(root.join("boot/configs/bench.toml")),
        (Command::RunVms, None) => Some(root.join("boot/configs/default.toml")),
        _ => None,
    };
    let options = BootOptions { serial_input: false, stop_after_ms, bench, power_off: !no_power_off };
    Ok(Scenario { command, options, config })
}

fn run_spec(args: &mut Args, images: &boot::image::Images, interactive: bool) -> Result<RunSpec, Error> {
    let bochs = args.flag("--bochs");
    let bios = args.flag("--bios") || bochs;
    let firmware = if bios { Firmware::Bios } else { Firmware::Uefi };
    let spec = RunSpec {
        emulator: if bochs { Emulator::Bochs } else { Emulator::Qemu },
        firmware,
        image: images.for_firmware(firmware).to_path_buf(),
        memory_mib: args.number("--mem")?.unwrap_or(512) as u32,
        cpus: args.number("--smp")?.unwrap_or(2) as u32,
        gdb: args.flag("--gdb"),
        display: args.flag("--display"),
        interactive,
        timeout: args.number("--timeout")?.map(Duration::from_secs),
        work_dir: kernel_build::output_dir(&kernel_build::repo_root()).join("run"),
    };
    Ok(spec)
}

fn main_inner() -> Result<u8, Error> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        println!("{HELP}");
        return Ok(0);
    }
    let cmd = argv.remove(0);
    let mut args = Args { list: argv };
    match cmd.as_str() {
        "help" | "--help" | "-h" => {
            println!("{HELP}");
            Ok(0)
        }
        "build" => {
            let mut sc = scenario(&mut args)?;
            // Images for real machines should keep the final report on screen.
            sc.options.power_off = sc.options.power_off && !args.flag("--for-usb");
            args.finish()?;
            let images = pack::prepare(&sc, "hv")?;
            println!("UEFI image: {}\nBIOS image: {}", images.uefi.display(), images.bios.display());
            Ok(0)
        }
        "run" => {
            let mut sc = scenario(&mut args)?;
            sc.options.serial_input = true;
            let images = pack::prepare(&sc, "hv")?;
            let spec = run_spec(&mut args, &images, true)?;
            args.finish()?;
            if spec.emulator == Emulator::Qemu {
                if run::kvm_with_vmx_usable() {
                    eprintln!("==> QEMU with KVM and nested VT-x");
                } else {
                    eprintln!("==> no usable KVM with VT-x here: QEMU uses TCG, which does not emulate VMX (the kernel will say VT-x is unavailable; use --bochs to run VMs)");
                }
            }
            if spec.gdb {
                eprintln!("==> waiting for GDB: gdb {} -ex 'target remote :1234'", images.uefi.with_file_name("kernel").display());
            }
            eprintln!("==> booting {} ({:?})", spec.image.display(), spec.emulator);
            let outcome = run::run(&spec)?;
            eprintln!("\n==> {} after {:.1} s", outcome.ending, outcome.elapsed.as_secs_f64());
            Ok(match outcome.ending {
                Ending::Kernel(c) if c == hvcore::KernelExit::Success as u32 => 0,
                Ending::Kernel(c) => c.min(255) as u8,
                Ending::TimedOut(_) => 124,
                Ending::EmulatorExited(_) => 125,
            })
        }
        "flash" => {
            let image = args.value("--image")?.map(PathBuf::from);
            let default = kernel_build::output_dir(&kernel_build::repo_root()).join("images/hv-uefi.img");
            let image = image.unwrap_or(default);
            if !image.is_file() {
                return Err(Error::Usage(format!(
                    "{} does not exist: build it first with `cargo run -p boot -- build --for-usb`",
                    image.display()
                )));
            }
            let rest = args.list;
            let opts = boot::flash::parse_args_with_default(&rest, Some(&image))?;
            boot::flash::flash(&opts)?;
            Ok(0)
        }
        "check-config" => {
            let cpus = args.number("--cpus")?.map(|v| v as u32);
            let Some(file) = args.list.first().cloned() else {
                return Err(Error::Usage("check-config needs a FILE".into()));
            };
            args.list.remove(0);
            args.finish()?;
            let loaded = pack::load_config(std::path::Path::new(&file), cpus, None)?;
            println!("{file}: OK, {} VM(s)", loaded.vms.len());
            for vm in &loaded.vms {
                println!("  {}: {} MiB, CPUs {:?}, slice {} us", vm.name, vm.memory_bytes >> 20, vm.cpus, vm.slice_us);
            }
            Ok(0)
        }
        other => Err(Error::Usage(format!("unknown command `{other}` (see `boot help`)"))),
    }
}

fn main() -> ExitCode {
    match main_inner() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
