//! VMX capability reporting (SDM Vol. 3C, Appendix A) and the VM-execution,
//! VM-exit and VM-entry control words (SDM 25.6-25.8).
//!
//! [`VmxCapabilities::from_reader`] takes an MSR-reading closure, so decoding
//! is tested with recorded values. Control words are built with [`adjust`]:
//! it sets every bit the CPU requires (allowed-0 settings) and refuses any
//! wanted bit the CPU cannot set (allowed-1 settings), naming it.

use core::fmt;

use bitflags::{bitflags, Flags};

use crate::msr;

/// Which control word a [`ControlWord`] type fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    /// Pin-based VM-execution controls (SDM 25.6.1).
    PinBased,
    /// Primary processor-based VM-execution controls (SDM 25.6.2).
    Primary,
    /// Secondary processor-based VM-execution controls (SDM 25.6.2).
    Secondary,
    /// Primary VM-exit controls (SDM 25.7.1).
    Exit,
    /// VM-entry controls (SDM 25.8.1).
    Entry,
}

impl ControlKind {
    /// A short name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            ControlKind::PinBased => "pin-based",
            ControlKind::Primary => "primary",
            ControlKind::Secondary => "secondary",
            ControlKind::Exit => "exit",
            ControlKind::Entry => "entry",
        }
    }
}

impl fmt::Display for ControlKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A 32-bit VMX control word whose bits have names.
pub trait ControlWord: Flags<Bits = u32> + Copy {
    /// The control word this type fills.
    const KIND: ControlKind;
    /// The SDM's name for a single bit of this word, if it has one.
    fn bit_name(bit: u32) -> Option<&'static str>;
}

macro_rules! controls {
    (
        $(#[$outer:meta])*
        $name:ident, $kind:expr, $table:literal {
            $($flag:ident = $bit:literal, $human:literal;)*
        }
    ) => {
        bitflags! {
            $(#[$outer])*
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
            pub struct $name: u32 {
                $(
                    #[doc = concat!("Bit ", stringify!($bit), ": ", $human, " (SDM ", $table, ").")]
                    const $flag = 1 << $bit;
                )*
            }
        }

        impl ControlWord for $name {
            const KIND: ControlKind = $kind;
            fn bit_name(bit: u32) -> Option<&'static str> {
                match bit {
                    $($bit => Some($human),)*
                    _ => None,
                }
            }
        }
    };
}

controls! {
    /// Pin-based VM-execution controls (SDM 25.6.1, Table 25-5).
    PinBasedControls, ControlKind::PinBased, "Table 25-5" {
        EXTERNAL_INTERRUPT_EXITING = 0, "external-interrupt exiting";
        NMI_EXITING = 3, "NMI exiting";
        VIRTUAL_NMIS = 5, "virtual NMIs";
        ACTIVATE_PREEMPTION_TIMER = 6, "activate VMX-preemption timer";
        PROCESS_POSTED_INTERRUPTS = 7, "process posted interrupts";
    }
}

controls! {
    /// Primary processor-based VM-execution controls (SDM 25.6.2, Table 25-6).
    PrimaryControls, ControlKind::Primary, "Table 25-6" {
        INTERRUPT_WINDOW_EXITING = 2, "interrupt-window exiting";
        USE_TSC_OFFSETTING = 3, "use TSC offsetting";
        HLT_EXITING = 7, "HLT exiting";
        INVLPG_EXITING = 9, "INVLPG exiting";
        MWAIT_EXITING = 10, "MWAIT exiting";
        RDPMC_EXITING = 11, "RDPMC exiting";
        RDTSC_EXITING = 12, "RDTSC exiting";
        CR3_LOAD_EXITING = 15, "CR3-load exiting";
        CR3_STORE_EXITING = 16, "CR3-store exiting";
        ACTIVATE_TERTIARY_CONTROLS = 17, "activate tertiary controls";
        CR8_LOAD_EXITING = 19, "CR8-load exiting";
        CR8_STORE_EXITING = 20, "CR8-store exiting";
        USE_TPR_SHADOW = 21, "use TPR shadow";
        NMI_WINDOW_EXITING = 22, "NMI-window exiting";
        MOV_DR_EXITING = 23, "MOV-DR exiting";
        UNCONDITIONAL_IO_EXITING = 24, "unconditional I/O exiting";
        USE_IO_BITMAPS = 25, "use I/O bitmaps";
        MONITOR_TRAP_FLAG = 27, "monitor trap flag";
        USE_MSR_BITMAPS = 28, "use MSR bitmaps";
        MONITOR_EXITING = 29, "MONITOR exiting";
        PAUSE_EXITING = 30, "PAUSE exiting";
        ACTIVATE_SECONDARY_CONTROLS = 31, "activate secondary controls";
    }
}

controls! {
    /// Secondary processor-based VM-execution controls (SDM 25.6.2, Table 25-7).
    SecondaryControls, ControlKind::Secondary, "Table 25-7" {
        VIRTUALIZE_APIC_ACCESSES = 0, "virtualize APIC accesses";
        ENABLE_EPT = 1, "enable EPT";
        DESCRIPTOR_TABLE_EXITING = 2, "descriptor-table exiting";
        ENABLE_RDTSCP = 3, "enable RDTSCP";
        VIRTUALIZE_X2APIC_MODE = 4, "virtualize x2APIC mode";
        ENABLE_VPID = 5, "enable VPID";
        WBINVD_EXITING = 6, "WBINVD exiting";
        UNRESTRICTED_GUEST = 7, "unrestricted guest";
        APIC_REGISTER_VIRTUALIZATION = 8, "APIC-register virtualization";
        VIRTUAL_INTERRUPT_DELIVERY = 9, "virtual-interrupt delivery";
        PAUSE_LOOP_EXITING = 10, "PAUSE-loop exiting";
        RDRAND_EXITING = 11, "RDRAND exiting";
        ENABLE_INVPCID = 12, "enable INVPCID";
        ENABLE_VM_FUNCTIONS = 13, "enable VM functions";
        VMCS_SHADOWING = 14, "VMCS shadowing";
        ENABLE_ENCLS_EXITING = 15, "enable ENCLS exiting";
        RDSEED_EXITING = 16, "RDSEED exiting";
        ENABLE_PML = 17, "enable PML";
        EPT_VIOLATION_VE = 18, "EPT-violation #VE";
        CONCEAL_VMX_FROM_PT = 19, "conceal VMX from PT";
        ENABLE_XSAVES_XRSTORS = 20, "enable XSAVES/XRSTORS";
        MODE_BASED_EPT_EXECUTE = 22, "mode-based execute control for EPT";
        SUB_PAGE_WRITE_PERMISSIONS = 23, "sub-page write permissions for EPT";
        PT_USES_GUEST_PHYSICAL = 24, "Intel PT uses guest physical addresses";
        USE_TSC_SCALING = 25, "use TSC scaling";
        ENABLE_USER_WAIT_PAUSE = 26, "enable user wait and pause";
        ENABLE_PCONFIG = 27, "enable PCONFIG";
        ENABLE_ENCLV_EXITING = 28, "enable ENCLV exiting";
    }
}

controls! {
    /// Primary VM-exit controls (SDM 25.7.1, Table 25-13).
    ExitControls, ControlKind::Exit, "Table 25-13" {
        SAVE_DEBUG_CONTROLS = 2, "save debug controls";
        HOST_ADDRESS_SPACE_SIZE = 9, "host address-space size";
        LOAD_IA32_PERF_GLOBAL_CTRL = 12, "load IA32_PERF_GLOBAL_CTRL";
        ACK_INTERRUPT_ON_EXIT = 15, "acknowledge interrupt on exit";
        SAVE_IA32_PAT = 18, "save IA32_PAT";
        LOAD_IA32_PAT = 19, "load IA32_PAT";
        SAVE_IA32_EFER = 20, "save IA32_EFER";
        LOAD_IA32_EFER = 21, "load IA32_EFER";
        SAVE_PREEMPTION_TIMER = 22, "save VMX-preemption timer value";
        CLEAR_IA32_BNDCFGS = 23, "clear IA32_BNDCFGS";
        CONCEAL_VMX_FROM_PT = 24, "conceal VMX from PT";
        CLEAR_IA32_RTIT_CTL = 25, "clear IA32_RTIT_CTL";
        CLEAR_IA32_LBR_CTL = 26, "clear IA32_LBR_CTL";
        CLEAR_UINV = 27, "clear UINV";
        LOAD_CET_STATE = 28, "load CET state";
        LOAD_PKRS = 29, "load PKRS";
        SAVE_IA32_PERF_GLOBAL_CTL = 30, "save IA32_PERF_GLOBAL_CTL";
        ACTIVATE_SECONDARY_CONTROLS = 31, "activate secondary controls";
    }
}

controls! {
    /// VM-entry controls (SDM 25.8.1, Table 25-15).
    EntryControls, ControlKind::Entry, "Table 25-15" {
        LOAD_DEBUG_CONTROLS = 2, "load debug controls";
        IA32E_MODE_GUEST = 9, "IA-32e mode guest";
        ENTRY_TO_SMM = 10, "entry to SMM";
        DEACTIVATE_DUAL_MONITOR = 11, "deactivate dual-monitor treatment";
        LOAD_IA32_PERF_GLOBAL_CTRL = 13, "load IA32_PERF_GLOBAL_CTRL";
        LOAD_IA32_PAT = 14, "load IA32_PAT";
        LOAD_IA32_EFER = 15, "load IA32_EFER";
        LOAD_IA32_BNDCFGS = 16, "load IA32_BNDCFGS";
        CONCEAL_VMX_FROM_PT = 17, "conceal VMX from PT";
        LOAD_IA32_RTIT_CTL = 18, "load IA32_RTIT_CTL";
        LOAD_UINV = 19, "load UINV";
        LOAD_CET_STATE = 20, "load CET state";
        LOAD_GUEST_IA32_LBR_CTL = 21, "load guest IA32_LBR_CTL";
        LOAD_PKRS = 22, "load PKRS";
    }
}

/// The allowed settings of a control word, from its capability MSR
/// (SDM A.3-A.5): bits 31:0 are the allowed-0 settings (a 1 there means the
/// control must be 1), bits 63:32 the allowed-1 settings (a 0 there means the
/// control must be 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// Bits that must be 1.
    pub allowed0: u32,
    /// Bits that may be 1.
    pub allowed1: u32,
}

impl Allowed {
    /// Nothing may be set (a control word the CPU does not have).
    pub const NONE: Allowed = Allowed {
        allowed0: 0,
        allowed1: 0,
    };

    /// Splits a capability MSR value.
    pub const fn from_msr(value: u64) -> Self {
        Allowed {
            allowed0: value as u32,
            allowed1: (value >> 32) as u32,
        }
    }

    /// Whether every bit of `bits` may be 1.
    pub const fn permits(self, bits: u32) -> bool {
        bits & !self.allowed1 == 0
    }
}

/// A wanted control the CPU cannot set (its allowed-1 bit is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingControl {
    /// Which control word.
    pub kind: ControlKind,
    /// The lowest missing bit.
    pub bit: u32,
    /// The SDM's name of that bit ("unnamed control" for an unnamed bit).
    pub name: &'static str,
    /// Every wanted bit that is missing.
    pub missing: u32,
}

impl fmt::Display for MissingControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (bit {}) is not supported by this CPU",
            self.kind, self.name, self.bit
        )?;
        let others = self.missing & !(1 << self.bit);
        if others != 0 {
            write!(f, " (also missing: {others:#x})")?;
        }
        Ok(())
    }
}

impl core::error::Error for MissingControl {}

/// Builds a control word: `wanted` plus every bit the CPU requires, or the
/// first wanted bit the CPU cannot set (SDM A.3-A.5, 27.2.1.1).
pub fn adjust<F: ControlWord>(wanted: F, allowed: Allowed) -> Result<u32, MissingControl> {
    let bits = wanted.bits();
    let missing = bits & !allowed.allowed1;
    if missing != 0 {
        let bit = missing.trailing_zeros();
        return Err(MissingControl {
            kind: F::KIND,
            bit,
            name: F::bit_name(bit).unwrap_or("unnamed control"),
            missing,
        });
    }
    Ok(bits | allowed.allowed0)
}

/// IA32_VMX_BASIC (SDM A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxBasic(pub u64);

impl VmxBasic {
    /// Bits 30:0: VMCS revision identifier, written to VMXON and VMCS regions.
    pub const fn revision_id(self) -> u32 {
        (self.0 & 0x7FFF_FFFF) as u32
    }

    /// Bits 44:32: bytes to allocate for the VMXON region and each VMCS region.
    pub const fn region_size(self) -> u32 {
        ((self.0 >> 32) & 0x1FFF) as u32
    }

    /// Bit 48: VMXON/VMCS/bitmap addresses are limited to 32 bits.
    pub const fn addresses_limited_to_32_bits(self) -> bool {
        self.0 & (1 << 48) != 0
    }

    /// Bit 49: dual-monitor treatment of SMIs and SMM is supported.
    pub const fn dual_monitor(self) -> bool {
        self.0 & (1 << 49) != 0
    }

    /// Bits 53:50: memory type for the VMCS and structures it references
    /// (6 = write-back, 0 = uncacheable).
    pub const fn memory_type(self) -> u8 {
        ((self.0 >> 50) & 0xF) as u8
    }

    /// Whether [`Self::memory_type`] is write-back (6).
    pub const fn memory_type_is_write_back(self) -> bool {
        self.memory_type() == 6
    }

    /// Bit 54: VM exits due to INS/OUTS report VM-exit instruction information.
    pub const fn ins_outs_info(self) -> bool {
        self.0 & (1 << 54) != 0
    }

    /// Bit 55: the IA32_VMX_TRUE_*_CTLS MSRs exist (default1 controls may be 0).
    pub const fn true_controls(self) -> bool {
        self.0 & (1 << 55) != 0
    }

    /// Bit 56: VM entry may inject a hardware exception without error code.
    pub const fn inject_exception_without_error_code(self) -> bool {
        self.0 & (1 << 56) != 0
    }
}

bitflags! {
    /// Activity states supported (IA32_VMX_MISC bits 8:6, SDM A.6), as bits
    /// of the MISC MSR.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct ActivityStates: u64 {
        /// Bit 6: HLT activity state supported (SDM A.6).
        const HLT = 1 << 6;
        /// Bit 7: shutdown activity state supported (SDM A.6).
        const SHUTDOWN = 1 << 7;
        /// Bit 8: wait-for-SIPI activity state supported (SDM A.6).
        const WAIT_FOR_SIPI = 1 << 8;
    }
}

/// IA32_VMX_MISC (SDM A.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxMisc(pub u64);

impl VmxMisc {
    /// Bits 4:0: the preemption timer counts down by 1 every time TSC bit X
    /// changes, where X is this value.
    pub const fn preemption_timer_rate(self) -> u8 {
        (self.0 & 0x1F) as u8
    }

    /// Bit 5: VM exits store EFER.LMA into the "IA-32e mode guest" entry control.
    pub const fn stores_lma_on_exit(self) -> bool {
        self.0 & (1 << 5) != 0
    }

    /// Bits 8:6: supported activity states besides active.
    pub const fn activity_states(self) -> ActivityStates {
        ActivityStates::from_bits_truncate(self.0)
    }

    /// Bits 24:16: number of CR3-target values supported.
    pub const fn cr3_target_count(self) -> u32 {
        ((self.0 >> 16) & 0x1FF) as u32
    }

    /// Bits 27:25: recommended maximum MSR-list entries, 512 * (N + 1).
    pub const fn max_msr_list_entries(self) -> u32 {
        512 * ((((self.0 >> 25) & 0x7) as u32) + 1)
    }

    /// Bit 29: VMWRITE may write VM-exit information fields.
    pub const fn vmwrite_to_exit_info(self) -> bool {
        self.0 & (1 << 29) != 0
    }

    /// Bit 30: VM entry may inject software interrupts/exceptions with
    /// instruction length 0.
    pub const fn zero_length_injection(self) -> bool {
        self.0 & (1 << 30) != 0
    }

    /// Bits 63:32: MSEG revision identifier.
    pub const fn mseg_revision_id(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

bitflags! {
    /// IA32_VMX_EPT_VPID_CAP (SDM A.10).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EptVpidCap: u64 {
        /// Bit 0: execute-only EPT translations (SDM A.10).
        const EXECUTE_ONLY = 1 << 0;
        /// Bit 6: page-walk length of 4 (SDM A.10).
        const PAGE_WALK_4 = 1 << 6;
        /// Bit 7: page-walk length of 5 (SDM A.10).
        const PAGE_WALK_5 = 1 << 7;
        /// Bit 8: EPT paging structures may be uncacheable (SDM A.10).
        const MEMORY_TYPE_UC = 1 << 8;
        /// Bit 14: EPT paging structures may be write-back (SDM A.10).
        const MEMORY_TYPE_WB = 1 << 14;
        /// Bit 16: 2-MByte pages via EPT PDEs (SDM A.10).
        const PAGE_2M = 1 << 16;
        /// Bit 17: 1-GByte pages via EPT PDPTEs (SDM A.10).
        const PAGE_1G = 1 << 17;
        /// Bit 20: INVEPT supported (SDM A.10).
        const INVEPT = 1 << 20;
        /// Bit 21: accessed and dirty flags for EPT (SDM A.10).
        const ACCESSED_DIRTY = 1 << 21;
        /// Bit 22: advanced VM-exit information for EPT violations (SDM A.10).
        const ADVANCED_EXIT_INFO = 1 << 22;
        /// Bit 23: supervisor shadow-stack control (SDM A.10).
        const SUPERVISOR_SHADOW_STACK = 1 << 23;
        /// Bit 25: single-context INVEPT (SDM A.10).
        const INVEPT_SINGLE_CONTEXT = 1 << 25;
        /// Bit 26: all-context INVEPT (SDM A.10).
        const INVEPT_ALL_CONTEXT = 1 << 26;
        /// Bit 32: INVVPID supported (SDM A.10).
        const INVVPID = 1 << 32;
        /// Bit 40: individual-address INVVPID (SDM A.10).
        const INVVPID_INDIVIDUAL_ADDRESS = 1 << 40;
        /// Bit 41: single-context INVVPID (SDM A.10).
        const INVVPID_SINGLE_CONTEXT = 1 << 41;
        /// Bit 42: all-context INVVPID (SDM A.10).
        const INVVPID_ALL_CONTEXT = 1 << 42;
        /// Bit 43: single-context-retaining-globals INVVPID (SDM A.10).
        const INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43;
    }
}

/// CR0.PE, bit 0: protection enable (SDM Vol. 3A, 2.5).
pub const CR0_PE: u64 = 1 << 0;
/// CR0.PG, bit 31: paging (SDM Vol. 3A, 2.5).
pub const CR0_PG: u64 = 1 << 31;

/// Control-register bits that break the VMX fixed-bit rules (SDM A.7, A.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedBitsViolation {
    /// Bits that are 0 but fixed to 1 (set in FIXED0).
    pub must_be_set: u64,
    /// Bits that are 1 but fixed to 0 (clear in FIXED1).
    pub must_be_clear: u64,
}

impl fmt::Display for FixedBitsViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VMX fixed bits violated: must be set {:#x}, must be clear {:#x}",
            self.must_be_set, self.must_be_clear
        )
    }
}

impl core::error::Error for FixedBitsViolation {}

/// Forces a CR0/CR4 value to the VMX fixed bits: sets bits fixed to 1
/// (FIXED0) and clears bits fixed to 0 (FIXED1) (SDM A.7, A.8).
pub const fn apply_fixed_bits(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    (value | fixed0) & fixed1
}

/// Checks a CR0/CR4 value against the VMX fixed bits (SDM A.7, A.8).
pub const fn check_fixed_bits(
    value: u64,
    fixed0: u64,
    fixed1: u64,
) -> Result<(), FixedBitsViolation> {
    let must_be_set = fixed0 & !value;
    let must_be_clear = value & !fixed1;
    if must_be_set == 0 && must_be_clear == 0 {
        Ok(())
    } else {
        Err(FixedBitsViolation {
            must_be_set,
            must_be_clear,
        })
    }
}

/// Everything the capability MSRs say, decoded (SDM Appendix A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxCapabilities {
    /// IA32_VMX_BASIC.
    pub basic: VmxBasic,
    /// Pin-based controls (TRUE_PINBASED when [`VmxBasic::true_controls`]).
    pub pin_based: Allowed,
    /// Primary processor-based controls (TRUE_PROCBASED when true controls).
    pub primary: Allowed,
    /// Secondary controls; [`Allowed::NONE`] if the primary "activate
    /// secondary controls" bit cannot be set.
    pub secondary: Allowed,
    /// VM-exit controls (TRUE_EXIT when true controls).
    pub exit: Allowed,
    /// VM-entry controls (TRUE_ENTRY when true controls).
    pub entry: Allowed,
    /// IA32_VMX_MISC.
    pub misc: VmxMisc,
    /// IA32_VMX_CR0_FIXED0.
    pub cr0_fixed0: u64,
    /// IA32_VMX_CR0_FIXED1.
    pub cr0_fixed1: u64,
    /// IA32_VMX_CR4_FIXED0.
    pub cr4_fixed0: u64,
    /// IA32_VMX_CR4_FIXED1.
    pub cr4_fixed1: u64,
    /// IA32_VMX_VMCS_ENUM.
    pub vmcs_enum: u64,
    /// IA32_VMX_EPT_VPID_CAP; empty unless EPT or VPID can be enabled.
    pub ept_vpid: EptVpidCap,
}

impl VmxCapabilities {
    /// Reads and decodes the capability MSRs through `read_msr`. Reads only
    /// MSRs that exist given earlier answers (SDM A.3.3, A.10: PROCBASED_CTLS2
    /// only if secondary controls can be activated, EPT_VPID_CAP only if EPT or
    /// VPID can be enabled, the TRUE_* MSRs only if IA32_VMX_BASIC bit 55 is
    /// set), so a real `rdmsr` never faults.
    pub fn from_reader(mut read_msr: impl FnMut(u32) -> u64) -> Self {
        let basic = VmxBasic(read_msr(msr::IA32_VMX_BASIC));
        let (pin, proc, exit, entry) = if basic.true_controls() {
            (
                msr::IA32_VMX_TRUE_PINBASED_CTLS,
                msr::IA32_VMX_TRUE_PROCBASED_CTLS,
                msr::IA32_VMX_TRUE_EXIT_CTLS,
                msr::IA32_VMX_TRUE_ENTRY_CTLS,
            )
        } else {
            (
                msr::IA32_VMX_PINBASED_CTLS,
                msr::IA32_VMX_PROCBASED_CTLS,
                msr::IA32_VMX_EXIT_CTLS,
                msr::IA32_VMX_ENTRY_CTLS,
            )
        };
        let pin_based = Allowed::from_msr(read_msr(pin));
        let primary = Allowed::from_msr(read_msr(proc));
        let exit = Allowed::from_msr(read_msr(exit));
        let entry = Allowed::from_msr(read_msr(entry));
        let secondary = if primary.permits(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS.bits()) {
            Allowed::from_msr(read_msr(msr::IA32_VMX_PROCBASED_CTLS2))
        } else {
            Allowed::NONE
        };
        let ept_or_vpid = SecondaryControls::ENABLE_EPT | SecondaryControls::ENABLE_VPID;
        let ept_vpid = if secondary.allowed1 & ept_or_vpid.bits() != 0 {
            EptVpidCap::from_bits_retain(read_msr(msr::IA32_VMX_EPT_VPID_CAP))
        } else {
            EptVpidCap::empty()
        };
        VmxCapabilities {
            basic,
            pin_based,
            primary,
            secondary,
            exit,
            entry,
            misc: VmxMisc(read_msr(msr::IA32_VMX_MISC)),
            cr0_fixed0: read_msr(msr::IA32_VMX_CR0_FIXED0),
            cr0_fixed1: read_msr(msr::IA32_VMX_CR0_FIXED1),
            cr4_fixed0: read_msr(msr::IA32_VMX_CR4_FIXED0),
            cr4_fixed1: read_msr(msr::IA32_VMX_CR4_FIXED1),
            vmcs_enum: read_msr(msr::IA32_VMX_VMCS_ENUM),
            ept_vpid,
        }
    }

    /// The pin-based control word for `wanted` (see [`adjust`]).
    pub fn pin_based_controls(&self, wanted: PinBasedControls) -> Result<u32, MissingControl> {
        adjust(wanted, self.pin_based)
    }

    /// The primary processor-based control word for `wanted`.
    pub fn primary_controls(&self, wanted: PrimaryControls) -> Result<u32, MissingControl> {
        adjust(wanted, self.primary)
    }

    /// The secondary processor-based control word for `wanted`.
    pub fn secondary_controls(&self, wanted: SecondaryControls) -> Result<u32, MissingControl> {
        adjust(wanted, self.secondary)
    }

    /// The VM-exit control word for `wanted`.
    pub fn exit_controls(&self, wanted: ExitControls) -> Result<u32, MissingControl> {
        adjust(wanted, self.exit)
    }

    /// The VM-entry control word for `wanted`.
    pub fn entry_controls(&self, wanted: EntryControls) -> Result<u32, MissingControl> {
        adjust(wanted, self.entry)
    }

    /// Whether an EPT with a 4-level walk and write-back paging structures can
    /// be used (SDM A.10).
    pub fn ept_usable(&self) -> bool {
        self.secondary.permits(SecondaryControls::ENABLE_EPT.bits())
            && self
                .ept_vpid
                .contains(EptVpidCap::PAGE_WALK_4 | EptVpidCap::MEMORY_TYPE_WB)
    }

    /// The highest VMCS field index (IA32_VMX_VMCS_ENUM bits 9:1, SDM A.9).
    pub const fn highest_vmcs_index(&self) -> u32 {
        ((self.vmcs_enum >> 1) & 0x1FF) as u32
    }

    /// CR0 forced to the VMX fixed bits (host CR0 before VMXON, SDM A.7).
    pub const fn fixed_cr0(&self, value: u64) -> u64 {
        apply_fixed_bits(value, self.cr0_fixed0, self.cr0_fixed1)
    }

    /// CR4 forced to the VMX fixed bits (SDM A.8).
    pub const fn fixed_cr4(&self, value: u64) -> u64 {
        apply_fixed_bits(value, self.cr4_fixed0, self.cr4_fixed1)
    }

    /// CR0 bits fixed to 1 for a guest: with unrestricted guest, PE and PG
    /// may be 0 (SDM 27.3.1.1).
    pub const fn guest_cr0_fixed0(&self, unrestricted_guest: bool) -> u64 {
        if unrestricted_guest {
            self.cr0_fixed0 & !(CR0_PE | CR0_PG)
        } else {
            self.cr0_fixed0
        }
    }

    /// Checks a CR0 value against the fixed bits (SDM A.7).
    pub const fn check_cr0(&self, value: u64) -> Result<(), FixedBitsViolation> {
        check_fixed_bits(value, self.cr0_fixed0, self.cr0_fixed1)
    }

    /// Checks a CR4 value against the fixed bits (SDM A.8).
    pub const fn check_cr4(&self, value: u64) -> Result<(), FixedBitsViolation> {
        check_fixed_bits(value, self.cr4_fixed0, self.cr4_fixed1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bochs' VMX MSRs (BASIC, PROCBASED_CTLS2 high half and EPT_VPID_CAP as
    /// recorded; the others typical of a Skylake-class CPU).
    fn bochs_msr(msr: u32) -> u64 {
        match msr {
            msr::IA32_VMX_BASIC => 0x00d8_1000_0000_002b,
            msr::IA32_VMX_PINBASED_CTLS => 0x0000_007f_0000_0016,
            msr::IA32_VMX_PROCBASED_CTLS => 0xfff9_fffe_0401_e172,
            msr::IA32_VMX_EXIT_CTLS => 0x01ff_ffff_0003_6dff,
            msr::IA32_VMX_ENTRY_CTLS => 0x0003_ffff_0000_11ff,
            msr::IA32_VMX_MISC => 0x0004_01e5,
            msr::IA32_VMX_CR0_FIXED0 => 0x8000_0021,
            msr::IA32_VMX_CR0_FIXED1 => 0xffff_ffff,
            msr::IA32_VMX_CR4_FIXED0 => 0x2000,
            msr::IA32_VMX_CR4_FIXED1 => 0x0037_67ff,
            msr::IA32_VMX_VMCS_ENUM => 0x2e,
            msr::IA32_VMX_PROCBASED_CTLS2 => 0x0217_7fff_0000_0000,
            msr::IA32_VMX_EPT_VPID_CAP => 0x0f01_0633_4141,
            msr::IA32_VMX_TRUE_PINBASED_CTLS => 0x0000_007f_0000_0016,
            msr::IA32_VMX_TRUE_PROCBASED_CTLS => 0xfff9_fffe_0400_6172,
            msr::IA32_VMX_TRUE_EXIT_CTLS => 0x01ff_ffff_0003_6dfb,
            msr::IA32_VMX_TRUE_ENTRY_CTLS => 0x0003_ffff_0000_11fb,
            other => panic!("unexpected MSR {other:#x}"),
        }
    }

    #[test]
    fn decodes_bochs_basic() {
        let caps = VmxCapabilities::from_reader(bochs_msr);
        assert_eq!(caps.basic.revision_id(), 0x2b);
        assert_eq!(caps.basic.region_size(), 4096);
        assert!(caps.basic.true_controls());
        assert!(caps.basic.ins_outs_info());
        assert!(caps.basic.memory_type_is_write_back());
        assert!(!caps.basic.addresses_limited_to_32_bits());
        assert_eq!(caps.highest_vmcs_index(), 0x17);
    }

    #[test]
    fn uses_true_controls_when_present() {
        let caps = VmxCapabilities::from_reader(bochs_msr);
        // TRUE_PROCBASED lets CR3-load/store exiting (bits 15, 16) be 0.
        assert_eq!(caps.primary.allowed0, 0x0400_6172);
        assert_eq!(caps.exit.allowed0, 0x0003_6dfb);

        let mut read = Vec::new();
        let legacy = VmxCapabilities::from_reader(|m| {
            read.push(m);
            if m == msr::IA32_VMX_BASIC {
                0x0058_1000_0000_002b // bit 55 clear
            } else {
                bochs_msr(m)
            }
        });
        assert!(!legacy.basic.true_controls());
        assert_eq!(legacy.primary.allowed0, 0x0401_e172);
        assert!(
            !read.iter().any(|m| (0x48D..=0x490).contains(m)),
            "TRUE MSRs read"
        );
    }

    #[test]
    fn decodes_bochs_secondary_and_ept() {
        let caps = VmxCapabilities::from_reader(bochs_msr);
        assert_eq!(caps.secondary.allowed1, 0x0217_7fff);
        assert!(caps.secondary.permits(
            (SecondaryControls::ENABLE_EPT | SecondaryControls::UNRESTRICTED_GUEST).bits()
        ));
        assert!(caps
            .secondary
            .permits(SecondaryControls::ENABLE_VPID.bits()));
        assert!(!caps
            .secondary
            .permits(SecondaryControls::ENABLE_ENCLS_EXITING.bits()));
        let ept = caps.ept_vpid;
        assert!(ept.contains(EptVpidCap::EXECUTE_ONLY));
        assert!(ept.contains(EptVpidCap::PAGE_WALK_4));
        assert!(!ept.contains(EptVpidCap::PAGE_WALK_5));
        assert!(ept.contains(EptVpidCap::MEMORY_TYPE_WB | EptVpidCap::MEMORY_TYPE_UC));
        assert!(ept.contains(EptVpidCap::PAGE_2M | EptVpidCap::PAGE_1G));
        assert!(ept.contains(EptVpidCap::INVEPT | EptVpidCap::ACCESSED_DIRTY));
        assert!(ept.contains(EptVpidCap::INVEPT_SINGLE_CONTEXT | EptVpidCap::INVEPT_ALL_CONTEXT));
        assert!(ept.contains(EptVpidCap::INVVPID | EptVpidCap::INVVPID_SINGLE_CONTEXT));
        assert!(ept.contains(
            EptVpidCap::INVVPID_INDIVIDUAL_ADDRESS
                | EptVpidCap::INVVPID_ALL_CONTEXT
                | EptVpidCap::INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS
        ));
        assert!(!ept.contains(EptVpidCap::ADVANCED_EXIT_INFO));
        assert!(caps.ept_usable());
    }

    #[test]
    fn skips_absent_msrs() {
        let mut read = Vec::new();
        let caps = VmxCapabilities::from_reader(|m| {
            read.push(m);
            match m {
                // No "activate secondary controls" in allowed-1.
                msr::IA32_VMX_TRUE_PROCBASED_CTLS => 0x7ff9_fffe_0400_6172,
                _ => bochs_msr(m),
            }
        });
        assert_eq!(caps.secondary, Allowed::NONE);
        assert!(caps.ept_vpid.is_empty());
        assert!(!caps.ept_usable());
        assert!(!read.contains(&msr::IA32_VMX_PROCBASED_CTLS2));
        assert!(!read.contains(&msr::IA32_VMX_EPT_VPID_CAP));
    }

    #[test]
    fn decodes_misc() {
        let misc = VmxCapabilities::from_reader(bochs_msr).misc;
        assert_eq!(misc.preemption_timer_rate(), 5);
        assert!(misc.stores_lma_on_exit());
        assert_eq!(misc.activity_states(), ActivityStates::all());
        assert_eq!(misc.cr3_target_count(), 4);
        assert_eq!(misc.max_msr_list_entries(), 512);
        assert!(!misc.vmwrite_to_exit_info());
    }

    #[test]
    fn adjust_sets_required_bits() {
        let caps = VmxCapabilities::from_reader(bochs_msr);
        let pin = caps
            .pin_based_controls(PinBasedControls::EXTERNAL_INTERRUPT_EXITING)
            .unwrap();
        assert_eq!(pin, 0x16 | 0x1);
        let primary = caps
            .primary_controls(
                PrimaryControls::HLT_EXITING
                    | PrimaryControls::USE_IO_BITMAPS
                    | PrimaryControls::ACTIVATE_SECONDARY_CONTROLS,
            )
            .unwrap();
        assert_eq!(primary, 0x0400_6172 | (1 << 7) | (1 << 25) | (1 << 31));
        let secondary = caps
            .secondary_controls(
                SecondaryControls::ENABLE_EPT | SecondaryControls::UNRESTRICTED_GUEST,
            )
            .unwrap();
        assert_eq!(secondary, 0b1000_0010);
        let entry = caps
            .entry_controls(EntryControls::IA32E_MODE_GUEST)
            .unwrap();
        assert_eq!(entry, 0x11fb | (1 << 9));
    }

    #[test]
    fn adjust_names_missing_control() {
        let no_ept = Allowed::from_msr(0x0000_0001_0000_0000);
        let err = adjust(SecondaryControls::ENABLE_EPT, no_ept).unwrap_err();
        assert_eq!(err.kind, ControlKind::Secondary);
        assert_eq!(err.bit, 1);
        assert_eq!(err.name, "enable EPT");
        assert_eq!(
            err.to_string(),
            "secondary: enable EPT (bit 1) is not supported by this CPU"
        );

        let caps = VmxCapabilities::from_reader(bochs_msr);
        let err = caps
            .secondary_controls(
                SecondaryControls::ENABLE_ENCLS_EXITING | SecondaryControls::ENABLE_PCONFIG,
            )
            .unwrap_err();
        assert_eq!(err.name, "enable ENCLS exiting");
        assert_eq!(err.missing, (1 << 15) | (1 << 27));
        assert!(err.to_string().contains("also missing: 0x8000000"));

        let err = adjust(PrimaryControls::from_bits_retain(1 << 0), Allowed::NONE).unwrap_err();
        assert_eq!(err.name, "unnamed control");
    }

    #[test]
    fn bit_names_match_flag_names() {
        // Every named flag has a human name for its bit, and vice versa.
        fn check<F: ControlWord>() {
            for flag in F::FLAGS {
                let bit = flag.value().bits().trailing_zeros();
                assert!(F::bit_name(bit).is_some(), "{}", flag.name());
            }
            let named = (0..32).filter(|b| F::bit_name(*b).is_some()).count();
            assert_eq!(named, F::FLAGS.len());
        }
        check::<PinBasedControls>();
        check::<PrimaryControls>();
        check::<SecondaryControls>();
        check::<ExitControls>();
        check::<EntryControls>();
        assert_eq!(ExitControls::bit_name(9), Some("host address-space size"));
        assert_eq!(EntryControls::bit_name(9), Some("IA-32e mode guest"));
    }

    #[test]
    fn fixed_bits() {
        let caps = VmxCapabilities::from_reader(bochs_msr);
        assert_eq!(caps.fixed_cr0(0x11), 0x8000_0031);
        assert_eq!(caps.fixed_cr4(0x20), 0x2020);
        assert_eq!(caps.check_cr4(0x2020), Ok(()));
        assert_eq!(
            caps.check_cr4(0x0040_0020),
            Err(FixedBitsViolation {
                must_be_set: 0x2000,
                must_be_clear: 0x0040_0000
            })
        );
        assert_eq!(caps.check_cr0(0x8000_0031), Ok(()));
        assert_eq!(caps.guest_cr0_fixed0(true), 0x20);
        assert_eq!(caps.guest_cr0_fixed0(false), 0x8000_0021);
    }
}
