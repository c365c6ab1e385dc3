//! Intercept vectors of the VMCB control area (APM Vol. 2, Appendix B,
//! Table B-1 "VMCB Layout, Control Area", offsets 000h-017h; intercept
//! behaviour in 15.7-15.14).
//!
//! Each type is the exact in-memory format of its VMCB field
//! (`#[repr(transparent)]` over the integer), so the fields of
//! [`crate::vmcb::ControlArea`] have these types and any bit pattern is a
//! valid value. Bits without a name here are reserved and should stay 0.
//!
//! ```
//! use svm::intercept::{InterceptVector3, InterceptVector4};
//! let v3 = InterceptVector3::CPUID | InterceptVector3::HLT | InterceptVector3::IOIO_PROT;
//! assert_eq!(v3.bits(), (1 << 18) | (1 << 24) | (1 << 27));
//! // VMRUN must always be intercepted, or VMRUN fails its consistency checks
//! // (APM 15.5.1).
//! assert_eq!(InterceptVector4::VMRUN.bits(), 1);
//! ```

use bitflags::bitflags;

bitflags! {
    /// Control-register intercepts: one bit per CR0..CR15. The VMCB holds
    /// two of these, reads at offset 000h (bits 15:0) and writes at 002h
    /// (bits 31:16 of the first intercept word) (APM Table B-1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct CrIntercepts: u16 {
        /// CR0 (APM Table B-1). Selective CR0 writes are
        /// [`InterceptVector3::CR0_SEL_WRITE`].
        const CR0 = 1 << 0;
        /// CR1 (APM Table B-1).
        const CR1 = 1 << 1;
        /// CR2 (APM Table B-1).
        const CR2 = 1 << 2;
        /// CR3 (APM Table B-1).
        const CR3 = 1 << 3;
        /// CR4 (APM Table B-1).
        const CR4 = 1 << 4;
        /// CR5 (APM Table B-1).
        const CR5 = 1 << 5;
        /// CR6 (APM Table B-1).
        const CR6 = 1 << 6;
        /// CR7 (APM Table B-1).
        const CR7 = 1 << 7;
        /// CR8, the task-priority register (APM Table B-1).
        const CR8 = 1 << 8;
        /// CR9 (APM Table B-1).
        const CR9 = 1 << 9;
        /// CR10 (APM Table B-1).
        const CR10 = 1 << 10;
        /// CR11 (APM Table B-1).
        const CR11 = 1 << 11;
        /// CR12 (APM Table B-1).
        const CR12 = 1 << 12;
        /// CR13 (APM Table B-1).
        const CR13 = 1 << 13;
        /// CR14 (APM Table B-1).
        const CR14 = 1 << 14;
        /// CR15 (APM Table B-1).
        const CR15 = 1 << 15;
    }
}

bitflags! {
    /// Debug-register intercepts: one bit per DR0..DR15. The VMCB holds two,
    /// reads at offset 004h and writes at 006h (APM Table B-1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct DrIntercepts: u16 {
        /// DR0 (APM Table B-1).
        const DR0 = 1 << 0;
        /// DR1 (APM Table B-1).
        const DR1 = 1 << 1;
        /// DR2 (APM Table B-1).
        const DR2 = 1 << 2;
        /// DR3 (APM Table B-1).
        const DR3 = 1 << 3;
        /// DR4 (APM Table B-1).
        const DR4 = 1 << 4;
        /// DR5 (APM Table B-1).
        const DR5 = 1 << 5;
        /// DR6 (APM Table B-1).
        const DR6 = 1 << 6;
        /// DR7 (APM Table B-1).
        const DR7 = 1 << 7;
        /// DR8 (APM Table B-1).
        const DR8 = 1 << 8;
        /// DR9 (APM Table B-1).
        const DR9 = 1 << 9;
        /// DR10 (APM Table B-1).
        const DR10 = 1 << 10;
        /// DR11 (APM Table B-1).
        const DR11 = 1 << 11;
        /// DR12 (APM Table B-1).
        const DR12 = 1 << 12;
        /// DR13 (APM Table B-1).
        const DR13 = 1 << 13;
        /// DR14 (APM Table B-1).
        const DR14 = 1 << 14;
        /// DR15 (APM Table B-1).
        const DR15 = 1 << 15;
    }
}

impl CrIntercepts {
    /// The bit for control register `cr` (0..=15; higher numbers give the
    /// empty set).
    pub const fn cr(cr: u8) -> Self {
        if cr < 16 {
            Self::from_bits_retain(1 << cr)
        } else {
            Self::empty()
        }
    }
}

impl DrIntercepts {
    /// The bit for debug register `dr` (0..=15; higher numbers give the
    /// empty set).
    pub const fn dr(dr: u8) -> Self {
        if dr < 16 {
            Self::from_bits_retain(1 << dr)
        } else {
            Self::empty()
        }
    }
}

bitflags! {
    /// Exception intercepts, VMCB offset 008h: bit *n* intercepts exception
    /// vector *n* (APM Table B-1; 15.12 "Exception Intercepts"; vectors from
    /// APM Vol. 2, 8.2, Table 8-1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct ExceptionIntercepts: u32 {
        /// Vector 0: #DE divide-by-zero error.
        const DE = 1 << 0;
        /// Vector 1: #DB debug.
        const DB = 1 << 1;
        /// Vector 2: NMI (intercepted through [`InterceptVector3::NMI`]
        /// instead; APM 15.12).
        const NMI = 1 << 2;
        /// Vector 3: #BP breakpoint.
        const BP = 1 << 3;
        /// Vector 4: #OF overflow.
        const OF = 1 << 4;
        /// Vector 5: #BR bound range.
        const BR = 1 << 5;
        /// Vector 6: #UD invalid opcode.
        const UD = 1 << 6;
        /// Vector 7: #NM device not available.
        const NM = 1 << 7;
        /// Vector 8: #DF double fault.
        const DF = 1 << 8;
        /// Vector 10: #TS invalid TSS.
        const TS = 1 << 10;
        /// Vector 11: #NP segment not present.
        const NP = 1 << 11;
        /// Vector 12: #SS stack.
        const SS = 1 << 12;
        /// Vector 13: #GP general protection.
        const GP = 1 << 13;
        /// Vector 14: #PF page fault (EXITINFO2 holds the faulting address).
        const PF = 1 << 14;
        /// Vector 16: #MF x87 floating-point exception pending.
        const MF = 1 << 16;
        /// Vector 17: #AC alignment check.
        const AC = 1 << 17;
        /// Vector 18: #MC machine check.
        const MC = 1 << 18;
        /// Vector 19: #XF SIMD floating-point.
        const XF = 1 << 19;
        /// Vector 21: #CP control protection.
        const CP = 1 << 21;
        /// Vector 28: #HV hypervisor injection.
        const HV = 1 << 28;
        /// Vector 29: #VC VMM communication.
        const VC = 1 << 29;
        /// Vector 30: #SX security exception.
        const SX = 1 << 30;
    }
}

impl ExceptionIntercepts {
    /// The bit for exception `vector` (0..=31; higher vectors give the empty
    /// set).
    pub const fn vector(vector: u8) -> Self {
        if vector < 32 {
            Self::from_bits_retain(1 << vector)
        } else {
            Self::empty()
        }
    }
}

bitflags! {
    /// The intercept word at VMCB offset 00Ch ("misc 1"; APM Table B-1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct InterceptVector3: u32 {
        /// Bit 0: physical INTR (maskable interrupt) (APM Table B-1; 15.13).
        const INTR = 1 << 0;
        /// Bit 1: physical NMI (APM Table B-1; 15.13).
        const NMI = 1 << 1;
        /// Bit 2: physical SMI (APM Table B-1; 15.13).
        const SMI = 1 << 2;
        /// Bit 3: physical INIT (APM Table B-1; 15.13).
        const INIT = 1 << 3;
        /// Bit 4: virtual interrupt, taken when the guest can accept V_IRQ
        /// (APM Table B-1; 15.21).
        const VINTR = 1 << 4;
        /// Bit 5: writes of CR0 that change bits other than CR0.TS or CR0.MP
        /// (APM Table B-1).
        const CR0_SEL_WRITE = 1 << 5;
        /// Bit 6: reads of IDTR (SIDT) (APM Table B-1).
        const IDTR_READ = 1 << 6;
        /// Bit 7: reads of GDTR (SGDT) (APM Table B-1).
        const GDTR_READ = 1 << 7;
        /// Bit 8: reads of LDTR (SLDT) (APM Table B-1).
        const LDTR_READ = 1 << 8;
        /// Bit 9: reads of TR (STR) (APM Table B-1).
        const TR_READ = 1 << 9;
        /// Bit 10: writes of IDTR (LIDT) (APM Table B-1).
        const IDTR_WRITE = 1 << 10;
        /// Bit 11: writes of GDTR (LGDT) (APM Table B-1).
        const GDTR_WRITE = 1 << 11;
        /// Bit 12: writes of LDTR (LLDT) (APM Table B-1).
        const LDTR_WRITE = 1 << 12;
        /// Bit 13: writes of TR (LTR) (APM Table B-1).
        const TR_WRITE = 1 << 13;
        /// Bit 14: RDTSC (APM Table B-1).
        const RDTSC = 1 << 14;
        /// Bit 15: RDPMC (APM Table B-1).
        const RDPMC = 1 << 15;
        /// Bit 16: PUSHF (APM Table B-1).
        const PUSHF = 1 << 16;
        /// Bit 17: POPF (APM Table B-1).
        const POPF = 1 << 17;
        /// Bit 18: CPUID (APM Table B-1).
        const CPUID = 1 << 18;
        /// Bit 19: RSM (APM Table B-1).
        const RSM = 1 << 19;
        /// Bit 20: IRET (APM Table B-1).
        const IRET = 1 << 20;
        /// Bit 21: software interrupt, INTn (APM Table B-1).
        const INTN = 1 << 21;
        /// Bit 22: INVD (APM Table B-1).
        const INVD = 1 << 22;
        /// Bit 23: PAUSE, subject to the pause filter (APM Table B-1).
        const PAUSE = 1 << 23;
        /// Bit 24: HLT (APM Table B-1).
        const HLT = 1 << 24;
        /// Bit 25: INVLPG (APM Table B-1).
        const INVLPG = 1 << 25;
        /// Bit 26: INVLPGA (APM Table B-1).
        const INVLPGA = 1 << 26;
        /// Bit 27: IN/OUT through the I/O permission map at IOPM_BASE_PA
        /// (APM Table B-1; 15.10).
        const IOIO_PROT = 1 << 27;
        /// Bit 28: RDMSR/WRMSR through the MSR permission map at
        /// MSRPM_BASE_PA (APM Table B-1; 15.11).
        const MSR_PROT = 1 << 28;
        /// Bit 29: task switches (APM Table B-1).
        const TASK_SWITCH = 1 << 29;
        /// Bit 30: FERR_FREEZE, freezing on an x87 error (APM Table B-1).
        const FERR_FREEZE = 1 << 30;
        /// Bit 31: shutdown events, e.g. a triple fault (APM Table B-1).
        const SHUTDOWN = 1 << 31;
    }
}

bitflags! {
    /// The intercept word at VMCB offset 010h ("misc 2"; APM Table B-1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct InterceptVector4: u32 {
        /// Bit 0: VMRUN. Must be set: VMRUN with it clear fails the
        /// consistency checks with VMEXIT_INVALID (APM 15.5.1).
        const VMRUN = 1 << 0;
        /// Bit 1: VMMCALL, the guest's hypercall (APM Table B-1).
        const VMMCALL = 1 << 1;
        /// Bit 2: VMLOAD (APM Table B-1).
        const VMLOAD = 1 << 2;
        /// Bit 3: VMSAVE (APM Table B-1).
        const VMSAVE = 1 << 3;
        /// Bit 4: STGI (APM Table B-1).
        const STGI = 1 << 4;
        /// Bit 5: CLGI (APM Table B-1).
        const CLGI = 1 << 5;
        /// Bit 6: SKINIT (APM Table B-1).
        const SKINIT = 1 << 6;
        /// Bit 7: RDTSCP (APM Table B-1).
        const RDTSCP = 1 << 7;
        /// Bit 8: ICEBP (INT1) (APM Table B-1).
        const ICEBP = 1 << 8;
        /// Bit 9: WBINVD and WBNOINVD (APM Table B-1).
        const WBINVD = 1 << 9;
        /// Bit 10: MONITOR and MONITORX (APM Table B-1).
        const MONITOR = 1 << 10;
        /// Bit 11: MWAIT and MWAITX, unconditionally (APM Table B-1).
        const MWAIT = 1 << 11;
        /// Bit 12: MWAIT/MWAITX, only if the monitor hardware is armed
        /// (APM Table B-1).
        const MWAIT_CONDITIONAL = 1 << 12;
        /// Bit 13: XSETBV (APM Table B-1).
        const XSETBV = 1 << 13;
        /// Bit 14: RDPRU (APM Table B-1).
        const RDPRU = 1 << 14;
        /// Bit 15: trap after writes of EFER (APM Table B-1).
        const EFER_WRITE_TRAP = 1 << 15;
        /// Bit 16: trap after writes of CR0 (APM Table B-1).
        const CR0_WRITE_TRAP = 1 << 16;
        /// Bit 17: trap after writes of CR1.
        const CR1_WRITE_TRAP = 1 << 17;
        /// Bit 18: trap after writes of CR2.
        const CR2_WRITE_TRAP = 1 << 18;
        /// Bit 19: trap after writes of CR3.
        const CR3_WRITE_TRAP = 1 << 19;
        /// Bit 20: trap after writes of CR4.
        const CR4_WRITE_TRAP = 1 << 20;
        /// Bit 21: trap after writes of CR5.
        const CR5_WRITE_TRAP = 1 << 21;
        /// Bit 22: trap after writes of CR6.
        const CR6_WRITE_TRAP = 1 << 22;
        /// Bit 23: trap after writes of CR7.
        const CR7_WRITE_TRAP = 1 << 23;
        /// Bit 24: trap after writes of CR8.
        const CR8_WRITE_TRAP = 1 << 24;
        /// Bit 25: trap after writes of CR9.
        const CR9_WRITE_TRAP = 1 << 25;
        /// Bit 26: trap after writes of CR10.
        const CR10_WRITE_TRAP = 1 << 26;
        /// Bit 27: trap after writes of CR11.
        const CR11_WRITE_TRAP = 1 << 27;
        /// Bit 28: trap after writes of CR12.
        const CR12_WRITE_TRAP = 1 << 28;
        /// Bit 29: trap after writes of CR13.
        const CR13_WRITE_TRAP = 1 << 29;
        /// Bit 30: trap after writes of CR14.
        const CR14_WRITE_TRAP = 1 << 30;
        /// Bit 31: trap after writes of CR15.
        const CR15_WRITE_TRAP = 1 << 31;
    }
}

impl InterceptVector4 {
    /// The write-trap bit for control register `cr` (0..=15; higher numbers
    /// give the empty set).
    pub const fn cr_write_trap(cr: u8) -> Self {
        if cr < 16 {
            Self::from_bits_retain(1 << (16 + cr))
        } else {
            Self::empty()
        }
    }
}

bitflags! {
    /// The intercept word at VMCB offset 014h ("misc 3"; APM Table B-1).
    /// Each bit needs the matching CPU feature.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct InterceptVector5: u32 {
        /// Bit 0: INVLPGB (APM Table B-1).
        const INVLPGB = 1 << 0;
        /// Bit 1: illegally specified INVLPGB (APM Table B-1).
        const INVLPGB_ILLEGAL = 1 << 1;
        /// Bit 2: INVPCID (APM Table B-1).
        const INVPCID = 1 << 2;
        /// Bit 3: MCOMMIT (APM Table B-1).
        const MCOMMIT = 1 << 3;
        /// Bit 4: TLBSYNC (APM Table B-1).
        const TLBSYNC = 1 << 4;
        /// Bit 5: bus locks, with the bus-lock threshold (APM Table B-1).
        const BUS_LOCK = 1 << 5;
        /// Bit 6: HLT only when no virtual interrupt is pending (APM Table B-1).
        const IDLE_HLT = 1 << 6;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector3_bits_follow_table_b1() {
        // Spot checks against APM Table B-1, offset 00Ch.
        let expected = [
            (InterceptVector3::INTR, 0),
            (InterceptVector3::VINTR, 4),
            (InterceptVector3::CR0_SEL_WRITE, 5),
            (InterceptVector3::IDTR_READ, 6),
            (InterceptVector3::TR_WRITE, 13),
            (InterceptVector3::RDTSC, 14),
            (InterceptVector3::CPUID, 18),
            (InterceptVector3::INTN, 21),
            (InterceptVector3::PAUSE, 23),
            (InterceptVector3::HLT, 24),
            (InterceptVector3::IOIO_PROT, 27),
            (InterceptVector3::MSR_PROT, 28),
            (InterceptVector3::SHUTDOWN, 31),
        ];
        for (flag, bit) in expected {
            assert_eq!(flag.bits(), 1 << bit, "{flag:?}");
        }
        // Every one of the 32 bits is named, each exactly once.
        assert_eq!(InterceptVector3::all().bits(), u32::MAX);
        assert_eq!(InterceptVector3::all().iter_names().count(), 32);
    }

    #[test]
    fn vector4_and_5_bits_follow_table_b1() {
        let expected = [
            (InterceptVector4::VMRUN, 0),
            (InterceptVector4::VMMCALL, 1),
            (InterceptVector4::STGI, 4),
            (InterceptVector4::SKINIT, 6),
            (InterceptVector4::RDTSCP, 7),
            (InterceptVector4::WBINVD, 9),
            (InterceptVector4::MWAIT_CONDITIONAL, 12),
            (InterceptVector4::XSETBV, 13),
            (InterceptVector4::RDPRU, 14),
            (InterceptVector4::EFER_WRITE_TRAP, 15),
            (InterceptVector4::CR0_WRITE_TRAP, 16),
            (InterceptVector4::CR8_WRITE_TRAP, 24),
            (InterceptVector4::CR15_WRITE_TRAP, 31),
        ];
        for (flag, bit) in expected {
            assert_eq!(flag.bits(), 1 << bit, "{flag:?}");
        }
        assert_eq!(InterceptVector4::all().bits(), u32::MAX);
        for cr in 0..16 {
            assert_eq!(InterceptVector4::cr_write_trap(cr).bits(), 1 << (16 + cr));
        }
        assert_eq!(
            InterceptVector4::cr_write_trap(16),
            InterceptVector4::empty()
        );
        assert_eq!(InterceptVector5::IDLE_HLT.bits(), 1 << 6);
        assert_eq!(InterceptVector5::all().bits(), 0x7f);
    }

    #[test]
    fn register_and_exception_helpers() {
        assert_eq!(CrIntercepts::cr(8), CrIntercepts::CR8);
        assert_eq!(CrIntercepts::cr(16), CrIntercepts::empty());
        assert_eq!(DrIntercepts::dr(7), DrIntercepts::DR7);
        assert_eq!(DrIntercepts::dr(200), DrIntercepts::empty());
        assert_eq!(ExceptionIntercepts::vector(14), ExceptionIntercepts::PF);
        assert_eq!(ExceptionIntercepts::vector(18), ExceptionIntercepts::MC);
        assert_eq!(
            ExceptionIntercepts::vector(32),
            ExceptionIntercepts::empty()
        );
        assert_eq!(ExceptionIntercepts::SX.bits(), 1 << 30);
    }
}
