//! Backend-neutral VM exits and the exit-handling entry points.
//!
//! # How the pieces fit
//!
//! ```text
//!  backend loop (kernel: vtx, svm)      hvcore (this crate, no unsafe)
//!  ───────────────────────────────      ──────────────────────────────────────────
//!  VM exit ─► decode in place ─► Exit ─► handle_vcpu_exit(vcpu, &exit, regs) ─► Some(Next)
//!                                         CPUID from the table, local hypercalls,
//!                                         unclaimed ports, direct UART bytes, HLT,
//!                                         timer/interrupt exits
//!                                    └─► None: platform built, then
//!                                        handle_exit(vm, vcpu, &exit, regs, env) ─► Action
//!                                         ├─ Cpuid      → crate::cpuid         (policy)
//!                                         ├─ Io         → exit::io → devices::IoBus
//!                                         ├─ Rdmsr/Wrmsr→ crate::msr_policy
//!                                         ├─ Vmcall     → crate::hypercall
//!                                         └─ faults     → exit::fault (stop / reflect)
//!  carry out Next (Action without the stop's reason): RIP, injection, slice end
//! ```
//!
//! The backend decodes each hardware exit exactly once into an [`Exit`], with
//! the general-purpose registers in [`GuestRegs`]. The exits a vCPU answers
//! from its own state go through [`handle_vcpu_exit`] alone, inline in the
//! backend's loop and without building a platform or locking the VM; the
//! others through [`handle_exit`] (which starts with the same first half).
//! The backend carries out the [`Next`] step: [`Action`] without the stop's
//! reason, which `handle_exit` has already recorded in the vCPU's run state
//! and the VM's report.
//!
//! # The RIP contract
//!
//! Handlers never touch `regs.rip`. The guest RIP is changed in exactly one
//! place: the backend, after the exit is handled, takes the next RIP from
//! [`Next::skipped_rip`] (which agrees with [`Action::next_rip`]) and writes
//! it to the VMCS/VMCB. [`Action::AdvanceRip`], [`Action::Yield`] and
//! [`Action::Halt`] skip the exiting instruction (`regs.instruction_len`
//! bytes); every other action leaves RIP alone (a fault is injected *at* the
//! instruction, as hardware would).
//!
//! # Guest-triggered errors
//!
//! Everything in an [`Exit`] and in [`GuestRegs`] is guest-controlled. No handler
//! unwraps, indexes or panics on those values: a bad request becomes an injected
//! fault ([`Action::Inject`]), an error code in a register, or a stopped VM
//! ([`Action::Stop`]). Only that VM is affected.

pub mod cr;
pub mod fault;
pub mod io;
pub mod mmio;

pub use crate::arch::{
    Access, AccessSize, Action, CrAccess, CrAccessKind, Event, EventKind, Exit, GuestCpu,
    GuestMemory, GuestMemoryError, GuestRegs, IoAccess, IoDir, Next, Platform, Reg, StateError,
};
use crate::vcpu::{VcpuRunState, VcpuState, VmContext};

/// The VM's shared state as an exit handler reaches it: taken only by the
/// exits that need it (the kernel locks the VM's devices then; a VM's own
/// exits, CPUID, its MSRs and control registers, take no lock).
pub trait VmAccess {
    /// The VM's context.
    fn get(&mut self) -> &mut VmContext;
}

impl VmAccess for VmContext {
    #[inline(always)]
    fn get(&mut self) -> &mut VmContext {
        self
    }
}

/// Handles one VM exit. The only entry point; see the module docs.
///
/// Updates the vCPU's run state (`Halted` on [`Action::Halt`], `Stopped`
/// on [`Action::Stop`]) and the statistics: exits that concern the vCPU
/// alone (CPUID, its MSR file and control registers, HLT, hypercalls that
/// need no VM, the timer and interrupt exits) count in `vcpu.exits` and
/// reach `vm` only when their action does (an injected event is counted, a
/// stop stops the VM); the others count in the VM's statistics. On stop
/// any partial console line is flushed. Calling it for an already stopped
/// vCPU, or for a VM-level exit of a VM another vCPU stopped, returns that
/// stop.
///
/// Generic over the platform and the VM access, and always inlined into
/// the backend's exit loop, whose common exits [`handle_vcpu_exit`]
/// answers before a platform is built: the exits that need no platform
/// service never build one, and those that need no VM never lock it.
#[inline(always)]
pub fn handle_exit<P: Platform, V: VmAccess + ?Sized>(
    vm: &mut V,
    vcpu: &mut VcpuState,
    exit: &Exit,
    regs: &mut GuestRegs,
    env: &mut P,
) -> Action {
    if let VcpuRunState::Stopped(reason) = vcpu.run_state() {
        return Action::Stop(*reason);
    }
    match handle_vcpu_exit(vcpu, exit, regs) {
        Some(Next::AdvanceRip) => Action::AdvanceRip,
        Some(Next::Resume) => Action::Resume,
        Some(Next::Yield) => Action::Yield,
        Some(Next::Preempted) => Action::Preempted,
        Some(Next::Halt) => Action::Halt,
        // handle_vcpu_exit injects nothing and stops nothing.
        Some(Next::Inject(_) | Next::Stop) | None => {
            handle_platform_exit(vm, vcpu, exit, regs, env)
        }
    }
}

/// The first half of [`handle_exit`]: the exits a vCPU answers from its
/// own state, with no platform service and no VM: CPUID leaves the table
/// has finished, hypercalls that concern the vCPU, ports no device claims,
/// UART bytes that are only output (kept in `vcpu.console_tx`, see
/// [`crate::devices::console`]), HLT, INVD, and the timer and interrupt
/// exits. `None`: the exit needs the rest ([`handle_platform_exit`]),
/// which first hands the kept UART bytes to the VM's console. This is the
/// whole of the common exits'
/// handling, so it stays small; it never injects or stops, and the vCPU
/// must be running (the backend never enters a stopped one). Except for
/// the host-interrupt and interrupt-window exits, which are events the
/// backend's entry checks must look at, nothing these exits change
/// concerns those checks: the backends enter again after them without
/// looking at devices or events.
#[inline(always)]
pub fn handle_vcpu_exit(vcpu: &mut VcpuState, exit: &Exit, regs: &mut GuestRegs) -> Option<Next> {
    use crate::stats::ExitKind as K;
    // Each arm counts its own kind: a constant there, so counting is an
    // add to a fixed place.
    let next = match *exit {
        Exit::Cpuid if crate::cpuid::answer_finished(&vcpu.cpuid, regs) => {
            vcpu.exits.record(K::Cpuid);
            Next::AdvanceRip
        }
        Exit::Vmcall if crate::hypercall::is_vcpu_local(regs) => {
            vcpu.exits.record(K::Vmcall);
            crate::hypercall::handle_vcpu_local(regs)
        }
        Exit::Io(a) if !a.string_or_rep => {
            if vcpu.ports.unclaimed(a.port) {
                io::unclaimed(&a, regs, &mut vcpu.exits);
            } else if let (AccessSize::Byte, IoDir::Out { value }) = (a.size, a.dir) {
                // A UART byte that is only output ([`crate::devices::console`]).
                if !vcpu.console_tx.accepts(a.port) {
                    return None;
                }
                vcpu.console_tx.push(value as u8);
            } else {
                return None;
            }
            vcpu.exits.record(K::Io);
            Next::AdvanceRip
        }
        Exit::Hlt => {
            vcpu.exits.record(K::Hlt);
            Next::Halt
        }
        Exit::Invd => {
            vcpu.exits.record(K::Invd);
            Next::AdvanceRip
        }
        Exit::ExternalInterrupt => {
            vcpu.exits.record(K::ExternalInterrupt);
            Next::Resume
        }
        Exit::InterruptWindow => {
            vcpu.exits.record(K::InterruptWindow);
            Next::Resume
        }
        Exit::PreemptionTimer => {
            vcpu.exits.record(K::PreemptionTimer);
            Next::Preempted
        }
        _ => return None,
    };
    vcpu.run_state_after(next);
    Some(next)
}

/// The second half of [`handle_exit`]: the exits that need a platform
/// service or the VM. The backend's loop calls it for the exits
/// [`handle_vcpu_exit`] declined (it would answer those again as
/// [`handle_exit`] does, to no purpose).
#[inline(always)]
pub fn handle_platform_exit<P: Platform, V: VmAccess + ?Sized>(
    vm: &mut V,
    vcpu: &mut VcpuState,
    exit: &Exit,
    regs: &mut GuestRegs,
    env: &mut P,
) -> Action {
    use crate::stats::ExitKind as K;
    let (kind, action) = match *exit {
        // The vCPU's own exits.
        Exit::Cpuid => (K::Cpuid, crate::cpuid::handle(&vcpu.cpuid, regs, env)),
        Exit::Rdmsr { msr } if !crate::devices::lapic::is_apic_msr(msr) => (
            K::Rdmsr,
            crate::msr_policy::handle_read(&mut vcpu.msrs, msr, regs, env),
        ),
        Exit::Wrmsr { msr, value } if !crate::devices::lapic::is_apic_msr(msr) => (
            K::Wrmsr,
            crate::msr_policy::handle_write(&mut vcpu.msrs, msr, value, regs, env),
        ),
        Exit::CrAccess(access) => (K::CrAccess, cr::access(access, regs, env)),
        Exit::Xsetbv => (K::Xsetbv, cr::xsetbv(regs, env)),
        Exit::UndefinedInstruction { .. } => (K::UndefinedInstruction, Action::Inject(Event::UD)),
        Exit::Rdpmc => (K::Rdpmc, Action::Inject(Event::GP0)),
        // The vCPU takes its debug registers; the MOV runs again natively.
        Exit::DebugRegister => (
            K::DebugRegister,
            match env.guest_cpu().write(Reg::DebugRegisters, 1) {
                Ok(()) => Action::Resume,
                Err(e) => crate::arch::state_failure(e, regs),
            },
        ),
        // The VM's.
        _ => {
            let vm = vm.get();
            vcpu.drain_console(vm, env);
            if let Some(reason) = vm.stop_reason() {
                // Another vCPU stopped the VM: this one stops too.
                let action = Action::Stop(*reason);
                vcpu.after_exit(&action);
                return action;
            }
            vm.stats.record_exit(K::of(exit));
            let action = vm_exit(vm, vcpu, exit, regs, env);
            vcpu.after_exit(&action);
            settle(vm, &action, env);
            return action;
        }
    };
    vcpu.exits.record(kind);
    vcpu.after_exit(&action);
    if action.needs_vm() {
        let vm = vm.get();
        vcpu.drain_console(vm, env);
        settle(vm, &action, env);
    }
    action
}

/// The exits that involve the VM: devices, hypercalls, APIC MSRs, MMIO,
/// faults.
#[inline(always)]
fn vm_exit<P: Platform>(
    vm: &mut VmContext,
    vcpu: &mut VcpuState,
    exit: &Exit,
    regs: &mut GuestRegs,
    env: &mut P,
) -> Action {
    match *exit {
        Exit::Io(access) => io::handle(vm, &access, regs, env),
        // A local APIC MSR: the VM's APIC, or the MSR policy in a VM
        // without local APICs.
        Exit::Rdmsr { msr } => match apic_msr_read(msr, regs, env) {
            Some(action) => action,
            None => crate::msr_policy::handle_read(&mut vcpu.msrs, msr, regs, env),
        },
        Exit::Wrmsr { msr, value } => match apic_msr_write(vm, msr, value, env) {
            Some(action) => action,
            None => crate::msr_policy::handle_write(&mut vcpu.msrs, msr, value, regs, env),
        },
        Exit::Vmcall => crate::hypercall::handle(vm, regs, env),
        Exit::MemoryViolation {
            gpa,
            access,
            linear,
        } => match mmio::emulate(vm, gpa, regs, env) {
            Some(action) => action,
            None => fault::memory_violation(gpa, access, linear, regs),
        },
        Exit::TripleFault => fault::triple_fault(regs),
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
        // The vCPU's own exits never come here (see `handle_exit`).
        Exit::Cpuid
        | Exit::Hlt
        | Exit::CrAccess(_)
        | Exit::Xsetbv
        | Exit::UndefinedInstruction { .. }
        | Exit::Invd
        | Exit::Rdpmc
        | Exit::DebugRegister
        | Exit::ExternalInterrupt
        | Exit::InterruptWindow
        | Exit::PreemptionTimer => Action::Resume,
    }
}

/// The VM's part of an action: an injected event is counted, a stop stops
/// the VM (its report, the console's last line).
#[inline]
fn settle(vm: &mut VmContext, action: &Action, env: &mut dyn Platform) {
    match *action {
        Action::Inject(_) => vm.stats.injected_events += 1,
        Action::Stop(reason) => vm.stop(reason, env),
        _ => {}
    }
}

/// RDMSR of a local APIC MSR in a VM with local APICs; `None` otherwise.
#[inline(always)]
fn apic_msr_read<P: Platform>(msr: u32, regs: &mut GuestRegs, env: &mut P) -> Option<Action> {
    if !crate::devices::lapic::is_apic_msr(msr) {
        return None;
    }
    Some(match env.apic_msr_read(msr)? {
        Ok(v) => {
            regs.rax = v & 0xFFFF_FFFF;
            regs.rdx = v >> 32;
            Action::AdvanceRip
        }
        Err(_) => Action::Inject(Event::GP0),
    })
}

/// WRMSR of a local APIC MSR in a VM with local APICs; `None` otherwise.
#[inline(always)]
fn apic_msr_write<P: Platform>(
    vm: &mut VmContext,
    msr: u32,
    value: u64,
    env: &mut P,
) -> Option<Action> {
    if !crate::devices::lapic::is_apic_msr(msr) {
        return None;
    }
    Some(match env.apic_msr_write(msr, value)? {
        Ok(eoi) => {
            if let Some(vector) = eoi {
                vm.ioapic_eoi(vector);
            }
            Action::AdvanceRip
        }
        Err(_) => Action::Inject(Event::GP0),
    })
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

    /// Fake backend state: every register in a table, reset values for a
    /// 64-bit guest; `fail` makes accesses to one register fail.
    pub struct FakeCpu {
        pub regs: Vec<(Reg, u64)>,
        pub limits: crate::arch::GuestLimits,
        pub fail: Option<Reg>,
    }

    impl FakeCpu {
        pub fn new() -> Self {
            FakeCpu {
                regs: alloc::vec![
                    (Reg::Cr0, 0x8000_0031),
                    (Reg::Cr4, 0x20),
                    (Reg::Efer, 0x500),
                    (Reg::Xcr0, 1),
                    (Reg::Pat, crate::msr_policy::PAT_RESET),
                    (Reg::Mode64, 1),
                ],
                limits: crate::arch::GuestLimits {
                    xcr0_allowed: 0xE7,
                    cr4_allowed: crate::exit::cr::CR4_GUEST_OWNED,
                    phys_addr_bits: 39,
                    unrestricted: true,
                },
                fail: None,
            }
        }
        pub fn get(&self, reg: Reg) -> u64 {
            self.regs
                .iter()
                .find(|(r, _)| *r == reg)
                .map_or(0, |(_, v)| *v)
        }
        pub fn set(&mut self, reg: Reg, value: u64) {
            match self.regs.iter_mut().find(|(r, _)| *r == reg) {
                Some(slot) => slot.1 = value,
                None => self.regs.push((reg, value)),
            }
        }
    }

    impl GuestCpu for FakeCpu {
        fn read(&mut self, reg: Reg) -> Result<u64, StateError> {
            if self.fail == Some(reg) {
                return Err(StateError { reg });
            }
            Ok(self.get(reg))
        }
        fn write(&mut self, reg: Reg, value: u64) -> Result<(), StateError> {
            if self.fail == Some(reg) {
                return Err(StateError { reg });
            }
            self.set(reg, value);
            Ok(())
        }
        fn limits(&self) -> crate::arch::GuestLimits {
            self.limits
        }
    }

    /// Optional local APIC hooks of a [`FakePlatform`] (a VM with local
    /// APICs): what they answer and the calls they saw.
    pub struct FakeApic {
        /// What [`Platform::apic_msr_read`] answers.
        pub msr_read: Result<u64, crate::devices::lapic::ApicFault>,
        /// What [`Platform::apic_msr_write`] answers.
        pub msr_write: Result<Option<u8>, crate::devices::lapic::ApicFault>,
        /// MSRs read, in order.
        pub msr_reads: Vec<u32>,
        /// MSRs written with their values, in order.
        pub msr_writes: Vec<(u32, u64)>,
        /// The xAPIC page ([`Platform::apic_mmio_claims`]).
        pub page: u64,
        /// What a read of the xAPIC page answers, and the level EOI vector
        /// any access reports.
        pub mmio_value: u32,
        pub mmio_eoi: Option<u8>,
        /// xAPIC page accesses (gpa, value written), in order.
        pub mmio: Vec<(u64, Option<u32>)>,
    }

    impl FakeApic {
        /// Hooks that answer everything: MSRs read 0, writes succeed, the
        /// xAPIC page at 0xFEE0_0000 reads 0.
        pub fn new() -> Self {
            FakeApic {
                msr_read: Ok(0),
                msr_write: Ok(None),
                msr_reads: Vec::new(),
                msr_writes: Vec::new(),
                page: 0xFEE0_0000,
                mmio_value: 0,
                mmio_eoi: None,
                mmio: Vec::new(),
            }
        }
    }

    pub struct FakePlatform {
        pub lines: Vec<String>,
        /// Raw console output ([`Platform::console_raw`]), with the name of
        /// the VM that wrote last.
        pub raw: Vec<u8>,
        pub raw_vm: String,
        pub ticks: u64,
        pub apic_id: u32,
        pub mem: FakeMem,
        pub cpu: FakeCpu,
        /// Local APIC hooks; `None`: the trait's defaults (no local APIC).
        pub apic: Option<FakeApic>,
        /// The host CPU's vendor is AMD (CPUID 0 says "AuthenticAMD");
        /// else Intel.
        pub amd: bool,
    }

    impl FakePlatform {
        pub fn new() -> Self {
            FakePlatform {
                lines: Vec::new(),
                raw: Vec::new(),
                raw_vm: String::new(),
                ticks: 1000,
                apic_id: 0,
                mem: FakeMem {
                    base: 0x1000,
                    data: alloc::vec![0; 0x2000],
                },
                cpu: FakeCpu::new(),
                apic: None,
                amd: false,
            }
        }
    }

    impl Platform for FakePlatform {
        fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
            match leaf {
                0 if self.amd => [0x16, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
                0 => [0x16, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
                // Family 6, all ECX feature bits set, EBX APIC ID 0x77.
                1 => [0x0005_0654, 0x7708_0800, 0xFFFF_FFFF, 0xFFFF_FFFF],
                7 if subleaf == 0 => [0, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF],
                // XSAVEOPT, XSAVEC, XGETBV1, XSAVES; no compacted size (as
                // Bochs' Skylake-X without XSAVES in use).
                0xD if subleaf == 1 => [0xF, 0, 0, 0],
                0x8000_0000 => [0x8000_0008, 0, 0, 0],
                0x8000_0001 => [0, 0, 0xFFFF_FFFF, 0xFFFF_FFFF],
                _ => [leaf, subleaf, 0x1234, 0x5678],
            }
        }
        fn console_write(&mut self, vm_name: &str, line: &str) {
            self.lines.push(alloc::format!("[{vm_name}] {line}"));
        }
        fn console_raw(&mut self, vm_name: &str, bytes: &[u8]) {
            self.raw.extend_from_slice(bytes);
            self.raw_vm = vm_name.into();
        }
        fn now_ticks(&self) -> u64 {
            self.ticks
        }
        fn now_ns(&self) -> u64 {
            self.ticks
        }
        fn cpu_apic_id(&self) -> u32 {
            self.apic_id
        }
        fn guest_memory(&self) -> &dyn GuestMemory {
            &self.mem
        }
        fn guest_cpu(&mut self) -> &mut dyn GuestCpu {
            &mut self.cpu
        }
        fn apic_msr_read(
            &mut self,
            msr: u32,
        ) -> Option<Result<u64, crate::devices::lapic::ApicFault>> {
            let apic = self.apic.as_mut()?;
            apic.msr_reads.push(msr);
            Some(apic.msr_read)
        }
        fn apic_msr_write(
            &mut self,
            msr: u32,
            value: u64,
        ) -> Option<Result<Option<u8>, crate::devices::lapic::ApicFault>> {
            let apic = self.apic.as_mut()?;
            apic.msr_writes.push((msr, value));
            Some(apic.msr_write)
        }
        fn apic_mmio_claims(&mut self, gpa: u64) -> bool {
            self.apic.as_ref().is_some_and(|a| gpa & !0xFFF == a.page)
        }
        fn apic_mmio(&mut self, gpa: u64, write: Option<u32>) -> (u32, Option<u8>) {
            match self.apic.as_mut() {
                Some(apic) => {
                    apic.mmio.push((gpa, write));
                    let value = if write.is_some() { 0 } else { apic.mmio_value };
                    (value, apic.mmio_eoi)
                }
                None => (u32::MAX, None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testenv::FakePlatform;
    use super::*;
    use crate::stats::ExitKind;
    use crate::vcpu::StopReason;

    #[test]
    fn next_rip_only_for_skipping_actions() {
        assert_eq!(Action::AdvanceRip.next_rip(0x1000, 3), 0x1003);
        assert_eq!(Action::Yield.next_rip(0x1000, 3), 0x1003);
        assert_eq!(Action::Halt.next_rip(0x1000, 1), 0x1001);
        assert_eq!(Action::Resume.next_rip(0x1000, 3), 0x1000);
        assert_eq!(Action::Inject(Event::GP0).next_rip(0x1000, 3), 0x1000);
        assert_eq!(Action::Preempted.next_rip(0x1000, 3), 0x1000);
        assert_eq!(Action::AdvanceRip.next_rip(u64::MAX, 1), 0);
        // The backend's projection agrees.
        for a in [
            Action::AdvanceRip,
            Action::Yield,
            Action::Halt,
            Action::Resume,
            Action::Preempted,
        ] {
            let moved = Some(a.next_rip(0x1000, 3)).filter(|&r| r != 0x1000);
            assert_eq!(Next::from(&a).skipped_rip(0x1000, 3), moved, "{a:?}");
        }
    }

    #[test]
    fn hlt_halts_and_preemption_ends_slice() {
        let mut vm = VmContext::new(1, "g");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs::default();
        vcpu.run_state_mut().make_runnable().unwrap();
        vcpu.run_state_mut().enter().unwrap();
        assert_eq!(
            handle_exit(&mut vm, &mut vcpu, &Exit::Hlt, &mut regs, &mut env),
            Action::Halt
        );
        assert_eq!(*vcpu.run_state(), VcpuRunState::Halted);
        vcpu.run_state_mut().wake().unwrap();
        vcpu.run_state_mut().enter().unwrap();
        let a = handle_exit(
            &mut vm,
            &mut vcpu,
            &Exit::PreemptionTimer,
            &mut regs,
            &mut env,
        );
        assert_eq!(a, Action::Preempted);
        assert_eq!(*vcpu.run_state(), VcpuRunState::Runnable);
        // The vCPU's own exits count in the vCPU until the VM absorbs them.
        assert_eq!(vm.stats.exits(ExitKind::Hlt), 0);
        vm.stats.absorb(&mut vcpu.exits);
        assert_eq!(vm.stats.exits(ExitKind::Hlt), 1);
        assert_eq!(vm.stats.exits(ExitKind::PreemptionTimer), 1);
    }

    #[test]
    fn stopped_vm_stays_stopped() {
        let mut vm = VmContext::new(1, "g");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs {
            rip: 0x42,
            ..Default::default()
        };
        let a = handle_exit(&mut vm, &mut vcpu, &Exit::TripleFault, &mut regs, &mut env);
        assert_eq!(a, Action::Stop(StopReason::TripleFault { rip: 0x42 }));
        let again = handle_exit(&mut vm, &mut vcpu, &Exit::Cpuid, &mut regs, &mut env);
        assert_eq!(again, a);
    }

    use super::testenv::FakeApic;
    use crate::devices::apic_msg::{DeliveryMode, Destination, InterruptMessage};
    use crate::devices::lapic::ApicFault;

    fn rdmsr(vm: &mut VmContext, msr: u32, env: &mut FakePlatform) -> (Action, GuestRegs) {
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut regs = GuestRegs {
            rax: u64::MAX,
            rdx: u64::MAX,
            ..Default::default()
        };
        let a = handle_exit(vm, &mut vcpu, &Exit::Rdmsr { msr }, &mut regs, env);
        (a, regs)
    }

    fn wrmsr(vm: &mut VmContext, msr: u32, value: u64, env: &mut FakePlatform) -> Action {
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut regs = GuestRegs::default();
        handle_exit(vm, &mut vcpu, &Exit::Wrmsr { msr, value }, &mut regs, env)
    }

    /// The local APIC MSRs: IA32_APIC_BASE, IA32_TSC_DEADLINE, the x2APIC
    /// range at both ends and inside.
    const APIC_MSRS: [u32; 6] = [0x1B, 0x6E0, 0x800, 0x802, 0x830, 0x8FF];

    #[test]
    fn apic_msr_reads_go_to_the_platform() {
        let mut vm = VmContext::new(1, "g");
        let mut env = FakePlatform::new();
        let mut apic = FakeApic::new();
        apic.msr_read = Ok(0x1234_5678_9ABC_DEF0);
        env.apic = Some(apic);
        for msr in APIC_MSRS {
            assert!(crate::devices::lapic::is_apic_msr(msr), "{msr:#x}");
            let (a, regs) = rdmsr(&mut vm, msr, &mut env);
            assert_eq!(a, Action::AdvanceRip, "{msr:#x}");
            assert_eq!(
                (regs.rax, regs.rdx),
                (0x9ABC_DEF0, 0x1234_5678),
                "EDX:EAX, upper halves cleared"
            );
        }
        let apic = env.apic.as_ref().unwrap();
        assert_eq!(apic.msr_reads, APIC_MSRS);
        assert!(apic.msr_writes.is_empty());
    }

    #[test]
    fn apic_msr_writes_go_to_the_platform() {
        let mut vm = VmContext::new(1, "g");
        let mut env = FakePlatform::new();
        env.apic = Some(FakeApic::new());
        for (i, msr) in APIC_MSRS.into_iter().enumerate() {
            assert_eq!(
                wrmsr(&mut vm, msr, 0xAB00_0000_0000_0000 | i as u64, &mut env),
                Action::AdvanceRip,
                "{msr:#x}"
            );
        }
        let apic = env.apic.as_ref().unwrap();
        let expected: alloc::vec::Vec<(u32, u64)> = APIC_MSRS
            .into_iter()
            .enumerate()
            .map(|(i, msr)| (msr, 0xAB00_0000_0000_0000 | i as u64))
            .collect();
        assert_eq!(apic.msr_writes, expected, "whole 64-bit values");
        assert!(apic.msr_reads.is_empty());
    }

    #[test]
    fn apic_msr_faults_inject_gp() {
        let mut vm = VmContext::new(1, "g");
        let mut env = FakePlatform::new();
        let mut apic = FakeApic::new();
        apic.msr_read = Err(ApicFault::GeneralProtection);
        apic.msr_write = Err(ApicFault::GeneralProtection);
        env.apic = Some(apic);
        let (a, regs) = rdmsr(&mut vm, 0x830, &mut env);
        assert_eq!(a, Action::Inject(Event::GP0));
        assert_eq!(
            (regs.rax, regs.rdx),
            (u64::MAX, u64::MAX),
            "no value on a fault"
        );
        assert_eq!(
            wrmsr(&mut vm, 0x1B, 0, &mut env),
            Action::Inject(Event::GP0)
        );
        assert_eq!(vm.stats.injected_events, 2);
        let apic = env.apic.as_ref().unwrap();
        assert_eq!(apic.msr_reads, [0x830]);
        assert_eq!(apic.msr_writes, [(0x1B, 0)]);
    }

    /// Programs I/O APIC pin `pin` level-triggered, unmasked, fixed, to
    /// APIC ID 0 with `vector`, through the guest's MMIO window.
    fn program_level(vm: &mut VmContext, pin: u8, vector: u8) {
        use crate::devices::ioapic::{IOREDTBL, IOREGSEL, IOWIN, RTE_LEVEL};
        let index = u32::from(IOREDTBL) + 2 * u32::from(pin);
        vm.ioapic_mmio(IOREGSEL, Some(index + 1));
        vm.ioapic_mmio(IOWIN, Some(0));
        vm.ioapic_mmio(IOREGSEL, Some(index));
        vm.ioapic_mmio(IOWIN, Some(RTE_LEVEL as u32 | u32::from(vector)));
    }

    fn level_msg(vector: u8) -> InterruptMessage {
        InterruptMessage {
            vector,
            mode: DeliveryMode::Fixed,
            dest: Destination::Physical(0),
            level_triggered: true,
            assert: true,
        }
    }

    #[test]
    fn apic_msr_eoi_of_a_level_vector_reaches_the_ioapic() {
        let mut vm = VmContext::new(1, "g");
        vm.enable_ioapic(0);
        program_level(&mut vm, 5, 0x35);
        vm.set_irq_level(5, true);
        assert_eq!(vm.take_apic_messages(), [level_msg(0x35)]);
        let mut env = FakePlatform::new();
        env.apic = Some(FakeApic::new());
        // An EOI of an edge vector (or any other write): nothing for the
        // I/O APIC, whose Remote IRR stays set.
        assert_eq!(wrmsr(&mut vm, 0x80B, 0, &mut env), Action::AdvanceRip);
        assert!(!vm.has_apic_messages());
        // The level EOI: Remote IRR cleared, the line still up, sent again.
        env.apic.as_mut().unwrap().msr_write = Ok(Some(0x35));
        assert_eq!(wrmsr(&mut vm, 0x80B, 0, &mut env), Action::AdvanceRip);
        assert_eq!(vm.take_apic_messages(), [level_msg(0x35)]);
        // Line down: the next EOI sends nothing.
        vm.set_irq_level(5, false);
        assert_eq!(wrmsr(&mut vm, 0x80B, 0, &mut env), Action::AdvanceRip);
        assert!(!vm.has_apic_messages());
        assert_eq!(env.apic.as_ref().unwrap().msr_writes.len(), 3);
    }

    #[test]
    fn apic_msrs_fall_back_to_the_policy_without_local_apics() {
        let mut vm = VmContext::new(1, "g");
        let mut env = FakePlatform::new();
        assert!(env.apic.is_none(), "the platform answers None");
        for msr in APIC_MSRS {
            // The policy has none of them: #GP, as on a CPU without an APIC.
            let (a, regs) = rdmsr(&mut vm, msr, &mut env);
            assert_eq!(a, Action::Inject(Event::GP0), "{msr:#x}");
            assert_eq!(regs.rax, u64::MAX);
            assert_eq!(
                wrmsr(&mut vm, msr, 0, &mut env),
                Action::Inject(Event::GP0),
                "{msr:#x}"
            );
        }
        // A level EOI cannot come from nowhere: the I/O APIC is untouched.
        assert!(!vm.has_apic_messages());
    }

    #[test]
    fn other_msrs_never_reach_the_apic_hooks() {
        use crate::msr_policy::{IA32_APIC_BASE, IA32_TSC};
        let mut vm = VmContext::new(1, "g");
        let mut env = FakePlatform::new();
        let mut apic = FakeApic::new();
        apic.msr_read = Ok(0xBAD);
        apic.msr_write = Err(ApicFault::GeneralProtection);
        env.apic = Some(apic);
        assert_eq!(IA32_APIC_BASE, 0x1B);
        // IA32_PAT goes to the policy, which keeps it.
        assert_eq!(
            wrmsr(&mut vm, 0x277, 0x0007_0406_0007_0406, &mut env),
            Action::AdvanceRip
        );
        let (a, regs) = rdmsr(&mut vm, 0x277, &mut env);
        assert_eq!(a, Action::AdvanceRip);
        assert_eq!((regs.rax, regs.rdx), (0x0007_0406, 0x0007_0406));
        let (a, regs) = rdmsr(&mut vm, IA32_TSC, &mut env);
        assert_eq!(a, Action::AdvanceRip);
        assert_ne!(regs.rax, 0xBAD);
        // Neighbours of the APIC MSRs: the policy's #GP for unknown MSRs.
        for msr in [0x1A, 0x1C, 0x6DF, 0x6E1, 0x7FF, 0x900] {
            assert!(!crate::devices::lapic::is_apic_msr(msr), "{msr:#x}");
            assert_eq!(
                rdmsr(&mut vm, msr, &mut env).0,
                Action::Inject(Event::GP0),
                "{msr:#x}"
            );
            assert_eq!(
                wrmsr(&mut vm, msr, 0, &mut env),
                Action::Inject(Event::GP0),
                "{msr:#x}"
            );
        }
        let apic = env.apic.as_ref().unwrap();
        assert!(apic.msr_reads.is_empty(), "{:x?}", apic.msr_reads);
        assert!(apic.msr_writes.is_empty(), "{:x?}", apic.msr_writes);
    }

    #[test]
    fn access_display() {
        assert_eq!(alloc::format!("{}", Access::READ | Access::EXECUTE), "r-x");
    }
}
