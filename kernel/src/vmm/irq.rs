//! The VM's devices between exits: time-driven devices catch up with the
//! clock before each entry (only when one of them is due), and the virtual
//! PIC's interrupt is injected when the guest can take it, or an
//! interrupt-window exit is requested (SDM 26.7.5 / APM 15.21).

use core::sync::atomic::Ordering;
use hvcore::devices::interrupt::{decide, Delivery, GuestInterruptibility};
use hvcore::exit::Event;
use hvcore::vcpu::{StopReason, VcpuState, VmContext};

use hvcore::devices::lapic::LocalApic;
use spin::Mutex;

use super::platform::KernelPlatform;
use super::vm::Vm;
use super::SliceEnd;

/// What a vCPU's full entry checks (`check_entry` of either backend) look
/// at besides the vCPU.
pub struct EntryChecks<'a> {
    /// The TSC now.
    pub now: u64,
    /// The TSC at which the slice ends.
    pub slice_end: u64,
    /// The vCPU has a local APIC.
    pub has_apic: bool,
    /// Its mailbox.
    pub link: &'a super::vm::VcpuLink,
}

/// After an exit the vCPU resumed from without moving RIP: the event exits
/// (a host interrupt, an interrupt window), the only ones
/// `handle_vcpu_exit` resumes from, or a platform exit that did. The next
/// entry looks at everything (`attention_at` 0): what a host interrupt's
/// handler did (a wake-up, a stop), the interrupt the window opened for.
/// A host interrupt is taken here by the host's IDT: STI's one-instruction
/// shadow ends after the NOP, where it is delivered, and CLI closes the
/// window again.
#[inline(always)]
pub fn event_exit_done(exit: &hvcore::exit::Exit, attention_at: &mut u64) {
    if let hvcore::exit::Exit::ExternalInterrupt = exit {
        // SAFETY: the host IDT handles every vector it can receive.
        unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
    }
    *attention_at = 0;
}

/// The host ends every slice at its next full check: it is stopping, or
/// its console queue is full.
#[inline(always)]
fn host_ends_slices(env: &KernelPlatform) -> bool {
    crate::smp::stopping() || env.output_full
}

/// The part of a vCPU's full entry checks that both backends share:
/// `Err` ends the slice (its time is up, the host is stopping or its
/// console queue is full, or the mailbox says so); `Ok(true)` when the
/// VM's devices must be locked to catch up and prepare the events to
/// inject (a device is due, an event waits, a window is watched, the PIC
/// or the local APIC may have an interrupt). The mailbox is applied and the
/// APIC timer fired here.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn shared_entry_checks(
    c: &EntryChecks<'_>,
    vm: &Vm,
    index: usize,
    state: &mut VcpuState,
    pending_event: &mut Option<Event>,
    clock: &mut DeviceClock,
    env: &KernelPlatform,
) -> Result<bool, SliceEnd> {
    let now = c.now;
    if now >= c.slice_end || host_ends_slices(env) {
        return Err(super::vm::end_slice_early(vm, state));
    }
    if c.link.mail.load(Ordering::Acquire) != 0 {
        if let Some(end) = super::vm::take_mail(vm, index, state, pending_event) {
            return Err(end);
        }
        // An interrupt may be waiting in the PIC: look under the lock.
        clock.intr_possible = true;
    }
    if c.has_apic {
        clock.apic_catch_up(now, vm, index);
    }
    Ok(clock.due(now)
        || pending_event.is_some()
        || clock.window_open
        || clock.intr_possible
        || (c.has_apic && vm.apic_pending(index)))
}

/// A TSC value no deadline reaches: "never", one compare like any other.
const NEVER: u64 = u64::MAX;

/// Per-vCPU bookkeeping of device time and the interrupt window.
pub struct DeviceClock {
    /// When a device next changes an IRQ line by itself, if ever: the VM's
    /// deadline in nanoseconds.
    deadline_ns: Option<u64>,
    /// The TSC value that reaches `deadline_ns` ([`NEVER`] without one),
    /// converted once, when the deadline changes, so each entry costs a
    /// compare.
    deadline_tsc: u64,
    /// Whether the backend currently asks for an interrupt-window exit.
    pub window_open: bool,
    /// When the vCPU's local APIC timer next fires (TSC), if it has one
    /// and it is armed.
    pub apic_due: Option<u64>,
    /// The VM's PIC may present an interrupt (`VmContext::interrupt_possible`
    /// as of the last time this vCPU held the VM's lock): while it is
    /// false, and nothing else is due, an entry needs no lock.
    pub intr_possible: bool,
    /// [`Vm::releases`] as of [`Self::refresh_or_stopped`]'s last look
    /// under the lock ([`NEVER`] before the first: no count reaches it).
    seen_releases: u64,
    /// The vCPU's last slice ended with a yield after a quiet entry, so its
    /// next slice may start with a quiet entry too
    /// ([`Self::slice_start_attention`]).
    resume_quiet: bool,
}

impl Default for DeviceClock {
    fn default() -> Self {
        DeviceClock {
            deadline_ns: None,
            deadline_tsc: NEVER,
            window_open: false,
            apic_due: None,
            intr_possible: false,
            seen_releases: NEVER,
            resume_quiet: false,
        }
    }
}

impl DeviceClock {
    /// Whether a device is due at `now` (TSC): [`Self::catch_up`] then.
    #[inline]
    pub fn due(&self, now: u64) -> bool {
        now >= self.deadline_tsc
    }

    /// The earliest TSC at which an entry must look at time again: `until`
    /// (the slice's end or the APIC timer) or the devices' deadline.
    #[inline]
    pub fn attention_at(&self, until: u64) -> u64 {
        self.deadline_tsc.min(until)
    }

    /// [`Self::attention_at`] after an exit handled with the platform: 0 (the
    /// next entry looks at everything) when that exit may have given the
    /// entry work: an event to inject (`event_pending`), an interrupt the
    /// PIC may present or a window to watch, a local APIC (`has_apic`: its
    /// state is not mirrored here), or `other` (the backend's own reasons).
    /// Otherwise only the deadline may have moved.
    #[inline]
    pub fn attention_after_exit(
        &self,
        until: u64,
        event_pending: bool,
        has_apic: bool,
        other: bool,
    ) -> u64 {
        if event_pending || has_apic || other || self.window_open || self.intr_possible {
            0
        } else {
            self.attention_at(until)
        }
    }

    /// Brings the devices up to `now` (TSC) when one is due.
    #[inline]
    pub fn catch_up(
        &mut self,
        now: u64,
        vm: &mut VmContext,
        shared: &Vm,
        env: &mut KernelPlatform,
    ) {
        if let Some(due_ns) = self.deadline_ns {
            if now >= self.deadline_tsc {
                self.tick(now, due_ns, vm, shared, env);
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn tick(
        &mut self,
        now: u64,
        due_ns: u64,
        vm: &mut VmContext,
        shared: &Vm,
        env: &mut KernelPlatform,
    ) {
        // The TSC says the deadline has come: the devices are at least there.
        let now_ns = super::ns_from_tsc(now).max(due_ns);
        vm.advance_timers(now_ns, &mut env.with(&shared.partition));
        shared.deliver_device_interrupts(vm);
        self.refresh(vm);
    }

    /// At a slice's start: the VM's stop reason if another vCPU or the host
    /// stopped it, else the deadline and the PIC brought up to date. Read
    /// under the VM's lock only when someone held it since this vCPU last
    /// read them here: a stop, a device's new deadline, an interrupt all
    /// change under the lock.
    #[inline]
    pub fn refresh_or_stopped(&mut self, vm: &Vm) -> Option<StopReason> {
        if self.seen_releases == vm.releases() {
            return None;
        }
        let ctx = vm.ctx();
        if let Some(reason) = ctx.stop_reason() {
            return Some(*reason);
        }
        self.refresh(&ctx);
        self.seen_releases = ctx.releases_after();
        None
    }

    /// A slice ends after an exit the vCPU handled; `attention_at` is the
    /// loop's (0: its next entry would have looked at everything). After a
    /// yield without a local APIC (whose timer and interrupts are read at
    /// every full check), a quiet entry stays quiet across the switch to
    /// other vCPUs and back, unless something changes meanwhile
    /// ([`Self::slice_start_attention`]). Branch-free: the slice loop's
    /// dispatch on its `Next` stays a compare.
    #[inline]
    pub fn slice_ended(&mut self, end: SliceEnd, attention_at: u64, has_apic: bool) {
        self.resume_quiet = matches!(end, SliceEnd::Yielded) & (attention_at != 0) & !has_apic;
    }

    /// `attention_at` for a slice's first entry, which ends at `slice_end`:
    /// 0 (the full checks) unless the last slice ended with a quiet yield
    /// ([`Self::slice_ended`]) and nothing the checks look at changed since:
    /// the VM's lock not taken by anyone ([`Self::refresh_or_stopped`],
    /// which runs first, clears the flag through [`Self::refresh`]) and no
    /// mail (mail from this CPU comes without a wake IPI). What else the
    /// full checks read is the vCPU's own and still as it left it, or the
    /// host's, which needs no look here: a stop comes with a wake IPI,
    /// pending until the entry, whose exit brings the full checks at once,
    /// and the CPU loop empties the console queue after every slice.
    #[inline]
    pub fn slice_start_attention(&mut self, slice_end: u64, link: &super::vm::VcpuLink) -> u64 {
        let quiet = core::mem::take(&mut self.resume_quiet);
        if quiet && link.mail.load(Ordering::Acquire) == 0 {
            self.attention_at(slice_end)
        } else {
            0
        }
    }

    /// The VM's deadline and PIC may have changed (a port exit, host
    /// input, a device tick).
    #[inline]
    pub fn refresh(&mut self, vm: &VmContext) {
        self.resume_quiet = false;
        let ns = vm.next_deadline_ns();
        if ns != self.deadline_ns {
            self.deadline_ns = ns;
            self.deadline_tsc = ns.map_or(NEVER, super::tsc_from_ns);
        }
        self.intr_possible = vm.interrupt_possible();
    }

    /// The TSC value at which a halted vCPU should be woken, if a device
    /// or its APIC timer will raise an interrupt by then.
    pub fn wake_tsc(&self) -> Option<u64> {
        let device = self.deadline_ns.map(|_| self.deadline_tsc);
        match (device, self.apic_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires vCPU `index`'s APIC timer when due (before an entry).
    #[inline]
    pub fn apic_catch_up(&mut self, now: u64, vm: &Vm, index: usize) {
        if let Some(due) = self.apic_due {
            if now >= due {
                self.apic_due = vm.apic_tick(index, now);
            }
        }
    }
}

/// What to do about a pending interrupt at this entry: `Some(event)` to
/// inject (its controller is acknowledged), and whether to ask for a
/// window exit. `interruptibility` is read only when an interrupt is
/// pending. The vCPU's local APIC (in a VM with them) goes first; the PIC
/// reaches only vCPU 0 (`pic`), through LINT0 when it has an APIC (SDM
/// Vol. 3A 11.5.1: ExtINT, or the APIC disabled).
pub fn deliver(
    vm: &mut VmContext,
    apic: Option<&Mutex<LocalApic>>,
    pic: bool,
    event_pending: bool,
    interruptibility: impl FnOnce() -> Option<GuestInterruptibility>,
) -> (Option<Event>, bool) {
    let apic_vector = apic.and_then(|a| a.lock().pending_vector());
    let vector = match apic_vector {
        Some(v) => v,
        None if pic && apic.is_none_or(|a| a.lock().extint_allowed()) => {
            match vm.pending_interrupt() {
                Some(v) => v,
                None => return (None, false),
            }
        }
        None => return (None, false),
    };
    if event_pending {
        // An exception or re-injection goes first; try again at the next exit.
        return (None, true);
    }
    let Some(state) = interruptibility() else {
        return (None, true);
    };
    match decide(state, Some(vector)) {
        Delivery::Inject(_) => match (apic_vector, apic) {
            (Some(_), Some(a)) => {
                vm.stats.injected_events += 1;
                (a.lock().acknowledge().map(Event::interrupt), false)
            }
            _ => (vm.ack_interrupt(), false),
        },
        Delivery::RequestWindow => (None, true),
        Delivery::Nothing => (None, false),
    }
}
