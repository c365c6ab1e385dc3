//! Control registers and XCR0: the guest/host ownership split and the
//! emulation of the accesses the backend intercepts.
//!
//! # Who owns which bit
//!
//! The guest owns every CR0 and CR4 bit that only affects itself and runs
//! with it natively (no exit): CR0.MP, EM, TS, WP, AM; CR4 bits in
//! [`CR4_GUEST_OWNED`] that the CPU supports. The hypervisor owns:
//!
//! - CR0.PE and CR0.PG: a change switches the guest's paging mode, and with
//!   EFER.LME it activates long mode, which the backend must mirror in its
//!   controls (VT-x: the "IA-32e mode guest" entry control, SDM 27.3.1.1);
//! - CR0.CD and CR0.NW: VM exits do not reload them (SDM 28.5.1), so a
//!   guest's value would disable the host's caches; the guest sees its own
//!   value while the hardware keeps caching on (memory types come from EPT);
//! - every CR4 bit outside [`CR4_GUEST_OWNED`] (VMXE, SMXE, LA57, PKE, CET
//!   and reserved bits): writing 1 raises `#GP`, and they read as 0.
//!
//! Writes that touch an owned bit exit and are emulated here with the checks
//! hardware makes (SDM Vol. 3A 2.5, Vol. 2B MOV CR); the backend maps the
//! guest-visible value to what the hardware runs with ([`GuestCpu::write`]).
//!
//! XSETBV always exits (SDM 26.1.2); the value is checked against the
//! features the host enabled ([`GuestLimits::xcr0_allowed`]) and the rules of
//! SDM Vol. 1 13.3, then loaded into hardware by the backend while this vCPU
//! runs.

use crate::arch::{
    state_failure, Action, CrAccess, CrAccessKind, Event, GuestCpu, GuestRegs, Platform, Reg,
    StateError, StopReason, EFER_LMA, EFER_LME,
};

pub use crate::arch::{
    CR0_CD, CR0_ET, CR0_HOST_OWNED, CR0_NW, CR0_PE, CR0_PG, CR0_TS, CR4_GUEST_OWNED, CR4_OSXSAVE,
    CR4_PAE, CR4_PCIDE, CR4_VMXE, XCR0_AVX, XCR0_AVX512, XCR0_SSE, XCR0_X87,
};

/// Handles an intercepted control-register access.
pub fn access(access: CrAccess, regs: &mut GuestRegs, env: &mut dyn Platform) -> Action {
    match emulate(access, regs, env.guest_cpu()) {
        Ok(action) => action,
        Err(e) => state_failure(e, regs),
    }
}

fn emulate(
    access: CrAccess,
    regs: &mut GuestRegs,
    cpu: &mut dyn GuestCpu,
) -> Result<Action, StateError> {
    let reg = match access.cr {
        0 => Reg::Cr0,
        3 => Reg::Cr3,
        4 => Reg::Cr4,
        8 => Reg::Cr8,
        // Other control registers do not exist: MOV to or from them is #UD.
        _ => return Ok(Action::Inject(Event::UD)),
    };
    // Outside 64-bit mode MOV CR moves 32 bits (SDM Vol. 2B MOV CR): the
    // upper half of the source is ignored, the destination's is zeroed.
    let operand_mask = match access.kind {
        CrAccessKind::MovFrom { .. } | CrAccessKind::MovTo { .. }
            if cpu.read(Reg::Mode64)? == 0 =>
        {
            0xFFFF_FFFF
        }
        _ => u64::MAX,
    };
    match access.kind {
        CrAccessKind::MovFrom { gpr } => {
            let value = cpu.read(reg)? & operand_mask;
            if gpr == 4 {
                cpu.write(Reg::Rsp, value)?;
            } else if !regs.set_gpr(gpr, value) {
                return Ok(Action::Inject(Event::UD));
            }
            Ok(Action::AdvanceRip)
        }
        CrAccessKind::MovTo { gpr } => {
            let value = match gpr {
                4 => cpu.read(Reg::Rsp)?,
                n => match regs.gpr(n) {
                    Some(v) => v,
                    None => return Ok(Action::Inject(Event::UD)),
                },
            } & operand_mask;
            write_cr(reg, value, regs, cpu)
        }
        CrAccessKind::Clts => {
            let cr0 = cpu.read(Reg::Cr0)?;
            write_cr(Reg::Cr0, cr0 & !CR0_TS, regs, cpu)
        }
        CrAccessKind::Lmsw { source } => {
            // LMSW loads MP, EM, TS and PE; it can set PE but never clear it.
            let cr0 = cpu.read(Reg::Cr0)?;
            let value = (cr0 & !0xE) | (u64::from(source) & 0xF) | (cr0 & CR0_PE);
            write_cr(Reg::Cr0, value, regs, cpu)
        }
    }
}

fn write_cr(
    reg: Reg,
    value: u64,
    regs: &GuestRegs,
    cpu: &mut dyn GuestCpu,
) -> Result<Action, StateError> {
    let outcome = match reg {
        Reg::Cr0 => write_cr0(value, regs, cpu)?,
        Reg::Cr4 => write_cr4(value, cpu)?,
        Reg::Cr3 => {
            let limits = cpu.limits();
            let pcide = cpu.read(Reg::Cr4)? & CR4_PCIDE != 0;
            // With PCIDE, bit 63 asks not to flush; it is not stored.
            let value = if pcide { value & !(1 << 63) } else { value };
            if limits.phys_addr_bits < 64 && value >> limits.phys_addr_bits != 0 {
                Outcome::Fault(Event::GP0)
            } else {
                cpu.write(Reg::Cr3, value)?;
                Outcome::Done
            }
        }
        // CR8 bits 63:4 are reserved.
        Reg::Cr8 if value > 0xF => Outcome::Fault(Event::GP0),
        _ => {
            cpu.write(reg, value)?;
            Outcome::Done
        }
    };
    Ok(match outcome {
        Outcome::Done => Action::AdvanceRip,
        Outcome::Fault(e) => Action::Inject(e),
        Outcome::Stop(reason) => Action::Stop(reason),
    })
}

enum Outcome {
    Done,
    Fault(Event),
    Stop(StopReason),
}

fn write_cr0(value: u64, regs: &GuestRegs, cpu: &mut dyn GuestCpu) -> Result<Outcome, StateError> {
    // Bits 63:32 are reserved; PG needs PE; NW needs CD (SDM Vol. 3A 2.5).
    if value >> 32 != 0
        || (value & CR0_PG != 0 && value & CR0_PE == 0)
        || (value & CR0_NW != 0 && value & CR0_CD == 0)
    {
        return Ok(Outcome::Fault(Event::GP0));
    }
    if !cpu.limits().unrestricted && value & (CR0_PE | CR0_PG) != CR0_PE | CR0_PG {
        return Ok(Outcome::Stop(StopReason::MissingFeature {
            what: "clearing CR0.PE or CR0.PG",
            feature: "VT-x unrestricted guest",
            rip: regs.rip,
        }));
    }
    let old = cpu.read(Reg::Cr0)?;
    let efer = cpu.read(Reg::Efer)?;
    let paging_on = old & CR0_PG == 0 && value & CR0_PG != 0;
    let paging_off = old & CR0_PG != 0 && value & CR0_PG == 0;
    if paging_on && efer & EFER_LME != 0 {
        // Long mode activates: it needs PAE and sets EFER.LMA (SDM Vol. 3A 9.8.5).
        if cpu.read(Reg::Cr4)? & CR4_PAE == 0 {
            return Ok(Outcome::Fault(Event::GP0));
        }
        cpu.write(Reg::Efer, efer | EFER_LMA)?;
    } else if paging_off && efer & EFER_LMA != 0 {
        cpu.write(Reg::Efer, efer & !EFER_LMA)?;
    }
    cpu.write(Reg::Cr0, value | CR0_ET)?;
    Ok(Outcome::Done)
}

fn write_cr4(value: u64, cpu: &mut dyn GuestCpu) -> Result<Outcome, StateError> {
    let limits = cpu.limits();
    if value & !limits.cr4_allowed != 0 {
        return Ok(Outcome::Fault(Event::GP0));
    }
    let efer = cpu.read(Reg::Efer)?;
    let long_mode = efer & EFER_LMA != 0;
    // PAE cannot be cleared in long mode; PCIDE needs long mode and CR3[11:0] = 0.
    if long_mode && value & CR4_PAE == 0 {
        return Ok(Outcome::Fault(Event::GP0));
    }
    let old = cpu.read(Reg::Cr4)?;
    if value & CR4_PCIDE != 0
        && old & CR4_PCIDE == 0
        && (!long_mode || cpu.read(Reg::Cr3)? & 0xFFF != 0)
    {
        return Ok(Outcome::Fault(Event::GP0));
    }
    cpu.write(Reg::Cr4, value)?;
    Ok(Outcome::Done)
}

/// Handles `XSETBV` (SDM Vol. 2C XSETBV; Vol. 1 13.3).
pub fn xsetbv(regs: &mut GuestRegs, env: &mut dyn Platform) -> Action {
    let cpu = env.guest_cpu();
    match check_xsetbv(regs, cpu) {
        Ok(Ok(value)) => match cpu.write(Reg::Xcr0, value) {
            Ok(()) => Action::AdvanceRip,
            Err(e) => state_failure(e, regs),
        },
        Ok(Err(event)) => Action::Inject(event),
        Err(e) => state_failure(e, regs),
    }
}

fn check_xsetbv(
    regs: &GuestRegs,
    cpu: &mut dyn GuestCpu,
) -> Result<Result<u64, Event>, StateError> {
    let limits = cpu.limits();
    if limits.xcr0_allowed == 0 || cpu.read(Reg::Cr4)? & CR4_OSXSAVE == 0 {
        return Ok(Err(Event::UD));
    }
    let value = (regs.rdx << 32) | (regs.rax & 0xFFFF_FFFF);
    let valid = regs.rcx & 0xFFFF_FFFF == 0
        && cpu.read(Reg::Cpl)? == 0
        && value & XCR0_X87 != 0
        && value & !limits.xcr0_allowed == 0
        && (value & XCR0_AVX == 0 || value & XCR0_SSE != 0)
        && (value & XCR0_AVX512 == 0
            || (value & XCR0_AVX512 == XCR0_AVX512 && value & XCR0_AVX != 0));
    Ok(if valid { Ok(value) } else { Err(Event::GP0) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::testenv::FakePlatform;
    use crate::exit::{handle_exit, Exit};
    use crate::vcpu::VmContext;

    fn mov_to(cr: u8, gpr: u8) -> Exit {
        Exit::CrAccess(CrAccess {
            cr,
            kind: CrAccessKind::MovTo { gpr },
        })
    }

    fn run(env: &mut FakePlatform, regs: &mut GuestRegs, exit: Exit) -> Action {
        let mut vm = VmContext::new(1, "cr");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        handle_exit(&mut vm, &mut vcpu, &exit, regs, env)
    }

    #[test]
    fn cr0_cd_nw_stay_virtual_and_checked() {
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs {
            rbx: 0xE000_0031,
            ..Default::default()
        };
        assert_eq!(run(&mut env, &mut regs, mov_to(0, 3)), Action::AdvanceRip);
        assert_eq!(env.cpu.get(Reg::Cr0), 0xE000_0031);
        // NW without CD, PG without PE, upper bits: #GP, nothing changes.
        for bad in [0xA000_0031u64, 0x8000_0030, 1 << 32 | 0x8000_0031] {
            regs.rbx = bad;
            assert_eq!(
                run(&mut env, &mut regs, mov_to(0, 3)),
                Action::Inject(Event::GP0),
                "{bad:#x}"
            );
        }
        assert_eq!(env.cpu.get(Reg::Cr0), 0xE000_0031);
    }

    #[test]
    fn paging_on_with_lme_activates_long_mode() {
        let mut env = FakePlatform::new();
        env.cpu.set(Reg::Cr0, 0x11); // PE|ET
        env.cpu.set(Reg::Efer, EFER_LME);
        env.cpu.set(Reg::Cr4, 0);
        let mut regs = GuestRegs {
            rax: 0x8000_0011,
            ..Default::default()
        };
        // Without PAE: #GP.
        assert_eq!(
            run(&mut env, &mut regs, mov_to(0, 0)),
            Action::Inject(Event::GP0)
        );
        env.cpu.set(Reg::Cr4, CR4_PAE);
        assert_eq!(run(&mut env, &mut regs, mov_to(0, 0)), Action::AdvanceRip);
        assert_eq!(env.cpu.get(Reg::Efer), EFER_LME | EFER_LMA);
        // Paging off again leaves long mode.
        regs.rax = 0x11;
        assert_eq!(run(&mut env, &mut regs, mov_to(0, 0)), Action::AdvanceRip);
        assert_eq!(env.cpu.get(Reg::Efer), EFER_LME);
    }

    #[test]
    fn without_unrestricted_guest_real_mode_stops_with_a_reason() {
        let mut env = FakePlatform::new();
        env.cpu.limits.unrestricted = false;
        let mut regs = GuestRegs {
            rax: 0x10,
            rip: 0x99,
            ..Default::default()
        };
        let a = run(&mut env, &mut regs, mov_to(0, 0));
        assert!(
            matches!(
                a,
                Action::Stop(StopReason::MissingFeature { rip: 0x99, .. })
            ),
            "{a:?}"
        );
    }

    #[test]
    fn cr4_owned_bits_and_vmxe() {
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs {
            rcx: 0x20 | CR4_OSXSAVE | 0x600,
            ..Default::default()
        };
        assert_eq!(run(&mut env, &mut regs, mov_to(4, 1)), Action::AdvanceRip);
        assert_eq!(env.cpu.get(Reg::Cr4), 0x20 | CR4_OSXSAVE | 0x600);
        for bad in [CR4_VMXE | 0x20, (1 << 12) | 0x20, (1 << 22) | 0x20, 0] {
            regs.rcx = bad;
            assert_eq!(
                run(&mut env, &mut regs, mov_to(4, 1)),
                Action::Inject(Event::GP0),
                "{bad:#x}"
            );
        }
    }

    #[test]
    fn mov_from_cr_clts_lmsw_and_rsp() {
        let mut env = FakePlatform::new();
        env.cpu.set(Reg::Cr0, 0x8000_0039); // TS set
        let mut regs = GuestRegs::default();
        let from = |gpr| {
            Exit::CrAccess(CrAccess {
                cr: 0,
                kind: CrAccessKind::MovFrom { gpr },
            })
        };
        assert_eq!(run(&mut env, &mut regs, from(9)), Action::AdvanceRip);
        assert_eq!(regs.r9, 0x8000_0039);
        assert_eq!(run(&mut env, &mut regs, from(4)), Action::AdvanceRip);
        assert_eq!(env.cpu.get(Reg::Rsp), 0x8000_0039);
        let clts = Exit::CrAccess(CrAccess {
            cr: 0,
            kind: CrAccessKind::Clts,
        });
        assert_eq!(run(&mut env, &mut regs, clts), Action::AdvanceRip);
        assert_eq!(env.cpu.get(Reg::Cr0), 0x8000_0031);
        // LMSW cannot clear PE, sets MP.
        let lmsw = Exit::CrAccess(CrAccess {
            cr: 0,
            kind: CrAccessKind::Lmsw { source: 0x2 },
        });
        assert_eq!(run(&mut env, &mut regs, lmsw), Action::AdvanceRip);
        assert_eq!(env.cpu.get(Reg::Cr0), 0x8000_0033);
        // CR2 and CR5 are not intercepted registers: #UD.
        let cr5 = Exit::CrAccess(CrAccess {
            cr: 5,
            kind: CrAccessKind::MovFrom { gpr: 0 },
        });
        assert_eq!(run(&mut env, &mut regs, cr5), Action::Inject(Event::UD));
    }

    #[test]
    fn outside_64_bit_mode_only_32_bits_move() {
        let mut env = FakePlatform::new();
        env.cpu.set(Reg::Mode64, 0);
        env.cpu.set(Reg::Efer, 0x100); // LME, not active
                                       // Garbage in the upper half of RCX, left by earlier 64-bit code.
        let mut regs = GuestRegs {
            rcx: 0xdead_beef_0000_0020,
            ..Default::default()
        };
        assert_eq!(run(&mut env, &mut regs, mov_to(4, 1)), Action::AdvanceRip);
        assert_eq!(env.cpu.get(Reg::Cr4), 0x20);
        env.cpu.set(Reg::Cr3, 0x1_2345_6000);
        let from = Exit::CrAccess(CrAccess {
            cr: 3,
            kind: CrAccessKind::MovFrom { gpr: 2 },
        });
        assert_eq!(run(&mut env, &mut regs, from), Action::AdvanceRip);
        assert_eq!(regs.rdx, 0x2345_6000);
    }

    #[test]
    fn cr3_and_cr8_reserved_bits() {
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs {
            rax: 1 << 40,
            rdx: 0x10,
            ..Default::default()
        };
        assert_eq!(
            run(&mut env, &mut regs, mov_to(3, 0)),
            Action::Inject(Event::GP0)
        );
        regs.rax = 0x5000;
        assert_eq!(run(&mut env, &mut regs, mov_to(3, 0)), Action::AdvanceRip);
        assert_eq!(env.cpu.get(Reg::Cr3), 0x5000);
        assert_eq!(
            run(&mut env, &mut regs, mov_to(8, 2)),
            Action::Inject(Event::GP0)
        );
        regs.rdx = 15;
        assert_eq!(run(&mut env, &mut regs, mov_to(8, 2)), Action::AdvanceRip);
        assert_eq!(env.cpu.get(Reg::Cr8), 15);
    }

    #[test]
    fn xsetbv_rules() {
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs {
            rax: 7,
            ..Default::default()
        };
        // CR4.OSXSAVE clear: #UD.
        assert_eq!(
            run(&mut env, &mut regs, Exit::Xsetbv),
            Action::Inject(Event::UD)
        );
        env.cpu.set(Reg::Cr4, 0x20 | CR4_OSXSAVE);
        assert_eq!(run(&mut env, &mut regs, Exit::Xsetbv), Action::AdvanceRip);
        assert_eq!(env.cpu.get(Reg::Xcr0), 7);
        // SSE without x87, AVX without SSE, part of AVX-512, unsupported bit,
        // XCR index 1, bits above the supported mask.
        let bad = [
            (2, 0, 0),
            (5, 0, 0),
            (0x27, 0, 0),
            (0x200 | 3, 0, 0),
            (3, 1, 0),
            (3, 0, 1),
        ];
        for (rax, rcx, rdx) in bad {
            regs.rax = rax;
            regs.rcx = rcx;
            regs.rdx = rdx;
            assert_eq!(
                run(&mut env, &mut regs, Exit::Xsetbv),
                Action::Inject(Event::GP0),
                "{rax:#x} {rcx} {rdx}"
            );
        }
        assert_eq!(env.cpu.get(Reg::Xcr0), 7);
        // CPL 3: #GP.
        env.cpu.set(Reg::Cpl, 3);
        regs.rax = 3;
        regs.rcx = 0;
        regs.rdx = 0;
        assert_eq!(
            run(&mut env, &mut regs, Exit::Xsetbv),
            Action::Inject(Event::GP0)
        );
        // Without XSAVE offered: #UD.
        env.cpu.limits.xcr0_allowed = 0;
        env.cpu.set(Reg::Cpl, 0);
        assert_eq!(
            run(&mut env, &mut regs, Exit::Xsetbv),
            Action::Inject(Event::UD)
        );
    }

    #[test]
    fn vmx_instructions_ud_and_invd_skips() {
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs::default();
        let ud = run(
            &mut env,
            &mut regs,
            Exit::UndefinedInstruction { name: "VMREAD" },
        );
        assert_eq!(ud, Action::Inject(Event::UD));
        assert_eq!(run(&mut env, &mut regs, Exit::Invd), Action::AdvanceRip);
        assert_eq!(
            run(&mut env, &mut regs, Exit::Rdpmc),
            Action::Inject(Event::GP0)
        );
    }

    #[test]
    fn first_debug_register_access_hands_them_over_and_runs_again() {
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs {
            rip: 0x1000,
            instruction_len: 3,
            ..Default::default()
        };
        // The MOV runs again (RIP not advanced), natively this time.
        assert_eq!(
            run(&mut env, &mut regs, Exit::DebugRegister),
            Action::Resume
        );
        assert_eq!(env.cpu.get(Reg::DebugRegisters), 1);
        // A backend that cannot hand them over stops the VM with a report.
        env.cpu.fail = Some(Reg::DebugRegisters);
        assert!(matches!(
            run(&mut env, &mut regs, Exit::DebugRegister),
            Action::Stop(crate::vcpu::StopReason::StateAccessFailed {
                reg: Reg::DebugRegisters,
                rip: 0x1000
            })
        ));
    }
}
