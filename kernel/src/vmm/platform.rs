//! The services exit handlers get ([`hvcore::arch::Platform`]), shared by
//! the VT-x and AMD-V vCPUs: CPUID of the physical CPU, the time, the VM's
//! memory, the vCPU's backend-held state, and the guest console, whose
//! lines (and raw bytes, while the host console is attached to the VM) are
//! queued and printed between slices.

use alloc::vec::Vec;

use hvcore::arch::{
    Action, Exit, GuestCpu, GuestLimits, GuestMemory, GuestRegs, Next, Platform, Reg, StateError,
};
use hvcore::vcpu::{VcpuState, VmContext};

use hvcore::devices::lapic::ApicFault;

use super::partition::Partition;
use super::vm::Vm;

/// The services exit handlers get, for the VM whose exit is handled
/// (bound to a VM by `KernelPlatform::with`, see [`vcpu`]).
///
/// Guest console lines are queued here and printed between slices
/// ([`KernelPlatform::flush_output`]): drawing them (the framebuffer scroll
/// above all) would otherwise run inside the guest's slice and stretch it
/// past its end.
pub struct KernelPlatform {
    pub(super) apic_id: u32,
    /// Queued guest output in order: `vm NAME: LINE` lines and raw bytes.
    output: Vec<u8>,
    /// The raw stretches of `output` (start, end).
    raw_runs: Vec<(usize, usize)>,
    /// The queue reached [`OUTPUT_FLUSH_AT`]: end the running slice.
    pub(super) output_full: bool,
    pub(super) dropped_bytes: u64,
    drop_reported: bool,
}

/// When the queued guest output reaches this, the vCPU's slice ends early so
/// the queue is printed: a guest that writes faster than the host console
/// carries it (about 11 bytes per millisecond at 115200 baud) is slowed to
/// the console's pace instead of losing output or stretching its slice.
const OUTPUT_FLUSH_AT: usize = 512;
/// Hard bound of the queue (a line longer than the flush point still fits;
/// anything beyond is dropped and counted, which only a bug could cause).
const OUTPUT_QUEUE_LIMIT: usize = 8 * 1024;

impl KernelPlatform {
    pub(super) fn new(apic_id: u32) -> Self {
        KernelPlatform {
            apic_id,
            output: Vec::with_capacity(OUTPUT_QUEUE_LIMIT),
            raw_runs: Vec::new(),
            output_full: false,
            dropped_bytes: 0,
            drop_reported: false,
        }
    }

    /// Queues one guest console line, prefixed with the VM's name.
    pub(super) fn queue_line(&mut self, vm_name: &str, line: &str) {
        if self.output.len() + vm_name.len() + line.len() + 6 > OUTPUT_QUEUE_LIMIT {
            self.dropped_bytes += line.len() as u64 + 1;
            return;
        }
        for part in [b"vm ", vm_name.as_bytes(), b": ", line.as_bytes(), b"\n"] {
            self.output.extend_from_slice(part);
        }
        self.output_full = self.output.len() >= OUTPUT_FLUSH_AT;
    }

    /// Queues raw guest console bytes (the host console is attached to the
    /// VM): printed as they are, unprefixed.
    pub(super) fn queue_raw(&mut self, bytes: &[u8]) {
        if self.output.len() + bytes.len() > OUTPUT_QUEUE_LIMIT {
            self.dropped_bytes += bytes.len() as u64;
            return;
        }
        let start = self.output.len();
        self.output.extend_from_slice(bytes);
        let end = self.output.len();
        match self.raw_runs.last_mut() {
            Some(run) if run.1 == start => run.1 = end,
            _ => self.raw_runs.push((start, end)),
        }
        self.output_full = self.output.len() >= OUTPUT_FLUSH_AT;
    }

    /// Whether guest output is queued (printed by [`Self::flush_output`]).
    pub(super) fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Prints the queued guest output (outside any guest's slice).
    #[inline]
    pub(super) fn flush_output(&mut self) {
        if !self.output.is_empty() || (self.dropped_bytes != 0 && !self.drop_reported) {
            self.print_output();
        }
    }

    /// [`Self::flush_output`] when there is something to print.
    #[inline(never)]
    fn print_output(&mut self) {
        if !self.output.is_empty() {
            let mut at = 0;
            let lines = |from: usize, to: usize, output: &[u8]| {
                if let Some(text) = output.get(from..to).filter(|t| !t.is_empty()) {
                    // Lines hold sanitized ASCII and VM names only.
                    crate::console::print_guest_lines(
                        core::str::from_utf8(text).unwrap_or("<invalid>\n"),
                    );
                }
            };
            for &(start, end) in &self.raw_runs {
                lines(at, start, &self.output);
                crate::console::print_raw(self.output.get(start..end).unwrap_or(&[]));
                at = end;
            }
            lines(at, self.output.len(), &self.output);
            self.output.clear();
            self.raw_runs.clear();
        }
        self.output_full = false;
        if self.dropped_bytes != 0 && !self.drop_reported {
            log::warn!(
                "guest console output faster than the host console: dropping what does not fit"
            );
            self.drop_reported = true;
        }
    }
}

/// One exit of a vCPU of either backend, after the backend decoded it and
/// `hvcore::exit::handle_vcpu_exit` declined it (the common exits, which
/// concern the vCPU alone and need no service, are answered there, inline
/// in the backend's loop): hvcore's policy runs with `cpu` as the vCPU's
/// backend-held state and the platform's services, then the kernel keeps
/// up with what the guest may have changed: XCR0 in hardware after an
/// emulated XSETBV, the device clock and the PIC after an exit that reached
/// the devices, the APIC timer after an APIC MSR write. Exits that reach
/// the VM's devices take its lock here. Always inline: in the CPU loop's
/// function, which the slice loop is part of, LLVM left it out of line
/// (18 more on a port exit to a device; design note 16).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn handle_exit<C: GuestCpu>(
    env: &mut KernelPlatform,
    state: &mut VcpuState,
    exit: &Exit,
    regs: &mut GuestRegs,
    shared: (&Vm, usize),
    clock: &mut super::irq::DeviceClock,
    mut cpu: C,
) -> Next {
    let (vm, index) = shared;
    let action = {
        let mut platform = PlatformFor {
            apic_id: env.apic_id,
            host: env,
            memory: &vm.partition,
            cpu: &mut cpu,
            vcpu: Some(shared),
        };
        let mut lazy = LazyVm { vm, guard: None };
        let action =
            hvcore::exit::handle_platform_exit(&mut lazy, state, exit, regs, &mut platform);
        if let Some(mut ctx) = lazy.guard {
            after_vm_exit(&mut ctx, exit, vm, index, clock);
        }
        action
    };
    // The guest may have programmed its APIC timer.
    if let Exit::Wrmsr { msr, .. } = exit {
        if hvcore::devices::lapic::is_apic_msr(*msr) {
            clock.apic_due = vm.apic_deadline(index);
        }
    }
    // An accepted XSETBV changed the vCPU's XCR0, which this CPU runs with.
    if let (Exit::Xsetbv, Action::AdvanceRip) = (exit, &action) {
        if let Ok(xcr0) = cpu.read(Reg::Xcr0) {
            super::lazy::set_xcr0(xcr0);
        }
    }
    Next::from(&action)
}

/// The VM's devices as an exit reaches them: locked at the first use
/// (`hvcore::exit::VmAccess`), held to the end of the exit's handling.
struct LazyVm<'a> {
    vm: &'a Vm,
    guard: Option<super::vm::CtxGuard<'a>>,
}

impl hvcore::exit::VmAccess for LazyVm<'_> {
    #[inline(always)]
    fn get(&mut self) -> &mut VmContext {
        let vm = self.vm;
        self.guard.get_or_insert_with(|| vm.ctx())
    }
}

/// After an exit handled with the VM's devices locked: what the I/O APIC
/// sent (a device's interrupt, an EOI's re-delivery) goes to the local
/// APICs; after a port access, the vCPU's view of the device deadline and
/// the PIC is brought up to date, and vCPU 0 (the only one the PIC
/// reaches) is told when another vCPU's access may have given it an
/// interrupt it takes.
#[inline(always)]
fn after_vm_exit(
    ctx: &mut VmContext,
    exit: &Exit,
    vm: &Vm,
    index: usize,
    clock: &mut super::irq::DeviceClock,
) {
    vm.deliver_device_interrupts(ctx);
    if let Exit::Io(_) = exit {
        clock.refresh(ctx);
        if index != 0 && clock.intr_possible && vm.extint_reaches(0) {
            vm.post(0, super::vm::mail::INTERRUPT);
        }
    }
}

/// The services for exit handlers, bound to one VM and (during an exit) to
/// its vCPU's state.
pub struct PlatformFor<'a> {
    pub(super) apic_id: u32,
    pub(super) host: &'a mut KernelPlatform,
    pub(super) memory: &'a Partition,
    pub(super) cpu: &'a mut dyn GuestCpu,
    /// The VM and the vCPU's index, during an exit.
    pub(super) vcpu: Option<(&'a Vm, usize)>,
}

/// Stand-in for vCPU state outside an exit (a VM being stopped by the
/// host): every access fails, so nothing guesses a value.
struct NoCpu;

impl GuestCpu for NoCpu {
    fn read(&mut self, reg: Reg) -> Result<u64, StateError> {
        Err(StateError { reg })
    }
    fn write(&mut self, reg: Reg, _: u64) -> Result<(), StateError> {
        Err(StateError { reg })
    }
    fn limits(&self) -> GuestLimits {
        GuestLimits::default()
    }
}

impl KernelPlatform {
    /// Binds the platform to one VM's memory, outside any exit.
    pub fn with<'a>(&'a mut self, memory: &'a Partition) -> PlatformFor<'a> {
        let apic_id = self.apic_id;
        static mut NO_CPU: NoCpu = NoCpu;
        // SAFETY: NoCpu is a zero-sized type without state; handing out
        // several mutable references to it cannot alias any data.
        let cpu: &'a mut dyn GuestCpu = unsafe { &mut *core::ptr::addr_of_mut!(NO_CPU) };
        PlatformFor {
            apic_id,
            host: self,
            memory,
            cpu,
            vcpu: None,
        }
    }
}

impl Platform for PlatformFor<'_> {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = crate::arch::cpuid(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    fn console_write(&mut self, vm_name: &str, line: &str) {
        self.host.queue_line(vm_name, line);
    }

    fn console_raw(&mut self, _vm_name: &str, bytes: &[u8]) {
        self.host.queue_raw(bytes);
    }

    fn now_ticks(&self) -> u64 {
        crate::arch::rdtsc()
    }

    fn tsc_hz(&self) -> u64 {
        crate::apic::tsc_hz()
    }

    fn now_ns(&self) -> u64 {
        super::ns_from_tsc(crate::arch::rdtsc())
    }

    fn cpu_apic_id(&self) -> u32 {
        self.apic_id
    }

    fn guest_memory(&self) -> &dyn GuestMemory {
        self.memory
    }

    fn guest_cpu(&mut self) -> &mut dyn GuestCpu {
        self.cpu
    }

    fn apic_msr_read(&mut self, msr: u32) -> Option<Result<u64, ApicFault>> {
        let (vm, index) = self.vcpu?;
        vm.apic_msr_read(index, msr)
    }

    fn apic_msr_write(&mut self, msr: u32, value: u64) -> Option<Result<Option<u8>, ApicFault>> {
        let (vm, index) = self.vcpu?;
        vm.apic_msr_write(index, msr, value)
    }

    fn apic_mmio_claims(&mut self, gpa: u64) -> bool {
        self.vcpu
            .is_some_and(|(vm, index)| vm.apic_mmio_claims(index, gpa))
    }

    fn apic_mmio(&mut self, gpa: u64, write: Option<u32>) -> (u32, Option<u8>) {
        match self.vcpu {
            Some((vm, index)) => vm.apic_mmio(index, gpa, write),
            None => (u32::MAX, None),
        }
    }
}
