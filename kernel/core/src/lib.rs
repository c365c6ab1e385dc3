//! Hypervisor policy, independent of the hardware: everything above the VT-x
//! layer, in plain Rust without `unsafe`, tested on the host with `cargo test`.
//!
//! - Configuration: [`config`] (VM descriptions and their validation, shared by
//!   the host tool and the kernel) and [`package`] (the binary boot package).
//! - Memory: [`frames`] (physical frame allocation), [`image`] (where a
//!   guest image's bytes go) and [`guest_paging`] (guest-linear addresses
//!   through the guest's page tables).
//! - VM exits: [`exit`] (backend-neutral exits in, actions out) with
//!   [`cpuid`], [`msr_policy`], [`hypercall`] and the device models in
//!   [`devices`]; [`vcpu`] (run states, stop reasons) and [`stats`].
//! - Firmware: [`firmware`] (the ACPI tables a VM's guest finds).
//! - Scheduling: [`sched`] (one round robin per CPU).
//! - Output: [`text`] (names and guest text shown escaped on terminals).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
extern crate alloc;

pub mod arch;
pub mod boot_proto;
pub mod config;
pub mod control;
pub mod cpuid;
pub mod devices;
pub mod exit;
pub mod firmware;
pub mod frames;
pub mod guest_paging;
pub mod hypercall;
pub mod image;
pub mod layout;
pub mod msr_policy;
pub mod package;
pub mod sched;
pub mod stats;
pub mod text;
pub mod vcpu;

/// Prefix of the kernel's last serial line, `HV-EXIT <code as 0x..> <name>`:
/// how test harnesses learn the result under emulators without an exit device.
pub const EXIT_MARKER: &str = "HV-EXIT ";

/// How a kernel run ended. The value is written to QEMU's `isa-debug-exit`
/// port (QEMU then exits with `value << 1 | 1`) and printed after [`EXIT_MARKER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum KernelExit {
    /// Everything requested ran and passed (VMs may still have failed: their
    /// reports say so; this is about the hypervisor).
    Success = 0x10,
    /// A requested check failed (an in-kernel test case, a benchmark).
    Failure = 0x11,
    /// The hypervisor panicked: a broken invariant, reported on the consoles.
    Panic = 0x12,
    /// An unexpected CPU exception in the hypervisor, reported on the consoles.
    CpuException = 0x13,
    /// The boot package (ramdisk) was missing or invalid.
    BadPackage = 0x14,
}

impl KernelExit {
    /// Every code, for lookups.
    pub const ALL: [KernelExit; 5] = [
        Self::Success,
        Self::Failure,
        Self::Panic,
        Self::CpuException,
        Self::BadPackage,
    ];

    /// The enum for a raw code, if it is one of ours.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u32 == code)
    }

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Panic => "panic",
            Self::CpuException => "cpu-exception",
            Self::BadPackage => "bad-package",
        }
    }
}
