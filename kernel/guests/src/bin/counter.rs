//! Counts forever, reporting its counter every 2^18 iterations (about a
//! million instructions, a fraction of a time slice): the scheduler tests compare how far each VM got.
#![no_std]
#![no_main]

use guests::{key, println, report};

guests::entry!(main);

fn main() {
    println!("counter starting");
    let mut count: u64 = 0;
    let mut reports: u64 = 0;
    loop {
        count = core::hint::black_box(count + 1);
        if count & 0x3_ffff == 0 {
            report(key::COUNTER, count);
            reports += 1;
            if reports.is_multiple_of(64) {
                println!("count {count}");
            }
        }
    }
}
