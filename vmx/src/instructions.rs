//! VMX instructions (SDM Vol. 3C, chapter 31) and their failure conventions.
//!
//! Every wrapper is an `unsafe fn` whose `asm!` block also captures CF and ZF
//! (SDM 31.2 "Conventions"): CF = 1 is VMfailInvalid, ZF = 1 is VMfailValid,
//! after which the VM-instruction error field (encoding 0x4400) is read into an
//! [`InstructionError`]. A failed `vmread` is an `Err`, never a zero.
//!
//! VMLAUNCH and VMRESUME are not here: the kernel's world switch saves and
//! restores guest registers around them in its own `asm!`. After a failed entry
//! it feeds the RFLAGS it captured to [`check_vm_entry_flags`] and resolves a
//! VMfailValid with [`VmFailKind::resolve`].
//!
//! The `asm!` is compiled for every `x86_64` target (so host builds type-check
//! it) but only runs in VMX root operation on the bare-metal kernel: every
//! entry point is `unsafe` and says so.
#![allow(unsafe_code)] // The VMX instructions live here; see the crate docs.

use core::fmt;

#[cfg(target_arch = "x86_64")]
use crate::addr::HostPhysAddr;
use crate::vmcs::{self, VmcsAccess};

#[cfg(target_arch = "x86_64")]
use core::arch::asm;

/// RFLAGS.CF, bit 0: set by a VMX instruction on VMfailInvalid (SDM 31.2).
pub const RFLAGS_CF: u64 = 1 << 0;
/// RFLAGS.ZF, bit 6: set by a VMX instruction on VMfailValid (SDM 31.2).
pub const RFLAGS_ZF: u64 = 1 << 6;

/// Which of the two VMX failure conventions an instruction reported (SDM 31.2),
/// before the error number of a VMfailValid has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmFailKind {
    /// VMfailInvalid: CF = 1; there is no current VMCS to hold an error number.
    Invalid,
    /// VMfailValid: ZF = 1; the VM-instruction error field says why.
    Valid,
}

impl VmFailKind {
    /// Completes a VMfailValid by reading the VM-instruction error field of
    /// `vmcs` (the current VMCS). If even that read fails, which SDM 31.2 rules
    /// out for VMfailValid, the failure is reported as [`VmFail::Invalid`].
    pub fn resolve<V: VmcsAccess + ?Sized>(self, vmcs: &V) -> VmFail {
        match self {
            VmFailKind::Invalid => VmFail::Invalid,
            VmFailKind::Valid => match vmcs.get(vmcs::VM_INSTRUCTION_ERROR) {
                Ok(n) => VmFail::Valid(InstructionError::from_raw(n)),
                Err(_) => VmFail::Invalid,
            },
        }
    }
}

/// A failed VMX instruction (SDM 31.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmFail {
    /// VMfailInvalid (CF = 1): no current VMCS, or a bad VMXON/VMCS pointer.
    Invalid,
    /// VMfailValid (ZF = 1), with the VM-instruction error number (SDM 31.4).
    Valid(InstructionError),
}

impl VmFail {
    /// The VM-instruction error, if this was a VMfailValid.
    pub const fn instruction_error(self) -> Option<InstructionError> {
        match self {
            VmFail::Invalid => None,
            VmFail::Valid(e) => Some(e),
        }
    }
}

impl fmt::Display for VmFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmFail::Invalid => f.write_str("VMfailInvalid (no current VMCS or invalid pointer)"),
            VmFail::Valid(e) => write!(f, "VMfailValid: {e}"),
        }
    }
}

/// Decodes the RFLAGS a VMX instruction left behind (SDM 31.2): for the kernel's
/// VMLAUNCH/VMRESUME, which fall through to the next instruction only on failure.
pub const fn check_vm_entry_flags(rflags: u64) -> Result<(), VmFailKind> {
    if rflags & RFLAGS_CF != 0 {
        Err(VmFailKind::Invalid)
    } else if rflags & RFLAGS_ZF != 0 {
        Err(VmFailKind::Valid)
    } else {
        Ok(())
    }
}

macro_rules! instruction_errors {
    ($($name:ident = $num:literal, $text:literal;)*) => {
        /// A VM-instruction error number (SDM Vol. 3C, 31.4, Table 31-1
        /// "VM-Instruction Error Numbers").
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum InstructionError {
            $(
                #[doc = concat!($num, ": ", $text, " (SDM Table 31-1).")]
                $name,
            )*
            /// A number the SDM does not define (14, 21, 27, 0 or above 28).
            Unknown(u32),
        }

        impl InstructionError {
            /// Decodes the VM-instruction error field (encoding 0x4400).
            pub const fn from_raw(raw: u32) -> Self {
                match raw {
                    $($num => Self::$name,)*
                    other => Self::Unknown(other),
                }
            }

            /// The error number as found in the VM-instruction error field.
            pub const fn number(self) -> u32 {
                match self {
                    $(Self::$name => $num,)*
                    Self::Unknown(n) => n,
                }
            }

            /// The SDM's description of the error (Table 31-1).
            pub const fn description(&self) -> &'static str {
                match self {
                    $(Self::$name => $text,)*
                    Self::Unknown(_) => "unknown VM-instruction error",
                }
            }
        }
    };
}

instruction_errors! {
    VmcallInVmxRoot = 1, "VMCALL executed in VMX root operation";
    VmclearInvalidAddress = 2, "VMCLEAR with invalid physical address";
    VmclearVmxonPointer = 3, "VMCLEAR with VMXON pointer";
    VmlaunchNonClearVmcs = 4, "VMLAUNCH with non-clear VMCS";
    VmresumeNonLaunchedVmcs = 5, "VMRESUME with non-launched VMCS";
    VmresumeAfterVmxoff = 6, "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)";
    EntryInvalidControlFields = 7, "VM entry with invalid control field(s)";
    EntryInvalidHostStateFields = 8, "VM entry with invalid host-state field(s)";
    VmptrldInvalidAddress = 9, "VMPTRLD with invalid physical address";
    VmptrldVmxonPointer = 10, "VMPTRLD with VMXON pointer";
    VmptrldIncorrectRevision = 11, "VMPTRLD with incorrect VMCS revision identifier";
    UnsupportedVmcsComponent = 12, "VMREAD/VMWRITE from/to unsupported VMCS component";
    VmwriteReadOnlyComponent = 13, "VMWRITE to read-only VMCS component";
    VmxonInVmxRoot = 15, "VMXON executed in VMX root operation";
    EntryInvalidExecutiveVmcsPointer = 16, "VM entry with invalid executive-VMCS pointer";
    EntryNonLaunchedExecutiveVmcs = 17, "VM entry with non-launched executive VMCS";
    EntryExecutiveVmcsNotVmxonPointer = 18, "VM entry with executive-VMCS pointer not VMXON pointer";
    VmcallNonClearVmcs = 19, "VMCALL with non-clear VMCS";
    VmcallInvalidExitControls = 20, "VMCALL with invalid VM-exit control fields";
    VmcallIncorrectMsegRevision = 22, "VMCALL with incorrect MSEG revision identifier";
    VmxoffUnderDualMonitor = 23, "VMXOFF under dual-monitor treatment of SMIs and SMM";
    VmcallInvalidSmmMonitorFeatures = 24, "VMCALL with invalid SMM-monitor features";
    EntryInvalidExecutiveControls = 25, "VM entry with invalid VM-execution control fields in executive VMCS";
    EntryEventsBlockedByMovSs = 26, "VM entry with events blocked by MOV SS";
    InvalidInveptInvvpidOperand = 28, "Invalid operand to INVEPT/INVVPID";
}

impl fmt::Display for InstructionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VM-instruction error {}: {}",
            self.number(),
            self.description()
        )
    }
}

/// The INVEPT type operand (SDM 31.3 "INVEPT", 29.4.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum InveptType {
    /// Invalidate mappings associated with one EPTP (single-context).
    SingleContext = 1,
    /// Invalidate mappings associated with all EPTPs (global).
    AllContext = 2,
}

/// The INVVPID type operand (SDM 31.3 "INVVPID", 29.4.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum InvvpidType {
    /// Invalidate mappings for one linear address tagged with one VPID.
    IndividualAddress = 0,
    /// Invalidate all mappings tagged with one VPID.
    SingleContext = 1,
    /// Invalidate all mappings tagged with any VPID other than 0.
    AllContext = 2,
    /// As single-context, but keep global translations.
    SingleContextRetainingGlobals = 3,
}

/// Turns the CF/ZF captured by an instruction wrapper into a result.
///
/// # Safety
///
/// The CPU is in VMX operation (so that, on VMfailValid, the VM-instruction
/// error field of the current VMCS can be read).
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn flags_to_result(cf: u8, zf: u8) -> Result<(), VmFail> {
    // One test on the path taken (VMsucceed: both clear).
    if cf | zf == 0 {
        Ok(())
    } else {
        // SAFETY: as for this function.
        unsafe { failure(cf) }
    }
}

/// [`flags_to_result`]'s VMfailInvalid (CF) or VMfailValid (ZF), out of line.
///
/// # Safety
///
/// As for [`flags_to_result`].
#[cfg(target_arch = "x86_64")]
#[cold]
#[inline(never)]
unsafe fn failure(cf: u8) -> Result<(), VmFail> {
    if cf != 0 {
        Err(VmFail::Invalid)
    } else {
        // SAFETY: the caller is in VMX operation, and VMfailValid implies a
        // current VMCS whose error field vmread can read.
        Err(
            match unsafe { vmread(vmcs::VM_INSTRUCTION_ERROR.encoding()) } {
                Ok(n) => VmFail::Valid(InstructionError::from_raw(n as u32)),
                Err(_) => VmFail::Invalid,
            },
        )
    }
}

/// Enters VMX root operation (VMXON, SDM 31.3).
///
/// # Safety
///
/// - Runs at CPL 0 with CR4.VMXE = 1, CR0/CR4 satisfying the VMX fixed bits
///   (SDM A.7, A.8) and IA32_FEATURE_CONTROL locked with VMX enabled outside
///   SMX; otherwise the instruction faults (#UD/#GP).
/// - `region` is the host-physical address of a 4 KiB-aligned, 4 KiB frame
///   whose first 32 bits hold the VMCS revision identifier (IA32_VMX_BASIC
///   bits 30:0), and which is reserved for the processor and neither accessed
///   nor freed until after [`vmxoff`].
pub unsafe fn vmxon(region: HostPhysAddr) -> Result<(), VmFail> {
    let addr = region.as_u64();
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees CPL 0, the VMX preconditions and that
    // `region` is a frame handed to the processor; `addr` is a live local.
    unsafe {
        asm!(
            "vmxon qword ptr [{addr}]",
            "setc {cf}",
            "setz {zf}",
            addr = in(reg) &addr,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    // SAFETY: VMXON reports VMfailValid only when already in VMX root
    // operation, so the error field is readable whenever it is read.
    unsafe { flags_to_result(cf, zf) }
}

/// Leaves VMX operation (VMXOFF, SDM 31.3).
///
/// # Safety
///
/// The CPU is in VMX root operation and nothing will use VMX state (the current
/// VMCS, a launched guest) until the next [`vmxon`]. Active VMCSs should have
/// been [`vmclear`]ed first, or their contents are lost.
pub unsafe fn vmxoff() -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees VMX root operation and that no VMX state
    // is used after this point.
    unsafe {
        asm!(
            "vmxoff",
            "setc {cf}",
            "setz {zf}",
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    // SAFETY: VMXOFF reports VMfailValid only when it leaves the CPU in VMX
    // operation, so the error field is readable whenever it is read.
    unsafe { flags_to_result(cf, zf) }
}

/// Makes a VMCS clear, inactive and not current, flushing it to memory
/// (VMCLEAR, SDM 31.3).
///
/// # Safety
///
/// The CPU is in VMX root operation; `region` is a 4 KiB-aligned frame owned by
/// the caller for use as a VMCS region (the processor writes to it).
pub unsafe fn vmclear(region: HostPhysAddr) -> Result<(), VmFail> {
    let addr = region.as_u64();
    let (cf, zf): (u8, u8);
    // SAFETY: VMX root operation and the region's ownership are guaranteed by
    // the caller; `addr` is a live local holding the operand.
    unsafe {
        asm!(
            "vmclear qword ptr [{addr}]",
            "setc {cf}",
            "setz {zf}",
            addr = in(reg) &addr,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    // SAFETY: the caller guarantees VMX operation.
    unsafe { flags_to_result(cf, zf) }
}

/// Makes the VMCS at `region` current and active (VMPTRLD, SDM 31.3).
/// VMPTRLD reads its operand from memory: `region` is that operand (the
/// address type is `repr(transparent)`), not a copy made for it.
///
/// # Safety
///
/// The CPU is in VMX root operation; `region` is a 4 KiB-aligned frame owned by
/// the caller for use as a VMCS region, initialised with the revision identifier
/// and [`vmclear`]ed before first use, and not current on another CPU.
pub unsafe fn vmptrld(region: &HostPhysAddr) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: VMX root operation and the region's state are guaranteed by the
    // caller; `region` is a live reference to the 64-bit operand.
    unsafe {
        asm!(
            "vmptrld qword ptr [{addr}]",
            "setc {cf}",
            "setz {zf}",
            addr = in(reg) core::ptr::from_ref(region),
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    // SAFETY: the caller guarantees VMX operation.
    unsafe { flags_to_result(cf, zf) }
}

/// The current-VMCS pointer (VMPTRST, SDM 31.3); `None` if there is no current
/// VMCS (the processor stores FFFFFFFF_FFFFFFFFH).
///
/// # Safety
///
/// The CPU is in VMX root operation.
pub unsafe fn vmptrst() -> Result<Option<HostPhysAddr>, VmFail> {
    let mut ptr: u64 = 0;
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees VMX operation; the instruction stores 8
    // bytes to `ptr`, a live, writable local.
    unsafe {
        asm!(
            "vmptrst qword ptr [{ptr}]",
            "setc {cf}",
            "setz {zf}",
            ptr = in(reg) &mut ptr,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    // SAFETY: the caller guarantees VMX operation.
    unsafe { flags_to_result(cf, zf) }?;
    Ok((ptr != u64::MAX).then_some(HostPhysAddr::new(ptr)))
}

/// Reads a field of the current VMCS by its encoding (VMREAD, SDM 31.3).
/// Prefer [`crate::vmcs::ActiveVmcs`] and its typed fields.
///
/// # Safety
///
/// The CPU is in VMX root operation.
pub unsafe fn vmread(encoding: u32) -> Result<u64, VmFail> {
    let value: u64;
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees VMX operation; VMREAD only writes the
    // output register.
    unsafe {
        asm!(
            "vmread {value}, {field}",
            "setc {cf}",
            "setz {zf}",
            field = in(reg) u64::from(encoding),
            value = out(reg) value,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack, nomem),
        );
    }
    if cf != 0 {
        return Err(VmFail::Invalid);
    }
    if zf != 0 {
        // Avoid recursing forever if the error field itself is unreadable.
        if encoding == vmcs::VM_INSTRUCTION_ERROR.encoding() {
            return Err(VmFail::Invalid);
        }
        // SAFETY: the caller guarantees VMX operation.
        return unsafe { flags_to_result(cf, zf) }.map(|()| 0);
    }
    Ok(value)
}

/// Writes a field of the current VMCS by its encoding (VMWRITE, SDM 31.3).
/// Prefer [`crate::vmcs::ActiveVmcs`] and its typed fields.
///
/// # Safety
///
/// The CPU is in VMX root operation.
pub unsafe fn vmwrite(encoding: u32, value: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees VMX operation; VMWRITE only changes the
    // current VMCS, which Rust code never accesses as memory.
    unsafe {
        asm!(
            "vmwrite {field}, {value}",
            "setc {cf}",
            "setz {zf}",
            field = in(reg) u64::from(encoding),
            value = in(reg) value,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack, nomem),
        );
    }
    // SAFETY: the caller guarantees VMX operation.
    unsafe { flags_to_result(cf, zf) }
}

/// VMREAD without the failure check, for a field that cannot fail: see
/// [`crate::vmcs::VmcsAccess::read_known`]. Debug builds still check the
/// flags and panic on a failure, which then is a bug in the caller.
///
/// # Safety
///
/// The CPU is in VMX root operation.
#[inline]
pub unsafe fn vmread_unchecked(encoding: u32) -> u64 {
    if cfg!(debug_assertions) {
        // SAFETY: the caller's contract.
        return match unsafe { vmread(encoding) } {
            Ok(v) => v,
            Err(e) => panic!("VMREAD of field {encoding:#x} failed: {e}"),
        };
    }
    let value: u64;
    // SAFETY: the caller guarantees VMX operation; VMREAD only writes the
    // output register (and the flags).
    unsafe {
        asm!(
            "vmread {value}, {field}",
            field = in(reg) u64::from(encoding),
            value = out(reg) value,
            options(nostack, nomem),
        );
    }
    value
}

/// VMWRITE without the failure check, for a field that cannot fail: see
/// [`crate::vmcs::VmcsAccess::write_known`]. Debug builds still check.
///
/// # Safety
///
/// The CPU is in VMX root operation.
#[inline]
pub unsafe fn vmwrite_unchecked(encoding: u32, value: u64) {
    if cfg!(debug_assertions) {
        // SAFETY: the caller's contract.
        if let Err(e) = unsafe { vmwrite(encoding, value) } {
            panic!("VMWRITE of field {encoding:#x} failed: {e}");
        }
        return;
    }
    // SAFETY: the caller guarantees VMX operation; VMWRITE only changes the
    // current VMCS (and the flags), which Rust code never accesses as memory.
    unsafe {
        asm!(
            "vmwrite {field}, {value}",
            field = in(reg) u64::from(encoding),
            value = in(reg) value,
            options(nostack, nomem),
        );
    }
}

/// Invalidates EPT-derived translations (INVEPT, SDM 31.3). `eptp` is ignored
/// for [`InveptType::AllContext`].
///
/// # Safety
///
/// The CPU is in VMX root operation and supports INVEPT with this type
/// (IA32_VMX_EPT_VPID_CAP, SDM A.10); otherwise the instruction faults (#UD).
pub unsafe fn invept(kind: InveptType, eptp: u64) -> Result<(), VmFail> {
    let descriptor: [u64; 2] = [eptp, 0];
    let (cf, zf): (u8, u8);
    // SAFETY: VMX operation and INVEPT support are guaranteed by the caller;
    // the 16-byte descriptor is a live local that INVEPT only reads.
    unsafe {
        asm!(
            "invept {kind}, xmmword ptr [{desc}]",
            "setc {cf}",
            "setz {zf}",
            kind = in(reg) kind as u64,
            desc = in(reg) &descriptor,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack, readonly),
        );
    }
    // SAFETY: the caller guarantees VMX operation.
    unsafe { flags_to_result(cf, zf) }
}

/// Invalidates VPID-tagged translations (INVVPID, SDM 31.3). `addr` is used
/// only by [`InvvpidType::IndividualAddress`].
///
/// # Safety
///
/// The CPU is in VMX root operation and supports INVVPID with this type
/// (IA32_VMX_EPT_VPID_CAP, SDM A.10); otherwise the instruction faults (#UD).
pub unsafe fn invvpid(kind: InvvpidType, vpid: u16, addr: u64) -> Result<(), VmFail> {
    let descriptor: [u64; 2] = [u64::from(vpid), addr];
    let (cf, zf): (u8, u8);
    // SAFETY: VMX operation and INVVPID support are guaranteed by the caller;
    // the 16-byte descriptor is a live local that INVVPID only reads.
    unsafe {
        asm!(
            "invvpid {kind}, xmmword ptr [{desc}]",
            "setc {cf}",
            "setz {zf}",
            kind = in(reg) kind as u64,
            desc = in(reg) &descriptor,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack, readonly),
        );
    }
    // SAFETY: the caller guarantees VMX operation.
    unsafe { flags_to_result(cf, zf) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmcs::FakeVmcs;

    #[test]
    fn instruction_error_numbers_round_trip() {
        for n in 0..40u32 {
            assert_eq!(InstructionError::from_raw(n).number(), n);
        }
        assert_eq!(
            InstructionError::from_raw(7),
            InstructionError::EntryInvalidControlFields
        );
        assert_eq!(
            InstructionError::from_raw(14),
            InstructionError::Unknown(14)
        );
        assert_eq!(
            InstructionError::from_raw(28),
            InstructionError::InvalidInveptInvvpidOperand
        );
        assert_eq!(
            InstructionError::from_raw(29),
            InstructionError::Unknown(29)
        );
    }

    #[test]
    fn instruction_error_descriptions() {
        assert_eq!(
            InstructionError::from_raw(7).description(),
            "VM entry with invalid control field(s)"
        );
        assert_eq!(
            InstructionError::from_raw(8).description(),
            "VM entry with invalid host-state field(s)"
        );
        let shown = format!("{}", VmFail::Valid(InstructionError::from_raw(12)));
        assert_eq!(
            shown,
            "VMfailValid: VM-instruction error 12: VMREAD/VMWRITE from/to unsupported VMCS component"
        );
        assert!(format!("{}", VmFail::Invalid).starts_with("VMfailInvalid"));
    }

    #[test]
    fn entry_flags() {
        assert_eq!(check_vm_entry_flags(0x2), Ok(()));
        assert_eq!(
            check_vm_entry_flags(0x2 | RFLAGS_CF),
            Err(VmFailKind::Invalid)
        );
        assert_eq!(
            check_vm_entry_flags(0x2 | RFLAGS_ZF),
            Err(VmFailKind::Valid)
        );
    }

    #[test]
    fn resolve_reads_error_field() {
        let mut vmcs = FakeVmcs::new();
        assert_eq!(VmFailKind::Valid.resolve(&vmcs), VmFail::Invalid);
        vmcs.preset(vmcs::VM_INSTRUCTION_ERROR, 8).unwrap();
        assert_eq!(
            VmFailKind::Valid.resolve(&vmcs),
            VmFail::Valid(InstructionError::EntryInvalidHostStateFields)
        );
        assert_eq!(VmFailKind::Invalid.resolve(&vmcs), VmFail::Invalid);
    }
}
