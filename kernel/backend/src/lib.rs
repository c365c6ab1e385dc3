//! The seam between a CPU's virtualization extension and the hypervisor's
//! policy: everything a backend does that is not a privileged instruction.
//!
//! ```text
//!   kernel (asm world switch, VMXON, frames)        hvcore (policy, no unsafe)
//!        │                                               ▲
//!        ▼                                               │ Exit / Action / GuestCpu
//!   backend::vtx  ── programs the VMCS, decodes exits, ──┘
//!        │           implements GuestCpu over the VMCS
//!        ▼
//!   vmx (VMCS field types, capability MSRs, decoders)
//! ```
//!
//! Each backend module works on its control block through a trait
//! ([`vmx::VmcsAccess`] for VT-x), so host tests drive it with a fake
//! ([`vmx::FakeVmcs`]) and check the exact fields written. The kernel keeps
//! only what needs the hardware: the world switch, VMXON, allocating the
//! VMCS and the pages it points to, and switching the lazily-held registers
//! (XSAVE state, CR2, debug registers, SYSCALL MSRs) between vCPUs.
//!
//! [`svm`] is the AMD-V twin over [`::svm::vmcb::Vmcb`], a plain struct that
//! host tests stage exits in directly; its module docs state what the
//! kernel's VMRUN world switch must do.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
extern crate alloc;

pub mod svm;
#[cfg(test)]
mod testlazy;
pub mod vtx;
