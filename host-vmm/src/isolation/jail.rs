//! `--jail DIR --uid UID --gid GID`: run the VMM confined, as Firecracker's jailer does.
//!
//! [`enter`] is called while the VMM is still single-threaded and before it creates
//! the KVM VM (a VM belongs to the address space that created it, so it cannot cross a
//! `fork`). It
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
    /// The jail directory is unusable.
    #[error("jail directory {}: {reason}", path.display())]
    Root {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
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
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::Root {
        path: p.to_owned(),
        reason: "contains a NUL byte".into(),
    })
}

/// Checks the jail directory: an absolute, existing directory that is not `/`.
pub fn check_root(root: &Path) -> Result<PathBuf, JailError> {
    let err = |reason: &str| JailError::Root {
        path: root.to_owned(),
        reason: reason.into(),
    };
    let canon = root.canonicalize().map_err(|e| err(&e.to_string()))?;
    if !canon.is_dir() {
        return Err(err("not a directory"));
    }
    if canon == Path::new("/") {
        return Err(err("the host's root cannot be a jail"));
    }
    Ok(canon)
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
/// verifier); everything else is the same.
pub fn enter(cfg: &JailConfig, new_netns: bool) -> Result<Entered, JailError> {
    let root = check_root(&cfg.root)?;
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if new_netns {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare takes flags only; the process is single-threaded here (the caller
    // guarantees it), as CLONE_NEWNS/CLONE_NEWPID semantics require.
    sys("unshare", unsafe { libc::unshare(flags) } as libc::c_long)?;
    if let Entered::Parent(status) = supervise()? {
        return Ok(Entered::Parent(status));
    }
    pivot_into(&root)?;
    drop_privileges(cfg.uid, cfg.gid)?;
    Ok(Entered::Jailed)
}

/// Forks: the child goes on to run the VM (`Entered::Jailed`) and dies with its
/// parent; the parent waits and returns `Entered::Parent(status)`. [`enter`] uses it
/// after unsharing (the child is PID 1 of the new PID namespace); on its own it serves a
/// VM with a cgroup but no jail, since a VMM confined by seccomp cannot remove its own
/// cgroup when it ends, so the unconfined parent does.
pub fn supervise() -> Result<Entered, JailError> {
    // SAFETY: fork in a single-threaded process (the caller guarantees it); the child
    // only continues this code.
    let pid = sys("fork", unsafe { libc::fork() } as libc::c_long)?;
    if pid != 0 {
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
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
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
        assert!(check_root(Path::new("/"))
            .unwrap_err()
            .to_string()
            .contains("host's root"));
        assert!(check_root(Path::new("/nonexistent-jail-dir")).is_err());
        let f = tempfile_path();
        assert!(check_root(&f)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }

    fn tempfile_path() -> PathBuf {
        let p = std::env::temp_dir().join(format!("cvm-jail-file-{}", std::process::id()));
        std::fs::write(&p, b"x").unwrap();
        p
    }

    #[test]
    fn capability_structs_have_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<CapHeader>(), 8);
        assert_eq!(std::mem::size_of::<CapData>(), 12);
    }
}
