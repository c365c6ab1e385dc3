//! The virtual machine control block (APM Vol. 2, 15.5 "VMRUN Instruction"
//! and Appendix B "Layout of VMCB": Table B-1 control area, Table B-2
//! state-save area).
//!
//! [`Vmcb`] is the 4 KiB hardware structure itself, `#[repr(C,
//! align(4096))]`: a [`ControlArea`] at offset 000h and a [`StateSaveArea`]
//! at 400h. Every field is an integer or a `#[repr(transparent)]` wrapper of
//! one, so any bit pattern the processor writes is a valid value and the
//! kernel can view a VMCB frame as a `Vmcb`. Every field's offset is checked
//! against the APM at compile time (see [`offset`]); reserved space is
//! explicit, so there is no padding.
//!
//! The processor caches VMCB state between VMRUNs; the VMCB clean bits
//! ([`CleanBits`], APM 15.15.3) tell it which groups of fields the
//! hypervisor left unchanged. Clearing them all ([`Vmcb::mark_all_dirty`])
//! is always correct.
//!
//! ```
//! use svm::intercept::{InterceptVector3, InterceptVector4};
//! use svm::vmcb::{CleanBits, SegmentAttributes, Vmcb};
//! use svm::HostPhysAddr;
//!
//! let mut vmcb = Vmcb::new();
//! vmcb.control.intercept_vector3 = InterceptVector3::CPUID | InterceptVector3::SHUTDOWN;
//! vmcb.control.intercept_vector4 = InterceptVector4::VMRUN | InterceptVector4::VMMCALL;
//! vmcb.control.guest_asid = 1;
//! vmcb.set_nested_paging(HostPhysAddr::new(0x10_0000));
//! vmcb.save.cs.attrib = SegmentAttributes::from_access_rights(0xa09b); // 64-bit code
//! assert_eq!(vmcb.save.cs.attrib.bits(), 0xa9b);
//! vmcb.mark_all_dirty();
//! assert_eq!(vmcb.control.vmcb_clean, CleanBits::empty());
//! ```

use core::fmt;
use core::mem::{align_of, offset_of, size_of};

use bitflags::bitflags;

use crate::addr::HostPhysAddr;
use crate::exit::{EventInfo, EventType};
use crate::intercept::{
    CrIntercepts, DrIntercepts, ExceptionIntercepts, InterceptVector3, InterceptVector4,
    InterceptVector5,
};

/// Bytes in a VMCB: one 4 KiB page, 4 KiB-aligned (APM 15.5.1).
pub const VMCB_SIZE: usize = 4096;

/// VMCB field offsets from the start of the VMCB, named after the APM
/// (Appendix B, Table B-1 for the control area, Table B-2 for the state-save
/// area, whose offsets the APM gives relative to 400h and which are given
/// here from the VMCB start). The world-switch assembly can use them; the
/// [`Vmcb`] layout is checked against every one at compile time.
pub mod offset {
    /// 000h: intercept reads of CR0-15 (bits 15:0 of the first word).
    pub const INTERCEPT_CR_READ: usize = 0x000;
    /// 002h: intercept writes of CR0-15 (bits 31:16 of the first word).
    pub const INTERCEPT_CR_WRITE: usize = 0x002;
    /// 004h: intercept reads of DR0-15.
    pub const INTERCEPT_DR_READ: usize = 0x004;
    /// 006h: intercept writes of DR0-15.
    pub const INTERCEPT_DR_WRITE: usize = 0x006;
    /// 008h: intercept exception vectors 0-31.
    pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
    /// 00Ch: intercept vector 3 (INTR ... SHUTDOWN).
    pub const INTERCEPT_VECTOR3: usize = 0x00C;
    /// 010h: intercept vector 4 (VMRUN ... CR write traps).
    pub const INTERCEPT_VECTOR4: usize = 0x010;
    /// 014h: intercept vector 5 (INVLPGB ... IDLE_HLT).
    pub const INTERCEPT_VECTOR5: usize = 0x014;
    /// 03Ch: PAUSE_FILTER_THRESHOLD.
    pub const PAUSE_FILTER_THRESHOLD: usize = 0x03C;
    /// 03Eh: PAUSE_FILTER_COUNT.
    pub const PAUSE_FILTER_COUNT: usize = 0x03E;
    /// 040h: IOPM_BASE_PA.
    pub const IOPM_BASE_PA: usize = 0x040;
    /// 048h: MSRPM_BASE_PA.
    pub const MSRPM_BASE_PA: usize = 0x048;
    /// 050h: TSC_OFFSET.
    pub const TSC_OFFSET: usize = 0x050;
    /// 058h: guest ASID.
    pub const GUEST_ASID: usize = 0x058;
    /// 05Ch: TLB_CONTROL.
    pub const TLB_CONTROL: usize = 0x05C;
    /// 060h: V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING,
    /// V_INTR_VECTOR (060h-067h).
    pub const VINTR: usize = 0x060;
    /// 068h: INTERRUPT_SHADOW and GUEST_INTERRUPT_MASK.
    pub const INTERRUPT_SHADOW: usize = 0x068;
    /// 070h: EXITCODE.
    pub const EXITCODE: usize = 0x070;
    /// 078h: EXITINFO1.
    pub const EXITINFO1: usize = 0x078;
    /// 080h: EXITINFO2.
    pub const EXITINFO2: usize = 0x080;
    /// 088h: EXITINTINFO.
    pub const EXITINTINFO: usize = 0x088;
    /// 090h: NP_ENABLE and the SEV enables.
    pub const NP_ENABLE: usize = 0x090;
    /// 098h: AVIC_APIC_BAR.
    pub const AVIC_APIC_BAR: usize = 0x098;
    /// 0A0h: guest physical address of the GHCB (SEV-ES).
    pub const GHCB_GPA: usize = 0x0A0;
    /// 0A8h: EVENTINJ.
    pub const EVENTINJ: usize = 0x0A8;
    /// 0B0h: N_CR3, the nested page-table root.
    pub const N_CR3: usize = 0x0B0;
    /// 0B8h: LBR_VIRTUALIZATION_ENABLE and VMSAVE/VMLOAD virtualization.
    pub const LBR_VIRTUALIZATION_ENABLE: usize = 0x0B8;
    /// 0C0h: VMCB clean bits.
    pub const VMCB_CLEAN: usize = 0x0C0;
    /// 0C8h: nRIP, the next sequential instruction pointer.
    pub const NRIP: usize = 0x0C8;
    /// 0D0h: number of guest instruction bytes fetched.
    pub const GUEST_INSTRUCTION_LEN: usize = 0x0D0;
    /// 0D1h: the guest instruction bytes (15).
    pub const GUEST_INSTRUCTION_BYTES: usize = 0x0D1;
    /// 0E0h: AVIC_APIC_BACKING_PAGE pointer.
    pub const AVIC_APIC_BACKING_PAGE: usize = 0x0E0;
    /// 0F0h: AVIC_LOGICAL_TABLE pointer.
    pub const AVIC_LOGICAL_TABLE: usize = 0x0F0;
    /// 0F8h: AVIC_PHYSICAL_TABLE pointer and max index.
    pub const AVIC_PHYSICAL_TABLE: usize = 0x0F8;
    /// 3E0h-3FFh: reserved for the host's own use.
    pub const HOST_RESERVED: usize = 0x3E0;

    /// 400h: start of the state-save area.
    pub const STATE_SAVE_AREA: usize = 0x400;
    /// State-save 000h: ES (selector, attrib, limit, base).
    pub const ES: usize = 0x400;
    /// State-save 010h: CS.
    pub const CS: usize = 0x410;
    /// State-save 020h: SS.
    pub const SS: usize = 0x420;
    /// State-save 030h: DS.
    pub const DS: usize = 0x430;
    /// State-save 040h: FS.
    pub const FS: usize = 0x440;
    /// State-save 050h: GS.
    pub const GS: usize = 0x450;
    /// State-save 060h: GDTR (limit and base only).
    pub const GDTR: usize = 0x460;
    /// State-save 070h: LDTR.
    pub const LDTR: usize = 0x470;
    /// State-save 080h: IDTR (limit and base only).
    pub const IDTR: usize = 0x480;
    /// State-save 090h: TR.
    pub const TR: usize = 0x490;
    /// State-save 0CBh: CPL.
    pub const CPL: usize = 0x4CB;
    /// State-save 0D0h: EFER.
    pub const EFER: usize = 0x4D0;
    /// State-save 148h: CR4.
    pub const CR4: usize = 0x548;
    /// State-save 150h: CR3.
    pub const CR3: usize = 0x550;
    /// State-save 158h: CR0.
    pub const CR0: usize = 0x558;
    /// State-save 160h: DR7.
    pub const DR7: usize = 0x560;
    /// State-save 168h: DR6.
    pub const DR6: usize = 0x568;
    /// State-save 170h: RFLAGS.
    pub const RFLAGS: usize = 0x570;
    /// State-save 178h: RIP.
    pub const RIP: usize = 0x578;
    /// State-save 1D8h: RSP.
    pub const RSP: usize = 0x5D8;
    /// State-save 1E0h: S_CET.
    pub const S_CET: usize = 0x5E0;
    /// State-save 1E8h: SSP.
    pub const SSP: usize = 0x5E8;
    /// State-save 1F0h: ISST_ADDR.
    pub const ISST_ADDR: usize = 0x5F0;
    /// State-save 1F8h: RAX.
    pub const RAX: usize = 0x5F8;
    /// State-save 200h: STAR.
    pub const STAR: usize = 0x600;
    /// State-save 208h: LSTAR.
    pub const LSTAR: usize = 0x608;
    /// State-save 210h: CSTAR.
    pub const CSTAR: usize = 0x610;
    /// State-save 218h: SFMASK.
    pub const SFMASK: usize = 0x618;
    /// State-save 220h: KernelGsBase.
    pub const KERNEL_GS_BASE: usize = 0x620;
    /// State-save 228h: SYSENTER_CS.
    pub const SYSENTER_CS: usize = 0x628;
    /// State-save 230h: SYSENTER_ESP.
    pub const SYSENTER_ESP: usize = 0x630;
    /// State-save 238h: SYSENTER_EIP.
    pub const SYSENTER_EIP: usize = 0x638;
    /// State-save 240h: CR2.
    pub const CR2: usize = 0x640;
    /// State-save 268h: G_PAT, the guest PAT with nested paging.
    pub const G_PAT: usize = 0x668;
    /// State-save 270h: DBGCTL.
    pub const DBGCTL: usize = 0x670;
    /// State-save 278h: BR_FROM.
    pub const BR_FROM: usize = 0x678;
    /// State-save 280h: BR_TO.
    pub const BR_TO: usize = 0x680;
    /// State-save 288h: LASTEXCPFROM.
    pub const LASTEXCP_FROM: usize = 0x688;
    /// State-save 290h: LASTEXCPTO.
    pub const LASTEXCP_TO: usize = 0x690;
    /// State-save 2E0h: SPEC_CTRL.
    pub const SPEC_CTRL: usize = 0x6E0;
}

bitflags! {
    /// VMCB clean bits, offset 0C0h (APM 15.15.3 "VMCB Clean Field"). A set
    /// bit promises the processor that the hypervisor did not change that
    /// group of fields since the last VMRUN of this VMCB on this processor;
    /// a clear bit makes it reload them. Only meaningful with the VmcbClean
    /// feature ([`crate::caps::SvmFeatures::VMCB_CLEAN`]); zero is always
    /// correct.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct CleanBits: u32 {
        /// Bit 0 (I): intercept vectors, TSC_OFFSET, pause filter threshold
        /// and count.
        const INTERCEPTS = 1 << 0;
        /// Bit 1 (IOPM): IOPM_BASE_PA and MSRPM_BASE_PA.
        const IOPM = 1 << 1;
        /// Bit 2 (ASID): the guest ASID.
        const ASID = 1 << 2;
        /// Bit 3 (TPR): V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING,
        /// V_INTR_VECTOR (060h-067h).
        const TPR = 1 << 3;
        /// Bit 4 (NP): NP_ENABLE, N_CR3, G_PAT.
        const NP = 1 << 4;
        /// Bit 5 (CRx): CR0, CR3, CR4, EFER.
        const CRX = 1 << 5;
        /// Bit 6 (DRx): DR6, DR7.
        const DRX = 1 << 6;
        /// Bit 7 (DT): GDTR and IDTR base and limit.
        const DT = 1 << 7;
        /// Bit 8 (SEG): CS, DS, SS, ES selector, base, limit, attributes;
        /// CPL.
        const SEG = 1 << 8;
        /// Bit 9 (CR2): CR2.
        const CR2 = 1 << 9;
        /// Bit 10 (LBR): DBGCTL, BR_FROM, BR_TO, LASTEXCPFROM, LASTEXCPTO.
        const LBR = 1 << 10;
        /// Bit 11 (AVIC): AVIC_APIC_BAR and the AVIC table pointers.
        const AVIC = 1 << 11;
        /// Bit 12 (CET): S_CET, SSP, ISST_ADDR.
        const CET = 1 << 12;
    }
}

/// TLB_CONTROL values, offset 05Ch (APM 15.16 "TLB Control").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TlbControl {
    /// 00h: do nothing.
    DoNothing = 0x00,
    /// 01h: flush the entire TLB, all ASIDs (meant for legacy hypervisors).
    FlushAll = 0x01,
    /// 03h: flush this guest's (this ASID's) TLB entries; needs
    /// FlushByAsid ([`crate::caps::SvmFeatures::FLUSH_BY_ASID`]).
    FlushGuest = 0x03,
    /// 07h: flush this guest's non-global TLB entries; needs FlushByAsid.
    FlushGuestNonGlobal = 0x07,
}

impl TlbControl {
    /// Decodes the byte; `None` for values the APM does not define.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0x00 => Some(Self::DoNothing),
            0x01 => Some(Self::FlushAll),
            0x03 => Some(Self::FlushGuest),
            0x07 => Some(Self::FlushGuestNonGlobal),
            _ => None,
        }
    }
}

/// The virtual-interrupt control quadword at offset 060h (APM Table B-1;
/// 15.21 "Interrupt and Local APIC Support").
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct VIntr(pub u64);

impl VIntr {
    /// Bits 3:0: V_TPR, the guest's virtual TPR (bits 7:4 must be zero).
    pub const V_TPR_MASK: u64 = 0x0F;
    /// Bit 8: V_IRQ, a virtual interrupt is pending.
    pub const V_IRQ: u64 = 1 << 8;
    /// Bit 9: VGIF, the virtual global interrupt flag (with VGIF_ENABLE).
    pub const VGIF: u64 = 1 << 9;
    /// Bit 11: V_NMI, a virtual NMI is pending (with V_NMI_ENABLE).
    pub const V_NMI: u64 = 1 << 11;
    /// Bit 12: V_NMI_MASK, virtual NMIs are masked.
    pub const V_NMI_MASK: u64 = 1 << 12;
    /// Bits 19:16: V_INTR_PRIO, the priority of the pending virtual interrupt.
    pub const V_INTR_PRIO_SHIFT: u32 = 16;
    /// Bit 20: V_IGN_TPR, the pending virtual interrupt ignores V_TPR.
    pub const V_IGN_TPR: u64 = 1 << 20;
    /// Bit 24: V_INTR_MASKING: the guest's RFLAGS.IF and TPR only mask
    /// virtual interrupts; physical ones stay under host control.
    pub const V_INTR_MASKING: u64 = 1 << 24;
    /// Bit 25: VGIF enable.
    pub const VGIF_ENABLE: u64 = 1 << 25;
    /// Bit 26: V_NMI enable.
    pub const V_NMI_ENABLE: u64 = 1 << 26;
    /// Bit 31: AVIC enable.
    pub const AVIC_ENABLE: u64 = 1 << 31;
    /// Bits 39:32: V_INTR_VECTOR, the vector of the pending virtual interrupt.
    pub const V_INTR_VECTOR_SHIFT: u32 = 32;

    const fn with_bit(self, bit: u64, on: bool) -> Self {
        if on {
            VIntr(self.0 | bit)
        } else {
            VIntr(self.0 & !bit)
        }
    }

    /// V_TPR, bits 3:0.
    pub const fn v_tpr(self) -> u8 {
        (self.0 & Self::V_TPR_MASK) as u8
    }

    /// Replaces V_TPR (the low four bits of `tpr`).
    pub const fn with_v_tpr(self, tpr: u8) -> Self {
        VIntr((self.0 & !0xFF) | (tpr as u64 & Self::V_TPR_MASK))
    }

    /// V_IRQ, bit 8.
    pub const fn v_irq(self) -> bool {
        self.0 & Self::V_IRQ != 0
    }

    /// Sets or clears V_IRQ.
    pub const fn with_v_irq(self, pending: bool) -> Self {
        self.with_bit(Self::V_IRQ, pending)
    }

    /// V_INTR_PRIO, bits 19:16.
    pub const fn v_intr_prio(self) -> u8 {
        ((self.0 >> Self::V_INTR_PRIO_SHIFT) & 0xF) as u8
    }

    /// Replaces V_INTR_PRIO (the low four bits of `prio`).
    pub const fn with_v_intr_prio(self, prio: u8) -> Self {
        VIntr(
            (self.0 & !(0xF << Self::V_INTR_PRIO_SHIFT))
                | ((prio as u64 & 0xF) << Self::V_INTR_PRIO_SHIFT),
        )
    }

    /// V_IGN_TPR, bit 20.
    pub const fn v_ign_tpr(self) -> bool {
        self.0 & Self::V_IGN_TPR != 0
    }

    /// Sets or clears V_IGN_TPR.
    pub const fn with_v_ign_tpr(self, ignore: bool) -> Self {
        self.with_bit(Self::V_IGN_TPR, ignore)
    }

    /// V_INTR_MASKING, bit 24.
    pub const fn v_intr_masking(self) -> bool {
        self.0 & Self::V_INTR_MASKING != 0
    }

    /// Sets or clears V_INTR_MASKING.
    pub const fn with_v_intr_masking(self, on: bool) -> Self {
        self.with_bit(Self::V_INTR_MASKING, on)
    }

    /// V_INTR_VECTOR, bits 39:32.
    pub const fn v_intr_vector(self) -> u8 {
        (self.0 >> Self::V_INTR_VECTOR_SHIFT) as u8
    }

    /// Replaces V_INTR_VECTOR.
    pub const fn with_v_intr_vector(self, vector: u8) -> Self {
        VIntr(
            (self.0 & !(0xFF << Self::V_INTR_VECTOR_SHIFT))
                | ((vector as u64) << Self::V_INTR_VECTOR_SHIFT),
        )
    }

    /// A pending virtual interrupt `vector`: V_IRQ set, V_INTR_VECTOR =
    /// `vector`, V_INTR_PRIO = its priority class (vector bits 7:4), V_TPR
    /// honoured. The guest takes it when its RFLAGS.IF allows, or a VINTR
    /// intercept reports that it could (APM 15.21).
    pub const fn with_pending_interrupt(self, vector: u8) -> Self {
        self.with_v_irq(true)
            .with_v_intr_vector(vector)
            .with_v_intr_prio(vector >> 4)
            .with_v_ign_tpr(false)
    }
}

impl fmt::Debug for VIntr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VIntr")
            .field("v_tpr", &self.v_tpr())
            .field("v_irq", &self.v_irq())
            .field("v_intr_prio", &self.v_intr_prio())
            .field("v_ign_tpr", &self.v_ign_tpr())
            .field("v_intr_masking", &self.v_intr_masking())
            .field("v_intr_vector", &self.v_intr_vector())
            .field("raw", &format_args!("{:#x}", self.0))
            .finish()
    }
}

bitflags! {
    /// Interrupt state, offset 068h (APM Table B-1; 15.21).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct InterruptState: u64 {
        /// Bit 0: INTERRUPT_SHADOW, the guest is in an interrupt shadow (the
        /// instruction after STI or MOV SS); written back on #VMEXIT.
        const INTERRUPT_SHADOW = 1 << 0;
        /// Bit 1: GUEST_INTERRUPT_MASK, the guest's RFLAGS.IF, written by
        /// the processor on #VMEXIT (meaningful with V_INTR_MASKING).
        const GUEST_INTERRUPT_MASK = 1 << 1;
    }
}

bitflags! {
    /// Nested-paging and SEV enables, offset 090h (APM Table B-1; 15.25.3).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct NestedControl: u64 {
        /// Bit 0: NP_ENABLE, nested paging through N_CR3 (APM 15.25.3).
        const NP_ENABLE = 1 << 0;
        /// Bit 1: SEV enable (Secure Encrypted Virtualization).
        const SEV_ENABLE = 1 << 1;
        /// Bit 2: SEV-ES enable (encrypted state).
        const SEV_ES_ENABLE = 1 << 2;
    }
}

bitflags! {
    /// Virtualization extensions, offset 0B8h (APM Table B-1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct VirtExtensions: u64 {
        /// Bit 0: LBR_VIRTUALIZATION_ENABLE, DBGCTL and the last-branch
        /// records are swapped by VMRUN/#VMEXIT (APM Table B-1).
        const LBR_VIRTUALIZATION = 1 << 0;
        /// Bit 1: virtualized VMSAVE/VMLOAD for a nested hypervisor.
        const VIRTUAL_VMSAVE_VMLOAD = 1 << 1;
    }
}

/// The VMCB segment-attribute format: a 12-bit packing of descriptor bits
/// 47:40 (type, S, DPL, P) into bits 7:0 and descriptor bits 55:52 (AVL, L,
/// D/B, G) into bits 11:8 (APM Appendix B, Table B-2 segment ATTRIB fields;
/// descriptor format in APM Vol. 2, 4.7-4.8).
///
/// VMX keeps the same bits as "access rights" with bits 55:52 at 15:12 (the
/// descriptor's bits 55:40 as a 16-bit value); [`Self::from_access_rights`]
/// and [`Self::access_rights`] convert.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct SegmentAttributes(pub u16);

impl SegmentAttributes {
    /// 64-bit code: type 0xB (execute/read, accessed), S, P, L, G.
    pub const CODE64: Self = Self(0xA9B);
    /// 32-bit code: type 0xB, S, P, D, G.
    pub const CODE32: Self = Self(0xC9B);
    /// 16-bit code for real mode: type 0xB, S, P.
    pub const CODE16: Self = Self(0x09B);
    /// 32-bit data: type 0x3 (read/write, accessed), S, P, B, G.
    pub const DATA32: Self = Self(0xC93);
    /// 16-bit data for real mode: type 0x3, S, P.
    pub const DATA16: Self = Self(0x093);
    /// Busy 32/64-bit TSS: system type 0xB, P.
    pub const TSS_BUSY: Self = Self(0x08B);
    /// LDT: system type 0x2, P.
    pub const LDT: Self = Self(0x082);

    /// Bit 4: S, code or data segment (else a system segment).
    pub const S: u16 = 1 << 4;
    /// Bit 7: P, present.
    pub const P: u16 = 1 << 7;
    /// Bit 8: AVL, available to software.
    pub const AVL: u16 = 1 << 8;
    /// Bit 9: L, 64-bit code segment.
    pub const L: u16 = 1 << 9;
    /// Bit 10: D/B, default operand size 32 bits / big.
    pub const DB: u16 = 1 << 10;
    /// Bit 11: G, limit in 4 KiB units.
    pub const G: u16 = 1 << 11;

    /// Converts VMX-style access rights (descriptor bits 55:40 as bits 15:0;
    /// bits 11:8 and 31:16, such as VMX's "unusable" bit 16, are dropped).
    pub const fn from_access_rights(ar: u32) -> Self {
        Self(((ar & 0xFF) | ((ar >> 4) & 0xF00)) as u16)
    }

    /// The VMX-style access rights (bits 7:0 and 15:12).
    pub const fn access_rights(self) -> u32 {
        (self.0 as u32 & 0xFF) | ((self.0 as u32 & 0xF00) << 4)
    }

    /// The attributes of a raw 8-byte segment descriptor (bits 47:40 and
    /// 55:52).
    pub const fn from_descriptor(descriptor: u64) -> Self {
        Self((((descriptor >> 40) & 0xFF) | ((descriptor >> 44) & 0xF00)) as u16)
    }

    /// The 12 defined bits (bits 15:12 dropped).
    pub const fn bits(self) -> u16 {
        self.0 & 0xFFF
    }

    /// Bits 3:0: the segment type.
    pub const fn segment_type(self) -> u8 {
        (self.0 & 0xF) as u8
    }

    /// Bit 4: a code or data segment (else system).
    pub const fn is_code_or_data(self) -> bool {
        self.0 & Self::S != 0
    }

    /// Bits 6:5: the descriptor privilege level.
    pub const fn dpl(self) -> u8 {
        ((self.0 >> 5) & 0b11) as u8
    }

    /// Bit 7: present.
    pub const fn is_present(self) -> bool {
        self.0 & Self::P != 0
    }

    /// Bit 9: a 64-bit code segment.
    pub const fn is_long(self) -> bool {
        self.0 & Self::L != 0
    }

    /// Bit 10: 32-bit default operand size (code) or big (stack).
    pub const fn is_default_big(self) -> bool {
        self.0 & Self::DB != 0
    }

    /// Bit 11: the limit counts 4 KiB units.
    pub const fn is_granular(self) -> bool {
        self.0 & Self::G != 0
    }
}

impl fmt::Debug for SegmentAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SegmentAttributes({:#05x})", self.0)
    }
}

/// One segment register in the state-save area: selector, attributes, limit,
/// base, 16 bytes (APM Table B-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct SegmentRegister {
    /// +0: the selector.
    pub selector: u16,
    /// +2: the attributes, in VMCB format.
    pub attrib: SegmentAttributes,
    /// +4: the limit, expanded to bytes (as after granularity scaling).
    pub limit: u32,
    /// +8: the base address.
    pub base: u64,
}

impl SegmentRegister {
    /// An all-zero segment register (null selector, not present).
    pub const NULL: Self = Self {
        selector: 0,
        attrib: SegmentAttributes(0),
        limit: 0,
        base: 0,
    };

    /// A segment register from its four parts.
    pub const fn new(selector: u16, attrib: SegmentAttributes, limit: u32, base: u64) -> Self {
        Self {
            selector,
            attrib,
            limit,
            base,
        }
    }
}

/// The VMCB control area, offsets 000h-3FFh (APM Table B-1).
#[derive(Clone, PartialEq, Eq)]
#[repr(C)]
pub struct ControlArea {
    /// 000h: intercept reads of CR0-15.
    pub intercept_cr_read: CrIntercepts,
    /// 002h: intercept writes of CR0-15.
    pub intercept_cr_write: CrIntercepts,
    /// 004h: intercept reads of DR0-15.
    pub intercept_dr_read: DrIntercepts,
    /// 006h: intercept writes of DR0-15.
    pub intercept_dr_write: DrIntercepts,
    /// 008h: intercept exception vectors 0-31.
    pub intercept_exceptions: ExceptionIntercepts,
    /// 00Ch: intercept vector 3 (instructions and events, INTR..SHUTDOWN).
    pub intercept_vector3: InterceptVector3,
    /// 010h: intercept vector 4 (VMRUN..CR write traps).
    pub intercept_vector4: InterceptVector4,
    /// 014h: intercept vector 5 (INVLPGB..IDLE_HLT).
    pub intercept_vector5: InterceptVector5,
    /// 018h-03Bh: reserved.
    pub reserved_018: [u8; 0x24],
    /// 03Ch: PAUSE_FILTER_THRESHOLD, cycles between PAUSEs that still count
    /// as one loop (needs PauseFilterThreshold).
    pub pause_filter_threshold: u16,
    /// 03Eh: PAUSE_FILTER_COUNT, PAUSEs before a PAUSE intercept (needs
    /// PauseFilter).
    pub pause_filter_count: u16,
    /// 040h: IOPM_BASE_PA, physical base of the 12 KiB I/O permission map
    /// (bits 11:0 ignored) (APM 15.10.1).
    pub iopm_base_pa: u64,
    /// 048h: MSRPM_BASE_PA, physical base of the 8 KiB MSR permission map
    /// (bits 11:0 ignored) (APM 15.11).
    pub msrpm_base_pa: u64,
    /// 050h: TSC_OFFSET, added to the TSC the guest reads (two's complement).
    pub tsc_offset: u64,
    /// 058h: guest ASID, bits 31:0; 0 is the host's and makes VMRUN fail.
    pub guest_asid: u32,
    /// 05Ch: TLB_CONTROL, a [`TlbControl`] value.
    pub tlb_control: u8,
    /// 05Dh-05Fh: reserved.
    pub reserved_05d: [u8; 3],
    /// 060h: V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING,
    /// V_INTR_VECTOR.
    pub vintr: VIntr,
    /// 068h: INTERRUPT_SHADOW and GUEST_INTERRUPT_MASK.
    pub interrupt_state: InterruptState,
    /// 070h: EXITCODE ([`crate::exit::ExitCode`]).
    pub exit_code: u64,
    /// 078h: EXITINFO1.
    pub exit_info1: u64,
    /// 080h: EXITINFO2.
    pub exit_info2: u64,
    /// 088h: EXITINTINFO, an event whose delivery the exit interrupted
    /// (APM 15.7.2).
    pub exit_int_info: EventInfo,
    /// 090h: NP_ENABLE and the SEV enables.
    pub nested_control: NestedControl,
    /// 098h: AVIC_APIC_BAR, bits 51:0.
    pub avic_apic_bar: u64,
    /// 0A0h: guest physical address of the GHCB (SEV-ES only).
    pub ghcb_gpa: u64,
    /// 0A8h: EVENTINJ, an event to inject on the next VMRUN (APM 15.20).
    pub event_inj: EventInfo,
    /// 0B0h: N_CR3, the nested page-table root (a PML4 physical address)
    /// (APM 15.25.3).
    pub n_cr3: u64,
    /// 0B8h: LBR virtualization and VMSAVE/VMLOAD virtualization enables.
    pub virt_ext: VirtExtensions,
    /// 0C0h: VMCB clean bits (APM 15.15.3).
    pub vmcb_clean: CleanBits,
    /// 0C4h-0C7h: reserved.
    pub reserved_0c4: u32,
    /// 0C8h: nRIP, the RIP after the intercepted instruction (NRIP save).
    pub next_rip: u64,
    /// 0D0h: number of bytes fetched into `guest_instruction_bytes` (decode
    /// assists, on #NPF and #PF intercepts).
    pub guest_instruction_len: u8,
    /// 0D1h-0DFh: the guest instruction bytes.
    pub guest_instruction_bytes: [u8; 15],
    /// 0E0h: AVIC_APIC_BACKING_PAGE pointer, bits 51:12.
    pub avic_apic_backing_page: u64,
    /// 0E8h-0EFh: reserved.
    pub reserved_0e8: u64,
    /// 0F0h: AVIC_LOGICAL_TABLE pointer, bits 51:12.
    pub avic_logical_table: u64,
    /// 0F8h: AVIC_PHYSICAL_TABLE pointer (bits 51:12) and max index (7:0).
    pub avic_physical_table: u64,
    /// 100h-3DFh: reserved (later SEV and feature fields live here).
    pub reserved_100: [u8; 0x2E0],
    /// 3E0h-3FFh: reserved for the host's own use; the processor ignores it.
    pub host_reserved: [u8; 0x20],
}

/// The VMCB state-save area, VMCB offsets 400h-FFFh (APM Table B-2, whose
/// offsets count from 400h).
#[derive(Clone, PartialEq, Eq)]
#[repr(C)]
pub struct StateSaveArea {
    /// 000h: ES.
    pub es: SegmentRegister,
    /// 010h: CS.
    pub cs: SegmentRegister,
    /// 020h: SS.
    pub ss: SegmentRegister,
    /// 030h: DS.
    pub ds: SegmentRegister,
    /// 040h: FS.
    pub fs: SegmentRegister,
    /// 050h: GS.
    pub gs: SegmentRegister,
    /// 060h: GDTR (selector and attributes unused).
    pub gdtr: SegmentRegister,
    /// 070h: LDTR.
    pub ldtr: SegmentRegister,
    /// 080h: IDTR (selector and attributes unused).
    pub idtr: SegmentRegister,
    /// 090h: TR.
    pub tr: SegmentRegister,
    /// 0A0h-0CAh: reserved (0CAh is the SEV-SNP VMPL).
    pub reserved_0a0: [u8; 0x2B],
    /// 0CBh: CPL. With a protected-mode guest it must equal SS.DPL; real
    /// mode needs 0 and virtual-8086 mode 3.
    pub cpl: u8,
    /// 0CCh-0CFh: reserved.
    pub reserved_0cc: u32,
    /// 0D0h: EFER; SVME (bit 12) must be set (APM 15.5.1).
    pub efer: u64,
    /// 0D8h-147h: reserved.
    pub reserved_0d8: [u8; 0x70],
    /// 148h: CR4.
    pub cr4: u64,
    /// 150h: CR3.
    pub cr3: u64,
    /// 158h: CR0.
    pub cr0: u64,
    /// 160h: DR7.
    pub dr7: u64,
    /// 168h: DR6.
    pub dr6: u64,
    /// 170h: RFLAGS.
    pub rflags: u64,
    /// 178h: RIP.
    pub rip: u64,
    /// 180h-1D7h: reserved.
    pub reserved_180: [u8; 0x58],
    /// 1D8h: RSP.
    pub rsp: u64,
    /// 1E0h: S_CET, supervisor CET state.
    pub s_cet: u64,
    /// 1E8h: SSP, the shadow-stack pointer.
    pub ssp: u64,
    /// 1F0h: ISST_ADDR, the interrupt shadow-stack table address.
    pub isst_addr: u64,
    /// 1F8h: RAX. VMRUN loads the guest's RAX from here and #VMEXIT saves it
    /// here; the other general-purpose registers are the world switch's job.
    pub rax: u64,
    /// 200h: STAR (VMLOAD/VMSAVE).
    pub star: u64,
    /// 208h: LSTAR (VMLOAD/VMSAVE).
    pub lstar: u64,
    /// 210h: CSTAR (VMLOAD/VMSAVE).
    pub cstar: u64,
    /// 218h: SFMASK (VMLOAD/VMSAVE).
    pub sfmask: u64,
    /// 220h: KernelGsBase (VMLOAD/VMSAVE).
    pub kernel_gs_base: u64,
    /// 228h: SYSENTER_CS (VMLOAD/VMSAVE).
    pub sysenter_cs: u64,
    /// 230h: SYSENTER_ESP (VMLOAD/VMSAVE).
    pub sysenter_esp: u64,
    /// 238h: SYSENTER_EIP (VMLOAD/VMSAVE).
    pub sysenter_eip: u64,
    /// 240h: CR2.
    pub cr2: u64,
    /// 248h-267h: reserved.
    pub reserved_248: [u8; 0x20],
    /// 268h: G_PAT, the guest's PAT with nested paging (APM 15.25).
    pub g_pat: u64,
    /// 270h: DBGCTL (with LBR virtualization).
    pub dbgctl: u64,
    /// 278h: BR_FROM (with LBR virtualization).
    pub br_from: u64,
    /// 280h: BR_TO (with LBR virtualization).
    pub br_to: u64,
    /// 288h: LASTEXCPFROM (with LBR virtualization).
    pub last_excp_from: u64,
    /// 290h: LASTEXCPTO (with LBR virtualization).
    pub last_excp_to: u64,
    /// 298h-2DFh: reserved.
    pub reserved_298: [u8; 0x48],
    /// 2E0h: SPEC_CTRL, the guest's (with virtual SPEC_CTRL).
    pub spec_ctrl: u64,
    /// 2E8h-BFFh: reserved (the VMCB ends at FFFh).
    pub reserved_2e8: [u8; 0x918],
}

/// The virtual machine control block: 4 KiB, 4 KiB-aligned (APM Appendix B).
#[derive(Clone, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct Vmcb {
    /// 000h-3FFh: control area.
    pub control: ControlArea,
    /// 400h-FFFh: state-save area.
    pub save: StateSaveArea,
}

/// The PAT MSR's reset value, a good G_PAT for guests: WB, WT, UC-, UC,
/// WB, WT, UC-, UC (APM Vol. 2, 7.8).
pub const PAT_RESET_VALUE: u64 = 0x0007_0406_0007_0406;

impl ControlArea {
    /// An all-zero control area.
    pub const ZERO: Self = Self {
        intercept_cr_read: CrIntercepts::empty(),
        intercept_cr_write: CrIntercepts::empty(),
        intercept_dr_read: DrIntercepts::empty(),
        intercept_dr_write: DrIntercepts::empty(),
        intercept_exceptions: ExceptionIntercepts::empty(),
        intercept_vector3: InterceptVector3::empty(),
        intercept_vector4: InterceptVector4::empty(),
        intercept_vector5: InterceptVector5::empty(),
        reserved_018: [0; 0x24],
        pause_filter_threshold: 0,
        pause_filter_count: 0,
        iopm_base_pa: 0,
        msrpm_base_pa: 0,
        tsc_offset: 0,
        guest_asid: 0,
        tlb_control: 0,
        reserved_05d: [0; 3],
        vintr: VIntr(0),
        interrupt_state: InterruptState::empty(),
        exit_code: 0,
        exit_info1: 0,
        exit_info2: 0,
        exit_int_info: EventInfo::NONE,
        nested_control: NestedControl::empty(),
        avic_apic_bar: 0,
        ghcb_gpa: 0,
        event_inj: EventInfo::NONE,
        n_cr3: 0,
        virt_ext: VirtExtensions::empty(),
        vmcb_clean: CleanBits::empty(),
        reserved_0c4: 0,
        next_rip: 0,
        guest_instruction_len: 0,
        guest_instruction_bytes: [0; 15],
        avic_apic_backing_page: 0,
        reserved_0e8: 0,
        avic_logical_table: 0,
        avic_physical_table: 0,
        reserved_100: [0; 0x2E0],
        host_reserved: [0; 0x20],
    };

    /// The guest instruction bytes the processor fetched (decode assists):
    /// at most 15, fewer if `guest_instruction_len` says so.
    pub fn instruction_bytes(&self) -> &[u8] {
        let len = usize::from(self.guest_instruction_len).min(self.guest_instruction_bytes.len());
        &self.guest_instruction_bytes[..len]
    }
}

impl StateSaveArea {
    /// An all-zero state-save area.
    pub const ZERO: Self = Self {
        es: SegmentRegister::NULL,
        cs: SegmentRegister::NULL,
        ss: SegmentRegister::NULL,
        ds: SegmentRegister::NULL,
        fs: SegmentRegister::NULL,
        gs: SegmentRegister::NULL,
        gdtr: SegmentRegister::NULL,
        ldtr: SegmentRegister::NULL,
        idtr: SegmentRegister::NULL,
        tr: SegmentRegister::NULL,
        reserved_0a0: [0; 0x2B],
        cpl: 0,
        reserved_0cc: 0,
        efer: 0,
        reserved_0d8: [0; 0x70],
        cr4: 0,
        cr3: 0,
        cr0: 0,
        dr7: 0,
        dr6: 0,
        rflags: 0,
        rip: 0,
        reserved_180: [0; 0x58],
        rsp: 0,
        s_cet: 0,
        ssp: 0,
        isst_addr: 0,
        rax: 0,
        star: 0,
        lstar: 0,
        cstar: 0,
        sfmask: 0,
        kernel_gs_base: 0,
        sysenter_cs: 0,
        sysenter_esp: 0,
        sysenter_eip: 0,
        cr2: 0,
        reserved_248: [0; 0x20],
        g_pat: 0,
        dbgctl: 0,
        br_from: 0,
        br_to: 0,
        last_excp_from: 0,
        last_excp_to: 0,
        reserved_298: [0; 0x48],
        spec_ctrl: 0,
        reserved_2e8: [0; 0x918],
    };
}

impl Default for Vmcb {
    fn default() -> Self {
        Self::new()
    }
}

/// EFER.SVME, bit 12 (APM Vol. 2, 3.1.7; 15.4).
const EFER_SVME: u64 = 1 << 12;
/// EFER.LME, bit 8.
const EFER_LME: u64 = 1 << 8;
/// CR0.PE, bit 0.
const CR0_PE: u64 = 1 << 0;
/// CR0.NW, bit 29.
const CR0_NW: u64 = 1 << 29;
/// CR0.CD, bit 30.
const CR0_CD: u64 = 1 << 30;
/// CR0.PG, bit 31.
const CR0_PG: u64 = 1 << 31;
/// CR4.PAE, bit 5.
const CR4_PAE: u64 = 1 << 5;

/// A guest state or control VMRUN refuses with VMEXIT_INVALID (APM 15.5.1
/// "Canonicalization and Consistency Checks"). [`Vmcb::check_vmrun`] finds
/// the common ones before the hardware does, for a readable report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidState {
    /// EFER.SVME is clear.
    EferSvmeClear,
    /// CR0.CD is clear and CR0.NW set.
    Cr0NwWithoutCd,
    /// CR0 bits 63:32 are not zero.
    Cr0HighBits,
    /// CR3 has bits set above bit 51 (the widest physical address).
    Cr3HighBits,
    /// CR4 bits 63:32 are not zero.
    Cr4HighBits,
    /// DR6 bits 63:32 are not zero.
    Dr6HighBits,
    /// DR7 bits 63:32 are not zero.
    Dr7HighBits,
    /// EFER.LME and CR0.PG set with CR4.PAE clear.
    LongModeWithoutPae,
    /// EFER.LME and CR0.PG set with CR0.PE clear.
    LongModeWithoutPe,
    /// EFER.LME, CR0.PG, CR4.PAE set with both CS.L and CS.D set.
    CsLongAndDefaultBig,
    /// The VMRUN intercept is clear.
    VmrunNotIntercepted,
    /// The guest ASID is 0.
    AsidZero,
    /// EVENTINJ holds a valid event of a reserved type.
    ReservedEventType,
}

impl InvalidState {
    /// A readable description.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::EferSvmeClear => "guest EFER.SVME is clear",
            Self::Cr0NwWithoutCd => "guest CR0.NW set with CR0.CD clear",
            Self::Cr0HighBits => "guest CR0 bits 63:32 not zero",
            Self::Cr3HighBits => "guest CR3 has bits set above bit 51",
            Self::Cr4HighBits => "guest CR4 bits 63:32 not zero",
            Self::Dr6HighBits => "guest DR6 bits 63:32 not zero",
            Self::Dr7HighBits => "guest DR7 bits 63:32 not zero",
            Self::LongModeWithoutPae => "EFER.LME and CR0.PG set with CR4.PAE clear",
            Self::LongModeWithoutPe => "EFER.LME and CR0.PG set with CR0.PE clear",
            Self::CsLongAndDefaultBig => "long mode with both CS.L and CS.D set",
            Self::VmrunNotIntercepted => "VMRUN intercept clear",
            Self::AsidZero => "guest ASID is 0",
            Self::ReservedEventType => "EVENTINJ holds a reserved event type",
        }
    }
}

impl fmt::Display for InvalidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

impl Vmcb {
    /// An all-zero VMCB (every intercept off, ASID 0: not yet runnable).
    pub const fn new() -> Self {
        Self {
            control: ControlArea::ZERO,
            save: StateSaveArea::ZERO,
        }
    }

    /// Clears every clean bit: the processor reloads all cached state on the
    /// next VMRUN. Always correct; required for the first VMRUN of a VMCB,
    /// after moving it to another processor, and after changing fields
    /// without naming them in [`Self::mark_dirty`] (APM 15.15.3).
    pub fn mark_all_dirty(&mut self) {
        self.control.vmcb_clean = CleanBits::empty();
    }

    /// Clears the clean bits of the field groups in `groups`, after changing
    /// fields in them.
    pub fn mark_dirty(&mut self, groups: CleanBits) {
        self.control.vmcb_clean.remove(groups);
    }

    /// Sets every defined clean bit: nothing changed since the last VMRUN of
    /// this VMCB on this processor. Follow with [`Self::mark_dirty`] for
    /// what does change. Only for CPUs with VmcbClean
    /// ([`crate::caps::SvmFeatures::VMCB_CLEAN`]).
    pub fn mark_all_clean(&mut self) {
        self.control.vmcb_clean = CleanBits::all();
    }

    /// Enables nested paging with the PML4 at `n_cr3` (APM 15.25.3) and
    /// marks the NP group dirty.
    pub fn set_nested_paging(&mut self, n_cr3: HostPhysAddr) {
        self.control.nested_control.insert(NestedControl::NP_ENABLE);
        self.control.n_cr3 = n_cr3.as_u64();
        self.mark_dirty(CleanBits::NP);
    }

    /// Points the VMCB at the I/O and MSR permission maps (APM 15.10.1,
    /// 15.11) and marks the IOPM group dirty. The low 12 bits of each are
    /// dropped (the hardware ignores them).
    pub fn set_permission_maps(&mut self, iopm: HostPhysAddr, msrpm: HostPhysAddr) {
        self.control.iopm_base_pa = iopm.as_u64() & !0xFFF;
        self.control.msrpm_base_pa = msrpm.as_u64() & !0xFFF;
        self.mark_dirty(CleanBits::IOPM);
    }

    /// Sets TLB_CONTROL.
    pub fn set_tlb_control(&mut self, control: TlbControl) {
        self.control.tlb_control = control as u8;
    }

    /// TLB_CONTROL, decoded; `None` for an undefined value.
    pub fn tlb_control(&self) -> Option<TlbControl> {
        TlbControl::from_raw(self.control.tlb_control)
    }

    /// Queues `event` for injection on the next VMRUN (EVENTINJ, APM 15.20).
    /// The processor clears EVENTINJ when it delivers the event; if the
    /// delivery itself exits, the event comes back in EXITINTINFO.
    pub fn inject_event(&mut self, event: EventInfo) {
        self.control.event_inj = event;
    }

    /// Checks the guest state and controls against the common VMRUN
    /// consistency checks of APM 15.5.1. A pass does not guarantee that
    /// VMRUN succeeds (the APM lists more checks, some CPU-specific), but a
    /// failure names a state VMRUN would refuse.
    pub fn check_vmrun(&self) -> Result<(), InvalidState> {
        let s = &self.save;
        let c = &self.control;
        if s.efer & EFER_SVME == 0 {
            return Err(InvalidState::EferSvmeClear);
        }
        if s.cr0 & CR0_CD == 0 && s.cr0 & CR0_NW != 0 {
            return Err(InvalidState::Cr0NwWithoutCd);
        }
        if s.cr0 >> 32 != 0 {
            return Err(InvalidState::Cr0HighBits);
        }
        if s.cr3 >> 52 != 0 {
            return Err(InvalidState::Cr3HighBits);
        }
        if s.cr4 >> 32 != 0 {
            return Err(InvalidState::Cr4HighBits);
        }
        if s.dr6 >> 32 != 0 {
            return Err(InvalidState::Dr6HighBits);
        }
        if s.dr7 >> 32 != 0 {
            return Err(InvalidState::Dr7HighBits);
        }
        let long = s.efer & EFER_LME != 0 && s.cr0 & CR0_PG != 0;
        if long && s.cr4 & CR4_PAE == 0 {
            return Err(InvalidState::LongModeWithoutPae);
        }
        if long && s.cr0 & CR0_PE == 0 {
            return Err(InvalidState::LongModeWithoutPe);
        }
        if long && s.cs.attrib.is_long() && s.cs.attrib.is_default_big() {
            return Err(InvalidState::CsLongAndDefaultBig);
        }
        if !c.intercept_vector4.contains(InterceptVector4::VMRUN) {
            return Err(InvalidState::VmrunNotIntercepted);
        }
        if c.guest_asid == 0 {
            return Err(InvalidState::AsidZero);
        }
        if c.event_inj.is_valid() && matches!(c.event_inj.kind(), EventType::Reserved(_)) {
            return Err(InvalidState::ReservedEventType);
        }
        Ok(())
    }
}

impl fmt::Debug for ControlArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlArea")
            .field("intercept_cr_read", &self.intercept_cr_read)
            .field("intercept_cr_write", &self.intercept_cr_write)
            .field("intercept_dr_read", &self.intercept_dr_read)
            .field("intercept_dr_write", &self.intercept_dr_write)
            .field("intercept_exceptions", &self.intercept_exceptions)
            .field("intercept_vector3", &self.intercept_vector3)
            .field("intercept_vector4", &self.intercept_vector4)
            .field("intercept_vector5", &self.intercept_vector5)
            .field("pause_filter_threshold", &self.pause_filter_threshold)
            .field("pause_filter_count", &self.pause_filter_count)
            .field("iopm_base_pa", &format_args!("{:#x}", self.iopm_base_pa))
            .field("msrpm_base_pa", &format_args!("{:#x}", self.msrpm_base_pa))
            .field("tsc_offset", &format_args!("{:#x}", self.tsc_offset))
            .field("guest_asid", &self.guest_asid)
            .field("tlb_control", &self.tlb_control)
            .field("vintr", &self.vintr)
            .field("interrupt_state", &self.interrupt_state)
            .field("exit_code", &format_args!("{:#x}", self.exit_code))
            .field("exit_info1", &format_args!("{:#x}", self.exit_info1))
            .field("exit_info2", &format_args!("{:#x}", self.exit_info2))
            .field("exit_int_info", &self.exit_int_info)
            .field("nested_control", &self.nested_control)
            .field("event_inj", &self.event_inj)
            .field("n_cr3", &format_args!("{:#x}", self.n_cr3))
            .field("virt_ext", &self.virt_ext)
            .field("vmcb_clean", &self.vmcb_clean)
            .field("next_rip", &format_args!("{:#x}", self.next_rip))
            .field("instruction_bytes", &self.instruction_bytes())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for StateSaveArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateSaveArea")
            .field("es", &self.es)
            .field("cs", &self.cs)
            .field("ss", &self.ss)
            .field("ds", &self.ds)
            .field("fs", &self.fs)
            .field("gs", &self.gs)
            .field("gdtr", &self.gdtr)
            .field("ldtr", &self.ldtr)
            .field("idtr", &self.idtr)
            .field("tr", &self.tr)
            .field("cpl", &self.cpl)
            .field("efer", &format_args!("{:#x}", self.efer))
            .field("cr0", &format_args!("{:#x}", self.cr0))
            .field("cr2", &format_args!("{:#x}", self.cr2))
            .field("cr3", &format_args!("{:#x}", self.cr3))
            .field("cr4", &format_args!("{:#x}", self.cr4))
            .field("dr6", &format_args!("{:#x}", self.dr6))
            .field("dr7", &format_args!("{:#x}", self.dr7))
            .field("rflags", &format_args!("{:#x}", self.rflags))
            .field("rip", &format_args!("{:#x}", self.rip))
            .field("rsp", &format_args!("{:#x}", self.rsp))
            .field("rax", &format_args!("{:#x}", self.rax))
            .field("g_pat", &format_args!("{:#x}", self.g_pat))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Vmcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vmcb")
            .field("control", &self.control)
            .field("save", &self.save)
            .finish()
    }
}

// The layout, checked against the APM at compile time.
const _: () = {
    assert!(size_of::<SegmentRegister>() == 16);
    assert!(size_of::<ControlArea>() == 0x400);
    assert!(size_of::<StateSaveArea>() == 0xC00);
    assert!(size_of::<Vmcb>() == VMCB_SIZE);
    assert!(align_of::<Vmcb>() == VMCB_SIZE);
    assert!(offset_of!(SegmentRegister, selector) == 0);
    assert!(offset_of!(SegmentRegister, attrib) == 2);
    assert!(offset_of!(SegmentRegister, limit) == 4);
    assert!(offset_of!(SegmentRegister, base) == 8);
};

/// Asserts `offset_of!(Vmcb, field) == offset::CONST` at compile time for
/// every pair, and keeps the table for the host test.
macro_rules! check_offsets {
    ($($area:ident . $field:ident => $off:ident,)*) => {
        const _: () = {
            $(assert!(offset_of!(Vmcb, $area.$field) == offset::$off);)*
        };

        #[cfg(test)]
        const OFFSET_TABLE: &[(&str, usize, usize)] = &[
            $((stringify!($off), offset_of!(Vmcb, $area.$field), offset::$off),)*
        ];
    };
}

check_offsets! {
    control.intercept_cr_read => INTERCEPT_CR_READ,
    control.intercept_cr_write => INTERCEPT_CR_WRITE,
    control.intercept_dr_read => INTERCEPT_DR_READ,
    control.intercept_dr_write => INTERCEPT_DR_WRITE,
    control.intercept_exceptions => INTERCEPT_EXCEPTIONS,
    control.intercept_vector3 => INTERCEPT_VECTOR3,
    control.intercept_vector4 => INTERCEPT_VECTOR4,
    control.intercept_vector5 => INTERCEPT_VECTOR5,
    control.pause_filter_threshold => PAUSE_FILTER_THRESHOLD,
    control.pause_filter_count => PAUSE_FILTER_COUNT,
    control.iopm_base_pa => IOPM_BASE_PA,
    control.msrpm_base_pa => MSRPM_BASE_PA,
    control.tsc_offset => TSC_OFFSET,
    control.guest_asid => GUEST_ASID,
    control.tlb_control => TLB_CONTROL,
    control.vintr => VINTR,
    control.interrupt_state => INTERRUPT_SHADOW,
    control.exit_code => EXITCODE,
    control.exit_info1 => EXITINFO1,
    control.exit_info2 => EXITINFO2,
    control.exit_int_info => EXITINTINFO,
    control.nested_control => NP_ENABLE,
    control.avic_apic_bar => AVIC_APIC_BAR,
    control.ghcb_gpa => GHCB_GPA,
    control.event_inj => EVENTINJ,
    control.n_cr3 => N_CR3,
    control.virt_ext => LBR_VIRTUALIZATION_ENABLE,
    control.vmcb_clean => VMCB_CLEAN,
    control.next_rip => NRIP,
    control.guest_instruction_len => GUEST_INSTRUCTION_LEN,
    control.guest_instruction_bytes => GUEST_INSTRUCTION_BYTES,
    control.avic_apic_backing_page => AVIC_APIC_BACKING_PAGE,
    control.avic_logical_table => AVIC_LOGICAL_TABLE,
    control.avic_physical_table => AVIC_PHYSICAL_TABLE,
    control.host_reserved => HOST_RESERVED,
    save.es => ES,
    save.cs => CS,
    save.ss => SS,
    save.ds => DS,
    save.fs => FS,
    save.gs => GS,
    save.gdtr => GDTR,
    save.ldtr => LDTR,
    save.idtr => IDTR,
    save.tr => TR,
    save.cpl => CPL,
    save.efer => EFER,
    save.cr4 => CR4,
    save.cr3 => CR3,
    save.cr0 => CR0,
    save.dr7 => DR7,
    save.dr6 => DR6,
    save.rflags => RFLAGS,
    save.rip => RIP,
    save.rsp => RSP,
    save.s_cet => S_CET,
    save.ssp => SSP,
    save.isst_addr => ISST_ADDR,
    save.rax => RAX,
    save.star => STAR,
    save.lstar => LSTAR,
    save.cstar => CSTAR,
    save.sfmask => SFMASK,
    save.kernel_gs_base => KERNEL_GS_BASE,
    save.sysenter_cs => SYSENTER_CS,
    save.sysenter_esp => SYSENTER_ESP,
    save.sysenter_eip => SYSENTER_EIP,
    save.cr2 => CR2,
    save.g_pat => G_PAT,
    save.dbgctl => DBGCTL,
    save.br_from => BR_FROM,
    save.br_to => BR_TO,
    save.last_excp_from => LASTEXCP_FROM,
    save.last_excp_to => LASTEXCP_TO,
    save.spec_ctrl => SPEC_CTRL,
}

const _: () = assert!(offset_of!(Vmcb, save) == offset::STATE_SAVE_AREA);

#[cfg(test)]
mod tests {
    use super::*;

    /// The VMCB as the processor sees it: its 4096 bytes.
    #[allow(unsafe_code)] // Test-only view of the hardware layout.
    fn bytes(vmcb: &Vmcb) -> &[u8; VMCB_SIZE] {
        // SAFETY: `Vmcb` is `repr(C)`, exactly 4096 bytes (checked at
        // compile time), made only of integers and integer wrappers with
        // explicit reserved arrays and no padding (the offset checks leave
        // no gap), so every byte is initialised; the borrow keeps it alive.
        unsafe { &*(vmcb as *const Vmcb).cast::<[u8; VMCB_SIZE]>() }
    }

    fn read_u64(b: &[u8; VMCB_SIZE], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn offset_table_matches_layout() {
        assert_eq!(OFFSET_TABLE.len(), 75);
        for &(name, actual, apm) in OFFSET_TABLE {
            assert_eq!(actual, apm, "{name}");
        }
        // Ascending and inside the page: the fields are listed in order.
        for pair in OFFSET_TABLE.windows(2) {
            assert!(pair[0].2 < pair[1].2, "{pair:?}");
        }
    }

    /// Writes every field through the struct and finds the value at the
    /// APM's offset in the raw bytes (offsets from Table B-1 / B-2 as
    /// literals, independent of the `offset` constants).
    #[test]
    fn fields_land_at_apm_offsets() {
        let mut v = Vmcb::new();
        let c = &mut v.control;
        c.intercept_cr_read = CrIntercepts::from_bits_retain(0x1111);
        c.intercept_cr_write = CrIntercepts::from_bits_retain(0x2222);
        c.intercept_dr_read = DrIntercepts::from_bits_retain(0x3333);
        c.intercept_dr_write = DrIntercepts::from_bits_retain(0x4444);
        c.intercept_exceptions = ExceptionIntercepts::from_bits_retain(0x5555_5555);
        c.intercept_vector3 = InterceptVector3::from_bits_retain(0x6666_6666);
        c.intercept_vector4 = InterceptVector4::from_bits_retain(0x7777_7777);
        c.intercept_vector5 = InterceptVector5::from_bits_retain(0x0000_0042);
        c.pause_filter_threshold = 0x8888;
        c.pause_filter_count = 0x9999;
        c.iopm_base_pa = 0x1_0000_1000;
        c.msrpm_base_pa = 0x2_0000_2000;
        c.tsc_offset = 0xfedc_ba98_7654_3210;
        c.guest_asid = 0xabcd_0001;
        c.tlb_control = 0x07;
        c.vintr = VIntr(0x0000_0020_0101_0108);
        c.interrupt_state = InterruptState::INTERRUPT_SHADOW;
        c.exit_code = 0x400;
        c.exit_info1 = 0xa1a1_a1a1;
        c.exit_info2 = 0xb2b2_b2b2;
        c.exit_int_info = EventInfo(0x8000_0b0e);
        c.nested_control = NestedControl::NP_ENABLE;
        c.avic_apic_bar = 0xfee0_0000;
        c.ghcb_gpa = 0xc0c0_0000;
        c.event_inj = EventInfo(0x8000_0306);
        c.n_cr3 = 0x3000;
        c.virt_ext = VirtExtensions::LBR_VIRTUALIZATION;
        c.vmcb_clean = CleanBits::from_bits_retain(0x1fff);
        c.next_rip = 0x7c02;
        c.guest_instruction_len = 3;
        c.guest_instruction_bytes[0] = 0x0f;
        c.guest_instruction_bytes[14] = 0xee;
        c.avic_apic_backing_page = 0xe000;
        c.avic_logical_table = 0xf000;
        c.avic_physical_table = 0xf8_0000;
        c.host_reserved[0] = 0x3e;
        let s = &mut v.save;
        s.es = SegmentRegister::new(0x10, SegmentAttributes(0x093), 0xffff, 0x1000);
        s.cs = SegmentRegister::new(0x08, SegmentAttributes::CODE64, 0xffff_ffff, 0);
        s.ss.selector = 0x18;
        s.ds.base = 0xd5;
        s.fs.base = 0xf5;
        s.gs.base = 0x65;
        s.gdtr.limit = 0x27;
        s.ldtr.selector = 0x28;
        s.idtr.base = 0x1d7;
        s.tr.attrib = SegmentAttributes::TSS_BUSY;
        s.cpl = 3;
        s.efer = 0x1d01;
        s.cr4 = 0x6f0;
        s.cr3 = 0x3000;
        s.cr0 = 0x8005_0033;
        s.dr7 = 0x400;
        s.dr6 = 0xffff_0ff0;
        s.rflags = 0x202;
        s.rip = 0x7c00;
        s.rsp = 0x8000;
        s.s_cet = 0x5ce7;
        s.ssp = 0x55b;
        s.isst_addr = 0x1557;
        s.rax = 0xaaaa;
        s.star = 0x5a;
        s.lstar = 0x15a;
        s.cstar = 0xc5a;
        s.sfmask = 0x5f;
        s.kernel_gs_base = 0x9b;
        s.sysenter_cs = 0x5c;
        s.sysenter_esp = 0x5e5;
        s.sysenter_eip = 0x5e1;
        s.cr2 = 0xc2;
        s.g_pat = PAT_RESET_VALUE;
        s.dbgctl = 0xdb;
        s.br_from = 0xbf;
        s.br_to = 0xb7;
        s.last_excp_from = 0x1ef;
        s.last_excp_to = 0x1e7;
        s.spec_ctrl = 0x5c7;

        let b = bytes(&v);
        let u16_at = |at: usize| u16::from_le_bytes(b[at..at + 2].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        // Control area, APM Table B-1.
        assert_eq!(u16_at(0x000), 0x1111);
        assert_eq!(u16_at(0x002), 0x2222);
        assert_eq!(u16_at(0x004), 0x3333);
        assert_eq!(u16_at(0x006), 0x4444);
        assert_eq!(u32_at(0x008), 0x5555_5555);
        assert_eq!(u32_at(0x00C), 0x6666_6666);
        assert_eq!(u32_at(0x010), 0x7777_7777);
        assert_eq!(u32_at(0x014), 0x42);
        assert_eq!(u16_at(0x03C), 0x8888);
        assert_eq!(u16_at(0x03E), 0x9999);
        assert_eq!(read_u64(b, 0x040), 0x1_0000_1000);
        assert_eq!(read_u64(b, 0x048), 0x2_0000_2000);
        assert_eq!(read_u64(b, 0x050), 0xfedc_ba98_7654_3210);
        assert_eq!(u32_at(0x058), 0xabcd_0001);
        assert_eq!(b[0x05C], 0x07);
        // VINTR: V_TPR byte 060h, V_IRQ bit 8, V_INTR_PRIO at 062h, vector at 064h.
        assert_eq!(b[0x060], 0x08);
        assert_eq!(b[0x061], 0x01);
        assert_eq!(b[0x062], 0x01);
        assert_eq!(b[0x064], 0x20);
        assert_eq!(read_u64(b, 0x068), 1);
        assert_eq!(read_u64(b, 0x070), 0x400);
        assert_eq!(read_u64(b, 0x078), 0xa1a1_a1a1);
        assert_eq!(read_u64(b, 0x080), 0xb2b2_b2b2);
        assert_eq!(read_u64(b, 0x088), 0x8000_0b0e);
        assert_eq!(read_u64(b, 0x090), 1);
        assert_eq!(read_u64(b, 0x098), 0xfee0_0000);
        assert_eq!(read_u64(b, 0x0A0), 0xc0c0_0000);
        assert_eq!(read_u64(b, 0x0A8), 0x8000_0306);
        assert_eq!(read_u64(b, 0x0B0), 0x3000);
        assert_eq!(read_u64(b, 0x0B8), 1);
        assert_eq!(u32_at(0x0C0), 0x1fff);
        assert_eq!(read_u64(b, 0x0C8), 0x7c02);
        assert_eq!(b[0x0D0], 3);
        assert_eq!(b[0x0D1], 0x0f);
        assert_eq!(b[0x0DF], 0xee);
        assert_eq!(read_u64(b, 0x0E0), 0xe000);
        assert_eq!(read_u64(b, 0x0F0), 0xf000);
        assert_eq!(read_u64(b, 0x0F8), 0xf8_0000);
        assert_eq!(b[0x3E0], 0x3e);
        // State-save area, APM Table B-2 (offsets + 400h).
        assert_eq!(u16_at(0x400), 0x10);
        assert_eq!(u16_at(0x402), 0x093);
        assert_eq!(u32_at(0x404), 0xffff);
        assert_eq!(read_u64(b, 0x408), 0x1000);
        assert_eq!(u16_at(0x410), 0x08);
        assert_eq!(u16_at(0x412), 0xa9b);
        assert_eq!(u32_at(0x414), 0xffff_ffff);
        assert_eq!(u16_at(0x420), 0x18);
        assert_eq!(read_u64(b, 0x438), 0xd5);
        assert_eq!(read_u64(b, 0x448), 0xf5);
        assert_eq!(read_u64(b, 0x458), 0x65);
        assert_eq!(u32_at(0x464), 0x27);
        assert_eq!(u16_at(0x470), 0x28);
        assert_eq!(read_u64(b, 0x488), 0x1d7);
        assert_eq!(u16_at(0x492), 0x08b);
        assert_eq!(b[0x4CB], 3);
        assert_eq!(read_u64(b, 0x4D0), 0x1d01);
        assert_eq!(read_u64(b, 0x548), 0x6f0);
        assert_eq!(read_u64(b, 0x550), 0x3000);
        assert_eq!(read_u64(b, 0x558), 0x8005_0033);
        assert_eq!(read_u64(b, 0x560), 0x400);
        assert_eq!(read_u64(b, 0x568), 0xffff_0ff0);
        assert_eq!(read_u64(b, 0x570), 0x202);
        assert_eq!(read_u64(b, 0x578), 0x7c00);
        assert_eq!(read_u64(b, 0x5D8), 0x8000);
        assert_eq!(read_u64(b, 0x5E0), 0x5ce7);
        assert_eq!(read_u64(b, 0x5E8), 0x55b);
        assert_eq!(read_u64(b, 0x5F0), 0x1557);
        assert_eq!(read_u64(b, 0x5F8), 0xaaaa);
        assert_eq!(read_u64(b, 0x600), 0x5a);
        assert_eq!(read_u64(b, 0x608), 0x15a);
        assert_eq!(read_u64(b, 0x610), 0xc5a);
        assert_eq!(read_u64(b, 0x618), 0x5f);
        assert_eq!(read_u64(b, 0x620), 0x9b);
        assert_eq!(read_u64(b, 0x628), 0x5c);
        assert_eq!(read_u64(b, 0x630), 0x5e5);
        assert_eq!(read_u64(b, 0x638), 0x5e1);
        assert_eq!(read_u64(b, 0x640), 0xc2);
        assert_eq!(read_u64(b, 0x668), 0x0007_0406_0007_0406);
        assert_eq!(read_u64(b, 0x670), 0xdb);
        assert_eq!(read_u64(b, 0x678), 0xbf);
        assert_eq!(read_u64(b, 0x680), 0xb7);
        assert_eq!(read_u64(b, 0x688), 0x1ef);
        assert_eq!(read_u64(b, 0x690), 0x1e7);
        assert_eq!(read_u64(b, 0x6E0), 0x5c7);

        // Reserved space stayed zero.
        assert_eq!(b[0x018..0x03C].iter().filter(|&&x| x != 0).count(), 0);
        assert_eq!(b[0x100..0x3E0].iter().filter(|&&x| x != 0).count(), 0);
        assert_eq!(b[0x6E8..].iter().filter(|&&x| x != 0).count(), 0);
    }

    #[test]
    fn new_is_all_zero() {
        let v = Vmcb::new();
        assert!(bytes(&v).iter().all(|&x| x == 0));
        let mut w = v.clone();
        assert_eq!(w, v);
        w.save.rip = 1;
        assert_ne!(w, v);
        let boxed = Box::new(Vmcb::default());
        assert_eq!((&*boxed as *const Vmcb as usize) % 4096, 0);
    }

    #[test]
    fn segment_attributes_convert() {
        // VMX access rights of the kernel's guest segments.
        for (ar, attrib) in [
            (0xa09b, SegmentAttributes::CODE64),
            (0xc09b, SegmentAttributes::CODE32),
            (0x009b, SegmentAttributes::CODE16),
            (0xc093, SegmentAttributes::DATA32),
            (0x0093, SegmentAttributes::DATA16),
            (0x008b, SegmentAttributes::TSS_BUSY),
            (0x0082, SegmentAttributes::LDT),
        ] {
            assert_eq!(SegmentAttributes::from_access_rights(ar), attrib, "{ar:#x}");
            assert_eq!(attrib.access_rights(), ar);
        }
        // VMX's "unusable" bit 16 and the reserved bits 11:8 are dropped.
        assert_eq!(
            SegmentAttributes::from_access_rights(0x1_0f93),
            SegmentAttributes(0x093)
        );
        // A raw GDT entry: flat 64-bit kernel code, 0x00af9b000000ffff.
        let code = SegmentAttributes::from_descriptor(0x00af_9b00_0000_ffff);
        assert_eq!(code, SegmentAttributes::CODE64);
        assert!(code.is_long() && !code.is_default_big() && code.is_granular());
        assert!(code.is_present() && code.is_code_or_data());
        assert_eq!((code.segment_type(), code.dpl()), (0xB, 0));
        // Flat 32-bit user data, DPL 3: 0x00cff3000000ffff.
        let data = SegmentAttributes::from_descriptor(0x00cf_f300_0000_ffff);
        assert_eq!(data.bits(), 0xcf3);
        assert_eq!(data.dpl(), 3);
        assert!(data.is_default_big() && !data.is_long());
        assert_eq!(SegmentAttributes(0xf093).bits(), 0x093);
        assert_eq!(
            format!("{:?}", SegmentAttributes::CODE64),
            "SegmentAttributes(0xa9b)"
        );
    }

    #[test]
    fn vintr_fields() {
        let v = VIntr::default().with_pending_interrupt(0x31);
        assert!(v.v_irq());
        assert_eq!(v.v_intr_vector(), 0x31);
        assert_eq!(v.v_intr_prio(), 3);
        assert!(!v.v_ign_tpr());
        assert_eq!(v.0, (0x31 << 32) | (3 << 16) | (1 << 8));
        let v = v
            .with_v_tpr(0x1f)
            .with_v_intr_masking(true)
            .with_v_ign_tpr(true);
        assert_eq!(v.v_tpr(), 0xf);
        assert!(v.v_intr_masking() && v.v_ign_tpr());
        assert_eq!(v.0 & (1 << 24), 1 << 24);
        assert_eq!(v.0 & (1 << 20), 1 << 20);
        let cleared = v
            .with_v_irq(false)
            .with_v_intr_vector(0)
            .with_v_intr_prio(0);
        assert_eq!(cleared.0, (1 << 24) | (1 << 20) | 0xf);
        assert!(format!("{v:?}").contains("v_intr_vector: 49"));
    }

    #[test]
    fn clean_bits() {
        let mut v = Vmcb::new();
        v.mark_all_clean();
        assert_eq!(v.control.vmcb_clean.bits(), 0x1fff);
        v.mark_dirty(CleanBits::CRX | CleanBits::SEG);
        assert!(!v.control.vmcb_clean.contains(CleanBits::CRX));
        assert!(v.control.vmcb_clean.contains(CleanBits::CR2));
        assert_eq!(v.control.vmcb_clean.bits(), 0x1fff & !(1 << 5) & !(1 << 8));
        v.set_nested_paging(HostPhysAddr::new(0x5000));
        assert!(!v.control.vmcb_clean.contains(CleanBits::NP));
        assert_eq!(v.control.n_cr3, 0x5000);
        assert!(v.control.nested_control.contains(NestedControl::NP_ENABLE));
        v.set_permission_maps(HostPhysAddr::new(0x6123), HostPhysAddr::new(0x9000));
        assert_eq!(
            (v.control.iopm_base_pa, v.control.msrpm_base_pa),
            (0x6000, 0x9000)
        );
        assert!(!v.control.vmcb_clean.contains(CleanBits::IOPM));
        v.mark_all_dirty();
        assert_eq!(v.control.vmcb_clean, CleanBits::empty());
        // Bits from APM 15.15.3.
        assert_eq!(CleanBits::INTERCEPTS.bits(), 1);
        assert_eq!(CleanBits::TPR.bits(), 1 << 3);
        assert_eq!(CleanBits::DT.bits(), 1 << 7);
        assert_eq!(CleanBits::LBR.bits(), 1 << 10);
        assert_eq!(CleanBits::CET.bits(), 1 << 12);
    }

    #[test]
    fn tlb_control() {
        let mut v = Vmcb::new();
        assert_eq!(v.tlb_control(), Some(TlbControl::DoNothing));
        v.set_tlb_control(TlbControl::FlushGuest);
        assert_eq!(v.control.tlb_control, 3);
        assert_eq!(v.tlb_control(), Some(TlbControl::FlushGuest));
        v.control.tlb_control = 2;
        assert_eq!(v.tlb_control(), None);
        assert_eq!(
            TlbControl::from_raw(7),
            Some(TlbControl::FlushGuestNonGlobal)
        );
        assert_eq!(TlbControl::from_raw(1), Some(TlbControl::FlushAll));
    }

    fn runnable_long_mode() -> Vmcb {
        let mut v = Vmcb::new();
        v.control.intercept_vector4 = InterceptVector4::VMRUN;
        v.control.guest_asid = 1;
        v.save.efer = EFER_SVME | EFER_LME | (1 << 10);
        v.save.cr0 = CR0_PE | CR0_PG | (1 << 4);
        v.save.cr4 = CR4_PAE;
        v.save.cs.attrib = SegmentAttributes::CODE64;
        v
    }

    #[test]
    fn vmrun_consistency_checks() {
        let ok = runnable_long_mode();
        assert_eq!(ok.check_vmrun(), Ok(()));
        type Breaker = fn(&mut Vmcb);
        let cases: [(Breaker, InvalidState); 13] = [
            (|v| v.save.efer &= !EFER_SVME, InvalidState::EferSvmeClear),
            (|v| v.save.cr0 |= CR0_NW, InvalidState::Cr0NwWithoutCd),
            (|v| v.save.cr0 |= 1 << 32, InvalidState::Cr0HighBits),
            (|v| v.save.cr3 = 1 << 52, InvalidState::Cr3HighBits),
            (|v| v.save.cr4 |= 1 << 40, InvalidState::Cr4HighBits),
            (|v| v.save.dr6 = 1 << 32, InvalidState::Dr6HighBits),
            (|v| v.save.dr7 = 1 << 63, InvalidState::Dr7HighBits),
            (|v| v.save.cr4 = 0, InvalidState::LongModeWithoutPae),
            (|v| v.save.cr0 &= !CR0_PE, InvalidState::LongModeWithoutPe),
            (
                |v| v.save.cs.attrib = SegmentAttributes(0xe9b),
                InvalidState::CsLongAndDefaultBig,
            ),
            (
                |v| v.control.intercept_vector4 = InterceptVector4::empty(),
                InvalidState::VmrunNotIntercepted,
            ),
            (|v| v.control.guest_asid = 0, InvalidState::AsidZero),
            (
                |v| v.control.event_inj = EventInfo((1 << 31) | (5 << 8)),
                InvalidState::ReservedEventType,
            ),
        ];
        for (break_it, expected) in cases {
            let mut v = runnable_long_mode();
            break_it(&mut v);
            assert_eq!(v.check_vmrun(), Err(expected));
            assert!(!expected.describe().is_empty());
        }
        // CD and NW together are fine; so is a 32-bit guest with CS.D.
        let mut v = runnable_long_mode();
        v.save.cr0 |= CR0_CD | CR0_NW;
        assert_eq!(v.check_vmrun(), Ok(()));
        let mut v = runnable_long_mode();
        v.save.efer = EFER_SVME;
        v.save.cr0 = CR0_PE;
        v.save.cr4 = 0;
        v.save.cs.attrib = SegmentAttributes::CODE32;
        assert_eq!(v.check_vmrun(), Ok(()));
        // A valid injected #GP passes.
        let mut v = runnable_long_mode();
        v.inject_event(EventInfo::general_protection());
        assert_eq!(v.check_vmrun(), Ok(()));
        assert_eq!(format!("{}", InvalidState::AsidZero), "guest ASID is 0");
    }

    #[test]
    fn instruction_bytes_and_debug() {
        let mut v = Vmcb::new();
        v.control.guest_instruction_len = 2;
        v.control.guest_instruction_bytes[..2].copy_from_slice(&[0x0f, 0x01]);
        assert_eq!(v.control.instruction_bytes(), &[0x0f, 0x01]);
        v.control.guest_instruction_len = 200; // hardware garbage: clamped
        assert_eq!(v.control.instruction_bytes().len(), 15);
        let shown = format!("{v:?}");
        assert!(shown.contains("exit_code: 0x0"));
        assert!(shown.contains("rip: 0x0"));
        assert!(!shown.contains("reserved"));
    }
}
