#!/usr/bin/env bash
# The test command: host unit tests of every crate, then the integration tests
# that build the real images and boot them in QEMU (UEFI and BIOS) and Bochs.
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../boot/toolchain.sh"
hv_setup_toolchain
hv_ensure_pkgs "QEMU and OVMF" $HV_PKGS_QEMU
hv_ensure_pkgs "Bochs" $HV_PKGS_BOCHS
cd "$HV_ROOT"
# The Linux guest's kernel and initramfs (target/linux/), fetched once (root
# and Debian's archive needed then; cpio is installed by the script).
hv_step "Linux guest assets: tests/linux-assets.sh"
tests/linux-assets.sh
hv_step "formatting: cargo fmt --check"
cargo fmt --all --check
hv_step "lints: cargo clippy with warnings denied (host crates, then the bare-metal kernel and guests)"
cargo clippy -q --workspace --exclude kernel --exclude guests --all-targets -- -D warnings
build_std=()
[ "${HV_BUILD_STD:-0}" = 1 ] && build_std=(-Zbuild-std=core,alloc,compiler_builtins -Zbuild-std-features=compiler-builtins-mem)
CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS="-C force-frame-pointers=yes" \
    cargo clippy -q -p kernel -p guests --target x86_64-unknown-none \
    --target-dir "${HV_TARGET_DIR:-$HV_ROOT/target}/baremetal" "${build_std[@]}" -- -D warnings
hv_step "building the host tool and test harness (first time: ~5 min for the bootloader stages)"
cargo build --tests -q
hv_step "running unit and integration tests"
# Integration tests share one build of the kernel; two emulators at a time fit
# two cores without starving the instruction-counting Bochs runs.
exec cargo test --no-fail-fast -- --test-threads="${HV_TEST_THREADS:-2}" "$@"
