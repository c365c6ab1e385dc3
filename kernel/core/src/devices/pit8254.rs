//! An 8254 programmable interval timer (ports 0x40-0x43) and the PC's system
//! control port B (0x61), which carries channel 2's gate and output (Intel
//! 82C54 data sheet; the PC wiring as in the IBM PC/AT technical reference).
//!
//! # Wiring
//!
//! - Channel 0: gate tied high, output drives ISA IRQ 0 (rising edges).
//! - Channel 1: gate tied high, output unconnected (DRAM refresh once).
//! - Channel 2: gate = port 0x61 bit 0, output readable as port 0x61 bit 5
//!   (and gated to the speaker by bit 1, which is not modelled further).
//!   Linux's `quick_pit_calibrate` and `pit_calibrate_tsc` program channel 2
//!   in mode 0, raise the gate through 0x61 and then poll the counter MSB or
//!   the output bit.
//!
//! # Modes
//!
//! All six modes count; modes 6 and 7 are aliases of 2 and 3. Channel 0
//! produces IRQ 0 edges in modes 0 (once, at terminal count), 2 and 3 (once
//! per period) and 4 (once, the strobe's end); modes 1 and 5 wait for a gate
//! rising edge, which channel 0's tied-high gate never gives. The gate
//! inhibits counting in modes 0 and 4, (re)triggers modes 1 and 5, and in
//! modes 2 and 3 stops counting (output high) while low and restarts the
//! period on its rising edge. A count written in modes 2/3 while counting
//! takes effect at the end of the current period; in modes 0 and 4 it restarts
//! counting, and writing the first byte of a lobyte/hibyte count in mode 0
//! stops counting until the second arrives. A loaded count starts at the
//! next input clock (one 838 ns tick after the write). Access modes lobyte,
//! hibyte and lobyte/hibyte, the counter latch command and the read-back
//! command (count and status, status bit 6 "null count") work; BCD counting
//! counts modulo 10000 in decimal. Mode 3 with an odd count splits the period
//! into halves of (N+1)/2 and (N-1)/2 clocks; its counter reads decrement by
//! two from N (hardware starts odd counts at N-1).
//!
//! # Time
//!
//! Time is virtual and supplied by the caller: [`Pit::tick_until`] moves the
//! model to a monotonic `now_ns` (it never goes backwards) and returns the
//! IRQ 0 edges since the previous call; reads and writes happen at the time of
//! the last call, so the VM advances the PIT before it routes an access to
//! ports 0x40-0x43 or 0x61 (see [`super::pc::advance`]). Input clock ticks are
//! counted from `now_ns = 0` as `floor(now_ns * 1193182 / 10^9)`, so no error
//! accumulates however often the time is advanced.
//! [`Pit::next_deadline_ns`] is the time of the next IRQ 0 edge, for an idle
//! vCPU to sleep until.

use core::any::Any;

use super::{widen_byte, DeviceEffect, Effects, PortDevice, PortRange};
use crate::exit::AccessSize;

/// Input clock of the 8254 in a PC, in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// First port.
pub const PIT_BASE: u16 = 0x40;
/// The ISA line channel 0 drives.
pub const PIT_IRQ: u8 = 0;
/// System control port B.
pub const PORT_B: u16 = 0x61;

/// Port 0x61 bit 0: channel 2 gate (read/write).
pub const PORT_B_GATE2: u8 = 1 << 0;
/// Port 0x61 bit 1: speaker data enable (read/write, no sound here).
pub const PORT_B_SPEAKER: u8 = 1 << 1;
/// Port 0x61 bit 4: refresh request toggle (read-only).
pub const PORT_B_REFRESH: u8 = 1 << 4;
/// Port 0x61 bit 5: channel 2 output (read-only).
pub const PORT_B_OUT2: u8 = 1 << 5;
/// Port 0x61 bits the guest can write: gate, speaker, parity and I/O check
/// enables (bits 2-3, kept and read back).
const PORT_B_WRITABLE: u8 = 0x0F;

/// Input clock ticks elapsed from time 0 to `ns`.
fn tick_at(ns: u64) -> u64 {
    let t = u128::from(ns) * u128::from(PIT_HZ) / 1_000_000_000;
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// The first time (ns) at which tick `tick` has happened.
fn ns_of_tick(tick: u64) -> u64 {
    let ns = (u128::from(tick) * 1_000_000_000).div_ceil(u128::from(PIT_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

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

fn to_bcd(v: u64) -> u16 {
    let v = v % 10_000;
    ((v / 1000) << 12 | (v / 100 % 10) << 8 | (v / 10 % 10) << 4 | (v % 10)) as u16
}

fn from_bcd(v: u16) -> u32 {
    // Invalid digits (A-F) count as their binary value, as no real part
    // defines them.
    let d = |s: u16| u32::from((v >> s) & 0xF);
    d(12) * 1000 + d(8) * 100 + d(4) * 10 + d(0)
}

#[derive(Clone, Debug)]
struct Channel {
    mode: u8,
    rw: RwMode,
    bcd: bool,
    /// Reload value N, 1..=65536 (binary) or 1..=10000 (BCD); 0 is the maximum.
    count: u32,
    /// A count has been written since the control word.
    loaded: bool,
    /// A counting sequence is under way (after the load in modes 0, 2, 3, 4;
    /// after a gate trigger in modes 1 and 5).
    armed: bool,
    /// Gate input level.
    gate: bool,
    /// Progress (input clocks counted in the current sequence) before
    /// `run_start`.
    base: u64,
    /// Absolute tick from which progress increases; `None` while stopped.
    run_start: Option<u64>,
    /// Modes 2/3: a count written while counting, and the absolute tick (end
    /// of the current period) at which it takes effect.
    pending: Option<(u32, u64)>,
    /// The one-shot edge of modes 0, 1, 4 and 5 was reported.
    fired: bool,
    write_lo: Option<u8>,
    read_hi_next: bool,
    latched_count: Option<u16>,
    latched_status: Option<u8>,
}

impl Channel {
    fn new(gate: bool) -> Self {
        Channel {
            mode: 0,
            rw: RwMode::LoHi,
            bcd: false,
            count: 0x1_0000,
            loaded: false,
            armed: false,
            gate,
            base: 0,
            run_start: None,
            pending: None,
            fired: false,
            write_lo: None,
            read_hi_next: false,
            latched_count: None,
            latched_status: None,
        }
    }

    fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            0x1_0000
        }
    }

    fn progress(&self, tick: u64) -> u64 {
        self.base
            .saturating_add(self.run_start.map_or(0, |s| tick.saturating_sub(s)))
    }

    /// (reload value, progress within the sequence) at `tick`, with a pending
    /// mode 2/3 count applied once its period boundary has passed.
    fn phase(&self, tick: u64) -> (u64, u64) {
        match self.pending {
            Some((count, at)) if self.run_start.is_some() && tick >= at => {
                (u64::from(count), tick - at)
            }
            _ => (u64::from(self.count), self.progress(tick)),
        }
    }

    /// Folds a pending count whose boundary has passed into the state.
    fn settle(&mut self, tick: u64) {
        if let Some((count, at)) = self.pending {
            if self.run_start.is_some() && tick >= at {
                self.count = count;
                self.base = 0;
                self.run_start = Some(at);
                self.pending = None;
            }
        }
    }

    /// Counter value at `tick` (what a read or latch sees).
    fn value(&self, tick: u64) -> u16 {
        if !self.armed {
            // Before counting starts the counting element holds the count.
            let n = u64::from(self.count) % self.modulus();
            return if self.bcd { to_bcd(n) } else { n as u16 };
        }
        let (n, p) = self.phase(tick);
        let m = self.modulus();
        let v = match self.mode {
            2 => n - p % n,
            3 => {
                let q = p % n;
                let first = n.div_ceil(2);
                let r = if q < first { q } else { q - first };
                n.saturating_sub(2 * r)
            }
            // Modes 0, 1, 4, 5 wrap around after terminal count.
            _ => (n + m - p % m) % m,
        } % m;
        if self.bcd {
            to_bcd(v)
        } else {
            v as u16
        }
    }

    /// Output pin level at `tick`.
    fn output(&self, tick: u64) -> bool {
        if !self.loaded {
            return self.mode != 0;
        }
        if !self.armed {
            // Mode 0/4 never armed without a load; modes 1/5 await a trigger;
            // modes 2/3 with the gate low keep the output high.
            return !matches!(self.mode, 0);
        }
        let (n, p) = self.phase(tick);
        match self.mode {
            0 | 1 => p >= n,
            2 => !self.gate || p % n != n - 1 || n == 1,
            3 => !self.gate || p % n < n.div_ceil(2),
            _ => p != n,
        }
    }

    /// IRQ edges (output rising edges) in `(from, to]`.
    fn edges(&mut self, from: u64, to: u64) -> u64 {
        let mut from = from;
        let mut edges = 0;
        if let Some((_, at)) = self.pending {
            if self.run_start.is_some() && at <= to {
                edges += self.edges_plain(from, at);
                self.settle(at);
                from = at;
            }
        }
        edges + self.edges_plain(from, to)
    }

    fn edges_plain(&mut self, from: u64, to: u64) -> u64 {
        if !self.armed || self.run_start.is_none() {
            return 0;
        }
        let n = u64::from(self.count);
        let (p0, p1) = (self.progress(from), self.progress(to));
        match self.mode {
            2 | 3 => (p1 / n).saturating_sub(p0 / n),
            0 | 1 if !self.fired && p1 >= n => {
                self.fired = true;
                1
            }
            4 | 5 if !self.fired && p1 > n => {
                self.fired = true;
                1
            }
            _ => 0,
        }
    }

    /// Absolute tick of the next output rising edge after `now`, if one is
    /// coming without further guest action.
    fn next_edge(&self, now: u64) -> Option<u64> {
        let start = self.run_start?;
        if !self.armed {
            return None;
        }
        let n = u64::from(self.count);
        match self.mode {
            2 | 3 => {
                if let Some((count, at)) = self.pending {
                    if at > now {
                        return Some(at);
                    }
                    let c = u64::from(count);
                    return Some(at + ((now - at) / c + 1) * c);
                }
                let p = self.progress(now);
                let next = (p / n + 1).saturating_mul(n);
                Some(start.saturating_add(next - self.base))
            }
            0 | 1 if !self.fired => Some(start.saturating_add(n.saturating_sub(self.base))),
            4 | 5 if !self.fired => Some(start.saturating_add((n + 1).saturating_sub(self.base))),
            _ => None,
        }
    }

    /// Stops counting at `tick`, keeping the progress.
    fn freeze(&mut self, tick: u64) {
        self.settle(tick);
        self.base = self.progress(tick);
        self.run_start = None;
    }

    /// Starts a sequence with progress 0 at the next input clock.
    fn start(&mut self, tick: u64) {
        self.armed = true;
        self.fired = false;
        self.base = 0;
        self.run_start = Some(tick.saturating_add(1));
    }

    fn load(&mut self, raw: u16, tick: u64) {
        let n = if self.bcd {
            from_bcd(raw)
        } else {
            u32::from(raw)
        };
        let n = if n == 0 { self.modulus() as u32 } else { n };
        let first = !self.loaded;
        self.loaded = true;
        match self.mode {
            0 | 4 => {
                self.count = n;
                self.pending = None;
                self.armed = true;
                self.fired = false;
                self.base = 0;
                self.run_start = self.gate.then_some(tick.saturating_add(1));
            }
            2 | 3 if !first && self.armed && self.run_start.is_some() => {
                // New period length from the end of the current period.
                self.settle(tick);
                let cur = u64::from(self.count);
                let p = self.progress(tick);
                let next = (p / cur + 1).saturating_mul(cur);
                let at = self
                    .run_start
                    .unwrap_or(tick)
                    .saturating_add(next - self.base);
                self.pending = Some((n, at));
            }
            2 | 3 => {
                self.count = n;
                self.pending = None;
                if self.gate {
                    self.start(tick);
                } else {
                    self.armed = false;
                }
            }
            // Modes 1 and 5: used at the next gate trigger.
            _ => self.count = n,
        }
    }

    fn write(&mut self, v: u8, tick: u64) {
        match self.rw {
            RwMode::Lo => self.load(u16::from(v), tick),
            RwMode::Hi => self.load(u16::from(v) << 8, tick),
            RwMode::LoHi => match self.write_lo.take() {
                None => {
                    self.write_lo = Some(v);
                    if self.mode == 0 && self.armed {
                        // Writing the first byte stops the count; the output
                        // goes low at once.
                        self.freeze(tick);
                        self.loaded = false;
                        self.armed = false;
                    }
                }
                Some(lo) => self.load(u16::from_le_bytes([lo, v]), tick),
            },
        }
    }

    fn set_gate(&mut self, level: bool, tick: u64) {
        if level == self.gate {
            return;
        }
        self.gate = level;
        match self.mode {
            0 | 4 => {
                if level {
                    if self.armed && self.run_start.is_none() {
                        self.run_start = Some(tick);
                    }
                } else if self.run_start.is_some() {
                    self.freeze(tick);
                }
            }
            1 | 5 => {
                if level && self.loaded {
                    self.start(tick);
                }
            }
            _ => {
                if level {
                    if self.loaded {
                        if let Some((count, _)) = self.pending.take() {
                            self.count = count;
                        }
                        self.start(tick);
                    }
                } else if self.run_start.is_some() {
                    self.freeze(tick);
                }
            }
        }
    }

    fn read(&mut self, tick: u64) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        let (value, latched) = match self.latched_count {
            Some(v) => (v, true),
            None => (self.value(tick), false),
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

    fn latch_count(&mut self, tick: u64) {
        if self.latched_count.is_none() {
            self.latched_count = Some(self.value(tick));
        }
    }

    fn latch_status(&mut self, tick: u64) {
        if self.latched_status.is_none() {
            let out = if self.output(tick) { 0x80 } else { 0 };
            let null_count = if self.loaded { 0 } else { 0x40 };
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
            ..Channel::new(self.gate)
        };
    }
}

/// The timer with port 0x61.
#[derive(Clone, Debug)]
pub struct Pit {
    ports: [PortRange; 2],
    channels: [Channel; 3],
    now_ns: u64,
    now_tick: u64,
    /// Port 0x61 bits 0-3.
    port_b: u8,
    refresh: bool,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// A PIT with unprogrammed channels, channel 2's gate low, at time 0.
    pub fn new() -> Self {
        Pit {
            ports: [PortRange::new(PIT_BASE, 4), PortRange::new(PORT_B, 1)],
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            now_ns: 0,
            now_tick: 0,
            port_b: 0,
            refresh: false,
        }
    }

    /// Advances virtual time to `now_ns` and returns the number of IRQ 0
    /// rising edges since the last call. Time never goes backwards: an earlier
    /// `now_ns` is ignored.
    pub fn tick_until(&mut self, now_ns: u64) -> u64 {
        if now_ns <= self.now_ns {
            return 0;
        }
        let from = self.now_tick;
        self.now_ns = now_ns;
        self.now_tick = tick_at(now_ns);
        let to = self.now_tick;
        let edges = self.channels[0].edges(from, to);
        for ch in &mut self.channels[1..] {
            ch.settle(to);
        }
        edges
    }

    /// The time the model is at (the last [`Self::tick_until`]).
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// When the next IRQ 0 rising edge happens (ns, same time base as
    /// [`Self::tick_until`]), if one is coming without guest action. May be
    /// at or before the current time when an edge is due but not yet
    /// collected by `tick_until`.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.channels[0].next_edge(self.now_tick).map(ns_of_tick)
    }

    /// Channel 0's period in nanoseconds, if it is programmed in a periodic
    /// mode (what a kernel would use to pick its next timer deadline).
    pub fn channel0_period_ns(&self) -> Option<u64> {
        let c = &self.channels[0];
        (c.armed && matches!(c.mode, 2 | 3)).then(|| u64::from(c.count) * 1_000_000_000 / PIT_HZ)
    }

    /// Channel 2's output (port 0x61 bit 5) now.
    pub fn channel2_output(&self) -> bool {
        self.channels[2].output(self.now_tick)
    }

    fn control(&mut self, v: u8) {
        let tick = self.now_tick;
        let select = v >> 6;
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if v & (2 << i) != 0 {
                    if v & 0x20 == 0 {
                        ch.latch_count(tick);
                    }
                    if v & 0x10 == 0 {
                        ch.latch_status(tick);
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
                ch.latch_count(tick);
                return;
            }
            1 => RwMode::Lo,
            2 => RwMode::Hi,
            _ => RwMode::LoHi,
        };
        ch.program(rw, (v >> 1) & 7, v & 1 != 0);
    }

    fn read_port_b(&mut self) -> u8 {
        // The refresh bit toggles on every read so that delay loops waiting
        // for it always make progress.
        self.refresh = !self.refresh;
        let mut v = self.port_b;
        if self.refresh {
            v |= PORT_B_REFRESH;
        }
        if self.channel2_output() {
            v |= PORT_B_OUT2;
        }
        v
    }

    fn write_port_b(&mut self, v: u8) {
        self.port_b = v & PORT_B_WRITABLE;
        let tick = self.now_tick;
        self.channels[2].set_gate(v & PORT_B_GATE2 != 0, tick);
    }
}

impl PortDevice for Pit {
    fn name(&self) -> &'static str {
        "pit8254"
    }

    fn counts_time(&self) -> bool {
        true
    }

    fn next_deadline_ns(&self) -> Option<u64> {
        Pit::next_deadline_ns(self)
    }

    fn advance(&mut self, now_ns: u64, fx: &mut Effects) {
        // Several elapsed periods collapse into one IRQ 0 edge, as in
        // `pc::advance`.
        if self.tick_until(now_ns) > 0 {
            fx.push(DeviceEffect::RaiseIrq(PIT_IRQ));
            fx.push(DeviceEffect::LowerIrq(PIT_IRQ));
        }
    }

    fn ports(&self) -> &[PortRange] {
        &self.ports
    }

    fn read(&mut self, port: u16, size: AccessSize, _fx: &mut Effects) -> u32 {
        let tick = self.now_tick;
        let v = if port == PORT_B {
            self.read_port_b()
        } else {
            match self
                .channels
                .get_mut(usize::from(port.wrapping_sub(PIT_BASE)))
            {
                Some(ch) => ch.read(tick),
                None => 0xFF, // the control port is write-only
            }
        };
        widen_byte(size, v)
    }

    fn write(&mut self, port: u16, _size: AccessSize, value: u32, _fx: &mut Effects) {
        let v = value.to_le_bytes()[0];
        let tick = self.now_tick;
        if port == PORT_B {
            self.write_port_b(v);
            return;
        }
        match port.wrapping_sub(PIT_BASE) {
            3 => self.control(v),
            i => {
                if let Some(ch) = self.channels.get_mut(usize::from(i)) {
                    ch.write(v, tick);
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

    fn read16(p: &mut Pit, port: u16) -> u16 {
        u16::from_le_bytes([inb(p, port), inb(p, port)])
    }

    /// Time (ns) of absolute input tick `t`.
    fn at(t: u64) -> u64 {
        ns_of_tick(t)
    }

    /// Linux's 100 Hz setup: LATCH = 11932 in `mode`.
    fn hz100(p: &mut Pit, mode: u8) {
        out(p, 0x43, 0x30 | (mode << 1));
        let [lo, hi] = 11932u16.to_le_bytes();
        out(p, 0x40, lo);
        out(p, 0x40, hi);
    }

    #[test]
    fn tick_conversions_round_trip() {
        for t in [0u64, 1, 2, 1193, 1_193_182, 123_456_789, 1 << 40] {
            assert_eq!(tick_at(ns_of_tick(t)), t, "tick {t}");
            if t > 0 {
                assert_eq!(tick_at(ns_of_tick(t) - 1), t - 1, "just before tick {t}");
            }
        }
        assert_eq!(tick_at(1_000_000_000), PIT_HZ);
        assert!(tick_at(u64::MAX) > 0 && ns_of_tick(u64::MAX) == u64::MAX);
    }

    #[test]
    fn unprogrammed_pit_is_silent() {
        let mut p = Pit::new();
        assert_eq!(p.tick_until(1_000_000_000), 0);
        assert_eq!(p.next_deadline_ns(), None);
    }

    #[test]
    fn mode2_periodic_edges_and_deadline() {
        let mut p = Pit::new();
        hz100(&mut p, 2);
        // 11932 ticks of 1.193182 MHz: 10.000151 ms; counting starts one tick
        // after the load.
        assert_eq!(p.channel0_period_ns(), Some(10_000_150));
        let first = at(1 + 11932);
        assert_eq!(p.next_deadline_ns(), Some(first));
        assert_eq!(p.tick_until(5_000_000), 0);
        assert_eq!(p.tick_until(first - 1), 0, "just short of one period");
        assert_eq!(p.tick_until(first), 1);
        assert_eq!(p.next_deadline_ns(), Some(at(1 + 2 * 11932)));
        assert_eq!(p.tick_until(at(1 + 101 * 11932)), 100);
        assert_eq!(p.tick_until(1_000_000_000), 0, "time does not go back");
    }

    #[test]
    fn mode3_square_wave_edges_and_output() {
        let mut p = Pit::new();
        hz100(&mut p, 3);
        assert_eq!(p.tick_until(95_000_000), 9);
        // Read-back status shows the output: high in the first half period.
        p.tick_until(at(1 + 10 * 11932 + 100));
        out(&mut p, 0x43, 0xE2); // status of channel 0
        assert_eq!(inb(&mut p, 0x40) & 0x80, 0x80);
        p.tick_until(at(1 + 10 * 11932 + 6000));
        out(&mut p, 0x43, 0xE2);
        assert_eq!(inb(&mut p, 0x40) & 0x80, 0);
        // Counts decrement by two, restarting each half period.
        p.tick_until(at(1 + 11 * 11932 + 10));
        assert_eq!(read16(&mut p, 0x40), 11932 - 20);
    }

    #[test]
    fn mode0_one_shot_and_wrap() {
        let mut p = Pit::new();
        out(&mut p, 0x43, 0x30); // ch0, lo/hi, mode 0
        out(&mut p, 0x40, 0xA9); // 1193 ticks ≈ 1 ms
        out(&mut p, 0x40, 0x04);
        assert_eq!(p.next_deadline_ns(), Some(at(1 + 1193)));
        assert_eq!(p.tick_until(500_000), 0);
        assert_eq!(p.tick_until(2_000_000), 1);
        assert_eq!(p.next_deadline_ns(), None);
        assert_eq!(p.tick_until(100_000_000), 0);
        // After terminal count the counter wraps through 0xFFFF.
        let mut q = Pit::new();
        out(&mut q, 0x43, 0x30);
        out(&mut q, 0x40, 10);
        out(&mut q, 0x40, 0);
        q.tick_until(at(1 + 12));
        assert_eq!(read16(&mut q, 0x40), 0xFFFE);
    }

    #[test]
    fn mode0_rewrite_restarts_one_shot() {
        // Linux's oneshot clockevent rewrites the count for every event.
        let mut p = Pit::new();
        out(&mut p, 0x43, 0x30);
        for round in 0..3u64 {
            let t0 = p.now_ns();
            let base = tick_at(t0);
            out(&mut p, 0x40, 100);
            out(&mut p, 0x40, 0);
            assert_eq!(
                p.next_deadline_ns(),
                Some(at(base + 1 + 100)),
                "round {round}"
            );
            assert_eq!(p.tick_until(at(base + 100)), 0);
            assert_eq!(p.tick_until(at(base + 101)), 1);
            p.tick_until(at(base + 150));
        }
    }

    #[test]
    fn mode0_first_byte_stops_count() {
        let mut p = Pit::new();
        out(&mut p, 0x43, 0x30);
        out(&mut p, 0x40, 100);
        out(&mut p, 0x40, 0);
        p.tick_until(at(50));
        out(&mut p, 0x40, 200); // first byte only
        assert_eq!(p.tick_until(at(500)), 0, "stopped: no terminal count");
        assert_eq!(p.next_deadline_ns(), None);
        out(&mut p, 0x40, 0);
        assert_eq!(p.tick_until(at(500 + 201)), 1);
    }

    #[test]
    fn mode2_new_count_takes_effect_at_period_end() {
        let mut p = Pit::new();
        out(&mut p, 0x43, 0x34); // ch0 lo/hi mode 2
        out(&mut p, 0x40, 100);
        out(&mut p, 0x40, 0);
        // Edges at ticks 101, 201, ...; rewrite to 50 at tick 150.
        p.tick_until(at(150));
        out(&mut p, 0x40, 50);
        out(&mut p, 0x40, 0);
        assert_eq!(read16(&mut p, 0x40), 100 - 49, "old period still running");
        assert_eq!(p.next_deadline_ns(), Some(at(201)));
        assert_eq!(p.tick_until(at(201)), 1);
        assert_eq!(p.next_deadline_ns(), Some(at(251)));
        assert_eq!(p.tick_until(at(351)), 3);
        assert_eq!(read16(&mut p, 0x40), 50);
    }

    #[test]
    fn mode4_software_strobe_single_edge() {
        let mut p = Pit::new();
        out(&mut p, 0x43, 0x38); // ch0 lo/hi mode 4
        out(&mut p, 0x40, 10);
        out(&mut p, 0x40, 0);
        assert_eq!(p.next_deadline_ns(), Some(at(12)));
        assert_eq!(p.tick_until(at(11)), 0, "output low at terminal count");
        out(&mut p, 0x43, 0xE2);
        assert_eq!(inb(&mut p, 0x40) & 0x80, 0);
        assert_eq!(p.tick_until(at(12)), 1, "edge when the output returns high");
        assert_eq!(p.tick_until(at(1000)), 0);
    }

    #[test]
    fn modes_1_and_5_need_a_gate_trigger() {
        let mut p = Pit::new();
        // Channel 0's gate is tied high: no trigger, no edges.
        out(&mut p, 0x43, 0x32); // mode 1
        out(&mut p, 0x40, 10);
        out(&mut p, 0x40, 0);
        assert_eq!(p.tick_until(at(1000)), 0);
        // Channel 2 mode 1 triggered by the gate through port 0x61.
        out(&mut p, 0x43, 0xB2); // ch2 lo/hi mode 1
        out(&mut p, 0x42, 20);
        out(&mut p, 0x42, 0);
        assert!(p.channel2_output(), "mode 1 output high until triggered");
        out(&mut p, 0x61, PORT_B_GATE2);
        assert!(!p.channel2_output(), "low during the one-shot");
        p.tick_until(at(1000 + 1 + 20));
        assert!(p.channel2_output());
        // Mode 5: strobe after the trigger.
        out(&mut p, 0x61, 0);
        out(&mut p, 0x43, 0xBA); // ch2 lo/hi mode 5
        out(&mut p, 0x42, 5);
        out(&mut p, 0x42, 0);
        p.tick_until(at(2000));
        assert_eq!(read16(&mut p, 0x42), 5, "waits for the trigger");
        out(&mut p, 0x61, PORT_B_GATE2);
        p.tick_until(at(2000 + 1 + 3));
        assert_eq!(read16(&mut p, 0x42), 2);
    }

    #[test]
    fn latch_and_live_reads() {
        let mut p = Pit::new();
        hz100(&mut p, 2);
        p.tick_until(at(1 + 1193));
        out(&mut p, 0x43, 0x00); // latch ch0
        p.tick_until(at(1 + 2386));
        assert_eq!(read16(&mut p, 0x40), 11932 - 1193);
        assert_eq!(read16(&mut p, 0x40), 11932 - 2386);
        // A second latch command before the first is read is ignored.
        out(&mut p, 0x43, 0x00);
        p.tick_until(at(1 + 3000));
        out(&mut p, 0x43, 0x00);
        assert_eq!(read16(&mut p, 0x40), 11932 - 2386);
    }

    #[test]
    fn lobyte_and_hibyte_access() {
        let mut p = Pit::new();
        out(&mut p, 0x43, 0x14); // ch0 lobyte only, mode 2
        out(&mut p, 0x40, 200);
        p.tick_until(at(1 + 50));
        assert_eq!(inb(&mut p, 0x40), 150);
        assert_eq!(inb(&mut p, 0x40), 150, "no flip-flop in lobyte mode");
        out(&mut p, 0x43, 0x24); // ch0 hibyte only, mode 2
        out(&mut p, 0x40, 0x02); // count 0x200
        let t = tick_at(p.now_ns());
        p.tick_until(at(t + 1 + 0x100));
        assert_eq!(inb(&mut p, 0x40), 0x01);
    }

    #[test]
    fn readback_status_and_count() {
        let mut p = Pit::new();
        out(&mut p, 0x43, 0xB6); // ch2, lo/hi, mode 3
        out(&mut p, 0x43, 0xE8); // read-back status of ch2
        assert_eq!(
            inb(&mut p, 0x42) & 0x7F,
            0x40 | 0x30 | 0x06,
            "null count, lo/hi, mode 3"
        );
        assert_eq!(inb(&mut p, 0x43), 0xFF);
        // Read-back of count and status together: status first.
        out(&mut p, 0x42, 0x34);
        out(&mut p, 0x42, 0x12);
        out(&mut p, 0x43, 0xC8); // count + status of ch2
        assert_eq!(inb(&mut p, 0x42) & 0x4F, 0x06, "count loaded, mode 3");
        assert_eq!(read16(&mut p, 0x42), 0x1234);
    }

    #[test]
    fn count_zero_means_65536_and_bcd_10000() {
        let mut p = Pit::new();
        out(&mut p, 0x43, 0x34);
        out(&mut p, 0x40, 0);
        out(&mut p, 0x40, 0);
        assert_eq!(p.channel0_period_ns(), Some(65536 * 1_000_000_000 / PIT_HZ));
        assert_eq!(p.tick_until(1_000_000_000), 18);
        let mut b = Pit::new();
        out(&mut b, 0x43, 0x35); // mode 2, BCD
        out(&mut b, 0x40, 0x00);
        out(&mut b, 0x40, 0x00); // 10000
        b.tick_until(at(1 + 1));
        assert_eq!(read16(&mut b, 0x40), 0x9999);
        out(&mut b, 0x43, 0x31); // mode 0 BCD
        out(&mut b, 0x40, 0x50);
        out(&mut b, 0x40, 0x01); // 150 decimal
        let t = tick_at(b.now_ns());
        b.tick_until(at(t + 1 + 51));
        assert_eq!(read16(&mut b, 0x40), 0x0099);
    }

    /// Linux `pit_calibrate_tsc`: gate on via 0x61, channel 2 mode 0, poll
    /// bit 5 of 0x61 until the terminal count.
    #[test]
    fn channel2_calibration_through_port_61() {
        let mut p = Pit::new();
        assert_eq!(inb(&mut p, 0x61) & (PORT_B_GATE2 | PORT_B_OUT2), 0);
        let v = inb(&mut p, 0x61);
        out(&mut p, 0x61, (v & !PORT_B_SPEAKER) | PORT_B_GATE2);
        out(&mut p, 0x43, 0xB0); // ch2, lo/hi, mode 0
        let latch: u16 = 59659; // 50 ms
        out(&mut p, 0x42, latch.to_le_bytes()[0]);
        out(&mut p, 0x42, latch.to_le_bytes()[1]);
        let mut polls = 0;
        let mut now = 0;
        while inb(&mut p, 0x61) & PORT_B_OUT2 == 0 {
            now += 100_000; // the guest polls every 100 µs
            p.tick_until(now);
            polls += 1;
            assert!(polls < 10_000);
        }
        assert!((49_900_000..=50_100_000).contains(&now), "{now}");
        assert_eq!(p.next_deadline_ns(), None, "channel 2 does not drive IRQ 0");
    }

    /// Linux `quick_pit_calibrate`: mode 0 from 0xFFFF, the MSB drops by one
    /// every 256 ticks whenever it is read.
    #[test]
    fn channel2_msb_counts_down() {
        let mut p = Pit::new();
        out(&mut p, 0x61, PORT_B_GATE2);
        out(&mut p, 0x43, 0xB0);
        out(&mut p, 0x42, 0xFF);
        out(&mut p, 0x42, 0xFF);
        for i in 0..100u64 {
            let t = 1 + 256 * i + 128;
            p.tick_until(at(t));
            inb(&mut p, 0x42);
            assert_eq!(u64::from(inb(&mut p, 0x42)), 0xFF - i, "after {t} ticks");
        }
    }

    #[test]
    fn gate_low_pauses_mode0_and_restarts_mode2() {
        let mut p = Pit::new();
        out(&mut p, 0x61, PORT_B_GATE2);
        out(&mut p, 0x43, 0xB0); // ch2 mode 0
        out(&mut p, 0x42, 100);
        out(&mut p, 0x42, 0);
        p.tick_until(at(41));
        out(&mut p, 0x61, 0); // pause at progress 40
        p.tick_until(at(1000));
        assert_eq!(read16(&mut p, 0x42), 60);
        out(&mut p, 0x61, PORT_B_GATE2);
        p.tick_until(at(1010));
        assert_eq!(read16(&mut p, 0x42), 50);
        // Mode 2: gate low holds the output high; rising edge reloads.
        out(&mut p, 0x43, 0xB4);
        out(&mut p, 0x42, 100);
        out(&mut p, 0x42, 0);
        p.tick_until(at(1011 + 30));
        out(&mut p, 0x61, 0);
        p.tick_until(at(1100));
        assert_eq!(read16(&mut p, 0x42), 70);
        assert!(p.channel2_output());
        out(&mut p, 0x61, PORT_B_GATE2);
        p.tick_until(at(1101));
        assert_eq!(
            read16(&mut p, 0x42),
            100,
            "reloaded on the gate's rising edge"
        );
    }

    #[test]
    fn port_61_bits() {
        let mut p = Pit::new();
        out(&mut p, 0x61, 0xFF);
        let a = inb(&mut p, 0x61);
        let b = inb(&mut p, 0x61);
        assert_eq!(a & 0x0F, 0x0F, "writable bits read back");
        assert_eq!((a ^ b) & PORT_B_REFRESH, PORT_B_REFRESH, "refresh toggles");
        assert_eq!(a & 0xC0, 0, "no parity or I/O check errors");
        assert_eq!(
            p.read(0x61, AccessSize::Word, &mut Effects::new()) & 0xFF00,
            0xFF00
        );
    }

    #[test]
    fn hostile_programming_never_panics() {
        let mut p = Pit::new();
        let mut x = 0x9E37_79B9_u32;
        let mut now = 0u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let port = [0x40, 0x41, 0x42, 0x43, 0x61][(x % 5) as usize];
            if x & 0x100 != 0 {
                out(&mut p, port, (x >> 16) as u8);
            } else {
                inb(&mut p, port);
            }
            now += u64::from(x >> 20);
            p.tick_until(now);
            let _ = p.next_deadline_ns();
        }
        p.tick_until(u64::MAX);
        let _ = p.next_deadline_ns();
    }
}
