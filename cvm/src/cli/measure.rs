//! `cvm measure`: the expected launch measurement of a guest, computed from the same
//! launch plan the VMM executes.
//!
//! `cvm measure --config FILE` reads the VM description `cvm launch --config FILE` reads
//! and prints the measurement that launch expects (`--output json`: the reference values
//! `cvm-verifier admin workload put --from-measure` registers).
//! `cvm measure snp` accepts sev-snp-measure's flags and prints identical output for
//! identical input; `--output json` adds the plan summary. `cvm measure tdx` prints
//! MRTD, and with JSON the RTMRs and event log of the project's firmware. Both default
//! to the built-in firmware, like `cvm launch`. Errors exit with status 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;

use super::description::{parse_vcpus, TeeName};
use measured_boot::snp::cpu::{cpu_sig, sig_by_name, CPU_TYPES};
use measured_boot::snp::hashes::SevHashes;
use measured_boot::snp::vmsa::VmmType;
use measured_boot::snp::{SnpLaunchPlan, SnpPlanConfig, SnpPlanError};
use measured_boot::tdx::{DirectBoot, TdxLaunchPlan, TdxPlanError};
use measured_boot::{FirmwareError, FirmwareImage};

/// `cvm measure`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    /// sev-snp-measure style subcommands (flags instead of a description file).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// VM description file (as `cvm launch --config`): prints the measurement that launch
    /// expects. Flags below override the file.
    #[arg(long, value_name = "FILE", required = true)]
    pub config: Option<PathBuf>,
    /// Override the description's TEE.
    #[arg(long, value_enum)]
    pub tee: Option<TeeName>,
    /// Override the description's firmware.
    #[arg(long, visible_alias = "ovmf", value_name = "PATH")]
    pub firmware: Option<PathBuf>,
    /// Override the description's kernel.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Override the description's initrd.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Override the description's kernel command line.
    #[arg(
        long,
        visible_alias = "append",
        value_name = "STR",
        allow_hyphen_values = true
    )]
    pub cmdline: Option<String>,
    /// Override the description's vCPU count.
    #[arg(long, value_name = "N", value_parser = parse_vcpus)]
    pub vcpus: Option<u32>,
    /// Override the description's SNP vCPU model.
    #[arg(long, value_name = "CPUTYPE")]
    pub vcpu_type: Option<String>,
    /// Output: hex (also `text`), base64 or json (the reference values).
    #[arg(
        long,
        visible_alias = "output-format",
        value_enum,
        default_value = "hex"
    )]
    pub output: OutputFormat,
}

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
    #[value(alias = "text")]
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
        visible_alias = "append",
        value_name = "CMDLINE",
        requires = "kernel",
        allow_hyphen_values = true
    )]
    pub cmdline: Option<String>,
}

/// `cvm measure snp`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("vcpu").args(["vcpu_type", "vcpu_sig", "vcpu_family"])))]
pub struct SnpArgs {
    /// Guest mode; only `snp` (accepted for sev-snp-measure compatibility).
    #[arg(long, default_value = "snp", value_parser = ["snp"])]
    pub mode: String,
    /// Firmware image (OVMF-compatible, with SEV metadata; default: the built-in
    /// firmware, as `cvm launch`).
    #[arg(long, visible_alias = "ovmf", value_name = "PATH")]
    pub firmware: Option<PathBuf>,
    /// Number of vCPUs (1 to 255, as `cvm launch`).
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_vcpus)]
    pub vcpus: u32,
    /// vCPU model name (QEMU names, e.g. EPYC-v4, EPYC-Milan; default EPYC-v4 with
    /// --vmm-type qemu, as `cvm launch`).
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
    #[arg(
        long,
        visible_alias = "output-format",
        value_enum,
        default_value = "hex"
    )]
    pub output: OutputFormat,
    /// Print "Calculated SEV_SNP guest measurement: …" like sev-snp-measure -v.
    #[arg(short, long)]
    pub verbose: bool,
}

/// `cvm measure tdx`.
#[derive(Debug, clap::Args)]
pub struct TdxArgs {
    /// Firmware image (TDVF-compatible, with TDX metadata; default: the built-in
    /// firmware, as `cvm launch`).
    #[arg(long, visible_alias = "ovmf", value_name = "PATH")]
    pub firmware: Option<PathBuf>,
    #[command(flatten)]
    pub boot: BootArgs,
    /// Output format.
    #[arg(
        long,
        visible_alias = "output-format",
        value_enum,
        default_value = "hex"
    )]
    pub output: OutputFormat,
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
    /// This cvm has no built-in firmware.
    #[error("no --firmware given and this cvm has no built-in firmware")]
    Embedded(#[source] guest_images::FirmwareError),
    /// The description or the launch inputs it names are unusable.
    #[error(transparent)]
    Launch(#[from] super::launch::LaunchError),
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, MeasureError> {
    std::fs::read(path).map_err(|source| MeasureError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn firmware(path: Option<&Path>) -> Result<FirmwareImage, MeasureError> {
    let Some(path) = path else {
        let fw = guest_images::embedded().map_err(MeasureError::Embedded)?;
        return FirmwareImage::parse(fw.to_vec())
            .map_err(|e| MeasureError::Firmware("built-in".into(), e));
    };
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
        cmdline: a.cmdline.clone(),
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
        sig_by_name(super::launch::DEFAULT_VCPU_TYPE).unwrap_or_default()
    } else {
        0 // EC2 and GCE put 0x600 in RDX regardless of the CPU model.
    };
    let fw = firmware(a.firmware.as_deref())?;
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
    let fw = firmware(a.firmware.as_deref())?;
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
    if a.output == OutputFormat::Json {
        let out = serde_json::json!({
            "tee": "snp",
            "measurement": hex::encode(digest),
            "plan": plan.summary(),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print_digest(
            &digest,
            a.output,
            a.verbose
                .then_some("Calculated SEV_SNP guest measurement: "),
        );
    }
    Ok(())
}

fn run_tdx(a: &TdxArgs) -> Result<(), MeasureError> {
    let plan = tdx_plan(a)?;
    let mrtd = plan.mrtd();
    if a.output == OutputFormat::Json {
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
        print_digest(&mrtd, a.output, None);
    }
    Ok(())
}

/// `cvm measure --config`: the measurement `cvm launch --config` expects, from the same
/// resolution of the file and the same launch plans.
fn run_config(a: &Args) -> Result<(), MeasureError> {
    let launch_args = super::launch::Args {
        config: a.config.clone(),
        tee: a.tee,
        firmware: a.firmware.clone(),
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        cmdline: a.cmdline.clone(),
        vcpus: a.vcpus,
        vcpu_type: a.vcpu_type.clone(),
        ..Default::default()
    };
    let spec = launch_args.resolve()?;
    let m = super::launch::expected_measurement(&spec)?;
    match a.output {
        OutputFormat::Json => {
            cli_support::output::print_json(&super::launch::reference_json(&spec, &m))
        }
        fmt => match m.digest {
            Some(d) => print_digest(&d, fmt, None),
            None => {
                return Err(MeasureError::Usage(
                    "--tee none measures nothing; use --output json to see the description".into(),
                ))
            }
        },
    }
    Ok(())
}

/// Runs `cvm measure`.
pub fn run(a: Args) -> ExitCode {
    let r = match &a.command {
        Some(Command::Snp(s)) => run_snp(s),
        Some(Command::Tdx(t)) => run_tdx(t),
        None => run_config(&a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(MeasureError::Launch(e)) => {
            use cli_support::ExitClass;
            super::fail(&e, e.exit_code())
        }
        Err(e) => super::fail(&e, cli_support::EXIT_USAGE),
    }
}
