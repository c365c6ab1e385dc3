//! The legacy 8259A interrupt-controller pair: remapped away from the
//! exception vectors and masked, because the kernel uses the local APIC.
//!
//! Firmware leaves the master PIC on vectors 8-15, where a timer tick would
//! look like a double fault; remapping first keeps a stray interrupt that was
//! already pending harmless (Intel 8259A datasheet, ICW1-ICW4).

use x86_64::instructions::port::Port;

/// Master PIC command and data ports.
const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
/// Slave PIC command and data ports.
const SLAVE_CMD: u16 = 0xA0;
const SLAVE_DATA: u16 = 0xA1;
/// ICW1: initialisation, ICW4 needed.
const ICW1_INIT_ICW4: u8 = 0x11;
/// ICW4: 8086 mode.
const ICW4_8086: u8 = 0x01;

/// Remaps the PIC pair to `base..base+16` and masks every line.
///
/// # Safety
/// The machine has a PIC pair (or nothing) at the legacy ports, and nothing
/// else programs it.
pub unsafe fn remap_and_mask(base: u8) {
    let mut mc: Port<u8> = Port::new(MASTER_CMD);
    let mut md: Port<u8> = Port::new(MASTER_DATA);
    let mut sc: Port<u8> = Port::new(SLAVE_CMD);
    let mut sd: Port<u8> = Port::new(SLAVE_DATA);
    // SAFETY: the caller guarantees the ports are the PIC's; the sequence is
    // the datasheet's ICW1..ICW4, then OCW1 masking all lines.
    unsafe {
        mc.write(ICW1_INIT_ICW4);
        sc.write(ICW1_INIT_ICW4);
        md.write(base); // ICW2: master vector base
        sd.write(base + 8); // ICW2: slave vector base
        md.write(1 << 2); // ICW3: slave on IRQ2
        sd.write(2); // ICW3: slave identity
        md.write(ICW4_8086);
        sd.write(ICW4_8086);
        md.write(0xff);
        sd.write(0xff);
    }
}
