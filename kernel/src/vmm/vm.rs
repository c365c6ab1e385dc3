//! A VM as its vCPUs share it: memory, devices and console, and a mailbox
//! per vCPU through which the others reach it.
//!
//! A VM with several vCPUs runs them on several CPUs at once (vCPU i on the
//! i-th CPU of its `cpus` list). What they share lives here, behind an
//! [`alloc::sync::Arc`]:
//!
//! - the partition (guest memory and its EPT/NPT): read and written by every
//!   vCPU's exits through `&Partition`; released when the last vCPU ends;
//! - the [`VmContext`] (device models with the I/O APIC, console,
//!   statistics, the stop reason) behind one spin lock, taken by the exits
//!   that reach the VM's devices (ports, MMIO, hypercalls, APIC MSRs) and
//!   before an entry when a device is due or an event may be delivered,
//!   never while a guest runs; exits that concern the vCPU alone (CPUID,
//!   its MSRs and control registers) take none;
//! - one [`VcpuLink`] per vCPU: the CPU it runs on and a mailbox word. A
//!   vCPU (or the host) that wants another vCPU to notice something (the VM
//!   stopped, an interrupt for it, INIT, SIPI) sets a bit there and sends
//!   that CPU the wake IPI; the vCPU's loop tests the word before every
//!   entry (one load), and an idle CPU looks at its vCPUs' words after
//!   every wake-up;
//! - in a VM with several vCPUs, one virtual local APIC per vCPU
//!   ([`hvcore::devices::lapic`]), each behind its own lock (the I/O APIC,
//!   [`hvcore::devices::ioapic`], is one of the devices in the context). A
//!   vCPU locks its own APIC for its APIC MSR exits
//!   and before an entry; an IPI locks each of the VM's APICs in turn to
//!   match the destination and accept the vector, then posts to the
//!   targets' mailboxes. Lock order: the context, then an APIC (never an
//!   APIC, then the context), and never two APICs at once. An interrupt
//!   message only ever names the VM's own APICs: nothing outside the VM
//!   can be reached.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use hvcore::devices::apic_msg::{DeliveryMode, InterruptMessage};
use hvcore::devices::lapic::{self, ApicFault, ApicOutput, LocalApic};
use hvcore::exit::Event;
use hvcore::vcpu::{StopReason, VcpuState, VmContext};
use spin::{Mutex, MutexGuard};

use super::partition::Partition;
use super::SliceEnd;

/// Mailbox bits (see [`VcpuLink::mail`]).
pub mod mail {
    /// The VM stopped: leave the guest and finish.
    pub const STOP: u32 = 1 << 0;
    /// An interrupt was posted to this vCPU's local APIC.
    pub const INTERRUPT: u32 = 1 << 1;
    /// INIT: reset to the wait-for-SIPI state.
    pub const INIT: u32 = 1 << 2;
    /// A start-up IPI (its vector in [`super::VcpuLink::sipi_vector`]).
    pub const SIPI: u32 = 1 << 3;
    /// A non-maskable interrupt.
    pub const NMI: u32 = 1 << 4;
}

/// Per CPU: something was posted to one of its vCPUs or handed to it
/// since its loop last looked ([`News::take`]), so the loop's look costs a
/// load when nothing happened.
static NEWS: [AtomicBool; crate::percpu::MAX_CPUS] =
    [const { AtomicBool::new(false) }; crate::percpu::MAX_CPUS];

/// Marks news for CPU `cpu` (after the mail or hand-over it is about).
pub fn note_news(cpu: usize) {
    if let Some(flag) = NEWS.get(cpu) {
        flag.store(true, Ordering::Release);
    }
}

/// CPU `cpu`'s news flag, for [`News::take`] (`None` past the CPUs the
/// kernel runs).
pub fn news(cpu: usize) -> Option<News> {
    NEWS.get(cpu).map(News)
}

/// One CPU's news flag: its loop looks it up once, not at every switch.
pub struct News(&'static AtomicBool);

impl News {
    /// Whether the CPU has news since the last call (which clears it).
    #[inline]
    pub fn take(&self) -> bool {
        self.0.load(Ordering::Relaxed) && self.0.swap(false, Ordering::Acquire)
    }
}

/// What a vCPU's mailbox asks of it before an entry ([`Vm::take_mail`]).
pub enum Mail {
    /// Nothing that changes its run (an interrupt is seen in its APIC).
    Nothing,
    /// Its VM stopped.
    Stop(StopReason),
    /// INIT: its APIC was reset; it waits for a start-up IPI again (SDM
    /// Vol. 3A 9.4.2).
    Init,
    /// A non-maskable interrupt to inject.
    Nmi,
}

/// Ends a vCPU's slice between exits (time is up, or the host is
/// stopping): Running -> Runnable.
pub fn end_slice_early(vm: &Vm, state: &mut VcpuState) -> SliceEnd {
    if let Err(e) = state.run_state_mut().preempt() {
        panic!(
            "vm {}: preempted from state {:?} ({})",
            vm.name(),
            e.from,
            e.attempted
        );
    }
    SliceEnd::Preempted
}

/// Stops vCPU `index` and its VM from the host side (a failed VM entry, a
/// run time limit), with the VM's report; the VM's other vCPUs are told.
/// An already stopped vCPU keeps its first reason.
pub fn stop_vcpu(
    vm: &Vm,
    index: usize,
    state: &mut VcpuState,
    reason: StopReason,
    env: &mut super::platform::KernelPlatform,
) {
    vm.ctx().stop(reason, &mut env.with(&vm.partition));
    let _ = state.run_state_mut().stop(reason);
    vm.stop_others(index);
}

/// Applies vCPU `index`'s mailbox to its run state and the event it will
/// inject, before an entry (either backend); `Some` ends its slice.
pub fn take_mail(
    vm: &Vm,
    index: usize,
    state: &mut VcpuState,
    pending_event: &mut Option<Event>,
) -> Option<SliceEnd> {
    match vm.take_mail(index) {
        Mail::Nothing => None,
        Mail::Stop(reason) => {
            let _ = state.run_state_mut().stop(reason);
            Some(SliceEnd::Stopped)
        }
        Mail::Nmi => {
            if pending_event.is_none() {
                *pending_event = Some(Event::NMI);
            }
            None
        }
        Mail::Init => {
            *pending_event = None;
            if let Err(e) = state.run_state_mut().wait_for_sipi() {
                panic!(
                    "vm {}: INIT in state {:?} ({})",
                    vm.name(),
                    e.from,
                    e.attempted
                );
            }
            Some(SliceEnd::WaitForSipi)
        }
    }
}

/// What a vCPU in wait-for-SIPI finds in its mailbox ([`Vm::take_startup`]).
pub enum Startup {
    /// Nothing: it sleeps on.
    Wait,
    /// Its VM stopped.
    Stop(StopReason),
    /// A start-up IPI with this vector: start in real mode at its page.
    Sipi(u8),
}

/// How the other vCPUs and the host reach one vCPU.
pub struct VcpuLink {
    /// The physical CPU the vCPU runs on.
    pub cpu: usize,
    /// [`mail`] bits not yet taken by the vCPU.
    pub mail: AtomicU32,
    /// The vector of the last start-up IPI sent to it.
    pub sipi_vector: AtomicU32,
}

/// What a VM's vCPUs share.
pub struct Vm {
    id: u32,
    name: String,
    ctx: Mutex<VmContext>,
    /// How many times `ctx`'s lock was released ([`CtxGuard`]): a vCPU that
    /// read the devices under the lock knows nothing changed while this
    /// stays the same.
    releases: AtomicU64,
    /// Guest memory and its nested page tables.
    pub partition: Partition,
    links: Vec<VcpuLink>,
    /// vCPUs not finished yet.
    left: AtomicU32,
    /// One local APIC per vCPU (none in a VM with one vCPU: it has the PC's
    /// 8259 PIC alone, as before).
    apics: Vec<Mutex<LocalApic>>,
}

/// TSC ticks per tick of the virtual APIC timer's clock: the core crystal
/// clock CPUID leaf 0x15 reports is TSC / 100.
pub const APIC_TIMER_TSC_PER_TICK: u32 = 100;

// A VM has at most one vCPU per CPU, and an interrupt's targets are a u64
// mask of vCPU indices (`Vm::deliver`).
const _: () = assert!(crate::percpu::MAX_CPUS <= 64);

/// The VM's devices, locked ([`Vm::ctx`]); letting go counts a release.
pub struct CtxGuard<'a> {
    guard: MutexGuard<'a, VmContext>,
    releases: &'a AtomicU64,
}

impl CtxGuard<'_> {
    /// What [`Vm::releases`] reads once this guard is dropped (no other
    /// holder can count one before).
    pub fn releases_after(&self) -> u64 {
        self.releases.load(Ordering::Relaxed) + 1
    }
}

impl core::ops::Deref for CtxGuard<'_> {
    type Target = VmContext;
    fn deref(&self) -> &VmContext {
        &self.guard
    }
}

impl core::ops::DerefMut for CtxGuard<'_> {
    fn deref_mut(&mut self) -> &mut VmContext {
        &mut self.guard
    }
}

impl Drop for CtxGuard<'_> {
    fn drop(&mut self) {
        // Counted while still holding the lock (the guard field is dropped
        // after this): a reader that sees the new count sees the changes.
        let n = self.releases.load(Ordering::Relaxed);
        self.releases.store(n + 1, Ordering::Release);
    }
}

impl Vm {
    /// A VM whose vCPU i runs on `cpus[i]` (at least one). With more than
    /// one vCPU, vCPU i gets a local APIC with ID i (vCPU 0 the BSP), and
    /// the VM an I/O APIC.
    pub fn new(ctx: VmContext, partition: Partition, cpus: &[usize]) -> Vm {
        let apics: Vec<Mutex<LocalApic>> = if cpus.len() > 1 {
            (0..cpus.len())
                .map(|i| Mutex::new(LocalApic::new(i as u32, i == 0, APIC_TIMER_TSC_PER_TICK)))
                .collect()
        } else {
            Vec::new()
        };
        let mut ctx = ctx;
        if cpus.len() > 1 {
            // The I/O APIC's ID follows the local APICs'.
            ctx.enable_ioapic(cpus.len() as u8);
        }
        Vm {
            apics,
            id: ctx.id(),
            name: String::from(ctx.name()),
            ctx: Mutex::new(ctx),
            releases: AtomicU64::new(0),
            partition,
            links: cpus
                .iter()
                .map(|&cpu| VcpuLink {
                    cpu,
                    mail: AtomicU32::new(0),
                    sipi_vector: AtomicU32::new(0),
                })
                .collect(),
            left: AtomicU32::new(cpus.len() as u32),
        }
    }

    /// The VM's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The devices, console and statistics, locked. Never held while a
    /// guest runs, nor while taking it again (spin locks do not nest).
    pub fn ctx(&self) -> CtxGuard<'_> {
        CtxGuard {
            guard: self.ctx.lock(),
            releases: &self.releases,
        }
    }

    /// How many times the VM's lock was released so far; while the count
    /// stays, nothing under it changed. [`CtxGuard::releases_after`] tells
    /// the holder what the count will be once it lets go.
    #[inline]
    pub fn releases(&self) -> u64 {
        self.releases.load(Ordering::Acquire)
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.links.len()
    }

    /// vCPU `index`'s link.
    pub fn link(&self, index: usize) -> Option<&VcpuLink> {
        self.links.get(index)
    }

    /// Posts `bits` to vCPU `index` and wakes its CPU (unless that is the
    /// calling CPU, which looks at the mailbox before its next entry). The
    /// wake IPI is what makes a vCPU running there look: its loop reads
    /// the mailbox only in the full entry checks, which the IPI's
    /// host-interrupt exit brings about.
    pub fn post(&self, index: usize, bits: u32) {
        if let Some(link) = self.links.get(index) {
            link.mail.fetch_or(bits, Ordering::AcqRel);
            note_news(link.cpu);
            crate::smp::wake_cpu(link.cpu);
        }
    }

    /// Takes vCPU `index`'s mailbox before an entry. A start-up IPI outside
    /// wait-for-SIPI is dropped, as on hardware; one that came with an INIT
    /// is kept for the wait that follows.
    pub fn take_mail(&self, index: usize) -> Mail {
        let Some(link) = self.links.get(index) else {
            return Mail::Nothing;
        };
        let bits = link.mail.swap(0, Ordering::AcqRel);
        if bits & mail::STOP != 0 {
            if let Some(reason) = self.ctx().stop_reason().copied() {
                return Mail::Stop(reason);
            }
        }
        if bits & mail::INIT != 0 {
            link.mail.fetch_or(bits & mail::SIPI, Ordering::AcqRel);
            if let Some(apic) = self.apics.get(index) {
                apic.lock().init();
            }
            return Mail::Init;
        }
        if bits & mail::NMI != 0 {
            return Mail::Nmi;
        }
        Mail::Nothing
    }

    /// Takes the mailbox of vCPU `index`, which waits for a start-up IPI.
    pub fn take_startup(&self, index: usize) -> Startup {
        let Some(link) = self.links.get(index) else {
            return Startup::Wait;
        };
        let bits = link.mail.swap(0, Ordering::AcqRel);
        if let Some(reason) = self.ctx().stop_reason().copied() {
            return Startup::Stop(reason);
        }
        if bits & mail::SIPI == 0 {
            return Startup::Wait;
        }
        Startup::Sipi(link.sipi_vector.load(Ordering::Acquire) as u8)
    }

    /// Posts [`mail::STOP`] to every vCPU but `except`.
    pub fn stop_others(&self, except: usize) {
        for index in (0..self.links.len()).filter(|&i| i != except) {
            self.post(index, mail::STOP);
        }
    }

    /// The VM's memory, once no vCPU is left.
    pub fn into_partition(self) -> Partition {
        self.partition
    }

    /// vCPU `index`'s local APIC, in a VM that has them.
    pub fn apic(&self, index: usize) -> Option<&Mutex<LocalApic>> {
        self.apics.get(index)
    }

    /// RDMSR of an APIC MSR by vCPU `index`; `None` without local APICs.
    pub fn apic_msr_read(&self, index: usize, msr: u32) -> Option<Result<u64, ApicFault>> {
        let now = crate::arch::rdtsc();
        let apic = self.apics.get(index)?.lock();
        Some(match msr {
            lapic::APIC_BASE_MSR => Ok(apic.read_apic_base()),
            lapic::IA32_TSC_DEADLINE => Ok(apic.read_tsc_deadline(now)),
            _ => apic.msr_read(msr, now),
        })
    }

    /// WRMSR of an APIC MSR by vCPU `index`: the APIC's answer, an IPI it
    /// sends delivered; `Ok(Some(vector))` is an EOI for the I/O APIC.
    pub fn apic_msr_write(
        &self,
        index: usize,
        msr: u32,
        value: u64,
    ) -> Option<Result<Option<u8>, ApicFault>> {
        let now = crate::arch::rdtsc();
        let out = {
            let mut apic = self.apics.get(index)?.lock();
            match msr {
                lapic::APIC_BASE_MSR => apic.write_apic_base(value).map(|()| ApicOutput::None),
                lapic::IA32_TSC_DEADLINE => {
                    apic.write_tsc_deadline(value, now);
                    Ok(ApicOutput::None)
                }
                _ => apic.msr_write(msr, value, now),
            }
        };
        Some(out.map(|out| self.carry_out(index, out)))
    }

    /// Whether `gpa` is in vCPU `index`'s xAPIC page (its APIC in xAPIC
    /// mode).
    pub fn apic_mmio_claims(&self, index: usize, gpa: u64) -> bool {
        self.apics.get(index).is_some_and(|a| {
            let apic = a.lock();
            apic.mmio_enabled() && gpa & !0xFFF == apic.base()
        })
    }

    /// A 32-bit access to vCPU `index`'s xAPIC page: the value read, and
    /// an EOI for the I/O APIC (an IPI it sends is delivered).
    pub fn apic_mmio(&self, index: usize, gpa: u64, write: Option<u32>) -> (u32, Option<u8>) {
        let now = crate::arch::rdtsc();
        let Some(apic) = self.apics.get(index) else {
            return (u32::MAX, None);
        };
        let offset = (gpa & 0xFFF) as u32;
        match write {
            None => (apic.lock().mmio_read(offset, now), None),
            Some(value) => {
                let out = apic.lock().mmio_write(offset, value, now);
                (0, self.carry_out(index, out))
            }
        }
    }

    /// What a local APIC sent: an IPI to the VM's own vCPUs is delivered;
    /// the EOI of a level-triggered vector is returned for the I/O APIC
    /// (in the VM's context).
    fn carry_out(&self, from: usize, out: ApicOutput) -> Option<u8> {
        match out {
            ApicOutput::None => None,
            ApicOutput::Ipi(msg) => {
                self.deliver(Some(from), msg);
                None
            }
            ApicOutput::Eoi { vector } => Some(vector),
        }
    }

    /// Delivers what the I/O APIC sent (device interrupts) to the local
    /// APICs. Called with the context locked, after anything that may
    /// change an IRQ line.
    #[inline]
    pub fn deliver_device_interrupts(&self, ctx: &mut VmContext) {
        if ctx.has_apic_messages() {
            for msg in ctx.take_apic_messages() {
                self.deliver(None, msg);
            }
        }
    }

    /// Delivers an interrupt message to the VM's local APICs it names
    /// (`from`: the sending vCPU, for the shorthands; `None` for the I/O
    /// APIC). Fixed vectors go into the targets' IRR; NMI, INIT and SIPI
    /// to their mailboxes; SMI and ExtINT messages are dropped (no SMM,
    /// and the PIC reaches vCPU 0 through LINT0). Lowest priority goes to
    /// the matching APIC with the lowest priority.
    pub fn deliver(&self, from: Option<usize>, msg: InterruptMessage) {
        // One bit per vCPU: a VM has at most one vCPU per CPU (see the
        // assertion at `APIC_TIMER_TSC_PER_TICK`).
        let mut mask = 0u64;
        for (i, apic) in self.apics.iter().enumerate() {
            if lapic::matches(&apic.lock(), msg.dest, Some(i) == from) {
                mask |= 1 << i;
            }
        }
        if msg.mode == DeliveryMode::LowestPriority && mask.count_ones() > 1 {
            // One target: the lowest PPR (ties: the lowest index).
            let mut best: Option<(u8, usize)> = None;
            for i in (0..self.apics.len()).filter(|i| mask & (1 << i) != 0) {
                let ppr = self.apics[i].lock().ppr();
                if best.is_none_or(|(p, _)| ppr < p) {
                    best = Some((ppr, i));
                }
            }
            mask = best.map_or(0, |(_, i)| 1 << i);
        }
        for i in (0..self.apics.len()).filter(|i| mask & (1 << i) != 0) {
            let bits = match msg.mode {
                DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                    if !self.apics[i]
                        .lock()
                        .accept_fixed(msg.vector, msg.level_triggered)
                    {
                        continue;
                    }
                    mail::INTERRUPT
                }
                DeliveryMode::Nmi => mail::NMI,
                DeliveryMode::Init if msg.assert => mail::INIT,
                DeliveryMode::StartUp => {
                    if let Some(link) = self.links.get(i) {
                        link.sipi_vector
                            .store(u32::from(msg.vector), Ordering::Release);
                    }
                    mail::SIPI
                }
                DeliveryMode::Init | DeliveryMode::Smi | DeliveryMode::ExtInt => continue,
            };
            self.post(i, bits);
        }
    }

    /// The TSC at which vCPU `index`'s APIC timer next fires, if armed.
    pub fn apic_deadline(&self, index: usize) -> Option<u64> {
        self.apics.get(index)?.lock().next_deadline()
    }

    /// Whether the PIC's interrupts reach vCPU `index`: vCPU 0, through
    /// LINT0 in ExtINT mode or with its APIC disabled (a VM without local
    /// APICs: always).
    pub fn extint_reaches(&self, index: usize) -> bool {
        index == 0 && self.apics.first().is_none_or(|a| a.lock().extint_allowed())
    }

    /// Fires vCPU `index`'s APIC timer if due at `now`; its next deadline.
    pub fn apic_tick(&self, index: usize, now: u64) -> Option<u64> {
        let mut apic = self.apics.get(index)?.lock();
        apic.advance(now);
        apic.next_deadline()
    }

    /// Whether vCPU `index`'s APIC has an interrupt it can take now (the
    /// guest's IF aside): a halted vCPU with one does not sleep.
    pub fn apic_pending(&self, index: usize) -> bool {
        self.apics
            .get(index)
            .is_some_and(|a| a.lock().pending_vector().is_some())
    }

    /// Counts one vCPU as finished; true for the last one.
    pub fn finish_vcpu(&self) -> bool {
        self.left.fetch_sub(1, Ordering::AcqRel) == 1
    }
}
