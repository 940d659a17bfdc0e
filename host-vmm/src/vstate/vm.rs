//! The KVM VM: its fd, in-kernel interrupt controller and guest memory.

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::cc_memory::{CcConfig, CcMemory, CcMemoryError};
use super::memory::{self, MemoryError};
use super::private::{KvmPrivateOps, PrivateMemory, PrivateMemoryError};

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
    /// Private memory could not be set up.
    #[error("cannot set up private guest memory")]
    Private(#[from] PrivateMemoryError),
    /// Emulated private memory could not be set up.
    #[error("cannot set up emulated private guest memory")]
    CcMemory(#[from] CcMemoryError),
    /// Writing the firmware into guest memory failed.
    #[error("cannot copy the firmware into guest memory")]
    Firmware(#[source] vm_memory::GuestMemoryError),
}

/// How interrupts are wired for a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqChip {
    /// PIC, IOAPIC and local APICs in KVM (KVM_CREATE_IRQCHIP).
    Full,
    /// Local APICs in KVM, the IOAPIC in the VMM (KVM_CAP_SPLIT_IRQCHIP), as TDX
    /// requires: device lines reach the guest as MSIs the VMM routes.
    Split,
}

/// Number of IOAPIC pins reserved in KVM's routing table under a split irqchip.
pub const SPLIT_IRQCHIP_PINS: u64 = 24;

/// A plain (unencrypted) KVM VM with its guest memory.
///
/// Field order matters: the VM fd is dropped (closing the VM) before the guest_memfds
/// and the guest memory it maps.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    private: Option<PrivateMemory>,
    cc: Option<std::sync::Arc<CcMemory>>,
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
        // Memory first: on this machine's KVM a memslot registered after the irqchip
        // waits ~7 ms for an SRCU grace period the irqchip set-up leaves pending; in
        // this order both take ~0.3 ms (scripts/bench-launch).
        let memory = memory::create(mem_size, firmware)?;
        memory::register(&fd, &memory)?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Ioctl("KVM_CREATE_IRQCHIP", e))?;
        Ok(Self {
            fd,
            private: None,
            cc: None,
            memory,
        })
    }

    /// Creates a default-type VM like [`Vm::new`] whose memory follows the emulated
    /// private-memory contract ([`CcMemory`]): every page starts private and not
    /// validated, `firmware` is written through the VMM's view (the backend launches it
    /// with [`CcMemory::launch_private`] and seals the launch with
    /// [`CcMemory::finish_launch`]), and [`Vm::memory`] is the VMM's view.
    pub fn new_emulated_confidential(
        kvm: &Kvm,
        mem_size: u64,
        firmware: &[u8],
        config: CcConfig,
    ) -> Result<Self, VmError> {
        use vm_memory::{Bytes, GuestAddress};
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        fd.set_tss_address(0xfffb_d000)
            .map_err(|e| VmError::Ioctl("KVM_SET_TSS_ADDR", e))?;
        let cc = CcMemory::new(&memory::layout(mem_size, firmware.len())?, config)?;
        let memory = cc.vmm_memory().clone();
        memory
            .write_slice(
                firmware,
                GuestAddress(memory::FOUR_GIB - firmware.len() as u64),
            )
            .map_err(VmError::Firmware)?;
        cc.register(&fd, 0)?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Ioctl("KVM_CREATE_IRQCHIP", e))?;
        Ok(Self {
            fd,
            private: None,
            cc: Some(std::sync::Arc::new(cc)),
            memory,
        })
    }

    /// The emulated private-memory contract, for a VM made by
    /// [`Vm::new_emulated_confidential`].
    pub fn cc_memory(&self) -> Option<&std::sync::Arc<CcMemory>> {
        self.cc.as_ref()
    }

    /// Creates a confidential VM of KVM type `vm_type` (4 = SEV-SNP, 5 = TDX): wires
    /// interrupts as `irqchip`, asks for KVM_HC_MAP_GPA_RANGE exits, then backs every
    /// memory region with a guest_memfd and marks it all private. The TEE's own
    /// VM-level commands follow (see `tee::launch`). `firmware` is copied into the shared view, from where the
    /// launch commands copy it into private memory.
    pub fn new_confidential(
        kvm: &Kvm,
        vm_type: u64,
        irqchip: IrqChip,
        mem_size: u64,
        firmware: &[u8],
    ) -> Result<Self, VmError> {
        let fd = kvm
            .create_vm_with_type(vm_type)
            .map_err(VmError::CreateVm)?;
        match irqchip {
            IrqChip::Full => fd
                .create_irq_chip()
                .map_err(|e| VmError::Ioctl("KVM_CREATE_IRQCHIP", e))?,
            IrqChip::Split => {
                let cap = kvm_bindings::kvm_enable_cap {
                    cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
                    args: [SPLIT_IRQCHIP_PINS, 0, 0, 0],
                    ..Default::default()
                };
                fd.enable_cap(&cap)
                    .map_err(|e| VmError::Ioctl("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)", e))?;
            }
        }
        // Guest page-state changes (SNP) and MapGPA (TDX) reach the VMM as
        // KVM_HC_MAP_GPA_RANGE exits only when asked for.
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_EXIT_HYPERCALL,
            args: [1 << super::private::KVM_HC_MAP_GPA_RANGE, 0, 0, 0],
            ..Default::default()
        };
        fd.enable_cap(&cap)
            .map_err(|e| VmError::Ioctl("KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)", e))?;
        let memory = memory::create(mem_size, firmware)?;
        let private = PrivateMemory::attach(&fd, &memory)?;
        Ok(Self {
            fd,
            private: Some(private),
            cc: None,
            memory,
        })
    }

    /// The private backings, for a confidential VM.
    pub fn private(&self) -> Option<&PrivateMemory> {
        self.private.as_ref()
    }

    /// Converts a range between private and shared (see [`PrivateMemory::convert`]).
    /// A VM without private memory has nothing to convert and refuses.
    pub fn convert(&self, gpa: u64, size: u64, to_private: bool) -> Result<(), PrivateMemoryError> {
        match &self.private {
            Some(p) => p.convert(&KvmPrivateOps { vm: &self.fd }, gpa, size, to_private),
            None => Err(PrivateMemoryError::OutsideMemory {
                gpa,
                size,
                hole: gpa,
            }),
        }
    }

    /// Answers a `KVM_HC_MAP_GPA_RANGE` hypercall; returns the hypercall's `ret`.
    pub fn map_gpa_range(&self, args: &[u64; 6]) -> u64 {
        match &self.private {
            Some(p) => p.map_gpa_range(&KvmPrivateOps { vm: &self.fd }, args),
            None => super::private::hypercall_error(libc::EINVAL),
        }
    }

    /// The VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Makes every RDMSR/WRMSR of `msrs` exit to user space (`KVM_EXIT_X86_RDMSR` /
    /// `KVM_EXIT_X86_WRMSR`), as an emulated TEE needs for SEV_STATUS and the GHCB MSR:
    /// `KVM_CAP_X86_USER_SPACE_MSR` with FILTER only, and an MSR filter (default allow)
    /// that denies exactly these MSRs, so they exit whether this KVM knows them (a
    /// standard KVM on an AMD host knows the GHCB MSR) or not (PVM): `kvm_get_msr_with_filter`
    /// checks the filter first. Not UNKNOWN / INVAL: every other MSR KVM does not know
    /// still gets KVM's #GP, as before (a guest's `rdmsr_safe` probe must not stop the VM).
    /// Rules: Documentation/virt/kvm/api.rst "KVM_CAP_X86_USER_SPACE_MSR" and
    /// "KVM_X86_SET_MSR_FILTER"; arch/x86/kvm/x86.c `kvm_vm_ioctl_set_msr_filter` (at
    /// most 16 ranges, bitmap bit 0 = denied).
    pub fn enable_user_msr_exits(&self, msrs: &[u32]) -> Result<(), VmError> {
        use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
            args: [u64::from(kvm_bindings::KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
            ..Default::default()
        };
        self.fd
            .enable_cap(&cap)
            .map_err(|e| VmError::Ioctl("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)", e))?;
        // One single-MSR range per MSR, its bitmap bit clear: denied, so it exits.
        let deny = [0u8; 1];
        let ranges: Vec<MsrFilterRange<'_>> = msrs
            .iter()
            .map(|&base| MsrFilterRange {
                flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                base,
                msr_count: 1,
                bitmap: &deny,
            })
            .collect();
        self.fd
            .set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
            .map_err(|e| VmError::Ioctl("KVM_X86_SET_MSR_FILTER", e))
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

/// KVM's GSI routing table as the I/O APIC of a split irqchip sees it (the I/O APIC
/// itself knows nothing of KVM).
#[derive(Debug)]
pub struct KvmRoutes(pub std::sync::Arc<Vm>);

impl crate::devices::ioapic::RouteSink for KvmRoutes {
    fn set_routes(
        &mut self,
        routes: &[crate::devices::ioapic::MsiRoute],
    ) -> Result<(), crate::devices::ioapic::RouteError> {
        use crate::devices::ioapic::RouteError;
        let entries: Vec<kvm_bindings::kvm_irq_routing_entry> = routes
            .iter()
            .map(|&(gsi, addr, data)| {
                let mut e = kvm_bindings::kvm_irq_routing_entry {
                    gsi,
                    type_: kvm_bindings::KVM_IRQ_ROUTING_MSI,
                    ..Default::default()
                };
                e.u.msi.address_lo = addr as u32;
                e.u.msi.address_hi = (addr >> 32) as u32;
                e.u.msi.data = data;
                e
            })
            .collect();
        let table =
            kvm_bindings::KvmIrqRouting::from_entries(&entries).map_err(|e| RouteError {
                what: "routing table",
                source: format!("{e:?}").into(),
            })?;
        self.0.fd().set_gsi_routing(&table).map_err(|e| RouteError {
            what: "KVM_SET_GSI_ROUTING",
            source: Box::new(e),
        })
    }
}
