//! Multiprocessor VMs under Bochs (Skylake-X, VT-x) and QEMU TCG EPYC
//! (AMD-V): a VM with two vCPUs starts its second one by INIT and start-up
//! IPIs, each vCPU finds its virtual local APIC (x2APIC ID = vCPU index),
//! IPIs between vCPUs and to itself arrive exactly once, the LAPIC timer
//! runs in periodic, TSC-deadline and one-shot modes, broadcasts reach
//! every vCPU of the VM and nothing of them reaches another VM.
//!
//! One boot per machine (Bochs with four CPUs takes minutes): the `smp`
//! guest on CPUs 0 and 1, the `ipisink` guest counting stray interrupts on
//! CPUs 2 and 3 (it needs a local APIC, which only multi-vCPU VMs have; its
//! second vCPU is never started), and a VM whose second CPU does not exist,
//! which the kernel refuses by name.

#![forbid(unsafe_code)]
use hv_tests::*;

const SMP: &str = r#"
[[vm]]
name = "smp"
memory = "8M"
cpus = [0, 1]
image = "smp"

[[vm]]
name = "sink"
memory = "4M"
cpus = [2, 3]
image = "ipisink"

[[vm]]
name = "ghost"
memory = "4M"
cpus = [2, 4]
image = "hello"
"#;

/// vCPUs of the `smp` VM.
const VCPUS: usize = 2;

/// Guest `vm` printed a line starting with `prefix`.
fn assert_guest_line_starts(o: &Outcome, vm: &str, prefix: &str) {
    if !guest_lines(o, vm).any(|l| l.starts_with(prefix)) {
        fail(
            o,
            &format!("guest {vm:?} printed no line starting with {prefix:?}"),
        );
    }
}

/// Four CPUs: the `smp` VM's two vCPUs come up with APIC IDs 0 and 1 and
/// pass every local APIC check (IPI exchange, self-IPIs, the three timer
/// modes, broadcasts, no unexpected vector); the `sink` VM beside it gets
/// none of its broadcasts nor the IPI to an APIC ID outside the VM. The
/// kernel checks the configuration against the machine and refuses a VM
/// whose second CPU does not exist, by name, and starts the others.
fn smp_vm(machine: Machine, tag: &str) {
    let config = config_file("smp_vm", SMP);
    let scenario = vms_scenario(&config);
    let o = boot_on(&format!("smp_vm_{tag}"), &scenario, &machine);
    // The kernel's check: the third VM passes the host's (it knows no CPUs).
    assert_kernel_line(
        &o,
        "vm \"ghost\": cpus: CPU 4 does not exist (machine has 4)",
    );
    assert_kernel_line(&o, "started 2 of 3 VM(s): smp, sink");
    let placed = kernel_line_with(&o, "2 vCPU(s) on CPU(s) [0, 1]");
    if !placed.contains("vm smp: 8 MiB at host 0x") {
        fail(&o, &format!("unexpected placement line {placed:?}"));
    }
    // Start-up by INIT-SIPI-SIPI; vCPU i has APIC ID i.
    for i in 0..VCPUS {
        assert_guest_line(&o, "smp", &format!("smp: cpu {i} up, apic id {i}"));
    }
    assert_guest_line(&o, "smp", &format!("smp: all {VCPUS} vcpus up"));
    // IPIs between the vCPUs and to themselves, each counted exactly.
    assert_guest_line(&o, "smp", "smp: cpu 0 ipis from 1: 100");
    assert_guest_line(&o, "smp", "smp: cpu 1 ipis from 0: 100");
    for i in 0..VCPUS {
        assert_guest_line(
            &o,
            "smp",
            &format!("smp: cpu {i} self-ipi msr 10/10, icr 10/10"),
        );
    }
    // The timer modes (the guest checks the counts; they vary with timing).
    for i in 0..VCPUS {
        for mode in ["lapic timer periodic", "tsc-deadline:", "one-shot"] {
            assert_guest_line_starts(&o, "smp", &format!("smp: cpu {i} {mode} "));
        }
    }
    // Broadcasts from vCPU 0: the physical broadcast ID reaches both,
    // "all excluding self" only vCPU 1, APIC ID 7 (outside the VM) neither.
    assert_guest_line(
        &o,
        "smp",
        "smp: cpu 0 broadcasts: physical 0xffffffff 1, all-but-self 0, to apic 7 0",
    );
    assert_guest_line(
        &o,
        "smp",
        "smp: cpu 1 broadcasts: physical 0xffffffff 1, all-but-self 1, to apic 7 0",
    );
    for i in 0..VCPUS {
        assert_guest_line(&o, "smp", &format!("smp: cpu {i} unexpected interrupts 0"));
    }
    assert_guest_line(&o, "smp", "smp: OK");
    assert_kernel_line(&o, "vm smp (id 0) stopped: shutdown, exit code 0");
    // The other VM saw none of it.
    assert_guest_line(&o, "sink", "ipisink: stray interrupts 0");
    assert_guest_line(&o, "sink", "ipisink: OK");
    assert_kernel_line(&o, "vm sink (id 1) stopped: shutdown, exit code 0");
    assert_success(&o);
    // The refused VM makes `boot run` exit with 3.
    assert_run_status(&o, &scenario, status::VMS_REFUSED);
}

#[test]
fn smp_vm_vtx_bochs() {
    smp_vm(Machine::bochs(4), "vtx");
}

#[test]
fn smp_vm_svm_qemu() {
    smp_vm(Machine::qemu_bios(4).with_cpu(CpuModel::Amd), "svm");
}
