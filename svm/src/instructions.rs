//! SVM instructions (APM Vol. 3, "VMRUN", "VMLOAD", "VMSAVE", "STGI",
//! "CLGI", "INVLPGA"; APM Vol. 2, 15.5, 15.6, 15.17).
//!
//! Unlike VMX, the SVM instructions report no success or failure in RFLAGS:
//! they fault (#UD without EFER.SVME, #GP at CPL > 0 or with a bad physical
//! address), and a VMRUN whose guest state or controls fail the consistency
//! checks "exits" at once with EXITCODE = VMEXIT_INVALID (APM 15.5.1),
//! which [`crate::exit::ExitCode::Invalid`] decodes and
//! [`crate::vmcb::Vmcb::check_vmrun`] can predict. So the wrappers return
//! nothing; each is an `unsafe fn` whose `# Safety` section lists what the
//! caller guarantees.
//!
//! # The world switch
//!
//! [`vmrun`] is a minimal wrapper: it starts the guest with every
//! general-purpose register but RAX and RSP (which VMRUN loads from the
//! VMCB) zeroed and discards the guest's values at #VMEXIT. A real vCPU
//! keeps the guest's RBX, RCX, RDX, RSI, RDI, RBP and R8-R15 itself, so the
//! kernel writes its own `asm!` world switch around the `vmrun rax`
//! instruction; the usual sequence (as in KVM) is:
//!
//! 1. `clgi` (hold host interrupts off until the host state is back);
//! 2. `vmload` of the guest VMCB (FS, GS, TR, LDTR hidden state,
//!    KernelGsBase, STAR/LSTAR/CSTAR/SFMASK, SYSENTER_*; APM 15.5.2),
//!    after `vmsave` of a host save VMCB if the host relies on them;
//! 3. load the guest's GPRs except RAX and RSP, put the VMCB physical
//!    address in RAX, `vmrun rax`;
//! 4. at #VMEXIT the processor has restored host RSP, RIP, RAX (so the VMCB
//!    address is back in RAX), CR0/CR3/CR4, EFER, RFLAGS, segments from the
//!    host save area at VM_HSAVE_PA and cleared GIF (APM 15.6); store the
//!    guest's GPRs, `vmsave` the guest VMCB, `vmload` the host save VMCB;
//! 5. `stgi`, which lets the pending physical interrupt that caused a
//!    VMEXIT_INTR be taken by the host.
//!
//! Guest RAX, RSP, RIP and RFLAGS live in the VMCB state-save area at
//! [`crate::vmcb::offset::RAX`], [`RSP`](crate::vmcb::offset::RSP),
//! [`RIP`](crate::vmcb::offset::RIP) and
//! [`RFLAGS`](crate::vmcb::offset::RFLAGS). Before the first VMRUN on a CPU
//! the kernel sets EFER.SVME ([`crate::caps::EFER_SVME`]) and writes the
//! physical address of a [`HSAVE_SIZE`]-byte, 4 KiB-aligned frame to
//! VM_HSAVE_PA ([`crate::caps::MSR_VM_HSAVE_PA`]).
//!
//! The `asm!` is compiled for every `x86_64` target (so host builds
//! type-check and assemble it) but only runs on the bare-metal kernel: host
//! tests never call these functions.
#![allow(unsafe_code)] // The SVM instructions live here; see the crate docs.

#[cfg(target_arch = "x86_64")]
use core::arch::asm;

#[cfg(target_arch = "x86_64")]
use crate::addr::HostPhysAddr;

/// Bytes of the host state-save area VM_HSAVE_PA points at: one 4 KiB,
/// 4 KiB-aligned frame that software must not touch (APM 15.30.4).
pub const HSAVE_SIZE: usize = 4096;
/// Alignment of a VMCB and of the host save area (APM 15.5.1, 15.30.4).
pub const VMCB_ALIGN: usize = 4096;

/// Runs the guest of `vmcb` until the next #VMEXIT (VMRUN with RAX =
/// `vmcb`). The guest starts with RBX, RCX, RDX, RSI, RDI, RBP and R8-R15
/// zeroed and its values of them are discarded; RAX, RSP, RIP, RFLAGS come
/// from and return to the VMCB. See the module docs for the full world
/// switch.
///
/// # Safety
///
/// - The CPU runs at CPL 0 with EFER.SVME set, and VM_HSAVE_PA holds the
///   physical address of a 4 KiB-aligned frame reserved for the processor
///   ([`HSAVE_SIZE`] bytes) for as long as SVM is in use on this CPU.
/// - `vmcb` is the 4 KiB-aligned physical address of a VMCB owned by the
///   caller, not in use on another CPU, and not accessed by Rust code while
///   the guest runs; every physical address in it (IOPM_BASE_PA,
///   MSRPM_BASE_PA, N_CR3 and the nested tables below it) points at memory
///   reserved for that purpose, and the nested page tables map only memory
///   the guest may own. (Guest state the processor rejects is not unsafe: it
///   gives VMEXIT_INVALID.)
/// - The guest cannot change host state the processor does not restore at
///   #VMEXIT behind the host's back: either the caller VMLOADs the guest's
///   and restores the host's FS, GS, TR, LDTR, KernelGsBase, STAR, LSTAR,
///   CSTAR, SFMASK and SYSENTER state around this call, or the intercepts
///   keep the guest from modifying them. The same holds for the x87/SSE/AVX
///   state and debug registers, which VMRUN does not switch.
/// - The caller handles GIF: #VMEXIT leaves GIF = 0, and interrupts stay
///   held until [`stgi`].
#[cfg(target_arch = "x86_64")]
pub unsafe fn vmrun(vmcb: HostPhysAddr) {
    // SAFETY: the caller guarantees SVM is enabled with a host save area and
    // that `vmcb` is a VMCB it owns. RBX and RBP cannot be asm operands, so
    // they are saved on the stack and zeroed; the other registers are
    // zeroed going in and declared clobbered coming out, as the guest's
    // values are left in them; `clobber_abi("C")` covers the vector state.
    // #VMEXIT restores RSP (so the pops find their values), RAX and RFLAGS.
    unsafe {
        asm!(
            "push rbx",
            "push rbp",
            "xor ebx, ebx",
            "xor ebp, ebp",
            "vmrun rax",
            "pop rbp",
            "pop rbx",
            inout("rax") vmcb.as_u64() => _,
            inout("rcx") 0u64 => _,
            inout("rdx") 0u64 => _,
            inout("rsi") 0u64 => _,
            inout("rdi") 0u64 => _,
            inout("r8") 0u64 => _,
            inout("r9") 0u64 => _,
            inout("r10") 0u64 => _,
            inout("r11") 0u64 => _,
            inout("r12") 0u64 => _,
            inout("r13") 0u64 => _,
            inout("r14") 0u64 => _,
            inout("r15") 0u64 => _,
            clobber_abi("C"),
        );
    }
}

/// Loads FS, GS, TR and LDTR (including hidden state), KernelGsBase, STAR,
/// LSTAR, CSTAR, SFMASK and SYSENTER_CS/ESP/EIP from the VMCB at `vmcb`
/// (VMLOAD, APM 15.5.2).
///
/// # Safety
///
/// - CPL 0 with EFER.SVME set.
/// - `vmcb` is the 4 KiB-aligned physical address of a VMCB (or host save
///   VMCB) owned by the caller whose fields listed above hold valid state:
///   the loaded FS/GS bases, TR and system-call MSRs become the CPU's, so
///   until the matching restore the caller must not rely on the previous
///   values (thread-local storage through FS/GS, SYSCALL entry points).
#[cfg(target_arch = "x86_64")]
pub unsafe fn vmload(vmcb: HostPhysAddr) {
    // SAFETY: the caller guarantees SVM is enabled and that the VMCB holds
    // state the CPU may run with; VMLOAD only reads the VMCB.
    unsafe {
        asm!("vmload rax", in("rax") vmcb.as_u64(), options(nostack, preserves_flags));
    }
}

/// Stores FS, GS, TR and LDTR (including hidden state), KernelGsBase, STAR,
/// LSTAR, CSTAR, SFMASK and SYSENTER_CS/ESP/EIP into the VMCB at `vmcb`
/// (VMSAVE, APM 15.5.2).
///
/// # Safety
///
/// - CPL 0 with EFER.SVME set.
/// - `vmcb` is the 4 KiB-aligned physical address of a VMCB owned by the
///   caller and not borrowed by Rust code: the processor writes to it.
#[cfg(target_arch = "x86_64")]
pub unsafe fn vmsave(vmcb: HostPhysAddr) {
    // SAFETY: the caller guarantees SVM is enabled and that it owns the
    // VMCB frame, which no Rust reference covers while VMSAVE writes it.
    unsafe {
        asm!("vmsave rax", in("rax") vmcb.as_u64(), options(nostack, preserves_flags));
    }
}

/// Sets the global interrupt flag (STGI, APM 15.17): interrupts, NMIs and
/// SMIs held since CLGI or #VMEXIT are delivered again.
///
/// # Safety
///
/// CPL 0 with EFER.SVME set, and the host is ready to take interrupts (its
/// IDT, stack and state restored after a #VMEXIT).
#[cfg(target_arch = "x86_64")]
pub unsafe fn stgi() {
    // SAFETY: the caller guarantees SVM is enabled and the host can take
    // interrupts; not `nomem`, so memory accesses are not moved across it.
    unsafe {
        asm!("stgi", options(nostack, preserves_flags));
    }
}

/// Clears the global interrupt flag (CLGI, APM 15.17): interrupts, NMIs and
/// SMIs are held until STGI (or taken by the guest after VMRUN).
///
/// # Safety
///
/// CPL 0 with EFER.SVME set, and a matching [`stgi`] follows: with GIF = 0
/// even NMIs are held, so code between the two must not wait for an
/// interrupt.
#[cfg(target_arch = "x86_64")]
pub unsafe fn clgi() {
    // SAFETY: the caller guarantees SVM is enabled and that STGI follows;
    // not `nomem`, so memory accesses are not moved across it.
    unsafe {
        asm!("clgi", options(nostack, preserves_flags));
    }
}

/// Invalidates the TLB mapping of guest-virtual `addr` for `asid` (INVLPGA,
/// APM 15.16.2).
///
/// # Safety
///
/// CPL 0 with EFER.SVME set. (The instruction has no memory effect visible
/// to Rust; the obligation is only that it does not fault.)
#[cfg(target_arch = "x86_64")]
pub unsafe fn invlpga(addr: u64, asid: u32) {
    // SAFETY: the caller guarantees SVM is enabled at CPL 0; INVLPGA only
    // drops a TLB entry.
    unsafe {
        asm!(
            "invlpga rax, ecx",
            in("rax") addr,
            in("ecx") asid,
            options(nostack, nomem, preserves_flags),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(HSAVE_SIZE, crate::vmcb::VMCB_SIZE);
        assert_eq!(VMCB_ALIGN, core::mem::align_of::<crate::vmcb::Vmcb>());
    }

    /// The wrappers exist with these signatures (never called on the host).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn signatures() {
        let _: unsafe fn(HostPhysAddr) = vmrun;
        let _: unsafe fn(HostPhysAddr) = vmload;
        let _: unsafe fn(HostPhysAddr) = vmsave;
        let _: unsafe fn() = stgi;
        let _: unsafe fn() = clgi;
        let _: unsafe fn(u64, u32) = invlpga;
    }
}
