//! Interrupt messages on a VM's virtual APIC bus: what an I/O APIC
//! redirection entry (82093AA datasheet, 3.2.4) or a local APIC's interrupt
//! command register (SDM Vol. 3A 11.6.1) sends, decoded once into types.
//!
//! Both sources use the same fields: a vector, a delivery mode, a destination
//! (physical or logical, or an ICR shorthand), the trigger mode and, for
//! IPIs, the level. Which local APICs a destination names is decided by
//! [`crate::devices::lapic`] over the VM's own vCPUs only: a message can
//! never name anything outside its VM.

/// Delivery mode (ICR bits 10:8, redirection entry bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// 000: the vector to every destination.
    Fixed,
    /// 001: the vector to the destination with the lowest priority.
    LowestPriority,
    /// 010: a system-management interrupt (vector ignored).
    Smi,
    /// 100: a non-maskable interrupt (vector ignored).
    Nmi,
    /// 101: INIT (or, with level de-assert and level trigger, INIT level
    /// de-assert, which modern CPUs ignore).
    Init,
    /// 110: start-up IPI: a CPU in wait-for-SIPI starts in real mode at
    /// vector * 0x1000 (ICR only).
    StartUp,
    /// 111: the interrupt comes from an external 8259A (vector from its INTA).
    ExtInt,
}

impl DeliveryMode {
    /// The mode of bits 10:8 (`bits` in 0..8); `None` for the reserved 011.
    pub fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            7 => DeliveryMode::ExtInt,
            _ => return None,
        })
    }

    /// The encoding of bits 10:8.
    pub fn bits(self) -> u8 {
        match self {
            DeliveryMode::Fixed => 0,
            DeliveryMode::LowestPriority => 1,
            DeliveryMode::Smi => 2,
            DeliveryMode::Nmi => 4,
            DeliveryMode::Init => 5,
            DeliveryMode::StartUp => 6,
            DeliveryMode::ExtInt => 7,
        }
    }
}

/// Whom a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Physical destination mode: an APIC ID (all ones is a broadcast:
    /// 0xFF in xAPIC mode, 0xFFFF_FFFF in x2APIC mode).
    Physical(u32),
    /// Logical destination mode: a logical destination compared with each
    /// APIC's LDR (and DFR in xAPIC mode).
    Logical(u32),
    /// ICR shorthand 01: the sender only.
    SelfOnly,
    /// ICR shorthand 10: every APIC of the VM, the sender included.
    AllIncludingSelf,
    /// ICR shorthand 11: every APIC of the VM but the sender.
    AllExcludingSelf,
}

/// One interrupt message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptMessage {
    /// The vector (ignored for NMI, SMI, INIT and ExtINT; the start page for
    /// a start-up IPI).
    pub vector: u8,
    /// How it is delivered.
    pub mode: DeliveryMode,
    /// To whom.
    pub dest: Destination,
    /// Level-triggered (an EOI for it is broadcast to the I/O APIC).
    pub level_triggered: bool,
    /// Level assert (ICR bit 14); an INIT with de-assert is ignored.
    pub assert: bool,
}
