//! Per-thread seccomp filters (seccompiler), installed by each thread before any guest
//! code runs. Any other system call kills the whole VMM process (fail closed: a
//! compromised device model or vCPU loop cannot reach the rest of the kernel).
//!
//! - vCPU threads: `KVM_RUN`, `KVM_GET_REGS` and `KVM_GET_SREGS` (diagnosis) on their
//!   vCPU fd, `write` (serial console, irqfd, log), memory management for the
//!   allocator, futexes, signal return (the kick signal), thread exit. A vCPU of an
//!   emulated TEE also has `KVM_SET_REGS` (the emulated PSP / TDX module writes the
//!   results of the instructions it emulates); a vCPU of a real SNP/TDX guest has the
//!   conversion calls instead. Which filter a vCPU thread gets is the TEE backend's
//!   decision ([`crate::tee::backend::TeeRuntime::vcpu_thread`]).
//! - the vsock event thread: epoll, reading and writing its sockets, accepting on the
//!   hybrid-vsock listener, connecting to Unix sockets and the verifier (socket,
//!   connect, getsockopt/setsockopt, shutdown, FIONBIO), getrandom for TLS, and
//!   socketpair for a guest connection to the emulated TEEs' evidence service.
//! - the evidence service thread (emulated TEEs only): reading and writing the socket
//!   ends it is handed, setting their timeouts.
//! - each virtio-net event thread: epoll, `read`/`write` of its tap, eventfd and
//!   timerfds, `timerfd_settime` (rate limiters) and `ioctl(TUNSETOFFLOAD)` only (the
//!   tap is opened and configured before the jail).
//! - the VMM thread, once the guest is running: waiting (futex, sleep), signalling the
//!   vCPU threads out of KVM_RUN (`tgkill`), `KVM_IOEVENTFD` (one probe registered and
//!   unregistered at start, which ends KVM's pending SRCU grace period early so that
//!   closing the VM does not wait for it), logging, and exit.
//!
//! The lists were derived from `strace -f` of `cvm launch` and are exercised by the KVM
//! integration tests, which run with the filters on.

use std::collections::BTreeMap;
use std::mem::size_of;

use kvm_bindings::{kvm_regs, kvm_sregs};
use seccompiler::{
    apply_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Whether filters are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Install the filters (default).
    #[default]
    On,
    /// No filters: for debugging only; the VMM warns loudly.
    Off,
}

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread.
    Vcpu,
    /// A vCPU of a real SNP/TDX guest: also converts memory (memory attributes,
    /// guest_memfd hole punching) and reprograms interrupt routes (the VMM's I/O APIC).
    ConfidentialVcpu,
    /// A vCPU of an emulated SNP/TDX guest: also sets registers (`KVM_SET_REGS`), as the
    /// software PSP / TDX module does when it emulates `pvalidate`, `tdcall` or an
    /// emulator trap and advances RIP.
    EmulatedTeeVcpu,
    /// The TDX quote thread: talks to QGS on a Unix socket and signals an MSI.
    Quote,
    /// The VMM's main thread after the guest started.
    Vmm,
    /// The virtio-vsock event thread (Unix sockets, the attestation relay's TCP/TLS).
    VsockEvents,
    /// A virtio-net event thread: reads and writes its tap, eventfd and timerfds, arms
    /// its rate limiters' timers, and sets the tap's offloads once the guest negotiated
    /// them.
    NetEvents,
    /// The `--api-socket` thread: accepts and answers on an already bound Unix socket,
    /// and kicks vCPU threads out of KVM_RUN to pause them.
    Api,
    /// The emulated TEEs' evidence service ([`crate::tee::evidence_vsock`]): reads
    /// requests from and writes answers to the socket ends the vsock thread hands it.
    Evidence,
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be compiled.
    #[error("cannot build the {0:?} seccomp filter")]
    Build(ThreadKind, #[source] seccompiler::BackendError),
    /// The filter could not be compiled to BPF.
    #[error("cannot compile the {0:?} seccomp filter")]
    Compile(ThreadKind, #[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the {0:?} seccomp filter")]
    Install(ThreadKind, #[source] seccompiler::Error),
}

const KVMIO: u64 = 0xAE;
const fn io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
/// KVM_RUN.
pub const KVM_RUN: u64 = io(0x80);
/// KVM_GET_REGS.
pub const KVM_GET_REGS: u64 = ior(0x81, size_of::<kvm_regs>());
/// KVM_GET_SREGS.
pub const KVM_GET_SREGS: u64 = ior(0x83, size_of::<kvm_sregs>());
/// KVM_SET_USER_MEMORY_REGION.
pub const KVM_SET_USER_MEMORY_REGION: u64 =
    iow(0x46, size_of::<kvm_bindings::kvm_userspace_memory_region>());
/// KVM_SET_REGS.
pub const KVM_SET_REGS: u64 = iow(0x82, size_of::<kvm_regs>());
const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
/// `KVM_SET_MEMORY_ATTRIBUTES`.
pub const KVM_SET_MEMORY_ATTRIBUTES: u64 =
    iow(0xd2, size_of::<kvm_bindings::kvm_memory_attributes>());
/// `KVM_SET_GSI_ROUTING`.
pub const KVM_SET_GSI_ROUTING: u64 = iow(0x6a, size_of::<kvm_bindings::kvm_irq_routing>());
/// `KVM_SIGNAL_MSI`.
pub const KVM_SIGNAL_MSI: u64 = iow(0xa5, size_of::<kvm_bindings::kvm_msi>());
/// `KVM_IOEVENTFD`.
pub const KVM_IOEVENTFD: u64 = iow(0x79, size_of::<kvm_bindings::kvm_ioeventfd>());

fn allow(rules: &mut BTreeMap<i64, Vec<SeccompRule>>, syscalls: &[libc::c_long]) {
    for s in syscalls {
        rules.insert(*s, vec![]);
    }
}

/// The BPF program for `kind`.
pub fn program(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // Common to every thread: memory management for the allocator, futexes, logging,
    // signal handling and exit.
    allow(
        &mut rules,
        &[
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_futex,
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mprotect,
            libc::SYS_madvise,
            libc::SYS_brk,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_sched_yield,
            libc::SYS_clock_gettime,
            libc::SYS_close,
            libc::SYS_exit,
            libc::SYS_exit_group,
            // Answered with EACCES by the second filter (see `deny_open_program`).
            libc::SYS_openat,
        ],
    );
    let arg1_is = |value: u64| {
        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| SeccompError::Build(kind, e))
    };
    // std checks an owned fd with F_GETFD before closing it (debug builds).
    rules.insert(libc::SYS_fcntl, vec![arg1_is(libc::F_GETFD as u64)?]);
    match kind {
        ThreadKind::Quote => {
            allow(
                &mut rules,
                &[
                    libc::SYS_socket,
                    libc::SYS_connect,
                    libc::SYS_setsockopt,
                    libc::SYS_sendto,
                    libc::SYS_recvfrom,
                    libc::SYS_read,
                ],
            );
            rules.insert(libc::SYS_ioctl, vec![arg1_is(KVM_SIGNAL_MSI)?]);
        }
        ThreadKind::Vcpu | ThreadKind::ConfidentialVcpu | ThreadKind::EmulatedTeeVcpu => {
            // virtio-blk requests are served on the vCPU thread that notified the
            // queue: positioned reads and writes, and flushes.
            allow(
                &mut rules,
                &[libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync],
            );
            let mut ioctls = vec![
                arg1_is(KVM_RUN)?,
                arg1_is(KVM_GET_REGS)?,
                arg1_is(KVM_GET_SREGS)?,
            ];
            if kind == ThreadKind::EmulatedTeeVcpu {
                // Emulated instructions write their results; the private-memory
                // contract (vstate::cc_memory) scrubs pages (fallocate PUNCH_HOLE |
                // KEEP_SIZE on its memfd, mmap/mprotect as every thread may) and, for a
                // CPL3 fault without a GPA, splits its memslots.
                ioctls.push(arg1_is(KVM_SET_REGS)?);
                ioctls.push(arg1_is(KVM_SET_USER_MEMORY_REGION)?);
                rules.insert(
                    libc::SYS_fallocate,
                    vec![arg1_is(
                        (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64,
                    )?],
                );
            }
            if kind == ThreadKind::ConfidentialVcpu {
                // Conversions: the PRIVATE attribute and guest_memfd hole punching
                // (fallocate with exactly PUNCH_HOLE | KEEP_SIZE); I/O APIC routes.
                ioctls.push(arg1_is(KVM_SET_MEMORY_ATTRIBUTES)?);
                ioctls.push(arg1_is(KVM_SET_GSI_ROUTING)?);
                rules.insert(
                    libc::SYS_fallocate,
                    vec![arg1_is(
                        (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64,
                    )?],
                );
            }
            rules.insert(libc::SYS_ioctl, ioctls);
        }
        ThreadKind::VsockEvents => {
            allow(
                &mut rules,
                &[
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_epoll_ctl,
                    libc::SYS_read,
                    libc::SYS_readv,
                    libc::SYS_recvfrom,
                    libc::SYS_sendto,
                    libc::SYS_socket,
                    libc::SYS_connect,
                    libc::SYS_accept4,
                    libc::SYS_getsockopt,
                    libc::SYS_setsockopt,
                    libc::SYS_shutdown,
                    libc::SYS_getrandom,
                    // A guest connection to the emulated TEEs' evidence service.
                    libc::SYS_socketpair,
                ],
            );
            rules.insert(libc::SYS_ioctl, vec![arg1_is(libc::FIONBIO)?]);
            rules.insert(
                libc::SYS_fcntl,
                vec![
                    arg1_is(libc::F_GETFD as u64)?,
                    arg1_is(libc::F_GETFL as u64)?,
                    arg1_is(libc::F_SETFL as u64)?,
                ],
            );
        }
        ThreadKind::NetEvents => {
            // Frames are read and written whole (read/write on the tap, a common
            // call); the wake eventfd and the timers are read; a throttled queue arms
            // its timer; the offloads follow the guest's features.
            allow(
                &mut rules,
                &[
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_read,
                    libc::SYS_timerfd_settime,
                ],
            );
            rules.insert(
                libc::SYS_ioctl,
                vec![arg1_is(crate::net::tap::TUNSETOFFLOAD)?],
            );
        }
        ThreadKind::Evidence => {
            allow(
                &mut rules,
                &[
                    libc::SYS_read,
                    libc::SYS_recvfrom,
                    libc::SYS_sendto,
                    libc::SYS_setsockopt,
                    libc::SYS_shutdown,
                    // std's hash maps seed themselves once per thread.
                    libc::SYS_getrandom,
                ],
            );
        }
        ThreadKind::Api => {
            allow(
                &mut rules,
                &[
                    libc::SYS_accept4,
                    libc::SYS_read,
                    libc::SYS_recvfrom,
                    libc::SYS_sendto,
                    libc::SYS_setsockopt,
                    libc::SYS_shutdown,
                    libc::SYS_tgkill,
                    libc::SYS_getpid,
                    // std's hash maps seed themselves once per thread.
                    libc::SYS_getrandom,
                ],
            );
            // UnixStream::try_clone duplicates the descriptor.
            rules.insert(
                libc::SYS_fcntl,
                vec![
                    arg1_is(libc::F_GETFD as u64)?,
                    arg1_is(libc::F_DUPFD_CLOEXEC as u64)?,
                ],
            );
        }
        ThreadKind::Vmm => {
            allow(
                &mut rules,
                &[
                    libc::SYS_tgkill,
                    libc::SYS_getpid,
                    libc::SYS_clock_nanosleep,
                    libc::SYS_nanosleep,
                ],
            );
            // Registering and unregistering one probe ioeventfd right after start
            // (vmm::settle_srcu), so that closing the VM does not wait for KVM's SRCU.
            rules.insert(libc::SYS_ioctl, vec![arg1_is(KVM_IOEVENTFD)?]);
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind, e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile(kind, e))
}

/// The second filter of every thread: `openat` fails with EACCES instead of killing
/// the VMM. glibc's malloc opens `/proc/sys/vm/overcommit_memory` the first time a
/// thread arena shrinks (after a device freed a large buffer) and carries on without
/// it when the open fails, so refusing it is safe; no file can be opened.
pub fn deny_open_program(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    allow(&mut rules, &[libc::SYS_openat, libc::SYS_open]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind, e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile(kind, e))
}

/// Installs the filters for `kind` on the calling thread (no-op when `mode` is off).
pub fn install(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    if mode == SeccompMode::Off {
        return Ok(());
    }
    let prog = program(kind)?;
    let deny_open = deny_open_program(kind)?;
    // The permissive one first: installing a filter takes prctl and seccomp, which the
    // allow list does not permit.
    apply_filter(&deny_open).map_err(|e| SeccompError::Install(kind, e))?;
    apply_filter(&prog).map_err(|e| SeccompError::Install(kind, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_abi() {
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_GET_SREGS, 0x8138_AE83);
        assert_eq!(KVM_SET_REGS, 0x4090_AE82);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_AE46);
        assert_eq!(KVM_SET_MEMORY_ATTRIBUTES, 0x4020_AED2);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_AE6A);
        assert_eq!(KVM_SIGNAL_MSI, 0x4020_AEA5);
        assert_eq!(KVM_IOEVENTFD, 0x4040_AE79);
    }

    #[test]
    fn programs_compile() {
        assert!(program(ThreadKind::Vcpu).unwrap().len() > 10);
        assert!(program(ThreadKind::Vmm).unwrap().len() > 10);
        assert!(program(ThreadKind::VsockEvents).unwrap().len() > 10);
        assert!(program(ThreadKind::Api).unwrap().len() > 10);
        assert!(program(ThreadKind::NetEvents).unwrap().len() > 10);
        assert!(program(ThreadKind::ConfidentialVcpu).unwrap().len() > 10);
        assert!(program(ThreadKind::EmulatedTeeVcpu).unwrap().len() > 10);
        assert!(program(ThreadKind::Quote).unwrap().len() > 10);
        assert!(program(ThreadKind::Evidence).unwrap().len() > 10);
    }

    #[test]
    fn a_filtered_thread_is_killed_for_a_forbidden_syscall() {
        // Run the check in a child process: the filter kills the whole process.
        if std::env::var_os("CVM_SECCOMP_CHILD").is_some() {
            install(ThreadKind::Vcpu, SeccompMode::On).unwrap();
            // Opening a file fails instead of killing.
            let e = std::fs::File::open("/proc/sys/vm/overcommit_memory").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EACCES));
            // SAFETY: getppid has no preconditions; it is simply not on the allow list.
            unsafe { libc::getppid() };
            std::process::exit(0);
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "seccomp::tests::a_filtered_thread_is_killed_for_a_forbidden_syscall",
                "--nocapture",
            ])
            .env("CVM_SECCOMP_CHILD", "1")
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{out:?}");
    }

    #[test]
    fn confidential_vcpus_may_punch_holes_and_nothing_else_with_fallocate() {
        if std::env::var_os("CVM_SECCOMP_CC_CHILD").is_some() {
            let f = tempfile::tempfile().unwrap();
            f.set_len(0x4000).unwrap();
            let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
            install(ThreadKind::ConfidentialVcpu, SeccompMode::On).unwrap();
            let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: fallocate on a file this process owns.
            assert_eq!(unsafe { libc::fallocate(fd, punch, 0, 0x1000) }, 0);
            // Allocating (mode 0) is not a conversion: the filter kills.
            // SAFETY: as above.
            unsafe { libc::fallocate(fd, 0, 0, 0x1000) };
            std::process::exit(0);
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "seccomp::tests::confidential_vcpus_may_punch_holes_and_nothing_else_with_fallocate",
                "--nocapture",
            ])
            .env("CVM_SECCOMP_CC_CHILD", "1")
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{out:?}");
    }
}
