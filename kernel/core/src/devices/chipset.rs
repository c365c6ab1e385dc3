//! Small chipset ports a PC guest touches: benign, counted, and the ways it
//! asks for a reset.
//!
//! - [`PostCode`], port 0x80: BIOS POST codes and Linux's I/O delay
//!   (`outb_p`). Writes are swallowed (the last code is kept), reads return
//!   it.
//! - [`SystemControlA`], port 0x92 ("fast A20 and reset"): bit 1 is the A20
//!   gate (kept), bit 0 written as 1 pulses the CPU reset.
//! - [`PciHost`], ports 0xCF8-0xCFF: PCI configuration mechanism #1 with no
//!   devices behind it, plus the reset control register at byte port 0xCF9.
//!   A 32-bit access to 0xCF8 is CONFIG_ADDRESS (latched, read back with the
//!   reserved bits 30:24 and 1:0 clear); a byte access to 0xCF9 is the reset
//!   control register (bit 1 hard reset, bit 2 reset CPU: writing bit 2 set
//!   requests a reset, Linux's `reboot=pci`); CONFIG_DATA (0xCFC-0xCFF, any
//!   width) reads all ones, "no device", and drops writes. Other widths at
//!   0xCF8-0xCFB pass to the (empty) ISA bus: all ones, dropped. Every
//!   access is counted ([`PciHost::counts`]).

use core::any::Any;

use super::{widen_byte, Effects, PortDevice, PortRange, ResetSource};
use crate::exit::AccessSize;

/// POST code port.
pub const POST_PORT: u16 = 0x80;
/// System control port A.
pub const SYSTEM_CONTROL_A: u16 = 0x92;
/// PCI CONFIG_ADDRESS (32-bit) and first port of the range.
pub const PCI_CONFIG_ADDRESS: u16 = 0xCF8;
/// Reset control register (byte).
pub const RESET_CONTROL: u16 = 0xCF9;
/// PCI CONFIG_DATA.
pub const PCI_CONFIG_DATA: u16 = 0xCFC;

/// Reset control: hard (full) reset type.
pub const RCR_SYS_RST: u8 = 1 << 1;
/// Reset control: reset CPU (the request).
pub const RCR_RST_CPU: u8 = 1 << 2;

/// Port 0x80.
#[derive(Clone, Debug)]
pub struct PostCode {
    ports: [PortRange; 1],
    last: u8,
    writes: u64,
}

impl Default for PostCode {
    fn default() -> Self {
        Self::new()
    }
}

impl PostCode {
    /// Nothing written yet.
    pub fn new() -> Self {
        PostCode {
            ports: [PortRange::new(POST_PORT, 1)],
            last: 0,
            writes: 0,
        }
    }

    /// The last POST code written.
    pub fn last(&self) -> u8 {
        self.last
    }

    /// How many writes the port swallowed.
    pub fn writes(&self) -> u64 {
        self.writes
    }
}

impl PortDevice for PostCode {
    fn name(&self) -> &'static str {
        "post-code"
    }

    fn ports(&self) -> &[PortRange] {
        &self.ports
    }

    fn read(&mut self, _port: u16, size: AccessSize, _fx: &mut Effects) -> u32 {
        widen_byte(size, self.last)
    }

    fn write(&mut self, _port: u16, _size: AccessSize, value: u32, _fx: &mut Effects) {
        self.last = value.to_le_bytes()[0];
        self.writes = self.writes.saturating_add(1);
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Port 0x92.
#[derive(Clone, Debug)]
pub struct SystemControlA {
    ports: [PortRange; 1],
    value: u8,
}

impl Default for SystemControlA {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemControlA {
    /// A20 enabled, as firmware leaves it.
    pub fn new() -> Self {
        SystemControlA {
            ports: [PortRange::new(SYSTEM_CONTROL_A, 1)],
            value: 0x02,
        }
    }

    /// Whether bit 1 (A20) is set.
    pub fn a20_enabled(&self) -> bool {
        self.value & 0x02 != 0
    }
}

impl PortDevice for SystemControlA {
    fn name(&self) -> &'static str {
        "system-control-a"
    }

    fn ports(&self) -> &[PortRange] {
        &self.ports
    }

    fn read(&mut self, _port: u16, size: AccessSize, _fx: &mut Effects) -> u32 {
        widen_byte(size, self.value)
    }

    fn write(&mut self, _port: u16, _size: AccessSize, value: u32, fx: &mut Effects) {
        let v = value.to_le_bytes()[0];
        if v & 0x01 != 0 {
            fx.request_reset(ResetSource::FastReset);
        }
        // The reset bit reads back as 0 once the pulse is over.
        self.value = v & !0x01;
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Access counts of [`PciHost`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciCounts {
    /// CONFIG_ADDRESS writes.
    pub address_writes: u64,
    /// CONFIG_DATA reads (all answered "no device").
    pub data_reads: u64,
    /// CONFIG_DATA writes (dropped).
    pub data_writes: u64,
    /// Other accesses in 0xCF8-0xCFB (neither CONFIG_ADDRESS nor 0xCF9).
    pub other: u64,
}

/// Ports 0xCF8-0xCFF: an empty PCI configuration space and the reset
/// control register.
#[derive(Clone, Debug)]
pub struct PciHost {
    ports: [PortRange; 1],
    address: u32,
    reset_control: u8,
    counts: PciCounts,
}

impl Default for PciHost {
    fn default() -> Self {
        Self::new()
    }
}

impl PciHost {
    /// Address latch clear.
    pub fn new() -> Self {
        PciHost {
            ports: [PortRange::new(PCI_CONFIG_ADDRESS, 8)],
            address: 0,
            reset_control: 0,
            counts: PciCounts::default(),
        }
    }

    /// The latched CONFIG_ADDRESS.
    pub fn config_address(&self) -> u32 {
        self.address
    }

    /// Access counts.
    pub fn counts(&self) -> PciCounts {
        self.counts
    }
}

fn bump(c: &mut u64) {
    *c = c.saturating_add(1);
}

impl PortDevice for PciHost {
    fn name(&self) -> &'static str {
        "pci-host"
    }

    fn ports(&self) -> &[PortRange] {
        &self.ports
    }

    fn read(&mut self, port: u16, size: AccessSize, _fx: &mut Effects) -> u32 {
        match (port, size) {
            (PCI_CONFIG_ADDRESS, AccessSize::Dword) => self.address,
            (RESET_CONTROL, AccessSize::Byte) => u32::from(self.reset_control),
            (PCI_CONFIG_DATA.., _) => {
                bump(&mut self.counts.data_reads);
                size.mask()
            }
            _ => {
                bump(&mut self.counts.other);
                widen_byte(size, 0xFF)
            }
        }
    }

    fn write(&mut self, port: u16, size: AccessSize, value: u32, fx: &mut Effects) {
        match (port, size) {
            (PCI_CONFIG_ADDRESS, AccessSize::Dword) => {
                // Bits 30:24 and 1:0 are reserved and read as 0.
                self.address = value & 0x80FF_FFFC;
                bump(&mut self.counts.address_writes);
            }
            (RESET_CONTROL, AccessSize::Byte) => {
                let v = value.to_le_bytes()[0];
                if v & RCR_RST_CPU != 0 {
                    fx.request_reset(ResetSource::ResetControl);
                }
                // Only the reset type is kept; the request bit self-clears.
                self.reset_control = v & RCR_SYS_RST;
            }
            (PCI_CONFIG_DATA.., _) => bump(&mut self.counts.data_writes),
            _ => bump(&mut self.counts.other),
        }
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

    #[test]
    fn post_code_swallowed_and_counted() {
        let mut p = PostCode::new();
        let mut fx = Effects::new();
        for v in [0x11, 0x22, 0x33] {
            p.write(0x80, AccessSize::Byte, v, &mut fx);
        }
        assert!(fx.is_empty());
        assert_eq!((p.last(), p.writes()), (0x33, 3));
        assert_eq!(p.read(0x80, AccessSize::Byte, &mut fx), 0x33);
    }

    #[test]
    fn port_92_fast_reset_and_a20() {
        let mut s = SystemControlA::new();
        assert!(s.a20_enabled());
        let mut fx = Effects::new();
        s.write(0x92, AccessSize::Byte, 0x00, &mut fx);
        assert!(!s.a20_enabled() && fx.reset_requested().is_none());
        s.write(0x92, AccessSize::Byte, 0x03, &mut fx);
        assert_eq!(fx.reset_requested(), Some(ResetSource::FastReset));
        assert_eq!(s.read(0x92, AccessSize::Byte, &mut Effects::new()), 0x02);
    }

    #[test]
    fn pci_config_reads_no_device_and_counts() {
        let mut h = PciHost::new();
        let mut fx = Effects::new();
        h.write(0xCF8, AccessSize::Dword, 0xFF00_0003 | 0x8000_0000, &mut fx);
        assert_eq!(h.read(0xCF8, AccessSize::Dword, &mut fx), 0x8000_0000);
        h.write(0xCF8, AccessSize::Dword, 0x8000_0800, &mut fx);
        assert_eq!(h.config_address(), 0x8000_0800);
        assert_eq!(h.read(0xCFC, AccessSize::Dword, &mut fx), 0xFFFF_FFFF);
        assert_eq!(h.read(0xCFE, AccessSize::Word, &mut fx), 0xFFFF);
        assert_eq!(h.read(0xCFF, AccessSize::Byte, &mut fx), 0xFF);
        h.write(0xCFC, AccessSize::Dword, 0x1234, &mut fx);
        h.write(0xCF8, AccessSize::Word, 0x1234, &mut fx);
        assert_eq!(h.read(0xCFA, AccessSize::Byte, &mut fx), 0xFF);
        assert_eq!(
            h.counts(),
            PciCounts {
                address_writes: 2,
                data_reads: 3,
                data_writes: 1,
                other: 2
            }
        );
        assert!(fx.is_empty());
    }

    #[test]
    fn reset_control_register() {
        let mut h = PciHost::new();
        let mut fx = Effects::new();
        h.write(0xCF9, AccessSize::Byte, 0x02, &mut fx);
        assert!(fx.reset_requested().is_none(), "reset type only");
        assert_eq!(h.read(0xCF9, AccessSize::Byte, &mut fx), 0x02);
        h.write(0xCF9, AccessSize::Byte, 0x06, &mut fx);
        assert_eq!(fx.reset_requested(), Some(ResetSource::ResetControl));
        assert_eq!(h.read(0xCF9, AccessSize::Byte, &mut Effects::new()), 0x02);
        // A dword write to 0xCF8 with bit 10 set is an address, not a reset.
        let mut fx = Effects::new();
        h.write(0xCF8, AccessSize::Dword, 0x0000_0400, &mut fx);
        assert!(fx.reset_requested().is_none());
    }
}
