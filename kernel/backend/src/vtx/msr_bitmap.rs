//! The MSR bitmap (SDM 25.6.9): one 4 KiB page, a bit per MSR for reads
//! (bytes 0-0x3FF: MSRs 0-0x1FFF; 0x400-0x7FF: 0xC000_0000-0xC000_1FFF) and
//! writes (0x800-0xBFF, 0xC00-0xFFF). A set bit makes the access exit.
//!
//! Everything exits except the MSRs whose guest values VMX loads and saves
//! (FS/GS base, SYSENTER, PAT: the VMCS guest-state area) and KERNEL_GS_BASE,
//! which the kernel switches with the vCPU (SWAPGS changes it without an
//! exit anyway). EFER, DEBUGCTL and the other MSRs the kernel switches with
//! the vCPU (STAR, LSTAR, CSTAR, FMASK, TSC_AUX) are readable natively;
//! their writes exit, are checked by policy (`hvcore::msr_policy`) and kept
//! in the vCPU's record, so that switching vCPUs reads none of them back.

use hvcore::msr_policy::*;

/// MSRs a guest reads and writes without an exit.
pub const PASSTHROUGH: [u32; 7] = [
    IA32_SYSENTER_CS,
    IA32_SYSENTER_ESP,
    IA32_SYSENTER_EIP,
    IA32_PAT,
    IA32_FS_BASE,
    IA32_GS_BASE,
    IA32_KERNEL_GS_BASE,
];

/// MSRs a guest reads without an exit; writes exit.
pub const READ_ONLY_PASSTHROUGH: [u32; 7] = [
    IA32_EFER,
    IA32_DEBUGCTL,
    IA32_STAR,
    IA32_LSTAR,
    IA32_CSTAR,
    IA32_FMASK,
    IA32_TSC_AUX,
];

/// Byte offset and bit of `msr`'s read bit, if the bitmap covers it.
fn read_bit(msr: u32) -> Option<(usize, u8)> {
    let (base, index) = match msr {
        0..=0x1FFF => (0, msr),
        0xC000_0000..=0xC000_1FFF => (0x400, msr - 0xC000_0000),
        _ => return None,
    };
    Some((base + (index / 8) as usize, (index % 8) as u8))
}

/// Fills `page` so that only [`PASSTHROUGH`] (and reads of
/// [`READ_ONLY_PASSTHROUGH`]) skip the exit. `rdtscp` says whether the guest
/// may use TSC_AUX at all (else it exits and policy refuses it).
pub fn build(page: &mut [u8; 4096], rdtscp: bool) {
    page.fill(0xFF);
    let mut clear = |msr: u32, write: bool| {
        if let Some((byte, bit)) = read_bit(msr) {
            page[byte + if write { 0x800 } else { 0 }] &= !(1 << bit);
        }
    };
    for msr in PASSTHROUGH {
        clear(msr, false);
        clear(msr, true);
    }
    for msr in READ_ONLY_PASSTHROUGH {
        if msr == IA32_TSC_AUX && !rdtscp {
            continue;
        }
        clear(msr, false);
    }
}

/// Whether an access to `msr` exits under `page` (MSRs outside both ranges
/// always exit, SDM 25.6.9).
pub fn exits(page: &[u8; 4096], msr: u32, write: bool) -> bool {
    match read_bit(msr) {
        Some((byte, bit)) => page[byte + if write { 0x800 } else { 0 }] & (1 << bit) != 0,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_positions_follow_the_sdm() {
        let mut page = [0u8; 4096];
        build(&mut page, true);
        // LSTAR = 0xC000_0082: high read range at 0x400, byte 0x10, bit 2;
        // its write bit 0x800 further on, set.
        assert_eq!(page[0x410] & (1 << 2), 0);
        assert_ne!(page[0xC10] & (1 << 2), 0);
        // KERNEL_GS_BASE = 0xC000_0102: byte 0x20, bit 2, both ways clear.
        assert_eq!(page[0x420] & (1 << 2), 0);
        assert_eq!(page[0xC20] & (1 << 2), 0);
        // SYSENTER_CS = 0x174: low read range, byte 0x2E, bit 4.
        assert_eq!(page[0x2E] & (1 << 4), 0);
        // EFER and the SYSCALL MSRs readable, writes exit.
        for msr in READ_ONLY_PASSTHROUGH {
            assert!(!exits(&page, msr, false), "{msr:#x}");
            assert!(exits(&page, msr, true), "{msr:#x}");
        }
        // Everything else exits, in range or not.
        for msr in [0x10, 0x1B, 0x277 + 1, 0xC000_0085, 0xC001_0114, 0x4000_0000] {
            assert!(
                exits(&page, msr, false) && exits(&page, msr, true),
                "{msr:#x}"
            );
        }
        let passing = (0..0x2000u32)
            .chain(0xC000_0000..0xC000_2000)
            .filter(|&m| !exits(&page, m, true))
            .count();
        assert_eq!(passing, PASSTHROUGH.len());
    }

    #[test]
    fn tsc_aux_exits_without_rdtscp() {
        let mut page = [0u8; 4096];
        build(&mut page, false);
        assert!(exits(&page, IA32_TSC_AUX, false));
        assert!(exits(&page, IA32_TSC_AUX, true));
    }
}
