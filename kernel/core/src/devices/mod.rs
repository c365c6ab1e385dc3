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
//! - [`pic8259::PicPair`] and [`pit8254::Pit`]: the legacy PC interrupt
//!   controller and timer, for a future Linux guest.
//! - [`console::LineBuffer`]: turns output bytes into console lines.
//!
//! Register files here are 8 bits wide. A 16/32-bit access to one of their
//! ports operates on the low byte (writes) and returns the register in the low
//! byte with the upper bytes all ones (reads), like a byte-wide ISA device.

pub mod bus;
pub mod console;
pub mod pic8259;
pub mod pit8254;
pub mod serial16550;

use core::any::Any;

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

/// Effects of one access, in order. Bounded: a model pushes at most a few per
/// access; the capacity is part of the device contract, not a guest input.
#[derive(Clone, Debug, Default)]
pub struct Effects {
    items: [Option<DeviceEffect>; Effects::CAPACITY],
    len: usize,
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
        self.items.iter().take(self.len).flatten().copied()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A port-I/O device model.
pub trait PortDevice: Any {
    /// Short name for reports.
    fn name(&self) -> &'static str;
    /// The ports it decodes.
    fn ports(&self) -> &[PortRange];
    /// Guest `IN`. Must not fail: any port in [`Self::ports`] and any size.
    fn read(&mut self, port: u16, size: AccessSize, fx: &mut Effects) -> u32;
    /// Guest `OUT`; `value` is already truncated to `size`.
    fn write(&mut self, port: u16, size: AccessSize, value: u32, fx: &mut Effects);
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
    fn widen() {
        assert_eq!(widen_byte(AccessSize::Byte, 0x12), 0x12);
        assert_eq!(widen_byte(AccessSize::Word, 0x12), 0xFF12);
        assert_eq!(widen_byte(AccessSize::Dword, 0x12), 0xFFFF_FF12);
    }
}
