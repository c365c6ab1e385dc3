//! The serial console typed into (issue 9, "a console you can type into"):
//! the keys `./qemu-run.sh` users press, sent by the runner's input steps.
//!
//! One Linux VM (Debian's cloud kernel with the busybox initramfs of
//! `tests/linux-assets.sh`) on CPU 1 and a counter on CPU 0, in QEMU (BIOS
//! image, 2 CPUs, the default CPU: TCG with AMD-V here). The console attaches
//! to the Linux VM with `0`, a shell command's answer comes back raw, the
//! guest's UART interrupts are counted in its `/proc/interrupts`, Ctrl-]
//! detaches, and `q` (a host key again) stops the run.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use hv_tests::*;

/// One Linux VM (id 0) on CPU 1 and a counter (id 1) on CPU 0.
fn config(name: &str) -> PathBuf {
    let dir = target_dir().join("linux");
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"));
    if !kernel.is_file() || !initrd.is_file() {
        panic!(
            "the Linux test assets are missing ({}): run `tests/linux-assets.sh` as root (it fetches Debian's cloud kernel and builds the busybox initramfs)",
            dir.display()
        );
    }
    let text = format!(
        r#"
[[vm]]
name = "linux"
memory = "256M"
cpus = [1]
kernel = "file:{kernel}"
initrd = "file:{initrd}"
cmdline = "console=ttyS0 acpi=off pci=off reboot=t"

[[vm]]
name = "counter"
memory = "16M"
cpus = [0]
image = "counter"
"#,
        kernel = kernel.display(),
        initrd = initrd.display()
    );
    config_file(name, &text)
}

/// The position of `needle` in the serial log, or a failure.
fn position(o: &Outcome, needle: &str) -> usize {
    match o.serial.find(needle) {
        Some(at) => at,
        None => fail(o, &format!("serial log lacks {needle:?}")),
    }
}

#[test]
fn console_attaches_to_a_linux_vm() {
    let name = "console_linux";
    let mut scenario = vms_scenario(&config(name));
    // What `boot run` sets: the kernel reads keys on COM1.
    scenario.options.serial_input = true;
    // A backstop: `q` ends the run long before.
    scenario.options.stop_after_ms = Some(90_000);
    let machine = Machine {
        timeout: Duration::from_secs(150),
        ..Machine::qemu_bios(2)
    };
    let steps = [
        InputStep::new("HVLINUX-INIT-OK", "0"),
        InputStep::new("console: attached", "echo $((6*7))\n"),
        // Only the shell's answer ends in CR LF (the tty's), and only while
        // attached is it unprefixed.
        InputStep::new("\n42\r\n", "cat /proc/interrupts\n"),
        // IRQ 4's line (its last word): the detach must not overtake it.
        // The counter's lines may cut through it (the kernel starts them
        // on a line of their own), and did in one CI run in four.
        InputStep::new("ttyS0", [0x1d]).across_lines_of("vm counter: "),
        InputStep::new("console: detached", "q"),
    ];
    let o = boot_on_with_input(name, &scenario, &machine, &steps);
    assert_input_done(&o);
    assert_kernel_line(
        &o,
        "console: s stats, q stop, 0-9 attach to a VM, Ctrl-] detach",
    );
    assert_kernel_line(&o, "started 2 of 2 VM(s): linux, counter");
    // Before attaching, Linux's output is prefixed lines like any VM's.
    assert_guest_line(&o, "linux", "HVLINUX-INIT-OK");
    assert_kernel_line(&o, "console: attached to vm linux (id 0); Ctrl-] detaches");
    // Attached: the typed command echoed and answered, raw.
    let attached = position(&o, "console: attached to vm linux");
    let answer = position(&o, "\n42\r\n");
    if answer < attached {
        fail(&o, "the answer came before the console was attached");
    }
    // The shell echoes what was typed; other VMs' prefixed lines may cut
    // into the echo (each starts on a line of its own), so they are left
    // out before looking for it.
    let raw: String = o.serial[attached..]
        .split('\n')
        .filter(|l| !l.starts_with("vm counter: "))
        .collect();
    if !raw.contains("echo $((6*7))") {
        fail(&o, "the shell did not echo the typed command");
    }
    if guest_lines(&o, "linux").any(|l| l.trim_end() == "42") {
        fail(&o, "the attached VM's output was prefixed");
    }
    // The guest took its UART's input by interrupt: IRQ 4 on its (virtual)
    // 8259 counted at least once for ttyS0. The other VM's lines may cut
    // into the raw output here too: without them, the guest's lines end in
    // its tty's CR.
    let raw_after: String = o.serial[answer..]
        .split('\n')
        .filter(|l| !l.starts_with("vm counter: "))
        .collect();
    let irq4 = raw_after
        .split('\r')
        .find(|l| l.contains("XT-PIC") && l.contains("ttyS0"))
        .unwrap_or_else(|| fail(&o, "no ttyS0 line on the XT-PIC in /proc/interrupts"));
    let count: u64 = irq4
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| fail(&o, &format!("no interrupt count in {irq4:?}")));
    if !irq4.trim_start().starts_with("4:") || count == 0 {
        fail(
            &o,
            &format!("ttyS0 should be IRQ 4 with interrupts counted: {irq4:?}"),
        );
    }
    // Detached: the keys are the host's again (`q` stopped the run).
    assert_kernel_line(&o, "console: detached");
    let detached = position(&o, "console: detached");
    let q = position(&o, "console: stopping every VM");
    if !(answer < detached && detached < q) {
        fail(&o, "expected attach, answer, detach and stop in that order");
    }
    // The counter on the other CPU kept running while the console was attached.
    let reports = o.serial[attached..detached]
        .lines()
        .filter(|l| l.starts_with("vm counter: report 1="))
        .count();
    if reports == 0 {
        fail(
            &o,
            "the counter printed nothing while the console was attached",
        );
    }
    assert_kernel_line(&o, "vm linux (id 0) stopped: stopped by the hypervisor");
    assert_kernel_line(&o, "vm counter (id 1) stopped: stopped by the hypervisor");
    assert_success(&o);
}

/// Under Bochs (VT-x; its serial port a TCP socket the runner types into):
/// the host keys `s` and `q`, an attach by id to a VM of the other CPU, an
/// id without a VM, and Ctrl-] giving the keys back to the host.
#[test]
fn console_keys_bochs() {
    let name = "console_keys_bochs";
    let text = r#"
[[vm]]
name = "alpha"
memory = "2M"
cpus = [0]
image = "counter"

[[vm]]
name = "beta"
memory = "2M"
cpus = [1]
image = "counter"
"#;
    let mut scenario = vms_scenario(&config_file(name, text));
    scenario.options.serial_input = true;
    scenario.options.stop_after_ms = Some(120_000);
    let steps = [
        InputStep::new("console: s stats", "s"),
        InputStep::new("stats for vm beta", "7"),
        InputStep::new("no running VM with id 7", "1"),
        // `s` goes to the attached VM now (the counter ignores its UART).
        InputStep::new("console: attached", "s"),
        InputStep::new("vm beta: report", [0x1d]),
        InputStep::new("console: detached", "q"),
    ];
    let o = boot_on_with_input(name, &scenario, &Machine::bochs(2), &steps);
    assert_input_done(&o);
    assert_kernel_line(&o, "virtualization backend: VT-x");
    assert_kernel_line(&o, "console: no running VM with id 7; running: ");
    assert_kernel_line(&o, "console: attached to vm beta (id 1); Ctrl-] detaches");
    let attached = o.serial.find("console: attached").unwrap_or(0);
    let detached = o.serial.find("console: detached").unwrap_or(0);
    let stats = |from: usize, to: usize| {
        o.serial[from..to]
            .lines()
            .filter(|l| l.starts_with("stats for vm "))
            .count()
    };
    if stats(attached, detached) != 0 {
        fail(&o, "`s` while attached reached the host, not the VM");
    }
    assert_kernel_line(&o, "console: stopping every VM");
    assert_kernel_line(&o, "vm alpha (id 0) stopped: stopped by the hypervisor");
    assert_kernel_line(&o, "vm beta (id 1) stopped: stopped by the hypervisor");
    assert_success(&o);
}
