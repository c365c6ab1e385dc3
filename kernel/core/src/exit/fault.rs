//! Exits that end or redirect the guest: nested-paging violations, triple
//! faults, intercepted exceptions, failed entries and undecoded exits.
//!
//! Policy:
//! - A nested-paging violation stops the VM with the GPA, access and RIP in the
//!   report (no MMIO devices are mapped yet; [`crate::devices::MmioDevice`] is
//!   the future hook, which will need an instruction decoder).
//! - A triple fault, a failed VM entry or an exit without a handler stops the VM.
//! - An intercepted exception is reflected into the guest unchanged, except
//!   vectors the guest cannot be given back safely: NMI (2; host NMIs are the
//!   backend's business), #DF (8), #PF (14: reflecting needs CR2, which this
//!   layer does not own), #MC (18), and anything that is not an architectural
//!   exception vector. Those stop the VM with [`StopReason::Fault`].

use super::{Access, Action, Event, EventKind, GuestRegs};
use crate::vcpu::StopReason;

/// EPT/NPT violation.
pub fn memory_violation(gpa: u64, access: Access, linear: Option<u64>, regs: &GuestRegs) -> Action {
    Action::Stop(StopReason::MemoryViolation {
        gpa,
        rip: regs.rip,
        access,
        linear,
    })
}

/// The guest triple-faulted.
pub fn triple_fault(regs: &GuestRegs) -> Action {
    Action::Stop(StopReason::TripleFault { rip: regs.rip })
}

/// VM entry failed.
pub fn entry_failed(code: u32, qualification: u64, regs: &GuestRegs) -> Action {
    Action::Stop(StopReason::EntryFailed {
        code,
        qualification,
        rip: regs.rip,
    })
}

/// An exit without a handler.
pub fn unhandled(code: u32, name: &'static str, qualification: u64, regs: &GuestRegs) -> Action {
    Action::Stop(StopReason::Unhandled {
        code,
        name,
        qualification,
        rip: regs.rip,
    })
}

/// Whether exception `vector` pushes an error code (SDM Vol. 3 Table 6-1).
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// An intercepted guest exception.
pub fn exception(vector: u8, error_code: Option<u32>, regs: &GuestRegs) -> Action {
    let stop = Action::Stop(StopReason::Fault {
        vector,
        error_code,
        rip: regs.rip,
    });
    match vector {
        2 | 8 | 14 | 18 => stop,
        0..=31 => {
            // The hardware decides which vectors push an error code; a
            // mismatching report from the backend is corrected, not trusted.
            let error_code = if has_error_code(vector) {
                Some(error_code.unwrap_or(0))
            } else {
                None
            };
            Action::Inject(Event {
                kind: EventKind::Exception,
                vector,
                error_code,
            })
        }
        _ => stop,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testenv::FakePlatform;
    use super::super::*;
    use super::exception;
    use crate::vcpu::{StopReason, VmContext};

    #[test]
    fn ept_violation_stops_with_gpa_in_report() {
        let mut vm = VmContext::new(7, "linux0");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs {
            rip: 0xffff_8000_0010_2030,
            ..Default::default()
        };
        let exit = Exit::MemoryViolation {
            gpa: 0xdead_b000,
            access: Access::WRITE,
            linear: Some(0x1234),
        };
        let a = handle_exit(&mut vm, &mut vcpu, &exit, &mut regs, &mut env);
        assert!(matches!(
            a,
            Action::Stop(StopReason::MemoryViolation {
                gpa: 0xdead_b000,
                ..
            })
        ));
        let report = alloc::format!("{}", vm.stop_report().unwrap());
        assert!(report.contains("linux0"), "{report}");
        assert!(report.contains("0xdeadb000"), "{report}");
        assert!(report.contains("0xffff800000102030"), "{report}");
        assert!(report.contains("-w-"), "{report}");
    }

    #[test]
    fn exceptions_reflected_or_fatal() {
        let regs = GuestRegs {
            rip: 5,
            ..Default::default()
        };
        assert_eq!(
            exception(13, Some(0x18), &regs),
            Action::Inject(Event {
                kind: EventKind::Exception,
                vector: 13,
                error_code: Some(0x18)
            })
        );
        // #UD has no error code even if the backend claimed one.
        assert_eq!(exception(6, Some(3), &regs), Action::Inject(Event::UD));
        assert_eq!(
            exception(17, None, &regs),
            Action::Inject(Event {
                kind: EventKind::Exception,
                vector: 17,
                error_code: Some(0)
            })
        );
        for v in [2u8, 8, 14, 18, 32, 255] {
            assert!(
                matches!(
                    exception(v, None, &regs),
                    Action::Stop(StopReason::Fault { .. })
                ),
                "{v}"
            );
        }
    }

    #[test]
    fn unhandled_exit_stops_with_name() {
        let mut vm = VmContext::new(1, "g");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs {
            rip: 0x7c00,
            ..Default::default()
        };
        let exit = Exit::Unhandled {
            code: 55,
            name: "XSETBV",
            qualification: 0,
        };
        let a = handle_exit(&mut vm, &mut vcpu, &exit, &mut regs, &mut env);
        assert!(matches!(
            a,
            Action::Stop(StopReason::Unhandled { code: 55, .. })
        ));
        let report = alloc::format!("{}", vm.stop_report().unwrap());
        assert!(
            report.contains("XSETBV") && report.contains("0x7c00"),
            "{report}"
        );
    }
}
