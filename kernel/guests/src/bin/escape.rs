//! Writes outside its own memory partition: the hypervisor must stop it with
//! an EPT violation report.
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main);

/// 64 MiB: above any test VM's memory, inside the guest's page tables.
const OUTSIDE: u64 = 0x400_0000;

fn main() {
    println!("writing outside my partition at guest-physical {OUTSIDE:#x}");
    // SAFETY: deliberately wrong: the write must never land; the hypervisor
    // stops this VM on the EPT violation.
    unsafe { core::ptr::write_volatile(OUTSIDE as *mut u64, 0xbad) };
    println!("ESCAPED: the write outside the partition went through");
}
