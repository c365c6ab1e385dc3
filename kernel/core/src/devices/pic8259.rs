//! A cascaded pair of 8259A programmable interrupt controllers (master at
//! 0x20/0x21, slave at 0xA0/0xA1 on the master's IRQ 2), as in a PC.
//!
//! Modelled: ICW1-ICW4 initialisation, OCW1 (IMR), OCW2 (non-specific and
//! specific EOI, rotation, set priority), OCW3 (IRR/ISR read select, poll,
//! special mask), edge- and level-triggered inputs (ICW1.LTIM for a whole
//! chip, or per line through the edge/level control registers ELCR1/ELCR2 at
//! ports 0x4D0/0x4D1 of PC chipsets, where IRQ 0, 1, 2, 8 and 13 are always
//! edge-triggered), auto-EOI, fully-nested priority with rotation. Not
//! modelled: special fully nested mode, buffered mode, 8080 mode.
//!
//! An edge-triggered input latches a request in IRR on a rising edge and the
//! INTA cycle clears it; a level-triggered input's IRR bit follows the line.
//!
//! The CPU side: [`PicPair::pending_vector`] says whether INTR is asserted and
//! with which vector; [`PicPair::ack`] is the INTA cycle the hypervisor performs
//! when it injects that vector.

use core::any::Any;

use super::{widen_byte, Effects, PortDevice, PortRange};
use crate::exit::AccessSize;

/// Master command/data ports.
pub const MASTER_BASE: u16 = 0x20;
/// Slave command/data ports.
pub const SLAVE_BASE: u16 = 0xA0;
/// Master input the slave's INT output is wired to.
pub const CASCADE_IRQ: u8 = 2;
/// Edge/level control registers (ELCR1 for IRQ 0-7, ELCR2 for IRQ 8-15).
pub const ELCR_BASE: u16 = 0x4D0;
/// ELCR1 bits that can be set (IRQ 0, 1 and 2 are always edge-triggered).
pub const ELCR1_WRITABLE: u8 = 0xF8;
/// ELCR2 bits that can be set (IRQ 8 and 13 are always edge-triggered).
pub const ELCR2_WRITABLE: u8 = 0xDE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InitStep {
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug)]
pub struct Pic8259 {
    irr: u8,
    isr: u8,
    imr: u8,
    line_levels: u8,
    priority_add: u8,
    vector_base: u8,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    level_triggered: bool,
    needs_icw4: bool,
    single: bool,
    init: InitStep,
    /// Per-line level trigger (the chip's ELCR); kept across ICW1.
    elcr: u8,
}

impl Default for Pic8259 {
    fn default() -> Self {
        Pic8259 {
            irr: 0,
            isr: 0,
            imr: 0,
            line_levels: 0,
            priority_add: 0,
            vector_base: 0,
            read_isr: false,
            poll: false,
            special_mask: false,
            auto_eoi: false,
            rotate_on_auto_eoi: false,
            level_triggered: false,
            needs_icw4: false,
            single: false,
            init: InitStep::Ready,
            elcr: 0,
        }
    }
}

impl Pic8259 {
    /// Interrupt request register.
    pub fn irr(&self) -> u8 {
        self.irr
    }
    /// In-service register.
    pub fn isr(&self) -> u8 {
        self.isr
    }
    /// Interrupt mask register.
    pub fn imr(&self) -> u8 {
        self.imr
    }
    /// Vector of input 0 (ICW2).
    pub fn vector_base(&self) -> u8 {
        self.vector_base
    }
    /// Inputs that are level-triggered (ICW1.LTIM: all; else the ELCR).
    pub fn level_lines(&self) -> u8 {
        if self.level_triggered {
            0xFF
        } else {
            self.elcr
        }
    }

    fn set_elcr(&mut self, value: u8) {
        self.elcr = value;
        // A line that became level-triggered requests while it is high.
        let level = self.level_lines();
        self.irr = (self.irr & !level) | (self.line_levels & level);
    }

    /// Priority (0 = highest) of the highest-priority bit in `mask`, 8 if none.
    fn priority(&self, mask: u8) -> u8 {
        if mask == 0 {
            return 8;
        }
        let mut p = 0;
        while p < 8 && mask & (1 << ((p + self.priority_add) & 7)) == 0 {
            p += 1;
        }
        p
    }

    /// The input this chip would signal on INTR, if any.
    fn highest_request(&self) -> Option<u8> {
        let requested = self.priority(self.irr & !self.imr);
        if requested == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if requested < self.priority(in_service) {
            Some((requested + self.priority_add) & 7)
        } else {
            None
        }
    }

    fn set_line(&mut self, line: u8, level: bool) {
        let bit = 1u8 << (line & 7);
        if self.level_lines() & bit != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && self.line_levels & bit == 0 {
            self.irr |= bit;
        }
        if level {
            self.line_levels |= bit;
        } else {
            self.line_levels &= !bit;
        }
    }

    fn intack(&mut self, irq: u8) {
        let bit = 1u8 << (irq & 7);
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
        if self.level_lines() & bit == 0 {
            self.irr &= !bit;
        }
    }

    fn write_command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1: reinitialise (the line levels and the ELCR are inputs
            // and chipset state, not 8259 state).
            *self = Pic8259 {
                line_levels: self.line_levels,
                elcr: self.elcr,
                ..Pic8259::default()
            };
            self.needs_icw4 = v & 0x01 != 0;
            self.single = v & 0x02 != 0;
            self.level_triggered = v & 0x08 != 0;
            self.init = InitStep::Icw2;
        } else if v & 0x08 != 0 {
            // OCW3.
            if v & 0x04 != 0 {
                self.poll = true;
            }
            if v & 0x02 != 0 {
                self.read_isr = v & 0x01 != 0;
            }
            if v & 0x40 != 0 {
                self.special_mask = v & 0x20 != 0;
            }
        } else {
            // OCW2.
            let level = v & 7;
            match v >> 5 {
                0 => self.rotate_on_auto_eoi = false,
                4 => self.rotate_on_auto_eoi = true,
                cmd @ (1 | 5) => {
                    let p = self.priority(self.isr);
                    if p != 8 {
                        let irq = (p + self.priority_add) & 7;
                        self.isr &= !(1 << irq);
                        if cmd == 5 {
                            self.priority_add = (irq + 1) & 7;
                        }
                    }
                }
                3 => self.isr &= !(1 << level),
                6 => self.priority_add = (level + 1) & 7,
                7 => {
                    self.isr &= !(1 << level);
                    self.priority_add = (level + 1) & 7;
                }
                _ => {} // 2: no operation.
            }
        }
    }

    fn write_data(&mut self, v: u8) {
        self.init = match self.init {
            InitStep::Ready => {
                self.imr = v;
                InitStep::Ready
            }
            InitStep::Icw2 => {
                self.vector_base = v & 0xF8;
                match (self.single, self.needs_icw4) {
                    (false, _) => InitStep::Icw3,
                    (true, true) => InitStep::Icw4,
                    (true, false) => InitStep::Ready,
                }
            }
            InitStep::Icw3 => {
                if self.needs_icw4 {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                }
            }
            InitStep::Icw4 => {
                self.auto_eoi = v & 0x02 != 0;
                InitStep::Ready
            }
        };
    }

    fn read(&mut self, data_port: bool) -> u8 {
        if self.poll {
            self.poll = false;
            return match self.highest_request() {
                Some(irq) => {
                    self.intack(irq);
                    0x80 | irq
                }
                None => 0,
            };
        }
        match (data_port, self.read_isr) {
            (true, _) => self.imr,
            (false, true) => self.isr,
            (false, false) => self.irr,
        }
    }
}

/// Master and slave 8259A, cascaded.
#[derive(Clone, Debug)]
pub struct PicPair {
    ports: [PortRange; 3],
    master: Pic8259,
    slave: Pic8259,
}

impl Default for PicPair {
    fn default() -> Self {
        Self::new()
    }
}

impl PicPair {
    /// Both chips in their reset state.
    pub fn new() -> Self {
        PicPair {
            ports: [
                PortRange::new(MASTER_BASE, 2),
                PortRange::new(SLAVE_BASE, 2),
                PortRange::new(ELCR_BASE, 2),
            ],
            master: Pic8259::default(),
            slave: Pic8259::default(),
        }
    }

    /// The master chip (IRQ 0-7).
    pub fn master(&self) -> &Pic8259 {
        &self.master
    }

    /// The slave chip (IRQ 8-15).
    pub fn slave(&self) -> &Pic8259 {
        &self.slave
    }

    /// The edge/level control registers, ELCR2:ELCR1 (bit n = IRQ n is
    /// level-triggered).
    pub fn elcr(&self) -> u16 {
        u16::from_le_bytes([self.master.elcr, self.slave.elcr])
    }

    /// Sets the edge/level control registers (reserved bits stay clear), as
    /// firmware would for level-triggered PCI interrupts.
    pub fn set_elcr(&mut self, elcr: u16) {
        let [lo, hi] = elcr.to_le_bytes();
        self.master.set_elcr(lo & ELCR1_WRITABLE);
        self.slave.set_elcr(hi & ELCR2_WRITABLE);
        self.update_cascade();
    }

    /// Sets the level of ISA line `irq` (0..=15; others are ignored).
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            0..=7 => self.master.set_line(irq, level),
            8..=15 => self.slave.set_line(irq - 8, level),
            _ => return,
        }
        self.update_cascade();
    }

    /// A rising then falling edge on `irq`.
    pub fn pulse_irq(&mut self, irq: u8) {
        self.set_irq(irq, true);
        self.set_irq(irq, false);
    }

    /// The master's IR2 follows the slave's INT output as a level, whatever
    /// the master's trigger mode: a request on IR2 exists exactly while the
    /// slave requests, so a slave request that is masked or cleared before
    /// INTA leaves no stale cascade request (and no spurious IRQ 15).
    fn update_cascade(&mut self) {
        let slave_int = self.slave.highest_request().is_some();
        let bit = 1u8 << CASCADE_IRQ;
        if slave_int {
            self.master.irr |= bit;
            self.master.line_levels |= bit;
        } else {
            self.master.irr &= !bit;
            self.master.line_levels &= !bit;
        }
    }

    /// The vector the pair presents on INTR, if any.
    pub fn pending_vector(&self) -> Option<u8> {
        let irq = self.master.highest_request()?;
        if irq == CASCADE_IRQ {
            Some(match self.slave.highest_request() {
                Some(s) => self.slave.vector_base | s,
                None => self.slave.vector_base | 7, // spurious
            })
        } else {
            Some(self.master.vector_base | irq)
        }
    }

    /// INTA: acknowledges the pending interrupt and returns its vector (an
    /// IRQ 7/15 spurious vector if the request vanished on the slave).
    pub fn ack(&mut self) -> Option<u8> {
        let irq = self.master.highest_request()?;
        self.master.intack(irq);
        let vector = if irq == CASCADE_IRQ {
            match self.slave.highest_request() {
                Some(s) => {
                    self.slave.intack(s);
                    self.slave.vector_base | s
                }
                None => self.slave.vector_base | 7,
            }
        } else {
            self.master.vector_base | irq
        };
        self.update_cascade();
        Some(vector)
    }
}

impl PortDevice for PicPair {
    fn name(&self) -> &'static str {
        "pic8259"
    }

    fn is_interrupt_controller(&self) -> bool {
        true
    }

    fn ports(&self) -> &[PortRange] {
        &self.ports
    }

    fn read(&mut self, port: u16, size: AccessSize, _fx: &mut Effects) -> u32 {
        let data = port & 1 != 0;
        let v = if port & !1 == ELCR_BASE {
            if data {
                self.slave.elcr
            } else {
                self.master.elcr
            }
        } else if port & !1 == SLAVE_BASE {
            let v = self.slave.read(data);
            self.update_cascade();
            v
        } else {
            self.master.read(data)
        };
        widen_byte(size, v)
    }

    fn write(&mut self, port: u16, _size: AccessSize, value: u32, _fx: &mut Effects) {
        let v = value.to_le_bytes()[0];
        if port & !1 == ELCR_BASE {
            let [lo, hi] = self.elcr().to_le_bytes();
            let elcr = if port & 1 == 0 { [v, hi] } else { [lo, v] };
            self.set_elcr(u16::from_le_bytes(elcr));
            return;
        }
        let chip = if port & !1 == SLAVE_BASE {
            &mut self.slave
        } else {
            &mut self.master
        };
        if port & 1 == 0 {
            chip.write_command(v);
        } else {
            chip.write_data(v);
        }
        self.update_cascade();
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

    fn out(p: &mut PicPair, port: u16, v: u8) {
        p.write(port, AccessSize::Byte, u32::from(v), &mut Effects::new());
    }

    fn inb(p: &mut PicPair, port: u16) -> u8 {
        p.read(port, AccessSize::Byte, &mut Effects::new()) as u8
    }

    /// The classic Linux/BIOS initialisation: vectors 0x20 and 0x28.
    fn init() -> PicPair {
        let mut p = PicPair::new();
        out(&mut p, 0x20, 0x11);
        out(&mut p, 0xA0, 0x11);
        out(&mut p, 0x21, 0x20);
        out(&mut p, 0xA1, 0x28);
        out(&mut p, 0x21, 0x04);
        out(&mut p, 0xA1, 0x02);
        out(&mut p, 0x21, 0x01);
        out(&mut p, 0xA1, 0x01);
        out(&mut p, 0x21, 0x00);
        out(&mut p, 0xA1, 0x00);
        p
    }

    #[test]
    fn init_sequence_sets_bases_and_mask() {
        let mut p = init();
        assert_eq!(p.master().vector_base(), 0x20);
        assert_eq!(p.slave().vector_base(), 0x28);
        out(&mut p, 0x21, 0xFB);
        assert_eq!(inb(&mut p, 0x21), 0xFB);
        assert_eq!(p.pending_vector(), None);
    }

    #[test]
    fn edge_irq_ack_eoi() {
        let mut p = init();
        p.pulse_irq(0);
        assert_eq!(p.pending_vector(), Some(0x20));
        assert_eq!(inb(&mut p, 0x20), 0x01, "IRR read by default");
        assert_eq!(p.ack(), Some(0x20));
        assert_eq!(p.pending_vector(), None);
        out(&mut p, 0x20, 0x0B); // OCW3: read ISR
        assert_eq!(inb(&mut p, 0x20), 0x01);
        // A lower-priority request waits for the EOI.
        p.pulse_irq(4);
        assert_eq!(p.pending_vector(), None);
        out(&mut p, 0x20, 0x20); // non-specific EOI
        assert_eq!(inb(&mut p, 0x20), 0x00);
        assert_eq!(p.pending_vector(), Some(0x24));
        // A higher-priority request preempts.
        assert_eq!(p.ack(), Some(0x24));
        p.pulse_irq(1);
        assert_eq!(p.pending_vector(), Some(0x21));
    }

    #[test]
    fn masked_irq_not_pending() {
        let mut p = init();
        out(&mut p, 0x21, 0x01);
        p.pulse_irq(0);
        assert_eq!(p.pending_vector(), None);
        out(&mut p, 0x21, 0x00);
        assert_eq!(p.pending_vector(), Some(0x20), "IRR kept while masked");
    }

    #[test]
    fn slave_cascade_and_specific_eoi() {
        let mut p = init();
        p.pulse_irq(12);
        assert_eq!(p.pending_vector(), Some(0x2C));
        assert_eq!(p.ack(), Some(0x2C));
        assert_eq!(p.pending_vector(), None);
        // Another slave IRQ is blocked until both EOIs.
        p.pulse_irq(14);
        assert_eq!(p.pending_vector(), None);
        out(&mut p, 0xA0, 0x64); // specific EOI, IRQ 4 of slave (= 12)
        out(&mut p, 0x20, 0x62); // specific EOI, IRQ 2 of master
        assert_eq!(p.pending_vector(), Some(0x2E));
    }

    #[test]
    fn level_triggered_follows_line() {
        let mut p = PicPair::new();
        out(&mut p, 0x20, 0x19); // LTIM
        out(&mut p, 0x21, 0x40);
        out(&mut p, 0x21, 0x04);
        out(&mut p, 0x21, 0x01);
        p.set_irq(3, true);
        assert_eq!(p.pending_vector(), Some(0x43));
        p.set_irq(3, false);
        assert_eq!(p.pending_vector(), None);
    }

    #[test]
    fn auto_eoi_leaves_isr_clear() {
        let mut p = PicPair::new();
        out(&mut p, 0x20, 0x13); // single, ICW4
        out(&mut p, 0x21, 0x08);
        out(&mut p, 0x21, 0x03); // AEOI
        p.pulse_irq(5);
        assert_eq!(p.ack(), Some(0x0D));
        assert_eq!(p.master().isr(), 0);
        p.pulse_irq(6);
        assert_eq!(p.pending_vector(), Some(0x0E));
    }

    #[test]
    fn elcr_per_line_level_trigger() {
        let mut p = init();
        // Reserved bits (IRQ 0, 1, 2, 8, 13) stay edge-triggered.
        out(&mut p, 0x4D0, 0xFF);
        out(&mut p, 0x4D1, 0xFF);
        assert_eq!(inb(&mut p, 0x4D0), 0xF8);
        assert_eq!(inb(&mut p, 0x4D1), 0xDE);
        assert_eq!(p.elcr(), 0xDEF8);
        out(&mut p, 0x4D0, 0x20); // IRQ 5 level
        out(&mut p, 0x4D1, 0x00);
        // Level: the request follows the line and survives INTA.
        p.set_irq(5, true);
        assert_eq!(p.ack(), Some(0x25));
        out(&mut p, 0x20, 0x20);
        assert_eq!(p.pending_vector(), Some(0x25), "line still high");
        p.set_irq(5, false);
        assert_eq!(p.pending_vector(), None);
        // Edge lines on the same chip still latch one request per edge.
        p.set_irq(3, true);
        assert_eq!(p.ack(), Some(0x23));
        out(&mut p, 0x20, 0x20);
        assert_eq!(p.pending_vector(), None, "edge consumed while line high");
        p.set_irq(3, false);
        // ELCR survives ICW1; a line made level while high requests at once.
        p.set_irq(10, true);
        p.pulse_irq(10);
        p.set_irq(10, true);
        out(&mut p, 0xA0, 0x11);
        out(&mut p, 0xA1, 0x28);
        out(&mut p, 0xA1, 0x02);
        out(&mut p, 0xA1, 0x01);
        assert_eq!(p.pending_vector(), None, "ICW1 clears the edge latch");
        out(&mut p, 0x4D1, 0x04); // IRQ 10 level
        assert_eq!(p.pending_vector(), Some(0x2A));
        assert_eq!(inb(&mut p, 0x4D0), 0x20);
        let w = p.read(0x4D0, AccessSize::Word, &mut Effects::new());
        assert_eq!(w, 0xFF20, "byte-wide register, upper byte all ones");
    }

    #[test]
    fn cascade_ready_after_slave_eoi_with_queued_request() {
        let mut p = init();
        p.pulse_irq(12);
        p.pulse_irq(14);
        assert_eq!(p.ack(), Some(0x2C));
        out(&mut p, 0xA0, 0x20);
        out(&mut p, 0x20, 0x20);
        assert_eq!(
            p.pending_vector(),
            Some(0x2E),
            "second slave request reaches the master"
        );
        assert_eq!(p.ack(), Some(0x2E));
        // Spurious: a slave request masked after INTR was raised.
        p.pulse_irq(9);
        out(&mut p, 0xA1, 0x02);
        out(&mut p, 0xA0, 0x20);
        out(&mut p, 0x20, 0x20);
        assert_eq!(p.pending_vector(), None);
    }

    #[test]
    fn hostile_programming_never_panics() {
        let mut p = PicPair::new();
        let mut x = 0x1234_5678_u32;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let port = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1][(x % 6) as usize];
            match (x >> 8) % 4 {
                0 => out(&mut p, port, (x >> 16) as u8),
                1 => {
                    inb(&mut p, port);
                }
                2 => p.set_irq((x >> 16) as u8 % 20, x & 0x8000 != 0),
                _ => {
                    let _ = p.ack();
                }
            }
            let _ = p.pending_vector();
        }
    }

    #[test]
    fn poll_mode_and_out_of_range_irq() {
        let mut p = init();
        p.set_irq(200, true); // ignored
        p.pulse_irq(3);
        out(&mut p, 0x20, 0x0C); // OCW3 poll
        assert_eq!(inb(&mut p, 0x20), 0x83);
        assert_eq!(p.master().isr(), 0x08);
        assert_eq!(p.ack(), None);
    }
}
