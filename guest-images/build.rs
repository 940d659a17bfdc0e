//! Builds the guest images `cvm` embeds: the project firmware (`guest-firmware/`) and
//! the bare-metal test guest (`guest-agent/testguest/`).
//!
//! Each is its own Cargo workspace (excluded from the main one) because it is
//! freestanding: it links without libc at a fixed address and needs its own codegen
//! flags, which live in that workspace's `.cargo/config.toml`. We run a nested `cargo
//! build --release` in the workspace's directory (so that config applies) with a target
//! directory of its own under `target/guest/`, then `objcopy -O binary` the ELF into `OUT_DIR`.
//! The paths reach the crate as `CVM_FIRMWARE_IMAGE` and `CVM_TESTGUEST_IMAGE`, which
//! `include_bytes!` embeds.
//!
//! A workspace whose `Cargo.toml` does not exist yet is skipped and its variable points
//! at an empty file; code that embeds it refuses an empty image with a clear error.
//! A nested build that fails is an error under CI (`CI` set) or with
//! `CVM_REQUIRE_GUEST_BUILD=1`; elsewhere it is a build warning and an empty image, so a
//! half-edited guest does not stop work on the host side. `CVM_SKIP_GUEST_BUILD=1`
//! skips the nested builds.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (workspace dir relative to the repository root, binary name, env var).
const IMAGES: &[(&str, &str, &str)] = &[
    ("guest-firmware", "cvm-firmware", "CVM_FIRMWARE_IMAGE"),
    (
        "guest-agent/testguest",
        "cvm-testguest",
        "CVM_TESTGUEST_IMAGE",
    ),
];

/// Variables of the outer build that must not leak into the nested one: wrappers
/// (clippy-driver, sanitizers of cargo-fuzz), flags, and per-build settings.
const SCRUB: &[&str] = &[
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_MAKEFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_PROFILE_RELEASE_LTO",
    "CARGO_PROFILE_RELEASE_DEBUG",
    "RUSTC",
    "RUSTUP_TOOLCHAIN",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_CFG_TARGET_FEATURE",
];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("guest-images sits in the repository root");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-env-changed=CVM_SKIP_GUEST_BUILD");
    println!("cargo:rerun-if-env-changed=CVM_REQUIRE_GUEST_BUILD");
    println!("cargo:rerun-if-env-changed=CI");
    let required = env::var_os("CI").is_some() || env::var_os("CVM_REQUIRE_GUEST_BUILD").is_some();
    for &(dir, bin, var) in IMAGES {
        let ws = root.join(dir);
        for watched in [
            "Cargo.toml",
            "Cargo.lock",
            "src",
            "layout.ld",
            ".cargo",
            "build.rs",
        ] {
            println!("cargo:rerun-if-changed={}", ws.join(watched).display());
        }
        let image = out.join(format!("{bin}.bin"));
        if !ws.join("Cargo.toml").exists() || env::var_os("CVM_SKIP_GUEST_BUILD").is_some() {
            std::fs::write(&image, []).expect("write empty image");
        } else {
            let target = root.join("target").join("guest").join(bin);
            if let Err(e) = build(&ws, bin, &target, &image) {
                if required {
                    panic!("{e}");
                }
                println!("cargo:warning={e}; `cvm` is built without this image");
                std::fs::write(&image, []).expect("write empty image");
            }
        }
        println!("cargo:rustc-env={var}={}", image.display());
    }
    // The test guest depends on these crates; rebuild when they change.
    for dep in [
        "guest-agent/src",
        "guest-agent/Cargo.toml",
        "luks/src",
        "luks/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dep).display());
    }
}

fn build(ws: &Path, bin: &str, target_dir: &Path, image: &Path) -> Result<(), String> {
    // The nested build uses the toolchain rustup picks in that directory (stable), even
    // when the outer build runs under nightly (cargo-fuzz).
    let mut cmd = Command::new("cargo");
    for var in SCRUB {
        cmd.env_remove(var);
    }
    cmd.current_dir(ws)
        .args(["build", "--release", "--bin", bin]);
    if ws.join("Cargo.lock").exists() {
        cmd.arg("--locked");
    }
    cmd.arg("--target-dir").arg(target_dir);
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo for {}: {e}", ws.display()))?;
    if !status.success() {
        return Err(format!("building {} failed", ws.display()));
    }
    let elf = target_dir.join("release").join(bin);
    let status = Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(image)
        .status()
        .map_err(|e| format!("cannot run objcopy (binutils): {e}"))?;
    if !status.success() {
        return Err(format!("objcopy of {} failed", elf.display()));
    }
    Ok(())
}
