#!/usr/bin/env bash
# Builds what is stale and boots the hypervisor. Without options: the UEFI image
# with the default VM configuration (boot/configs/default.toml) in QEMU.
# `./qemu-run.sh --help` lists the options (memory, CPUs, BIOS, Bochs, GDB, ...).
# Options are checked before anything is built. Exit status (README.md, "The two
# commands"): 0 success, 2 bad options/configuration/build, 3 the kernel refused
# some VMs, 4 it started none, 17-20 the kernel's failure codes, 124 timeout.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/boot/toolchain.sh"

hv_setup_toolchain
case "${1:-}" in
    -h|--help|help)
        hv_step "building the host tool (the first build compiles the bootloader's stages: ~5 min)"
        exec cargo run -q --manifest-path "$HV_ROOT/Cargo.toml" -p boot -- help ;;
esac
want_bochs=0
for a in "$@"; do [ "$a" = --bochs ] && want_bochs=1; done
if [ "$want_bochs" = 1 ]; then
    hv_ensure_pkgs "Bochs" $HV_PKGS_BOCHS
else
    hv_ensure_pkgs "QEMU and OVMF" $HV_PKGS_QEMU
fi
hv_step "building the host tool (the first build compiles the bootloader's stages: ~5 min)"
cargo build -q --manifest-path "$HV_ROOT/Cargo.toml" -p boot
exec "$HV_ROOT/target/debug/boot" run "$@"
