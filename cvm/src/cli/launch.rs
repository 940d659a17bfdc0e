//! `cvm launch`: start a guest and wait for it to stop.

use std::path::PathBuf;
use std::process::ExitCode;

use host_vmm::boot::{BootError, BootInputs, Tamper};
use host_vmm::devices::virtio::vsock::{RelayConfig, RelayError, VsockConfig};
use host_vmm::isolation::cgroup::{self, CgroupError, CpuList, Limits, VmCgroup};
use host_vmm::isolation::jail::{self, JailConfig, JailError};
use host_vmm::seccomp::SeccompMode;
use host_vmm::tee::emulated::{EmulatedLaunchError, EmulatedTee};
use host_vmm::tee::launch::{ConfidentialLaunch, SnpLaunch, TdxLaunch};
use host_vmm::tee::services::CertTable;
use host_vmm::tee::tdx::TdConfig;
use host_vmm::tee::{self, KvmCapabilities, TeeKind};
use host_vmm::vmm::{self, ApiConfig, DiskConfig, SerialOutput, VmConfig};
use host_vmm::vstate::vcpu::VcpuStop;
use measured_boot::snp::{PageType, SnpLaunchPlan, SnpPlanConfig, UpdateContents};
use measured_boot::tdx::TdxLaunchPlan;
use measured_boot::FirmwareImage;

/// `cvm launch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The TEE to launch into. A TEE this host cannot provide is refused, never
    /// downgraded.
    #[arg(long, value_enum)]
    pub tee: TeeKind,
    /// Firmware image, mapped to end at 4 GiB (default: the project firmware built
    /// into cvm; `cvm firmware --out FILE` writes it).
    #[arg(long, value_name = "PATH")]
    pub firmware: Option<PathBuf>,
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
    /// Kernel (bzImage) to boot: staged for the firmware, which checks it against the
    /// measured hashes (SNP, plain) or extends it into RTMR1 (TDX).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initrd (requires --kernel).
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (requires --kernel); measured with its trailing NUL.
    #[arg(
        long,
        value_name = "STR",
        requires = "kernel",
        allow_hyphen_values = true
    )]
    pub cmdline: Option<String>,
    /// TEST EQUIPMENT: stage a corrupted copy of one item (the measurement still
    /// describes the original), as a malicious host would. Refused unless
    /// CVM_ALLOW_TAMPER_FOR_TESTS=1.
    #[arg(long, value_enum, hide = true, requires = "kernel")]
    pub tamper_staged: Option<Tamper>,
    /// Guest CID of the virtio-vsock device.
    #[arg(long, default_value_t = 3, value_parser = parse_cid)]
    pub vsock_cid: u64,
    /// Hybrid vsock: guest connections to host port P reach the Unix socket PATH_P, and
    /// host clients connect to PATH and send `CONNECT <port>\n`.
    #[arg(long, value_name = "PATH")]
    pub vsock_uds: Option<PathBuf>,
    /// Attestation relay: guest connections to host port 50000 are relayed to this
    /// verifier (https://…, or http:// to a loopback address only).
    #[arg(long, value_name = "URL")]
    pub verifier: Option<String>,
    /// CA certificate(s) (PEM) trusted for an https --verifier; required for https.
    #[arg(long, value_name = "FILE", requires = "verifier")]
    pub verifier_ca: Option<PathBuf>,
    /// SEV-SNP ID block (96 bytes), given to SNP_LAUNCH_FINISH (requires --id-auth).
    #[arg(long, value_name = "FILE", requires = "id_auth")]
    pub id_block: Option<PathBuf>,
    /// SEV-SNP ID authentication structure (4096 bytes) (requires --id-block).
    #[arg(long, value_name = "FILE", requires = "id_block")]
    pub id_auth: Option<PathBuf>,
    /// SEV-SNP: the GHCB certificate table (VCEK/VLEK, ASK, ARK) served to the guest's
    /// extended report requests (needs Linux 7.0's KVM_EXIT_SNP_REQ_CERTS).
    #[arg(long, value_name = "FILE")]
    pub snp_certs: Option<PathBuf>,
    /// TDX: the Quote Generation Service's Unix socket, for the guest's GetQuote calls
    /// (e.g. /var/run/tdx-qgs/qgs.socket).
    #[arg(long, value_name = "PATH")]
    pub tdx_qgs: Option<PathBuf>,
    /// Serve the REST control API (host-vmm/openapi.yaml) on this Unix socket (0600).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Run the VMM in a jail: new mount, PID, network, IPC and UTS namespaces, DIR as
    /// its root, no capabilities. Paths opened after start (--disk, --serial file:,
    /// --vsock-uds) are then resolved inside DIR.
    #[arg(long, value_name = "DIR", requires_all = ["uid", "gid"])]
    pub jail: Option<PathBuf>,
    /// User the jailed VMM runs as.
    #[arg(long, requires = "jail")]
    pub uid: Option<u32>,
    /// Group the jailed VMM runs as.
    #[arg(long, requires = "jail")]
    pub gid: Option<u32>,
    /// The jail's network namespace: `none` (a new, empty one) or `host` (needed for
    /// --verifier, whose relay connects to the verifier).
    #[arg(long, value_enum, default_value = "none", requires = "jail")]
    pub jail_netns: JailNetns,
    /// CPU time for the VM as a percentage of one CPU (cgroup quota), e.g. 150.
    #[arg(long, value_name = "PERCENT")]
    pub cpu_quota: Option<u32>,
    /// Memory limit for the whole VMM process (cgroup), e.g. 600M; at least the guest
    /// memory plus 32 MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_limit: Option<u64>,
    /// CPUs the VM may run on (cgroup cpuset), e.g. 0-1 or 2,4.
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<CpuList>,
    /// Parent group of the VM's cgroup, relative to each hierarchy (default: the group
    /// cvm runs in).
    #[arg(long, value_name = "PATH")]
    pub cgroup_parent: Option<String>,
}

/// The network namespace of a jailed VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JailNetns {
    /// A new network namespace with no connectivity.
    None,
    /// Stay in the host's network namespace.
    Host,
}

/// The environment variable that unlocks `--tamper-staged`.
pub const TAMPER_ENV: &str = "CVM_ALLOW_TAMPER_FOR_TESTS";

fn parse_cid(s: &str) -> Result<u64, String> {
    let cid: u64 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    // 0, 1 and 2 are the hypervisor, local and host CIDs; u32::MAX is VMADDR_CID_ANY.
    if cid < 3 || cid >= u64::from(u32::MAX) {
        return Err(format!(
            "guest CID {cid} is reserved (use 3..{})",
            u32::MAX - 1
        ));
    }
    Ok(cid)
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
    /// A launch input file could not be used.
    #[error("cannot use {0}: {1}")]
    Input(PathBuf, String),
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
    /// The kernel, initrd or command line cannot be delivered.
    #[error("cannot deliver the kernel")]
    Boot(#[from] BootError),
    /// The plain guest's kernel hashes table could not be built.
    #[error("cannot build the kernel hashes table for the firmware")]
    Hashes(#[source] measured_boot::snp::SnpPlanError),
    /// The firmware image is unusable.
    #[error("invalid firmware")]
    FirmwareImage(#[from] measured_boot::FirmwareError),
    /// The attestation relay is misconfigured.
    #[error("invalid --verifier")]
    Relay(#[from] RelayError),
    /// The VM's cgroup could not be set up.
    #[error("cannot apply the resource limits")]
    Cgroup(#[from] CgroupError),
    /// The jail could not be entered.
    #[error("cannot enter the jail")]
    Jail(#[from] JailError),
    /// The control API socket could not be served.
    #[error("cannot serve the control API")]
    Api(#[from] host_vmm::api::ApiError),
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
        VcpuStop::GuestPanic => (1, "guest panicked (pvpanic)".into()),
        VcpuStop::ShutdownRequested => (0, "shutdown requested through the control API".into()),
        VcpuStop::RunError(e) => (1, format!("KVM_RUN failed: {e}")),
        VcpuStop::UnexpectedExit(e) => (1, format!("unexpected VM exit: {e}")),
    }
}

fn snp_config(a: &Args, boot: Option<&BootInputs>) -> Result<SnpPlanConfig, LaunchError> {
    let vcpu_sig = measured_boot::snp::cpu::sig_by_name(&a.vcpu_type)
        .ok_or_else(|| LaunchError::Usage(format!("unknown vCPU type `{}`", a.vcpu_type)))?;
    Ok(SnpPlanConfig {
        vcpus: a.vcpus,
        vcpu_sig,
        guest_features: 1,
        vmm_type: measured_boot::snp::vmsa::VmmType::Qemu,
        hashes: boot.map(BootInputs::sev_hashes),
    })
}

/// The pages of an SNP plan the VMM itself must place in guest memory: measured
/// (NORMAL) pages other than the firmware, i.e. the kernel hashes table page.
pub fn plan_pages(plan: &SnpLaunchPlan) -> Vec<(u64, Vec<u8>)> {
    plan.updates()
        .filter(|u| u.page_type == PageType::Normal && u.gpa != plan.firmware().gpa())
        .filter_map(|u| match u.contents {
            UpdateContents::Data(d) => Some((u.gpa, d.to_vec())),
            UpdateContents::Absent { .. } => None,
        })
        .collect()
}

/// Reads --id-block and --id-auth, checking their sizes.
fn id_block(a: &Args) -> Result<Option<host_vmm::tee::launch::IdBlock>, LaunchError> {
    let (Some(b), Some(au)) = (&a.id_block, &a.id_auth) else {
        return Ok(None);
    };
    Ok(Some((read_exact_size(b)?, read_exact_size(au)?)))
}

/// Reads a file that must be exactly `N` bytes.
fn read_exact_size<const N: usize>(p: &PathBuf) -> Result<Box<[u8; N]>, LaunchError> {
    let v = std::fs::read(p).map_err(|e| LaunchError::Input(p.clone(), e.to_string()))?;
    let n = v.len();
    v.into_boxed_slice()
        .try_into()
        .map_err(|_| LaunchError::Input(p.clone(), format!("{n} bytes; it must be exactly {N}")))
}

fn vsock_config(a: &Args) -> Result<Option<VsockConfig>, LaunchError> {
    let relay = a
        .verifier
        .as_deref()
        .map(|url| RelayConfig::new(url, a.verifier_ca.as_deref()))
        .transpose()?;
    if a.vsock_uds.is_none() && relay.is_none() {
        return Ok(None);
    }
    Ok(Some(VsockConfig {
        guest_cid: a.vsock_cid,
        uds: a.vsock_uds.clone(),
        relay,
    }))
}

fn launch(a: &Args) -> Result<Outcome, LaunchError> {
    if a.tamper_staged.is_some() && std::env::var(TAMPER_ENV).as_deref() != Ok("1") {
        return Err(LaunchError::Usage(format!(
            "--tamper-staged is test equipment; it is refused unless {TAMPER_ENV}=1"
        )));
    }
    let kvm = kvm_ioctls::Kvm::new().map_err(LaunchError::Kvm)?;
    tee::check(a.tee, &KvmCapabilities::query(&kvm))?;
    let (firmware, firmware_name) = match &a.firmware {
        Some(p) => (
            std::fs::read(p).map_err(|e| LaunchError::Firmware(p.clone(), e))?,
            p.display().to_string(),
        ),
        None => (
            guest_images::embedded()
                .map_err(|e| LaunchError::Usage(e.to_string()))?
                .to_vec(),
            "built-in".to_string(),
        ),
    };
    let boot = a
        .kernel
        .as_deref()
        .map(|k| BootInputs::read(k, a.initrd.as_deref(), a.cmdline.clone()))
        .transpose()?;
    let vsock = vsock_config(a)?;
    let platform = || {
        a.emulated_platform.clone().ok_or_else(|| {
            LaunchError::Usage(format!("--tee {} needs --emulated-platform DIR", a.tee))
        })
    };
    let mut preload = Vec::new();
    let mut rtmrs = None;
    let mut confidential = None;
    let only = |set: bool, flag: &str, tee: TeeKind| {
        if set && a.tee != tee {
            Err(LaunchError::Usage(format!(
                "{flag} is for --tee {tee} only"
            )))
        } else {
            Ok(())
        }
    };
    only(a.id_block.is_some(), "--id-block/--id-auth", TeeKind::Snp)?;
    only(a.snp_certs.is_some(), "--snp-certs", TeeKind::Snp)?;
    only(a.tdx_qgs.is_some(), "--tdx-qgs", TeeKind::Tdx)?;
    let (emulated_tee, measurement) = match a.tee {
        TeeKind::None => {
            // No TEE measures anything, but the firmware still checks the staged kernel
            // against the same hashes table, which the VMM writes where the SNP launch
            // would have put it.
            if let Some(b) = &boot {
                // The hashes page does not depend on the vCPUs; one VMSA keeps the plan
                // from requiring an AP reset block the firmware may not have.
                let config = SnpPlanConfig {
                    vcpus: 1,
                    ..snp_config(a, Some(b))?
                };
                let plan = SnpLaunchPlan::new(FirmwareImage::parse(firmware.clone())?, config)
                    .map_err(LaunchError::Hashes)?;
                preload = plan_pages(&plan);
            }
            (None, None)
        }
        TeeKind::Snp => {
            let plan = SnpLaunchPlan::new(
                FirmwareImage::parse(firmware.clone())?,
                snp_config(a, boot.as_ref())?,
            )
            .map_err(LaunchError::Hashes)?;
            preload = plan_pages(&plan);
            let digest = plan.launch_digest();
            confidential = Some(ConfidentialLaunch::Snp(Box::new(SnpLaunch {
                plan,
                policy: a.policy,
                host_data: padded::<32>(&a.host_data)?,
                id: id_block(a)?,
                sev: std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/sev")
                    .map_err(|e| LaunchError::Input("/dev/sev".into(), e.to_string()))?,
                certs: a
                    .snp_certs
                    .as_ref()
                    .map(|p| {
                        std::fs::read(p)
                            .map_err(|e| e.to_string())
                            .and_then(CertTable::parse)
                            .map_err(|e| LaunchError::Input(p.clone(), e))
                    })
                    .transpose()?,
            })));
            (None, Some(digest))
        }
        TeeKind::Tdx => {
            let plan = TdxLaunchPlan::new(
                FirmwareImage::parse(firmware.clone())?,
                boot.as_ref().map(BootInputs::direct_boot),
            )
            .map_err(|e| LaunchError::Usage(format!("cannot plan the TD launch: {e}")))?;
            let mrtd = plan.mrtd();
            rtmrs = Some(plan.rtmrs());
            confidential = Some(ConfidentialLaunch::Tdx(Box::new(TdxLaunch {
                plan,
                config: TdConfig {
                    mrconfigid: padded::<48>(&a.host_data)?,
                    ..TdConfig::default()
                },
                memory: a.memory,
                qgs: a.tdx_qgs.clone(),
            })));
            (None, Some(mrtd))
        }
        TeeKind::EmulatedSnp => {
            let plan = SnpLaunchPlan::new(
                FirmwareImage::parse(firmware.clone())?,
                snp_config(a, boot.as_ref())?,
            )
            .map_err(|e| LaunchError::Emulated(e.into()))?;
            preload = plan_pages(&plan);
            let (t, m) = EmulatedTee::launch_snp(
                &platform()?,
                &plan,
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
            let (t, m, r) = EmulatedTee::launch_tdx(
                &platform()?,
                firmware.clone(),
                config,
                boot.as_ref().map(BootInputs::direct_boot),
            )?;
            rtmrs = Some(r);
            (Some(t), Some(m))
        }
    };
    let summary = match a.tee {
        TeeKind::None => "no TEE: memory is not encrypted and nothing is measured",
        TeeKind::EmulatedSnp | TeeKind::EmulatedTdx => "INSECURE-EMULATED TEE: memory is not encrypted; evidence proves nothing about isolation",
        TeeKind::Snp | TeeKind::Tdx => "confidential",
    };
    let kernel_summary = match &boot {
        None => "none".to_string(),
        Some(b) => {
            let h = b.sev_hashes();
            format!(
                "kernel {} bytes sha256 {}, initrd {} bytes sha256 {}, cmdline sha256 {}",
                b.kernel.len(),
                hex::encode(h.kernel),
                b.initrd.as_ref().map_or(0, Vec::len),
                hex::encode(h.initrd),
                hex::encode(h.cmdline)
            )
        }
    };
    let rtmr_summary = rtmrs
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, v)| format!("rtmr{i}={}", hex::encode(v)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "n/a".into());
    let mut devices = String::from("serial(0x3f8), i8042(0x60), acpi-pm(0x600), pvpanic(0x505)");
    if let Some(v) = &vsock {
        devices.push_str(&format!(", virtio-vsock(cid {})", v.guest_cid));
    }
    tracing::info!(
        event = "launch",
        tee = %a.tee,
        measurement = measurement.map(hex::encode).unwrap_or_else(|| "none".into()),
        expected_rtmrs = %rtmr_summary,
        direct_boot = %kernel_summary,
        memory_mib = a.memory >> 20,
        vcpus = a.vcpus,
        firmware = %firmware_name,
        firmware_bytes = firmware.len(),
        devices = %devices,
        disks = a.disks.len(),
        "launching guest ({summary})"
    );
    if emulated_tee.is_some() {
        tracing::warn!("emulated TEE: for tests only; a verifier accepts this evidence only with the emulated trust anchor");
    }
    if let Some(t) = a.tamper_staged {
        tracing::warn!(item = ?t, "TEST EQUIPMENT: staging tampered boot data; the firmware must refuse it");
    }
    let limits = Limits {
        cpu_quota_percent: a.cpu_quota,
        memory_limit: a.memory_limit,
        cpus: a.cpus.clone(),
    };
    let mut cgroup = if limits.is_empty() {
        None
    } else {
        limits.validate(a.memory, &cgroup::online_cpus()?)?;
        let layout = cgroup::detect(&limits.controllers())?;
        let cg = VmCgroup::create(
            &layout,
            &std::process::id().to_string(),
            a.cgroup_parent.as_deref(),
            &limits,
        )?;
        cg.attach(std::process::id())?;
        tracing::info!(event = "cgroup", groups = ?cg.dirs().collect::<Vec<_>>(), cpu_quota = ?a.cpu_quota, memory_limit = ?a.memory_limit, cpus = ?a.cpus.as_ref().map(ToString::to_string), "resource limits applied");
        Some(cg)
    };
    let api = match &a.api_socket {
        Some(path) => Some(ApiConfig {
            listener: host_vmm::api::bind(path)?,
            measurement: serde_json::json!({
                "tee": a.tee.to_string(),
                "measurement": measurement.map(hex::encode),
                "insecure_emulated": matches!(a.tee, TeeKind::EmulatedSnp | TeeKind::EmulatedTdx),
            }),
        }),
        None => None,
    };
    // The forked VMM stays in the cgroup; the parent leaves it at once.
    let leave = || cgroup.as_ref().map_or((), VmCgroup::leave);
    let forked = if let Some(dir) = &a.jail {
        if a.verifier.is_some() && a.jail_netns == JailNetns::None {
            return Err(LaunchError::Usage(
                "--verifier needs the network, which --jail takes away; add --jail-netns host"
                    .into(),
            ));
        }
        let cfg = JailConfig {
            root: dir.clone(),
            uid: a.uid.unwrap_or(u32::MAX),
            gid: a.gid.unwrap_or(u32::MAX),
        };
        tracing::info!(event = "jail", root = %dir.display(), uid = cfg.uid, gid = cfg.gid, netns = ?a.jail_netns, "entering the jail");
        // SAFETY: no thread has been started yet (vmm::run starts them); the child
        // forgets the cgroup below.
        Some(unsafe { jail::enter(&cfg, a.jail_netns == JailNetns::None, leave) }?)
    } else if cgroup.is_some() || api.is_some() {
        // The VMM confined by seccomp cannot remove its cgroup or API socket when it
        // ends; an unconfined parent waits for it and does.
        // SAFETY: as above.
        Some(unsafe { jail::supervise(leave) }?)
    } else {
        None
    };
    match forked {
        Some(jail::Entered::Parent(status)) => {
            drop(cgroup);
            if let Some(path) = &a.api_socket {
                host_vmm::api::remove(path);
            }
            return Ok(Outcome::ChildExited(status));
        }
        // The VMM does not own the cgroup (a jailed one cannot even reach /sys): the
        // parent removes it.
        Some(jail::Entered::Jailed) => std::mem::forget(cgroup.take()),
        None => {}
    }
    let config = VmConfig {
        firmware,
        memory: a.memory,
        vcpus: a.vcpus,
        serial: a.serial.clone(),
        seccomp: a.seccomp,
        disks: a.disks.clone(),
        emulated_tee,
        tee: a.tee,
        boot,
        tamper: a.tamper_staged,
        preload,
        confidential,
        vsock,
        kvm: Some(kvm),
        api,
    };
    Ok(Outcome::Stopped(vmm::run(config)?))
}

/// How a launch ended.
#[derive(Debug)]
enum Outcome {
    /// The guest stopped.
    Stopped(VcpuStop),
    /// This is the parent of a jailed or cgroup-limited VMM, which exited with this
    /// status.
    ChildExited(i32),
}

/// Runs `cvm launch`.
pub fn run(a: Args) -> ExitCode {
    match launch(&a) {
        Ok(Outcome::ChildExited(status)) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
        Ok(Outcome::Stopped(why)) => {
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
    fn id_block_files_must_have_their_exact_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id");
        std::fs::write(&p, [7u8; 95]).unwrap();
        let e = read_exact_size::<96>(&p).unwrap_err().to_string();
        assert!(e.contains("95 bytes; it must be exactly 96"), "{e}");
        std::fs::write(&p, [7u8; 96]).unwrap();
        assert_eq!(*read_exact_size::<96>(&p).unwrap(), [7u8; 96]);
        assert!(read_exact_size::<96>(&dir.path().join("absent")).is_err());
    }

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
