//! A Multiboot 1 kernel (the Multiboot Specification 0.6.96): booted with
//! `kernel = "multiboot"`, it enters long mode itself and prints what the
//! boot loader told it.
//!
//! **The header** (magic 0x1BADB002, flags, checksum) opens `.text`, right
//! after the ELF headers (file offset 0x80). Flags: bit 1 (memory information
//! wanted) and bit 16 (the a.out kludge): `header_addr`, `load_addr` (the
//! file's first byte, 1 MiB), `load_end_addr` (end of `.data`),
//! `bss_end_addr` (end of the bss and the stack) and `entry_addr`
//! (`_start32`). `multiboot.ld` links the
//! whole file as one segment beginning with the ELF headers, so file offset N
//! is address 0x100000 + N: the loader copies the file as it is and never
//! needs the (64-bit) ELF headers.
//!
//! **The 32-bit entry** (`_start32`; 32-bit protected mode, paging off, EAX =
//! 0x2BADB002, EBX = the information structure, ESP undefined) saves EAX and
//! EBX, checks CPUID for long mode, identity-maps the first GiB with 2 MiB
//! pages (tables in its own bss), sets CR4.PAE, EFER.LME (RDMSR/WRMSR) and
//! CR0.PG, loads its GDT (0x08 64-bit code, 0x10 data) and far-jumps to
//! 64-bit code, which loads the data segments and continues at the runtime's
//! `_start` (stack, then `main`). Without long mode it prints
//! `multiboot: FAILED no long mode ...` from 32-bit code and exits 1.
//!
//! **`main`** checks the saved EAX and reads the information structure at
//! the saved EBX (guest-physical, identity-mapped) and prints:
//!
//! ```text
//! multiboot: magic ok
//! multiboot: flags 0x245
//! multiboot: cmdline "hello multiboot 42"
//! multiboot: mem_lower 639 KiB mem_upper 3072 KiB
//! multiboot: mmap 0x0 0x1000 type 1
//! multiboot: mmap 0x1000 0x7000 type 2
//! ...
//! multiboot: boot loader "rust-hv"
//! multiboot: OK
//! ```
//!
//! then shuts down with exit code 0. A failed check prints `multiboot:
//! FAILED <why>` and exits with 1: a wrong magic (not booted by a Multiboot
//! loader; also what the ELF entry `_start` gives when the file is run as a
//! 64-bit `image`), information flags without memory, command line or memory
//! map, or a structure, string or map outside the mapped first GiB.
#![no_std]
#![no_main]

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

use guests::{nr, println, EXIT_FAILED};

guests::entry!(main);

/// Header magic.
const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// Header flags: memory information (bit 1), a.out kludge (bit 16).
const HEADER_FLAGS: u32 = (1 << 1) | (1 << 16);
/// EAX from a Multiboot loader.
const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// Info flags: mem_lower/mem_upper (bit 0), cmdline (bit 2), mmap (bit 6),
/// boot_loader_name (bit 9).
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MEM_MAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;

/// What the 32-bit entry's page tables map (identity, 2 MiB pages).
const MAPPED: u64 = 1 << 30;
/// Longest string read from the information (command line, loader name).
const MAX_STRING: u64 = 4096;
/// Most memory-map entries printed before giving up on a map.
const MAX_MAP_ENTRIES: usize = 64;

/// EAX at the Multiboot entry (0 when started any other way).
static MB_MAGIC: AtomicU32 = AtomicU32::new(0);
/// EBX at the Multiboot entry: the information structure's address.
static MB_INFO: AtomicU32 = AtomicU32::new(0);

// AT&T syntax for `ljmp $sel, $addr`; absolute 32-bit addresses are fine, as
// the guest is linked (not position-independent) below 4 GiB.
core::arch::global_asm!(
    // The Multiboot header, first in .text (multiboot.ld).
    ".section .multiboot, \"a\"",
    ".balign 4",
    "mb_header:",
    ".long {hmagic}",
    ".long {hflags}",
    ".long -({hmagic} + {hflags})",
    ".long mb_header",       // header_addr
    ".long __mb_load_start", // load_addr: the file's first byte
    ".long __mb_load_end",   // load_end_addr: end of .data
    ".long __mb_bss_end",    // bss_end_addr: end of bss and stack
    ".long _start32",        // entry_addr
    //
    ".section .text._start32, \"ax\"",
    ".code32",
    ".global _start32",
    "_start32:",
    "cli",
    "movl %eax, {magic}",
    "movl %ebx, {info}",
    // Long mode: CPUID.80000001H:EDX.LM (bit 29).
    "movl $0x80000000, %eax",
    "cpuid",
    "cmpl $0x80000001, %eax",
    "jb mb_no_long_mode",
    "movl $0x80000001, %eax",
    "cpuid",
    "btl $29, %edx",
    "jnc mb_no_long_mode",
    // PML4[0] -> PDPT, PDPT[0] -> PD (present, writable); PD[i] maps
    // i * 2 MiB (present, writable, page size). The rest of the tables is
    // bss, zeroed by the loader.
    "movl $(mb_pdpt + 3), mb_pml4",
    "movl $(mb_pd + 3), mb_pdpt",
    "xorl %ecx, %ecx",
    "1:",
    "movl %ecx, %eax",
    "shll $21, %eax",
    "orl $0x83, %eax",
    "movl %eax, mb_pd(, %ecx, 8)",
    "movl $0, mb_pd + 4(, %ecx, 8)",
    "incl %ecx",
    "cmpl $512, %ecx",
    "jb 1b",
    "movl $mb_pml4, %eax",
    "movl %eax, %cr3",
    "movl %cr4, %eax",
    "orl $0x20, %eax", // CR4.PAE
    "movl %eax, %cr4",
    "movl $0xC0000080, %ecx", // IA32_EFER
    "rdmsr",
    "orl $0x100, %eax", // EFER.LME
    "wrmsr",
    "lgdt mb_gdt_ptr",
    "movl %cr0, %eax",
    "orl $0x80000001, %eax", // CR0.PG (and PE): long mode activates
    "movl %eax, %cr0",
    "ljmp $0x08, $mb_start64",
    // No long mode: say so on COM1 and shut down with exit code 1.
    "mb_no_long_mode:",
    "movl $mb_no_long_mode_msg, %esi",
    "2:",
    "movb (%esi), %cl",
    "testb %cl, %cl",
    "jz 4f",
    "movw $0x3fd, %dx", // line status
    "3:",
    "inb %dx, %al",
    "testb $0x20, %al",
    "jz 3b",
    "movw $0x3f8, %dx",
    "movb %cl, %al",
    "outb %al, %dx",
    "incl %esi",
    "jmp 2b",
    "4:",
    "movl ${shutdown}, %eax",
    "movl ${failed}, %ebx",
    "vmcall",
    "jmp 4b",
    //
    ".code64",
    "mb_start64:",
    "movw $0x10, %ax",
    "movw %ax, %ds",
    "movw %ax, %es",
    "movw %ax, %ss",
    "movw %ax, %fs",
    "movw %ax, %gs",
    "jmp _start",
    //
    ".section .rodata.mb_gdt, \"a\"",
    ".balign 8",
    "mb_gdt:",
    ".quad 0",
    ".quad 0x00AF9A000000FFFF", // 0x08: 64-bit code, DPL 0
    ".quad 0x00CF92000000FFFF", // 0x10: flat data
    "mb_gdt_end:",
    "mb_gdt_ptr:",
    ".word mb_gdt_end - mb_gdt - 1",
    ".long mb_gdt",
    "mb_no_long_mode_msg:",
    ".asciz \"multiboot: FAILED no long mode (CPUID 0x80000001 EDX bit 29 clear)\\n\"",
    //
    ".section .bss.mb_tables, \"aw\", @nobits",
    ".balign 4096",
    "mb_pml4: .skip 4096",
    "mb_pdpt: .skip 4096",
    "mb_pd: .skip 4096",
    ".text",
    hmagic = const HEADER_MAGIC,
    hflags = const HEADER_FLAGS,
    magic = sym MB_MAGIC,
    info = sym MB_INFO,
    shutdown = const nr::SHUTDOWN,
    failed = const EXIT_FAILED,
    options(att_syntax),
);

/// Prints `multiboot: FAILED <why>` and stops the VM with exit code 1.
fn fail(why: fmt::Arguments<'_>) -> ! {
    println!("multiboot: FAILED {why}");
    guests::shutdown(EXIT_FAILED)
}

/// Checks that `len` bytes at guest-physical `addr` lie in the mapped first
/// GiB, naming `what` otherwise.
fn check_mapped(addr: u64, len: u64, what: &str) {
    if addr.checked_add(len).is_none_or(|end| end > MAPPED) {
        fail(format_args!(
            "{what} at {addr:#x} ({len} bytes) lies outside the mapped first GiB"
        ));
    }
}

/// Reads a little-endian u32 at guest-physical `addr`.
fn read32(addr: u64, what: &str) -> u32 {
    check_mapped(addr, 4, what);
    // SAFETY: `addr..addr + 4` is identity-mapped (checked above) and only
    // read; the loader's structures are plain bytes, any value is valid.
    unsafe { core::ptr::read_unaligned(addr as *const u32) }
}

/// Reads a little-endian u64 at guest-physical `addr`.
fn read64(addr: u64, what: &str) -> u64 {
    check_mapped(addr, 8, what);
    // SAFETY: as for `read32`, with 8 bytes.
    unsafe { core::ptr::read_unaligned(addr as *const u64) }
}

/// The NUL-terminated UTF-8 string at guest-physical `addr` (at most
/// [`MAX_STRING`] bytes before the NUL).
fn read_str(addr: u64, what: &str) -> &'static str {
    let mut len = 0;
    loop {
        if len == MAX_STRING {
            fail(format_args!(
                "{what} at {addr:#x} has no NUL in {MAX_STRING} bytes"
            ));
        }
        check_mapped(addr + len, 1, what);
        // SAFETY: the byte is identity-mapped (checked above) and only read.
        if unsafe { core::ptr::read_volatile((addr + len) as *const u8) } == 0 {
            break;
        }
        len += 1;
    }
    // SAFETY: the `len` bytes from `addr` were just read (identity-mapped)
    // and nothing writes them while this guest runs.
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) };
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => fail(format_args!("{what} at {addr:#x} is not UTF-8 ({e})")),
    }
}

fn main() {
    guests::pace_output();
    let magic = MB_MAGIC.load(Ordering::Relaxed);
    if magic != BOOTLOADER_MAGIC {
        fail(format_args!(
            "EAX was {magic:#x} at entry, not {BOOTLOADER_MAGIC:#x}: not booted by a Multiboot loader"
        ));
    }
    println!("multiboot: magic ok");
    let info = u64::from(MB_INFO.load(Ordering::Relaxed));
    let flags = read32(info, "the information structure");
    println!("multiboot: flags {flags:#x}");
    let missing = (INFO_MEMORY | INFO_CMDLINE | INFO_MEM_MAP) & !flags;
    if missing != 0 {
        fail(format_args!(
            "information flags {flags:#x} lack {missing:#x} (bit 0 memory, bit 2 cmdline, bit 6 mmap)"
        ));
    }
    let cmdline = read_str(u64::from(read32(info + 16, "cmdline")), "the command line");
    println!("multiboot: cmdline \"{cmdline}\"");
    let mem_lower = read32(info + 4, "mem_lower");
    let mem_upper = read32(info + 8, "mem_upper");
    println!("multiboot: mem_lower {mem_lower} KiB mem_upper {mem_upper} KiB");
    let mmap_length = u64::from(read32(info + 44, "mmap_length"));
    let mmap_addr = u64::from(read32(info + 48, "mmap_addr"));
    check_mapped(mmap_addr, mmap_length, "the memory map");
    let (mut at, end) = (mmap_addr, mmap_addr + mmap_length);
    let mut entries = 0;
    while at < end {
        // Each entry: size (of the rest, at least 20), base, length, type.
        let size = u64::from(read32(at, "a memory map entry"));
        if size < 20 || at + 4 + size > end {
            fail(format_args!(
                "memory map entry at {at:#x} has size {size} (map {mmap_addr:#x}+{mmap_length:#x})"
            ));
        }
        entries += 1;
        if entries > MAX_MAP_ENTRIES {
            fail(format_args!(
                "the memory map has more than {MAX_MAP_ENTRIES} entries"
            ));
        }
        let base = read64(at + 4, "a memory map entry");
        let len = read64(at + 12, "a memory map entry");
        let kind = read32(at + 20, "a memory map entry");
        println!("multiboot: mmap {base:#x} {len:#x} type {kind}");
        at += 4 + size;
    }
    if entries == 0 {
        fail(format_args!("the memory map is empty"));
    }
    if flags & INFO_LOADER_NAME != 0 {
        let name = read_str(
            u64::from(read32(info + 64, "boot_loader_name")),
            "the boot loader name",
        );
        println!("multiboot: boot loader \"{name}\"");
    }
    println!("multiboot: OK");
    guests::shutdown(0);
}
