//! The AMD-V backend, twin of [`crate::vtx`]: intercepts decided once at boot
//! ([`SvmSetup`]), VMCB programming ([`setup`]), exit translation
//! ([`decode`], with instruction lengths from guest memory when the CPU has
//! no NRIP save: [`insn`]), guest-state access over the VMCB ([`state`]),
//! entry preparation ([`entry`]) and the I/O and MSR permission maps
//! ([`perm`]).
//! APM means AMD publication 24593 (Vol. 2), chapter 15, as in the `svm`
//! crate.
//!
//! The VMCB is a plain struct ([`svm::Vmcb`]), so unlike the VT-x backend
//! nothing here goes through an accessor trait: host tests stage an exit by
//! setting `control.exit_code` and friends and check the fields written.
//!
//! # Intercepts (APM 15.7-15.14)
//!
//! | intercept | why | becomes |
//! |---|---|---|
//! | INTR | time slices end by the host's LAPIC timer (there is no preemption timer); host devices | [`Exit::ExternalInterrupt`](hvcore::arch::Exit) |
//! | NMI, SMI, INIT | host events: the host takes them after `stgi` | `ExternalInterrupt` |
//! | VINTR | interrupt window (V_IRQ with V_IGN_TPR, see [`entry::set_interrupt_window`]) | `InterruptWindow` |
//! | CPUID, HLT, INVD, RDPMC, XSETBV | policy, as on VT-x | the same exits as VT-x |
//! | CR4 writes | reserved and hidden bits raise #GP (see below) | `CrAccess` |
//! | IOIO_PROT (IOPM all ones) | every port is emulated | `Io` |
//! | MSR_PROT (MSRPM, [`perm`]) | MSR policy | `Rdmsr` / `Wrmsr` |
//! | SHUTDOWN | triple fault | `TripleFault` |
//! | VMRUN (mandatory, APM 15.5.1), VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA | SVM is hidden from guests; run natively they would reach the hardware (CLGI would hold off the host's interrupts) | `UndefinedInstruction` (#UD) |
//! | VMMCALL | hypercalls | `Vmcall` |
//! | MONITOR, MWAIT | hidden by CPUID | `UndefinedInstruction` |
//! | exception #UD (6) | VMCALL, Intel's hypercall instruction, raises #UD on AMD: run as a hypercall (as KVM does); any other #UD is reflected | `Vmcall` or `Exception` |
//! | exception #AC (17) | an #AC whose delivery raises #AC again loops inside the CPU, where no interrupt can end it (CVE-2015-5307); intercepted, it is reflected | `Exception` |
//!
//! # Control registers: only CR4 writes are intercepted
//!
//! On VT-x the hypervisor owns CR0.CD/NW (a VM exit does not reload them,
//! so a guest's CD would disable the host's caches), CR0.PE/PG (mirrored in
//! the "IA-32e mode guest" control) and the VMX-fixed bits, which is why
//! `hvcore::exit::cr` emulates CR writes. On AMD-V the guest's CR0, CR3 and
//! CR4 live entirely in the VMCB: VMRUN loads them and #VMEXIT reloads the
//! host's from the host save area (APM 15.5, 15.6), so CD/NW cannot leak,
//! long mode activates in hardware (EFER.LMA is guest state), and no CR4
//! bit has to be forced on. CR0 and CR3 accesses and CR4 reads therefore
//! run natively: the guest-visible values are the VMCB's
//! ([`state::VmcbCpu`]).
//!
//! CR4 writes are intercepted (VMEXIT_CR4_WRITE) and emulated by
//! `hvcore::exit::cr` with the checks of MOV CR4, against
//! [`GuestLimits::cr4_allowed`]: the guest-owned bits
//! ([`CR4_GUEST_OWNED`]) that this CPU implements
//! ([`svm::SvmCapabilities::cr4_implemented`], from CPUID), without
//! OSXSAVE when the host has no XSAVE. Setting any other bit raises #GP, as
//! a reserved CR4 bit does on the CPU (CR4.VMXE is reserved on AMD). Run
//! natively, two things would go wrong:
//!
//! - QEMU 7.2's TCG ends the guest with VMEXIT_INVALID instead of raising
//!   #GP when a guest's MOV CR4 sets a reserved bit (`helper_write_crN` in
//!   `target/i386/tcg/sysemu/misc_helper.c`: `if (t0 &
//!   cr4_reserved_bits(env)) cpu_vmexit(env, SVM_EXIT_ERR, 0, GETPC())`);
//!   its CR4 write intercept is checked first (`gen_svm_check_intercept`
//!   before `gen_helper_write_crN` in `tcg/translate.c`), so intercepted
//!   the guest gets its #GP;
//! - `cr4_allowed` would not be enforced: a CR4 feature that CPUID hides
//!   but the CPU has could be switched on by a guest that ignores CPUID.
//!
//! The exit names the register operand only with decode assists
//! (EXITINFO1); without them (QEMU's TCG, Bochs' "ryzen") the MOV's bytes at
//! RIP are decoded ([`insn::mov_to_cr4`]). A CR4 write costs one exit (KVM
//! intercepts them on AMD-V as well); the vCPU's TLB is flushed only when a
//! bit that affects translation changes ([`state::VmcbCpu`]).
//!
//! QEMU's TCG reports a guest MOV CR3 with bits beyond the physical-address
//! width in long mode as VMEXIT_INVALID as well (same function); CR3
//! writes are too frequent to intercept for that, and the kernel's
//! VMEXIT_INVALID report names the instruction at RIP
//! ([`check::check_guest_state`] tells a refused VMCB from such a report).
//!
//! CR8 (the TPR) is virtualized by V_TPR with V_INTR_MASKING = 1 (APM
//! 15.21.1): MOV CR8 reads and writes V_TPR without an exit and never
//! reaches the host's APIC, and the guest's RFLAGS.IF masks only virtual
//! interrupts. The host's RFLAGS.IF at VMRUN decides whether physical
//! interrupts exit (see the world-switch contract below).
//!
//! # EFER.SVME
//!
//! VMRUN refuses a guest EFER without SVME (APM 15.5.1), but guests must see
//! it clear (CPUID hides SVM). The hardware EFER always has SVME;
//! [`state::VmcbCpu`] shows the guest [`state::SoftState::efer_svme`]
//! instead, and the MSRPM intercepts EFER reads as well as writes (VT-x lets
//! guests read EFER natively).
//!
//! # MSRs
//!
//! The MSRPM ([`perm::build_msrpm`]) intercepts everything but
//! [`perm::PASSTHROUGH`]: the MSRs VMLOAD/VMSAVE switch (FS/GS/KERNEL_GS
//! base, STAR, LSTAR, CSTAR, SFMASK, SYSENTER_*), and reads of TSC_AUX
//! (switched by the kernel with the vCPU from the record its intercepted
//! writes keep, as on VT-x; on a CPU without RDTSCP the MSR does not exist
//! and the guest's access faults as on bare metal). Unlike VT-x,
//! IA32_PAT is intercepted and kept in G_PAT by policy: whether a guest's
//! native PAT write lands in G_PAT and survives #VMEXIT is not something
//! every implementation gets right (QEMU's TCG neither loads G_PAT nor
//! restores the host's PAT), and guests write PAT about once. DEBUGCTL is
//! intercepted too: without LBR virtualization VMRUN does not switch it.
//!
//! # Required and optional features
//!
//! [`SvmSetup::from_caps`] reads CPUID Fn8000_000A once (through
//! [`svm::SvmCapabilities`]). Missing required features are refused by name
//! ([`svm::SvmError`]); missing optional ones are listed for the banner
//! ([`SvmSetup::missing`]):
//!
//! | feature | required | without it |
//! |---|---|---|
//! | nested paging | yes | - |
//! | two ASIDs or more | yes | - |
//! | NRIP save | no | the length of an intercepted instruction is decoded from its bytes in guest memory ([`insn`]) instead of nRIP - RIP |
//! | VMCB clean bits | no | the processor reloads every VMCB field at every VMRUN |
//! | flush by ASID | no | a vCPU's TLB flush (TLB_CONTROL 1) flushes every ASID |
//! | decode assists | no | the register operand of an intercepted MOV CR4 is decoded from guest memory |
//! | LBR virtualization | no | the guest's DEBUGCTL is kept in software: LBR and BTF have no effect |
//!
//! Bochs `cpu: model=ryzen` reports EDX 0x44f (nested paging, LBR
//! virtualization, SVM lock, NRIP save, flush by ASID, pause filter): no
//! clean bits, no decode assists. QEMU 7.2's TCG offers nested paging, VGIF
//! and SVME address checks but no NRIP save (`TCG_SVM_FEATURES` in
//! `target/i386/cpu.c`; its #VMEXIT never writes nRIP): `-cpu EPYC` (EDX
//! 0x1 once TCG filters NRIPS out) and `-cpu max` (0x1001_0001) run with
//! every optional feature missing, and [`decode::decode`] reads each
//! skipped instruction (CPUID, RDMSR, WRMSR, HLT, VMMCALL, XSETBV, INVD,
//! RDPMC) at CS base + RIP through the guest's page tables
//! ([`hvcore::guest_paging`]) to learn its length. An I/O exit needs no
//! decoding: EXITINFO2 holds the next RIP on every CPU (APM 15.10.2).
//!
//! # What the kernel's world switch does
//!
//! Once per CPU: set EFER.SVME, point VM_HSAVE_PA at a reserved 4 KiB frame
//! (the host save area VMRUN writes and #VMEXIT reads), and VMSAVE the
//! host's FS/GS/TR/LDTR and SYSCALL/SYSENTER MSRs into a host save VMCB.
//! Per VMRUN, with host interrupts off:
//!
//! 1. [`entry::before_vmrun`]: guest RAX into the VMCB (GuestRegs.rax is
//!    the handlers' copy), TLB_CONTROL (flush the ASID when asked or when
//!    the vCPU changed CPU), clean bits;
//! 2. `clgi`; `sti` (with V_INTR_MASKING, the host's RFLAGS.IF at VMRUN
//!    decides whether a physical interrupt exits; GIF = 0 keeps it pending
//!    until then); `vmload` the guest VMCB; load RBX..R15 from GuestRegs;
//!    RAX = the VMCB's physical address; `vmrun`. RSP, RIP, RFLAGS and RAX
//!    of the guest come from the VMCB state-save area, not from GuestRegs;
//! 3. at #VMEXIT (GIF = 0, host RSP/RIP/RAX/CR0/CR3/CR4/EFER/segments back
//!    from the host save area): store RBX..R15 into GuestRegs; `vmsave` the
//!    guest VMCB (so the VMLOAD state above is current while exits are
//!    handled: [`state::VmcbCpu`] reads it there); `vmload` the host save
//!    VMCB (GS base, TR); `cli`; `stgi`;
//! 4. [`entry::after_vmexit`], then [`decode::decode`] (which copies the
//!    VMCB's RIP and RAX into GuestRegs; a [`decode::Decoded::stop`] stops
//!    the VM instead of handling the exit), take a pending host interrupt
//!    (`sti; nop; cli`) on `ExternalInterrupt`, `hvcore::exit::handle_exit`,
//!    [`entry::advance`], [`entry::keep_interrupted`] and
//!    [`entry::keep_injected`] (the event to inject) and [`entry::inject`].
//!
//! The kernel also arms the host's LAPIC timer for the end of the slice
//! (its interrupt exits as `ExternalInterrupt`; the loop then finds the
//! slice over, or arms it again when it came early), for the APIC timer's
//! deadline before each VMRUN of a vCPU with a local APIC, and before each
//! VMRUN writes the VM's TSC offset
//! ([`entry::set_tsc_offset`]) and decides the virtual PIC's interrupt with
//! [`entry::interruptibility`] and `hvcore::devices::interrupt::decide`:
//! [`entry::inject`] it, or [`entry::set_interrupt_window`]. A change to the
//! nested page tables sets [`state::SoftState::flush_tlb`].
//!
//! XCR0, the x87/SSE/AVX state, DR0-DR3 and TSC_AUX are not switched by
//! VMRUN: the kernel keeps switching them lazily as on VT-x. XSETBV is
//! intercepted, but QEMU 7.2's TCG does not implement that intercept (its
//! XSETBV, `0F 01 D1` in `tcg/translate.c`, calls `helper_xsetbv` with no
//! `gen_svm_check_intercept`; `target/i386/svm.h` has no
//! `SVM_EXIT_XSETBV`): there the guest's XSETBV loads the hardware's XCR0
//! without an exit. Since XCR0 is not switched by VMRUN either, the kernel
//! reads XCR0 after every #VMEXIT and, when it differs from
//! [`state::SoftState::xcr0`], takes it as the guest's after the checks of
//! [`state::native_xcr0`] (or stops the VM); otherwise the next vCPU
//! switch would save and reload the guest's registers with a stale XCR0
//! (losing its AVX state and leaving AVX disabled: #UD). CR2, DR6, DR7,
//! EFER, PAT (G_PAT with nested paging) are VMCB state. Each VM gets its
//! own ASID (VM id + 1, up to [`SvmSetup::max_asid`]).

pub mod check;
pub mod decode;
pub mod entry;
pub mod insn;
pub mod perm;
pub mod setup;
pub mod state;

use hvcore::arch::{GuestLimits, CR4_GUEST_OWNED, CR4_OSXSAVE};
use svm::caps::{SvmCapabilities, SvmError, SvmFeatures, VmCr};
use svm::intercept::{CrIntercepts, ExceptionIntercepts, InterceptVector3, InterceptVector4};
use svm::vmcb::{TlbControl, VIntr};

pub use crate::vtx::{HostFeatures, Missing};

/// Optional features this CPU has (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Optional {
    /// NRIP save: #VMEXIT writes the next RIP of an intercepted instruction
    /// (VMCB 0C8h); without it lengths are decoded from guest memory.
    pub nrip_save: bool,
    /// VMCB clean bits (APM 15.15.3).
    pub vmcb_clean: bool,
    /// TLB_CONTROL 3 and 7: flush one ASID (APM 15.16).
    pub flush_by_asid: bool,
    /// Decode assists (operand details in EXITINFO1); not used.
    pub decode_assists: bool,
    /// LBR virtualization: VMRUN and #VMEXIT switch DEBUGCTL (VMCB 0B8h bit 0).
    pub lbr_virtualization: bool,
}

/// Intercepts and guest limits decided once at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvmSetup {
    /// Control-register write intercepts (VMCB 002h): CR4 (see the module
    /// docs).
    pub intercept_cr_write: CrIntercepts,
    /// The CR4 bits the CPU implements
    /// ([`svm::SvmCapabilities::cr4_implemented`]): any other bit in a
    /// guest's CR4 makes VMRUN fail ([`check::check_guest_state`]).
    pub cr4_implemented: u64,
    /// Exception intercepts (VMCB 008h).
    pub intercept_exceptions: ExceptionIntercepts,
    /// Intercept vector 3 (VMCB 00Ch).
    pub intercept_vector3: InterceptVector3,
    /// Intercept vector 4 (VMCB 010h).
    pub intercept_vector4: InterceptVector4,
    /// The virtual-interrupt controls a new vCPU starts with (V_INTR_MASKING).
    pub vintr: VIntr,
    /// Optional features present.
    pub optional: Optional,
    /// The TLB_CONTROL value that flushes a vCPU's translations.
    pub tlb_flush: TlbControl,
    /// The highest guest ASID (ASID 0 is the host's).
    pub max_asid: u32,
    /// What guests may use.
    pub limits: GuestLimits,
}

impl SvmSetup {
    /// Decides the intercepts from the SVM capabilities (CPUID Fn8000_000A,
    /// VM_CR) and the host's features. Refuses, by name, a CPU without
    /// nested paging or a guest ASID, or with SVM disabled.
    pub fn from_caps(caps: &SvmCapabilities, host: HostFeatures) -> Result<SvmSetup, SvmError> {
        if caps.vm_cr.contains(VmCr::SVMDIS) {
            return Err(SvmError::DisabledByFirmware {
                locked: caps.vm_cr.contains(VmCr::LOCK),
            });
        }
        if !caps.features.contains(SvmFeatures::NESTED_PAGING) {
            return Err(SvmError::NoNestedPaging);
        }
        if caps.asid_count < 2 {
            return Err(SvmError::NoGuestAsid);
        }
        let f = caps.features;
        let optional = Optional {
            nrip_save: f.contains(SvmFeatures::NRIP_SAVE),
            vmcb_clean: f.contains(SvmFeatures::VMCB_CLEAN),
            flush_by_asid: f.contains(SvmFeatures::FLUSH_BY_ASID),
            decode_assists: f.contains(SvmFeatures::DECODE_ASSISTS),
            lbr_virtualization: f.contains(SvmFeatures::LBR_VIRT),
        };
        let v3 = InterceptVector3::INTR
            | InterceptVector3::NMI
            | InterceptVector3::SMI
            | InterceptVector3::INIT
            | InterceptVector3::VINTR
            | InterceptVector3::RDPMC
            | InterceptVector3::CPUID
            | InterceptVector3::INVD
            | InterceptVector3::HLT
            | InterceptVector3::INVLPGA
            | InterceptVector3::IOIO_PROT
            | InterceptVector3::MSR_PROT
            | InterceptVector3::SHUTDOWN;
        let v4 = InterceptVector4::VMRUN
            | InterceptVector4::VMMCALL
            | InterceptVector4::VMLOAD
            | InterceptVector4::VMSAVE
            | InterceptVector4::STGI
            | InterceptVector4::CLGI
            | InterceptVector4::SKINIT
            | InterceptVector4::MONITOR
            | InterceptVector4::MWAIT
            | InterceptVector4::XSETBV;
        // Guest-owned bits the CPU implements (the others are reserved:
        // VMRUN would refuse them, APM 15.5.1).
        let implemented = CR4_GUEST_OWNED & caps.cr4_implemented;
        let cr4_allowed = if host.xcr0_supported == 0 {
            implemented & !CR4_OSXSAVE
        } else {
            implemented
        };
        Ok(SvmSetup {
            intercept_cr_write: CrIntercepts::CR4,
            cr4_implemented: caps.cr4_implemented,
            intercept_exceptions: ExceptionIntercepts::AC | ExceptionIntercepts::UD,
            intercept_vector3: v3,
            intercept_vector4: v4,
            vintr: VIntr::default().with_v_intr_masking(true),
            optional,
            tlb_flush: if optional.flush_by_asid {
                TlbControl::FlushGuest
            } else {
                TlbControl::FlushAll
            },
            max_asid: caps.max_guest_asid(),
            limits: GuestLimits {
                xcr0_allowed: host.xcr0_supported,
                cr4_allowed,
                phys_addr_bits: host.phys_addr_bits,
                // Real mode and unpaged protected mode run natively with
                // nested paging.
                unrestricted: true,
            },
        })
    }

    /// Optional features this CPU lacks, with their consequence.
    pub fn missing(&self) -> alloc::vec::Vec<Missing> {
        let o = self.optional;
        [
            (
                o.nrip_save,
                ("NRIP save", "instruction lengths decoded from guest memory"),
            ),
            (
                o.vmcb_clean,
                (
                    "VMCB clean bits",
                    "the whole VMCB is reloaded at every VMRUN",
                ),
            ),
            (
                o.flush_by_asid,
                ("flush by ASID", "a vCPU's TLB flush flushes every ASID"),
            ),
            (
                o.decode_assists,
                (
                    "decode assists",
                    "MOV CR4 operands decoded from guest memory",
                ),
            ),
            (
                o.lbr_virtualization,
                (
                    "LBR virtualization",
                    "guest DEBUGCTL kept in software: LBR and BTF have no effect",
                ),
            ),
        ]
        .into_iter()
        .filter(|(present, _)| !present)
        .map(|(_, m)| m)
        .collect()
    }
}

#[cfg(test)]
pub(crate) mod testcaps {
    //! CPUID Fn8000_000A as recorded or read from the emulators' sources:
    //! `[eax, ebx, ecx, edx]`.
    use super::{HostFeatures, SvmSetup};
    use svm::caps::SvmCapabilities;

    /// Bochs `cpu: model=ryzen` (shared/PLATFORM.md).
    pub const BOCHS_RYZEN: [u32; 4] = [1, 0x8000, 0, 0x44f];
    /// QEMU 7.2 TCG `-cpu EPYC`: the model asks for NPT | NRIPSAVE, TCG
    /// supports NPT | VGIF | SVME_ADDR_CHK, so NRIPSAVE is filtered out;
    /// 16 ASIDs (`target/i386/cpu.c`, leaf 0x8000000A).
    pub const QEMU_TCG_EPYC: [u32; 4] = [1, 0x10, 0, 0x1];
    /// QEMU 7.2 TCG `-cpu max`: everything TCG supports (bits 0, 16, 28).
    pub const QEMU_TCG_MAX: [u32; 4] = [1, 0x10, 0, 0x1001_0001];
    /// QEMU's EPYC model unfiltered (as under KVM): NPT | NRIPSAVE.
    pub const EPYC_MODEL: [u32; 4] = [1, 0x10, 0, 0x9];

    pub const HOST: HostFeatures = HostFeatures {
        xcr0_supported: 0x7,
        phys_addr_bits: 40,
    };

    /// CR4 bits of a Zen 1 (Bochs' "ryzen", QEMU's EPYC): the baseline,
    /// FSGSBASE, OSXSAVE, SMEP, SMAP; no UMIP, no PCID.
    pub const ZEN1_CR4: u64 = 0x7FF | (1 << 16) | (1 << 18) | (1 << 20) | (1 << 21);

    pub fn caps(leaf: [u32; 4]) -> SvmCapabilities {
        SvmCapabilities::from_cpuid(leaf, 0).with_cr4_implemented(ZEN1_CR4)
    }

    pub fn bochs() -> SvmSetup {
        match SvmSetup::from_caps(&caps(BOCHS_RYZEN), HOST) {
            Ok(s) => s,
            Err(e) => panic!("Bochs ryzen refused: {e}"),
        }
    }

    /// A QEMU TCG setup (no NRIP save): [`QEMU_TCG_EPYC`] or
    /// [`QEMU_TCG_MAX`].
    pub fn tcg(leaf: [u32; 4]) -> SvmSetup {
        match SvmSetup::from_caps(&caps(leaf), HOST) {
            Ok(s) => s,
            Err(e) => panic!("QEMU TCG refused: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testcaps::*;
    use super::*;

    #[test]
    fn bochs_ryzen_runs_without_clean_bits_and_decode_assists() {
        let s = bochs();
        assert_eq!(
            s.optional,
            Optional {
                nrip_save: true,
                vmcb_clean: false,
                flush_by_asid: true,
                decode_assists: false,
                lbr_virtualization: true
            }
        );
        let names: alloc::vec::Vec<_> = s.missing().iter().map(|m| m.0).collect();
        assert_eq!(names, ["VMCB clean bits", "decode assists"]);
        assert_eq!(s.tlb_flush, TlbControl::FlushGuest);
        assert_eq!(s.max_asid, 0x7fff);
        assert_eq!(
            s.limits,
            GuestLimits {
                xcr0_allowed: 7,
                cr4_allowed: ZEN1_CR4,
                phys_addr_bits: 40,
                unrestricted: true
            }
        );
        assert_eq!(s.cr4_implemented, ZEN1_CR4);
    }

    #[test]
    fn guests_get_the_owned_cr4_bits_the_cpu_implements() {
        use hvcore::arch::{CR4_PCIDE, CR4_VMXE};
        const CR4_UMIP: u64 = 1 << 11;
        // Zen 1 has no PCID and no UMIP: CR4.PCIDE and UMIP are reserved
        // there, so guests may not set them although they are guest-owned.
        let s = bochs();
        assert_eq!(s.limits.cr4_allowed & (CR4_PCIDE | CR4_UMIP), 0);
        assert_eq!(s.limits.cr4_allowed & !CR4_GUEST_OWNED, 0);
        // VMXE is never allowed (reserved on AMD, hidden on Intel).
        let all = SvmCapabilities::from_cpuid(BOCHS_RYZEN, 0).with_cr4_implemented(!0);
        let s = SvmSetup::from_caps(&all, HOST).unwrap();
        assert_eq!(s.limits.cr4_allowed, CR4_GUEST_OWNED);
        assert_eq!(s.limits.cr4_allowed & CR4_VMXE, 0);
        // Without CPUID's view only the baseline bits remain.
        let bare = SvmCapabilities::from_cpuid(BOCHS_RYZEN, 0);
        let s = SvmSetup::from_caps(&bare, HOST).unwrap();
        assert_eq!(s.limits.cr4_allowed, 0x7FF);
    }

    #[test]
    fn intercepts_follow_the_module_table() {
        let s = bochs();
        let v3 = s.intercept_vector3;
        for bit in [
            InterceptVector3::INTR,
            InterceptVector3::NMI,
            InterceptVector3::SMI,
            InterceptVector3::INIT,
            InterceptVector3::VINTR,
            InterceptVector3::CPUID,
            InterceptVector3::HLT,
            InterceptVector3::INVD,
            InterceptVector3::RDPMC,
            InterceptVector3::INVLPGA,
            InterceptVector3::IOIO_PROT,
            InterceptVector3::MSR_PROT,
            InterceptVector3::SHUTDOWN,
        ] {
            assert!(v3.contains(bit), "{bit:?}");
        }
        // Nothing that runs fine natively: CR/GDT/IDT accesses, RDTSC, PAUSE,
        // task switches, INTn, IRET, INVLPG.
        for bit in [
            InterceptVector3::CR0_SEL_WRITE,
            InterceptVector3::IDTR_READ,
            InterceptVector3::RDTSC,
            InterceptVector3::PAUSE,
            InterceptVector3::TASK_SWITCH,
            InterceptVector3::INTN,
            InterceptVector3::IRET,
            InterceptVector3::INVLPG,
        ] {
            assert!(!v3.contains(bit), "{bit:?}");
        }
        assert_eq!(
            s.intercept_vector4,
            InterceptVector4::VMRUN
                | InterceptVector4::VMMCALL
                | InterceptVector4::VMLOAD
                | InterceptVector4::VMSAVE
                | InterceptVector4::STGI
                | InterceptVector4::CLGI
                | InterceptVector4::SKINIT
                | InterceptVector4::MONITOR
                | InterceptVector4::MWAIT
                | InterceptVector4::XSETBV
        );
        assert_eq!(
            s.intercept_exceptions,
            ExceptionIntercepts::AC | ExceptionIntercepts::UD
        );
        assert_eq!(s.intercept_cr_write, CrIntercepts::CR4);
        assert!(s.vintr.v_intr_masking());
        assert_eq!(s.vintr.0, VIntr::V_INTR_MASKING);
    }

    #[test]
    fn qemu_tcg_runs_without_nrip_save() {
        for leaf in [QEMU_TCG_EPYC, QEMU_TCG_MAX] {
            let s = tcg(leaf);
            assert_eq!(s.optional, Optional::default(), "nothing optional");
            assert_eq!(
                s.missing(),
                [
                    ("NRIP save", "instruction lengths decoded from guest memory"),
                    (
                        "VMCB clean bits",
                        "the whole VMCB is reloaded at every VMRUN"
                    ),
                    ("flush by ASID", "a vCPU's TLB flush flushes every ASID"),
                    (
                        "decode assists",
                        "MOV CR4 operands decoded from guest memory"
                    ),
                    (
                        "LBR virtualization",
                        "guest DEBUGCTL kept in software: LBR and BTF have no effect"
                    ),
                ]
            );
            assert_eq!(s.tlb_flush, TlbControl::FlushAll);
            assert_eq!(s.max_asid, 15);
            assert_eq!(s.intercept_vector3, bochs().intercept_vector3);
        }
        // The same model with NRIP save (as KVM would offer it) lacks the
        // other four.
        let s = SvmSetup::from_caps(&caps(EPYC_MODEL), HOST).unwrap();
        assert!(s.optional.nrip_save);
        assert_eq!(s.missing().len(), 4);
    }

    #[test]
    fn required_features_are_named() {
        let no_np = SvmSetup::from_caps(&caps([1, 0x8000, 0, 0x44e]), HOST).unwrap_err();
        assert_eq!(no_np, SvmError::NoNestedPaging);
        assert!(alloc::format!("{no_np}").contains("nested paging"));
        assert_eq!(
            SvmSetup::from_caps(&caps([1, 1, 0, 0x44f]), HOST),
            Err(SvmError::NoGuestAsid)
        );
        let disabled = SvmCapabilities::from_cpuid(BOCHS_RYZEN, 0x18);
        assert_eq!(
            SvmSetup::from_caps(&disabled, HOST),
            Err(SvmError::DisabledByFirmware { locked: true })
        );
    }

    #[test]
    fn everything_optional_present() {
        let s = SvmSetup::from_caps(&caps([1, 0x8000, 0, 0xff]), HOST).unwrap();
        assert!(s.missing().is_empty());
    }

    #[test]
    fn no_xsave_hides_osxsave() {
        let s = SvmSetup::from_caps(
            &caps(BOCHS_RYZEN),
            HostFeatures {
                xcr0_supported: 0,
                phys_addr_bits: 36,
            },
        )
        .unwrap();
        assert_eq!(s.limits.cr4_allowed & CR4_OSXSAVE, 0);
        assert_eq!(s.limits.xcr0_allowed, 0);
        assert_eq!(s.limits.phys_addr_bits, 36);
    }
}

#[cfg(test)]
mod round_trip {
    //! Exits through the whole backend and hvcore's policy, as the kernel's
    //! vCPU loop will run them: after_vmexit, decode (a decoding stop stops
    //! the VM), handle_exit over VmcbCpu, advance, keep_interrupted/keep_injected/inject,
    //! before_vmrun. Guest memory holds the boot page tables a 64-bit guest
    //! starts with.
    use super::insn::testmem::Ram;
    use super::setup::{program, GuestStart};
    use super::state::{LazyRegs, SoftState, VmcbCpu};
    use super::testcaps::{bochs, tcg, QEMU_TCG_EPYC};
    use super::{decode, entry, SvmSetup};
    use crate::vtx::setup::long_mode_boot_words;
    use hvcore::arch::{
        Action, Event, GuestCpu, GuestMemory, GuestMemoryError, GuestRegs, Platform, StopReason,
    };
    use hvcore::config::GuestMode;
    use hvcore::exit::handle_exit;
    use hvcore::msr_policy::{IA32_EFER, IA32_PAT};
    use hvcore::vcpu::{VcpuState, VmContext};
    use svm::caps::EFER_SVME;
    use svm::exit::{EventInfo, EventType};
    use svm::vmcb::Vmcb;
    use svm::HostPhysAddr;

    struct NoLazy;
    impl LazyRegs for NoLazy {
        fn read(&mut self, _: u32) -> u64 {
            0
        }
        fn write(&mut self, _: u32, _: u64) {}
        fn debug_owned(&self) -> bool {
            false
        }
        fn take_debug_registers(&mut self) {}
    }

    struct NoMemory;
    impl GuestMemory for NoMemory {
        fn read(&self, gpa: u64, _: &mut [u8]) -> Result<(), GuestMemoryError> {
            Err(GuestMemoryError::OutOfRange { gpa })
        }
    }

    struct Env<'a> {
        cpu: VmcbCpu<'a>,
    }

    impl Platform for Env<'_> {
        fn host_cpuid(&self, leaf: u32, _: u32) -> [u32; 4] {
            match leaf {
                0 => [0xD, 0, 0, 0],
                0x8000_0000 => [0x8000_0008, 0, 0, 0],
                _ => [u32::MAX; 4],
            }
        }
        fn console_write(&mut self, _: &str, _: &str) {}
        fn console_raw(&mut self, _: &str, _: &[u8]) {}
        fn now_ticks(&self) -> u64 {
            1000
        }
        fn now_ns(&self) -> u64 {
            1000
        }
        fn cpu_apic_id(&self) -> u32 {
            0
        }
        fn guest_memory(&self) -> &dyn GuestMemory {
            &NoMemory
        }
        fn guest_cpu(&mut self) -> &mut dyn GuestCpu {
            &mut self.cpu
        }
    }

    struct Vcpu {
        vmcb: alloc::boxed::Box<Vmcb>,
        setup: SvmSetup,
        soft: SoftState,
        regs: GuestRegs,
        vm: VmContext,
        state: VcpuState,
        mem: Ram,
    }

    impl Vcpu {
        /// On Bochs' CPU (NRIP save).
        fn new() -> Vcpu {
            Vcpu::on(bochs())
        }

        /// A 64-bit guest at 0x10_0000 on `setup`'s CPU, with 2 MiB of
        /// memory.
        fn on(setup: SvmSetup) -> Vcpu {
            let mut mem = Ram::new(0x20_0000);
            for (gpa, word) in long_mode_boot_words() {
                mem.put(gpa, &word.to_le_bytes());
            }
            let mut vmcb = alloc::boxed::Box::new(Vmcb::new());
            let start = GuestStart {
                mode: GuestMode::Long64,
                entry: 0x10_0000,
                n_cr3: HostPhysAddr::new(0x30_0000),
                asid: 1,
                iopm: HostPhysAddr::new(0x20_0000),
                msrpm: HostPhysAddr::new(0x20_3000),
            };
            program(&mut vmcb, &setup, &start).unwrap();
            Vcpu {
                vmcb,
                setup,
                soft: SoftState::default(),
                regs: GuestRegs::default(),
                vm: VmContext::new(1, "svm"),
                state: VcpuState::new(0),
                mem,
            }
        }

        /// The hardware exits with `code`; the kernel handles it and
        /// prepares the next VMRUN. Without NRIP save the CPU leaves nRIP
        /// alone (`len` is then unused).
        fn exit(&mut self, code: u64, info1: u64, len: u64) -> Action {
            let v = &mut self.vmcb;
            v.control.exit_code = code;
            v.control.exit_info1 = info1;
            if self.setup.optional.nrip_save {
                v.control.next_rip = v.save.rip + len;
            }
            entry::after_vmexit(v, &self.setup);
            let d = decode::decode(v, &mut self.regs, &self.mem, &self.setup);
            let action = {
                let cpu = VmcbCpu {
                    vmcb: v,
                    setup: &self.setup,
                    soft: &mut self.soft,
                    msrs: &mut NoLazy,
                };
                let mut env = Env { cpu };
                match d.stop {
                    Some(reason) => {
                        // What the kernel's vCPU loop does with a decoding
                        // stop: stop the VM and the vCPU, handle nothing.
                        self.vm.stop(reason, &mut env);
                        self.state.run_state_mut().stop(reason).unwrap();
                        Action::Stop(reason)
                    }
                    None => handle_exit(
                        &mut self.vm,
                        &mut self.state,
                        &d.exit,
                        &mut self.regs,
                        &mut env,
                    ),
                }
            };
            let next = hvcore::arch::Next::from(&action);
            entry::advance(v, &next, &self.regs);
            let mut pending = None;
            entry::keep_interrupted(&mut pending, d.vectoring);
            entry::keep_injected(&mut pending, &next);
            if let Some(ev) = pending {
                entry::inject(v, ev);
            }
            entry::before_vmrun(v, &self.setup, &mut self.soft, &self.regs, false);
            action
        }
    }

    #[test]
    fn rdmsr_efer_hides_svme_and_returns_through_vmcb_rax() {
        let mut c = Vcpu::new();
        c.vmcb.save.rax = 0xFFFF_FFFF_FFFF_FFFF;
        c.regs.rcx = u64::from(IA32_EFER);
        assert_eq!(c.exit(0x7C, 0, 2), Action::AdvanceRip);
        assert_eq!((c.regs.rax, c.regs.rdx), (0xd00, 0));
        assert_eq!(c.vmcb.save.rax, 0xd00, "RAX back in the VMCB for VMRUN");
        assert_eq!(c.vmcb.save.rip, 0x10_0002);
        assert_eq!(c.vmcb.save.efer & EFER_SVME, EFER_SVME);
    }

    #[test]
    fn wrmsr_efer_with_svme_is_refused_and_nxe_off_is_kept() {
        let mut c = Vcpu::new();
        c.regs.rcx = u64::from(IA32_EFER);
        c.vmcb.save.rax = 0x1d00;
        assert_eq!(c.exit(0x7C, 1, 2), Action::Inject(Event::GP0));
        assert_eq!(
            c.vmcb.control.event_inj,
            EventInfo::new(13, EventType::Exception, Some(0))
        );
        assert_eq!(
            c.vmcb.save.rip, 0x10_0000,
            "the fault is taken at the WRMSR"
        );
        c.vmcb.save.rax = 0x500;
        assert_eq!(c.exit(0x7C, 1, 2), Action::AdvanceRip);
        assert_eq!(c.vmcb.save.efer, 0x500 | EFER_SVME);
        assert!(
            !c.vmcb.control.event_inj.is_valid(),
            "the #GP was delivered"
        );
    }

    #[test]
    fn wrmsr_pat_lands_in_g_pat() {
        let mut c = Vcpu::new();
        c.regs.rcx = u64::from(IA32_PAT);
        c.regs.rdx = 0x0007_0406;
        c.vmcb.save.rax = 0x0007_0106;
        assert_eq!(c.exit(0x7C, 1, 2), Action::AdvanceRip);
        assert_eq!(c.vmcb.save.g_pat, 0x0007_0406_0007_0106);
    }

    #[test]
    fn cpuid_hides_svm() {
        let mut c = Vcpu::new();
        c.vmcb.save.rax = 0x8000_0001;
        assert_eq!(c.exit(0x72, 0, 2), Action::AdvanceRip);
        assert_eq!(c.regs.rcx & (1 << 2), 0);
        assert_eq!(c.vmcb.save.rax, u64::from(u32::MAX));
    }

    #[test]
    fn cr4_writes_are_checked_as_amd_hardware_checks_them() {
        // The crs guest's sequence on QEMU's TCG: `mov cr4, r15` (41 0F 22
        // E7) read from guest memory, no NRIP save, no decode assists.
        let mut c = Vcpu::on(tcg(QEMU_TCG_EPYC));
        c.mem.put(0x10_0000, &[0x41, 0x0F, 0x22, 0xE7]);
        let cr4 = c.vmcb.save.cr4;
        // Reserved bit 15 and CR4.VMXE (reserved on AMD): #GP at the MOV,
        // CR4 unchanged, exactly as the CPU would (and not VMEXIT_INVALID,
        // which is what QEMU makes of them natively).
        for bit in [15, 13] {
            c.regs.r15 = cr4 | (1 << bit);
            assert_eq!(c.exit(0x14, 0, 0), Action::Inject(Event::GP0), "bit {bit}");
            assert_eq!(c.vmcb.save.cr4, cr4);
            assert_eq!(c.vmcb.save.rip, 0x10_0000);
            assert_eq!(
                c.vmcb.control.event_inj,
                EventInfo::new(13, EventType::Exception, Some(0))
            );
            assert_eq!(super::check::check_guest_state(&c.vmcb, &c.setup), Ok(()));
        }
        // PCIDE: guest-owned, but Zen 1 has no PCID: #GP too.
        c.regs.r15 = cr4 | hvcore::arch::CR4_PCIDE;
        assert_eq!(c.exit(0x14, 0, 0), Action::Inject(Event::GP0));
        // OSXSAVE and OSFXSR: written, RIP past the 4 bytes, no TLB flush.
        c.regs.r15 = cr4 | hvcore::arch::CR4_OSXSAVE | (1 << 9);
        assert_eq!(c.exit(0x14, 0, 0), Action::AdvanceRip);
        assert_eq!(c.vmcb.save.cr4, c.regs.r15);
        assert_eq!(c.vmcb.save.rip, 0x10_0004);
        assert_eq!(c.vmcb.tlb_control(), Some(svm::vmcb::TlbControl::DoNothing));
        assert_eq!(super::check::check_guest_state(&c.vmcb, &c.setup), Ok(()));
    }

    #[test]
    fn guest_vmrun_and_clgi_raise_ud() {
        let mut c = Vcpu::new();
        for code in [0x80, 0x85] {
            assert_eq!(c.exit(code, 0, 3), Action::Inject(Event::UD));
            assert_eq!(c.vmcb.control.event_inj, EventInfo::invalid_opcode());
            assert_eq!(c.vmcb.save.rip, 0x10_0000);
        }
    }

    #[test]
    fn reflected_alignment_check_and_a_stopped_escape() {
        let mut c = Vcpu::new();
        assert_eq!(
            c.exit(0x40 + 17, 0, 0),
            Action::Inject(Event {
                vector: 17,
                ..Event::GP0
            })
        );
        assert_eq!(
            c.vmcb.control.event_inj,
            EventInfo::new(17, EventType::Exception, Some(0))
        );
        c.vmcb.control.exit_info2 = 0x8000_0000;
        let a = c.exit(0x400, 0b110, 0);
        assert!(
            matches!(
                a,
                Action::Stop(StopReason::MemoryViolation {
                    gpa: 0x8000_0000,
                    rip: 0x10_0000,
                    ..
                })
            ),
            "{a:?}"
        );
    }

    #[test]
    fn hlt_advances_and_halts() {
        let mut c = Vcpu::new();
        c.vmcb.control.interrupt_state = svm::vmcb::InterruptState::INTERRUPT_SHADOW;
        assert_eq!(c.exit(0x78, 0, 1), Action::Halt);
        assert_eq!(c.vmcb.save.rip, 0x10_0001);
        assert!(
            c.vmcb.control.interrupt_state.is_empty(),
            "STI; HLT: the shadow ends"
        );
    }

    #[test]
    fn qemu_tcg_skips_instructions_by_their_bytes() {
        let mut c = Vcpu::on(tcg(QEMU_TCG_EPYC));
        // 66 0F A2 (CPUID), 0F 01 D9 (VMMCALL), 2E 0F 32 (RDMSR), F4 (HLT)
        // in a row at the entry point, through the boot page tables.
        c.mem.put(
            0x10_0000,
            &[0x66, 0x0F, 0xA2, 0x0F, 0x01, 0xD9, 0x2E, 0x0F, 0x32, 0xF4],
        );
        c.vmcb.save.rax = 0;
        assert_eq!(c.exit(0x72, 0, 0), Action::AdvanceRip);
        assert_eq!(c.vmcb.save.rip, 0x10_0003);
        c.vmcb.save.rax = 0x1234; // an unknown hypercall fails, and skips
        let a = c.exit(0x81, 0, 0);
        assert!(matches!(a, Action::AdvanceRip), "{a:?}");
        assert_eq!(c.vmcb.save.rip, 0x10_0006);
        c.regs.rcx = u64::from(IA32_EFER);
        assert_eq!(c.exit(0x7C, 0, 0), Action::AdvanceRip);
        assert_eq!((c.vmcb.save.rip, c.regs.rax), (0x10_0009, 0xd00));
        assert_eq!(c.exit(0x78, 0, 0), Action::Halt);
        assert_eq!(c.vmcb.save.rip, 0x10_000A);
    }

    #[test]
    fn qemu_tcg_stops_a_vm_whose_code_changed() {
        let mut c = Vcpu::on(tcg(QEMU_TCG_EPYC));
        // The exit says CPUID; memory holds a NOP (the guest rewrote it).
        c.mem.put(0x10_0000, &[0x90]);
        let reason = StopReason::InstructionNotDecoded {
            instruction: "CPUID",
            why: "the bytes at RIP do not encode it",
            linear: 0x10_0000,
            rip: 0x10_0000,
        };
        assert_eq!(c.exit(0x72, 0, 0), Action::Stop(reason));
        assert_eq!(c.vmcb.save.rip, 0x10_0000, "nothing skipped");
        assert_eq!(c.vm.stop_reason(), Some(&reason));
        // Any later exit finds the VM stopped.
        c.mem.put(0x10_0000, &[0x0F, 0xA2]);
        assert_eq!(c.exit(0x72, 0, 0), Action::Stop(reason));
    }
}
