//! A control group per VM: CPU quota, memory limit and CPU pinning, so one tenant's
//! guest cannot starve another's.
//!
//! cgroup v2 is used when its unified hierarchy offers the needed controllers. Hosts in
//! the systemd "hybrid" layout (v2 mounted at `/sys/fs/cgroup/unified` with no
//! controllers, the controllers on v1 hierarchies — this project's CI machine is one)
//! get the same limits through the v1 `cpu`, `memory` and `cpuset` hierarchies. If a
//! requested limit has no controller, the launch is refused: limits are never silently
//! dropped.
//!
//! The VM's group is created as a child of the group the VMM already runs in (or of
//! `--cgroup-parent`), named `cvm-<name>`; the VMM moves itself in before any vCPU
//! thread exists, and the group is removed when the VMM ends.
//!
//! | limit | v2 file | v1 file |
//! |---|---|---|
//! | `--cpu-quota P` | `cpu.max` = `P·1000 100000` | `cpu.cfs_period_us` = 100000, `cpu.cfs_quota_us` = P·1000 |
//! | `--memory-limit S` | `memory.max` = S, `memory.swap.max` = 0 | `memory.limit_in_bytes` = S |
//! | `--cpus LIST` | `cpuset.cpus` = LIST | `cpuset.cpus` = LIST, `cpuset.mems` = the parent's |

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The CFS period the quota is expressed in (100 ms, the kernel default).
pub const PERIOD_US: u64 = 100_000;

/// What a VM may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU time as a percentage of one CPU (200 = two full CPUs).
    pub cpu_quota_percent: Option<u32>,
    /// Memory limit in bytes (guest memory plus VMM overhead).
    pub memory_limit: Option<u64>,
    /// CPUs the VM's threads may run on.
    pub cpus: Option<CpuList>,
}

impl Limits {
    /// Whether no limit is requested.
    pub fn is_empty(&self) -> bool {
        self.cpu_quota_percent.is_none() && self.memory_limit.is_none() && self.cpus.is_none()
    }

    /// The controllers these limits need.
    pub fn controllers(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.cpu_quota_percent.is_some() {
            c.push("cpu");
        }
        if self.memory_limit.is_some() {
            c.push("memory");
        }
        if self.cpus.is_some() {
            c.push("cpuset");
        }
        c
    }

    /// Checks the limits against the guest's memory and the host's CPUs.
    pub fn validate(&self, guest_memory: u64, online: &CpuList) -> Result<(), CgroupError> {
        if let Some(p) = self.cpu_quota_percent {
            let max = 100 * online.0.len() as u32;
            if p == 0 || p > max {
                return Err(CgroupError::Quota {
                    percent: p,
                    max,
                    online: online.0.len(),
                });
            }
        }
        if let Some(m) = self.memory_limit {
            let need = guest_memory + MIN_OVERHEAD;
            if m < need {
                return Err(CgroupError::MemoryLimit { limit: m, need });
            }
        }
        if let Some(c) = &self.cpus {
            if let Some(bad) = c.0.iter().find(|cpu| !online.0.contains(cpu)) {
                return Err(CgroupError::Offline {
                    cpus: c.clone(),
                    cpu: *bad,
                    online: online.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Memory the VMM needs beyond guest memory, for the memory-limit check.
pub const MIN_OVERHEAD: u64 = 32 << 20;

/// A set of CPUs, written like `0-3,6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<u32>);

/// Why a CPU list does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// A part is not a number or a range of numbers.
    #[error("`{0}` is not a CPU list like 0-3,6")]
    Syntax(String),
    /// A range is reversed or beyond the largest CPU number (4095).
    #[error("`{0}` is not a valid CPU range (first <= last <= 4095)")]
    Range(String),
    /// Nothing is listed.
    #[error("empty CPU list")]
    Empty,
}

impl std::str::FromStr for CpuList {
    type Err = CpuListError;

    fn from_str(s: &str) -> Result<Self, CpuListError> {
        let mut cpus = Vec::new();
        if s.trim().is_empty() {
            return Err(CpuListError::Empty);
        }
        for part in s.trim().split(',') {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a, b),
                None => (part, part),
            };
            let num = |n: &str| {
                n.trim()
                    .parse::<u32>()
                    .map_err(|_| CpuListError::Syntax(s.to_owned()))
            };
            let (a, b) = (num(a)?, num(b)?);
            if a > b || b >= 4096 {
                return Err(CpuListError::Range(part.to_owned()));
            }
            cpus.extend(a..=b);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end = self.0[i];
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

/// Why a control group could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The CPU quota is zero or more than the online CPUs can give.
    #[error("--cpu-quota {percent}% is outside 1..={max}% ({online} online CPUs)")]
    Quota {
        /// The requested percentage.
        percent: u32,
        /// 100 per online CPU.
        max: u32,
        /// Online CPUs.
        online: usize,
    },
    /// The memory limit cannot hold the guest and the VMM.
    #[error("--memory-limit {limit} is below the guest's memory plus {} MiB of VMM overhead ({need}); the guest would be killed when it touches its memory", MIN_OVERHEAD >> 20)]
    MemoryLimit {
        /// The requested limit in bytes.
        limit: u64,
        /// Guest memory plus [`MIN_OVERHEAD`].
        need: u64,
    },
    /// A requested CPU is not online.
    #[error("--cpus {cpus}: CPU {cpu} is not online (online: {online})")]
    Offline {
        /// The requested CPUs.
        cpus: CpuList,
        /// The first offline one.
        cpu: u32,
        /// The online CPUs.
        online: CpuList,
    },
    /// The group name cannot be a single directory name.
    #[error("`{0}` is not a valid cgroup name")]
    Name(String),
    /// The host's list of online CPUs does not parse.
    #[error("cannot parse the host's online CPUs")]
    OnlineCpus(#[source] CpuListError),
    /// No hierarchy offers a needed controller.
    #[error("no cgroup controller `{controller}` on this host ({found})")]
    NoController {
        /// The controller.
        controller: &'static str,
        /// What was found instead.
        found: String,
    },
    /// A cgroup file operation failed.
    #[error("cannot {what} {}", path.display())]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where the controllers live on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A cgroup v2 hierarchy: its mount point, this process's group in it, and the
    /// controllers that group offers to children.
    V2 {
        /// Mount point.
        mount: PathBuf,
        /// This process's group (relative, starting with `/`).
        current: String,
    },
    /// cgroup v1: per controller, the hierarchy's mount point and this process's group.
    V1(BTreeMap<String, (PathBuf, String)>),
}

/// Reads the host's layout from `/proc/self/mountinfo` and `/proc/self/cgroup`.
pub fn detect(needed: &[&'static str]) -> Result<Layout, CgroupError> {
    let read = |p: &str| {
        std::fs::read_to_string(p).map_err(|source| CgroupError::Io {
            what: "read",
            path: p.into(),
            source,
        })
    };
    let mountinfo = read("/proc/self/mountinfo")?;
    let membership = read("/proc/self/cgroup")?;
    choose(&mountinfo, &membership, needed, |p| {
        std::fs::read_to_string(p).unwrap_or_default()
    })
}

/// Picks v2 if its group offers every `needed` controller, else v1 if each is mounted.
/// `read` reads a file (for `cgroup.controllers`).
pub fn choose(
    mountinfo: &str,
    membership: &str,
    needed: &[&'static str],
    read: impl Fn(&Path) -> String,
) -> Result<Layout, CgroupError> {
    let mut v2_mount = None;
    let mut v1: BTreeMap<String, PathBuf> = BTreeMap::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        if fields.len() < 5 || right.len() < 3 {
            continue;
        }
        let mount = PathBuf::from(fields[4]);
        match right[0] {
            "cgroup2" => v2_mount = Some(mount),
            "cgroup" => {
                for opt in right[2].split(',') {
                    if ["cpu", "memory", "cpuset"].contains(&opt) {
                        v1.insert(opt.to_owned(), mount.clone());
                    }
                }
            }
            _ => {}
        }
    }
    let mut v2_current = String::from("/");
    let mut v1_current: BTreeMap<String, String> = BTreeMap::new();
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            v2_current = path.to_owned();
        } else {
            for c in ctrls.split(',') {
                v1_current.insert(c.to_owned(), path.to_owned());
            }
        }
    }
    let mut found = Vec::new();
    if let Some(mount) = &v2_mount {
        let offered = read(
            &mount
                .join(v2_current.trim_start_matches('/'))
                .join("cgroup.controllers"),
        );
        let offered: Vec<&str> = offered.split_whitespace().collect();
        if needed.iter().all(|c| offered.contains(c)) {
            return Ok(Layout::V2 {
                mount: mount.clone(),
                current: v2_current,
            });
        }
        found.push(format!(
            "cgroup v2 at {} offers [{}]",
            mount.display(),
            offered.join(" ")
        ));
    }
    let mut layout = BTreeMap::new();
    for c in needed {
        match v1.get(*c) {
            Some(m) => {
                let cur = v1_current.get(*c).cloned().unwrap_or_else(|| "/".into());
                layout.insert((*c).to_owned(), (m.clone(), cur));
            }
            None => {
                found.push(format!(
                    "v1 hierarchies: [{}]",
                    v1.keys().cloned().collect::<Vec<_>>().join(" ")
                ));
                return Err(CgroupError::NoController {
                    controller: c,
                    found: found.join("; "),
                });
            }
        }
    }
    Ok(Layout::V1(layout))
}

/// The VM's control group(s); removed on drop.
#[derive(Debug)]
pub struct VmCgroup {
    /// The group directories (one for v2, one per controller for v1), with the parent
    /// group each was created in.
    dirs: Vec<(PathBuf, PathBuf)>,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Io {
        what: "write",
        path: path.to_owned(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Io {
            what: "create",
            path: path.to_owned(),
            source,
        }),
    }
}

fn parent_dir(mount: &Path, current: &str, parent: Option<&str>) -> PathBuf {
    let rel = parent.unwrap_or(current).trim_start_matches('/');
    mount.join(rel)
}

impl VmCgroup {
    /// Creates `cvm-<name>` under `parent` (relative to each hierarchy's mount; default:
    /// the group this process is in) and writes `limits` into it.
    pub fn create(
        layout: &Layout,
        name: &str,
        parent: Option<&str>,
        limits: &Limits,
    ) -> Result<Self, CgroupError> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(CgroupError::Name(name.to_owned()));
        }
        let leaf = format!("cvm-{name}");
        let quota = limits
            .cpu_quota_percent
            .map(|p| u64::from(p) * PERIOD_US / 100);
        let mut me = VmCgroup { dirs: Vec::new() };
        match layout {
            Layout::V2 { mount, current } => {
                let parent = parent_dir(mount, current, parent);
                let ctl: Vec<String> = limits
                    .controllers()
                    .iter()
                    .map(|c| format!("+{c}"))
                    .collect();
                if !ctl.is_empty() {
                    write(&parent.join("cgroup.subtree_control"), &ctl.join(" "))?;
                }
                let dir = parent.join(&leaf);
                mkdir(&dir)?;
                me.dirs.push((dir.clone(), parent));
                if let Some(q) = quota {
                    write(&dir.join("cpu.max"), &format!("{q} {PERIOD_US}"))?;
                }
                if let Some(m) = limits.memory_limit {
                    write(&dir.join("memory.max"), &m.to_string())?;
                    if dir.join("memory.swap.max").exists() {
                        write(&dir.join("memory.swap.max"), "0")?;
                    }
                }
                if let Some(c) = &limits.cpus {
                    write(&dir.join("cpuset.cpus"), &c.to_string())?;
                }
            }
            Layout::V1(map) => {
                for (ctl, (mount, current)) in map {
                    let parent = parent_dir(mount, current, parent);
                    let dir = parent.join(&leaf);
                    mkdir(&dir)?;
                    me.dirs.push((dir.clone(), parent.clone()));
                    match ctl.as_str() {
                        "cpu" => {
                            if let Some(q) = quota {
                                write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                                write(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
                            }
                        }
                        "memory" => {
                            if let Some(m) = limits.memory_limit {
                                write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                            }
                        }
                        "cpuset" => {
                            if let Some(c) = &limits.cpus {
                                // A v1 cpuset needs its memory nodes before it takes tasks.
                                let mems = std::fs::read_to_string(parent.join("cpuset.mems"))
                                    .map_err(|source| CgroupError::Io {
                                        what: "read",
                                        path: parent.join("cpuset.mems"),
                                        source,
                                    })?;
                                write(&dir.join("cpuset.mems"), mems.trim())?;
                                write(&dir.join("cpuset.cpus"), &c.to_string())?;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(me)
    }

    /// Moves process `pid` (all its threads) into the group.
    pub fn attach(&self, pid: u32) -> Result<(), CgroupError> {
        for (dir, _) in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The group directories.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(d, _)| d.as_path())
    }
}

impl VmCgroup {
    /// Moves this process out of the group, into the group's parent: the supervising
    /// parent does it right after forking the VMM (which stays in the group), so that
    /// removing the group later needs no `cgroup.procs` write.
    pub fn leave(&self) {
        let me = std::process::id().to_string();
        for (dir, parent) in &self.dirs {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            if procs.lines().any(|p| p.trim() == me) {
                if let Err(e) = std::fs::write(parent.join("cgroup.procs"), &me) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot leave the VM's cgroup");
                }
            }
        }
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        // A group with members cannot be removed: leave it first (a no-op if this
        // process already has; its other members have exited by now).
        self.leave();
        for (dir, _) in &self.dirs {
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the VM's cgroup");
            }
        }
    }
}

/// The host's online CPUs.
pub fn online_cpus() -> Result<CpuList, CgroupError> {
    let p = "/sys/devices/system/cpu/online";
    let s = std::fs::read_to_string(p).map_err(|source| CgroupError::Io {
        what: "read",
        path: p.into(),
        source,
    })?;
    s.parse().map_err(CgroupError::OnlineCpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_MEMBERS: &str = "4:memory:/process_api/abc\n3:cpuset:/\n1:cpu:/\n0::/\n";

    #[test]
    fn cpu_lists_parse_and_print_canonically() {
        let c: CpuList = "3,0-2,7,8".parse().unwrap();
        assert_eq!(c.0, vec![0, 1, 2, 3, 7, 8]);
        assert_eq!(c.to_string(), "0-3,7-8");
        assert_eq!("5".parse::<CpuList>().unwrap().to_string(), "5");
        for (bad, want) in [
            ("", CpuListError::Empty),
            ("a", CpuListError::Syntax("a".into())),
            ("3-1", CpuListError::Range("3-1".into())),
            ("1,,2", CpuListError::Syntax("1,,2".into())),
            ("0-99999", CpuListError::Range("0-99999".into())),
        ] {
            assert_eq!(bad.parse::<CpuList>(), Err(want), "{bad}");
        }
    }

    #[test]
    fn hybrid_hosts_use_v1_with_the_process_group() {
        let l = choose(HYBRID_MOUNTS, HYBRID_MEMBERS, &["cpu", "memory"], |_| {
            String::new()
        })
        .unwrap();
        let Layout::V1(map) = l else {
            panic!("expected v1")
        };
        assert_eq!(
            map["cpu"],
            (PathBuf::from("/sys/fs/cgroup/cpu"), "/".to_owned())
        );
        assert_eq!(
            map["memory"],
            (
                PathBuf::from("/sys/fs/cgroup/memory"),
                "/process_api/abc".to_owned()
            )
        );
    }

    #[test]
    fn v2_is_preferred_when_it_offers_the_controllers() {
        let l = choose(
            HYBRID_MOUNTS,
            "0::/user.slice/vmm\n",
            &["cpu", "memory"],
            |p| {
                assert_eq!(
                    p,
                    Path::new("/sys/fs/cgroup/unified/user.slice/vmm/cgroup.controllers")
                );
                "cpuset cpu io memory pids".into()
            },
        )
        .unwrap();
        assert_eq!(
            l,
            Layout::V2 {
                mount: "/sys/fs/cgroup/unified".into(),
                current: "/user.slice/vmm".into()
            }
        );
    }

    #[test]
    fn a_missing_controller_is_refused_not_ignored() {
        let mounts = "40 31 0:37 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let e = choose(mounts, "0::/\n", &["memory"], |_| "cpu pids".into()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("`memory`") && msg.contains("offers [cpu pids]"),
            "{msg}"
        );
    }

    #[test]
    fn limits_are_checked_against_the_guest_and_host() {
        let online: CpuList = "0-1".parse().unwrap();
        let ok = Limits {
            cpu_quota_percent: Some(150),
            memory_limit: Some((512 << 20) + MIN_OVERHEAD),
            cpus: Some("1".parse().unwrap()),
        };
        ok.validate(512 << 20, &online).unwrap();
        let too_much_cpu = Limits {
            cpu_quota_percent: Some(201),
            ..Default::default()
        };
        assert!(too_much_cpu.validate(0, &online).is_err());
        let zero = Limits {
            cpu_quota_percent: Some(0),
            ..Default::default()
        };
        assert!(zero.validate(0, &online).is_err());
        let small = Limits {
            memory_limit: Some(512 << 20),
            ..Default::default()
        };
        assert!(small
            .validate(512 << 20, &online)
            .unwrap_err()
            .to_string()
            .contains("overhead"));
        let offline = Limits {
            cpus: Some("2".parse().unwrap()),
            ..Default::default()
        };
        assert!(offline
            .validate(0, &online)
            .unwrap_err()
            .to_string()
            .contains("not online"));
        assert_eq!(ok.controllers(), vec!["cpu", "memory", "cpuset"]);
    }
}
