//! Local APIC: interrupt acknowledge, the per-CPU timer, and inter-processor interrupts.
//!
//! The kernel uses the local APIC to take timer interrupts (scheduling, preemption of
//! VMs), to acknowledge interrupts (EOI), and to start the application processors with
//! INIT-SIPI-SIPI. Two register interfaces exist (Intel SDM Vol. 3A, ch. 11):
//! - xAPIC: 32-bit registers at 16-byte strides in a 4 KiB MMIO page
//!   (physical address from the MADT or IA32_APIC_BASE; mapped uncacheable by the kernel);
//! - x2APIC: the same registers as MSRs `0x800 + offset / 16` (when CPUID.1:ECX bit 21
//!   is set and IA32_APIC_BASE.EXTD is on), with a 64-bit ICR and 32-bit APIC IDs.
//!
//! [`LocalApic`] holds the logic and is generic over [`ApicRegs`]: [`XApic`] and
//! [`X2Apic`] on the machine, a fake in the host tests.

use crate::io::Mmio;
use core::fmt;

/// A local APIC register, named by its xAPIC MMIO offset (SDM Vol. 3A Table 11-1,
/// "Local APIC Register Address Map").
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reg(pub u16);

impl Reg {
    /// Local APIC ID register (xAPIC: ID in bits 31:24; x2APIC: 32-bit ID).
    pub const ID: Reg = Reg(0x20);
    /// Local APIC version register (version in bits 7:0, max LVT entry in 23:16).
    pub const VERSION: Reg = Reg(0x30);
    /// Task priority register (TPR).
    pub const TPR: Reg = Reg(0x80);
    /// Processor priority register (PPR), read only.
    pub const PPR: Reg = Reg(0xA0);
    /// EOI register, write only: any write (x2APIC: zero) ends the current interrupt.
    pub const EOI: Reg = Reg(0xB0);
    /// Logical destination register (LDR).
    pub const LDR: Reg = Reg(0xD0);
    /// Spurious interrupt vector register (SVR): vector in 7:0, APIC software enable
    /// in bit 8.
    pub const SVR: Reg = Reg(0xF0);
    /// First in-service register (ISR bits 31:0); ISR continues every 0x10 to 0x170.
    pub const ISR0: Reg = Reg(0x100);
    /// First interrupt request register (IRR bits 31:0); continues to 0x270.
    pub const IRR0: Reg = Reg(0x200);
    /// Error status register (ESR): write before reading to latch the errors.
    pub const ESR: Reg = Reg(0x280);
    /// Interrupt command register, low half (vector, delivery mode, status).
    pub const ICR_LOW: Reg = Reg(0x300);
    /// Interrupt command register, high half (xAPIC destination in bits 31:24).
    pub const ICR_HIGH: Reg = Reg(0x310);
    /// LVT timer register: vector, mask (bit 16), timer mode (bits 18:17).
    pub const LVT_TIMER: Reg = Reg(0x320);
    /// LVT thermal sensor register.
    pub const LVT_THERMAL: Reg = Reg(0x330);
    /// LVT performance monitoring counters register.
    pub const LVT_PERF: Reg = Reg(0x340);
    /// LVT LINT0 register.
    pub const LVT_LINT0: Reg = Reg(0x350);
    /// LVT LINT1 register.
    pub const LVT_LINT1: Reg = Reg(0x360);
    /// LVT error register.
    pub const LVT_ERROR: Reg = Reg(0x370);
    /// Timer initial count register; writing starts the count-down.
    pub const TIMER_INITIAL: Reg = Reg(0x380);
    /// Timer current count register, read only.
    pub const TIMER_CURRENT: Reg = Reg(0x390);
    /// Timer divide configuration register (bits 0, 1, 3).
    pub const TIMER_DIVIDE: Reg = Reg(0x3E0);

    /// The x2APIC MSR for this register (SDM Table 11-6): `0x800 + offset / 16`.
    pub const fn x2apic_msr(self) -> u32 {
        0x800 + (self.0 as u32 >> 4)
    }
}

impl fmt::Debug for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reg({:#x})", self.0)
    }
}

/// x2APIC ICR MSR (64-bit: destination in 63:32).
pub const X2APIC_ICR_MSR: u32 = 0x830;
/// IA32_APIC_BASE MSR.
pub const IA32_APIC_BASE: u32 = 0x1B;
/// IA32_APIC_BASE bit 11: APIC global enable.
pub const APIC_BASE_ENABLE: u64 = 1 << 11;
/// IA32_APIC_BASE bit 10: x2APIC mode (EXTD).
pub const APIC_BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE bit 8: this is the bootstrap processor.
pub const APIC_BASE_BSP: u64 = 1 << 8;

const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
/// Polls of the delivery-status bit before an IPI counts as stuck.
const IPI_SPIN_LIMIT: u32 = 1_000_000;

/// How the local APIC registers are reached.
pub trait ApicRegs {
    /// Reads a 32-bit register.
    fn read(&self, reg: Reg) -> u32;
    /// Writes a 32-bit register.
    fn write(&mut self, reg: Reg, value: u32);
    /// Sends an IPI: `low` is the ICR low word, `dest` the destination APIC ID.
    fn write_icr(&mut self, dest: u32, low: u32);
    /// Whether the last IPI is still being delivered (always false on x2APIC, which
    /// has no delivery status).
    fn ipi_pending(&self) -> bool;
    /// This CPU's APIC ID.
    fn apic_id(&self) -> u32;
}

/// xAPIC: registers in a 4 KiB MMIO page.
#[derive(Debug)]
pub struct XApic {
    mmio: Mmio,
}

impl XApic {
    /// The xAPIC whose register page is mapped at virtual address `virt_base`.
    ///
    /// # Safety
    /// `virt_base` must map the local APIC's 4 KiB register page (uncacheable) for
    /// the life of the value, and the APIC must be in xAPIC mode.
    pub const unsafe fn new(virt_base: usize) -> Self {
        Self {
            // SAFETY: the caller's promise covers `Mmio::new`'s for the 4 KiB page.
            mmio: unsafe { Mmio::new(virt_base, 0x1000) },
        }
    }
}

impl ApicRegs for XApic {
    fn read(&self, reg: Reg) -> u32 {
        self.mmio.read(reg.0.into())
    }
    fn write(&mut self, reg: Reg, value: u32) {
        self.mmio.write(reg.0.into(), value);
    }
    fn write_icr(&mut self, dest: u32, low: u32) {
        // The write to the low half sends the IPI, so the destination goes first.
        self.mmio.write(Reg::ICR_HIGH.0.into(), (dest & 0xFF) << 24);
        self.mmio.write(Reg::ICR_LOW.0.into(), low);
    }
    fn ipi_pending(&self) -> bool {
        self.read(Reg::ICR_LOW) & ICR_DELIVERY_PENDING != 0
    }
    fn apic_id(&self) -> u32 {
        self.read(Reg::ID) >> 24
    }
}

/// x2APIC: registers as MSRs.
#[derive(Debug)]
pub struct X2Apic {
    _private: (),
}

impl X2Apic {
    /// The x2APIC of the CPU executing each access.
    ///
    /// # Safety
    /// x2APIC mode must be on (see [`enable_x2apic_mode`]) on every CPU that uses the
    /// value, or the MSR accesses fault.
    pub const unsafe fn new() -> Self {
        Self { _private: () }
    }

    fn rdmsr(msr: u32) -> u64 {
        // SAFETY: `new`'s contract: x2APIC mode is on, so the x2APIC MSRs exist; reads
        // have no side effects.
        unsafe { x86_64::registers::model_specific::Msr::new(msr).read() }
    }

    fn wrmsr(msr: u32, value: u64) {
        let mut m = x86_64::registers::model_specific::Msr::new(msr);
        // SAFETY: `new`'s contract: x2APIC mode is on. Only APIC registers are written,
        // with values `LocalApic` composed for them.
        unsafe { m.write(value) }
    }
}

impl ApicRegs for X2Apic {
    fn read(&self, reg: Reg) -> u32 {
        Self::rdmsr(reg.x2apic_msr()) as u32
    }
    fn write(&mut self, reg: Reg, value: u32) {
        Self::wrmsr(reg.x2apic_msr(), value.into());
    }
    fn write_icr(&mut self, dest: u32, low: u32) {
        Self::wrmsr(X2APIC_ICR_MSR, u64::from(dest) << 32 | u64::from(low));
    }
    fn ipi_pending(&self) -> bool {
        false
    }
    fn apic_id(&self) -> u32 {
        self.read(Reg::ID)
    }
}

/// Whether CPUID.1:ECX bit 21 (x2APIC) is set in `ecx`.
pub const fn x2apic_in_cpuid_ecx(ecx: u32) -> bool {
    ecx & (1 << 21) != 0
}

/// Whether this CPU supports x2APIC mode.
pub fn x2apic_supported() -> bool {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 1 exists on every x86_64 CPU and has no side effects.
    let leaf = unsafe { core::arch::x86_64::__cpuid(1) };
    x2apic_in_cpuid_ecx(leaf.ecx)
}

/// Switches this CPU's local APIC to x2APIC mode (sets IA32_APIC_BASE EN and EXTD).
///
/// # Safety
/// The CPU must support x2APIC ([`x2apic_supported`]); no [`XApic`] may be used on
/// this CPU afterwards.
pub unsafe fn enable_x2apic_mode() {
    let mut base = x86_64::registers::model_specific::Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC; the caller promises
    // x2APIC support, so setting EXTD (with EN) is a valid transition (SDM 11.12.5).
    unsafe {
        let value = base.read();
        base.write(value | APIC_BASE_ENABLE | APIC_BASE_EXTD);
    }
}

/// Reads IA32_APIC_BASE (physical base in bits 51:12, BSP flag, enable bits).
///
/// # Safety
/// Executes `rdmsr`: ring 0 only.
pub unsafe fn read_apic_base() -> u64 {
    // SAFETY: the caller runs at ring 0; IA32_APIC_BASE exists on x86_64 CPUs.
    unsafe { x86_64::registers::model_specific::Msr::new(IA32_APIC_BASE).read() }
}

/// Timer mode (LVT timer bits 18:17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    /// Count down once, interrupt at zero.
    OneShot = 0b00,
    /// Reload the initial count at zero and keep interrupting.
    Periodic = 0b01,
}

/// Timer clock divider (divide configuration register, SDM Figure 11-10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerDivide {
    /// Bus clock / 1.
    By1 = 0b1011,
    /// Bus clock / 2.
    By2 = 0b0000,
    /// Bus clock / 4.
    By4 = 0b0001,
    /// Bus clock / 8.
    By8 = 0b0010,
    /// Bus clock / 16.
    By16 = 0b0011,
    /// Bus clock / 32.
    By32 = 0b1000,
    /// Bus clock / 64.
    By64 = 0b1001,
    /// Bus clock / 128.
    By128 = 0b1010,
}

impl TimerDivide {
    /// The divisor.
    pub const fn divisor(self) -> u32 {
        match self {
            Self::By1 => 1,
            Self::By2 => 2,
            Self::By4 => 4,
            Self::By8 => 8,
            Self::By16 => 16,
            Self::By32 => 32,
            Self::By64 => 64,
            Self::By128 => 128,
        }
    }
}

/// An inter-processor interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipi {
    /// INIT (level assert): resets the target into wait-for-SIPI.
    Init,
    /// Start-up IPI: the target starts in real mode at `page << 12` (below 1 MiB).
    Startup {
        /// Physical page number of the start code (0x00..=0xFF).
        page: u8,
    },
    /// Interrupt `vector` on the target.
    Fixed {
        /// Vector (32..=255).
        vector: u8,
    },
    /// Non-maskable interrupt.
    Nmi,
}

impl Ipi {
    /// ICR bits 31:0 for this IPI with no shorthand, physical destination
    /// (SDM Figure 11-12): vector 7:0, delivery mode 10:8, level 14, trigger 15.
    pub const fn icr_low(self) -> u32 {
        const LEVEL_ASSERT: u32 = 1 << 14;
        match self {
            Ipi::Fixed { vector } => vector as u32 | LEVEL_ASSERT,
            Ipi::Nmi => 0b100 << 8 | LEVEL_ASSERT,
            Ipi::Init => 0b101 << 8 | LEVEL_ASSERT,
            Ipi::Startup { page } => page as u32 | 0b110 << 8 | LEVEL_ASSERT,
        }
    }
}

/// Errors of the local APIC driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// An IPI's delivery status stayed pending.
    IpiTimeout,
    /// The IPI cannot be expressed (a fixed vector below 16; an xAPIC destination
    /// above 255).
    BadIpi,
}

/// A local APIC reached through `R`.
#[derive(Debug)]
pub struct LocalApic<R: ApicRegs> {
    regs: R,
    x2apic: bool,
}

impl LocalApic<XApic> {
    /// The xAPIC at virtual address `virt_base`.
    ///
    /// # Safety
    /// As for [`XApic::new`].
    pub const unsafe fn xapic(virt_base: usize) -> Self {
        Self {
            // SAFETY: the caller's promise is `XApic::new`'s.
            regs: unsafe { XApic::new(virt_base) },
            x2apic: false,
        }
    }
}

impl LocalApic<X2Apic> {
    /// The x2APIC of the executing CPU.
    ///
    /// # Safety
    /// As for [`X2Apic::new`].
    pub const unsafe fn x2apic() -> Self {
        Self {
            // SAFETY: the caller's promise is `X2Apic::new`'s.
            regs: unsafe { X2Apic::new() },
            x2apic: true,
        }
    }
}

impl<R: ApicRegs> LocalApic<R> {
    /// A local APIC over any register backend (`x2apic`: 32-bit destinations allowed).
    pub fn with_regs(regs: R, x2apic: bool) -> Self {
        Self { regs, x2apic }
    }

    /// The register backend.
    pub fn regs(&self) -> &R {
        &self.regs
    }

    /// Software-enables the APIC with `spurious_vector` in the SVR, accepts all
    /// priorities (TPR 0) and masks the timer, LINT0/1 and error LVTs until the kernel
    /// programs them.
    pub fn enable(&mut self, spurious_vector: u8) {
        for lvt in [
            Reg::LVT_TIMER,
            Reg::LVT_LINT0,
            Reg::LVT_LINT1,
            Reg::LVT_ERROR,
        ] {
            self.regs.write(lvt, LVT_MASKED);
        }
        self.regs.write(Reg::TPR, 0);
        let svr = self.regs.read(Reg::SVR) & !0xFF;
        self.regs
            .write(Reg::SVR, svr | SVR_ENABLE | u32::from(spurious_vector));
    }

    /// Clears the software enable bit.
    pub fn disable(&mut self) {
        let svr = self.regs.read(Reg::SVR);
        self.regs.write(Reg::SVR, svr & !SVR_ENABLE);
    }

    /// This CPU's APIC ID.
    pub fn id(&self) -> u32 {
        self.regs.apic_id()
    }

    /// The version register (version in bits 7:0).
    pub fn version(&self) -> u32 {
        self.regs.read(Reg::VERSION)
    }

    /// Signals end of interrupt for the interrupt being serviced.
    pub fn eoi(&mut self) {
        self.regs.write(Reg::EOI, 0);
    }

    /// Latches and returns the error status (ESR).
    pub fn error_status(&mut self) -> u32 {
        self.regs.write(Reg::ESR, 0);
        self.regs.read(Reg::ESR)
    }

    /// Sets the timer up (its interrupt `vector`, once or every period, at
    /// the bus clock divided by `divide`) and leaves it stopped: from then
    /// on [`Self::set_timer_count`] starts and stops it with one register
    /// write each.
    pub fn configure_timer(&mut self, mode: TimerMode, vector: u8, divide: TimerDivide) {
        self.regs.write(Reg::TIMER_INITIAL, 0);
        self.regs.write(Reg::TIMER_DIVIDE, divide as u32);
        self.regs
            .write(Reg::LVT_TIMER, (mode as u32) << 17 | u32::from(vector));
    }

    /// Starts the configured timer counting down from `count`; 0 stops it
    /// (a write of 0 to the initial-count register stops the timer in
    /// either mode, SDM Vol. 3A 11.5.4).
    pub fn set_timer_count(&mut self, count: u32) {
        self.regs.write(Reg::TIMER_INITIAL, count);
    }

    /// Starts the timer counting down from `initial_count` with its interrupt masked
    /// (for measuring, e.g. calibration).
    pub fn start_timer_masked(&mut self, divide: TimerDivide, initial_count: u32) {
        self.regs.write(Reg::TIMER_DIVIDE, divide as u32);
        self.regs.write(Reg::LVT_TIMER, LVT_MASKED);
        self.regs.write(Reg::TIMER_INITIAL, initial_count);
    }

    /// The timer's current count.
    pub fn timer_current(&self) -> u32 {
        self.regs.read(Reg::TIMER_CURRENT)
    }

    /// Sends `ipi` to the CPU with APIC ID `dest`; on xAPIC, waits until the
    /// previous and this IPI have left (delivery status idle).
    ///
    /// # Safety
    /// INIT and start-up IPIs reset the target and make it run the code at
    /// `page << 12`: the target must be an application processor that runs nothing
    /// else, and for [`Ipi::Startup`] that page must hold the AP start code. A fixed
    /// vector must have a handler on the target.
    pub unsafe fn send_ipi(&mut self, dest: u32, ipi: Ipi) -> Result<(), ApicError> {
        if matches!(ipi, Ipi::Fixed { vector } if vector < 16) || (!self.x2apic && dest > 0xFF) {
            return Err(ApicError::BadIpi);
        }
        self.wait_ipi_idle()?;
        self.regs.write_icr(dest, ipi.icr_low());
        self.wait_ipi_idle()
    }

    fn wait_ipi_idle(&self) -> Result<(), ApicError> {
        for _ in 0..IPI_SPIN_LIMIT {
            if !self.regs.ipi_pending() {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(ApicError::IpiTimeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::vec::Vec;

    #[derive(Default)]
    struct Fake {
        regs: HashMap<u16, u32>,
        writes: Vec<(u16, u32)>,
        icr: Vec<(u32, u32)>,
        pending_polls: Cell<u32>,
    }

    impl ApicRegs for Fake {
        fn read(&self, reg: Reg) -> u32 {
            self.regs.get(&reg.0).copied().unwrap_or(0)
        }
        fn write(&mut self, reg: Reg, value: u32) {
            self.regs.insert(reg.0, value);
            self.writes.push((reg.0, value));
        }
        fn write_icr(&mut self, dest: u32, low: u32) {
            self.icr.push((dest, low));
        }
        fn ipi_pending(&self) -> bool {
            let n = self.pending_polls.get();
            self.pending_polls.set(n.saturating_sub(1));
            n > 0
        }
        fn apic_id(&self) -> u32 {
            self.read(Reg::ID) >> 24
        }
    }

    #[test]
    fn register_offsets_and_msrs() {
        assert_eq!(Reg::SVR.x2apic_msr(), 0x80F);
        assert_eq!(Reg::EOI.x2apic_msr(), 0x80B);
        assert_eq!(Reg::LVT_TIMER.x2apic_msr(), 0x832);
        assert_eq!(Reg::TIMER_DIVIDE.x2apic_msr(), 0x83E);
        assert_eq!(Reg::ICR_LOW.x2apic_msr(), X2APIC_ICR_MSR);
        assert!(x2apic_in_cpuid_ecx(1 << 21));
        assert!(!x2apic_in_cpuid_ecx(!(1 << 21)));
    }

    #[test]
    fn enable_sets_svr_and_masks_lvts() {
        let mut fake = Fake::default();
        fake.regs.insert(Reg::SVR.0, 0xFF);
        fake.regs.insert(Reg::ID.0, 3 << 24);
        let mut apic = LocalApic::with_regs(fake, false);
        apic.enable(0xF0);
        assert_eq!(apic.regs().read(Reg::SVR), 0x1F0);
        assert_eq!(apic.regs().read(Reg::LVT_LINT0), LVT_MASKED);
        assert_eq!(apic.id(), 3);
        apic.disable();
        assert_eq!(apic.regs().read(Reg::SVR), 0xF0);
    }

    #[test]
    fn timer_programming_order() {
        let mut apic = LocalApic::with_regs(Fake::default(), false);
        apic.configure_timer(TimerMode::Periodic, 0x40, TimerDivide::By16);
        apic.set_timer_count(12345);
        let w = &apic.regs().writes;
        assert_eq!(w[0], (Reg::TIMER_INITIAL.0, 0), "stopped while set up");
        assert_eq!(w[1], (Reg::TIMER_DIVIDE.0, 0b0011));
        assert_eq!(w[2], (Reg::LVT_TIMER.0, 1 << 17 | 0x40));
        assert_eq!(
            w[3],
            (Reg::TIMER_INITIAL.0, 12345),
            "initial count must be written last"
        );
        apic.set_timer_count(0);
        assert_eq!(apic.regs().read(Reg::TIMER_INITIAL), 0);
        assert_eq!(TimerDivide::By1 as u32, 0b1011);
        assert_eq!(TimerDivide::By128.divisor(), 128);
    }

    #[test]
    fn configured_timer_starts_and_stops_with_one_write() {
        let mut apic = LocalApic::with_regs(Fake::default(), false);
        apic.configure_timer(TimerMode::OneShot, 0x20, TimerDivide::By16);
        assert_eq!(
            apic.regs().writes,
            [
                (Reg::TIMER_INITIAL.0, 0),
                (Reg::TIMER_DIVIDE.0, 0b0011),
                (Reg::LVT_TIMER.0, 0x20),
            ],
            "stopped first, then divider and LVT (one-shot, unmasked)"
        );
        apic.set_timer_count(777);
        apic.set_timer_count(0);
        assert_eq!(
            apic.regs().writes[3..],
            [(Reg::TIMER_INITIAL.0, 777), (Reg::TIMER_INITIAL.0, 0)]
        );
    }

    #[test]
    fn ipi_encoding() {
        assert_eq!(Ipi::Init.icr_low(), 0x4500);
        assert_eq!(Ipi::Startup { page: 0x08 }.icr_low(), 0x4608);
        assert_eq!(Ipi::Fixed { vector: 0x30 }.icr_low(), 0x4030);
        assert_eq!(Ipi::Nmi.icr_low(), 0x4400);
    }

    #[test]
    fn init_sipi_sipi_waits_for_delivery() {
        let fake = Fake {
            pending_polls: Cell::new(5),
            ..Fake::default()
        };
        let mut apic = LocalApic::with_regs(fake, false);
        // SAFETY: fake registers; no CPU is started.
        unsafe {
            apic.send_ipi(1, Ipi::Init).unwrap();
            apic.send_ipi(1, Ipi::Startup { page: 8 }).unwrap();
            apic.send_ipi(1, Ipi::Startup { page: 8 }).unwrap();
        }
        assert_eq!(apic.regs().icr, vec![(1, 0x4500), (1, 0x4608), (1, 0x4608)]);
        assert_eq!(apic.regs().pending_polls.get(), 0);
    }

    #[test]
    fn stuck_delivery_times_out_and_bad_ipis_refused() {
        let fake = Fake {
            pending_polls: Cell::new(u32::MAX),
            ..Fake::default()
        };
        let mut apic = LocalApic::with_regs(fake, false);
        // SAFETY: fake registers.
        unsafe {
            assert_eq!(apic.send_ipi(1, Ipi::Init), Err(ApicError::IpiTimeout));
            assert_eq!(apic.send_ipi(256, Ipi::Init), Err(ApicError::BadIpi));
            assert_eq!(
                apic.send_ipi(1, Ipi::Fixed { vector: 2 }),
                Err(ApicError::BadIpi)
            );
        }
        assert!(apic.regs().icr.is_empty());
        let mut x2 = LocalApic::with_regs(Fake::default(), true);
        // SAFETY: fake registers.
        unsafe { x2.send_ipi(300, Ipi::Fixed { vector: 0x40 }).unwrap() };
        assert_eq!(x2.regs().icr, vec![(300, 0x4040)]);
    }
}
