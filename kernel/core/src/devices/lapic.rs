//! A virtual local APIC (Intel SDM Vol. 3A chapter 11, "Advanced
//! Programmable Interrupt Controller"), one per vCPU of a multiprocessor VM.
//!
//! A pure state machine: no clock reads and no hardware access. Time comes in
//! as `now`, a TSC value; the timer's input clock ticks every
//! `tsc_per_tick` TSC ticks (the hypervisor's CPUID leaf 0x15 crystal clock:
//! 100). Every write first brings the timer to `now` ([`LocalApic::advance`]),
//! so a change to the timer's LVT entry or the SVR never reaches back in time.
//!
//! Modelled: the IA32_APIC_BASE MSR with the disabled/xAPIC/x2APIC state
//! transitions (11.4.4, 11.12.5); the xAPIC MMIO registers (11.4.1, Table
//! 11-1) and the x2APIC MSRs (11.12.1.2, Table 11-6) with x2APIC reserved-bit
//! checking (11.12.1.3); interrupt acceptance, IRR/ISR/TMR, TPR/PPR priority
//! and EOI (11.8); the error status register (11.5.3); the timer in one-shot,
//! periodic and TSC-deadline modes (11.5.4); IPIs from the ICR and the x2APIC
//! SELF IPI register (11.6, 11.12.11); destination matching over a VM's
//! APICs (11.6.2, 11.12.10). The APIC does not deliver anything itself: an
//! IPI or a level-triggered EOI comes out as an [`ApicOutput`] that the
//! hypervisor routes to the VM's own APICs ([`targets`]) or its I/O APIC.
//!
//! Choices where the SDM leaves room:
//! - Version 0x14 with 7 LVT entries (max LVT entry 6): LVT CMCI (0x2F0) is a
//!   plain register that no source raises. EOI-broadcast suppression (version
//!   bit 24, SVR bit 12) is not supported.
//! - The xAPIC ID register is read-only (writes ignored): the VM's APIC IDs
//!   are fixed by the hypervisor, which matches destinations with them.
//! - An xAPIC access to a reserved offset (or one not 16-byte aligned) reads
//!   0, is otherwise ignored and sets ESR bit 7 "Illegal Register Address".
//!   Writes to read-only registers are ignored without an error.
//! - An error raises the LVT error interrupt when it sets an ESR bit that was
//!   not yet pending (the handler's ESR write clears them), so an error that
//!   repeats before the guest looks does not storm.
//! - IPIs are sent edge-triggered and asserted (ICR bits 15 and 14 have no
//!   meaning on Pentium 4 and later, 11.6.1), except an INIT level de-assert
//!   (INIT, level 0, trigger level), which sends nothing. The reserved ICR
//!   delivery modes 011 and 111 send nothing and set ESR bit 5 "Send Illegal
//!   Vector", as does a fixed or lowest-priority IPI with a vector below 16.
//! - Lowest-priority messages keep their mode; the hypervisor delivers them as
//!   fixed to the one APIC [`lowest_priority_target`] picks (the lowest PPR,
//!   then the lowest index; 11.6.2.4 leaves the arbitration to the model).
//! - Any change of the LVT timer mode disarms the timer (11.5.4.1): the count
//!   stops, the initial count and IA32_TSC_DEADLINE read 0. The reserved mode
//!   11 never counts.
//! - LINT0 passes an 8259's INTR when the APIC is disabled globally or by
//!   software: our VMs have no firmware to program virtual-wire mode (LVT
//!   LINT0 unmasked ExtINT), so the reset state acts as pass-through.
//! - The IA32_APIC_BASE BSP flag is read-only; base-address bits at or above
//!   the guest's physical-address width (36 unless
//!   [`LocalApic::set_phys_addr_bits`] says otherwise) are reserved.

use super::apic_msg::{DeliveryMode, Destination, InterruptMessage};

/// IA32_APIC_BASE (SDM 11.4.4).
pub const APIC_BASE_MSR: u32 = 0x1B;
/// IA32_APIC_BASE bit 8: this processor is the bootstrap processor.
pub const APIC_BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE bit 10: x2APIC mode (with EN).
pub const APIC_BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE bit 11: APIC global enable.
pub const APIC_BASE_EN: u64 = 1 << 11;
/// IA32_APIC_BASE bits that are reserved below the address width (7:0, 9).
pub const APIC_BASE_RESERVED_LOW: u64 = 0x2FF;
/// The APIC base address after reset (SDM 11.4.1).
pub const DEFAULT_APIC_BASE: u64 = 0xFEE0_0000;
/// Physical-address width assumed until [`LocalApic::set_phys_addr_bits`].
pub const DEFAULT_PHYS_ADDR_BITS: u8 = 36;
/// IA32_TSC_DEADLINE (SDM 11.5.4.1).
pub const IA32_TSC_DEADLINE: u32 = 0x6E0;

/// Whether `msr` belongs to a local APIC: IA32_APIC_BASE,
/// IA32_TSC_DEADLINE or the x2APIC range (SDM 11.12.1.2).
pub fn is_apic_msr(msr: u32) -> bool {
    msr == APIC_BASE_MSR
        || msr == IA32_TSC_DEADLINE
        || (X2APIC_MSR_FIRST..=X2APIC_MSR_LAST).contains(&msr)
}

/// Local APIC ID register (SDM Table 11-1).
pub const ID: u32 = 0x20;
/// Local APIC version register.
pub const VERSION: u32 = 0x30;
/// Task priority register.
pub const TPR: u32 = 0x80;
/// Arbitration priority register (xAPIC only; reads 0 here).
pub const APR: u32 = 0x90;
/// Processor priority register.
pub const PPR: u32 = 0xA0;
/// EOI register.
pub const EOI: u32 = 0xB0;
/// Remote read register (xAPIC only; reads 0 here).
pub const RRD: u32 = 0xC0;
/// Logical destination register.
pub const LDR: u32 = 0xD0;
/// Destination format register (xAPIC only).
pub const DFR: u32 = 0xE0;
/// Spurious interrupt vector register.
pub const SVR: u32 = 0xF0;
/// In-service register, bits 31:0 (eight registers, 0x10 apart).
pub const ISR0: u32 = 0x100;
/// Trigger mode register, bits 31:0 (eight registers).
pub const TMR0: u32 = 0x180;
/// Interrupt request register, bits 31:0 (eight registers).
pub const IRR0: u32 = 0x200;
/// Error status register.
pub const ESR: u32 = 0x280;
/// LVT corrected machine-check error interrupt register.
pub const LVT_CMCI: u32 = 0x2F0;
/// Interrupt command register, bits 31:0.
pub const ICR_LOW: u32 = 0x300;
/// Interrupt command register, bits 63:32 (xAPIC only).
pub const ICR_HIGH: u32 = 0x310;
/// LVT timer register.
pub const LVT_TIMER: u32 = 0x320;
/// LVT thermal sensor register.
pub const LVT_THERMAL: u32 = 0x330;
/// LVT performance monitoring counters register.
pub const LVT_PERF: u32 = 0x340;
/// LVT LINT0 register.
pub const LVT_LINT0: u32 = 0x350;
/// LVT LINT1 register.
pub const LVT_LINT1: u32 = 0x360;
/// LVT error register.
pub const LVT_ERROR: u32 = 0x370;
/// Initial count register (timer).
pub const TIMER_INITIAL: u32 = 0x380;
/// Current count register (timer).
pub const TIMER_CURRENT: u32 = 0x390;
/// Divide configuration register (timer).
pub const TIMER_DIVIDE: u32 = 0x3E0;
/// SELF IPI register (x2APIC only; offset 0x3F0 is reserved in xAPIC).
pub const SELF_IPI: u32 = 0x3F0;

/// First x2APIC register MSR (SDM 11.12.1.2).
pub const X2APIC_MSR_FIRST: u32 = 0x800;
/// Last MSR of the x2APIC range.
pub const X2APIC_MSR_LAST: u32 = 0x8FF;
/// The x2APIC SELF IPI MSR.
pub const X2APIC_SELF_IPI_MSR: u32 = 0x83F;

/// The x2APIC MSR of the register at xAPIC `offset` (SDM 11.12.1.2).
pub const fn x2apic_msr(offset: u32) -> u32 {
    X2APIC_MSR_FIRST + offset / 16
}

/// Version register value: version 0x14, max LVT entry 6 (bits 23:16), no
/// EOI-broadcast suppression (bit 24) (SDM 11.4.8).
pub const VERSION_VALUE: u32 = 0x14 | (6 << 16);

/// SVR bit 8: APIC software enable (SDM 11.9).
pub const SVR_APIC_ENABLED: u32 = 1 << 8;
/// SVR bits that may be written: vector, software enable, focus processor
/// checking (bit 9, kept but without effect). Bit 12 is reserved here.
pub const SVR_WRITABLE: u32 = 0x3FF;
/// SVR after reset: vector 0xFF, software-disabled (SDM 11.4.7.1).
pub const SVR_RESET: u32 = 0xFF;

/// LVT bit 16: masked (SDM 11.5.1).
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT bit 12: delivery status (read-only, always idle here).
pub const LVT_DELIVERY_STATUS: u32 = 1 << 12;
/// LVT LINT bit 14: remote IRR (read-only, always 0 here).
pub const LVT_REMOTE_IRR: u32 = 1 << 14;
/// LVT delivery mode field, bits 10:8.
pub const LVT_DELIVERY_MODE: u32 = 7 << 8;
/// LVT timer mode field, bits 18:17 (SDM 11.5.4, Figure 11-8).
pub const LVT_TIMER_MODE: u32 = 3 << 17;

/// ESR bit 5: Send Illegal Vector (SDM 11.5.3).
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
/// ESR bit 6: Received Illegal Vector.
pub const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
/// ESR bit 7: Illegal Register Address (xAPIC mode).
pub const ESR_ILLEGAL_REGISTER_ADDRESS: u32 = 1 << 7;

/// ICR bit 11: logical destination mode (SDM 11.6.1).
pub const ICR_DEST_LOGICAL: u32 = 1 << 11;
/// ICR bit 12: delivery status (reads 0, idle; not present in x2APIC).
pub const ICR_DELIVERY_STATUS: u32 = 1 << 12;
/// ICR bit 14: level (1 = assert).
pub const ICR_LEVEL_ASSERT: u32 = 1 << 14;
/// ICR bit 15: trigger mode (1 = level).
pub const ICR_TRIGGER_LEVEL: u32 = 1 << 15;
/// ICR bits 19:18 shift: destination shorthand.
pub const ICR_SHORTHAND_SHIFT: u32 = 18;
/// ICR bits 31:0 that are stored (vector, delivery mode, destination mode,
/// level, trigger mode, shorthand).
pub const ICR_LOW_WRITABLE: u32 = 0x000C_CFFF;
/// x2APIC ICR bits 31:0 whose nonzero write raises #GP (bits 13, 17:16,
/// 31:20; bit 12 is ignored).
pub const X2APIC_ICR_RESERVED: u32 = 0xFFF3_2000;

/// Divide configuration bits that exist (0, 1 and 3; SDM 11.5.4, Figure
/// 11-10).
pub const TIMER_DIVIDE_WRITABLE: u32 = 0xB;

/// The APIC broadcast destination in xAPIC mode (physical and logical).
pub const XAPIC_BROADCAST: u32 = 0xFF;
/// The APIC broadcast destination in x2APIC mode.
pub const X2APIC_BROADCAST: u32 = 0xFFFF_FFFF;

/// Most APICs [`targets`] can name (bits of its mask).
pub const MAX_TARGETS: usize = 64;

/// The APIC's mode, from IA32_APIC_BASE EN and EXTD (SDM 11.12.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// EN = 0: globally disabled (as if the processor had no APIC).
    Disabled,
    /// EN = 1, EXTD = 0: xAPIC, registers in the MMIO page.
    XApic,
    /// EN = 1, EXTD = 1: x2APIC, registers in MSRs 0x800-0x8FF.
    X2Apic,
}

/// An access the processor refuses: the hypervisor injects #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicFault {
    /// General-protection exception, error code 0.
    GeneralProtection,
}

/// What an access asks the hypervisor to do beyond the APIC itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApicOutput {
    /// Nothing.
    #[default]
    None,
    /// Send this interrupt message to the VM's APICs that [`targets`] names
    /// (the sender is the APIC that produced it).
    Ipi(InterruptMessage),
    /// The EOI of a level-triggered vector (its TMR bit was set): the I/O APIC
    /// clears Remote IRR of the entries with this vector (SDM 11.8.5).
    Eoi {
        /// The vector whose in-service bit the EOI cleared.
        vector: u8,
    },
}

/// The LVT timer mode, bits 18:17 (SDM 11.5.4, Table 11-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    /// 00: counts down once from the initial count.
    OneShot,
    /// 01: reloads the initial count at each expiry.
    Periodic,
    /// 10: fires when the TSC reaches IA32_TSC_DEADLINE.
    TscDeadline,
    /// 11: reserved; the timer does not count.
    Reserved,
}

impl TimerMode {
    fn of_lvt(lvt: u32) -> Self {
        match (lvt & LVT_TIMER_MODE) >> 17 {
            0 => TimerMode::OneShot,
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::Reserved,
        }
    }
}

/// The divisor of a divide configuration register value (SDM 11.5.4,
/// Figure 11-10): bits 3,1:0 = 000 divide by 2 ... 110 by 128, 111 by 1.
pub fn timer_divisor(divide_config: u32) -> u32 {
    let code = (divide_config & 3) | ((divide_config >> 1) & 4);
    if code == 7 {
        1
    } else {
        2 << code
    }
}

// LVT entries, in register order from LVT_CMCI; indices into `LocalApic::lvt`.
const LVT_COUNT: usize = 7;
const LVT_IDX_CMCI: usize = 0;
const LVT_IDX_TIMER: usize = 1;
const LVT_IDX_LINT0: usize = 4;
const LVT_IDX_LINT1: usize = 5;
const LVT_IDX_ERROR: usize = 6;

/// The LVT index of a register offset.
fn lvt_index(offset: u32) -> Option<usize> {
    match offset {
        LVT_CMCI => Some(LVT_IDX_CMCI),
        LVT_TIMER..=LVT_ERROR if offset.is_multiple_of(16) => {
            Some(((offset - LVT_TIMER) / 16) as usize + 1)
        }
        _ => None,
    }
}

/// Bits an LVT entry stores (SDM 11.5.1, Figure 11-8).
fn lvt_writable(index: usize) -> u32 {
    match index {
        // Timer: vector, mask, timer mode.
        LVT_IDX_TIMER => 0xFF | LVT_MASKED | LVT_TIMER_MODE,
        // LINT0/1: vector, delivery mode, polarity (13), trigger (15), mask.
        LVT_IDX_LINT0 | LVT_IDX_LINT1 => 0x7FF | (1 << 13) | (1 << 15) | LVT_MASKED,
        // Error: vector, mask.
        LVT_IDX_ERROR => 0xFF | LVT_MASKED,
        // CMCI, thermal, performance: vector, delivery mode, mask.
        _ => 0x7FF | LVT_MASKED,
    }
}

/// Bits of an LVT entry a WRMSR may set without #GP: the stored ones and the
/// read-only status bits (ignored).
fn lvt_accepted(index: usize) -> u32 {
    let status = match index {
        LVT_IDX_LINT0 | LVT_IDX_LINT1 => LVT_DELIVERY_STATUS | LVT_REMOTE_IRR,
        _ => LVT_DELIVERY_STATUS,
    };
    lvt_writable(index) | status
}

/// Index (0-7) of the 32-bit word of an ISR/TMR/IRR register offset.
fn bank_index(offset: u32, first: u32) -> Option<usize> {
    if offset >= first && offset < first + 0x80 && offset.is_multiple_of(16) {
        Some(((offset - first) / 16) as usize)
    } else {
        None
    }
}

/// A 256-bit vector register (IRR, ISR, TMR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VectorBits([u32; 8]);

impl VectorBits {
    fn set(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] |= 1 << (v & 31);
    }
    fn clear(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] &= !(1 << (v & 31));
    }
    fn get(&self, v: u8) -> bool {
        self.0[usize::from(v >> 5)] & (1 << (v & 31)) != 0
    }
    fn word(&self, i: usize) -> u32 {
        self.0.get(i).copied().unwrap_or(0)
    }
    /// The highest vector set.
    fn highest(&self) -> Option<u8> {
        (0u8..8).rev().find_map(|i| {
            let w = self.0[usize::from(i)];
            (w != 0).then(|| i * 32 + (31 - w.leading_zeros() as u8))
        })
    }
}

/// A running count of the one-shot or periodic timer: `count` input-clock
/// ticks from `loaded_at` (TSC). u128 so no input overflows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Countdown {
    loaded_at: u128,
    count: u32,
}

/// One vCPU's local APIC.
#[derive(Clone, Debug)]
pub struct LocalApic {
    id: u32,
    apic_base: u64,
    phys_addr_bits: u8,
    tsc_per_tick: u32,
    tpr: u8,
    /// xAPIC LDR (bits 31:24); the x2APIC LDR is derived from the ID.
    ldr: u32,
    /// DFR model, bits 31:28 (0xF flat, 0x0 cluster).
    dfr_model: u8,
    svr: u32,
    irr: VectorBits,
    isr: VectorBits,
    tmr: VectorBits,
    /// Errors detected since the last ESR write.
    esr_pending: u32,
    /// The readable ESR (latched by the last ESR write).
    esr: u32,
    icr_low: u32,
    /// Destination: xAPIC bits 31:24 of ICR_HIGH; x2APIC the full 32 bits.
    icr_high: u32,
    lvt: [u32; LVT_COUNT],
    timer_initial: u32,
    timer_divide: u32,
    countdown: Option<Countdown>,
    /// IA32_TSC_DEADLINE; 0 = disarmed.
    tsc_deadline: u64,
}

impl LocalApic {
    /// An APIC after power-up (SDM 11.4.7.1): base 0xFEE00000, globally
    /// enabled in xAPIC mode, BSP flag for the boot vCPU, software-disabled,
    /// LVTs masked, timer stopped. `tsc_per_tick`: TSC ticks per tick of the
    /// timer's input clock (0 is taken as 1).
    pub fn new(apic_id: u32, bsp: bool, tsc_per_tick: u32) -> Self {
        let mut apic = LocalApic {
            id: apic_id,
            apic_base: DEFAULT_APIC_BASE | APIC_BASE_EN | if bsp { APIC_BASE_BSP } else { 0 },
            phys_addr_bits: DEFAULT_PHYS_ADDR_BITS,
            tsc_per_tick: tsc_per_tick.max(1),
            tpr: 0,
            ldr: 0,
            dfr_model: 0xF,
            svr: SVR_RESET,
            irr: VectorBits::default(),
            isr: VectorBits::default(),
            tmr: VectorBits::default(),
            esr_pending: 0,
            esr: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [LVT_MASKED; LVT_COUNT],
            timer_initial: 0,
            timer_divide: 0,
            countdown: None,
            tsc_deadline: 0,
        };
        apic.reset_registers();
        apic
    }

    /// The guest's physical-address width (CPUID 0x80000008 EAX bits 7:0): base
    /// bits at and above it are reserved in IA32_APIC_BASE.
    pub fn set_phys_addr_bits(&mut self, bits: u8) {
        self.phys_addr_bits = bits;
    }

    /// Power-up reset (SDM 11.4.7.1), keeping the APIC ID and BSP flag.
    pub fn reset(&mut self) {
        self.apic_base = DEFAULT_APIC_BASE | APIC_BASE_EN | (self.apic_base & APIC_BASE_BSP);
        self.reset_registers();
    }

    /// The INIT signal (SDM 11.4.7.3): the power-up register state, but the
    /// APIC ID and IA32_APIC_BASE (so the mode, x2APIC included) are kept.
    pub fn init(&mut self) {
        self.reset_registers();
    }

    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr_model = 0xF;
        self.svr = SVR_RESET;
        self.irr = VectorBits::default();
        self.isr = VectorBits::default();
        self.tmr = VectorBits::default();
        self.esr_pending = 0;
        self.esr = 0;
        self.icr_low = 0;
        self.icr_high = 0;
        self.lvt = [LVT_MASKED; LVT_COUNT];
        self.timer_initial = 0;
        self.timer_divide = 0;
        self.countdown = None;
        self.tsc_deadline = 0;
    }

    /// The APIC ID (x2APIC ID; the xAPIC ID register shows bits 7:0).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The mode IA32_APIC_BASE selects.
    pub fn mode(&self) -> ApicMode {
        match (
            self.apic_base & APIC_BASE_EN != 0,
            self.apic_base & APIC_BASE_EXTD != 0,
        ) {
            (false, _) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        }
    }

    /// Whether the MMIO page decodes (xAPIC mode; SDM 11.12.2: in x2APIC
    /// mode it behaves like a globally disabled APIC's).
    pub fn mmio_enabled(&self) -> bool {
        self.mode() == ApicMode::XApic
    }

    /// Whether SVR bit 8 (APIC software enable) is set (SDM 11.4.7.2).
    pub fn software_enabled(&self) -> bool {
        self.svr & SVR_APIC_ENABLED != 0
    }

    /// RDMSR IA32_APIC_BASE.
    pub fn read_apic_base(&self) -> u64 {
        self.apic_base
    }

    /// The APIC base address (IA32_APIC_BASE bits MAXPHYADDR-1:12). A moved
    /// base is only recorded; whether the MMIO page follows is up to the
    /// hypervisor.
    pub fn base(&self) -> u64 {
        self.apic_base & !0xFFF
    }

    /// WRMSR IA32_APIC_BASE (SDM 11.4.4, 11.12.5): #GP for reserved bits
    /// (7:0, 9, and at or above the physical-address width), for EN = 0 with
    /// EXTD = 1, for x2APIC to xAPIC and for disabled to x2APIC. Entering the
    /// disabled state resets the registers (the power-up state, 11.12.5.1),
    /// so re-enabling finds the LVTs masked. The BSP flag is read-only.
    pub fn write_apic_base(&mut self, value: u64) -> Result<(), ApicFault> {
        let addr_mask = 1u64
            .checked_shl(u32::from(self.phys_addr_bits))
            .map_or(u64::MAX, |b| b - 1);
        if value & (APIC_BASE_RESERVED_LOW | !addr_mask) != 0 {
            return Err(ApicFault::GeneralProtection);
        }
        let new = match (value & APIC_BASE_EN != 0, value & APIC_BASE_EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(ApicFault::GeneralProtection),
        };
        let old = self.mode();
        match (old, new) {
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => {
                return Err(ApicFault::GeneralProtection)
            }
            _ => {}
        }
        self.apic_base = (value & !APIC_BASE_BSP) | (self.apic_base & APIC_BASE_BSP);
        if new == ApicMode::Disabled && old != ApicMode::Disabled {
            self.reset_registers();
        }
        Ok(())
    }

    // ---- Priorities and interrupt acceptance (SDM 11.8) ----

    /// The task priority register (SDM 11.8.3). CR8 is TPR bits 7:4: a MOV
    /// to CR8 is `set_tpr(cr8 << 4)` ([`Self::set_cr8`]), a MOV from CR8
    /// reads `tpr() >> 4` ([`Self::cr8`]) (SDM 11.8.6.1).
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Writes the task priority register.
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }

    /// CR8 as the guest reads it (TPR bits 7:4).
    pub fn cr8(&self) -> u64 {
        u64::from(self.tpr >> 4)
    }

    /// A guest MOV to CR8 (bits 3:0 of the value; the caller raises #GP for
    /// nonzero bits 63:4).
    pub fn set_cr8(&mut self, cr8: u64) {
        self.tpr = ((cr8 & 0xF) as u8) << 4;
    }

    /// The processor priority (SDM 11.8.3.1): TPR if its class is at least
    /// the highest in-service class, else that class (bits 3:0 zero).
    pub fn ppr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    /// IRR bits 255:0, one word per 32 vectors.
    pub fn irr(&self) -> [u32; 8] {
        self.irr.0
    }

    /// ISR bits 255:0.
    pub fn isr(&self) -> [u32; 8] {
        self.isr.0
    }

    /// TMR bits 255:0.
    pub fn tmr(&self) -> [u32; 8] {
        self.tmr.0
    }

    /// Accepts a fixed (or lowest-priority, once chosen) interrupt (SDM
    /// 11.8.4): sets its IRR bit and its TMR bit to the trigger mode.
    /// Returns whether it was accepted. Dropped when the APIC is disabled
    /// globally or by software (11.4.7.2; NMI, INIT and SIPI are the
    /// hypervisor's), and for vectors 0-15, which set ESR bit 6 "Received
    /// Illegal Vector" (11.5.2).
    pub fn accept_fixed(&mut self, vector: u8, level_triggered: bool) -> bool {
        if self.mode() == ApicMode::Disabled || !self.software_enabled() {
            return false;
        }
        if vector < 16 {
            self.record_error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        self.irr.set(vector);
        if level_triggered {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
        true
    }

    /// An interrupt from the APIC's own LVT (edge-triggered).
    fn deliver_local(&mut self, vector: u8) -> bool {
        if vector < 16 {
            self.record_error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        self.irr.set(vector);
        self.tmr.clear(vector);
        true
    }

    /// The vector the APIC presents to the processor: the highest IRR vector
    /// whose priority class (bits 7:4) is above the PPR's (SDM 11.8.3.1).
    /// Interrupts accepted before a software disable stay pending (11.4.7.2).
    pub fn pending_vector(&self) -> Option<u8> {
        if self.mode() == ApicMode::Disabled {
            return None;
        }
        let v = self.irr.highest()?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// The interrupt acknowledge the hypervisor performs when it injects
    /// [`Self::pending_vector`]: moves that vector from IRR to ISR (SDM
    /// 11.8.4) and returns it.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.pending_vector()?;
        self.irr.clear(v);
        self.isr.set(v);
        Some(v)
    }

    /// An EOI (SDM 11.8.5): clears the highest ISR bit; a level-triggered
    /// vector's EOI goes on to the I/O APIC.
    fn eoi(&mut self) -> ApicOutput {
        match self.isr.highest() {
            Some(v) => {
                self.isr.clear(v);
                if self.tmr.get(v) {
                    ApicOutput::Eoi { vector: v }
                } else {
                    ApicOutput::None
                }
            }
            None => ApicOutput::None,
        }
    }

    /// Records errors in the ESR (SDM 11.5.3); a newly set bit raises the LVT
    /// error interrupt if that is unmasked. An illegal error vector only sets
    /// "Received Illegal Vector" (no second interrupt).
    fn record_error(&mut self, bits: u32) {
        let new = bits & !self.esr_pending;
        self.esr_pending |= bits;
        let lvt = self.lvt[LVT_IDX_ERROR];
        if new != 0 && lvt & LVT_MASKED == 0 {
            let vector = (lvt & 0xFF) as u8;
            if vector < 16 {
                self.esr_pending |= ESR_RECEIVE_ILLEGAL_VECTOR;
            } else {
                self.irr.set(vector);
                self.tmr.clear(vector);
            }
        }
    }

    /// An ESR write: the errors since the previous write become readable.
    fn latch_esr(&mut self) {
        self.esr = self.esr_pending;
        self.esr_pending = 0;
    }

    // ---- LINT pins (SDM 11.5.1) ----

    /// Whether an 8259 PIC's INTR reaches this processor: the APIC is
    /// globally disabled (LINT0 is the INTR pin, SDM 11.4.3), or
    /// software-disabled (our VMs have no firmware to set up virtual-wire
    /// mode, so the reset state passes INTR through), or LVT LINT0 is
    /// unmasked with delivery mode ExtINT (virtual wire, 11.5.1).
    pub fn extint_allowed(&self) -> bool {
        self.lint_passes(LVT_IDX_LINT0, DeliveryMode::ExtInt)
    }

    /// Whether an NMI on LINT1 reaches the processor: as
    /// [`Self::extint_allowed`], with LVT LINT1 unmasked in delivery mode NMI.
    pub fn nmi_via_lint1(&self) -> bool {
        self.lint_passes(LVT_IDX_LINT1, DeliveryMode::Nmi)
    }

    fn lint_passes(&self, index: usize, mode: DeliveryMode) -> bool {
        if self.mode() == ApicMode::Disabled || !self.software_enabled() {
            return true;
        }
        let lvt = self.lvt[index];
        lvt & LVT_MASKED == 0 && ((lvt & LVT_DELIVERY_MODE) >> 8) as u8 == mode.bits()
    }

    // ---- Timer (SDM 11.5.4) ----

    /// The LVT timer mode.
    pub fn timer_mode(&self) -> TimerMode {
        TimerMode::of_lvt(self.lvt[LVT_IDX_TIMER])
    }

    fn timer_masked(&self) -> bool {
        self.lvt[LVT_IDX_TIMER] & LVT_MASKED != 0
    }

    /// TSC ticks per count (divisor times TSC ticks per input-clock tick).
    fn tick_len(&self) -> u128 {
        u128::from(timer_divisor(self.timer_divide)) * u128::from(self.tsc_per_tick)
    }

    fn expiry(&self, cd: Countdown) -> u128 {
        cd.loaded_at + u128::from(cd.count) * self.tick_len()
    }

    /// The current count register at `now` (0 when stopped, expired or in
    /// TSC-deadline mode).
    pub fn current_count(&self, now: u64) -> u32 {
        let Some(cd) = self.countdown else { return 0 };
        let now = u128::from(now);
        let tl = self.tick_len();
        let end = self.expiry(cd);
        if now < end {
            let ticks = now.saturating_sub(cd.loaded_at) / tl;
            return cd
                .count
                .saturating_sub(u32::try_from(ticks).unwrap_or(u32::MAX));
        }
        if self.timer_mode() != TimerMode::Periodic {
            return 0;
        }
        let period = u128::from(self.timer_initial) * tl;
        if period == 0 {
            return 0;
        }
        let ticks = ((now - end) % period) / tl;
        self.timer_initial
            .saturating_sub(u32::try_from(ticks).unwrap_or(u32::MAX))
    }

    /// The timer's interrupt at expiry: lost when the LVT entry is masked.
    fn timer_fire(&mut self) -> bool {
        if self.timer_masked() {
            return false;
        }
        let vector = (self.lvt[LVT_IDX_TIMER] & 0xFF) as u8;
        self.deliver_local(vector)
    }

    /// Brings the timer to `now` (earlier times change nothing): an expired
    /// one-shot count stops, a periodic count reloads from its expiry time
    /// (no drift; missed periods give one interrupt and the next expiry is
    /// the first one after `now`), a passed TSC deadline disarms. Each sets
    /// the LVT timer vector in IRR unless masked. Returns whether it did.
    pub fn advance(&mut self, now: u64) -> bool {
        let mut raised = false;
        if let Some(cd) = self.countdown {
            let end = self.expiry(cd);
            let t = u128::from(now);
            if t >= end {
                let period = u128::from(self.timer_initial) * self.tick_len();
                self.countdown = if self.timer_mode() == TimerMode::Periodic && period != 0 {
                    let missed = (t - end) / period;
                    Some(Countdown {
                        loaded_at: end + missed * period,
                        count: self.timer_initial,
                    })
                } else {
                    None
                };
                raised |= self.timer_fire();
            }
        }
        if self.tsc_deadline != 0 && now >= self.tsc_deadline {
            self.tsc_deadline = 0;
            raised |= self.timer_fire();
        }
        raised
    }

    /// The TSC at which [`Self::advance`] will next raise a timer interrupt:
    /// `None` when the timer is stopped or its LVT entry masked (an expiry
    /// would be lost; an unmasking write advances the timer first, so the
    /// count stays right), or when the expiry lies beyond the TSC's range.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.timer_masked() {
            return None;
        }
        if let Some(cd) = self.countdown {
            return u64::try_from(self.expiry(cd)).ok();
        }
        (self.tsc_deadline != 0).then_some(self.tsc_deadline)
    }

    /// RDMSR IA32_TSC_DEADLINE (SDM 11.5.4.1): the armed deadline, 0 when
    /// disarmed, once it has passed (the timer fired) and outside
    /// TSC-deadline mode.
    pub fn read_tsc_deadline(&self, now: u64) -> u64 {
        if self.tsc_deadline != 0 && now < self.tsc_deadline {
            self.tsc_deadline
        } else {
            0
        }
    }

    /// WRMSR IA32_TSC_DEADLINE: arms the timer in TSC-deadline mode (0
    /// disarms; a deadline not after `now` fires at once); ignored in the
    /// other modes.
    pub fn write_tsc_deadline(&mut self, value: u64, now: u64) {
        self.advance(now);
        if self.timer_mode() != TimerMode::TscDeadline {
            return;
        }
        self.tsc_deadline = value;
        self.advance(now);
    }

    fn disarm_timer(&mut self) {
        self.countdown = None;
        self.timer_initial = 0;
        self.tsc_deadline = 0;
    }

    fn write_lvt(&mut self, index: usize, value: u32) {
        let mut v = value & lvt_writable(index);
        // A software-disabled APIC keeps every LVT masked (SDM 11.4.7.2).
        if !self.software_enabled() {
            v |= LVT_MASKED;
        }
        let old = self.lvt.get(index).copied().unwrap_or(0);
        if let Some(slot) = self.lvt.get_mut(index) {
            *slot = v;
        }
        if index == LVT_IDX_TIMER && TimerMode::of_lvt(old) != TimerMode::of_lvt(v) {
            // "A write to the LVT Timer Register that changes the timer mode
            // disarms the local APIC timer" (SDM 11.5.4.1).
            self.disarm_timer();
        }
    }

    fn write_svr(&mut self, value: u32) {
        self.svr = value & SVR_WRITABLE;
        if !self.software_enabled() {
            for lvt in &mut self.lvt {
                *lvt |= LVT_MASKED;
            }
        }
    }

    fn write_initial_count(&mut self, value: u32, now: u64) {
        match self.timer_mode() {
            // Ignored in TSC-deadline mode (SDM 11.5.4.1).
            TimerMode::TscDeadline => {}
            TimerMode::Reserved => self.timer_initial = value,
            TimerMode::OneShot | TimerMode::Periodic => {
                self.timer_initial = value;
                self.countdown = (value != 0).then_some(Countdown {
                    loaded_at: u128::from(now),
                    count: value,
                });
            }
        }
    }

    fn write_divide(&mut self, value: u32, now: u64) {
        // A running count goes on from its current value at the new rate
        // (the SDM does not say; the fraction of a tick is dropped).
        let current = self.current_count(now);
        self.timer_divide = value & TIMER_DIVIDE_WRITABLE;
        if self.countdown.is_some() {
            self.countdown = (current != 0).then_some(Countdown {
                loaded_at: u128::from(now),
                count: current,
            });
        }
    }

    // ---- IPIs (SDM 11.6) ----

    /// The message of an ICR write (`low`: bits 31:0, `dest`: the
    /// destination field), or an ESR error.
    fn send_ipi(&mut self, low: u32, dest: u32) -> ApicOutput {
        let vector = (low & 0xFF) as u8;
        let mode = match DeliveryMode::from_bits(((low >> 8) & 7) as u8) {
            // ICR delivery modes 011 and 111 are reserved.
            None | Some(DeliveryMode::ExtInt) => {
                self.record_error(ESR_SEND_ILLEGAL_VECTOR);
                return ApicOutput::None;
            }
            Some(mode) => mode,
        };
        if mode == DeliveryMode::Init && low & ICR_LEVEL_ASSERT == 0 && low & ICR_TRIGGER_LEVEL != 0
        {
            // INIT level de-assert: ignored by Pentium 4 and later.
            return ApicOutput::None;
        }
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.record_error(ESR_SEND_ILLEGAL_VECTOR);
            return ApicOutput::None;
        }
        let dest = match (low >> ICR_SHORTHAND_SHIFT) & 3 {
            1 => Destination::SelfOnly,
            2 => Destination::AllIncludingSelf,
            3 => Destination::AllExcludingSelf,
            _ if low & ICR_DEST_LOGICAL != 0 => Destination::Logical(dest),
            _ => Destination::Physical(dest),
        };
        ApicOutput::Ipi(InterruptMessage {
            vector,
            mode,
            dest,
            level_triggered: false,
            assert: true,
        })
    }

    // ---- Register file ----

    /// The logical destination register as read in the current mode (x2APIC:
    /// derived from the ID, SDM 11.12.10.2).
    pub fn ldr(&self) -> u32 {
        if self.mode() == ApicMode::X2Apic {
            ((self.id >> 4) << 16) | (1 << (self.id & 0xF))
        } else {
            self.ldr
        }
    }

    /// Whether the xAPIC logical destinations use the flat model (DFR bits
    /// 31:28 = 1111; anything else is the cluster model).
    pub fn flat_model(&self) -> bool {
        self.dfr_model == 0xF
    }

    /// Registers common to both modes (reads); `None` for the ones that
    /// differ or are reserved.
    fn read_common(&self, offset: u32, now: u64) -> Option<u32> {
        if let Some(i) = bank_index(offset, ISR0) {
            return Some(self.isr.word(i));
        }
        if let Some(i) = bank_index(offset, TMR0) {
            return Some(self.tmr.word(i));
        }
        if let Some(i) = bank_index(offset, IRR0) {
            return Some(self.irr.word(i));
        }
        if let Some(i) = lvt_index(offset) {
            return self.lvt.get(i).copied();
        }
        Some(match offset {
            VERSION => VERSION_VALUE,
            TPR => u32::from(self.tpr),
            PPR => u32::from(self.ppr()),
            SVR => self.svr,
            ESR => self.esr,
            TIMER_INITIAL => self.timer_initial,
            TIMER_CURRENT => self.current_count(now),
            TIMER_DIVIDE => self.timer_divide,
            _ => return None,
        })
    }

    fn is_read_only_common(offset: u32) -> bool {
        matches!(offset, VERSION | PPR | TIMER_CURRENT)
            || bank_index(offset, ISR0).is_some()
            || bank_index(offset, TMR0).is_some()
            || bank_index(offset, IRR0).is_some()
    }

    /// A 32-bit load from the xAPIC page at `offset` (SDM 11.4.1, Table
    /// 11-1). Outside xAPIC mode the page does not decode: 0. Reserved
    /// offsets read 0 and set ESR bit 7.
    pub fn mmio_read(&mut self, offset: u32, now: u64) -> u32 {
        if !self.mmio_enabled() {
            return 0;
        }
        if let Some(v) = self.read_common(offset, now) {
            return v;
        }
        match offset {
            ID => (self.id & 0xFF) << 24,
            APR | RRD | EOI => 0,
            LDR => self.ldr,
            DFR => (u32::from(self.dfr_model) << 28) | 0x0FFF_FFFF,
            // Delivery status (bit 12) always idle.
            ICR_LOW => self.icr_low,
            ICR_HIGH => self.icr_high,
            _ => {
                self.record_error(ESR_ILLEGAL_REGISTER_ADDRESS);
                0
            }
        }
    }

    /// A 32-bit store to the xAPIC page at `offset`. Outside xAPIC mode it is
    /// ignored. Read-only registers ignore it; reserved offsets set ESR
    /// bit 7.
    pub fn mmio_write(&mut self, offset: u32, value: u32, now: u64) -> ApicOutput {
        if !self.mmio_enabled() {
            return ApicOutput::None;
        }
        self.advance(now);
        if let Some(i) = lvt_index(offset) {
            self.write_lvt(i, value);
            return ApicOutput::None;
        }
        if Self::is_read_only_common(offset) {
            return ApicOutput::None;
        }
        match offset {
            // The ID is the hypervisor's (read-only here); APR, RRD read-only.
            ID | APR | RRD => {}
            TPR => self.tpr = value as u8,
            // Any value (software should write 0).
            EOI => return self.eoi(),
            LDR => self.ldr = value & 0xFF00_0000,
            DFR => self.dfr_model = (value >> 28) as u8,
            SVR => self.write_svr(value),
            ESR => self.latch_esr(),
            ICR_LOW => {
                self.icr_low = value & ICR_LOW_WRITABLE;
                return self.send_ipi(self.icr_low, self.icr_high >> 24);
            }
            ICR_HIGH => self.icr_high = value & 0xFF00_0000,
            TIMER_INITIAL => self.write_initial_count(value, now),
            TIMER_DIVIDE => self.write_divide(value, now),
            _ => self.record_error(ESR_ILLEGAL_REGISTER_ADDRESS),
        }
        ApicOutput::None
    }

    /// The xAPIC offset of an x2APIC MSR, if in range and x2APIC mode is on
    /// (SDM 11.12.2: otherwise #GP).
    fn x2apic_offset(&self, msr: u32) -> Result<u32, ApicFault> {
        if self.mode() != ApicMode::X2Apic || !(X2APIC_MSR_FIRST..=X2APIC_MSR_LAST).contains(&msr) {
            return Err(ApicFault::GeneralProtection);
        }
        Ok((msr - X2APIC_MSR_FIRST) << 4)
    }

    /// RDMSR of an x2APIC register (SDM 11.12.1.2, Table 11-6): #GP outside
    /// x2APIC mode, for reserved MSRs (DFR, ICR bits 63:32, APR, RRD
    /// included) and for the write-only EOI and SELF IPI.
    pub fn msr_read(&self, msr: u32, now: u64) -> Result<u64, ApicFault> {
        let offset = self.x2apic_offset(msr)?;
        if let Some(v) = self.read_common(offset, now) {
            return Ok(u64::from(v));
        }
        match offset {
            ID => Ok(u64::from(self.id)),
            LDR => Ok(u64::from(self.ldr())),
            ICR_LOW => Ok(u64::from(self.icr_low) | (u64::from(self.icr_high) << 32)),
            _ => Err(ApicFault::GeneralProtection),
        }
    }

    /// WRMSR of an x2APIC register: #GP outside x2APIC mode, for reserved
    /// MSRs, read-only registers (ID, version, LDR, PPR, ISR/TMR/IRR, current
    /// count) and nonzero reserved bits (SDM 11.12.1.3): bits 63:32 of all
    /// but the ICR, a nonzero EOI or ESR value, SELF IPI bits 31:8.
    pub fn msr_write(&mut self, msr: u32, value: u64, now: u64) -> Result<ApicOutput, ApicFault> {
        const GP: Result<ApicOutput, ApicFault> = Err(ApicFault::GeneralProtection);
        let offset = self.x2apic_offset(msr)?;
        let low = value as u32;
        if offset == ICR_LOW {
            if low & X2APIC_ICR_RESERVED != 0 {
                return GP;
            }
            self.advance(now);
            self.icr_low = low & ICR_LOW_WRITABLE;
            self.icr_high = (value >> 32) as u32;
            return Ok(self.send_ipi(self.icr_low, self.icr_high));
        }
        if value >> 32 != 0 {
            return GP;
        }
        if let Some(i) = lvt_index(offset) {
            if low & !lvt_accepted(i) != 0 {
                return GP;
            }
            self.advance(now);
            self.write_lvt(i, low);
            return Ok(ApicOutput::None);
        }
        let reserved = match offset {
            TPR => !0xFF,
            EOI | ESR => !0,
            SVR => !SVR_WRITABLE,
            TIMER_INITIAL => 0,
            TIMER_DIVIDE => !TIMER_DIVIDE_WRITABLE,
            SELF_IPI => !0xFF,
            // Read-only or reserved.
            _ => return GP,
        };
        if low & reserved != 0 {
            return GP;
        }
        self.advance(now);
        match offset {
            TPR => self.tpr = low as u8,
            EOI => return Ok(self.eoi()),
            ESR => self.latch_esr(),
            SVR => self.write_svr(low),
            TIMER_INITIAL => self.write_initial_count(low, now),
            TIMER_DIVIDE => self.write_divide(low, now),
            // SELF IPI: a fixed, edge IPI to this APIC (SDM 11.12.11).
            SELF_IPI => return Ok(self.send_ipi(low | (1 << ICR_SHORTHAND_SHIFT), 0)),
            _ => {}
        }
        Ok(ApicOutput::None)
    }
}

// ---- Destinations (SDM 11.6.2, 11.12.10) ----

/// Whether `apic` is a destination of `dest`, in its own mode: physical
/// destinations compare the APIC ID (xAPIC: bits 7:0) or are the broadcast
/// (0xFF in xAPIC mode, 0xFFFF_FFFF in x2APIC mode); logical xAPIC
/// destinations (8 bits) use the flat model (LDR bits 31:24 AND the
/// destination nonzero) or the cluster model (bits 7:4 equal, bits 3:0 AND
/// nonzero), 0xFF being a broadcast in both; logical x2APIC destinations
/// name a cluster (bits 31:16, equal to LDR's) and members (bits 15:0, AND
/// with LDR's nonzero), 0xFFFF_FFFF a broadcast. Shorthands are decided by
/// `is_sender`. A globally disabled APIC receives nothing.
pub fn matches(apic: &LocalApic, dest: Destination, is_sender: bool) -> bool {
    let mode = apic.mode();
    match (dest, mode) {
        (_, ApicMode::Disabled) => false,
        (Destination::SelfOnly, _) => is_sender,
        (Destination::AllIncludingSelf, _) => true,
        (Destination::AllExcludingSelf, _) => !is_sender,
        (Destination::Physical(d), ApicMode::X2Apic) => d == X2APIC_BROADCAST || d == apic.id,
        (Destination::Physical(d), _) => d == XAPIC_BROADCAST || d == apic.id & 0xFF,
        (Destination::Logical(d), ApicMode::X2Apic) => {
            let ldr = apic.ldr();
            d == X2APIC_BROADCAST || (d >> 16 == ldr >> 16 && d & ldr & 0xFFFF != 0)
        }
        (Destination::Logical(d), _) => {
            if d == XAPIC_BROADCAST {
                return true;
            }
            if d > 0xFF {
                return false;
            }
            let l = apic.ldr >> 24;
            if apic.flat_model() {
                l & d != 0
            } else {
                l >> 4 == d >> 4 && l & d & 0xF != 0
            }
        }
    }
}

/// The destinations of `dest` among `apics` (a VM's APICs, in vCPU order) as
/// a mask of indices; `sender` is the index of the sending APIC (`None` for
/// an I/O APIC message). Only the first [`MAX_TARGETS`] APICs can be named.
/// Since the hypervisor passes only the VM's own APICs, a message cannot
/// reach another VM's vCPUs.
pub fn targets<'a>(
    apics: impl Iterator<Item = &'a LocalApic>,
    sender: Option<usize>,
    dest: Destination,
) -> u64 {
    apics
        .take(MAX_TARGETS)
        .enumerate()
        .filter(|&(i, apic)| matches(apic, dest, sender == Some(i)))
        .fold(0, |mask, (i, _)| mask | (1 << i))
}

/// The one APIC of `mask` (indices into `apics`) that a lowest-priority
/// message goes to, as a fixed interrupt: the lowest processor priority,
/// then the lowest index (SDM 11.6.2.4 leaves the arbitration to the model).
pub fn lowest_priority_target<'a>(
    apics: impl Iterator<Item = &'a LocalApic>,
    mask: u64,
) -> Option<usize> {
    apics
        .take(MAX_TARGETS)
        .enumerate()
        .filter(|&(i, _)| mask & (1 << i) != 0)
        .min_by_key(|&(i, apic)| (apic.ppr(), i))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TPT: u32 = 100;

    /// An xAPIC, software-enabled with spurious vector 0xFF.
    fn enabled(id: u32) -> LocalApic {
        let mut a = LocalApic::new(id, id == 0, TPT);
        a.mmio_write(SVR, 0x1FF, 0);
        a
    }

    fn x2(id: u32) -> LocalApic {
        let mut a = enabled(id);
        a.write_apic_base(DEFAULT_APIC_BASE | APIC_BASE_EN | APIC_BASE_EXTD)
            .unwrap();
        a
    }

    fn msr(offset: u32) -> u32 {
        x2apic_msr(offset)
    }

    fn ipi(out: ApicOutput) -> InterruptMessage {
        match out {
            ApicOutput::Ipi(m) => m,
            other => panic!("expected an IPI, got {other:?}"),
        }
    }

    #[test]
    fn reset_state_per_sdm() {
        let mut a = LocalApic::new(0, true, TPT);
        assert_eq!(a.read_apic_base(), 0xFEE0_0900);
        assert_eq!(a.base(), 0xFEE0_0000);
        assert_eq!(a.mode(), ApicMode::XApic);
        let mut ap = LocalApic::new(1, false, TPT);
        assert_eq!(ap.read_apic_base(), 0xFEE0_0800);
        assert_eq!(a.mmio_read(SVR, 0), 0xFF);
        assert!(!a.software_enabled());
        for off in [
            LVT_CMCI,
            LVT_TIMER,
            LVT_THERMAL,
            LVT_PERF,
            LVT_LINT0,
            LVT_LINT1,
            LVT_ERROR,
        ] {
            assert_eq!(a.mmio_read(off, 0), LVT_MASKED, "{off:#x}");
        }
        assert_eq!(a.mmio_read(DFR, 0), 0xFFFF_FFFF);
        assert_eq!(a.mmio_read(LDR, 0), 0);
        assert_eq!(a.mmio_read(TPR, 0), 0);
        for i in 0..8 {
            assert_eq!(a.mmio_read(IRR0 + i * 16, 0), 0);
            assert_eq!(a.mmio_read(ISR0 + i * 16, 0), 0);
            assert_eq!(a.mmio_read(TMR0 + i * 16, 0), 0);
        }
        assert_eq!(a.mmio_read(TIMER_INITIAL, 0), 0);
        assert_eq!(a.mmio_read(TIMER_CURRENT, 0), 0);
        assert_eq!(a.mmio_read(TIMER_DIVIDE, 0), 0);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(ap.mmio_read(ESR, 0), 0);
    }

    #[test]
    fn xapic_id_version_ldr_dfr() {
        let mut a = LocalApic::new(0x12, false, TPT);
        assert_eq!(a.mmio_read(ID, 0), 0x1200_0000);
        a.mmio_write(ID, 0x3400_0000, 0);
        assert_eq!(a.mmio_read(ID, 0), 0x1200_0000, "ID is read-only here");
        assert_eq!(a.mmio_read(VERSION, 0), 0x0006_0014);
        assert_eq!(a.mmio_read(VERSION, 0) & (1 << 24), 0);
        a.mmio_write(LDR, 0xA5FF_FFFF, 0);
        assert_eq!(a.mmio_read(LDR, 0), 0xA500_0000);
        a.mmio_write(DFR, 0x0000_0000, 0);
        assert_eq!(a.mmio_read(DFR, 0), 0x0FFF_FFFF);
        assert!(!a.flat_model());
        a.mmio_write(DFR, 0xF000_0000, 0);
        assert_eq!(a.mmio_read(DFR, 0), 0xFFFF_FFFF);
        assert!(a.flat_model());
        // Version and PPR are read-only.
        a.mmio_write(VERSION, 0, 0);
        a.mmio_write(PPR, 0xFF, 0);
        assert_eq!(a.mmio_read(VERSION, 0), VERSION_VALUE);
        assert_eq!(a.mmio_read(PPR, 0), 0);
        assert_eq!(a.mmio_read(ESR, 0), 0);
        a.mmio_write(ESR, 0, 0);
        assert_eq!(a.mmio_read(ESR, 0), 0, "read-only writes set no error");
    }

    #[test]
    fn xapic_reserved_offsets_set_illegal_register_address() {
        let mut a = enabled(0);
        for off in [
            0x0, 0x10, 0x40, 0x70, 0x290, 0x2E0, 0x3A0, 0x3D0, SELF_IPI, 0x400, 0xFF0, 0x24,
            0x1_0000,
        ] {
            assert_eq!(a.mmio_read(off, 0), 0, "{off:#x}");
            a.mmio_write(ESR, 0, 0);
            assert_eq!(
                a.mmio_read(ESR, 0),
                ESR_ILLEGAL_REGISTER_ADDRESS,
                "{off:#x}"
            );
            assert_eq!(a.mmio_write(off, 0xFFFF_FFFF, 0), ApicOutput::None);
            a.mmio_write(ESR, 0, 0);
            assert_eq!(
                a.mmio_read(ESR, 0),
                ESR_ILLEGAL_REGISTER_ADDRESS,
                "{off:#x}"
            );
            a.mmio_write(ESR, 0, 0);
        }
        // APR, RRD and EOI are not reserved: read 0 without error.
        for off in [APR, RRD, EOI] {
            assert_eq!(a.mmio_read(off, 0), 0);
        }
        a.mmio_write(ESR, 0, 0);
        assert_eq!(a.mmio_read(ESR, 0), 0);
    }

    #[test]
    fn apic_base_transitions() {
        const EN: u64 = APIC_BASE_EN;
        const EXTD: u64 = APIC_BASE_EXTD;
        const B: u64 = DEFAULT_APIC_BASE;
        let gp = Err(ApicFault::GeneralProtection);
        let mut a = LocalApic::new(3, true, TPT);
        // EN = 0, EXTD = 1 is invalid from any state.
        assert_eq!(a.write_apic_base(B | EXTD), gp);
        // xAPIC -> x2APIC -> xAPIC refused.
        assert_eq!(a.write_apic_base(B | EN | EXTD), Ok(()));
        assert_eq!(a.mode(), ApicMode::X2Apic);
        assert_eq!(a.read_apic_base(), B | EN | EXTD | APIC_BASE_BSP);
        assert_eq!(a.write_apic_base(B | EN), gp);
        assert_eq!(a.write_apic_base(B | EXTD), gp);
        assert_eq!(a.mode(), ApicMode::X2Apic);
        // x2APIC -> disabled -> x2APIC refused -> xAPIC.
        assert_eq!(a.write_apic_base(B), Ok(()));
        assert_eq!(a.mode(), ApicMode::Disabled);
        assert_eq!(a.write_apic_base(B | EN | EXTD), gp);
        assert_eq!(a.write_apic_base(B | EN), Ok(()));
        assert_eq!(a.mode(), ApicMode::XApic);
        // xAPIC -> disabled, disabled -> disabled.
        assert_eq!(a.write_apic_base(B), Ok(()));
        assert_eq!(a.write_apic_base(B), Ok(()));
        // Reserved bits: 7:0, 9, and from the physical-address width up.
        for bad in [1, 0x80, 1 << 9, 1 << 36, 1 << 63] {
            assert_eq!(a.write_apic_base(B | EN | bad), gp, "{bad:#x}");
        }
        a.set_phys_addr_bits(40);
        assert_eq!(a.write_apic_base((1 << 39) | EN), Ok(()));
        assert_eq!(a.base(), 1 << 39, "relocation recorded");
        assert_eq!(a.write_apic_base((1 << 40) | EN), gp);
        a.set_phys_addr_bits(64);
        assert_eq!(a.write_apic_base((1 << 63) | EN), Ok(()));
        // The BSP flag is read-only.
        assert_eq!(a.write_apic_base(B | EN), Ok(()));
        assert_eq!(a.read_apic_base(), B | EN | APIC_BASE_BSP);
        let mut ap = LocalApic::new(1, false, TPT);
        assert_eq!(ap.write_apic_base(B | EN | APIC_BASE_BSP), Ok(()));
        assert_eq!(ap.read_apic_base(), B | EN);
    }

    #[test]
    fn disabling_resets_state_and_masks_lvts() {
        let mut a = enabled(2);
        a.mmio_write(LVT_TIMER, 0x40, 0);
        a.mmio_write(TIMER_INITIAL, 1000, 0);
        a.mmio_write(TPR, 0x20, 0);
        assert!(a.accept_fixed(0x50, false));
        a.write_apic_base(DEFAULT_APIC_BASE).unwrap();
        assert_eq!(a.pending_vector(), None);
        assert!(!a.accept_fixed(0x51, false), "globally disabled");
        assert_eq!(a.mmio_read(TPR, 0), 0, "no MMIO when disabled");
        assert_eq!(a.msr_read(msr(TPR), 0), Err(ApicFault::GeneralProtection));
        a.write_apic_base(DEFAULT_APIC_BASE | APIC_BASE_EN).unwrap();
        assert_eq!(a.mmio_read(LVT_TIMER, 0), LVT_MASKED);
        assert_eq!(a.mmio_read(SVR, 0), SVR_RESET);
        assert_eq!(a.mmio_read(TPR, 0), 0);
        assert_eq!(a.mmio_read(TIMER_INITIAL, 0), 0);
        assert_eq!(a.irr(), [0; 8]);
        assert_eq!(a.mmio_read(ID, 0), 0x0200_0000, "ID kept");
    }

    #[test]
    fn init_keeps_id_and_mode() {
        let mut a = x2(0x123);
        a.msr_write(msr(TPR), 0x30, 0).unwrap();
        a.msr_write(msr(LVT_TIMER), 0x40, 0).unwrap();
        a.accept_fixed(0x40, true);
        a.init();
        assert_eq!(a.mode(), ApicMode::X2Apic);
        assert_eq!(a.msr_read(msr(ID), 0), Ok(0x123));
        assert_eq!(a.msr_read(msr(TPR), 0), Ok(0));
        assert_eq!(a.msr_read(msr(SVR), 0), Ok(0xFF));
        assert_eq!(a.msr_read(msr(LVT_TIMER), 0), Ok(u64::from(LVT_MASKED)));
        assert_eq!(a.irr(), [0; 8]);
        assert_eq!(a.tmr(), [0; 8]);
        let mut b = enabled(5);
        b.write_apic_base(0xFEC0_0000 | APIC_BASE_EN).unwrap();
        b.init();
        assert_eq!(b.base(), 0xFEC0_0000);
        assert_eq!(b.mmio_read(ID, 0), 0x0500_0000);
        assert!(!b.software_enabled());
        b.reset();
        assert_eq!(b.base(), DEFAULT_APIC_BASE);
    }

    #[test]
    fn x2apic_registers() {
        let mut a = x2(0x1234_5678);
        assert_eq!(a.msr_read(msr(ID), 0), Ok(0x1234_5678));
        assert_eq!(a.msr_read(msr(VERSION), 0), Ok(u64::from(VERSION_VALUE)));
        // LDR = cluster (id >> 4) in 31:16, 1 << (id & 0xF) in 15:0.
        assert_eq!(a.msr_read(msr(LDR), 0), Ok(0x4567_0100));
        let b = x2(0x21);
        assert_eq!(b.msr_read(msr(LDR), 0), Ok(0x0002_0002));
        a.msr_write(msr(TPR), 0x45, 0).unwrap();
        assert_eq!(a.msr_read(msr(TPR), 0), Ok(0x45));
        assert_eq!(a.tpr(), 0x45);
        a.msr_write(msr(LVT_LINT0), 0x700, 0).unwrap();
        assert_eq!(a.msr_read(msr(LVT_LINT0), 0), Ok(0x700));
        a.msr_write(msr(TIMER_DIVIDE), 0xB, 0).unwrap();
        assert_eq!(a.msr_read(msr(TIMER_DIVIDE), 0), Ok(0xB));
        // The MMIO page does not decode in x2APIC mode.
        assert_eq!(a.mmio_read(ID, 0), 0);
        assert_eq!(a.mmio_write(TPR, 0, 0), ApicOutput::None);
        assert_eq!(a.tpr(), 0x45);
        assert!(!a.mmio_enabled());
    }

    #[test]
    fn x2apic_gp_rules() {
        const GP: ApicFault = ApicFault::GeneralProtection;
        // Any access outside x2APIC mode.
        let mut x = enabled(1);
        assert_eq!(x.msr_read(msr(ID), 0), Err(GP));
        assert_eq!(x.msr_write(msr(TPR), 0, 0), Err(GP));
        let mut a = x2(1);
        // Outside the range.
        assert_eq!(a.msr_read(0x7FF, 0), Err(GP));
        assert_eq!(a.msr_read(0x900, 0), Err(GP));
        // Reserved MSRs, both directions (DFR, ICR high, APR, RRD...).
        for off in [
            0x0, 0x10, 0x40, APR, RRD, DFR, 0x290, ICR_HIGH, 0x3A0, 0x3D0,
        ] {
            assert_eq!(a.msr_read(msr(off), 0), Err(GP), "read {off:#x}");
            assert_eq!(a.msr_write(msr(off), 0, 0), Err(GP), "write {off:#x}");
        }
        for m in 0x840..=0x8FF {
            assert_eq!(a.msr_read(m, 0), Err(GP), "{m:#x}");
            assert_eq!(a.msr_write(m, 0, 0), Err(GP), "{m:#x}");
        }
        // Writes to read-only registers.
        for off in [
            ID,
            VERSION,
            LDR,
            PPR,
            ISR0,
            ISR0 + 0x70,
            TMR0,
            TMR0 + 0x70,
            IRR0,
            IRR0 + 0x70,
            TIMER_CURRENT,
        ] {
            assert!(a.msr_read(msr(off), 0).is_ok(), "read {off:#x}");
            assert_eq!(a.msr_write(msr(off), 0, 0), Err(GP), "write {off:#x}");
        }
        // Reads of write-only registers.
        assert_eq!(a.msr_read(msr(EOI), 0), Err(GP));
        assert_eq!(a.msr_read(X2APIC_SELF_IPI_MSR, 0), Err(GP));
        // Reserved bits.
        assert_eq!(a.msr_write(msr(EOI), 1, 0), Err(GP));
        assert_eq!(a.msr_write(msr(EOI), 0, 0), Ok(ApicOutput::None));
        assert_eq!(a.msr_write(msr(ESR), 1, 0), Err(GP));
        assert_eq!(a.msr_write(msr(ESR), 0, 0), Ok(ApicOutput::None));
        assert_eq!(a.msr_write(X2APIC_SELF_IPI_MSR, 0x100, 0), Err(GP));
        assert_eq!(a.msr_write(msr(TPR), 0x100, 0), Err(GP));
        assert_eq!(a.msr_write(msr(TPR), 1 << 32, 0), Err(GP));
        assert_eq!(
            a.msr_write(msr(SVR), 1 << 12, 0),
            Err(GP),
            "no EOI-broadcast suppression"
        );
        assert_eq!(a.msr_write(msr(SVR), 0x3FF, 0), Ok(ApicOutput::None));
        assert_eq!(a.msr_write(msr(TIMER_DIVIDE), 0x4, 0), Err(GP));
        assert_eq!(a.msr_write(msr(TIMER_INITIAL), 1 << 32, 0), Err(GP));
        assert_eq!(a.msr_write(msr(LVT_TIMER), 1 << 19, 0), Err(GP));
        assert_eq!(
            a.msr_write(msr(LVT_TIMER), 0x700, 0),
            Err(GP),
            "no delivery mode"
        );
        assert_eq!(a.msr_write(msr(LVT_ERROR), 1 << 15, 0), Err(GP));
        assert_eq!(a.msr_write(msr(LVT_THERMAL), 1 << 13, 0), Err(GP));
        // Read-only status bits are accepted and ignored.
        assert_eq!(
            a.msr_write(msr(LVT_LINT0), 0x5000 | 0x20, 0),
            Ok(ApicOutput::None)
        );
        assert_eq!(a.msr_read(msr(LVT_LINT0), 0), Ok(0x20));
        assert_eq!(a.msr_write(msr(LVT_LINT1), 1 << 17, 0), Err(GP));
        // ICR: bits 13, 17:16, 31:20 reserved; bit 12 ignored.
        for bad in [1 << 13, 1 << 16, 1 << 17, 1 << 20, 1 << 31] {
            assert_eq!(
                a.msr_write(msr(ICR_LOW), 0x40 | bad, 0),
                Err(GP),
                "{bad:#x}"
            );
        }
        assert!(matches!(
            a.msr_write(msr(ICR_LOW), 0x1040, 0),
            Ok(ApicOutput::Ipi(_))
        ));
        assert_eq!(a.msr_read(msr(ICR_LOW), 0), Ok(0x40));
    }

    #[test]
    fn priority_irr_tpr_ppr() {
        let mut a = enabled(0);
        assert!(a.accept_fixed(0x31, false));
        assert!(a.accept_fixed(0x45, false));
        assert_eq!(a.pending_vector(), Some(0x45));
        a.set_tpr(0x45);
        assert_eq!(a.ppr(), 0x45);
        assert_eq!(a.pending_vector(), None, "class 4 not above TPR class 4");
        a.set_tpr(0x3F);
        assert_eq!(a.pending_vector(), Some(0x45));
        a.set_cr8(4);
        assert_eq!(a.tpr(), 0x40);
        assert_eq!(a.cr8(), 4);
        assert_eq!(a.mmio_read(TPR, 0), 0x40);
        assert_eq!(a.pending_vector(), None);
        a.mmio_write(TPR, 0, 0);
        // ISR nesting: acknowledging 0x45 leaves 0x31 below PPR.
        assert_eq!(a.acknowledge(), Some(0x45));
        assert_eq!(a.ppr(), 0x40);
        assert_eq!(a.mmio_read(PPR, 0), 0x40);
        assert_eq!(a.pending_vector(), None);
        assert!(a.accept_fixed(0x4F, false));
        assert_eq!(a.pending_vector(), None, "same class as in service");
        assert!(a.accept_fixed(0x60, false));
        assert_eq!(a.acknowledge(), Some(0x60));
        assert_eq!(a.mmio_read(ISR0 + 0x30, 0), 1 << 0);
        assert_eq!(a.mmio_read(ISR0 + 0x20, 0), 1 << 5);
        // A TPR above the ISR class wins.
        a.set_tpr(0x72);
        assert_eq!(a.ppr(), 0x72);
        a.set_tpr(0);
        assert_eq!(a.ppr(), 0x60);
        // EOI clears the highest ISR bit only.
        assert_eq!(a.mmio_write(EOI, 0, 0), ApicOutput::None);
        assert_eq!(a.isr()[3], 0);
        assert_eq!(a.isr()[2], 1 << 5);
        assert_eq!(a.pending_vector(), None);
        a.mmio_write(EOI, 0, 0);
        assert_eq!(a.isr(), [0; 8]);
        assert_eq!(a.acknowledge(), Some(0x4F));
        a.mmio_write(EOI, 0, 0);
        assert_eq!(a.acknowledge(), Some(0x31));
        a.mmio_write(EOI, 0, 0);
        assert_eq!(a.acknowledge(), None);
        assert_eq!(
            a.mmio_write(EOI, 0, 0),
            ApicOutput::None,
            "EOI with empty ISR"
        );
    }

    #[test]
    fn level_eoi_output_and_tmr() {
        let mut a = enabled(0);
        assert!(a.accept_fixed(0x80, true));
        assert_eq!(a.mmio_read(TMR0 + 0x40, 0), 1);
        assert_eq!(a.mmio_read(IRR0 + 0x40, 0), 1);
        assert_eq!(a.acknowledge(), Some(0x80));
        assert_eq!(a.mmio_read(IRR0 + 0x40, 0), 0);
        assert_eq!(a.mmio_write(EOI, 0, 0), ApicOutput::Eoi { vector: 0x80 });
        // Edge acceptance clears the TMR bit.
        assert!(a.accept_fixed(0x80, false));
        assert_eq!(a.tmr()[4], 0);
        a.acknowledge();
        assert_eq!(a.mmio_write(EOI, 0, 0), ApicOutput::None);
        // x2APIC EOI MSR.
        let mut b = x2(1);
        b.accept_fixed(0x90, true);
        b.acknowledge();
        assert_eq!(
            b.msr_write(msr(EOI), 0, 0),
            Ok(ApicOutput::Eoi { vector: 0x90 })
        );
    }

    #[test]
    fn illegal_vectors_and_esr_latching() {
        let mut a = enabled(0);
        assert!(!a.accept_fixed(15, false));
        assert_eq!(a.irr(), [0; 8]);
        assert_eq!(a.mmio_read(ESR, 0), 0, "not readable before a write");
        a.mmio_write(ESR, 0, 0);
        assert_eq!(a.mmio_read(ESR, 0), ESR_RECEIVE_ILLEGAL_VECTOR);
        // The latched value stays until the next write.
        assert_eq!(a.mmio_read(ESR, 0), ESR_RECEIVE_ILLEGAL_VECTOR);
        a.mmio_write(ESR, 0, 0);
        assert_eq!(a.mmio_read(ESR, 0), 0);
        // Sending an illegal vector: bit 5, nothing sent.
        assert_eq!(a.mmio_write(ICR_LOW, 0x0000_4005, 0), ApicOutput::None);
        assert_eq!(
            a.mmio_write(ICR_LOW, 0x0000_4105, 0),
            ApicOutput::None,
            "lowest priority"
        );
        a.mmio_write(ESR, 0, 0);
        assert_eq!(a.mmio_read(ESR, 0), ESR_SEND_ILLEGAL_VECTOR);
        // NMI and start-up IPIs have no illegal vectors.
        assert!(matches!(
            a.mmio_write(ICR_LOW, 0x0000_4400, 0),
            ApicOutput::Ipi(_)
        ));
        assert!(matches!(
            a.mmio_write(ICR_LOW, 0x0000_4601, 0),
            ApicOutput::Ipi(_)
        ));
        a.mmio_write(ESR, 0, 0);
        assert_eq!(a.mmio_read(ESR, 0), 0);
        // Reserved delivery modes 011 and 111: bit 5, nothing sent.
        assert_eq!(a.mmio_write(ICR_LOW, 0x0000_4340, 0), ApicOutput::None);
        assert_eq!(a.mmio_write(ICR_LOW, 0x0000_4740, 0), ApicOutput::None);
        a.mmio_write(ESR, 0, 0);
        assert_eq!(a.mmio_read(ESR, 0), ESR_SEND_ILLEGAL_VECTOR);
        // x2APIC: SELF IPI with an illegal vector.
        let mut b = x2(0);
        assert_eq!(b.msr_write(X2APIC_SELF_IPI_MSR, 3, 0), Ok(ApicOutput::None));
        b.msr_write(msr(ESR), 0, 0).unwrap();
        assert_eq!(
            b.msr_read(msr(ESR), 0),
            Ok(u64::from(ESR_SEND_ILLEGAL_VECTOR))
        );
    }

    #[test]
    fn error_lvt_raises_on_new_errors() {
        let mut a = enabled(0);
        a.mmio_write(LVT_ERROR, 0xFE, 0);
        a.accept_fixed(1, false);
        assert_eq!(a.pending_vector(), Some(0xFE));
        assert_eq!(a.acknowledge(), Some(0xFE));
        a.mmio_write(EOI, 0, 0);
        // The same error again before the handler's ESR write: no new one.
        a.accept_fixed(2, false);
        assert_eq!(a.pending_vector(), None);
        // A different error is new.
        a.mmio_write(ICR_LOW, 0x4001, 0);
        assert_eq!(a.acknowledge(), Some(0xFE));
        a.mmio_write(EOI, 0, 0);
        a.mmio_write(ESR, 0, 0);
        assert_eq!(
            a.mmio_read(ESR, 0),
            ESR_RECEIVE_ILLEGAL_VECTOR | ESR_SEND_ILLEGAL_VECTOR
        );
        // After the ESR write the error is new again.
        a.accept_fixed(2, false);
        assert_eq!(a.pending_vector(), Some(0xFE));
        // An illegal error vector only records itself.
        let mut b = enabled(0);
        b.mmio_write(LVT_ERROR, 0x05, 0);
        b.mmio_read(0x40, 0);
        assert_eq!(b.irr(), [0; 8]);
        b.mmio_write(ESR, 0, 0);
        assert_eq!(
            b.mmio_read(ESR, 0),
            ESR_ILLEGAL_REGISTER_ADDRESS | ESR_RECEIVE_ILLEGAL_VECTOR
        );
    }

    #[test]
    fn software_disabled_drops_fixed_and_masks_lvts() {
        let mut a = LocalApic::new(0, true, TPT);
        assert!(!a.accept_fixed(0x40, false));
        assert_eq!(a.pending_vector(), None);
        // LVT writes keep the mask while software-disabled.
        a.mmio_write(LVT_TIMER, 0x30, 0);
        assert_eq!(a.mmio_read(LVT_TIMER, 0), 0x30 | LVT_MASKED);
        a.mmio_write(SVR, 0x1FF, 0);
        assert!(a.accept_fixed(0x40, false));
        a.mmio_write(LVT_TIMER, 0x30, 0);
        assert_eq!(a.mmio_read(LVT_TIMER, 0), 0x30);
        // Disabling masks every LVT; pending IRR bits stay.
        a.mmio_write(SVR, 0xFF, 0);
        assert_eq!(a.mmio_read(LVT_TIMER, 0), 0x30 | LVT_MASKED);
        assert_eq!(a.pending_vector(), Some(0x40));
        assert!(!a.accept_fixed(0x41, false));
        // Spurious vector and focus bit are kept, bit 12 is not.
        a.mmio_write(SVR, 0x13EF, 0);
        assert_eq!(a.mmio_read(SVR, 0), 0x3EF);
    }

    #[test]
    fn extint_allowed_cases() {
        let mut a = LocalApic::new(0, true, TPT);
        assert!(a.extint_allowed(), "software-disabled: pass-through");
        assert!(a.nmi_via_lint1());
        a.mmio_write(SVR, 0x1FF, 0);
        assert!(!a.extint_allowed(), "enabled, LINT0 masked");
        assert!(!a.nmi_via_lint1());
        a.mmio_write(LVT_LINT0, 0x700, 0);
        assert!(a.extint_allowed(), "virtual wire");
        a.mmio_write(LVT_LINT0, 0x700 | LVT_MASKED, 0);
        assert!(!a.extint_allowed());
        a.mmio_write(LVT_LINT0, 0x000, 0);
        assert!(!a.extint_allowed(), "fixed, not ExtINT");
        a.mmio_write(LVT_LINT1, 0x400, 0);
        assert!(a.nmi_via_lint1());
        a.write_apic_base(DEFAULT_APIC_BASE).unwrap();
        assert!(a.extint_allowed(), "globally disabled");
        assert!(a.nmi_via_lint1());
    }

    #[test]
    fn divide_encodings() {
        let table = [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ];
        for (code, div) in table {
            assert_eq!(timer_divisor(code), div, "{code:#b}");
            let mut a = enabled(0);
            a.mmio_write(TIMER_DIVIDE, code | 0xF0, 0);
            assert_eq!(
                a.mmio_read(TIMER_DIVIDE, 0),
                code,
                "bit 2 and above not stored"
            );
            a.mmio_write(LVT_TIMER, 0x40, 0);
            a.mmio_write(TIMER_INITIAL, 10, 1000);
            let fire = 1000 + 10 * u64::from(div) * u64::from(TPT);
            assert_eq!(a.next_deadline(), Some(fire), "{code:#b}");
            assert!(!a.advance(fire - 1));
            assert!(a.advance(fire));
            assert_eq!(a.pending_vector(), Some(0x40));
        }
    }

    #[test]
    fn one_shot_expiry_and_current_count() {
        let mut a = enabled(0);
        a.mmio_write(TIMER_DIVIDE, 0b0001, 0); // divide by 4
        a.mmio_write(LVT_TIMER, 0x40, 0);
        a.mmio_write(TIMER_INITIAL, 1000, 5000);
        let tick = 4 * u64::from(TPT);
        assert_eq!(a.mmio_read(TIMER_INITIAL, 5000), 1000);
        assert_eq!(a.mmio_read(TIMER_CURRENT, 5000), 1000);
        assert_eq!(a.mmio_read(TIMER_CURRENT, 5000 + tick - 1), 1000);
        assert_eq!(a.mmio_read(TIMER_CURRENT, 5000 + tick), 999);
        assert_eq!(a.mmio_read(TIMER_CURRENT, 5000 + 500 * tick + 7), 500);
        assert_eq!(
            a.mmio_read(TIMER_CURRENT, 4000),
            1000,
            "time before the start"
        );
        let fire = 5000 + 1000 * tick;
        assert_eq!(a.next_deadline(), Some(fire));
        assert_eq!(a.mmio_read(TIMER_CURRENT, fire - 1), 1);
        assert!(!a.advance(fire - 1));
        assert!(a.advance(fire));
        assert_eq!(a.pending_vector(), Some(0x40));
        assert_eq!(a.mmio_read(TIMER_CURRENT, fire), 0);
        assert_eq!(a.next_deadline(), None);
        assert!(!a.advance(fire * 10), "fires once");
        // Writing 0 stops it; a new initial count restarts it.
        a.mmio_write(TIMER_INITIAL, 10, 0);
        a.mmio_write(TIMER_INITIAL, 0, 10);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.mmio_read(TIMER_CURRENT, 10), 0);
        a.mmio_write(TIMER_INITIAL, 10, 0);
        a.mmio_write(TIMER_INITIAL, 20, 5 * tick);
        assert_eq!(a.next_deadline(), Some(25 * tick), "restart from the write");
    }

    #[test]
    fn periodic_no_drift_and_missed_periods() {
        let mut a = enabled(0);
        a.mmio_write(TIMER_DIVIDE, 0b1011, 0); // divide by 1
        a.mmio_write(LVT_TIMER, 0x2_0040, 0);
        assert_eq!(a.timer_mode(), TimerMode::Periodic);
        let start = 123;
        a.mmio_write(TIMER_INITIAL, 10, start);
        let period = 10 * u64::from(TPT);
        // Late advances (17 ticks after each expiry) do not shift the phase.
        for k in 1..=1000u64 {
            let due = start + k * period;
            assert_eq!(a.next_deadline(), Some(due), "period {k}");
            assert!(a.advance(due + 17));
            assert_eq!(a.acknowledge(), Some(0x40));
            a.mmio_write(EOI, 0, due + 17);
        }
        assert_eq!(a.mmio_read(TIMER_CURRENT, start + 1000 * period + 100), 9);
        // Missed periods: one interrupt, the next expiry in the future.
        let base = start + 1000 * period;
        let now = base + 5 * period + 250;
        assert_eq!(a.mmio_read(TIMER_CURRENT, now), 8, "count wraps per period");
        assert!(a.advance(now));
        assert_eq!(a.irr()[2], 1);
        assert_eq!(a.next_deadline(), Some(base + 6 * period));
        assert_eq!(a.mmio_read(TIMER_CURRENT, now), 8);
    }

    #[test]
    fn masked_timer_expiry_is_lost() {
        let mut a = enabled(0);
        a.mmio_write(LVT_TIMER, 0x2_0040 | LVT_MASKED, 0);
        a.mmio_write(TIMER_INITIAL, 10, 0);
        let period = 10 * 2 * u64::from(TPT);
        assert_eq!(a.next_deadline(), None, "masked: no wake-up needed");
        assert_eq!(a.mmio_read(TIMER_CURRENT, period + 1), 10, "keeps counting");
        // Unmasking after expiries does not deliver them late.
        a.mmio_write(LVT_TIMER, 0x2_0040, period * 3 + 5);
        assert_eq!(a.pending_vector(), None);
        assert_eq!(a.next_deadline(), Some(period * 4));
        assert!(a.advance(period * 4));
        assert_eq!(a.pending_vector(), Some(0x40));
        // Masked one-shot expiry is lost too.
        let mut b = enabled(0);
        b.mmio_write(LVT_TIMER, 0x40 | LVT_MASKED, 0);
        b.mmio_write(TIMER_INITIAL, 1, 0);
        assert!(!b.advance(1_000));
        assert_eq!(b.mmio_read(TIMER_CURRENT, 1_000), 0);
        b.mmio_write(LVT_TIMER, 0x40, 1_000);
        assert_eq!(b.pending_vector(), None);
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn mode_change_disarms_timer() {
        let mut a = enabled(0);
        a.mmio_write(LVT_TIMER, 0x40, 0);
        a.mmio_write(TIMER_INITIAL, 100, 0);
        // Same mode, other fields: keeps running.
        a.mmio_write(LVT_TIMER, 0x41, 10);
        assert!(a.next_deadline().is_some());
        a.mmio_write(LVT_TIMER, 0x2_0041, 20);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.mmio_read(TIMER_CURRENT, 20), 0);
        assert_eq!(a.mmio_read(TIMER_INITIAL, 20), 0);
        // To TSC-deadline: initial count ignored, current reads 0.
        a.mmio_write(TIMER_INITIAL, 100, 30);
        a.mmio_write(LVT_TIMER, 0x4_0041, 40);
        assert_eq!(a.timer_mode(), TimerMode::TscDeadline);
        assert_eq!(a.next_deadline(), None);
        a.mmio_write(TIMER_INITIAL, 100, 50);
        assert_eq!(a.mmio_read(TIMER_INITIAL, 50), 0);
        assert_eq!(a.mmio_read(TIMER_CURRENT, 50), 0);
        a.write_tsc_deadline(1_000, 60);
        assert_eq!(a.read_tsc_deadline(60), 1_000);
        // Leaving TSC-deadline mode disarms and clears the deadline.
        a.mmio_write(LVT_TIMER, 0x41, 70);
        assert_eq!(a.read_tsc_deadline(70), 0);
        assert_eq!(a.next_deadline(), None);
        assert!(!a.advance(2_000));
        // The reserved mode never counts.
        a.mmio_write(LVT_TIMER, 0x6_0041, 80);
        assert_eq!(a.timer_mode(), TimerMode::Reserved);
        a.mmio_write(TIMER_INITIAL, 5, 80);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.mmio_read(TIMER_CURRENT, 81), 0);
    }

    #[test]
    fn tsc_deadline_arm_disarm_fire_once() {
        let mut a = enabled(0);
        // Outside TSC-deadline mode writes are ignored.
        a.write_tsc_deadline(500, 0);
        assert_eq!(a.read_tsc_deadline(0), 0);
        a.mmio_write(LVT_TIMER, 0x4_0050, 0);
        a.write_tsc_deadline(500, 100);
        assert_eq!(a.read_tsc_deadline(100), 500);
        assert_eq!(a.next_deadline(), Some(500));
        a.write_tsc_deadline(0, 200);
        assert_eq!(a.read_tsc_deadline(200), 0);
        assert_eq!(a.next_deadline(), None);
        assert!(!a.advance(1_000));
        a.write_tsc_deadline(1_500, 1_000);
        assert!(!a.advance(1_499));
        assert_eq!(a.read_tsc_deadline(1_499), 1_500);
        assert_eq!(a.read_tsc_deadline(1_500), 0, "reads 0 once passed");
        assert!(a.advance(1_600));
        assert_eq!(a.pending_vector(), Some(0x50));
        assert_eq!(a.read_tsc_deadline(1_600), 0);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.acknowledge(), Some(0x50));
        assert!(!a.advance(10_000), "fires once");
        // A deadline already passed fires at once.
        a.mmio_write(EOI, 0, 10_000);
        a.write_tsc_deadline(5, 10_000);
        assert_eq!(a.pending_vector(), Some(0x50));
        assert_eq!(a.read_tsc_deadline(10_000), 0);
        // Masked: fires silently.
        let mut b = enabled(0);
        b.mmio_write(LVT_TIMER, 0x4_0050 | LVT_MASKED, 0);
        b.write_tsc_deadline(100, 0);
        assert_eq!(b.read_tsc_deadline(0), 100);
        assert_eq!(b.next_deadline(), None);
        assert!(!b.advance(100));
        assert_eq!(b.read_tsc_deadline(100), 0);
        assert_eq!(b.pending_vector(), None);
    }

    #[test]
    fn timer_never_overflows() {
        let mut a = LocalApic::new(0, true, u32::MAX);
        a.mmio_write(SVR, 0x1FF, 0);
        a.mmio_write(TIMER_DIVIDE, 0b1010, 0); // 128
        a.mmio_write(LVT_TIMER, 0x2_0040, 0);
        a.mmio_write(TIMER_INITIAL, u32::MAX, u64::MAX - 5);
        assert_eq!(a.next_deadline(), None, "beyond the TSC's range");
        assert_eq!(a.mmio_read(TIMER_CURRENT, u64::MAX), u32::MAX);
        assert!(!a.advance(u64::MAX));
        a.mmio_write(TIMER_DIVIDE, 0b1011, u64::MAX);
        assert_eq!(a.mmio_read(TIMER_CURRENT, u64::MAX), u32::MAX);
        let mut z = LocalApic::new(0, true, 0);
        z.mmio_write(SVR, 0x1FF, 0);
        z.mmio_write(LVT_TIMER, 0x2_0040, 0);
        z.mmio_write(TIMER_DIVIDE, 0b1011, 0);
        z.mmio_write(TIMER_INITIAL, 1, 0);
        assert_eq!(z.next_deadline(), Some(1), "tsc_per_tick 0 taken as 1");
        assert!(z.advance(u64::MAX - 1));
        assert_eq!(z.next_deadline(), Some(u64::MAX));
        assert!(z.advance(u64::MAX));
        assert_eq!(z.next_deadline(), None, "beyond the TSC's range");
    }

    #[test]
    fn divide_change_while_counting() {
        let mut a = enabled(0);
        a.mmio_write(TIMER_DIVIDE, 0b1011, 0); // by 1: 100 TSC per count
        a.mmio_write(LVT_TIMER, 0x2_0040, 0);
        a.mmio_write(TIMER_INITIAL, 10, 0);
        a.mmio_write(TIMER_DIVIDE, 0b0000, 400); // by 2: 200 per count, 6 left
        assert_eq!(a.mmio_read(TIMER_CURRENT, 400), 6);
        assert_eq!(a.next_deadline(), Some(400 + 6 * 200));
        assert!(a.advance(1_600));
        assert_eq!(
            a.next_deadline(),
            Some(1_600 + 10 * 200),
            "reload at new rate"
        );
    }

    #[test]
    fn icr_ipis_xapic() {
        let mut a = enabled(3);
        a.mmio_write(ICR_HIGH, 0x05FF_FFFF, 0);
        assert_eq!(a.mmio_read(ICR_HIGH, 0), 0x0500_0000);
        let m = ipi(a.mmio_write(ICR_LOW, 0x0000_4041, 0));
        assert_eq!(
            m,
            InterruptMessage {
                vector: 0x41,
                mode: DeliveryMode::Fixed,
                dest: Destination::Physical(5),
                level_triggered: false,
                assert: true,
            }
        );
        assert_eq!(
            a.mmio_read(ICR_LOW, 0) & ICR_DELIVERY_STATUS,
            0,
            "always idle"
        );
        assert_eq!(a.mmio_read(ICR_LOW, 0), 0x4041);
        let m = ipi(a.mmio_write(ICR_LOW, 0x0000_4841, 0));
        assert_eq!(m.dest, Destination::Logical(5));
        let m = ipi(a.mmio_write(ICR_LOW, 0x0004_4041, 0));
        assert_eq!(m.dest, Destination::SelfOnly);
        let m = ipi(a.mmio_write(ICR_LOW, 0x0008_4041, 0));
        assert_eq!(m.dest, Destination::AllIncludingSelf);
        let m = ipi(a.mmio_write(ICR_LOW, 0x000C_4841, 0));
        assert_eq!(m.dest, Destination::AllExcludingSelf);
        // INIT assert, SIPI, NMI, lowest priority.
        let m = ipi(a.mmio_write(ICR_LOW, 0x0000_C500, 0));
        assert_eq!(
            (m.mode, m.assert, m.level_triggered),
            (DeliveryMode::Init, true, false)
        );
        let m = ipi(a.mmio_write(ICR_LOW, 0x0000_0500, 0));
        assert_eq!(
            m.mode,
            DeliveryMode::Init,
            "edge INIT with level 0 is an INIT"
        );
        let m = ipi(a.mmio_write(ICR_LOW, 0x0000_4608, 0));
        assert_eq!((m.mode, m.vector), (DeliveryMode::StartUp, 0x08));
        assert_eq!(
            ipi(a.mmio_write(ICR_LOW, 0x0000_0400, 0)).mode,
            DeliveryMode::Nmi
        );
        assert_eq!(
            ipi(a.mmio_write(ICR_LOW, 0x0000_0200, 0)).mode,
            DeliveryMode::Smi
        );
        let m = ipi(a.mmio_write(ICR_LOW, 0x0000_0931, 0));
        assert_eq!(
            (m.mode, m.dest),
            (DeliveryMode::LowestPriority, Destination::Logical(5))
        );
        // Level-triggered fixed IPIs go out edge-triggered.
        assert!(!ipi(a.mmio_write(ICR_LOW, 0x0000_C041, 0)).level_triggered);
        // INIT level de-assert: nothing, no error.
        assert_eq!(a.mmio_write(ICR_LOW, 0x0000_8500, 0), ApicOutput::None);
        a.mmio_write(ESR, 0, 0);
        assert_eq!(a.mmio_read(ESR, 0), 0);
    }

    #[test]
    fn icr_ipis_x2apic_and_self_ipi() {
        let mut a = x2(7);
        let out = a.msr_write(msr(ICR_LOW), 0x1234_5678_0000_4041, 0);
        assert_eq!(ipi(out.unwrap()).dest, Destination::Physical(0x1234_5678));
        assert_eq!(a.msr_read(msr(ICR_LOW), 0), Ok(0x1234_5678_0000_4041));
        let out = a.msr_write(msr(ICR_LOW), 0x0003_0001_0000_0841, 0);
        assert_eq!(ipi(out.unwrap()).dest, Destination::Logical(0x0003_0001));
        let out = a.msr_write(msr(ICR_LOW), 0xFFFF_FFFF_0000_0041, 0);
        assert_eq!(
            ipi(out.unwrap()).dest,
            Destination::Physical(X2APIC_BROADCAST)
        );
        let out = a.msr_write(msr(ICR_LOW), 0x000C_0400, 0);
        assert_eq!(ipi(out.unwrap()).dest, Destination::AllExcludingSelf);
        assert_eq!(a.msr_write(msr(ICR_LOW), 0x8500, 0), Ok(ApicOutput::None));
        let m = ipi(a.msr_write(X2APIC_SELF_IPI_MSR, 0xEC, 0).unwrap());
        assert_eq!(
            m,
            InterruptMessage {
                vector: 0xEC,
                mode: DeliveryMode::Fixed,
                dest: Destination::SelfOnly,
                level_triggered: false,
                assert: true,
            }
        );
        assert!(targets([&a].into_iter(), Some(0), m.dest) == 1);
    }

    #[test]
    fn targets_physical_and_broadcast() {
        let apics: alloc::vec::Vec<LocalApic> = (0..4).map(enabled).collect();
        let t = |sender, dest| targets(apics.iter(), sender, dest);
        assert_eq!(t(None, Destination::Physical(2)), 0b0100);
        assert_eq!(t(None, Destination::Physical(9)), 0);
        assert_eq!(t(None, Destination::Physical(0xFF)), 0b1111);
        assert_eq!(t(None, Destination::Physical(0x1FF)), 0);
        // x2APIC: 32-bit IDs, broadcast all ones; 0xFF is an ordinary ID.
        let mut big: alloc::vec::Vec<LocalApic> = [0x100, 0xFF, 3].into_iter().map(x2).collect();
        let tb = |dest| targets(big.iter(), None, dest);
        assert_eq!(tb(Destination::Physical(0x100)), 0b001);
        assert_eq!(tb(Destination::Physical(0xFF)), 0b010);
        assert_eq!(tb(Destination::Physical(X2APIC_BROADCAST)), 0b111);
        // A globally disabled APIC receives nothing.
        big[2].write_apic_base(DEFAULT_APIC_BASE).unwrap();
        assert_eq!(
            targets(big.iter(), None, Destination::Physical(X2APIC_BROADCAST)),
            0b011
        );
        assert_eq!(
            targets(big.iter(), None, Destination::AllIncludingSelf),
            0b011
        );
    }

    #[test]
    fn targets_shorthands() {
        let apics: alloc::vec::Vec<LocalApic> = (0..3).map(enabled).collect();
        let t = |sender, dest| targets(apics.iter(), sender, dest);
        assert_eq!(t(Some(1), Destination::SelfOnly), 0b010);
        assert_eq!(t(Some(1), Destination::AllIncludingSelf), 0b111);
        assert_eq!(t(Some(1), Destination::AllExcludingSelf), 0b101);
        assert_eq!(t(None, Destination::SelfOnly), 0);
        assert_eq!(t(None, Destination::AllExcludingSelf), 0b111);
        assert!(matches(&apics[0], Destination::SelfOnly, true));
        assert!(!matches(&apics[0], Destination::AllExcludingSelf, true));
    }

    #[test]
    fn targets_logical_flat_and_cluster() {
        let mut apics: alloc::vec::Vec<LocalApic> = (0..4).map(enabled).collect();
        for (i, a) in apics.iter_mut().enumerate() {
            a.mmio_write(LDR, 1 << (24 + i), 0);
        }
        let t = |apics: &[LocalApic], dest| targets(apics.iter(), None, dest);
        assert_eq!(t(&apics, Destination::Logical(0b0101)), 0b0101);
        assert_eq!(t(&apics, Destination::Logical(0b1000)), 0b1000);
        assert_eq!(t(&apics, Destination::Logical(0xF0)), 0);
        assert_eq!(t(&apics, Destination::Logical(0xFF)), 0b1111);
        // Cluster model: cluster in bits 7:4, members in 3:0.
        let ldrs = [0x11, 0x12, 0x21, 0x24];
        for (a, ldr) in apics.iter_mut().zip(ldrs) {
            a.mmio_write(DFR, 0x0FFF_FFFF, 0);
            a.mmio_write(LDR, ldr << 24, 0);
        }
        assert_eq!(t(&apics, Destination::Logical(0x13)), 0b0011);
        assert_eq!(t(&apics, Destination::Logical(0x21)), 0b0100);
        assert_eq!(t(&apics, Destination::Logical(0x2C)), 0b1000);
        assert_eq!(t(&apics, Destination::Logical(0x31)), 0);
        assert_eq!(t(&apics, Destination::Logical(0xFF)), 0b1111);
        // x2APIC logical: cluster id >> 4, bit id & 0xF.
        let x: alloc::vec::Vec<LocalApic> = [0x0, 0x1, 0x10, 0x1F].into_iter().map(x2).collect();
        assert_eq!(t(&x, Destination::Logical(0x0000_0003)), 0b0011);
        assert_eq!(t(&x, Destination::Logical(0x0001_8001)), 0b1100);
        assert_eq!(t(&x, Destination::Logical(0x0001_0002)), 0);
        assert_eq!(t(&x, Destination::Logical(0x0002_FFFF)), 0);
        assert_eq!(t(&x, Destination::Logical(X2APIC_BROADCAST)), 0b1111);
    }

    #[test]
    fn targets_limited_to_64_and_lowest_priority() {
        let apics: alloc::vec::Vec<LocalApic> = (0..70).map(enabled).collect();
        assert_eq!(
            targets(apics.iter(), None, Destination::Physical(0xFF)),
            u64::MAX
        );
        assert_eq!(targets(apics.iter(), None, Destination::Physical(65)), 0);
        let mut few: alloc::vec::Vec<LocalApic> = (0..3).map(enabled).collect();
        few[0].set_tpr(0x50);
        few[2].set_tpr(0x10);
        assert_eq!(lowest_priority_target(few.iter(), 0b111), Some(1));
        assert_eq!(lowest_priority_target(few.iter(), 0b101), Some(2));
        few[2].set_tpr(0x50);
        assert_eq!(
            lowest_priority_target(few.iter(), 0b101),
            Some(0),
            "tie: lowest index"
        );
        assert_eq!(lowest_priority_target(few.iter(), 0), None);
    }

    #[test]
    fn guest_values_never_panic() {
        let mut a = enabled(0);
        let values = [0, 1, 0xF, 0xFF, 0x100, 0xFFFF, 0x8000_0000, u32::MAX];
        let nows = [0, 1, u64::MAX / 2, u64::MAX];
        for off in (0..0x1000).step_by(4) {
            for &v in &values {
                for &now in &nows {
                    a.mmio_write(off, v, now);
                    a.mmio_read(off, now);
                    a.advance(now);
                    a.next_deadline();
                }
            }
        }
        let mut b = x2(0xFFFF_FFFE);
        let wide = [0, 1, 0xFF, u64::from(u32::MAX), u64::MAX];
        for m in 0x7F0..0x910 {
            for &v in &wide {
                for &now in &nows {
                    let _ = b.msr_write(m, v, now);
                    let _ = b.msr_read(m, now);
                    b.write_tsc_deadline(v, now);
                    b.read_tsc_deadline(now);
                    b.advance(now);
                }
            }
        }
        for v in 0..=255 {
            b.accept_fixed(v, v % 2 == 0);
            b.acknowledge();
        }
        let _ = b.write_apic_base(u64::MAX);
        b.set_phys_addr_bits(0);
        let _ = b.write_apic_base(0);
        b.set_phys_addr_bits(255);
        let _ = b.write_apic_base(!0x2FF & !APIC_BASE_EXTD);
    }
}
