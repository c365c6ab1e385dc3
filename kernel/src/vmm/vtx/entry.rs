//! The world switch: VMLAUNCH/VMRESUME with the guest's general-purpose
//! registers loaded, and the VM-exit entry point that saves them again.
//!
//! VMX loads and saves RIP, RSP, RFLAGS, control registers and segments
//! through the VMCS (SDM 27.3, 28.5); the other GPRs are ours to switch. The
//! compiler keeps what it has live across the switch (the call is declared
//! to clobber every register but RBX and RBP, which the switch pushes
//! before entry: the loop's few live values cost less than saving every
//! callee-saved register at every entry); HOST_RSP is written
//! at the first entry of a slice (the vCPU loop calls the switch from one
//! place, so the stack pointer is the same at every entry of the slice), so
//! that the exit lands on that same stack, where the pointer to the guest
//! register block waits. The common entry (VMRESUME, HOST_RSP current) has
//! an entry point of its own ([`resume`]) that goes straight to the
//! register loads.

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

/// How to enter, as `hv_vmx_switch` takes it: bit 0 VMRESUME (else
/// VMLAUNCH), bit 1 write HOST_RSP first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Mode {
    /// The first entry since the VMCS was cleared (HOST_RSP written too).
    Launch = 2,
    /// The first entry of a slice: HOST_RSP may hold another stack pointer.
    ResumeNewStack = 3,
    /// Any other entry: the common one, which tests one value.
    Resume = 1,
}

impl Mode {
    /// The first entry of a slice.
    pub fn slice_start(launched: bool) -> Self {
        if launched {
            Mode::ResumeNewStack
        } else {
            Mode::Launch
        }
    }
}

/// The guest's RAX..R15 (RSP excepted) from the block at RDI; RDI last.
macro_rules! load_guest_regs {
    () => {
        concat!(
            "mov rax, [rdi + 0]\n",
            "mov rbx, [rdi + 8]\n",
            "mov rcx, [rdi + 16]\n",
            "mov rdx, [rdi + 24]\n",
            "mov rsi, [rdi + 32]\n",
            "mov rbp, [rdi + 48]\n",
            "mov r8,  [rdi + 56]\n",
            "mov r9,  [rdi + 64]\n",
            "mov r10, [rdi + 72]\n",
            "mov r11, [rdi + 80]\n",
            "mov r12, [rdi + 88]\n",
            "mov r13, [rdi + 96]\n",
            "mov r14, [rdi + 104]\n",
            "mov r15, [rdi + 112]\n",
            "mov rdi, [rdi + 40]\n",
        )
    };
}

core::arch::global_asm!(
    ".global hv_vmx_switch",
    ".global hv_vmx_resume",
    ".global hv_vmx_exit",
    // hv_vmx_resume(regs: *mut GuestRegs (rdi)) -> u64 (rax): the common
    // entry, VMRESUME with HOST_RSP already this stack pointer; returns as
    // hv_vmx_switch does.
    "hv_vmx_resume:",
    "push rbp",
    "push rbx",
    "push rdi",
    load_guest_regs!(),
    "vmresume",
    "jmp 3f",
    // hv_vmx_switch(regs: *mut GuestRegs (rdi), mode: u64 (rsi)) -> u64 (rax)
    // returns 0 after a VM exit, or RFLAGS (never 0: bit 1 is always set)
    // when the VM-entry instruction failed. Mode: see `Mode`. Not a C
    // function: it keeps RBX and RBP (which Rust's inline asm cannot name)
    // and clobbers every other register (`switch` says so to the compiler,
    // which then saves only what it has live across the call).
    "hv_vmx_switch:",
    "push rbp",
    "push rbx",
    "push rdi",
    "test esi, 2",
    "jz 6f",
    // HOST_RSP = this stack pointer: [rsp] holds the register block pointer.
    "mov rax, {host_rsp}",
    "vmwrite rax, rsp",
    "6:",
    // The flags of this test survive the loads (MOV changes none).
    "test esi, 1",
    load_guest_regs!(),
    "jnz 2f",
    "vmlaunch",
    "jmp 3f",
    "2:",
    "vmresume",
    "3:",
    // Entry failed: the flags say how. The guest values loaded above are
    // discarded; the host's RBX and RBP come back from the stack.
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
    "pop rbx",
    "pop rbp",
    "ret",
    host_rsp = const HOST_RSP.encoding(),
);

extern "C" {
    fn hv_vmx_switch();
    fn hv_vmx_resume();
    fn hv_vmx_exit();
}

/// Address the VMCS's HOST_RIP must hold (the VM-exit entry point).
pub fn exit_entry_point() -> u64 {
    hv_vmx_exit as *const () as u64
}

/// Calls the switch entry point `$f` with the register block (and the mode
/// in RSI for `hv_vmx_switch`). Unsafe to expand: the callers' contract.
/// The entry points keep RBX and RBP, every other register is declared
/// clobbered, and they return on the same stack (the kernel's target has
/// no red zone to overwrite).
macro_rules! call_switch {
    ($f:ident, $regs:expr $(, $mode:expr)?) => {{
        let r: u64;
        core::arch::asm!(
            "call {f}",
            f = sym $f,
            inout("rdi") $regs as *mut GuestRegs => _,
            $(inout("rsi") $mode => _,)?
            lateout("rax") r,
            out("r12") _,
            out("r13") _,
            out("r14") _,
            out("r15") _,
            clobber_abi("C"),
        );
        SwitchResult::from_raw(r)
    }};
}
/// Enters the guest of the current VMCS and returns at its next VM exit.
///
/// # Safety
/// The CPU is in VMX root operation with a current VMCS whose host state is
/// this CPU's (HOST_RIP = [`exit_entry_point`], CR3, GDT, IDT, TR, GS base)
/// and whose guest state and controls were checked by the caller's set-up;
/// `mode` is [`Mode::Launch`] exactly when this VMCS was not launched on
/// this CPU since its last VMCLEAR; with [`Mode::Resume`], HOST_RSP holds
/// the stack pointer of an earlier call made with the same stack pointer
/// (the same call site in the same frame). Interrupts must be disabled.
#[inline]
pub unsafe fn switch(regs: &mut GuestRegs, mode: Mode) -> SwitchResult {
    // SAFETY: the caller's contract.
    unsafe { call_switch!(hv_vmx_switch, regs, mode as u64) }
}

/// [`switch`] with [`Mode::Resume`]: the common entry, without the mode.
///
/// # Safety
/// As for [`switch`] with [`Mode::Resume`].
#[inline]
pub unsafe fn resume(regs: &mut GuestRegs) -> SwitchResult {
    // SAFETY: the caller's contract.
    unsafe { call_switch!(hv_vmx_resume, regs) }
}

impl SwitchResult {
    /// What `hv_vmx_switch` and `hv_vmx_resume` return: 0 after a VM exit,
    /// RFLAGS after a failed VM-entry instruction.
    #[inline(always)]
    fn from_raw(r: u64) -> Self {
        if r == 0 {
            SwitchResult::Exited
        } else {
            SwitchResult::EntryFailed { rflags: r }
        }
    }
}
