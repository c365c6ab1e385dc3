//! The hypervisor kernel.
//!
//! Design rules:
//! - Boot order is fixed and each step reports on the console: serial console,
//!   memory (frames, page tables, heap), framebuffer console, CPU tables, boot
//!   package, ACPI, APIC and timers, then what the package asks for (run VMs,
//!   in-kernel tests, a deliberate crash).
//! - Privileged instructions live in `vmx` and `drivers`, or in small
//!   `unsafe` blocks here with a `// SAFETY:` line; policy (exit handling,
//!   device models, scheduling, configuration) lives in the `hvcore` crate,
//!   which has no `unsafe` and is tested on the host.
//! - Nothing a guest does can panic the kernel: guest-triggered conditions are
//!   errors that stop that VM with a report. A panic here is a hypervisor bug
//!   and prints a full report on both consoles.
#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]

extern crate alloc;

mod acpi;
mod apic;
mod arch;
mod console;
mod exit;
mod mm;
mod percpu;
mod selftest;
mod smp;
mod vmm;

use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::info::MemoryRegionKind;
use bootloader_api::BootInfo;
use hvcore::package::{self, Command};
use hvcore::KernelExit;

/// The bootloader maps all physical memory (EPT tables, VM partitions and
/// VMCS regions are reached through it) and gives the kernel a roomy stack.
pub static BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.kernel_stack_size = 256 * 1024;
    config
};

bootloader_api::entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

/// Version printed in the banner.
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    console::init();
    banner(boot_info);

    let Some(phys_offset) = boot_info.physical_memory_offset.into_option() else {
        panic!("bootloader did not map physical memory (BOOTLOADER_CONFIG asks for it)");
    };
    match mm::init(phys_offset, &boot_info.memory_regions) {
        Ok(summary) => log::info!(
            "memory map: {} regions, {} MiB usable, {} MiB reserved",
            summary.regions,
            summary.usable_bytes >> 20,
            summary.reserved_bytes >> 20
        ),
        Err(e) => panic!("cannot build the frame allocator from the memory map: {e:?}"),
    }
    print_memory_map(boot_info);
    log::info!(
        "kernel image at host-physical {:#x}..{:#x}",
        boot_info.kernel_addr,
        boot_info.kernel_addr + boot_info.kernel_len
    );
    mm::mapper::init();
    if let Err(e) = mm::heap::init() {
        panic!("cannot create the kernel heap: {e:?}");
    }
    mm::enable_bitmap_allocator();
    let (free, total) = mm::counts();
    log::info!(
        "frames: {free} free of {total} ({} MiB free)",
        (free * 4096) >> 20
    );

    let ramdisk = ramdisk(boot_info);
    let rsdp = boot_info.rsdp_addr.into_option();
    if let Some(fb) = boot_info.framebuffer.take() {
        let info = fb.info();
        console::attach_framebuffer(fb);
        log::info!(
            "framebuffer console: {}x{} {:?}, {} bytes/pixel",
            info.width,
            info.height,
            info.pixel_format,
            info.bytes_per_pixel
        );
        banner(boot_info);
    }

    let tables = arch::gdt::PerCpuTables::new_leaked();
    tables.load();
    arch::idt::load();
    // SAFETY: PC-compatible machines have the 8259 pair at the legacy ports
    // (or nothing there); the kernel uses the local APIC instead.
    unsafe { drivers::pic::remap_and_mask(arch::idt::LEGACY_PIC_BASE) };
    log::info!("GDT, TSS (IST stacks for #DF, NMI, #MC) and IDT loaded");

    let package = match package::decode(ramdisk) {
        Ok(p) => p,
        Err(e) => {
            log::error!(
                "boot package (ramdisk, {} bytes) is invalid: {e}",
                ramdisk.len()
            );
            exit::exit(KernelExit::BadPackage);
        }
    };
    exit::set_power_off_at_end(package.options.power_off);
    log::info!(
        "boot package: {:?}, {} VM(s), {} image(s)",
        package.command,
        package.vms.len(),
        package.images.len()
    );

    let machine = acpi::init(rsdp);
    let bsp_apic_id = apic::init_bsp(&machine);
    percpu::install(0, bsp_apic_id);
    tables_registered(tables);
    apic::calibrate(&machine);
    // The APs park until the VMM gives them work (it may pass its own entry).
    smp::start_aps(&machine, vmm::ap_main);

    let code = match &package.command {
        Command::SelfTest { filter } => selftest::run(filter, &machine),
        Command::Crash(kind) => selftest::crash(*kind),
        Command::RunVms => vmm::run(
            alloc::boxed::Box::leak(alloc::boxed::Box::new(package.clone())),
            &machine,
        ),
    };
    exit::exit(code)
}

/// Remembers the boot CPU's descriptor tables for the VMCS host state.
fn tables_registered(tables: &'static arch::gdt::PerCpuTables) {
    smp::register_bsp_tables(tables);
}

/// The ramdisk the bootloader loaded (the boot package), or an empty slice.
fn ramdisk(boot_info: &BootInfo) -> &'static [u8] {
    let (Some(addr), len) = (boot_info.ramdisk_addr.into_option(), boot_info.ramdisk_len) else {
        return &[];
    };
    // SAFETY: the bootloader mapped the ramdisk at `addr` for `len` bytes,
    // read-only data that stays mapped and unmodified for the kernel's lifetime.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) }
}

/// How the machine was booted: the bootloader's memory map keeps the firmware's
/// own region types, UEFI or BIOS (E820).
fn boot_path(boot_info: &BootInfo) -> &'static str {
    for r in boot_info.memory_regions.iter() {
        match r.kind {
            MemoryRegionKind::UnknownUefi(_) => return "UEFI",
            MemoryRegionKind::UnknownBios(_) => return "BIOS",
            _ => {}
        }
    }
    "unknown"
}

fn banner(boot_info: &BootInfo) {
    let cpu = arch::CpuDescription::read();
    println!("==================================================================");
    println!(" rust-hv {VERSION}: a bare-metal VT-x hypervisor");
    println!(
        " boot path: {} | CPU: {} family {:#x} model {:#x} stepping {}",
        boot_path(boot_info),
        cpu.vendor_str(),
        cpu.family,
        cpu.model,
        cpu.stepping
    );
    println!(" {}", cpu.brand_str());
    println!("==================================================================");
}

fn print_memory_map(boot_info: &BootInfo) {
    for r in boot_info.memory_regions.iter() {
        let kind = match r.kind {
            MemoryRegionKind::Usable => "usable",
            MemoryRegionKind::Bootloader => "bootloader (kernel, page tables, boot info, ramdisk)",
            MemoryRegionKind::UnknownUefi(_) => "firmware (UEFI)",
            MemoryRegionKind::UnknownBios(_) => "firmware (BIOS)",
            _ => "other",
        };
        // Small firmware regions are many on UEFI; list only the big picture.
        if r.end - r.start >= 1 << 20 || r.kind == MemoryRegionKind::Bootloader {
            log::info!(
                "  {:#012x}..{:#012x} {:>7} KiB {kind}",
                r.start,
                r.end,
                (r.end - r.start) >> 10
            );
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    let mut out = console::emergency();
    let _ = writeln!(
        out,
        "\n!!! HYPERVISOR PANIC on CPU {}: {}",
        percpu::cpu_index(),
        info.message()
    );
    if let Some(loc) = info.location() {
        let _ = writeln!(out, "  at {}:{}:{}", loc.file(), loc.line(), loc.column());
    }
    drop(out);
    exit::exit(KernelExit::Panic)
}
