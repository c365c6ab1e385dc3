//! [`GuestCpu`] over a VMCS: guest-visible control registers from the
//! guest/host masks and read shadows, MSRs from their guest-state fields,
//! and the registers the kernel switches lazily through [`LazyRegs`].

use hvcore::arch::{GuestCpu, GuestLimits, Reg, StateError};
use hvcore::msr_policy::{
    IA32_CSTAR, IA32_FMASK, IA32_KERNEL_GS_BASE, IA32_LSTAR, IA32_STAR, IA32_TSC_AUX,
};
use vmx::caps::PrimaryControls;
use vmx::vmcs::*;
use vmx::VmcsAccess;

use super::VmxSetup;

/// Segment access-rights bit 13: CS.L, 64-bit code (SDM Vol. 3C Table 25-2).
const AR_L: u32 = 1 << 13;

/// The guest registers that VMX neither loads nor saves and that the kernel
/// switches between vCPUs: the MSRs (SYSCALL MSRs, KERNEL_GS_BASE, TSC_AUX;
/// while a vCPU's exit is handled, the hardware holds its values) and, once
/// the vCPU has used them, DR0-DR3.
pub trait LazyRegs {
    /// RDMSR.
    fn read(&mut self, msr: u32) -> u64;
    /// WRMSR (the value was checked by policy).
    fn write(&mut self, msr: u32, value: u64);
    /// Whether the vCPU holds DR0-DR3 in hardware (else the backend
    /// intercepts its accesses to them).
    fn debug_owned(&self) -> bool;
    /// Loads the vCPU's DR0-DR3 into hardware, to be switched with it from
    /// now on (nothing when it holds them already).
    fn take_debug_registers(&mut self);
}

/// Per-vCPU state that lives in no VMCS field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// XCR0; the kernel loads it into hardware while the vCPU runs.
    pub xcr0: u64,
    /// CR8 when MOV CR8 exits (no TPR shadow).
    pub cr8: u64,
    /// A paging-mode bit changed by emulation: the vCPU's cached
    /// translations must be flushed before the next entry (SDM 29.4.3).
    pub flush_tlb: bool,
}

impl Default for SoftState {
    fn default() -> Self {
        SoftState {
            xcr0: 1,
            cr8: 0,
            flush_tlb: false,
        }
    }
}

/// A vCPU's backend-held state during one exit.
pub struct VmcsCpu<'a, V: VmcsAccess> {
    /// The vCPU's (current) VMCS.
    pub vmcs: &'a mut V,
    /// Boot-time decisions (masks, limits).
    pub setup: &'a VmxSetup,
    /// State kept in software.
    pub soft: &'a mut SoftState,
    /// Hardware MSRs switched with the vCPU.
    pub msrs: &'a mut dyn LazyRegs,
}

fn lazy_msr(reg: Reg) -> Option<u32> {
    Some(match reg {
        Reg::KernelGsBase => IA32_KERNEL_GS_BASE,
        Reg::Star => IA32_STAR,
        Reg::Lstar => IA32_LSTAR,
        Reg::Cstar => IA32_CSTAR,
        Reg::Fmask => IA32_FMASK,
        Reg::TscAux => IA32_TSC_AUX,
        _ => return None,
    })
}

impl<V: VmcsAccess> VmcsCpu<'_, V> {
    fn natural(&self, reg: Reg, f: VmcsFieldNatural) -> Result<u64, StateError> {
        self.vmcs.get(f).map_err(|_| StateError { reg })
    }

    fn shadowed(
        &self,
        reg: Reg,
        mask: u64,
        shadow: VmcsFieldNatural,
        real: VmcsFieldNatural,
    ) -> Result<u64, StateError> {
        Ok((self.natural(reg, shadow)? & mask) | (self.natural(reg, real)? & !mask))
    }
}

impl<V: VmcsAccess> GuestCpu for VmcsCpu<'_, V> {
    fn read(&mut self, reg: Reg) -> Result<u64, StateError> {
        let e = |_| StateError { reg };
        if let Some(msr) = lazy_msr(reg) {
            return Ok(self.msrs.read(msr));
        }
        match reg {
            Reg::Cr0 => self.shadowed(reg, self.setup.cr0_mask, CR0_READ_SHADOW, GUEST_CR0),
            Reg::Cr4 => self.shadowed(reg, self.setup.cr4_mask, CR4_READ_SHADOW, GUEST_CR4),
            Reg::Cr3 => self.natural(reg, GUEST_CR3),
            Reg::Cr8 => Ok(self.soft.cr8),
            Reg::Xcr0 => Ok(self.soft.xcr0),
            Reg::Efer => self.vmcs.get(GUEST_IA32_EFER).map_err(e),
            Reg::Rsp => self.natural(reg, GUEST_RSP),
            Reg::Rflags => self.natural(reg, GUEST_RFLAGS),
            // CPL is SS.DPL (SDM 27.3.1.2).
            Reg::Cpl => self
                .vmcs
                .get(GUEST_SS_AR_BYTES)
                .map(|ar| u64::from((ar >> 5) & 3))
                .map_err(e),
            // 64-bit mode: EFER.LMA and CS.L (access-rights bit 13).
            Reg::Mode64 => {
                let lma = self.vmcs.get(GUEST_IA32_EFER).map_err(e)? & hvcore::arch::EFER_LMA != 0;
                let cs_l = self.vmcs.get(GUEST_CS_AR_BYTES).map_err(e)? & AR_L != 0;
                Ok(u64::from(lma && cs_l))
            }
            Reg::FsBase => self.natural(reg, GUEST_FS_BASE),
            Reg::GsBase => self.natural(reg, GUEST_GS_BASE),
            Reg::SysenterCs => self.vmcs.get(GUEST_SYSENTER_CS).map(u64::from).map_err(e),
            Reg::SysenterEsp => self.natural(reg, GUEST_SYSENTER_ESP),
            Reg::SysenterEip => self.natural(reg, GUEST_SYSENTER_EIP),
            Reg::Pat => self.vmcs.get(GUEST_IA32_PAT).map_err(e),
            Reg::DebugCtl => self.vmcs.get(GUEST_IA32_DEBUGCTL).map_err(e),
            Reg::DebugRegisters => Ok(u64::from(self.msrs.debug_owned())),
            Reg::KernelGsBase | Reg::Star | Reg::Lstar | Reg::Cstar | Reg::Fmask | Reg::TscAux => {
                Err(StateError { reg })
            }
        }
    }

    fn write(&mut self, reg: Reg, value: u64) -> Result<(), StateError> {
        let e = |_| StateError { reg };
        if let Some(msr) = lazy_msr(reg) {
            self.msrs.write(msr, value);
            return Ok(());
        }
        match reg {
            Reg::Cr0 => {
                self.vmcs.set(CR0_READ_SHADOW, value).map_err(e)?;
                self.vmcs
                    .set(GUEST_CR0, self.setup.hardware_cr0(value))
                    .map_err(e)?;
                self.soft.flush_tlb = true;
            }
            Reg::Cr4 => {
                self.vmcs.set(CR4_READ_SHADOW, value).map_err(e)?;
                self.vmcs
                    .set(GUEST_CR4, self.setup.hardware_cr4(value))
                    .map_err(e)?;
                self.soft.flush_tlb = true;
            }
            Reg::Cr3 => {
                self.vmcs.set(GUEST_CR3, value).map_err(e)?;
                self.soft.flush_tlb = true;
            }
            Reg::Cr8 => self.soft.cr8 = value,
            Reg::Xcr0 => self.soft.xcr0 = value,
            Reg::Efer => {
                // EFER.LMA and the "IA-32e mode guest" entry control must
                // agree (SDM 27.3.1.1).
                self.vmcs.set(GUEST_IA32_EFER, value).map_err(e)?;
                let long_mode = value & hvcore::arch::EFER_LMA != 0;
                self.vmcs
                    .set(VM_ENTRY_CONTROLS, self.setup.entry_controls(long_mode))
                    .map_err(e)?;
            }
            Reg::Rsp => self.vmcs.set(GUEST_RSP, value).map_err(e)?,
            Reg::Rflags => self.vmcs.set(GUEST_RFLAGS, value).map_err(e)?,
            Reg::FsBase => self.vmcs.set(GUEST_FS_BASE, value).map_err(e)?,
            Reg::GsBase => self.vmcs.set(GUEST_GS_BASE, value).map_err(e)?,
            Reg::SysenterCs => self.vmcs.set(GUEST_SYSENTER_CS, value as u32).map_err(e)?,
            Reg::SysenterEsp => self.vmcs.set(GUEST_SYSENTER_ESP, value).map_err(e)?,
            Reg::SysenterEip => self.vmcs.set(GUEST_SYSENTER_EIP, value).map_err(e)?,
            Reg::Pat => self.vmcs.set(GUEST_IA32_PAT, value).map_err(e)?,
            Reg::DebugCtl => self.vmcs.set(GUEST_IA32_DEBUGCTL, value).map_err(e)?,
            // MOV DR stops exiting (SDM 26.1.3) once the hardware holds the
            // vCPU's DR0-DR3. (Idempotent: a VMCS programmed again exits
            // again.)
            Reg::DebugRegisters if value == 1 => {
                let primary = self.vmcs.get(CPU_BASED_VM_EXEC_CONTROL).map_err(e)?;
                let primary = primary & !PrimaryControls::MOV_DR_EXITING.bits();
                self.vmcs
                    .set(CPU_BASED_VM_EXEC_CONTROL, primary)
                    .map_err(e)?;
                self.msrs.take_debug_registers();
            }
            Reg::DebugRegisters
            | Reg::Cpl
            | Reg::Mode64
            | Reg::KernelGsBase
            | Reg::Star
            | Reg::Lstar
            | Reg::Cstar
            | Reg::Fmask
            | Reg::TscAux => return Err(StateError { reg }),
        }
        Ok(())
    }

    fn limits(&self) -> GuestLimits {
        self.setup.limits
    }
}

#[cfg(test)]
mod tests {
    use super::super::setup::{program, GuestStart, HostState};
    use super::super::testcaps::bochs;
    use super::super::{HostFeatures, VmxSetup};
    use super::*;
    use crate::testlazy::{hand_over_debug_registers, Msrs};
    use hvcore::config::GuestMode;
    use vmx::FakeVmcs;

    /// The exit handlers' view of `v` with fresh software state.
    fn exit_view<'a>(
        v: &'a mut FakeVmcs,
        setup: &'a VmxSetup,
        soft: &'a mut SoftState,
        msrs: &'a mut Msrs,
    ) -> VmcsCpu<'a, FakeVmcs> {
        VmcsCpu {
            vmcs: v,
            setup,
            soft,
            msrs,
        }
    }

    fn fixture() -> (FakeVmcs, VmxSetup) {
        let setup = VmxSetup::from_caps(
            &bochs(),
            HostFeatures {
                xcr0_supported: 7,
                phys_addr_bits: 40,
            },
        )
        .unwrap();
        let mut v = FakeVmcs::new();
        let start = GuestStart {
            mode: GuestMode::Long64,
            entry: 0x10_0000,
            eptp: 0,
            vpid: 1,
            msr_bitmap: 0,
            virtual_apic: 0,
        };
        program(&mut v, &setup, &HostState::default(), &start).unwrap();
        (v, setup)
    }

    #[test]
    fn cr0_cd_goes_to_the_shadow_only() {
        let (mut v, setup) = fixture();
        let (mut soft, mut msrs) = (SoftState::default(), Msrs::default());
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        cpu.write(Reg::Cr0, 0xC000_0031 | (1 << 31)).unwrap();
        assert_eq!(cpu.read(Reg::Cr0), Ok(0xC000_0031 | (1 << 31)));
        assert!(soft.flush_tlb);
        assert_eq!(
            v.get(GUEST_CR0),
            Ok(0x8000_0031),
            "hardware keeps caching on"
        );
    }

    #[test]
    fn cr4_vmxe_invisible_and_guest_bits_read_from_hardware() {
        let (mut v, setup) = fixture();
        // The guest set OSFXSR natively (a guest-owned bit: no exit).
        v.set(GUEST_CR4, 0x2220).unwrap();
        let (mut soft, mut msrs) = (SoftState::default(), Msrs::default());
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        assert_eq!(cpu.read(Reg::Cr4), Ok(0x220));
    }

    #[test]
    fn taking_the_debug_registers_ends_mov_dr_exiting() {
        let (mut v, setup) = fixture();
        let mov_dr = PrimaryControls::MOV_DR_EXITING.bits();
        assert_ne!(v.get(CPU_BASED_VM_EXEC_CONTROL).unwrap() & mov_dr, 0);
        let (mut soft, mut msrs) = (SoftState::default(), Msrs::default());
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        hand_over_debug_registers(&mut cpu);
        let primary = v.get(CPU_BASED_VM_EXEC_CONTROL).unwrap();
        assert_eq!(
            primary,
            setup.primary & !mov_dr,
            "only MOV-DR exiting cleared"
        );
        assert!(msrs.1);
    }

    #[test]
    fn efer_lma_sets_the_entry_control() {
        let (mut v, setup) = fixture();
        let (mut soft, mut msrs) = (SoftState::default(), Msrs::default());
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        cpu.write(Reg::Efer, 0x100).unwrap();
        assert_eq!(v.get(VM_ENTRY_CONTROLS), Ok(setup.entry_controls(false)));
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        cpu.write(Reg::Efer, 0x500).unwrap();
        assert_eq!(v.get(VM_ENTRY_CONTROLS), Ok(setup.entry_controls(true)));
    }

    #[test]
    fn msrs_route_to_vmcs_or_lazy_hardware() {
        let (mut v, setup) = fixture();
        let (mut soft, mut msrs) = (SoftState::default(), Msrs::default());
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        cpu.write(Reg::Lstar, 0xffff_8000_1234_0000).unwrap();
        cpu.write(Reg::FsBase, 0x7000).unwrap();
        cpu.write(Reg::SysenterCs, 0x10).unwrap();
        assert_eq!(cpu.read(Reg::Cpl), Ok(0));
        assert_eq!(msrs.read(IA32_LSTAR), 0xffff_8000_1234_0000);
        assert_eq!(v.get(GUEST_FS_BASE), Ok(0x7000));
        assert_eq!(v.get(GUEST_SYSENTER_CS), Ok(0x10));
    }

    #[test]
    fn a_failed_vmread_is_an_error() {
        let setup = VmxSetup::from_caps(&bochs(), HostFeatures::default()).unwrap();
        let mut v = FakeVmcs::new();
        let (mut soft, mut msrs) = (SoftState::default(), Msrs::default());
        let mut cpu = exit_view(&mut v, &setup, &mut soft, &mut msrs);
        assert_eq!(cpu.read(Reg::Cr0), Err(StateError { reg: Reg::Cr0 }));
    }
}
