//! The lowest layer: port I/O and memory-mapped registers.
//!
//! Port I/O uses `x86_64::instructions::port::Port`; memory-mapped registers go through
//! [`Mmio`], a base virtual address whose creation is the one place where the caller
//! promises the mapping is valid.

use core::ptr;

pub use x86_64::instructions::port::{Port, PortReadOnly, PortWriteOnly};

/// A block of 32-bit memory-mapped device registers at a fixed virtual address.
#[derive(Debug)]
pub struct Mmio {
    base: *mut u32,
    len: usize,
}

// SAFETY: `Mmio` is a device address, not a reference to Rust data; the device
// registers may be accessed from any CPU (the owner serialises access through `&mut`).
unsafe impl Send for Mmio {}

impl Mmio {
    /// Registers at virtual address `base`, `len` bytes long.
    ///
    /// # Safety
    /// `base..base + len` must be mapped (uncacheable or as the device requires) to the
    /// device's registers for as long as the value lives, 4-byte aligned, and no other
    /// code may treat that memory as ordinary Rust data.
    pub const unsafe fn new(base: usize, len: usize) -> Self {
        Self {
            base: base as *mut u32,
            len,
        }
    }

    /// Reads the 32-bit register at byte offset `offset`. Out-of-range or unaligned
    /// offsets read as all ones (like a missing device) rather than touching memory.
    pub fn read(&self, offset: usize) -> u32 {
        if !self.in_range(offset) {
            return !0;
        }
        // SAFETY: `new`'s contract maps `base..base + len` to device registers;
        // `in_range` keeps the 4-byte access inside it and aligned.
        unsafe { ptr::read_volatile(self.base.byte_add(offset)) }
    }

    /// Writes the 32-bit register at byte offset `offset`; out-of-range or unaligned
    /// offsets are ignored.
    pub fn write(&mut self, offset: usize, value: u32) {
        if !self.in_range(offset) {
            return;
        }
        // SAFETY: as in `read`; `&mut self` serialises writers.
        unsafe { ptr::write_volatile(self.base.byte_add(offset), value) }
    }

    fn in_range(&self, offset: usize) -> bool {
        offset.is_multiple_of(4) && offset.checked_add(4).is_some_and(|end| end <= self.len)
    }
}
