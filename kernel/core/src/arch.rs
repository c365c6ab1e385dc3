//! Backend-neutral architectural types: what a VM exit is ([`Exit`]), what
//! the backend does about it ([`Action`], [`Event`]), the guest registers the
//! world switch saves ([`GuestRegs`]), the guest state the backend keeps in
//! its control block ([`GuestCpu`], [`Reg`]), why a VM stopped
//! ([`StopReason`]) and the services the kernel offers handlers
//! ([`Platform`], [`GuestMemory`]).
//!
//! This module imports nothing else from the crate: the VT-x and AMD-V
//! backends, the exit dispatcher ([`crate::exit`]) and the policy modules all
//! build on it, and it on none of them.

use core::fmt;

use bitflags::bitflags;

/// Width of a port or MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessSize {
    /// 8-bit access (`in al, dx`).
    Byte = 1,
    /// 16-bit access (`in ax, dx`).
    Word = 2,
    /// 32-bit access (`in eax, dx`).
    Dword = 4,
}

impl AccessSize {
    /// Decodes a width in bytes (1, 2 or 4), as found in exit qualifications.
    pub fn from_bytes(bytes: u8) -> Option<Self> {
        match bytes {
            1 => Some(Self::Byte),
            2 => Some(Self::Word),
            4 => Some(Self::Dword),
            _ => None,
        }
    }

    /// Width in bytes.
    pub fn bytes(self) -> u8 {
        self as u8
    }

    /// All-ones value of this width (what an unclaimed read returns).
    pub fn mask(self) -> u32 {
        match self {
            Self::Byte => 0xFF,
            Self::Word => 0xFFFF,
            Self::Dword => 0xFFFF_FFFF,
        }
    }
}

/// Direction of a port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDir {
    /// `IN`: the guest reads; the handler writes the result into RAX.
    In,
    /// `OUT`: the guest writes `value` (already truncated to the access size by
    /// the backend, or truncated here).
    Out {
        /// Value from AL/AX/EAX.
        value: u32,
    },
}

/// One decoded port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoAccess {
    /// Port number (DX or immediate).
    pub port: u16,
    /// Access width.
    pub size: AccessSize,
    /// Direction and, for `OUT`, the value.
    pub dir: IoDir,
    /// `INS`/`OUTS` or a `REP` prefix. Not emulated: the VM is stopped with a
    /// report (see [`io`]).
    pub string_or_rep: bool,
}

bitflags! {
    /// Kind of access that caused a nested-paging (EPT/NPT) violation.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Access: u8 {
        /// Data read.
        const READ = 1 << 0;
        /// Data write.
        const WRITE = 1 << 1;
        /// Instruction fetch.
        const EXECUTE = 1 << 2;
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.contains(Self::READ) { 'r' } else { '-' };
        let w = if self.contains(Self::WRITE) { 'w' } else { '-' };
        let x = if self.contains(Self::EXECUTE) {
            'x'
        } else {
            '-'
        };
        write!(f, "{r}{w}{x}")
    }
}

/// A VM exit, decoded once by the backend. Exhaustively matched by
/// [`handle_exit`]; adding a variant forces every consumer to decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `CPUID`; leaf in EAX, subleaf in ECX (read from [`GuestRegs`]).
    Cpuid,
    /// `HLT`.
    Hlt,
    /// Port I/O.
    Io(IoAccess),
    /// `RDMSR` of `msr` (ECX).
    Rdmsr {
        /// MSR index.
        msr: u32,
    },
    /// `WRMSR` of `value` (EDX:EAX) to `msr` (ECX).
    Wrmsr {
        /// MSR index.
        msr: u32,
        /// Value to write.
        value: u64,
    },
    /// `VMCALL` (VT-x) or `VMMCALL` (AMD-V): a hypercall, see [`crate::hypercall`].
    Vmcall,
    /// EPT/NPT violation or misconfiguration at guest-physical `gpa`.
    MemoryViolation {
        /// Faulting guest-physical address.
        gpa: u64,
        /// Access kind.
        access: Access,
        /// Guest-linear address, when the hardware reports one.
        linear: Option<u64>,
    },
    /// `MOV` to or from a control register, `CLTS` or `LMSW` that the
    /// backend intercepted (a guest/host-owned bit, or CR3/CR8 exiting).
    CrAccess(CrAccess),
    /// `XSETBV`: XCR number in ECX, value in EDX:EAX (read from [`GuestRegs`]).
    Xsetbv,
    /// An instruction the guest's CPU does not have (VMX and SMX
    /// instructions, `MONITOR`/`MWAIT`, which CPUID hides): `#UD`, as on a
    /// CPU without the feature.
    UndefinedInstruction {
        /// The instruction's name, for statistics.
        name: &'static str,
    },
    /// `INVD`: the guest may not discard the host's dirty cache lines, so it
    /// completes as a no-op (the guest's own data stays coherent).
    Invd,
    /// `RDPMC`: no performance counters are virtualized (CPUID leaf 0xA is
    /// zero), so `#GP(0)`, as for a counter that does not exist.
    Rdpmc,
    /// A guest's first `MOV` to or from a debug register: the backend
    /// intercepts them until the vCPU holds DR0-DR3 in hardware, so that
    /// only vCPUs that use them have them switched. The vCPU takes them
    /// ([`Reg::DebugRegisters`]) and the instruction runs again, natively.
    DebugRegister,
    /// The guest triple-faulted (shutdown).
    TripleFault,
    /// A host interrupt arrived while the guest ran; the kernel services it.
    ExternalInterrupt,
    /// The guest became interruptible (interrupt-window exiting).
    InterruptWindow,
    /// The preemption timer fired: the vCPU's time slice is over.
    PreemptionTimer,
    /// An intercepted guest exception.
    Exception {
        /// Exception vector (0..=31).
        vector: u8,
        /// Error code, for vectors that push one.
        error_code: Option<u32>,
    },
    /// VM entry failed (invalid guest state, MSR loading, machine check).
    EntryFailed {
        /// Hardware basic exit reason (VT-x) or exit code (AMD-V).
        code: u32,
        /// Exit qualification.
        qualification: u64,
    },
    /// Any exit the backend decoded but hvcore has no handler for.
    Unhandled {
        /// Hardware exit reason number.
        code: u32,
        /// Its name from the backend's table (e.g. "XSETBV").
        name: &'static str,
        /// Exit qualification (0 if none).
        qualification: u64,
    },
}

// Architectural register bits the policy and the backends share
// (SDM Vol. 3A 2.2.1, 2.5; Vol. 1 13.3).

/// CR0.PE: protection enable (SDM Vol. 3A 2.5).
pub const CR0_PE: u64 = 1 << 0;
/// CR0.TS: task switched.
pub const CR0_TS: u64 = 1 << 3;
/// CR0.ET: extension type (hardwired to 1).
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NW: not write-through.
pub const CR0_NW: u64 = 1 << 29;
/// CR0.CD: cache disable.
pub const CR0_CD: u64 = 1 << 30;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR0 bits the hypervisor owns (see the module docs).
pub const CR0_HOST_OWNED: u64 = CR0_PE | CR0_PG | CR0_CD | CR0_NW;

/// CR4.PAE (SDM Vol. 3A 2.5).
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.PCIDE.
pub const CR4_PCIDE: u64 = 1 << 17;
/// CR4.OSXSAVE.
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// CR4.VMXE: hidden from guests (reads as 0, setting it is `#GP`).
pub const CR4_VMXE: u64 = 1 << 13;
/// CR4 bits a guest may own: VME, PVI, TSD, DE, PSE, PAE, MCE, PGE, PCE,
/// OSFXSR, OSXMMEXCPT, UMIP, FSGSBASE, PCIDE, OSXSAVE, SMEP, SMAP.
pub const CR4_GUEST_OWNED: u64 =
    0x7FF | (1 << 11) | (1 << 16) | CR4_PCIDE | CR4_OSXSAVE | (1 << 20) | (1 << 21);

/// XCR0.X87 (SDM Vol. 1 13.3): must always be set.
pub const XCR0_X87: u64 = 1 << 0;
/// XCR0.SSE.
pub const XCR0_SSE: u64 = 1 << 1;
/// XCR0.AVX: requires SSE.
pub const XCR0_AVX: u64 = 1 << 2;
/// XCR0 opmask, ZMM_Hi256 and Hi16_ZMM (AVX-512): all or none, and AVX.
pub const XCR0_AVX512: u64 = 0b111 << 5;

/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active (read only).
pub const EFER_LMA: u64 = 1 << 10;

/// A control-register access, decoded from the exit qualification (VT-x,
/// SDM Table 28-3) or the intercept and decode assists (AMD-V).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrAccess {
    /// Control register number (0, 3, 4 or 8).
    pub cr: u8,
    /// What the instruction does.
    pub kind: CrAccessKind,
}

/// The instruction behind a [`CrAccess`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccessKind {
    /// `MOV CRn, reg`: general-purpose register number `gpr` (0 = RAX ...
    /// 4 = RSP ... 15 = R15) is the source.
    MovTo {
        /// Source register number.
        gpr: u8,
    },
    /// `MOV reg, CRn`: register number `gpr` is the destination.
    MovFrom {
        /// Destination register number.
        gpr: u8,
    },
    /// `CLTS`: clears CR0.TS.
    Clts,
    /// `LMSW`: loads CR0 bits 3:0 from `source` (and can set, never clear, PE).
    Lmsw {
        /// The 16-bit source operand.
        source: u16,
    },
}

/// Guest state that the backend keeps in its control block (VMCS, VMCB) or
/// in hardware registers switched with the vCPU, named independently of the
/// backend.
///
/// Control registers are the *guest-visible* values: the backend maps them
/// to what the hardware runs with (VT-x fixed bits, host-owned CR0.CD/NW,
/// CR4.VMXE) and back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    /// CR0 as the guest sees it.
    Cr0,
    /// CR3.
    Cr3,
    /// CR4 as the guest sees it.
    Cr4,
    /// CR8 (task-priority register), when the backend intercepts it.
    Cr8,
    /// IA32_EFER; writing it also sets the backend's long-mode-active control.
    Efer,
    /// XCR0 (XSAVE feature mask), loaded into hardware while the vCPU runs.
    Xcr0,
    /// RSP (kept by the backend, not in [`GuestRegs`]).
    Rsp,
    /// RFLAGS.
    Rflags,
    /// Current privilege level (read only: SS.DPL).
    Cpl,
    /// 1 in 64-bit mode (EFER.LMA and CS.L), else 0 (read only): outside it,
    /// instructions use 32-bit operands for control registers.
    Mode64,
    /// IA32_FS_BASE.
    FsBase,
    /// IA32_GS_BASE.
    GsBase,
    /// IA32_KERNEL_GS_BASE.
    KernelGsBase,
    /// IA32_STAR.
    Star,
    /// IA32_LSTAR.
    Lstar,
    /// IA32_CSTAR.
    Cstar,
    /// IA32_FMASK.
    Fmask,
    /// IA32_SYSENTER_CS.
    SysenterCs,
    /// IA32_SYSENTER_ESP.
    SysenterEsp,
    /// IA32_SYSENTER_EIP.
    SysenterEip,
    /// IA32_PAT.
    Pat,
    /// IA32_DEBUGCTL.
    DebugCtl,
    /// Whether the vCPU holds DR0-DR3 in hardware (1) or its accesses to
    /// them exit (0). Writing 1 hands them to it for good (the backend stops
    /// intercepting them); 0 cannot be written.
    DebugRegisters,
    /// IA32_TSC_AUX (RDTSCP's result in ECX).
    TscAux,
}

/// The backend could not read or write guest state (a failed VMREAD or
/// VMWRITE: a hypervisor bug, reported by stopping the VM, never a zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateError {
    /// The register that could not be accessed.
    pub reg: Reg,
}

/// A failed access to backend-held state stops the VM with a report.
pub fn state_failure(e: StateError, regs: &GuestRegs) -> Action {
    Action::Stop(StopReason::StateAccessFailed {
        reg: e.reg,
        rip: regs.rip,
    })
}

/// What the hardware lets a guest use, decided once at boot from CPUID and
/// the backend's capabilities; policy checks guest requests against it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestLimits {
    /// XCR0 bits a guest may set (what the host CPU supports of x87, SSE,
    /// AVX and AVX-512 state); 0 when XSAVE is not offered.
    pub xcr0_allowed: u64,
    /// CR4 bits a guest may set (supported by the CPU and allowed by policy).
    pub cr4_allowed: u64,
    /// Guest-physical address width (CR3 bits above it are reserved).
    pub phys_addr_bits: u8,
    /// CR0.PE and CR0.PG may be cleared (VT-x unrestricted guest; always on AMD-V).
    pub unrestricted: bool,
}

/// Access to the guest state the backend holds (see [`Reg`]); faked in host
/// tests, implemented over the VMCS by the VT-x backend.
pub trait GuestCpu {
    /// Reads a register.
    fn read(&mut self, reg: Reg) -> Result<u64, StateError>;
    /// Writes a register (control registers: the guest-visible value).
    fn write(&mut self, reg: Reg, value: u64) -> Result<(), StateError>;
    /// What this machine lets guests use.
    fn limits(&self) -> GuestLimits;
}

/// Guest general-purpose registers, plus the read-only `rip` and
/// `instruction_len` the backend supplies. Handlers write results into the
/// GPRs; the backend writes them back before the next entry.
/// The layout is `repr(C)` in this order because the VT-x world switch saves
/// and loads RAX..R15 at fixed offsets (`kernel/src/vmm/entry.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct GuestRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    /// Guest RIP of the exiting instruction (read-only for handlers).
    pub rip: u64,
    /// Length of the exiting instruction in bytes (read-only for handlers).
    pub instruction_len: u64,
}

impl GuestRegs {
    /// General-purpose register `n` in the instruction encoding's order
    /// (0 = RAX ... 15 = R15); `None` for 4 (RSP, kept by the backend) and
    /// numbers above 15.
    pub fn gpr(&self, n: u8) -> Option<u64> {
        Some(match n {
            0 => self.rax,
            1 => self.rcx,
            2 => self.rdx,
            3 => self.rbx,
            5 => self.rbp,
            6 => self.rsi,
            7 => self.rdi,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            15 => self.r15,
            _ => return None,
        })
    }

    /// Writes general-purpose register `n` (see [`GuestRegs::gpr`]);
    /// returns false for RSP and invalid numbers.
    pub fn set_gpr(&mut self, n: u8, value: u64) -> bool {
        let slot = match n {
            0 => &mut self.rax,
            1 => &mut self.rcx,
            2 => &mut self.rdx,
            3 => &mut self.rbx,
            5 => &mut self.rbp,
            6 => &mut self.rsi,
            7 => &mut self.rdi,
            8 => &mut self.r8,
            9 => &mut self.r9,
            10 => &mut self.r10,
            11 => &mut self.r11,
            12 => &mut self.r12,
            13 => &mut self.r13,
            14 => &mut self.r14,
            15 => &mut self.r15,
            _ => return false,
        };
        *slot = value;
        true
    }

    /// Writes a 32-bit result to EAX the way hardware does: the upper half of
    /// RAX is cleared.
    pub fn set_eax(&mut self, v: u32) {
        self.rax = u64::from(v);
    }
}

/// How an injected event is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Hardware exception (vectors 0..=31, except 2).
    Exception,
    /// Non-maskable interrupt (vector 2).
    Nmi,
    /// External interrupt (e.g. from the virtual PIC), vectors 32..=255.
    ExternalInterrupt,
}

/// An event to inject into the guest at the next VM entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Delivery type.
    pub kind: EventKind,
    /// Vector.
    pub vector: u8,
    /// Error code to push, for exceptions that have one.
    pub error_code: Option<u32>,
}

impl Event {
    /// `#UD`.
    pub const UD: Event = Event {
        kind: EventKind::Exception,
        vector: 6,
        error_code: None,
    };
    /// `#GP(0)`.
    pub const GP0: Event = Event {
        kind: EventKind::Exception,
        vector: 13,
        error_code: Some(0),
    };

    /// A non-maskable interrupt (vector 2).
    pub const NMI: Event = Event {
        kind: EventKind::Nmi,
        vector: 2,
        error_code: None,
    };

    /// An external interrupt with `vector`.
    pub fn interrupt(vector: u8) -> Self {
        Event {
            kind: EventKind::ExternalInterrupt,
            vector,
            error_code: None,
        }
    }
}

/// What the backend does after an exit was handled. See the module docs for
/// the RIP contract.
///
/// A plain `u8` tag (no niche shared with [`StopReason`]): every exit
/// matches on it several times, and a tag of its own is one load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Action {
    /// Re-enter the guest; RIP unchanged.
    Resume,
    /// Skip the exiting instruction and re-enter.
    AdvanceRip,
    /// Inject an event and re-enter; RIP unchanged (faults are taken *at* the
    /// exiting instruction).
    Inject(Event),
    /// Skip the exiting instruction, then give up the rest of the time slice
    /// (`Scheduler::on_yield`).
    Yield,
    /// The time slice is over (preemption timer); RIP unchanged
    /// (`Scheduler::on_exit_slice_end`).
    Preempted,
    /// Skip the `HLT`, then wait for an interrupt (`Scheduler::on_halt`).
    Halt,
    /// Stop this VM; the backend prints [`VmContext::stop_report`] and never
    /// enters it again. Other VMs continue.
    Stop(StopReason),
}

impl Action {
    /// Whether carrying the action out involves the VM ([`crate::exit::settle`]):
    /// an injected event (counted) or a stop.
    #[inline]
    pub fn needs_vm(&self) -> bool {
        matches!(self, Action::Inject(_) | Action::Stop(_))
    }

    /// The guest RIP to use on the next entry: the single definition of RIP
    /// advancement (the backend calls this and nothing else moves RIP).
    #[inline]
    pub fn next_rip(&self, rip: u64, instruction_len: u64) -> u64 {
        match self {
            Action::AdvanceRip | Action::Yield | Action::Halt => rip.wrapping_add(instruction_len),
            Action::Resume | Action::Inject(_) | Action::Preempted | Action::Stop(_) => rip,
        }
    }
}

/// What the backend carries out after an exit: the [`Action`] without the
/// stop's reason, which [`crate::exit::handle_exit`] has already recorded
/// (the vCPU's run state, the VM's report). Small enough to come back in
/// registers, which matters on the exit path: every exit moves it through
/// the backend's loop, and the reason alone is 56 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Next {
    // The order is the exit loop's: the three that re-enter come first
    // and the three that skip the instruction are adjacent, so each
    // question is one compare of the tag.
    /// [`Action::Resume`].
    Resume,
    /// [`Action::Inject`].
    Inject(Event),
    /// [`Action::AdvanceRip`].
    AdvanceRip,
    /// [`Action::Yield`].
    Yield,
    /// [`Action::Halt`].
    Halt,
    /// [`Action::Preempted`].
    Preempted,
    /// [`Action::Stop`].
    Stop,
}

impl From<&Action> for Next {
    #[inline(always)]
    fn from(action: &Action) -> Self {
        match *action {
            Action::Resume => Next::Resume,
            Action::AdvanceRip => Next::AdvanceRip,
            Action::Inject(ev) => Next::Inject(ev),
            Action::Yield => Next::Yield,
            Action::Preempted => Next::Preempted,
            Action::Halt => Next::Halt,
            Action::Stop(_) => Next::Stop,
        }
    }
}

impl Next {
    /// The new guest RIP when the next entry moves it past the exiting
    /// instruction (as [`Action::next_rip`] decides), `None` when RIP stays.
    #[inline(always)]
    pub fn skipped_rip(&self, rip: u64, instruction_len: u64) -> Option<u64> {
        match self {
            Next::AdvanceRip | Next::Yield | Next::Halt => Some(rip.wrapping_add(instruction_len)),
            Next::Resume | Next::Inject(_) | Next::Preempted | Next::Stop => None,
        }
    }
}

/// Services the kernel provides to exit handlers (faked in host tests).
pub trait Platform {
    /// `CPUID` executed on the physical CPU.
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// Prints `line` (no trailing newline) prefixed with the VM name on the
    /// host serial console.
    fn console_write(&mut self, vm_name: &str, line: &str);
    /// Prints guest console bytes as they are: no prefix, no line
    /// buffering, control characters included. Used only while the host
    /// console is attached to the VM ([`crate::vcpu::VmContext::set_raw_console`]),
    /// when a user asked for the guest's terminal.
    fn console_raw(&mut self, vm_name: &str, bytes: &[u8]);
    /// Monotonic time in host TSC ticks; the guest's TSC is derived from it.
    fn now_ticks(&self) -> u64;
    /// The same monotonic time in nanoseconds: the time base of the VM's
    /// devices (PIT, RTC, UART timeouts).
    fn now_ns(&self) -> u64;
    /// Local APIC ID of the physical CPU running this vCPU.
    fn cpu_apic_id(&self) -> u32;
    /// The TSC frequency in Hz guests are told (CPUID 0x15/0x16); 0: unknown.
    fn tsc_hz(&self) -> u64 {
        0
    }
    /// The memory of the VM whose exit is being handled (used by hypercalls).
    fn guest_memory(&self) -> &dyn GuestMemory;
    /// The backend-held state of the vCPU whose exit is being handled.
    fn guest_cpu(&mut self) -> &mut dyn GuestCpu;
    /// RDMSR of one of the vCPU's local APIC MSRs
    /// ([`crate::devices::lapic::is_apic_msr`]): `None` when the VM has no
    /// local APICs (the MSR policy answers then), else the value or #GP.
    fn apic_msr_read(
        &mut self,
        _msr: u32,
    ) -> Option<Result<u64, crate::devices::lapic::ApicFault>> {
        None
    }
    /// WRMSR of one of the vCPU's local APIC MSRs: `None` when the VM has
    /// no local APICs, else done (IPIs sent) or #GP. `Ok(Some(vector))`:
    /// the EOI of a level-triggered vector, for the VM's I/O APIC.
    fn apic_msr_write(
        &mut self,
        _msr: u32,
        _value: u64,
    ) -> Option<Result<Option<u8>, crate::devices::lapic::ApicFault>> {
        None
    }
    /// Whether `gpa` lies in the vCPU's xAPIC register page (a VM with
    /// local APICs, the vCPU's APIC in xAPIC mode).
    fn apic_mmio_claims(&mut self, _gpa: u64) -> bool {
        false
    }
    /// A 32-bit access to the vCPU's xAPIC page at `gpa` (`write` with the
    /// value, or a read): the value read (0 for a write) and, as for
    /// [`Self::apic_msr_write`], the vector of a level-triggered EOI.
    fn apic_mmio(&mut self, _gpa: u64, _write: Option<u32>) -> (u32, Option<u8>) {
        (u32::MAX, None)
    }
}

/// Why a guest-physical read failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMemoryError {
    /// Part of `gpa..gpa+len` is not RAM of this VM.
    OutOfRange {
        /// First byte that could not be read.
        gpa: u64,
    },
}

/// Read access to one VM's guest-physical memory. A guest-supplied address is
/// a claim to check, never a pointer: implementations bound-check the whole
/// range.
pub trait GuestMemory {
    /// Copies `buf.len()` bytes starting at guest-physical `gpa` into `buf`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError>;
}

/// Why a VM stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest asked to stop (hypercall `SHUTDOWN`).
    Shutdown {
        /// Guest-supplied exit code.
        code: u64,
    },
    /// The guest triple-faulted.
    TripleFault {
        /// Guest RIP.
        rip: u64,
    },
    /// A nested-paging violation outside the VM's memory map.
    MemoryViolation {
        /// Faulting guest-physical address.
        gpa: u64,
        /// Guest RIP.
        rip: u64,
        /// Kind of access.
        access: Access,
        /// Guest-linear address, if reported.
        linear: Option<u64>,
    },
    /// An exit hvcore has no handler for.
    Unhandled {
        /// Hardware exit reason.
        code: u32,
        /// Its name.
        name: &'static str,
        /// Exit qualification.
        qualification: u64,
        /// Guest RIP.
        rip: u64,
    },
    /// String or REP port I/O, which is not emulated.
    UnsupportedIo {
        /// Port.
        port: u16,
        /// Guest RIP.
        rip: u64,
    },
    /// VM entry failed (the kernel dumps the guest state as well).
    EntryFailed {
        /// Hardware exit reason / VM-instruction error.
        code: u32,
        /// Exit qualification.
        qualification: u64,
        /// Guest RIP.
        rip: u64,
    },
    /// A guest exception that cannot be reflected (see [`crate::exit::fault`]).
    /// The VM-entry instruction itself failed (VMfailValid/VMfailInvalid):
    /// the backend rejected the VM's state or controls.
    EntryInstructionFailed {
        /// VM-instruction error number (0 for VMfailInvalid).
        number: u32,
        /// Its meaning (SDM 31.4).
        meaning: &'static str,
        /// Guest RIP.
        rip: u64,
    },
    /// The backend failed to read or write the vCPU's state (a hypervisor
    /// fault, reported instead of guessing a value).
    StateAccessFailed {
        /// The register.
        reg: Reg,
        /// Guest RIP.
        rip: u64,
    },
    /// The guest needs a CPU feature this machine lacks.
    MissingFeature {
        /// What the guest did.
        what: &'static str,
        /// The missing feature.
        feature: &'static str,
        /// Guest RIP.
        rip: u64,
    },
    /// The backend had to read the exiting instruction from guest memory to
    /// learn its length (AMD-V without NRIP save) and could not: its bytes
    /// could not be fetched or do not encode the instruction the exit
    /// reported.
    InstructionNotDecoded {
        /// The instruction the exit reported (e.g. "CPUID").
        instruction: &'static str,
        /// What went wrong.
        why: &'static str,
        /// Guest-linear address of the instruction (CS base + RIP).
        linear: u64,
        /// Guest RIP.
        rip: u64,
    },
    /// The guest asked for a reset through a chipset device (keyboard
    /// controller, reset control register, fast reset).
    ResetRequested {
        /// The device.
        source: &'static str,
        /// Guest RIP.
        rip: u64,
    },
    /// The hypervisor stopped the VM (its run time limit passed, or the
    /// hypervisor is shutting down).
    HostStop,
    /// A guest exception the VM could not handle.
    Fault {
        /// Vector.
        vector: u8,
        /// Error code.
        error_code: Option<u32>,
        /// Guest RIP.
        rip: u64,
    },
}

impl StopReason {
    /// Whether the guest asked to be reset (a triple fault or a chipset
    /// reset): a VM whose policy says so restarts instead of stopping.
    pub fn is_reset(&self) -> bool {
        matches!(
            self,
            StopReason::TripleFault { .. } | StopReason::ResetRequested { .. }
        )
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            StopReason::Shutdown { code } => write!(f, "shutdown, exit code {code}"),
            StopReason::TripleFault { rip } => write!(f, "triple fault at rip {rip:#x}"),
            StopReason::MemoryViolation {
                gpa,
                rip,
                access,
                linear,
            } => {
                write!(
                    f,
                    "EPT/NPT violation at gpa {gpa:#x} outside the VM's memory (access {access}"
                )?;
                if let Some(l) = linear {
                    write!(f, ", linear {l:#x}")?;
                }
                write!(f, ") at rip {rip:#x}")
            }
            StopReason::Unhandled {
                code,
                name,
                qualification,
                rip,
            } => {
                write!(f, "unhandled exit {name} ({code}), qualification {qualification:#x}, at rip {rip:#x}")
            }
            StopReason::UnsupportedIo { port, rip } => {
                write!(
                    f,
                    "unsupported string/REP I/O on port {port:#x} at rip {rip:#x}"
                )
            }
            StopReason::EntryFailed {
                code,
                qualification,
                rip,
            } => {
                write!(f, "VM entry failed, reason {code:#x}, qualification {qualification:#x}, rip {rip:#x}")
            }
            StopReason::EntryInstructionFailed {
                number,
                meaning,
                rip,
            } => {
                write!(f, "VM entry instruction failed: VM-instruction error {number} ({meaning}), rip {rip:#x}")
            }
            StopReason::StateAccessFailed { reg, rip } => {
                write!(
                    f,
                    "hypervisor could not access guest {reg:?} at rip {rip:#x}"
                )
            }
            StopReason::MissingFeature { what, feature, rip } => {
                write!(
                    f,
                    "{what} needs {feature}, which this CPU lacks, at rip {rip:#x}"
                )
            }
            StopReason::InstructionNotDecoded {
                instruction,
                why,
                linear,
                rip,
            } => {
                write!(f, "the length of the {instruction} at rip {rip:#x} (linear {linear:#x}) could not be read from guest memory: {why}")
            }
            StopReason::ResetRequested { source, rip } => {
                write!(f, "guest requested a reset ({source}) at rip {rip:#x}")
            }
            StopReason::HostStop => {
                write!(f, "stopped by the hypervisor (run time limit or shutdown)")
            }
            StopReason::Fault {
                vector,
                error_code,
                rip,
            } => {
                write!(f, "fatal guest exception {vector}")?;
                if let Some(e) = error_code {
                    write!(f, " (error code {e:#x})")?;
                }
                write!(f, " at rip {rip:#x}")
            }
        }
    }
}
