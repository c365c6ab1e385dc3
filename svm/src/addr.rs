//! Guest-physical and host-physical addresses, and page sizes.
//!
//! Two newtypes that never mix: no arithmetic operators, no `From` between
//! them, no conversion to a pointer. Steps that could overflow are checked
//! methods returning `Option`. A guest-physical address is what a guest
//! claims; it becomes host memory only through a nested-page-table
//! translation ([`crate::npt::Npt::translate`]), never through a cast.
//!
//! The crate defines its own types rather than sharing `vmx`'s so that the
//! AMD-V backend depends on nothing but `bitflags`.

use core::fmt;

/// The size of a page a long-mode page table can map (APM Vol. 2, 5.3
/// "Long-Mode Page Translation"; nested tables use the same format, 15.25.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, mapped by a PTE (APM Vol. 2, 5.3.3).
    Size4K,
    /// 2 MiB, mapped by a PDE with PS = 1 (APM Vol. 2, 5.3.4).
    Size2M,
    /// 1 GiB, mapped by a PDPE with PS = 1 (APM Vol. 2, 5.3.5).
    Size1G,
}

impl PageSize {
    /// The page size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }
}

/// Bytes in a 4 KiB page frame.
pub const PAGE_SIZE: u64 = PageSize::Size4K.bytes();

macro_rules! phys_addr {
    ($(#[$doc:meta])* $name:ident, $short:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Address zero.
            pub const ZERO: Self = Self(0);

            /// Wraps a raw address value.
            pub const fn new(addr: u64) -> Self {
                Self(addr)
            }

            /// The raw address value.
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// `self + bytes`, or `None` if that overflows 64 bits.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(a) => Some(Self(a)),
                    None => None,
                }
            }

            /// `self - bytes`, or `None` if that underflows.
            pub const fn checked_sub(self, bytes: u64) -> Option<Self> {
                match self.0.checked_sub(bytes) {
                    Some(a) => Some(Self(a)),
                    None => None,
                }
            }

            /// The distance from `base` up to `self`, or `None` if `self < base`.
            pub const fn offset_from(self, base: Self) -> Option<u64> {
                self.0.checked_sub(base.0)
            }

            /// Rounds down to a multiple of `align`, a power of two (any other
            /// `align` returns the address unchanged).
            pub const fn align_down(self, align: u64) -> Self {
                if align.is_power_of_two() {
                    Self(self.0 & !(align - 1))
                } else {
                    self
                }
            }

            /// Rounds up to a multiple of `align` (a power of two), or `None`
            /// if that overflows or `align` is not a power of two.
            pub const fn align_up(self, align: u64) -> Option<Self> {
                if !align.is_power_of_two() {
                    return None;
                }
                match self.0.checked_add(align - 1) {
                    Some(a) => Some(Self(a & !(align - 1))),
                    None => None,
                }
            }

            /// Whether the address is a multiple of `align` (a power of two;
            /// `false` for any other `align`).
            pub const fn is_aligned(self, align: u64) -> bool {
                align.is_power_of_two() && self.0 & (align - 1) == 0
            }

            /// Whether the address is 4 KiB-aligned.
            pub const fn is_page_aligned(self) -> bool {
                self.is_aligned(PAGE_SIZE)
            }

            /// The offset within the 4 KiB page (address & 0xfff).
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE - 1)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($short, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($short, ":{:#x}"), self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

phys_addr!(
    /// An address in a guest's physical address space (APM Vol. 2, 15.25.1:
    /// "guest physical address", gPA). Only meaningful through that guest's
    /// nested page tables.
    GuestPhysAddr,
    "GPA"
);

phys_addr!(
    /// An address in the machine's physical address space (APM Vol. 2,
    /// 15.25.1: "system physical address", sPA): what VMRUN, VM_HSAVE_PA,
    /// N_CR3 and nested page-table entries hold.
    HostPhysAddr,
    "HPA"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_arithmetic() {
        let a = GuestPhysAddr::new(0x1000);
        assert_eq!(a.checked_add(0x234), Some(GuestPhysAddr::new(0x1234)));
        assert_eq!(GuestPhysAddr::new(u64::MAX).checked_add(1), None);
        assert_eq!(a.checked_sub(0x1001), None);
        assert_eq!(a.checked_sub(0x1000), Some(GuestPhysAddr::ZERO));
        assert_eq!(GuestPhysAddr::new(0x1800).offset_from(a), Some(0x800));
        assert_eq!(a.offset_from(GuestPhysAddr::new(0x1800)), None);
    }

    #[test]
    fn alignment() {
        let h = HostPhysAddr::new(0x20_1234);
        assert_eq!(h.align_down(PAGE_SIZE), HostPhysAddr::new(0x20_1000));
        assert_eq!(
            h.align_down(PageSize::Size2M.bytes()),
            HostPhysAddr::new(0x20_0000)
        );
        assert_eq!(h.align_down(3), h);
        assert_eq!(h.align_up(PAGE_SIZE), Some(HostPhysAddr::new(0x20_2000)));
        assert_eq!(HostPhysAddr::new(u64::MAX).align_up(PAGE_SIZE), None);
        assert_eq!(h.align_up(3), None);
        assert!(!h.is_page_aligned());
        assert!(HostPhysAddr::new(0x4000_0000).is_aligned(PageSize::Size1G.bytes()));
        assert!(!HostPhysAddr::new(0x4000_0000).is_aligned(0));
        assert_eq!(h.page_offset(), 0x234);
    }

    #[test]
    fn formatting() {
        assert_eq!(format!("{:?}", GuestPhysAddr::new(0x1000)), "GPA(0x1000)");
        assert_eq!(format!("{}", HostPhysAddr::new(0xabc)), "HPA:0xabc");
        assert_eq!(format!("{:x}", HostPhysAddr::new(0xabc)), "abc");
    }
}
