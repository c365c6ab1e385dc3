//! Tries to reach hypervisor-owned memory by guest-physical address: the host
//! local APIC page (0xfee00000), which a guest could use to disturb the host.
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main);

const HOST_LAPIC: u64 = 0xfee0_0000;

fn main() {
    println!("writing to the host's local APIC page at guest-physical {HOST_LAPIC:#x}");
    // SAFETY: deliberately wrong; see the module doc.
    unsafe { core::ptr::write_volatile((HOST_LAPIC + 0xb0) as *mut u32, 0) };
    println!("ESCAPED: the write to hypervisor memory went through");
}
