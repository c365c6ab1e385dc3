//! A 16-bit real-mode guest, run under unrestricted guest: prints through the
//! UART where it runs and shuts down by hypercall, all in real mode.
//!
//! Position-independent: the boot tool packs `.text16` as a flat binary
//! (`boot/src/kernel_build.rs`, `REAL_MODE_PROGRAMS`), and a configuration
//! may load it at any `load_addr` below 1 MiB (`mode = "real16"`); the
//! hypervisor starts it with CS = (entry >> 4) & 0xF000 and IP = entry - CS*16
//! (0000:7C00 for a boot sector, 2000:0000 for 0x20000, F000:FF00 for
//! 0xFFF00). The code finds its own IP with a CALL/POP and addresses its data
//! CS-relative (DS = CS); its stack is SS = CS, SP = its own start, so it grows
//! down below the program. The one push before that (the CALL) lands at the
//! initial SS:SP - 2 (0000:FFFE when the hypervisor starts with SS:SP = 0:0).
//! The program stays below 256 bytes (`realmode.ld` checks), so it fits below
//! 1 MiB even at 0xFFF00.
//!
//! Output:
//!
//! ```text
//! hello from real mode (16-bit, unrestricted guest)
//! real mode at CS:IP 2000:0000
//! ```
//!
//! then hypercall SHUTDOWN with exit code 0x16 (22).
#![no_std]
#![no_main]

use guests as _;

// AT&T syntax: its displacements may be label differences (CS-relative
// offsets computed by the assembler), which the Intel parser refuses.
core::arch::global_asm!(
    ".section .text16, \"ax\"",
    ".code16",
    ".global _start16",
    "_start16:",
    "cli",
    "call hv_rm_here",
    "hv_rm_here:",
    "pop %bx",                           // BX = IP of hv_rm_here
    "sub $(hv_rm_here - _start16), %bx", // BX = IP of _start16
    "mov %cs, %ax",
    "mov %ax, %ds",
    "mov %ax, %ss",
    "mov %bx, %sp",
    "lea (hv_rm_msg - _start16)(%bx), %si",
    "call hv_rm_puts",
    "lea (hv_rm_at - _start16)(%bx), %si",
    "call hv_rm_puts",
    "mov %cs, %ax",
    "call hv_rm_hex16",
    "mov $0x3a, %al", // ':'
    "call hv_rm_putc",
    "mov %bx, %ax",
    "call hv_rm_hex16",
    "mov $10, %al",
    "call hv_rm_putc",
    // Shut down (hypercall 4) with code 0x16.
    "hv_rm_stop:",
    "mov $4, %eax",
    "mov $0x16, %ebx",
    "vmcall",
    "hlt",
    "jmp hv_rm_stop",
    // Prints the NUL-terminated string at DS:SI.
    "hv_rm_puts:",
    "lodsb",
    "test %al, %al",
    "jz hv_rm_ret",
    "call hv_rm_putc",
    "jmp hv_rm_puts",
    // Prints AL on COM1 (the emulated UART takes bytes as fast as they come).
    "hv_rm_putc:",
    "push %dx",
    "mov $0x3f8, %dx",
    "out %al, %dx",
    "pop %dx",
    "hv_rm_ret:",
    "ret",
    // Prints AX as four upper-case hex digits.
    "hv_rm_hex16:",
    "mov $4, %cx",
    "hv_rm_digit:",
    "rol $4, %ax",
    "push %ax",
    "and $0x0f, %al",
    "add $0x30, %al",
    "cmp $0x39, %al",
    "jbe hv_rm_emit",
    "add $7, %al",
    "hv_rm_emit:",
    "call hv_rm_putc",
    "pop %ax",
    "loop hv_rm_digit",
    "ret",
    "hv_rm_msg:",
    ".asciz \"hello from real mode (16-bit, unrestricted guest)\\n\"",
    "hv_rm_at:",
    ".asciz \"real mode at CS:IP \"",
    ".code64",
    options(att_syntax),
);
