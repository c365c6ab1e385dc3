//! The hypercall ABI between this hypervisor and its guests: one definition
//! shared by the hypervisor's policy crate (`hvcore::hypercall` implements
//! it), the guest programs (`kernel/guests`) and the integration tests, so a
//! number or a key can change in one place only.
//!
//! # Calling convention
//!
//! A guest issues `VMCALL` (Intel) or `VMMCALL` (AMD) with:
//!
//! | register | meaning |
//! |----------|---------|
//! | RAX | hypercall number ([`nr`]) in; status ([`status`]) out |
//! | RBX, RCX, RDX, RSI | arguments 1-4 (in) |
//! | RBX | extra result (out, where listed) |
//!
//! Registers not listed are preserved. Hypercalls are not restricted to guest
//! CPL 0: every request only affects the calling VM.
//!
//! | nr | name | arguments | result |
//! |----|------|-----------|--------|
//! | 0 | [`nr::VERSION`] | — | RBX = [`INTERFACE_VERSION`] |
//! | 1 | [`nr::CONSOLE_WRITE`] | RBX = guest-physical address, RCX = length (≤ [`CONSOLE_WRITE_MAX`]) | — |
//! | 2 | [`nr::YIELD`] | — | — (gives up the rest of the time slice) |
//! | 3 | [`nr::VM_ID`] | — | RBX = VM id |
//! | 4 | [`nr::SHUTDOWN`] | RBX = exit code | — (the VM stops) |
//! | 5 | [`nr::REPORT`] | RBX = key ([`key`]), RCX = value | — (host prints `report KEY=VALUE`) |
//!
//! # Discovery
//!
//! CPUID leaf [`cpuid::SIGNATURE_LEAF`] returns the highest hypervisor leaf in
//! EAX and [`cpuid::SIGNATURE`] in EBX:ECX:EDX; leaf [`cpuid::VERSION_LEAF`]
//! returns [`INTERFACE_VERSION`] in EAX.
#![no_std]
#![forbid(unsafe_code)]

/// Version of this interface (hypercall [`nr::VERSION`], CPUID leaf
/// [`cpuid::VERSION_LEAF`]).
pub const INTERFACE_VERSION: u32 = 1;

/// Largest [`nr::CONSOLE_WRITE`] length in bytes; longer requests return
/// [`status::EINVAL`].
pub const CONSOLE_WRITE_MAX: u64 = 4096;

/// Hypercall numbers (RAX).
pub mod nr {
    /// Interface version in RBX.
    pub const VERSION: u64 = 0;
    /// Write RCX bytes at guest-physical RBX to the VM's console.
    pub const CONSOLE_WRITE: u64 = 1;
    /// Give up the rest of this time slice.
    pub const YIELD: u64 = 2;
    /// This VM's id in RBX.
    pub const VM_ID: u64 = 3;
    /// Stop this VM with exit code RBX.
    pub const SHUTDOWN: u64 = 4;
    /// Report key RBX = value RCX (printed by the hypervisor).
    pub const REPORT: u64 = 5;
}

/// Status codes returned in RAX (two's complement `i64`).
pub mod status {
    /// Success.
    pub const OK: i64 = 0;
    /// Unknown hypercall number.
    pub const ENOSYS: i64 = -1;
    /// Invalid argument.
    pub const EINVAL: i64 = -2;
    /// Guest address outside the VM's memory.
    pub const EFAULT: i64 = -3;
}

/// The hypervisor's CPUID leaves.
pub mod cpuid {
    /// Highest hypervisor leaf in EAX, [`SIGNATURE`] in EBX:ECX:EDX.
    pub const SIGNATURE_LEAF: u32 = 0x4000_0000;
    /// [`INTERFACE_VERSION`](crate::INTERFACE_VERSION) in EAX.
    pub const VERSION_LEAF: u32 = 0x4000_0001;
    /// Highest hypervisor leaf with content.
    pub const MAX_LEAF: u32 = VERSION_LEAF;
    /// Last leaf of the hypervisor range (leaves up to here read as zeros).
    pub const RANGE_END: u32 = 0x4000_00FF;
    /// Vendor signature, EBX:ECX:EDX of [`SIGNATURE_LEAF`].
    pub const SIGNATURE: [u8; 12] = *b"RustBareHv\0\0";
}

/// Keys of [`nr::REPORT`] that guests send and the tests and benchmarks look
/// for (the host prints them in decimal: `vm NAME: report 49=0`).
pub mod key {
    /// Iterations of the counter loop.
    pub const COUNTER: u64 = 1;
    /// Number of failed checks a test guest found (0: everything passed).
    pub const FAILURES: u64 = 2;

    /// Benchmark: CPUID round trip, cycles (min, median in the next key).
    pub const BENCH_CPUID_MIN: u64 = 0x10;
    /// Benchmark: CPUID median.
    pub const BENCH_CPUID_MEDIAN: u64 = 0x11;
    /// Benchmark: VMCALL round trip, min.
    pub const BENCH_VMCALL_MIN: u64 = 0x12;
    /// Benchmark: VMCALL median.
    pub const BENCH_VMCALL_MEDIAN: u64 = 0x13;
    /// Benchmark: port I/O exit round trip, min.
    pub const BENCH_IO_MIN: u64 = 0x14;
    /// Benchmark: port I/O median.
    pub const BENCH_IO_MEDIAN: u64 = 0x15;
    /// Benchmark: the same loop without an exit, min.
    pub const BENCH_NOEXIT_MIN: u64 = 0x16;
    /// Benchmark: no-exit median.
    pub const BENCH_NOEXIT_MEDIAN: u64 = 0x17;
    /// Benchmark: world switch (yield to another VM and back), min.
    pub const BENCH_SWITCH_MIN: u64 = 0x18;
    /// Benchmark: world switch median.
    pub const BENCH_SWITCH_MEDIAN: u64 = 0x19;
    /// Benchmark loop (`xor eax,eax; xor ecx,ecx; <op>; dec esi; jnz`):
    /// ticks per iteration of the empty loop, in tenths.
    pub const BENCH_LOOP_EMPTY: u64 = 0x1A;
    /// Benchmark loop with CPUID (leaf 0), tenths of a tick per iteration,
    /// net of the empty loop.
    pub const BENCH_LOOP_CPUID: u64 = 0x1B;
    /// Benchmark loop with VMCALL (version), net tenths per iteration.
    pub const BENCH_LOOP_VMCALL: u64 = 0x1C;
    /// Benchmark loop with OUT to a port no device claims, net tenths.
    pub const BENCH_LOOP_OUT_UNCLAIMED: u64 = 0x1D;
    /// Benchmark loop with OUT to the UART's THR, net tenths.
    pub const BENCH_LOOP_OUT_UART: u64 = 0x1E;
    /// Benchmark loop with VMMCALL (AMD only), net tenths per iteration.
    pub const BENCH_LOOP_VMMCALL: u64 = 0x1F;

    /// `smpbench` (two vCPUs of one VM): ticks per IPI round trip (fixed
    /// IPI to the other vCPU, whose handler sends one back), the better of
    /// two runs of 200.
    pub const BENCH_IPI_ROUND_TRIP: u64 = 0x28;
    /// `smpbench`: LAPIC timer delivery in TSC-deadline mode, ticks from
    /// the deadline to the handler's first RDTSC, min over 50 rounds.
    pub const BENCH_TIMER_DELIVERY_MIN: u64 = 0x29;
    /// `smpbench`: LAPIC timer delivery, median.
    pub const BENCH_TIMER_DELIVERY_MEDIAN: u64 = 0x2A;

    /// `cpuid` guest: the APIC ID it read from CPUID leaf 1.
    pub const CPUID_APIC_ID: u64 = 0x20;

    /// `statekeeper`: yields completed.
    pub const STATE_SWITCHES: u64 = 0x30;
    /// `statekeeper`: XMM0-15 mismatches after a yield.
    pub const STATE_XMM: u64 = 0x31;
    /// `statekeeper`: YMM upper-half mismatches.
    pub const STATE_YMM: u64 = 0x32;
    /// `statekeeper`: x87 register stack mismatches.
    pub const STATE_X87: u64 = 0x33;
    /// `statekeeper`: FS base mismatches (RDMSR or an FS-relative load).
    pub const STATE_FSBASE: u64 = 0x34;
    /// `statekeeper`: GS base mismatches.
    pub const STATE_GSBASE: u64 = 0x35;
    /// `statekeeper`: IA32_KERNEL_GS_BASE mismatches (RDMSR or after SWAPGS).
    pub const STATE_KGSBASE: u64 = 0x36;
    /// `statekeeper`: IA32_LSTAR mismatches.
    pub const STATE_LSTAR: u64 = 0x37;
    /// `statekeeper`: CR2 mismatches.
    pub const STATE_CR2: u64 = 0x38;
    /// `statekeeper`: DR0-DR3 mismatches.
    pub const STATE_DR: u64 = 0x39;
    /// `statekeeper`: general-purpose register mismatches across the yield.
    pub const STATE_GPR: u64 = 0x3A;

    /// `syscall`: completed SYSCALL/SYSRET round trips.
    pub const SYSCALL_ROUND_TRIPS: u64 = 0x40;
    /// `stihlt`: completed rounds of STI/MOV SS followed by an exiting instruction.
    pub const STIHLT_ROUNDS: u64 = 0x41;
    /// `stihlt`: interrupts the guest received (no source exists yet: 0).
    pub const STIHLT_INTERRUPTS: u64 = 0x42;
    /// `cr8`: CR8 (TPR) read back after running several slices.
    pub const CR8_TPR: u64 = 0x43;
}
