//! #VMEXIT information, decoded (APM Vol. 2, 15.6 "#VMEXIT", Appendix C
//! "SVM Intercept Exit Codes", and the EXITINFO formats of 15.7-15.25).
//!
//! Pure decoders from raw VMCB values to enums and structs. Every decoder is
//! total: values the APM leaves undefined become `Unknown`/`None`/
//! [`Exit::Malformed`], never a panic. [`ExitInfo::from_vmcb`] snapshots the
//! exit fields of a [`Vmcb`] once, and [`ExitInfo::decode`] turns them into
//! one [`Exit`], so exit handling can be fed hand-made VMCBs in host tests.
//!
//! ```
//! use svm::exit::{Exit, ExitCode, ExitInfo, IoDirection, IoSize};
//! use svm::vmcb::Vmcb;
//! let mut vmcb = Vmcb::new();
//! vmcb.control.exit_code = 0x7b; // VMEXIT_IOIO
//! vmcb.control.exit_info1 = (0x3f8 << 16) | (1 << 4); // OUT DX, AL to 0x3F8
//! vmcb.control.exit_info2 = 0x1002; // the next RIP
//! let exit = ExitInfo::from_vmcb(&vmcb);
//! assert_eq!(exit.code, ExitCode::Ioio);
//! match exit.decode() {
//!     Exit::Io { info, next_rip } => {
//!         assert_eq!((info.port, info.direction, info.size), (0x3f8, IoDirection::Out, IoSize::Byte));
//!         assert_eq!(next_rip, 0x1002);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

use core::fmt;

use bitflags::bitflags;

use crate::addr::GuestPhysAddr;
use crate::vmcb::Vmcb;

macro_rules! exit_codes {
    ($($name:ident = $num:literal, $apm:literal, $text:literal;)*) => {
        /// An EXITCODE value (VMCB offset 070h; APM Appendix C, Table C-1).
        ///
        /// The ranges with one code per register or vector carry the number:
        /// `CrRead(3)` is VMEXIT_CR3_READ (0x03).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ExitCode {
            /// 0x00-0x0F VMEXIT_CR0_READ..VMEXIT_CR15_READ: read of CR*n*
            /// (APM Table C-1).
            CrRead(u8),
            /// 0x10-0x1F VMEXIT_CR0_WRITE..VMEXIT_CR15_WRITE: write of CR*n*
            /// (APM Table C-1).
            CrWrite(u8),
            /// 0x20-0x2F VMEXIT_DR0_READ..VMEXIT_DR15_READ: read of DR*n*
            /// (APM Table C-1).
            DrRead(u8),
            /// 0x30-0x3F VMEXIT_DR0_WRITE..VMEXIT_DR15_WRITE: write of DR*n*
            /// (APM Table C-1).
            DrWrite(u8),
            /// 0x40-0x5F VMEXIT_EXCP0..VMEXIT_EXCP31: exception vector *n*
            /// (APM Table C-1).
            Exception(u8),
            $(
                #[doc = concat!(stringify!($num), " ", $apm, ": ", $text, " (APM Table C-1).")]
                $name,
            )*
            /// 0x90-0x9F VMEXIT_CR0_WRITE_TRAP..VMEXIT_CR15_WRITE_TRAP: CR*n*
            /// was written; the new value is in EXITINFO1 (APM Table C-1).
            CrWriteTrap(u8),
            /// -1 (all ones) VMEXIT_INVALID: VMRUN found illegal guest state
            /// or controls and never ran the guest (APM 15.5.1, Table C-1).
            /// [`ExitCode::from_raw`] also reads 0xFFFF_FFFF (-1 in the low
            /// 32 bits only) as this code: QEMU's TCG (7.2) stores its
            /// `SVM_EXIT_ERR` (-1) through `cpu_vmexit(env, uint32_t
            /// exit_code, ...)` (`target/i386/tcg/helper-tcg.h`), so the
            /// 64-bit EXITCODE reads 0x0000_0000_FFFF_FFFF. No other code
            /// is near that value.
            Invalid,
            /// A code this crate does not know.
            Unknown(u64),
        }

        impl ExitCode {
            /// Decodes a raw EXITCODE.
            #[inline]
            pub const fn from_raw(raw: u64) -> Self {
                match raw {
                    0x00..=0x0F => Self::CrRead(raw as u8),
                    0x10..=0x1F => Self::CrWrite((raw - 0x10) as u8),
                    0x20..=0x2F => Self::DrRead((raw - 0x20) as u8),
                    0x30..=0x3F => Self::DrWrite((raw - 0x30) as u8),
                    0x40..=0x5F => Self::Exception((raw - 0x40) as u8),
                    0x90..=0x9F => Self::CrWriteTrap((raw - 0x90) as u8),
                    $($num => Self::$name,)*
                    u64::MAX | 0xFFFF_FFFF => Self::Invalid,
                    other => Self::Unknown(other),
                }
            }

            /// The raw EXITCODE. Register and vector numbers out of range
            /// (only constructible by hand) are masked into their range.
            pub const fn raw(self) -> u64 {
                match self {
                    Self::CrRead(n) => (n & 0xF) as u64,
                    Self::CrWrite(n) => 0x10 + (n & 0xF) as u64,
                    Self::DrRead(n) => 0x20 + (n & 0xF) as u64,
                    Self::DrWrite(n) => 0x30 + (n & 0xF) as u64,
                    Self::Exception(n) => 0x40 + (n & 0x1F) as u64,
                    Self::CrWriteTrap(n) => 0x90 + (n & 0xF) as u64,
                    $(Self::$name => $num,)*
                    Self::Invalid => u64::MAX,
                    Self::Unknown(n) => n,
                }
            }

            /// The APM's name of the code (Table C-1), with `x` for the
            /// register or vector number of the ranged codes.
            pub const fn apm_name(self) -> &'static str {
                match self {
                    Self::CrRead(_) => "VMEXIT_CRx_READ",
                    Self::CrWrite(_) => "VMEXIT_CRx_WRITE",
                    Self::DrRead(_) => "VMEXIT_DRx_READ",
                    Self::DrWrite(_) => "VMEXIT_DRx_WRITE",
                    Self::Exception(_) => "VMEXIT_EXCPx",
                    Self::CrWriteTrap(_) => "VMEXIT_CRx_WRITE_TRAP",
                    $(Self::$name => $apm,)*
                    Self::Invalid => "VMEXIT_INVALID",
                    Self::Unknown(_) => "unknown",
                }
            }

            /// A readable description of the code.
            pub const fn describe(self) -> &'static str {
                match self {
                    Self::CrRead(_) => "control-register read",
                    Self::CrWrite(_) => "control-register write",
                    Self::DrRead(_) => "debug-register read",
                    Self::DrWrite(_) => "debug-register write",
                    Self::Exception(_) => "exception",
                    Self::CrWriteTrap(_) => "control-register write trap",
                    $(Self::$name => $text,)*
                    Self::Invalid => "invalid guest state or controls (VMRUN failed)",
                    Self::Unknown(_) => "unknown exit code",
                }
            }
        }
    };
}

exit_codes! {
    Intr = 0x60, "VMEXIT_INTR", "physical INTR";
    Nmi = 0x61, "VMEXIT_NMI", "physical NMI";
    Smi = 0x62, "VMEXIT_SMI", "physical SMI";
    Init = 0x63, "VMEXIT_INIT", "physical INIT";
    Vintr = 0x64, "VMEXIT_VINTR", "virtual INTR";
    Cr0SelWrite = 0x65, "VMEXIT_CR0_SEL_WRITE", "write of CR0 changing bits other than TS or MP";
    IdtrRead = 0x66, "VMEXIT_IDTR_READ", "read of IDTR";
    GdtrRead = 0x67, "VMEXIT_GDTR_READ", "read of GDTR";
    LdtrRead = 0x68, "VMEXIT_LDTR_READ", "read of LDTR";
    TrRead = 0x69, "VMEXIT_TR_READ", "read of TR";
    IdtrWrite = 0x6A, "VMEXIT_IDTR_WRITE", "write of IDTR";
    GdtrWrite = 0x6B, "VMEXIT_GDTR_WRITE", "write of GDTR";
    LdtrWrite = 0x6C, "VMEXIT_LDTR_WRITE", "write of LDTR";
    TrWrite = 0x6D, "VMEXIT_TR_WRITE", "write of TR";
    Rdtsc = 0x6E, "VMEXIT_RDTSC", "RDTSC";
    Rdpmc = 0x6F, "VMEXIT_RDPMC", "RDPMC";
    Pushf = 0x70, "VMEXIT_PUSHF", "PUSHF";
    Popf = 0x71, "VMEXIT_POPF", "POPF";
    Cpuid = 0x72, "VMEXIT_CPUID", "CPUID";
    Rsm = 0x73, "VMEXIT_RSM", "RSM";
    Iret = 0x74, "VMEXIT_IRET", "IRET";
    Swint = 0x75, "VMEXIT_SWINT", "software interrupt (INTn)";
    Invd = 0x76, "VMEXIT_INVD", "INVD";
    Pause = 0x77, "VMEXIT_PAUSE", "PAUSE";
    Hlt = 0x78, "VMEXIT_HLT", "HLT";
    Invlpg = 0x79, "VMEXIT_INVLPG", "INVLPG";
    Invlpga = 0x7A, "VMEXIT_INVLPGA", "INVLPGA";
    Ioio = 0x7B, "VMEXIT_IOIO", "IN or OUT accessing protected port";
    Msr = 0x7C, "VMEXIT_MSR", "RDMSR or WRMSR accessing protected MSR";
    TaskSwitch = 0x7D, "VMEXIT_TASK_SWITCH", "task switch";
    FerrFreeze = 0x7E, "VMEXIT_FERR_FREEZE", "FP exception with the processor frozen (FERR_FREEZE)";
    Shutdown = 0x7F, "VMEXIT_SHUTDOWN", "shutdown (e.g. triple fault)";
    Vmrun = 0x80, "VMEXIT_VMRUN", "VMRUN";
    Vmmcall = 0x81, "VMEXIT_VMMCALL", "VMMCALL";
    Vmload = 0x82, "VMEXIT_VMLOAD", "VMLOAD";
    Vmsave = 0x83, "VMEXIT_VMSAVE", "VMSAVE";
    Stgi = 0x84, "VMEXIT_STGI", "STGI";
    Clgi = 0x85, "VMEXIT_CLGI", "CLGI";
    Skinit = 0x86, "VMEXIT_SKINIT", "SKINIT";
    Rdtscp = 0x87, "VMEXIT_RDTSCP", "RDTSCP";
    Icebp = 0x88, "VMEXIT_ICEBP", "ICEBP (INT1)";
    Wbinvd = 0x89, "VMEXIT_WBINVD", "WBINVD or WBNOINVD";
    Monitor = 0x8A, "VMEXIT_MONITOR", "MONITOR or MONITORX";
    Mwait = 0x8B, "VMEXIT_MWAIT", "MWAIT or MWAITX";
    MwaitConditional = 0x8C, "VMEXIT_MWAIT_CONDITIONAL", "MWAIT or MWAITX with the monitor armed";
    Xsetbv = 0x8D, "VMEXIT_XSETBV", "XSETBV";
    Rdpru = 0x8E, "VMEXIT_RDPRU", "RDPRU";
    EferWriteTrap = 0x8F, "VMEXIT_EFER_WRITE_TRAP", "EFER write trap";
    Invlpgb = 0xA0, "VMEXIT_INVLPGB", "INVLPGB";
    InvlpgbIllegal = 0xA1, "VMEXIT_INVLPGB_ILLEGAL", "illegal INVLPGB";
    Invpcid = 0xA2, "VMEXIT_INVPCID", "INVPCID";
    Mcommit = 0xA3, "VMEXIT_MCOMMIT", "MCOMMIT";
    Tlbsync = 0xA4, "VMEXIT_TLBSYNC", "TLBSYNC";
    BusLock = 0xA5, "VMEXIT_BUSLOCK", "bus lock";
    IdleHlt = 0xA6, "VMEXIT_IDLE_HLT", "HLT with no virtual interrupt pending";
    Npf = 0x400, "VMEXIT_NPF", "nested page fault";
    AvicIncompleteIpi = 0x401, "AVIC_INCOMPLETE_IPI", "AVIC: IPI delivery not completed";
    AvicNoaccel = 0x402, "AVIC_NOACCEL", "AVIC: APIC access not accelerated";
    Vmgexit = 0x403, "VMEXIT_VMGEXIT", "VMGEXIT (SEV-ES)";
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = self.raw();
        match *self {
            Self::CrRead(n) => write!(f, "CR{n} read ({raw:#x})"),
            Self::CrWrite(n) => write!(f, "CR{n} write ({raw:#x})"),
            Self::DrRead(n) => write!(f, "DR{n} read ({raw:#x})"),
            Self::DrWrite(n) => write!(f, "DR{n} write ({raw:#x})"),
            Self::Exception(n) => write!(f, "exception {n} ({raw:#x})"),
            Self::CrWriteTrap(n) => write!(f, "CR{n} write trap ({raw:#x})"),
            Self::Invalid => f.write_str("VMEXIT_INVALID (-1): invalid guest state or controls"),
            _ => write!(f, "{} ({raw:#x})", self.describe()),
        }
    }
}

/// A general-purpose register as numbered in EXITINFO1 by decode assists
/// (APM "Decode Assists"; the usual x86 encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gpr {
    /// 0: RAX (lives in the VMCB state-save area).
    Rax,
    /// 1: RCX.
    Rcx,
    /// 2: RDX.
    Rdx,
    /// 3: RBX.
    Rbx,
    /// 4: RSP (lives in the VMCB state-save area).
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

/// Decode-assist information of a CR read/write intercept, EXITINFO1
/// (APM Vol. 2, 15 "Decode Assists", MOV CRx/DRx intercepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrAccessInfo {
    /// EXITINFO1 bit 63 set: a MOV to or from CR*n*; bits 3:0 name the
    /// general-purpose register operand.
    MovCr {
        /// The source (write) or destination (read) register.
        gpr: Gpr,
    },
    /// Bit 63 clear: CLTS, LMSW or SMSW, which have no register operand
    /// reported, or a CPU without decode assists (EXITINFO1 = 0).
    Other,
}

impl CrAccessInfo {
    /// Bit 63 of EXITINFO1: the access was a MOV CRx.
    pub const MOV_CR: u64 = 1 << 63;

    /// Decodes EXITINFO1 of a `CrRead`/`CrWrite` exit (every value decodes).
    pub const fn from_exit_info1(raw: u64) -> Self {
        if raw & Self::MOV_CR != 0 {
            Self::MovCr {
                gpr: Gpr::from_index(raw as u8),
            }
        } else {
            Self::Other
        }
    }
}

/// The general-purpose register of a MOV DRx intercept, EXITINFO1 bits 3:0
/// (APM "Decode Assists"; only with the decode-assist feature, else always RAX).
pub const fn dr_access_gpr(exit_info1: u64) -> Gpr {
    Gpr::from_index(exit_info1 as u8)
}

/// Direction of an intercepted IN/OUT, EXITINFO1 bit 0 (APM 15.10.2
/// "IN and OUT Behavior").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDirection {
    /// TYPE = 0: OUT, guest to device.
    Out,
    /// TYPE = 1: IN, device to guest.
    In,
}

/// Operand size of an intercepted IN/OUT, EXITINFO1 bits 6:4, one-hot
/// (APM 15.10.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoSize {
    /// SZ8, bit 4: one byte.
    Byte,
    /// SZ16, bit 5: two bytes.
    Word,
    /// SZ32, bit 6: four bytes.
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

/// Address size of an intercepted INS/OUTS, EXITINFO1 bits 9:7, one-hot
/// (APM 15.10.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSize {
    /// A16, bit 7.
    Bits16,
    /// A32, bit 8.
    Bits32,
    /// A64, bit 9.
    Bits64,
}

/// A segment register as numbered in EXITINFO1 bits 12:10 of an IOIO
/// intercept (APM 15.10.2; reported with decode assists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentRegister {
    /// 0: ES.
    Es,
    /// 1: CS.
    Cs,
    /// 2: SS.
    Ss,
    /// 3: DS.
    Ds,
    /// 4: FS.
    Fs,
    /// 5: GS.
    Gs,
}

impl SegmentRegister {
    /// Decodes a 3-bit segment number; `None` for 6 and 7.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::Es),
            1 => Some(Self::Cs),
            2 => Some(Self::Ss),
            3 => Some(Self::Ds),
            4 => Some(Self::Fs),
            5 => Some(Self::Gs),
            _ => None,
        }
    }
}

/// EXITINFO1 of an IOIO intercept (APM 15.10.2). EXITINFO2
/// holds the RIP of the next instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoExitInfo {
    /// Bits 31:16: the port.
    pub port: u16,
    /// Bit 0: IN or OUT.
    pub direction: IoDirection,
    /// Bit 2 (STR): a string instruction, INS or OUTS.
    pub string: bool,
    /// Bit 3 (REP): REP-prefixed.
    pub rep: bool,
    /// Bits 6:4 (SZ8/SZ16/SZ32): the operand size.
    pub size: IoSize,
    /// Bits 9:7 (A16/A32/A64): the address size; `None` if not exactly one
    /// bit is set.
    pub address_size: Option<AddressSize>,
    /// Bits 12:10 (SEG): the effective segment of an OUTS (decode assists);
    /// `None` for the undefined values 6 and 7.
    pub segment: Option<SegmentRegister>,
}

impl IoExitInfo {
    /// Bit 0: TYPE, 1 = IN.
    pub const TYPE_IN: u64 = 1 << 0;
    /// Bit 2: STR.
    pub const STR: u64 = 1 << 2;
    /// Bit 3: REP.
    pub const REP: u64 = 1 << 3;
    /// Bit 4: SZ8.
    pub const SZ8: u64 = 1 << 4;
    /// Bit 5: SZ16.
    pub const SZ16: u64 = 1 << 5;
    /// Bit 6: SZ32.
    pub const SZ32: u64 = 1 << 6;
    /// Bit 7: A16.
    pub const A16: u64 = 1 << 7;
    /// Bit 8: A32.
    pub const A32: u64 = 1 << 8;
    /// Bit 9: A64.
    pub const A64: u64 = 1 << 9;
    /// Bits 12:10: SEG.
    pub const SEG_SHIFT: u32 = 10;
    /// Bits 31:16: PORT.
    pub const PORT_SHIFT: u32 = 16;

    /// Decodes EXITINFO1; `None` if the size bits are not exactly one of
    /// SZ8, SZ16, SZ32.
    pub const fn from_exit_info1(raw: u64) -> Option<Self> {
        let size = match raw & (Self::SZ8 | Self::SZ16 | Self::SZ32) {
            Self::SZ8 => IoSize::Byte,
            Self::SZ16 => IoSize::Word,
            Self::SZ32 => IoSize::Dword,
            _ => return None,
        };
        let address_size = match raw & (Self::A16 | Self::A32 | Self::A64) {
            Self::A16 => Some(AddressSize::Bits16),
            Self::A32 => Some(AddressSize::Bits32),
            Self::A64 => Some(AddressSize::Bits64),
            _ => None,
        };
        Some(IoExitInfo {
            port: (raw >> Self::PORT_SHIFT) as u16,
            direction: if raw & Self::TYPE_IN != 0 {
                IoDirection::In
            } else {
                IoDirection::Out
            },
            string: raw & Self::STR != 0,
            rep: raw & Self::REP != 0,
            size,
            address_size,
            segment: SegmentRegister::from_raw(((raw >> Self::SEG_SHIFT) & 0b111) as u8),
        })
    }
}

/// The access of an MSR intercept, EXITINFO1 (APM 15.11: 0 for RDMSR, 1 for
/// WRMSR). The MSR number is the guest's ECX; a WRMSR's value is EDX:EAX,
/// with RAX in the VMCB state-save area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrAccess {
    /// EXITINFO1 = 0: RDMSR.
    Read,
    /// EXITINFO1 = 1: WRMSR.
    Write,
}

impl MsrAccess {
    /// Decodes EXITINFO1; `None` for any value but 0 and 1.
    pub const fn from_exit_info1(raw: u64) -> Option<Self> {
        match raw {
            0 => Some(Self::Read),
            1 => Some(Self::Write),
            _ => None,
        }
    }
}

bitflags! {
    /// EXITINFO1 of a nested page fault: a page-fault error code plus
    /// NPF-specific bits (APM 15.25 "Nested Paging"; #PF error-code
    /// bits in APM Vol. 2, 8.4.2). Bits without a
    /// name are kept and shown, not interpreted.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct NpfErrorCode: u64 {
        /// Bit 0 (P): the nested page was present (a protection fault); clear
        /// for a not-present fault.
        const PRESENT = 1 << 0;
        /// Bit 1 (RW): the access was a write.
        const WRITE = 1 << 1;
        /// Bit 2 (US): the access was a user access; set for every guest
        /// access, which the nested walk treats as user accesses (APM 15.25.5).
        const USER = 1 << 2;
        /// Bit 3 (RSV): a reserved bit was set in a nested page-table entry.
        const RESERVED_BIT = 1 << 3;
        /// Bit 4 (ID): the access was an instruction fetch.
        const FETCH = 1 << 4;
        /// Bit 32: the fault happened translating the guest's final physical
        /// address (the data or code access itself).
        const FINAL_GPA = 1 << 32;
        /// Bit 33: the fault happened translating a guest page-table access
        /// (during the guest's own page walk).
        const PAGE_TABLE_WALK = 1 << 33;
    }
}

/// What kind of access caused a nested page fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpfAccess {
    /// A data read (neither RW nor ID set).
    Read,
    /// A data write (RW set).
    Write,
    /// An instruction fetch (ID set).
    Fetch,
}

impl NpfErrorCode {
    /// Decodes EXITINFO1 of a nested page fault, keeping every bit.
    pub const fn from_exit_info1(raw: u64) -> Self {
        Self::from_bits_retain(raw)
    }

    /// The kind of access: a fetch if ID is set, else a write if RW is set,
    /// else a read.
    pub const fn access(self) -> NpfAccess {
        if self.contains(Self::FETCH) {
            NpfAccess::Fetch
        } else if self.contains(Self::WRITE) {
            NpfAccess::Write
        } else {
            NpfAccess::Read
        }
    }
}

/// The event type of EXITINTINFO and EVENTINJ, bits 10:8 (APM 15.20 "Event
/// Injection"; 15.7.2 for EXITINTINFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// 0: external or virtual interrupt (INTR).
    ExternalInterrupt,
    /// 2: NMI.
    Nmi,
    /// 3: exception (fault or trap).
    Exception,
    /// 4: software interrupt (INTn).
    SoftwareInterrupt,
    /// 1, 5, 6, 7: reserved; injecting one makes VMRUN fail.
    Reserved(u8),
}

impl EventType {
    /// Decodes a 3-bit type (higher bits ignored).
    pub const fn from_raw(raw: u8) -> Self {
        match raw & 0b111 {
            0 => Self::ExternalInterrupt,
            2 => Self::Nmi,
            3 => Self::Exception,
            4 => Self::SoftwareInterrupt,
            other => Self::Reserved(other),
        }
    }

    /// The 3-bit encoding.
    pub const fn raw(self) -> u8 {
        match self {
            Self::ExternalInterrupt => 0,
            Self::Nmi => 2,
            Self::Exception => 3,
            Self::SoftwareInterrupt => 4,
            Self::Reserved(n) => n & 0b111,
        }
    }
}

/// An exception vector (APM Vol. 2, 8.2 "Vectors", Table 8-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Exception {
    /// 0: #DE divide-by-zero error.
    DivideError = 0,
    /// 1: #DB debug.
    Debug = 1,
    /// 3: #BP breakpoint.
    Breakpoint = 3,
    /// 4: #OF overflow.
    Overflow = 4,
    /// 5: #BR bound range.
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
    /// 12: #SS stack (error code).
    Stack = 12,
    /// 13: #GP general protection (error code).
    GeneralProtection = 13,
    /// 14: #PF page fault (error code; CR2 holds the address).
    PageFault = 14,
    /// 16: #MF x87 floating-point exception pending.
    X87FloatingPoint = 16,
    /// 17: #AC alignment check (error code 0).
    AlignmentCheck = 17,
    /// 18: #MC machine check.
    MachineCheck = 18,
    /// 19: #XF SIMD floating-point.
    SimdFloatingPoint = 19,
    /// 21: #CP control protection (error code).
    ControlProtection = 21,
    /// 28: #HV hypervisor injection.
    HypervisorInjection = 28,
    /// 29: #VC VMM communication (error code).
    VmmCommunication = 29,
    /// 30: #SX security (error code).
    Security = 30,
}

impl Exception {
    /// The exception with this vector; `None` for NMI (2), reserved vectors
    /// and interrupts (32 and up).
    pub const fn from_vector(vector: u8) -> Option<Self> {
        Some(match vector {
            0 => Self::DivideError,
            1 => Self::Debug,
            3 => Self::Breakpoint,
            4 => Self::Overflow,
            5 => Self::BoundRange,
            6 => Self::InvalidOpcode,
            7 => Self::DeviceNotAvailable,
            8 => Self::DoubleFault,
            10 => Self::InvalidTss,
            11 => Self::SegmentNotPresent,
            12 => Self::Stack,
            13 => Self::GeneralProtection,
            14 => Self::PageFault,
            16 => Self::X87FloatingPoint,
            17 => Self::AlignmentCheck,
            18 => Self::MachineCheck,
            19 => Self::SimdFloatingPoint,
            21 => Self::ControlProtection,
            28 => Self::HypervisorInjection,
            29 => Self::VmmCommunication,
            30 => Self::Security,
            _ => return None,
        })
    }

    /// The vector number.
    pub const fn vector(self) -> u8 {
        self as u8
    }

    /// Whether the processor pushes an error code for it (APM Vol. 2,
    /// Table 8-1).
    pub const fn has_error_code(self) -> bool {
        matches!(
            self,
            Self::DoubleFault
                | Self::InvalidTss
                | Self::SegmentNotPresent
                | Self::Stack
                | Self::GeneralProtection
                | Self::PageFault
                | Self::AlignmentCheck
                | Self::ControlProtection
                | Self::VmmCommunication
                | Self::Security
        )
    }
}

/// The 64-bit event format shared by EXITINTINFO (VMCB offset 088h) and
/// EVENTINJ (offset 0A8h) (APM 15.20, 15.7.2).
///
/// Bits 7:0 VECTOR, 10:8 TYPE, 11 EV (error code valid), 31 V (valid),
/// 63:32 ERRORCODE. A valid EXITINTINFO means the exit interrupted the
/// delivery of this event; the hypervisor re-injects it through EVENTINJ.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct EventInfo(pub u64);

impl EventInfo {
    /// No event (V = 0).
    pub const NONE: EventInfo = EventInfo(0);
    /// Bits 7:0: VECTOR.
    pub const VECTOR_MASK: u64 = 0xFF;
    /// Bits 10:8: TYPE.
    pub const TYPE_SHIFT: u32 = 8;
    /// Bit 11: EV, an error code is pushed.
    pub const ERROR_CODE_VALID: u64 = 1 << 11;
    /// Bit 31: V, the field holds an event.
    pub const VALID: u64 = 1 << 31;
    /// Bits 63:32: ERRORCODE.
    pub const ERROR_CODE_SHIFT: u32 = 32;

    /// A valid event with this vector and type, pushing `error_code` if any.
    pub const fn new(vector: u8, kind: EventType, error_code: Option<u32>) -> Self {
        let ec = match error_code {
            Some(code) => ((code as u64) << Self::ERROR_CODE_SHIFT) | Self::ERROR_CODE_VALID,
            None => 0,
        };
        EventInfo(Self::VALID | ec | ((kind.raw() as u64) << Self::TYPE_SHIFT) | vector as u64)
    }

    /// An exception, delivering `error_code` exactly when the exception has
    /// one (protected-mode guests; a real-mode guest gets no error code, so
    /// use [`Self::new`] for it).
    pub const fn exception(exception: Exception, error_code: u32) -> Self {
        let ec = if exception.has_error_code() {
            Some(error_code)
        } else {
            None
        };
        Self::new(exception.vector(), EventType::Exception, ec)
    }

    /// #GP(0).
    pub const fn general_protection() -> Self {
        Self::exception(Exception::GeneralProtection, 0)
    }

    /// #UD.
    pub const fn invalid_opcode() -> Self {
        Self::exception(Exception::InvalidOpcode, 0)
    }

    /// An external interrupt with this vector.
    pub const fn external_interrupt(vector: u8) -> Self {
        Self::new(vector, EventType::ExternalInterrupt, None)
    }

    /// An NMI (the vector field is 2).
    pub const fn nmi() -> Self {
        Self::new(2, EventType::Nmi, None)
    }

    /// A software interrupt (INTn) with this vector.
    pub const fn software_interrupt(vector: u8) -> Self {
        Self::new(vector, EventType::SoftwareInterrupt, None)
    }

    /// The raw 64-bit value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Bit 31: the field holds an event.
    pub const fn is_valid(self) -> bool {
        self.0 & Self::VALID != 0
    }

    /// Bits 7:0: the vector.
    pub const fn vector(self) -> u8 {
        (self.0 & Self::VECTOR_MASK) as u8
    }

    /// Bits 10:8: the event type.
    pub const fn kind(self) -> EventType {
        EventType::from_raw((self.0 >> Self::TYPE_SHIFT) as u8)
    }

    /// Bit 11: an error code is pushed.
    pub const fn error_code_valid(self) -> bool {
        self.0 & Self::ERROR_CODE_VALID != 0
    }

    /// Bits 63:32 when EV is set.
    pub const fn error_code(self) -> Option<u32> {
        if self.error_code_valid() {
            Some((self.0 >> Self::ERROR_CODE_SHIFT) as u32)
        } else {
            None
        }
    }

    /// The event, if the field holds one (V set).
    pub const fn valid(self) -> Option<Self> {
        if self.is_valid() {
            Some(self)
        } else {
            None
        }
    }
}

impl fmt::Debug for EventInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.is_valid() {
            return write!(f, "EventInfo(none, {:#x})", self.0);
        }
        f.debug_struct("EventInfo")
            .field("vector", &self.vector())
            .field("kind", &self.kind())
            .field("error_code", &self.error_code())
            .finish()
    }
}

/// The exit fields of a VMCB, read once after #VMEXIT (APM 15.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// EXITCODE (offset 070h), decoded.
    pub code: ExitCode,
    /// EXITINFO1 (offset 078h).
    pub exit_info1: u64,
    /// EXITINFO2 (offset 080h).
    pub exit_info2: u64,
    /// EXITINTINFO (offset 088h): an event whose delivery the exit
    /// interrupted, to be re-injected.
    pub exit_int_info: EventInfo,
    /// nRIP (offset 0C8h): the next sequential RIP for instruction
    /// intercepts, with the NRIP-save feature (APM Table B-1); 0 otherwise.
    pub next_rip: u64,
    /// The guest's RIP at the exit (state-save offset 178h).
    pub rip: u64,
}

impl ExitInfo {
    /// Snapshots the exit fields of `vmcb`.
    #[inline]
    pub fn from_vmcb(vmcb: &Vmcb) -> Self {
        ExitInfo {
            code: ExitCode::from_raw(vmcb.control.exit_code),
            exit_info1: vmcb.control.exit_info1,
            exit_info2: vmcb.control.exit_info2,
            exit_int_info: vmcb.control.exit_int_info,
            next_rip: vmcb.control.next_rip,
            rip: vmcb.save.rip,
        }
    }

    /// Length of the intercepted instruction from nRIP - RIP, if nRIP is
    /// meaningful (nonzero, after RIP, at most 15 bytes on).
    pub const fn instruction_len(&self) -> Option<u64> {
        match self.next_rip.checked_sub(self.rip) {
            Some(len @ 1..=15) => Some(len),
            _ => None,
        }
    }

    /// Decodes the exit into one [`Exit`] (total: unusual values become
    /// [`Exit::Malformed`] or [`Exit::Other`]).
    #[inline]
    pub const fn decode(&self) -> Exit {
        match self.code {
            ExitCode::CrRead(cr) => Exit::CrAccess {
                cr,
                write: false,
                info: CrAccessInfo::from_exit_info1(self.exit_info1),
            },
            ExitCode::CrWrite(cr) => Exit::CrAccess {
                cr,
                write: true,
                info: CrAccessInfo::from_exit_info1(self.exit_info1),
            },
            ExitCode::DrRead(dr) => Exit::DrAccess {
                dr,
                write: false,
                gpr: dr_access_gpr(self.exit_info1),
            },
            ExitCode::DrWrite(dr) => Exit::DrAccess {
                dr,
                write: true,
                gpr: dr_access_gpr(self.exit_info1),
            },
            ExitCode::Exception(vector) => {
                let exception = Exception::from_vector(vector);
                let error_code = match exception {
                    Some(e) if e.has_error_code() => Some(self.exit_info1 as u32),
                    _ => None,
                };
                let fault_address = match exception {
                    Some(Exception::PageFault) => Some(self.exit_info2),
                    _ => None,
                };
                Exit::Exception {
                    vector,
                    error_code,
                    fault_address,
                }
            }
            ExitCode::Ioio => match IoExitInfo::from_exit_info1(self.exit_info1) {
                Some(info) => Exit::Io {
                    info,
                    next_rip: self.exit_info2,
                },
                None => Exit::Malformed {
                    code: self.code,
                    exit_info1: self.exit_info1,
                },
            },
            ExitCode::Msr => match MsrAccess::from_exit_info1(self.exit_info1) {
                Some(access) => Exit::Msr { access },
                None => Exit::Malformed {
                    code: self.code,
                    exit_info1: self.exit_info1,
                },
            },
            ExitCode::Npf => Exit::NestedPageFault {
                gpa: GuestPhysAddr::new(self.exit_info2),
                error: NpfErrorCode::from_exit_info1(self.exit_info1),
            },
            ExitCode::Swint => Exit::SoftwareInterrupt {
                vector: self.exit_info1 as u8,
            },
            ExitCode::Invlpg => Exit::Invlpg {
                linear: self.exit_info1,
            },
            ExitCode::CrWriteTrap(cr) => Exit::CrWriteTrap {
                cr,
                value: self.exit_info1,
            },
            ExitCode::EferWriteTrap => Exit::EferWriteTrap {
                value: self.exit_info1,
            },
            ExitCode::Intr => Exit::Intr,
            ExitCode::Nmi => Exit::Nmi,
            ExitCode::Vintr => Exit::Vintr,
            ExitCode::Cpuid => Exit::Cpuid,
            ExitCode::Hlt => Exit::Hlt,
            ExitCode::Pause => Exit::Pause,
            ExitCode::Vmmcall => Exit::Vmmcall,
            ExitCode::Shutdown => Exit::Shutdown,
            ExitCode::Invalid => Exit::Invalid,
            other => Exit::Other(other),
        }
    }
}

/// A decoded #VMEXIT: [`ExitInfo::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A CR read or write intercept (VMEXIT_CRx_READ/WRITE).
    CrAccess {
        /// The control register.
        cr: u8,
        /// A write (MOV to CR, CLTS, LMSW) rather than a read.
        write: bool,
        /// The decode-assist information (APM "Decode Assists").
        info: CrAccessInfo,
    },
    /// A DR read or write intercept (VMEXIT_DRx_READ/WRITE).
    DrAccess {
        /// The debug register.
        dr: u8,
        /// A write rather than a read.
        write: bool,
        /// The register operand (decode assists; RAX without them).
        gpr: Gpr,
    },
    /// An intercepted exception (VMEXIT_EXCPx).
    Exception {
        /// The vector, 0..=31.
        vector: u8,
        /// EXITINFO1, for the exceptions that push an error code.
        error_code: Option<u32>,
        /// EXITINFO2 for #PF: the faulting linear address (the guest's CR2
        /// is not yet written, APM 15.12).
        fault_address: Option<u64>,
    },
    /// IN/OUT through the I/O permission map (VMEXIT_IOIO).
    Io {
        /// EXITINFO1, decoded.
        info: IoExitInfo,
        /// EXITINFO2: the RIP of the next instruction.
        next_rip: u64,
    },
    /// RDMSR/WRMSR through the MSR permission map (VMEXIT_MSR); the MSR is
    /// the guest's ECX.
    Msr {
        /// Read or write.
        access: MsrAccess,
    },
    /// A nested page fault (VMEXIT_NPF).
    NestedPageFault {
        /// EXITINFO2: the faulting guest-physical address.
        gpa: GuestPhysAddr,
        /// EXITINFO1: the error code.
        error: NpfErrorCode,
    },
    /// INTn (VMEXIT_SWINT).
    SoftwareInterrupt {
        /// EXITINFO1 bits 7:0 with decode assists (APM "Decode Assists"), else 0.
        vector: u8,
    },
    /// INVLPG (VMEXIT_INVLPG).
    Invlpg {
        /// EXITINFO1 with decode assists (APM "Decode Assists"): the linear address.
        linear: u64,
    },
    /// A CR was written (VMEXIT_CRx_WRITE_TRAP).
    CrWriteTrap {
        /// The control register.
        cr: u8,
        /// EXITINFO1: the new value.
        value: u64,
    },
    /// EFER was written (VMEXIT_EFER_WRITE_TRAP).
    EferWriteTrap {
        /// EXITINFO1: the new value.
        value: u64,
    },
    /// A physical interrupt arrived (VMEXIT_INTR); the host takes it after STGI.
    Intr,
    /// A physical NMI arrived (VMEXIT_NMI).
    Nmi,
    /// The guest can take the pending virtual interrupt (VMEXIT_VINTR).
    Vintr,
    /// CPUID (VMEXIT_CPUID).
    Cpuid,
    /// HLT (VMEXIT_HLT).
    Hlt,
    /// PAUSE (VMEXIT_PAUSE).
    Pause,
    /// VMMCALL, the hypercall (VMEXIT_VMMCALL).
    Vmmcall,
    /// Shutdown, e.g. a triple fault (VMEXIT_SHUTDOWN); the guest state is
    /// undefined (APM 15.14).
    Shutdown,
    /// VMRUN failed its consistency checks (VMEXIT_INVALID): the guest never ran.
    Invalid,
    /// An IOIO or MSR exit whose EXITINFO1 has no defined meaning.
    Malformed {
        /// The exit code.
        code: ExitCode,
        /// The undecodable EXITINFO1.
        exit_info1: u64,
    },
    /// Any other exit; its code names it.
    Other(ExitCode),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_table_c1() {
        let expected = [
            (0x00, ExitCode::CrRead(0)),
            (0x03, ExitCode::CrRead(3)),
            (0x1F, ExitCode::CrWrite(15)),
            (0x27, ExitCode::DrRead(7)),
            (0x30, ExitCode::DrWrite(0)),
            (0x40, ExitCode::Exception(0)),
            (0x4E, ExitCode::Exception(14)),
            (0x5F, ExitCode::Exception(31)),
            (0x60, ExitCode::Intr),
            (0x61, ExitCode::Nmi),
            (0x64, ExitCode::Vintr),
            (0x65, ExitCode::Cr0SelWrite),
            (0x72, ExitCode::Cpuid),
            (0x75, ExitCode::Swint),
            (0x78, ExitCode::Hlt),
            (0x79, ExitCode::Invlpg),
            (0x7A, ExitCode::Invlpga),
            (0x7B, ExitCode::Ioio),
            (0x7C, ExitCode::Msr),
            (0x7D, ExitCode::TaskSwitch),
            (0x7F, ExitCode::Shutdown),
            (0x80, ExitCode::Vmrun),
            (0x81, ExitCode::Vmmcall),
            (0x87, ExitCode::Rdtscp),
            (0x8C, ExitCode::MwaitConditional),
            (0x8D, ExitCode::Xsetbv),
            (0x8E, ExitCode::Rdpru),
            (0x8F, ExitCode::EferWriteTrap),
            (0x90, ExitCode::CrWriteTrap(0)),
            (0x98, ExitCode::CrWriteTrap(8)),
            (0xA2, ExitCode::Invpcid),
            (0xA6, ExitCode::IdleHlt),
            (0x400, ExitCode::Npf),
            (0x401, ExitCode::AvicIncompleteIpi),
            (0x402, ExitCode::AvicNoaccel),
            (0x403, ExitCode::Vmgexit),
            (u64::MAX, ExitCode::Invalid),
        ];
        for (raw, code) in expected {
            assert_eq!(ExitCode::from_raw(raw), code, "{raw:#x}");
            assert_eq!(code.raw(), raw, "{code:?}");
        }
    }

    #[test]
    fn every_code_round_trips() {
        for raw in (0..0x500u64).chain([u64::MAX, u64::MAX - 1, 0x8000_0001]) {
            let code = ExitCode::from_raw(raw);
            assert_eq!(code.raw(), raw, "{code:?}");
            // Names and descriptions exist for everything.
            assert!(!code.describe().is_empty());
            assert!(!code.apm_name().is_empty());
        }
        // VMEXIT_INVALID truncated to 32 bits (QEMU's TCG) is still VMEXIT_INVALID.
        assert_eq!(ExitCode::from_raw(0xFFFF_FFFF), ExitCode::Invalid);
        assert_eq!(
            ExitCode::from_raw(0xFFFF_FFFE),
            ExitCode::Unknown(0xFFFF_FFFE)
        );
        assert_eq!(ExitCode::from_raw(0xA7), ExitCode::Unknown(0xA7));
        assert_eq!(ExitCode::from_raw(0x404), ExitCode::Unknown(0x404));
        assert_eq!(
            ExitCode::from_raw(u64::MAX - 1),
            ExitCode::Unknown(u64::MAX - 1)
        );
        // Hand-built out-of-range numbers stay in their range.
        assert_eq!(ExitCode::CrRead(0x13).raw(), 0x03);
        assert_eq!(ExitCode::Exception(33).raw(), 0x41);
    }

    #[test]
    fn exit_code_names() {
        assert_eq!(ExitCode::Cpuid.apm_name(), "VMEXIT_CPUID");
        assert_eq!(ExitCode::Npf.describe(), "nested page fault");
        assert_eq!(format!("{}", ExitCode::Hlt), "HLT (0x78)");
        assert_eq!(format!("{}", ExitCode::CrWrite(3)), "CR3 write (0x13)");
        assert_eq!(
            format!("{}", ExitCode::Exception(13)),
            "exception 13 (0x4d)"
        );
        assert_eq!(
            format!("{}", ExitCode::CrWriteTrap(4)),
            "CR4 write trap (0x94)"
        );
        assert!(format!("{}", ExitCode::Invalid).starts_with("VMEXIT_INVALID (-1)"));
        assert_eq!(
            format!("{}", ExitCode::Unknown(0x4242)),
            "unknown exit code (0x4242)"
        );
    }

    #[test]
    fn ioio_exit_info() {
        // IN AL, DX from port 0x3F8, 16-bit addressing irrelevant but set.
        let raw = (0x3F8 << 16) | IoExitInfo::A16 | IoExitInfo::SZ8 | IoExitInfo::TYPE_IN;
        let info = IoExitInfo::from_exit_info1(raw).unwrap();
        assert_eq!(info.port, 0x3F8);
        assert_eq!(info.direction, IoDirection::In);
        assert_eq!(info.size, IoSize::Byte);
        assert_eq!(info.size.bytes(), 1);
        assert_eq!(info.address_size, Some(AddressSize::Bits16));
        assert!(!info.string && !info.rep);
        assert_eq!(info.segment, Some(SegmentRegister::Es));

        // REP OUTSD to 0xCF8 with 64-bit addressing from FS.
        let raw = (0xCF8 << 16)
            | (4 << 10)
            | IoExitInfo::A64
            | IoExitInfo::SZ32
            | IoExitInfo::REP
            | IoExitInfo::STR;
        let info = IoExitInfo::from_exit_info1(raw).unwrap();
        assert_eq!(info.port, 0xCF8);
        assert_eq!(info.direction, IoDirection::Out);
        assert_eq!((info.string, info.rep), (true, true));
        assert_eq!(info.size, IoSize::Dword);
        assert_eq!(info.address_size, Some(AddressSize::Bits64));
        assert_eq!(info.segment, Some(SegmentRegister::Fs));

        let word = IoExitInfo::from_exit_info1(IoExitInfo::SZ16 | IoExitInfo::A32).unwrap();
        assert_eq!(
            (word.size, word.address_size),
            (IoSize::Word, Some(AddressSize::Bits32))
        );
        assert_eq!(word.port, 0);

        // Undefined: no size bit, two size bits; odd address size and segment.
        assert_eq!(IoExitInfo::from_exit_info1(0), None);
        assert_eq!(
            IoExitInfo::from_exit_info1(IoExitInfo::SZ8 | IoExitInfo::SZ16),
            None
        );
        let odd = IoExitInfo::from_exit_info1(IoExitInfo::SZ8 | (7 << 7) | (6 << 10)).unwrap();
        assert_eq!((odd.address_size, odd.segment), (None, None));
        // Every 32-bit value decodes without panicking.
        for shift in 0..64 {
            let _ = IoExitInfo::from_exit_info1(0x5555_5555_5555_5555u64.rotate_left(shift));
        }
    }

    #[test]
    fn msr_exit_info() {
        assert_eq!(MsrAccess::from_exit_info1(0), Some(MsrAccess::Read));
        assert_eq!(MsrAccess::from_exit_info1(1), Some(MsrAccess::Write));
        assert_eq!(MsrAccess::from_exit_info1(2), None);
        assert_eq!(MsrAccess::from_exit_info1(u64::MAX), None);
    }

    #[test]
    fn npf_error_code() {
        // Write to a not-present page, final translation.
        let e = NpfErrorCode::from_exit_info1((1 << 32) | 0b110);
        assert!(e.contains(NpfErrorCode::WRITE | NpfErrorCode::USER | NpfErrorCode::FINAL_GPA));
        assert!(!e.contains(NpfErrorCode::PRESENT));
        assert_eq!(e.access(), NpfAccess::Write);
        // Fetch, present, during the guest's page walk.
        let e = NpfErrorCode::from_exit_info1((1 << 33) | 0b1_0101);
        assert!(e.contains(NpfErrorCode::PAGE_TABLE_WALK | NpfErrorCode::FETCH));
        assert_eq!(e.access(), NpfAccess::Fetch);
        assert_eq!(
            NpfErrorCode::from_exit_info1(0b100).access(),
            NpfAccess::Read
        );
        assert_eq!(NpfErrorCode::RESERVED_BIT.bits(), 1 << 3);
        // Unknown bits are kept.
        assert_eq!(NpfErrorCode::from_exit_info1(1 << 40).bits(), 1 << 40);
    }

    #[test]
    fn event_info_layout() {
        let gp = EventInfo::general_protection();
        assert_eq!(gp.raw(), 0x8000_0B0D);
        assert!(gp.is_valid());
        assert_eq!(gp.vector(), 13);
        assert_eq!(gp.kind(), EventType::Exception);
        assert_eq!(gp.error_code(), Some(0));

        let pf = EventInfo::exception(Exception::PageFault, 0x6);
        assert_eq!(pf.raw(), (6 << 32) | 0x8000_0B0E);
        assert_eq!(pf.error_code(), Some(6));

        // No error code for #UD, even if one is passed.
        let ud = EventInfo::exception(Exception::InvalidOpcode, 0x1234);
        assert_eq!(ud.raw(), 0x8000_0306);
        assert_eq!(ud.error_code(), None);
        assert_eq!(EventInfo::invalid_opcode(), ud);

        assert_eq!(EventInfo::external_interrupt(0x20).raw(), 0x8000_0020);
        assert_eq!(EventInfo::nmi().raw(), 0x8000_0202);
        assert_eq!(EventInfo::software_interrupt(0x80).raw(), 0x8000_0480);
        assert_eq!(EventInfo::nmi().kind(), EventType::Nmi);
        assert_eq!(
            EventInfo::software_interrupt(3).kind(),
            EventType::SoftwareInterrupt
        );

        assert!(!EventInfo::NONE.is_valid());
        assert_eq!(EventInfo::NONE.valid(), None);
        assert_eq!(gp.valid(), Some(gp));
        assert_eq!(EventInfo(5 << 8 | 1 << 31).kind(), EventType::Reserved(5));
        assert_eq!(EventType::Reserved(9).raw(), 1);
        for raw in 0..8 {
            assert_eq!(EventType::from_raw(raw).raw(), raw);
        }
        assert!(format!("{:?}", EventInfo::NONE).contains("none"));
        assert!(format!("{gp:?}").contains("vector: 13"));
    }

    #[test]
    fn exceptions() {
        for v in 0..=255u8 {
            if let Some(e) = Exception::from_vector(v) {
                assert_eq!(e.vector(), v);
            }
        }
        assert_eq!(Exception::from_vector(2), None);
        assert_eq!(Exception::from_vector(9), None);
        assert_eq!(Exception::from_vector(32), None);
        assert!(Exception::PageFault.has_error_code());
        assert!(Exception::VmmCommunication.has_error_code());
        assert!(!Exception::Breakpoint.has_error_code());
    }

    #[test]
    fn cr_and_dr_decode_assists() {
        assert_eq!(
            CrAccessInfo::from_exit_info1((1 << 63) | 3),
            CrAccessInfo::MovCr { gpr: Gpr::Rbx }
        );
        assert_eq!(
            CrAccessInfo::from_exit_info1((1 << 63) | 0xF),
            CrAccessInfo::MovCr { gpr: Gpr::R15 }
        );
        // CLTS/LMSW, or no decode assists.
        assert_eq!(CrAccessInfo::from_exit_info1(0), CrAccessInfo::Other);
        assert_eq!(CrAccessInfo::from_exit_info1(5), CrAccessInfo::Other);
        assert_eq!(dr_access_gpr(9), Gpr::R9);
        assert_eq!(dr_access_gpr(0x14), Gpr::Rsp);
        for i in 0..16 {
            assert_eq!(Gpr::from_index(i).index(), i);
        }
    }

    fn exit(code: u64, info1: u64, info2: u64) -> ExitInfo {
        let mut vmcb = Vmcb::new();
        vmcb.control.exit_code = code;
        vmcb.control.exit_info1 = info1;
        vmcb.control.exit_info2 = info2;
        vmcb.control.next_rip = 0x1003;
        vmcb.save.rip = 0x1000;
        ExitInfo::from_vmcb(&vmcb)
    }

    #[test]
    fn decode_exits() {
        let e = exit(0x72, 0, 0);
        assert_eq!(e.decode(), Exit::Cpuid);
        assert_eq!(e.instruction_len(), Some(3));
        assert_eq!(e.exit_int_info, EventInfo::NONE);

        assert_eq!(
            exit(0x4E, 0x2, 0xdead_b000).decode(),
            Exit::Exception {
                vector: 14,
                error_code: Some(2),
                fault_address: Some(0xdead_b000)
            }
        );
        assert_eq!(
            exit(0x46, 0x99, 0x77).decode(),
            Exit::Exception {
                vector: 6,
                error_code: None,
                fault_address: None
            }
        );
        assert_eq!(
            exit(0x7C, 1, 0).decode(),
            Exit::Msr {
                access: MsrAccess::Write
            }
        );
        assert_eq!(
            exit(0x7C, 7, 0).decode(),
            Exit::Malformed {
                code: ExitCode::Msr,
                exit_info1: 7
            }
        );
        assert_eq!(
            exit(0x7B, 0, 0).decode(),
            Exit::Malformed {
                code: ExitCode::Ioio,
                exit_info1: 0
            }
        );
        assert_eq!(
            exit(0x400, 0x1_0000_0007, 0x1234_5678).decode(),
            Exit::NestedPageFault {
                gpa: GuestPhysAddr::new(0x1234_5678),
                error: NpfErrorCode::PRESENT
                    | NpfErrorCode::WRITE
                    | NpfErrorCode::USER
                    | NpfErrorCode::FINAL_GPA
            }
        );
        assert_eq!(
            exit(0x13, (1 << 63) | 1, 0).decode(),
            Exit::CrAccess {
                cr: 3,
                write: true,
                info: CrAccessInfo::MovCr { gpr: Gpr::Rcx }
            }
        );
        assert_eq!(
            exit(0x27, 2, 0).decode(),
            Exit::DrAccess {
                dr: 7,
                write: false,
                gpr: Gpr::Rdx
            }
        );
        assert_eq!(
            exit(0x94, 0x6f0, 0).decode(),
            Exit::CrWriteTrap {
                cr: 4,
                value: 0x6f0
            }
        );
        assert_eq!(
            exit(0x8F, 0x1d00, 0).decode(),
            Exit::EferWriteTrap { value: 0x1d00 }
        );
        assert_eq!(
            exit(0x75, 0x80, 0).decode(),
            Exit::SoftwareInterrupt { vector: 0x80 }
        );
        assert_eq!(
            exit(0x79, 0xffff_8000_0000_1000, 0).decode(),
            Exit::Invlpg {
                linear: 0xffff_8000_0000_1000
            }
        );
        assert_eq!(exit(0x7F, 0, 0).decode(), Exit::Shutdown);
        assert_eq!(exit(0x81, 0, 0).decode(), Exit::Vmmcall);
        assert_eq!(exit(0x78, 0, 0).decode(), Exit::Hlt);
        assert_eq!(exit(0x60, 0, 0).decode(), Exit::Intr);
        assert_eq!(exit(u64::MAX, 0, 0).decode(), Exit::Invalid);
        assert_eq!(exit(0x8D, 0, 0).decode(), Exit::Other(ExitCode::Xsetbv));
        assert_eq!(
            exit(0x999, 0, 0).decode(),
            Exit::Other(ExitCode::Unknown(0x999))
        );
    }

    #[test]
    fn decode_is_total() {
        // Every exit code with awkward EXITINFO values decodes.
        for code in (0..0x420u64).chain([u64::MAX, 0x8000_0000]) {
            for info in [0, 1, u64::MAX, 0x8000_0000_0000_0000] {
                let _ = exit(code, info, info).decode();
            }
        }
    }

    #[test]
    fn instruction_length_needs_a_sane_nrip() {
        let mut e = exit(0x72, 0, 0);
        e.next_rip = 0;
        assert_eq!(e.instruction_len(), None);
        e.next_rip = 0x1000;
        assert_eq!(e.instruction_len(), None);
        e.next_rip = 0x1010;
        assert_eq!(e.instruction_len(), None);
        e.next_rip = 0x100f;
        assert_eq!(e.instruction_len(), Some(15));
    }
}
