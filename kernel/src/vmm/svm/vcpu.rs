//! One vCPU on AMD-V: its VMCB, its lazily switched registers, and the loop
//! that runs it for one time slice.
//!
//! Everything that is not a privileged instruction lives in the host-tested
//! `backend::svm`: the VMCB is programmed by [`setup::program`], exits are
//! decoded by [`decode::decode`], guest state is reached through
//! [`VmcbCpu`], RIP and the interrupt shadow move in [`entry::advance`].
//! Without a preemption timer, slices end by the host's LAPIC timer: its
//! interrupt exits (INTR intercept) and the loop finds the slice over.

use alloc::sync::Arc;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, Ordering};

use backend::svm::decode;
use backend::svm::entry;
use backend::svm::setup::{self, GuestStart};
use backend::svm::state::{SoftState, VmcbCpu};
use backend::svm::SvmSetup;
use backend::svm::{check, insn, state};
use hvcore::config::GuestMode;
use hvcore::exit::{Event, Exit, GuestRegs, Next};
use hvcore::vcpu::{StopReason, VcpuRunState, VcpuState, VmContext};
use svm::Vmcb;

use super::entry as switch;
use crate::vmm::irq::{self, DeviceClock};
use crate::vmm::lazy::{self, Extension, LazyState};
use crate::vmm::platform::{self, KernelPlatform};
use crate::vmm::vm::{Startup, Vm};
use crate::vmm::SliceEnd;

/// Whether a guest's XSETBV was seen to run without an exit (logged once).
static NATIVE_XSETBV_SEEN: AtomicBool = AtomicBool::new(false);

/// Per-CPU AMD-V facts a vCPU needs.
pub struct HostCpu {
    /// Intercepts and limits decided at boot.
    pub setup: SvmSetup,
    /// This CPU's host VMCB (VMLOADed after every #VMEXIT).
    pub host_vmcb: u64,
    /// This CPU's index.
    pub cpu: u32,
}

/// An AMD-V vCPU of a VM.
pub struct Vcpu {
    /// The VM: memory, devices, console, statistics, shared by its vCPUs.
    pub vm: Arc<Vm>,
    /// This vCPU's index in the VM (its virtual APIC ID).
    index: usize,
    /// This vCPU's policy state: run state and MSR file.
    pub state: VcpuState,
    /// The VMCB's frame (host-physical).
    vmcb: u64,
    /// Guest RBX..R15 (RAX, RIP and the length of the exiting instruction
    /// are copied from and to the VMCB by the backend).
    regs: GuestRegs,
    /// An event to inject at the next VMRUN.
    pending_event: Option<Event>,
    /// Entry point.
    entry: u64,
    /// Configured time slice.
    slice_us: u32,
    /// The host LAPIC timer's count for a whole slice, armed at a slice's
    /// quiet start (the slice is counted from that entry).
    slice_count: u32,
    /// Whether the vCPU has a local APIC (fixed when its VM is built).
    has_apic: bool,
    /// Guest state kept in software (XCR0, EFER.SVME as seen, DEBUGCTL).
    soft: SoftState,
    /// Registers switched when the CPU changes vCPU.
    lazy: LazyState,
    /// CPU the vCPU last ran on (its ASID's TLB entries live there).
    last_cpu: Option<u32>,
    /// Device time and the interrupt window.
    pub clock: DeviceClock,
    /// TSC from which the vCPU's counts go into the VM's statistics at the
    /// end of a slice (`vmm::Vcpu::record_slice`).
    pub stats_due: u64,
    /// How the VMCB was programmed (again on a start-up IPI).
    start: GuestStart,
}

/// Why an AMD-V vCPU could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// No frame for the VMCB.
    OutOfMemory,
    /// The backend refused the VMCB (ASID out of range, ...).
    Program(backend::svm::setup::ProgramError),
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfMemory => write!(f, "out of memory for the VMCB"),
            Self::Program(e) => write!(f, "VMCB: {e}"),
        }
    }
}

impl Vcpu {
    /// vCPU `index` of `vm`, starting at `entry` in `mode` (the VM's
    /// memory holds what that mode needs), with ASID `asid` and the
    /// machine's permission maps.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: Arc<Vm>,
        index: usize,
        entry: u64,
        mode: GuestMode,
        slice_us: u32,
        setup: &SvmSetup,
        asid: u32,
        maps: (u64, u64),
    ) -> Result<Vcpu, BuildError> {
        let Some(n_cr3) = vm.partition.tables.n_cr3() else {
            panic!("AMD-V vCPU for a partition without nested page tables");
        };
        let vmcb = crate::mm::alloc_frame_zeroed().map_err(|_| BuildError::OutOfMemory)?;
        let start = GuestStart {
            mode,
            entry,
            n_cr3: svm::HostPhysAddr::new(n_cr3),
            asid,
            iopm: svm::HostPhysAddr::new(maps.0),
            msrpm: svm::HostPhysAddr::new(maps.1),
        };
        let has_apic = vm.apic(index).is_some();
        let mut vcpu = Vcpu {
            has_apic,
            vm,
            index,
            state: VcpuState::new(index as u32),
            vmcb,
            regs: GuestRegs::default(),
            pending_event: None,
            entry,
            slice_us,
            slice_count: crate::apic::timer_count(crate::vmm::time::slice_ticks(slice_us)),
            soft: SoftState::default(),
            lazy: LazyState::new(Extension::Svm, true),
            last_cpu: None,
            clock: DeviceClock::default(),
            stats_due: 0,
            start,
        };
        if let Err(e) = setup::program(vcpu.vmcb_mut(), setup, &start) {
            free_frame(vmcb);
            return Err(BuildError::Program(e));
        }
        if let Err(e) = vcpu.state.run_state_mut().make_runnable() {
            panic!("new vCPU in state {:?} ({})", e.from, e.attempted);
        }
        Ok(vcpu)
    }

    fn vmcb_mut(&mut self) -> &mut Vmcb {
        let ptr = crate::mm::phys_to_virt(self.vmcb).as_mut_ptr::<Vmcb>();
        // SAFETY: the frame was allocated for this vCPU's VMCB alone (4 KiB,
        // 4 KiB-aligned, the size and alignment of `Vmcb`), is mapped through
        // the physical-memory window, and the processor writes it only during
        // VMRUN/#VMEXIT/VMSAVE, which run with `&mut self` held.
        unsafe { &mut *ptr }
    }

    /// The general-purpose registers the guest starts with (its boot
    /// protocol's: RSI for Linux, EAX/EBX for Multiboot).
    pub fn set_start_regs(&mut self, regs: GuestRegs) {
        self.regs = regs;
    }

    /// This vCPU's index in its VM.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Guest entry point.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// Configured time slice in microseconds.
    pub fn slice_us(&self) -> u32 {
        self.slice_us
    }

    /// This vCPU's lazily switched registers and the XCR0 it runs with
    /// (for [`lazy::switch`](crate::vmm::lazy::switch) and
    /// [`LazyState::load`]).
    pub fn lazy_mut(&mut self) -> (&mut LazyState, u64) {
        (&mut self.lazy, self.soft.xcr0)
    }

    /// Runs the vCPU until its slice ends at TSC `slice_end`
    /// (or it yields, halts or stops). Inlined into the CPU loop, as the
    /// VT-x slice is (design note 16): out of line, the world switch takes
    /// 521 instead of 465.
    #[inline(always)]
    pub fn run_slice(
        &mut self,
        host: &HostCpu,
        slice_end: u64,
        env: &mut KernelPlatform,
    ) -> SliceEnd {
        // As on VT-x: Runnable or Halted -> Running for the whole slice; an
        // application processor waiting for its start-up IPI goes apart.
        if let Err(e) = self.state.run_state_mut().begin_slice() {
            if e.from != VcpuRunState::WaitForSipi {
                crate::vmm::bad_pick(self.vm.name(), e);
            }
            if let Some(end) = self.wait_for_sipi(&host.setup) {
                return end;
            }
        }
        let end = self.run_until(host, slice_end, env);
        crate::apic::stop_timer();
        end
    }

    fn run_until(&mut self, host: &HostCpu, slice_end: u64, env: &mut KernelPlatform) -> SliceEnd {
        let cpu_changed = self.last_cpu != Some(host.cpu);
        self.last_cpu = Some(host.cpu);
        let setup = &host.setup;
        let vmcb_ptr = crate::mm::phys_to_virt(self.vmcb).as_mut_ptr::<Vmcb>();
        // SAFETY: as in `vmcb_mut`: the frame is this vCPU's VMCB alone, and
        // `&mut self` is held for the whole slice; the processor writes it
        // only inside `switch::run`, while this reference is not used.
        let vmcb: &mut Vmcb = unsafe { &mut *vmcb_ptr };
        // SAFETY: `self.vm` keeps the VM alive and is neither replaced nor
        // dropped while the slice runs (only `release`, which takes the vCPU
        // by value, gives it up), and a VM is only ever shared (`&`), so the
        // `&mut self` calls below do not alias it. A borrow instead of a
        // clone: no locked increment and decrement at every slice.
        let vm: &Vm = unsafe { &*Arc::as_ptr(&self.vm) };
        let link = vm
            .link(self.index)
            .unwrap_or_else(|| panic!("vm {}: vCPU {} has no link", vm.name(), self.index));
        if let Some(reason) = self.clock.refresh_or_stopped(vm) {
            return self.stop_with_vm(reason);
        }
        // With a local APIC, the host's timer also ends the guest's run when
        // its APIC timer is due (armed at every entry then).
        // (Without one, `apic_due` stays `None`.)
        let has_apic = self.has_apic;
        if has_apic {
            self.clock.apic_due = vm.apic_deadline(self.index);
        }
        // The VMCB moved to this CPU: everything cached is stale (once).
        let mut cpu_changed = cpu_changed;
        // Quiet entries and `attention_at` as in the VT-x loop: after an
        // exit the vCPU answered alone, a TSC compare; the event exits, and
        // platform exits that may have given the entry work, make the next
        // entry look at everything. Mail from another CPU comes with its
        // wake IPI, pending at VMRUN (GIF set, host IF set): the INTR
        // intercept's exit at once leads to the full checks. The slice's
        // first entry as there (`DeviceClock::slice_start_attention`).
        let mut attention_at = self.clock.slice_start_attention(slice_end, link);
        let mut timer_until = slice_end;
        // The host's timer ends the guest's run at `timer_until`: with a
        // local APIC, armed before every entry (the APIC timer's deadline
        // moves); else for the slice's end, at the slice's start and again
        // after every full check, which follows every host interrupt: that
        // may have been the timer's own, come early (its count is rounded
        // up, but from a calibration), and would leave the rest of the
        // slice without one.
        if attention_at != 0 && !has_apic {
            crate::apic::one_shot(self.slice_count);
        }
        let mut exit = Exit::Hlt;
        loop {
            let now = crate::arch::rdtsc();
            if now >= attention_at {
                let checks = crate::vmm::irq::EntryChecks {
                    now,
                    slice_end,
                    has_apic,
                    link,
                };
                if let Some(end) = self.check_entry(&checks, vm, vmcb, env) {
                    return end;
                }
                timer_until = self.clock.apic_due.map_or(slice_end, |d| d.min(slice_end));
                attention_at = self.clock.attention_at(timer_until);
                if !has_apic {
                    crate::apic::one_shot_tsc(slice_end.saturating_sub(now));
                }
            }
            if has_apic {
                crate::apic::one_shot_tsc(timer_until.saturating_sub(now));
            }
            entry::before_vmrun(vmcb, setup, &mut self.soft, &self.regs, cpu_changed);
            cpu_changed = false;
            // SAFETY: AMD-V is on for this CPU (host.host_vmcb comes from
            // enable_on_this_cpu); the VMCB is this vCPU's, programmed by
            // `setup::program`; interrupts are off in the scheduler loop.
            unsafe { switch::run(&mut self.regs, self.vmcb, host.host_vmcb) };
            entry::after_vmexit(vmcb, setup);
            let decoded =
                decode::decode_into(vmcb, &mut self.regs, &vm.partition, setup, &mut exit);
            // The event whose delivery the exit interrupted is delivered
            // again, unless the handler injects one of its own (below).
            let interrupted = match decoded {
                Ok(interrupted) => interrupted,
                Err(reason) => return self.stop_undecoded(reason, env),
            };
            if entry::keep_interrupted(&mut self.pending_event, interrupted) {
                attention_at = 0;
            }
            if let Some(end) = self.follow_native_xcr0(setup, env) {
                return end;
            }
            let action =
                match hvcore::exit::handle_vcpu_exit(&mut self.state, &exit, &mut self.regs) {
                    Some(next) => next,
                    None => {
                        if let Exit::EntryFailed { .. } = exit {
                            self.report_invalid(vmcb, setup);
                        }
                        let next = platform::handle_exit(
                            env,
                            &mut self.state,
                            &exit,
                            &mut self.regs,
                            (vm, self.index),
                            &mut self.clock,
                            VmcbCpu {
                                vmcb: &mut *vmcb,
                                setup,
                                soft: &mut self.soft,
                                msrs: &mut self.lazy.regs_mut(),
                            },
                        );
                        attention_at = self.clock.attention_after_exit(
                            timer_until,
                            self.pending_event.is_some(),
                            has_apic,
                            env.output_full,
                        );
                        next
                    }
                };
            entry::advance(vmcb, &action, &self.regs);
            if entry::keep_injected(&mut self.pending_event, &action) {
                attention_at = 0;
            }
            let end = match action {
                Next::Resume | Next::AdvanceRip | Next::Inject(_) => {
                    if let Next::Resume = action {
                        crate::vmm::irq::event_exit_done(&exit, &mut attention_at);
                    }
                    continue;
                }
                Next::Yield => SliceEnd::Yielded,
                Next::Preempted => SliceEnd::Preempted,
                Next::Halt => SliceEnd::Halted,
                Next::Stop => {
                    // The other vCPUs of the VM leave the guest too.
                    vm.stop_others(self.index);
                    SliceEnd::Stopped
                }
            };
            self.clock.slice_ended(end, attention_at, has_apic);
            return end;
        }
    }

    /// The checks of an entry that is not quiet (see the VT-x vCPU's
    /// `check_entry`): `Some` ends the slice.
    #[inline]
    fn check_entry(
        &mut self,
        c: &crate::vmm::irq::EntryChecks<'_>,
        vm: &Vm,
        vmcb: &mut Vmcb,
        env: &mut KernelPlatform,
    ) -> Option<SliceEnd> {
        let now = c.now;
        let lock = crate::vmm::irq::shared_entry_checks(
            c,
            vm,
            self.index,
            &mut self.state,
            &mut self.pending_event,
            &mut self.clock,
            env,
        );
        let lock = match lock {
            Ok(lock) => lock,
            Err(end) => return Some(end),
        };
        // The VM's devices are locked only when a device is due or an
        // event may be delivered.
        if lock {
            let mut ctx = vm.ctx();
            self.clock.catch_up(now, &mut ctx, vm, env);
            self.prepare_events(&mut ctx, vm, vmcb);
            self.clock.intr_possible = ctx.interrupt_possible();
        }
        None
    }

    /// Before an entry that may inject: the PIC's interrupt when the guest
    /// can take it (else a virtual-interrupt window is asked for), then the
    /// pending event.
    #[inline(never)]
    fn prepare_events(&mut self, ctx: &mut VmContext, vm: &Vm, vmcb: &mut Vmcb) {
        let apic = vm.apic(self.index);
        let (irq, window) = irq::deliver(
            ctx,
            apic,
            self.index == 0,
            self.pending_event.is_some(),
            || Some(entry::interruptibility(vmcb)),
        );
        if irq.is_some() {
            self.pending_event = irq;
        }
        if window != self.clock.window_open {
            entry::set_interrupt_window(vmcb, window);
            self.clock.window_open = window;
        }
        if let Some(ev) = self.pending_event.take() {
            entry::inject(vmcb, ev);
        }
    }

    /// The exit could not be decoded (see `backend::svm::decode`): the VM
    /// stops with the reason.
    #[cold]
    fn stop_undecoded(&mut self, reason: StopReason, env: &mut KernelPlatform) -> SliceEnd {
        log::error!("vm {}: {reason}", self.vm.name());
        self.stop(reason, env);
        SliceEnd::Stopped
    }

    /// After a #VMEXIT: an XCR0 in the hardware that is not the vCPU's
    /// means the guest's XSETBV ran without an exit (QEMU 7.2's TCG has no
    /// XSETBV intercept; VMRUN does not switch XCR0). Within policy it
    /// becomes the vCPU's XCR0, so the lazy switch saves and restores the
    /// guest's registers with it; otherwise the VM stops (and the hardware
    /// gets the vCPU's XCR0 back). `Some` when the slice ends here.
    fn follow_native_xcr0(
        &mut self,
        setup: &SvmSetup,
        env: &mut KernelPlatform,
    ) -> Option<SliceEnd> {
        let hardware = lazy::hardware_xcr0()?;
        match state::native_xcr0(&mut self.soft, &setup.limits, hardware) {
            Ok(false) => None,
            Ok(true) => {
                if !NATIVE_XSETBV_SEEN.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "AMD-V: vm {} set XCR0 to {hardware:#x} without an XSETBV exit (this CPU does not intercept XSETBV): guest XCR0 is read back after every exit",
                        self.vm.name()
                    );
                }
                None
            }
            Err(value) => {
                lazy::set_xcr0(self.soft.xcr0);
                log::error!(
                    "vm {}: XCR0 {value:#x}, set without an XSETBV exit, has components beyond the allowed {:#x}",
                    self.vm.name(),
                    setup.limits.xcr0_allowed
                );
                let reason = StopReason::MissingFeature {
                    what: "an XSETBV of XCR0 components the hypervisor does not offer",
                    feature: "the XSETBV intercept",
                    rip: self.regs.rip,
                };
                self.stop(reason, env);
                Some(SliceEnd::Stopped)
            }
        }
    }

    /// Logs a VMEXIT_INVALID with what explains it: the first APM 15.5.1
    /// check the VMCB fails, or, when it passes them all, the instruction
    /// at RIP (QEMU's TCG reports some faulting guest instructions this
    /// way, see `backend::svm::check`).
    fn report_invalid(&self, vmcb: &Vmcb, setup: &SvmSetup) {
        let save = &vmcb.save;
        log::error!(
            "vm {}: VMEXIT_INVALID at rip {:#x}: cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} cs {:#x}/{:?} dr6 {:#x} dr7 {:#x} asid {}",
            self.vm.name(),
            save.rip,
            save.cr0,
            save.cr3,
            save.cr4,
            save.efer,
            save.cs.selector,
            save.cs.attrib,
            save.dr6,
            save.dr7,
            vmcb.control.guest_asid
        );
        match check::check_guest_state(vmcb, setup) {
            Err(why) => log::error!(
                "vm {}: VMRUN refused the VMCB: {why} (APM 15.5.1)",
                self.vm.name()
            ),
            Ok(()) => {
                let (bytes, n) = insn::bytes_at_rip(vmcb, &self.vm.partition);
                let mut hex = alloc::string::String::new();
                for b in &bytes[..n] {
                    let _ = write!(hex, " {b:02x}");
                }
                log::error!(
                    "vm {}: the VMCB passes the APM 15.5.1 checks known here: the CPU refused something else, or reported a guest instruction as VMEXIT_INVALID (QEMU's TCG does so for MOV CR3 with bits beyond the physical-address width); bytes at rip:{}",
                    self.vm.name(),
                    if n == 0 { " (not mapped)" } else { hex.as_str() }
                );
            }
        }
    }

    /// Stops this vCPU and its VM from the host side.
    pub fn stop(&mut self, reason: StopReason, env: &mut KernelPlatform) {
        crate::vmm::vm::stop_vcpu(&self.vm, self.index, &mut self.state, reason, env);
    }

    /// This vCPU stops because its VM did (another vCPU or the host
    /// stopped it).
    fn stop_with_vm(&mut self, reason: StopReason) -> SliceEnd {
        let _ = self.state.run_state_mut().stop(reason);
        SliceEnd::Stopped
    }

    /// An application processor waiting for a start-up IPI takes its
    /// mailbox: with a SIPI it starts in real mode at the SIPI's page
    /// (`None`: run it, now Running), else it sleeps on (or stops with its
    /// VM).
    #[cold]
    #[inline(never)]
    fn wait_for_sipi(&mut self, setup: &SvmSetup) -> Option<SliceEnd> {
        let vector = match self.vm.take_startup(self.index) {
            Startup::Wait => return Some(SliceEnd::WaitForSipi),
            Startup::Stop(reason) => return Some(self.stop_with_vm(reason)),
            Startup::Sipi(vector) => vector,
        };
        self.start.mode = GuestMode::Real16;
        self.start.entry = u64::from(vector) << 12;
        self.entry = self.start.entry;
        self.regs = GuestRegs::default();
        self.pending_event = None;
        self.soft = SoftState::default();
        let start = self.start;
        if let Err(e) = setup::program(self.vmcb_mut(), setup, &start) {
            // The same ASID and maps were accepted when the vCPU was built.
            panic!("vm {}: VMCB refused at start-up: {e}", self.vm.name());
        }
        setup::start_up(self.vmcb_mut(), vector);
        if let Err(e) = self.state.run_state_mut().start_up() {
            panic!(
                "vm {}: start-up from {:?} ({})",
                self.vm.name(),
                e.from,
                e.attempted
            );
        }
        if let Err(e) = self.state.run_state_mut().begin_slice() {
            crate::vmm::bad_pick(self.vm.name(), e);
        }
        None
    }

    /// Frees the VMCB; gives back the VM (whose memory goes when its last
    /// vCPU is released).
    pub fn release(self) -> Arc<Vm> {
        free_frame(self.vmcb);
        self.vm
    }
}

fn free_frame(frame: u64) {
    if let Err(e) = crate::mm::free(hvcore::frames::PhysRange::new(frame, frame + 4096)) {
        log::error!("frame {frame:#x} could not be freed: {e:?}");
    }
}
