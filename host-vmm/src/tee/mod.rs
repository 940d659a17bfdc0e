//! Trusted-execution environments the VMM can launch into, and whether this host can
//! provide each one.
//!
//! A requested TEE the host cannot provide is refused with the precise reason; the VMM
//! never falls back to a less protected guest.
//!
//! # The backend interface
//! Everything TEE-specific the VMM does goes through one [`TeeBackend`] value per
//! launch ([`backend`]: the trait, its launch order, [`backend::PendingLaunch`] for the
//! steps after vCPU creation and [`backend::TeeRuntime`] for the run-time exit handler).
//! The CLI's factory (`cli::launch`) builds it from the arguments; the VMM builder
//! ([`crate::vmm::VmBuilder`]) only calls it. Backends, one module each:
//!
//! | module | `--tee` | VM | launch | run-time exits |
//! |---|---|---|---|---|
//! | [`none`] | `none` | default | — | — |
//! | [`emulated_snp`] | `emulated-snp` | default + C-bit alias slots | emulated PSP ([`emulated`]) | software PSP/hypervisor ([`emu_snp`]) |
//! | [`emulated_tdx`] | `emulated-tdx` | default | emulated TDX module ([`emulated`]) | software TDX module ([`emu_tdx`]) |
//! | [`kvm_snp`] | `snp` | `KVM_X86_SNP_VM`, full irqchip | [`launch`] via [`snp`] | [`runtime`] |
//! | [`kvm_tdx`] | `tdx` | `KVM_X86_TDX_VM`, split irqchip | [`launch`] via [`tdx`] | [`runtime`] + QGS ([`services`]) |
//!
//! Shared helpers: [`launch`] (the KVM launch glue: CPUID page, VMSA registers, TD
//! HOB), [`snp`] / [`tdx`] (typestate launch sequences over command traits, tested
//! against recording fakes), [`services`] (TDX GetQuote/QGS, TDVMCALLs, SNP
//! certificate tables), [`runtime`] (the [`backend::ExitHandler`] of real guests),
//! [`emulated`] (the emulated platforms and their evidence command protocol, spoken over
//! sockets only).
//!
//! # Where `unsafe` lives
//! One block in this module tree: the C-bit alias memslots of emulated SNP
//! ([`emu_snp::register_alias_slots`]). The other ioctls and `kvm_run` accesses are in
//! [`crate::vstate`] (`tdx.rs`, `private.rs`, `vcpu.rs`, `memory.rs`), each
//! block with its `SAFETY:` comment.

pub mod backend;
pub mod emu_snp;
pub mod emu_tdx;
pub mod emulated;
pub mod emulated_snp;
pub mod emulated_tdx;
pub mod evidence_vsock;
#[cfg(test)]
pub(crate) mod fake;
pub mod kvm_snp;
pub mod kvm_tdx;
pub mod launch;
pub mod none;
pub mod runtime;
pub mod services;
pub mod snp;
pub mod tdx;
pub mod trap;

pub use backend::TeeBackend;

use kvm_bindings::{
    KVM_CAP_GUEST_MEMFD, KVM_CAP_MEMORY_ATTRIBUTES, KVM_CAP_USER_MEMORY2, KVM_CAP_VM_TYPES,
    KVM_X86_SNP_VM, KVM_X86_TDX_VM,
};
use kvm_ioctls::Kvm;

/// The TEE a guest is launched into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeeKind {
    /// AMD SEV-SNP through KVM (Linux >= 6.11).
    Snp,
    /// Intel TDX through KVM (Linux >= 6.16).
    Tdx,
    /// Emulated SEV-SNP: a plain KVM VM whose launch plan goes to the emulated secure
    /// processor (test equipment; insecure).
    EmulatedSnp,
    /// Emulated TDX: a plain KVM VM whose launch plan goes to the emulated TDX module
    /// (test equipment; insecure).
    EmulatedTdx,
    /// No TEE: a plain, unencrypted guest, for development.
    None,
}

impl std::fmt::Display for TeeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TeeKind::Snp => "snp",
            TeeKind::Tdx => "tdx",
            TeeKind::EmulatedSnp => "emulated-snp",
            TeeKind::EmulatedTdx => "emulated-tdx",
            TeeKind::None => "none",
        })
    }
}

/// What the host's KVM offers for confidential guests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KvmCapabilities {
    /// KVM_GET_API_VERSION.
    pub api_version: i32,
    /// Bitmap of KVM_CAP_VM_TYPES (bit n = VM type n).
    pub vm_types: u32,
    /// KVM_CAP_USER_MEMORY2.
    pub user_memory2: bool,
    /// KVM_CAP_GUEST_MEMFD.
    pub guest_memfd: bool,
    /// KVM_CAP_MEMORY_ATTRIBUTES (supported attribute bits).
    pub memory_attributes: u64,
}

impl KvmCapabilities {
    /// Queries `kvm`.
    pub fn query(kvm: &Kvm) -> Self {
        let raw = |cap: u32| kvm.check_extension_raw(libc::c_ulong::from(cap));
        Self {
            api_version: kvm.get_api_version(),
            vm_types: u32::try_from(raw(KVM_CAP_VM_TYPES)).unwrap_or(0),
            user_memory2: raw(KVM_CAP_USER_MEMORY2) > 0,
            guest_memfd: raw(KVM_CAP_GUEST_MEMFD) > 0,
            memory_attributes: u64::try_from(raw(KVM_CAP_MEMORY_ATTRIBUTES)).unwrap_or(0),
        }
    }

    /// Whether VM type `t` can be created.
    pub fn supports_vm_type(&self, t: u32) -> bool {
        t < 32 && self.vm_types & (1 << t) != 0
    }
}

/// Why the host cannot run a TEE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this host cannot launch {tee} guests: {reasons}", reasons = reasons.join("; "))]
pub struct Unavailable {
    /// The TEE asked for.
    pub tee: TeeKind,
    /// Every missing prerequisite.
    pub reasons: Vec<String>,
}

/// KVM_MEMORY_ATTRIBUTE_PRIVATE.
const MEMORY_ATTRIBUTE_PRIVATE: u64 = 1 << 3;

/// Checks every prerequisite of `tee` on this host and lists all that are missing.
pub fn check(tee: TeeKind, caps: &KvmCapabilities) -> Result<(), Unavailable> {
    let mut reasons = Vec::new();
    let (vm_type, dev, name) = match tee {
        TeeKind::None | TeeKind::EmulatedSnp | TeeKind::EmulatedTdx => return Ok(()),
        TeeKind::Snp => (
            KVM_X86_SNP_VM,
            Some("/dev/sev"),
            "SEV-SNP (KVM_X86_SNP_VM = 4, Linux >= 6.11 with an SNP-enabled host)",
        ),
        TeeKind::Tdx => (
            KVM_X86_TDX_VM,
            None,
            "TDX (KVM_X86_TDX_VM = 5, Linux >= 6.16 with TDX enabled in the BIOS)",
        ),
    };
    if !caps.supports_vm_type(vm_type) {
        reasons.push(format!(
            "KVM does not offer VM type {vm_type} for {name}: KVM_CAP_VM_TYPES = {:#b}",
            caps.vm_types
        ));
    }
    if !caps.guest_memfd {
        reasons.push("KVM_CAP_GUEST_MEMFD is missing (private memory needs guest_memfd)".into());
    }
    if !caps.user_memory2 {
        reasons.push("KVM_CAP_USER_MEMORY2 is missing".into());
    }
    if caps.memory_attributes & MEMORY_ATTRIBUTE_PRIVATE == 0 {
        reasons.push(format!(
            "KVM_CAP_MEMORY_ATTRIBUTES lacks PRIVATE (value {:#x})",
            caps.memory_attributes
        ));
    }
    if let Some(dev) = dev {
        if !std::path::Path::new(dev).exists() {
            reasons.push(format!(
                "{dev} does not exist (the ccp driver has not initialised the SEV firmware)"
            ));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Unavailable { tee, reasons })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kind_of_host_refuses_snp_and_tdx_with_every_reason() {
        let pvm = KvmCapabilities {
            api_version: 12,
            vm_types: 1,
            user_memory2: true,
            guest_memfd: true,
            memory_attributes: 0,
        };
        let e = check(TeeKind::Snp, &pvm).unwrap_err();
        assert!(e.reasons.iter().any(|r| r.contains("VM type 4")), "{e}");
        assert!(e.reasons.iter().any(|r| r.contains("PRIVATE")), "{e}");
        let e = check(TeeKind::Tdx, &pvm).unwrap_err();
        assert!(e.to_string().contains("VM type 5"), "{e}");
        assert!(check(TeeKind::None, &pvm).is_ok());
        let tdx_host = KvmCapabilities {
            vm_types: 0b100001,
            memory_attributes: 8,
            ..pvm
        };
        assert!(check(TeeKind::Tdx, &tdx_host).is_ok());
    }
}
