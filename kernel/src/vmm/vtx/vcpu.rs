//! One vCPU on VT-x: its VMCS and the pages it points to, its lazily
//! switched registers, and the loop that runs it for one time slice.
//!
//! Everything that is not a privileged instruction lives in the host-tested
//! `backend::vtx`: the VMCS is programmed by [`setup::program`], exits are
//! decoded by [`decode::decode`], guest state is reached through
//! [`VmcsCpu`], and RIP and interruptibility move in [`entry::advance`].
//! Policy happens in `hvcore::exit::handle_exit`.

use alloc::sync::Arc;
use backend::vtx::setup::{self, GuestStart, HostState};
use backend::vtx::state::{SoftState, VmcsCpu};
use backend::vtx::{decode, entry, VmxSetup};

use hvcore::config::GuestMode;
use hvcore::devices::interrupt::GuestInterruptibility;
use hvcore::exit::{Event, Exit, GuestRegs, Next};
use hvcore::vcpu::{StopReason, VcpuRunState, VcpuState, VmContext};
use vmx::vmcs::*;
use vmx::{ActiveVmcs, HostPhysAddr, PrimaryControls, VmFail, VmcsAccess, VmxCapabilities};
use x86_64::instructions::tables::{sgdt, sidt};
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::registers::model_specific::{Efer, FsBase, GsBase, Msr};

use super::super::platform::{self, KernelPlatform};
use super::count::{self, Tally};
use super::enable::{vmx_region, VmxError};
use super::entry::{self as switch, SwitchResult};
use crate::arch::gdt::PerCpuTables;
use crate::vmm::irq::{self, DeviceClock};
use crate::vmm::lazy::{Extension, LazyState};
use crate::vmm::vm::{Startup, Vm};
use crate::vmm::SliceEnd;

/// A VT-x vCPU of a VM.
pub struct Vcpu {
    /// The VM: memory, devices, console, statistics, shared by its vCPUs.
    pub vm: Arc<Vm>,
    /// This vCPU's index in the VM (its virtual APIC ID).
    index: usize,
    /// This vCPU's policy state: run state and MSR file.
    pub state: VcpuState,
    /// The VMCS region.
    vmcs: HostPhysAddr,
    /// The virtual-APIC page (TPR shadow: MOV CR8 lands here).
    virtual_apic: HostPhysAddr,
    /// Launched since the last VMCLEAR (VMRESUME then, not VMLAUNCH).
    launched: bool,
    /// Guest GPRs (and the exiting instruction's RIP and length) while the
    /// guest is not running; the world switch loads and saves them in place.
    regs: GuestRegs,
    /// An event to inject at the next entry.
    pending_event: Option<Event>,
    /// Whether the last exit's instruction was skipped (STI/MOV SS blocking
    /// it recorded has ended; cleared before any injection).
    shadow: entry::Shadow,
    /// Guest mode at start.
    mode: GuestMode,
    /// VPID (VM id + 1; 0 is the host's).
    vpid: u16,
    /// Whether the VMCS fields are set up (done on the vCPU's CPU).
    initialised: bool,
    /// Entry point.
    entry: u64,
    /// Configured time slice.
    slice_us: u32,
    /// The VMX-preemption timer's value for a whole slice, written at a
    /// slice's start when the CPU saves the timer at exits (the slice is
    /// counted from that entry, a few hundred ticks after the pick).
    slice_timer: u32,
    /// Whether the vCPU has a local APIC (fixed when its VM is built).
    has_apic: bool,
    /// Whether a slice's timer is written once, at its start
    /// (`slice_timer`): the CPU saves the preemption timer at exits and no
    /// APIC timer moves its deadline; else at every entry.
    timer_saved: bool,
    /// Guest state kept in software (XCR0, CR8 without TPR shadow).
    soft: SoftState,
    /// Registers switched when the CPU changes vCPU.
    lazy: LazyState,
    /// Device time and the interrupt window.
    pub clock: DeviceClock,
    /// TSC from which the vCPU's counts go into the VM's statistics at the
    /// end of a slice (`vmm::Vcpu::record_slice`).
    pub stats_due: u64,
    /// VMREAD/VMWRITE counts (bench builds only, see [`count`]).
    tally: Tally,
}

/// Per-CPU VMX facts the host state needs.
pub struct HostCpu {
    /// This CPU's descriptor tables (GDT, TSS).
    pub tables: &'static PerCpuTables,
    /// Control words decided at boot (identical on every CPU of a machine).
    pub setup: VmxSetup,
    /// Host-physical address of the shared MSR bitmap.
    pub msr_bitmap: u64,
}

impl Vcpu {
    /// vCPU `index` of `vm`, starting at `entry` in `mode` (the VM's
    /// memory holds what that mode needs, see `setup::long_mode_boot_words`).
    /// `setup`: the control words its VMCS gets (MOV-DR exiting decides
    /// when its debug registers are switched).
    pub fn new(
        vm: Arc<Vm>,
        index: usize,
        entry: u64,
        mode: GuestMode,
        slice_us: u32,
        (caps, setup): (&VmxCapabilities, &VmxSetup),
    ) -> Result<Vcpu, VmxError> {
        let vmcs = vmx_region(caps, "VMCS region")?;
        let virtual_apic = match crate::mm::alloc_frame_zeroed() {
            Ok(f) => HostPhysAddr::new(f),
            Err(_) => {
                free_frame(vmcs);
                return Err(VmxError::OutOfMemory("virtual-APIC page"));
            }
        };
        // One VPID per VM: its vCPUs run on different CPUs, whose TLBs are
        // their own.
        let vpid = (vm.id() + 1) as u16;
        let has_apic = vm.apic(index).is_some();
        let mut vcpu = Vcpu {
            has_apic,
            timer_saved: setup.optional.preemption_timer_save && !has_apic,
            vm,
            index,
            state: VcpuState::new(index as u32),
            vmcs,
            virtual_apic,
            launched: false,
            regs: GuestRegs::default(),
            pending_event: None,
            shadow: entry::Shadow::default(),
            mode,
            vpid,
            initialised: false,
            entry,
            slice_us,
            slice_timer: preemption_timer_value(
                crate::vmm::time::slice_ticks(slice_us),
                setup.preemption_timer_rate,
            ),
            soft: SoftState::default(),
            lazy: LazyState::new(Extension::Vtx, setup.optional.mov_dr_exiting),
            clock: DeviceClock::default(),
            stats_due: 0,
            tally: Tally::new(),
        };
        // Fully built: the scheduler may pick it.
        if let Err(e) = vcpu.state.run_state_mut().make_runnable() {
            panic!("new vCPU in state {:?} ({})", e.from, e.attempted);
        }
        Ok(vcpu)
    }

    /// The EPT pointer of the VM's partition.
    fn eptp(&self) -> u64 {
        self.vm
            .partition
            .tables
            .eptp()
            .unwrap_or_else(|| panic!("VT-x vCPU on a partition without an EPT"))
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

    /// VMPTRLDs this vCPU's VMCS on the calling CPU (and sets it up the
    /// first time). Returns access to it.
    #[inline]
    fn load(&mut self, host: &HostCpu) -> Result<ActiveVmcs, VmxError> {
        if !self.initialised {
            return self.load_first(host);
        }
        // SAFETY: the CPU is in VMX root operation (the scheduler loop runs
        // after VMXON), and the region is a valid, launched or cleared VMCS
        // of this vCPU, used on this CPU only (a vCPU is pinned to one CPU).
        unsafe { ActiveVmcs::load(&self.vmcs) }.map_err(|e| VmxError::Instruction("VMPTRLD", e))
    }

    /// [`Self::load`] the first time: VMCLEAR, VMPTRLD, set-up.
    #[inline(never)]
    fn load_first(&mut self, host: &HostCpu) -> Result<ActiveVmcs, VmxError> {
        // SAFETY: the region is this vCPU's, allocated with the revision
        // id; VMCLEAR puts it in the clear state before first use.
        unsafe { vmx::instructions::vmclear(self.vmcs) }
            .map_err(|e| VmxError::Instruction("VMCLEAR", e))?;
        // SAFETY: as in `load`; the VMCS is cleared.
        let mut vmcs = unsafe { ActiveVmcs::load(&self.vmcs) }
            .map_err(|e| VmxError::Instruction("VMPTRLD", e))?;
        self.setup(&mut vmcs, host)?;
        self.flush_translations(&host.setup);
        self.initialised = true;
        Ok(vmcs)
    }

    /// Loads (and sets up) the VMCS, then overwrites one field: how the
    /// self-tests provoke VM-entry failures on purpose.
    pub fn overwrite_field_for_selftest(
        &mut self,
        host: &HostCpu,
        encoding: u32,
        value: u64,
    ) -> Result<(), VmxError> {
        let mut vmcs = self.load(host)?;
        vmcs.write(encoding, value)
            .map_err(|e| VmxError::Instruction("VMWRITE", e))
    }

    /// Drops cached translations for this VM's EPTP and VPID (SDM 29.4.3):
    /// the frames of a stopped VM's EPT, and its VPID, may be reused, and an
    /// emulated paging-mode change invalidates the guest's TLB entries.
    fn flush_translations(&self, setup: &VmxSetup) {
        use vmx::instructions::{InveptType, InvvpidType};
        let kind = if setup.invept_single {
            InveptType::SingleContext
        } else {
            InveptType::AllContext
        };
        // SAFETY: VMX root operation; the EPTP is this VM's valid EPT.
        if let Err(e) = unsafe { vmx::instructions::invept(kind, self.eptp()) } {
            log::warn!("vm {}: INVEPT failed: {e}", self.vm.name());
        }
        if setup.optional.vpid {
            let kind = if setup.invvpid_single {
                InvvpidType::SingleContext
            } else {
                InvvpidType::AllContext
            };
            // SAFETY: VMX root operation; the VPID is nonzero.
            if let Err(e) = unsafe { vmx::instructions::invvpid(kind, self.vpid, 0) } {
                log::warn!("vm {}: INVVPID failed: {e}", self.vm.name());
            }
        }
    }

    /// Writes controls, host state and the initial guest state.
    fn setup(&self, vmcs: &mut ActiveVmcs, host: &HostCpu) -> Result<(), VmxError> {
        let sel = host.tables.selectors();
        let host_state = HostState {
            cr0: Cr0::read_raw(),
            cr3: Cr3::read_raw().0.start_address().as_u64(),
            cr4: Cr4::read_raw(),
            cs: sel.code.0,
            ds: sel.data.0,
            tr: sel.tss.0,
            fs_base: FsBase::read().as_u64(),
            gs_base: GsBase::read().as_u64(),
            tr_base: host.tables.tss() as *const _ as u64,
            gdtr_base: sgdt().base.as_u64(),
            idtr_base: sidt().base.as_u64(),
            efer: Efer::read_raw(),
            // SAFETY: IA32_PAT exists on every CPU with VMX (SDM 11.12.2).
            pat: unsafe { Msr::new(vmx::msr::IA32_PAT).read() },
            rip: switch::exit_entry_point(),
        };
        let guest = GuestStart {
            mode: self.mode,
            entry: self.entry,
            eptp: self.eptp(),
            vpid: self.vpid,
            msr_bitmap: host.msr_bitmap,
            virtual_apic: self.virtual_apic.as_u64(),
        };
        setup::program(vmcs, &host.setup, &host_state, &guest)
            .map_err(|e| VmxError::Instruction("VMWRITE", e))
    }

    /// Runs the vCPU until its slice ends at TSC `slice_end`
    /// (or it yields, halts or stops). `env` gives exit handlers the
    /// platform services. The vCPU's lazy registers must be loaded
    /// ([`LazyState::load`]).
    ///
    /// Work is done where it changes: once per slice the VMCS is made
    /// current, the preemption timer set to a whole slice from the first
    /// entry (the CPU saves its value at every exit, so it counts down the
    /// slice; without that feature, or with a local APIC, it is set at every
    /// entry, until `slice_end`) and HOST_RSP written (the world switch runs on
    /// the same stack for the whole slice). Before each entry: one TSC
    /// compare (the slice's end, the device and APIC deadlines, or 0 when
    /// the last exit may have given the entry work) and the mailbox; the
    /// rest of the checks ([`Self::check_entry`]) only when one of them
    /// says so. After each exit: the fields the exit has, the vCPU's own
    /// answer or the platform's handling, RIP. Inlined into the CPU loop
    /// (no call frame between two slices; design note 16).
    #[inline(always)]
    pub fn run_slice(
        &mut self,
        host: &HostCpu,
        slice_end: u64,
        env: &mut KernelPlatform,
    ) -> SliceEnd {
        // Runnable, or Halted with its wake-up come (the scheduler picked
        // it) -> Running for the whole slice; handle_exit moves it on
        // (Halted, Runnable after a yield or preemption, Stopped). An
        // application processor waiting for its start-up IPI is picked
        // when its mailbox has something: that case goes apart.
        if let Err(e) = self.state.run_state_mut().begin_slice() {
            if e.from != VcpuRunState::WaitForSipi {
                crate::vmm::bad_pick(self.vm.name(), e);
            }
            if let Some(end) = self.wait_for_sipi(host, env) {
                return end;
            }
        }
        let mut vmcs = match self.load(host) {
            Ok(v) => count::wrap(v),
            Err(e) => {
                log::error!("vm {}: cannot set up its VMCS: {e}", self.vm.name());
                let reason = match e {
                    VmxError::Instruction(_, VmFail::Valid(err)) => {
                        StopReason::EntryInstructionFailed {
                            number: err.number(),
                            meaning: err.description(),
                            rip: self.entry,
                        }
                    }
                    _ => StopReason::MissingFeature {
                        what: "setting up the VMCS",
                        feature: "memory for VMX structures",
                        rip: self.entry,
                    },
                };
                self.stop(reason, env);
                return SliceEnd::Stopped;
            }
        };
        self.tally.slice_start();
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
        // With a local APIC, the preemption timer also ends the guest's run
        // when its APIC timer is due (set at every entry then).
        // (Without one, `apic_due` stays `None`.)
        let has_apic = self.has_apic;
        if has_apic {
            self.clock.apic_due = vm.apic_deadline(self.index);
        }
        let rate = host.setup.preemption_timer_rate;
        let timer_saved = self.timer_saved;
        if timer_saved {
            vmcs.set_known(VMX_PREEMPTION_TIMER_VALUE, self.slice_timer);
        }
        let mut mode = switch::Mode::slice_start(self.launched);
        // What an entry must check comes from two places: time (the slice's
        // end, a device's or the APIC timer's deadline: one TSC compare
        // with the earliest, `attention_at`) and events (the mailbox, and
        // what the last exit may have changed). An exit the vCPU answered
        // alone (`handle_vcpu_exit`) changes nothing the checks look at and
        // posts no mail, so the entry after it is quiet: the compare, enter.
        // The event exits (a host interrupt, an interrupt window) set
        // `attention_at` to 0, which makes the next entry look at
        // everything, and so does a platform exit that may have given the
        // entry work (`DeviceClock::attention_after_exit`). Mail from
        // another CPU comes with its wake IPI (`Vm::post`), which is pending
        // while this loop runs with interrupts off and makes the entry exit
        // at once (external-interrupt exiting): the full checks after that
        // host-interrupt exit read the mailbox. A slice's first entry is
        // quiet too after a quiet yield, when nothing changed meanwhile
        // (`DeviceClock::slice_start_attention`); else it looks at everything.
        let mut attention_at = self.clock.slice_start_attention(slice_end, link);
        let mut exit = Exit::Hlt;
        let mut timer_until = slice_end;
        loop {
            let now = crate::arch::rdtsc();
            if now >= attention_at {
                let checks = crate::vmm::irq::EntryChecks {
                    now,
                    slice_end,
                    has_apic,
                    link,
                };
                if let Some(end) = self.check_entry(&checks, vm, &mut vmcs, host, env) {
                    return end;
                }
                timer_until = self.clock.apic_due.map_or(slice_end, |d| d.min(slice_end));
                attention_at = self.clock.attention_at(timer_until);
            }
            if !timer_saved {
                let ticks = timer_until.saturating_sub(now);
                vmcs.set_known(
                    VMX_PREEMPTION_TIMER_VALUE,
                    preemption_timer_value(ticks, rate),
                );
            }
            self.tally.settle(&vmcs);
            // The common entry has its own way in: no mode to test.
            let result = if mode == switch::Mode::Resume {
                // SAFETY: this CPU is in VMX root operation with this vCPU's
                // VMCS current, set up by `setup` (host state of this CPU)
                // and launched; HOST_RSP was written at the slice's first
                // entry, from this same call site and stack; interrupts are
                // off in the scheduler loop.
                unsafe { switch::resume(&mut self.regs) }
            } else {
                self.tally.asm_write();
                let first = mode;
                mode = switch::Mode::Resume;
                // SAFETY: as above, with `launched` telling VMLAUNCH from
                // VMRESUME; this first entry of the slice writes HOST_RSP.
                let result = unsafe { switch::switch(&mut self.regs, first) };
                // A VMLAUNCH that reached the guest left the VMCS's launch
                // state "launched" (SDM 25.1); only a slice's first entry
                // launches.
                if let SwitchResult::Exited = result {
                    self.launched = true;
                }
                result
            };
            match result {
                SwitchResult::EntryFailed { rflags } => {
                    let fail = vmx::check_vm_entry_flags(rflags)
                        .err()
                        .map(|k| k.resolve(count::inner(&vmcs)));
                    return self.stop_on_entry_instruction_failure(count::inner(&vmcs), fail, env);
                }
                SwitchResult::Exited => {}
            }
            // The event whose delivery the exit interrupted is delivered
            // again, unless the handler injects one of its own (below). Only
            // event exits have one: on the instruction exits' path this is
            // known to be None.
            let interrupted = decode::decode_into(&vmcs, &mut self.regs, &mut exit);
            if entry::keep_interrupted(&mut self.pending_event, interrupted) {
                attention_at = 0;
            }
            self.tally.exit(hvcore::stats::ExitKind::of(&exit));
            let next = match hvcore::exit::handle_vcpu_exit(&mut self.state, &exit, &mut self.regs)
            {
                Some(next) => next,
                None => {
                    if let Exit::EntryFailed {
                        code,
                        qualification,
                    } = exit
                    {
                        log::error!(
                            "vm {}: VM entry failed (reason {code}, qualification {qualification:#x}); guest state:",
                            self.vm.name()
                        );
                        dump_guest_state(count::inner(&vmcs));
                    }
                    let next = platform::handle_exit(
                        env,
                        &mut self.state,
                        &exit,
                        &mut self.regs,
                        (vm, self.index),
                        &mut self.clock,
                        VmcsCpu {
                            vmcs: &mut vmcs,
                            setup: &host.setup,
                            soft: &mut self.soft,
                            msrs: &mut self.lazy.regs_mut(),
                        },
                    );
                    attention_at = self.clock.attention_after_exit(
                        timer_until,
                        self.pending_event.is_some(),
                        has_apic,
                        env.output_full || self.soft.flush_tlb,
                    );
                    next
                }
            };
            self.shadow = entry::advance(&mut vmcs, &next, &self.regs);
            if entry::keep_injected(&mut self.pending_event, &next) {
                attention_at = 0;
            }
            // Entering again is one compare of the tag (the order of `Next`).
            if let Next::Resume | Next::AdvanceRip | Next::Inject(_) = next {
                if let Next::Resume = next {
                    crate::vmm::irq::event_exit_done(&exit, &mut attention_at);
                }
                continue;
            }
            let end = match next {
                Next::Yield => SliceEnd::Yielded,
                Next::Halt => SliceEnd::Halted,
                Next::Stop => {
                    // The other vCPUs of the VM leave the guest too.
                    vm.stop_others(self.index);
                    SliceEnd::Stopped
                }
                // Preempted (the three that enter again went on above): the
                // preemption timer fired. With a local APIC it is also set
                // for the APIC timer's deadline: when that came before the
                // slice's end, the vCPU runs on, after the full checks
                // (which fire the APIC timer). Checked here, on the
                // preemption's path, not at every exit.
                _ if has_apic && crate::arch::rdtsc() < slice_end => {
                    if let Err(e) = self.state.run_state_mut().enter() {
                        panic!("vm {}: APIC timer exit in state {:?}", vm.name(), e.from);
                    }
                    attention_at = 0;
                    continue;
                }
                _ => SliceEnd::Preempted,
            };
            self.clock.slice_ended(end, attention_at, has_apic);
            return self.slice_over(&vmcs, end);
        }
    }

    /// The checks of an entry that is not quiet (see `run_slice`): the
    /// slice's end, the mailbox, the APIC timer, the devices and events to
    /// inject (under the VM's lock only when a device is due or an event may
    /// be delivered), a TLB flush an emulated paging change asked for, and
    /// whether the host is stopping or its console queue is full. `Some`
    /// ends the slice. Inline: every slice's first entry runs it, and its
    /// call frame cost more than the checks (the lock's work, out of the
    /// way in `prepare_events`, stays a call).
    #[inline]
    fn check_entry(
        &mut self,
        c: &crate::vmm::irq::EntryChecks<'_>,
        vm: &Vm,
        vmcs: &mut count::Vmcs,
        host: &HostCpu,
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
            Err(end) => {
                self.tally.settle(vmcs);
                return Some(end);
            }
        };
        if lock {
            let mut ctx = vm.ctx();
            self.clock.catch_up(now, &mut ctx, vm, env);
            self.prepare_events(&mut ctx, vm, vmcs, &host.setup);
            self.clock.intr_possible = ctx.interrupt_possible();
        }
        if self.soft.flush_tlb {
            self.soft.flush_tlb = false;
            self.flush_translations(&host.setup);
        }
        None
    }

    /// Before an entry that may inject: the PIC's interrupt when the guest
    /// can take it (else an interrupt-window exit is asked for), then the
    /// pending event, with STI/MOV SS blocking that ended cleared first
    /// (`entry::interruptibility`).
    #[inline(never)]
    fn prepare_events(
        &mut self,
        ctx: &mut VmContext,
        vm: &Vm,
        vmcs: &mut count::Vmcs,
        setup: &VmxSetup,
    ) {
        let shadow = &mut self.shadow;
        let apic = vm.apic(self.index);
        let (irq, window) = irq::deliver(
            ctx,
            apic,
            self.index == 0,
            self.pending_event.is_some(),
            || {
                let rflags = vmcs.get_known(GUEST_RFLAGS);
                let state = entry::interruptibility(vmcs, shadow);
                Some(GuestInterruptibility::from_vmx(rflags, state.bits(), false))
            },
        );
        if irq.is_some() {
            self.pending_event = irq;
        }
        if window != self.clock.window_open {
            // MOV-DR exiting stays off for a vCPU that holds its DR0-DR3.
            let base = if self.lazy.debug_owned() {
                setup.primary & !PrimaryControls::MOV_DR_EXITING.bits()
            } else {
                setup.primary
            };
            let bits = base
                | if window {
                    PrimaryControls::INTERRUPT_WINDOW_EXITING.bits()
                } else {
                    0
                };
            vmcs.set_known(CPU_BASED_VM_EXEC_CONTROL, bits);
            self.clock.window_open = window;
        }
        if let Some(ev) = self.pending_event.take() {
            entry::inject(vmcs, &mut self.shadow, ev);
        }
    }

    /// The slice ends with the exit just handled (the handler moved the run
    /// state on).
    fn slice_over(&mut self, vmcs: &count::Vmcs, end: SliceEnd) -> SliceEnd {
        self.tally.settle(vmcs);
        end
    }

    /// Stops this vCPU and its VM from the host side (a failed VM entry, a
    /// run time limit), with the VM's report.
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
    fn wait_for_sipi(&mut self, host: &HostCpu, env: &mut KernelPlatform) -> Option<SliceEnd> {
        let vector = match self.vm.take_startup(self.index) {
            Startup::Wait => return Some(SliceEnd::WaitForSipi),
            Startup::Stop(reason) => return Some(self.stop_with_vm(reason)),
            Startup::Sipi(vector) => vector,
        };
        self.mode = GuestMode::Real16;
        self.entry = u64::from(vector) << 12;
        self.regs = GuestRegs::default();
        self.pending_event = None;
        self.soft = SoftState::default();
        let programmed = self.load(host).and_then(|mut vmcs| {
            self.setup(&mut vmcs, host)?;
            setup::start_up(&mut vmcs, vector).map_err(|e| VmxError::Instruction("VMWRITE", e))
        });
        if let Err(e) = programmed {
            log::error!(
                "vm {}: vCPU {} cannot start: {e}",
                self.vm.name(),
                self.index
            );
            self.stop(
                StopReason::MissingFeature {
                    what: "starting an application processor",
                    feature: "a programmable VMCS",
                    rip: self.entry,
                },
                env,
            );
            return Some(SliceEnd::Stopped);
        }
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

    fn stop_on_entry_instruction_failure(
        &mut self,
        vmcs: &ActiveVmcs,
        fail: Option<VmFail>,
        env: &mut KernelPlatform,
    ) -> SliceEnd {
        let rip = vmcs.get(GUEST_RIP).unwrap_or(u64::MAX);
        let (number, meaning) = match fail {
            Some(VmFail::Valid(e)) => (e.number(), e.description()),
            _ => (0, "VMfailInvalid: no current VMCS"),
        };
        log::error!(
            "vm {}: {} failed: VM-instruction error {number}: {meaning}; guest state:",
            self.vm.name(),
            if self.launched {
                "VMRESUME"
            } else {
                "VMLAUNCH"
            }
        );
        dump_guest_state(vmcs);
        self.stop(
            StopReason::EntryInstructionFailed {
                number,
                meaning,
                rip,
            },
            env,
        );
        SliceEnd::Stopped
    }

    /// Frees the VMCS region and the virtual-APIC page; gives back the VM
    /// (whose memory goes when its last vCPU is released).
    pub fn release(self) -> Arc<Vm> {
        self.tally.print(self.vm.name());
        // SAFETY: the vCPU is stopped and never entered again; VMCLEAR makes
        // the region inactive before its frame is returned.
        let _ = unsafe { vmx::instructions::vmclear(self.vmcs) };
        free_frame(self.vmcs);
        free_frame(self.virtual_apic);
        self.vm
    }
}

/// The VMX-preemption timer's value that expires after `ticks` TSC ticks
/// (it counts down at the TSC's rate divided by 2^`rate`, SDM 26.5.1),
/// at most its 32 bits.
fn preemption_timer_value(ticks: u64, rate: u8) -> u32 {
    (ticks >> rate).min(u64::from(u32::MAX)) as u32
}

fn free_frame(frame: HostPhysAddr) {
    let range = hvcore::frames::PhysRange::new(frame.as_u64(), frame.as_u64() + 4096);
    if let Err(e) = crate::mm::free(range) {
        log::error!("frame {:#x} could not be freed: {e:?}", frame.as_u64());
    }
}

/// Prints the guest state of the current VMCS (after a failed entry).
fn dump_guest_state(vmcs: &ActiveVmcs) {
    let n = |f: VmcsFieldNatural| vmcs.get(f).unwrap_or(u64::MAX);
    let f32 = |f: VmcsField32| vmcs.get(f).unwrap_or(u32::MAX);
    let f16 = |f: VmcsField16| vmcs.get(f).unwrap_or(u16::MAX);
    log::error!(
        "  RIP {:#x} RSP {:#x} RFLAGS {:#x}",
        n(GUEST_RIP),
        n(GUEST_RSP),
        n(GUEST_RFLAGS)
    );
    log::error!(
        "  CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x}",
        n(GUEST_CR0),
        n(GUEST_CR3),
        n(GUEST_CR4),
        vmcs.get(GUEST_IA32_EFER).unwrap_or(u64::MAX)
    );
    log::error!(
        "  CS {:#x} base {:#x} limit {:#x} ar {:#x}; SS {:#x} ar {:#x}; TR {:#x} ar {:#x}",
        f16(GUEST_CS_SELECTOR),
        n(GUEST_CS_BASE),
        f32(GUEST_CS_LIMIT),
        f32(GUEST_CS_AR_BYTES),
        f16(GUEST_SS_SELECTOR),
        f32(GUEST_SS_AR_BYTES),
        f16(GUEST_TR_SELECTOR),
        f32(GUEST_TR_AR_BYTES)
    );
    log::error!(
        "  controls: pin {:#x} primary {:#x} secondary {:#x} exit {:#x} entry {:#x}",
        f32(PIN_BASED_VM_EXEC_CONTROL),
        f32(CPU_BASED_VM_EXEC_CONTROL),
        f32(SECONDARY_VM_EXEC_CONTROL),
        f32(VM_EXIT_CONTROLS),
        f32(VM_ENTRY_CONTROLS)
    );
}
