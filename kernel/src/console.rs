//! The kernel console: COM1 and the framebuffer, written together, behind the
//! `log` facade (levels, and a timestamp from the TSC).
//!
//! A real machine booted from a USB stick often has no serial port, so every
//! line also goes to the framebuffer text console the bootloader handed over.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bootloader_api::info::{FrameBuffer, PixelFormat};
use drivers::framebuffer::{FbConsole, FbInfo, PixelFormat as FbPixelFormat};
use drivers::serial::COM1;
use spin::Mutex;

/// Both consoles; one lock so lines from several CPUs never interleave.
struct Consoles {
    fb: Option<FbConsole<'static>>,
}

static CONSOLES: Mutex<Consoles> = Mutex::new(Consoles { fb: None });

/// The last bytes on the consoles were raw guest output that did not end a
/// line ([`print_raw`], a shell prompt): the next kernel text starts a new
/// line first, so every kernel line (`HV-EXIT` above all) stays at a line start.
static RAW_MIDLINE: AtomicBool = AtomicBool::new(false);

/// TSC frequency once calibrated (0 before): turns timestamps into seconds.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// TSC value at boot, the zero of timestamps.
static TSC_BOOT: AtomicU64 = AtomicU64::new(0);

impl Consoles {
    fn write_str(&mut self, s: &str) {
        if RAW_MIDLINE.swap(false, Ordering::Relaxed) {
            self.write_str("\n");
        }
        COM1.write_str(s);
        if let Some(fb) = self.fb.as_mut() {
            fb.write_str(s);
        }
    }
}

impl Write for Consoles {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        Consoles::write_str(self, s);
        Ok(())
    }
}

/// Starts the serial console and the logger; the framebuffer joins in
/// [`attach_framebuffer`].
pub fn init() {
    TSC_BOOT.store(crate::arch::rdtsc(), Ordering::Relaxed);
    SERIAL_PRESENT.store(COM1.present(), Ordering::Relaxed);
    COM1.init();
    static LOGGER: Logger = Logger;
    // Fails only if a logger is already set, in which case ours is not needed.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

/// Mirrors the console on the bootloader's framebuffer (any resolution and
/// pixel format it reports).
pub fn attach_framebuffer(fb: FrameBuffer) {
    let info = fb.info();
    let format = match info.pixel_format {
        PixelFormat::Rgb => FbPixelFormat::Rgb,
        PixelFormat::Bgr => FbPixelFormat::Bgr,
        PixelFormat::U8 => FbPixelFormat::U8,
        _ => FbPixelFormat::Unknown,
    };
    let fb_info = FbInfo {
        width: info.width,
        height: info.height,
        stride: info.stride,
        bytes_per_pixel: info.bytes_per_pixel,
        format,
    };
    let console = FbConsole::new(fb.into_buffer(), fb_info);
    CONSOLES.lock().fb = Some(console);
}

/// Records the calibrated TSC frequency for timestamps.
pub fn set_tsc_hz(hz: u64) {
    TSC_HZ.store(hz, Ordering::Relaxed);
}

/// TSC value when the kernel started.
pub fn boot_tsc() -> u64 {
    TSC_BOOT.load(Ordering::Relaxed)
}

/// Microseconds since boot (0 until the TSC is calibrated).
pub fn uptime_us() -> u64 {
    let hz = TSC_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        return 0;
    }
    let ticks = crate::arch::rdtsc().wrapping_sub(TSC_BOOT.load(Ordering::Relaxed));
    (ticks as u128 * 1_000_000 / hz as u128) as u64
}

/// Writes formatted text to both consoles, unprefixed.
pub fn print(args: fmt::Arguments<'_>) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _ = CONSOLES.lock().write_fmt(args);
    });
}

/// Whether COM1 answered at boot (checked once, before it was initialised).
static SERIAL_PRESENT: AtomicBool = AtomicBool::new(true);

/// Writes guests' prefixed console lines: to serial when the machine has a
/// serial port, and then not to the framebuffer, whose drawing and scrolling
/// (pixel by pixel, slow in emulators above all) would cost more host time
/// than the guests' own slices; machines without a serial port get them on
/// the screen.
pub fn print_guest_lines(text: &str) {
    if SERIAL_PRESENT.load(Ordering::Relaxed) {
        x86_64::instructions::interrupts::without_interrupts(|| {
            let _guard = CONSOLES.lock();
            if RAW_MIDLINE.swap(false, Ordering::Relaxed) {
                COM1.write_str("\n");
            }
            COM1.write_str(text);
        });
    } else {
        print(format_args!("{text}"));
    }
}

/// Writes a guest's terminal output as it is (the console is attached to
/// that VM): every byte to serial, the printable ones and newlines to the
/// framebuffer (a text console without escape sequences).
pub fn print_raw(bytes: &[u8]) {
    let Some(&last) = bytes.last() else { return };
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut consoles = CONSOLES.lock();
        COM1.write_bytes(bytes);
        if let Some(fb) = consoles.fb.as_mut() {
            let mut text = [0u8; 64];
            for chunk in bytes.chunks(text.len()) {
                let mut n = 0;
                for &b in chunk
                    .iter()
                    .filter(|&&b| b == b'\n' || b == b'\t' || (0x20..0x7F).contains(&b))
                {
                    text[n] = b;
                    n += 1;
                }
                // Only ASCII was kept.
                fb.write_str(core::str::from_utf8(&text[..n]).unwrap_or(""));
            }
        }
        RAW_MIDLINE.store(last != b'\n', Ordering::Relaxed);
    });
}

/// `print!` to both consoles.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// `println!` to both consoles.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// A console writer for crash paths: takes the lock even if the crashing code
/// held it (the holder will never run again).
pub struct Emergency(spin::MutexGuard<'static, Consoles>);

impl Write for Emergency {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write_str(s);
        Ok(())
    }
}

/// The console for crash reports; see [`Emergency`].
pub fn emergency() -> Emergency {
    for _ in 0..1_000_000 {
        if let Some(guard) = CONSOLES.try_lock() {
            return Emergency(guard);
        }
        core::hint::spin_loop();
    }
    // SAFETY: the holder has been spinning for a million tries: it is the code
    // that crashed (or a CPU that will be stopped); reports matter more.
    unsafe { CONSOLES.force_unlock() };
    Emergency(CONSOLES.lock())
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let us = uptime_us();
        let level = match record.level() {
            log::Level::Error => "ERROR",
            log::Level::Warn => "WARN ",
            log::Level::Info => "INFO ",
            log::Level::Debug => "DEBUG",
            log::Level::Trace => "TRACE",
        };
        print(format_args!(
            "[{:>5}.{:06}] {level} {}\n",
            us / 1_000_000,
            us % 1_000_000,
            record.args()
        ));
    }

    fn flush(&self) {}
}
