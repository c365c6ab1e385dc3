//! A single-vCPU guest that runs beside the `smp` VM (on another CPU) and
//! watches for interrupts that are not its own: the `smp` guest sends
//! broadcasts and an IPI to an APIC ID outside its VM, none of which may
//! reach this VM.
//!
//! It turns on its local APIC in x2APIC mode, counts every interrupt of
//! vectors 32-255 by vector (the handlers send the EOI), and runs its LAPIC
//! timer in periodic mode at 10 ms (vector 0x30) for 2 s of TSC time,
//! halting (`sti; hlt`) between ticks. Every other vector counts as stray.
//!
//! Output when nothing stray arrived:
//!
//! ```text
//! ipisink: apic id 0, tsc 2000000000 Hz, apic timer 20000000 Hz, timer 10 ms for 2000 ms
//! ipisink: timer ticks 200 (expected 200, accepted 150-250)
//! ipisink: stray interrupts 0
//! ipisink: OK
//! ```
//!
//! Each vector with stray interrupts gets a line `ipisink: stray vector 0xVV:
//! C` before the total. Exit code 0 when no stray interrupt arrived and the
//! tick count is within 200 +- 25 %; otherwise the last line is `ipisink:
//! FAILED (N failed checks)` (after a REPORT of `hvabi::key::FAILURES`), exit
//! code 1. Without x2APIC or a TSC frequency in CPUID it says so and fails.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use guests::cpu::rdmsr;
use guests::smp::{
    enable_x2apic, install_idt, msr, set_timer, stop_timer, CPUID1_ECX_X2APIC, LVT_PERIODIC,
    VEC_SPURIOUS,
};
use guests::{cpuid, finish, println, rdtsc};

guests::entry!(main);

/// The timer's vector, period and run time.
const VEC_TIMER: u8 = 0x30;
const PERIOD_MS: u64 = 10;
const RUN_MS: u64 = 2000;
/// Interrupts by vector.
static COUNTS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

// Stubs for vectors 32-255, 16 bytes apart from `ipisink_stubs`: each pushes
// its vector; the common part counts it, sends the x2APIC EOI (not for the
// spurious vector) and returns.
core::arch::global_asm!(
    ".section .text.ipisink_irq, \"ax\"",
    ".balign 16",
    ".global ipisink_stubs",
    "ipisink_stubs:",
    ".set ipisink_vector, 32",
    ".rept 224",
    ".balign 16",
    "pushq $ipisink_vector",
    "jmp ipisink_common",
    ".set ipisink_vector, ipisink_vector + 1",
    ".endr",
    "ipisink_common:",
    "push %rax",
    "push %rcx",
    "push %rdx",
    "mov 24(%rsp), %rax",
    "lea {counts}(%rip), %rcx",
    "lock incq (%rcx, %rax, 8)",
    "cmp ${spurious}, %rax",
    "je 2f",
    "mov ${eoi}, %ecx",
    "xor %eax, %eax",
    "xor %edx, %edx",
    "wrmsr",
    "2:",
    "pop %rdx",
    "pop %rcx",
    "pop %rax",
    "add $8, %rsp",
    "iretq",
    ".text",
    counts = sym COUNTS,
    spurious = const VEC_SPURIOUS,
    eoi = const msr::EOI,
    options(att_syntax),
);

extern "C" {
    static ipisink_stubs: u8;
}

fn main() {
    guests::pace_output();
    if cpuid(1, 0).ecx & CPUID1_ECX_X2APIC == 0 {
        println!("ipisink: no x2apic in cpuid");
        finish("ipisink", 1);
    }
    let Some((tsc_hz, apic_hz)) = guests::smp::frequencies() else {
        println!("ipisink: no tsc frequency in cpuid 0x15/0x16");
        finish("ipisink", 1);
    };
    // trap.rs's exception gates and the counting stubs, 16 bytes apart.
    let stubs = core::ptr::addr_of!(ipisink_stubs) as u64;
    install_idt(|v| stubs + (u64::from(v) - 32) * 16);
    enable_x2apic();
    let id = rdmsr(msr::ID);
    println!("ipisink: apic id {id}, tsc {tsc_hz} Hz, apic timer {apic_hz} Hz, timer {PERIOD_MS} ms for {RUN_MS} ms");

    let end = rdtsc() + tsc_hz / 1000 * RUN_MS;
    set_timer(
        LVT_PERIODIC | u64::from(VEC_TIMER),
        apic_hz / 1000 * PERIOD_MS,
    );
    while rdtsc() < end {
        // SAFETY: STI's shadow covers HLT, so an interrupt that is pending
        // wakes it; the periodic timer wakes it at least every 10 ms.
        unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    stop_timer();
    // Take whatever is still pending (a last tick, a late stray IPI).
    // SAFETY: as above.
    unsafe { asm!("sti", "nop", "nop", "cli", options(nomem, nostack)) };

    let mut failures = 0;
    let ticks = COUNTS[usize::from(VEC_TIMER)].load(Ordering::SeqCst);
    let expected = RUN_MS / PERIOD_MS;
    let (low, high) = (expected * 3 / 4, expected * 5 / 4);
    println!("ipisink: timer ticks {ticks} (expected {expected}, accepted {low}-{high})");
    if !(low..=high).contains(&ticks) {
        failures += 1;
    }
    let mut stray = 0;
    for (v, c) in COUNTS.iter().enumerate().skip(32) {
        let c = c.load(Ordering::SeqCst);
        if v != usize::from(VEC_TIMER) && c != 0 {
            println!("ipisink: stray vector {v:#04x}: {c}");
            stray += c;
        }
    }
    println!("ipisink: stray interrupts {stray}");
    if stray != 0 {
        failures += 1;
    }
    finish("ipisink", failures)
}
