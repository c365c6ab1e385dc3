//! Integration-test support: build an image for a scenario, boot it in QEMU or
//! Bochs through the `boot` library, and assert on what the kernel printed.
//!
//! Rules (STYLE.md item 13): every run has a time limit and the emulator is
//! killed when it passes (`boot::run` does that, also when a test panics); a
//! failed assertion prints the test name, the emulator command line, how the
//! run ended and the serial tail ([`Outcome`]'s `Display`); a missing emulator
//! fails the test with what to install, it is never skipped.
//!
//! Everything a test writes goes under `<target>/tests/<name>/` (`<target>` is
//! `$HV_TARGET_DIR` or `<repo>/target`): the images `<target>/images/t-<name>-*.img`,
//! the serial log, the emulator's log and any configuration file.
//!
//! The serial log mixes the kernel's lines with guest output (`vm NAME: TEXT`).
//! Assert on the kernel with [`assert_kernel_line`] / [`kernel_line_with`]
//! and on a guest with [`assert_guest_line`]: a guest printing a kernel
//! message cannot satisfy a kernel assertion. [`assert_contains`] looks at
//! every line and is for text either may print.
//!
//! A typical test:
//!
//! ```no_run
//! use hv_tests::*;
//! let outcome = boot_qemu_uefi("my_test", &selftest_scenario("acpi"), 2);
//! assert_success(&outcome);
//! assert_kernel_line(&outcome, "selftest acpi ... ok");
//! ```

#![forbid(unsafe_code)]
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

pub use boot::image::{Firmware, Images};
pub use boot::pack::Scenario;
pub use boot::run::{status, CpuModel, Emulator, Ending, InputStep, Outcome, RunSpec, VmStart};
pub use hvcore::package::{BootOptions, Command, CrashTest};
pub use hvcore::KernelExit;

/// Time limit of a QEMU boot.
pub const QEMU_TIMEOUT: Duration = Duration::from_secs(60);
/// Time limit of a Bochs boot (Bochs runs tens of MIPS; the kernel is reached
/// after about 20 s on a busy machine).
pub const BOCHS_TIMEOUT: Duration = Duration::from_secs(300);
/// Guest RAM of test machines, MiB.
pub const MEMORY_MIB: u32 = 512;

/// The in-kernel test cases of `kernel/src/selftest.rs`, in run order.
pub const SELFTEST_CASES: &[&str] = &["frames", "heap", "mapper", "acpi", "timers", "breakpoint"];

/// In-kernel cases that need VT-x (`unavailable` on CPUs without it).
pub const VMX_SELFTEST_CASES: &[&str] = &["vmentry-bad-guest-state", "vmentry-bad-controls"];

/// Where the host tool puts builds, images and runs (`$HV_TARGET_DIR` or `<repo>/target`).
pub fn target_dir() -> PathBuf {
    boot::kernel_build::output_dir(&boot::kernel_build::repo_root())
}

/// A test's own folder (`<target>/tests/<name>`), created empty-or-existing.
pub fn work_dir(name: &str) -> PathBuf {
    let dir = target_dir().join("tests").join(name);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("[{name}] cannot create {}: {e}", dir.display()));
    dir
}

/// Boot options for scripted runs: no serial input, power off at the end.
pub fn options() -> BootOptions {
    BootOptions {
        serial_input: false,
        stop_after_ms: None,
        bench: false,
        power_off: true,
        control: false,
    }
}

/// A scenario that runs the in-kernel test cases whose names contain `filter`.
pub fn selftest_scenario(filter: &str) -> Scenario {
    Scenario {
        command: Command::SelfTest {
            filter: filter.into(),
        },
        options: options(),
        config: None,
    }
}

/// A scenario that takes a deliberate exception.
pub fn crash_scenario(kind: CrashTest) -> Scenario {
    Scenario {
        command: Command::Crash(kind),
        options: options(),
        config: None,
    }
}

/// A scenario that runs the VMs of a configuration file (see [`config_file`]).
pub fn vms_scenario(config: &Path) -> Scenario {
    Scenario {
        command: Command::RunVms,
        options: options(),
        config: Some(config.to_path_buf()),
    }
}

/// The VMs of `boot/configs/default.toml` (what `./qemu-run.sh` runs).
pub fn default_vms_scenario() -> Scenario {
    vms_scenario(&boot::kernel_build::repo_root().join("boot/configs/default.toml"))
}

/// Writes `toml_text` to `<target>/tests/<name>/<name>.toml` and returns the
/// path (`file:` image paths in it are relative to that folder).
pub fn config_file(name: &str, toml_text: &str) -> PathBuf {
    let path = work_dir(name).join(format!("{name}.toml"));
    std::fs::write(&path, toml_text)
        .unwrap_or_else(|e| panic!("[{name}] cannot write {}: {e}", path.display()));
    path
}

/// Images already built in this process, by test name.
static IMAGES: Mutex<Option<HashMap<String, Images>>> = Mutex::new(None);

/// Builds the UEFI and BIOS images for `scenario` as `<target>/images/t-<name>-*.img`,
/// once per name in this process (the kernel itself is built once per process).
pub fn images(name: &str, scenario: &Scenario) -> Images {
    if let Some(found) = IMAGES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(name)
    {
        return found.clone();
    }
    let built = boot::pack::prepare(scenario, &format!("t-{name}"))
        .unwrap_or_else(|e| panic!("[{name}] cannot build the images: {e}"));
    IMAGES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(name.into(), built.clone());
    built
}

/// One boot to make: which emulator, firmware, CPUs and time limit.
#[derive(Debug, Clone)]
pub struct Machine {
    /// QEMU or Bochs.
    pub emulator: Emulator,
    /// UEFI or BIOS image.
    pub firmware: Firmware,
    /// Emulated CPUs.
    pub cpus: u32,
    /// Emulated CPU model (which virtualization backend the kernel finds).
    pub cpu: CpuModel,
    /// Wall-clock limit.
    pub timeout: Duration,
}

impl Machine {
    /// QEMU with OVMF.
    pub fn qemu_uefi(cpus: u32) -> Self {
        Machine {
            emulator: Emulator::Qemu,
            firmware: Firmware::Uefi,
            cpus,
            cpu: CpuModel::Default,
            timeout: QEMU_TIMEOUT,
        }
    }
    /// QEMU with SeaBIOS.
    pub fn qemu_bios(cpus: u32) -> Self {
        Machine {
            emulator: Emulator::Qemu,
            firmware: Firmware::Bios,
            cpus,
            cpu: CpuModel::Default,
            timeout: QEMU_TIMEOUT,
        }
    }
    /// Bochs (BIOS image, Skylake-X CPU with VMX).
    pub fn bochs(cpus: u32) -> Self {
        Machine {
            emulator: Emulator::Bochs,
            firmware: Firmware::Bios,
            cpus,
            cpu: CpuModel::Default,
            timeout: BOCHS_TIMEOUT,
        }
    }

    /// The same machine with another CPU model.
    pub fn with_cpu(self, cpu: CpuModel) -> Self {
        Machine { cpu, ..self }
    }
}

/// Builds the images for `scenario` (once per name) and boots one on `machine`.
/// The result is printed (visible with `--nocapture` and on failure); a missing
/// emulator or firmware panics with the package to install.
pub fn boot_on(name: &str, scenario: &Scenario, machine: &Machine) -> Outcome {
    boot_on_with_input(name, scenario, machine, &[])
}

/// [`boot_on`], typing into the serial console: each step waits until the
/// serial output since the previous step's send contains its text, then
/// sends its bytes ([`InputStep`]). The kernel reads keys only when the
/// scenario's `options.serial_input` is on. Check with
/// [`assert_input_done`] that every step was sent.
pub fn boot_on_with_input(
    name: &str,
    scenario: &Scenario,
    machine: &Machine,
    steps: &[InputStep],
) -> Outcome {
    let images = images(name, scenario);
    let spec = RunSpec {
        emulator: machine.emulator,
        firmware: machine.firmware,
        image: images.for_firmware(machine.firmware).to_path_buf(),
        memory_mib: MEMORY_MIB,
        cpus: machine.cpus,
        cpu: machine.cpu,
        gdb: false,
        display: false,
        interactive: false,
        timeout: Some(machine.timeout),
        work_dir: work_dir(name)
            .join(format!("{:?}-{:?}", machine.emulator, machine.firmware).to_lowercase()),
        input: steps.to_vec(),
        control: None,
    };
    let outcome = boot::run::run(&spec).unwrap_or_else(|e| match e {
        boot::Error::MissingTool { .. } => panic!("[{name}] cannot boot: {e}"),
        e => panic!("[{name}] cannot start {:?}: {e}", machine.emulator),
    });
    eprintln!(
        "==> [{name}] {:?}/{:?} {} CPU(s): {} after {:.1} s (serial log: {})",
        machine.emulator,
        machine.firmware,
        machine.cpus,
        outcome.ending,
        outcome.elapsed.as_secs_f64(),
        spec.work_dir.join("serial.log").display()
    );
    outcome
}

/// Boots the UEFI image in QEMU with `cpus` CPUs.
pub fn boot_qemu_uefi(name: &str, scenario: &Scenario, cpus: u32) -> Outcome {
    boot_on(name, scenario, &Machine::qemu_uefi(cpus))
}

/// Boots the BIOS image in QEMU with `cpus` CPUs.
pub fn boot_qemu_bios(name: &str, scenario: &Scenario, cpus: u32) -> Outcome {
    boot_on(name, scenario, &Machine::qemu_bios(cpus))
}

/// Boots the BIOS image in Bochs with `cpus` CPUs. For VM tests, build the
/// scenario with [`vms_scenario`]`(&`[`config_file`]`(name, toml))`.
pub fn boot_bochs(name: &str, scenario: &Scenario, cpus: u32) -> Outcome {
    boot_on(name, scenario, &Machine::bochs(cpus))
}

/// The running test's name (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current().name().unwrap_or("?").to_owned()
}

/// Fails the test with its name, the reason and the whole run description.
pub fn fail(outcome: &Outcome, why: &str) -> ! {
    panic!("\n[{}] {why}\n{outcome}\n", test_name())
}

/// The kernel reported success.
pub fn assert_success(outcome: &Outcome) {
    if !outcome.success() {
        fail(outcome, "expected the kernel to report success");
    }
}

/// Every input step of the run sent its bytes (each saw what it waited for).
pub fn assert_input_done(outcome: &Outcome) {
    if let Some(text) = &outcome.input_waiting {
        fail(
            outcome,
            &format!(
                "input step {} never saw {text:?} in the serial output",
                outcome.input_sent + 1
            ),
        );
    }
}

/// The kernel reported exactly `code`.
pub fn assert_code(outcome: &Outcome, code: KernelExit) {
    if outcome.ending != Ending::Kernel(code as u32) {
        fail(
            outcome,
            &format!("expected kernel exit {:#x} ({})", code as u32, code.name()),
        );
    }
}

/// The exit status `boot run` (and `./qemu-run.sh`) gives for this run of
/// `scenario`: 0, or [`status::VMS_REFUSED`] (3) when the kernel refused some
/// configured VMs, [`status::NO_VM_STARTED`] (4) when it started none, the
/// kernel's code for other results, 124 on a timeout.
pub fn run_exit_status(outcome: &Outcome, scenario: &Scenario) -> u8 {
    boot::run::exit_status(outcome, scenario.command == Command::RunVms)
}

/// `boot run` would exit with `expected` for this run of `scenario`.
pub fn assert_run_status(outcome: &Outcome, scenario: &Scenario, expected: u8) {
    let got = run_exit_status(outcome, scenario);
    if got != expected {
        fail(
            outcome,
            &format!("expected `boot run` to exit with {expected}, it would exit with {got}"),
        );
    }
}

/// The kernel's own lines: every line that is not guest output (`vm NAME: TEXT`).
pub fn kernel_lines(outcome: &Outcome) -> impl Iterator<Item = &str> {
    outcome
        .serial
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| boot::run::guest_line(l).is_none())
}

/// A line the kernel printed (not a guest) contains `needle`.
pub fn assert_kernel_line(outcome: &Outcome, needle: &str) {
    if !kernel_lines(outcome).any(|l| l.contains(needle)) {
        fail(
            outcome,
            &format!("no kernel line contains {needle:?} (guest output does not count)"),
        );
    }
}

/// No line the kernel printed contains `needle`.
pub fn assert_no_kernel_line(outcome: &Outcome, needle: &str) {
    if let Some(line) = kernel_lines(outcome).find(|l| l.contains(needle)) {
        fail(
            outcome,
            &format!("a kernel line unexpectedly contains {needle:?}: {line:?}"),
        );
    }
}

/// The first line the kernel printed containing `needle`, or a failure.
pub fn kernel_line_with<'a>(outcome: &'a Outcome, needle: &str) -> &'a str {
    match kernel_lines(outcome).find(|l| l.contains(needle)) {
        Some(line) => line,
        None => fail(
            outcome,
            &format!("no kernel line contains {needle:?} (guest output does not count)"),
        ),
    }
}

/// The output lines of guest `vm` (the text after `vm NAME: `).
pub fn guest_lines<'a>(outcome: &'a Outcome, vm: &'a str) -> impl Iterator<Item = &'a str> {
    outcome
        .serial
        .lines()
        .filter_map(move |l| match boot::run::guest_line(l) {
            Some((name, text)) if name == vm => Some(text),
            _ => None,
        })
}

/// Guest `vm` printed a line containing `text`.
pub fn assert_guest_line(outcome: &Outcome, vm: &str, text: &str) {
    if !guest_lines(outcome, vm).any(|l| l.contains(text)) {
        fail(
            outcome,
            &format!("guest {vm:?} printed no line containing {text:?}"),
        );
    }
}

/// The serial log contains `needle` (on any line, the kernel's or a guest's).
pub fn assert_contains(outcome: &Outcome, needle: &str) {
    if !outcome.serial.contains(needle) {
        fail(outcome, &format!("serial log lacks {needle:?}"));
    }
}

/// The serial log does not contain `needle`.
pub fn assert_lacks(outcome: &Outcome, needle: &str) {
    if outcome.serial.contains(needle) {
        fail(
            outcome,
            &format!("serial log unexpectedly contains {needle:?}"),
        );
    }
}

/// The first serial line containing `needle`, or a failure.
pub fn line_with<'a>(outcome: &'a Outcome, needle: &str) -> &'a str {
    match outcome.serial.lines().find(|l| l.contains(needle)) {
        Some(line) => line.trim_end_matches('\r'),
        None => fail(
            outcome,
            &format!("serial log has no line containing {needle:?}"),
        ),
    }
}

/// Every `vm NAME: report KEY=VALUE [KEY=VALUE...]` line as (name, key, value)
/// triples, in log order (guest output lines only).
pub fn vm_reports(outcome: &Outcome) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for line in outcome.serial.lines() {
        let Some((name, text)) = boot::run::guest_line(line) else {
            continue;
        };
        let Some(rest) = text.strip_prefix("report ") else {
            continue;
        };
        for pair in rest.split_whitespace() {
            if let Some((key, value)) = pair.split_once('=') {
                out.push((name.to_owned(), key.to_owned(), value.to_owned()));
            }
        }
    }
    out
}

/// The value reported for `vm`'s `key` (the last one if reported more than once).
pub fn vm_report(outcome: &Outcome, vm: &str, key: &str) -> Option<String> {
    vm_reports(outcome)
        .into_iter()
        .rev()
        .find(|(n, k, _)| n == vm && k == key)
        .map(|(_, _, v)| v)
}

/// Checks the selftest report: every case in `cases` ran and passed, the
/// summary says 0 failed, and ACPI found `cpus` CPUs.
pub fn assert_selftests_passed(outcome: &Outcome, cases: &[&str], cpus: u32) {
    for case in cases {
        assert_kernel_line(outcome, &format!("selftest {case} ... ok"));
    }
    assert_lacks(outcome, "FAILED");
    let summary = kernel_line_with(outcome, "selftest summary:");
    if !summary.contains(&format!(" {} passed, 0 failed", cases.len())) {
        fail(outcome, &format!("unexpected summary {summary:?}"));
    }
    assert_kernel_line(outcome, &format!("selftest acpi: {cpus} CPUs"));
    assert_success(outcome);
}

/// Checks the start of every boot: the banner with the boot path, the memory
/// map summary, the ACPI CPU list and the calibrated timers.
pub fn assert_boot_report(outcome: &Outcome, boot_path: &str, cpus: u32) {
    assert_kernel_line(outcome, "rust-hv ");
    assert_kernel_line(outcome, &format!("boot path: {boot_path}"));
    let memory = kernel_line_with(outcome, "memory map:");
    if !memory.contains("MiB usable") {
        fail(
            outcome,
            &format!("memory map summary {memory:?} has no usable size"),
        );
    }
    assert_kernel_line(outcome, "frames: ");
    assert_kernel_line(
        outcome,
        &format!("ACPI MADT: {cpus} CPU(s) listed, {cpus} enabled"),
    );
    let timers = kernel_line_with(outcome, "timers (against the");
    if !(timers.contains("TSC ") && timers.contains("LAPIC timer ")) {
        fail(
            outcome,
            &format!("timer line {timers:?} lacks TSC or LAPIC figures"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(serial: &str) -> Outcome {
        Outcome {
            command: "fake".into(),
            ending: Ending::Kernel(KernelExit::Success as u32),
            serial: serial.into(),
            elapsed: Duration::from_secs(1),
            kvm: false,
            input_sent: 0,
            input_waiting: None,
            triple_fault: None,
        }
    }

    /// A guest that prints the kernel's messages satisfies no kernel assertion.
    const LOG: &str = "\
 rust-hv 0.1.0\r
[    1.000000] INFO  started 1 of 2 VM(s): mimic\r
vm mimic: selftest acpi ... ok\r
vm mimic: [    2.000000] INFO  started 2 of 2 VM(s): mimic, other\r
vm mimic: HV-EXIT 0x10 success\r
vm mimic: report 1=42 2=7\r
vm mimic (id 0) stopped: shutdown, exit code 0\r
HV-EXIT 0x10 success\r
";

    #[test]
    fn kernel_and_guest_lines_are_kept_apart() {
        let o = outcome(LOG);
        assert_kernel_line(&o, "started 1 of 2 VM(s)");
        assert_kernel_line(&o, "vm mimic (id 0) stopped: shutdown");
        assert_guest_line(&o, "mimic", "selftest acpi ... ok");
        assert_eq!(
            kernel_line_with(&o, "started"),
            "[    1.000000] INFO  started 1 of 2 VM(s): mimic"
        );
        assert_no_kernel_line(&o, "selftest acpi");
        for needle in ["selftest acpi ... ok", "started 2 of 2"] {
            let r = std::panic::catch_unwind(|| assert_kernel_line(&o, needle));
            assert!(
                r.is_err(),
                "{needle:?} satisfied a kernel assertion from guest output"
            );
        }
        let r = std::panic::catch_unwind(|| assert_guest_line(&o, "other", "selftest"));
        assert!(r.is_err());
        assert_eq!(vm_report(&o, "mimic", "1").as_deref(), Some("42"));
        assert_eq!(vm_reports(&o).len(), 2);
    }

    #[test]
    fn run_status_of_a_refusing_kernel() {
        let o = outcome(LOG);
        let scenario = vms_scenario(Path::new("x.toml"));
        assert_eq!(run_exit_status(&o, &scenario), status::VMS_REFUSED);
        assert_run_status(&o, &scenario, 3);
        assert_eq!(run_exit_status(&o, &selftest_scenario("")), status::OK);
    }
}
