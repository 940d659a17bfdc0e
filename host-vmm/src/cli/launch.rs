//! `cvm launch`: start a guest and wait for it to stop.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::seccomp::SeccompMode;
use crate::tee::{self, KvmCapabilities, TeeKind};
use crate::vmm::{self, DiskConfig, SerialOutput, VmConfig};
use crate::vstate::vcpu::VcpuStop;

/// `cvm launch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The TEE to launch into. A TEE this host cannot provide is refused, never
    /// downgraded.
    #[arg(long, value_enum)]
    pub tee: TeeKind,
    /// Firmware image, mapped to end at 4 GiB.
    #[arg(long, value_name = "PATH")]
    pub firmware: PathBuf,
    /// Guest memory, e.g. 512M or 2G.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Serial console: stdout, file:PATH or none.
    #[arg(long, default_value = "stdout", value_parser = parse_serial)]
    pub serial: SerialOutput,
    /// A virtio-blk disk: PATH or PATH,readonly (repeatable).
    #[arg(long = "disk", value_name = "PATH[,readonly]", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,
    /// Per-thread seccomp filters; `off` only for debugging.
    #[arg(long, value_enum, default_value = "on")]
    pub seccomp: SeccompMode,
}

/// Parses sizes such as `512M`, `2G`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => {
                    return Err(format!(
                        "`{s}`: unknown size suffix `{c}` (use K, M, G or T)"
                    ))
                }
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a size"))
}

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let (path, read_only) = match s.rsplit_once(',') {
        Some((p, "readonly")) | Some((p, "ro")) => (p, true),
        Some((_, opt)) => {
            return Err(format!(
                "`{s}`: unknown disk option `{opt}` (expected readonly)"
            ))
        }
        None => (s, false),
    };
    if path.is_empty() {
        return Err("empty disk path".into());
    }
    Ok(DiskConfig {
        path: path.into(),
        read_only,
    })
}

fn parse_serial(s: &str) -> Result<SerialOutput, String> {
    match s {
        "stdout" => Ok(SerialOutput::Stdout),
        "none" => Ok(SerialOutput::None),
        _ => s
            .strip_prefix("file:")
            .filter(|p| !p.is_empty())
            .map(|p| SerialOutput::File(p.into()))
            .ok_or_else(|| format!("`{s}`: expected stdout, file:PATH or none")),
    }
}

/// Why `cvm launch` refused or failed before the guest ran.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The firmware could not be read.
    #[error("cannot read firmware {0}")]
    Firmware(PathBuf, #[source] std::io::Error),
    /// The host cannot provide the TEE.
    #[error("launch refused")]
    Unavailable(#[from] tee::Unavailable),
    /// The TEE is available but its launch backend is not part of this build.
    #[error(
        "launch refused: the {0} launch backend is not part of this build yet; nothing was started"
    )]
    BackendMissing(TeeKind),
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    /// The VMM failed.
    #[error("the VMM failed")]
    Vmm(#[from] vmm::VmmError),
}

/// Maps how the guest stopped to the process exit status: 0 only for a clean power-off
/// (or reset request), 1 otherwise, with the reason on stderr.
pub fn exit_status(why: &VcpuStop) -> (u8, String) {
    match why {
        VcpuStop::PowerOff => (0, "guest powered off".into()),
        VcpuStop::Reset => (0, "guest requested a reset; a confidential guest is not rebooted, so the VM stopped".into()),
        VcpuStop::Stopped => (1, "the VM was stopped".into()),
        VcpuStop::TripleFault(s) => (1, format!("guest triple fault (KVM_EXIT_SHUTDOWN): {s}")),
        VcpuStop::EmulationFailure { suberror, state } => {
            (1, format!("KVM could not emulate a guest instruction (KVM_EXIT_INTERNAL_ERROR, suberror {suberror}): {state}"))
        }
        VcpuStop::FailEntry { reason } => (1, format!("KVM could not enter the guest (hardware entry failure reason {reason:#x})")),
        VcpuStop::Halted(s) => (1, format!("guest halted with nothing to wake it: {s}")),
        VcpuStop::Crash => (1, "guest reported a crash".into()),
        VcpuStop::RunError(e) => (1, format!("KVM_RUN failed: {e}")),
        VcpuStop::UnexpectedExit(e) => (1, format!("unexpected VM exit: {e}")),
    }
}

fn launch(a: &Args) -> Result<VcpuStop, LaunchError> {
    let kvm = kvm_ioctls::Kvm::new().map_err(LaunchError::Kvm)?;
    tee::check(a.tee, &KvmCapabilities::query(&kvm))?;
    if a.tee != TeeKind::None {
        return Err(LaunchError::BackendMissing(a.tee));
    }
    let firmware =
        std::fs::read(&a.firmware).map_err(|e| LaunchError::Firmware(a.firmware.clone(), e))?;
    tracing::info!(
        event = "launch",
        tee = %a.tee,
        memory_mib = a.memory >> 20,
        vcpus = a.vcpus,
        firmware = %a.firmware.display(),
        firmware_bytes = firmware.len(),
        devices = "serial(0x3f8), i8042(0x60), acpi-pm(0x600)",
        disks = a.disks.len(),
        "launching guest (no TEE: memory is not encrypted and nothing is measured)"
    );
    let config = VmConfig {
        firmware,
        memory: a.memory,
        vcpus: a.vcpus,
        serial: a.serial.clone(),
        seccomp: a.seccomp,
        disks: a.disks.clone(),
    };
    Ok(vmm::run(&config)?)
}

/// Runs `cvm launch`.
pub fn run(a: Args) -> ExitCode {
    match launch(&a) {
        Ok(why) => {
            let (code, msg) = exit_status(&why);
            tracing::info!(event = "shutdown", exit_status = code, reason = %msg, "guest stopped");
            if code != 0 {
                eprintln!("error: {msg}");
            }
            ExitCode::from(code)
        }
        Err(e) => super::fail(&e, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_serial_specs() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(
            parse_serial("file:/tmp/x"),
            Ok(SerialOutput::File("/tmp/x".into()))
        );
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tcp").is_err());
        assert_eq!(
            parse_disk("/d.img,readonly"),
            Ok(DiskConfig {
                path: "/d.img".into(),
                read_only: true
            })
        );
        assert_eq!(
            parse_disk("/d.img"),
            Ok(DiskConfig {
                path: "/d.img".into(),
                read_only: false
            })
        );
        assert!(parse_disk("/d.img,rw2").is_err());
    }
}
