//! Drivers for the physical machine the hypervisor runs on.
//!
//! What lives here is mechanism, not policy: how to talk to the serial port, draw text
//! on the boot framebuffer, read the ACPI tables, program the local APIC, measure time
//! and power off. Which CPU to start, which vector to use, what to log: the kernel
//! decides.
//!
//! Design rules:
//! - `unsafe` stays in the lowest layer ([`io`] for port I/O and MMIO, the few
//!   privileged instructions in [`apic`] and [`timer`], the ACPI mapping handler). Each
//!   block is minimal and carries a `// SAFETY:` comment; constructors that take a
//!   promise from the caller (an MMIO address, ownership of a port) are `unsafe fn` with
//!   a `# Safety` section, so the methods of the value they return can be safe.
//! - Everything that does not touch hardware (glyph rendering, ACPI summaries, ICR
//!   encoding, calibration arithmetic) is plain code tested on the host with
//!   `cargo test -p drivers`. Hardware paths sit behind small traits ([`apic::ApicRegs`],
//!   [`timer::ReferenceClock`], [`timer::Counters`]) with fakes in the tests.
//! - Instructions that only make sense on the bare machine (`cli`, `rdmsr`, port I/O)
//!   are only executed from code the host tests never call.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

#[allow(unsafe_code)] // The mapping handler turns table addresses into references.
pub mod acpi;
#[allow(unsafe_code)] // xAPIC MMIO, x2APIC MSRs.
pub mod apic;
pub mod framebuffer;
#[allow(unsafe_code)] // Port I/O and volatile MMIO: the lowest layer.
pub mod io;
#[allow(unsafe_code)] // 8259 initialisation words (port I/O on the caller's promise).
pub mod pic;
#[allow(unsafe_code)] // isa-debug-exit port write.
pub mod qemu_exit;
#[allow(unsafe_code)] // COM port construction (port ownership) and the global port lock.
pub mod serial;
#[allow(unsafe_code)] // RDTSC, PIT and PM-timer ports.
pub mod timer;
