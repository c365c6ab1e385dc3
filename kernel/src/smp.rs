//! Application processors: start-up and per-CPU state.

use crate::arch::gdt::PerCpuTables;

static BSP_TABLES: spin::Once<&'static PerCpuTables> = spin::Once::new();

/// Remembers the boot CPU's descriptor tables.
pub fn register_bsp_tables(tables: &'static PerCpuTables) {
    BSP_TABLES.call_once(|| tables);
}

/// Stops every other CPU (used on the way out).
pub fn stop_other_cpus() {}
