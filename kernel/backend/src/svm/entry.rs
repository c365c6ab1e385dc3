//! Around VMRUN: what changes in the VMCB after an exit was handled (RIP,
//! the interrupt shadow, the event to inject, the interrupt window) and
//! right before and after each VMRUN (guest RAX, TLB control, clean bits)
//! (APM 15.5, 15.15.3, 15.16, 15.20, 15.21).

use hvcore::arch::{Event, EventKind, GuestRegs, Next};
use hvcore::devices::interrupt::GuestInterruptibility;
use svm::exit::{EventInfo, EventType};
use svm::vmcb::{CleanBits, InterruptState, TlbControl, Vmcb};

pub use crate::vtx::entry::{keep_injected, keep_interrupted};

use super::state::SoftState;
use super::SvmSetup;

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;
/// CR0.PE.
const CR0_PE: u64 = 1 << 0;

/// Carries out the RIP part of `action`: RIP moves past the exiting
/// instruction exactly when [`Next::skipped_rip`] says so, and then the
/// interrupt shadow of an STI or MOV SS before it ends, as it would after
/// the instruction (INTERRUPT_SHADOW is guest state that VMRUN loads, APM 15.21).
#[inline(always)]
pub fn advance(vmcb: &mut Vmcb, action: &Next, regs: &GuestRegs) {
    let Some(next) = action.skipped_rip(regs.rip, regs.instruction_len) else {
        return;
    };
    vmcb.save.rip = next;
    vmcb.control
        .interrupt_state
        .remove(InterruptState::INTERRUPT_SHADOW);
}

/// Writes EVENTINJ for `ev` (APM 15.20). Error codes are delivered only in
/// protected mode, so the guest's CR0.PE decides.
pub fn inject(vmcb: &mut Vmcb, ev: Event) {
    let kind = match ev.kind {
        EventKind::Exception => EventType::Exception,
        EventKind::Nmi => EventType::Nmi,
        EventKind::ExternalInterrupt => EventType::ExternalInterrupt,
    };
    let error_code = match ev.error_code {
        Some(code) if ev.kind == EventKind::Exception && vmcb.save.cr0 & CR0_PE != 0 => Some(code),
        _ => None,
    };
    vmcb.inject_event(EventInfo::new(ev.vector, kind, error_code));
}

/// What the guest's interruptibility allows at the next VMRUN, for
/// `hvcore::devices::interrupt::decide`: RFLAGS.IF, the interrupt shadow
/// (AMD-V has one bit for STI and MOV SS) and whether EVENTINJ already holds
/// an event (call it after [`inject`]).
pub fn interruptibility(vmcb: &Vmcb) -> GuestInterruptibility {
    GuestInterruptibility {
        rflags_if: vmcb.save.rflags & RFLAGS_IF != 0,
        blocked_by_sti: vmcb
            .control
            .interrupt_state
            .contains(InterruptState::INTERRUPT_SHADOW),
        blocked_by_mov_ss: false,
        event_injection_pending: vmcb.control.event_inj.is_valid(),
    }
}

/// Asks for (or stops asking for) an exit as soon as the guest can take an
/// interrupt: a virtual interrupt pending (V_IRQ) that ignores V_TPR, which
/// the VINTR intercept turns into [`hvcore::arch::Exit::InterruptWindow`]
/// before the guest would take it (APM 15.21). The vector is never
/// delivered: the real one is injected through EVENTINJ at that exit.
pub fn set_interrupt_window(vmcb: &mut Vmcb, open: bool) {
    let c = &mut vmcb.control;
    let vintr = c
        .vintr
        .with_v_irq(open)
        .with_v_ign_tpr(open)
        .with_v_intr_prio(0)
        .with_v_intr_vector(0);
    if vintr != c.vintr {
        c.vintr = vintr;
        vmcb.mark_dirty(CleanBits::TPR);
    }
}

/// Sets the TSC offset the guest's RDTSC adds (the policy's
/// `MsrState::tsc_offset`).
pub fn set_tsc_offset(vmcb: &mut Vmcb, offset: u64) {
    if vmcb.control.tsc_offset != offset {
        vmcb.control.tsc_offset = offset;
        vmcb.mark_dirty(CleanBits::INTERCEPTS);
    }
}

/// Right before VMRUN: guest RAX from `regs` into the VMCB (handlers
/// changed the copy [`super::decode::decode`] made), and TLB_CONTROL: flush
/// the vCPU's ASID when [`SoftState::flush_tlb`] asks (cleared here) or when
/// the vCPU last ran on another CPU (whose TLB entries for this ASID are
/// now stale here); the other CPU's cached VMCB is stale too, so every
/// clean bit is cleared then.
pub fn before_vmrun(
    vmcb: &mut Vmcb,
    setup: &SvmSetup,
    soft: &mut SoftState,
    regs: &GuestRegs,
    cpu_changed: bool,
) {
    vmcb.save.rax = regs.rax;
    let flush = soft.flush_tlb || cpu_changed;
    soft.flush_tlb = false;
    vmcb.set_tlb_control(if flush {
        setup.tlb_flush
    } else {
        TlbControl::DoNothing
    });
    if cpu_changed {
        vmcb.mark_all_dirty();
    }
}

/// Right after #VMEXIT: EVENTINJ emptied (an event whose delivery was
/// interrupted is in EXITINTINFO and comes back through
/// [`super::decode::Decoded::vectoring`]), and, with VMCB clean bits, every
/// group marked clean: the processor's copy is what it just wrote back, and
/// every later change marks its group dirty.
pub fn after_vmexit(vmcb: &mut Vmcb, setup: &SvmSetup) {
    vmcb.control.event_inj = EventInfo::NONE;
    if setup.optional.vmcb_clean {
        vmcb.mark_all_clean();
    }
}

#[cfg(test)]
mod tests {
    use super::super::testcaps::{bochs, caps, HOST};
    use super::*;
    use hvcore::devices::interrupt::{decide, Delivery};

    #[test]
    fn skipping_ends_the_interrupt_shadow() {
        let mut v = Vmcb::new();
        v.save.rip = 0x1000;
        v.control.interrupt_state =
            InterruptState::INTERRUPT_SHADOW | InterruptState::GUEST_INTERRUPT_MASK;
        let regs = GuestRegs {
            rip: 0x1000,
            instruction_len: 2,
            ..Default::default()
        };
        advance(&mut v, &Next::AdvanceRip, &regs);
        assert_eq!(v.save.rip, 0x1002);
        assert_eq!(
            v.control.interrupt_state,
            InterruptState::GUEST_INTERRUPT_MASK
        );
        // A fault is injected at the instruction: RIP and shadow stay.
        let mut v = Vmcb::new();
        v.save.rip = 0x1000;
        v.control.interrupt_state = InterruptState::INTERRUPT_SHADOW;
        for action in [Next::Inject(Event::GP0), Next::Resume, Next::Preempted] {
            advance(&mut v, &action, &regs);
            assert_eq!(
                (v.save.rip, v.control.interrupt_state),
                (0x1000, InterruptState::INTERRUPT_SHADOW)
            );
        }
        advance(&mut v, &Next::Halt, &regs);
        assert_eq!(v.save.rip, 0x1002);
    }

    #[test]
    fn error_code_only_in_protected_mode() {
        let mut v = Vmcb::new();
        v.save.cr0 = 0x11;
        inject(&mut v, Event::GP0);
        assert_eq!(
            v.control.event_inj,
            EventInfo::new(13, EventType::Exception, Some(0))
        );
        assert_eq!(v.control.event_inj.0, 13 | (3 << 8) | (1 << 11) | (1 << 31));
        v.save.cr0 = 0x10;
        inject(&mut v, Event::GP0);
        assert_eq!(v.control.event_inj.0, 13 | (3 << 8) | (1 << 31));
        inject(&mut v, Event::interrupt(0x20));
        assert_eq!(v.control.event_inj.0, 0x20 | (1 << 31));
        inject(
            &mut v,
            Event {
                kind: EventKind::Nmi,
                vector: 2,
                error_code: None,
            },
        );
        assert_eq!(v.control.event_inj.0, 2 | (2 << 8) | (1 << 31));
    }

    #[test]
    fn interrupt_delivery_decision_from_the_vmcb() {
        let mut v = Vmcb::new();
        assert_eq!(
            decide(interruptibility(&v), Some(0x20)),
            Delivery::RequestWindow,
            "IF = 0"
        );
        v.save.rflags = 0x202;
        assert_eq!(
            decide(interruptibility(&v), Some(0x20)),
            Delivery::Inject(0x20)
        );
        v.control.interrupt_state = InterruptState::INTERRUPT_SHADOW;
        assert!(interruptibility(&v).blocked_by_sti);
        assert_eq!(
            decide(interruptibility(&v), Some(0x20)),
            Delivery::RequestWindow
        );
        v.control.interrupt_state = InterruptState::empty();
        inject(&mut v, Event::UD);
        assert!(interruptibility(&v).event_injection_pending);
        assert_eq!(
            decide(interruptibility(&v), Some(0x20)),
            Delivery::RequestWindow
        );
    }

    #[test]
    fn interrupt_window_is_a_tpr_ignoring_virtual_interrupt() {
        let s = bochs();
        let mut v = Vmcb::new();
        v.control.vintr = s.vintr.with_v_tpr(0xF);
        v.mark_all_clean();
        set_interrupt_window(&mut v, true);
        let vi = v.control.vintr;
        assert!(vi.v_irq() && vi.v_ign_tpr() && vi.v_intr_masking());
        assert_eq!(vi.v_tpr(), 0xF, "the guest's TPR stays");
        assert!(!v.control.vmcb_clean.contains(CleanBits::TPR));
        v.mark_all_clean();
        set_interrupt_window(&mut v, true);
        assert!(
            v.control.vmcb_clean.contains(CleanBits::TPR),
            "no change, stays clean"
        );
        set_interrupt_window(&mut v, false);
        assert_eq!(v.control.vintr, s.vintr.with_v_tpr(0xF));
    }

    #[test]
    fn tsc_offset_marks_the_intercept_group() {
        let mut v = Vmcb::new();
        v.mark_all_clean();
        set_tsc_offset(&mut v, 0);
        assert!(v.control.vmcb_clean.contains(CleanBits::INTERCEPTS));
        set_tsc_offset(&mut v, 0u64.wrapping_sub(500));
        assert_eq!(v.control.tsc_offset, u64::MAX - 499);
        assert!(!v.control.vmcb_clean.contains(CleanBits::INTERCEPTS));
    }

    #[test]
    fn vmrun_carries_rax_and_flushes_when_asked() {
        let s = bochs();
        let mut v = Vmcb::new();
        let mut soft = SoftState::default();
        let regs = GuestRegs {
            rax: 0x4242,
            ..Default::default()
        };
        // A new vCPU flushes its ASID once.
        before_vmrun(&mut v, &s, &mut soft, &regs, false);
        assert_eq!(
            (v.save.rax, v.tlb_control()),
            (0x4242, Some(TlbControl::FlushGuest))
        );
        assert!(!soft.flush_tlb);
        before_vmrun(&mut v, &s, &mut soft, &regs, false);
        assert_eq!(v.tlb_control(), Some(TlbControl::DoNothing));
        // Moving to another CPU flushes and reloads the whole VMCB.
        v.mark_all_clean();
        before_vmrun(&mut v, &s, &mut soft, &regs, true);
        assert_eq!(v.tlb_control(), Some(TlbControl::FlushGuest));
        assert!(v.control.vmcb_clean.is_empty());
        // Without flush by ASID every ASID is flushed.
        let s = SvmSetup::from_caps(&caps(super::super::testcaps::EPYC_MODEL), HOST).unwrap();
        soft.flush_tlb = true;
        before_vmrun(&mut v, &s, &mut soft, &regs, false);
        assert_eq!(v.tlb_control(), Some(TlbControl::FlushAll));
    }

    #[test]
    fn after_vmexit_empties_eventinj_and_cleans_only_with_the_feature() {
        let s = bochs();
        let mut v = Vmcb::new();
        v.inject_event(EventInfo::general_protection());
        after_vmexit(&mut v, &s);
        assert!(!v.control.event_inj.is_valid());
        assert!(v.control.vmcb_clean.is_empty(), "Bochs has no clean bits");
        let s = SvmSetup::from_caps(&caps([1, 0x8000, 0, 0x2f]), HOST).unwrap();
        after_vmexit(&mut v, &s);
        assert_eq!(v.control.vmcb_clean, CleanBits::all());
    }

    use crate::vtx::entry::tests::next_event;

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
    }
}
