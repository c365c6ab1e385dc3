#!/usr/bin/env bash
# Benchmarks: boots the benchmark guests in Bochs (where the TSC counts
# instructions, so the figures repeat exactly) and prints the figures the
# kernel reported as a table. Extra arguments go to `boot run`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../boot/toolchain.sh"
hv_setup_toolchain
hv_ensure_pkgs "Bochs" $HV_PKGS_BOCHS
cd "$HV_ROOT"
hv_step "running the benchmark guests in Bochs (several minutes)"
status=0
cargo run -q -p boot -- run --bochs --bench --timeout 600 "$@" </dev/null >/dev/null || status=$?
log="${HV_TARGET_DIR:-$HV_ROOT/target}/run/serial.log"
[ -f "$log" ] || hv_die "no serial log at $log"
hv_step "benchmark figures (from $log)"
# The guests' own summary lines and the kernel's host-side figures.
grep -aE 'bench|world switch' "$log" | grep -v ' report ' | tr -d '\r' | sed -E 's/^\[[^]]*\] *[A-Z]* *//; s/^/  /'
[ "$status" = 0 ] || hv_die "the benchmark run ended with status $status (see $log)"
