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
//! | `/etc/cvm/verifier-ca.pem` | with `--verifier https://…` |
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
//! `--verifier`); moves `/dev`, `/proc`, `/sys` under `/newroot` and `exec`s `switch_root
//! /newroot <--root-init>`. Any failure prints `cvm-init: FATAL: <reason>` and powers off
//! (`poweroff -f`, then sysrq `o`); `/init` never starts an interactive shell. The key
//! only exists inside `cvm-agent` and on its pipe to `cryptsetup`.
//!
//! The resource is `--resource`, or else `cvm.kbs_resource=` on the kernel command line
//! (read by the agent); `cvm.kbs_workload=` likewise. The verifier pin is
//! `--verifier-key` (baked into `/init`, so covered by the measurement of the initramfs),
//! or else `cvm.verifier_key=` on the (measured) kernel command line.

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
    /// The initramfs to write (newc cpio, uncompressed); replaced if it exists.
    #[arg(long)]
    pub out: PathBuf,
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
    /// --verifier-ca) or `http://IP:PORT` (loopback tests only). Default: the VMM's
    /// attestation relay on vsock port 50000 (`cvm launch --verifier`).
    #[arg(long, value_name = "URL")]
    pub verifier: Option<String>,
    /// CA certificate (PEM) the agent trusts for an https --verifier; copied into the
    /// image.
    #[arg(long, value_name = "FILE", requires = "verifier")]
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

type Result<T, E = InitramfsError> = std::result::Result<T, E>;

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| InitramfsError::Read(p.to_owned(), e))
}

// ---------------------------------------------------------------------------------------
// newc cpio

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32, mode: u32 },
}

/// An in-memory archive: paths without a leading `/`, sorted, parents created on demand.
#[derive(Debug, Default)]
struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/').to_owned();
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent {
            let s = p.to_string_lossy();
            if s.is_empty() {
                break;
            }
            self.entries.entry(s.into_owned()).or_insert(Entry::Dir);
            parent = p.parent();
        }
        self.entries.insert(path, entry);
    }

    fn has(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    /// The newc ("070701") encoding: header, name + NUL padded to 4, data padded to 4;
    /// `TRAILER!!!` last. A `BTreeMap` puts every directory before its contents.
    fn write_newc(&self, out: &mut impl Write) -> std::io::Result<u64> {
        let mut w = CountingWriter { inner: out, n: 0 };
        for (ino, (name, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (0o040755, &[], (0, 0)),
                Entry::File { data, mode } => (0o100000 | mode, data, (0, 0)),
                Entry::Symlink(t) => (0o120777, t.as_bytes(), (0, 0)),
                Entry::CharDev { major, minor, mode } => (0o020000 | mode, &[], (*major, *minor)),
            };
            let nlink = if matches!(entry, Entry::Dir) { 2 } else { 1 };
            newc_member(&mut w, ino as u32 + 1, mode, nlink, rdev, name, data)?;
        }
        newc_member(&mut w, 0, 0, 1, (0, 0), "TRAILER!!!", &[])?;
        Ok(w.n)
    }
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn pad4(w: &mut impl Write, len: u64) -> std::io::Result<()> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad as usize])
}

fn newc_member<W: Write>(
    w: &mut CountingWriter<'_, W>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let size = u32::try_from(data.len())
        .map_err(|_| std::io::Error::other(format!("{name} is larger than 4 GiB")))?;
    let namesize = name.len() as u32 + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check.
    let header = format!(
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w, 110 + u64::from(namesize))?;
    w.write_all(data)?;
    pad4(w, data.len() as u64)
}

// ---------------------------------------------------------------------------------------
// ELF: PT_INTERP, DT_NEEDED, DT_RUNPATH, and one section's bytes

/// What the dynamic loader needs to know about a file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ElfDeps {
    /// `PT_INTERP` (absent: statically linked, or a shared library).
    pub interp: Option<String>,
    /// `DT_NEEDED` sonames, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` or `DT_RPATH` directories.
    pub runpath: Vec<String>,
}

fn rd<const N: usize>(b: &[u8], off: u64) -> Result<[u8; N], String> {
    let off = usize::try_from(off).map_err(|_| "offset out of range".to_owned())?;
    b.get(off..off.checked_add(N).ok_or("offset overflow")?)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| format!("truncated at {off:#x}"))
}
fn u16_at(b: &[u8], off: u64) -> Result<u16, String> {
    rd::<2>(b, off).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], off: u64) -> Result<u32, String> {
    rd::<4>(b, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], off: u64) -> Result<u64, String> {
    rd::<8>(b, off).map(u64::from_le_bytes)
}
fn c_str_at(b: &[u8], off: u64) -> Result<String, String> {
    let s = usize::try_from(off)
        .ok()
        .and_then(|o| b.get(o..))
        .ok_or("string offset out of range")?;
    let end = s
        .iter()
        .position(|&c| c == 0)
        .ok_or("unterminated string")?;
    String::from_utf8(s[..end].to_vec()).map_err(|_| "string is not UTF-8".to_owned())
}

fn check_elf64(b: &[u8]) -> Result<(), String> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if b[4] != 2 || b[5] != 1 || u16_at(b, 0x12)? != 62 {
        return Err("not 64-bit little-endian x86-64".into());
    }
    Ok(())
}

/// Reads `PT_INTERP` and the `DT_NEEDED`/`DT_RUNPATH` entries of an ELF64 x86-64 file.
pub fn elf_deps(b: &[u8]) -> Result<ElfDeps, String> {
    check_elf64(b)?;
    let phoff = u64_at(b, 0x20)?;
    let phentsize = u64::from(u16_at(b, 0x36)?);
    let phnum = u64::from(u16_at(b, 0x38)?);
    let mut deps = ElfDeps::default();
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let (ty, off, vaddr, filesz) = (
            u32_at(b, ph)?,
            u64_at(b, ph + 8)?,
            u64_at(b, ph + 16)?,
            u64_at(b, ph + 32)?,
        );
        match ty {
            1 => loads.push((vaddr, off, filesz)),
            2 => dynamic = Some((off, filesz)),
            3 => deps.interp = Some(c_str_at(b, off)?),
            _ => {}
        }
    }
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(deps);
    };
    let mut strtab = None;
    let mut needed = Vec::new();
    let mut runpath = Vec::new();
    for i in 0..dyn_size / 16 {
        let tag = u64_at(b, dyn_off + 16 * i)?;
        let val = u64_at(b, dyn_off + 16 * i + 8)?;
        match tag {
            0 => break,
            1 => needed.push(val),
            5 => strtab = Some(val),
            15 | 29 => runpath.push(val),
            _ => {}
        }
    }
    if needed.is_empty() && runpath.is_empty() {
        return Ok(deps);
    }
    let strtab = strtab.ok_or("DT_NEEDED without DT_STRTAB")?;
    let strtab_off = loads
        .iter()
        .find(|(va, _, sz)| strtab >= *va && strtab < va + sz)
        .map(|(va, off, _)| strtab - va + off)
        .ok_or("DT_STRTAB outside the loaded segments")?;
    for n in needed {
        deps.needed.push(c_str_at(b, strtab_off + n)?);
    }
    for r in runpath {
        deps.runpath.extend(
            c_str_at(b, strtab_off + r)?
                .split(':')
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    Ok(deps)
}

/// The bytes of the section called `name`, if any.
fn elf_section<'a>(b: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, String> {
    check_elf64(b)?;
    let shoff = u64_at(b, 0x28)?;
    let shentsize = u64::from(u16_at(b, 0x3A)?);
    let shnum = u64::from(u16_at(b, 0x3C)?);
    let shstrndx = u64::from(u16_at(b, 0x3E)?);
    let names_off = u64_at(b, shoff + shstrndx * shentsize + 0x18)?;
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        if c_str_at(b, names_off + u64::from(u32_at(b, sh)?))? == name {
            let (off, size) = (u64_at(b, sh + 0x18)?, u64_at(b, sh + 0x20)?);
            let r = usize::try_from(off)
                .ok()
                .zip(usize::try_from(size).ok())
                .and_then(|(o, s)| b.get(o..o.checked_add(s)?));
            return r
                .map(Some)
                .ok_or_else(|| format!("section {name} out of range"));
        }
    }
    Ok(None)
}

/// Where shared libraries are searched after `DT_RUNPATH`: Debian's multiarch
/// directories (its ld.so's built-in path), then the classic ones.
pub const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Adds an ELF program at `dest`, and if it is dynamically linked its loader and its
/// libraries (recursively). Returns the number of libraries added (loader included).
fn add_elf(ar: &mut Archive, src: &Path, dest: &str) -> Result<usize> {
    let data = read(src)?;
    let deps = elf_deps(&data).map_err(|e| InitramfsError::Elf(src.to_owned(), e))?;
    ar.add(dest, Entry::File { data, mode: 0o755 });
    let mut added = 0;
    if let Some(interp) = &deps.interp {
        if !ar.has(interp) {
            let data = read(Path::new(interp))?;
            check_elf64(&data).map_err(|e| InitramfsError::Elf(interp.into(), e))?;
            ar.add(interp, Entry::File { data, mode: 0o755 });
            added += 1;
        }
    }
    let mut queue: Vec<(String, String, Vec<String>)> = deps
        .needed
        .iter()
        .map(|n| (n.clone(), dest.to_owned(), origin(&deps.runpath, src)))
        .collect();
    let mut seen = BTreeSet::new();
    while let Some((lib, by, runpath)) = queue.pop() {
        if !seen.insert(lib.clone()) {
            continue;
        }
        let (path, data) = find_library(&lib, &runpath).ok_or_else(|| {
            let mut dirs = runpath.clone();
            dirs.extend(LIBRARY_DIRS.iter().map(|s| s.to_string()));
            InitramfsError::LibraryNotFound {
                lib: lib.clone(),
                by: by.clone(),
                dirs: dirs.join(":"),
            }
        })?;
        let d = elf_deps(&data).map_err(|e| InitramfsError::Elf(path.clone(), e))?;
        let dest_lib = path.to_string_lossy().into_owned();
        for n in &d.needed {
            queue.push((n.clone(), lib.clone(), origin(&d.runpath, &path)));
        }
        if ar.has(&dest_lib) {
            continue;
        }
        // libc names the loader as a library too: link to the copy at PT_INTERP.
        let same_as_interp = deps.interp.as_ref().is_some_and(|i| {
            matches!(
                (std::fs::canonicalize(i), std::fs::canonicalize(&path)),
                (Ok(a), Ok(b)) if a == b
            )
        });
        if let (true, Some(i)) = (same_as_interp, &deps.interp) {
            ar.add(&dest_lib, Entry::Symlink(i.clone()));
        } else {
            ar.add(&dest_lib, Entry::File { data, mode: 0o755 });
            added += 1;
        }
    }
    Ok(added)
}

/// RUNPATH entries with `$ORIGIN` resolved against the file's directory.
fn origin(runpath: &[String], file: &Path) -> Vec<String> {
    let dir = file
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    runpath
        .iter()
        .map(|r| r.replace("${ORIGIN}", &dir).replace("$ORIGIN", &dir))
        .collect()
}

/// The first x86-64 ELF called `lib` in `runpath`, then [`LIBRARY_DIRS`].
fn find_library(lib: &str, runpath: &[String]) -> Option<(PathBuf, Vec<u8>)> {
    if lib.contains('/') {
        let data = std::fs::read(lib).ok()?;
        return check_elf64(&data).ok().map(|()| (PathBuf::from(lib), data));
    }
    runpath
        .iter()
        .map(String::as_str)
        .chain(LIBRARY_DIRS.iter().copied())
        .map(|d| Path::new(d).join(lib))
        .find_map(|p| {
            let data = std::fs::read(&p).ok()?;
            check_elf64(&data).ok().map(|()| (p, data))
        })
}

// ---------------------------------------------------------------------------------------
// Kernel modules

/// Modules `/init` loads: (name, required).
pub const MODULES: &[(&str, bool)] = &[
    ("virtio_mmio", true),
    ("virtio_blk", true),
    ("vsock", true),
    ("vmw_vsock_virtio_transport_common", true),
    ("vmw_vsock_virtio_transport", true),
    ("dm_mod", true),
    ("dm_crypt", true),
    ("xts", true),
    ("aesni_intel", false),
    ("aes_x86_64", false),
    ("sev_guest", false),
    ("ext4", false),
];

/// `kernel/drivers/md/dm-crypt.ko.xz` → `dm_crypt`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let base = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .unwrap_or(file);
    base.replace('-', "_")
}

fn is_module_file(path: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| path.ends_with(s))
}

/// A kernel's module tree.
#[derive(Debug)]
pub struct ModuleTree {
    /// `…/lib/modules/<version>`.
    pub root: PathBuf,
    /// The kernel release.
    pub version: String,
    /// Module name → path relative to `root`.
    by_name: BTreeMap<String, String>,
    /// Path → dependency paths, from modules.dep (None: read `.modinfo` instead).
    deps: Option<BTreeMap<String, Vec<String>>>,
    /// Built-in module names.
    builtin: BTreeSet<String>,
}

/// Which modules go in, in load order.
#[derive(Debug, Default)]
pub struct ModulePlan {
    /// Paths relative to the tree root, dependencies first, with whether the module was
    /// (or is a dependency of) a required one.
    pub load: Vec<(String, bool)>,
    /// Requested names that are built into the kernel.
    pub builtin: Vec<String>,
    /// Optional names the kernel has neither as module nor built in.
    pub absent: Vec<String>,
}

impl ModuleTree {
    /// Finds the tree from the arguments.
    pub fn locate(version: Option<&str>, from: Option<&Path>) -> Result<Self> {
        let root = match from {
            Some(dir) if dir.join("modules.dep").exists() || dir.join("kernel").is_dir() => {
                dir.to_owned()
            }
            Some(dir) => {
                let cands: Vec<PathBuf> = ["lib/modules", "usr/lib/modules"]
                    .iter()
                    .flat_map(|sub| subdirs(&dir.join(sub)))
                    .filter(|d| d.join("kernel").is_dir())
                    .filter(|d| version.is_none_or(|v| d.file_name() == Some(v.as_ref())))
                    .collect();
                one(cands, dir, version)?
            }
            None => match version {
                Some(v) => Path::new("/lib/modules").join(v),
                None => one(
                    subdirs(Path::new("/lib/modules"))
                        .into_iter()
                        .filter(|d| d.join("kernel").is_dir())
                        .collect(),
                    Path::new("/lib/modules"),
                    None,
                )?,
            },
        };
        if !root.join("kernel").is_dir() {
            return Err(InitramfsError::Modules(format!(
                "no kernel modules in {} (install linux-image-cloud-amd64, or pass \
                 --modules-from DIR)",
                root.display()
            )));
        }
        let version = version.map(str::to_owned).unwrap_or_else(|| {
            root.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let deps = match std::fs::read_to_string(root.join("modules.dep")) {
            Ok(text) => Some(parse_modules_dep(&text)),
            Err(_) => None,
        };
        let mut by_name = BTreeMap::new();
        match &deps {
            Some(d) => {
                for p in d.keys() {
                    by_name.insert(module_name(p), p.clone());
                }
            }
            None => walk_modules(&root, "kernel", &mut by_name),
        }
        let builtin = std::fs::read_to_string(root.join("modules.builtin"))
            .map(|t| t.lines().map(module_name).collect())
            .unwrap_or_default();
        Ok(Self {
            root,
            version,
            by_name,
            deps,
            builtin,
        })
    }

    /// Whether this tree has a modules.dep (else dependencies come from `.modinfo`).
    pub fn has_modules_dep(&self) -> bool {
        self.deps.is_some()
    }

    /// Direct dependencies, sorted (so modules.dep and `.modinfo` give the same order).
    fn deps_of(&self, path: &str) -> Result<Vec<String>> {
        let mut v = self.direct_deps(path)?;
        v.sort();
        v.dedup();
        Ok(v)
    }

    fn direct_deps(&self, path: &str) -> Result<Vec<String>> {
        if let Some(d) = &self.deps {
            return Ok(d.get(path).cloned().unwrap_or_default());
        }
        let data = self.module_bytes(path)?;
        let modinfo = elf_section(&data, ".modinfo")
            .map_err(|e| InitramfsError::Elf(self.root.join(path), e))?
            .unwrap_or_default();
        let mut out = Vec::new();
        for field in modinfo.split(|&b| b == 0) {
            if let Some(list) = field.strip_prefix(b"depends=") {
                for name in String::from_utf8_lossy(list).split(',') {
                    let name = name.trim().replace('-', "_");
                    if name.is_empty() {
                        continue;
                    }
                    match self.by_name.get(&name) {
                        Some(p) => out.push(p.clone()),
                        None if self.builtin.contains(&name) => {}
                        None => return Err(InitramfsError::ModuleMissing(name, self.root.clone())),
                    }
                }
            }
        }
        Ok(out)
    }

    /// The module's bytes, decompressed.
    pub fn module_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let full = self.root.join(path);
        let tool = if path.ends_with(".ko.xz") {
            "xz"
        } else if path.ends_with(".ko.zst") {
            "zstd"
        } else if path.ends_with(".ko.gz") {
            "gzip"
        } else {
            return read(&full);
        };
        let out = std::process::Command::new(tool)
            .arg("-dc")
            .arg(&full)
            .output()
            .map_err(|e| {
                InitramfsError::Tool(format!(
                    "cannot run {tool} to decompress {}: {e}",
                    full.display()
                ))
            })?;
        if !out.status.success() {
            return Err(InitramfsError::Tool(format!(
                "{tool} -dc {} failed: {}",
                full.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out.stdout)
    }

    /// The load order for `requested` (name, required), dependencies first.
    pub fn plan(&self, requested: &[(String, bool)]) -> Result<ModulePlan> {
        let mut plan = ModulePlan::default();
        let mut done: BTreeMap<String, usize> = BTreeMap::new();
        for (name, required) in requested {
            let name = name.replace('-', "_");
            if self.builtin.contains(&name) {
                plan.builtin.push(name);
                continue;
            }
            let Some(path) = self.by_name.get(&name) else {
                if *required {
                    return Err(InitramfsError::ModuleMissing(name, self.root.clone()));
                }
                plan.absent.push(name);
                continue;
            };
            self.visit(path, *required, &mut done, &mut plan, &mut BTreeSet::new())?;
        }
        Ok(plan)
    }

    fn visit(
        &self,
        path: &str,
        required: bool,
        done: &mut BTreeMap<String, usize>,
        plan: &mut ModulePlan,
        stack: &mut BTreeSet<String>,
    ) -> Result<()> {
        if let Some(&i) = done.get(path) {
            plan.load[i].1 |= required;
            // Its dependencies are already in; mark them required too.
            if required {
                for d in self.deps_of(path)? {
                    self.visit(&d, true, done, plan, stack)?;
                }
            }
            return Ok(());
        }
        if !stack.insert(path.to_owned()) {
            return Ok(()); // a cycle: modules.dep never has one; stop rather than loop
        }
        for d in self.deps_of(path)? {
            self.visit(&d, required, done, plan, stack)?;
        }
        stack.remove(path);
        done.insert(path.to_owned(), plan.load.len());
        plan.load.push((path.to_owned(), required));
        Ok(())
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn one(mut cands: Vec<PathBuf>, dir: &Path, version: Option<&str>) -> Result<PathBuf> {
    match cands.len() {
        1 => Ok(cands.remove(0)),
        0 => Err(InitramfsError::Modules(format!(
            "no kernel module tree{} under {} (install linux-image-cloud-amd64, or pass \
             --modules-from DIR)",
            version.map(|v| format!(" for {v}")).unwrap_or_default(),
            dir.display()
        ))),
        _ => Err(InitramfsError::Modules(format!(
            "several kernels under {} ({}); pick one with --kernel-version",
            dir.display(),
            cands
                .iter()
                .filter_map(|c| c.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn walk_modules(root: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let child = format!("{rel}/{name}");
        match e.file_type() {
            Ok(t) if t.is_dir() => walk_modules(root, &child, out),
            Ok(_) if is_module_file(&name) => {
                out.entry(module_name(&child)).or_insert(child);
            }
            _ => {}
        }
    }
}

/// `path: dep dep …` lines.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.trim().to_owned(),
                d.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect()
}

/// The path a module has inside the initramfs (decompressed).
fn module_dest(version: &str, path: &str) -> String {
    let p = [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|s| path.strip_suffix(s))
        .unwrap_or(path);
    format!("lib/modules/{version}/{p}")
}

// ---------------------------------------------------------------------------------------
// /init

/// busybox applets `/init` and `cvm-agent` (mount, switch_root) use.
pub const APPLETS: &[&str] = &[
    "sh",
    "mount",
    "umount",
    "mkdir",
    "insmod",
    "switch_root",
    "poweroff",
    "sleep",
    "usleep",
    "cat",
    "echo",
    "test",
    "[",
    "sync",
];

/// Quotes `s` for sh: single quotes, with each `'` as `'\''`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Where the verifier CA goes.
pub const VERIFIER_CA: &str = "/etc/cvm/verifier-ca.pem";

/// The agent's `--kbs` (and `--kbs-ca`) for the arguments.
fn kbs_args(a: &InitramfsArgs) -> Result<Vec<String>> {
    let Some(url) = &a.verifier else {
        if a.verifier_ca.is_some() {
            return Err(InitramfsError::Usage(
                "--verifier-ca needs --verifier".into(),
            ));
        }
        return Ok(vec!["--kbs".into(), "vsock:2:50000".into()]);
    };
    if let Some(rest) = url.strip_prefix("https://") {
        let ok = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok());
        if !ok {
            return Err(InitramfsError::Usage(format!(
                "--verifier {url}: the agent takes https://HOST:PORT (no path)"
            )));
        }
        if a.verifier_ca.is_none() {
            return Err(InitramfsError::Usage(
                "an https --verifier needs --verifier-ca FILE".into(),
            ));
        }
        return Ok(vec![
            "--kbs".into(),
            url.trim_end_matches('/').into(),
            "--kbs-ca".into(),
            VERIFIER_CA.into(),
        ]);
    }
    if let Some(rest) = url.strip_prefix("http://") {
        if rest
            .trim_end_matches('/')
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(InitramfsError::Usage(format!(
                "--verifier {url}: the agent takes http://IP:PORT (plain HTTP is for \
                 loopback tests only)"
            )));
        }
        if a.verifier_ca.is_some() {
            return Err(InitramfsError::Usage(
                "--verifier-ca is for an https --verifier".into(),
            ));
        }
        return Ok(vec!["--kbs".into(), url.trim_end_matches('/').into()]);
    }
    Err(InitramfsError::Usage(format!(
        "--verifier {url}: use https://HOST:PORT or http://IP:PORT"
    )))
}

/// The `/init` script.
pub fn init_script(agent_args: &[String], modules: &[(String, bool)], a: &InitramfsArgs) -> String {
    let mut s = String::new();
    s.push_str(
        r#"#!/bin/sh
# Generated by `cvm image initramfs`: attest, receive the disk key, open the LUKS2 root,
# switch to it. Any failure powers the VM off; there is never an interactive shell.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

fatal() {
    # stdout and stderr are /dev/console (the archive has the node).
    echo "cvm-init: FATAL: $*"
    echo "cvm-init: powering off"
    sync
    poweroff -f
    echo o >/proc/sysrq-trigger
    while :; do sleep 60; done
}
trap 'fatal "interrupted"' INT TERM QUIT

mount -t proc proc /proc || fatal "cannot mount /proc"
mount -t sysfs sysfs /sys || fatal "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || fatal "cannot mount /dev"
mkdir -p /run/cryptsetup /newroot

load() {
    # $1: module file, $2: required (1) or optional (0)
    if ! insmod "$1"; then
        if [ "$2" = 1 ]; then fatal "cannot load kernel module $1"; fi
        echo "cvm-init: warning: optional module $1 not loaded"
    fi
}
"#,
    );
    for (m, required) in modules {
        s.push_str(&format!(
            "load {} {}\n",
            sh_quote(&format!("/{m}")),
            u8::from(*required)
        ));
    }
    let dev = sh_quote(&a.device);
    s.push_str(&format!(
        r#"
i=0
while [ ! -b {dev} ]; do
    i=$((i + 1))
    [ "$i" -gt 100 ] && fatal "no block device "{dev}" after 10 s"
    usleep 100000
done

echo "cvm-init: attesting and unlocking "{dev}
"#
    ));
    let mut cmd = vec!["cvm-agent".to_owned()];
    cmd.extend(agent_args.iter().map(|x| sh_quote(x)));
    s.push_str(&cmd.join(" "));
    s.push_str(&format!(
        r#" || fatal "cvm-agent failed (exit $?): no key, no root"

for d in dev proc sys; do
    [ -d /newroot/$d ] && mount -o move /$d /newroot/$d
done
echo "cvm-init: switching to the encrypted root"
exec switch_root /newroot {init}
fatal "switch_root failed"
"#,
        init = sh_quote(&a.root_init)
    ));
    s
}

// ---------------------------------------------------------------------------------------
// Building

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
    let fw_bytes = crate::firmware::embedded().map_err(|e| m(&e))?;
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
        Err(e) => return crate::cli::fail(&e, 1),
    };
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
    println!("compute it for the kernel and command line you will launch with:");
    println!("  cvm firmware --out cvm-firmware.fd");
    println!(
        "  cvm measure snp --ovmf cvm-firmware.fd --vcpus {} --vcpu-type {} --kernel {} --initrd {} --append {}",
        a.vcpus,
        a.vcpu_type,
        q(&kernel.to_string_lossy()),
        q(&a.out.to_string_lossy()),
        q(&cmdline)
    );
    println!(
        "  cvm measure tdx --firmware cvm-firmware.fd --kernel {} --initrd {} --append {} --output-format json",
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
            Err(e) => return crate::cli::fail(&e, 1),
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
