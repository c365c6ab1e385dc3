//! AMD-V capability decoding from raw CPUID values and the VM_CR MSR
//! (APM Vol. 2, 15.4 "Enabling SVM", 15.30 "SVM Related MSRs"; CPUID
//! Fn8000_0001 and Fn8000_000A in APM Vol. 3, Appendix E).
//!
//! Everything here is a pure function of register values, so it is tested
//! with recorded ones; the kernel executes CPUID and RDMSR and hands the
//! results over (see [`probe`], which only reads VM_CR once CPUID has said
//! that the MSR exists).
//!
//! ```
//! use svm::caps::{check, SvmError, SvmFeatures};
//! // Bochs `cpu: model=ryzen` (shared/PLATFORM.md).
//! let ext1 = [0, 0, 1 << 2, 0]; // CPUID 8000_0001h: ECX.SVM
//! let leaf_a = [1, 0x8000, 0, 0x44f]; // CPUID 8000_000Ah
//! let caps = check(0x8000_001F, ext1, leaf_a, 0).unwrap();
//! assert_eq!(caps.asid_count, 0x8000);
//! assert!(caps.features.contains(SvmFeatures::NESTED_PAGING | SvmFeatures::NRIP_SAVE));
//! // Firmware turned AMD-V off and locked it.
//! let err = check(0x8000_001F, ext1, leaf_a, (1 << 4) | (1 << 3)).unwrap_err();
//! assert_eq!(err.to_string(), "AMD-V disabled by firmware (VM_CR.SVMDIS)");
//! ```

use core::fmt;

use bitflags::bitflags;

/// CPUID leaf reporting the highest extended leaf in EAX (APM Vol. 3, Appendix E, Fn8000_0000).
pub const CPUID_EXT_MAX: u32 = 0x8000_0000;
/// CPUID leaf with the extended feature flags; ECX bit 2 is SVM (APM Vol. 3,
/// Appendix E, Fn8000_0001).
pub const CPUID_EXT_FEATURES: u32 = 0x8000_0001;
/// CPUID leaf with the SVM revision, ASID count and SVM features (APM
/// Vol. 3, Appendix E, Fn8000_000A; APM Vol. 2, 15.4).
pub const CPUID_SVM_FEATURES: u32 = 0x8000_000A;
/// CPUID Fn8000_0001 ECX bit 2: SVM, secure virtual machine (APM 15.4).
pub const CPUID_EXT_ECX_SVM: u32 = 1 << 2;

/// EFER, the extended feature enable register (APM Vol. 2, 3.1.7).
pub const MSR_EFER: u32 = 0xC000_0080;
/// EFER bit 12, SVME: enables the SVM instructions (APM 15.4).
pub const EFER_SVME: u64 = 1 << 12;
/// VM_CR, SVM control (APM 15.30.1).
pub const MSR_VM_CR: u32 = 0xC001_0114;
/// VM_HSAVE_PA: physical address of the 4 KiB host state-save area that
/// VMRUN and #VMEXIT use (APM 15.30.4).
pub const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;
/// TSC_RATIO: guest TSC frequency ratio, with TscRateMsr (APM 15.30.5).
pub const MSR_TSC_RATIO: u32 = 0xC000_0104;

bitflags! {
    /// VM_CR, MSR C001_0114h (APM 15.30.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct VmCr: u64 {
        /// Bit 0 (DPD): debug port disable.
        const DPD = 1 << 0;
        /// Bit 1 (R_INIT): INIT is redirected to #SX.
        const R_INIT = 1 << 1;
        /// Bit 2 (DIS_A20M): A20 masking disabled.
        const DIS_A20M = 1 << 2;
        /// Bit 3 (LOCK): SVMDIS and LOCK are read-only until reset (or the
        /// SVM key unlocks them).
        const LOCK = 1 << 3;
        /// Bit 4 (SVMDIS): setting EFER.SVME faults; AMD-V is off.
        const SVMDIS = 1 << 4;
        // Other bits are preserved, not interpreted.
        const _ = !0;
    }
}

bitflags! {
    /// CPUID Fn8000_000A EDX: SVM feature identification (APM Vol. 3,
    /// Appendix E, Fn8000_000A "SVM Revision and Feature Identification").
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct SvmFeatures: u32 {
        /// Bit 0 (NP): nested paging (APM 15.25).
        const NESTED_PAGING = 1 << 0;
        /// Bit 1 (LbrVirt): LBR virtualization.
        const LBR_VIRT = 1 << 1;
        /// Bit 2 (SVML): SVM lock, the VM_CR.LOCK key (APM 15.30.1).
        const SVM_LOCK = 1 << 2;
        /// Bit 3 (NRIPS): next-RIP save on #VMEXIT (the VMCB nRIP field).
        const NRIP_SAVE = 1 << 3;
        /// Bit 4 (TscRateMsr): the TSC_RATIO MSR.
        const TSC_RATE_MSR = 1 << 4;
        /// Bit 5 (VmcbClean): VMCB clean bits (APM 15.15.3).
        const VMCB_CLEAN = 1 << 5;
        /// Bit 6 (FlushByAsid): TLB_CONTROL values 3 and 7 (APM 15.16).
        const FLUSH_BY_ASID = 1 << 6;
        /// Bit 7 (DecodeAssists): EXITINFO operand details and guest
        /// instruction bytes.
        const DECODE_ASSISTS = 1 << 7;
        /// Bit 10 (PauseFilter): the pause filter count.
        const PAUSE_FILTER = 1 << 10;
        /// Bit 12 (PauseFilterThreshold): the pause filter threshold.
        const PAUSE_FILTER_THRESHOLD = 1 << 12;
        /// Bit 13 (AVIC): advanced virtual interrupt controller (APM 15.29).
        const AVIC = 1 << 13;
        /// Bit 15 (VMSAVEvirt): virtualized VMSAVE/VMLOAD.
        const VMSAVE_VIRT = 1 << 15;
        /// Bit 16 (VGIF): virtual global interrupt flag.
        const VGIF = 1 << 16;
        /// Bit 17 (GMET): guest-mode execute trap.
        const GMET = 1 << 17;
        /// Bit 18 (x2AVIC): AVIC in x2APIC mode.
        const X2AVIC = 1 << 18;
        /// Bit 20 (SpecCtrl): the guest SPEC_CTRL in the VMCB.
        const SPEC_CTRL = 1 << 20;
        /// Bit 25 (VNMI): virtual NMI.
        const VNMI = 1 << 25;
        /// Bit 29 (BusLockThreshold): bus-lock threshold.
        const BUS_LOCK_THRESHOLD = 1 << 29;
        /// Bit 30 (IdleHltIntercept): the IDLE_HLT intercept.
        const IDLE_HLT_INTERCEPT = 1 << 30;
    }
}

/// What CPUID and VM_CR say about AMD-V on this processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvmCapabilities {
    /// Fn8000_000A EAX bits 7:0: SVM revision number.
    pub revision: u8,
    /// Fn8000_000A EBX: number of ASIDs, including ASID 0 (the host's).
    pub asid_count: u32,
    /// Fn8000_000A EDX: the optional features.
    pub features: SvmFeatures,
    /// VM_CR as read (empty if it was not read).
    pub vm_cr: VmCr,
    /// The CR4 bits this processor implements ([`cr4_implemented`]); the
    /// others are reserved: MOV CR4 with one set raises #GP, and VMRUN
    /// refuses a guest CR4 with one set (APM 15.5.1). [`SvmCapabilities::from_cpuid`]
    /// and [`check`] start from [`CR4_BASELINE`]; [`probe`] reads the rest
    /// from CPUID.
    pub cr4_implemented: u64,
}

impl SvmCapabilities {
    /// Decodes CPUID Fn8000_000A (`[eax, ebx, ecx, edx]`) and a VM_CR value.
    /// Unknown feature bits are dropped.
    pub const fn from_cpuid(leaf_8000_000a: [u32; 4], vm_cr: u64) -> Self {
        SvmCapabilities {
            revision: leaf_8000_000a[0] as u8,
            asid_count: leaf_8000_000a[1],
            features: SvmFeatures::from_bits_truncate(leaf_8000_000a[3]),
            vm_cr: VmCr::from_bits_retain(vm_cr),
            cr4_implemented: CR4_BASELINE,
        }
    }

    /// The same capabilities with the CR4 bits CPUID reports
    /// ([`cr4_implemented`]).
    pub const fn with_cr4_implemented(self, cr4_implemented: u64) -> Self {
        SvmCapabilities {
            cr4_implemented,
            ..self
        }
    }

    /// The highest ASID a guest can use (ASID 0 is the host's); 0 if the
    /// CPU reports fewer than two ASIDs.
    pub const fn max_guest_asid(&self) -> u32 {
        self.asid_count.saturating_sub(1)
    }
}

/// CPUID leaf with the basic feature flags (Fn0000_0001).
pub const CPUID_FEATURES: u32 = 1;
/// CPUID leaf with the structured extended feature flags (Fn0000_0007,
/// subleaf 0).
pub const CPUID_STRUCTURED_FEATURES: u32 = 7;

/// CR4 bits 10:0, which every processor with AMD-V implements: VME, PVI,
/// TSD, DE, PSE, PAE, MCE, PGE, PCE, OSFXSR, OSXMMEXCPT (APM Vol. 2, 3.1.3;
/// long mode needs PAE and every AMD64 processor has VME, PSE, PGE, MCE,
/// FXSR and SSE).
pub const CR4_BASELINE: u64 = 0x7FF;

/// The CR4 bits beyond [`CR4_BASELINE`] and the CPUID bit that says the
/// processor implements each: `(CR4 bit, leaf, register index in
/// [eax, ebx, ecx, edx], register bit)` (APM Vol. 2, 3.1.3; Vol. 3,
/// Appendix E). VMXE (13) and SMXE (14) are Intel's: reserved on AMD.
pub const CR4_FEATURE_BITS: [(u32, u32, usize, u32); 10] = [
    (11, CPUID_STRUCTURED_FEATURES, 2, 2),  // UMIP: Fn7 ECX[2]
    (12, CPUID_STRUCTURED_FEATURES, 2, 16), // LA57: Fn7 ECX[16]
    (16, CPUID_STRUCTURED_FEATURES, 1, 0),  // FSGSBASE: Fn7 EBX[0]
    (17, CPUID_FEATURES, 2, 17),            // PCIDE: Fn1 ECX[17] (PCID)
    (18, CPUID_FEATURES, 2, 26),            // OSXSAVE: Fn1 ECX[26] (XSAVE)
    (20, CPUID_STRUCTURED_FEATURES, 1, 7),  // SMEP: Fn7 EBX[7]
    (21, CPUID_STRUCTURED_FEATURES, 1, 20), // SMAP: Fn7 EBX[20]
    (22, CPUID_STRUCTURED_FEATURES, 2, 3),  // PKE: Fn7 ECX[3] (PKU)
    (23, CPUID_STRUCTURED_FEATURES, 2, 7),  // CET: Fn7 ECX[7] (CET_SS)
    (24, CPUID_STRUCTURED_FEATURES, 2, 31), // PKS: Fn7 ECX[31]
];

/// The CR4 bits a processor implements, from the highest basic CPUID leaf
/// (Fn0000_0000 EAX) and leaves 1 and 7 (subleaf 0) as `[eax, ebx, ecx,
/// edx]`; leaf 7 counts only when the highest basic leaf reaches it.
pub const fn cr4_implemented(max_basic_leaf: u32, leaf_1: [u32; 4], leaf_7: [u32; 4]) -> u64 {
    let mut bits = CR4_BASELINE;
    let mut i = 0;
    while i < CR4_FEATURE_BITS.len() {
        let (cr4_bit, leaf, reg, bit) = CR4_FEATURE_BITS[i];
        let regs = if leaf == CPUID_FEATURES {
            leaf_1
        } else if max_basic_leaf >= CPUID_STRUCTURED_FEATURES {
            leaf_7
        } else {
            [0; 4]
        };
        if regs[reg] & (1 << bit) != 0 {
            bits |= 1 << cr4_bit;
        }
        i += 1;
    }
    bits
}

/// Why AMD-V cannot run this hypervisor's guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvmError {
    /// CPUID Fn8000_0001 ECX.SVM is clear (or the extended leaves stop
    /// before Fn8000_000A): no AMD-V.
    NoSvm,
    /// VM_CR.SVMDIS is set: the firmware turned AMD-V off. With `locked`
    /// (VM_CR.LOCK) nothing but the firmware setting can undo it.
    DisabledByFirmware {
        /// VM_CR.LOCK is set.
        locked: bool,
    },
    /// No nested paging (Fn8000_000A EDX.NP clear); the hypervisor needs it
    /// to isolate guest memory.
    NoNestedPaging,
    /// Fewer than two ASIDs: no ASID for a guest.
    NoGuestAsid,
}

impl fmt::Display for SvmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SvmError::NoSvm => f.write_str("AMD-V not available (CPUID 8000_0001h ECX.SVM = 0)"),
            SvmError::DisabledByFirmware { locked: true } => {
                f.write_str("AMD-V disabled by firmware (VM_CR.SVMDIS)")
            }
            SvmError::DisabledByFirmware { locked: false } => {
                f.write_str("AMD-V disabled by firmware (VM_CR.SVMDIS, not locked)")
            }
            SvmError::NoNestedPaging => {
                f.write_str("AMD-V without nested paging (CPUID 8000_000Ah EDX.NP = 0)")
            }
            SvmError::NoGuestAsid => {
                f.write_str("AMD-V with no ASID for guests (CPUID 8000_000Ah EBX < 2)")
            }
        }
    }
}

impl core::error::Error for SvmError {}

/// Whether CPUID Fn8000_0001 (`[eax, ebx, ecx, edx]`) reports SVM.
pub const fn has_svm(leaf_8000_0001: [u32; 4]) -> bool {
    leaf_8000_0001[2] & CPUID_EXT_ECX_SVM != 0
}

/// Decides whether AMD-V is usable from the raw values: the highest
/// extended CPUID leaf (Fn8000_0000 EAX), Fn8000_0001 and Fn8000_000A as
/// `[eax, ebx, ecx, edx]`, and VM_CR. Checks, in order: SVM present, not
/// disabled by firmware, nested paging, a guest ASID.
///
/// Next-RIP save is not required: without it the VMCB's nRIP field stays
/// unwritten, and the length of an intercepted instruction has to come from
/// its bytes in guest memory. QEMU's TCG (7.2) emulates SVM with nested
/// paging but without NRIP save.
pub const fn check(
    max_extended_leaf: u32,
    leaf_8000_0001: [u32; 4],
    leaf_8000_000a: [u32; 4],
    vm_cr: u64,
) -> Result<SvmCapabilities, SvmError> {
    if max_extended_leaf < CPUID_SVM_FEATURES || !has_svm(leaf_8000_0001) {
        return Err(SvmError::NoSvm);
    }
    let caps = SvmCapabilities::from_cpuid(leaf_8000_000a, vm_cr);
    if caps.vm_cr.contains(VmCr::SVMDIS) {
        return Err(SvmError::DisabledByFirmware {
            locked: caps.vm_cr.contains(VmCr::LOCK),
        });
    }
    if !caps.features.contains(SvmFeatures::NESTED_PAGING) {
        return Err(SvmError::NoNestedPaging);
    }
    if caps.asid_count < 2 {
        return Err(SvmError::NoGuestAsid);
    }
    Ok(caps)
}

/// [`check`] with the values fetched through closures: `cpuid(leaf)`
/// returns `[eax, ebx, ecx, edx]` of subleaf 0, and `read_vm_cr` is called
/// only when CPUID reports SVM (reading VM_CR on a CPU without SVM faults).
/// The capabilities carry the CR4 bits CPUID leaves 1 and 7 report
/// ([`cr4_implemented`]).
pub fn probe(
    mut cpuid: impl FnMut(u32) -> [u32; 4],
    read_vm_cr: impl FnOnce() -> u64,
) -> Result<SvmCapabilities, SvmError> {
    let max_extended_leaf = cpuid(CPUID_EXT_MAX)[0];
    if max_extended_leaf < CPUID_SVM_FEATURES {
        return Err(SvmError::NoSvm);
    }
    let ext = cpuid(CPUID_EXT_FEATURES);
    if !has_svm(ext) {
        return Err(SvmError::NoSvm);
    }
    let leaf_a = cpuid(CPUID_SVM_FEATURES);
    let caps = check(max_extended_leaf, ext, leaf_a, read_vm_cr())?;
    let max_basic_leaf = cpuid(0)[0];
    let leaf_7 = if max_basic_leaf >= CPUID_STRUCTURED_FEATURES {
        cpuid(CPUID_STRUCTURED_FEATURES)
    } else {
        [0; 4]
    };
    Ok(caps.with_cr4_implemented(cr4_implemented(
        max_basic_leaf,
        cpuid(CPUID_FEATURES),
        leaf_7,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bochs `cpu: model=ryzen`, from shared/PLATFORM.md.
    const BOCHS_EXT1: [u32; 4] = [0, 0, CPUID_EXT_ECX_SVM, 0];
    const BOCHS_LEAF_A: [u32; 4] = [1, 0x8000, 0, 0x44f];

    #[test]
    fn decodes_bochs_ryzen() {
        let caps = check(0x8000_001F, BOCHS_EXT1, BOCHS_LEAF_A, 0).unwrap();
        assert_eq!(caps.revision, 1);
        assert_eq!(caps.asid_count, 0x8000);
        assert_eq!(caps.max_guest_asid(), 0x7fff);
        // EDX 0x44f: bits 0, 1, 2, 3, 6, 10.
        assert_eq!(
            caps.features,
            SvmFeatures::NESTED_PAGING
                | SvmFeatures::LBR_VIRT
                | SvmFeatures::SVM_LOCK
                | SvmFeatures::NRIP_SAVE
                | SvmFeatures::FLUSH_BY_ASID
                | SvmFeatures::PAUSE_FILTER
        );
        assert!(!caps.features.contains(SvmFeatures::VMCB_CLEAN));
        assert!(!caps.features.contains(SvmFeatures::DECODE_ASSISTS));
    }

    #[test]
    fn feature_bits() {
        let expected = [
            (SvmFeatures::NESTED_PAGING, 0),
            (SvmFeatures::NRIP_SAVE, 3),
            (SvmFeatures::TSC_RATE_MSR, 4),
            (SvmFeatures::VMCB_CLEAN, 5),
            (SvmFeatures::FLUSH_BY_ASID, 6),
            (SvmFeatures::DECODE_ASSISTS, 7),
            (SvmFeatures::PAUSE_FILTER, 10),
            (SvmFeatures::PAUSE_FILTER_THRESHOLD, 12),
            (SvmFeatures::AVIC, 13),
            (SvmFeatures::VMSAVE_VIRT, 15),
            (SvmFeatures::VGIF, 16),
            (SvmFeatures::VNMI, 25),
        ];
        for (f, bit) in expected {
            assert_eq!(f.bits(), 1 << bit, "{f:?}");
        }
        // Unknown feature bits are dropped, not kept.
        let caps = SvmCapabilities::from_cpuid([0x1_0001, 1, 0, 0x8000_0001], 0);
        assert_eq!(caps.features, SvmFeatures::NESTED_PAGING);
        assert_eq!(caps.revision, 1);
        assert_eq!(caps.max_guest_asid(), 0);
        assert_eq!(SvmCapabilities::from_cpuid([0; 4], 0).max_guest_asid(), 0);
    }

    #[test]
    fn refusals_name_what_is_missing() {
        assert_eq!(
            check(0x8000_001F, [0; 4], BOCHS_LEAF_A, 0),
            Err(SvmError::NoSvm)
        );
        assert_eq!(
            check(0x8000_0008, BOCHS_EXT1, BOCHS_LEAF_A, 0),
            Err(SvmError::NoSvm)
        );
        assert_eq!(
            check(0x8000_001F, BOCHS_EXT1, BOCHS_LEAF_A, 0x18),
            Err(SvmError::DisabledByFirmware { locked: true })
        );
        assert_eq!(
            check(0x8000_001F, BOCHS_EXT1, BOCHS_LEAF_A, 0x10),
            Err(SvmError::DisabledByFirmware { locked: false })
        );
        // LOCK alone is fine (firmware locked AMD-V on).
        assert!(check(0x8000_001F, BOCHS_EXT1, BOCHS_LEAF_A, 0x8).is_ok());
        assert_eq!(
            check(0x8000_001F, BOCHS_EXT1, [1, 8, 0, 0x8], 0),
            Err(SvmError::NoNestedPaging)
        );
        assert_eq!(
            check(0x8000_001F, BOCHS_EXT1, [1, 1, 0, 0x9], 0),
            Err(SvmError::NoGuestAsid)
        );
    }

    #[test]
    fn nrip_save_is_optional() {
        // QEMU 7.2 TCG: `-cpu EPYC` (NP only once TCG filters NRIPS out)
        // and `-cpu max` (NP, VGIF, SVME_ADDR_CHK), 16 ASIDs.
        for leaf_a in [[1, 0x10, 0, 0x1], [1, 0x10, 0, 0x1001_0001]] {
            let caps = check(0x8000_001F, BOCHS_EXT1, leaf_a, 0).unwrap();
            assert!(caps.features.contains(SvmFeatures::NESTED_PAGING));
            assert!(!caps.features.contains(SvmFeatures::NRIP_SAVE));
            assert_eq!(caps.max_guest_asid(), 15);
        }
        // Without nested paging it is still refused, NRIP save or not.
        assert_eq!(
            check(0x8000_001F, BOCHS_EXT1, [1, 0x10, 0, 0x1_0008], 0),
            Err(SvmError::NoNestedPaging)
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            SvmError::DisabledByFirmware { locked: true }.to_string(),
            "AMD-V disabled by firmware (VM_CR.SVMDIS)"
        );
        assert_eq!(
            SvmError::NoSvm.to_string(),
            "AMD-V not available (CPUID 8000_0001h ECX.SVM = 0)"
        );
        for e in [
            SvmError::DisabledByFirmware { locked: false },
            SvmError::NoNestedPaging,
            SvmError::NoGuestAsid,
        ] {
            assert!(e.to_string().starts_with("AMD-V "), "{e}");
        }
    }

    /// QEMU 7.2 `-cpu EPYC` (Zen 1): leaf 1 ECX has XSAVE but not PCID;
    /// leaf 7 EBX has FSGSBASE, SMEP and SMAP, ECX nothing CR4 enables.
    const EPYC_LEAF_1: [u32; 4] = [0x800f12, 0, 0x7ed8_320b, 0x178b_fbff];
    const EPYC_LEAF_7: [u32; 4] = [0, 0x209c_01a9, 0, 0];

    #[test]
    fn cr4_bits_follow_cpuid() {
        assert_eq!(
            cr4_implemented(0xd, EPYC_LEAF_1, EPYC_LEAF_7),
            CR4_BASELINE | (1 << 16) | (1 << 18) | (1 << 20) | (1 << 21)
        );
        // Leaf 7 beyond the highest basic leaf is not read.
        assert_eq!(
            cr4_implemented(6, EPYC_LEAF_1, EPYC_LEAF_7),
            CR4_BASELINE | (1 << 18)
        );
        // Every feature bit on: every CR4 bit but VMXE, SMXE and the
        // reserved 15 and 19 (and those above PKS).
        let all = cr4_implemented(7, [!0; 4], [!0; 4]);
        assert_eq!(
            all,
            0x1FF_FFFF & !((1 << 13) | (1 << 14) | (1 << 15) | (1 << 19))
        );
        let cpuid = |leaf: u32| match leaf {
            0 => [0xd, 0, 0, 0],
            CPUID_FEATURES => EPYC_LEAF_1,
            CPUID_STRUCTURED_FEATURES => EPYC_LEAF_7,
            CPUID_EXT_MAX => [0x8000_001F, 0, 0, 0],
            CPUID_EXT_FEATURES => BOCHS_EXT1,
            CPUID_SVM_FEATURES => BOCHS_LEAF_A,
            _ => [0; 4],
        };
        let caps = probe(cpuid, || 0).unwrap();
        assert_eq!(caps.cr4_implemented, 0x3507FF);
        assert_eq!(
            check(0x8000_001F, BOCHS_EXT1, BOCHS_LEAF_A, 0)
                .unwrap()
                .cr4_implemented,
            CR4_BASELINE
        );
    }

    #[test]
    fn probe_reads_vm_cr_only_with_svm() {
        let cpuid = |leaf: u32| match leaf {
            CPUID_EXT_MAX => [0x8000_001F, 0, 0, 0],
            CPUID_EXT_FEATURES => BOCHS_EXT1,
            CPUID_SVM_FEATURES => BOCHS_LEAF_A,
            _ => [0; 4],
        };
        let caps = probe(cpuid, || 0x8).unwrap();
        assert_eq!(caps.vm_cr, VmCr::LOCK);
        // Basic leaves all zero: only the baseline CR4 bits.
        assert_eq!(caps.cr4_implemented, CR4_BASELINE);

        // No SVM: VM_CR must not be read.
        let no_svm = |leaf: u32| match leaf {
            CPUID_EXT_MAX => [0x8000_001F, 0, 0, 0],
            _ => [0; 4],
        };
        assert_eq!(
            probe(no_svm, || panic!("VM_CR read without SVM")),
            Err(SvmError::NoSvm)
        );
        let old_cpu = |_| [0x8000_0004, 0, 0, 0];
        assert_eq!(
            probe(old_cpu, || panic!("VM_CR read without SVM")),
            Err(SvmError::NoSvm)
        );
    }

    #[test]
    fn msr_numbers_and_bits() {
        assert_eq!(MSR_EFER, 0xC000_0080);
        assert_eq!(EFER_SVME, 0x1000);
        assert_eq!(MSR_VM_CR, 0xC001_0114);
        assert_eq!(MSR_VM_HSAVE_PA, 0xC001_0117);
        assert_eq!(VmCr::LOCK.bits(), 8);
        assert_eq!(VmCr::SVMDIS.bits(), 16);
        // Unknown VM_CR bits are kept.
        assert_eq!(VmCr::from_bits_retain(1 << 40).bits(), 1 << 40);
    }
}
