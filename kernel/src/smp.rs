//! Application processors: start-up (INIT-SIPI-SIPI, SDM Vol. 3A 10.4.4.1 and
//! the MultiProcessor Specification B.4), per-CPU tables, and stopping.
//!
//! The boot CPU starts the APs one at a time, in MADT order. Each gets a
//! 64 KiB kernel stack, its own GDT/TSS with IST stacks, the shared IDT, its
//! per-CPU data and its local APIC enabled, then runs the `entry` function
//! given to [`start_aps`] with its CPU index. A CPU that does not answer within
//! [`ONLINE_TIMEOUT_US`] is reported and skipped; bring-up never hangs.
//!
//! Stopping ([`stop_other_cpus`]) sets a flag ([`stopping`]) and sends every
//! other online CPU the wake IPI ([`WAKE_VECTOR`], a fixed vector): a parked
//! CPU wakes, sees the flag and halts; a CPU running a guest takes a VM exit
//! (external-interrupt exiting) and its exit loop checks the flag.

mod trampoline;

use alloc::boxed::Box;
use core::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};

use drivers::apic::Ipi;
use x86_64::registers::control::{Cr0, Cr3, Cr4};

use crate::acpi::Machine;
use crate::arch::gdt::PerCpuTables;
use crate::arch::idt::WAKE_VECTOR;
use crate::arch::rdtsc;
use crate::mm::AP_TRAMPOLINE;
use crate::percpu::{self, MAX_CPUS};

/// Kernel stack of each AP.
const AP_STACK_SIZE: usize = 64 * 1024;
/// INIT to first SIPI (SDM 10.4.4.1: 10 ms).
const INIT_DELAY_US: u64 = 10_000;
/// Between the two SIPIs (200 µs).
const SIPI_DELAY_US: u64 = 200;
/// How long an AP has to report online after the second SIPI.
const ONLINE_TIMEOUT_US: u64 = 100_000;
/// Extra time for an AP that claimed its start block but is not online yet.
const CLAIMED_GRACE_US: u64 = 1_000_000;
/// How long [`stop_other_cpus`] waits for the others to halt.
const STOP_WAIT_US: u64 = 10_000;
/// TSC frequency assumed when calibration failed: high, so waits err long.
const FALLBACK_TSC_HZ: u64 = 5_000_000_000;

/// What the kernel knows about one CPU index.
struct Slot {
    apic_id: AtomicU32,
    online: AtomicBool,
    tables: spin::Once<&'static PerCpuTables>,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            tables: spin::Once::new(),
        }
    }
}

static SLOTS: [Slot; MAX_CPUS] = [const { Slot::new() }; MAX_CPUS];
static STOPPING: AtomicBool = AtomicBool::new(false);
static HALTED: AtomicU32 = AtomicU32::new(0);

/// What an AP needs from the boot CPU; read by [`ap_main`].
struct ApStart {
    index: u32,
    apic_id: u32,
    tables: &'static PerCpuTables,
    entry: fn(u32) -> !,
}

/// Remembers the boot CPU's descriptor tables; marks CPU 0 online with the
/// APIC ID from its per-CPU data (installed before this is called).
pub fn register_bsp_tables(tables: &'static PerCpuTables) {
    let slot = &SLOTS[0];
    slot.tables.call_once(|| tables);
    if let Some(me) = percpu::try_current() {
        slot.apic_id.store(me.apic_id, Ordering::Relaxed);
    }
    slot.online.store(true, Ordering::Release);
}

/// The local APIC ID of CPU `index`, once it is online.
pub fn apic_id_of(index: usize) -> Option<u32> {
    let slot = SLOTS.get(index)?;
    slot.online
        .load(Ordering::Acquire)
        .then(|| slot.apic_id.load(Ordering::Relaxed))
}

/// CPUs online, the boot CPU included.
pub fn online_cpus() -> u32 {
    SLOTS
        .iter()
        .filter(|s| s.online.load(Ordering::Acquire))
        .count()
        .max(1) as u32
}

/// The calling CPU's GDT/TSS (for the VMCS host state).
///
/// Panics if called before the CPU's tables were registered (the boot CPU:
/// [`register_bsp_tables`]; an AP: before its entry function runs).
pub fn tables_of_current_cpu() -> &'static PerCpuTables {
    let index = percpu::cpu_index() as usize;
    match SLOTS.get(index).and_then(|s| s.tables.get()) {
        Some(t) => t,
        None => panic!("CPU {index} has no registered descriptor tables"),
    }
}

/// True once [`stop_other_cpus`] was called: long-running loops on any CPU
/// (the VM exit loop, idle loops) check it and call [`halt_this_cpu`].
pub fn stopping() -> bool {
    STOPPING.load(Ordering::Acquire)
}

/// Counts this CPU as stopped and halts it for good.
pub fn halt_this_cpu() -> ! {
    HALTED.fetch_add(1, Ordering::AcqRel);
    crate::exit::halt_forever()
}

/// The default AP entry: halts with interrupts enabled until there is work
/// (an IPI), and for good once [`stopping`] is set.
pub fn park(_cpu_index: u32) -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        if stopping() {
            halt_this_cpu();
        }
        // `sti; hlt`: an interrupt between the check and the halt still wakes us.
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

/// Sends the wake IPI ([`WAKE_VECTOR`]) to every other online CPU (e.g. parked
/// CPUs when work is ready). Best effort: a CPU the IPI misses keeps waiting.
pub fn wake_others() -> u32 {
    let me = percpu::cpu_index();
    let mut sent = 0;
    for (index, slot) in SLOTS.iter().enumerate() {
        if index as u32 != me && slot.online.load(Ordering::Acquire) {
            let id = slot.apic_id.load(Ordering::Relaxed);
            if crate::apic::send_ipi(
                id,
                Ipi::Fixed {
                    vector: WAKE_VECTOR,
                },
            )
            .is_ok()
            {
                sent += 1;
            }
        }
    }
    sent
}

/// Sends the wake IPI to CPU `index` (nothing for the calling CPU, which
/// sees whatever it is woken for at its next look, or for a CPU not online).
/// Best effort, like [`wake_others`].
pub fn wake_cpu(index: usize) {
    if index == percpu::cpu_index() as usize {
        return;
    }
    if let Some(id) = apic_id_of(index) {
        let _ = crate::apic::send_ipi(
            id,
            Ipi::Fixed {
                vector: WAKE_VECTOR,
            },
        );
    }
}

/// Asks every other online CPU to halt (flag + wake IPI) and waits briefly for
/// them. Safe from any CPU, on a panic path, and more than once (later calls
/// return at once).
pub fn stop_other_cpus() {
    if STOPPING.swap(true, Ordering::AcqRel) {
        return;
    }
    let me = percpu::cpu_index();
    let others = (0..MAX_CPUS as u32)
        .filter(|&i| i != me && SLOTS[i as usize].online.load(Ordering::Acquire))
        .count() as u32;
    // Best effort: a CPU the IPI misses sees the flag at its next check.
    wake_others();
    if others > 0 {
        let deadline = rdtsc() + us_to_tsc(STOP_WAIT_US);
        while HALTED.load(Ordering::Acquire) < others && rdtsc() < deadline {
            core::hint::spin_loop();
        }
    }
}

/// Starts every enabled CPU of the MADT other than the calling (boot) CPU,
/// in MADT order, each running `entry(cpu_index)` once it is set up. Returns
/// the number of CPUs online, the boot CPU included.
pub fn start_aps(machine: &Machine, entry: fn(cpu_index: u32) -> !) -> u32 {
    let bsp_apic_id = percpu::try_current().map(|c| c.apic_id).unwrap_or(0);
    SLOTS[0].apic_id.store(bsp_apic_id, Ordering::Relaxed);
    SLOTS[0].online.store(true, Ordering::Release);
    let aps: alloc::vec::Vec<u32> = machine
        .info
        .cpus
        .iter()
        .filter(|c| c.enabled && c.apic_id != bsp_apic_id)
        .map(|c| c.apic_id)
        .collect();
    let listed = aps.len() as u32 + 1;
    if aps.is_empty() {
        log::info!("SMP: 1 of {listed} CPUs online (no application processors listed)");
        return 1;
    }
    if apic_tsc_hz() == 0 {
        log::warn!(
            "SMP: TSC not calibrated; start-up delays assume {} GHz",
            FALLBACK_TSC_HZ / 1_000_000_000
        );
    }
    let Some(params) = prepare() else {
        log::warn!("SMP: cannot prepare the AP trampoline; running on the boot CPU only");
        return 1;
    };

    let started = rdtsc();
    let mut next_index = 1u32;
    // Stack and tables of a CPU that never answered are reused for the next.
    let mut spare: Option<(u64, &'static PerCpuTables)> = None;
    for apic_id in aps {
        if next_index as usize >= MAX_CPUS {
            log::warn!(
                "SMP: CPU with APIC ID {apic_id} skipped: the kernel supports {MAX_CPUS} CPUs"
            );
            continue;
        }
        let (stack_top, tables) = spare
            .take()
            .unwrap_or_else(|| (alloc_stack(), PerCpuTables::new_leaked()));
        let index = next_index;
        let start: &'static ApStart = Box::leak(Box::new(ApStart {
            index,
            apic_id,
            tables,
            entry,
        }));
        params.stack_top.store(stack_top, Ordering::Relaxed);
        params
            .entry
            .store(ap_main as *const () as u64, Ordering::Relaxed);
        params
            .arg
            .store(start as *const ApStart as u64, Ordering::Relaxed);
        params.claim.store(0, Ordering::SeqCst);

        let t0 = rdtsc();
        match wake(apic_id) {
            Ok(()) => {}
            Err(e) => {
                log::warn!("SMP: cannot send INIT/SIPI to APIC ID {apic_id}: {e:?}; skipping it");
                params.claim.store(1, Ordering::SeqCst);
                spare = Some((stack_top, tables));
                continue;
            }
        }
        let online = &SLOTS[index as usize].online;
        if wait_for(online, ONLINE_TIMEOUT_US) {
            log::info!(
                "SMP: CPU {index} (APIC ID {apic_id}) online after {} us",
                tsc_to_us(rdtsc() - t0)
            );
            next_index += 1;
            continue;
        }
        // Close the block; whoever claimed it first keeps it.
        if params.claim.swap(1, Ordering::SeqCst) == 0 {
            log::warn!(
                "SMP: CPU with APIC ID {apic_id} did not start within {} ms; skipping it",
                ONLINE_TIMEOUT_US / 1000
            );
            // Back to wait-for-SIPI, so a late start cannot happen.
            let _ = crate::apic::send_ipi(apic_id, Ipi::Init);
            spare = Some((stack_top, tables));
            continue;
        }
        if wait_for(online, CLAIMED_GRACE_US) {
            log::warn!(
                "SMP: CPU {index} (APIC ID {apic_id}) online, slowly: {} us",
                tsc_to_us(rdtsc() - t0)
            );
            next_index += 1;
            continue;
        }
        // It runs our code with this index and stack: neither can be reused,
        // and it may still read the parameter block.
        log::warn!("SMP: CPU with APIC ID {apic_id} started but never came online; not starting further CPUs");
        break;
    }
    let online = online_cpus();
    log::info!(
        "SMP: {online} of {listed} CPUs online (start-up took {} us)",
        tsc_to_us(rdtsc() - started)
    );
    online
}

/// Installs the trampoline and the identity mapping of its page; fills the
/// parameters common to all APs. The block stays claimed (closed).
fn prepare() -> Option<&'static trampoline::Params> {
    use crate::mm::mapper::{self, MapError};
    use x86_64::structures::paging::PageTableFlags;
    use x86_64::VirtAddr;

    let page = VirtAddr::new(AP_TRAMPOLINE);
    match mapper::map(page, AP_TRAMPOLINE, PageTableFlags::WRITABLE) {
        Ok(()) | Err(MapError::AlreadyMapped(_)) => {}
        Err(e) => {
            log::warn!("SMP: cannot identity-map the trampoline page {AP_TRAMPOLINE:#x}: {e:?}");
            return None;
        }
    }
    if mapper::translate(page) != Some(AP_TRAMPOLINE) {
        log::warn!("SMP: virtual {AP_TRAMPOLINE:#x} is mapped to another frame; cannot identity-map the trampoline");
        return None;
    }
    // SAFETY: the first MiB is kept out of the frame allocator for this page
    // (mm::init), no AP runs yet, and all physical memory is mapped.
    let params = unsafe { trampoline::install() };

    let (l4, pcid) = Cr3::read_raw();
    let cr3 = l4.start_address().as_u64();
    let transit = if cr3 < 1 << 32 {
        cr3
    } else {
        low_copy_of_l4(cr3)?
    };
    params.cr3_transit.store(transit, Ordering::Relaxed);
    params.cr3.store(cr3 | u64::from(pcid), Ordering::Relaxed);
    // VMXE is each CPU's own business (the VMX code sets it); LA57 cannot
    // change in long mode and the kernel uses 4-level paging.
    const VMXE: u64 = 1 << 13;
    const LA57: u64 = 1 << 12;
    params
        .cr4
        .store(Cr4::read_raw() & !(VMXE | LA57), Ordering::Relaxed);
    params.cr0.store(Cr0::read_raw(), Ordering::Relaxed);
    Some(params)
}

/// A copy of the level-4 table at `cr3` in a frame below 4 GiB (32-bit code
/// loads CR3 before long mode is active), for kernels whose tables live higher.
fn low_copy_of_l4(cr3: u64) -> Option<u64> {
    let frame = match crate::mm::alloc_frame_zeroed() {
        Ok(f) if f < 1 << 32 => f,
        _ => {
            log::warn!("SMP: CR3 {cr3:#x} is above 4 GiB and no frame below 4 GiB is free for a transit copy");
            return None;
        }
    };
    // SAFETY: both are 4 KiB page-table frames reachable through the
    // physical-memory mapping; `frame` is fresh and used by nobody else.
    unsafe {
        core::ptr::copy_nonoverlapping(
            crate::mm::phys_to_virt(cr3).as_ptr::<u8>(),
            crate::mm::phys_to_virt(frame).as_mut_ptr::<u8>(),
            4096,
        )
    };
    Some(frame)
}

/// INIT, 10 ms, SIPI, 200 µs, SIPI (SDM Vol. 3A 10.4.4.1). A CPU already
/// running ignores the second SIPI.
fn wake(apic_id: u32) -> Result<(), drivers::apic::ApicError> {
    let page = (AP_TRAMPOLINE >> 12) as u8;
    // The parameter block must be visible before the AP can run (x2APIC ICR
    // writes are not serializing).
    fence(Ordering::SeqCst);
    crate::apic::send_ipi(apic_id, Ipi::Init)?;
    delay_us(INIT_DELAY_US);
    crate::apic::send_ipi(apic_id, Ipi::Startup { page })?;
    delay_us(SIPI_DELAY_US);
    crate::apic::send_ipi(apic_id, Ipi::Startup { page })?;
    delay_us(SIPI_DELAY_US);
    Ok(())
}

/// Where an AP lands in Rust, on its own stack, with the trampoline's GDT.
extern "C" fn ap_main(start: &'static ApStart) -> ! {
    start.tables.load();
    crate::arch::idt::load();
    percpu::install(start.index, start.apic_id);
    let apic_id = crate::apic::init_ap();
    if apic_id != start.apic_id {
        log::warn!(
            "SMP: CPU {} expected APIC ID {} but has {apic_id}",
            start.index,
            start.apic_id
        );
    }
    let slot = &SLOTS[start.index as usize];
    slot.apic_id.store(apic_id, Ordering::Relaxed);
    slot.tables.call_once(|| start.tables);
    slot.online.store(true, Ordering::Release);
    (start.entry)(start.index)
}

/// A zeroed, leaked kernel stack; returns its 16-byte aligned top.
fn alloc_stack() -> u64 {
    let stack: &'static mut [u8] = Box::leak(alloc::vec![0u8; AP_STACK_SIZE].into_boxed_slice());
    (stack.as_ptr_range().end as u64) & !0xf
}

/// Spins until `flag` is set or `us` microseconds passed; true if set.
fn wait_for(flag: &AtomicBool, us: u64) -> bool {
    let deadline = rdtsc() + us_to_tsc(us);
    loop {
        if flag.load(Ordering::Acquire) {
            return true;
        }
        if rdtsc() >= deadline {
            return flag.load(Ordering::Acquire);
        }
        core::hint::spin_loop();
    }
}

fn delay_us(us: u64) {
    let deadline = rdtsc() + us_to_tsc(us);
    while rdtsc() < deadline {
        core::hint::spin_loop();
    }
}

fn apic_tsc_hz() -> u64 {
    crate::apic::tsc_hz()
}

fn tsc_hz_or_fallback() -> u64 {
    match apic_tsc_hz() {
        0 => FALLBACK_TSC_HZ,
        hz => hz,
    }
}

fn us_to_tsc(us: u64) -> u64 {
    tsc_hz_or_fallback() / 1000 * us / 1000
}

fn tsc_to_us(ticks: u64) -> u64 {
    ticks / (tsc_hz_or_fallback() / 1_000_000).max(1)
}
