//! What the state tests of both backends share: a [`LazyRegs`] in memory
//! and the hand-over of the debug registers as [`GuestCpu`] shows it.

use hvcore::arch::{GuestCpu, Reg};

use crate::vtx::state::LazyRegs;

/// MSR values, and whether the vCPU holds its debug registers.
#[derive(Default)]
pub struct Msrs(pub alloc::vec::Vec<(u32, u64)>, pub bool);

impl LazyRegs for Msrs {
    fn read(&mut self, msr: u32) -> u64 {
        self.0
            .iter()
            .find(|(m, _)| *m == msr)
            .map_or(0, |(_, v)| *v)
    }
    fn write(&mut self, msr: u32, value: u64) {
        self.0.retain(|(m, _)| *m != msr);
        self.0.push((msr, value));
    }
    fn debug_owned(&self) -> bool {
        self.1
    }
    fn take_debug_registers(&mut self) {
        self.1 = true;
    }
}

/// A vCPU that does not hold its debug registers takes them with a write
/// of 1, and cannot give them back.
pub fn hand_over_debug_registers(cpu: &mut dyn GuestCpu) {
    assert_eq!(cpu.read(Reg::DebugRegisters), Ok(0));
    cpu.write(Reg::DebugRegisters, 1).unwrap();
    assert_eq!(cpu.read(Reg::DebugRegisters), Ok(1));
    assert!(cpu.write(Reg::DebugRegisters, 0).is_err());
}
