//! One vCPU on VT-x: its VMCS (controls, host state, initial guest state),
//! the decoding of each VM exit into a backend-neutral [`hvcore::exit::Exit`],
//! and the loop that runs it for one time slice.
//!
//! Decoding happens once, here; policy happens in `hvcore::exit::handle_exit`;
//! RIP moves only through [`Action::next_rip`].

use hvcore::config::GuestMode;
use hvcore::exit::{self as hx, AccessSize, Action, Event, EventKind, Exit, GuestRegs, IoAccess, IoDir};
use hvcore::vcpu::{StopReason, VmContext};
use vmx::exit::{InterruptionType, IoDirection, LinearAccess};
use vmx::vmcs::*;
use vmx::{
    ActiveVmcs, EntryControls, EptViolationQualification, EventInjection, ExitControls, ExitInfo, ExitReason,
    HostPhysAddr, InterruptionInfo, IoQualification, PinBasedControls, PrimaryControls, SecondaryControls,
    VmFail, VmcsAccess, VmxCapabilities,
};
use x86_64::instructions::tables::{sgdt, sidt};
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::registers::model_specific::{Efer, FsBase, GsBase, Msr};

use super::enable::{vmx_region, VmxError};
use super::entry::{self, SwitchResult};
use super::partition::Partition;
use crate::arch::gdt::PerCpuTables;

/// Guest-physical layout of the boot structures the hypervisor writes for a
/// 64-bit guest (below the 1 MiB where guest programs are linked).
mod layout {
    /// Flat GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18).
    pub const GDT: u64 = 0x0500;
    /// PML4; the PDPT follows, then four page directories (4 GiB, 2 MiB pages).
    pub const PML4: u64 = 0x1000;
    /// PDPT.
    pub const PDPT: u64 = 0x2000;
    /// First page directory.
    pub const PD0: u64 = 0x3000;
    /// Guest CS selector.
    pub const CODE_SEL: u16 = 0x08;
    /// Guest data selectors.
    pub const DATA_SEL: u16 = 0x10;
    /// Guest TR selector.
    pub const TSS_SEL: u16 = 0x18;
    /// Segment descriptors (SDM Vol. 3A 3.4.5): 64-bit code (L=1, P, DPL 0,
    /// execute/read), flat 4 GiB data (G, D/B, P, read/write), and the low
    /// half of a busy 64-bit TSS (type 11, as TR requires) of 0x68 bytes at 0.
    pub const GDT_ENTRIES: [u64; 5] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x0000_8b00_0000_0067, 0];
}

/// Segment access rights (SDM 25.4.1, Table 25-2): type, S, DPL, P, L, D/B, G.
mod ar {
    /// 64-bit code, execute/read, accessed, present, L=1, G=1.
    pub const CODE64: u32 = 0xa09b;
    /// Data, read/write, accessed, present, D/B=1, G=1.
    pub const DATA32: u32 = 0xc093;
    /// 16-bit code for real mode: execute/read, accessed, present.
    pub const CODE16: u32 = 0x009b;
    /// 16-bit data for real mode: read/write, accessed, present.
    pub const DATA16: u32 = 0x0093;
    /// Busy 64-bit TSS (type 11), present.
    pub const TSS_BUSY: u32 = 0x008b;
    /// Unusable segment (bit 16).
    pub const UNUSABLE: u32 = 1 << 16;
}

/// The four guest-state fields of one segment register (SDM 25.4.1).
struct Segment {
    selector: VmcsField16,
    base: VmcsFieldNatural,
    limit: VmcsField32,
    access_rights: VmcsField32,
}

impl Segment {
    fn write(&self, vmcs: &mut ActiveVmcs, selector: u16, base: u64, limit: u32, access_rights: u32) -> Result<(), VmxError> {
        let w = |e: VmFail| VmxError::Instruction("VMWRITE", e);
        vmcs.set(self.selector, selector).map_err(w)?;
        vmcs.set(self.base, base).map_err(w)?;
        vmcs.set(self.limit, limit).map_err(w)?;
        vmcs.set(self.access_rights, access_rights).map_err(w)
    }
}

macro_rules! segment {
    ($name:ident, $sel:ident, $base:ident, $limit:ident, $ar:ident) => {
        const $name: Segment = Segment { selector: $sel, base: $base, limit: $limit, access_rights: $ar };
    };
}
segment!(ES, GUEST_ES_SELECTOR, GUEST_ES_BASE, GUEST_ES_LIMIT, GUEST_ES_AR_BYTES);
segment!(CS, GUEST_CS_SELECTOR, GUEST_CS_BASE, GUEST_CS_LIMIT, GUEST_CS_AR_BYTES);
segment!(SS, GUEST_SS_SELECTOR, GUEST_SS_BASE, GUEST_SS_LIMIT, GUEST_SS_AR_BYTES);
segment!(DS, GUEST_DS_SELECTOR, GUEST_DS_BASE, GUEST_DS_LIMIT, GUEST_DS_AR_BYTES);
segment!(FS, GUEST_FS_SELECTOR, GUEST_FS_BASE, GUEST_FS_LIMIT, GUEST_FS_AR_BYTES);
segment!(GS, GUEST_GS_SELECTOR, GUEST_GS_BASE, GUEST_GS_LIMIT, GUEST_GS_AR_BYTES);
segment!(TR, GUEST_TR_SELECTOR, GUEST_TR_BASE, GUEST_TR_LIMIT, GUEST_TR_AR_BYTES);
segment!(LDTR, GUEST_LDTR_SELECTOR, GUEST_LDTR_BASE, GUEST_LDTR_LIMIT, GUEST_LDTR_AR_BYTES);

/// CR0.PE, CR0.ET, CR0.NE, CR0.PG (SDM Vol. 3A 2.5).
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
/// CR4.PAE and CR4.VMXE.
const CR4_PAE: u64 = 1 << 5;
const CR4_VMXE: u64 = 1 << 13;
/// EFER.LME, EFER.LMA, EFER.NXE.
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// How a slice ended.
pub enum SliceEnd {
    /// The slice's time ran out.
    Preempted,
    /// The guest yielded.
    Yielded,
    /// The guest halted.
    Halted,
    /// The VM stopped (its report is in `vm.stop_report()`).
    Stopped,
}

/// The VMX-specific part of a vCPU.
pub struct Vcpu {
    /// Policy state (devices, counters, run state).
    pub vm: VmContext,
    /// The VM's memory.
    pub partition: Partition,
    /// The VMCS region.
    vmcs: HostPhysAddr,
    /// Launched since the last VMCLEAR (VMRESUME then, not VMLAUNCH).
    launched: bool,
    /// Guest GPRs (and the exiting instruction's RIP and length) while the
    /// guest is not running; the world switch loads and saves them in place.
    regs: GuestRegs,
    /// An event to inject at the next entry.
    pending_event: Option<Event>,
    /// Guest mode at start (for reports and entry decisions).
    mode: GuestMode,
    /// VPID (VM id + 1; 0 is the host's).
    vpid: u16,
    /// Whether the guest's VMCS fields are set up (done on the vCPU's CPU).
    initialised: bool,
    /// Entry point.
    entry: u64,
    /// Configured time slice.
    slice_us: u32,
}

/// Per-CPU VMX facts the host state needs.
pub struct HostCpu {
    /// This CPU's descriptor tables (GDT, TSS).
    pub tables: &'static PerCpuTables,
    /// VMX capabilities (identical on every CPU of a machine).
    pub caps: VmxCapabilities,
}

impl Vcpu {
    /// A vCPU for `vm` in `partition`, starting at `entry` in `mode`.
    pub fn new(
        vm: VmContext,
        partition: Partition,
        entry: u64,
        mode: GuestMode,
        slice_us: u32,
        caps: &VmxCapabilities,
    ) -> Result<Vcpu, (VmxError, Partition)> {
        let vmcs = match vmx_region(caps, "VMCS region") {
            Ok(v) => v,
            Err(e) => return Err((e, partition)),
        };
        let vpid = (vm.id() + 1) as u16;
        let mut vcpu = Vcpu {
            vm,
            partition,
            vmcs,
            launched: false,
            regs: GuestRegs::default(),
            pending_event: None,
            mode,
            vpid,
            initialised: false,
            entry,
            slice_us,
        };
        if mode == GuestMode::Long64 {
            vcpu.write_long_mode_structures();
        }
        Ok(vcpu)
    }

    /// Guest entry point.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// Configured time slice in microseconds.
    pub fn slice_us(&self) -> u32 {
        self.slice_us
    }

    /// Writes the GDT and identity-mapping page tables a 64-bit guest starts with.
    fn write_long_mode_structures(&mut self) {
        // The TSS descriptor is unused by the guests but referenced by TR.
        let gdt = layout::GDT_ENTRIES;
        if let Some(bytes) = self.partition.slice_mut(layout::GDT, (gdt.len() * 8) as u64) {
            for (chunk, d) in bytes.chunks_exact_mut(8).zip(gdt) {
                chunk.copy_from_slice(&d.to_le_bytes());
            }
        }
        // PML4[0] -> PDPT; PDPT[0..4] -> PD0..PD3; PDn[i] -> 2 MiB pages (PS).
        const P_RW: u64 = 0b11;
        const PS: u64 = 1 << 7;
        let mut write_u64 = |gpa: u64, v: u64| {
            if let Some(b) = self.partition.slice_mut(gpa, 8) {
                b.copy_from_slice(&v.to_le_bytes());
            }
        };
        write_u64(layout::PML4, layout::PDPT | P_RW);
        for pd in 0..4u64 {
            let pd_gpa = layout::PD0 + pd * 0x1000;
            write_u64(layout::PDPT + pd * 8, pd_gpa | P_RW);
            for i in 0..512u64 {
                let addr = (pd << 30) | (i << 21);
                write_u64(pd_gpa + i * 8, addr | P_RW | PS);
            }
        }
    }

    /// VMPTRLDs this vCPU's VMCS on the calling CPU (and sets it up the
    /// first time). Returns access to it.
    fn load(&mut self, host: &HostCpu) -> Result<ActiveVmcs, VmxError> {
        if !self.initialised {
            // SAFETY: the region is this vCPU's, allocated with the revision
            // id; VMCLEAR puts it in the clear state before first use.
            unsafe { vmx::instructions::vmclear(self.vmcs) }.map_err(|e| VmxError::Instruction("VMCLEAR", e))?;
        }
        // SAFETY: the CPU is in VMX root operation (the scheduler loop runs
        // after VMXON), and the region is a valid, cleared or launched VMCS
        // of this vCPU, used on this CPU only (vCPUs are pinned).
        let mut vmcs = unsafe { ActiveVmcs::load(self.vmcs) }.map_err(|e| VmxError::Instruction("VMPTRLD", e))?;
        if !self.initialised {
            self.setup(&mut vmcs, host)?;
            self.flush_translations(&host.caps);
            self.initialised = true;
        }
        Ok(vmcs)
    }

    /// Loads (and sets up) the VMCS, then overwrites one field: how the
    /// self-tests provoke VM-entry failures on purpose.
    pub fn overwrite_field_for_selftest(&mut self, host: &HostCpu, encoding: u32, value: u64) -> Result<(), VmxError> {
        let mut vmcs = self.load(host)?;
        vmcs.write(encoding, value).map_err(|e| VmxError::Instruction("VMWRITE", e))
    }

    /// Drops cached translations for this VM's EPTP and VPID (SDM 29.4.3):
    /// the frames of a stopped VM's EPT, and its VPID, may be reused.
    fn flush_translations(&self, caps: &VmxCapabilities) {
        use vmx::instructions::{InveptType, InvvpidType};
        use vmx::EptVpidCap;
        if caps.ept_vpid.contains(EptVpidCap::INVEPT_SINGLE_CONTEXT) {
            // SAFETY: VMX root operation; the EPTP is this VM's valid EPT.
            let _ = unsafe { vmx::instructions::invept(InveptType::SingleContext, self.partition.ept.eptp().as_u64()) };
        }
        if caps.ept_vpid.contains(EptVpidCap::INVVPID_SINGLE_CONTEXT) {
            // SAFETY: VMX root operation; the VPID is nonzero.
            let _ = unsafe { vmx::instructions::invvpid(InvvpidType::SingleContext, self.vpid, 0) };
        }
    }

    /// Writes controls, host state and the initial guest state.
    fn setup(&self, vmcs: &mut ActiveVmcs, host: &HostCpu) -> Result<(), VmxError> {
        let caps = &host.caps;
        let w = |e: VmFail| VmxError::Instruction("VMWRITE", e);
        let real = self.mode == GuestMode::Real16;

        // Controls (SDM 25.6-25.8), adjusted to what the CPU allows.
        let pin = caps
            .pin_based_controls(
                PinBasedControls::EXTERNAL_INTERRUPT_EXITING
                    | PinBasedControls::NMI_EXITING
                    | PinBasedControls::ACTIVATE_PREEMPTION_TIMER,
            )
            .map_err(VmxError::MissingControl)?;
        let primary = caps
            .primary_controls(
                PrimaryControls::HLT_EXITING
                    | PrimaryControls::UNCONDITIONAL_IO_EXITING
                    | PrimaryControls::ACTIVATE_SECONDARY_CONTROLS,
            )
            .map_err(VmxError::MissingControl)?;
        let mut secondary_wanted =
            SecondaryControls::ENABLE_EPT | SecondaryControls::ENABLE_VPID | SecondaryControls::ENABLE_RDTSCP;
        if real {
            secondary_wanted |= SecondaryControls::UNRESTRICTED_GUEST;
        }
        let secondary = caps.secondary_controls(secondary_wanted).map_err(VmxError::MissingControl)?;
        let exit = caps
            .exit_controls(
                ExitControls::HOST_ADDRESS_SPACE_SIZE
                    | ExitControls::LOAD_IA32_EFER
                    | ExitControls::SAVE_IA32_EFER
                    | ExitControls::LOAD_IA32_PAT
                    | ExitControls::SAVE_IA32_PAT,
            )
            .map_err(VmxError::MissingControl)?;
        let mut entry_wanted = EntryControls::LOAD_IA32_EFER | EntryControls::LOAD_IA32_PAT;
        if !real {
            entry_wanted |= EntryControls::IA32E_MODE_GUEST;
        }
        let entry = caps.entry_controls(entry_wanted).map_err(VmxError::MissingControl)?;
        vmcs.set(PIN_BASED_VM_EXEC_CONTROL, pin).map_err(w)?;
        vmcs.set(CPU_BASED_VM_EXEC_CONTROL, primary).map_err(w)?;
        vmcs.set(SECONDARY_VM_EXEC_CONTROL, secondary).map_err(w)?;
        vmcs.set(VM_EXIT_CONTROLS, exit).map_err(w)?;
        vmcs.set(VM_ENTRY_CONTROLS, entry).map_err(w)?;
        vmcs.set(EXCEPTION_BITMAP, 0).map_err(w)?;
        vmcs.set(CR3_TARGET_COUNT, 0).map_err(w)?;
        vmcs.set(VM_EXIT_MSR_STORE_COUNT, 0).map_err(w)?;
        vmcs.set(VM_EXIT_MSR_LOAD_COUNT, 0).map_err(w)?;
        vmcs.set(VM_ENTRY_MSR_LOAD_COUNT, 0).map_err(w)?;
        vmcs.set(VM_ENTRY_INTR_INFO, 0).map_err(w)?;
        vmcs.set(EPT_POINTER, self.partition.ept.eptp().as_u64()).map_err(w)?;
        vmcs.set(VIRTUAL_PROCESSOR_ID, self.vpid).map_err(w)?;
        vmcs.set(VMCS_LINK_POINTER, VMCS_LINK_POINTER_NONE).map_err(w)?;

        // Host state (SDM 25.5, 26.2.2-26.2.4): this CPU as it runs now.
        let sel = host.tables.selectors();
        vmcs.set(HOST_CR0, Cr0::read_raw()).map_err(w)?;
        vmcs.set(HOST_CR3, Cr3::read_raw().0.start_address().as_u64()).map_err(w)?;
        vmcs.set(HOST_CR4, Cr4::read_raw()).map_err(w)?;
        vmcs.set(HOST_CS_SELECTOR, sel.code.0).map_err(w)?;
        vmcs.set(HOST_SS_SELECTOR, sel.data.0).map_err(w)?;
        vmcs.set(HOST_DS_SELECTOR, sel.data.0).map_err(w)?;
        vmcs.set(HOST_ES_SELECTOR, sel.data.0).map_err(w)?;
        vmcs.set(HOST_FS_SELECTOR, 0).map_err(w)?;
        vmcs.set(HOST_GS_SELECTOR, 0).map_err(w)?;
        vmcs.set(HOST_TR_SELECTOR, sel.tss.0).map_err(w)?;
        vmcs.set(HOST_FS_BASE, FsBase::read().as_u64()).map_err(w)?;
        vmcs.set(HOST_GS_BASE, GsBase::read().as_u64()).map_err(w)?;
        vmcs.set(HOST_TR_BASE, host.tables.tss() as *const _ as u64).map_err(w)?;
        vmcs.set(HOST_GDTR_BASE, sgdt().base.as_u64()).map_err(w)?;
        vmcs.set(HOST_IDTR_BASE, sidt().base.as_u64()).map_err(w)?;
        vmcs.set(HOST_IA32_SYSENTER_CS, 0).map_err(w)?;
        vmcs.set(HOST_IA32_SYSENTER_ESP, 0).map_err(w)?;
        vmcs.set(HOST_IA32_SYSENTER_EIP, 0).map_err(w)?;
        vmcs.set(HOST_IA32_EFER, Efer::read_raw()).map_err(w)?;
        // SAFETY: IA32_PAT exists on every CPU with VMX (SDM 11.12.2).
        vmcs.set(HOST_IA32_PAT, unsafe { Msr::new(vmx::msr::IA32_PAT).read() }).map_err(w)?;
        vmcs.set(HOST_RIP, entry::exit_entry_point()).map_err(w)?;

        // Guest state (SDM 25.4, checks in 27.3.1).
        if real {
            self.setup_real_mode(vmcs, caps)?;
        } else {
            self.setup_long_mode(vmcs, caps)?;
        }
        vmcs.set(GUEST_DR7, 0x400).map_err(w)?;
        vmcs.set(GUEST_RSP, 0).map_err(w)?;
        vmcs.set(GUEST_RIP, self.entry).map_err(w)?;
        vmcs.set(GUEST_RFLAGS, 0x2).map_err(w)?;
        vmcs.set(GUEST_PENDING_DBG_EXCEPTIONS, 0).map_err(w)?;
        vmcs.set(GUEST_INTERRUPTIBILITY_INFO, 0).map_err(w)?;
        vmcs.set(GUEST_ACTIVITY_STATE, 0).map_err(w)?;
        vmcs.set(GUEST_SYSENTER_CS, 0).map_err(w)?;
        vmcs.set(GUEST_SYSENTER_ESP, 0).map_err(w)?;
        vmcs.set(GUEST_SYSENTER_EIP, 0).map_err(w)?;
        vmcs.set(GUEST_IA32_DEBUGCTL, 0).map_err(w)?;
        // Power-on PAT value (SDM 11.12.4).
        vmcs.set(GUEST_IA32_PAT, 0x0007_0406_0007_0406).map_err(w)?;
        Ok(())
    }

    fn setup_long_mode(&self, vmcs: &mut ActiveVmcs, caps: &VmxCapabilities) -> Result<(), VmxError> {
        let w = |e: VmFail| VmxError::Instruction("VMWRITE", e);
        let cr0 = caps.fixed_cr0(CR0_PE | CR0_ET | CR0_NE | CR0_PG);
        let cr4 = caps.fixed_cr4(CR4_PAE | CR4_VMXE);
        vmcs.set(GUEST_CR0, cr0).map_err(w)?;
        vmcs.set(GUEST_CR3, layout::PML4).map_err(w)?;
        vmcs.set(GUEST_CR4, cr4).map_err(w)?;
        // The guest sees CR4 without VMXE: the bit is owned by the host.
        vmcs.set(CR4_GUEST_HOST_MASK, CR4_VMXE).map_err(w)?;
        vmcs.set(CR4_READ_SHADOW, cr4 & !CR4_VMXE).map_err(w)?;
        vmcs.set(CR0_GUEST_HOST_MASK, 0).map_err(w)?;
        vmcs.set(CR0_READ_SHADOW, cr0).map_err(w)?;
        vmcs.set(GUEST_IA32_EFER, EFER_LME | EFER_LMA | EFER_NXE).map_err(w)?;
        for seg in [&ES, &SS, &DS, &FS, &GS] {
            seg.write(vmcs, layout::DATA_SEL, 0, 0xffff_ffff, ar::DATA32)?;
        }
        CS.write(vmcs, layout::CODE_SEL, 0, 0xffff_ffff, ar::CODE64)?;
        TR.write(vmcs, layout::TSS_SEL, 0, 0x67, ar::TSS_BUSY)?;
        LDTR.write(vmcs, 0, 0, 0, ar::UNUSABLE)?;
        vmcs.set(GUEST_GDTR_BASE, layout::GDT).map_err(w)?;
        vmcs.set(GUEST_GDTR_LIMIT, (layout::GDT_ENTRIES.len() * 8 - 1) as u32).map_err(w)?;
        vmcs.set(GUEST_IDTR_BASE, 0).map_err(w)?;
        vmcs.set(GUEST_IDTR_LIMIT, 0).map_err(w)?;
        Ok(())
    }

    fn setup_real_mode(&self, vmcs: &mut ActiveVmcs, caps: &VmxCapabilities) -> Result<(), VmxError> {
        let w = |e: VmFail| VmxError::Instruction("VMWRITE", e);
        // Unrestricted guest lifts the PE and PG requirements (SDM 25.8 / 27.3.1.1).
        let cr0 = (CR0_ET | CR0_NE | caps.guest_cr0_fixed0(true)) & caps.cr0_fixed1;
        let cr4 = caps.fixed_cr4(CR4_VMXE);
        vmcs.set(GUEST_CR0, cr0).map_err(w)?;
        vmcs.set(GUEST_CR3, 0).map_err(w)?;
        vmcs.set(GUEST_CR4, cr4).map_err(w)?;
        vmcs.set(CR4_GUEST_HOST_MASK, CR4_VMXE).map_err(w)?;
        vmcs.set(CR4_READ_SHADOW, cr4 & !CR4_VMXE).map_err(w)?;
        vmcs.set(CR0_GUEST_HOST_MASK, CR0_NE).map_err(w)?;
        vmcs.set(CR0_READ_SHADOW, cr0 & !CR0_NE).map_err(w)?;
        vmcs.set(GUEST_IA32_EFER, 0).map_err(w)?;
        for seg in [&ES, &SS, &DS, &FS, &GS] {
            seg.write(vmcs, 0, 0, 0xffff, ar::DATA16)?;
        }
        CS.write(vmcs, 0, 0, 0xffff, ar::CODE16)?;
        TR.write(vmcs, 0, 0, 0xffff, ar::TSS_BUSY)?;
        LDTR.write(vmcs, 0, 0, 0, ar::UNUSABLE)?;
        vmcs.set(GUEST_GDTR_BASE, 0).map_err(w)?;
        vmcs.set(GUEST_GDTR_LIMIT, 0xffff).map_err(w)?;
        // The real-mode interrupt vector table at 0.
        vmcs.set(GUEST_IDTR_BASE, 0).map_err(w)?;
        vmcs.set(GUEST_IDTR_LIMIT, 0x3ff).map_err(w)?;
        Ok(())
    }

    /// Runs the vCPU until its slice ends at TSC `slice_end` (or it yields,
    /// halts or stops). `env` gives exit handlers the platform services.
    pub fn run_slice(&mut self, host: &HostCpu, slice_end: u64, env: &mut super::KernelPlatform) -> SliceEnd {
        let mut vmcs = match self.load(host) {
            Ok(v) => v,
            Err(e) => {
                log::error!("vm {}: cannot set up its VMCS: {e}", self.vm.name());
                let reason = match e {
                    VmxError::Instruction(_, VmFail::Valid(err)) => StopReason::EntryInstructionFailed {
                        number: err.number(),
                        meaning: err.description(),
                        rip: self.entry,
                    },
                    _ => StopReason::EntryInstructionFailed { number: 0, meaning: "VMCS set-up failed", rip: self.entry },
                };
                self.vm.stop(reason, &mut env.with(&self.partition));
                return SliceEnd::Stopped;
            }
        };
        let rate = host.caps.misc.preemption_timer_rate();
        loop {
            let now = crate::arch::rdtsc();
            if now >= slice_end {
                return SliceEnd::Preempted;
            }
            let timer = ((slice_end - now) >> rate).min(u32::MAX as u64) as u32;
            if self.prepare_entry(&mut vmcs, timer).is_err() {
                return self.stop_with_vmcs_failure(&vmcs, env);
            }
            let _ = self.vm.run_state_mut().enter();
            // SAFETY: this CPU is in VMX root operation with this vCPU's VMCS
            // current and fully set up by `setup` (host state of this CPU);
            // `launched` tracks VMLAUNCH vs VMRESUME; interrupts are off in
            // the scheduler loop.
            let result = unsafe { entry::switch(&mut self.regs, self.launched) };
            match result {
                SwitchResult::EntryFailed { rflags } => {
                    let fail = vmx::check_vm_entry_flags(rflags).err().map(|k| k.resolve(&vmcs));
                    return self.stop_on_entry_instruction_failure(&vmcs, fail, env);
                }
                SwitchResult::Exited => self.launched = true,
            }
            let info = match ExitInfo::read(&vmcs) {
                Ok(i) => i,
                Err(_) => return self.stop_with_vmcs_failure(&vmcs, env),
            };
            // The guest-linear address is valid only for some EPT violations.
            let linear = match info.reason.reason() {
                ExitReason::EptViolation => vmcs.get(GUEST_LINEAR_ADDRESS),
                _ => Ok(0),
            };
            let (Ok(rip), Ok(linear)) = (vmcs.get(GUEST_RIP), linear) else {
                return self.stop_with_vmcs_failure(&vmcs, env);
            };
            self.regs.rip = rip;
            self.regs.instruction_len = u64::from(info.instruction_len);
            let regs = &mut self.regs;
            let exit = decode(&info, regs, linear);
            if let Exit::ExternalInterrupt = exit {
                // Let the host's IDT take the interrupt that caused the exit.
                // STI's one-instruction shadow ends after the NOP, where the
                // pending interrupt is delivered; CLI closes the window again.
                // SAFETY: the host IDT handles every vector it can receive.
                unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
            }
            if let Exit::EntryFailed { .. } = exit {
                log::error!("vm {}: VM entry failed ({:?}); guest state:", self.vm.name(), info.entry_failure());
                dump_guest_state(&vmcs);
            }
            let action = hx::handle_exit(&mut self.vm, &exit, regs, &mut env.with(&self.partition));
            let next = action.next_rip(regs.rip, regs.instruction_len);
            if next != regs.rip && vmcs.set(GUEST_RIP, next).is_err() {
                return self.stop_with_vmcs_failure(&vmcs, env);
            }
            // An event whose delivery the exit interrupted is delivered again
            // on the next entry (SDM 28.2.4), unless the handler chose another.
            if let Some(ev) = vectoring_event(&info) {
                self.pending_event.get_or_insert(ev);
            }
            match action {
                Action::Resume | Action::AdvanceRip => {}
                Action::Inject(ev) => self.pending_event = Some(ev),
                Action::Yield => return SliceEnd::Yielded,
                Action::Preempted => return SliceEnd::Preempted,
                Action::Halt => return SliceEnd::Halted,
                Action::Stop(_) => return SliceEnd::Stopped,
            }
            if crate::smp::stopping() {
                return SliceEnd::Preempted;
            }
        }
    }

    /// Writes the preemption timer and any pending event before an entry.
    fn prepare_entry(&mut self, vmcs: &mut ActiveVmcs, timer: u32) -> Result<(), VmFail> {
        vmcs.set(VMX_PREEMPTION_TIMER_VALUE, timer)?;
        if let Some(ev) = self.pending_event.take() {
            let kind = match ev.kind {
                EventKind::Exception => InterruptionType::HardwareException,
                EventKind::Nmi => InterruptionType::Nmi,
                EventKind::ExternalInterrupt => InterruptionType::ExternalInterrupt,
            };
            // Real-mode guests take no error codes (SDM 27.2.1.3).
            let error_code = ev.error_code.filter(|_| self.mode == GuestMode::Long64);
            let injection = EventInjection {
                info: InterruptionInfo::new(ev.vector, kind, error_code.is_some()),
                error_code: error_code.unwrap_or(0),
                instruction_len: 0,
            };
            injection.write_to(vmcs)?;
            self.vm.stats.injected_events += 1;
        }
        Ok(())
    }

    fn stop_on_entry_instruction_failure(
        &mut self,
        vmcs: &ActiveVmcs,
        fail: Option<VmFail>,
        env: &mut super::KernelPlatform,
    ) -> SliceEnd {
        let rip = vmcs.get(GUEST_RIP).unwrap_or(0);
        let (number, meaning) = match fail {
            Some(VmFail::Valid(e)) => (e.number(), e.description()),
            _ => (0, "VMfailInvalid: no current VMCS"),
        };
        log::error!(
            "vm {}: {} failed: VM-instruction error {number}: {meaning}; guest state:",
            self.vm.name(),
            if self.launched { "VMRESUME" } else { "VMLAUNCH" }
        );
        dump_guest_state(vmcs);
        self.vm.stop(StopReason::EntryInstructionFailed { number, meaning, rip }, &mut env.with(&self.partition));
        SliceEnd::Stopped
    }

    fn stop_with_vmcs_failure(&mut self, vmcs: &ActiveVmcs, env: &mut super::KernelPlatform) -> SliceEnd {
        let fail = vmcs.instruction_error().ok().map(VmFail::Valid);
        self.stop_on_entry_instruction_failure(vmcs, fail, env)
    }

    /// The VMCS region (for VMCLEAR when the vCPU goes away).
    pub fn release(self) {
        // SAFETY: the vCPU is stopped and never entered again; VMCLEAR makes
        // the region inactive before its frame is returned.
        let _ = unsafe { vmx::instructions::vmclear(self.vmcs) };
        let _ = crate::mm::free(hvcore::frames::PhysRange::new(self.vmcs.as_u64(), self.vmcs.as_u64() + 4096));
        self.partition.release();
    }
}

/// Decodes a VM exit into the backend-neutral form, once.
fn decode(info: &ExitInfo, regs: &GuestRegs, linear_address: u64) -> Exit {
    if info.reason.is_entry_failure() {
        return Exit::EntryFailed { code: info.reason.0 & 0xffff, qualification: info.qualification };
    }
    match info.reason.reason() {
        ExitReason::Cpuid => Exit::Cpuid,
        ExitReason::Hlt => Exit::Hlt,
        ExitReason::Vmcall => Exit::Vmcall,
        ExitReason::Rdmsr => Exit::Rdmsr { msr: regs.rcx as u32 },
        ExitReason::Wrmsr => Exit::Wrmsr { msr: regs.rcx as u32, value: (regs.rdx << 32) | (regs.rax & 0xffff_ffff) },
        ExitReason::TripleFault => Exit::TripleFault,
        ExitReason::ExternalInterrupt => Exit::ExternalInterrupt,
        ExitReason::PreemptionTimer => Exit::PreemptionTimer,
        ExitReason::IoInstruction => match IoQualification::from_raw(info.qualification) {
            Some(q) => {
                let size = AccessSize::from_bytes(q.size.bytes()).unwrap_or(AccessSize::Byte);
                let dir = match q.direction {
                    IoDirection::In => IoDir::In,
                    IoDirection::Out => IoDir::Out { value: (regs.rax as u32) & size.mask() },
                };
                Exit::Io(IoAccess { port: q.port, size, dir, string_or_rep: q.string || q.rep })
            }
            None => unhandled(info),
        },
        ExitReason::EptViolation => {
            let q = EptViolationQualification::from_raw(info.qualification);
            let mut access = hx::Access::empty();
            if q.contains(EptViolationQualification::READ) {
                access |= hx::Access::READ;
            }
            if q.contains(EptViolationQualification::WRITE) {
                access |= hx::Access::WRITE;
            }
            if q.contains(EptViolationQualification::FETCH) {
                access |= hx::Access::EXECUTE;
            }
            let linear = match q.linear_access() {
                LinearAccess::NotValid => None,
                _ => Some(linear_address),
            };
            Exit::MemoryViolation { gpa: info.guest_physical.map(|g| g.as_u64()).unwrap_or(0), access, linear }
        }
        ExitReason::ExceptionOrNmi => {
            let i = info.interruption;
            if i.kind() == InterruptionType::Nmi {
                // A host NMI while the guest ran: nothing for the guest.
                Exit::ExternalInterrupt
            } else {
                Exit::Exception { vector: i.vector(), error_code: info.interruption_error_code }
            }
        }
        _ => unhandled(info),
    }
}

/// The event being delivered when the exit happened, if it must be
/// re-injected: hardware exceptions, NMIs and external interrupts (software
/// interrupts and exceptions re-execute with their instruction).
fn vectoring_event(info: &ExitInfo) -> Option<Event> {
    let v = info.idt_vectoring;
    if !v.is_valid() {
        return None;
    }
    let kind = match v.kind() {
        InterruptionType::HardwareException => EventKind::Exception,
        InterruptionType::Nmi => EventKind::Nmi,
        InterruptionType::ExternalInterrupt => EventKind::ExternalInterrupt,
        _ => return None,
    };
    Some(Event { kind, vector: v.vector(), error_code: info.idt_vectoring_error_code })
}

fn unhandled(info: &ExitInfo) -> Exit {
    let r = info.reason.reason();
    Exit::Unhandled { code: info.reason.0 & 0xffff, name: r.describe(), qualification: info.qualification }
}

/// Prints the guest state of the current VMCS (after a failed entry).
fn dump_guest_state(vmcs: &ActiveVmcs) {
    let n = |f: VmcsFieldNatural| vmcs.get(f).unwrap_or(u64::MAX);
    let f32 = |f: VmcsField32| vmcs.get(f).unwrap_or(u32::MAX);
    let f16 = |f: VmcsField16| vmcs.get(f).unwrap_or(u16::MAX);
    log::error!("  RIP {:#x} RSP {:#x} RFLAGS {:#x}", n(GUEST_RIP), n(GUEST_RSP), n(GUEST_RFLAGS));
    log::error!("  CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x}", n(GUEST_CR0), n(GUEST_CR3), n(GUEST_CR4), vmcs.get(GUEST_IA32_EFER).unwrap_or(u64::MAX));
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
