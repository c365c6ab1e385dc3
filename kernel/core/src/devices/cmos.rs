//! The PC's CMOS: an MC146818A real-time clock with its battery-backed RAM
//! (Motorola MC146818A data sheet), at index port 0x70 and data port 0x71.
//!
//! Port 0x70 selects a register with bits 6:0; bit 7 masks NMI (kept and
//! reported by [`Cmos::nmi_masked`]; this VM has no NMI source). Registers:
//!
//! | index | register |
//! |-------|----------|
//! | 0x00, 0x02, 0x04 | seconds, minutes, hours (bit 7 = PM in 12-hour mode) |
//! | 0x01, 0x03, 0x05 | alarm seconds, minutes, hours (0xC0-0xFF: any value) |
//! | 0x06-0x09 | day of week (1 = Sunday), day of month, month, year (00-99) |
//! | 0x0A | status A: bit 7 UIP (read-only), bits 6:4 divider, bits 3:0 rate |
//! | 0x0B | status B: SET, PIE, AIE, UIE, SQWE, DM (1 = binary), 24/12, DSE |
//! | 0x0C | status C (read-only, read clears): IRQF, PF, AF, UF |
//! | 0x0D | status D (read-only): VRT = 1, the battery is good |
//! | 0x0E-0x7F | NVRAM; 0x32 is the century (as QEMU and ACPI's FADT use it) |
//!
//! Time and date registers hold exactly what was written, in BCD or binary
//! and 12- or 24-hour format as status B says at the time of writing, and are
//! decoded with the current format when the clock advances (changing DM or
//! 24/12 does not convert the registers, as on the chip). Each second the
//! registers advance by calendar arithmetic (leap years included, the
//! century register carries), the day of week steps with the date, and the
//! update sets UF and, when the alarm matches, AF. The periodic rate (status
//! A bits 3:0) sets PF. IRQF, and ISA IRQ 8, are asserted while a flag is
//! set whose enable bit in status B is set; reading status C clears the
//! flags and lowers the line. With status B's SET bit or the divider held
//! in reset (status A bits 6:4 = 11x) the clock stops; a running divider
//! restarted from reset makes its first update half a second later.
//! UIP reads as 1 during the last 244 µs before each update.
//!
//! Time comes from the caller: the wall clock (seconds since the Unix epoch,
//! UTC) at construction and a monotonic `now_ns` through [`Cmos::advance`]
//! (see [`super::pc::advance`]); [`Cmos::next_deadline_ns`] is when the next
//! enabled interrupt comes due.

use core::any::Any;

use super::{widen_byte, DeviceEffect, Effects, PortDevice, PortRange};
use crate::exit::AccessSize;

/// Index port (data port is `CMOS_BASE + 1`).
pub const CMOS_BASE: u16 = 0x70;
/// ISA line of the RTC interrupt.
pub const RTC_IRQ: u8 = 8;

/// Register indices.
pub mod reg {
    /// Seconds.
    pub const SECONDS: u8 = 0x00;
    /// Seconds alarm.
    pub const SECONDS_ALARM: u8 = 0x01;
    /// Minutes.
    pub const MINUTES: u8 = 0x02;
    /// Minutes alarm.
    pub const MINUTES_ALARM: u8 = 0x03;
    /// Hours.
    pub const HOURS: u8 = 0x04;
    /// Hours alarm.
    pub const HOURS_ALARM: u8 = 0x05;
    /// Day of week, 1 = Sunday.
    pub const DAY_OF_WEEK: u8 = 0x06;
    /// Day of month.
    pub const DAY_OF_MONTH: u8 = 0x07;
    /// Month.
    pub const MONTH: u8 = 0x08;
    /// Year within the century.
    pub const YEAR: u8 = 0x09;
    /// Status A.
    pub const A: u8 = 0x0A;
    /// Status B.
    pub const B: u8 = 0x0B;
    /// Status C.
    pub const C: u8 = 0x0C;
    /// Status D.
    pub const D: u8 = 0x0D;
    /// Century (NVRAM).
    pub const CENTURY: u8 = 0x32;
}

/// Status A: update in progress.
pub const A_UIP: u8 = 1 << 7;
/// Status B: SET (updates inhibited).
pub const B_SET: u8 = 1 << 7;
/// Status B: periodic interrupt enable.
pub const B_PIE: u8 = 1 << 6;
/// Status B: alarm interrupt enable.
pub const B_AIE: u8 = 1 << 5;
/// Status B: update-ended interrupt enable.
pub const B_UIE: u8 = 1 << 4;
/// Status B: data mode binary (else BCD).
pub const B_DM_BINARY: u8 = 1 << 2;
/// Status B: 24-hour mode (else 12-hour).
pub const B_24H: u8 = 1 << 1;
/// Status C: interrupt request flag.
pub const C_IRQF: u8 = 1 << 7;
/// Status C: periodic interrupt flag.
pub const C_PF: u8 = 1 << 6;
/// Status C: alarm flag.
pub const C_AF: u8 = 1 << 5;
/// Status C: update-ended flag.
pub const C_UF: u8 = 1 << 4;
/// Status D: valid RAM and time (battery good).
pub const D_VRT: u8 = 1 << 7;

const NS_PER_SEC: u64 = 1_000_000_000;
/// UIP is set this long before each update.
const UIP_WINDOW_NS: u64 = 244_000;
/// Time base of the divider chain and the periodic interrupt.
const RTC_BASE_HZ: u64 = 32_768;

/// A calendar date and time (UTC), binary fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    /// Full year, e.g. 2024.
    pub year: i64,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
    /// 1 = Sunday .. 7 = Saturday.
    pub weekday: u8,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`); months outside 1..=12 carry into the year.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = year + (month - 1).div_euclid(12);
    let month = (month - 1).rem_euclid(12) + 1;
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl DateTime {
    /// The UTC date and time of `secs` seconds since the Unix epoch.
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        // H. Hinnant's `civil_from_days`.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        DateTime {
            year,
            month: month as u8,
            day: day as u8,
            hour: (sod / 3600) as u8,
            minute: (sod / 60 % 60) as u8,
            second: (sod % 60) as u8,
            // 1970-01-01 was a Thursday (5).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }

    /// Seconds since the Unix epoch; out-of-range fields carry (second 60 is
    /// the next minute, day 0 the last day of the previous month).
    pub fn to_unix(&self) -> i64 {
        let days = days_from_civil(self.year, i64::from(self.month), i64::from(self.day));
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10 % 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0xF)
}

/// The RTC and NVRAM.
#[derive(Clone, Debug)]
pub struct Cmos {
    ports: [PortRange; 1],
    index: u8,
    nmi_masked: bool,
    regs: [u8; 128],
    now_ns: u64,
    /// Start of the current second of the divider chain.
    second_start_ns: u64,
    irq_asserted: bool,
}

impl Cmos {
    /// An RTC showing `wall_clock_secs` (Unix time, UTC) at monotonic time
    /// `now_ns`, 24-hour BCD mode, 32.768 kHz divider, 1024 Hz rate, as a PC
    /// BIOS leaves it.
    pub fn new(wall_clock_secs: u64, now_ns: u64) -> Self {
        let mut c = Cmos {
            ports: [PortRange::new(CMOS_BASE, 2)],
            index: 0,
            nmi_masked: false,
            regs: [0; 128],
            now_ns,
            second_start_ns: now_ns,
            irq_asserted: false,
        };
        c.regs[usize::from(reg::A)] = 0x26;
        c.regs[usize::from(reg::B)] = B_24H;
        c.regs[usize::from(reg::D)] = D_VRT;
        let secs = i64::try_from(wall_clock_secs).unwrap_or(i64::MAX / 2);
        c.store_time(&DateTime::from_unix(secs));
        c
    }

    /// Fills the BIOS memory-size bytes (base memory 640 KiB, extended memory
    /// in KiB at 0x17/0x18 and 0x30/0x31, memory above 16 MiB in 64 KiB units
    /// at 0x34/0x35, above 4 GiB at 0x5B-0x5D) and the checksum at
    /// 0x2E/0x2F, as firmware would for `memory_bytes` of RAM.
    pub fn set_memory_size(&mut self, memory_bytes: u64) {
        let put16 = |regs: &mut [u8; 128], at: usize, v: u64| {
            let [lo, hi, ..] = v.min(0xFFFF).to_le_bytes();
            regs[at] = lo;
            regs[at + 1] = hi;
        };
        put16(&mut self.regs, 0x15, 640);
        let ext_kib = memory_bytes.saturating_sub(1 << 20) >> 10;
        put16(&mut self.regs, 0x17, ext_kib);
        put16(&mut self.regs, 0x30, ext_kib);
        let below_4g = memory_bytes.min(1 << 32);
        put16(
            &mut self.regs,
            0x34,
            below_4g.saturating_sub(16 << 20) >> 16,
        );
        let above_4g = memory_bytes.saturating_sub(1 << 32) >> 16;
        let [a, b, c, ..] = above_4g.min(0xFF_FFFF).to_le_bytes();
        self.regs[0x5B] = a;
        self.regs[0x5C] = b;
        self.regs[0x5D] = c;
        let sum: u16 = self.regs[0x10..0x2E].iter().map(|&b| u16::from(b)).sum();
        let [lo, hi] = sum.to_le_bytes();
        self.regs[0x2E] = hi;
        self.regs[0x2F] = lo;
    }

    /// Whether the guest set the NMI mask bit (port 0x70 bit 7).
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// Whether IRQ 8 is asserted.
    pub fn irq_asserted(&self) -> bool {
        self.irq_asserted
    }

    /// A register as the guest would read it, without side effects.
    pub fn peek(&self, index: u8) -> u8 {
        match index & 0x7F {
            reg::A => self.status_a(),
            i => self.regs[usize::from(i)],
        }
    }

    /// The date and time the registers show (decoded with the current
    /// format).
    pub fn now(&self) -> DateTime {
        let mut t = self.load_time();
        t.weekday = self.regs[usize::from(reg::DAY_OF_WEEK)];
        t
    }

    fn b(&self) -> u8 {
        self.regs[usize::from(reg::B)]
    }

    fn binary(&self) -> bool {
        self.b() & B_DM_BINARY != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, h: u8) -> u8 {
        if self.b() & B_24H != 0 {
            return self.encode(h);
        }
        let pm = if h >= 12 { 0x80 } else { 0 };
        let h12 = match h % 12 {
            0 => 12,
            x => x,
        };
        pm | self.encode(h12)
    }

    fn decode_hour(&self, v: u8) -> u8 {
        if self.b() & B_24H != 0 {
            return self.decode(v);
        }
        let h = self.decode(v & 0x7F) % 12;
        if v & 0x80 != 0 {
            h + 12
        } else {
            h
        }
    }

    fn load_time(&self) -> DateTime {
        let r = |i: u8| self.regs[usize::from(i)];
        let year =
            i64::from(self.decode(r(reg::CENTURY))) * 100 + i64::from(self.decode(r(reg::YEAR)));
        DateTime {
            year,
            month: self.decode(r(reg::MONTH)),
            day: self.decode(r(reg::DAY_OF_MONTH)),
            hour: self.decode_hour(r(reg::HOURS)),
            minute: self.decode(r(reg::MINUTES)),
            second: self.decode(r(reg::SECONDS)),
            weekday: r(reg::DAY_OF_WEEK),
        }
    }

    fn store_time(&mut self, t: &DateTime) {
        let year = t.year.rem_euclid(10_000);
        let fields = [
            (reg::SECONDS, self.encode(t.second)),
            (reg::MINUTES, self.encode(t.minute)),
            (reg::HOURS, self.encode_hour(t.hour)),
            (reg::DAY_OF_WEEK, t.weekday),
            (reg::DAY_OF_MONTH, self.encode(t.day)),
            (reg::MONTH, self.encode(t.month)),
            (reg::YEAR, self.encode((year % 100) as u8)),
            (reg::CENTURY, self.encode((year / 100) as u8)),
        ];
        for (i, v) in fields {
            self.regs[usize::from(i)] = v;
        }
    }

    /// The divider chain runs and updates are not inhibited.
    fn running(&self) -> bool {
        self.regs[usize::from(reg::A)] & 0x70 <= 0x20 && self.b() & B_SET == 0
    }

    fn status_a(&self) -> u8 {
        let next_update = self.second_start_ns.saturating_add(NS_PER_SEC);
        let uip = self.running() && self.now_ns.saturating_add(UIP_WINDOW_NS) >= next_update;
        (self.regs[usize::from(reg::A)] & !A_UIP) | if uip { A_UIP } else { 0 }
    }

    /// Periodic interrupt period in 32.768 kHz ticks (status A bits 3:0).
    fn periodic_ticks(&self) -> Option<u64> {
        match self.regs[usize::from(reg::A)] & 0x0F {
            0 => None,
            1 => Some(128),
            2 => Some(256),
            rs => Some(1 << (rs - 1)),
        }
    }

    fn alarm_matches(&self, sec_of_day: u64) -> bool {
        let h = (sec_of_day / 3600) as u8;
        let m = (sec_of_day / 60 % 60) as u8;
        let s = (sec_of_day % 60) as u8;
        let field = |alarm: u8, current: u8| {
            let a = self.regs[usize::from(alarm)];
            a & 0xC0 == 0xC0 || a == current
        };
        field(reg::SECONDS_ALARM, self.encode(s))
            && field(reg::MINUTES_ALARM, self.encode(m))
            && field(reg::HOURS_ALARM, self.encode_hour(h))
    }

    /// Advances the clock to `now_ns` (monotonic; earlier values are
    /// ignored): runs the updates and the periodic flag, and raises IRQ 8
    /// when an enabled flag is set.
    pub fn advance(&mut self, now_ns: u64, fx: &mut Effects) {
        if now_ns > self.now_ns {
            let before = self.now_ns;
            self.now_ns = now_ns;
            if self.running() {
                self.run(before, now_ns);
            } else {
                // Stopped: the second restarts when the clock runs again.
                self.second_start_ns = now_ns;
            }
        }
        self.update_irq(fx);
    }

    fn run(&mut self, before: u64, now: u64) {
        if let Some(period) = self.periodic_ticks() {
            let tick = |ns: u64| {
                (u128::from(ns) * u128::from(RTC_BASE_HZ) / u128::from(NS_PER_SEC)) as u64
            };
            if tick(now) / period > tick(before) / period {
                self.regs[usize::from(reg::C)] |= C_PF;
            }
        }
        let elapsed = now.saturating_sub(self.second_start_ns) / NS_PER_SEC;
        if elapsed == 0 {
            return;
        }
        self.second_start_ns += elapsed * NS_PER_SEC;
        let old = self.load_time();
        let old_secs = old.to_unix();
        let new_secs = old_secs.saturating_add(i64::try_from(elapsed).unwrap_or(i64::MAX));
        // The alarm is checked at every update; a day covers every pattern.
        let first = new_secs - i64::try_from(elapsed.min(86_400)).unwrap_or(0) + 1;
        if (first..=new_secs).any(|t| self.alarm_matches(t.rem_euclid(86_400) as u64)) {
            self.regs[usize::from(reg::C)] |= C_AF;
        }
        let mut new = DateTime::from_unix(new_secs);
        let days = new_secs.div_euclid(86_400) - old_secs.div_euclid(86_400);
        let wd = i64::from(old.weekday.clamp(1, 7)) - 1 + days;
        new.weekday = if old.weekday == 0 || old.weekday > 7 {
            new.weekday
        } else {
            (wd.rem_euclid(7) + 1) as u8
        };
        self.store_time(&new);
        self.regs[usize::from(reg::C)] |= C_UF;
    }

    fn update_irq(&mut self, fx: &mut Effects) {
        let c = self.regs[usize::from(reg::C)] & (C_PF | C_AF | C_UF);
        let enabled = self.b() & (B_PIE | B_AIE | B_UIE);
        // Flag bits 6:4 of C line up with enable bits 6:4 of B.
        let irqf = c & enabled != 0;
        if irqf {
            self.regs[usize::from(reg::C)] |= C_IRQF;
        }
        if irqf != self.irq_asserted {
            self.irq_asserted = irqf;
            fx.push(if irqf {
                DeviceEffect::RaiseIrq(RTC_IRQ)
            } else {
                DeviceEffect::LowerIrq(RTC_IRQ)
            });
        }
    }

    /// When the next enabled RTC interrupt comes due (ns), if one is coming
    /// and IRQ 8 is not already asserted.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.irq_asserted || !self.running() {
            return None;
        }
        let b = self.b();
        let mut next: Option<u64> = None;
        if b & B_PIE != 0 {
            if let Some(period) = self.periodic_ticks() {
                let tick =
                    u128::from(self.now_ns) * u128::from(RTC_BASE_HZ) / u128::from(NS_PER_SEC);
                let next_tick = (tick / u128::from(period) + 1) * u128::from(period);
                let ns = (next_tick * u128::from(NS_PER_SEC)).div_ceil(u128::from(RTC_BASE_HZ));
                next = Some(u64::try_from(ns).unwrap_or(u64::MAX));
            }
        }
        if b & (B_UIE | B_AIE) != 0 {
            let update = self.second_start_ns.saturating_add(NS_PER_SEC);
            next = Some(next.map_or(update, |n| n.min(update)));
        }
        next
    }

    fn read_data(&mut self, fx: &mut Effects) -> u8 {
        match self.index {
            reg::A => self.status_a(),
            reg::C => {
                let c = self.regs[usize::from(reg::C)];
                self.regs[usize::from(reg::C)] = 0;
                self.update_irq(fx);
                c
            }
            i => self.regs[usize::from(i)],
        }
    }

    fn write_data(&mut self, v: u8, fx: &mut Effects) {
        match self.index {
            reg::A => {
                let was_reset = self.regs[usize::from(reg::A)] & 0x60 == 0x60;
                self.regs[usize::from(reg::A)] = v & !A_UIP;
                if was_reset && v & 0x60 != 0x60 {
                    // First update half a second after leaving reset.
                    self.second_start_ns = self.now_ns.saturating_sub(NS_PER_SEC / 2);
                }
            }
            reg::B => {
                let was_set = self.b() & B_SET != 0;
                // Setting SET clears UIE (data sheet, register B bit 7).
                let v = if v & B_SET != 0 { v & !B_UIE } else { v };
                self.regs[usize::from(reg::B)] = v;
                if was_set && v & B_SET == 0 {
                    self.second_start_ns = self.now_ns;
                }
                self.update_irq(fx);
            }
            reg::C | reg::D => {} // read-only
            i => self.regs[usize::from(i)] = v,
        }
    }
}

impl PortDevice for Cmos {
    fn name(&self) -> &'static str {
        "cmos-rtc"
    }

    fn counts_time(&self) -> bool {
        true
    }

    fn next_deadline_ns(&self) -> Option<u64> {
        Cmos::next_deadline_ns(self)
    }

    fn advance(&mut self, now_ns: u64, fx: &mut Effects) {
        Cmos::advance(self, now_ns, fx);
    }

    fn ports(&self) -> &[PortRange] {
        &self.ports
    }

    fn read(&mut self, port: u16, size: AccessSize, fx: &mut Effects) -> u32 {
        let v = if port == CMOS_BASE {
            self.index | if self.nmi_masked { 0x80 } else { 0 }
        } else {
            self.read_data(fx)
        };
        widen_byte(size, v)
    }

    fn write(&mut self, port: u16, _size: AccessSize, value: u32, fx: &mut Effects) {
        let v = value.to_le_bytes()[0];
        if port == CMOS_BASE {
            self.index = v & 0x7F;
            self.nmi_masked = v & 0x80 != 0;
        } else {
            self.write_data(v, fx);
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
    use alloc::vec::Vec;

    /// 2024-02-29 12:34:56 UTC, a Thursday.
    const LEAP_DAY: u64 = 1_709_210_096;

    fn rd(c: &mut Cmos, index: u8) -> u8 {
        let mut fx = Effects::new();
        c.write(0x70, AccessSize::Byte, u32::from(index), &mut fx);
        c.read(0x71, AccessSize::Byte, &mut fx) as u8
    }

    fn wr(c: &mut Cmos, index: u8, v: u8) -> Vec<DeviceEffect> {
        let mut fx = Effects::new();
        c.write(0x70, AccessSize::Byte, u32::from(index), &mut fx);
        c.write(0x71, AccessSize::Byte, u32::from(v), &mut fx);
        fx.iter().collect()
    }

    fn advance(c: &mut Cmos, now: u64) -> Vec<DeviceEffect> {
        let mut fx = Effects::new();
        c.advance(now, &mut fx);
        fx.iter().collect()
    }

    fn time_regs(c: &mut Cmos) -> [u8; 8] {
        [
            rd(c, reg::SECONDS),
            rd(c, reg::MINUTES),
            rd(c, reg::HOURS),
            rd(c, reg::DAY_OF_WEEK),
            rd(c, reg::DAY_OF_MONTH),
            rd(c, reg::MONTH),
            rd(c, reg::YEAR),
            rd(c, reg::CENTURY),
        ]
    }

    #[test]
    fn known_date_conversion() {
        let t = DateTime::from_unix(LEAP_DAY as i64);
        assert_eq!(
            t,
            DateTime {
                year: 2024,
                month: 2,
                day: 29,
                hour: 12,
                minute: 34,
                second: 56,
                weekday: 5
            }
        );
        assert_eq!(t.to_unix(), LEAP_DAY as i64);
        assert_eq!(
            DateTime::from_unix(0).weekday,
            5,
            "1970-01-01 was a Thursday"
        );
        assert_eq!(DateTime::from_unix(4_107_542_400).to_unix(), 4_107_542_400);
        let d = DateTime::from_unix(4_107_542_400); // 2100-03-01 (2100 is not leap)
        assert_eq!((d.year, d.month, d.day), (2100, 3, 1));
        // Day 0 carries back to the previous month's last day.
        let carry = DateTime {
            day: 0,
            month: 3,
            ..d
        };
        assert_eq!(DateTime::from_unix(carry.to_unix()).day, 28);
        for s in (-10_000_000_000i64..20_000_000_000).step_by(7_777_777) {
            assert_eq!(DateTime::from_unix(s).to_unix(), s);
        }
    }

    #[test]
    fn bcd_24h_registers_from_wall_clock() {
        let mut c = Cmos::new(LEAP_DAY, 0);
        assert_eq!(
            time_regs(&mut c),
            [0x56, 0x34, 0x12, 5, 0x29, 0x02, 0x24, 0x20]
        );
        assert_eq!(rd(&mut c, reg::B), B_24H);
        assert_eq!(rd(&mut c, reg::D), D_VRT);
        assert_eq!(rd(&mut c, reg::A), 0x26);
    }

    #[test]
    fn binary_and_12h_formats() {
        let mut c = Cmos::new(LEAP_DAY + 3600 * 11, 0); // 23:34:56
        wr(&mut c, reg::B, B_SET | B_DM_BINARY);
        // Linux-style set: write every field while SET is on.
        for (i, v) in [
            (reg::SECONDS, 56),
            (reg::MINUTES, 34),
            (reg::HOURS, 0x80 | 11), // 11 PM
            (reg::DAY_OF_MONTH, 29),
            (reg::MONTH, 2),
            (reg::YEAR, 24),
            (reg::CENTURY, 20),
        ] {
            wr(&mut c, i, v);
        }
        wr(&mut c, reg::B, B_DM_BINARY);
        assert_eq!(c.now().hour, 23);
        // Midnight rolls over to 12 AM of March 1st.
        advance(&mut c, 25 * 60 * NS_PER_SEC + 4 * NS_PER_SEC);
        assert_eq!(rd(&mut c, reg::HOURS), 12, "12 AM");
        assert_eq!(rd(&mut c, reg::DAY_OF_MONTH), 1);
        assert_eq!(rd(&mut c, reg::MONTH), 3);
        assert_eq!(rd(&mut c, reg::DAY_OF_WEEK), 6, "Friday");
        let t = c.now();
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2024, 3, 1, 0, 0, 0)
        );
    }

    #[test]
    fn clock_advances_across_century() {
        let mut c = Cmos::new(946_684_799, 5); // 1999-12-31 23:59:59, Friday
        assert_eq!(
            time_regs(&mut c),
            [0x59, 0x59, 0x23, 6, 0x31, 0x12, 0x99, 0x19]
        );
        advance(&mut c, 5 + NS_PER_SEC - 1);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x59);
        advance(&mut c, 5 + NS_PER_SEC);
        assert_eq!(
            time_regs(&mut c),
            [0x00, 0x00, 0x00, 7, 0x01, 0x01, 0x00, 0x20]
        );
        // A long gap advances by whole seconds, the rest stays in the second.
        advance(
            &mut c,
            5 + NS_PER_SEC + 86_400 * 3 * NS_PER_SEC + NS_PER_SEC / 2,
        );
        assert_eq!(rd(&mut c, reg::DAY_OF_MONTH), 0x04);
        assert_eq!(rd(&mut c, reg::DAY_OF_WEEK), 3, "Tuesday");
    }

    #[test]
    fn uip_before_update_and_set_stops_clock() {
        let mut c = Cmos::new(LEAP_DAY, 0);
        advance(&mut c, NS_PER_SEC - 300_000);
        assert_eq!(rd(&mut c, reg::A) & A_UIP, 0);
        advance(&mut c, NS_PER_SEC - 200_000);
        assert_eq!(rd(&mut c, reg::A) & A_UIP, A_UIP);
        advance(&mut c, NS_PER_SEC);
        assert_eq!(rd(&mut c, reg::A) & A_UIP, 0);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x57);
        wr(&mut c, reg::B, B_24H | B_SET);
        advance(&mut c, 10 * NS_PER_SEC);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x57, "SET inhibits updates");
        assert_eq!(rd(&mut c, reg::A) & A_UIP, 0);
        wr(&mut c, reg::SECONDS, 0x00);
        wr(&mut c, reg::B, B_24H);
        advance(&mut c, 11 * NS_PER_SEC);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x01);
        // Divider held in reset, then released: first update after 500 ms.
        wr(&mut c, reg::A, 0x66);
        advance(&mut c, 20 * NS_PER_SEC);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x01);
        wr(&mut c, reg::A, 0x26);
        advance(&mut c, 20 * NS_PER_SEC + NS_PER_SEC / 2);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x02);
    }

    #[test]
    fn update_and_alarm_interrupts_on_irq8() {
        let mut c = Cmos::new(LEAP_DAY, 0);
        wr(&mut c, reg::A, 0x20); // no periodic flag
        assert_eq!(c.next_deadline_ns(), None, "no interrupt enabled");
        assert!(wr(&mut c, reg::B, B_24H | B_UIE).is_empty());
        assert_eq!(c.next_deadline_ns(), Some(NS_PER_SEC));
        assert_eq!(advance(&mut c, NS_PER_SEC), [DeviceEffect::RaiseIrq(8)]);
        assert_eq!(c.next_deadline_ns(), None, "line already asserted");
        let mut fx = Effects::new();
        c.write(0x70, AccessSize::Byte, u32::from(reg::C), &mut fx);
        assert_eq!(c.read(0x71, AccessSize::Byte, &mut fx) as u8, C_IRQF | C_UF);
        assert_eq!(fx.iter().collect::<Vec<_>>(), [DeviceEffect::LowerIrq(8)]);
        assert_eq!(rd(&mut c, reg::C), 0, "read clears");
        // Alarm at 12:35:00 with "don't care" hours.
        wr(&mut c, reg::B, B_24H | B_AIE);
        wr(&mut c, reg::SECONDS_ALARM, 0x00);
        wr(&mut c, reg::MINUTES_ALARM, 0x35);
        wr(&mut c, reg::HOURS_ALARM, 0xFF);
        // Now 12:34:57; the alarm is 3 s later.
        assert!(advance(&mut c, 3 * NS_PER_SEC).is_empty());
        assert_eq!(rd(&mut c, reg::C), C_UF, "UF without UIE: no IRQF");
        assert_eq!(advance(&mut c, 4 * NS_PER_SEC), [DeviceEffect::RaiseIrq(8)]);
        assert_eq!(rd(&mut c, reg::C), C_IRQF | C_AF | C_UF);
        // An alarm passed over in a long gap is still flagged.
        assert_eq!(
            advance(&mut c, 4000 * NS_PER_SEC),
            [DeviceEffect::RaiseIrq(8)]
        );
        assert_eq!(rd(&mut c, reg::C) & C_AF, C_AF);
    }

    #[test]
    fn periodic_interrupt_rate() {
        let mut c = Cmos::new(LEAP_DAY, 0);
        wr(&mut c, reg::B, B_24H | B_PIE);
        // Rate 6: 1024 Hz, period 32 ticks of 32768 Hz = 976562.5 ns.
        assert_eq!(c.next_deadline_ns(), Some(976_563));
        assert!(advance(&mut c, 976_562).is_empty());
        assert_eq!(advance(&mut c, 976_563), [DeviceEffect::RaiseIrq(8)]);
        assert_eq!(rd(&mut c, reg::C), C_IRQF | C_PF);
        wr(&mut c, reg::A, 0x2F); // 2 Hz
        assert_eq!(c.next_deadline_ns(), Some(NS_PER_SEC / 2));
        wr(&mut c, reg::A, 0x20); // off
        assert_eq!(c.next_deadline_ns(), None);
        advance(&mut c, 10 * NS_PER_SEC);
        assert_eq!(rd(&mut c, reg::C) & C_PF, 0);
    }

    #[test]
    fn nvram_index_nmi_and_readonly_registers() {
        let mut c = Cmos::new(0, 0);
        for i in 0x0E..0x80u8 {
            if i == reg::CENTURY {
                continue;
            }
            wr(&mut c, i, i ^ 0x5A);
        }
        for i in 0x0E..0x80u8 {
            if i != reg::CENTURY {
                assert_eq!(rd(&mut c, i), i ^ 0x5A, "NVRAM {i:#x}");
            }
        }
        let mut fx = Effects::new();
        c.write(0x70, AccessSize::Byte, 0x80 | 0x10, &mut fx);
        assert!(c.nmi_masked());
        assert_eq!(c.read(0x70, AccessSize::Byte, &mut fx), 0x90);
        c.write(0x70, AccessSize::Byte, 0x0D, &mut fx);
        assert!(!c.nmi_masked());
        c.write(0x71, AccessSize::Byte, 0, &mut fx);
        assert_eq!(c.read(0x71, AccessSize::Byte, &mut fx), u32::from(D_VRT));
        wr(&mut c, reg::C, 0xFF);
        assert_eq!(rd(&mut c, reg::C), 0);
        wr(&mut c, reg::A, 0xA6);
        assert_eq!(rd(&mut c, reg::A) & 0x7F, 0x26, "UIP is read-only");
    }

    #[test]
    fn memory_size_bytes_and_checksum() {
        let mut c = Cmos::new(0, 0);
        c.set_memory_size(32 << 20);
        assert_eq!(
            u16::from_le_bytes([rd(&mut c, 0x15), rd(&mut c, 0x16)]),
            640
        );
        assert_eq!(
            u16::from_le_bytes([rd(&mut c, 0x17), rd(&mut c, 0x18)]),
            31 * 1024
        );
        assert_eq!(
            u16::from_le_bytes([rd(&mut c, 0x34), rd(&mut c, 0x35)]),
            16 * 16
        );
        let sum: u16 = (0x10..0x2E).map(|i| u16::from(rd(&mut c, i))).sum();
        assert_eq!(
            u16::from_be_bytes([rd(&mut c, 0x2E), rd(&mut c, 0x2F)]),
            sum
        );
        c.set_memory_size(6 << 30);
        assert_eq!(
            u16::from_le_bytes([rd(&mut c, 0x17), rd(&mut c, 0x18)]),
            0xFFFF
        );
        assert_eq!(rd(&mut c, 0x5C), ((2u64 << 30) >> 16 >> 8) as u8);
    }

    #[test]
    fn hostile_registers_never_panic() {
        let mut c = Cmos::new(u64::MAX, 0);
        let mut x = 0xC0FF_EE11_u32;
        let mut now = 0u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let mut fx = Effects::new();
            let port = 0x70 + (x & 1) as u16;
            if x & 2 != 0 {
                c.write(port, AccessSize::Byte, x >> 8, &mut fx);
            } else {
                c.read(port, AccessSize::Byte, &mut fx);
            }
            now = now.saturating_add(u64::from(x >> 4) * 1000);
            c.advance(now, &mut fx);
            let _ = c.next_deadline_ns();
            let _ = c.now();
        }
        let mut fx = Effects::new();
        c.advance(u64::MAX, &mut fx);
    }
}
