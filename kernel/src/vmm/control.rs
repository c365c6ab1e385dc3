//! Managing VMs at run time (issue 11): the control protocol on COM2 and
//! the same commands typed on the human console (`:` then a command).
//!
//! Parsing and validation are pure ([`hvcore::control`]). Here:
//! - a registry of every VM (id, name, spec, CPU, state, the counters its
//!   CPU last published, its stop report), read by `list`, `info`, `pool`;
//! - CPU 0 reads COM2 without blocking (at most [`READ_BUDGET`] bytes per
//!   loop iteration, lines of at most `json::MAX_LINE` bytes) and answers
//!   what the registry knows; operations on a VM go to the mailbox of the
//!   CPU that owns it ([`MAIL`]), which serves it between two slices
//!   ([`serve`]): create (build with `build_one`, add to its scheduler),
//!   start, stop, restart, destroy (stop, then `finish_vm` frees every
//!   frame: memory, NPT/EPT tables, VMCB/VMCS);
//! - responses and events go out through one bounded queue written to COM2
//!   only while its transmitter takes bytes ([`drain`]), so no CPU waits
//!   on the line.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use drivers::serial::COM2;
use hvcore::config::{VmSpec, MIB};
use hvcore::control::json::{self, Obj};
use hvcore::control::{self as proto, Command, VmRef, VmState};
use hvcore::sched::Scheduler;
use hvcore::stats::{ExitKind, VmStats};
use hvcore::vcpu::StopReason;
use spin::Mutex;

use super::platform::KernelPlatform;
use super::{console, LazyOwner, Vcpu};
use crate::percpu::MAX_CPUS;

/// Bytes CPU 0 reads from COM2 per loop iteration at most: a flood of
/// requests costs the VMs no more than reading this many.
pub const READ_BUDGET: usize = 256;
/// Bytes of responses and events that may wait for the line; beyond, events
/// are dropped (and counted) rather than anyone waiting.
const OUT_LIMIT: usize = 256 * 1024;
/// How often a CPU publishes its VMs' counters to the registry (µs).
const PUBLISH_US: u64 = 50_000;
/// The most VMs at once (ids are reused; AMD-V uses id + 1 as the ASID).
const MAX_LIVE_VMS: usize = hvcore::config::MAX_VMS;

static ENABLED: AtomicBool = AtomicBool::new(false);
static COM2_ON: AtomicBool = AtomicBool::new(false);

/// Who asked, and so where the answer goes.
#[derive(Clone, Copy, Debug)]
enum Origin {
    /// A COM2 request with its id.
    Port(u64),
    /// A command typed on the human console.
    Console,
}

/// One VM as the control protocol knows it.
struct Entry {
    id: u32,
    spec: VmSpec,
    cpu: usize,
    state: VmState,
    /// TSC when it last started (uptime).
    started: u64,
    /// TSC from which its counters count (start or `stats reset`).
    base: u64,
    stats: VmStats,
    stop_report: Option<String>,
}

static VMS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// An operation for the CPU that owns a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Create,
    Start,
    Stop,
    Restart,
    Destroy,
    StatsReset,
}

struct Mail {
    origin: Origin,
    op: Op,
    vm: u32,
}

static MAIL: [Mutex<VecDeque<Mail>>; MAX_CPUS] = [const { Mutex::new(VecDeque::new()) }; MAX_CPUS];
static MAIL_WAITING: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static LAST_PUBLISH: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Whether the control protocol runs this boot (the package's `control`).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns the protocol on: COM2 if the machine has one, the `ready` event.
pub fn init() {
    ENABLED.store(true, Ordering::Relaxed);
    if COM2.present() {
        COM2.init();
        COM2_ON.store(true, Ordering::Relaxed);
        log::info!(
            "control: protocol {} on COM2 (0x2f8); console: `:` then a command (`:help`)",
            proto::PROTOCOL_VERSION
        );
    } else {
        log::warn!("control: no COM2 on this machine; commands only on the console (`:help`)");
    }
    event(
        Obj::new()
            .str("event", "ready")
            .num("protocol", proto::PROTOCOL_VERSION),
    );
}

/// A VM of the configuration file that was built at boot.
pub fn register_boot_vm(id: u32, spec: &VmSpec, cpu: usize) {
    let now = crate::arch::rdtsc();
    VMS.lock().push(Entry {
        id,
        spec: spec.clone(),
        cpu,
        state: VmState::Running,
        started: now,
        base: now,
        stats: VmStats::default(),
        stop_report: None,
    });
}

/// The spec a VM (re)boots from, when the registry has it.
pub fn spec_of(id: u32) -> Option<VmSpec> {
    VMS.lock()
        .iter()
        .find(|e| e.id == id)
        .map(|e| e.spec.clone())
}

/// Zeroed counters that keep the restart count.
fn fresh_stats(restarts: u64) -> VmStats {
    let mut s = VmStats::default();
    s.restarts = restarts;
    s
}

// ---------------------------------------------------------------- output

static OUT: Mutex<Out> = Mutex::new(Out {
    bytes: VecDeque::new(),
    dropped: 0,
});

struct Out {
    bytes: VecDeque<u8>,
    dropped: u64,
}

fn send_line(line: &str) {
    if !COM2_ON.load(Ordering::Relaxed) {
        return;
    }
    {
        let mut out = OUT.lock();
        if out.bytes.len() + line.len() + 1 > OUT_LIMIT {
            out.dropped += 1;
            return;
        }
        out.bytes.extend(line.bytes());
        out.bytes.push_back(b'\n');
    }
    drain();
}

/// Writes queued output while COM2's transmitter takes bytes; never waits.
pub fn drain() {
    if !COM2_ON.load(Ordering::Relaxed) {
        return;
    }
    let Some(mut out) = OUT.try_lock() else {
        return;
    };
    while let Some(&b) = out.bytes.front() {
        if !COM2.try_send_byte(b) {
            break;
        }
        out.bytes.pop_front();
    }
}

/// Waits (bounded) until the queued output left: before the machine ends.
pub fn flush() {
    for _ in 0..2_000_000 {
        drain();
        if OUT.lock().bytes.is_empty() {
            break;
        }
        core::hint::spin_loop();
    }
    COM2.flush();
}

fn event(o: Obj) {
    send_line(&o.end());
}

fn vm_event(kind: &str, id: u32, name: &str) -> Obj {
    Obj::new()
        .str("event", kind)
        .num("vm_id", u64::from(id))
        .str("vm", name)
}

/// Answers a request: a JSON line on COM2, or readable text on the console.
fn respond(origin: Origin, result: Result<(Obj, String), String>) {
    match (origin, result) {
        (Origin::Port(id), Ok((o, _))) => send_line(
            &Obj::new()
                .num("id", id)
                .bool("ok", true)
                .raw("result", &o.end())
                .end(),
        ),
        (Origin::Port(id), Err(e)) => send_line(
            &Obj::new()
                .num("id", id)
                .bool("ok", false)
                .str("error", &e)
                .end(),
        ),
        (Origin::Console, Ok((_, text))) => crate::println!("{text}"),
        (Origin::Console, Err(e)) => crate::println!("error: {e}"),
    }
}

fn respond_err_raw(id: Option<u64>, message: &str) {
    let o = match id {
        Some(id) => Obj::new().num("id", id),
        None => Obj::new().null("id"),
    };
    send_line(&o.bool("ok", false).str("error", message).end());
}

// ---------------------------------------------------------------- input

struct LineBuf {
    buf: Vec<u8>,
    overflow: bool,
}

static COM2_LINE: Mutex<LineBuf> = Mutex::new(LineBuf {
    buf: Vec::new(),
    overflow: false,
});

/// CPU 0, every loop iteration: reads what COM2 has (bounded), answers
/// complete lines, writes queued output.
pub fn poll() {
    if !COM2_ON.load(Ordering::Relaxed) {
        return;
    }
    drain();
    for _ in 0..READ_BUDGET {
        let Some(byte) = COM2.try_read_raw() else {
            break;
        };
        let line = {
            let mut l = COM2_LINE.lock();
            match byte {
                b'\n' => {
                    let overflow = core::mem::replace(&mut l.overflow, false);
                    let line = core::mem::take(&mut l.buf);
                    Some((line, overflow))
                }
                _ if l.overflow => None,
                _ if l.buf.len() >= json::MAX_LINE => {
                    l.overflow = true;
                    l.buf = Vec::new();
                    None
                }
                _ => {
                    l.buf.push(byte);
                    None
                }
            }
        };
        match line {
            Some((_, true)) => respond_err_raw(
                None,
                &format!("request longer than {} bytes; ignored", json::MAX_LINE),
            ),
            Some((line, false)) => {
                let trimmed = line.strip_suffix(b"\r").unwrap_or(&line);
                if trimmed.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match proto::parse_request(trimmed) {
                    Ok(req) => handle(Origin::Port(req.id), req.command),
                    Err(e) => respond_err_raw(e.id, &e.message),
                }
            }
            None => {}
        }
    }
}

/// The console's command line (after `:`), while one is being typed.
static CONSOLE_LINE: Mutex<Option<Vec<u8>>> = Mutex::new(None);

/// Whether the console is in the middle of a `:` command line.
pub fn console_typing() -> bool {
    CONSOLE_LINE.lock().is_some()
}

/// `:` typed on the console: a command line starts.
pub fn console_start() {
    *CONSOLE_LINE.lock() = Some(Vec::new());
    crate::print!(":");
}

/// A key of the console's command line: echoed; Enter runs it, Backspace
/// edits, Escape or Ctrl-C drops it.
pub fn console_key(byte: u8) {
    let done = {
        let mut guard = CONSOLE_LINE.lock();
        let Some(line) = guard.as_mut() else { return };
        match byte {
            b'\r' | b'\n' => guard.take(),
            0x7f | 0x08 => {
                if line.pop().is_some() {
                    crate::print!("\x08 \x08");
                }
                None
            }
            0x1b | 0x03 => {
                *guard = None;
                crate::println!(" (dropped)");
                None
            }
            b' '..=b'~' if line.len() < 512 => {
                line.push(byte);
                crate::print!("{}", byte as char);
                None
            }
            _ => None,
        }
    };
    if let Some(line) = done {
        crate::println!();
        let text = core::str::from_utf8(&line).unwrap_or("");
        match text.trim() {
            "help" | "?" => crate::println!("{HELP}"),
            t => match proto::parse_words(t) {
                Ok(cmd) => handle(Origin::Console, cmd),
                Err(e) => crate::println!("error: {e}"),
            },
        }
    }
}

const HELP: &str = "\
commands (after `:`; Enter runs, Esc drops; a VM by name or id):
  list | ls                      VMs: state, CPUs, memory, uptime, exits/s, CPU share
  info VM                        configuration, exits by reason, events, stop report
  create NAME image=IMG memory=MIB [cpus=0,1] [slice=US] [cmdline=\"...\"]
  start VM | stop VM | restart VM | destroy VM
  console VM                     attach this console to the VM's UART (Ctrl-] detaches)
  pool                           free and used memory, largest block, CPUs and their VMs
  stats reset | version | shutdown";

// ---------------------------------------------------------------- requests

fn find<'a>(vms: &'a [Entry], r: &VmRef) -> Result<&'a Entry, String> {
    vms.iter()
        .find(|e| match r {
            VmRef::Id(id) => e.id == *id,
            VmRef::Name(n) => e.spec.name == *n,
        })
        .ok_or_else(|| format!("no VM {r}"))
}

fn post(cpu: usize, mail: Mail) {
    if let Some(q) = MAIL.get(cpu) {
        q.lock().push_back(mail);
        MAIL_WAITING[cpu].store(true, Ordering::Release);
        console::wake_cpu(cpu);
    }
}

fn largest_free_bytes() -> u64 {
    crate::mm::largest_free_run(512) as u64 * 4096
}

fn handle(origin: Origin, cmd: Command) {
    match cmd {
        Command::List => respond(origin, Ok(list())),
        Command::Pool => respond(origin, Ok(pool())),
        Command::Version => {
            let images: Vec<String> = super::PACKAGE
                .get()
                .map(|p| {
                    p.images
                        .iter()
                        .map(|i| format!("{}", json::Quoted(i.name)))
                        .collect()
                })
                .unwrap_or_default();
            let text = format!(
                "control protocol {}; images: {}",
                proto::PROTOCOL_VERSION,
                images.join(", ")
            );
            respond(
                origin,
                Ok((
                    Obj::new()
                        .num("protocol", proto::PROTOCOL_VERSION)
                        .raw("images", &json::array(&images)),
                    text,
                )),
            );
        }
        Command::Info(r) => {
            let vms = VMS.lock();
            let result = find(&vms, &r).map(info);
            drop(vms);
            respond(origin, result);
        }
        Command::Console(r) => {
            let found = {
                let vms = VMS.lock();
                find(&vms, &r).and_then(|e| {
                    proto::check_op(&Command::Console(r.clone()), &e.spec.name, e.state)
                        .map(|()| (e.id, e.spec.name.clone()))
                })
            };
            match found {
                Ok((id, name)) => {
                    console::attach(id);
                    respond(
                        origin,
                        Ok((
                            Obj::new().num("vm_id", u64::from(id)).str("vm", &name),
                            format!("console attached to vm {name}"),
                        )),
                    );
                }
                Err(e) => respond(origin, Err(e)),
            }
        }
        Command::StatsReset => {
            let now = crate::arch::rdtsc();
            let cpus: Vec<usize> = {
                let mut vms = VMS.lock();
                for e in vms.iter_mut() {
                    e.base = now;
                    e.stats = fresh_stats(e.stats.restarts);
                }
                vms.iter().map(|e| e.cpu).collect()
            };
            let mut seen = Vec::new();
            for cpu in cpus {
                if !seen.contains(&cpu) {
                    seen.push(cpu);
                    post(
                        cpu,
                        Mail {
                            origin: Origin::Console,
                            op: Op::StatsReset,
                            vm: 0,
                        },
                    );
                }
            }
            respond(origin, Ok((Obj::new(), String::from("counters reset"))));
        }
        Command::Shutdown => {
            respond(
                origin,
                Ok((Obj::new(), String::from("shutting down: stopping every VM"))),
            );
            log::info!("control: shutdown requested; stopping every VM");
            super::STOP_ALL.store(true, Ordering::Relaxed);
            crate::smp::wake_others();
        }
        Command::Create(req) => {
            let result = (|| {
                let package = super::PACKAGE
                    .get()
                    .ok_or_else(|| String::from("no boot package"))?;
                let images = package.image_infos();
                let limits = proto::CreateLimits {
                    images: &images,
                    cpu_count: crate::smp::online_cpus().max(1),
                    largest_free: largest_free_bytes(),
                };
                let mut vms = VMS.lock();
                if vms.len() >= MAX_LIVE_VMS {
                    return Err(format!(
                        "too many VMs (at most {MAX_LIVE_VMS}); destroy one first"
                    ));
                }
                let spec =
                    proto::create_spec(&req, &limits, |n| vms.iter().any(|e| e.spec.name == n))?;
                let id = proto::free_id(vms.iter().map(|e| e.id).collect::<Vec<_>>().into_iter());
                let cpu = spec.cpus.first().copied().unwrap_or(0) as usize;
                let now = crate::arch::rdtsc();
                vms.push(Entry {
                    id,
                    spec,
                    cpu,
                    state: VmState::Creating,
                    started: now,
                    base: now,
                    stats: VmStats::default(),
                    stop_report: None,
                });
                Ok((id, cpu))
            })();
            match result {
                Ok((id, cpu)) => post(
                    cpu,
                    Mail {
                        origin,
                        op: Op::Create,
                        vm: id,
                    },
                ),
                Err(e) => respond(origin, Err(e)),
            }
        }
        Command::Start(ref r)
        | Command::Stop(ref r)
        | Command::Restart(ref r)
        | Command::Destroy(ref r) => {
            let op = match cmd {
                Command::Start(_) => Op::Start,
                Command::Stop(_) => Op::Stop,
                Command::Restart(_) => Op::Restart,
                _ => Op::Destroy,
            };
            let target = {
                let vms = VMS.lock();
                find(&vms, r).and_then(|e| {
                    proto::check_op(&cmd, &e.spec.name, e.state).map(|()| (e.id, e.cpu))
                })
            };
            match target {
                Ok((id, cpu)) => post(cpu, Mail { origin, op, vm: id }),
                Err(e) => respond(origin, Err(e)),
            }
        }
    }
}

fn row(e: &Entry, now: u64) -> (Obj, [String; 8]) {
    let uptime_ms = if e.state == VmState::Running {
        super::us_from_tsc(now.saturating_sub(e.started)) / 1000
    } else {
        0
    };
    let span_us = super::us_from_tsc(now.saturating_sub(e.base)).max(1);
    let exits_per_s = (u128::from(e.stats.total_exits()) * 1_000_000 / u128::from(span_us)) as u64;
    let share = (u128::from(super::us_from_tsc(e.stats.guest_ticks)) * 1000 / u128::from(span_us))
        .min(1000) as u64;
    let cpus: Vec<u64> = e.spec.cpus.iter().map(|&c| u64::from(c)).collect();
    let o = Obj::new()
        .num("vm_id", u64::from(e.id))
        .str("name", &e.spec.name)
        .str("state", e.state.name())
        .nums("cpus", &cpus)
        .num("memory_mib", e.spec.memory_bytes / MIB)
        .num("uptime_ms", uptime_ms)
        .num("exits_per_s", exits_per_s)
        .num("cpu_permille", share);
    let cpu_text: Vec<String> = e.spec.cpus.iter().map(|c| format!("{c}")).collect();
    let cols = [
        format!("{}", e.id),
        e.spec.name.clone(),
        String::from(e.state.name()),
        cpu_text.join(","),
        format!("{}", e.spec.memory_bytes / MIB),
        format!("{}.{:03}", uptime_ms / 1000, uptime_ms % 1000),
        format!("{exits_per_s}"),
        format!("{}.{}%", share / 10, share % 10),
    ];
    (o, cols)
}

use proto::{table, LIST_HEADER};

fn list() -> (Obj, String) {
    let now = crate::arch::rdtsc();
    let vms = VMS.lock();
    let mut objs = Vec::new();
    let mut rows = Vec::new();
    for e in vms.iter() {
        let (o, cols) = row(e, now);
        objs.push(o.end());
        rows.push(cols.to_vec());
    }
    drop(vms);
    (
        Obj::new().raw("vms", &json::array(&objs)),
        table(&LIST_HEADER, &rows),
    )
}

fn info(e: &Entry) -> (Obj, String) {
    let now = crate::arch::rdtsc();
    let (o, cols) = row(e, now);
    let image = super::PACKAGE
        .get()
        .and_then(|p| p.images.get(e.spec.image as usize))
        .map_or("?", |i| i.name);
    let mut exits = Obj::new();
    let mut exit_text = String::new();
    for kind in ExitKind::ALL {
        let n = e.stats.exits(kind);
        if n != 0 {
            exits = exits.num(kind.name(), n);
            exit_text.push_str(&format!("\n    {:<22} {n}", kind.name()));
        }
    }
    let o = o
        .str("image", image)
        .str("mode", e.spec.mode.name())
        .num("slice_us", u64::from(e.spec.slice_us))
        .str("cmdline", &e.spec.cmdline)
        .str("on_reboot", e.spec.on_reboot.name())
        .num("exits", e.stats.total_exits())
        .raw("exits_by_reason", &exits.end())
        .num("injected_events", e.stats.injected_events)
        .num("hypercalls", e.stats.hypercalls())
        .num("restarts", e.stats.restarts);
    let o = match &e.stop_report {
        Some(r) => o.str("stop_report", r),
        None => o.null("stop_report"),
    };
    let text = format!(
        "vm {} (id {}): {}, CPUs {}, {} MiB, uptime {} s\n  image {} ({}), slice {} us, on reboot {}{}\n  exits {} ({}/s, CPU {}){}\n  injected events {}, hypercalls {}, restarts {}\n  stop report: {}",
        e.spec.name,
        e.id,
        cols[2],
        cols[3],
        cols[4],
        cols[5],
        image,
        e.spec.mode.name(),
        e.spec.slice_us,
        e.spec.on_reboot.name(),
        if e.spec.cmdline.is_empty() { String::new() } else { format!(", cmdline \"{}\"", hvcore::text::Escaped(&e.spec.cmdline)) },
        e.stats.total_exits(),
        cols[6],
        cols[7],
        exit_text,
        e.stats.injected_events,
        e.stats.hypercalls(),
        e.stats.restarts,
        e.stop_report.as_deref().unwrap_or("none"),
    );
    (o, text)
}

fn pool() -> (Obj, String) {
    let (free, total) = crate::mm::counts();
    let largest = largest_free_bytes();
    let cpus = crate::smp::online_cpus().max(1) as usize;
    let vms = VMS.lock();
    let used_by_vms: u64 = vms
        .iter()
        .filter(|e| e.state != VmState::Stopped)
        .map(|e| e.spec.memory_bytes)
        .sum();
    let mut cpu_objs = Vec::new();
    let mut cpu_text = String::new();
    for cpu in 0..cpus {
        let names: Vec<String> = vms
            .iter()
            .filter(|e| e.cpu == cpu && e.state != VmState::Stopped)
            .map(|e| e.spec.name.clone())
            .collect();
        let quoted: Vec<String> = names
            .iter()
            .map(|n| format!("{}", json::Quoted(n)))
            .collect();
        cpu_objs.push(
            Obj::new()
                .num("cpu", cpu as u64)
                .raw("vms", &json::array(&quoted))
                .end(),
        );
        cpu_text.push_str(&format!(
            "\n  CPU {cpu}: {}",
            if names.is_empty() {
                String::from("-")
            } else {
                names.join(", ")
            }
        ));
    }
    drop(vms);
    let o = Obj::new()
        .num("free_frames", free as u64)
        .num("total_frames", total as u64)
        .num("free_mib", free as u64 * 4096 / MIB)
        .num("used_mib", (total - free) as u64 * 4096 / MIB)
        .num("vm_memory_mib", used_by_vms / MIB)
        .num("largest_free_mib", largest / MIB)
        .raw("cpus", &json::array(&cpu_objs));
    let text = format!(
        "memory: {} MiB free of {} MiB ({} frames free), largest free block {} MiB, VMs hold {} MiB{cpu_text}",
        free as u64 * 4096 / MIB,
        total as u64 * 4096 / MIB,
        free,
        largest / MIB,
        used_by_vms / MIB
    );
    (o, text)
}

// ---------------------------------------------------------------- on the owning CPU

/// Whether mail waits for `cpu` (cheap: one atomic load).
pub fn mail_waiting(cpu: usize) -> bool {
    MAIL_WAITING
        .get(cpu)
        .is_some_and(|w| w.load(Ordering::Acquire))
}

/// Serves `cpu`'s mailbox between two slices.
pub(super) fn serve(
    cpu: usize,
    vcpus: &mut Vec<Option<Vcpu>>,
    sched: &mut Scheduler,
    lazy_owner: &mut LazyOwner,
    platform: &mut KernelPlatform,
) {
    let Some(q) = MAIL.get(cpu) else { return };
    MAIL_WAITING[cpu].store(false, Ordering::Release);
    loop {
        let Some(mail) = q.lock().pop_front() else {
            break;
        };
        let slot = vcpus
            .iter()
            .position(|v| v.as_ref().is_some_and(|v| v.vm().id() == mail.vm));
        let mut stop_running =
            |vcpus: &mut Vec<Option<Vcpu>>, sched: &mut Scheduler, lazy_owner: &mut LazyOwner| {
                if let Some(i) = slot {
                    if let Some(mut v) = vcpus[i].take() {
                        v.stop(StopReason::HostStop, platform);
                        platform.flush_output();
                        super::finish_vm(cpu, v, sched, i);
                        lazy_owner.release(i);
                    }
                }
            };
        match mail.op {
            Op::StatsReset => {
                for v in vcpus.iter_mut().flatten().filter(|v| v.index() == 0) {
                    let mut ctx = v.vm().ctx();
                    ctx.stats = fresh_stats(ctx.stats.restarts);
                }
            }
            Op::Stop => {
                if slot.is_none() {
                    respond(
                        mail.origin,
                        Err(format!("vm id {} is already stopped", mail.vm)),
                    );
                    continue;
                }
                stop_running(vcpus, sched, lazy_owner);
                respond(
                    mail.origin,
                    Ok((
                        Obj::new().num("vm_id", u64::from(mail.vm)),
                        format!("vm id {} stopped", mail.vm),
                    )),
                );
            }
            Op::Destroy => {
                stop_running(vcpus, sched, lazy_owner);
                let removed = {
                    let mut vms = VMS.lock();
                    vms.iter()
                        .position(|e| e.id == mail.vm)
                        .map(|at| vms.remove(at))
                };
                let (free, _) = crate::mm::counts();
                if let Some(e) = removed {
                    event(vm_event("destroyed", e.id, &e.spec.name));
                    respond(
                        mail.origin,
                        Ok((
                            Obj::new()
                                .num("vm_id", u64::from(e.id))
                                .num("free_frames", free as u64),
                            format!("vm {} destroyed ({free} frames free)", e.spec.name),
                        )),
                    );
                } else {
                    respond(mail.origin, Err(format!("no VM id {}", mail.vm)));
                }
            }
            Op::Create | Op::Start | Op::Restart => {
                if mail.op == Op::Start && slot.is_some() {
                    respond(
                        mail.origin,
                        Err(format!("vm id {} is already running", mail.vm)),
                    );
                    continue;
                }
                stop_running(vcpus, sched, lazy_owner);
                let result =
                    start_here(cpu, mail.vm, mail.op == Op::Create, vcpus, sched, platform);
                match result {
                    Ok((name, host)) => respond(
                        mail.origin,
                        Ok((
                            Obj::new()
                                .num("vm_id", u64::from(mail.vm))
                                .str("vm", &name)
                                .num("cpu", cpu as u64)
                                .num("host_base", host),
                            format!("vm {name} (id {}) running on CPU {cpu}", mail.vm),
                        )),
                    ),
                    Err(e) => respond(mail.origin, Err(e)),
                }
            }
        }
    }
}

/// Builds VM `id` from its registry spec on this CPU and adds it to the
/// scheduler. A create that fails leaves no trace (registry entry removed,
/// every frame released by `build_one`).
fn start_here(
    cpu: usize,
    id: u32,
    created: bool,
    vcpus: &mut Vec<Option<Vcpu>>,
    sched: &mut Scheduler,
    platform: &mut KernelPlatform,
) -> Result<(String, u64), String> {
    let spec = spec_of(id).ok_or_else(|| format!("no VM id {id}"))?;
    let built = match (super::PACKAGE.get(), super::BACKEND.get()) {
        (Some(p), Some(b)) => super::build_one(id, &spec, p, b),
        _ => Err(String::from("no backend")),
    };
    let list = match built {
        Ok(list) => list,
        Err(e) => {
            let mut vms = VMS.lock();
            if created {
                vms.retain(|e| e.id != id);
            }
            let largest = largest_free_bytes() / MIB;
            let msg = if e.starts_with("memory") {
                format!("not enough free memory (largest block {largest} MiB): {e}")
            } else {
                e
            };
            return Err(msg);
        }
    };
    let host = list.first().map_or(0, |(v, _)| v.partition().host.start);
    // This CPU runs the first vCPU; the others go to their CPUs.
    for (v, to) in list {
        super::hand_over(to, v);
    }
    super::adopt(cpu, vcpus, sched);
    console::cpu_started(
        cpu,
        platform.apic_id,
        core::iter::once((id, spec.name.as_str())),
    );
    let now = crate::arch::rdtsc();
    {
        let mut vms = VMS.lock();
        if let Some(e) = vms.iter_mut().find(|e| e.id == id) {
            e.state = VmState::Running;
            e.started = now;
            e.base = now;
            e.stats = VmStats::default();
            e.stop_report = None;
        }
    }
    log::info!(
        "vm {} (id {id}): {} MiB at host {host:#x}, CPU {cpu} (control)",
        spec.name,
        spec.memory_bytes / MIB
    );
    if created {
        event(
            vm_event("created", id, &spec.name)
                .num("cpu", cpu as u64)
                .num("memory_mib", spec.memory_bytes / MIB),
        );
    }
    event(vm_event("started", id, &spec.name).num("cpu", cpu as u64));
    Ok((spec.name, host))
}

/// Hook in `finish_vm`: the VM stopped for good (its frames are released
/// right after): the registry keeps its report, and the event goes out.
pub(super) fn vm_finished(vm: &super::vm::Vm, stats: &VmStats, report: &str) {
    if !enabled() {
        return;
    }
    let id = vm.id();
    let reason = vm.ctx().stop_reason().copied();
    let reason = reason.as_ref();
    let name = {
        let mut vms = VMS.lock();
        let Some(e) = vms.iter_mut().find(|e| e.id == id) else {
            return;
        };
        e.state = VmState::Stopped;
        e.stats = stats.clone();
        e.stop_report = Some(String::from(report));
        e.spec.name.clone()
    };
    let kind = if proto::is_fault(reason) {
        "faulted"
    } else {
        "stopped"
    };
    let why = reason.map_or(String::from("stopped"), |r| format!("{r}"));
    event(vm_event(kind, id, &name).str("reason", &why));
}

/// Hook in `restart_if_asked`: the guest reset and the VM boots afresh.
pub(super) fn vm_rebooted(id: u32, name: &str, reason: &StopReason) {
    if enabled() {
        event(vm_event("rebooted", id, name).str("reason", &format!("{reason}")));
    }
}

/// Hook in the CPU loop: publishes this CPU's VMs' counters now and then.
pub(super) fn publish(cpu: usize, vcpus: &[Option<Vcpu>], now: u64) {
    let Some(last) = LAST_PUBLISH.get(cpu) else {
        return;
    };
    if now.saturating_sub(last.load(Ordering::Relaxed)) < super::tsc_from_us(PUBLISH_US) {
        return;
    }
    last.store(now, Ordering::Relaxed);
    let mut vms = VMS.lock();
    for v in vcpus.iter().flatten().filter(|v| v.index() == 0) {
        if let Some(e) = vms.iter_mut().find(|e| e.id == v.vm().id()) {
            e.stats.clone_from(&v.vm().ctx().stats);
        }
    }
}
