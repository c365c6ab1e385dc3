//! Deliberate exceptions in the hypervisor: the IDT prints a crash report
//! (vector, error code, registers, CR2 for #PF, CR3, backtrace) and the run ends
//! with `KernelExit::CpuException`; a breakpoint is reported and resumed.

#![forbid(unsafe_code)]
use hv_tests::*;

/// The register part of every crash report.
fn assert_crash_report(o: &Outcome) {
    for needle in [
        "  error code: ",
        "  RIP    0x",
        "CS 0x",
        "  RFLAGS 0x",
        "  RSP    0x",
        "  CR3    0x",
    ] {
        assert_kernel_line(o, needle);
    }
    assert_kernel_line(o, "  backtrace (return addresses):");
    assert_kernel_line(o, "    #0  0x");
    assert_code(o, KernelExit::CpuException);
}

#[test]
fn crash_page_fault() {
    let o = boot_qemu_uefi("crash_page_fault", &crash_scenario(CrashTest::PageFault), 1);
    let target = kernel_line_with(&o, "crash test: page fault: reading unmapped address ");
    let addr = target
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .trim_start_matches("0x")
        .to_owned();
    assert_kernel_line(&o, "!!! CPU EXCEPTION on CPU 0: vector 14 #PF page fault");
    // CR2 names the address the test read.
    let cr2 = kernel_line_with(&o, "  CR2    0x");
    if !cr2.contains(&addr) || !cr2.contains("(faulting address)") {
        fail(&o, &format!("CR2 line {cr2:?} does not name {addr}"));
    }
    assert_crash_report(&o);
}

#[test]
fn crash_double_fault() {
    let o = boot_qemu_uefi(
        "crash_double_fault",
        &crash_scenario(CrashTest::DoubleFault),
        1,
    );
    assert_kernel_line(&o, "crash test: double fault: int3 with RSP at unmapped ");
    assert_kernel_line(&o, "!!! CPU EXCEPTION on CPU 0: vector 8 #DF double fault");
    assert_crash_report(&o);
}

/// `int3` is reported by the #BP handler, which resumes: the run succeeds.
#[test]
fn crash_breakpoint() {
    let o = boot_qemu_uefi(
        "crash_breakpoint",
        &crash_scenario(CrashTest::Breakpoint),
        1,
    );
    assert_kernel_line(&o, "crash test: breakpoint: executing int3");
    assert_kernel_line(&o, "breakpoint (#BP, vector 3) at RIP 0x");
    assert_kernel_line(&o, "crash test: breakpoint reported and resumed");
    assert_no_kernel_line(&o, "CPU EXCEPTION");
    assert_success(&o);
}
