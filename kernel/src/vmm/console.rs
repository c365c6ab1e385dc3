//! The host serial console attached to one VM.
//!
//! When the boot package's `serial_input` option is on (`./qemu-run.sh`,
//! `boot run`), CPU 0 reads the keys typed on COM1 between slices
//! ([`super::poll_console`]):
//!
//! | key | effect |
//! | --- | --- |
//! | `s` | every VM's statistics |
//! | `q` | stop every VM (the summary follows) |
//! | `0`-`9` | attach the console to the VM with that id |
//! | Ctrl-] (0x1d) | detach |
//!
//! While attached, every byte but Ctrl-] is for that VM's UART (`s`, `q`
//! and digits included): it waits in a bounded queue ([`INPUT_LIMIT`]) until
//! the CPU the VM runs on takes it, before it picks its next vCPU
//! ([`take_input`]); that CPU gets the wake IPI, so an idle one looks at
//! once, and a halted vCPU that received input is woken. The VM's output is
//! raw meanwhile (`VmContext::set_raw_console`: unprefixed, not
//! line-buffered, control characters passed through); the other VMs keep
//! their `vm NAME: ` lines. A VM that stops for good detaches the console.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use spin::Mutex;

use crate::percpu::MAX_CPUS;

/// The byte that detaches the console: Ctrl-] (as telnet's escape).
pub const DETACH: u8 = 0x1d;
/// Typed bytes that can wait for the attached VM; more are dropped.
pub const INPUT_LIMIT: usize = 4096;

/// No VM attached.
const NONE: u32 = u32::MAX;

/// The id of the VM the console is attached to, or [`NONE`].
static ATTACHED: AtomicU32 = AtomicU32::new(NONE);

/// Typed bytes for VM `vm`, not yet taken by its CPU.
struct Input {
    vm: u32,
    bytes: VecDeque<u8>,
    dropped: u64,
}

static INPUT: Mutex<Input> = Mutex::new(Input {
    vm: NONE,
    bytes: VecDeque::new(),
    dropped: 0,
});
/// Bytes wait in [`INPUT`] (saves the owning CPU the lock when none do).
static INPUT_WAITING: AtomicBool = AtomicBool::new(false);
/// Bytes were queued since the owning CPU was last sent the wake IPI.
static KICK: AtomicBool = AtomicBool::new(false);

/// A running VM the console can attach to.
struct LiveVm {
    id: u32,
    name: String,
    cpu: usize,
}

/// The VMs the CPU loops run (registered when a loop starts, removed when
/// the VM stops for good).
static LIVE: Mutex<Vec<LiveVm>> = Mutex::new(Vec::new());
/// Local APIC ID of each CPU running a scheduling loop (for the wake IPI).
static CPU_APIC: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(NONE) }; MAX_CPUS];

/// The line that tells a user the keys (printed when serial input is on).
pub fn announce_keys() {
    log::info!("console: s stats, q stop, 0-9 attach to a VM, Ctrl-] detach");
}

/// A CPU's scheduling loop starts with these VMs (id, name).
pub fn cpu_started<'a>(cpu: usize, apic_id: u32, vms: impl Iterator<Item = (u32, &'a str)>) {
    if let Some(slot) = CPU_APIC.get(cpu) {
        slot.store(apic_id, Ordering::Relaxed);
    }
    let mut live = LIVE.lock();
    for (id, name) in vms {
        live.push(LiveVm {
            id,
            name: String::from(name),
            cpu,
        });
    }
}

/// VM `id` stopped for good (not restarted): the console cannot attach to
/// it any more, and detaches if it was attached.
pub fn vm_gone(id: u32) {
    let mut live = LIVE.lock();
    let Some(at) = live.iter().position(|v| v.id == id) else {
        return;
    };
    let vm = live.remove(at);
    if ATTACHED
        .compare_exchange(id, NONE, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        clear_input(NONE);
        log::info!("console: detached (vm {} stopped)", vm.name);
    }
}

/// A CPU's scheduling loop ended: its VMs are gone.
pub fn cpu_done(cpu: usize) {
    let ids: Vec<u32> = LIVE
        .lock()
        .iter()
        .filter(|v| v.cpu == cpu)
        .map(|v| v.id)
        .collect();
    for id in ids {
        vm_gone(id);
    }
}

/// The VM the console is attached to.
pub fn attached() -> Option<u32> {
    let id = ATTACHED.load(Ordering::Acquire);
    (id != NONE).then_some(id)
}

/// Input typed for VM `id` since the last call (for its CPU, before its
/// next slice).
pub fn take_input(id: u32) -> Option<Vec<u8>> {
    if !INPUT_WAITING.load(Ordering::Acquire) {
        return None;
    }
    let mut input = INPUT.lock();
    if input.vm != id || input.bytes.is_empty() {
        return None;
    }
    INPUT_WAITING.store(false, Ordering::Release);
    Some(input.bytes.drain(..).collect())
}

fn clear_input(vm: u32) {
    let mut input = INPUT.lock();
    input.vm = vm;
    input.bytes.clear();
    input.dropped = 0;
    INPUT_WAITING.store(false, Ordering::Release);
}

/// Handles one typed byte. Returns it when it is a host command key (the
/// console is detached and the byte is neither a digit nor Ctrl-]).
pub fn key(byte: u8) -> Option<u8> {
    match (attached(), byte) {
        (Some(_), DETACH) => {
            ATTACHED.store(NONE, Ordering::Release);
            clear_input(NONE);
            log::info!("console: detached");
            None
        }
        (Some(id), _) => {
            let mut input = INPUT.lock();
            if input.vm != id {
                return None;
            }
            if input.bytes.len() < INPUT_LIMIT {
                input.bytes.push_back(byte);
                INPUT_WAITING.store(true, Ordering::Release);
                KICK.store(true, Ordering::Relaxed);
            } else {
                input.dropped += 1;
                if input.dropped == 1 {
                    log::warn!(
                        "console: vm id {id} does not take its input; dropping what does not fit"
                    );
                }
            }
            None
        }
        (None, b'0'..=b'9') => {
            attach(u32::from(byte - b'0'));
            None
        }
        (None, DETACH) => None,
        (None, _) => Some(byte),
    }
}

pub(crate) fn attach(id: u32) {
    let live = LIVE.lock();
    match live.iter().find(|v| v.id == id) {
        Some(vm) => {
            clear_input(id);
            ATTACHED.store(id, Ordering::Release);
            log::info!(
                "console: attached to vm {} (id {id}); Ctrl-] detaches",
                vm.name
            );
            // Its CPU switches the VM's output to raw at its next look.
            wake_cpu(vm.cpu);
        }
        None => {
            let ids: Vec<String> = live
                .iter()
                .map(|v| alloc::format!("{} ({})", v.id, v.name))
                .collect();
            log::warn!(
                "console: no running VM with id {id}; running: {}",
                ids.join(", ")
            );
        }
    }
}

/// After a round of keys: the CPU of the attached VM gets the wake IPI if
/// input was queued for it (an idle CPU then takes it at once).
pub fn kick() {
    if !KICK.swap(false, Ordering::Relaxed) {
        return;
    }
    let Some(id) = attached() else { return };
    let cpu = LIVE.lock().iter().find(|v| v.id == id).map(|v| v.cpu);
    if let Some(cpu) = cpu {
        wake_cpu(cpu);
    }
}

pub(crate) fn wake_cpu(cpu: usize) {
    use crate::arch::idt::WAKE_VECTOR;
    use drivers::apic::Ipi;
    if cpu == crate::percpu::cpu_index() as usize {
        return;
    }
    let Some(apic_id) = CPU_APIC
        .get(cpu)
        .map(|a| a.load(Ordering::Relaxed))
        .filter(|&a| a != NONE)
    else {
        return;
    };
    // Best effort: a CPU the IPI misses takes the input at its next look.
    let _ = crate::apic::send_ipi(
        apic_id,
        Ipi::Fixed {
            vector: WAKE_VECTOR,
        },
    );
}
