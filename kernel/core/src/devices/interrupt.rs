//! When an external interrupt from the virtual PIC can be delivered to the
//! vCPU (SDM Vol. 3C 26.3.1.5 / 26.5.1 and Vol. 3A 6.8.3; AMD APM Vol. 2
//! 15.20-15.21 are the same rules).
//!
//! A maskable interrupt is taken only when RFLAGS.IF = 1 and there is no
//! blocking by STI or by MOV SS/POP SS (the one-instruction shadows after
//! them), and only one event can be injected per VM entry. So before each
//! entry the backend asks [`decide`]:
//!
//! - [`Delivery::Inject`]: acknowledge the PIC ([`crate::vcpu::VmContext::ack_interrupt`],
//!   the INTA cycle) and inject that external interrupt.
//! - [`Delivery::RequestWindow`]: a vector is pending but the guest cannot
//!   take it now: set interrupt-window exiting (VT-x primary control bit 2;
//!   AMD V_IRQ with the VINTR intercept) and leave the PIC alone; the exit
//!   comes as soon as the guest can take it, and the next entry decides again.
//! - [`Delivery::Nothing`]: clear interrupt-window exiting.
//!
//! A halted vCPU with [`Delivery::Inject`] is woken by the injection (its
//! activity state goes back to active); with RFLAGS.IF = 0 it stays halted,
//! as `cli; hlt` does on hardware.

/// What the guest's interruptibility allows at the next entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestInterruptibility {
    /// RFLAGS.IF.
    pub rflags_if: bool,
    /// Blocking by STI (VMCS guest interruptibility state bit 0; AMD
    /// INTERRUPT_SHADOW).
    pub blocked_by_sti: bool,
    /// Blocking by MOV SS / POP SS (interruptibility state bit 1).
    pub blocked_by_mov_ss: bool,
    /// An event is already being injected at this entry (an exception or
    /// the re-injection of an event whose delivery an exit interrupted).
    pub event_injection_pending: bool,
}

impl GuestInterruptibility {
    /// Decodes the VT-x guest interruptibility-state field (SDM Vol. 3C
    /// table 25-3: bit 0 STI, bit 1 MOV SS) with RFLAGS.
    pub fn from_vmx(
        rflags: u64,
        interruptibility_state: u32,
        event_injection_pending: bool,
    ) -> Self {
        GuestInterruptibility {
            rflags_if: rflags & (1 << 9) != 0,
            blocked_by_sti: interruptibility_state & 1 != 0,
            blocked_by_mov_ss: interruptibility_state & 2 != 0,
            event_injection_pending,
        }
    }

    /// Whether a maskable interrupt can be injected now.
    pub fn accepts_interrupt(&self) -> bool {
        self.rflags_if
            && !self.blocked_by_sti
            && !self.blocked_by_mov_ss
            && !self.event_injection_pending
    }
}

/// The decision for the next VM entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Acknowledge the PIC and inject this vector.
    Inject(u8),
    /// Set interrupt-window exiting and retry at that exit.
    RequestWindow,
    /// No interrupt pending.
    Nothing,
}

/// Decides what to do about the PIC's `pending` vector given the guest's
/// interruptibility.
pub fn decide(guest: GuestInterruptibility, pending: Option<u8>) -> Delivery {
    match pending {
        None => Delivery::Nothing,
        Some(vector) if guest.accepts_interrupt() => Delivery::Inject(vector),
        Some(_) => Delivery::RequestWindow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: GuestInterruptibility = GuestInterruptibility {
        rflags_if: true,
        blocked_by_sti: false,
        blocked_by_mov_ss: false,
        event_injection_pending: false,
    };

    #[test]
    fn nothing_pending_is_nothing() {
        assert_eq!(decide(OPEN, None), Delivery::Nothing);
        assert_eq!(
            decide(GuestInterruptibility::default(), None),
            Delivery::Nothing
        );
    }

    #[test]
    fn open_guest_gets_the_vector() {
        assert_eq!(decide(OPEN, Some(0x20)), Delivery::Inject(0x20));
        assert_eq!(decide(OPEN, Some(0x2F)), Delivery::Inject(0x2F));
    }

    #[test]
    fn every_blocking_reason_requests_a_window() {
        let blocked = [
            GuestInterruptibility {
                rflags_if: false,
                ..OPEN
            },
            GuestInterruptibility {
                blocked_by_sti: true,
                ..OPEN
            },
            GuestInterruptibility {
                blocked_by_mov_ss: true,
                ..OPEN
            },
            GuestInterruptibility {
                event_injection_pending: true,
                ..OPEN
            },
        ];
        for g in blocked {
            assert_eq!(decide(g, Some(0x24)), Delivery::RequestWindow, "{g:?}");
            assert_eq!(decide(g, None), Delivery::Nothing, "{g:?}");
        }
    }

    #[test]
    fn exhaustive_over_all_states() {
        for bits in 0u8..16 {
            let g = GuestInterruptibility {
                rflags_if: bits & 1 != 0,
                blocked_by_sti: bits & 2 != 0,
                blocked_by_mov_ss: bits & 4 != 0,
                event_injection_pending: bits & 8 != 0,
            };
            let expect = if bits == 1 {
                Delivery::Inject(0x30)
            } else {
                Delivery::RequestWindow
            };
            assert_eq!(decide(g, Some(0x30)), expect, "{g:?}");
        }
    }

    #[test]
    fn vmx_field_decoding() {
        let g = GuestInterruptibility::from_vmx(0x202, 0, false);
        assert!(g.accepts_interrupt());
        let g = GuestInterruptibility::from_vmx(0x202, 1, false);
        assert!(g.blocked_by_sti && !g.accepts_interrupt());
        let g = GuestInterruptibility::from_vmx(0x202, 2, false);
        assert!(g.blocked_by_mov_ss);
        let g = GuestInterruptibility::from_vmx(0x002, 0, false);
        assert!(!g.rflags_if);
        // Blocking by SMI/NMI (bits 2, 3) does not block maskable interrupts.
        assert!(GuestInterruptibility::from_vmx(0x202, 0b1100, false).accepts_interrupt());
        assert!(!GuestInterruptibility::from_vmx(0x202, 0, true).accepts_interrupt());
    }
}
