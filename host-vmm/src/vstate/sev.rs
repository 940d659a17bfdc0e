//! The KVM SEV command interface (`KVM_MEMORY_ENCRYPT_OP` with `struct kvm_sev_cmd`),
//! as upstream Linux (>= 6.11) defines it for SEV-SNP guests.
//!
//! [`SevRequest`] names each command with its typed argument struct (from
//! kvm-bindings, whose layouts are checked at compile time); [`KvmSev`] is the only
//! place that turns a request into a raw `kvm_sev_cmd` and issues it. Launch logic
//! is written against the [`SevCommands`] trait, so it can be driven by a recording
//! fake in tests on hosts without SEV hardware.

use std::os::fd::RawFd;

use kvm_bindings::{
    kvm_sev_cmd, kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start,
    kvm_sev_snp_launch_update,
};
use kvm_ioctls::VmFd;

/// `KVM_SEV_INIT2`.
pub const KVM_SEV_INIT2: u32 = 22;
/// `KVM_SEV_SNP_LAUNCH_START`.
pub const KVM_SEV_SNP_LAUNCH_START: u32 = 100;
/// `KVM_SEV_SNP_LAUNCH_UPDATE`.
pub const KVM_SEV_SNP_LAUNCH_UPDATE: u32 = 101;
/// `KVM_SEV_SNP_LAUNCH_FINISH`.
pub const KVM_SEV_SNP_LAUNCH_FINISH: u32 = 102;
/// `KVM_SEV_SNP_ENABLE_REQ_CERTS` (Linux 7.0): forward the guest's certificate
/// requests to the VMM as `KVM_EXIT_SNP_REQ_CERTS`. Before any vCPU exists.
pub const KVM_SEV_SNP_ENABLE_REQ_CERTS: u32 = 103;

/// One SEV command with its argument.
#[derive(Debug)]
pub enum SevRequest<'a> {
    /// Initialise the SEV context of the VM (VMSA features, GHCB version).
    Init2(&'a mut kvm_sev_init),
    /// Create the SNP guest context with the guest policy.
    SnpLaunchStart(&'a mut kvm_sev_snp_launch_start),
    /// Measure and encrypt a range of guest pages. KVM may process only part of the
    /// range and update the struct to the remainder.
    SnpLaunchUpdate(&'a mut kvm_sev_snp_launch_update),
    /// Build the VMSAs from the vCPU state and finalise the launch digest.
    SnpLaunchFinish(&'a mut kvm_sev_snp_launch_finish),
    /// Route extended-report certificate requests to the VMM (no argument).
    SnpEnableReqCerts,
}

impl SevRequest<'_> {
    /// The command id.
    pub fn id(&self) -> u32 {
        match self {
            SevRequest::Init2(_) => KVM_SEV_INIT2,
            SevRequest::SnpLaunchStart(_) => KVM_SEV_SNP_LAUNCH_START,
            SevRequest::SnpLaunchUpdate(_) => KVM_SEV_SNP_LAUNCH_UPDATE,
            SevRequest::SnpLaunchFinish(_) => KVM_SEV_SNP_LAUNCH_FINISH,
            SevRequest::SnpEnableReqCerts => KVM_SEV_SNP_ENABLE_REQ_CERTS,
        }
    }

    /// The command name.
    pub fn name(&self) -> &'static str {
        match self {
            SevRequest::Init2(_) => "KVM_SEV_INIT2",
            SevRequest::SnpLaunchStart(_) => "KVM_SEV_SNP_LAUNCH_START",
            SevRequest::SnpLaunchUpdate(_) => "KVM_SEV_SNP_LAUNCH_UPDATE",
            SevRequest::SnpLaunchFinish(_) => "KVM_SEV_SNP_LAUNCH_FINISH",
            SevRequest::SnpEnableReqCerts => "KVM_SEV_SNP_ENABLE_REQ_CERTS",
        }
    }
}

/// A failed SEV command: the ioctl's errno and the SEV firmware status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevCmdError {
    /// errno of the ioctl (EAGAIN means "call again").
    pub errno: i32,
    /// SEV firmware status (0 when the kernel failed before reaching the firmware).
    pub fw_error: u32,
}

/// Something that executes SEV commands for one VM.
pub trait SevCommands {
    /// Issues `req`; on success the argument struct may have been updated by KVM.
    fn issue(&mut self, req: SevRequest<'_>) -> Result<(), SevCmdError>;
}

/// SEV commands on a real KVM VM, authenticated with an open `/dev/sev` fd.
#[derive(Debug)]
pub struct KvmSev<'a> {
    vm: &'a VmFd,
    sev_fd: RawFd,
}

impl<'a> KvmSev<'a> {
    /// Commands for `vm`; `sev_fd` is an open `/dev/sev`.
    pub fn new(vm: &'a VmFd, sev_fd: RawFd) -> Self {
        Self { vm, sev_fd }
    }
}

impl SevCommands for KvmSev<'_> {
    fn issue(&mut self, req: SevRequest<'_>) -> Result<(), SevCmdError> {
        let id = req.id();
        // Each variant holds an exclusive borrow of the argument struct the command
        // expects; the pointer stays valid for the duration of the ioctl below.
        let data = match req {
            SevRequest::Init2(a) => a as *mut kvm_sev_init as u64,
            SevRequest::SnpLaunchStart(a) => a as *mut kvm_sev_snp_launch_start as u64,
            SevRequest::SnpLaunchUpdate(a) => a as *mut kvm_sev_snp_launch_update as u64,
            SevRequest::SnpLaunchFinish(a) => a as *mut kvm_sev_snp_launch_finish as u64,
            SevRequest::SnpEnableReqCerts => 0,
        };
        let sev_fd = u32::try_from(self.sev_fd).map_err(|_| SevCmdError {
            errno: libc::EBADF,
            fw_error: 0,
        })?;
        let mut cmd = kvm_sev_cmd {
            id,
            data,
            sev_fd,
            ..Default::default()
        };
        self.vm.encrypt_op_sev(&mut cmd).map_err(|e| SevCmdError {
            errno: e.errno(),
            fw_error: cmd.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_ids_match_the_uapi() {
        // include/uapi/linux/kvm.h, enum sev_cmd_id.
        let mut init = kvm_sev_init::default();
        assert_eq!(SevRequest::Init2(&mut init).id(), 22);
        let mut start = kvm_sev_snp_launch_start::default();
        assert_eq!(SevRequest::SnpLaunchStart(&mut start).id(), 100);
        let mut upd = kvm_sev_snp_launch_update::default();
        assert_eq!(SevRequest::SnpLaunchUpdate(&mut upd).id(), 101);
        let mut fin = kvm_sev_snp_launch_finish::default();
        assert_eq!(SevRequest::SnpLaunchFinish(&mut fin).id(), 102);
        assert_eq!(SevRequest::SnpEnableReqCerts.id(), 103);
        assert_eq!(std::mem::size_of::<kvm_sev_snp_launch_finish>(), 88);
        assert_eq!(std::mem::size_of::<kvm_sev_snp_launch_update>(), 64);
        assert_eq!(std::mem::size_of::<kvm_sev_init>(), 48);
    }
}
