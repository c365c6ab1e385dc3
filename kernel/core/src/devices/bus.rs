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

/// The port-I/O bus of one VM.
#[derive(Default)]
pub struct IoBus {
    devices: Vec<Box<dyn PortDevice>>,
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
        self.devices.push(device);
        Ok(())
    }

    fn find(&mut self, port: u16) -> Option<&mut Box<dyn PortDevice>> {
        self.devices
            .iter_mut()
            .find(|d| d.ports().iter().any(|r| r.contains(port)))
    }

    /// Guest `IN` from `port`.
    pub fn read(&mut self, port: u16, size: AccessSize, fx: &mut Effects) -> BusResult<u32> {
        match self.find(port) {
            Some(dev) => BusResult::Claimed(dev.read(port, size, fx) & size.mask()),
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
            Some(dev) => {
                dev.write(port, size, value & size.mask(), fx);
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
}
