//! Per-CPU data, reached through the GS base register (IA32_GS_BASE holds a
//! pointer to this CPU's [`PerCpu`]).

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use x86_64::registers::model_specific::GsBase;
use x86_64::VirtAddr;

/// Most CPUs the hypervisor drives.
pub const MAX_CPUS: usize = 16;

/// What each CPU keeps about itself.
pub struct PerCpu {
    /// Index in boot order (0 = the boot CPU).
    pub index: u32,
    /// Local APIC ID.
    pub apic_id: u32,
    /// LAPIC timer interrupts seen.
    pub timer_ticks: AtomicU64,
    /// Breakpoints reported (the #BP test counts them).
    pub breakpoints: AtomicU32,
}

/// Installs this CPU's per-CPU data. Called once per CPU at bring-up.
pub fn install(index: u32, apic_id: u32) -> &'static PerCpu {
    let data: &'static PerCpu = Box::leak(Box::new(PerCpu {
        index,
        apic_id,
        timer_ticks: AtomicU64::new(0),
        breakpoints: AtomicU32::new(0),
    }));
    GsBase::write(VirtAddr::from_ptr(data));
    data
}

/// This CPU's data, if installed.
pub fn try_current() -> Option<&'static PerCpu> {
    let ptr = GsBase::read().as_ptr::<PerCpu>();
    if ptr.is_null() {
        return None;
    }
    // SAFETY: GS base is only ever set by `install`, to a leaked (so 'static)
    // PerCpu; null means not installed yet.
    Some(unsafe { &*ptr })
}

/// This CPU's index (0 before per-CPU data exists).
pub fn cpu_index() -> u32 {
    try_current().map(|c| c.index).unwrap_or(0)
}

/// Counts a breakpoint on this CPU.
pub fn count_breakpoint() {
    if let Some(c) = try_current() {
        c.breakpoints.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a timer interrupt on this CPU.
pub fn on_timer_tick() {
    if let Some(c) = try_current() {
        c.timer_ticks.fetch_add(1, Ordering::Relaxed);
    }
}
