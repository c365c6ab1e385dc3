//! Intel VT-x support (Intel SDM Vol. 3C, chapters 24-29 and 31, Appendices A-C):
//! VMCS fields, VMX instructions, capability MSRs, EPT and VM-exit decoding.
//!
//! # Design rules
//!
//! 1. **`unsafe` lives in three places, and the compiler holds the line.** The
//!    crate is `#![deny(unsafe_code)]`; the exceptions are marked
//!    `#[allow(unsafe_code)]` with a reason:
//!    - [`instructions`]: the VMX instruction wrappers (`vmxon`, `vmptrld`,
//!      `vmread`, `invept`, ...), each an `unsafe fn` with a `# Safety`
//!      section, each `asm!` block with a `// SAFETY:` comment;
//!    - [`vmcs::ActiveVmcs`]: its constructors are `unsafe` (they assert "this
//!      CPU is in VMX root operation"); once built, reads and writes are safe;
//!    - [`ept::TableMemory`]: an `unsafe trait` whose implementation (in the
//!      kernel) promises that table frames are what the CPU walks.
//!
//!    Everything else (capability decoding, control words, EPT building,
//!    exit decoding) is safe code.
//! 2. **VMX failures are typed.** Every instruction returns
//!    `Result<_, `[`VmFail`]`>`, with CF and ZF read in the same `asm!` block as
//!    the instruction; VMfailValid carries the decoded [`InstructionError`]. A
//!    failed `vmread` is an error, never a zero. The one exception is by
//!    construction: [`VmcsAccess::read_known`] and `write_known` access
//!    fields every VMX processor has on the VMCS an [`ActiveVmcs`] proves
//!    current, where VMREAD and VMWRITE cannot fail (SDM 31.3); the exit
//!    path uses them without a `Result` (debug builds and [`FakeVmcs`] check).
//! 3. **VMCS fields are typed by width and access** (SDM Appendix B): a 16-bit
//!    field takes a `u16`, and read-only exit-information fields cannot be
//!    written. Encodings are checked against their types at compile time:
//!
//!    ```
//!    use vmx::vmcs::{VmcsAccess, FakeVmcs, EXIT_REASON, GUEST_RIP};
//!    let mut v = FakeVmcs::new();
//!    v.set(GUEST_RIP, 0x7c00).unwrap();
//!    v.preset(EXIT_REASON, 12).unwrap(); // tests stage exits with `preset`
//!    assert_eq!(v.get(EXIT_REASON), Ok(12));
//!    ```
//!
//!    ```compile_fail
//!    use vmx::vmcs::{VmcsAccess, FakeVmcs, EXIT_REASON};
//!    let mut v = FakeVmcs::new();
//!    v.set(EXIT_REASON, 0).unwrap(); // read-only: no `set`
//!    ```
//! 4. **Control words come from the capability MSRs.** [`caps::adjust`] sets
//!    the bits the CPU requires and names any wanted bit it cannot set.
//! 5. **Guest and host addresses never mix:** [`GuestPhysAddr`] and
//!    [`HostPhysAddr`] have no arithmetic operators and no conversions.
//! 6. **Host-testable core.** The crate is `no_std` and runs its tests on the
//!    host: policy code talks to a VMCS through [`VmcsAccess`], which
//!    [`FakeVmcs`] implements; [`ept::Ept`] reaches memory through
//!    [`ept::TableMemory`], which tests implement with a vector. Only the
//!    `asm!` in [`instructions`] and [`vmcs::ActiveVmcs`] need hardware; they
//!    compile for any `x86_64` target (so host builds type-check them) and
//!    must only run in VMX root operation, which their `unsafe` contracts say.
//! 7. **No panics on exit paths.** Decoders are total: undefined values become
//!    `Unknown`/`None`. The only `assert!`s run at compile time, checking the
//!    VMCS field table.
//!
//! VMLAUNCH/VMRESUME are deliberately absent: the kernel's world switch saves
//! guest registers in its own `asm!`, then uses
//! [`instructions::check_vm_entry_flags`] and [`VmFailKind::resolve`] after a
//! failed entry. The kernel's VM entry is where the obligation "host-state and
//! address fields of the VMCS are valid" is discharged, which is why writing a
//! VMCS field is safe here.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod caps;
pub mod ept;
pub mod exit;
pub mod instructions;
pub mod msr;
pub mod vmcs;

pub use addr::{GuestPhysAddr, HostPhysAddr, PageSize};
pub use caps::{
    adjust, Allowed, ControlWord, EntryControls, EptVpidCap, ExitControls, MissingControl,
    PinBasedControls, PrimaryControls, SecondaryControls, VmxCapabilities,
};
pub use ept::{
    Ept, EptEntry, EptError, EptFlags, EptPermissions, Eptp, FrameSource, MemoryType, TableMemory,
    Translation,
};
pub use exit::{
    CrAccessQualification, EntryFailure, EptViolationQualification, EventInjection, ExitInfo,
    ExitReason, InterruptionInfo, IoQualification, RawExitReason,
};
pub use instructions::{check_vm_entry_flags, InstructionError, VmFail, VmFailKind};
pub use msr::FeatureControlAction;
#[cfg(target_arch = "x86_64")]
pub use vmcs::ActiveVmcs;
pub use vmcs::{FakeVmcs, VmcsAccess};
