//! Control registers, XCR0 and VMX instructions as a guest sees them:
//!
//! - CR0 bits the guest owns (MP, EM, WP, AM; TS through MOV and CLTS) and
//!   CR4 bits it owns (TSD, DE, PGE, PCE, OSFXSR, OSXMMEXCPT) toggle and read
//!   back as written;
//! - CR4.VMXE reads 0 and CPUID.1:ECX.VMX is 0 (no nested VMX), setting
//!   CR4.VMXE or a reserved CR4 bit (15) raises #GP;
//! - with XSAVE in CPUID: CR4.OSXSAVE can be set, XSETBV of an invalid XCR0
//!   (SSE without x87; a reserved bit) or of ECX=1 raises #GP, XCR0 = x87|SSE
//!   is accepted and reads back, and CPUID.(0xD,0):EBX then gives the XSAVE
//!   area's size for it (576 bytes), as does CPUID.(0xD,1):EBX, the
//!   compacted size, when XSAVEC is offered;
//! - every VMX instruction but VMCALL raises #UD.
//!
//! The expectations hold for both vendors: on AMD CPUs CR4.VMXE (bit 13)
//! is a reserved bit (MOV CR4 raises #GP) and the VMX instructions are
//! undefined opcodes, so an AMD-V hypervisor must give the same results
//! (it intercepts CR4 writes for that: QEMU's TCG would otherwise end the
//! guest with VMEXIT_INVALID at the reserved-bit writes).
//!
//! Output when everything holds (one line per check, in this order):
//!
//! ```text
//! crs: cr0 ok cr4 ok
//! crs: cr4.vmxe=0
//! crs: cr4 reserved bit 15 -> #GP
//! crs: cpuid.1 vmx=0
//! crs: cr4.osxsave set
//! crs: xsetbv bad value -> #GP
//! crs: xsetbv reserved bit -> #GP
//! crs: xsetbv ecx=1 -> #GP
//! crs: xsetbv xcr0=0x3 ok
//! crs: cpuid.d size 576 for xcr0=0x3
//! crs: cpuid.d.1 consistent (xsavec size 576)   (or: (no xsavec))
//! crs: vmxon -> #UD
//! ... (vmxoff, vmread, vmwrite, vmptrld, vmptrst, vmclear, vmlaunch, vmresume, invept, invvpid, vmfunc)
//! crs: cr4.vmxe set -> #GP
//! crs: OK
//! ```
//!
//! A failed check prints what it saw instead (e.g. `crs: vmread -> no fault
//! (expected #UD)`); the guest ends with `crs: FAILED (N failed checks)` and
//! exit code 1. Without XSAVE in CPUID the XSETBV lines become
//! `crs: no xsave: cr4.osxsave -> #GP` and `crs: no xsave: xsetbv -> #UD`.
//! The checks that make the hypervisor handle an exit (XSETBV, VMX
//! instructions, CR4.VMXE) come last, so a hypervisor that stops the VM on
//! one of them still shows the earlier results.
#![no_std]
#![no_main]

use guests::cpu::*;
use guests::trap::{self, vector, Fault};
use guests::{cpuid, finish, println};

guests::entry!(main);

/// Checks that writing `value` to CR0 reads back as written.
fn cr0_roundtrip(value: u64, errors: &mut u64) {
    // SAFETY: callers flip only bits that do not affect this guest's code
    // (no x87/SSE use, no read-only pages, no alignment-checked accesses).
    unsafe { set_cr0(value) };
    let back = cr0();
    if back != value {
        println!("crs: cr0 wrote {value:#x}, read {back:#x}");
        *errors += 1;
    }
}

/// Checks that writing `value` to CR4 reads back as written.
fn cr4_roundtrip(value: u64, errors: &mut u64) {
    // SAFETY: callers flip only bits that do not affect this guest's code.
    unsafe { set_cr4(value) };
    let back = cr4();
    if back != value {
        println!("crs: cr4 wrote {value:#x}, read {back:#x}");
        *errors += 1;
    }
}

fn check_cr0() -> u64 {
    let mut errors = 0;
    let orig = cr0();
    for bit in [CR0_MP, CR0_EM, CR0_WP, CR0_AM] {
        cr0_roundtrip(orig ^ bit, &mut errors);
        cr0_roundtrip(orig, &mut errors);
    }
    cr0_roundtrip(orig | CR0_TS, &mut errors);
    // SAFETY: CLTS only clears CR0.TS.
    unsafe { core::arch::asm!("clts", options(nomem, nostack, preserves_flags)) };
    if cr0() & CR0_TS != 0 {
        println!("crs: cr0.ts still set after clts ({:#x})", cr0());
        errors += 1;
    }
    cr0_roundtrip(orig & !CR0_TS, &mut errors);
    errors
}

fn check_cr4() -> u64 {
    let mut errors = 0;
    let orig = cr4();
    for bit in [
        CR4_TSD,
        CR4_DE,
        CR4_PGE,
        CR4_PCE,
        CR4_OSFXSR,
        CR4_OSXMMEXCPT,
    ] {
        cr4_roundtrip(orig ^ bit, &mut errors);
        cr4_roundtrip(orig, &mut errors);
    }
    errors
}

/// Prints `crs: WHAT -> RESULT` and counts a failure unless the probe
/// raised `want` (a vector) or, with `want` = None, nothing.
fn expect(what: &str, got: Option<Fault>, want: Option<u8>, failures: &mut u64) {
    let ok = got.map(|f| f.vector) == want;
    match (ok, got) {
        (true, Some(f)) => println!("crs: {what} -> {}", f.name()),
        (true, None) => println!("crs: {what} ok"),
        (false, _) => {
            let expected = match want {
                Some(vector::GP) => "#GP",
                Some(vector::UD) => "#UD",
                Some(_) => "an exception",
                None => "no fault",
            };
            match got {
                Some(f) => println!(
                    "crs: {what} -> {} (error code {:#x}, expected {expected})",
                    f.name(),
                    f.error_code
                ),
                None => println!("crs: {what} -> no fault (expected {expected})"),
            }
            *failures += 1;
        }
    }
}

/// Writes `value` to CR4 expecting a fault; restores CR4 if it went through.
fn cr4_write_probe(value: u64) -> Option<Fault> {
    let before = cr4();
    // SAFETY: the write is expected to fault; if it does not, CR4 is restored
    // at once (the bits tried here do not affect running code).
    let f = unsafe { guests::probe!("mov cr4, {v}", v = in(reg) value) };
    if f.is_none() {
        // SAFETY: restores the value read above.
        unsafe { set_cr4(before) };
    }
    f
}

fn xsetbv_probe(ecx: u32, value: u64) -> Option<Fault> {
    // SAFETY: the values tried are either rejected (#GP) or valid for a CPU
    // that offers XSAVE (x87|SSE); this guest keeps no state in AVX registers.
    unsafe {
        guests::probe!("xsetbv", in("ecx") ecx, in("eax") value as u32, in("edx") (value >> 32) as u32)
    }
}

fn check_xsave(failures: &mut u64) {
    if cpuid(1, 0).ecx & CPUID1_ECX_XSAVE == 0 {
        let f = cr4_write_probe(cr4() | CR4_OSXSAVE);
        expect("no xsave: cr4.osxsave", f, Some(vector::GP), failures);
        expect(
            "no xsave: xsetbv",
            xsetbv_probe(0, XCR0_X87 | XCR0_SSE),
            Some(vector::UD),
            failures,
        );
        return;
    }
    // SAFETY: CPUID offers XSAVE, so CR4.OSXSAVE is a valid bit; a #GP is caught.
    let f = unsafe { guests::probe!("mov cr4, {v}", v = in(reg) cr4() | CR4_OSXSAVE) };
    if f.is_none() && cr4() & CR4_OSXSAVE != 0 {
        println!("crs: cr4.osxsave set");
    } else {
        println!(
            "crs: cr4.osxsave -> {} (cr4 {:#x})",
            trap::describe(f),
            cr4()
        );
        *failures += 1;
        return;
    }
    expect(
        "xsetbv bad value",
        xsetbv_probe(0, XCR0_SSE),
        Some(vector::GP),
        failures,
    );
    expect(
        "xsetbv reserved bit",
        xsetbv_probe(0, XCR0_X87 | XCR0_SSE | (1 << 63)),
        Some(vector::GP),
        failures,
    );
    expect(
        "xsetbv ecx=1",
        xsetbv_probe(1, XCR0_X87 | XCR0_SSE),
        Some(vector::GP),
        failures,
    );
    let f = xsetbv_probe(0, XCR0_X87 | XCR0_SSE);
    let xcr0 = if f.is_none() { xgetbv0() } else { 0 };
    if f.is_none() && xcr0 == XCR0_X87 | XCR0_SSE {
        println!("crs: xsetbv xcr0={xcr0:#x} ok");
        // CPUID.(0xD,0):EBX is the XSAVE area's size for the XCR0 now set
        // (SDM Vol. 2A, CPUID leaf 0DH): the legacy area and the header.
        let size = cpuid(0xD, 0).ebx;
        if size == XSAVE_LEGACY_AND_HEADER {
            println!("crs: cpuid.d size {size} for xcr0=0x3");
        } else {
            println!("crs: cpuid.d size {size} for xcr0=0x3 (expected {XSAVE_LEGACY_AND_HEADER})");
            *failures += 1;
        }
        // With XSAVEC, CPUID.(0xD,1):EBX is the compacted area's size for
        // XCR0 | IA32_XSS (no supervisor state here): the same 576 bytes.
        // Linux sizes its compacted buffers from it.
        let d1 = cpuid(0xD, 1);
        if d1.eax & CPUID_D1_EAX_XSAVEC == 0 {
            println!("crs: cpuid.d.1 consistent (no xsavec)");
        } else if d1.ebx == XSAVE_LEGACY_AND_HEADER {
            println!("crs: cpuid.d.1 consistent (xsavec size {})", d1.ebx);
        } else {
            println!(
                "crs: cpuid.d.1 xsavec size {} for xcr0=0x3 (expected {XSAVE_LEGACY_AND_HEADER})",
                d1.ebx
            );
            *failures += 1;
        }
    } else {
        println!(
            "crs: xsetbv xcr0=0x3 -> {}, xcr0 reads {xcr0:#x}",
            trap::describe(f)
        );
        *failures += 1;
    }
}

/// Bytes of the XSAVE area for x87 and SSE: the 512-byte legacy region and
/// the 64-byte header (SDM Vol. 1, 13.4).
const XSAVE_LEGACY_AND_HEADER: u32 = 512 + 64;
/// CPUID.(0xD,1):EAX[1]: XSAVEC (compacted XSAVE).
const CPUID_D1_EAX_XSAVEC: u32 = 1 << 1;

/// A VMCS-sized, 4 KiB-aligned region for the VMX instructions' operands.
#[repr(C, align(4096))]
struct Region([u8; 4096]);
static mut REGION: Region = Region([0; 4096]);
/// Holds the physical address of [`REGION`] (VMXON/VMPTRLD/VMCLEAR operand)
/// and receives VMPTRST's result.
static mut REGION_PTR: u64 = 0;

fn check_vmx_instructions(failures: &mut u64) {
    // SAFETY: only addresses are taken; the instructions below must not run
    // (#UD), and if they did they would only read or write these statics.
    let ptr = unsafe {
        REGION_PTR = core::ptr::addr_of!(REGION) as u64;
        core::ptr::addr_of_mut!(REGION_PTR)
    };
    let desc = [0u64; 2];
    let d = desc.as_ptr();
    // SAFETY: (each probe) a VMX instruction in a guest without VMX must raise
    // #UD; the operands point at this guest's own memory.
    let results: [(&str, Option<Fault>); 12] = unsafe {
        [
            (
                "vmxon",
                guests::probe!("vmxon qword ptr [{p}]", p = in(reg) ptr),
            ),
            ("vmxoff", guests::probe!("vmxoff")),
            (
                "vmread",
                guests::probe!("vmread {v}, {f}", f = in(reg) 0x681eu64, v = out(reg) _),
            ),
            (
                "vmwrite",
                guests::probe!("vmwrite {f}, {v}", f = in(reg) 0x681eu64, v = in(reg) 0u64),
            ),
            (
                "vmptrld",
                guests::probe!("vmptrld qword ptr [{p}]", p = in(reg) ptr),
            ),
            (
                "vmptrst",
                guests::probe!("vmptrst qword ptr [{p}]", p = in(reg) ptr),
            ),
            (
                "vmclear",
                guests::probe!("vmclear qword ptr [{p}]", p = in(reg) ptr),
            ),
            ("vmlaunch", guests::probe!("vmlaunch")),
            ("vmresume", guests::probe!("vmresume")),
            (
                "invept",
                guests::probe!("invept {t}, xmmword ptr [{d}]", t = in(reg) 1u64, d = in(reg) d),
            ),
            (
                "invvpid",
                guests::probe!("invvpid {t}, xmmword ptr [{d}]", t = in(reg) 1u64, d = in(reg) d),
            ),
            (
                "vmfunc",
                guests::probe!("vmfunc", in("eax") 0u32, in("ecx") 0u32),
            ),
        ]
    };
    for (name, f) in results {
        expect(name, f, Some(vector::UD), failures);
    }
}

fn main() {
    guests::pace_output();
    trap::install();
    let mut failures = 0u64;

    let cr0_errors = check_cr0();
    let cr4_errors = check_cr4();
    let verdict = |e: u64| if e == 0 { "ok" } else { "FAILED" };
    println!(
        "crs: cr0 {} cr4 {}",
        verdict(cr0_errors),
        verdict(cr4_errors)
    );
    failures += u64::from(cr0_errors != 0) + u64::from(cr4_errors != 0);

    let vmxe = (cr4() & CR4_VMXE != 0) as u8;
    println!("crs: cr4.vmxe={vmxe}");
    failures += u64::from(vmxe);

    let before = cr4();
    expect(
        "cr4 reserved bit 15",
        cr4_write_probe(before | (1 << 15)),
        Some(vector::GP),
        &mut failures,
    );
    if cr4() != before {
        println!(
            "crs: cr4 changed by the refused write: {before:#x} -> {:#x}",
            cr4()
        );
        failures += 1;
    }

    let vmx = (cpuid(1, 0).ecx & CPUID1_ECX_VMX != 0) as u8;
    println!("crs: cpuid.1 vmx={vmx}");
    failures += u64::from(vmx);

    check_xsave(&mut failures);
    check_vmx_instructions(&mut failures);

    let before = cr4();
    expect(
        "cr4.vmxe set",
        cr4_write_probe(before | CR4_VMXE),
        Some(vector::GP),
        &mut failures,
    );
    if cr4() & CR4_VMXE != 0 {
        println!("crs: cr4.vmxe reads 1 after the refused write");
        failures += 1;
    }
    finish("crs", failures)
}
