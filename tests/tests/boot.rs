//! Booting the real images: QEMU with UEFI and BIOS, Bochs; the runner's
//! timeout; the one-line VT-x notice under QEMU's TCG.
//!
//! The boot tests run the `acpi` self-test only: a quick, successful end whose
//! CPU count line is checked against the emulator's.

#![forbid(unsafe_code)]
use std::time::Duration;

use hv_tests::*;

#[test]
fn qemu_uefi_boots() {
    let o = boot_qemu_uefi("qemu_uefi_boots", &selftest_scenario("acpi"), 2);
    assert_boot_report(&o, "UEFI", 2);
    assert_kernel_line(&o, "selftest acpi: 2 CPUs");
    assert_success(&o);
}

#[test]
fn qemu_bios_boots() {
    let o = boot_qemu_bios("qemu_bios_boots", &selftest_scenario("acpi"), 2);
    assert_boot_report(&o, "BIOS", 2);
    assert_kernel_line(&o, "selftest acpi: 2 CPUs");
    assert_success(&o);
}

#[test]
fn bochs_boots() {
    let o = boot_bochs("bochs_boots", &selftest_scenario("acpi"), 1);
    assert_boot_report(&o, "BIOS", 1);
    assert_kernel_line(&o, "CPU: GenuineIntel");
    assert_kernel_line(&o, "selftest acpi: 1 CPUs");
    assert_success(&o);
}

/// A CPU with neither VT-x nor AMD-V (QEMU's `qemu64` without SVM): the
/// default run says so in one line and ends cleanly, and `boot run` exits
/// with 4 (no VM started).
#[test]
fn no_hardware_virtualization() {
    let scenario = default_vms_scenario();
    let machine = Machine::qemu_uefi(2).with_cpu(CpuModel::NoVirtualization);
    let o = boot_on("no_hardware_virtualization", &scenario, &machine);
    let notices: Vec<&str> = kernel_lines(&o)
        .filter(|l| l.contains("no hardware virtualization"))
        .collect();
    if notices.len() != 1
        || !notices[0].contains("VT-x not available")
        || !notices[0].contains("AMD-V not available")
    {
        fail(
            &o,
            &format!("expected one line naming both extensions, found {notices:?}"),
        );
    }
    assert_run_status(&o, &scenario, status::NO_VM_STARTED);
    assert_success(&o);
}

/// The runner kills an emulator that outlives its time limit and reports the
/// timeout; no emulator process is left behind.
#[test]
fn runner_kills_emulator_on_timeout() {
    let name = "runner_kills_emulator_on_timeout";
    let images = images(name, &selftest_scenario(""));
    let spec = RunSpec {
        emulator: Emulator::Qemu,
        firmware: Firmware::Uefi,
        image: images.uefi.clone(),
        memory_mib: MEMORY_MIB,
        cpus: 1,
        cpu: CpuModel::Default,
        gdb: false,
        display: false,
        interactive: false,
        // OVMF alone takes longer than this, so the kernel never gets to report.
        timeout: Some(Duration::from_secs(1)),
        work_dir: work_dir(name),
        input: Vec::new(),
        control: None,
    };
    let o = boot::run::run(&spec).unwrap_or_else(|e| panic!("[{name}] cannot boot: {e}"));
    if !matches!(o.ending, Ending::TimedOut(_)) {
        fail(&o, "expected the run to time out");
    }
    if o.elapsed > Duration::from_secs(10) {
        fail(
            &o,
            "the runner took far longer than the limit to stop the emulator",
        );
    }
    // `run` waits for the killed child; nothing may still run the image.
    let image = images.uefi.display().to_string();
    let left = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(&image)
        .output();
    match left {
        Ok(out) if out.status.code() == Some(1) => {}
        Ok(out) => fail(
            &o,
            &format!(
                "an emulator still runs {image}: pgrep says {:?}",
                String::from_utf8_lossy(&out.stdout)
            ),
        ),
        Err(e) => panic!("[{name}] cannot run pgrep (procps): {e}"),
    }
}
