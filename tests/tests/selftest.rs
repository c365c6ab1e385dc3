//! The in-kernel test cases (`kernel/src/selftest.rs`) under QEMU with UEFI
//! and under Bochs: each case passes, and ACPI counts the emulator's CPUs.

use hv_tests::*;

#[test]
fn selftests_qemu_uefi() {
    let o = boot_qemu_uefi("selftests_qemu_uefi", &selftest_scenario(""), 2);
    assert_boot_report(&o, "UEFI", 2);
    assert_selftests_passed(&o, SELFTEST_CASES, 2);
}

#[test]
fn selftests_bochs() {
    let o = boot_bochs("selftests_bochs", &selftest_scenario(""), 2);
    assert_boot_report(&o, "BIOS", 2);
    assert_selftests_passed(&o, SELFTEST_CASES, 2);
}

/// A filter selects cases by substring; the rest do not run.
#[test]
fn selftest_filter_qemu() {
    let o = boot_qemu_bios("selftest_filter_qemu", &selftest_scenario("heap"), 1);
    assert_contains(&o, "selftest heap ... ok");
    assert_lacks(&o, "selftest frames ...");
    assert_contains(&o, "selftest summary: 1 passed, 0 failed");
    assert_success(&o);
}
