//! `cvm image initramfs`: a newc cpio initramfs for a stock Debian cloud kernel that
//! attests with `cvm-agent`, receives the disk key from the verifier and switches to the
//! LUKS2 root that `cvm image disk` wrote.
//!
//! # Contents
//!
//! | path | what |
//! |---|---|
//! | `/init` | busybox `sh` script, below |
//! | `/bin/cvm-agent` | the agent (`--agent`, default: `cvm-agent` next to `cvm`); a dynamically linked agent brings its libraries |
//! | `/bin/busybox` + applet symlinks in `/bin` | `sh mount umount mkdir insmod switch_root poweroff` and the few others `/init` uses |
//! | `/sbin/cryptsetup` | with every library its `DT_NEEDED` entries name (recursively, searched like ld.so: RUNPATH, then the multiarch and standard directories) and the dynamic loader at its `PT_INTERP` path |
//! | `/lib/modules/<V>/kernel/…` | the modules below and their dependency closure, decompressed (`.ko.xz`, `.ko.zst`, `.ko.gz` with the host's `xz`, `zstd`, `gzip`) so neither busybox `insmod` nor the kernel needs to decompress |
//! | `/etc/cvm/verifier-ca.pem` | with `--url https://…` |
//! | `/dev/console` | character device 5:1, so `/init` has a console before devtmpfs is mounted |
//! | `/proc /sys /dev /run/cryptsetup /newroot /tmp` | empty directories |
//!
//! Modules: `virtio_mmio` (the VMM's devices are virtio-mmio, described in ACPI),
//! `virtio_blk`, `vsock`, `vmw_vsock_virtio_transport_common`,
//! `vmw_vsock_virtio_transport`, `dm_mod`, `dm_crypt`, `xts`; if the kernel has them,
//! `aesni_intel` (or the older `aes_x86_64`), `sev_guest` (`/dev/sev-guest` for the
//! agent's SNP evidence) and `ext4`; plus `--module NAME`. Built-in modules (listed in
//! `modules.builtin`) are skipped. Dependencies come from `modules.dep`, or, where there is
//! none (an extracted `.deb`, which ships no `modules.dep`), from each module's
//! `.modinfo` `depends=`; `/init` loads them with `insmod` in dependency order.
//!
//! The archive is reproducible: entries sorted by path, parents first, uid/gid 0, mtime
//! 0, inode numbers in order. The same inputs give the same bytes, so the same
//! measurement.
//!
//! # `/init`
//!
//! Mounts proc, sysfs and devtmpfs; loads the modules (a required module that fails is
//! fatal, an optional one a warning); waits up to 10 s for the disk (`--device`, default
//! `/dev/vda`: the first `--disk` of `cvm launch`); runs `cvm-agent --kbs … --device …
//! --mount /newroot` (KBS `vsock:2:50000`, the VMM's attestation relay, by default, or
//! `--url`); moves `/dev`, `/proc`, `/sys` under `/newroot` and `exec`s `switch_root
//! /newroot <--root-init>`. Any failure prints `cvm-init: FATAL: <reason>` and powers off
//! (`poweroff -f`, then sysrq `o`); `/init` never starts an interactive shell. The key
//! only exists inside `cvm-agent` and on its pipe to `cryptsetup`.
//!
//! The resource is `--resource`, or else `cvm.kbs_resource=` on the kernel command line
//! (read by the agent); `cvm.kbs_workload=` likewise. The verifier pin is
//! `--verifier-key` (baked into `/init`, so covered by the measurement of the initramfs),
//! or else `cvm.verifier_key=` on the (measured) kernel command line.

mod cpio;
mod elf;
mod init;
mod modules;

use cpio::*;
pub use elf::*;
pub use init::*;
pub use modules::*;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use measured_boot::snp::hashes::SevHashes;
use measured_boot::snp::vmsa::VmmType;
use measured_boot::snp::{SnpLaunchPlan, SnpPlanConfig};
use measured_boot::tdx::{DirectBoot, TdxLaunchPlan};
use measured_boot::FirmwareImage;

/// `cvm image initramfs`.
#[derive(Debug, clap::Args)]
pub struct InitramfsArgs {
    /// The initramfs to write (newc cpio, uncompressed); must not exist, unless --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// `text` or `json` (what went in and, with --kernel and --cmdline, the reference
    /// values, on standard output).
    #[arg(long, visible_alias = "output-format", value_enum, default_value_t)]
    pub output: cli_support::Output,
    /// The cvm-agent binary (default: `cvm-agent` next to this `cvm`).
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Kernel release whose modules to take from /lib/modules/V (default: the only one
    /// installed), or the one to pick inside --modules-from.
    #[arg(long, value_name = "V")]
    pub kernel_version: Option<String>,
    /// Take the modules from DIR: a `lib/modules/V` directory, or a tree holding
    /// `lib/modules/V` or `usr/lib/modules/V` (e.g. `dpkg-deb -x linux-image-….deb DIR`).
    #[arg(long, value_name = "DIR")]
    pub modules_from: Option<PathBuf>,
    /// The agent talks to this verifier directly: `https://HOST:PORT` (with
    /// --ca-cert) or `http://IP:PORT` (loopback tests only). Default: the VMM's
    /// attestation relay on vsock port 50000 (`cvm launch --url`).
    #[arg(long = "url", visible_alias = "verifier", value_name = "URL")]
    pub verifier: Option<String>,
    /// CA certificate (PEM) the agent trusts for an https --url; copied into the
    /// image.
    #[arg(
        long = "ca-cert",
        visible_alias = "verifier-ca",
        value_name = "FILE",
        requires = "verifier"
    )]
    pub verifier_ca: Option<PathBuf>,
    /// KBS resource of the disk key, repo/type/tag (default: `cvm.kbs_resource=` on the
    /// kernel command line at boot).
    #[arg(long, value_name = "REPO/TYPE/TAG")]
    pub resource: Option<String>,
    /// The pinned verifier key (`cvm-verifier identity` prints it), baked into `/init`
    /// as `cvm-agent --verifier-key` (default: `cvm.verifier_key=` on the kernel command
    /// line at boot; the agent refuses to attest without a pin).
    #[arg(long, value_name = "BASE64URL")]
    pub verifier_key: Option<String>,
    /// The LUKS2 block device in the guest.
    #[arg(long, default_value = "/dev/vda")]
    pub device: String,
    /// The init of the root file system, for switch_root.
    #[arg(long, default_value = "/sbin/init")]
    pub root_init: String,
    /// An extra kernel module to load (with its dependencies), by name (repeatable).
    #[arg(long = "module", value_name = "NAME")]
    pub modules: Vec<String>,
    /// busybox binary (Debian busybox-static).
    #[arg(long, default_value = "/bin/busybox", value_name = "PATH")]
    pub busybox: PathBuf,
    /// cryptsetup binary (default: the first of /usr/sbin/cryptsetup, /sbin/cryptsetup).
    #[arg(long, value_name = "PATH")]
    pub cryptsetup: Option<PathBuf>,
    /// The kernel (bzImage) this initramfs boots with: with --cmdline, the launch
    /// measurements are computed and printed.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// The kernel command line (with --kernel).
    #[arg(
        long,
        visible_alias = "append",
        value_name = "CMDLINE",
        requires = "kernel",
        allow_hyphen_values = true
    )]
    pub cmdline: Option<String>,
    /// vCPUs, for the printed SNP measurement.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// vCPU model, for the printed SNP measurement.
    #[arg(long, default_value = "EPYC-v4")]
    pub vcpu_type: String,
}

/// Why `cvm image initramfs` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// The agent binary is missing.
    #[error(
        "no cvm-agent at {0}: build it with `RUSTFLAGS=\"-C target-feature=+crt-static\" \
         cargo build --release -p guest-agent --bin cvm-agent --target x86_64-unknown-linux-gnu` \
         (static) or `cargo build --release -p guest-agent --bin cvm-agent`, or pass --agent PATH"
    )]
    NoAgent(PathBuf),
    /// A file could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The output could not be written.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    /// A binary is not a usable ELF file.
    #[error("{0} is not a usable x86-64 ELF file: {1}")]
    Elf(PathBuf, String),
    /// A shared library was not found.
    #[error("{lib}, needed by {by}, not found (searched {dirs})")]
    LibraryNotFound {
        /// The soname.
        lib: String,
        /// Who needs it.
        by: String,
        /// Where we looked.
        dirs: String,
    },
    /// A helper program failed.
    #[error("{0}")]
    Tool(String),
    /// No kernel modules directory.
    #[error("{0}")]
    Modules(String),
    /// A required module is neither a module nor built in.
    #[error("kernel module {0} is neither in {1} nor built in (modules.builtin)")]
    ModuleMissing(String, PathBuf),
    /// Arguments are inconsistent.
    #[error("{0}")]
    Usage(String),
    /// The measurement could not be computed.
    #[error("cannot compute the launch measurements: {0}")]
    Measure(String),
}

impl cli_support::ExitClass for InitramfsError {
    fn exit_code(&self) -> u8 {
        match self {
            // Missing, unreadable or unusable inputs and inconsistent flags.
            InitramfsError::NoAgent(_)
            | InitramfsError::Read(..)
            | InitramfsError::Elf(..)
            | InitramfsError::LibraryNotFound { .. }
            | InitramfsError::Modules(_)
            | InitramfsError::ModuleMissing(..)
            | InitramfsError::Usage(_)
            | InitramfsError::Measure(_) => cli_support::EXIT_USAGE,
            // The work failed: writing the archive, a helper program.
            InitramfsError::Write(..) | InitramfsError::Tool(_) => cli_support::EXIT_FAILURE,
        }
    }
}

type Result<T, E = InitramfsError> = std::result::Result<T, E>;

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| InitramfsError::Read(p.to_owned(), e))
}

/// What went into the image, for the summary.
#[derive(Debug)]
pub struct Built {
    /// Bytes written.
    pub size: u64,
    /// Paths in the archive (without a leading `/`).
    pub paths: Vec<String>,
    /// Libraries (and loaders) brought for dynamically linked binaries.
    pub libraries: usize,
    /// Whether the agent is statically linked.
    pub agent_static: bool,
    /// Whether the agent still has debug information (`strip` shrinks it ~5×).
    pub agent_debug: bool,
    /// The module tree used.
    pub kernel_version: String,
    /// Modules in load order.
    pub modules: Vec<String>,
    /// Requested modules that are built in.
    pub builtin: Vec<String>,
    /// Optional modules the kernel lacks.
    pub absent: Vec<String>,
}

fn default_agent() -> Result<PathBuf> {
    let exe =
        std::env::current_exe().map_err(|e| InitramfsError::Read("/proc/self/exe".into(), e))?;
    Ok(exe
        .parent()
        .map(|d| d.join("cvm-agent"))
        .unwrap_or_else(|| PathBuf::from("cvm-agent")))
}

/// Builds the archive and writes it to `--out` (through a temporary file beside it).
pub fn build(a: &InitramfsArgs) -> Result<Built> {
    // Validate everything before the slow parts.
    cli_support::check_overwrite(&a.out, a.force)
        .map_err(|e| InitramfsError::Usage(e.to_string()))?;
    let mut agent_args = kbs_args(a)?;
    if let Some(r) = &a.resource {
        let parts: Vec<&str> = r.split('/').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(InitramfsError::Usage(format!(
                "--resource {r}: expected repo/type/tag"
            )));
        }
        agent_args.extend(["--resource".into(), r.clone()]);
    }
    if let Some(k) = &a.verifier_key {
        // The key itself is checked by the agent at boot; here only its alphabet, so that
        // it cannot break the quoting of /init.
        let b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if k.len() != 87 || !k.bytes().all(b64url) {
            return Err(InitramfsError::Usage(format!(
                "--verifier-key {k}: expected the 87-character base64url key that \
                 `cvm-verifier identity` prints"
            )));
        }
        agent_args.extend(["--verifier-key".into(), k.clone()]);
    }
    if !a.device.starts_with("/dev/") {
        return Err(InitramfsError::Usage(format!(
            "--device {}: expected a /dev path",
            a.device
        )));
    }
    if !a.root_init.starts_with('/') {
        return Err(InitramfsError::Usage(format!(
            "--root-init {}: expected an absolute path",
            a.root_init
        )));
    }
    agent_args.extend([
        "--device".into(),
        a.device.clone(),
        "--mount".into(),
        "/newroot".into(),
    ]);
    let agent = match &a.agent {
        Some(p) => p.clone(),
        None => default_agent()?,
    };
    if !agent.is_file() {
        return Err(InitramfsError::NoAgent(agent));
    }
    let cryptsetup = match &a.cryptsetup {
        Some(p) => p.clone(),
        None => ["/usr/sbin/cryptsetup", "/sbin/cryptsetup"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                InitramfsError::Tool(
                    "no cryptsetup in /usr/sbin or /sbin (apt-get install cryptsetup-bin), \
                     or pass --cryptsetup PATH"
                        .into(),
                )
            })?,
    };
    let tree = ModuleTree::locate(a.kernel_version.as_deref(), a.modules_from.as_deref())?;
    let mut requested: Vec<(String, bool)> =
        MODULES.iter().map(|(n, r)| (n.to_string(), *r)).collect();
    requested.extend(a.modules.iter().map(|m| (m.clone(), true)));
    let plan = tree.plan(&requested)?;

    let mut ar = Archive::default();
    for d in [
        "dev",
        "proc",
        "sys",
        "run/cryptsetup",
        "newroot",
        "tmp",
        "etc",
    ] {
        ar.add(d, Entry::Dir);
    }
    ar.add(
        "dev/console",
        Entry::CharDev {
            major: 5,
            minor: 1,
            mode: 0o600,
        },
    );

    let agent_bytes = read(&agent)?;
    let agent_static = elf_deps(&agent_bytes)
        .map_err(|e| InitramfsError::Elf(agent.clone(), e))?
        .interp
        .is_none();
    let agent_debug = matches!(elf_section(&agent_bytes, ".debug_info"), Ok(Some(_)));
    drop(agent_bytes);
    let mut libraries = add_elf(&mut ar, &agent, "bin/cvm-agent")?;
    libraries += add_elf(&mut ar, &a.busybox, "bin/busybox")?;
    let list = std::process::Command::new(&a.busybox)
        .arg("--list")
        .output()
        .map_err(|e| {
            InitramfsError::Tool(format!(
                "cannot run {} --list (apt-get install busybox-static): {e}",
                a.busybox.display()
            ))
        })?;
    let have: BTreeSet<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    for app in APPLETS {
        if !have.contains(*app) {
            return Err(InitramfsError::Tool(format!(
                "{} has no `{app}` applet (use Debian's busybox-static)",
                a.busybox.display()
            )));
        }
        ar.add(&format!("bin/{app}"), Entry::Symlink("busybox".into()));
    }
    libraries += add_elf(&mut ar, &cryptsetup, "sbin/cryptsetup")?;

    for (path, _) in &plan.load {
        let data = tree.module_bytes(path)?;
        ar.add(
            &module_dest(&tree.version, path),
            Entry::File { data, mode: 0o644 },
        );
    }
    if let Some(ca) = &a.verifier_ca {
        ar.add(
            VERIFIER_CA,
            Entry::File {
                data: read(ca)?,
                mode: 0o644,
            },
        );
    }
    let load: Vec<(String, bool)> = plan
        .load
        .iter()
        .map(|(p, r)| (module_dest(&tree.version, p), *r))
        .collect();
    ar.add(
        "init",
        Entry::File {
            data: init_script(&agent_args, &load, a).into_bytes(),
            mode: 0o755,
        },
    );

    let mut tmp_name = a.out.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let write = || -> std::io::Result<u64> {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        let n = ar.write_newc(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, &a.out)?;
        Ok(n)
    };
    let size = write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        InitramfsError::Write(a.out.clone(), e)
    })?;
    Ok(Built {
        size,
        paths: ar.entries.keys().cloned().collect(),
        libraries,
        agent_static,
        agent_debug,
        kernel_version: tree.version.clone(),
        modules: plan.load.iter().map(|(p, _)| module_name(p)).collect(),
        builtin: plan.builtin,
        absent: plan.absent,
    })
}

/// SNP launch digest, TDX MRTD and RTMR0–3.
type Measurements = ([u8; 48], [u8; 48], [[u8; 48]; 4]);

/// The launch measurements for kernel + this initramfs + cmdline with the embedded
/// firmware.
fn measurements(a: &InitramfsArgs, kernel: &Path, cmdline: &str) -> Result<Measurements> {
    let m = |e: &dyn std::fmt::Display| InitramfsError::Measure(e.to_string());
    let fw_bytes = guest_images::embedded().map_err(|e| m(&e))?;
    let kernel = read(kernel)?;
    let initrd = read(&a.out)?;
    let fw = FirmwareImage::parse(fw_bytes.to_vec()).map_err(|e| m(&e))?;
    let vcpu_sig = measured_boot::snp::cpu::sig_by_name(&a.vcpu_type)
        .ok_or_else(|| m(&format!("unknown vCPU type `{}`", a.vcpu_type)))?;
    let snp = SnpLaunchPlan::new(
        fw.clone(),
        SnpPlanConfig {
            vcpus: a.vcpus,
            vcpu_sig,
            guest_features: 1,
            vmm_type: VmmType::Qemu,
            hashes: Some(SevHashes::compute(&kernel, Some(&initrd), Some(cmdline))),
        },
    )
    .map_err(|e| m(&e))?;
    let tdx = TdxLaunchPlan::new(
        fw,
        Some(DirectBoot::measure(&kernel, Some(&initrd), Some(cmdline))),
    )
    .map_err(|e| m(&e))?;
    Ok((snp.launch_digest(), tdx.mrtd(), tdx.rtmrs()))
}

/// Runs `cvm image initramfs`.
pub fn run(a: &InitramfsArgs) -> ExitCode {
    let b = match build(a) {
        Ok(b) => b,
        Err(e) => return cli_support::exit_with(&e),
    };
    if a.output.is_json() {
        let reference = match (&a.kernel, &a.cmdline) {
            (Some(k), Some(c)) => match measurements(a, k, c) {
                Ok((snp, mrtd, rtmrs)) => serde_json::json!({
                    "snp": {"tee": "snp", "measurement": hex::encode(snp),
                            "vcpus": a.vcpus, "vcpu_type": a.vcpu_type},
                    "tdx": {"tee": "tdx", "mrtd": hex::encode(mrtd),
                            "rtmrs": rtmrs.iter().map(hex::encode).collect::<Vec<_>>()},
                }),
                Err(e) => return cli_support::exit_with(&e),
            },
            _ => serde_json::Value::Null,
        };
        cli_support::output::print_json(&serde_json::json!({
            "path": a.out,
            "bytes": b.size,
            "entries": b.paths.len(),
            "agent_static": b.agent_static,
            "shared_libraries": b.libraries,
            "kernel_version": b.kernel_version,
            "modules": b.modules,
            "builtin": b.builtin,
            "absent": b.absent,
            "reference_values": reference,
        }));
        return ExitCode::SUCCESS;
    }
    println!(
        "created {}: newc cpio, {} bytes, {} entries",
        a.out.display(),
        b.size,
        b.paths.len()
    );
    println!(
        "  cvm-agent ({}), busybox, cryptsetup; {} shared libraries and loaders",
        if b.agent_static {
            "static"
        } else {
            "dynamically linked: its libraries are included"
        },
        b.libraries
    );
    if b.agent_debug {
        println!(
            "  note: the agent has debug information; `strip` it (or build with \
             `-C strip=symbols`) for a smaller initramfs"
        );
    }
    println!(
        "  kernel {} modules, in load order: {}",
        b.kernel_version,
        b.modules.join(" ")
    );
    if !b.builtin.is_empty() {
        println!("  built into the kernel: {}", b.builtin.join(" "));
    }
    if !b.absent.is_empty() {
        println!("  not available (optional): {}", b.absent.join(" "));
    }
    let kernel = a.kernel.clone().unwrap_or_else(|| {
        let name = format!("boot/vmlinuz-{}", b.kernel_version);
        a.modules_from
            .as_ref()
            .map(|d| d.join(&name))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| Path::new("/").join(name))
    });
    let resource_hint = match &a.resource {
        Some(_) => String::new(),
        None => " cvm.kbs_resource=REPO/TYPE/TAG".into(),
    };
    let cmdline = a
        .cmdline
        .clone()
        .unwrap_or_else(|| format!("console=ttyS0{resource_hint}"));
    if a.verifier_key.is_none() && !cmdline.contains("cvm.verifier_key=") {
        println!(
            "  warning: no --verifier-key and no cvm.verifier_key= in --cmdline: the agent \
             refuses to attest without a pinned verifier (`cvm-verifier identity` prints it)"
        );
    }
    if a.resource.is_none() && !cmdline.contains("cvm.kbs_resource=") {
        println!(
            "  warning: no --resource and no cvm.kbs_resource= in --cmdline: the agent \
             will have no resource to ask for"
        );
    }
    let q = |s: &str| sh_quote(s);
    println!("reference values: the launch measurement covers this initramfs byte for byte;");
    println!("compute it for the kernel and command line you will launch with (or put them");
    println!("in a VM description file and run `cvm measure --config FILE --output json`):");
    println!(
        "  cvm measure snp --vcpus {} --vcpu-type {} --kernel {} --initrd {} --cmdline {}",
        a.vcpus,
        a.vcpu_type,
        q(&kernel.to_string_lossy()),
        q(&a.out.to_string_lossy()),
        q(&cmdline)
    );
    println!(
        "  cvm measure tdx --kernel {} --initrd {} --cmdline {} --output json",
        q(&kernel.to_string_lossy()),
        q(&a.out.to_string_lossy()),
        q(&cmdline)
    );
    if let (Some(k), Some(c)) = (&a.kernel, &a.cmdline) {
        match measurements(a, k, c) {
            Ok((snp, mrtd, rtmrs)) => {
                println!("with the firmware built into this cvm:");
                println!(
                    "  snp measurement ({} vCPU, {}): {}",
                    a.vcpus,
                    a.vcpu_type,
                    hex::encode(snp)
                );
                println!("  tdx mrtd: {}", hex::encode(mrtd));
                for (i, r) in rtmrs.iter().enumerate() {
                    println!("  tdx rtmr{i}: {}", hex::encode(r));
                }
            }
            Err(e) => return cli_support::exit_with(&e),
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_quoting() {
        assert_eq!(module_name("kernel/drivers/md/dm-crypt.ko.xz"), "dm_crypt");
        assert_eq!(module_name("kernel/crypto/xts.ko"), "xts");
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(
            module_dest("6.1", "kernel/crypto/xts.ko.zst"),
            "lib/modules/6.1/kernel/crypto/xts.ko"
        );
    }

    #[test]
    fn newc_layout() {
        let mut ar = Archive::default();
        ar.add(
            "a/b",
            Entry::File {
                data: b"hello".to_vec(),
                mode: 0o644,
            },
        );
        let mut out = Vec::new();
        let n = ar.write_newc(&mut out).unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(out.len() % 4, 0);
        // "a" (directory) first, then "a/b", then the trailer.
        assert!(out.starts_with(b"070701"));
        assert_eq!(&out[110..112], b"a\0");
        assert!(out.windows(5).any(|w| w == b"hello"));
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn modules_dep_order() {
        let d = parse_modules_dep("a.ko: b.ko c.ko\nb.ko: c.ko\nc.ko:\n");
        assert_eq!(d["a.ko"], vec!["b.ko", "c.ko"]);
        let tree = ModuleTree {
            root: PathBuf::from("/nonexistent"),
            version: "v".into(),
            by_name: d.keys().map(|k| (module_name(k), k.clone())).collect(),
            deps: Some(d),
            builtin: BTreeSet::from(["z".to_owned()]),
        };
        let plan = tree
            .plan(&[("a".into(), true), ("z".into(), true), ("q".into(), false)])
            .unwrap();
        let order: Vec<&str> = plan.load.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(order, ["c.ko", "b.ko", "a.ko"]);
        assert_eq!(plan.builtin, ["z"]);
        assert_eq!(plan.absent, ["q"]);
        assert!(tree.plan(&[("q".into(), true)]).is_err());
    }
}
