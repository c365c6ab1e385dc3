//! Per-VM counters and a readable report.
//!
//! [`crate::exit::handle_exit`] counts every exit by [`ExitKind`], unclaimed
//! port accesses, hypercalls and injected events; the kernel adds slices run
//! and guest time ([`VmStats::record_slice`]) and prints
//! [`VmStats::report`] when a VM stops or on demand.

use core::fmt;

use crate::arch::Exit;

/// Exit categories, one counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ExitKind {
    Cpuid,
    Hlt,
    Io,
    Rdmsr,
    Wrmsr,
    Vmcall,
    MemoryViolation,
    TripleFault,
    ExternalInterrupt,
    InterruptWindow,
    PreemptionTimer,
    Exception,
    EntryFailed,
    Unhandled,
    CrAccess,
    Xsetbv,
    UndefinedInstruction,
    Invd,
    Rdpmc,
    DebugRegister,
}

impl ExitKind {
    /// Number of kinds.
    pub const COUNT: usize = 20;
    /// All kinds, in counter order.
    pub const ALL: [ExitKind; Self::COUNT] = [
        ExitKind::Cpuid,
        ExitKind::Hlt,
        ExitKind::Io,
        ExitKind::Rdmsr,
        ExitKind::Wrmsr,
        ExitKind::Vmcall,
        ExitKind::MemoryViolation,
        ExitKind::TripleFault,
        ExitKind::ExternalInterrupt,
        ExitKind::InterruptWindow,
        ExitKind::PreemptionTimer,
        ExitKind::Exception,
        ExitKind::EntryFailed,
        ExitKind::Unhandled,
        ExitKind::CrAccess,
        ExitKind::Xsetbv,
        ExitKind::UndefinedInstruction,
        ExitKind::Invd,
        ExitKind::Rdpmc,
        ExitKind::DebugRegister,
    ];

    /// The kind of `exit`.
    #[inline]
    pub fn of(exit: &Exit) -> Self {
        match exit {
            Exit::Cpuid => ExitKind::Cpuid,
            Exit::Hlt => ExitKind::Hlt,
            Exit::Io(_) => ExitKind::Io,
            Exit::Rdmsr { .. } => ExitKind::Rdmsr,
            Exit::Wrmsr { .. } => ExitKind::Wrmsr,
            Exit::Vmcall => ExitKind::Vmcall,
            Exit::MemoryViolation { .. } => ExitKind::MemoryViolation,
            Exit::TripleFault => ExitKind::TripleFault,
            Exit::ExternalInterrupt => ExitKind::ExternalInterrupt,
            Exit::InterruptWindow => ExitKind::InterruptWindow,
            Exit::PreemptionTimer => ExitKind::PreemptionTimer,
            Exit::Exception { .. } => ExitKind::Exception,
            Exit::EntryFailed { .. } => ExitKind::EntryFailed,
            Exit::Unhandled { .. } => ExitKind::Unhandled,
            Exit::CrAccess(_) => ExitKind::CrAccess,
            Exit::Xsetbv => ExitKind::Xsetbv,
            Exit::UndefinedInstruction { .. } => ExitKind::UndefinedInstruction,
            Exit::Invd => ExitKind::Invd,
            Exit::Rdpmc => ExitKind::Rdpmc,
            Exit::DebugRegister => ExitKind::DebugRegister,
        }
    }

    /// Counter index (position in [`Self::ALL`]).
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::Cpuid => "cpuid",
            ExitKind::Hlt => "hlt",
            ExitKind::Io => "io",
            ExitKind::Rdmsr => "rdmsr",
            ExitKind::Wrmsr => "wrmsr",
            ExitKind::Vmcall => "vmcall",
            ExitKind::MemoryViolation => "memory-violation",
            ExitKind::TripleFault => "triple-fault",
            ExitKind::ExternalInterrupt => "external-interrupt",
            ExitKind::InterruptWindow => "interrupt-window",
            ExitKind::PreemptionTimer => "preemption-timer",
            ExitKind::Exception => "exception",
            ExitKind::EntryFailed => "entry-failed",
            ExitKind::Unhandled => "unhandled",
            ExitKind::CrAccess => "cr-access",
            ExitKind::Xsetbv => "xsetbv",
            ExitKind::UndefinedInstruction => "undefined-instruction",
            ExitKind::Invd => "invd",
            ExitKind::Rdpmc => "rdpmc",
            ExitKind::DebugRegister => "debug-register",
        }
    }
}

// `ExitCounts::seen` has a bit per kind.
const _: () = assert!(ExitKind::COUNT <= 32);

/// Exits one vCPU handled without its VM's lock, per kind, and its slices,
/// until the kernel adds them to the VM's counters ([`VmStats::absorb`]:
/// the kernel does at the end of a slice, at most every millisecond, and
/// when the vCPU is released).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitCounts {
    exits: [u64; ExitKind::COUNT],
    /// Bit n: kind n was counted since the last [`VmStats::absorb`].
    seen: u32,
    /// Port reads no device claims ([`VmStats::unhandled_port_reads`]).
    pub unclaimed_reads: u64,
    /// Port writes no device claims ([`VmStats::unhandled_port_writes`]).
    pub unclaimed_writes: u64,
    /// Slices run ([`VmStats::slices_run`]).
    slices: u64,
    /// Host ticks in the guest ([`VmStats::guest_ticks`]).
    guest_ticks: u64,
}

impl ExitCounts {
    /// Counts one exit.
    #[inline(always)]
    pub fn record(&mut self, kind: ExitKind) {
        // A u64 of exits does not wrap in centuries; the kind's index is in
        // range by construction (ALL has COUNT entries).
        if let Some(c) = self.exits.get_mut(kind.index()) {
            *c = c.wrapping_add(1);
            self.seen |= 1 << kind.index();
        }
    }

    /// Counts a slice that ran `ticks` host ticks in the guest.
    #[inline]
    pub fn record_slice(&mut self, ticks: u64) {
        self.slices = self.slices.wrapping_add(1);
        self.guest_ticks = self.guest_ticks.wrapping_add(ticks);
    }
}

/// Counters of one VM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmStats {
    exits: [u64; ExitKind::COUNT],
    /// Port reads no device claimed (answered with all ones).
    pub unhandled_port_reads: u64,
    /// Port writes no device claimed (dropped).
    pub unhandled_port_writes: u64,
    /// Events injected into the guest (faults and interrupts).
    pub injected_events: u64,
    /// Time slices the VM ran.
    pub slices_run: u64,
    /// Host ticks spent in the guest.
    pub guest_ticks: u64,
    /// Times the VM was restarted after a reset (`on_reboot = "restart"`).
    pub restarts: u64,
}

impl VmStats {
    /// Counts one exit.
    #[inline]
    pub fn record_exit(&mut self, kind: ExitKind) {
        if let Some(c) = self.exits.get_mut(kind.index()) {
            *c = c.saturating_add(1);
        }
    }

    /// Exits of `kind` so far.
    pub fn exits(&self, kind: ExitKind) -> u64 {
        self.exits.get(kind.index()).copied().unwrap_or(0)
    }

    /// Hypercalls issued (every VMCALL/VMMCALL exit is one).
    pub fn hypercalls(&self) -> u64 {
        self.exits(ExitKind::Vmcall)
    }

    /// All exits so far.
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// Adds a vCPU's counts and clears them.
    pub fn absorb(&mut self, counts: &mut ExitCounts) {
        // Counts of u64 do not wrap in centuries (as in `ExitCounts::record`).
        self.unhandled_port_reads = self
            .unhandled_port_reads
            .wrapping_add(core::mem::take(&mut counts.unclaimed_reads));
        self.unhandled_port_writes = self
            .unhandled_port_writes
            .wrapping_add(core::mem::take(&mut counts.unclaimed_writes));
        self.slices_run = self
            .slices_run
            .wrapping_add(core::mem::take(&mut counts.slices));
        self.guest_ticks = self
            .guest_ticks
            .wrapping_add(core::mem::take(&mut counts.guest_ticks));
        let mut seen = core::mem::take(&mut counts.seen);
        while seen != 0 {
            let i = seen.trailing_zeros() as usize;
            seen &= seen - 1;
            if let (Some(total), Some(n)) = (self.exits.get_mut(i), counts.exits.get_mut(i)) {
                *total = total.wrapping_add(core::mem::take(n));
            }
        }
    }

    /// Counts a slice that ran `ticks` host ticks in the guest.
    pub fn record_slice(&mut self, ticks: u64) {
        self.slices_run = self.slices_run.saturating_add(1);
        self.guest_ticks = self.guest_ticks.saturating_add(ticks);
    }

    /// A multi-line table for the console, titled with `vm_name`. Exit kinds
    /// that never happened are left out.
    pub fn report<'a>(&'a self, vm_name: &'a str) -> StatsReport<'a> {
        StatsReport {
            stats: self,
            vm_name,
        }
    }
}

/// Display adapter returned by [`VmStats::report`].
pub struct StatsReport<'a> {
    stats: &'a VmStats,
    vm_name: &'a str,
}

impl fmt::Display for StatsReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.stats;
        writeln!(f, "stats for vm {}:", self.vm_name)?;
        writeln!(f, "  {:<22} {:>12}", "exits (total)", s.total_exits())?;
        for kind in ExitKind::ALL {
            let n = s.exits(kind);
            if n != 0 {
                writeln!(f, "    {:<20} {:>12}", kind.name(), n)?;
            }
        }
        writeln!(f, "  {:<22} {:>12}", "hypercalls", s.hypercalls())?;
        writeln!(f, "  {:<22} {:>12}", "injected events", s.injected_events)?;
        writeln!(
            f,
            "  {:<22} {:>12}",
            "unclaimed port reads", s.unhandled_port_reads
        )?;
        writeln!(
            f,
            "  {:<22} {:>12}",
            "unclaimed port writes", s.unhandled_port_writes
        )?;
        writeln!(f, "  {:<22} {:>12}", "slices run", s.slices_run)?;
        if s.restarts != 0 {
            writeln!(f, "  {:<22} {:>12}", "restarts", s.restarts)?;
        }
        write!(f, "  {:<22} {:>12}", "guest ticks", s.guest_ticks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_indexed_in_order() {
        for (i, k) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }

    /// A vCPU's counts, slices included, move into the VM's at once and
    /// only once.
    #[test]
    fn absorb_moves_the_vcpu_counts() {
        let mut vm = VmStats::default();
        vm.record_slice(10);
        let mut v = ExitCounts::default();
        v.record(ExitKind::Cpuid);
        v.record(ExitKind::Cpuid);
        v.record_slice(250);
        v.record_slice(50);
        v.unclaimed_writes = 3;
        vm.absorb(&mut v);
        assert_eq!(v, ExitCounts::default(), "cleared");
        vm.absorb(&mut v);
        assert_eq!(vm.exits(ExitKind::Cpuid), 2);
        assert_eq!((vm.slices_run, vm.guest_ticks), (3, 310));
        assert_eq!(vm.unhandled_port_writes, 3);
    }

    #[test]
    fn report_table() {
        let mut s = VmStats::default();
        s.record_exit(ExitKind::Io);
        s.record_exit(ExitKind::Io);
        s.record_exit(ExitKind::Cpuid);
        s.record_slice(250);
        s.record_slice(50);
        s.unhandled_port_writes = 4;
        let text = alloc::format!("{}", s.report("web"));
        assert!(text.starts_with("stats for vm web:\n"), "{text}");
        assert!(
            text.contains("exits (total)                     3"),
            "{text}"
        );
        assert!(
            text.contains("    io                              2"),
            "{text}"
        );
        assert!(!text.contains("hlt"), "{text}");
        assert!(
            text.contains("unclaimed port writes             4"),
            "{text}"
        );
        assert!(
            text.contains("slices run                        2"),
            "{text}"
        );
        assert!(
            text.ends_with("guest ticks                     300"),
            "{text}"
        );
    }
}
