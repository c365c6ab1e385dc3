//! The AMD-V world switch: VMLOAD, VMRUN with the guest's general-purpose
//! registers loaded, and VMSAVE/VMLOAD back to the host (APM 15.5, 15.6).
//!
//! RAX, RSP, RIP and RFLAGS of the guest live in the VMCB (the backend copies
//! RAX to and from `GuestRegs`); RBX..R15 are switched here. CLGI keeps
//! interrupts and NMIs pending until the guest runs; with V_INTR_MASKING the
//! host's RFLAGS.IF at VMRUN decides whether a physical interrupt exits, so
//! IF is set after CLGI. After #VMEXIT (GIF = 0) the guest's FS/GS/TR/LDTR
//! and SYSCALL/SYSENTER MSRs are saved into its VMCB and the host's loaded
//! back before anything uses GS; then CLI and STGI: a pending host interrupt
//! waits for the scheduler loop's `sti; nop; cli`.

use hvcore::arch::GuestRegs;

core::arch::global_asm!(
    ".global hv_svm_run",
    // hv_svm_run(regs: *mut GuestRegs (rdi), vmcb: u64 (rsi), host_vmcb: u64 (rdx))
    // Not a C function: it keeps RBX and RBP (which Rust's inline asm
    // cannot name) and clobbers every other register (`run` says so to
    // the compiler, which then saves only what it has live across it).
    "hv_svm_run:",
    "push rbp",
    "push rbx",
    "push rdx",
    "push rdi",
    "mov rax, rsi",
    "clgi",
    "sti",
    "vmload rax",
    "mov rbx, [rdi + 8]",
    "mov rcx, [rdi + 16]",
    "mov rdx, [rdi + 24]",
    "mov rsi, [rdi + 32]",
    "mov rbp, [rdi + 48]",
    "mov r8,  [rdi + 56]",
    "mov r9,  [rdi + 64]",
    "mov r10, [rdi + 72]",
    "mov r11, [rdi + 80]",
    "mov r12, [rdi + 88]",
    "mov r13, [rdi + 96]",
    "mov r14, [rdi + 104]",
    "mov r15, [rdi + 112]",
    "mov rdi, [rdi + 40]",
    "vmrun rax",
    // #VMEXIT: RAX, RSP, RIP are the host's again (APM 15.6); GIF = 0.
    "vmsave rax",
    "push rdi",
    "mov rdi, [rsp + 8]",
    "mov [rdi + 8], rbx",
    "mov [rdi + 16], rcx",
    "mov [rdi + 24], rdx",
    "mov [rdi + 32], rsi",
    "mov [rdi + 48], rbp",
    "mov [rdi + 56], r8",
    "mov [rdi + 64], r9",
    "mov [rdi + 72], r10",
    "mov [rdi + 80], r11",
    "mov [rdi + 88], r12",
    "mov [rdi + 96], r13",
    "mov [rdi + 104], r14",
    "mov [rdi + 112], r15",
    "pop rax",
    "mov [rdi + 40], rax",
    "add rsp, 8",
    "pop rax",
    "vmload rax",
    "cli",
    "stgi",
    "pop rbx",
    "pop rbp",
    "ret",
);

extern "C" {
    fn hv_svm_run();
}

/// Runs the guest of `vmcb` until its next #VMEXIT.
///
/// # Safety
/// EFER.SVME is set and VM_HSAVE_PA points at this CPU's host save area;
/// `vmcb` is the host-physical address of a VMCB whose state passed the
/// backend's set-up (APM 15.5.1 consistency checks), owned by the caller;
/// `host_vmcb` holds this CPU's state saved by VMSAVE. Interrupts are off.
pub unsafe fn run(regs: &mut GuestRegs, vmcb: u64, host_vmcb: u64) {
    // SAFETY: the caller's contract; `hv_svm_run` keeps RBX and RBP, every
    // other register is declared clobbered, it returns on the same stack
    // (the kernel's target has no red zone to overwrite), and it restores
    // the host's GS base (VMLOAD of the host VMCB) before returning.
    unsafe {
        core::arch::asm!(
            "call {f}",
            f = sym hv_svm_run,
            inout("rdi") regs as *mut GuestRegs => _,
            inout("rsi") vmcb => _,
            inout("rdx") host_vmcb => _,
            out("r12") _,
            out("r13") _,
            out("r14") _,
            out("r15") _,
            clobber_abi("C"),
        )
    }
}
