//! [`GuestCpu`] over a VMCB. On AMD-V the guest-visible control registers
//! are the VMCB's own (nothing is masked or shadowed, see the
//! [module docs](super)), EFER differs only in SVME, CR8 is V_TPR, and the
//! MSRs are state-save fields: VMRUN/#VMEXIT switch EFER, G_PAT (and
//! DEBUGCTL with LBR virtualization), VMLOAD/VMSAVE the FS/GS/KERNEL_GS
//! bases and the SYSCALL and SYSENTER MSRs, which the kernel saves into the
//! VMCB at every #VMEXIT. Only TSC_AUX is switched by the kernel
//! ([`LazyRegs`]).
//!
//! Every write marks its VMCB clean-bit group dirty (APM 15.15.3), so the
//! processor reloads it at the next VMRUN.

use hvcore::arch::{GuestCpu, GuestLimits, Reg, StateError};
use hvcore::msr_policy::IA32_TSC_AUX;
use svm::caps::EFER_SVME;
use svm::intercept::DrIntercepts;
use svm::vmcb::{CleanBits, Vmcb};

pub use crate::vtx::state::LazyRegs;

use super::SvmSetup;

/// CR4 bits whose change invalidates translations (APM Vol. 2, 5.5.2;
/// SDM Vol. 3A 4.10.4.1): PSE, PAE, PGE, LA57, PCIDE, SMEP, SMAP, PKE.
pub const CR4_TLB_BITS: u64 =
    (1 << 4) | (1 << 5) | (1 << 7) | (1 << 12) | (1 << 17) | (1 << 20) | (1 << 21) | (1 << 22);

/// An XCR0 the hardware holds after a #VMEXIT that is not
/// [`SoftState::xcr0`]: the guest ran XSETBV without an exit (QEMU 7.2's TCG
/// does not implement the XSETBV intercept, see the module docs of
/// [`super`]), and the CPU has already checked the value as XSETBV does. It
/// becomes the vCPU's XCR0 when it holds only components the policy allows
/// ([`GuestLimits::xcr0_allowed`]); then `Ok(true)` (`Ok(false)`: nothing
/// changed). `Err(value)` names a value with other components: the caller
/// loads [`SoftState::xcr0`] back into the hardware and stops the VM (its
/// state in those components would not be switched).
pub fn native_xcr0(soft: &mut SoftState, limits: &GuestLimits, hardware: u64) -> Result<bool, u64> {
    if hardware == soft.xcr0 {
        return Ok(false);
    }
    if hardware & !limits.xcr0_allowed != 0 {
        return Err(hardware);
    }
    soft.xcr0 = hardware;
    Ok(true)
}

/// Per-vCPU state that lives in no VMCB field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// XCR0; the kernel loads it into hardware while the vCPU runs.
    pub xcr0: u64,
    /// EFER.SVME as the guest sees it. The hardware EFER always has it
    /// (VMRUN requires it); policy refuses guests the bit today, so this
    /// stays false, but a write through [`GuestCpu`] round-trips.
    pub efer_svme: bool,
    /// DEBUGCTL without LBR virtualization (never loaded into hardware).
    pub debugctl: u64,
    /// The vCPU's translations must be flushed at the next VMRUN
    /// ([`super::entry::before_vmrun`]): set when the hypervisor changes a
    /// paging-mode register or the nested page tables, and for a new vCPU
    /// (its ASID may hold an earlier VM's translations).
    pub flush_tlb: bool,
}

impl Default for SoftState {
    fn default() -> Self {
        SoftState {
            xcr0: 1,
            efer_svme: false,
            debugctl: 0,
            flush_tlb: true,
        }
    }
}

/// A vCPU's backend-held state during one exit.
pub struct VmcbCpu<'a> {
    /// The vCPU's VMCB (VMSAVEd by the kernel since the #VMEXIT).
    pub vmcb: &'a mut Vmcb,
    /// Boot-time decisions (limits, LBR virtualization).
    pub setup: &'a SvmSetup,
    /// State kept in software.
    pub soft: &'a mut SoftState,
    /// TSC_AUX, switched by the kernel with the vCPU.
    pub msrs: &'a mut dyn LazyRegs,
}

impl VmcbCpu<'_> {
    /// Points `reg` at its VMCB field: the field and the clean-bit group a
    /// write must mark dirty (empty for fields the processor never caches).
    fn field(&mut self, reg: Reg) -> Option<(&mut u64, CleanBits)> {
        let s = &mut self.vmcb.save;
        Some(match reg {
            Reg::Cr0 => (&mut s.cr0, CleanBits::CRX),
            Reg::Cr3 => (&mut s.cr3, CleanBits::CRX),
            Reg::Cr4 => (&mut s.cr4, CleanBits::CRX),
            Reg::Rsp => (&mut s.rsp, CleanBits::empty()),
            Reg::Rflags => (&mut s.rflags, CleanBits::empty()),
            Reg::FsBase => (&mut s.fs.base, CleanBits::empty()),
            Reg::GsBase => (&mut s.gs.base, CleanBits::empty()),
            Reg::KernelGsBase => (&mut s.kernel_gs_base, CleanBits::empty()),
            Reg::Star => (&mut s.star, CleanBits::empty()),
            Reg::Lstar => (&mut s.lstar, CleanBits::empty()),
            Reg::Cstar => (&mut s.cstar, CleanBits::empty()),
            Reg::Fmask => (&mut s.sfmask, CleanBits::empty()),
            Reg::SysenterCs => (&mut s.sysenter_cs, CleanBits::empty()),
            Reg::SysenterEsp => (&mut s.sysenter_esp, CleanBits::empty()),
            Reg::SysenterEip => (&mut s.sysenter_eip, CleanBits::empty()),
            Reg::Pat => (&mut s.g_pat, CleanBits::NP),
            Reg::DebugCtl if self.setup.optional.lbr_virtualization => {
                (&mut s.dbgctl, CleanBits::LBR)
            }
            Reg::DebugCtl => (&mut self.soft.debugctl, CleanBits::empty()),
            Reg::Xcr0 => (&mut self.soft.xcr0, CleanBits::empty()),
            Reg::Cr8 | Reg::Efer | Reg::Cpl | Reg::Mode64 | Reg::TscAux | Reg::DebugRegisters => {
                return None
            }
        })
    }
}

impl GuestCpu for VmcbCpu<'_> {
    fn read(&mut self, reg: Reg) -> Result<u64, StateError> {
        Ok(match reg {
            Reg::Cr8 => u64::from(self.vmcb.control.vintr.v_tpr()),
            Reg::Efer => {
                let svme = if self.soft.efer_svme { EFER_SVME } else { 0 };
                (self.vmcb.save.efer & !EFER_SVME) | svme
            }
            Reg::Cpl => u64::from(self.vmcb.save.cpl & 3),
            Reg::Mode64 => u64::from(
                self.vmcb.save.efer & hvcore::arch::EFER_LMA != 0
                    && self.vmcb.save.cs.attrib.is_long(),
            ),
            Reg::TscAux => self.msrs.read(IA32_TSC_AUX),
            Reg::DebugRegisters => u64::from(self.msrs.debug_owned()),
            other => match self.field(other) {
                Some((value, _)) => *value,
                None => return Err(StateError { reg }),
            },
        })
    }

    fn write(&mut self, reg: Reg, value: u64) -> Result<(), StateError> {
        match reg {
            Reg::Cr8 => {
                // V_TPR holds TPR bits 3:0 (CR8 bits 63:4 are reserved and
                // checked by policy).
                let c = &mut self.vmcb.control;
                c.vintr = c.vintr.with_v_tpr(value as u8);
                self.vmcb.mark_dirty(CleanBits::TPR);
            }
            Reg::Efer => {
                self.soft.efer_svme = value & EFER_SVME != 0;
                self.vmcb.save.efer = value | EFER_SVME;
                self.vmcb.mark_dirty(CleanBits::CRX);
            }
            Reg::TscAux => self.msrs.write(IA32_TSC_AUX, value),
            // DR0-DR3 accesses stop exiting once the hardware holds the
            // vCPU's (DR6 and DR7 are VMCB fields, never intercepted).
            // (Idempotent: a VMCB programmed again intercepts them again.)
            Reg::DebugRegisters if value == 1 => {
                let c = &mut self.vmcb.control;
                c.intercept_dr_read = DrIntercepts::empty();
                c.intercept_dr_write = DrIntercepts::empty();
                self.vmcb.mark_dirty(CleanBits::INTERCEPTS);
                self.msrs.take_debug_registers();
            }
            Reg::Cpl | Reg::Mode64 | Reg::DebugRegisters => return Err(StateError { reg }),
            other => {
                let (field, group) = self.field(other).ok_or(StateError { reg })?;
                let old = core::mem::replace(field, value);
                self.vmcb.mark_dirty(group);
                // VMRUN does not treat a new CR value in the VMCB as the
                // guest's MOV CR: its cached translations stay. A CR4 write
                // (intercepted: one per guest MOV CR4) flushes only when a
                // bit that changes translation does, as MOV CR4 would.
                let flush = match reg {
                    Reg::Cr0 | Reg::Cr3 => true,
                    Reg::Cr4 => (old ^ value) & CR4_TLB_BITS != 0,
                    _ => false,
                };
                self.soft.flush_tlb |= flush;
            }
        }
        Ok(())
    }

    fn limits(&self) -> GuestLimits {
        self.setup.limits
    }
}

#[cfg(test)]
mod tests {
    use super::super::setup::{program, GuestStart};
    use super::super::testcaps::{bochs, caps, EPYC_MODEL, HOST};
    use super::*;
    use crate::testlazy::{hand_over_debug_registers, Msrs};
    use hvcore::arch::{EFER_LMA, EFER_LME};
    use hvcore::config::GuestMode;
    use svm::HostPhysAddr;

    /// The exit handlers' view of `v` with fresh software state.
    fn exit_view<'a>(
        v: &'a mut Vmcb,
        setup: &'a SvmSetup,
        soft: &'a mut SoftState,
        msrs: &'a mut Msrs,
    ) -> VmcbCpu<'a> {
        VmcbCpu {
            vmcb: v,
            setup,
            soft,
            msrs,
        }
    }

    fn fixture(setup: &SvmSetup) -> Vmcb {
        let mut v = Vmcb::new();
        let start = GuestStart {
            mode: GuestMode::Long64,
            entry: 0x10_0000,
            n_cr3: HostPhysAddr::new(0x5000),
            asid: 1,
            iopm: HostPhysAddr::new(0x6000),
            msrpm: HostPhysAddr::new(0x9000),
        };
        program(&mut v, setup, &start).unwrap();
        // As after a #VMEXIT on a CPU with clean bits.
        v.mark_all_clean();
        v
    }

    #[test]
    fn control_registers_are_the_vmcb_values() {
        let setup = bochs();
        let mut v = fixture(&setup);
        let (mut soft, mut msrs) = (
            SoftState {
                flush_tlb: false,
                ..SoftState::default()
            },
            Msrs::default(),
        );
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        assert_eq!(cpu.read(Reg::Cr0), Ok(0x8000_0031));
        assert_eq!(cpu.read(Reg::Cr4), Ok(0x20));
        // CD/NW go to the hardware CR0: #VMEXIT reloads the host's CR0.
        cpu.write(Reg::Cr0, 0xE000_0031).unwrap();
        cpu.write(Reg::Cr3, 0x7000).unwrap();
        assert_eq!(cpu.read(Reg::Cr0), Ok(0xE000_0031));
        assert_eq!((v.save.cr0, v.save.cr3), (0xE000_0031, 0x7000));
        assert!(!v.control.vmcb_clean.contains(CleanBits::CRX));
        assert!(
            v.control.vmcb_clean.contains(CleanBits::SEG),
            "only the CRx group is dirty"
        );
        assert!(soft.flush_tlb);
    }

    #[test]
    fn cr4_writes_flush_only_for_translation_bits() {
        let setup = bochs();
        let mut v = fixture(&setup);
        let mut soft = SoftState {
            flush_tlb: false,
            ..SoftState::default()
        };
        let mut msrs = Msrs::default();
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        // OSFXSR, OSXMMEXCPT, OSXSAVE, TSD: no flush.
        cpu.write(Reg::Cr4, 0x20 | (1 << 9) | (1 << 10) | (1 << 18) | (1 << 2))
            .unwrap();
        assert!(!cpu.soft.flush_tlb);
        assert_eq!(
            cpu.read(Reg::Cr4),
            Ok(0x20 | (1 << 9) | (1 << 10) | (1 << 18) | (1 << 2))
        );
        // PGE on (as Linux toggles it to flush global pages): flush.
        cpu.write(Reg::Cr4, 0x20 | (1 << 7)).unwrap();
        assert!(cpu.soft.flush_tlb);
        assert!(!v.control.vmcb_clean.contains(CleanBits::CRX));
    }

    #[test]
    fn xcr0_set_without_an_exit_is_adopted_within_policy() {
        let setup = bochs();
        let mut soft = SoftState::default();
        assert_eq!(native_xcr0(&mut soft, &setup.limits, 1), Ok(false));
        // The guest's native XSETBV of x87|SSE|AVX (QEMU's TCG).
        assert_eq!(native_xcr0(&mut soft, &setup.limits, 7), Ok(true));
        assert_eq!(soft.xcr0, 7);
        assert_eq!(native_xcr0(&mut soft, &setup.limits, 3), Ok(true));
        // PKRU (bit 9) is not offered to guests: refused, XCR0 kept.
        assert_eq!(native_xcr0(&mut soft, &setup.limits, 0x203), Err(0x203));
        assert_eq!(soft.xcr0, 3);
    }

    #[test]
    fn efer_svme_is_hidden_and_kept_in_hardware() {
        let setup = bochs();
        let mut v = fixture(&setup);
        let (mut soft, mut msrs) = (SoftState::default(), Msrs::default());
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        assert_eq!(cpu.read(Reg::Efer), Ok(0xd00), "LME|LMA|NXE, no SVME");
        cpu.write(Reg::Efer, EFER_LME).unwrap();
        assert_eq!(cpu.read(Reg::Efer), Ok(EFER_LME));
        assert_eq!(v.save.efer, EFER_LME | EFER_SVME, "VMRUN needs SVME");
        assert!(!v.control.vmcb_clean.contains(CleanBits::CRX));
        // A write with SVME round-trips through the shadow.
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        cpu.write(Reg::Efer, EFER_LME | EFER_LMA | EFER_SVME)
            .unwrap();
        assert_eq!(cpu.read(Reg::Efer), Ok(EFER_LME | EFER_LMA | EFER_SVME));
        assert!(soft.efer_svme);
        assert_eq!(v.check_vmrun(), Ok(()));
    }

    #[test]
    fn cr8_is_v_tpr() {
        let setup = bochs();
        let mut v = fixture(&setup);
        let (mut soft, mut msrs) = (SoftState::default(), Msrs::default());
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        cpu.write(Reg::Cr8, 0xB).unwrap();
        assert_eq!(cpu.read(Reg::Cr8), Ok(0xB));
        assert_eq!(v.control.vintr.v_tpr(), 0xB);
        assert!(v.control.vintr.v_intr_masking(), "masking stays on");
        assert!(!v.control.vmcb_clean.contains(CleanBits::TPR));
    }

    #[test]
    fn msrs_route_to_the_state_save_area_or_the_kernel() {
        let setup = bochs();
        let mut v = fixture(&setup);
        let (mut soft, mut msrs) = (
            SoftState {
                flush_tlb: false,
                ..SoftState::default()
            },
            Msrs::default(),
        );
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        let writes = [
            (Reg::FsBase, 0xF5),
            (Reg::GsBase, 0x65),
            (Reg::KernelGsBase, 0x9B),
            (Reg::Star, 0x5A),
            (Reg::Lstar, 0xFFFF_8000_1234_0000),
            (Reg::Cstar, 0xC5A),
            (Reg::Fmask, 0x47700),
            (Reg::SysenterCs, 0x10),
            (Reg::SysenterEsp, 0x5E5),
            (Reg::SysenterEip, 0x5E1),
            (Reg::Pat, 0x0007_0406_0007_0106),
            (Reg::DebugCtl, 1),
            (Reg::TscAux, 7),
            (Reg::Rsp, 0x8000),
            (Reg::Rflags, 0x202),
            (Reg::Xcr0, 7),
        ];
        for (reg, value) in writes {
            cpu.write(reg, value).unwrap();
            assert_eq!(cpu.read(reg), Ok(value), "{reg:?}");
        }
        let s = &v.save;
        assert_eq!((s.fs.base, s.gs.base, s.kernel_gs_base), (0xF5, 0x65, 0x9B));
        assert_eq!(
            (s.star, s.lstar, s.cstar, s.sfmask),
            (0x5A, 0xFFFF_8000_1234_0000, 0xC5A, 0x47700)
        );
        assert_eq!(
            (s.sysenter_cs, s.sysenter_esp, s.sysenter_eip),
            (0x10, 0x5E5, 0x5E1)
        );
        assert_eq!(
            (s.g_pat, s.dbgctl, s.rsp, s.rflags),
            (0x0007_0406_0007_0106, 1, 0x8000, 0x202)
        );
        assert_eq!(msrs.read(IA32_TSC_AUX), 7);
        assert_eq!(soft.xcr0, 7);
        // G_PAT (NP) and DBGCTL (LBR) dirty; VMLOAD state has no clean bit.
        assert!(!v
            .control
            .vmcb_clean
            .intersects(CleanBits::NP | CleanBits::LBR));
        assert!(v
            .control
            .vmcb_clean
            .contains(CleanBits::SEG | CleanBits::CRX));
        assert!(!soft.flush_tlb, "MSR writes leave the TLB alone");
    }

    #[test]
    fn taking_the_debug_registers_ends_their_intercepts() {
        let setup = SvmSetup::from_caps(&caps(EPYC_MODEL), HOST).unwrap();
        let mut v = fixture(&setup);
        assert_eq!(v.control.intercept_dr_read.bits(), 0xF);
        v.control.vmcb_clean = CleanBits::all();
        let (mut soft, mut msrs) = (SoftState::default(), Msrs::default());
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        hand_over_debug_registers(&mut cpu);
        let c = &v.control;
        assert!(c.intercept_dr_read.is_empty() && c.intercept_dr_write.is_empty());
        // The processor reloads the intercepts at the next VMRUN.
        assert!(!c.vmcb_clean.contains(CleanBits::INTERCEPTS));
        assert!(msrs.1);
    }

    #[test]
    fn debugctl_without_lbr_virtualization_stays_in_software() {
        let setup = SvmSetup::from_caps(&caps(EPYC_MODEL), HOST).unwrap();
        let mut v = fixture(&setup);
        let (mut soft, mut msrs) = (SoftState::default(), Msrs::default());
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        cpu.write(Reg::DebugCtl, 2).unwrap();
        assert_eq!(cpu.read(Reg::DebugCtl), Ok(2));
        assert_eq!((v.save.dbgctl, soft.debugctl), (0, 2));
    }

    #[test]
    fn cpl_from_the_vmcb_and_read_only() {
        let setup = bochs();
        let mut v = fixture(&setup);
        v.save.cpl = 3;
        let (mut soft, mut msrs) = (SoftState::default(), Msrs::default());
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        assert_eq!(cpu.read(Reg::Cpl), Ok(3));
        assert_eq!(cpu.write(Reg::Cpl, 0), Err(StateError { reg: Reg::Cpl }));
        assert_eq!(cpu.limits(), setup.limits);
    }
}
