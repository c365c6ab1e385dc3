//! Ending a run: report the result on serial, then leave the machine through
//! whatever exit it has (QEMU's isa-debug-exit, ACPI S5 power-off for Bochs and
//! real machines that asked for it), else halt with interrupts off.

use core::sync::atomic::{AtomicBool, Ordering};

use hvcore::KernelExit;
use x86_64::instructions::port::Port;

/// Port of QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4`).
const QEMU_DEBUG_EXIT_PORT: u16 = 0xf4;

/// Set when the boot package asks for power-off at the end (emulator runs).
static POWER_OFF: AtomicBool = AtomicBool::new(true);

/// Chooses between power-off (emulators, tests) and halting (a real machine
/// whose screen should keep the report).
pub fn set_power_off_at_end(on: bool) {
    POWER_OFF.store(on, Ordering::Relaxed);
}

/// Prints the `HV-EXIT` line and leaves the machine. Never returns.
pub fn exit(code: KernelExit) -> ! {
    x86_64::instructions::interrupts::disable();
    crate::smp::stop_other_cpus();
    {
        use core::fmt::Write;
        let mut out = crate::console::emergency();
        let _ = writeln!(
            out,
            "{}{:#x} {}",
            hvcore::EXIT_MARKER,
            code as u32,
            code.name()
        );
    }
    // The result line must leave the UART before the machine goes away.
    drivers::serial::COM1.flush();
    if POWER_OFF.load(Ordering::Relaxed) {
        let mut port: Port<u32> = Port::new(QEMU_DEBUG_EXIT_PORT);
        // SAFETY: writing to the debug-exit port has no effect on machines
        // without the device (an unclaimed ISA port); under QEMU it ends the run.
        unsafe { port.write(code as u32) };
        crate::acpi::power_off();
    }
    halt_forever()
}

/// Halts this CPU for good (interrupts off; NMIs return to the `hlt`).
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
