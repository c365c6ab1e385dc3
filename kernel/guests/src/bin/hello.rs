//! Prints through the emulated UART and the console hypercall, then shuts
//! itself down by hypercall.
#![no_std]
#![no_main]

use guests::{hypercall, nr, println};

guests::entry!(main);

fn main() {
    println!(
        "hello from a guest over the emulated 16550 (scratch {:#x})",
        guests::Uart::scratch()
    );
    let id = hypercall(nr::VM_ID, 0, 0, 0);
    let version = hypercall(nr::VERSION, 0, 0, 0);
    println!(
        "vm id {} (status {}), hypercall interface version {}",
        id.value, id.status, version.value
    );
    let r = guests::console_write("hello through the console hypercall\n");
    println!("console hypercall status {}", r.status);
    let bad = hypercall(0x7777, 0, 0, 0);
    println!("unknown hypercall status {}", bad.status);
    println!("goodbye");
    guests::shutdown(0);
}
