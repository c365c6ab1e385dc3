//! The TSC time base in nanoseconds and microseconds, without a division:
//! 32.32 fixed-point factors computed once from the calibrated TSC
//! frequency ([`init`], before any VM is built). The exit path converts
//! time at every device access that needs it, where a 128-bit division
//! would cost more than the rest of the exit.
//!
//! A factor is off by at most 2^-32 of its value, so conversions drift from
//! the exact ratio by well under a microsecond per hour of TSC time; every
//! user converts through these functions, so the time base stays monotonic
//! and consistent.

use core::sync::atomic::{AtomicU64, Ordering};

/// Nanoseconds per TSC tick, 32.32.
static NS_PER_TICK: AtomicU64 = AtomicU64::new(0);
/// TSC ticks per nanosecond, 32.32.
static TICKS_PER_NS: AtomicU64 = AtomicU64::new(0);

/// Computes the factors from the calibrated TSC frequency (at least 1 MHz
/// is assumed, as everywhere else).
pub fn init() {
    let hz = u128::from(crate::apic::tsc_hz().max(1_000_000));
    let ns_per_tick = (1_000_000_000u128 << 32) / hz;
    let ticks_per_ns = (hz << 32) / 1_000_000_000;
    NS_PER_TICK.store(
        u64::try_from(ns_per_tick).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    TICKS_PER_NS.store(
        u64::try_from(ticks_per_ns).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

fn scale(value: u64, factor: &AtomicU64, round_up: bool) -> u64 {
    let product = u128::from(value) * u128::from(factor.load(Ordering::Relaxed));
    let product = if round_up {
        product + 0xFFFF_FFFF
    } else {
        product
    };
    // Beyond 64 bits only for TSC values centuries away.
    (product >> 32) as u64
}

/// Nanoseconds of TSC time `ticks` (rounded down).
#[inline]
pub fn ns_from_tsc(ticks: u64) -> u64 {
    scale(ticks, &NS_PER_TICK, false)
}

/// The TSC value at nanosecond `ns` (rounded up: the TSC has reached `ns`
/// once it reads this).
#[inline]
pub fn tsc_from_ns(ns: u64) -> u64 {
    scale(ns, &TICKS_PER_NS, true)
}

/// Microseconds of TSC time `ticks` (rounded down).
pub fn us_from_tsc(ticks: u64) -> u64 {
    ns_from_tsc(ticks) / 1000
}

/// TSC ticks in `us` microseconds.
pub fn tsc_from_us(us: u64) -> u64 {
    tsc_from_ns(us.saturating_mul(1000))
}

/// A configured slice of `slice_us` microseconds in TSC ticks (at least 1):
/// what the scheduler hands out.
pub fn slice_ticks(slice_us: u32) -> u64 {
    tsc_from_us(u64::from(slice_us)).max(1)
}
