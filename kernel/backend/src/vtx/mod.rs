//! The VT-x backend: control words decided once at boot ([`VmxSetup`]),
//! VMCS programming ([`setup`]), exit translation ([`decode`]), guest-state
//! access over the VMCS ([`state`]), entry preparation ([`entry`]) and the
//! MSR bitmap ([`msr_bitmap`]).
//!
//! # Required and optional features
//!
//! [`VmxSetup::from_caps`] reads the capability MSRs once, when VMX is
//! enabled. Features without which a VM is not isolated or cannot be
//! scheduled are required and a missing one is refused at boot with the
//! control named ([`SetupError`]); features that only make things faster or
//! widen what guests can do are optional, and what is missing is listed for
//! the banner ([`VmxSetup::missing`]):
//!
//! | feature | required | without it |
//! |---|---|---|
//! | EPT (4-level, write-back), INVEPT | yes | - |
//! | MSR bitmaps, HLT/I/O/MONITOR/MWAIT exiting | yes | - |
//! | VMX-preemption timer | yes | - |
//! | load/save EFER and PAT, debug controls, IA-32e mode guest | yes | - |
//! | VPID | no | TLB flushed at every VM entry and exit (hardware does it) |
//! | unrestricted guest | no | real-mode VMs refused; a guest clearing CR0.PE/PG is stopped |
//! | TPR shadow | no | MOV CR8 exits and is emulated |
//! | RDTSCP, INVPCID | no | the instruction raises #UD in the guest |
//! | RDPMC exiting | no | RDPMC reads the host's counters (a leak): noted |
//! | save VMX-preemption timer value | no | the timer is written at every VM entry instead of once per slice |

pub mod decode;
pub mod entry;
pub mod msr_bitmap;
pub mod setup;
pub mod state;

use core::fmt;

use hvcore::arch::GuestLimits;
use hvcore::arch::{CR0_CD, CR0_HOST_OWNED, CR0_NW, CR4_GUEST_OWNED, CR4_OSXSAVE};
use vmx::{
    EntryControls, EptVpidCap, ExitControls, MissingControl, PinBasedControls, PrimaryControls,
    SecondaryControls, VmxCapabilities,
};

/// Why VMs cannot run on this CPU: a required feature is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// A required VM-execution, exit or entry control cannot be set.
    Control(MissingControl),
    /// EPT with a 4-level walk and write-back structures is not offered.
    NoEpt,
    /// INVEPT (single or all contexts) is not offered.
    NoInvept,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Control(m) => write!(f, "VT-x lacks a required control: {m}"),
            SetupError::NoEpt => write!(f, "VT-x lacks EPT with 4-level, write-back page walks"),
            SetupError::NoInvept => write!(f, "VT-x lacks INVEPT"),
        }
    }
}

/// Optional features this CPU has (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Optional {
    /// VPID tags the TLB per VM.
    pub vpid: bool,
    /// Unrestricted guest: real mode and unpaged protected mode in VMX.
    pub unrestricted_guest: bool,
    /// TPR shadow: MOV CR8 without exits, through a virtual-APIC page.
    pub tpr_shadow: bool,
    /// RDTSCP in the guest.
    pub rdtscp: bool,
    /// INVPCID in the guest.
    pub invpcid: bool,
    /// RDPMC exiting.
    pub rdpmc_exiting: bool,
    /// MOV-DR exiting: a vCPU's first MOV to or from a debug register exits,
    /// so DR0-DR3 are switched only for vCPUs that have used them.
    pub mov_dr_exiting: bool,
    /// The VMX-preemption timer's value is saved at every VM exit, so the
    /// timer written at a slice's first entry counts down the whole slice.
    pub preemption_timer_save: bool,
}

/// Host facts the guest limits depend on (CPUID, decided by the kernel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostFeatures {
    /// XCR0 bits the host CPU supports and enables for guests (0 without XSAVE).
    pub xcr0_supported: u64,
    /// Physical address width (CPUID 0x8000_0008 EAX[7:0]).
    pub phys_addr_bits: u8,
}

/// Control words and guest limits decided once at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxSetup {
    /// Pin-based controls.
    pub pin: u32,
    /// Primary processor-based controls.
    pub primary: u32,
    /// Secondary processor-based controls.
    pub secondary: u32,
    /// VM-exit controls.
    pub exit: u32,
    /// VM-entry controls for a guest not in IA-32e mode (the bit is added
    /// per guest, see [`VmxSetup::entry_controls`]).
    pub entry: u32,
    /// Optional features present.
    pub optional: Optional,
    /// CR0 bits the hypervisor owns (guest/host mask, SDM 25.6.6).
    pub cr0_mask: u64,
    /// CR4 bits the hypervisor owns.
    pub cr4_mask: u64,
    /// CR0 bits that must be 1 while in VMX non-root operation.
    pub cr0_fixed1_bits: u64,
    /// CR0 bits that may be 1.
    pub cr0_allowed_bits: u64,
    /// CR4 bits that must be 1 (VMXE).
    pub cr4_fixed1_bits: u64,
    /// What guests may use.
    pub limits: GuestLimits,
    /// VMX-preemption timer rate: the timer counts every 2^rate TSC ticks.
    pub preemption_timer_rate: u8,
    /// INVEPT single-context is offered (else all-context is used).
    pub invept_single: bool,
    /// INVVPID single-context is offered (else all-context is used).
    pub invvpid_single: bool,
}

/// A missing optional feature and what that means, for the banner.
pub type Missing = (&'static str, &'static str);

impl VmxSetup {
    /// Decides every control word from the capability MSRs.
    pub fn from_caps(caps: &VmxCapabilities, host: HostFeatures) -> Result<VmxSetup, SetupError> {
        if !caps.ept_usable() {
            return Err(SetupError::NoEpt);
        }
        if !caps.ept_vpid.contains(EptVpidCap::INVEPT)
            || !caps
                .ept_vpid
                .intersects(EptVpidCap::INVEPT_SINGLE_CONTEXT | EptVpidCap::INVEPT_ALL_CONTEXT)
        {
            return Err(SetupError::NoInvept);
        }
        let c = SetupError::Control;
        let pin = caps
            .pin_based_controls(
                PinBasedControls::EXTERNAL_INTERRUPT_EXITING
                    | PinBasedControls::NMI_EXITING
                    | PinBasedControls::ACTIVATE_PREEMPTION_TIMER,
            )
            .map_err(c)?;
        let secondary_allowed = |bits: SecondaryControls| caps.secondary.permits(bits.bits());
        let primary_allowed = |bits: PrimaryControls| caps.primary.permits(bits.bits());
        let optional = Optional {
            vpid: secondary_allowed(SecondaryControls::ENABLE_VPID)
                && caps.ept_vpid.contains(EptVpidCap::INVVPID)
                && caps.ept_vpid.intersects(
                    EptVpidCap::INVVPID_SINGLE_CONTEXT | EptVpidCap::INVVPID_ALL_CONTEXT,
                ),
            unrestricted_guest: secondary_allowed(SecondaryControls::UNRESTRICTED_GUEST),
            tpr_shadow: primary_allowed(PrimaryControls::USE_TPR_SHADOW),
            rdtscp: secondary_allowed(SecondaryControls::ENABLE_RDTSCP),
            invpcid: secondary_allowed(SecondaryControls::ENABLE_INVPCID),
            rdpmc_exiting: primary_allowed(PrimaryControls::RDPMC_EXITING),
            mov_dr_exiting: primary_allowed(PrimaryControls::MOV_DR_EXITING),
            preemption_timer_save: caps
                .exit
                .permits(ExitControls::SAVE_PREEMPTION_TIMER.bits()),
        };
        let mut primary_wanted = PrimaryControls::HLT_EXITING
            | PrimaryControls::UNCONDITIONAL_IO_EXITING
            | PrimaryControls::USE_MSR_BITMAPS
            | PrimaryControls::MONITOR_EXITING
            | PrimaryControls::MWAIT_EXITING
            | PrimaryControls::ACTIVATE_SECONDARY_CONTROLS;
        primary_wanted |= if optional.tpr_shadow {
            PrimaryControls::USE_TPR_SHADOW
        } else {
            PrimaryControls::CR8_LOAD_EXITING | PrimaryControls::CR8_STORE_EXITING
        };
        if optional.rdpmc_exiting {
            primary_wanted |= PrimaryControls::RDPMC_EXITING;
        }
        if optional.mov_dr_exiting {
            primary_wanted |= PrimaryControls::MOV_DR_EXITING;
        }
        let primary = caps.primary_controls(primary_wanted).map_err(c)?;
        let mut secondary_wanted = SecondaryControls::ENABLE_EPT;
        for (present, bit) in [
            (optional.vpid, SecondaryControls::ENABLE_VPID),
            (
                optional.unrestricted_guest,
                SecondaryControls::UNRESTRICTED_GUEST,
            ),
            (optional.rdtscp, SecondaryControls::ENABLE_RDTSCP),
            (optional.invpcid, SecondaryControls::ENABLE_INVPCID),
        ] {
            if present {
                secondary_wanted |= bit;
            }
        }
        let secondary = caps.secondary_controls(secondary_wanted).map_err(c)?;
        let mut exit_wanted = ExitControls::HOST_ADDRESS_SPACE_SIZE
            | ExitControls::SAVE_DEBUG_CONTROLS
            | ExitControls::LOAD_IA32_EFER
            | ExitControls::SAVE_IA32_EFER
            | ExitControls::LOAD_IA32_PAT
            | ExitControls::SAVE_IA32_PAT;
        if optional.preemption_timer_save {
            exit_wanted |= ExitControls::SAVE_PREEMPTION_TIMER;
        }
        let exit = caps.exit_controls(exit_wanted).map_err(c)?;
        let entry = caps
            .entry_controls(
                EntryControls::LOAD_DEBUG_CONTROLS
                    | EntryControls::LOAD_IA32_EFER
                    | EntryControls::LOAD_IA32_PAT,
            )
            .map_err(c)?;
        // IA-32e mode guest must be settable too (checked here, set per guest).
        caps.entry_controls(EntryControls::IA32E_MODE_GUEST)
            .map_err(c)?;

        // CR0: the hypervisor owns PE/PG/CD/NW and every bit VMX fixes
        // (SDM 25.6.6, A.7); with unrestricted guest PE and PG may be 0.
        let cr0_fixed1_bits =
            caps.guest_cr0_fixed0(optional.unrestricted_guest) & !(CR0_CD | CR0_NW);
        let cr0_allowed_bits = caps.cr0_fixed1 & 0xFFFF_FFFF;
        let cr0_mask = CR0_HOST_OWNED | cr0_fixed1_bits | (!cr0_allowed_bits & 0xFFFF_FFFF);
        let cr4_fixed1_bits = caps.cr4_fixed0;
        let cr4_allowed = CR4_GUEST_OWNED & caps.cr4_fixed1 & !caps.cr4_fixed0;
        let cr4_mask = !cr4_allowed;
        let limits = GuestLimits {
            xcr0_allowed: host.xcr0_supported,
            cr4_allowed: if host.xcr0_supported == 0 {
                cr4_allowed & !CR4_OSXSAVE
            } else {
                cr4_allowed
            },
            phys_addr_bits: host.phys_addr_bits,
            unrestricted: optional.unrestricted_guest,
        };
        Ok(VmxSetup {
            pin,
            primary,
            secondary,
            exit,
            entry,
            optional,
            cr0_mask,
            cr4_mask: if host.xcr0_supported == 0 {
                cr4_mask | CR4_OSXSAVE
            } else {
                cr4_mask
            },
            cr0_fixed1_bits,
            cr0_allowed_bits,
            cr4_fixed1_bits,
            limits,
            preemption_timer_rate: caps.misc.preemption_timer_rate(),
            invept_single: caps.ept_vpid.contains(EptVpidCap::INVEPT_SINGLE_CONTEXT),
            invvpid_single: caps.ept_vpid.contains(EptVpidCap::INVVPID_SINGLE_CONTEXT),
        })
    }

    /// The VM-entry controls for a guest with EFER.LMA = `long_mode`.
    pub fn entry_controls(&self, long_mode: bool) -> u32 {
        if long_mode {
            self.entry | EntryControls::IA32E_MODE_GUEST.bits()
        } else {
            self.entry
        }
    }

    /// Optional features this CPU lacks, with their consequence.
    pub fn missing(&self) -> alloc::vec::Vec<Missing> {
        let o = self.optional;
        [
            (o.vpid, ("VPID", "TLB flushed on every VM entry and exit")),
            (
                o.unrestricted_guest,
                ("unrestricted guest", "real-mode VMs refused"),
            ),
            (
                o.tpr_shadow,
                ("TPR shadow", "MOV CR8 exits and is emulated"),
            ),
            (o.rdtscp, ("RDTSCP", "#UD in guests")),
            (o.invpcid, ("INVPCID", "#UD in guests")),
            (
                o.rdpmc_exiting,
                ("RDPMC exiting", "guests can read performance counters"),
            ),
            (
                o.mov_dr_exiting,
                (
                    "MOV-DR exiting",
                    "DR0-DR3 switched with every vCPU, used or not",
                ),
            ),
            (
                o.preemption_timer_save,
                (
                    "saving the VMX-preemption timer",
                    "the timer is written at every VM entry",
                ),
            ),
        ]
        .into_iter()
        .filter(|(present, _)| !present)
        .map(|(_, m)| m)
        .collect()
    }

    /// The CR0 value the hardware runs with for a guest-visible `cr0`:
    /// VMX-fixed bits forced, CD/NW always clear (the host's caches stay on).
    pub fn hardware_cr0(&self, cr0: u64) -> u64 {
        ((cr0 | self.cr0_fixed1_bits) & self.cr0_allowed_bits) & !(CR0_CD | CR0_NW)
    }

    /// The CR4 value the hardware runs with for a guest-visible `cr4`.
    pub fn hardware_cr4(&self, cr4: u64) -> u64 {
        (cr4 & !self.cr4_mask) | self.cr4_fixed1_bits
    }
}

#[cfg(test)]
pub(crate) mod testcaps {
    //! Capability sets for tests: Bochs' Skylake-X as recorded, and variants
    //! without VPID, without unrestricted guest, without TPR shadow.
    use vmx::msr;
    use vmx::VmxCapabilities;

    pub fn bochs_msr(m: u32) -> u64 {
        match m {
            msr::IA32_VMX_BASIC => 0x00d8_1000_0000_002b,
            msr::IA32_VMX_PINBASED_CTLS | msr::IA32_VMX_TRUE_PINBASED_CTLS => 0x0000_007f_0000_0016,
            msr::IA32_VMX_PROCBASED_CTLS => 0xfff9_fffe_0401_e172,
            msr::IA32_VMX_TRUE_PROCBASED_CTLS => 0xfff9_fffe_0400_6172,
            msr::IA32_VMX_EXIT_CTLS => 0x01ff_ffff_0003_6dff,
            msr::IA32_VMX_TRUE_EXIT_CTLS => 0x01ff_ffff_0003_6dfb,
            msr::IA32_VMX_ENTRY_CTLS => 0x0003_ffff_0000_11ff,
            msr::IA32_VMX_TRUE_ENTRY_CTLS => 0x0003_ffff_0000_11fb,
            msr::IA32_VMX_MISC => 0x0004_01e5,
            msr::IA32_VMX_CR0_FIXED0 => 0x8000_0021,
            msr::IA32_VMX_CR0_FIXED1 => 0xffff_ffff,
            msr::IA32_VMX_CR4_FIXED0 => 0x2000,
            msr::IA32_VMX_CR4_FIXED1 => 0x0037_67ff,
            msr::IA32_VMX_VMCS_ENUM => 0x2e,
            msr::IA32_VMX_PROCBASED_CTLS2 => 0x0217_7fff_0000_0000,
            msr::IA32_VMX_EPT_VPID_CAP => 0x0f01_0633_4141,
            other => panic!("unexpected MSR {other:#x}"),
        }
    }

    pub fn bochs() -> VmxCapabilities {
        VmxCapabilities::from_reader(bochs_msr)
    }

    /// Bochs with some allowed-1 bits of one control MSR taken away.
    pub fn without(msr_index: u32, allowed1_bits: u64) -> VmxCapabilities {
        VmxCapabilities::from_reader(|m| {
            let v = bochs_msr(m);
            if m == msr_index {
                v & !(allowed1_bits << 32)
            } else {
                v
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testcaps::*;
    use super::*;
    use vmx::msr;

    const HOST: HostFeatures = HostFeatures {
        xcr0_supported: 0x7,
        phys_addr_bits: 40,
    };

    #[test]
    fn bochs_has_everything() {
        let s = VmxSetup::from_caps(&bochs(), HOST).unwrap();
        assert_eq!(
            s.optional,
            Optional {
                vpid: true,
                unrestricted_guest: true,
                tpr_shadow: true,
                rdtscp: true,
                invpcid: true,
                rdpmc_exiting: true,
                mov_dr_exiting: true,
                preemption_timer_save: true
            }
        );
        assert_ne!(s.primary & PrimaryControls::MOV_DR_EXITING.bits(), 0);
        assert_ne!(s.exit & ExitControls::SAVE_PREEMPTION_TIMER.bits(), 0);
        assert!(s.missing().is_empty());
        assert_ne!(s.primary & PrimaryControls::USE_TPR_SHADOW.bits(), 0);
        assert_eq!(s.primary & PrimaryControls::CR8_LOAD_EXITING.bits(), 0);
        assert_ne!(s.primary & PrimaryControls::USE_MSR_BITMAPS.bits(), 0);
        assert_ne!(
            s.secondary & SecondaryControls::UNRESTRICTED_GUEST.bits(),
            0
        );
        // CR0: PE/PG/CD/NW and NE owned; CR4: VMXE owned, OSXSAVE guest's.
        assert_eq!(s.cr0_mask & 0xFFFF_FFFF, 0xE000_0021);
        assert_ne!(s.cr4_mask & (1 << 13), 0);
        assert_eq!(s.cr4_mask & (1 << 18), 0);
        assert_eq!(
            s.hardware_cr0(0x6000_0010),
            0x30,
            "CD/NW dropped, NE forced"
        );
        assert_eq!(s.hardware_cr4(0x20), 0x2020, "VMXE forced");
        assert_eq!(
            s.entry_controls(true) & EntryControls::IA32E_MODE_GUEST.bits(),
            EntryControls::IA32E_MODE_GUEST.bits()
        );
        assert!(s.limits.unrestricted);
    }

    #[test]
    fn without_vpid_runs_and_says_so() {
        let caps = without(
            msr::IA32_VMX_PROCBASED_CTLS2,
            SecondaryControls::ENABLE_VPID.bits() as u64,
        );
        let s = VmxSetup::from_caps(&caps, HOST).unwrap();
        assert!(!s.optional.vpid);
        assert_eq!(s.secondary & SecondaryControls::ENABLE_VPID.bits(), 0);
        assert_eq!(
            s.missing(),
            [("VPID", "TLB flushed on every VM entry and exit")]
        );
    }

    #[test]
    fn without_saving_the_timer_it_is_written_per_entry() {
        let bit = u64::from(ExitControls::SAVE_PREEMPTION_TIMER.bits());
        let caps = VmxCapabilities::from_reader(|m| {
            let v = bochs_msr(m);
            if m == msr::IA32_VMX_EXIT_CTLS || m == msr::IA32_VMX_TRUE_EXIT_CTLS {
                v & !(bit << 32)
            } else {
                v
            }
        });
        let s = VmxSetup::from_caps(&caps, HOST).unwrap();
        assert!(!s.optional.preemption_timer_save);
        assert_eq!(s.exit & ExitControls::SAVE_PREEMPTION_TIMER.bits(), 0);
        assert_eq!(
            s.missing(),
            [(
                "saving the VMX-preemption timer",
                "the timer is written at every VM entry"
            )]
        );
    }

    #[test]
    fn without_unrestricted_guest_pe_pg_fixed() {
        let caps = without(
            msr::IA32_VMX_PROCBASED_CTLS2,
            SecondaryControls::UNRESTRICTED_GUEST.bits() as u64,
        );
        let s = VmxSetup::from_caps(&caps, HOST).unwrap();
        assert!(!s.limits.unrestricted);
        assert_eq!(s.hardware_cr0(0x10) & 0x8000_0001, 0x8000_0001);
        assert_eq!(s.missing()[0].0, "unrestricted guest");
    }

    #[test]
    fn without_tpr_shadow_cr8_exits() {
        let caps = without(
            msr::IA32_VMX_TRUE_PROCBASED_CTLS,
            PrimaryControls::USE_TPR_SHADOW.bits() as u64,
        );
        let s = VmxSetup::from_caps(&caps, HOST).unwrap();
        let cr8 = (PrimaryControls::CR8_LOAD_EXITING | PrimaryControls::CR8_STORE_EXITING).bits();
        assert_eq!(s.primary & cr8, cr8);
        assert_eq!(s.primary & PrimaryControls::USE_TPR_SHADOW.bits(), 0);
    }

    #[test]
    fn missing_required_control_is_named() {
        let caps = without(
            msr::IA32_VMX_TRUE_PROCBASED_CTLS,
            PrimaryControls::USE_MSR_BITMAPS.bits() as u64,
        );
        let e = VmxSetup::from_caps(&caps, HOST).unwrap_err();
        assert!(alloc::format!("{e}").contains("use MSR bitmaps"), "{e}");
        let caps = without(
            msr::IA32_VMX_PROCBASED_CTLS2,
            SecondaryControls::ENABLE_EPT.bits() as u64,
        );
        assert_eq!(VmxSetup::from_caps(&caps, HOST), Err(SetupError::NoEpt));
    }

    #[test]
    fn no_xsave_hides_osxsave() {
        let s = VmxSetup::from_caps(
            &bochs(),
            HostFeatures {
                xcr0_supported: 0,
                phys_addr_bits: 36,
            },
        )
        .unwrap();
        assert_eq!(s.limits.cr4_allowed & (1 << 18), 0);
        assert_ne!(s.cr4_mask & (1 << 18), 0);
    }
}
