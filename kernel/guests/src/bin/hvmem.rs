//! Tries to reach hypervisor memory by guest-physical address: 0x1000000,
//! where the BIOS bootloader places the hypervisor's kernel image (the kernel
//! logs its host-physical range at boot). The VM's EPT does not map it, so the
//! write must stop this VM, not land in the hypervisor.
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main);

/// Host-physical address of the kernel image under the BIOS bootloader.
const HYPERVISOR_IMAGE: u64 = 0x100_0000;

fn main() {
    println!("writing to the hypervisor's kernel image at guest-physical {HYPERVISOR_IMAGE:#x}");
    // SAFETY: deliberately wrong; see the module doc.
    unsafe { core::ptr::write_volatile(HYPERVISOR_IMAGE as *mut u64, 0xdead_beef) };
    println!("ESCAPED: the write to hypervisor memory went through");
}
