//! This CPU's local APIC: enabling, EOI, IPIs, and the timer calibration that
//! gives the TSC and LAPIC timer frequencies (against the ACPI PM timer, or the
//! PIT when there is none).
//!
//! x2APIC is used when the CPU has it (MSR access, no MMIO mapping); otherwise
//! the xAPIC page is mapped uncached. Handles are cheap and per call, so EOI
//! from an interrupt handler never waits on a lock.

use core::sync::atomic::{AtomicU64, Ordering};

use drivers::apic::{self as hw, Ipi, LocalApic, TimerDivide, TimerMode, X2Apic, XApic};
use drivers::timer::{self, ApicCounters, Calibration, Pit, PmTimer};

use crate::acpi::Machine;
use crate::arch::idt::{SPURIOUS_VECTOR, TIMER_VECTOR};

/// How this machine's local APICs are reached.
#[derive(Clone, Copy)]
enum Mode {
    X2Apic,
    XApic { virt: usize },
}

static MODE: spin::Once<Mode> = spin::Once::new();
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static APIC_TIMER_HZ: AtomicU64 = AtomicU64::new(0);
/// LAPIC timer ticks per TSC tick, 32.32 fixed point: a deadline in TSC
/// ticks becomes a count with one multiplication.
static APIC_TICKS_PER_TSC: AtomicU64 = AtomicU64::new(0);

/// Length of the calibration window against the reference clock, ms.
const CALIBRATION_MS: u32 = 20;

/// Divider for the LAPIC timer (calibration and use agree on it).
const DIVIDE: TimerDivide = TimerDivide::By16;

/// Runs `f` on this CPU's local APIC.
fn with_apic<T>(f: impl FnOnce(&mut dyn ApicOps) -> T) -> T {
    match MODE.get() {
        Some(Mode::X2Apic) => {
            // SAFETY: MODE is X2Apic only after x2APIC mode was enabled on the
            // boot CPU, and every AP enables it before its first APIC access.
            let mut apic = unsafe { LocalApic::<X2Apic>::x2apic() };
            f(&mut apic)
        }
        Some(Mode::XApic { virt }) => {
            // SAFETY: `virt` maps the local APIC page uncached for the kernel's
            // lifetime (map_mmio in init_bsp); each CPU sees its own APIC there.
            let mut apic = unsafe { LocalApic::<XApic>::xapic(*virt) };
            f(&mut apic)
        }
        None => panic!("local APIC used before apic::init_bsp"),
    }
}

/// The operations the kernel needs, object-safe over both APIC kinds.
trait ApicOps {
    fn enable(&mut self, spurious: u8);
    fn id(&self) -> u32;
    fn eoi(&mut self);
    fn ipi(&mut self, dest: u32, ipi: Ipi) -> Result<(), hw::ApicError>;
    fn configure_one_shot(&mut self, vector: u8);
    fn set_count(&mut self, count: u32);
    fn calibrate(
        &mut self,
        machine: &Machine,
    ) -> Result<(Calibration, &'static str), timer::TimerError>;
}

impl<R: hw::ApicRegs> ApicOps for LocalApic<R> {
    fn enable(&mut self, spurious: u8) {
        LocalApic::enable(self, spurious)
    }
    fn id(&self) -> u32 {
        LocalApic::id(self)
    }
    fn eoi(&mut self) {
        LocalApic::eoi(self)
    }
    fn ipi(&mut self, dest: u32, ipi: Ipi) -> Result<(), hw::ApicError> {
        // SAFETY: the kernel sends INIT/SIPI only to APs it is starting and
        // fixed vectors it has handlers for.
        unsafe { self.send_ipi(dest, ipi) }
    }
    fn configure_one_shot(&mut self, vector: u8) {
        self.configure_timer(TimerMode::OneShot, vector, DIVIDE)
    }
    fn set_count(&mut self, count: u32) {
        self.set_timer_count(count)
    }
    fn calibrate(
        &mut self,
        machine: &Machine,
    ) -> Result<(Calibration, &'static str), timer::TimerError> {
        let mut counters = ApicCounters {
            apic: self,
            divide: DIVIDE,
        };
        if let Some(info) = machine.info.pm_timer {
            // SAFETY: the PM timer's location comes from this machine's FADT,
            // and all physical memory is mapped at `phys_offset()`.
            if let Some(mut pm) = unsafe { PmTimer::new(info, crate::mm::phys_offset()) } {
                return timer::calibrate(&mut pm, &mut counters, CALIBRATION_MS)
                    .map(|c| (c, "ACPI PM timer"));
            }
        }
        // SAFETY: PC-compatible machines have the PIT at its legacy ports, and
        // nothing else uses channel 2 during calibration.
        let mut pit = unsafe { Pit::new() };
        timer::calibrate(&mut pit, &mut counters, CALIBRATION_MS).map(|c| (c, "PIT"))
    }
}

/// Enables the boot CPU's local APIC; returns its APIC ID.
pub fn init_bsp(machine: &Machine) -> u32 {
    let mode = if hw::x2apic_supported() {
        // SAFETY: CPUID says x2APIC exists; switching to it is a valid move
        // from xAPIC mode (SDM 11.12.5).
        unsafe { hw::enable_x2apic_mode() };
        Mode::X2Apic
    } else {
        // SAFETY: ring 0 read of IA32_APIC_BASE.
        let base = unsafe { hw::read_apic_base() } & 0x000f_ffff_ffff_f000;
        let virt = crate::mm::mapper::free_region().expect("virtual region for the local APIC");
        crate::mm::mapper::map_mmio(virt, base, 4096).expect("map the local APIC page");
        Mode::XApic {
            virt: virt.as_u64() as usize,
        }
    };
    MODE.call_once(|| mode);
    let id = with_apic(|a| {
        a.enable(SPURIOUS_VECTOR);
        a.id()
    });
    log::info!(
        "local APIC: {} mode, boot CPU APIC ID {id}",
        if matches!(mode, Mode::X2Apic) {
            "x2APIC"
        } else {
            "xAPIC"
        }
    );
    if !machine.info.cpus.is_empty() && !machine.info.cpus.iter().any(|c| c.apic_id == id) {
        log::warn!("the boot CPU's APIC ID {id} is not in the MADT");
    }
    id
}

/// Enables an application processor's local APIC; returns its APIC ID.
pub fn init_ap() -> u32 {
    if let Some(Mode::X2Apic) = MODE.get() {
        // SAFETY: the boot CPU found x2APIC support; all CPUs of a machine agree.
        unsafe { hw::enable_x2apic_mode() };
    }
    let id = with_apic(|a| {
        a.enable(SPURIOUS_VECTOR);
        a.id()
    });
    configure_timer();
    id
}

/// Measures the TSC and the LAPIC timer; prints and remembers both.
pub fn calibrate(machine: &Machine) {
    match with_apic(|a| a.calibrate(machine)) {
        Ok((cal, reference)) => {
            TSC_HZ.store(cal.tsc_hz, Ordering::Relaxed);
            APIC_TIMER_HZ.store(cal.apic_timer_hz, Ordering::Relaxed);
            let per_tsc = (u128::from(cal.apic_timer_hz) << 32) / u128::from(cal.tsc_hz.max(1));
            APIC_TICKS_PER_TSC.store(
                u64::try_from(per_tsc).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            crate::console::set_tsc_hz(cal.tsc_hz);
            log::info!(
                "timers (against the {reference}): TSC {}.{:03} MHz, LAPIC timer {} kHz (divide by 16)",
                cal.tsc_hz / 1_000_000,
                cal.tsc_hz / 1000 % 1000,
                cal.apic_timer_hz / 1000
            );
        }
        Err(e) => {
            log::error!("timer calibration failed: {e:?}; time slices fall back to TSC estimates")
        }
    }
    // Calibration used the timer masked.
    configure_timer();
}

/// Calibrated TSC frequency (0 if calibration failed).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Calibrated LAPIC timer frequency at the kernel's divider.
pub fn timer_hz() -> u64 {
    APIC_TIMER_HZ.load(Ordering::Relaxed)
}

/// Signals end of interrupt to this CPU's local APIC.
pub fn eoi() {
    if MODE.get().is_some() {
        with_apic(|a| a.eoi());
    }
}

/// Sends an IPI.
pub fn send_ipi(dest: u32, ipi: Ipi) -> Result<(), hw::ApicError> {
    with_apic(|a| a.ipi(dest, ipi))
}

/// Arms this CPU's LAPIC timer to fire once `ticks` TSC ticks from now,
/// rounded up to whole LAPIC timer ticks (at least one): rounding never
/// makes it fire before the deadline it marks, so the exit it causes finds
/// that deadline reached instead of needing a second round. (The count
/// still comes from a calibration: callers that must not miss a deadline
/// arm it again when it fires early.)
pub fn one_shot_tsc(ticks: u64) {
    one_shot(timer_count(ticks));
}

/// The LAPIC timer count for `ticks` TSC ticks, as [`one_shot_tsc`]
/// rounds it: for a span fixed in advance (a slice), computed once.
pub fn timer_count(ticks: u64) -> u32 {
    let factor = APIC_TICKS_PER_TSC.load(Ordering::Relaxed);
    let count = (u128::from(ticks) * u128::from(factor) + 0xFFFF_FFFF) >> 32;
    count.clamp(1, u128::from(u32::MAX)) as u32
}

/// Arms this CPU's LAPIC timer with a [`timer_count`].
pub fn one_shot(count: u32) {
    with_apic(|a| a.set_count(count));
}

/// Stops this CPU's LAPIC timer.
pub fn stop_timer() {
    with_apic(|a| a.set_count(0));
}

/// Sets this CPU's LAPIC timer up for [`one_shot_tsc`] (one-shot,
/// [`TIMER_VECTOR`]) and leaves it stopped: each arming and stopping is
/// then one register write (a slice on AMD-V does both).
fn configure_timer() {
    with_apic(|a| a.configure_one_shot(TIMER_VECTOR));
}
