//! The bzImage setup header, the CPL0 prologue (assembly only: the CPL0 interpreter of
//! this machine's KVM runs ~1 µs per instruction and cannot execute SSE arithmetic), the
//! ring-3 entry stub, and the C memory functions (no libc).
//!
//! The prologue, entered by the firmware at 0x100200 in 64-bit mode with RSI =
//! `boot_params`: builds identity page tables of 0–4 GiB with 2 MiB pages and the U/S bit
//! (uncached for the MMIO hole 3–4 GiB); clears CR4.SMEP/SMAP (this code sits in user
//! pages), sets CR4.OSFXSR/OSXMMEXCPT and CR0.MP, clears CR0.EM/TS; loads a GDT with
//! ring-3 segments; `iretq`s to ring 3 with IOPL = 3 (port I/O), interrupts off, RDI =
//! `boot_params`. About 8 000 instructions, all integer moves and control registers. No
//! interrupt or exception is ever delivered after this: a fault at ring 3 is a triple
//! fault (the VMM sees a shutdown).

core::arch::global_asm!(
    r#"
    .section .setup, "a"
__setup_start:
    .fill 0x1F1, 1, 0
    .byte 1                     /* 0x1F1 setup_sects */
    .word 0                     /* 0x1F2 root_flags */
    .long __syssize             /* 0x1F4 syssize (16-byte units) */
    .word 0                     /* 0x1F8 ram_size */
    .word 0xFFFF                /* 0x1FA vid_mode */
    .word 0                     /* 0x1FC root_dev */
    .word 0xAA55                /* 0x1FE boot_flag */
    .byte 0xEB, 0x66            /* 0x200 jump */
    .ascii "HdrS"               /* 0x202 header */
    .word 0x020F                /* 0x206 version 2.15 */
    .long 0                     /* 0x208 realmode_swtch */
    .word 0x1000                /* 0x20C start_sys_seg */
    .word __kver - __setup_start - 0x200 /* 0x20E kernel_version */
    .byte 0                     /* 0x210 type_of_loader */
    .byte 0x01                  /* 0x211 loadflags: LOADED_HIGH */
    .word 0                     /* 0x212 setup_move_size */
    .long 0x100000              /* 0x214 code32_start */
    .long 0                     /* 0x218 ramdisk_image */
    .long 0                     /* 0x21C ramdisk_size */
    .long 0                     /* 0x220 bootsect_kludge */
    .word 0                     /* 0x224 heap_end_ptr */
    .byte 0                     /* 0x226 ext_loader_ver */
    .byte 0                     /* 0x227 ext_loader_type */
    .long 0                     /* 0x228 cmd_line_ptr */
    .long 0x7FFFFFFF            /* 0x22C initrd_addr_max */
    .long 0x200000              /* 0x230 kernel_alignment */
    .byte 0                     /* 0x234 relocatable_kernel */
    .byte 21                    /* 0x235 min_alignment (2 MiB) */
    .word 0x0001                /* 0x236 xloadflags: XLF_KERNEL_64 */
    .long 4095                  /* 0x238 cmdline_size */
    .long 0                     /* 0x23C hardware_subarch */
    .quad 0                     /* 0x240 hardware_subarch_data */
    .long 0                     /* 0x248 payload_offset */
    .long 0                     /* 0x24C payload_length */
    .quad 0                     /* 0x250 setup_data */
    .quad 0x100000              /* 0x258 pref_address */
    .long __init_size           /* 0x260 init_size */
    .long 0                     /* 0x264 handover_offset */
    .long 0                     /* 0x268 kernel_info_offset */
__kver:
    .asciz "cvm-testguest"
    .org 0x400, 0

    .section .text.entry, "ax"
    .code64
    /* 0x100000: the 32-bit entry is not supported; stop. */
__entry32:
    hlt
    jmp __entry32
    .org 0x200, 0xCC

    .globl __entry64
__entry64:
    mov r15, rsi

    /* Zero the PML4 and the PDPT (1024 quadwords). */
    lea rdi, [rip + __pml4]
    mov ecx, 1024
    xor eax, eax
2:  mov [rdi], rax
    add rdi, 8
    dec ecx
    jnz 2b

    /* PML4[0] -> PDPT; PDPT[0..4] -> the four PDs; all present, writable, user. */
    lea rax, [rip + __pdpt]
    or rax, 7
    mov [rip + __pml4], rax
    lea rax, [rip + __pd]
    or rax, 7
    lea rdi, [rip + __pdpt]
    mov ecx, 4
3:  mov [rdi], rax
    add rax, 0x1000
    add rdi, 8
    dec ecx
    jnz 3b

    /* 2 MiB pages: 0-3 GiB write-back RAM, 3-4 GiB uncached (MMIO hole). */
    lea rdi, [rip + __pd]
    mov eax, 0x87
    mov ecx, 1536
4:  mov [rdi], rax
    add rax, 0x200000
    add rdi, 8
    dec ecx
    jnz 4b
    or eax, 0x18
    mov ecx, 512
5:  mov [rdi], rax
    add rax, 0x200000
    add rdi, 8
    dec ecx
    jnz 5b

    /* CR4: SMEP and SMAP off (we run from user pages), OSFXSR and OSXMMEXCPT on. */
    mov rax, cr4
    and rax, ~0x300000
    or rax, 0x600
    mov cr4, rax
    /* CR0: MP on, EM and TS off. */
    mov rax, cr0
    and rax, ~0xC
    or rax, 0x2
    mov cr0, rax

    lea rax, [rip + __pml4]
    mov cr3, rax
    lgdt [rip + __gdtr]

    /* iretq to ring 3: SS, RSP, RFLAGS (IOPL=3, IF=0), CS, RIP. */
    push 0x23
    lea rax, [rip + __stack_top]
    push rax
    push 0x3002
    push 0x2B
    lea rax, [rip + __ring3_entry]
    push rax
    mov rdi, r15
    iretq

    .section .rodata.gdt, "a"
    .balign 16
__gdt:
    .quad 0
    .quad 0
    .quad 0x00AF9B000000FFFF    /* 0x10 ring-0 code, 64-bit */
    .quad 0x00CF93000000FFFF    /* 0x18 ring-0 data */
    .quad 0x00CFF3000000FFFF    /* 0x20 ring-3 data (selector 0x23) */
    .quad 0x00AFFB000000FFFF    /* 0x28 ring-3 code, 64-bit (selector 0x2B) */
__gdt_end:
    .balign 8
__gdtr:
    .word __gdt_end - __gdt - 1
    .quad __gdt

    .section .text.ring3, "ax"
    /* Ring 3, native speed from here on. Zero .bss (which holds this stack), then Rust. */
__ring3_entry:
    mov r15, rdi
    cld
    lea rdi, [rip + __bss_start]
    lea rcx, [rip + __bss_end]
    sub rcx, rdi
    xor eax, eax
    rep stosb
    mov rdi, r15
    call cvm_testguest_main
    ud2

    /* C memory functions (no libc here). rep movsb/stosb are fast at ring 3 (ERMS). */
    .section .text.memfns, "ax"
    .globl memcpy
memcpy:
    mov rax, rdi
    mov rcx, rdx
    rep movsb
    ret

    .globl memset
memset:
    mov r8, rdi
    mov eax, esi
    mov rcx, rdx
    rep stosb
    mov rax, r8
    ret

    .globl memmove
memmove:
    mov rax, rdi
    mov rcx, rdx
    cmp rdi, rsi
    jbe 7f
    lea r8, [rsi + rdx]
    cmp rdi, r8
    jae 7f
    lea rsi, [rsi + rdx - 1]
    lea rdi, [rdi + rdx - 1]
    std
    rep movsb
    cld
    ret
7:  rep movsb
    ret

    .globl memcmp
    .globl bcmp
memcmp:
bcmp:
    xor eax, eax
8:  test rdx, rdx
    jz 9f
    movzx eax, byte ptr [rdi]
    movzx ecx, byte ptr [rsi]
    sub eax, ecx
    jnz 9f
    inc rdi
    inc rsi
    dec rdx
    jmp 8b
9:  ret
"#
);
