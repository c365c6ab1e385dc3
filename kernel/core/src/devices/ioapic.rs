//! A virtual I/O APIC: the Intel 82093AA (datasheet, sections 3.0-3.2) as
//! ICH/PCH chipsets integrate it, with 24 redirection entries and version
//! 0x20, which adds the directed-EOI register at offset 0x40.
//!
//! # Register window (82093AA 3.0, Table 1; 4 KiB at [`IOAPIC_BASE`])
//!
//! | offset | register |
//! |--------|----------|
//! | 0x00 | IOREGSEL: index of the register IOWIN reaches (bits 7:0) |
//! | 0x10 | IOWIN: the selected register |
//! | 0x40 | EOI: writing a vector ends a level-triggered interrupt (ICH) |
//!
//! Accesses are 32 bits wide at those offsets; any other offset reads 0 and
//! ignores writes.
//!
//! Registers through IOWIN (82093AA 3.2): 0x00 IOAPICID (ID in bits 27:24),
//! 0x01 IOAPICVER (version 0x20 in bits 7:0, highest redirection entry 23
//! in bits 23:16), 0x02 IOAPICARB (arbitration ID in bits 27:24, loaded from
//! the ID when the ID is written; read-only), 0x10 + 2n / 0x11 + 2n: the low
//! and high dwords of redirection entry `n` (IOREDTBL, 3.2.4). Other indexes
//! read 0 and ignore writes.
//!
//! # Redirection entries (82093AA 3.2.4)
//!
//! Bits 7:0 vector, 10:8 delivery mode, 11 destination mode (0 physical, 1
//! logical), 12 delivery status (read-only), 13 pin polarity (1 active low),
//! 14 Remote IRR (read-only), 15 trigger mode (1 level), 16 mask, 63:56
//! destination. Reserved bits 55:17 read 0 and ignore writes.
//!
//! Modelling choices:
//! - Delivery is immediate (the message is returned to the caller, which
//!   hands it to the local APICs), so the delivery status bit is always 0.
//! - Polarity is stored only: the hypervisor always passes the *logical*
//!   asserted state of a pin to [`IoApic::set_irq`], so no inversion is
//!   applied.
//! - The reserved delivery modes 011 and 110 send nothing (and set no Remote
//!   IRR). SMI, NMI, INIT and ExtINT are always treated as edge-triggered, as
//!   the datasheet requires of those modes; only Fixed and Lowest Priority
//!   entries use level semantics and Remote IRR.
//! - Edge-triggered: a rising edge of an unmasked pin sends one message; an
//!   edge on a masked pin is lost (3.2.4, Interrupt Mask).
//! - Level-triggered: while the pin is asserted, unmasked and Remote IRR is
//!   clear, one message is sent and Remote IRR set. An EOI for the vector
//!   (the local APIC's EOI broadcast, [`IoApic::eoi`], or the EOI register)
//!   clears Remote IRR and, if the pin is still asserted, sends again. A
//!   redirection-entry write that leaves such a pin deliverable (unmasking
//!   it, say) sends at once.
//! - Changing an entry to edge-triggered clears its Remote IRR, as on real
//!   I/O APICs (what older Linux versions rely on to clear a stuck Remote
//!   IRR on I/O APICs without an EOI register).

use alloc::vec::Vec;

use super::apic_msg::{DeliveryMode, Destination, InterruptMessage};

/// Guest-physical base of the register window (the PC default, 82093AA 3.0).
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Size of the register window.
pub const WINDOW_LEN: u64 = 0x1000;
/// Number of redirection entries (interrupt input pins) of ICH/PCH I/O APICs.
pub const PINS: usize = 24;
/// IOAPICVER version (bits 7:0): 0x20 has the EOI register.
pub const VERSION: u32 = 0x20;

/// Window offset of the I/O register select register.
pub const IOREGSEL: u32 = 0x00;
/// Window offset of the I/O window register.
pub const IOWIN: u32 = 0x10;
/// Window offset of the EOI register (version 0x20 and later).
pub const EOI: u32 = 0x40;

/// IOREGSEL index of the identification register.
pub const IOAPICID: u8 = 0x00;
/// IOREGSEL index of the version register.
pub const IOAPICVER: u8 = 0x01;
/// IOREGSEL index of the arbitration register.
pub const IOAPICARB: u8 = 0x02;
/// IOREGSEL index of redirection entry 0's low dword (entry `n`: `+ 2n`,
/// high dword `+ 2n + 1`).
pub const IOREDTBL: u8 = 0x10;

/// Redirection entry: vector (bits 7:0).
pub const RTE_VECTOR: u64 = 0xFF;
/// Redirection entry: delivery mode (bits 10:8), shift.
pub const RTE_DELIVERY_MODE_SHIFT: u32 = 8;
/// Redirection entry: logical destination mode (bit 11).
pub const RTE_DEST_LOGICAL: u64 = 1 << 11;
/// Redirection entry: delivery status (bit 12, read-only).
pub const RTE_DELIVERY_STATUS: u64 = 1 << 12;
/// Redirection entry: pin polarity active low (bit 13).
pub const RTE_POLARITY_LOW: u64 = 1 << 13;
/// Redirection entry: Remote IRR (bit 14, read-only).
pub const RTE_REMOTE_IRR: u64 = 1 << 14;
/// Redirection entry: level-triggered (bit 15).
pub const RTE_LEVEL: u64 = 1 << 15;
/// Redirection entry: masked (bit 16).
pub const RTE_MASKED: u64 = 1 << 16;
/// Redirection entry: destination field (bits 63:56), shift.
pub const RTE_DEST_SHIFT: u32 = 56;
/// Redirection entry bits software can write: everything defined but the
/// read-only delivery status and Remote IRR.
pub const RTE_WRITABLE: u64 = 0xFF00_0000_0001_AFFF;

/// ID register: the ID field (bits 27:24).
const ID_MASK: u32 = 0x0F00_0000;

/// One I/O APIC.
#[derive(Clone, Debug)]
pub struct IoApic {
    /// APIC ID (4 bits).
    id: u8,
    /// Arbitration ID (4 bits), loaded from the ID when it is written.
    arb: u8,
    /// IOREGSEL.
    regsel: u8,
    /// The redirection table.
    entries: [u64; PINS],
    /// Asserted state of each input pin, bit per pin.
    levels: u32,
}

impl IoApic {
    /// An I/O APIC with APIC ID `id` (bits 3:0) after reset: every entry
    /// masked with its other bits 0, IOREGSEL 0.
    pub fn new(id: u8) -> Self {
        IoApic {
            id: id & 0x0F,
            arb: id & 0x0F,
            regsel: 0,
            entries: [RTE_MASKED; PINS],
            levels: 0,
        }
    }

    /// The APIC ID (IOAPICID bits 27:24).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Redirection entry `pin`, all 64 bits (`None` for pins >= [`PINS`]).
    pub fn entry(&self, pin: u8) -> Option<u64> {
        self.entries.get(usize::from(pin)).copied()
    }

    /// Whether input `pin` is asserted (false for pins >= [`PINS`]).
    pub fn pin_asserted(&self, pin: u8) -> bool {
        usize::from(pin) < PINS && self.levels & (1 << pin) != 0
    }

    /// Guest 32-bit load at `offset` in the register window.
    pub fn mmio_read(&self, offset: u32) -> u32 {
        match offset {
            IOREGSEL => u32::from(self.regsel),
            IOWIN => self.read_register(self.regsel),
            _ => 0,
        }
    }

    /// Guest 32-bit store of `value` at `offset` in the register window.
    /// Returns the messages the store makes the I/O APIC send: a level
    /// interrupt made deliverable by a redirection-entry write, or the
    /// re-deliveries an EOI register write causes.
    pub fn mmio_write(&mut self, offset: u32, value: u32) -> Vec<InterruptMessage> {
        match offset {
            IOREGSEL => {
                self.regsel = value as u8;
                Vec::new()
            }
            IOWIN => self
                .write_register(self.regsel, value)
                .into_iter()
                .collect(),
            EOI => self.eoi(value as u8),
            _ => Vec::new(),
        }
    }

    /// The register at IOREGSEL index `index`.
    fn read_register(&self, index: u8) -> u32 {
        match index {
            IOAPICID => u32::from(self.id) << 24,
            IOAPICVER => VERSION | ((PINS as u32 - 1) << 16),
            IOAPICARB => u32::from(self.arb) << 24,
            _ => match Self::redirection_index(index) {
                Some((pin, high)) => {
                    let e = self.entries[pin];
                    if high {
                        (e >> 32) as u32
                    } else {
                        e as u32
                    }
                }
                None => 0,
            },
        }
    }

    fn write_register(&mut self, index: u8, value: u32) -> Option<InterruptMessage> {
        match index {
            IOAPICID => {
                self.id = ((value & ID_MASK) >> 24) as u8;
                self.arb = self.id;
                None
            }
            _ => {
                let (pin, high) = Self::redirection_index(index)?;
                let old = self.entries[pin];
                let written = if high {
                    (old & 0xFFFF_FFFF) | (u64::from(value) << 32)
                } else {
                    (old & !0xFFFF_FFFF) | u64::from(value)
                };
                let mut new = (written & RTE_WRITABLE) | (old & !RTE_WRITABLE);
                if new & RTE_LEVEL == 0 {
                    new &= !RTE_REMOTE_IRR;
                }
                self.entries[pin] = new;
                self.service_level(pin)
            }
        }
    }

    /// The pin and half (high dword?) of a redirection-table index.
    fn redirection_index(index: u8) -> Option<(usize, bool)> {
        let rel = usize::from(index.checked_sub(IOREDTBL)?);
        (rel < 2 * PINS).then_some((rel / 2, rel % 2 == 1))
    }

    /// Sets input `pin` to `asserted` (its logical state, whatever the
    /// entry's polarity). Returns the message this sends, if any: on a
    /// rising edge of an unmasked edge-triggered pin, or while an unmasked
    /// level-triggered pin is asserted with Remote IRR clear. Pins >=
    /// [`PINS`] are ignored.
    pub fn set_irq(&mut self, pin: u8, asserted: bool) -> Option<InterruptMessage> {
        let p = usize::from(pin);
        if p >= PINS {
            return None;
        }
        let bit = 1u32 << pin;
        let was = self.levels & bit != 0;
        if asserted {
            self.levels |= bit;
        } else {
            self.levels &= !bit;
        }
        let e = self.entries[p];
        if e & RTE_MASKED != 0 || !asserted {
            return None;
        }
        if level_semantics(e) {
            self.service_level(p)
        } else if !was {
            decode(e)
        } else {
            None
        }
    }

    /// End of interrupt for `vector` (the local APIC's EOI broadcast for a
    /// level-triggered vector, or the EOI register): clears Remote IRR of
    /// every level-triggered entry with that vector; each such pin that is
    /// still asserted (and unmasked) sends again. Returns those messages.
    pub fn eoi(&mut self, vector: u8) -> Vec<InterruptMessage> {
        let mut sent = Vec::new();
        for pin in 0..PINS {
            let e = self.entries[pin];
            if e & RTE_REMOTE_IRR != 0 && e & RTE_VECTOR == u64::from(vector) {
                self.entries[pin] = e & !RTE_REMOTE_IRR;
                sent.extend(self.service_level(pin));
            }
        }
        sent
    }

    /// Sends pin `pin`'s level interrupt if it is deliverable now: a
    /// level-semantics entry, unmasked, the pin asserted, Remote IRR clear.
    fn service_level(&mut self, pin: usize) -> Option<InterruptMessage> {
        let e = self.entries[pin];
        let asserted = self.levels & (1 << pin) != 0;
        if !level_semantics(e) || e & (RTE_MASKED | RTE_REMOTE_IRR) != 0 || !asserted {
            return None;
        }
        let msg = decode(e)?;
        self.entries[pin] = e | RTE_REMOTE_IRR;
        Some(msg)
    }
}

/// The delivery mode of entry `e` (`None` for the reserved 011 and 110).
fn delivery_mode(e: u64) -> Option<DeliveryMode> {
    match DeliveryMode::from_bits((e >> RTE_DELIVERY_MODE_SHIFT) as u8 & 7)? {
        DeliveryMode::StartUp => None,
        mode => Some(mode),
    }
}

/// Whether entry `e` uses level semantics (Remote IRR, EOI): level-triggered
/// with a Fixed or Lowest Priority delivery mode.
fn level_semantics(e: u64) -> bool {
    e & RTE_LEVEL != 0
        && matches!(
            delivery_mode(e),
            Some(DeliveryMode::Fixed | DeliveryMode::LowestPriority)
        )
}

/// The message entry `e` sends (`None` for a reserved delivery mode).
fn decode(e: u64) -> Option<InterruptMessage> {
    let mode = delivery_mode(e)?;
    let dest_field = (e >> RTE_DEST_SHIFT) as u32;
    let dest = if e & RTE_DEST_LOGICAL != 0 {
        Destination::Logical(dest_field)
    } else {
        Destination::Physical(dest_field)
    };
    Some(InterruptMessage {
        vector: (e & RTE_VECTOR) as u8,
        mode,
        dest,
        level_triggered: level_semantics(e),
        assert: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes redirection entry `pin` (high dword first, as Linux does).
    fn program(io: &mut IoApic, pin: u8, entry: u64) -> Vec<InterruptMessage> {
        let index = u32::from(IOREDTBL) + 2 * u32::from(pin);
        io.mmio_write(IOREGSEL, index + 1);
        let mut sent = io.mmio_write(IOWIN, (entry >> 32) as u32);
        io.mmio_write(IOREGSEL, index);
        sent.extend(io.mmio_write(IOWIN, entry as u32));
        sent
    }

    fn read_reg(io: &mut IoApic, index: u32) -> u32 {
        io.mmio_write(IOREGSEL, index);
        io.mmio_read(IOWIN)
    }

    fn read_entry(io: &mut IoApic, pin: u8) -> u64 {
        let index = u32::from(IOREDTBL) + 2 * u32::from(pin);
        u64::from(read_reg(io, index)) | (u64::from(read_reg(io, index + 1)) << 32)
    }

    fn fixed(vector: u8, dest: u8) -> InterruptMessage {
        InterruptMessage {
            vector,
            mode: DeliveryMode::Fixed,
            dest: Destination::Physical(u32::from(dest)),
            level_triggered: false,
            assert: true,
        }
    }

    fn level(vector: u8, dest: u8) -> InterruptMessage {
        InterruptMessage {
            level_triggered: true,
            ..fixed(vector, dest)
        }
    }

    #[test]
    fn reset_values() {
        let mut io = IoApic::new(2);
        assert_eq!(io.mmio_read(IOREGSEL), 0);
        for pin in 0..PINS as u8 {
            assert_eq!(read_entry(&mut io, pin), RTE_MASKED, "pin {pin}");
            assert_eq!(io.entry(pin), Some(RTE_MASKED));
            assert!(!io.pin_asserted(pin));
        }
        assert_eq!(io.entry(24), None);
        assert_eq!(IOAPIC_BASE, 0xFEC0_0000);
        assert_eq!(WINDOW_LEN, 4096);
    }

    #[test]
    fn id_version_arbitration() {
        let mut io = IoApic::new(0x12);
        assert_eq!(io.id(), 2, "4-bit ID");
        assert_eq!(read_reg(&mut io, 0x00), 0x0200_0000);
        assert_eq!(read_reg(&mut io, 0x01), 0x0017_0020);
        assert_eq!(read_reg(&mut io, 0x02), 0x0200_0000);
        // ID bits 27:24 writable; the arbitration ID follows the ID.
        io.mmio_write(IOREGSEL, 0);
        io.mmio_write(IOWIN, 0xFFFF_FFFF);
        assert_eq!(read_reg(&mut io, 0x00), 0x0F00_0000);
        assert_eq!(io.id(), 0xF);
        assert_eq!(read_reg(&mut io, 0x02), 0x0F00_0000);
        // VER and ARB are read-only.
        io.mmio_write(IOREGSEL, 1);
        io.mmio_write(IOWIN, 0);
        assert_eq!(read_reg(&mut io, 0x01), 0x0017_0020);
        io.mmio_write(IOREGSEL, 2);
        io.mmio_write(IOWIN, 0);
        assert_eq!(read_reg(&mut io, 0x02), 0x0F00_0000);
    }

    #[test]
    fn unknown_registers_and_offsets() {
        let mut io = IoApic::new(0);
        for index in [0x03, 0x0F, 0x40, 0x41, 0xFF] {
            io.mmio_write(IOREGSEL, index);
            assert!(io.mmio_write(IOWIN, 0xFFFF_FFFF).is_empty());
            assert_eq!(io.mmio_read(IOWIN), 0, "index {index:#x}");
        }
        // IOREGSEL keeps bits 7:0.
        io.mmio_write(IOREGSEL, 0x1234_5611);
        assert_eq!(io.mmio_read(IOREGSEL), 0x11);
        // Other offsets: reads 0, writes ignored; EOI reads 0.
        for off in [0x04, 0x08, 0x14, 0x20, 0x30, 0x44, 0xFFC] {
            assert!(io.mmio_write(off, 0).is_empty());
            assert_eq!(io.mmio_read(off), 0, "offset {off:#x}");
        }
        assert_eq!(io.mmio_read(IOREGSEL), 0x11);
        assert_eq!(io.mmio_read(EOI), 0);
        assert_eq!(read_entry(&mut io, 0), RTE_MASKED);
    }

    #[test]
    fn entry_round_trip_and_read_only_bits() {
        let mut io = IoApic::new(0);
        // All ones: delivery status, Remote IRR and reserved bits stay 0.
        program(&mut io, 5, u64::MAX);
        assert_eq!(read_entry(&mut io, 5), RTE_WRITABLE);
        assert_eq!(read_entry(&mut io, 5) & RTE_DELIVERY_STATUS, 0);
        assert_eq!(read_entry(&mut io, 5) & RTE_REMOTE_IRR, 0);
        let e = 0x0300_0000_0000_A931; // dest 3, low, level, logical, vector 0x31
        program(&mut io, 23, e);
        assert_eq!(read_entry(&mut io, 23), e);
        assert_eq!(io.entry(23), Some(e));
        // Each half written alone keeps the other.
        io.mmio_write(IOREGSEL, u32::from(IOREDTBL) + 46);
        io.mmio_write(IOWIN, 0x0001_0040);
        assert_eq!(read_entry(&mut io, 23), 0x0300_0000_0001_0040);
        io.mmio_write(IOREGSEL, u32::from(IOREDTBL) + 47);
        io.mmio_write(IOWIN, 0xFFFF_FFFF);
        assert_eq!(read_entry(&mut io, 23), 0xFF00_0000_0001_0040);
        // Neighbouring entries untouched.
        assert_eq!(read_entry(&mut io, 22), RTE_MASKED);
        assert_eq!(read_entry(&mut io, 0), RTE_MASKED);
    }

    #[test]
    fn edge_triggered_sends_on_rising_edge_only() {
        let mut io = IoApic::new(0);
        assert!(program(&mut io, 4, 0x0100_0000_0000_0024).is_empty());
        assert_eq!(io.set_irq(4, true), Some(fixed(0x24, 1)));
        assert_eq!(io.set_irq(4, true), None, "no edge while held high");
        assert_eq!(io.set_irq(4, false), None);
        assert!(!io.pin_asserted(4));
        assert_eq!(io.set_irq(4, true), Some(fixed(0x24, 1)));
        assert_eq!(read_entry(&mut io, 4) & RTE_REMOTE_IRR, 0);
        // An EOI does nothing for an edge entry.
        io.set_irq(4, false);
        assert!(io.eoi(0x24).is_empty());
    }

    #[test]
    fn level_triggered_remote_irr_and_eoi() {
        let mut io = IoApic::new(0);
        program(&mut io, 10, 0x0000_0000_0000_8051);
        assert_eq!(io.set_irq(10, true), Some(level(0x51, 0)));
        assert_ne!(read_entry(&mut io, 10) & RTE_REMOTE_IRR, 0);
        // Remote IRR set: nothing more until the EOI.
        assert_eq!(io.set_irq(10, true), None);
        assert_eq!(io.set_irq(10, false), None);
        assert_eq!(io.set_irq(10, true), None);
        // A redirection write keeps Remote IRR and does not re-send.
        io.mmio_write(IOREGSEL, u32::from(IOREDTBL) + 20);
        assert!(io.mmio_write(IOWIN, 0x8051).is_empty());
        assert_ne!(read_entry(&mut io, 10) & RTE_REMOTE_IRR, 0);
        // EOI of another vector: nothing.
        assert!(io.eoi(0x52).is_empty());
        // EOI with the pin still asserted: sent again, Remote IRR set again.
        assert_eq!(io.eoi(0x51), [level(0x51, 0)]);
        assert_ne!(read_entry(&mut io, 10) & RTE_REMOTE_IRR, 0);
        // Deasserted, then EOI (through the EOI register): clear, nothing sent.
        io.set_irq(10, false);
        assert!(io.mmio_write(EOI, 0x51).is_empty());
        assert_eq!(read_entry(&mut io, 10) & RTE_REMOTE_IRR, 0);
        assert_eq!(io.set_irq(10, true), Some(level(0x51, 0)));
        // The EOI register re-delivers like the broadcast (bits 31:8 ignored).
        assert_eq!(io.mmio_write(EOI, 0xFFFF_FF51), [level(0x51, 0)]);
    }

    #[test]
    fn eoi_serves_every_entry_with_the_vector() {
        let mut io = IoApic::new(0);
        program(&mut io, 1, 0x0000_0000_0000_8060);
        program(&mut io, 2, 0x0100_0000_0000_8060);
        program(&mut io, 3, 0x0000_0000_0000_0060); // edge, same vector
        assert!(io.set_irq(1, true).is_some());
        assert!(io.set_irq(2, true).is_some());
        assert!(io.set_irq(3, true).is_some());
        assert_eq!(io.eoi(0x60), [level(0x60, 0), level(0x60, 1)]);
        io.set_irq(1, false);
        assert_eq!(io.eoi(0x60), [level(0x60, 1)]);
        assert_eq!(read_entry(&mut io, 1) & RTE_REMOTE_IRR, 0);
        assert_eq!(read_entry(&mut io, 3) & RTE_REMOTE_IRR, 0);
    }

    #[test]
    fn mask_and_unmask() {
        let mut io = IoApic::new(0);
        // Masked edge: the edge is lost, unmasking sends nothing.
        program(&mut io, 4, RTE_MASKED | 0x30);
        assert_eq!(io.set_irq(4, true), None);
        assert!(program(&mut io, 4, 0x30).is_empty());
        assert_eq!(io.set_irq(4, true), None, "still high: no new edge");
        io.set_irq(4, false);
        assert_eq!(io.set_irq(4, true), Some(fixed(0x30, 0)));
        // Masked level: ignored while masked, sent when unmasked.
        program(&mut io, 9, RTE_MASKED | RTE_LEVEL | 0x41);
        assert_eq!(io.set_irq(9, true), None);
        assert_eq!(read_entry(&mut io, 9) & RTE_REMOTE_IRR, 0);
        assert_eq!(program(&mut io, 9, RTE_LEVEL | 0x41), [level(0x41, 0)]);
        assert_ne!(read_entry(&mut io, 9) & RTE_REMOTE_IRR, 0);
        // Masking then unmasking with Remote IRR set sends nothing.
        assert!(program(&mut io, 9, RTE_MASKED | RTE_LEVEL | 0x41).is_empty());
        assert!(program(&mut io, 9, RTE_LEVEL | 0x41).is_empty());
        // EOI while masked: Remote IRR clears, nothing sent until unmasked.
        program(&mut io, 9, RTE_MASKED | RTE_LEVEL | 0x41);
        assert!(io.eoi(0x41).is_empty());
        assert_eq!(read_entry(&mut io, 9) & RTE_REMOTE_IRR, 0);
        assert_eq!(program(&mut io, 9, RTE_LEVEL | 0x41), [level(0x41, 0)]);
        // Unmasking a deasserted level pin sends nothing.
        program(&mut io, 11, RTE_MASKED | RTE_LEVEL | 0x42);
        assert!(program(&mut io, 11, RTE_LEVEL | 0x42).is_empty());
    }

    #[test]
    fn switching_to_edge_clears_remote_irr() {
        let mut io = IoApic::new(0);
        program(&mut io, 7, RTE_LEVEL | 0x70);
        assert!(io.set_irq(7, true).is_some());
        assert!(program(&mut io, 7, 0x70).is_empty(), "edge: no edge seen");
        assert_eq!(read_entry(&mut io, 7) & RTE_REMOTE_IRR, 0);
        // Back to level with the pin still high: delivered again.
        assert_eq!(program(&mut io, 7, RTE_LEVEL | 0x70), [level(0x70, 0)]);
    }

    #[test]
    fn destination_and_mode_decode() {
        let mut io = IoApic::new(0);
        // Logical destination 0x0F, lowest priority, level, active low.
        let e = 0x0F00_0000_0000_0000 | RTE_DEST_LOGICAL | RTE_POLARITY_LOW | RTE_LEVEL | 0x0162;
        program(&mut io, 0, e);
        assert_eq!(
            io.set_irq(0, true),
            Some(InterruptMessage {
                vector: 0x62,
                mode: DeliveryMode::LowestPriority,
                dest: Destination::Logical(0x0F),
                level_triggered: true,
                assert: true,
            })
        );
        // Physical broadcast 0xFF.
        program(&mut io, 1, 0xFF00_0000_0000_0063);
        assert_eq!(
            io.set_irq(1, true).map(|m| m.dest),
            Some(Destination::Physical(0xFF))
        );
        // NMI programmed level: treated as edge (no Remote IRR).
        program(&mut io, 2, 0x0200_0000_0000_0000 | RTE_LEVEL | (4 << 8));
        let m = io.set_irq(2, true).unwrap();
        assert_eq!(m.mode, DeliveryMode::Nmi);
        assert!(!m.level_triggered);
        assert_eq!(m.dest, Destination::Physical(2));
        assert_eq!(read_entry(&mut io, 2) & RTE_REMOTE_IRR, 0);
        assert_eq!(io.set_irq(2, true), None, "edge semantics");
        // ExtINT, SMI, INIT decode.
        for (bits, mode) in [
            (7, DeliveryMode::ExtInt),
            (2, DeliveryMode::Smi),
            (5, DeliveryMode::Init),
        ] {
            program(&mut io, 3, bits << 8);
            io.set_irq(3, false);
            assert_eq!(io.set_irq(3, true).map(|m| m.mode), Some(mode));
        }
        // Reserved modes 011 and 110 send nothing, edge or level.
        for bits in [3u64, 6] {
            program(&mut io, 4, (bits << 8) | 0x44);
            io.set_irq(4, false);
            assert_eq!(io.set_irq(4, true), None);
            program(&mut io, 4, RTE_LEVEL | (bits << 8) | 0x44);
            assert_eq!(io.set_irq(4, true), None);
            assert_eq!(read_entry(&mut io, 4) & RTE_REMOTE_IRR, 0);
        }
    }

    #[test]
    fn pins_out_of_range_ignored() {
        let mut io = IoApic::new(0);
        for pin in [24u8, 25, 100, 255] {
            assert_eq!(io.set_irq(pin, true), None);
            assert!(!io.pin_asserted(pin));
        }
        // Index 0x40 (entry 24 low) and beyond are not entries.
        io.mmio_write(IOREGSEL, 0x40);
        io.mmio_write(IOWIN, 0x20);
        assert_eq!(io.mmio_read(IOWIN), 0);
        assert!(io.eoi(0).is_empty());
    }

    #[test]
    fn hostile_programming_never_panics() {
        let mut io = IoApic::new(0);
        let mut x = 0x9E37_79B9_u32;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            match x % 5 {
                0 => {
                    io.mmio_write([0x00, 0x10, 0x40, 0x20][(x >> 4) as usize % 4], x >> 8);
                }
                1 => {
                    io.mmio_read([0x00, 0x10, 0x40, 0x20][(x >> 4) as usize % 4]);
                }
                2 => {
                    io.set_irq((x >> 8) as u8 % 30, x & 0x100_0000 != 0);
                }
                3 => {
                    io.eoi((x >> 8) as u8);
                }
                _ => {
                    io.mmio_write(IOREGSEL, (x >> 8) & 0x3F);
                }
            }
        }
    }
}
