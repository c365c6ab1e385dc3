//! Application processors: start-up and per-CPU state.

use crate::arch::gdt::PerCpuTables;

static BSP_TABLES: spin::Once<&'static PerCpuTables> = spin::Once::new();

/// Remembers the boot CPU's descriptor tables.
pub fn register_bsp_tables(tables: &'static PerCpuTables) {
    BSP_TABLES.call_once(|| tables);
}

/// Stops every other CPU (used on the way out).
pub fn stop_other_cpus() {}

/// CPUs running (the boot CPU only until APs are started).
pub fn online_cpus() -> u32 {
    1
}

/// APIC ID of a CPU by index.
pub fn apic_id_of(cpu: u32) -> Option<u32> {
    (cpu == 0).then(|| crate::percpu::try_current().map(|p| p.apic_id).unwrap_or(0))
}

/// The calling CPU's descriptor tables.
pub fn tables_of_current_cpu() -> &'static PerCpuTables {
    BSP_TABLES.get().expect("boot CPU tables registered at boot")
}

/// Whether the machine is shutting down (CPUs should leave their guests).
pub fn stopping() -> bool {
    false
}
