//! An 8254 programmable interval timer (ports 0x40-0x43), for a future Linux
//! guest.
//!
//! Channel 0 drives ISA IRQ 0. Modes 0 (interrupt on terminal count), 2 (rate
//! generator) and 3 (square wave) produce IRQ 0 rising edges; modes 1, 4 and 5
//! (gate-triggered or strobes) can be programmed and read but produce no edges.
//! Channels 1 and 2 count but drive nothing (port 0x61, the channel 2 gate and
//! speaker, is not modelled). Access modes lobyte, hibyte and lobyte/hibyte,
//! counter latch commands and the read-back command (count and status) work;
//! BCD counting is recorded but counts are binary.
//!
//! Time is virtual: the VM calls [`Pit::tick_until`] with the current time in
//! nanoseconds; it returns how many IRQ 0 edges happened since the previous
//! call. Counter reads and newly written counts use the time of the last
//! `tick_until` call. A count written in modes 2/3 takes effect at once rather
//! than at the end of the current period.

use core::any::Any;

use super::{widen_byte, Effects, PortDevice, PortRange};
use crate::exit::AccessSize;

/// Input clock of the 8254 in a PC, in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// First port.
pub const PIT_BASE: u16 = 0x40;
/// The ISA line channel 0 drives.
pub const PIT_IRQ: u8 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RwMode {
    Lo,
    Hi,
    LoHi,
}

impl RwMode {
    fn bits(self) -> u8 {
        match self {
            RwMode::Lo => 1,
            RwMode::Hi => 2,
            RwMode::LoHi => 3,
        }
    }
}

#[derive(Clone, Debug)]
struct Channel {
    mode: u8,
    rw: RwMode,
    bcd: bool,
    /// Reload value, 1..=65536 (a written 0 means 65536).
    count: u32,
    /// Counting started (count fully written) at this time.
    armed: bool,
    start_ns: u64,
    /// Mode 0 terminal count already signalled.
    fired: bool,
    write_lo: Option<u8>,
    read_hi_next: bool,
    latched_count: Option<u16>,
    latched_status: Option<u8>,
}

impl Default for Channel {
    fn default() -> Self {
        Channel {
            mode: 0,
            rw: RwMode::LoHi,
            bcd: false,
            count: 0x1_0000,
            armed: false,
            start_ns: 0,
            fired: false,
            write_lo: None,
            read_hi_next: false,
            latched_count: None,
            latched_status: None,
        }
    }
}

impl Channel {
    fn elapsed_ticks(&self, now_ns: u64) -> u64 {
        let ns = u128::from(now_ns.saturating_sub(self.start_ns));
        u64::try_from(ns * u128::from(PIT_HZ) / 1_000_000_000).unwrap_or(u64::MAX)
    }

    /// Current counter value (16 bits) at `now_ns`.
    fn value(&self, now_ns: u64) -> u16 {
        if !self.armed {
            return (self.count & 0xFFFF) as u16;
        }
        let count = u64::from(self.count);
        let e = self.elapsed_ticks(now_ns);
        let v = match self.mode {
            2 => count - e % count,
            3 => {
                // Decrements by two, twice per period.
                let half = (count / 2).max(1);
                count.saturating_sub(2 * (e % half))
            }
            _ => count.wrapping_sub(e),
        };
        (v & 0xFFFF) as u16
    }

    /// Output pin level (status bit 7), approximately.
    fn output(&self, now_ns: u64) -> bool {
        if !self.armed {
            return self.mode != 0;
        }
        let count = u64::from(self.count);
        let e = self.elapsed_ticks(now_ns);
        match self.mode {
            0 => e >= count,
            3 => e % count < count.div_ceil(2),
            _ => true,
        }
    }

    /// IRQ edges between `from_ns` and `to_ns`.
    fn edges(&mut self, from_ns: u64, to_ns: u64) -> u64 {
        if !self.armed {
            return 0;
        }
        let count = u64::from(self.count);
        let before = self.elapsed_ticks(from_ns);
        let after = self.elapsed_ticks(to_ns);
        match self.mode {
            0 => {
                if !self.fired && after >= count {
                    self.fired = true;
                    1
                } else {
                    0
                }
            }
            2 | 3 => (after / count).saturating_sub(before / count),
            _ => 0,
        }
    }

    fn load(&mut self, value: u16, now_ns: u64) {
        self.count = if value == 0 {
            0x1_0000
        } else {
            u32::from(value)
        };
        self.armed = true;
        self.fired = false;
        self.start_ns = now_ns;
    }

    fn write(&mut self, v: u8, now_ns: u64) {
        match self.rw {
            RwMode::Lo => self.load(u16::from(v), now_ns),
            RwMode::Hi => self.load(u16::from(v) << 8, now_ns),
            RwMode::LoHi => match self.write_lo.take() {
                None => self.write_lo = Some(v),
                Some(lo) => self.load(u16::from_le_bytes([lo, v]), now_ns),
            },
        }
    }

    fn read(&mut self, now_ns: u64) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        let (value, latched) = match self.latched_count {
            Some(v) => (v, true),
            None => (self.value(now_ns), false),
        };
        let [lo, hi] = value.to_le_bytes();
        let (byte, done) = match self.rw {
            RwMode::Lo => (lo, true),
            RwMode::Hi => (hi, true),
            RwMode::LoHi => {
                self.read_hi_next = !self.read_hi_next;
                if self.read_hi_next {
                    (lo, false)
                } else {
                    (hi, true)
                }
            }
        };
        if latched && done {
            self.latched_count = None;
        }
        byte
    }

    fn latch_count(&mut self, now_ns: u64) {
        if self.latched_count.is_none() {
            self.latched_count = Some(self.value(now_ns));
        }
    }

    fn latch_status(&mut self, now_ns: u64) {
        if self.latched_status.is_none() {
            let out = if self.output(now_ns) { 0x80 } else { 0 };
            let null_count = if self.armed { 0 } else { 0x40 };
            self.latched_status = Some(
                out | null_count | (self.rw.bits() << 4) | (self.mode << 1) | u8::from(self.bcd),
            );
        }
    }

    fn program(&mut self, rw: RwMode, mode: u8, bcd: bool) {
        *self = Channel {
            rw,
            // Modes 6 and 7 are aliases of 2 and 3.
            mode: if mode >= 6 { mode - 4 } else { mode },
            bcd,
            count: self.count,
            ..Channel::default()
        };
    }
}

/// The timer.
#[derive(Clone, Debug)]
pub struct Pit {
    ports: [PortRange; 1],
    channels: [Channel; 3],
    now_ns: u64,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// A PIT with unprogrammed channels.
    pub fn new() -> Self {
        Pit {
            ports: [PortRange::new(PIT_BASE, 4)],
            channels: Default::default(),
            now_ns: 0,
        }
    }

    /// Advances virtual time to `now_ns` and returns the number of IRQ 0
    /// rising edges since the last call. Time never goes backwards: an earlier
    /// `now_ns` is ignored.
    pub fn tick_until(&mut self, now_ns: u64) -> u64 {
        if now_ns <= self.now_ns {
            return 0;
        }
        let from = self.now_ns;
        self.now_ns = now_ns;
        self.channels[0].edges(from, now_ns)
    }

    /// Channel 0's period in nanoseconds, if it is programmed in a periodic
    /// mode (what a kernel would use to pick its next timer deadline).
    pub fn channel0_period_ns(&self) -> Option<u64> {
        let c = &self.channels[0];
        (c.armed && matches!(c.mode, 2 | 3)).then(|| u64::from(c.count) * 1_000_000_000 / PIT_HZ)
    }

    fn control(&mut self, v: u8) {
        let select = v >> 6;
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if v & (2 << i) != 0 {
                    if v & 0x20 == 0 {
                        ch.latch_count(self.now_ns);
                    }
                    if v & 0x10 == 0 {
                        ch.latch_status(self.now_ns);
                    }
                }
            }
            return;
        }
        let Some(ch) = self.channels.get_mut(usize::from(select)) else {
            return;
        };
        let rw = match (v >> 4) & 3 {
            0 => {
                ch.latch_count(self.now_ns);
                return;
            }
            1 => RwMode::Lo,
            2 => RwMode::Hi,
            _ => RwMode::LoHi,
        };
        ch.program(rw, (v >> 1) & 7, v & 1 != 0);
    }
}

impl PortDevice for Pit {
    fn name(&self) -> &'static str {
        "pit8254"
    }

    fn ports(&self) -> &[PortRange] {
        &self.ports
    }

    fn read(&mut self, port: u16, size: AccessSize, _fx: &mut Effects) -> u32 {
        let now = self.now_ns;
        let v = match self
            .channels
            .get_mut(usize::from(port.wrapping_sub(PIT_BASE)))
        {
            Some(ch) => ch.read(now),
            None => 0xFF, // the control port is write-only
        };
        widen_byte(size, v)
    }

    fn write(&mut self, port: u16, _size: AccessSize, value: u32, _fx: &mut Effects) {
        let v = value.to_le_bytes()[0];
        let now = self.now_ns;
        match port.wrapping_sub(PIT_BASE) {
            3 => self.control(v),
            i => {
                if let Some(ch) = self.channels.get_mut(usize::from(i)) {
                    ch.write(v, now);
                }
            }
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

    fn out(p: &mut Pit, port: u16, v: u8) {
        p.write(port, AccessSize::Byte, u32::from(v), &mut Effects::new());
    }

    fn inb(p: &mut Pit, port: u16) -> u8 {
        p.read(port, AccessSize::Byte, &mut Effects::new()) as u8
    }

    /// Linux's 100 Hz setup: mode 2, LATCH = 11932.
    fn hz100(p: &mut Pit, mode: u8) {
        out(p, 0x43, 0x30 | (mode << 1));
        let [lo, hi] = 11932u16.to_le_bytes();
        out(p, 0x40, lo);
        out(p, 0x40, hi);
    }

    #[test]
    fn unprogrammed_pit_is_silent() {
        let mut p = Pit::new();
        assert_eq!(p.tick_until(1_000_000_000), 0);
    }

    #[test]
    fn mode2_periodic_edges() {
        let mut p = Pit::new();
        hz100(&mut p, 2);
        // 11932 ticks of 1.193182 MHz: 10.000151 ms.
        assert_eq!(p.channel0_period_ns(), Some(10_000_150));
        assert_eq!(p.tick_until(5_000_000), 0);
        assert_eq!(p.tick_until(10_000_000), 0, "just short of one period");
        assert_eq!(p.tick_until(10_000_200), 1);
        assert_eq!(p.tick_until(1_010_100_000), 100);
        assert_eq!(p.tick_until(1_000_000_000), 0, "time does not go back");
    }

    #[test]
    fn mode3_square_wave_edges() {
        let mut p = Pit::new();
        hz100(&mut p, 3);
        assert_eq!(p.tick_until(95_000_000), 9);
    }

    #[test]
    fn mode0_one_shot() {
        let mut p = Pit::new();
        out(&mut p, 0x43, 0x30); // ch0, lo/hi, mode 0
        out(&mut p, 0x40, 0xA9); // 1193 ticks ≈ 1 ms
        out(&mut p, 0x40, 0x04);
        assert_eq!(p.tick_until(500_000), 0);
        assert_eq!(p.tick_until(2_000_000), 1);
        assert_eq!(p.tick_until(100_000_000), 0);
    }

    #[test]
    fn latch_and_live_reads() {
        let mut p = Pit::new();
        hz100(&mut p, 2);
        p.tick_until(1_000_000); // ≈1193 ticks in
        out(&mut p, 0x43, 0x00); // latch ch0
        p.tick_until(2_000_000);
        let v = u16::from_le_bytes([inb(&mut p, 0x40), inb(&mut p, 0x40)]);
        assert_eq!(v, 11932 - 1193);
        let live = u16::from_le_bytes([inb(&mut p, 0x40), inb(&mut p, 0x40)]);
        assert_eq!(live, 11932 - 2386);
    }

    #[test]
    fn readback_status() {
        let mut p = Pit::new();
        out(&mut p, 0x43, 0xB6); // ch2, lo/hi, mode 3
        out(&mut p, 0x43, 0xE8); // read-back status of ch2
        assert_eq!(
            inb(&mut p, 0x42) & 0x7F,
            0x40 | 0x30 | 0x06,
            "null count, lo/hi, mode 3"
        );
        assert_eq!(inb(&mut p, 0x43), 0xFF);
    }

    #[test]
    fn count_zero_means_65536() {
        let mut p = Pit::new();
        out(&mut p, 0x43, 0x34);
        out(&mut p, 0x40, 0);
        out(&mut p, 0x40, 0);
        assert_eq!(p.channel0_period_ns(), Some(65536 * 1_000_000_000 / PIT_HZ));
        assert_eq!(p.tick_until(1_000_000_000), 18);
    }
}
