//! Port I/O exits: routed through the VM's [`IoBus`](crate::devices::IoBus).
//!
//! `IN` results are merged into RAX as hardware does (8/16-bit accesses keep the
//! rest of RAX, a 32-bit access zero-extends). Device effects are applied here:
//! output bytes go to the VM's console line buffer (flushed line by line to
//! [`Platform::console_write`]), IRQ line changes go to
//! [`VmContext::set_irq_level`]. Accesses no device claims read as all ones and
//! are counted in the VM's stats; writes to them are dropped and counted.
//!
//! Time is read only when it matters: a device that counts time is brought
//! to the present before the access, and every such device once a deadline
//! has passed (so an access sees every IRQ edge that is due, as if the
//! devices ran continuously); other accesses read no clock.
//!
//! String and `REP` port I/O (`INS`/`OUTS`) is not emulated (it needs guest
//! linear-address translation); the VM is stopped with
//! [`StopReason::UnsupportedIo`].

use super::{AccessSize, Action, GuestRegs, IoAccess, IoDir, Platform};
use crate::devices::Effects;
use crate::stats::ExitCounts;
use crate::vcpu::{StopReason, VmContext};

/// Handles one port access.
#[inline]
pub fn handle<P: Platform>(
    vm: &mut VmContext,
    access: &IoAccess,
    regs: &mut GuestRegs,
    env: &mut P,
) -> Action {
    if access.string_or_rep {
        return Action::Stop(StopReason::UnsupportedIo {
            port: access.port,
            rip: regs.rip,
        });
    }
    let Some(device) = vm.bus.find(access.port) else {
        match access.dir {
            IoDir::In => {
                vm.stats.unhandled_port_reads += 1;
                merge_in_result(regs, access.size, access.size.mask());
            }
            IoDir::Out { .. } => vm.stats.unhandled_port_writes += 1,
        }
        return Action::AdvanceRip;
    };
    let traits = vm.bus.traits(device);
    let mut fx = Effects::new();
    let mut advanced_all = false;
    if traits.counts_time || vm.next_deadline_ns().is_some() {
        let now = env.now_ns();
        if vm.next_deadline_ns().is_some_and(|due| now >= due) {
            // Every device to the present: IRQ edges that are due come first.
            crate::devices::pc::advance(&mut vm.bus, now, &mut fx);
            advanced_all = true;
        } else if traits.counts_time {
            vm.bus.advance_at(device, now, &mut fx);
        }
    }
    match access.dir {
        IoDir::In => {
            let value = vm.bus.read_at(device, access.port, access.size, &mut fx);
            merge_in_result(regs, access.size, value);
        }
        IoDir::Out { value } => {
            vm.bus.write_at(
                device,
                access.port,
                access.size,
                value & access.size.mask(),
                &mut fx,
            );
            vm.device_written(device);
        }
    }
    // A device that counts time may have been reprogrammed.
    if advanced_all {
        vm.refresh_deadline();
    } else if traits.counts_time {
        vm.device_deadline_changed(device);
    }
    if traits.interrupt_controller {
        vm.pic_changed();
    }
    vm.apply_effects(&fx, env);
    if let Some(source) = fx.reset_requested() {
        return Action::Stop(StopReason::ResetRequested {
            source: source.name(),
            rip: regs.rip,
        });
    }
    Action::AdvanceRip
}

/// An access to a port no device claims, as a vCPU answers it alone
/// ([`super::handle_vcpu_exit`]): a read gives all ones, a write is
/// dropped; both are counted in `counts`.
#[inline(always)]
pub fn unclaimed(access: &IoAccess, regs: &mut GuestRegs, counts: &mut ExitCounts) {
    match access.dir {
        IoDir::In => {
            counts.unclaimed_reads += 1;
            merge_in_result(regs, access.size, access.size.mask());
        }
        IoDir::Out { .. } => counts.unclaimed_writes += 1,
    }
}

/// Writes an `IN` result into AL/AX/EAX.
pub fn merge_in_result(regs: &mut GuestRegs, size: AccessSize, value: u32) {
    regs.rax = match size {
        AccessSize::Byte => (regs.rax & !0xFF) | u64::from(value & 0xFF),
        AccessSize::Word => (regs.rax & !0xFFFF) | u64::from(value & 0xFFFF),
        AccessSize::Dword => u64::from(value),
    };
}

#[cfg(test)]
mod tests {
    use super::super::testenv::FakePlatform;
    use super::super::*;
    use crate::vcpu::{StopReason, VmContext};

    fn out(port: u16, value: u32) -> Exit {
        Exit::Io(IoAccess {
            port,
            size: AccessSize::Byte,
            dir: IoDir::Out { value },
            string_or_rep: false,
        })
    }

    fn inp(port: u16, size: AccessSize) -> Exit {
        Exit::Io(IoAccess {
            port,
            size,
            dir: IoDir::In,
            string_or_rep: false,
        })
    }

    #[test]
    fn uart_output_reaches_console_prefixed() {
        let mut vm = VmContext::new(3, "hello");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs::default();
        for b in b"hi there\nsecond" {
            let a = handle_exit(
                &mut vm,
                &mut vcpu,
                &out(0x3F8, u32::from(*b)),
                &mut regs,
                &mut env,
            );
            assert_eq!(a, Action::AdvanceRip);
        }
        assert_eq!(env.lines, ["[hello] hi there"]);
        vm.flush_console(&mut env);
        assert_eq!(env.lines, ["[hello] hi there", "[hello] second"]);
    }

    /// A joined vCPU keeps UART bytes that are only output and hands them
    /// to the console, in order, before its next exit that reaches the VM;
    /// once the guest sets DLAB, THR writes go to the model again.
    #[test]
    fn direct_uart_output_keeps_its_order() {
        let mut vm = VmContext::new(3, "d");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        vcpu.join(&vm, 1);
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs::default();
        for b in b"one\ntw" {
            let exit = out(0x3F8, u32::from(*b));
            let next = crate::exit::handle_vcpu_exit(&mut vcpu, &exit, &mut regs);
            assert_eq!(next, Some(Next::AdvanceRip));
        }
        assert!(env.lines.is_empty(), "kept by the vCPU");
        assert_eq!(vcpu.console_tx.pending(), b"one\ntw");
        // A word write is not a THR byte: the model takes it.
        let word = Exit::Io(IoAccess {
            port: 0x3F8,
            size: AccessSize::Word,
            dir: IoDir::Out {
                value: u32::from(b'o'),
            },
            string_or_rep: false,
        });
        assert_eq!(
            crate::exit::handle_vcpu_exit(&mut vcpu, &word, &mut regs),
            None
        );
        handle_exit(&mut vm, &mut vcpu, &word, &mut regs, &mut env);
        assert_eq!(env.lines, ["[d] one"]);
        assert!(vcpu.console_tx.pending().is_empty() && vcpu.console_tx.is_empty());
        handle_exit(&mut vm, &mut vcpu, &out(0x3FB, 0x83), &mut regs, &mut env); // DLAB
        assert_eq!(
            crate::exit::handle_vcpu_exit(&mut vcpu, &out(0x3F8, 1), &mut regs),
            None
        );
        handle_exit(&mut vm, &mut vcpu, &out(0x3F8, 1), &mut regs, &mut env); // DLL
        handle_exit(&mut vm, &mut vcpu, &out(0x3FB, 0x03), &mut regs, &mut env);
        for b in b"!\n" {
            let exit = out(0x3F8, u32::from(*b));
            assert!(crate::exit::handle_vcpu_exit(&mut vcpu, &exit, &mut regs).is_some());
        }
        vcpu.drain_console(&mut vm, &mut env);
        assert_eq!(env.lines, ["[d] one", "[d] two!"]);
        assert_eq!(vm.stats.total_exits(), 4, "the model's exits");
        vm.stats.absorb(&mut vcpu.exits);
        assert_eq!(vm.stats.total_exits(), 12);
        // Kept bytes of a VM that stopped meanwhile (its last line flushed
        // then) are not left in its line buffer.
        for b in b"late" {
            let exit = out(0x3F8, u32::from(*b));
            assert!(crate::exit::handle_vcpu_exit(&mut vcpu, &exit, &mut regs).is_some());
        }
        vm.stop(StopReason::HostStop, &mut env);
        vcpu.drain_console(&mut vm, &mut env);
        assert_eq!(env.lines.last().map(String::as_str), Some("[d] late"));
    }

    /// The vCPUs of a VM with several keep no UART bytes: their output
    /// goes through the model in the order it happens.
    #[test]
    fn no_direct_uart_output_with_several_vcpus() {
        let vm = VmContext::new(3, "d");
        let mut vcpu = crate::vcpu::VcpuState::new(1);
        vcpu.join(&vm, 2);
        let mut regs = GuestRegs::default();
        let exit = out(0x3F8, u32::from(b'x'));
        assert_eq!(
            crate::exit::handle_vcpu_exit(&mut vcpu, &exit, &mut regs),
            None
        );
        assert!(vcpu.console_tx.pending().is_empty());
    }

    #[test]
    fn unknown_port_reads_all_ones_and_is_counted() {
        let mut vm = VmContext::new(3, "g");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs {
            rax: 0x1122_3344_5566_7788,
            ..Default::default()
        };
        handle_exit(
            &mut vm,
            &mut vcpu,
            &inp(0x1234, AccessSize::Byte),
            &mut regs,
            &mut env,
        );
        assert_eq!(regs.rax, 0x1122_3344_5566_77FF);
        handle_exit(
            &mut vm,
            &mut vcpu,
            &inp(0x1234, AccessSize::Word),
            &mut regs,
            &mut env,
        );
        assert_eq!(regs.rax, 0x1122_3344_5566_FFFF);
        handle_exit(
            &mut vm,
            &mut vcpu,
            &inp(0x1234, AccessSize::Dword),
            &mut regs,
            &mut env,
        );
        assert_eq!(regs.rax, 0xFFFF_FFFF);
        handle_exit(&mut vm, &mut vcpu, &out(0x80, 0x42), &mut regs, &mut env);
        handle_exit(&mut vm, &mut vcpu, &out(0x80, 0x43), &mut regs, &mut env);
        assert_eq!(vm.stats.unhandled_port_reads, 3);
        assert_eq!(vm.stats.unhandled_port_writes, 2);
        assert!(env.lines.is_empty());
    }

    #[test]
    fn uart_scratch_read_back_through_exit() {
        let mut vm = VmContext::new(3, "g");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs::default();
        handle_exit(&mut vm, &mut vcpu, &out(0x3FF, 0x5A), &mut regs, &mut env);
        handle_exit(
            &mut vm,
            &mut vcpu,
            &inp(0x3FF, AccessSize::Byte),
            &mut regs,
            &mut env,
        );
        assert_eq!(regs.rax, 0x5A);
        // LSR: THRE | TEMT.
        handle_exit(
            &mut vm,
            &mut vcpu,
            &inp(0x3FD, AccessSize::Byte),
            &mut regs,
            &mut env,
        );
        assert_eq!(regs.rax & 0x60, 0x60);
    }

    #[test]
    fn string_io_stops_vm() {
        let mut vm = VmContext::new(3, "g");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs {
            rip: 0x99,
            ..Default::default()
        };
        let exit = Exit::Io(IoAccess {
            port: 0x3F8,
            size: AccessSize::Byte,
            dir: IoDir::In,
            string_or_rep: true,
        });
        let a = handle_exit(&mut vm, &mut vcpu, &exit, &mut regs, &mut env);
        assert_eq!(
            a,
            Action::Stop(StopReason::UnsupportedIo {
                port: 0x3F8,
                rip: 0x99
            })
        );
    }

    #[test]
    fn uart_irq_reaches_vm_irq_lines() {
        let mut vm = VmContext::new(3, "g");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs::default();
        handle_exit(&mut vm, &mut vcpu, &out(0x3FC, 0x08), &mut regs, &mut env); // MCR.OUT2
        assert!(!vm.irq_level(4));
        handle_exit(&mut vm, &mut vcpu, &out(0x3F9, 0x02), &mut regs, &mut env); // IER.ETBEI
        assert!(vm.irq_level(4));
        handle_exit(
            &mut vm,
            &mut vcpu,
            &inp(0x3FA, AccessSize::Byte),
            &mut regs,
            &mut env,
        ); // IIR read clears THRE
        assert_eq!(regs.rax & 0xF, 0x2);
        assert!(!vm.irq_level(4));
    }

    /// With the VM's port map, the vCPU answers an unclaimed port alone:
    /// the same answer, counted once its counts reach the VM.
    #[test]
    fn unclaimed_ports_answered_by_the_vcpu() {
        let mut vm = VmContext::new(1, "io");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        vcpu.join(&vm, 1);
        let mut env = FakePlatform::new();
        let mut regs = GuestRegs {
            rax: 0x1234_5600,
            ..Default::default()
        };
        let exit = inp(0xE9, AccessSize::Word);
        assert_eq!(
            crate::exit::handle_vcpu_exit(&mut vcpu, &exit, &mut regs),
            Some(Next::AdvanceRip)
        );
        assert_eq!(regs.rax, 0x1234_FFFF);
        handle_exit(&mut vm, &mut vcpu, &out(0xE9, 7), &mut regs, &mut env);
        assert_eq!(vm.stats.unhandled_port_writes, 0, "not yet absorbed");
        vm.stats.absorb(&mut vcpu.exits);
        assert_eq!(
            (
                vm.stats.unhandled_port_reads,
                vm.stats.unhandled_port_writes
            ),
            (1, 1)
        );
        // A claimed port still goes to its device.
        let exit = inp(0x3FD, AccessSize::Byte);
        assert_eq!(
            crate::exit::handle_vcpu_exit(&mut vcpu, &exit, &mut regs),
            None
        );
    }
}
