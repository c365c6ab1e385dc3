//! MSR policy: an explicit allow list with per-VM virtual values.
//!
//! Handled for [`Exit::Rdmsr`](crate::exit::Exit::Rdmsr) and
//! [`Exit::Wrmsr`](crate::exit::Exit::Wrmsr). A read returns the value in
//! EDX:EAX (upper halves of RAX/RDX cleared) and advances RIP; a write updates
//! the VM's [`MsrState`] and advances RIP. Any MSR not listed, a write to a
//! read-only MSR, or a value hardware would reject injects `#GP(0)` (RIP not
//! advanced), so the guest sees exactly what a real CPU without the feature
//! would do.
//!
//! | MSR | index | read | write |
//! |-----|-------|------|-------|
//! | IA32_TSC | 0x10 | host ticks + per-VM offset | sets the offset |
//! | IA32_FEATURE_CONTROL | 0x3A | locked, VMX off (`1`) | #GP (locked) |
//! | IA32_BIOS_SIGN_ID | 0x8B | 0 (no microcode reported) | ignored |
//! | IA32_APIC_BASE | 0x1B | #GP: no local APIC is virtualized (CPUID.1:EDX.APIC = 0), as on a CPU without one | #GP |
//! | IA32_MTRRCAP | 0xFE | 0 (no fixed/variable ranges, no WC) | #GP |
//! | IA32_SYSENTER_CS/ESP/EIP | 0x174-0x176 | virtual | virtual (ESP/EIP canonical) |
//! | IA32_MISC_ENABLE | 0x1A0 | fast strings, BTS/PEBS unavailable | ignored |
//! | IA32_PAT | 0x277 | virtual (reset `0x0007040600070406`) | virtual, memory types checked |
//! | IA32_MTRR_DEF_TYPE | 0x2FF | virtual (reset: MTRRs on, WB) | virtual, checked |
//! | IA32_STAR | 0xC000_0081 | virtual | virtual |
//! | IA32_LSTAR / IA32_CSTAR | 0xC000_0082/83 | virtual | virtual (canonical) |
//! | IA32_FMASK | 0xC000_0084 | virtual | virtual (bits 63:32 ignored) |
//! | IA32_FS_BASE / GS_BASE / KERNEL_GS_BASE | 0xC000_0100-102 | virtual | virtual (canonical) |
//! | AMD NB_CFG, interrupt pending message (AMD CPUs only) | 0xC001_001F, 0xC001_0055 | 0 | ignored |
//!
//! Notes: IA32_EFER (0xC000_0080) lives in the VMCS/VMCB guest state and the
//! backend does not exit on it; if an exit for it arrives anyway it is treated
//! as unknown (#GP). The backend may also pass the FS/GS/KERNEL_GS bases and the
//! SYSCALL MSRs through (loading them from the VMCS or on switch); the values
//! here are then the ones it should load, and stay correct if it exits instead.
//! IA32_TSC is only consulted when RDMSR/WRMSR of it exits; the backend that
//! lets RDTSC run natively should program [`MsrState::tsc_offset`] as its TSC
//! offset.

pub(crate) use crate::arch::state_failure;
use crate::arch::{Action, Event, GuestCpu, GuestRegs, Platform, Reg, StateError};

/// IA32_TSC.
pub const IA32_TSC: u32 = 0x10;
/// IA32_APIC_BASE.
pub const IA32_APIC_BASE: u32 = 0x1B;
/// IA32_FEATURE_CONTROL.
pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
/// IA32_BIOS_SIGN_ID (microcode revision).
pub const IA32_BIOS_SIGN_ID: u32 = 0x8B;
/// IA32_MTRRCAP.
pub const IA32_MTRRCAP: u32 = 0xFE;
/// IA32_SYSENTER_CS.
pub const IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const IA32_MISC_ENABLE: u32 = 0x1A0;
/// IA32_PAT.
pub const IA32_PAT: u32 = 0x277;
/// IA32_MTRR_DEF_TYPE.
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2FF;
/// IA32_EFER (not handled here, see module docs).
pub const IA32_EFER: u32 = 0xC000_0080;
/// IA32_STAR.
pub const IA32_STAR: u32 = 0xC000_0081;
/// IA32_LSTAR.
pub const IA32_LSTAR: u32 = 0xC000_0082;
/// IA32_CSTAR.
pub const IA32_CSTAR: u32 = 0xC000_0083;
/// IA32_FMASK.
pub const IA32_FMASK: u32 = 0xC000_0084;
/// IA32_FS_BASE.
pub const IA32_FS_BASE: u32 = 0xC000_0100;
/// IA32_GS_BASE.
pub const IA32_GS_BASE: u32 = 0xC000_0101;
/// IA32_KERNEL_GS_BASE.
pub const IA32_KERNEL_GS_BASE: u32 = 0xC000_0102;
/// AMD's northbridge configuration (NB_CFG, families 10h-17h): Linux reads
/// it and sets EnableCF8ExtCfg (bit 46) for PCI's extended configuration
/// space, which a VM has no host northbridge for.
pub const AMD64_NB_CFG: u32 = 0xC001_001F;
/// AMD's interrupt pending message register (families 0Fh and 10h, C1E):
/// Linux reads it for erratum 400.
pub const AMD_INT_PENDING_MSG: u32 = 0xC001_0055;

/// APIC base: default address, global enable (bit 11), BSP (bit 8).
pub const APIC_BASE_VALUE: u64 = 0xFEE0_0000 | (1 << 11) | (1 << 8);
/// IA32_FEATURE_CONTROL: lock bit set, VMX disabled inside and outside SMX.
pub const FEATURE_CONTROL_VALUE: u64 = 1;
/// IA32_MISC_ENABLE: fast strings (0), BTS unavailable (11), PEBS unavailable (12).
pub const MISC_ENABLE_VALUE: u64 = (1 << 0) | (1 << 11) | (1 << 12);
/// Power-on value of IA32_PAT.
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;
/// Reset value of IA32_MTRR_DEF_TYPE: MTRRs enabled (bit 11), default write-back.
pub const MTRR_DEF_TYPE_RESET: u64 = (1 << 11) | 6;

/// Per-vCPU MSR values kept in software (the MSRs that live in hardware or
/// in the VMCS/VMCB are reached through [`GuestCpu`], see [`hardware_reg`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrState {
    /// Added to the host tick count to form the guest TSC.
    pub tsc_offset: u64,
    /// IA32_MTRR_DEF_TYPE.
    pub mtrr_def_type: u64,
}

impl Default for MsrState {
    fn default() -> Self {
        MsrState {
            tsc_offset: 0,
            mtrr_def_type: MTRR_DEF_TYPE_RESET,
        }
    }
}

/// IA32_DEBUGCTL (SDM Vol. 4, Table 2-2).
pub const IA32_DEBUGCTL: u32 = 0x1D9;
/// IA32_TSC_AUX.
pub const IA32_TSC_AUX: u32 = 0xC000_0103;
/// DEBUGCTL bits a guest may set: LBR (0) and BTF (1). Branch-trace store and
/// the rest would write host-chosen buffers or need PMU support.
pub const DEBUGCTL_ALLOWED: u64 = 0b11;
/// EFER bits a guest may write: SCE (0), LME (8), NXE (11); LMA (10) is read
/// only (SDM Vol. 3A 2.2.1).
pub const EFER_WRITABLE: u64 = (1 << 0) | (1 << 8) | (1 << 11);
pub use crate::arch::{EFER_LMA, EFER_LME};

/// The guest register behind `msr` when the MSR lives in hardware or in the
/// backend's control block rather than in [`MsrState`].
pub fn hardware_reg(msr: u32) -> Option<Reg> {
    Some(match msr {
        IA32_SYSENTER_CS => Reg::SysenterCs,
        IA32_SYSENTER_ESP => Reg::SysenterEsp,
        IA32_SYSENTER_EIP => Reg::SysenterEip,
        IA32_DEBUGCTL => Reg::DebugCtl,
        IA32_PAT => Reg::Pat,
        IA32_EFER => Reg::Efer,
        IA32_STAR => Reg::Star,
        IA32_LSTAR => Reg::Lstar,
        IA32_CSTAR => Reg::Cstar,
        IA32_FMASK => Reg::Fmask,
        IA32_FS_BASE => Reg::FsBase,
        IA32_GS_BASE => Reg::GsBase,
        IA32_KERNEL_GS_BASE => Reg::KernelGsBase,
        IA32_TSC_AUX => Reg::TscAux,
        _ => return None,
    })
}

/// Checks a guest write to a hardware-held MSR the way the CPU would;
/// `current` reads the register's present value (EFER needs it).
fn check_hardware_write(
    reg: Reg,
    value: u64,
    cpu: &mut dyn GuestCpu,
) -> Result<Result<u64, MsrError>, StateError> {
    let canonical = |v: u64| {
        if is_canonical(v) {
            Ok(v)
        } else {
            Err(MsrError::InvalidValue)
        }
    };
    Ok(match reg {
        Reg::SysenterCs => Ok(value & 0xFFFF_FFFF),
        Reg::Fmask | Reg::TscAux => {
            if value >> 32 == 0 {
                Ok(value)
            } else {
                Err(MsrError::InvalidValue)
            }
        }
        Reg::Star => Ok(value),
        Reg::Pat if valid_pat(value) => Ok(value),
        Reg::Pat => Err(MsrError::InvalidValue),
        Reg::DebugCtl if value & !DEBUGCTL_ALLOWED == 0 => Ok(value),
        Reg::DebugCtl => Err(MsrError::InvalidValue),
        Reg::Efer => {
            let old = cpu.read(Reg::Efer)?;
            let paging = cpu.read(Reg::Cr0)? & crate::arch::CR0_PG != 0;
            if value & !(EFER_WRITABLE | EFER_LMA) != 0 || (paging && (value ^ old) & EFER_LME != 0)
            {
                Err(MsrError::InvalidValue)
            } else {
                Ok((value & EFER_WRITABLE) | (old & EFER_LMA))
            }
        }
        _ => canonical(value),
    })
}

/// Why an MSR access is refused (the guest gets `#GP(0)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrError {
    /// Not on the allow list.
    Unknown,
    /// Allowed for reading only.
    ReadOnly,
    /// A value hardware would reject (reserved bits, bad memory type,
    /// non-canonical address).
    InvalidValue,
}

/// CPUID 0's vendor "AuthenticAMD" in EBX.
const VENDOR_AMD_EBX: u32 = 0x6874_7541;

/// An MSR of AMD's CPUs that guests touch but whose effect concerns only
/// the host (its northbridge, its C1E): reads give 0 and writes are
/// ignored, as under KVM. On an Intel CPU (the guest sees the host's
/// vendor) it does not exist: #GP, as the allow list gives.
fn amd_inert(msr: u32, env: &dyn Platform) -> bool {
    matches!(msr, AMD64_NB_CFG | AMD_INT_PENDING_MSG) && env.host_cpuid(0, 0)[1] == VENDOR_AMD_EBX
}

fn is_canonical(addr: u64) -> bool {
    let top = (addr as i64) >> 47;
    top == 0 || top == -1
}

/// PAT entries must be UC(0), WC(1), WT(4), WP(5), WB(6) or UC-(7).
fn valid_pat(value: u64) -> bool {
    value
        .to_le_bytes()
        .iter()
        .all(|&t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7))
}

/// Bits 7:0 type (UC, WC, WT, WP, WB), bit 10 FE, bit 11 E; the rest reserved.
fn valid_mtrr_def_type(value: u64) -> bool {
    value & !0xCFF == 0 && matches!(value & 0xFF, 0 | 1 | 4 | 5 | 6)
}

impl MsrState {
    /// The guest's value of a software-kept `msr` at host time `now_ticks`.
    pub fn read(&self, msr: u32, now_ticks: u64) -> Result<u64, MsrError> {
        Ok(match msr {
            IA32_TSC => now_ticks.wrapping_add(self.tsc_offset),
            IA32_FEATURE_CONTROL => FEATURE_CONTROL_VALUE,
            IA32_BIOS_SIGN_ID => 0,
            IA32_MTRRCAP => 0,
            IA32_MISC_ENABLE => MISC_ENABLE_VALUE,
            IA32_MTRR_DEF_TYPE => self.mtrr_def_type,
            _ => return Err(MsrError::Unknown),
        })
    }

    /// Applies a guest write of `value` to a software-kept `msr` at host
    /// time `now_ticks`.
    pub fn write(&mut self, msr: u32, value: u64, now_ticks: u64) -> Result<(), MsrError> {
        match msr {
            IA32_TSC => self.tsc_offset = value.wrapping_sub(now_ticks),
            IA32_FEATURE_CONTROL | IA32_MTRRCAP => return Err(MsrError::ReadOnly),
            IA32_BIOS_SIGN_ID | IA32_MISC_ENABLE => {}
            IA32_MTRR_DEF_TYPE if valid_mtrr_def_type(value) => self.mtrr_def_type = value,
            IA32_MTRR_DEF_TYPE => return Err(MsrError::InvalidValue),
            _ => return Err(MsrError::Unknown),
        }
        Ok(())
    }
}

/// Handles an RDMSR exit.
pub fn handle_read(
    msrs: &mut MsrState,
    msr: u32,
    regs: &mut GuestRegs,
    env: &mut dyn Platform,
) -> Action {
    let value = match hardware_reg(msr) {
        Some(reg) => match env.guest_cpu().read(reg) {
            Ok(v) => Ok(v),
            Err(e) => return state_failure(e, regs),
        },
        None => match msrs.read(msr, env.now_ticks()) {
            Err(MsrError::Unknown) if amd_inert(msr, env) => Ok(0),
            other => other,
        },
    };
    match value {
        Ok(v) => {
            regs.rax = v & 0xFFFF_FFFF;
            regs.rdx = v >> 32;
            Action::AdvanceRip
        }
        Err(_) => Action::Inject(Event::GP0),
    }
}

/// Handles a WRMSR exit.
pub fn handle_write(
    msrs: &mut MsrState,
    msr: u32,
    value: u64,
    regs: &GuestRegs,
    env: &mut dyn Platform,
) -> Action {
    let result = match hardware_reg(msr) {
        Some(reg) => {
            let cpu = env.guest_cpu();
            match check_hardware_write(reg, value, cpu) {
                Ok(Ok(v)) => cpu.write(reg, v).map(Ok),
                Ok(Err(e)) => Ok(Err(e)),
                Err(e) => Err(e),
            }
        }
        None => Ok(match msrs.write(msr, value, env.now_ticks()) {
            Err(MsrError::Unknown) if amd_inert(msr, env) => Ok(()),
            other => other,
        }),
    };
    match result {
        Ok(Ok(())) => Action::AdvanceRip,
        Ok(Err(_)) => Action::Inject(Event::GP0),
        Err(e) => state_failure(e, regs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::StopReason;
    use crate::exit::testenv::FakePlatform;
    use crate::exit::{handle_exit, Exit};
    use crate::vcpu::{VcpuState, VmContext};

    fn setup() -> (VmContext, FakePlatform, GuestRegs) {
        (
            VmContext::new(1, "msr"),
            FakePlatform::new(),
            GuestRegs {
                rax: u64::MAX,
                rdx: u64::MAX,
                ..Default::default()
            },
        )
    }

    #[test]
    fn unknown_msr_injects_gp() {
        let (mut vm, mut env, mut regs) = setup();
        let mut vcpu = VcpuState::new(0);
        for msr in [0x1234, 0xC000_0104, 0x179] {
            let a = handle_exit(
                &mut vm,
                &mut vcpu,
                &Exit::Rdmsr { msr },
                &mut regs,
                &mut env,
            );
            assert_eq!(a, Action::Inject(Event::GP0), "{msr:#x}");
            let a = handle_exit(
                &mut vm,
                &mut vcpu,
                &Exit::Wrmsr { msr, value: 0 },
                &mut regs,
                &mut env,
            );
            assert_eq!(a, Action::Inject(Event::GP0), "{msr:#x}");
        }
        assert_eq!(regs.rax, u64::MAX, "registers untouched on #GP");
    }

    #[test]
    fn amd_northbridge_msrs_are_inert_on_amd_only() {
        for amd in [false, true] {
            let (mut vm, mut env, mut regs) = setup();
            env.amd = amd;
            let mut vcpu = VcpuState::new(0);
            for msr in [AMD64_NB_CFG, AMD_INT_PENDING_MSG] {
                let read = handle_exit(
                    &mut vm,
                    &mut vcpu,
                    &Exit::Rdmsr { msr },
                    &mut regs,
                    &mut env,
                );
                let write = handle_exit(
                    &mut vm,
                    &mut vcpu,
                    &Exit::Wrmsr {
                        msr,
                        value: 1 << 46,
                    },
                    &mut regs,
                    &mut env,
                );
                if amd {
                    // Read as 0, the write ignored (read as 0 again).
                    assert_eq!(read, Action::AdvanceRip, "{msr:#x}");
                    assert_eq!((regs.rax, regs.rdx), (0, 0));
                    assert_eq!(write, Action::AdvanceRip, "{msr:#x}");
                } else {
                    assert_eq!(read, Action::Inject(Event::GP0), "{msr:#x}");
                    assert_eq!(write, Action::Inject(Event::GP0), "{msr:#x}");
                }
            }
        }
    }

    #[test]
    fn read_returns_edx_eax() {
        let (mut vm, mut env, mut regs) = setup();
        let mut vcpu = VcpuState::new(0);
        let a = handle_exit(
            &mut vm,
            &mut vcpu,
            &Exit::Rdmsr { msr: IA32_PAT },
            &mut regs,
            &mut env,
        );
        assert_eq!(a, Action::AdvanceRip);
        assert_eq!(regs.rax, 0x0007_0406);
        assert_eq!(regs.rdx, 0x0007_0406);
        let a = handle_exit(
            &mut vm,
            &mut vcpu,
            &Exit::Rdmsr {
                msr: IA32_APIC_BASE,
            },
            &mut regs,
            &mut env,
        );
        assert_eq!(a, Action::Inject(Event::GP0), "no local APIC");
        handle_exit(
            &mut vm,
            &mut vcpu,
            &Exit::Rdmsr {
                msr: IA32_FEATURE_CONTROL,
            },
            &mut regs,
            &mut env,
        );
        assert_eq!(regs.rax, 1, "locked, VMX off");
    }

    #[test]
    fn write_sets_state() {
        let (mut vm, mut env, mut regs) = setup();
        let mut vcpu = VcpuState::new(0);
        let lstar = 0xFFFF_FFFF_8100_0000;
        let a = handle_exit(
            &mut vm,
            &mut vcpu,
            &Exit::Wrmsr {
                msr: IA32_LSTAR,
                value: lstar,
            },
            &mut regs,
            &mut env,
        );
        assert_eq!(a, Action::AdvanceRip);
        assert_eq!(env.cpu.get(Reg::Lstar), lstar);
        handle_exit(
            &mut vm,
            &mut vcpu,
            &Exit::Rdmsr { msr: IA32_LSTAR },
            &mut regs,
            &mut env,
        );
        assert_eq!((regs.rdx << 32) | regs.rax, lstar);
        handle_exit(
            &mut vm,
            &mut vcpu,
            &Exit::Wrmsr {
                msr: IA32_KERNEL_GS_BASE,
                value: 0x1000,
            },
            &mut regs,
            &mut env,
        );
        assert_eq!(env.cpu.get(Reg::KernelGsBase), 0x1000);
        handle_exit(
            &mut vm,
            &mut vcpu,
            &Exit::Wrmsr {
                msr: IA32_PAT,
                value: 0x0606_0606_0606_0606,
            },
            &mut regs,
            &mut env,
        );
        assert_eq!(env.cpu.get(Reg::Pat), 0x0606_0606_0606_0606);
    }

    #[test]
    fn invalid_values_and_read_only_inject_gp() {
        let (mut vm, mut env, mut regs) = setup();
        let mut vcpu = VcpuState::new(0);
        let cases = [
            (IA32_LSTAR, 0x0000_8000_0000_0000),
            (IA32_FS_BASE, 0x1234_5678_9ABC_DEF0),
            (IA32_PAT, 0x0002_0406_0007_0406),
            (IA32_MTRR_DEF_TYPE, 0x1_0006),
            (IA32_FEATURE_CONTROL, 5),
            (IA32_MTRRCAP, 0),
            (IA32_APIC_BASE, 0xFEC0_0900),
            (IA32_EFER, 1 << 12),
            (IA32_DEBUGCTL, 1 << 6),
            (IA32_TSC_AUX, 1 << 32),
        ];
        for (msr, value) in cases {
            let a = handle_exit(
                &mut vm,
                &mut vcpu,
                &Exit::Wrmsr { msr, value },
                &mut regs,
                &mut env,
            );
            assert_eq!(a, Action::Inject(Event::GP0), "{msr:#x}={value:#x}");
        }
        assert_eq!(vcpu.msrs, MsrState::default());
        assert_eq!(env.cpu.get(Reg::Lstar), 0);
        assert_eq!(env.cpu.get(Reg::Pat), PAT_RESET);
        assert_eq!(vm.stats.injected_events, cases.len() as u64);
    }

    #[test]
    fn efer_keeps_lma_and_refuses_lme_change_under_paging() {
        let (mut vm, mut env, mut regs) = setup();
        let mut vcpu = VcpuState::new(0);
        env.cpu.set(Reg::Efer, 0x500); // LME | LMA
        env.cpu.set(Reg::Cr0, crate::arch::CR0_PG | 1);
        let w = |value| Exit::Wrmsr {
            msr: IA32_EFER,
            value,
        };
        // SCE|NXE added, LMA written as 0: LMA stays (read only).
        let a = handle_exit(&mut vm, &mut vcpu, &w(0x901), &mut regs, &mut env);
        assert_eq!(a, Action::AdvanceRip);
        assert_eq!(env.cpu.get(Reg::Efer), 0xD01);
        // Clearing LME while paging is on: #GP.
        let a = handle_exit(&mut vm, &mut vcpu, &w(0x801), &mut regs, &mut env);
        assert_eq!(a, Action::Inject(Event::GP0));
        assert_eq!(env.cpu.get(Reg::Efer), 0xD01);
    }

    #[test]
    fn failed_state_access_stops_the_vm() {
        let (mut vm, mut env, mut regs) = setup();
        let mut vcpu = VcpuState::new(0);
        regs.rip = 0x1234;
        env.cpu.fail = Some(Reg::Lstar);
        let a = handle_exit(
            &mut vm,
            &mut vcpu,
            &Exit::Rdmsr { msr: IA32_LSTAR },
            &mut regs,
            &mut env,
        );
        assert_eq!(
            a,
            Action::Stop(StopReason::StateAccessFailed {
                reg: Reg::Lstar,
                rip: 0x1234
            })
        );
    }

    #[test]
    fn tsc_offset_from_write() {
        let mut s = MsrState::default();
        assert_eq!(s.read(IA32_TSC, 500), Ok(500));
        s.write(IA32_TSC, 100, 500).unwrap();
        assert_eq!(s.read(IA32_TSC, 600), Ok(200));
        s.write(IA32_MISC_ENABLE, 0, 0).unwrap();
        assert_eq!(s.read(IA32_MISC_ENABLE, 0), Ok(MISC_ENABLE_VALUE));
    }
}
