//! Reference clocks and calibration of the TSC and the local APIC timer.
//!
//! The TSC and the APIC timer run at rates the kernel does not know in advance; it
//! measures them once at boot against a clock of known frequency: the PIT (channel 2,
//! 1.193182 MHz, one-shot, no interrupt needed) or the ACPI PM timer (3.579545 MHz,
//! 24- or 32-bit free-running counter) when the FADT declares one. The arithmetic
//! ([`hz_from_counts`], [`pm_timer_delta`], [`calibrate`]) is host-tested with fake
//! clocks; the port accesses are in [`Pit`] and [`PmTimer`].
//!
//! Under Bochs the TSC advances per instruction, so the figures are emulated time;
//! they are still consistent with the emulated PIT, which is what timeouts need.

use crate::acpi::{PmTimerInfo, RegisterSpace};
use crate::apic::{ApicRegs, LocalApic, TimerDivide};
use crate::io::{Mmio, Port};

/// PIT input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// ACPI PM timer frequency in Hz.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// Polls of a reference clock before it counts as stuck (a missing PIT reads as
/// all ones or never finishes).
const REFERENCE_SPIN_LIMIT: u64 = 200_000_000;

/// Errors while measuring time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerError {
    /// The reference clock did not reach its target (missing or broken device).
    ReferenceStuck,
    /// A measured counter did not move, or ran out (APIC timer reached zero).
    CounterDidNotCount,
}

/// `delta_counts` observed during `reference_ticks` of a clock running at
/// `reference_hz`, as a frequency in Hz (rounded down; 0 if `reference_ticks` is 0).
pub fn hz_from_counts(delta_counts: u64, reference_ticks: u64, reference_hz: u64) -> u64 {
    if reference_ticks == 0 {
        return 0;
    }
    let hz = u128::from(delta_counts) * u128::from(reference_hz) / u128::from(reference_ticks);
    u64::try_from(hz).unwrap_or(u64::MAX)
}

/// Ticks from `earlier` to `later` of a PM timer, allowing one wraparound of the
/// 24-bit (or 32-bit) counter.
pub const fn pm_timer_delta(earlier: u32, later: u32, is_32bit: bool) -> u32 {
    let mask = if is_32bit { u32::MAX } else { 0x00FF_FFFF };
    later.wrapping_sub(earlier) & mask
}

/// Reference ticks in `ms` milliseconds of a clock at `hz` (at least 1).
pub const fn ticks_for_ms(hz: u64, ms: u32) -> u64 {
    let t = hz * ms as u64 / 1000;
    if t == 0 {
        1
    } else {
        t
    }
}

/// A clock of known frequency that can busy-wait.
pub trait ReferenceClock {
    /// Frequency in Hz.
    fn frequency_hz(&self) -> u64;
    /// Busy-waits `ticks` ticks.
    fn wait_ticks(&mut self, ticks: u64) -> Result<(), TimerError>;
}

/// The counters to calibrate.
pub trait Counters {
    /// Reads the time-stamp counter.
    fn read_tsc(&mut self) -> u64;
    /// Starts the APIC timer counting down from `u32::MAX`, interrupt masked.
    fn start_apic_timer(&mut self);
    /// Reads the APIC timer's current count.
    fn read_apic_timer(&mut self) -> u32;
}

/// Measured frequencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calibration {
    /// TSC ticks per second.
    pub tsc_hz: u64,
    /// APIC timer ticks per second at the divider the [`Counters`] used.
    pub apic_timer_hz: u64,
}

impl Calibration {
    /// APIC timer ticks per millisecond (for `set_timer_count` initial counts).
    pub const fn apic_ticks_per_ms(&self) -> u64 {
        self.apic_timer_hz / 1000
    }

    /// TSC ticks per microsecond.
    pub const fn tsc_ticks_per_us(&self) -> u64 {
        self.tsc_hz / 1_000_000
    }
}

/// Measures the TSC and APIC timer over `window_ms` milliseconds of `reference`
/// (10 ms is plenty; the PIT handles up to 54 ms per step and longer in steps).
pub fn calibrate<R: ReferenceClock, C: Counters>(
    reference: &mut R,
    counters: &mut C,
    window_ms: u32,
) -> Result<Calibration, TimerError> {
    let ref_hz = reference.frequency_hz();
    let ticks = ticks_for_ms(ref_hz, window_ms.max(1));
    counters.start_apic_timer();
    let apic0 = counters.read_apic_timer();
    let tsc0 = counters.read_tsc();
    reference.wait_ticks(ticks)?;
    let tsc1 = counters.read_tsc();
    let apic1 = counters.read_apic_timer();
    let tsc_delta = tsc1.wrapping_sub(tsc0);
    let apic_delta = apic0.checked_sub(apic1).filter(|_| apic1 != 0);
    let (Some(apic_delta), true) = (apic_delta, tsc_delta != 0) else {
        return Err(TimerError::CounterDidNotCount);
    };
    Ok(Calibration {
        tsc_hz: hz_from_counts(tsc_delta, ticks, ref_hz),
        apic_timer_hz: hz_from_counts(apic_delta.into(), ticks, ref_hz),
    })
}

/// The TSC and a local APIC's timer, as [`Counters`].
#[derive(Debug)]
pub struct ApicCounters<'a, R: ApicRegs> {
    /// The APIC whose timer is measured (its timer is left stopped).
    pub apic: &'a mut LocalApic<R>,
    /// Divider used while measuring (use the same when programming the timer).
    pub divide: TimerDivide,
}

impl<R: ApicRegs> Counters for ApicCounters<'_, R> {
    fn read_tsc(&mut self) -> u64 {
        read_tsc()
    }
    fn start_apic_timer(&mut self) {
        self.apic.start_timer_masked(self.divide, u32::MAX);
    }
    fn read_apic_timer(&mut self) -> u32 {
        self.apic.timer_current()
    }
}

/// Reads the time-stamp counter.
pub fn read_tsc() -> u64 {
    #[allow(unused_unsafe)]
    // SAFETY: RDTSC has no side effects and is allowed at ring 0 (and at ring 3
    // unless CR4.TSD is set, which host tests never meet).
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

/// PIT channel 2 as a one-shot reference (gate and output through port 0x61, so no
/// interrupt is involved and the PC speaker stays off).
#[derive(Debug)]
pub struct Pit {
    command: Port<u8>,
    channel2: Port<u8>,
    control: Port<u8>,
}

impl Pit {
    /// The PIT at its standard ports 0x40-0x43 and 0x61.
    ///
    /// # Safety
    /// The machine must have a PIT (or nothing) at those ports, and no other code may
    /// use channel 2 or port 0x61 while the value lives.
    pub const unsafe fn new() -> Self {
        Self {
            command: Port::new(0x43),
            channel2: Port::new(0x42),
            control: Port::new(0x61),
        }
    }

    /// One count-down of at most 0xFFFF ticks.
    fn one_shot(&mut self, ticks: u16) -> Result<(), TimerError> {
        // SAFETY: `new`'s contract gives this value exclusive use of channel 2 and port
        // 0x61; the writes follow the 8254 programming sequence (mode 0, lobyte/hibyte).
        unsafe {
            let ctl = self.control.read() & !0x02; // speaker data off
            self.control.write(ctl & !0x01); // gate low: hold the counter
            self.command.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
            self.channel2.write(ticks as u8);
            self.channel2.write((ticks >> 8) as u8);
            self.control.write(ctl | 0x01); // gate high: start counting
        }
        for _ in 0..REFERENCE_SPIN_LIMIT {
            // SAFETY: reading port 0x61 (OUT2 in bit 5) has no side effects.
            if unsafe { self.control.read() } & 0x20 != 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(TimerError::ReferenceStuck)
    }
}

impl ReferenceClock for Pit {
    fn frequency_hz(&self) -> u64 {
        PIT_HZ
    }

    fn wait_ticks(&mut self, mut ticks: u64) -> Result<(), TimerError> {
        while ticks > 0 {
            let step = ticks.min(0xFFFF);
            self.one_shot(step as u16)?;
            ticks -= step;
        }
        Ok(())
    }
}

enum PmAccess {
    Io(Port<u32>),
    Memory(Mmio),
}

/// The ACPI PM timer.
pub struct PmTimer {
    access: PmAccess,
    is_32bit: bool,
}

impl core::fmt::Debug for PmTimer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PmTimer")
            .field("is_32bit", &self.is_32bit)
            .finish()
    }
}

impl PmTimer {
    /// The PM timer the FADT describes; a memory-mapped one is reached at
    /// `phys + phys_offset`. `None` for an I/O port above 0xFFFF.
    ///
    /// # Safety
    /// `info` must come from the machine's FADT, and for a memory-mapped timer its
    /// register must be mapped at `phys + phys_offset` (uncacheable).
    pub unsafe fn new(info: PmTimerInfo, phys_offset: u64) -> Option<Self> {
        let access = match info.space {
            RegisterSpace::Io => PmAccess::Io(Port::new(u16::try_from(info.port_or_address).ok()?)),
            // SAFETY: the caller promises the 4-byte register is mapped there.
            RegisterSpace::Memory => PmAccess::Memory(unsafe {
                Mmio::new(info.port_or_address.wrapping_add(phys_offset) as usize, 4)
            }),
        };
        Some(Self {
            access,
            is_32bit: info.is_32bit,
        })
    }

    /// The counter (24 or 32 bits).
    pub fn read(&mut self) -> u32 {
        let raw = match &mut self.access {
            // SAFETY: `new`'s contract: the port is the PM timer, whose reads have no
            // side effects.
            PmAccess::Io(port) => unsafe { port.read() },
            PmAccess::Memory(mmio) => mmio.read(0),
        };
        if self.is_32bit {
            raw
        } else {
            raw & 0x00FF_FFFF
        }
    }
}

impl ReferenceClock for PmTimer {
    fn frequency_hz(&self) -> u64 {
        PM_TIMER_HZ
    }

    fn wait_ticks(&mut self, ticks: u64) -> Result<(), TimerError> {
        wait_on_counter(ticks, self.is_32bit, || self.read())
    }
}

/// Busy-waits until `ticks` have elapsed on a free-running counter read by `read`,
/// summing the deltas between consecutive reads so any number of wraparounds works.
pub fn wait_on_counter(
    ticks: u64,
    is_32bit: bool,
    read: impl FnMut() -> u32,
) -> Result<(), TimerError> {
    wait_on_counter_limited(ticks, is_32bit, REFERENCE_SPIN_LIMIT, read)
}

/// [`wait_on_counter`] giving up after `idle_limit` reads without progress.
fn wait_on_counter_limited(
    ticks: u64,
    is_32bit: bool,
    idle_limit: u64,
    mut read: impl FnMut() -> u32,
) -> Result<(), TimerError> {
    let mut last = read();
    let mut elapsed = 0u64;
    let mut idle = 0u64;
    while elapsed < ticks {
        let now = read();
        let delta = pm_timer_delta(last, now, is_32bit);
        if delta == 0 {
            idle += 1;
            if idle > idle_limit {
                return Err(TimerError::ReferenceStuck);
            }
        } else {
            idle = 0;
        }
        elapsed += u64::from(delta);
        last = now;
        core::hint::spin_loop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn hz_arithmetic() {
        // 11932 PIT ticks = 10 ms; 30 M TSC ticks then = 3 GHz.
        assert_eq!(hz_from_counts(30_000_000, 11_932, PIT_HZ), 2_999_954_743);
        assert_eq!(hz_from_counts(35_795, 35_795, PM_TIMER_HZ), PM_TIMER_HZ);
        assert_eq!(
            hz_from_counts(u64::MAX, 1, u64::MAX),
            u64::MAX,
            "saturates, no overflow"
        );
        assert_eq!(hz_from_counts(5, 0, PIT_HZ), 0);
        assert_eq!(ticks_for_ms(PIT_HZ, 10), 11_931);
        assert_eq!(ticks_for_ms(PM_TIMER_HZ, 0), 1);
    }

    #[test]
    fn pm_timer_wraparound() {
        assert_eq!(pm_timer_delta(0x00FF_FFF0, 0x0000_0010, false), 0x20);
        assert_eq!(pm_timer_delta(10, 30, false), 20);
        assert_eq!(pm_timer_delta(0xFFFF_FFF0, 0x10, true), 0x20);
        // Bits above 24 (garbage on a 24-bit timer) do not leak into the delta.
        assert_eq!(pm_timer_delta(0xFF00_0005, 0x0000_0006, false), 1);
    }

    #[test]
    fn wait_on_counter_crosses_several_wraps() {
        let now = Cell::new(0x00FF_0000u32);
        let reads = Cell::new(0u32);
        wait_on_counter(3 * 0x0100_0000, false, || {
            reads.set(reads.get() + 1);
            now.set((now.get() + 0x8_0000) & 0x00FF_FFFF);
            now.get()
        })
        .unwrap();
        assert_eq!(reads.get(), 1 + 3 * 32);
    }

    #[test]
    fn stuck_counter_is_an_error() {
        assert_eq!(
            wait_on_counter_limited(10, true, 1000, || 7),
            Err(TimerError::ReferenceStuck)
        );
    }

    /// A fake machine: a reference clock that advances fake TSC and APIC counters.
    struct FakeMachine {
        tsc: Rc<Cell<u64>>,
        apic: Rc<Cell<u32>>,
        tsc_hz: u64,
        apic_hz: u64,
    }

    struct FakeRef(Rc<Cell<u64>>, Rc<Cell<u32>>, u64, u64);

    impl ReferenceClock for FakeRef {
        fn frequency_hz(&self) -> u64 {
            PM_TIMER_HZ
        }
        fn wait_ticks(&mut self, ticks: u64) -> Result<(), TimerError> {
            self.0.set(self.0.get() + ticks * self.2 / PM_TIMER_HZ);
            let apic_ticks = ticks * self.3 / PM_TIMER_HZ;
            self.1.set(
                self.1
                    .get()
                    .saturating_sub(apic_ticks.min(u32::MAX.into()) as u32),
            );
            Ok(())
        }
    }

    impl Counters for FakeMachine {
        fn read_tsc(&mut self) -> u64 {
            self.tsc.get()
        }
        fn start_apic_timer(&mut self) {
            self.apic.set(u32::MAX);
        }
        fn read_apic_timer(&mut self) -> u32 {
            self.apic.get()
        }
    }

    fn machine(tsc_hz: u64, apic_hz: u64) -> (FakeRef, FakeMachine) {
        let tsc = Rc::new(Cell::new(1_000));
        let apic = Rc::new(Cell::new(0));
        (
            FakeRef(tsc.clone(), apic.clone(), tsc_hz, apic_hz),
            FakeMachine {
                tsc,
                apic,
                tsc_hz,
                apic_hz,
            },
        )
    }

    #[test]
    fn calibrate_recovers_frequencies() {
        let (mut r, mut m) = machine(2_400_000_000, 100_000_000);
        let c = calibrate(&mut r, &mut m, 10).unwrap();
        let close = |got: u64, want: u64| got.abs_diff(want) <= want / 10_000;
        assert!(close(c.tsc_hz, m.tsc_hz), "{c:?}");
        assert!(close(c.apic_timer_hz, m.apic_hz), "{c:?}");
        assert!(c.apic_ticks_per_ms().abs_diff(100_000) <= 10);
        assert!(c.tsc_ticks_per_us().abs_diff(2_400) <= 1);
    }

    #[test]
    fn calibrate_detects_dead_counters() {
        let (mut r, mut m) = machine(0, 100_000_000);
        assert_eq!(
            calibrate(&mut r, &mut m, 10),
            Err(TimerError::CounterDidNotCount)
        );
        // APIC timer so fast it runs out during the window.
        let (mut r, mut m) = machine(1_000_000_000, 1 << 40);
        assert_eq!(
            calibrate(&mut r, &mut m, 10),
            Err(TimerError::CounterDidNotCount)
        );
    }
}
