//! Executes HLT a few times: each gives up the rest of the time slice, and
//! the hypervisor resumes the VM later (no interrupt sources are emulated yet,
//! so a halted vCPU is woken at its next turn).
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main);

fn main() {
    for i in 0..3 {
        println!("halting ({i})");
        // SAFETY: HLT in a guest exits to the hypervisor (HLT exiting).
        unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
    }
    println!("woke up after 3 HLTs");
}
