//! Multi-processor guests (`smp`, `smpbench`): starting the other vCPUs the
//! way an OS does on real hardware (INIT, start-up IPI, second start-up IPI,
//! SDM Vol. 3A 8.4.4.1) through a real-mode trampoline, and the x2APIC
//! registers and helpers both use.
//!
//! Start-up: [`install_trampoline`] copies the trampoline to guest-physical
//! [`TRAMPOLINE`] (0x8000) and patches into it the boot vCPU's CR3, CR4, CR0,
//! EFER, GDTR, IDTR and segment selectors and the Rust entry of the APs;
//! [`Trampoline::start_ap`] patches, per AP, the stack top and the index. The
//! AP starts in real mode at 0800:0000, loads the trampoline's own GDT,
//! enters protected mode, turns on PAE, loads CR3 and EFER.LME, then CR0
//! (paging: long mode), jumps to 64-bit code, loads the boot vCPU's GDT and
//! IDT and calls the entry with its index through a far return to the boot
//! vCPU's code selector, interrupts off. Start the APs one after the other
//! (each must have read the data block before the next is started).
//!
//! So install the IDT ([`install_idt`]) before the trampoline: the APs load
//! the IDTR the boot vCPU had then.

use core::arch::asm;
use core::fmt;
use core::mem::offset_of;

use crate::cpu::{self, rdmsr, wrmsr};
use crate::{cpuid, rdtsc, trap};

/// Most vCPUs these guests handle (one AP stack each beyond the boot vCPU).
pub const MAX_CPUS: usize = 16;

/// x2APIC MSRs (SDM Vol. 3A Table 10-6).
pub mod msr {
    /// IA32_APIC_BASE.
    pub const APIC_BASE: u32 = 0x1B;
    /// IA32_TSC_DEADLINE.
    pub const TSC_DEADLINE: u32 = 0x6E0;
    /// Local APIC ID.
    pub const ID: u32 = 0x802;
    /// Task priority.
    pub const TPR: u32 = 0x808;
    /// End of interrupt.
    pub const EOI: u32 = 0x80B;
    /// Spurious-interrupt vector register.
    pub const SVR: u32 = 0x80F;
    /// Interrupt command register (64 bits: destination in 63:32).
    pub const ICR: u32 = 0x830;
    /// LVT timer.
    pub const LVT_TIMER: u32 = 0x832;
    /// Timer initial count.
    pub const INITIAL_COUNT: u32 = 0x838;
    /// Timer current count.
    pub const CURRENT_COUNT: u32 = 0x839;
    /// Timer divide configuration.
    pub const DIVIDE: u32 = 0x83E;
    /// SELF_IPI.
    pub const SELF_IPI: u32 = 0x83F;
}

/// IA32_APIC_BASE: APIC global enable.
pub const APIC_BASE_EN: u64 = 1 << 11;
/// IA32_APIC_BASE: x2APIC mode.
pub const APIC_BASE_EXTD: u64 = 1 << 10;
/// SVR: APIC software enable.
pub const SVR_ENABLE: u64 = 1 << 8;
/// The spurious-interrupt vector [`enable_x2apic`] sets (no EOI for it).
pub const VEC_SPURIOUS: u8 = 0xFF;
/// ICR delivery mode INIT.
pub const ICR_INIT: u64 = 5 << 8;
/// ICR delivery mode start-up.
pub const ICR_STARTUP: u64 = 6 << 8;
/// ICR level: assert.
pub const ICR_ASSERT: u64 = 1 << 14;
/// ICR shorthand: self.
pub const ICR_SELF: u64 = 1 << 18;
/// ICR shorthand: all excluding self.
pub const ICR_ALL_BUT_SELF: u64 = 3 << 18;
/// LVT: masked.
pub const LVT_MASKED: u64 = 1 << 16;
/// LVT timer mode (bits 18:17) periodic.
pub const LVT_PERIODIC: u64 = 1 << 17;
/// LVT timer mode (bits 18:17) TSC-deadline.
pub const LVT_TSC_DEADLINE: u64 = 2 << 17;
/// Divide configuration: divide by 1.
pub const DIVIDE_BY_1: u64 = 0b1011;

/// CPUID.1:ECX: x2APIC.
pub const CPUID1_ECX_X2APIC: u32 = 1 << 21;
/// CPUID.1:ECX: TSC-deadline timer.
pub const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Where the trampoline runs.
pub const TRAMPOLINE: u64 = 0x8000;
/// Its start-up IPI vector (page number).
pub const SIPI_VECTOR: u64 = TRAMPOLINE >> 12;
/// How far the trampoline may reach (guest-physical 0x8000-0xFFFF is free).
const TRAMPOLINE_LIMIT: u64 = 0x1_0000;

/// Per-AP stack size.
const AP_STACK: usize = 16 * 1024;

/// What the boot vCPU patches into the copied trampoline (`smp_tramp_data`).
/// The descriptor-table pointers are 10 bytes: limit at offset 6 mod 8, so
/// the base is 8-aligned.
#[repr(C)]
struct TrampolineData {
    cr3: u64,
    cr4: u64,
    cr0: u64,
    efer: u64,
    stack: u64,
    index: u64,
    entry: u64,
    cs: u64,
    ds: u64,
    gdt_pad: [u16; 3],
    gdt_limit: u16,
    gdt_base: u64,
    idt_pad: [u16; 3],
    idt_limit: u16,
    idt_base: u64,
}

// The AP trampoline (AT&T syntax: displacements and immediates are label
// differences, which the Intel parser refuses). Linked into .text, run from
// its copy at TRAMPOLINE: every address is `label - smp_tramp_start + base`.
core::arch::global_asm!(
    ".section .text.smp_trampoline, \"ax\"",
    ".balign 16",
    ".global smp_tramp_start",
    "smp_tramp_start:",
    ".code16",
    // Real mode at CS:IP = 0800:0000 (CS base 0x8000).
    "cli",
    "cld",
    "mov %cs, %ax",
    "mov %ax, %ds",
    "lgdtl smp_tramp_gdtr - smp_tramp_start",
    "mov %cr0, %eax",
    "or $1, %eax",
    "mov %eax, %cr0",
    "ljmpl $0x08, $(smp_tramp_32 - smp_tramp_start + {base})",
    ".code32",
    // Protected mode, flat segments of the trampoline's GDT.
    "smp_tramp_32:",
    "mov $0x10, %ax",
    "mov %ax, %ds",
    "mov %ax, %es",
    "mov %ax, %ss",
    "mov %ax, %fs",
    "mov %ax, %gs",
    "mov smp_tramp_data - smp_tramp_start + {base} + {cr4}, %eax",
    "mov %eax, %cr4",
    "mov smp_tramp_data - smp_tramp_start + {base} + {cr3}, %eax",
    "mov %eax, %cr3",
    "mov $0xc0000080, %ecx",
    "mov smp_tramp_data - smp_tramp_start + {base} + {efer}, %eax",
    "mov smp_tramp_data - smp_tramp_start + {base} + {efer} + 4, %edx",
    "wrmsr",
    // The boot vCPU's CR0: PG with EFER.LME set activates long mode
    // (compatibility mode until the far jump).
    "mov smp_tramp_data - smp_tramp_start + {base} + {cr0}, %eax",
    "mov %eax, %cr0",
    "ljmp $0x18, $(smp_tramp_64 - smp_tramp_start + {base})",
    ".code64",
    "smp_tramp_64:",
    "lgdt smp_tramp_data - smp_tramp_start + {base} + {gdt_limit}",
    "lidt smp_tramp_data - smp_tramp_start + {base} + {idt_limit}",
    "mov smp_tramp_data - smp_tramp_start + {base} + {ds}, %eax",
    "mov %ax, %ds",
    "mov %ax, %es",
    "mov %ax, %ss",
    "mov %ax, %fs",
    "mov %ax, %gs",
    "mov smp_tramp_data - smp_tramp_start + {base} + {stack}, %rsp",
    "mov smp_tramp_data - smp_tramp_start + {base} + {index}, %rdi",
    // A null return address keeps the ABI's stack alignment at the entry;
    // the far return loads the boot vCPU's code selector.
    "pushq $0",
    "pushq smp_tramp_data - smp_tramp_start + {base} + {cs}",
    "pushq smp_tramp_data - smp_tramp_start + {base} + {entry}",
    "lretq",
    // Null, 32-bit code (0x08), data (0x10), 64-bit code (0x18); accessed
    // bits set so that loading them writes nothing.
    ".balign 8",
    "smp_tramp_gdt:",
    ".quad 0",
    ".quad 0x00cf9b000000ffff",
    ".quad 0x00cf93000000ffff",
    ".quad 0x00af9b000000ffff",
    "smp_tramp_gdtr:",
    ".word smp_tramp_gdtr - smp_tramp_gdt - 1",
    ".long smp_tramp_gdt - smp_tramp_start + {base}",
    ".balign 8",
    ".global smp_tramp_data",
    "smp_tramp_data:",
    ".skip {data_size}",
    ".global smp_tramp_end",
    "smp_tramp_end:",
    ".text",
    base = const TRAMPOLINE,
    cr3 = const offset_of!(TrampolineData, cr3),
    cr4 = const offset_of!(TrampolineData, cr4),
    cr0 = const offset_of!(TrampolineData, cr0),
    efer = const offset_of!(TrampolineData, efer),
    stack = const offset_of!(TrampolineData, stack),
    index = const offset_of!(TrampolineData, index),
    entry = const offset_of!(TrampolineData, entry),
    cs = const offset_of!(TrampolineData, cs),
    ds = const offset_of!(TrampolineData, ds),
    gdt_limit = const offset_of!(TrampolineData, gdt_limit),
    idt_limit = const offset_of!(TrampolineData, idt_limit),
    data_size = const core::mem::size_of::<TrampolineData>(),
    options(att_syntax),
);

extern "C" {
    static smp_tramp_start: u8;
    static smp_tramp_data: u8;
    static smp_tramp_end: u8;
}

/// Stacks of the APs (AP i uses entry i - 1).
#[repr(C, align(16))]
struct Stacks([[u8; AP_STACK]; MAX_CPUS - 1]);
static mut AP_STACKS: Stacks = Stacks([[0; AP_STACK]; MAX_CPUS - 1]);

/// The IDT of a multi-processor guest, shared by all its vCPUs.
#[repr(C, align(16))]
struct Idt([[u64; 2]; 256]);
static mut IDT: Idt = Idt([[0; 2]; 256]);

/// Why [`install_trampoline`] could not install the trampoline.
#[derive(Clone, Copy, Debug)]
pub enum TrampolineError {
    /// It would reach past 0xFFFF (its length in bytes).
    TooLong(u64),
    /// CR3 (given) lies above 4 GiB, out of reach of the 32-bit load.
    Cr3Above4GiB(u64),
}

impl fmt::Display for TrampolineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooLong(len) => write!(f, "trampoline too long ({len} bytes)"),
            Self::Cr3Above4GiB(cr3) => write!(
                f,
                "cr3 {cr3:#x} above 4 GiB: the trampoline loads it in 32-bit mode"
            ),
        }
    }
}

/// The trampoline installed at [`TRAMPOLINE`].
#[derive(Debug)]
pub struct Trampoline {
    len: u64,
    data: *mut TrampolineData,
}

/// Copies the trampoline to [`TRAMPOLINE`] and patches the boot vCPU's
/// state into it, with `entry` as where the APs arrive (with their index,
/// on their own stack, interrupts off).
pub fn install_trampoline(entry: extern "C" fn(u64) -> !) -> Result<Trampoline, TrampolineError> {
    let start = core::ptr::addr_of!(smp_tramp_start);
    let (data, end) = (
        core::ptr::addr_of!(smp_tramp_data),
        core::ptr::addr_of!(smp_tramp_end),
    );
    let len = end as u64 - start as u64;
    if TRAMPOLINE + len > TRAMPOLINE_LIMIT {
        return Err(TrampolineError::TooLong(len));
    }
    let cr3 = cpu::cr3();
    if cr3 >> 32 != 0 {
        return Err(TrampolineError::Cr3Above4GiB(cr3));
    }
    let gdt = x86_64::instructions::tables::sgdt();
    let idt = x86_64::instructions::tables::sidt();
    let (cs, ds): (u16, u16);
    // SAFETY: reading segment selectors has no side effects.
    unsafe {
        asm!("mov {0:x}, cs", "mov {1:x}, ds", out(reg) cs, out(reg) ds, options(nomem, nostack, preserves_flags))
    };
    let dst = TRAMPOLINE as *mut u8;
    let patch = (TRAMPOLINE + (data as u64 - start as u64)) as *mut TrampolineData;
    // SAFETY: guest-physical 0x8000-0xFFFF is free RAM (identity-mapped) that
    // nothing else uses; the data block lies inside the copy, 8-aligned.
    unsafe {
        core::ptr::copy_nonoverlapping(start, dst, len as usize);
        patch.write_volatile(TrampolineData {
            cr3,
            // CR4.PCIDE may only be set in long mode.
            cr4: cpu::cr4() & !(1 << 17),
            cr0: cpu::cr0(),
            // EFER.LMA follows CR0.PG; the trampoline sets LME.
            efer: rdmsr(cpu::IA32_EFER) & !(1 << 10),
            stack: 0,
            index: 0,
            entry: entry as usize as u64,
            cs: u64::from(cs),
            ds: u64::from(ds),
            gdt_pad: [0; 3],
            gdt_limit: gdt.limit,
            gdt_base: gdt.base.as_u64(),
            idt_pad: [0; 3],
            idt_limit: idt.limit,
            idt_base: idt.base.as_u64(),
        });
    }
    Ok(Trampoline { len, data: patch })
}

impl Trampoline {
    /// Length of the trampoline in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the trampoline is empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Starts AP `i` (APIC ID `i`, 1 to [`MAX_CPUS`] - 1): INIT, 10 ms,
    /// start-up, 200 us, start-up, then waits up to `timeout_ms` for `up`
    /// (the AP's sign of life, set by the entry) to hold; false if it did
    /// not. `tsc_hz` times the waits.
    pub fn start_ap(
        &self,
        i: usize,
        tsc_hz: u64,
        timeout_ms: u64,
        up: impl FnMut() -> bool,
    ) -> bool {
        assert!((1..MAX_CPUS).contains(&i), "AP index {i} out of range");
        // SAFETY: AP stack `i - 1` is used by AP `i` only; the previous AP has
        // read the data block (it is alive) before it is changed.
        unsafe {
            let top = core::ptr::addr_of!(AP_STACKS.0[i - 1]) as u64 + AP_STACK as u64;
            core::ptr::addr_of_mut!((*self.data).stack).write_volatile(top);
            core::ptr::addr_of_mut!((*self.data).index).write_volatile(i as u64);
        }
        let dest = (i as u64) << 32;
        send_icr(dest | ICR_INIT | ICR_ASSERT);
        delay_us(tsc_hz, 10_000);
        send_icr(dest | ICR_STARTUP | ICR_ASSERT | SIPI_VECTOR);
        delay_us(tsc_hz, 200);
        send_icr(dest | ICR_STARTUP | ICR_ASSERT | SIPI_VECTOR);
        wait_for(tsc_hz, timeout_ms, up)
    }
}

/// Spins for `us` microseconds of TSC time at `tsc_hz`.
pub fn delay_us(tsc_hz: u64, us: u64) {
    let end = rdtsc() + tsc_hz / 1_000_000 * us;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Spins until `done` holds (true) or `ms` milliseconds of TSC time at
/// `tsc_hz` passed (false); interrupts stay as they are.
pub fn wait_for(tsc_hz: u64, ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let end = rdtsc() + tsc_hz / 1000 * ms;
    loop {
        if done() {
            return true;
        }
        if rdtsc() >= end {
            return done();
        }
        core::hint::spin_loop();
    }
}

/// Builds the shared IDT and loads it: [`trap::install`]'s exception gates
/// (0-31), and for 32-255 interrupt gates to `handler(vector)`'s address.
/// Run it on the boot vCPU before [`install_trampoline`] and any AP.
pub fn install_idt(handler: impl Fn(u8) -> u64) {
    trap::install();
    let current = x86_64::instructions::tables::sidt();
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    // SAFETY: only the boot vCPU runs here, before any AP exists; trap.rs's
    // table is 256 gates long and stays in place; the handlers are the
    // caller's interrupt entry points.
    unsafe {
        let old = current.base.as_u64() as *const [u64; 2];
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (v, gate) in idt.0.iter_mut().enumerate() {
            if v < 32 {
                *gate = old.add(v).read();
            } else {
                let h = handler(v as u8);
                // Present 64-bit interrupt gate, DPL 0 (SDM Vol. 3A 6.14.1).
                gate[0] = (h & 0xffff)
                    | (u64::from(cs) << 16)
                    | (0x8e << 40)
                    | (((h >> 16) & 0xffff) << 48);
                gate[1] = h >> 32;
            }
        }
        let pointer = x86_64::structures::DescriptorTablePointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: x86_64::VirtAddr::new(idt as *const Idt as u64),
        };
        x86_64::instructions::tables::lidt(&pointer);
    }
}

/// Turns on x2APIC mode and the APIC (SVR, spurious vector
/// [`VEC_SPURIOUS`], TPR 0).
pub fn enable_x2apic() {
    let base = rdmsr(msr::APIC_BASE);
    // SAFETY: global enable first (a disabled APIC may not go straight to
    // x2APIC mode), then x2APIC mode; both keep the base address.
    unsafe {
        if base & APIC_BASE_EN == 0 {
            wrmsr(msr::APIC_BASE, base | APIC_BASE_EN);
        }
        wrmsr(msr::APIC_BASE, base | APIC_BASE_EN | APIC_BASE_EXTD);
        wrmsr(msr::SVR, SVR_ENABLE | u64::from(VEC_SPURIOUS));
        wrmsr(msr::TPR, 0);
    }
}

/// Writes the x2APIC ICR (sends an IPI).
pub fn send_icr(value: u64) {
    // SAFETY: an ICR write sends an IPI; the callers send fixed IPIs to
    // vectors their IDT handles, or INIT/start-up to APs that run the
    // trampoline.
    unsafe { wrmsr(msr::ICR, value) };
}

/// Sends a fixed IPI with `vector` to x2APIC ID `dest`.
pub fn send_ipi(dest: u32, vector: u8) {
    send_icr((u64::from(dest) << 32) | u64::from(vector));
}

/// Programs the LAPIC timer: divide by 1, `lvt`, initial count `initial`.
pub fn set_timer(lvt: u64, initial: u64) {
    // SAFETY: the LVT timer vectors go to the callers' handlers; masked
    // timers and zero counts stop it.
    unsafe {
        wrmsr(msr::DIVIDE, DIVIDE_BY_1);
        wrmsr(msr::LVT_TIMER, lvt);
        wrmsr(msr::INITIAL_COUNT, initial);
    }
}

/// Stops the LAPIC timer in every mode.
pub fn stop_timer() {
    set_timer(LVT_MASKED, 0);
    // SAFETY: disarms a TSC deadline (harmless in other modes).
    unsafe { wrmsr(msr::TSC_DEADLINE, 0) };
}

/// Turns interrupts on.
pub fn enable_interrupts() {
    // SAFETY: the callers' IDT handles every vector.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// The number of vCPUs and which leaf said so.
pub fn vcpu_count() -> (u32, &'static str) {
    if cpuid(0, 0).eax >= 0xB {
        let n = cpuid(0xB, 1).ebx & 0xffff;
        if n != 0 {
            return (n, "cpuid 0xb");
        }
    }
    ((cpuid(1, 0).ebx >> 16) & 0xff, "cpuid 1")
}

/// TSC and APIC timer frequencies (Hz) from CPUID 0x15 (0x16 for the TSC
/// when 0x15 has no crystal frequency: the APIC timer then at TSC / 100).
pub fn frequencies() -> Option<(u64, u64)> {
    let max = cpuid(0, 0).eax;
    if max >= 0x15 {
        let l = cpuid(0x15, 0);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            let crystal = u64::from(l.ecx);
            return Some((crystal * u64::from(l.ebx) / u64::from(l.eax), crystal));
        }
    }
    if max >= 0x16 {
        let mhz = u64::from(cpuid(0x16, 0).eax & 0xffff);
        if mhz != 0 {
            return Some((mhz * 1_000_000, mhz * 10_000));
        }
    }
    None
}
