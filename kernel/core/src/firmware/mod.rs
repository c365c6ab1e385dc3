//! Firmware data the hypervisor hands to guests in place of a BIOS or UEFI:
//! tables that describe the virtual machine.
//!
//! - [`acpi`]: per-VM ACPI tables (RSDP, RSDT/XSDT, FADT, MADT, DSDT) built
//!   from the VM's configuration, for the guest to find by the legacy RSDP
//!   scan or through the Linux boot protocol.

pub mod acpi;
