//! Privileged registers as the guest programs use them: control registers,
//! MSRs, XCR0, debug registers. Reads are safe (the guests run at CPL 0, where
//! they only read); writes are `unsafe`: each can change how the guest runs.

use core::arch::asm;

/// CR0.MP (monitor coprocessor), SDM Vol. 3A 2.5.
pub const CR0_MP: u64 = 1 << 1;
/// CR0.EM (x87 emulation).
pub const CR0_EM: u64 = 1 << 2;
/// CR0.TS (task switched).
pub const CR0_TS: u64 = 1 << 3;
/// CR0.WP (write protect).
pub const CR0_WP: u64 = 1 << 16;
/// CR0.AM (alignment mask).
pub const CR0_AM: u64 = 1 << 18;
/// CR4.TSD (time stamp disable).
pub const CR4_TSD: u64 = 1 << 2;
/// CR4.DE (debugging extensions).
pub const CR4_DE: u64 = 1 << 3;
/// CR4.PGE (global pages).
pub const CR4_PGE: u64 = 1 << 7;
/// CR4.PCE (RDPMC at any CPL).
pub const CR4_PCE: u64 = 1 << 8;
/// CR4.OSFXSR (FXSAVE/FXRSTOR and SSE enabled).
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT (unmasked SIMD exceptions as #XM).
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// CR4.VMXE (VMX enable).
pub const CR4_VMXE: u64 = 1 << 13;
/// CR4.OSXSAVE (XSAVE and XSETBV enabled).
pub const CR4_OSXSAVE: u64 = 1 << 18;

/// CPUID.1:ECX.VMX.
pub const CPUID1_ECX_VMX: u32 = 1 << 5;
/// CPUID.1:ECX.XSAVE.
pub const CPUID1_ECX_XSAVE: u32 = 1 << 26;
/// CPUID.1:ECX.OSXSAVE (reflects CR4.OSXSAVE).
pub const CPUID1_ECX_OSXSAVE: u32 = 1 << 27;
/// CPUID.1:ECX.AVX.
pub const CPUID1_ECX_AVX: u32 = 1 << 28;

/// XCR0 x87 state (must always be set).
pub const XCR0_X87: u64 = 1 << 0;
/// XCR0 SSE state.
pub const XCR0_SSE: u64 = 1 << 1;
/// XCR0 AVX (YMM upper halves) state.
pub const XCR0_AVX: u64 = 1 << 2;

/// IA32_EFER.
pub const IA32_EFER: u32 = 0xC000_0080;
/// IA32_EFER.SCE (SYSCALL enable).
pub const EFER_SCE: u64 = 1 << 0;
/// IA32_STAR.
pub const IA32_STAR: u32 = 0xC000_0081;
/// IA32_LSTAR.
pub const IA32_LSTAR: u32 = 0xC000_0082;
/// IA32_FMASK.
pub const IA32_FMASK: u32 = 0xC000_0084;
/// IA32_FS_BASE.
pub const IA32_FS_BASE: u32 = 0xC000_0100;
/// IA32_GS_BASE.
pub const IA32_GS_BASE: u32 = 0xC000_0101;
/// IA32_KERNEL_GS_BASE.
pub const IA32_KERNEL_GS_BASE: u32 = 0xC000_0102;

macro_rules! read_cr {
    ($name:ident, $reg:literal) => {
        #[doc = concat!("Reads ", $reg, ".")]
        pub fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading a control register at CPL 0 has no side effects.
            unsafe { asm!(concat!("mov {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}

macro_rules! write_cr {
    ($name:ident, $reg:literal) => {
        #[doc = concat!("Writes ", $reg, ".")]
        ///
        /// # Safety
        ///
        /// The new value must keep the guest's code, stack and page tables usable.
        pub unsafe fn $name(v: u64) {
            // SAFETY: the caller keeps the guest running (see above).
            unsafe { asm!(concat!("mov ", $reg, ", {}"), in(reg) v, options(nostack, preserves_flags)) };
        }
    };
}

read_cr!(cr0, "cr0");
read_cr!(cr2, "cr2");
read_cr!(cr3, "cr3");
read_cr!(cr4, "cr4");
read_cr!(cr8, "cr8");
write_cr!(set_cr0, "cr0");
write_cr!(set_cr2, "cr2");
write_cr!(set_cr3, "cr3");
write_cr!(set_cr4, "cr4");
write_cr!(set_cr8, "cr8");

/// Reads an MSR. An MSR the (virtual) CPU lacks raises #GP: read those
/// through [`probe!`](crate::probe) instead.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR only reads; the MSRs read this way exist on every x86_64 CPU.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes an MSR.
///
/// # Safety
///
/// The MSR must exist and the value must be valid for it and keep the guest
/// running (EFER, the segment bases the code relies on, ...).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the MSR and value are sound.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// Reads XCR0 (needs CR4.OSXSAVE).
pub fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV(0) only reads; callers check CR4.OSXSAVE first.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Reads DR0-DR3.
pub fn debug_addresses() -> [u64; 4] {
    let (a, b, c, d): (u64, u64, u64, u64);
    // SAFETY: reading debug registers at CPL 0 has no side effects (DR7.GD is clear).
    unsafe {
        asm!(
            "mov {a}, dr0", "mov {b}, dr1", "mov {c}, dr2", "mov {d}, dr3",
            a = out(reg) a, b = out(reg) b, c = out(reg) c, d = out(reg) d,
            options(nomem, nostack, preserves_flags)
        )
    };
    [a, b, c, d]
}

/// Writes DR0-DR3. With DR7's enable bits clear they arm no breakpoint.
///
/// # Safety
///
/// DR7 must not enable any of the four breakpoints.
pub unsafe fn set_debug_addresses(v: [u64; 4]) {
    // SAFETY: the caller keeps DR7 disabled, so the addresses have no effect.
    unsafe {
        asm!(
            "mov dr0, {a}", "mov dr1, {b}", "mov dr2, {c}", "mov dr3, {d}",
            a = in(reg) v[0], b = in(reg) v[1], c = in(reg) v[2], d = in(reg) v[3],
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// The guest's page-table entries that map its first GiB: PML4[0], PDPT[0]
/// and the page directory, found through CR3 (guest memory is identity-mapped).
pub struct PageTables {
    /// Physical (= linear) address of the PML4.
    pub pml4: *mut u64,
    /// Physical address of the PDPT that PML4[0] points to.
    pub pdpt: *mut u64,
    /// Physical address of the page directory that PDPT[0] points to.
    pub pd0: *mut u64,
}

/// Address bits of a paging-structure entry (bits 51:12).
const ENTRY_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Finds the paging structures of the first GiB from CR3.
pub fn page_tables() -> PageTables {
    let pml4 = (cr3() & ENTRY_ADDR) as *mut u64;
    // SAFETY: CR3 points at the hypervisor-built, identity-mapped PML4; its
    // entry 0 and the PDPT's entry 0 are present (they map the guest's code).
    unsafe {
        let pdpt = (pml4.read_volatile() & ENTRY_ADDR) as *mut u64;
        let pd0 = (pdpt.read_volatile() & ENTRY_ADDR) as *mut u64;
        PageTables { pml4, pdpt, pd0 }
    }
}

/// Flushes the TLB (non-global entries) by reloading CR3.
pub fn flush_tlb() {
    // SAFETY: CR3 is written back with its own value.
    unsafe { set_cr3(cr3()) };
}
