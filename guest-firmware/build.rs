//! Links the firmware at its fixed address with `layout.ld`, without libc.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed={dir}/layout.ld");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-Wl,--build-id=none",
        "-Wl,--gc-sections",
        &format!("-Wl,-T,{dir}/layout.ld"),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
