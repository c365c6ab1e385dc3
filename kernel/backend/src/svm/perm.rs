//! The I/O and MSR permission maps (APM 15.10.1, 15.11), shared by every
//! vCPU of the machine: the kernel allocates them once (12 KiB and 8 KiB of
//! physically contiguous frames) and fills them with [`build_iopm`] and
//! [`build_msrpm`].
//!
//! Every port is intercepted (all devices are emulated). Every MSR is
//! intercepted except [`PASSTHROUGH`], the state VMLOAD and VMSAVE switch
//! (APM 15.5.2), and reads of TSC_AUX, which the kernel switches with the
//! vCPU from its record (writes exit to keep it). These are the MSRs VT-x
//! lets a guest use natively ([`crate::vtx::msr_bitmap`]) without IA32_PAT,
//! which is kept in G_PAT by policy (see the [module docs](super)). EFER and
//! DEBUGCTL, readable natively on VT-x, are intercepted both ways: a native
//! read of EFER would show the guest SVME, and DEBUGCTL is not switched
//! without LBR virtualization. MSRs outside the map's three ranges always
//! exit.

use hvcore::msr_policy::*;
use svm::perm::{IoPermissionMap, MsrOutsideMap, MsrPermissionMap, IOPM_SIZE, MSRPM_SIZE};

/// MSRs a guest reads and writes without an exit: VMLOAD/VMSAVE state
/// (APM 15.5.2).
pub const PASSTHROUGH: [u32; 10] = [
    IA32_SYSENTER_CS,
    IA32_SYSENTER_ESP,
    IA32_SYSENTER_EIP,
    IA32_STAR,
    IA32_LSTAR,
    IA32_CSTAR,
    IA32_FMASK,
    IA32_FS_BASE,
    IA32_GS_BASE,
    IA32_KERNEL_GS_BASE,
];

/// Fills `map` so that every port access exits (all bits set, including
/// the three past port FFFFh).
pub fn build_iopm(map: &mut [u8; IOPM_SIZE]) {
    IoPermissionMap::intercept_all(map);
}

/// Fills `map` so that only [`PASSTHROUGH`] and reads of TSC_AUX skip the
/// exit. Fails only if an MSR of the list were outside the map (a bug,
/// caught by the tests).
pub fn build_msrpm(map: &mut [u8; MSRPM_SIZE]) -> Result<(), MsrOutsideMap> {
    let mut m = MsrPermissionMap::intercept_all(map);
    PASSTHROUGH.iter().try_for_each(|&msr| m.allow_msr(msr))?;
    m.intercept_msr(IA32_TSC_AUX, false, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn msrpm() -> alloc::boxed::Box<[u8; MSRPM_SIZE]> {
        let mut page = alloc::boxed::Box::new([0u8; MSRPM_SIZE]);
        build_msrpm(&mut page).unwrap();
        page
    }

    #[test]
    fn native_msrs_are_the_vtx_ones_without_pat() {
        use crate::vtx::msr_bitmap as vtx;
        let mut native: Vec<u32> = vtx::PASSTHROUGH
            .into_iter()
            .chain(vtx::READ_ONLY_PASSTHROUGH)
            .filter(|&m| ![IA32_PAT, IA32_EFER, IA32_DEBUGCTL].contains(&m))
            .collect();
        let mut svm: Vec<u32> = PASSTHROUGH.into_iter().chain([IA32_TSC_AUX]).collect();
        native.sort_unstable();
        svm.sort_unstable();
        assert_eq!(svm, native);
    }

    #[test]
    fn only_the_passthrough_msrs_run_natively() {
        let mut page = msrpm();
        let m = MsrPermissionMap::new(&mut *page);
        for msr in PASSTHROUGH {
            assert_eq!(m.intercepts(msr), Some((false, false)), "{msr:#x}");
        }
        // TSC_AUX is read natively; its writes update the vCPU's record.
        assert_eq!(m.intercepts(IA32_TSC_AUX), Some((false, true)));
        // EFER (SVME hidden), PAT (G_PAT by policy), DEBUGCTL, the SVM MSRs,
        // the APIC base and the TSC exit both ways.
        for msr in [
            IA32_EFER,
            IA32_PAT,
            IA32_DEBUGCTL,
            0xC001_0114,
            0xC001_0117,
            IA32_APIC_BASE,
            IA32_TSC,
        ] {
            assert_eq!(m.intercepts(msr), Some((true, true)), "{msr:#x}");
        }
        // Outside the three ranges: not in the map, so always intercepted.
        assert_eq!(m.intercepts(0x4000_0000), None);
        // Exactly 11 MSRs of the 3 x 8192 in the map run natively (one of
        // them for reads only).
        let native = (0..0x2000u32)
            .chain(0xC000_0000..0xC000_2000)
            .chain(0xC001_0000..0xC001_2000)
            .filter(|&msr| m.intercepts(msr) != Some((true, true)))
            .count();
        assert_eq!(native, PASSTHROUGH.len() + 1);
        // The reserved last 2 KiB stay all ones.
        assert!(m.as_bytes()[0x1800..].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn every_port_exits() {
        let mut page = alloc::boxed::Box::new([0u8; IOPM_SIZE]);
        build_iopm(&mut page);
        let io = IoPermissionMap::new(&mut *page);
        for port in [0u16, 0x20, 0x60, 0x80, 0x3F8, 0xCF8, 0xFFFF] {
            for size in [1, 2, 4] {
                assert!(io.is_intercepted(port, size), "{port:#x}/{size}");
            }
        }
        assert!(io.as_bytes().iter().all(|&b| b == 0xFF));
    }
}
