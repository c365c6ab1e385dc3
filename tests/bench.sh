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
# Lines like `vm bench: report exit_roundtrip_cycles=1234 ...` or `bench ...`:
# one row per KEY=VALUE, other bench lines as they are.
grep -aE 'bench|report' "$log" | tr -d '\r' | sed -E 's/^\[[^]]*\] *[A-Z]* *//' | awk '
    {
        n = 0
        for (i = 1; i <= NF; i++) if (index($i, "=") > 1) {
            split($i, kv, "="); src = $0; sub(/:? *report.*/, "", src); sub(/[^ ]*=.*/, "", src)
            printf "  %-24s %-32s %s\n", src, kv[1], kv[2]; n++
        }
        if (n == 0) printf "  %s\n", $0
    }'
[ "$status" = 0 ] || hv_die "the benchmark run ended with status $status (see $log)"
