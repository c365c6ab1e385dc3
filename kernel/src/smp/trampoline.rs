//! The application-processor start-up trampoline (SDM Vol. 3A 9.9, "Mode
//! Switching", and 10.4.4 "MP Initialization Example").
//!
//! A start-up IPI with vector `AP_TRAMPOLINE >> 12` starts an AP in real mode
//! at `CS = 0x0800, IP = 0`. The code below is assembled for that address but
//! linked elsewhere (read-only data): [`install`] copies it to the trampoline
//! page, and the boot CPU fills the [`Params`] block at [`PARAMS_OFFSET`] for
//! each AP before its SIPI.
//!
//! The AP:
//! 1. (16-bit) claims the parameter block with `xchg` (a CPU that loses the
//!    claim, e.g. one that answers a SIPI after the boot CPU gave up on it,
//!    halts there and touches nothing), loads the temporary GDT, sets CR0.PE;
//! 2. (32-bit) sets CR4.PAE, CR3 (a page-map level 4 below 4 GiB), EFER.LME and
//!    EFER.NXE (the kernel's page tables use NX), then CR0.PG with caching on;
//! 3. (64-bit) loads the boot CPU's CR4, CR3 and CR0, its own stack, and jumps
//!    to the Rust entry with the per-AP start block in RDI, a zero return
//!    address and RBP = 0 (ends frame-pointer backtraces).
//!
//! The trampoline page must be identity-mapped (executable) in the kernel's
//! page tables: the instruction after `mov cr0` that enables paging is fetched
//! through them.

use core::sync::atomic::{AtomicU32, AtomicU64};

use crate::mm::AP_TRAMPOLINE;

/// Offset of the parameter block in the trampoline page (the code ends well
/// before it; [`install`] checks).
pub const PARAMS_OFFSET: u64 = 0xF00;

/// Selectors of the temporary GDT.
const CODE32: u16 = 0x08;
const DATA32: u16 = 0x10;
const CODE64: u16 = 0x18;

/// What the boot CPU hands to the AP being started. Shared memory with a
/// fixed layout (the assembly uses the offsets below).
#[repr(C)]
pub struct Params {
    /// 0 while the block waits for an AP; the AP that swaps in 1 owns it.
    pub claim: AtomicU32,
    _reserved: AtomicU32,
    /// Page-map level 4 for the switch to long mode (below 4 GiB: loaded from
    /// 32-bit code).
    pub cr3_transit: AtomicU64,
    /// The kernel's CR3 (loaded once in long mode).
    pub cr3: AtomicU64,
    /// The boot CPU's CR4 (minus VMXE and LA57).
    pub cr4: AtomicU64,
    /// The boot CPU's CR0.
    pub cr0: AtomicU64,
    /// Top of the AP's kernel stack (16-byte aligned).
    pub stack_top: AtomicU64,
    /// Address of `extern "C" fn(arg) -> !`.
    pub entry: AtomicU64,
    /// Passed in RDI.
    pub arg: AtomicU64,
}

const P_CLAIM: u64 = core::mem::offset_of!(Params, claim) as u64;
const P_CR3_TRANSIT: u64 = core::mem::offset_of!(Params, cr3_transit) as u64;
const P_CR3: u64 = core::mem::offset_of!(Params, cr3) as u64;
const P_CR4: u64 = core::mem::offset_of!(Params, cr4) as u64;
const P_CR0: u64 = core::mem::offset_of!(Params, cr0) as u64;
const P_STACK: u64 = core::mem::offset_of!(Params, stack_top) as u64;
const P_ENTRY: u64 = core::mem::offset_of!(Params, entry) as u64;
const P_ARG: u64 = core::mem::offset_of!(Params, arg) as u64;

// Position-dependent code for physical (= virtual, identity-mapped) address
// AP_TRAMPOLINE: every absolute address is `label - start + base`. Far jumps
// are spelled out as bytes (opcode EA, offset, selector) so the assembler
// cannot pick another form.
core::arch::global_asm!(
    ".pushsection .rodata.hv_ap_trampoline, \"a\"",
    ".balign 16",
    ".global hv_ap_trampoline_start",
    ".global hv_ap_trampoline_end",
    "hv_ap_trampoline_start:",
    ".code16",
    "    cli",
    "    cld",
    "    xorw %ax, %ax",
    "    movw %ax, %ds",
    "    movl $1, %eax",
    "    xchgl %eax, ({params} + {p_claim})",
    "    testl %eax, %eax",
    "    jnz 90f",
    "    lgdtl (91f - hv_ap_trampoline_start + {base})",
    "    movl %cr0, %eax",
    "    orl $1, %eax",
    "    movl %eax, %cr0",
    // ljmpl $CODE32, $pm32 (operand-size prefix: 32-bit offset)
    "    .byte 0x66, 0xea",
    "    .long 2f - hv_ap_trampoline_start + {base}",
    "    .word {code32}",
    "90: cli",
    "    hlt",
    "    jmp 90b",
    ".code32",
    "2:  movw ${data32}, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    movw %ax, %fs",
    "    movw %ax, %gs",
    "    movl %cr4, %eax",
    "    orl $0x20, %eax", // CR4.PAE
    "    movl %eax, %cr4",
    "    movl ({params} + {p_cr3_transit}), %eax",
    "    movl %eax, %cr3",
    "    movl $0xc0000080, %ecx", // IA32_EFER
    "    rdmsr",
    "    orl $0x900, %eax", // LME (bit 8) | NXE (bit 11)
    "    wrmsr",
    "    movl %cr0, %eax",
    "    andl $0x9fffffff, %eax", // clear CD (bit 30) and NW (bit 29)
    "    orl $0x80000001, %eax", // PG | PE
    "    movl %eax, %cr0",
    // ljmp $CODE64, $long64
    "    .byte 0xea",
    "    .long 3f - hv_ap_trampoline_start + {base}",
    "    .word {code64}",
    ".code64",
    "3:  movq ({params} + {p_cr4}), %rax",
    "    movq %rax, %cr4",
    "    movq ({params} + {p_cr3}), %rax",
    "    movq %rax, %cr3",
    "    movq ({params} + {p_cr0}), %rax",
    "    movq %rax, %cr0",
    "    movq ({params} + {p_stack}), %rsp",
    "    movq ({params} + {p_arg}), %rdi",
    "    movq ({params} + {p_entry}), %rax",
    "    xorl %ebp, %ebp",
    "    pushq $0",
    "    jmpq *%rax",
    ".balign 8",
    "92: .quad 0",
    "    .quad 0x00cf9a000000ffff", // 0x08: 32-bit code, flat
    "    .quad 0x00cf92000000ffff", // 0x10: data, flat
    "    .quad 0x00af9a000000ffff", // 0x18: 64-bit code
    "91: .word 4 * 8 - 1",
    "    .long 92b - hv_ap_trampoline_start + {base}",
    "hv_ap_trampoline_end:",
    ".popsection",
    base = const AP_TRAMPOLINE,
    params = const AP_TRAMPOLINE + PARAMS_OFFSET,
    p_claim = const P_CLAIM,
    p_cr3_transit = const P_CR3_TRANSIT,
    p_cr3 = const P_CR3,
    p_cr4 = const P_CR4,
    p_cr0 = const P_CR0,
    p_stack = const P_STACK,
    p_entry = const P_ENTRY,
    p_arg = const P_ARG,
    code32 = const CODE32,
    data32 = const DATA32,
    code64 = const CODE64,
    options(att_syntax)
);

extern "C" {
    static hv_ap_trampoline_start: u8;
    static hv_ap_trampoline_end: u8;
}

/// The trampoline's machine code.
fn code() -> &'static [u8] {
    // SAFETY: both symbols are defined by the global_asm! above, in the same
    // read-only section, start before end; the bytes between them are the
    // assembled trampoline and are never written.
    unsafe {
        let start = core::ptr::addr_of!(hv_ap_trampoline_start);
        let end = core::ptr::addr_of!(hv_ap_trampoline_end);
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Copies the trampoline to its page and returns its (zeroed) parameter block,
/// claimed (so no CPU can take it until the boot CPU releases it).
///
/// # Safety
/// The trampoline page must be reserved for this use (no other user, no AP
/// running the trampoline), and reachable through the physical-memory mapping.
pub unsafe fn install() -> &'static Params {
    let code = code();
    assert!(
        (code.len() as u64) < PARAMS_OFFSET,
        "AP trampoline ({} bytes) overlaps its parameter block",
        code.len()
    );
    let page = crate::mm::phys_to_virt(AP_TRAMPOLINE).as_mut_ptr::<u8>();
    // SAFETY: per the caller, the page is ours; it is mapped writable through
    // the physical-memory mapping, and the code fits below the parameters.
    unsafe {
        core::ptr::copy_nonoverlapping(code.as_ptr(), page, code.len());
        core::ptr::write_bytes(
            page.add(PARAMS_OFFSET as usize),
            0,
            core::mem::size_of::<Params>(),
        );
    }
    // SAFETY: the block lies inside the page (0xF00 + 64 bytes), is aligned to
    // 8, was just zeroed (a valid value for all-atomic fields), and is shared
    // only through atomics from here on.
    let params = unsafe { &*(page.add(PARAMS_OFFSET as usize) as *const Params) };
    params.claim.store(1, core::sync::atomic::Ordering::SeqCst);
    params
}
