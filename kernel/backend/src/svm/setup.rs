//! Programs the VMCB of a new vCPU: intercepts from [`SvmSetup`], the
//! addresses of its nested page tables and permission maps, and the
//! architectural state the guest starts in ([`GuestStart`]) (APM 15.5,
//! consistency checks in 15.5.1).
//!
//! The guest starts exactly as on VT-x: the same boot GDT at
//! [`layout::GDT`] ([`selectors::GDT_ENTRIES`], whose descriptors give the
//! segment attributes here), the same page tables at [`layout::PML4`]
//! ([`crate::vtx::setup::long_mode_boot_words`] writes both) and the same
//! real-mode CS ([`real_mode_cs`]). There is no host state to program:
//! VMRUN saves it in the host save area itself.

use core::fmt;

use hvcore::arch::{CR0_ET, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME};
use hvcore::config::GuestMode;
use hvcore::layout;
use svm::caps::EFER_SVME;
use svm::intercept::{CrIntercepts, DrIntercepts};
use svm::vmcb::{
    InterruptState, SegmentAttributes, SegmentRegister, VirtExtensions, Vmcb, PAT_RESET_VALUE,
};
use svm::{EventInfo, HostPhysAddr};

pub use crate::vtx::setup::{real_mode_cs, selectors};

use super::SvmSetup;

/// Per-vCPU addresses and the guest's starting point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestStart {
    /// Mode at reset.
    pub mode: GuestMode,
    /// Entry point (guest-physical; real mode: below 1 MiB).
    pub entry: u64,
    /// The nested page tables' root ([`svm::Npt::n_cr3`]).
    pub n_cr3: HostPhysAddr,
    /// The VM's ASID: 1..=[`SvmSetup::max_asid`], one per VM.
    pub asid: u32,
    /// The I/O permission map ([`super::perm::build_iopm`]), 4 KiB-aligned.
    pub iopm: HostPhysAddr,
    /// The MSR permission map ([`super::perm::build_msrpm`]), 4 KiB-aligned.
    pub msrpm: HostPhysAddr,
}

/// A VMCB that cannot be programmed as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramError {
    /// The ASID is 0 (the host's) or above the CPU's highest.
    Asid {
        /// The ASID asked for.
        asid: u32,
        /// The highest the CPU offers.
        max: u32,
    },
}

impl fmt::Display for ProgramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProgramError::Asid { asid, max } => write!(f, "ASID {asid} outside 1..={max}"),
        }
    }
}

/// EFER.NXE.
const EFER_NXE: u64 = 1 << 11;
/// CR0.NE.
const CR0_NE: u64 = 1 << 5;
/// DR6 at reset (APM Vol. 2, 13.1.1.5: bits 31:16 and 11:4 read as one).
pub const DR6_RESET: u64 = 0xFFFF_0FF0;
/// DR7 at reset: every breakpoint off.
pub const DR7_RESET: u64 = 0x400;

/// A flat segment from a boot-GDT descriptor: its attributes and a 4 GiB
/// limit (G=1, limit 0xFFFFF) or its byte limit.
fn from_gdt(selector: u16) -> SegmentRegister {
    let descriptor = selectors::GDT_ENTRIES
        .get(usize::from(selector >> 3))
        .copied()
        .unwrap_or(0);
    let attrib = SegmentAttributes::from_descriptor(descriptor);
    let raw_limit = ((descriptor & 0xFFFF) | ((descriptor >> 32) & 0xF_0000)) as u32;
    let limit = if attrib.is_granular() {
        (raw_limit << 12) | 0xFFF
    } else {
        raw_limit
    };
    SegmentRegister::new(selector, attrib, limit, 0)
}

/// After [`program`] with [`GuestMode::Real16`]: the state a start-up IPI
/// with `vector` gives an application processor (APM Vol. 2 16.5; SDM
/// Vol. 3A 9.4.4.1): CS selector `vector << 8`, base `vector << 12`, IP 0.
pub fn start_up(vmcb: &mut Vmcb, vector: u8) {
    let selector = u16::from(vector) << 8;
    vmcb.save.cs = SegmentRegister::new(
        selector,
        SegmentAttributes::CODE16,
        0xFFFF,
        u64::from(selector) << 4,
    );
    vmcb.save.rip = 0;
    vmcb.mark_all_dirty();
}

/// The debug registers whose reads exit until the vCPU has used one:
/// DR0-DR3, which the kernel switches only for vCPUs that use them (DR6 and
/// DR7 are VMCB fields, APM 15.5.1).
pub const DR_READS_UNTIL_USED: DrIntercepts = DrIntercepts::DR0
    .union(DrIntercepts::DR1)
    .union(DrIntercepts::DR2)
    .union(DrIntercepts::DR3);
/// The debug registers whose writes exit until the vCPU has used one: DR0-DR3
/// and DR7, which could otherwise arm the breakpoints of the DR0-DR3 the
/// hardware holds, another vCPU's.
pub const DR_WRITES_UNTIL_USED: DrIntercepts = DR_READS_UNTIL_USED.union(DrIntercepts::DR7);

/// Writes every control and guest-state field of a new vCPU's VMCB. Fields
/// not named here stay as they are (zero in a [`Vmcb::new`]).
pub fn program(vmcb: &mut Vmcb, setup: &SvmSetup, guest: &GuestStart) -> Result<(), ProgramError> {
    if guest.asid == 0 || guest.asid > setup.max_asid {
        return Err(ProgramError::Asid {
            asid: guest.asid,
            max: setup.max_asid,
        });
    }
    let c = &mut vmcb.control;
    // Intercepts (APM 15.7-15.14; the module docs say why).
    c.intercept_cr_read = CrIntercepts::empty();
    c.intercept_cr_write = setup.intercept_cr_write;
    // DR0-DR3 (and DR7 writes) until the vCPU first uses them
    // (`state::LazyRegs`).
    c.intercept_dr_read = DR_READS_UNTIL_USED;
    c.intercept_dr_write = DR_WRITES_UNTIL_USED;
    c.intercept_exceptions = setup.intercept_exceptions;
    c.intercept_vector3 = setup.intercept_vector3;
    c.intercept_vector4 = setup.intercept_vector4;
    c.tsc_offset = 0;
    c.guest_asid = guest.asid;
    // The ASID may hold another VM's translations from before: flush it.
    c.tlb_control = setup.tlb_flush as u8;
    c.vintr = setup.vintr;
    c.interrupt_state = InterruptState::empty();
    c.event_inj = EventInfo::NONE;
    c.virt_ext = if setup.optional.lbr_virtualization {
        VirtExtensions::LBR_VIRTUALIZATION
    } else {
        VirtExtensions::empty()
    };
    vmcb.set_permission_maps(guest.iopm, guest.msrpm);
    vmcb.set_nested_paging(guest.n_cr3);

    // Guest state (APM Table B-2).
    let s = &mut vmcb.save;
    let real = guest.mode == GuestMode::Real16;
    if real {
        let (selector, base, ip) = real_mode_cs(guest.entry);
        let data = SegmentRegister::new(0, SegmentAttributes::DATA16, 0xFFFF, 0);
        (s.es, s.ss, s.ds, s.fs, s.gs) = (data, data, data, data, data);
        s.cs = SegmentRegister::new(selector, SegmentAttributes::CODE16, 0xFFFF, base);
        s.tr = SegmentRegister::new(0, SegmentAttributes::TSS_BUSY, 0xFFFF, 0);
        s.gdtr = SegmentRegister::new(0, SegmentAttributes(0), 0xFFFF, 0);
        // The real-mode interrupt vector table at 0.
        s.idtr = SegmentRegister::new(0, SegmentAttributes(0), 0x3FF, 0);
        s.cr0 = CR0_ET;
        s.cr3 = 0;
        s.cr4 = 0;
        s.efer = EFER_SVME;
        s.rip = ip;
    } else if guest.mode == GuestMode::Protected32 {
        // Multiboot: 32-bit protected mode, flat segments, paging off.
        let data = from_gdt(selectors::DATA);
        (s.es, s.ss, s.ds, s.fs, s.gs) = (data, data, data, data, data);
        s.cs = from_gdt(selectors::CODE32);
        s.tr = from_gdt(selectors::TSS);
        s.gdtr = SegmentRegister::new(
            0,
            SegmentAttributes(0),
            (selectors::GDT_ENTRIES.len() * 8 - 1) as u32,
            layout::GDT,
        );
        s.idtr = SegmentRegister::NULL;
        s.cr0 = CR0_ET | CR0_PE | CR0_NE;
        s.cr3 = 0;
        s.cr4 = 0;
        s.efer = EFER_SVME;
        s.rip = guest.entry;
    } else {
        let data = from_gdt(selectors::DATA);
        (s.es, s.ss, s.ds, s.fs, s.gs) = (data, data, data, data, data);
        s.cs = from_gdt(selectors::CODE);
        s.tr = from_gdt(selectors::TSS);
        s.gdtr = SegmentRegister::new(
            0,
            SegmentAttributes(0),
            (selectors::GDT_ENTRIES.len() * 8 - 1) as u32,
            layout::GDT,
        );
        s.idtr = SegmentRegister::NULL;
        s.cr0 = CR0_ET | CR0_PE | CR0_NE | CR0_PG;
        s.cr3 = layout::PML4;
        s.cr4 = CR4_PAE;
        s.efer = EFER_LME | EFER_LMA | EFER_NXE | EFER_SVME;
        s.rip = guest.entry;
    }
    // LDTR unusable (not present).
    s.ldtr = SegmentRegister::NULL;
    s.cpl = 0;
    s.cr2 = 0;
    s.dr6 = DR6_RESET;
    s.dr7 = DR7_RESET;
    s.rflags = 0x2;
    s.rsp = 0;
    s.rax = 0;
    s.star = 0;
    s.lstar = 0;
    s.cstar = 0;
    s.sfmask = 0;
    s.kernel_gs_base = 0;
    s.sysenter_cs = 0;
    s.sysenter_esp = 0;
    s.sysenter_eip = 0;
    s.g_pat = PAT_RESET_VALUE;
    s.dbgctl = 0;
    vmcb.mark_all_dirty();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testcaps::bochs;
    use super::*;
    use svm::intercept::{InterceptVector3, InterceptVector4};
    use svm::vmcb::{NestedControl, TlbControl};

    fn start(mode: GuestMode, entry: u64) -> GuestStart {
        GuestStart {
            mode,
            entry,
            n_cr3: HostPhysAddr::new(0x30_0000),
            asid: 3,
            iopm: HostPhysAddr::new(0x20_0000),
            msrpm: HostPhysAddr::new(0x20_3000),
        }
    }

    fn programmed(mode: GuestMode, entry: u64) -> Vmcb {
        let mut v = Vmcb::new();
        program(&mut v, &bochs(), &start(mode, entry)).unwrap();
        v
    }

    #[test]
    fn long_mode_guest_fields() {
        let v = programmed(GuestMode::Long64, 0x10_0000);
        let s = &v.save;
        assert_eq!(s.rip, 0x10_0000);
        assert_eq!(s.cr0, 0x8000_0031);
        assert_eq!(s.cr3, layout::PML4);
        assert_eq!(s.cr4, 0x20, "no VMXE on AMD");
        assert_eq!(s.efer, 0x1d00, "LME|LMA|NXE|SVME");
        assert_eq!(
            s.cs,
            SegmentRegister::new(0x08, SegmentAttributes::CODE64, 0xFFFF_FFFF, 0)
        );
        for seg in [s.ds, s.es, s.ss, s.fs, s.gs] {
            assert_eq!(
                seg,
                SegmentRegister::new(0x10, SegmentAttributes::DATA32, 0xFFFF_FFFF, 0)
            );
        }
        assert_eq!(
            s.tr,
            SegmentRegister::new(0x18, SegmentAttributes::TSS_BUSY, 0x67, 0)
        );
        assert_eq!((s.gdtr.base, s.gdtr.limit), (layout::GDT, 47));
        assert_eq!((s.idtr.base, s.idtr.limit), (0, 0));
        assert!(!s.ldtr.attrib.is_present());
        assert_eq!((s.cpl, s.rflags, s.dr7, s.dr6), (0, 2, 0x400, 0xFFFF_0FF0));
        assert_eq!(s.g_pat, 0x0007_0406_0007_0406);
        assert_eq!(v.check_vmrun(), Ok(()));
    }

    #[test]
    fn controls_and_addresses() {
        let s = bochs();
        let v = programmed(GuestMode::Long64, 0x10_0000);
        let c = &v.control;
        assert_eq!(c.guest_asid, 3);
        // DR0-DR3 exit both ways and DR7 writes until the vCPU takes them.
        assert_eq!(c.intercept_dr_read, DrIntercepts::from_bits_retain(0xF));
        assert_eq!(c.intercept_dr_write, DrIntercepts::from_bits_retain(0x8F));
        assert_eq!(c.n_cr3, 0x30_0000);
        assert!(c.nested_control.contains(NestedControl::NP_ENABLE));
        assert_eq!((c.iopm_base_pa, c.msrpm_base_pa), (0x20_0000, 0x20_3000));
        assert_eq!(v.tlb_control(), Some(TlbControl::FlushGuest));
        assert!(c.vintr.v_intr_masking() && !c.vintr.v_irq());
        assert_eq!(c.intercept_cr_read, CrIntercepts::empty());
        // Only CR4 writes exit (reserved and hidden bits raise #GP).
        assert_eq!(c.intercept_cr_write, CrIntercepts::CR4);
        assert_eq!(c.intercept_vector3, s.intercept_vector3);
        assert!(c
            .intercept_vector3
            .contains(InterceptVector3::IOIO_PROT | InterceptVector3::MSR_PROT));
        assert!(c.intercept_vector4.contains(InterceptVector4::VMRUN));
        assert_eq!(c.intercept_exceptions, s.intercept_exceptions);
        assert_eq!(
            c.virt_ext,
            VirtExtensions::LBR_VIRTUALIZATION,
            "Bochs has LBR virtualization"
        );
        assert!(c.vmcb_clean.is_empty(), "first VMRUN loads everything");
        assert!(!c.event_inj.is_valid());
    }

    #[test]
    fn real_mode_fields() {
        let v = programmed(GuestMode::Real16, 0xFFF00);
        let s = &v.save;
        assert_eq!(
            s.cs,
            SegmentRegister::new(0xF000, SegmentAttributes::CODE16, 0xFFFF, 0xF0000)
        );
        assert_eq!(s.rip, 0xFF00);
        assert_eq!((s.cr0, s.cr3, s.cr4), (0x10, 0, 0));
        assert_eq!(s.efer, EFER_SVME, "SVME alone: VMRUN needs it");
        assert_eq!(
            s.ss,
            SegmentRegister::new(0, SegmentAttributes::DATA16, 0xFFFF, 0)
        );
        assert_eq!((s.idtr.base, s.idtr.limit), (0, 0x3FF));
        assert_eq!(v.check_vmrun(), Ok(()));
        let v = programmed(GuestMode::Real16, 0x7C00);
        assert_eq!(
            (v.save.cs.selector, v.save.cs.base, v.save.rip),
            (0, 0, 0x7C00)
        );
    }

    #[test]
    fn boot_gdt_gives_the_architectural_attributes() {
        assert_eq!(from_gdt(selectors::CODE).attrib, SegmentAttributes::CODE64);
        assert_eq!(from_gdt(selectors::DATA).attrib, SegmentAttributes::DATA32);
        assert_eq!(from_gdt(selectors::TSS).attrib, SegmentAttributes::TSS_BUSY);
        assert_eq!(
            from_gdt(0x40),
            SegmentRegister::new(0x40, SegmentAttributes(0), 0, 0),
            "past the table: null"
        );
    }

    #[test]
    fn asid_must_be_a_guest_asid() {
        let s = bochs();
        let mut v = Vmcb::new();
        for asid in [0, 0x8000] {
            let e = program(
                &mut v,
                &s,
                &GuestStart {
                    asid,
                    ..start(GuestMode::Long64, 0)
                },
            )
            .unwrap_err();
            assert_eq!(e, ProgramError::Asid { asid, max: 0x7fff });
            assert!(alloc::format!("{e}").contains("outside 1..=32767"));
        }
        assert_eq!(v, Vmcb::new(), "nothing written");
        assert!(program(
            &mut v,
            &s,
            &GuestStart {
                asid: 0x7fff,
                ..start(GuestMode::Long64, 0)
            }
        )
        .is_ok());
    }

    #[test]
    fn without_lbr_virtualization_or_flush_by_asid() {
        let s = super::super::SvmSetup::from_caps(
            &super::super::testcaps::caps(super::super::testcaps::EPYC_MODEL),
            super::super::testcaps::HOST,
        )
        .unwrap();
        let mut v = Vmcb::new();
        program(&mut v, &s, &start(GuestMode::Long64, 0x10_0000)).unwrap();
        assert_eq!(v.control.virt_ext, VirtExtensions::empty());
        assert_eq!(v.tlb_control(), Some(TlbControl::FlushAll));
    }
}
