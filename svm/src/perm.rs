//! The I/O and MSR permission maps (APM Vol. 2, 15.10.1 "I/O Permissions
//! Map" and 15.11 "MSR Intercepts").
//!
//! Both are physically contiguous, 4 KiB-aligned byte arrays that the VMCB
//! points at (IOPM_BASE_PA, MSRPM_BASE_PA) and that take effect with the
//! IOIO_PROT and MSR_PROT intercepts. A set bit intercepts. The builders
//! here wrap any storage that can lend the array: an owned array, a
//! `&mut [u8; N]` (e.g. over frames the kernel mapped, see
//! [`IoPermissionMap::from_slice`]) or a `Box<[u8; N]>`; nothing here
//! allocates.
//!
//! ```
//! use svm::perm::{IoPermissionMap, MsrPermissionMap, IOPM_SIZE, MSRPM_SIZE};
//! let mut io = IoPermissionMap::intercept_all([0u8; IOPM_SIZE]);
//! io.allow_port(0x80); // POST code port: let the guest write it directly
//! assert!(!io.is_intercepted(0x80, 1));
//! assert!(io.is_intercepted(0x7f, 2)); // covers ports 0x7f and 0x80
//!
//! let mut msr = MsrPermissionMap::intercept_all([0u8; MSRPM_SIZE]);
//! msr.intercept_msr(0xC000_0080, false, true).unwrap(); // EFER: trap writes only
//! assert_eq!(msr.intercepts(0xC000_0080), Some((false, true)));
//! ```

use core::borrow::{Borrow, BorrowMut};
use core::fmt;

/// Bytes in the I/O permission map: three 4 KiB pages (APM 15.10.1).
pub const IOPM_SIZE: usize = 3 * 4096;
/// Bytes in the MSR permission map: two 4 KiB pages (APM 15.11).
pub const MSRPM_SIZE: usize = 2 * 4096;

/// Bits of the IOPM the processor can consult: one per port 0-FFFFh, plus
/// the three after it, read by a multi-byte access that starts at FFFDh-
/// FFFFh (APM 15.10.1).
const IOPM_BITS_USED: u32 = 0x1_0003;

/// The I/O permission map: bit *n* intercepts accesses to port *n*; an
/// access of *s* bytes to port *p* is intercepted if any bit *p*..*p*+*s*-1
/// is set (APM 15.10.1).
pub struct IoPermissionMap<B> {
    bits: B,
}

impl<B> fmt::Debug for IoPermissionMap<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoPermissionMap").finish_non_exhaustive()
    }
}

impl<'a> IoPermissionMap<&'a mut [u8; IOPM_SIZE]> {
    /// Wraps a caller's slice, which must be exactly [`IOPM_SIZE`] bytes
    /// (`None` otherwise). Its contents are kept.
    pub fn from_slice(bytes: &'a mut [u8]) -> Option<Self> {
        let bits: &mut [u8; IOPM_SIZE] = bytes.try_into().ok()?;
        Some(Self { bits })
    }
}

impl<B: BorrowMut<[u8; IOPM_SIZE]>> IoPermissionMap<B> {
    /// Wraps `storage`, keeping its contents.
    pub fn new(storage: B) -> Self {
        Self { bits: storage }
    }

    /// Wraps `storage` with every bit set: every port intercepted.
    pub fn intercept_all(mut storage: B) -> Self {
        storage.borrow_mut().fill(0xFF);
        Self { bits: storage }
    }

    /// Wraps `storage` with every bit clear: no port intercepted.
    pub fn allow_all(mut storage: B) -> Self {
        storage.borrow_mut().fill(0);
        Self { bits: storage }
    }

    /// The byte index and bit of a bit number.
    const fn position(bit: u32) -> (usize, u8) {
        ((bit / 8) as usize, 1 << (bit % 8))
    }

    fn set(&mut self, bit: u32, on: bool) {
        let (byte, mask) = Self::position(bit);
        let bytes = self.bits.borrow_mut();
        if on {
            bytes[byte] |= mask;
        } else {
            bytes[byte] &= !mask;
        }
    }

    /// Intercepts accesses touching `port`.
    pub fn intercept_port(&mut self, port: u16) {
        self.set(u32::from(port), true);
    }

    /// Stops intercepting `port` (multi-byte accesses that also touch an
    /// intercepted port are still intercepted).
    pub fn allow_port(&mut self, port: u16) {
        self.set(u32::from(port), false);
    }

    /// Intercepts `count` ports from `first` on (ending at FFFFh).
    pub fn intercept_ports(&mut self, first: u16, count: u32) {
        for port in u32::from(first)..u32::from(first).saturating_add(count).min(0x1_0000) {
            self.set(port, true);
        }
    }

    /// Allows `count` ports from `first` on (ending at FFFFh).
    pub fn allow_ports(&mut self, first: u16, count: u32) {
        for port in u32::from(first)..u32::from(first).saturating_add(count).min(0x1_0000) {
            self.set(port, false);
        }
    }

    /// The backing storage.
    pub fn into_inner(self) -> B {
        self.bits
    }
}

impl<B: Borrow<[u8; IOPM_SIZE]>> IoPermissionMap<B> {
    /// Whether an access of `size` bytes (1, 2 or 4) to `port` is
    /// intercepted: whether any of its bytes' bits is set, including the
    /// bits past port FFFFh for accesses that wrap (APM 15.10.1).
    pub fn is_intercepted(&self, port: u16, size: u8) -> bool {
        let bytes = self.bits.borrow();
        (0..u32::from(size.max(1))).any(|i| {
            let bit = u32::from(port) + i;
            bit < IOPM_BITS_USED && {
                let (byte, mask) = (bit / 8, 1u8 << (bit % 8));
                bytes[byte as usize] & mask != 0
            }
        })
    }

    /// The map's bytes, as the processor reads them.
    pub fn as_bytes(&self) -> &[u8; IOPM_SIZE] {
        self.bits.borrow()
    }
}

/// The three MSR ranges the MSR permission map covers, each 8192 MSRs at
/// 2 bits per MSR = 2 KiB of the map (APM 15.11): (first MSR, byte offset
/// of its bits).
const MSR_RANGES: [(u32, usize); 3] = [
    (0x0000_0000, 0x000),
    (0xC000_0000, 0x800),
    (0xC001_0000, 0x1000),
];
/// MSRs per range.
const MSRS_PER_RANGE: u32 = 0x2000;

/// An MSR outside the three ranges the MSR permission map covers; accesses
/// to it are always intercepted when MSR_PROT is set (APM 15.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsrOutsideMap(pub u32);

impl fmt::Display for MsrOutsideMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MSR {:#x} is outside the MSR permission map (always intercepted)",
            self.0
        )
    }
}

impl core::error::Error for MsrOutsideMap {}

/// The MSR permission map (APM 15.11): two bits per MSR, the even bit
/// intercepting RDMSR and the odd bit WRMSR, for MSRs 0000_0000h-0000_1FFFh
/// (bytes 000h-7FFh), C000_0000h-C000_1FFFh (800h-FFFh) and
/// C001_0000h-C001_1FFFh (1000h-17FFh); bytes 1800h-1FFFh are reserved.
pub struct MsrPermissionMap<B> {
    bits: B,
}

impl<B> fmt::Debug for MsrPermissionMap<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsrPermissionMap").finish_non_exhaustive()
    }
}

/// Where the read-intercept bit of `msr` lives in the MSR permission map:
/// (byte offset, bit 0-7 in that byte); the write bit is the next bit up
/// (APM 15.11). `None` for MSRs outside the map.
pub const fn msrpm_read_bit(msr: u32) -> Option<(usize, u8)> {
    let mut i = 0;
    while i < MSR_RANGES.len() {
        let (first, base) = MSR_RANGES[i];
        if msr >= first && msr - first < MSRS_PER_RANGE {
            let bit = 2 * (msr - first) as usize;
            return Some((base + bit / 8, (bit % 8) as u8));
        }
        i += 1;
    }
    None
}

impl<'a> MsrPermissionMap<&'a mut [u8; MSRPM_SIZE]> {
    /// Wraps a caller's slice, which must be exactly [`MSRPM_SIZE`] bytes
    /// (`None` otherwise). Its contents are kept.
    pub fn from_slice(bytes: &'a mut [u8]) -> Option<Self> {
        let bits: &mut [u8; MSRPM_SIZE] = bytes.try_into().ok()?;
        Some(Self { bits })
    }
}

impl<B: BorrowMut<[u8; MSRPM_SIZE]>> MsrPermissionMap<B> {
    /// Wraps `storage`, keeping its contents.
    pub fn new(storage: B) -> Self {
        Self { bits: storage }
    }

    /// Wraps `storage` with every bit set: every access intercepted.
    pub fn intercept_all(mut storage: B) -> Self {
        storage.borrow_mut().fill(0xFF);
        Self { bits: storage }
    }

    /// Wraps `storage` with every bit clear: no access to an MSR in the map
    /// intercepted (MSRs outside it still are).
    pub fn allow_all(mut storage: B) -> Self {
        storage.borrow_mut().fill(0);
        Self { bits: storage }
    }

    /// Sets both bits of `msr`: intercept RDMSR if `read`, WRMSR if `write`.
    pub fn intercept_msr(
        &mut self,
        msr: u32,
        read: bool,
        write: bool,
    ) -> Result<(), MsrOutsideMap> {
        let (byte, bit) = msrpm_read_bit(msr).ok_or(MsrOutsideMap(msr))?;
        let bytes = self.bits.borrow_mut();
        let both = 0b11 << bit;
        let wanted = (u8::from(read) | (u8::from(write) << 1)) << bit;
        bytes[byte] = (bytes[byte] & !both) | wanted;
        Ok(())
    }

    /// Lets the guest read and write `msr` directly.
    pub fn allow_msr(&mut self, msr: u32) -> Result<(), MsrOutsideMap> {
        self.intercept_msr(msr, false, false)
    }

    /// The backing storage.
    pub fn into_inner(self) -> B {
        self.bits
    }
}

impl<B: Borrow<[u8; MSRPM_SIZE]>> MsrPermissionMap<B> {
    /// Whether RDMSR and WRMSR of `msr` are intercepted: `(read, write)`,
    /// or `None` for MSRs outside the map (always intercepted).
    pub fn intercepts(&self, msr: u32) -> Option<(bool, bool)> {
        let (byte, bit) = msrpm_read_bit(msr)?;
        let b = self.bits.borrow()[byte] >> bit;
        Some((b & 1 != 0, b & 2 != 0))
    }

    /// The map's bytes, as the processor reads them.
    pub fn as_bytes(&self) -> &[u8; MSRPM_SIZE] {
        self.bits.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_bits(bytes: &[u8]) -> Vec<usize> {
        (0..bytes.len() * 8)
            .filter(|&i| bytes[i / 8] & (1 << (i % 8)) != 0)
            .collect()
    }

    #[test]
    fn iopm_bit_positions() {
        let mut io = IoPermissionMap::allow_all([0xAAu8; IOPM_SIZE]);
        io.intercept_port(0x3F8);
        io.intercept_port(0);
        io.intercept_port(0xFFFF);
        // Port n is bit n: 0x3F8 is byte 0x7F bit 0; 0xFFFF is byte 0x1FFF bit 7.
        assert_eq!(set_bits(io.as_bytes()), vec![0, 0x3F8, 0xFFFF]);
        assert_eq!(io.as_bytes()[0x7F], 0x01);
        assert_eq!(io.as_bytes()[0x1FFF], 0x80);
        assert!(io.is_intercepted(0x3F8, 1));
        assert!(!io.is_intercepted(0x3F9, 1));
        io.allow_port(0x3F8);
        assert!(!io.is_intercepted(0x3F8, 4));
        assert_eq!(io.as_bytes()[0x7F], 0);
    }

    #[test]
    fn iopm_multi_byte_accesses_check_every_byte() {
        let mut io = IoPermissionMap::allow_all([0u8; IOPM_SIZE]);
        io.intercept_port(0x64);
        // A dword access at 0x61 covers 0x61..=0x64.
        assert!(io.is_intercepted(0x61, 4));
        assert!(!io.is_intercepted(0x60, 4));
        assert!(io.is_intercepted(0x63, 2));
        assert!(!io.is_intercepted(0x62, 2));
        // Size 0 counts as one byte.
        assert!(io.is_intercepted(0x64, 0));
        // Accesses wrapping past 0xFFFF consult the bits after it.
        let mut io = IoPermissionMap::intercept_all([0u8; IOPM_SIZE]);
        io.allow_ports(0xFFF0, 0x100);
        assert!(!io.is_intercepted(0xFFFF, 1));
        assert!(io.is_intercepted(0xFFFE, 4), "bit 0x10001 is still set");
        assert!(io.as_bytes()[0x2000] & 0b111 == 0b111);
    }

    #[test]
    fn iopm_ranges_and_storage() {
        let mut io = IoPermissionMap::intercept_all(Box::new([0u8; IOPM_SIZE]));
        io.allow_ports(0x3F8, 8);
        assert!((0x3F8..0x400).all(|p| !io.is_intercepted(p, 1)));
        assert!(io.is_intercepted(0x3F7, 1) && io.is_intercepted(0x400, 1));
        io.intercept_ports(0x3FA, 2);
        io.intercept_ports(0xFFFF, u32::MAX); // clipped at 0xFFFF, no overflow
        assert!(io.is_intercepted(0x3FA, 1) && io.is_intercepted(0x3FB, 1));
        let boxed = io.into_inner();
        assert_eq!(boxed[0x7F], 0b0000_1100);

        let mut backing = vec![0u8; IOPM_SIZE];
        let mut io = IoPermissionMap::from_slice(&mut backing).unwrap();
        io.intercept_port(0x20);
        assert_eq!(backing[4], 1);
        assert!(IoPermissionMap::from_slice(&mut [0u8; 100]).is_none());
        let kept = IoPermissionMap::new([0xFFu8; IOPM_SIZE]);
        assert!(kept.is_intercepted(0x1234, 1));
        assert!(format!("{kept:?}").starts_with("IoPermissionMap"));
    }

    #[test]
    fn msrpm_bit_positions() {
        // MSR 0: byte 0, bits 0 (read) and 1 (write).
        assert_eq!(msrpm_read_bit(0), Some((0, 0)));
        // MSR 0x1FFF: the last of range 0, byte 0x7FF, bits 6/7.
        assert_eq!(msrpm_read_bit(0x1FFF), Some((0x7FF, 6)));
        // EFER, C000_0080h: byte 0x800 + 0x80 / 4 = 0x820, bits 0/1.
        assert_eq!(msrpm_read_bit(0xC000_0080), Some((0x820, 0)));
        // LSTAR, C000_0082h: byte 0x820, bits 4/5.
        assert_eq!(msrpm_read_bit(0xC000_0082), Some((0x820, 4)));
        // VM_HSAVE_PA, C001_0117h: byte 0x1000 + 0x117 / 4 = 0x1045, bits 6/7.
        assert_eq!(msrpm_read_bit(0xC001_0117), Some((0x1045, 6)));
        // IA32_APIC_BASE, 1Bh: byte 6, bits 6/7.
        assert_eq!(msrpm_read_bit(0x1B), Some((6, 6)));
        assert_eq!(msrpm_read_bit(0x2000), None);
        assert_eq!(msrpm_read_bit(0xBFFF_FFFF), None);
        assert_eq!(msrpm_read_bit(0xC000_2000), None);
        assert_eq!(msrpm_read_bit(0xC001_2000), None);
        assert_eq!(msrpm_read_bit(0xC001_1FFF), Some((0x17FF, 6)));
        assert_eq!(msrpm_read_bit(u32::MAX), None);
    }

    #[test]
    fn msrpm_intercepts() {
        let mut m = MsrPermissionMap::allow_all([0u8; MSRPM_SIZE]);
        // Trap EFER writes only: bit 1 of byte 0x820 = map bit 0x4101.
        m.intercept_msr(0xC000_0080, false, true).unwrap();
        assert_eq!(set_bits(m.as_bytes()), vec![0x820 * 8 + 1]);
        assert_eq!(m.intercepts(0xC000_0080), Some((false, true)));
        // Reads and writes of IA32_APIC_BASE.
        m.intercept_msr(0x1B, true, true).unwrap();
        assert_eq!(m.as_bytes()[6], 0b1100_0000);
        assert_eq!(m.intercepts(0x1B), Some((true, true)));
        m.intercept_msr(0x1B, true, false).unwrap();
        assert_eq!(m.as_bytes()[6], 0b0100_0000);
        m.allow_msr(0x1B).unwrap();
        assert_eq!(m.as_bytes()[6], 0);
        assert_eq!(m.intercepts(0x1A), Some((false, false)));
        // Outside the map.
        assert_eq!(
            m.intercept_msr(0x4000_0000, true, true),
            Err(MsrOutsideMap(0x4000_0000))
        );
        assert_eq!(m.allow_msr(0xC000_2000), Err(MsrOutsideMap(0xC000_2000)));
        assert_eq!(m.intercepts(0x4000_0000), None);
        assert!(format!("{}", MsrOutsideMap(0x4000_0000)).contains("0x40000000"));

        let mut m = MsrPermissionMap::intercept_all([0u8; MSRPM_SIZE]);
        m.allow_msr(0xC000_0100).unwrap(); // FS_BASE: byte 0x840, bits 0/1
        assert_eq!(m.as_bytes()[0x840], 0b1111_1100);
        assert_eq!(m.intercepts(0xC000_0101), Some((true, true)));

        let mut backing = vec![0u8; MSRPM_SIZE];
        let mut m = MsrPermissionMap::from_slice(&mut backing).unwrap();
        m.intercept_msr(0xC001_0114, true, true).unwrap(); // VM_CR: byte 0x1045, bits 0/1
        assert_eq!(backing[0x1045], 0b11);
        assert!(MsrPermissionMap::from_slice(&mut [0u8; MSRPM_SIZE + 1]).is_none());
        let m = MsrPermissionMap::new(Box::new([0u8; MSRPM_SIZE]));
        assert_eq!(m.intercepts(0x10), Some((false, false)));
        assert_eq!(m.into_inner().len(), MSRPM_SIZE);
    }
}
