//! `cvm launch`: start a guest and wait for it to stop.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::seccomp::SeccompMode;
use crate::tee::emulated::{EmulatedLaunchError, EmulatedTee};
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
    /// Directory of the emulated platform (`cvm emulated init`), for emulated TEEs.
    #[arg(long, value_name = "DIR")]
    pub emulated_platform: Option<PathBuf>,
    /// SEV-SNP guest policy (hex).
    #[arg(long, default_value = "0x30000", value_parser = parse_hex_u64)]
    pub policy: u64,
    /// Host data: SNP HOST_DATA (up to 32 bytes) or TDX MRCONFIGID (up to 48), hex.
    #[arg(long, value_name = "HEX", value_parser = parse_hex_bytes)]
    pub host_data: Option<HexBytes>,
    /// vCPU model for the SNP VMSAs (as `cvm measure snp --vcpu-type`).
    #[arg(long, default_value = "EPYC-v4")]
    pub vcpu_type: String,
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

fn parse_hex_u64(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("`{s}`: {e}"))
}

/// Bytes given in hex on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

fn parse_hex_bytes(s: &str) -> Result<HexBytes, String> {
    hex::decode(s.trim_start_matches("0x"))
        .map(HexBytes)
        .map_err(|e| format!("`{s}`: {e}"))
}

fn padded<const N: usize>(b: &Option<HexBytes>) -> Result<[u8; N], LaunchError> {
    let mut out = [0u8; N];
    if let Some(HexBytes(b)) = b {
        if b.len() > N {
            return Err(LaunchError::Usage(format!(
                "--host-data is {} bytes; at most {N} for this TEE",
                b.len()
            )));
        }
        out[..b.len()].copy_from_slice(b);
    }
    Ok(out)
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
    /// The emulated launch failed.
    #[error("emulated launch refused")]
    Emulated(#[from] EmulatedLaunchError),
    /// Arguments are inconsistent.
    #[error("{0}")]
    Usage(String),
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
    let firmware =
        std::fs::read(&a.firmware).map_err(|e| LaunchError::Firmware(a.firmware.clone(), e))?;
    let platform = || {
        a.emulated_platform.clone().ok_or_else(|| {
            LaunchError::Usage(format!("--tee {} needs --emulated-platform DIR", a.tee))
        })
    };
    let (emulated_tee, measurement) = match a.tee {
        TeeKind::None => (None, None),
        TeeKind::Snp | TeeKind::Tdx => return Err(LaunchError::BackendMissing(a.tee)),
        TeeKind::EmulatedSnp => {
            let vcpu_sig = measured_boot::snp::cpu::sig_by_name(&a.vcpu_type).ok_or_else(|| {
                LaunchError::Usage(format!("unknown vCPU type `{}`", a.vcpu_type))
            })?;
            let config = measured_boot::snp::SnpPlanConfig {
                vcpus: a.vcpus,
                vcpu_sig,
                guest_features: 1,
                vmm_type: measured_boot::snp::vmsa::VmmType::Qemu,
                hashes: None,
            };
            let (t, m) = EmulatedTee::launch_snp(
                &platform()?,
                firmware.clone(),
                config,
                a.policy,
                padded::<32>(&a.host_data)?,
            )?;
            (Some(t), Some(m))
        }
        TeeKind::EmulatedTdx => {
            let config = attestation::tdx::emulated::TdConfig {
                mr_config_id: padded::<48>(&a.host_data)?,
                ..Default::default()
            };
            let (t, m) = EmulatedTee::launch_tdx(&platform()?, firmware.clone(), config)?;
            (Some(t), Some(m))
        }
    };
    let summary = match a.tee {
        TeeKind::None => "no TEE: memory is not encrypted and nothing is measured",
        TeeKind::EmulatedSnp | TeeKind::EmulatedTdx => "INSECURE-EMULATED TEE: memory is not encrypted; evidence proves nothing about isolation",
        TeeKind::Snp | TeeKind::Tdx => "confidential",
    };
    tracing::info!(
        event = "launch",
        tee = %a.tee,
        measurement = measurement.map(hex::encode).unwrap_or_else(|| "none".into()),
        memory_mib = a.memory >> 20,
        vcpus = a.vcpus,
        firmware = %a.firmware.display(),
        firmware_bytes = firmware.len(),
        devices = "serial(0x3f8), i8042(0x60), acpi-pm(0x600)",
        disks = a.disks.len(),
        "launching guest ({summary})"
    );
    if measurement.is_some() {
        tracing::warn!("emulated TEE: for tests only; a verifier accepts this evidence only with the emulated trust anchor");
    }
    let config = VmConfig {
        firmware,
        memory: a.memory,
        vcpus: a.vcpus,
        serial: a.serial.clone(),
        seccomp: a.seccomp,
        disks: a.disks.clone(),
        emulated_tee,
    };
    Ok(vmm::run(config)?)
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
