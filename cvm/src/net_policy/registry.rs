//! The host's registry of running VMs with a network policy: a directory (default
//! `/run/cvm/net`, `$CVM_NET_STATE_DIR` overrides; mode 0700, owned by the user `cvm`
//! runs as) with one `NAME.json` (0600) per VM: its supervising process (pid and start
//! time, so a recycled pid is not mistaken for it), its taps, MACs, addresses and
//! tables. Policies that name a VM (`vm = "NAME"`) resolve to the addresses of its
//! entry while that process lives; a VM that is not running resolves to nothing, so
//! rules naming it allow nothing. The entry is removed when the VM stops; an entry
//! whose process is gone is stale (a crash) and is replaced by the next start of the
//! same VM or removed by `cvm net gc`.
//!
//! A directory another user could write to is refused: its entries decide what other
//! VMs may reach.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::model::{Cidr6, NetworkPolicy, VmName};
use super::ruleset::{table_name, PeerAddrs, Peers};

/// The default directory.
pub const DEFAULT_DIR: &str = "/run/cvm/net";
/// The environment variable that overrides it.
pub const DIR_ENV: &str = "CVM_NET_STATE_DIR";
/// The largest entry file read.
const MAX_ENTRY: u64 = 64 << 10;

/// Why the registry cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A file system operation failed.
    #[error("cannot use the VM registry at {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The directory is not private to this user.
    #[error("the VM registry {0} is not private (it must be a directory owned by uid {1} with mode 0700, not {2:o} owned by {3})")]
    NotPrivate(PathBuf, u32, u32, u32),
    /// Another running VM has this name.
    #[error("a VM named `{0}` is already running on this host (pid {1})")]
    NameTaken(String, u32),
    /// Another running VM uses this tap.
    #[error("tap `{0}` already belongs to the running VM `{1}`")]
    TapTaken(String, String),
    /// Another running VM has this address.
    #[error("address {0} already belongs to the running VM `{1}`")]
    AddressTaken(String, String),
    /// Another running VM has this MAC.
    #[error("MAC {0} already belongs to the running VM `{1}`")]
    MacTaken(String, String),
    /// Another running VM's policy is installed in a table of this name.
    #[error("nftables table `{0}` already belongs to the running VM `{1}`")]
    TableTaken(String, String),
}

/// One interface of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInterface {
    /// The tap.
    pub tap: String,
    /// The guest's MAC.
    pub mac: String,
    /// The guest's IPv4 addresses.
    pub addresses: Vec<Ipv4Addr>,
    /// The guest's IPv6 addresses and prefixes, its link-local address included
    /// (absent in the entries of a `cvm` without IPv6).
    #[serde(default)]
    pub addresses6: Vec<Cidr6>,
    /// The nftables table enforcing it.
    pub table: String,
}

/// One running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// The supervising `cvm` process.
    pub pid: u32,
    /// That process's start time (clock ticks since boot, `/proc/PID/stat` field 22).
    pub start_time: u64,
    /// Its interfaces.
    pub interfaces: Vec<EntryInterface>,
}

impl Entry {
    /// The entry of `policy` for this process.
    pub fn for_policy(policy: &NetworkPolicy) -> Result<Self, RegistryError> {
        let pid = std::process::id();
        let start_time = start_time(pid).ok_or_else(|| {
            RegistryError::Io(
                "/proc/self/stat".into(),
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
        Ok(Self {
            name: policy.name.as_str().to_owned(),
            pid,
            start_time,
            interfaces: policy
                .interfaces
                .iter()
                .map(|i| EntryInterface {
                    tap: i.tap.as_str().to_owned(),
                    mac: i.mac.to_string(),
                    addresses: i.addresses.clone(),
                    addresses6: i.addresses6.clone(),
                    table: table_name(&policy.name, &i.tap),
                })
                .collect(),
        })
    }

    /// Whether its process still runs (same pid, same start time).
    pub fn is_live(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// The start time of `pid` (`/proc/PID/stat` field 22), if it runs.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from the
    // last `)`. Field 3 is the first after it; field 22 is the 20th.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The registry directory.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    id: String,
}

/// The file holding a registry's id (16 hex digits, random, made once with the
/// directory): the owner mark in the comment of every table its VMs install, so `cvm
/// net gc` deletes only tables of its own registry.
const ID_FILE: &str = ".id";

/// Reads `dir`'s id, making a new random one if it has none.
fn registry_id(dir: &Path) -> Result<String, RegistryError> {
    let p = dir.join(ID_FILE);
    let io = |e| RegistryError::Io(p.clone(), e);
    let valid = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&p)
    {
        Ok(mut f) => {
            let mut b = [0u8; 8];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut r| std::io::Read::read_exact(&mut r, &mut b))
                .map_err(io)?;
            let id = hex::encode(b);
            std::io::Write::write_all(&mut f, id.as_bytes()).map_err(io)?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(&p).map_err(io)?;
            let id = if m.is_file() && m.len() == 16 {
                std::fs::read_to_string(&p).map_err(io)?
            } else {
                String::new()
            };
            if !valid(&id) {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the registry id file is not 16 hex digits",
                )));
            }
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

/// An exclusive lock of the registry (held while checking and writing entries).
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] std::fs::File);

impl Registry {
    /// The directory from `$CVM_NET_STATE_DIR` or the default.
    pub fn default_dir() -> PathBuf {
        std::env::var_os(DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
    }

    /// Opens (creating with mode 0700) `dir`, refusing one that is not private.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        let io = |e| RegistryError::Io(dir.to_owned(), e);
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let m = std::fs::symlink_metadata(dir).map_err(io)?;
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
            return Err(RegistryError::NotPrivate(
                dir.to_owned(),
                uid,
                m.mode() & 0o7777,
                m.uid(),
            ));
        }
        Ok(Self {
            dir: dir.to_owned(),
            id: registry_id(dir)?,
        })
    }

    /// This registry's id, the owner mark of its tables.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Takes the registry's lock (`flock` on `.lock`), waiting for another `cvm`.
    pub fn lock(&self) -> Result<Lock, RegistryError> {
        let p = self.dir.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| RegistryError::Io(p.clone(), e))?;
        loop {
            // SAFETY: flock on a descriptor we own.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Lock(f));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(RegistryError::Io(p, e));
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Every readable, well-formed entry (a malformed file is skipped with a warning).
    pub fn entries(&self) -> Result<Vec<Entry>, RegistryError> {
        let rd =
            std::fs::read_dir(&self.dir).map_err(|e| RegistryError::Io(self.dir.clone(), e))?;
        let mut out = Vec::new();
        for f in rd.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            match self.read(stem) {
                Some(e) => out.push(e),
                None => {
                    tracing::warn!(file = %f.path().display(), "ignoring a malformed VM registry entry")
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The entry of `name`, if it exists and is well formed (its name matches the file).
    pub fn read(&self, name: &str) -> Option<Entry> {
        VmName::parse(name).ok()?;
        let p = self.path(name);
        let m = std::fs::symlink_metadata(&p).ok()?;
        if !m.is_file() || m.len() > MAX_ENTRY {
            return None;
        }
        let e: Entry = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
        (e.name == name).then_some(e)
    }

    /// Writes `e` (0600, replaced atomically), after checking under the lock that no
    /// running VM has its name, one of its taps, tables, MACs or addresses (so a name stands for
    /// one VM's addresses only: a VM cannot pass as another in `vm = "NAME"` rules). The stale entries (of VMs that are
    /// not running) with its name or one of its taps are returned, and removed from the
    /// registry, so their tables, which would still hook those taps, can be removed.
    pub fn register(&self, e: &Entry, _lock: &Lock) -> Result<Vec<Entry>, RegistryError> {
        let mut stale = Vec::new();
        for other in self.entries()? {
            if !other.is_live() {
                let shares_tap = other
                    .interfaces
                    .iter()
                    .any(|o| e.interfaces.iter().any(|i| i.tap == o.tap));
                if other.name == e.name || shares_tap {
                    stale.push(other);
                }
                continue;
            }
            if other.name == e.name {
                return Err(RegistryError::NameTaken(other.name, other.pid));
            }
            for i in &e.interfaces {
                for o in &other.interfaces {
                    if o.table == i.table {
                        return Err(RegistryError::TableTaken(
                            i.table.clone(),
                            other.name.clone(),
                        ));
                    }
                    if o.tap == i.tap {
                        return Err(RegistryError::TapTaken(i.tap.clone(), other.name.clone()));
                    }
                    if o.mac.eq_ignore_ascii_case(&i.mac) {
                        return Err(RegistryError::MacTaken(i.mac.clone(), other.name.clone()));
                    }
                    if let Some(a) = i.addresses.iter().find(|a| o.addresses.contains(a)) {
                        return Err(RegistryError::AddressTaken(
                            a.to_string(),
                            other.name.clone(),
                        ));
                    }
                    if let Some(a) = i
                        .addresses6
                        .iter()
                        .find(|a| o.addresses6.iter().any(|b| b.overlaps(a)))
                    {
                        return Err(RegistryError::AddressTaken(
                            a.to_string(),
                            other.name.clone(),
                        ));
                    }
                }
            }
        }
        let p = self.path(&e.name);
        let tmp = self.dir.join(format!(".{}.tmp", e.name));
        let io = |err| RegistryError::Io(p.clone(), err);
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let json = serde_json::to_vec_pretty(e).map_err(|err| io(err.into()))?;
        std::io::Write::write_all(&mut f, &json).map_err(io)?;
        std::fs::rename(&tmp, &p).map_err(io)?;
        for s in stale.iter().filter(|s| s.name != e.name) {
            self.remove(&s.name);
        }
        Ok(stale)
    }

    /// Removes `name`'s entry if it is `pid`'s (a newer VM of that name keeps its own).
    pub fn unregister(&self, name: &str, pid: u32) {
        if self.read(name).is_some_and(|e| e.pid == pid) {
            let _ = std::fs::remove_file(self.path(name));
        }
    }

    /// Removes an entry unconditionally (`cvm net gc`, for stale entries).
    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(name));
    }

    /// The addresses of the running VMs among `names` (a VM not running is absent).
    pub fn resolve(&self, names: &[VmName]) -> Peers {
        names
            .iter()
            .filter_map(|n| {
                let e = self.read(n.as_str()).filter(Entry::is_live)?;
                let addrs = PeerAddrs {
                    v4: e
                        .interfaces
                        .iter()
                        .flat_map(|i| i.addresses.iter().copied())
                        .collect(),
                    v6: e
                        .interfaces
                        .iter()
                        .flat_map(|i| i.addresses6.iter().copied())
                        .collect(),
                };
                Some((n.clone(), addrs))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, pid: u32, start: u64, tap: &str, ip: [u8; 4]) -> Entry {
        Entry {
            name: name.into(),
            pid,
            start_time: start,
            interfaces: vec![EntryInterface {
                tap: tap.into(),
                mac: format!("52:54:00:00:00:{:02x}", ip[3]),
                addresses: vec![Ipv4Addr::from(ip)],
                addresses6: vec![],
                table: format!("cvm_{name}"),
            }],
        }
    }

    #[test]
    fn running_vms_resolve_stale_ones_do_not_and_names_and_taps_are_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("net");
        let r = Registry::open(&root).unwrap();
        let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let me = std::process::id();
        let live = entry("b", me, start_time(me).unwrap(), "tb", [10, 0, 0, 3]);
        let lock = r.lock().unwrap();
        assert_eq!(r.register(&live, &lock).unwrap(), vec![]);
        let mode = std::fs::metadata(root.join("b.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // A crashed VM: same pid number, another start time.
        let dead = entry("c", me, start_time(me).unwrap() + 1, "tc", [10, 0, 0, 4]);
        r.register(&dead, &lock).unwrap();
        let names = [
            VmName::parse("b").unwrap(),
            VmName::parse("c").unwrap(),
            VmName::parse("d").unwrap(),
        ];
        let peers = r.resolve(&names);
        assert_eq!(peers.len(), 1, "{peers:?}");
        assert_eq!(peers[&names[0]].v4, vec![Ipv4Addr::new(10, 0, 0, 3)]);
        // The live name and the live tap are taken; the stale name is returned.
        let e = r
            .register(&entry("b", me, 1, "tx", [10, 0, 0, 9]), &lock)
            .unwrap_err();
        assert!(matches!(e, RegistryError::NameTaken(..)), "{e}");
        let e = r
            .register(&entry("x", me, 1, "tb", [10, 0, 0, 9]), &lock)
            .unwrap_err();
        assert!(matches!(e, RegistryError::TapTaken(..)), "{e}");
        let again = entry("c", me, start_time(me).unwrap(), "tc", [10, 0, 0, 4]);
        assert_eq!(r.register(&again, &lock).unwrap(), vec![dead]);
        // A stale VM of another name on the same tap is returned and its entry removed.
        let other = entry("f", me, start_time(me).unwrap() + 1, "tf", [10, 0, 0, 6]);
        r.register(&other, &lock).unwrap();
        let on_its_tap = entry("g", me, start_time(me).unwrap(), "tf", [10, 0, 0, 7]);
        assert_eq!(r.register(&on_its_tap, &lock).unwrap(), vec![other]);
        assert!(r.read("f").is_none());
        // A file whose name does not match its content is ignored.
        std::fs::write(root.join("e.json"), serde_json::to_vec(&live).unwrap()).unwrap();
        assert!(r.read("e").is_none());
        // Only the owner's entry is removed.
        r.unregister("b", me + 1);
        assert!(r.read("b").is_some());
        r.unregister("b", me);
        assert!(r.read("b").is_none());
    }

    /// Attack (red-team M2): names were not tied to unique addresses, so a VM stating
    /// a running VM's address (or MAC) could pass as it in other VMs' `vm = "NAME"`
    /// rules. Under the lock, a live entry's addresses and MACs are its own.
    #[test]
    fn a_live_vms_address_or_mac_cannot_be_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&dir.path().join("net")).unwrap();
        let me = std::process::id();
        let now = start_time(me).unwrap();
        let lock = r.lock().unwrap();
        r.register(&entry("db", me, now, "tdb", [10, 0, 0, 5]), &lock)
            .unwrap();
        // Same address, another name, tap and MAC.
        let mut evil = entry("evil", me, now, "tev", [10, 0, 0, 6]);
        evil.interfaces[0]
            .addresses
            .push(Ipv4Addr::new(10, 0, 0, 5));
        let e = r.register(&evil, &lock).unwrap_err();
        assert!(matches!(e, RegistryError::AddressTaken(..)), "{e}");
        assert!(r.read("evil").is_none());
        // Same MAC, another address.
        let mut evil = entry("evil", me, now, "tev", [10, 0, 0, 6]);
        evil.interfaces[0].mac = "52:54:00:00:00:05".into();
        let e = r.register(&evil, &lock).unwrap_err();
        assert!(matches!(e, RegistryError::MacTaken(..)), "{e}");
        // A stale entry's address is free again.
        let stale = entry("old", me, now + 1, "told", [10, 0, 0, 7]);
        r.register(&stale, &lock).unwrap();
        r.register(&entry("new", me, now, "tnew", [10, 0, 0, 7]), &lock)
            .unwrap();
    }

    /// A VM cannot claim a running VM's IPv6 address or a prefix overlapping it: it
    /// could pass as that VM in other VMs' `vm = "NAME"` rules.
    #[test]
    fn a_live_vms_ipv6_addresses_cannot_be_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&dir.path().join("net")).unwrap();
        let me = std::process::id();
        let now = start_time(me).unwrap();
        let lock = r.lock().unwrap();
        let mut db = entry("db", me, now, "tdb", [10, 0, 0, 5]);
        db.interfaces[0].addresses6 = vec![Cidr6::parse("fd00:1::5").unwrap()];
        r.register(&db, &lock).unwrap();
        for claim in ["fd00:1::5", "fd00:1::/64"] {
            let mut evil = entry("evil", me, now, "tev", [10, 0, 0, 6]);
            evil.interfaces[0].addresses6 = vec![Cidr6::parse(claim).unwrap()];
            let e = r.register(&evil, &lock).unwrap_err();
            assert!(matches!(e, RegistryError::AddressTaken(..)), "{claim}: {e}");
        }
        let mut ok = entry("ok", me, now, "tok", [10, 0, 0, 7]);
        ok.interfaces[0].addresses6 = vec![Cidr6::parse("fd00:2::/64").unwrap()];
        r.register(&ok, &lock).unwrap();
        let peers = r.resolve(&[VmName::parse("db").unwrap()]);
        assert_eq!(
            peers[&VmName::parse("db").unwrap()].v6,
            vec![Cidr6::parse("fd00:1::5").unwrap()]
        );
        // An entry written by a cvm without IPv6 still reads.
        let old = r#"{"name":"old","pid":1,"start_time":1,"interfaces":[{"tap":"t","mac":"52:54:00:00:00:01","addresses":["10.0.0.1"],"table":"cvm_old"}]}"#;
        std::fs::write(dir.path().join("net/old.json"), old).unwrap();
        assert!(r.read("old").unwrap().interfaces[0].addresses6.is_empty());
    }

    /// Attack (red-team L7): install silently replaced a same-named table; a table a
    /// live entry uses is now refused under the lock.
    #[test]
    fn a_live_vms_table_name_cannot_be_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&dir.path().join("net")).unwrap();
        let me = std::process::id();
        let now = start_time(me).unwrap();
        let lock = r.lock().unwrap();
        r.register(&entry("a", me, now, "ta", [10, 0, 0, 5]), &lock)
            .unwrap();
        let mut b = entry("b", me, now, "tb", [10, 0, 0, 6]);
        b.interfaces[0].table = "cvm_a".into();
        let e = r.register(&b, &lock).unwrap_err();
        assert!(matches!(e, RegistryError::TableTaken(..)), "{e}");
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("net");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Registry::open(&root).unwrap_err();
        assert!(matches!(e, RegistryError::NotPrivate(..)), "{e}");
    }
}
