//! CPUID policy: what a guest sees, derived from the host's values.
//!
//! Handled for [`Exit::Cpuid`](crate::exit::Exit::Cpuid): leaf from EAX, subleaf
//! from ECX, results in EAX/EBX/ECX/EDX (upper halves cleared, as hardware
//! does), then [`Action::AdvanceRip`].
//!
//! | leaf | policy |
//! |------|--------|
//! | 0 .. host max basic | host values, filtered as below |
//! | 1 | ECX: clear DTES64(2), MONITOR(3), DS-CPL(4), VMX(5), SMX(6), EST(7), TM2(8), PDCM(15), x2APIC(21), TSC-deadline(24), XSAVE(26), OSXSAVE(27), AVX(28); set hypervisor(31). EDX: clear MCE(7), APIC(9), MCA(14), DS(21), ACPI(22), TM(29), PBE(31). EBX bits 31:24 = APIC ID of the physical CPU |
//! | 5, 6, 0xA, 0xD | zeros (MONITOR/MWAIT, thermal/power, PMU, XSAVE state: not virtualized) |
//! | 7.0 | EBX: clear SGX(2), AVX2(5), AVX-512 (16,17,21,26,27,28,30,31) unless XCR0 allows them; ECX: clear PKU(3), OSPKE(4), WAITPKG(5), CET_SS(7), LA57(16), SGX-LC(30); EDX: clear CET_IBT(20) |
//! | 0xB, 0x1F | host topology, EDX = APIC ID of the physical CPU |
//! | above host max basic (< 0x4000_0000) | zeros |
//! | 0x4000_0000 | EAX = [`HV_MAX_LEAF`], EBX:ECX:EDX = [`HV_SIGNATURE`] |
//! | 0x4000_0001 | EAX = [`HYPERCALL_VERSION`](crate::hypercall::HYPERCALL_VERSION) |
//! | 0x4000_0002 ..= 0x4000_00FF | zeros |
//! | 0x8000_0000 .. host max extended | host values; 0x8000_0001 ECX: clear SVM(2); 0x8000_000A (SVM features) zeros |
//! | anything else | zeros |
//!
//! Why these bits: the guest must not see VMX/SMX/SVM (no nested
//! virtualization); MONITOR/MWAIT, the x2APIC, the TSC deadline timer,
//! thermal/debug-store/perf features and machine-check architecture would need
//! MSRs or exits this hypervisor does not handle (see [`crate::msr_policy`]);
//! XSAVE (and the AVX family that depends on it) needs XSETBV exits and XCR0
//! switching, which are not handled yet. A guest that respects CPUID therefore
//! never executes an instruction that would stop it.

use crate::arch::{Action, GuestRegs, Platform, Reg};

/// First hypervisor leaf.
pub const HV_BASE_LEAF: u32 = 0x4000_0000;
/// Highest hypervisor leaf with content.
pub const HV_MAX_LEAF: u32 = 0x4000_0001;
/// Last leaf of the hypervisor range.
pub const HV_RANGE_END: u32 = 0x4000_00FF;
/// Vendor signature returned in EBX, ECX, EDX of leaf 0x4000_0000.
pub const HV_SIGNATURE: [u8; 12] = *b"RustBareHv\0\0";

const EXT_BASE_LEAF: u32 = 0x8000_0000;

const LEAF1_ECX_CLEAR: u32 = (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 15)
    | (1 << 21)
    | (1 << 24)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28);
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_CLEAR: u32 = (1 << 7) | (1 << 9) | (1 << 14) | (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31);
const LEAF7_EBX_CLEAR: u32 = (1 << 2)
    | (1 << 5)
    | (1 << 16)
    | (1 << 17)
    | (1 << 21)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 30)
    | (1 << 31);
/// CPUID.(7,0):ECX cleared: PKU(3), OSPKE(4), WAITPKG(5), CET_SS(7),
/// LA57(16), SGX-LC(30): their CR4 bits (PKE, CET, LA57) are not guest-owned,
/// so setting them raises #GP (see `exit::cr::CR4_GUEST_OWNED`).
const LEAF7_ECX_CLEAR: u32 = (1 << 3) | (1 << 4) | (1 << 5) | (1 << 7) | (1 << 16) | (1 << 30);
/// CPUID.(7,0):EDX cleared: CET_IBT(20).
const LEAF7_EDX_CLEAR: u32 = 1 << 20;
const EXT1_ECX_SVM: u32 = 1 << 2;
/// CPUID Fn8000_000A: SVM revision and features (APM Vol. 3, E.4.9).
const EXT_SVM_LEAF: u32 = 0x8000_000A;

/// The guest's view of CPUID(`leaf`, `subleaf`) as `[eax, ebx, ecx, edx]`.
pub fn guest_cpuid(leaf: u32, subleaf: u32, env: &dyn Platform) -> [u32; 4] {
    match leaf {
        HV_BASE_LEAF => {
            let sig = |i: usize| {
                let mut b = [0u8; 4];
                b.copy_from_slice(HV_SIGNATURE.get(i..i + 4).unwrap_or(&[0; 4]));
                u32::from_le_bytes(b)
            };
            [HV_MAX_LEAF, sig(0), sig(4), sig(8)]
        }
        0x4000_0001 => [crate::hypercall::HYPERCALL_VERSION, 0, 0, 0],
        0x4000_0002..=HV_RANGE_END => [0; 4],
        EXT_BASE_LEAF.. => {
            let max_ext = env.host_cpuid(EXT_BASE_LEAF, 0)[0];
            if leaf > max_ext {
                return [0; 4];
            }
            // SVM's own leaf describes a feature the guest does not have.
            if leaf == EXT_SVM_LEAF {
                return [0; 4];
            }
            let mut r = env.host_cpuid(leaf, subleaf);
            if leaf == 0x8000_0001 {
                r[2] &= !EXT1_ECX_SVM;
            }
            r
        }
        0..HV_BASE_LEAF => {
            let max_basic = env.host_cpuid(0, 0)[0];
            if leaf > max_basic {
                return [0; 4];
            }
            basic_leaf(
                leaf,
                env.host_cpuid(leaf, subleaf),
                subleaf,
                env.cpu_apic_id(),
            )
        }
        _ => [0; 4],
    }
}

fn basic_leaf(leaf: u32, host: [u32; 4], subleaf: u32, apic_id: u32) -> [u32; 4] {
    let [eax, ebx, ecx, edx] = host;
    match leaf {
        1 => [
            eax,
            (ebx & 0x00FF_FFFF) | ((apic_id & 0xFF) << 24),
            (ecx & !LEAF1_ECX_CLEAR) | LEAF1_ECX_HYPERVISOR,
            edx & !LEAF1_EDX_CLEAR,
        ],
        5 | 6 | 0xA | 0xD => [0; 4],
        7 if subleaf == 0 => [eax, ebx & !LEAF7_EBX_CLEAR, ecx & !LEAF7_ECX_CLEAR, edx & !LEAF7_EDX_CLEAR],
        0xB | 0x1F => [eax, ebx, ecx, apic_id],
        _ => host,
    }
}

/// CPUID.1:ECX XSAVE, OSXSAVE and AVX (SDM Vol. 2A Table 3-10).
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
const LEAF1_ECX_AVX: u32 = 1 << 28;
/// CPUID.(7,0):EBX AVX2 and the AVX-512 family.
const LEAF7_EBX_AVX2: u32 = 1 << 5;
const LEAF7_EBX_AVX512: u32 = (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31);
/// CPUID.(0xD,1):EAX XSAVES (needs IA32_XSS, not offered).
const LEAF_D1_EAX_XSAVES: u32 = 1 << 3;

/// Adds the XSAVE family back to a guest's CPUID when the hypervisor switches
/// XCR0 for it: XSAVE and AVX per the XCR0 bits the guest may set
/// (`xcr0_allowed`), OSXSAVE mirroring the guest's own CR4.OSXSAVE, and leaf
/// 0xD limited to those components.
pub fn xsave_view(leaf: u32, subleaf: u32, r: &mut [u32; 4], host: [u32; 4], xcr0_allowed: u64, osxsave: bool) {
    use crate::arch::{XCR0_AVX, XCR0_AVX512};
    if xcr0_allowed == 0 {
        return;
    }
    match leaf {
        1 => {
            r[2] |= LEAF1_ECX_XSAVE;
            if osxsave {
                r[2] |= LEAF1_ECX_OSXSAVE;
            }
            if xcr0_allowed & XCR0_AVX != 0 {
                r[2] |= host[2] & LEAF1_ECX_AVX;
            }
        }
        7 if subleaf == 0 => {
            if xcr0_allowed & XCR0_AVX != 0 {
                r[1] |= host[1] & LEAF7_EBX_AVX2;
            }
            if xcr0_allowed & XCR0_AVX512 == XCR0_AVX512 {
                r[1] |= host[1] & LEAF7_EBX_AVX512;
            }
        }
        0xD => {
            *r = match subleaf {
                // EBX (size for the XCR0 now loaded, which is this guest's)
                // and ECX (size for everything allowed) come from the host.
                0 => [xcr0_allowed as u32, host[1], host[2], (xcr0_allowed >> 32) as u32],
                1 => [host[0] & !LEAF_D1_EAX_XSAVES, 0, 0, 0],
                n if n < 64 && xcr0_allowed & (1 << n) != 0 => host,
                _ => [0; 4],
            };
        }
        _ => {}
    }
}

/// Handles a CPUID exit.
pub fn handle(regs: &mut GuestRegs, env: &mut dyn Platform) -> Action {
    let leaf = regs.rax as u32;
    let subleaf = regs.rcx as u32;
    let xcr0_allowed = env.guest_cpu().limits().xcr0_allowed;
    let osxsave = match leaf {
        1 => match env.guest_cpu().read(Reg::Cr4) {
            Ok(cr4) => cr4 & crate::arch::CR4_OSXSAVE != 0,
            Err(e) => return crate::arch::state_failure(e, regs),
        },
        _ => false,
    };
    let mut r = guest_cpuid(leaf, subleaf, env);
    if matches!(leaf, 1 | 7 | 0xD) {
        xsave_view(leaf, subleaf, &mut r, env.host_cpuid(leaf, subleaf), xcr0_allowed, osxsave);
    }
    let [a, b, c, d] = r;
    regs.rax = u64::from(a);
    regs.rbx = u64::from(b);
    regs.rcx = u64::from(c);
    regs.rdx = u64::from(d);
    Action::AdvanceRip
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::testenv::FakePlatform;
    use crate::exit::{handle_exit, Exit};
    use crate::vcpu::VmContext;

    fn run(leaf: u32, subleaf: u32, env: &mut FakePlatform) -> GuestRegs {
        let mut vm = VmContext::new(1, "cpuid");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut regs = GuestRegs {
            rax: 0xFFFF_FFFF_0000_0000 | u64::from(leaf),
            rcx: u64::from(subleaf),
            rbx: u64::MAX,
            rdx: u64::MAX,
            ..Default::default()
        };
        assert_eq!(
            handle_exit(&mut vm, &mut vcpu, &Exit::Cpuid, &mut regs, env),
            Action::AdvanceRip
        );
        regs
    }

    #[test]
    fn xsave_family_follows_allowed_xcr0_and_guest_cr4() {
        let mut env = FakePlatform::new();
        env.cpu.limits.xcr0_allowed = 0x7;
        let ecx = run(1, 0, &mut env).rcx as u32;
        assert_ne!(ecx & LEAF1_ECX_XSAVE, 0);
        assert_eq!(ecx & LEAF1_ECX_OSXSAVE, 0, "guest CR4.OSXSAVE clear");
        assert_ne!(ecx & LEAF1_ECX_AVX, 0);
        env.cpu.set(Reg::Cr4, crate::arch::CR4_OSXSAVE);
        assert_ne!(run(1, 0, &mut env).rcx as u32 & LEAF1_ECX_OSXSAVE, 0);
        let ebx7 = run(7, 0, &mut env).rbx as u32;
        assert_ne!(ebx7 & LEAF7_EBX_AVX2, 0);
        assert_eq!(ebx7 & LEAF7_EBX_AVX512, 0, "AVX-512 not allowed");
        let d0 = run(0xD, 0, &mut env);
        assert_eq!((d0.rax, d0.rdx), (7, 0));
        assert_eq!(run(0xD, 1, &mut env).rax as u32 & LEAF_D1_EAX_XSAVES, 0);
        assert_eq!(run(0xD, 5, &mut env).rax, 0, "AVX-512 component hidden");
        assert_eq!(run(0xD, 2, &mut env).rax, 0xD, "AVX component from the host");
        env.cpu.limits.xcr0_allowed = 0;
        let ecx = run(1, 0, &mut env).rcx as u32;
        assert_eq!(ecx & (LEAF1_ECX_XSAVE | LEAF1_ECX_OSXSAVE | LEAF1_ECX_AVX), 0);
    }

    #[test]
    fn svm_leaf_hidden() {
        let mut env = FakePlatform::new();
        assert_eq!(guest_cpuid(0x8000_000A, 0, &env), [0; 4]);
        assert_eq!(run(0x8000_0001, 0, &mut env).rcx & (1 << 2), 0);
    }

    #[test]
    fn leaf1_filtered_through_exit() {
        let mut env = FakePlatform::new();
        env.apic_id = 3;
        let r = run(1, 0, &mut env);
        let ecx = r.rcx as u32;
        assert_eq!(ecx & (1 << 5), 0, "VMX hidden");
        assert_eq!(ecx & (1 << 6), 0, "SMX hidden");
        assert_eq!(ecx & (1 << 21), 0, "x2APIC hidden");
        assert_eq!(ecx & (1 << 3), 0, "MONITOR hidden");
        assert_eq!(ecx & (1 << 24), 0, "TSC deadline hidden");
        assert_ne!(ecx & (1 << 31), 0, "hypervisor present");
        assert_ne!(ecx & 1, 0, "SSE3 kept");
        assert_eq!(r.rbx >> 24, 3, "initial APIC ID of the physical CPU");
        assert_eq!(r.rbx & 0xFF_FFFF, 0x08_0800, "rest of EBX kept");
        assert_eq!(r.rax, 0x0005_0654, "upper half of RAX cleared");
        assert_eq!(r.rdx as u32 & (1 << 14), 0, "MCA hidden");
    }

    #[test]
    fn hypervisor_leaves() {
        let env = FakePlatform::new();
        let [a, b, c, d] = guest_cpuid(0x4000_0000, 0, &env);
        assert_eq!(a, HV_MAX_LEAF);
        let mut sig = [0u8; 12];
        sig[0..4].copy_from_slice(&b.to_le_bytes());
        sig[4..8].copy_from_slice(&c.to_le_bytes());
        sig[8..12].copy_from_slice(&d.to_le_bytes());
        assert_eq!(sig, HV_SIGNATURE);
        assert_eq!(
            guest_cpuid(0x4000_0001, 0, &env),
            [crate::hypercall::HYPERCALL_VERSION, 0, 0, 0]
        );
        assert_eq!(guest_cpuid(0x4000_0002, 0, &env), [0; 4]);
        assert_eq!(guest_cpuid(0x4000_00FF, 0, &env), [0; 4]);
    }

    #[test]
    fn out_of_range_leaves_are_zero() {
        let env = FakePlatform::new();
        assert_eq!(
            guest_cpuid(0x17, 0, &env),
            [0; 4],
            "above host max basic 0x16"
        );
        assert_ne!(guest_cpuid(0x16, 0, &env), [0; 4]);
        assert_eq!(
            guest_cpuid(0x8000_0009, 0, &env),
            [0; 4],
            "above host max extended"
        );
        assert_eq!(guest_cpuid(0x4000_0100, 0, &env), [0; 4]);
        assert_eq!(guest_cpuid(0xC000_0000, 0, &env), [0; 4]);
        assert_eq!(guest_cpuid(0x2000_0000, 0, &env), [0; 4]);
    }

    #[test]
    fn leaf0_kept_and_feature_leaves_filtered() {
        let env = FakePlatform::new();
        assert_eq!(guest_cpuid(0, 0, &env), env.host_cpuid(0, 0));
        let [_, b, c, _] = guest_cpuid(7, 0, &env);
        assert_eq!(b & (1 << 5), 0, "AVX2 hidden");
        assert_eq!(c & (1 << 5), 0, "WAITPKG hidden");
        assert_ne!(b & 1, 0, "FSGSBASE kept");
        assert_eq!(guest_cpuid(0xD, 0, &env), [0; 4]);
        assert_eq!(guest_cpuid(0x8000_0001, 0, &env)[2] & EXT1_ECX_SVM, 0);
        assert_eq!(guest_cpuid(0xB, 0, &env)[3], env.cpu_apic_id());
    }
}
