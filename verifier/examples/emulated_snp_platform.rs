//! Creates an emulated SEV-SNP platform in the directory given as the only argument
//! (what `cvm emulated init` writes under `DIR/snp`), so `scripts/bench-verifier` needs
//! only this crate.

use attestation::snp::emulated::EmulatedSnpPlatform;

fn main() -> std::process::ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: emulated_snp_platform DIR");
        return std::process::ExitCode::from(2);
    };
    match EmulatedSnpPlatform::create(std::path::Path::new(&dir)) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
