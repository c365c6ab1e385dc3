//! Debian's stock cloud kernel (unmodified bzImage, fetched by
//! `tests/linux-assets.sh` into `target/linux/`) in VMs: it boots to its
//! init through the Linux boot protocol on the emulated PC devices, next to
//! other VMs; a Linux VM that reboots is restarted by policy, one that
//! crashes is stopped, and the other VMs keep running throughout.
//!
//! QEMU TCG with AMD-V runs the full scenario (four VMs on two CPUs) in
//! about 30 s; Bochs with VT-x, where booting Linux takes about 20 s of
//! instruction-counted emulation, runs one Linux VM on one CPU through a
//! boot and a reboot.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use hv_tests::*;

/// The assets, or a failure that says how to get them.
fn assets() -> (PathBuf, PathBuf) {
    let dir = target_dir().join("linux");
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"));
    if !kernel.is_file() || !initrd.is_file() {
        panic!(
            "the Linux test assets are missing ({}): run `tests/linux-assets.sh` as root (it fetches Debian's cloud kernel and busybox-static with apt-get download)",
            dir.display()
        );
    }
    (kernel, initrd)
}

/// Two Linux VMs on CPU 1 (one reboots at once and is restarted, one crashes
/// through sysrq and is stopped) and one that stays up, with a counter on
/// CPU 0 beside them.
fn config(name: &str) -> PathBuf {
    let (kernel, initrd) = assets();
    let linux = |vm: &str, cpu: u32, extra: &str, on_reboot: &str| {
        format!(
            r#"
[[vm]]
name = "{vm}"
memory = "128M"
cpus = [{cpu}]
kernel = "file:{kernel}"
initrd = "file:{initrd}"
cmdline = "console=ttyS0 acpi=off pci=off reboot=t panic=-1 {extra}"
on_reboot = "{on_reboot}"
"#,
            kernel = kernel.display(),
            initrd = initrd.display()
        )
    };
    let text = [
        linux("linux", 1, "", "restart"),
        linux("rebooter", 1, "hvtest=reboot", "restart"),
        linux("crasher", 0, "hvtest=crash", "stop"),
        String::from(
            r#"
[[vm]]
name = "counter"
memory = "2M"
cpus = [0]
image = "counter"
"#,
        ),
    ]
    .concat();
    config_file(name, &text)
}

/// Linux's own checks of the CPU it was given found nothing wrong: the
/// XSAVE area's sizes (CPUID 0xD, compacted with XSAVEC), and no MSR it
/// reads or writes unchecked, because CPUID or the CPU family says it
/// exists, raised #GP (IA32_TSC_ADJUST with CPUID.(7,0):EBX[1]; AMD's
/// NB_CFG and interrupt pending message).
fn assert_cpuid_kept_its_promises(o: &Outcome) {
    assert_lacks(o, "XSAVE consistency problem");
    assert_lacks(o, "unchecked MSR access error");
}

fn linux_vms(machine: Machine, tag: &str) {
    let name = format!("linux_{tag}");
    let mut scenario = vms_scenario(&config(&name));
    // The run ends when both awaited events are in (typing `q`), however
    // long the emulator takes for them: a fixed run time was too short for
    // the second boot when the machine was busy (CI runs emulators side by
    // side). The limit is only a backstop.
    scenario.options.serial_input = true;
    scenario.options.stop_after_ms = Some(BACKSTOP_MS);
    let steps = [
        InputStep::new("vm crasher (id 2) stopped: triple fault", []),
        // The restart after the second boot's reboot; either VM may be first.
        InputStep::new("(restart 2)", "q").anywhere(),
    ];
    let o = boot_on_with_input(&name, &scenario, &machine, &steps);
    assert_input_done(&o);
    assert_kernel_line(
        &o,
        "started 4 of 4 VM(s): linux, rebooter, crasher, counter",
    );
    // The stock kernel reaches its init in each VM.
    for vm in ["linux", "rebooter", "crasher"] {
        assert_guest_line(&o, vm, "Linux version 6.1");
        assert_guest_line(&o, vm, "HVLINUX-INIT-OK");
    }
    // Its view of the machine: our E820 map, PIC mode, the PIT and the 16550.
    assert_guest_line(
        &o,
        "linux",
        "BIOS-e820: [mem 0x0000000000100000-0x0000000007ffffff] usable",
    );
    assert_guest_line(
        &o,
        "linux",
        "serial8250: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A",
    );
    // `reboot -f` (a triple fault with reboot=t) restarts that VM by policy.
    assert_guest_line(&o, "rebooter", "HVLINUX-REBOOTING");
    assert_kernel_line(&o, "vm rebooter (id 1) restarting: triple fault");
    let boots = guest_lines(&o, "rebooter")
        .filter(|l| l.contains("HVLINUX-INIT-OK"))
        .count();
    if boots < 2 {
        fail(
            &o,
            &format!("vm rebooter reached its init {boots} time(s); a restart boots it again"),
        );
    }
    // A kernel crash (sysrq c; panic=-1 reboots at once, reboot=t makes that
    // a triple fault) stops that VM only.
    assert_guest_line(&o, "crasher", "HVLINUX-CRASHING");
    assert_guest_line(&o, "crasher", "Kernel panic");
    assert_kernel_line(&o, "vm crasher (id 2) stopped: triple fault");
    // The others ran to the end of the run.
    assert_kernel_line(&o, "vm linux (id 0) stopped: stopped by the hypervisor");
    assert_kernel_line(&o, "vm counter (id 3) stopped: stopped by the hypervisor");
    if guest_lines(&o, "counter")
        .filter(|l| l.contains("report 1="))
        .count()
        < 3
    {
        fail(&o, "the counter beside the Linux VMs made no progress");
    }
    assert_cpuid_kept_its_promises(&o);
    assert_success(&o);
}

/// How long [`linux_vms`] may run if its events do not come (about 30 s
/// of QEMU's time when the machine is not busy).
const BACKSTOP_MS: u32 = 120_000;

#[test]
fn linux_vms_svm_qemu() {
    let machine = Machine {
        timeout: Duration::from_secs(200),
        ..Machine::qemu_bios(2).with_cpu(CpuModel::Amd)
    };
    linux_vms(machine, "svm");
}

/// VT-x: one Linux VM on one CPU boots to its init, reboots, and is
/// restarted by policy.
#[test]
fn linux_boot_and_restart_vtx_bochs() {
    let (kernel, initrd) = assets();
    let name = "linux_vtx";
    let text = format!(
        r#"
[[vm]]
name = "rebooter"
memory = "128M"
cpus = [0]
kernel = "file:{}"
initrd = "file:{}"
cmdline = "console=ttyS0 acpi=off pci=off reboot=t hvtest=reboot"
on_reboot = "restart"
"#,
        kernel.display(),
        initrd.display()
    );
    let mut scenario = vms_scenario(&config_file(name, &text));
    scenario.options.stop_after_ms = Some(30_000);
    let machine = Machine {
        timeout: Duration::from_secs(600),
        ..Machine::bochs(1)
    };
    let o = boot_on(name, &scenario, &machine);
    assert_guest_line(&o, "rebooter", "Linux version 6.1");
    assert_guest_line(&o, "rebooter", "HVLINUX-INIT-OK");
    assert_guest_line(&o, "rebooter", "HVLINUX-REBOOTING");
    assert_kernel_line(&o, "vm rebooter (id 0) restarting: triple fault");
    assert_cpuid_kept_its_promises(&o);
    assert_success(&o);
}

/// An SMP Linux VM: Debian's kernel with two vCPUs, booted with the VM's
/// generated ACPI tables (no `acpi=off`): it brings up the second vCPU,
/// counts two processors and runs a command pinned to each, while a counter
/// VM on another CPU keeps running throughout.
fn smp_linux(machine: Machine, tag: &str, run_ms: u32) {
    let (kernel, initrd) = assets();
    let name = format!("linux_smp_{tag}");
    let text = format!(
        r#"
[[vm]]
name = "linux"
memory = "256M"
cpus = [0, 1]
kernel = "file:{}"
initrd = "file:{}"
cmdline = "console=ttyS0 pci=off reboot=t panic=-1 hvtest=smp"

[[vm]]
name = "counter"
memory = "2M"
cpus = [2]
image = "counter"
"#,
        kernel.display(),
        initrd.display()
    );
    let mut scenario = vms_scenario(&config_file(&name, &text));
    scenario.options.stop_after_ms = Some(run_ms);
    let o = boot_on(&name, &scenario, &machine);
    assert_kernel_line(&o, "vm linux: 256 MiB at host");
    assert_kernel_line(&o, "2 vCPU(s) on CPU(s) [0, 1]");
    assert_guest_line(&o, "linux", "Linux version 6.1");
    // The generated tables: RSDP found through boot_params, the MADT's two
    // local APICs and I/O APIC, the hardware-reduced FADT's PM timer.
    assert_guest_line(&o, "linux", "ACPI: RSDP 0x00000000000E0000");
    assert_guest_line(
        &o,
        "linux",
        "IOAPIC[0]: apic_id 2, version 32, address 0xfec00000, GSI 0-23",
    );
    assert_guest_line(
        &o,
        "linux",
        "ACPI: Using ACPI (MADT) for SMP configuration information",
    );
    assert_guest_line(&o, "linux", "smpboot: Allowing 2 CPUs, 0 hotplug CPUs");
    // INIT-SIPI-SIPI through the virtual local APIC.
    assert_guest_line(&o, "linux", "smp: Brought up 1 node, 2 CPUs");
    assert_guest_line(&o, "linux", "HVLINUX-INIT-OK");
    assert_guest_line(&o, "linux", "HVLINUX-CPUS 2");
    assert_guest_line(&o, "linux", "HVLINUX-RAN-ON-CPU 0");
    assert_guest_line(&o, "linux", "HVLINUX-RAN-ON-CPU 1");
    assert_kernel_line(&o, "vm linux (id 0) stopped: stopped by the hypervisor");
    assert_kernel_line(&o, "vm counter (id 1) stopped: stopped by the hypervisor");
    if guest_lines(&o, "counter")
        .filter(|l| l.contains("report 1="))
        .count()
        < 3
    {
        fail(&o, "the counter beside the SMP Linux VM made no progress");
    }
    assert_cpuid_kept_its_promises(&o);
    assert_success(&o);
}

#[test]
fn linux_smp_svm_qemu() {
    let machine = Machine {
        timeout: Duration::from_secs(180),
        ..Machine::qemu_bios(3).with_cpu(CpuModel::Amd)
    };
    smp_linux(machine, "svm", 30_000);
}

#[test]
fn linux_smp_vtx_bochs() {
    let machine = Machine {
        timeout: Duration::from_secs(1200),
        ..Machine::bochs(4)
    };
    smp_linux(machine, "vtx", 15_000);
}

/// A reset of an SMP Linux VM (`reboot -f`, a triple fault with
/// `reboot=t`) restarts the whole VM, both vCPUs, by its policy: it boots
/// again with two processors, each time.
#[test]
fn linux_smp_restart_svm_qemu() {
    let (kernel, initrd) = assets();
    let name = "linux_smp_restart";
    let text = format!(
        r#"
[[vm]]
name = "rebooter"
memory = "256M"
cpus = [0, 1]
kernel = "file:{}"
initrd = "file:{}"
cmdline = "console=ttyS0 pci=off reboot=t panic=-1 hvtest=reboot"
on_reboot = "restart"
"#,
        kernel.display(),
        initrd.display()
    );
    let mut scenario = vms_scenario(&config_file(name, &text));
    scenario.options.stop_after_ms = Some(40_000);
    let machine = Machine {
        timeout: Duration::from_secs(180),
        ..Machine::qemu_bios(2).with_cpu(CpuModel::Amd)
    };
    let o = boot_on(name, &scenario, &machine);
    // The hypervisor tells a hardware-reduced Linux its TSC rate.
    assert_guest_line(&o, "rebooter", "tsc_early_khz=");
    assert_kernel_line(&o, "vm rebooter (id 0) restarting: triple fault");
    let boots = guest_lines(&o, "rebooter")
        .filter(|l| l.contains("smp: Brought up 1 node, 2 CPUs"))
        .count();
    if boots < 2 {
        fail(
            &o,
            &format!(
                "the SMP VM came up {boots} time(s) with 2 CPUs; a restart brings both vCPUs back"
            ),
        );
    }
    assert_success(&o);
}
