//! `cvm-firmware`: the measured-boot firmware of the cvm confidential-VM host.
//!
//! A freestanding x86-64 image of 64 KiB that ends at 4 GiB. It starts at the reset
//! vector, switches to long mode, finds out where it runs (TDX, SEV-SNP, the emulated
//! TEEs of `cvm launch --tee emulated-*`, or no TEE), copies the kernel, initrd and
//! command line the VMM staged into private memory, checks them against the hashes the
//! launch measurement covers (SNP and plain) or measures them into RTMRs (TDX), and
//! boots the bzImage through its 64-bit entry point. The contract with the VMM and the
//! kernel is `docs/guest-boot-protocol.md`.
//!
//! # Memory map (guest physical, identity-mapped)
//!
//! | GPA | what |
//! |---|---|
//! | 0x1000–0x6FFF | page tables: PML4, PDPT, 4 PDs (2 MiB pages, 0–4 GiB) |
//! | 0x7000 | Linux `boot_params` |
//! | 0x8000 | boot-data descriptor (VMM-written, untrusted) |
//! | 0x9000 | GHCB (SNP); TDX: 0x9000–0xCFFF the shared alias's 4 PDs |
//! | 0xA000 / 0xB000 | SNP secrets / CPUID pages |
//! | 0xC000 | SNP_KERNEL_HASHES page: QEMU hashes table at offset 0 |
//! | 0xD000 | SNP CC blob and its `setup_data` |
//! | 0xE000 | firmware variables (`arch::VARS`: the VMGEXIT and PVALIDATE/TDCALL trap choices) |
//! | 0x10000–0x17FFF | stack (top 0x18000) |
//! | 0x1C000 | ACPI Multiprocessor Wakeup mailbox (TD APs park here; e820 reserved) |
//! | 0x1D000 | 32-bit IDT (#VC handler, SNP) |
//! | 0x1E000 / 0x1F000 | TDX shared-alias PDPT / SNP 4 KiB table for 0–2 MiB |
//! | 0x20000–0x2FFFF | private command line |
//! | 0x30000–0x3FFFF | CC event log (TDX) |
//! | 0x40000–0x5FFFF | private copy of the bzImage setup sectors |
//! | 0xE0000–0xFFFFF | the private, checked copy of the ACPI tables (`acpi.rs`; e820 ACPI) |
//! | 0x100000 | the kernel's protected-mode part |
//! | below the staging region | the private initrd (as high as possible) |
//!
//! # Boot flow
//!
//! 1. `reset.rs`: reset vector (real mode or a TD's 32-bit entry), 32-bit mode, SNP
//!    check (with a #VC handler for CPUID), page tables (C-bit on SNP), CR0.MP and
//!    CR4.OSFXSR/OSXMMEXCPT for the kernel, long mode, `fw_main` at CPL0.
//! 2. `env::detect`; `descriptor::read` validates the descriptor.
//! 3. Private copies (setup sectors, protected-mode part at 0x100000, initrd, cmdline);
//!    then `measure::check_hashes` (SHA-256 against the hashes table) or
//!    `measure::extend_rtmrs` (SHA-384 into RTMR1/RTMR2 + CC event log). The hashes
//!    are always computed over the private copies, never over staging memory the host
//!    can still change.
//! 4. `acpi::relocate`: the staged ACPI tables, copied into 0xE0000 (private,
//!    validated/accepted on SNP/TDX), checked and relocated (issue 13 bug 7).
//! 5. `boot_params` at 0x7000 (RSDP in `acpi_rsdp_addr`, 0xE0000-0xFFFFF as e820
//!    ACPI) and the jump to 0x100200 with RSI = 0x7000.
//!
//! # What is verified on this machine, and what is not
//!
//! Verified (tests in `cvm/tests/firmware.rs`, under this machine's KVM): the image
//! layout is accepted by `cvm measure snp|tdx` and gives the same SNP digest as
//! `sev-snp-measure`; the reset vector decodes to the 16-bit and the 32-bit entry, and a
//! bare KVM vCPU started like a TD (32-bit flat, EFER.LME set) reaches Rust; the
//! image contains no instruction the PVM CPL0 interpreter rejects
//! (`scripts/check-firmware-insns`); real-mode entry → long mode → measured direct boot
//! of a bzImage with `--tee none`, `emulated-snp` and `emulated-tdx`; refusal (message +
//! pvpanic) of a staged kernel, initrd or command line that differs from the measured
//! one; emulated-TDX RTMRs equal to `cvm measure tdx`. On the host, `cargo test --lib`
//! checks SHA-256/SHA-384 known answers, descriptor validation (every malformed field),
//! bzImage header checks, initrd placement, the e820 map, hashes-table parsing and the
//! CC event log's byte layout.
//!
//! Speed: CPL0 code is interpreted here at about 1 µs per instruction. SHA-256 costs
//! about 3,000 instructions per 64-byte block, so hashing runs at roughly 20 KB/s: the
//! 274 KiB test guest boots in about 12.5 s, a 64 KiB kernel in about 3.3 s, and a
//! kernel of a few KiB in 0.2 s (whole `cvm launch`). On real SNP/TDX hardware the same
//! code runs natively.
//!
//! **SNP under emulation**: `--tee emulated-snp` runs the SNP code of this firmware
//! (`snp.rs`: the C-bit from the CPUID page, GHCB registration and IOIO, page-state
//! changes, PVALIDATE with CF checked, memory above 4 GiB) against the VMM's software PSP
//! (host-vmm `tee::emu_snp`, whose module docs hold the measurements of this KVM). What
//! only hardware shows: the 32-bit #VC handler (CPUID does not raise #VC under
//! emulation), encryption itself, and the literal VMGEXIT (the emulated platform selects
//! the `out 0xE2` trap through SEV_STATUS bit 63).
//!
//! **On a standard KVM** (the nested-KVM tier, a user's CI) PVALIDATE and TDCALL raise
//! #UD in the guest, so the emulated platform selects their emulator traps too
//! (SEV_STATUS bit 62; CPUID (0x21, 0) EAX = "Trap"), read once by `env::select_traps`
//! before any TEE instruction; `env` argues why a host cannot use this on hardware.
//! Tests: `env` unit tests (hardware values never select a port trap),
//! `cvm/tests/firmware.rs::emulated_tees_take_the_port_trap_when_the_platform_says_so`
//! (this machine, `--tee-trap port`: a literal instruction would be #UD), and the
//! nested scenario `scripts/nested/scenarios/20-emulated-tee.sh`.
//!
//! **TDX under emulation**: `--tee emulated-tdx` runs the TDX code (`tdx.rs`): the VMM's
//! software TDX module answers the literal TDCALLs (TDG.VP.INFO, MapGPA with RETRY, the
//! shared alias, TDG.MEM.PAGE.ACCEPT, TDG.MR.RTMR.EXTEND, Instruction.IO), every vCPU
//! starts at the reset vector in 32-bit mode and the application processors park
//! (`cvm/tests/firmware.rs`: RTMRs equal `cvm measure tdx`, 2 and 4 vCPUs).
//!
//! **Plain handoff** (a stock kernel under the emulated TEEs): with
//! `cvm.emulated_handoff=plain` in the *measured* command line, emulated SNP (SEV_STATUS
//! bit 63) boots the kernel without the CC blob and signals `out 0xE5`; emulated TDX
//! (CPUID (0x21, 0) "cvmPlainTDX ", `env::TdSignature::EmulatedPlain`) signals the same
//! port through TDVMCALL Instruction.IO, and its VMM ends the private-memory contract.
//! The TDX signature without the word is refused (`env::tdx_plain_handoff`).
//!
//! **Not verifiable here** (no SNP or TDX hardware): encryption, the hardware's own
//! checks beyond what the emulated PSP / TDX module enforce, and how real Linux treats
//! the TD paths (for example a real AP wakeup through the MADT mailbox). They are
//! written against the AMD GHCB and Intel TDX module/GHCI specifications.
//!
//! # Build
//!
//! The host target (x86_64-unknown-linux-gnu) with `-C target-feature=-sse,-sse2,-mmx`
//! (the CPL0 interpreter rejects SSE arithmetic; rustc warns that disabling SSE2 is an
//! ABI change for floats — this firmware uses no floating point at all), a static
//! relocation model, the large code model, and `layout.ld`. No `core::fmt` on any path:
//! output uses `io::Io::puts`/`put_hex`.

#![no_std]
#![no_main]

mod mem;
mod reset;

use guest_firmware::{acpi, arch, boot, descriptor, env, measure, snp, tdx};

use guest_firmware::env::Env;
use guest_firmware::io::Io;

extern "C" {
    /// Defined by layout.ld: the image size (its address is the value).
    static __image_size: u8;
}

fn image_size() -> u64 {
    core::ptr::addr_of!(__image_size) as u64
}

/// Copies `n` bytes from staging (through `alias`) to private memory at `dst`.
fn copy_in(dst: u64, src_gpa: u64, alias: u64, n: u64) {
    // SAFETY: `dst..dst+n` is private RAM checked to lie outside firmware data and the
    // staging region; the source is inside the validated staging region.
    unsafe { arch::copy_phys(dst, src_gpa + alias, n) }
}

/// The Rust entry point, called by the reset code in long mode at CPL0.
#[no_mangle]
#[link_section = ".text.fw_main"]
pub extern "C" fn fw_main(flags: u32) -> ! {
    let env = env::detect(flags);
    // Before any PVALIDATE, TDCALL or VMGEXIT (`env` docs: the security rule).
    env::select_traps(env);
    let io = match env {
        Env::Snp { cbit } => {
            snp::init_low(cbit);
            Io::Ghcb
        }
        Env::Tdx => Io::TdVmcall,
        _ => Io::Direct,
    };
    io.puts("cvm-firmware: ");
    io.puts(env.name());
    io.puts("\n");

    let mut bd = match descriptor::read() {
        Ok(bd) => bd,
        Err(e) => io.refuse(e),
    };
    if bd.kernel.size == 0 {
        io.puts("cvm-firmware: no kernel given; nothing to boot\n");
        io.panic_exit();
    }
    let (slo, shi) = boot::staging_reserved(&bd);
    let alias = match env {
        Env::Snp { cbit } => {
            snp::share_staging(cbit, slo, shi);
            0
        }
        Env::Tdx => {
            if let Err(e) = tdx::init(slo, shi) {
                io.refuse(e);
            }
            tdx::STAGING_ALIAS
        }
        _ => 0,
    };
    // Real SNP/TDX: make every RAM range handed over private and validated/accepted
    // (the ranges the launch added are already).
    if let Env::Snp { .. } | Env::Tdx = env {
        for (start, end) in [
            (0, 0x1000),
            (0x60000, 0xA0000),
            (acpi::BASE, acpi::BASE + acpi::MAX),
            (boot::KERNEL_LOAD, slo),
            (shi, bd.ram_below_4g),
            (0x1_0000_0000, 0x1_0000_0000 + bd.ram_above_4g),
        ] {
            match env {
                Env::Snp { cbit } => snp::accept(cbit, start, end),
                _ => {
                    if let Err(e) = tdx::accept(start, end) {
                        io.refuse(e);
                    }
                }
            }
        }
    }

    // ACPI tables (issue 13 bug 7): a private copy of the staged blob, checked and
    // relocated there; the kernel gets its address and an e820 ACPI range. Under SNP
    // and TDX the tables must come this way (the host's shared copy is no table a
    // confidential kernel can read).
    if bd.acpi.size != 0 {
        // SAFETY: the ACPI area is RAM the firmware owns (validated/accepted above on
        // SNP/TDX); nothing else uses it.
        unsafe { arch::fill_phys(acpi::BASE, 0, acpi::MAX) };
        copy_in(acpi::BASE, bd.acpi.gpa, alias, bd.acpi.size);
        // SAFETY: as above; the descriptor bounds the size by `acpi::MAX`.
        let tables = unsafe { arch::phys_mut(acpi::BASE, bd.acpi.size as usize) };
        bd.rsdp = match acpi::relocate(tables, bd.rsdp, acpi::BASE) {
            Ok(rsdp) => rsdp,
            Err(e) => io.refuse(e),
        };
    } else if let Env::Snp { .. } | Env::Tdx = env {
        io.refuse("no ACPI tables staged (boot-data descriptor 0x70)");
    }

    // Setup sectors: the first one says how many there are.
    copy_in(
        boot::SETUP_COPY,
        bd.kernel.gpa,
        alias,
        512.min(bd.kernel.size),
    );
    // SAFETY: the setup copy area is private firmware memory we just wrote.
    let first: [u8; 512] = unsafe { arch::phys(boot::SETUP_COPY, 512) }
        .try_into()
        .unwrap_or([0; 512]);
    let setup_len = boot::setup_len(&first);
    if bd.kernel.size < 1024 || setup_len >= bd.kernel.size || setup_len > 0x20000 {
        io.refuse("kernel is not a bzImage");
    }
    copy_in(
        boot::SETUP_COPY + 512,
        bd.kernel.gpa + 512,
        alias,
        setup_len - 512,
    );
    // SAFETY: as above; nothing writes the setup copy from here on.
    let setup = unsafe { arch::phys(boot::SETUP_COPY, setup_len as usize) };
    let kernel = match boot::parse(setup, bd.kernel.size) {
        Ok(k) => k,
        Err(e) => io.refuse(e),
    };
    if kernel.end > slo {
        io.refuse("kernel does not fit below the staging region");
    }
    copy_in(
        boot::KERNEL_LOAD,
        bd.kernel.gpa + kernel.setup_len,
        alias,
        kernel.pm_len,
    );
    let initrd = match boot::initrd_addr(&bd, &kernel) {
        Ok(a) => a,
        Err(e) => io.refuse(e),
    };
    copy_in(initrd, bd.initrd.gpa, alias, bd.initrd.size);
    let cmdline_len = if bd.cmdline.size == 0 {
        // SAFETY: the command line area is private firmware memory.
        unsafe { arch::fill_phys(boot::CMDLINE, 0, 1) };
        1
    } else {
        copy_in(boot::CMDLINE, bd.cmdline.gpa, alias, bd.cmdline.size);
        // SAFETY: as above.
        let last = unsafe { arch::phys(boot::CMDLINE + bd.cmdline.size - 1, 1) }[0];
        if last != 0 {
            io.refuse("command line is not NUL-terminated");
        }
        bd.cmdline.size
    };

    let copies = measure::Copies {
        kernel: [
            (boot::SETUP_COPY, kernel.setup_len),
            (boot::KERNEL_LOAD, kernel.pm_len),
        ],
        initrd: (initrd, bd.initrd.size),
        cmdline: (boot::CMDLINE, cmdline_len),
    };
    if env.is_tdx() {
        measure::extend_rtmrs(io, env, &copies);
    } else {
        measure::check_hashes(io, &copies);
    }

    // Emulated SNP only (SEV_STATUS bit 63, which hardware never sets) and only when
    // the measured command line asks: boot a kernel that does not know SNP as a plain
    // guest (no CC blob; the VMM then reports SEV_STATUS = 0).
    // SAFETY: the command line copy is private firmware memory, checked above.
    let cmdline = unsafe { arch::phys(boot::CMDLINE, cmdline_len as usize) };
    let asked = boot::cmdline_has(cmdline, boot::EMULATED_PLAIN_HANDOFF);
    let plain_handoff = match env {
        Env::Snp { .. } => arch::emulated_snp() && asked,
        // Emulated TDX only (the platform's CPUID signature, which a real TDX module
        // never shows) and only with the measured word; the signature alone refuses.
        Env::Tdx => match env::tdx_plain_handoff(env::this_td_signature(), asked) {
            Ok(p) => p,
            Err(e) => io.refuse(e),
        },
        Env::Plain => false,
    };
    // SAFETY: the setup copy, zero page and CC blob page are private firmware memory.
    unsafe {
        boot::build_boot_params(
            setup,
            &bd,
            initrd,
            image_size(),
            matches!(env, Env::Snp { .. }) && !plain_handoff,
        );
    }
    io.puts("cvm-firmware: kernel ");
    io.put_dec(bd.kernel.size);
    io.puts(" bytes, initrd ");
    io.put_dec(bd.initrd.size);
    io.puts(if env.is_tdx() {
        " bytes measured into RTMR1/RTMR2; entering "
    } else {
        " bytes verified; entering "
    });
    io.put_hex(boot::KERNEL_LOAD + 0x200);
    io.puts("\n");
    if plain_handoff {
        if env.is_tdx() {
            io.puts("cvm-firmware: emulated TDX: handing over to a plain kernel\n");
            // TDVMCALL<Instruction.IO> to the handoff port: the emulated module's VMM
            // ends the private-memory contract (every page shared, contents kept).
            tdx::vmcall_io_out(tdx::PLAIN_HANDOFF_PORT, 0, 1);
        } else {
            io.puts("cvm-firmware: emulated SNP: handing over to a plain kernel\n");
            arch::emulated_plain_handoff();
        }
    }
    // SAFETY: kernel, boot_params and command line are in place.
    unsafe { boot::enter_kernel() }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // No formatting: the message machinery (core::fmt) must stay out of the image.
    // Direct port I/O: correct for plain and emulated guests; on real SNP/TDX it
    // faults, which stops the guest just the same.
    Io::Direct.puts("cvm-firmware: internal error\n");
    Io::Direct.panic_exit()
}
