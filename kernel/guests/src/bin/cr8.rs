//! CR8 (the task-priority register) belongs to the VM: the guest writes
//! CR8 = 15 (MOV CR8, RAX), which masks every maskable interrupt *for the
//! guest*, then keeps the CPU busy for many time slices, yields and halts,
//! reading CR8 back all along. A hypervisor that lets the write reach the
//! physical TPR masks its own timer interrupts: the other VMs on this CPU and
//! the host stall. Run it next to another VM on the same CPU (the `halter`
//! guest): both must finish.
//!
//! Output when CR8 is kept (the second line's figures vary from run to run):
//!
//! ```text
//! cr8: initial tpr 0
//! cr8: N reads over T ticks of running, G gaps where other VMs ran
//! cr8: tpr 15 kept, OK
//! cr8: OK
//! ```
//!
//! and REPORT `hvabi::key::CR8_TPR` = the last value read; exit code 0, or 1
//! after `cr8: tpr read back V at read N, FAILED` / `cr8: FAILED (...)`.
#![no_std]
#![no_main]

use guests::cpu::{cr8, set_cr8};
use guests::{finish, key, println, rdtsc, report};

guests::entry!(main);

/// TSC ticks of its own running time to keep busy (the TSC runs at 200 MHz
/// in the Bochs machine: 20 M ticks are ten 10-ms slices).
const BUSY_TICKS: u64 = 20_000_000;
/// A TSC jump this large between two reads means the VM was not running.
const GAP_TICKS: u64 = 200_000;
/// The priority written.
const TPR: u64 = 15;

fn main() {
    guests::pace_output();
    let mut failures = 0;
    let initial = cr8();
    println!("cr8: initial tpr {initial}");
    if initial != 0 {
        failures += 1;
    }
    // SAFETY: the guest runs with interrupts disabled; CR8 only affects which
    // interrupts it would accept.
    unsafe { set_cr8(TPR) };

    let mut bad: Option<(u64, u64)> = None;
    let mut reads = 0u64;
    let mut gaps = 0u64;
    // Time this VM ran: TSC steps between two reads, except the long ones
    // (the VM was descheduled). The guest TSC also runs while other VMs do.
    let mut busy = 0u64;
    let mut last = rdtsc();
    while busy < BUSY_TICKS {
        // Some work between reads.
        let mut x = last;
        for _ in 0..200 {
            x = core::hint::black_box(x.rotate_left(5) ^ 0x9e37_79b9);
        }
        let v = cr8();
        reads += 1;
        if v != TPR && bad.is_none() {
            bad = Some((v, reads));
        }
        let now = rdtsc();
        let step = now.wrapping_sub(last);
        last = now;
        if step > GAP_TICKS {
            gaps += 1;
        } else {
            busy += step;
        }
    }
    println!("cr8: {reads} reads over {busy} ticks of running, {gaps} gaps where other VMs ran");
    // A yield and a HLT (interrupts disabled: the hypervisor resumes the VM at
    // its next turn) are world switches too.
    guests::yield_now();
    let after_yield = cr8();
    // SAFETY: HLT in a guest exits to the hypervisor.
    unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
    let after_hlt = cr8();
    for (v, at) in [(after_yield, reads + 1), (after_hlt, reads + 2)] {
        if v != TPR && bad.is_none() {
            bad = Some((v, at));
        }
    }
    report(key::CR8_TPR, after_hlt);
    match bad {
        None => println!("cr8: tpr {TPR} kept, OK"),
        Some((v, at)) => {
            println!("cr8: tpr read back {v} at read {at}, FAILED");
            failures += 1;
        }
    }
    finish("cr8", failures)
}
