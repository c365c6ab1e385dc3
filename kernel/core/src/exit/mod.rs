//! Backend-neutral VM exits and the single exit-handling entry point.
//!
//! # How the pieces fit
//!
//! ```text
//!  vmx backend (kernel)            hvcore (this crate, no unsafe)
//!  ───────────────────             ─────────────────────────────────────────────
//!  VM exit ─► decode once ─► Exit ─► handle_exit(vm, &exit, &mut regs, env) ─► Action
//!                                      ├─ Cpuid      → crate::cpuid         (policy)
//!                                      ├─ Io         → exit::io → devices::IoBus
//!                                      ├─ Rdmsr/Wrmsr→ crate::msr_policy
//!                                      ├─ Vmcall     → crate::hypercall
//!                                      └─ faults     → exit::fault (stop / reflect)
//!  apply Action: RIP, injection, scheduling (crate::sched), stop report (crate::vcpu)
//! ```
//!
//! The backend (VT-x today, AMD-V later) decodes each hardware exit exactly once
//! into an [`Exit`], copies the general-purpose registers into [`GuestRegs`], calls
//! [`handle_exit`] and then carries out the returned [`Action`].
//!
//! # The RIP contract
//!
//! Handlers never touch `regs.rip`. The guest RIP is changed in exactly one
//! place: the backend, after `handle_exit` returns, computes the next RIP with
//! [`Action::next_rip`] and writes it to the VMCS/VMCB. [`Action::AdvanceRip`],
//! [`Action::Yield`] and [`Action::Halt`] skip the exiting instruction
//! (`regs.instruction_len` bytes); every other action leaves RIP alone (a fault
//! is injected *at* the instruction, as hardware would).
//!
//! # Guest-triggered errors
//!
//! Everything in an [`Exit`] and in [`GuestRegs`] is guest-controlled. No handler
//! unwraps, indexes or panics on those values: a bad request becomes an injected
//! fault ([`Action::Inject`]), an error code in a register, or a stopped VM
//! ([`Action::Stop`]). Only that VM is affected.

pub mod fault;
pub mod io;

use core::fmt;

use bitflags::bitflags;

use crate::vcpu::{StopReason, VcpuRunState, VmContext};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// The guest RIP to use on the next entry: the single definition of RIP
    /// advancement (the backend calls this and nothing else moves RIP).
    pub fn next_rip(&self, rip: u64, instruction_len: u64) -> u64 {
        match self {
            Action::AdvanceRip | Action::Yield | Action::Halt => rip.wrapping_add(instruction_len),
            Action::Resume | Action::Inject(_) | Action::Preempted | Action::Stop(_) => rip,
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
    /// Monotonic time in host TSC ticks; the guest's TSC is derived from it.
    fn now_ticks(&self) -> u64;
    /// Local APIC ID of the physical CPU running this vCPU.
    fn cpu_apic_id(&self) -> u32;
    /// The memory of the VM whose exit is being handled (used by hypercalls).
    fn guest_memory(&self) -> &dyn GuestMemory;
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

/// Handles one VM exit. The only entry point; see the module docs.
///
/// Updates `vm`'s statistics and run state (`Halted` on [`Action::Halt`],
/// `Stopped` on [`Action::Stop`]; on stop any partial console line is
/// flushed). Calling it for an already stopped VM returns the same stop again.
pub fn handle_exit(
    vm: &mut VmContext,
    exit: &Exit,
    regs: &mut GuestRegs,
    env: &mut dyn Platform,
) -> Action {
    if let VcpuRunState::Stopped(reason) = vm.run_state() {
        return Action::Stop(*reason);
    }
    vm.stats.record_exit(crate::stats::ExitKind::of(exit));
    let action = match *exit {
        Exit::Cpuid => crate::cpuid::handle(regs, env),
        Exit::Hlt => Action::Halt,
        Exit::Io(access) => io::handle(vm, &access, regs, env),
        Exit::Rdmsr { msr } => crate::msr_policy::handle_read(vm, msr, regs, env),
        Exit::Wrmsr { msr, value } => crate::msr_policy::handle_write(vm, msr, value, env),
        Exit::Vmcall => crate::hypercall::handle(vm, regs, env),
        Exit::MemoryViolation {
            gpa,
            access,
            linear,
        } => fault::memory_violation(gpa, access, linear, regs),
        Exit::TripleFault => fault::triple_fault(regs),
        Exit::ExternalInterrupt | Exit::InterruptWindow => Action::Resume,
        Exit::PreemptionTimer => Action::Preempted,
        Exit::Exception { vector, error_code } => fault::exception(vector, error_code, regs),
        Exit::EntryFailed {
            code,
            qualification,
        } => fault::entry_failed(code, qualification, regs),
        Exit::Unhandled {
            code,
            name,
            qualification,
        } => fault::unhandled(code, name, qualification, regs),
    };
    vm.after_exit(&action, env);
    action
}

#[cfg(test)]
pub(crate) mod testenv {
    //! A fake platform for host tests.
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;

    /// Fake guest memory: RAM at `base..base+data.len()`.
    pub struct FakeMem {
        pub base: u64,
        pub data: Vec<u8>,
    }

    impl GuestMemory for FakeMem {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
            let start = gpa
                .checked_sub(self.base)
                .ok_or(GuestMemoryError::OutOfRange { gpa })?;
            let start = usize::try_from(start).map_err(|_| GuestMemoryError::OutOfRange { gpa })?;
            let src = start
                .checked_add(buf.len())
                .and_then(|end| self.data.get(start..end))
                .ok_or(GuestMemoryError::OutOfRange { gpa })?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    pub struct FakePlatform {
        pub lines: Vec<String>,
        pub ticks: u64,
        pub apic_id: u32,
        pub mem: FakeMem,
    }

    impl FakePlatform {
        pub fn new() -> Self {
            FakePlatform {
                lines: Vec::new(),
                ticks: 1000,
                apic_id: 0,
                mem: FakeMem {
                    base: 0x1000,
                    data: alloc::vec![0; 0x2000],
                },
            }
        }
    }

    impl Platform for FakePlatform {
        fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
            match leaf {
                0 => [0x16, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
                // Family 6, all ECX feature bits set, EBX APIC ID 0x77.
                1 => [0x0005_0654, 0x7708_0800, 0xFFFF_FFFF, 0xFFFF_FFFF],
                7 if subleaf == 0 => [0, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF],
                0x8000_0000 => [0x8000_0008, 0, 0, 0],
                0x8000_0001 => [0, 0, 0xFFFF_FFFF, 0xFFFF_FFFF],
                _ => [leaf, subleaf, 0x1234, 0x5678],
            }
        }
        fn console_write(&mut self, vm_name: &str, line: &str) {
            self.lines.push(alloc::format!("[{vm_name}] {line}"));
        }
        fn now_ticks(&self) -> u64 {
            self.ticks
        }
        fn cpu_apic_id(&self) -> u32 {
            self.apic_id
        }
        fn guest_memory(&self) -> &dyn GuestMemory {
            &self.mem
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testenv::FakePlatform;
    use super::*;
    use crate::stats::ExitKind;

    #[test]
    fn next_rip_only_for_skipping_actions() {
        assert_eq!(Action::AdvanceRip.next_rip(0x1000, 3), 0x1003);
        assert_eq!(Action::Yield.next_rip(0x1000, 3), 0x1003);
        assert_eq!(Action::Halt.next_rip(0x1000, 1), 0x1001);
        assert_eq!(Action::Resume.next_rip(0x1000, 3), 0x1000);
        assert_eq!(Action::Inject(Event::GP0).next_rip(0x1000, 3), 0x1000);
        assert_eq!(Action::Preempted.next_rip(0x1000, 3), 0x1000);
        assert_eq!(Action::AdvanceRip.next_rip(u64::MAX, 1), 0);
    }

    #[test]
    fn hlt_halts_and_preemption_ends_slice() {
        let mut vm = VmContext::new(1, "g");
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs::default();
        vm.run_state_mut().make_runnable().unwrap();
        vm.run_state_mut().enter().unwrap();
        assert_eq!(
            handle_exit(&mut vm, &Exit::Hlt, &mut regs, &mut env),
            Action::Halt
        );
        assert_eq!(*vm.run_state(), VcpuRunState::Halted);
        vm.run_state_mut().wake().unwrap();
        vm.run_state_mut().enter().unwrap();
        let a = handle_exit(&mut vm, &Exit::PreemptionTimer, &mut regs, &mut env);
        assert_eq!(a, Action::Preempted);
        assert_eq!(*vm.run_state(), VcpuRunState::Runnable);
        assert_eq!(vm.stats.exits(ExitKind::Hlt), 1);
        assert_eq!(vm.stats.exits(ExitKind::PreemptionTimer), 1);
    }

    #[test]
    fn stopped_vm_stays_stopped() {
        let mut vm = VmContext::new(1, "g");
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs {
            rip: 0x42,
            ..Default::default()
        };
        let a = handle_exit(&mut vm, &Exit::TripleFault, &mut regs, &mut env);
        assert_eq!(a, Action::Stop(StopReason::TripleFault { rip: 0x42 }));
        let again = handle_exit(&mut vm, &Exit::Cpuid, &mut regs, &mut env);
        assert_eq!(again, a);
    }

    #[test]
    fn access_display() {
        assert_eq!(alloc::format!("{}", Access::READ | Access::EXECUTE), "r-x");
    }
}
