//! The hypervisor's side of the hypercall ABI. Numbers, status codes and
//! limits come from the `hvabi` crate, which the guests and the tests share;
//! this module decodes requests and carries them out.
//!
//! A guest issues `VMCALL` (Intel) or `VMMCALL` (AMD) with:
//!
//! | register | meaning |
//! |----------|---------|
//! | RAX | hypercall number (in); return code (out) |
//! | RBX, RCX, RDX, RSI | arguments 1-4 (in) |
//! | RBX | extra result (out, where listed) |
//!
//! Return codes in RAX (two's complement `i64`): [`OK`] = 0,
//! [`ENOSYS`] = -1 (unknown hypercall), [`EINVAL`] = -2 (invalid argument),
//! [`EFAULT`] = -3 (bad guest address). Registers not listed are preserved.
//!
//! | nr | name | arguments | result | then |
//! |----|------|-----------|--------|------|
//! | 0 | [`VERSION`] | — | RBX = [`HYPERCALL_VERSION`] | continue |
//! | 1 | [`CONSOLE_WRITE`] | RBX = guest-physical address, RCX = length (≤ [`CONSOLE_WRITE_MAX`]) | — | continue |
//! | 2 | [`YIELD`] | — | — | give up the rest of the time slice |
//! | 3 | [`VM_ID`] | — | RBX = VM id | continue |
//! | 4 | [`SHUTDOWN`] | RBX = exit code | — | VM stops (`StopReason::Shutdown`) |
//! | 5 | [`REPORT`] | RBX = key, RCX = value | — | host prints `report KEY=VALUE` |
//!
//! `CONSOLE_WRITE` bytes join the VM's console stream (the same line buffer as
//! its UART): lines appear on the host console, prefixed with the VM name, at
//! each `'\n'` or every 256 bytes. The whole range is read through
//! [`GuestMemory`](crate::exit::GuestMemory) before anything is printed; a range
//! outside the VM's RAM returns -3 and prints nothing. `REPORT` prints key and
//! value in decimal (`vm NAME: report 3=1500` after the kernel's prefix), for
//! test guests' counters and benchmark figures.
//!
//! RIP: every hypercall returns [`Action::AdvanceRip`], [`Action::Yield`] (both
//! skip the VMCALL) or [`Action::Stop`]. Hypercalls are not restricted to guest
//! CPL 0: every request only affects the calling VM.

use alloc::vec;

use crate::arch::{Action, GuestRegs, Next, Platform};
use crate::vcpu::{StopReason, VmContext};

/// Version of this interface, also in CPUID leaf 0x4000_0001 EAX.
pub const HYPERCALL_VERSION: u32 = hvabi::INTERFACE_VERSION;

pub use hvabi::nr::{CONSOLE_WRITE, REPORT, SHUTDOWN, VERSION, VM_ID, YIELD};
pub use hvabi::status::{EFAULT, EINVAL, ENOSYS, OK};
pub use hvabi::CONSOLE_WRITE_MAX;

/// A decoded hypercall request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// [`VERSION`].
    Version,
    /// [`CONSOLE_WRITE`].
    ConsoleWrite {
        /// Guest-physical address of the bytes.
        gpa: u64,
        /// Number of bytes.
        len: u64,
    },
    /// [`YIELD`].
    Yield,
    /// [`VM_ID`].
    VmId,
    /// [`SHUTDOWN`].
    Shutdown {
        /// Exit code.
        code: u64,
    },
    /// [`REPORT`].
    Report {
        /// Key.
        key: u64,
        /// Value.
        value: u64,
    },
    /// Any other number.
    Unknown(u64),
}

impl Hypercall {
    /// Decodes the request in `regs`.
    pub fn decode(regs: &GuestRegs) -> Self {
        match regs.rax {
            VERSION => Hypercall::Version,
            CONSOLE_WRITE => Hypercall::ConsoleWrite {
                gpa: regs.rbx,
                len: regs.rcx,
            },
            YIELD => Hypercall::Yield,
            VM_ID => Hypercall::VmId,
            SHUTDOWN => Hypercall::Shutdown { code: regs.rbx },
            REPORT => Hypercall::Report {
                key: regs.rbx,
                value: regs.rcx,
            },
            n => Hypercall::Unknown(n),
        }
    }
}

fn ret(regs: &mut GuestRegs, code: i64) {
    regs.rax = code as u64;
}

/// Whether the request in `regs` concerns the calling vCPU alone
/// ([`handle_vcpu_local`] answers it, without the VM).
#[inline(always)]
pub fn is_vcpu_local(regs: &GuestRegs) -> bool {
    matches!(
        Hypercall::decode(regs),
        Hypercall::Version | Hypercall::Yield | Hypercall::Unknown(_)
    )
}

/// Handles a request for which [`is_vcpu_local`] holds.
#[inline(always)]
pub fn handle_vcpu_local(regs: &mut GuestRegs) -> Next {
    match Hypercall::decode(regs) {
        Hypercall::Version => {
            ret(regs, OK);
            regs.rbx = u64::from(HYPERCALL_VERSION);
        }
        Hypercall::Yield => {
            ret(regs, OK);
            return Next::Yield;
        }
        _ => ret(regs, ENOSYS),
    }
    Next::AdvanceRip
}

/// Handles a VMCALL exit.
#[inline]
pub fn handle<P: Platform>(vm: &mut VmContext, regs: &mut GuestRegs, env: &mut P) -> Action {
    match Hypercall::decode(regs) {
        Hypercall::Version | Hypercall::Yield | Hypercall::Unknown(_) => {
            return match handle_vcpu_local(regs) {
                Next::Yield => Action::Yield,
                _ => Action::AdvanceRip,
            };
        }
        Hypercall::ConsoleWrite { gpa, len } => {
            let code = console_write(vm, gpa, len, env);
            ret(regs, code);
        }
        Hypercall::VmId => {
            ret(regs, OK);
            regs.rbx = u64::from(vm.id());
        }
        Hypercall::Shutdown { code } => {
            ret(regs, OK);
            return Action::Stop(StopReason::Shutdown { code });
        }
        Hypercall::Report { key, value } => {
            let line = alloc::format!("report {key}={value}");
            env.console_write(vm.name(), &line);
            ret(regs, OK);
        }
    }
    Action::AdvanceRip
}

fn console_write(vm: &mut VmContext, gpa: u64, len: u64, env: &mut dyn Platform) -> i64 {
    if len > CONSOLE_WRITE_MAX {
        return EINVAL;
    }
    if gpa.checked_add(len).is_none() {
        return EFAULT;
    }
    // len <= 4096, so the conversion and allocation are bounded.
    let Ok(len) = usize::try_from(len) else {
        return EINVAL;
    };
    let mut buf = vec![0u8; len];
    if env.guest_memory().read(gpa, &mut buf).is_err() {
        return EFAULT;
    }
    for b in buf {
        vm.console_byte(b, env);
    }
    OK
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::testenv::FakePlatform;
    use crate::exit::{handle_exit, Exit};

    fn call(
        vm: &mut VmContext,
        env: &mut FakePlatform,
        rax: u64,
        rbx: u64,
        rcx: u64,
    ) -> (Action, GuestRegs) {
        let mut regs = GuestRegs {
            rax,
            rbx,
            rcx,
            rdx: 0xD,
            rsi: 0x51,
            rip: 0x1000,
            instruction_len: 3,
            ..Default::default()
        };
        let a = handle_exit(
            vm,
            &mut crate::vcpu::VcpuState::new(0),
            &Exit::Vmcall,
            &mut regs,
            env,
        );
        (a, regs)
    }

    #[test]
    fn console_write_produces_prefixed_line() {
        let mut vm = VmContext::new(2, "guest-a");
        let mut env = FakePlatform::new();
        let msg = b"hello from guest\nrest";
        env.mem.data[0x10..0x10 + msg.len()].copy_from_slice(msg);
        let (a, regs) = call(&mut vm, &mut env, CONSOLE_WRITE, 0x1010, msg.len() as u64);
        assert_eq!(a, Action::AdvanceRip);
        assert_eq!(regs.rax, 0);
        assert_eq!(regs.rdx, 0xD, "unlisted registers preserved");
        assert_eq!(env.lines, ["[guest-a] hello from guest"]);
        // A stop flushes the partial line.
        let (a, _) = call(&mut vm, &mut env, SHUTDOWN, 7, 0);
        assert_eq!(a, Action::Stop(StopReason::Shutdown { code: 7 }));
        assert_eq!(env.lines, ["[guest-a] hello from guest", "[guest-a] rest"]);
        assert_eq!(vm.stop_reason(), Some(&StopReason::Shutdown { code: 7 }));
    }

    #[test]
    fn console_write_bad_address_and_length() {
        let mut vm = VmContext::new(2, "g");
        let mut env = FakePlatform::new();
        let (a, regs) = call(&mut vm, &mut env, CONSOLE_WRITE, 0x10_0000, 4);
        assert_eq!(a, Action::AdvanceRip);
        assert_eq!(regs.rax as i64, EFAULT);
        // Straddles the end of RAM: nothing printed.
        let (_, regs) = call(&mut vm, &mut env, CONSOLE_WRITE, 0x2FFE, 4);
        assert_eq!(regs.rax as i64, EFAULT);
        let (_, regs) = call(&mut vm, &mut env, CONSOLE_WRITE, u64::MAX, 2);
        assert_eq!(regs.rax as i64, EFAULT);
        let (_, regs) = call(&mut vm, &mut env, CONSOLE_WRITE, 0x1000, 4097);
        assert_eq!(regs.rax as i64, EINVAL);
        let (_, regs) = call(&mut vm, &mut env, CONSOLE_WRITE, 0x1000, 0);
        assert_eq!(regs.rax, 0);
        assert!(env.lines.is_empty());
    }

    #[test]
    fn version_id_yield_report_unknown() {
        let mut vm = VmContext::new(9, "vm9");
        let mut env = FakePlatform::new();
        let (a, regs) = call(&mut vm, &mut env, VERSION, 0, 0);
        assert_eq!(
            (a, regs.rax, regs.rbx),
            (Action::AdvanceRip, 0, u64::from(HYPERCALL_VERSION))
        );
        let (_, regs) = call(&mut vm, &mut env, VM_ID, 0, 0);
        assert_eq!(regs.rbx, 9);
        let (a, regs) = call(&mut vm, &mut env, YIELD, 0, 0);
        assert_eq!((a, regs.rax), (Action::Yield, 0));
        let (_, _) = call(&mut vm, &mut env, REPORT, 3, 1500);
        assert_eq!(env.lines, ["[vm9] report 3=1500"]);
        let (a, regs) = call(&mut vm, &mut env, 0xFFFF, 1, 2);
        assert_eq!(
            (a, regs.rax as i64, regs.rbx),
            (Action::AdvanceRip, ENOSYS, 1)
        );
    }

    /// Every hypercall counts, whether the vCPU answered it alone (counted
    /// in the vCPU until its counts are absorbed) or the VM did.
    #[test]
    fn hypercalls_are_counted_either_way() {
        let mut vm = VmContext::new(9, "vm9");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        for nr in [VERSION, VM_ID, 0xFFFF, REPORT] {
            let mut regs = GuestRegs {
                rax: nr,
                ..Default::default()
            };
            handle_exit(&mut vm, &mut vcpu, &Exit::Vmcall, &mut regs, &mut env);
        }
        assert_eq!(vm.stats.hypercalls(), 2, "VM_ID and REPORT");
        vm.stats.absorb(&mut vcpu.exits);
        assert_eq!(vm.stats.hypercalls(), 4);
    }
}
