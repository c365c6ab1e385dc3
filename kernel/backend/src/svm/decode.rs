//! #VMEXIT fields into a backend-neutral [`Exit`], decoded once per exit by
//! [`svm::ExitInfo`] and translated here.
//!
//! Guest RAX lives in the VMCB state-save area, not in the world switch's
//! register block: [`decode`] copies it (with RIP) into [`GuestRegs`] so
//! handlers and the decoding of OUT and WRMSR see the guest's RAX, and
//! [`super::entry::before_vmrun`] copies it back.
//!
//! # Instruction lengths
//!
//! An exit whose instruction completes by being skipped (CPUID, RDMSR,
//! WRMSR, HLT, VMMCALL, XSETBV, INVD, RDPMC) needs its length:
//!
//! - with NRIP save, nRIP - RIP;
//! - without it ([`super::Optional::nrip_save`], QEMU's TCG), or should
//!   nRIP be implausible (not 1 to 15 bytes on), the instruction's bytes at
//!   CS base + RIP, read through the guest's page tables and checked
//!   against the exit ([`super::insn`]). If they cannot be read or are not
//!   that instruction, [`Decoded::stop`] says why and the VM is stopped:
//!   a length is never guessed.
//!
//! An IOIO exit gives the next RIP in EXITINFO2 on every CPU (APM 15.10.2).
//!
//! An intercepted MOV CR4 needs its source register as well: EXITINFO1
//! names it with decode assists; without them it comes from the same bytes
//! ([`super::insn::fetch_mov_to_cr4`]).

use hvcore::arch::{
    Access, AccessSize, CrAccess, CrAccessKind, Event, EventKind, Exit, GuestMemory, GuestRegs,
    IoAccess, IoDir, StopReason,
};
use svm::exit::{
    CrAccessInfo, EventType, Exit as SvmExit, ExitCode, ExitInfo, IoDirection, IoExitInfo,
    MsrAccess, NpfAccess,
};
use svm::vmcb::Vmcb;

use super::insn::{fetch_length, Skipped};
use super::SvmSetup;

/// One decoded exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// What happened.
    pub exit: Exit,
    /// An event whose delivery the exit interrupted (EXITINTINFO, APM
    /// 15.7.2): it must be delivered again on the next VMRUN, unless a
    /// handler injects another.
    pub vectoring: Option<Event>,
    /// The exit cannot be handled: the length of its instruction could not
    /// be decoded from guest memory (see the module docs). The kernel stops
    /// the VM with this reason instead of calling `handle_exit`. `exit` is
    /// then [`Exit::Unhandled`] naming the exit code, so a caller that
    /// handled it anyway would stop the VM too, with a vaguer report.
    pub stop: Option<StopReason>,
}

/// The length of an instruction that ends at `next` and starts at `rip`,
/// if plausible (1 to 15 bytes).
fn len_between(rip: u64, next: u64) -> Option<u64> {
    match next.wrapping_sub(rip) {
        len @ 1..=15 => Some(len),
        _ => None,
    }
}

/// The instruction an exit skips, if it is one whose length is needed.
fn skipped(exit: &SvmExit) -> Option<Skipped> {
    Some(match exit {
        SvmExit::Cpuid => Skipped::Cpuid,
        SvmExit::Hlt => Skipped::Hlt,
        SvmExit::Vmmcall => Skipped::Vmmcall,
        SvmExit::Msr {
            access: MsrAccess::Read,
        } => Skipped::Rdmsr,
        SvmExit::Msr {
            access: MsrAccess::Write,
        } => Skipped::Wrmsr,
        SvmExit::Other(ExitCode::Xsetbv) => Skipped::Xsetbv,
        SvmExit::Other(ExitCode::Invd) => Skipped::Invd,
        SvmExit::Other(ExitCode::Rdpmc) => Skipped::Rdpmc,
        _ => return None,
    })
}

/// [`decode`] for the exit loop: the exit is written into `exit`, where the
/// loop keeps it; the event whose delivery the exit interrupted comes back,
/// or the reason to stop the VM when the exit cannot be decoded.
///
/// The commonest intercepts (CPUID, VMMCALL, HLT, IOIO) are read straight
/// from the raw EXITCODE when their length is known from nRIP (or, for
/// IOIO, from EXITINFO2) and no event delivery was interrupted: no
/// snapshot of the exit fields, no intermediate `svm::exit::Exit`. Every
/// other exit, and these when the CPU lacks NRIP save, go through
/// [`decode`], which gives the same answer.
#[inline(always)]
pub fn decode_into(
    vmcb: &Vmcb,
    regs: &mut GuestRegs,
    mem: &dyn GuestMemory,
    setup: &SvmSetup,
    exit: &mut Exit,
) -> Result<Option<Event>, StopReason> {
    const CPUID: u64 = ExitCode::Cpuid.raw();
    const VMMCALL: u64 = ExitCode::Vmmcall.raw();
    const HLT: u64 = ExitCode::Hlt.raw();
    const IOIO: u64 = ExitCode::Ioio.raw();
    let code = vmcb.control.exit_code;
    if !vmcb.control.exit_int_info.is_valid() {
        let rip = vmcb.save.rip;
        // IOIO reports the next RIP in EXITINFO2 (APM 15.10.2), the others
        // in nRIP with NRIP save.
        let nrip = if code == IOIO {
            vmcb.control.exit_info2
        } else if setup.optional.nrip_save {
            vmcb.control.next_rip
        } else {
            0
        };
        if let Some(len) = len_between(rip, nrip) {
            regs.rax = vmcb.save.rax;
            // Each arm stores its own variant (no enum temporary).
            match code {
                CPUID => *exit = Exit::Cpuid,
                VMMCALL => *exit = Exit::Vmcall,
                HLT => *exit = Exit::Hlt,
                IOIO => match IoExitInfo::from_exit_info1(vmcb.control.exit_info1) {
                    Some(io) => *exit = io_exit(io, regs),
                    None => return decode_rest(vmcb, regs, mem, setup, exit),
                },
                _ => return decode_rest(vmcb, regs, mem, setup, exit),
            }
            regs.rip = rip;
            regs.instruction_len = len;
            return Ok(None);
        }
    }
    decode_rest(vmcb, regs, mem, setup, exit)
}

/// [`decode_into`] for the exits it does not read straight.
#[inline(never)]
fn decode_rest(
    vmcb: &Vmcb,
    regs: &mut GuestRegs,
    mem: &dyn GuestMemory,
    setup: &SvmSetup,
    exit: &mut Exit,
) -> Result<Option<Event>, StopReason> {
    let d = decode(vmcb, regs, mem, setup);
    *exit = d.exit;
    match d.stop {
        Some(reason) => Err(reason),
        None => Ok(d.vectoring),
    }
}

/// Decodes the exit recorded in `vmcb`. Sets `regs.rip` and `regs.rax` from
/// the state-save area and `regs.instruction_len` (0 for exits that are not
/// caused by an instruction). `mem` is the VM's memory, read only on a CPU
/// without NRIP save (or with an implausible nRIP) to find an instruction's
/// length; `setup` says whether the CPU saves nRIP.
#[inline]
pub fn decode(
    vmcb: &Vmcb,
    regs: &mut GuestRegs,
    mem: &dyn GuestMemory,
    setup: &SvmSetup,
) -> Decoded {
    let info = ExitInfo::from_vmcb(vmcb);
    regs.rip = vmcb.save.rip;
    regs.rax = vmcb.save.rax;
    regs.instruction_len = 0;
    let svm_exit = info.decode();
    // nRIP means nothing without NRIP save (the field is never written).
    let nrip_len = if setup.optional.nrip_save {
        info.instruction_len()
    } else {
        None
    };
    if let Some(insn) = skipped(&svm_exit) {
        let len = match nrip_len {
            Some(n) => Ok(n),
            None => fetch_length(vmcb, mem, insn),
        };
        match len {
            Ok(n) => regs.instruction_len = n,
            Err(reason) => {
                return Decoded {
                    exit: unhandled(&info),
                    vectoring: vectoring_event(&info),
                    stop: Some(reason),
                }
            }
        }
    }
    let exit = match svm_exit {
        SvmExit::Cpuid => Exit::Cpuid,
        SvmExit::Hlt => Exit::Hlt,
        SvmExit::Vmmcall => Exit::Vmcall,
        SvmExit::Msr { access } => {
            let msr = regs.rcx as u32;
            match access {
                MsrAccess::Read => Exit::Rdmsr { msr },
                MsrAccess::Write => Exit::Wrmsr {
                    msr,
                    value: (regs.rdx << 32) | (regs.rax & 0xFFFF_FFFF),
                },
            }
        }
        SvmExit::Io { info: io, next_rip } => match len_between(regs.rip, next_rip).or(nrip_len) {
            Some(n) => {
                regs.instruction_len = n;
                io_exit(io, regs)
            }
            None => unhandled(&info),
        },
        SvmExit::Other(ExitCode::Xsetbv) => Exit::Xsetbv,
        SvmExit::Other(ExitCode::Invd) => Exit::Invd,
        SvmExit::Other(ExitCode::Rdpmc) => Exit::Rdpmc,
        // DR0-DR3 and DR7 writes until the vCPU takes them
        // (`setup::DR_WRITES_UNTIL_USED`).
        SvmExit::DrAccess { dr: 0..=3, .. }
        | SvmExit::DrAccess {
            dr: 7, write: true, ..
        } => Exit::DebugRegister,
        // The one CR intercept (see the module docs of `super`): MOV CR4.
        SvmExit::CrAccess {
            cr: 4,
            write: true,
            info: operand,
        } => match mov_to_cr4(vmcb, mem, setup, operand, nrip_len) {
            Ok((gpr, len)) => {
                regs.instruction_len = len;
                Exit::CrAccess(CrAccess {
                    cr: 4,
                    kind: CrAccessKind::MovTo { gpr },
                })
            }
            Err(reason) => {
                return Decoded {
                    exit: unhandled(&info),
                    vectoring: vectoring_event(&info),
                    stop: Some(reason),
                }
            }
        },
        SvmExit::CrAccess {
            cr,
            write,
            info: CrAccessInfo::MovCr { gpr },
        } => match nrip_len {
            // Only with decode assists (other CRs are not intercepted).
            Some(n) => {
                regs.instruction_len = n;
                let gpr = gpr.index();
                let kind = if write {
                    CrAccessKind::MovTo { gpr }
                } else {
                    CrAccessKind::MovFrom { gpr }
                };
                Exit::CrAccess(CrAccess { cr, kind })
            }
            None => unhandled(&info),
        },
        SvmExit::NestedPageFault { gpa, error } => {
            let access = match error.access() {
                NpfAccess::Read => Access::READ,
                NpfAccess::Write => Access::WRITE,
                NpfAccess::Fetch => Access::EXECUTE,
            };
            // An NPF reports the guest-physical address only (EXITINFO2).
            Exit::MemoryViolation {
                gpa: gpa.as_u64(),
                access,
                linear: None,
            }
        }
        // #UD from VMCALL (Intel's encoding): a hypercall, as VMMCALL is.
        SvmExit::Exception { vector: 6, .. } => {
            match super::insn::fetch_length(vmcb, mem, Skipped::Vmcall) {
                Ok(len) => {
                    regs.instruction_len = len;
                    Exit::Vmcall
                }
                Err(_) => Exit::Exception {
                    vector: 6,
                    error_code: None,
                },
            }
        }
        SvmExit::Exception {
            vector, error_code, ..
        } => Exit::Exception { vector, error_code },
        SvmExit::Shutdown => Exit::TripleFault,
        // Host events: the host takes them after STGI.
        SvmExit::Intr | SvmExit::Nmi | SvmExit::Other(ExitCode::Smi | ExitCode::Init) => {
            Exit::ExternalInterrupt
        }
        SvmExit::Vintr => Exit::InterruptWindow,
        SvmExit::Invalid => {
            return Decoded {
                exit: Exit::EntryFailed {
                    code: info.code.raw() as u32,
                    qualification: 0,
                },
                vectoring: None,
                stop: None,
            }
        }
        // SVM is hidden from guests (CPUID 8000_0001h ECX.SVM = 0, EFER.SVME
        // reads 0) and so are MONITOR/MWAIT: a CPU without them raises #UD.
        // The exception is injected at the instruction: no length needed.
        SvmExit::Other(code) => match undefined_name(code) {
            Some(name) => Exit::UndefinedInstruction { name },
            None => unhandled(&info),
        },
        SvmExit::CrAccess { .. }
        | SvmExit::DrAccess { .. }
        | SvmExit::SoftwareInterrupt { .. }
        | SvmExit::Invlpg { .. }
        | SvmExit::CrWriteTrap { .. }
        | SvmExit::EferWriteTrap { .. }
        | SvmExit::Pause
        | SvmExit::Malformed { .. } => unhandled(&info),
    };
    let vectoring = match exit {
        // The guest state after a shutdown is undefined (APM 15.14).
        Exit::TripleFault => None,
        _ => vectoring_event(&info),
    };
    Decoded {
        exit,
        vectoring,
        stop: None,
    }
}

/// The source register and length of an intercepted MOV CR4: from
/// EXITINFO1 and nRIP with decode assists, else from the instruction's
/// bytes at RIP ([`super::insn::fetch_mov_to_cr4`]); with NRIP save the
/// decoded length must agree with nRIP (else the guest changed the bytes
/// since: the VM stops rather than guess the operand).
fn mov_to_cr4(
    vmcb: &Vmcb,
    mem: &dyn GuestMemory,
    setup: &SvmSetup,
    info: CrAccessInfo,
    nrip_len: Option<u64>,
) -> Result<(u8, u64), StopReason> {
    if let (CrAccessInfo::MovCr { gpr }, Some(len), true) =
        (info, nrip_len, setup.optional.decode_assists)
    {
        return Ok((gpr.index(), len));
    }
    let (gpr, len) = super::insn::fetch_mov_to_cr4(vmcb, mem)?;
    match nrip_len {
        Some(n) if n != len => Err(StopReason::InstructionNotDecoded {
            instruction: "MOV CR4",
            why: "the bytes at RIP are not as long as the instruction that exited",
            linear: super::insn::CodeLocation::of(vmcb).linear,
            rip: vmcb.save.rip,
        }),
        _ => Ok((gpr, len)),
    }
}

/// The #UD name of an intercepted instruction the guest's CPU lacks.
fn undefined_name(code: ExitCode) -> Option<&'static str> {
    Some(match code {
        ExitCode::Vmrun => "VMRUN",
        ExitCode::Vmload => "VMLOAD",
        ExitCode::Vmsave => "VMSAVE",
        ExitCode::Stgi => "STGI",
        ExitCode::Clgi => "CLGI",
        ExitCode::Skinit => "SKINIT",
        ExitCode::Invlpga => "INVLPGA",
        ExitCode::Monitor => "MONITOR",
        ExitCode::Mwait | ExitCode::MwaitConditional => "MWAIT",
        _ => return None,
    })
}

fn io_exit(io: IoExitInfo, regs: &GuestRegs) -> Exit {
    let size = AccessSize::from_bytes(io.size.bytes()).unwrap_or(AccessSize::Byte);
    let dir = match io.direction {
        IoDirection::In => IoDir::In,
        IoDirection::Out => IoDir::Out {
            value: (regs.rax as u32) & size.mask(),
        },
    };
    Exit::Io(IoAccess {
        port: io.port,
        size,
        dir,
        string_or_rep: io.string || io.rep,
    })
}

/// Any other exit, named as the APM names it, with EXITINFO1.
fn unhandled(info: &ExitInfo) -> Exit {
    Exit::Unhandled {
        code: info.code.raw() as u32,
        name: info.code.apm_name(),
        qualification: info.exit_info1,
    }
}

/// The event being delivered when the exit happened, if it must be
/// re-injected: exceptions, NMIs and external interrupts. Software
/// interrupts (INTn) and INT3/INTO (reported as exceptions 3 and 4) re-run
/// with their instruction, which RIP still points at.
fn vectoring_event(info: &ExitInfo) -> Option<Event> {
    let e = info.exit_int_info.valid()?;
    let kind = match e.kind() {
        EventType::Exception if matches!(e.vector(), 3 | 4) => return None,
        EventType::Exception => EventKind::Exception,
        EventType::Nmi => EventKind::Nmi,
        EventType::ExternalInterrupt => EventKind::ExternalInterrupt,
        EventType::SoftwareInterrupt | EventType::Reserved(_) => return None,
    };
    Some(Event {
        kind,
        vector: e.vector(),
        error_code: e.error_code(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::insn::testmem::Ram;
    use super::super::testcaps::{bochs, tcg, QEMU_TCG_EPYC, QEMU_TCG_MAX};
    use super::*;
    use hvcore::arch::{CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME};
    use svm::vmcb::{SegmentAttributes, SegmentRegister};
    use svm::EventInfo;

    /// A VMCB with an exit staged at RIP 0x1000 and guest RAX `rax`.
    fn staged(code: u64, info1: u64, info2: u64, next_rip: u64) -> Vmcb {
        let mut v = Vmcb::new();
        v.save.rip = 0x1000;
        v.save.rax = 0x1234_5641;
        v.control.exit_code = code;
        v.control.exit_info1 = info1;
        v.control.exit_info2 = info2;
        v.control.next_rip = next_rip;
        v
    }

    /// Decodes on `setup`'s CPU with `mem` as the VM's memory.
    fn run_on(v: &Vmcb, mem: &Ram, setup: &SvmSetup) -> (Decoded, GuestRegs) {
        let mut regs = GuestRegs {
            rax: 0xdead,
            rcx: 0x277,
            rdx: 0x7,
            ..Default::default()
        };
        let d = decode(v, &mut regs, mem, setup);
        (d, regs)
    }

    /// Decodes on Bochs' CPU (NRIP save) with no guest memory.
    fn run(v: &Vmcb) -> (Decoded, GuestRegs) {
        run_on(v, &Ram::new(0), &bochs())
    }

    /// RAM with `bytes` at 0x1000, where [`staged`] puts RIP (paging off).
    fn code_at_1000(bytes: &[u8]) -> Ram {
        let mut mem = Ram::new(0x2000);
        mem.put(0x1000, bytes);
        mem
    }

    /// The length QEMU's TCG (no NRIP save) finds for `bytes` at RIP, nRIP
    /// left at 0 as TCG leaves it.
    fn tcg_len(code: u64, info1: u64, bytes: &[u8]) -> Result<(Exit, u64), StopReason> {
        let (d, regs) = run_on(
            &staged(code, info1, 0, 0),
            &code_at_1000(bytes),
            &tcg(QEMU_TCG_EPYC),
        );
        match d.stop {
            Some(reason) => Err(reason),
            None => Ok((d.exit, regs.instruction_len)),
        }
    }

    #[test]
    fn cpuid_takes_rip_rax_and_length_from_the_vmcb() {
        let (d, regs) = run(&staged(0x72, 0, 0, 0x1002));
        assert_eq!(
            d,
            Decoded {
                exit: Exit::Cpuid,
                vectoring: None,
                stop: None
            }
        );
        assert_eq!(
            (regs.rip, regs.rax, regs.instruction_len),
            (0x1000, 0x1234_5641, 2)
        );
        let (d, regs) = run(&staged(0x78, 0, 0, 0x1001));
        assert_eq!((d.exit, regs.instruction_len), (Exit::Hlt, 1));
        let (d, regs) = run(&staged(0x81, 0, 0, 0x1003));
        assert_eq!((d.exit, regs.instruction_len), (Exit::Vmcall, 3));
    }

    #[test]
    fn prefixed_instructions_use_nrip() {
        // 66 0F A2: a CPUID with a redundant prefix is 3 bytes.
        let (_, regs) = run(&staged(0x72, 0, 0, 0x1003));
        assert_eq!(regs.instruction_len, 3);
        // No usable nRIP: the bytes decide, not a guess.
        let (d, regs) = run_on(
            &staged(0x72, 0, 0, 0),
            &code_at_1000(&[0x66, 0x0F, 0xA2]),
            &bochs(),
        );
        assert_eq!(
            (d.exit, regs.instruction_len, d.stop),
            (Exit::Cpuid, 3, None)
        );
        let (d, regs) = run_on(
            &staged(0x8D, 0, 0, 0x2000),
            &code_at_1000(&[0x0F, 0x01, 0xD1]),
            &bochs(),
        );
        assert_eq!((d.exit, regs.instruction_len), (Exit::Xsetbv, 3));
        // ... and unreadable bytes stop the VM.
        let (d, _) = run(&staged(0x72, 0, 0, 0));
        assert!(
            matches!(
                d.stop,
                Some(StopReason::InstructionNotDecoded {
                    instruction: "CPUID",
                    ..
                })
            ),
            "{d:?}"
        );
    }

    #[test]
    fn without_nrip_save_lengths_come_from_guest_memory() {
        assert_eq!(tcg_len(0x72, 0, &[0x0F, 0xA2]), Ok((Exit::Cpuid, 2)));
        assert_eq!(tcg_len(0x72, 0, &[0x66, 0x0F, 0xA2]), Ok((Exit::Cpuid, 3)));
        assert_eq!(tcg_len(0x81, 0, &[0x0F, 0x01, 0xD9]), Ok((Exit::Vmcall, 3)));
        assert_eq!(tcg_len(0x78, 0, &[0xF4]), Ok((Exit::Hlt, 1)));
        assert_eq!(
            tcg_len(0x7C, 0, &[0x0F, 0x32]),
            Ok((Exit::Rdmsr { msr: 0x277 }, 2))
        );
        // WRMSR with segment, operand- and address-size prefixes.
        assert_eq!(
            tcg_len(0x7C, 1, &[0x2E, 0x66, 0x67, 0x0F, 0x30]),
            Ok((
                Exit::Wrmsr {
                    msr: 0x277,
                    value: 0x7_1234_5641
                },
                5
            ))
        );
        assert_eq!(tcg_len(0x8D, 0, &[0x0F, 0x01, 0xD1]), Ok((Exit::Xsetbv, 3)));
        assert_eq!(tcg_len(0x76, 0, &[0x0F, 0x08]), Ok((Exit::Invd, 2)));
        assert_eq!(tcg_len(0x6F, 0, &[0x0F, 0x33]), Ok((Exit::Rdpmc, 2)));
    }

    #[test]
    fn without_nrip_save_a_stale_nrip_is_ignored() {
        // TCG never writes nRIP: whatever the field holds means nothing.
        let mut v = staged(0x72, 0, 0, 0x1005);
        v.save.rip = 0x1000;
        let (d, regs) = run_on(&v, &code_at_1000(&[0x0F, 0xA2]), &tcg(QEMU_TCG_MAX));
        assert_eq!((d.exit, regs.instruction_len), (Exit::Cpuid, 2));
        // I/O: EXITINFO2 is the next RIP; without it, nothing to fall back on.
        let (d, regs) = run_on(
            &staged(0x7B, (0x3F8 << 16) | (1 << 4), 0x1001, 0x1005),
            &Ram::new(0),
            &tcg(QEMU_TCG_MAX),
        );
        assert!(matches!(d.exit, Exit::Io(_)), "{d:?}");
        assert_eq!(regs.instruction_len, 1);
        let (d, _) = run_on(
            &staged(0x7B, (0x3F8 << 16) | (1 << 4), 0, 0x1001),
            &Ram::new(0),
            &tcg(QEMU_TCG_MAX),
        );
        assert!(
            matches!(d.exit, Exit::Unhandled { code: 0x7B, .. }),
            "{d:?}"
        );
        // A CR access (decode assists) needs nRIP: not decoded from memory.
        let (d, _) = run_on(
            &staged(0x14, (1 << 63) | 3, 0, 0x1003),
            &Ram::new(0),
            &tcg(QEMU_TCG_MAX),
        );
        assert!(
            matches!(d.exit, Exit::Unhandled { code: 0x14, .. }),
            "{d:?}"
        );
        // Exits that skip nothing read no memory.
        let (d, regs) = run_on(&staged(0x80, 0, 0, 0), &Ram::new(0), &tcg(QEMU_TCG_MAX));
        assert_eq!(
            (d.exit, regs.instruction_len, d.stop),
            (Exit::UndefinedInstruction { name: "VMRUN" }, 0, None)
        );
    }

    #[test]
    fn garbage_at_rip_stops_the_vm() {
        let e = tcg_len(0x72, 0, &[0x90, 0x90]).unwrap_err();
        assert_eq!(
            e,
            StopReason::InstructionNotDecoded {
                instruction: "CPUID",
                why: "the bytes at RIP do not encode it",
                linear: 0x1000,
                rip: 0x1000
            }
        );
        assert_eq!(
            alloc::format!("{e}"),
            "the length of the CPUID at rip 0x1000 (linear 0x1000) could not be read \
             from guest memory: the bytes at RIP do not encode it"
        );
        // Fifteen prefixes: longer than any instruction.
        assert!(matches!(
            tcg_len(0x78, 0, &[0x66; 15]),
            Err(StopReason::InstructionNotDecoded {
                instruction: "HLT",
                why: "the bytes at RIP are prefixes beyond 15 bytes",
                ..
            })
        ));
        // The exit says VMMCALL, memory says XSETBV.
        assert!(tcg_len(0x81, 0, &[0x0F, 0x01, 0xD1]).is_err());
        // What a caller that ignores `stop` would handle: an unhandled
        // exit, which stops the VM too.
        let (d, regs) = run_on(
            &staged(0x72, 0, 0, 0),
            &code_at_1000(&[0xCC]),
            &tcg(QEMU_TCG_EPYC),
        );
        assert_eq!(
            d.exit,
            Exit::Unhandled {
                code: 0x72,
                name: "VMEXIT_CPUID",
                qualification: 0
            }
        );
        assert_eq!(regs.instruction_len, 0);
    }

    /// A 64-bit (or, without CS.L, compatibility-mode) guest whose page
    /// tables map linear 0x10000 -> 0x9000 and 0x11000 -> 0x7000.
    fn paged(rip: u64, cs_long: bool) -> (Vmcb, Ram) {
        let mut v = staged(0x72, 0, 0, 0);
        v.save.cr0 = CR0_PE | CR0_PG;
        v.save.cr3 = Ram::PML4;
        v.save.cr4 = CR4_PAE;
        v.save.efer = EFER_LME | EFER_LMA | svm::caps::EFER_SVME;
        let attrib = if cs_long {
            SegmentAttributes::CODE64
        } else {
            SegmentAttributes::CODE32
        };
        v.save.cs = SegmentRegister::new(8, attrib, 0xFFFF_FFFF, 0);
        v.save.rip = rip;
        let mut mem = Ram::new(0x1_0000);
        mem.map_4k(&[(0x10_000, 0x9000), (0x11_000, 0x7000)]);
        (v, mem)
    }

    #[test]
    fn rex_counts_in_64_bit_mode_only() {
        let (v, mut mem) = paged(0x10_100, true);
        mem.put(0x9100, &[0x48, 0x0F, 0xA2]);
        let setup = tcg(QEMU_TCG_EPYC);
        let (d, regs) = run_on(&v, &mem, &setup);
        assert_eq!(
            (d.exit, regs.instruction_len, d.stop),
            (Exit::Cpuid, 3, None)
        );
        // The same bytes in compatibility mode: 48 is DEC EAX.
        let (v, _) = paged(0x10_100, false);
        let (d, _) = run_on(&v, &mem, &setup);
        assert!(
            matches!(
                d.stop,
                Some(StopReason::InstructionNotDecoded {
                    why: "the bytes at RIP do not encode it",
                    linear: 0x10_100,
                    ..
                })
            ),
            "{d:?}"
        );
    }

    #[test]
    fn an_instruction_crossing_into_a_page_mapped_elsewhere() {
        // 66 0F | A2 across linear 0x11000, physically 0x9FFE and 0x7000.
        let (v, mut mem) = paged(0x10_FFE, true);
        mem.put(0x9FFE, &[0x66, 0x0F]);
        mem.put(0x7000, &[0xA2]);
        let (d, regs) = run_on(&v, &mem, &tcg(QEMU_TCG_EPYC));
        assert_eq!(
            (d.exit, regs.instruction_len, d.stop),
            (Exit::Cpuid, 3, None)
        );
        assert_eq!(regs.rip, 0x10_FFE);
        // RIP on a page the guest has not mapped.
        let (v, mem) = paged(0x12_000, true);
        let (d, _) = run_on(&v, &mem, &tcg(QEMU_TCG_EPYC));
        assert_eq!(
            d.stop,
            Some(StopReason::InstructionNotDecoded {
                instruction: "CPUID",
                why: "a guest page-table entry is not present",
                linear: 0x12_000,
                rip: 0x12_000
            })
        );
    }

    #[test]
    fn out_value_comes_from_vmcb_rax() {
        // OUT DX, AL to 0x3F8: SZ8 (bit 4), TYPE 0 (out), port in 31:16.
        let (d, regs) = run(&staged(0x7B, (0x3F8 << 16) | (1 << 4), 0x1001, 0));
        assert_eq!(
            d.exit,
            Exit::Io(IoAccess {
                port: 0x3F8,
                size: AccessSize::Byte,
                dir: IoDir::Out { value: 0x41 },
                string_or_rep: false
            })
        );
        assert_eq!(regs.instruction_len, 1);
        // IN EAX, 0x71 (2 bytes), and REP OUTSW.
        let (d, regs) = run(&staged(0x7B, (0x71 << 16) | (1 << 6) | 1, 0x1002, 0));
        assert_eq!(
            d.exit,
            Exit::Io(IoAccess {
                port: 0x71,
                size: AccessSize::Dword,
                dir: IoDir::In,
                string_or_rep: false
            })
        );
        assert_eq!(regs.instruction_len, 2);
        let (d, _) = run(&staged(
            0x7B,
            (0x80 << 16) | (1 << 5) | (1 << 3) | (1 << 2),
            0x1002,
            0,
        ));
        assert!(
            matches!(
                d.exit,
                Exit::Io(IoAccess {
                    size: AccessSize::Word,
                    string_or_rep: true,
                    ..
                })
            ),
            "{d:?}"
        );
        // Undecodable size bits, or no next RIP at all: reported, not guessed.
        let (d, _) = run(&staged(0x7B, (0x80 << 16) | (3 << 4), 0x1001, 0));
        assert!(
            matches!(
                d.exit,
                Exit::Unhandled {
                    code: 0x7B,
                    name: "VMEXIT_IOIO",
                    ..
                }
            ),
            "{d:?}"
        );
        let (d, _) = run(&staged(0x7B, (0x80 << 16) | (1 << 4), 0, 0));
        assert!(
            matches!(d.exit, Exit::Unhandled { code: 0x7B, .. }),
            "{d:?}"
        );
    }

    #[test]
    fn msr_exits_use_ecx_and_edx_eax() {
        let (d, _) = run(&staged(0x7C, 0, 0, 0x1002));
        assert_eq!(d.exit, Exit::Rdmsr { msr: 0x277 });
        let (d, regs) = run(&staged(0x7C, 1, 0, 0x1002));
        assert_eq!(
            d.exit,
            Exit::Wrmsr {
                msr: 0x277,
                value: 0x7_1234_5641
            }
        );
        assert_eq!(regs.instruction_len, 2);
        let (d, _) = run(&staged(0x7C, 2, 0, 0x1002));
        assert_eq!(
            d.exit,
            Exit::Unhandled {
                code: 0x7C,
                name: "VMEXIT_MSR",
                qualification: 2
            }
        );
    }

    #[test]
    fn svm_and_monitor_instructions_are_undefined() {
        for (code, name) in [
            (0x80, "VMRUN"),
            (0x82, "VMLOAD"),
            (0x83, "VMSAVE"),
            (0x84, "STGI"),
            (0x85, "CLGI"),
            (0x86, "SKINIT"),
            (0x7A, "INVLPGA"),
            (0x8A, "MONITOR"),
            (0x8B, "MWAIT"),
            (0x8C, "MWAIT"),
        ] {
            let (d, _) = run(&staged(code, 0, 0, 0x1003));
            assert_eq!(d.exit, Exit::UndefinedInstruction { name }, "{code:#x}");
        }
        for (code, exit) in [
            (0x8D, Exit::Xsetbv),
            (0x76, Exit::Invd),
            (0x6F, Exit::Rdpmc),
        ] {
            let (d, regs) = run(&staged(code, 0, 0, 0x1002 + (code == 0x8D) as u64));
            assert_eq!(d.exit, exit, "{code:#x}");
            assert_ne!(regs.instruction_len, 0);
        }
    }

    #[test]
    fn dr0_to_dr3_accesses_hand_the_debug_registers_over() {
        // Reads 0x20-0x23, writes 0x30-0x33 and 0x37 (DR7); the MOV runs
        // again (no length).
        for code in [0x20, 0x23, 0x30, 0x33, 0x37] {
            let (d, regs) = run(&staged(code, 0, 0, 0x1003));
            assert_eq!(d.exit, Exit::DebugRegister, "{code:#x}");
            assert_eq!(regs.instruction_len, 0);
        }
        // DR7 reads are not intercepted: were they, that would be a bug,
        // reported.
        assert!(matches!(
            run(&staged(0x27, 0, 0, 0)).0.exit,
            Exit::Unhandled { code: 0x27, .. }
        ));
    }

    #[test]
    fn host_events_and_the_interrupt_window() {
        for code in [0x60, 0x61, 0x62, 0x63] {
            let (d, regs) = run(&staged(code, 0, 0, 0));
            assert_eq!(d.exit, Exit::ExternalInterrupt, "{code:#x}");
            assert_eq!(regs.instruction_len, 0);
        }
        assert_eq!(run(&staged(0x64, 0, 0, 0)).0.exit, Exit::InterruptWindow);
        assert_eq!(run(&staged(0x7F, 0, 0, 0)).0.exit, Exit::TripleFault);
    }

    #[test]
    fn nested_page_fault_with_vectoring_event() {
        // A write to a present page, during the delivery of #PF (error
        // code 2).
        let mut v = staged(0x400, 0b111 | (1 << 32), 0x400_0000, 0);
        v.control.exit_int_info = EventInfo::new(14, EventType::Exception, Some(2));
        let (d, regs) = run(&v);
        assert_eq!(
            d.exit,
            Exit::MemoryViolation {
                gpa: 0x400_0000,
                access: Access::WRITE,
                linear: None
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
        assert_eq!(regs.instruction_len, 0);
        // Fetch and read.
        let (d, _) = run(&staged(0x400, 0x15, 0x8000, 0));
        assert!(matches!(
            d.exit,
            Exit::MemoryViolation {
                access: Access::EXECUTE,
                ..
            }
        ));
        let (d, _) = run(&staged(0x400, 0x4, 0x8000, 0));
        assert!(matches!(
            d.exit,
            Exit::MemoryViolation {
                access: Access::READ,
                ..
            }
        ));
    }

    #[test]
    fn which_interrupted_events_come_back() {
        let with = |e: EventInfo| {
            let mut v = staged(0x60, 0, 0, 0);
            v.control.exit_int_info = e;
            run(&v).0.vectoring
        };
        assert_eq!(
            with(EventInfo::external_interrupt(0x30)),
            Some(Event::interrupt(0x30))
        );
        assert_eq!(
            with(EventInfo::nmi()),
            Some(Event {
                kind: EventKind::Nmi,
                vector: 2,
                error_code: None
            })
        );
        assert_eq!(with(EventInfo::general_protection()), Some(Event::GP0));
        // INTn, INT3 and INTO re-run with their instruction.
        assert_eq!(with(EventInfo::software_interrupt(0x80)), None);
        assert_eq!(with(EventInfo::new(3, EventType::Exception, None)), None);
        assert_eq!(with(EventInfo::new(4, EventType::Exception, None)), None);
        assert_eq!(with(EventInfo(0x0000_0000_0000_030e)), None, "V clear");
        // A shutdown has no state to re-inject into.
        let mut v = staged(0x7F, 0, 0, 0);
        v.control.exit_int_info = EventInfo::general_protection();
        assert_eq!(run(&v).0.vectoring, None);
    }

    #[test]
    fn exceptions_keep_their_error_code() {
        let (d, _) = run(&staged(0x40 + 17, 0, 0, 0));
        assert_eq!(
            d.exit,
            Exit::Exception {
                vector: 17,
                error_code: Some(0)
            }
        );
        let (d, _) = run(&staged(0x40 + 6, 0x55, 0, 0));
        assert_eq!(
            d.exit,
            Exit::Exception {
                vector: 6,
                error_code: None
            }
        );
    }

    #[test]
    fn cr_accesses_need_decode_assists() {
        // Every optional feature, decode assists among them.
        let assisted = SvmSetup::from_caps(
            &super::super::testcaps::caps([1, 0x8000, 0, 0xff]),
            super::super::testcaps::HOST,
        )
        .unwrap();
        let mov_cr4_rbx = Exit::CrAccess(CrAccess {
            cr: 4,
            kind: CrAccessKind::MovTo { gpr: 3 },
        });
        // MOV CR4, RBX with decode assists (bit 63, GPR 3), 3 bytes: guest
        // memory is not read.
        let (d, regs) = run_on(
            &staged(0x14, (1 << 63) | 3, 0, 0x1003),
            &Ram::new(0),
            &assisted,
        );
        assert_eq!(d.exit, mov_cr4_rbx);
        assert_eq!(regs.instruction_len, 3);
        let (d, _) = run_on(
            &staged(0x08, (1 << 63) | 9, 0, 0x1004),
            &Ram::new(0),
            &assisted,
        );
        assert_eq!(
            d.exit,
            Exit::CrAccess(CrAccess {
                cr: 8,
                kind: CrAccessKind::MovFrom { gpr: 9 }
            })
        );
        // Without decode assists the register of a CR access that is not a
        // CR4 write is unknown: not guessed.
        let (d, _) = run(&staged(0x10, 0, 0, 0x1003));
        assert_eq!(
            d.exit,
            Exit::Unhandled {
                code: 0x10,
                name: "VMEXIT_CRx_WRITE",
                qualification: 0
            }
        );
    }

    #[test]
    fn cr4_writes_without_decode_assists_read_the_instruction() {
        let mov_cr4 = |gpr| {
            Exit::CrAccess(CrAccess {
                cr: 4,
                kind: CrAccessKind::MovTo { gpr },
            })
        };
        // Bochs: NRIP save, no decode assists; `mov cr4, ebx` (paging off).
        let mem = code_at_1000(&[0x0F, 0x22, 0xE3]);
        let (d, regs) = run_on(&staged(0x14, 0, 0, 0x1003), &mem, &bochs());
        assert_eq!(
            (d.exit, d.stop, regs.instruction_len),
            (mov_cr4(3), None, 3)
        );
        // QEMU's TCG: neither; the crs guest's `mov cr4, r15` in 64-bit mode.
        let mut v = staged(0x14, 0, 0, 0);
        v.save.efer = EFER_LME | EFER_LMA;
        v.save.cr0 = CR0_PE;
        v.save.cs = SegmentRegister::new(8, SegmentAttributes::CODE64, 0xFFFF_FFFF, 0);
        let mem = code_at_1000(&[0x41, 0x0F, 0x22, 0xE7]);
        let (d, regs) = run_on(&v, &mem, &tcg(QEMU_TCG_EPYC));
        assert_eq!(
            (d.exit, d.stop, regs.instruction_len),
            (mov_cr4(15), None, 4)
        );
        // nRIP and the bytes disagree: the guest changed its code; stopped.
        let mem = code_at_1000(&[0x0F, 0x22, 0xE3]);
        let (d, _) = run_on(&staged(0x14, 0, 0, 0x1004), &mem, &bochs());
        assert!(matches!(
            d.stop,
            Some(StopReason::InstructionNotDecoded {
                instruction: "MOV CR4",
                ..
            })
        ));
        assert!(matches!(d.exit, Exit::Unhandled { code: 0x14, .. }));
        // Not a MOV to CR4 at RIP: stopped as well.
        let mem = code_at_1000(&[0x0F, 0x22, 0xC3]);
        let (d, _) = run_on(&staged(0x14, 0, 0, 0), &mem, &tcg(QEMU_TCG_EPYC));
        assert_eq!(
            d.stop,
            Some(StopReason::InstructionNotDecoded {
                instruction: "MOV CR4",
                why: "the bytes at RIP do not encode it",
                linear: 0x1000,
                rip: 0x1000
            })
        );
    }

    #[test]
    fn invalid_state_and_unknown_exits() {
        let (d, regs) = run(&staged(u64::MAX, 0, 0, 0));
        assert_eq!(
            d,
            Decoded {
                exit: Exit::EntryFailed {
                    code: 0xFFFF_FFFF,
                    qualification: 0
                },
                vectoring: None,
                stop: None
            }
        );
        assert_eq!(regs.rip, 0x1000);
        // QEMU's TCG writes VMEXIT_INVALID as 0x0000_0000_FFFF_FFFF.
        let (d32, _) = run(&staged(0xFFFF_FFFF, 0, 0, 0));
        assert_eq!(d32, d);
        let (d, _) = run(&staged(0x6E, 0, 0, 0x1002));
        assert_eq!(
            d.exit,
            Exit::Unhandled {
                code: 0x6E,
                name: "VMEXIT_RDTSC",
                qualification: 0
            }
        );
        let (d, _) = run(&staged(0x27, 5, 0, 0));
        assert_eq!(
            d.exit,
            Exit::Unhandled {
                code: 0x27,
                name: "VMEXIT_DRx_READ",
                qualification: 5
            }
        );
        let (d, _) = run(&staged(0x3FF, 0, 0, 0));
        assert_eq!(
            d.exit,
            Exit::Unhandled {
                code: 0x3FF,
                name: "unknown",
                qualification: 0
            }
        );
    }

    /// The straight reading of the common intercepts gives what the full
    /// decoding gives, with and without NRIP save.
    #[test]
    fn decode_into_agrees_with_decode() {
        // CPUID, VMMCALL, HLT (with their bytes at RIP for a CPU without
        // NRIP save), OUT DX, AL to 0x3F8, and IN AL from 0x71 with an
        // implausible EXITINFO2 (the full path).
        let cases: [(u64, u64, u64, u64, &[u8]); 5] = [
            (0x72, 0, 0, 0x1002, &[0x0F, 0xA2]),
            (0x81, 0, 0, 0x1003, &[0x0F, 0x01, 0xD9]),
            (0x78, 0, 0, 0x1001, &[0xF4]),
            (
                0x7B,
                (0x3F8 << 16) | IoExitInfo::SZ8,
                0x1001,
                0x1001,
                &[0xEE],
            ),
            (
                0x7B,
                (0x71 << 16) | IoExitInfo::SZ8 | IoExitInfo::TYPE_IN,
                0x2000,
                0,
                &[0xEC],
            ),
        ];
        for setup in [bochs(), tcg(QEMU_TCG_EPYC)] {
            for &(code, info1, info2, next, bytes) in &cases {
                let mut v = staged(code, info1, info2, next);
                if !setup.optional.nrip_save {
                    v.control.next_rip = 0;
                }
                let mem = code_at_1000(bytes);
                let (d, regs) = run_on(&v, &mem, &setup);
                let mut regs2 = GuestRegs {
                    rax: 0xdead,
                    rcx: 0x277,
                    rdx: 0x7,
                    ..Default::default()
                };
                let mut exit = Exit::Invd;
                let r = decode_into(&v, &mut regs2, &mem, &setup, &mut exit);
                assert_eq!((exit, r), (d.exit, Ok(d.vectoring)), "{code:#x}");
                assert_eq!(regs2, regs, "{code:#x}");
            }
        }
    }
}
