//! The checks `cvm launch` makes before it starts anything: flag combinations, the
//! measured inputs, the firmware image and the host paths.

use super::*;

/// Refuses flag combinations no launch can honour, before anything is opened.
pub(super) fn check_flags(a: &Spec) -> Result<(), LaunchError> {
    let emulated = matches!(a.tee, TeeArg::EmulatedSnp | TeeArg::EmulatedTdx);
    if a.tee_trap.is_some() && !emulated {
        return Err(LaunchError::Usage(format!(
            "--tee-trap is for --tee emulated-snp|emulated-tdx only (not --tee {})",
            a.tee.kind()
        )));
    }
    if matches!(a.tee, TeeArg::EmulatedSnp | TeeArg::EmulatedTdx) && a.emulated_platform.is_none() {
        return Err(LaunchError::Usage(format!(
            "--tee {} needs --emulated-platform DIR (or `emulated_platform` in the description)",
            a.tee.kind()
        )));
    }
    check_measured_inputs(a)
}

/// The checks that also apply to `cvm measure --config` (which needs no platform).
pub(super) fn check_measured_inputs(a: &Spec) -> Result<(), LaunchError> {
    if a.tamper_staged.is_some() && std::env::var(TAMPER_ENV).as_deref() != Ok("1") {
        return Err(LaunchError::Usage(format!(
            "--tamper-staged is test equipment; it is refused unless {TAMPER_ENV}=1"
        )));
    }
    let only = |set: bool, flag: &str, tee: TeeArg| {
        if set && a.tee != tee {
            Err(LaunchError::Usage(format!(
                "{flag} is for --tee {} only",
                tee.kind()
            )))
        } else {
            Ok(())
        }
    };
    only(a.id_block.is_some(), "--id-block/--id-auth", TeeArg::Snp)?;
    only(a.snp_certs.is_some(), "--snp-certs", TeeArg::Snp)?;
    only(a.tdx_qgs.is_some(), "--tdx-qgs", TeeArg::Tdx)?;
    if a.jail.is_some() && a.verifier.is_some() && a.jail_netns == JailNetns::None {
        return Err(LaunchError::Usage(
            "--url needs the network, which --jail takes away; add --jail-netns host".into(),
        ));
    }
    if a.kernel.is_none() {
        if a.initrd.is_some() || a.cmdline.is_some() || a.tamper_staged.is_some() {
            let what = if a.initrd.is_some() {
                "--initrd"
            } else if a.cmdline.is_some() {
                "--cmdline"
            } else {
                "--tamper-staged"
            };
            return Err(LaunchError::Usage(format!(
                "{what} needs a kernel: add --kernel PATH (or `kernel` under [boot])"
            )));
        }
        if a.firmware.is_none() {
            return Err(LaunchError::Usage(format!(
                "--tee {} with the built-in firmware needs --kernel PATH: that firmware boots \
                 only a kernel the VMM stages (give --firmware for one that boots on its own)",
                a.tee.kind()
            )));
        }
    }
    if a.verifier_ca.is_some() && a.verifier.is_none() {
        return Err(LaunchError::Usage(
            "--ca-cert is for the verifier's https --url; add --url".into(),
        ));
    }
    if a.id_block.is_some() != a.id_auth.is_some() {
        return Err(LaunchError::Usage(
            "--id-block and --id-auth go together; give both".into(),
        ));
    }
    crate::cli::description::check_vcpus(a.vcpus, a.tee)
        .map_err(|e| LaunchError::Usage(format!("--vcpus: {e}")))?;
    Ok(())
}

/// Whether the 16 bytes at the reset vector start like firmware: a jump (`jmp rel16`,
/// `jmp rel8` or a far jump), optionally after NOPs, or OVMF's mode-aware entry (`mov
/// eax, cr0`, which the project firmware shares) followed by a jump.
pub(super) fn reset_vector_jumps(rv: &[u8]) -> bool {
    // E9 jmp rel16, EA far jmp, EB jmp rel8.
    let jump = |b: &u8| matches!(b, 0xe9..=0xeb);
    let nops = rv.iter().take_while(|&&b| b == 0x90).count();
    if nops <= 4 && rv.get(nops).is_some_and(jump) {
        return true;
    }
    rv.starts_with(&[0x0f, 0x20, 0xc0]) && rv[3..].iter().any(jump)
}

/// Checks that `bytes` is a firmware image for `tee`, before anything runs it: a
/// non-zero multiple of 4 KiB; the OVMF footer GUID table 32 bytes before the end (the
/// project firmware and OVMF carry it; it is where the SEV and TDX metadata are found),
/// holding the SEV metadata for an SNP launch and the TDX metadata for a TD; and a jump
/// at the reset vector (the 16 bytes at 0xFFFFFFF0, where a vCPU starts; see
/// [`reset_vector_jumps`]). A random blob fails all three.
pub fn check_firmware(name: &str, bytes: &[u8], tee: TeeArg) -> Result<(), LaunchError> {
    let not = |why: String| LaunchError::NotFirmware(name.to_owned(), why);
    let img = FirmwareImage::parse(bytes.to_vec()).map_err(|e| not(e.to_string()))?;
    if !img.has_footer_table() {
        return Err(not(measured_boot::FirmwareError::NoFooterTable.to_string()));
    }
    if tee.is_snp() {
        img.sev_metadata().map_err(|e| not(e.to_string()))?;
    }
    if tee.is_tdx() {
        img.tdx_metadata().map_err(|e| not(e.to_string()))?;
    }
    if !reset_vector_jumps(&bytes[bytes.len() - 16..]) {
        return Err(not(format!(
            "its reset vector (0xFFFFFFF0) holds no jump ({})",
            hex::encode(&bytes[bytes.len() - 16..])
        )));
    }
    Ok(())
}

/// Checks the files the VMM opens once it runs (disks, the serial log, the hybrid vsock
/// socket), so a wrong path is refused before the guest starts rather than after the
/// "launching guest" line. In a jail these paths resolve inside the jail's root, which
/// only the jailed VMM sees, so the VMM checks them there.
pub(super) fn check_host_paths(a: &Spec) -> Result<(), LaunchError> {
    if a.jail.is_some() {
        return Ok(());
    }
    for d in &a.disks {
        std::fs::OpenOptions::new()
            .read(true)
            .write(!d.read_only)
            .open(&d.path)
            .map_err(|e| LaunchError::Disk(d.path.clone(), e))?;
    }
    let dir_of = |flag: &str, p: &std::path::Path| {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
        match parent {
            Some(d) if !d.is_dir() => Err(LaunchError::Usage(format!(
                "{flag} {}: the directory {} does not exist",
                p.display(),
                d.display()
            ))),
            _ => Ok(()),
        }
    };
    if let SerialOutput::File(p) = &a.serial {
        dir_of("--serial file:", p)?;
    }
    if let Some(p) = &a.vsock_uds {
        dir_of("--vsock-uds", p)?;
    }
    Ok(())
}
