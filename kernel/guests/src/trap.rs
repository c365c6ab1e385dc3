//! Exceptions and interrupts inside a guest: an IDT whose 32 exception
//! vectors record what happened, and a way to run one instruction expecting
//! that it may fault ([`probe!`](crate::probe)).
//!
//! How a probe works: before the instruction, its asm block stores the
//! address right after it in [`RESUME`]; an exception then records vector,
//! error code, faulting RIP and CR2 and returns to that address (once: the
//! stub clears `RESUME`). An exception with no probe armed is fatal: the guest
//! prints it and shuts down with [`UNEXPECTED_EXCEPTION`] as exit code.
//!
//! Vectors 32-255 (external interrupts) go to stubs that count them in
//! [`INTERRUPTS`] and return. Vectors 32-47 are where a guest that programs
//! the 8259 pair with [`init_pic`] receives IRQ 0-15: their stubs also send
//! the end-of-interrupt command (to both chips for IRQ 8-15).

use core::sync::atomic::{AtomicU64, Ordering};

/// Exit code of a guest stopped by an exception it did not expect.
pub const UNEXPECTED_EXCEPTION: u64 = 0xE0;

/// Where the next exception resumes (0: none expected).
pub static RESUME: AtomicU64 = AtomicU64::new(0);
/// Vector of the last exception (`NONE` after [`arm`]).
pub static VECTOR: AtomicU64 = AtomicU64::new(NONE);
/// Error code of the last exception (0 for vectors without one).
pub static ERROR_CODE: AtomicU64 = AtomicU64::new(0);
/// RIP of the last exception.
pub static RIP: AtomicU64 = AtomicU64::new(0);
/// CR2 when the last exception arrived.
pub static CR2: AtomicU64 = AtomicU64::new(0);
/// External interrupts received (vectors 32-255).
pub static INTERRUPTS: AtomicU64 = AtomicU64::new(0);

const NONE: u64 = u64::MAX;

/// Exception vectors (SDM Vol. 3A Table 6-1).
pub mod vector {
    /// Invalid opcode.
    pub const UD: u8 = 6;
    /// Device not available.
    pub const NM: u8 = 7;
    /// General protection.
    pub const GP: u8 = 13;
    /// Page fault.
    pub const PF: u8 = 14;
}

/// One exception a probe caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Vector.
    pub vector: u8,
    /// Error code (0 if the vector has none).
    pub error_code: u64,
    /// Faulting RIP.
    pub rip: u64,
    /// CR2 at delivery (meaningful for #PF).
    pub cr2: u64,
}

impl Fault {
    /// Short name: `#UD`, `#GP`, `#PF`, or `vector N`.
    pub fn name(&self) -> &'static str {
        match self.vector {
            0 => "#DE",
            1 => "#DB",
            3 => "#BP",
            vector::UD => "#UD",
            vector::NM => "#NM",
            8 => "#DF",
            12 => "#SS",
            vector::GP => "#GP",
            vector::PF => "#PF",
            16 => "#MF",
            17 => "#AC",
            19 => "#XM",
            _ => "exception",
        }
    }
}

/// What a probe observed, as text for the guest's output: `#UD`, `#GP`, ...
/// or `no fault`.
pub fn describe(f: Option<Fault>) -> &'static str {
    f.map_or("no fault", |f| f.name())
}

/// Forgets the last exception (a probe calls this first).
pub fn arm() {
    VECTOR.store(NONE, Ordering::SeqCst);
}

/// The exception since [`arm`], if any.
pub fn take() -> Option<Fault> {
    let vector = VECTOR.load(Ordering::SeqCst);
    if vector == NONE {
        return None;
    }
    Some(Fault {
        vector: vector as u8,
        error_code: ERROR_CODE.load(Ordering::SeqCst),
        rip: RIP.load(Ordering::SeqCst),
        cr2: CR2.load(Ordering::SeqCst),
    })
}

/// Runs instructions that may fault and returns `Option<Fault>`: the
/// template strings and operands of one `asm!` block, run with
/// [`RESUME`] armed to just after them. Use in an `unsafe` block; the
/// instructions are the caller's to justify. Operands may not be named
/// `__probe_tmp` or `__probe_resume`, and the template may not define the
/// local label `77`.
#[macro_export]
macro_rules! probe {
    // Collects the leading template strings, then expands with the operands.
    (@templates [$($t:literal,)*] $next:literal $(, $($rest:tt)*)?) => {
        $crate::probe!(@templates [$($t,)* $next,] $($($rest)*)?)
    };
    (@templates [$($t:literal,)+] $($ops:tt)*) => {{
        $crate::trap::arm();
        core::arch::asm!(
            "lea {__probe_tmp}, [rip + 77f]",
            "mov qword ptr [rip + {__probe_resume}], {__probe_tmp}",
            $($t,)+
            "77:",
            "mov qword ptr [rip + {__probe_resume}], 0",
            __probe_tmp = out(reg) _,
            __probe_resume = sym $crate::trap::RESUME,
            $($ops)*
        );
        $crate::trap::take()
    }};
    ($($all:tt)+) => {
        $crate::probe!(@templates [] $($all)+)
    };
}

/// One 64-bit IDT gate (SDM Vol. 3A 6.14.1).
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const EMPTY: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// Present 64-bit interrupt gate (type 14), DPL 0.
    fn interrupt(handler: u64, selector: u16) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector,
            ist: 0,
            type_attr: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static mut IDT: Idt = Idt([Gate::EMPTY; 256]);

extern "C" {
    /// Addresses of the exception stubs (0-31) and the PIC IRQ stubs (32-47),
    /// in vector order (below).
    static hv_trap_stubs: [u64; 48];
    fn hv_irq_stub();
}

// Exception stubs: push a zero error code where the CPU pushes none, push the
// vector, and share `hv_trap_common`, which records the exception and resumes
// at RESUME (or calls `unexpected` when none is armed). Interrupt gates keep
// IF clear in the stubs; IRETQ restores the interrupted RFLAGS.
core::arch::global_asm!(
    ".section .text.hv_trap, \"ax\"",
    ".irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31",
    "hv_trap_stub_\\n:",
    "    push 0",
    "    push \\n",
    "    jmp hv_trap_common",
    ".endr",
    ".irp n, 8,10,11,12,13,14,17,21,29,30",
    "hv_trap_stub_\\n:",
    "    push \\n",
    "    jmp hv_trap_common",
    ".endr",
    "hv_trap_common:",
    // Stack: rax, vector, error code, RIP, CS, RFLAGS, RSP, SS.
    "    push rax",
    "    mov rax, [rsp + 8]",
    "    mov [rip + {vector}], rax",
    "    mov rax, [rsp + 16]",
    "    mov [rip + {error}], rax",
    "    mov rax, [rsp + 24]",
    "    mov [rip + {rip}], rax",
    "    mov rax, cr2",
    "    mov [rip + {cr2}], rax",
    "    mov rax, [rip + {resume}]",
    "    test rax, rax",
    "    jz 2f",
    "    mov qword ptr [rip + {resume}], 0",
    "    mov [rsp + 24], rax",
    "    pop rax",
    "    add rsp, 16",
    "    iretq",
    "2:",
    "    and rsp, -16",
    "    call {unexpected}",
    "    ud2",
    // IRQ 0-7 of a PIC pair based at 0x20: EOI to the master.
    ".irp n, 32,33,34,35,36,37,38,39",
    "hv_trap_stub_\\n:",
    "    push rax",
    "    mov al, 0x20",
    "    out 0x20, al",
    "    pop rax",
    "    jmp hv_irq_stub",
    ".endr",
    // IRQ 8-15: EOI to the slave, then the master.
    ".irp n, 40,41,42,43,44,45,46,47",
    "hv_trap_stub_\\n:",
    "    push rax",
    "    mov al, 0x20",
    "    out 0xa0, al",
    "    out 0x20, al",
    "    pop rax",
    "    jmp hv_irq_stub",
    ".endr",
    ".global hv_irq_stub",
    "hv_irq_stub:",
    "    lock inc qword ptr [rip + {interrupts}]",
    "    iretq",
    ".section .rodata.hv_trap, \"a\"",
    ".balign 8",
    ".global hv_trap_stubs",
    "hv_trap_stubs:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    .quad hv_trap_stub_\\n",
    ".endr",
    ".irp n, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47",
    "    .quad hv_trap_stub_\\n",
    ".endr",
    ".text",
    vector = sym VECTOR,
    error = sym ERROR_CODE,
    rip = sym RIP,
    cr2 = sym CR2,
    resume = sym RESUME,
    interrupts = sym INTERRUPTS,
    unexpected = sym unexpected,
);

extern "C" fn unexpected() -> ! {
    crate::println!(
        "guest: unexpected exception vector {} error code {:#x} at rip {:#x} (cr2 {:#x})",
        VECTOR.load(Ordering::SeqCst),
        ERROR_CODE.load(Ordering::SeqCst),
        RIP.load(Ordering::SeqCst),
        CR2.load(Ordering::SeqCst)
    );
    crate::shutdown(UNEXPECTED_EXCEPTION)
}

/// Builds the IDT (exception stubs for 0-31, counting stubs for 32-255,
/// interrupt gates with the current code selector) and loads it.
pub fn install() {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe {
        core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags))
    };
    // SAFETY: the guest is single-threaded and runs this before any exception
    // can use the table; the stubs are valid handlers for every vector.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        let stubs = &*core::ptr::addr_of!(hv_trap_stubs);
        for (gate, stub) in idt.0.iter_mut().zip(stubs.iter()) {
            *gate = Gate::interrupt(*stub, cs);
        }
        for gate in idt.0.iter_mut().skip(stubs.len()) {
            *gate = Gate::interrupt(hv_irq_stub as unsafe extern "C" fn() as usize as u64, cs);
        }
        let pointer = x86_64::structures::DescriptorTablePointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: x86_64::VirtAddr::new(idt as *const Idt as u64),
        };
        x86_64::instructions::tables::lidt(&pointer);
    }
}

fn outb(port: u16, value: u8) {
    // SAFETY: port I/O in a guest exits to the hypervisor's device models.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Programs the 8259 pair (ICW1-ICW4: edge-triggered, cascaded on IRQ 2,
/// IRQ 0-7 at vectors 32-39, IRQ 8-15 at 40-47) and sets the masks
/// (`master_mask`, `slave_mask`: bit n set = IRQ n masked).
pub fn init_pic(master_mask: u8, slave_mask: u8) {
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, 32);
    outb(0xa1, 40);
    outb(0x21, 1 << 2);
    outb(0xa1, 2);
    outb(0x21, 0x01);
    outb(0xa1, 0x01);
    outb(0x21, master_mask);
    outb(0xa1, slave_mask);
}

/// Starts 8254 channel 0 as a rate generator (mode 2) with `divisor` (the
/// input clock is 1.193182 MHz): IRQ 0 at 1193182 / divisor Hz.
pub fn start_pit(divisor: u16) {
    let [lo, hi] = divisor.to_le_bytes();
    outb(0x43, 0x34);
    outb(0x40, lo);
    outb(0x40, hi);
}
