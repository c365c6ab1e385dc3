//! The machine as ACPI describes it (CPUs, IOAPICs, interrupt overrides, PM
//! timer, power-off), printed at boot. A broken or missing table is reported
//! and the kernel carries on with what it has.

use drivers::acpi::{MachineInfo, PowerOffInfo};

/// What the kernel learned about the machine.
pub struct Machine {
    /// The ACPI summary (empty when there were no usable tables).
    pub info: MachineInfo,
}

impl Machine {
    /// APIC IDs of the enabled CPUs, boot CPU first.
    pub fn enabled_cpus(&self) -> alloc::vec::Vec<u32> {
        let mut ids: alloc::vec::Vec<u32> = self
            .info
            .cpus
            .iter()
            .filter(|c| c.enabled && c.is_bsp)
            .map(|c| c.apic_id)
            .collect();
        ids.extend(
            self.info
                .cpus
                .iter()
                .filter(|c| c.enabled && !c.is_bsp)
                .map(|c| c.apic_id),
        );
        ids
    }
}

static POWER_OFF: spin::Once<PowerOffInfo> = spin::Once::new();

/// Parses the ACPI tables found from the bootloader's RSDP address and prints
/// what they say.
pub fn init(rsdp: Option<u64>) -> Machine {
    let Some(rsdp) = rsdp else {
        log::warn!("ACPI: the bootloader found no RSDP; assuming a single CPU");
        return Machine {
            info: MachineInfo::default(),
        };
    };
    // SAFETY: `rsdp` is the RSDP's physical address as the bootloader found it,
    // and all physical memory is mapped at `phys_offset()` (tables included).
    let result = unsafe { drivers::acpi::read_machine_info(rsdp, crate::mm::phys_offset()) };
    let info = match result {
        Ok(info) => info,
        Err(e) => {
            log::error!("ACPI: {e}; carrying on without ACPI tables");
            return Machine {
                info: MachineInfo::default(),
            };
        }
    };
    for problem in &info.problems {
        log::warn!("ACPI problem: {problem} (carrying on with the rest)");
    }
    let enabled = info.cpus.iter().filter(|c| c.enabled).count();
    log::info!(
        "ACPI MADT: {} CPU(s) listed, {enabled} enabled; local APIC at {:#x}",
        info.cpus.len(),
        info.local_apic_address
    );
    for cpu in &info.cpus {
        log::info!(
            "  CPU uid {} APIC ID {}{}{}",
            cpu.processor_uid,
            cpu.apic_id,
            if cpu.enabled { "" } else { " (disabled)" },
            if cpu.is_bsp { " (boot CPU)" } else { "" }
        );
    }
    for io in &info.io_apics {
        log::info!(
            "  IOAPIC id {} at {:#x}, GSI base {}",
            io.id,
            io.address,
            io.gsi_base
        );
    }
    for o in &info.overrides {
        log::info!(
            "  IRQ override: ISA IRQ {} -> GSI {} ({:?}, {:?})",
            o.isa_irq,
            o.gsi,
            o.polarity,
            o.trigger
        );
    }
    match &info.pm_timer {
        Some(t) => log::info!(
            "  PM timer at {:#x} ({:?}, {}-bit)",
            t.port_or_address,
            t.space,
            if t.is_32bit { 32 } else { 24 }
        ),
        None => log::info!("  no PM timer"),
    }
    match &info.power_off {
        Some(p) => {
            log::info!(
                "  S5 power-off: PM1a_CNT port {:#x}, SLP_TYPa {}",
                p.pm1a_control_port,
                p.slp_typ_a
            );
            POWER_OFF.call_once(|| *p);
        }
        None => log::info!("  no S5 power-off information"),
    }
    Machine { info }
}

/// Powers the machine off through ACPI S5 if the tables said how; returns if
/// they did not (or the machine ignored it).
pub fn power_off() {
    if let Some(info) = POWER_OFF.get() {
        // SAFETY: the PM1 control ports and SLP_TYP values come from this
        // machine's FADT and DSDT; entering S5 is what the caller wants.
        unsafe { drivers::qemu_exit::acpi_power_off(info) };
        // Give the chipset a moment before the caller halts.
        for _ in 0..1_000_000 {
            core::hint::spin_loop();
        }
    }
}
