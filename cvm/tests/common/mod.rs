//! Equipment shared by the KVM integration tests of `cvm`.
// Each test binary uses only part of this module.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

/// An emulated platform made by `cvm emulated init`, for `--emulated-platform`: made
/// once per target directory (its RSA-4096 keys are slow) and reused (`test_kit`).
pub fn emulated_platform() -> String {
    let dir = test_kit::cached_dir("cvm-emulated-init-v1", |d| {
        let o = test_kit::run_with_deadline(
            Command::new(env!("CARGO_BIN_EXE_cvm"))
                .args(["emulated", "init", "--dir"])
                .arg(d.join("platform")),
            Duration::from_secs(600),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    });
    dir.join("platform").to_string_lossy().into_owned()
}

/// A minimal bzImage: boot sector + one setup sector with a 2.15 setup header
/// (XLF_KERNEL_64, pref_address 1 MiB, init_size 64 KiB + `pad`), then the
/// protected-mode part loaded at 0x100000 with `entry` at +0x200 (the 64-bit entry),
/// padded with `pad` bytes of `nop`.
pub fn bzimage(entry: &[u8], pad: usize) -> Vec<u8> {
    let mut s = vec![0u8; 1024];
    s[0x1F1] = 1; // setup_sects
    s[0x1FE..0x200].copy_from_slice(&[0x55, 0xAA]);
    s[0x200] = 0xEB;
    s[0x201] = 0x6A; // header length - 0x202
    s[0x202..0x206].copy_from_slice(b"HdrS");
    s[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
    s[0x211] = 1; // LOADED_HIGH
    s[0x22C..0x230].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes()); // initrd_addr_max
    s[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    s[0x238..0x23C].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    s[0x258..0x260].copy_from_slice(&0x10_0000u64.to_le_bytes()); // pref_address
    s[0x260..0x264].copy_from_slice(&(0x10000 + pad as u32).to_le_bytes()); // init_size
    let mut pm = vec![0u8; 0x200];
    pm.extend_from_slice(entry);
    pm.resize(pm.len().next_multiple_of(512) + pad, 0x90);
    s.extend_from_slice(&pm);
    s
}

/// A test image for `--tee emulated-tdx`, whose vCPUs start as TD vCPUs do: in 32-bit
/// protected mode at 0xFFFFFFF0. `code` (32-bit) runs at 0xFFFFF000, reached by a
/// 32-bit `jmp rel32` at the reset vector; the image is otherwise
/// `measured_boot::testing::emulated_guest_image`.
///
/// The code is preceded by TDG.MEM.PAGE.ACCEPT of the mailbox window and its response
/// area 0x1000-0x40000 (through the emulator trap): a TD's memory starts private and unaccepted (the
/// private-memory contract), and reading the mailbox's response from an unaccepted page
/// is a TDX #VE the VMM reports as a guest fault.
pub fn td_guest_image(code: &[u8]) -> Vec<u8> {
    let mut c = td_accept32(0x1000, 0x4_0000);
    c.extend_from_slice(code);
    let mut img = measured_boot::testing::emulated_guest_image(&c);
    let reset = img.len() - 16;
    let rel = 0xFFFF_F000u32.wrapping_sub(0xFFFF_FFF5);
    img[reset] = 0xe9;
    img[reset + 1..reset + 5].copy_from_slice(&rel.to_le_bytes());
    img
}

/// 32-bit TDG.MEM.PAGE.ACCEPT of the 4 KiB pages of `[start, end)` through the
/// emulator trap (`out 0xE0, al` with RAX = 6, RCX = the page, level 0), one by one.
pub fn td_accept32(start: u32, end: u32) -> Vec<u8> {
    let mut c = vec![0xbe]; // mov esi, start
    c.extend_from_slice(&start.to_le_bytes());
    // loop: mov eax, 6; mov ecx, esi; xor edx, edx; out 0xe0, al; add esi, 0x1000
    c.extend_from_slice(&[0xb8, 6, 0, 0, 0, 0x89, 0xf1, 0x31, 0xd2, 0xe6, 0xe0]);
    c.extend_from_slice(&[0x81, 0xc6, 0x00, 0x10, 0, 0, 0x81, 0xfe]); // ...; cmp esi, end
    c.extend_from_slice(&end.to_le_bytes());
    c.extend_from_slice(&[0x72, 0xe7]); // jb loop (-25)
    c
}

/// 32-bit mailbox client (request window at 0x1000): for each (command, skip, count)
/// prints the status byte, then `count` response bytes from 0x1100 + `skip` (`None`:
/// the response length the mailbox wrote at 0x1040); then ACPI S5.
pub fn mailbox_guest32(steps: &[(u32, u32, Option<u32>)]) -> Vec<u8> {
    let imm = |c: &mut Vec<u8>, op: u8, v: u32| {
        c.push(op);
        c.extend_from_slice(&v.to_le_bytes());
    };
    let mut c = Vec::new();
    imm(&mut c, 0xba, 0xe00); // mov edx, 0xe00
    imm(&mut c, 0xb8, 0x1000); // mov eax, 0x1000
    c.push(0xef); // out dx, eax
    for &(cmd, skip, count) in steps {
        imm(&mut c, 0xba, 0xe04);
        imm(&mut c, 0xb8, cmd);
        c.extend_from_slice(&[0xef, 0xed]); // out dx, eax; in eax, dx
        imm(&mut c, 0xba, 0x3f8);
        c.push(0xee); // status -> serial
        match count {
            Some(0) => continue,
            Some(n) => imm(&mut c, 0xb9, n), // mov ecx, n
            None => c.extend_from_slice(&[0x8b, 0x0d, 0x40, 0x10, 0, 0]), // mov ecx, [0x1040]
        }
        imm(&mut c, 0xbe, 0x1100 + skip); // mov esi
        c.extend_from_slice(&[0xe3, 0x04, 0xac, 0xee, 0xe2, 0xfc]); // jecxz; lodsb; out; loop
    }
    imm(&mut c, 0xba, 0x604);
    imm(&mut c, 0xb8, 0x3400);
    c.extend_from_slice(&[0x66, 0xef, 0xf4, 0xeb, 0xfd]); // out dx, ax; hlt; jmp
    c
}

/// 64-bit entry of the test kernel (assembled with GNU as from the listing below, Intel
/// syntax). Prints "TESTKERNEL-OK cmdline=" and the command line found through
/// boot_params (RSI) -> cmd_line_ptr; in a TD (CPUID 0x21 "IntelTDX    ") it asks the
/// TDX module for a TDREPORT with the literal TDCALL (TDG.MR.REPORT, REPORTDATA at
/// 0x300000, TDREPORT_STRUCT at 0x300400) and prints "RTMRS=" and RTMR0..3 (TDINFO + 208)
/// and "MRTD=" and MRTD (TDINFO + 16) in hex; then ACPI S5.
///
/// ```text
///     mov dx, 0x3f8 ; lea rbx, [rip+msg] ; print ; mov ebx, [rsi+0x228] ; print ; '\n'
///     xor eax, eax ; cpuid ; cmp eax, 0x21 ; jb off
///     mov eax, 0x21 ; xor ecx, ecx ; cpuid ; cmp ebx, "Inte" ; jne off ; cmp edx, "lTDX" ; jne off
///     mov edi, 0x300000 ; xor eax, eax ; mov ecx, 0x800 ; rep stosb
///     mov eax, 4 ; mov ecx, 0x300400 ; mov edx, 0x300000 ; xor r8d, r8d ; tdcall
///     test rax, rax ; jnz off
///     print "RTMRS=" ; hex of [0x300400 + 720, +192) ; '\n'
///     print "MRTD=" ; hex of [0x300400 + 528, +48) ; '\n'
/// off: mov dx, 0x604 ; mov ax, 0x3400 ; out dx, ax ; hlt
/// ```
pub const TEST_KERNEL_ENTRY64: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0x48, 0x8d, 0x1d, 0xeb, 0x00, 0x00, 0x00, 0x8a, 0x03, 0x84, 0xc0, 0x74,
    0x06, 0xee, 0x48, 0xff, 0xc3, 0xeb, 0xf4, 0x8b, 0x9e, 0x28, 0x02, 0x00, 0x00, 0x8a, 0x03, 0x84,
    0xc0, 0x74, 0x06, 0xee, 0x48, 0xff, 0xc3, 0xeb, 0xf4, 0xb0, 0x0a, 0xee, 0x31, 0xc0, 0x0f, 0xa2,
    0x83, 0xf8, 0x21, 0x0f, 0x82, 0x8a, 0x00, 0x00, 0x00, 0xb8, 0x21, 0x00, 0x00, 0x00, 0x31, 0xc9,
    0x0f, 0xa2, 0x81, 0xfb, 0x49, 0x6e, 0x74, 0x65, 0x75, 0x79, 0x81, 0xfa, 0x6c, 0x54, 0x44, 0x58,
    0x75, 0x71, 0xbf, 0x00, 0x00, 0x30, 0x00, 0x31, 0xc0, 0xb9, 0x00, 0x08, 0x00, 0x00, 0xf3, 0xaa,
    0xb8, 0x04, 0x00, 0x00, 0x00, 0xb9, 0x00, 0x04, 0x30, 0x00, 0xba, 0x00, 0x00, 0x30, 0x00, 0x45,
    0x31, 0xc0, 0x66, 0x0f, 0x01, 0xcc, 0x48, 0x85, 0xc0, 0x75, 0x48, 0x66, 0xba, 0xf8, 0x03, 0x48,
    0x8d, 0x1d, 0x87, 0x00, 0x00, 0x00, 0x8a, 0x03, 0x84, 0xc0, 0x74, 0x06, 0xee, 0x48, 0xff, 0xc3,
    0xeb, 0xf4, 0xbb, 0xd0, 0x06, 0x30, 0x00, 0xb9, 0xc0, 0x00, 0x00, 0x00, 0xe8, 0x2f, 0x00, 0x00,
    0x00, 0x48, 0x8d, 0x1d, 0x6c, 0x00, 0x00, 0x00, 0x8a, 0x03, 0x84, 0xc0, 0x74, 0x06, 0xee, 0x48,
    0xff, 0xc3, 0xeb, 0xf4, 0xbb, 0x10, 0x06, 0x30, 0x00, 0xb9, 0x30, 0x00, 0x00, 0x00, 0xe8, 0x0d,
    0x00, 0x00, 0x00, 0x66, 0xba, 0x04, 0x06, 0x66, 0xb8, 0x00, 0x34, 0x66, 0xef, 0xf4, 0xeb, 0xfd,
    0x8a, 0x03, 0xc0, 0xe8, 0x04, 0x04, 0x30, 0x3c, 0x3a, 0x72, 0x02, 0x04, 0x27, 0xee, 0x8a, 0x03,
    0x24, 0x0f, 0x04, 0x30, 0x3c, 0x3a, 0x72, 0x02, 0x04, 0x27, 0xee, 0x48, 0xff, 0xc3, 0xff, 0xc9,
    0x75, 0xde, 0xb0, 0x0a, 0xee, 0xc3, 0x54, 0x45, 0x53, 0x54, 0x4b, 0x45, 0x52, 0x4e, 0x45, 0x4c,
    0x2d, 0x4f, 0x4b, 0x20, 0x63, 0x6d, 0x64, 0x6c, 0x69, 0x6e, 0x65, 0x3d, 0x00, 0x52, 0x54, 0x4d,
    0x52, 0x53, 0x3d, 0x00, 0x4d, 0x52, 0x54, 0x44, 0x3d, 0x00,
];
