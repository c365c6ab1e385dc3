//! Scheduling policy: per-CPU round-robin of pinned vCPUs.
//!
//! Plain data, no time source of its own: the kernel passes `now` (host ticks)
//! in and programs the slice it gets out ([`Scheduler::slice_ticks`]) into the
//! preemption timer. Each physical CPU has its own run queue of the vCPUs
//! pinned to it; the kernel on CPU *n* only ever calls [`Scheduler::pick_next`]
//! for *n*. (Shared between CPUs, the scheduler sits behind the kernel's lock.)
//!
//! Per CPU, on every scheduling point:
//!
//! 1. [`Scheduler::pick_next`] wakes halted vCPUs whose deadline has passed
//!    (appending them to the queue, earliest deadline first) and starts the
//!    vCPU at the head of the queue. `None` means idle: the CPU halts until
//!    [`Scheduler::next_wake`] or an interrupt.
//! 2. The vCPU runs until an exit whose [`Action`](crate::exit::Action) ends its
//!    turn: `Preempted` → [`Scheduler::on_exit_slice_end`], `Yield` →
//!    [`Scheduler::on_yield`] (both requeue it at the tail), `Halt` →
//!    [`Scheduler::on_halt`] (off the queue until [`Scheduler::wake`] or its
//!    deadline), `Stop` → [`Scheduler::stop`] (gone for good; the CPU's other
//!    vCPUs carry on).
//!
//! Fairness: every runnable vCPU is picked once per round, for a full slice
//! unless it gives the rest up. CPU time and slices are accounted per vCPU.
//!
//! Misuse (unknown id, event for a vCPU that is not running) returns a
//! [`SchedError`] and changes nothing.

use alloc::vec::Vec;

/// A vCPU handle (index in the scheduler).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId(pub u32);

/// The scheduler's view of a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedState {
    /// In its CPU's run queue.
    Runnable,
    /// On its CPU since `since`.
    Running {
        /// Start of the current slice.
        since: u64,
    },
    /// Waiting for an interrupt, or until `wake_at`.
    Halted {
        /// Deadline, if any.
        wake_at: Option<u64>,
    },
    /// Never scheduled again.
    Stopped,
}

/// Per-vCPU accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuAccount {
    /// Slices started.
    pub slices: u64,
    /// Ticks spent running.
    pub cpu_ticks: u64,
    /// Slices given up early with yield.
    pub yields: u64,
    /// Slices ended by HLT.
    pub halts: u64,
}

/// Scheduler misuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedError {
    /// No such physical CPU.
    UnknownCpu(usize),
    /// No such vCPU.
    UnknownVcpu(VcpuId),
    /// The event needs a running vCPU.
    NotRunning(VcpuId),
    /// `wake` of a vCPU that is not halted.
    NotHalted(VcpuId),
    /// A slice of zero ticks.
    ZeroSlice,
}

/// A halted vCPU with a wake-up time ([`CpuQueue::sleepers`]).
fn is_sleeper(state: SchedState) -> bool {
    matches!(state, SchedState::Halted { wake_at: Some(_) })
}

#[derive(Clone, Debug)]
struct Entry {
    cpu: usize,
    slice: u64,
    state: SchedState,
    account: VcpuAccount,
}

/// A CPU's runnable vCPUs in order: a ring over as many slots as the CPU
/// has vCPUs. A vCPU is queued at most once (it enters from running,
/// halted or new, and leaves to run), so the ring never overflows and a
/// push or pop is a few instructions (it is on every world switch).
#[derive(Clone, Debug, Default)]
struct RunQueue {
    slots: Vec<VcpuId>,
    head: usize,
    len: usize,
}

impl RunQueue {
    /// Room for one more vCPU of this CPU (before its first push).
    fn grow(&mut self) {
        let mut slots: Vec<VcpuId> = self.iter().collect();
        slots.resize(self.slots.len() + 1, VcpuId(u32::MAX));
        *self = RunQueue {
            slots,
            head: 0,
            len: self.len,
        };
    }

    fn push_back(&mut self, id: VcpuId) {
        let cap = self.slots.len();
        assert!(self.len < cap, "run queue overflow: {id:?} queued twice");
        let mut tail = self.head + self.len;
        if tail >= cap {
            tail -= cap;
        }
        self.slots[tail] = id;
        self.len += 1;
    }

    fn pop_front(&mut self) -> Option<VcpuId> {
        if self.len == 0 {
            return None;
        }
        let id = self.slots[self.head];
        self.head += 1;
        if self.head == self.slots.len() {
            self.head = 0;
        }
        self.len -= 1;
        Some(id)
    }

    fn iter(&self) -> impl Iterator<Item = VcpuId> + '_ {
        let cap = self.slots.len();
        (0..self.len).map(move |i| self.slots[(self.head + i) % cap])
    }

    /// Drops `id` from the queue, keeping the others' order.
    fn remove(&mut self, id: VcpuId) {
        let mut kept: Vec<VcpuId> = self.iter().filter(|&v| v != id).collect();
        self.len = kept.len();
        self.head = 0;
        kept.resize(self.slots.len(), VcpuId(u32::MAX));
        self.slots = kept;
    }
}

#[derive(Clone, Debug, Default)]
struct CpuQueue {
    ready: RunQueue,
    running: Option<VcpuId>,
    /// Halted vCPUs with a wake-up time: while none, no scheduling point
    /// looks for expired ones.
    sleepers: usize,
}

/// What [`Scheduler::pick`] chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// The vCPU to run.
    pub id: VcpuId,
    /// Its slice (ticks), for the preemption timer.
    pub slice: u64,
}

/// Run queues of all physical CPUs.
#[derive(Clone, Debug)]
pub struct Scheduler {
    cpus: Vec<CpuQueue>,
    vcpus: Vec<Entry>,
    default_slice: u64,
}

impl Scheduler {
    /// `num_cpus` empty run queues; slices default to `default_slice` ticks.
    pub fn new(num_cpus: usize, default_slice: u64) -> Result<Self, SchedError> {
        if default_slice == 0 {
            return Err(SchedError::ZeroSlice);
        }
        Ok(Scheduler {
            cpus: (0..num_cpus).map(|_| CpuQueue::default()).collect(),
            vcpus: Vec::new(),
            default_slice,
        })
    }

    /// Adds a runnable vCPU pinned to `cpu` with the default slice.
    pub fn add_vcpu(&mut self, cpu: usize) -> Result<VcpuId, SchedError> {
        self.add_vcpu_with_slice(cpu, self.default_slice)
    }

    /// Adds a runnable vCPU pinned to `cpu` with its own slice length.
    pub fn add_vcpu_with_slice(&mut self, cpu: usize, slice: u64) -> Result<VcpuId, SchedError> {
        if slice == 0 {
            return Err(SchedError::ZeroSlice);
        }
        let id = VcpuId(u32::try_from(self.vcpus.len()).map_err(|_| SchedError::UnknownCpu(cpu))?);
        let queue = self.cpus.get_mut(cpu).ok_or(SchedError::UnknownCpu(cpu))?;
        queue.ready.grow();
        queue.ready.push_back(id);
        self.vcpus.push(Entry {
            cpu,
            slice,
            state: SchedState::Runnable,
            account: VcpuAccount::default(),
        });
        Ok(id)
    }

    fn entry(&self, id: VcpuId) -> Result<&Entry, SchedError> {
        self.vcpus
            .get(id.0 as usize)
            .ok_or(SchedError::UnknownVcpu(id))
    }

    fn entry_mut(&mut self, id: VcpuId) -> Result<&mut Entry, SchedError> {
        self.vcpus
            .get_mut(id.0 as usize)
            .ok_or(SchedError::UnknownVcpu(id))
    }

    /// The CPU `id` is pinned to.
    pub fn cpu_of(&self, id: VcpuId) -> Result<usize, SchedError> {
        Ok(self.entry(id)?.cpu)
    }

    /// Slice length of `id`, for the preemption timer.
    pub fn slice_ticks(&self, id: VcpuId) -> Result<u64, SchedError> {
        Ok(self.entry(id)?.slice)
    }

    /// Scheduler state of `id`.
    pub fn state(&self, id: VcpuId) -> Result<SchedState, SchedError> {
        Ok(self.entry(id)?.state)
    }

    /// Accounting of `id`.
    pub fn account(&self, id: VcpuId) -> Result<VcpuAccount, SchedError> {
        Ok(self.entry(id)?.account)
    }

    /// The vCPU running on `cpu`, if any.
    pub fn running(&self, cpu: usize) -> Option<VcpuId> {
        self.cpus.get(cpu)?.running
    }

    /// Chooses what `cpu` runs next at time `now`; `None` means idle. A vCPU
    /// still running on `cpu` is treated as having ended its slice.
    pub fn pick_next(&mut self, cpu: usize, now: u64) -> Option<VcpuId> {
        self.pick(cpu, now).map(|p| p.id)
    }

    /// [`Self::pick_next`] with the chosen vCPU's slice (one lookup: this is
    /// on every world switch).
    pub fn pick(&mut self, cpu: usize, now: u64) -> Option<Pick> {
        let queue = self.cpus.get(cpu)?;
        if let Some(cur) = queue.running {
            let _ = self.on_exit_slice_end(cur, now);
        }
        self.wake_expired(cpu, now);
        let queue = &mut self.cpus[cpu];
        let id = queue.ready.pop_front()?;
        queue.running = Some(id);
        // Queued ids are the scheduler's own (`add_vcpu_with_slice`).
        let e = &mut self.vcpus[id.0 as usize];
        e.state = SchedState::Running { since: now };
        e.account.slices += 1;
        Some(Pick { id, slice: e.slice })
    }

    fn wake_expired(&mut self, cpu: usize, now: u64) {
        if self.cpus.get(cpu).is_some_and(|q| q.sleepers == 0) {
            return;
        }
        let mut due: Vec<(u64, VcpuId)> = self
            .vcpus
            .iter()
            .enumerate()
            .filter(|(_, e)| e.cpu == cpu)
            .filter_map(|(i, e)| match e.state {
                SchedState::Halted { wake_at: Some(t) } if t <= now => Some((t, VcpuId(i as u32))),
                _ => None,
            })
            .collect();
        due.sort_unstable();
        for (_, id) in due {
            let _ = self.wake(id);
        }
    }

    /// Ends the running turn of `id`: accounts its time; returns its CPU.
    fn end_turn(&mut self, id: VcpuId, now: u64, next: SchedState) -> Result<usize, SchedError> {
        let e = self.entry_mut(id)?;
        let SchedState::Running { since } = e.state else {
            return Err(SchedError::NotRunning(id));
        };
        e.account.cpu_ticks = e
            .account
            .cpu_ticks
            .saturating_add(now.saturating_sub(since));
        e.state = next;
        let cpu = e.cpu;
        if let Some(queue) = self.cpus.get_mut(cpu) {
            if queue.running == Some(id) {
                queue.running = None;
            }
            queue.sleepers += usize::from(is_sleeper(next));
        }
        Ok(cpu)
    }

    /// `id` leaves state `from` for one that is no sleeper.
    fn leave(&mut self, cpu: usize, from: SchedState) {
        if let Some(queue) = self.cpus.get_mut(cpu) {
            queue.sleepers -= usize::from(is_sleeper(from));
        }
    }

    fn requeue(&mut self, cpu: usize, id: VcpuId) {
        if let Some(queue) = self.cpus.get_mut(cpu) {
            queue.ready.push_back(id);
        }
    }

    /// The slice of `id` is over (preemption timer): to the tail of the queue.
    pub fn on_exit_slice_end(&mut self, id: VcpuId, now: u64) -> Result<(), SchedError> {
        self.requeue_running(id, now, false)
    }

    /// `id` gives up the rest of its slice: to the tail of the queue.
    pub fn on_yield(&mut self, id: VcpuId, now: u64) -> Result<(), SchedError> {
        self.requeue_running(id, now, true)
    }

    /// Running `id`'s turn ends and it queues again (one lookup: this is
    /// on every world switch).
    #[inline]
    fn requeue_running(&mut self, id: VcpuId, now: u64, yielded: bool) -> Result<(), SchedError> {
        let e = self
            .vcpus
            .get_mut(id.0 as usize)
            .ok_or(SchedError::UnknownVcpu(id))?;
        let SchedState::Running { since } = e.state else {
            return Err(SchedError::NotRunning(id));
        };
        e.account.cpu_ticks = e
            .account
            .cpu_ticks
            .saturating_add(now.saturating_sub(since));
        e.account.yields += u64::from(yielded);
        e.state = SchedState::Runnable;
        // A vCPU's CPU was checked when it was added.
        let queue = &mut self.cpus[e.cpu];
        if queue.running == Some(id) {
            queue.running = None;
        }
        queue.ready.push_back(id);
        Ok(())
    }

    /// `id` halted; it runs again after [`Self::wake`] or at `wake_at`.
    pub fn on_halt(
        &mut self,
        id: VcpuId,
        now: u64,
        wake_at: Option<u64>,
    ) -> Result<(), SchedError> {
        self.end_turn(id, now, SchedState::Halted { wake_at })?;
        if let Ok(e) = self.entry_mut(id) {
            e.account.halts += 1;
        }
        Ok(())
    }

    /// An interrupt for halted `id`: back to the tail of its queue.
    pub fn wake(&mut self, id: VcpuId) -> Result<(), SchedError> {
        let e = self.entry_mut(id)?;
        let from = e.state;
        if !matches!(from, SchedState::Halted { .. }) {
            return Err(SchedError::NotHalted(id));
        }
        e.state = SchedState::Runnable;
        let cpu = e.cpu;
        self.leave(cpu, from);
        self.requeue(cpu, id);
        Ok(())
    }

    /// Removes `id` for good, whatever its state; `now` closes its accounting
    /// if it was running.
    pub fn stop(&mut self, id: VcpuId, now: u64) -> Result<(), SchedError> {
        if matches!(self.entry(id)?.state, SchedState::Running { .. }) {
            self.end_turn(id, now, SchedState::Stopped)?;
        }
        let e = self.entry_mut(id)?;
        let from = e.state;
        e.state = SchedState::Stopped;
        let cpu = e.cpu;
        self.leave(cpu, from);
        if let Some(queue) = self.cpus.get_mut(cpu) {
            queue.ready.remove(id);
            if queue.running == Some(id) {
                queue.running = None;
            }
        }
        Ok(())
    }

    /// Earliest wake deadline of a halted vCPU on `cpu` (when an idle CPU
    /// should look again).
    pub fn next_wake(&self, cpu: usize) -> Option<u64> {
        self.vcpus
            .iter()
            .filter(|e| e.cpu == cpu)
            .filter_map(|e| match e.state {
                SchedState::Halted { wake_at } => wake_at,
                _ => None,
            })
            .min()
    }

    /// Whether every vCPU on `cpu` has stopped (the CPU is done).
    pub fn all_stopped(&self, cpu: usize) -> bool {
        self.vcpus
            .iter()
            .filter(|e| e.cpu == cpu)
            .all(|e| e.state == SchedState::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLICE: u64 = 100;

    /// Runs `cpu` for `rounds` full slices; returns the picks.
    fn run_slices(s: &mut Scheduler, cpu: usize, now: &mut u64, rounds: usize) -> Vec<u32> {
        let mut picks = Vec::new();
        for _ in 0..rounds {
            let id = s.pick_next(cpu, *now).expect("runnable");
            picks.push(id.0);
            *now += SLICE;
            s.on_exit_slice_end(id, *now).unwrap();
        }
        picks
    }

    #[test]
    fn three_vcpus_round_robin_equal_slices() {
        let mut s = Scheduler::new(1, SLICE).unwrap();
        let ids: Vec<_> = (0..3).map(|_| s.add_vcpu(0).unwrap()).collect();
        let mut now = 0;
        let picks = run_slices(&mut s, 0, &mut now, 30);
        assert_eq!(&picks[..6], &[0, 1, 2, 0, 1, 2]);
        for id in ids {
            let a = s.account(id).unwrap();
            assert_eq!((a.slices, a.cpu_ticks), (10, 10 * SLICE));
        }
    }

    /// The ring keeps FIFO order across wrap-around, growth with its head
    /// moved, and removal from the middle.
    #[test]
    fn run_queue_ring_keeps_order() {
        let ids = |q: &RunQueue| q.iter().map(|v| v.0).collect::<Vec<_>>();
        let mut q = RunQueue::default();
        for i in 0..3 {
            q.grow();
            q.push_back(VcpuId(i));
        }
        for round in 0..7 {
            let v = q.pop_front().unwrap();
            assert_eq!(v.0, round % 3);
            q.push_back(v);
        }
        assert_eq!(ids(&q), [1, 2, 0]);
        q.grow();
        q.push_back(VcpuId(3));
        assert_eq!(ids(&q), [1, 2, 0, 3]);
        q.remove(VcpuId(2));
        assert_eq!(ids(&q), [1, 0, 3]);
        q.push_back(VcpuId(2));
        assert_eq!(ids(&q), [1, 0, 3, 2]);
        let drained: Vec<_> = core::iter::from_fn(|| q.pop_front()).map(|v| v.0).collect();
        assert_eq!(drained, [1, 0, 3, 2]);
    }

    #[test]
    #[should_panic(expected = "queued twice")]
    fn run_queue_refuses_a_second_copy() {
        let mut q = RunQueue::default();
        q.grow();
        q.push_back(VcpuId(0));
        q.push_back(VcpuId(0));
    }

    #[test]
    fn pick_gives_the_slice() {
        let mut s = Scheduler::new(1, SLICE).unwrap();
        let a = s.add_vcpu_with_slice(0, 30).unwrap();
        assert_eq!(s.pick(0, 0), Some(Pick { id: a, slice: 30 }));
    }

    #[test]
    fn yield_gives_up_slice() {
        let mut s = Scheduler::new(1, SLICE).unwrap();
        let a = s.add_vcpu(0).unwrap();
        let b = s.add_vcpu(0).unwrap();
        assert_eq!(s.pick_next(0, 0), Some(a));
        s.on_yield(a, 10).unwrap();
        assert_eq!(s.pick_next(0, 10), Some(b));
        s.on_exit_slice_end(b, 110).unwrap();
        assert_eq!(s.pick_next(0, 110), Some(a));
        let acc = s.account(a).unwrap();
        assert_eq!((acc.slices, acc.cpu_ticks, acc.yields), (2, 10, 1));
        assert_eq!(s.on_yield(b, 120), Err(SchedError::NotRunning(b)));
    }

    #[test]
    fn stopped_vcpu_never_picked_again() {
        let mut s = Scheduler::new(1, SLICE).unwrap();
        let a = s.add_vcpu(0).unwrap();
        let b = s.add_vcpu(0).unwrap();
        let c = s.add_vcpu(0).unwrap();
        assert_eq!(s.pick_next(0, 0), Some(a));
        s.stop(a, 50).unwrap(); // stopped while running
        s.stop(c, 50).unwrap(); // stopped while queued
        let mut now = 50;
        assert_eq!(run_slices(&mut s, 0, &mut now, 5), [1, 1, 1, 1, 1]);
        assert_eq!(s.account(a).unwrap().cpu_ticks, 50);
        assert_eq!(s.state(c), Ok(SchedState::Stopped));
        assert_eq!(s.wake(c), Err(SchedError::NotHalted(c)));
        s.stop(b, now).unwrap();
        assert!(s.all_stopped(0));
        assert_eq!(s.pick_next(0, now), None);
    }

    /// The count of timed sleepers that lets a scheduling point skip the
    /// search for expired ones follows every way in and out of a timed halt.
    #[test]
    fn sleepers_counted_through_halt_wake_and_stop() {
        let mut s = Scheduler::new(1, SLICE).unwrap();
        let ids: Vec<_> = (0..3).map(|_| s.add_vcpu(0).unwrap()).collect();
        let sleepers = |s: &Scheduler| s.cpus[0].sleepers;
        let counted = |s: &Scheduler| s.vcpus.iter().filter(|e| is_sleeper(e.state)).count();
        let mut now = 0;
        for round in 0..40u64 {
            let Some(id) = s.pick_next(0, now) else {
                now = s.next_wake(0).unwrap_or(now + 1);
                for &v in &ids {
                    let _ = s.wake(v); // an interrupt for whoever halted
                }
                continue;
            };
            now += 7;
            match round % 5 {
                0 => s.on_halt(id, now, Some(now + 30)).unwrap(),
                1 => s.on_halt(id, now, None).unwrap(),
                2 => s.on_yield(id, now).unwrap(),
                _ => s.on_exit_slice_end(id, now).unwrap(),
            }
            if round == 17 {
                let halted = ids.iter().find(|&&v| is_sleeper(s.state(v).unwrap()));
                if let Some(&v) = halted {
                    s.stop(v, now).unwrap();
                }
            }
            assert_eq!(sleepers(&s), counted(&s), "round {round}");
        }
    }

    #[test]
    fn halted_vcpu_woken_by_deadline_and_idle_when_all_halted() {
        let mut s = Scheduler::new(1, SLICE).unwrap();
        let a = s.add_vcpu(0).unwrap();
        let b = s.add_vcpu(0).unwrap();
        assert_eq!(s.pick_next(0, 0), Some(a));
        s.on_halt(a, 5, Some(1000)).unwrap();
        assert_eq!(s.pick_next(0, 5), Some(b));
        s.on_halt(b, 20, None).unwrap();
        assert_eq!(s.pick_next(0, 20), None, "idle");
        assert_eq!(s.next_wake(0), Some(1000));
        assert_eq!(s.pick_next(0, 999), None);
        assert_eq!(s.pick_next(0, 1000), Some(a));
        s.on_halt(a, 1001, Some(5000)).unwrap();
        // An interrupt wakes b before its (absent) deadline.
        s.wake(b).unwrap();
        assert_eq!(s.pick_next(0, 1002), Some(b));
        assert_eq!(s.account(a).unwrap().halts, 2);
    }

    #[test]
    fn per_cpu_queues_are_independent() {
        let mut s = Scheduler::new(2, SLICE).unwrap();
        let a = s.add_vcpu(0).unwrap();
        let b = s.add_vcpu(1).unwrap();
        let c = s.add_vcpu_with_slice(1, 30).unwrap();
        assert_eq!(s.add_vcpu(2), Err(SchedError::UnknownCpu(2)));
        assert_eq!(s.pick_next(0, 0), Some(a));
        assert_eq!(s.pick_next(1, 0), Some(b));
        assert_eq!(s.cpu_of(c), Ok(1));
        assert_eq!(s.slice_ticks(c), Ok(30));
        s.stop(b, 10).unwrap();
        assert_eq!(s.pick_next(1, 10), Some(c));
        // CPU 0 is unaffected; pick_next with a running vCPU requeues it.
        assert_eq!(s.pick_next(0, 100), Some(a));
        assert_eq!(s.account(a).unwrap().slices, 2);
        assert_eq!(s.running(0), Some(a));
        assert_eq!(s.pick_next(5, 0), None);
        assert_eq!(s.state(VcpuId(9)), Err(SchedError::UnknownVcpu(VcpuId(9))));
        assert_eq!(Scheduler::new(1, 0).unwrap_err(), SchedError::ZeroSlice);
    }

    #[test]
    fn vm_pinned_to_cpu1_sees_cpu1_apic_id() {
        use crate::exit::testenv::FakePlatform;
        use crate::exit::{handle_exit, Exit, GuestRegs};
        use crate::vcpu::VmContext;
        let apic_ids = [0u32, 6];
        let mut s = Scheduler::new(2, SLICE).unwrap();
        s.add_vcpu(0).unwrap();
        let v = s.add_vcpu(1).unwrap();
        assert_eq!(s.pick_next(1, 0), Some(v));
        let mut env = FakePlatform::new();
        env.apic_id = apic_ids[s.cpu_of(v).unwrap()];
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
