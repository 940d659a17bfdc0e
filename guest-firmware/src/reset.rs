//! The last page of the image: reset vector, mode switches, SEV/TDVF metadata and the
//! OVMF footer GUID table.
//!
//! Entry paths:
//! - real mode (SNP, emulated, plain): `0xFFFFFFF0` → `real16` (within the last 4 KiB,
//!   so the 16-bit `jmp` reaches it) → GDT, CR0.PE → `prot32_real`;
//! - 32-bit protected mode (TDX: the TD starts flat at `0xFFFFFFF0`): the same first
//!   bytes decode identically in both modes (`mov eax, cr0; test al, 1; jz`), then a
//!   32-bit `jmp` → `tdx32` → our GDT → `prot32_tdx`.
//!
//! In 32-bit mode the code checks for SEV-SNP (real-mode entries only: a TD never starts
//! in real mode): a minimal IDT with a #VC handler that answers CPUID through the GHCB
//! MSR protocol is installed first, because CPUID raises #VC in an SEV-ES/SNP guest.
//! Once SEV_STATUS says SNP is active, the C-bit position comes from the CPUID page
//! (0xB000, checked by the PSP) and must equal what CPUID said; otherwise the firmware
//! stops (the hypervisor answers CPUID and could otherwise move the C-bit).
//! Then the identity page tables (0x1000–0x6FFF, 2 MiB pages over 0–4 GiB, with the
//! C-bit on SNP), SSE state bits, long mode, and `fw_main(flags)` at CPL0 with the
//! stack at 0x18000.
//!
//! `flags` (first argument): bit 0 = entered in 32-bit mode (TDX), bit 1 = SEV-SNP is
//! active, bits 8..15 = C-bit position (SNP only).
//!
//! TD application processors: every TD vCPU starts at the reset vector (no INIT/SIPI),
//! with its VCPU_INDEX in ESI. vCPU 0 boots; the others park (`ap_park32`): they wait
//! until vCPU 0 has built the page tables, enter long mode on them and spin on the ACPI
//! Multiprocessor Wakeup mailbox at 0x1C000 (ACPI 6.4 §5.2.12.19), which the VMM's MADT
//! announces; Linux wakes them there.

core::arch::global_asm!(
    r#"
.set MP_MAILBOX, 0x1C000        /* ACPI Multiprocessor Wakeup mailbox (TD guests) */
.set MP_TABLES_READY, 0x800     /* firmware-reserved half: "page tables built" */
.section .reset, "ax"
reset_page:

/* ---- 16-bit real-mode entry (CS base 0xFFFF0000) ---- */
.code16
real16:
    cli
    cld
    lgdtl %cs:(gdt_ptr - 0xFFFF0000)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $prot32_real

/* SEV-ES/SNP application processors start here (SEV-ES reset block): park them.
 * Linux brings its APs up itself (SNP AP creation). */
.code16
ap_reset:
    cli
    hlt
    jmp ap_reset

/* ---- 32-bit entry of a TD ---- */
.code32
tdx32:
    cli
    cld
    lgdtl gdt_ptr
    /* ESI = VCPU_INDEX (the TD vCPU's initial state): every vCPU of a TD starts here,
     * and only vCPU 0 boots; the others park (ap_park32). */
    testl %esi, %esi
    jnz 6f
    ljmpl $0x08, $prot32_tdx
6:
    ljmpl $0x08, $ap_park32
prot32_tdx:
    movl $1, %esi
    jmp common32
prot32_real:
    xorl %esi, %esi
common32:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $0x18000, %esp
    xorl %ebp, %ebp            /* high dword of the C-bit mask (0 unless SNP) */
    testl $1, %esi
    jnz build_tables           /* a TD is never an SEV guest */

    /* #VC handler for CPUID (vector 29) in a 32-bit IDT at 0x1D000. */
    movl $vc32, %eax
    movl $(0x1D000 + 29 * 8), %edx
    movw %ax, (%edx)
    movw $0x08, 2(%edx)
    movw $0x8E00, 4(%edx)
    shrl $16, %eax
    movw %ax, 6(%edx)
    lidtl idt32_ptr

    movl $0x80000000, %eax
    cpuid
    cmpl $0x8000001F, %eax
    jb build_tables
    movl $0x8000001F, %eax
    cpuid
    btl $1, %eax               /* SEV-SNP supported */
    jnc build_tables
    andl $0x3F, %ebx           /* C-bit position */
    cmpl $32, %ebx
    jb build_tables
    movl %ebx, %edi
    movl $0xC0010131, %ecx     /* SEV_STATUS: not intercepted */
    rdmsr
    btl $2, %eax               /* SNP active */
    jnc build_tables
    /* The C-bit position is taken from the CPUID page (checked by the PSP at launch),
     * not from CPUID, which the hypervisor answers: the two must agree, else stop. */
    movl 0xB000, %ecx          /* number of entries */
    cmpl $64, %ecx
    ja cpuid_page_bad
    movl $0xB010, %edx
6:
    testl %ecx, %ecx
    jz cpuid_page_bad
    cmpl $0x8000001F, (%edx)   /* eax_in */
    jne 7f
    cmpl $0, 4(%edx)           /* ecx_in */
    je 8f
7:
    addl $0x30, %edx
    decl %ecx
    jmp 6b
8:
    movl 28(%edx), %eax        /* EBX of the entry */
    andl $0x3F, %eax
    cmpl %eax, %edi
    jne cpuid_page_bad
    movl %edi, %ecx
    subl $32, %ecx
    movl $1, %ebp
    shll %cl, %ebp
    shll $8, %edi
    orl %edi, %esi
    orl $2, %esi

build_tables:
    /* Zero 0x1000-0x6FFF. */
    movl $0x1000, %edi
    movl $(0x6000 / 4), %ecx
    xorl %eax, %eax
    rep stosl
    /* PML4[0] -> PDPT 0x2000. */
    movl $0x2003, 0x1000
    movl %ebp, 0x1004
    /* PDPT[0..4] -> PD 0x3000 + i * 0x1000. */
    movl $0x2000, %edi
    movl $0x3003, %eax
    movl $4, %ecx
1:
    movl %eax, (%edi)
    movl %ebp, 4(%edi)
    addl $0x1000, %eax
    addl $8, %edi
    loop 1b
    /* 2048 PD entries: 2 MiB pages, present, writable. */
    movl $0x3000, %edi
    movl $0x83, %eax
    movl $2048, %ecx
2:
    movl %eax, (%edi)
    movl %ebp, 4(%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 2b

    /* CR4: PAE, OSFXSR, OSXMMEXCPT. */
    movl %cr4, %eax
    orl $((1 << 5) | (1 << 9) | (1 << 10)), %eax
    movl %eax, %cr4
    movl $0x1000, %eax
    movl %eax, %cr3
    /* The page tables are complete: parked APs of a TD may enter long mode. */
    testl $1, %esi
    jz 7f
    movl $0x4B524150, (MP_MAILBOX + MP_TABLES_READY)   /* "PARK" */
7:
    /* EFER.LME (a TD starts with it set, and EFER accesses would raise #VE there),
     * except the emulated TD on a standard KVM: CPUID (0x21, 0) EAX = "Trap" (a value
     * a TDX module never reports; env.rs), whose vCPUs start with LME clear. */
    testl $1, %esi
    jz 4f
    movl $0x21, %eax
    xorl %ecx, %ecx
    cpuid
    cmpl $0x70617254, %eax
    jne 5f
4:
    movl $0xC0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    wrmsr
5:
    /* CR0: PG, MP, NE, PE; clear EM, CD, NW. */
    movl %cr0, %eax
    orl $((1 << 31) | (1 << 5) | (1 << 1) | 1), %eax
    andl $~((1 << 2) | (1 << 29) | (1 << 30)), %eax
    movl %eax, %cr0
    ljmpl $0x10, $long64

/* The CPUID page has no 0x8000001F entry, or it disagrees with CPUID: stop. */
cpuid_page_bad:
    cli
    hlt
    jmp cpuid_page_bad

/* #VC handler (32-bit): CPUID only, through the GHCB MSR protocol (GHCB spec 2.3.1).
 * Runs on real SEV-ES/SNP hardware only; never reached elsewhere. */
vc32:
    pushl %ebx
    pushl %ecx
    pushl %edx
    pushl %esi
    pushl %edi
    cmpl $0x72, 20(%esp)       /* error code = SVM_EXIT_CPUID */
    jne 9f
    movl %eax, %esi            /* leaf */
    xorl %edi, %edi            /* register: 0 eax, 1 ebx, 2 ecx, 3 edx */
    subl $16, %esp
3:
    movl %edi, %eax
    shll $30, %eax
    orl $0x004, %eax           /* CPUID request */
    movl %esi, %edx
    movl $0xC0010130, %ecx     /* GHCB MSR */
    wrmsr
    .byte 0xf3, 0x0f, 0x01, 0xd9   /* VMGEXIT */
    movl $0xC0010130, %ecx
    rdmsr
    andl $0xFFF, %eax
    cmpl $0x005, %eax          /* CPUID response */
    jne 9f
    movl %edx, (%esp, %edi, 4)
    incl %edi
    cmpl $4, %edi
    jb 3b
    popl %eax
    popl %ebx
    popl %ecx
    popl %edx
    popl %edi
    popl %esi
    addl $16, %esp             /* saved edx, ecx, ebx; error code */
    addl $2, (%esp)            /* skip the 2-byte CPUID */
    iretl
9:
    hlt
    jmp 9b

/* ---- TD application processors (vCPU index in ESI != 0) ----
 * Wait until vCPU 0 has built the page tables, enter long mode on them, then wait in
 * the ACPI Multiprocessor Wakeup mailbox (ACPI 6.4 §5.2.12.19; the VMM's MADT names
 * it): when Command = 1 (wakeup) and ApicId = ours, clear Command (the acknowledgement
 * the OS waits for) and jump to WakeupVector in long mode with the identity map, as
 * TDVF does. No stack is used. APIC ID = vCPU index (KVM's default). */
.code32
ap_park32:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
1:
    pause
    cmpl $0x4B524150, (MP_MAILBOX + MP_TABLES_READY)
    jne 1b
    movl %cr4, %eax
    orl $((1 << 5) | (1 << 9) | (1 << 10)), %eax
    movl %eax, %cr4
    movl $0x1000, %eax
    movl %eax, %cr3
    /* EFER.LME for the emulated TD on a standard KVM (as the boot vCPU, above), and
     * EFER.NXE: Linux's 64-bit wakeup path (trampoline_start64) runs on its own page
     * tables, whose NX bits are reserved bits while NXE is clear, before it sets NXE. */
    movl $0x21, %eax
    xorl %ecx, %ecx
    cpuid
    cmpl $0x70617254, %eax
    jne 3f
    movl $0xC0000080, %ecx
    rdmsr
    orl $((1 << 8) | (1 << 11)), %eax
    wrmsr
3:
    movl %cr0, %eax
    orl $((1 << 31) | (1 << 5) | (1 << 1) | 1), %eax
    andl $~((1 << 2) | (1 << 29) | (1 << 30)), %eax
    movl %eax, %cr0
    ljmpl $0x10, $ap_park64
.code64
ap_park64:
    movl %esi, %ebx
2:
    pause
    cmpw $1, MP_MAILBOX
    jne 2b
    cmpl %ebx, (MP_MAILBOX + 4)
    jne 2b
    movq (MP_MAILBOX + 8), %rax
    movw $0, MP_MAILBOX
    jmpq *%rax

.code64
long64:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq $0x18000, %rsp
    xorl %ebp, %ebp
    movl %esi, %edi
    movabsq $fw_main, %rax
    callq *%rax
4:
    cli
    hlt
    jmp 4b

/* ---- GDT: 0x08 32-bit code, 0x10 64-bit code, 0x18 data (accessed bits preset, so
 * the CPU never writes to the descriptors). The kernel is entered with CS 0x10 and
 * DS/ES/SS 0x18 (the Linux boot protocol's __BOOT_CS/__BOOT_DS). ---- */
.balign 16
gdt:
    .quad 0
    .quad 0x00CF9B000000FFFF
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
idt32_ptr:
    .word 30 * 8 - 1
    .long 0x1D000

/* ---- SEV metadata ("ASEV", OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm layout) ---- */
.balign 16
sev_metadata:
    .ascii "ASEV"
    .long sev_metadata_end - sev_metadata
    .long 1
    .long 5
    .long 0x1000, 0x7000, 1    /* SNP_SEC_MEM: page tables, boot_params */
    .long 0xA000, 0x1000, 2    /* SNP_SECRETS */
    .long 0xB000, 0x1000, 3    /* CPUID */
    .long 0xC000, 0x1000, 0x10 /* SNP_KERNEL_HASHES */
    .long 0xD000, 0x53000, 1   /* SNP_SEC_MEM: CC blob, stack, cmdline, event log, setup */
sev_metadata_end:

/* ---- TDVF metadata (TDVF design guide, "TDVF_DESCRIPTOR") ---- */
.balign 16
    .byte 0xf3, 0xf9, 0xea, 0xe9, 0x8e, 0x16, 0xd5, 0x44, 0xa8, 0xeb, 0x7f, 0x4d, 0x87, 0x38, 0xf6, 0xae
tdx_metadata:
    .ascii "TDVF"
    .long tdx_metadata_end - tdx_metadata
    .long 1
    .long 4
    /* BFV: the whole image, measured (MR.EXTEND). */
    .long 0, __image_size
    .quad __image_base, __image_size
    .long 0, 1
    /* TempMem: page tables, boot_params. */
    .long 0, 0
    .quad 0x1000, 0x7000
    .long 3, 0
    /* TD_HOB: the page of the boot-data descriptor (VMM-written, unmeasured). */
    .long 0, 0
    .quad 0x8000, 0x1000
    .long 2, 0
    /* TempMem: GHCB/secrets/CPUID/hashes pages (unused on TDX), stack, cmdline,
     * CC event log, setup copy. */
    .long 0, 0
    .quad 0x9000, 0x57000
    .long 3, 0
tdx_metadata_end:

/* ---- OVMF footer GUID table: entries are data | u16 length | GUID and walk
 * backwards from the footer entry, which ends 32 bytes before 4 GiB. ---- */
.org 0xFE0 - (26 + 22 + 22 + 22 + 18)
footer_table:
    /* SEV hashes table: u32 base, u32 size. */
    .long 0xC000, 0x1000
    .word 26
    .byte 0x1f, 0x37, 0x55, 0x72, 0x3b, 0x3a, 0x04, 0x4b, 0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54
    /* SEV-ES reset block: u32 AP reset EIP. */
    .long ap_reset
    .word 22
    .byte 0xde, 0x71, 0xf7, 0x00, 0x7e, 0x1a, 0xcb, 0x4f, 0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e
    /* SEV metadata: offset of "ASEV" from the end of the image. */
    .long reset_page_end - sev_metadata
    .word 22
    .byte 0x66, 0x65, 0x88, 0xdc, 0x4a, 0x98, 0x98, 0x47, 0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc
    /* TDX metadata: offset of "TDVF" from the end of the image. */
    .long reset_page_end - tdx_metadata
    .word 22
    .byte 0x35, 0x65, 0x7a, 0xe4, 0x4a, 0x98, 0x98, 0x47, 0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2
    /* Footer: length of the whole table. */
    .word footer_table_end - footer_table
    .byte 0xde, 0x82, 0xb5, 0x96, 0xb2, 0x1f, 0xf7, 0x45, 0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d
footer_table_end:
.org 0xFE0
    .fill 16, 1, 0xf4

/* ---- Reset vector, 0xFFFFFFF0: decodes the same in 16- and 32-bit mode up to the
 * jz; a TD (CR0.PE = 1) takes the 32-bit jmp, everyone else the 16-bit one. ---- */
.globl reset_vector
reset_vector:
    .byte 0x0f, 0x20, 0xc0     /* mov eax, cr0 */
    .byte 0xa8, 0x01           /* test al, 1 */
    .byte 0x74, 0x05           /* jz real (skip the 5-byte 32-bit jmp) */
    .byte 0xe9                 /* jmp rel32 tdx32 */
    .long tdx32 - (. + 4)
    .byte 0xe9                 /* real: jmp rel16 real16 */
    .word real16 - (. + 2)
    .byte 0xf4
reset_page_end:
"#,
    options(att_syntax)
);
