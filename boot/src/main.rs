//! `boot`: the hypervisor's host tool. Run `boot help` for the commands.
//!
//! The whole command line is checked first ([`boot::cli::parse`]); only then is
//! anything built, checked against the machine, packed or booted.

#![forbid(unsafe_code)]
use std::process::ExitCode;

use boot::cli::{self, Cli};
use boot::run::{self, status, Emulator, RunSpec};
use boot::{kernel_build, pack, Error};
use hvcore::package::Command;

fn main_inner() -> Result<u8, Error> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("ctl") {
        let opts = boot::ctl::parse_args(&argv[1..])?;
        return boot::ctl::run(&opts);
    }
    match cli::parse(argv)? {
        Cli::Help => {
            println!("{}", cli::HELP);
            Ok(status::OK)
        }
        Cli::Build { scenario, machine } => {
            let images = pack::prepare_for(&scenario, "hv", &machine)?;
            println!(
                "UEFI image: {}\nBIOS image: {}",
                images.uefi.display(),
                images.bios.display()
            );
            Ok(status::OK)
        }
        Cli::Run {
            scenario,
            run: options,
        } => {
            run::check_tools(options.emulator, options.firmware)?;
            let images = pack::prepare_for(&scenario, "hv", &options.machine())?;
            let spec = RunSpec {
                emulator: options.emulator,
                firmware: options.firmware,
                image: images.for_firmware(options.firmware).to_path_buf(),
                memory_mib: options.memory_mib,
                cpus: options.cpus,
                cpu: options.cpu,
                gdb: options.gdb,
                display: options.display,
                interactive: true,
                timeout: options.timeout,
                work_dir: kernel_build::output_dir(&kernel_build::repo_root()).join("run"),
                input: Vec::new(),
                // The control port (COM2) next to the run's logs:
                // `cargo run -p boot -- ctl list` finds it there.
                control: (options.emulator == Emulator::Qemu && scenario.options.control)
                    .then(boot::ctl::default_socket),
            };
            if spec.emulator == Emulator::Qemu {
                match (spec.cpu, run::kvm_nested()) {
                    (run::CpuModel::NoVirtualization, _) => {
                        eprintln!("==> QEMU TCG with a CPU without VT-x or AMD-V (qemu64)")
                    }
                    (run::CpuModel::Default | run::CpuModel::Intel, Some("vmx")) => {
                        eprintln!("==> QEMU with KVM and nested VT-x")
                    }
                    (run::CpuModel::Default | run::CpuModel::Amd, Some("svm")) => {
                        eprintln!("==> QEMU with KVM and nested AMD-V")
                    }
                    (run::CpuModel::Amd, _) => eprintln!("==> QEMU TCG with an EPYC CPU (AMD-V with nested paging)"),
                    _ => eprintln!(
                        "==> no KVM that runs nested guests here: QEMU uses TCG with AMD-V and nested paging (TCG does not emulate VT-x; --bochs runs VT-x)"
                    ),
                }
            }
            if spec.gdb {
                eprintln!(
                    "==> waiting for GDB: gdb {} -ex 'target remote :1234'",
                    images.uefi.with_file_name("kernel").display()
                );
            }
            eprintln!("==> booting {} ({:?})", spec.image.display(), spec.emulator);
            let outcome = run::run(&spec)?;
            let runs_vms = scenario.command == Command::RunVms;
            let code = run::exit_status(&outcome, runs_vms);
            let why = match code {
                status::VMS_REFUSED => " (the kernel refused some of the configured VMs)",
                status::NO_VM_STARTED => " (no VM was started)",
                _ => "",
            };
            eprintln!(
                "\n==> {} after {:.1} s; exit status {code}{why}",
                outcome.ending,
                outcome.elapsed.as_secs_f64()
            );
            if let Some(report) = outcome.triple_fault_report() {
                eprintln!("==> {report}");
            }
            Ok(code)
        }
        Cli::Flash { image, rest } => {
            let opts = boot::flash::parse_args_with_default(&rest, Some(&image))?;
            if let Some(problem) = cli::flash_image_problem(&opts.image) {
                return Err(Error::Usage(problem));
            }
            boot::flash::flash(&opts)?;
            Ok(status::OK)
        }
        Cli::CheckConfig { file, machine } => {
            let loaded = pack::load_config(&file, &machine)?;
            println!(
                "{}: OK, {} VM(s)",
                boot::config::shown(&file),
                loaded.vms.len()
            );
            for vm in &loaded.vms {
                let name_of = |i: u32| {
                    let image = usize::try_from(i).ok().and_then(|i| loaded.images.get(i));
                    hvcore::text::Escaped(image.map_or("?", |image| image.name.as_str()))
                };
                let boots = if vm.mode.is_kernel() {
                    let initrd = vm
                        .initrd
                        .map(|i| format!(", initrd {}", name_of(i)))
                        .unwrap_or_default();
                    format!("kernel {} ({}){initrd}", name_of(vm.image), vm.mode.name())
                } else {
                    format!("image {} ({})", name_of(vm.image), vm.mode.name())
                };
                println!(
                    "  {}: {} MiB, CPUs {:?}, slice {} us, {boots}, on reboot {}",
                    vm.name,
                    vm.memory_bytes >> 20,
                    vm.cpus,
                    vm.slice_us,
                    vm.on_reboot.name()
                );
            }
            Ok(status::OK)
        }
    }
}

fn main() -> ExitCode {
    match main_inner() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(status::TOOL_ERROR)
        }
    }
}
