//! VT-x exit fields into a backend-neutral [`Exit`], decoded once per exit.
//!
//! Only the fields an exit has are read (SDM 25.9, 28.2): instruction exits
//! read the reason, RIP and the instruction length; the qualification,
//! interruption and IDT-vectoring fields and the guest-physical and linear
//! addresses are read only for the exits that define them. Each is a field
//! every VMX processor has, read from the current VMCS: VMREAD cannot fail
//! (`VmcsAccess::read_known`), so decoding has no error to report.

use hvcore::arch::{
    Access, AccessSize, CrAccess, CrAccessKind, Event, EventKind, Exit, GuestRegs, IoAccess, IoDir,
};
use vmx::exit::{CrAccessQualification, InterruptionType, IoDirection, IoSize, LinearAccess};
use vmx::vmcs::*;
use vmx::{
    EptViolationQualification, ExitReason, InterruptionInfo, IoQualification, RawExitReason,
    VmcsAccess,
};

/// One decoded exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// What happened.
    pub exit: Exit,
    /// An event whose delivery the exit interrupted: it must be delivered
    /// again on the next entry (SDM 28.2.4), unless a handler injects another.
    pub vectoring: Option<Event>,
}

/// Whether `reason` is caused by executing an instruction: such exits never
/// happen during event delivery and have a valid instruction length.
fn is_instruction_exit(reason: ExitReason) -> bool {
    use ExitReason as R;
    matches!(
        reason,
        R::Cpuid
            | R::Getsec
            | R::Hlt
            | R::Invd
            | R::Invlpg
            | R::Rdpmc
            | R::Rdtsc
            | R::Vmcall
            | R::Vmclear
            | R::Vmlaunch
            | R::Vmptrld
            | R::Vmptrst
            | R::Vmread
            | R::Vmresume
            | R::Vmwrite
            | R::Vmxoff
            | R::Vmxon
            | R::CrAccess
            | R::MovDr
            | R::IoInstruction
            | R::Rdmsr
            | R::Wrmsr
            | R::MwaitInstruction
            | R::Monitor
            | R::Pause
            | R::Invept
            | R::Rdtscp
            | R::Invvpid
            | R::Wbinvd
            | R::Xsetbv
            | R::Rdrand
            | R::Invpcid
            | R::Vmfunc
            | R::Rdseed
            | R::Xsaves
            | R::Xrstors
    )
}

/// Reads the exit fields of the current VMCS and decodes them. Sets
/// `regs.rip` and (for instruction exits) `regs.instruction_len`.
pub fn decode<V: VmcsAccess>(vmcs: &V, regs: &mut GuestRegs) -> Decoded {
    let mut exit = Exit::Hlt;
    let vectoring = decode_into(vmcs, regs, &mut exit);
    Decoded { exit, vectoring }
}

/// [`decode`] for the exit loop: the exit is written into `exit`, where the
/// loop keeps it (moving the enum between the layers of an exit cost more
/// than decoding it), and the event whose delivery it interrupted comes
/// back.
#[inline(always)]
pub fn decode_into<V: VmcsAccess>(
    vmcs: &V,
    regs: &mut GuestRegs,
    exit: &mut Exit,
) -> Option<Event> {
    let raw = RawExitReason(vmcs.get_known(EXIT_REASON));
    regs.rip = vmcs.get_known(GUEST_RIP);
    if raw.is_entry_failure() {
        let qualification = vmcs.get_known(EXIT_QUALIFICATION);
        regs.instruction_len = 0;
        *exit = Exit::EntryFailed {
            code: u32::from(raw.basic()),
            qualification,
        };
        return None;
    }
    let reason = raw.reason();
    if is_instruction_exit(reason) {
        // VMREAD zero-extends a 32-bit field (SDM 31.3, VMREAD): the raw
        // value needs no truncation.
        regs.instruction_len = vmcs.read_known(VM_EXIT_INSTRUCTION_LEN.encoding());
        instruction_exit(vmcs, raw, regs, exit);
        return None;
    }
    regs.instruction_len = 0;
    let decoded = event_exit(vmcs, raw);
    *exit = decoded.exit;
    decoded.vectoring
}

/// The exits that are no instruction's: events, EPT, timers. Out of the
/// instruction exits' way (their path is the one every CPUID, VMCALL and
/// port access takes).
#[inline(never)]
fn event_exit<V: VmcsAccess>(vmcs: &V, raw: RawExitReason) -> Decoded {
    let vectoring = vectoring_event(vmcs);
    let exit = match raw.reason() {
        ExitReason::TripleFault => Exit::TripleFault,
        ExitReason::ExternalInterrupt => Exit::ExternalInterrupt,
        ExitReason::PreemptionTimer => Exit::PreemptionTimer,
        ExitReason::InterruptWindow => Exit::InterruptWindow,
        ExitReason::EptViolation => {
            let q = EptViolationQualification::from_raw(vmcs.get_known(EXIT_QUALIFICATION));
            let gpa = vmcs.get_known(GUEST_PHYSICAL_ADDRESS);
            let mut access = Access::empty();
            for (bit, a) in [
                (EptViolationQualification::READ, Access::READ),
                (EptViolationQualification::WRITE, Access::WRITE),
                (EptViolationQualification::FETCH, Access::EXECUTE),
            ] {
                if q.contains(bit) {
                    access |= a;
                }
            }
            let linear = match q.linear_access() {
                LinearAccess::NotValid => None,
                _ => Some(vmcs.get_known(GUEST_LINEAR_ADDRESS)),
            };
            Exit::MemoryViolation {
                gpa,
                access,
                linear,
            }
        }
        ExitReason::EptMisconfig => Exit::MemoryViolation {
            gpa: vmcs.get_known(GUEST_PHYSICAL_ADDRESS),
            access: Access::empty(),
            linear: None,
        },
        ExitReason::ExceptionOrNmi => {
            let i = InterruptionInfo(vmcs.get_known(VM_EXIT_INTR_INFO));
            if i.kind() == InterruptionType::Nmi {
                // A host NMI while the guest ran: nothing for the guest.
                Exit::ExternalInterrupt
            } else {
                let error_code = if i.error_code_valid() {
                    Some(vmcs.get_known(VM_EXIT_INTR_ERROR_CODE))
                } else {
                    None
                };
                Exit::Exception {
                    vector: i.vector(),
                    error_code,
                }
            }
        }
        _ => unhandled(vmcs, raw),
    };
    Decoded { exit, vectoring }
}

#[inline(always)]
fn instruction_exit<V: VmcsAccess>(vmcs: &V, raw: RawExitReason, regs: &GuestRegs, out: &mut Exit) {
    use ExitReason as R;
    // Each arm stores its own variant: a match that yields the enum would
    // build it in a temporary and copy it out.
    match raw.reason() {
        R::Cpuid => *out = Exit::Cpuid,
        R::Hlt => *out = Exit::Hlt,
        R::Vmcall => *out = Exit::Vmcall,
        R::Rdmsr => {
            *out = Exit::Rdmsr {
                msr: regs.rcx as u32,
            }
        }
        R::Wrmsr => {
            *out = Exit::Wrmsr {
                msr: regs.rcx as u32,
                value: (regs.rdx << 32) | (regs.rax & 0xffff_ffff),
            }
        }
        R::Xsetbv => *out = Exit::Xsetbv,
        R::Invd => *out = Exit::Invd,
        R::Rdpmc => *out = Exit::Rdpmc,
        // MOV-DR exiting is on until the vCPU takes its debug registers.
        R::MovDr => *out = Exit::DebugRegister,
        // VMX is hidden from guests (CPUID.1:ECX.VMX = 0), SMX and
        // MONITOR/MWAIT too: a CPU without them raises #UD.
        r @ (R::Vmclear
        | R::Vmlaunch
        | R::Vmptrld
        | R::Vmptrst
        | R::Vmread
        | R::Vmresume
        | R::Vmwrite
        | R::Vmxoff
        | R::Vmxon
        | R::Invept
        | R::Invvpid
        | R::Vmfunc
        | R::Getsec
        | R::MwaitInstruction
        | R::Monitor) => *out = Exit::UndefinedInstruction { name: r.describe() },
        R::CrAccess => {
            *out = {
                let kind = match CrAccessQualification::from_raw(vmcs.get_known(EXIT_QUALIFICATION))
                {
                    CrAccessQualification::MovToCr { cr, gpr } => {
                        (cr, CrAccessKind::MovTo { gpr: gpr as u8 })
                    }
                    CrAccessQualification::MovFromCr { cr, gpr } => {
                        (cr, CrAccessKind::MovFrom { gpr: gpr as u8 })
                    }
                    CrAccessQualification::Clts => (0, CrAccessKind::Clts),
                    CrAccessQualification::Lmsw { source, .. } => {
                        (0, CrAccessKind::Lmsw { source })
                    }
                };
                Exit::CrAccess(CrAccess {
                    cr: kind.0,
                    kind: kind.1,
                })
            }
        }
        R::IoInstruction => {
            let qualification = vmcs.get_known(EXIT_QUALIFICATION);
            match IoQualification::from_raw(qualification) {
                Some(q) => {
                    let size = match q.size {
                        IoSize::Byte => AccessSize::Byte,
                        IoSize::Word => AccessSize::Word,
                        IoSize::Dword => AccessSize::Dword,
                    };
                    let dir = match q.direction {
                        IoDirection::In => IoDir::In,
                        IoDirection::Out => IoDir::Out {
                            value: (regs.rax as u32) & size.mask(),
                        },
                    };
                    *out = Exit::Io(IoAccess {
                        port: q.port,
                        size,
                        dir,
                        string_or_rep: q.string || q.rep,
                    });
                }
                None => *out = unhandled_with(raw, qualification),
            }
        }
        _ => *out = unhandled(vmcs, raw),
    }
}

fn unhandled<V: VmcsAccess>(vmcs: &V, raw: RawExitReason) -> Exit {
    unhandled_with(raw, vmcs.get_known(EXIT_QUALIFICATION))
}

/// An exit hvcore has no handler for (or whose qualification the SDM
/// leaves undefined), with its qualification. Out of line: its name is a
/// table lookup the common exits must not pay for.
#[cold]
#[inline(never)]
fn unhandled_with(raw: RawExitReason, qualification: u64) -> Exit {
    Exit::Unhandled {
        code: u32::from(raw.basic()),
        name: raw.reason().describe(),
        qualification,
    }
}

/// The event being delivered when the exit happened, if it must be
/// re-injected: hardware exceptions, NMIs and external interrupts (software
/// interrupts and exceptions re-execute with their instruction).
fn vectoring_event<V: VmcsAccess>(vmcs: &V) -> Option<Event> {
    let v = InterruptionInfo(vmcs.get_known(IDT_VECTORING_INFO));
    if !v.is_valid() {
        return None;
    }
    let kind = match v.kind() {
        InterruptionType::HardwareException => EventKind::Exception,
        InterruptionType::Nmi => EventKind::Nmi,
        InterruptionType::ExternalInterrupt => EventKind::ExternalInterrupt,
        _ => return None,
    };
    let error_code = if v.error_code_valid() {
        Some(vmcs.get_known(IDT_VECTORING_ERROR_CODE))
    } else {
        None
    };
    Some(Event {
        kind,
        vector: v.vector(),
        error_code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmx::FakeVmcs;

    /// A VMCS with an exit staged: only the fields given exist, so a decoder
    /// that reads anything else fails the test.
    fn staged(reason: u32, fields: &[(u32, u64)]) -> FakeVmcs {
        let mut v = FakeVmcs::new();
        v.preset(EXIT_REASON, reason).unwrap();
        v.set(GUEST_RIP, 0x1000).unwrap();
        for &(enc, val) in fields {
            v.preset_raw(enc, val).unwrap();
        }
        v
    }

    #[test]
    fn cpuid_reads_three_fields() {
        let v = staged(10, &[(VM_EXIT_INSTRUCTION_LEN.encoding(), 2)]);
        let mut regs = GuestRegs::default();
        let d = decode(&v, &mut regs);
        assert_eq!(
            d,
            Decoded {
                exit: Exit::Cpuid,
                vectoring: None
            }
        );
        assert_eq!((regs.rip, regs.instruction_len), (0x1000, 2));
    }

    #[test]
    fn out_to_port_with_value_truncated() {
        // OUT DX, AL to 0x3F8: size 0 (1 byte), direction 0 (out), port in 31:16.
        let v = staged(
            30,
            &[
                (VM_EXIT_INSTRUCTION_LEN.encoding(), 1),
                (EXIT_QUALIFICATION.encoding(), 0x3F8 << 16),
            ],
        );
        let mut regs = GuestRegs {
            rax: 0x1234_5641,
            ..Default::default()
        };
        let d = decode(&v, &mut regs);
        assert_eq!(
            d.exit,
            Exit::Io(IoAccess {
                port: 0x3F8,
                size: AccessSize::Byte,
                dir: IoDir::Out { value: 0x41 },
                string_or_rep: false
            })
        );
    }

    #[test]
    fn cr_access_kinds() {
        let mov_to_cr4_from_rbx = (3 << 8) | 4;
        let v = staged(
            28,
            &[
                (VM_EXIT_INSTRUCTION_LEN.encoding(), 3),
                (EXIT_QUALIFICATION.encoding(), mov_to_cr4_from_rbx),
            ],
        );
        let d = decode(&v, &mut GuestRegs::default());
        assert_eq!(
            d.exit,
            Exit::CrAccess(CrAccess {
                cr: 4,
                kind: CrAccessKind::MovTo { gpr: 3 }
            })
        );
        let mov_from_cr8_to_r9 = (9 << 8) | (1 << 4) | 8;
        let v = staged(
            28,
            &[
                (VM_EXIT_INSTRUCTION_LEN.encoding(), 4),
                (EXIT_QUALIFICATION.encoding(), mov_from_cr8_to_r9),
            ],
        );
        let d = decode(&v, &mut GuestRegs::default());
        assert_eq!(
            d.exit,
            Exit::CrAccess(CrAccess {
                cr: 8,
                kind: CrAccessKind::MovFrom { gpr: 9 }
            })
        );
        let lmsw = (0x000b << 16) | (3 << 4);
        let v = staged(
            28,
            &[
                (VM_EXIT_INSTRUCTION_LEN.encoding(), 3),
                (EXIT_QUALIFICATION.encoding(), lmsw),
            ],
        );
        let d = decode(&v, &mut GuestRegs::default());
        assert_eq!(
            d.exit,
            Exit::CrAccess(CrAccess {
                cr: 0,
                kind: CrAccessKind::Lmsw { source: 0xb }
            })
        );
    }

    #[test]
    fn vmx_instructions_and_monitor_are_undefined() {
        for (reason, name) in [
            (23, "VMREAD"),
            (27, "VMXON"),
            (39, "MONITOR"),
            (36, "MWAIT"),
        ] {
            let v = staged(reason, &[(VM_EXIT_INSTRUCTION_LEN.encoding(), 3)]);
            let d = decode(&v, &mut GuestRegs::default());
            assert_eq!(d.exit, Exit::UndefinedInstruction { name }, "{reason}");
        }
        let v = staged(55, &[(VM_EXIT_INSTRUCTION_LEN.encoding(), 3)]);
        assert_eq!(decode(&v, &mut GuestRegs::default()).exit, Exit::Xsetbv);
    }

    #[test]
    fn ept_violation_with_vectoring_event() {
        // Write access, linear address valid and translated; page fault #14
        // with error code was being delivered.
        let q = (1 << 1) | (1 << 7) | (1 << 8);
        let idt = 14 | (3 << 8) | (1 << 11) | (1 << 31);
        let v = staged(
            48,
            &[
                (EXIT_QUALIFICATION.encoding(), q),
                (GUEST_PHYSICAL_ADDRESS.encoding(), 0x400_0000),
                (GUEST_LINEAR_ADDRESS.encoding(), 0x7777_0000),
                (IDT_VECTORING_INFO.encoding(), idt),
                (IDT_VECTORING_ERROR_CODE.encoding(), 2),
            ],
        );
        let d = decode(&v, &mut GuestRegs::default());
        assert_eq!(
            d.exit,
            Exit::MemoryViolation {
                gpa: 0x400_0000,
                access: Access::WRITE,
                linear: Some(0x7777_0000)
            }
        );
        assert_eq!(
            d.vectoring,
            Some(Event {
                kind: EventKind::Exception,
                vector: 14,
                error_code: Some(2)
            })
        );
    }

    #[test]
    fn entry_failure() {
        let v = staged(0x8000_0021, &[(EXIT_QUALIFICATION.encoding(), 0)]);
        let d = decode(&v, &mut GuestRegs::default());
        assert_eq!(
            d.exit,
            Exit::EntryFailed {
                code: 33,
                qualification: 0
            }
        );
    }

    /// A field the decoder reads that the exit does not have is a bug the
    /// fake VMCS reports (on hardware the field always exists): a CPUID
    /// exit's instruction length is read, never taken as zero.
    #[test]
    #[should_panic(expected = "VMREAD of field 0x440c failed")]
    fn a_field_that_cannot_be_read_is_a_bug() {
        decode(&staged(10, &[]), &mut GuestRegs::default());
    }
}
