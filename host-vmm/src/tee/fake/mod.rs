//! KVM-faithful fakes (tests only) of the SEV-SNP and TDX launch commands and of the
//! private-memory operations, shared by the launch tests of [`crate::tee::snp`],
//! [`crate::tee::tdx`], [`crate::tee::launch`] and [`crate::vstate::private`].
//!
//! A recording fake accepts whatever the code sends, so it cannot catch a launch that
//! real KVM would refuse. These fakes ENFORCE the checks upstream KVM makes, each rule
//! ported from the kernel function named next to it (Linux v6.16:
//! `arch/x86/kvm/vmx/tdx.c`, `arch/x86/kvm/svm/sev.c`, `arch/x86/kvm/cpuid.c`,
//! `arch/x86/kvm/x86.c`, `virt/kvm/kvm_main.c`, `virt/kvm/guest_memfd.c`), and answer
//! with the errno KVM returns. Where a fake is stricter than KVM (padding KVM does not
//! read but the uAPI documents as zero), the rule says so. Partial progress, `-EINTR`
//! and `-EAGAIN` are injected so the retry loops run.
//!
//! The rules and their sources are listed in host-vmm/README.md ("Conformance with
//! upstream KVM").

pub(crate) mod private;
pub(crate) mod snp;
pub(crate) mod tdx;
mod uapi_conformance;

/// `PAGE_SIZE`.
pub(crate) const PAGE: u64 = 4096;

/// `PAGE_ALIGNED(x)`.
pub(crate) fn page_aligned(x: u64) -> bool {
    x % PAGE == 0
}

/// Whether `gpa..gpa+len` lies in one of `slots` (guest_memfd-backed memslots:
/// `kvm_gmem_populate` works within the slot of its first GFN).
pub(crate) fn slot_of(slots: &[(u64, u64)], gpa: u64) -> Option<(u64, u64)> {
    slots
        .iter()
        .copied()
        .find(|&(start, size)| start <= gpa && gpa < start + size)
}
