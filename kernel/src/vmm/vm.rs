//! A VM as its vCPUs share it: memory, devices and console, and a mailbox
//! per vCPU through which the others reach it.
//!
//! A VM with several vCPUs runs them on several CPUs at once (vCPU i on the
//! i-th CPU of its `cpus` list). What they share lives here, behind an
//! [`alloc::sync::Arc`]:
//!
//! - the partition (guest memory and its EPT/NPT): read and written by every
//!   vCPU's exits through `&Partition`; released when the last vCPU ends;
//! - the [`VmContext`] (device models, console, statistics, the stop
//!   reason) behind one spin lock, taken for the handling of one exit and
//!   for the checks before an entry, never while a guest runs. A VM with one
//!   vCPU takes it uncontended (an atomic exchange and a store);
//! - one [`VcpuLink`] per vCPU: the CPU it runs on and a mailbox word. A
//!   vCPU (or the host) that wants another vCPU to notice something (the VM
//!   stopped, an interrupt for it, INIT, SIPI) sets a bit there and sends
//!   that CPU the wake IPI; the vCPU's loop tests the word before every
//!   entry (one load), and an idle CPU looks at its vCPUs' words after
//!   every wake-up.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use hvcore::vcpu::VmContext;
use spin::{Mutex, MutexGuard};

use super::partition::Partition;

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
    /// Guest memory and its nested page tables.
    pub partition: Partition,
    links: Vec<VcpuLink>,
    /// vCPUs not finished yet.
    left: AtomicU32,
}

impl Vm {
    /// A VM whose vCPU i runs on `cpus[i]` (at least one).
    pub fn new(ctx: VmContext, partition: Partition, cpus: &[usize]) -> Vm {
        Vm {
            id: ctx.id(),
            name: String::from(ctx.name()),
            ctx: Mutex::new(ctx),
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
    pub fn ctx(&self) -> MutexGuard<'_, VmContext> {
        self.ctx.lock()
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
    /// calling CPU, which looks at the mailbox before its next entry).
    pub fn post(&self, index: usize, bits: u32) {
        if let Some(link) = self.links.get(index) {
            link.mail.fetch_or(bits, Ordering::AcqRel);
            crate::smp::wake_cpu(link.cpu);
        }
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

    /// Counts one vCPU as finished; true for the last one.
    pub fn finish_vcpu(&self) -> bool {
        self.left.fetch_sub(1, Ordering::AcqRel) == 1
    }
}
