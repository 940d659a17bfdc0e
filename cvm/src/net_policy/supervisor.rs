//! Installing a VM's policy, supervising the VM while it runs, and removing the policy
//! when it ends (see the module docs of [`super`] for the life cycle).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::model::NetworkPolicy;
use super::nft::{Nft, NftError};
use super::registry::{Entry, Registry};
use super::ruleset::{self, Peers, COUNTERS};
use super::{Counts, NetPolicyError};

/// How often the supervisor reads the counters and refreshes named peers.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A policy installed on this host: its tables exist and its registry entry is written.
#[derive(Debug)]
pub struct Installed {
    policy: NetworkPolicy,
    nft: Nft,
    registry: Registry,
    tables: Vec<String>,
    peers: Peers,
    pid: u32,
    last: Vec<Counts>,
}

impl Installed {
    /// Checks the taps, registers the VM and installs every interface's table in one
    /// transaction (replacing the tables of a crashed run of the same VM). Nothing is
    /// left behind on failure.
    pub fn install(
        policy: &NetworkPolicy,
        nft: Nft,
        registry: Registry,
    ) -> Result<Self, NetPolicyError> {
        for i in &policy.interfaces {
            if !interface_exists(i.tap.as_str()) {
                return Err(NetPolicyError::NoTap(i.tap.as_str().to_owned()));
            }
        }
        let lock = registry.lock()?;
        let entry = Entry::for_policy(policy)?;
        let stale = registry.register(&entry, &lock)?;
        let peers = registry.resolve(&policy.peer_vms());
        let tables = ruleset::tables(policy);
        let mut script = String::new();
        for s in &stale {
            tracing::warn!(event = "net-policy-stale", vm = %policy.name, stale_vm = %s.name, pid = s.pid, "replacing the network policy of a VM that did not stop cleanly (same name or same tap)");
            let old: Vec<&str> = s
                .interfaces
                .iter()
                .map(|i| i.table.as_str())
                .filter(|t| !tables.iter().any(|n| n == t))
                .collect();
            let old = match owned_tables(&nft, &registry, old) {
                Ok(o) => o,
                Err(e) => {
                    registry.unregister(policy.name.as_str(), entry.pid);
                    return Err(e.into());
                }
            };
            script.push_str(&ruleset::delete_script(old.iter().map(String::as_str)));
        }
        for i in &policy.interfaces {
            script.push_str(&ruleset::table_script(
                &policy.name,
                i,
                &peers,
                registry.id(),
            ));
        }
        if let Err(e) = nft.apply(&script) {
            registry.unregister(policy.name.as_str(), entry.pid);
            return Err(e.into());
        }
        drop(lock);
        tracing::info!(event = "net-policy-installed", vm = %policy.name, tables = ?tables, peers = ?peers, "network policy installed (default deny)");
        let n = tables.len();
        Ok(Self {
            policy: policy.clone(),
            nft,
            registry,
            tables,
            peers,
            pid: entry.pid,
            last: vec![Counts::default(); n],
        })
    }

    /// The tables. (tests)
    #[cfg(test)]
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// Reads every table's counters; logs a `net-policy-denied` event for those that
    /// grew since the last read (WARN when spoofed, IPv4 or IPv6 packets were dropped,
    /// INFO when only other ethertypes or MLD were). Returns the counts (zero for a table that cannot be
    /// read, which is logged).
    pub fn poll_counts(&mut self) -> Vec<Counts> {
        let mut out = Vec::with_capacity(self.tables.len());
        for (k, (t, i)) in self.tables.iter().zip(&self.policy.interfaces).enumerate() {
            match self.nft.counts(t) {
                Ok(c) => {
                    let before = self.last[k];
                    if c != before {
                        let d = |n: usize| c.0[n].saturating_sub(before.0[n]);
                        // WARN for what the policy is about (spoofing, IPv4 or IPv6 the
                        // rules do not allow); other ethertypes and MLD chatter (a booting
                        // guest's) only at INFO.
                        macro_rules! denied {
                            ($level:ident) => {
                                tracing::$level!(
                                    event = "net-policy-denied",
                                    vm = %self.policy.name,
                                    tap = %i.tap,
                                    table = %t,
                                    spoofed = d(0),
                                    egress_denied = d(1),
                                    ingress_denied = d(2),
                                    other_denied = d(3),
                                    spoofed_ipv6 = d(4),
                                    egress_denied_ipv6 = d(5),
                                    ingress_denied_ipv6 = d(6),
                                    total_spoofed = c.0[0],
                                    total_egress_denied = c.0[1],
                                    total_ingress_denied = c.0[2],
                                    total_other_denied = c.0[3],
                                    total_spoofed_ipv6 = c.0[4],
                                    total_egress_denied_ipv6 = c.0[5],
                                    total_ingress_denied_ipv6 = c.0[6],
                                    "the network policy dropped packets"
                                )
                            };
                        }
                        if d(0) + d(1) + d(2) + d(4) + d(5) + d(6) > 0 {
                            denied!(warn);
                        } else {
                            denied!(info);
                        }
                        self.last[k] = c;
                    }
                    out.push(c);
                }
                Err(e) => {
                    tracing::error!(event = "net-policy-counters", table = %t, error = %e, "cannot read the network policy's counters");
                    out.push(self.last[k]);
                }
            }
        }
        out
    }

    /// Resolves the named peers again and updates the sets that changed. Returns whether
    /// anything changed.
    pub fn refresh_peers(&mut self) -> Result<bool, NftError> {
        // Resolve and apply under the registry's lock (review finding): otherwise a peer
        // that stops between the two (its `remove` empties this table's set for it) and a
        // new VM that registers its addresses would see this stale resolution put them
        // back, treated as the stopped peer until the next poll. Without the lock this
        // poll is skipped: the sets keep what `remove` left.
        let _lock = match self.registry.lock() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(event = "net-policy-peers", vm = %self.policy.name, error = %e, "cannot lock the VM registry; peers not resolved again this time");
                return Ok(false);
            }
        };
        let peers = self.registry.resolve(&self.policy.peer_vms());
        if peers == self.peers {
            return Ok(false);
        }
        let script: String = self
            .policy
            .interfaces
            .iter()
            .filter_map(|i| ruleset::peers_script(&self.policy.name, i, &peers))
            .collect();
        self.nft.apply(&script)?;
        tracing::info!(event = "net-policy-peers", vm = %self.policy.name, peers = ?peers, "named peers resolved again");
        self.peers = peers;
        Ok(true)
    }

    /// Removes the tables and the registry entry, and (under the registry's lock, so no
    /// new VM can claim the addresses meanwhile) empties this VM's set in the tables of
    /// the running VMs that name it, without waiting for their next poll.
    pub fn remove(&self) -> Result<(), NftError> {
        let lock = self.registry.lock();
        if let Err(e) = &lock {
            tracing::warn!(event = "net-policy-removed", error = %e, "cannot lock the VM registry; removing the policy anyway");
        }
        let r = self.nft.apply(&ruleset::delete_script(
            self.tables.iter().map(String::as_str),
        ));
        self.registry
            .unregister(self.policy.name.as_str(), self.pid);
        self.leave_peers();
        drop(lock);
        match &r {
            Ok(()) => {
                tracing::info!(event = "net-policy-removed", vm = %self.policy.name, tables = ?self.tables, "network policy removed")
            }
            Err(e) => {
                tracing::error!(event = "net-policy-removed", vm = %self.policy.name, error = %e, "cannot remove the network policy; `cvm net gc` removes it")
            }
        }
        r
    }

    /// Empties the sets holding this VM's addresses in every running VM's table (a table
    /// whose policy does not name this VM, or lacks a family, has no such set: nft
    /// refuses that one, which is fine, so each set is a transaction of its own).
    fn leave_peers(&self) {
        let Ok(entries) = self.registry.entries() else {
            return;
        };
        for e in entries
            .iter()
            .filter(|e| e.name != self.policy.name.as_str() && e.is_live())
        {
            for i in e.interfaces.iter().filter(|i| is_ours(&i.table)) {
                let scripts = ruleset::forget_peer_scripts(&i.table, &self.policy.name);
                let applied = scripts.iter().filter(|s| self.nft.apply(s).is_ok()).count();
                if applied > 0 {
                    tracing::info!(event = "net-policy-peers", vm = %e.name, gone = %self.policy.name, "a stopped VM's addresses removed from its peer's table");
                }
            }
        }
    }

    /// The `/v1/metrics` value of `counts`.
    fn metrics_layout(&self, counts: &SharedCounts) -> MetricsLayout {
        MetricsLayout {
            names: self
                .policy
                .interfaces
                .iter()
                .zip(&self.tables)
                .map(|(i, t)| (i.tap.as_str().to_owned(), t.clone()))
                .collect(),
            counts: counts.clone(),
        }
    }
}

/// Whether the interface `name` exists in this thread's network namespace (asked of
/// the kernel, not of /sys, which shows the namespace sysfs was mounted in).
fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated name.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Whether `t` is a table name `cvm` makes.
pub fn is_ours(t: &str) -> bool {
    t.starts_with(ruleset::TABLE_PREFIX)
        && t.len() <= 128
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Counters shared between the supervisor (which writes them) and the VMM process
/// (whose API reads them): an anonymous shared mapping made before the fork, so the
/// confined VMM needs no system call to read them.
#[derive(Debug, Clone)]
pub struct SharedCounts(Arc<Mapping>);

#[derive(Debug)]
struct Mapping {
    ptr: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is only accessed through `AtomicU64`s, which are Sync; the
// pointer stays valid until `Drop`, which runs once, when the last `Arc` goes.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl SharedCounts {
    /// A zeroed mapping of `n` counts.
    pub fn new(n: usize) -> std::io::Result<Self> {
        let len = n.max(1);
        let bytes = len * std::mem::size_of::<AtomicU64>();
        // SAFETY: an anonymous mapping with no address hint: it touches no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<AtomicU64>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Self(Arc::new(Mapping { ptr, len })))
    }

    fn slot(&self, i: usize) -> Option<&AtomicU64> {
        // SAFETY: `i < len` and the mapping holds `len` zero-initialised, page-aligned
        // u64s, which are valid `AtomicU64`s; it lives as long as `self`.
        (i < self.0.len).then(|| unsafe { &*self.0.ptr.as_ptr().add(i) })
    }

    /// Stores the counts of table `t`.
    pub fn store(&self, t: usize, c: &Counts) {
        for (k, v) in c.0.iter().enumerate() {
            if let Some(s) = self.slot(t * COUNTERS.len() + k) {
                s.store(*v, Ordering::Relaxed);
            }
        }
    }

    /// The counts of table `t`.
    pub fn load(&self, t: usize) -> Counts {
        let mut c = Counts::default();
        for (k, v) in c.0.iter_mut().enumerate() {
            *v = self
                .slot(t * COUNTERS.len() + k)
                .map_or(0, |s| s.load(Ordering::Relaxed));
        }
        c
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe {
            libc::munmap(
                self.ptr.as_ptr().cast(),
                self.len * std::mem::size_of::<AtomicU64>(),
            )
        };
    }
}

/// What `/v1/metrics` shows as `net_policy`.
#[derive(Debug, Clone)]
pub struct MetricsLayout {
    names: Vec<(String, String)>,
    counts: SharedCounts,
}

impl MetricsLayout {
    /// `{"interfaces": [{"tap", "table", "spoofed", "egress_denied", …}]}`.
    pub fn json(&self) -> Value {
        let interfaces: Vec<Value> = self
            .names
            .iter()
            .enumerate()
            .map(|(k, (tap, table))| {
                let c = self.counts.load(k);
                let mut o = json!({"tap": tap, "table": table});
                for (n, name) in COUNTERS.iter().enumerate() {
                    o[*name] = json!(c.0[n]);
                }
                o
            })
            .collect();
        json!({ "interfaces": interfaces })
    }
}

/// What [`supervise`] returns.
#[derive(Debug)]
pub enum Role {
    /// This is the child: run the VM; its API serves these metrics.
    Vm(MetricsLayout),
    /// This is the supervisor: close what the VM's process alone must hold (its taps),
    /// then [`Supervisor::run`] until the VM ends.
    Supervisor(Box<Supervisor>),
}

/// The supervisor's side of the fork, before it starts waiting.
#[derive(Debug)]
pub struct Supervisor {
    installed: Option<Installed>,
    child: libc::pid_t,
    set: libc::sigset_t,
    shared: SharedCounts,
}

impl Supervisor {
    /// Forwards signals to the VM, polls the counters and refreshes the peers until the
    /// VM ends, then removes the policy. Returns the VM's status (128 + signal if it was
    /// killed).
    pub fn run(mut self) -> i32 {
        match self.installed.take() {
            Some(i) => supervise_child(i, self.child, self.set, self.shared.clone()),
            None => 1,
        }
    }
}

impl Drop for Supervisor {
    /// A supervisor dropped without [`Supervisor::run`] still supervises: the VM never
    /// runs without its policy's clean-up.
    fn drop(&mut self) {
        if let Some(i) = self.installed.take() {
            supervise_child(i, self.child, self.set, self.shared.clone());
        }
    }
}

const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        for sig in FORWARDED {
            libc::sigaddset(&mut s, sig);
        }
        s
    }
}

/// Forks the VM's process from its supervisor (see [`super`]). The process must be
/// single-threaded (checked).
pub fn supervise(installed: Installed) -> Result<Role, NetPolicyError> {
    let fail = |what: &str, e: std::io::Error| NetPolicyError::Supervise(what.to_owned(), e);
    let n = host_vmm::isolation::jail::thread_count()
        .map_err(|e| fail("count threads", std::io::Error::other(e.to_string())))?;
    if n != 1 {
        return Err(fail(
            "fork",
            std::io::Error::other(format!("{n} threads run; the fork needs one")),
        ));
    }
    let shared = SharedCounts::new(installed.tables.len() * COUNTERS.len())
        .map_err(|e| fail("map the shared counters", e))?;
    let layout = installed.metrics_layout(&shared);
    let set = sigset();
    // SAFETY: a zeroed sigset_t is a valid out-parameter for pthread_sigmask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // Blocked before the fork, so a SIGTERM between the fork and the forwarding thread
    // is not lost (and does not kill the supervisor with the tables in place).
    // SAFETY: valid sets; this thread is the only one.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork in a single-threaded process (checked above); the child only
    // continues this code and then runs the VM.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        installed.remove().ok();
        return Err(fail("fork", e));
    }
    if pid == 0 {
        // SAFETY: restores the mask inherited from before the fork; prctl and getppid
        // take integers only.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != parent {
                // The supervisor is already gone: the VM must not run unsupervised.
                libc::_exit(1);
            }
        }
        // The supervisor owns the tables and the registry entry.
        std::mem::forget(installed);
        return Ok(Role::Vm(layout));
    }
    Ok(Role::Supervisor(Box::new(Supervisor {
        installed: Some(installed),
        child: pid,
        set,
        shared,
    })))
}

/// The VM's process while it is unreaped: signals go to it only until it is reaped, so
/// a forwarded signal can never reach another process that reuses its pid.
struct VmChild(Mutex<Option<libc::pid_t>>);

impl VmChild {
    fn signal(&self, sig: libc::c_int) {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pid) = *g {
            // SAFETY: kill with integers; `pid` is our unreaped child (the lock keeps
            // `reap` from reaping it meanwhile).
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Waits for the child to exit, then reaps it; its status (128 + signal if killed).
    fn reap(&self) -> i32 {
        let Some(pid) = *self.0.lock().unwrap_or_else(|e| e.into_inner()) else {
            return 1;
        };
        loop {
            // SAFETY: a zeroed siginfo_t is a valid out-parameter.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waits for our child without reaping it (WNOWAIT).
            let rc = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.take();
        wait_for(pid)
    }
}

/// The supervisor's side: forward signals, poll, wait, clean up.
fn supervise_child(
    installed: Installed,
    child: libc::pid_t,
    set: libc::sigset_t,
    shared: SharedCounts,
) -> i32 {
    let installed = Arc::new(Mutex::new(installed));
    let vm = Arc::new(VmChild(Mutex::new(Some(child))));
    let guard = Cleanup {
        installed: installed.clone(),
        vm: vm.clone(),
    };
    let forward = vm.clone();
    let spawned = std::thread::Builder::new()
        .name("net-signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: `set` is a valid, initialised set; `sig` receives the signal.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                tracing::info!(
                    event = "net-policy-signal",
                    signal = sig,
                    "forwarding the signal to the VM"
                );
                forward.signal(sig);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot forward signals to the VM: SIGTERM, SIGINT and SIGHUP stay blocked until it stops");
    }
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let poller = {
        let stop = stop.clone();
        let installed = installed.clone();
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("net-policy".into())
            .spawn(move || {
                let (m, cv) = &*stop;
                loop {
                    {
                        let mut i = installed.lock().unwrap_or_else(|e| e.into_inner());
                        for (k, c) in i.poll_counts().iter().enumerate() {
                            shared.store(k, c);
                        }
                        if let Err(e) = i.refresh_peers() {
                            tracing::error!(event = "net-policy-peers", error = %e, "cannot update the named peers' addresses");
                        }
                    }
                    let g = m.lock().unwrap_or_else(|e| e.into_inner());
                    let (g, _) = cv
                        .wait_timeout_while(g, POLL_INTERVAL, |s| !*s)
                        .unwrap_or_else(|e| e.into_inner());
                    if *g {
                        break;
                    }
                }
            })
            .ok()
    };
    let status = vm.reap();
    {
        let (m, cv) = &*stop;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }
    if let Some(p) = poller {
        let _ = p.join();
    }
    // A last read, so denials of the final seconds are logged too.
    installed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .poll_counts();
    drop(guard);
    status
}

/// Removes the policy when the supervisor leaves, even by a panic; a VM still running
/// then is killed and reaped first, so it never runs without its policy.
struct Cleanup {
    installed: Arc<Mutex<Installed>>,
    vm: Arc<VmChild>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.vm.signal(libc::SIGKILL);
        self.vm.reap();
        let i = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        let _ = i.remove();
    }
}

fn wait_for(pid: libc::pid_t) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into our local.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return 1;
        }
        if libc::WIFEXITED(status) {
            return libc::WEXITSTATUS(status);
        }
        if libc::WIFSIGNALED(status) {
            return 128 + libc::WTERMSIG(status);
        }
    }
}

/// Of `tables`, those that exist and carry `registry`'s owner mark (a `cvm` table name,
/// and the registry's id in the table's comment). Anything else is not this registry's
/// to delete: another state directory's VM, or a table `cvm` did not make.
fn owned_tables<'a>(
    nft: &Nft,
    registry: &Registry,
    tables: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>, NftError> {
    let existing = nft.netdev_tables()?;
    let mut out = Vec::new();
    for t in tables {
        if !is_ours(t) || !existing.iter().any(|e| e == t) || out.iter().any(|o| o == t) {
            continue;
        }
        match nft.table_comment(t)? {
            Some(c) if ruleset::owned_by(&c, registry.id()) => out.push(t.to_owned()),
            c => {
                tracing::warn!(event = "net-policy-not-owned", table = t, comment = ?c, "keeping a table this registry does not own");
            }
        }
    }
    Ok(out)
}

/// `cvm net gc`: removes the tables and registry entries of VMs of THIS registry that
/// are not running. Only tables listed in its stale entries and marked with its id are
/// deleted; tables of other registries (another `$CVM_NET_STATE_DIR`, another PID
/// namespace) and foreign tables stay. Returns the removed tables.
pub fn gc(nft: &Nft, registry: &Registry) -> Result<Vec<String>, NetPolicyError> {
    let lock = registry.lock()?;
    let entries = registry.entries()?;
    let live_tables: Vec<&str> = entries
        .iter()
        .filter(|e| e.is_live())
        .flat_map(|e| e.interfaces.iter().map(|i| i.table.as_str()))
        .collect();
    let candidates = entries
        .iter()
        .filter(|e| !e.is_live())
        .flat_map(|e| e.interfaces.iter().map(|i| i.table.as_str()))
        .filter(|t| !live_tables.contains(t));
    let stale = owned_tables(nft, registry, candidates)?;
    if !stale.is_empty() {
        nft.apply(&ruleset::delete_script(stale.iter().map(String::as_str)))?;
    }
    for e in entries.iter().filter(|e| !e.is_live()) {
        registry.remove(&e.name);
    }
    drop(lock);
    Ok(stale)
}
