//! After an exit is handled: RIP, interruptibility and the event to inject
//! on the next entry (SDM 27.3.1.5, 27.6).

use hvcore::arch::{Action, Event, EventKind, GuestRegs};
use vmx::exit::InterruptionType;
use vmx::vmcs::{Interruptibility, CR0_READ_SHADOW, GUEST_INTERRUPTIBILITY_INFO, GUEST_RIP};
use vmx::{EventInjection, InterruptionInfo, VmFail, VmcsAccess};

/// Carries out the RIP part of `action`: RIP moves past the exiting
/// instruction exactly when [`Action::next_rip`] says so, and then blocking
/// by STI and by MOV SS ends, as it would after the instruction
/// (SDM Table 25-3); left set, the next event injection would fail the VM
/// entry (SDM 27.3.1.5).
pub fn advance<V: VmcsAccess>(vmcs: &mut V, action: &Action, regs: &GuestRegs) -> Result<(), VmFail> {
    let next = action.next_rip(regs.rip, regs.instruction_len);
    if next == regs.rip {
        return Ok(());
    }
    vmcs.set(GUEST_RIP, next)?;
    let blocking = Interruptibility::from_bits_retain(vmcs.get(GUEST_INTERRUPTIBILITY_INFO)?);
    let shadow = Interruptibility::BLOCKING_BY_STI | Interruptibility::BLOCKING_BY_MOV_SS;
    if blocking.intersects(shadow) {
        vmcs.set(GUEST_INTERRUPTIBILITY_INFO, (blocking - shadow).bits())?;
    }
    Ok(())
}

/// The event to inject next: the handler's, else the one whose delivery the
/// exit interrupted, else one already pending.
pub fn next_event(action: &Action, vectoring: Option<Event>, pending: Option<Event>) -> Option<Event> {
    match action {
        Action::Inject(ev) => Some(*ev),
        _ => vectoring.or(pending),
    }
}

/// Writes the VM-entry interruption fields for `ev`. Error codes are
/// delivered only in protected mode (SDM 27.2.1.3), so the guest's CR0.PE
/// decides.
pub fn inject<V: VmcsAccess>(vmcs: &mut V, ev: Event) -> Result<(), VmFail> {
    let kind = match ev.kind {
        EventKind::Exception => InterruptionType::HardwareException,
        EventKind::Nmi => InterruptionType::Nmi,
        EventKind::ExternalInterrupt => InterruptionType::ExternalInterrupt,
    };
    let error_code = match ev.error_code {
        Some(code) if vmcs.get(CR0_READ_SHADOW)? & 1 != 0 => Some(code),
        _ => None,
    };
    EventInjection {
        info: InterruptionInfo::new(ev.vector, kind, error_code.is_some()),
        error_code: error_code.unwrap_or(0),
        instruction_len: 0,
    }
    .write_to(vmcs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmx::vmcs::{VM_ENTRY_EXCEPTION_ERROR_CODE, VM_ENTRY_INTR_INFO};
    use vmx::FakeVmcs;

    #[test]
    fn skipping_clears_sti_and_mov_ss_blocking_only() {
        let mut v = FakeVmcs::new();
        v.set(GUEST_INTERRUPTIBILITY_INFO, 0b1011).unwrap(); // STI, MOV SS, NMI
        let regs = GuestRegs { rip: 0x1000, instruction_len: 2, ..Default::default() };
        advance(&mut v, &Action::AdvanceRip, &regs).unwrap();
        assert_eq!(v.get(GUEST_RIP), Ok(0x1002));
        assert_eq!(v.get(GUEST_INTERRUPTIBILITY_INFO), Ok(0b1000), "NMI blocking stays");
        // An injected fault leaves RIP and interruptibility alone.
        let mut v = FakeVmcs::new();
        advance(&mut v, &Action::Inject(Event::GP0), &regs).unwrap();
        assert!(v.is_empty());
    }

    #[test]
    fn error_code_only_in_protected_mode() {
        let mut v = FakeVmcs::new();
        v.set(CR0_READ_SHADOW, 0x11).unwrap();
        inject(&mut v, Event::GP0).unwrap();
        assert_eq!(v.get(VM_ENTRY_INTR_INFO), Ok(13 | (3 << 8) | (1 << 11) | (1 << 31)));
        assert_eq!(v.get(VM_ENTRY_EXCEPTION_ERROR_CODE), Ok(0));
        let mut v = FakeVmcs::new();
        v.set(CR0_READ_SHADOW, 0x10).unwrap();
        inject(&mut v, Event::GP0).unwrap();
        assert_eq!(v.get(VM_ENTRY_INTR_INFO), Ok(13 | (3 << 8) | (1 << 31)));
    }

    #[test]
    fn handler_event_wins_over_vectoring() {
        let pf = Event { kind: EventKind::Exception, vector: 14, error_code: Some(2) };
        assert_eq!(next_event(&Action::Inject(Event::UD), Some(pf), None), Some(Event::UD));
        assert_eq!(next_event(&Action::Resume, Some(pf), None), Some(pf));
        assert_eq!(next_event(&Action::Resume, None, Some(Event::UD)), Some(Event::UD));
    }
}
