//! COM1 serial console (16550 UART at I/O port 0x3F8).
//!
//! The hypervisor's log and test results go out here: emulators write it to a file or
//! stdio, and test harnesses read it. Every byte waits for the transmitter to be
//! empty (`uart_16550`'s `send` does): Bochs drops bytes written faster than its
//! emulated FIFO drains. Bytes are sent as given; `\n` is not expanded to `\r\n`, so
//! logs captured to a file stay plain.
//!
//! The port sits behind a `spin::Mutex`; on the bare machine the lock is taken with
//! interrupts disabled, so an interrupt handler that logs cannot deadlock against the
//! code it interrupted.

use core::fmt;
use spin::Mutex;
use uart_16550::SerialPort;

/// I/O base of COM1.
pub const COM1_BASE: u16 = 0x3F8;

/// Divisor latch value for 115200 baud (1.8432 MHz / 16 / 115200).
const BAUD_115200_DIVISOR: u16 = 1;
/// Line status register offset, and its transmitter-empty bit (THR and
/// shift register both empty).
const LSR: u16 = 5;
const LSR_TEMT: u8 = 1 << 6;
/// Line control register offset, and its divisor-latch-access bit.
const LCR: u16 = 3;
const LCR_DLAB: u8 = 0x80;
/// 8 data bits, no parity, one stop bit.
const LCR_8N1: u8 = 0x03;

/// Programs the baud-rate divisor (16550 datasheet, DLL/DLM behind DLAB).
///
/// # Safety
/// `base` is a 16550's I/O base that nothing else is using.
unsafe fn set_divisor(base: u16, divisor: u16) {
    use x86_64::instructions::port::Port;
    let mut lcr: Port<u8> = Port::new(base + LCR);
    let mut dll: Port<u8> = Port::new(base);
    let mut dlm: Port<u8> = Port::new(base + 1);
    // SAFETY: the caller owns the UART's ports.
    unsafe {
        lcr.write(LCR_DLAB);
        dll.write(divisor as u8);
        dlm.write((divisor >> 8) as u8);
        lcr.write(LCR_8N1);
    }
}

/// A serial port shared by all CPUs. Writes before [`Serial::init`] are dropped.
pub struct Serial {
    base: u16,
    port: Mutex<Option<SerialPort>>,
}

/// COM1, the console.
pub static COM1: Serial = Serial::new(COM1_BASE);

/// I/O base of COM2.
pub const COM2_BASE: u16 = 0x2F8;

/// COM2, the control port (issue 11): requests in, responses and events out.
pub static COM2: Serial = Serial::new(COM2_BASE);

/// Scratch register offset (16450 and later): holds what was written.
const SCR: u16 = 7;
/// Line status: a received byte waits (DR) / the transmitter takes a byte (THRE).
const LSR_DR: u8 = 1 << 0;
const LSR_THRE: u8 = 1 << 5;

impl Serial {
    const fn new(base: u16) -> Self {
        Self {
            base,
            port: Mutex::new(None),
        }
    }

    /// Programs the UART (115200 8N1, FIFOs on, interrupts off). Calling it again
    /// re-initialises the port.
    pub fn init(&self) {
        without_interrupts(|| {
            // SAFETY: `base` is the standard COM1 base; this driver is the only user of
            // those ports (the `Serial` statics are the only constructors).
            let mut port = unsafe { SerialPort::new(self.base) };
            port.init();
            // uart_16550 programs 38400 baud; 115200 is what terminals expect
            // and a third of the time per byte (emulators time the line too).
            // SAFETY: as above; DLAB on, divisor 1, then 8N1 with DLAB off.
            unsafe { set_divisor(self.base, BAUD_115200_DIVISOR) };
            *self.port.lock() = Some(port);
        });
    }

    /// Waits until every byte written has left the UART (LSR bit 6, TEMT),
    /// or gives up after a bounded time. Needed before powering off: the
    /// last bytes otherwise die in the FIFO.
    pub fn flush(&self) {
        use x86_64::instructions::port::PortReadOnly;
        let mut lsr: PortReadOnly<u8> = PortReadOnly::new(self.base + LSR);
        for _ in 0..10_000_000 {
            // SAFETY: reading the line status register has no side effects
            // on a 16550 (it only reports state).
            if unsafe { lsr.read() } & LSR_TEMT != 0 {
                return;
            }
            core::hint::spin_loop();
        }
    }

    /// Writes `s`, waiting for the transmitter before each byte.
    pub fn write_str(&self, s: &str) {
        without_interrupts(|| {
            if let Some(port) = self.port.lock().as_mut() {
                s.bytes().for_each(|b| port.send(b));
            }
        });
    }

    /// Writes raw bytes (any values: a guest's terminal output while the
    /// console is attached to it), waiting for the transmitter before each.
    pub fn write_bytes(&self, bytes: &[u8]) {
        without_interrupts(|| {
            if let Some(port) = self.port.lock().as_mut() {
                bytes.iter().for_each(|&b| port.send_raw(b));
            }
        });
    }

    /// Writes formatted text, e.g. `COM1.write_fmt(format_args!("x = {x}"))`.
    pub fn write_fmt(&self, args: fmt::Arguments<'_>) {
        without_interrupts(|| {
            if let Some(port) = self.port.lock().as_mut() {
                // `SerialPort`'s `fmt::Write` never fails.
                let _ = fmt::Write::write_fmt(port, args);
            }
        });
    }

    /// Writes `s` unless another context holds the port (for panic and exception
    /// reports, which must not deadlock on a lock their own CPU holds). Returns
    /// whether it wrote.
    pub fn try_write_str(&self, s: &str) -> bool {
        without_interrupts(|| match self.port.try_lock() {
            Some(mut guard) => match guard.as_mut() {
                Some(port) => {
                    s.bytes().for_each(|b| port.send(b));
                    true
                }
                None => false,
            },
            None => false,
        })
    }

    /// Whether a UART answers at this port: its scratch register keeps two
    /// patterns (a missing port reads back all ones). Call before `init`.
    pub fn present(&self) -> bool {
        use x86_64::instructions::port::Port;
        let mut scr: Port<u8> = Port::new(self.base + SCR);
        without_interrupts(|| {
            [0x5A_u8, 0xA5].iter().all(|&v| {
                // SAFETY: the scratch register of a 16550 has no effect on the
                // line; on an absent port the write goes nowhere.
                unsafe {
                    scr.write(v);
                    scr.read() == v
                }
            })
        })
    }

    /// Sends one byte if the transmitter takes it now (LSR.THRE); never
    /// waits. Returns whether it was sent.
    pub fn try_send_byte(&self, byte: u8) -> bool {
        use x86_64::instructions::port::{Port, PortReadOnly};
        without_interrupts(|| {
            let guard = self.port.lock();
            if guard.is_none() {
                return false;
            }
            let mut lsr: PortReadOnly<u8> = PortReadOnly::new(self.base + LSR);
            let mut thr: Port<u8> = Port::new(self.base);
            // SAFETY: the port lock is held, so nobody else talks to this
            // UART meanwhile; LSR reads have no side effect, and THR is
            // written only when the UART says it takes a byte.
            unsafe {
                if lsr.read() & LSR_THRE == 0 {
                    return false;
                }
                thr.write(byte);
            }
            true
        })
    }

    /// A received byte, if one is waiting, read without the `uart_16550`
    /// wrapper's line-status bookkeeping (never blocks).
    pub fn try_read_raw(&self) -> Option<u8> {
        use x86_64::instructions::port::{Port, PortReadOnly};
        without_interrupts(|| {
            let guard = self.port.lock();
            guard.as_ref()?;
            let mut lsr: PortReadOnly<u8> = PortReadOnly::new(self.base + LSR);
            let mut rbr: Port<u8> = Port::new(self.base);
            // SAFETY: as in `try_send_byte`; RBR is read only when LSR.DR says
            // a byte waits.
            unsafe { (lsr.read() & LSR_DR != 0).then(|| rbr.read()) }
        })
    }

    /// A received byte, if one is waiting (never blocks).
    pub fn try_read_byte(&self) -> Option<u8> {
        without_interrupts(|| {
            self.port
                .lock()
                .as_mut()
                .and_then(|port| port.try_receive().ok())
        })
    }
}

/// Runs `f` with interrupts disabled on the bare machine; on the host (tests) just
/// runs it, since `cli` is privileged there.
fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_os = "none")]
    {
        x86_64::instructions::interrupts::without_interrupts(f)
    }
    #[cfg(not(target_os = "none"))]
    {
        f()
    }
}
