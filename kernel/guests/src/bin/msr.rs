//! Reads an MSR the hypervisor allows, then one it does not: the #GP the
//! hypervisor injects lands in this guest's own handler.
#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]

use core::sync::atomic::{AtomicU32, Ordering};

use guests::println;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame};

guests::entry!(main);

static GP_COUNT: AtomicU32 = AtomicU32::new(0);
static mut IDT: InterruptDescriptorTable = InterruptDescriptorTable::new();

/// An MSR outside the hypervisor's allow list.
const UNLISTED_MSR: u32 = 0xc001_0114;

extern "x86-interrupt" fn gp_handler(mut frame: InterruptStackFrame, error_code: u64) {
    GP_COUNT.fetch_add(1, Ordering::Relaxed);
    println!(
        "guest #GP handler: error code {error_code:#x} at rip {:#x}",
        frame.instruction_pointer.as_u64()
    );
    // Skip the two-byte RDMSR that faulted.
    // SAFETY: RIP is moved past the faulting RDMSR (0F 32) to the next instruction.
    unsafe { frame.as_mut().update(|f| f.instruction_pointer += 2u64) };
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR in a guest exits to the hypervisor, which either emulates it
    // or injects #GP (handled above).
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn main() {
    // SAFETY: single-threaded guest; the IDT is set up once before use.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        idt.general_protection_fault.set_handler_fn(gp_handler);
        idt.load();
    }
    let pat = rdmsr(0x277);
    println!("rdmsr IA32_PAT = {pat:#x}");
    let v = rdmsr(UNLISTED_MSR);
    println!(
        "rdmsr {UNLISTED_MSR:#x} returned {v:#x}; #GP count {}",
        GP_COUNT.load(Ordering::Relaxed)
    );
    if GP_COUNT.load(Ordering::Relaxed) == 1 {
        println!("unknown MSR raised #GP in the guest: OK");
    }
}
