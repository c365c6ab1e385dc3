//! VM-exit information, decoded (SDM Vol. 3C, 25.9, 28.2, Appendix C).
//!
//! Pure decoders from raw field values to enums and structs. Every decoder is
//! total: values the SDM leaves undefined become `Unknown`/`None`, never a
//! panic. [`ExitInfo::read`] snapshots the exit-information fields from any
//! [`VmcsAccess`], so exit handling can be fed a [`crate::vmcs::FakeVmcs`].

use core::fmt;

use bitflags::bitflags;

use crate::addr::GuestPhysAddr;
use crate::instructions::VmFail;
use crate::vmcs::{self, VmcsAccess};

macro_rules! exit_reasons {
    ($($name:ident = $num:literal, $text:literal;)*) => {
        /// A basic exit reason (SDM Appendix C, Table C-1).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ExitReason {
            $(
                #[doc = concat!($num, ": ", $text, " (SDM Table C-1).")]
                $name,
            )*
            /// A basic exit reason this crate does not know.
            Unknown(u16),
        }

        impl ExitReason {
            /// Decodes a basic exit reason (exit-reason bits 15:0).
            #[inline(always)]
            pub const fn from_basic(basic: u16) -> Self {
                match basic {
                    $($num => Self::$name,)*
                    other => Self::Unknown(other),
                }
            }

            /// The basic exit-reason number.
            pub const fn number(self) -> u16 {
                match self {
                    $(Self::$name => $num,)*
                    Self::Unknown(n) => n,
                }
            }

            /// The SDM's name for the exit reason (Table C-1).
            pub const fn describe(self) -> &'static str {
                match self {
                    $(Self::$name => $text,)*
                    Self::Unknown(_) => "unknown exit reason",
                }
            }
        }
    };
}

exit_reasons! {
    ExceptionOrNmi = 0, "exception or non-maskable interrupt (NMI)";
    ExternalInterrupt = 1, "external interrupt";
    TripleFault = 2, "triple fault";
    InitSignal = 3, "INIT signal";
    Sipi = 4, "start-up IPI (SIPI)";
    IoSmi = 5, "I/O system-management interrupt (SMI)";
    OtherSmi = 6, "other SMI";
    InterruptWindow = 7, "interrupt window";
    NmiWindow = 8, "NMI window";
    TaskSwitch = 9, "task switch";
    Cpuid = 10, "CPUID";
    Getsec = 11, "GETSEC";
    Hlt = 12, "HLT";
    Invd = 13, "INVD";
    Invlpg = 14, "INVLPG";
    Rdpmc = 15, "RDPMC";
    Rdtsc = 16, "RDTSC";
    Rsm = 17, "RSM";
    Vmcall = 18, "VMCALL";
    Vmclear = 19, "VMCLEAR";
    Vmlaunch = 20, "VMLAUNCH";
    Vmptrld = 21, "VMPTRLD";
    Vmptrst = 22, "VMPTRST";
    Vmread = 23, "VMREAD";
    Vmresume = 24, "VMRESUME";
    Vmwrite = 25, "VMWRITE";
    Vmxoff = 26, "VMXOFF";
    Vmxon = 27, "VMXON";
    CrAccess = 28, "control-register access";
    MovDr = 29, "MOV DR";
    IoInstruction = 30, "I/O instruction";
    Rdmsr = 31, "RDMSR";
    Wrmsr = 32, "WRMSR";
    EntryFailInvalidGuestState = 33, "VM-entry failure due to invalid guest state";
    EntryFailMsrLoading = 34, "VM-entry failure due to MSR loading";
    MwaitInstruction = 36, "MWAIT";
    MonitorTrapFlag = 37, "monitor trap flag";
    Monitor = 39, "MONITOR";
    Pause = 40, "PAUSE";
    EntryFailMachineCheck = 41, "VM-entry failure due to machine-check event";
    TprBelowThreshold = 43, "TPR below threshold";
    ApicAccess = 44, "APIC access";
    VirtualizedEoi = 45, "virtualized EOI";
    GdtrIdtrAccess = 46, "access to GDTR or IDTR";
    LdtrTrAccess = 47, "access to LDTR or TR";
    EptViolation = 48, "EPT violation";
    EptMisconfig = 49, "EPT misconfiguration";
    Invept = 50, "INVEPT";
    Rdtscp = 51, "RDTSCP";
    PreemptionTimer = 52, "VMX-preemption timer expired";
    Invvpid = 53, "INVVPID";
    Wbinvd = 54, "WBINVD or WBNOINVD";
    Xsetbv = 55, "XSETBV";
    ApicWrite = 56, "APIC write";
    Rdrand = 57, "RDRAND";
    Invpcid = 58, "INVPCID";
    Vmfunc = 59, "VMFUNC";
    Encls = 60, "ENCLS";
    Rdseed = 61, "RDSEED";
    PmlFull = 62, "page-modification log full";
    Xsaves = 63, "XSAVES";
    Xrstors = 64, "XRSTORS";
    Pconfig = 65, "PCONFIG";
    SppEvent = 66, "SPP-related event";
    Umwait = 67, "UMWAIT";
    Tpause = 68, "TPAUSE";
    Loadiwkey = 69, "LOADIWKEY";
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.describe(), self.number())
    }
}

/// The exit-reason field (SDM 25.9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawExitReason(pub u32);

impl RawExitReason {
    /// Bits 15:0: the basic exit reason.
    pub const fn basic(self) -> u16 {
        self.0 as u16
    }

    /// The basic exit reason, decoded.
    #[inline(always)]
    pub const fn reason(self) -> ExitReason {
        ExitReason::from_basic(self.basic())
    }

    /// Bit 27: the exit was incident to enclave mode.
    pub const fn from_enclave(self) -> bool {
        self.0 & (1 << 27) != 0
    }

    /// Bit 28: a monitor-trap-flag VM exit was pending.
    pub const fn pending_mtf(self) -> bool {
        self.0 & (1 << 28) != 0
    }

    /// Bit 29: the exit came from VMX root operation (SMM monitor only).
    pub const fn from_vmx_root(self) -> bool {
        self.0 & (1 << 29) != 0
    }

    /// Bit 31: VM-entry failure (the guest never ran; SDM 27.8).
    pub const fn is_entry_failure(self) -> bool {
        self.0 & (1 << 31) != 0
    }
}

/// Exit qualification of a VM-entry failure (SDM 27.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryFailure {
    /// Reason 33, qualification 0 (or 1): invalid guest state, no detail.
    InvalidGuestState,
    /// Reason 33, qualification 2: failure loading the PDPTEs.
    PdpteLoading,
    /// Reason 33, qualification 3: NMI injection while blocked by STI.
    NmiInjectionBlocked,
    /// Reason 33, qualification 4: invalid VMCS link pointer.
    InvalidVmcsLinkPointer,
    /// Reason 34: loading this entry (1-based) of the VM-entry MSR-load area failed.
    MsrLoading {
        /// The 1-based index of the failing MSR-load entry.
        entry: u64,
    },
    /// Reason 41: a machine-check event during VM entry.
    MachineCheck,
    /// A qualification or reason the SDM does not define for entry failures.
    Unknown {
        /// The basic exit reason.
        reason: u16,
        /// The exit qualification.
        qualification: u64,
    },
}

impl EntryFailure {
    /// Decodes a VM-entry failure from its basic reason and qualification.
    pub const fn decode(reason: ExitReason, qualification: u64) -> Self {
        match (reason, qualification) {
            (ExitReason::EntryFailInvalidGuestState, 0 | 1) => Self::InvalidGuestState,
            (ExitReason::EntryFailInvalidGuestState, 2) => Self::PdpteLoading,
            (ExitReason::EntryFailInvalidGuestState, 3) => Self::NmiInjectionBlocked,
            (ExitReason::EntryFailInvalidGuestState, 4) => Self::InvalidVmcsLinkPointer,
            (ExitReason::EntryFailMsrLoading, entry) => Self::MsrLoading { entry },
            (ExitReason::EntryFailMachineCheck, _) => Self::MachineCheck,
            (reason, qualification) => Self::Unknown {
                reason: reason.number(),
                qualification,
            },
        }
    }

    /// A readable description (SDM 27.8).
    pub const fn describe(&self) -> &'static str {
        match self {
            Self::InvalidGuestState => "invalid guest state",
            Self::PdpteLoading => "invalid guest state: PDPTE loading failed",
            Self::NmiInjectionBlocked => "invalid guest state: NMI injection blocked by STI",
            Self::InvalidVmcsLinkPointer => "invalid guest state: invalid VMCS link pointer",
            Self::MsrLoading { .. } => "VM-entry MSR loading failed",
            Self::MachineCheck => "machine-check event during VM entry",
            Self::Unknown { .. } => "unknown VM-entry failure",
        }
    }
}

impl fmt::Display for EntryFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MsrLoading { entry } => write!(f, "{} (entry {entry})", self.describe()),
            Self::Unknown {
                reason,
                qualification,
            } => {
                write!(
                    f,
                    "{} (reason {reason}, qualification {qualification:#x})",
                    self.describe()
                )
            }
            _ => f.write_str(self.describe()),
        }
    }
}

/// A general-purpose register as numbered in exit qualifications and
/// instruction information (SDM Tables 28-3, 28-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gpr {
    /// 0: RAX.
    Rax,
    /// 1: RCX.
    Rcx,
    /// 2: RDX.
    Rdx,
    /// 3: RBX.
    Rbx,
    /// 4: RSP (lives in the VMCS guest-state area).
    Rsp,
    /// 5: RBP.
    Rbp,
    /// 6: RSI.
    Rsi,
    /// 7: RDI.
    Rdi,
    /// 8: R8.
    R8,
    /// 9: R9.
    R9,
    /// 10: R10.
    R10,
    /// 11: R11.
    R11,
    /// 12: R12.
    R12,
    /// 13: R13.
    R13,
    /// 14: R14.
    R14,
    /// 15: R15.
    R15,
}

impl Gpr {
    const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];

    /// The register with this 4-bit number (higher bits ignored).
    pub const fn from_index(index: u8) -> Self {
        Self::ALL[(index & 0xF) as usize]
    }

    /// The register's number, 0..=15.
    pub const fn index(self) -> u8 {
        self as u8
    }
}

/// Size of an I/O access (SDM Table 28-5, bits 2:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoSize {
    /// 0: 1 byte.
    Byte,
    /// 1: 2 bytes.
    Word,
    /// 3: 4 bytes.
    Dword,
}

impl IoSize {
    /// The access size in bytes.
    pub const fn bytes(self) -> u8 {
        match self {
            IoSize::Byte => 1,
            IoSize::Word => 2,
            IoSize::Dword => 4,
        }
    }
}

/// Direction of an I/O access (SDM Table 28-5, bit 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDirection {
    /// 0: OUT, guest to device.
    Out,
    /// 1: IN, device to guest.
    In,
}

/// Exit qualification for I/O instructions (SDM 28.2.1, Table 28-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoQualification {
    /// Bits 2:0: size of access.
    pub size: IoSize,
    /// Bit 3: direction.
    pub direction: IoDirection,
    /// Bit 4: string instruction (INS/OUTS).
    pub string: bool,
    /// Bit 5: REP prefixed.
    pub rep: bool,
    /// Bit 6: operand encoding, `true` for an immediate port, `false` for DX.
    pub immediate: bool,
    /// Bits 31:16: port number.
    pub port: u16,
}

impl IoQualification {
    /// Decodes the qualification; `None` for an undefined size encoding.
    pub const fn from_raw(raw: u64) -> Option<Self> {
        let size = match raw & 0b111 {
            0 => IoSize::Byte,
            1 => IoSize::Word,
            3 => IoSize::Dword,
            _ => return None,
        };
        Some(IoQualification {
            size,
            direction: if raw & (1 << 3) != 0 {
                IoDirection::In
            } else {
                IoDirection::Out
            },
            string: raw & (1 << 4) != 0,
            rep: raw & (1 << 5) != 0,
            immediate: raw & (1 << 6) != 0,
            port: (raw >> 16) as u16,
        })
    }
}

/// Exit qualification for control-register accesses (SDM 28.2.1, Table 28-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrAccessQualification {
    /// Access type 0: MOV to CR`cr` from `gpr`.
    MovToCr {
        /// Bits 3:0: the control register (0, 3, 4 or 8).
        cr: u8,
        /// Bits 11:8: the source register.
        gpr: Gpr,
    },
    /// Access type 1: MOV from CR`cr` to `gpr`.
    MovFromCr {
        /// Bits 3:0: the control register (3 or 8).
        cr: u8,
        /// Bits 11:8: the destination register.
        gpr: Gpr,
    },
    /// Access type 2: CLTS.
    Clts,
    /// Access type 3: LMSW.
    Lmsw {
        /// Bits 31:16: the LMSW source data.
        source: u16,
        /// Bit 6: the operand was in memory (else a register).
        memory_operand: bool,
    },
}

impl CrAccessQualification {
    /// Decodes the qualification (every value is defined).
    pub const fn from_raw(raw: u64) -> Self {
        let cr = (raw & 0xF) as u8;
        let gpr = Gpr::from_index((raw >> 8) as u8);
        match (raw >> 4) & 0b11 {
            0 => Self::MovToCr { cr, gpr },
            1 => Self::MovFromCr { cr, gpr },
            2 => Self::Clts,
            _ => Self::Lmsw {
                source: (raw >> 16) as u16,
                memory_operand: raw & (1 << 6) != 0,
            },
        }
    }
}

bitflags! {
    /// Exit qualification for EPT violations (SDM 28.2.1, Table 28-7).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EptViolationQualification: u64 {
        /// Bit 0: the access was a data read (SDM Table 28-7).
        const READ = 1 << 0;
        /// Bit 1: the access was a data write (SDM Table 28-7).
        const WRITE = 1 << 1;
        /// Bit 2: the access was an instruction fetch (SDM Table 28-7).
        const FETCH = 1 << 2;
        /// Bit 3: the guest-physical address was readable (SDM Table 28-7).
        const READABLE = 1 << 3;
        /// Bit 4: the guest-physical address was writable (SDM Table 28-7).
        const WRITABLE = 1 << 4;
        /// Bit 5: the guest-physical address was executable (SDM Table 28-7).
        const EXECUTABLE = 1 << 5;
        /// Bit 6: executable for user-mode linear addresses, with mode-based control (SDM Table 28-7).
        const USER_EXECUTABLE = 1 << 6;
        /// Bit 7: the guest-linear-address field is valid (SDM Table 28-7).
        const LINEAR_ADDRESS_VALID = 1 << 7;
        /// Bit 8: with bit 7, the access was to the translation of the linear
        /// address (else to a paging-structure entry) (SDM Table 28-7).
        const TRANSLATED_ACCESS = 1 << 8;
        /// Bit 12: NMI unblocking due to IRET (SDM Table 28-7).
        const NMI_UNBLOCKING = 1 << 12;
        /// Bit 16: the access was asynchronous to instruction execution (SDM Table 28-7).
        const ASYNCHRONOUS = 1 << 16;
    }
}

/// What kind of access an EPT violation with a valid linear address was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearAccess {
    /// Bit 7 clear: no guest-linear address (e.g. a guest paging-structure
    /// access not tied to one, or a non-paging access).
    NotValid,
    /// Bits 7 and 8 set: an access to the translation of a linear address.
    Translated,
    /// Bit 7 set, bit 8 clear: an access to a guest paging-structure entry.
    PagingStructure,
}

impl EptViolationQualification {
    /// Decodes the qualification (undefined bits are dropped).
    pub const fn from_raw(raw: u64) -> Self {
        Self::from_bits_truncate(raw)
    }

    /// Bits 7 and 8 together.
    pub const fn linear_access(self) -> LinearAccess {
        if !self.contains(Self::LINEAR_ADDRESS_VALID) {
            LinearAccess::NotValid
        } else if self.contains(Self::TRANSLATED_ACCESS) {
            LinearAccess::Translated
        } else {
            LinearAccess::PagingStructure
        }
    }
}

/// Type of an event in interruption information (SDM 25.9.2, 25.8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptionType {
    /// 0: external interrupt.
    ExternalInterrupt,
    /// 1: reserved.
    Reserved,
    /// 2: non-maskable interrupt.
    Nmi,
    /// 3: hardware exception (faults, aborts, #DB/#BP from hardware).
    HardwareException,
    /// 4: software interrupt (INT n).
    SoftwareInterrupt,
    /// 5: privileged software exception (INT1).
    PrivilegedSoftwareException,
    /// 6: software exception (INT3, INTO).
    SoftwareException,
    /// 7: other event (e.g. pending MTF on injection).
    Other,
}

impl InterruptionType {
    /// Decodes bits 10:8.
    pub const fn from_raw(raw: u8) -> Self {
        match raw & 0b111 {
            0 => Self::ExternalInterrupt,
            1 => Self::Reserved,
            2 => Self::Nmi,
            3 => Self::HardwareException,
            4 => Self::SoftwareInterrupt,
            5 => Self::PrivilegedSoftwareException,
            6 => Self::SoftwareException,
            _ => Self::Other,
        }
    }

    /// The 3-bit encoding.
    pub const fn raw(self) -> u8 {
        self as u8
    }
}

/// An exception vector (SDM Vol. 3A, 6.3.1, Table 6-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Exception {
    /// 0: #DE divide error.
    DivideError = 0,
    /// 1: #DB debug.
    Debug = 1,
    /// 3: #BP breakpoint.
    Breakpoint = 3,
    /// 4: #OF overflow.
    Overflow = 4,
    /// 5: #BR bound range exceeded.
    BoundRange = 5,
    /// 6: #UD invalid opcode.
    InvalidOpcode = 6,
    /// 7: #NM device not available.
    DeviceNotAvailable = 7,
    /// 8: #DF double fault (error code 0).
    DoubleFault = 8,
    /// 10: #TS invalid TSS (error code).
    InvalidTss = 10,
    /// 11: #NP segment not present (error code).
    SegmentNotPresent = 11,
    /// 12: #SS stack-segment fault (error code).
    StackSegmentFault = 12,
    /// 13: #GP general protection (error code).
    GeneralProtection = 13,
    /// 14: #PF page fault (error code; CR2 holds the address).
    PageFault = 14,
    /// 16: #MF x87 floating-point error.
    X87FloatingPoint = 16,
    /// 17: #AC alignment check (error code 0).
    AlignmentCheck = 17,
    /// 18: #MC machine check.
    MachineCheck = 18,
    /// 19: #XM SIMD floating-point exception.
    SimdFloatingPoint = 19,
    /// 20: #VE virtualization exception.
    Virtualization = 20,
    /// 21: #CP control protection (error code).
    ControlProtection = 21,
}

impl Exception {
    /// The vector number.
    pub const fn vector(self) -> u8 {
        self as u8
    }

    /// Whether the processor pushes an error code for it (SDM Vol. 3A Table 6-1).
    pub const fn has_error_code(self) -> bool {
        matches!(
            self,
            Self::DoubleFault
                | Self::InvalidTss
                | Self::SegmentNotPresent
                | Self::StackSegmentFault
                | Self::GeneralProtection
                | Self::PageFault
                | Self::AlignmentCheck
                | Self::ControlProtection
        )
    }
}

/// Interruption information: VM-exit interruption information and
/// IDT-vectoring information (SDM 25.9.2, 25.9.3) and the VM-entry
/// interruption-information field (SDM 25.8.3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct InterruptionInfo(pub u32);

impl InterruptionInfo {
    /// Bit 11: error code valid / deliver error code.
    const ERROR_CODE: u32 = 1 << 11;
    /// Bit 12: NMI unblocking due to IRET (exit information only).
    const NMI_UNBLOCKING: u32 = 1 << 12;
    /// Bit 31: valid.
    const VALID: u32 = 1 << 31;

    /// A valid event with this vector, type and error-code flag.
    pub const fn new(vector: u8, kind: InterruptionType, error_code: bool) -> Self {
        let ec = if error_code { Self::ERROR_CODE } else { 0 };
        InterruptionInfo(Self::VALID | ec | ((kind.raw() as u32) << 8) | vector as u32)
    }

    /// A hardware exception, delivering an error code when the exception has
    /// one (SDM 27.2.1.3 requires exactly that for protected-mode guests; for
    /// a guest with CR0.PE = 0 use [`Self::new`] without error code).
    pub const fn hardware_exception(exception: Exception) -> Self {
        Self::new(
            exception.vector(),
            InterruptionType::HardwareException,
            exception.has_error_code(),
        )
    }

    /// Bits 7:0: vector.
    pub const fn vector(self) -> u8 {
        self.0 as u8
    }

    /// Bits 10:8: interruption type.
    pub const fn kind(self) -> InterruptionType {
        InterruptionType::from_raw((self.0 >> 8) as u8)
    }

    /// Bit 11: an error code is valid (exit) / is delivered (entry).
    pub const fn error_code_valid(self) -> bool {
        self.0 & Self::ERROR_CODE != 0
    }

    /// Bit 12: NMI unblocking due to IRET.
    pub const fn nmi_unblocking(self) -> bool {
        self.0 & Self::NMI_UNBLOCKING != 0
    }

    /// Bit 31: the field holds an event.
    pub const fn is_valid(self) -> bool {
        self.0 & Self::VALID != 0
    }
}

impl fmt::Debug for InterruptionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.is_valid() {
            return write!(f, "InterruptionInfo(invalid, {:#x})", self.0);
        }
        f.debug_struct("InterruptionInfo")
            .field("vector", &self.vector())
            .field("kind", &self.kind())
            .field("error_code_valid", &self.error_code_valid())
            .field("nmi_unblocking", &self.nmi_unblocking())
            .finish()
    }
}

/// An event to inject on the next VM entry (SDM 25.8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventInjection {
    /// The VM-entry interruption-information field.
    pub info: InterruptionInfo,
    /// The error code, used when `info` says one is delivered.
    pub error_code: u32,
    /// The VM-entry instruction length, for software interrupts and
    /// exceptions (the length of INT n / INT3 / INTO).
    pub instruction_len: u32,
}

impl EventInjection {
    /// A hardware exception with this error code (ignored if the exception
    /// has none).
    pub const fn exception(exception: Exception, error_code: u32) -> Self {
        EventInjection {
            info: InterruptionInfo::hardware_exception(exception),
            error_code,
            instruction_len: 0,
        }
    }

    /// #GP(0).
    pub const fn general_protection() -> Self {
        Self::exception(Exception::GeneralProtection, 0)
    }

    /// #UD.
    pub const fn invalid_opcode() -> Self {
        Self::exception(Exception::InvalidOpcode, 0)
    }

    /// #PF with this error code. The faulting address goes in guest CR2,
    /// which the VMCS does not hold: the kernel loads it before VM entry.
    pub const fn page_fault(error_code: u32) -> Self {
        Self::exception(Exception::PageFault, error_code)
    }

    /// An external interrupt with this vector.
    pub const fn external_interrupt(vector: u8) -> Self {
        EventInjection {
            info: InterruptionInfo::new(vector, InterruptionType::ExternalInterrupt, false),
            error_code: 0,
            instruction_len: 0,
        }
    }

    /// A non-maskable interrupt.
    pub const fn nmi() -> Self {
        EventInjection {
            info: InterruptionInfo::new(2, InterruptionType::Nmi, false),
            error_code: 0,
            instruction_len: 0,
        }
    }

    /// Writes the event into the VM-entry event-injection fields.
    pub fn write_to<V: VmcsAccess + ?Sized>(&self, vmcs: &mut V) -> Result<(), VmFail> {
        if self.info.error_code_valid() {
            vmcs.set(vmcs::VM_ENTRY_EXCEPTION_ERROR_CODE, self.error_code)?;
        }
        match self.info.kind() {
            InterruptionType::SoftwareInterrupt
            | InterruptionType::PrivilegedSoftwareException
            | InterruptionType::SoftwareException => {
                vmcs.set(vmcs::VM_ENTRY_INSTRUCTION_LEN, self.instruction_len)?;
            }
            _ => {}
        }
        vmcs.set(vmcs::VM_ENTRY_INTR_INFO, self.info.0)
    }

    /// [`Self::write_to`] for the current VMCS, whose entry-interruption
    /// fields exist on every processor: cannot fail
    /// ([`VmcsAccess::write_known`]).
    pub fn write_known<V: VmcsAccess + ?Sized>(&self, vmcs: &mut V) {
        if self.info.error_code_valid() {
            vmcs.set_known(vmcs::VM_ENTRY_EXCEPTION_ERROR_CODE, self.error_code);
        }
        match self.info.kind() {
            InterruptionType::SoftwareInterrupt
            | InterruptionType::PrivilegedSoftwareException
            | InterruptionType::SoftwareException => {
                vmcs.set_known(vmcs::VM_ENTRY_INSTRUCTION_LEN, self.instruction_len);
            }
            _ => {}
        }
        vmcs.set_known(vmcs::VM_ENTRY_INTR_INFO, self.info.0)
    }
}

/// The exit-information fields every handler may need, read once after a VM
/// exit (SDM 25.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit reason.
    pub reason: RawExitReason,
    /// Exit qualification (meaning depends on the reason, SDM 28.2.1).
    pub qualification: u64,
    /// VM-exit instruction length (meaningful for instruction exits).
    pub instruction_len: u32,
    /// VM-exit interruption information (exceptions, NMIs, interrupts).
    pub interruption: InterruptionInfo,
    /// VM-exit interruption error code, read only when valid.
    pub interruption_error_code: Option<u32>,
    /// IDT-vectoring information: the event being delivered when the exit
    /// happened, to be re-injected.
    pub idt_vectoring: InterruptionInfo,
    /// IDT-vectoring error code, read only when valid.
    pub idt_vectoring_error_code: Option<u32>,
    /// Guest-physical address, read only for EPT violations and misconfigurations.
    pub guest_physical: Option<GuestPhysAddr>,
}

impl ExitInfo {
    /// Reads the exit-information fields of `vmcs`. Fields that exist only
    /// for some exits (error codes, guest-physical address) are read only
    /// for those exits.
    pub fn read<V: VmcsAccess + ?Sized>(vmcs: &V) -> Result<Self, VmFail> {
        let reason = RawExitReason(vmcs.get(vmcs::EXIT_REASON)?);
        let interruption = InterruptionInfo(vmcs.get(vmcs::VM_EXIT_INTR_INFO)?);
        let idt_vectoring = InterruptionInfo(vmcs.get(vmcs::IDT_VECTORING_INFO)?);
        let interruption_error_code = if interruption.is_valid() && interruption.error_code_valid()
        {
            Some(vmcs.get(vmcs::VM_EXIT_INTR_ERROR_CODE)?)
        } else {
            None
        };
        let idt_vectoring_error_code =
            if idt_vectoring.is_valid() && idt_vectoring.error_code_valid() {
                Some(vmcs.get(vmcs::IDT_VECTORING_ERROR_CODE)?)
            } else {
                None
            };
        let guest_physical = match reason.reason() {
            ExitReason::EptViolation | ExitReason::EptMisconfig => {
                Some(GuestPhysAddr::new(vmcs.get(vmcs::GUEST_PHYSICAL_ADDRESS)?))
            }
            _ => None,
        };
        Ok(ExitInfo {
            reason,
            qualification: vmcs.get(vmcs::EXIT_QUALIFICATION)?,
            instruction_len: vmcs.get(vmcs::VM_EXIT_INSTRUCTION_LEN)?,
            interruption,
            interruption_error_code,
            idt_vectoring,
            idt_vectoring_error_code,
            guest_physical,
        })
    }

    /// The VM-entry failure this exit reports, if bit 31 of the reason is set.
    pub const fn entry_failure(&self) -> Option<EntryFailure> {
        if self.reason.is_entry_failure() {
            Some(EntryFailure::decode(
                self.reason.reason(),
                self.qualification,
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmcs::FakeVmcs;

    #[test]
    fn exit_reason_numbers() {
        let cases = [
            (0, ExitReason::ExceptionOrNmi),
            (1, ExitReason::ExternalInterrupt),
            (2, ExitReason::TripleFault),
            (10, ExitReason::Cpuid),
            (12, ExitReason::Hlt),
            (18, ExitReason::Vmcall),
            (28, ExitReason::CrAccess),
            (30, ExitReason::IoInstruction),
            (31, ExitReason::Rdmsr),
            (32, ExitReason::Wrmsr),
            (33, ExitReason::EntryFailInvalidGuestState),
            (36, ExitReason::MwaitInstruction),
            (48, ExitReason::EptViolation),
            (49, ExitReason::EptMisconfig),
            (52, ExitReason::PreemptionTimer),
            (55, ExitReason::Xsetbv),
            (64, ExitReason::Xrstors),
            (69, ExitReason::Loadiwkey),
        ];
        for (n, r) in cases {
            assert_eq!(ExitReason::from_basic(n), r);
            assert_eq!(r.number(), n);
        }
        for unused in [35, 38, 42, 70, 0xFFFF] {
            assert_eq!(ExitReason::from_basic(unused), ExitReason::Unknown(unused));
        }
        for n in 0..=100u16 {
            assert_eq!(ExitReason::from_basic(n).number(), n);
        }
        assert_eq!(ExitReason::EptViolation.describe(), "EPT violation");
        assert_eq!(ExitReason::Hlt.to_string(), "HLT (12)");
        assert_eq!(
            ExitReason::Unknown(70).to_string(),
            "unknown exit reason (70)"
        );
    }

    #[test]
    fn raw_exit_reason_bits() {
        let r = RawExitReason(0x8000_0021);
        assert_eq!(r.basic(), 33);
        assert_eq!(r.reason(), ExitReason::EntryFailInvalidGuestState);
        assert!(r.is_entry_failure());
        let r = RawExitReason(0x1000_0030);
        assert_eq!(r.reason(), ExitReason::EptViolation);
        assert!(!r.is_entry_failure());
        assert!(r.pending_mtf());
        assert!(!r.from_enclave());
        assert!(!r.from_vmx_root());
    }

    #[test]
    fn entry_failures() {
        use ExitReason::*;
        assert_eq!(
            EntryFailure::decode(EntryFailInvalidGuestState, 0),
            EntryFailure::InvalidGuestState
        );
        assert_eq!(
            EntryFailure::decode(EntryFailInvalidGuestState, 2),
            EntryFailure::PdpteLoading
        );
        assert_eq!(
            EntryFailure::decode(EntryFailInvalidGuestState, 3),
            EntryFailure::NmiInjectionBlocked
        );
        assert_eq!(
            EntryFailure::decode(EntryFailInvalidGuestState, 4),
            EntryFailure::InvalidVmcsLinkPointer
        );
        assert_eq!(
            EntryFailure::decode(EntryFailInvalidGuestState, 9),
            EntryFailure::Unknown {
                reason: 33,
                qualification: 9
            }
        );
        assert_eq!(
            EntryFailure::decode(EntryFailMsrLoading, 3),
            EntryFailure::MsrLoading { entry: 3 }
        );
        assert_eq!(
            EntryFailure::decode(EntryFailMachineCheck, 0),
            EntryFailure::MachineCheck
        );
        assert_eq!(
            EntryFailure::MsrLoading { entry: 3 }.to_string(),
            "VM-entry MSR loading failed (entry 3)"
        );
    }

    #[test]
    fn io_qualification() {
        // OUT DX, AL to port 0x3F8.
        let q = IoQualification::from_raw(0x03F8_0000).unwrap();
        assert_eq!(
            q,
            IoQualification {
                size: IoSize::Byte,
                direction: IoDirection::Out,
                string: false,
                rep: false,
                immediate: false,
                port: 0x3F8
            }
        );
        // REP INSD from port 0x1F0: size 3, in, string, rep.
        let q = IoQualification::from_raw(0x01F0_0000 | 0b11_1011).unwrap();
        assert_eq!(q.size, IoSize::Dword);
        assert_eq!(q.size.bytes(), 4);
        assert_eq!(q.direction, IoDirection::In);
        assert!(q.string && q.rep && !q.immediate);
        assert_eq!(q.port, 0x1F0);
        // IN AX, 0x60 (immediate).
        let q = IoQualification::from_raw(0x0060_0049).unwrap();
        assert_eq!(
            (q.size, q.direction, q.immediate, q.port),
            (IoSize::Word, IoDirection::In, true, 0x60)
        );
        assert_eq!(IoQualification::from_raw(2), None);
        assert_eq!(IoQualification::from_raw(4), None);
    }

    #[test]
    fn cr_access_qualification() {
        // MOV CR3, RBX.
        assert_eq!(
            CrAccessQualification::from_raw(0x0303),
            CrAccessQualification::MovToCr {
                cr: 3,
                gpr: Gpr::Rbx
            }
        );
        // MOV R12, CR8.
        assert_eq!(
            CrAccessQualification::from_raw(0x0C18),
            CrAccessQualification::MovFromCr {
                cr: 8,
                gpr: Gpr::R12
            }
        );
        assert_eq!(
            CrAccessQualification::from_raw(0x20),
            CrAccessQualification::Clts
        );
        // LMSW from memory with source 0x0011.
        assert_eq!(
            CrAccessQualification::from_raw(0x0011_0070),
            CrAccessQualification::Lmsw {
                source: 0x11,
                memory_operand: true
            }
        );
        assert_eq!(Gpr::from_index(15), Gpr::R15);
        assert_eq!(Gpr::from_index(0x14), Gpr::Rsp);
        assert_eq!(Gpr::Rdi.index(), 7);
    }

    #[test]
    fn ept_violation_qualification() {
        // Write to a read-only page through a linear-address translation.
        let q = EptViolationQualification::from_raw(0b1_1000_1010);
        assert!(q.contains(EptViolationQualification::WRITE));
        assert!(!q.contains(EptViolationQualification::READ | EptViolationQualification::FETCH));
        assert!(q.contains(EptViolationQualification::READABLE));
        assert!(!q.contains(EptViolationQualification::WRITABLE));
        assert_eq!(q.linear_access(), LinearAccess::Translated);
        // Fetch from a non-present page during a guest page walk.
        let q = EptViolationQualification::from_raw(0b0_1000_0100);
        assert!(q.contains(EptViolationQualification::FETCH));
        assert!(!q.intersects(
            EptViolationQualification::READABLE
                | EptViolationQualification::WRITABLE
                | EptViolationQualification::EXECUTABLE
        ));
        assert_eq!(q.linear_access(), LinearAccess::PagingStructure);
        assert_eq!(
            EptViolationQualification::from_raw(1).linear_access(),
            LinearAccess::NotValid
        );
    }

    #[test]
    fn interruption_info() {
        // #PF with error code, as reported on exit.
        let i = InterruptionInfo(0x8000_0B0E);
        assert!(i.is_valid());
        assert_eq!(i.vector(), 14);
        assert_eq!(i.kind(), InterruptionType::HardwareException);
        assert!(i.error_code_valid());
        assert!(!i.nmi_unblocking());
        // External interrupt 0x20.
        let i = InterruptionInfo(0x8000_0020);
        assert_eq!(
            (i.vector(), i.kind()),
            (0x20, InterruptionType::ExternalInterrupt)
        );
        assert!(!InterruptionInfo(0x20).is_valid());
        assert_eq!(
            InterruptionInfo::hardware_exception(Exception::GeneralProtection).0,
            0x8000_0B0D
        );
        assert_eq!(
            InterruptionInfo::hardware_exception(Exception::InvalidOpcode).0,
            0x8000_0306
        );
        assert_eq!(
            InterruptionInfo::hardware_exception(Exception::PageFault).0,
            0x8000_0B0E
        );
        assert_eq!(
            InterruptionInfo::new(0x80, InterruptionType::SoftwareInterrupt, false).0,
            0x8000_0480
        );
        assert_eq!(InterruptionType::from_raw(1), InterruptionType::Reserved);
    }

    #[test]
    fn event_injection_writes_fields() {
        let mut v = FakeVmcs::new();
        EventInjection::general_protection()
            .write_to(&mut v)
            .unwrap();
        assert_eq!(v.get(vmcs::VM_ENTRY_INTR_INFO), Ok(0x8000_0B0D));
        assert_eq!(v.get(vmcs::VM_ENTRY_EXCEPTION_ERROR_CODE), Ok(0));
        assert!(!v.contains(vmcs::VM_ENTRY_INSTRUCTION_LEN.encoding()));

        let mut v = FakeVmcs::new();
        EventInjection::invalid_opcode().write_to(&mut v).unwrap();
        assert_eq!(v.get(vmcs::VM_ENTRY_INTR_INFO), Ok(0x8000_0306));
        assert!(!v.contains(vmcs::VM_ENTRY_EXCEPTION_ERROR_CODE.encoding()));

        let mut v = FakeVmcs::new();
        EventInjection::page_fault(0b110).write_to(&mut v).unwrap();
        assert_eq!(v.get(vmcs::VM_ENTRY_EXCEPTION_ERROR_CODE), Ok(0b110));

        let mut v = FakeVmcs::new();
        let int3 = EventInjection {
            info: InterruptionInfo::new(3, InterruptionType::SoftwareException, false),
            error_code: 0,
            instruction_len: 1,
        };
        int3.write_to(&mut v).unwrap();
        assert_eq!(v.get(vmcs::VM_ENTRY_INSTRUCTION_LEN), Ok(1));
        assert_eq!(EventInjection::nmi().info.0, 0x8000_0202);
        assert_eq!(EventInjection::external_interrupt(0x30).info.0, 0x8000_0030);
    }

    fn staged_exit(reason: u32, qualification: u64) -> FakeVmcs {
        let mut v = FakeVmcs::new();
        v.preset(vmcs::EXIT_REASON, reason).unwrap();
        v.preset(vmcs::EXIT_QUALIFICATION, qualification).unwrap();
        v.preset(vmcs::VM_EXIT_INSTRUCTION_LEN, 1).unwrap();
        v.preset(vmcs::VM_EXIT_INTR_INFO, 0).unwrap();
        v.preset(vmcs::IDT_VECTORING_INFO, 0).unwrap();
        v
    }

    #[test]
    fn exit_info_reads_what_applies() {
        // I/O exit: no guest-physical address or error codes are read.
        let v = staged_exit(30, 0x03F8_0000);
        let info = ExitInfo::read(&v).unwrap();
        assert_eq!(info.reason.reason(), ExitReason::IoInstruction);
        assert_eq!(
            IoQualification::from_raw(info.qualification).unwrap().port,
            0x3F8
        );
        assert_eq!(info.instruction_len, 1);
        assert_eq!(info.guest_physical, None);
        assert_eq!(info.interruption_error_code, None);
        assert_eq!(info.entry_failure(), None);

        // EPT violation: the guest-physical address is read.
        let mut v = staged_exit(48, 0x182);
        v.preset(vmcs::GUEST_PHYSICAL_ADDRESS, 0xfee0_0030).unwrap();
        let info = ExitInfo::read(&v).unwrap();
        assert_eq!(info.guest_physical, Some(GuestPhysAddr::new(0xfee0_0030)));

        // #GP exit with error code, while delivering a #PF.
        let mut v = staged_exit(0, 0);
        v.preset(vmcs::VM_EXIT_INTR_INFO, 0x8000_0B0D).unwrap();
        v.preset(vmcs::VM_EXIT_INTR_ERROR_CODE, 0x18).unwrap();
        v.preset(vmcs::IDT_VECTORING_INFO, 0x8000_0B0E).unwrap();
        v.preset(vmcs::IDT_VECTORING_ERROR_CODE, 2).unwrap();
        let info = ExitInfo::read(&v).unwrap();
        assert_eq!(info.interruption_error_code, Some(0x18));
        assert_eq!(info.idt_vectoring.vector(), 14);
        assert_eq!(info.idt_vectoring_error_code, Some(2));

        // Entry failure.
        let v = staged_exit(0x8000_0021, 4);
        let info = ExitInfo::read(&v).unwrap();
        assert_eq!(
            info.entry_failure(),
            Some(EntryFailure::InvalidVmcsLinkPointer)
        );

        // Missing field: an error, not a zero.
        let mut v = FakeVmcs::new();
        v.preset(vmcs::EXIT_REASON, 48).unwrap();
        assert!(ExitInfo::read(&v).is_err());
    }
}
