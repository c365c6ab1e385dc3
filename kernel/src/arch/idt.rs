//! The IDT: every architectural exception vector (SDM Vol. 3A 6.15, "Exception
//! and Interrupt Reference") gets a handler that prints a crash report on both
//! consoles and ends the run; a breakpoint reports and resumes.
//!
//! Double fault, NMI and machine check run on their own IST stacks, so a blown
//! kernel stack still produces a report.

use core::fmt::Write;

use x86_64::registers::control::{Cr2, Cr3};
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

use super::gdt::{DOUBLE_FAULT_IST, MACHINE_CHECK_IST, NMI_IST};
use crate::console;
use hvcore::KernelExit;

/// Vector of the spurious-interrupt handler (LAPIC SVR points here).
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Vector of the LAPIC timer.
pub const TIMER_VECTOR: u8 = 0x20;
/// Where the masked legacy 8259 PIC pair is remapped (see `drivers::pic`).
pub const LEGACY_PIC_BASE: u8 = 0x30;
/// Vector used to wake a halted CPU (IPI).
pub const WAKE_VECTOR: u8 = 0x21;

static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();

/// Architectural exception names by vector (SDM Vol. 3A Table 6-1).
pub const EXCEPTION_NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range exceeded",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack-segment fault",
    "#GP general protection",
    "#PF page fault",
    "reserved (15)",
    "#MF x87 floating-point error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD floating-point",
    "#VE virtualization exception",
    "#CP control protection",
    "reserved (22)",
    "reserved (23)",
    "reserved (24)",
    "reserved (25)",
    "reserved (26)",
    "reserved (27)",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security exception",
    "reserved (31)",
];

/// Builds the IDT once and loads it on the calling CPU (every CPU shares it).
pub fn load() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        idt.divide_error.set_handler_fn(divide_error);
        idt.debug.set_handler_fn(debug);
        idt.breakpoint.set_handler_fn(breakpoint);
        idt.overflow.set_handler_fn(overflow);
        idt.bound_range_exceeded.set_handler_fn(bound_range);
        idt.invalid_opcode.set_handler_fn(invalid_opcode);
        idt.device_not_available
            .set_handler_fn(device_not_available);
        idt.invalid_tss.set_handler_fn(invalid_tss);
        idt.segment_not_present.set_handler_fn(segment_not_present);
        idt.stack_segment_fault.set_handler_fn(stack_segment);
        idt.general_protection_fault
            .set_handler_fn(general_protection);
        idt.page_fault.set_handler_fn(page_fault);
        idt.x87_floating_point.set_handler_fn(x87);
        idt.alignment_check.set_handler_fn(alignment_check);
        idt.simd_floating_point.set_handler_fn(simd);
        idt.virtualization.set_handler_fn(virtualization);
        idt.cp_protection_exception
            .set_handler_fn(control_protection);
        idt.hv_injection_exception.set_handler_fn(hv_injection);
        idt.vmm_communication_exception
            .set_handler_fn(vmm_communication);
        idt.security_exception.set_handler_fn(security);
        // SAFETY: the IST indices name stacks that every CPU's TSS provides
        // (gdt::PerCpuTables::new_leaked), loaded before this IDT is.
        unsafe {
            idt.double_fault
                .set_handler_fn(double_fault)
                .set_stack_index(DOUBLE_FAULT_IST);
            idt.non_maskable_interrupt
                .set_handler_fn(nmi)
                .set_stack_index(NMI_IST);
            idt.machine_check
                .set_handler_fn(machine_check)
                .set_stack_index(MACHINE_CHECK_IST);
        }
        idt[TIMER_VECTOR].set_handler_fn(timer_interrupt);
        idt[WAKE_VECTOR].set_handler_fn(wake_interrupt);
        idt[SPURIOUS_VECTOR].set_handler_fn(spurious_interrupt);
        // The masked legacy PIC can still raise spurious IRQ 7/15 (8259A datasheet).
        for vector in LEGACY_PIC_BASE..LEGACY_PIC_BASE + 16 {
            idt[vector].set_handler_fn(legacy_pic_spurious);
        }
        idt
    });
    idt.load();
}

/// Return addresses found by walking the frame-pointer chain (the kernel is
/// built with `-C force-frame-pointers=yes`), starting at `rbp`.
fn print_backtrace(out: &mut dyn Write, mut rbp: u64) {
    for depth in 1..16 {
        // A frame pointer must be aligned and point at mapped memory (the
        // bootloader may place kernel stacks in either half); anything else
        // ends the walk rather than faulting inside the crash report.
        if rbp == 0 || !rbp.is_multiple_of(8) || !readable(rbp) || !readable(rbp + 8) {
            if depth == 1 {
                let _ = writeln!(out, "    (no frame pointer chain)");
            }
            return;
        }
        let frame = rbp as *const u64;
        // SAFETY: best effort on a crash path: `rbp` is aligned and both words
        // are on present pages (checked above), so the reads cannot fault.
        let (next, ret) = unsafe { (frame.read_volatile(), frame.add(1).read_volatile()) };
        if ret == 0 {
            return;
        }
        let _ = writeln!(out, "    #{depth:<2} {ret:#018x}");
        if next <= rbp {
            return;
        }
        rbp = next;
    }
}

/// Whether `va` is canonical and mapped by the active page tables. Walks the
/// tables through the physical-memory mapping without taking the mapper's lock
/// (the crash may have happened while it was held).
fn readable(va: u64) -> bool {
    let canonical = !(0x0000_8000_0000_0000..0xffff_8000_0000_0000).contains(&va);
    let offset = crate::mm::phys_offset();
    if !canonical || offset == 0 {
        return false;
    }
    let (l4, _) = Cr3::read();
    let mut table = l4.start_address().as_u64();
    for level in (1..=4u32).rev() {
        let index = (va >> (12 + 9 * (level - 1))) & 0x1ff;
        let entry_ptr = (offset + table + index * 8) as *const u64;
        // SAFETY: `table` is a page-table frame named by CR3 or by a present
        // entry of the level above; all physical memory is mapped at `offset`.
        let entry = unsafe { entry_ptr.read_volatile() };
        if entry & 1 == 0 {
            return false;
        }
        // Bit 7 (PS) at levels 3 and 2: a 1 GiB or 2 MiB page ends the walk.
        if level == 1 || (level <= 3 && entry & (1 << 7) != 0) {
            return true;
        }
        table = entry & 0x000f_ffff_ffff_f000;
    }
    false
}

fn current_rbp() -> u64 {
    let rbp: u64;
    // SAFETY: reads a register; no memory access, no side effects.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags))
    };
    rbp
}

/// Prints the crash report for an exception and ends the run. Never inlined:
/// the backtrace relies on this function having its own frame.
#[inline(never)]
fn fatal(vector: u8, frame: &InterruptStackFrame, error_code: Option<u64>) -> ! {
    let mut out = console::emergency();
    let name = EXCEPTION_NAMES
        .get(vector as usize)
        .copied()
        .unwrap_or("unknown");
    let _ = writeln!(
        out,
        "\n!!! CPU EXCEPTION on CPU {}: vector {vector} {name}",
        crate::percpu::cpu_index()
    );
    match error_code {
        Some(code) => {
            let _ = writeln!(out, "  error code: {code:#x}");
        }
        None => {
            let _ = writeln!(out, "  error code: (none)");
        }
    }
    let _ = writeln!(
        out,
        "  RIP    {:#018x}  CS {:#06x}",
        frame.instruction_pointer.as_u64(),
        frame.code_segment.0
    );
    let _ = writeln!(out, "  RFLAGS {:#018x}", frame.cpu_flags.bits());
    let _ = writeln!(
        out,
        "  RSP    {:#018x}  SS {:#06x}",
        frame.stack_pointer.as_u64(),
        frame.stack_segment.0
    );
    if vector == 14 {
        match Cr2::read() {
            Ok(addr) => {
                let _ = writeln!(out, "  CR2    {:#018x} (faulting address)", addr.as_u64());
            }
            Err(e) => {
                let _ = writeln!(out, "  CR2    not canonical: {e:?}");
            }
        }
        if let Some(code) = error_code {
            let _ = writeln!(
                out,
                "  cause  {:?}",
                PageFaultErrorCode::from_bits_truncate(code)
            );
        }
    }
    let (cr3, _) = Cr3::read();
    let _ = writeln!(out, "  CR3    {:#018x}", cr3.start_address().as_u64());
    // This function's frame links to the handler's frame, whose saved RBP is
    // the interrupted code's (the CPU does not touch RBP when it delivers an
    // exception). The interrupted RIP comes first.
    let _ = writeln!(out, "  backtrace (return addresses):");
    let _ = writeln!(
        out,
        "    #0  {:#018x} (faulting instruction)",
        frame.instruction_pointer.as_u64()
    );
    let own_rbp = current_rbp();
    // SAFETY: `own_rbp` is this (never inlined) function's frame on the
    // current, mapped stack; its first slot is the handler's saved RBP.
    let handler_rbp = unsafe { (own_rbp as *const u64).read_volatile() };
    let interrupted = if handler_rbp % 8 == 0 && readable(handler_rbp) {
        // SAFETY: aligned and on a present page (checked just above).
        unsafe { (handler_rbp as *const u64).read_volatile() }
    } else {
        0
    };
    print_backtrace(&mut out, interrupted);
    drop(out);
    crate::exit::exit(KernelExit::CpuException)
}

macro_rules! fatal_handler {
    ($name:ident, $vector:expr) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame) {
            fatal($vector, &frame, None)
        }
    };
    ($name:ident, $vector:expr, error) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame, code: u64) {
            fatal($vector, &frame, Some(code))
        }
    };
}

fatal_handler!(divide_error, 0);
fatal_handler!(debug, 1);
fatal_handler!(overflow, 4);
fatal_handler!(bound_range, 5);
fatal_handler!(invalid_opcode, 6);
fatal_handler!(device_not_available, 7);
fatal_handler!(invalid_tss, 10, error);
fatal_handler!(segment_not_present, 11, error);
fatal_handler!(stack_segment, 12, error);
fatal_handler!(general_protection, 13, error);
fatal_handler!(x87, 16);
fatal_handler!(alignment_check, 17, error);
fatal_handler!(simd, 19);
fatal_handler!(virtualization, 20);
fatal_handler!(control_protection, 21, error);
fatal_handler!(hv_injection, 28);
fatal_handler!(vmm_communication, 29, error);
fatal_handler!(security, 30, error);
fatal_handler!(nmi, 2);

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    fatal(14, &frame, Some(code.bits()))
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    fatal(8, &frame, Some(code))
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    fatal(18, &frame, None)
}

/// Breakpoints are reported and execution resumes after the `int3`.
extern "x86-interrupt" fn breakpoint(frame: InterruptStackFrame) {
    log::warn!(
        "breakpoint (#BP, vector 3) at RIP {:#x}, RSP {:#x}: resuming",
        frame.instruction_pointer.as_u64(),
        frame.stack_pointer.as_u64()
    );
    crate::percpu::count_breakpoint();
}

extern "x86-interrupt" fn timer_interrupt(_frame: InterruptStackFrame) {
    crate::percpu::on_timer_tick();
    crate::apic::eoi();
}

extern "x86-interrupt" fn wake_interrupt(_frame: InterruptStackFrame) {
    crate::apic::eoi();
}

extern "x86-interrupt" fn legacy_pic_spurious(_frame: InterruptStackFrame) {
    // All lines are masked: only spurious IRQs arrive, which take no EOI.
}

extern "x86-interrupt" fn spurious_interrupt(_frame: InterruptStackFrame) {
    // SDM 11.9: no EOI for spurious interrupts.
}
