//! SYSCALL/SYSRET inside a VM: the guest enables EFER.SCE (RDMSR, set bit 0,
//! WRMSR of IA32_EFER), sets STAR/LSTAR/FMASK, builds its own GDT (kernel and
//! user segments, a TSS) and makes its first 4 MiB user-accessible (U=1 in its
//! page tables: the hypervisor's identity map has no U bit). Then a SYSCALL
//! from ring 0 enters its handler, whose SYSRET drops to ring 3; from there it
//! makes ROUND_TRIPS SYSCALLs, each handled in ring 0 (CPL 0 checked, the FMASK
//! flags cleared) and returned with SYSRET to ring 3 (CPL 3 checked), with a
//! VM_ID hypercall from ring 3 every 1024th round trip; ring 3 sets DF before
//! each SYSCALL, which FMASK must clear in the handler; a last SYSCALL returns
//! to ring 0 for good.
//!
//! Output when everything works:
//!
//! ```text
//! syscall: efer.sce, star, lstar, fmask set
//! syscall: 100000 round trips OK
//! syscall: OK
//! ```
//!
//! and REPORT `hvabi::key::SYSCALL_ROUND_TRIPS`; exit code 0, or 1 after
//! `syscall: FAILED (N failed checks)` with a line naming each failed step
//! (e.g. `syscall: wrmsr IA32_EFER (SCE) -> #GP`).
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use guests::cpu::*;
use guests::{finish, key, nr, println, report, trap};

guests::entry!(main);

/// SYSCALLs made from ring 3 (plus one from ring 0 to get there and one to
/// return).
const ROUND_TRIPS: u64 = 100_000;

/// Selectors of this guest's GDT.
const KERNEL_CS: u16 = 0x08;
const KERNEL_SS: u16 = 0x10;
const USER_SS: u16 = 0x18 | 3;
const USER_CS: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;
/// STAR: SYSCALL loads CS = 0x08, SS = 0x10; 64-bit SYSRET loads
/// CS = 0x10 + 16 = 0x20 | 3 and SS = 0x10 + 8 = 0x18 | 3 (SDM Vol. 2B SYSRET).
const STAR: u64 = ((KERNEL_SS as u64) << 48) | ((KERNEL_CS as u64) << 32);
/// FMASK: TF, IF, DF, NT cleared on SYSCALL.
const FMASK: u64 = 0x4700;

/// GDT: null, kernel code (64-bit), kernel data, user data (DPL 3), user
/// code (64-bit, DPL 3), TSS (two slots, filled at run time).
#[repr(C, align(16))]
struct Gdt([u64; 7]);
static mut GDT: Gdt = Gdt([
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x00cf_f300_0000_ffff,
    0x00af_fb00_0000_ffff,
    0,
    0,
]);

/// 64-bit TSS (SDM Vol. 3A 8.7): only RSP0 matters (faults in ring 3).
#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp0: u64,
    rest: [u8; 92],
}
static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp0: 0,
    rest: [0; 92],
};

/// Stack for exceptions taken in ring 3.
#[repr(C, align(16))]
struct Stack([u8; 8192]);
static mut RING0_STACK: Stack = Stack([0; 8192]);

/// Counted by the SYSCALL handler.
static SYSCALLS: AtomicU64 = AtomicU64::new(0);
/// Handler entries not at CPL 0.
static HANDLER_CPL_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Handler entries with a flag of FMASK still set.
static HANDLER_FLAG_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Ring-3 loop iterations whose CS/SS are not the user selectors (CPL 3).
static USER_CPL_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Ring-3 hypercalls with a wrong result.
static USER_VMCALL_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Ring-3 hypercalls made.
static USER_VMCALLS: AtomicU64 = AtomicU64::new(0);
/// Expected VM id (for the ring-3 hypercall).
static VM_ID: AtomicU64 = AtomicU64::new(0);
/// Ring-0 RSP and continuation for the final SYSCALL.
static SAVED_RSP: AtomicU64 = AtomicU64::new(0);
static EXIT_RIP: AtomicU64 = AtomicU64::new(0);

// The SYSCALL handler (LSTAR). RAX = 1 asks to stay in ring 0: it restores
// the ring-0 stack and jumps to EXIT_RIP; any other RAX returns to ring 3.
core::arch::global_asm!(
    ".global hv_syscall_entry",
    "hv_syscall_entry:",
    "    lock inc qword ptr [rip + {count}]",
    "    mov r10, cs",
    "    test r10, 3",
    "    jz 2f",
    "    lock inc qword ptr [rip + {cpl_err}]",
    "2:  pushfq",
    "    pop r10",
    "    test r10, {fmask}",
    "    jz 3f",
    "    lock inc qword ptr [rip + {flag_err}]",
    "3:  cmp rax, 1",
    "    je 4f",
    "    sysretq",
    "4:  mov rsp, [rip + {saved_rsp}]",
    "    jmp qword ptr [rip + {exit_rip}]",
    count = sym SYSCALLS,
    cpl_err = sym HANDLER_CPL_ERRORS,
    flag_err = sym HANDLER_FLAG_ERRORS,
    saved_rsp = sym SAVED_RSP,
    exit_rip = sym EXIT_RIP,
    fmask = const FMASK,
);

extern "C" {
    fn hv_syscall_entry();
}

/// Loads this guest's GDT and TSS and reloads every segment register.
fn load_gdt() {
    // SAFETY: single-threaded set-up; the GDT and TSS are statics that live
    // forever; the new code/data selectors describe the same flat segments as
    // the hypervisor's (0x08/0x10), so execution continues unchanged.
    unsafe {
        let tss = core::ptr::addr_of_mut!(TSS);
        let stack = core::ptr::addr_of_mut!(RING0_STACK);
        (*tss).rsp0 = stack as u64 + core::mem::size_of::<Stack>() as u64;
        let base = tss as u64;
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        // Available 64-bit TSS (type 9), present (SDM Vol. 3A 8.2.3).
        let low = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        let gdt = &mut *core::ptr::addr_of_mut!(GDT);
        gdt.0[5] = low;
        gdt.0[6] = base >> 32;
        let pointer = x86_64::structures::DescriptorTablePointer {
            limit: (core::mem::size_of::<Gdt>() - 1) as u16,
            base: x86_64::VirtAddr::new(gdt as *const Gdt as u64),
        };
        x86_64::instructions::tables::lgdt(&pointer);
        asm!(
            "push {cs}",
            "lea {t}, [rip + 2f]",
            "push {t}",
            "retfq",
            "2:",
            "mov {t:e}, {ss}",
            "mov ss, {t:e}",
            "mov ds, {t:e}",
            "mov es, {t:e}",
            "mov {t:e}, {tss}",
            "ltr {t:x}",
            cs = const KERNEL_CS as u64,
            ss = const KERNEL_SS as u32,
            tss = const TSS_SEL as u32,
            t = out(reg) _,
        );
    }
}

/// Sets U (bit 2) on the entries that map the first 4 MiB (PML4[0], PDPT[0],
/// PD[0], PD[1]), so ring 3 can run this program's code, stack and data.
fn open_to_user() {
    let t = guests::cpu::page_tables();
    // SAFETY: the guest's own, identity-mapped tables; only the U bit changes.
    unsafe {
        for entry in [t.pml4, t.pdpt, t.pd0, t.pd0.add(1)] {
            entry.write_volatile(entry.read_volatile() | (1 << 2));
        }
    }
    guests::cpu::flush_tlb();
}

/// WRMSR that may fault; prints and counts a failure.
fn try_wrmsr(name: &str, msr: u32, value: u64, failures: &mut u64) -> bool {
    // SAFETY: the MSRs written here only take effect at SYSCALL/SYSRET, which
    // this guest sets up completely before using; a #GP is caught.
    let f = unsafe {
        guests::probe!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32)
    };
    if let Some(f) = f {
        println!("syscall: wrmsr {name} -> {}", f.name());
        *failures += 1;
        return false;
    }
    let back = guests::cpu::rdmsr(msr);
    if back != value {
        println!("syscall: {name} reads back {back:#x}, wrote {value:#x}");
        *failures += 1;
        return false;
    }
    true
}

fn main() {
    guests::pace_output();
    trap::install();
    let mut failures = 0u64;
    VM_ID.store(guests::vm_id(), Ordering::Relaxed);
    load_gdt();
    open_to_user();
    let efer: u64;
    // SAFETY: RDMSR of IA32_EFER, which every x86_64 CPU has; a #GP is caught.
    let f = unsafe {
        guests::probe!("rdmsr", "shl rdx, 32", "or rax, rdx", in("ecx") IA32_EFER, out("rax") efer, out("rdx") _)
    };
    if let Some(f) = f {
        println!("syscall: rdmsr IA32_EFER -> {}", f.name());
        failures += 1;
    }
    let ok = f.is_none()
        && try_wrmsr("IA32_EFER (SCE)", IA32_EFER, efer | EFER_SCE, &mut failures)
        && try_wrmsr("IA32_STAR", IA32_STAR, STAR, &mut failures)
        && try_wrmsr(
            "IA32_LSTAR",
            IA32_LSTAR,
            hv_syscall_entry as unsafe extern "C" fn() as usize as u64,
            &mut failures,
        )
        && try_wrmsr("IA32_FMASK", IA32_FMASK, FMASK, &mut failures);
    if !ok {
        println!("syscall: set-up failed, no SYSCALL made");
        finish("syscall", failures);
    }
    println!("syscall: efer.sce, star, lstar, fmask set");

    // SAFETY: SYSCALL enters `hv_syscall_entry` in ring 0, whose SYSRET
    // returns to the next instruction in ring 3 with the GDT's user segments;
    // the code, stack and statics are user-accessible (U bits above). The
    // ring-3 loop touches only its registers, the stack and the statics; the
    // final SYSCALL (RAX = 1) resumes at label 5 in ring 0 on the saved stack.
    // Every register the block changes is declared; RBX (reserved by LLVM) is
    // saved around the hypercall.
    unsafe {
        asm!(
            "mov [rip + {saved_rsp}], rsp",
            "lea rax, [rip + 5f]",
            "mov [rip + {exit_rip}], rax",
            "xor eax, eax",
            "syscall",
            // Ring 3 from here.
            "2:",
            "mov rax, cs",
            "cmp eax, {user_cs}",
            "jne 8f",
            "mov rax, ss",
            "cmp eax, {user_ss}",
            "je 3f",
            "8:",
            "lock inc qword ptr [rip + {user_cpl_err}]",
            "3:",
            "test r12, 1023",
            "jnz 4f",
            "push rbx",
            "mov eax, {vm_id_nr}",
            "vmcall",
            "lock inc qword ptr [rip + {user_vmcalls}]",
            "test rax, rax",
            "jnz 6f",
            "cmp rbx, [rip + {vm_id}]",
            "je 7f",
            "6:",
            "lock inc qword ptr [rip + {user_vmcall_err}]",
            "7:",
            "pop rbx",
            "4:",
            "std",
            "xor eax, eax",
            "syscall",
            "cld",
            "dec r12",
            "jnz 2b",
            "mov eax, 1",
            "syscall",
            // Ring 0 again.
            "5:",
            "cld",
            saved_rsp = sym SAVED_RSP,
            exit_rip = sym EXIT_RIP,
            user_cpl_err = sym USER_CPL_ERRORS,
            user_vmcalls = sym USER_VMCALLS,
            user_vmcall_err = sym USER_VMCALL_ERRORS,
            vm_id = sym VM_ID,
            vm_id_nr = const nr::VM_ID,
            user_cs = const USER_CS as u32,
            user_ss = const USER_SS as u32,
            inout("r12") ROUND_TRIPS => _,
            out("rax") _, out("rcx") _, out("r10") _, out("r11") _,
        );
    }

    let calls = SYSCALLS.load(Ordering::Relaxed);
    let round_trips = calls.saturating_sub(2);
    let checks = [
        ("handler entries", calls, ROUND_TRIPS + 2),
        (
            "handler entries not at CPL 0",
            HANDLER_CPL_ERRORS.load(Ordering::Relaxed),
            0,
        ),
        (
            "handler entries with TF/IF/DF/NT set",
            HANDLER_FLAG_ERRORS.load(Ordering::Relaxed),
            0,
        ),
        (
            "ring-3 iterations without the user CS/SS",
            USER_CPL_ERRORS.load(Ordering::Relaxed),
            0,
        ),
        (
            "ring-3 hypercalls",
            USER_VMCALLS.load(Ordering::Relaxed),
            ROUND_TRIPS / 1024,
        ),
        (
            "ring-3 hypercalls with a wrong result",
            USER_VMCALL_ERRORS.load(Ordering::Relaxed),
            0,
        ),
    ];
    for (what, found, expected) in checks {
        if found != expected {
            println!("syscall: {what}: {found}, expected {expected}");
            failures += 1;
        }
    }
    report(key::SYSCALL_ROUND_TRIPS, round_trips);
    if failures == 0 {
        println!("syscall: {round_trips} round trips OK");
    } else {
        println!("syscall: {round_trips} round trips, FAILED");
    }
    finish("syscall", failures)
}
