//! The consistency checks VMRUN makes before it runs a guest (APM 15.5.1,
//! "Canonicalization and Consistency Checks"), for reports: when a #VMEXIT
//! says VMEXIT_INVALID, [`check_guest_state`] names the first check the
//! VMCB fails, or says that it passes them all.
//!
//! Passing them all means either a check this list does not have (the APM
//! leaves some MBZ bits to the implementation) or an exit that VMRUN did not
//! cause: QEMU's TCG (7.2) also reports a guest instruction it refuses as
//! VMEXIT_INVALID while the guest runs, namely a MOV CR3 with bits beyond
//! the physical-address width in long mode and a MOV CR4 with a reserved bit
//! (`helper_write_crN`, `target/i386/tcg/sysemu/misc_helper.c`), where a
//! CPU raises #GP. (CR4 writes are intercepted and checked by policy, see
//! the module docs of [`super`], so only the CR3 case can reach the kernel.)
//! The VMCB then holds the state before that instruction, which passes.
//!
//! Checked: first the checks every processor makes
//! ([`Vmcb::check_vmrun`]: EFER.SVME, CR0.CD/NW, the high halves of CR0,
//! CR4, DR6 and DR7, the long-mode combinations, the VMRUN intercept, ASID
//! 0, reserved event types), then those that depend on this CPU: CR3 bits
//! beyond its physical-address width in long mode, CR4 bits it does not
//! implement ([`SvmSetup::cr4_implemented`]), EFER bits no CPU defines, and
//! permission maps that end beyond its physical-address width.

use core::fmt;

use hvcore::arch::{CR0_PG, EFER_LME};
use svm::vmcb::{InvalidState, Vmcb};
use svm::{IOPM_SIZE, MSRPM_SIZE};

use super::SvmSetup;

/// EFER bits some AMD64 processor defines (APM Vol. 2, 3.1.7): SCE, LME,
/// LMA, NXE, SVME, LMSLE, FFXSR, TCE, MCOMMIT, INTWB, UAIE, AIBRSE. The
/// others must be zero on every processor.
const EFER_DEFINED: u64 = (1 << 0)
    | (1 << 8)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 14)
    | (1 << 15)
    | (1 << 17)
    | (1 << 18)
    | (1 << 20)
    | (1 << 21);

/// The first APM 15.5.1 check a VMCB fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inconsistency {
    /// One of the checks every processor makes ([`Vmcb::check_vmrun`]).
    Common(InvalidState),
    /// CR3 has bits beyond the physical-address width (long mode).
    Cr3Reserved {
        /// The guest's CR3.
        cr3: u64,
        /// The CPU's physical-address width.
        phys_addr_bits: u8,
    },
    /// CR4 has bits the CPU does not implement.
    Cr4Reserved {
        /// The guest's CR4.
        cr4: u64,
        /// The offending bits.
        reserved: u64,
    },
    /// EFER has bits no processor defines.
    EferReserved {
        /// The guest's EFER.
        efer: u64,
    },
    /// The MSR or I/O permission map ends beyond the physical-address width.
    PermissionMapBeyondMemory {
        /// "MSRPM" or "IOPM".
        map: &'static str,
        /// Its base address.
        base: u64,
    },
}

impl fmt::Display for Inconsistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Common(state) => write!(f, "{state}"),
            Self::Cr3Reserved {
                cr3,
                phys_addr_bits,
            } => {
                write!(
                    f,
                    "guest CR3 {cr3:#x} has bits beyond the {phys_addr_bits}-bit physical address"
                )
            }
            Self::Cr4Reserved { cr4, reserved } => {
                write!(
                    f,
                    "guest CR4 {cr4:#x} has bits {reserved:#x} that this CPU does not implement"
                )
            }
            Self::EferReserved { efer } => {
                write!(
                    f,
                    "guest EFER {efer:#x} has bits {:#x} that no CPU defines",
                    efer & !EFER_DEFINED
                )
            }
            Self::PermissionMapBeyondMemory { map, base } => {
                write!(
                    f,
                    "the {map} at {base:#x} ends beyond the physical-address width"
                )
            }
        }
    }
}

/// Runs the APM 15.5.1 checks on `vmcb` for a CPU described by `setup`;
/// `Err` names the first that fails (see the module docs).
pub fn check_guest_state(vmcb: &Vmcb, setup: &SvmSetup) -> Result<(), Inconsistency> {
    vmcb.check_vmrun().map_err(Inconsistency::Common)?;
    let s = &vmcb.save;
    let c = &vmcb.control;
    let phys_addr_bits = setup.limits.phys_addr_bits;
    let beyond = |addr: u64| phys_addr_bits < 64 && addr >> phys_addr_bits != 0;
    if s.efer & EFER_LME != 0 && s.cr0 & CR0_PG != 0 && beyond(s.cr3) {
        return Err(Inconsistency::Cr3Reserved {
            cr3: s.cr3,
            phys_addr_bits,
        });
    }
    let reserved = s.cr4 & !setup.cr4_implemented;
    if reserved != 0 {
        return Err(Inconsistency::Cr4Reserved {
            cr4: s.cr4,
            reserved,
        });
    }
    if s.efer & !EFER_DEFINED != 0 {
        return Err(Inconsistency::EferReserved { efer: s.efer });
    }
    for (map, base, size) in [
        ("MSRPM", c.msrpm_base_pa, MSRPM_SIZE),
        ("IOPM", c.iopm_base_pa, IOPM_SIZE),
    ] {
        if beyond((base & !0xFFF).saturating_add(size as u64 - 1)) {
            return Err(Inconsistency::PermissionMapBeyondMemory { map, base });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::setup::{program, GuestStart};
    use super::super::testcaps::bochs;
    use super::*;
    use alloc::format;
    use hvcore::config::GuestMode;
    use svm::HostPhysAddr;

    fn programmed(mode: GuestMode) -> Vmcb {
        let mut v = Vmcb::new();
        let start = GuestStart {
            mode,
            entry: 0x10_0000,
            n_cr3: HostPhysAddr::new(0x30_0000),
            asid: 1,
            iopm: HostPhysAddr::new(0x20_0000),
            msrpm: HostPhysAddr::new(0x20_3000),
        };
        program(&mut v, &bochs(), &start).unwrap();
        v
    }

    #[test]
    fn programmed_guests_pass() {
        for mode in [GuestMode::Long64, GuestMode::Real16] {
            assert_eq!(
                check_guest_state(&programmed(mode), &bochs()),
                Ok(()),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn each_check_names_what_fails() {
        use hvcore::arch::{CR0_PE, CR4_PAE};
        use svm::caps::EFER_SVME;
        use svm::intercept::InterceptVector4;
        let setup = bochs();
        let fails = |change: &dyn Fn(&mut Vmcb)| {
            let mut v = programmed(GuestMode::Long64);
            change(&mut v);
            check_guest_state(&v, &setup).unwrap_err()
        };
        let common = Inconsistency::Common;
        assert_eq!(
            fails(&|v| v.save.efer &= !EFER_SVME),
            common(InvalidState::EferSvmeClear)
        );
        assert_eq!(
            fails(&|v| v.save.cr0 &= !CR0_PE),
            common(InvalidState::LongModeWithoutPe)
        );
        assert_eq!(
            fails(&|v| v.control.intercept_vector4.remove(InterceptVector4::VMRUN)),
            common(InvalidState::VmrunNotIntercepted)
        );
        assert_eq!(
            fails(&|v| v.save.cr3 |= 1 << 40),
            Inconsistency::Cr3Reserved {
                cr3: 0x100_0000_0000 | hvcore::layout::PML4,
                phys_addr_bits: 40
            }
        );
        // The crs guest's reserved bit 15, CR4.VMXE (reserved on AMD) and
        // PCIDE (Zen 1 has no PCID).
        for bit in [15, 13, 17] {
            assert_eq!(
                fails(&|v| v.save.cr4 |= 1 << bit),
                Inconsistency::Cr4Reserved {
                    cr4: CR4_PAE | (1 << bit),
                    reserved: 1 << bit
                }
            );
        }
        assert!(matches!(
            fails(&|v| v.save.efer |= 1 << 9),
            Inconsistency::EferReserved { .. }
        ));
        assert_eq!(
            fails(&|v| v.control.msrpm_base_pa = (1 << 40) - 0x1000),
            Inconsistency::PermissionMapBeyondMemory {
                map: "MSRPM",
                base: (1 << 40) - 0x1000
            }
        );
        assert_eq!(
            format!("{}", fails(&|v| v.save.cr4 |= 1 << 15)),
            "guest CR4 0x8020 has bits 0x8000 that this CPU does not implement"
        );
    }
}
