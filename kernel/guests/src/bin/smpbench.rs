//! Measures interrupt delivery between and to the vCPUs of one VM with
//! RDTSC inside the guest (under Bochs the TSC counts instructions, so the
//! figures repeat; with two CPUs Bochs' TSC moves in steps of 5). Needs two
//! vCPUs: the boot vCPU starts the second with INIT-SIPI-SIPI
//! ([`guests::smp`]), both in x2APIC mode, then measures:
//!
//! - IPI round trip: the boot vCPU writes a fixed IPI (vector 0x40) to the
//!   ICR for APIC ID 1; the AP's handler sends the EOI and a fixed IPI
//!   (0x41) back to APIC ID 0; the boot vCPU spins (`pause`) until its own
//!   handler (EOI, count) has run, then sends the next. [`ROUND_TRIPS`]
//!   round trips timed with one RDTSC pair, twice, each run at the start of
//!   a fresh slice; the better run per round trip. The AP spins with
//!   interrupts on (it is not halted), so this is exits, the IPI's way
//!   through the hypervisor to the other CPU (mailbox and wake IPI) and two
//!   injections, both ways.
//! - LAPIC timer delivery: on the boot vCPU, the LVT timer in TSC-deadline
//!   mode (vector 0x42); [`TIMER_ROUNDS`] times: IA32_TSC_DEADLINE armed at
//!   `rdtsc() + DEADLINE_AHEAD`, spin (`pause`) until the handler ran; the
//!   handler's first instruction after saving two registers is RDTSC. The
//!   cost is handler TSC - deadline; min and median.
//!
//! Output (figures are examples):
//!
//! ```text
//! smpbench: 2 vcpus, ap up
//! smpbench: ipi round trip (ticks, better of 2 runs of 200): 4321
//! smpbench: lapic timer delivery (ticks from deadline to handler, 50 rounds, deadline 20000 ahead): min 1234 median 1240
//! ```
//!
//! each figure also REPORTed ([`key::BENCH_IPI_ROUND_TRIP`],
//! [`key::BENCH_TIMER_DELIVERY_MIN`], [`key::BENCH_TIMER_DELIVERY_MEDIAN`]);
//! exit code 0. Without two vCPUs, x2APIC, TSC-deadline or a TSC frequency,
//! an AP that does not come up, a lost IPI or timer interrupt, a timer
//! interrupt before its deadline or an interrupt on another vector, it says
//! which (`smpbench: ...`) and ends through [`guests::finish`] (`smpbench:
//! FAILED (1 failed checks)`, exit code 1).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use guests::cpu::wrmsr;
use guests::smp::{
    self, enable_interrupts, enable_x2apic, msr, send_ipi, set_timer, stop_timer,
    CPUID1_ECX_TSC_DEADLINE, CPUID1_ECX_X2APIC, LVT_TSC_DEADLINE, VEC_SPURIOUS,
};
use guests::{cpuid, finish, key, min_median, println, rdtsc, report};

guests::entry!(main);

/// IPI round trips per timed run.
const ROUND_TRIPS: u64 = 200;
/// TSC-deadline rounds.
const TIMER_ROUNDS: usize = 50;
/// How far ahead of the TSC each deadline is armed (ticks).
const DEADLINE_AHEAD: u64 = 20_000;

/// Vectors: boot vCPU to AP, AP back to the boot vCPU, the LAPIC timer.
const VEC_TO_AP: u8 = 0x40;
const VEC_TO_BSP: u8 = 0x41;
const VEC_TIMER: u8 = 0x42;

/// How long the AP has to come up, and how long one timed run may take
/// before the run counts as lost (ms of TSC time).
const AP_TIMEOUT_MS: u64 = 2000;
const RUN_TIMEOUT_MS: u64 = 10_000;

/// The AP is up (set by [`ap_entry`]).
static AP_UP: AtomicU64 = AtomicU64::new(0);
/// IPIs the boot vCPU received on [`VEC_TO_BSP`].
static BACK: AtomicU64 = AtomicU64::new(0);
/// TSC at the entry of the last timer interrupt's handler (0: none yet).
static TIMER_TSC: AtomicU64 = AtomicU64::new(0);
/// Interrupts on vectors this guest does not use (spurious aside).
static UNEXPECTED: AtomicU64 = AtomicU64::new(0);
/// TSC frequency (Hz), for the timeouts.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

// The interrupt handlers: as short as they can be, each saving only the
// registers it uses. EOI = x2APIC MSR 0x80B, ICR = 0x830 (EDX = destination
// APIC ID, EAX = vector: a fixed, physical, edge IPI).
core::arch::global_asm!(
    ".section .text.smpbench_irq, \"ax\"",
    // AP: EOI, then the IPI back to APIC ID 0.
    ".balign 16",
    ".global smpbench_to_ap",
    "smpbench_to_ap:",
    "push rax",
    "push rcx",
    "push rdx",
    "xor eax, eax",
    "xor edx, edx",
    "mov ecx, 0x80b",
    "wrmsr",
    "mov eax, {to_bsp}",
    "mov ecx, 0x830",
    "wrmsr",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "iretq",
    // Boot vCPU: count, EOI.
    ".balign 16",
    ".global smpbench_to_bsp",
    "smpbench_to_bsp:",
    "lock inc qword ptr [rip + {back}]",
    "push rax",
    "push rcx",
    "push rdx",
    "xor eax, eax",
    "xor edx, edx",
    "mov ecx, 0x80b",
    "wrmsr",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "iretq",
    // Timer: RDTSC first, then EOI.
    ".balign 16",
    ".global smpbench_timer",
    "smpbench_timer:",
    "push rax",
    "push rdx",
    "rdtsc",
    "shl rdx, 32",
    "or rax, rdx",
    "mov qword ptr [rip + {timer_tsc}], rax",
    "push rcx",
    "xor eax, eax",
    "xor edx, edx",
    "mov ecx, 0x80b",
    "wrmsr",
    "pop rcx",
    "pop rdx",
    "pop rax",
    "iretq",
    // Any other vector: count, EOI.
    ".balign 16",
    ".global smpbench_other",
    "smpbench_other:",
    "lock inc qword ptr [rip + {unexpected}]",
    "push rax",
    "push rcx",
    "push rdx",
    "xor eax, eax",
    "xor edx, edx",
    "mov ecx, 0x80b",
    "wrmsr",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "iretq",
    // The spurious vector: no EOI.
    ".balign 16",
    ".global smpbench_spurious",
    "smpbench_spurious:",
    "iretq",
    ".text",
    to_bsp = const VEC_TO_BSP,
    back = sym BACK,
    timer_tsc = sym TIMER_TSC,
    unexpected = sym UNEXPECTED,
);

extern "C" {
    static smpbench_to_ap: u8;
    static smpbench_to_bsp: u8;
    static smpbench_timer: u8;
    static smpbench_other: u8;
    static smpbench_spurious: u8;
}

/// The handler of `vector`.
fn handler(vector: u8) -> u64 {
    match vector {
        VEC_TO_AP => core::ptr::addr_of!(smpbench_to_ap) as u64,
        VEC_TO_BSP => core::ptr::addr_of!(smpbench_to_bsp) as u64,
        VEC_TIMER => core::ptr::addr_of!(smpbench_timer) as u64,
        VEC_SPURIOUS => core::ptr::addr_of!(smpbench_spurious) as u64,
        _ => core::ptr::addr_of!(smpbench_other) as u64,
    }
}

/// Ends the run with one failed check (its line printed before).
fn fatal() -> ! {
    finish("smpbench", 1)
}

/// TSC ticks in `ms` milliseconds.
fn ms_ticks(ms: u64) -> u64 {
    TSC_HZ.load(Ordering::Relaxed) / 1000 * ms
}

/// Spins (`pause`) until `done` holds; past `limit` (a TSC value, checked
/// every 4096 spins) the run is lost and ends with `what`.
#[inline(always)]
fn spin_until(limit: u64, what: &str, mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        spins = spins.wrapping_add(1);
        if spins & 0xfff == 0 && rdtsc() > limit {
            println!("smpbench: {what} not received within {RUN_TIMEOUT_MS} ms");
            fatal();
        }
        core::hint::spin_loop();
    }
}

/// One timed run of [`ROUND_TRIPS`] IPI round trips, at the start of a
/// fresh slice; the ticks it took.
fn round_trips() -> u64 {
    guests::yield_now();
    let limit = rdtsc() + ms_ticks(RUN_TIMEOUT_MS);
    let base = BACK.load(Ordering::SeqCst);
    let t0 = rdtsc();
    for k in 1..=ROUND_TRIPS {
        send_ipi(1, VEC_TO_AP);
        spin_until(limit, "ipi back from cpu 1", || {
            BACK.load(Ordering::Relaxed) >= base + k
        });
    }
    rdtsc() - t0
}

/// [`TIMER_ROUNDS`] TSC deadlines: (min, median) of handler TSC - deadline.
fn timer_delivery() -> (u64, u64) {
    set_timer(LVT_TSC_DEADLINE | u64::from(VEC_TIMER), 0);
    // SAFETY: MFENCE orders the LVT write before the first deadline write
    // (SDM Vol. 3A 10.5.4.2).
    unsafe { core::arch::asm!("mfence", options(nostack, preserves_flags)) };
    let mut costs = [0u64; TIMER_ROUNDS];
    guests::yield_now();
    let limit = rdtsc() + ms_ticks(RUN_TIMEOUT_MS);
    for cost in costs.iter_mut() {
        TIMER_TSC.store(0, Ordering::SeqCst);
        let deadline = rdtsc() + DEADLINE_AHEAD;
        // SAFETY: arms the TSC deadline; its vector has a handler.
        unsafe { wrmsr(msr::TSC_DEADLINE, deadline) };
        spin_until(limit, "lapic timer interrupt", || {
            TIMER_TSC.load(Ordering::Relaxed) != 0
        });
        let at = TIMER_TSC.load(Ordering::SeqCst);
        if at < deadline {
            println!(
                "smpbench: timer interrupt {} ticks before its deadline",
                deadline - at
            );
            fatal();
        }
        *cost = at - deadline;
    }
    stop_timer();
    min_median(&mut costs)
}

fn main() {
    let (n, _) = smp::vcpu_count();
    if n < 2 {
        println!("smpbench: fewer than 2 vcpus ({n})");
        fatal();
    }
    let ecx = cpuid(1, 0).ecx;
    if ecx & CPUID1_ECX_X2APIC == 0 || ecx & CPUID1_ECX_TSC_DEADLINE == 0 {
        println!("smpbench: no x2apic or tsc-deadline in cpuid");
        fatal();
    }
    let Some((tsc_hz, _)) = smp::frequencies() else {
        println!("smpbench: no tsc frequency in cpuid 0x15/0x16");
        fatal();
    };
    TSC_HZ.store(tsc_hz, Ordering::SeqCst);

    smp::install_idt(handler);
    enable_x2apic();
    let trampoline = smp::install_trampoline(ap_entry).unwrap_or_else(|e| {
        println!("smpbench: {e}");
        fatal()
    });
    if !trampoline.start_ap(1, tsc_hz, AP_TIMEOUT_MS, || {
        AP_UP.load(Ordering::SeqCst) != 0
    }) {
        println!("smpbench: cpu 1 did not come up within {AP_TIMEOUT_MS} ms");
        fatal();
    }
    println!("smpbench: {n} vcpus, ap up");
    enable_interrupts();

    let ipi = round_trips().min(round_trips());
    let ipi = (ipi + ROUND_TRIPS / 2) / ROUND_TRIPS;
    let (timer_min, timer_median) = timer_delivery();
    let unexpected = UNEXPECTED.load(Ordering::SeqCst);
    if unexpected != 0 {
        println!("smpbench: {unexpected} interrupts on unexpected vectors");
        fatal();
    }
    println!("smpbench: ipi round trip (ticks, better of 2 runs of {ROUND_TRIPS}): {ipi}");
    println!(
        "smpbench: lapic timer delivery (ticks from deadline to handler, {TIMER_ROUNDS} rounds, deadline {DEADLINE_AHEAD} ahead): min {timer_min} median {timer_median}"
    );
    report(key::BENCH_IPI_ROUND_TRIP, ipi);
    report(key::BENCH_TIMER_DELIVERY_MIN, timer_min);
    report(key::BENCH_TIMER_DELIVERY_MEDIAN, timer_median);
}

/// Where the AP arrives from the trampoline: x2APIC on, then it spins with
/// interrupts on, answering IPIs in its handler, until the VM ends.
extern "C" fn ap_entry(_index: u64) -> ! {
    enable_x2apic();
    AP_UP.store(1, Ordering::SeqCst);
    enable_interrupts();
    loop {
        core::hint::spin_loop();
    }
}
