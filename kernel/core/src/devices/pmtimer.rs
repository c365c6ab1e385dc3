//! The ACPI power-management timer (ACPI 6.5, 4.8.3.3 "Power Management
//! Timer (PM_TMR)"): a free-running up-counter at 3.579545 MHz in a
//! read-only 32-bit I/O register (the FADT advertises TMR_VAL_EXT, a 32-bit
//! counter, so it wraps at 2^32, about every 20 minutes).
//!
//! Guests use it as a reference clock: Linux calibrates the TSC against it
//! (`acpi_pm_read_early`) when CPUID cannot tell the TSC frequency and the
//! PIT is unusable, and uses it as a clocksource (`acpi_pm`). It finds the
//! port in the FADT (PM_TMR_BLK / X_PM_TMR_BLK, see
//! [`crate::firmware::acpi::AcpiConfig::pm_timer_port`]), which Linux reads
//! even with HW_REDUCED_ACPI set.
//!
//! # Ports
//!
//! Four ports from [`PM_TIMER_PORT`] (0x608 by default: QEMU's PIIX4/ICH9
//! PM base 0x600 + 8). A read of `size` bytes at `base + k` returns the
//! counter's bytes `k..k + size` (the counter shifted right by `8 * k`),
//! with the bytes past the 4-byte register reading as 0xFF like an
//! unclaimed port: a dword read at `base` is the whole counter, a byte read
//! at `base + 3` its top byte. Writes are ignored (the register is
//! read-only). The timer raises no interrupt: the status and enable bits
//! (TMR_STS, TMR_EN) live in the PM1 event block, which a hardware-reduced
//! VM does not have.
//!
//! # Time
//!
//! Time comes from the caller, as for the other models that count time
//! ([`super::pit8254`], [`super::cmos`]): a monotonic `now_ns` at
//! construction, where the counter is 0, and through [`PmTimer::advance`]
//! ([`PortDevice::advance`]) before each access. The counter is
//! `floor((now_ns - start_ns) * 3579545 / 10^9) mod 2^32`, computed from the
//! start each time (128-bit arithmetic, no overflow for any `u64` time), so
//! no error accumulates however often the time is advanced. It has no
//! deadline.

use core::any::Any;

use super::{Effects, PortDevice, PortRange};
use crate::exit::AccessSize;

/// Counter frequency in Hz (ACPI 4.8.3.3).
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// Default first port: QEMU's PM base 0x600 + 8 (PIIX4 and ICH9).
pub const PM_TIMER_PORT: u16 = 0x608;
/// Width of the register block in ports (the FADT's PM_TMR_LEN).
pub const PM_TIMER_LEN: u16 = 4;

const NS_PER_SEC: u128 = 1_000_000_000;

/// The ACPI PM timer.
#[derive(Clone, Debug)]
pub struct PmTimer {
    ports: [PortRange; 1],
    /// Time at which the counter was 0.
    start_ns: u64,
    /// The latest time advanced to (never below `start_ns`).
    now_ns: u64,
}

impl PmTimer {
    /// A timer at [`PM_TIMER_PORT`] whose counter is 0 at `now_ns`.
    pub fn new(now_ns: u64) -> Self {
        Self::at_port(PM_TIMER_PORT, now_ns)
    }

    /// A timer at `port` (four ports from there) whose counter is 0 at
    /// `now_ns`. A `port` above 0xFFFC gets a block cut at 0xFFFF.
    pub fn at_port(port: u16, now_ns: u64) -> Self {
        let len = PM_TIMER_LEN.min(u16::MAX - port + 1);
        PmTimer {
            ports: [PortRange::new(port, len)],
            start_ns: now_ns,
            now_ns,
        }
    }

    /// The first port.
    pub fn port(&self) -> u16 {
        self.ports[0].base
    }

    /// Brings the timer to `now_ns` (monotonic: earlier values are ignored).
    pub fn advance(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
    }

    /// The counter at `now_ns` (at the start for earlier times), without
    /// advancing.
    pub fn counter_at(&self, now_ns: u64) -> u32 {
        let elapsed = u128::from(now_ns.saturating_sub(self.start_ns));
        // < 2^64 * 2^22: no overflow in 128 bits.
        let ticks = elapsed * u128::from(PM_TIMER_HZ) / NS_PER_SEC;
        ticks as u32 // mod 2^32
    }

    /// The counter at the latest time advanced to.
    pub fn counter(&self) -> u32 {
        self.counter_at(self.now_ns)
    }
}

impl PortDevice for PmTimer {
    fn name(&self) -> &'static str {
        "acpi-pm-timer"
    }

    fn ports(&self) -> &[PortRange] {
        &self.ports
    }

    fn read(&mut self, port: u16, size: AccessSize, _fx: &mut Effects) -> u32 {
        // Bytes past the register read as all ones.
        let wide = u64::from(self.counter()) | 0xFFFF_FFFF_0000_0000;
        let shift = 8 * u32::from(port.wrapping_sub(self.port()).min(4));
        (wide >> shift) as u32 & size.mask()
    }

    fn write(&mut self, _port: u16, _size: AccessSize, _value: u32, _fx: &mut Effects) {}

    fn counts_time(&self) -> bool {
        true
    }

    fn advance(&mut self, now_ns: u64, _fx: &mut Effects) {
        PmTimer::advance(self, now_ns);
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::IoBus;
    use alloc::boxed::Box;

    const SEC: u64 = 1_000_000_000;
    /// The time of 2^32 ticks, rounded up: ceil(2^32 * 10^9 / 3579545).
    const WRAP_NS: u64 = 1_199_864_031_882;

    fn rd(t: &mut PmTimer, port: u16, size: AccessSize) -> u32 {
        let mut fx = Effects::new();
        let v = t.read(port, size, &mut fx);
        assert!(fx.is_empty());
        v
    }

    fn at(t: &mut PmTimer, now_ns: u64) -> u32 {
        PortDevice::advance(t, now_ns, &mut Effects::new());
        rd(t, PM_TIMER_PORT, AccessSize::Dword)
    }

    #[test]
    fn counts_at_3_579545_mhz() {
        let start = 5 * SEC;
        let mut t = PmTimer::new(start);
        assert_eq!(t.port(), 0x608);
        assert_eq!(t.ports(), &[PortRange::new(0x608, 4)]);
        assert!(t.counts_time());
        assert_eq!(t.next_deadline_ns(), None);
        assert_eq!(at(&mut t, start), 0);
        // One tick is 279.365 ns.
        assert_eq!(at(&mut t, start + 279), 0);
        assert_eq!(at(&mut t, start + 280), 1);
        assert_eq!(at(&mut t, start + 1_000), 3);
        assert_eq!(at(&mut t, start + 1_000_000), 3_579);
        assert_eq!(at(&mut t, start + 1_000_001), 3_579);
        assert_eq!(at(&mut t, start + SEC), 3_579_545);
        assert_eq!(at(&mut t, start + 60 * SEC), 214_772_700);
        // 1.5 s: 5369317.5 ticks, floored.
        assert_eq!(at(&mut t, start + 3 * SEC / 2), 214_772_700);
        assert_eq!(t.counter_at(start + 3 * SEC / 2), 5_369_317);
        assert_eq!(t.counter_at(start - 1), 0, "before the start");
    }

    #[test]
    fn wraps_at_2_pow_32() {
        let mut t = PmTimer::new(0);
        assert_eq!(at(&mut t, WRAP_NS - 1), u32::MAX);
        assert_eq!(at(&mut t, WRAP_NS), 0);
        assert_eq!(at(&mut t, WRAP_NS + SEC), 3_579_545);
        // Many wraps later, still exact: 10^6 s.
        let n = 1_000_000 * SEC;
        let ticks = 1_000_000u64 * PM_TIMER_HZ;
        assert_eq!(t.counter_at(n), (ticks % (1 << 32)) as u32);
    }

    #[test]
    fn monotonic() {
        let mut t = PmTimer::new(100);
        let mut last = 0;
        let mut now = 100;
        for step in [1u64, 7, 279, 280, 281, 999, 12_345, 1_000_000, 3] {
            now += step;
            let v = at(&mut t, now);
            assert!(v >= last, "{v} < {last} at {now}");
            last = v;
        }
        // Time going back is ignored.
        assert_eq!(at(&mut t, 100), last);
        assert_eq!(at(&mut t, 0), last);
        assert_eq!(t.counter(), last);
    }

    #[test]
    fn partial_reads() {
        let mut t = PmTimer::new(0);
        // Find a time with four distinct nonzero bytes: 0x0123_4567 ticks.
        let ticks: u64 = 0x0123_4567;
        let ns = (ticks * SEC).div_ceil(PM_TIMER_HZ);
        assert_eq!(at(&mut t, ns), 0x0123_4567);
        let p = PM_TIMER_PORT;
        assert_eq!(rd(&mut t, p, AccessSize::Byte), 0x67);
        assert_eq!(rd(&mut t, p, AccessSize::Word), 0x4567);
        assert_eq!(rd(&mut t, p + 1, AccessSize::Byte), 0x45);
        assert_eq!(rd(&mut t, p + 2, AccessSize::Byte), 0x23);
        assert_eq!(rd(&mut t, p + 3, AccessSize::Byte), 0x01);
        assert_eq!(rd(&mut t, p + 2, AccessSize::Word), 0x0123);
        assert_eq!(rd(&mut t, p + 1, AccessSize::Word), 0x2345);
        // Past the register: all ones.
        assert_eq!(rd(&mut t, p + 3, AccessSize::Word), 0xFF01);
        assert_eq!(rd(&mut t, p + 1, AccessSize::Dword), 0xFF01_2345);
        assert_eq!(rd(&mut t, p + 3, AccessSize::Dword), 0xFFFF_FF01);
    }

    #[test]
    fn writes_are_ignored() {
        let mut t = PmTimer::new(0);
        let before = at(&mut t, SEC);
        let mut fx = Effects::new();
        for port in PM_TIMER_PORT..PM_TIMER_PORT + 4 {
            for size in [AccessSize::Byte, AccessSize::Word, AccessSize::Dword] {
                t.write(port, size, 0, &mut fx);
                t.write(port, size, size.mask(), &mut fx);
            }
        }
        assert!(fx.is_empty());
        assert_eq!(rd(&mut t, PM_TIMER_PORT, AccessSize::Dword), before);
        assert_eq!(at(&mut t, 2 * SEC), 2 * 3_579_545);
    }

    #[test]
    fn huge_times_do_not_panic() {
        let mut t = PmTimer::new(0);
        let expect = (u128::from(u64::MAX) * 3_579_545 / 1_000_000_000) as u32;
        assert_eq!(at(&mut t, u64::MAX), expect);
        let mut late = PmTimer::new(u64::MAX);
        assert_eq!(at(&mut late, u64::MAX), 0);
        assert_eq!(at(&mut late, 0), 0);
        let mut top = PmTimer::at_port(0xFFFE, u64::MAX - SEC);
        assert_eq!(top.ports(), &[PortRange::new(0xFFFE, 2)]);
        PortDevice::advance(&mut top, u64::MAX, &mut Effects::new());
        assert_eq!(rd(&mut top, 0xFFFE, AccessSize::Dword), 3_579_545);
        assert_eq!(rd(&mut top, 0xFFFF, AccessSize::Dword), 0xFF00_369E);
    }

    #[test]
    fn on_a_bus() {
        let mut bus = IoBus::new();
        bus.register(Box::new(PmTimer::new(SEC))).unwrap();
        let mut fx = Effects::new();
        let t = bus.device_mut::<PmTimer>().unwrap();
        PortDevice::advance(t, 2 * SEC, &mut fx);
        assert_eq!(
            bus.read(PM_TIMER_PORT, AccessSize::Dword, &mut fx),
            crate::devices::BusResult::Claimed(3_579_545)
        );
    }
}
