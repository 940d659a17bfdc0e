//! The KVM VM: its fd, in-kernel interrupt controller and guest memory.

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::memory::{self, MemoryError};

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_VM failed.
    #[error("KVM_CREATE_VM failed")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// A KVM VM ioctl failed.
    #[error("{0} failed")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory could not be set up.
    #[error("cannot set up guest memory")]
    Memory(#[from] MemoryError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// A plain (unencrypted) KVM VM with its guest memory.
///
/// Field order matters: the VM fd is dropped (closing the VM) before the guest memory
/// it maps is unmapped.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    memory: GuestMemoryMmap,
}

impl Vm {
    /// Creates a default-type VM with an in-kernel IRQ chip and `mem_size` bytes of RAM
    /// plus `firmware` mapped to end at 4 GiB.
    pub fn new(kvm: &Kvm, mem_size: u64, firmware: &[u8]) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        // The TSS and identity-map pages Intel VMX needs for real mode, just below the
        // firmware's reach (as QEMU places them).
        fd.set_tss_address(0xfffb_d000)
            .map_err(|e| VmError::Ioctl("KVM_SET_TSS_ADDR", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Ioctl("KVM_CREATE_IRQCHIP", e))?;
        let memory = memory::create(mem_size, firmware)?;
        memory::register(&fd, &memory)?;
        Ok(Self { fd, memory })
    }

    /// The VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// An eventfd that raises interrupt line `gsi` when written.
    pub fn irqfd(&self, gsi: u32) -> Result<EventFd, VmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        self.fd
            .register_irqfd(&evt, gsi)
            .map_err(|e| VmError::Ioctl("KVM_IRQFD", e))?;
        Ok(evt)
    }
}
