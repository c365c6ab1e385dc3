//! A 16-bit real-mode guest, run under unrestricted guest: prints through the
//! UART and shuts down by hypercall, all in real mode.
#![no_std]
#![no_main]

use guests as _;

core::arch::global_asm!(
    ".section .text16, \"ax\"",
    ".code16",
    ".global _start16",
    "_start16:",
    "cli",
    "xor ax, ax",
    "mov ds, ax",
    "mov ss, ax",
    "mov sp, 0x7000",
    "mov si, offset hv_realmode_msg",
    "1:",
    "lodsb",
    "test al, al",
    "jz 2f",
    "mov dx, 0x3f8",
    "out dx, al",
    "jmp 1b",
    "2:",
    // Shut down (hypercall 4) with code 0x16.
    "mov eax, 4",
    "mov ebx, 0x16",
    "vmcall",
    "hlt",
    "jmp 2b",
    "hv_realmode_msg:",
    ".asciz \"hello from real mode (16-bit, unrestricted guest)\\n\"",
    ".code64",
);
