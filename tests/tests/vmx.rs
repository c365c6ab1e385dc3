//! VT-x under Bochs (Skylake-X CPU with VMX, EPT, VPID, unrestricted guest):
//! guests built by the project run in EPT-isolated VMs; faulting VMs are
//! stopped with a report while the others complete; the scheduler shares
//! CPUs fairly and takes the CPU back from guests that never exit.
//!
//! Several VMs share each boot: Bochs boots cost tens of seconds, and a boot
//! with faulting and healthy VMs side by side is also the isolation test.

#![forbid(unsafe_code)]
use hv_tests::*;
use hvcore::KernelExit;

const GUEST_BASICS: &str = r#"
[[vm]]
name = "hello"
memory = "4M"
cpus = [0]
image = "hello"

[[vm]]
name = "cpuid"
memory = "4M"
cpus = [0]
image = "cpuid"

[[vm]]
name = "msr"
memory = "4M"
cpus = [0]
image = "msr"

[[vm]]
name = "realmode"
memory = "2M"
cpus = [0]
image = "realmode"
load_addr = 0x7c00
mode = "real16"
"#;

/// A guest prints through its emulated UART (name-prefixed on the host
/// serial), uses hypercalls and shuts itself down; CPUID is filtered; an
/// unknown MSR raises #GP inside the guest; a real-mode guest runs.
fn guest_basics(machine: Machine, tag: &str) {
    let config = config_file("guest_basics", GUEST_BASICS);
    let o = boot_on(
        &format!("guest_basics_{tag}"),
        &vms_scenario(&config),
        &machine,
    );
    // UART output, prefixed with the VM's name; hypercalls.
    assert_guest_line(
        &o,
        "hello",
        "hello from a guest over the emulated 16550 (scratch 0x5a)",
    );
    assert_guest_line(
        &o,
        "hello",
        "vm id 0 (status 0), hypercall interface version 1",
    );
    assert_guest_line(&o, "hello", "hello through the console hypercall");
    assert_guest_line(&o, "hello", "unknown hypercall status -1");
    assert_kernel_line(&o, "vm hello (id 0) stopped: shutdown, exit code 0");
    // Exit counts when the VM stops.
    assert_kernel_line(&o, "stats for vm hello:");
    let hello = summary_row(&o, "hello");
    if hello.exits < 50 {
        fail(
            &o,
            &format!(
                "vm hello made only {} exits; its UART output alone needs more",
                hello.exits
            ),
        );
    }
    // CPUID: VMX hidden, hypervisor bit set, our signature and interface version.
    assert_guest_line(&o, "cpuid", "cpuid.1: vmx=0 hypervisor=1 apic_id=0");
    assert_guest_line(&o, "cpuid", "signature=\"RustBareHv\"");
    assert_guest_line(&o, "cpuid", "cpuid.40000001: interface_version=1");
    // MSRs: an allowed one reads; an unknown one is a #GP the guest handles.
    assert_guest_line(&o, "msr", "rdmsr IA32_PAT = 0x7040600070406");
    assert_guest_line(&o, "msr", "guest #GP handler: error code 0x0");
    assert_guest_line(&o, "msr", "unknown MSR raised #GP in the guest: OK");
    // Real mode under unrestricted guest.
    assert_guest_line(
        &o,
        "realmode",
        "hello from real mode (16-bit, unrestricted guest)",
    );
    assert_kernel_line(&o, "vm realmode (id 3) stopped: shutdown, exit code 22");
    assert_success(&o);
}

const FAULTS: &str = r#"
[[vm]]
name = "escape"
memory = "4M"
cpus = [0]
image = "escape"

[[vm]]
name = "hvmem"
memory = "4M"
cpus = [0]
image = "hvmem"

[[vm]]
name = "triple"
memory = "4M"
cpus = [0]
image = "triple"

[[vm]]
name = "hello"
memory = "4M"
cpus = [0]
image = "hello"

[[vm]]
name = "ghost"
memory = "2M"
cpus = [3]
image = "hello"

[[vm]]
name = "huge"
memory = "1G"
cpus = [0]
image = "hello"
"#;

/// A VM writing outside its partition, one writing to hypervisor memory (the
/// kernel image's host-physical address, used as a guest-physical address)
/// and a triple-faulting VM are each stopped with a report, while the healthy
/// VM completes. VMs the machine cannot hold are refused at boot, by name, and
/// the rest start.
fn faulting_vms_are_contained(machine: Machine, tag: &str) {
    let config = config_file("faulting_vms", FAULTS);
    let scenario = vms_scenario(&config);
    let o = boot_on(&format!("faulting_vms_{tag}"), &scenario, &machine);
    // The kernel checks the configuration against the machine again: these
    // two pass the host's check (it knows neither CPUs nor memory) but not this.
    assert_kernel_line(
        &o,
        "vm \"ghost\": cpus: CPU 3 does not exist (machine has 1)",
    );
    assert_kernel_line(&o, "vm \"huge\": memory:");
    assert_kernel_line(&o, "started 4 of 6 VM(s): escape, hvmem, triple, hello");
    assert_kernel_line(&o, "partition check: 4 VM(s), 16 MiB mapped, nested page tables disjoint, no hypervisor frame mapped");
    assert_kernel_line(&o, "vm escape (id 0) stopped: EPT/NPT violation at gpa 0x4000000 outside the VM's memory (access -w-");
    // The hvmem guest aims at the kernel image's host-physical address.
    assert_kernel_line(&o, "kernel image at host-physical 0x1000000..");
    assert_kernel_line(&o, "vm hvmem (id 1) stopped: EPT/NPT violation at gpa 0x1000000 outside the VM's memory (access -w-");
    assert_kernel_line(&o, "vm triple (id 2) stopped: triple fault at rip 0x");
    assert_no_kernel_line(&o, "ESCAPED");
    // The healthy VM finishes after the others were stopped.
    assert_guest_line(&o, "hello", "goodbye");
    assert_kernel_line(&o, "vm hello (id 3) stopped: shutdown, exit code 0");
    // Each stopped VM's memory goes back to the pool at once.
    assert_kernel_line(&o, "vm escape: 4 MiB returned to the free pool");
    assert_success(&o);
    // Refused VMs make `boot run` exit with 3.
    assert_run_status(&o, &scenario, status::VMS_REFUSED);
}

const SCHEDULING: &str = r#"
[[vm]]
name = "alpha"
memory = "2M"
cpus = [0]
image = "counter"
slice_ms = 10

[[vm]]
name = "beta"
memory = "2M"
cpus = [0]
image = "counter"
slice_ms = 10

[[vm]]
name = "gamma"
memory = "2M"
cpus = [0]
image = "counter"
slice_ms = 10

[[vm]]
name = "spinner"
memory = "2M"
cpus = [0]
image = "spin"
slice_ms = 10

[[vm]]
name = "pinned"
memory = "4M"
cpus = [1]
image = "cpuid"

[[vm]]
name = "escape"
memory = "4M"
cpus = [1]
image = "escape"

[[vm]]
name = "triple"
memory = "4M"
cpus = [1]
image = "triple"

[[vm]]
name = "hello"
memory = "4M"
cpus = [1]
image = "hello"

[[vm]]
name = "halter"
memory = "2M"
cpus = [1]
image = "halter"

[[vm]]
name = "flood"
memory = "2M"
cpus = [0]
image = "flood"
slice_ms = 10
"#;

/// A VM's row of the kernel's final summary table.
struct SummaryRow {
    slices: u64,
    guest_us: u64,
    exits: u64,
}

/// Finds `<vm> <cpu> <slices> <guest us> <exits> ...` in the summary table.
fn summary_row(o: &boot::run::Outcome, vm: &str) -> SummaryRow {
    let line = o
        .serial
        .lines()
        .find(|l| l.split_whitespace().next() == Some(vm) && l.contains(" stopped"))
        .unwrap_or_else(|| fail(o, &format!("no summary row for vm {vm}")));
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(4)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    SummaryRow {
        slices: f[1],
        guest_us: f[2],
        exits: f[3],
    }
}

/// The last `report 1=N` (counter) of a VM.
fn last_count(o: &boot::run::Outcome, vm: &str) -> u64 {
    vm_reports(o)
        .iter()
        .filter(|(name, key, _)| name == vm && key == "1")
        .filter_map(|(_, _, v)| v.parse().ok())
        .next_back()
        .unwrap_or_else(|| fail(o, &format!("vm {vm} reported no counter")))
}

/// Two CPUs: three counters and a VM that never exits share CPU 0
/// round-robin; CPU 1 runs a VM pinned to it, two faulting VMs and a healthy
/// one, and a VM that halts. Shares stay within 15% of equal, the spinning VM loses the CPU at
/// every slice end, and the faults on CPU 1 do not disturb CPU 0.
fn scheduling_on_two_cpus(machine: Machine, tag: &str) {
    let config = config_file("scheduling", SCHEDULING);
    let mut scenario = vms_scenario(&config);
    scenario.options.stop_after_ms = Some(1500);
    let o = boot_on(&format!("scheduling_{tag}"), &scenario, &machine);
    // CPU 1 is APIC ID 1 in Bochs; the pinned VM sees it through CPUID.
    assert_guest_line(&o, "pinned", "cpuid.1: vmx=0 hypervisor=1 apic_id=1");
    assert_kernel_line(
        &o,
        "vm escape (id 5) stopped: EPT/NPT violation at gpa 0x4000000",
    );
    assert_kernel_line(&o, "vm triple (id 6) stopped: triple fault");
    assert_kernel_line(&o, "vm hello (id 7) stopped: shutdown, exit code 0");
    // HLT gives up the slice; the VM is resumed later and finishes.
    assert_guest_line(&o, "halter", "halting (2)");
    assert_guest_line(&o, "halter", "woke up after 3 HLTs");
    assert_kernel_line(&o, "vm halter (id 8) stopped: shutdown, exit code 0");
    // Fair shares on CPU 0: equal guest time; under Bochs, where time is
    // counted in instructions, equal work too (QEMU's speed varies with the
    // host's load, so its counts are not compared).
    let names = ["alpha", "beta", "gamma"];
    let within = |what: &str, values: &[u64]| {
        let mean = values.iter().sum::<u64>() as f64 / values.len() as f64;
        for (vm, v) in names.iter().zip(values) {
            let dev = (*v as f64 - mean).abs() / mean;
            if dev > 0.15 {
                fail(
                    &o,
                    &format!(
                        "vm {vm}: {what} {v}, {:.0}% off the mean {mean:.0} ({values:?})",
                        dev * 100.0
                    ),
                );
            }
        }
    };
    let times: Vec<u64> = names
        .iter()
        .map(|vm| summary_row(&o, vm).guest_us)
        .collect();
    within("guest time (us)", &times);
    if machine.emulator == Emulator::Bochs {
        let counts: Vec<u64> = names.iter().map(|vm| last_count(&o, vm)).collect();
        within("iterations", &counts);
    }
    // The spinner was preempted at every slice end and stopped at the limit.
    assert_kernel_line(&o, "vm spinner (id 3) stopped: stopped by the hypervisor");
    let spinner = summary_row(&o, "spinner");
    if spinner.slices < 5 {
        fail(
            &o,
            &format!(
                "the spinning VM ran only {} slices: it was not preempted",
                spinner.slices
            ),
        );
    }
    // A VM flooding its console gets slices of its configured length: the
    // host prints its output between slices, not inside them.
    let flood = summary_row(&o, "flood");
    let per_slice = flood.guest_us / flood.slices.max(1);
    if flood.slices < 5 || per_slice > 13_000 {
        fail(
            &o,
            &format!(
                "the flooding VM ran {} slices of {per_slice} us on average (configured 10000)",
                flood.slices
            ),
        );
    }
    assert_guest_line(&o, "flood", "flood 00000001 ....");
    assert_code(&o, KernelExit::Success);
}

#[test]
fn guest_basics_vtx_bochs() {
    guest_basics(Machine::bochs(1), "vtx");
}

#[test]
fn guest_basics_svm_qemu() {
    guest_basics(Machine::qemu_bios(1).with_cpu(CpuModel::Amd), "svm");
}

#[test]
fn faulting_vms_are_contained_vtx_bochs() {
    faulting_vms_are_contained(Machine::bochs(1), "vtx");
}

#[test]
fn faulting_vms_are_contained_svm_qemu() {
    faulting_vms_are_contained(Machine::qemu_bios(1).with_cpu(CpuModel::Amd), "svm");
}

#[test]
fn scheduling_on_two_cpus_vtx_bochs() {
    scheduling_on_two_cpus(Machine::bochs(2), "vtx");
}

#[test]
fn scheduling_on_two_cpus_svm_qemu() {
    scheduling_on_two_cpus(Machine::qemu_bios(2).with_cpu(CpuModel::Amd), "svm");
}
