//! CPU-level pieces of the host: descriptor tables, exceptions, CPUID, TSC.

pub mod gdt;
pub mod idt;

use core::arch::x86_64::CpuidResult;

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; CR4.TSD is clear in ring 0 anyway.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Executes CPUID for `leaf`/`subleaf` on this CPU.
#[allow(unused_unsafe)]
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    // SAFETY: CPUID exists on every x86_64 CPU and only reads CPU information.
    unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) }
}

/// Vendor, family/model/stepping and brand string of this CPU.
pub struct CpuDescription {
    /// e.g. "GenuineIntel".
    pub vendor: [u8; 12],
    /// Display family (SDM Vol. 2A CPUID leaf 1, EAX).
    pub family: u32,
    /// Display model.
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
    /// Brand string (leaves 0x80000002-4), if present.
    pub brand: [u8; 48],
}

impl CpuDescription {
    /// Reads this CPU's description.
    pub fn read() -> Self {
        let v = cpuid(0, 0);
        let mut vendor = [0u8; 12];
        vendor[0..4].copy_from_slice(&v.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&v.edx.to_le_bytes());
        vendor[8..12].copy_from_slice(&v.ecx.to_le_bytes());
        let sig = cpuid(1, 0).eax;
        let base_family = (sig >> 8) & 0xf;
        let base_model = (sig >> 4) & 0xf;
        // SDM Vol. 2A, CPUID.01H:EAX: extended family/model apply to families 6 and 15.
        let family = if base_family == 0xf {
            base_family + ((sig >> 20) & 0xff)
        } else {
            base_family
        };
        let model = if base_family == 0x6 || base_family == 0xf {
            base_model | (((sig >> 16) & 0xf) << 4)
        } else {
            base_model
        };
        let mut brand = [0u8; 48];
        if cpuid(0x8000_0000, 0).eax >= 0x8000_0004 {
            for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
                let r = cpuid(leaf, 0);
                for (j, reg) in [r.eax, r.ebx, r.ecx, r.edx].into_iter().enumerate() {
                    brand[i * 16 + j * 4..i * 16 + j * 4 + 4].copy_from_slice(&reg.to_le_bytes());
                }
            }
        }
        CpuDescription {
            vendor,
            family,
            model,
            stepping: sig & 0xf,
            brand,
        }
    }

    /// Vendor as text.
    pub fn vendor_str(&self) -> &str {
        core::str::from_utf8(&self.vendor).unwrap_or("?")
    }

    /// Brand string as text, trimmed.
    pub fn brand_str(&self) -> &str {
        let end = self
            .brand
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.brand.len());
        core::str::from_utf8(&self.brand[..end])
            .unwrap_or("?")
            .trim()
    }
}
