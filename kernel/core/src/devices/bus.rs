//! Routes port accesses to registered [`PortDevice`]s.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::{Effects, PortDevice, PortRange};
use crate::exit::AccessSize;

/// Outcome of a bus access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusResult<T> {
    /// A device handled it.
    Claimed(T),
    /// No device decodes the port; reads return all ones of the access size.
    Unclaimed(T),
}

/// Why a device could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// One of its ranges overlaps an already registered device's.
    Overlap {
        /// The conflicting range of the new device.
        range: PortRange,
        /// The registered device that owns those ports.
        existing: &'static str,
    },
}

/// Ports below this are routed through a table (every legacy PC device
/// lives there); ports above through a list of ranges.
const TABLE_PORTS: usize = 0x400;

/// What the VM must do around an access to a device (asked once, at
/// registration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceTraits {
    /// The device counts time ([`PortDevice::counts_time`]).
    pub counts_time: bool,
    /// The device is the interrupt controller
    /// ([`PortDevice::is_interrupt_controller`]).
    pub interrupt_controller: bool,
}

/// The port-I/O bus of one VM. An access finds its device through a table
/// (ports below 0x400) or a short list of ranges, without asking every
/// device for its ports.
pub struct IoBus {
    devices: Vec<Box<dyn PortDevice>>,
    traits: Vec<DeviceTraits>,
    /// The indices of the devices that count time.
    timed: Vec<usize>,
    /// Each device's deadline as last noted (`None` for the others).
    deadlines: Vec<Option<u64>>,
    /// The earliest of `deadlines`.
    earliest: Option<u64>,
    /// For each port below [`TABLE_PORTS`]: 1 + the index of its device, or 0.
    table: Vec<u16>,
    /// The ranges at or above [`TABLE_PORTS`], with their device's index.
    high: Vec<(PortRange, usize)>,
}

/// Which ports a VM's devices claim, one bit each: the bus's map as a vCPU
/// consults it without the VM's lock (a VM's bus is complete when the VM is
/// built and never changes). The default map knows nothing: every port may
/// be claimed (every bit set), so every access goes to the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedPorts(Box<[u64; 1024]>);

impl Default for ClaimedPorts {
    fn default() -> Self {
        ClaimedPorts(Box::new([u64::MAX; 1024]))
    }
}

impl ClaimedPorts {
    /// Whether no device decodes `port` (false for every port of the
    /// default map).
    #[inline(always)]
    pub fn unclaimed(&self, port: u16) -> bool {
        // 1024 words of 64 bits: `port >> 6` is always in range.
        let word = self
            .0
            .get(usize::from(port >> 6))
            .copied()
            .unwrap_or(u64::MAX);
        word & (1 << (port & 63)) == 0
    }
}

impl Default for IoBus {
    fn default() -> Self {
        IoBus {
            devices: Vec::new(),
            traits: Vec::new(),
            timed: Vec::new(),
            deadlines: Vec::new(),
            earliest: None,
            table: alloc::vec![0; TABLE_PORTS],
            high: Vec::new(),
        }
    }
}

impl IoBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a device; its ports must not overlap a registered device.
    pub fn register(&mut self, device: Box<dyn PortDevice>) -> Result<(), BusError> {
        for range in device.ports() {
            for existing in &self.devices {
                if existing.ports().iter().any(|r| r.overlaps(range)) {
                    return Err(BusError::Overlap {
                        range: *range,
                        existing: existing.name(),
                    });
                }
            }
        }
        let index = self.devices.len();
        // At most a few dozen devices: the index fits the table's u16.
        let entry = u16::try_from(index + 1).unwrap_or(u16::MAX);
        for range in device.ports() {
            for offset in 0..range.len {
                let port = range.base.wrapping_add(offset);
                match self.table.get_mut(usize::from(port)) {
                    Some(slot) => *slot = entry,
                    None => {
                        let rest = PortRange::new(port, range.len - offset);
                        self.high.push((rest, index));
                        break;
                    }
                }
            }
        }
        self.traits.push(DeviceTraits {
            counts_time: device.counts_time(),
            interrupt_controller: device.is_interrupt_controller(),
        });
        if device.counts_time() {
            self.timed.push(index);
        }
        self.deadlines.push(device.next_deadline_ns());
        self.devices.push(device);
        self.earliest = self.deadlines.iter().flatten().min().copied();
        Ok(())
    }

    /// The earliest deadline of the devices that count time, as last
    /// noted ([`Self::note_deadline`], [`Self::note_deadlines`]).
    #[inline]
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.earliest
    }

    /// Notes device `index`'s deadline again (an access may have
    /// reprogrammed it, or time moved it). Costs a look at that device
    /// alone when its deadline stayed what it was.
    pub fn note_deadline(&mut self, index: usize) {
        let (Some(dev), Some(slot)) = (self.devices.get(index), self.deadlines.get_mut(index))
        else {
            return;
        };
        let new = dev.next_deadline_ns();
        if core::mem::replace(slot, new) != new {
            self.earliest = self.deadlines.iter().flatten().min().copied();
        }
    }

    /// Notes every device's deadline again (after [`pc::advance`] or direct
    /// access to the devices).
    ///
    /// [`pc::advance`]: super::pc::advance
    pub fn note_deadlines(&mut self) {
        for &index in &self.timed {
            if let (Some(dev), Some(slot)) =
                (self.devices.get(index), self.deadlines.get_mut(index))
            {
                *slot = dev.next_deadline_ns();
            }
        }
        self.earliest = self.deadlines.iter().flatten().min().copied();
    }

    /// The map of the ports the bus's devices claim.
    pub fn claimed_ports(&self) -> ClaimedPorts {
        let mut bits = Box::new([0u64; 1024]);
        for port in 0..=u16::MAX {
            if self.find(port).is_some() {
                if let Some(word) = bits.get_mut(usize::from(port >> 6)) {
                    *word |= 1 << (port & 63);
                }
            }
        }
        ClaimedPorts(bits)
    }

    /// The index of the device that decodes `port`, if one does.
    pub fn find(&self, port: u16) -> Option<usize> {
        match self.table.get(usize::from(port)) {
            Some(&entry) => usize::from(entry).checked_sub(1),
            None => self
                .high
                .iter()
                .find(|(r, _)| r.contains(port))
                .map(|&(_, i)| i),
        }
    }

    /// What the VM must do around an access to device `index`.
    pub fn traits(&self, index: usize) -> DeviceTraits {
        self.traits.get(index).copied().unwrap_or_default()
    }

    /// Guest `IN` from `port` of device `index` (from [`Self::find`]).
    pub fn read_at(&mut self, index: usize, port: u16, size: AccessSize, fx: &mut Effects) -> u32 {
        match self.devices.get_mut(index) {
            Some(dev) => dev.read(port, size, fx) & size.mask(),
            None => size.mask(),
        }
    }

    /// Guest `OUT` to `port` of device `index` (from [`Self::find`]).
    pub fn write_at(
        &mut self,
        index: usize,
        port: u16,
        size: AccessSize,
        value: u32,
        fx: &mut Effects,
    ) {
        if let Some(dev) = self.devices.get_mut(index) {
            dev.write(port, size, value & size.mask(), fx);
        }
    }

    /// Brings device `index` to `now_ns` ([`PortDevice::advance`]).
    pub fn advance_at(&mut self, index: usize, now_ns: u64, fx: &mut Effects) {
        if let Some(dev) = self.devices.get_mut(index) {
            dev.advance(now_ns, fx);
        }
    }

    /// Guest `IN` from `port`.
    pub fn read(&mut self, port: u16, size: AccessSize, fx: &mut Effects) -> BusResult<u32> {
        match self.find(port) {
            Some(i) => BusResult::Claimed(self.read_at(i, port, size, fx)),
            None => BusResult::Unclaimed(size.mask()),
        }
    }

    /// Guest `OUT` to `port`.
    pub fn write(
        &mut self,
        port: u16,
        size: AccessSize,
        value: u32,
        fx: &mut Effects,
    ) -> BusResult<()> {
        match self.find(port) {
            Some(i) => {
                self.write_at(i, port, size, value, fx);
                BusResult::Claimed(())
            }
            None => BusResult::Unclaimed(()),
        }
    }

    /// The first registered device of type `T`.
    pub fn device<T: PortDevice>(&self) -> Option<&T> {
        self.devices
            .iter()
            .find_map(|d| d.as_any().downcast_ref::<T>())
    }

    /// The first registered device of type `T`, mutably.
    pub fn device_mut<T: PortDevice>(&mut self) -> Option<&mut T> {
        self.devices
            .iter_mut()
            .find_map(|d| d.as_any_mut().downcast_mut::<T>())
    }

    /// Names of the registered devices, in registration order.
    pub fn device_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.devices.iter().map(|d| d.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::serial16550::Serial16550;
    use crate::devices::DeviceEffect;

    #[test]
    fn unknown_ports_read_all_ones() {
        let mut bus = IoBus::new();
        let mut fx = Effects::new();
        assert_eq!(
            bus.read(0x60, AccessSize::Byte, &mut fx),
            BusResult::Unclaimed(0xFF)
        );
        assert_eq!(
            bus.read(0x60, AccessSize::Word, &mut fx),
            BusResult::Unclaimed(0xFFFF)
        );
        assert_eq!(
            bus.read(0x60, AccessSize::Dword, &mut fx),
            BusResult::Unclaimed(0xFFFF_FFFF)
        );
        assert_eq!(
            bus.write(0x60, AccessSize::Byte, 1, &mut fx),
            BusResult::Unclaimed(())
        );
        assert!(fx.is_empty());
    }

    /// Ports below 0x400 are found through the table, the others (the PCI
    /// configuration ports) through the ranges; what the VM must do around
    /// an access comes from the devices themselves.
    #[test]
    fn finds_devices_by_table_and_range_with_their_traits() {
        let bus = crate::devices::pc::pc_devices(&crate::devices::pc::PcConfig {
            wall_clock_secs: 0,
            now_ns: 0,
            memory_bytes: 1 << 20,
        });
        let name = |port| bus.find(port).map(|i| bus.devices[i].name());
        assert_eq!(name(0x3F8), Some("serial16550"));
        assert_eq!(name(0x3FF), Some("serial16550"));
        assert_eq!(name(0xA1), Some("pic8259"));
        assert_eq!(name(0x4D1), Some("pic8259"), "ELCR, above the table");
        assert_eq!(name(0x61), Some("pit8254"));
        assert_eq!(name(0xCF8), Some("pci-host"));
        assert_eq!(name(0xCFF), Some("pci-host"));
        for unclaimed in [0, 0xE9, 0x2F8, 0x3F7, 0x400, 0xCF7, 0xD00, 0xFFFF] {
            assert_eq!(name(unclaimed), None, "port {unclaimed:#x}");
        }
        let traits = |port| bus.find(port).map(|i| bus.traits(i));
        let timed = DeviceTraits {
            counts_time: true,
            interrupt_controller: false,
        };
        assert_eq!(traits(0x3F8), Some(timed));
        assert_eq!(traits(0x40), Some(timed));
        assert_eq!(traits(0x71), Some(timed));
        assert_eq!(
            traits(0x20),
            Some(DeviceTraits {
                counts_time: false,
                interrupt_controller: true
            })
        );
        assert_eq!(traits(0x60), Some(DeviceTraits::default()));
    }

    #[test]
    fn routes_to_device_and_rejects_overlap() {
        let mut bus = IoBus::new();
        bus.register(Box::new(Serial16550::com1())).unwrap();
        let err = bus
            .register(Box::new(Serial16550::new(0x3FC, 3)))
            .unwrap_err();
        assert!(matches!(
            err,
            BusError::Overlap {
                existing: "serial16550",
                ..
            }
        ));
        let mut fx = Effects::new();
        assert_eq!(
            bus.write(0x3F8, AccessSize::Byte, u32::from(b'A'), &mut fx),
            BusResult::Claimed(())
        );
        assert_eq!(fx.iter().collect::<Vec<_>>(), [DeviceEffect::Output(b'A')]);
        assert!(bus.device_mut::<Serial16550>().is_some());
        assert_eq!(bus.device_names().collect::<Vec<_>>(), ["serial16550"]);
    }

    #[test]
    fn claimed_ports_mirror_the_bus() {
        let mut bus = IoBus::new();
        bus.register(Box::new(Serial16550::com1())).unwrap();
        let map = bus.claimed_ports();
        for port in [0x3F8, 0x3FF] {
            assert!(!map.unclaimed(port), "{port:#x}");
        }
        for port in [0x3F7, 0x400, 0xE9, 0xFFFF] {
            assert!(map.unclaimed(port), "{port:#x}");
        }
        assert!(
            !ClaimedPorts::default().unclaimed(0xE9),
            "empty: ask the bus"
        );
    }
}
