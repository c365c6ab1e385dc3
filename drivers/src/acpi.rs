//! What the firmware's ACPI tables say about the machine.
//!
//! The kernel needs to know which CPUs exist (to start them with INIT-SIPI-SIPI), where
//! the local APIC and I/O APICs live, how ISA IRQs are rerouted, whether there is an
//! ACPI PM timer (a reference clock), and how to power off (S5). [`read_machine_info`]
//! walks RSDP -> XSDT/RSDT -> MADT and FADT (and the DSDT for `\_S5`) with the `acpi`
//! crate and returns a plain [`MachineInfo`]. A broken or missing table does not stop
//! the walk: it is listed in [`MachineInfo::problems`] and the rest is still filled in.
//!
//! Physical memory is reached through [`OffsetHandler`]: the kernel maps all physical
//! memory at a fixed virtual offset, so physical address `p` is at `p + offset`. Host
//! tests point the offset at a `Vec<u8>` that stands for physical memory.
//!
//! The `\_S5` sleep type comes from a byte scan of the DSDT for `Name(_S5_, Package
//! {...})` (what small kernels do) rather than from an AML interpreter: it finds the
//! common static definition; a `_S5` computed by a method is not found (then
//! [`PowerOffInfo`] is absent and the kernel falls back to other exits).

use acpi::sdt::fadt::Fadt;
use acpi::sdt::madt::{Madt, MadtEntry, Polarity as AcpiPolarity, TriggerMode as AcpiTrigger};
use acpi::sdt::{SdtHeader, Signature};
use acpi::{AcpiTable, AcpiTables, Handler, PciAddress, PhysicalMapping};
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

/// One processor from the MADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    /// ACPI processor UID (the `_UID` of its `Processor` object).
    pub processor_uid: u32,
    /// Local APIC ID (x2APIC IDs may exceed 255).
    pub apic_id: u32,
    /// The processor is usable now (MADT flag bit 0).
    pub enabled: bool,
    /// The processor is not enabled but may be brought online (flag bit 1).
    pub online_capable: bool,
    /// The bootstrap processor. By ACPI convention the first MADT processor entry;
    /// the kernel can confirm with [`MachineInfo::mark_bsp`] using its own APIC ID.
    pub is_bsp: bool,
}

/// One I/O APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicInfo {
    /// I/O APIC ID.
    pub id: u8,
    /// Physical address of its registers.
    pub address: u32,
    /// First global system interrupt it serves.
    pub gsi_base: u32,
}

/// Interrupt signal polarity (MPS INTI flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    /// As the bus specifies (ISA: active high).
    SameAsBus,
    /// Active high.
    ActiveHigh,
    /// Active low.
    ActiveLow,
}

/// Interrupt trigger mode (MPS INTI flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// As the bus specifies (ISA: edge).
    SameAsBus,
    /// Edge triggered.
    Edge,
    /// Level triggered.
    Level,
}

/// An ISA IRQ routed to a different global system interrupt (MADT type 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqOverride {
    /// ISA IRQ (bus-relative source).
    pub isa_irq: u8,
    /// Global system interrupt it arrives on.
    pub gsi: u32,
    /// Signal polarity.
    pub polarity: Polarity,
    /// Trigger mode.
    pub trigger: Trigger,
}

/// Where the PM timer register is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterSpace {
    /// An I/O port.
    Io,
    /// Physical memory.
    Memory,
}

/// The ACPI power-management timer (3.579545 MHz).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmTimerInfo {
    /// I/O port or physical address of the counter, per `space`.
    pub port_or_address: u64,
    /// How to reach it.
    pub space: RegisterSpace,
    /// 32-bit counter (FADT flag TMR_VAL_EXT); otherwise 24-bit.
    pub is_32bit: bool,
}

/// What an S5 (soft-off) transition needs: write `SLP_TYP | SLP_EN` to PM1a_CNT (and
/// PM1b_CNT if present). See [`crate::qemu_exit::acpi_power_off`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerOffInfo {
    /// I/O port of PM1a_CNT.
    pub pm1a_control_port: u16,
    /// I/O port of PM1b_CNT, if the machine has one.
    pub pm1b_control_port: Option<u16>,
    /// `SLP_TYPa` from `\_S5`.
    pub slp_typ_a: u8,
    /// `SLP_TYPb` from `\_S5`.
    pub slp_typ_b: u8,
    /// SMI command port for switching to ACPI mode (0: none, already in ACPI mode).
    pub smi_command_port: u16,
    /// Value to write to the SMI command port to enable ACPI mode.
    pub acpi_enable: u8,
}

/// The machine as the ACPI tables describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineInfo {
    /// Processors in MADT order (the BSP first by convention).
    pub cpus: Vec<CpuInfo>,
    /// I/O APICs.
    pub io_apics: Vec<IoApicInfo>,
    /// ISA IRQ overrides.
    pub overrides: Vec<IrqOverride>,
    /// The PM timer, if the FADT declares one.
    pub pm_timer: Option<PmTimerInfo>,
    /// Physical address of the local APIC (MADT, or its 64-bit override entry);
    /// 0 if the MADT was unusable.
    pub local_apic_address: u64,
    /// Whether the machine also has dual 8259 PICs (MADT PCAT_COMPAT).
    pub has_8259: bool,
    /// S5 power-off registers and values, if found.
    pub power_off: Option<PowerOffInfo>,
    /// Tables that were missing or broken; what they would have provided is absent.
    pub problems: Vec<AcpiError>,
}

impl MachineInfo {
    /// Marks the CPU whose local APIC ID is `apic_id` as the BSP (the one running this
    /// code) and clears the flag on the others. Returns whether that CPU was listed.
    pub fn mark_bsp(&mut self, apic_id: u32) -> bool {
        let mut found = false;
        for cpu in &mut self.cpus {
            cpu.is_bsp = cpu.apic_id == apic_id;
            found |= cpu.is_bsp;
        }
        found
    }

    /// CPUs that are enabled and not the BSP: the ones to start.
    pub fn application_processors(&self) -> impl Iterator<Item = &CpuInfo> {
        self.cpus.iter().filter(|c| c.enabled && !c.is_bsp)
    }
}

/// Why (part of) the ACPI walk failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No RSDP at the given address (zero, or wrong signature). Nothing was read.
    NoRsdp,
    /// The table's bytes do not sum to zero.
    BadChecksum {
        /// Signature (`"RSDP"`, `"XSDT"`, `"APIC"`, `"FACP"`, ...).
        table: &'static str,
    },
    /// The table is not listed in the XSDT/RSDT.
    MissingTable(&'static str),
    /// The table is there but its contents do not make sense.
    Malformed {
        /// Signature.
        table: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRsdp => write!(f, "ACPI: no RSDP"),
            Self::BadChecksum { table } => write!(f, "ACPI: {table} has a bad checksum, ignored"),
            Self::MissingTable(t) => write!(f, "ACPI: no {t} table"),
            Self::Malformed { table, reason } => write!(f, "ACPI: {table} malformed: {reason}"),
        }
    }
}

/// Reaches physical memory at a fixed virtual offset, for the `acpi` crate.
///
/// Only the mapping methods are used by the static-table walk. The register and PCI
/// accessors of [`acpi::Handler`] serve the crate's AML and fixed-hardware helpers,
/// which this module never calls: they read all ones and ignore writes.
#[derive(Clone, Copy, Debug)]
pub struct OffsetHandler {
    offset: usize,
}

impl OffsetHandler {
    /// A handler for physical memory mapped at `phys + offset`.
    ///
    /// # Safety
    /// For as long as the handler (or a mapping it made) lives, every physical byte the
    /// ACPI tables occupy, and every address they point to that the walk follows (RSDP,
    /// XSDT/RSDT, the tables it lists, the DSDT), must be readable at `phys + offset`,
    /// and nothing may write to that memory meanwhile.
    pub const unsafe fn new(offset: u64) -> Self {
        Self {
            offset: offset as usize,
        }
    }

    /// The bytes `phys..phys + len`.
    ///
    /// # Safety
    /// `phys..phys + len` must be covered by `new`'s promise.
    unsafe fn bytes(&self, phys: usize, len: usize) -> &[u8] {
        // SAFETY: the caller passes a range covered by `new`'s contract: mapped,
        // readable and unchanging while `self` lives; `u8` has no alignment needs.
        unsafe { core::slice::from_raw_parts(self.virt(phys).cast::<u8>(), len) }
    }

    fn virt(&self, phys: usize) -> *mut u8 {
        phys.wrapping_add(self.offset) as *mut u8
    }
}

impl Handler for OffsetHandler {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let virt = self.virt(physical_address).cast::<T>();
        PhysicalMapping {
            physical_start: physical_address,
            // A null result would need phys + offset to wrap to exactly 0, which `new`'s
            // contract excludes; fall back to a dangling pointer rather than panic.
            virtual_start: NonNull::new(virt).unwrap_or(NonNull::dangling()),
            region_length: size,
            mapped_length: size,
            handler: *self,
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}

    fn read_u8(&self, _address: usize) -> u8 {
        !0
    }
    fn read_u16(&self, _address: usize) -> u16 {
        !0
    }
    fn read_u32(&self, _address: usize) -> u32 {
        !0
    }
    fn read_u64(&self, _address: usize) -> u64 {
        !0
    }
    fn write_u8(&self, _address: usize, _value: u8) {}
    fn write_u16(&self, _address: usize, _value: u16) {}
    fn write_u32(&self, _address: usize, _value: u32) {}
    fn write_u64(&self, _address: usize, _value: u64) {}
    fn read_io_u8(&self, _port: u16) -> u8 {
        !0
    }
    fn read_io_u16(&self, _port: u16) -> u16 {
        !0
    }
    fn read_io_u32(&self, _port: u16) -> u32 {
        !0
    }
    fn write_io_u8(&self, _port: u16, _value: u8) {}
    fn write_io_u16(&self, _port: u16, _value: u16) {}
    fn write_io_u32(&self, _port: u16, _value: u32) {}
    fn read_pci_u8(&self, _address: PciAddress, _offset: u16) -> u8 {
        !0
    }
    fn read_pci_u16(&self, _address: PciAddress, _offset: u16) -> u16 {
        !0
    }
    fn read_pci_u32(&self, _address: PciAddress, _offset: u16) -> u32 {
        !0
    }
    fn write_pci_u8(&self, _address: PciAddress, _offset: u16, _value: u8) {}
    fn write_pci_u16(&self, _address: PciAddress, _offset: u16, _value: u16) {}
    fn write_pci_u32(&self, _address: PciAddress, _offset: u16, _value: u32) {}
    fn nanos_since_boot(&self) -> u64 {
        0
    }
    fn stall(&self, _microseconds: u64) {}
    fn sleep(&self, _milliseconds: u64) {}
}

/// Reads the ACPI tables from the RSDP at physical address `rsdp_phys`, with physical
/// memory mapped at virtual `phys + phys_offset`.
///
/// Fails only when there is no RSDP; every other problem is listed in
/// [`MachineInfo::problems`] and the parts that could be read are filled in.
///
/// # Safety
/// As for [`OffsetHandler::new`]: the tables the firmware describes (RSDP, XSDT/RSDT,
/// every table it lists, the DSDT) must be readable at `phys + phys_offset`.
pub unsafe fn read_machine_info(
    rsdp_phys: u64,
    phys_offset: u64,
) -> Result<MachineInfo, AcpiError> {
    if rsdp_phys == 0 {
        return Err(AcpiError::NoRsdp);
    }
    // SAFETY: the caller's promise is exactly `OffsetHandler::new`'s.
    let handler = unsafe { OffsetHandler::new(phys_offset) };
    let mut info = MachineInfo::default();
    let rsdp_phys = rsdp_phys as usize;

    // SAFETY: the caller promises the RSDP (at most 36 bytes) is mapped at this address.
    let rsdp = unsafe {
        handler.map_physical_region::<acpi::rsdp::Rsdp>(rsdp_phys, size_of::<acpi::rsdp::Rsdp>())
    };
    match rsdp.validate() {
        Ok(()) => {}
        Err(acpi::AcpiError::RsdpIncorrectSignature) => return Err(AcpiError::NoRsdp),
        Err(_) => info.problems.push(AcpiError::BadChecksum { table: "RSDP" }),
    }
    let (root_name, root_sig, root_phys) = if rsdp.revision() == 0 {
        ("RSDT", Signature::RSDT, rsdp.rsdt_address() as usize)
    } else {
        ("XSDT", Signature::XSDT, rsdp.xsdt_address() as usize)
    };
    drop(rsdp);
    if root_phys == 0 {
        info.problems.push(AcpiError::MissingTable(root_name));
        return Ok(info);
    }
    // SAFETY: the caller promises the root table the RSDP points to is mapped; its
    // header is read first, then the whole table.
    let root_ok = unsafe { table_checksum_ok(&handler, root_phys, root_sig) };
    match root_ok {
        Ok(()) => {}
        Err(TableCheck::Signature) => {
            info.problems.push(AcpiError::Malformed {
                table: root_name,
                reason: "wrong signature",
            });
            return Ok(info);
        }
        Err(TableCheck::Checksum) => info
            .problems
            .push(AcpiError::BadChecksum { table: root_name }),
    }

    // SAFETY: the RSDP is mapped and valid (checked above) and the caller promises the
    // tables it leads to are mapped.
    let tables = match unsafe { AcpiTables::from_rsdp(handler, rsdp_phys) } {
        Ok(t) => t,
        Err(_) => return Err(AcpiError::NoRsdp),
    };

    read_madt(&tables, &mut info);
    read_fadt(&tables, &handler, &mut info);
    Ok(info)
}

enum TableCheck {
    Signature,
    Checksum,
}

/// Checks the signature and checksum of the SDT at `phys`.
///
/// # Safety
/// The table's header and `length` bytes must be mapped through `handler`.
unsafe fn table_checksum_ok(
    handler: &OffsetHandler,
    phys: usize,
    signature: Signature,
) -> Result<(), TableCheck> {
    // SAFETY: the caller promises the header is mapped.
    let header = unsafe { handler.map_physical_region::<SdtHeader>(phys, size_of::<SdtHeader>()) };
    if header.signature != signature {
        return Err(TableCheck::Signature);
    }
    let len = header.length as usize;
    // SAFETY: the caller promises the whole table (`length` bytes) is mapped.
    let bytes = unsafe { handler.bytes(phys, len.max(size_of::<SdtHeader>())) };
    if checksum(bytes) == 0 {
        Ok(())
    } else {
        Err(TableCheck::Checksum)
    }
}

/// Sum of the bytes, modulo 256 (zero for a valid ACPI table).
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
}

/// Error for a table that fails the crate's validation.
fn validation_problem(table: &'static str, e: acpi::AcpiError) -> AcpiError {
    match e {
        acpi::AcpiError::SdtInvalidChecksum(_) => AcpiError::BadChecksum { table },
        acpi::AcpiError::SdtInvalidSignature(_) => AcpiError::Malformed {
            table,
            reason: "wrong signature",
        },
        _ => AcpiError::Malformed {
            table,
            reason: "invalid OEM or table id",
        },
    }
}

fn read_madt(tables: &AcpiTables<OffsetHandler>, info: &mut MachineInfo) {
    let Some(mapping) = tables.find_table::<Madt>() else {
        info.problems.push(AcpiError::MissingTable("APIC"));
        return;
    };
    let pinned = mapping.get();
    let madt: &Madt = pinned.get_ref();
    if let Err(e) = madt.validate() {
        info.problems.push(validation_problem("APIC", e));
        return;
    }
    // The crate's entry iterator trusts entry lengths (a zero length would loop for
    // ever); check the layout on the raw bytes first.
    // SAFETY: `find_table` mapped the whole table (`header.length` bytes) at `madt`,
    // and `validate` just read all of them.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (madt as *const Madt).cast::<u8>(),
            madt.header.length as usize,
        )
    };
    if let Err(reason) = check_madt_entries(bytes) {
        info.problems.push(AcpiError::Malformed {
            table: "APIC",
            reason,
        });
        return;
    }
    info.local_apic_address = u64::from(madt.local_apic_address);
    info.has_8259 = madt.supports_8259();
    for entry in pinned.entries() {
        match entry {
            MadtEntry::LocalApic(e) => push_cpu(
                info,
                u32::from(e.processor_id),
                u32::from(e.apic_id),
                e.flags,
            ),
            MadtEntry::LocalX2Apic(e) => push_cpu(info, e.processor_uid, e.x2apic_id, e.flags),
            MadtEntry::IoApic(e) => info.io_apics.push(IoApicInfo {
                id: e.io_apic_id,
                address: e.io_apic_address,
                gsi_base: e.global_system_interrupt_base,
            }),
            MadtEntry::InterruptSourceOverride(e) => {
                let (polarity, trigger) = match acpi::sdt::madt::parse_mps_inti_flags(e.flags) {
                    Ok(pt) => pt,
                    Err(_) => {
                        info.problems.push(AcpiError::Malformed {
                            table: "APIC",
                            reason: "reserved MPS INTI flags",
                        });
                        continue;
                    }
                };
                info.overrides.push(IrqOverride {
                    isa_irq: e.irq,
                    gsi: e.global_system_interrupt,
                    polarity: match polarity {
                        AcpiPolarity::SameAsBus => Polarity::SameAsBus,
                        AcpiPolarity::ActiveHigh => Polarity::ActiveHigh,
                        AcpiPolarity::ActiveLow => Polarity::ActiveLow,
                    },
                    trigger: match trigger {
                        AcpiTrigger::SameAsBus => Trigger::SameAsBus,
                        AcpiTrigger::Edge => Trigger::Edge,
                        AcpiTrigger::Level => Trigger::Level,
                    },
                });
            }
            MadtEntry::LocalApicAddressOverride(e) => {
                info.local_apic_address = e.local_apic_address
            }
            _ => {}
        }
    }
}

fn push_cpu(info: &mut MachineInfo, processor_uid: u32, apic_id: u32, flags: u32) {
    let is_bsp = info.cpus.is_empty();
    info.cpus.push(CpuInfo {
        processor_uid,
        apic_id,
        enabled: flags & 1 != 0,
        online_capable: flags & 2 != 0,
        is_bsp,
    });
}

/// Checks that MADT entries tile the table and that known entry types are long enough
/// for the structures the `acpi` crate reads them as.
fn check_madt_entries(table: &[u8]) -> Result<(), &'static str> {
    const ENTRIES_START: usize = 44;
    let mut rest = table
        .get(ENTRIES_START..)
        .ok_or("shorter than its header")?;
    while !rest.is_empty() {
        let [kind, len, ..] = *rest else {
            return Err("truncated entry header");
        };
        let len = usize::from(len);
        let min = match kind {
            0 => 8,   // processor local APIC
            1 => 12,  // I/O APIC
            2 => 10,  // interrupt source override
            3 => 8,   // NMI source
            4 => 6,   // local APIC NMI
            5 => 12,  // local APIC address override
            9 => 16,  // processor local x2APIC
            10 => 12, // local x2APIC NMI
            _ => 2,
        };
        if len < min {
            return Err("entry shorter than its type requires");
        }
        rest = rest
            .get(len..)
            .ok_or("entry runs past the end of the table")?;
    }
    Ok(())
}

fn read_fadt(tables: &AcpiTables<OffsetHandler>, handler: &OffsetHandler, info: &mut MachineInfo) {
    let Some(fadt) = tables.find_table::<Fadt>() else {
        info.problems.push(AcpiError::MissingTable("FACP"));
        return;
    };
    if let Err(e) = fadt.validate() {
        info.problems.push(validation_problem("FACP", e));
        return;
    }
    if (fadt.header.length as usize) < 116 {
        info.problems.push(AcpiError::Malformed {
            table: "FACP",
            reason: "shorter than ACPI 1.0",
        });
        return;
    }
    match fadt.pm_timer_block() {
        Ok(Some(gas)) => {
            let space = match gas.address_space {
                acpi::address::AddressSpace::SystemIo => Some(RegisterSpace::Io),
                acpi::address::AddressSpace::SystemMemory => Some(RegisterSpace::Memory),
                _ => None,
            };
            match space {
                Some(space) => {
                    info.pm_timer = Some(PmTimerInfo {
                        port_or_address: gas.address,
                        space,
                        is_32bit: { fadt.flags }.pm_timer_is_32_bit(),
                    })
                }
                None => info.problems.push(AcpiError::Malformed {
                    table: "FACP",
                    reason: "PM timer in an unsupported address space",
                }),
            }
        }
        Ok(None) => {}
        Err(_) => info.problems.push(AcpiError::Malformed {
            table: "FACP",
            reason: "bad PM timer address",
        }),
    }
    info.power_off = power_off_info(&fadt, handler, info);
}

fn io_port(gas: acpi::address::GenericAddress) -> Option<u16> {
    (gas.address_space == acpi::address::AddressSpace::SystemIo)
        .then(|| u16::try_from(gas.address).ok())
        .flatten()
}

fn power_off_info(
    fadt: &Fadt,
    handler: &OffsetHandler,
    info: &mut MachineInfo,
) -> Option<PowerOffInfo> {
    let pm1a = fadt
        .pm1a_control_block()
        .ok()
        .and_then(io_port)
        .filter(|&p| p != 0)?;
    let pm1b = fadt
        .pm1b_control_block()
        .ok()
        .flatten()
        .and_then(io_port)
        .filter(|&p| p != 0);
    let Ok(dsdt_phys) = fadt.dsdt_address() else {
        info.problems.push(AcpiError::MissingTable("DSDT"));
        return None;
    };
    // SAFETY: the caller of `read_machine_info` promises the DSDT the FADT points to is
    // mapped; its header is read first, then `length` bytes.
    match unsafe { table_checksum_ok(handler, dsdt_phys, Signature::DSDT) } {
        Ok(()) => {}
        Err(TableCheck::Signature) => {
            info.problems.push(AcpiError::Malformed {
                table: "DSDT",
                reason: "wrong signature",
            });
            return None;
        }
        Err(TableCheck::Checksum) => {
            info.problems.push(AcpiError::BadChecksum { table: "DSDT" });
            return None;
        }
    }
    // SAFETY: as above; the header (36 bytes) was just read through the same mapping.
    let len = unsafe { handler.bytes(dsdt_phys + 4, 4) };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    // SAFETY: `table_checksum_ok` read these `len` bytes already.
    let aml = unsafe { handler.bytes(dsdt_phys, len) }.get(size_of::<SdtHeader>()..)?;
    let (slp_typ_a, slp_typ_b) = find_s5(aml)?;
    Some(PowerOffInfo {
        pm1a_control_port: pm1a,
        pm1b_control_port: pm1b,
        slp_typ_a,
        slp_typ_b,
        smi_command_port: u16::try_from(fadt.smi_cmd_port).unwrap_or(0),
        acpi_enable: fadt.acpi_enable,
    })
}

/// Finds `Name(_S5_, Package(){a, b, ...})` in an AML byte stream and returns the first
/// two elements (`SLP_TYPa`, `SLP_TYPb`).
pub fn find_s5(aml: &[u8]) -> Option<(u8, u8)> {
    const NAME_OP: u8 = 0x08;
    const ROOT_CHAR: u8 = b'\\';
    const PACKAGE_OP: u8 = 0x12;
    let mut from = 0;
    while let Some(pos) = aml.get(from..)?.windows(4).position(|w| w == b"_S5_") {
        let at = from + pos;
        from = at + 1;
        let named = match at.checked_sub(1).map(|i| aml[i]) {
            Some(NAME_OP) => true,
            Some(ROOT_CHAR) => at >= 2 && aml[at - 2] == NAME_OP,
            _ => false,
        };
        let mut rest = &aml[at + 4..];
        if !named || rest.first() != Some(&PACKAGE_OP) {
            continue;
        }
        // PkgLength: bits 7:6 of the lead byte count the bytes that follow it.
        let lead = *rest.get(1)?;
        let skip = 2 + usize::from(lead >> 6);
        rest = rest.get(skip + 1..)?; // also skip NumElements
        let (a, rest) = aml_integer(rest)?;
        let (b, _) = aml_integer(rest).unwrap_or((a, rest));
        return Some((a, b));
    }
    None
}

/// A small AML integer constant: `ZeroOp`, `OneOp`, `OnesOp`, `BytePrefix n` or
/// `WordPrefix n` (truncated; SLP_TYP is 3 bits).
fn aml_integer(aml: &[u8]) -> Option<(u8, &[u8])> {
    match *aml.first()? {
        0x00 => Some((0, &aml[1..])),
        0x01 => Some((1, &aml[1..])),
        0xFF => Some((0xFF, &aml[1..])),
        0x0A => Some((*aml.get(1)?, aml.get(2..)?)),
        0x0B => Some((*aml.get(1)?, aml.get(3..)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    /// Builds ACPI tables inside a byte vector standing for physical memory.
    /// "Physical memory" of a fixture, page-aligned like real memory so that
    /// table alignment is the same on every run.
    #[repr(C, align(4096))]
    struct Mem([u8; 0x1000]);

    impl core::ops::Deref for Mem {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            &self.0
        }
    }

    impl core::ops::DerefMut for Mem {
        fn deref_mut(&mut self) -> &mut [u8] {
            &mut self.0
        }
    }

    struct Fixture {
        mem: Box<Mem>,
    }

    const RSDP: usize = 0x100;
    // The acpi crate reads XSDT entries (offset 36) as aligned u64s, which the
    // host test build checks; the table sits where those entries are aligned.
    const XSDT: usize = 0x204;
    const MADT: usize = 0x400;
    const FADT: usize = 0x800;
    const DSDT: usize = 0xC00;

    fn put(mem: &mut [u8], at: usize, bytes: &[u8]) {
        mem[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn sdt_header(sig: &[u8; 4], len: u32, rev: u8) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(sig);
        h.extend_from_slice(&len.to_le_bytes());
        h.push(rev);
        h.push(0); // checksum, fixed later
        h.extend_from_slice(b"HVTEST");
        h.extend_from_slice(b"FIXTURE ");
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(b"HVTS");
        h.extend_from_slice(&1u32.to_le_bytes());
        h
    }

    /// Makes the bytes at `at..at + len` sum to zero by adjusting `at + field`.
    fn fix_checksum(mem: &mut [u8], at: usize, len: usize, field: usize) {
        mem[at + field] = 0;
        mem[at + field] = checksum(&mem[at..at + len]).wrapping_neg();
    }

    fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
        let mut e = vec![0, 8, uid, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    impl Fixture {
        fn new(second_cpu_flags: u32) -> Self {
            let mut mem = Box::new(Mem([0u8; 0x1000]));
            // RSDP v2.
            let mut rsdp = Vec::new();
            rsdp.extend_from_slice(b"RSD PTR ");
            rsdp.push(0);
            rsdp.extend_from_slice(b"HVTEST");
            rsdp.push(2);
            rsdp.extend_from_slice(&0u32.to_le_bytes());
            rsdp.extend_from_slice(&36u32.to_le_bytes());
            rsdp.extend_from_slice(&(XSDT as u64).to_le_bytes());
            rsdp.extend_from_slice(&[0; 4]);
            put(&mut mem, RSDP, &rsdp);
            fix_checksum(&mut mem, RSDP, 20, 8);
            fix_checksum(&mut mem, RSDP, 36, 32);
            // XSDT -> MADT, FADT.
            let mut xsdt = sdt_header(b"XSDT", 36 + 16, 1);
            xsdt.extend_from_slice(&(MADT as u64).to_le_bytes());
            xsdt.extend_from_slice(&(FADT as u64).to_le_bytes());
            put(&mut mem, XSDT, &xsdt);
            fix_checksum(&mut mem, XSDT, xsdt.len(), 9);
            // MADT: 2 local APICs, 1 I/O APIC, 1 override (IRQ0 -> GSI2), 1 x2APIC.
            let mut entries = Vec::new();
            entries.extend(lapic(0, 0, 1));
            entries.extend(lapic(1, 1, second_cpu_flags));
            entries.extend_from_slice(&[1, 12, 7, 0]);
            entries.extend_from_slice(&0xFEC0_0000u32.to_le_bytes());
            entries.extend_from_slice(&0u32.to_le_bytes());
            entries.extend_from_slice(&[2, 10, 0, 0]);
            entries.extend_from_slice(&2u32.to_le_bytes());
            entries.extend_from_slice(&0b1111u16.to_le_bytes()); // level, active low
            entries.extend_from_slice(&[9, 16, 0, 0]);
            entries.extend_from_slice(&300u32.to_le_bytes());
            entries.extend_from_slice(&1u32.to_le_bytes());
            entries.extend_from_slice(&42u32.to_le_bytes());
            let madt_len = 44 + entries.len();
            let mut madt = sdt_header(b"APIC", madt_len as u32, 4);
            madt.extend_from_slice(&0xFEE0_0000u32.to_le_bytes());
            madt.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
            madt.extend(entries);
            put(&mut mem, MADT, &madt);
            fix_checksum(&mut mem, MADT, madt_len, 9);
            // FADT (ACPI 6, 276 bytes): PM timer at port 0x608, 24-bit; PM1a_CNT 0x604.
            let mut fadt = sdt_header(b"FACP", 276, 6);
            fadt.resize(276, 0);
            put(&mut fadt, 40, &(DSDT as u32).to_le_bytes());
            put(&mut fadt, 48, &0xB2u32.to_le_bytes()); // SMI_CMD
            fadt[52] = 0xF1; // ACPI_ENABLE
            put(&mut fadt, 64, &0x604u32.to_le_bytes()); // PM1a_CNT_BLK
            put(&mut fadt, 76, &0x608u32.to_le_bytes()); // PM_TMR_BLK
            fadt[89] = 2; // PM1_CNT_LEN
            fadt[91] = 4; // PM_TMR_LEN
            put(&mut fadt, 140, &(DSDT as u64).to_le_bytes()); // X_DSDT
            put(&mut mem, FADT, &fadt);
            fix_checksum(&mut mem, FADT, 276, 9);
            // DSDT with Name(\_S5_, Package(4){0x05, 0x05, 0, 0}) after some other AML.
            let aml = [
                0x10, 0x05, b'_', b'S', b'B', b'_', // Scope(_SB_) noise
                0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0A, 0x05, 0x0A, 0x05,
                0x00, 0x00,
            ];
            let mut dsdt = sdt_header(b"DSDT", (36 + aml.len()) as u32, 2);
            dsdt.extend_from_slice(&aml);
            put(&mut mem, DSDT, &dsdt);
            fix_checksum(&mut mem, DSDT, dsdt.len(), 9);
            Self { mem }
        }

        fn read(&self) -> Result<MachineInfo, AcpiError> {
            let offset = self.mem.as_ptr() as u64;
            // SAFETY: every table and pointer in the fixture lies inside `mem`, which
            // outlives the call and is not written meanwhile.
            unsafe { read_machine_info(RSDP as u64, offset) }
        }
    }

    #[test]
    fn full_machine_summary() {
        let info = Fixture::new(1).read().unwrap();
        assert_eq!(info.problems, vec![]);
        assert_eq!(
            info.cpus,
            vec![
                CpuInfo {
                    processor_uid: 0,
                    apic_id: 0,
                    enabled: true,
                    online_capable: false,
                    is_bsp: true
                },
                CpuInfo {
                    processor_uid: 1,
                    apic_id: 1,
                    enabled: true,
                    online_capable: false,
                    is_bsp: false
                },
                CpuInfo {
                    processor_uid: 42,
                    apic_id: 300,
                    enabled: true,
                    online_capable: false,
                    is_bsp: false
                },
            ]
        );
        assert_eq!(
            info.io_apics,
            vec![IoApicInfo {
                id: 7,
                address: 0xFEC0_0000,
                gsi_base: 0
            }]
        );
        assert_eq!(
            info.overrides,
            vec![IrqOverride {
                isa_irq: 0,
                gsi: 2,
                polarity: Polarity::ActiveLow,
                trigger: Trigger::Level
            }]
        );
        assert_eq!(
            info.pm_timer,
            Some(PmTimerInfo {
                port_or_address: 0x608,
                space: RegisterSpace::Io,
                is_32bit: false
            })
        );
        assert_eq!(info.local_apic_address, 0xFEE0_0000);
        assert!(info.has_8259);
        assert_eq!(
            info.power_off,
            Some(PowerOffInfo {
                pm1a_control_port: 0x604,
                pm1b_control_port: None,
                slp_typ_a: 5,
                slp_typ_b: 5,
                smi_command_port: 0xB2,
                acpi_enable: 0xF1,
            })
        );
        assert_eq!(info.application_processors().count(), 2);
    }

    #[test]
    fn disabled_cpu_and_bsp_marking() {
        let mut info = Fixture::new(0b10).read().unwrap();
        assert!(!info.cpus[1].enabled);
        assert!(info.cpus[1].online_capable);
        assert_eq!(
            info.application_processors()
                .map(|c| c.apic_id)
                .collect::<Vec<_>>(),
            vec![300]
        );
        assert!(info.mark_bsp(300));
        assert!(!info.cpus[0].is_bsp && info.cpus[2].is_bsp);
        assert!(!info.mark_bsp(99));
    }

    #[test]
    fn corrupted_madt_checksum_is_reported_and_fadt_still_read() {
        let mut f = Fixture::new(1);
        f.mem[MADT + 50] ^= 0x40;
        let info = f.read().unwrap();
        assert_eq!(
            info.problems,
            vec![AcpiError::BadChecksum { table: "APIC" }]
        );
        assert_eq!(
            info.problems[0].to_string(),
            "ACPI: APIC has a bad checksum, ignored"
        );
        assert!(info.cpus.is_empty() && info.io_apics.is_empty());
        assert_eq!(info.local_apic_address, 0);
        assert!(info.pm_timer.is_some());
    }

    #[test]
    fn zero_length_madt_entry_is_malformed_not_a_hang() {
        let mut f = Fixture::new(1);
        f.mem[MADT + 44 + 8 + 1] = 0; // second entry's length
        let len = u32::from_le_bytes(f.mem[MADT + 4..MADT + 8].try_into().unwrap()) as usize;
        fix_checksum(&mut f.mem, MADT, len, 9);
        let info = f.read().unwrap();
        assert!(matches!(
            info.problems[..],
            [AcpiError::Malformed { table: "APIC", .. }]
        ));
        assert!(info.cpus.is_empty());
    }

    #[test]
    fn missing_fadt_is_reported() {
        let mut f = Fixture::new(1);
        // Shrink the XSDT to list only the MADT.
        f.mem[XSDT + 4] = 36 + 8;
        fix_checksum(&mut f.mem, XSDT, 44, 9);
        let info = f.read().unwrap();
        assert_eq!(info.problems, vec![AcpiError::MissingTable("FACP")]);
        assert_eq!(info.cpus.len(), 3);
        assert_eq!(info.pm_timer, None);
    }

    #[test]
    fn bad_rsdp() {
        let mut f = Fixture::new(1);
        assert_eq!(unsafe_read(&f, 0), Err(AcpiError::NoRsdp));
        f.mem[RSDP] = b'X';
        assert_eq!(f.read(), Err(AcpiError::NoRsdp));
        f.mem[RSDP] = b'R';
        f.mem[RSDP + 9] ^= 1; // OEM id byte: both checksums now wrong
        let info = f.read().unwrap();
        assert_eq!(
            info.problems,
            vec![AcpiError::BadChecksum { table: "RSDP" }]
        );
        assert_eq!(info.cpus.len(), 3);
    }

    fn unsafe_read(f: &Fixture, rsdp: u64) -> Result<MachineInfo, AcpiError> {
        // SAFETY: as in `Fixture::read`; address 0 is refused before any read.
        unsafe { read_machine_info(rsdp, f.mem.as_ptr() as u64) }
    }

    #[test]
    fn s5_scan() {
        assert_eq!(
            find_s5(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x02, 0x01, 0x00]),
            Some((1, 0))
        );
        // A reference to _S5_ that is not a Name() is skipped.
        assert_eq!(
            find_s5(&[0x70, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x02, 0x01, 0x00]),
            None
        );
        assert_eq!(find_s5(b"_S5_"), None);
        assert_eq!(find_s5(&[0x08, b'_', b'S', b'5', b'_', 0x12]), None);
        // Multi-byte PkgLength and a word prefix.
        assert_eq!(
            find_s5(&[
                0x08, b'_', b'S', b'5', b'_', 0x12, 0x40, 0x01, 0x02, 0x0B, 0x07, 0x00, 0x0A, 0x03
            ]),
            Some((7, 3))
        );
    }

    #[test]
    fn madt_entry_layout_check() {
        let mut t = vec![0u8; 44];
        assert_eq!(check_madt_entries(&t), Ok(()));
        t.extend(lapic(0, 0, 1));
        assert_eq!(check_madt_entries(&t), Ok(()));
        t.extend_from_slice(&[1, 6, 0, 0, 0, 0]);
        assert!(check_madt_entries(&t).is_err());
        assert!(check_madt_entries(&t[..50]).is_err());
        assert!(check_madt_entries(&t[..20]).is_err());
    }
}
