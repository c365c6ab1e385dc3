//! Measures exit round trips with RDTSC inside the guest (under Bochs the
//! TSC counts instructions, so every figure repeats exactly).
//!
//! Two kinds of figure:
//!
//! - per operation: one RDTSC pair around a single CPUID, VMCALL or port
//!   write, min and median over [`SAMPLES`], minus the same pair around
//!   nothing;
//! - loops (like with like across operations and backends): this loop,
//!   timed over [`LOOP_N`] iterations with one RDTSC pair,
//!
//!   ```text
//!   2: xor eax, eax
//!      xor ecx, ecx
//!      <op>
//!      dec esi
//!      jnz 2b
//!   ```
//!
//!   for op = nothing, CPUID (leaf 0), the hypercall VERSION (VMCALL; on
//!   AMD also VMMCALL, the vendor's own instruction), OUT to port 0xE9 (no
//!   device: dropped) and OUT to the UART's THR (port 0x3F8, a NUL byte).
//!   Reported per iteration in tenths of a tick, the empty loop as it is and
//!   the others net of it.
#![no_std]
#![no_main]

use guests::{cpuid, hypercall, key, min_median, nr, println, rdtsc, report};

guests::entry!(main);

const SAMPLES: usize = 201;

/// Iterations of each timed loop. The UART loop's NUL bytes (shown as `?`)
/// stay below the host's 256-byte console line, so the host prints no line
/// in the middle of the loop.
const LOOP_N: u32 = 200;

fn measure(mut op: impl FnMut()) -> (u64, u64) {
    let mut samples = [0u64; SAMPLES];
    for s in samples.iter_mut() {
        let t0 = rdtsc();
        op();
        *s = rdtsc() - t0;
    }
    min_median(&mut samples)
}

/// Runs the benchmark loop with `$op` once, returns the ticks it took.
macro_rules! timed_loop {
    ($op:literal) => {{
        let ticks: u64;
        // SAFETY: the loop runs only the exiting instruction under test
        // (CPUID, a hypercall that changes RAX and RBX, a port write) and
        // arithmetic on registers declared clobbered; RBX, which LLVM
        // reserves, is saved and restored around it.
        unsafe {
            core::arch::asm!(
                "mov {save}, rbx",
                "lfence",
                "rdtsc",
                "shl rdx, 32",
                "or rax, rdx",
                "mov {t0}, rax",
                "mov edx, 0x3f8",
                ".p2align 4",
                "2:",
                "xor eax, eax",
                "xor ecx, ecx",
                $op,
                "dec esi",
                "jnz 2b",
                "lfence",
                "rdtsc",
                "shl rdx, 32",
                "or rax, rdx",
                "sub rax, {t0}",
                "mov rbx, {save}",
                save = out(reg) _,
                t0 = out(reg) _,
                inout("esi") LOOP_N => _,
                out("rax") ticks,
                out("rcx") _,
                out("rdx") _,
            );
        }
        ticks
    }};
}

/// The best of two runs of a loop, each at the start of a fresh time slice
/// (the loop is never cut by the scheduler).
fn best_of_two(mut run: impl FnMut() -> u64) -> u64 {
    let mut best = u64::MAX;
    for _ in 0..2 {
        guests::yield_now();
        best = best.min(run());
    }
    best
}

/// Tenths of a tick per iteration of a loop that took `ticks`.
fn tenths(ticks: u64) -> u64 {
    ticks * 10 / u64::from(LOOP_N)
}

/// `a.b` for a value in tenths.
struct Tenths(u64);

impl core::fmt::Display for Tenths {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.0 / 10, self.0 % 10)
    }
}

fn loops() {
    // AMD's own hypercall instruction (VMCALL exits there as #UD).
    let amd = guests::amd_cpu();
    let empty = best_of_two(|| timed_loop!(""));
    let cpuid = best_of_two(|| timed_loop!("cpuid"));
    let vmcall = best_of_two(|| timed_loop!("vmcall"));
    let vmmcall = if amd {
        Some(best_of_two(|| timed_loop!("vmmcall")))
    } else {
        None
    };
    let out = best_of_two(|| timed_loop!("out 0xe9, al"));
    let thr = best_of_two(|| {
        guests::_print(format_args!("bench uart-thr bytes: "));
        let t = timed_loop!("out dx, al");
        println!("");
        t
    });
    let net = |ticks: u64| tenths(ticks.saturating_sub(empty));
    let empty_t = tenths(empty);
    let (cpuid, vmcall, out, thr) = (net(cpuid), net(vmcall), net(out), net(thr));
    println!(
        "bench loop (ticks per iteration over {LOOP_N}, net of the empty loop): empty {} cpuid {} vmcall {} out-unclaimed {} out-uart-thr {}",
        Tenths(empty_t),
        Tenths(cpuid),
        Tenths(vmcall),
        Tenths(out),
        Tenths(thr)
    );
    if let Some(t) = vmmcall {
        println!("bench loop (AMD): vmmcall {}", Tenths(net(t)));
        report(key::BENCH_LOOP_VMMCALL, net(t));
    }
    report(key::BENCH_LOOP_EMPTY, empty_t);
    report(key::BENCH_LOOP_CPUID, cpuid);
    report(key::BENCH_LOOP_VMCALL, vmcall);
    report(key::BENCH_LOOP_OUT_UNCLAIMED, out);
    report(key::BENCH_LOOP_OUT_UART, thr);
}

fn main() {
    let noexit = measure(|| {
        core::hint::black_box(0u64);
    });
    let cpuid = measure(|| {
        core::hint::black_box(cpuid(0, 0));
    });
    let vmcall = measure(|| {
        core::hint::black_box(hypercall(nr::VERSION, 0, 0, 0));
    });
    // Port 0x80: the POST-code register of the VM's chipset.
    let io = measure(|| {
        // SAFETY: port I/O in a guest exits to the hypervisor.
        unsafe { core::arch::asm!("out 0x80, al", in("al") 0u8, options(nomem, nostack)) };
    });
    // Each figure is the measured loop body minus the bare timing overhead.
    let sub = |(min, med): (u64, u64)| (min.saturating_sub(noexit.0), med.saturating_sub(noexit.0));
    let (cpuid, vmcall, io) = (sub(cpuid), sub(vmcall), sub(io));
    println!("bench (cycles, min/median over {SAMPLES}): cpuid {}/{} vmcall {}/{} io-out {}/{} no-exit-loop {}/{}",
        cpuid.0, cpuid.1, vmcall.0, vmcall.1, io.0, io.1, noexit.0, noexit.1);
    report(key::BENCH_CPUID_MIN, cpuid.0);
    report(key::BENCH_CPUID_MEDIAN, cpuid.1);
    report(key::BENCH_VMCALL_MIN, vmcall.0);
    report(key::BENCH_VMCALL_MEDIAN, vmcall.1);
    report(key::BENCH_IO_MIN, io.0);
    report(key::BENCH_IO_MEDIAN, io.1);
    report(key::BENCH_NOEXIT_MIN, noexit.0);
    report(key::BENCH_NOEXIT_MEDIAN, noexit.1);
    loops();
}
