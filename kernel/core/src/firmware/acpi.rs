//! Per-VM ACPI tables, built from the VM's configuration (ACPI
//! Specification 6.5, chapter 5.2), in one blob the hypervisor copies into
//! guest memory.
//!
//! # What the guest gets
//!
//! | table | section | contents |
//! |-------|---------|----------|
//! | RSDP | 5.2.5.3 | revision 2 (36 bytes, both checksums), RSDT and XSDT addresses |
//! | RSDT | 5.2.7 | FADT and MADT, 32-bit pointers (for parsers that ignore the XSDT; left out, with a zero RSDT address, when the blob is not below 4 GiB) |
//! | XSDT | 5.2.8 | FADT and MADT, 64-bit pointers |
//! | FADT | 5.2.9 | revision 6.5, 276 bytes, hardware-reduced ACPI, DSDT and X_DSDT, reset register, PM timer (optional) |
//! | DSDT | 5.2.11.1 | `\_SB.COM1`: the 16550 at 0x3F8-0x3FF on IRQ 4 |
//! | MADT | 5.2.12 | the vCPUs' local APICs, the I/O APIC, the ISA timer override, LINT1 as NMI |
//!
//! Every table starts with the system description header (5.2.6) and sums to
//! 0 mod 256. There is no FACS: with HW_REDUCED_ACPI set and FIRMWARE_CTRL
//! and X_FIRMWARE_CTRL zero, OSPM expects none (5.2.9, 5.2.10).
//!
//! # Layout of the blob
//!
//! At `base_gpa` (16-byte aligned): the RSDP first, so a guest finds it by
//! the legacy scan of 0xE0000-0xFFFFF on 16-byte boundaries (5.2.5.1) when
//! the blob is there ([`DEFAULT_BASE`]); then the RSDT, XSDT, FADT, DSDT and
//! MADT, each at the next 8-byte boundary. Addresses in the tables are
//! `base_gpa` + offset. A blob starting below 1 MiB must end at or below
//! 1 MiB, inside the area the legacy scan covers. For up to [`MAX_VCPUS`]
//! vCPUs the blob stays under 4 KiB with APIC IDs below 255 and under
//! 8 KiB with any IDs.
//!
//! # Choices
//!
//! - Hardware-reduced ACPI (FADT flag bit 20): no SCI, PM1 or GPE blocks,
//!   no FACS; Linux then also skips the 8259 and the PIT as its timer (it
//!   needs the local APIC timer), so the MADT's PCAT_COMPAT flag is 0 too:
//!   the guest should not use the 8259.
//! - The PM timer ([`AcpiConfig::pm_timer_port`], the model is
//!   [`crate::devices::pmtimer`]) despite HW_REDUCED_ACPI: Linux reads
//!   X_PM_TMR_BLK (System I/O) or PM_TMR_BLK from the FADT regardless
//!   (`acpi_parse_fadt`) and calibrates the TSC against it, which it needs
//!   where CPUID does not give the TSC frequency (AMD) and the PIT is not
//!   used; it is also a clocksource. When set: PM_TMR_BLK = the port,
//!   PM_TMR_LEN = 4, X_PM_TMR_BLK = a System I/O GAS (32 bits wide, dword
//!   access) at the port, and the TMR_VAL_EXT flag (a 32-bit counter).
//!   Without it, those fields are zero and the flag clear.
//! - IAPC_BOOT_ARCH (5.2.9.3): no LEGACY_DEVICES (no ISA devices to
//!   enumerate beyond those described here), 8042 present (every VM has the
//!   i8042 model of [`crate::devices::pc`], so Linux probes it directly),
//!   VGA not present, MSI not supported (there is no PCI bus), CMOS RTC
//!   present ([`crate::devices::cmos`]).
//! - FADT flags: WBINVD, PROC_C1 (HLT), PWR_BUTTON and SLP_BUTTON (no fixed
//!   buttons), RESET_REG_SUP with the reset register at I/O port 0xCF9,
//!   value 0x06 (the reset control register of [`crate::devices::chipset`]).
//! - Processors are listed as Processor Local APIC structures while their
//!   APIC ID is below 255 and as Processor Local x2APIC structures from 255
//!   on, as 5.2.12.12 requires (and Linux expects: it ignores x2APIC
//!   structures with an ID below 255 when Local APIC structures exist). The
//!   ACPI processor UID of vCPU `i` is `i`. The DSDT declares no processor
//!   objects: Linux needs the MADT only.
//! - The ISA timer (IRQ 0) is connected to GSI 2, edge/active high, as on
//!   PC chipsets; every other ISA IRQ is identity-mapped, active high and
//!   edge, so it needs no override. Overrides come with an I/O APIC only.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::devices::ioapic::IOAPIC_BASE;

/// Where the hypervisor places the blob: the start of the legacy RSDP
/// search area (ACPI 5.2.5.1: 0xE0000-0xFFFFF).
pub const DEFAULT_BASE: u64 = 0xE_0000;
/// The legacy RSDP search area.
pub const RSDP_SEARCH_AREA: Range<u64> = 0xE_0000..0x10_0000;
/// A blob starting below this address must end at or below it.
pub const LEGACY_LIMIT: u64 = 0x10_0000;
/// Most vCPUs a VM's tables describe.
pub const MAX_VCPUS: usize = 255;
/// Highest APIC ID listed in a Processor Local APIC structure (0xFF is the
/// xAPIC broadcast).
pub const MAX_XAPIC_ID: u32 = 254;

/// RSDP signature (5.2.5.3).
pub const RSDP_SIGNATURE: [u8; 8] = *b"RSD PTR ";
/// RSDP revision: 2 for ACPI 2.0 and later (XSDT address, length, extended
/// checksum).
pub const RSDP_REVISION: u8 = 2;
/// Length of a revision 2 RSDP.
pub const RSDP_LEN: usize = 36;
/// Bytes the first RSDP checksum covers (the ACPI 1.0 structure).
pub const RSDP_V1_LEN: usize = 20;
/// Length of the system description header (5.2.6).
pub const HEADER_LEN: usize = 36;

/// RSDT signature and revision (5.2.7).
pub const RSDT_SIGNATURE: [u8; 4] = *b"RSDT";
/// RSDT revision.
pub const RSDT_REVISION: u8 = 1;
/// XSDT signature (5.2.8).
pub const XSDT_SIGNATURE: [u8; 4] = *b"XSDT";
/// XSDT revision.
pub const XSDT_REVISION: u8 = 1;
/// FADT signature (5.2.9).
pub const FADT_SIGNATURE: [u8; 4] = *b"FACP";
/// FADT major version (ACPI 6.x).
pub const FADT_REVISION: u8 = 6;
/// FADT minor version (bits 3:0 the ACPI minor version 6.5, errata 0).
pub const FADT_MINOR_VERSION: u8 = 5;
/// Length of a revision 6 FADT.
pub const FADT_LEN: usize = 276;
/// DSDT signature (5.2.11.1).
pub const DSDT_SIGNATURE: [u8; 4] = *b"DSDT";
/// DSDT revision: 2 and up for 64-bit AML integers.
pub const DSDT_REVISION: u8 = 2;
/// MADT signature (5.2.12).
pub const MADT_SIGNATURE: [u8; 4] = *b"APIC";
/// MADT revision of ACPI 6.5.
pub const MADT_REVISION: u8 = 6;
/// Local APIC address in the MADT (the architectural default).
pub const LOCAL_APIC_ADDRESS: u32 = 0xFEE0_0000;

/// Creator ID in every header (the "ASL compiler vendor": this builder).
pub const CREATOR_ID: [u8; 4] = *b"RSHV";
/// Creator revision.
pub const CREATOR_REVISION: u32 = 1;
/// OEM revision of every table.
pub const OEM_REVISION: u32 = 1;
/// FADT Hypervisor Vendor Identity (offset 268).
pub const HYPERVISOR_VENDOR: [u8; 8] = *b"RustBrHv";

/// FADT Flags (5.2.9, Table 5.10).
pub mod fadt_flags {
    /// WBINVD works (required of x86 platforms).
    pub const WBINVD: u32 = 1 << 0;
    /// C1 (HLT) supported on every processor.
    pub const PROC_C1: u32 = 1 << 2;
    /// The power button, if any, is a control-method device.
    pub const PWR_BUTTON: u32 = 1 << 4;
    /// The sleep button, if any, is a control-method device.
    pub const SLP_BUTTON: u32 = 1 << 5;
    /// The PM timer counter is 32 bits wide (else 24).
    pub const TMR_VAL_EXT: u32 = 1 << 8;
    /// RESET_REG and RESET_VALUE are valid.
    pub const RESET_REG_SUP: u32 = 1 << 10;
    /// Hardware-reduced ACPI: no fixed hardware (PM timer, SCI, PM1, GPE).
    pub const HW_REDUCED_ACPI: u32 = 1 << 20;
}

/// FADT IA-PC Boot Architecture Flags (5.2.9.3, Table 5.11).
pub mod boot_arch {
    /// ISA/LPC devices the OS must enumerate itself.
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    /// An 8042 keyboard controller (ports 0x60/0x64).
    pub const I8042: u16 = 1 << 1;
    /// Do not probe VGA.
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
    /// Do not enable MSI.
    pub const MSI_NOT_SUPPORTED: u16 = 1 << 3;
    /// Do not enable PCIe ASPM.
    pub const PCIE_ASPM_CONTROLS: u16 = 1 << 4;
    /// No CMOS RTC at ports 0x70/0x71.
    pub const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
}

/// MADT interrupt controller structure types (5.2.12, Table 5.21).
pub mod madt_type {
    /// Processor Local APIC (5.2.12.2), 8 bytes.
    pub const LOCAL_APIC: u8 = 0;
    /// I/O APIC (5.2.12.3), 12 bytes.
    pub const IO_APIC: u8 = 1;
    /// Interrupt Source Override (5.2.12.5), 10 bytes.
    pub const INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
    /// Local APIC NMI (5.2.12.7), 6 bytes.
    pub const LOCAL_APIC_NMI: u8 = 4;
    /// Processor Local x2APIC (5.2.12.12), 16 bytes.
    pub const LOCAL_X2APIC: u8 = 9;
    /// Local x2APIC NMI (5.2.12.13), 12 bytes.
    pub const LOCAL_X2APIC_NMI: u8 = 0x0A;
}

/// Local APIC flags: Enabled (5.2.12.2, Table 5.23).
pub const LAPIC_ENABLED: u32 = 1 << 0;
/// MPS INTI flags of the timer override: active high (bits 1:0 = 01), edge
/// (bits 3:2 = 01) (5.2.12.5, Table 5.26).
pub const INTI_EDGE_HIGH: u16 = 0b0101;
/// ISA IRQ of the timer.
pub const ISA_TIMER_IRQ: u8 = 0;
/// GSI the ISA timer is connected to.
pub const TIMER_GSI: u32 = 2;
/// Local APIC input the NMI is wired to (LINT1).
pub const NMI_LINT: u8 = 1;
/// ACPI processor UID meaning every processor in a Local APIC NMI structure.
pub const ALL_PROCESSORS_UID: u8 = 0xFF;
/// The same for a Local x2APIC NMI structure.
pub const ALL_PROCESSORS_X2UID: u32 = 0xFFFF_FFFF;

/// Reset register (FADT RESET_REG): the reset control register.
pub const RESET_PORT: u16 = 0xCF9;
/// Value written to it: full reset (SYS_RST | RST_CPU).
pub const RESET_VALUE: u8 = 0x06;

/// The I/O APIC of a VM, for the MADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicEntry {
    /// Its APIC ID.
    pub id: u8,
    /// Guest-physical address of its register window.
    pub address: u32,
    /// Global system interrupt of its pin 0.
    pub gsi_base: u32,
}

impl IoApicEntry {
    /// The PC I/O APIC: at [`IOAPIC_BASE`], GSIs from 0.
    pub const fn pc(id: u8) -> Self {
        IoApicEntry {
            id,
            address: IOAPIC_BASE as u32,
            gsi_base: 0,
        }
    }
}

/// What the tables describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiConfig<'a> {
    /// The APIC ID of each vCPU, boot processor first (vCPU `i` gets ACPI
    /// processor UID `i`).
    pub apic_ids: &'a [u32],
    /// The I/O APIC, if the VM has one.
    pub ioapic: Option<IoApicEntry>,
    /// OEM ID in the RSDP and every header.
    pub oem_id: [u8; 6],
    /// OEM table ID in every header.
    pub oem_table_id: [u8; 8],
    /// The first I/O port of the VM's ACPI PM timer, if it has one
    /// ([`crate::devices::pmtimer::PmTimer`], usually at
    /// [`crate::devices::pmtimer::PM_TIMER_PORT`]): the FADT then
    /// describes it (PM_TMR_BLK, PM_TMR_LEN, X_PM_TMR_BLK, TMR_VAL_EXT).
    pub pm_timer_port: Option<u16>,
}

/// The tables, ready to copy into the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// Guest-physical address of the first byte (the `base_gpa` given).
    pub gpa: u64,
    /// The blob.
    pub bytes: Vec<u8>,
    /// Guest-physical address of the RSDP (= `gpa`).
    pub rsdp_gpa: u64,
}

impl AcpiTables {
    /// The guest-physical range the blob occupies.
    pub fn range(&self) -> Range<u64> {
        self.gpa..self.gpa + self.bytes.len() as u64
    }
}

/// Why tables cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// The VM has no vCPU.
    NoVcpus,
    /// More vCPUs than the tables describe.
    TooManyVcpus {
        /// vCPUs asked for.
        count: usize,
        /// [`MAX_VCPUS`].
        max: usize,
    },
    /// Two vCPUs have the same APIC ID.
    DuplicateApicId {
        /// The ID.
        id: u32,
    },
    /// An APIC ID no processor can have (0xFFFFFFFF, the x2APIC broadcast).
    InvalidApicId {
        /// The ID.
        id: u32,
    },
    /// The base is not 16-byte aligned (the RSDP must be).
    MisalignedBase {
        /// The base.
        base: u64,
    },
    /// The blob starts below 1 MiB but does not end there.
    CrossesLegacyLimit {
        /// Its first byte.
        base: u64,
        /// One past its last byte.
        end: u64,
    },
    /// The blob would end past the top of the address space.
    AddressOverflow {
        /// Its first byte.
        base: u64,
        /// Its length.
        len: u64,
    },
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoVcpus => write!(f, "ACPI tables need at least one vCPU"),
            Self::TooManyVcpus { count, max } => {
                write!(f, "{count} vCPUs, the ACPI tables describe at most {max}")
            }
            Self::DuplicateApicId { id } => {
                write!(f, "two vCPUs have APIC ID {id}")
            }
            Self::InvalidApicId { id } => write!(f, "APIC ID {id:#x} is the broadcast ID"),
            Self::MisalignedBase { base } => {
                write!(f, "ACPI tables at {base:#x}: the RSDP must be 16-byte aligned")
            }
            Self::CrossesLegacyLimit { base, end } => write!(
                f,
                "ACPI tables at {base:#x}..{end:#x} cross 1 MiB (the legacy RSDP search area ends there)"
            ),
            Self::AddressOverflow { base, len } => {
                write!(f, "ACPI tables of {len} bytes at {base:#x} overflow the address space")
            }
        }
    }
}

/// Builds the tables of a VM described by `cfg` for guest-physical address
/// `base_gpa`, the RSDP first.
pub fn build(base_gpa: u64, cfg: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    check(base_gpa, cfg)?;
    let dsdt = dsdt(cfg);
    let madt = madt(cfg);
    const ENTRIES: usize = 2; // FADT, MADT
    let rsdt_len = HEADER_LEN + 4 * ENTRIES;
    let xsdt_len = HEADER_LEN + 8 * ENTRIES;
    // Offsets with an RSDT; the blob is the same size without one (the
    // slot is then left zero), which keeps the layout independent of it.
    let rsdt_off = align8(RSDP_LEN);
    let xsdt_off = align8(rsdt_off + rsdt_len);
    let fadt_off = align8(xsdt_off + xsdt_len);
    let dsdt_off = align8(fadt_off + FADT_LEN);
    let madt_off = align8(dsdt_off + dsdt.len());
    let len = madt_off + madt.len();
    let end = base_gpa
        .checked_add(len as u64)
        .ok_or(AcpiError::AddressOverflow {
            base: base_gpa,
            len: len as u64,
        })?;
    if base_gpa < LEGACY_LIMIT && end > LEGACY_LIMIT {
        return Err(AcpiError::CrossesLegacyLimit {
            base: base_gpa,
            end,
        });
    }
    let below_4g = end <= 1 << 32;
    let at = |off: usize| base_gpa + off as u64;
    let mut bytes = alloc::vec![0u8; len];
    let fadt = fadt(cfg, at(dsdt_off), below_4g);
    let xsdt = sdt(
        XSDT_SIGNATURE,
        XSDT_REVISION,
        cfg,
        &[at(fadt_off), at(madt_off)],
        8,
    );
    let rsdt_gpa = if below_4g {
        let rsdt = sdt(
            RSDT_SIGNATURE,
            RSDT_REVISION,
            cfg,
            &[at(fadt_off), at(madt_off)],
            4,
        );
        place(&mut bytes, rsdt_off, &rsdt);
        at(rsdt_off)
    } else {
        0
    };
    place(&mut bytes, 0, &rsdp(cfg, rsdt_gpa as u32, at(xsdt_off)));
    place(&mut bytes, xsdt_off, &xsdt);
    place(&mut bytes, fadt_off, &fadt);
    place(&mut bytes, dsdt_off, &dsdt);
    place(&mut bytes, madt_off, &madt);
    Ok(AcpiTables {
        gpa: base_gpa,
        bytes,
        rsdp_gpa: base_gpa,
    })
}

fn check(base_gpa: u64, cfg: &AcpiConfig) -> Result<(), AcpiError> {
    let ids = cfg.apic_ids;
    if ids.is_empty() {
        return Err(AcpiError::NoVcpus);
    }
    if ids.len() > MAX_VCPUS {
        return Err(AcpiError::TooManyVcpus {
            count: ids.len(),
            max: MAX_VCPUS,
        });
    }
    for (i, &id) in ids.iter().enumerate() {
        if id == u32::MAX {
            return Err(AcpiError::InvalidApicId { id });
        }
        if ids[..i].contains(&id) {
            return Err(AcpiError::DuplicateApicId { id });
        }
    }
    if !base_gpa.is_multiple_of(16) {
        return Err(AcpiError::MisalignedBase { base: base_gpa });
    }
    Ok(())
}

fn align8(v: usize) -> usize {
    v.next_multiple_of(8)
}

/// Copies `src` into `dst` at `at` (the layout above sized `dst` for it).
fn place(dst: &mut [u8], at: usize, src: &[u8]) {
    if let Some(d) = dst.get_mut(at..at + src.len()) {
        d.copy_from_slice(src);
    }
}

/// The byte that makes `bytes` (with its checksum byte zero) sum to 0.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// A system description header (5.2.6) with length and checksum 0.
fn header(signature: [u8; 4], revision: u8, cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = Vec::with_capacity(HEADER_LEN);
    t.extend_from_slice(&signature);
    t.extend_from_slice(&0u32.to_le_bytes()); // length, set by `finish`
    t.push(revision);
    t.push(0); // checksum, set by `finish`
    t.extend_from_slice(&cfg.oem_id);
    t.extend_from_slice(&cfg.oem_table_id);
    t.extend_from_slice(&OEM_REVISION.to_le_bytes());
    t.extend_from_slice(&CREATOR_ID);
    t.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
    t
}

/// Sets the header's length and checksum.
fn finish(mut t: Vec<u8>) -> Vec<u8> {
    let len = (t.len() as u32).to_le_bytes();
    t[4..8].copy_from_slice(&len);
    t[9] = 0;
    t[9] = checksum(&t);
    t
}

/// RSDP (5.2.5.3).
fn rsdp(cfg: &AcpiConfig, rsdt: u32, xsdt: u64) -> [u8; RSDP_LEN] {
    let mut r = [0u8; RSDP_LEN];
    r[0..8].copy_from_slice(&RSDP_SIGNATURE);
    r[9..15].copy_from_slice(&cfg.oem_id);
    r[15] = RSDP_REVISION;
    r[16..20].copy_from_slice(&rsdt.to_le_bytes());
    r[20..24].copy_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    r[24..32].copy_from_slice(&xsdt.to_le_bytes());
    r[8] = checksum(&r[..RSDP_V1_LEN]);
    r[32] = checksum(&r);
    r
}

/// RSDT (5.2.7, 4-byte entries) or XSDT (5.2.8, 8-byte entries).
fn sdt(
    signature: [u8; 4],
    revision: u8,
    cfg: &AcpiConfig,
    entries: &[u64],
    width: usize,
) -> Vec<u8> {
    let mut t = header(signature, revision, cfg);
    for e in entries {
        t.extend_from_slice(&e.to_le_bytes()[..width]);
    }
    finish(t)
}

/// FADT field offsets (5.2.9, Table 5.9).
mod fadt_off {
    pub const FIRMWARE_CTRL: usize = 36;
    pub const DSDT: usize = 40;
    pub const PREFERRED_PM_PROFILE: usize = 45;
    pub const SCI_INT: usize = 46;
    pub const PM_TMR_BLK: usize = 76;
    pub const PM_TMR_LEN: usize = 91;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const FLAGS: usize = 112;
    pub const RESET_REG: usize = 116;
    pub const RESET_VALUE: usize = 128;
    pub const MINOR_VERSION: usize = 131;
    pub const X_FIRMWARE_CTRL: usize = 132;
    pub const X_DSDT: usize = 140;
    pub const X_PM_TMR_BLK: usize = 208;
    pub const HYPERVISOR_VENDOR: usize = 268;
}

/// Generic Address Structure (5.2.3.2): address space ID of system I/O.
const GAS_SYSTEM_IO: u8 = 1;
/// Generic Address Structure access size: byte.
const GAS_ACCESS_BYTE: u8 = 1;
/// Generic Address Structure access size: dword.
const GAS_ACCESS_DWORD: u8 = 3;

/// PM_TMR_LEN: the PM timer block's bytes.
pub const PM_TMR_LEN: u8 = 4;

/// A Generic Address Structure (5.2.3.2) of a System I/O register.
fn gas_io(port: u16, bit_width: u8, access_size: u8) -> [u8; 12] {
    let mut gas = [0u8; 12];
    gas[0] = GAS_SYSTEM_IO;
    gas[1] = bit_width;
    gas[2] = 0; // bit offset
    gas[3] = access_size;
    gas[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    gas
}

/// The FADT's IAPC_BOOT_ARCH (see the module documentation).
pub const IAPC_BOOT_ARCH: u16 =
    boot_arch::I8042 | boot_arch::VGA_NOT_PRESENT | boot_arch::MSI_NOT_SUPPORTED;
/// The FADT's Flags (see the module documentation) without a PM timer;
/// with one, [`fadt_flags::TMR_VAL_EXT`] is set too.
pub const FADT_FLAGS: u32 = fadt_flags::WBINVD
    | fadt_flags::PROC_C1
    | fadt_flags::PWR_BUTTON
    | fadt_flags::SLP_BUTTON
    | fadt_flags::RESET_REG_SUP
    | fadt_flags::HW_REDUCED_ACPI;

/// FADT (5.2.9): hardware-reduced, no FACS, so every fixed-hardware block
/// but the PM timer (when the VM has one) is zero; DSDT (when below 4 GiB)
/// and X_DSDT point at the DSDT.
fn fadt(cfg: &AcpiConfig, dsdt: u64, below_4g: bool) -> Vec<u8> {
    let mut t = header(FADT_SIGNATURE, FADT_REVISION, cfg);
    t.resize(FADT_LEN, 0);
    let mut put = |at: usize, b: &[u8]| place(&mut t, at, b);
    put(fadt_off::FIRMWARE_CTRL, &0u32.to_le_bytes());
    let dsdt32 = if below_4g { dsdt as u32 } else { 0 };
    put(fadt_off::DSDT, &dsdt32.to_le_bytes());
    put(fadt_off::PREFERRED_PM_PROFILE, &[0]); // unspecified
    put(fadt_off::SCI_INT, &0u16.to_le_bytes()); // no SCI
    put(fadt_off::IAPC_BOOT_ARCH, &IAPC_BOOT_ARCH.to_le_bytes());
    let mut flags = FADT_FLAGS;
    if let Some(port) = cfg.pm_timer_port {
        flags |= fadt_flags::TMR_VAL_EXT;
        put(fadt_off::PM_TMR_BLK, &u32::from(port).to_le_bytes());
        put(fadt_off::PM_TMR_LEN, &[PM_TMR_LEN]);
        put(
            fadt_off::X_PM_TMR_BLK,
            &gas_io(port, 8 * PM_TMR_LEN, GAS_ACCESS_DWORD),
        );
    }
    put(fadt_off::FLAGS, &flags.to_le_bytes());
    put(fadt_off::RESET_REG, &gas_io(RESET_PORT, 8, GAS_ACCESS_BYTE));
    put(fadt_off::RESET_VALUE, &[RESET_VALUE]);
    put(fadt_off::MINOR_VERSION, &[FADT_MINOR_VERSION]);
    put(fadt_off::X_FIRMWARE_CTRL, &0u64.to_le_bytes());
    put(fadt_off::X_DSDT, &dsdt.to_le_bytes());
    put(fadt_off::HYPERVISOR_VENDOR, &HYPERVISOR_VENDOR);
    finish(t)
}

/// MADT (5.2.12).
fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = header(MADT_SIGNATURE, MADT_REVISION, cfg);
    t.extend_from_slice(&LOCAL_APIC_ADDRESS.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes()); // flags: PCAT_COMPAT clear
    let (mut xapic, mut x2apic) = (false, false);
    for (uid, &id) in cfg.apic_ids.iter().enumerate() {
        if id <= MAX_XAPIC_ID {
            xapic = true;
            // UID < 255: `check` bounds the vCPU count.
            t.extend_from_slice(&[madt_type::LOCAL_APIC, 8, uid as u8, id as u8]);
            t.extend_from_slice(&LAPIC_ENABLED.to_le_bytes());
        } else {
            x2apic = true;
            t.extend_from_slice(&[madt_type::LOCAL_X2APIC, 16, 0, 0]);
            t.extend_from_slice(&id.to_le_bytes());
            t.extend_from_slice(&LAPIC_ENABLED.to_le_bytes());
            t.extend_from_slice(&(uid as u32).to_le_bytes());
        }
    }
    if let Some(io) = cfg.ioapic {
        t.extend_from_slice(&[madt_type::IO_APIC, 12, io.id, 0]);
        t.extend_from_slice(&io.address.to_le_bytes());
        t.extend_from_slice(&io.gsi_base.to_le_bytes());
        t.extend_from_slice(&[madt_type::INTERRUPT_SOURCE_OVERRIDE, 10, 0, ISA_TIMER_IRQ]);
        t.extend_from_slice(&TIMER_GSI.to_le_bytes());
        t.extend_from_slice(&INTI_EDGE_HIGH.to_le_bytes());
    }
    if xapic {
        t.extend_from_slice(&[madt_type::LOCAL_APIC_NMI, 6, ALL_PROCESSORS_UID]);
        t.extend_from_slice(&0u16.to_le_bytes());
        t.push(NMI_LINT);
    }
    if x2apic {
        t.extend_from_slice(&[madt_type::LOCAL_X2APIC_NMI, 12]);
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&ALL_PROCESSORS_X2UID.to_le_bytes());
        t.extend_from_slice(&[NMI_LINT, 0, 0, 0]);
    }
    finish(t)
}

/// DSDT (5.2.11.1) with [`dsdt_aml`] as its definition block.
fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = header(DSDT_SIGNATURE, DSDT_REVISION, cfg);
    t.extend_from_slice(&dsdt_aml());
    finish(t)
}

/// AML encoding (ACPI 6.5 chapter 20) of the few terms the DSDT uses.
mod aml {
    use alloc::vec::Vec;

    pub const ZERO_OP: u8 = 0x00;
    pub const NAME_OP: u8 = 0x08;
    pub const BYTE_PREFIX: u8 = 0x0A;
    pub const DWORD_PREFIX: u8 = 0x0C;
    pub const SCOPE_OP: u8 = 0x10;
    pub const BUFFER_OP: u8 = 0x11;
    pub const EXT_OP_PREFIX: u8 = 0x5B;
    pub const DEVICE_OP: u8 = 0x82;

    /// PkgLength (20.2.4) of a package whose contents after the PkgLength
    /// take `body` bytes: the encoding counts its own bytes. 1 byte up to
    /// 63 in all, else 2-4 bytes (a lead byte with the count in bits 7:6
    /// and the low nibble, then bytes of bits 11:4, 19:12, 27:20). `None`
    /// past the 2^28 limit.
    pub fn pkg_length(body: usize) -> Option<Vec<u8>> {
        if body + 1 < 0x40 {
            return Some(alloc::vec![(body + 1) as u8]);
        }
        for extra in 1..=3usize {
            let total = body + 1 + extra;
            if total < 1 << (4 + 8 * extra) {
                let mut v = alloc::vec![((extra as u8) << 6) | (total & 0xF) as u8];
                for i in 0..extra {
                    v.push((total >> (4 + 8 * i)) as u8);
                }
                return Some(v);
            }
        }
        None
    }

    /// `op` (one or two bytes), a PkgLength, then `body`.
    fn package(op: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = op.to_vec();
        // Bodies here are a few dozen bytes: far below the limit.
        v.extend(pkg_length(body.len()).unwrap_or_default());
        v.extend_from_slice(body);
        v
    }

    /// `Scope (name) { body }` (DefScope, 20.2.5.1).
    pub fn scope(name: &[u8], body: &[u8]) -> Vec<u8> {
        let mut b = name.to_vec();
        b.extend_from_slice(body);
        package(&[SCOPE_OP], &b)
    }

    /// `Device (name) { body }` (DefDevice, 20.2.5.2).
    pub fn device(name: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = name.to_vec();
        b.extend_from_slice(body);
        package(&[EXT_OP_PREFIX, DEVICE_OP], &b)
    }

    /// `Name (name, object)` (DefName, 20.2.5.1) with an encoded object.
    pub fn name(name: [u8; 4], object: &[u8]) -> Vec<u8> {
        let mut v = alloc::vec![NAME_OP];
        v.extend_from_slice(&name);
        v.extend_from_slice(object);
        v
    }

    /// A DWordConst.
    pub fn dword(value: u32) -> Vec<u8> {
        let mut v = alloc::vec![DWORD_PREFIX];
        v.extend_from_slice(&value.to_le_bytes());
        v
    }

    /// `Buffer () { bytes }` (DefBuffer, 20.2.5.4) with a ByteConst size
    /// (for up to 255 bytes).
    pub fn buffer(bytes: &[u8]) -> Vec<u8> {
        let mut b = alloc::vec![BYTE_PREFIX, bytes.len() as u8];
        b.extend_from_slice(bytes);
        package(&[BUFFER_OP], &b)
    }

    /// The compressed EISA ID of a 7-character PNP ID such as "PNP0501"
    /// (ASL `EisaId`, 19.6.35): three letters of 5 bits (`'A'` = 1) and four
    /// hex digits, stored big-endian.
    pub const fn eisa_id(id: &[u8; 7]) -> u32 {
        const fn hex(c: u8) -> u32 {
            match c {
                b'0'..=b'9' => (c - b'0') as u32,
                b'A'..=b'F' => (c - b'A' + 10) as u32,
                _ => 0,
            }
        }
        let letters = ((id[0].wrapping_sub(0x40) as u32 & 0x1F) << 10)
            | ((id[1].wrapping_sub(0x40) as u32 & 0x1F) << 5)
            | (id[2].wrapping_sub(0x40) as u32 & 0x1F);
        let product = (hex(id[3]) << 12) | (hex(id[4]) << 8) | (hex(id[5]) << 4) | hex(id[6]);
        let be = (letters << 16) | product;
        be.swap_bytes()
    }
}

/// COM1's I/O ports.
pub const COM1_PORTS: Range<u16> = 0x3F8..0x400;
/// COM1's ISA IRQ.
pub const COM1_IRQ: u8 = 4;

/// COM1's resources (6.4, resource data types): an I/O port descriptor
/// (6.4.2.5: 16-bit decode, 0x3F8, alignment 1, 8 ports), an IRQ descriptor
/// without flags (6.4.2.1: IRQ 4, edge, active high), the end tag (6.4.2.9,
/// checksum 0 meaning "treat as correct").
fn com1_resources() -> Vec<u8> {
    let base = COM1_PORTS.start.to_le_bytes();
    let len = (COM1_PORTS.end - COM1_PORTS.start) as u8;
    let irq_mask = (1u16 << COM1_IRQ).to_le_bytes();
    let mut r = alloc::vec![0x47, 0x01, base[0], base[1], base[0], base[1], 0x01, len];
    r.extend_from_slice(&[0x22, irq_mask[0], irq_mask[1]]);
    r.extend_from_slice(&[0x79, 0x00]);
    r
}

/// The DSDT's definition block:
///
/// ```text
/// Scope (_SB) {
///     Device (COM1) {
///         Name (_HID, EisaId ("PNP0501"))
///         Name (_UID, Zero)
///         Name (_CRS, ResourceTemplate () {
///             IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08)
///             IRQNoFlags () {4}
///         })
///     }
/// }
/// ```
///
/// The same bytes as iasl compiles it to (`_SB_` without the root prefix:
/// the scope is the root already).
pub fn dsdt_aml() -> Vec<u8> {
    let mut com1 = aml::name(*b"_HID", &aml::dword(aml::eisa_id(b"PNP0501")));
    com1.extend(aml::name(*b"_UID", &[aml::ZERO_OP]));
    com1.extend(aml::name(*b"_CRS", &aml::buffer(&com1_resources())));
    aml::scope(b"_SB_", &aml::device(*b"COM1", &com1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pmtimer::PM_TIMER_PORT;
    use alloc::string::ToString;

    const OEM: [u8; 6] = *b"RUSTHV";
    const TABLE: [u8; 8] = *b"HVVM0001";

    fn cfg(ids: &[u32], ioapic: bool) -> AcpiConfig<'_> {
        AcpiConfig {
            apic_ids: ids,
            ioapic: ioapic.then(|| IoApicEntry::pc(0)),
            oem_id: OEM,
            oem_table_id: TABLE,
            pm_timer_port: None,
        }
    }

    /// [`cfg`] with the PM timer at its default port.
    fn cfg_pm(ids: &[u32]) -> AcpiConfig<'_> {
        AcpiConfig {
            pm_timer_port: Some(PM_TIMER_PORT),
            ..cfg(ids, true)
        }
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    /// The table at `gpa` in the blob, checked: inside the blob, 8-byte
    /// aligned, `signature`, `revision`, header fields, checksum.
    fn table<'a>(t: &'a AcpiTables, gpa: u64, signature: &[u8; 4], revision: u8) -> &'a [u8] {
        assert!(gpa >= t.gpa && gpa.is_multiple_of(8), "{gpa:#x}");
        let off = (gpa - t.gpa) as usize;
        let len = u32_at(&t.bytes, off + 4) as usize;
        assert!(len >= HEADER_LEN && off + len <= t.bytes.len());
        let b = &t.bytes[off..off + len];
        assert_eq!(&b[0..4], signature);
        assert_eq!(
            b[8],
            revision,
            "{}",
            core::str::from_utf8(signature).unwrap()
        );
        assert_eq!(sum(b), 0, "checksum of {signature:?}");
        assert_eq!(&b[10..16], &OEM);
        assert_eq!(&b[16..24], &TABLE);
        assert_eq!(u32_at(b, 24), OEM_REVISION);
        assert_eq!(&b[28..32], &CREATOR_ID);
        assert_eq!(u32_at(b, 32), CREATOR_REVISION);
        b
    }

    /// Everything the RSDP leads to: (RSDT entries, XSDT entries, FADT,
    /// DSDT, MADT).
    struct Parsed<'a> {
        rsdt: Option<Vec<u64>>,
        xsdt: Vec<u64>,
        fadt: &'a [u8],
        dsdt: &'a [u8],
        madt: &'a [u8],
    }

    fn parse(t: &AcpiTables) -> Parsed<'_> {
        assert_eq!(t.rsdp_gpa, t.gpa);
        assert_eq!(t.rsdp_gpa % 16, 0);
        let r = &t.bytes[..RSDP_LEN];
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0, "RSDP checksum");
        assert_eq!(sum(r), 0, "RSDP extended checksum");
        assert_eq!(&r[9..15], &OEM);
        assert_eq!(r[15], 2);
        assert_eq!(u32_at(r, 20), 36);
        assert_eq!(&r[33..36], &[0, 0, 0]);
        let rsdt = match u32_at(r, 16) {
            0 => None,
            gpa => {
                let b = table(t, u64::from(gpa), b"RSDT", 1);
                assert_eq!((b.len() - HEADER_LEN) % 4, 0);
                Some(
                    b[HEADER_LEN..]
                        .chunks(4)
                        .map(|c| u64::from(u32_at(c, 0)))
                        .collect(),
                )
            }
        };
        let x = table(t, u64_at(r, 24), b"XSDT", 1);
        assert_eq!((x.len() - HEADER_LEN) % 8, 0);
        let xsdt: Vec<u64> = x[HEADER_LEN..].chunks(8).map(|c| u64_at(c, 0)).collect();
        assert_eq!(xsdt.len(), 2);
        if let Some(rsdt) = &rsdt {
            assert_eq!(rsdt, &xsdt, "RSDT and XSDT list the same tables");
        }
        let fadt = table(t, xsdt[0], b"FACP", 6);
        let madt = table(t, xsdt[1], b"APIC", 6);
        let dsdt = table(t, u64_at(fadt, 140), b"DSDT", 2);
        Parsed {
            rsdt,
            xsdt,
            fadt,
            dsdt,
            madt,
        }
    }

    /// MADT structures as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
        let mut v = Vec::new();
        let mut at = 44;
        while at < madt.len() {
            let len = usize::from(madt[at + 1]);
            assert!(len >= 2 && at + len <= madt.len());
            v.push((madt[at], &madt[at..at + len]));
            at += len;
        }
        assert_eq!(at, madt.len());
        v
    }

    #[test]
    fn tables_at_the_default_base() {
        let ids = [0];
        let t = build(DEFAULT_BASE, &cfg(&ids, true)).unwrap();
        assert_eq!(t.gpa, 0xE_0000);
        assert!(t.range().end <= LEGACY_LIMIT);
        assert!(t.bytes.len() < 4096);
        let p = parse(&t);
        assert!(p.rsdt.is_some());
        // Every table's address is base + offset, 8-byte aligned, disjoint.
        let mut spans: Vec<(u64, u64)> = [p.fadt, p.dsdt, p.madt]
            .iter()
            .map(|b| {
                let off = b.as_ptr() as usize - t.bytes.as_ptr() as usize;
                (t.gpa + off as u64, b.len() as u64)
            })
            .collect();
        assert_eq!(spans[0].0, p.xsdt[0]);
        assert_eq!(spans[2].0, p.xsdt[1]);
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0);
        }
    }

    #[test]
    fn fadt_fields() {
        let ids = [0, 1];
        let t = build(DEFAULT_BASE, &cfg(&ids, true)).unwrap();
        let p = parse(&t);
        let f = p.fadt;
        assert_eq!(f.len(), 276);
        assert_eq!(f[131], 5, "FADT minor version 6.5");
        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_eq!(flags, FADT_FLAGS);
        assert_eq!(flags, 0x0010_0435);
        let dsdt = u64_at(f, 140);
        assert_eq!(u64::from(u32_at(f, 40)), dsdt, "DSDT and X_DSDT agree");
        assert_eq!(u32_at(f, 36), 0, "no FACS");
        assert_eq!(u64_at(f, 132), 0, "no X_FACS");
        assert_eq!(u16_at(f, 46), 0, "no SCI");
        // Every fixed-hardware block is absent.
        assert!(f[48..109].iter().all(|&b| b == 0));
        assert!(f[148..268].iter().all(|&b| b == 0));
        // IAPC_BOOT_ARCH: 8042, no VGA, no MSI; not LEGACY_DEVICES, RTC present.
        assert_eq!(u16_at(f, 109), 0b1110);
        // Reset register: byte at I/O port 0xCF9, value 6.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 120), 0xCF9);
        assert_eq!(f[128], 6);
        assert_eq!(&f[268..276], b"RustBrHv");
        assert_eq!(flags & (1 << 8), 0, "no TMR_VAL_EXT without a PM timer");
        assert_eq!(u32_at(f, 76), 0, "no PM_TMR_BLK");
        assert_eq!(f[91], 0, "no PM_TMR_LEN");
        assert!(f[208..220].iter().all(|&b| b == 0), "no X_PM_TMR_BLK");
    }

    #[test]
    fn fadt_pm_timer() {
        let ids = [0, 1];
        let without = build(DEFAULT_BASE, &cfg(&ids, true)).unwrap();
        let t = build(DEFAULT_BASE, &cfg_pm(&ids)).unwrap();
        assert_eq!(t.bytes.len(), without.bytes.len());
        let f = parse(&t).fadt; // checksum 0 checked there
        assert_eq!(sum(f), 0);
        assert_eq!(f.len(), 276);
        let flags = u32_at(f, 112);
        assert_eq!(flags, FADT_FLAGS | fadt_flags::TMR_VAL_EXT);
        assert_eq!(flags, 0x0010_0535);
        assert_ne!(flags & (1 << 20), 0, "still HW_REDUCED_ACPI");
        assert_eq!(u32_at(f, 76), 0x608, "PM_TMR_BLK");
        assert_eq!(f[91], 4, "PM_TMR_LEN");
        // X_PM_TMR_BLK: System I/O, 32 bits at offset 0, dword access.
        assert_eq!(&f[208..212], &[1, 32, 0, 3]);
        assert_eq!(u64_at(f, 212), 0x608);
        // Nothing else of the fixed hardware appears.
        let mut fixed = f[48..109].to_vec();
        fixed[76 - 48..80 - 48].fill(0);
        fixed[91 - 48] = 0;
        assert!(fixed.iter().all(|&b| b == 0));
        let mut x = f[148..268].to_vec();
        x[208 - 148..220 - 148].fill(0);
        assert!(x.iter().all(|&b| b == 0));
        // The rest of the blob is the same as without the timer.
        let (a, b) = (parse(&without), parse(&t));
        assert_eq!((a.dsdt, a.madt), (b.dsdt, b.madt));
        for (i, (x, y)) in a.fadt.iter().zip(b.fadt).enumerate() {
            if ![9, 76, 77, 91, 113, 208, 209, 211, 212, 213].contains(&i) {
                assert_eq!(x, y, "FADT byte {i}");
            }
        }
        // Another port, up to the last one.
        let c = AcpiConfig {
            pm_timer_port: Some(0xFFFC),
            ..cfg(&ids, false)
        };
        let t = build(DEFAULT_BASE, &c).unwrap();
        let f = parse(&t).fadt;
        assert_eq!(u32_at(f, 76), 0xFFFC);
        assert_eq!(u64_at(f, 212), 0xFFFC);
    }

    #[test]
    fn madt_for_one_two_and_four_vcpus() {
        for n in [1u32, 2, 4] {
            let ids: Vec<u32> = (0..n).map(|i| i * 2).collect();
            let t = build(DEFAULT_BASE, &cfg(&ids, true)).unwrap();
            let madt = parse(&t).madt;
            assert_eq!(u32_at(madt, 36), 0xFEE0_0000);
            assert_eq!(u32_at(madt, 40), 0, "PCAT_COMPAT clear");
            let e = madt_entries(madt);
            assert_eq!(e.len(), n as usize + 3, "{n} vCPUs");
            for (i, (ty, b)) in e.iter().take(n as usize).enumerate() {
                assert_eq!((*ty, b.len()), (0, 8));
                assert_eq!(b[2], i as u8, "processor UID");
                assert_eq!(u32::from(b[3]), ids[i], "APIC ID");
                assert_eq!(u32_at(b, 4), 1, "enabled");
            }
            let rest = &e[n as usize..];
            assert_eq!(
                rest[0],
                (1, &[1, 12, 0, 0, 0, 0, 0xC0, 0xFE, 0, 0, 0, 0][..]),
                "I/O APIC 0 at 0xFEC00000, GSI base 0"
            );
            assert_eq!(
                rest[1],
                (2, &[2, 10, 0, 0, 2, 0, 0, 0, 5, 0][..]),
                "ISA IRQ 0 -> GSI 2, edge, active high"
            );
            assert_eq!(rest[2], (4, &[4, 6, 0xFF, 0, 0, 1][..]), "LINT1 NMI on all");
        }
    }

    #[test]
    fn madt_without_ioapic() {
        let ids = [0, 1];
        let t = build(DEFAULT_BASE, &cfg(&ids, false)).unwrap();
        let types: Vec<u8> = madt_entries(parse(&t).madt).iter().map(|e| e.0).collect();
        assert_eq!(types, [0, 0, 4]);
        // A custom I/O APIC entry.
        let c = AcpiConfig {
            ioapic: Some(IoApicEntry {
                id: 9,
                address: 0xFEC0_1000,
                gsi_base: 24,
            }),
            ..cfg(&ids, false)
        };
        let t = build(DEFAULT_BASE, &c).unwrap();
        let e = madt_entries(parse(&t).madt);
        assert_eq!(e[2].1, &[1, 12, 9, 0, 0, 0x10, 0xC0, 0xFE, 24, 0, 0, 0]);
    }

    #[test]
    fn x2apic_entries_from_id_255() {
        let ids = [0, 254, 255, 0x1_0000];
        let t = build(DEFAULT_BASE, &cfg(&ids, true)).unwrap();
        let e = madt_entries(parse(&t).madt);
        let types: Vec<u8> = e.iter().map(|e| e.0).collect();
        assert_eq!(types, [0, 0, 9, 9, 1, 2, 4, 0x0A]);
        assert_eq!(e[1].1, &[0, 8, 1, 254, 1, 0, 0, 0]);
        let x = e[2].1;
        assert_eq!(x.len(), 16);
        assert_eq!(u16_at(x, 2), 0, "reserved");
        assert_eq!(u32_at(x, 4), 255, "x2APIC ID");
        assert_eq!(u32_at(x, 8), 1, "enabled");
        assert_eq!(u32_at(x, 12), 2, "processor UID");
        assert_eq!(u32_at(e[3].1, 4), 0x1_0000);
        assert_eq!(u32_at(e[3].1, 12), 3);
        assert_eq!(
            e[7].1,
            &[0x0A, 12, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0],
            "x2APIC LINT1 NMI on all"
        );
        // Only x2APIC IDs: no Local APIC NMI.
        let ids = [300, 301];
        let t = build(DEFAULT_BASE, &cfg(&ids, false)).unwrap();
        let types: Vec<u8> = madt_entries(parse(&t).madt).iter().map(|e| e.0).collect();
        assert_eq!(types, [9, 9, 0x0A]);
    }

    #[test]
    fn most_vcpus_still_fit_below_1mib() {
        let ids: Vec<u32> = (0..MAX_VCPUS as u32).collect();
        let t = build(DEFAULT_BASE, &cfg(&ids, true)).unwrap();
        assert!(t.bytes.len() < 4096, "{}", t.bytes.len());
        let e = madt_entries(parse(&t).madt);
        // IDs 0-254 as Local APIC structures, UIDs 0-254.
        assert_eq!(e.len(), MAX_VCPUS + 3);
        assert_eq!(e[254].1[2], 254);
        // With x2APIC IDs the blob is larger but still within a page.
        let ids: Vec<u32> = (1000..1000 + MAX_VCPUS as u32).collect();
        let t = build(DEFAULT_BASE, &cfg(&ids, true)).unwrap();
        assert!(t.bytes.len() < 8192, "{}", t.bytes.len());
        assert!(t.range().end <= LEGACY_LIMIT);
        parse(&t);
    }

    #[test]
    fn dsdt_aml_bytes() {
        // As iasl 20200925 compiles the ASL in `dsdt_aml`'s documentation.
        let expected: [u8; 51] = [
            0x10, 0x32, b'_', b'S', b'B', b'_', // Scope (_SB_), PkgLength 0x32
            0x5B, 0x82, 0x2B, b'C', b'O', b'M', b'1', // Device (COM1)
            0x08, b'_', b'H', b'I', b'D', 0x0C, 0x41, 0xD0, 0x05, 0x01, // _HID
            0x08, b'_', b'U', b'I', b'D', 0x00, // _UID Zero
            0x08, b'_', b'C', b'R', b'S', 0x11, 0x10, 0x0A, 0x0D, // _CRS Buffer (13)
            0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08, // IO
            0x22, 0x10, 0x00, // IRQNoFlags {4}
            0x79, 0x00, // End tag
        ];
        assert_eq!(dsdt_aml(), expected);
        let ids = [0];
        let t = build(DEFAULT_BASE, &cfg(&ids, true)).unwrap();
        let dsdt = parse(&t).dsdt;
        assert_eq!(dsdt.len(), HEADER_LEN + 51);
        assert_eq!(&dsdt[HEADER_LEN..], expected);
        assert_eq!(aml::eisa_id(b"PNP0501"), 0x0105_D041);
        assert_eq!(aml::eisa_id(b"PNP0B00"), 0x000B_D041);
    }

    #[test]
    fn aml_pkg_length_encodings() {
        assert_eq!(aml::pkg_length(0).unwrap(), [1]);
        assert_eq!(aml::pkg_length(62).unwrap(), [63]);
        // 63 + 1 = 64 does not fit one byte: two bytes, total 65 = 0x41.
        assert_eq!(aml::pkg_length(63).unwrap(), [0x41, 0x04]);
        // Largest two-byte: total 0xFFF.
        assert_eq!(aml::pkg_length(0xFFD).unwrap(), [0x4F, 0xFF]);
        assert_eq!(aml::pkg_length(0xFFE).unwrap(), [0x81, 0x00, 0x01]);
        assert_eq!(aml::pkg_length(0xF_FFFC).unwrap(), [0x8F, 0xFF, 0xFF]);
        assert_eq!(aml::pkg_length(0xF_FFFD).unwrap(), [0xC1, 0x00, 0x00, 0x01]);
        assert_eq!(
            aml::pkg_length(0xFFF_FFFB).unwrap(),
            [0xCF, 0xFF, 0xFF, 0xFF]
        );
        assert_eq!(aml::pkg_length(0xFFF_FFFC), None);
    }

    #[test]
    fn above_4g_has_no_rsdt() {
        let ids = [0, 1];
        let t = build(0x1_0000_0000, &cfg(&ids, true)).unwrap();
        let p = parse(&t);
        assert!(p.rsdt.is_none());
        assert_eq!(u32_at(p.fadt, 40), 0, "no 32-bit DSDT pointer");
        assert_eq!(
            u64_at(p.fadt, 140),
            p.xsdt[0] + 280,
            "X_DSDT after the FADT"
        );
        // Anywhere else below 4 GiB, the RSDT is there.
        let t = build(0x7F0_0000, &cfg(&ids, true)).unwrap();
        assert!(parse(&t).rsdt.is_some());
    }

    #[test]
    fn errors() {
        let ids = [0];
        assert_eq!(
            build(DEFAULT_BASE, &cfg(&[], true)),
            Err(AcpiError::NoVcpus)
        );
        let many: Vec<u32> = (0..256).collect();
        assert_eq!(
            build(DEFAULT_BASE, &cfg(&many, true)),
            Err(AcpiError::TooManyVcpus {
                count: 256,
                max: 255
            })
        );
        assert_eq!(
            build(DEFAULT_BASE, &cfg(&[0, 3, 3], true)),
            Err(AcpiError::DuplicateApicId { id: 3 })
        );
        assert_eq!(
            build(DEFAULT_BASE, &cfg(&[0, u32::MAX], true)),
            Err(AcpiError::InvalidApicId { id: u32::MAX })
        );
        assert_eq!(
            build(0xE_0008, &cfg(&ids, true)),
            Err(AcpiError::MisalignedBase { base: 0xE_0008 })
        );
        let e = build(0xF_FF00, &cfg(&ids, true)).unwrap_err();
        assert!(
            matches!(e, AcpiError::CrossesLegacyLimit { base: 0xF_FF00, end } if end > LEGACY_LIMIT)
        );
        assert!(e.to_string().contains("cross 1 MiB"), "{e}");
        assert!(matches!(
            build(u64::MAX - 15, &cfg(&ids, true)),
            Err(AcpiError::AddressOverflow { .. })
        ));
        // Ending exactly at 1 MiB is fine.
        let len = build(DEFAULT_BASE, &cfg(&ids, true)).unwrap().bytes.len() as u64;
        let base = (LEGACY_LIMIT - len) & !15;
        assert!(build(base, &cfg(&ids, true)).is_ok());
        for e in [
            AcpiError::NoVcpus,
            AcpiError::TooManyVcpus {
                count: 300,
                max: 255,
            },
            AcpiError::DuplicateApicId { id: 1 },
            AcpiError::InvalidApicId { id: u32::MAX },
            AcpiError::MisalignedBase { base: 1 },
            AcpiError::AddressOverflow { base: 1, len: 2 },
        ] {
            assert!(!e.to_string().is_empty());
        }
    }

    /// Writes the tables of a 2-vCPU VM with a PM timer to files in `HV_ACPI_DUMP` (a
    /// directory) for `iasl -d`; does nothing otherwise.
    #[test]
    fn dump_for_iasl_from_env() {
        let Some(dir) = std::env::var_os("HV_ACPI_DUMP") else {
            return;
        };
        let ids = [0, 1];
        let t = build(DEFAULT_BASE, &cfg_pm(&ids)).unwrap();
        let p = parse(&t);
        let dir = std::path::PathBuf::from(dir);
        std::fs::write(dir.join("rsdp.dat"), &t.bytes[..RSDP_LEN]).unwrap();
        let rsdt = u64::from(u32_at(&t.bytes, 16));
        let xsdt = u64_at(&t.bytes, 24);
        let tables = [
            ("rsdt", table(&t, rsdt, b"RSDT", 1)),
            ("xsdt", table(&t, xsdt, b"XSDT", 1)),
            ("facp", p.fadt),
            ("dsdt", p.dsdt),
            ("apic", p.madt),
        ];
        for (name, b) in tables {
            std::fs::write(dir.join(std::format!("{name}.dat")), b).unwrap();
        }
    }
}
