//! The world switch: VMLAUNCH/VMRESUME with the guest's general-purpose
//! registers loaded, and the VM-exit entry point that saves them again.
//!
//! VMX loads and saves RIP, RSP, RFLAGS, control registers and segments
//! through the VMCS (SDM 27.3, 28.5); the other GPRs are ours to switch. The
//! host callee-saved registers are pushed before entry; HOST_RSP is written
//! right before VMLAUNCH/VMRESUME so that the exit lands on that same stack,
//! where the pointer to the guest register block waits.

use hvcore::exit::GuestRegs;
use vmx::vmcs::HOST_RSP;

// The asm below addresses RAX..R15 by offset; the register block is
// hvcore's `GuestRegs`, whose `repr(C)` layout these checks pin down.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(GuestRegs, rax) == 0);
    assert!(offset_of!(GuestRegs, rbx) == 8);
    assert!(offset_of!(GuestRegs, rcx) == 16);
    assert!(offset_of!(GuestRegs, rdx) == 24);
    assert!(offset_of!(GuestRegs, rsi) == 32);
    assert!(offset_of!(GuestRegs, rdi) == 40);
    assert!(offset_of!(GuestRegs, rbp) == 48);
    assert!(offset_of!(GuestRegs, r8) == 56);
    assert!(offset_of!(GuestRegs, r15) == 112);
};

/// What a world switch ended with.
pub enum SwitchResult {
    /// A VM exit happened; the exit fields in the VMCS say why.
    Exited,
    /// VMLAUNCH/VMRESUME itself failed; RFLAGS after the instruction
    /// (CF = VMfailInvalid, ZF = VMfailValid: SDM 31.2).
    EntryFailed { rflags: u64 },
}

core::arch::global_asm!(
    ".global hv_vmx_switch",
    ".global hv_vmx_exit",
    // hv_vmx_switch(regs: *mut GuestRegs (rdi), launched: u64 (rsi)) -> u64 (rax)
    // returns 0 after a VM exit, or RFLAGS (never 0: bit 1 is always set)
    // when the VM-entry instruction failed.
    "hv_vmx_switch:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdi",
    // HOST_RSP = this stack pointer: [rsp] holds the register block pointer.
    "mov rax, {host_rsp}",
    "vmwrite rax, rsp",
    "mov rax, rsi",
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
    "test rax, rax",
    "mov rax, [rdi + 0]",
    "mov rdi, [rdi + 40]",
    "jnz 2f",
    "vmlaunch",
    "jmp 3f",
    "2:",
    "vmresume",
    "3:",
    // Entry failed: the flags say how. The guest values loaded above are
    // discarded; the host's callee-saved registers come back from the stack.
    "pushfq",
    "pop rax",
    "add rsp, 8",
    "jmp 4f",
    // VM exit: RSP = HOST_RSP, so [rsp] is the register block pointer.
    "hv_vmx_exit:",
    "xchg rdi, [rsp]",
    "mov [rdi + 0], rax",
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
    "xor eax, eax",
    "4:",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    host_rsp = const HOST_RSP.encoding(),
);

extern "C" {
    fn hv_vmx_switch(regs: *mut GuestRegs, launched: u64) -> u64;
    fn hv_vmx_exit();
}

/// Address the VMCS's HOST_RIP must hold (the VM-exit entry point).
pub fn exit_entry_point() -> u64 {
    hv_vmx_exit as *const () as u64
}

/// Enters the guest of the current VMCS and returns at its next VM exit.
///
/// # Safety
/// The CPU is in VMX root operation with a current VMCS whose host state is
/// this CPU's (HOST_RIP = [`exit_entry_point`], CR3, GDT, IDT, TR, GS base)
/// and whose guest state and controls were checked by the caller's set-up;
/// `launched` is true exactly when this VMCS was launched on this CPU since
/// its last VMCLEAR. Interrupts must be disabled.
pub unsafe fn switch(regs: &mut GuestRegs, launched: bool) -> SwitchResult {
    // SAFETY: the caller's contract; the asm saves and restores every
    // callee-saved register and returns on the same stack.
    let r = unsafe { hv_vmx_switch(regs, launched as u64) };
    if r == 0 {
        SwitchResult::Exited
    } else {
        SwitchResult::EntryFailed { rflags: r }
    }
}
