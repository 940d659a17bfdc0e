//! The test guest image (`testguest/`) is a valid bzImage for the project firmware: the
//! setup header the contract (docs/guest-boot-protocol.md) requires, the payload at file
//! offset 0x400 for 0x100000, the 64-bit entry at 0x100200, and an emulator-safe CPL0
//! prologue (no SSE). Uses the image host-vmm's build script builds
//! (`target/guest/cvm-testguest/release/cvm-testguest`), building it if missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn elf() -> PathBuf {
    let target = root().join("target/guest/cvm-testguest");
    let elf = target.join("release/cvm-testguest");
    if !elf.exists() {
        let mut cmd = Command::new(env!("CARGO"));
        for var in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
        ] {
            cmd.env_remove(var);
        }
        let status = cmd
            .current_dir(root().join("guest-agent/testguest"))
            .args(["build", "--release", "--locked", "--bin", "cvm-testguest"])
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("cargo");
        assert!(status.success(), "building the test guest failed");
    }
    elf
}

fn flat_image() -> Vec<u8> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let st = Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(elf())
        .arg(out.path())
        .status()
        .expect("objcopy (binutils)");
    assert!(st.success());
    std::fs::read(out.path()).unwrap()
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[test]
fn the_image_is_a_bzimage_with_the_contracted_header() {
    let img = flat_image();
    eprintln!("cvm-testguest image: {} bytes", img.len());
    assert!(
        img.len() > 0x600 && img.len() < 1 << 20,
        "{} bytes",
        img.len()
    );
    assert_eq!(img[0x1F1], 1, "setup_sects");
    assert_eq!(u16_at(&img, 0x1FE), 0xAA55, "boot_flag");
    assert_eq!(&img[0x202..0x206], b"HdrS");
    assert_eq!(u16_at(&img, 0x206), 0x020F, "protocol 2.15");
    assert_eq!(img[0x211] & 1, 1, "LOADED_HIGH");
    assert_eq!(u32_at(&img, 0x214), 0x100000, "code32_start");
    assert_eq!(u16_at(&img, 0x236) & 1, 1, "XLF_KERNEL_64");
    assert!(u32_at(&img, 0x238) >= 255, "cmdline_size");
    assert_eq!(u64_at(&img, 0x258), 0x100000, "pref_address");
    let payload = img.len() - 0x400;
    let syssize = u32_at(&img, 0x1F4) as usize * 16;
    assert!(syssize >= payload && syssize < payload + 16, "syssize");
    let init_size = u32_at(&img, 0x260) as usize;
    assert!(init_size >= payload, "init_size covers the payload");
    assert!(
        0x100000 + init_size <= 16 << 20,
        "init_size ends below the heap"
    );
    let kver = 0x200 + usize::from(u16_at(&img, 0x20E));
    assert!(img[kver..].starts_with(b"cvm-testguest\0"));
    // The 64-bit entry (file 0x400 + 0x200): `mov r15, rsi`.
    assert_eq!(&img[0x600..0x603], &[0x49, 0x89, 0xF7]);
}

#[test]
fn the_elf_enters_at_0x100200() {
    let bytes = std::fs::read(elf()).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(u64_at(&bytes, 0x18), 0x100200, "e_entry");
}

/// The CPL0 prologue (entry to `iretq`) uses no SSE/AVX register: the CPL0 interpreter
/// stops on SSE arithmetic.
#[test]
fn the_cpl0_prologue_is_emulator_safe() {
    let img = flat_image();
    let iretq = img[0x600..]
        .windows(2)
        .position(|w| w == [0x48, 0xCF])
        .expect("iretq in the prologue");
    assert!(iretq < 0x200, "the prologue is short ({iretq} bytes)");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &img).unwrap();
    let out = Command::new("objdump")
        .args(["-D", "-b", "binary", "-m", "i386:x86-64", "-M", "intel"])
        .arg(format!("--start-address={:#x}", 0x600))
        .arg(format!("--stop-address={:#x}", 0x600 + iretq + 2))
        .arg(file.path())
        .output()
        .expect("objdump (binutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("iretq"), "{text}");
    for bad in ["xmm", "ymm", "rep", "cmpxchg16b", "popcnt"] {
        assert!(!text.contains(bad), "{bad} in the CPL0 prologue:\n{text}");
    }
}
