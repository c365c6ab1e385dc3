//! AMD-V, the AMD secure virtual machine architecture (AMD64 Architecture
//! Programmer's Manual Vol. 2, chapter 15 "Secure Virtual Machine",
//! Appendix B "Layout of VMCB", Appendix C "SVM Intercept Exit Codes"):
//! the VMCB, intercepts, #VMEXIT decoding, nested page tables, the I/O and
//! MSR permission maps, capability decoding and the SVM instructions.
//!
//! It is the AMD counterpart of the `vmx` crate, with the same standards;
//! the kernel's SVM vCPU turns its decoded exits into the same
//! backend-neutral `hvcore::exit::Exit`s. "APM" below means AMD publication
//! 24593 (Vol. 2) unless a volume is named.
//!
//! # Design rules
//!
//! 1. **`unsafe` lives in two places, and the compiler holds the line.** The
//!    crate is `#![deny(unsafe_code)]`; the exceptions are marked
//!    `#[allow(unsafe_code)]` with a reason:
//!    - [`instructions`]: VMRUN, VMLOAD, VMSAVE, STGI, CLGI, INVLPGA, each an
//!      `unsafe fn` with a `# Safety` section, each `asm!` block with a
//!      `// SAFETY:` comment;
//!    - [`npt::TableMemory`]: an `unsafe trait` whose implementation (in the
//!      kernel) promises that table frames are what the processor walks.
//!
//!    Everything else (VMCB layout, intercepts, exit decoding, nested-table
//!    building, permission maps, capabilities) is safe code.
//! 2. **The VMCB is the hardware structure, checked against the APM.**
//!    [`Vmcb`] is `#[repr(C, align(4096))]`, made only of integers and
//!    `#[repr(transparent)]` integer wrappers (any bit pattern the processor
//!    writes is valid), with explicit reserved space; each field's offset is
//!    asserted at compile time against [`vmcb::offset`], and a host test
//!    finds every field's bytes at the APM's offset:
//!
//!    ```
//!    use svm::vmcb::{offset, Vmcb};
//!    assert_eq!(core::mem::size_of::<Vmcb>(), 4096);
//!    assert_eq!(core::mem::offset_of!(Vmcb, save.rax), offset::RAX);
//!    assert_eq!(offset::RAX, 0x5F8);
//!    ```
//! 3. **Bits have names.** Intercept vectors, clean bits, event-injection
//!    fields, nested page-table entries, EXITINFO formats and CPUID feature
//!    bits are typed, one doc line per bit citing the APM.
//! 4. **Guest and host addresses never mix:** [`GuestPhysAddr`] and
//!    [`HostPhysAddr`] have no arithmetic operators and no conversions.
//! 5. **Host-testable core.** The crate is `no_std` and runs its tests on the
//!    host: exit decoding reads a plain [`Vmcb`]; [`npt::Npt`] reaches
//!    memory through [`npt::TableMemory`], which tests implement with a
//!    vector; capability checks are pure functions of CPUID and MSR values.
//!    Only [`instructions`] needs the hardware; its `asm!` compiles for any
//!    `x86_64` target and never runs in tests.
//! 6. **No panics on exit paths.** Decoders are total: undefined values
//!    become `Unknown`/`None`/[`Exit::Malformed`]; builders return typed
//!    errors. The only `assert!`s run at compile time, checking the layout.
//!
//! # A vCPU in outline
//!
//! ```
//! use svm::exit::{EventInfo, Exit, ExitInfo};
//! use svm::intercept::{InterceptVector3, InterceptVector4};
//! use svm::vmcb::{SegmentAttributes, SegmentRegister, Vmcb, PAT_RESET_VALUE};
//! use svm::HostPhysAddr;
//!
//! let mut vmcb = Vmcb::new();
//! let c = &mut vmcb.control;
//! c.intercept_vector3 = InterceptVector3::INTR
//!     | InterceptVector3::NMI
//!     | InterceptVector3::CPUID
//!     | InterceptVector3::HLT
//!     | InterceptVector3::IOIO_PROT
//!     | InterceptVector3::MSR_PROT
//!     | InterceptVector3::SHUTDOWN;
//! c.intercept_vector4 = InterceptVector4::VMRUN | InterceptVector4::VMMCALL;
//! c.guest_asid = 1;
//! vmcb.set_permission_maps(HostPhysAddr::new(0x20_0000), HostPhysAddr::new(0x20_3000));
//! vmcb.set_nested_paging(HostPhysAddr::new(0x30_0000)); // Npt::n_cr3()
//! let s = &mut vmcb.save;
//! s.efer = svm::caps::EFER_SVME; // VMRUN requires it in the guest's EFER
//! s.cr0 = 0x10; // real mode, ET
//! s.cs = SegmentRegister::new(0, SegmentAttributes::CODE16, 0xffff, 0);
//! s.ss = SegmentRegister::new(0, SegmentAttributes::DATA16, 0xffff, 0);
//! s.rip = 0x7c00;
//! s.rflags = 0x2;
//! s.g_pat = PAT_RESET_VALUE;
//! assert_eq!(vmcb.check_vmrun(), Ok(()));
//!
//! // ... the kernel's world switch runs the guest; say it executed CPUID:
//! vmcb.control.exit_code = 0x72;
//! vmcb.control.next_rip = 0x7c02;
//! let exit = ExitInfo::from_vmcb(&vmcb);
//! assert_eq!(exit.decode(), Exit::Cpuid);
//! // Handle it, then skip the instruction through nRIP:
//! vmcb.save.rip = exit.next_rip;
//! // Or inject #UD instead:
//! vmcb.inject_event(EventInfo::invalid_opcode());
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod caps;
pub mod exit;
pub mod instructions;
pub mod intercept;
pub mod npt;
pub mod perm;
pub mod vmcb;

pub use addr::{GuestPhysAddr, HostPhysAddr, PageSize};
pub use caps::{check, probe, SvmCapabilities, SvmError, SvmFeatures, VmCr};
pub use exit::{
    CrAccessInfo, EventInfo, EventType, Exception, Exit, ExitCode, ExitInfo, Gpr, IoExitInfo,
    MsrAccess, NpfErrorCode,
};
pub use intercept::{
    CrIntercepts, DrIntercepts, ExceptionIntercepts, InterceptVector3, InterceptVector4,
    InterceptVector5,
};
pub use npt::{CacheType, FrameSource, Npt, NptEntry, NptError, NptPermissions, TableMemory};
pub use perm::{IoPermissionMap, MsrOutsideMap, MsrPermissionMap, IOPM_SIZE, MSRPM_SIZE};
pub use vmcb::{
    CleanBits, ControlArea, InvalidState, SegmentAttributes, SegmentRegister, StateSaveArea,
    TlbControl, VIntr, Vmcb,
};
