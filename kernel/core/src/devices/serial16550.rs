//! An emulated 16550A UART (National Semiconductor PC16550D data sheet).
//!
//! Enough for a polling guest driver and for Linux's 8250 driver:
//!
//! | off | DLAB=0 read | DLAB=0 write | DLAB=1 |
//! |-----|-------------|--------------|--------|
//! | 0   | RBR         | THR          | DLL    |
//! | 1   | IER         | IER          | DLM    |
//! | 2   | IIR         | FCR          |        |
//! | 3   | LCR         | LCR          |        |
//! | 4   | MCR         | MCR          |        |
//! | 5   | LSR         | (ignored)    |        |
//! | 6   | MSR         | (ignored)    |        |
//! | 7   | SCR         | SCR          |        |
//!
//! Transmission is instantaneous: THR is always empty (LSR.THRE and LSR.TEMT
//! always set), and each THR write becomes a [`DeviceEffect::Output`] byte (in
//! loopback mode, MCR bit 4, it is received instead). Input queued with
//! [`Serial16550::push_input`] sets LSR.DR; if the receive queue (64 bytes,
//! deeper than hardware so host bursts are not lost) is full, the byte is
//! dropped and LSR.OE is set.
//!
//! Interrupts are identified by priority as on hardware: receiver line status
//! (OE, IER bit 2) > received data (IER bit 0) > THR empty (IER bit 1) > modem
//! status (IER bit 3). The THRE interrupt is set when IER.ETBEI goes 0→1 and
//! after every THR write, and cleared by reading IIR while it is the reported
//! source or by writing THR. As on a PC, the IRQ line is driven only while
//! MCR.OUT2 is set and loopback is off; level changes are reported as
//! [`DeviceEffect::RaiseIrq`] / [`DeviceEffect::LowerIrq`].

use alloc::collections::VecDeque;
use core::any::Any;

use super::{widen_byte, DeviceEffect, Effects, PortDevice, PortRange};
use crate::exit::AccessSize;

/// COM1 base port.
pub const COM1_BASE: u16 = 0x3F8;
/// COM1 ISA IRQ.
pub const COM1_IRQ: u8 = 4;
/// Receive queue depth.
pub const RX_CAPACITY: usize = 64;

const IER_RDA: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const IER_RLS: u8 = 1 << 2;
const IER_MS: u8 = 1 << 3;

/// IIR: no interrupt pending.
pub const IIR_NONE: u8 = 0x01;
/// IIR: receiver line status.
pub const IIR_RLS: u8 = 0x06;
/// IIR: received data available.
pub const IIR_RDA: u8 = 0x04;
/// IIR: transmitter holding register empty.
pub const IIR_THRE: u8 = 0x02;
/// IIR: modem status.
pub const IIR_MS: u8 = 0x00;
const IIR_FIFO_ENABLED: u8 = 0xC0;

const LCR_DLAB: u8 = 1 << 7;

const MCR_DTR: u8 = 1 << 0;
const MCR_RTS: u8 = 1 << 1;
const MCR_OUT1: u8 = 1 << 2;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;

/// LSR: data ready.
pub const LSR_DR: u8 = 1 << 0;
/// LSR: overrun error.
pub const LSR_OE: u8 = 1 << 1;
/// LSR: transmitter holding register empty.
pub const LSR_THRE: u8 = 1 << 5;
/// LSR: transmitter empty.
pub const LSR_TEMT: u8 = 1 << 6;

const MSR_DCTS: u8 = 1 << 0;
const MSR_DDSR: u8 = 1 << 1;
const MSR_TERI: u8 = 1 << 2;
const MSR_DDCD: u8 = 1 << 3;
const MSR_CTS: u8 = 1 << 4;
const MSR_DSR: u8 = 1 << 5;
const MSR_RI: u8 = 1 << 6;
const MSR_DCD: u8 = 1 << 7;

/// The UART state machine.
#[derive(Debug)]
pub struct Serial16550 {
    ports: [PortRange; 1],
    irq: u8,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo_enabled: bool,
    overrun: bool,
    msr_delta: u8,
    thre_pending: bool,
    rx: VecDeque<u8>,
    irq_asserted: bool,
}

impl Serial16550 {
    /// A UART at ports `base..base+8` driving ISA line `irq`.
    pub fn new(base: u16, irq: u8) -> Self {
        Serial16550 {
            ports: [PortRange::new(base, 8)],
            irq,
            ier: 0,
            lcr: 0x03, // 8N1
            mcr: 0,
            scr: 0,
            dll: 0x0C, // 9600 baud
            dlm: 0,
            fifo_enabled: false,
            overrun: false,
            msr_delta: 0,
            thre_pending: false,
            rx: VecDeque::new(),
            irq_asserted: false,
        }
    }

    /// COM1: port 0x3F8, IRQ 4.
    pub fn com1() -> Self {
        Self::new(COM1_BASE, COM1_IRQ)
    }

    /// The baud-rate divisor (DLM:DLL).
    pub fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.dll, self.dlm])
    }

    /// Whether the IRQ line is currently asserted.
    pub fn irq_asserted(&self) -> bool {
        self.irq_asserted
    }

    /// Queues host input for the guest.
    pub fn push_input(&mut self, bytes: &[u8], fx: &mut Effects) {
        for &b in bytes {
            self.receive(b);
        }
        self.update_irq(fx);
    }

    fn receive(&mut self, byte: u8) {
        if self.rx.len() >= RX_CAPACITY {
            self.overrun = true;
        } else {
            self.rx.push_back(byte);
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// Modem status lines (MSR bits 7:4).
    fn modem_lines(&self) -> u8 {
        if self.loopback() {
            let mut m = 0;
            if self.mcr & MCR_RTS != 0 {
                m |= MSR_CTS;
            }
            if self.mcr & MCR_DTR != 0 {
                m |= MSR_DSR;
            }
            if self.mcr & MCR_OUT1 != 0 {
                m |= MSR_RI;
            }
            if self.mcr & MCR_OUT2 != 0 {
                m |= MSR_DCD;
            }
            m
        } else {
            MSR_DCD | MSR_DSR | MSR_CTS
        }
    }

    fn lsr(&self) -> u8 {
        let mut lsr = LSR_THRE | LSR_TEMT;
        if !self.rx.is_empty() {
            lsr |= LSR_DR;
        }
        if self.overrun {
            lsr |= LSR_OE;
        }
        lsr
    }

    /// The highest-priority pending interrupt (IIR bits 3:0).
    fn interrupt_id(&self) -> u8 {
        if self.ier & IER_RLS != 0 && self.overrun {
            IIR_RLS
        } else if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            IIR_RDA
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            IIR_THRE
        } else if self.ier & IER_MS != 0 && self.msr_delta != 0 {
            IIR_MS
        } else {
            IIR_NONE
        }
    }

    fn update_irq(&mut self, fx: &mut Effects) {
        let level = self.interrupt_id() != IIR_NONE && self.mcr & MCR_OUT2 != 0 && !self.loopback();
        if level != self.irq_asserted {
            self.irq_asserted = level;
            fx.push(if level {
                DeviceEffect::RaiseIrq(self.irq)
            } else {
                DeviceEffect::LowerIrq(self.irq)
            });
        }
    }

    fn write_mcr(&mut self, value: u8) {
        let old = self.modem_lines();
        self.mcr = value & 0x1F;
        let new = self.modem_lines();
        let changed = old ^ new;
        if changed & MSR_CTS != 0 {
            self.msr_delta |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            self.msr_delta |= MSR_DDSR;
        }
        if old & MSR_RI != 0 && new & MSR_RI == 0 {
            self.msr_delta |= MSR_TERI;
        }
        if changed & MSR_DCD != 0 {
            self.msr_delta |= MSR_DDCD;
        }
    }

    fn read_reg(&mut self, offset: u16) -> u8 {
        match (offset, self.dlab()) {
            (0, true) => self.dll,
            (1, true) => self.dlm,
            (0, false) => self.rx.pop_front().unwrap_or(0),
            (1, false) => self.ier,
            (2, _) => {
                let id = self.interrupt_id();
                if id == IIR_THRE {
                    self.thre_pending = false;
                }
                id | if self.fifo_enabled {
                    IIR_FIFO_ENABLED
                } else {
                    0
                }
            }
            (3, _) => self.lcr,
            (4, _) => self.mcr,
            (5, _) => {
                let lsr = self.lsr();
                self.overrun = false;
                lsr
            }
            (6, _) => {
                let msr = self.modem_lines() | self.msr_delta;
                self.msr_delta = 0;
                msr
            }
            (7, _) => self.scr,
            _ => 0xFF,
        }
    }

    fn write_reg(&mut self, offset: u16, value: u8, fx: &mut Effects) {
        match (offset, self.dlab()) {
            (0, true) => self.dll = value,
            (1, true) => self.dlm = value,
            (0, false) => {
                if self.loopback() {
                    self.receive(value);
                } else {
                    fx.push(DeviceEffect::Output(value));
                }
                // Transmission completes at once: THR is empty again.
                self.thre_pending = true;
            }
            (1, false) => {
                let new = value & 0x0F;
                if self.ier & IER_THRE == 0 && new & IER_THRE != 0 {
                    self.thre_pending = true;
                }
                self.ier = new;
            }
            (2, _) => {
                self.fifo_enabled = value & 1 != 0;
                if value & 0b10 != 0 {
                    self.rx.clear();
                }
            }
            (3, _) => self.lcr = value,
            (4, _) => self.write_mcr(value),
            (7, _) => self.scr = value,
            _ => {} // LSR and MSR writes are ignored.
        }
    }
}

impl PortDevice for Serial16550 {
    fn name(&self) -> &'static str {
        "serial16550"
    }

    fn ports(&self) -> &[PortRange] {
        &self.ports
    }

    fn read(&mut self, port: u16, size: AccessSize, fx: &mut Effects) -> u32 {
        let offset = port.wrapping_sub(self.ports[0].base);
        let v = self.read_reg(offset);
        self.update_irq(fx);
        widen_byte(size, v)
    }

    fn write(&mut self, port: u16, _size: AccessSize, value: u32, fx: &mut Effects) {
        let offset = port.wrapping_sub(self.ports[0].base);
        self.write_reg(offset, value.to_le_bytes()[0], fx);
        self.update_irq(fx);
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
    use alloc::vec::Vec;

    const B: AccessSize = AccessSize::Byte;

    fn rd(u: &mut Serial16550, off: u16) -> u8 {
        let mut fx = Effects::new();
        u.read(COM1_BASE + off, B, &mut fx) as u8
    }

    fn wr(u: &mut Serial16550, off: u16, v: u8) -> Vec<DeviceEffect> {
        let mut fx = Effects::new();
        u.write(COM1_BASE + off, B, u32::from(v), &mut fx);
        fx.iter().collect()
    }

    #[test]
    fn dlab_switches_divisor_latch() {
        let mut u = Serial16550::com1();
        wr(&mut u, 1, 0x00); // IER
        wr(&mut u, 3, 0x80); // DLAB on
        wr(&mut u, 0, 0x01); // DLL: 115200
        wr(&mut u, 1, 0x00); // DLM
        assert_eq!(u.divisor(), 1);
        assert_eq!(rd(&mut u, 0), 0x01);
        wr(&mut u, 3, 0x03); // DLAB off, 8N1
        assert_eq!(rd(&mut u, 3), 0x03);
        // Offset 0 is THR again: a write is output, not DLL.
        assert_eq!(wr(&mut u, 0, b'x'), [DeviceEffect::Output(b'x')]);
        assert_eq!(u.divisor(), 1);
        assert_eq!(rd(&mut u, 1), 0x00); // IER, not DLM
    }

    #[test]
    fn scratch_register() {
        let mut u = Serial16550::com1();
        for v in [0x00, 0x55, 0xAA, 0xFF] {
            wr(&mut u, 7, v);
            assert_eq!(rd(&mut u, 7), v);
        }
    }

    #[test]
    fn lsr_bits_and_input() {
        let mut u = Serial16550::com1();
        assert_eq!(rd(&mut u, 5), LSR_THRE | LSR_TEMT);
        let mut fx = Effects::new();
        u.push_input(b"ok", &mut fx);
        assert!(fx.is_empty(), "no IRQ without IER/OUT2");
        assert_eq!(rd(&mut u, 5), LSR_THRE | LSR_TEMT | LSR_DR);
        assert_eq!(rd(&mut u, 0), b'o');
        assert_eq!(rd(&mut u, 0), b'k');
        assert_eq!(rd(&mut u, 5) & LSR_DR, 0);
        assert_eq!(rd(&mut u, 0), 0, "empty RBR reads 0");
    }

    #[test]
    fn overrun_sets_oe_until_lsr_read() {
        let mut u = Serial16550::com1();
        let mut fx = Effects::new();
        u.push_input(&[b'a'; RX_CAPACITY + 1], &mut fx);
        assert_eq!(rd(&mut u, 5) & LSR_OE, LSR_OE);
        assert_eq!(rd(&mut u, 5) & LSR_OE, 0);
    }

    #[test]
    fn fifo_reset_clears_receive_queue() {
        let mut u = Serial16550::com1();
        let mut fx = Effects::new();
        u.push_input(b"abc", &mut fx);
        wr(&mut u, 2, 0x07);
        assert_eq!(rd(&mut u, 5) & LSR_DR, 0);
        assert_eq!(rd(&mut u, 2) & 0xC0, 0xC0, "FIFO enabled bits in IIR");
    }

    #[test]
    fn iir_priorities() {
        let mut u = Serial16550::com1();
        assert_eq!(rd(&mut u, 2), IIR_NONE);
        wr(&mut u, 4, MCR_OUT2);
        // Enable everything: THRE becomes pending at once.
        let fx = wr(&mut u, 1, 0x0F);
        assert_eq!(fx, [DeviceEffect::RaiseIrq(4)]);
        let mut fx = Effects::new();
        u.push_input(&[b'z'; RX_CAPACITY + 1], &mut fx); // data + overrun
                                                         // RLS beats RDA beats THRE.
        assert_eq!(rd(&mut u, 2), IIR_RLS);
        assert_eq!(rd(&mut u, 5) & LSR_OE, LSR_OE); // clears RLS source
        assert_eq!(rd(&mut u, 2), IIR_RDA);
        for _ in 0..RX_CAPACITY {
            rd(&mut u, 0);
        }
        assert_eq!(rd(&mut u, 2), IIR_THRE);
        // Reading IIR cleared THRE: nothing left (no modem deltas yet).
        assert_eq!(rd(&mut u, 2), IIR_NONE);
        assert!(!u.irq_asserted());
        // A THR write re-arms THRE and raises the line.
        let fx = wr(&mut u, 0, b'!');
        assert_eq!(fx, [DeviceEffect::Output(b'!'), DeviceEffect::RaiseIrq(4)]);
        assert_eq!(rd(&mut u, 2), IIR_THRE);
    }

    #[test]
    fn modem_status_interrupt_lowest_priority() {
        let mut u = Serial16550::com1();
        wr(&mut u, 1, IER_MS);
        wr(&mut u, 4, MCR_LOOP | MCR_RTS);
        assert_eq!(rd(&mut u, 2), IIR_MS);
        let msr = rd(&mut u, 6);
        assert_eq!(msr & 0xF0, MSR_CTS);
        assert!(msr & (MSR_DCTS | MSR_DDCD) != 0);
        assert_eq!(rd(&mut u, 2), IIR_NONE, "MSR read clears deltas");
    }

    #[test]
    fn loopback_receives_own_output() {
        let mut u = Serial16550::com1();
        wr(&mut u, 4, MCR_LOOP);
        assert!(
            wr(&mut u, 0, 0xA5).is_empty(),
            "no console output in loopback"
        );
        assert_eq!(rd(&mut u, 5) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut u, 0), 0xA5);
        wr(&mut u, 4, 0);
        assert_eq!(rd(&mut u, 6) & 0xF0, MSR_DCD | MSR_DSR | MSR_CTS);
    }

    #[test]
    fn rx_interrupt_raised_and_lowered() {
        let mut u = Serial16550::com1();
        wr(&mut u, 4, MCR_OUT2);
        wr(&mut u, 1, IER_RDA);
        let mut fx = Effects::new();
        u.push_input(b"q", &mut fx);
        assert_eq!(fx.iter().collect::<Vec<_>>(), [DeviceEffect::RaiseIrq(4)]);
        let mut fx = Effects::new();
        assert_eq!(u.read(COM1_BASE, B, &mut fx), u32::from(b'q'));
        assert_eq!(fx.iter().collect::<Vec<_>>(), [DeviceEffect::LowerIrq(4)]);
    }

    #[test]
    fn wide_access_uses_low_byte() {
        let mut u = Serial16550::com1();
        let mut fx = Effects::new();
        u.write(COM1_BASE + 7, AccessSize::Word, 0xBEEF, &mut fx);
        assert_eq!(u.read(COM1_BASE + 7, AccessSize::Word, &mut fx), 0xFFEF);
    }
}
