//! Guest registers that VMX neither loads nor saves, switched only when a
//! CPU changes from one vCPU to another (not on every exit: the hypervisor
//! itself uses no SIMD, no SYSCALL, no debug registers and takes no page
//! faults, so while it handles a vCPU's exits the hardware keeps holding that
//! vCPU's values).
//!
//! | state | how |
//! |---|---|
//! | x87, SSE, AVX, AVX-512 | XSAVE/XSAVEOPT and XRSTOR with the guest's XCR0 (FXSAVE/FXRSTOR without XSAVE) |
//! | XCR0 | XSETBV before the guest's XRSTOR |
//! | CR2, DR6 (VT-x) | MOV |
//! | DR0-DR3 | MOV, for a vCPU that has used them ([`LazyState::take_debug`]) |
//! | KERNEL_GS_BASE | RDMSR at the save, WRMSR at the load when it differs |
//! | STAR, LSTAR, CSTAR, FMASK, TSC_AUX | WRMSR at the load when it differs |
//!
//! DR7 and IA32_DEBUGCTL travel in the VMCS (load/save debug controls), the
//! FS/GS bases, SYSENTER MSRs, PAT and EFER too (SDM 27.3, 28.3). On AMD-V,
//! VMRUN and #VMEXIT switch CR2 and DR6 with the VMCB (APM 15.5.1), and
//! VMLOAD/VMSAVE KERNEL_GS_BASE and the SYSCALL MSRs (APM 15.5.2): of the
//! MSRs only TSC_AUX is switched here ([`Extension`]).
//!
//! Guests read these MSRs natively, but their writes exit (the MSR bitmap,
//! the MSRPM) except KERNEL_GS_BASE's, which SWAPGS changes without an exit
//! anyway: the vCPU's record of the others is always current
//! ([`VcpuLazyRegs`]), so a switch reads one MSR back instead of six (RDMSR
//! costs about a hundred cycles on real hardware).

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use backend::vtx::state::LazyRegs;
use hvcore::msr_policy::{
    IA32_CSTAR, IA32_FMASK, IA32_KERNEL_GS_BASE, IA32_LSTAR, IA32_STAR, IA32_TSC_AUX,
};
use x86_64::registers::model_specific::Msr;

/// MSRs switched with the vCPU, in [`MsrValues`] order: KERNEL_GS_BASE
/// first (the one read back at a save), TSC_AUX last (the one AMD-V needs).
const LAZY_MSRS: [u32; 6] = [
    IA32_KERNEL_GS_BASE,
    IA32_STAR,
    IA32_LSTAR,
    IA32_CSTAR,
    IA32_FMASK,
    IA32_TSC_AUX,
];
/// KERNEL_GS_BASE's slot in [`MsrValues`].
const SLOT_KERNEL_GS_BASE: usize = 0;
/// TSC_AUX's slot in [`MsrValues`].
const SLOT_TSC_AUX: usize = 5;

/// The virtualization extension a vCPU runs on: it decides what is left to
/// switch here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extension {
    /// VT-x: CR2, DR6 and all the MSRs (VMX loads and saves none of them,
    /// SDM 27.3, 28.3).
    Vtx,
    /// AMD-V: of the MSRs TSC_AUX alone (VMLOAD/VMSAVE switch the rest,
    /// APM 15.5.2); CR2 and DR6 are VMCB fields.
    Svm,
}

impl Extension {
    /// The slots of [`MsrValues`] switched for this backend on this CPU
    /// (TSC_AUX only with RDTSCP).
    fn slots(self) -> core::ops::Range<usize> {
        let end = LAZY_MSRS.len() - usize::from(TSC_AUX.load(Ordering::Relaxed) == 0);
        match self {
            Extension::Vtx => 0..end,
            Extension::Svm => SLOT_TSC_AUX..end,
        }
    }
}

/// The slot of `msr` in [`MsrValues`], if it is switched lazily.
fn slot(msr: u32) -> Option<usize> {
    LAZY_MSRS.iter().position(|&m| m == msr)
}

/// What the CPU offers for extended state, decided once at boot.
static XCR0_SUPPORTED: AtomicU64 = AtomicU64::new(0);
/// How a save stores the extended state, decided once at boot: one load
/// and compare at every save.
static SAVE_WITH: AtomicU8 = AtomicU8::new(SAVE_FXSAVE);
/// FXSAVE: no XSAVE (x87 and SSE only).
const SAVE_FXSAVE: u8 = 0;
/// XSAVE.
const SAVE_XSAVE: u8 = 1;
/// XSAVEOPT (CPUID.(0xD,1):EAX[0]): skips components unchanged since the
/// last XRSTOR.
const SAVE_XSAVEOPT: u8 = 2;
/// Whether TSC_AUX exists (RDTSCP, CPUID 0x8000_0001:EDX[27]).
static TSC_AUX: AtomicU64 = AtomicU64::new(0);

/// XCR0 components guests may use: x87, SSE, AVX, AVX-512 (opmask,
/// ZMM_Hi256, Hi16_ZMM). MPX, PKRU, AMX and supervisor state are left out.
const XCR0_GUEST_COMPONENTS: u64 = 0b1110_0111;

/// The XSAVE area: 4 KiB covers every user component of current CPUs
/// (checked against CPUID.(0xD,0):ECX at boot).
#[repr(C, align(64))]
struct XsaveArea([u8; 4096]);

/// CR0.CD and CR0.NW.
const CR0_CD_NW: u64 = (1 << 30) | (1 << 29);
/// CR4.OSFXSR, CR4.OSXMMEXCPT, CR4.OSXSAVE.
const CR4_OSFXSR_OSXMMEXCPT: u64 = (1 << 9) | (1 << 10);
const CR4_OSXSAVE: u64 = 1 << 18;

/// Prepares the calling CPU: caching on (APs leave INIT-SIPI with CR0.CD
/// and NW set, SDM 9.1.1), FXSAVE/XSAVE usable. Returns the XCR0 components
/// guests may use (0 without XSAVE). Called on every CPU before it runs vCPUs.
pub fn init_this_cpu() -> u64 {
    use x86_64::registers::control::{Cr0, Cr4};
    let cr0 = Cr0::read_raw();
    if cr0 & CR0_CD_NW != 0 {
        // SAFETY: clearing CD/NW turns normal write-back caching on; every
        // memory type the kernel uses stays valid.
        unsafe { Cr0::write_raw(cr0 & !CR0_CD_NW) };
    }
    let id = crate::arch::cpuid(1, 0);
    let has_xsave = id.ecx & (1 << 26) != 0;
    let mut cr4 = Cr4::read_raw() | CR4_OSFXSR_OSXMMEXCPT;
    if has_xsave {
        cr4 |= CR4_OSXSAVE;
    }
    // SAFETY: these bits only enable FXSAVE/XSAVE and SSE exceptions; the
    // kernel is built without SIMD, so nothing of its own changes.
    unsafe { Cr4::write_raw(cr4) };
    if !has_xsave {
        XCR0_SUPPORTED.store(0, Ordering::Relaxed);
        SAVE_WITH.store(SAVE_FXSAVE, Ordering::Relaxed);
        return 0;
    }
    let d0 = crate::arch::cpuid(0xD, 0);
    let supported = ((u64::from(d0.edx) << 32) | u64::from(d0.eax)) & XCR0_GUEST_COMPONENTS;
    // Only whole AVX-512 (all three components) is offered.
    let supported = if supported & 0xE0 == 0xE0 {
        supported
    } else {
        supported & 0x7
    };
    if d0.ecx as usize > core::mem::size_of::<XsaveArea>() {
        log::warn!(
            "XSAVE area of {} bytes exceeds 4 KiB: guests get x87/SSE/AVX only",
            d0.ecx
        );
    }
    let supported = if d0.ecx as usize > core::mem::size_of::<XsaveArea>() {
        supported & 0x7
    } else {
        supported
    };
    XCR0_SUPPORTED.store(supported, Ordering::Relaxed);
    let with = if crate::arch::cpuid(0xD, 1).eax & 1 != 0 {
        SAVE_XSAVEOPT
    } else {
        SAVE_XSAVE
    };
    SAVE_WITH.store(with, Ordering::Relaxed);
    TSC_AUX.store(
        u64::from(crate::arch::cpuid(0x8000_0001, 0).edx >> 27 & 1),
        Ordering::Relaxed,
    );
    xsetbv(1);
    supported
}

fn xsetbv(value: u64) {
    // SAFETY: CR4.OSXSAVE is set (init_this_cpu) and `value` contains x87 and
    // only components the CPU supports (checked by policy or constant).
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack));
    }
}

/// The values of the lazily switched MSRs, in [`LAZY_MSRS`] order: what
/// the hardware holds right after [`LazyState::save`] (for the slots its
/// [`Extension`] switches).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MsrValues([u64; 6]);

/// One vCPU's lazily switched registers while it is not loaded.
pub struct LazyState {
    xsave: Box<XsaveArea>,
    cr2: u64,
    dr: [u64; 4],
    dr6: u64,
    /// Whether the vCPU holds DR0-DR3: from its first MOV DR on (which
    /// exits until then), or from the start when the backend cannot make
    /// MOV DR exit. A vCPU that does not hold them cannot read them (its
    /// MOV DR exits) nor arm them (its DR7 writes exit too): the
    /// hardware's, another vCPU's, are nothing to it.
    debug_owned: bool,
    msrs: MsrValues,
    /// Names the values of the MSRs other than KERNEL_GS_BASE: 0 while
    /// they are all 0 (as after reset), else a number no other vCPU's
    /// values have (a new one at every write, [`new_msr_set`]). Equal
    /// numbers mean equal values, so a switch between vCPUs whose guests
    /// never wrote them (or share none of the writes) compares one number.
    msr_set: u64,
    /// XCR0 as of the last save: what the hardware holds right after it.
    xcr0: u64,
    /// The slots of `msrs` switched here ([`Extension::slots`]).
    slots: core::ops::Range<usize>,
    /// On VT-x: CR2, DR6 and KERNEL_GS_BASE are switched here too (AMD-V
    /// switches them with the VMCB and VMLOAD/VMSAVE).
    vtx: bool,
}

impl LazyState {
    /// The state of a CPU after reset: x87/SSE in their initial state
    /// (XSTATE_BV = 0), MXCSR = 0x1F80, FCW = 0x37F, DR6 = 0xFFFF0FF0, the
    /// MSRs 0. `ext`: what the backend leaves to this module;
    /// `debug_exits`: whether the backend intercepts MOV DR until the vCPU
    /// takes its debug registers (else they are switched from the start).
    /// After [`init_this_cpu`] on the boot CPU (whether TSC_AUX exists).
    pub fn new(ext: Extension, debug_exits: bool) -> Self {
        let mut xsave = Box::new(XsaveArea([0; 4096]));
        xsave.0[0..2].copy_from_slice(&0x037Fu16.to_le_bytes());
        xsave.0[24..28].copy_from_slice(&0x1F80u32.to_le_bytes());
        LazyState {
            xsave,
            cr2: 0,
            dr: [0; 4],
            dr6: 0xFFFF_0FF0,
            debug_owned: !debug_exits,
            msrs: MsrValues([0; 6]),
            msr_set: 0,
            xcr0: 1,
            slots: ext.slots(),
            vtx: ext == Extension::Vtx,
        }
    }

    /// Saves the hardware's copy of this vCPU's registers (it was loaded
    /// last on this CPU and ran with `xcr0`).
    #[inline]
    pub fn save(&mut self, xcr0: u64) {
        self.xcr0 = xcr0;
        let area = self.xsave.0.as_mut_ptr();
        let (lo, hi) = (xcr0 as u32, (xcr0 >> 32) as u32);
        // The usual one tested first.
        let with = SAVE_WITH.load(Ordering::Relaxed);
        if with == SAVE_XSAVEOPT {
            // SAFETY: the area is 64-byte aligned, 4 KiB (enough for every
            // allowed component), owned by this vCPU; XCR0 = `xcr0`.
            unsafe {
                core::arch::asm!("xsaveopt64 [{}]", in(reg) area, in("eax") lo, in("edx") hi, options(nostack))
            };
        } else if with == SAVE_XSAVE {
            // SAFETY: as above.
            unsafe {
                core::arch::asm!("xsave64 [{}]", in(reg) area, in("eax") lo, in("edx") hi, options(nostack))
            };
        } else {
            // SAFETY: the area is 16-byte aligned and at least 512 bytes.
            unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) area, options(nostack)) };
        }
        if self.debug_owned {
            // SAFETY: reading debug registers has no side effects in ring 0.
            unsafe {
                core::arch::asm!("mov {}, dr0", out(reg) self.dr[0], options(nomem, nostack));
                core::arch::asm!("mov {}, dr1", out(reg) self.dr[1], options(nomem, nostack));
                core::arch::asm!("mov {}, dr2", out(reg) self.dr[2], options(nomem, nostack));
                core::arch::asm!("mov {}, dr3", out(reg) self.dr[3], options(nomem, nostack));
            }
        }
        if self.vtx {
            self.cr2 = x86_64::registers::control::Cr2::read_raw();
            // DR6 whether the vCPU holds DR0-DR3 or not: a #DB the guest
            // takes natively sets its bits.
            // SAFETY: reading DR6 has no side effects in ring 0.
            unsafe { core::arch::asm!("mov {}, dr6", out(reg) self.dr6, options(nomem, nostack)) };
            // The other MSRs are current: their writes exit
            // ([`VcpuLazyRegs`]); AMD-V's VMSAVE keeps KERNEL_GS_BASE.
            self.msrs.0[SLOT_KERNEL_GS_BASE] = rdmsr(IA32_KERNEL_GS_BASE);
        }
    }

    /// The running vCPU's lazily switched registers, for its exit handlers.
    pub fn regs_mut(&mut self) -> VcpuLazyRegs<'_> {
        VcpuLazyRegs(self)
    }

    /// Whether the vCPU holds its DR0-DR3 (see [`Self::take_debug`]).
    pub fn debug_owned(&self) -> bool {
        self.debug_owned
    }

    /// The running vCPU takes its DR0-DR3 (its first MOV DR exited): loaded
    /// now, switched with it from now on. Nothing when it holds them.
    pub fn take_debug(&mut self) {
        if !self.debug_owned {
            self.debug_owned = true;
            self.load_debug_addresses();
        }
    }

    fn load_debug_addresses(&self) {
        // SAFETY: the debug-address registers take any value; the host has
        // DR7 = 0x400 after every VM exit (SDM 28.5.1, APM 15.6), so no
        // breakpoint fires in the host.
        unsafe {
            core::arch::asm!("mov dr0, {}", in(reg) self.dr[0], options(nomem, nostack));
            core::arch::asm!("mov dr1, {}", in(reg) self.dr[1], options(nomem, nostack));
            core::arch::asm!("mov dr2, {}", in(reg) self.dr[2], options(nomem, nostack));
            core::arch::asm!("mov dr3, {}", in(reg) self.dr[3], options(nomem, nostack));
        }
    }

    /// Loads this vCPU's registers into the hardware, with XCR0 = `xcr0`.
    /// `hardware`: the state the hardware holds now, when known (the vCPU
    /// that saved just before); an MSR or XCR0 that already has this vCPU's
    /// value is not written again (WRMSR and XSETBV are slow, and most
    /// guests leave most of them alike).
    #[inline]
    pub fn load(&self, xcr0: u64, hardware: Option<&LazyState>) {
        let area = self.xsave.0.as_ptr();
        if XCR0_SUPPORTED.load(Ordering::Relaxed) != 0 {
            if hardware.is_none_or(|held| held.xcr0 != xcr0) {
                xsetbv(xcr0);
            }
            let (lo, hi) = (xcr0 as u32, (xcr0 >> 32) as u32);
            // SAFETY: the area holds a valid XSAVE image (initial or saved by
            // `save` with the same XCR0 components), 64-byte aligned.
            unsafe {
                core::arch::asm!("xrstor64 [{}]", in(reg) area, in("eax") lo, in("edx") hi, options(nostack))
            };
        } else {
            // SAFETY: the area holds a valid FXSAVE image (initial or saved).
            unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) area, options(nostack)) };
        }
        if self.vtx {
            // SAFETY: CR2 takes any value; DR6's reserved bits are kept as
            // saved.
            unsafe {
                core::arch::asm!("mov cr2, {}", in(reg) self.cr2, options(nomem, nostack));
                core::arch::asm!("mov dr6, {}", in(reg) self.dr6, options(nomem, nostack));
            }
        }
        if self.debug_owned {
            self.load_debug_addresses();
        }
        match hardware {
            // A slot this backend does not switch is 0 in every record (no
            // save reads it, no write reaches it): equal, never written.
            Some(held) => {
                let kgs = SLOT_KERNEL_GS_BASE;
                if held.msrs.0[kgs] != self.msrs.0[kgs] {
                    wrmsr(LAZY_MSRS[kgs], self.msrs.0[kgs]);
                }
                if held.msr_set != self.msr_set {
                    for (i, &msr) in LAZY_MSRS.iter().enumerate().skip(kgs + 1) {
                        if held.msrs.0[i] != self.msrs.0[i] {
                            wrmsr(msr, self.msrs.0[i]);
                        }
                    }
                }
            }
            None => {
                for i in self.slots.clone() {
                    wrmsr(LAZY_MSRS[i], self.msrs.0[i]);
                }
            }
        }
    }
}

/// Hands the hardware from `prev` (the vCPU that ran last, with its XCR0)
/// to `next`: one call for both halves of a world switch's lazy part.
#[inline(never)]
pub fn switch((prev, prev_xcr0): (&mut LazyState, u64), (next, next_xcr0): (&mut LazyState, u64)) {
    prev.save(prev_xcr0);
    next.load(next_xcr0, Some(prev));
}

/// Loads a new XCR0 for the running vCPU after an emulated XSETBV.
pub fn set_xcr0(value: u64) {
    if XCR0_SUPPORTED.load(Ordering::Relaxed) != 0 {
        xsetbv(value);
    }
}

/// The XCR0 the hardware holds (XGETBV with ECX = 0), or `None` without
/// XSAVE. Right after a VM exit it is the running vCPU's: neither VMX nor
/// AMD-V switches XCR0 (a guest's XSETBV that did not exit shows here).
pub fn hardware_xcr0() -> Option<u64> {
    if XCR0_SUPPORTED.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: CR4.OSXSAVE is set (init_this_cpu) whenever XCR0_SUPPORTED
    // is nonzero, and XCR0 (ECX = 0) always exists then; XGETBV only reads.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    Some((u64::from(hi) << 32) | u64::from(lo))
}

fn rdmsr(msr: u32) -> u64 {
    // SAFETY: the lazily switched MSRs exist on every x86-64 CPU (TSC_AUX is
    // only touched when RDTSCP exists).
    unsafe { Msr::new(msr).read() }
}

/// A number for [`LazyState::msr_set`] that no vCPU has had.
fn new_msr_set() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn wrmsr(msr: u32, value: u64) {
    // SAFETY: as for `rdmsr`; values come from policy checks (canonical
    // addresses) or from a previous RDMSR.
    unsafe { Msr::new(msr).write(value) }
}

/// The running vCPU's lazily switched registers. The MSRs are in hardware
/// and in the vCPU's record, which every write keeps current (guests' own
/// writes exit for all but KERNEL_GS_BASE, which is read from hardware).
pub struct VcpuLazyRegs<'a>(&'a mut LazyState);

impl LazyRegs for VcpuLazyRegs<'_> {
    fn read(&mut self, msr: u32) -> u64 {
        match slot(msr) {
            Some(SLOT_KERNEL_GS_BASE) | None => rdmsr(msr),
            // Without RDTSCP there is no TSC_AUX (the guest sees 0).
            Some(SLOT_TSC_AUX) if TSC_AUX.load(Ordering::Relaxed) == 0 => 0,
            Some(i) => self.0.msrs.0[i],
        }
    }
    fn write(&mut self, msr: u32, value: u64) {
        if msr == IA32_TSC_AUX && TSC_AUX.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(i) = slot(msr) {
            self.0.msrs.0[i] = value;
            if i != SLOT_KERNEL_GS_BASE {
                self.0.msr_set = new_msr_set();
            }
        }
        wrmsr(msr, value);
    }
    fn debug_owned(&self) -> bool {
        self.0.debug_owned
    }
    fn take_debug_registers(&mut self) {
        self.0.take_debug();
    }
}
