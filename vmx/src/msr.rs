//! MSR numbers used by VMX (SDM Vol. 3C, Appendix A; Vol. 4, Table 2-2) and the
//! IA32_FEATURE_CONTROL decision (SDM Vol. 3C, 24.7).
//!
//! Reading and writing MSRs is the kernel's business (it has `rdmsr`/`wrmsr`);
//! this module only names them and decides what to do with their values.

use bitflags::bitflags;

/// IA32_FEATURE_CONTROL: VMX enable and lock bits (SDM 24.7; Vol. 4 Table 2-2).
pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
/// IA32_SYSENTER_CS (Vol. 4 Table 2-2), loaded from the host-state area on exit.
pub const IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP (Vol. 4 Table 2-2).
pub const IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP (Vol. 4 Table 2-2).
pub const IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_DEBUGCTL (Vol. 4 Table 2-2).
pub const IA32_DEBUGCTL: u32 = 0x1D9;
/// IA32_PAT (Vol. 4 Table 2-2).
pub const IA32_PAT: u32 = 0x277;
/// IA32_VMX_BASIC: basic VMX information (SDM A.1).
pub const IA32_VMX_BASIC: u32 = 0x480;
/// IA32_VMX_PINBASED_CTLS: allowed pin-based controls (SDM A.3.1).
pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
/// IA32_VMX_PROCBASED_CTLS: allowed primary processor-based controls (SDM A.3.2).
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
/// IA32_VMX_EXIT_CTLS: allowed VM-exit controls (SDM A.4.1).
pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
/// IA32_VMX_ENTRY_CTLS: allowed VM-entry controls (SDM A.5).
pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
/// IA32_VMX_MISC: miscellaneous VMX data (SDM A.6).
pub const IA32_VMX_MISC: u32 = 0x485;
/// IA32_VMX_CR0_FIXED0: CR0 bits fixed to 1 in VMX operation (SDM A.7).
pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
/// IA32_VMX_CR0_FIXED1: CR0 bits allowed to be 1 in VMX operation (SDM A.7).
pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
/// IA32_VMX_CR4_FIXED0: CR4 bits fixed to 1 in VMX operation (SDM A.8).
pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
/// IA32_VMX_CR4_FIXED1: CR4 bits allowed to be 1 in VMX operation (SDM A.8).
pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
/// IA32_VMX_VMCS_ENUM: highest VMCS field index (SDM A.9).
pub const IA32_VMX_VMCS_ENUM: u32 = 0x48A;
/// IA32_VMX_PROCBASED_CTLS2: allowed secondary processor-based controls (SDM A.3.3).
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
/// IA32_VMX_EPT_VPID_CAP: EPT and VPID capabilities (SDM A.10).
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
/// IA32_VMX_TRUE_PINBASED_CTLS: pin-based controls incl. default1 bits (SDM A.3.1).
pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
/// IA32_VMX_TRUE_PROCBASED_CTLS: primary controls incl. default1 bits (SDM A.3.2).
pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48E;
/// IA32_VMX_TRUE_EXIT_CTLS: VM-exit controls incl. default1 bits (SDM A.4.1).
pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48F;
/// IA32_VMX_TRUE_ENTRY_CTLS: VM-entry controls incl. default1 bits (SDM A.5).
pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
/// IA32_VMX_VMFUNC: allowed VM functions (SDM A.11).
pub const IA32_VMX_VMFUNC: u32 = 0x491;
/// IA32_EFER (Vol. 4 Table 2-2).
pub const IA32_EFER: u32 = 0xC000_0080;
/// IA32_FS_BASE (Vol. 4 Table 2-2), loaded from HOST_FS_BASE on exit.
pub const IA32_FS_BASE: u32 = 0xC000_0100;
/// IA32_GS_BASE (Vol. 4 Table 2-2), loaded from HOST_GS_BASE on exit.
pub const IA32_GS_BASE: u32 = 0xC000_0101;

bitflags! {
    /// IA32_FEATURE_CONTROL bits relevant to VMX (SDM 24.7; Vol. 4 Table 2-2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct FeatureControl: u64 {
        /// Bit 0: lock; once set, writes fault until reset (SDM 24.7).
        const LOCK = 1 << 0;
        /// Bit 1: enable VMX inside SMX operation (SDM 24.7).
        const VMX_INSIDE_SMX = 1 << 1;
        /// Bit 2: enable VMX outside SMX operation (SDM 24.7).
        const VMX_OUTSIDE_SMX = 1 << 2;
        // Other bits (SENTER, SGX, LMCE...) are preserved, not interpreted.
        const _ = !0;
    }
}

/// What to do with IA32_FEATURE_CONTROL before VMXON (SDM 24.7: VMXON faults
/// unless the lock bit is set and VMX is enabled outside SMX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureControlAction {
    /// Locked with VMX enabled outside SMX: nothing to do.
    AlreadyEnabled,
    /// Unlocked: write this value (VMX outside SMX enabled, locked; other bits
    /// kept) to IA32_FEATURE_CONTROL.
    EnableAndLock(u64),
    /// Locked with VMX disabled: only a firmware setting can change that.
    DisabledByFirmware,
}

impl FeatureControlAction {
    /// Decides from the current IA32_FEATURE_CONTROL value.
    pub const fn decide(value: u64) -> Self {
        let lock = FeatureControl::LOCK.bits();
        let outside = FeatureControl::VMX_OUTSIDE_SMX.bits();
        if value & lock == 0 {
            FeatureControlAction::EnableAndLock(value | lock | outside)
        } else if value & outside != 0 {
            FeatureControlAction::AlreadyEnabled
        } else {
            FeatureControlAction::DisabledByFirmware
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_control_decisions() {
        assert_eq!(
            FeatureControlAction::decide(0),
            FeatureControlAction::EnableAndLock(0b101)
        );
        assert_eq!(
            FeatureControlAction::decide(0b101),
            FeatureControlAction::AlreadyEnabled
        );
        assert_eq!(
            FeatureControlAction::decide(0b111),
            FeatureControlAction::AlreadyEnabled
        );
        assert_eq!(
            FeatureControlAction::decide(0b011),
            FeatureControlAction::DisabledByFirmware
        );
        assert_eq!(
            FeatureControlAction::decide(0b001),
            FeatureControlAction::DisabledByFirmware
        );
        // Unlocked: other bits are preserved.
        assert_eq!(
            FeatureControlAction::decide(0x10_0002),
            FeatureControlAction::EnableAndLock(0x10_0007)
        );
    }

    #[test]
    fn msr_numbers() {
        assert_eq!(IA32_FEATURE_CONTROL, 0x3A);
        assert_eq!(IA32_VMX_BASIC, 0x480);
        assert_eq!(IA32_VMX_PROCBASED_CTLS2, 0x48B);
        assert_eq!(IA32_VMX_EPT_VPID_CAP, 0x48C);
        assert_eq!(IA32_VMX_TRUE_ENTRY_CTLS, 0x490);
        assert_eq!(
            FeatureControl::from_bits_retain(0b111),
            FeatureControl::LOCK | FeatureControl::VMX_INSIDE_SMX | FeatureControl::VMX_OUTSIDE_SMX
        );
    }
}
