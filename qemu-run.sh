#!/usr/bin/env bash
# Builds what is stale and boots the hypervisor. Without options: the UEFI image
# with the default VM configuration (boot/configs/default.toml) in QEMU.
# `./qemu-run.sh --help` lists the options (memory, CPUs, BIOS, Bochs, GDB, ...).
# The exit status is the kernel's: 0 when it reported success.
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
