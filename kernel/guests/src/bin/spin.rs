//! Spins forever without a single VM exit: only the preemption timer takes
//! the CPU back.
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main);

fn main() {
    println!("spinning forever without exits");
    let mut x: u64 = 0;
    loop {
        x = core::hint::black_box(x.wrapping_add(1));
    }
}
