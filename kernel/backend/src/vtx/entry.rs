//! After an exit is handled: RIP, interruptibility and the event to inject
//! on the next entry (SDM 27.3.1.5, 27.6).
//!
//! # Blocking by STI and MOV SS, cleared when it matters
//!
//! An exiting instruction right after STI or MOV SS exits with that
//! blocking set in the guest interruptibility state (SDM Table 25-3). Once
//! the hypervisor skips the instruction, the blocking has ended, as it would
//! have after the instruction. The field is not read at every skip (it is a
//! VMREAD per CPUID, VMCALL or port exit); instead [`advance`] reports that
//! RIP moved ([`Shadow::skipped`]) and the blocking is cleared before the
//! one thing it could wrongly hold back: an event injected at the next
//! entry. [`interruptibility`] is what the interrupt decision and every
//! injection go through, so the PIC's interrupts, re-injected events and
//! faults never see a blocking that has ended (SDM 27.3.1.5 refuses an
//! external interrupt injected under STI or MOV SS blocking). An entry that
//! injects nothing may leave the stale bits for one more guest instruction
//! (the hardware ends the blocking after it, and the next exit reports the
//! guest's own state again, which resets [`Shadow`]). Interrupts reach a
//! guest only by injection, and interrupt-window exits are requested only
//! for a pending interrupt, through the same decision, so STI blocking left
//! this way changes nothing. Stale MOV SS blocking would also hold back a
//! debug exception (single step, data breakpoint) due after the skipped
//! instruction by one instruction: a guest single-stepping through
//! `mov ss, ...; cpuid` sees its trap one instruction late. Host interrupts
//! and the preemption timer still exit.

use hvcore::arch::{Event, EventKind, GuestRegs, Next};
use vmx::exit::InterruptionType;
use vmx::vmcs::{Interruptibility, CR0_READ_SHADOW, GUEST_INTERRUPTIBILITY_INFO, GUEST_RIP};
use vmx::{EventInjection, InterruptionInfo, VmcsAccess};

/// Whether the instruction an exit reported was skipped, so that blocking
/// by STI or MOV SS the exit recorded has ended (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shadow {
    /// RIP moved past the exiting instruction since the last exit.
    pub skipped: bool,
}

/// Carries out the RIP part of `action`: RIP moves past the exiting
/// instruction exactly when [`Next::next_rip`] says so. Returns the state
/// of the blocking the exit recorded: ended when RIP moved (cleared from
/// the VMCS before any injection, see [`interruptibility`]), as the exit
/// left it otherwise.
#[inline(always)]
pub fn advance<V: VmcsAccess>(vmcs: &mut V, next: &Next, regs: &GuestRegs) -> Shadow {
    match next.skipped_rip(regs.rip, regs.instruction_len) {
        Some(rip) => {
            vmcs.set_known(GUEST_RIP, rip);
            Shadow { skipped: true }
        }
        None => Shadow { skipped: false },
    }
}

/// The guest interruptibility state the next entry runs with: read from
/// the VMCS and, when the instruction under STI or MOV SS blocking was
/// skipped, with that blocking cleared (in the VMCS too) as it would be
/// after the instruction (SDM Table 25-3; left set, the injection of an
/// external interrupt would fail the VM entry, SDM 27.3.1.5). Call it
/// before deciding on or injecting an event.
pub fn interruptibility<V: VmcsAccess>(vmcs: &mut V, shadow: &mut Shadow) -> Interruptibility {
    let blocking = Interruptibility::from_bits_retain(vmcs.get_known(GUEST_INTERRUPTIBILITY_INFO));
    if !shadow.skipped {
        return blocking;
    }
    shadow.skipped = false;
    let ended = Interruptibility::BLOCKING_BY_STI | Interruptibility::BLOCKING_BY_MOV_SS;
    if !blocking.intersects(ended) {
        return blocking;
    }
    let now = blocking - ended;
    vmcs.set_known(GUEST_INTERRUPTIBILITY_INFO, now.bits());
    now
}

/// The event the next entry injects, kept across exits: the handler's,
/// else the one whose delivery the exit interrupted, else one already
/// pending. The exit loops apply it in two steps, so that the instruction
/// exits' path never looks for an interrupted event: [`keep_interrupted`]
/// right after decoding, [`keep_injected`] after handling. Each says
/// whether the pending event changed (the next entry must look at it).
#[inline(always)]
pub fn keep_interrupted(pending: &mut Option<Event>, interrupted: Option<Event>) -> bool {
    match interrupted {
        Some(ev) => {
            *pending = Some(ev);
            true
        }
        None => false,
    }
}

/// The second step of [`keep_interrupted`]: the handler's event replaces
/// whatever is pending.
#[inline(always)]
pub fn keep_injected(pending: &mut Option<Event>, next: &Next) -> bool {
    if let Next::Inject(ev) = next {
        *pending = Some(*ev);
        return true;
    }
    false
}

/// Writes the VM-entry interruption fields for `ev`, after clearing
/// blocking that has ended ([`interruptibility`]). Error codes are
/// delivered only in protected mode (SDM 27.2.1.3), so the guest's CR0.PE
/// decides.
pub fn inject<V: VmcsAccess>(vmcs: &mut V, shadow: &mut Shadow, ev: Event) {
    interruptibility(vmcs, shadow);
    let kind = match ev.kind {
        EventKind::Exception => InterruptionType::HardwareException,
        EventKind::Nmi => InterruptionType::Nmi,
        EventKind::ExternalInterrupt => InterruptionType::ExternalInterrupt,
    };
    let error_code = match ev.error_code {
        Some(code) if vmcs.get_known(CR0_READ_SHADOW) & 1 != 0 => Some(code),
        _ => None,
    };
    EventInjection {
        info: InterruptionInfo::new(ev.vector, kind, error_code.is_some()),
        error_code: error_code.unwrap_or(0),
        instruction_len: 0,
    }
    .write_known(vmcs);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vmx::vmcs::{VM_ENTRY_EXCEPTION_ERROR_CODE, VM_ENTRY_INTR_INFO};
    use vmx::FakeVmcs;

    #[test]
    fn skipping_ends_sti_and_mov_ss_blocking_before_an_injection() {
        let mut v = FakeVmcs::new();
        v.set(GUEST_INTERRUPTIBILITY_INFO, 0b1011).unwrap(); // STI, MOV SS, NMI
        v.set(CR0_READ_SHADOW, 0x11).unwrap();
        let regs = GuestRegs {
            rip: 0x1000,
            instruction_len: 2,
            ..Default::default()
        };
        let mut shadow = advance(&mut v, &Next::AdvanceRip, &regs);
        assert_eq!(v.get(GUEST_RIP), Ok(0x1002));
        assert!(shadow.skipped);
        assert_eq!(
            v.get(GUEST_INTERRUPTIBILITY_INFO),
            Ok(0b1011),
            "not read or written at the skip"
        );
        let now = interruptibility(&mut v, &mut shadow);
        assert_eq!(now, Interruptibility::BLOCKING_BY_NMI, "NMI blocking stays");
        assert_eq!(v.get(GUEST_INTERRUPTIBILITY_INFO), Ok(0b1000));
        assert!(!shadow.skipped);
        // Read again: nothing more to clear.
        assert_eq!(
            interruptibility(&mut v, &mut shadow),
            Interruptibility::BLOCKING_BY_NMI
        );
        // An injection clears it too.
        v.set(GUEST_INTERRUPTIBILITY_INFO, 0b01).unwrap();
        let mut shadow = advance(&mut v, &Next::AdvanceRip, &regs);
        inject(&mut v, &mut shadow, Event::interrupt(0x20));
        assert_eq!(v.get(GUEST_INTERRUPTIBILITY_INFO), Ok(0));
        assert_eq!(v.get(VM_ENTRY_INTR_INFO), Ok(0x20 | (1 << 31)));
    }

    #[test]
    fn blocking_stays_when_the_instruction_was_not_skipped() {
        // An injected fault leaves RIP and interruptibility alone.
        let mut v = FakeVmcs::new();
        let regs = GuestRegs {
            rip: 0x1000,
            instruction_len: 2,
            ..Default::default()
        };
        let mut shadow = advance(&mut v, &Next::Inject(Event::GP0), &regs);
        assert!(v.is_empty());
        assert!(!shadow.skipped);
        // An exit inside a genuine STI shadow (an external interrupt right
        // after STI): the blocking is the guest's and holds the interrupt back.
        v.set(GUEST_INTERRUPTIBILITY_INFO, 0b01).unwrap();
        assert_eq!(
            interruptibility(&mut v, &mut shadow),
            Interruptibility::BLOCKING_BY_STI
        );
        assert_eq!(v.get(GUEST_INTERRUPTIBILITY_INFO), Ok(0b01));
    }

    #[test]
    fn error_code_only_in_protected_mode() {
        let mut v = FakeVmcs::new();
        v.set(CR0_READ_SHADOW, 0x11).unwrap();
        v.set(GUEST_INTERRUPTIBILITY_INFO, 0).unwrap();
        inject(&mut v, &mut Shadow::default(), Event::GP0);
        assert_eq!(
            v.get(VM_ENTRY_INTR_INFO),
            Ok(13 | (3 << 8) | (1 << 11) | (1 << 31))
        );
        assert_eq!(v.get(VM_ENTRY_EXCEPTION_ERROR_CODE), Ok(0));
        let mut v = FakeVmcs::new();
        v.set(CR0_READ_SHADOW, 0x10).unwrap();
        v.set(GUEST_INTERRUPTIBILITY_INFO, 0).unwrap();
        inject(&mut v, &mut Shadow::default(), Event::GP0);
        assert_eq!(v.get(VM_ENTRY_INTR_INFO), Ok(13 | (3 << 8) | (1 << 31)));
    }

    #[test]
    fn handler_event_wins_over_vectoring() {
        let pf = Event {
            kind: EventKind::Exception,
            vector: 14,
            error_code: Some(2),
        };
        assert_eq!(
            next_event(&Next::Inject(Event::UD), Some(pf), None),
            Some(Event::UD)
        );
        assert_eq!(next_event(&Next::Resume, Some(pf), None), Some(pf));
        assert_eq!(
            next_event(&Next::Resume, None, Some(Event::UD)),
            Some(Event::UD)
        );
    }

    /// The two steps in the loops' order; whether the pending event changed.
    pub(crate) fn next_event(
        next: &Next,
        interrupted: Option<Event>,
        pending: Option<Event>,
    ) -> Option<Event> {
        let mut pending = pending;
        let first = keep_interrupted(&mut pending, interrupted);
        let second = keep_injected(&mut pending, next);
        assert_eq!(
            first || second,
            interrupted.is_some() || matches!(next, Next::Inject(_))
        );
        pending
    }
}
