//! VMCS fields typed by width and access (SDM Vol. 3C, chapter 25 and
//! Appendix B), and access to a VMCS through the [`VmcsAccess`] trait.
//!
//! A field encoding (SDM 25.11.2) packs:
//! bit 0 access type (full/high), bits 9:1 index, bits 11:10 type (control,
//! VM-exit information, guest state, host state), bits 14:13 width (16-bit,
//! 64-bit, 32-bit, natural). Each width has its own Rust type, and the
//! read-only VM-exit information fields have their own types that cannot be
//! written: `vmcs.set(EXIT_REASON, 0)` does not compile. The constants below are
//! checked against their types at compile time.
//!
//! [`ActiveVmcs`] is the current VMCS of this CPU (VMREAD/VMWRITE);
//! [`FakeVmcs`] is an in-memory stand-in so exit handling can be tested on the
//! host.

use bitflags::bitflags;

use crate::instructions::{InstructionError, VmFail};

/// Width of a VMCS field: encoding bits 14:13 (SDM 25.11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldWidth {
    /// 0: 16-bit.
    Bits16,
    /// 1: 64-bit.
    Bits64,
    /// 2: 32-bit.
    Bits32,
    /// 3: natural width (64 bits on processors supporting Intel 64).
    Natural,
}

/// Type of a VMCS field: encoding bits 11:10 (SDM 25.11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// 0: control.
    Control,
    /// 1: VM-exit information (read-only data).
    ExitInformation,
    /// 2: guest state.
    GuestState,
    /// 3: host state.
    HostState,
}

/// Encoding bits that must be zero: bit 12 and bits 31:15 (SDM 25.11.2).
pub const ENCODING_RESERVED_BITS: u32 = !0x6FFF;

/// The width encoded in bits 14:13 of a field encoding.
pub const fn field_width(encoding: u32) -> FieldWidth {
    match (encoding >> 13) & 3 {
        0 => FieldWidth::Bits16,
        1 => FieldWidth::Bits64,
        2 => FieldWidth::Bits32,
        _ => FieldWidth::Natural,
    }
}

/// The type encoded in bits 11:10 of a field encoding.
pub const fn field_type(encoding: u32) -> FieldType {
    match (encoding >> 10) & 3 {
        0 => FieldType::Control,
        1 => FieldType::ExitInformation,
        2 => FieldType::GuestState,
        _ => FieldType::HostState,
    }
}

/// Whether bit 0 selects the high 32 bits of a 64-bit field (SDM 25.11.2).
pub const fn is_high_access(encoding: u32) -> bool {
    encoding & 1 != 0
}

/// Whether `encoding` is well formed for a field of this width and
/// writability: reserved bits clear, full access (bit 0 clear), and type 1
/// (VM-exit information) exactly when the field is read-only.
const fn encoding_matches(encoding: u32, width: FieldWidth, read_only: bool) -> bool {
    encoding & ENCODING_RESERVED_BITS == 0
        && !is_high_access(encoding)
        && field_width(encoding) as u8 == width as u8
        && (field_type(encoding) as u8 == FieldType::ExitInformation as u8) == read_only
}

mod sealed {
    pub trait Sealed {}
}

/// A typed VMCS field: its encoding and the Rust type of its value.
/// Implemented only by the field types of this module.
pub trait Field: sealed::Sealed + Copy {
    /// The value type (`u16`, `u32` or `u64`).
    type Value: Copy;
    /// The field encoding (SDM Appendix B).
    fn encoding(self) -> u32;
    /// Converts the 64 bits VMREAD returns (upper bits zero for narrow fields).
    fn from_raw(raw: u64) -> Self::Value;
    /// Converts a value to the 64-bit operand of VMWRITE.
    fn to_raw(value: Self::Value) -> u64;
}

/// A field software may write. Read-only VM-exit information fields do not
/// implement it (SDM 25.9: VMWRITE to them fails).
pub trait WritableField: Field {}

macro_rules! field_type {
    ($(#[$doc:meta])* $name:ident, $value:ty, $width:expr, $read_only:expr, writable: $w:tt) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(u32);

        impl $name {
            /// Builds a field from a well-formed encoding; a constant with the
            /// wrong width, type or access bits fails to compile.
            const fn of(encoding: u32) -> Self {
                assert!(encoding_matches(encoding, $width, $read_only));
                Self(encoding)
            }

            /// The field for `encoding`, if that encoding has this type's width
            /// and access (for fields without a constant here).
            pub const fn from_encoding(encoding: u32) -> Option<Self> {
                if encoding_matches(encoding, $width, $read_only) {
                    Some(Self(encoding))
                } else {
                    None
                }
            }

            /// The field encoding (SDM Appendix B).
            pub const fn encoding(self) -> u32 {
                self.0
            }
        }

        impl sealed::Sealed for $name {}

        impl Field for $name {
            type Value = $value;
            fn encoding(self) -> u32 {
                self.0
            }
            fn from_raw(raw: u64) -> $value {
                // Narrow fields read back zero-extended; keep the low bits.
                raw as $value
            }
            fn to_raw(value: $value) -> u64 {
                u64::from(value)
            }
        }

        field_type!(@writable $name, $w);
    };
    (@writable $name:ident, yes) => {
        impl WritableField for $name {}
    };
    (@writable $name:ident, no) => {};
}

field_type!(
    /// A read-write 16-bit field (SDM B.1).
    VmcsField16, u16, FieldWidth::Bits16, false, writable: yes
);
field_type!(
    /// A read-write 32-bit field (SDM B.3).
    VmcsField32, u32, FieldWidth::Bits32, false, writable: yes
);
field_type!(
    /// A read-write 64-bit field, full access (SDM B.2).
    VmcsField64, u64, FieldWidth::Bits64, false, writable: yes
);
field_type!(
    /// A read-write natural-width field (SDM B.4).
    VmcsFieldNatural, u64, FieldWidth::Natural, false, writable: yes
);
field_type!(
    /// A read-only 32-bit VM-exit information field (SDM B.3.2).
    ReadOnlyField32, u32, FieldWidth::Bits32, true, writable: no
);
field_type!(
    /// A read-only 64-bit VM-exit information field (SDM B.2.2).
    ReadOnlyField64, u64, FieldWidth::Bits64, true, writable: no
);
field_type!(
    /// A read-only natural-width VM-exit information field (SDM B.4.2).
    ReadOnlyFieldNatural, u64, FieldWidth::Natural, true, writable: no
);

// ---- 16-bit control fields (SDM B.1.1, Table B-1) ----
/// Virtual-processor identifier, VPID (SDM B.1.1; 25.6.12).
pub const VIRTUAL_PROCESSOR_ID: VmcsField16 = VmcsField16::of(0x0000);
/// Posted-interrupt notification vector (SDM B.1.1; 25.6.8).
pub const POSTED_INTR_NOTIFICATION_VECTOR: VmcsField16 = VmcsField16::of(0x0002);
/// EPTP index (SDM B.1.1).
pub const EPTP_INDEX: VmcsField16 = VmcsField16::of(0x0004);

// ---- 16-bit guest-state fields (SDM B.1.2, Table B-2) ----
/// Guest ES selector (SDM B.1.2; 25.4.1).
pub const GUEST_ES_SELECTOR: VmcsField16 = VmcsField16::of(0x0800);
/// Guest CS selector (SDM B.1.2; 25.4.1).
pub const GUEST_CS_SELECTOR: VmcsField16 = VmcsField16::of(0x0802);
/// Guest SS selector (SDM B.1.2; 25.4.1).
pub const GUEST_SS_SELECTOR: VmcsField16 = VmcsField16::of(0x0804);
/// Guest DS selector (SDM B.1.2; 25.4.1).
pub const GUEST_DS_SELECTOR: VmcsField16 = VmcsField16::of(0x0806);
/// Guest FS selector (SDM B.1.2; 25.4.1).
pub const GUEST_FS_SELECTOR: VmcsField16 = VmcsField16::of(0x0808);
/// Guest GS selector (SDM B.1.2; 25.4.1).
pub const GUEST_GS_SELECTOR: VmcsField16 = VmcsField16::of(0x080A);
/// Guest LDTR selector (SDM B.1.2; 25.4.1).
pub const GUEST_LDTR_SELECTOR: VmcsField16 = VmcsField16::of(0x080C);
/// Guest TR selector (SDM B.1.2; 25.4.1).
pub const GUEST_TR_SELECTOR: VmcsField16 = VmcsField16::of(0x080E);
/// Guest interrupt status (SDM B.1.2; 25.4.2).
pub const GUEST_INTR_STATUS: VmcsField16 = VmcsField16::of(0x0810);
/// PML index (SDM B.1.2; 25.4.2).
pub const GUEST_PML_INDEX: VmcsField16 = VmcsField16::of(0x0812);

// ---- 16-bit host-state fields (SDM B.1.3, Table B-3) ----
/// Host ES selector (SDM B.1.3; 25.5).
pub const HOST_ES_SELECTOR: VmcsField16 = VmcsField16::of(0x0C00);
/// Host CS selector (SDM B.1.3; 25.5).
pub const HOST_CS_SELECTOR: VmcsField16 = VmcsField16::of(0x0C02);
/// Host SS selector (SDM B.1.3; 25.5).
pub const HOST_SS_SELECTOR: VmcsField16 = VmcsField16::of(0x0C04);
/// Host DS selector (SDM B.1.3; 25.5).
pub const HOST_DS_SELECTOR: VmcsField16 = VmcsField16::of(0x0C06);
/// Host FS selector (SDM B.1.3; 25.5).
pub const HOST_FS_SELECTOR: VmcsField16 = VmcsField16::of(0x0C08);
/// Host GS selector (SDM B.1.3; 25.5).
pub const HOST_GS_SELECTOR: VmcsField16 = VmcsField16::of(0x0C0A);
/// Host TR selector (SDM B.1.3; 25.5).
pub const HOST_TR_SELECTOR: VmcsField16 = VmcsField16::of(0x0C0C);

// ---- 64-bit control fields (SDM B.2.1, Table B-4) ----
/// Address of I/O bitmap A, ports 0000H-7FFFH (SDM B.2.1; 25.6.4).
pub const IO_BITMAP_A: VmcsField64 = VmcsField64::of(0x2000);
/// Address of I/O bitmap B, ports 8000H-FFFFH (SDM B.2.1; 25.6.4).
pub const IO_BITMAP_B: VmcsField64 = VmcsField64::of(0x2002);
/// Address of MSR bitmaps (SDM B.2.1; 25.6.9).
pub const MSR_BITMAP: VmcsField64 = VmcsField64::of(0x2004);
/// VM-exit MSR-store address (SDM B.2.1; 25.7.2).
pub const VM_EXIT_MSR_STORE_ADDR: VmcsField64 = VmcsField64::of(0x2006);
/// VM-exit MSR-load address (SDM B.2.1; 25.7.2).
pub const VM_EXIT_MSR_LOAD_ADDR: VmcsField64 = VmcsField64::of(0x2008);
/// VM-entry MSR-load address (SDM B.2.1; 25.8.2).
pub const VM_ENTRY_MSR_LOAD_ADDR: VmcsField64 = VmcsField64::of(0x200A);
/// Executive-VMCS pointer (SDM B.2.1; 25.6.10).
pub const EXECUTIVE_VMCS_POINTER: VmcsField64 = VmcsField64::of(0x200C);
/// PML address (SDM B.2.1).
pub const PML_ADDRESS: VmcsField64 = VmcsField64::of(0x200E);
/// TSC offset (SDM B.2.1; 25.6.5).
pub const TSC_OFFSET: VmcsField64 = VmcsField64::of(0x2010);
/// Virtual-APIC address (SDM B.2.1; 25.6.8).
pub const VIRTUAL_APIC_PAGE_ADDR: VmcsField64 = VmcsField64::of(0x2012);
/// APIC-access address (SDM B.2.1; 25.6.8).
pub const APIC_ACCESS_ADDR: VmcsField64 = VmcsField64::of(0x2014);
/// Posted-interrupt descriptor address (SDM B.2.1; 25.6.8).
pub const POSTED_INTR_DESC_ADDR: VmcsField64 = VmcsField64::of(0x2016);
/// VM-function controls (SDM B.2.1; 25.6.14).
pub const VM_FUNCTION_CONTROLS: VmcsField64 = VmcsField64::of(0x2018);
/// EPT pointer, EPTP (SDM B.2.1; 25.6.11).
pub const EPT_POINTER: VmcsField64 = VmcsField64::of(0x201A);
/// EPTP-list address (SDM B.2.1; 25.6.14).
pub const EPTP_LIST_ADDRESS: VmcsField64 = VmcsField64::of(0x2024);
/// XSS-exiting bitmap (SDM B.2.1).
pub const XSS_EXIT_BITMAP: VmcsField64 = VmcsField64::of(0x202C);
/// TSC multiplier (SDM B.2.1; 25.6.5).
pub const TSC_MULTIPLIER: VmcsField64 = VmcsField64::of(0x2032);

// ---- 64-bit read-only data field (SDM B.2.2, Table B-5) ----
/// Guest-physical address of an EPT violation or misconfiguration (SDM B.2.2; 25.9.1).
pub const GUEST_PHYSICAL_ADDRESS: ReadOnlyField64 = ReadOnlyField64::of(0x2400);

// ---- 64-bit guest-state fields (SDM B.2.3, Table B-6) ----
/// VMCS link pointer; all ones when unused (SDM B.2.3; 25.4.2).
pub const VMCS_LINK_POINTER: VmcsField64 = VmcsField64::of(0x2800);
/// Guest IA32_DEBUGCTL (SDM B.2.3; 25.4.1).
pub const GUEST_IA32_DEBUGCTL: VmcsField64 = VmcsField64::of(0x2802);
/// Guest IA32_PAT (SDM B.2.3; 25.4.1).
pub const GUEST_IA32_PAT: VmcsField64 = VmcsField64::of(0x2804);
/// Guest IA32_EFER (SDM B.2.3; 25.4.1).
pub const GUEST_IA32_EFER: VmcsField64 = VmcsField64::of(0x2806);
/// Guest IA32_PERF_GLOBAL_CTRL (SDM B.2.3; 25.4.1).
pub const GUEST_IA32_PERF_GLOBAL_CTRL: VmcsField64 = VmcsField64::of(0x2808);
/// Guest PDPTE0, used with EPT and PAE paging (SDM B.2.3; 25.4.2).
pub const GUEST_PDPTE0: VmcsField64 = VmcsField64::of(0x280A);
/// Guest PDPTE1 (SDM B.2.3; 25.4.2).
pub const GUEST_PDPTE1: VmcsField64 = VmcsField64::of(0x280C);
/// Guest PDPTE2 (SDM B.2.3; 25.4.2).
pub const GUEST_PDPTE2: VmcsField64 = VmcsField64::of(0x280E);
/// Guest PDPTE3 (SDM B.2.3; 25.4.2).
pub const GUEST_PDPTE3: VmcsField64 = VmcsField64::of(0x2810);

// ---- 64-bit host-state fields (SDM B.2.4, Table B-7) ----
/// Host IA32_PAT (SDM B.2.4; 25.5).
pub const HOST_IA32_PAT: VmcsField64 = VmcsField64::of(0x2C00);
/// Host IA32_EFER (SDM B.2.4; 25.5).
pub const HOST_IA32_EFER: VmcsField64 = VmcsField64::of(0x2C02);
/// Host IA32_PERF_GLOBAL_CTRL (SDM B.2.4; 25.5).
pub const HOST_IA32_PERF_GLOBAL_CTRL: VmcsField64 = VmcsField64::of(0x2C04);

// ---- 32-bit control fields (SDM B.3.1, Table B-8) ----
/// Pin-based VM-execution controls (SDM B.3.1; 25.6.1).
pub const PIN_BASED_VM_EXEC_CONTROL: VmcsField32 = VmcsField32::of(0x4000);
/// Primary processor-based VM-execution controls (SDM B.3.1; 25.6.2).
pub const CPU_BASED_VM_EXEC_CONTROL: VmcsField32 = VmcsField32::of(0x4002);
/// Exception bitmap (SDM B.3.1; 25.6.3).
pub const EXCEPTION_BITMAP: VmcsField32 = VmcsField32::of(0x4004);
/// Page-fault error-code mask (SDM B.3.1; 25.6.3).
pub const PAGE_FAULT_ERROR_CODE_MASK: VmcsField32 = VmcsField32::of(0x4006);
/// Page-fault error-code match (SDM B.3.1; 25.6.3).
pub const PAGE_FAULT_ERROR_CODE_MATCH: VmcsField32 = VmcsField32::of(0x4008);
/// CR3-target count (SDM B.3.1; 25.6.7).
pub const CR3_TARGET_COUNT: VmcsField32 = VmcsField32::of(0x400A);
/// Primary VM-exit controls (SDM B.3.1; 25.7.1).
pub const VM_EXIT_CONTROLS: VmcsField32 = VmcsField32::of(0x400C);
/// VM-exit MSR-store count (SDM B.3.1; 25.7.2).
pub const VM_EXIT_MSR_STORE_COUNT: VmcsField32 = VmcsField32::of(0x400E);
/// VM-exit MSR-load count (SDM B.3.1; 25.7.2).
pub const VM_EXIT_MSR_LOAD_COUNT: VmcsField32 = VmcsField32::of(0x4010);
/// VM-entry controls (SDM B.3.1; 25.8.1).
pub const VM_ENTRY_CONTROLS: VmcsField32 = VmcsField32::of(0x4012);
/// VM-entry MSR-load count (SDM B.3.1; 25.8.2).
pub const VM_ENTRY_MSR_LOAD_COUNT: VmcsField32 = VmcsField32::of(0x4014);
/// VM-entry interruption-information field (SDM B.3.1; 25.8.3).
pub const VM_ENTRY_INTR_INFO: VmcsField32 = VmcsField32::of(0x4016);
/// VM-entry exception error code (SDM B.3.1; 25.8.3).
pub const VM_ENTRY_EXCEPTION_ERROR_CODE: VmcsField32 = VmcsField32::of(0x4018);
/// VM-entry instruction length (SDM B.3.1; 25.8.3).
pub const VM_ENTRY_INSTRUCTION_LEN: VmcsField32 = VmcsField32::of(0x401A);
/// TPR threshold (SDM B.3.1; 25.6.8).
pub const TPR_THRESHOLD: VmcsField32 = VmcsField32::of(0x401C);
/// Secondary processor-based VM-execution controls (SDM B.3.1; 25.6.2).
pub const SECONDARY_VM_EXEC_CONTROL: VmcsField32 = VmcsField32::of(0x401E);
/// PLE_Gap (SDM B.3.1; 25.6.13).
pub const PLE_GAP: VmcsField32 = VmcsField32::of(0x4020);
/// PLE_Window (SDM B.3.1; 25.6.13).
pub const PLE_WINDOW: VmcsField32 = VmcsField32::of(0x4022);

// ---- 32-bit read-only data fields (SDM B.3.2, Table B-9) ----
/// VM-instruction error (SDM B.3.2; 25.9.5).
pub const VM_INSTRUCTION_ERROR: ReadOnlyField32 = ReadOnlyField32::of(0x4400);
/// Exit reason (SDM B.3.2; 25.9.1).
pub const EXIT_REASON: ReadOnlyField32 = ReadOnlyField32::of(0x4402);
/// VM-exit interruption information (SDM B.3.2; 25.9.2).
pub const VM_EXIT_INTR_INFO: ReadOnlyField32 = ReadOnlyField32::of(0x4404);
/// VM-exit interruption error code (SDM B.3.2; 25.9.2).
pub const VM_EXIT_INTR_ERROR_CODE: ReadOnlyField32 = ReadOnlyField32::of(0x4406);
/// IDT-vectoring information (SDM B.3.2; 25.9.3).
pub const IDT_VECTORING_INFO: ReadOnlyField32 = ReadOnlyField32::of(0x4408);
/// IDT-vectoring error code (SDM B.3.2; 25.9.3).
pub const IDT_VECTORING_ERROR_CODE: ReadOnlyField32 = ReadOnlyField32::of(0x440A);
/// VM-exit instruction length (SDM B.3.2; 25.9.4).
pub const VM_EXIT_INSTRUCTION_LEN: ReadOnlyField32 = ReadOnlyField32::of(0x440C);
/// VM-exit instruction information (SDM B.3.2; 25.9.4).
pub const VMX_INSTRUCTION_INFO: ReadOnlyField32 = ReadOnlyField32::of(0x440E);

// ---- 32-bit guest-state fields (SDM B.3.3, Table B-10) ----
/// Guest ES limit (SDM B.3.3; 25.4.1).
pub const GUEST_ES_LIMIT: VmcsField32 = VmcsField32::of(0x4800);
/// Guest CS limit (SDM B.3.3; 25.4.1).
pub const GUEST_CS_LIMIT: VmcsField32 = VmcsField32::of(0x4802);
/// Guest SS limit (SDM B.3.3; 25.4.1).
pub const GUEST_SS_LIMIT: VmcsField32 = VmcsField32::of(0x4804);
/// Guest DS limit (SDM B.3.3; 25.4.1).
pub const GUEST_DS_LIMIT: VmcsField32 = VmcsField32::of(0x4806);
/// Guest FS limit (SDM B.3.3; 25.4.1).
pub const GUEST_FS_LIMIT: VmcsField32 = VmcsField32::of(0x4808);
/// Guest GS limit (SDM B.3.3; 25.4.1).
pub const GUEST_GS_LIMIT: VmcsField32 = VmcsField32::of(0x480A);
/// Guest LDTR limit (SDM B.3.3; 25.4.1).
pub const GUEST_LDTR_LIMIT: VmcsField32 = VmcsField32::of(0x480C);
/// Guest TR limit (SDM B.3.3; 25.4.1).
pub const GUEST_TR_LIMIT: VmcsField32 = VmcsField32::of(0x480E);
/// Guest GDTR limit (SDM B.3.3; 25.4.1).
pub const GUEST_GDTR_LIMIT: VmcsField32 = VmcsField32::of(0x4810);
/// Guest IDTR limit (SDM B.3.3; 25.4.1).
pub const GUEST_IDTR_LIMIT: VmcsField32 = VmcsField32::of(0x4812);
/// Guest ES access rights (SDM B.3.3; 25.4.1, Table 25-2).
pub const GUEST_ES_AR_BYTES: VmcsField32 = VmcsField32::of(0x4814);
/// Guest CS access rights (SDM B.3.3; 25.4.1, Table 25-2).
pub const GUEST_CS_AR_BYTES: VmcsField32 = VmcsField32::of(0x4816);
/// Guest SS access rights (SDM B.3.3; 25.4.1, Table 25-2).
pub const GUEST_SS_AR_BYTES: VmcsField32 = VmcsField32::of(0x4818);
/// Guest DS access rights (SDM B.3.3; 25.4.1, Table 25-2).
pub const GUEST_DS_AR_BYTES: VmcsField32 = VmcsField32::of(0x481A);
/// Guest FS access rights (SDM B.3.3; 25.4.1, Table 25-2).
pub const GUEST_FS_AR_BYTES: VmcsField32 = VmcsField32::of(0x481C);
/// Guest GS access rights (SDM B.3.3; 25.4.1, Table 25-2).
pub const GUEST_GS_AR_BYTES: VmcsField32 = VmcsField32::of(0x481E);
/// Guest LDTR access rights (SDM B.3.3; 25.4.1, Table 25-2).
pub const GUEST_LDTR_AR_BYTES: VmcsField32 = VmcsField32::of(0x4820);
/// Guest TR access rights (SDM B.3.3; 25.4.1, Table 25-2).
pub const GUEST_TR_AR_BYTES: VmcsField32 = VmcsField32::of(0x4822);
/// Guest interruptibility state (SDM B.3.3; 25.4.2, Table 25-3).
pub const GUEST_INTERRUPTIBILITY_INFO: VmcsField32 = VmcsField32::of(0x4824);
/// Guest activity state (SDM B.3.3; 25.4.2).
pub const GUEST_ACTIVITY_STATE: VmcsField32 = VmcsField32::of(0x4826);
/// Guest SMBASE (SDM B.3.3; 25.4.2).
pub const GUEST_SMBASE: VmcsField32 = VmcsField32::of(0x4828);
/// Guest IA32_SYSENTER_CS (SDM B.3.3; 25.4.1).
pub const GUEST_SYSENTER_CS: VmcsField32 = VmcsField32::of(0x482A);
/// VMX-preemption timer value (SDM B.3.3; 25.4.2).
pub const VMX_PREEMPTION_TIMER_VALUE: VmcsField32 = VmcsField32::of(0x482E);

// ---- 32-bit host-state field (SDM B.3.4, Table B-11) ----
/// Host IA32_SYSENTER_CS (SDM B.3.4; 25.5).
pub const HOST_IA32_SYSENTER_CS: VmcsField32 = VmcsField32::of(0x4C00);

// ---- Natural-width control fields (SDM B.4.1, Table B-12) ----
/// CR0 guest/host mask (SDM B.4.1; 25.6.6).
pub const CR0_GUEST_HOST_MASK: VmcsFieldNatural = VmcsFieldNatural::of(0x6000);
/// CR4 guest/host mask (SDM B.4.1; 25.6.6).
pub const CR4_GUEST_HOST_MASK: VmcsFieldNatural = VmcsFieldNatural::of(0x6002);
/// CR0 read shadow (SDM B.4.1; 25.6.6).
pub const CR0_READ_SHADOW: VmcsFieldNatural = VmcsFieldNatural::of(0x6004);
/// CR4 read shadow (SDM B.4.1; 25.6.6).
pub const CR4_READ_SHADOW: VmcsFieldNatural = VmcsFieldNatural::of(0x6006);
/// CR3-target value 0 (SDM B.4.1; 25.6.7).
pub const CR3_TARGET_VALUE0: VmcsFieldNatural = VmcsFieldNatural::of(0x6008);
/// CR3-target value 1 (SDM B.4.1; 25.6.7).
pub const CR3_TARGET_VALUE1: VmcsFieldNatural = VmcsFieldNatural::of(0x600A);
/// CR3-target value 2 (SDM B.4.1; 25.6.7).
pub const CR3_TARGET_VALUE2: VmcsFieldNatural = VmcsFieldNatural::of(0x600C);
/// CR3-target value 3 (SDM B.4.1; 25.6.7).
pub const CR3_TARGET_VALUE3: VmcsFieldNatural = VmcsFieldNatural::of(0x600E);

// ---- Natural-width read-only data fields (SDM B.4.2, Table B-13) ----
/// Exit qualification (SDM B.4.2; 25.9.1).
pub const EXIT_QUALIFICATION: ReadOnlyFieldNatural = ReadOnlyFieldNatural::of(0x6400);
/// I/O RCX, after an SMI during a string I/O instruction (SDM B.4.2; 25.9.1).
pub const IO_RCX: ReadOnlyFieldNatural = ReadOnlyFieldNatural::of(0x6402);
/// I/O RSI (SDM B.4.2; 25.9.1).
pub const IO_RSI: ReadOnlyFieldNatural = ReadOnlyFieldNatural::of(0x6404);
/// I/O RDI (SDM B.4.2; 25.9.1).
pub const IO_RDI: ReadOnlyFieldNatural = ReadOnlyFieldNatural::of(0x6406);
/// I/O RIP (SDM B.4.2; 25.9.1).
pub const IO_RIP: ReadOnlyFieldNatural = ReadOnlyFieldNatural::of(0x6408);
/// Guest-linear address (SDM B.4.2; 25.9.1).
pub const GUEST_LINEAR_ADDRESS: ReadOnlyFieldNatural = ReadOnlyFieldNatural::of(0x640A);

// ---- Natural-width guest-state fields (SDM B.4.3, Table B-14) ----
/// Guest CR0 (SDM B.4.3; 25.4.1).
pub const GUEST_CR0: VmcsFieldNatural = VmcsFieldNatural::of(0x6800);
/// Guest CR3 (SDM B.4.3; 25.4.1).
pub const GUEST_CR3: VmcsFieldNatural = VmcsFieldNatural::of(0x6802);
/// Guest CR4 (SDM B.4.3; 25.4.1).
pub const GUEST_CR4: VmcsFieldNatural = VmcsFieldNatural::of(0x6804);
/// Guest ES base (SDM B.4.3; 25.4.1).
pub const GUEST_ES_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x6806);
/// Guest CS base (SDM B.4.3; 25.4.1).
pub const GUEST_CS_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x6808);
/// Guest SS base (SDM B.4.3; 25.4.1).
pub const GUEST_SS_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x680A);
/// Guest DS base (SDM B.4.3; 25.4.1).
pub const GUEST_DS_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x680C);
/// Guest FS base (SDM B.4.3; 25.4.1).
pub const GUEST_FS_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x680E);
/// Guest GS base (SDM B.4.3; 25.4.1).
pub const GUEST_GS_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x6810);
/// Guest LDTR base (SDM B.4.3; 25.4.1).
pub const GUEST_LDTR_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x6812);
/// Guest TR base (SDM B.4.3; 25.4.1).
pub const GUEST_TR_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x6814);
/// Guest GDTR base (SDM B.4.3; 25.4.1).
pub const GUEST_GDTR_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x6816);
/// Guest IDTR base (SDM B.4.3; 25.4.1).
pub const GUEST_IDTR_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x6818);
/// Guest DR7 (SDM B.4.3; 25.4.1).
pub const GUEST_DR7: VmcsFieldNatural = VmcsFieldNatural::of(0x681A);
/// Guest RSP (SDM B.4.3; 25.4.1).
pub const GUEST_RSP: VmcsFieldNatural = VmcsFieldNatural::of(0x681C);
/// Guest RIP (SDM B.4.3; 25.4.1).
pub const GUEST_RIP: VmcsFieldNatural = VmcsFieldNatural::of(0x681E);
/// Guest RFLAGS (SDM B.4.3; 25.4.1).
pub const GUEST_RFLAGS: VmcsFieldNatural = VmcsFieldNatural::of(0x6820);
/// Guest pending debug exceptions (SDM B.4.3; 25.4.2).
pub const GUEST_PENDING_DBG_EXCEPTIONS: VmcsFieldNatural = VmcsFieldNatural::of(0x6822);
/// Guest IA32_SYSENTER_ESP (SDM B.4.3; 25.4.1).
pub const GUEST_SYSENTER_ESP: VmcsFieldNatural = VmcsFieldNatural::of(0x6824);
/// Guest IA32_SYSENTER_EIP (SDM B.4.3; 25.4.1).
pub const GUEST_SYSENTER_EIP: VmcsFieldNatural = VmcsFieldNatural::of(0x6826);

// ---- Natural-width host-state fields (SDM B.4.4, Table B-15) ----
/// Host CR0 (SDM B.4.4; 25.5).
pub const HOST_CR0: VmcsFieldNatural = VmcsFieldNatural::of(0x6C00);
/// Host CR3 (SDM B.4.4; 25.5).
pub const HOST_CR3: VmcsFieldNatural = VmcsFieldNatural::of(0x6C02);
/// Host CR4 (SDM B.4.4; 25.5).
pub const HOST_CR4: VmcsFieldNatural = VmcsFieldNatural::of(0x6C04);
/// Host FS base (SDM B.4.4; 25.5).
pub const HOST_FS_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x6C06);
/// Host GS base (SDM B.4.4; 25.5).
pub const HOST_GS_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x6C08);
/// Host TR base (SDM B.4.4; 25.5).
pub const HOST_TR_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x6C0A);
/// Host GDTR base (SDM B.4.4; 25.5).
pub const HOST_GDTR_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x6C0C);
/// Host IDTR base (SDM B.4.4; 25.5).
pub const HOST_IDTR_BASE: VmcsFieldNatural = VmcsFieldNatural::of(0x6C0E);
/// Host IA32_SYSENTER_ESP (SDM B.4.4; 25.5).
pub const HOST_IA32_SYSENTER_ESP: VmcsFieldNatural = VmcsFieldNatural::of(0x6C10);
/// Host IA32_SYSENTER_EIP (SDM B.4.4; 25.5).
pub const HOST_IA32_SYSENTER_EIP: VmcsFieldNatural = VmcsFieldNatural::of(0x6C12);
/// Host RSP (SDM B.4.4; 25.5).
pub const HOST_RSP: VmcsFieldNatural = VmcsFieldNatural::of(0x6C14);
/// Host RIP (SDM B.4.4; 25.5).
pub const HOST_RIP: VmcsFieldNatural = VmcsFieldNatural::of(0x6C16);

/// Value of [`VMCS_LINK_POINTER`] when VMCS shadowing is not used (SDM 27.3.1.5:
/// "the VMCS link pointer must be FFFFFFFF_FFFFFFFFH" to skip its checks).
pub const VMCS_LINK_POINTER_NONE: u64 = u64::MAX;

/// The guest activity state (SDM 25.4.2, "Activity state").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityState {
    /// 0: Active, executing instructions normally.
    Active,
    /// 1: HLT, inactive after executing HLT.
    Hlt,
    /// 2: Shutdown, inactive after a triple fault.
    Shutdown,
    /// 3: Wait-for-SIPI, inactive waiting for a startup IPI.
    WaitForSipi,
}

impl ActivityState {
    /// Decodes the activity-state field; `None` for undefined values.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Active),
            1 => Some(Self::Hlt),
            2 => Some(Self::Shutdown),
            3 => Some(Self::WaitForSipi),
            _ => None,
        }
    }

    /// The value written to [`GUEST_ACTIVITY_STATE`].
    pub const fn raw(self) -> u32 {
        self as u32
    }
}

bitflags! {
    /// The guest interruptibility-state field (SDM 25.4.2, Table 25-3).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Interruptibility: u32 {
        /// Bit 0: blocking by STI (SDM Table 25-3).
        const BLOCKING_BY_STI = 1 << 0;
        /// Bit 1: blocking by MOV SS or POP SS (SDM Table 25-3).
        const BLOCKING_BY_MOV_SS = 1 << 1;
        /// Bit 2: blocking by SMI (SDM Table 25-3).
        const BLOCKING_BY_SMI = 1 << 2;
        /// Bit 3: blocking by NMI (SDM Table 25-3).
        const BLOCKING_BY_NMI = 1 << 3;
        /// Bit 4: enclave interruption (SDM Table 25-3).
        const ENCLAVE_INTERRUPTION = 1 << 4;
    }
}

/// Access to a VMCS: the raw VMREAD/VMWRITE pair plus typed helpers.
///
/// Policy code takes `&mut impl VmcsAccess`, so it runs against
/// [`ActiveVmcs`] on hardware and [`FakeVmcs`] in host tests. Writing a field
/// is safe: the obligation that host-state and address fields are valid sits
/// with the kernel's (unsafe) VM entry.
pub trait VmcsAccess {
    /// Reads the field with this encoding (VMREAD).
    fn read(&self, encoding: u32) -> Result<u64, VmFail>;

    /// Writes the field with this encoding (VMWRITE).
    fn write(&mut self, encoding: u32, value: u64) -> Result<(), VmFail>;

    /// Reads a typed field.
    fn get<F: Field>(&self, field: F) -> Result<F::Value, VmFail> {
        self.read(field.encoding()).map(F::from_raw)
    }

    /// Writes a typed, writable field.
    fn set<F: WritableField>(&mut self, field: F, value: F::Value) -> Result<(), VmFail> {
        self.write(field.encoding(), F::to_raw(value))
    }

    /// Reads a field that cannot fail: one every VMX processor has (or one
    /// of a feature the caller's set-up requires), of the VMCS that this
    /// handle proves current. VMREAD fails only without a current VMCS or
    /// for an unsupported field (SDM 31.3, VMREAD), so the exit path reads
    /// such fields without a `Result` to check. A failure here is a bug in
    /// the caller: implementations that can tell (debug builds, [`FakeVmcs`]
    /// for a field never written) panic.
    fn read_known(&self, encoding: u32) -> u64 {
        match self.read(encoding) {
            Ok(v) => v,
            Err(e) => panic!("VMREAD of field {encoding:#x} failed: {e}"),
        }
    }

    /// Writes a field that cannot fail, as for [`Self::read_known`]:
    /// VMWRITE fails only without a current VMCS, for an unsupported field
    /// or for a read-only one, which the typed [`Self::set_known`] excludes.
    fn write_known(&mut self, encoding: u32, value: u64) {
        if let Err(e) = self.write(encoding, value) {
            panic!("VMWRITE of field {encoding:#x} failed: {e}");
        }
    }

    /// Reads a typed field that cannot fail ([`Self::read_known`]).
    fn get_known<F: Field>(&self, field: F) -> F::Value {
        F::from_raw(self.read_known(field.encoding()))
    }

    /// Writes a typed, writable field that cannot fail ([`Self::write_known`]).
    fn set_known<F: WritableField>(&mut self, field: F, value: F::Value) {
        self.write_known(field.encoding(), F::to_raw(value))
    }

    /// Reads a field, applies `f` and writes the result back; returns the new value.
    fn update<F: WritableField>(
        &mut self,
        field: F,
        f: impl FnOnce(F::Value) -> F::Value,
    ) -> Result<F::Value, VmFail> {
        let new = f(self.get(field)?);
        self.set(field, new)?;
        Ok(new)
    }
}

impl<V: VmcsAccess + ?Sized> VmcsAccess for &mut V {
    fn read(&self, encoding: u32) -> Result<u64, VmFail> {
        (**self).read(encoding)
    }
    fn write(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        (**self).write(encoding, value)
    }
    fn read_known(&self, encoding: u32) -> u64 {
        (**self).read_known(encoding)
    }
    fn write_known(&mut self, encoding: u32, value: u64) {
        (**self).write_known(encoding, value)
    }
}

/// The current VMCS of this CPU, accessed with VMREAD/VMWRITE.
///
/// Holding one is the proof that the CPU is in VMX root operation with a
/// current VMCS; it is neither `Send` nor `Sync` because "current" is a
/// per-CPU notion.
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
pub struct ActiveVmcs {
    _per_cpu: core::marker::PhantomData<*mut ()>,
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // Constructing the proof of VMX operation; see the crate docs.
impl ActiveVmcs {
    /// Makes the VMCS at `region` current (VMPTRLD) and returns access to it.
    ///
    /// # Safety
    ///
    /// As for [`crate::instructions::vmptrld`], and additionally: the CPU stays
    /// in VMX root operation while the returned value (or any copy of its
    /// access) is in use.
    pub unsafe fn load(region: &crate::addr::HostPhysAddr) -> Result<Self, VmFail> {
        // SAFETY: the caller upholds vmptrld's contract.
        unsafe { crate::instructions::vmptrld(region) }?;
        Ok(Self {
            _per_cpu: core::marker::PhantomData,
        })
    }

    /// Access to the VMCS that is already current on this CPU.
    ///
    /// # Safety
    ///
    /// The CPU is in VMX root operation, and stays so while the returned value
    /// is in use. (Without a current VMCS, accesses fail with VMfailInvalid.)
    pub unsafe fn assume_current() -> Self {
        Self {
            _per_cpu: core::marker::PhantomData,
        }
    }

    /// The VM-instruction error of the last failed VMX instruction.
    pub fn instruction_error(&self) -> Result<InstructionError, VmFail> {
        self.get(VM_INSTRUCTION_ERROR)
            .map(InstructionError::from_raw)
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // VMREAD/VMWRITE behind the type's invariant.
impl VmcsAccess for ActiveVmcs {
    fn read(&self, encoding: u32) -> Result<u64, VmFail> {
        // SAFETY: an ActiveVmcs exists only while the CPU is in VMX root
        // operation (the contract of its constructors).
        unsafe { crate::instructions::vmread(encoding) }
    }

    fn write(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        // SAFETY: as for `read`.
        unsafe { crate::instructions::vmwrite(encoding, value) }
    }

    #[inline]
    fn read_known(&self, encoding: u32) -> u64 {
        // SAFETY: as for `read`.
        unsafe { crate::instructions::vmread_unchecked(encoding) }
    }

    #[inline]
    fn write_known(&mut self, encoding: u32, value: u64) {
        // SAFETY: as for `read`.
        unsafe { crate::instructions::vmwrite_unchecked(encoding, value) }
    }
}

/// How many distinct fields a [`FakeVmcs`] holds.
pub const FAKE_VMCS_CAPACITY: usize = 256;

/// An in-memory VMCS for host tests, with the hardware's access rules:
///
/// - malformed encodings (reserved bits, high access to a non-64-bit field)
///   fail with VMfailValid(12, unsupported component);
/// - writing a VM-exit information field fails with VMfailValid(13) (use
///   [`FakeVmcs::preset`] to stage an exit);
/// - values are truncated to the field width;
/// - reading a field that was never written fails with VMfailValid(12), so a
///   test notices a handler reading state the test did not set up.
///
/// A full store (more than [`FAKE_VMCS_CAPACITY`] fields) fails writes with
/// VMfailInvalid.
#[derive(Debug, Clone)]
pub struct FakeVmcs {
    entries: [(u32, u64); FAKE_VMCS_CAPACITY],
    len: usize,
}

impl Default for FakeVmcs {
    fn default() -> Self {
        Self::new()
    }
}

const UNSUPPORTED: VmFail = VmFail::Valid(InstructionError::UnsupportedVmcsComponent);

impl FakeVmcs {
    /// An empty VMCS: no field written.
    pub const fn new() -> Self {
        Self {
            entries: [(0, 0); FAKE_VMCS_CAPACITY],
            len: 0,
        }
    }

    /// Sets any field, read-only ones included: how a test stages a VM exit
    /// (exit reason, qualification, ...).
    pub fn preset<F: Field>(&mut self, field: F, value: F::Value) -> Result<(), VmFail> {
        self.store(field.encoding(), F::to_raw(value))
    }

    /// Sets any field by its raw encoding (see [`FakeVmcs::preset`]).
    pub fn preset_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        self.store(encoding, value)
    }

    /// Whether the field with this encoding has been written.
    pub fn contains(&self, encoding: u32) -> bool {
        self.position(encoding & !1).is_some()
    }

    /// How many fields have been written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no field has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The written fields as `(encoding, value)`, in first-write order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.entries[..self.len].iter().copied()
    }

    fn position(&self, key: u32) -> Option<usize> {
        self.entries[..self.len].iter().position(|(e, _)| *e == key)
    }

    /// Checks the encoding; returns the key (full-access encoding) under which
    /// the field is stored.
    fn key(encoding: u32) -> Result<u32, VmFail> {
        if encoding & ENCODING_RESERVED_BITS != 0 {
            return Err(UNSUPPORTED);
        }
        if is_high_access(encoding) && field_width(encoding) != FieldWidth::Bits64 {
            return Err(UNSUPPORTED);
        }
        Ok(encoding & !1)
    }

    fn store(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        let key = Self::key(encoding)?;
        let mask = match field_width(encoding) {
            FieldWidth::Bits16 => 0xFFFF,
            FieldWidth::Bits32 => 0xFFFF_FFFF,
            FieldWidth::Bits64 | FieldWidth::Natural => u64::MAX,
        };
        let slot = match self.position(key) {
            Some(i) => i,
            None => {
                if self.len == FAKE_VMCS_CAPACITY {
                    return Err(VmFail::Invalid);
                }
                self.entries[self.len] = (key, 0);
                self.len += 1;
                self.len - 1
            }
        };
        let old = self.entries[slot].1;
        self.entries[slot].1 = if is_high_access(encoding) {
            (old & 0xFFFF_FFFF) | (value << 32)
        } else {
            value & mask
        };
        Ok(())
    }
}

impl VmcsAccess for FakeVmcs {
    fn read(&self, encoding: u32) -> Result<u64, VmFail> {
        let key = Self::key(encoding)?;
        let value = self
            .position(key)
            .map(|i| self.entries[i].1)
            .ok_or(UNSUPPORTED)?;
        Ok(if is_high_access(encoding) {
            value >> 32
        } else {
            value
        })
    }

    fn write(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        if field_type(encoding) == FieldType::ExitInformation {
            Self::key(encoding)?;
            return Err(VmFail::Valid(InstructionError::VmwriteReadOnlyComponent));
        }
        self.store(encoding, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_sdm() {
        assert_eq!(GUEST_RIP.encoding(), 0x681E);
        assert_eq!(HOST_RIP.encoding(), 0x6C16);
        assert_eq!(EPT_POINTER.encoding(), 0x201A);
        assert_eq!(VM_INSTRUCTION_ERROR.encoding(), 0x4400);
        assert_eq!(EXIT_REASON.encoding(), 0x4402);
        assert_eq!(EXIT_QUALIFICATION.encoding(), 0x6400);
        assert_eq!(GUEST_PHYSICAL_ADDRESS.encoding(), 0x2400);
        assert_eq!(VIRTUAL_PROCESSOR_ID.encoding(), 0x0000);
        assert_eq!(PIN_BASED_VM_EXEC_CONTROL.encoding(), 0x4000);
        assert_eq!(VMX_PREEMPTION_TIMER_VALUE.encoding(), 0x482E);
        assert_eq!(GUEST_CS_AR_BYTES.encoding(), 0x4816);
        assert_eq!(SECONDARY_VM_EXEC_CONTROL.encoding(), 0x401E);
        assert_eq!(VMCS_LINK_POINTER.encoding(), 0x2800);
        assert_eq!(HOST_IA32_EFER.encoding(), 0x2C02);
        assert_eq!(GUEST_INTERRUPTIBILITY_INFO.encoding(), 0x4824);
        assert_eq!(GUEST_LINEAR_ADDRESS.encoding(), 0x640A);
    }

    #[test]
    fn width_type_and_access_bits_match_types() {
        let w16 = [VIRTUAL_PROCESSOR_ID, GUEST_CS_SELECTOR, HOST_TR_SELECTOR];
        for f in w16 {
            assert_eq!(field_width(f.encoding()), FieldWidth::Bits16);
            assert_ne!(field_type(f.encoding()), FieldType::ExitInformation);
        }
        for f in [
            PIN_BASED_VM_EXEC_CONTROL,
            GUEST_CS_AR_BYTES,
            HOST_IA32_SYSENTER_CS,
        ] {
            assert_eq!(field_width(f.encoding()), FieldWidth::Bits32);
            assert_ne!(field_type(f.encoding()), FieldType::ExitInformation);
        }
        for f in [EPT_POINTER, GUEST_IA32_EFER, HOST_IA32_PAT] {
            assert_eq!(field_width(f.encoding()), FieldWidth::Bits64);
            assert!(!is_high_access(f.encoding()));
        }
        for f in [GUEST_RIP, HOST_RIP, CR0_GUEST_HOST_MASK] {
            assert_eq!(field_width(f.encoding()), FieldWidth::Natural);
        }
        for f in [VM_INSTRUCTION_ERROR, EXIT_REASON, VMX_INSTRUCTION_INFO] {
            assert_eq!(field_width(f.encoding()), FieldWidth::Bits32);
            assert_eq!(field_type(f.encoding()), FieldType::ExitInformation);
        }
        assert_eq!(
            field_type(GUEST_PHYSICAL_ADDRESS.encoding()),
            FieldType::ExitInformation
        );
        assert_eq!(
            field_width(GUEST_PHYSICAL_ADDRESS.encoding()),
            FieldWidth::Bits64
        );
        assert_eq!(
            field_type(EXIT_QUALIFICATION.encoding()),
            FieldType::ExitInformation
        );
        assert_eq!(
            field_width(EXIT_QUALIFICATION.encoding()),
            FieldWidth::Natural
        );
        assert_eq!(
            field_type(PIN_BASED_VM_EXEC_CONTROL.encoding()),
            FieldType::Control
        );
        assert_eq!(field_type(GUEST_RIP.encoding()), FieldType::GuestState);
        assert_eq!(field_type(HOST_RIP.encoding()), FieldType::HostState);
    }

    #[test]
    fn from_encoding_checks_kind() {
        assert_eq!(VmcsFieldNatural::from_encoding(0x681E), Some(GUEST_RIP));
        assert_eq!(VmcsField32::from_encoding(0x681E), None);
        assert_eq!(VmcsField32::from_encoding(0x4402), None);
        assert_eq!(ReadOnlyField32::from_encoding(0x4402), Some(EXIT_REASON));
        assert_eq!(VmcsField64::from_encoding(0x201B), None, "high access");
        assert_eq!(VmcsField16::from_encoding(0x1000), None, "bit 12 reserved");
    }

    #[test]
    fn fake_vmcs_typed_round_trip() {
        let mut v = FakeVmcs::new();
        v.set(GUEST_RIP, 0x7c00).unwrap();
        v.set(GUEST_CS_SELECTOR, 0x10).unwrap();
        v.set(EPT_POINTER, 0x1234_5000_005e).unwrap();
        assert_eq!(v.get(GUEST_RIP), Ok(0x7c00));
        assert_eq!(v.get(GUEST_CS_SELECTOR), Ok(0x10));
        assert_eq!(v.update(GUEST_RIP, |rip| rip + 2), Ok(0x7c02));
        assert_eq!(v.get(GUEST_RIP), Ok(0x7c02));
        // High access to a 64-bit field reads and writes the upper half.
        assert_eq!(v.read(EPT_POINTER.encoding() | 1), Ok(0x1234));
        v.write(EPT_POINTER.encoding() | 1, 0xabcd).unwrap();
        assert_eq!(v.get(EPT_POINTER), Ok(0xabcd_5000_005e));
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn fake_vmcs_enforces_hardware_rules() {
        let mut v = FakeVmcs::new();
        assert_eq!(v.get(GUEST_RSP), Err(UNSUPPORTED), "unwritten field");
        assert_eq!(
            v.write(EXIT_REASON.encoding(), 1),
            Err(VmFail::Valid(InstructionError::VmwriteReadOnlyComponent))
        );
        assert_eq!(v.write(0x1_0000, 1), Err(UNSUPPORTED));
        assert_eq!(v.read(GUEST_RIP.encoding() | 1), Err(UNSUPPORTED));
        v.write(GUEST_ES_SELECTOR.encoding(), 0x1_0008).unwrap();
        assert_eq!(v.get(GUEST_ES_SELECTOR), Ok(0x0008), "truncated to 16 bits");
        v.preset(EXIT_REASON, 30).unwrap();
        assert_eq!(v.get(EXIT_REASON), Ok(30));
    }

    #[test]
    fn fake_vmcs_capacity() {
        let mut v = FakeVmcs::new();
        for i in 0..FAKE_VMCS_CAPACITY as u32 {
            // Distinct natural-width guest encodings (index in bits 9:1).
            let enc = 0x6800 | ((i & 0x1FF) << 1);
            v.write(enc, u64::from(i)).unwrap();
        }
        assert_eq!(v.write(0x4800, 1), Err(VmFail::Invalid));
        assert_eq!(v.read(0x6800 | (5 << 1)), Ok(5));
    }

    #[test]
    fn activity_state_and_interruptibility() {
        assert_eq!(ActivityState::from_raw(1), Some(ActivityState::Hlt));
        assert_eq!(ActivityState::from_raw(4), None);
        assert_eq!(ActivityState::WaitForSipi.raw(), 3);
        assert_eq!(
            Interruptibility::from_bits_truncate(0b1001),
            Interruptibility::BLOCKING_BY_STI | Interruptibility::BLOCKING_BY_NMI
        );
    }
}
