//! Emulated devices: plain state machines behind a small trait.
//!
//! A device sees port numbers (or MMIO offsets) and values, and reports what it
//! wants done as [`DeviceEffect`]s (output a byte, raise or lower an IRQ line)
//! pushed into an [`Effects`] list. It knows nothing about consoles, interrupt
//! controllers or VMs, so every model tests on the host. The VM
//! ([`crate::vcpu::VmContext`]) owns an [`IoBus`] that routes port accesses and
//! applies the effects (see [`crate::exit::io`]).
//!
//! Models:
//! - [`serial16550::Serial16550`]: COM1, used by every guest.
//! - [`lapic::LocalApic`]: one vCPU's local APIC (xAPIC and x2APIC, timer,
//!   IPIs), with [`apic_msg`] the messages between APICs.
//! - [`pic8259::PicPair`] (with the ELCR) and [`pit8254::Pit`] (with system
//!   control port B, 0x61): the legacy PC interrupt controller and timer.
//! - [`cmos::Cmos`]: the MC146818 real-time clock and CMOS NVRAM.
//! - [`i8042::I8042`]: the PS/2 keyboard controller, with a keyboard.
//! - [`chipset`]: POST code port, PCI configuration ports, reset control.
//! - [`pc`]: the whole PC device set on one bus, its time base and deadline.
//! - [`interrupt`]: when a pending PIC vector can be injected.
//! - [`ioapic::IoApic`]: the I/O APIC (82093AA as in ICH/PCH chipsets, 24
//!   pins, MMIO at 0xFEC00000), sending [`apic_msg`] interrupt messages.
//! - [`pmtimer::PmTimer`]: the ACPI PM timer (3.579545 MHz, 32-bit, port
//!   0x608), a reference clock for guests (the FADT points at it).
//! - [`console::LineBuffer`]: turns output bytes into console lines.
//!
//! Time: models that count time ([`pit8254::Pit`], [`cmos::Cmos`],
//! [`serial16550::Serial16550`]'s receive timeout) never read a clock. They
//! say so once ([`PortDevice::counts_time`]); the VM advances such a device
//! with a monotonic `now_ns` ([`PortDevice::advance`]) before it routes an
//! access to it, advances them all ([`pc::advance`]) when the earliest of
//! their deadlines ([`pc::next_deadline_ns`]) has come, and sleeps a halted
//! vCPU until then. Accesses to the other devices read no clock at all.
//!
//! Resets: a guest asking for a machine reset (keyboard controller pulse,
//! port 0xCF9, port 0x92) is reported with [`Effects::request_reset`], beside
//! the ordered effects; the VM decides what a reset means by policy.
//!
//! Register files here are 8 bits wide. A 16/32-bit access to one of their
//! ports operates on the low byte (writes) and returns the register in the low
//! byte with the upper bytes all ones (reads), like a byte-wide ISA device.

pub mod apic_msg;
pub mod bus;
pub mod chipset;
pub mod cmos;
pub mod console;
pub mod i8042;
pub mod interrupt;
pub mod ioapic;
pub mod lapic;
pub mod pc;
pub mod pic8259;
pub mod pit8254;
pub mod pmtimer;
pub mod serial16550;

use core::any::Any;
use core::fmt;

pub use bus::{BusResult, IoBus};

use crate::exit::AccessSize;

/// A contiguous range of I/O ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub base: u16,
    /// Number of ports (at least 1).
    pub len: u16,
}

impl PortRange {
    /// `len` ports starting at `base`.
    pub const fn new(base: u16, len: u16) -> Self {
        PortRange { base, len }
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        port.wrapping_sub(self.base) < self.len
    }

    /// Whether two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        let a_end = u32::from(self.base) + u32::from(self.len);
        let b_end = u32::from(other.base) + u32::from(other.len);
        u32::from(self.base) < b_end && u32::from(other.base) < a_end
    }
}

/// Something a device access asks the VM to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceEffect {
    /// A byte of console output.
    Output(u8),
    /// Assert interrupt line `n` (ISA IRQ number).
    RaiseIrq(u8),
    /// Deassert interrupt line `n`.
    LowerIrq(u8),
}

/// Which device asked for a machine reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetSource {
    /// The keyboard controller pulsed the reset line (command 0xFE, any
    /// 0xF0-0xFF pulse with bit 0 clear, or an output-port write with bit 0
    /// clear): Linux's `reboot=k`.
    KeyboardController,
    /// Reset control register 0xCF9 written with bit 2 (reset CPU) set:
    /// Linux's `reboot=pci`.
    ResetControl,
    /// System control port A (0x92) written with bit 0 (fast reset) set.
    FastReset,
}

impl ResetSource {
    /// The description, as a static string (for stop reasons).
    pub fn name(self) -> &'static str {
        match self {
            Self::KeyboardController => "keyboard controller reset pulse",
            Self::ResetControl => "reset control register 0xcf9",
            Self::FastReset => "fast reset through port 0x92",
        }
    }
}

impl fmt::Display for ResetSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::KeyboardController => "keyboard controller reset pulse",
            Self::ResetControl => "reset control register 0xcf9",
            Self::FastReset => "fast reset through port 0x92",
        })
    }
}

/// Effects of one access, in order. Bounded: a model pushes at most a few per
/// access; the capacity is part of the device contract, not a guest input.
/// A reset request is kept apart from the ordered effects (it is not dropped
/// when the list is full, and the first request wins).
#[derive(Clone, Debug, Default)]
pub struct Effects {
    items: [Option<DeviceEffect>; Effects::CAPACITY],
    len: usize,
    reset: Option<ResetSource>,
}

impl Effects {
    /// Maximum number of effects one access may produce.
    pub const CAPACITY: usize = 8;

    /// No effects.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an effect. Returns `false` (and drops it) when full, which only a
    /// device-model bug can cause.
    pub fn push(&mut self, effect: DeviceEffect) -> bool {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(effect);
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The effects in order.
    pub fn iter(&self) -> impl Iterator<Item = DeviceEffect> + '_ {
        self.items
            .get(..self.len)
            .unwrap_or(&[])
            .iter()
            .flatten()
            .copied()
    }

    /// Records that the guest asked for a machine reset (the first request of
    /// an access is kept).
    pub fn request_reset(&mut self, source: ResetSource) {
        self.reset.get_or_insert(source);
    }

    /// The reset the guest asked for, if any. The VM restarts or stops by
    /// policy; the remaining effects of the access still apply.
    pub fn reset_requested(&self) -> Option<ResetSource> {
        self.reset
    }

    /// Whether there are none (no ordered effect and no reset request).
    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.reset.is_none()
    }
}

/// A port-I/O device model.
pub trait PortDevice: Any + Send {
    /// Short name for reports.
    fn name(&self) -> &'static str;
    /// The ports it decodes.
    fn ports(&self) -> &[PortRange];
    /// Guest `IN`. Must not fail: any port in [`Self::ports`] and any size.
    fn read(&mut self, port: u16, size: AccessSize, fx: &mut Effects) -> u32;
    /// Guest `OUT`; `value` is already truncated to `size`.
    fn write(&mut self, port: u16, size: AccessSize, value: u32, fx: &mut Effects);
    /// Whether the device's state moves with time, so that [`Self::advance`]
    /// must bring it to the present before each access. Asked once, when
    /// the device is registered.
    fn counts_time(&self) -> bool {
        false
    }
    /// Brings a device that [counts time](Self::counts_time) to `now_ns`
    /// (monotonic; earlier values are ignored), pushing the IRQ changes that
    /// brings. The same as what [`pc::advance`] does for the device.
    fn advance(&mut self, _now_ns: u64, _fx: &mut Effects) {}
    /// When a device that [counts time](Self::counts_time) will next change
    /// an IRQ line by itself, if ever (as [`pc::next_deadline_ns`] finds it).
    fn next_deadline_ns(&self) -> Option<u64> {
        None
    }
    /// Whether the device is the interrupt controller, whose pending vector
    /// the VM must look at again after an access. Asked once, at
    /// registration.
    fn is_interrupt_controller(&self) -> bool {
        false
    }
    /// For typed access to a registered device ([`IoBus::device_mut`]).
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// For typed access to a registered device ([`IoBus::device`]).
    fn as_any(&self) -> &dyn Any;
}

/// A memory-mapped device model (offsets relative to its base). Not wired to
/// exits yet: emulating an MMIO access needs the faulting instruction decoded.
pub trait MmioDevice {
    /// Short name for reports.
    fn name(&self) -> &'static str;
    /// Size of the register window in bytes.
    fn window_len(&self) -> u64;
    /// Guest load of `size` bytes at `offset` (< `window_len`).
    fn read(&mut self, offset: u64, size: AccessSize, fx: &mut Effects) -> u32;
    /// Guest store of `size` bytes at `offset` (< `window_len`).
    fn write(&mut self, offset: u64, size: AccessSize, value: u32, fx: &mut Effects);
}

/// Widens a byte register read to `size` (upper bytes all ones).
pub(crate) fn widen_byte(size: AccessSize, byte: u8) -> u32 {
    (size.mask() & !0xFF) | u32::from(byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_contains_and_overlaps() {
        let r = PortRange::new(0x3F8, 8);
        assert!(r.contains(0x3F8) && r.contains(0x3FF));
        assert!(!r.contains(0x3F7) && !r.contains(0x400));
        let top = PortRange::new(0xFFFF, 1);
        assert!(top.contains(0xFFFF) && !top.contains(0));
        assert!(r.overlaps(&PortRange::new(0x3FF, 2)));
        assert!(!r.overlaps(&PortRange::new(0x400, 2)));
    }

    #[test]
    fn effects_bounded() {
        let mut fx = Effects::new();
        for i in 0..Effects::CAPACITY {
            assert!(fx.push(DeviceEffect::Output(i as u8)));
        }
        assert!(!fx.push(DeviceEffect::Output(0)));
        assert_eq!(fx.iter().count(), Effects::CAPACITY);
    }

    #[test]
    fn reset_request_kept_apart_first_wins() {
        let mut fx = Effects::new();
        assert!(fx.is_empty() && fx.reset_requested().is_none());
        for i in 0..Effects::CAPACITY {
            fx.push(DeviceEffect::Output(i as u8));
        }
        fx.request_reset(ResetSource::ResetControl);
        fx.request_reset(ResetSource::FastReset);
        assert_eq!(fx.reset_requested(), Some(ResetSource::ResetControl));
        assert_eq!(fx.iter().count(), Effects::CAPACITY);
        let mut only_reset = Effects::new();
        only_reset.request_reset(ResetSource::KeyboardController);
        assert!(!only_reset.is_empty());
        assert_eq!(
            alloc::format!("{}", ResetSource::KeyboardController),
            "keyboard controller reset pulse"
        );
    }

    #[test]
    fn widen() {
        assert_eq!(widen_byte(AccessSize::Byte, 0x12), 0x12);
        assert_eq!(widen_byte(AccessSize::Word, 0x12), 0xFF12);
        assert_eq!(widen_byte(AccessSize::Dword, 0x12), 0xFFFF_FF12);
    }
}
