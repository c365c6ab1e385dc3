//! Virtual machines: backend bring-up (VT-x or AMD-V, whichever the CPU
//! offers), partitions, vCPUs and the per-CPU scheduling loop.
//!
//! Flow: pick the backend (a clear one-line refusal when the CPU has
//! neither); decide its controls once from the capability MSRs or CPUID;
//! validate the boot package's VMs against this machine
//! (`hvcore::config::check_each`), build each valid VM completely
//! (partition, nested page tables, image, VMCS or VMCB) or not at all, prove
//! that no two partitions share a frame and no hypervisor frame is mapped
//! (a walk of every EPT/NPT), hand each vCPU to the CPU it is pinned to, and
//! run every CPU's round-robin loop (`hvcore::sched`). Slices end by the
//! VMX-preemption timer (VT-x) or the host's LAPIC timer (AMD-V). A stopped
//! VM is reported at once; the others go on. When every VM has stopped (or
//! the run time limit passes) the summary is printed.
//!
//! Exit handling is policy in `hvcore`; the host-testable halves of the
//! backends are in `backend`; [`vtx`] and [`svm`] keep only what needs the
//! hardware.

pub mod console;
pub mod control;
pub mod irq;
pub mod lazy;
pub mod partition;
pub mod platform;
pub mod samples;
pub mod svm;
pub mod time;
pub mod vm;
pub mod vtx;

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use backend::svm::SvmSetup;
use backend::vtx::{HostFeatures, SetupError, VmxSetup};
use hvcore::config::{self, HostRange, MachineLimits, MemoryLimits};
use hvcore::exit::GuestRegs;
use hvcore::package::Package;
use hvcore::sched::{Scheduler, VcpuId};
use hvcore::vcpu::{StopReason, VmContext};
use hvcore::KernelExit;
use samples::SwitchSamples;
use spin::Mutex;
use vmx::VmxCapabilities;

use crate::acpi::Machine;
use crate::percpu::MAX_CPUS;
use partition::{Partition, TablesKind};
use platform::KernelPlatform;
use vtx::enable;

/// How a slice ended. The two that leave the vCPU runnable come first
/// ([`SliceEnd::runnable`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SliceEnd {
    /// The slice's time ran out.
    Preempted,
    /// The guest yielded.
    Yielded,
    /// The guest halted.
    Halted,
    /// The VM stopped (its report is in `vm.stop_report()`).
    Stopped,
    /// The vCPU waits for a start-up IPI (an application processor after
    /// INIT): it sleeps until its mailbox has something.
    WaitForSipi,
}

impl SliceEnd {
    /// Preempted or Yielded: the vCPU is runnable. One compare of the
    /// tag (a `matches!` here becomes part of a jump table over all five).
    #[inline(always)]
    fn runnable(self) -> bool {
        (self as u8) <= SliceEnd::Yielded as u8
    }
}

/// The hardware backend chosen at boot.
#[derive(Clone, Copy)]
enum Backend {
    /// Intel VT-x.
    Vtx(VmxSetup),
    /// AMD-V, with the machine's I/O and MSR permission maps (host-physical).
    Svm {
        setup: SvmSetup,
        iopm: u64,
        msrpm: u64,
    },
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Vtx(_) => "VT-x",
            Backend::Svm { .. } => "AMD-V",
        }
    }

    fn tables(&self) -> TablesKind {
        match self {
            Backend::Vtx(_) => TablesKind::Ept,
            Backend::Svm { .. } => TablesKind::Npt,
        }
    }

    /// What guests may use on this machine.
    fn limits(&self) -> hvcore::arch::GuestLimits {
        match self {
            Backend::Vtx(setup) => setup.limits,
            Backend::Svm { setup, .. } => setup.limits,
        }
    }
}

static BACKEND: spin::Once<Backend> = spin::Once::new();

/// A vCPU of either backend.
pub enum Vcpu {
    /// On VT-x.
    Vtx(vtx::vcpu::Vcpu),
    /// On AMD-V.
    Svm(svm::vcpu::Vcpu),
}

/// Per-CPU facts of either backend.
enum HostCpu {
    Vtx(vtx::vcpu::HostCpu),
    Svm(svm::vcpu::HostCpu),
}

macro_rules! each {
    ($self:expr, $v:ident => $e:expr) => {
        match $self {
            Vcpu::Vtx($v) => $e,
            Vcpu::Svm($v) => $e,
        }
    };
}

impl Vcpu {
    fn vm(&self) -> &vm::Vm {
        each!(self, v => &v.vm)
    }
    /// This vCPU's index in its VM (0: the one that starts at the entry).
    fn index(&self) -> usize {
        each!(self, v => v.index())
    }
    /// Whether another vCPU or the host posted something to this vCPU.
    fn has_mail(&self) -> bool {
        self.vm()
            .link(self.index())
            .is_some_and(|l| l.mail.load(Ordering::Acquire) != 0)
    }
    fn partition(&self) -> &Partition {
        &self.vm().partition
    }
    fn entry(&self) -> u64 {
        each!(self, v => v.entry())
    }
    fn slice_us(&self) -> u32 {
        each!(self, v => v.slice_us())
    }
    fn lazy_mut(&mut self) -> (&mut lazy::LazyState, u64) {
        each!(self, v => v.lazy_mut())
    }
    fn stop(&mut self, reason: StopReason, env: &mut KernelPlatform) {
        each!(self, v => v.stop(reason, env))
    }
    /// Frees the vCPU's control block; the VM stays while others hold it.
    /// The vCPU's last counts go into the VM's statistics first.
    fn release(mut self) -> Arc<vm::Vm> {
        each!(&mut self, v => v.vm.ctx().stats.absorb(&mut v.state.exits));
        each!(self, v => v.release())
    }
    /// Counts a slice of `ticks` that ended at TSC `now`. The vCPU's counts
    /// (slices, exits it handled without the VM's lock) go into the VM's
    /// statistics, under the VM's lock, at most every
    /// [`STATS_EVERY_US`] (and when it is released), and its direct UART
    /// output to the VM's console at every slice's end that has some.
    /// Whether it took the VM's lock (time the TSC at `now` does not show).
    fn record_slice(&mut self, ticks: u64, now: u64, env: &mut KernelPlatform) -> bool {
        each!(self, v => {
            v.state.exits.record_slice(ticks);
            if now < v.stats_due && v.state.console_tx.is_empty() {
                return false;
            }
            v.stats_due = now + tsc_from_us(STATS_EVERY_US);
            let mut ctx = v.vm.ctx();
            ctx.stats.absorb(&mut v.state.exits);
            v.state.drain_console(&mut ctx, &mut env.with(&v.vm.partition));
            true
        })
    }
    /// When a halted vCPU's devices will next raise an interrupt (TSC).
    fn wake_tsc(&self) -> Option<u64> {
        each!(self, v => v.clock.wake_tsc())
    }
    /// Raw console output while the host console is attached to the VM;
    /// whether the mode changed.
    fn set_raw_console(&mut self, raw: bool, env: &mut KernelPlatform) -> bool {
        each!(self, v => v.vm.ctx().set_raw_console(raw, &mut env.with(&v.vm.partition)))
    }
    /// Typed input for the VM's UART (its interrupt, when the guest enabled
    /// it, is due at the next entry).
    fn console_input(&mut self, bytes: &[u8], env: &mut KernelPlatform) {
        each!(self, v => {
            let mut ctx = v.vm.ctx();
            ctx.console_input(bytes, &mut env.with(&v.vm.partition));
            v.vm.deliver_device_interrupts(&mut ctx);
            // The UART's character timeout may now be due.
            v.clock.refresh(&ctx);
        })
    }
    /// Runs a slice that ends at TSC `slice_end` (its timer counts a whole
    /// configured slice from the first entry). Inline: one function with
    /// the CPU loop (design note 16).
    #[inline(always)]
    fn run_slice(&mut self, host: &HostCpu, slice_end: u64, env: &mut KernelPlatform) -> SliceEnd {
        match (self, host) {
            (Vcpu::Vtx(v), HostCpu::Vtx(h)) => v.run_slice(h, slice_end, env),
            (Vcpu::Svm(v), HostCpu::Svm(h)) => v.run_slice(h, slice_end, env),
            _ => panic!("a vCPU of one backend on a CPU set up for the other"),
        }
    }
}

/// The vCPUs one physical CPU runs.
struct CpuWork(Vec<Vcpu>);

// SAFETY: a CpuWork is built on one CPU and handed over once to the CPU its
// vCPUs are pinned to, which is from then on their only user. What a vCPU
// shares with the other vCPUs of its VM (`vm::Vm`) is behind atomics and a
// lock; its control block and registers are used by its own CPU alone.
unsafe impl Send for CpuWork {}

/// VMs built and not yet ended for good (a restart ends one and builds
/// another).
static LIVE_VMS: AtomicU32 = AtomicU32::new(0);

/// vCPUs handed to a CPU while its loop runs (a VM created, started or
/// restarted on another CPU has vCPUs here); taken between two slices.
static ADOPT: [Mutex<Option<CpuWork>>; MAX_CPUS] = [const { Mutex::new(None) }; MAX_CPUS];

/// Hands `v` to CPU `cpu`'s loop (its wake IPI makes an idle CPU look).
fn hand_over(cpu: usize, v: Vcpu) {
    let Some(slot) = ADOPT.get(cpu) else {
        panic!("vCPU handed to CPU {cpu}, beyond MAX_CPUS");
    };
    slot.lock()
        .get_or_insert_with(|| CpuWork(Vec::new()))
        .0
        .push(v);
    vm::note_news(cpu);
    crate::smp::wake_cpu(cpu);
}

/// The final word on one VM, collected for the summary.
struct VmSummary {
    name: String,
    cpu: usize,
    report: String,
    slices: u64,
    guest_us: u64,
    exits: u64,
}

static WORK: [Mutex<Option<CpuWork>>; MAX_CPUS] = [const { Mutex::new(None) }; MAX_CPUS];
static WORK_READY: AtomicBool = AtomicBool::new(false);
/// Whether the boot CPU has vCPUs of its own (it counts itself done then).
static WORK_CPU0_HAD_WORK: AtomicBool = AtomicBool::new(false);
static CPUS_DONE: AtomicU32 = AtomicU32::new(0);
static CAPS: spin::Once<VmxCapabilities> = spin::Once::new();
/// Control words and guest limits, decided once when VMX is first enabled.
static SETUP: spin::Once<Result<VmxSetup, SetupError>> = spin::Once::new();
/// The MSR bitmap every VMCS points to (host-physical), built once.
static MSR_BITMAP: spin::Once<u64> = spin::Once::new();
static SUMMARIES: Mutex<Vec<VmSummary>> = Mutex::new(Vec::new());
/// TSC value after which every VM is stopped (0 = no limit).
static DEADLINE: AtomicU64 = AtomicU64::new(0);
/// Bumped when the console asks for statistics; each CPU prints its VMs'.
static STATS_REQUEST: AtomicU32 = AtomicU32::new(0);
/// Set when the console asks to stop every VM.
static STOP_ALL: AtomicBool = AtomicBool::new(false);

pub(crate) use time::{ns_from_tsc, tsc_from_ns, tsc_from_us, us_from_tsc};

/// Starts the VMs of the package and runs them to completion.
pub fn run(package: &'static Package<'static>, _machine: &Machine) -> KernelExit {
    PACKAGE.call_once(|| package);
    time::init();
    let backend = if enable::detect().is_ok() {
        match start_vtx() {
            Ok(b) => b,
            Err(exit) => return exit,
        }
    } else if let Ok(caps) = svm::enable::probe() {
        match start_svm(&caps) {
            Ok(b) => b,
            Err(exit) => return exit,
        }
    } else {
        report_no_virtualization();
        return KernelExit::Success;
    };
    let backend = *BACKEND.call_once(|| backend);
    log::info!("virtualization backend: {}", backend.name());

    let cpus = crate::smp::online_cpus().max(1);
    // Issue 11 hook: the control protocol (COM2, `:` on the console).
    let control_on = package.options.control;
    if control_on {
        control::init();
    }
    let vcpus = build_vms(package, cpus, &backend);
    if control_on {
        for (v, cpu) in vcpus.iter().filter(|(v, _)| v.index() == 0) {
            if let Some(spec) = package.vms.get(v.vm().id() as usize) {
                control::register_boot_vm(v.vm().id(), spec, *cpu);
            }
        }
    }
    if vcpus.is_empty() && !control_on {
        log::warn!("no VM could be started");
        return KernelExit::Success;
    }
    if let Err(msg) = check_partitions(&vcpus) {
        panic!("partition check failed: {msg}");
    }
    if let Some(ms) = package.options.stop_after_ms {
        DEADLINE.store(
            crate::arch::rdtsc() + tsc_from_us(ms as u64 * 1000),
            Ordering::Relaxed,
        );
    }

    // Hand each vCPU to its CPU.
    let mut per_cpu: Vec<Vec<Vcpu>> = (0..cpus).map(|_| Vec::new()).collect();
    for (v, cpu) in vcpus {
        per_cpu[cpu].push(v);
    }
    let mut busy_cpus = 0;
    for (cpu, list) in per_cpu.into_iter().enumerate() {
        // With the control protocol every CPU runs a loop (VMs may be created there).
        if !list.is_empty() || control_on {
            busy_cpus += 1;
            if cpu == 0 {
                WORK_CPU0_HAD_WORK.store(true, Ordering::Relaxed);
            }
            *WORK[cpu].lock() = Some(CpuWork(list));
        }
    }
    WORK_READY.store(true, Ordering::Release);
    // Wake the application processors waiting in `ap_main`.
    crate::smp::wake_others();

    if package.options.serial_input {
        console::announce_keys();
    }
    if let Some(host) = host_cpu(0, &backend) {
        cpu_loop(0, &host, package.options.serial_input);
    }
    if WORK_CPU0_HAD_WORK.load(Ordering::Relaxed) {
        CPUS_DONE.fetch_add(1, Ordering::Release);
    }
    // CPU 0 keeps reading the console while the other CPUs run their VMs.
    let mut next_poll = 0;
    while (CPUS_DONE.load(Ordering::Acquire) as usize) < busy_cpus {
        let now = crate::arch::rdtsc();
        if package.options.serial_input && now >= next_poll {
            poll_console();
            next_poll = now + tsc_from_us(1000);
        }
        control::poll();
        core::hint::spin_loop();
    }
    print_summary();
    if control_on {
        control::flush();
    }
    KernelExit::Success
}

/// The one line a machine without VT-x and AMD-V gets.
fn report_no_virtualization() {
    let vtx = enable::detect()
        .err()
        .map(|e| alloc::format!("{e}"))
        .unwrap_or_default();
    let amd = match svm::enable::probe() {
        Err(e) => alloc::format!("{e}"),
        Ok(_) => String::new(),
    };
    crate::println!("no hardware virtualization: {vtx}; AMD-V not available: {amd}");
    log::info!("no VMs started: this CPU cannot run them");
}

/// VT-x on the boot CPU: capabilities, boot-time decisions, VMXON.
fn start_vtx() -> Result<Backend, KernelExit> {
    let caps = match enable::capabilities() {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}; no VMs started");
            return Err(KernelExit::Failure);
        }
    };
    log::info!(
        "VT-x: VMCS revision {:#x}, true controls {}, EPT {:?}, preemption timer rate 2^{}",
        caps.basic.revision_id(),
        caps.basic.true_controls(),
        caps.ept_vpid,
        caps.misc.preemption_timer_rate()
    );
    let caps = *CAPS.call_once(|| caps);
    let setup = match decide_setup(&caps) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}; no VMs started");
            return Err(KernelExit::Failure);
        }
    };
    for (feature, consequence) in setup.missing() {
        log::warn!("VT-x: no {feature}: {consequence}");
    }
    log::info!(
        "VT-x set-up: VPID {}, unrestricted guest {}, TPR shadow {}, guest XCR0 allowed {:#x}",
        setup.optional.vpid,
        setup.optional.unrestricted_guest,
        setup.optional.tpr_shadow,
        setup.limits.xcr0_allowed
    );
    if let Err(e) = enable_on_boot_cpu(&caps) {
        log::error!("{e}; no VMs started");
        return Err(match e {
            enable::VmxError::DisabledByFirmware => KernelExit::Success,
            _ => KernelExit::Failure,
        });
    }
    log::info!("VMX operation on CPU 0 (VMXON done)");
    Ok(Backend::Vtx(setup))
}

/// AMD-V on the boot CPU: boot-time decisions, permission maps, EFER.SVME.
fn start_svm(caps: &::svm::SvmCapabilities) -> Result<Backend, KernelExit> {
    let xcr0_supported = lazy::init_this_cpu();
    let setup = match SvmSetup::from_caps(
        caps,
        HostFeatures {
            xcr0_supported,
            phys_addr_bits: phys_addr_bits(),
        },
    ) {
        Ok(s) => s,
        Err(e) => {
            crate::println!("{e}");
            log::info!("no VMs started: AMD-V is present but cannot run them");
            return Err(KernelExit::Success);
        }
    };
    for (feature, consequence) in setup.missing() {
        log::warn!("AMD-V: no {feature}: {consequence}");
    }
    log::info!(
        "AMD-V set-up: {} ASIDs, guest XCR0 allowed {:#x}, features {:?}",
        setup.max_asid,
        setup.limits.xcr0_allowed,
        caps.features
    );
    let alloc_map = |frames: usize| crate::mm::alloc_zeroed(frames, 1).map(|r| r.start);
    let (Ok(iopm), Ok(msrpm)) = (alloc_map(3), alloc_map(2)) else {
        log::error!("out of memory for the AMD-V permission maps; no VMs started");
        return Err(KernelExit::Failure);
    };
    // SAFETY: both ranges were just allocated for the maps, contiguous and
    // mapped through the physical-memory window, used by nothing else.
    unsafe {
        backend::svm::perm::build_iopm(
            &mut *crate::mm::phys_to_virt(iopm).as_mut_ptr::<[u8; ::svm::IOPM_SIZE]>(),
        );
        if backend::svm::perm::build_msrpm(
            &mut *crate::mm::phys_to_virt(msrpm).as_mut_ptr::<[u8; ::svm::MSRPM_SIZE]>(),
        )
        .is_err()
        {
            panic!("an MSR of the pass-through list lies outside the MSR permission map");
        }
    }
    if let Err(e) = svm::enable::enable_on_this_cpu(0) {
        log::error!("{e}; no VMs started");
        return Err(KernelExit::Failure);
    }
    log::info!("AMD-V on CPU 0 (EFER.SVME, host save area)");
    Ok(Backend::Svm { setup, iopm, msrpm })
}

fn phys_addr_bits() -> u8 {
    let max_ext = crate::arch::cpuid(0x8000_0000, 0).eax;
    if max_ext >= 0x8000_0008 {
        (crate::arch::cpuid(0x8000_0008, 0).eax & 0xFF) as u8
    } else {
        36
    }
}

/// This CPU's backend facts (after the backend is on here).
fn host_cpu(cpu: usize, backend: &Backend) -> Option<HostCpu> {
    match backend {
        Backend::Vtx(setup) => Some(HostCpu::Vtx(vtx_host_cpu(setup))),
        Backend::Svm { setup, .. } => match svm::enable::enable_on_this_cpu(cpu) {
            Ok(host_vmcb) => Some(HostCpu::Svm(svm::vcpu::HostCpu {
                setup: *setup,
                host_vmcb,
                cpu: cpu as u32,
            })),
            Err(e) => {
                log::error!("CPU {cpu}: {e}");
                None
            }
        },
    }
}

/// The boot-time VT-x decisions (once): control words from the capability
/// MSRs, guest limits from CPUID, and the MSR bitmap page.
fn decide_setup(caps: &VmxCapabilities) -> Result<VmxSetup, SetupError> {
    let setup = *SETUP.call_once(|| {
        let xcr0_supported = lazy::init_this_cpu();
        VmxSetup::from_caps(
            caps,
            HostFeatures {
                xcr0_supported,
                phys_addr_bits: phys_addr_bits(),
            },
        )
    });
    let setup = setup?;
    MSR_BITMAP.call_once(|| {
        let frame = crate::mm::alloc_frame_zeroed()
            .unwrap_or_else(|e| panic!("no frame for the MSR bitmap: {e:?}"));
        let page = crate::mm::phys_to_virt(frame).as_mut_ptr::<[u8; 4096]>();
        // SAFETY: the frame was just allocated for the bitmap, is mapped
        // through the physical-memory window and is used by nothing else.
        backend::vtx::msr_bitmap::build(unsafe { &mut *page }, setup.optional.rdtscp);
        frame
    });
    Ok(setup)
}

/// The per-CPU facts a VT-x vCPU needs on the calling CPU.
fn vtx_host_cpu(setup: &VmxSetup) -> vtx::vcpu::HostCpu {
    vtx::vcpu::HostCpu {
        tables: crate::smp::tables_of_current_cpu(),
        setup: *setup,
        msr_bitmap: MSR_BITMAP
            .get()
            .copied()
            .unwrap_or_else(|| panic!("MSR bitmap used before decide_setup")),
    }
}

/// VMXON on the boot CPU, once (self-tests and `run` may both ask).
fn enable_on_boot_cpu(caps: &VmxCapabilities) -> Result<(), enable::VmxError> {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.load(Ordering::Relaxed) {
        return Ok(());
    }
    enable::enable_on_this_cpu(caps)?;
    DONE.store(true, Ordering::Relaxed);
    Ok(())
}

/// A deliberately broken VMCS field, for the VM-entry failure self-tests.
#[derive(Clone, Copy, Debug)]
pub enum Breakage {
    /// Guest CS marked unusable: an invalid guest state (SDM 27.3.1.2), so
    /// VM entry fails with exit reason 33.
    GuestState,
    /// Every secondary control set, reserved bits included: VMLAUNCH fails
    /// with VM-instruction error 7 (SDM 27.2.1.1).
    Controls,
}

/// Runs a one-off VM whose VMCS has `breakage` and returns its stop report:
/// a failed VM entry must be decoded and reported, never hang.
pub fn entry_failure_report(breakage: Breakage) -> Result<String, String> {
    use alloc::format;
    // The self-tests run before `run`: the time base must be set up here too.
    time::init();
    enable::detect().map_err(|e| format!("{e}"))?;
    let caps = *CAPS
        .call_once(|| enable::capabilities().unwrap_or_else(|e| panic!("VMX capabilities: {e}")));
    let setup = decide_setup(&caps).map_err(|e| format!("{e}"))?;
    enable_on_boot_cpu(&caps).map_err(|e| format!("{e}"))?;
    let part = Partition::new(2 << 20, None, TablesKind::Ept).map_err(|e| format!("{e}"))?;
    let vm = Arc::new(vm::Vm::new(VmContext::new(900, "broken"), part, &[0]));
    let v = vtx::vcpu::Vcpu::new(
        Arc::clone(&vm),
        0,
        0x1000,
        config::GuestMode::Long64,
        10_000,
        (&caps, &setup),
    )
    .map_err(|e| format!("{e}"));
    let mut v = match v {
        Ok(v) => v,
        Err(e) => {
            release_vm(vm);
            return Err(e);
        }
    };
    drop(vm);
    let host = vtx_host_cpu(&setup);
    let (field, value) = match breakage {
        Breakage::GuestState => (vmx::vmcs::GUEST_CS_AR_BYTES.encoding(), 1 << 16),
        Breakage::Controls => (
            vmx::vmcs::SECONDARY_VM_EXEC_CONTROL.encoding(),
            u32::MAX as u64,
        ),
    };
    let result = v
        .overwrite_field_for_selftest(&host, field, value)
        .map_err(|e| format!("{e}"));
    let report = result.map(|()| {
        let mut platform = KernelPlatform::new(0);
        let (lazy, xcr0) = v.lazy_mut();
        lazy.load(xcr0, None);
        let start = crate::arch::rdtsc();
        let end = v.run_slice(&host, start + tsc_from_us(100_000), &mut platform);
        platform.flush_output();
        match (end, v.vm.ctx().stop_report()) {
            (SliceEnd::Stopped, Some(r)) => format!("{r}"),
            _ => String::from("the broken VM was entered and did not stop"),
        }
    });
    release_vm(v.release());
    report
}

/// Validates and builds every VM; returns the vCPUs that start, with their CPU.
fn build_vms(package: &Package<'_>, cpus: u32, backend: &Backend) -> Vec<(Vcpu, usize)> {
    let usable: Vec<HostRange> = crate::mm::usable_ranges()
        .iter()
        .map(|r| HostRange {
            start: r.start,
            end: r.end,
        })
        .collect();
    let (free, _) = crate::mm::counts();
    let mut memory = MemoryLimits::from_ranges(usable);
    // The budget is what is free now, not what the machine has.
    memory.usable_bytes = memory.usable_bytes.min(free as u64 * 4096);
    let limits = MachineLimits {
        cpu_count: Some(cpus),
        memory: Some(memory),
    };
    let checks = config::check_each(&package.vms, &package.image_infos(), &limits);
    let mut started = Vec::new();
    let mut names = Vec::new();
    for (index, (spec, check)) in package.vms.iter().zip(checks).enumerate() {
        if let Err(problems) = check {
            for p in problems {
                log::error!("{p}; not started");
            }
            continue;
        }
        if let Backend::Vtx(setup) = backend {
            if spec.mode == config::GuestMode::Real16 && !setup.optional.unrestricted_guest {
                log::error!("vm \"{}\": real mode needs VT-x unrestricted guest, which this CPU lacks; not started", spec.name);
                continue;
            }
            if spec.cpus.len() > 1 && !setup.optional.unrestricted_guest {
                log::error!("vm \"{}\": {} vCPUs: application processors start in real mode, which needs VT-x unrestricted guest, which this CPU lacks; not started", spec.name, spec.cpus.len());
                continue;
            }
        }
        match build_one(index as u32, spec, package, backend) {
            Ok(list) => {
                if let Some((v, _)) = list.first() {
                    log::info!(
                        "vm {}: {} MiB at host {:#x}, {} vCPU(s) on CPU(s) {:?}, slice {} us, {:?} entry {:#x}",
                        spec.name,
                        spec.memory_bytes >> 20,
                        v.partition().host.start,
                        list.len(),
                        spec.cpus,
                        spec.slice_us,
                        spec.mode,
                        v.entry()
                    );
                }
                names.push(spec.name.clone());
                started.extend(list);
            }
            Err(e) => log::error!("vm \"{}\": {e}; not started", spec.name),
        }
    }
    log::info!(
        "started {} of {} VM(s): {}",
        names.len(),
        package.vms.len(),
        names.join(", ")
    );
    started
}

/// Builds one VM completely or not at all (what was allocated is released).
/// Where a loaded guest starts: its entry point and the registers its boot
/// protocol defines (RSI = zero page for Linux, EAX/EBX for Multiboot).
struct Start {
    entry: u64,
    regs: GuestRegs,
}

/// Copies `spec`'s image (or kernel, initrd and boot information) into the
/// partition, through the loader of its kind; the partition is zero.
fn load_guest(
    spec: &config::VmSpec,
    package: &Package<'_>,
    part: &mut Partition,
) -> Result<Start, String> {
    use alloc::format;
    use hvcore::boot_proto::{linux, multiboot};
    use hvcore::text::Escaped;
    let image = package
        .images
        .get(spec.image as usize)
        .ok_or_else(|| format!("image #{} missing", spec.image))?;
    let name = Escaped(image.name);
    let mut copy = |gpa: u64, bytes: &[u8]| match part.slice_mut(gpa, bytes.len() as u64) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            Ok(())
        }
        None => Err(format!(
            "\"{name}\": {} bytes at {gpa:#x} outside memory",
            bytes.len()
        )),
    };
    let mut regs = GuestRegs::default();
    // A VM with several vCPUs has ACPI tables (MADT: its local APICs and
    // I/O APIC) in the legacy RSDP search area, where a kernel finds them
    // (Linux also through boot_params.acpi_rsdp_addr).
    let acpi = if spec.cpus.len() > 1 {
        Some(acpi_tables(spec).map_err(|e| format!("ACPI tables: {e}"))?)
    } else {
        None
    };
    if let Some(t) = &acpi {
        copy(t.gpa, &t.bytes)?;
    }
    let entry = match spec.mode {
        config::GuestMode::Linux64 => {
            let initrd = match spec.initrd {
                Some(i) => Some(
                    package
                        .images
                        .get(i as usize)
                        .ok_or_else(|| format!("initrd #{i} missing"))?
                        .data,
                ),
                None => None,
            };
            let options = linux::PlanOptions {
                acpi: acpi.as_ref().map(linux::AcpiRegion::of),
            };
            let plan_for = |cmdline: &str| {
                linux::plan_with(
                    image.data,
                    initrd,
                    cmdline.as_bytes(),
                    spec.memory_bytes,
                    &options,
                )
            };
            // A VM with ACPI tables is hardware-reduced: Linux is told the
            // TSC rate rather than left to calibrate (see
            // `linux::with_tsc_khz`); a line the kernel would not take with
            // it boots as given.
            let told = acpi
                .as_ref()
                .and_then(|_| linux::with_tsc_khz(&spec.cmdline, crate::apic::tsc_hz() / 1000))
                .and_then(|line| plan_for(&line).ok());
            let plan = match told {
                Some(plan) => plan,
                None => plan_for(&spec.cmdline).map_err(|e| format!("kernel \"{name}\": {e}"))?,
            };
            for (gpa, bytes) in plan.writes() {
                copy(gpa, bytes)?;
            }
            // 64-bit boot protocol: RSI points at the zero page.
            regs.rsi = plan.rsi;
            plan.entry64
        }
        config::GuestMode::Protected32 => {
            let plan = multiboot::plan(image.data, spec.cmdline.as_bytes(), spec.memory_bytes)
                .map_err(|e| format!("kernel \"{name}\": {e}"))?;
            for (gpa, bytes) in plan.writes() {
                copy(gpa, bytes)?;
            }
            regs.rax = u64::from(plan.eax);
            regs.rbx = u64::from(plan.ebx);
            u64::from(plan.entry)
        }
        config::GuestMode::Long64 | config::GuestMode::Real16 => {
            let plan = hvcore::image::plan(
                image.data,
                image.kind,
                spec.load_addr,
                spec.entry,
                spec.memory_bytes,
            )
            .map_err(|e| format!("image \"{name}\": {e}"))?;
            for seg in &plan.segments {
                copy(seg.gpa, seg.data)?;
            }
            plan.entry
        }
    };
    Ok(Start { entry, regs })
}

/// The ACPI tables of a VM with several vCPUs: vCPU i with APIC ID i, the
/// I/O APIC (ID = vCPU count) at its PC address.
fn acpi_tables(spec: &config::VmSpec) -> Result<hvcore::firmware::acpi::AcpiTables, String> {
    use hvcore::firmware::acpi;
    let ids: Vec<u32> = (0..spec.cpus.len() as u32).collect();
    let cfg = acpi::AcpiConfig {
        apic_ids: &ids,
        ioapic: Some(acpi::IoApicEntry::pc(spec.cpus.len() as u8)),
        oem_id: *b"RUSTHV",
        oem_table_id: *b"RUSTHVVM",
        pm_timer_port: Some(hvcore::devices::pmtimer::PM_TIMER_PORT),
    };
    acpi::build(acpi::DEFAULT_BASE, &cfg).map_err(|e| alloc::format!("{e}"))
}

/// Builds one VM completely or not at all (what was allocated is
/// released): its partition and image, then one vCPU per CPU of its `cpus`
/// (vCPU i runs on `cpus[i]`), returned with their CPUs.
fn build_one(
    id: u32,
    spec: &config::VmSpec,
    package: &Package<'_>,
    backend: &Backend,
) -> Result<Vec<(Vcpu, usize)>, String> {
    use alloc::format;
    let mut part = Partition::new(spec.memory_bytes, spec.host_base, backend.tables())
        .map_err(|e| format!("memory: {e}"))?;
    let start = match load_guest(spec, package, &mut part) {
        Ok(s) => s,
        Err(e) => {
            part.release();
            return Err(e);
        }
    };
    if hvcore::layout::reserved_for(spec.mode) == hvcore::layout::BOOT_RESERVED {
        // The GDT and identity-mapping page tables a 64-bit guest starts
        // with, where images never load (the configuration check refuses
        // them there).
        for (gpa, value) in backend::vtx::setup::long_mode_boot_words() {
            if let Some(b) = part.slice_mut(gpa, 8) {
                b.copy_from_slice(&value.to_le_bytes());
            }
        }
    }
    // Every VM is a PC: UART, PIC, PIT, RTC, keyboard controller, chipset
    // ports, all on the TSC time base.
    let pc = hvcore::devices::pc::PcConfig {
        wall_clock_secs: 0,
        now_ns: ns_from_tsc(crate::arch::rdtsc()),
        memory_bytes: spec.memory_bytes,
    };
    let mut ctx = VmContext::with_pc_devices(id, &spec.name, &pc);
    let cpus: Vec<usize> = spec.cpus.iter().map(|&c| c as usize).collect();
    if cpus.len() > 1 {
        // The ACPI PM timer the FADT names: a hardware-reduced VM's
        // reference clock (Linux calibrates the TSC against it).
        let timer = hvcore::devices::pmtimer::PmTimer::new(pc.now_ns);
        if let Err(e) = ctx.bus_mut().register(alloc::boxed::Box::new(timer)) {
            panic!("the PM timer's ports clash with the PC devices': {e:?}");
        }
    }
    let vm = Arc::new(vm::Vm::new(ctx, part, &cpus));
    let mut built: Vec<(Vcpu, usize)> = Vec::with_capacity(cpus.len());
    for (index, &cpu) in cpus.iter().enumerate() {
        match build_vcpu(&vm, index, spec, &start, backend) {
            Ok(v) => built.push((v, cpu)),
            Err(e) => {
                for (v, _) in built {
                    v.release();
                }
                release_vm(vm);
                return Err(e);
            }
        }
    }
    LIVE_VMS.fetch_add(1, Ordering::AcqRel);
    Ok(built)
}

/// vCPU `index` of `vm`: the first starts at the loaded guest's entry with
/// its boot protocol's registers, the others wait for a start-up IPI.
fn build_vcpu(
    vm: &Arc<vm::Vm>,
    index: usize,
    spec: &config::VmSpec,
    start: &Start,
    backend: &Backend,
) -> Result<Vcpu, String> {
    use alloc::format;
    // CPUID answers for the vCPU, filled once. A VM with one vCPU sees the
    // APIC ID of the CPU it runs on (it has no local APIC of its own); in a
    // VM with several, vCPU i has APIC ID i.
    let cpu = spec.cpus.get(index).copied().unwrap_or(0) as usize;
    let apic_id = if vm.vcpu_count() > 1 {
        index as u32
    } else {
        crate::smp::apic_id_of(cpu).unwrap_or(cpu as u32)
    };
    let host = |leaf, subleaf| {
        let r = crate::arch::cpuid(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    };
    let tsc_hz = crate::apic::tsc_hz();
    let mut cpuid = hvcore::cpuid::CpuidTable::new(
        &|leaf, subleaf| hvcore::cpuid::with_tsc_leaves(&host, tsc_hz, leaf, subleaf),
        apic_id,
        backend.limits().xcr0_allowed,
    );
    if vm.apic(index).is_some() {
        cpuid.set_topology(hvcore::cpuid::Topology {
            apic_id,
            vcpus: vm.vcpu_count() as u32,
        });
    }
    let mut v = match backend {
        Backend::Vtx(setup) => {
            let caps = CAPS
                .get()
                .ok_or_else(|| String::from("VT-x capabilities not read"))?;
            vtx::vcpu::Vcpu::new(
                Arc::clone(vm),
                index,
                start.entry,
                spec.mode,
                spec.slice_us,
                (caps, setup),
            )
            .map(Vcpu::Vtx)
            .map_err(|e| format!("{e}"))?
        }
        Backend::Svm { setup, iopm, msrpm } => {
            // One ASID per VM (0 is the host's).
            let asid = vm.id() + 1;
            svm::vcpu::Vcpu::new(
                Arc::clone(vm),
                index,
                start.entry,
                spec.mode,
                spec.slice_us,
                setup,
                asid,
                (*iopm, *msrpm),
            )
            .map(Vcpu::Svm)
            .map_err(|e| format!("{e}"))?
        }
    };
    each!(&mut v, v => {
        v.state.cpuid = cpuid;
        v.state.join(&vm.ctx(), vm.vcpu_count());
        if index == 0 {
            v.set_start_regs(start.regs);
        } else if let Err(e) = v.state.run_state_mut().wait_for_sipi() {
            panic!("new vCPU in state {:?} ({})", e.from, e.attempted);
        }
    });
    Ok(v)
}

/// Frees a VM whose vCPUs are all released: its partition goes back to the
/// frame allocator.
fn release_vm(vm: Arc<vm::Vm>) {
    match Arc::try_unwrap(vm) {
        Ok(vm) => vm.into_partition().release(),
        Err(vm) => log::error!(
            "vm {}: memory still referenced after its last vCPU ended; not freed",
            vm.name()
        ),
    }
}

/// Walks every VM's EPT or NPT: each mapping must lie inside that VM's
/// partition (so no hypervisor frame is mapped) and partitions must not
/// overlap.
fn check_partitions(vcpus: &[(Vcpu, usize)]) -> Result<(), String> {
    use alloc::format;
    let mut mapped_total = 0u64;
    // One entry per VM (its first vCPU).
    let vms: Vec<&Vcpu> = vcpus
        .iter()
        .map(|(v, _)| v)
        .filter(|v| v.index() == 0)
        .collect();
    for (i, v) in vms.iter().enumerate() {
        let part = &v.partition().host;
        let mut bad = None;
        let mut bytes = 0u64;
        v.partition().tables.walk(|start, len| {
            bytes += len;
            if start < part.start || start + len > part.end {
                bad = Some(start);
            }
        });
        if let Some(addr) = bad {
            return Err(format!(
                "vm {}: nested page tables map host {addr:#x} outside its partition",
                v.vm().name()
            ));
        }
        if bytes != part.len() {
            return Err(format!(
                "vm {}: nested page tables map {bytes} bytes, partition has {}",
                v.vm().name(),
                part.len()
            ));
        }
        for w in &vms[i + 1..] {
            if part.overlaps(&w.partition().host) {
                return Err(format!(
                    "vms {} and {} share host memory",
                    v.vm().name(),
                    w.vm().name()
                ));
            }
        }
        mapped_total += bytes;
    }
    log::info!(
        "partition check: {} VM(s), {} MiB mapped, nested page tables disjoint, no hypervisor frame mapped",
        vms.len(),
        mapped_total >> 20
    );
    Ok(())
}

/// Entry point of an application processor: waits for VM work, then runs it.
pub fn ap_main(cpu: u32) -> ! {
    while !WORK_READY.load(Ordering::Acquire) {
        if crate::smp::stopping() {
            crate::smp::halt_this_cpu();
        }
        // Woken by `smp::wake_others` (IPI on WAKE_VECTOR).
        x86_64::instructions::interrupts::enable_and_hlt();
        x86_64::instructions::interrupts::disable();
    }
    let has_work = WORK[cpu as usize].lock().is_some();
    if has_work {
        lazy::init_this_cpu();
        let enabled = match BACKEND.get() {
            Some(Backend::Vtx(_)) => match CAPS.get().map(enable::enable_on_this_cpu) {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(alloc::format!("{e}")),
                None => Err(String::from("VT-x capabilities not read")),
            },
            Some(Backend::Svm { .. }) => Ok(()),
            None => Err(String::from("no backend chosen")),
        };
        let host = enabled.and_then(|()| {
            BACKEND
                .get()
                .and_then(|b| host_cpu(cpu as usize, b))
                .ok_or_else(|| String::from("backend set-up failed"))
        });
        match host {
            Ok(host) => {
                log::info!("{} on CPU {cpu}", BACKEND.get().map_or("?", Backend::name));
                cpu_loop(cpu as usize, &host, false);
            }
            Err(e) => {
                log::error!("CPU {cpu}: {e}; its VMs do not run");
                stop_unrunnable(cpu as usize);
            }
        }
        CPUS_DONE.fetch_add(1, Ordering::Release);
    }
    crate::smp::park(cpu)
}

fn stop_unrunnable(cpu: usize) {
    if let Some(CpuWork(list)) = WORK[cpu].lock().take() {
        for v in list {
            let report = alloc::format!(
                "vm {} not run: virtualization unavailable on CPU {cpu}",
                v.vm().name()
            );
            // Its other vCPUs (on CPUs that work) stop too.
            let mut platform = KernelPlatform::new(0);
            v.vm()
                .ctx()
                .stop(StopReason::HostStop, &mut platform.with(&v.vm().partition));
            platform.flush_output();
            v.vm().stop_others(v.index());
            let vm = v.release();
            if vm.finish_vcpu() {
                SUMMARIES.lock().push(VmSummary {
                    name: vm.name().into(),
                    cpu,
                    report,
                    slices: 0,
                    guest_us: 0,
                    exits: 0,
                });
                release_vm(vm);
                LIVE_VMS.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// One CPU's scheduling loop: round-robin over its vCPUs until all stopped.
fn cpu_loop(cpu: usize, host: &HostCpu, serial_input: bool) {
    let Some(CpuWork(list)) = WORK[cpu].lock().take() else {
        return;
    };
    // A stopped VM's slot empties: its memory goes back to the frame
    // allocator at once.
    let mut vcpus: Vec<Option<Vcpu>> = Vec::new();
    // Switched only when another vCPU runs next.
    let mut lazy_owner = LazyOwner::NONE;
    let mut platform =
        KernelPlatform::new(crate::percpu::try_current().map(|p| p.apic_id).unwrap_or(0));
    let default_slice = tsc_from_us(10_000);
    let Ok(mut sched) = Scheduler::new(default_slice) else {
        return;
    };
    let Some(news) = vm::news(cpu) else {
        return;
    };
    for v in list {
        place(&mut vcpus, &mut sched, v);
    }
    // The host console can attach to these VMs (by id).
    console::cpu_started(
        cpu,
        platform.apic_id,
        vcpus
            .iter()
            .flatten()
            .filter(|v| v.index() == 0)
            .map(|v| (v.vm().id(), v.vm().name())),
    );
    // Host time between two slices, in bench builds (see `samples`).
    let mut samples = SwitchSamples::new();
    // Looked at every HOST_LOOK_US (see `HostWork`).
    let mut host_work = HostWork {
        cpu,
        serial_input,
        next_look: 0,
        stats_seen: 0,
        raw_vm: None,
    };
    // The TSC at the loop's top: after a yield or a preemption with nothing
    // slow after it, the one read when the slice ended (a few instructions
    // earlier); read anew otherwise.
    let mut now = crate::arch::rdtsc();
    loop {
        let look = now >= host_work.next_look;
        if look {
            host_work.before_news(now, &mut vcpus, &mut sched, &mut lazy_owner, &mut platform);
        }
        // vCPUs handed over by other CPUs (a VM started or restarted there
        // with a vCPU here), and mail for sleeping ones (an IPI, a stop).
        if news.take() {
            adopt(cpu, &mut vcpus, &mut sched);
            for (i, v) in vcpus.iter().enumerate() {
                if v.as_ref().is_some_and(Vcpu::has_mail) {
                    let _ = sched.wake(VcpuId(i as u32));
                }
            }
        }
        if look && host_work.after_news(now, &mut vcpus, &mut sched, &mut platform) {
            // The last vCPUs of VMs shared with other CPUs end there.
            break;
        }
        let Some(hvcore::sched::Pick { id, slice }) = sched.pick(now) else {
            // A CPU whose vCPUs all stopped stays while a VM lives: a VM
            // restarted on another CPU may hand it a vCPU again.
            if sched.all_stopped() && !control::enabled() && LIVE_VMS.load(Ordering::Acquire) == 0 {
                break;
            }
            // Idle: every vCPU halted. Sleep until the earliest wake-up on the
            // LAPIC timer (a wake IPI or a stop request end the sleep too).
            samples.slept();
            let mut wake = sched.next_wake().unwrap_or(now + default_slice);
            if cpu == 0 && control::enabled() {
                // CPU 0 looks at COM2 at least every millisecond.
                wake = wake.min(now + tsc_from_us(1000));
            }
            crate::apic::one_shot_tsc(wake.saturating_sub(now));
            x86_64::instructions::interrupts::enable_and_hlt();
            x86_64::instructions::interrupts::disable();
            crate::apic::stop_timer();
            host_work.next_look = 0;
            now = crate::arch::rdtsc();
            continue;
        };
        let i = id.0 as usize;
        let next = if lazy_owner.is(i) {
            vcpus.get_mut(i).and_then(Option::as_mut)
        } else {
            let prev = core::mem::replace(&mut lazy_owner, LazyOwner(i));
            // A CPU's first slice has no lazy owner before it (nor has the
            // one after its owner stopped): where boot time is taken. The
            // slice is timed from after that report: printing it (on the
            // framebuffer too) must not count as the vCPU's time.
            if prev == LazyOwner::NONE {
                now = first_guest_slice(now);
            }
            switch_lazy(&mut vcpus, prev, i)
        };
        let Some(v) = next else {
            now = crate::arch::rdtsc();
            continue;
        };
        samples.slice_starts();
        let end = v.run_slice(host, now + slice, &mut platform);
        let t = crate::arch::rdtsc();
        let locked = v.record_slice(t - now, t, &mut platform);
        let printed = platform.has_output();
        samples.slice_ended(t, printed || matches!(end, SliceEnd::Stopped));
        platform.flush_output();
        // Both that leave the vCPU runnable first: one compare, no table.
        if end.runnable() {
            let _ = sched.on_yield(id);
            // The next slice is timed and accounted from here: the slice's
            // end TSC unless the VM's lock or printing took time since
            // (else the next vCPU would be charged for it).
            now = if locked || printed {
                crate::arch::rdtsc()
            } else {
                t
            };
            continue;
        }
        let _ = match end {
            SliceEnd::Preempted | SliceEnd::Yielded => Ok(()),
            // A halted vCPU sleeps until its devices raise an interrupt
            // (its PIT tick), or for a slice when none will.
            // A local APIC interrupt that came before the HLT wakes it at once.
            SliceEnd::Halted => {
                let wake = match vcpus[i].as_ref() {
                    Some(v) if v.vm().apic_pending(v.index()) => t,
                    v => v.and_then(Vcpu::wake_tsc).map_or(t + slice, |w| w.max(t)),
                };
                sched.on_halt(id, Some(wake))
            }
            // Until its mailbox has something (a start-up IPI, a stop).
            SliceEnd::WaitForSipi => sched.on_halt(id, None),
            SliceEnd::Stopped => {
                if let Some(v) = vcpus[i].take() {
                    finish_vm(cpu, v, &mut sched, i);
                    lazy_owner.release(i);
                }
                Ok(())
            }
        };
        now = crate::arch::rdtsc();
    }
    console::cpu_done(cpu);
    if platform.dropped_bytes != 0 {
        log::warn!(
            "CPU {cpu}: {} bytes of guest console output dropped",
            platform.dropped_bytes
        );
    }
    samples.print(cpu);
}

/// A vCPU picked in a state no slice begins from: a scheduler bug.
#[cold]
fn bad_pick(vm: &str, e: hvcore::vcpu::InvalidTransition) -> ! {
    panic!(
        "vm {vm}: vCPU picked in state {:?} ({})",
        e.from, e.attempted
    );
}

/// The first guest slice on any CPU starts: the boot-time figure. Returns
/// the TSC the slice is timed from (read again after printing).
#[cold]
#[inline(never)]
fn first_guest_slice(now: u64) -> u64 {
    if FIRST_ENTRY.load(Ordering::Relaxed) && FIRST_ENTRY.swap(false, Ordering::Relaxed) {
        log::info!(
            "bench: boot to first guest slice: {} us (TSC)",
            us_from_tsc(now - crate::console::boot_tsc())
        );
        return crate::arch::rdtsc();
    }
    now
}

/// The host's own work between slices (console keys, the control
/// protocol, an attached console, statistics, the run-time limit, a stop
/// of all VMs), looked at every [`HOST_LOOK_US`] and after every idle
/// sleep (what woke the CPU may be one of them): not at every switch
/// between vCPUs. Only the handed-over vCPUs and mail (`vm::News`) are
/// looked at every time, since they decide what runs next. Out of line, so
/// that the CPU loop's switch path keeps its registers.
struct HostWork {
    cpu: usize,
    serial_input: bool,
    /// When the loop looks next (TSC; 0: at once).
    next_look: u64,
    /// The last statistics request served. From 0, not the current count:
    /// a request made before this CPU's loop started (an AP starts later
    /// than the console reads keys) is honoured.
    stats_seen: u32,
    /// The VM whose console output this CPU last made raw.
    raw_vm: Option<u32>,
}

impl HostWork {
    /// Before the news: console keys, and the control protocol's mailbox
    /// (create, start, stop, restart, destroy) and counters.
    #[inline(never)]
    fn before_news(
        &mut self,
        now: u64,
        vcpus: &mut Vec<Option<Vcpu>>,
        sched: &mut Scheduler,
        lazy_owner: &mut LazyOwner,
        platform: &mut KernelPlatform,
    ) {
        self.next_look = now + tsc_from_us(HOST_LOOK_US);
        if self.serial_input {
            poll_console();
        }
        // Issue 11 hooks: CPU 0 reads COM2; every CPU serves its mailbox
        // and publishes counters.
        if control::enabled() {
            if self.cpu == 0 {
                control::poll();
            }
            if control::mail_waiting(self.cpu) {
                control::serve(self.cpu, vcpus, sched, lazy_owner, platform);
            }
            control::publish(self.cpu, vcpus, now);
        }
    }

    /// After the news: the attached console, statistics requests, and the
    /// run-time limit and stop requests, which stop this CPU's vCPUs; true
    /// then (the loop ends).
    #[inline(never)]
    fn after_news(
        &mut self,
        now: u64,
        vcpus: &mut [Option<Vcpu>],
        sched: &mut Scheduler,
        platform: &mut KernelPlatform,
    ) -> bool {
        // The host console attached to one of these VMs: its output raw, its
        // typed input into its UART (a halted vCPU with input is woken). A
        // VM's first vCPU's CPU serves its console.
        let attached = console::attached();
        if attached.is_some() || self.raw_vm.is_some() {
            let mut changed = false;
            for (i, slot) in vcpus.iter_mut().enumerate() {
                let Some(v) = slot.as_mut().filter(|v| v.index() == 0) else {
                    continue;
                };
                let id = v.vm().id();
                changed |= v.set_raw_console(attached == Some(id), platform);
                if attached == Some(id) {
                    if let Some(bytes) = console::take_input(id) {
                        v.console_input(&bytes, platform);
                        let _ = sched.wake(VcpuId(i as u32));
                    }
                }
            }
            self.raw_vm = attached;
            if changed {
                platform.flush_output();
            }
        }
        let request = STATS_REQUEST.load(Ordering::Relaxed);
        if request != self.stats_seen {
            self.stats_seen = request;
            for v in vcpus.iter().flatten().filter(|v| v.index() == 0) {
                crate::println!("{}", v.vm().ctx().stats.report(v.vm().name()));
            }
        }
        let deadline = DEADLINE.load(Ordering::Relaxed);
        if (deadline != 0 && now >= deadline)
            || STOP_ALL.load(Ordering::Relaxed)
            || crate::smp::stopping()
        {
            for (i, slot) in vcpus.iter_mut().enumerate() {
                if let Some(mut v) = slot.take() {
                    v.stop(StopReason::HostStop, platform);
                    platform.flush_output();
                    finish_vm(self.cpu, v, sched, i);
                }
            }
            return true;
        }
        false
    }
}

/// How often a vCPU's counts go into its VM's statistics (at most; the
/// statistics a user reads lag by that much).
const STATS_EVERY_US: u64 = 1000;

/// How often a CPU running vCPUs looks at the host's own work between
/// slices: console keys, the control protocol, statistics, stop requests
/// (as often as the idle CPU 0 reads COM2).
const HOST_LOOK_US: u64 = 1000;

/// Set until the first guest slice starts (for the boot-time figure).
static FIRST_ENTRY: AtomicBool = AtomicBool::new(true);

/// The boot package, for restarting VMs (`on_reboot = "restart"`).
static PACKAGE: spin::Once<&'static Package<'static>> = spin::Once::new();

/// Adds `v` to this CPU's scheduler (its slice from its configuration).
fn schedule(sched: &mut Scheduler, v: &Vcpu) -> VcpuId {
    let slice = time::slice_ticks(v.slice_us());
    match sched.add_vcpu_with_slice(slice) {
        Ok(id) => id,
        Err(e) => panic!("scheduler refused a vCPU: {e:?}"),
    }
}

/// Takes the vCPUs other CPUs handed to this one ([`hand_over`]) into its
/// loop.
fn adopt(cpu: usize, vcpus: &mut Vec<Option<Vcpu>>, sched: &mut Scheduler) {
    let Some(CpuWork(list)) = ADOPT.get(cpu).and_then(|a| a.lock().take()) else {
        return;
    };
    for v in list {
        place(vcpus, sched, v);
    }
}

/// Adds `v` to this CPU's scheduler and puts it in the loop's slot of its
/// id (a stopped vCPU's, or a new one).
fn place(vcpus: &mut Vec<Option<Vcpu>>, sched: &mut Scheduler, v: Vcpu) {
    let slot = schedule(sched, &v).0 as usize;
    if vcpus.len() <= slot {
        vcpus.resize_with(slot + 1, || None);
    }
    assert!(
        vcpus[slot].is_none(),
        "scheduler slot {slot} still holds a vCPU"
    );
    vcpus[slot] = Some(v);
}

/// Takes a stopped vCPU off this CPU and frees its control block. The
/// VM's last vCPU to go reports the VM and frees its memory, or rebuilds
/// it when the guest reset and its policy says `restart`.
fn finish_vm(cpu: usize, v: Vcpu, sched: &mut Scheduler, slot: usize) {
    let _ = sched.stop(VcpuId(slot as u32));
    let vm = v.release();
    if !vm.finish_vcpu() {
        // Its other vCPUs end on their CPUs (they were told to stop).
        return;
    }
    match restart_spec(&vm) {
        Some(spec) => restart(cpu, vm, &spec),
        None => end_vm(cpu, vm),
    }
}

/// The spec to rebuild a VM from when the guest asked to be reset (triple
/// fault, chipset reset) and its policy says `restart`.
fn restart_spec(vm: &vm::Vm) -> Option<config::VmSpec> {
    let reason = vm.ctx().stop_reason().copied()?;
    let package = PACKAGE.get()?;
    // A VM created at run time (or one whose id was reused) boots from the
    // control registry's spec.
    let spec = control::spec_of(vm.id()).or_else(|| package.vms.get(vm.id() as usize).cloned())?;
    (reason.is_reset() && spec.on_reboot == config::RebootPolicy::Restart).then_some(spec)
}

/// Rebuilds a reset VM from `spec`: fresh memory with its images
/// reloaded, fresh vCPUs on the same CPUs, the same id.
fn restart(cpu: usize, vm: Arc<vm::Vm>, spec: &config::VmSpec) {
    let (id, restarts) = (vm.id(), vm.ctx().stats.restarts + 1);
    if let Some(reason) = vm.ctx().stop_reason().copied() {
        crate::println!(
            "vm {} (id {id}) restarting: {reason} (restart {restarts})",
            vm.name()
        );
        control::vm_rebooted(id, vm.name(), &reason);
    }
    release_vm(vm);
    let built = match (PACKAGE.get(), BACKEND.get()) {
        (Some(package), Some(backend)) => build_one(id, spec, package, backend),
        _ => Err(String::from("no backend")),
    };
    // The old VM has ended (after the new one counts, so that no CPU's
    // loop sees no live VM in between).
    LIVE_VMS.fetch_sub(1, Ordering::AcqRel);
    match built {
        Ok(list) => {
            if let Some((v, _)) = list.first() {
                v.vm().ctx().stats.restarts = restarts;
            }
            for (v, to) in list {
                hand_over(to, v);
            }
        }
        Err(e) => {
            // The old VM is gone; nothing is left to finish but a report.
            let report = alloc::format!("vm {} (id {id}) stopped: restart failed: {e}", spec.name);
            crate::println!("{report}");
            SUMMARIES.lock().push(VmSummary {
                name: spec.name.clone(),
                cpu,
                report,
                slices: 0,
                guest_us: 0,
                exits: 0,
            });
            console::vm_gone(id);
        }
    }
}

/// Reports a VM whose last vCPU stopped and frees its memory.
fn end_vm(cpu: usize, vm: Arc<vm::Vm>) {
    let (report, stats) = {
        let ctx = vm.ctx();
        let report = match ctx.stop_report() {
            Some(r) => alloc::format!("{r}"),
            None => alloc::format!("vm {} stopped", vm.name()),
        };
        (report, ctx.stats.clone())
    };
    crate::println!("{report}");
    crate::println!("{}", stats.report(vm.name()));
    control::vm_finished(&vm, &stats, &report);
    SUMMARIES.lock().push(VmSummary {
        name: vm.name().into(),
        cpu: vm.link(0).map_or(cpu, |l| l.cpu),
        report,
        slices: stats.slices_run,
        guest_us: us_from_tsc(stats.guest_ticks),
        exits: stats.total_exits(),
    });
    console::vm_gone(vm.id());
    let (name, mib) = (String::from(vm.name()), vm.partition.size() >> 20);
    release_vm(vm);
    LIVE_VMS.fetch_sub(1, Ordering::AcqRel);
    log::info!(
        "vm {name}: {mib} MiB returned to the free pool ({} frames free)",
        crate::mm::counts().0
    );
}

/// The slot of a CPU's vCPU table whose lazily switched registers (XSAVE
/// state, CR2, DRs, SYSCALL MSRs) the hardware holds, or none: one word,
/// compared at every switch. `NONE` lies outside every table, so looking it
/// up finds no vCPU.
#[derive(Clone, Copy, PartialEq, Eq)]
struct LazyOwner(usize);

impl LazyOwner {
    /// No vCPU's registers known to be in the hardware.
    const NONE: LazyOwner = LazyOwner(usize::MAX);

    /// Whether slot `slot` owns them.
    fn is(self, slot: usize) -> bool {
        self.0 == slot
    }

    /// Slot `slot` was emptied (its vCPU stopped): it owns nothing now.
    fn release(&mut self, slot: usize) {
        if self.is(slot) {
            *self = LazyOwner::NONE;
        }
    }
}

/// Hands the hardware's lazily switched registers from the vCPU in slot
/// `from` (when one had them; never `to`) to the one in slot `to`, and
/// returns that one; MSRs and XCR0 that already hold `to`'s values are not
/// written again.
fn switch_lazy(vcpus: &mut [Option<Vcpu>], from: LazyOwner, to: usize) -> Option<&mut Vcpu> {
    let p = from.0;
    if !vcpus.get(p).is_some_and(Option::is_some) {
        // No vCPU's values known in the hardware: every MSR and XCR0 are
        // written.
        let next = vcpus.get_mut(to)?.as_mut()?;
        let (lazy, xcr0) = next.lazy_mut();
        lazy.load(xcr0, None);
        return Some(next);
    };
    let [Some(prev), next] = vcpus.get_disjoint_mut([p, to]).ok()? else {
        return None;
    };
    match next {
        Some(next) => {
            lazy::switch(prev.lazy_mut(), next.lazy_mut());
            Some(next)
        }
        None => {
            let (prev, xcr0) = prev.lazy_mut();
            prev.save(xcr0);
            None
        }
    }
}

/// Serial console keys: `s` prints every VM's statistics, `q` stops all VMs,
/// `0`-`9` attach the console to a VM and Ctrl-] detaches ([`console`]).
fn poll_console() {
    while let Some(byte) = drivers::serial::COM1.try_read_byte() {
        // Issue 11 hook: `:` starts a control command line on the console.
        if control::console_typing() {
            control::console_key(byte);
            continue;
        }
        match console::key(byte) {
            None => {}
            Some(b's') => {
                STATS_REQUEST.fetch_add(1, Ordering::Relaxed);
            }
            Some(b'q') => {
                log::info!("console: stopping every VM");
                STOP_ALL.store(true, Ordering::Relaxed);
            }
            Some(b':') if control::enabled() => control::console_start(),
            Some(_) => {}
        }
    }
    console::kick();
}

fn print_summary() {
    let mut list = SUMMARIES.lock();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    crate::println!("==================== VM summary ====================");
    crate::println!(
        "{:<12} {:>4} {:>8} {:>12} {:>10}  result",
        "vm",
        "cpu",
        "slices",
        "guest us",
        "exits"
    );
    for s in list.iter() {
        crate::println!(
            "{:<12} {:>4} {:>8} {:>12} {:>10}  {}",
            s.name,
            s.cpu,
            s.slices,
            s.guest_us,
            s.exits,
            s.report
        );
    }
    crate::println!("=====================================================");
}
