//! Exiting instructions inside an interrupt shadow: `STI; HLT`, `STI; CPUID`,
//! `STI; VMCALL`, `STI; IN`, and `MOV SS; VMCALL`, `MOV SS; CPUID`,
//! `MOV SS; OUT`, with interrupts enabled and an IDT whose interrupt vectors
//! count, acknowledge and return. The guest programs its 8259 pair (IRQ 0-15
//! at vectors 32-47, only IRQ 0 unmasked) and 8254 channel 0 at 1 kHz: where
//! the hypervisor emulates them, timer interrupts arrive (and HLT waits for
//! one); where it does not, the writes are dropped and HLT just gives up the
//! slice. The exit happens while STI or MOV SS blocking is set; a
//! hypervisor that skips the instruction must clear that blocking (SDM Vol. 3C
//! 25.4.2, 27.3.1.5), or a later event injection fails VM entry. Each exiting
//! instruction's result is checked too (hypercall status and value, CPUID
//! signature, UART line status).
//!
//! Then it yields (`STI; VMCALL` YIELD; `CLI`) until three timer
//! interrupts have arrived, at most 100 000 times: a vCPU that only yields
//! must still get its PIT's interrupts (its slices may start with a quiet
//! entry, which only the device deadline, or a change under the VM's lock,
//! turns into the full checks that inject them).
//!
//! Output when every round completes:
//!
//! ```text
//! stihlt: 3 timer interrupts over 2210 yields
//! stihlt: 200 rounds OK
//! stihlt: interrupts received 205
//! stihlt: OK
//! ```
//!
//! (the interrupt count is the number of timer interrupts delivered in all),
//! REPORTs `hvabi::key::STIHLT_ROUNDS` and `STIHLT_INTERRUPTS`; exit code 0,
//! or 1 after `stihlt: FAILED (...)`.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::Ordering;

use guests::{finish, key, nr, println, report, trap};

guests::entry!(main);

const ROUNDS: u64 = 200;

/// Timer interrupts to receive while yielding, and the yields allowed for
/// them (at 1 kHz, a few milliseconds of TSC time are a few thousand
/// yields even alone on a CPU).
const YIELD_IRQS: u64 = 3;
const MAX_YIELDS: u64 = 100_000;

/// 8254 divisor for a 1 kHz timer (1.193182 MHz input).
const PIT_DIVISOR: u16 = 1193;

/// `RustBareHv` as CPUID leaf 0x4000_0000 returns it in EBX.
const SIGNATURE_EBX: u32 = u32::from_le_bytes([b'R', b'u', b's', b't']);

fn main() {
    guests::pace_output();
    trap::install();
    let id = guests::vm_id();
    let mut failures = 0u64;
    let mut first_failure = |what: &str, round: u64, got: u64| {
        if failures == 0 {
            println!("stihlt: {what} wrong in round {round}: {got:#x}");
        }
        failures += 1;
    };
    trap::init_pic(!1, 0xff);
    trap::start_pit(PIT_DIVISOR);
    let mut rounds = 0;
    for round in 0..ROUNDS {
        // STI; HLT: the HLT exits inside the STI shadow.
        // SAFETY: the IDT is installed; HLT exits to the hypervisor.
        unsafe { asm!("cli", "sti", "hlt", options(nomem, nostack)) };

        // STI; VMCALL (VERSION).
        let (status, value): (u64, u64);
        // SAFETY: VMCALL follows the hypercall ABI (RAX, RBX change); RBX is
        // saved because LLVM reserves it.
        unsafe {
            asm!(
                "mov {save}, rbx", "cli", "sti", "vmcall", "mov {value}, rbx", "mov rbx, {save}",
                save = out(reg) _, value = out(reg) value,
                inout("rax") nr::VERSION => status,
                options(nostack)
            )
        };
        if status != 0 || value != u64::from(hvabi::INTERFACE_VERSION) {
            first_failure("sti; vmcall version", round, value | (status << 32));
        }

        // MOV SS; VMCALL (VM_ID).
        let (status, value): (u64, u64);
        // SAFETY: SS is reloaded with its own selector; VMCALL as above.
        unsafe {
            asm!(
                "mov {save}, rbx", "mov {ss:e}, ss", "mov ss, {ss:e}", "vmcall", "mov {value}, rbx", "mov rbx, {save}",
                save = out(reg) _, ss = out(reg) _, value = out(reg) value,
                inout("rax") nr::VM_ID => status,
                options(nostack)
            )
        };
        if status != 0 || value != id {
            first_failure("mov ss; vmcall vm_id", round, value | (status << 32));
        }

        // STI; CPUID and MOV SS; CPUID (the hypervisor's signature leaf).
        let (a, b): (u32, u32);
        // SAFETY: CPUID only reads; SS is reloaded with its own selector; RBX
        // is saved because LLVM reserves it.
        unsafe {
            asm!(
                "mov {save}, rbx",
                "cli", "sti",
                "mov eax, {leaf}", "xor ecx, ecx",
                "cpuid",
                "mov {a:e}, ebx",
                "mov {ss:e}, ss", "mov ss, {ss:e}",
                "mov eax, {leaf}", "xor ecx, ecx",
                "cpuid",
                "mov {b:e}, ebx",
                "mov rbx, {save}",
                save = out(reg) _, ss = out(reg) _, a = out(reg) a, b = out(reg) b,
                leaf = const hvabi::cpuid::SIGNATURE_LEAF,
                out("rax") _, out("rcx") _, out("rdx") _,
                options(nostack)
            )
        };
        if a != SIGNATURE_EBX || b != SIGNATURE_EBX {
            first_failure(
                "sti/mov ss; cpuid signature",
                round,
                (u64::from(a) << 32) | u64::from(b),
            );
        }

        // STI; IN (UART line status: the transmitter is idle) and MOV SS; OUT
        // (port 0x80, no device: dropped).
        let lsr: u8;
        // SAFETY: port I/O in a guest exits to the hypervisor's device models.
        unsafe {
            asm!(
                "cli", "sti",
                "in al, dx",
                "mov {ss:e}, ss", "mov ss, {ss:e}",
                "out 0x80, al",
                ss = out(reg) _,
                in("dx") 0x3fdu16, out("al") lsr,
                options(nostack)
            )
        };
        if lsr & 0x20 == 0 {
            first_failure("sti; in (uart lsr)", round, u64::from(lsr));
        }

        // STI; VMCALL (YIELD), then a plain STI; HLT with interrupts on.
        // SAFETY: as above; YIELD changes only RAX.
        unsafe {
            asm!(
                "cli", "sti", "vmcall", "hlt",
                inout("rax") nr::YIELD => _,
                options(nostack)
            )
        };
        rounds += 1;
    }

    // Timer interrupts reach a vCPU that only yields: its slices may start
    // with a quiet entry (nothing changed since it yielded), and the PIT's
    // deadline, or a change under the VM's lock, must still bring the
    // checks that inject its interrupt.
    let before = trap::INTERRUPTS.load(Ordering::SeqCst);
    let mut yields = 0u64;
    while trap::INTERRUPTS.load(Ordering::SeqCst) < before + YIELD_IRQS && yields < MAX_YIELDS {
        // SAFETY: the IDT is installed; YIELD changes only RAX.
        unsafe { asm!("sti", "vmcall", "cli", inout("rax") nr::YIELD => _, options(nostack)) };
        yields += 1;
    }
    let while_yielding = trap::INTERRUPTS.load(Ordering::SeqCst) - before;
    println!("stihlt: {while_yielding} timer interrupts over {yields} yields");
    if while_yielding < YIELD_IRQS {
        first_failure(
            "timer interrupts while only yielding",
            rounds,
            while_yielding,
        );
    }
    // SAFETY: back to interrupts off for the rest of the program.
    unsafe { asm!("cli", options(nomem, nostack)) };
    trap::init_pic(0xff, 0xff);

    let interrupts = trap::INTERRUPTS.load(Ordering::SeqCst);
    report(key::STIHLT_ROUNDS, rounds);
    report(key::STIHLT_INTERRUPTS, interrupts);
    if failures == 0 {
        println!("stihlt: {rounds} rounds OK");
    } else {
        println!("stihlt: {rounds} rounds, {failures} wrong results, FAILED");
    }
    println!("stihlt: interrupts received {interrupts}");
    finish("stihlt", failures)
}
