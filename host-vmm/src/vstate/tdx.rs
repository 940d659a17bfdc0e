//! The KVM TDX command interface (Linux >= 6.16, `arch/x86/include/uapi/asm/kvm.h`):
//! `KVM_MEMORY_ENCRYPT_OP` with `struct kvm_tdx_cmd` on the VM fd (CAPABILITIES,
//! INIT_VM, FINALIZE_VM) or on a vCPU fd (INIT_VCPU, INIT_MEM_REGION, GET_CPUID).
//!
//! kvm-bindings 0.14 does not define these structs, so they are defined here from the
//! kernel header, with compile-time size and offset checks.

use std::os::fd::{AsRawFd, RawFd};

use kvm_bindings::kvm_cpuid_entry2;

/// `enum kvm_tdx_cmd_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum TdxCmdId {
    /// KVM_TDX_CAPABILITIES (VM fd).
    Capabilities = 0,
    /// KVM_TDX_INIT_VM (VM fd, before vCPUs exist).
    InitVm = 1,
    /// KVM_TDX_INIT_VCPU (vCPU fd; data = initial RCX, the TD HOB address).
    InitVcpu = 2,
    /// KVM_TDX_INIT_MEM_REGION (vCPU fd).
    InitMemRegion = 3,
    /// KVM_TDX_FINALIZE_VM (VM fd).
    FinalizeVm = 4,
    /// KVM_TDX_GET_CPUID (vCPU fd).
    GetCpuid = 5,
}

/// `struct kvm_tdx_cmd`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmTdxCmd {
    /// Command id.
    pub id: u32,
    /// Command flags (KVM_TDX_MEASURE_MEMORY_REGION for INIT_MEM_REGION).
    pub flags: u32,
    /// Immediate value or pointer to the command's struct.
    pub data: u64,
    /// TDX module (SEAMCALL) status, when the TDX module failed.
    pub hw_error: u64,
}

/// `KVM_TDX_MEASURE_MEMORY_REGION`: extend the pages into MRTD.
pub const KVM_TDX_MEASURE_MEMORY_REGION: u32 = 1;

/// Maximum CPUID entries carried by INIT_VM / CAPABILITIES here.
pub const TDX_CPUID_ENTRIES: usize = 256;

/// `struct kvm_cpuid2` with a fixed number of entries.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TdxCpuid {
    /// Number of valid entries.
    pub nent: u32,
    /// Padding.
    pub padding: u32,
    /// The entries.
    pub entries: [kvm_cpuid_entry2; TDX_CPUID_ENTRIES],
}

impl Default for TdxCpuid {
    fn default() -> Self {
        Self {
            nent: 0,
            padding: 0,
            entries: [kvm_cpuid_entry2::default(); TDX_CPUID_ENTRIES],
        }
    }
}

/// `struct kvm_tdx_init_vm` (256 bytes of TD_PARAMS, then the CPUID configuration).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct KvmTdxInitVm {
    /// TD attributes (bit 0 DEBUG, bit 28 SEPT_VE_DISABLE, …).
    pub attributes: u64,
    /// Extended features allowed (XFAM).
    pub xfam: u64,
    /// MRCONFIGID (SHA-384 sized, host-chosen).
    pub mrconfigid: [u64; 6],
    /// MROWNER.
    pub mrowner: [u64; 6],
    /// MROWNERCONFIG.
    pub mrownerconfig: [u64; 6],
    /// Reserved, zero.
    pub reserved: [u64; 12],
    /// CPUID configuration.
    pub cpuid: TdxCpuid,
}

/// `struct kvm_tdx_init_mem_region`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmTdxInitMemRegion {
    /// Host address of the source pages.
    pub source_addr: u64,
    /// Guest physical address of the first page.
    pub gpa: u64,
    /// Number of 4 KiB pages.
    pub nr_pages: u64,
}

/// `struct kvm_tdx_capabilities`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KvmTdxCapabilities {
    /// TD attributes the TDX module supports.
    pub supported_attrs: u64,
    /// XFAM bits the TDX module supports.
    pub supported_xfam: u64,
    /// TDVMCALLs the kernel handles (R11 of TDVMCALL leaf 1).
    pub kernel_tdvmcallinfo_1_r11: u64,
    /// TDVMCALLs userspace must handle (R11).
    pub user_tdvmcallinfo_1_r11: u64,
    /// TDVMCALLs the kernel handles (R12).
    pub kernel_tdvmcallinfo_1_r12: u64,
    /// TDVMCALLs userspace must handle (R12).
    pub user_tdvmcallinfo_1_r12: u64,
    /// Reserved.
    pub reserved: [u64; 250],
    /// Configurable CPUID bits.
    pub cpuid: TdxCpuid,
}

impl Default for KvmTdxCapabilities {
    fn default() -> Self {
        Self {
            supported_attrs: 0,
            supported_xfam: 0,
            kernel_tdvmcallinfo_1_r11: 0,
            user_tdvmcallinfo_1_r11: 0,
            kernel_tdvmcallinfo_1_r12: 0,
            user_tdvmcallinfo_1_r12: 0,
            reserved: [0; 250],
            cpuid: TdxCpuid {
                nent: TDX_CPUID_ENTRIES as u32,
                ..TdxCpuid::default()
            },
        }
    }
}

const _: () = {
    assert!(std::mem::size_of::<KvmTdxCmd>() == 24);
    assert!(std::mem::offset_of!(KvmTdxCmd, data) == 8);
    assert!(std::mem::offset_of!(KvmTdxCmd, hw_error) == 16);
    assert!(std::mem::size_of::<KvmTdxInitMemRegion>() == 24);
    assert!(std::mem::offset_of!(KvmTdxInitVm, mrconfigid) == 16);
    assert!(std::mem::offset_of!(KvmTdxInitVm, mrowner) == 64);
    assert!(std::mem::offset_of!(KvmTdxInitVm, mrownerconfig) == 112);
    assert!(std::mem::offset_of!(KvmTdxInitVm, cpuid) == 256);
    assert!(std::mem::offset_of!(KvmTdxCapabilities, reserved) == 48);
    assert!(std::mem::offset_of!(KvmTdxCapabilities, cpuid) == 2048);
    assert!(std::mem::size_of::<kvm_cpuid_entry2>() == 40);
    assert!(std::mem::offset_of!(TdxCpuid, entries) == 8);
};

/// One TDX command with its argument, and the fd it goes to.
#[derive(Debug)]
pub enum TdxRequest<'a> {
    /// Query the TDX module (VM fd).
    Capabilities(&'a mut KvmTdxCapabilities),
    /// Configure the TD (VM fd).
    InitVm(&'a mut KvmTdxInitVm),
    /// Initialise vCPU `index` with RCX = `rcx` (vCPU fd).
    InitVcpu {
        /// vCPU index.
        index: u32,
        /// Initial RCX (the TD HOB GPA, per TDVF).
        rcx: u64,
    },
    /// Add (and optionally measure) pages (vCPU fd of vCPU 0).
    InitMemRegion {
        /// The region; KVM updates it to the remainder when interrupted.
        region: &'a mut KvmTdxInitMemRegion,
        /// Extend the pages into MRTD.
        measure: bool,
    },
    /// Seal MRTD; the TD can run afterwards (VM fd).
    FinalizeVm,
}

impl TdxRequest<'_> {
    /// The command name.
    pub fn name(&self) -> &'static str {
        match self {
            TdxRequest::Capabilities(_) => "KVM_TDX_CAPABILITIES",
            TdxRequest::InitVm(_) => "KVM_TDX_INIT_VM",
            TdxRequest::InitVcpu { .. } => "KVM_TDX_INIT_VCPU",
            TdxRequest::InitMemRegion { .. } => "KVM_TDX_INIT_MEM_REGION",
            TdxRequest::FinalizeVm => "KVM_TDX_FINALIZE_VM",
        }
    }
}

/// A failed TDX command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdxCmdError {
    /// ioctl errno.
    pub errno: i32,
    /// TDX module status (SEAMCALL return), 0 if the kernel failed first.
    pub hw_error: u64,
}

/// Something that executes TDX commands for one TD.
pub trait TdxCommands {
    /// Issues `req`.
    fn issue(&mut self, req: TdxRequest<'_>) -> Result<(), TdxCmdError>;

    /// `KVM_ENABLE_CAP(KVM_CAP_X86_APIC_BUS_CYCLES_NS)` on the VM: the APIC bus
    /// cycle length KVM's emulated APIC timer uses (needs a split irqchip and no
    /// vCPUs yet, arch/x86/kvm/x86.c).
    fn enable_apic_bus_cycles_ns(&mut self, ns: u64) -> Result<(), TdxCmdError>;
}

/// `KVM_MEMORY_ENCRYPT_OP` = `_IOWR(KVMIO, 0xba, unsigned long)`.
pub const KVM_MEMORY_ENCRYPT_OP: libc::c_ulong = 0xC008_AEBA;

/// TDX commands on real KVM fds.
#[derive(Debug)]
pub struct KvmTdx<'a> {
    vm: RawFd,
    vm_fd: &'a kvm_ioctls::VmFd,
    vcpus: Vec<&'a kvm_ioctls::VcpuFd>,
}

impl<'a> KvmTdx<'a> {
    /// Commands for the TD `vm` with its vCPUs (INIT_MEM_REGION uses vCPU 0).
    pub fn new(vm: &'a kvm_ioctls::VmFd, vcpus: Vec<&'a kvm_ioctls::VcpuFd>) -> Self {
        Self {
            vm: vm.as_raw_fd(),
            vm_fd: vm,
            vcpus,
        }
    }

    /// The vCPUs, once created (INIT_VCPU and INIT_MEM_REGION are vCPU commands).
    pub fn set_vcpus(&mut self, vcpus: Vec<&'a kvm_ioctls::VcpuFd>) {
        self.vcpus = vcpus;
    }
}

fn tdx_ioctl(fd: RawFd, cmd: &mut KvmTdxCmd) -> Result<(), TdxCmdError> {
    // SAFETY: KVM_MEMORY_ENCRYPT_OP takes a pointer to a `struct kvm_tdx_cmd`, which
    // `cmd` is (#[repr(C)], layout asserted above); `cmd.data` points to the struct
    // the command id expects or is an immediate, as built by `KvmTdx::issue`, and
    // everything it points to outlives this call.
    let ret = unsafe { libc::ioctl(fd, KVM_MEMORY_ENCRYPT_OP, cmd as *mut KvmTdxCmd) };
    if ret < 0 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return Err(TdxCmdError {
            errno,
            hw_error: cmd.hw_error,
        });
    }
    Ok(())
}

impl TdxCommands for KvmTdx<'_> {
    fn issue(&mut self, req: TdxRequest<'_>) -> Result<(), TdxCmdError> {
        let no_vcpu = TdxCmdError {
            errno: libc::ENODEV,
            hw_error: 0,
        };
        let (fd, mut cmd) = match req {
            TdxRequest::Capabilities(c) => (
                self.vm,
                KvmTdxCmd {
                    id: TdxCmdId::Capabilities as u32,
                    data: c as *mut KvmTdxCapabilities as u64,
                    ..Default::default()
                },
            ),
            TdxRequest::InitVm(i) => (
                self.vm,
                KvmTdxCmd {
                    id: TdxCmdId::InitVm as u32,
                    data: i as *mut KvmTdxInitVm as u64,
                    ..Default::default()
                },
            ),
            TdxRequest::InitVcpu { index, rcx } => {
                let v = self.vcpus.get(index as usize).ok_or(no_vcpu)?;
                (
                    v.as_raw_fd(),
                    KvmTdxCmd {
                        id: TdxCmdId::InitVcpu as u32,
                        data: rcx,
                        ..Default::default()
                    },
                )
            }
            TdxRequest::InitMemRegion { region, measure } => {
                let v = self.vcpus.first().ok_or(no_vcpu)?;
                let flags = if measure {
                    KVM_TDX_MEASURE_MEMORY_REGION
                } else {
                    0
                };
                (
                    v.as_raw_fd(),
                    KvmTdxCmd {
                        id: TdxCmdId::InitMemRegion as u32,
                        flags,
                        data: region as *mut KvmTdxInitMemRegion as u64,
                        ..Default::default()
                    },
                )
            }
            TdxRequest::FinalizeVm => (
                self.vm,
                KvmTdxCmd {
                    id: TdxCmdId::FinalizeVm as u32,
                    ..Default::default()
                },
            ),
        };
        tdx_ioctl(fd, &mut cmd)
    }

    fn enable_apic_bus_cycles_ns(&mut self, ns: u64) -> Result<(), TdxCmdError> {
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_X86_APIC_BUS_CYCLES_NS,
            args: [ns, 0, 0, 0],
            ..Default::default()
        };
        self.vm_fd.enable_cap(&cap).map_err(|e| TdxCmdError {
            errno: e.errno(),
            hw_error: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_op_number_matches_the_uapi() {
        // _IOWR(0xAE, 0xBA, unsigned long): dir 3 << 30, size 8 << 16.
        assert_eq!(
            KVM_MEMORY_ENCRYPT_OP,
            (3 << 30) | (8 << 16) | (0xAE << 8) | 0xBA
        );
        assert_eq!(
            std::mem::size_of::<KvmTdxInitVm>(),
            256 + 8 + 40 * TDX_CPUID_ENTRIES
        );
    }
}
