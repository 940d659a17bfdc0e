//! KVM state: the VM, its guest memory and its vCPUs. The kernel-interface code and
//! almost all `unsafe` of the VMM live here.

pub mod cc_memory;
pub mod cpuid;
pub mod insn_probe;
pub mod memory;
pub mod private;
pub mod sev;
pub mod tdx;
pub mod vcpu;
pub mod vm;
