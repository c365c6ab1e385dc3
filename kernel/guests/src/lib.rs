//! Runtime shared by the guest programs in `src/bin`: entry point, output
//! through the VM's emulated 16550 UART, the hypercall ABI, and panics that end
//! the VM with a report.
//!
//! The hypervisor starts a 64-bit guest in long mode with paging on (guest
//! memory identity-mapped with 2 MiB pages, the first 4 GiB of guest-physical
//! space), a flat GDT (code 0x08, data 0x10) and RSP unset: `_start` sets up the
//! stack below `__stack_top` (see `guest.ld`) and calls the program's `main`.
//!
//! Hypercall ABI (the `hvabi` crate, shared with the hypervisor and the
//! tests): `VMCALL` with RAX = number, arguments in RBX, RCX, RDX, RSI; RAX
//! returns 0 or a negative error, RBX an optional result.
//!
//! Test guests (`statekeeper`, `syscall`, `crs`, `cr8`, `stihlt`) use [`trap`]
//! for their own IDT, [`cpu`] for privileged registers, and end with
//! [`finish`]: a verdict line, a [`key::FAILURES`] report and an exit code
//! (0 when every check passed, [`EXIT_FAILED`] otherwise). They call
//! [`pace_output`] first, so that bursts of lines are not cut by the
//! hypervisor's per-slice console limit.
//!
//! Multi-processor guests (`smp`, `smpbench`) start their other vCPUs and
//! program their x2APICs with [`smp`].
//!
//! Printing is safe from several vCPUs of one VM (the `smp` guest): each
//! [`println!`] takes a spinlock, so lines do not interleave. Interrupt
//! handlers must not print.
#![no_std]

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub mod cpu;
pub mod smp;
pub mod trap;

/// Hypercall numbers, status codes and report keys: the ABI crate shared with
/// the hypervisor and the tests.
pub use hvabi::{key, nr, status};

/// Result of a hypercall: RAX and RBX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HcResult {
    /// 0 or a negative error code.
    pub status: i64,
    /// Extra result.
    pub value: u64,
}

/// A hypercall through `$insn` (VMCALL or VMMCALL).
macro_rules! hypercall_with {
    ($insn:literal, $nr:expr, $a:expr, $b:expr, $c:expr) => {{
        let status: u64;
        let value: u64;
        // SAFETY: the instruction traps to the hypervisor, which follows the
        // ABI above and changes only RAX and RBX. RBX is reserved by LLVM,
        // hence the xchg.
        unsafe {
            core::arch::asm!(
                "xchg rbx, {a}",
                $insn,
                "xchg rbx, {a}",
                a = inout(reg) $a => value,
                inout("rax") $nr => status,
                in("rcx") $b,
                in("rdx") $c,
                options(nostack),
            );
        }
        HcResult {
            status: status as i64,
            value,
        }
    }};
}

/// Issues a hypercall (VMCALL: on AMD-V it exits as #UD, which the
/// hypervisor decodes from guest memory).
pub fn hypercall(nr: u64, a: u64, b: u64, c: u64) -> HcResult {
    hypercall_with!("vmcall", nr, a, b, c)
}

/// Issues a hypercall with AMD's own instruction, VMMCALL (#UD on Intel).
pub fn hypercall_vmmcall(nr: u64, a: u64, b: u64, c: u64) -> HcResult {
    hypercall_with!("vmmcall", nr, a, b, c)
}

/// Whether the CPU is AMD's (CPUID vendor "AuthenticAMD"), whose hypercall
/// instruction is VMMCALL.
pub fn amd_cpu() -> bool {
    let v = cpuid(0, 0);
    (v.ebx, v.edx, v.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163)
}

/// Reports `key = value` to the hypervisor.
pub fn report(key: u64, value: u64) {
    // The host prints `report KEY=VALUE` (at most 20 digits each).
    pace(48);
    hypercall(nr::REPORT, key, value, 0);
}

/// Gives up the rest of the time slice.
pub fn yield_now() {
    hypercall(nr::YIELD, 0, 0, 0);
}

/// This VM's id (hypercall [`nr::VM_ID`]).
pub fn vm_id() -> u64 {
    hypercall(nr::VM_ID, 0, 0, 0).value
}

/// Exit code of a test guest that found a failed check.
pub const EXIT_FAILED: u64 = 1;

/// Ends a test guest: reports [`key::FAILURES`], prints `NAME: OK` (no
/// failures) or `NAME: FAILED (N failed checks)` as its last line, and shuts
/// down with 0 or [`EXIT_FAILED`].
pub fn finish(name: &str, failures: u64) -> ! {
    report(key::FAILURES, failures);
    if failures == 0 {
        println!("{name}: OK");
    } else {
        println!("{name}: FAILED ({failures} failed checks)");
    }
    shutdown(if failures == 0 { 0 } else { EXIT_FAILED })
}

/// Stops this VM with an exit code. Never returns.
pub fn shutdown(code: u64) -> ! {
    loop {
        hypercall(nr::SHUTDOWN, code, 0, 0);
    }
}

/// Writes through the hypercall console (not the UART).
pub fn console_write(s: &str) -> HcResult {
    hypercall(nr::CONSOLE_WRITE, s.as_ptr() as u64, s.len() as u64, 0)
}

/// I/O port of the VM's emulated COM1.
const COM1: u16 = 0x3f8;
/// Line status register offset, bit 5 = transmitter holding register empty.
const LSR: u16 = 5;
const LSR_THRE: u8 = 1 << 5;

fn outb(port: u16, v: u8) {
    // SAFETY: port I/O in a guest traps to the hypervisor's device model.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) };
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
    v
}

/// Polling 16550 driver for the VM's COM1.
pub struct Uart;

impl Uart {
    fn init() {
        outb(COM1 + 1, 0x00); // IER: no interrupts
        outb(COM1 + 3, 0x80); // LCR: DLAB on
        outb(COM1, 0x01); // DLL: 115200 baud
        outb(COM1 + 1, 0x00); // DLM
        outb(COM1 + 3, 0x03); // LCR: 8N1, DLAB off
        outb(COM1 + 7, 0x5a); // scratch register round trip
    }

    /// Scratch register value (a driver's presence check).
    pub fn scratch() -> u8 {
        inb(COM1 + 7)
    }

    fn put(b: u8) {
        while inb(COM1 + LSR) & LSR_THRE == 0 {}
        outb(COM1, b);
    }
}

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(Uart::put);
        Ok(())
    }
}

/// Whether output is paced (see [`pace_output`]).
static PACED: AtomicBool = AtomicBool::new(false);
/// Bytes of console output (with the host's per-line prefix) since the last
/// yield, when paced.
static PRINTED: AtomicUsize = AtomicUsize::new(0);

/// How much console output a paced guest sends between two yields: the host
/// queues 512 bytes of guest output per CPU and slice and drops the rest
/// (kernel `OUTPUT_QUEUE_LIMIT`), printing the queue between slices.
const PACE_BUDGET: usize = 480;
/// What the host adds to each line: `vm NAME: ` and the newline (names have
/// at most 32 bytes).
const PACE_LINE_OVERHEAD: usize = 38;

/// From now on, printing (and [`report`]) first yields the time slice when
/// the next line would take this guest's output since its last yield past
/// what the hypervisor prints per slice; the yield ends the slice and the
/// hypervisor prints the queued lines. For test guests whose every line
/// matters; a guest that measures scheduling should not pace.
pub fn pace_output() {
    PACED.store(true, Ordering::Relaxed);
}

/// Accounts for one line of `len` bytes, yielding first when it would not fit.
fn pace(len: usize) {
    if !PACED.load(Ordering::Relaxed) {
        return;
    }
    let cost = len + PACE_LINE_OVERHEAD;
    if PRINTED.load(Ordering::Relaxed) + cost > PACE_BUDGET {
        yield_now();
        PRINTED.store(0, Ordering::Relaxed);
    }
    PRINTED.fetch_add(cost, Ordering::Relaxed);
}

/// Counts the bytes a formatted message would take.
struct Counter(usize);

impl Write for Counter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// Held while one caller writes a message to the UART: the vCPUs of a
/// multi-processor guest (`smp`) share it, and a message is written in
/// pieces, so unserialised callers would interleave their bytes.
static OUTPUT_LOCK: AtomicBool = AtomicBool::new(false);

/// Spins until this caller holds [`OUTPUT_LOCK`]; after `max_spins` failed
/// attempts (if given) it goes on without it and returns false.
fn lock_output(max_spins: Option<u64>) -> bool {
    let mut spins = 0u64;
    while OUTPUT_LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        spins += 1;
        if max_spins.is_some_and(|max| spins >= max) {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

fn unlock_output() {
    OUTPUT_LOCK.store(false, Ordering::Release);
}

/// Pacing and output of one message, with the output lock held.
fn print_locked(args: fmt::Arguments<'_>) {
    if PACED.load(Ordering::Relaxed) {
        let mut n = Counter(0);
        let _ = n.write_fmt(args);
        pace(n.0);
    }
    let _ = Uart.write_fmt(args);
}

/// Prints one message (a [`println!`] line) whole: concurrent callers on
/// other vCPUs wait for it. Not for interrupt handlers (a handler that
/// interrupted a print on its own vCPU would wait forever).
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    lock_output(None);
    print_locked(args);
    unlock_output();
}

/// Prints to the VM's UART.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Reads the TSC, ordered against earlier instructions (LFENCE first).
/// Inline, so that a timed interval holds only what it measures: the
/// intrinsic `_mm_lfence` needs SSE2 enabled where it is inlined, and the
/// guests are built without SSE, so it was a call of its own (five
/// instructions more per read).
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: LFENCE and RDTSC only read state (CR4.TSD is not set for
    // guests); every x86-64 CPU has both.
    unsafe {
        core::arch::asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Runs CPUID.
#[allow(unused_unsafe)]
pub fn cpuid(leaf: u32, subleaf: u32) -> core::arch::x86_64::CpuidResult {
    // SAFETY: CPUID only reads (in a guest it exits to the hypervisor).
    unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) }
}

/// Defines the program's entry: sets the stack and calls `$main`, then shuts
/// the VM down with code 0 when it returns.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        core::arch::global_asm!(
            ".section .text._start, \"ax\"",
            ".global _start",
            "_start:",
            "lea rsp, [rip + __stack_top]",
            "call {rt}",
            "2: hlt",
            "jmp 2b",
            rt = sym __guest_start,
        );
        #[no_mangle]
        extern "C" fn __guest_start() -> ! {
            $crate::init();
            $main();
            $crate::shutdown(0)
        }
    };
}

/// Runtime set-up before `main`.
pub fn init() {
    Uart::init();
}

/// Sorts a small sample buffer and returns (min, median).
pub fn min_median(samples: &mut [u64]) -> (u64, u64) {
    samples.sort_unstable();
    (
        samples.first().copied().unwrap_or(0),
        samples.get(samples.len() / 2).copied().unwrap_or(0),
    )
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // A panic inside a print on this vCPU holds the lock: print anyway after
    // a while rather than never.
    let locked = lock_output(Some(100_000_000));
    print_locked(format_args!("guest panic: {}\n", info.message()));
    if locked {
        unlock_output();
    }
    shutdown(0xdead)
}
