//! The VM description file: one TOML file (`version = 1`) holding everything that
//! determines a guest's measurement and its launch, read by both `cvm measure --config`
//! and `cvm launch --config`, so the reference value an operator registers and the guest
//! that is launched cannot drift apart. The schema is documented in
//! `docs/vm-description.md`; unknown keys are refused with the key named.
//!
//! Relative paths in the file are relative to the file's directory. Command-line flags
//! override the file, and every override is logged at INFO.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The only schema version.
pub const VERSION: u32 = 1;

/// The most vCPUs any TEE can be launched (and so measured) with: the VMM describes
/// vCPUs to the guest with 8-bit xAPIC IDs in its MADT (host-vmm `acpi`), so 255 for
/// every TEE. `cvm launch` and `cvm measure` both check it.
pub const MAX_VCPUS: u32 = 255;

/// The vCPU limit of `tee` (one table shared by launch and measure).
pub fn max_vcpus(_tee: TeeName) -> u32 {
    MAX_VCPUS
}

/// Smallest guest memory the VMM accepts.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest memory the VMM accepts.
pub const MAX_MEMORY: u64 = 1 << 40;

/// The TEE names of the file and of `--tee`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TeeName {
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

impl TeeName {
    /// Whether the launch measures like SEV-SNP.
    pub fn is_snp(self) -> bool {
        matches!(self, TeeName::Snp | TeeName::EmulatedSnp)
    }
    /// Whether the launch measures like TDX.
    pub fn is_tdx(self) -> bool {
        matches!(self, TeeName::Tdx | TeeName::EmulatedTdx)
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    /// Schema version; must be 1.
    pub version: u32,
    /// The TEE.
    pub tee: Option<TeeName>,
    /// Firmware image path, or `built-in` (the default).
    pub firmware: Option<String>,
    /// Guest memory, a size with a unit (`512M`).
    pub memory: Option<String>,
    /// vCPUs.
    pub vcpus: Option<u32>,
    /// Directory of the emulated platform (`cvm emulated init`), for emulated TEEs.
    pub emulated_platform: Option<PathBuf>,
    /// Direct boot.
    #[serde(default)]
    pub boot: Boot,
    /// SEV-SNP settings.
    pub snp: Option<Snp>,
    /// TDX settings.
    pub tdx: Option<Tdx>,
    /// Devices.
    #[serde(default)]
    pub devices: Devices,
    /// The attestation relay to the verifier.
    pub attestation: Option<Attestation>,
    /// Resource limits (cgroup).
    #[serde(default)]
    pub limits: Limits,
    /// Network interfaces (`[[net]]`, see `super::net`).
    #[serde(default)]
    pub net: Vec<super::net::NetTable>,
    /// The network policy of the VM's taps (default deny).
    pub network_policy: Option<crate::net_policy::NetworkPolicyToml>,
}

/// `[boot]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Kernel (bzImage).
    pub kernel: Option<PathBuf>,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
}

/// `[snp]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snp {
    /// Guest policy, hex (`0x30000`).
    pub policy: Option<String>,
    /// vCPU model of the VMSAs (`EPYC-v4`).
    pub cpu: Option<String>,
    /// HOST_DATA, hex, up to 32 bytes.
    pub host_data: Option<String>,
    /// ID block file (96 bytes).
    pub id_block: Option<PathBuf>,
    /// ID authentication file (4096 bytes).
    pub id_auth: Option<PathBuf>,
    /// GHCB certificate table file.
    pub certs: Option<PathBuf>,
}

/// `[tdx]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tdx {
    /// MRCONFIGID, hex, up to 48 bytes.
    pub mrconfigid: Option<String>,
    /// The Quote Generation Service socket.
    pub qgs: Option<PathBuf>,
}

/// `[devices]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    /// `stdout`, `none` or `file:PATH`.
    pub serial: Option<String>,
    /// virtio-blk disks.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// virtio-vsock.
    pub vsock: Option<Vsock>,
    /// The REST control API socket.
    pub api_socket: Option<PathBuf>,
}

/// `[[devices.disks]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Image path.
    pub path: PathBuf,
    /// Read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// `[devices.vsock]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Guest CID.
    pub cid: Option<u64>,
    /// Hybrid vsock Unix socket.
    pub uds: Option<PathBuf>,
}

/// `[attestation]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// The verifier's URL.
    pub url: Option<String>,
    /// CA certificate(s) trusted for an https URL.
    pub ca_cert: Option<PathBuf>,
}

/// `[limits]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU time in percent of one CPU.
    pub cpu_quota: Option<u32>,
    /// Memory limit of the whole VMM process, a size.
    pub memory: Option<String>,
    /// CPUs the VM may run on (`0-1`).
    pub cpus: Option<String>,
    /// Parent cgroup.
    pub cgroup_parent: Option<String>,
}

/// Why a description file is refused.
#[derive(Debug, thiserror::Error)]
pub enum DescriptionError {
    /// The file could not be read.
    #[error("cannot read the VM description {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// Not TOML of this schema (the message names the key and line).
    #[error("{0} is not a valid VM description: {1}")]
    Parse(PathBuf, String),
    /// Another schema version.
    #[error("{0}: version = {1} is not supported (this cvm reads version = {VERSION})")]
    Version(PathBuf, u32),
    /// A value is wrong; the key is named.
    #[error("{file}: `{key}`: {problem}")]
    Value {
        /// The file.
        file: PathBuf,
        /// The key (`memory`, `snp.policy`).
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// A loaded file: its contents with paths made absolute.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Where it was read from.
    pub path: PathBuf,
    /// The contents.
    pub desc: Description,
}

impl Loaded {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Self, DescriptionError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DescriptionError::Read(path.to_owned(), e))?;
        Self::parse(path, &text)
    }

    /// Parses `text` as the file `path` (relative paths resolve against its directory).
    pub fn parse(path: &Path, text: &str) -> Result<Self, DescriptionError> {
        let mut desc: Description = toml::from_str(text)
            .map_err(|e| DescriptionError::Parse(path.to_owned(), e.to_string()))?;
        if desc.version != VERSION {
            return Err(DescriptionError::Version(path.to_owned(), desc.version));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let abs_opt = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        };
        if let Some(f) = &mut desc.firmware {
            if f != "built-in" && Path::new(f.as_str()).is_relative() {
                *f = base.join(f.as_str()).display().to_string();
            }
        }
        abs_opt(&mut desc.emulated_platform);
        abs_opt(&mut desc.boot.kernel);
        abs_opt(&mut desc.boot.initrd);
        if let Some(s) = &mut desc.snp {
            abs_opt(&mut s.id_block);
            abs_opt(&mut s.id_auth);
            abs_opt(&mut s.certs);
        }
        if let Some(t) = &mut desc.tdx {
            abs_opt(&mut t.qgs);
        }
        for d in &mut desc.devices.disks {
            abs(&mut d.path);
        }
        if let Some(v) = &mut desc.devices.vsock {
            abs_opt(&mut v.uds);
        }
        abs_opt(&mut desc.devices.api_socket);
        if let Some(a) = &mut desc.attestation {
            abs_opt(&mut a.ca_cert);
        }
        if let Some(s) = &mut desc.devices.serial {
            if let Some(p) = s.strip_prefix("file:") {
                if Path::new(p).is_relative() && !p.is_empty() {
                    *s = format!("file:{}", base.join(p).display());
                }
            }
        }
        let loaded = Self {
            path: path.to_owned(),
            desc,
        };
        loaded.check_sections()?;
        Ok(loaded)
    }

    /// A value error naming `key`.
    pub fn bad(&self, key: &'static str, problem: impl Into<String>) -> DescriptionError {
        DescriptionError::Value {
            file: self.path.clone(),
            key,
            problem: problem.into(),
        }
    }

    /// `[snp]` only with an SNP TEE, `[tdx]` only with a TDX one.
    fn check_sections(&self) -> Result<(), DescriptionError> {
        let Some(tee) = self.desc.tee else {
            return Ok(());
        };
        if self.desc.snp.is_some() && !tee.is_snp() {
            return Err(self.bad(
                "snp",
                "an [snp] section needs tee = \"snp\" or \"emulated-snp\"",
            ));
        }
        if self.desc.tdx.is_some() && !tee.is_tdx() {
            return Err(self.bad(
                "tdx",
                "a [tdx] section needs tee = \"tdx\" or \"emulated-tdx\"",
            ));
        }
        Ok(())
    }

    /// The firmware: `None` for the built-in one.
    pub fn firmware(&self) -> Option<PathBuf> {
        match self.desc.firmware.as_deref() {
            None | Some("built-in") => None,
            Some(p) => Some(PathBuf::from(p)),
        }
    }

    /// Guest memory in bytes.
    pub fn memory(&self) -> Result<Option<u64>, DescriptionError> {
        self.desc
            .memory
            .as_deref()
            .map(|m| parse_memory(m).map_err(|e| self.bad("memory", e)))
            .transpose()
    }

    /// The vCPU count, checked against the TEE's limit.
    pub fn vcpus(&self) -> Result<Option<u32>, DescriptionError> {
        self.desc
            .vcpus
            .map(|n| {
                check_vcpus(n, self.desc.tee.unwrap_or(TeeName::None))
                    .map_err(|e| self.bad("vcpus", e))
            })
            .transpose()
    }

    /// The host data (`snp.host_data` or `tdx.mrconfigid`), as bytes.
    pub fn host_data(&self) -> Result<Option<Vec<u8>>, DescriptionError> {
        if let Some(h) = self.desc.snp.as_ref().and_then(|s| s.host_data.as_deref()) {
            return parse_hex(h, 32)
                .map(Some)
                .map_err(|e| self.bad("snp.host_data", e));
        }
        if let Some(h) = self.desc.tdx.as_ref().and_then(|t| t.mrconfigid.as_deref()) {
            return parse_hex(h, 48)
                .map(Some)
                .map_err(|e| self.bad("tdx.mrconfigid", e));
        }
        Ok(None)
    }

    /// The SNP policy.
    pub fn policy(&self) -> Result<Option<u64>, DescriptionError> {
        self.desc
            .snp
            .as_ref()
            .and_then(|s| s.policy.as_deref())
            .map(|p| {
                u64::from_str_radix(p.trim().trim_start_matches("0x"), 16)
                    .map_err(|_| self.bad("snp.policy", format!("`{p}` is not a hex number")))
            })
            .transpose()
    }

    /// The validated `[network_policy]`, if the file has one.
    pub fn network_policy(
        &self,
    ) -> Result<Option<crate::net_policy::NetworkPolicy>, DescriptionError> {
        self.desc
            .network_policy
            .as_ref()
            .filter(|p| !p.is_unfiltered_opt_out())
            .map(|p| {
                p.validate()
                    .map_err(|e| self.bad("network_policy", e.to_string()))
            })
            .transpose()
    }

    /// Whether the description opts out of filtering (`[network_policy] unfiltered =
    /// true`, alone in its section).
    pub fn network_unfiltered(&self) -> bool {
        self.desc
            .network_policy
            .as_ref()
            .is_some_and(|p| p.is_unfiltered_opt_out())
    }

    /// The SNP vCPU model.
    pub fn cpu(&self) -> Option<String> {
        self.desc.snp.as_ref().and_then(|s| s.cpu.clone())
    }
}

/// Parses and bounds a guest memory size, with a hint for a number that lacks its unit.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let n = cli_support::units::parse_size(s).map_err(|e| e.to_string())?;
    if n < MIN_MEMORY {
        let hint = if s.trim().chars().all(|c| c.is_ascii_digit()) {
            format!("; did you mean {}M?", s.trim())
        } else {
            String::new()
        };
        return Err(format!(
            "{n} bytes is below the minimum of {} MiB{hint}",
            MIN_MEMORY >> 20
        ));
    }
    if n > MAX_MEMORY {
        return Err(format!(
            "{s} is above the maximum of {} GiB",
            MAX_MEMORY >> 30
        ));
    }
    if n % (2 << 20) != 0 {
        return Err(format!(
            "{n} bytes is not a multiple of 2 MiB (for example 512M, 2G)"
        ));
    }
    Ok(n)
}

/// Checks a vCPU count against `tee`'s limit.
pub fn check_vcpus(n: u32, tee: TeeName) -> Result<u32, String> {
    let max = max_vcpus(tee);
    if n == 0 || n > max {
        return Err(format!("{n} vCPUs: a guest has 1 to {max}"));
    }
    Ok(n)
}

/// `--vcpus`: a count in the range every TEE supports (the TEE-specific limit is checked
/// again once the TEE is known).
pub fn parse_vcpus(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of vCPUs"))?;
    check_vcpus(n, TeeName::None)
}

/// Hex of at most `max` bytes.
pub fn parse_hex(s: &str, max: usize) -> Result<Vec<u8>, String> {
    let b =
        hex::decode(s.trim().trim_start_matches("0x")).map_err(|_| format!("`{s}` is not hex"))?;
    if b.len() > max {
        return Err(format!("{} bytes; at most {max}", b.len()));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, DescriptionError> {
        Loaded::parse(Path::new("/etc/cvm/vm.toml"), text)
    }

    #[test]
    fn a_full_description_parses_and_paths_resolve_against_its_directory() {
        let l = parse(
            r#"
version = 1
tee = "emulated-snp"
firmware = "fw.fd"
memory = "512MB"
vcpus = 2
emulated_platform = "platform"
[boot]
kernel = "/boot/bzImage"
initrd = "initrd.cpio"
cmdline = "console=ttyS0"
[snp]
policy = "0x30000"
cpu = "EPYC-Milan"
host_data = "aa"
[devices]
serial = "file:serial.log"
disks = [{ path = "disk.img", readonly = true }]
vsock = { cid = 7 }
[attestation]
url = "https://127.0.0.1:8443"
ca_cert = "ca.pem"
[limits]
cpu_quota = 150
memory = "600M"
"#,
        )
        .unwrap();
        assert_eq!(l.firmware(), Some(PathBuf::from("/etc/cvm/fw.fd")));
        assert_eq!(l.memory().unwrap(), Some(512 << 20));
        assert_eq!(l.vcpus().unwrap(), Some(2));
        assert_eq!(l.desc.boot.kernel, Some(PathBuf::from("/boot/bzImage")));
        assert_eq!(
            l.desc.boot.initrd,
            Some(PathBuf::from("/etc/cvm/initrd.cpio"))
        );
        assert_eq!(l.desc.devices.disks[0].path, Path::new("/etc/cvm/disk.img"));
        assert_eq!(
            l.desc.devices.serial.as_deref(),
            Some("file:/etc/cvm/serial.log")
        );
        assert_eq!(l.host_data().unwrap(), Some(vec![0xaa]));
        assert_eq!(l.policy().unwrap(), Some(0x30000));
        assert_eq!(l.cpu().as_deref(), Some("EPYC-Milan"));
    }

    #[test]
    fn unknown_keys_bad_versions_and_bad_values_are_named() {
        let e = parse("version = 1\ntee = \"none\"\nmemmory = \"1G\"\n").unwrap_err();
        assert!(e.to_string().contains("memmory"), "{e}");
        let e = parse("version = 1\n[boot]\nkernal = \"k\"\n").unwrap_err();
        assert!(e.to_string().contains("kernal"), "{e}");
        let e = parse("version = 2\n").unwrap_err();
        assert!(e.to_string().contains("version = 2"), "{e}");
        let e = parse("tee = \"none\"\n").unwrap_err();
        assert!(e.to_string().contains("version"), "{e}");
        let e = parse("version = 1\ntee = \"sgx\"\n").unwrap_err();
        assert!(e.to_string().contains("sgx"), "{e}");
        let l = parse("version = 1\nmemory = \"512\"\n").unwrap();
        let e = l.memory().unwrap_err().to_string();
        assert!(
            e.contains("`memory`") && e.contains("did you mean 512M?"),
            "{e}"
        );
        let l = parse("version = 1\ntee = \"snp\"\nvcpus = 0\n").unwrap();
        assert!(l.vcpus().unwrap_err().to_string().contains("`vcpus`"));
        let e = parse("version = 1\ntee = \"snp\"\n[tdx]\nmrconfigid = \"00\"\n").unwrap_err();
        assert!(e.to_string().contains("[tdx]"), "{e}");
        let l = parse("version = 1\ntee = \"snp\"\n[snp]\nhost_data = \"zz\"\n").unwrap();
        assert!(l
            .host_data()
            .unwrap_err()
            .to_string()
            .contains("snp.host_data"));
    }

    #[test]
    fn memory_sizes_have_bounds_and_a_hint() {
        assert_eq!(parse_memory("512MB"), Ok(512 << 20));
        assert_eq!(parse_memory("2G"), Ok(2 << 30));
        let e = parse_memory("512").unwrap_err();
        assert_eq!(
            e,
            "512 bytes is below the minimum of 16 MiB; did you mean 512M?"
        );
        assert!(parse_memory("1M").unwrap_err().contains("minimum"));
        assert!(parse_memory("2T").unwrap_err().contains("maximum"));
        assert!(parse_memory("17M")
            .unwrap_err()
            .contains("multiple of 2 MiB"));
        assert!(parse_vcpus("0").is_err());
        assert!(parse_vcpus("256").is_err());
        assert_eq!(parse_vcpus("255"), Ok(255));
    }
}
