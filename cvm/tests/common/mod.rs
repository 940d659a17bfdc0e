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
pub fn td_guest_image(code: &[u8]) -> Vec<u8> {
    let mut img = measured_boot::testing::emulated_guest_image(code);
    let reset = img.len() - 16;
    let rel = 0xFFFF_F000u32.wrapping_sub(0xFFFF_FFF5);
    img[reset] = 0xe9;
    img[reset + 1..reset + 5].copy_from_slice(&rel.to_le_bytes());
    img
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
