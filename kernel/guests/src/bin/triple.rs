//! Loads an empty IDT and faults: the CPU cannot deliver the exception and
//! shuts down (a triple fault), which the hypervisor must contain.
#![no_std]
#![no_main]

use guests::println;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

guests::entry!(main);

fn main() {
    println!("about to triple fault");
    let empty = DescriptorTablePointer {
        limit: 0,
        base: VirtAddr::new(0),
    };
    // SAFETY: deliberately broken: with a zero-limit IDT, the #UD below cannot
    // be delivered, which escalates to #DF and then a triple fault.
    unsafe {
        lidt(&empty);
        core::arch::asm!("ud2");
    }
    println!("ESCAPED: no triple fault");
}
