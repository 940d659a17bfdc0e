//! `cvm measure snp|tdx`: the expected launch measurement of a guest, computed from the
//! same launch plan the VMM executes.
//!
//! `cvm measure snp` accepts sev-snp-measure's flags and prints identical output for
//! identical input; `--output-format json` adds the plan summary. `cvm measure tdx`
//! prints MRTD, and with JSON the RTMRs and event log of the project's firmware.
//! Errors exit with status 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use measured_boot::snp::cpu::{cpu_sig, sig_by_name, CPU_TYPES};
use measured_boot::snp::hashes::SevHashes;
use measured_boot::snp::vmsa::VmmType;
use measured_boot::snp::{SnpLaunchPlan, SnpPlanConfig, SnpPlanError};
use measured_boot::tdx::{DirectBoot, TdxLaunchPlan, TdxPlanError};
use measured_boot::{FirmwareError, FirmwareImage};

/// `cvm measure` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// SEV-SNP launch digest (sev-snp-measure compatible).
    Snp(SnpArgs),
    /// TDX MRTD (and, with JSON output, RTMRs and the event log).
    Tdx(TdxArgs),
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Lower-case hex and a newline.
    Hex,
    /// Standard base64 and a newline.
    Base64,
    /// A JSON object with the measurement and the plan summary.
    Json,
}

/// Direct-boot inputs shared by both TEEs.
#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// Kernel to boot directly (its hash goes into the measured hashes table / RTMR).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initrd (requires --kernel).
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (requires --kernel).
    #[arg(
        long,
        value_name = "CMDLINE",
        requires = "kernel",
        allow_hyphen_values = true
    )]
    pub append: Option<String>,
}

/// `cvm measure snp`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("vcpu").args(["vcpu_type", "vcpu_sig", "vcpu_family"])))]
pub struct SnpArgs {
    /// Guest mode; only `snp` (accepted for sev-snp-measure compatibility).
    #[arg(long, default_value = "snp", value_parser = ["snp"])]
    pub mode: String,
    /// Firmware image (OVMF-compatible, with SEV metadata).
    #[arg(long, visible_alias = "firmware", value_name = "PATH")]
    pub ovmf: PathBuf,
    /// Number of vCPUs.
    #[arg(long, value_name = "N")]
    pub vcpus: u32,
    /// vCPU model name (QEMU names, e.g. EPYC-v4, EPYC-Milan).
    #[arg(long, value_name = "CPUTYPE")]
    pub vcpu_type: Option<String>,
    /// vCPU signature (CPUID 1 EAX), decimal or 0x-hex.
    #[arg(long, value_name = "VALUE", value_parser = parse_int::<u32>)]
    pub vcpu_sig: Option<u32>,
    /// vCPU family (with --vcpu-model and --vcpu-stepping).
    #[arg(long, value_name = "FAMILY", requires_all = ["vcpu_model", "vcpu_stepping"])]
    pub vcpu_family: Option<u32>,
    /// vCPU model.
    #[arg(long, value_name = "MODEL", requires = "vcpu_family")]
    pub vcpu_model: Option<u32>,
    /// vCPU stepping.
    #[arg(long, value_name = "STEPPING", requires = "vcpu_family")]
    pub vcpu_stepping: Option<u32>,
    /// Whose reset state to reproduce: qemu (also cvm), ec2 or gce.
    #[arg(long, default_value = "qemu", value_name = "VMMTYPE")]
    pub vmm_type: VmmType,
    /// SEV_FEATURES of the guest, decimal or 0x-hex.
    #[arg(long, default_value = "0x1", value_name = "VALUE", value_parser = parse_int::<u64>)]
    pub guest_features: u64,
    #[command(flatten)]
    pub boot: BootArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "hex")]
    pub output_format: OutputFormat,
    /// Print "Calculated SEV_SNP guest measurement: …" like sev-snp-measure -v.
    #[arg(short, long)]
    pub verbose: bool,
}

/// `cvm measure tdx`.
#[derive(Debug, clap::Args)]
pub struct TdxArgs {
    /// Firmware image (TDVF-compatible, with TDX metadata).
    #[arg(long, visible_alias = "ovmf", value_name = "PATH")]
    pub firmware: PathBuf,
    #[command(flatten)]
    pub boot: BootArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "hex")]
    pub output_format: OutputFormat,
}

fn parse_int<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse::<u64>(),
    }
    .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    T::try_from(v).map_err(|_| format!("`{s}` is out of range"))
}

/// Why `cvm measure` failed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// A file could not be read.
    #[error("cannot read {what} {path}")]
    Read {
        /// What the file is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The firmware is unusable.
    #[error("firmware {0} is not usable")]
    Firmware(PathBuf, #[source] FirmwareError),
    /// The SNP plan could not be built.
    #[error("cannot build the SEV-SNP launch plan")]
    SnpPlan(#[from] SnpPlanError),
    /// The TDX plan could not be built.
    #[error("cannot build the TDX launch plan")]
    TdxPlan(#[from] TdxPlanError),
    /// Arguments are inconsistent.
    #[error("{0}")]
    Usage(String),
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, MeasureError> {
    std::fs::read(path).map_err(|source| MeasureError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn firmware(path: &Path) -> Result<FirmwareImage, MeasureError> {
    FirmwareImage::parse(read(path, "firmware")?)
        .map_err(|e| MeasureError::Firmware(path.to_owned(), e))
}

struct Boot {
    kernel: Vec<u8>,
    initrd: Option<Vec<u8>>,
    cmdline: Option<String>,
}

fn boot(a: &BootArgs) -> Result<Option<Boot>, MeasureError> {
    let Some(k) = &a.kernel else { return Ok(None) };
    Ok(Some(Boot {
        kernel: read(k, "kernel")?,
        initrd: a.initrd.as_deref().map(|p| read(p, "initrd")).transpose()?,
        cmdline: a.append.clone(),
    }))
}

/// Builds the SNP plan from the arguments.
pub fn snp_plan(a: &SnpArgs) -> Result<SnpLaunchPlan, MeasureError> {
    let vcpu_sig = if let Some(f) = a.vcpu_family {
        cpu_sig(f, a.vcpu_model.unwrap_or(0), a.vcpu_stepping.unwrap_or(0))
    } else if let Some(s) = a.vcpu_sig {
        s
    } else if let Some(t) = &a.vcpu_type {
        sig_by_name(t).ok_or_else(|| {
            let names: Vec<_> = CPU_TYPES.iter().map(|(n, _)| *n).collect();
            MeasureError::Usage(format!(
                "unknown vCPU type `{t}` (known: {})",
                names.join(", ")
            ))
        })?
    } else if a.vmm_type == VmmType::Qemu {
        return Err(MeasureError::Usage(
            "missing --vcpu-type, --vcpu-sig or --vcpu-family".into(),
        ));
    } else {
        0 // EC2 and GCE put 0x600 in RDX regardless of the CPU model.
    };
    let fw = firmware(&a.ovmf)?;
    let hashes = boot(&a.boot)?
        .map(|b| SevHashes::compute(&b.kernel, b.initrd.as_deref(), b.cmdline.as_deref()));
    let config = SnpPlanConfig {
        vcpus: a.vcpus,
        vcpu_sig,
        guest_features: a.guest_features,
        vmm_type: a.vmm_type,
        hashes,
    };
    Ok(SnpLaunchPlan::new(fw, config)?)
}

/// Builds the TDX plan from the arguments.
pub fn tdx_plan(a: &TdxArgs) -> Result<TdxLaunchPlan, MeasureError> {
    let fw = firmware(&a.firmware)?;
    let db = boot(&a.boot)?
        .map(|b| DirectBoot::measure(&b.kernel, b.initrd.as_deref(), b.cmdline.as_deref()));
    Ok(TdxLaunchPlan::new(fw, db)?)
}

fn print_digest(d: &[u8], fmt: OutputFormat, verbose_label: Option<&str>) {
    let text = match fmt {
        OutputFormat::Base64 => base64::engine::general_purpose::STANDARD.encode(d),
        _ => hex::encode(d),
    };
    match verbose_label {
        Some(l) => println!("{l}{text}"),
        None => println!("{text}"),
    }
}

fn run_snp(a: &SnpArgs) -> Result<(), MeasureError> {
    let plan = snp_plan(a)?;
    let digest = plan.launch_digest();
    if a.output_format == OutputFormat::Json {
        let out = serde_json::json!({
            "tee": "snp",
            "measurement": hex::encode(digest),
            "plan": plan.summary(),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print_digest(
            &digest,
            a.output_format,
            a.verbose
                .then_some("Calculated SEV_SNP guest measurement: "),
        );
    }
    Ok(())
}

fn run_tdx(a: &TdxArgs) -> Result<(), MeasureError> {
    let plan = tdx_plan(a)?;
    let mrtd = plan.mrtd();
    if a.output_format == OutputFormat::Json {
        let (added, measured) = plan.page_counts();
        let out = serde_json::json!({
            "tee": "tdx",
            "mrtd": hex::encode(mrtd),
            "rtmrs": plan.rtmrs().iter().map(hex::encode).collect::<Vec<_>>(),
            "event_log": plan.event_log().events,
            "direct_boot": plan.direct_boot(),
            "sections": plan.sections(),
            "pages_added": added,
            "pages_measured": measured,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print_digest(&mrtd, a.output_format, None);
    }
    Ok(())
}

/// Runs `cvm measure`.
pub fn run(c: Command) -> ExitCode {
    let r = match &c {
        Command::Snp(a) => run_snp(a),
        Command::Tdx(a) => run_tdx(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e, cli_support::EXIT_USAGE),
    }
}
