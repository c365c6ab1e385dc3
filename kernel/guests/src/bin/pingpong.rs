//! World-switch benchmark: two of these on one CPU yield to each other. The
//! time from one VM's yield to its return spans two world switches (there and
//! back) and the other VM's yield; half of it is reported per switch. The
//! yield uses the CPU vendor's hypercall instruction (VMMCALL on AMD, as a
//! guest's paravirtual code picks it), so that the figure is the switch's,
//! not VMCALL's #UD decoding on AMD-V (measured by the `bench` guest).
#![no_std]
#![no_main]

use guests::{hypercall, hypercall_vmmcall, key, min_median, nr, println, rdtsc, report};

guests::entry!(main);

const SAMPLES: usize = 101;

fn main() {
    // The loop is built once per instruction: no vendor test inside it.
    if guests::amd_cpu() {
        measure(|| {
            hypercall_vmmcall(nr::YIELD, 0, 0, 0);
        });
    } else {
        measure(|| {
            hypercall(nr::YIELD, 0, 0, 0);
        });
    }
}

fn measure(yield_now: impl Fn()) {
    // Let the partner reach its loop first.
    yield_now();
    let mut samples = [0u64; SAMPLES];
    for s in samples.iter_mut() {
        let t0 = rdtsc();
        yield_now();
        *s = (rdtsc() - t0) / 2;
    }
    let (min, median) = min_median(&mut samples);
    println!("world switch (cycles, half a yield round trip): min {min} median {median}");
    report(key::BENCH_SWITCH_MIN, min);
    report(key::BENCH_SWITCH_MEDIAN, median);
}
