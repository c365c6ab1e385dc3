//! Ending a run: QEMU's isa-debug-exit device and ACPI S5 soft-off.
//!
//! Test harnesses learn the result of a kernel run from the exit status of the
//! emulator. QEMU started with `-device isa-debug-exit,iobase=0xf4,iosize=0x04`
//! exits with status `(code << 1) | 1` when the guest writes `code` to port 0xF4.
//! Bochs has no such device, but exits when the machine enters ACPI S5: write
//! `SLP_TYPa | SLP_EN` to PM1a_CNT (and `SLP_TYPb` to PM1b_CNT), with the sleep type
//! from the DSDT's `\_S5` object ([`crate::acpi::PowerOffInfo`]). Both return if the
//! machine keeps running (real hardware without the device, or S5 refused); the
//! caller then halts.

use crate::acpi::PowerOffInfo;
use crate::io::Port;

/// I/O port of QEMU's isa-debug-exit device in this project's QEMU command line.
pub const ISA_DEBUG_EXIT_PORT: u16 = 0xF4;
/// PM1_CNT bit 13: enter the sleep state in SLP_TYP.
pub const SLP_EN: u16 = 1 << 13;
/// PM1_CNT bits 12:10: sleep type.
pub const SLP_TYP_MASK: u16 = 0b111 << 10;
/// PM1_CNT bit 0: SCI_EN, set when the OS owns the ACPI registers (ACPI mode).
pub const SCI_EN: u16 = 1;
/// Polls of SCI_EN after asking the firmware to enter ACPI mode.
const ACPI_ENABLE_SPINS: u32 = 10_000_000;

/// Writes `code` to the isa-debug-exit port; QEMU exits with `(code << 1) | 1`.
///
/// # Safety
/// Port 0xF4 must be QEMU's isa-debug-exit device or unused: on other hardware a
/// device at that port would receive the write.
pub unsafe fn qemu_exit(code: u32) {
    let mut port = Port::<u32>::new(ISA_DEBUG_EXIT_PORT);
    // SAFETY: the caller promises port 0xF4 is the exit device or nothing.
    unsafe { port.write(code) }
}

/// The PM1_CNT value that requests sleep type `slp_typ`, keeping the other bits of
/// `current` (SCI_EN and friends).
pub const fn pm1_sleep_value(current: u16, slp_typ: u8) -> u16 {
    (current & !(SLP_TYP_MASK | SLP_EN)) | ((slp_typ as u16 & 0b111) << 10) | SLP_EN
}

/// Enters ACPI S5 (soft off) using the FADT/DSDT values in `info`. Switches to ACPI
/// mode first through the SMI command port if SCI_EN is clear. Returns only if the
/// machine did not power off.
///
/// # Safety
/// `info` must come from this machine's FADT and DSDT; the machine turns off, so
/// everything unsaved is lost.
pub unsafe fn acpi_power_off(info: &PowerOffInfo) {
    let mut pm1a = Port::<u16>::new(info.pm1a_control_port);
    // SAFETY: the caller promises the ports come from this machine's FADT; PM1a_CNT
    // reads have no side effects, the SMI command write is the FADT's documented way
    // to enter ACPI mode, and the sleep writes are what S5 requires.
    unsafe {
        if pm1a.read() & SCI_EN == 0 && info.smi_command_port != 0 && info.acpi_enable != 0 {
            Port::<u8>::new(info.smi_command_port).write(info.acpi_enable);
            for _ in 0..ACPI_ENABLE_SPINS {
                if pm1a.read() & SCI_EN != 0 {
                    break;
                }
                core::hint::spin_loop();
            }
        }
        if let Some(port) = info.pm1b_control_port {
            let mut pm1b = Port::<u16>::new(port);
            let current = pm1b.read();
            pm1b.write(pm1_sleep_value(current, info.slp_typ_b));
        }
        let current = pm1a.read();
        pm1a.write(pm1_sleep_value(current, info.slp_typ_a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_value_encoding() {
        assert_eq!(pm1_sleep_value(0, 5), 0x3400);
        assert_eq!(pm1_sleep_value(SCI_EN, 0), SLP_EN | SCI_EN);
        assert_eq!(pm1_sleep_value(0xFFFF, 2), !SLP_TYP_MASK | 2 << 10);
        assert_eq!(pm1_sleep_value(0, 0xFF), 0x3C00, "SLP_TYP is 3 bits");
    }
}
