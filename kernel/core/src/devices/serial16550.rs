//! An emulated 16550A UART (National Semiconductor PC16550D data sheet).
//!
//! Enough for a polling guest driver and for Linux's 8250 driver, which
//! detects a 16550A and runs it interrupt-driven with FIFOs (receive trigger
//! level 8):
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
//! **Transmitter.** Transmission is instantaneous: THR is always empty
//! (LSR.THRE and LSR.TEMT always set), and each THR write becomes a
//! [`DeviceEffect::Output`] byte (in loopback mode, MCR bit 4, it is received
//! instead).
//!
//! **Receiver.** Host input queued with [`Serial16550::push_input`] waits in
//! an input queue (the "line", [`INPUT_CAPACITY`] bytes) and enters the
//! receiver as soon as it has room: the 16-byte receive FIFO when FCR bit 0
//! is set, else the single receiver buffer register. So no host byte is lost
//! while the guest keeps reading; only input beyond the queue is dropped, and
//! then LSR.OE is set (as is a loopback byte that finds the receiver full).
//! FCR bit 1 empties the receiver (bytes still on the line arrive next).
//!
//! **Interrupts** are identified by priority as on hardware: receiver line
//! status (OE, IER bit 2) > received data available (IER bit 0; in FIFO mode
//! when the FIFO holds at least the trigger level, FCR bits 7:6 = 1, 4, 8 or
//! 14 bytes) > character timeout (IER bit 0, FIFO mode: fewer bytes than the
//! trigger level and no receive activity for four character times at the
//! programmed divisor and frame format) > THR empty (IER bit 1) > modem status
//! (IER bit 3). The THRE interrupt is set when IER.ETBEI goes 0→1 and after
//! every THR write, and cleared by reading IIR while it is the reported
//! source or by writing THR. As on a PC, the IRQ line is driven only while
//! MCR.OUT2 is set and loopback is off; level changes are reported as
//! [`DeviceEffect::RaiseIrq`] / [`DeviceEffect::LowerIrq`].
//!
//! **Time.** Only the character timeout needs it: the VM advances the UART
//! with [`Serial16550::advance`] (see [`super::pc::advance`]) and
//! [`Serial16550::next_deadline_ns`] says when a timeout interrupt is due.
//! Without time, fewer bytes than the trigger level wait in the FIFO until
//! more arrive (the guest still sees them through LSR.DR).

use alloc::collections::VecDeque;
use core::any::Any;

use super::{widen_byte, DeviceEffect, Effects, PortDevice, PortRange};
use crate::exit::AccessSize;

/// COM1 base port.
pub const COM1_BASE: u16 = 0x3F8;
/// COM1 ISA IRQ.
pub const COM1_IRQ: u8 = 4;
/// Receive FIFO depth in FIFO mode (the 16550A's).
pub const RX_FIFO_DEPTH: usize = 16;
/// Host input that can wait for the receiver; more is dropped (LSR.OE).
pub const INPUT_CAPACITY: usize = 4096;
/// The UART's reference clock divided by 16: the baud rate of divisor 1.
pub const BASE_BAUD: u64 = 115_200;

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
/// IIR: character timeout (FIFO mode).
pub const IIR_CTI: u8 = 0x0C;
/// IIR: transmitter holding register empty.
pub const IIR_THRE: u8 = 0x02;
/// IIR: modem status.
pub const IIR_MS: u8 = 0x00;
const IIR_FIFO_ENABLED: u8 = 0xC0;

const FCR_ENABLE: u8 = 1 << 0;
const FCR_CLEAR_RX: u8 = 1 << 1;

const LCR_DLAB: u8 = 1 << 7;

/// MCR: data terminal ready.
pub const MCR_DTR: u8 = 1 << 0;
/// MCR: request to send.
pub const MCR_RTS: u8 = 1 << 1;
/// MCR: OUT1.
pub const MCR_OUT1: u8 = 1 << 2;
/// MCR: OUT2 (gates the IRQ line on a PC).
pub const MCR_OUT2: u8 = 1 << 3;
/// MCR: loopback.
pub const MCR_LOOP: u8 = 1 << 4;

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
    /// Receive trigger level in bytes (FIFO mode).
    trigger: usize,
    overrun: bool,
    msr_delta: u8,
    thre_pending: bool,
    /// The receiver: FIFO (FIFO mode) or receiver buffer register (one byte).
    rx: VecDeque<u8>,
    /// Host input on the line, waiting for room in the receiver.
    input: VecDeque<u8>,
    irq_asserted: bool,
    now_ns: u64,
    /// Last receive activity (a byte arrived or RBR was read): the
    /// character-timeout reference.
    rx_activity_ns: u64,
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
            trigger: 1,
            overrun: false,
            msr_delta: 0,
            thre_pending: false,
            rx: VecDeque::new(),
            input: VecDeque::new(),
            irq_asserted: false,
            now_ns: 0,
            rx_activity_ns: 0,
        }
    }

    /// COM1: port 0x3F8, IRQ 4.
    pub fn com1() -> Self {
        Self::new(COM1_BASE, COM1_IRQ)
    }

    /// The port at which a guest `OUT` byte is, in the UART's present
    /// state, nothing but an output byte: THR, while DLAB is clear, loopback
    /// is off and the THRE interrupt is disabled. (The THRE flag a THR write
    /// sets is then unobservable: IIR reports it only with IER.ETBEI set, and
    /// setting ETBEI sets the flag anyway.) `None` in any other state. A VM
    /// publishes it for its vCPUs ([`super::console::DirectTxPort`]).
    pub fn direct_tx_port(&self) -> Option<u16> {
        let direct = !self.dlab() && !self.loopback() && self.ier & IER_THRE == 0;
        direct.then_some(self.ports[0].base)
    }

    /// The baud-rate divisor (DLM:DLL).
    pub fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.dll, self.dlm])
    }

    /// Whether the IRQ line is currently asserted.
    pub fn irq_asserted(&self) -> bool {
        self.irq_asserted
    }

    /// Bytes in the receiver plus bytes still waiting on the line.
    pub fn pending_input(&self) -> usize {
        self.rx.len() + self.input.len()
    }

    /// Queues host input for the guest.
    pub fn push_input(&mut self, bytes: &[u8], fx: &mut Effects) {
        for &b in bytes {
            self.refill();
            if self.input.len() < INPUT_CAPACITY {
                self.input.push_back(b);
            } else {
                self.overrun = true;
            }
        }
        self.refill();
        self.update_irq(fx);
    }

    /// Advances the UART's time to `now_ns` (monotonic; earlier values are
    /// ignored) and updates the IRQ line (a character timeout may have come
    /// due).
    pub fn advance(&mut self, now_ns: u64, fx: &mut Effects) {
        self.now_ns = self.now_ns.max(now_ns);
        // Time matters only to received bytes (the character timeout) and
        // to host input waiting for room; without either the IRQ line is
        // as the last access left it.
        if self.rx.is_empty() && self.input.is_empty() {
            return;
        }
        self.refill();
        self.update_irq(fx);
    }

    /// When a character-timeout interrupt will become due, if one is coming
    /// and can raise the IRQ line.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let line_enabled = self.mcr & MCR_OUT2 != 0 && !self.loopback();
        if !line_enabled || self.ier & IER_RDA == 0 || !self.fifo_enabled {
            return None;
        }
        if self.rx.is_empty() || self.rx.len() >= self.trigger {
            return None;
        }
        let due = self.rx_activity_ns.saturating_add(self.char_timeout_ns());
        (due > self.now_ns).then_some(due)
    }

    /// Four character times at the programmed divisor and frame format.
    pub fn char_timeout_ns(&self) -> u64 {
        let data_bits = 5 + u64::from(self.lcr & 3);
        let parity = u64::from((self.lcr >> 3) & 1);
        let stop = 1 + u64::from((self.lcr >> 2) & 1);
        let bits = 1 + data_bits + parity + stop;
        let divisor = u64::from(self.divisor().max(1));
        4 * bits * divisor * 1_000_000_000 / BASE_BAUD
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled {
            RX_FIFO_DEPTH
        } else {
            1
        }
    }

    /// Moves waiting host input into the receiver while it has room.
    fn refill(&mut self) {
        let mut moved = false;
        while self.rx.len() < self.rx_capacity() {
            match self.input.pop_front() {
                Some(b) => {
                    self.rx.push_back(b);
                    moved = true;
                }
                None => break,
            }
        }
        if moved {
            self.rx_activity_ns = self.now_ns;
        }
    }

    /// A byte arriving from the transmitter in loopback mode.
    fn receive_loopback(&mut self, byte: u8) {
        if self.rx.len() < self.rx_capacity() {
            self.rx.push_back(byte);
            self.rx_activity_ns = self.now_ns;
        } else {
            self.overrun = true;
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

    fn data_available(&self) -> bool {
        if self.fifo_enabled {
            self.rx.len() >= self.trigger
        } else {
            !self.rx.is_empty()
        }
    }

    fn char_timeout(&self) -> bool {
        self.fifo_enabled
            && !self.rx.is_empty()
            && self.now_ns >= self.rx_activity_ns.saturating_add(self.char_timeout_ns())
    }

    /// The highest-priority pending interrupt (IIR bits 3:0).
    fn interrupt_id(&self) -> u8 {
        if self.ier & IER_RLS != 0 && self.overrun {
            IIR_RLS
        } else if self.ier & IER_RDA != 0 && self.data_available() {
            IIR_RDA
        } else if self.ier & IER_RDA != 0 && self.char_timeout() {
            IIR_CTI
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

    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_ENABLE != 0;
        if enable != self.fifo_enabled {
            // Switching modes empties the FIFOs.
            self.rx.clear();
            self.fifo_enabled = enable;
        }
        if enable {
            if value & FCR_CLEAR_RX != 0 {
                self.rx.clear();
            }
            self.trigger = match value >> 6 {
                0 => 1,
                1 => 4,
                2 => 8,
                _ => 14,
            };
        }
        self.refill();
    }

    fn read_reg(&mut self, offset: u16) -> u8 {
        match (offset, self.dlab()) {
            (0, true) => self.dll,
            (1, true) => self.dlm,
            (0, false) => {
                let b = self.rx.pop_front().unwrap_or(0);
                self.rx_activity_ns = self.now_ns;
                self.refill();
                b
            }
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
                    self.receive_loopback(value);
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
            (2, _) => self.write_fcr(value),
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

    fn counts_time(&self) -> bool {
        true
    }

    fn next_deadline_ns(&self) -> Option<u64> {
        Serial16550::next_deadline_ns(self)
    }

    fn advance(&mut self, now_ns: u64, fx: &mut Effects) {
        Serial16550::advance(self, now_ns, fx);
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

    fn push(u: &mut Serial16550, bytes: &[u8]) -> Vec<DeviceEffect> {
        let mut fx = Effects::new();
        u.push_input(bytes, &mut fx);
        fx.iter().collect()
    }

    fn advance(u: &mut Serial16550, now: u64) -> Vec<DeviceEffect> {
        let mut fx = Effects::new();
        u.advance(now, &mut fx);
        fx.iter().collect()
    }

    /// Linux's 8250 set-up for a 16550A at 115200 8N1: FIFO on, trigger 8,
    /// OUT2, receive and line status interrupts.
    fn linux_setup(u: &mut Serial16550) {
        wr(u, 3, 0x80);
        wr(u, 0, 0x01);
        wr(u, 1, 0x00);
        wr(u, 3, 0x03);
        wr(u, 2, 0x87); // enable, clear both, trigger 8
        wr(u, 4, MCR_OUT2 | MCR_RTS | MCR_DTR);
        wr(u, 1, IER_RDA | IER_RLS);
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
        assert!(push(&mut u, b"ok").is_empty(), "no IRQ without IER/OUT2");
        assert_eq!(rd(&mut u, 5), LSR_THRE | LSR_TEMT | LSR_DR);
        assert_eq!(rd(&mut u, 0), b'o');
        assert_eq!(rd(&mut u, 0), b'k');
        assert_eq!(rd(&mut u, 5) & LSR_DR, 0);
        assert_eq!(rd(&mut u, 0), 0, "empty RBR reads 0");
    }

    #[test]
    fn non_fifo_mode_holds_one_byte_and_loses_none() {
        let mut u = Serial16550::com1();
        push(&mut u, b"abcdef");
        assert_eq!(u.pending_input(), 6);
        let got: Vec<u8> = (0..6).map(|_| rd(&mut u, 0)).collect();
        assert_eq!(got, b"abcdef");
        assert_eq!(rd(&mut u, 5) & (LSR_DR | LSR_OE), 0);
    }

    #[test]
    fn input_beyond_queue_sets_oe_until_lsr_read() {
        let mut u = Serial16550::com1();
        push(&mut u, &[b'a'; INPUT_CAPACITY + 2]);
        assert_eq!(
            u.pending_input(),
            INPUT_CAPACITY + 1,
            "receiver byte + queue"
        );
        assert_eq!(rd(&mut u, 5) & LSR_OE, LSR_OE);
        assert_eq!(rd(&mut u, 5) & LSR_OE, 0);
    }

    #[test]
    fn fifo_reset_clears_receiver_not_line() {
        let mut u = Serial16550::com1();
        wr(&mut u, 2, 0x01);
        push(&mut u, &[b'x'; 20]);
        assert_eq!(u.pending_input(), 20);
        wr(&mut u, 2, 0x03); // clear RX FIFO: 16 bytes gone, 4 arrive
        assert_eq!(u.pending_input(), 4);
        assert_eq!(rd(&mut u, 5) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut u, 2) & 0xC0, 0xC0, "FIFO enabled bits in IIR");
        wr(&mut u, 2, 0x00); // FIFO off: mode switch empties the receiver
        assert_eq!(rd(&mut u, 2) & 0xC0, 0);
        assert_eq!(u.pending_input(), 0);
    }

    #[test]
    fn fifo_trigger_level_and_char_timeout() {
        let mut u = Serial16550::com1();
        linux_setup(&mut u);
        let timeout = u.char_timeout_ns();
        // 4 characters of 10 bits at 115200 baud.
        assert_eq!(timeout, 4 * 10 * 1_000_000_000 / 115_200);
        advance(&mut u, 1_000_000);
        // Below the trigger level: no interrupt until the timeout.
        assert!(push(&mut u, b"ab").is_empty());
        assert_eq!(rd(&mut u, 2) & 0x0F, IIR_NONE);
        assert_eq!(u.next_deadline_ns(), Some(1_000_000 + timeout));
        assert!(advance(&mut u, 1_000_000 + timeout - 1).is_empty());
        assert_eq!(
            advance(&mut u, 1_000_000 + timeout),
            [DeviceEffect::RaiseIrq(4)]
        );
        assert_eq!(u.next_deadline_ns(), None, "timeout already signalled");
        assert_eq!(rd(&mut u, 2), 0xC0 | IIR_CTI);
        // Reading RBR restarts the timer, which clears the timeout.
        let mut fx = Effects::new();
        assert_eq!(u.read(COM1_BASE, B, &mut fx), u32::from(b'a'));
        assert_eq!(fx.iter().collect::<Vec<_>>(), [DeviceEffect::LowerIrq(4)]);
        assert_eq!(u.next_deadline_ns(), Some(1_000_000 + 2 * timeout));
        assert_eq!(rd(&mut u, 0), b'b');
        assert_eq!(u.next_deadline_ns(), None, "FIFO empty");
        // Eight bytes reach the trigger level: data available at once.
        assert_eq!(push(&mut u, b"12345678"), [DeviceEffect::RaiseIrq(4)]);
        assert_eq!(rd(&mut u, 2), 0xC0 | IIR_RDA);
        for _ in 0..8 {
            rd(&mut u, 0);
        }
        assert_eq!(rd(&mut u, 2) & 0x0F, IIR_NONE);
    }

    #[test]
    fn trigger_levels() {
        for (fcr, level) in [(0x01u8, 1usize), (0x41, 4), (0x81, 8), (0xC1, 14)] {
            let mut u = Serial16550::com1();
            wr(&mut u, 2, fcr);
            wr(&mut u, 1, IER_RDA);
            push(&mut u, &alloc::vec![b'z'; level - 1]);
            if level > 1 {
                assert_eq!(rd(&mut u, 2) & 0x0F, IIR_NONE, "fcr {fcr:#x}");
            }
            push(&mut u, b"z");
            assert_eq!(rd(&mut u, 2) & 0x0F, IIR_RDA, "fcr {fcr:#x}");
        }
    }

    #[test]
    fn fifo_fills_to_16_and_rest_waits() {
        let mut u = Serial16550::com1();
        linux_setup(&mut u);
        push(&mut u, &[7u8; 40]);
        // Linux drains while LSR.DR: all 40 arrive in order of reads.
        let mut n = 0;
        while rd(&mut u, 5) & LSR_DR != 0 {
            assert_eq!(rd(&mut u, 0), 7);
            n += 1;
        }
        assert_eq!(n, 40);
    }

    #[test]
    fn iir_priorities() {
        let mut u = Serial16550::com1();
        assert_eq!(rd(&mut u, 2), IIR_NONE);
        wr(&mut u, 4, MCR_OUT2);
        // Enable everything: THRE becomes pending at once.
        let fx = wr(&mut u, 1, 0x0F);
        assert_eq!(fx, [DeviceEffect::RaiseIrq(4)]);
        push(&mut u, &[b'z'; INPUT_CAPACITY + 2]); // data + overrun
                                                   // RLS beats RDA beats THRE.
        assert_eq!(rd(&mut u, 2), IIR_RLS);
        assert_eq!(rd(&mut u, 5) & LSR_OE, LSR_OE); // clears RLS source
        assert_eq!(rd(&mut u, 2), IIR_RDA);
        while rd(&mut u, 5) & LSR_DR != 0 {
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

    /// The 8250 driver's THRE re-assertion test at start-up must not flag
    /// the UART as buggy.
    #[test]
    fn thre_reasserted_on_ier_toggle() {
        let mut u = Serial16550::com1();
        wr(&mut u, 1, IER_THRE);
        let iir1 = rd(&mut u, 2);
        wr(&mut u, 1, 0);
        wr(&mut u, 1, IER_THRE);
        let iir = rd(&mut u, 2);
        wr(&mut u, 1, 0);
        assert_eq!(iir1 & IIR_NONE, 0);
        assert_eq!(iir & IIR_NONE, 0);
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
    fn direct_tx_only_while_a_thr_write_is_only_output() {
        let mut u = Serial16550::com1();
        assert_eq!(
            u.direct_tx_port(),
            Some(COM1_BASE),
            "reset state: 8N1, IER 0"
        );
        wr(&mut u, 3, 0x83); // DLAB
        assert_eq!(u.direct_tx_port(), None);
        wr(&mut u, 3, 0x03);
        wr(&mut u, 4, MCR_LOOP);
        assert_eq!(u.direct_tx_port(), None);
        wr(&mut u, 4, 0x08); // OUT2
        wr(&mut u, 1, IER_THRE);
        assert_eq!(u.direct_tx_port(), None);
        wr(&mut u, 1, 0x01); // received data only
        assert_eq!(u.direct_tx_port(), Some(COM1_BASE));
        // In that state a THR write changes nothing a read sees.
        let regs = |u: &mut Serial16550| (1..8).map(|o| rd(u, o)).collect::<Vec<_>>();
        regs(&mut u); // reading MSR clears its deltas
        let before = regs(&mut u);
        assert_eq!(wr(&mut u, 0, b'x'), [DeviceEffect::Output(b'x')]);
        assert_eq!(regs(&mut u), before);
        // Enabling ETBEI afterwards raises THRE as it would have anyway.
        wr(&mut u, 1, IER_THRE);
        assert_eq!(rd(&mut u, 2), IIR_THRE);
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
        // The autoconfig loopback test: MCR = LOOP | OUT2 | RTS -> DCD | CTS.
        wr(&mut u, 4, MCR_LOOP | MCR_OUT2 | MCR_RTS);
        assert_eq!(rd(&mut u, 6) & 0xF0, MSR_DCD | MSR_CTS);
        // A second byte while the receiver buffer is full overruns.
        wr(&mut u, 0, 1);
        wr(&mut u, 0, 2);
        assert_eq!(rd(&mut u, 5) & LSR_OE, LSR_OE);
        assert_eq!(rd(&mut u, 0), 1);
        wr(&mut u, 4, 0);
        assert_eq!(rd(&mut u, 6) & 0xF0, MSR_DCD | MSR_DSR | MSR_CTS);
    }

    #[test]
    fn rx_interrupt_raised_and_lowered() {
        let mut u = Serial16550::com1();
        wr(&mut u, 4, MCR_OUT2);
        wr(&mut u, 1, IER_RDA);
        assert_eq!(push(&mut u, b"q"), [DeviceEffect::RaiseIrq(4)]);
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

    #[test]
    fn hostile_accesses_never_panic() {
        let mut u = Serial16550::com1();
        let mut x = 0xDEAD_BEEF_u32;
        let mut now = 0;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let off = (x % 8) as u16;
            let mut fx = Effects::new();
            match (x >> 4) % 4 {
                0 => u.write(COM1_BASE + off, B, x >> 16, &mut fx),
                1 => {
                    u.read(COM1_BASE + off, B, &mut fx);
                }
                2 => u.push_input(&x.to_le_bytes(), &mut fx),
                _ => {
                    now += u64::from(x >> 12);
                    u.advance(now, &mut fx);
                    let _ = u.next_deadline_ns();
                }
            }
            assert!(u.rx.len() <= RX_FIFO_DEPTH && u.input.len() <= INPUT_CAPACITY);
        }
    }
}
