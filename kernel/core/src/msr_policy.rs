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
//! | IA32_APIC_BASE | 0x1B | `0xFEE0_0000` \| enable \| BSP | same value only |
//! | IA32_MTRRCAP | 0xFE | 0 (no fixed/variable ranges, no WC) | #GP |
//! | IA32_SYSENTER_CS/ESP/EIP | 0x174-0x176 | virtual | virtual (ESP/EIP canonical) |
//! | IA32_MISC_ENABLE | 0x1A0 | fast strings, BTS/PEBS unavailable | ignored |
//! | IA32_PAT | 0x277 | virtual (reset `0x0007040600070406`) | virtual, memory types checked |
//! | IA32_MTRR_DEF_TYPE | 0x2FF | virtual (reset: MTRRs on, WB) | virtual, checked |
//! | IA32_STAR | 0xC000_0081 | virtual | virtual |
//! | IA32_LSTAR / IA32_CSTAR | 0xC000_0082/83 | virtual | virtual (canonical) |
//! | IA32_FMASK | 0xC000_0084 | virtual | virtual (bits 63:32 ignored) |
//! | IA32_FS_BASE / GS_BASE / KERNEL_GS_BASE | 0xC000_0100-102 | virtual | virtual (canonical) |
//!
//! Notes: IA32_EFER (0xC000_0080) lives in the VMCS/VMCB guest state and the
//! backend does not exit on it; if an exit for it arrives anyway it is treated
//! as unknown (#GP). The backend may also pass the FS/GS/KERNEL_GS bases and the
//! SYSCALL MSRs through (loading them from the VMCS or on switch); the values
//! here are then the ones it should load, and stay correct if it exits instead.
//! IA32_TSC is only consulted when RDMSR/WRMSR of it exits; the backend that
//! lets RDTSC run natively should program [`MsrState::tsc_offset`] as its TSC
//! offset.

use crate::exit::{Action, Event, GuestRegs, Platform};
use crate::vcpu::VmContext;

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

/// Per-VM virtual MSR values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrState {
    /// Added to the host tick count to form the guest TSC.
    pub tsc_offset: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// IA32_MTRR_DEF_TYPE.
    pub mtrr_def_type: u64,
    /// IA32_SYSENTER_CS.
    pub sysenter_cs: u64,
    /// IA32_SYSENTER_ESP.
    pub sysenter_esp: u64,
    /// IA32_SYSENTER_EIP.
    pub sysenter_eip: u64,
    /// IA32_STAR.
    pub star: u64,
    /// IA32_LSTAR.
    pub lstar: u64,
    /// IA32_CSTAR.
    pub cstar: u64,
    /// IA32_FMASK.
    pub fmask: u64,
    /// IA32_FS_BASE.
    pub fs_base: u64,
    /// IA32_GS_BASE.
    pub gs_base: u64,
    /// IA32_KERNEL_GS_BASE.
    pub kernel_gs_base: u64,
}

impl Default for MsrState {
    fn default() -> Self {
        MsrState {
            tsc_offset: 0,
            pat: PAT_RESET,
            mtrr_def_type: MTRR_DEF_TYPE_RESET,
            sysenter_cs: 0,
            sysenter_esp: 0,
            sysenter_eip: 0,
            star: 0,
            lstar: 0,
            cstar: 0,
            fmask: 0,
            fs_base: 0,
            gs_base: 0,
            kernel_gs_base: 0,
        }
    }
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
    /// The guest's value of `msr` at host time `now_ticks`.
    pub fn read(&self, msr: u32, now_ticks: u64) -> Result<u64, MsrError> {
        Ok(match msr {
            IA32_TSC => now_ticks.wrapping_add(self.tsc_offset),
            IA32_APIC_BASE => APIC_BASE_VALUE,
            IA32_FEATURE_CONTROL => FEATURE_CONTROL_VALUE,
            IA32_BIOS_SIGN_ID => 0,
            IA32_MTRRCAP => 0,
            IA32_SYSENTER_CS => self.sysenter_cs,
            IA32_SYSENTER_ESP => self.sysenter_esp,
            IA32_SYSENTER_EIP => self.sysenter_eip,
            IA32_MISC_ENABLE => MISC_ENABLE_VALUE,
            IA32_PAT => self.pat,
            IA32_MTRR_DEF_TYPE => self.mtrr_def_type,
            IA32_STAR => self.star,
            IA32_LSTAR => self.lstar,
            IA32_CSTAR => self.cstar,
            IA32_FMASK => self.fmask,
            IA32_FS_BASE => self.fs_base,
            IA32_GS_BASE => self.gs_base,
            IA32_KERNEL_GS_BASE => self.kernel_gs_base,
            _ => return Err(MsrError::Unknown),
        })
    }

    /// Applies a guest write of `value` to `msr` at host time `now_ticks`.
    pub fn write(&mut self, msr: u32, value: u64, now_ticks: u64) -> Result<(), MsrError> {
        let canonical = |v: u64| {
            if is_canonical(v) {
                Ok(v)
            } else {
                Err(MsrError::InvalidValue)
            }
        };
        match msr {
            IA32_TSC => self.tsc_offset = value.wrapping_sub(now_ticks),
            IA32_APIC_BASE if value == APIC_BASE_VALUE => {}
            IA32_APIC_BASE => return Err(MsrError::InvalidValue),
            IA32_FEATURE_CONTROL | IA32_MTRRCAP => return Err(MsrError::ReadOnly),
            IA32_BIOS_SIGN_ID | IA32_MISC_ENABLE => {}
            IA32_SYSENTER_CS => self.sysenter_cs = value & 0xFFFF_FFFF,
            IA32_SYSENTER_ESP => self.sysenter_esp = canonical(value)?,
            IA32_SYSENTER_EIP => self.sysenter_eip = canonical(value)?,
            IA32_PAT if valid_pat(value) => self.pat = value,
            IA32_MTRR_DEF_TYPE if valid_mtrr_def_type(value) => self.mtrr_def_type = value,
            IA32_PAT | IA32_MTRR_DEF_TYPE => return Err(MsrError::InvalidValue),
            IA32_STAR => self.star = value,
            IA32_LSTAR => self.lstar = canonical(value)?,
            IA32_CSTAR => self.cstar = canonical(value)?,
            IA32_FMASK => self.fmask = value & 0xFFFF_FFFF,
            IA32_FS_BASE => self.fs_base = canonical(value)?,
            IA32_GS_BASE => self.gs_base = canonical(value)?,
            IA32_KERNEL_GS_BASE => self.kernel_gs_base = canonical(value)?,
            _ => return Err(MsrError::Unknown),
        }
        Ok(())
    }
}

/// Handles an RDMSR exit.
pub fn handle_read(
    vm: &mut VmContext,
    msr: u32,
    regs: &mut GuestRegs,
    env: &mut dyn Platform,
) -> Action {
    match vm.msrs.read(msr, env.now_ticks()) {
        Ok(v) => {
            regs.rax = v & 0xFFFF_FFFF;
            regs.rdx = v >> 32;
            Action::AdvanceRip
        }
        Err(_) => Action::Inject(Event::GP0),
    }
}

/// Handles a WRMSR exit.
pub fn handle_write(vm: &mut VmContext, msr: u32, value: u64, env: &mut dyn Platform) -> Action {
    match vm.msrs.write(msr, value, env.now_ticks()) {
        Ok(()) => Action::AdvanceRip,
        Err(_) => Action::Inject(Event::GP0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::testenv::FakePlatform;
    use crate::exit::{handle_exit, Exit};

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
        for msr in [0x1234, IA32_EFER, 0xC000_0103, 0x179] {
            let a = handle_exit(&mut vm, &Exit::Rdmsr { msr }, &mut regs, &mut env);
            assert_eq!(a, Action::Inject(Event::GP0), "{msr:#x}");
            let a = handle_exit(&mut vm, &Exit::Wrmsr { msr, value: 0 }, &mut regs, &mut env);
            assert_eq!(a, Action::Inject(Event::GP0), "{msr:#x}");
        }
        assert_eq!(regs.rax, u64::MAX, "registers untouched on #GP");
    }

    #[test]
    fn read_returns_edx_eax() {
        let (mut vm, mut env, mut regs) = setup();
        let a = handle_exit(&mut vm, &Exit::Rdmsr { msr: IA32_PAT }, &mut regs, &mut env);
        assert_eq!(a, Action::AdvanceRip);
        assert_eq!(regs.rax, 0x0007_0406);
        assert_eq!(regs.rdx, 0x0007_0406);
        handle_exit(
            &mut vm,
            &Exit::Rdmsr {
                msr: IA32_APIC_BASE,
            },
            &mut regs,
            &mut env,
        );
        assert_eq!(regs.rax, 0xFEE0_0900);
        assert_eq!(regs.rdx, 0);
        handle_exit(
            &mut vm,
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
        let lstar = 0xFFFF_FFFF_8100_0000;
        let a = handle_exit(
            &mut vm,
            &Exit::Wrmsr {
                msr: IA32_LSTAR,
                value: lstar,
            },
            &mut regs,
            &mut env,
        );
        assert_eq!(a, Action::AdvanceRip);
        assert_eq!(vm.msrs.lstar, lstar);
        handle_exit(
            &mut vm,
            &Exit::Rdmsr { msr: IA32_LSTAR },
            &mut regs,
            &mut env,
        );
        assert_eq!((regs.rdx << 32) | regs.rax, lstar);
        handle_exit(
            &mut vm,
            &Exit::Wrmsr {
                msr: IA32_KERNEL_GS_BASE,
                value: 0x1000,
            },
            &mut regs,
            &mut env,
        );
        assert_eq!(vm.msrs.kernel_gs_base, 0x1000);
        handle_exit(
            &mut vm,
            &Exit::Wrmsr {
                msr: IA32_PAT,
                value: 0x0606_0606_0606_0606,
            },
            &mut regs,
            &mut env,
        );
        assert_eq!(vm.msrs.pat, 0x0606_0606_0606_0606);
    }

    #[test]
    fn invalid_values_and_read_only_inject_gp() {
        let (mut vm, mut env, mut regs) = setup();
        let cases = [
            (IA32_LSTAR, 0x0000_8000_0000_0000),
            (IA32_FS_BASE, 0x1234_5678_9ABC_DEF0),
            (IA32_PAT, 0x0002_0406_0007_0406),
            (IA32_MTRR_DEF_TYPE, 0x1_0006),
            (IA32_FEATURE_CONTROL, 5),
            (IA32_MTRRCAP, 0),
            (IA32_APIC_BASE, 0xFEC0_0900),
        ];
        for (msr, value) in cases {
            let a = handle_exit(&mut vm, &Exit::Wrmsr { msr, value }, &mut regs, &mut env);
            assert_eq!(a, Action::Inject(Event::GP0), "{msr:#x}={value:#x}");
        }
        assert_eq!(vm.msrs, MsrState::default());
        assert_eq!(vm.stats.injected_events, cases.len() as u64);
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
