//! The legacy PC device set a stock Linux kernel expects with
//! `console=ttyS0 acpi=off pci=off` (8259 PIC mode, PIT tick, 16550 console
//! on IRQ 4, i8042 and CMOS/RTC probes), on one [`IoBus`], and its time base.
//!
//! | ports | device | ISA IRQ |
//! |-------|--------|---------|
//! | 0x20-0x21, 0xA0-0xA1, 0x4D0-0x4D1 | [`PicPair`] with ELCR | (INTR) |
//! | 0x40-0x43, 0x61 | [`Pit`] with port B | 0 |
//! | 0x60, 0x64 | [`I8042`] | 1, 12 |
//! | 0x70-0x71 | [`Cmos`] | 8 |
//! | 0x80 | [`PostCode`] | |
//! | 0x92 | [`SystemControlA`] | |
//! | 0x3F8-0x3FF | [`Serial16550`] (COM1) | 4 |
//! | 0xCF8-0xCFF | [`PciHost`] (reset control at 0xCF9) | |
//!
//! Time: the VM calls [`advance`] with a monotonic `now_ns` before it routes
//! a port access (at least for the PIT, CMOS and UART ports) and whenever it
//! wakes a vCPU, then applies the effects (IRQ 0 edges, IRQ 8 and IRQ 4
//! levels) like those of an access. [`next_deadline_ns`] is the earliest time
//! at which a device will change an IRQ line on its own: a halted vCPU can
//! sleep until then (or until host input).

use alloc::boxed::Box;

use super::bus::{BusError, IoBus};
use super::chipset::{PciHost, PostCode, SystemControlA};
use super::cmos::Cmos;
use super::i8042::I8042;
use super::pic8259::PicPair;
use super::pit8254::{Pit, PIT_IRQ};
use super::serial16550::Serial16550;
use super::{DeviceEffect, Effects, PortDevice};

/// What the devices need from the VM at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcConfig {
    /// Wall-clock time for the RTC, seconds since the Unix epoch (UTC).
    pub wall_clock_secs: u64,
    /// The monotonic time base's current value (what later [`advance`]
    /// calls continue from).
    pub now_ns: u64,
    /// The VM's memory size, for the CMOS memory-size bytes.
    pub memory_bytes: u64,
}

fn register_missing<T: PortDevice>(
    bus: &mut IoBus,
    make: impl FnOnce() -> T,
) -> Result<(), BusError> {
    if bus.device::<T>().is_some() {
        return Ok(());
    }
    bus.register(Box::new(make()))
}

/// Registers every device of the set that `bus` does not hold yet (by type;
/// a VM created with COM1 keeps its UART). Fails only if another device
/// already owns one of the set's ports.
pub fn add_pc_devices(bus: &mut IoBus, cfg: &PcConfig) -> Result<(), BusError> {
    register_missing(bus, Serial16550::com1)?;
    register_missing(bus, PicPair::new)?;
    register_missing(bus, || {
        let mut pit = Pit::new();
        pit.tick_until(cfg.now_ns);
        pit
    })?;
    register_missing(bus, || {
        let mut cmos = Cmos::new(cfg.wall_clock_secs, cfg.now_ns);
        cmos.set_memory_size(cfg.memory_bytes);
        cmos
    })?;
    register_missing(bus, I8042::new)?;
    register_missing(bus, PostCode::new)?;
    register_missing(bus, SystemControlA::new)?;
    register_missing(bus, PciHost::new)
}

/// A bus with the whole PC device set.
pub fn pc_devices(cfg: &PcConfig) -> IoBus {
    let mut bus = IoBus::new();
    // The set's port ranges are fixed and disjoint (tested below), so
    // registering into an empty bus cannot fail.
    let _ = add_pc_devices(&mut bus, cfg);
    bus
}

/// Advances every time-driven device on `bus` to `now_ns` (monotonic;
/// earlier values are ignored) and pushes the resulting IRQ changes: one
/// IRQ 0 edge (raise then lower) if the PIT's channel 0 fired at least once,
/// IRQ 8 from the RTC, IRQ 4 from a UART receive timeout. Returns the number
/// of channel 0 periods that elapsed (several collapse into one edge).
pub fn advance(bus: &mut IoBus, now_ns: u64, fx: &mut Effects) -> u64 {
    let edges = bus
        .device_mut::<Pit>()
        .map_or(0, |pit| pit.tick_until(now_ns));
    if edges > 0 {
        fx.push(DeviceEffect::RaiseIrq(PIT_IRQ));
        fx.push(DeviceEffect::LowerIrq(PIT_IRQ));
    }
    if let Some(cmos) = bus.device_mut::<Cmos>() {
        cmos.advance(now_ns, fx);
    }
    if let Some(uart) = bus.device_mut::<Serial16550>() {
        uart.advance(now_ns, fx);
    }
    edges
}

/// The earliest time (ns) at which a device on `bus` will change an IRQ line
/// by itself: the PIT's next IRQ 0 edge, the RTC's next enabled interrupt,
/// the UART's receive timeout. `None`: nothing will happen without guest
/// action or host input. May lie at or before the last [`advance`] when an
/// event is due; the caller then advances at once.
pub fn next_deadline_ns(bus: &IoBus) -> Option<u64> {
    [
        bus.device::<Pit>().and_then(Pit::next_deadline_ns),
        bus.device::<Cmos>().and_then(Cmos::next_deadline_ns),
        bus.device::<Serial16550>()
            .and_then(Serial16550::next_deadline_ns),
    ]
    .into_iter()
    .flatten()
    .min()
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    /// The bus's noted deadlines agree with the devices' own.
    #[test]
    fn bus_deadline_is_the_devices_earliest() {
        let cfg = PcConfig {
            wall_clock_secs: 0,
            now_ns: 0,
            memory_bytes: 1 << 20,
        };
        let mut bus = pc_devices(&cfg);
        assert_eq!(bus.next_deadline_ns(), None);
        let mut fx = Effects::new();
        // PIT channel 0, mode 2, count 1193 (1 ms): a deadline at 1 ms.
        for (port, v) in [(0x43, 0x34), (0x40, 0xA9), (0x40, 0x04)] {
            bus.write(port, crate::exit::AccessSize::Byte, v, &mut fx);
        }
        assert_eq!(bus.next_deadline_ns(), None, "not noted yet");
        bus.note_deadline(bus.find(0x40).unwrap());
        assert_eq!(bus.next_deadline_ns(), next_deadline_ns(&bus));
        assert!(bus.next_deadline_ns().is_some());
        advance(&mut bus, 5_000_000, &mut fx);
        bus.note_deadlines();
        assert_eq!(bus.next_deadline_ns(), next_deadline_ns(&bus));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::interrupt::{decide, Delivery, GuestInterruptibility};
    use crate::devices::{BusResult, ResetSource};
    use crate::exit::AccessSize;
    use alloc::vec::Vec;

    const CFG: PcConfig = PcConfig {
        wall_clock_secs: 1_709_210_096,
        now_ns: 0,
        memory_bytes: 256 << 20,
    };

    /// Applies effects the way `exit::io::apply_effects` does for IRQs.
    fn apply(bus: &mut IoBus, fx: &Effects) -> Vec<u8> {
        let mut out = Vec::new();
        for e in fx.iter() {
            match e {
                DeviceEffect::Output(b) => out.push(b),
                DeviceEffect::RaiseIrq(l) => bus.device_mut::<PicPair>().unwrap().set_irq(l, true),
                DeviceEffect::LowerIrq(l) => bus.device_mut::<PicPair>().unwrap().set_irq(l, false),
            }
        }
        out
    }

    fn out(bus: &mut IoBus, port: u16, v: u8) -> Effects {
        let mut fx = Effects::new();
        assert_eq!(
            bus.write(port, AccessSize::Byte, u32::from(v), &mut fx),
            BusResult::Claimed(()),
            "port {port:#x}"
        );
        apply(bus, &fx);
        fx
    }

    fn inb(bus: &mut IoBus, port: u16) -> u8 {
        let mut fx = Effects::new();
        let v = match bus.read(port, AccessSize::Byte, &mut fx) {
            BusResult::Claimed(v) => v as u8,
            BusResult::Unclaimed(_) => panic!("port {port:#x} unclaimed"),
        };
        apply(bus, &fx);
        v
    }

    fn init_pic(bus: &mut IoBus) {
        for (p, v) in [
            (0x20, 0x11),
            (0xA0, 0x11),
            (0x21, 0x30),
            (0xA1, 0x38),
            (0x21, 0x04),
            (0xA1, 0x02),
            (0x21, 0x01),
            (0xA1, 0x01),
            (0x21, 0x00),
            (0xA1, 0x00),
        ] {
            out(bus, p, v);
        }
    }

    #[test]
    fn full_set_registered_with_disjoint_ports() {
        let bus = pc_devices(&CFG);
        let names: Vec<_> = bus.device_names().collect();
        assert_eq!(
            names,
            [
                "serial16550",
                "pic8259",
                "pit8254",
                "cmos-rtc",
                "i8042",
                "post-code",
                "system-control-a",
                "pci-host"
            ]
        );
        // Registering the set again (same types) is a no-op; a fresh bus with
        // the same devices registered one by one accepts every one of them.
        let mut bus2 = IoBus::new();
        assert!(add_pc_devices(&mut bus2, &CFG).is_ok());
        assert!(add_pc_devices(&mut bus2, &CFG).is_ok());
        assert_eq!(bus2.device_names().count(), 8);
        // A VM that already has COM1 keeps its UART.
        let mut bus3 = IoBus::new();
        bus3.register(Box::new(Serial16550::com1())).unwrap();
        add_pc_devices(&mut bus3, &CFG).unwrap();
        assert_eq!(bus3.device_names().count(), 8);
    }

    #[test]
    fn every_documented_port_is_claimed() {
        let mut bus = pc_devices(&CFG);
        let ports = [
            0x20u16, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x60, 0x64,
            0x70, 0x71, 0x80, 0x92, 0x3F8, 0x3FF, 0xCF8, 0xCF9, 0xCFC, 0xCFF,
        ];
        for p in ports {
            let mut fx = Effects::new();
            assert!(
                matches!(
                    bus.read(p, AccessSize::Byte, &mut fx),
                    BusResult::Claimed(_)
                ),
                "{p:#x}"
            );
        }
        for p in [0x00u16, 0x62, 0x81, 0x2F8, 0x3F7, 0x400, 0xCF7, 0xD00] {
            let mut fx = Effects::new();
            assert!(
                matches!(
                    bus.read(p, AccessSize::Byte, &mut fx),
                    BusResult::Unclaimed(_)
                ),
                "{p:#x}"
            );
        }
    }

    /// The Linux timer path: PIC at 0x30, PIT at 100 Hz; the deadline says
    /// when to wake, `advance` raises IRQ 0, the decision injects.
    #[test]
    fn timer_tick_end_to_end() {
        let mut bus = pc_devices(&CFG);
        init_pic(&mut bus);
        out(&mut bus, 0x43, 0x34);
        out(&mut bus, 0x40, 0x9C);
        out(&mut bus, 0x40, 0x2E); // 11932
        let deadline = next_deadline_ns(&bus).unwrap();
        assert!((10_000_000..10_002_000).contains(&deadline), "{deadline}");
        let mut fx = Effects::new();
        assert_eq!(advance(&mut bus, deadline - 1, &mut fx), 0);
        assert!(fx.is_empty());
        assert_eq!(advance(&mut bus, deadline, &mut fx), 1);
        apply(&mut bus, &fx);
        let pending = bus.device::<PicPair>().unwrap().pending_vector();
        assert_eq!(pending, Some(0x30));
        let open = GuestInterruptibility {
            rflags_if: true,
            ..Default::default()
        };
        assert_eq!(decide(open, pending), Delivery::Inject(0x30));
        assert_eq!(
            decide(GuestInterruptibility::default(), pending),
            Delivery::RequestWindow
        );
        assert_eq!(bus.device_mut::<PicPair>().unwrap().ack(), Some(0x30));
        out(&mut bus, 0x20, 0x20);
        assert!(next_deadline_ns(&bus).unwrap() > deadline);
    }

    /// Interrupt-driven console output: THRE on IRQ 4 through the PIC.
    #[test]
    fn uart_thre_interrupt_reaches_pic() {
        let mut bus = pc_devices(&CFG);
        init_pic(&mut bus);
        out(&mut bus, 0x3FA, 0x87); // FIFO, trigger 8
        out(&mut bus, 0x3FC, 0x0B); // DTR RTS OUT2
        out(&mut bus, 0x3F9, 0x02); // ETBEI
        assert_eq!(
            bus.device::<PicPair>().unwrap().pending_vector(),
            Some(0x34)
        );
        assert_eq!(bus.device_mut::<PicPair>().unwrap().ack(), Some(0x34));
        assert_eq!(inb(&mut bus, 0x3FA) & 0x0F, 0x02, "THRE");
        let fx = out(&mut bus, 0x3F8, b'$');
        assert_eq!(fx.iter().next(), Some(DeviceEffect::Output(b'$')));
        out(&mut bus, 0x20, 0x20);
        assert_eq!(
            bus.device::<PicPair>().unwrap().pending_vector(),
            Some(0x34),
            "next THRE"
        );
    }

    /// Typed input below the trigger level arrives through the character
    /// timeout, which the deadline covers.
    #[test]
    fn uart_receive_timeout_via_deadline() {
        let mut bus = pc_devices(&CFG);
        init_pic(&mut bus);
        out(&mut bus, 0x3FB, 0x80);
        out(&mut bus, 0x3F8, 0x01); // 115200 baud
        out(&mut bus, 0x3FB, 0x03);
        out(&mut bus, 0x3FA, 0x87);
        out(&mut bus, 0x3FC, 0x08);
        out(&mut bus, 0x3F9, 0x01);
        let mut fx = Effects::new();
        advance(&mut bus, 5_000_000, &mut fx);
        bus.device_mut::<Serial16550>()
            .unwrap()
            .push_input(b"l", &mut fx);
        apply(&mut bus, &fx);
        assert_eq!(bus.device::<PicPair>().unwrap().pending_vector(), None);
        let d = next_deadline_ns(&bus).unwrap();
        assert!(d > 5_000_000 && d < 5_400_000, "{d}");
        let mut fx = Effects::new();
        advance(&mut bus, d, &mut fx);
        apply(&mut bus, &fx);
        assert_eq!(
            bus.device::<PicPair>().unwrap().pending_vector(),
            Some(0x34)
        );
        assert_eq!(inb(&mut bus, 0x3F8), b'l');
    }

    #[test]
    fn rtc_update_interrupt_on_slave_pic() {
        let mut bus = pc_devices(&CFG);
        init_pic(&mut bus);
        out(&mut bus, 0x70, 0x0A);
        out(&mut bus, 0x71, 0x20); // no periodic rate
        out(&mut bus, 0x70, 0x0B);
        out(&mut bus, 0x71, 0x12); // 24h, UIE
        assert_eq!(next_deadline_ns(&bus), Some(1_000_000_000));
        let mut fx = Effects::new();
        advance(&mut bus, 1_000_000_000, &mut fx);
        apply(&mut bus, &fx);
        assert_eq!(
            bus.device::<PicPair>().unwrap().pending_vector(),
            Some(0x38)
        );
        out(&mut bus, 0x70, 0x0C);
        assert_eq!(inb(&mut bus, 0x71) & 0x90, 0x90);
        assert!(!bus.device::<Cmos>().unwrap().irq_asserted());
    }

    #[test]
    fn resets_reported_from_three_sources() {
        let mut bus = pc_devices(&CFG);
        assert_eq!(
            out(&mut bus, 0x64, 0xFE).reset_requested(),
            Some(ResetSource::KeyboardController)
        );
        assert_eq!(
            out(&mut bus, 0xCF9, 0x06).reset_requested(),
            Some(ResetSource::ResetControl)
        );
        assert_eq!(
            out(&mut bus, 0x92, 0x01).reset_requested(),
            Some(ResetSource::FastReset)
        );
        assert!(out(&mut bus, 0x80, 0x55).reset_requested().is_none());
    }

    #[test]
    fn no_deadline_when_idle() {
        let bus = pc_devices(&CFG);
        assert_eq!(next_deadline_ns(&bus), None);
        let empty = IoBus::new();
        assert_eq!(next_deadline_ns(&empty), None);
        let mut empty = IoBus::new();
        assert_eq!(advance(&mut empty, 1, &mut Effects::new()), 0);
    }
}
