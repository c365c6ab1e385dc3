//! Scheduling policy: one CPU's round-robin of the vCPUs pinned to it.
//!
//! Plain data, no time source of its own: the kernel passes `now` (host
//! ticks) in and programs the slice it gets out ([`Pick::slice`]) into the
//! preemption timer. Each physical CPU has a scheduler of its own (its
//! loop's, no lock). A vCPU's id is its slot, which is also its slot in the
//! CPU loop's table: the slot of a stopped vCPU is given to the next one
//! added.
//!
//! On every scheduling point:
//!
//! 1. [`Scheduler::pick`] goes round the slots from the one after the last
//!    pick (wrapping to the first slot not stopped) and starts the first
//!    vCPU that is runnable, or halted with a wake-up time that has passed. `None` means idle: the CPU halts until
//!    [`Scheduler::next_wake`] or an interrupt.
//! 2. The vCPU runs until an exit whose [`Action`](crate::exit::Action) ends its
//!    turn: `Preempted` → [`Scheduler::on_exit_slice_end`], `Yield` →
//!    [`Scheduler::on_yield`] (both leave it runnable, its next turn one
//!    round later), `Halt` → [`Scheduler::on_halt`] (skipped until
//!    [`Scheduler::wake`] or its deadline), `Stop` → [`Scheduler::stop`]
//!    (gone for good; the CPU's other vCPUs carry on).
//!
//! Fairness: every runnable vCPU is picked once per round, for a full slice
//! unless it gives the rest up. What a vCPU used is counted where users read
//! it, in its VM's statistics (`stats`): the scheduler keeps no second count.
//! A round is a walk over a handful of slots (a CPU's vCPUs): cheaper than
//! a queue's bookkeeping, and it is on every world switch.
//!
//! Misuse (unknown id, event for a vCPU that is not running) returns a
//! [`SchedError`] and changes nothing.

use alloc::vec::Vec;

/// A vCPU handle: its slot on its CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId(pub u32);

/// The scheduler's view of a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedState {
    /// In its CPU's run queue.
    Runnable,
    /// On its CPU.
    Running,
    /// Waiting for an interrupt, or until `wake_at`.
    Halted {
        /// Deadline, if any.
        wake_at: Option<u64>,
    },
    /// Never scheduled again.
    Stopped,
}

/// Scheduler misuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedError {
    /// No such vCPU.
    UnknownVcpu(VcpuId),
    /// The event needs a running vCPU.
    NotRunning(VcpuId),
    /// `wake` of a vCPU that is not halted.
    NotHalted(VcpuId),
    /// A slice of zero ticks.
    ZeroSlice,
}

#[derive(Clone, Debug)]
struct Entry {
    slice: u64,
    state: SchedState,
    /// From when `pick` may take it: 0 when runnable, the wake-up time when
    /// halted with one, else never (`u64::MAX`). Kept with `state` by
    /// [`Entry::set`], so that a pick tests each slot with one compare.
    due_at: u64,
}

impl Entry {
    fn new(slice: u64) -> Self {
        Entry {
            slice,
            state: SchedState::Runnable,
            due_at: 0,
        }
    }

    fn set(&mut self, state: SchedState) {
        self.state = state;
        self.due_at = match state {
            SchedState::Runnable => 0,
            SchedState::Halted { wake_at: Some(t) } => t,
            _ => u64::MAX,
        };
    }
}

/// What [`Scheduler::pick`] chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// The vCPU to run.
    pub id: VcpuId,
    /// Its slice (ticks), for the preemption timer.
    pub slice: u64,
}

/// One CPU's vCPUs and whose turn it is.
#[derive(Clone, Debug)]
pub struct Scheduler {
    slots: Vec<Entry>,
    /// The vCPU on the CPU, if any.
    running: Option<VcpuId>,
    /// Where the next round-robin walk starts (the slot after the last pick).
    next: usize,
    /// The first slot that is not stopped (0 when all are): a walk wraps
    /// round to it, so the stopped slots of VMs gone from the front of the
    /// table cost nothing per switch.
    first_live: usize,
    default_slice: u64,
}

impl Scheduler {
    /// No vCPUs yet; slices default to `default_slice` ticks.
    pub fn new(default_slice: u64) -> Result<Self, SchedError> {
        if default_slice == 0 {
            return Err(SchedError::ZeroSlice);
        }
        Ok(Scheduler {
            slots: Vec::new(),
            running: None,
            next: 0,
            first_live: 0,
            default_slice,
        })
    }

    /// Adds a runnable vCPU with the default slice.
    pub fn add_vcpu(&mut self) -> Result<VcpuId, SchedError> {
        self.add_vcpu_with_slice(self.default_slice)
    }

    /// Adds a runnable vCPU with its own slice length, in the first slot
    /// of a stopped one, else in a new slot.
    pub fn add_vcpu_with_slice(&mut self, slice: u64) -> Result<VcpuId, SchedError> {
        if slice == 0 {
            return Err(SchedError::ZeroSlice);
        }
        let entry = Entry::new(slice);
        let free = self
            .slots
            .iter()
            .position(|e| e.state == SchedState::Stopped);
        let slot = match free {
            Some(slot) => {
                self.slots[slot] = entry;
                slot
            }
            None => {
                self.slots.push(entry);
                self.slots.len() - 1
            }
        };
        self.find_first_live();
        Ok(VcpuId(slot as u32))
    }

    /// Keeps [`Self::first_live`] current after a slot started or stopped.
    fn find_first_live(&mut self) {
        self.first_live = self
            .slots
            .iter()
            .position(|e| e.state != SchedState::Stopped)
            .unwrap_or(0);
    }

    fn entry(&self, id: VcpuId) -> Result<&Entry, SchedError> {
        self.slots
            .get(id.0 as usize)
            .ok_or(SchedError::UnknownVcpu(id))
    }

    fn entry_mut(&mut self, id: VcpuId) -> Result<&mut Entry, SchedError> {
        self.slots
            .get_mut(id.0 as usize)
            .ok_or(SchedError::UnknownVcpu(id))
    }

    /// Slice length of `id`, for the preemption timer.
    pub fn slice_ticks(&self, id: VcpuId) -> Result<u64, SchedError> {
        Ok(self.entry(id)?.slice)
    }

    /// Scheduler state of `id`.
    pub fn state(&self, id: VcpuId) -> Result<SchedState, SchedError> {
        Ok(self.entry(id)?.state)
    }

    /// The vCPU running, if any.
    pub fn running(&self) -> Option<VcpuId> {
        self.running
    }

    /// Chooses what runs next at time `now`; `None` means idle. A vCPU
    /// still running is treated as having ended its slice.
    pub fn pick_next(&mut self, now: u64) -> Option<VcpuId> {
        self.pick(now).map(|p| p.id)
    }

    /// [`Self::pick_next`] with the chosen vCPU's slice.
    pub fn pick(&mut self, now: u64) -> Option<Pick> {
        if let Some(cur) = self.running {
            let _ = self.on_exit_slice_end(cur);
        }
        let n = self.slots.len();
        let mut slot = self.next;
        // Every slot that is not stopped lies in first_live..n: n steps
        // see each of them.
        for _ in 0..n {
            if slot >= n {
                slot = self.first_live;
            }
            let e = &mut self.slots[slot];
            if e.due_at <= now {
                e.set(SchedState::Running);
                let id = VcpuId(slot as u32);
                self.running = Some(id);
                self.next = slot + 1;
                return Some(Pick { id, slice: e.slice });
            }
            slot += 1;
        }
        None
    }

    /// Ends the running turn of `id` for state `next`.
    #[inline]
    fn end_turn(&mut self, id: VcpuId, next: SchedState) -> Result<(), SchedError> {
        let e = self
            .slots
            .get_mut(id.0 as usize)
            .ok_or(SchedError::UnknownVcpu(id))?;
        if e.state != SchedState::Running {
            return Err(SchedError::NotRunning(id));
        }
        e.set(next);
        // Only the running vCPU is in state Running.
        self.running = None;
        Ok(())
    }

    /// The slice of `id` is over (preemption timer): its next turn is a
    /// round later.
    pub fn on_exit_slice_end(&mut self, id: VcpuId) -> Result<(), SchedError> {
        self.end_turn(id, SchedState::Runnable)
    }

    /// `id` gives up the rest of its slice: its next turn is a round later.
    #[inline]
    pub fn on_yield(&mut self, id: VcpuId) -> Result<(), SchedError> {
        self.end_turn(id, SchedState::Runnable)
    }

    /// `id` halted; it runs again after [`Self::wake`] or at `wake_at`
    /// (host ticks).
    pub fn on_halt(&mut self, id: VcpuId, wake_at: Option<u64>) -> Result<(), SchedError> {
        self.end_turn(id, SchedState::Halted { wake_at })
    }

    /// An interrupt for halted `id`: runnable again (its turn comes in the
    /// current round).
    pub fn wake(&mut self, id: VcpuId) -> Result<(), SchedError> {
        let e = self.entry_mut(id)?;
        if !matches!(e.state, SchedState::Halted { .. }) {
            return Err(SchedError::NotHalted(id));
        }
        e.set(SchedState::Runnable);
        Ok(())
    }

    /// Removes `id` for good, whatever its state (its slot goes to the next
    /// vCPU added).
    pub fn stop(&mut self, id: VcpuId) -> Result<(), SchedError> {
        if self.entry(id)?.state == SchedState::Running {
            self.end_turn(id, SchedState::Stopped)?;
        } else {
            self.entry_mut(id)?.set(SchedState::Stopped);
        }
        self.find_first_live();
        Ok(())
    }

    /// Earliest wake deadline of a halted vCPU (when an idle CPU should
    /// look again).
    pub fn next_wake(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter_map(|e| match e.state {
                SchedState::Halted { wake_at } => wake_at,
                _ => None,
            })
            .min()
    }

    /// Whether every vCPU has stopped (the CPU is done).
    pub fn all_stopped(&self) -> bool {
        self.slots.iter().all(|e| e.state == SchedState::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLICE: u64 = 100;

    /// Runs for `rounds` full slices from `now`; returns the picks.
    fn run_slices(s: &mut Scheduler, now: u64, rounds: usize) -> Vec<u32> {
        let mut picks = Vec::new();
        for _ in 0..rounds {
            let id = s.pick_next(now).expect("runnable");
            picks.push(id.0);
            s.on_exit_slice_end(id).unwrap();
        }
        picks
    }

    #[test]
    fn stopped_slots_at_the_front_leave_the_round_until_reused() {
        let mut s = Scheduler::new(SLICE).unwrap();
        for _ in 0..4 {
            s.add_vcpu().unwrap();
        }
        s.stop(VcpuId(0)).unwrap();
        s.stop(VcpuId(2)).unwrap();
        assert_eq!(s.first_live, 1);
        assert_eq!(run_slices(&mut s, 0, 6), [1, 3, 1, 3, 1, 3]);
        // The running vCPU stops: the next live slot is the first.
        let id = s.pick_next(0).unwrap();
        assert_eq!(id, VcpuId(1));
        s.stop(id).unwrap();
        assert_eq!(s.first_live, 3);
        assert_eq!(run_slices(&mut s, 0, 3), [3, 3, 3]);
        // A vCPU added takes the first stopped slot, back in the round.
        assert_eq!(s.add_vcpu().unwrap(), VcpuId(0));
        assert_eq!(s.first_live, 0);
        assert_eq!(run_slices(&mut s, 0, 4), [0, 3, 0, 3]);
        // All stopped: nothing to pick.
        s.stop(VcpuId(0)).unwrap();
        s.stop(VcpuId(3)).unwrap();
        assert_eq!(s.first_live, 0);
        assert_eq!(s.pick_next(0), None);
    }

    #[test]
    fn three_vcpus_round_robin_equal_turns() {
        let mut s = Scheduler::new(SLICE).unwrap();
        for _ in 0..3 {
            s.add_vcpu().unwrap();
        }
        let picks = run_slices(&mut s, 0, 30);
        assert_eq!(&picks[..6], &[0, 1, 2, 0, 1, 2]);
        for v in 0..3 {
            assert_eq!(picks.iter().filter(|&&p| p == v).count(), 10);
        }
    }

    #[test]
    fn pick_gives_the_slice() {
        let mut s = Scheduler::new(SLICE).unwrap();
        let a = s.add_vcpu_with_slice(30).unwrap();
        let b = s.add_vcpu().unwrap();
        assert_eq!(s.pick(0), Some(Pick { id: a, slice: 30 }));
        assert_eq!(
            s.pick(30),
            Some(Pick {
                id: b,
                slice: SLICE
            })
        );
        assert_eq!(s.slice_ticks(a), Ok(30));
        assert_eq!(s.running(), Some(b));
        assert_eq!(s.state(a), Ok(SchedState::Runnable));
        assert_eq!(s.state(b), Ok(SchedState::Running));
    }

    #[test]
    fn yield_gives_up_slice() {
        let mut s = Scheduler::new(SLICE).unwrap();
        let a = s.add_vcpu().unwrap();
        let b = s.add_vcpu().unwrap();
        assert_eq!(s.pick_next(0), Some(a));
        s.on_yield(a).unwrap();
        assert_eq!(s.running(), None);
        assert_eq!(s.pick_next(10), Some(b));
        s.on_exit_slice_end(b).unwrap();
        assert_eq!(s.pick_next(110), Some(a));
        assert_eq!(s.on_yield(b), Err(SchedError::NotRunning(b)));
    }

    /// A lone vCPU that yields runs again at once.
    #[test]
    fn lone_vcpu_picked_again_after_yield() {
        let mut s = Scheduler::new(SLICE).unwrap();
        let a = s.add_vcpu().unwrap();
        for t in 0..3 {
            assert_eq!(s.pick_next(t), Some(a));
            s.on_yield(a).unwrap();
        }
    }

    #[test]
    fn stopped_vcpu_never_picked_again() {
        let mut s = Scheduler::new(SLICE).unwrap();
        let a = s.add_vcpu().unwrap();
        let b = s.add_vcpu().unwrap();
        let c = s.add_vcpu().unwrap();
        assert_eq!(s.pick_next(0), Some(a));
        s.stop(a).unwrap(); // stopped while running
        assert_eq!(s.running(), None);
        s.stop(c).unwrap(); // stopped while runnable
        assert_eq!(run_slices(&mut s, 50, 5), [1, 1, 1, 1, 1]);
        assert_eq!(s.state(c), Ok(SchedState::Stopped));
        assert_eq!(s.wake(c), Err(SchedError::NotHalted(c)));
        s.stop(b).unwrap();
        assert!(s.all_stopped());
        assert_eq!(s.pick_next(50), None);
    }

    /// A stopped vCPU's slot goes to the next one added; the others keep
    /// theirs.
    #[test]
    fn stopped_slot_reused() {
        let mut s = Scheduler::new(SLICE).unwrap();
        let a = s.add_vcpu().unwrap();
        let b = s.add_vcpu().unwrap();
        assert_eq!(s.pick_next(0), Some(a));
        s.stop(a).unwrap();
        let c = s.add_vcpu_with_slice(7).unwrap();
        assert_eq!(c, a);
        assert_eq!(s.state(c), Ok(SchedState::Runnable));
        assert_eq!(s.slice_ticks(c), Ok(7));
        assert_eq!(s.add_vcpu().unwrap(), VcpuId(2));
        assert_eq!(s.pick_next(10), Some(b));
        assert_eq!(s.state(VcpuId(9)), Err(SchedError::UnknownVcpu(VcpuId(9))));
        assert_eq!(Scheduler::new(0).unwrap_err(), SchedError::ZeroSlice);
        assert_eq!(s.add_vcpu_with_slice(0), Err(SchedError::ZeroSlice));
    }

    #[test]
    fn halted_vcpu_woken_by_deadline_and_idle_when_all_halted() {
        let mut s = Scheduler::new(SLICE).unwrap();
        let a = s.add_vcpu().unwrap();
        let b = s.add_vcpu().unwrap();
        assert_eq!(s.pick_next(0), Some(a));
        s.on_halt(a, Some(1000)).unwrap();
        assert_eq!(s.pick_next(5), Some(b));
        s.on_halt(b, None).unwrap();
        assert_eq!(s.pick_next(20), None, "idle");
        assert_eq!(s.next_wake(), Some(1000));
        assert_eq!(s.pick_next(999), None);
        assert_eq!(s.pick_next(1000), Some(a));
        s.on_halt(a, Some(5000)).unwrap();
        // An interrupt wakes b before its (absent) deadline.
        s.wake(b).unwrap();
        assert_eq!(s.pick_next(1002), Some(b));
        assert_eq!(s.wake(b), Err(SchedError::NotHalted(b)));
    }

    /// Halted vCPUs are skipped without delaying the others' turns, and a
    /// woken one takes its turn in the round it is woken in.
    #[test]
    fn halted_skipped_woken_in_turn() {
        let mut s = Scheduler::new(SLICE).unwrap();
        let ids: Vec<_> = (0..3).map(|_| s.add_vcpu().unwrap()).collect();
        assert_eq!(s.pick_next(0), Some(ids[0]));
        s.on_halt(ids[0], None).unwrap();
        assert_eq!(run_slices(&mut s, 1, 4), [1, 2, 1, 2]);
        s.wake(ids[0]).unwrap();
        assert_eq!(run_slices(&mut s, 1, 3), [0, 1, 2]);
    }

    #[test]
    fn vm_pinned_to_cpu1_sees_cpu1_apic_id() {
        use crate::exit::testenv::FakePlatform;
        use crate::exit::{handle_exit, Exit, GuestRegs};
        use crate::vcpu::VmContext;
        let apic_ids = [0u32, 6];
        // CPU 1's scheduler runs the VM's vCPU; its exits see CPU 1.
        let mut cpu1 = Scheduler::new(SLICE).unwrap();
        let v = cpu1.add_vcpu().unwrap();
        assert_eq!(cpu1.pick_next(0), Some(v));
        let mut env = FakePlatform::new();
        env.apic_id = apic_ids[1];
        let mut vm = VmContext::new(v.0, "pinned");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut regs = GuestRegs {
            rax: 1,
            ..Default::default()
        };
        handle_exit(&mut vm, &mut vcpu, &Exit::Cpuid, &mut regs, &mut env);
        assert_eq!(regs.rbx >> 24, 6);
    }
}
