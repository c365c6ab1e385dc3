//! CPUID policy: what a guest sees, derived from the host's values.
//!
//! Handled for [`Exit::Cpuid`](crate::exit::Exit::Cpuid): leaf from EAX, subleaf
//! from ECX, results in EAX/EBX/ECX/EDX (upper halves cleared, as hardware
//! does), then [`Action::AdvanceRip`].
//!
//! Each vCPU answers from a [`CpuidTable`] filled when its VM is created,
//! for every leaf whose answer depends on nothing but the host, the VM's
//! XSAVE offer and the APIC ID of its CPU (so a CPUID exit costs a lookup,
//! not two host CPUIDs); the others (leaves with subleaves, leaves that
//! differ between CPUs, reserved leaves) are computed at each exit by
//! [`guest_view`], from which the table is filled too. CPUID.1:ECX.OSXSAVE
//! stays dynamic: it follows the guest's CR4.OSXSAVE at every CPUID(1).
//!
//! | leaf | policy |
//! |------|--------|
//! | 0 .. host max basic | host values, filtered as below |
//! | 1 | ECX: clear DTES64(2), MONITOR(3), DS-CPL(4), VMX(5), SMX(6), EST(7), TM2(8), PDCM(15), x2APIC(21), TSC-deadline(24), XSAVE(26), OSXSAVE(27), AVX(28); set hypervisor(31). EDX: clear MCE(7), APIC(9), MCA(14), DS(21), ACPI(22), TM(29), PBE(31). EBX bits 31:24 = APIC ID of the physical CPU |
//! | 5, 6, 0xA, 0xD | zeros (MONITOR/MWAIT, thermal/power, PMU; XSAVE state unless offered, below) |
//! | 7.0 | EBX: clear TSC_ADJUST(1) (IA32_TSC_ADJUST is not emulated), SGX(2), AVX2(5), AVX-512 (16,17,21,26,27,28,30,31) unless XCR0 allows them; ECX: clear PKU(3), OSPKE(4), WAITPKG(5), CET_SS(7), LA57(16), SGX-LC(30); EDX: clear CET_IBT(20) |
//! | 0xD, XSAVE offered ([`xsave_view`]) | 0: the XCR0 bits allowed, the host's sizes (EBX for the XCR0 loaded, the guest's); 1: the host's flags without XSAVES, EBX the compacted (XSAVEC) size for the guest's XCR0, computed ([`compacted_xsave_size`]); 2 and up: the host's component when XCR0 allows it, else zeros |
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
//! XSAVE (and the AVX family that depends on it) is offered only where the
//! hypervisor switches XCR0 for the guest (`xcr0_allowed`). A guest that
//! respects CPUID therefore never executes an instruction that would stop
//! it, and finds every MSR and size CPUID promises.

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
const LEAF1_EDX_CLEAR: u32 =
    (1 << 7) | (1 << 9) | (1 << 14) | (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31);
/// CPUID.(7,0):EBX cleared: TSC_ADJUST(1): IA32_TSC_ADJUST (MSR 3BH)
/// is not emulated, and a guest told it exists reads it (Linux at boot:
/// "unchecked MSR access error: RDMSR from 0x3b"); SGX(2); AVX2(5) and the
/// AVX-512 family(16, 17, 21, 26, 27, 28, 30, 31), given back when the
/// VM's XCR0 allows them.
const LEAF7_EBX_CLEAR: u32 = (1 << 1)
    | (1 << 2)
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

/// The host's CPUID, as the policy sees it: `(leaf, subleaf) -> [eax, ebx, ecx, edx]`.
pub type HostCpuid<'a> = &'a dyn Fn(u32, u32) -> [u32; 4];

/// The guest's view of CPUID(`leaf`, `subleaf`) as `[eax, ebx, ecx, edx]`,
/// before the XSAVE family is added back ([`xsave_view`]).
pub fn guest_cpuid(leaf: u32, subleaf: u32, env: &dyn Platform) -> [u32; 4] {
    let host = |l, s| env.host_cpuid(l, s);
    filtered(
        leaf,
        subleaf,
        &|l, s| with_tsc_leaves(&host, env.tsc_hz(), l, s),
        env.cpu_apic_id(),
    )
}

/// The host's CPUID with the TSC frequency a guest may rely on (SDM Vol. 2A
/// CPUID leaves 0x15 and 0x16), so that it need not calibrate the TSC
/// against a PIT it shares the CPU for: leaf 0x15 says TSC = crystal (ECX)
/// x 100 / 1, leaf 0x16 the frequency in MHz, and leaf 0 reports at least
/// 0x16. Leaves the host does not have below 0x15 read as zeros. Linux reads
/// leaf 0x15 on Intel CPUs. `tsc_hz` 0 leaves the host's values.
pub fn with_tsc_leaves(host: HostCpuid<'_>, tsc_hz: u64, leaf: u32, subleaf: u32) -> [u32; 4] {
    const TSC_LEAF: u32 = 0x15;
    const FREQ_LEAF: u32 = 0x16;
    if tsc_hz == 0 || tsc_hz / 100 > u64::from(u32::MAX) {
        return host(leaf, subleaf);
    }
    let host_max = host(0, 0)[0];
    match leaf {
        0 => {
            let mut r = host(0, 0);
            r[0] = r[0].max(FREQ_LEAF);
            r
        }
        TSC_LEAF => [1, 100, (tsc_hz / 100) as u32, 0],
        FREQ_LEAF => {
            let mhz = (tsc_hz / 1_000_000) as u32;
            [mhz, mhz, 100, 0]
        }
        l if l > host_max && l < TSC_LEAF => [0; 4],
        _ => host(leaf, subleaf),
    }
}

/// [`guest_cpuid`] from the host's values `host` and the APIC ID of the
/// physical CPU the vCPU runs on.
fn filtered(leaf: u32, subleaf: u32, host: HostCpuid<'_>, apic_id: u32) -> [u32; 4] {
    match leaf {
        HV_BASE_LEAF..=HV_RANGE_END => hypervisor_leaf(leaf),
        EXT_BASE_LEAF.. => {
            let max_ext = host(EXT_BASE_LEAF, 0)[0];
            if leaf > max_ext {
                return [0; 4];
            }
            // SVM's own leaf describes a feature the guest does not have.
            if leaf == EXT_SVM_LEAF {
                return [0; 4];
            }
            let mut r = host(leaf, subleaf);
            if leaf == 0x8000_0001 {
                r[2] &= !EXT1_ECX_SVM;
            }
            r
        }
        0..HV_BASE_LEAF => {
            let max_basic = host(0, 0)[0];
            if leaf > max_basic {
                return [0; 4];
            }
            basic_leaf(leaf, host(leaf, subleaf), subleaf, apic_id)
        }
        _ => [0; 4],
    }
}

/// The hypervisor's leaves 0x4000_0000 ..= 0x4000_00FF.
fn hypervisor_leaf(leaf: u32) -> [u32; 4] {
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
        _ => [0; 4],
    }
}

/// The guest's whole view of CPUID(`leaf`, `subleaf`): the filtered host
/// values with the XSAVE family added back for `xcr0_allowed`, OSXSAVE as
/// `osxsave` says (the guest's CR4.OSXSAVE). What a CPUID exit returns; a
/// [`CpuidTable`] holds the same (with `osxsave` false) for the leaves it
/// covers.
pub fn guest_view(
    leaf: u32,
    subleaf: u32,
    host: HostCpuid<'_>,
    apic_id: u32,
    xcr0_allowed: u64,
    osxsave: bool,
) -> [u32; 4] {
    let mut r = filtered(leaf, subleaf, host, apic_id);
    if matches!(leaf, 1 | 7 | 0xD) {
        xsave_view(
            leaf,
            subleaf,
            &mut r,
            host(leaf, subleaf),
            xcr0_allowed,
            osxsave,
        );
    }
    r
}

/// Basic leaves whose answer ignores the subleaf and is the same on every
/// CPU of a machine (once the APIC ID is filled in): 0-3, 5, 6, 9, 0xA,
/// 0x15, 0x16 (SDM Vol. 2A, CPUID). The table holds them.
const TABLE_BASIC: u32 = (1 << 0)
    | (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 5)
    | (1 << 6)
    | (1 << 9)
    | (1 << 0xA)
    | (1 << 0x15)
    | (1 << 0x16);
/// Extended leaves the table holds: 0x8000_0000 ..= 0x8000_0008 (brand
/// string, address sizes, cache and power information) and 0x8000_000A.
const TABLE_EXT_LAST: u32 = 0x8000_000A;

/// Whether the table holds leaf `leaf` (for a machine with these highest
/// basic and extended leaves): the leaves above, the hypervisor's, and every
/// leaf beyond the highest one (zeros).
fn in_table(leaf: u32, max_basic: u32, max_ext: u32) -> bool {
    match leaf {
        0..HV_BASE_LEAF if leaf > max_basic => true,
        0..HV_BASE_LEAF => leaf < 0x20 && TABLE_BASIC & (1 << leaf) != 0,
        EXT_BASE_LEAF.. if leaf > max_ext => true,
        EXT_BASE_LEAF.. => leaf <= TABLE_EXT_LAST && leaf != 0x8000_0009,
        // The hypervisor's leaves, and the unused range up to the extended
        // leaves (zeros).
        _ => true,
    }
}

/// One vCPU's CPUID answers for the leaves that need no computing at an
/// exit (see the module docs), filled once when its VM is created. The
/// default (empty) table holds nothing: every leaf is computed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuidTable {
    /// Which of leaves 0 ..= 0x1F [`Self::finished`] answers (bit n: leaf
    /// n): the held ones except CPUID.1 while XSAVE is offered (its OSXSAVE
    /// bit follows the guest's CR4 at each exit).
    finished_held: u32,
    /// The basic leaves as the guest sees them, the topology applied: what
    /// [`CpuidTable::finished`] hands out without further work. Kept in the
    /// table itself, not behind its box: the common exit reads one word and
    /// one answer.
    finished: [[u32; 4]; 0x20],
    filled: Option<alloc::boxed::Box<Filled>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Filled {
    /// The vCPU's place in a VM with local APICs, applied over every answer.
    topology: Option<Topology>,
    /// Which of leaves 0 ..= 0x1F the table holds (bit n: leaf n).
    basic_held: u32,
    /// Leaves 0 ..= 0x1F.
    basic: [[u32; 4]; 0x20],
    max_basic: u32,
    max_ext: u32,
    /// Leaves 0x8000_0000 ..= [`TABLE_EXT_LAST`].
    ext: [[u32; 4]; (TABLE_EXT_LAST - EXT_BASE_LEAF + 1) as usize],
}

impl CpuidTable {
    /// Fills [`CpuidTable::finished`] from the held basic leaves and the
    /// topology. Every held basic leaf ignores the subleaf, and so does the
    /// topology's change to it, except in the topology leaves 0xB and 0x1F
    /// (held as zeros beyond a host's highest leaf).
    fn finish(&mut self) {
        let Some(t) = self.filled.as_deref() else {
            return;
        };
        let topology = t.topology;
        self.finished = t.basic;
        self.finished_held = t.basic_held;
        for (leaf, r) in (0u32..).zip(self.finished.iter_mut()) {
            if let Some(t) = topology {
                t.apply(leaf, 0, r);
                if matches!(leaf, 0xB | 0x1F) {
                    self.finished_held &= !(1 << leaf);
                }
            }
            if leaf == 1 && r[2] & LEAF1_ECX_XSAVE != 0 {
                self.finished_held &= !(1 << 1);
            }
        }
    }

    /// The table of a vCPU on the CPU with `apic_id`, whose VM may use the
    /// XCR0 components `xcr0_allowed`, from the host's CPUID (`host`).
    pub fn new(host: HostCpuid<'_>, apic_id: u32, xcr0_allowed: u64) -> Self {
        let max_basic = host(0, 0)[0];
        let max_ext = host(EXT_BASE_LEAF, 0)[0];
        let view = |leaf| guest_view(leaf, 0, host, apic_id, xcr0_allowed, false);
        let mut basic = [[0; 4]; 0x20];
        let mut basic_held = 0;
        for (leaf, slot) in (0u32..).zip(basic.iter_mut()) {
            if in_table(leaf, max_basic, max_ext) {
                *slot = view(leaf);
                basic_held |= 1 << leaf;
            }
        }
        let mut ext = [[0; 4]; (TABLE_EXT_LAST - EXT_BASE_LEAF + 1) as usize];
        for (leaf, slot) in (EXT_BASE_LEAF..).zip(ext.iter_mut()) {
            if in_table(leaf, max_basic, max_ext) {
                *slot = view(leaf);
            }
        }
        let mut table = CpuidTable {
            finished_held: 0,
            finished: [[0; 4]; 0x20],
            filled: Some(alloc::boxed::Box::new(Filled {
                topology: None,
                basic_held,
                basic,
                max_basic,
                max_ext,
                ext,
            })),
        };
        table.finish();
        table
    }

    /// Makes the vCPU one of a VM with local APICs ([`Topology`]); a no-op
    /// for an empty table.
    pub fn set_topology(&mut self, topology: Topology) {
        if let Some(t) = self.filled.as_deref_mut() {
            t.topology = Some(topology);
            self.finish();
        }
    }

    /// The complete answer for basic leaf `leaf` when the table has it
    /// ready (whatever the subleaf): the one lookup a CPUID exit makes on
    /// its common path. `None`: [`handle`] computes it.
    #[inline(always)]
    pub fn finished(&self, leaf: u32) -> Option<&[u32; 4]> {
        if leaf >= 0x20 || self.finished_held & (1 << leaf) == 0 {
            return None;
        }
        self.finished.get(leaf as usize)
    }

    /// The vCPU's place in a VM with local APICs, if it is one.
    #[inline]
    pub fn topology(&self) -> Option<Topology> {
        self.filled.as_deref().and_then(|t| t.topology)
    }

    /// The answer for `leaf` (whatever the subleaf: the table holds only
    /// leaves that ignore it) with CPUID.1:ECX.OSXSAVE clear, if the table
    /// holds the leaf; `None`: compute it ([`guest_view`]).
    #[inline]
    pub fn lookup(&self, leaf: u32) -> Option<[u32; 4]> {
        let t = self.filled.as_deref()?;
        // The common case first: a basic leaf of the table.
        if let Some(r) = t.basic.get(leaf as usize) {
            return (t.basic_held & (1 << leaf) != 0).then_some(*r);
        }
        if !in_table(leaf, t.max_basic, t.max_ext) {
            return None;
        }
        Some(match leaf {
            HV_BASE_LEAF..=HV_RANGE_END => hypervisor_leaf(leaf),
            EXT_BASE_LEAF.. if leaf <= t.max_ext => t
                .ext
                .get((leaf - EXT_BASE_LEAF) as usize)
                .copied()
                .unwrap_or([0; 4]),
            // Beyond the highest basic or extended leaf, or between the
            // ranges.
            _ => [0; 4],
        })
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
        7 if subleaf == 0 => [
            eax,
            ebx & !LEAF7_EBX_CLEAR,
            ecx & !LEAF7_ECX_CLEAR,
            edx & !LEAF7_EDX_CLEAR,
        ],
        0xB | 0x1F => [eax, ebx, ecx, apic_id],
        _ => host,
    }
}

/// CPUID.1:ECX XSAVE, OSXSAVE and AVX (SDM Vol. 2A Table 3-10).
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
const LEAF1_ECX_AVX: u32 = 1 << 28;
/// CPUID.(7,0):EBX[1]: IA32_TSC_ADJUST exists.
#[cfg(test)]
const LEAF7_EBX_TSC_ADJUST: u32 = 1 << 1;
/// CPUID.(7,0):EBX AVX2 and the AVX-512 family.
const LEAF7_EBX_AVX2: u32 = 1 << 5;
const LEAF7_EBX_AVX512: u32 =
    (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31);
/// CPUID.(0xD,1):EAX XSAVES (needs IA32_XSS, not offered).
const LEAF_D1_EAX_XSAVES: u32 = 1 << 3;
/// CPUID.(0xD,1):EAX XSAVEC (compacted XSAVE).
const LEAF_D1_EAX_XSAVEC: u32 = 1 << 1;
/// CPUID.(0xD,i):ECX[1]: component i starts on a 64-byte boundary in the
/// compacted format (SDM Vol. 2A, CPUID leaf 0DH).
const LEAF_D_ECX_ALIGNED: u32 = 1 << 1;
/// The XSAVE area's legacy region and header: where the compacted format
/// puts its first extended component (SDM Vol. 1, 13.4.3).
const XSAVE_LEGACY_AND_HEADER: u32 = 512 + 64;

/// The size of a compacted XSAVE area (XSAVEC) holding the components of
/// `xcr0` (SDM Vol. 1, 13.4.3): the legacy region and header, then each
/// extended component in order at the end of the previous one, aligned to
/// 64 bytes when CPUID.(0xD,i):ECX[1] says so; `component(i)` is
/// CPUID.(0xD,i) (EAX its size).
pub fn compacted_xsave_size(xcr0: u64, mut component: impl FnMut(u32) -> [u32; 4]) -> u32 {
    let mut end = XSAVE_LEGACY_AND_HEADER;
    for i in 2..63 {
        if xcr0 & (1 << i) == 0 {
            continue;
        }
        let [size, _, flags, _] = component(i);
        if flags & LEAF_D_ECX_ALIGNED != 0 {
            end = end.next_multiple_of(64);
        }
        end += size;
    }
    end
}

/// Adds the XSAVE family back to a guest's CPUID when the hypervisor switches
/// XCR0 for it: XSAVE and AVX per the XCR0 bits the guest may set
/// (`xcr0_allowed`), OSXSAVE mirroring the guest's own CR4.OSXSAVE, and leaf
/// 0xD limited to those components.
pub fn xsave_view(
    leaf: u32,
    subleaf: u32,
    r: &mut [u32; 4],
    host: [u32; 4],
    xcr0_allowed: u64,
    osxsave: bool,
) {
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
                0 => [
                    xcr0_allowed as u32,
                    host[1],
                    host[2],
                    (xcr0_allowed >> 32) as u32,
                ],
                // EBX, the compacted size for the XCR0 loaded, is filled in
                // by `compute` (it needs the guest's XCR0).
                1 => [host[0] & !LEAF_D1_EAX_XSAVES, 0, 0, 0],
                n if n < 64 && xcr0_allowed & (1 << n) != 0 => host,
                _ => [0; 4],
            };
        }
        _ => {}
    }
}

/// A vCPU of a VM with virtual local APICs: its APIC ID and the VM's vCPU
/// count, as CPUID reports them (SDM Vol. 2A CPUID leaves 1, 6 and 0xB/0x1F;
/// SDM Vol. 3A 10.9 for the topology enumeration). Each vCPU is one core
/// of one package, with one thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The vCPU's (x2)APIC ID.
    pub apic_id: u32,
    /// vCPUs in the VM (at least 1).
    pub vcpus: u32,
}

/// CPUID.1:ECX x2APIC and TSC-deadline; CPUID.1:EDX APIC and HTT
/// (multi-threading: EBX[23:16] is valid); CPUID.6:EAX ARAT (the APIC timer
/// runs in every C-state).
const LEAF1_ECX_X2APIC: u32 = 1 << 21;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_EDX_APIC: u32 = 1 << 9;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF6_EAX_ARAT: u32 = 1 << 2;
/// Leaf 0xB/0x1F level types (ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

impl Topology {
    /// Bits of the APIC ID that number the vCPUs (SDM 10.9.1: the shift to
    /// the next level's ID).
    fn core_bits(&self) -> u32 {
        self.vcpus.max(1).next_power_of_two().trailing_zeros()
    }

    /// Overrides the answer `r` to CPUID(`leaf`, `subleaf`).
    pub fn apply(&self, leaf: u32, subleaf: u32, r: &mut [u32; 4]) {
        match leaf {
            0 => r[0] = r[0].max(0xB),
            1 => {
                let count = self.vcpus.max(1).next_power_of_two().min(0x80);
                r[1] = (r[1] & 0x0000_FFFF) | ((self.apic_id & 0xFF) << 24) | (count << 16);
                r[2] |= LEAF1_ECX_X2APIC | LEAF1_ECX_TSC_DEADLINE;
                r[3] |= LEAF1_EDX_APIC | LEAF1_EDX_HTT;
            }
            6 => r[0] |= LEAF6_EAX_ARAT,
            0xB | 0x1F => {
                *r = match subleaf {
                    0 => [0, 1, (LEVEL_SMT << 8), self.apic_id],
                    1 => [
                        self.core_bits(),
                        self.vcpus,
                        (LEVEL_CORE << 8) | 1,
                        self.apic_id,
                    ],
                    n => [0, 0, n & 0xFF, self.apic_id],
                };
            }
            // AMD: cores per package minus one (APM Vol. 3, CPUID Fn8000_0008 ECX).
            0x8000_0008 => {
                r[2] = (r[2] & !0xF0FF) | (self.core_bits() << 12) | (self.vcpus.max(1) - 1);
            }
            _ => {}
        }
    }
}

/// Handles a CPUID exit from a vCPU with `table`.
#[inline(always)]
pub fn handle<P: Platform>(table: &CpuidTable, regs: &mut GuestRegs, env: &mut P) -> Action {
    if answer_finished(table, regs) {
        return Action::AdvanceRip;
    }
    compute(table, regs, env)
}

/// Answers CPUID from the table's finished leaves ([`CpuidTable::finished`]);
/// false: the leaf needs [`handle`]'s computing (and its platform).
#[inline(always)]
pub fn answer_finished(table: &CpuidTable, regs: &mut GuestRegs) -> bool {
    let Some(&[a, b, c, d]) = table.finished(regs.rax as u32) else {
        return false;
    };
    regs.rax = u64::from(a);
    regs.rbx = u64::from(b);
    regs.rcx = u64::from(c);
    regs.rdx = u64::from(d);
    true
}

/// The leaves the table has no finished answer for: held ones with the
/// topology and the guest's OSXSAVE applied, the others computed.
#[inline(never)]
fn compute<P: Platform>(table: &CpuidTable, regs: &mut GuestRegs, env: &mut P) -> Action {
    let leaf = regs.rax as u32;
    let subleaf = regs.rcx as u32;
    let mut r = match table.lookup(leaf) {
        Some(r) => r,
        None => {
            let xcr0_allowed = env.guest_cpu().limits().xcr0_allowed;
            let tsc_hz = env.tsc_hz();
            let host = |l, s| env.host_cpuid(l, s);
            guest_view(
                leaf,
                subleaf,
                &|l, s| with_tsc_leaves(&host, tsc_hz, l, s),
                env.cpu_apic_id(),
                xcr0_allowed,
                false,
            )
        }
    };
    if let Some(t) = table.topology() {
        t.apply(leaf, subleaf, &mut r);
    }
    // OSXSAVE mirrors the guest's CR4.OSXSAVE where XSAVE is offered: read
    // at every CPUID(1), never kept in the table.
    if leaf == 1 && r[2] & LEAF1_ECX_XSAVE != 0 {
        match env.guest_cpu().read(Reg::Cr4) {
            Ok(cr4) if cr4 & crate::arch::CR4_OSXSAVE != 0 => r[2] |= LEAF1_ECX_OSXSAVE,
            Ok(_) => {}
            Err(e) => return crate::arch::state_failure(e, regs),
        }
    }
    // With XSAVEC, CPUID.(0xD,1):EBX is the compacted area's size for the
    // guest's XCR0 (| IA32_XSS, which guests do not get). Computed here:
    // not every CPU model fills it in without XSAVES (Bochs' leaves 0),
    // and Linux sizes its compacted buffers from it.
    if leaf == 0xD && subleaf == 1 && r[0] & LEAF_D1_EAX_XSAVEC != 0 {
        match env.guest_cpu().read(Reg::Xcr0) {
            Ok(xcr0) => r[1] = compacted_xsave_size(xcr0, |i| env.host_cpuid(0xD, i)),
            Err(e) => return crate::arch::state_failure(e, regs),
        }
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
    fn compacted_size_follows_the_guest_xcr0() {
        // Skylake-X's components: AVX 256 bytes, opmask 64, ZMM_Hi256 512,
        // Hi16_ZMM 1024, the last three 64-byte aligned in compacted form.
        let skx = |i: u32| match i {
            2 => [256, 576, 0, 0],
            5 => [64, 1088, 2, 0],
            6 => [512, 1152, 2, 0],
            7 => [1024, 1664, 2, 0],
            _ => [0; 4],
        };
        assert_eq!(compacted_xsave_size(0x3, skx), 576);
        assert_eq!(compacted_xsave_size(0x7, skx), 832);
        assert_eq!(compacted_xsave_size(0xE7, skx), 2432);
        // An aligned component after an odd end starts on 64 bytes.
        let odd = |i: u32| match i {
            2 => [8, 0, 0, 0],
            3 => [16, 0, 2, 0],
            _ => [0; 4],
        };
        assert_eq!(compacted_xsave_size(0xF, odd), 576 + 64 + 16);

        // Through a CPUID exit: XSAVEC offered (the fake host has it, with
        // EBX 0), EBX from the guest's XCR0 and the host's components (the
        // fake host's (0xD,2) EAX is 0xD: 13 bytes, ECX without the
        // alignment bit).
        let mut env = FakePlatform::new();
        env.cpu.limits.xcr0_allowed = 0x7;
        env.cpu.set(Reg::Xcr0, 0x7);
        let d1 = run(0xD, 1, &mut env);
        assert_ne!(d1.rax as u32 & LEAF_D1_EAX_XSAVEC, 0);
        assert_eq!((d1.rbx, d1.rcx, d1.rdx), (576 + 13, 0, 0));
        env.cpu.set(Reg::Xcr0, 0x3);
        assert_eq!(run(0xD, 1, &mut env).rbx, 576);
    }

    #[test]
    fn tsc_adjust_is_not_offered() {
        // The host has every leaf-7 bit; IA32_TSC_ADJUST is not emulated.
        let mut env = FakePlatform::new();
        let ebx7 = run(7, 0, &mut env).rbx as u32;
        assert_eq!(ebx7 & LEAF7_EBX_TSC_ADJUST, 0);
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
        assert_eq!(
            run(0xD, 2, &mut env).rax,
            0xD,
            "AVX component from the host"
        );
        env.cpu.limits.xcr0_allowed = 0;
        let ecx = run(1, 0, &mut env).rcx as u32;
        assert_eq!(
            ecx & (LEAF1_ECX_XSAVE | LEAF1_ECX_OSXSAVE | LEAF1_ECX_AVX),
            0
        );
    }

    /// A host as real CPUs answer: leaf 0 says 0x1F, leaf 0x8000_0000 says
    /// 0x8000_0021; leaves with subleaves (4, 7, 0xB, 0xD, 0xF, 0x10, 0x12,
    /// 0x14, 0x17, 0x18, 0x1A-0x1F, 0x8000_001D, 0x8000_0020) answer per
    /// subleaf, the others ignore it; every bit of the feature leaves set.
    fn realistic_host(leaf: u32, subleaf: u32) -> [u32; 4] {
        let per_subleaf = matches!(
            leaf,
            4 | 7 | 0xB | 0xD | 0xF | 0x10 | 0x12 | 0x14 | 0x17 | 0x18 | 0x1A..=0x1F
        ) || matches!(leaf, 0x8000_001D | 0x8000_0020);
        let sub = if per_subleaf { subleaf } else { 0 };
        match leaf {
            0 => [0x1F, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            1 => [0x0005_0654, 0x7708_0800, 0xFFFF_FFFF, 0xFFFF_FFFF],
            7 if sub == 0 => [2, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF],
            0xD => [0x2E7 ^ sub, 0xA88 + sub, 0x2A8 * (sub + 1), sub],
            0x8000_0000 => [0x8000_0021, 0, 0, 0],
            0x8000_0001 => [0, 0, 0xFFFF_FFFF, 0xFFFF_FFFF],
            _ => [leaf, sub.wrapping_mul(7), 0x1234 ^ leaf, 0x5678],
        }
    }

    /// Every leaf the table holds answers exactly what the per-exit
    /// computation answers, for any subleaf, with and without XSAVE offered
    /// and for CPUs with other APIC IDs; the leaves it leaves out are those
    /// with subleaves, per-CPU or reserved ones.
    #[test]
    fn table_equals_per_exit_computation_for_every_leaf_it_holds() {
        let host = |l, s| realistic_host(l, s);
        let leaves = (0..0x60)
            .chain(0x4000_0000..0x4000_0110)
            .chain(0x7FFF_FFF0..0x8000_0030)
            .chain([0x2000_0000, 0x3FFF_FFFF, 0xC000_0000, 0xFFFF_FFFF]);
        for xcr0_allowed in [0, 0x7, 0xE7] {
            for apic_id in [0, 3, 0xFF] {
                let table = CpuidTable::new(&host, apic_id, xcr0_allowed);
                let mut held = alloc::vec::Vec::new();
                for leaf in leaves.clone() {
                    let Some(r) = table.lookup(leaf) else {
                        continue;
                    };
                    held.push(leaf);
                    for subleaf in [0, 1, 2, 63, 0xFFFF_FFFF] {
                        let computed =
                            guest_view(leaf, subleaf, &host, apic_id, xcr0_allowed, false);
                        assert_eq!(
                            r, computed,
                            "leaf {leaf:#x}.{subleaf} xcr0 {xcr0_allowed:#x} apic {apic_id}"
                        );
                    }
                }
                for leaf in [
                    0,
                    1,
                    2,
                    3,
                    5,
                    6,
                    9,
                    0xA,
                    0x15,
                    0x16,
                    0x20,
                    0x5F,
                    0x4000_0000,
                    0x4000_0001,
                ] {
                    assert!(held.contains(&leaf), "leaf {leaf:#x} in the table");
                }
                for leaf in [
                    0x8000_0000,
                    0x8000_0001,
                    0x8000_0008,
                    0x8000_000A,
                    0x8000_0022,
                    0xC000_0000,
                ] {
                    assert!(held.contains(&leaf), "leaf {leaf:#x} in the table");
                }
                for leaf in [
                    4,
                    7,
                    0xB,
                    0xD,
                    0x1A,
                    0x1F,
                    0x8000_0009,
                    0x8000_001D,
                    0x8000_001E,
                ] {
                    assert!(!held.contains(&leaf), "leaf {leaf:#x} computed per exit");
                }
            }
        }
        assert_eq!(
            CpuidTable::default().lookup(0),
            None,
            "an empty table holds nothing"
        );
    }

    /// The same through the exit handler: a vCPU with a table answers every
    /// leaf as one without, and CPUID.1:ECX.OSXSAVE follows the guest's
    /// CR4.OSXSAVE at each exit, table or not.
    #[test]
    fn exits_answer_the_same_with_the_table_and_osxsave_stays_dynamic() {
        let mut env = FakePlatform::new();
        env.apic_id = 2;
        env.cpu.limits.xcr0_allowed = 0x7;
        let host = |l, s| FakePlatform::new().host_cpuid(l, s);
        let table = CpuidTable::new(&host, 2, 0x7);
        let exit = |table: &CpuidTable, leaf: u32, env: &mut FakePlatform| {
            let mut regs = GuestRegs {
                rax: u64::from(leaf),
                ..Default::default()
            };
            assert_eq!(handle(table, &mut regs, env), Action::AdvanceRip);
            [regs.rax, regs.rbx, regs.rcx, regs.rdx]
        };
        for cr4 in [0, crate::arch::CR4_OSXSAVE] {
            env.cpu.set(Reg::Cr4, cr4);
            for leaf in (0..0x20).chain([
                0x4000_0000,
                0x4000_0001,
                0x8000_0000,
                0x8000_0001,
                0x8000_0008,
            ]) {
                let empty = exit(&CpuidTable::default(), leaf, &mut env);
                assert_eq!(
                    exit(&table, leaf, &mut env),
                    empty,
                    "leaf {leaf:#x} cr4 {cr4:#x}"
                );
            }
            let ecx = exit(&table, 1, &mut env)[2] as u32;
            assert_eq!(
                ecx & LEAF1_ECX_OSXSAVE != 0,
                cr4 != 0,
                "OSXSAVE follows CR4"
            );
            assert_ne!(ecx & LEAF1_ECX_XSAVE, 0);
        }
        // Without XSAVE offered, CR4 is not even read for leaf 1.
        let table = CpuidTable::new(&host, 2, 0);
        env.cpu.fail = Some(Reg::Cr4);
        assert_eq!(
            exit(&table, 1, &mut env)[2] as u32 & (LEAF1_ECX_XSAVE | LEAF1_ECX_OSXSAVE),
            0
        );
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
    fn tsc_leaves_tell_the_frequency() {
        let host = |leaf: u32, _: u32| match leaf {
            0 => [0xD, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            _ => [0xBAD; 4],
        };
        let t = |leaf| with_tsc_leaves(&host, 2_400_000_000, leaf, 0);
        assert_eq!(t(0)[0], 0x16, "leaf 0 reaches 0x16");
        let [eax, ebx, ecx, _] = t(0x15);
        assert_eq!(
            u64::from(ecx) * u64::from(ebx) / u64::from(eax),
            2_400_000_000
        );
        assert_eq!(t(0x16)[0], 2400);
        assert_eq!(t(0xE), [0; 4], "leaves the host lacks read as zeros");
        assert_eq!(t(0x5), [0xBAD; 4]);
        assert_eq!(
            with_tsc_leaves(&host, 0, 0x15, 0),
            [0xBAD; 4],
            "unknown frequency: host values"
        );
        // Through the policy: leaf 0x15 survives the filtering.
        let filtered_15 = filtered(
            0x15,
            0,
            &|l, s| with_tsc_leaves(&host, 2_400_000_000, l, s),
            0,
        );
        assert_eq!(filtered_15, [1, 100, 24_000_000, 0]);
    }

    /// vCPU counts with the power of two leaf 1 reports and the APIC ID
    /// bits that number the vCPUs (the core level's shift).
    const COUNTS: [(u32, u32, u32); 5] = [(1, 1, 0), (2, 2, 1), (3, 4, 2), (4, 4, 2), (8, 8, 3)];

    fn applied(t: Topology, leaf: u32, subleaf: u32, r: [u32; 4]) -> [u32; 4] {
        let mut r = r;
        t.apply(leaf, subleaf, &mut r);
        r
    }

    #[test]
    fn topology_apply_leaf1_and_leaf6() {
        for (vcpus, pow2, _) in COUNTS {
            for apic_id in 0..vcpus {
                let t = Topology { apic_id, vcpus };
                // From a filtered leaf 1: APIC, x2APIC, TSC deadline hidden.
                let [eax, ebx, ecx, edx] =
                    applied(t, 1, 0, [0x0005_0654, 0x7708_0800, 0x8000_0001, 0x1]);
                assert_eq!(eax, 0x0005_0654, "signature kept");
                assert_eq!(ebx >> 24, apic_id, "initial APIC ID");
                assert_eq!((ebx >> 16) & 0xFF, pow2, "{vcpus} vCPUs");
                assert_eq!(ebx & 0xFFFF, 0x0800, "brand index, CLFLUSH size kept");
                assert_eq!(
                    ecx,
                    0x8000_0001 | (1 << 21) | (1 << 24),
                    "x2APIC, TSC deadline"
                );
                assert_eq!(edx, 0x1 | (1 << 9) | (1 << 28), "APIC, HTT");
                // Leaf 6: ARAT added to what was there.
                assert_eq!(applied(t, 6, 0, [0; 4]), [1 << 2, 0, 0, 0]);
                assert_eq!(applied(t, 6, 0, [1, 2, 3, 4]), [1 | (1 << 2), 2, 3, 4]);
            }
        }
        // Leaf 1's count is 8 bits: never spills into the APIC ID.
        let t = Topology {
            apic_id: 0x12,
            vcpus: 200,
        };
        let ebx = applied(t, 1, 0, [0; 4])[1];
        assert_eq!((ebx >> 24, (ebx >> 16) & 0xFF), (0x12, 0x80));
        // A count of 0 is taken as 1.
        let t = Topology {
            apic_id: 0,
            vcpus: 0,
        };
        assert_eq!((applied(t, 1, 0, [0; 4])[1] >> 16) & 0xFF, 1);
    }

    #[test]
    fn topology_apply_extended_topology_leaves() {
        for leaf in [0xB, 0x1F] {
            for (vcpus, _, shift) in COUNTS {
                for apic_id in 0..vcpus {
                    let t = Topology { apic_id, vcpus };
                    let host = [0xEE, 0xEE, 0xEE, 0xEE];
                    // SMT level: one thread per core, no APIC ID bits.
                    assert_eq!(
                        applied(t, leaf, 0, host),
                        [0, 1, 1 << 8, apic_id],
                        "leaf {leaf:#x}.0, {vcpus} vCPUs"
                    );
                    // Core level: the shift to the package ID covers every vCPU.
                    assert_eq!(
                        applied(t, leaf, 1, host),
                        [shift, vcpus, (2 << 8) | 1, apic_id],
                        "leaf {leaf:#x}.1, {vcpus} vCPUs"
                    );
                    assert!(1 << shift >= vcpus && (shift == 0 || 1 << (shift - 1) < vcpus));
                    assert_eq!(t.core_bits(), shift);
                    // Every higher level is invalid: level number echoed,
                    // type 0, EDX still the x2APIC ID.
                    for subleaf in [2, 3, 0xFF, 0x1_02, 0xFFFF_FFFF] {
                        assert_eq!(
                            applied(t, leaf, subleaf, host),
                            [0, 0, subleaf & 0xFF, apic_id],
                            "leaf {leaf:#x}.{subleaf:#x}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn topology_apply_leaf0_amd_core_count_and_other_leaves() {
        for (vcpus, _, shift) in COUNTS {
            let t = Topology { apic_id: 0, vcpus };
            // Leaf 0 reaches at least 0xB; a higher maximum stays.
            assert_eq!(applied(t, 0, 0, [7, 1, 2, 3]), [0xB, 1, 2, 3]);
            assert_eq!(applied(t, 0, 0, [0x1F, 1, 2, 3]), [0x1F, 1, 2, 3]);
            // 0x8000_0008 ECX: NC (7:0) = count - 1, ApicIdSize (15:12);
            // the other bits kept.
            let r = applied(t, 0x8000_0008, 0, [0x3030, 0, 0xFFFF_FFFF, 0]);
            assert_eq!(r[2] & 0xFF, vcpus - 1, "{vcpus} vCPUs");
            assert_eq!((r[2] >> 12) & 0xF, shift);
            assert_eq!(r[2] | 0xF0FF, 0xFFFF_FFFF);
            assert_eq!([r[0], r[1], r[3]], [0x3030, 0, 0]);
            let r = applied(t, 0x8000_0008, 0, [0; 4]);
            assert_eq!(r, [0, 0, (shift << 12) | (vcpus - 1), 0]);
            // Leaves without topology are left alone.
            for leaf in [2, 4, 7, 0xA, 0x4000_0000, 0x8000_0001] {
                assert_eq!(applied(t, leaf, 0, [1, 2, 3, 4]), [1, 2, 3, 4]);
            }
        }
    }

    #[test]
    fn table_topology_is_set_once_filled() {
        let host = |l, s| FakePlatform::new().host_cpuid(l, s);
        let t = Topology {
            apic_id: 2,
            vcpus: 3,
        };
        let mut empty = CpuidTable::default();
        empty.set_topology(t);
        assert_eq!(empty.topology(), None, "an empty table keeps nothing");
        let mut table = CpuidTable::new(&host, 2, 0);
        assert_eq!(table.topology(), None);
        let before = table.lookup(1);
        table.set_topology(t);
        assert_eq!(table.topology(), Some(t));
        // The held answers are not changed: the topology goes over them at
        // each exit.
        assert_eq!(table.lookup(1), before);
        let t2 = Topology {
            apic_id: 0,
            vcpus: 8,
        };
        table.set_topology(t2);
        assert_eq!(table.topology(), Some(t2), "the last one counts");
    }

    /// CPUID exits of a vCPU with a topology, through the table and the
    /// per-exit computation alike.
    #[test]
    fn exits_apply_the_topology() {
        let host = |l, s| FakePlatform::new().host_cpuid(l, s);
        for (vcpus, pow2, shift) in COUNTS {
            for apic_id in 0..vcpus {
                let mut env = FakePlatform::new();
                // The physical CPU's APIC ID is not the vCPU's.
                env.apic_id = 0x77;
                let mut table = CpuidTable::new(&host, apic_id, 0);
                table.set_topology(Topology { apic_id, vcpus });
                let mut exit = |leaf: u32, subleaf: u32| {
                    let mut regs = GuestRegs {
                        rax: 0xFFFF_FFFF_0000_0000 | u64::from(leaf),
                        rcx: 0xFFFF_FFFF_0000_0000 | u64::from(subleaf),
                        ..Default::default()
                    };
                    assert_eq!(handle(&table, &mut regs, &mut env), Action::AdvanceRip);
                    [regs.rax, regs.rbx, regs.rcx, regs.rdx].map(|v| {
                        assert_eq!(v >> 32, 0, "upper halves cleared");
                        v as u32
                    })
                };
                let what = alloc::format!("vCPU {apic_id} of {vcpus}");
                assert!(exit(0, 0)[0] >= 0xB, "{what}");
                let [_, ebx, ecx, edx] = exit(1, 0);
                assert_eq!(ebx >> 24, apic_id, "{what}");
                assert_eq!((ebx >> 16) & 0xFF, pow2, "{what}");
                assert_ne!(ecx & (1 << 21), 0, "x2APIC {what}");
                assert_ne!(ecx & (1 << 24), 0, "TSC deadline {what}");
                assert_ne!(ecx & (1 << 31), 0, "hypervisor {what}");
                assert_eq!(ecx & (1 << 5), 0, "VMX still hidden {what}");
                assert_ne!(edx & (1 << 9), 0, "APIC {what}");
                assert_ne!(edx & (1 << 28), 0, "HTT {what}");
                assert_eq!(edx & (1 << 14), 0, "MCA still hidden {what}");
                assert_ne!(exit(6, 0)[0] & (1 << 2), 0, "ARAT {what}");
                // 0xB is below the host's maximum (0x16), 0x1F above it:
                // both answer the topology.
                for leaf in [0xB, 0x1F] {
                    assert_eq!(exit(leaf, 0), [0, 1, 1 << 8, apic_id], "{what}");
                    assert_eq!(
                        exit(leaf, 1),
                        [shift, vcpus, (2 << 8) | 1, apic_id],
                        "{what}"
                    );
                    assert_eq!(exit(leaf, 2), [0, 0, 2, apic_id], "{what}");
                }
                assert_eq!(exit(0x8000_0008, 0)[2] & 0xFF, vcpus - 1, "{what}");
                // Untouched leaves answer as without a topology.
                let hv = exit(0x4000_0000, 0);
                assert_eq!(hv[0], HV_MAX_LEAF);
            }
        }
        // Without a topology: the physical CPU's APIC ID and the host's
        // topology, APIC and x2APIC hidden.
        let mut env = FakePlatform::new();
        env.apic_id = 0x77;
        let table = CpuidTable::new(&host, 0x77, 0);
        let mut regs = GuestRegs {
            rax: 1,
            ..Default::default()
        };
        handle(&table, &mut regs, &mut env);
        assert_eq!(regs.rbx >> 24, 0x77);
        assert_eq!(regs.rcx & (1 << 21), 0);
        assert_eq!(regs.rdx & (1 << 9), 0);
        let mut regs = GuestRegs {
            rax: 0xB,
            ..Default::default()
        };
        handle(&table, &mut regs, &mut env);
        assert_eq!(
            [regs.rax, regs.rbx, regs.rcx, regs.rdx],
            [0xB, 0, 0x1234, 0x77]
        );
    }

    /// The finished answers are exactly what the computing path gives, for
    /// every basic leaf and subleaf, with and without a topology.
    #[test]
    fn finished_answers_match_the_computed_ones() {
        let mut env = FakePlatform::new();
        let host = |l, s| FakePlatform::new().host_cpuid(l, s);
        let mut table = CpuidTable::new(&host, 3, 0xE7);
        for topology in [
            None,
            Some(Topology {
                apic_id: 1,
                vcpus: 3,
            }),
        ] {
            if let Some(t) = topology {
                table.set_topology(t);
            }
            let mut finished = 0;
            for leaf in 0..0x20u32 {
                for subleaf in 0..3u32 {
                    let Some(&r) = table.finished(leaf) else {
                        continue;
                    };
                    finished += 1;
                    let mut regs = GuestRegs {
                        rax: u64::from(leaf),
                        rcx: u64::from(subleaf),
                        ..Default::default()
                    };
                    compute(&table, &mut regs, &mut env);
                    let computed = [regs.rax, regs.rbx, regs.rcx, regs.rdx].map(|v| v as u32);
                    assert_eq!(r, computed, "leaf {leaf:#x}.{subleaf} ({topology:?})");
                }
            }
            assert!(finished > 10, "the common leaves are finished");
            assert!(table.finished(0xB).is_none() || topology.is_none());
        }
    }

    /// A host whose highest basic leaf is below 0xB: a vCPU with a topology
    /// still finds the topology leaf.
    #[test]
    fn topology_leaf_reachable_on_a_host_with_few_leaves() {
        let host = |leaf: u32, subleaf: u32| match leaf {
            0 => [0x7, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            _ => FakePlatform::new().host_cpuid(leaf, subleaf),
        };
        let t = Topology {
            apic_id: 1,
            vcpus: 2,
        };
        let mut table = CpuidTable::new(&host, 1, 0);
        table.set_topology(t);
        let mut env = FakePlatform::new();
        let mut exit = |leaf: u32, subleaf: u32| {
            let mut regs = GuestRegs {
                rax: u64::from(leaf),
                rcx: u64::from(subleaf),
                ..Default::default()
            };
            handle(&table, &mut regs, &mut env);
            [regs.rax, regs.rbx, regs.rcx, regs.rdx]
        };
        assert_eq!(exit(0, 0)[0], 0xB);
        assert_eq!(exit(0xB, 1), [1, 2, 0x201, 1]);
        assert_eq!(exit(0xA, 0), [0; 4], "leaves in between are zeros");
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
