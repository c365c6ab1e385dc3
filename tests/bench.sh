#!/usr/bin/env bash
# Benchmarks: boots the benchmark VMs (boot/configs/bench.toml) in Bochs with
# one CPU, where the TSC counts instructions, so every figure repeats
# exactly; once on Skylake-X (VT-x) and once on Ryzen (AMD-V) with the
# ordinary release kernel, and once more on each with the kernel's
# `bench-counts` feature for the VMREAD/VMWRITE counts and the scheduler's
# overhead samples (counting costs instructions on the paths it counts, so
# it gets a build and a target directory of its own).
# Then boot/configs/bench-smp.toml (the smpbench guest, a VM with two
# vCPUs: IPI round trip, LAPIC timer delivery) with two CPUs on both; with
# two CPUs Bochs' TSC moves in steps of 5, so those figures are exact to +-5.
# Prints the figures side by side with the targets of issue 12 (never
# asserted). Extra arguments go to every `boot run`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../boot/toolchain.sh"
hv_setup_toolchain
hv_ensure_pkgs "Bochs" $HV_PKGS_BOCHS
cd "$HV_ROOT"
out="${HV_TARGET_DIR:-$HV_ROOT/target}"
logs="$out/bench"
mkdir -p "$logs"

# bench_run NAME CPU DIR [--smp N] [--config FILE] [VAR=VALUE...]: one Bochs
# boot with HV_TARGET_DIR=DIR (and the variables given), one CPU and
# bench.toml unless given; its serial log is kept as $logs/NAME.log.
bench_run() {
    local name=$1 cpu=$2 dir=$3 smp=1 config=()
    shift 3
    while [ $# -gt 0 ]; do
        case $1 in
            --smp) smp=$2; shift 2 ;;
            --config) config=(--config "$2"); shift 2 ;;
            *) break ;;
        esac
    done
    hv_step "benchmark run: $name (Bochs, --cpu $cpu, --smp $smp)"
    local status=0
    env HV_TARGET_DIR="$dir" "$@" cargo run -q -p boot -- run --bochs --cpu "$cpu" --smp "$smp" --bench --timeout 900 \
        "${config[@]}" "${EXTRA[@]}" </dev/null >"$logs/$name.out" 2>&1 || status=$?
    cp "$dir/run/serial.log" "$logs/$name.log" 2>/dev/null || hv_die "no serial log for $name (see $logs/$name.out)"
    [ "$status" = 0 ] || hv_die "benchmark run $name ended with status $status (see $logs/$name.log)"
}

EXTRA=("$@")
bench_run vtx intel "$out"
bench_run amd amd "$out"
bench_run vtx-count intel "$out/bench-count" HV_KERNEL_FEATURES=bench-counts
bench_run amd-count amd "$out/bench-count" HV_KERNEL_FEATURES=bench-counts
bench_run smp-vtx intel "$out" --smp 2 --config boot/configs/bench-smp.toml
bench_run smp-amd amd "$out" --smp 2 --config boot/configs/bench-smp.toml

# report LOG VM KEY: the value VM reported for KEY.
report() {
    tr -d '\r' <"$1" | sed -n "s/^vm $2: report $3=\([0-9]*\)$/\1/p" | tail -n 1
}
# tenths VALUE: a value in tenths as a decimal.
tenths() {
    [ -n "$1" ] || { echo "-"; return; }
    echo "$(($1 / 10)).$(($1 % 10))"
}
# vmcs LOG KIND: "reads+writes" per exit of KIND from the counting run.
vmcs() {
    tr -d '\r' <"$1" | grep -a "VMREAD/VMWRITE per exit" | grep -a "vm bench " | tail -n 1 |
        sed -n "s/.* $2 \([0-9.]*\)\/\([0-9.]*\) (.*/\1+\2/p"
}

hv_step "figures (Bochs ticks = instructions; loops net of the empty loop; logs in $logs)"
row() { printf '  %-44s %8s %12s %12s\n' "$@"; }
row "figure" "target" "VT-x" "AMD-V"
row "--------------------------------------------" "--------" "------------" "------------"
row "empty loop iteration" "" "$(tenths "$(report "$logs/vtx.log" bench 26)")" "$(tenths "$(report "$logs/amd.log" bench 26)")"
row "CPUID (leaf 0), loop" "<= 120" "$(tenths "$(report "$logs/vtx.log" bench 27)")" "$(tenths "$(report "$logs/amd.log" bench 27)")"
row "VMCALL (version), loop" "<= 120" "$(tenths "$(report "$logs/vtx.log" bench 28)")" "$(tenths "$(report "$logs/amd.log" bench 28)")"
row "VMMCALL (version), loop" "" "-" "$(tenths "$(report "$logs/amd.log" bench 31)")"
row "OUT to an unclaimed port, loop" "<= 150" "$(tenths "$(report "$logs/vtx.log" bench 29)")" "$(tenths "$(report "$logs/amd.log" bench 29)")"
row "OUT to the UART's THR, loop" "<= 200" "$(tenths "$(report "$logs/vtx.log" bench 30)")" "$(tenths "$(report "$logs/amd.log" bench 30)")"
row "world switch (half a yield round trip)" "<= 400" "$(report "$logs/vtx.log" ping 24)" "$(report "$logs/amd.log" ping 24)"
row "VMREAD+VMWRITE per CPUID exit" "<= 4" "$(vmcs "$logs/vtx-count.log" cpuid)" "-"
row "VMREAD+VMWRITE per VMCALL exit" "" "$(vmcs "$logs/vtx-count.log" vmcall)" "-"
row "VMREAD+VMWRITE per I/O exit" "" "$(vmcs "$logs/vtx-count.log" io)" "-"
row "CPUID, one RDTSC pair (min)" "" "$(report "$logs/vtx.log" bench 16)" "$(report "$logs/amd.log" bench 16)"
row "VMCALL, one RDTSC pair (min)" "" "$(report "$logs/vtx.log" bench 18)" "$(report "$logs/amd.log" bench 18)"
row "OUT to port 0x80 (POST), one RDTSC pair (min)" "" "$(report "$logs/vtx.log" bench 20)" "$(report "$logs/amd.log" bench 20)"
sched() { tr -d '\r' <"$1" | sed -n 's/.*scheduler overhead per slice (TSC ticks): min \([0-9]*\) median \([0-9]*\).*/\1 \/ \2/p' | tail -n 1; }
row "scheduler overhead per slice (min / median)" "" "$(sched "$logs/vtx-count.log")" "$(sched "$logs/amd-count.log")"
row "IPI round trip, 2 vCPUs (+-5)" "" "$(report "$logs/smp-vtx.log" smpbench 40)" "$(report "$logs/smp-amd.log" smpbench 40)"
row "LAPIC timer delivery, TSC deadline (min)" "" "$(report "$logs/smp-vtx.log" smpbench 41)" "$(report "$logs/smp-amd.log" smpbench 41)"
row "LAPIC timer delivery, TSC deadline (median)" "" "$(report "$logs/smp-vtx.log" smpbench 42)" "$(report "$logs/smp-amd.log" smpbench 42)"
echo
hv_step "VMREAD/VMWRITE per exit kind (VT-x, counting build)"
tr -d '\r' <"$logs/vtx-count.log" | grep -a "VMREAD/VMWRITE per exit" | sed 's/^/  /'
