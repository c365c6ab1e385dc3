//! Complete, private guest state under Bochs (issue 8): what one VM puts in
//! its registers stays there across world switches and never shows in another
//! VM; control registers, XCR0, CR8 and interrupt shadows behave as on a real
//! CPU without VMX; real-mode guests start at any address below 1 MiB.
//!
//! Two boots, each holding several VMs (a Bochs boot costs tens of seconds):
//! - one CPU with two `statekeeper` VMs alternating by YIELD, next to the
//!   `crs`, `syscall` and `stihlt` guests;
//! - one CPU with `cr8` and `halter` (CR8 = 15 must not block the host), and
//!   the real-mode guest loaded at 0x7c00, 0x20000 and 0xfff00.
//!
//! Each guest prints a verdict and reports `hvabi::key::FAILURES`; the
//! assertions below name every line the guests must print.

#![forbid(unsafe_code)]
use std::time::Duration;

use hv_tests::*;
use hvabi::key;

/// Bochs with one CPU. Each boot here ends in about 10 s of wall time when
/// the hypervisor is right; a hypervisor that lets a guest's CR8 mask its own
/// timer hangs, so the limit is tighter than the default.
fn bochs_one_cpu() -> Machine {
    Machine {
        timeout: Duration::from_secs(180),
        ..Machine::bochs(1)
    }
}

/// The value `vm` reported for `key`, or a failure naming both.
fn reported(o: &Outcome, vm: &str, key: u64) -> String {
    vm_report(o, vm, &key.to_string())
        .unwrap_or_else(|| fail(o, &format!("vm {vm} reported no key {key}")))
}

/// `vm` reported 0 failed checks.
fn assert_no_failures(o: &Outcome, vm: &str) {
    let failures = reported(o, vm, key::FAILURES);
    if failures != "0" {
        fail(o, &format!("vm {vm} reported {failures} failed checks"));
    }
}

/// The line `vm NAME: TEXT` is in the serial log.
fn assert_guest(o: &Outcome, vm: &str, text: &str) {
    assert_guest_line(o, vm, text);
}

/// `vm NAME (id ID) stopped: shutdown, exit code CODE`.
fn assert_shutdown(o: &Outcome, vm: &str, id: u32, code: u64) {
    assert_kernel_line(
        o,
        &format!("vm {vm} (id {id}) stopped: shutdown, exit code {code}"),
    );
}

const STATE_ONE_CPU: &str = r#"
[[vm]]
name = "keeper-a"
memory = "4M"
cpus = [0]
image = "statekeeper"

[[vm]]
name = "keeper-b"
memory = "4M"
cpus = [0]
image = "statekeeper"

[[vm]]
name = "crs"
memory = "4M"
cpus = [0]
image = "crs"

[[vm]]
name = "syscall"
memory = "4M"
cpus = [0]
image = "syscall"

[[vm]]
name = "stihlt"
memory = "4M"
cpus = [0]
image = "stihlt"
"#;

/// Two VMs on one CPU fill GPRs, XMM/YMM, x87, FS/GS/KERNEL_GS bases, LSTAR,
/// CR2 and DR0-3 with their own patterns before every yield and find them
/// intact after it; meanwhile three more VMs on the same CPU change CR0/CR4,
/// XCR0, the SYSCALL MSRs and EFER, run in ring 3, exit inside STI and
/// MOV SS shadows, and take PIT interrupts while doing nothing but yield.
fn state_stays_private_on_one_cpu(machine: Machine, tag: &str) {
    let config = config_file("guest_state", STATE_ONE_CPU);
    let mut scenario = vms_scenario(&config);
    // A safety net: every VM here finishes by itself well before this.
    scenario.options.stop_after_ms = Some(30_000);
    let o = boot_on(&format!("guest_state_{tag}"), &scenario, &machine);

    // statekeeper: AVX offered (XSAVE, XCR0 = x87|SSE|AVX), nothing leaked.
    for (vm, id) in [("keeper-a", 0), ("keeper-b", 1)] {
        let setup = line_with(&o, &format!("vm {vm}: statekeeper: vm {id} seed "));
        if !setup.ends_with(", 2000 switches, avx yes, xcr0 0x7") {
            fail(
                &o,
                &format!("vm {vm}: expected AVX with XCR0 = 0x7, got {setup:?}"),
            );
        }
        assert_guest(
            &o,
            vm,
            "statekeeper: 2000 switches, mismatches gpr=0 xmm=0 ymm=0 x87=0 fsbase=0 gsbase=0 kgsbase=0 lstar=0 cr2=0 dr=0",
        );
        assert_guest(&o, vm, "statekeeper: OK");
        assert_eq!(reported(&o, vm, key::STATE_SWITCHES), "2000");
        assert_no_failures(&o, vm);
        assert_shutdown(&o, vm, id, 0);
    }

    // crs: owned CR0/CR4 bits, hidden VMX, XSETBV checks, #UD for VMX instructions.
    for line in [
        "crs: cr0 ok cr4 ok",
        "crs: cr4.vmxe=0",
        "crs: cr4 reserved bit 15 -> #GP",
        "crs: cpuid.1 vmx=0",
        "crs: cr4.osxsave set",
        "crs: xsetbv bad value -> #GP",
        "crs: xsetbv reserved bit -> #GP",
        "crs: xsetbv ecx=1 -> #GP",
        "crs: xsetbv xcr0=0x3 ok",
        "crs: cpuid.d size 576 for xcr0=0x3",
        // "(xsavec size 576)" or "(no xsavec)", as the CPU model has it.
        "crs: cpuid.d.1 consistent (",
        "crs: vmxon -> #UD",
        "crs: vmxoff -> #UD",
        "crs: vmread -> #UD",
        "crs: vmwrite -> #UD",
        "crs: vmptrld -> #UD",
        "crs: vmptrst -> #UD",
        "crs: vmclear -> #UD",
        "crs: vmlaunch -> #UD",
        "crs: vmresume -> #UD",
        "crs: invept -> #UD",
        "crs: invvpid -> #UD",
        "crs: vmfunc -> #UD",
        "crs: cr4.vmxe set -> #GP",
        "crs: OK",
    ] {
        assert_guest(&o, "crs", line);
    }
    assert_no_failures(&o, "crs");
    assert_shutdown(&o, "crs", 2, 0);

    // syscall: EFER.SCE and the SYSCALL MSRs, ring 0 <-> ring 3 round trips.
    assert_guest(&o, "syscall", "syscall: efer.sce, star, lstar, fmask set");
    assert_guest(&o, "syscall", "syscall: 100000 round trips OK");
    assert_guest(&o, "syscall", "syscall: OK");
    assert_eq!(reported(&o, "syscall", key::SYSCALL_ROUND_TRIPS), "100000");
    assert_no_failures(&o, "syscall");
    assert_shutdown(&o, "syscall", 3, 0);

    // stihlt: exits inside STI / MOV SS shadows, and the VM goes on; its
    // PIT's interrupts reach it while it only yields.
    assert_guest(&o, "stihlt", "stihlt: 3 timer interrupts over ");
    assert_guest(&o, "stihlt", "stihlt: 200 rounds OK");
    assert_guest(&o, "stihlt", "stihlt: OK");
    assert_no_failures(&o, "stihlt");
    assert_shutdown(&o, "stihlt", 4, 0);

    assert_no_kernel_line(&o, "unexpected exception");
    assert_success(&o);
}

const TPR_AND_REAL_MODE: &str = r#"
[[vm]]
name = "cr8"
memory = "4M"
cpus = [0]
image = "cr8"

[[vm]]
name = "halter"
memory = "2M"
cpus = [0]
image = "halter"

[[vm]]
name = "rm7c00"
memory = "2M"
cpus = [0]
image = "realmode"
load_addr = 0x7c00
mode = "real16"

[[vm]]
name = "rm20000"
memory = "2M"
cpus = [0]
image = "realmode"
load_addr = 0x20000
mode = "real16"

[[vm]]
name = "rmfff00"
memory = "2M"
cpus = [0]
image = "realmode"
load_addr = 0xfff00
mode = "real16"
"#;

/// CR8 = 15 in one VM is that VM's business: it reads back 15 after many
/// slices, and the VM halting next to it on the same CPU (and the host) keeps
/// running. The position-independent real-mode guest runs at 0000:7C00,
/// 2000:0000 and F000:FF00.
fn tpr_stays_in_the_vm_and_real_mode_starts_anywhere(machine: Machine, tag: &str) {
    let config = config_file("tpr_real_mode", TPR_AND_REAL_MODE);
    let mut scenario = vms_scenario(&config);
    // A safety net: every VM here finishes by itself well before this.
    scenario.options.stop_after_ms = Some(30_000);
    let o = boot_on(&format!("tpr_real_mode_{tag}"), &scenario, &machine);

    assert_guest(&o, "cr8", "cr8: initial tpr 0");
    assert_guest(&o, "cr8", "cr8: tpr 15 kept, OK");
    assert_guest(&o, "cr8", "cr8: OK");
    assert_eq!(reported(&o, "cr8", key::CR8_TPR), "15");
    assert_no_failures(&o, "cr8");
    assert_shutdown(&o, "cr8", 0, 0);
    assert_guest(&o, "halter", "halting (2)");
    assert_guest(&o, "halter", "woke up after 3 HLTs");
    assert_shutdown(&o, "halter", 1, 0);

    for (vm, id, at) in [
        ("rm7c00", 2, "0000:7C00"),
        ("rm20000", 3, "2000:0000"),
        ("rmfff00", 4, "F000:FF00"),
    ] {
        assert_guest(&o, vm, "hello from real mode (16-bit, unrestricted guest)");
        assert_guest(&o, vm, &format!("real mode at CS:IP {at}"));
        assert_shutdown(&o, vm, id, 22);
    }
    assert_success(&o);
}

#[test]
fn state_stays_private_on_one_cpu_vtx_bochs() {
    state_stays_private_on_one_cpu(bochs_one_cpu(), "vtx");
}

#[test]
fn state_stays_private_on_one_cpu_svm_qemu() {
    state_stays_private_on_one_cpu(Machine::qemu_bios(1).with_cpu(CpuModel::Amd), "svm");
}

#[test]
fn tpr_stays_in_the_vm_and_real_mode_starts_anywhere_vtx_bochs() {
    tpr_stays_in_the_vm_and_real_mode_starts_anywhere(bochs_one_cpu(), "vtx");
}

#[test]
fn tpr_stays_in_the_vm_and_real_mode_starts_anywhere_svm_qemu() {
    tpr_stays_in_the_vm_and_real_mode_starts_anywhere(
        Machine::qemu_bios(1).with_cpu(CpuModel::Amd),
        "svm",
    );
}
