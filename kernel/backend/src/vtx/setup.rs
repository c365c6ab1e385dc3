//! Programs a VMCS for a new vCPU: controls from [`VmxSetup`], host state the
//! kernel read from its CPU ([`HostState`]), and the architectural state a
//! guest starts in ([`GuestStart`]) (SDM chapter 25, checks in 27.2-27.3).

use hvcore::config::GuestMode;
use hvcore::layout;
use vmx::vmcs::*;
use vmx::{VmFail, VmcsAccess};

use super::VmxSetup;

/// This CPU's state that a VM exit loads (SDM 25.5, 28.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostState {
    /// CR0.
    pub cr0: u64,
    /// CR3 (the hypervisor's page tables).
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// Code segment selector.
    pub cs: u16,
    /// Data segment selector (SS, DS, ES).
    pub ds: u16,
    /// TSS selector.
    pub tr: u16,
    /// FS base.
    pub fs_base: u64,
    /// GS base (the per-CPU data).
    pub gs_base: u64,
    /// TSS base.
    pub tr_base: u64,
    /// GDT base.
    pub gdtr_base: u64,
    /// IDT base.
    pub idtr_base: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// The VM-exit entry point.
    pub rip: u64,
}

/// Per-vCPU addresses and the guest's starting point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestStart {
    /// Mode at reset.
    pub mode: GuestMode,
    /// Entry point (guest-physical; real mode: below 1 MiB).
    pub entry: u64,
    /// EPT pointer.
    pub eptp: u64,
    /// VPID (non-zero; ignored without VPID).
    pub vpid: u16,
    /// Host-physical address of the MSR bitmap page.
    pub msr_bitmap: u64,
    /// Host-physical address of the virtual-APIC page (TPR shadow).
    pub virtual_apic: u64,
}

/// Segment access rights (SDM 25.4.1, Table 25-2).
pub mod ar {
    /// 64-bit code, execute/read, accessed, present, L=1, G=1.
    pub const CODE64: u32 = 0xa09b;
    /// Data, read/write, accessed, present, D/B=1, G=1.
    pub const DATA32: u32 = 0xc093;
    /// 32-bit code, execute/read, accessed, present, D/B=1, G=1.
    pub const CODE32: u32 = 0xc09b;
    /// 16-bit code for real mode: execute/read, accessed, present.
    pub const CODE16: u32 = 0x009b;
    /// 16-bit data for real mode: read/write, accessed, present.
    pub const DATA16: u32 = 0x0093;
    /// Busy 64-bit TSS (type 11), present.
    pub const TSS_BUSY: u32 = 0x008b;
    /// Unusable segment (bit 16).
    pub const UNUSABLE: u32 = 1 << 16;
}

/// Guest selectors of the boot GDT the kernel writes at [`layout::GDT`]:
/// null, 64-bit code (0x08), data (0x10), TSS (0x18).
pub mod selectors {
    /// Code.
    pub const CODE: u16 = 0x08;
    /// Data.
    pub const DATA: u16 = 0x10;
    /// TSS.
    pub const TSS: u16 = 0x18;
    /// 32-bit code, for guests that start in protected mode (Multiboot).
    pub const CODE32: u16 = 0x28;
    /// The descriptors (SDM Vol. 3A 3.4.5): 64-bit code (L=1, P, DPL 0,
    /// execute/read), flat 4 GiB data (G, D/B, P, read/write), the low half of a
    /// busy 64-bit TSS of 0x68 bytes at 0, its (zero) high half, and flat
    /// 32-bit code (G, D, P, execute/read).
    pub const GDT_ENTRIES: [u64; 6] = [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x0000_8b00_0000_0067,
        0,
        0x00cf_9b00_0000_ffff,
    ];
}

/// The four guest-state fields of one segment register (SDM 25.4.1).
struct Segment {
    selector: VmcsField16,
    base: VmcsFieldNatural,
    limit: VmcsField32,
    access_rights: VmcsField32,
}

impl Segment {
    fn write<V: VmcsAccess>(
        &self,
        vmcs: &mut V,
        selector: u16,
        base: u64,
        limit: u32,
        ar: u32,
    ) -> Result<(), VmFail> {
        vmcs.set(self.selector, selector)?;
        vmcs.set(self.base, base)?;
        vmcs.set(self.limit, limit)?;
        vmcs.set(self.access_rights, ar)
    }
}

macro_rules! segment {
    ($name:ident, $sel:ident, $base:ident, $limit:ident, $ar:ident) => {
        const $name: Segment = Segment {
            selector: $sel,
            base: $base,
            limit: $limit,
            access_rights: $ar,
        };
    };
}
segment!(
    ES,
    GUEST_ES_SELECTOR,
    GUEST_ES_BASE,
    GUEST_ES_LIMIT,
    GUEST_ES_AR_BYTES
);
segment!(
    CS,
    GUEST_CS_SELECTOR,
    GUEST_CS_BASE,
    GUEST_CS_LIMIT,
    GUEST_CS_AR_BYTES
);
segment!(
    SS,
    GUEST_SS_SELECTOR,
    GUEST_SS_BASE,
    GUEST_SS_LIMIT,
    GUEST_SS_AR_BYTES
);
segment!(
    DS,
    GUEST_DS_SELECTOR,
    GUEST_DS_BASE,
    GUEST_DS_LIMIT,
    GUEST_DS_AR_BYTES
);
segment!(
    FS,
    GUEST_FS_SELECTOR,
    GUEST_FS_BASE,
    GUEST_FS_LIMIT,
    GUEST_FS_AR_BYTES
);
segment!(
    GS,
    GUEST_GS_SELECTOR,
    GUEST_GS_BASE,
    GUEST_GS_LIMIT,
    GUEST_GS_AR_BYTES
);
segment!(
    TR,
    GUEST_TR_SELECTOR,
    GUEST_TR_BASE,
    GUEST_TR_LIMIT,
    GUEST_TR_AR_BYTES
);
segment!(
    LDTR,
    GUEST_LDTR_SELECTOR,
    GUEST_LDTR_BASE,
    GUEST_LDTR_LIMIT,
    GUEST_LDTR_AR_BYTES
);

/// CR0 at reset as the guest sees it: ET, plus PE|PG|NE for long mode.
const CR0_ET: u64 = 1 << 4;
const CR0_PE_NE_PG: u64 = (1 << 0) | (1 << 5) | (1 << 31);
const CR0_PE_NE: u64 = (1 << 0) | (1 << 5);
const CR4_PAE: u64 = 1 << 5;
const EFER_LME_LMA_NXE: u64 = (1 << 8) | (1 << 10) | (1 << 11);
/// Power-on PAT value (SDM 11.12.4).
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;

/// Real-mode CS for `entry`: the segment whose 64 KiB window holds the entry
/// with the largest possible base (selector = entry / 16 rounded down to a
/// multiple of 0x1000), so every entry below 1 MiB is reachable. Returns
/// (selector, base, ip).
pub fn real_mode_cs(entry: u64) -> (u16, u64, u64) {
    let selector = ((entry >> 4) & 0xF000) as u16;
    let base = u64::from(selector) << 4;
    (selector, base, entry - base)
}

/// After [`program`] with [`GuestMode::Real16`]: the state a start-up IPI
/// with `vector` gives an application processor in wait-for-SIPI (SDM
/// Vol. 3A 9.4.4.1, 11.6.1): CS selector `vector << 8`, base
/// `vector << 12`, IP 0.
pub fn start_up<V: VmcsAccess>(vmcs: &mut V, vector: u8) -> Result<(), VmFail> {
    let selector = u16::from(vector) << 8;
    CS.write(vmcs, selector, u64::from(selector) << 4, 0xffff, ar::CODE16)?;
    vmcs.set(GUEST_RIP, 0)
}

/// Writes every control, host-state and guest-state field of a new vCPU.
pub fn program<V: VmcsAccess>(
    vmcs: &mut V,
    setup: &VmxSetup,
    host: &HostState,
    guest: &GuestStart,
) -> Result<(), VmFail> {
    let real = guest.mode == GuestMode::Real16;
    let protected32 = guest.mode == GuestMode::Protected32;
    // Controls (SDM 25.6-25.8).
    vmcs.set(PIN_BASED_VM_EXEC_CONTROL, setup.pin)?;
    vmcs.set(CPU_BASED_VM_EXEC_CONTROL, setup.primary)?;
    vmcs.set(SECONDARY_VM_EXEC_CONTROL, setup.secondary)?;
    vmcs.set(VM_EXIT_CONTROLS, setup.exit)?;
    vmcs.set(
        VM_ENTRY_CONTROLS,
        setup.entry_controls(!real && !protected32),
    )?;
    vmcs.set(EXCEPTION_BITMAP, 0)?;
    vmcs.set(CR3_TARGET_COUNT, 0)?;
    vmcs.set(VM_EXIT_MSR_STORE_COUNT, 0)?;
    vmcs.set(VM_EXIT_MSR_LOAD_COUNT, 0)?;
    vmcs.set(VM_ENTRY_MSR_LOAD_COUNT, 0)?;
    vmcs.set(VM_ENTRY_INTR_INFO, 0)?;
    vmcs.set(EPT_POINTER, guest.eptp)?;
    if setup.optional.vpid {
        vmcs.set(VIRTUAL_PROCESSOR_ID, guest.vpid)?;
    }
    vmcs.set(MSR_BITMAP, guest.msr_bitmap)?;
    if setup.optional.tpr_shadow {
        // MOV CR8 reads and writes the virtual-APIC page's VTPR; threshold 0
        // never exits (SDM 30.1.2, 27.2.1.1).
        vmcs.set(VIRTUAL_APIC_PAGE_ADDR, guest.virtual_apic)?;
        vmcs.set(TPR_THRESHOLD, 0)?;
    }
    vmcs.set(VMCS_LINK_POINTER, VMCS_LINK_POINTER_NONE)?;
    vmcs.set(CR0_GUEST_HOST_MASK, setup.cr0_mask)?;
    vmcs.set(CR4_GUEST_HOST_MASK, setup.cr4_mask)?;

    // Host state (SDM 25.5, 26.2.2-26.2.4).
    vmcs.set(HOST_CR0, host.cr0)?;
    vmcs.set(HOST_CR3, host.cr3)?;
    vmcs.set(HOST_CR4, host.cr4)?;
    vmcs.set(HOST_CS_SELECTOR, host.cs)?;
    vmcs.set(HOST_SS_SELECTOR, host.ds)?;
    vmcs.set(HOST_DS_SELECTOR, host.ds)?;
    vmcs.set(HOST_ES_SELECTOR, host.ds)?;
    vmcs.set(HOST_FS_SELECTOR, 0)?;
    vmcs.set(HOST_GS_SELECTOR, 0)?;
    vmcs.set(HOST_TR_SELECTOR, host.tr)?;
    vmcs.set(HOST_FS_BASE, host.fs_base)?;
    vmcs.set(HOST_GS_BASE, host.gs_base)?;
    vmcs.set(HOST_TR_BASE, host.tr_base)?;
    vmcs.set(HOST_GDTR_BASE, host.gdtr_base)?;
    vmcs.set(HOST_IDTR_BASE, host.idtr_base)?;
    vmcs.set(HOST_IA32_SYSENTER_CS, 0)?;
    vmcs.set(HOST_IA32_SYSENTER_ESP, 0)?;
    vmcs.set(HOST_IA32_SYSENTER_EIP, 0)?;
    vmcs.set(HOST_IA32_EFER, host.efer)?;
    vmcs.set(HOST_IA32_PAT, host.pat)?;
    vmcs.set(HOST_RIP, host.rip)?;

    // Guest state (SDM 25.4, checks in 27.3.1).
    let (cr0, cr4, efer) = if real {
        (CR0_ET, 0, 0)
    } else if protected32 {
        (CR0_ET | CR0_PE_NE, 0, 0)
    } else {
        (CR0_ET | CR0_PE_NE_PG, CR4_PAE, EFER_LME_LMA_NXE)
    };
    vmcs.set(GUEST_CR0, setup.hardware_cr0(cr0))?;
    vmcs.set(CR0_READ_SHADOW, cr0)?;
    vmcs.set(GUEST_CR4, setup.hardware_cr4(cr4))?;
    vmcs.set(CR4_READ_SHADOW, cr4)?;
    vmcs.set(GUEST_IA32_EFER, efer)?;
    let rip = if real {
        let (selector, base, ip) = real_mode_cs(guest.entry);
        for seg in [&ES, &SS, &DS, &FS, &GS] {
            seg.write(vmcs, 0, 0, 0xffff, ar::DATA16)?;
        }
        CS.write(vmcs, selector, base, 0xffff, ar::CODE16)?;
        TR.write(vmcs, 0, 0, 0xffff, ar::TSS_BUSY)?;
        LDTR.write(vmcs, 0, 0, 0, ar::UNUSABLE)?;
        vmcs.set(GUEST_CR3, 0)?;
        vmcs.set(GUEST_GDTR_BASE, 0)?;
        vmcs.set(GUEST_GDTR_LIMIT, 0xffff)?;
        // The real-mode interrupt vector table at 0.
        vmcs.set(GUEST_IDTR_BASE, 0)?;
        vmcs.set(GUEST_IDTR_LIMIT, 0x3ff)?;
        ip
    } else if protected32 {
        // Multiboot: 32-bit protected mode, flat segments, paging off.
        for seg in [&ES, &SS, &DS, &FS, &GS] {
            seg.write(vmcs, selectors::DATA, 0, 0xffff_ffff, ar::DATA32)?;
        }
        CS.write(vmcs, selectors::CODE32, 0, 0xffff_ffff, ar::CODE32)?;
        TR.write(vmcs, selectors::TSS, 0, 0x67, ar::TSS_BUSY)?;
        LDTR.write(vmcs, 0, 0, 0, ar::UNUSABLE)?;
        vmcs.set(GUEST_CR3, 0)?;
        vmcs.set(GUEST_GDTR_BASE, layout::GDT)?;
        vmcs.set(
            GUEST_GDTR_LIMIT,
            (selectors::GDT_ENTRIES.len() * 8 - 1) as u32,
        )?;
        vmcs.set(GUEST_IDTR_BASE, 0)?;
        vmcs.set(GUEST_IDTR_LIMIT, 0)?;
        guest.entry
    } else {
        for seg in [&ES, &SS, &DS, &FS, &GS] {
            seg.write(vmcs, selectors::DATA, 0, 0xffff_ffff, ar::DATA32)?;
        }
        CS.write(vmcs, selectors::CODE, 0, 0xffff_ffff, ar::CODE64)?;
        TR.write(vmcs, selectors::TSS, 0, 0x67, ar::TSS_BUSY)?;
        LDTR.write(vmcs, 0, 0, 0, ar::UNUSABLE)?;
        vmcs.set(GUEST_CR3, layout::PML4)?;
        vmcs.set(GUEST_GDTR_BASE, layout::GDT)?;
        vmcs.set(
            GUEST_GDTR_LIMIT,
            (selectors::GDT_ENTRIES.len() * 8 - 1) as u32,
        )?;
        vmcs.set(GUEST_IDTR_BASE, 0)?;
        vmcs.set(GUEST_IDTR_LIMIT, 0)?;
        guest.entry
    };
    vmcs.set(GUEST_DR7, 0x400)?;
    vmcs.set(GUEST_RSP, 0)?;
    vmcs.set(GUEST_RIP, rip)?;
    vmcs.set(GUEST_RFLAGS, 0x2)?;
    vmcs.set(GUEST_PENDING_DBG_EXCEPTIONS, 0)?;
    vmcs.set(GUEST_INTERRUPTIBILITY_INFO, 0)?;
    vmcs.set(GUEST_ACTIVITY_STATE, 0)?;
    vmcs.set(GUEST_SYSENTER_CS, 0)?;
    vmcs.set(GUEST_SYSENTER_ESP, 0)?;
    vmcs.set(GUEST_SYSENTER_EIP, 0)?;
    vmcs.set(GUEST_IA32_DEBUGCTL, 0)?;
    vmcs.set(GUEST_IA32_PAT, PAT_RESET)
}

/// The page tables and GDT a 64-bit guest starts with, as (guest-physical
/// address, 8-byte value) pairs inside [`layout::BOOT_RESERVED`]: an identity
/// map of the first 4 GiB with 2 MiB pages (PML4 -> PDPT -> four PDs).
pub fn long_mode_boot_words() -> impl Iterator<Item = (u64, u64)> {
    const P_RW: u64 = 0b11;
    const PS: u64 = 1 << 7;
    let gdt = selectors::GDT_ENTRIES
        .into_iter()
        .enumerate()
        .map(|(i, d)| (layout::GDT + i as u64 * 8, d));
    let pml4 = core::iter::once((layout::PML4, layout::PDPT | P_RW));
    let pdpt = (0..4u64).map(|pd| (layout::PDPT + pd * 8, (layout::PD0 + pd * 0x1000) | P_RW));
    let pds = (0..4u64).flat_map(|pd| {
        (0..512u64).map(move |i| {
            (
                layout::PD0 + pd * 0x1000 + i * 8,
                (pd << 30) | (i << 21) | P_RW | PS,
            )
        })
    });
    gdt.chain(pml4).chain(pdpt).chain(pds)
}

#[cfg(test)]
mod tests {
    use super::super::testcaps::*;
    use super::super::{HostFeatures, VmxSetup};
    use super::*;
    use vmx::FakeVmcs;

    fn setup() -> VmxSetup {
        VmxSetup::from_caps(
            &bochs(),
            HostFeatures {
                xcr0_supported: 7,
                phys_addr_bits: 40,
            },
        )
        .unwrap()
    }

    fn start(mode: GuestMode, entry: u64) -> GuestStart {
        GuestStart {
            mode,
            entry,
            eptp: 0x5000_001e,
            vpid: 3,
            msr_bitmap: 0x7000,
            virtual_apic: 0x8000,
        }
    }

    #[test]
    fn long_mode_guest_fields() {
        let s = setup();
        let mut v = FakeVmcs::new();
        program(
            &mut v,
            &s,
            &HostState {
                rip: 0xffff_8000_0000_1000,
                ..Default::default()
            },
            &start(GuestMode::Long64, 0x10_0000),
        )
        .unwrap();
        assert_eq!(v.get(GUEST_RIP), Ok(0x10_0000));
        assert_eq!(v.get(CR0_READ_SHADOW), Ok(0x8000_0031));
        assert_eq!(v.get(GUEST_CR0), Ok(0x8000_0031));
        assert_eq!(v.get(CR4_READ_SHADOW), Ok(0x20), "VMXE hidden");
        assert_eq!(v.get(GUEST_CR4), Ok(0x2020));
        assert_eq!(v.get(GUEST_CR3), Ok(layout::PML4));
        assert_eq!(v.get(GUEST_IA32_EFER), Ok(0xd00));
        assert_eq!(v.get(VM_ENTRY_CONTROLS), Ok(s.entry_controls(true)));
        assert_eq!(v.get(MSR_BITMAP), Ok(0x7000));
        assert_eq!(v.get(VIRTUAL_APIC_PAGE_ADDR), Ok(0x8000));
        assert_eq!(v.get(TPR_THRESHOLD), Ok(0));
        assert_eq!(v.get(VIRTUAL_PROCESSOR_ID), Ok(3));
        assert_eq!(v.get(CR0_GUEST_HOST_MASK), Ok(s.cr0_mask));
        assert_eq!(v.get(GUEST_CS_AR_BYTES), Ok(ar::CODE64));
        assert_eq!(v.get(HOST_RIP), Ok(0xffff_8000_0000_1000));
    }

    #[test]
    fn protected_mode_start_for_multiboot() {
        let s = setup();
        let mut v = FakeVmcs::new();
        program(
            &mut v,
            &s,
            &HostState::default(),
            &start(GuestMode::Protected32, 0x10_0000),
        )
        .unwrap();
        assert_eq!(v.get(CR0_READ_SHADOW), Ok(0x31), "PE, ET, NE; paging off");
        assert_eq!(v.get(GUEST_CR0), Ok(0x31));
        assert_eq!(v.get(GUEST_IA32_EFER), Ok(0));
        assert_eq!(v.get(VM_ENTRY_CONTROLS), Ok(s.entry_controls(false)));
        assert_eq!(v.get(GUEST_CS_SELECTOR), Ok(selectors::CODE32));
        assert_eq!(v.get(GUEST_CS_AR_BYTES), Ok(ar::CODE32));
        assert_eq!(v.get(GUEST_RIP), Ok(0x10_0000));
        // The descriptor behind the selector matches the hidden state.
        assert_eq!(
            selectors::GDT_ENTRIES[usize::from(selectors::CODE32 >> 3)] >> 40 & 0xf0ff,
            u64::from(ar::CODE32)
        );
    }

    #[test]
    fn real_mode_cs_reaches_every_entry_below_1mib() {
        assert_eq!(real_mode_cs(0x7c00), (0, 0, 0x7c00));
        assert_eq!(real_mode_cs(0x20000), (0x2000, 0x20000, 0));
        assert_eq!(real_mode_cs(0xFFF00), (0xF000, 0xF0000, 0xFF00));
        for entry in (0..0x10_0000u64).step_by(0x1234) {
            let (sel, base, ip) = real_mode_cs(entry);
            assert!(ip <= 0xFFFF && base + ip == entry && u64::from(sel) << 4 == base);
        }
        let s = setup();
        let mut v = FakeVmcs::new();
        program(
            &mut v,
            &s,
            &HostState::default(),
            &start(GuestMode::Real16, 0xFFF00),
        )
        .unwrap();
        assert_eq!(v.get(GUEST_CS_SELECTOR), Ok(0xF000));
        assert_eq!(v.get(GUEST_CS_BASE), Ok(0xF0000));
        assert_eq!(v.get(GUEST_RIP), Ok(0xFF00));
        assert_eq!(v.get(VM_ENTRY_CONTROLS), Ok(s.entry_controls(false)));
        assert_eq!(v.get(CR0_READ_SHADOW), Ok(0x10));
    }

    #[test]
    fn without_vpid_or_tpr_shadow_fields_are_not_written() {
        use vmx::msr;
        let caps = without(
            msr::IA32_VMX_PROCBASED_CTLS2,
            vmx::SecondaryControls::ENABLE_VPID.bits() as u64,
        );
        let s = VmxSetup::from_caps(&caps, HostFeatures::default()).unwrap();
        let mut v = FakeVmcs::new();
        program(
            &mut v,
            &s,
            &HostState::default(),
            &start(GuestMode::Long64, 0x10_0000),
        )
        .unwrap();
        assert!(
            v.get(VIRTUAL_PROCESSOR_ID).is_err(),
            "VPID field left alone"
        );
        let caps = without(
            msr::IA32_VMX_TRUE_PROCBASED_CTLS,
            vmx::PrimaryControls::USE_TPR_SHADOW.bits() as u64,
        );
        let s = VmxSetup::from_caps(&caps, HostFeatures::default()).unwrap();
        let mut v = FakeVmcs::new();
        program(
            &mut v,
            &s,
            &HostState::default(),
            &start(GuestMode::Long64, 0x10_0000),
        )
        .unwrap();
        assert!(v.get(VIRTUAL_APIC_PAGE_ADDR).is_err());
    }

    #[test]
    fn boot_words_stay_in_the_reserved_range() {
        let words: alloc::vec::Vec<_> = long_mode_boot_words().collect();
        assert_eq!(words.len(), 6 + 1 + 4 + 4 * 512);
        for (gpa, _) in &words {
            assert!(
                layout::BOOT_RESERVED.contains(gpa) && layout::BOOT_RESERVED.contains(&(gpa + 7))
            );
        }
        assert!(words.contains(&(layout::PD0 + 0x1000 + 8, (1 << 30) | (1 << 21) | 0x83)));
    }
}
