//! The length of an intercepted instruction from its bytes in guest memory,
//! for a CPU without NRIP save (QEMU's TCG), where the VMCB's nRIP field is
//! never written.
//!
//! Only instructions that complete by being skipped need a length, and each
//! has a fixed encoding: prefixes, then opcode bytes without operands
//! ([`Skipped::opcode`]). The length is the number of prefix bytes plus the
//! opcode's (AMD APM Vol. 3, 1.2 "Instruction Prefixes"):
//!
//! - legacy prefixes 66, 67, F0, F2, F3, 2E, 36, 3E, 26, 64, 65, any number
//!   in any order (none changes the length of these opcodes: they have no
//!   ModRM operand or immediate; VMMCALL's and XSETBV's third byte is a
//!   register-form ModRM);
//! - REX (40-4F) only in 64-bit mode, where it must come right before the
//!   opcode to take effect; one followed by a legacy prefix is ignored but
//!   still a byte of the instruction. Outside 64-bit mode 40-4F are INC/DEC.
//!
//! A CR4 write intercept without decode assists needs the source register
//! as well: [`mov_to_cr`] decodes `MOV CRn, reg` (`0F 22 /r`, with REX.R
//! and REX.B extending the register numbers) the same way.
//!
//! An instruction is at most 15 bytes (longer ones raise #GP, so they never
//! cause an intercept). Bytes that do not end in the opcode the exit reported
//! mean the guest changed its code or its page tables since it ran the
//! instruction: the VM is stopped ([`StopReason::InstructionNotDecoded`]),
//! never skipped by a guess.
//!
//! The bytes are fetched at the instruction's linear address, CS base + RIP
//! (32 bits wide outside 64-bit mode; the base is 0 in 64-bit mode), through
//! the guest's page tables ([`hvcore::guest_paging`]). Only the page holding
//! RIP is read first; the next page is read only when the instruction
//! continues into it, so an instruction at the end of the last mapped page
//! decodes.

use hvcore::arch::{GuestMemory, StopReason, EFER_LMA};
use hvcore::guest_paging::{read_linear, PagingRegs};
use svm::vmcb::Vmcb;

/// The architectural limit on an instruction's length.
pub const MAX_LEN: usize = 15;

/// The legacy prefixes (APM Vol. 3, Table 1-1).
const LEGACY_PREFIXES: [u8; 11] = [
    0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65,
];

/// An intercepted instruction that completes by being skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// CPUID, 0F A2.
    Cpuid,
    /// RDMSR, 0F 32.
    Rdmsr,
    /// WRMSR, 0F 30.
    Wrmsr,
    /// HLT, F4.
    Hlt,
    /// VMMCALL, 0F 01 D9.
    Vmmcall,
    /// VMCALL, 0F 01 C1: Intel's hypercall instruction, #UD on AMD-V; the
    /// #UD intercept turns it into a hypercall so guests built for VT-x run
    /// unchanged (as KVM does).
    Vmcall,
    /// XSETBV, 0F 01 D1.
    Xsetbv,
    /// INVD, 0F 08.
    Invd,
    /// RDPMC, 0F 33.
    Rdpmc,
    /// PAUSE, F3 90 (F3 is part of it). Not intercepted today: hvcore has
    /// no exit for it; the encoding is here for when it is.
    Pause,
}

impl Skipped {
    /// The opcode bytes after the prefixes.
    pub const fn opcode(self) -> &'static [u8] {
        match self {
            Skipped::Cpuid => &[0x0F, 0xA2],
            Skipped::Rdmsr => &[0x0F, 0x32],
            Skipped::Wrmsr => &[0x0F, 0x30],
            Skipped::Hlt => &[0xF4],
            Skipped::Vmmcall => &[0x0F, 0x01, 0xD9],
            Skipped::Vmcall => &[0x0F, 0x01, 0xC1],
            Skipped::Xsetbv => &[0x0F, 0x01, 0xD1],
            Skipped::Invd => &[0x0F, 0x08],
            Skipped::Rdpmc => &[0x0F, 0x33],
            Skipped::Pause => &[0x90],
        }
    }

    /// A prefix the instruction must carry (F3 makes 90 a PAUSE).
    const fn mandatory_prefix(self) -> Option<u8> {
        match self {
            Skipped::Pause => Some(0xF3),
            _ => None,
        }
    }

    /// The mnemonic, for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Skipped::Cpuid => "CPUID",
            Skipped::Rdmsr => "RDMSR",
            Skipped::Wrmsr => "WRMSR",
            Skipped::Hlt => "HLT",
            Skipped::Vmmcall => "VMMCALL",
            Skipped::Vmcall => "VMCALL",
            Skipped::Xsetbv => "XSETBV",
            Skipped::Invd => "INVD",
            Skipped::Rdpmc => "RDPMC",
            Skipped::Pause => "PAUSE",
        }
    }
}

/// Why bytes did not give the instruction's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LengthError {
    /// After the prefixes come other bytes than the opcode.
    Mismatch,
    /// Prefixes and opcode take more than [`MAX_LEN`] bytes.
    TooLong,
    /// The bytes end before the instruction does (fewer than [`MAX_LEN`]
    /// were given).
    Truncated,
}

impl LengthError {
    /// A fixed description for [`StopReason::InstructionNotDecoded`].
    pub const fn describe(self) -> &'static str {
        match self {
            LengthError::Mismatch => "the bytes at RIP do not encode it",
            LengthError::TooLong => "the bytes at RIP are prefixes beyond 15 bytes",
            LengthError::Truncated => "the bytes at RIP end before the instruction",
        }
    }
}

/// The length of `insn` at the start of `bytes`; `mode64` is 64-bit mode
/// (REX prefixes exist). Pure: see [`fetch_length`] for the fetching.
pub fn length(bytes: &[u8], insn: Skipped, mode64: bool) -> Result<usize, LengthError> {
    let mut i = 0;
    let mut has_mandatory = insn.mandatory_prefix().is_none();
    let opcode_at = loop {
        if i >= MAX_LEN {
            return Err(LengthError::TooLong);
        }
        let Some(&b) = bytes.get(i) else {
            return Err(LengthError::Truncated);
        };
        let is_prefix = LEGACY_PREFIXES.contains(&b) || (mode64 && b & 0xF0 == 0x40);
        if !is_prefix {
            break i;
        }
        has_mandatory |= insn.mandatory_prefix() == Some(b);
        i += 1;
    };
    let opcode = insn.opcode();
    let end = opcode_at + opcode.len();
    let seen = &bytes[opcode_at..end.min(bytes.len())];
    if !has_mandatory || opcode.get(..seen.len()) != Some(seen) {
        return Err(LengthError::Mismatch);
    }
    if end > MAX_LEN {
        return Err(LengthError::TooLong);
    }
    if seen.len() < opcode.len() {
        return Err(LengthError::Truncated);
    }
    Ok(end)
}

/// A `MOV CRn, reg` decoded from its bytes ([`mov_to_cr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MovToCr {
    /// The control register written (ModRM.reg, extended by REX.R; LOCK
    /// adds 8, AMD's alternate encoding of CR8 outside 64-bit mode).
    pub cr: u8,
    /// The source register (ModRM.rm, extended by REX.B), 0 = RAX .. 15 = R15.
    pub gpr: u8,
    /// The instruction's length.
    pub len: usize,
}

/// The opcode of MOV to a control register (APM Vol. 3, "MOV CRn").
const MOV_TO_CR: [u8; 2] = [0x0F, 0x22];

/// Decodes `MOV CRn, reg` (`0F 22 /r`) at the start of `bytes`: legacy
/// prefixes, a REX prefix right before the opcode (64-bit mode only), the
/// opcode and a ModRM byte whose `mod` field is ignored (the operand is
/// always a register, APM Vol. 3 "MOV CRn"). Pure: see [`fetch_mov_to_cr4`].
pub fn mov_to_cr(bytes: &[u8], mode64: bool) -> Result<MovToCr, LengthError> {
    let mut i = 0;
    let mut rex = 0u8;
    let mut lock = false;
    let opcode_at = loop {
        if i >= MAX_LEN {
            return Err(LengthError::TooLong);
        }
        let Some(&b) = bytes.get(i) else {
            return Err(LengthError::Truncated);
        };
        if mode64 && b & 0xF0 == 0x40 {
            rex = b;
        } else if LEGACY_PREFIXES.contains(&b) {
            // A REX followed by a legacy prefix is ignored.
            rex = 0;
            lock |= b == 0xF0;
        } else {
            break i;
        }
        i += 1;
    };
    let end = opcode_at + MOV_TO_CR.len() + 1;
    let seen = &bytes[opcode_at..end.min(bytes.len())];
    let opcode_seen = &seen[..seen.len().min(MOV_TO_CR.len())];
    if MOV_TO_CR[..opcode_seen.len()] != *opcode_seen {
        return Err(LengthError::Mismatch);
    }
    if end > MAX_LEN {
        return Err(LengthError::TooLong);
    }
    let Some(&modrm) = seen.get(2) else {
        return Err(LengthError::Truncated);
    };
    let rex_r = (rex >> 2) & 1;
    let rex_b = rex & 1;
    Ok(MovToCr {
        cr: ((modrm >> 3) & 7) | (rex_r << 3) | if lock { 8 } else { 0 },
        gpr: (modrm & 7) | (rex_b << 3),
        len: end,
    })
}

/// Where the guest's code is, from the VMCB's state-save area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLocation {
    /// The paging registers that translate it.
    pub paging: PagingRegs,
    /// Linear address of the instruction: CS base + RIP.
    pub linear: u64,
    /// 64-bit mode (EFER.LMA and CS.L): REX prefixes exist, linear
    /// addresses are 64 bits.
    pub mode64: bool,
}

impl CodeLocation {
    /// The instruction at RIP of `vmcb`.
    pub fn of(vmcb: &Vmcb) -> CodeLocation {
        let s = &vmcb.save;
        let mode64 = s.efer & EFER_LMA != 0 && s.cs.attrib.is_long();
        CodeLocation {
            paging: PagingRegs {
                cr0: s.cr0,
                cr3: s.cr3,
                cr4: s.cr4,
                efer: s.efer,
            },
            linear: if mode64 {
                s.rip
            } else {
                s.cs.base.wrapping_add(s.rip) & 0xFFFF_FFFF
            },
            mode64,
        }
    }

    /// The linear address `offset` bytes on (wrapping at 4 GiB outside
    /// 64-bit mode, as code fetches do).
    fn at(&self, offset: usize) -> u64 {
        let a = self.linear.wrapping_add(offset as u64);
        if self.mode64 {
            a
        } else {
            a & 0xFFFF_FFFF
        }
    }
}

/// Reads the instruction at RIP of `vmcb` from guest memory and returns its
/// length, checking that it is `insn`. The error is the VM's stop reason.
pub fn fetch_length(vmcb: &Vmcb, mem: &dyn GuestMemory, insn: Skipped) -> Result<u64, StopReason> {
    fetch_decoded(vmcb, mem, insn.name(), |bytes, mode64| {
        length(bytes, insn, mode64)
    })
    .map(|n| n as u64)
}

/// Reads the `MOV CR4, reg` at RIP of `vmcb` from guest memory (for a CR4
/// write intercept without decode assists) and returns its source register
/// (0 = RAX .. 15 = R15) and length. Bytes that are not a MOV to CR4 stop
/// the VM, as in [`fetch_length`].
pub fn fetch_mov_to_cr4(vmcb: &Vmcb, mem: &dyn GuestMemory) -> Result<(u8, u64), StopReason> {
    fetch_decoded(vmcb, mem, "MOV CR4", |bytes, mode64| {
        let mov = mov_to_cr(bytes, mode64)?;
        if mov.cr != 4 {
            return Err(LengthError::Mismatch);
        }
        Ok((mov.gpr, mov.len as u64))
    })
}

/// Reads the instruction at RIP of `vmcb` and decodes it with `decode`:
/// only the page holding RIP first, the next page when `decode` finds the
/// bytes end too early. Errors become
/// [`StopReason::InstructionNotDecoded`] naming `name`.
fn fetch_decoded<T>(
    vmcb: &Vmcb,
    mem: &dyn GuestMemory,
    name: &'static str,
    decode: impl Fn(&[u8], bool) -> Result<T, LengthError>,
) -> Result<T, StopReason> {
    let code = CodeLocation::of(vmcb);
    let stop = |why| StopReason::InstructionNotDecoded {
        instruction: name,
        why,
        linear: code.linear,
        rip: vmcb.save.rip,
    };
    let mut buf = [0u8; MAX_LEN];
    let in_page = 4096 - (code.linear & 0xFFF) as usize;
    let first = in_page.min(MAX_LEN);
    read_linear(mem, &code.paging, code.linear, &mut buf[..first])
        .map_err(|e| stop(e.describe()))?;
    match decode(&buf[..first], code.mode64) {
        Err(LengthError::Truncated) if first < MAX_LEN => {
            // The instruction continues on the next page.
            read_linear(mem, &code.paging, code.at(first), &mut buf[first..])
                .map_err(|e| stop(e.describe()))?;
            decode(&buf, code.mode64)
        }
        other => other,
    }
    .map_err(|e| stop(e.describe()))
}

/// Up to [`MAX_LEN`] bytes at RIP of `vmcb`, for reports: as many as the
/// guest's page tables map (the page holding RIP, then the next one), and
/// how many that is (0 when none could be read).
pub fn bytes_at_rip(vmcb: &Vmcb, mem: &dyn GuestMemory) -> ([u8; MAX_LEN], usize) {
    let code = CodeLocation::of(vmcb);
    let mut buf = [0u8; MAX_LEN];
    let in_page = 4096 - (code.linear & 0xFFF) as usize;
    let first = in_page.min(MAX_LEN);
    if read_linear(mem, &code.paging, code.linear, &mut buf[..first]).is_err() {
        return (buf, 0);
    }
    if first < MAX_LEN && read_linear(mem, &code.paging, code.at(first), &mut buf[first..]).is_ok()
    {
        return (buf, MAX_LEN);
    }
    (buf, first)
}

#[cfg(test)]
pub(crate) mod testmem {
    //! Guest memory for host tests: RAM from 0, and 4-level page tables
    //! built in it.
    use alloc::vec;
    use alloc::vec::Vec;
    use hvcore::arch::{GuestMemory, GuestMemoryError};

    /// Guest RAM at 0..len.
    pub struct Ram(pub Vec<u8>);

    impl Ram {
        pub fn new(len: usize) -> Ram {
            Ram(vec![0; len])
        }

        pub fn put(&mut self, gpa: u64, bytes: &[u8]) {
            let at = gpa as usize;
            self.0[at..at + bytes.len()].copy_from_slice(bytes);
        }

        fn put64(&mut self, gpa: u64, v: u64) {
            self.put(gpa, &v.to_le_bytes());
        }

        /// 4-level tables with the PML4 at `PML4`, mapping each 4 KiB
        /// `(linear, gpa)` page (linear below 2 MiB); tables at 0x1000-0x3FFF.
        pub fn map_4k(&mut self, pages: &[(u64, u64)]) {
            self.put64(Self::PML4, 0x2000 | 3);
            self.put64(0x2000, 0x3000 | 3);
            self.put64(0x3000, 0x4000 | 3);
            for &(linear, gpa) in pages {
                self.put64(0x4000 + (linear >> 12) * 8, gpa | 3);
            }
        }

        /// Where [`Ram::map_4k`] puts the PML4 (the guest's CR3).
        pub const PML4: u64 = 0x1000;
    }

    impl GuestMemory for Ram {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
            let src = usize::try_from(gpa)
                .ok()
                .and_then(|s| self.0.get(s..s.checked_add(buf.len())?))
                .ok_or(GuestMemoryError::OutOfRange { gpa })?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testmem::Ram;
    use super::*;
    use hvcore::arch::{CR0_PE, CR0_PG, CR4_PAE, EFER_LME};
    use svm::vmcb::{SegmentAttributes, SegmentRegister};

    use LengthError::*;
    use Skipped::*;

    #[test]
    fn plain_and_prefixed_encodings() {
        assert_eq!(length(&[0x0F, 0xA2], Cpuid, true), Ok(2));
        assert_eq!(length(&[0x66, 0x0F, 0xA2, 0xCC], Cpuid, false), Ok(3));
        assert_eq!(length(&[0xF4], Hlt, false), Ok(1));
        assert_eq!(length(&[0x0F, 0x01, 0xD9], Vmmcall, true), Ok(3));
        assert_eq!(length(&[0x0F, 0x01, 0xD1], Xsetbv, false), Ok(3));
        assert_eq!(length(&[0x0F, 0x32], Rdmsr, false), Ok(2));
        assert_eq!(length(&[0x0F, 0x08], Invd, false), Ok(2));
        assert_eq!(length(&[0x0F, 0x33], Rdpmc, false), Ok(2));
        // Every legacy prefix, once each, before WRMSR: 11 + 2.
        let mut b = LEGACY_PREFIXES.to_vec();
        b.extend([0x0F, 0x30]);
        assert_eq!(length(&b, Wrmsr, false), Ok(13));
        // PAUSE needs its F3; 90 alone is NOP.
        assert_eq!(length(&[0xF3, 0x90], Pause, false), Ok(2));
        assert_eq!(length(&[0x2E, 0xF3, 0x90], Pause, false), Ok(3));
        assert_eq!(length(&[0x90], Pause, false), Err(Mismatch));
    }

    #[test]
    fn rex_only_in_64_bit_mode() {
        // REX.W CPUID: 3 bytes in 64-bit mode; DEC EAX elsewhere.
        assert_eq!(length(&[0x48, 0x0F, 0xA2], Cpuid, true), Ok(3));
        assert_eq!(length(&[0x48, 0x0F, 0xA2], Cpuid, false), Err(Mismatch));
        // A REX followed by a legacy prefix is ignored, but still a byte.
        assert_eq!(length(&[0x41, 0x66, 0x0F, 0xA2], Cpuid, true), Ok(4));
        assert_eq!(length(&[0x66, 0x4F, 0x0F, 0x30], Wrmsr, true), Ok(4));
    }

    #[test]
    fn fifteen_bytes_at_most() {
        let with_prefixes = |n: usize, opcode: &[u8]| {
            let mut b = alloc::vec![0x66; n];
            b.extend_from_slice(opcode);
            b
        };
        // 13 prefixes + CPUID = 15: fine; 14 + 2 = 16: too long.
        assert_eq!(
            length(&with_prefixes(13, &[0x0F, 0xA2]), Cpuid, false),
            Ok(15)
        );
        assert_eq!(
            length(&with_prefixes(14, &[0x0F, 0xA2]), Cpuid, false),
            Err(TooLong)
        );
        assert_eq!(length(&with_prefixes(14, &[0xF4]), Hlt, false), Ok(15));
        // Prefixes only, 15 of them or more: too long, whatever follows.
        assert_eq!(
            length(&with_prefixes(15, &[0xF4]), Hlt, false),
            Err(TooLong)
        );
        assert_eq!(length(&[0x66; 15], Hlt, false), Err(TooLong));
    }

    #[test]
    fn short_input_asks_for_more_unless_it_already_mismatches() {
        assert_eq!(length(&[], Hlt, false), Err(Truncated));
        assert_eq!(length(&[0x66, 0x67], Cpuid, false), Err(Truncated));
        assert_eq!(length(&[0x0F], Cpuid, false), Err(Truncated));
        assert_eq!(length(&[0x0F, 0x01], Vmmcall, true), Err(Truncated));
        assert_eq!(length(&[0x0F, 0x01, 0xD8], Vmmcall, true), Err(Mismatch));
        assert_eq!(length(&[0x0F, 0xA3], Cpuid, false), Err(Mismatch));
        assert_eq!(length(&[0x90], Cpuid, false), Err(Mismatch));
        assert_eq!(length(&[0x0F], Hlt, false), Err(Mismatch));
    }

    #[test]
    fn mov_to_cr_operands() {
        let mov = |cr, gpr, len| Ok(MovToCr { cr, gpr, len });
        // mov cr4, rax / mov cr4, r15 (REX.B) / mov cr0, rbx.
        assert_eq!(mov_to_cr(&[0x0F, 0x22, 0xE0], true), mov(4, 0, 3));
        assert_eq!(mov_to_cr(&[0x41, 0x0F, 0x22, 0xE7], true), mov(4, 15, 4));
        assert_eq!(mov_to_cr(&[0x0F, 0x22, 0xC3], false), mov(0, 3, 3));
        // REX.R selects CR8 (mov cr8, rcx); LOCK does outside 64-bit mode.
        assert_eq!(mov_to_cr(&[0x44, 0x0F, 0x22, 0xC1], true), mov(8, 1, 4));
        assert_eq!(mov_to_cr(&[0xF0, 0x0F, 0x22, 0xC1], false), mov(8, 1, 4));
        // The mod field is ignored: 0x24 is still CR4 <- RSP.
        assert_eq!(mov_to_cr(&[0x0F, 0x22, 0x24], true), mov(4, 4, 3));
        // Outside 64-bit mode 41 is INC ECX, not a prefix.
        assert_eq!(mov_to_cr(&[0x41, 0x0F, 0x22, 0xE7], false), Err(Mismatch));
        // A REX before a legacy prefix is ignored (but counted).
        assert_eq!(
            mov_to_cr(&[0x41, 0x66, 0x0F, 0x22, 0xE7], true),
            mov(4, 7, 5)
        );
        // Not a MOV to CR: MOV from CR4 (0F 20), and short input.
        assert_eq!(mov_to_cr(&[0x0F, 0x20, 0xE0], true), Err(Mismatch));
        assert_eq!(mov_to_cr(&[0x0F, 0x22], true), Err(Truncated));
        assert_eq!(mov_to_cr(&[0x0F], true), Err(Truncated));
        assert_eq!(mov_to_cr(&[0x90], true), Err(Mismatch));
        let mut b = alloc::vec![0x66; 13];
        b.extend([0x0F, 0x22, 0xE0]);
        assert_eq!(mov_to_cr(&b, false), Err(TooLong));
    }

    #[test]
    fn mov_to_cr4_from_guest_memory() {
        let mut mem = Ram::new(0x1_0000);
        mem.map_4k(&[(0x10_000, 0x9000), (0x11_000, 0x7000)]);
        // The crs guest's `mov cr4, r15`, split across two pages.
        mem.put(0x9FFE, &[0x41, 0x0F]);
        mem.put(0x7000, &[0x22, 0xE7]);
        assert_eq!(fetch_mov_to_cr4(&long_vmcb(0x10FFE), &mem), Ok((15, 4)));
        // A MOV to CR0 where the exit said CR4: not decoded, the VM stops.
        mem.put(0x9000, &[0x0F, 0x22, 0xC0]);
        assert_eq!(
            fetch_mov_to_cr4(&long_vmcb(0x10000), &mem),
            Err(StopReason::InstructionNotDecoded {
                instruction: "MOV CR4",
                why: "the bytes at RIP do not encode it",
                linear: 0x10000,
                rip: 0x10000
            })
        );
        // Bytes for a report: 15 where both pages are mapped, the rest of
        // the page where the next one is not.
        let (b, n) = bytes_at_rip(&long_vmcb(0x10FFE), &mem);
        assert_eq!((n, &b[..4]), (MAX_LEN, &[0x41, 0x0F, 0x22, 0xE7][..]));
        let mut mem = Ram::new(0x1_0000);
        mem.map_4k(&[(0x10_000, 0x9000)]);
        assert_eq!(bytes_at_rip(&long_vmcb(0x10FFE), &mem).1, 2);
        assert_eq!(bytes_at_rip(&long_vmcb(0x20000), &mem).1, 0);
    }

    /// A VMCB at RIP `rip` in 64-bit mode over [`Ram::map_4k`] tables.
    fn long_vmcb(rip: u64) -> Vmcb {
        let mut v = Vmcb::new();
        v.save.cr0 = CR0_PE | CR0_PG;
        v.save.cr3 = Ram::PML4;
        v.save.cr4 = CR4_PAE;
        v.save.efer = EFER_LME | EFER_LMA;
        v.save.cs = SegmentRegister::new(8, SegmentAttributes::CODE64, 0xFFFF_FFFF, 0);
        v.save.rip = rip;
        v
    }

    #[test]
    fn an_instruction_across_two_pages_mapped_apart() {
        let mut mem = Ram::new(0x1_0000);
        // Linear 0x10000 -> 0x9000, 0x11000 -> 0x7000.
        mem.map_4k(&[(0x10_000, 0x9000), (0x11_000, 0x7000)]);
        mem.put(0x9FFE, &[0x66, 0x0F]);
        mem.put(0x7000, &[0x01, 0xD9]);
        let v = long_vmcb(0x10FFE);
        assert_eq!(fetch_length(&v, &mem, Vmmcall), Ok(4));
        // The same with the second page unmapped: stopped, naming why.
        let mut mem = Ram::new(0x1_0000);
        mem.map_4k(&[(0x10_000, 0x9000)]);
        mem.put(0x9FFE, &[0x66, 0x0F]);
        assert_eq!(
            fetch_length(&v, &mem, Vmmcall),
            Err(StopReason::InstructionNotDecoded {
                instruction: "VMMCALL",
                why: "a guest page-table entry is not present",
                linear: 0x10FFE,
                rip: 0x10FFE
            })
        );
    }

    #[test]
    fn the_next_page_is_read_only_when_needed() {
        let mut mem = Ram::new(0x1_0000);
        mem.map_4k(&[(0x10_000, 0x9000)]);
        mem.put(0x9FFF, &[0xF4]);
        assert_eq!(fetch_length(&long_vmcb(0x10FFF), &mem, Hlt), Ok(1));
        // Garbage at the end of the page: a mismatch, not a fetch error.
        mem.put(0x9FFF, &[0x90]);
        assert_eq!(
            fetch_length(&long_vmcb(0x10FFF), &mem, Hlt).map_err(|e| alloc::format!("{e}")),
            Err(
                "the length of the HLT at rip 0x10fff (linear 0x10fff) could not be read \
                 from guest memory: the bytes at RIP do not encode it"
                    .into()
            )
        );
    }

    #[test]
    fn code_location_follows_the_mode() {
        let v = long_vmcb(0xFFFF_8000_0000_1000);
        let c = CodeLocation::of(&v);
        assert!(c.mode64);
        assert_eq!(c.linear, 0xFFFF_8000_0000_1000);
        // Compatibility mode: CS base counts, 32-bit wrap, no REX.
        let mut v = long_vmcb(0xFFFF_FFF0);
        v.save.cs = SegmentRegister::new(8, SegmentAttributes::CODE32, 0xFFFF_FFFF, 0x20);
        let c = CodeLocation::of(&v);
        assert!(!c.mode64);
        assert_eq!((c.linear, c.at(0x12)), (0x10, 0x22));
        // Real mode: CS base + IP, no paging.
        let mut v = Vmcb::new();
        v.save.cs = SegmentRegister::new(0xF000, SegmentAttributes::CODE16, 0xFFFF, 0xF_0000);
        v.save.rip = 0xFFF0;
        let c = CodeLocation::of(&v);
        assert_eq!((c.linear, c.mode64), (0xF_FFF0, false));
        assert_eq!(c.paging, PagingRegs::default());
    }

    #[test]
    fn real_mode_fetch() {
        let mut mem = Ram::new(0x10_0000);
        mem.put(0xF_FFF0, &[0x2E, 0x0F, 0x30]);
        let mut v = Vmcb::new();
        v.save.cs = SegmentRegister::new(0xF000, SegmentAttributes::CODE16, 0xFFFF, 0xF_0000);
        v.save.rip = 0xFFF0;
        assert_eq!(fetch_length(&v, &mem, Wrmsr), Ok(3));
        // RIP outside the VM's memory.
        v.save.cs.base = 0x1000_0000;
        assert_eq!(
            fetch_length(&v, &mem, Wrmsr),
            Err(StopReason::InstructionNotDecoded {
                instruction: "WRMSR",
                why: "the page lies outside the VM's memory",
                linear: 0x1000_FFF0,
                rip: 0xFFF0
            })
        );
    }
}
