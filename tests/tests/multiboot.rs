//! A Multiboot 1 kernel built by the project (`kernel/guests/src/bin/multiboot.rs`,
//! `kernel = "multiboot"`) boots through the hypervisor's Multiboot loader:
//! it starts in 32-bit protected mode with EAX = 0x2BADB002 and EBX = the
//! information structure, enters long mode itself (its own page tables, PAE,
//! EFER.LME, CR0.PG, a far jump to 64-bit code) and prints what the loader
//! gave it: the command line, mem_lower/mem_upper and every memory-map entry,
//! which must be exactly the PC map of a VM of this size with the
//! hypervisor's boot structures (`hvcore::layout::BOOT_RESERVED`) reserved.
//!
//! Under QEMU TCG with AMD-V and under Bochs with VT-x (where the switch to
//! long mode goes through the hypervisor's CR0 and EFER handling and the
//! "IA-32e mode guest" entry control).
#![forbid(unsafe_code)]

use hv_tests::*;
use hvcore::layout::BOOT_RESERVED;

/// The VM's memory ("4M").
const MEMORY: u64 = 4 << 20;
/// End of conventional memory (the EBDA and the legacy hole start here).
const LOW_MEMORY_END: u64 = 0x9_FC00;
/// Start of extended memory.
const HIGH_MEMORY: u64 = 0x10_0000;
const CMDLINE: &str = "hello multiboot 42";

/// `on_reboot = "stop"`: a guest that triple-faults on its way to long mode
/// is stopped with a report at once instead of being restarted until the
/// time limit.
const CONFIG: &str = r#"
[[vm]]
name = "mb"
memory = "4M"
cpus = [0]
kernel = "multiboot"
cmdline = "hello multiboot 42"
on_reboot = "stop"
"#;

/// The memory map the guest must print, in order: usable RAM below the
/// boot structures, the boot structures reserved, usable RAM up to the EBDA,
/// the legacy hole reserved, usable RAM from 1 MiB to the end of memory.
fn expected_map() -> Vec<String> {
    let (usable, reserved) = (1, 2);
    [
        (0, BOOT_RESERVED.start, usable),
        (
            BOOT_RESERVED.start,
            BOOT_RESERVED.end - BOOT_RESERVED.start,
            reserved,
        ),
        (
            BOOT_RESERVED.end,
            LOW_MEMORY_END - BOOT_RESERVED.end,
            usable,
        ),
        (LOW_MEMORY_END, HIGH_MEMORY - LOW_MEMORY_END, reserved),
        (HIGH_MEMORY, MEMORY - HIGH_MEMORY, usable),
    ]
    .iter()
    .map(|(base, len, kind)| format!("multiboot: mmap {base:#x} {len:#x} type {kind}"))
    .collect()
}

fn multiboot_guest(machine: Machine, tag: &str) {
    let name = format!("multiboot_{tag}");
    let o = boot_on(&name, &vms_scenario(&config_file(&name, CONFIG)), &machine);
    assert_kernel_line(&o, "started 1 of 1 VM(s): mb");
    assert_guest_line(&o, "mb", "multiboot: magic ok");
    assert_guest_line(&o, "mb", &format!("multiboot: cmdline \"{CMDLINE}\""));
    assert_guest_line(
        &o,
        "mb",
        &format!(
            "multiboot: mem_lower {} KiB mem_upper {} KiB",
            LOW_MEMORY_END >> 10,
            (MEMORY - HIGH_MEMORY) >> 10
        ),
    );
    let map: Vec<&str> = guest_lines(&o, "mb")
        .filter(|l| l.starts_with("multiboot: mmap "))
        .collect();
    if map != expected_map() {
        fail(
            &o,
            &format!(
                "guest mb printed the memory map {map:#?}, expected {:#?}",
                expected_map()
            ),
        );
    }
    assert_guest_line(&o, "mb", "multiboot: boot loader \"rust-hv\"");
    assert_guest_line(&o, "mb", "multiboot: OK");
    if let Some(failed) = guest_lines(&o, "mb").find(|l| l.contains("FAILED")) {
        fail(&o, &format!("guest mb reported {failed:?}"));
    }
    assert_kernel_line(&o, "vm mb (id 0) stopped: shutdown, exit code 0");
    assert_success(&o);
}

/// AMD-V (QEMU TCG, EPYC): long mode activates in hardware (EFER.LMA in the VMCB).
#[test]
fn multiboot_guest_svm_qemu() {
    multiboot_guest(Machine::qemu_bios(1).with_cpu(CpuModel::Amd), "svm");
}

/// VT-x (Bochs Skylake-X): the hypervisor turns on EFER.LMA and the
/// "IA-32e mode guest" entry control when the guest sets CR0.PG.
#[test]
fn multiboot_guest_vtx_bochs() {
    multiboot_guest(Machine::bochs(1), "vtx");
}
