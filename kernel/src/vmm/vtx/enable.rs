//! Turning VT-x on, per CPU: detection (CPUID, IA32_FEATURE_CONTROL),
//! CR0/CR4 fixed bits, the VMXON region (SDM 24.7, 24.11.5, A.1).

use core::fmt;

use vmx::msr::{FeatureControlAction, IA32_FEATURE_CONTROL};
use vmx::{HostPhysAddr, VmFail, VmxCapabilities};
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
use x86_64::registers::model_specific::Msr;

use crate::arch::cpuid;

/// Why VT-x cannot be used on this CPU.
#[derive(Debug)]
pub enum VmxError {
    /// CPUID.1:ECX.VMX[bit 5] is clear (e.g. QEMU's TCG, AMD CPUs).
    NotSupported {
        /// The CPU vendor string.
        vendor: [u8; 12],
    },
    /// IA32_FEATURE_CONTROL is locked with VMX outside SMX off.
    DisabledByFirmware,
    /// The CPU lacks a capability the hypervisor needs.
    MissingFeature(&'static str),
    /// CR0/CR4 cannot satisfy the VMX fixed bits.
    FixedBits(&'static str, u64),
    /// No memory for a VMX structure.
    OutOfMemory(&'static str),
    /// A VMX instruction failed.
    Instruction(&'static str, VmFail),
}

impl fmt::Display for VmxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSupported { vendor } => write!(
                f,
                "VT-x not available: CPUID.1:ECX.VMX is clear on this {} CPU (QEMU TCG does not emulate VMX; use Bochs or KVM with nested VT-x)",
                core::str::from_utf8(vendor).unwrap_or("?")
            ),
            Self::DisabledByFirmware => write!(f, "VT-x disabled by firmware: IA32_FEATURE_CONTROL is locked with VMX off (enable Intel VT in the firmware setup)"),
            Self::MissingFeature(what) => write!(f, "VT-x lacks a required feature: {what}"),
            Self::FixedBits(reg, bits) => write!(f, "{reg} cannot meet the VMX fixed bits (offending bits {bits:#x})"),
            Self::OutOfMemory(what) => write!(f, "out of memory for {what}"),
            Self::Instruction(what, e) => write!(f, "{what} failed: {e}"),
        }
    }
}

/// Reads an MSR.
pub fn rdmsr(msr: u32) -> u64 {
    // SAFETY: only called for architectural MSRs whose presence the caller
    // established (VMX capability MSRs exist when CPUID reports VMX; the
    // capability reader never touches MSRs the CPU lacks).
    unsafe { Msr::new(msr).read() }
}

/// Whether this CPU has VT-x at all (CPUID.1:ECX bit 5, SDM 24.6).
pub fn detect() -> Result<(), VmxError> {
    if cpuid(1, 0).ecx & (1 << 5) == 0 {
        let v = cpuid(0, 0);
        let mut vendor = [0u8; 12];
        vendor[0..4].copy_from_slice(&v.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&v.edx.to_le_bytes());
        vendor[8..12].copy_from_slice(&v.ecx.to_le_bytes());
        return Err(VmxError::NotSupported { vendor });
    }
    Ok(())
}

/// Reads the VMX capability MSRs and checks what the hypervisor relies on.
pub fn capabilities() -> Result<VmxCapabilities, VmxError> {
    let caps = VmxCapabilities::from_reader(rdmsr);
    if !caps.basic.memory_type_is_write_back() {
        return Err(VmxError::MissingFeature(
            "write-back VMCS memory type (IA32_VMX_BASIC[53:50])",
        ));
    }
    if !caps.ept_usable() {
        return Err(VmxError::MissingFeature(
            "EPT with a 4-level walk and write-back paging structures",
        ));
    }
    Ok(caps)
}

/// Enables VMX operation on the calling CPU (SDM 24.7): feature control,
/// CR0/CR4 fixed bits, CR4.VMXE, VMXON.
pub fn enable_on_this_cpu(caps: &VmxCapabilities) -> Result<(), VmxError> {
    detect()?;
    match FeatureControlAction::decide(rdmsr(IA32_FEATURE_CONTROL)) {
        FeatureControlAction::AlreadyEnabled => {}
        FeatureControlAction::EnableAndLock(value) => {
            // SAFETY: IA32_FEATURE_CONTROL is unlocked (decide checked), so
            // writing it with the lock bit and VMX outside SMX is allowed.
            unsafe { Msr::new(IA32_FEATURE_CONTROL).write(value) };
            log::info!("IA32_FEATURE_CONTROL was unlocked: enabled VMX outside SMX and locked it");
        }
        FeatureControlAction::DisabledByFirmware => return Err(VmxError::DisabledByFirmware),
    }
    // CR0 and CR4 must satisfy IA32_VMX_CR{0,4}_FIXED{0,1} in VMX operation
    // (SDM 24.8); CR4.VMXE is one of CR4's required bits.
    let cr0 = caps.fixed_cr0(Cr0::read_raw());
    caps.check_cr0(cr0)
        .map_err(|v| VmxError::FixedBits("CR0", v.must_be_set | v.must_be_clear))?;
    // SAFETY: the fixed bits only add NE/PE/PG-class bits the kernel already
    // runs with (long mode), never clearing one it needs.
    unsafe { Cr0::write_raw(cr0) };
    let cr4 = caps.fixed_cr4(Cr4::read_raw() | Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS.bits());
    // SAFETY: setting CR4.VMXE (and any other VMX-required bits) does not
    // change how the kernel's own code runs.
    unsafe { Cr4::write_raw(cr4) };
    debug_assert!(Cr0::read().contains(Cr0Flags::PROTECTED_MODE_ENABLE));

    let region = vmx_region(caps, "VMXON region")?;
    // SAFETY: `region` is a fresh, zeroed, 4 KiB-aligned frame with the VMCS
    // revision identifier written; CR0/CR4 satisfy the fixed bits; the frame
    // stays allocated while this CPU is in VMX operation.
    // The region stays allocated: the CPU stays in VMX operation until the
    // machine powers off.
    unsafe { vmx::instructions::vmxon(region) }.map_err(|e| VmxError::Instruction("VMXON", e))
}

/// Allocates a VMXON or VMCS region: a zeroed 4 KiB frame starting with the
/// VMCS revision identifier (SDM 24.2, 24.11.5).
pub fn vmx_region(caps: &VmxCapabilities, what: &'static str) -> Result<HostPhysAddr, VmxError> {
    let frame = crate::mm::alloc_frame_zeroed().map_err(|_| VmxError::OutOfMemory(what))?;
    let revision = caps.basic.revision_id() & 0x7fff_ffff;
    let ptr = crate::mm::phys_to_virt(frame).as_mut_ptr::<u32>();
    // SAFETY: the frame was just allocated for this region and is mapped
    // through the physical-memory window; the first dword is the revision id.
    unsafe { ptr.write_volatile(revision) };
    Ok(HostPhysAddr::new(frame))
}
