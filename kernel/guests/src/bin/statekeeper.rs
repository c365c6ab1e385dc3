//! Checks that the hypervisor keeps each VM's register state private across
//! world switches. Two (or more) of these run on one CPU and alternate through
//! the YIELD hypercall: before each yield a VM fills its state with its own
//! pattern (VM id seed ^ iteration), after the yield it reads everything back
//! and counts mismatches per kind:
//!
//! | kind | state |
//! |------|-------|
//! | gpr | RCX, RDX, RSI, RDI, RBP, R8-R15 across the VMCALL (RAX/RBX carry results) |
//! | xmm | XMM0-15 and MXCSR |
//! | ymm | the upper halves of YMM0-15 (only when CPUID offers AVX and XSAVE) |
//! | x87 | the eight x87 stack registers (FILD, then FISTP after the yield) |
//! | fsbase, gsbase | IA32_FS_BASE/GS_BASE by RDMSR, and an FS-/GS-relative load |
//! | kgsbase | IA32_KERNEL_GS_BASE by RDMSR, and a GS-relative load after SWAPGS |
//! | lstar | IA32_LSTAR by RDMSR |
//! | cr2 | CR2, set by a deliberate page fault (one PDPT entry cleared) |
//! | dr | DR0-DR3 (DR7 keeps them disarmed), 0 before the VM writes them, and no breakpoint at the partner's DR0 when the VM's first debug-register access arms DR7 |
//!
//! Output (VM id 0, AVX offered, nothing leaked):
//!
//! ```text
//! statekeeper: vm 0 seed 0x..., 2000 switches, avx yes, xcr0 0x7
//! statekeeper: 2000 switches, mismatches gpr=0 xmm=0 ymm=0 x87=0 fsbase=0 gsbase=0 kgsbase=0 lstar=0 cr2=0 dr=0
//! statekeeper: OK
//! ```
//!
//! plus one REPORT per count (`hvabi::key::STATE_*`); exit code 0, or 1 with
//! `statekeeper: FAILED (N failed checks)` when any kind mismatched. The first
//! mismatch of each kind is printed (`statekeeper: first xmm mismatch ...`).
//! Without XSAVE/AVX in CPUID the YMM check is skipped (`avx no`, ymm=0).
#![no_std]
#![no_main]

use core::arch::asm;

use guests::cpu::{self, *};
use guests::{cpuid, finish, key, nr, println, report, trap};

guests::entry!(main);

/// Yields per run.
const SWITCHES: u64 = 2000;

/// Linear address whose PDPT entry this guest clears (8 GiB, beyond the
/// hypervisor's 4 GiB identity map): any access there is a guest #PF.
const UNMAPPED: u64 = 8 << 30;
/// Index of that PDPT entry.
const UNMAPPED_PDPT_INDEX: usize = 8;

/// FS/GS/KERNEL_GS bases point at one of these slots; the slot's value tells
/// which base the CPU really used.
#[repr(C, align(64))]
struct Slots([u64; 64]);
static mut SLOTS: Slots = Slots([0; 64]);

/// The partner plants this variable's address in DR0 in its first
/// iteration; a write here traps only if that DR0 reached this VM.
static mut BREAK_TARGET: u64 = 0;

/// DR7 arming DR0 as an 8-byte data-write breakpoint: L0, R/W0 = 01,
/// LEN0 = 10, bit 10 set (SDM Vol. 3B 18.2.4).
const DR7_DR0_WRITE_8: u64 = 0x400 | 1 | (0b01 << 16) | (0b10 << 18);
/// DR7 with every breakpoint off.
const DR7_OFF: u64 = 0x400;

/// This VM's first debug-register access: DR7 arms DR0 as a write
/// breakpoint, then `BREAK_TARGET` is written. The hypervisor must hand the
/// VM its own DR0-DR3 (0) before the breakpoint is live, not leave the
/// partner's DR0 in the hardware; `Some` is the #DB it did not prevent.
fn dr7_first_write() -> Option<trap::Fault> {
    // SAFETY: the breakpoint is on a variable of this guest's own; a #DB it
    // raises is caught by the probe; DR7 is turned off again at once.
    unsafe {
        asm!("mov dr7, {}", in(reg) DR7_DR0_WRITE_8, options(nomem, nostack));
        let hit = guests::probe!(
            "mov qword ptr [{a}], {v}",
            a = in(reg) core::ptr::addr_of_mut!(BREAK_TARGET),
            v = in(reg) 1u64,
        );
        asm!("mov dr7, {}", in(reg) DR7_OFF, options(nomem, nostack));
        hit
    }
}

fn slot_value(i: usize) -> u64 {
    0x5107_0000_0000_0000 | ((i as u64) << 8) | 0x5a
}

fn slot_addr(i: usize) -> u64 {
    // SAFETY: only the address is taken.
    unsafe { core::ptr::addr_of!(SLOTS.0[i]) as u64 }
}

/// What one switch plants and reads back through the asm block (offsets
/// are passed to it as constants).
#[repr(C, align(64))]
struct Ctx {
    /// YMM0-15 images, 32 bytes each (XMM: the low 16 bytes).
    vin: [u64; 64],
    /// YMM0-15 (or XMM0-15) after the yield.
    vout: [u64; 64],
    /// Values for FILD, loaded in order.
    x87in: [u64; 8],
    /// FISTP results after the yield (reverse order).
    x87out: [u64; 8],
    /// Pattern for the GPRs.
    gin: u64,
    /// RAX (the yield status), then RCX, RDX, RSI, RDI, RBP, R8-R15 after the yield.
    gout: [u64; 14],
    /// MXCSR to load.
    mxcsr_in: u32,
    /// MXCSR after the yield.
    mxcsr_out: u32,
    /// Nonzero: use YMM (AVX) loads and stores.
    ymm: u64,
}

/// Rotations that derive RCX..R15 from the pattern (RCX is its complement).
const GPR_ROT: [u32; 13] = [0, 7, 13, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59];

/// Expected value of GPR number `k` of `Ctx::gout` (1 = RCX .. 14 = R15).
fn gpr_expected(p: u64, k: usize) -> u64 {
    if k == 1 {
        !p
    } else {
        p.rotate_left(GPR_ROT[k - 1])
    }
}

/// A 64-bit mixer (splitmix64 finaliser): turns seed ^ iteration into
/// well-spread pattern bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Mismatch counters, one per kind.
#[derive(Default)]
struct Mismatches {
    gpr: u64,
    xmm: u64,
    ymm: u64,
    x87: u64,
    fsbase: u64,
    gsbase: u64,
    kgsbase: u64,
    lstar: u64,
    cr2: u64,
    dr: u64,
}

/// Counts a mismatch of `kind`, printing the first one of each kind.
fn miss(counter: &mut u64, kind: &str, iteration: u64, expected: u64, found: u64) {
    if *counter == 0 {
        println!("statekeeper: first {kind} mismatch at switch {iteration}: expected {expected:#x}, found {found:#x}");
    }
    *counter += 1;
}

/// Turns on what the vector checks need: SSE (CR4.OSFXSR, OSXMMEXCPT), x87
/// (CR0.EM clear, MP set, TS clear) and, when CPUID offers XSAVE and AVX,
/// CR4.OSXSAVE with XCR0 = x87|SSE|AVX (XCR0 = x87|SSE with XSAVE alone).
/// Returns (YMM usable, XCR0).
fn enable_vector_state() -> (bool, u64) {
    // SAFETY: EM/TS clear and MP set make x87 and SSE usable; nothing else changes.
    unsafe { set_cr0((cr0() & !(CR0_EM | CR0_TS)) | CR0_MP) };
    // SAFETY: enabling SSE and its exceptions does not affect running code.
    unsafe { set_cr4(cr4() | CR4_OSFXSR | CR4_OSXMMEXCPT) };
    let ecx = cpuid(1, 0).ecx;
    if ecx & CPUID1_ECX_XSAVE == 0 {
        return (false, 0);
    }
    // SAFETY: CR4.OSXSAVE only enables XSAVE/XGETBV/XSETBV; a #GP is caught.
    let f = unsafe { guests::probe!("mov cr4, {v}", v = in(reg) cr4() | CR4_OSXSAVE) };
    if let Some(f) = f {
        println!(
            "statekeeper: setting CR4.OSXSAVE raised {} although CPUID offers XSAVE",
            f.name()
        );
        return (false, 0);
    }
    let want = if ecx & CPUID1_ECX_AVX != 0 {
        XCR0_X87 | XCR0_SSE | XCR0_AVX
    } else {
        XCR0_X87 | XCR0_SSE
    };
    // SAFETY: a valid XCR0 for a CPU that offers these features; a #GP is caught.
    let f = unsafe {
        guests::probe!("xsetbv", in("ecx") 0u32, in("eax") want as u32, in("edx") (want >> 32) as u32)
    };
    if let Some(f) = f {
        println!("statekeeper: xsetbv xcr0={want:#x} raised {}", f.name());
        return (false, 0);
    }
    let xcr0 = xgetbv0();
    let osxsave = cpuid(1, 0).ecx & CPUID1_ECX_OSXSAVE != 0;
    (
        osxsave && ecx & CPUID1_ECX_AVX != 0 && xcr0 & XCR0_AVX != 0,
        xcr0,
    )
}

/// Clears the PDPT entry of [`UNMAPPED`] in the guest's page tables.
fn unmap_fault_region() {
    let tables = cpu::page_tables();
    // SAFETY: the PDPT is the guest's own, identity-mapped; entry 8 maps
    // nothing the guest uses (its memory is below 4 GiB).
    unsafe { tables.pdpt.add(UNMAPPED_PDPT_INDEX).write_volatile(0) };
    cpu::flush_tlb();
}

fn main() {
    guests::pace_output();
    trap::install();
    let id = guests::vm_id();
    let seed = mix(0x5eed_0000 + id);
    let (ymm, xcr0) = enable_vector_state();
    unmap_fault_region();
    // SAFETY: the guest is single-threaded; the slots are written before any
    // segment base points at them.
    unsafe {
        let slots = &mut *core::ptr::addr_of_mut!(SLOTS);
        for (i, s) in slots.0.iter_mut().enumerate() {
            *s = slot_value(i);
        }
    }
    println!(
        "statekeeper: vm {id} seed {seed:#x}, {SWITCHES} switches, avx {}, xcr0 {xcr0:#x}",
        if ymm { "yes" } else { "no" }
    );

    let mut m = Mismatches::default();
    let mut ctx = Ctx {
        vin: [0; 64],
        vout: [0; 64],
        x87in: [0; 8],
        x87out: [0; 8],
        gin: 0,
        gout: [0; 14],
        mxcsr_in: 0,
        mxcsr_out: 0,
        ymm: u64::from(ymm),
    };
    // Let the partner VM reach its loop.
    guests::yield_now();
    // The first debug-register access is a DR7 write, before any read of
    // DR0-DR3: a backend that let it through without handing this VM its
    // debug registers would arm the partner's DR0 (the second VM gets here
    // after the partner's first iteration planted BREAK_TARGET there).
    if let Some(f) = dr7_first_write() {
        miss(
            &mut m.dr,
            "dr (breakpoint at the partner's DR0)",
            0,
            0,
            f.vector.into(),
        );
    }
    // Nothing planted yet: DR0-DR3 hold their reset value, 0, whatever the
    // partner left in the hardware's.
    let dr_reset = debug_addresses();
    if let Some(k) = (0..4).find(|&k| dr_reset[k] != 0) {
        miss(&mut m.dr, "dr", 0, 0, dr_reset[k]);
    }
    for i in 0..SWITCHES {
        let p = mix(seed ^ i);
        // The state to plant.
        for (k, v) in ctx.vin.iter_mut().enumerate() {
            *v = mix(p.wrapping_add(k as u64));
        }
        for (k, v) in ctx.x87in.iter_mut().enumerate() {
            *v = p.rotate_left(8 * k as u32) ^ (k as u64);
        }
        let mxcsr_in: u32 = 0x1f80 | (((p >> 40) as u32 & 3) << 13);
        let fs_slot = (p & 63) as usize;
        let gs_slot = ((p >> 6) & 63) as usize;
        let kgs_slot = ((p >> 12) & 63) as usize;
        let lstar = p & 0x0000_7fff_ffff_fff0;
        let fault_at = UNMAPPED + ((p >> 20) & 0x3fff_fff8);
        let dr_in = [
            if i == 0 {
                core::ptr::addr_of!(BREAK_TARGET) as u64
            } else {
                p & 0x0000_7fff_ffff_fff8
            },
            (p >> 3) & 0x0000_7fff_ffff_fff8,
            p.rotate_left(17) & 0x0000_7fff_ffff_fff8,
            p.rotate_left(29) & 0x0000_7fff_ffff_fff8,
        ];

        // SAFETY: segment bases, LSTAR and DR0-3 are not used by this guest's
        // code (LSTAR: it never runs SYSCALL; DR7 leaves the breakpoints off).
        unsafe {
            wrmsr(IA32_FS_BASE, slot_addr(fs_slot));
            wrmsr(IA32_GS_BASE, slot_addr(gs_slot));
            wrmsr(IA32_KERNEL_GS_BASE, slot_addr(kgs_slot));
            wrmsr(IA32_LSTAR, lstar);
            set_debug_addresses(dr_in);
        }
        // CR2: a read of an address the guest's page tables do not map.
        // SAFETY: the #PF is expected and caught; the read has no effect.
        let pf = unsafe {
            guests::probe!("mov {t}, byte ptr [{a}]", a = in(reg) fault_at, t = out(reg_byte) _)
        };
        match pf {
            Some(f) if f.vector == trap::vector::PF && f.cr2 == fault_at => {}
            Some(f) => miss(
                &mut m.cr2,
                "cr2 (page fault)",
                i,
                fault_at,
                f.cr2 | (u64::from(f.vector) << 56),
            ),
            None => miss(&mut m.cr2, "cr2 (no page fault)", i, fault_at, 0),
        }

        // Vector and x87 registers, then the yield, then everything read back,
        // in one asm block (nothing in between may touch these registers).
        ctx.gin = p;
        ctx.mxcsr_in = mxcsr_in;
        // SAFETY: SSE/AVX/x87 were enabled above (AVX only when `ctx.ymm`);
        // RDI points at `ctx` for every access; VMCALL YIELD follows the ABI
        // and preserves every register but RAX/RBX; every GPR the block
        // changes is declared, and RBX/RBP (reserved by LLVM) are saved and
        // restored on the stack.
        unsafe {
            asm!(
                "push rbx",
                "push rbp",
                "ldmxcsr [rdi + {mx_in}]",
                "cmp qword ptr [rdi + {ymm}], 0",
                "je 20f",
                "vmovdqu ymm0, [rdi + {vin}]", "vmovdqu ymm1, [rdi + {vin} + 32]",
                "vmovdqu ymm2, [rdi + {vin} + 64]", "vmovdqu ymm3, [rdi + {vin} + 96]",
                "vmovdqu ymm4, [rdi + {vin} + 128]", "vmovdqu ymm5, [rdi + {vin} + 160]",
                "vmovdqu ymm6, [rdi + {vin} + 192]", "vmovdqu ymm7, [rdi + {vin} + 224]",
                "vmovdqu ymm8, [rdi + {vin} + 256]", "vmovdqu ymm9, [rdi + {vin} + 288]",
                "vmovdqu ymm10, [rdi + {vin} + 320]", "vmovdqu ymm11, [rdi + {vin} + 352]",
                "vmovdqu ymm12, [rdi + {vin} + 384]", "vmovdqu ymm13, [rdi + {vin} + 416]",
                "vmovdqu ymm14, [rdi + {vin} + 448]", "vmovdqu ymm15, [rdi + {vin} + 480]",
                "jmp 21f",
                "20:",
                "movdqu xmm0, [rdi + {vin}]", "movdqu xmm1, [rdi + {vin} + 32]",
                "movdqu xmm2, [rdi + {vin} + 64]", "movdqu xmm3, [rdi + {vin} + 96]",
                "movdqu xmm4, [rdi + {vin} + 128]", "movdqu xmm5, [rdi + {vin} + 160]",
                "movdqu xmm6, [rdi + {vin} + 192]", "movdqu xmm7, [rdi + {vin} + 224]",
                "movdqu xmm8, [rdi + {vin} + 256]", "movdqu xmm9, [rdi + {vin} + 288]",
                "movdqu xmm10, [rdi + {vin} + 320]", "movdqu xmm11, [rdi + {vin} + 352]",
                "movdqu xmm12, [rdi + {vin} + 384]", "movdqu xmm13, [rdi + {vin} + 416]",
                "movdqu xmm14, [rdi + {vin} + 448]", "movdqu xmm15, [rdi + {vin} + 480]",
                "21:",
                "fninit",
                "fild qword ptr [rdi + {x_in}]", "fild qword ptr [rdi + {x_in} + 8]",
                "fild qword ptr [rdi + {x_in} + 16]", "fild qword ptr [rdi + {x_in} + 24]",
                "fild qword ptr [rdi + {x_in} + 32]", "fild qword ptr [rdi + {x_in} + 40]",
                "fild qword ptr [rdi + {x_in} + 48]", "fild qword ptr [rdi + {x_in} + 56]",
                // Every GPR but RAX/RBX carries the pattern across the yield;
                // the context pointer waits on the stack.
                "push rdi",
                "mov rax, [rdi + {g_in}]",
                "mov rcx, rax", "not rcx",
                "mov rdx, rax", "rol rdx, 7",
                "mov rsi, rax", "rol rsi, 13",
                "mov rdi, rax", "rol rdi, 19",
                "mov rbp, rax", "rol rbp, 23",
                "mov r8, rax", "rol r8, 29",
                "mov r9, rax", "rol r9, 31",
                "mov r10, rax", "rol r10, 37",
                "mov r11, rax", "rol r11, 41",
                "mov r12, rax", "rol r12, 43",
                "mov r13, rax", "rol r13, 47",
                "mov r14, rax", "rol r14, 53",
                "mov r15, rax", "rol r15, 59",
                "mov eax, {yield_nr}",
                "vmcall",
                "mov rbx, [rsp]",
                "mov [rbx + {g_out}], rax",
                "mov [rbx + {g_out} + 8], rcx", "mov [rbx + {g_out} + 16], rdx",
                "mov [rbx + {g_out} + 24], rsi", "mov [rbx + {g_out} + 32], rdi",
                "mov [rbx + {g_out} + 40], rbp", "mov [rbx + {g_out} + 48], r8",
                "mov [rbx + {g_out} + 56], r9", "mov [rbx + {g_out} + 64], r10",
                "mov [rbx + {g_out} + 72], r11", "mov [rbx + {g_out} + 80], r12",
                "mov [rbx + {g_out} + 88], r13", "mov [rbx + {g_out} + 96], r14",
                "mov [rbx + {g_out} + 104], r15",
                "pop rdi",
                "stmxcsr [rdi + {mx_out}]",
                "fistp qword ptr [rdi + {x_out}]", "fistp qword ptr [rdi + {x_out} + 8]",
                "fistp qword ptr [rdi + {x_out} + 16]", "fistp qword ptr [rdi + {x_out} + 24]",
                "fistp qword ptr [rdi + {x_out} + 32]", "fistp qword ptr [rdi + {x_out} + 40]",
                "fistp qword ptr [rdi + {x_out} + 48]", "fistp qword ptr [rdi + {x_out} + 56]",
                "cmp qword ptr [rdi + {ymm}], 0",
                "je 22f",
                "vmovdqu [rdi + {vout}], ymm0", "vmovdqu [rdi + {vout} + 32], ymm1",
                "vmovdqu [rdi + {vout} + 64], ymm2", "vmovdqu [rdi + {vout} + 96], ymm3",
                "vmovdqu [rdi + {vout} + 128], ymm4", "vmovdqu [rdi + {vout} + 160], ymm5",
                "vmovdqu [rdi + {vout} + 192], ymm6", "vmovdqu [rdi + {vout} + 224], ymm7",
                "vmovdqu [rdi + {vout} + 256], ymm8", "vmovdqu [rdi + {vout} + 288], ymm9",
                "vmovdqu [rdi + {vout} + 320], ymm10", "vmovdqu [rdi + {vout} + 352], ymm11",
                "vmovdqu [rdi + {vout} + 384], ymm12", "vmovdqu [rdi + {vout} + 416], ymm13",
                "vmovdqu [rdi + {vout} + 448], ymm14", "vmovdqu [rdi + {vout} + 480], ymm15",
                "vzeroupper",
                "jmp 23f",
                "22:",
                "movdqu [rdi + {vout}], xmm0", "movdqu [rdi + {vout} + 32], xmm1",
                "movdqu [rdi + {vout} + 64], xmm2", "movdqu [rdi + {vout} + 96], xmm3",
                "movdqu [rdi + {vout} + 128], xmm4", "movdqu [rdi + {vout} + 160], xmm5",
                "movdqu [rdi + {vout} + 192], xmm6", "movdqu [rdi + {vout} + 224], xmm7",
                "movdqu [rdi + {vout} + 256], xmm8", "movdqu [rdi + {vout} + 288], xmm9",
                "movdqu [rdi + {vout} + 320], xmm10", "movdqu [rdi + {vout} + 352], xmm11",
                "movdqu [rdi + {vout} + 384], xmm12", "movdqu [rdi + {vout} + 416], xmm13",
                "movdqu [rdi + {vout} + 448], xmm14", "movdqu [rdi + {vout} + 480], xmm15",
                "23:",
                "pop rbp",
                "pop rbx",
                vin = const core::mem::offset_of!(Ctx, vin),
                vout = const core::mem::offset_of!(Ctx, vout),
                x_in = const core::mem::offset_of!(Ctx, x87in),
                x_out = const core::mem::offset_of!(Ctx, x87out),
                mx_in = const core::mem::offset_of!(Ctx, mxcsr_in),
                mx_out = const core::mem::offset_of!(Ctx, mxcsr_out),
                g_in = const core::mem::offset_of!(Ctx, gin),
                g_out = const core::mem::offset_of!(Ctx, gout),
                ymm = const core::mem::offset_of!(Ctx, ymm),
                yield_nr = const nr::YIELD,
                inout("rdi") core::ptr::addr_of_mut!(ctx) => _,
                out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            );
        }
        let c = &ctx;
        // General-purpose registers: the yield status, then the pattern.
        if c.gout[0] != 0 {
            miss(&mut m.gpr, "gpr (yield status in rax)", i, 0, c.gout[0]);
        } else if let Some(k) = (1..c.gout.len()).find(|&k| c.gout[k] != gpr_expected(p, k)) {
            miss(&mut m.gpr, "gpr", i, gpr_expected(p, k), c.gout[k]);
        }
        // XMM (the low 16 bytes of each 32-byte image) with MXCSR, and the YMM
        // upper halves.
        let xmm_bad = (0..16).find(|r| c.vout[r * 4..r * 4 + 2] != c.vin[r * 4..r * 4 + 2]);
        if let Some(r) = xmm_bad {
            miss(&mut m.xmm, "xmm", i, c.vin[r * 4], c.vout[r * 4]);
        } else if c.mxcsr_out != c.mxcsr_in {
            miss(
                &mut m.xmm,
                "mxcsr",
                i,
                u64::from(c.mxcsr_in),
                u64::from(c.mxcsr_out),
            );
        }
        if ymm {
            let ymm_bad =
                (0..16).find(|r| c.vout[r * 4 + 2..r * 4 + 4] != c.vin[r * 4 + 2..r * 4 + 4]);
            if let Some(r) = ymm_bad {
                miss(
                    &mut m.ymm,
                    "ymm upper half",
                    i,
                    c.vin[r * 4 + 2],
                    c.vout[r * 4 + 2],
                );
            }
        }
        // x87: FISTP pops in reverse order of the loads.
        if let Some(k) = (0..8).find(|&k| c.x87out[k] != c.x87in[7 - k]) {
            miss(&mut m.x87, "x87", i, c.x87in[7 - k], c.x87out[k]);
        }
        // Segment bases: the MSR value and the base the CPU really uses.
        let fs_load: u64;
        let gs_load: u64;
        let kgs_load: u64;
        // SAFETY: FS/GS bases point at SLOTS (set above); SWAPGS is undone at once.
        unsafe {
            asm!(
                "mov {f}, fs:[0]",
                "mov {g}, gs:[0]",
                "swapgs",
                "mov {k}, gs:[0]",
                "swapgs",
                f = out(reg) fs_load, g = out(reg) gs_load, k = out(reg) kgs_load,
                options(nostack, readonly, preserves_flags)
            );
        }
        let fs_msr = rdmsr(IA32_FS_BASE);
        if fs_msr != slot_addr(fs_slot) {
            miss(
                &mut m.fsbase,
                "fsbase (rdmsr)",
                i,
                slot_addr(fs_slot),
                fs_msr,
            );
        } else if fs_load != slot_value(fs_slot) {
            miss(
                &mut m.fsbase,
                "fsbase (fs:[0])",
                i,
                slot_value(fs_slot),
                fs_load,
            );
        }
        let gs_msr = rdmsr(IA32_GS_BASE);
        if gs_msr != slot_addr(gs_slot) {
            miss(
                &mut m.gsbase,
                "gsbase (rdmsr)",
                i,
                slot_addr(gs_slot),
                gs_msr,
            );
        } else if gs_load != slot_value(gs_slot) {
            miss(
                &mut m.gsbase,
                "gsbase (gs:[0])",
                i,
                slot_value(gs_slot),
                gs_load,
            );
        }
        let kgs_msr = rdmsr(IA32_KERNEL_GS_BASE);
        if kgs_msr != slot_addr(kgs_slot) {
            miss(
                &mut m.kgsbase,
                "kgsbase (rdmsr)",
                i,
                slot_addr(kgs_slot),
                kgs_msr,
            );
        } else if kgs_load != slot_value(kgs_slot) {
            miss(
                &mut m.kgsbase,
                "kgsbase (gs:[0] after swapgs)",
                i,
                slot_value(kgs_slot),
                kgs_load,
            );
        }
        let lstar_msr = rdmsr(IA32_LSTAR);
        if lstar_msr != lstar {
            miss(&mut m.lstar, "lstar", i, lstar, lstar_msr);
        }
        let cr2_now = cr2();
        if cr2_now != fault_at {
            miss(&mut m.cr2, "cr2", i, fault_at, cr2_now);
        }
        let dr_out = debug_addresses();
        if let Some(k) = (0..4).find(|&k| dr_out[k] != dr_in[k]) {
            miss(&mut m.dr, "dr", i, dr_in[k], dr_out[k]);
        }
    }

    println!(
        "statekeeper: {SWITCHES} switches, mismatches gpr={} xmm={} ymm={} x87={} fsbase={} gsbase={} kgsbase={} lstar={} cr2={} dr={}",
        m.gpr, m.xmm, m.ymm, m.x87, m.fsbase, m.gsbase, m.kgsbase, m.lstar, m.cr2, m.dr
    );
    report(key::STATE_SWITCHES, SWITCHES);
    report(key::STATE_GPR, m.gpr);
    report(key::STATE_XMM, m.xmm);
    report(key::STATE_YMM, m.ymm);
    report(key::STATE_X87, m.x87);
    report(key::STATE_FSBASE, m.fsbase);
    report(key::STATE_GSBASE, m.gsbase);
    report(key::STATE_KGSBASE, m.kgsbase);
    report(key::STATE_LSTAR, m.lstar);
    report(key::STATE_CR2, m.cr2);
    report(key::STATE_DR, m.dr);
    let kinds = [
        m.gpr, m.xmm, m.ymm, m.x87, m.fsbase, m.gsbase, m.kgsbase, m.lstar, m.cr2, m.dr,
    ];
    finish(
        "statekeeper",
        kinds.iter().filter(|&&c| c != 0).count() as u64,
    )
}
