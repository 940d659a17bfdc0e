//! `cvm launch`: start a guest and wait for it to stop.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use cli_support::units::parse_size;
use cli_support::{ExitClass, EXIT_FAILURE, EXIT_USAGE};
use host_vmm::boot::{BootError, BootInputs, Tamper};
use host_vmm::devices::virtio::vsock::{RelayConfig, RelayError, VsockConfig};
use host_vmm::isolation::cgroup::{self, CgroupError, CpuList, Limits, VmCgroup};
use host_vmm::isolation::jail::{self, JailConfig, JailError};
use host_vmm::seccomp::SeccompMode;
use host_vmm::tee::emulated::EmulatedLaunchError;
use host_vmm::tee::emulated_snp::EmulatedSnp;
use host_vmm::tee::emulated_tdx::EmulatedTdx;
use host_vmm::tee::kvm_snp::KvmSnpBackend;
use host_vmm::tee::kvm_tdx::KvmTdxBackend;
use host_vmm::tee::launch::{SnpLaunch, TdxLaunch};
use host_vmm::tee::none::NoTee;
use host_vmm::tee::services::CertTable;
use host_vmm::tee::tdx::TdConfig;
use host_vmm::tee::{self, KvmCapabilities, TeeBackend, TeeKind};
use host_vmm::vmm::{self, DiskConfig, SerialOutput, VmConfig};
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
    pub tee: TeeArg,
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
    pub seccomp: SeccompArg,
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
    pub tamper_staged: Option<TamperArg>,
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

/// `--tee`: the TEE to launch into (the CLI's names for [`TeeKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TeeArg {
    /// AMD SEV-SNP through KVM (Linux >= 6.11).
    Snp,
    /// Intel TDX through KVM (Linux >= 6.16).
    Tdx,
    /// Emulated SEV-SNP: a plain KVM VM whose launch plan goes to the emulated secure
    /// processor (test equipment; insecure).
    EmulatedSnp,
    /// Emulated TDX: a plain KVM VM whose launch plan goes to the emulated TDX module
    /// (test equipment; insecure).
    EmulatedTdx,
    /// No TEE: a plain, unencrypted guest, for development.
    None,
}

impl TeeArg {
    /// The library's TEE kind.
    pub fn kind(self) -> TeeKind {
        match self {
            TeeArg::Snp => TeeKind::Snp,
            TeeArg::Tdx => TeeKind::Tdx,
            TeeArg::EmulatedSnp => TeeKind::EmulatedSnp,
            TeeArg::EmulatedTdx => TeeKind::EmulatedTdx,
            TeeArg::None => TeeKind::None,
        }
    }
}

/// `--tamper-staged`: which staged item to corrupt (test equipment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TamperArg {
    /// Flip a bit of the last kernel byte.
    Kernel,
    /// Flip a bit of the last initrd byte.
    Initrd,
    /// Flip a bit of the first command-line byte.
    Cmdline,
}

impl From<TamperArg> for Tamper {
    fn from(t: TamperArg) -> Self {
        match t {
            TamperArg::Kernel => Tamper::Kernel,
            TamperArg::Initrd => Tamper::Initrd,
            TamperArg::Cmdline => Tamper::Cmdline,
        }
    }
}

/// `--seccomp`: whether the VMM installs its per-thread filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SeccompArg {
    /// Install the filters (default).
    #[default]
    On,
    /// No filters: for debugging only; the VMM warns loudly.
    Off,
}

impl From<SeccompArg> for SeccompMode {
    fn from(s: SeccompArg) -> Self {
        match s {
            SeccompArg::On => SeccompMode::On,
            SeccompArg::Off => SeccompMode::Off,
        }
    }
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

/// Why a `cvm launch` argument value is refused (clap reports it with exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// Not a number of the expected kind.
    #[error("`{0}` is not a valid {1}")]
    Number(String, &'static str),
    /// A reserved vsock CID.
    #[error("guest CID {0} is reserved (use 3..{max})", max = u32::MAX - 1)]
    ReservedCid(u64),
    /// An unknown `--disk` option.
    #[error("`{0}`: unknown disk option `{1}` (expected readonly)")]
    DiskOption(String, String),
    /// `--disk ""`.
    #[error("empty disk path")]
    EmptyDiskPath,
    /// An unknown `--serial` destination.
    #[error("`{0}`: expected stdout, file:PATH or none")]
    Serial(String),
}

fn parse_cid(s: &str) -> Result<u64, ArgError> {
    let cid: u64 = s.parse().map_err(|_| ArgError::Number(s.into(), "CID"))?;
    // 0, 1 and 2 are the hypervisor, local and host CIDs; u32::MAX is VMADDR_CID_ANY.
    if cid < 3 || cid >= u64::from(u32::MAX) {
        return Err(ArgError::ReservedCid(cid));
    }
    Ok(cid)
}

fn parse_hex_u64(s: &str) -> Result<u64, ArgError> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| ArgError::Number(s.into(), "hex number"))
}

/// Bytes given in hex on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

fn parse_hex_bytes(s: &str) -> Result<HexBytes, ArgError> {
    hex::decode(s.trim_start_matches("0x"))
        .map(HexBytes)
        .map_err(|_| ArgError::Number(s.into(), "hex byte string"))
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

fn parse_disk(s: &str) -> Result<DiskConfig, ArgError> {
    let (path, read_only) = match s.rsplit_once(',') {
        Some((p, "readonly")) | Some((p, "ro")) => (p, true),
        Some((_, opt)) => return Err(ArgError::DiskOption(s.into(), opt.into())),
        None => (s, false),
    };
    if path.is_empty() {
        return Err(ArgError::EmptyDiskPath);
    }
    Ok(DiskConfig {
        path: path.into(),
        read_only,
    })
}

fn parse_serial(s: &str) -> Result<SerialOutput, ArgError> {
    match s {
        "stdout" => Ok(SerialOutput::Stdout),
        "none" => Ok(SerialOutput::None),
        _ => s
            .strip_prefix("file:")
            .filter(|p| !p.is_empty())
            .map(|p| SerialOutput::File(p.into()))
            .ok_or_else(|| ArgError::Serial(s.into())),
    }
}

/// Why `cvm launch` refused or failed before the guest ran.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The firmware could not be read.
    #[error("cannot read firmware {0}")]
    Firmware(PathBuf, #[source] std::io::Error),
    /// This cvm has no built-in firmware.
    #[error("no --firmware given")]
    EmbeddedFirmware(#[source] guest_images::FirmwareError),
    /// The host cannot provide the TEE.
    #[error("launch refused")]
    Unavailable(#[from] tee::Unavailable),
    /// A launch input file could not be read.
    #[error("cannot read {0}")]
    Input(PathBuf, #[source] std::io::Error),
    /// A launch input file has the wrong size.
    #[error("cannot use {path}: {got} bytes; it must be exactly {want}")]
    WrongSize {
        /// The file.
        path: PathBuf,
        /// Its size.
        got: usize,
        /// The size it must have.
        want: usize,
    },
    /// The --snp-certs file is not a certificate table.
    #[error("cannot use {0}")]
    CertTable(PathBuf, #[source] host_vmm::tee::services::CertTableError),
    /// /dev/sev could not be opened.
    #[error("cannot open /dev/sev")]
    Sev(#[source] std::io::Error),
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
    /// The SEV-SNP launch plan could not be built.
    #[error("cannot plan the SEV-SNP launch")]
    SnpPlan(#[source] measured_boot::snp::SnpPlanError),
    /// The plain guest's kernel hashes table could not be built.
    #[error("cannot build the kernel hashes table for the firmware")]
    Hashes(#[source] measured_boot::snp::SnpPlanError),
    /// The TD launch plan could not be built.
    #[error("cannot plan the TD launch")]
    TdxPlan(#[source] measured_boot::tdx::TdxPlanError),
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

impl ExitClass for LaunchError {
    /// The exit status of `cvm launch` for this error: 2 for usage and unreadable or
    /// invalid input, 1 for a refusal or a failed run.
    fn exit_code(&self) -> u8 {
        match self {
            LaunchError::Usage(_)
            | LaunchError::Firmware(..)
            | LaunchError::EmbeddedFirmware(_)
            | LaunchError::Input(..)
            | LaunchError::WrongSize { .. }
            | LaunchError::CertTable(..)
            | LaunchError::Boot(_)
            | LaunchError::SnpPlan(_)
            | LaunchError::Hashes(_)
            | LaunchError::TdxPlan(_)
            | LaunchError::FirmwareImage(_)
            | LaunchError::Relay(_)
            | LaunchError::Emulated(
                EmulatedLaunchError::Platform(..)
                | EmulatedLaunchError::Firmware(_)
                | EmulatedLaunchError::SnpPlan(_)
                | EmulatedLaunchError::TdxPlan(_),
            ) => EXIT_USAGE,
            LaunchError::Vmm(e) if vmm_input_error(e) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
}

/// Whether a VMM error is about the operator's input (a size, a count, a file) rather
/// than a failure of the run: those exit 2 like the flag checks.
fn vmm_input_error(e: &vmm::VmmError) -> bool {
    use host_vmm::devices::virtio::block::BlockError;
    use host_vmm::vstate::memory::MemoryError;
    use host_vmm::vstate::vm::VmError;
    matches!(
        e,
        vmm::VmmError::VcpuCount { .. }
            | vmm::VmmError::TooManyDevices(_)
            | vmm::VmmError::SerialFile(..)
            | vmm::VmmError::Disk(BlockError::Open(..) | BlockError::Size(..))
            | vmm::VmmError::Vm(VmError::Memory(
                MemoryError::BadSize(_) | MemoryError::BadFirmware(_)
            ))
    )
}

/// Maps how the guest stopped to the process exit status: 0 only for a clean power-off
/// (or a shutdown asked through the control API), 1 otherwise, with the reason on
/// stderr. A reset request is a failure: a `cvm` VM is never rebooted, and a reset is
/// what Linux does after a panic with `panic=-1` (or a triple fault), so reporting it
/// as success would hide a crashed guest. A guest that means to stop powers off (ACPI
/// S5).
pub fn exit_status(why: &VcpuStop) -> (u8, String) {
    match why {
        VcpuStop::PowerOff => (0, "guest powered off".into()),
        VcpuStop::Reset => (1, "guest requested a reset (Linux resets after a panic with panic=-1); a VM is never rebooted, so the VM stopped and this is a failure: a guest that wants to stop powers off".into()),
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
    let v = std::fs::read(p).map_err(|e| LaunchError::Input(p.clone(), e))?;
    let n = v.len();
    v.into_boxed_slice()
        .try_into()
        .map_err(|_| LaunchError::WrongSize {
            path: p.clone(),
            got: n,
            want: N,
        })
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

/// Refuses flag combinations no launch can honour, before anything is opened.
fn check_flags(a: &Args) -> Result<(), LaunchError> {
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
    if matches!(a.tee, TeeArg::EmulatedSnp | TeeArg::EmulatedTdx) && a.emulated_platform.is_none() {
        return Err(LaunchError::Usage(format!(
            "--tee {} needs --emulated-platform DIR",
            a.tee.kind()
        )));
    }
    if a.jail.is_some() && a.verifier.is_some() && a.jail_netns == JailNetns::None {
        return Err(LaunchError::Usage(
            "--verifier needs the network, which --jail takes away; add --jail-netns host".into(),
        ));
    }
    Ok(())
}

/// The files and settings a launch reads.
#[derive(Debug)]
struct Inputs {
    firmware: Vec<u8>,
    firmware_name: String,
    boot: Option<BootInputs>,
    vsock: Option<VsockConfig>,
}

/// Reads the firmware, the kernel/initrd/command line and the vsock settings.
fn load_inputs(a: &Args) -> Result<Inputs, LaunchError> {
    let (firmware, firmware_name) = match &a.firmware {
        Some(p) => (
            std::fs::read(p).map_err(|e| LaunchError::Firmware(p.clone(), e))?,
            p.display().to_string(),
        ),
        None => (
            guest_images::embedded()
                .map_err(LaunchError::EmbeddedFirmware)?
                .to_vec(),
            "built-in".to_string(),
        ),
    };
    let boot = a
        .kernel
        .as_deref()
        .map(|k| BootInputs::read(k, a.initrd.as_deref(), a.cmdline.clone()))
        .transpose()?;
    Ok(Inputs {
        firmware,
        firmware_name,
        boot,
        vsock: vsock_config(a)?,
    })
}

/// The backend factory: the TEE backend `--tee` asks for, with its launch plan.
fn build_backend(a: &Args, inputs: &Inputs) -> Result<Arc<dyn TeeBackend>, LaunchError> {
    let firmware = || FirmwareImage::parse(inputs.firmware.clone());
    let boot = inputs.boot.as_ref();
    let platform = || {
        a.emulated_platform.clone().ok_or_else(|| {
            LaunchError::Usage(format!(
                "--tee {} needs --emulated-platform DIR",
                a.tee.kind()
            ))
        })
    };
    Ok(match a.tee {
        TeeArg::None => {
            // No TEE measures anything, but the firmware still checks the staged kernel
            // against the same hashes table, which the VMM writes where the SNP launch
            // would have put it. The hashes page does not depend on the vCPUs; one VMSA
            // keeps the plan from requiring an AP reset block the firmware may not have.
            let preload = match boot {
                Some(b) => {
                    let config = SnpPlanConfig {
                        vcpus: 1,
                        ..snp_config(a, Some(b))?
                    };
                    let plan =
                        SnpLaunchPlan::new(firmware()?, config).map_err(LaunchError::Hashes)?;
                    plan_pages(&plan)
                }
                None => Vec::new(),
            };
            Arc::new(NoTee::new(preload))
        }
        TeeArg::Snp => {
            let plan = SnpLaunchPlan::new(firmware()?, snp_config(a, boot)?)
                .map_err(LaunchError::SnpPlan)?;
            let preload = plan_pages(&plan);
            let launch = SnpLaunch {
                plan,
                policy: a.policy,
                host_data: padded::<32>(&a.host_data)?,
                id: id_block(a)?,
                sev: std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/sev")
                    .map_err(LaunchError::Sev)?,
                certs: a.snp_certs.as_ref().map(cert_table).transpose()?,
            };
            Arc::new(KvmSnpBackend::new(launch, preload))
        }
        TeeArg::Tdx => {
            let plan = TdxLaunchPlan::new(firmware()?, boot.map(BootInputs::direct_boot))
                .map_err(LaunchError::TdxPlan)?;
            Arc::new(KvmTdxBackend::new(TdxLaunch {
                plan,
                config: TdConfig {
                    mrconfigid: padded::<48>(&a.host_data)?,
                    ..TdConfig::default()
                },
                memory: a.memory,
                qgs: a.tdx_qgs.clone(),
            }))
        }
        TeeArg::EmulatedSnp => {
            let plan = SnpLaunchPlan::new(firmware()?, snp_config(a, boot)?)
                .map_err(LaunchError::SnpPlan)?;
            let preload = plan_pages(&plan);
            let host_data = padded::<32>(&a.host_data)?;
            Arc::new(EmulatedSnp::launch(
                &platform()?,
                &plan,
                a.policy,
                host_data,
                preload,
            )?)
        }
        TeeArg::EmulatedTdx => {
            let config = attestation::tdx::emulated::TdConfig {
                mr_config_id: padded::<48>(&a.host_data)?,
                ..Default::default()
            };
            Arc::new(EmulatedTdx::launch(
                &platform()?,
                inputs.firmware.clone(),
                config,
                boot.map(BootInputs::direct_boot),
            )?)
        }
    })
}

/// Reads and checks the --snp-certs certificate table.
fn cert_table(p: &PathBuf) -> Result<CertTable, LaunchError> {
    let bytes = std::fs::read(p).map_err(|e| LaunchError::Input(p.clone(), e))?;
    CertTable::parse(bytes).map_err(|e| LaunchError::CertTable(p.clone(), e))
}

/// The structured `launch` log line: what is launched and what it should measure.
fn log_launch(a: &Args, inputs: &Inputs, backend: &dyn TeeBackend) {
    let m = backend.measurement();
    let summary = match a.tee {
        TeeArg::None => "no TEE: memory is not encrypted and nothing is measured",
        TeeArg::EmulatedSnp | TeeArg::EmulatedTdx => "INSECURE-EMULATED TEE: memory is not encrypted; evidence proves nothing about isolation",
        TeeArg::Snp | TeeArg::Tdx => "confidential",
    };
    let kernel_summary = match &inputs.boot {
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
    let mut devices = String::from("serial(0x3f8), i8042(0x60), acpi-pm(0x600), pvpanic(0x505)");
    if let Some(v) = &inputs.vsock {
        devices.push_str(&format!(", virtio-vsock(cid {})", v.guest_cid));
    }
    tracing::info!(
        event = "launch",
        tee = %m.tee,
        measurement = %m.digest_hex(),
        expected_rtmrs = %m.rtmrs_summary(),
        direct_boot = %kernel_summary,
        memory_mib = a.memory >> 20,
        vcpus = a.vcpus,
        firmware = %inputs.firmware_name,
        firmware_bytes = inputs.firmware.len(),
        devices = %devices,
        disks = a.disks.len(),
        "launching guest ({summary})"
    );
    if m.insecure_emulated() {
        tracing::warn!("emulated TEE: for tests only; a verifier accepts this evidence only with the emulated trust anchor");
    }
    if let Some(t) = a.tamper_staged {
        tracing::warn!(item = ?t, "TEST EQUIPMENT: staging tampered boot data; the firmware must refuse it");
    }
}

/// Creates and joins the VM's cgroup when limits are given.
fn apply_limits(a: &Args) -> Result<Option<VmCgroup>, LaunchError> {
    let limits = Limits {
        cpu_quota_percent: a.cpu_quota,
        memory_limit: a.memory_limit,
        cpus: a.cpus.clone(),
    };
    if limits.is_empty() {
        return Ok(None);
    }
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
    Ok(Some(cg))
}

/// Enters the jail (or forks a supervising parent when only a cgroup or an API socket
/// is used).
/// Returns the child's exit status in the parent, `None` in the VMM.
fn confine(a: &Args, mut cgroup: Option<VmCgroup>) -> Result<Option<i32>, LaunchError> {
    // The forked VMM stays in the cgroup; the parent leaves it at once.
    let leave = || cgroup.as_ref().map_or((), VmCgroup::leave);
    let forked = if let Some(dir) = &a.jail {
        let cfg = JailConfig {
            root: dir.clone(),
            uid: a.uid.unwrap_or(u32::MAX),
            gid: a.gid.unwrap_or(u32::MAX),
        };
        tracing::info!(event = "jail", root = %dir.display(), uid = cfg.uid, gid = cfg.gid, netns = ?a.jail_netns, "entering the jail");
        // SAFETY: no thread has been started yet (vmm::run starts them); the child
        // forgets the cgroup below.
        Some(unsafe { jail::enter(&cfg, a.jail_netns == JailNetns::None, leave) }?)
    } else if cgroup.is_some() || a.api_socket.is_some() {
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
            Ok(Some(status))
        }
        // The VMM does not own the cgroup (a jailed one cannot even reach /sys): the
        // parent removes it.
        Some(jail::Entered::Jailed) => {
            std::mem::forget(cgroup.take());
            Ok(None)
        }
        // No fork means no cgroup either (a cgroup always gets a supervisor).
        None => Ok(None),
    }
}

fn launch(a: &Args) -> Result<Outcome, LaunchError> {
    check_flags(a)?;
    // Unreadable input is a usage error (exit 2) on any host, so it is found before
    // the host is asked for the TEE.
    let inputs = load_inputs(a)?;
    let kvm = kvm_ioctls::Kvm::new().map_err(LaunchError::Kvm)?;
    tee::check(a.tee.kind(), &KvmCapabilities::query(&kvm))?;
    let backend = build_backend(a, &inputs)?;
    log_launch(a, &inputs, backend.as_ref());
    let cgroup = apply_limits(a)?;
    let api = a
        .api_socket
        .as_deref()
        .map(host_vmm::api::bind)
        .transpose()?;
    if let Some(status) = confine(a, cgroup)? {
        return Ok(Outcome::ChildExited(status));
    }
    let config = VmConfig {
        firmware: inputs.firmware,
        memory: a.memory,
        vcpus: a.vcpus,
        serial: a.serial.clone(),
        seccomp: a.seccomp.into(),
        disks: a.disks.clone(),
        tee: backend,
        boot: inputs.boot,
        tamper: a.tamper_staged.map(Tamper::from),
        vsock: inputs.vsock,
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
        Err(e) => super::fail(&e, e.exit_code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(argv: &[&str]) -> Args {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("launch").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn the_tee_flag_keeps_its_names() {
        for (name, kind) in [
            ("snp", TeeKind::Snp),
            ("tdx", TeeKind::Tdx),
            ("emulated-snp", TeeKind::EmulatedSnp),
            ("emulated-tdx", TeeKind::EmulatedTdx),
            ("none", TeeKind::None),
        ] {
            let a = args(&["--tee", name]);
            assert_eq!(a.tee.kind(), kind);
            assert_eq!(kind.to_string(), name, "Display and the flag agree");
        }
    }

    #[test]
    fn the_seccomp_flag_keeps_its_names_and_maps_to_the_library_mode() {
        assert_eq!(args(&["--tee", "none"]).seccomp, SeccompArg::On);
        for (name, mode) in [("on", SeccompMode::On), ("off", SeccompMode::Off)] {
            let a = args(&["--tee", "none", "--seccomp", name]);
            assert_eq!(SeccompMode::from(a.seccomp), mode, "{name}");
        }
    }

    #[test]
    fn memory_sizes_use_the_shared_parser() {
        let a = args(&["--tee", "none", "--memory", "1GiB", "--memory-limit", "2 G"]);
        assert_eq!(a.memory, 1 << 30);
        assert_eq!(a.memory_limit, Some(2 << 30));
        assert_eq!(args(&["--tee", "none"]).memory, 512 << 20, "the default");
    }

    #[test]
    fn usage_and_bad_input_exit_2_refusals_exit_1() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("id-block");
        std::fs::write(&short, [0u8; 95]).unwrap();
        let auth = dir.path().join("id-auth");
        std::fs::write(&auth, [0u8; 4096]).unwrap();
        let missing = dir.path().join("absent");
        let m = missing.to_str().unwrap();
        // Flag checks: nothing is opened yet.
        for (argv, what) in [
            (vec!["--tee", "emulated-snp"], "needs --emulated-platform"),
            (vec!["--tee", "emulated-tdx"], "needs --emulated-platform"),
            (
                vec!["--tee", "none", "--tdx-qgs", "/q"],
                "--tdx-qgs is for --tee tdx",
            ),
            (
                vec!["--tee", "tdx", "--snp-certs", "/c"],
                "--snp-certs is for --tee snp",
            ),
            (
                vec![
                    "--tee",
                    "none",
                    "--jail",
                    "/j",
                    "--uid",
                    "1",
                    "--gid",
                    "1",
                    "--verifier",
                    "http://127.0.0.1:1",
                ],
                "--jail-netns host",
            ),
        ] {
            let e = check_flags(&args(&argv)).unwrap_err();
            assert!(e.to_string().contains(what), "{argv:?}: {e}");
            assert_eq!(e.exit_code(), 2, "{argv:?}");
        }
        // Unreadable or invalid input.
        let e = load_inputs(&args(&["--tee", "none", "--firmware", m])).unwrap_err();
        assert!(matches!(e, LaunchError::Firmware(..)), "{e:?}");
        assert_eq!(e.exit_code(), 2);
        let fw = dir.path().join("fw");
        std::fs::write(&fw, [0xF4u8; 4096]).unwrap();
        let f = fw.to_str().unwrap();
        let e = load_inputs(&args(&["--tee", "none", "--firmware", f, "--kernel", m])).unwrap_err();
        assert!(matches!(e, LaunchError::Boot(_)), "{e:?}");
        assert_eq!(e.exit_code(), 2);
        let a = args(&[
            "--tee",
            "snp",
            "--id-block",
            short.to_str().unwrap(),
            "--id-auth",
            auth.to_str().unwrap(),
        ]);
        let e = id_block(&a).unwrap_err();
        assert!(
            matches!(
                e,
                LaunchError::WrongSize {
                    got: 95,
                    want: 96,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.exit_code(), 2);
        // A firmware that is not a firmware image cannot be planned.
        let a = args(&[
            "--tee",
            "emulated-snp",
            "--firmware",
            f,
            "--emulated-platform",
            m,
        ]);
        let e = build_backend(&a, &load_inputs(&a).unwrap()).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e:?}");
        // The source chain survives.
        let e = LaunchError::EmbeddedFirmware(guest_images::FirmwareError::NotEmbedded);
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.exit_code(), 2);
        // Refusals.
        let e = LaunchError::Unavailable(tee::Unavailable {
            tee: TeeKind::Snp,
            reasons: vec!["no".into()],
        });
        assert_eq!(e.exit_code(), 1);
        if std::path::Path::new("/dev/kvm").exists() && !std::path::Path::new("/dev/sev").exists() {
            let e = launch(&args(&["--tee", "snp", "--firmware", f])).unwrap_err();
            assert!(matches!(e, LaunchError::Unavailable(_)), "{e:?}");
            assert_eq!(e.exit_code(), 1);
        }
    }

    #[test]
    fn an_emulated_platform_that_cannot_be_opened_is_bad_input() {
        let embedded = guest_images::embedded();
        test_kit::require!(embedded.is_ok(), "this build has no built-in firmware");
        let fw = embedded.expect("checked above");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fw");
        std::fs::write(&p, fw).unwrap();
        let absent = dir.path().join("absent");
        for tee in ["emulated-snp", "emulated-tdx"] {
            let a = args(&[
                "--tee",
                tee,
                "--firmware",
                p.to_str().unwrap(),
                "--emulated-platform",
                absent.to_str().unwrap(),
            ]);
            let e = build_backend(&a, &load_inputs(&a).unwrap()).unwrap_err();
            assert!(
                matches!(e, LaunchError::Emulated(EmulatedLaunchError::Platform(..))),
                "{e:?}"
            );
            assert_eq!(e.exit_code(), 2, "{tee}");
        }
        // The factory builds the backend --tee names.
        let a = args(&["--tee", "none", "--firmware", p.to_str().unwrap()]);
        let b = build_backend(&a, &load_inputs(&a).unwrap()).unwrap();
        assert_eq!(b.kind(), TeeKind::None);
    }

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
