//! Kernel modules: the modules `/init` loads, their dependency closure (`modules.dep` or
//! `.modinfo`), built-in detection and decompression.

use super::*;

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

pub(super) fn is_module_file(path: &str) -> bool {
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
    pub(super) by_name: BTreeMap<String, String>,
    /// Path → dependency paths, from modules.dep (None: read `.modinfo` instead).
    pub(super) deps: Option<BTreeMap<String, Vec<String>>>,
    /// Built-in module names.
    pub(super) builtin: BTreeSet<String>,
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
    pub(super) fn deps_of(&self, path: &str) -> Result<Vec<String>> {
        let mut v = self.direct_deps(path)?;
        v.sort();
        v.dedup();
        Ok(v)
    }

    pub(super) fn direct_deps(&self, path: &str) -> Result<Vec<String>> {
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

    pub(super) fn visit(
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

pub(super) fn subdirs(dir: &Path) -> Vec<PathBuf> {
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

pub(super) fn one(mut cands: Vec<PathBuf>, dir: &Path, version: Option<&str>) -> Result<PathBuf> {
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

pub(super) fn walk_modules(root: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
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
pub(super) fn module_dest(version: &str, path: &str) -> String {
    let p = [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|s| path.strip_suffix(s))
        .unwrap_or(path);
    format!("lib/modules/{version}/{p}")
}
