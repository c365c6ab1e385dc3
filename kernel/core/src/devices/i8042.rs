//! The PS/2 keyboard controller (an Intel 8042 as in PC/AT-compatibles, data
//! port 0x60, status/command port 0x64) with an AT keyboard behind its first
//! port and nothing behind its auxiliary (mouse) port.
//!
//! Enough for Linux's `i8042` and `atkbd` drivers to probe, find a keyboard
//! and no mouse without waiting for timeouts, and for `reboot=k`:
//!
//! - Status register (read 0x64): OBF, SYS (set: the "BIOS" passed POST),
//!   CMD/DATA (last write went to 0x64), keyboard not inhibited, AUXDATA
//!   (the byte in the output buffer came from the aux port), TIMEOUT.
//!   The input buffer is never full: commands complete at once.
//! - Controller commands (write 0x64): 0x20-0x3F read controller RAM (0x20:
//!   the command byte, CTR), 0x60-0x7F write it (0x60: CTR), 0xA4 password
//!   check (none installed: 0xF1), 0xA7/0xA8 disable/enable the aux port,
//!   0xA9 aux port test (0x00, no error), 0xAA self test (0x55), 0xAB
//!   keyboard port test (0x00), 0xAD/0xAE disable/enable the keyboard port,
//!   0xC0 read input port, 0xD0/0xD1 read/write the output port (bit 0 low:
//!   reset; bit 1: A20), 0xD2/0xD3 write a byte to the output buffer as if
//!   from the keyboard/aux port (0xD3 is the aux loopback Linux uses to test
//!   the port and IRQ 12), 0xD4 send a byte to the aux device, 0xE0 read test
//!   inputs, 0xF0-0xFF pulse output-port lines (bit 0 clear pulses reset:
//!   0xFE). Others are ignored.
//! - The keyboard (bytes written to 0x60 with no command pending): reset
//!   0xFF (ACK, then 0xAA), identify 0xF2 (ACK, 0xAB 0x83), echo 0xEE, set
//!   LEDs 0xED / typematic 0xF3 / scan code set 0xF0 with their parameter
//!   byte, enable 0xF4 / disable 0xF5 / defaults 0xF6 and 0xF7-0xFD (ACK);
//!   anything else is answered with RESEND (0xFE).
//! - The absent aux device: every byte sent with 0xD4 is answered with 0xFE
//!   and status TIMEOUT | AUXDATA, which Linux's libps2 takes as "no device"
//!   at once.
//!
//! Bytes from the controller, the keyboard and the aux port wait in separate
//! bounded queues and enter the one-byte output buffer in that order of
//! preference, keyboard and aux bytes only while their port is enabled. IRQ 1
//! is asserted while the output buffer holds a non-aux byte and CTR bit 0 is
//! set, IRQ 12 while it holds an aux byte and CTR bit 1 is set; reading port
//! 0x60 lowers the line and the next byte raises it again (a new edge).
//! Scan codes from a host keyboard can be queued with
//! [`I8042::push_keyboard_bytes`] (as the guest expects them, i.e. set 1 when
//! CTR bit 6 asks for translation; no translation is done here).

use alloc::collections::VecDeque;
use core::any::Any;

use super::{widen_byte, DeviceEffect, Effects, PortDevice, PortRange, ResetSource};
use crate::exit::AccessSize;

/// Data port.
pub const DATA_PORT: u16 = 0x60;
/// Status (read) and command (write) port.
pub const COMMAND_PORT: u16 = 0x64;
/// Keyboard IRQ.
pub const KBD_IRQ: u8 = 1;
/// Aux (mouse) IRQ.
pub const AUX_IRQ: u8 = 12;

/// Status: output buffer full.
pub const STR_OBF: u8 = 1 << 0;
/// Status: input buffer full.
pub const STR_IBF: u8 = 1 << 1;
/// Status: system flag.
pub const STR_SYS: u8 = 1 << 2;
/// Status: last write was a command.
pub const STR_CMD: u8 = 1 << 3;
/// Status: keyboard not inhibited.
pub const STR_UNLOCKED: u8 = 1 << 4;
/// Status: output buffer byte is from the aux port.
pub const STR_AUXDATA: u8 = 1 << 5;
/// Status: transmit/receive timeout.
pub const STR_TIMEOUT: u8 = 1 << 6;

/// CTR: keyboard interrupt enable.
pub const CTR_KBDINT: u8 = 1 << 0;
/// CTR: aux interrupt enable.
pub const CTR_AUXINT: u8 = 1 << 1;
/// CTR: system flag.
pub const CTR_SYS: u8 = 1 << 2;
/// CTR: keyboard port disabled.
pub const CTR_KBDDIS: u8 = 1 << 4;
/// CTR: aux port disabled.
pub const CTR_AUXDIS: u8 = 1 << 5;
/// CTR: translate keyboard scan codes to set 1.
pub const CTR_XLATE: u8 = 1 << 6;

/// Keyboard acknowledge.
pub const KBD_ACK: u8 = 0xFA;
/// Keyboard resend / error.
pub const KBD_RESEND: u8 = 0xFE;
/// Keyboard basic assurance test passed.
pub const KBD_BAT_OK: u8 = 0xAA;

/// Bytes each queue holds (the keyboard's own buffer is 16 bytes).
pub const QUEUE_CAPACITY: usize = 16;

const OUTPORT_RESET: u8 = 1 << 0;
const OUTPORT_A20: u8 = 1 << 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Controller,
    Keyboard,
    Aux,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OutByte {
    value: u8,
    source: Source,
    timeout: bool,
}

/// What the next byte written to port 0x60 is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataTarget {
    Keyboard,
    ControllerRam(u8),
    OutputPort,
    KeyboardOutput,
    AuxOutput,
    AuxDevice,
}

/// The keyboard behind the first port.
#[derive(Clone, Debug)]
struct Keyboard {
    /// Command waiting for its parameter byte.
    param_for: Option<u8>,
    scanning: bool,
    scan_set: u8,
    leds: u8,
}

impl Keyboard {
    fn new() -> Self {
        Keyboard {
            param_for: None,
            scanning: true,
            scan_set: 2,
            leds: 0,
        }
    }

    /// The reply bytes to a byte from the host.
    fn command(&mut self, b: u8, reply: &mut impl FnMut(u8)) {
        if let Some(cmd) = self.param_for.take() {
            match cmd {
                0xED => self.leds = b & 7,
                0xF0 if b == 0 => {
                    reply(KBD_ACK);
                    reply(self.scan_set);
                    return;
                }
                0xF0 if (1..=3).contains(&b) => self.scan_set = b,
                0xF0 => {
                    reply(KBD_RESEND);
                    return;
                }
                _ => {} // 0xF3: typematic rate, accepted
            }
            reply(KBD_ACK);
            return;
        }
        match b {
            0xFF => {
                *self = Keyboard::new();
                reply(KBD_ACK);
                reply(KBD_BAT_OK);
            }
            0xF2 => {
                reply(KBD_ACK);
                reply(0xAB);
                reply(0x83);
            }
            0xEE => reply(0xEE),
            0xED | 0xF0 | 0xF3 => {
                self.param_for = Some(b);
                reply(KBD_ACK);
            }
            0xF4 => {
                self.scanning = true;
                reply(KBD_ACK);
            }
            0xF5 => {
                *self = Keyboard {
                    scanning: false,
                    ..Keyboard::new()
                };
                reply(KBD_ACK);
            }
            0xF6 => {
                *self = Keyboard {
                    scanning: self.scanning,
                    ..Keyboard::new()
                };
                reply(KBD_ACK);
            }
            0xF7..=0xFD => reply(KBD_ACK),
            _ => reply(KBD_RESEND),
        }
    }
}

/// The controller.
#[derive(Clone, Debug)]
pub struct I8042 {
    ports: [PortRange; 2],
    ctr: u8,
    ram: [u8; 32],
    outport: u8,
    sys: bool,
    last_was_command: bool,
    target: DataTarget,
    out: Option<OutByte>,
    last_read: u8,
    controller_q: VecDeque<OutByte>,
    keyboard_q: VecDeque<OutByte>,
    aux_q: VecDeque<OutByte>,
    keyboard: Keyboard,
    kbd_irq: bool,
    aux_irq: bool,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// The controller as firmware leaves it: keyboard interrupt and
    /// translation on, system flag set, both ports enabled, A20 on.
    pub fn new() -> Self {
        I8042 {
            ports: [
                PortRange::new(DATA_PORT, 1),
                PortRange::new(COMMAND_PORT, 1),
            ],
            ctr: CTR_KBDINT | CTR_SYS | CTR_XLATE,
            ram: [0; 32],
            outport: OUTPORT_RESET | OUTPORT_A20,
            sys: true,
            last_was_command: false,
            target: DataTarget::Keyboard,
            out: None,
            last_read: 0,
            controller_q: VecDeque::new(),
            keyboard_q: VecDeque::new(),
            aux_q: VecDeque::new(),
            keyboard: Keyboard::new(),
            kbd_irq: false,
            aux_irq: false,
        }
    }

    /// The controller command byte.
    pub fn command_byte(&self) -> u8 {
        self.ctr
    }

    /// Whether the A20 gate (output port bit 1) is enabled.
    pub fn a20_enabled(&self) -> bool {
        self.outport & OUTPORT_A20 != 0
    }

    /// Queues scan codes from a host keyboard (dropped while the keyboard
    /// has scanning disabled or its buffer is full).
    pub fn push_keyboard_bytes(&mut self, bytes: &[u8], fx: &mut Effects) {
        if self.keyboard.scanning {
            for &b in bytes {
                push_bounded(&mut self.keyboard_q, b, Source::Keyboard, false);
            }
        }
        self.fill_output();
        self.update_irqs(fx);
    }

    fn status(&self) -> u8 {
        let mut s = STR_UNLOCKED;
        if self.sys {
            s |= STR_SYS;
        }
        if self.last_was_command {
            s |= STR_CMD;
        }
        if let Some(o) = self.out {
            s |= STR_OBF;
            if o.source == Source::Aux {
                s |= STR_AUXDATA;
            }
            if o.timeout {
                s |= STR_TIMEOUT;
            }
        }
        s
    }

    /// Loads the output buffer from the queues if it is empty.
    fn fill_output(&mut self) {
        if self.out.is_some() {
            return;
        }
        self.out = self.controller_q.pop_front();
        if self.out.is_none() && self.ctr & CTR_KBDDIS == 0 {
            self.out = self.keyboard_q.pop_front();
        }
        if self.out.is_none() && self.ctr & CTR_AUXDIS == 0 {
            self.out = self.aux_q.pop_front();
        }
    }

    fn update_irqs(&mut self, fx: &mut Effects) {
        let (kbd, aux) = match self.out {
            Some(o) if o.source == Source::Aux => (false, self.ctr & CTR_AUXINT != 0),
            Some(_) => (self.ctr & CTR_KBDINT != 0, false),
            None => (false, false),
        };
        for (now, was, irq) in [
            (kbd, &mut self.kbd_irq, KBD_IRQ),
            (aux, &mut self.aux_irq, AUX_IRQ),
        ] {
            if now != *was {
                *was = now;
                fx.push(if now {
                    DeviceEffect::RaiseIrq(irq)
                } else {
                    DeviceEffect::LowerIrq(irq)
                });
            }
        }
    }

    fn reply(&mut self, value: u8) {
        push_bounded(&mut self.controller_q, value, Source::Controller, false);
    }

    fn write_outport(&mut self, v: u8, fx: &mut Effects) {
        // Bit 0 low resets the CPU; the line then reads high again.
        self.outport = v | OUTPORT_RESET;
        if v & OUTPORT_RESET == 0 {
            fx.request_reset(ResetSource::KeyboardController);
        }
    }

    fn command(&mut self, cmd: u8, fx: &mut Effects) {
        match cmd {
            0x20..=0x3F => {
                let v = if cmd == 0x20 {
                    self.ctr
                } else {
                    self.ram[usize::from(cmd & 0x1F)]
                };
                self.reply(v);
            }
            0x60..=0x7F => self.target = DataTarget::ControllerRam(cmd & 0x1F),
            0xA4 => self.reply(0xF1),
            0xA7 => self.ctr |= CTR_AUXDIS,
            0xA8 => self.ctr &= !CTR_AUXDIS,
            0xA9 | 0xAB => self.reply(0x00),
            0xAA => {
                self.sys = true;
                self.reply(0x55);
            }
            0xAD => self.ctr |= CTR_KBDDIS,
            0xAE => self.ctr &= !CTR_KBDDIS,
            0xC0 => self.reply(0x80),
            0xD0 => {
                let mut v = self.outport;
                if self.kbd_irq {
                    v |= 1 << 4;
                }
                if self.aux_irq {
                    v |= 1 << 5;
                }
                self.reply(v);
            }
            0xD1 => self.target = DataTarget::OutputPort,
            0xD2 => self.target = DataTarget::KeyboardOutput,
            0xD3 => self.target = DataTarget::AuxOutput,
            0xD4 => self.target = DataTarget::AuxDevice,
            0xDD => self.outport &= !OUTPORT_A20,
            0xDF => self.outport |= OUTPORT_A20,
            0xE0 => self.reply(0x00),
            // Pulse output-port lines: a clear bit 0 pulses reset.
            0xF0..=0xFF if cmd & 1 == 0 => fx.request_reset(ResetSource::KeyboardController),
            _ => {}
        }
    }

    fn data(&mut self, v: u8, fx: &mut Effects) {
        match core::mem::replace(&mut self.target, DataTarget::Keyboard) {
            DataTarget::Keyboard => {
                let mut replies = [0u8; 3];
                let mut n = 0;
                self.keyboard.command(v, &mut |b| {
                    if let Some(slot) = replies.get_mut(n) {
                        *slot = b;
                        n += 1;
                    }
                });
                for &b in replies.iter().take(n) {
                    push_bounded(&mut self.keyboard_q, b, Source::Keyboard, false);
                }
            }
            DataTarget::ControllerRam(0) => {
                self.ctr = v;
                self.sys = v & CTR_SYS != 0;
            }
            DataTarget::ControllerRam(i) => self.ram[usize::from(i)] = v,
            DataTarget::OutputPort => self.write_outport(v, fx),
            DataTarget::KeyboardOutput => {
                push_bounded(&mut self.keyboard_q, v, Source::Keyboard, false)
            }
            DataTarget::AuxOutput => push_bounded(&mut self.aux_q, v, Source::Aux, false),
            DataTarget::AuxDevice => push_bounded(&mut self.aux_q, KBD_RESEND, Source::Aux, true),
        }
    }
}

fn push_bounded(q: &mut VecDeque<OutByte>, value: u8, source: Source, timeout: bool) {
    if q.len() < QUEUE_CAPACITY {
        q.push_back(OutByte {
            value,
            source,
            timeout,
        });
    }
}

impl PortDevice for I8042 {
    fn name(&self) -> &'static str {
        "i8042"
    }

    fn ports(&self) -> &[PortRange] {
        &self.ports
    }

    fn read(&mut self, port: u16, size: AccessSize, fx: &mut Effects) -> u32 {
        let v = if port == COMMAND_PORT {
            self.status()
        } else {
            if let Some(o) = self.out.take() {
                self.last_read = o.value;
            }
            // The line drops when the byte is taken; the next byte, if any,
            // raises it again.
            self.update_irqs(fx);
            self.fill_output();
            self.last_read
        };
        self.update_irqs(fx);
        widen_byte(size, v)
    }

    fn write(&mut self, port: u16, _size: AccessSize, value: u32, fx: &mut Effects) {
        let v = value.to_le_bytes()[0];
        if port == COMMAND_PORT {
            self.last_was_command = true;
            // A new command cancels a pending data-byte command.
            self.target = DataTarget::Keyboard;
            self.command(v, fx);
        } else {
            self.last_was_command = false;
            self.data(v, fx);
        }
        self.fill_output();
        self.update_irqs(fx);
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

    fn cmd(k: &mut I8042, c: u8) -> Effects {
        let mut fx = Effects::new();
        k.write(COMMAND_PORT, AccessSize::Byte, u32::from(c), &mut fx);
        fx
    }

    fn data(k: &mut I8042, v: u8) -> Effects {
        let mut fx = Effects::new();
        k.write(DATA_PORT, AccessSize::Byte, u32::from(v), &mut fx);
        fx
    }

    fn status(k: &mut I8042) -> u8 {
        k.read(COMMAND_PORT, AccessSize::Byte, &mut Effects::new()) as u8
    }

    fn read(k: &mut I8042) -> u8 {
        k.read(DATA_PORT, AccessSize::Byte, &mut Effects::new()) as u8
    }

    /// Reads all waiting bytes, as Linux's `i8042_flush` does.
    fn drain(k: &mut I8042) -> Vec<u8> {
        let mut v = Vec::new();
        while status(k) & STR_OBF != 0 {
            v.push(read(k));
            assert!(v.len() <= 64);
        }
        v
    }

    /// Linux's probe: flush, self test, CTR read/write, aux loop and test,
    /// aux toggling, keyboard port test.
    #[test]
    fn linux_probe_sequence() {
        let mut k = I8042::new();
        assert_ne!(status(&mut k), 0xFF, "a controller is present");
        assert!(drain(&mut k).is_empty());
        cmd(&mut k, 0xAA);
        assert_eq!(drain(&mut k), [0x55]);
        cmd(&mut k, 0x20);
        let ctr = read(&mut k);
        assert_eq!(ctr, CTR_KBDINT | CTR_SYS | CTR_XLATE);
        // Interrupts off while probing.
        cmd(&mut k, 0x60);
        data(&mut k, ctr & !(CTR_KBDINT | CTR_AUXINT));
        cmd(&mut k, 0x20);
        assert_eq!(read(&mut k), ctr & !CTR_KBDINT);
        // Aux loopback: the byte comes back as aux data.
        cmd(&mut k, 0xD3);
        data(&mut k, 0x5A);
        assert_eq!(
            status(&mut k) & (STR_OBF | STR_AUXDATA),
            STR_OBF | STR_AUXDATA
        );
        assert_eq!(read(&mut k), 0x5A);
        // Active multiplexing check: the loop echoes 0xA4, so no mux.
        for b in [0xF0, 0x56, 0xA4] {
            cmd(&mut k, 0xD3);
            data(&mut k, b);
            assert_eq!(read(&mut k), b);
        }
        cmd(&mut k, 0xA9);
        assert_eq!(drain(&mut k), [0x00]);
        cmd(&mut k, 0xA7);
        cmd(&mut k, 0x20);
        assert_eq!(read(&mut k) & CTR_AUXDIS, CTR_AUXDIS);
        cmd(&mut k, 0xA8);
        cmd(&mut k, 0x20);
        assert_eq!(read(&mut k) & CTR_AUXDIS, 0);
        cmd(&mut k, 0xAB);
        assert_eq!(drain(&mut k), [0x00]);
        cmd(&mut k, 0xAD);
        cmd(&mut k, 0x20);
        assert_eq!(read(&mut k) & CTR_KBDDIS, CTR_KBDDIS);
        cmd(&mut k, 0xAE);
        assert_eq!(k.command_byte() & CTR_KBDDIS, 0);
        assert_eq!(status(&mut k) & (STR_SYS | STR_CMD), STR_SYS | STR_CMD);
    }

    #[test]
    fn aux_loop_raises_irq12_when_enabled() {
        let mut k = I8042::new();
        cmd(&mut k, 0x60);
        data(&mut k, CTR_AUXINT | CTR_SYS);
        cmd(&mut k, 0xD3);
        let fx = data(&mut k, 0xA5);
        assert_eq!(
            fx.iter().collect::<Vec<_>>(),
            [DeviceEffect::RaiseIrq(AUX_IRQ)]
        );
        let mut fx = Effects::new();
        assert_eq!(k.read(DATA_PORT, AccessSize::Byte, &mut fx), 0xA5);
        assert_eq!(
            fx.iter().collect::<Vec<_>>(),
            [DeviceEffect::LowerIrq(AUX_IRQ)]
        );
    }

    /// atkbd: GETID, set LEDs, enable, each answered through IRQ 1.
    #[test]
    fn keyboard_commands_answered_on_irq1() {
        let mut k = I8042::new();
        let fx = data(&mut k, 0xF2);
        assert_eq!(
            fx.iter().collect::<Vec<_>>(),
            [DeviceEffect::RaiseIrq(KBD_IRQ)]
        );
        // Each read drops the line; the next queued byte raises it again.
        let mut fx = Effects::new();
        assert_eq!(
            k.read(DATA_PORT, AccessSize::Byte, &mut fx),
            u32::from(KBD_ACK)
        );
        assert_eq!(
            fx.iter().collect::<Vec<_>>(),
            [
                DeviceEffect::LowerIrq(KBD_IRQ),
                DeviceEffect::RaiseIrq(KBD_IRQ)
            ]
        );
        assert_eq!(drain(&mut k), [0xAB, 0x83]);
        data(&mut k, 0xED);
        data(&mut k, 0x07);
        assert_eq!(drain(&mut k), [KBD_ACK, KBD_ACK]);
        data(&mut k, 0xF0);
        data(&mut k, 0x00);
        assert_eq!(drain(&mut k), [KBD_ACK, KBD_ACK, 2]);
        data(&mut k, 0xF0);
        data(&mut k, 0x09);
        assert_eq!(drain(&mut k), [KBD_ACK, KBD_RESEND]);
        data(&mut k, 0xEE);
        assert_eq!(drain(&mut k), [0xEE]);
        data(&mut k, 0xFF);
        assert_eq!(drain(&mut k), [KBD_ACK, KBD_BAT_OK]);
        data(&mut k, 0x42);
        assert_eq!(drain(&mut k), [KBD_RESEND]);
        assert_eq!(status(&mut k) & STR_AUXDATA, 0);
    }

    #[test]
    fn no_mouse_answers_with_timeout() {
        let mut k = I8042::new();
        cmd(&mut k, 0xD4);
        data(&mut k, 0xF2);
        let s = status(&mut k);
        assert_eq!(
            s & (STR_OBF | STR_AUXDATA | STR_TIMEOUT),
            STR_OBF | STR_AUXDATA | STR_TIMEOUT
        );
        assert_eq!(read(&mut k), KBD_RESEND);
        assert_eq!(status(&mut k) & (STR_OBF | STR_TIMEOUT), 0);
    }

    #[test]
    fn disabled_port_holds_its_bytes() {
        let mut k = I8042::new();
        cmd(&mut k, 0xAD);
        let mut fx = Effects::new();
        k.push_keyboard_bytes(&[0x1E, 0x9E], &mut fx);
        assert!(fx.is_empty());
        assert_eq!(status(&mut k) & STR_OBF, 0);
        // Controller replies still get through.
        cmd(&mut k, 0x20);
        assert_eq!(read(&mut k) & CTR_KBDDIS, CTR_KBDDIS);
        let fx = cmd(&mut k, 0xAE);
        assert_eq!(
            fx.iter().collect::<Vec<_>>(),
            [DeviceEffect::RaiseIrq(KBD_IRQ)]
        );
        assert_eq!(drain(&mut k), [0x1E, 0x9E]);
        // Scanning disabled: host keys are dropped.
        data(&mut k, 0xF5);
        drain(&mut k);
        k.push_keyboard_bytes(&[0x1E], &mut Effects::new());
        assert!(drain(&mut k).is_empty());
        // Empty reads return the last byte.
        assert_eq!(read(&mut k), KBD_ACK);
    }

    #[test]
    fn reset_pulses_and_output_port() {
        let mut k = I8042::new();
        assert_eq!(
            cmd(&mut k, 0xFE).reset_requested(),
            Some(ResetSource::KeyboardController)
        );
        assert_eq!(cmd(&mut k, 0xFF).reset_requested(), None, "no line pulsed");
        assert_eq!(
            cmd(&mut k, 0xF0).reset_requested(),
            Some(ResetSource::KeyboardController)
        );
        cmd(&mut k, 0xD0);
        assert_eq!(read(&mut k) & 0x03, 0x03, "running, A20 on");
        cmd(&mut k, 0xD1);
        assert!(data(&mut k, 0x01).reset_requested().is_none());
        assert!(!k.a20_enabled());
        cmd(&mut k, 0xD1);
        assert_eq!(
            data(&mut k, 0x02).reset_requested(),
            Some(ResetSource::KeyboardController)
        );
        assert!(k.a20_enabled());
        cmd(&mut k, 0xA4);
        assert_eq!(read(&mut k), 0xF1);
    }

    #[test]
    fn controller_ram_and_queue_bounds() {
        let mut k = I8042::new();
        cmd(&mut k, 0x65);
        data(&mut k, 0x77);
        cmd(&mut k, 0x25);
        assert_eq!(read(&mut k), 0x77);
        for _ in 0..100 {
            cmd(&mut k, 0xD2);
            data(&mut k, 0x11);
        }
        assert_eq!(
            drain(&mut k).len(),
            QUEUE_CAPACITY + 1,
            "output buffer + queue"
        );
    }

    #[test]
    fn hostile_accesses_never_panic() {
        let mut k = I8042::new();
        let mut x = 0x0BAD_F00D_u32;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let port = if x & 1 == 0 { DATA_PORT } else { COMMAND_PORT };
            let mut fx = Effects::new();
            if x & 2 == 0 {
                k.write(port, AccessSize::Byte, x >> 8, &mut fx);
            } else {
                k.read(port, AccessSize::Byte, &mut fx);
            }
            assert!(k.keyboard_q.len() <= QUEUE_CAPACITY && k.aux_q.len() <= QUEUE_CAPACITY);
        }
    }
}
