//! Measures exit round trips with RDTSC inside the guest: CPUID, VMCALL, a
//! port write, and the same loop without any exit. Reports min and median
//! cycles per operation (under Bochs: instructions, hence repeatable).
#![no_std]
#![no_main]

use guests::{cpuid, hypercall, key, min_median, nr, println, rdtsc, report};

guests::entry!(main);

const SAMPLES: usize = 201;

fn measure(mut op: impl FnMut()) -> (u64, u64) {
    let mut samples = [0u64; SAMPLES];
    for s in samples.iter_mut() {
        let t0 = rdtsc();
        op();
        *s = rdtsc() - t0;
    }
    min_median(&mut samples)
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
    // Port 0x80 (POST codes): no device here, so a write is dropped and counted.
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
}
