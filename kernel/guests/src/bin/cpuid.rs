//! Shows what CPUID looks like from inside a VM.
#![no_std]
#![no_main]

use guests::{cpuid, key, println};
use hvabi::cpuid::{SIGNATURE_LEAF, VERSION_LEAF};

guests::entry!(main);

fn main() {
    let l1 = cpuid(1, 0);
    let vmx = (l1.ecx >> 5) & 1;
    let hv = (l1.ecx >> 31) & 1;
    let apic_id = l1.ebx >> 24;
    println!("cpuid.1: vmx={vmx} hypervisor={hv} apic_id={apic_id}");
    let h = cpuid(SIGNATURE_LEAF, 0);
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&h.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&h.ecx.to_le_bytes());
    sig[8..12].copy_from_slice(&h.edx.to_le_bytes());
    let sig = core::str::from_utf8(&sig)
        .unwrap_or("?")
        .trim_end_matches('\0');
    println!("cpuid.40000000: max_leaf={:#x} signature=\"{sig}\"", h.eax);
    let v = cpuid(VERSION_LEAF, 0);
    println!("cpuid.40000001: interface_version={}", v.eax);
    guests::report(key::CPUID_APIC_ID, apic_id as u64);
}
