//! A VM as the policy layer sees it: the vCPU run-state machine, stop reasons
//! and their report line, and [`VmContext`] (name, id, stats, devices, MSR
//! state, run state).
//!
//! VMs have one vCPU each, pinned to a physical CPU by the scheduler
//! ([`crate::sched`]). The kernel's loop for one vCPU:
//!
//! ```text
//! Created ─make_runnable→ Runnable ─enter→ Running ──exit──► handle_exit ─► Action
//!                             ▲                                  │
//!                             ├──────── Yield / Preempted ───────┤
//!                          wake                                  │
//!                             │                                  │
//!                          Halted ◄────────── Halt ──────────────┤
//!                                                                ▼
//!                       Stopped(reason) ◄──────────────────── Stop(reason)
//! ```
//!
//! Before each entry the kernel calls [`VcpuRunState::enter`]; `handle_exit`
//! moves the state on for `Halt`, `Yield`, `Preempted` and `Stop`. `Stopped`
//! is final: the kernel prints [`VmContext::stop_report`] (and the stats
//! report) and never enters the VM again; other VMs keep running.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

pub use crate::arch::StopReason;
use crate::arch::{Action, Event, Platform};
use crate::cpuid::CpuidTable;
use crate::devices::apic_msg::InterruptMessage;
use crate::devices::console::{DirectTx, DirectTxPort, LineBuffer};
use crate::devices::ioapic::IoApic;
use crate::devices::pc::{add_pc_devices, advance, PcConfig};
use crate::devices::pic8259::PicPair;
use crate::devices::serial16550::Serial16550;
use crate::devices::{DeviceEffect, Effects, IoBus};
use crate::msr_policy::MsrState;
use crate::stats::{ExitCounts, VmStats};

/// The report line for a stopped VM: `vm NAME (id N) stopped: REASON`.
pub struct StopReport<'a> {
    name: &'a str,
    id: u32,
    reason: &'a StopReason,
}

impl fmt::Display for StopReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vm {} (id {}) stopped: {}",
            self.name, self.id, self.reason
        )
    }
}

/// The vCPU run state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuRunState {
    /// Set up, never run.
    Created,
    /// Executed HLT; waits for an interrupt or deadline. (Next to
    /// `Runnable`: [`Self::begin_slice`] tests both with one range.)
    Halted,
    /// Ready to be entered.
    Runnable,
    /// In the guest (or handling one of its exits).
    Running,
    /// An application processor after reset or INIT: waits for a start-up
    /// IPI (SDM Vol. 3A 9.4.2, "wait-for-SIPI").
    WaitForSipi,
    /// Final.
    Stopped(StopReason),
}

/// An illegal run-state change (a kernel bug, never a guest's doing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidTransition {
    /// State before.
    pub from: VcpuRunState,
    /// Name of the attempted transition.
    pub attempted: &'static str,
}

impl VcpuRunState {
    fn go(
        &mut self,
        ok: bool,
        to: VcpuRunState,
        attempted: &'static str,
    ) -> Result<(), InvalidTransition> {
        if ok {
            *self = to;
            Ok(())
        } else {
            Err(InvalidTransition {
                from: *self,
                attempted,
            })
        }
    }

    /// Created → Runnable.
    pub fn make_runnable(&mut self) -> Result<(), InvalidTransition> {
        self.go(*self == Self::Created, Self::Runnable, "make_runnable")
    }

    /// Runnable → Running (just before VM entry).
    pub fn enter(&mut self) -> Result<(), InvalidTransition> {
        self.go(*self == Self::Runnable, Self::Running, "enter")
    }

    /// Runnable, or Halted with its wake-up come (the scheduler picked
    /// it) → Running, for a slice.
    pub fn begin_slice(&mut self) -> Result<(), InvalidTransition> {
        let picked = matches!(*self, Self::Runnable | Self::Halted);
        self.go(picked, Self::Running, "begin_slice")
    }

    /// Running → Runnable (slice over or yielded).
    pub fn preempt(&mut self) -> Result<(), InvalidTransition> {
        self.go(*self == Self::Running, Self::Runnable, "preempt")
    }

    /// Running → Halted.
    pub fn halt(&mut self) -> Result<(), InvalidTransition> {
        self.go(*self == Self::Running, Self::Halted, "halt")
    }

    /// Halted → Runnable (interrupt or deadline).
    pub fn wake(&mut self) -> Result<(), InvalidTransition> {
        self.go(*self == Self::Halted, Self::Runnable, "wake")
    }

    /// Any state but Stopped → WaitForSipi (INIT; or a new application
    /// processor).
    pub fn wait_for_sipi(&mut self) -> Result<(), InvalidTransition> {
        self.go(!self.is_stopped(), Self::WaitForSipi, "wait_for_sipi")
    }

    /// WaitForSipi → Runnable (a start-up IPI arrived).
    pub fn start_up(&mut self) -> Result<(), InvalidTransition> {
        self.go(*self == Self::WaitForSipi, Self::Runnable, "start_up")
    }

    /// Any state but Stopped → Stopped.
    pub fn stop(&mut self, reason: StopReason) -> Result<(), InvalidTransition> {
        self.go(!self.is_stopped(), Self::Stopped(reason), "stop")
    }

    /// Whether the state is final.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Self::Stopped(_))
    }
}

/// The state of one vCPU that policy keeps: its run state, its MSR file
/// and its CPUID answers. Registers, the FPU area and the control block
/// belong to the backend; the VM's memory, devices and console to
/// [`VmContext`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuState {
    index: u32,
    state: VcpuRunState,
    /// Software-kept MSR values of this vCPU.
    pub msrs: MsrState,
    /// CPUID answers filled when the VM is created (empty: every leaf is
    /// computed at its exit).
    pub cpuid: CpuidTable,
    /// Exits handled without the VM ([`crate::exit::handle_vcpu_exit`]),
    /// until they are added to the VM's statistics.
    pub exits: ExitCounts,
    /// The ports the VM's devices claim (the default claims them all: ask
    /// the VM's bus at every access): an access to another port is
    /// answered without the VM.
    pub ports: crate::devices::bus::ClaimedPorts,
    /// UART output the vCPU kept without the VM ([`Self::drain_console`]).
    pub console_tx: DirectTx,
}

impl VcpuState {
    /// vCPU number `index` of its VM, freshly created (with an empty CPUID
    /// table).
    pub fn new(index: u32) -> Self {
        VcpuState {
            index,
            state: VcpuRunState::Created,
            msrs: MsrState::default(),
            cpuid: CpuidTable::default(),
            exits: ExitCounts::default(),
            ports: Default::default(),
            console_tx: DirectTx::default(),
        }
    }

    /// Takes the VM's lock-free views: the ports its devices claim and, in
    /// a VM of `vcpus` vCPUs, the port of its direct UART output when it is
    /// the only one. (With several, a byte one vCPU kept could be overtaken
    /// by another's after the guest's own lock handed the UART over: their
    /// output goes through the model, in the order it happens.)
    pub fn join(&mut self, vm: &VmContext, vcpus: usize) {
        self.ports = vm.bus.claimed_ports();
        self.console_tx = if vcpus == 1 {
            DirectTx::new(Arc::clone(&vm.direct_tx))
        } else {
            DirectTx::default()
        };
    }

    /// Hands the UART bytes the vCPU kept to the VM's console. Called before
    /// every exit of the vCPU that reaches the VM and at the end of each of
    /// its slices, so the vCPU's output keeps its order. In a VM that has
    /// stopped (its last line flushed then) they go out at once.
    #[inline]
    pub fn drain_console(&mut self, vm: &mut VmContext, env: &mut dyn Platform) {
        if !self.console_tx.pending().is_empty() {
            self.hand_over_console(vm, env);
        }
    }

    /// [`Self::drain_console`] with bytes kept: out of the exit path's way.
    #[inline(never)]
    fn hand_over_console(&mut self, vm: &mut VmContext, env: &mut dyn Platform) {
        vm.console_bytes(self.console_tx.pending(), env);
        self.console_tx.clear();
        if vm.stopped.is_some() {
            vm.flush_console(env);
        }
    }

    /// This vCPU's number within its VM.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Run state.
    pub fn run_state(&self) -> &VcpuRunState {
        &self.state
    }

    /// Run state, for the kernel's `make_runnable`/`enter`/`wake`/`preempt`.
    pub fn run_state_mut(&mut self) -> &mut VcpuRunState {
        &mut self.state
    }

    /// [`Self::after_exit`] for an exit that neither injects nor stops.
    #[inline(always)]
    pub(crate) fn run_state_after(&mut self, next: crate::arch::Next) {
        use crate::arch::Next;
        match next {
            Next::Yield | Next::Preempted => {
                let _ = self.state.preempt();
            }
            Next::Halt => {
                let _ = self.state.halt();
            }
            Next::Resume | Next::AdvanceRip | Next::Inject(_) | Next::Stop => {}
        }
    }

    /// Run-state bookkeeping after a handled exit. A transition error means
    /// the kernel skipped `enter()`; the state is then left as it was rather
    /// than guessed.
    #[inline]
    pub(crate) fn after_exit(&mut self, action: &Action) {
        match action {
            Action::Resume | Action::AdvanceRip | Action::Inject(_) => {}
            Action::Yield | Action::Preempted => {
                let _ = self.state.preempt();
            }
            Action::Halt => {
                let _ = self.state.halt();
            }
            Action::Stop(reason) => {
                let _ = self.state.stop(*reason);
            }
        }
    }
}

/// One VM: identity, devices, console and statistics, shared by its vCPUs.
pub struct VmContext {
    id: u32,
    name: String,
    /// Counters.
    pub stats: VmStats,
    pub(crate) bus: IoBus,
    console: LineBuffer,
    /// Console output goes out raw ([`Self::set_raw_console`]).
    raw_console: bool,
    irq_levels: u16,
    /// Whether the PIC may present an interrupt: false only while it is
    /// known not to. Everything that changes PIC state sets it (IRQ lines,
    /// guest accesses to the PIC, acknowledgement, [`Self::bus_mut`]);
    /// [`Self::pending_interrupt`] asks the PIC only while it is set, and
    /// clears it when the PIC has nothing. The kernel looks at this before
    /// every entry.
    intr_possible: bool,
    /// When a device will next change an IRQ line by itself (ns), kept
    /// current by everything that changes device time or programming.
    deadline_ns: Option<u64>,
    stopped: Option<StopReason>,
    /// The I/O APIC of a VM with local APICs: ISA IRQ n reaches its pin n
    /// (IRQ 0, the PIT, pin 2: the MADT's interrupt source override), beside
    /// the PIC.
    ioapic: Option<IoApic>,
    /// Interrupt messages the I/O APIC sent, for the kernel to deliver to
    /// the local APICs ([`Self::take_apic_messages`]).
    apic_out: Vec<InterruptMessage>,
    /// The bus index of COM1, whose state decides `direct_tx`.
    uart: Option<usize>,
    /// Where an `OUT` is only console output, for the vCPUs
    /// ([`crate::devices::console`]): kept current after every guest write
    /// to the UART.
    direct_tx: Arc<DirectTxPort>,
}

// The vCPUs of a VM, on several CPUs, share its context behind a lock.
const _: () = {
    const fn send<T: Send>() {}
    send::<VmContext>()
};

/// The port at which an `OUT` to the bus's UART is only output, as the model
/// states it now ([`Serial16550::direct_tx_port`]).
fn direct_tx_port(bus: &IoBus) -> Option<u16> {
    bus.device::<Serial16550>()
        .and_then(Serial16550::direct_tx_port)
}

impl VmContext {
    /// A VM with a COM1 UART (the devices every guest gets).
    pub fn new(id: u32, name: &str) -> Self {
        let mut bus = IoBus::new();
        // The bus is empty, so COM1 cannot overlap anything.
        let _ = bus.register(Box::new(Serial16550::com1()));
        let uart = bus.find(crate::devices::serial16550::COM1_BASE);
        let direct_tx = Arc::new(DirectTxPort::default());
        direct_tx.publish(direct_tx_port(&bus));
        VmContext {
            id,
            name: String::from(name),
            stats: VmStats::default(),
            bus,
            console: LineBuffer::new(),
            raw_console: false,
            irq_levels: 0,
            intr_possible: true,
            deadline_ns: None,
            stopped: None,
            ioapic: None,
            apic_out: Vec::new(),
            uart,
            direct_tx,
        }
    }

    /// A VM with the PC device set ([`crate::devices::pc`]): COM1, the 8259
    /// pair with ELCR, the 8254 with port 0x61, CMOS/RTC, i8042, port 0x80,
    /// port 0x92 and the PCI configuration ports.
    pub fn with_pc_devices(id: u32, name: &str, cfg: &PcConfig) -> Self {
        let mut vm = Self::new(id, name);
        // The set's port ranges are fixed and disjoint (a test checks), and
        // `add_pc_devices` keeps the COM1 that `new` registered.
        let _ = add_pc_devices(&mut vm.bus, cfg);
        vm.refresh_deadline();
        vm
    }

    /// VM id (hypercall `VM_ID`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// VM name (console prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why the VM stopped, once it has.
    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.stopped.as_ref()
    }

    /// The port bus (to register more devices or reach one by type).
    pub fn bus(&self) -> &IoBus {
        &self.bus
    }

    /// The port bus, mutably. Whatever is done to the devices through it,
    /// the VM looks at the PIC again before the next entry and advances
    /// the devices' time at once, and UART output goes through the model
    /// until the guest's next write to the UART.
    pub fn bus_mut(&mut self) -> &mut IoBus {
        self.intr_possible = true;
        self.deadline_ns = Some(0);
        self.direct_tx.publish(None);
        &mut self.bus
    }

    /// After a guest write to device `index`: when it is the UART, its
    /// direct output port again.
    #[inline]
    pub(crate) fn device_written(&mut self, index: usize) {
        if self.uart == Some(index) {
            self.direct_tx.publish(direct_tx_port(&self.bus));
        }
    }

    /// `Some` once the VM has stopped: its report line.
    pub fn stop_report(&self) -> Option<StopReport<'_>> {
        self.stopped.as_ref().map(|reason| StopReport {
            name: &self.name,
            id: self.id,
            reason,
        })
    }

    /// Stops the VM (a handler's [`Action::Stop`], or the kernel side, e.g.
    /// a VM-entry failure detected by VMLAUNCH/VMRESUME itself). Flushes the
    /// console; a second stop keeps the first reason. The kernel stops every
    /// vCPU of a stopped VM.
    pub fn stop(&mut self, reason: StopReason, env: &mut dyn Platform) {
        self.flush_console(env);
        self.stopped.get_or_insert(reason);
    }

    /// One byte of guest console output (UART or hypercall): collected into
    /// sanitized lines printed as `vm NAME: LINE`, or passed on as it is
    /// while the console is raw.
    #[inline]
    pub fn console_byte(&mut self, byte: u8, env: &mut dyn Platform) {
        self.console_bytes(&[byte], env);
    }

    /// [`Self::console_byte`] for several bytes.
    pub fn console_bytes(&mut self, bytes: &[u8], env: &mut dyn Platform) {
        let name = &self.name;
        if self.raw_console {
            env.console_raw(name, bytes);
        } else {
            for &byte in bytes {
                self.console
                    .push(byte, |line| env.console_write(name, line));
            }
        }
    }

    /// Switches the console between lines (`vm NAME: LINE`, control
    /// characters replaced; the default) and raw output
    /// ([`Platform::console_raw`]: bytes as they come, unprefixed, control
    /// characters included), for while a user has the host console attached
    /// to this VM. An unfinished line (a shell prompt) goes out raw when the
    /// console turns raw, so the user sees it at once. Returns whether the
    /// mode changed.
    pub fn set_raw_console(&mut self, raw: bool, env: &mut dyn Platform) -> bool {
        if self.raw_console == raw {
            return false;
        }
        self.raw_console = raw;
        if raw {
            let name = &self.name;
            self.console
                .take_partial(|bytes| env.console_raw(name, bytes));
        }
        true
    }

    /// Whether console output goes out raw.
    pub fn raw_console(&self) -> bool {
        self.raw_console
    }

    /// Prints a pending partial console line.
    pub fn flush_console(&mut self, env: &mut dyn Platform) {
        let name = &self.name;
        self.console
            .flush_partial(|line| env.console_write(name, line));
    }

    /// Host console input for the guest's UART.
    pub fn console_input(&mut self, bytes: &[u8], env: &mut dyn Platform) {
        let mut fx = Effects::new();
        if let Some(uart) = self.bus.device_mut::<Serial16550>() {
            uart.push_input(bytes, &mut fx);
        }
        self.apply_effects(&fx, env);
        // The character timeout may now be coming.
        self.refresh_deadline();
    }

    /// Applies device effects to the VM: console output and IRQ levels.
    #[inline]
    pub fn apply_effects(&mut self, fx: &Effects, env: &mut dyn Platform) {
        for effect in fx.iter() {
            match effect {
                DeviceEffect::Output(byte) => self.console_byte(byte, env),
                DeviceEffect::RaiseIrq(line) => self.set_irq_level(line, true),
                DeviceEffect::LowerIrq(line) => self.set_irq_level(line, false),
            }
        }
    }

    /// Gives the VM an I/O APIC with `id` (a VM with local APICs).
    pub fn enable_ioapic(&mut self, id: u8) {
        self.ioapic = Some(IoApic::new(id));
    }

    /// Whether `gpa` lies in the I/O APIC's register window.
    pub fn ioapic_claims(&self, gpa: u64) -> bool {
        self.ioapic.is_some() && gpa & !0xFFF == crate::devices::ioapic::IOAPIC_BASE
    }

    /// A 32-bit access to the I/O APIC's window at `offset` (`write` with
    /// the value, or a read); the value read (0 for a write).
    pub fn ioapic_mmio(&mut self, offset: u32, write: Option<u32>) -> u32 {
        let Some(io) = self.ioapic.as_mut() else {
            return u32::MAX;
        };
        match write {
            Some(value) => {
                let sent = io.mmio_write(offset, value);
                self.apic_out.extend(sent);
                0
            }
            None => io.mmio_read(offset),
        }
    }

    /// A local APIC's EOI of level-triggered `vector` (SDM Vol. 3A 11.8.5):
    /// the I/O APIC clears Remote IRR and sends again if the line is still
    /// up.
    pub fn ioapic_eoi(&mut self, vector: u8) {
        if let Some(io) = self.ioapic.as_mut() {
            let sent = io.eoi(vector);
            self.apic_out.extend(sent);
        }
    }

    /// Whether the I/O APIC sent messages not yet delivered.
    #[inline]
    pub fn has_apic_messages(&self) -> bool {
        !self.apic_out.is_empty()
    }

    /// The I/O APIC's messages since the last call, oldest first.
    pub fn take_apic_messages(&mut self) -> Vec<InterruptMessage> {
        core::mem::take(&mut self.apic_out)
    }

    /// Sets ISA line `irq` (0..=15) and forwards it to the PIC, if present,
    /// and to the I/O APIC, if the VM has one.
    pub fn set_irq_level(&mut self, irq: u8, level: bool) {
        let Some(bit) = 1u16.checked_shl(u32::from(irq)) else {
            return;
        };
        if level {
            self.irq_levels |= bit;
        } else {
            self.irq_levels &= !bit;
        }
        if let Some(pic) = self.bus.device_mut::<PicPair>() {
            pic.set_irq(irq, level);
            self.intr_possible = true;
        }
        if let Some(io) = self.ioapic.as_mut() {
            let pin = if irq == 0 { 2 } else { irq };
            if let Some(msg) = io.set_irq(pin, level) {
                self.apic_out.push(msg);
            }
        }
    }

    /// Current level of ISA line `irq`.
    pub fn irq_level(&self, irq: u8) -> bool {
        1u16.checked_shl(u32::from(irq))
            .is_some_and(|bit| self.irq_levels & bit != 0)
    }

    /// Advances the time-driven devices (PIT, RTC, UART timeout) to
    /// `now_ns` and applies their IRQ changes. Returns the number of PIT
    /// periods that elapsed (several collapse into one edge).
    pub fn advance_timers(&mut self, now_ns: u64, env: &mut dyn Platform) -> u64 {
        let mut fx = Effects::new();
        let edges = advance(&mut self.bus, now_ns, &mut fx);
        self.apply_effects(&fx, env);
        self.refresh_deadline();
        edges
    }

    /// When a device will next change an IRQ line by itself (ns), if ever:
    /// kept current, so asking costs nothing.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.deadline_ns
    }

    /// Looks at the devices' deadlines again (their time or programming
    /// changed).
    pub(crate) fn refresh_deadline(&mut self) {
        self.bus.note_deadlines();
        self.deadline_ns = self.bus.next_deadline_ns();
    }

    /// Device `index` was accessed: its deadline may have changed.
    pub(crate) fn device_deadline_changed(&mut self, index: usize) {
        self.bus.note_deadline(index);
        self.deadline_ns = self.bus.next_deadline_ns();
    }

    /// The PIC changed (a guest access to it): look at its vector again.
    pub(crate) fn pic_changed(&mut self) {
        self.intr_possible = true;
    }

    /// Whether the PIC may present an interrupt ([`Self::pending_interrupt`]
    /// then says which): false only while it is known not to. The kernel
    /// tests this before every entry.
    #[inline]
    pub fn interrupt_possible(&self) -> bool {
        self.intr_possible
    }

    /// The vector the virtual PIC presents, if any (a halted vCPU with one
    /// should be woken). Costs a flag test while the PIC is known to have
    /// nothing, which is what the kernel asks before every entry.
    #[inline]
    pub fn pending_interrupt(&mut self) -> Option<u8> {
        if !self.intr_possible {
            return None;
        }
        let vector = self
            .bus
            .device::<PicPair>()
            .and_then(PicPair::pending_vector);
        self.intr_possible = vector.is_some();
        vector
    }

    /// Acknowledges the PIC's pending interrupt, for injection at the next
    /// entry when the guest is interruptible. Counted as an injected event.
    pub fn ack_interrupt(&mut self) -> Option<Event> {
        self.intr_possible = true;
        let vector = self.bus.device_mut::<PicPair>()?.ack()?;
        self.stats.injected_events += 1;
        Some(Event::interrupt(vector))
    }
}

impl fmt::Debug for VmContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmContext")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::PortDevice;
    use crate::exit::testenv::FakePlatform;
    use crate::exit::{handle_exit, Access, AccessSize, Exit, GuestRegs, IoAccess, IoDir};

    #[test]
    fn legal_and_illegal_transitions() {
        let mut s = VcpuRunState::Created;
        assert!(s.enter().is_err());
        s.make_runnable().unwrap();
        s.enter().unwrap();
        assert!(s.wake().is_err());
        s.halt().unwrap();
        assert_eq!(s.enter().unwrap_err().from, VcpuRunState::Halted);
        s.wake().unwrap();
        s.enter().unwrap();
        s.preempt().unwrap();
        s.stop(StopReason::Shutdown { code: 0 }).unwrap();
        assert!(s.is_stopped());
        assert!(s.stop(StopReason::Shutdown { code: 1 }).is_err());
        assert!(s.make_runnable().is_err());
        assert_eq!(s, VcpuRunState::Stopped(StopReason::Shutdown { code: 0 }));
    }

    #[test]
    fn a_slice_begins_from_runnable_or_halted_only() {
        for from in every_state() {
            let mut s = from;
            let ok = matches!(from, VcpuRunState::Runnable | VcpuRunState::Halted);
            assert_eq!(s.begin_slice().is_ok(), ok, "from {from:?}");
            let expected = if ok { VcpuRunState::Running } else { from };
            assert_eq!(s, expected);
        }
    }

    /// One of each state.
    fn every_state() -> [VcpuRunState; 6] {
        [
            VcpuRunState::Created,
            VcpuRunState::Runnable,
            VcpuRunState::Running,
            VcpuRunState::Halted,
            VcpuRunState::WaitForSipi,
            VcpuRunState::Stopped(StopReason::HostStop),
        ]
    }

    #[test]
    fn wait_for_sipi_from_any_state_but_stopped() {
        for from in every_state() {
            let mut s = from;
            let r = s.wait_for_sipi();
            if from.is_stopped() {
                assert_eq!(
                    r,
                    Err(InvalidTransition {
                        from,
                        attempted: "wait_for_sipi"
                    })
                );
                assert_eq!(s, from, "a refused transition changes nothing");
            } else {
                assert_eq!(r, Ok(()), "{from:?}");
                assert_eq!(s, VcpuRunState::WaitForSipi, "{from:?}");
            }
        }
    }

    #[test]
    fn start_up_only_from_wait_for_sipi() {
        for from in every_state() {
            let mut s = from;
            let r = s.start_up();
            if from == VcpuRunState::WaitForSipi {
                assert_eq!(r, Ok(()));
                assert_eq!(s, VcpuRunState::Runnable);
            } else {
                assert_eq!(
                    r,
                    Err(InvalidTransition {
                        from,
                        attempted: "start_up"
                    }),
                    "{from:?}"
                );
                assert_eq!(s, from, "{from:?}");
            }
        }
    }

    #[test]
    fn application_processor_life_cycle() {
        // Created, parked until its SIPI, then run like any vCPU; an INIT
        // while running parks it again; a second SIPI is ignored.
        let mut s = VcpuRunState::Created;
        s.wait_for_sipi().unwrap();
        for refused in [
            VcpuRunState::make_runnable,
            VcpuRunState::enter,
            VcpuRunState::preempt,
            VcpuRunState::halt,
            VcpuRunState::wake,
        ] {
            assert_eq!(refused(&mut s).unwrap_err().from, VcpuRunState::WaitForSipi);
            assert_eq!(s, VcpuRunState::WaitForSipi);
        }
        s.start_up().unwrap();
        assert!(s.start_up().is_err(), "a second SIPI");
        s.enter().unwrap();
        s.halt().unwrap();
        s.wait_for_sipi().unwrap();
        s.start_up().unwrap();
        s.enter().unwrap();
        s.wait_for_sipi().unwrap();
        // A parked vCPU may still be stopped, and stays so.
        s.stop(StopReason::HostStop).unwrap();
        assert!(s.wait_for_sipi().is_err());
        assert!(s.start_up().is_err());
        assert_eq!(s, VcpuRunState::Stopped(StopReason::HostStop));
    }

    /// Programs I/O APIC redirection entry `pin` through the guest's MMIO
    /// window (high dword first, as Linux does).
    fn program(vm: &mut VmContext, pin: u8, entry: u64) {
        use crate::devices::ioapic::{IOREDTBL, IOREGSEL, IOWIN};
        let index = u32::from(IOREDTBL) + 2 * u32::from(pin);
        assert_eq!(vm.ioapic_mmio(IOREGSEL, Some(index + 1)), 0);
        assert_eq!(vm.ioapic_mmio(IOWIN, Some((entry >> 32) as u32)), 0);
        assert_eq!(vm.ioapic_mmio(IOREGSEL, Some(index)), 0);
        vm.ioapic_mmio(IOWIN, Some(entry as u32));
        // Read back as written (Remote IRR aside: set if it sent).
        let remote_irr = crate::devices::ioapic::RTE_REMOTE_IRR as u32;
        assert_eq!(vm.ioapic_mmio(IOWIN, None) & !remote_irr, entry as u32);
    }

    fn msg(vector: u8, dest: u32, level_triggered: bool) -> InterruptMessage {
        use crate::devices::apic_msg::{DeliveryMode, Destination};
        InterruptMessage {
            vector,
            mode: DeliveryMode::Fixed,
            dest: Destination::Physical(dest),
            level_triggered,
            assert: true,
        }
    }

    const LEVEL: u64 = crate::devices::ioapic::RTE_LEVEL;

    #[test]
    fn enable_ioapic_claims_its_window() {
        use crate::devices::ioapic::{IOAPIC_BASE, IOREGSEL, IOWIN};
        let mut vm = VmContext::new(1, "smp");
        assert!(!vm.ioapic_claims(IOAPIC_BASE));
        assert_eq!(vm.ioapic_mmio(IOWIN, None), u32::MAX, "no I/O APIC");
        assert_eq!(vm.ioapic_mmio(IOREGSEL, Some(1)), u32::MAX);
        vm.enable_ioapic(2);
        for gpa in [IOAPIC_BASE, IOAPIC_BASE + 0x10, IOAPIC_BASE + 0xFFF] {
            assert!(vm.ioapic_claims(gpa), "{gpa:#x}");
        }
        for gpa in [0, IOAPIC_BASE - 1, IOAPIC_BASE + 0x1000, 0xFEE0_0000] {
            assert!(!vm.ioapic_claims(gpa), "{gpa:#x}");
        }
        // ID register (index 0) and version (index 1).
        vm.ioapic_mmio(IOREGSEL, Some(0));
        assert_eq!(vm.ioapic_mmio(IOWIN, None), 2 << 24);
        vm.ioapic_mmio(IOREGSEL, Some(1));
        assert_eq!(vm.ioapic_mmio(IOWIN, None), 0x0017_0020);
        // Every entry starts masked: nothing reaches the local APICs.
        for irq in 0..16 {
            vm.set_irq_level(irq, true);
        }
        assert!(!vm.has_apic_messages());
    }

    #[test]
    fn isa_irqs_reach_ioapic_pins() {
        let mut vm = VmContext::with_pc_devices(1, "smp", &PC);
        vm.enable_ioapic(0);
        // Edge-triggered, unmasked: pin 4 (COM1) to APIC 1, pin 2 (the PIT
        // after the interrupt source override) to APIC 0, pin 0 too.
        program(&mut vm, 4, (1 << 56) | 0x34);
        program(&mut vm, 2, 0x30);
        program(&mut vm, 0, 0x50);
        assert!(!vm.has_apic_messages(), "programming sends nothing");
        vm.set_irq_level(4, true);
        assert!(vm.has_apic_messages());
        assert_eq!(vm.take_apic_messages(), [msg(0x34, 1, false)]);
        assert!(!vm.has_apic_messages());
        assert!(vm.take_apic_messages().is_empty());
        // No edge while the line stays up; the next rising edge sends.
        vm.set_irq_level(4, true);
        assert!(!vm.has_apic_messages());
        vm.set_irq_level(4, false);
        vm.set_irq_level(4, true);
        assert_eq!(vm.take_apic_messages(), [msg(0x34, 1, false)]);
        // IRQ 0 is pin 2, not pin 0.
        vm.set_irq_level(0, true);
        assert_eq!(vm.take_apic_messages(), [msg(0x30, 0, false)]);
        vm.set_irq_level(0, false);
        // A masked or never programmed pin sends nothing.
        vm.set_irq_level(3, true);
        program(&mut vm, 6, crate::devices::ioapic::RTE_MASKED | 0x36);
        vm.set_irq_level(6, true);
        assert!(!vm.has_apic_messages());
        // The PIC still sees every line.
        assert!(vm.irq_level(4) && vm.irq_level(3) && vm.irq_level(6));
        assert!(!vm.irq_level(0));
        // Several at once come out oldest first.
        vm.set_irq_level(4, false);
        vm.set_irq_level(4, true);
        vm.set_irq_level(0, true);
        assert_eq!(
            vm.take_apic_messages(),
            [msg(0x34, 1, false), msg(0x30, 0, false)]
        );
    }

    #[test]
    fn level_eoi_redelivers_an_asserted_line() {
        let mut vm = VmContext::new(1, "smp");
        vm.enable_ioapic(0);
        program(&mut vm, 9, LEVEL | 0x39);
        vm.set_irq_level(9, true);
        assert_eq!(vm.take_apic_messages(), [msg(0x39, 0, true)]);
        // Remote IRR set: no more while the line stays up...
        vm.set_irq_level(9, true);
        assert!(!vm.has_apic_messages());
        // ...until the EOI, which sends it again; another vector's EOI
        // does nothing.
        vm.ioapic_eoi(0x40);
        assert!(!vm.has_apic_messages());
        vm.ioapic_eoi(0x39);
        assert_eq!(vm.take_apic_messages(), [msg(0x39, 0, true)]);
        // The I/O APIC's own EOI register does the same.
        vm.ioapic_mmio(crate::devices::ioapic::EOI, Some(0x39));
        assert_eq!(vm.take_apic_messages(), [msg(0x39, 0, true)]);
        // The line down: the EOI ends it.
        vm.set_irq_level(9, false);
        vm.ioapic_eoi(0x39);
        assert!(!vm.has_apic_messages());
        // Up again: sent at once (Remote IRR was cleared).
        vm.set_irq_level(9, true);
        assert_eq!(vm.take_apic_messages(), [msg(0x39, 0, true)]);
    }

    #[test]
    fn unmasking_an_asserted_level_line_sends_it() {
        let mut vm = VmContext::new(1, "smp");
        vm.enable_ioapic(0);
        program(
            &mut vm,
            11,
            crate::devices::ioapic::RTE_MASKED | LEVEL | 0x3B,
        );
        vm.set_irq_level(11, true);
        assert!(!vm.has_apic_messages());
        program(&mut vm, 11, LEVEL | 0x3B);
        assert_eq!(vm.take_apic_messages(), [msg(0x3B, 0, true)]);
    }

    #[test]
    fn vm_without_ioapic_keeps_pic_only_behaviour() {
        let mut vm = VmContext::with_pc_devices(1, "pc", &PC);
        // PIC: vectors 0x20, everything unmasked.
        if let Some(pic) = vm.bus_mut().device_mut::<PicPair>() {
            for (p, v) in [
                (0x20u16, 0x11u8),
                (0x21, 0x20),
                (0x21, 0x04),
                (0x21, 0x01),
                (0x21, 0x00),
            ] {
                pic.write(p, AccessSize::Byte, u32::from(v), &mut Effects::new());
            }
        }
        for irq in 0..16 {
            vm.set_irq_level(irq, true);
        }
        vm.ioapic_eoi(0x30);
        assert_eq!(
            vm.ioapic_mmio(crate::devices::ioapic::EOI, Some(0x30)),
            u32::MAX
        );
        assert!(!vm.has_apic_messages());
        assert!(vm.take_apic_messages().is_empty());
        assert!(!vm.ioapic_claims(crate::devices::ioapic::IOAPIC_BASE));
        assert_eq!(vm.pending_interrupt(), Some(0x20), "IRQ 0 on the PIC");
        assert!((0..16).all(|irq| vm.irq_level(irq)));
    }

    #[test]
    fn stop_report_lines() {
        let mut vm = VmContext::new(4, "db");
        let mut env = FakePlatform::new();
        assert!(vm.stop_report().is_none());
        vm.stop(
            StopReason::Fault {
                vector: 18,
                error_code: None,
                rip: 0x10,
            },
            &mut env,
        );
        assert_eq!(
            alloc::format!("{}", vm.stop_report().unwrap()),
            "vm db (id 4) stopped: fatal guest exception 18 at rip 0x10"
        );
        let r = StopReason::MemoryViolation {
            gpa: 0x1000,
            rip: 0x20,
            access: Access::EXECUTE,
            linear: None,
        };
        assert_eq!(
            alloc::format!("{r}"),
            "EPT/NPT violation at gpa 0x1000 outside the VM's memory (access --x) at rip 0x20"
        );
        let r = StopReason::Shutdown { code: 3 };
        assert_eq!(alloc::format!("{r}"), "shutdown, exit code 3");
    }

    const PC: PcConfig = PcConfig {
        wall_clock_secs: 0,
        now_ns: 0,
        memory_bytes: 16 << 20,
    };

    #[test]
    fn pc_devices_timer_interrupt_end_to_end() {
        let mut vm = VmContext::with_pc_devices(1, "pc", &PC);
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs::default();
        let mut out = |vm: &mut VmContext, port: u16, v: u8| {
            let exit = Exit::Io(IoAccess {
                port,
                size: AccessSize::Byte,
                dir: IoDir::Out {
                    value: u32::from(v),
                },
                string_or_rep: false,
            });
            assert_eq!(
                handle_exit(vm, &mut vcpu, &exit, &mut regs, &mut env),
                Action::AdvanceRip
            );
        };
        for (p, v) in [
            (0x20, 0x11),
            (0x21, 0x30),
            (0x21, 0x04),
            (0x21, 0x01),
            (0x21, 0xFE),
        ] {
            out(&mut vm, p, v);
        }
        out(&mut vm, 0x43, 0x34);
        out(&mut vm, 0x40, 0x9C); // 11932
        out(&mut vm, 0x40, 0x2E);
        assert_eq!(vm.pending_interrupt(), None);
        assert_eq!(vm.advance_timers(25_000_000, &mut env), 2);
        assert_eq!(vm.pending_interrupt(), Some(0x30));
        assert_eq!(vm.ack_interrupt(), Some(Event::interrupt(0x30)));
        assert_eq!(vm.pending_interrupt(), None);
        assert_eq!(vm.stats.injected_events, 1);
        assert_eq!(vm.stats.unhandled_port_writes, 0);
    }

    #[test]
    fn raw_console_passes_bytes_unprefixed() {
        let mut vm = VmContext::new(2, "linux");
        let mut env = FakePlatform::new();
        for &b in b"boot \x07ok\n/ # \x1b[6n" {
            vm.console_byte(b, &mut env);
        }
        assert_eq!(env.lines, ["[linux] boot ?ok"]);
        // Attaching shows the pending prompt as the guest wrote it (its
        // cursor-position query included), then bytes as they come, escape
        // sequences and carriage returns included.
        assert!(vm.set_raw_console(true, &mut env));
        assert!(!vm.set_raw_console(true, &mut env));
        assert!(vm.raw_console());
        for &b in b"42\r\n\xff" {
            vm.console_byte(b, &mut env);
        }
        assert_eq!(env.raw, b"/ # \x1b[6n42\r\n\xff");
        assert_eq!(env.raw_vm, "linux");
        assert_eq!(env.lines.len(), 1, "nothing went to the line console");
        // A stop while raw has no partial line to flush.
        vm.stop(StopReason::HostStop, &mut env);
        assert_eq!(env.lines.len(), 1);
        // Detached: lines again, sanitized and prefixed.
        let mut vm = VmContext::new(3, "sh");
        vm.set_raw_console(true, &mut env);
        assert!(vm.set_raw_console(false, &mut env));
        for &b in b"\x1b[1mx\r\n" {
            vm.console_byte(b, &mut env);
        }
        assert_eq!(env.lines.last().map(String::as_str), Some("[sh] ?[1mx"));
    }

    #[test]
    fn raw_console_echo_of_uart_input() {
        // A guest echoing what it reads (as a shell does) through the UART
        // in polled mode: input in, raw echo out.
        let mut vm = VmContext::with_pc_devices(1, "pc", &PC);
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        vm.set_raw_console(true, &mut env);
        vm.console_input(b"ab", &mut env);
        let mut regs = GuestRegs::default();
        let mut io = |vm: &mut VmContext, port: u16, dir: IoDir| {
            let exit = Exit::Io(IoAccess {
                port,
                size: AccessSize::Byte,
                dir,
                string_or_rep: false,
            });
            handle_exit(vm, &mut vcpu, &exit, &mut regs, &mut env);
            regs.rax as u8
        };
        for _ in 0..2 {
            assert_eq!(io(&mut vm, 0x3FD, IoDir::In) & 1, 1, "LSR.DR");
            let byte = io(&mut vm, 0x3F8, IoDir::In);
            io(
                &mut vm,
                0x3F8,
                IoDir::Out {
                    value: u32::from(byte),
                },
            );
        }
        assert_eq!(io(&mut vm, 0x3FD, IoDir::In) & 1, 0, "all read");
        assert_eq!(env.raw, b"ab");
        assert!(env.lines.is_empty());
    }

    #[test]
    fn typed_line_reaches_a_fifo_guest_by_character_timeout() {
        // Linux's 8250 driver: FIFO with trigger level 8, receive interrupt
        // on, OUT2 set. A line shorter than the trigger level is announced
        // by the character timeout, which the VM's device clock runs.
        let mut vm = VmContext::with_pc_devices(1, "linux", &PC);
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        if let Some(pic) = vm.bus_mut().device_mut::<PicPair>() {
            for (p, v) in [
                (0x20u16, 0x11u8),
                (0x21, 0x30),
                (0x21, 0x04),
                (0x21, 0x01),
                (0x21, 0xEF),
            ] {
                pic.write(p, AccessSize::Byte, u32::from(v), &mut Effects::new());
            }
        }
        let mut regs = GuestRegs::default();
        for (port, v) in [(0x3FAu16, 0x81u32), (0x3FC, 0x0B), (0x3F9, 0x01)] {
            let exit = Exit::Io(IoAccess {
                port,
                size: AccessSize::Byte,
                dir: IoDir::Out { value: v },
                string_or_rep: false,
            });
            handle_exit(&mut vm, &mut vcpu, &exit, &mut regs, &mut env);
        }
        assert_eq!(vm.next_deadline_ns(), None, "no input, no timeout");
        vm.console_input(b"ls\r", &mut env);
        assert_eq!(vm.pending_interrupt(), None, "3 bytes < trigger level 8");
        let due = vm.next_deadline_ns().expect("the character timeout is due");
        vm.advance_timers(due, &mut env);
        assert!(vm.irq_level(4));
        assert_eq!(vm.pending_interrupt(), Some(0x34));
        // A full trigger level raises it at once.
        let mut vm2 = VmContext::with_pc_devices(2, "b", &PC);
        if let Some(uart) = vm2.bus_mut().device_mut::<Serial16550>() {
            for (p, v) in [(0x3FAu16, 0x81u32), (0x3FC, 0x0B), (0x3F9, 0x01)] {
                uart.write(p, AccessSize::Byte, v, &mut Effects::new());
            }
        }
        vm2.console_input(b"echo $((6*7))\r", &mut env);
        assert!(vm2.irq_level(4));
    }

    #[test]
    fn console_input_raises_uart_irq_on_pic() {
        let mut vm = VmContext::with_pc_devices(1, "pc", &PC);
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        // PIC: vectors 0x20, only IRQ 4 unmasked.
        if let Some(pic) = vm.bus_mut().device_mut::<PicPair>() {
            for (p, v) in [
                (0x20u16, 0x11u8),
                (0x21, 0x20),
                (0x21, 0x04),
                (0x21, 0x01),
                (0x21, 0xEF),
            ] {
                pic.write(p, AccessSize::Byte, u32::from(v), &mut Effects::new());
            }
        }
        let mut regs = GuestRegs::default();
        for (port, v) in [(0x3FCu16, 0x08u32), (0x3F9, 0x01)] {
            let exit = Exit::Io(IoAccess {
                port,
                size: AccessSize::Byte,
                dir: IoDir::Out { value: v },
                string_or_rep: false,
            });
            handle_exit(&mut vm, &mut vcpu, &exit, &mut regs, &mut env);
        }
        vm.console_input(b"k", &mut env);
        assert!(vm.irq_level(4));
        assert_eq!(vm.pending_interrupt(), Some(0x24));
        assert!(!vm.irq_level(99));
        vm.set_irq_level(99, true); // ignored, no panic
    }
}
