//! The instruction behind an MMIO access: what it does, with which register
//! or immediate, how wide, and how long it is.
//!
//! The emulated local APIC (xAPIC page at 0xFEE00000) and I/O APIC
//! (0xFEC00000) are trapped through nested paging (EPT violation on VT-x,
//! nested page fault on AMD-V). The exit gives the guest-physical address but
//! neither the value nor the register, so the backend fetches up to
//! [`MAX_LEN`] bytes at the guest's RIP and [`decode`]s them here; the
//! device access is then done with [`MmioInsn::write_value`] and
//! [`MmioInsn::complete_read`], and RIP advances by [`MmioInsn::len`].
//!
//! # What is decoded (SDM Vol. 2, chapter 2 and the MOV/MOVZX/MOVSX/XCHG pages)
//!
//! | Opcode        | Instruction           | [`MmioOp`]                       |
//! |---------------|-----------------------|----------------------------------|
//! | `88 /r`       | `MOV r/m8, r8`        | `Store { src: Reg }`             |
//! | `89 /r`       | `MOV r/m, r`          | `Store { src: Reg }`             |
//! | `8A /r`       | `MOV r8, r/m8`        | `Load { extend: None }`          |
//! | `8B /r`       | `MOV r, r/m`          | `Load { extend: None }`          |
//! | `C6 /0 ib`    | `MOV r/m8, imm8`      | `Store { src: Imm }`             |
//! | `C7 /0 iw/id` | `MOV r/m, imm`        | `Store { src: Imm }` (REX.W: imm32 sign-extended) |
//! | `A0`-`A3`     | `MOV AL/rAX, moffs` and back | `Load` / `Store` of register 0 |
//! | `0F B6/B7`    | `MOVZX r, r/m8/16`    | `Load { extend: Zero }`          |
//! | `0F BE/BF`    | `MOVSX r, r/m8/16`    | `Load { extend: Sign }`          |
//! | `86 /r`, `87 /r` | `XCHG r/m, r`      | `Xchg`                           |
//!
//! Prefixes: operand size (66), address size (67), segment overrides (2E 36
//! 3E 26 64 65; reported in [`MmioInsn::segment`], the address is known from
//! the exit), LOCK (F0; only with XCHG, which is locked anyway: elsewhere it
//! is `#UD` on hardware) and REX (40-4F) in 64-bit mode. A REX takes effect
//! only right before the opcode: one followed by another prefix is ignored
//! but still a byte of the instruction (SDM Vol. 2A 2.2.1). Outside 64-bit
//! mode 40-4F are `INC`/`DEC`, so not decoded.
//!
//! Everything else is an error ([`MmioDecodeError`]): REP/REPNE (F2/F3, so
//! also every string instruction with them), the string instructions
//! themselves (`STOS`, `MOVS`), VEX/EVEX/XOP, x87, other ALU instructions
//! with memory operands, a register operand (`mod = 11`, which cannot have
//! touched memory), input that ends too early and instructions over 15
//! bytes. The caller injects `#UD` or stops the VM; no byte sequence makes
//! the decoder panic.
//!
//! ModRM, SIB and displacement bytes are parsed only to be skipped: with
//! 32/64-bit addressing `mod = 00 rm = 101` is a disp32 (RIP-relative in
//! 64-bit mode, absolute otherwise) and a SIB with `base = 101` under
//! `mod = 00` adds a disp32; with 16-bit addressing `mod = 00 rm = 110` is a
//! disp16 and there is no SIB.
//!
//! # Registers
//!
//! Register numbers are in the encoding's order (0 = RAX ... 4 = RSP ...
//! 15 = R15), as in [`GuestRegs::gpr`]. Byte registers 4-7 without any REX
//! prefix are AH, CH, DH, BH ([`Gpr::High8`]); with a REX prefix (even a bare
//! 40) they are SPL, BPL, SIL, DIL. RSP is not in [`GuestRegs`]: the
//! backend keeps it, so the helpers read and write it through
//! [`GuestCpu`] ([`Reg::Rsp`]), as the control-register handler does.
//!
//! Results follow the x86 rules for register destinations: a 32-bit result
//! zero-extends into the whole 64-bit register, 8- and 16-bit results merge
//! into the low bits (AH..BH: bits 15:8) and leave the rest alone.

use core::fmt;

use crate::arch::{AccessSize, Action, GuestCpu, GuestRegs, Platform, Reg, StateError, StopReason};
use crate::guest_paging::{read_linear, PagingRegs};
use crate::vcpu::VmContext;

/// The architectural limit on an instruction's length (SDM Vol. 2A 2.3.11):
/// longer ones raise `#GP` and never reach an MMIO exit.
pub const MAX_LEN: usize = 15;

/// The default operand and address size of the code the guest runs: what
/// the CPU mode and the CS descriptor select (SDM Vol. 1 3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeSize {
    /// 16-bit: real mode, virtual-8086 mode, or a CS with D = 0 (66 and 67
    /// switch to 32 bits).
    Bits16,
    /// 32-bit: protected or compatibility mode with CS.D = 1 (66 and 67
    /// switch to 16 bits).
    Bits32,
    /// 64-bit mode (EFER.LMA and CS.L): operands 32 bits by default, 64 with
    /// REX.W, 16 with 66; addresses 64 bits, 32 with 67; REX prefixes exist.
    Bits64,
}

impl CodeSize {
    /// The code size from the mode bits: `long_mode_active` (EFER.LMA),
    /// `cs_l` and `cs_d` (the CS descriptor's L and D/B bits). Virtual-8086
    /// mode is 16-bit whatever the cached descriptor says: pass
    /// [`CodeSize::Bits16`] directly.
    pub fn from_cs(long_mode_active: bool, cs_l: bool, cs_d: bool) -> CodeSize {
        if long_mode_active && cs_l {
            CodeSize::Bits64
        } else if cs_d {
            CodeSize::Bits32
        } else {
            CodeSize::Bits16
        }
    }
}

/// A segment-override prefix (reported, not used: the exit has the address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// 26.
    Es,
    /// 2E.
    Cs,
    /// 36.
    Ss,
    /// 3E.
    Ds,
    /// 64.
    Fs,
    /// 65.
    Gs,
}

/// A general-purpose register operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gpr {
    /// The low bytes of register `n` (0 = RAX ... 15 = R15), as many as the
    /// operand is wide: AL/AX/EAX/RAX for 0, SPL/SP/ESP/RSP for 4 (SPL only
    /// with a REX prefix), R8B/R8W/R8D/R8 for 8. Only the low 4 bits of `n`
    /// are used.
    Low(u8),
    /// Bits 15:8 of register `n` (0 = AH, 1 = CH, 2 = DH, 3 = BH): byte
    /// registers 4-7 encoded without a REX prefix. Always one byte. Only the
    /// low 2 bits of `n` are used.
    High8(u8),
}

impl Gpr {
    /// The 64-bit register that holds this operand (0 = RAX ... 15 = R15).
    pub fn number(self) -> u8 {
        match self {
            Gpr::Low(n) => n & 15,
            Gpr::High8(n) => n & 3,
        }
    }
}

/// A store's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A register, [`MmioInsn::size`] bytes of it.
    Reg(Gpr),
    /// An immediate, already extended as the instruction does (`C7` with
    /// REX.W: imm32 sign-extended to 64 bits).
    Imm(u64),
}

/// How a load widens the value read into its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// `MOV`: the destination is as wide as the access.
    None,
    /// `MOVZX`: zero extension.
    Zero,
    /// `MOVSX`: sign extension.
    Sign,
}

/// What the instruction does with the MMIO location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioOp {
    /// Reads [`MmioInsn::size`] bytes into `dest`, extended by `extend` to
    /// `dest_size` bytes (1, 2, 4 or 8; equal to the access size for `MOV`).
    Load {
        /// Destination register.
        dest: Gpr,
        /// Zero or sign extension (`MOVZX`, `MOVSX`).
        extend: Extend,
        /// Width of the destination in bytes.
        dest_size: u8,
    },
    /// Writes [`MmioInsn::size`] bytes of `src`.
    Store {
        /// Register or immediate.
        src: Operand,
    },
    /// `XCHG`: reads the location, writes `reg` to it and puts the old value
    /// in `reg` (all [`MmioInsn::size`] bytes wide).
    Xchg {
        /// The register exchanged with memory.
        reg: Gpr,
    },
}

/// A decoded instruction that accesses memory-mapped I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioInsn {
    /// Length in bytes, prefixes included (1..=15): how far RIP advances.
    pub len: u8,
    /// What the instruction does.
    pub op: MmioOp,
    /// Width of the memory access in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// The last segment-override prefix, if any.
    pub segment: Option<Segment>,
}

/// Why bytes at RIP were not decoded. The caller injects `#UD` or stops the
/// VM with this as the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioDecodeError {
    /// The bytes end before the instruction does (fewer than [`MAX_LEN`]
    /// were given: fetch more, e.g. from the next page).
    Truncated,
    /// Not an instruction this decoder emulates. One-byte opcodes are given
    /// as `0x00XX`, two-byte ones (after the 0F escape) as `0x0FXX`.
    Unsupported {
        /// The opcode.
        opcode: u16,
    },
    /// A prefix the instruction may not have here: REP/REPNE (F3/F2), or LOCK
    /// (F0) on anything but `XCHG`.
    UnsupportedPrefix(u8),
    /// The ModRM byte names a register (`mod = 11`): the instruction does not
    /// access memory, so it cannot have caused an MMIO exit.
    RegisterOperand,
    /// The instruction would be longer than [`MAX_LEN`] bytes.
    TooLong,
}

impl fmt::Display for MmioDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MmioDecodeError::Truncated => write!(f, "the instruction bytes end too early"),
            MmioDecodeError::Unsupported { opcode } if opcode > 0xFF => {
                write!(
                    f,
                    "unsupported MMIO instruction, opcode {:02X} {:02X}",
                    opcode >> 8,
                    opcode & 0xFF
                )
            }
            MmioDecodeError::Unsupported { opcode } => {
                write!(f, "unsupported MMIO instruction, opcode {opcode:02X}")
            }
            MmioDecodeError::UnsupportedPrefix(p) => {
                write!(f, "unsupported prefix {p:02X} on an MMIO instruction")
            }
            MmioDecodeError::RegisterOperand => {
                write!(f, "the instruction has no memory operand")
            }
            MmioDecodeError::TooLong => write!(f, "the instruction is longer than 15 bytes"),
        }
    }
}

/// Reads the instruction bytes in order, enforcing [`MAX_LEN`] before the
/// end of the input (an instruction over 15 bytes is [`MmioDecodeError::TooLong`]
/// however many bytes were given).
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> Result<u8, MmioDecodeError> {
        if self.pos >= MAX_LEN {
            return Err(MmioDecodeError::TooLong);
        }
        let b = *self.bytes.get(self.pos).ok_or(MmioDecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// A little-endian value of `n` bytes (n <= 8).
    fn le(&mut self, n: u8) -> Result<u64, MmioDecodeError> {
        let mut v = 0u64;
        for i in 0..n.min(8) {
            v |= u64::from(self.next()?) << (8 * i);
        }
        Ok(v)
    }

    fn skip(&mut self, n: u8) -> Result<(), MmioDecodeError> {
        for _ in 0..n {
            self.next()?;
        }
        Ok(())
    }
}

/// Skips the memory operand after a ModRM byte (SIB and displacement) with
/// `addr_size`-byte addressing; a register operand is an error.
fn skip_memory_operand(
    c: &mut Cursor<'_>,
    modrm: u8,
    addr_size: u8,
) -> Result<(), MmioDecodeError> {
    let md = modrm >> 6;
    let rm = modrm & 7;
    if md == 3 {
        return Err(MmioDecodeError::RegisterOperand);
    }
    let disp = if addr_size == 2 {
        // SDM Vol. 2A Table 2-1: no SIB; [disp16] replaces [BP].
        match md {
            0 if rm == 6 => 2,
            0 => 0,
            1 => 1,
            _ => 2,
        }
    } else {
        // SDM Vol. 2A Tables 2-2, 2-3 (and 2.2.1.6, RIP-relative).
        let mut disp = match md {
            0 => 0,
            1 => 1,
            _ => 4,
        };
        if rm == 4 {
            let sib = c.next()?;
            if md == 0 && sib & 7 == 5 {
                disp = 4;
            }
        } else if md == 0 && rm == 5 {
            disp = 4;
        }
        disp
    };
    c.skip(disp)
}

/// Decodes the instruction at the start of `bytes` (up to [`MAX_LEN`] are
/// looked at; more are ignored) for code of size `mode`. Never panics.
pub fn decode(bytes: &[u8], mode: CodeSize) -> Result<MmioInsn, MmioDecodeError> {
    use MmioDecodeError::*;

    let mut c = Cursor { bytes, pos: 0 };
    let mut opsize_prefix = false;
    let mut addrsize_prefix = false;
    let mut lock = false;
    let mut segment = None;
    let mut rex: Option<u8> = None;
    let opcode = loop {
        let b = c.next()?;
        match b {
            0x66 => opsize_prefix = true,
            0x67 => addrsize_prefix = true,
            0xF0 => lock = true,
            0xF2 | 0xF3 => return Err(UnsupportedPrefix(b)),
            0x26 => segment = Some(Segment::Es),
            0x2E => segment = Some(Segment::Cs),
            0x36 => segment = Some(Segment::Ss),
            0x3E => segment = Some(Segment::Ds),
            0x64 => segment = Some(Segment::Fs),
            0x65 => segment = Some(Segment::Gs),
            0x40..=0x4F if mode == CodeSize::Bits64 => {
                rex = Some(b);
                continue;
            }
            _ => break b,
        }
        // A legacy prefix after a REX: the REX is ignored.
        rex = None;
    };

    let rex_bits = rex.unwrap_or(0);
    let rex_w = rex_bits & 8 != 0;
    let rex_r = (rex_bits >> 2) & 1;
    let op_size: u8 = match mode {
        CodeSize::Bits64 if rex_w => 8,
        CodeSize::Bits64 | CodeSize::Bits32 => {
            if opsize_prefix {
                2
            } else {
                4
            }
        }
        CodeSize::Bits16 => {
            if opsize_prefix {
                4
            } else {
                2
            }
        }
    };
    let addr_size: u8 = match (mode, addrsize_prefix) {
        (CodeSize::Bits64, false) => 8,
        (CodeSize::Bits64, true) | (CodeSize::Bits32, false) | (CodeSize::Bits16, true) => 4,
        (CodeSize::Bits32, true) | (CodeSize::Bits16, false) => 2,
    };
    // Byte registers 4-7: AH..BH without a REX prefix, SPL..DIL with one.
    let reg8 = |n: u8| {
        if rex.is_none() && (4..8).contains(&n) {
            Gpr::High8(n - 4)
        } else {
            Gpr::Low(n)
        }
    };

    let opcode = match opcode {
        0x0F => 0x0F00 | u16::from(c.next()?),
        b => u16::from(b),
    };
    if !matches!(
        opcode,
        0x88..=0x8B | 0x86 | 0x87 | 0xC6 | 0xC7 | 0xA0..=0xA3 | 0x0FB6 | 0x0FB7 | 0x0FBE | 0x0FBF
    ) {
        return Err(Unsupported { opcode });
    }
    if lock && !matches!(opcode, 0x86 | 0x87) {
        return Err(UnsupportedPrefix(0xF0));
    }

    let (op, size) = if let 0xA0..=0xA3 = opcode {
        // MOV AL/rAX <-> moffs: an address-size offset, no ModRM; REX.B does
        // not apply (the register is always AL/rAX).
        c.skip(addr_size)?;
        let size = if opcode & 1 == 0 { 1 } else { op_size };
        let op = if opcode & 2 == 0 {
            MmioOp::Load {
                dest: Gpr::Low(0),
                extend: Extend::None,
                dest_size: size,
            }
        } else {
            MmioOp::Store {
                src: Operand::Reg(Gpr::Low(0)),
            }
        };
        (op, size)
    } else {
        let modrm = c.next()?;
        let reg = ((modrm >> 3) & 7) | (rex_r << 3);
        if matches!(opcode, 0xC6 | 0xC7) && (modrm >> 3) & 7 != 0 {
            // C6/C7 /1-/7: #UD, or XABORT/XBEGIN (register forms).
            return Err(Unsupported { opcode });
        }
        skip_memory_operand(&mut c, modrm, addr_size)?;
        match opcode {
            0x88 => (
                MmioOp::Store {
                    src: Operand::Reg(reg8(reg)),
                },
                1,
            ),
            0x89 => (
                MmioOp::Store {
                    src: Operand::Reg(Gpr::Low(reg)),
                },
                op_size,
            ),
            0x8A => (
                MmioOp::Load {
                    dest: reg8(reg),
                    extend: Extend::None,
                    dest_size: 1,
                },
                1,
            ),
            0x8B => (
                MmioOp::Load {
                    dest: Gpr::Low(reg),
                    extend: Extend::None,
                    dest_size: op_size,
                },
                op_size,
            ),
            0x86 => (MmioOp::Xchg { reg: reg8(reg) }, 1),
            0x87 => (MmioOp::Xchg { reg: Gpr::Low(reg) }, op_size),
            0xC6 => (
                MmioOp::Store {
                    src: Operand::Imm(c.le(1)?),
                },
                1,
            ),
            0xC7 => {
                let imm = match op_size {
                    2 => c.le(2)?,
                    4 => c.le(4)?,
                    // REX.W: imm32 sign-extended to 64 bits.
                    _ => c.le(4)? as u32 as i32 as i64 as u64,
                };
                (
                    MmioOp::Store {
                        src: Operand::Imm(imm),
                    },
                    op_size,
                )
            }
            _ => {
                // 0F B6/B7/BE/BF: MOVZX/MOVSX from a byte (B6, BE) or a word.
                let size = if opcode & 1 == 0 { 1 } else { 2 };
                let extend = if opcode & 8 == 0 {
                    Extend::Zero
                } else {
                    Extend::Sign
                };
                (
                    MmioOp::Load {
                        dest: Gpr::Low(reg),
                        extend,
                        dest_size: op_size,
                    },
                    size,
                )
            }
        }
    };

    Ok(MmioInsn {
        // At most MAX_LEN (15): Cursor::next stops there.
        len: c.pos as u8,
        op,
        size,
        segment,
    })
}

/// All-ones in the low `size` bytes (8 or more: all 64 bits).
fn mask(size: u8) -> u64 {
    match size {
        0 => 0,
        1..=7 => (1u64 << (8 * u32::from(size))) - 1,
        _ => u64::MAX,
    }
}

/// `value`'s low `size` bytes sign-extended to 64 bits.
fn sign_extend(value: u64, size: u8) -> u64 {
    match size {
        1..=7 => {
            let shift = 64 - 8 * u32::from(size);
            (((value << shift) as i64) >> shift) as u64
        }
        _ => value,
    }
}

/// The `size`-byte operand `reg` (zero-extended) in the 64-bit register
/// value `full`. [`Gpr::High8`] is always one byte: bits 15:8.
pub fn extract(full: u64, reg: Gpr, size: u8) -> u64 {
    match reg {
        Gpr::Low(_) => full & mask(size),
        Gpr::High8(_) => (full >> 8) & 0xFF,
    }
}

/// The 64-bit register value after writing the `size`-byte result `value`
/// to `reg` when it held `old`: a 4-byte result zero-extends to 64 bits, an
/// 8-byte one replaces it, 1- and 2-byte results replace only their bytes
/// ([`Gpr::High8`]: bits 15:8).
pub fn merge(old: u64, reg: Gpr, size: u8, value: u64) -> u64 {
    match (reg, size) {
        (Gpr::High8(_), _) => (old & !0xFF00) | ((value & 0xFF) << 8),
        (Gpr::Low(_), 4) => value & 0xFFFF_FFFF,
        (Gpr::Low(_), s) if s >= 8 => value,
        (Gpr::Low(_), s) => (old & !mask(s)) | (value & mask(s)),
    }
}

/// Reads the whole 64-bit register `n` (0..=15): from `regs`, RSP from `cpu`.
fn read_full(n: u8, regs: &GuestRegs, cpu: &mut dyn GuestCpu) -> Result<u64, StateError> {
    match regs.gpr(n) {
        Some(v) => Ok(v),
        None => cpu.read(Reg::Rsp),
    }
}

/// Reads the `size`-byte operand `reg` (zero-extended to 64 bits); RSP (and
/// SPL/SP/ESP) through `cpu`.
pub fn read_gpr(
    reg: Gpr,
    size: u8,
    regs: &GuestRegs,
    cpu: &mut dyn GuestCpu,
) -> Result<u64, StateError> {
    Ok(extract(read_full(reg.number(), regs, cpu)?, reg, size))
}

/// Writes the `size`-byte result `value` to `reg` with the rules of
/// [`merge`]; RSP (and SPL/SP/ESP) through `cpu`.
pub fn write_gpr(
    reg: Gpr,
    size: u8,
    value: u64,
    regs: &mut GuestRegs,
    cpu: &mut dyn GuestCpu,
) -> Result<(), StateError> {
    let n = reg.number();
    let old = if matches!(reg, Gpr::Low(_)) && size >= 4 {
        0 // Replaced whole: no need to read it (nor RSP from the backend).
    } else {
        read_full(n, regs, cpu)?
    };
    let new = merge(old, reg, size, value);
    if !regs.set_gpr(n, new) {
        cpu.write(Reg::Rsp, new)?;
    }
    Ok(())
}

impl MmioInsn {
    /// Whether the instruction reads the location (a load or `XCHG`).
    pub fn reads_memory(&self) -> bool {
        !matches!(self.op, MmioOp::Store { .. })
    }

    /// Whether the instruction writes the location (a store or `XCHG`).
    pub fn writes_memory(&self) -> bool {
        !matches!(self.op, MmioOp::Load { .. })
    }

    /// The access width as an [`AccessSize`]; `None` for 8-byte accesses,
    /// which it has no variant for.
    pub fn access_size(&self) -> Option<AccessSize> {
        AccessSize::from_bytes(self.size)
    }

    /// The value the instruction writes to the location ([`MmioInsn::size`]
    /// bytes, zero-extended): a store's register or immediate, or the
    /// register of an `XCHG` (read it before [`MmioInsn::complete_read`]
    /// overwrites it). `None` for a load.
    pub fn write_value(
        &self,
        regs: &GuestRegs,
        cpu: &mut dyn GuestCpu,
    ) -> Result<Option<u64>, StateError> {
        let value = match self.op {
            MmioOp::Load { .. } => return Ok(None),
            MmioOp::Store {
                src: Operand::Imm(imm),
            } => imm & mask(self.size),
            MmioOp::Store {
                src: Operand::Reg(reg),
            }
            | MmioOp::Xchg { reg } => read_gpr(reg, self.size, regs, cpu)?,
        };
        Ok(Some(value))
    }

    /// Completes the instruction with `value`, what the location held
    /// ([`MmioInsn::size`] bytes; higher bits are ignored): a load extends it
    /// and writes its destination, an `XCHG` writes it to its register, a
    /// store does nothing.
    pub fn complete_read(
        &self,
        value: u64,
        regs: &mut GuestRegs,
        cpu: &mut dyn GuestCpu,
    ) -> Result<(), StateError> {
        let value = value & mask(self.size);
        match self.op {
            MmioOp::Store { .. } => Ok(()),
            MmioOp::Xchg { reg } => write_gpr(reg, self.size, value, regs, cpu),
            MmioOp::Load {
                dest,
                extend,
                dest_size,
            } => {
                let value = match extend {
                    Extend::None | Extend::Zero => value,
                    Extend::Sign => sign_extend(value, self.size),
                };
                write_gpr(dest, dest_size, value, regs, cpu)
            }
        }
    }
}

/// What an emulated access is to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Device {
    /// The vCPU's local APIC (xAPIC page).
    LocalApic,
    /// The VM's I/O APIC.
    IoApic,
}

impl Device {
    fn what(self) -> &'static str {
        match self {
            Device::LocalApic => "an access to the local APIC page",
            Device::IoApic => "an access to the I/O APIC",
        }
    }
}

/// Emulates the instruction behind a nested-paging exit at `gpa` when an
/// emulated device's registers live there (the vCPU's xAPIC page, the I/O
/// APIC window); `None` for any other address (the caller reports the
/// violation). Reads the instruction at RIP through the guest's page tables,
/// decodes it ([`decode`]), performs its 32-bit register access (`XCHG`:
/// a read, then the write) and skips it. Only 64-bit code is emulated (a
/// kernel's, as Linux's is); anything else, an instruction that cannot be
/// fetched or decoded, or a failed register access stops the VM with a
/// report. Accesses of other widths than 32 bits read all ones and are
/// dropped (the registers are 32 bits wide and must be accessed so, SDM
/// Vol. 3A 11.4.1; 82093AA 3.0).
pub fn emulate<P: Platform>(
    vm: &mut VmContext,
    gpa: u64,
    regs: &mut GuestRegs,
    env: &mut P,
) -> Option<Action> {
    let device = if vm.ioapic_claims(gpa) {
        Device::IoApic
    } else if env.apic_mmio_claims(gpa) {
        Device::LocalApic
    } else {
        return None;
    };
    let stop = |why: &'static str, linear: u64, regs: &GuestRegs| {
        Action::Stop(StopReason::InstructionNotDecoded {
            instruction: device.what(),
            why,
            linear,
            rip: regs.rip,
        })
    };
    let insn = match fetch(regs, env) {
        Ok(bytes) => match decode(&bytes.0[..bytes.1], CodeSize::Bits64) {
            Ok(insn) => insn,
            Err(MmioDecodeError::Truncated) => {
                return Some(stop("its bytes could not be read", regs.rip, regs))
            }
            Err(_) => return Some(stop("not a MOV/MOVZX/MOVSX/XCHG", regs.rip, regs)),
        },
        Err(Fetch::NotLongMode) => {
            return Some(stop("emulated only in 64-bit mode", regs.rip, regs))
        }
        Err(Fetch::State(e)) => return Some(crate::arch::state_failure(e, regs)),
        Err(Fetch::Unmapped) => return Some(stop("its bytes could not be read", regs.rip, regs)),
    };
    let offset = (gpa & 0xFFF) as u32;
    let wide = insn.size == 4;
    let written = match insn.write_value(regs, env.guest_cpu()) {
        Ok(v) => v.filter(|_| wide).map(|v| v as u32),
        Err(e) => return Some(crate::arch::state_failure(e, regs)),
    };
    let mut access = |write: Option<u32>| match device {
        Device::IoApic => vm.ioapic_mmio(offset, write),
        Device::LocalApic => {
            let (value, eoi) = env.apic_mmio(gpa, write);
            if let Some(vector) = eoi {
                vm.ioapic_eoi(vector);
            }
            value
        }
    };
    // XCHG reads the location, then writes it: the register gets what the
    // location held before the write (a write itself reads nothing).
    let read = match written {
        Some(_) if insn.reads_memory() => {
            let old = access(None);
            access(written);
            old
        }
        _ => access(written),
    };
    if insn.reads_memory() {
        let value = if wide { u64::from(read) } else { u64::MAX };
        if let Err(e) = insn.complete_read(value, regs, env.guest_cpu()) {
            return Some(crate::arch::state_failure(e, regs));
        }
    }
    regs.instruction_len = u64::from(insn.len);
    Some(Action::AdvanceRip)
}

/// Why the instruction bytes could not be fetched.
enum Fetch {
    NotLongMode,
    Unmapped,
    State(StateError),
}

/// Up to [`MAX_LEN`] bytes at RIP (fewer when the next page is not mapped)
/// in 64-bit mode, where CS's base is 0.
fn fetch<P: Platform>(regs: &GuestRegs, env: &mut P) -> Result<([u8; MAX_LEN], usize), Fetch> {
    let cpu = env.guest_cpu();
    let read = |cpu: &mut dyn GuestCpu, reg| cpu.read(reg).map_err(Fetch::State);
    if read(cpu, Reg::Mode64)? != 1 {
        return Err(Fetch::NotLongMode);
    }
    let paging = PagingRegs {
        cr0: read(cpu, Reg::Cr0)?,
        cr3: read(cpu, Reg::Cr3)?,
        cr4: read(cpu, Reg::Cr4)?,
        efer: read(cpu, Reg::Efer)?,
    };
    let mem = env.guest_memory();
    let mut buf = [0u8; MAX_LEN];
    let in_page = 4096 - (regs.rip & 0xFFF) as usize;
    let first = in_page.min(MAX_LEN);
    read_linear(mem, &paging, regs.rip, &mut buf[..first]).map_err(|_| Fetch::Unmapped)?;
    if first < MAX_LEN
        && read_linear(
            mem,
            &paging,
            regs.rip.wrapping_add(first as u64),
            &mut buf[first..],
        )
        .is_ok()
    {
        return Ok((buf, MAX_LEN));
    }
    Ok((buf, first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::testenv::FakeCpu;
    use alloc::vec::Vec;
    use CodeSize::*;
    use MmioDecodeError::*;

    fn load(dest: Gpr, extend: Extend, dest_size: u8) -> MmioOp {
        MmioOp::Load {
            dest,
            extend,
            dest_size,
        }
    }

    fn mov_load(dest: Gpr, size: u8) -> MmioOp {
        load(dest, Extend::None, size)
    }

    fn store_reg(src: Gpr) -> MmioOp {
        MmioOp::Store {
            src: Operand::Reg(src),
        }
    }

    fn store_imm(imm: u64) -> MmioOp {
        MmioOp::Store {
            src: Operand::Imm(imm),
        }
    }

    fn insn(len: u8, op: MmioOp, size: u8) -> MmioInsn {
        MmioInsn {
            len,
            op,
            size,
            segment: None,
        }
    }

    use Gpr::{High8, Low};

    /// (bytes, mode, expected decode), from real encodings (as assembled by
    /// GNU as / NASM).
    #[allow(clippy::type_complexity)]
    fn table() -> Vec<(&'static [u8], CodeSize, Result<MmioInsn, MmioDecodeError>)> {
        alloc::vec![
            // mov [0xfee000b0], eax: ModRM 04 -> SIB 25 (no base, no index) + disp32.
            (
                &[0x89, 0x04, 0x25, 0xB0, 0x00, 0xE0, 0xFE],
                Bits64,
                Ok(insn(7, store_reg(Low(0)), 4))
            ),
            // mov eax, [rip+0x1234]
            (
                &[0x8B, 0x05, 0x34, 0x12, 0x00, 0x00],
                Bits64,
                Ok(insn(6, mov_load(Low(0), 4), 4))
            ),
            // mov dword [rip+0x10], 0xdeadbeef
            (
                &[0xC7, 0x05, 0x10, 0, 0, 0, 0xEF, 0xBE, 0xAD, 0xDE],
                Bits64,
                Ok(insn(10, store_imm(0xDEAD_BEEF), 4))
            ),
            // mov [rax], rbx
            (
                &[0x48, 0x89, 0x18],
                Bits64,
                Ok(insn(3, store_reg(Low(3)), 8))
            ),
            // mov [rax], dx
            (
                &[0x66, 0x89, 0x10],
                Bits64,
                Ok(insn(3, store_reg(Low(2)), 2))
            ),
            // mov [rax], r8d
            (
                &[0x44, 0x89, 0x00],
                Bits64,
                Ok(insn(3, store_reg(Low(8)), 4))
            ),
            // xchg [rax], edx; lock xchg [rax], edx; xchg [rax], dh; xchg [rax], sil
            (
                &[0x87, 0x10],
                Bits64,
                Ok(insn(2, MmioOp::Xchg { reg: Low(2) }, 4))
            ),
            (
                &[0xF0, 0x87, 0x10],
                Bits64,
                Ok(insn(3, MmioOp::Xchg { reg: Low(2) }, 4))
            ),
            (
                &[0x86, 0x30],
                Bits64,
                Ok(insn(2, MmioOp::Xchg { reg: High8(2) }, 1))
            ),
            (
                &[0x40, 0x86, 0x30],
                Bits64,
                Ok(insn(3, MmioOp::Xchg { reg: Low(6) }, 1))
            ),
            // xchg [rdi], r15
            (
                &[0x4C, 0x87, 0x3F],
                Bits64,
                Ok(insn(3, MmioOp::Xchg { reg: Low(15) }, 8))
            ),
            // movzx eax, byte [rax]; movzx eax, word [rax]
            (
                &[0x0F, 0xB6, 0x00],
                Bits64,
                Ok(insn(3, load(Low(0), Extend::Zero, 4), 1))
            ),
            (
                &[0x0F, 0xB7, 0x00],
                Bits64,
                Ok(insn(3, load(Low(0), Extend::Zero, 4), 2))
            ),
            // movsx ecx, word [rax]; movsx rax, byte [rax]; movsx r9w, byte [rax]
            (
                &[0x0F, 0xBF, 0x08],
                Bits64,
                Ok(insn(3, load(Low(1), Extend::Sign, 4), 2))
            ),
            (
                &[0x48, 0x0F, 0xBE, 0x00],
                Bits64,
                Ok(insn(4, load(Low(0), Extend::Sign, 8), 1))
            ),
            (
                &[0x66, 0x44, 0x0F, 0xBE, 0x08],
                Bits64,
                Ok(insn(5, load(Low(9), Extend::Sign, 2), 1))
            ),
            // mov [rsp], ah (no REX) vs mov [rsp], spl (REX 40) vs mov [r12], spl
            (
                &[0x88, 0x24, 0x24],
                Bits64,
                Ok(insn(3, store_reg(High8(0)), 1))
            ),
            (
                &[0x40, 0x88, 0x24, 0x24],
                Bits64,
                Ok(insn(4, store_reg(Low(4)), 1))
            ),
            (
                &[0x41, 0x88, 0x24, 0x24],
                Bits64,
                Ok(insn(4, store_reg(Low(4)), 1))
            ),
            // mov bh, [rax]; mov r12b, [rax]
            (&[0x8A, 0x38], Bits64, Ok(insn(2, mov_load(High8(3), 1), 1))),
            (
                &[0x44, 0x8A, 0x20],
                Bits64,
                Ok(insn(3, mov_load(Low(12), 1), 1))
            ),
            // mov eax, [moffs64]; mov [moffs64], rax; mov al, [moffs32] (67)
            (
                &[0xA1, 0xB0, 0x00, 0xE0, 0xFE, 0, 0, 0, 0],
                Bits64,
                Ok(insn(9, mov_load(Low(0), 4), 4))
            ),
            (
                &[0x48, 0xA3, 0xB0, 0x00, 0xE0, 0xFE, 0, 0, 0, 0],
                Bits64,
                Ok(insn(10, store_reg(Low(0)), 8))
            ),
            (
                &[0x67, 0xA0, 0xB0, 0x00, 0xE0, 0xFE],
                Bits64,
                Ok(insn(6, mov_load(Low(0), 1), 1))
            ),
            // mov eax, [eax]
            (
                &[0x67, 0x8B, 0x00],
                Bits64,
                Ok(insn(3, mov_load(Low(0), 4), 4))
            ),
            // mov eax, [rax+0x30]; mov eax, [rax+0x300]; mov eax, [rsp+8]
            (
                &[0x8B, 0x40, 0x30],
                Bits64,
                Ok(insn(3, mov_load(Low(0), 4), 4))
            ),
            (
                &[0x8B, 0x80, 0x00, 0x03, 0, 0],
                Bits64,
                Ok(insn(6, mov_load(Low(0), 4), 4))
            ),
            (
                &[0x8B, 0x44, 0x24, 0x08],
                Bits64,
                Ok(insn(4, mov_load(Low(0), 4), 4))
            ),
            // mov eax, [rax*8+0xfee00000]: SIB base 101 under mod 00 -> disp32
            (
                &[0x8B, 0x04, 0xC5, 0x00, 0x00, 0xE0, 0xFE],
                Bits64,
                Ok(insn(7, mov_load(Low(0), 4), 4))
            ),
            // mov eax, [rsp+0x300]; mov eax, [rbp+0]; mov eax, [rbp+0x300]
            (
                &[0x8B, 0x84, 0x24, 0x00, 0x03, 0, 0],
                Bits64,
                Ok(insn(7, mov_load(Low(0), 4), 4))
            ),
            (
                &[0x8B, 0x45, 0x00],
                Bits64,
                Ok(insn(3, mov_load(Low(0), 4), 4))
            ),
            (
                &[0x8B, 0x85, 0x00, 0x03, 0, 0],
                Bits64,
                Ok(insn(6, mov_load(Low(0), 4), 4))
            ),
            // mov eax, [r12]; mov r15, [rip+0x100]
            (
                &[0x41, 0x8B, 0x04, 0x24],
                Bits64,
                Ok(insn(4, mov_load(Low(0), 4), 4))
            ),
            (
                &[0x4C, 0x8B, 0x3D, 0x00, 0x01, 0, 0],
                Bits64,
                Ok(insn(7, mov_load(Low(15), 8), 8))
            ),
            // mov byte [rax], 0x7f; mov word [rax], 0x1234; mov qword [rax], -1
            (&[0xC6, 0x00, 0x7F], Bits64, Ok(insn(3, store_imm(0x7F), 1))),
            (
                &[0x66, 0xC7, 0x00, 0x34, 0x12],
                Bits64,
                Ok(insn(5, store_imm(0x1234), 2))
            ),
            (
                &[0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0xFF],
                Bits64,
                Ok(insn(7, store_imm(u64::MAX), 8))
            ),
            (
                &[0x48, 0xC7, 0x00, 0x00, 0x00, 0x00, 0x80],
                Bits64,
                Ok(insn(7, store_imm(0xFFFF_FFFF_8000_0000), 8))
            ),
            (
                &[0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0x7F],
                Bits64,
                Ok(insn(7, store_imm(0x7FFF_FFFF), 8))
            ),
            // mov dword [rax+0xb0], 0 (disp32 + imm32)
            (
                &[0xC7, 0x80, 0xB0, 0, 0, 0, 0, 0, 0, 0],
                Bits64,
                Ok(insn(10, store_imm(0), 4))
            ),
            // A REX before a legacy prefix is ignored: 48 66 89 10 is mov [rax], dx.
            (
                &[0x48, 0x66, 0x89, 0x10],
                Bits64,
                Ok(insn(4, store_reg(Low(2)), 2))
            ),
            // REX.W beats 66: mov [rax], rdx.
            (
                &[0x66, 0x48, 0x89, 0x10],
                Bits64,
                Ok(insn(4, store_reg(Low(2)), 8))
            ),
            // The last REX counts: 44 48 89 00 is mov [rax], rax.
            (
                &[0x44, 0x48, 0x89, 0x00],
                Bits64,
                Ok(insn(4, store_reg(Low(0)), 8))
            ),
            // Errors.
            (&[0x89, 0xC0], Bits64, Err(RegisterOperand)),
            (&[0x0F, 0xB6, 0xC0], Bits64, Err(RegisterOperand)),
            (&[0xF0, 0x89, 0x10], Bits64, Err(UnsupportedPrefix(0xF0))),
            (&[0xF3, 0x89, 0x10], Bits64, Err(UnsupportedPrefix(0xF3))),
            (&[0xF3, 0xAB], Bits64, Err(UnsupportedPrefix(0xF3))),
            (&[0xAB], Bits64, Err(Unsupported { opcode: 0xAB })), // stosd
            (&[0xA5], Bits64, Err(Unsupported { opcode: 0xA5 })), // movsd
            (&[0x01, 0x00], Bits64, Err(Unsupported { opcode: 0x01 })), // add [rax], eax
            (
                &[0xC5, 0xF9, 0x6F, 0x00],
                Bits64,
                Err(Unsupported { opcode: 0xC5 })
            ), // VEX
            (
                &[0x62, 0xF1, 0x7C, 0x48, 0x10, 0x00],
                Bits64,
                Err(Unsupported { opcode: 0x62 })
            ), // EVEX
            (&[0xD9, 0x00], Bits64, Err(Unsupported { opcode: 0xD9 })), // fld dword [rax]
            (
                &[0x0F, 0x10, 0x00],
                Bits64,
                Err(Unsupported { opcode: 0x0F10 })
            ), // movups
            (
                &[0xC7, 0xF8, 0, 0, 0, 0],
                Bits64,
                Err(Unsupported { opcode: 0xC7 })
            ), // xbegin
            (
                &[0xC7, 0x08, 0, 0, 0, 0],
                Bits64,
                Err(Unsupported { opcode: 0xC7 })
            ), // C7 /1
            (&[0xC6, 0x00], Bits64, Err(Truncated)),
            (&[0x8B, 0x05, 0x00, 0x00], Bits64, Err(Truncated)),
            (&[0x8B], Bits64, Err(Truncated)),
            (&[0x0F], Bits64, Err(Truncated)),
            (&[0x66, 0x67], Bits64, Err(Truncated)),
            (&[], Bits64, Err(Truncated)),
            // Segment overrides are skipped (and reported, see below).
            (
                &[0x64, 0x8B, 0x04, 0x25, 0x00, 0x00, 0xE0, 0xFE],
                Bits64,
                Ok(MmioInsn {
                    segment: Some(Segment::Fs),
                    ..insn(8, mov_load(Low(0), 4), 4)
                })
            ),
            // 32-bit code.
            // mov ecx, [0xfee000b0]: absolute disp32, not RIP-relative.
            (
                &[0x8B, 0x0D, 0xB0, 0x00, 0xE0, 0xFE],
                Bits32,
                Ok(insn(6, mov_load(Low(1), 4), 4))
            ),
            (
                &[0x89, 0x04, 0x25, 0xB0, 0x00, 0xE0, 0xFE],
                Bits32,
                Ok(insn(7, store_reg(Low(0)), 4))
            ),
            (
                &[0xA1, 0xB0, 0x00, 0xE0, 0xFE],
                Bits32,
                Ok(insn(5, mov_load(Low(0), 4), 4))
            ),
            (
                &[0x67, 0xA3, 0x00, 0x10],
                Bits32,
                Ok(insn(4, store_reg(Low(0)), 4))
            ),
            (
                &[0x66, 0x89, 0x08],
                Bits32,
                Ok(insn(3, store_reg(Low(1)), 2))
            ),
            // mov [0xfee00080], ah
            (
                &[0x88, 0x25, 0x80, 0x00, 0xE0, 0xFE],
                Bits32,
                Ok(insn(6, store_reg(High8(0)), 1))
            ),
            (
                &[0xC7, 0x05, 0xB0, 0x00, 0xE0, 0xFE, 0, 0, 0, 0],
                Bits32,
                Ok(insn(10, store_imm(0), 4))
            ),
            // mov eax, [bx] (67: 16-bit addressing); mov eax, [esp+4]
            (
                &[0x67, 0x8B, 0x07],
                Bits32,
                Ok(insn(3, mov_load(Low(0), 4), 4))
            ),
            (
                &[0x8B, 0x44, 0x24, 0x04],
                Bits32,
                Ok(insn(4, mov_load(Low(0), 4), 4))
            ),
            (
                &[0x87, 0x15, 0xB0, 0x00, 0xE0, 0xFE],
                Bits32,
                Ok(insn(6, MmioOp::Xchg { reg: Low(2) }, 4))
            ),
            // 40-4F are INC/DEC outside 64-bit mode.
            (
                &[0x40, 0x89, 0x00],
                Bits32,
                Err(Unsupported { opcode: 0x40 })
            ),
            (
                &[0x48, 0x89, 0x18],
                Bits32,
                Err(Unsupported { opcode: 0x48 })
            ),
            // 16-bit code.
            // mov ax, [bx]; mov ax, [0x1234]; mov eax, [bx]
            (&[0x8B, 0x07], Bits16, Ok(insn(2, mov_load(Low(0), 2), 2))),
            (
                &[0x8B, 0x06, 0x34, 0x12],
                Bits16,
                Ok(insn(4, mov_load(Low(0), 2), 2))
            ),
            (
                &[0x66, 0x8B, 0x07],
                Bits16,
                Ok(insn(3, mov_load(Low(0), 4), 4))
            ),
            // mov ax, [bx+0x10]; mov ax, [bx+0x1234]; mov ax, [bp+0]
            (
                &[0x8B, 0x47, 0x10],
                Bits16,
                Ok(insn(3, mov_load(Low(0), 2), 2))
            ),
            (
                &[0x8B, 0x87, 0x34, 0x12],
                Bits16,
                Ok(insn(4, mov_load(Low(0), 2), 2))
            ),
            (
                &[0x8B, 0x46, 0x00],
                Bits16,
                Ok(insn(3, mov_load(Low(0), 2), 2))
            ),
            // mov ax, [0xfee000b0] with 32-bit addressing (67, SIB, disp32)
            (
                &[0x67, 0x8B, 0x04, 0x25, 0xB0, 0x00, 0xE0, 0xFE],
                Bits16,
                Ok(insn(8, mov_load(Low(0), 2), 2))
            ),
            (
                &[0xA1, 0x34, 0x12],
                Bits16,
                Ok(insn(3, mov_load(Low(0), 2), 2))
            ),
            (
                &[0x67, 0x66, 0xA1, 0xB0, 0x00, 0xE0, 0xFE],
                Bits16,
                Ok(insn(7, mov_load(Low(0), 4), 4))
            ),
            // mov word [0x1234], 0x5678; mov dword [0x1234], 0x9abcdef0
            (
                &[0xC7, 0x06, 0x34, 0x12, 0x78, 0x56],
                Bits16,
                Ok(insn(6, store_imm(0x5678), 2))
            ),
            (
                &[0x66, 0xC7, 0x06, 0x34, 0x12, 0xF0, 0xDE, 0xBC, 0x9A],
                Bits16,
                Ok(insn(9, store_imm(0x9ABC_DEF0), 4))
            ),
            // movzx ax, byte [bx]; mov [si], ch
            (
                &[0x0F, 0xB6, 0x07],
                Bits16,
                Ok(insn(3, load(Low(0), Extend::Zero, 2), 1))
            ),
            (&[0x88, 0x2C], Bits16, Ok(insn(2, store_reg(High8(1)), 1))),
            (&[0x8B, 0xC0], Bits16, Err(RegisterOperand)),
        ]
    }

    #[test]
    fn real_encodings() {
        for (bytes, mode, expected) in table() {
            assert_eq!(decode(bytes, mode), expected, "{bytes:02x?} in {mode:?}");
            if let Ok(i) = expected {
                assert_eq!(usize::from(i.len), bytes.len(), "{bytes:02x?}");
                // Bytes after the instruction do not matter.
                let mut longer = bytes.to_vec();
                longer.extend([0x90; 8]);
                assert_eq!(decode(&longer, mode), expected, "{bytes:02x?} + more");
            }
        }
    }

    #[test]
    fn fifteen_bytes_at_most() {
        let with_prefixes = |n: usize| {
            let mut b = alloc::vec![0x66; n];
            b.extend([0x89, 0x00]);
            b
        };
        // 13 prefixes + 89 00 = 15 bytes: fine; 14 + 2 = 16: too long.
        assert_eq!(
            decode(&with_prefixes(13), Bits64),
            Ok(insn(15, store_reg(Low(0)), 2))
        );
        assert_eq!(decode(&with_prefixes(14), Bits64), Err(TooLong));
        // Too long even when the input stops early, once past 15 bytes.
        assert_eq!(decode(&[0x66; 15], Bits32), Err(TooLong));
        assert_eq!(decode(&[0x66; 14], Bits32), Err(Truncated));
        // Prefixes, then a displacement and immediate beyond 15 bytes.
        let mut b = alloc::vec![0x3E; 6];
        b.extend([0xC7, 0x05, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode(&b, Bits64), Err(TooLong));
        assert_eq!(decode(&b[1..], Bits64).map(|i| i.len), Ok(15));
    }

    #[test]
    fn code_size_from_mode_bits() {
        assert_eq!(CodeSize::from_cs(true, true, false), Bits64);
        assert_eq!(CodeSize::from_cs(true, false, true), Bits32);
        assert_eq!(CodeSize::from_cs(true, false, false), Bits16);
        assert_eq!(CodeSize::from_cs(false, true, true), Bits32);
        assert_eq!(CodeSize::from_cs(false, false, false), Bits16);
    }

    #[test]
    fn error_messages() {
        let s = |e: MmioDecodeError| alloc::format!("{e}");
        assert_eq!(
            s(Unsupported { opcode: 0xAB }),
            "unsupported MMIO instruction, opcode AB"
        );
        assert_eq!(
            s(Unsupported { opcode: 0x0F10 }),
            "unsupported MMIO instruction, opcode 0F 10"
        );
        assert_eq!(
            s(UnsupportedPrefix(0xF3)),
            "unsupported prefix F3 on an MMIO instruction"
        );
        assert_eq!(s(Truncated), "the instruction bytes end too early");
        assert_eq!(s(RegisterOperand), "the instruction has no memory operand");
        assert_eq!(s(TooLong), "the instruction is longer than 15 bytes");
    }

    fn regs() -> GuestRegs {
        GuestRegs {
            rax: 0x1111_2222_3333_4444,
            rcx: 0xAAAA_BBBB_CCCC_DDDD,
            rdx: 0x0102_0304_0506_0708,
            r8: 0x8888_8888_8888_8888,
            ..Default::default()
        }
    }

    fn complete(bytes: &[u8], mode: CodeSize, value: u64, regs: &mut GuestRegs, cpu: &mut FakeCpu) {
        let i = decode(bytes, mode).unwrap();
        i.complete_read(value, regs, cpu).unwrap();
    }

    #[test]
    fn loads_write_back_with_x86_rules() {
        let mut cpu = FakeCpu::new();
        // mov eax, [rax]: 32 bits zero-extend to 64.
        let mut r = regs();
        complete(
            &[0x8B, 0x00],
            Bits64,
            0xFFFF_FFFF_DEAD_BEEF,
            &mut r,
            &mut cpu,
        );
        assert_eq!(r.rax, 0xDEAD_BEEF);
        // mov rax, [rax]: all 64 bits.
        complete(
            &[0x48, 0x8B, 0x00],
            Bits64,
            0x1234_5678_9ABC_DEF0,
            &mut r,
            &mut cpu,
        );
        assert_eq!(r.rax, 0x1234_5678_9ABC_DEF0);
        // mov cx, [rax]: 16 bits merge.
        let mut r = regs();
        complete(&[0x66, 0x8B, 0x08], Bits64, 0x5555_9999, &mut r, &mut cpu);
        assert_eq!(r.rcx, 0xAAAA_BBBB_CCCC_9999);
        // mov dl, [rax] and mov dh, [rax]: one byte each, the right one.
        complete(&[0x8A, 0x10], Bits64, 0x1AB, &mut r, &mut cpu);
        assert_eq!(r.rdx, 0x0102_0304_0506_07AB);
        complete(&[0x8A, 0x30], Bits64, 0xCD, &mut r, &mut cpu);
        assert_eq!(r.rdx, 0x0102_0304_0506_CDAB);
        // mov r8b, [rax]
        complete(&[0x44, 0x8A, 0x00], Bits64, 0x12, &mut r, &mut cpu);
        assert_eq!(r.r8, 0x8888_8888_8888_8812);
        // movzx ecx, byte [rax]; movzx cx, byte [rax] (merges 16 bits)
        let mut r = regs();
        complete(&[0x0F, 0xB6, 0x08], Bits64, 0xFF80, &mut r, &mut cpu);
        assert_eq!(r.rcx, 0x80);
        let mut r = regs();
        complete(&[0x66, 0x0F, 0xB6, 0x08], Bits64, 0x80, &mut r, &mut cpu);
        assert_eq!(r.rcx, 0xAAAA_BBBB_CCCC_0080);
        // movsx ecx, byte [rax]: sign to 32 bits, then zero to 64.
        complete(&[0x0F, 0xBE, 0x08], Bits64, 0x80, &mut r, &mut cpu);
        assert_eq!(r.rcx, 0xFFFF_FF80);
        // movsx rcx, word [rax]; movsx cx, byte [rax]
        complete(&[0x48, 0x0F, 0xBF, 0x08], Bits64, 0x8001, &mut r, &mut cpu);
        assert_eq!(r.rcx, 0xFFFF_FFFF_FFFF_8001);
        let mut r = regs();
        complete(&[0x66, 0x0F, 0xBE, 0x08], Bits64, 0xF0, &mut r, &mut cpu);
        assert_eq!(r.rcx, 0xAAAA_BBBB_CCCC_FFF0);
        // movsx ecx, byte [rax] with a positive byte: no sign bits.
        complete(&[0x0F, 0xBE, 0x08], Bits64, 0x17F, &mut r, &mut cpu);
        assert_eq!(r.rcx, 0x7F);
        // 16-bit code: mov ax, [bx] merges 16 bits.
        let mut r = regs();
        complete(&[0x8B, 0x07], Bits16, 0xBEEF, &mut r, &mut cpu);
        assert_eq!(r.rax, 0x1111_2222_3333_BEEF);
        // A store writes nothing back.
        let before = regs();
        let mut r = before;
        complete(&[0x89, 0x00], Bits64, 0xFFFF, &mut r, &mut cpu);
        assert_eq!(r, before);
    }

    #[test]
    fn rsp_goes_through_the_backend() {
        let mut cpu = FakeCpu::new();
        cpu.set(Reg::Rsp, 0x0000_7FFF_FFFF_E000);
        let mut r = regs();
        // mov spl, [rax]: byte merge into RSP.
        complete(&[0x40, 0x8A, 0x20], Bits64, 0x42, &mut r, &mut cpu);
        assert_eq!(cpu.get(Reg::Rsp), 0x0000_7FFF_FFFF_E042);
        // mov ah, [rax] (same encoding without REX): RAX, not RSP.
        complete(&[0x8A, 0x20], Bits64, 0x42, &mut r, &mut cpu);
        assert_eq!(r.rax, 0x1111_2222_3333_4244);
        assert_eq!(cpu.get(Reg::Rsp), 0x0000_7FFF_FFFF_E042);
        // mov esp, [rax]: zero-extended.
        complete(&[0x8B, 0x20], Bits64, 0x9000, &mut r, &mut cpu);
        assert_eq!(cpu.get(Reg::Rsp), 0x9000);
        // mov [rax], rsp reads it.
        let i = decode(&[0x48, 0x89, 0x20], Bits64).unwrap();
        assert_eq!(i.write_value(&r, &mut cpu), Ok(Some(0x9000)));
        // A backend failure is reported, not replaced by a value.
        cpu.fail = Some(Reg::Rsp);
        assert_eq!(
            i.write_value(&r, &mut cpu),
            Err(StateError { reg: Reg::Rsp })
        );
        let i = decode(&[0x66, 0x8B, 0x20], Bits64).unwrap();
        assert_eq!(
            i.complete_read(1, &mut r, &mut cpu),
            Err(StateError { reg: Reg::Rsp })
        );
        // Other registers do not need the backend.
        let i = decode(&[0x66, 0x8B, 0x00], Bits64).unwrap();
        assert_eq!(i.complete_read(0x5A5A, &mut r, &mut cpu), Ok(()));
        assert_eq!(r.rax, 0x1111_2222_3333_5A5A);
    }

    #[test]
    fn store_values_have_the_access_width() {
        let mut cpu = FakeCpu::new();
        let r = regs();
        let value = |bytes: &[u8], mode, cpu: &mut FakeCpu| {
            decode(bytes, mode).unwrap().write_value(&r, cpu).unwrap()
        };
        // mov [rax], eax / rax / ax / al / ah / ch / r8d
        assert_eq!(value(&[0x89, 0x00], Bits64, &mut cpu), Some(0x3333_4444));
        assert_eq!(value(&[0x48, 0x89, 0x00], Bits64, &mut cpu), Some(r.rax));
        assert_eq!(value(&[0x66, 0x89, 0x00], Bits64, &mut cpu), Some(0x4444));
        assert_eq!(value(&[0x88, 0x00], Bits64, &mut cpu), Some(0x44));
        assert_eq!(value(&[0x88, 0x20], Bits64, &mut cpu), Some(0x44));
        assert_eq!(value(&[0x88, 0x28], Bits64, &mut cpu), Some(0xDD));
        assert_eq!(value(&[0x88, 0x29], Bits64, &mut cpu), Some(0xDD));
        assert_eq!(
            value(&[0x44, 0x89, 0x00], Bits64, &mut cpu),
            Some(0x8888_8888)
        );
        // Immediates, sign-extended for REX.W.
        assert_eq!(value(&[0xC6, 0x00, 0x80], Bits64, &mut cpu), Some(0x80));
        assert_eq!(
            value(
                &[0x48, 0xC7, 0x00, 0x00, 0x00, 0x00, 0x80],
                Bits64,
                &mut cpu
            ),
            Some(0xFFFF_FFFF_8000_0000)
        );
        // mov [moffs], ax in 16-bit code; loads write nothing.
        assert_eq!(value(&[0xA3, 0x00, 0x10], Bits16, &mut cpu), Some(0x4444));
        assert_eq!(value(&[0x8B, 0x00], Bits64, &mut cpu), None);
    }

    #[test]
    fn xchg_swaps_register_and_location() {
        let mut cpu = FakeCpu::new();
        let mut r = regs();
        // xchg [rax], edx: the device gets EDX, EDX gets the old value
        // (zero-extended: a 32-bit register result).
        let i = decode(&[0x87, 0x10], Bits64).unwrap();
        assert!(i.reads_memory() && i.writes_memory());
        assert_eq!(i.write_value(&r, &mut cpu), Ok(Some(0x0506_0708)));
        i.complete_read(0xFEE0_0000, &mut r, &mut cpu).unwrap();
        assert_eq!(r.rdx, 0xFEE0_0000);
        // xchg [rax], ch
        let i = decode(&[0x86, 0x28], Bits64).unwrap();
        assert_eq!(i.write_value(&r, &mut cpu), Ok(Some(0xDD)));
        i.complete_read(0x11, &mut r, &mut cpu).unwrap();
        assert_eq!(r.rcx, 0xAAAA_BBBB_CCCC_11DD);
    }

    #[test]
    fn access_kinds_and_sizes() {
        let l = decode(&[0x8B, 0x00], Bits64).unwrap();
        assert!(l.reads_memory() && !l.writes_memory());
        assert_eq!(l.access_size(), Some(AccessSize::Dword));
        let s = decode(&[0x48, 0x89, 0x00], Bits64).unwrap();
        assert!(!s.reads_memory() && s.writes_memory());
        assert_eq!(s.access_size(), None);
        let b = decode(&[0x0F, 0xB6, 0x00], Bits64).unwrap();
        assert_eq!(b.access_size(), Some(AccessSize::Byte));
    }

    #[test]
    fn merge_and_extract_rules() {
        let old = 0x1122_3344_5566_7788;
        assert_eq!(merge(old, Low(0), 1, 0xAB), 0x1122_3344_5566_77AB);
        assert_eq!(merge(old, High8(0), 1, 0xAB), 0x1122_3344_5566_AB88);
        assert_eq!(merge(old, Low(0), 2, 0xABCD), 0x1122_3344_5566_ABCD);
        assert_eq!(merge(old, Low(0), 4, 0xFFFF_ABCD_EF01), 0xABCD_EF01);
        assert_eq!(merge(old, Low(0), 8, 0xFF), 0xFF);
        assert_eq!(extract(old, Low(0), 1), 0x88);
        assert_eq!(extract(old, High8(0), 1), 0x77);
        assert_eq!(extract(old, Low(0), 2), 0x7788);
        assert_eq!(extract(old, Low(0), 4), 0x5566_7788);
        assert_eq!(extract(old, Low(0), 8), old);
        assert_eq!(sign_extend(0x80, 1), 0xFFFF_FFFF_FFFF_FF80);
        assert_eq!(sign_extend(0x7FFF, 2), 0x7FFF);
        assert_eq!(sign_extend(0x8000_0000, 4), 0xFFFF_FFFF_8000_0000);
        // Odd values from hand-built operands stay defined.
        assert_eq!(Low(0x1F).number(), 15);
        assert_eq!(High8(7).number(), 3);
        assert_eq!(mask(0), 0);
        assert_eq!(mask(9), u64::MAX);
    }

    // ---- emulate: a 64-bit guest with paging and the emulated devices ----

    use crate::arch::{Access, Action, StopReason};
    use crate::devices::ioapic::{IOAPICVER, IOAPIC_BASE, IOREGSEL, IOWIN};
    use crate::exit::testenv::{FakeApic, FakeMem, FakePlatform};
    use crate::exit::{handle_exit, Exit};

    /// Where the guest's code runs (a kernel-half address, so every table
    /// index differs from 0) and the RAM page behind it.
    const CODE: u64 = 0xFFFF_FFFF_8120_3000;
    const CODE_GPA: u64 = 0x5000;
    const XAPIC: u64 = 0xFEE0_0000;

    /// A FakePlatform whose guest runs 64-bit code with 4-level paging:
    /// RAM at 0..0x8000, PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT
    /// at 0x4000, [`CODE`] mapped to [`CODE_GPA`] (4 KiB pages) and
    /// `code` there.
    fn paged_env(code: &[u8]) -> FakePlatform {
        let mut env = FakePlatform::new();
        env.mem = FakeMem {
            base: 0,
            data: alloc::vec![0; 0x8000],
        };
        env.cpu.set(Reg::Cr3, 0x1000);
        map(&mut env, CODE, CODE_GPA);
        put(&mut env, CODE_GPA, code);
        env
    }

    fn put(env: &mut FakePlatform, gpa: u64, bytes: &[u8]) {
        let at = gpa as usize;
        env.mem.data[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Maps the 4 KiB page at `linear` to `gpa` in the fixed tables.
    fn map(env: &mut FakePlatform, linear: u64, gpa: u64) {
        const P_RW: u64 = 0x3;
        let index = |level: u32| (linear >> (12 + 9 * level)) & 0x1FF;
        for (table, level, next) in [
            (0x1000, 3, 0x2000),
            (0x2000, 2, 0x3000),
            (0x3000, 1, 0x4000),
            (0x4000, 0, gpa),
        ] {
            put(env, table + 8 * index(level), &(next | P_RW).to_le_bytes());
        }
    }

    /// The guest registers at [`CODE`] with RAX the MMIO address.
    fn at_code(gpa: u64) -> GuestRegs {
        GuestRegs {
            rip: CODE,
            rax: gpa,
            rbx: 0xFFFF_FFFF_1234_5678,
            rcx: u64::MAX,
            instruction_len: 0,
            ..Default::default()
        }
    }

    fn xapic_env(code: &[u8]) -> FakePlatform {
        let mut env = paged_env(code);
        env.apic = Some(FakeApic::new());
        env
    }

    fn mmio_log(env: &FakePlatform) -> &[(u64, Option<u32>)] {
        &env.apic.as_ref().unwrap().mmio
    }

    fn not_decoded(device: &'static str, why: &'static str) -> Option<Action> {
        Some(Action::Stop(StopReason::InstructionNotDecoded {
            instruction: device,
            why,
            linear: CODE,
            rip: CODE,
        }))
    }

    #[test]
    fn store_to_the_xapic_page() {
        // mov [rax], ebx
        let mut env = xapic_env(&[0x89, 0x18, 0x0F, 0x0B]);
        let mut vm = VmContext::new(1, "smp");
        let mut regs = at_code(XAPIC + 0x380);
        assert_eq!(
            emulate(&mut vm, XAPIC + 0x380, &mut regs, &mut env),
            Some(Action::AdvanceRip)
        );
        assert_eq!(regs.instruction_len, 2);
        assert_eq!(mmio_log(&env), [(XAPIC + 0x380, Some(0x1234_5678))]);
        assert_eq!(regs.rbx, 0xFFFF_FFFF_1234_5678, "a store changes nothing");
        assert_eq!(regs.rip, CODE, "RIP is the backend's to move");
        // mov dword [r8 + 0xB0], 0 (REX.B, disp32, imm32): 11 bytes.
        let code = [0x41, 0xC7, 0x80, 0xB0, 0, 0, 0, 0, 0, 0, 0];
        let mut env = xapic_env(&code);
        let mut regs = at_code(0);
        assert_eq!(
            emulate(&mut vm, XAPIC + 0xB0, &mut regs, &mut env),
            Some(Action::AdvanceRip)
        );
        assert_eq!(regs.instruction_len, 11);
        assert_eq!(mmio_log(&env), [(XAPIC + 0xB0, Some(0))]);
    }

    #[test]
    fn load_from_the_xapic_page() {
        // mov ecx, [rax]: 32 bits, zero-extended into RCX.
        let mut env = xapic_env(&[0x8B, 0x08]);
        env.apic.as_mut().unwrap().mmio_value = 0x0005_0014;
        let mut vm = VmContext::new(1, "smp");
        let mut regs = at_code(XAPIC + 0x30);
        assert_eq!(
            emulate(&mut vm, XAPIC + 0x30, &mut regs, &mut env),
            Some(Action::AdvanceRip)
        );
        assert_eq!(regs.rcx, 0x0005_0014);
        assert_eq!(regs.instruction_len, 2);
        assert_eq!(mmio_log(&env), [(XAPIC + 0x30, None)]);
        // mov r9d, [rax + 0x20] (REX.R, disp8).
        let mut env = xapic_env(&[0x44, 0x8B, 0x48, 0x20]);
        env.apic.as_mut().unwrap().mmio_value = 0x0300_0000;
        let mut regs = at_code(XAPIC);
        regs.r9 = u64::MAX;
        assert_eq!(
            emulate(&mut vm, XAPIC + 0x20, &mut regs, &mut env),
            Some(Action::AdvanceRip)
        );
        assert_eq!((regs.r9, regs.instruction_len), (0x0300_0000, 4));
    }

    #[test]
    fn other_widths_read_ones_and_write_nothing() {
        let mut vm = VmContext::new(1, "smp");
        // mov cx, [rax]: all ones in the low 16 bits.
        let mut env = xapic_env(&[0x66, 0x8B, 0x08]);
        let mut regs = at_code(XAPIC + 0x30);
        regs.rcx = 0x1111_2222_3333_4444;
        assert_eq!(
            emulate(&mut vm, XAPIC + 0x30, &mut regs, &mut env),
            Some(Action::AdvanceRip)
        );
        assert_eq!(regs.rcx, 0x1111_2222_3333_FFFF);
        assert_eq!(regs.instruction_len, 3);
        // mov [rax], bl and mov [rax], rbx: skipped, nothing written.
        for code in [&[0x88, 0x18][..], &[0x48, 0x89, 0x18]] {
            let mut env = xapic_env(code);
            let mut regs = at_code(XAPIC + 0x80);
            assert_eq!(
                emulate(&mut vm, XAPIC + 0x80, &mut regs, &mut env),
                Some(Action::AdvanceRip)
            );
            assert_eq!(regs.instruction_len, code.len() as u64);
            assert!(
                mmio_log(&env).iter().all(|(_, w)| w.is_none()),
                "{code:02x?}: {:x?}",
                mmio_log(&env)
            );
        }
    }

    #[test]
    fn xapic_level_eoi_reaches_the_ioapic() {
        use crate::devices::ioapic::{IOREDTBL, RTE_LEVEL};
        let mut vm = VmContext::new(1, "smp");
        vm.enable_ioapic(0);
        // Pin 9 level-triggered, vector 0x39, to APIC 0.
        vm.ioapic_mmio(IOREGSEL, Some(u32::from(IOREDTBL) + 18));
        vm.ioapic_mmio(IOWIN, Some(RTE_LEVEL as u32 | 0x39));
        vm.set_irq_level(9, true);
        assert_eq!(vm.take_apic_messages().len(), 1);
        // mov [rax], ebx to the EOI register; the APIC reports a level EOI.
        let mut env = xapic_env(&[0x89, 0x18]);
        env.apic.as_mut().unwrap().mmio_eoi = Some(0x39);
        let mut regs = at_code(XAPIC + 0xB0);
        assert_eq!(
            emulate(&mut vm, XAPIC + 0xB0, &mut regs, &mut env),
            Some(Action::AdvanceRip)
        );
        let sent = vm.take_apic_messages();
        assert_eq!(sent.len(), 1, "still asserted: sent again");
        assert_eq!(sent[0].vector, 0x39);
    }

    #[test]
    fn ioapic_window_reaches_the_ioapic() {
        let mut vm = VmContext::new(1, "smp");
        vm.enable_ioapic(0);
        // The local APIC hooks are there too, but not for this page.
        // mov [rax], ebx: IOREGSEL = 1 (the version register).
        let mut env = xapic_env(&[0x89, 0x18]);
        let mut regs = at_code(IOAPIC_BASE);
        regs.rbx = u64::from(IOAPICVER);
        assert_eq!(
            emulate(
                &mut vm,
                IOAPIC_BASE + u64::from(IOREGSEL),
                &mut regs,
                &mut env
            ),
            Some(Action::AdvanceRip)
        );
        assert_eq!(vm.ioapic_mmio(IOREGSEL, None), 1);
        // mov ecx, [rax + 0x10]: IOWIN.
        let mut env = xapic_env(&[0x8B, 0x48, 0x10]);
        let mut regs = at_code(IOAPIC_BASE);
        assert_eq!(
            emulate(&mut vm, IOAPIC_BASE + u64::from(IOWIN), &mut regs, &mut env),
            Some(Action::AdvanceRip)
        );
        assert_eq!(regs.rcx, 0x0017_0020, "version 0x20, 24 entries");
        assert_eq!(regs.instruction_len, 3);
        assert!(mmio_log(&env).is_empty(), "the local APIC saw nothing");
        // A VM without an I/O APIC does not claim the window.
        let mut vm = VmContext::new(2, "up");
        let mut regs = at_code(IOAPIC_BASE);
        assert_eq!(emulate(&mut vm, IOAPIC_BASE, &mut regs, &mut env), None);
    }

    /// XCHG reads the location before writing it: the register gets what
    /// the device held, not what a write returns.
    #[test]
    fn xchg_gets_the_old_value() {
        let mut vm = VmContext::new(1, "smp");
        vm.enable_ioapic(0);
        vm.ioapic_mmio(IOREGSEL, Some(u32::from(IOAPICVER)));
        // xchg [rax], ebx at IOREGSEL.
        let mut env = xapic_env(&[0x87, 0x18]);
        let mut regs = at_code(IOAPIC_BASE);
        regs.rbx = 0x10;
        assert_eq!(
            emulate(&mut vm, IOAPIC_BASE, &mut regs, &mut env),
            Some(Action::AdvanceRip)
        );
        assert_eq!(regs.rbx, u64::from(IOAPICVER), "the old IOREGSEL");
        assert_eq!(vm.ioapic_mmio(IOREGSEL, None), 0x10, "the new IOREGSEL");
        assert_eq!(regs.instruction_len, 2);
        // xchg [rax], ecx in the xAPIC page: a read, then the write.
        let mut env = xapic_env(&[0x87, 0x08]);
        env.apic.as_mut().unwrap().mmio_value = 0x00FF_0000;
        let mut regs = at_code(XAPIC + 0x80);
        regs.rcx = 0xFFFF_FFFF_0000_0020;
        assert_eq!(
            emulate(&mut vm, XAPIC + 0x80, &mut regs, &mut env),
            Some(Action::AdvanceRip)
        );
        assert_eq!(regs.rcx, 0x00FF_0000);
        assert_eq!(
            mmio_log(&env),
            [(XAPIC + 0x80, None), (XAPIC + 0x80, Some(0x20))]
        );
    }

    #[test]
    fn unclaimed_addresses_are_left_to_the_caller() {
        let mut vm = VmContext::new(1, "smp");
        vm.enable_ioapic(0);
        let mut env = xapic_env(&[0x89, 0x18]);
        for gpa in [
            0,
            XAPIC - 4,
            XAPIC + 0x1000,
            IOAPIC_BASE - 4,
            IOAPIC_BASE + 0x1000,
            u64::MAX,
        ] {
            let mut regs = at_code(gpa);
            let before = regs;
            assert_eq!(emulate(&mut vm, gpa, &mut regs, &mut env), None, "{gpa:#x}");
            assert_eq!(regs, before, "{gpa:#x}");
        }
        assert!(mmio_log(&env).is_empty());
        // Without local APIC hooks the xAPIC page is nobody's either, and
        // the exit reports the violation.
        let mut env = paged_env(&[0x89, 0x18]);
        let mut regs = at_code(XAPIC);
        assert_eq!(emulate(&mut vm, XAPIC, &mut regs, &mut env), None);
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let exit = Exit::MemoryViolation {
            gpa: XAPIC,
            access: Access::WRITE,
            linear: Some(XAPIC),
        };
        assert_eq!(
            handle_exit(&mut vm, &mut vcpu, &exit, &mut regs, &mut env),
            Action::Stop(StopReason::MemoryViolation {
                gpa: XAPIC,
                rip: CODE,
                access: Access::WRITE,
                linear: Some(XAPIC),
            })
        );
    }

    #[test]
    fn memory_violation_exits_are_emulated() {
        let mut vm = VmContext::new(1, "smp");
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let mut env = xapic_env(&[0x89, 0x18]);
        let mut regs = at_code(XAPIC + 0x300);
        let exit = Exit::MemoryViolation {
            gpa: XAPIC + 0x300,
            access: Access::WRITE,
            linear: Some(XAPIC + 0x300),
        };
        assert_eq!(
            handle_exit(&mut vm, &mut vcpu, &exit, &mut regs, &mut env),
            Action::AdvanceRip
        );
        assert_eq!(
            Action::AdvanceRip.next_rip(regs.rip, regs.instruction_len),
            CODE + 2
        );
        assert_eq!(mmio_log(&env), [(XAPIC + 0x300, Some(0x1234_5678))]);
        assert!(vm.stop_reason().is_none());
    }

    #[test]
    fn instructions_at_a_page_end() {
        let mut vm = VmContext::new(1, "smp");
        // mov [rax], ebx in the last two bytes of the page, the next page
        // unmapped: the bytes there suffice.
        let mut env = xapic_env(&[]);
        put(&mut env, CODE_GPA + 0xFFE, &[0x89, 0x18]);
        let mut regs = at_code(XAPIC + 0x380);
        regs.rip = CODE + 0xFFE;
        assert_eq!(
            emulate(&mut vm, XAPIC + 0x380, &mut regs, &mut env),
            Some(Action::AdvanceRip)
        );
        assert_eq!(regs.instruction_len, 2);
        // mov [rax + 0x80], ebx (6 bytes) across the boundary: read from
        // both pages once the next one is mapped (not to the next RAM page).
        let mut env = xapic_env(&[]);
        put(&mut env, CODE_GPA + 0xFFD, &[0x89, 0x98, 0x80]);
        put(&mut env, 0x7000, &[0x00, 0x00, 0x00]);
        let mut regs = at_code(XAPIC);
        regs.rip = CODE + 0xFFD;
        let stop = emulate(&mut vm, XAPIC + 0x80, &mut regs, &mut env);
        assert!(
            matches!(
                stop,
                Some(Action::Stop(StopReason::InstructionNotDecoded {
                    why: "its bytes could not be read",
                    ..
                }))
            ),
            "{stop:?}"
        );
        map(&mut env, CODE + 0x1000, 0x7000);
        assert_eq!(
            emulate(&mut vm, XAPIC + 0x80, &mut regs, &mut env),
            Some(Action::AdvanceRip)
        );
        assert_eq!(regs.instruction_len, 6);
        assert_eq!(mmio_log(&env), [(XAPIC + 0x80, Some(0x1234_5678))]);
    }

    #[test]
    fn undecodable_or_unfetchable_instructions_stop_the_vm() {
        const LAPIC: &str = "an access to the local APIC page";
        let mut vm = VmContext::new(1, "smp");
        // add [rax], ebx; rep stosd; mov eax, ebx (no memory operand).
        for code in [&[0x01, 0x18][..], &[0xF3, 0xAB], &[0x89, 0xD8]] {
            let mut env = xapic_env(code);
            let mut regs = at_code(XAPIC);
            assert_eq!(
                emulate(&mut vm, XAPIC, &mut regs, &mut env),
                not_decoded(LAPIC, "not a MOV/MOVZX/MOVSX/XCHG"),
                "{code:02x?}"
            );
            assert_eq!(regs.instruction_len, 0, "{code:02x?}");
            assert!(mmio_log(&env).is_empty(), "{code:02x?}");
        }
        // RIP on an unmapped page.
        let mut env = xapic_env(&[0x89, 0x18]);
        let mut regs = at_code(XAPIC);
        regs.rip = CODE + 0x20_0000;
        assert_eq!(
            emulate(&mut vm, XAPIC, &mut regs, &mut env),
            Some(Action::Stop(StopReason::InstructionNotDecoded {
                instruction: LAPIC,
                why: "its bytes could not be read",
                linear: CODE + 0x20_0000,
                rip: CODE + 0x20_0000,
            }))
        );
        // Not in 64-bit mode (compatibility, protected or real mode).
        let mut env = xapic_env(&[0x89, 0x18]);
        env.cpu.set(Reg::Mode64, 0);
        let mut regs = at_code(XAPIC);
        assert_eq!(
            emulate(&mut vm, XAPIC, &mut regs, &mut env),
            not_decoded(LAPIC, "emulated only in 64-bit mode")
        );
        assert!(mmio_log(&env).is_empty());
        // The I/O APIC's accesses are named as such.
        vm.enable_ioapic(0);
        let mut env = xapic_env(&[0x01, 0x18]);
        let mut regs = at_code(IOAPIC_BASE);
        assert_eq!(
            emulate(&mut vm, IOAPIC_BASE, &mut regs, &mut env),
            not_decoded("an access to the I/O APIC", "not a MOV/MOVZX/MOVSX/XCHG")
        );
        // Through the exit handler the VM stops.
        let mut vcpu = crate::vcpu::VcpuState::new(0);
        let exit = Exit::MemoryViolation {
            gpa: IOAPIC_BASE,
            access: Access::WRITE,
            linear: None,
        };
        let a = handle_exit(&mut vm, &mut vcpu, &exit, &mut regs, &mut env);
        assert!(
            matches!(a, Action::Stop(StopReason::InstructionNotDecoded { .. })),
            "{a:?}"
        );
        assert_eq!(
            vm.stop_reason(),
            Some(&StopReason::InstructionNotDecoded {
                instruction: "an access to the I/O APIC",
                why: "not a MOV/MOVZX/MOVSX/XCHG",
                linear: CODE,
                rip: CODE,
            })
        );
    }

    #[test]
    fn failed_register_accesses_stop_the_vm() {
        let mut vm = VmContext::new(1, "smp");
        let state_failed = |reg| {
            Some(Action::Stop(StopReason::StateAccessFailed {
                reg,
                rip: CODE,
            }))
        };
        // The mode and paging registers needed to fetch the instruction.
        for reg in [Reg::Mode64, Reg::Cr0, Reg::Cr3, Reg::Cr4, Reg::Efer] {
            let mut env = xapic_env(&[0x89, 0x18]);
            env.cpu.fail = Some(reg);
            let mut regs = at_code(XAPIC);
            assert_eq!(
                emulate(&mut vm, XAPIC, &mut regs, &mut env),
                state_failed(reg),
                "{reg:?}"
            );
            assert!(mmio_log(&env).is_empty(), "{reg:?}");
        }
        // mov [rax], esp: RSP is the backend's; nothing is written.
        let mut env = xapic_env(&[0x89, 0x20]);
        env.cpu.fail = Some(Reg::Rsp);
        let mut regs = at_code(XAPIC + 0x380);
        assert_eq!(
            emulate(&mut vm, XAPIC + 0x380, &mut regs, &mut env),
            state_failed(Reg::Rsp)
        );
        assert!(mmio_log(&env).is_empty());
        // mov sp, [rax]: the device was read, the result cannot be written.
        let mut env = xapic_env(&[0x66, 0x8B, 0x20]);
        env.cpu.fail = Some(Reg::Rsp);
        let mut regs = at_code(XAPIC + 0x30);
        assert_eq!(
            emulate(&mut vm, XAPIC + 0x30, &mut regs, &mut env),
            state_failed(Reg::Rsp)
        );
        assert_eq!(regs.instruction_len, 0, "RIP not skipped");
        // With RSP working, mov esp, [rax] loads it.
        let mut env = xapic_env(&[0x8B, 0x20]);
        env.apic.as_mut().unwrap().mmio_value = 0xABCD;
        let mut regs = at_code(XAPIC + 0x30);
        assert_eq!(
            emulate(&mut vm, XAPIC + 0x30, &mut regs, &mut env),
            Some(Action::AdvanceRip)
        );
        assert_eq!(env.cpu.get(Reg::Rsp), 0xABCD);
    }

    /// Deterministic fuzzing: random bytes (biased towards prefixes, the
    /// decoded opcodes and interesting ModRM bytes) in every mode never
    /// panic, and every decoded instruction is self-consistent.
    #[test]
    fn random_bytes_never_panic() {
        const INTERESTING: [u8; 40] = [
            0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x3E, 0x64, 0x65, 0x40, 0x41, 0x44, 0x48, 0x4C,
            0x4F, 0x0F, 0x88, 0x89, 0x8A, 0x8B, 0x86, 0x87, 0xC6, 0xC7, 0xA0, 0xA1, 0xA2, 0xA3,
            0xB6, 0xB7, 0xBE, 0xBF, 0x04, 0x05, 0x06, 0x24, 0x25, 0x44, 0x84, 0xC0,
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut decoded = 0usize;
        for _ in 0..100_000 {
            let mut bytes = [0u8; MAX_LEN];
            for b in &mut bytes {
                let r = next();
                *b = if r & 1 == 0 {
                    INTERESTING[((r >> 8) % INTERESTING.len() as u64) as usize]
                } else {
                    (r >> 16) as u8
                };
            }
            for mode in [Bits16, Bits32, Bits64] {
                let Ok(i) = decode(&bytes, mode) else {
                    continue;
                };
                decoded += 1;
                let len = usize::from(i.len);
                assert!((1..=MAX_LEN).contains(&len), "{bytes:02x?}");
                assert!(matches!(i.size, 1 | 2 | 4 | 8), "{bytes:02x?}");
                // Exactly the instruction's bytes decode the same; one fewer
                // is truncated.
                assert_eq!(decode(&bytes[..len], mode), Ok(i), "{bytes:02x?}");
                assert_eq!(
                    decode(&bytes[..len - 1], mode),
                    Err(Truncated),
                    "{bytes:02x?}"
                );
                if let MmioOp::Load { dest_size, .. } = i.op {
                    assert!(matches!(dest_size, 1 | 2 | 4 | 8) && dest_size >= i.size);
                }
                let mut cpu = FakeCpu::new();
                let mut r = regs();
                let _ = i.write_value(&r, &mut cpu).unwrap();
                i.complete_read(next(), &mut r, &mut cpu).unwrap();
            }
        }
        // The bias reaches the decoded forms often enough to mean something.
        assert!(decoded > 10_000, "only {decoded} decoded");
    }
}
