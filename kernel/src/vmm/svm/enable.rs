//! Turning AMD-V on, per CPU (APM Vol. 2 15.4): detection through CPUID and
//! VM_CR, EFER.SVME, the host save area (VM_HSAVE_PA) and a host VMCB that
//! holds the state VMLOAD restores after each #VMEXIT (GS base, TR, the
//! SYSCALL and SYSENTER MSRs).

use core::sync::atomic::{AtomicU64, Ordering};

use svm::caps::{EFER_SVME, MSR_EFER, MSR_VM_CR, MSR_VM_HSAVE_PA};
use svm::{SvmCapabilities, SvmError};
use x86_64::registers::model_specific::Msr;

use crate::percpu::MAX_CPUS;

/// Host VMCB of each CPU (host-physical), 0 until AMD-V is on there.
static HOST_VMCB: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Reads CPUID and (only when CPUID reports SVM) VM_CR.
pub fn probe() -> Result<SvmCapabilities, SvmError> {
    svm::probe(
        |leaf| {
            let r = crate::arch::cpuid(leaf, 0);
            [r.eax, r.ebx, r.ecx, r.edx]
        },
        // SAFETY: VM_CR exists on every CPU that reports SVM, and probe
        // calls this only then.
        || unsafe { Msr::new(MSR_VM_CR).read() },
    )
}

/// Why AMD-V could not be turned on.
#[derive(Debug)]
pub enum EnableError {
    /// No frame for the host save area or the host VMCB.
    OutOfMemory,
}

impl core::fmt::Display for EnableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfMemory => write!(f, "out of memory for the AMD-V host save area"),
        }
    }
}

/// Turns AMD-V on for the calling CPU (index `cpu`) and returns its host
/// VMCB. Idempotent.
pub fn enable_on_this_cpu(cpu: usize) -> Result<u64, EnableError> {
    let slot = &HOST_VMCB[cpu.min(MAX_CPUS - 1)];
    let existing = slot.load(Ordering::Relaxed);
    if existing != 0 {
        return Ok(existing);
    }
    let hsave = crate::mm::alloc_frame_zeroed().map_err(|_| EnableError::OutOfMemory)?;
    let host_vmcb = crate::mm::alloc_frame_zeroed().map_err(|_| EnableError::OutOfMemory)?;
    let mut efer = Msr::new(MSR_EFER);
    // SAFETY: the CPU has SVM and firmware has not disabled it (probe), so
    // EFER.SVME may be set (APM 15.4); the host save area is a fresh frame
    // that stays allocated while the CPU runs guests; VMSAVE writes the host
    // VMCB frame, which nothing else uses.
    unsafe {
        efer.write(efer.read() | EFER_SVME);
        Msr::new(MSR_VM_HSAVE_PA).write(hsave);
        svm::instructions::vmsave(svm::HostPhysAddr::new(host_vmcb));
    }
    slot.store(host_vmcb, Ordering::Relaxed);
    Ok(host_vmcb)
}
