//! `cvm launch`: start a guest and wait for it to stop.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use cli_support::units::parse_size;

use super::description::{parse_memory, parse_vcpus, DescriptionError, Loaded, TeeName};
use cli_support::{ExitClass, EXIT_FAILURE, EXIT_USAGE};
use host_vmm::boot::{BootError, BootInputs, Tamper};
use host_vmm::devices::virtio::vsock::{RelayConfig, RelayError, VsockConfig};
use host_vmm::isolation::cgroup::{self, CgroupError, CpuList, Limits, VmCgroup};
use host_vmm::isolation::jail::{self, JailConfig, JailError};
use host_vmm::seccomp::SeccompMode;
use host_vmm::tee::backend::ExpectedMeasurement;
use host_vmm::tee::emulated::EmulatedLaunchError;
use host_vmm::tee::emulated_snp::EmulatedSnp;
use host_vmm::tee::emulated_tdx::EmulatedTdx;
use host_vmm::tee::kvm_snp::KvmSnpBackend;
use host_vmm::tee::kvm_tdx::KvmTdxBackend;
use host_vmm::tee::launch::{SnpLaunch, TdxLaunch};
use host_vmm::tee::none::NoTee;
use host_vmm::tee::services::CertTable;
use host_vmm::tee::tdx::TdConfig;
use host_vmm::tee::trap::TeeTrap;
use host_vmm::tee::{self, KvmCapabilities, TeeBackend, TeeKind};
use host_vmm::vmm::{self, DiskConfig, SerialOutput, VmConfig};
use host_vmm::vstate::cc_memory::PageSize;
use host_vmm::vstate::vcpu::VcpuStop;
use measured_boot::snp::{PageType, SnpLaunchPlan, SnpPlanConfig, UpdateContents};
use measured_boot::tdx::TdxLaunchPlan;
use measured_boot::FirmwareImage;

mod checks;
pub use checks::check_firmware;
use checks::{check_flags, check_host_paths, check_measured_inputs};

/// `cvm launch`.
///
/// Every input can come from a VM description file (`--config FILE`, schema in
/// docs/vm-description.md); a flag overrides the file's value and the override is logged.
/// All inputs are checked before the "launching guest" line; the expected measurement is
/// printed before the guest starts.
#[derive(Debug, Default, clap::Args)]
#[command(after_long_help = DESCRIPTION_HELP)]
pub struct Args {
    /// VM description file (TOML, `version = 1`); the same file `cvm measure --config`
    /// reads. Flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The TEE to launch into (required here or in the file). A TEE this host cannot
    /// provide is refused, never downgraded.
    #[arg(long, value_enum)]
    pub tee: Option<TeeArg>,
    /// Firmware image, mapped to end at 4 GiB (default: the project firmware built
    /// into cvm; `cvm firmware --out FILE` writes it).
    #[arg(long, visible_alias = "ovmf", value_name = "PATH")]
    pub firmware: Option<PathBuf>,
    /// Guest memory, a size with a unit: 512M, 2G (default 512M; 16M to 1T, a multiple
    /// of 2M).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Number of vCPUs (default 1; at most 255).
    #[arg(long, value_name = "N", value_parser = parse_vcpus)]
    pub vcpus: Option<u32>,
    /// Serial console: stdout (default), file:PATH or none.
    #[arg(long, value_parser = parse_serial)]
    pub serial: Option<SerialOutput>,
    /// A virtio-blk disk: PATH or PATH,readonly (repeatable; replaces the file's disks).
    #[arg(long = "disk", value_name = "PATH[,readonly]", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,
    /// A virtio-net interface on a tap (repeatable; replaces the file's `[[net]]` tables):
    /// tap=NAME (existing) or create=NAME (cvm creates and removes it), then optional
    /// mac=, ip=ADDR/PREFIX, rx-bps=, tx-bps= (bits/s), rx-pps=, tx-pps= (e.g. 100M, 20k).
    #[arg(long = "net", value_name = "tap=NAME|create=NAME[,…]", value_parser = super::net::parse_net)]
    pub net: Vec<super::net::NetArg>,
    /// Run the --net / `[[net]]` interfaces WITHOUT a network policy (no filtering, no
    /// anti-spoofing; for debugging only). Without it, an interface needs a
    /// `[network_policy]` in the description (default deny), or the launch is refused.
    #[arg(long)]
    pub net_unfiltered: bool,
    /// Directory of the emulated platform (`cvm emulated init`), for emulated TEEs.
    #[arg(long, value_name = "DIR")]
    pub emulated_platform: Option<PathBuf>,
    /// SEV-SNP guest policy (hex; default 0x30000).
    #[arg(long, value_name = "HEX", value_parser = parse_hex_u64)]
    pub policy: Option<u64>,
    /// Host data: SNP HOST_DATA (up to 32 bytes) or TDX MRCONFIGID (up to 48), hex.
    #[arg(long, value_name = "HEX", value_parser = parse_hex_bytes)]
    pub host_data: Option<HexBytes>,
    /// vCPU model for the SNP VMSAs (as `cvm measure snp --vcpu-type`; default EPYC-v4).
    #[arg(long, value_name = "CPUTYPE")]
    pub vcpu_type: Option<String>,
    /// Per-thread seccomp filters; `off` only for debugging.
    #[arg(long, value_enum, default_value = "on")]
    pub seccomp: SeccompArg,
    /// Emulated TEEs only: how the guest traps PVALIDATE/TDCALL to the VMM. `auto`
    /// probes this host's KVM once (literal instructions where KVM exits on them, the
    /// `out 0xE0/0xE1` emulator trap where they raise #UD, as on a standard KVM);
    /// `instruction` / `port` force one (tests). Default `auto`; refused (exit 2) with
    /// any other `--tee`.
    #[arg(long, value_enum)]
    pub tee_trap: Option<TeeTrapArg>,
    /// Emulated TDX (tests and benchmarks): the page size the emulated host backs private
    /// memory with. `2m` (default) models huge-page private memory, so the firmware
    /// accepts RAM 2 MiB at a time; `4k` models Linux 6.16's guest_memfd, where a 2 MiB
    /// accept is a size mismatch and the guest falls back to 4 KiB (one VM exit per page
    /// under emulation).
    #[arg(long, value_enum, default_value = "2m", hide = true)]
    pub emulated_private_pages: PrivatePagesArg,
    /// Kernel (bzImage) to boot: staged for the firmware, which checks it against the
    /// measured hashes (SNP, plain) or extends it into RTMR1 (TDX). The built-in firmware
    /// boots nothing else, so it needs one.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initrd (needs a kernel).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (needs a kernel); measured with its trailing NUL.
    #[arg(
        long,
        visible_alias = "append",
        value_name = "STR",
        allow_hyphen_values = true
    )]
    pub cmdline: Option<String>,
    /// TEST EQUIPMENT: stage a corrupted copy of one item (the measurement still
    /// describes the original), as a malicious host would. Refused unless
    /// CVM_ALLOW_TAMPER_FOR_TESTS=1.
    #[arg(long, value_enum, hide = true)]
    pub tamper_staged: Option<TamperArg>,
    /// Guest CID of the virtio-vsock device (default 3).
    #[arg(long, value_name = "CID", value_parser = parse_cid)]
    pub vsock_cid: Option<u64>,
    /// Hybrid vsock: guest connections to host port P reach the Unix socket PATH_P, and
    /// host clients connect to PATH and send `CONNECT <port>\n`.
    #[arg(long, value_name = "PATH")]
    pub vsock_uds: Option<PathBuf>,
    /// Attestation relay: guest connections to host port 50000 are relayed to the
    /// verifier at this URL (https://…, or http:// to a loopback address only).
    #[arg(long, visible_alias = "verifier", value_name = "URL")]
    pub url: Option<String>,
    /// CA certificate(s) (PEM) trusted for an https --url; required for https.
    #[arg(long, visible_alias = "verifier-ca", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// SEV-SNP ID block (96 bytes), given to SNP_LAUNCH_FINISH (with --id-auth).
    #[arg(long, value_name = "FILE")]
    pub id_block: Option<PathBuf>,
    /// SEV-SNP ID authentication structure (4096 bytes) (with --id-block).
    #[arg(long, value_name = "FILE")]
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
    /// --url, whose relay connects to the verifier).
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
    /// `text`: the expected measurement on standard error; `json`: it is also printed as
    /// one JSON line on standard output (the JSON `cvm measure --output json` prints)
    /// before the guest starts, and the outcome as a second line when it stops.
    #[arg(long, visible_alias = "output-format", value_enum, default_value_t)]
    pub output: cli_support::Output,
}

/// The schema summary shown by `cvm launch --help`.
pub const DESCRIPTION_HELP: &str = "\
VM description file (--config FILE; full schema: docs/vm-description.md):

  version = 1                      # required
  tee = \"emulated-snp\"             # snp | tdx | emulated-snp | emulated-tdx | none
  firmware = \"built-in\"            # or a path; relative paths are relative to the file
  memory = \"512M\"
  vcpus = 1
  emulated_platform = \"platform\"   # emulated TEEs
  [boot]        kernel, initrd, cmdline
  [snp]         policy = \"0x30000\", cpu = \"EPYC-v4\", host_data, id_block, id_auth, certs
  [tdx]         mrconfigid, qgs
  [devices]     serial = \"stdout\", disks = [{ path = \"disk.img\", readonly = false }],
                vsock = { cid = 3, uds = \"PATH\" }, api_socket
  [attestation] url, ca_cert
  [limits]      cpu_quota, memory, cpus, cgroup_parent
  [[net]]       tap | create, mac, ip, rx_bps, tx_bps, rx_pps, tx_pps (one table per interface)
  [network_policy] name; [[network_policy.interfaces]] tap, mac, addresses (IPv4/IPv6),
                link_local, egress/ingress = [{ cidr | vm, proto = \"tcp\", ports = [8080] }]

Unknown keys are refused. Flags override the file (logged at INFO). `cvm measure --config
FILE` prints the measurement this launch expects.";

/// A launch with every input resolved (file, flags, defaults).
#[derive(Debug, Clone)]
pub struct Spec {
    /// The TEE.
    pub tee: TeeArg,
    /// Firmware path (`None`: built-in).
    pub firmware: Option<PathBuf>,
    /// Guest memory in bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Serial console.
    pub serial: SerialOutput,
    /// Disks.
    pub disks: Vec<DiskConfig>,
    /// Network interfaces (`super::net`).
    pub net: Vec<host_vmm::net::NetConfig>,
    /// Emulated platform directory.
    pub emulated_platform: Option<PathBuf>,
    /// SNP policy.
    pub policy: u64,
    /// HOST_DATA / MRCONFIGID.
    pub host_data: Option<HexBytes>,
    /// SNP vCPU model.
    pub vcpu_type: String,
    /// Seccomp.
    pub seccomp: SeccompArg,
    /// The emulated TEEs' PVALIDATE/TDCALL trap (`None`: not given, `auto`).
    pub tee_trap: Option<TeeTrapArg>,
    /// Emulated TDX: the host's private page size.
    pub emulated_private_pages: PrivatePagesArg,
    /// Kernel.
    pub kernel: Option<PathBuf>,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// Command line.
    pub cmdline: Option<String>,
    /// Test equipment.
    pub tamper_staged: Option<TamperArg>,
    /// vsock CID.
    pub vsock_cid: u64,
    /// Hybrid vsock socket.
    pub vsock_uds: Option<PathBuf>,
    /// Verifier URL.
    pub verifier: Option<String>,
    /// Verifier CA.
    pub verifier_ca: Option<PathBuf>,
    /// SNP ID block.
    pub id_block: Option<PathBuf>,
    /// SNP ID auth.
    pub id_auth: Option<PathBuf>,
    /// SNP certificate table.
    pub snp_certs: Option<PathBuf>,
    /// TDX QGS socket.
    pub tdx_qgs: Option<PathBuf>,
    /// Control API socket.
    pub api_socket: Option<PathBuf>,
    /// Jail root.
    pub jail: Option<PathBuf>,
    /// Jail uid.
    pub uid: Option<u32>,
    /// Jail gid.
    pub gid: Option<u32>,
    /// Jail network.
    pub jail_netns: JailNetns,
    /// cgroup CPU quota.
    pub cpu_quota: Option<u32>,
    /// cgroup memory limit.
    pub memory_limit: Option<u64>,
    /// cgroup cpuset.
    pub cpus: Option<CpuList>,
    /// cgroup parent.
    pub cgroup_parent: Option<String>,
    /// Result format.
    pub output: cli_support::Output,
    /// The network policy (`[network_policy]` of the description).
    pub net_policy: Option<crate::net_policy::NetworkPolicy>,
    /// The explicit opt-out of filtering (`--net-unfiltered` or
    /// `[network_policy] unfiltered = true`).
    pub net_unfiltered: bool,
}

/// Default guest memory.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Default SNP policy (SMT allowed, reserved bit 17).
pub const DEFAULT_POLICY: u64 = 0x30000;
/// Default SNP vCPU model.
pub const DEFAULT_VCPU_TYPE: &str = "EPYC-v4";

/// Takes the flag's value over the file's, logging an override.
fn pick<T: PartialEq + std::fmt::Debug>(key: &str, flag: Option<T>, file: Option<T>) -> Option<T> {
    match (flag, file) {
        (Some(f), Some(d)) => {
            if f != d {
                tracing::info!(event = "override", key, from_file = ?d, from_flag = ?f, "overriding {key} from the description: {d:?} -> {f:?}");
            }
            Some(f)
        }
        (f, d) => f.or(d),
    }
}

impl Args {
    /// Resolves the launch: the description file (if any), then the flags, then the
    /// defaults. Bad values in the file are usage errors naming the key.
    pub fn resolve(self) -> Result<Spec, LaunchError> {
        let loaded = self.config.as_deref().map(Loaded::read).transpose()?;
        let d = loaded.as_ref();
        let dd = d.map(|l| &l.desc);
        let tee = pick("tee", self.tee, dd.and_then(|d| d.tee)).ok_or_else(|| {
            LaunchError::Usage(
                "--tee is required (or a VM description with `tee = …` given with --config)".into(),
            )
        })?;
        let snp = dd.and_then(|d| d.snp.clone()).unwrap_or_default();
        let tdx = dd.and_then(|d| d.tdx.clone()).unwrap_or_default();
        let vsock = dd.and_then(|d| d.devices.vsock.clone()).unwrap_or_default();
        let att = dd.and_then(|d| d.attestation.clone()).unwrap_or_default();
        let limits = dd.map(|d| d.limits.clone()).unwrap_or_default();
        // Every file value comes from `d`, so a value error names its key in the file.
        let bad = |key: &'static str, e: String| -> LaunchError {
            match d {
                Some(l) => l.bad(key, e).into(),
                None => LaunchError::Usage(e),
            }
        };
        let file_serial = dd
            .and_then(|d| d.devices.serial.as_deref())
            .map(|s| parse_serial(s).map_err(|e| bad("devices.serial", e.to_string())))
            .transpose()?;
        let file_disks: Vec<DiskConfig> = dd
            .map(|d| {
                d.devices
                    .disks
                    .iter()
                    .map(|k| DiskConfig {
                        path: k.path.clone(),
                        read_only: k.readonly,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let disks = if self.disks.is_empty() {
            file_disks
        } else {
            if !file_disks.is_empty() {
                tracing::info!(
                    event = "override",
                    key = "disks",
                    "overriding disks from the description: {file_disks:?} -> {:?}",
                    self.disks
                );
            }
            self.disks
        };
        let file_memory = d.map(Loaded::memory).transpose()?.flatten();
        let file_vcpus = d.map(Loaded::vcpus).transpose()?.flatten();
        let file_host_data = d
            .map(Loaded::host_data)
            .transpose()?
            .flatten()
            .map(HexBytes);
        let file_policy = d.map(Loaded::policy).transpose()?.flatten();
        let file_limit = limits
            .memory
            .as_deref()
            .map(|m| parse_size(m).map_err(|e| bad("limits.memory", e.to_string())))
            .transpose()?;
        let file_cpus = limits
            .cpus
            .as_deref()
            .map(|c| {
                c.parse::<CpuList>()
                    .map_err(|e| bad("limits.cpus", e.to_string()))
            })
            .transpose()?;
        let file_cid = vsock
            .cid
            .map(|c| parse_cid(&c.to_string()).map_err(|e| bad("devices.vsock.cid", e.to_string())))
            .transpose()?;
        let firmware = match (self.firmware, d) {
            (Some(f), Some(l)) => {
                let from = l
                    .firmware()
                    .map_or("built-in".into(), |p| p.display().to_string());
                tracing::info!(
                    event = "override",
                    key = "firmware",
                    "overriding firmware from the description: {from} -> {}",
                    f.display()
                );
                Some(f)
            }
            (Some(f), None) => Some(f),
            (None, l) => l.and_then(Loaded::firmware),
        };
        let spec = Spec {
            tee,
            firmware,
            memory: pick("memory", self.memory, file_memory).unwrap_or(DEFAULT_MEMORY),
            vcpus: pick("vcpus", self.vcpus, file_vcpus).unwrap_or(1),
            serial: pick("serial", self.serial, file_serial).unwrap_or(SerialOutput::Stdout),
            disks,
            net: super::net::resolve(self.net, d)?,
            emulated_platform: pick(
                "emulated_platform",
                self.emulated_platform,
                dd.and_then(|d| d.emulated_platform.clone()),
            ),
            policy: pick("policy", self.policy, file_policy).unwrap_or(DEFAULT_POLICY),
            host_data: pick("host_data", self.host_data, file_host_data),
            vcpu_type: pick("cpu", self.vcpu_type, d.and_then(Loaded::cpu))
                .unwrap_or_else(|| DEFAULT_VCPU_TYPE.into()),
            seccomp: self.seccomp,
            tee_trap: self.tee_trap,
            emulated_private_pages: self.emulated_private_pages,
            kernel: pick(
                "kernel",
                self.kernel,
                dd.and_then(|d| d.boot.kernel.clone()),
            ),
            initrd: pick(
                "initrd",
                self.initrd,
                dd.and_then(|d| d.boot.initrd.clone()),
            ),
            cmdline: pick(
                "cmdline",
                self.cmdline,
                dd.and_then(|d| d.boot.cmdline.clone()),
            ),
            tamper_staged: self.tamper_staged,
            vsock_cid: pick("vsock_cid", self.vsock_cid, file_cid).unwrap_or(3),
            vsock_uds: pick("vsock_uds", self.vsock_uds, vsock.uds),
            verifier: pick("url", self.url, att.url),
            verifier_ca: pick("ca_cert", self.ca_cert, att.ca_cert),
            id_block: pick("id_block", self.id_block, snp.id_block),
            id_auth: pick("id_auth", self.id_auth, snp.id_auth),
            snp_certs: pick("snp_certs", self.snp_certs, snp.certs),
            tdx_qgs: pick("tdx_qgs", self.tdx_qgs, tdx.qgs),
            api_socket: pick(
                "api_socket",
                self.api_socket,
                dd.and_then(|d| d.devices.api_socket.clone()),
            ),
            jail: self.jail,
            uid: self.uid,
            gid: self.gid,
            jail_netns: self.jail_netns,
            cpu_quota: pick("cpu_quota", self.cpu_quota, limits.cpu_quota),
            memory_limit: pick("memory_limit", self.memory_limit, file_limit),
            cpus: pick("cpus", self.cpus, file_cpus),
            cgroup_parent: pick("cgroup_parent", self.cgroup_parent, limits.cgroup_parent),
            output: self.output,
            net_policy: d.map(Loaded::network_policy).transpose()?.flatten(),
            net_unfiltered: self.net_unfiltered || d.is_some_and(Loaded::network_unfiltered),
        };
        // Default deny (issue 18): an interface without a policy is refused unless the
        // launch opts out explicitly.
        if spec.net_policy.is_some() && self.net_unfiltered {
            return Err(LaunchError::Usage(
                "--net-unfiltered contradicts the description's [network_policy]; drop one".into(),
            ));
        }
        if spec.net_policy.is_none() && !spec.net.is_empty() && !spec.net_unfiltered {
            return Err(LaunchError::Usage(
                "a network interface needs a network policy (default deny): add \
                 [network_policy] to the VM description (--config), or opt out of filtering \
                 explicitly with --net-unfiltered or `[network_policy] unfiltered = true`"
                    .into(),
            ));
        }
        if let Some(p) = &spec.net_policy {
            let devices: Vec<crate::net_policy::Device<'_>> = spec
                .net
                .iter()
                .map(|n| crate::net_policy::Device {
                    tap: n.tap.name(),
                    mac: n.mac.0,
                    ip: n.ip.map(|c| c.addr),
                })
                .collect();
            crate::net_policy::check_devices(p, &devices)
                .map_err(|e| bad("network_policy", e.to_string()))?;
        }
        Ok(spec)
    }
}

/// `--tee`: the TEE to launch into (the CLI's names for [`TeeKind`]).
pub type TeeArg = TeeName;

impl TeeName {
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
    /// Point an XSDT entry of the staged ACPI tables outside them.
    AcpiPointer,
    /// Break a checksum of the staged ACPI tables.
    AcpiChecksum,
    /// Describe the staged ACPI tables as larger than 128 KiB.
    AcpiSize,
}

impl From<TamperArg> for Tamper {
    fn from(t: TamperArg) -> Self {
        match t {
            TamperArg::Kernel => Tamper::Kernel,
            TamperArg::Initrd => Tamper::Initrd,
            TamperArg::Cmdline => Tamper::Cmdline,
            TamperArg::AcpiPointer => Tamper::AcpiPointer,
            TamperArg::AcpiChecksum => Tamper::AcpiChecksum,
            TamperArg::AcpiSize => Tamper::AcpiSize,
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

/// `--tee-trap`: the emulated TEEs' PVALIDATE/TDCALL trap ([`host_vmm::tee::trap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TeeTrapArg {
    /// Probe this host's KVM once (default).
    #[default]
    Auto,
    /// The literal instructions (needs a KVM that exits on them).
    Instruction,
    /// The emulator trap `out 0xE1, al` / `out 0xE0, al`.
    Port,
}

impl From<TeeTrapArg> for TeeTrap {
    fn from(t: TeeTrapArg) -> Self {
        match t {
            TeeTrapArg::Auto => TeeTrap::Auto,
            TeeTrapArg::Instruction => TeeTrap::Instruction,
            TeeTrapArg::Port => TeeTrap::Port,
        }
    }
}

/// `--emulated-private-pages`: the private page size of the emulated host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PrivatePagesArg {
    /// 4 KiB pages (Linux 6.16 guest_memfd).
    #[value(name = "4k")]
    Size4K,
    /// 2 MiB pages (huge-page private memory; default).
    #[default]
    #[value(name = "2m")]
    Size2M,
}

/// The network namespace of a jailed VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum JailNetns {
    /// A new network namespace with no connectivity.
    #[default]
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
    #[error("invalid --url (the verifier)")]
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
    /// The VM description file is unreadable or invalid.
    #[error(transparent)]
    Description(#[from] DescriptionError),
    /// The firmware is not a firmware image.
    #[error("{0} is not a firmware image: {1}")]
    NotFirmware(String, String),
    /// A --disk image cannot be opened.
    #[error("--disk {0}: cannot open the disk image")]
    Disk(PathBuf, #[source] std::io::Error),
    /// A --net tap cannot be opened or created.
    #[error("--net: cannot attach the network interface")]
    Net(#[from] host_vmm::net::TapError),
    /// The network policy could not be installed (the VM does not start).
    #[error("the network policy refused the launch")]
    NetPolicy(#[from] crate::net_policy::NetPolicyError),
}

impl ExitClass for LaunchError {
    /// The exit status of `cvm launch` for this error: 2 for usage and unreadable or
    /// invalid input, 1 for a refusal or a failed run.
    fn exit_code(&self) -> u8 {
        match self {
            LaunchError::Usage(_)
            | LaunchError::Description(_)
            | LaunchError::NotFirmware(..)
            | LaunchError::Disk(..)
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
            LaunchError::Net(e) if super::net::is_input_error(e) => EXIT_USAGE,
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

fn snp_config(a: &Spec, boot: Option<&BootInputs>) -> Result<SnpPlanConfig, LaunchError> {
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
fn id_block(a: &Spec) -> Result<Option<host_vmm::tee::launch::IdBlock>, LaunchError> {
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

fn vsock_config(a: &Spec) -> Result<Option<VsockConfig>, LaunchError> {
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

/// The files and settings a launch reads.
#[derive(Debug)]
pub struct Inputs {
    firmware: Vec<u8>,
    firmware_name: String,
    boot: Option<BootInputs>,
    vsock: Option<VsockConfig>,
}

/// Reads the firmware, the kernel/initrd/command line and the vsock settings.
pub fn load_inputs(a: &Spec) -> Result<Inputs, LaunchError> {
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
    check_firmware(&firmware_name, &firmware, a.tee)?;
    check_host_paths(a)?;
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
fn build_backend(a: &Spec, inputs: &Inputs) -> Result<Arc<dyn TeeBackend>, LaunchError> {
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
            let b = EmulatedSnp::launch(&platform()?, &plan, a.policy, host_data, preload)?
                .with_tee_trap(a.tee_trap.unwrap_or_default().into());
            tracing::info!(
                event = "tee-trap",
                trap = b.insn_trap().name(),
                "emulated PVALIDATE trap"
            );
            Arc::new(b)
        }
        TeeArg::EmulatedTdx => {
            let config = attestation::tdx::emulated::TdConfig {
                mr_config_id: padded::<48>(&a.host_data)?,
                ..Default::default()
            };
            let b = EmulatedTdx::launch(
                &platform()?,
                inputs.firmware.clone(),
                config,
                boot.map(BootInputs::direct_boot),
            )?
            .with_tee_trap(a.tee_trap.unwrap_or_default().into())
            .with_private_page_size(match a.emulated_private_pages {
                PrivatePagesArg::Size4K => PageSize::Size4K,
                PrivatePagesArg::Size2M => PageSize::Size2M,
            })
            .with_staged_cmdline(boot.and_then(|b| b.cmdline.as_deref()));
            tracing::info!(
                event = "tee-trap",
                trap = b.insn_trap().name(),
                "emulated TDCALL trap"
            );
            Arc::new(b)
        }
    })
}

/// Reads and checks the --snp-certs certificate table.
fn cert_table(p: &PathBuf) -> Result<CertTable, LaunchError> {
    let bytes = std::fs::read(p).map_err(|e| LaunchError::Input(p.clone(), e))?;
    CertTable::parse(bytes).map_err(|e| LaunchError::CertTable(p.clone(), e))
}

/// The structured `launch` log line: what is launched and what it should measure.
fn log_launch(a: &Spec, inputs: &Inputs, backend: &dyn TeeBackend) {
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
fn apply_limits(a: &Spec) -> Result<Option<VmCgroup>, LaunchError> {
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
fn confine(a: &Spec, mut cgroup: Option<VmCgroup>) -> Result<Option<i32>, LaunchError> {
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

fn launch(a: &Spec) -> Result<Outcome, LaunchError> {
    check_flags(a)?;
    // Unreadable input is a usage error (exit 2) on any host, so it is found before
    // the host is asked for the TEE.
    let inputs = load_inputs(a)?;
    let kvm = kvm_ioctls::Kvm::new().map_err(LaunchError::Kvm)?;
    tee::check(a.tee.kind(), &KvmCapabilities::query(&kvm))?;
    let backend = build_backend(a, &inputs)?;
    print_expected(a, &backend.measurement());
    log_launch(a, &inputs, backend.as_ref());
    // The taps exist from here (`create=` makes them); the policy is installed before
    // the VM's process can run the guest.
    let net = super::net::open_all(&a.net)?;
    match install_net_policy(a)? {
        Some(NetRole::Supervisor(s)) => {
            // Only the VM's process holds its taps.
            drop(net);
            return Ok(Outcome::ChildExited(s.run()));
        }
        Some(NetRole::Vm(m)) => {
            host_vmm::api::register_metrics("net_policy", Arc::new(move || m.json()))
        }
        None => {}
    }
    // The policy is in place: only now may frames reach the guest.
    super::net::activate(&net)?;
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
        net,
    };
    Ok(Outcome::Stopped(vmm::run(config)?))
}

use crate::net_policy::supervisor::Role as NetRole;

/// Installs the network policy before anything can reach the guest, then forks: this
/// process stays as the supervisor that removes the policy when the VM ends (see
/// `crate::net_policy`); the child goes on to run the VM. A policy that cannot be
/// installed refuses the launch.
fn install_net_policy(a: &Spec) -> Result<Option<NetRole>, LaunchError> {
    use crate::net_policy::{nft::Nft, registry::Registry, supervisor};
    let Some(p) = &a.net_policy else {
        if !a.net.is_empty() {
            tracing::warn!(
                event = "net-policy-absent",
                "network policy opted out (unfiltered): the host does not filter this VM's \
                 network traffic (add a [network_policy] for default deny and anti-spoofing)"
            );
        }
        return Ok(None);
    };
    let registry = Registry::open(&Registry::default_dir())
        .map_err(crate::net_policy::NetPolicyError::from)?;
    let installed = supervisor::Installed::install(p, Nft::default(), registry)?;
    Ok(Some(supervisor::supervise(installed)?))
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

/// Prints the measurement the launch expects, before the guest starts: at INFO on
/// standard error, and with `--output json` as one JSON line on standard output (the
/// JSON `cvm measure --config --output json` prints for the same description).
fn print_expected(a: &Spec, m: &ExpectedMeasurement) {
    let j = reference_json(a, m);
    if m.digest.is_some() {
        tracing::info!(event = "expected-measurement", tee = %m.tee, measurement = %m.digest_hex(), rtmrs = %m.rtmrs_summary(), "expected measurement");
    }
    if a.output.is_json() {
        println!("{j}");
    }
}

/// The reference values of a launch as JSON: `{"tee":"snp","measurement":HEX,…}` or
/// `{"tee":"tdx","mrtd":HEX,"rtmrs":[…],…}` (`tee` names the evidence format, so an
/// emulated TEE says `snp`/`tdx` and sets `insecure_emulated`), with the policy and
/// HOST_DATA / MRCONFIGID a verifier also checks. `cvm-verifier admin workload put
/// --from-measure FILE` reads it.
pub fn reference_json(a: &Spec, m: &ExpectedMeasurement) -> serde_json::Value {
    let emulated = m.insecure_emulated();
    let host_data = a.host_data.as_ref().map(|h| hex::encode(&h.0));
    if a.tee.is_snp() {
        serde_json::json!({
            "tee": "snp",
            "measurement": m.digest.map(hex::encode),
            "policy": format!("{:#x}", a.policy),
            "host_data": host_data,
            "vcpus": a.vcpus,
            "vcpu_type": a.vcpu_type,
            "insecure_emulated": emulated,
        })
    } else if a.tee.is_tdx() {
        serde_json::json!({
            "tee": "tdx",
            "mrtd": m.digest.map(hex::encode),
            "rtmrs": m.rtmrs.map(|r| r.iter().map(hex::encode).collect::<Vec<_>>()),
            "mrconfigid": host_data,
            "insecure_emulated": emulated,
        })
    } else {
        serde_json::json!({"tee": "none", "measurement": null, "insecure_emulated": false})
    }
}

/// The measurement a launch of `a` expects, computed from the same launch plans the
/// backends execute, without KVM or an emulated platform (`cvm measure --config`).
pub fn expected_measurement(a: &Spec) -> Result<ExpectedMeasurement, LaunchError> {
    check_measured_inputs(a)?;
    let inputs = load_inputs(a)?;
    let firmware = FirmwareImage::parse(inputs.firmware.clone())?;
    let boot = inputs.boot.as_ref();
    let (digest, rtmrs) = if a.tee.is_snp() {
        let plan =
            SnpLaunchPlan::new(firmware, snp_config(a, boot)?).map_err(LaunchError::SnpPlan)?;
        (Some(plan.launch_digest()), None)
    } else if a.tee.is_tdx() {
        let plan = TdxLaunchPlan::new(firmware, boot.map(BootInputs::direct_boot))
            .map_err(LaunchError::TdxPlan)?;
        (Some(plan.mrtd()), Some(plan.rtmrs()))
    } else {
        (None, None)
    };
    Ok(ExpectedMeasurement {
        tee: a.tee.kind(),
        digest,
        rtmrs,
    })
}

/// Runs `cvm launch`.
pub fn run(a: Args) -> ExitCode {
    let a = match a.resolve() {
        Ok(s) => s,
        Err(e) => return super::fail(&e, e.exit_code()),
    };
    match launch(&a) {
        Ok(Outcome::ChildExited(status)) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
        Ok(Outcome::Stopped(why)) => {
            let (code, msg) = exit_status(&why);
            tracing::info!(event = "shutdown", exit_status = code, reason = %msg, "guest stopped");
            if a.output.is_json() {
                println!(
                    "{}",
                    serde_json::json!({"event": "stopped", "exit_status": code, "reason": msg,
                        "time": cli_support::units::rfc3339(now_secs())})
                );
            }
            if code != 0 {
                eprintln!("error: {msg}");
            }
            ExitCode::from(code)
        }
        Err(e) => super::fail(&e, e.exit_code()),
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests;
