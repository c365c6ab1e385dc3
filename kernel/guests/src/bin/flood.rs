//! Floods its UART with long lines forever: the host must print them outside
//! the guest's slice (or charge them to it), so this VM gets no more than its
//! share of the CPU.
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main);

fn main() {
    let mut n: u64 = 0;
    loop {
        println!("flood {n:08} ................................................................");
        n += 1;
    }
}
