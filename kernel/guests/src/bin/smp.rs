//! A multi-processor guest: the boot vCPU starts the others the way an OS
//! does on real hardware (INIT, start-up IPI, second start-up IPI, SDM Vol.
//! 3A 8.4.4.1), then every vCPU takes part in checks of its virtual local APIC
//! in x2APIC mode:
//!
//! 1. IPI exchange: each vCPU sends [`K`] fixed IPIs to every other vCPU,
//!    one at a time, waiting for each to be counted by the receiver (vector
//!    `0x40 + sender`, so none can merge with another sender's); each
//!    receiver must count exactly `K` from each sender.
//! 2. Self-IPIs through the SELF_IPI MSR and through the ICR "self"
//!    shorthand, each counted exactly.
//! 3. The LAPIC timer in periodic mode at 1 ms for 50 ms of TSC time: 50
//!    ticks +- 20 %, none after it is stopped.
//! 4. TSC-deadline mode: 20 deadlines, each 1 ms after the previous
//!    interrupt; each interrupt at or after its deadline and at most 5 ms
//!    late, IA32_TSC_DEADLINE reading 0 after it fired.
//! 5. One-shot mode: the current count goes down to 0, one interrupt.
//! 6. Broadcasts from the boot vCPU: a fixed IPI to the physical broadcast
//!    ID 0xFFFF_FFFF (vector 0x50) reaches every vCPU of the VM, the sender
//!    included (as on hardware: no shorthand, the sender matches the
//!    broadcast ID); "all excluding self" (0x51) every vCPU but the sender;
//!    an IPI to APIC ID N+5, which no vCPU of the VM has (0x52), none. (A
//!    test runs `ipisink` in another VM beside this one to see that it
//!    reaches no other VM either.)
//!
//! At the end every vCPU checks that no other vector arrived. Interrupt
//! handlers count per vCPU (indexed by the x2APIC ID read in the handler) and
//! vector, and send the EOI. vCPU i has APIC ID i.
//!
//! Start-up ([`guests::smp`], shared with `smpbench`): the boot vCPU copies
//! a trampoline to guest-physical 0x8000 and patches into it its own CR3,
//! CR4, CR0, EFER, GDTR, IDTR and segment selectors, and, per AP, the stack
//! top, the index and the Rust entry. The AP starts in real mode at
//! 0800:0000, loads the trampoline's own GDT, enters protected mode, turns
//! on PAE, loads CR3 and EFER.LME, then CR0 (paging: long mode), jumps to
//! 64-bit code, loads the boot vCPU's GDT and IDT and calls [`ap_entry`]
//! through a far return to the boot vCPU's code selector. The boot vCPU
//! starts the APs one after the other.
//!
//! Output of a VM with two vCPUs where everything passes (lines in this
//! order; the boot vCPU prints its `up` line first, each AP its own when it
//! arrives; the per-vCPU results come in vCPU order):
//!
//! ```text
//! smp: 2 vcpus (cpuid 0xb)
//! smp: tsc 2000000000 Hz, apic timer 20000000 Hz
//! smp: trampoline at 0x8000, 304 bytes, sipi vector 0x08
//! smp: cpu 0 up, apic id 0
//! smp: cpu 1 up, apic id 1
//! smp: all 2 vcpus up
//! smp: cpu 0 ipis from 1: 100
//! smp: cpu 1 ipis from 0: 100
//! smp: cpu 0 self-ipi msr 10/10, icr 10/10
//! smp: cpu 1 self-ipi msr 10/10, icr 10/10
//! smp: cpu 0 lapic timer periodic 1 ms for 50 ms: expected 50, got 50, after stop 0
//! smp: cpu 1 lapic timer periodic 1 ms for 50 ms: expected 50, got 50, after stop 0
//! smp: cpu 0 tsc-deadline: 20/20 fired, early 0, late 0, worst lateness 12 us, msr nonzero after firing 0
//! smp: cpu 1 tsc-deadline: 20/20 fired, early 0, late 0, worst lateness 15 us, msr nonzero after firing 0
//! smp: cpu 0 one-shot 5 ms: count decreasing yes, reached 0 yes, interrupts 1
//! smp: cpu 1 one-shot 5 ms: count decreasing yes, reached 0 yes, interrupts 1
//! smp: cpu 0 broadcasts: physical 0xffffffff 1, all-but-self 0, to apic 7 0
//! smp: cpu 1 broadcasts: physical 0xffffffff 1, all-but-self 1, to apic 7 0
//! smp: cpu 0 unexpected interrupts 0
//! smp: cpu 1 unexpected interrupts 0
//! smp: 2 vcpus, 0 failed checks
//! smp: OK
//! ```
//!
//! (`(cpuid 1)` instead of `(cpuid 0xb)` when leaf 0xB reports no
//! processors and the count came from CPUID.1:EBX[23:16].) A failed check
//! prints a line saying what (`smp: cpu I ...`), counts as a failure, and the
//! run goes on; the last line is then `smp: FAILED (N failed checks)`, after
//! a REPORT of `hvabi::key::FAILURES`, with exit code 1. Fatal problems
//! (fewer than 2 vCPUs, no x2APIC, no TSC frequency, an AP that does not come
//! up within 2 s or came up twice, a vCPU that does not reach a
//! synchronisation point within 30 s) print their line and end the run right
//! away the same way: `smp: fewer than 2 vcpus (1)`, `smp: cpu I did not come
//! up within 2000 ms`, `smp: cpu I started 2 times`, `smp: cpu I timed out
//! waiting for the others at STAGE`.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guests::cpu::{rdmsr, wrmsr};
use guests::smp::{
    self, enable_interrupts, enable_x2apic, msr, send_icr, send_ipi, set_timer, stop_timer,
    CPUID1_ECX_TSC_DEADLINE, CPUID1_ECX_X2APIC, ICR_ALL_BUT_SELF, ICR_SELF, LVT_PERIODIC,
    LVT_TSC_DEADLINE, MAX_CPUS, SIPI_VECTOR, TRAMPOLINE, VEC_SPURIOUS,
};
use guests::{cpuid, finish, println, rdtsc};

guests::entry!(main);

/// IPIs each vCPU sends to each other vCPU.
const K: u32 = 100;
/// Self-IPIs per method.
const SELF_IPIS: u32 = 10;
/// TSC-deadline rounds.
const DEADLINES: u32 = 20;
/// Periodic timer: period and how long it runs (ms).
const PERIOD_MS: u64 = 5;
const PERIODIC_RUN_MS: u64 = 100;
/// A TSC-deadline interrupt later than this after its deadline counts as
/// late. Under emulation on a loaded host (QEMU's TCG threads on two cores
/// beside other emulators) a vCPU can be off its host CPU for tens of
/// milliseconds: lateness and lost periods are the host's, while an early
/// or an extra interrupt is always a bug, so those limits are strict.
const LATE_LIMIT_MS: u64 = 50;
/// One-shot timer duration (ms).
const ONE_SHOT_MS: u64 = 5;

/// Vectors: fixed IPIs from vCPU `i` arrive at `IPI_BASE + i` (0x40-0x4F
/// for the [`MAX_CPUS`] vCPUs this guest handles).
const IPI_BASE: u8 = 0x40;
const VEC_BROADCAST: u8 = 0x50;
const VEC_ALL_BUT_SELF: u8 = 0x51;
const VEC_OUTSIDE: u8 = 0x52;
const VEC_SELF_MSR: u8 = 0x60;
const VEC_SELF_ICR: u8 = 0x61;
const VEC_PERIODIC: u8 = 0x70;
const VEC_DEADLINE: u8 = 0x71;
const VEC_ONE_SHOT: u8 = 0x72;

/// How long an AP has to come up, and vCPUs to meet (ms).
const AP_TIMEOUT_MS: u64 = 2000;
const MEET_TIMEOUT_MS: u64 = 30_000;

// Interrupt stubs for vectors 32-255, 16 bytes apart from `smp_irq_stubs`:
// push the vector, then `smp_irq_common` saves the registers the C ABI lets
// a callee change and calls `smp_interrupt`.
core::arch::global_asm!(
    ".section .text.smp_irq, \"ax\"",
    ".balign 16",
    ".global smp_irq_stubs",
    "smp_irq_stubs:",
    ".set smp_irq_vector, 32",
    ".rept 224",
    ".balign 16",
    "pushq $smp_irq_vector",
    "jmp smp_irq_common",
    ".set smp_irq_vector, smp_irq_vector + 1",
    ".endr",
    "smp_irq_common:",
    "push %rax",
    "push %rcx",
    "push %rdx",
    "push %rsi",
    "push %rdi",
    "push %r8",
    "push %r9",
    "push %r10",
    "push %r11",
    "mov 72(%rsp), %rdi",
    "push %rbp",
    "mov %rsp, %rbp",
    "and $-16, %rsp",
    "cld",
    "call {handler}",
    "mov %rbp, %rsp",
    "pop %rbp",
    "pop %r11",
    "pop %r10",
    "pop %r9",
    "pop %r8",
    "pop %rdi",
    "pop %rsi",
    "pop %rdx",
    "pop %rcx",
    "pop %rax",
    "add $8, %rsp",
    "iretq",
    ".text",
    handler = sym smp_interrupt,
    options(att_syntax),
);

extern "C" {
    static smp_irq_stubs: u8;
}

/// Interrupts counted per vCPU (x2APIC ID) and vector.
static COUNTS: [[AtomicU32; 256]; MAX_CPUS] =
    [const { [const { AtomicU32::new(0) }; 256] }; MAX_CPUS];
/// TSC when the last TSC-deadline interrupt arrived, per vCPU.
static DEADLINE_TSC: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Interrupts taken on a vCPU whose x2APIC ID is MAX_CPUS or more.
static BAD_ID: AtomicU32 = AtomicU32::new(0);
/// Times each AP printed its `up` line in `ap_entry` (1 once up; 2 would
/// be a restart).
static ALIVE: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Failed checks, all vCPUs.
static FAILURES: AtomicU64 = AtomicU64::new(0);
/// vCPUs taking part, TSC frequency (Hz), APIC timer frequency (Hz).
static NCPUS: AtomicU32 = AtomicU32::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static APIC_HZ: AtomicU64 = AtomicU64::new(0);
/// Barrier: arrivals in the current round, and rounds completed.
static BARRIER_COUNT: AtomicU32 = AtomicU32::new(0);
static BARRIER_ROUND: AtomicU32 = AtomicU32::new(0);
/// Ordered sections: sections * n + index of the vCPU whose turn it is.
static TURN: AtomicU32 = AtomicU32::new(0);

/// Called by `smp_irq_common` with interrupts off: counts the vector for
/// this vCPU and sends the EOI (not for the spurious vector).
extern "C" fn smp_interrupt(vector: u64) {
    let now = rdtsc();
    let id = rdmsr(msr::ID) as usize;
    let vector = (vector & 0xff) as u8;
    if id < MAX_CPUS {
        if vector == VEC_DEADLINE {
            DEADLINE_TSC[id].store(now, Ordering::SeqCst);
        }
        COUNTS[id][usize::from(vector)].fetch_add(1, Ordering::SeqCst);
    } else {
        BAD_ID.fetch_add(1, Ordering::SeqCst);
    }
    if vector != VEC_SPURIOUS {
        // SAFETY: writing 0 to the x2APIC EOI register ends this interrupt.
        unsafe { wrmsr(msr::EOI, 0) };
    }
}

fn count(cpu: usize, vector: u8) -> u32 {
    COUNTS[cpu][usize::from(vector)].load(Ordering::SeqCst)
}

fn fail() {
    FAILURES.fetch_add(1, Ordering::SeqCst);
}

/// Ends the run now (every vCPU stops with the VM).
fn fatal() -> ! {
    fail();
    finish("smp", FAILURES.load(Ordering::SeqCst))
}

/// TSC ticks in `ms` milliseconds.
fn ms_ticks(ms: u64) -> u64 {
    TSC_HZ.load(Ordering::Relaxed) / 1000 * ms
}

/// TSC ticks as microseconds.
fn ticks_us(ticks: u64) -> u64 {
    ticks / (TSC_HZ.load(Ordering::Relaxed) / 1_000_000).max(1)
}

/// Spins until `done` holds (true) or `ms` milliseconds of TSC time passed
/// (false); interrupts stay as they are.
fn wait_for(ms: u64, done: impl FnMut() -> bool) -> bool {
    smp::wait_for(TSC_HZ.load(Ordering::Relaxed), ms, done)
}

/// Lets the host print what this vCPU wrote before a timing check: the
/// hypervisor prints a CPU's queued guest output between two slices (10
/// ms), synchronously, at the host console's pace (about 87 us per
/// character at 115200 baud), and the vCPU does not run meanwhile.
fn settle() {
    delay_us(SETTLE_MS * 1000);
}

/// How long [`settle`] waits: more than two 10 ms slices.
const SETTLE_MS: u64 = 25;

/// Spins for `us` microseconds of TSC time.
fn delay_us(us: u64) {
    smp::delay_us(TSC_HZ.load(Ordering::Relaxed), us);
}

/// Waits until all vCPUs got here (`stage` names the place in a timeout).
fn barrier(me: usize, stage: &str) {
    let n = NCPUS.load(Ordering::SeqCst);
    let round = BARRIER_ROUND.load(Ordering::SeqCst);
    if BARRIER_COUNT.fetch_add(1, Ordering::SeqCst) + 1 == n {
        BARRIER_COUNT.store(0, Ordering::SeqCst);
        BARRIER_ROUND.fetch_add(1, Ordering::SeqCst);
        return;
    }
    if !wait_for(MEET_TIMEOUT_MS, || {
        BARRIER_ROUND.load(Ordering::SeqCst) != round
    }) {
        println!("smp: cpu {me} timed out waiting for the others at {stage}");
        fatal();
    }
}

/// Runs `print` on each vCPU in turn, vCPU 0 first (`section` counts the
/// ordered sections this vCPU went through: all go through the same ones),
/// then waits for all, so that the next check starts with nobody printing.
fn in_order(me: usize, section: &mut u32, stage: &str, print: impl FnOnce()) {
    let n = NCPUS.load(Ordering::SeqCst);
    let turn = *section * n + me as u32;
    *section += 1;
    if !wait_for(MEET_TIMEOUT_MS, || TURN.load(Ordering::SeqCst) == turn) {
        println!("smp: cpu {me} timed out waiting for its turn at {stage}");
        fatal();
    }
    print();
    TURN.fetch_add(1, Ordering::SeqCst);
    barrier(me, stage);
}

fn main() {
    guests::pace_output();
    let (n, source) = smp::vcpu_count();
    println!("smp: {n} vcpus ({source})");
    if n < 2 {
        println!("smp: fewer than 2 vcpus ({n})");
        fatal();
    }
    if n as usize > MAX_CPUS {
        println!("smp: more than {MAX_CPUS} vcpus ({n})");
        fatal();
    }
    if cpuid(1, 0).ecx & CPUID1_ECX_X2APIC == 0 {
        println!("smp: no x2apic in cpuid");
        fatal();
    }
    let Some((tsc_hz, apic_hz)) = smp::frequencies() else {
        println!("smp: no tsc frequency in cpuid 0x15/0x16");
        fatal();
    };
    TSC_HZ.store(tsc_hz, Ordering::SeqCst);
    APIC_HZ.store(apic_hz, Ordering::SeqCst);
    NCPUS.store(n, Ordering::SeqCst);
    println!("smp: tsc {tsc_hz} Hz, apic timer {apic_hz} Hz");

    // The counting stubs for 32-255, 16 bytes apart.
    let stubs = core::ptr::addr_of!(smp_irq_stubs) as u64;
    smp::install_idt(|v| stubs + (u64::from(v) - 32) * 16);
    enable_x2apic();
    let id = rdmsr(msr::ID);
    let trampoline = smp::install_trampoline(ap_entry).unwrap_or_else(|e| {
        println!("smp: {e}");
        fatal()
    });
    let len = trampoline.len();
    println!("smp: trampoline at {TRAMPOLINE:#x}, {len} bytes, sipi vector {SIPI_VECTOR:#04x}");
    println!("smp: cpu 0 up, apic id {id}");
    if id != 0 {
        println!("smp: cpu 0 has apic id {id}, expected 0");
        fail();
    }
    for (i, alive) in ALIVE.iter().enumerate().take(n as usize).skip(1) {
        if !trampoline.start_ap(i, tsc_hz, AP_TIMEOUT_MS, || {
            alive.load(Ordering::SeqCst) != 0
        }) {
            println!("smp: cpu {i} did not come up within {AP_TIMEOUT_MS} ms");
            fatal();
        }
    }
    // Give a restarted AP (a second start-up IPI that was not ignored) time
    // to show.
    delay_us(10_000);
    for (i, alive) in ALIVE.iter().enumerate().take(n as usize).skip(1) {
        let times = alive.load(Ordering::SeqCst);
        if times != 1 {
            println!("smp: cpu {i} started {times} times");
            fatal();
        }
    }
    println!("smp: all {n} vcpus up");
    enable_interrupts();
    checks(0);
    barrier(0, "the end");
    let failures = FAILURES.load(Ordering::SeqCst);
    println!("smp: {n} vcpus, {failures} failed checks");
    finish("smp", failures)
}

/// Where the APs arrive from the trampoline, on their own stack, with the
/// boot vCPU's GDT, IDT, CR3 and interrupts off.
extern "C" fn ap_entry(index: u64) -> ! {
    let i = index as usize;
    enable_x2apic();
    let id = rdmsr(msr::ID);
    println!("smp: cpu {i} up, apic id {id}");
    if id != index {
        println!("smp: cpu {i} has apic id {id}, expected {i}");
        fail();
    }
    // After the line, so that the `up` lines come in order.
    ALIVE[i].fetch_add(1, Ordering::SeqCst);
    enable_interrupts();
    checks(i);
    barrier(i, "the end");
    loop {
        // SAFETY: the boot vCPU ends the VM; this vCPU waits for nothing.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// The checks every vCPU runs (`me` = index = APIC ID), interrupts on.
fn checks(me: usize) {
    let n = NCPUS.load(Ordering::SeqCst) as usize;
    let mut section = 0;
    barrier(me, "the start");

    // 1. IPI exchange.
    let mut lost = None;
    'send: for to in (0..n).filter(|&to| to != me) {
        let vector = IPI_BASE + me as u8;
        for k in 0..K {
            send_ipi(to as u32, vector);
            if !wait_for(1000, || count(to, vector) > k) {
                lost = Some((to, k));
                break 'send;
            }
        }
    }
    barrier(me, "ipi exchange");
    in_order(me, &mut section, "ipi exchange", || {
        if let Some((to, k)) = lost {
            println!("smp: cpu {me} ipi {k} to cpu {to} not received within 1000 ms");
            fail();
        }
        for from in (0..n).filter(|&from| from != me) {
            let got = count(me, IPI_BASE + from as u8);
            println!("smp: cpu {me} ipis from {from}: {got}");
            if got != K {
                println!("smp: cpu {me} expected {K} ipis from {from}");
                fail();
            }
        }
    });

    // 2. Self-IPIs.
    let mut by_msr = 0;
    for k in 0..SELF_IPIS {
        // SAFETY: a self-IPI to a vector the IDT counts.
        unsafe { wrmsr(msr::SELF_IPI, u64::from(VEC_SELF_MSR)) };
        if !wait_for(100, || count(me, VEC_SELF_MSR) > k) {
            break;
        }
        by_msr += 1;
    }
    let mut by_icr = 0;
    for k in 0..SELF_IPIS {
        send_icr(ICR_SELF | u64::from(VEC_SELF_ICR));
        if !wait_for(100, || count(me, VEC_SELF_ICR) > k) {
            break;
        }
        by_icr += 1;
    }
    delay_us(1000);
    let (msr_total, icr_total) = (count(me, VEC_SELF_MSR), count(me, VEC_SELF_ICR));
    barrier(me, "self-ipi");
    in_order(me, &mut section, "self-ipi", || {
        println!("smp: cpu {me} self-ipi msr {msr_total}/{SELF_IPIS}, icr {icr_total}/{SELF_IPIS}");
        if by_msr != SELF_IPIS
            || by_icr != SELF_IPIS
            || msr_total != SELF_IPIS
            || icr_total != SELF_IPIS
        {
            println!(
                "smp: cpu {me} self-ipis wrong (received in time: msr {by_msr}, icr {by_icr})"
            );
            fail();
        }
    });

    // 3. Periodic timer.
    settle();
    let apic_hz = APIC_HZ.load(Ordering::SeqCst);
    let start = rdtsc();
    set_timer(
        LVT_PERIODIC | u64::from(VEC_PERIODIC),
        apic_hz / 1000 * PERIOD_MS,
    );
    while rdtsc() - start < ms_ticks(PERIODIC_RUN_MS) {
        core::hint::spin_loop();
    }
    stop_timer();
    let ticks = count(me, VEC_PERIODIC);
    delay_us(5000);
    let after = count(me, VEC_PERIODIC) - ticks;
    barrier(me, "periodic timer");
    in_order(me, &mut section, "periodic timer", || {
        let expected = (PERIODIC_RUN_MS / PERIOD_MS) as u32;
        println!(
            "smp: cpu {me} lapic timer periodic {PERIOD_MS} ms for {PERIODIC_RUN_MS} ms: expected {expected}, got {ticks}, after stop {after}"
        );
        if ticks < expected / 2 || ticks > expected * 6 / 5 || after != 0 {
            println!(
                "smp: cpu {me} periodic timer wrong (accepted {}-{}, none after stop)",
                expected / 2,
                expected * 6 / 5
            );
            fail();
        }
    });

    // 4. TSC-deadline timer.
    settle();
    let deadline = deadline_check(me);
    barrier(me, "tsc-deadline");
    in_order(me, &mut section, "tsc-deadline", || match deadline {
        None => {
            println!("smp: cpu {me} tsc-deadline not offered by cpuid");
            fail();
        }
        Some(d) => {
            println!(
                "smp: cpu {me} tsc-deadline: {}/{DEADLINES} fired, early {}, late {}, worst lateness {} us, msr nonzero after firing {}",
                d.fired, d.early, d.late, d.worst_us, d.msr_nonzero
            );
            if d.fired != DEADLINES
                || d.total != DEADLINES
                || d.early != 0
                || d.late != 0
                || d.msr_nonzero != 0
            {
                println!(
                    "smp: cpu {me} tsc-deadline wrong ({} interrupts in all)",
                    d.total
                );
                fail();
            }
        }
    });

    // 5. One-shot timer.
    settle();
    let initial = apic_hz / 1000 * ONE_SHOT_MS;
    set_timer(u64::from(VEC_ONE_SHOT), initial);
    let mut last = rdmsr(msr::CURRENT_COUNT);
    let mut decreasing = last <= initial;
    let mut steps = 0u32;
    let reached = wait_for(ONE_SHOT_MS * 20, || {
        let now = rdmsr(msr::CURRENT_COUNT);
        if now > last {
            decreasing = false;
        } else if now < last {
            steps += 1;
        }
        last = now;
        now == 0
    });
    delay_us(ONE_SHOT_MS * 1000);
    let one_shot = count(me, VEC_ONE_SHOT);
    stop_timer();
    let decreasing = decreasing && steps >= 2;
    barrier(me, "one-shot");
    in_order(me, &mut section, "one-shot", || {
        let yn = |b: bool| if b { "yes" } else { "no" };
        println!(
            "smp: cpu {me} one-shot {ONE_SHOT_MS} ms: count decreasing {}, reached 0 {}, interrupts {one_shot}",
            yn(decreasing),
            yn(reached)
        );
        if !decreasing || !reached || one_shot != 1 {
            println!(
                "smp: cpu {me} one-shot timer wrong (initial count {initial}, last read {last})"
            );
            fail();
        }
    });

    // 6. Broadcasts and an IPI to no vCPU of this VM, from the boot vCPU.
    let outside = n as u32 + 5;
    barrier(me, "broadcasts");
    if me == 0 {
        send_ipi(outside, VEC_OUTSIDE);
        send_ipi(u32::MAX, VEC_BROADCAST);
        send_icr(ICR_ALL_BUT_SELF | u64::from(VEC_ALL_BUT_SELF));
        delay_us(20_000);
    }
    barrier(me, "broadcasts sent");
    in_order(me, &mut section, "broadcasts", || {
        let (b, abs, out) = (
            count(me, VEC_BROADCAST),
            count(me, VEC_ALL_BUT_SELF),
            count(me, VEC_OUTSIDE),
        );
        println!("smp: cpu {me} broadcasts: physical 0xffffffff {b}, all-but-self {abs}, to apic {outside} {out}");
        let abs_expected = u32::from(me != 0);
        if b != 1 || abs != abs_expected || out != 0 {
            println!("smp: cpu {me} broadcasts wrong (expected 1, {abs_expected}, 0)");
            fail();
        }
    });

    // Nothing else arrived.
    barrier(me, "unexpected interrupts");
    in_order(me, &mut section, "unexpected interrupts", || {
        let mut unexpected = 0;
        for v in 32..=255u8 {
            let expected_here = ((IPI_BASE..IPI_BASE + n as u8).contains(&v)
                && v != IPI_BASE + me as u8)
                || matches!(
                    v,
                    VEC_BROADCAST
                        | VEC_ALL_BUT_SELF
                        | VEC_OUTSIDE
                        | VEC_SELF_MSR
                        | VEC_SELF_ICR
                        | VEC_PERIODIC
                        | VEC_DEADLINE
                        | VEC_ONE_SHOT
                );
            let c = count(me, v);
            if !expected_here && c != 0 {
                println!("smp: cpu {me} unexpected vector {v:#04x}: {c}");
                unexpected += c;
            }
        }
        if me == 0 {
            unexpected += BAD_ID.load(Ordering::SeqCst);
        }
        println!("smp: cpu {me} unexpected interrupts {unexpected}");
        if unexpected != 0 {
            fail();
        }
    });
}

/// What the TSC-deadline check saw.
struct Deadline {
    fired: u32,
    total: u32,
    early: u32,
    late: u32,
    worst_us: u64,
    msr_nonzero: u32,
}

/// Arms [`DEADLINES`] deadlines, each 1 ms after the previous interrupt;
/// None without TSC-deadline support.
fn deadline_check(me: usize) -> Option<Deadline> {
    if cpuid(1, 0).ecx & CPUID1_ECX_TSC_DEADLINE == 0 {
        return None;
    }
    let mut d = Deadline {
        fired: 0,
        total: 0,
        early: 0,
        late: 0,
        worst_us: 0,
        msr_nonzero: 0,
    };
    set_timer(LVT_TSC_DEADLINE | u64::from(VEC_DEADLINE), 0);
    // SAFETY: MFENCE orders the LVT write before the first deadline write
    // (SDM Vol. 3A 10.5.4.2).
    unsafe { asm!("mfence", options(nostack, preserves_flags)) };
    let late_limit = ms_ticks(LATE_LIMIT_MS);
    let mut previous = rdtsc();
    for k in 0..DEADLINES {
        let deadline = previous + ms_ticks(1);
        // SAFETY: arms the TSC deadline; the vector is counted.
        unsafe { wrmsr(msr::TSC_DEADLINE, deadline) };
        if !wait_for(100, || count(me, VEC_DEADLINE) > k) {
            break;
        }
        d.fired += 1;
        let at = DEADLINE_TSC[me].load(Ordering::SeqCst);
        if at < deadline {
            d.early += 1;
        } else {
            let lateness = at - deadline;
            d.worst_us = d.worst_us.max(ticks_us(lateness));
            if lateness > late_limit {
                d.late += 1;
            }
        }
        if rdmsr(msr::TSC_DEADLINE) != 0 {
            d.msr_nonzero += 1;
        }
        previous = at;
    }
    delay_us(2000);
    d.total = count(me, VEC_DEADLINE);
    stop_timer();
    Some(d)
}
