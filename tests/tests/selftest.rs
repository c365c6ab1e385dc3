//! The in-kernel test cases (`kernel/src/selftest.rs`) under QEMU with UEFI
//! and under Bochs: each case passes, and ACPI counts the emulator's CPUs.
//! The VM-entry failure cases need VT-x: they must pass under Bochs and be
//! reported unavailable under QEMU's TCG.

#![forbid(unsafe_code)]
use hv_tests::*;

#[test]
fn selftests_qemu_uefi() {
    let o = boot_qemu_uefi("selftests_qemu_uefi", &selftest_scenario(""), 2);
    assert_boot_report(&o, "UEFI", 2);
    if o.kvm {
        let all: Vec<&str> = SELFTEST_CASES
            .iter()
            .chain(VMX_SELFTEST_CASES)
            .copied()
            .collect();
        assert_selftests_passed(&o, &all, 2);
    } else {
        for case in VMX_SELFTEST_CASES {
            assert_kernel_line(
                &o,
                &format!("selftest {case} ... unavailable: VT-x not available"),
            );
        }
        assert_kernel_line(
            &o,
            &format!("0 failed, {} unavailable", VMX_SELFTEST_CASES.len()),
        );
        assert_selftests_passed(&o, SELFTEST_CASES, 2);
    }
}

#[test]
fn selftests_bochs() {
    let o = boot_bochs("selftests_bochs", &selftest_scenario(""), 2);
    assert_boot_report(&o, "BIOS", 2);
    let all: Vec<&str> = SELFTEST_CASES
        .iter()
        .chain(VMX_SELFTEST_CASES)
        .copied()
        .collect();
    assert_selftests_passed(&o, &all, 2);
    // The failed entries are decoded: exit reason and VM-instruction error.
    assert_kernel_line(&o, "VM entry failed, reason 0x21, qualification 0x0");
    assert_kernel_line(
        &o,
        "VM-instruction error 7 (VM entry with invalid control field(s))",
    );
    assert_kernel_line(&o, "0 failed, 0 unavailable");
}

/// A filter selects cases by substring; the rest do not run.
#[test]
fn selftest_filter_qemu() {
    let o = boot_qemu_bios("selftest_filter_qemu", &selftest_scenario("heap"), 1);
    assert_kernel_line(&o, "selftest heap ... ok");
    assert_no_kernel_line(&o, "selftest frames ...");
    assert_kernel_line(&o, "selftest summary: 1 passed, 0 failed");
    assert_success(&o);
}
