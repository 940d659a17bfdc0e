//! `--jail DIR --uid UID --gid GID`: run the VMM confined, as Firecracker's jailer does.
//!
//! [`enter`] is called while the VMM is still single-threaded and before it creates
//! the KVM VM (a VM belongs to the address space that created it, so it cannot cross a
//! `fork`). It and [`supervise`] are `unsafe fn`: they fork, and a fork is only sound in
//! a single-threaded process (the child gets a copy of memory in which another thread
//! may have held a lock or been half-way through an update). They check the thread
//! count and refuse with [`JailError::Threaded`], but the caller states the rest of the
//! precondition (see their `# Safety` sections). [`enter`]
//!
//! 1. unshares the mount, PID, network, IPC and UTS namespaces;
//! 2. forks: the child is PID 1 of the new PID namespace and goes on to run the VM; the
//!    parent only waits for it (and then cleans up, e.g. the VM's cgroup) and exits with
//!    its status;
//! 3. in the child: makes every mount private, bind-mounts DIR onto itself,
//!    `pivot_root`s into it and detaches the old root, so nothing outside DIR is
//!    reachable by path;
//! 4. drops every capability from the bounding set, sets no-new-privileges, drops
//!    supplementary groups and switches to GID and UID, then clears the permitted,
//!    effective and inheritable sets and checks with `capget` that nothing is left
//!    (fail closed).
//!
//! File descriptors opened before (`/dev/kvm`, images already read) stay usable. Paths
//! the VMM opens after the jail is entered (`--disk`, `--serial file:`, `--vsock-uds`)
//! are resolved inside DIR, like Firecracker's: put (or hard-link) them there. The new
//! network namespace has only a down loopback interface, so the VMM itself cannot open
//! network connections from inside the jail.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where and as whom to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// The new root directory.
    pub root: PathBuf,
    /// The user to run as.
    pub uid: u32,
    /// The group to run as.
    pub gid: u32,
}

/// Why the jail could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail directory cannot be resolved (missing, unreadable).
    #[error("jail directory {} cannot be used", path.display())]
    Root {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The jail path is not a directory.
    #[error("jail directory {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The jail path is the host's root.
    #[error("jail directory {}: the host's root cannot be a jail", .0.display())]
    HostRoot(PathBuf),
    /// The jail path cannot be passed to the kernel.
    #[error("jail directory {} contains a NUL byte", .0.display())]
    NulByte(PathBuf),
    /// The process has other threads, so it cannot fork soundly.
    #[error("the process has {0} threads; it must be single-threaded to fork into the jail or its supervisor")]
    Threaded(usize),
    /// The thread count could not be read.
    #[error("cannot count this process's threads (/proc/self/task)")]
    Threads(#[source] std::io::Error),
    /// A system call failed.
    #[error("{call} failed while entering the jail")]
    Sys {
        /// The call.
        call: &'static str,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// Capabilities remained after dropping them.
    #[error(
        "capabilities remain after dropping privileges (effective {eff:#x}, permitted {prm:#x})"
    )]
    CapsRemain {
        /// Effective set.
        eff: u64,
        /// Permitted set.
        prm: u64,
    },
}

fn sys(call: &'static str, rc: libc::c_long) -> Result<libc::c_long, JailError> {
    if rc < 0 {
        Err(JailError::Sys {
            call,
            source: std::io::Error::last_os_error(),
        })
    } else {
        Ok(rc)
    }
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::NulByte(p.to_owned()))
}

/// Checks the jail directory: an absolute, existing directory that is not `/`.
pub fn check_root(root: &Path) -> Result<PathBuf, JailError> {
    let canon = root.canonicalize().map_err(|source| JailError::Root {
        path: root.to_owned(),
        source,
    })?;
    if !canon.is_dir() {
        return Err(JailError::NotADirectory(root.to_owned()));
    }
    if canon == Path::new("/") {
        return Err(JailError::HostRoot(root.to_owned()));
    }
    Ok(canon)
}

/// The number of threads of this process (the entries of `/proc/self/task`).
pub fn thread_count() -> Result<usize, JailError> {
    Ok(std::fs::read_dir("/proc/self/task")
        .map_err(JailError::Threads)?
        .count())
}

/// Fails closed unless this process has exactly one thread.
fn check_single_threaded() -> Result<(), JailError> {
    match thread_count()? {
        1 => Ok(()),
        n => Err(JailError::Threaded(n)),
    }
}

/// What [`enter`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entered {
    /// This is the jailed child: run the VM.
    Jailed,
    /// This is the parent outside the jail; the child ended with this exit status
    /// (128 + signal if it was killed). Clean up and exit with it.
    Parent(i32),
}

/// Enters the jail (see the module docs).
/// `new_netns: false` keeps the host's network namespace (for a VMM that must reach a
/// verifier); everything else is the same. `after_fork` runs in the parent right after
/// the fork, while the child sets up (see [`supervise`]).
///
/// # Safety
///
/// The process must be single-threaded, and stay so until this returns: it forks (see
/// [`supervise`]), and `unshare(CLONE_NEWNS)` and the credential and capability calls
/// act on the calling thread only, so another thread would keep the host's mounts and
/// the privileges this drops. A second thread present on entry is detected and
/// refused ([`JailError::Threaded`]); one started concurrently (by a signal handler or
/// another library) cannot be, so the caller guarantees none is. Both the parent and
/// the child then own every value the caller had: values whose `Drop` acts on shared
/// state (a [`super::cgroup::VmCgroup`], temporary files) must be forgotten in one of
/// them.
pub unsafe fn enter(
    cfg: &JailConfig,
    new_netns: bool,
    after_fork: impl FnOnce(),
) -> Result<Entered, JailError> {
    let root = check_root(&cfg.root)?;
    check_single_threaded()?;
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if new_netns {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare takes flags only; the process is single-threaded here (checked
    // above and guaranteed by our caller), as CLONE_NEWNS/CLONE_NEWPID semantics require.
    sys("unshare", unsafe { libc::unshare(flags) } as libc::c_long)?;
    // SAFETY: still single-threaded (our own precondition); the caller knows both
    // processes return from `enter`.
    if let Entered::Parent(status) = unsafe { supervise(after_fork) }? {
        return Ok(Entered::Parent(status));
    }
    pivot_into(&root)?;
    // SAFETY: the child of the fork has one thread.
    unsafe { drop_privileges(cfg.uid, cfg.gid) }?;
    Ok(Entered::Jailed)
}

/// Forks: the child goes on to run the VM (`Entered::Jailed`) and dies with its
/// parent; the parent waits and returns `Entered::Parent(status)`. [`enter`] uses it
/// after unsharing (the child is PID 1 of the new PID namespace); on its own it serves a
/// VM with a cgroup or a control API socket but no jail: a VMM confined by seccomp can
/// remove neither its cgroup nor its socket file when it ends, so the unconfined parent
/// does. `after_fork` runs in the parent right after the fork, concurrently with the
/// child's set-up: work that would otherwise delay the parent's clean-up after the
/// child ends, such as leaving the VM's cgroup the child inherited (a cgroup v1
/// `cgroup.procs` write may wait for an RCU grace period). The parent then sleeps in
/// `waitpid` until the child ends (no polling).
///
/// # Safety
///
/// The process must be single-threaded: `fork` copies only the calling thread, so a
/// lock another thread held (the allocator's, stdout's, a `Mutex`) would stay locked
/// forever in the child, and data it was updating would be half-written. A second
/// thread present on entry is detected and refused ([`JailError::Threaded`]); the
/// caller guarantees that none is started concurrently. Both processes return from this
/// function owning every value the caller had: values whose `Drop` acts on shared state
/// (a [`super::cgroup::VmCgroup`], temporary files) must be forgotten in one of them.
pub unsafe fn supervise(after_fork: impl FnOnce()) -> Result<Entered, JailError> {
    check_single_threaded()?;
    // SAFETY: fork in a single-threaded process (checked above; our caller guarantees
    // no thread appears meanwhile); the child only continues this code.
    let pid = sys("fork", unsafe { libc::fork() } as libc::c_long)?;
    if pid != 0 {
        after_fork();
        return Ok(Entered::Parent(wait_for(pid as libc::pid_t)));
    }
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    sys("prctl(PR_SET_PDEATHSIG)", rc as libc::c_long)?;
    Ok(Entered::Jailed)
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

fn pivot_into(root: &Path) -> Result<(), JailError> {
    let none = std::ptr::null::<libc::c_char>();
    let slash = c"/";
    // SAFETY: valid NUL-terminated strings and null optional arguments.
    sys("mount(MS_PRIVATE)", unsafe {
        libc::mount(
            none,
            slash.as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    } as libc::c_long)?;
    let r = cstr(root)?;
    // SAFETY: as above.
    sys("mount(MS_BIND)", unsafe {
        libc::mount(
            r.as_ptr(),
            r.as_ptr(),
            none,
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    } as libc::c_long)?;
    std::env::set_current_dir(root).map_err(|source| JailError::Sys {
        call: "chdir",
        source,
    })?;
    let old = c".old_root";
    // SAFETY: valid path string.
    let rc = unsafe { libc::mkdir(old.as_ptr(), 0o700) };
    if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
        return Err(JailError::Sys {
            call: "mkdir(.old_root)",
            source: std::io::Error::last_os_error(),
        });
    }
    let dot = c".";
    // SAFETY: pivot_root with two valid paths; no libc wrapper exists.
    sys("pivot_root", unsafe {
        libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), old.as_ptr())
    })?;
    std::env::set_current_dir("/").map_err(|source| JailError::Sys {
        call: "chdir(/)",
        source,
    })?;
    let old_abs = c"/.old_root";
    // SAFETY: valid path; detaching the old root makes the host's tree unreachable.
    let rc = unsafe { libc::umount2(old_abs.as_ptr(), libc::MNT_DETACH) };
    sys("umount2(old root)", rc as libc::c_long)?;
    // SAFETY: valid path.
    unsafe { libc::rmdir(old_abs.as_ptr()) };
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Drops the bounding set, groups, IDs and all capabilities; verifies none remain.
///
/// # Safety
///
/// The process must be single-threaded: `PR_CAPBSET_DROP`, `PR_SET_NO_NEW_PRIVS` and
/// `capset` change the calling thread only, so another thread would keep every
/// privilege this claims to have dropped.
unsafe fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    // The bounding set first: dropping needs CAP_SETPCAP, which we still have.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments; EINVAL past the last capability.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(JailError::Sys {
                call: "prctl(PR_CAPBSET_DROP)",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    sys("prctl(PR_SET_NO_NEW_PRIVS)", rc as libc::c_long)?;
    // SAFETY: an empty group list.
    sys("setgroups", unsafe { libc::setgroups(0, std::ptr::null()) }
        as libc::c_long)?;
    // SAFETY: integer arguments.
    sys("setresgid", unsafe { libc::setresgid(gid, gid, gid) }
        as libc::c_long)?;
    // SAFETY: integer arguments.
    sys("setresuid", unsafe { libc::setresuid(uid, uid, uid) }
        as libc::c_long)?;
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a v3 header and two data structs we own.
    sys("capset", unsafe {
        libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr())
    })?;
    let (eff, prm) = current_caps()?;
    if eff != 0 || prm != 0 {
        return Err(JailError::CapsRemain { eff, prm });
    }
    Ok(())
}

/// The effective and permitted capability sets of this thread.
pub fn current_caps() -> Result<(u64, u64), JailError> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two data structs into our array.
    sys("capget", unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    })?;
    let eff = u64::from(data[0].effective) | (u64::from(data[1].effective) << 32);
    let prm = u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32);
    Ok((eff, prm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_root_is_not_a_jail() {
        let e = check_root(Path::new("/")).unwrap_err();
        assert!(matches!(e, JailError::HostRoot(_)), "{e:?}");
        assert!(e.to_string().contains("host's root"), "{e}");
        assert!(matches!(
            check_root(Path::new("/nonexistent-jail-dir")),
            Err(JailError::Root { .. })
        ));
        let f = tempfile_path();
        let e = check_root(&f).unwrap_err();
        assert!(matches!(e, JailError::NotADirectory(_)), "{e:?}");
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    fn tempfile_path() -> PathBuf {
        let p = std::env::temp_dir().join(format!("cvm-jail-file-{}", std::process::id()));
        std::fs::write(&p, b"x").unwrap();
        p
    }

    #[test]
    fn a_multithreaded_process_is_refused_before_it_forks() {
        // A second thread that exists for the whole check.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        assert!(thread_count().unwrap() >= 2);
        // SAFETY: deliberately called with another thread alive: it must refuse before
        // forking. Should it fork anyway, the child leaves at once without touching
        // any lock.
        match unsafe { supervise(|| {}) } {
            Err(JailError::Threaded(n)) => assert!(n >= 2, "{n}"),
            // SAFETY: _exit ends the forked child without running any Rust code.
            Ok(Entered::Jailed) => unsafe { libc::_exit(0) },
            other => panic!("supervise forked a multithreaded process: {other:?}"),
        }
        let cfg = JailConfig {
            root: std::env::temp_dir(),
            uid: 65534,
            gid: 65534,
        };
        // SAFETY: as above; `enter` must refuse before unsharing or forking.
        match unsafe { enter(&cfg, true, || {}) } {
            Err(JailError::Threaded(n)) => assert!(n >= 2, "{n}"),
            // SAFETY: as above.
            Ok(Entered::Jailed) => unsafe { libc::_exit(0) },
            other => panic!("enter went ahead in a multithreaded process: {other:?}"),
        }
        tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn capability_structs_have_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<CapHeader>(), 8);
        assert_eq!(std::mem::size_of::<CapData>(), 12);
    }
}
